//! Launchers of `linear.cu`: `y = x Wᵀ + b` over a step's rows, and the logits of its selected rows. One row
//! against a weight of many rows (decode) goes to a one-row GEMV (bf16 / f16: a warp per 2 weight rows; Q8_0:
//! int8 dot products against x as int8 planes), other few rows to the split-K GEMV (one launch reads each
//! weight once per tile of up to 8 rows), many rows of weights that decode exactly to bf16 to the tensor-core
//! tiles; when those tiles are too few to fill the GPU (a batched decode step of 16–64 rows: a [4096, 2880]
//! weight is 32 tiles of 128 weight rows) they also split along K, and `linear_reduce` adds the splits in a
//! fixed order. Steps of 5–64 rows (batched decode) of bf16 and Q8_0 weights take the pipelined tiles instead
//! (`linear_pipe_<fmt>`: x split once into three bf16 planes by `linear_xparts`, then x and weights streamed
//! through a cp.async ring, the same exact arithmetic; q, k and v as one grid). At one step row the norm before
//! q/k/v (and before the router, `ops/moe.rs`) runs inside the GEMV: each block computes it itself
//! (`norm_prologue` in common.cu), so it costs no launch of its own.

use crate::backend::{CudaBuf, CudaLinear, CudaStep, CudaVector};
use crate::device::Device;
use crate::error::Result;
use crate::kernels::{pipe_smem_bytes, Func, MmaRows, RowTile, WeightKind};
use crate::ops::moe::XSplitParams;
use crate::ops::{blocks, cfg, shape_error, DevWeight, WeightRef};
use crate::options::LinearKernel;
use cudarc::driver::LaunchConfig;
use gptoss_engine::memory::{PIPE_MAX_K, PIPE_MAX_ROWS};

#[repr(C)]
#[derive(Clone, Copy)]
struct LinearParams {
    w: WeightRef,
    bias: u64,
    x: u64,
    x_rows: u64,
    out: u64,
    k: i32,
    n_out: i32,
    n_tok: i32,
    x_ld: i32,
    out_ld: i32,
    groups: i32,
    k_split: i32,
    partial: u64,
}

// SAFETY: #[repr(C)] mirror of `LinearParams` in linear.cu.
unsafe impl cudarc::driver::DeviceRepr for LinearParams {}

#[repr(C)]
struct LinearGroupParams {
    part: [LinearParams; 3],
    first: [i32; 4],
}

// SAFETY: #[repr(C)] mirror of `LinearGroupParams` in linear.cu.
unsafe impl cudarc::driver::DeviceRepr for LinearGroupParams {}

#[repr(C)]
struct XPartsParams {
    x: u64,
    x_rows: u64,
    planes: u64,
    n_tok: i32,
    k: i32,
    kp: i32,
    x_ld: i32,
    q8_order: i32,
}

// SAFETY: #[repr(C)] mirror of `XPartsParams` in linear.cu.
unsafe impl cudarc::driver::DeviceRepr for XPartsParams {}

#[repr(C)]
#[derive(Clone, Copy)]
struct PipeParams {
    p: LinearParams,
    planes: u64,
    kp: i32,
}

// SAFETY: #[repr(C)] mirror of `PipeParams` in linear.cu.
unsafe impl cudarc::driver::DeviceRepr for PipeParams {}

#[repr(C)]
struct PipeGroupParams {
    part: [PipeParams; 3],
    first: [i32; 4],
}

// SAFETY: #[repr(C)] mirror of `PipeGroupParams` in linear.cu.
unsafe impl cudarc::driver::DeviceRepr for PipeGroupParams {}

#[repr(C)]
struct ReduceGroupParams {
    part: [ReduceParams; 3],
    first: [i32; 4],
}

// SAFETY: #[repr(C)] mirror of `ReduceGroupParams` in linear.cu.
unsafe impl cudarc::driver::DeviceRepr for ReduceGroupParams {}

#[repr(C)]
#[derive(Clone, Copy)]
struct ReduceParams {
    partial: u64,
    bias: u64,
    out: u64,
    n_tok: i32,
    n_out: i32,
    out_ld: i32,
    splits: i32,
}

// SAFETY: #[repr(C)] mirror of `ReduceParams` in linear.cu.
unsafe impl cudarc::driver::DeviceRepr for ReduceParams {}

/// The norm a GEMV computes itself (`NormIn` in common.cu).
#[repr(C)]
pub(crate) struct NormIn {
    resid: u64,
    delta: u64,
    w: u64,
    h: u64,
    ticket: u64,
    n: i32,
    eps: f32,
}

#[repr(C)]
struct LinearNormParams {
    p: LinearParams,
    norm: NormIn,
    split: XSplitParams,
}

// SAFETY: #[repr(C)] mirror of `LinearNormParams` in linear.cu.
unsafe impl cudarc::driver::DeviceRepr for LinearNormParams {}

#[repr(C)]
struct LinearGroupNormParams {
    g: LinearGroupParams,
    norm: NormIn,
}

// SAFETY: #[repr(C)] mirror of `LinearGroupNormParams` in linear.cu.
unsafe impl cudarc::driver::DeviceRepr for LinearGroupNormParams {}

