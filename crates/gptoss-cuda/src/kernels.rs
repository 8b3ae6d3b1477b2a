//! The kernel table: every `.cu` file (embedded with `include_str!`, each prefixed by `common.cu`) and every
//! entry point. Kernel-name strings live here and nowhere else; modules are compiled and loaded on first use
//! by [`crate::device::Device`].

/// The prelude shared by every kernel file (types, conversions, reductions, the weight decoder).
const COMMON: &str = include_str!("../kernels/common.cu");

/// The tensor-core tile GEMM core, a second prelude of the files that run prefill GEMMs.
const MMA: &str = include_str!("../kernels/mma.cu");
/// The prelude the expert kernel files share (after common.cu).
const MOE_COMMON: &str = include_str!("../kernels/moe_common.cu");

/// One kernel file (one op family).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KernelFile {
    /// `embed.cu`
    Embed,
    /// `norm.cu`
    Norm,
    /// `linear.cu`
    Linear,
    /// `rope_kv.cu`
    RopeKv,
    /// `attention.cu`
    Attention,
    /// `router.cu`
    Router,
    /// `moe.cu`
    Moe,
    /// `moe_dot.cu`
    MoeDot,
    /// `moe_half.cu`
    MoeHalf,
    /// `sample.cu`
    Sample,
    /// `repack.cu`
    Repack,
}

impl KernelFile {
    /// Every file, for the compile check.
    pub const ALL: [KernelFile; 11] = [
        KernelFile::Embed,
        KernelFile::Norm,
        KernelFile::Linear,
        KernelFile::RopeKv,
        KernelFile::Attention,
        KernelFile::Router,
        KernelFile::Moe,
        KernelFile::MoeDot,
        KernelFile::MoeHalf,
        KernelFile::Sample,
        KernelFile::Repack,
    ];

    /// The file name.
    pub fn name(self) -> &'static str {
        match self {
            KernelFile::Embed => "embed.cu",
            KernelFile::Norm => "norm.cu",
            KernelFile::Linear => "linear.cu",
            KernelFile::RopeKv => "rope_kv.cu",
            KernelFile::Attention => "attention.cu",
            KernelFile::Router => "router.cu",
            KernelFile::Moe => "moe.cu",
            KernelFile::MoeDot => "moe_dot.cu",
            KernelFile::MoeHalf => "moe_half.cu",
            KernelFile::Sample => "sample.cu",
            KernelFile::Repack => "repack.cu",
        }
    }

    fn body(self) -> &'static str {
        match self {
            KernelFile::Embed => include_str!("../kernels/embed.cu"),
            KernelFile::Norm => include_str!("../kernels/norm.cu"),
            KernelFile::Linear => include_str!("../kernels/linear.cu"),
            KernelFile::RopeKv => include_str!("../kernels/rope_kv.cu"),
            KernelFile::Attention => include_str!("../kernels/attention.cu"),
            KernelFile::Router => include_str!("../kernels/router.cu"),
            KernelFile::Moe => include_str!("../kernels/moe.cu"),
            KernelFile::MoeDot => include_str!("../kernels/moe_dot.cu"),
            KernelFile::MoeHalf => include_str!("../kernels/moe_half.cu"),
            KernelFile::Sample => include_str!("../kernels/sample.cu"),
            KernelFile::Repack => include_str!("../kernels/repack.cu"),
        }
    }

    /// The full source NVRTC compiles: the prelude, then the file.
    pub fn source(self) -> String {
        let mma = match self {
            KernelFile::Linear | KernelFile::Moe | KernelFile::MoeHalf | KernelFile::Attention => {
                format!("#line 1 \"mma.cu\"\n{MMA}\n")
            }
            _ => String::new(),
        };
        let moe = match self {
            KernelFile::Moe | KernelFile::MoeDot | KernelFile::MoeHalf | KernelFile::Router => {
                format!("#line 1 \"moe_common.cu\"\n{MOE_COMMON}\n")
            }
            _ => String::new(),
        };
        format!(
            "{COMMON}\n{mma}{moe}#line 1 \"{}\"\n{}",
            self.name(),
            self.body()
        )
    }
}

