//! Launchers of `router.cu` and `moe.cu`: router top-k, then the experts grouped by expert (group, gate_up
//! with the clamped SwiGLU, down with its bias, weighted combine). The scratch is allocated once.

use gptoss_engine::backend::MoeShape;

use crate::backend::{CudaBuf, CudaLinear, CudaStep};
use crate::device::Device;
use crate::error::{CudaError, Result};
use crate::kernels::{Fp4Pairs, Func, MmaRows, RowTile, WeightKind};
use crate::ops::{blocks, cfg, linear, shape_error, DevWeight, WeightRef};
use crate::options::MoeKernel;
use crate::vram::DevBuf;

/// A layer's experts, stacked: `gate_up` `[E × 2I, H]` (interleaved gate/up rows), `down` `[E × H, I]`.
pub struct CudaExperts {
    /// Stacked gate_up weights.
    pub gate_up: DevWeight,
    /// `[E × 2I]` or none.
    pub gate_up_bias: Option<DevBuf<f32>>,
    /// Stacked down weights.
    pub down: DevWeight,
    /// `[E × H]` or none.
    pub down_bias: Option<DevBuf<f32>>,
    /// `E`.
    pub n_experts: usize,
}

/// Per-token expert choices `[rows, top_k]`.
pub struct CudaRouting {
    experts: DevBuf<i32>,
    weights: DevBuf<f32>,
    rows: usize,
    top_k: usize,
}

impl CudaRouting {
    /// Allocates routing for `rows` tokens.
    pub fn new(dev: &Device, rows: usize, top_k: usize) -> Result<Self> {
        Ok(CudaRouting {
            experts: DevBuf::zeros(&dev.stream, &dev.meter, rows * top_k, "routing (experts)")?,
            weights: DevBuf::zeros(&dev.stream, &dev.meter, rows * top_k, "routing (weights)")?,
            rows,
            top_k,
        })
    }

    /// The `(expert, weight)` choices of the first `rows` tokens, `top_k` each.
    pub fn read(&self, dev: &Device, rows: usize, top_k: usize) -> Result<Vec<(u32, f32)>> {
        if rows > self.rows || top_k != self.top_k {
            return Err(shape_error(
                "read_routing",
                format!(
                    "{rows} rows of top-{top_k} from routing of {} rows of top-{}",
                    self.rows, self.top_k
                ),
            ));
        }
        let experts = self
            .experts
            .to_host(&dev.stream, rows * top_k, "the routing")?;
        let weights = self
            .weights
            .to_host(&dev.stream, rows * top_k, "the routing")?;
        Ok(experts.into_iter().map(|e| e as u32).zip(weights).collect())
    }

    /// Writes `(expert, weight)` choices for the first `rows` tokens, `top_k` each; `NO_EXPERT`
    /// (`u32::MAX`) becomes -1, which `moe_group` and `moe_combine` skip.
    pub fn write(
        &mut self,
        dev: &Device,
        rows: usize,
        top_k: usize,
        choices: &[(u32, f32)],
    ) -> Result<()> {
        if rows > self.rows || top_k != self.top_k || choices.len() != rows * top_k {
            return Err(shape_error(
                "write_routing",
                format!(
                    "{} choices as {rows} rows of top-{top_k} into routing of {} rows of top-{}",
                    choices.len(),
                    self.rows,
                    self.top_k
                ),
            ));
        }
        if choices.is_empty() {
            return Ok(());
        }
        let experts: Vec<i32> = choices.iter().map(|&(e, _)| e as i32).collect();
        let weights: Vec<f32> = choices.iter().map(|&(_, w)| w).collect();
        let n = choices.len();
        let copy = |e| CudaError::driver("writing the routing", e);
        dev.stream
            .memcpy_htod(&experts, &mut self.experts.slice.slice_mut(0..n))
            .map_err(copy)?;
        dev.stream
            .memcpy_htod(&weights, &mut self.weights.slice.slice_mut(0..n))
            .map_err(copy)
    }
}

/// The MoE scratch: pair lists and the intermediate activations of every chosen expert.
pub struct MoeScratch {
    counts: DevBuf<i32>,
    offsets: DevBuf<i32>,
    list: DevBuf<i32>,
    act: DevBuf<f32>,
    y: DevBuf<f32>,
    /// The per-block scales of x split into two f16 parts (`moe_xsplit`) for the MXFP4 tensor-core path. The
    /// parts themselves need no buffer of their own: gate_up's input is split into `y` (written only later,
    /// by down) and down's input `act` is split in place (each value's two f16 parts take its 4 bytes).
    xscale: DevBuf<f32>,
    /// The same for act (down's input), apart: gate_up reads `xscale` while it writes these.
    act_scales: DevBuf<f32>,
    pairs: usize,
    n_experts: usize,
    inter: usize,
    hidden: usize,
}