/// Longest row `norm_prologue` takes (`RMS_VEC · 4 · 256` in common.cu).
const NORM_MAX_COLS: usize = 4096;

/// The norm before a linear: `x += y` when `y` is given, then `h = rms_norm(x) · weight`.
pub struct NormArgs<'a> {
    /// The residual stream.
    pub x: &'a mut CudaBuf,
    /// The block output to add into it first, if any.
    pub y: Option<&'a CudaBuf>,
    /// The norm's weight.
    pub weight: &'a CudaVector,
    /// The norm's epsilon.
    pub eps: f32,
    /// The normalized rows (what the linear reads).
    pub h: &'a mut CudaBuf,
}

impl NormArgs<'_> {
    /// The kernel's view, when a GEMV over this step can compute the norm itself: one step row, a row
    /// `norm_prologue` takes, fusion on (`GPTOSS_FUSE_NORM`).
    pub(crate) fn fused(&self, dev: &Device, step: &CudaStep) -> Option<NormIn> {
        let n = self.x.cols;
        let fits = dev.fuse_norm
            && step.rows == 1
            && n.is_multiple_of(4)
            && n <= NORM_MAX_COLS
            && self.weight.len == n
            && self.h.cols == n
            && self.y.is_none_or(|y| y.cols == n)
            && self.x.rows >= 1
            && self.h.rows >= 1
            && self.y.is_none_or(|y| y.rows >= 1);
        fits.then(|| NormIn {
            resid: self.x.buf.ptr(),
            delta: self.y.map_or(0, |y| y.buf.ptr()),
            w: self.weight.buf.ptr(),
            h: self.h.buf.ptr(),
            ticket: step.norm_ticket.ptr(),
            n: n as i32,
            eps: self.eps,
        })
    }

    /// The norm in a launch of its own (`add_rmsnorm_f32`, or `rmsnorm_f32` without `y`).
    pub(crate) fn launch(&mut self, dev: &Device, step: &CudaStep) -> Result<()> {
        let (w, eps) = (self.weight, self.eps);
        match self.y {
            Some(y) => crate::ops::norm::add_rms_norm(dev, step.rows, (self.x, y), w, eps, self.h),
            None => crate::ops::norm::rms_norm(dev, step.rows, self.x, w, eps, self.h),
        }
    }
}

/// Weight rows per thread group of the split-K kernel (`LIN_NR` in linear.cu).
const SPLIT_ROWS: usize = 4;
/// Weight rows of one tensor-core tile (`MMA_BN` in mma.cu).
const MMA_WEIGHT_ROWS: usize = 128;
/// K elements per step of the tensor-core tiles (`MMA_BK` in mma.cu).
const MMA_K_STEP: usize = 32;
/// Fewest K steps a split of the tensor-core tiles takes (fewer, and the pipeline's fill and the partial
/// sums' writes outweigh the work).
const MIN_K_STEPS_PER_SPLIT: usize = 4;
/// Blocks per SM the tensor-core tiles are register-limited to (`LINEAR_MMA_ENTRY`'s MINB).
const MMA_BLOCKS_PER_SM: usize = 2;
/// Fewest rows for the tensor-core path without K splits (`GPTOSS_LINEAR_KERNEL=tiles`): below this a
/// 128-row tile of weights leaves most SMs idle.
pub const MMA_MIN_ROWS: usize = 16;
/// Fewest rows for the tensor-core path split along K (the default) for weights of at least
/// [`NARROW_WEIGHT_ROWS`] rows. Measured on the H200 (bf16, q [4096, 2880]): at 4 rows the GEMV takes 14.8 µs
/// and the split tiles 21.3; at 5 rows 21.4 µs (tiles); at 8 rows the GEMV, two tiles of 4, 27.0 and the tiles
/// 21.3; at 16 rows 51.0 and 21.9.
pub const SPLIT_TILE_MIN_ROWS: usize = 5;
/// Narrower weights (k and v, [512, 2880]) keep the GEMV up to more rows: measured 5.7 µs (GEMV) vs 10.8
/// (tiles) at 8 rows, 9.1 vs 9.4–11.5 at 16, 15.7 vs 10.8 at 32.
pub const NARROW_SPLIT_TILE_MIN_ROWS: usize = 24;
/// Weights with fewer rows than this are narrow (see [`NARROW_SPLIT_TILE_MIN_ROWS`]).
pub const NARROW_WEIGHT_ROWS: usize = 2048;
/// Fewest step rows whose tensor-core linears take the fast tiles (x as two bf16 parts, `linear_mmafast_<fmt>`)
/// unless exact: prompts of more than 64 tokens, where the experts take their f16 GEMM too (more than 8 pairs
/// per expert on 20b); decode and batched decode stay exact. (The router of such steps is not a linear: its
/// own kernel, `route_<fmt>`, keeps f32.)
pub const FAST_LINEAR_MIN_ROWS: usize = 65;