/// How a packed weight is stored on the device (selects the decoder; see `kernels/common.cu`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WeightKind {
    /// f32 elements.
    F32,
    /// bf16 elements.
    Bf16,
    /// f16 elements.
    F16,
    /// int8 codes + f16 scale per 32.
    Q8,
    /// 4-bit codes + E8M0 byte scales.
    Lut4E8m0,
    /// 4-bit codes + f32 scales.
    Lut4F32,
}

impl WeightKind {
    fn suffix(self) -> &'static str {
        match self {
            WeightKind::F32 => "f32",
            WeightKind::Bf16 => "bf16",
            WeightKind::F16 => "f16",
            WeightKind::Q8 => "q8",
            WeightKind::Lut4E8m0 => "lut4e8m0",
            WeightKind::Lut4F32 => "lut4f32",
        }
    }

    /// The kinds with one-row warp GEMV (`linear_warp_<fmt>`) entry points.
    pub const WARP: [WeightKind; 2] = [WeightKind::Bf16, WeightKind::F16];

    /// The kinds with tensor-core (`_mma`) entry points: those whose values can decode exactly to bf16, and Q8_0
    /// (codes exact in bf16, the scale applied per 32-element K step).
    pub const MMA: [WeightKind; 4] = [
        WeightKind::Bf16,
        WeightKind::Q8,
        WeightKind::Lut4E8m0,
        WeightKind::Lut4F32,
    ];

    /// The kinds with pipelined exact tiles (`linear_pipe_<fmt>`): the dense formats of the gpt-oss checkpoints.
    pub const PIPE: [WeightKind; 2] = [WeightKind::Bf16, WeightKind::Q8];

    /// Every kind.
    pub const ALL: [WeightKind; 6] = [
        WeightKind::F32,
        WeightKind::Bf16,
        WeightKind::F16,
        WeightKind::Q8,
        WeightKind::Lut4E8m0,
        WeightKind::Lut4F32,
    ];
}

/// Input rows per block in the split-K linear and expert kernels (every weight row is decoded once per tile).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RowTile {
    /// One row (decode of one sequence).
    One,
    /// Two rows (linear only).
    Two,
    /// Four rows (linear only).
    Four,
    /// Eight rows (experts only).
    Eight,
}

impl RowTile {
    /// The tiles of the linear kernels.
    pub const LINEAR: [RowTile; 3] = [RowTile::One, RowTile::Two, RowTile::Four];
    /// The tiles of the expert kernels.
    pub const EXPERTS: [RowTile; 2] = [RowTile::One, RowTile::Eight];

    fn suffix(self) -> &'static str {
        match self {
            RowTile::One => "t1",
            RowTile::Two => "t2",
            RowTile::Four => "t4",
            RowTile::Eight => "t8",
        }
    }

    /// Rows per tile.
    pub fn rows(self) -> usize {
        match self {
            RowTile::One => 1,
            RowTile::Two => 2,
            RowTile::Four => 4,
            RowTile::Eight => 8,
        }
    }
}

/// Pairs per tensor-core expert tile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MmaRows {
    /// 32 (`_mma32_`).
    R32,
    /// 64 (`_mma_`).
    R64,
}

impl MmaRows {
    fn infix(self) -> &'static str {
        match self {
            MmaRows::R32 => "mma32",
            MmaRows::R64 => "mma",
        }
    }

    /// Pairs per tile.
    pub fn rows(self) -> usize {
        match self {
            MmaRows::R32 => 32,
            MmaRows::R64 => 64,
        }
    }
}

/// Bytes of one x plane row or bf16 weight row of `linear_pipe_<fmt>`'s shared memory (32 bf16, unpadded).
const PIPE_ROW_BYTES: u32 = 64;
/// Bytes of one Q8_0 weight row of codes there, and of its scale (f32).
const PIPE_Q8_ROW_BYTES: u32 = 32 + 4;
/// Weight rows of one tile (`MMA_BN`).
const PIPE_WEIGHT_ROWS: u32 = 128;

