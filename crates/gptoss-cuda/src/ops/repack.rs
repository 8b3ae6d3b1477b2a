//! Launcher of `repack.cu`: a tensor stored in a ggml block format uploaded as its raw blocks, a staging
//! buffer at a time, each chunk copied to the upload scratch and rewritten there by the kernel into the
//! weight's arrays while the host fills the next buffer (`device_repack.rs` says which bytes make a chunk).

use cudarc::driver::DeviceRepr;

use crate::device::Device;
use crate::device_repack::{RawFormat, RawPlan};
use crate::error::{CudaError, Result};
use crate::kernels::Func;
use crate::ops::{blocks, cfg};
use crate::options::RepackSite;
use crate::staging::Stager;
use crate::vram::DevBuf;

/// Threads per CTA, one per output block.
const THREADS: u32 = 256;

#[repr(C)]
struct RepackParams {
    src: u64,
    codes: u64,
    scales: u64,
    blocks: i32,
    row_blocks: i32,
    half_rows: i32,
}

// SAFETY: #[repr(C)] mirror of `RepackParams` in repack.cu.
unsafe impl DeviceRepr for RepackParams {}

/// Where one tensor's arrays go: the weight's buffers and the byte offsets of this tensor in them (experts
/// of a layer are stacked in one buffer).
pub struct RawTarget<'b> {
    /// Codes of every stacked tensor.
    pub data: &'b DevBuf<u8>,
    /// Offset of this tensor's codes.
    pub data_at: usize,
    /// Scales of every stacked tensor.
    pub scales: Option<&'b DevBuf<u8>>,
    /// Offset of this tensor's scales.
    pub scales_at: usize,
}

/// Queues the raw upload of `raw` into `target` when `dev.repack` asks for the device repack, a chunk fits
/// a staging buffer and the budget has room for the scratch; returns false, having queued nothing, when
/// the tensor is to be repacked on the host instead.
pub fn upload_raw(
    dev: &Device,
    stager: &mut Stager,
    raw: &RawPlan<'_>,
    target: RawTarget<'_>,
) -> Result<bool> {
    if dev.repack != RepackSite::Device {
        return Ok(false);
    }
    let Some(chunks) = raw.chunks(stager.slot_bytes()) else {
        return Ok(false);
    };
    let format = raw.format();
    let scales = target.scales.ok_or_else(|| {
        CudaError::Unsupported(format!("{format:?} weights uploaded without scales"))
    })?;
    let (codes_end, scales_end) = (
        target.data_at + raw.codes_bytes(),
        target.scales_at + raw.scales_bytes(),
    );
    if codes_end > target.data.len() || scales_end > scales.len() {
        return Err(CudaError::Unsupported(format!(
            "{format:?} weights: codes [{}, {codes_end}) of {} bytes, scales [{}, {scales_end}) of {}",
            target.data_at,
            target.data.len(),
            target.scales_at,
            scales.len()
        )));
    }
    // The kernel stores codes 16 bytes and scales a whole scale at a time (stacked tensors of one layout
    // keep both aligned; anything else goes the host way).
    let aligned = (target.data.ptr() as usize + target.data_at).is_multiple_of(16)
        && (scales.ptr() as usize + target.scales_at).is_multiple_of(format.scale_bytes());
    if !aligned {
        return Ok(false);
    }
    if !stager.reserve_scratch(&dev.stream, &dev.meter)? {
        return Ok(false);
    }
    let func = match format {
        RawFormat::Q8_0 => Func::RepackQ8_0,
        RawFormat::Lut4E8m0 => Func::RepackLut4E8m0,
        RawFormat::Lut4F16 => Func::RepackLut4F16,
    };
    let (cb, sb) = (format.code_bytes(), format.scale_bytes());
    let int = |v: usize, what: &str| {
        i32::try_from(v).map_err(|_| CudaError::Unsupported(format!("a raw chunk of {v} {what}")))
    };
    for c in &chunks {
        let src = stager.stage_raw(&dev.stream, c.src_bytes(), |buf| c.fill(buf))?;
        let p = RepackParams {
            src,
            codes: target.data.ptr() + (target.data_at + c.first_block * cb) as u64,
            scales: scales.ptr() + (target.scales_at + c.first_block * sb) as u64,
            blocks: int(c.blocks, "blocks")?,
            row_blocks: int(raw.row_blocks(), "blocks a row")?,
            half_rows: int(c.half_rows, "rows")?,
        };
        dev.launch(
            func,
            cfg((blocks(c.blocks, THREADS as usize), 1, 1), THREADS),
            &p,
        )?;
    }
    Ok(true)
}