/// Fewest weight rows for the one-row GEMVs: below this their warps are too few to fill the GPU.
pub const ONE_ROW_MIN_ROWS: usize = 256;
/// Longest K of `linear_dot_q8`, whose block holds x's planes in shared memory (K / 32 · 100 bytes).
pub const DOT_Q8_MAX_K: usize = 8192;
/// Weight rows per 256-thread block of `linear_warp_<fmt>` (8 warps × `WARP_ROWS`).
const WARP_BLOCK_ROWS: usize = 16;
/// Weight rows per 256-thread block of `linear_dot_q8` (8 warps × `DOT_Q8_ROWS`).
const DOT_Q8_BLOCK_ROWS: usize = 32;
/// Bytes of x planes and scale per 32-element block in `linear_dot_q8`'s shared memory.
const DOT_Q8_SMEM_PER_BLOCK: usize = 100;

/// The one-row GEMVs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OneRow {
    /// `linear_warp_<fmt>`: bf16 / f16 decoded to f32.
    Warp,
    /// `linear_dot_q8`: Q8_0 codes on dp4a.
    DotQ8,
}

impl OneRow {
    /// Weight rows per block.
    fn block_rows(self) -> usize {
        match self {
            OneRow::Warp => WARP_BLOCK_ROWS,
            OneRow::DotQ8 => DOT_Q8_BLOCK_ROWS,
        }
    }

    /// Dynamic shared memory of a launch over K = `k`.
    fn smem(self, k: usize) -> u32 {
        match self {
            OneRow::Warp => 0,
            OneRow::DotQ8 => (k / 32 * DOT_Q8_SMEM_PER_BLOCK) as u32,
        }
    }

    fn func(self, kind: WeightKind, group: bool) -> Func {
        match (self, group) {
            (OneRow::Warp, false) => Func::LinearWarp(kind),
            (OneRow::Warp, true) => Func::LinearWarpGroup(kind),
            (OneRow::DotQ8, false) => Func::LinearDotQ8,
            (OneRow::DotQ8, true) => Func::LinearDotQ8Group,
        }
    }
}

/// The one-row GEMV for weight `w` at one step row, if any: weights of [`ONE_ROW_MIN_ROWS`] rows or more,
/// bf16 / f16, or Q8_0 with whole 32-element blocks up to [`DOT_Q8_MAX_K`].
fn one_row(w: &DevWeight) -> Option<OneRow> {
    if w.rows < ONE_ROW_MIN_ROWS {
        return None;
    }
    match w.kind {
        WeightKind::Bf16 | WeightKind::F16 => Some(OneRow::Warp),
        WeightKind::Q8 if w.k.is_multiple_of(32) && w.k <= DOT_Q8_MAX_K => Some(OneRow::DotQ8),
        _ => None,
    }
}

/// How a linear of `n_tok` rows runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinearPath {
    /// A one-row GEMV (one step row, `auto`).
    OneRow(OneRow),
    /// Split-K GEMV, tiles of this many rows.
    Split(RowTile),
    /// Pipelined exact tensor-core tiles (`linear_pipe_<fmt>`, x from `linear_xparts`' planes).
    Pipe {
        /// Step rows per tile.
        rows: MmaRows,
        /// K elements per block (K or more: no split).
        k_split: usize,
    },
    /// Tensor-core tiles.
    Mma {
        /// Step rows per tile.
        rows: MmaRows,
        /// K elements per block (K or more: no split).
        k_split: usize,
        /// x as two bf16 parts (`linear_mmafast_<fmt>`, 64 rows, the whole K in the tensor cores) instead of three.
        fast: bool,
    },
}

/// The tile of the split-K kernel for `n_tok` rows: 1, 2, or 4 rows (several tiles beyond 4). Measured on
/// the H100 for q [4096, 2880] bf16: T = 4 14.9 µs, T = 8 43.0 µs in one tile of 8 (2 weight rows per thread
/// group, bound by the x reads) against ≈ 30 µs in two tiles of 4; so no tile of 8.
pub fn split_tile(n_tok: usize) -> RowTile {
    match n_tok {
        0 | 1 => RowTile::One,
        2 => RowTile::Two,
        _ => RowTile::Four,
    }
}

/// What decides a linear's kernel besides its weight.
#[derive(Clone, Copy, Debug)]
pub struct LinearShape {
    /// Step rows.
    pub n_tok: usize,
    /// Streaming multiprocessors of the device.
    pub sms: usize,
    /// f32 elements of partial-sum room for K splits (0: no splits).
    pub split_room: usize,
    /// The kernel choice forced by `GPTOSS_LINEAR_KERNEL`, if any.
    pub kernel: LinearKernel,
    /// Exact kernels only (`--exact`: no fast tiles).
    pub exact: bool,
    /// bf16 elements of room for the pipelined tiles' x planes (0: none, so no pipelined tiles).
    pub xparts_room: usize,
    /// Shared memory one block may opt in to.
    pub smem_per_block: usize,
    /// Shared memory of one SM.
    pub smem_per_sm: usize,
}

/// Most blocks of the pipelined tiles an SM runs at once (`LINEAR_PIPE_ENTRY`'s MINB: 128 registers).
const PIPE_BLOCKS_PER_SM: usize = 2;
/// Shared memory the driver reserves per block.
const SMEM_RESERVED_PER_BLOCK: usize = 1024;