impl MoeScratch {
    /// Scratch for up to `pairs` (token, expert) pairs of `n_experts` experts of widths `inter` and `hidden`.
    pub fn new(
        dev: &Device,
        pairs: usize,
        n_experts: usize,
        inter: usize,
        hidden: usize,
    ) -> Result<Self> {
        let (s, m) = (&dev.stream, &dev.meter);
        let split_blocks = pairs * inter.max(hidden) / 32;
        Ok(MoeScratch {
            counts: DevBuf::zeros(s, m, n_experts, "MoE scratch")?,
            offsets: DevBuf::zeros(s, m, n_experts + 1, "MoE scratch")?,
            list: DevBuf::zeros(s, m, pairs, "MoE scratch")?,
            act: DevBuf::zeros(s, m, pairs * inter, "MoE scratch")?,
            y: DevBuf::zeros(s, m, pairs * hidden, "MoE scratch")?,
            xscale: DevBuf::zeros(s, m, split_blocks.max(1), "MoE scratch")?,
            act_scales: DevBuf::zeros(s, m, split_blocks.max(1), "MoE scratch")?,
            pairs,
            n_experts,
            inter,
            hidden,
        })
    }

    /// Floats of its expert-output buffer, which the router borrows for its logits (they are consumed before
    /// the experts run).
    fn logits_room(&self) -> usize {
        self.pairs * self.hidden
    }

    /// Whether it serves `pairs` pairs of `(experts, intermediate, hidden)`: scratch sized for more
    /// experts serves fewer (the hot-expert cache's slot sets beside whole layers).
    pub fn fits_dims(&self, pairs: usize, dims: (usize, usize, usize)) -> bool {
        pairs <= self.pairs
            && dims.0 <= self.n_experts
            && (dims.1, dims.2) == (self.inter, self.hidden)
    }

    /// Whether it serves `pairs` pairs of these experts.
    pub fn fits(&self, pairs: usize, e: &CudaExperts) -> bool {
        self.fits_dims(pairs, (e.n_experts, e.down.k, e.down.rows))
    }
}

#[repr(C)]
struct RouteParams {
    w: WeightRef,
    bias: u64,
    h: u64,
    experts: u64,
    weights: u64,
    k: i32,
    n_experts: i32,
    top_k: i32,
    pad: i32,
}

// SAFETY: #[repr(C)] mirror of `RouteParams` in router.cu.
unsafe impl cudarc::driver::DeviceRepr for RouteParams {}

#[repr(C)]
struct TopkParams {
    logits: u64,
    experts: u64,
    weights: u64,
    n_tok: i32,
    n_experts: i32,
    top_k: i32,
    pad: i32,
}

// SAFETY: #[repr(C)] mirror of `TopkParams` in router.cu.
unsafe impl cudarc::driver::DeviceRepr for TopkParams {}

impl TopkParams {
    /// The top-k of `rows` tokens from `logits` `[rows, n_experts]` into the routing at `(experts, weights)`.
    fn new(
        logits: u64,
        (experts, weights): (u64, u64),
        rows: usize,
        n_experts: usize,
        top_k: usize,
    ) -> Self {
        TopkParams {
            logits,
            experts,
            weights,
            n_tok: rows as i32,
            n_experts: n_experts as i32,
            top_k: top_k as i32,
            pad: 0,
        }
    }

    /// `route_topk`: a warp per token, 8 tokens a block.
    fn launch(&self, dev: &Device) -> Result<()> {
        dev.launch(
            Func::RouteTopk,
            cfg((blocks(self.n_tok as usize, 8), 1, 1), 256),
            self,
        )
    }
}

#[repr(C)]
struct TopkGroupParams {
    topk: TopkParams,
    counts: u64,
    offsets: u64,
    list: u64,
    split: XSplitParams,
}

// SAFETY: #[repr(C)] mirror of `TopkGroupParams` in router.cu.
unsafe impl cudarc::driver::DeviceRepr for TopkGroupParams {}

/// Most rows routed in two launches (logits by the split-K linear over many blocks, then a top-k kernel);
/// more rows fill the GPU with the one-block-per-token kernel. Measured on the H100 with 20b's 32 × 2880
/// router: T = 1 8.7 µs in two launches vs 14.1 µs in one block (which reads the router from one SM); at
/// T = 2 and 8 the one-block kernel is as fast or faster (13.7 µs vs 20.3 and 14.7 µs).
const SPLIT_ROUTE_MAX_ROWS: usize = 1;

/// What [`route`] reads besides the hidden states and the router.
#[derive(Clone, Copy)]
pub struct RouteWith<'a> {
    /// Experts chosen per token.
    pub top_k: usize,
    /// The MoE scratch, when allocated: small steps' logits go there, and their grouping.
    pub scratch: Option<&'a MoeScratch>,
    /// The format of the layers' experts, once known: a one-token step then also groups its choices for
    /// [`moe`] (one launch instead of two).
    pub experts: Option<ExpertTraits>,
    /// The routing's next reader is [`moe`] on device experts of this step: a one-token step whose router
    /// computes the norm and whose experts take the dot-product kernels then leaves the top-k to gate_up.
    pub moe_follows: bool,
}

/// Router logits, top-k, softmax over the selected. Returns what it also did for the [`moe`] that follows
/// (see [`Grouped`]).
pub fn route(
    dev: &Device,
    step: &CudaStep,
    h: &CudaBuf,
    router: &CudaLinear,
    with: RouteWith<'_>,
    out: &mut CudaRouting,
) -> Result<Option<Grouped>> {
    route_of(dev, step, h, (router, None), with, out)
}