/// Dynamic shared memory of `linear_pipe_<fmt>` with tiles of `rows` (`STAGES` · `BYTES` of `PipeStage` in
/// linear.cu): three x planes and the weight tile a stage, 4 stages for tiles of 64 rows and 6 for 32.
pub fn pipe_smem_bytes(kind: WeightKind, rows: MmaRows) -> u32 {
    let stages = match rows {
        MmaRows::R64 => 4,
        MmaRows::R32 => 6,
    };
    let x = 3 * rows.rows() as u32 * PIPE_ROW_BYTES;
    let w = match kind {
        WeightKind::Q8 => PIPE_WEIGHT_ROWS * PIPE_Q8_ROW_BYTES,
        _ => PIPE_WEIGHT_ROWS * PIPE_ROW_BYTES,
    };
    stages * (x + w)
}

/// Pairs per tile of the MXFP4 f16 tensor-core expert kernels: `moe_*_fp4_p{8,16}` (the weights' 32-row slices
/// read straight from global memory, for decode and small batches) and `moe_*_fp4_g{32,64}` (128-row GEMM
/// tiles through a `cp.async` ring, for prefill and large batches), in moe.cu.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fp4Pairs {
    /// 8 (one n8 MMA tile).
    P8,
    /// 16 (two).
    P16,
    /// GEMM tiles of 32 pairs.
    G32,
    /// GEMM tiles of 64 pairs.
    G64,
    /// f16-activation GEMM tiles of 16 pairs, running the 8-pair code for tiles holding at most 8 (batched
    /// decode).
    H16,
    /// f16-activation GEMM tiles of 64 pairs (one accumulator over K; not exact: moe_half.cu).
    H64,
    /// The same, 128 pairs (long prompts).
    H128,
}

impl Fp4Pairs {
    /// Every configuration.
    pub const ALL: [Fp4Pairs; 7] = [
        Fp4Pairs::P8,
        Fp4Pairs::P16,
        Fp4Pairs::G32,
        Fp4Pairs::G64,
        Fp4Pairs::H16,
        Fp4Pairs::H64,
        Fp4Pairs::H128,
    ];

    fn suffix(self) -> &'static str {
        match self {
            Fp4Pairs::P8 => "p8",
            Fp4Pairs::P16 => "p16",
            Fp4Pairs::G32 => "g32",
            Fp4Pairs::G64 => "g64",
            Fp4Pairs::H16 => "h16",
            Fp4Pairs::H64 => "h64",
            Fp4Pairs::H128 => "h128",
        }
    }

    /// Pairs per tile.
    pub fn pairs(self) -> usize {
        match self {
            Fp4Pairs::P8 => 8,
            Fp4Pairs::P16 => 16,
            Fp4Pairs::H16 => 16,
            Fp4Pairs::G32 => 32,
            Fp4Pairs::G64 | Fp4Pairs::H64 => 64,
            Fp4Pairs::H128 => 128,
        }
    }

    /// Weight rows per block (`16 * MT` of `expert_fp4_impl`, `G_ROWS` of `expert_fp4_gemm_impl`); the GEMM
    /// tiles' blocks own their rows, the others loop over row slices.
    pub fn weight_rows(self) -> usize {
        match self {
            Fp4Pairs::P8 | Fp4Pairs::P16 => 32,
            Fp4Pairs::G32 | Fp4Pairs::G64 | Fp4Pairs::H16 | Fp4Pairs::H64 | Fp4Pairs::H128 => 128,
        }
    }
}

/// Element type of the KV cache as the kernels see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KvType {
    /// bf16.
    Bf16,
    /// f16.
    F16,
    /// f32.
    F32,
}

/// Head widths `attention_flash_<kv>_d<D>` is built for: gpt-oss's 64, and the tiny fixtures' 16 (so the
/// CUDA-against-CPU checks of every fixture run it).
pub const FLASH_HEAD_DIMS: [usize; 2] = [16, 64];