/// Whether the pipelined tiles take `w` at `s.n_tok` rows in tiles of `rows`: bf16 / Q8_0 weights of whole K steps
/// ([`DevWeight::pipe_ready`]), up to [`PIPE_MAX_ROWS`] rows and [`PIPE_MAX_K`], room for the x planes and the
/// ring's shared memory.
fn pipe_fits(s: &LinearShape, w: &DevWeight, rows: MmaRows) -> bool {
    matches!(s.kernel, LinearKernel::Auto | LinearKernel::Pipe)
        && w.pipe_ready()
        && s.n_tok <= PIPE_MAX_ROWS
        && w.k <= PIPE_MAX_K
        && 3 * s.n_tok * w.k <= s.xparts_room
        && pipe_smem_bytes(w.kind, rows) as usize <= s.smem_per_block
}

/// K elements per block of a pipelined launch of `tiles` blocks (weight tiles × row tiles) over `out_rows` weight
/// rows of K = `k`: as many splits as keep every block slot of one wave busy and no more, since a second, partial
/// wave costs as much as a full one (the older tiles round up: q at 64 rows took 288 blocks for 264 slots).
fn pipe_k_split(
    s: &LinearShape,
    kind: WeightKind,
    rows: MmaRows,
    k: usize,
    tiles: usize,
    out_rows: usize,
) -> usize {
    let smem = pipe_smem_bytes(kind, rows) as usize;
    let per_sm = (s.smem_per_sm / (smem + SMEM_RESERVED_PER_BLOCK)).clamp(1, PIPE_BLOCKS_PER_SM);
    let k_steps = k / MMA_K_STEP;
    let mut splits = (per_sm * s.sms / tiles.max(1))
        .min(k_steps / MIN_K_STEPS_PER_SPLIT)
        .max(1);
    while splits > 1 && splits * s.n_tok * out_rows > s.split_room {
        splits -= 1;
    }
    k_steps.div_ceil(splits) * MMA_K_STEP
}

/// The pipelined tiles for `w` at `s.n_tok` rows in tiles of `rows`, if they take it ([`pipe_fits`]).
fn pipe_path(s: LinearShape, w: &DevWeight, rows: MmaRows) -> Option<LinearPath> {
    if !pipe_fits(&s, w, rows) {
        return None;
    }
    let tiles = w.rows.div_ceil(MMA_WEIGHT_ROWS) * s.n_tok.div_ceil(rows.rows());
    Some(LinearPath::Pipe {
        rows,
        k_split: pipe_k_split(&s, w.kind, rows, w.k, tiles, w.rows),
    })
}

/// One pipelined launch for three linears of one input (`linear3_pipe_<fmt>`): when the first takes the
/// pipelined tiles and the other two (k and v, narrow enough that alone they would take the GEMV or leave most
/// SMs idle) fit them in the same format; the tile rows and the K split of the whole group.
fn pipe_group(s: LinearShape, w: [&DevWeight; 3]) -> Option<(MmaRows, usize)> {
    let LinearPath::Pipe { rows, .. } = choose_linear(s, w[0]) else {
        return None;
    };
    if !w
        .iter()
        .all(|l| l.kind == w[0].kind && l.k == w[0].k && pipe_fits(&s, l, rows))
    {
        return None;
    }
    let row_tiles = s.n_tok.div_ceil(rows.rows());
    let tiles = w
        .iter()
        .map(|l| l.rows.div_ceil(MMA_WEIGHT_ROWS) * row_tiles)
        .sum();
    let out_rows = w.iter().map(|l| l.rows).sum();
    Some((
        rows,
        pipe_k_split(&s, w[0].kind, rows, w[0].k, tiles, out_rows),
    ))
}