/// [`route`] of `h = rms_norm(x (+= y)) · weight` (`norm`): at one step row the router's GEMV computes the
/// norm itself (each block; block 0 writes h for the experts); otherwise the norm runs in a launch of its own
/// first.
pub fn norm_route(
    dev: &Device,
    step: &CudaStep,
    mut norm: linear::NormArgs<'_>,
    router: &CudaLinear,
    with: RouteWith<'_>,
    out: &mut CudaRouting,
) -> Result<Option<Grouped>> {
    let split_route = step.rows <= SPLIT_ROUTE_MAX_ROWS
        && with
            .scratch
            .is_some_and(|s| s.logits_room() >= step.rows * router.w.rows);
    let fused = norm
        .fused(dev, step)
        .filter(|_| split_route && linear::takes_fused_norm(dev, router, step.rows));
    if fused.is_none() {
        norm.launch(dev, step)?;
    }
    route_of(dev, step, norm.h, (router, fused), with, out)
}

/// [`route`], with the router's GEMV computing `h` itself when `router.1` is given (the caller checked that
/// the step takes the split route and the GEMV takes the norm).
fn route_of(
    dev: &Device,
    step: &CudaStep,
    h: &CudaBuf,
    (router, norm): (&CudaLinear, Option<linear::NormIn>),
    with: RouteWith<'_>,
    out: &mut CudaRouting,
) -> Result<Option<Grouped>> {
    let w = &router.w;
    let top_k = with.top_k;
    if h.cols != w.k
        || top_k != out.top_k
        || top_k == 0
        || top_k > 32
        || top_k > w.rows
        || w.rows > MAX_EXPERTS
        || step.rows > out.rows
    {
        return Err(shape_error(
            "route",
            format!(
                "h [_, {}], router [{}, {}] (<= {MAX_EXPERTS} experts), top_k {top_k} (<= 32)",
                h.cols, w.rows, w.k
            ),
        ));
    }
    let room = with
        .scratch
        .filter(|s| s.logits_room() >= step.rows * w.rows);
    if let (Some(s), true) = (room, step.rows <= SPLIT_ROUTE_MAX_ROWS) {
        let pairs = step.rows * top_k;
        let grouped = with.experts.and_then(|traits| {
            let path = choose_moe(pairs, w.rows, traits, dev.moe_kernel, dev.exact);
            let split = group_split(path, step.rows);
            let fits = s.fits_dims(pairs, (w.rows, s.inter, h.cols))
                && (split == GroupSplit::None || check_split(s, step.rows, h.cols).is_ok());
            fits.then_some(Grouped {
                scratch: s.counts.ptr(),
                routing: out.experts.ptr(),
                weights: out.weights.ptr(),
                h: h.buf.ptr(),
                rows: step.rows,
                n_experts: w.rows,
                split,
                topk_from: 0,
            })
        });
        // The router's GEMV splits h itself (into `y`, the logits after it) and gate_up selects the top-k:
        // the route launch of a one-token step goes (bench/NOTES.md, session 19).
        let deferred = grouped.filter(|g| {
            dev.defer_topk
                && with.moe_follows
                && norm.is_some()
                && step.rows == 1
                && g.split == GroupSplit::Planes
                && s.logits_room() >= step.rows * (h.cols + w.rows)
        });
        let logits = match deferred {
            Some(_) => s.y.ptr() + 4 * (step.rows * h.cols) as u64,
            None => s.y.ptr(),
        };
        let rows = linear::Rows {
            x: h.buf.ptr(),
            x_ld: h.cols,
            x_rows: 0,
            n_tok: step.rows,
            out: logits,
            out_ld: w.rows,
            partial: 0,
            split_room: 0,
            xparts: 0,
            xparts_room: 0,
        };
        match norm {
            Some(norm) => {
                let split =
                    deferred.map_or(XSplitParams::default(), |g| g.split.params(h, s, step.rows));
                linear::launch_fused_norm(dev, router, rows, norm, split)?
            }
            None => linear::launch(dev, router, rows)?,
        }
        if let Some(g) = deferred {
            return Ok(Some(Grouped {
                topk_from: logits,
                ..g
            }));
        }
        let routing = (out.experts.ptr(), out.weights.ptr());
        let topk = TopkParams::new(logits, routing, step.rows, w.rows, top_k);
        let Some(g) = grouped else {
            topk.launch(dev)?;
            return Ok(None);
        };
        let p = TopkGroupParams {
            topk,
            counts: s.counts.ptr(),
            offsets: s.offsets.ptr(),
            list: s.list.ptr(),
            split: g.split.params(h, s, step.rows),
        };
        dev.launch(Func::RouteTopkGroup, cfg((1, 1, 1), 256), &p)?;
        return Ok(Some(g));
    }
    let p = RouteParams {
        w: w.as_ref(),
        bias: router.bias.as_ref().map_or(0, |b| b.ptr()),
        h: h.buf.ptr(),
        experts: out.experts.ptr(),
        weights: out.weights.ptr(),
        k: w.k as i32,
        n_experts: w.rows as i32,
        top_k: top_k as i32,
        pad: 0,
    };
    // `ROUTE_ENTRY`'s THREADS in router.cu.
    let threads = match w.kind {
        WeightKind::F32 | WeightKind::Lut4E8m0 | WeightKind::Lut4F32 => 256,
        _ => 512,
    };
    let mut c = cfg((step.rows as u32, 1, 1), threads);
    c.shared_mem_bytes = (w.rows * 5) as u32;
    dev.launch(Func::Route(w.kind), c, &p)?;
    Ok(None)
}