/// One kernel entry point.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Func {
    /// `embed_<fmt>`
    Embed(WeightKind),
    /// `rmsnorm_f32`
    RmsNorm,
    /// `add_f32`
    Add,
    /// `add_rmsnorm_f32`
    AddRmsNorm,
    /// `linear_<fmt>_t{1,2,4}`
    Linear(WeightKind, RowTile),
    /// `linear3_<fmt>_t{1,2,4}` (three split-K GEMVs of one input in one grid)
    LinearGroup(WeightKind, RowTile),
    /// `linear_mma_<fmt>` / `linear_mma32_<fmt>`
    LinearMma(WeightKind, MmaRows),
    /// `linear_mmafast_<fmt>` (tiles of 64 rows, x as two bf16 parts: prompts unless exact)
    LinearMmaFast(WeightKind),
    /// `linear_pipe_<fmt>` / `linear_pipe32_<fmt>` (exact tiles of 64 / 32 rows through a cp.async ring,
    /// x from `linear_xparts`' planes: batched decode)
    LinearPipe(WeightKind, MmaRows),
    /// `linear3_pipe_<fmt>` / `linear3_pipe32_<fmt>` (q, k and v of one input in one grid)
    LinearPipeGroup(WeightKind, MmaRows),
    /// `linear_xparts` (x as three bf16 planes for `linear_pipe_<fmt>`)
    LinearXParts,
    /// `linear_reduce` (adds the K splits of the tensor-core linear)
    LinearReduce,
    /// `linear3_reduce` (three of them in one grid)
    LinearReduceGroup,
    /// `linear_warp_<fmt>` (one step row, a warp per 2 weight rows; bf16 and f16)
    LinearWarp(WeightKind),
    /// `linear3_warp_<fmt>` (three of them of one input in one grid)
    LinearWarpGroup(WeightKind),
    /// `linear_dot_q8` (one step row, Q8_0 codes on dp4a against x as int8 planes)
    LinearDotQ8,
    /// `linear3_dot_q8`
    LinearDotQ8Group,
    /// `linear_norm_<fmt>` (the split-K GEMV at one row of a norm it computes itself: the router)
    LinearNorm(WeightKind),
    /// `linear3_norm_dot_q8`
    LinearDotQ8NormGroup,
    /// `rope_kv_<kv>`
    RopeKv(KvType),
    /// `attention_<kv>`
    Attention(KvType),
    /// `attention_rows_<kv>` (prefill: 8 step rows per CTA)
    AttentionRows(KvType),
    /// `attention_flash_<kv>_d<head_dim>` (prefill on f16 tensor cores unless exact; a width of
    /// [`FLASH_HEAD_DIMS`])
    AttentionFlash(KvType, usize),
    /// `attention_combine` (merges key splits)
    AttentionCombine,
    /// `route_<fmt>`
    Route(WeightKind),
    /// `route_topk`
    RouteTopk,
    /// `route_topk_group`: route_topk and moe_group in one block (one-token steps).
    RouteTopkGroup,
    /// `moe_group`
    MoeGroup,
    /// `moe_gate_up_<fmt>_t{1,8}`
    MoeGateUp(WeightKind, RowTile),
    /// `moe_down_<fmt>_t{1,8}`
    MoeDown(WeightKind, RowTile),
    /// `moe_gate_up_mma_<fmt>` / `moe_gate_up_mma32_<fmt>`
    MoeGateUpMma(WeightKind, MmaRows),
    /// `moe_down_mma_<fmt>` / `moe_down_mma32_<fmt>`
    MoeDownMma(WeightKind, MmaRows),
    /// `moe_xsplit` (x as two f16 parts for the MXFP4 tensor-core experts)
    MoeXSplit,
    /// `moe_xhalf` (x as one f16 per element, rows scaled by powers of two, for `moe_*_fp4_h64`)
    MoeXHalf,
    /// `moe_gate_up_fp4_p{8,16}`
    MoeGateUpFp4(Fp4Pairs),
    /// `moe_down_fp4_p{8,16}`
    MoeDownFp4(Fp4Pairs),
    /// `moe_gate_up_fp4_dot` (MXFP4, one pair per tile, integer dot products)
    MoeGateUpFp4Dot,
    /// `moe_down_fp4_dot`
    MoeDownFp4Dot,
    /// `moe_down_fp4_dot_tokens` (token-major, writes the combined output)
    MoeDownFp4DotTokens,
    /// `moe_combine`
    MoeCombine,
    /// `row_max_keys` (each row's largest sort key per slice, before `sample_rows`)
    RowMaxKeys,
    /// `sample_rows`
    Sample,
    /// `logprob_rows`
    Logprobs,
    /// `repack_q8_0` (raw Q8_0 blocks → codes + scales, at upload)
    RepackQ8_0,
    /// `repack_lut4_e8m0` (raw ggml MXFP4 blocks)
    RepackLut4E8m0,
    /// `repack_lut4_f16` (raw Q4_0 / IQ4_NL blocks)
    RepackLut4F16,
}