/// A one-row GEMV for one row (`auto`, see [`one_row`]); tensor cores for many rows when the weight decodes
/// exactly to bf16 (split along K when the tiles alone would leave SMs idle and `split_room` holds the partial
/// sums; the fast tiles from [`FAST_LINEAR_MIN_ROWS`] unless exact); the split-K GEMV otherwise.
pub fn choose_linear(s: LinearShape, w: &DevWeight) -> LinearPath {
    if let (1, LinearKernel::Auto, Some(kernel)) = (s.n_tok, s.kernel, one_row(w)) {
        return LinearPath::OneRow(kernel);
    }
    let gemv = LinearPath::Split(split_tile(s.n_tok));
    let tiles = match s.kernel {
        LinearKernel::Gemv => false,
        LinearKernel::TilesSplitK | LinearKernel::Pipe => true,
        LinearKernel::Auto if w.rows < NARROW_WEIGHT_ROWS => s.n_tok >= NARROW_SPLIT_TILE_MIN_ROWS,
        LinearKernel::Auto => s.n_tok >= SPLIT_TILE_MIN_ROWS,
        LinearKernel::Tiles => s.n_tok >= MMA_MIN_ROWS,
    };
    if !tiles || !w.mma_exact() {
        return gemv;
    }
    let k_steps = w.k.div_ceil(MMA_K_STEP);
    let fast = !s.exact && s.kernel == LinearKernel::Auto && s.n_tok >= FAST_LINEAR_MIN_ROWS;
    let rows = if s.n_tok <= 32 {
        MmaRows::R32
    } else {
        MmaRows::R64
    };
    if let (false, Some(pipe)) = (fast, pipe_path(s, w, rows)) {
        return pipe;
    }
    let tiles = w.rows.div_ceil(MMA_WEIGHT_ROWS) * s.n_tok.div_ceil(rows.rows());
    // The fast tiles split only until every SM has a block (k and v, 4 weight tiles wide: 56.5 → 27.7 µs at
    // T = 512 with x in one part, bench/BENCHMARKS.md session 15); two blocks per SM, as the exact tiles aim
    // for, was not measured for them.
    let target_blocks = if fast {
        s.sms
    } else {
        MMA_BLOCKS_PER_SM * s.sms
    };
    let mut splits = if s.kernel == LinearKernel::Tiles {
        1
    } else {
        target_blocks
            .div_ceil(tiles)
            .min(k_steps / MIN_K_STEPS_PER_SPLIT)
            .max(1)
    };
    while splits > 1 && splits * s.n_tok * w.rows > s.split_room {
        splits -= 1;
    }
    let k_split = k_steps.div_ceil(splits) * MMA_K_STEP;
    LinearPath::Mma {
        rows,
        k_split,
        fast,
    }
}

/// Device rows a linear reads and writes: `n_tok` rows of `x` (row `t`, or row `x_rows[t]` when `x_rows` is
/// not 0) of stride `x_ld`, into `out` rows of stride `out_ld`; `partial` (0 = none) is room for
/// `split_room` f32 partial sums of K splits.
pub(crate) struct Rows {
    pub x: u64,
    pub x_ld: usize,
    pub x_rows: u64,
    pub n_tok: usize,
    pub out: u64,
    pub out_ld: usize,
    pub partial: u64,
    pub split_room: usize,
    /// Room for the pipelined tiles' x planes (bf16 elements; 0 = none).
    pub xparts: u64,
    pub xparts_room: usize,
}

/// The kernel parameters of `out = x Wᵀ + b` over `r`, unsplit, one thread group per block.
fn params(w: &CudaLinear, r: &Rows) -> LinearParams {
    let wt = &w.w;
    LinearParams {
        w: wt.as_ref(),
        bias: w.bias.as_ref().map_or(0, |b| b.ptr()),
        x: r.x,
        x_rows: r.x_rows,
        out: r.out,
        k: wt.k as i32,
        n_out: wt.rows as i32,
        n_tok: r.n_tok as i32,
        x_ld: r.x_ld as i32,
        out_ld: r.out_ld as i32,
        groups: 1,
        k_split: wt.k as i32,
        partial: r.partial,
    }
}

/// The split-K GEMV's parameters over `r`, and its blocks along the weight rows.
fn gemv_params(w: &CudaLinear, r: &Rows) -> (LinearParams, u32) {
    let mut p = params(w, r);
    p.groups = w.w.split_groups();
    let weight_blocks = blocks(w.w.rows, p.groups as usize * SPLIT_ROWS);
    (p, weight_blocks)
}

/// What [`choose_linear`] decides `r` by on `dev`.
fn shape_of(dev: &Device, r: &Rows) -> LinearShape {
    LinearShape {
        n_tok: r.n_tok,
        sms: dev.caps.sm_count as usize,
        split_room: if r.partial == 0 { 0 } else { r.split_room },
        kernel: dev.linear_kernel,
        exact: dev.exact,
        xparts_room: if r.xparts == 0 { 0 } else { r.xparts_room },
        smem_per_block: dev.caps.smem_per_block as usize,
        smem_per_sm: dev.caps.smem_per_sm as usize,
    }
}

/// The path `out = x Wᵀ + b` over `n_tok` rows of `step` takes (tests check that the path they mean to cover ran).
pub fn path_of(dev: &Device, step: &CudaStep, w: &CudaLinear, n_tok: usize) -> LinearPath {
    let r = Rows {
        x: 0,
        x_ld: w.w.k,
        x_rows: 0,
        n_tok,
        out: 0,
        out_ld: w.w.rows,
        partial: step.linear_part.ptr(),
        split_room: step.linear_part.len(),
        xparts: step.linear_xparts.ptr(),
        xparts_room: step.linear_xparts.len(),
    };
    choose_linear(shape_of(dev, &r), &w.w)
}

/// Whether `w` at `n_tok` step rows takes the split-K GEMV of one row, the one with a fused-norm entry
/// (`linear_norm_<fmt>`: the router, too few rows for a one-row GEMV).
pub(crate) fn takes_fused_norm(dev: &Device, w: &CudaLinear, n_tok: usize) -> bool {
    let shape = LinearShape {
        n_tok,
        sms: dev.caps.sm_count as usize,
        split_room: 0,
        kernel: dev.linear_kernel,
        exact: dev.exact,
        xparts_room: 0,
        smem_per_block: dev.caps.smem_per_block as usize,
        smem_per_sm: dev.caps.smem_per_sm as usize,
    };
    n_tok == 1 && choose_linear(shape, &w.w) == LinearPath::Split(RowTile::One)
}