/// What [`route`] did for the [`moe`] that follows it: it grouped `routing`'s choices into the MoE scratch
/// (and split `h` as `split` says), which [`moe`] then skips when it is handed the same routing, hidden states,
/// rows and number of experts and needs the same split.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grouped {
    /// The scratch's `counts` (the scratch it grouped into: a reallocated one holds nothing).
    scratch: u64,
    /// The routing's experts and weights.
    routing: u64,
    weights: u64,
    h: u64,
    rows: usize,
    n_experts: usize,
    split: GroupSplit,
    /// Nonzero: the top-k is not selected yet; these are the router's logits, from which [`moe`]'s gate_up
    /// selects it (and writes the routing).
    topk_from: u64,
}

/// How the grouping kernel splits the hidden states for the MXFP4 kernels (`xsplit_unit`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum GroupSplit {
    /// Not there (another format, or a step too large: `moe_xsplit` then does it).
    None,
    /// Two f16 parts (the tensor-core kernels).
    Halves,
    /// Three int8 planes (the dot-product kernels).
    Planes,
}

impl GroupSplit {
    /// The split `moe_group` does for a step of `rows` tokens on `path`.
    fn params(self, h: &CudaBuf, s: &MoeScratch, rows: usize) -> XSplitParams {
        XSplitParams {
            x: h.buf.ptr(),
            xs: s.y.ptr(),
            xscale: s.xscale.ptr(),
            rows: if self == GroupSplit::None {
                0
            } else {
                rows as i32
            },
            k: h.cols as i32,
            dot: (self == GroupSplit::Planes) as i32,
            pad: 0,
        }
    }
}

/// The split the experts of `path` read (None: they read x itself, or its f16 form from `moe_xhalf`).
fn path_split(path: MoePath) -> GroupSplit {
    match path {
        MoePath::Fp4Dot => GroupSplit::Planes,
        p if p.rounds_x_to_f16() => GroupSplit::None,
        MoePath::Fp4(_) => GroupSplit::Halves,
        _ => GroupSplit::None,
    }
}

/// The split the grouping kernel does for a step of `rows` tokens whose experts run on `path`.
fn group_split(path: MoePath, rows: usize) -> GroupSplit {
    if rows > GROUP_SPLIT_MAX_ROWS {
        GroupSplit::None
    } else {
        path_split(path)
    }
}

#[repr(C)]
struct GroupParams {
    experts: u64,
    counts: u64,
    offsets: u64,
    list: u64,
    n_pairs: i32,
    n_experts: i32,
    split: XSplitParams,
}

// SAFETY: #[repr(C)] mirror of `GroupParams` in moe.cu.
unsafe impl cudarc::driver::DeviceRepr for GroupParams {}

#[repr(C)]
struct ExpertParams {
    w: WeightRef,
    bias: u64,
    x: u64,
    counts: u64,
    offsets: u64,
    list: u64,
    out: u64,
    k: i32,
    n_out: i32,
    x_per_pair: i32,
    top_k: i32,
    alpha: f32,
    limit: f32,
    n_experts: i32,
    groups: i32,
    xs: u64,
    xscale: u64,
    act_split: f32,
    act_dot: i32,
    act_scales: u64,
    route_experts: u64,
    route_weights: u64,
    combined: u64,
    act_half: i32,
    pad: i32,
    route_logits: u64,
}

// SAFETY: #[repr(C)] mirror of `ExpertParams` in moe_common.cu.
unsafe impl cudarc::driver::DeviceRepr for ExpertParams {}

#[repr(C)]
struct CombineParams {
    experts: u64,
    weights: u64,
    y: u64,
    out: u64,
    n_tok: i32,
    top_k: i32,
    h: i32,
    n_experts: i32,
}

// SAFETY: #[repr(C)] mirror of `CombineParams` in moe.cu.
unsafe impl cudarc::driver::DeviceRepr for CombineParams {}

#[repr(C)]
#[derive(Clone, Copy, Default)]
pub(crate) struct XSplitParams {
    x: u64,
    xs: u64,
    xscale: u64,
    /// 0: no split.
    rows: i32,
    k: i32,
    /// 1: the int8 planes of moe_dot.cu (xs not aliasing x); 0: two f16 parts.
    dot: i32,
    pad: i32,
}

// SAFETY: #[repr(C)] mirror of `XSplitParams` in common.cu.
unsafe impl cudarc::driver::DeviceRepr for XSplitParams {}

#[repr(C)]
struct XHalfParams {
    x: u64,
    xh: u64,
    xinv: u64,
    rows: i32,
    k: i32,
}

// SAFETY: #[repr(C)] mirror of `XHalfParams` in moe_half.cu.
unsafe impl cudarc::driver::DeviceRepr for XHalfParams {}

/// What of the experts' format decides their kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExpertTraits {
    /// MXFP4 (E2M1 codes, E8M0 scales): the f16 tensor-core and the integer dot-product kernels.
    pub fp4: bool,
    /// Weights that decode exactly to bf16: the bf16 tensor-core tiles.
    pub mma: bool,
}

impl ExpertTraits {
    /// The traits of `e`'s gate_up and down weights together.
    pub fn of(e: &CudaExperts) -> Self {
        ExpertTraits {
            fp4: e.gate_up.fp4_mma() && e.down.fp4_mma(),
            mma: e.gate_up.mma_exact() && e.down.mma_exact(),
        }
    }
}

