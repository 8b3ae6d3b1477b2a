//! Launchers of `norm.cu`: RMSNorm and the residual add over a step's rows.

use crate::backend::{CudaBuf, CudaVector};
use crate::device::Device;
use crate::error::Result;
use crate::kernels::Func;
use crate::ops::{blocks, cfg, shape_error};

#[repr(C)]
struct NormParams {
    x: u64,
    w: u64,
    out: u64,
    n: i32,
    eps: f32,
}

// SAFETY: #[repr(C)] mirror of `NormParams` in norm.cu.
unsafe impl cudarc::driver::DeviceRepr for NormParams {}

#[repr(C)]
struct AddNormParams {
    x: u64,
    y: u64,
    w: u64,
    out: u64,
    n: i32,
    eps: f32,
}

// SAFETY: #[repr(C)] mirror of `AddNormParams` in norm.cu.
unsafe impl cudarc::driver::DeviceRepr for AddNormParams {}

#[repr(C)]
struct AddParams {
    x: u64,
    y: u64,
    n: i64,
}

// SAFETY: #[repr(C)] mirror of `AddParams` in norm.cu.
unsafe impl cudarc::driver::DeviceRepr for AddParams {}

/// `out[r] = rms_norm(x[r]) * w` for `rows` rows.
pub fn rms_norm(
    dev: &Device,
    rows: usize,
    x: &CudaBuf,
    w: &CudaVector,
    eps: f32,
    out: &mut CudaBuf,
) -> Result<()> {
    if x.cols != w.len || out.cols != x.cols || rows > x.rows || rows > out.rows {
        return Err(shape_error(
            "rms_norm",
            format!(
                "x [{rows}, {}], weight [{}], out [_, {}]",
                x.cols, w.len, out.cols
            ),
        ));
    }
    let p = NormParams {
        x: x.buf.ptr(),
        w: w.buf.ptr(),
        out: out.buf.ptr(),
        n: x.cols as i32,
        eps,
    };
    dev.launch(Func::RmsNorm, cfg((rows as u32, 1, 1), 256), &p)
}

/// `x[r] += y[r]`, then `out[r] = rms_norm(x[r]) * w`, for `rows` rows, in one launch.
pub fn add_rms_norm(
    dev: &Device,
    rows: usize,
    (x, y): (&mut CudaBuf, &CudaBuf),
    w: &CudaVector,
    eps: f32,
    out: &mut CudaBuf,
) -> Result<()> {
    if x.cols != w.len
        || y.cols != x.cols
        || out.cols != x.cols
        || rows > x.rows
        || rows > y.rows
        || rows > out.rows
    {
        return Err(shape_error(
            "add_rms_norm",
            format!(
                "x [{rows}, {}], y [_, {}], weight [{}], out [_, {}]",
                x.cols, y.cols, w.len, out.cols
            ),
        ));
    }
    let p = AddNormParams {
        x: x.buf.ptr(),
        y: y.buf.ptr(),
        w: w.buf.ptr(),
        out: out.buf.ptr(),
        n: x.cols as i32,
        eps,
    };
    dev.launch(Func::AddRmsNorm, cfg((rows as u32, 1, 1), 256), &p)
}

/// `x += y` over `rows` rows.
pub fn add(dev: &Device, rows: usize, x: &mut CudaBuf, y: &CudaBuf) -> Result<()> {
    if x.cols != y.cols || rows > x.rows || rows > y.rows {
        return Err(shape_error(
            "add",
            format!("x [_, {}], y [_, {}], {rows} rows", x.cols, y.cols),
        ));
    }
    let n = rows * x.cols;
    let p = AddParams {
        x: x.buf.ptr(),
        y: y.buf.ptr(),
        n: n as i64,
    };
    dev.launch(Func::Add, cfg((blocks(n, 256), 1, 1), 256), &p)
}