/// Launches `out = h Wᵀ + b` at one step row, `h` being the norm `norm` that each block of the split-K GEMV
/// computes itself (the caller checked [`takes_fused_norm`]); the blocks also write h's `split` when its
/// rows are 1 (the MXFP4 experts' x, for a router).
pub(crate) fn launch_fused_norm(
    dev: &Device,
    w: &CudaLinear,
    r: Rows,
    norm: NormIn,
    split: XSplitParams,
) -> Result<()> {
    let (p, weight_blocks) = gemv_params(w, &r);
    let c = one_row_cfg((weight_blocks, 1, 1), 4 * w.w.k as u32);
    let params = LinearNormParams { p, norm, split };
    dev.launch(Func::LinearNorm(w.w.kind), c, &params)
}

/// Launches `out = x Wᵀ + b` over `r` (shapes already checked by the caller).
pub(crate) fn launch(dev: &Device, w: &CudaLinear, r: Rows) -> Result<()> {
    let wt = &w.w;
    if r.n_tok == 0 {
        return Ok(());
    }
    let mut p = params(w, &r);
    match choose_linear(shape_of(dev, &r), wt) {
        LinearPath::Mma {
            rows,
            k_split,
            fast,
        } => {
            let splits = wt.k.div_ceil(k_split);
            p.k_split = k_split as i32;
            let grid = (
                blocks(wt.rows, MMA_WEIGHT_ROWS),
                blocks(r.n_tok, rows.rows()),
                splits as u32,
            );
            let func = if fast {
                Func::LinearMmaFast(wt.kind)
            } else {
                Func::LinearMma(wt.kind, rows)
            };
            dev.launch(func, cfg(grid, 256), &p)?;
            launch_reduce(dev, &r, &p, splits)
        }
        LinearPath::Pipe { rows, k_split } => {
            launch_xparts(dev, w, &r)?;
            launch_pipe(dev, w, &r, rows, k_split)
        }
        LinearPath::OneRow(kernel) => {
            let grid = (blocks(wt.rows, kernel.block_rows()), 1, 1);
            dev.launch(
                kernel.func(wt.kind, false),
                one_row_cfg(grid, kernel.smem(wt.k)),
                &p,
            )
        }
        LinearPath::Split(tile) => {
            let (p, weight_blocks) = gemv_params(w, &r);
            let grid = (weight_blocks, blocks(r.n_tok, tile.rows()), 1);
            dev.launch(Func::Linear(wt.kind, tile), cfg(grid, 256), &p)
        }
    }
}

/// Adds the `splits` K splits of a tensor-core launch with parameters `p` over `r` into `r.out` (nothing to do for
/// one: the tiles wrote `out` themselves).
fn launch_reduce(dev: &Device, r: &Rows, p: &LinearParams, splits: usize) -> Result<()> {
    if splits <= 1 {
        return Ok(());
    }
    let reduce = ReduceParams {
        partial: r.partial,
        bias: p.bias,
        out: r.out,
        n_tok: r.n_tok as i32,
        n_out: p.n_out,
        out_ld: r.out_ld as i32,
        splits: splits as i32,
    };
    let grid = (blocks(r.n_tok * p.n_out as usize, 256), 1, 1);
    dev.launch(Func::LinearReduce, cfg(grid, 256), &reduce)
}

/// Writes `r`'s x rows as the three bf16 planes that `linear_pipe_<fmt>` of `w`'s format reads.
fn launch_xparts(dev: &Device, w: &CudaLinear, r: &Rows) -> Result<()> {
    let k = w.w.k;
    let p = XPartsParams {
        x: r.x,
        x_rows: r.x_rows,
        planes: r.xparts,
        n_tok: r.n_tok as i32,
        k: k as i32,
        kp: k as i32,
        x_ld: r.x_ld as i32,
        q8_order: (w.w.kind == WeightKind::Q8) as i32,
    };
    let grid = (blocks(r.n_tok * k / 2, 256), 1, 1);
    dev.launch(Func::LinearXParts, cfg(grid, 256), &p)
}

/// Launches the pipelined tiles of `w` over `r` (its x planes written), then the reduce of their K splits.
fn launch_pipe(
    dev: &Device,
    w: &CudaLinear,
    r: &Rows,
    rows: MmaRows,
    k_split: usize,
) -> Result<()> {
    let wt = &w.w;
    let splits = wt.k.div_ceil(k_split);
    let mut p = params(w, r);
    p.k_split = k_split as i32;
    let grid = (
        blocks(wt.rows, MMA_WEIGHT_ROWS),
        blocks(r.n_tok, rows.rows()),
        splits as u32,
    );
    let c = LaunchConfig {
        shared_mem_bytes: pipe_smem_bytes(wt.kind, rows),
        ..cfg(grid, 256)
    };
    let pipe = PipeParams {
        p,
        planes: r.xparts,
        kp: wt.k as i32,
    };
    dev.launch(Func::LinearPipe(wt.kind, rows), c, &pipe)?;
    launch_reduce(dev, r, &pipe.p, splits)
}