impl Func {
    /// The file that defines it.
    pub fn file(self) -> KernelFile {
        match self {
            Func::Embed(_) => KernelFile::Embed,
            Func::RmsNorm | Func::Add | Func::AddRmsNorm => KernelFile::Norm,
            Func::Linear(..)
            | Func::LinearGroup(..)
            | Func::LinearMma(..)
            | Func::LinearMmaFast(_)
            | Func::LinearPipe(..)
            | Func::LinearPipeGroup(..)
            | Func::LinearXParts
            | Func::LinearReduce
            | Func::LinearReduceGroup
            | Func::LinearWarp(_)
            | Func::LinearWarpGroup(_)
            | Func::LinearDotQ8
            | Func::LinearDotQ8Group
            | Func::LinearNorm(_)
            | Func::LinearDotQ8NormGroup => KernelFile::Linear,
            Func::RopeKv(_) => KernelFile::RopeKv,
            Func::Attention(_)
            | Func::AttentionRows(_)
            | Func::AttentionFlash(..)
            | Func::AttentionCombine => KernelFile::Attention,
            Func::Route(_) | Func::RouteTopk | Func::RouteTopkGroup => KernelFile::Router,
            Func::MoeXHalf
            | Func::MoeGateUpFp4(Fp4Pairs::H16 | Fp4Pairs::H64 | Fp4Pairs::H128)
            | Func::MoeDownFp4(Fp4Pairs::H16 | Fp4Pairs::H64 | Fp4Pairs::H128) => {
                KernelFile::MoeHalf
            }
            Func::MoeGroup
            | Func::MoeGateUp(..)
            | Func::MoeDown(..)
            | Func::MoeGateUpMma(..)
            | Func::MoeDownMma(..)
            | Func::MoeXSplit
            | Func::MoeGateUpFp4(_)
            | Func::MoeDownFp4(_)
            | Func::MoeCombine => KernelFile::Moe,
            Func::MoeGateUpFp4Dot | Func::MoeDownFp4Dot | Func::MoeDownFp4DotTokens => {
                KernelFile::MoeDot
            }
            Func::RowMaxKeys | Func::Sample | Func::Logprobs => KernelFile::Sample,
            Func::RepackQ8_0 | Func::RepackLut4E8m0 | Func::RepackLut4F16 => KernelFile::Repack,
        }
    }

    /// Dynamic shared memory beyond the default 48 KB that the kernel is launched with, which the driver must
    /// be told of once (`CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES`).
    pub fn large_smem(self) -> Option<u32> {
        match self {
            Func::LinearPipe(w, r) | Func::LinearPipeGroup(w, r) => {
                Some(pipe_smem_bytes(w, r)).filter(|&b| b > 48 << 10)
            }
            _ => None,
        }
    }

