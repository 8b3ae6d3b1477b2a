//! The step's batch on the device: `[tokens | positions | slots]` of `max_rows` each, then the logit rows,
//! copied from a pinned staging buffer (so the copy is truly asynchronous), and the RoPE table.

use cudarc::driver::PinnedHostSlice;
use gptoss_engine::backend::{Batch, Capacity, Rope};

use crate::device::Device;
use crate::error::{CudaError, Result};
use crate::vram::DevBuf;

/// A step's batch and RoPE table on the device.
pub struct CudaStep {
    meta: DevBuf<i32>,
    staging: PinnedHostSlice<i32>,
    max_rows: usize,
    max_logit_rows: usize,
    pub(crate) rows: usize,
    pub(crate) logit_rows: usize,
    pub(crate) inv_freq: DevBuf<f32>,
    pub(crate) rope_len: usize,
    pub(crate) concentration: f32,
}

impl CudaStep {
    /// Allocates step metadata for `capacity` and uploads the RoPE table.
    pub fn new(d: &Device, capacity: &Capacity, rope: &Rope) -> Result<Self> {
        let (rows, logit_rows) = (capacity.max_batch_tokens, capacity.max_logit_rows);
        let len = 3 * rows + logit_rows;
        // SAFETY: the staging buffer is only written through `as_mut_slice`, which waits for the last copy
        // out of it, and is read only by copies on this backend's stream.
        let mut staging = unsafe { d.ctx.alloc_pinned::<i32>(len.max(1)) }
            .map_err(|e| CudaError::driver("allocating pinned step staging", e))?;
        staging
            .as_mut_slice()
            .map_err(|e| CudaError::driver("clearing pinned step staging", e))?
            .fill(0);
        Ok(CudaStep {
            meta: DevBuf::zeros(&d.stream, &d.meter, len, "step metadata")?,
            staging,
            max_rows: rows,
            max_logit_rows: logit_rows,
            rows: 0,
            logit_rows: 0,
            inv_freq: DevBuf::from_host(&d.stream, &d.meter, &rope.inv_freq, "the RoPE table")?,
            rope_len: rope.inv_freq.len(),
            concentration: rope.concentration,
        })
    }

    /// Copies `batch` into the step (queued on the stream; waits only for the previous copy's staging).
    pub fn load(&mut self, dev: &Device, batch: &Batch) -> Result<()> {
        let step = self;
        let n = batch.tokens.len();
        if n > step.max_rows || batch.logit_rows.len() > step.max_logit_rows {
            return Err(CudaError::Unsupported(format!(
                "a step of {n} tokens and {} logit rows exceeds the capacity of {} and {}",
                batch.logit_rows.len(),
                step.max_rows,
                step.max_logit_rows
            )));
        }
        let max_rows = step.max_rows;
        let meta = step
            .staging
            .as_mut_slice()
            .map_err(|e| CudaError::driver("waiting for the previous step's batch copy", e))?;
        let as_i32 = |v: &u32| *v as i32;
        for (dst, src) in [
            (0, &batch.tokens),
            (max_rows, &batch.positions),
            (2 * max_rows, &batch.slots),
        ] {
            for (m, v) in meta[dst..dst + n].iter_mut().zip(src.iter()) {
                *m = as_i32(v);
            }
        }
        for (m, v) in meta[3 * max_rows..].iter_mut().zip(&batch.logit_rows) {
            *m = as_i32(v);
        }
        let len = step.staging.len();
        let mut dst = step.meta.slice.slice_mut(0..len);
        dev.stream
            .memcpy_htod(&step.staging, &mut dst)
            .map_err(|e| CudaError::driver("copying the step's batch", e))?;
        step.rows = n;
        step.logit_rows = batch.logit_rows.len();
        Ok(())
    }

    pub(crate) fn tokens_ptr(&self) -> u64 {
        self.meta.ptr()
    }
    pub(crate) fn positions_ptr(&self) -> u64 {
        self.meta.ptr() + 4 * self.max_rows as u64
    }
    pub(crate) fn slots_ptr(&self) -> u64 {
        self.meta.ptr() + 8 * self.max_rows as u64
    }
    pub(crate) fn logit_rows_ptr(&self) -> u64 {
        self.meta.ptr() + 12 * self.max_rows as u64
    }
}