/// Launches q, k and v's pipelined tiles as one grid (their x planes written), K split alike, each part's partial
/// sums after the previous part's, then one reduce for the three.
fn launch_pipe_group(
    dev: &Device,
    w: [&CudaLinear; 3],
    rows: &[Rows; 3],
    tile: MmaRows,
    k_split: usize,
) -> Result<()> {
    let (kind, k, n_tok) = (w[0].w.kind, w[0].w.k, rows[0].n_tok);
    let splits = k.div_ceil(k_split);
    let mut before = 0;
    let part = [0, 1, 2].map(|i| {
        let mut p = params(w[i], &rows[i]);
        p.k_split = k_split as i32;
        p.partial = rows[i].partial + (4 * splits * n_tok * before) as u64;
        before += w[i].w.rows;
        PipeParams {
            p,
            planes: rows[i].xparts,
            kp: k as i32,
        }
    });
    let first = group_starts(w.map(|l| blocks(l.w.rows, MMA_WEIGHT_ROWS)));
    let grid = (first[3] as u32, blocks(n_tok, tile.rows()), splits as u32);
    let c = LaunchConfig {
        shared_mem_bytes: pipe_smem_bytes(kind, tile),
        ..cfg(grid, 256)
    };
    dev.launch(
        Func::LinearPipeGroup(kind, tile),
        c,
        &PipeGroupParams { part, first },
    )?;
    if splits <= 1 {
        return Ok(());
    }
    let reduce = [0, 1, 2].map(|i| ReduceParams {
        partial: part[i].p.partial,
        bias: part[i].p.bias,
        out: rows[i].out,
        n_tok: n_tok as i32,
        n_out: part[i].p.n_out,
        out_ld: rows[i].out_ld as i32,
        splits: splits as i32,
    });
    let first = group_starts(w.map(|l| blocks(n_tok * l.w.rows, 256)));
    let g = ReduceGroupParams {
        part: reduce,
        first,
    };
    dev.launch(
        Func::LinearReduceGroup,
        cfg((first[3] as u32, 1, 1), 256),
        &g,
    )
}

/// `grid` blocks of 256 threads with `smem` bytes of dynamic shared memory.
fn one_row_cfg(grid: (u32, u32, u32), smem: u32) -> LaunchConfig {
    LaunchConfig {
        shared_mem_bytes: smem,
        ..cfg(grid, 256)
    }
}

/// The checked device rows of `out = x Wᵀ + b` for `n_tok` rows of `x` (or the rows listed at device
/// address `x_rows`).
fn rows_of(
    step: &CudaStep,
    x: &CudaBuf,
    x_rows: u64,
    n_tok: usize,
    w: &CudaLinear,
    out: &CudaBuf,
) -> Result<Rows> {
    let wt = &w.w;
    if x.cols != wt.k || out.cols != wt.rows || n_tok > out.rows {
        return Err(shape_error(
            "linear",
            format!(
                "x [_, {}] · W [{}, {}] into out [{n_tok}, {}]",
                x.cols, wt.rows, wt.k, out.cols
            ),
        ));
    }
    Ok(Rows {
        x: x.buf.ptr(),
        x_ld: x.cols,
        x_rows,
        n_tok,
        out: out.buf.ptr(),
        out_ld: out.cols,
        partial: step.linear_part.ptr(),
        split_room: step.linear_part.len(),
        xparts: step.linear_xparts.ptr(),
        xparts_room: step.linear_xparts.len(),
    })
}

/// `out = x Wᵀ + b` for `n_tok` rows of `x` (or the rows listed at device address `x_rows`).
fn run(
    dev: &Device,
    step: &CudaStep,
    x: &CudaBuf,
    x_rows: u64,
    n_tok: usize,
    w: &CudaLinear,
    out: &mut CudaBuf,
) -> Result<()> {
    launch(dev, w, rows_of(step, x, x_rows, n_tok, w, out)?)
}

/// The checked rows of three linears of one input at `n_tok` rows, and the path all three take when they share
/// one (same format, same path; `None`: they go one launch each).
fn rows3(
    dev: &Device,
    step: &CudaStep,
    x: &CudaBuf,
    n_tok: usize,
    w: [&CudaLinear; 3],
    out: &[&mut CudaBuf; 3],
) -> Result<([Rows; 3], Option<LinearPath>)> {
    let rows = [
        rows_of(step, x, 0, n_tok, w[0], out[0])?,
        rows_of(step, x, 0, n_tok, w[1], out[1])?,
        rows_of(step, x, 0, n_tok, w[2], out[2])?,
    ];
    let shape = shape_of(dev, &rows[0]);
    let kind = w[0].w.kind;
    let path = choose_linear(shape, &w[0].w);
    let shared = w
        .iter()
        .all(|l| l.w.kind == kind && choose_linear(shape, &l.w) == path);
    Ok((rows, shared.then_some(path)))
}

