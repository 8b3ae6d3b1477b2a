//! Launcher of `embed.cu`: the embedding lookup of a step's tokens.

use crate::backend::{CudaBuf, CudaLinear, CudaStep};
use crate::device::Device;
use crate::error::Result;
use crate::kernels::Func;
use crate::ops::{cfg, shape_error, WeightRef};

#[repr(C)]
struct EmbedParams {
    w: WeightRef,
    tokens: u64,
    out: u64,
    k: i32,
    n_rows: i32,
}

// SAFETY: #[repr(C)] mirror of `EmbedParams` in embed.cu.
unsafe impl cudarc::driver::DeviceRepr for EmbedParams {}

/// `out[t] = table[token[t]]` for the step's tokens.
pub fn embed(dev: &Device, step: &CudaStep, table: &CudaLinear, out: &mut CudaBuf) -> Result<()> {
    let w = &table.w;
    if out.cols != w.k || step.rows > out.rows {
        return Err(shape_error(
            "embed",
            format!("table rows of {}, out [{}, {}]", w.k, step.rows, out.cols),
        ));
    }
    let p = EmbedParams {
        w: w.as_ref(),
        tokens: step.tokens_ptr(),
        out: out.buf.ptr(),
        k: w.k as i32,
        n_rows: w.rows as i32,
    };
    dev.launch(Func::Embed(w.kind), cfg((step.rows as u32, 1, 1), 128), &p)
}