    /// The `extern "C"` name.
    pub fn name(self) -> String {
        let kv = |k: KvType| match k {
            KvType::Bf16 => "bf16",
            KvType::F16 => "f16",
            KvType::F32 => "f32",
        };
        match self {
            Func::Embed(w) => format!("embed_{}", w.suffix()),
            Func::RmsNorm => "rmsnorm_f32".into(),
            Func::Add => "add_f32".into(),
            Func::AddRmsNorm => "add_rmsnorm_f32".into(),
            Func::Linear(w, t) => format!("linear_{}_{}", w.suffix(), t.suffix()),
            Func::LinearGroup(w, t) => format!("linear3_{}_{}", w.suffix(), t.suffix()),
            Func::LinearMma(w, r) => format!("linear_{}_{}", r.infix(), w.suffix()),
            Func::LinearMmaFast(w) => format!("linear_mmafast_{}", w.suffix()),
            Func::LinearPipe(w, r) => {
                let tile = if r == MmaRows::R32 { "pipe32" } else { "pipe" };
                format!("linear_{tile}_{}", w.suffix())
            }
            Func::LinearPipeGroup(w, r) => {
                let tile = if r == MmaRows::R32 { "pipe32" } else { "pipe" };
                format!("linear3_{tile}_{}", w.suffix())
            }
            Func::LinearXParts => "linear_xparts".into(),
            Func::LinearReduce => "linear_reduce".into(),
            Func::LinearReduceGroup => "linear3_reduce".into(),
            Func::LinearWarp(w) => format!("linear_warp_{}", w.suffix()),
            Func::LinearWarpGroup(w) => format!("linear3_warp_{}", w.suffix()),
            Func::LinearDotQ8 => "linear_dot_q8".into(),
            Func::LinearDotQ8Group => "linear3_dot_q8".into(),
            Func::LinearNorm(w) => format!("linear_norm_{}", w.suffix()),
            Func::LinearDotQ8NormGroup => "linear3_norm_dot_q8".into(),
            Func::RopeKv(k) => format!("rope_kv_{}", kv(k)),
            Func::Attention(k) => format!("attention_{}", kv(k)),
            Func::AttentionRows(k) => format!("attention_rows_{}", kv(k)),
            Func::AttentionFlash(k, d) => format!("attention_flash_{}_d{d}", kv(k)),
            Func::AttentionCombine => "attention_combine".into(),
            Func::Route(w) => format!("route_{}", w.suffix()),
            Func::RouteTopk => "route_topk".into(),
            Func::RouteTopkGroup => "route_topk_group".into(),
            Func::MoeGroup => "moe_group".into(),
            Func::MoeGateUp(w, t) => format!("moe_gate_up_{}_{}", w.suffix(), t.suffix()),
            Func::MoeDown(w, t) => format!("moe_down_{}_{}", w.suffix(), t.suffix()),
            Func::MoeGateUpMma(w, r) => format!("moe_gate_up_{}_{}", r.infix(), w.suffix()),
            Func::MoeDownMma(w, r) => format!("moe_down_{}_{}", r.infix(), w.suffix()),
            Func::MoeXSplit => "moe_xsplit".into(),
            Func::MoeXHalf => "moe_xhalf".into(),
            Func::MoeGateUpFp4(n) => format!("moe_gate_up_fp4_{}", n.suffix()),
            Func::MoeDownFp4(n) => format!("moe_down_fp4_{}", n.suffix()),
            Func::MoeGateUpFp4Dot => "moe_gate_up_fp4_dot".into(),
            Func::MoeDownFp4Dot => "moe_down_fp4_dot".into(),
            Func::MoeDownFp4DotTokens => "moe_down_fp4_dot_tokens".into(),
            Func::MoeCombine => "moe_combine".into(),
            Func::RowMaxKeys => "row_max_keys".into(),
            Func::Sample => "sample_rows".into(),
            Func::Logprobs => "logprob_rows".into(),
            Func::RepackQ8_0 => "repack_q8_0".into(),
            Func::RepackLut4E8m0 => "repack_lut4_e8m0".into(),
            Func::RepackLut4F16 => "repack_lut4_f16".into(),
        }
    }