/// Where each part of a three-part group launch of `blocks` blocks each begins in its grid (`first` of the
/// kernels' group parameters; `group_part` in linear.cu), and the total last.
fn group_starts(blocks: [u32; 3]) -> [i32; 4] {
    let [a, b, c] = blocks.map(|n| n as i32);
    [0, a, a + b, a + b + c]
}

/// The grouped launch of three linears on one-row GEMV `kernel`: its parameters and the blocks of all three.
fn one_row_group(
    kernel: OneRow,
    w: [&CudaLinear; 3],
    rows: &[Rows; 3],
) -> (LinearGroupParams, u32) {
    let part = [0, 1, 2].map(|i| params(w[i], &rows[i]));
    let first = group_starts(w.map(|l| blocks(l.w.rows, kernel.block_rows())));
    (LinearGroupParams { part, first }, first[3] as u32)
}

/// `out[i] = x W[i]ᵀ + b[i]` over the step's rows for three linears of one input (q, k and v): one launch
/// when all three take the same one-row GEMV, or the split-K GEMV with the same format and tile; one launch
/// each otherwise.
pub fn linear3(
    dev: &Device,
    step: &CudaStep,
    x: &CudaBuf,
    w: [&CudaLinear; 3],
    out: [&mut CudaBuf; 3],
) -> Result<()> {
    check_step_rows(step, x)?;
    let n_tok = step.rows;
    let (rows, shared) = rows3(dev, step, x, n_tok, w, &out)?;
    let kind = w[0].w.kind;
    if let Some(LinearPath::OneRow(kernel)) = shared {
        let (g, b) = one_row_group(kernel, w, &rows);
        let c = one_row_cfg((b, 1, 1), kernel.smem(w[0].w.k));
        return dev.launch(kernel.func(kind, true), c, &g);
    }
    if let (Some((tile, k_split)), true) = (
        pipe_group(shape_of(dev, &rows[0]), w.map(|l| &l.w)),
        n_tok > 0,
    ) {
        launch_xparts(dev, w[0], &rows[0])?;
        return launch_pipe_group(dev, w, &rows, tile, k_split);
    }
    let (Some(LinearPath::Split(tile)), false) = (shared, n_tok == 0) else {
        for (l, r) in w.into_iter().zip(rows) {
            launch(dev, l, r)?;
        }
        return Ok(());
    };
    let [(p0, b0), (p1, b1), (p2, b2)] = [0, 1, 2].map(|i| gemv_params(w[i], &rows[i]));
    let first = group_starts([b0, b1, b2]);
    let grid = (first[3] as u32, blocks(n_tok, tile.rows()), 1);
    let part = [p0, p1, p2];
    dev.launch(
        Func::LinearGroup(kind, tile),
        cfg(grid, 256),
        &LinearGroupParams { part, first },
    )
}

/// `h = rms_norm(x (+= y)) · weight`, then `out[i] = h W[i]ᵀ + b[i]` (q, k and v) over the step's rows: at one
/// step row on the grouped Q8_0 one-row GEMV, one launch whose blocks each compute the norm themselves;
/// otherwise the norm's own launch, then [`linear3`]. (The bf16 / f16 warp GEMV with the norm inside measured
/// slower on the H200: 19.0 µs against 13.0 + 3.7, its 96 registers putting q/k/v's 320 blocks in two waves.)
pub fn norm_linear3(
    dev: &Device,
    step: &CudaStep,
    mut norm: NormArgs<'_>,
    w: [&CudaLinear; 3],
    out: [&mut CudaBuf; 3],
) -> Result<()> {
    if let Some(fused) = norm.fused(dev, step) {
        let (rows, shared) = rows3(dev, step, norm.h, 1, w, &out)?;
        if let Some(LinearPath::OneRow(kernel @ OneRow::DotQ8)) = shared {
            let (g, b) = one_row_group(kernel, w, &rows);
            let k = w[0].w.k;
            let c = one_row_cfg((b, 1, 1), kernel.smem(k) + 4 * k as u32);
            let p = LinearGroupNormParams { g, norm: fused };
            return dev.launch(Func::LinearDotQ8NormGroup, c, &p);
        }
    }
    norm.launch(dev, step)?;
    linear3(dev, step, norm.h, w, out)
}

/// Whether `x` holds the step's rows.
fn check_step_rows(step: &CudaStep, x: &CudaBuf) -> Result<()> {
    if step.rows > x.rows {
        return Err(shape_error(
            "linear",
            format!("{} rows in a buffer of {}", step.rows, x.rows),
        ));
    }
    Ok(())
}

/// `out = x Wᵀ + b` over the step's rows.
pub fn linear(
    dev: &Device,
    step: &CudaStep,
    x: &CudaBuf,
    w: &CudaLinear,
    out: &mut CudaBuf,
) -> Result<()> {
    check_step_rows(step, x)?;
    run(dev, step, x, 0, step.rows, w, out)
}

/// `out[i] = x[logit_rows[i]] Wᵀ` for the step's logit rows.
pub fn logits(
    dev: &Device,
    step: &CudaStep,
    x: &CudaBuf,
    w: &CudaLinear,
    out: &mut CudaBuf,
) -> Result<()> {
    run(dev, step, x, step.logit_rows_ptr(), step.logit_rows, w, out)
}