/// How the experts of a step run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MoePath {
    /// Split-K GEMV over tiles of this many pairs of one expert.
    Split(RowTile),
    /// Tensor-core tiles of 32 or 64 pairs of one expert.
    Mma(MmaRows),
    /// MXFP4 on f16 tensor cores, tiles of 8 to 64 pairs of one expert.
    Fp4(Fp4Pairs),
    /// MXFP4 on integer dot products, tiles of one pair (moe_dot.cu).
    Fp4Dot,
}

impl MoePath {
    /// Whether the path rounds x to one f16 per element (the f16-activation GEMM; not exact).
    pub fn rounds_x_to_f16(self) -> bool {
        matches!(
            self,
            MoePath::Fp4(Fp4Pairs::H16 | Fp4Pairs::H64 | Fp4Pairs::H128)
        )
    }
}

/// Most pairs in a step whose MXFP4 experts take the integer dot-product kernels (tiles of one pair: a pair
/// reads its expert's weights itself, so only while the pairs are few). Measured on the H200, one 20b layer,
/// 32 experts top-4, µs (dot vs f16 tensor cores, 8 pairs a tile): T = 1 42.7 vs 57.7, T = 2 64.9 vs 85.1,
/// T = 4 106.7 vs 126.7, T = 8 189.0 vs 214.3, T = 16 345.6 vs 252.9.
pub const FP4_DOT_MAX_PAIRS: usize = 32;
/// Warps of a dot-product block, and weight rows per warp (`DOT_ROWS` in moe_dot.cu).
const DOT_BLOCK_WARPS: usize = 8;
const DOT_ROWS: usize = 8;
/// Weight rows per warp of the token-major down (`DOT_TOKEN_ROWS` in moe_dot.cu).
const DOT_TOKEN_ROWS: usize = 6;
/// Weight rows per block of the pair-major dot-product kernels.
const FP4_DOT_ROWS: usize = DOT_BLOCK_WARPS * DOT_ROWS;

/// Most experts of a layer `moe_group` handles (`MOE_MAX_EXPERTS` in moe.cu).
const MAX_EXPERTS: usize = 256;
/// Weight rows per tensor-core tile (`MMA_BN` in mma.cu).
const MMA_WEIGHT_ROWS: usize = 128;
/// Average pairs per expert from which the f16-activation GEMM takes tiles of 128 pairs (each code decoded once
/// per 128 pairs): prompts of 1,280 tokens and more on 20b.
pub const H128_MIN_PAIRS: usize = 160;

/// MXFP4 experts (E2M1 codes, E8M0 scales) take the integer dot products up to [`FP4_DOT_MAX_PAIRS`] pairs, then
/// the f16-activation GEMM: tiles of 16 pairs while the experts average at most 8 (batched decode), 64 beyond,
/// 128 from [`H128_MIN_PAIRS`]. When `exact`: the exact f16 tiles of 8 pairs up to 4 an expert, 16 up to 16,
/// then the exact GEMM (which the caller also falls back to where gate_up cannot write act as f16). Other
/// formats: one pair
/// per tile while the pairs are at most twice the experts (decode and small batches: each chosen
/// expert is read once or twice, the measured fastest up to 16 tokens of 32 experts top-4: T=8 0.58 ms vs
/// 4.4 ms for tiles of 8 at T=16 on the H100); beyond, tensor-core tiles of 64 pairs when the weights
/// decode exactly to bf16 (32 pairs while the experts average at most 16, else 64), tiles of 8 pairs otherwise.
pub fn choose_moe(
    pairs: usize,
    n_experts: usize,
    traits: ExpertTraits,
    forced: MoeKernel,
    exact: bool,
) -> MoePath {
    let ExpertTraits { fp4, mma } = traits;
    match forced {
        MoeKernel::Split => return MoePath::Split(RowTile::One),
        MoeKernel::Mma if mma => return MoePath::Mma(MmaRows::R64),
        MoeKernel::Fp4P8 if fp4 => return MoePath::Fp4(Fp4Pairs::P8),
        MoeKernel::Fp4P16 if fp4 => return MoePath::Fp4(Fp4Pairs::P16),
        MoeKernel::Fp4G32 if fp4 => return MoePath::Fp4(Fp4Pairs::G32),
        MoeKernel::Fp4G64 if fp4 => return MoePath::Fp4(Fp4Pairs::G64),
        MoeKernel::Fp4H16 if fp4 => return MoePath::Fp4(Fp4Pairs::H16),
        MoeKernel::Fp4H64 if fp4 => return MoePath::Fp4(Fp4Pairs::H64),
        MoeKernel::Fp4H128 if fp4 => return MoePath::Fp4(Fp4Pairs::H128),
        MoeKernel::Fp4Dot if fp4 => return MoePath::Fp4Dot,
        _ => {}
    }
    if fp4 && pairs <= FP4_DOT_MAX_PAIRS {
        return MoePath::Fp4Dot;
    }
    if fp4 {
        // One 20b layer on the H200 (op bench, µs, session 16): T = 16 h16 239 vs exact 8-pair tiles 253;
        // T = 64 h16 306, h64 362, exact 16-pair tiles 408; T = 128 h16 418, h64 381. Exact: up to 4 pairs per
        // expert tiles of 8, up to 16 one tile of 16 per expert, which runs the 8-pair code when it holds at most
        // 8 (bench/NOTES.md, session 9), then the exact GEMM.
        return MoePath::Fp4(match pairs.div_ceil(n_experts.max(1)) {
            0..=8 if !exact => Fp4Pairs::H16,
            0..=4 => Fp4Pairs::P8,
            5..=16 if exact => Fp4Pairs::P16,
            _ if exact => Fp4Pairs::G64,
            n if n >= H128_MIN_PAIRS => Fp4Pairs::H128,
            _ => Fp4Pairs::H64,
        });
    }
    if pairs <= 2 * n_experts {
        MoePath::Split(RowTile::One)
    } else if mma {
        // Tiles of 32 while the experts average at most 16 pairs (a 64-pair tile would be mostly empty).
        // Measured on the H100, 32 experts top-4: T = 32 and 64 0.75 ms (32-pair tiles) vs 1.01 ms (64);
        // T = 256 (32 pairs per expert) 1.14 ms vs 1.05 ms.
        if pairs <= 16 * n_experts {
            MoePath::Mma(MmaRows::R32)
        } else {
            MoePath::Mma(MmaRows::R64)
        }
    } else {
        MoePath::Split(RowTile::Eight)
    }
}