    /// Every entry point, for tests that check each one exists in its cubin.
    pub fn all() -> Vec<Func> {
        let mut v = vec![
            Func::RmsNorm,
            Func::Add,
            Func::AddRmsNorm,
            Func::MoeGroup,
            Func::MoeCombine,
            Func::RouteTopk,
            Func::RouteTopkGroup,
            Func::RowMaxKeys,
            Func::Sample,
            Func::Logprobs,
            Func::AttentionCombine,
            Func::MoeXSplit,
            Func::MoeXHalf,
            Func::LinearReduce,
            Func::LinearReduceGroup,
            Func::LinearXParts,
            Func::LinearDotQ8,
            Func::LinearDotQ8Group,
            Func::LinearDotQ8NormGroup,
            Func::MoeGateUpFp4Dot,
            Func::MoeDownFp4Dot,
            Func::MoeDownFp4DotTokens,
            Func::RepackQ8_0,
            Func::RepackLut4E8m0,
            Func::RepackLut4F16,
        ];
        for n in Fp4Pairs::ALL {
            v.extend([Func::MoeGateUpFp4(n), Func::MoeDownFp4(n)]);
        }
        for k in [KvType::Bf16, KvType::F16, KvType::F32] {
            v.extend([Func::RopeKv(k), Func::Attention(k), Func::AttentionRows(k)]);
            v.extend(FLASH_HEAD_DIMS.map(|d| Func::AttentionFlash(k, d)));
        }
        for w in WeightKind::ALL {
            v.extend([Func::Embed(w), Func::Route(w), Func::LinearNorm(w)]);
            v.extend(RowTile::LINEAR.map(|t| Func::Linear(w, t)));
            v.extend(RowTile::LINEAR.map(|t| Func::LinearGroup(w, t)));
            for t in RowTile::EXPERTS {
                v.extend([Func::MoeGateUp(w, t), Func::MoeDown(w, t)]);
            }
        }
        for w in WeightKind::WARP {
            v.extend([Func::LinearWarp(w), Func::LinearWarpGroup(w)]);
        }
        for w in WeightKind::PIPE {
            for r in [MmaRows::R32, MmaRows::R64] {
                v.extend([Func::LinearPipe(w, r), Func::LinearPipeGroup(w, r)]);
            }
        }
        for w in WeightKind::MMA {
            v.push(Func::LinearMmaFast(w));
            for r in [MmaRows::R32, MmaRows::R64] {
                v.push(Func::LinearMma(w, r));
                v.extend([Func::MoeGateUpMma(w, r), Func::MoeDownMma(w, r)]);
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entry_point_is_defined_in_its_file() {
        for f in Func::all() {
            let name = f.name();
            let body = f.file().body();
            let defined = body.contains(&format!(" {name}(const ")) || macro_defines(body, &name);
            assert!(defined, "{name} not found in {}", f.file().name());
        }
    }

    /// `LINEAR_ENTRY(bf16, WF_BF16)` defines `linear_bf16_t1` and `_t8`, and so on for the other macros.
    fn macro_defines(body: &str, name: &str) -> bool {
        for (prefix, mac, suffixes) in [
            ("linear_mma_", "LINEAR_MMA_ENTRY", &[""][..]),
            ("linear_mma32_", "LINEAR_MMA_ENTRY", &[""][..]),
            ("linear_mmafast_", "LINEAR_MMA_ENTRY", &[""][..]),
            ("linear_pipe_", "LINEAR_PIPE_ENTRY", &[""][..]),
            ("linear_pipe32_", "LINEAR_PIPE_ENTRY", &[""][..]),
            ("linear3_pipe_", "LINEAR_PIPE_ENTRY", &[""][..]),
            ("linear3_pipe32_", "LINEAR_PIPE_ENTRY", &[""][..]),
            ("linear_warp_", "LINEAR_WARP_ENTRY", &[""][..]),
            ("linear3_warp_", "LINEAR_WARP_ENTRY", &[""][..]),
            ("linear_norm_", "LINEAR_ENTRY", &[""][..]),
            ("linear_", "LINEAR_ENTRY", &["_t1", "_t2", "_t4"][..]),
            ("linear3_", "LINEAR_ENTRY", &["_t1", "_t2", "_t4"][..]),
            ("embed_", "EMBED_ENTRY", &[""][..]),
            ("route_", "ROUTE_ENTRY", &[""][..]),
            ("moe_gate_up_", "MOE_ENTRY", &["_t1", "_t8"][..]),
            ("moe_down_", "MOE_ENTRY", &["_t1", "_t8"][..]),
            ("moe_gate_up_mma_", "MOE_MMA_ENTRY", &[""][..]),
            ("moe_down_mma_", "MOE_MMA_ENTRY", &[""][..]),
            ("moe_gate_up_mma32_", "MOE_MMA_ENTRY", &[""][..]),
            ("moe_down_mma32_", "MOE_MMA_ENTRY", &[""][..]),
            ("moe_gate_up_fp4_", "FP4_ENTRY", &[""][..]),
            ("moe_down_fp4_", "FP4_ENTRY", &[""][..]),
            ("moe_gate_up_fp4_", "FP4_GEMM_ENTRY", &[""][..]),
            ("moe_down_fp4_", "FP4_GEMM_ENTRY", &[""][..]),
            ("moe_gate_up_fp4_", "FP4_HALF_ENTRY", &[""][..]),
            ("moe_down_fp4_", "FP4_HALF_ENTRY", &[""][..]),
            ("attention_flash_", "FLASH_ENTRY", &[""][..]),
        ] {
            for s in suffixes {
                if let Some(fmt) = name.strip_prefix(prefix).and_then(|r| r.strip_suffix(s)) {
                    if body.contains(&format!("{mac}({fmt}, ")) {
                        return true;
                    }
                }
            }
        }
        false
    }

    /// Kernels launch as programmatic dependents on sm_90 (device.rs): one that read an earlier kernel's
    /// output or wrote anything before `grid_dep_sync` would race it. Every entry point syncs first, except
    /// the GEMVs, which sync once their first weight loads are issued: the split-K ones in `linear_rows`,
    /// the one-row ones before they read x (`one_row_x`).
    #[test]
    fn every_kernel_syncs_with_its_predecessor_first() {
        const GEMVS: [&str; 7] = [
            "linear_impl<",
            "linear_group_impl<",
            "linear_warp_impl<",
            "linear3_warp_impl<",
            "linear_dot_q8_impl(",
            "linear3_dot_q8_impl(",
            "linear3_dot_q8_impl<",
        ];
        for f in KernelFile::ALL {
            let body = f.body();
            for (at, _) in body.match_indices("__global__") {
                let open = at + body[at..].find('{').unwrap();
                let first = body[open + 1..].split(';').next().unwrap().trim();
                let gemv = GEMVS.iter().any(|g| first.starts_with(g));
                assert!(
                    first == "grid_dep_sync()" || gemv,
                    "{}: a kernel begins with `{first}`, not grid_dep_sync()",
                    f.name()
                );
            }
        }
        let linear = KernelFile::Linear.body();
        let rows = &linear[linear.find("static __device__ void linear_rows").unwrap()..];
        let lambda = &rows[rows.find("auto xrows").unwrap()..];
        assert!(lambda[lambda.find('{').unwrap() + 1..]
            .trim_start()
            .starts_with("grid_dep_sync();"));
        assert!(lambda.find("norm_prologue(").unwrap() > lambda.find("grid_dep_sync();").unwrap());
        for (one_row, reads) in [
            (
                "static __device__ void linear_warp_impl",
                &["one_row_x(p)"][..],
            ),
            (
                "static __device__ void linear_dot_q8_impl",
                &["one_row_x(p)", "norm_prologue("][..],
            ),
        ] {
            let body = &linear[linear.find(one_row).unwrap()..];
            let body = &body[..body.find("\n}\n").unwrap()];
            let sync = body.find("grid_dep_sync();").unwrap();
            for read in reads {
                let x = body.find(read).unwrap();
                assert!(sync < x, "{one_row} reads x before grid_dep_sync");
            }
        }
    }

    #[test]
    fn kernel_files_stay_small_and_documented() {
        for f in KernelFile::ALL {
            let body = f.body();
            assert!(body.lines().count() < 800, "{} is too long", f.name());
            assert!(
                body.starts_with(&format!("// {} — ", f.name())),
                "{} lacks its header comment",
                f.name()
            );
        }
    }
}
