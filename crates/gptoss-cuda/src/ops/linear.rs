//! Launchers of `linear.cu`: `y = x Wᵀ + b` over a step's rows, and the logits of its selected rows.

use crate::backend::{CudaBuf, CudaLinear, CudaStep};
use crate::device::Device;
use crate::error::Result;
use crate::kernels::{Func, RowTile};
use crate::ops::{blocks, cfg, shape_error, WeightRef};

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
    pad: i32,
}

// SAFETY: #[repr(C)] mirror of `LinearParams` in linear.cu.
unsafe impl cudarc::driver::DeviceRepr for LinearParams {}

/// Warps per linear block (256 threads).
const WARPS: usize = 8;

/// One input row per warp for a single token (decode: no wasted accumulators), eight otherwise (prefill:
/// each weight row decoded once per eight tokens).
pub fn choose_linear(n_tok: usize) -> RowTile {
    if n_tok == 1 {
        RowTile::One
    } else {
        RowTile::Eight
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
    if n_tok == 0 {
        return Ok(());
    }
    let tile = choose_linear(n_tok);
    let p = LinearParams {
        w: wt.as_ref(),
        bias: w.bias.as_ref().map_or(0, |b| b.ptr()),
        x: x.buf.ptr(),
        x_rows,
        out: out.buf.ptr(),
        k: wt.k as i32,
        n_out: wt.rows as i32,
        n_tok: n_tok as i32,
        x_ld: x.cols as i32,
        out_ld: out.cols as i32,
        pad: 0,
    };
    dev.launch(
        Func::Linear(wt.kind, tile),
        cfg((blocks(wt.rows, WARPS), blocks(n_tok, tile.rows()), 1), 256),
        &p,
    )
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