/// Weight rows per thread group of the split-K expert kernels for a tile (`MOE_NR` in moe.cu).
fn expert_split_rows(tile: RowTile) -> usize {
    if tile == RowTile::One {
        8
    } else {
        2
    }
}

/// Rows of blocks that cover every tile of `bm` pairs: `sum_e ceil(c_e / bm) <= pairs / bm + (experts used)`.
fn tile_rows(pairs: usize, n_experts: usize, bm: usize) -> u32 {
    (pairs.div_ceil(bm) + n_experts.min(pairs))
        .min(pairs)
        .max(1) as u32
}

/// What [`moe`] reads.
pub struct MoeInputs<'a> {
    /// Normed hidden states `[rows, H]`.
    pub h: &'a CudaBuf,
    /// The layer's experts.
    pub experts: &'a CudaExperts,
    /// The router's choices.
    pub routing: &'a CudaRouting,
    /// Activation constants.
    pub shape: MoeShape,
    /// What the [`route`] before did for this step, if anything.
    pub grouped: Option<Grouped>,
}

/// `out = Σ_e g_e · down_e(swiglu(gate_up_e(h)))` over the step's rows.
pub fn moe(
    dev: &Device,
    step: &CudaStep,
    m: MoeInputs<'_>,
    scratch: &MoeScratch,
    out: &mut CudaBuf,
) -> Result<()> {
    let (e, r) = (m.experts, m.routing);
    let (hidden, inter) = (e.down.rows, e.down.k);
    let pairs = step.rows * r.top_k;
    if m.h.cols != hidden
        || out.cols != hidden
        || e.gate_up.k != hidden
        || e.gate_up.rows != 2 * inter
        || m.shape.top_k != r.top_k
        || !scratch.fits(pairs, e)
    {
        return Err(shape_error(
            "moe",
            format!(
                "h [_, {}], gate_up [{}, {}], down [{hidden}, {inter}], out [_, {}], {pairs} pairs",
                m.h.cols, e.gate_up.rows, e.gate_up.k, out.cols
            ),
        ));
    }
    if e.n_experts > MAX_EXPERTS {
        return Err(experts_error(format!(
            "{} experts per layer; the CUDA MoE handles at most {MAX_EXPERTS}",
            e.n_experts
        )));
    }
    let mut path = choose_moe(
        pairs,
        e.n_experts,
        ExpertTraits::of(e),
        dev.moe_kernel,
        dev.exact,
    );
    let act_split = act_split_scale(m.shape.swiglu_limit);
    // The f16-activation GEMM needs act written as f16 by gate_up (a finite SwiGLU limit) and x offsets of 32
    // bits; else the exact GEMM.
    let fits_half = act_split.is_some() && pairs * hidden.max(inter) < u32::MAX as usize;
    if path.rounds_x_to_f16() && !fits_half {
        path = MoePath::Fp4(Fp4Pairs::G64);
    }
    let half = path.rounds_x_to_f16();
    let dot = path == MoePath::Fp4Dot;
    let fp4 = dot || matches!(path, MoePath::Fp4(_));
    if fp4 {
        check_split(scratch, step.rows, hidden)?;
        check_split(scratch, pairs, inter)?;
    }
    let split = group_split(path, step.rows);
    let wanted = Grouped {
        scratch: scratch.counts.ptr(),
        routing: r.experts.ptr(),
        weights: r.weights.ptr(),
        h: m.h.buf.ptr(),
        rows: step.rows,
        n_experts: e.n_experts,
        split,
        topk_from: 0,
    };
    let topk_from = m.grouped.map_or(0, |g| g.topk_from);
    let grouped = m.grouped.map(|g| Grouped { topk_from: 0, ..g }) == Some(wanted);
    if let Some(g) = m.grouped.filter(|g| !grouped && g.topk_from != 0) {
        // The route left the top-k to a gate_up that is not this one: select it here first, over the
        // router's logits as the route left them.
        let routing = (g.routing, g.weights);
        TopkParams::new(g.topk_from, routing, g.rows, g.n_experts, r.top_k).launch(dev)?;
    }
    if !grouped {
        let g = GroupParams {
            experts: r.experts.ptr(),
            counts: scratch.counts.ptr(),
            offsets: scratch.offsets.ptr(),
            list: scratch.list.ptr(),
            n_pairs: pairs as i32,
            n_experts: e.n_experts as i32,
            split: split.params(m.h, scratch, step.rows),
        };
        dev.launch(Func::MoeGroup, cfg((1, 1, 1), 1024), &g)?;
    }
    if half {
        let x = XHalfParams {
            x: m.h.buf.ptr(),
            xh: scratch.y.ptr(),
            xinv: scratch.xscale.ptr(),
            rows: step.rows as i32,
            k: hidden as i32,
        };
        dev.launch(Func::MoeXHalf, cfg((blocks(step.rows, 8), 1, 1), 256), &x)?;
    } else if fp4 && split == GroupSplit::None {
        split_x(dev, &path_split(path).params(m.h, scratch, step.rows))?;
    }
    // The dot kernels write act as int8 planes themselves; the tensor-core ones pre-split it when they can.
    let act_split = if fp4 && !dot { act_split } else { None };
    let mut p = ExpertParams {
        w: e.gate_up.as_ref(),
        bias: e.gate_up_bias.as_ref().map_or(0, |b| b.ptr()),
        x: m.h.buf.ptr(),
        counts: scratch.counts.ptr(),
        offsets: scratch.offsets.ptr(),
        list: scratch.list.ptr(),
        out: scratch.act.ptr(),
        k: hidden as i32,
        n_out: inter as i32,
        x_per_pair: 0,
        top_k: r.top_k as i32,
        alpha: m.shape.swiglu_alpha,
        limit: m.shape.swiglu_limit,
        n_experts: e.n_experts as i32,
        groups: e.gate_up.split_groups(),
        xs: scratch.y.ptr(),
        xscale: scratch.xscale.ptr(),
        act_split: act_split.unwrap_or(0.0),
        act_dot: dot as i32,
        act_scales: scratch.act_scales.ptr(),
        // The dot kernels read the routing itself (their tiles are single pairs: no lists needed).
        route_experts: if dot { r.experts.ptr() } else { 0 },
        route_weights: if dot { r.weights.ptr() } else { 0 },
        combined: 0,
        act_half: half as i32,
        pad: 0,
        route_logits: if dot && grouped { topk_from } else { 0 },
    };
    launch_experts(dev, path, (&e.gate_up, 2 * inter, pairs, e.n_experts), &p)?;
    if fp4 && !dot && act_split.is_none() {
        let act = XSplitParams {
            x: scratch.act.ptr(),
            xs: scratch.act.ptr(),
            xscale: scratch.act_scales.ptr(),
            rows: pairs as i32,
            k: inter as i32,
            dot: 0,
            pad: 0,
        };
        split_x(dev, &act)?;
    }
    p.act_split = 0.0;
    p.act_dot = 0;
    p.act_half = 0;
    p.xs = scratch.act.ptr();
    p.xscale = scratch.act_scales.ptr();
    p.w = e.down.as_ref();
    p.bias = e.down_bias.as_ref().map_or(0, |b| b.ptr());
    p.x = scratch.act.ptr();
    p.out = scratch.y.ptr();
    p.k = inter as i32;
    p.n_out = hidden as i32;
    p.x_per_pair = 1;
    p.groups = e.down.split_groups();
    if dot && DOT_BLOCK_WARPS.is_multiple_of(r.top_k) {
        // Token-major: each block holds every choice of its rows and combines them (no moe_combine launch).
        p.combined = out.buf.ptr();
        let rows_per_block = DOT_BLOCK_WARPS / r.top_k * DOT_TOKEN_ROWS;
        let grid = (step.rows as u32, blocks(hidden, rows_per_block), 1);
        return dev.launch(Func::MoeDownFp4DotTokens, cfg(grid, 256), &p);
    }
    launch_experts(dev, path, (&e.down, hidden, pairs, e.n_experts), &p)?;
    let c = CombineParams {
        experts: r.experts.ptr(),
        weights: r.weights.ptr(),
        y: scratch.y.ptr(),
        out: out.buf.ptr(),
        n_tok: step.rows as i32,
        top_k: r.top_k as i32,
        h: hidden as i32,
        n_experts: e.n_experts as i32,
    };
    dev.launch(
        Func::MoeCombine,
        cfg((blocks(step.rows * hidden, 256), 1, 1), 256),
        &c,
    )
}

