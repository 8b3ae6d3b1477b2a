//! Launchers of `linear.cu`: `y = x Wᵀ + b` over a step's rows, and the logits of its selected rows. Few rows
//! go to the split-K GEMV (one launch reads each weight once per tile of up to 8 rows), many rows of weights
//! that decode exactly to bf16 to the tensor-core tiles.

use crate::backend::{CudaBuf, CudaLinear, CudaStep};
use crate::device::Device;
use crate::error::Result;
use crate::kernels::{Func, RowTile};
use crate::ops::{blocks, cfg, shape_error, DevWeight, WeightRef};

#[repr(C)]
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
}

// SAFETY: #[repr(C)] mirror of `LinearParams` in linear.cu.
unsafe impl cudarc::driver::DeviceRepr for LinearParams {}

/// Weight rows per thread group of the split-K kernel (`LIN_NR` in linear.cu).
const SPLIT_ROWS: usize = 4;
/// Rows and weight rows of one tensor-core tile (`MMA_BM`, `MMA_BN` in mma.cu).
const MMA_TILE: (usize, usize) = (64, 128);
/// Fewest rows for the tensor-core path: below this a 64-row tile is mostly empty and the GEMV, which is
/// bound by reading the weights once, is as fast.
pub const MMA_MIN_ROWS: usize = 16;

/// How a linear of `n_tok` rows runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinearPath {
    /// Split-K GEMV, tiles of this many rows.
    Split(RowTile),
    /// Tensor-core tiles.
    Mma,
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

/// Tensor cores for many rows when the weight decodes exactly to bf16, the split-K GEMV otherwise.
pub fn choose_linear(n_tok: usize, w: &DevWeight) -> LinearPath {
    if n_tok >= MMA_MIN_ROWS && w.mma_exact() {
        LinearPath::Mma
    } else {
        LinearPath::Split(split_tile(n_tok))
    }
}

/// Device rows a linear reads and writes: `n_tok` rows of `x` (row `t`, or row `x_rows[t]` when `x_rows` is
/// not 0) of stride `x_ld`, into `out` rows of stride `out_ld`.
pub(crate) struct Rows {
    pub x: u64,
    pub x_ld: usize,
    pub x_rows: u64,
    pub n_tok: usize,
    pub out: u64,
    pub out_ld: usize,
}

/// Launches `out = x Wᵀ + b` over `r` (shapes already checked by the caller).
pub(crate) fn launch(dev: &Device, w: &CudaLinear, r: Rows) -> Result<()> {
    let wt = &w.w;
    if r.n_tok == 0 {
        return Ok(());
    }
    let mut p = LinearParams {
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
    };
    match choose_linear(r.n_tok, wt) {
        LinearPath::Mma => {
            let grid = (blocks(wt.rows, MMA_TILE.1), blocks(r.n_tok, MMA_TILE.0), 1);
            dev.launch(Func::LinearMma(wt.kind), cfg(grid, 256), &p)
        }
        LinearPath::Split(tile) => {
            p.groups = wt.split_groups();
            let rows_per_block = p.groups as usize * SPLIT_ROWS;
            let grid = (
                blocks(wt.rows, rows_per_block),
                blocks(r.n_tok, tile.rows()),
                1,
            );
            dev.launch(Func::Linear(wt.kind, tile), cfg(grid, 256), &p)
        }
    }
}

/// `out = x Wᵀ + b` for `n_tok` rows of `x` (or the rows listed at device address `x_rows`).
fn run(
    dev: &Device,
    x: &CudaBuf,
    x_rows: u64,
    n_tok: usize,
    w: &CudaLinear,
    out: &mut CudaBuf,
) -> Result<()> {
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
    let rows = Rows {
        x: x.buf.ptr(),
        x_ld: x.cols,
        x_rows,
        n_tok,
        out: out.buf.ptr(),
        out_ld: out.cols,
    };
    launch(dev, w, rows)
}

/// `out = x Wᵀ + b` over the step's rows.
pub fn linear(
    dev: &Device,
    step: &CudaStep,
    x: &CudaBuf,
    w: &CudaLinear,
    out: &mut CudaBuf,
) -> Result<()> {
    if step.rows > x.rows {
        return Err(shape_error(
            "linear",
            format!("{} rows in a buffer of {}", step.rows, x.rows),
        ));
    }
    run(dev, x, 0, step.rows, w, out)
}

/// `out[i] = x[logit_rows[i]] Wᵀ` for the step's logit rows.
pub fn logits(
    dev: &Device,
    step: &CudaStep,
    x: &CudaBuf,
    w: &CudaLinear,
    out: &mut CudaBuf,
) -> Result<()> {
    run(dev, x, step.logit_rows_ptr(), step.logit_rows, w, out)
}