/// Blocks per tile along the weight rows for the MXFP4 f16 kernels: one per 32 rows while the tiles are few
/// (decode: every block a short latency chain, as many as possible in flight), fewer once the tiles alone
/// fill about four waves of two blocks per SM, each block then looping over several 32-row slices so its
/// pair lookups are paid once (blocks of one slice measured ≈ 4–5 µs, of which ≈ 1.5 µs is start-up).
fn fp4_row_blocks(dev: &Device, rows: usize, tiles: u32) -> u32 {
    let all = blocks(rows, Fp4Pairs::P8.weight_rows());
    let target = 8 * dev.caps.sm_count.max(1);
    all.min(target.div_ceil(tiles.max(1))).max(1)
}

/// Most tokens whose hidden states `moe_group` splits itself (its one block is quick for a few rows; more
/// take a launch of `moe_xsplit` across the GPU).
const GROUP_SPLIT_MAX_ROWS: usize = 8;

/// The power of two gate_up applies to act when it writes act already split for the MXFP4 down kernels: act is
/// at most `limit · (limit + 1)` in magnitude (gate clamped above at the limit, up to ±limit; a negative gate
/// gives at most 0.28 / alpha), so the largest power of two keeping that under 2^15 puts every value in f16's
/// normal range down to 2^-14 / scale and the lo part's rounding at 2^-25 / scale absolute. None (a separate
/// `moe_xsplit` with per-block scales) when the limit is not finite or too large for a useful scale.
fn act_split_scale(limit: f32) -> Option<f32> {
    let bound = limit * (limit + 1.0);
    if !bound.is_finite() || !(1.0..=2048.0).contains(&bound) {
        return None;
    }
    Some((32768.0 / bound).log2().floor().exp2())
}

/// Whether the scratch holds the split of `rows` rows of `k` (the kernels address xs in 16-byte units with
/// 32-bit offsets; `k` a multiple of 32).
fn check_split(scratch: &MoeScratch, rows: usize, k: usize) -> Result<()> {
    if !k.is_multiple_of(32)
        || rows * k > 32 * scratch.xscale.len()
        || rows * k / 4 >= u32::MAX as usize
    {
        return Err(shape_error(
            "moe_xsplit",
            format!(
                "{rows} rows of {k} (a multiple of 32, at most {} values)",
                32 * scratch.xscale.len()
            ),
        ));
    }
    Ok(())
}

/// `moe_xsplit` of `p`'s rows (checked by [`check_split`]); `x` may be `xs` (each thread reads its 8 values
/// before writing their parts in their place).
fn split_x(dev: &Device, p: &XSplitParams) -> Result<()> {
    let units = p.rows as usize * p.k as usize / 8;
    dev.launch(Func::MoeXSplit, cfg((blocks(units, 256), 1, 1), 256), p)
}

/// Launches gate_up (`w` is the stacked gate_up weight) or down over every tile of the step's pairs;
/// `(w, weight rows per expert, pairs, experts)`.
fn launch_experts(
    dev: &Device,
    path: MoePath,
    (w, rows, pairs, n_experts): (&DevWeight, usize, usize, usize),
    p: &ExpertParams,
) -> Result<()> {
    let gate_up = p.x_per_pair == 0;
    let (func, grid) = match path {
        MoePath::Fp4Dot => {
            let f = if gate_up {
                Func::MoeGateUpFp4Dot
            } else {
                Func::MoeDownFp4Dot
            };
            (f, (pairs.max(1) as u32, blocks(rows, FP4_DOT_ROWS), 1))
        }
        MoePath::Fp4(n) => {
            let f = if gate_up {
                Func::MoeGateUpFp4(n)
            } else {
                Func::MoeDownFp4(n)
            };
            let x = tile_rows(pairs, n_experts, n.pairs());
            let y = match n {
                Fp4Pairs::P8 | Fp4Pairs::P16 => fp4_row_blocks(dev, rows, x),
                Fp4Pairs::G32 | Fp4Pairs::G64 | Fp4Pairs::H16 | Fp4Pairs::H64 | Fp4Pairs::H128 => {
                    blocks(rows, n.weight_rows())
                }
            };
            (f, (x, y, 1))
        }
        MoePath::Mma(r) => {
            let f = if gate_up {
                Func::MoeGateUpMma(w.kind, r)
            } else {
                Func::MoeDownMma(w.kind, r)
            };
            let y = tile_rows(pairs, n_experts, r.rows());
            (f, (blocks(rows, MMA_WEIGHT_ROWS), y, 1))
        }
        MoePath::Split(tile) => {
            let f = if gate_up {
                Func::MoeGateUp(w.kind, tile)
            } else {
                Func::MoeDown(w.kind, tile)
            };
            let per_block = p.groups as usize * expert_split_rows(tile);
            let y = tile_rows(pairs, n_experts, tile.rows());
            (f, (blocks(rows, per_block), y, 1))
        }
    };
    dev.launch(func, cfg(grid, 256), p)
}

/// An error for experts that cannot be stacked.
pub fn experts_error(detail: String) -> CudaError {
    CudaError::Unsupported(format!("experts: {detail}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The MXFP4 kernel of a step of `tokens` tokens of 20b (32 experts, top-4) by default and when exact.
    fn mxfp4_20b(tokens: usize, exact: bool) -> MoePath {
        let traits = ExpertTraits {
            fp4: true,
            mma: false,
        };
        choose_moe(4 * tokens, 32, traits, MoeKernel::Auto, exact)
    }

    #[test]
    fn mxfp4_kernels_by_step_size() {
        use Fp4Pairs::*;
        let fp4 = MoePath::Fp4;
        let default: [(usize, MoePath); 9] = [
            (1, MoePath::Fp4Dot),
            (8, MoePath::Fp4Dot),
            (9, fp4(H16)),
            (64, fp4(H16)),
            (65, fp4(H64)),
            (128, fp4(H64)),
            (512, fp4(H64)),
            (1272, fp4(H64)),
            (1273, fp4(H128)),
        ];
        for (tokens, want) in default {
            assert_eq!(mxfp4_20b(tokens, false), want, "T = {tokens}");
        }
        let exact: [(usize, MoePath); 6] = [
            (8, MoePath::Fp4Dot),
            (9, fp4(P8)),
            (32, fp4(P8)),
            (33, fp4(P16)),
            (128, fp4(P16)),
            (129, fp4(G64)),
        ];
        for (tokens, want) in exact {
            assert_eq!(mxfp4_20b(tokens, true), want, "T = {tokens}, exact");
            assert!(!want.rounds_x_to_f16());
        }
    }
}
