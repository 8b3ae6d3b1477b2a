//! Weight uploads through pinned staging buffers: a ring of page-locked host buffers, each filled in
//! parallel and copied to the device asynchronously on the backend's stream, so the next buffer is filled
//! while the previous one is in flight. A buffer is filled either from a [`UnitMap`] (the host repack
//! happens during that fill) or with a tensor's raw source blocks, which go to a device scratch buffer for
//! `kernels/repack.cu` to rewrite (`device_repack.rs`). Copies from pinned memory run at the bus's speed;
//! pageable copies go through the driver's own bounce buffer on the calling thread.

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaEvent, CudaSlice, CudaStream, CudaViewMut, PinnedHostSlice};

use crate::error::{CudaError, Result};
use crate::repack::{UnitMap, TASK_BYTES};
use crate::vram::{DevBuf, Meter};

/// Bytes of one staging buffer by default: a few milliseconds of copy, tens of parallel fill tasks. The
/// device scratch of raw uploads is one buffer's size, which the memory plan counts as workspace.
pub const SLOT_BYTES: usize = gptoss_engine::memory::UPLOAD_SCRATCH_BYTES as usize;
/// Staging buffers by default: one being filled, the others in flight.
pub const SLOTS: usize = 4;

/// One staging buffer and the event marking the end of the last copy out of it.
struct Slot {
    host: PinnedHostSlice<u8>,
    copied: CudaEvent,
}

/// A ring of pinned host buffers for host-to-device weight copies on one stream.
pub struct Stager {
    ring: Ring,
    /// Where raw chunks land for the device repack: one buffer of `slot_bytes`, reused in stream order (a
    /// chunk's copy into it is queued after the kernel that read the previous chunk). Made on first use.
    scratch: Option<DevBuf<u8>>,
    /// Source bytes sent raw for the device repack so far.
    raw_bytes: u64,
}

/// The pinned buffers and the one to fill next.
struct Ring {
    slots: Vec<Slot>,
    next: usize,
    slot_bytes: usize,
}

impl Stager {
    /// `slots` pinned buffers of `slot_bytes` each (at least one of one byte).
    pub fn new(ctx: &Arc<CudaContext>, slot_bytes: usize, slots: usize) -> Result<Self> {
        let slot_bytes = slot_bytes.max(1);
        let slots = (0..slots.max(1))
            .map(|_| {
                // SAFETY: the buffer's bytes are only read after `copy` has written them. Flags 0:
                // ordinary cached memory (write-combined memory is slow to fill with small stores).
                let host =
                    unsafe { ctx.alloc_pinned_with_flags::<u8>(slot_bytes, 0) }.map_err(|e| {
                        CudaError::driver(
                            format!("allocating {slot_bytes} bytes of pinned host memory"),
                            e,
                        )
                    })?;
                let copied = ctx
                    .new_event(None)
                    .map_err(|e| CudaError::driver("creating a staging event", e))?;
                Ok(Slot { host, copied })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Stager {
            ring: Ring {
                slots,
                next: 0,
                slot_bytes,
            },
            scratch: None,
            raw_bytes: 0,
        })
    }

    /// Bytes of one staging buffer (the most one raw chunk may hold).
    pub fn slot_bytes(&self) -> usize {
        self.ring.slot_bytes
    }

    /// Source bytes sent raw for the device repack so far (tests check which path ran).
    pub fn raw_bytes(&self) -> u64 {
        self.raw_bytes
    }

    /// Builds every unit of `map` and copies them to `dst[at..]`, a staging buffer at a time; returns
    /// the offset after the last byte written. The copies may still be in flight on `stream`.
    pub fn copy(
        &mut self,
        stream: &Arc<CudaStream>,
        map: &UnitMap<'_>,
        dst: &mut CudaSlice<u8>,
        at: usize,
    ) -> Result<usize> {
        let (unit, total) = (map.unit_bytes(), map.len_bytes());
        let end = at + total;
        if end > dst.len() {
            return Err(CudaError::Unsupported(format!(
                "staging {total} bytes at {at} of a {}-byte device buffer",
                dst.len()
            )));
        }
        if total == 0 {
            return Ok(at);
        }
        if unit > self.ring.slot_bytes {
            return copy_unstaged(stream, map, dst, at);
        }
        let per_slot = self.ring.slot_bytes / unit;
        let (mut first, mut offset) = (0, at);
        while first < map.units() {
            let n = per_slot.min(map.units() - first);
            let bytes = n * unit;
            let mut view = dst.slice_mut(offset..offset + bytes);
            self.ring.stage(stream, bytes, &mut view, |staged| {
                map.fill_par(first, staged, TASK_BYTES)
            })?;
            first += n;
            offset += bytes;
        }
        Ok(end)
    }

    /// Makes the device scratch raw chunks are copied to (one staging buffer's size, counted by `meter`)
    /// unless it exists. False when the budget has no room for it: the caller repacks on the host instead.
    pub fn reserve_scratch(
        &mut self,
        stream: &Arc<CudaStream>,
        meter: &Arc<Meter>,
    ) -> Result<bool> {
        if self.scratch.is_some() {
            return Ok(true);
        }
        let what = "the upload scratch";
        match DevBuf::<u8>::zeros(stream, meter, self.ring.slot_bytes, what) {
            Ok(buf) => {
                self.scratch = Some(buf);
                Ok(true)
            }
            Err(CudaError::OutOfMemory(why)) => {
                tracing::debug!("repacking on the host: {why}");
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Fills a staging buffer's first `bytes` with `fill`, queues their copy to the start of the scratch
    /// ([`Stager::reserve_scratch`]) and returns the scratch's device address. Work queued on `stream` after
    /// this call reads the bytes there; the next call overwrites them, in stream order after that work.
    pub fn stage_raw(
        &mut self,
        stream: &Arc<CudaStream>,
        bytes: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<()>,
    ) -> Result<u64> {
        let scratch = self
            .scratch
            .as_mut()
            .ok_or_else(|| CudaError::Unsupported("a raw upload without its scratch".into()))?;
        if bytes == 0 || bytes > scratch.len() {
            return Err(CudaError::Unsupported(format!(
                "a raw chunk of {bytes} bytes for a scratch of {}",
                scratch.len()
            )));
        }
        let mut view = scratch.slice.slice_mut(0..bytes);
        self.ring.stage(stream, bytes, &mut view, fill)?;
        self.raw_bytes += bytes as u64;
        Ok(scratch.ptr())
    }

    /// Waits for every copy out of the staging buffers.
    pub fn finish(&self) -> Result<()> {
        for s in &self.ring.slots {
            s.copied
                .synchronize()
                .map_err(|e| CudaError::driver("waiting for a staging copy", e))?;
        }
        Ok(())
    }
}

impl Ring {
    /// Fills the next buffer's first `bytes` with `fill` (once the copy queued from it last has finished),
    /// queues their copy to `dst` (exactly `bytes` long) and records the buffer's event after it.
    fn stage(
        &mut self,
        stream: &Arc<CudaStream>,
        bytes: usize,
        dst: &mut CudaViewMut<'_, u8>,
        fill: impl FnOnce(&mut [u8]) -> Result<()>,
    ) -> Result<()> {
        let count = self.slots.len();
        let slot = self
            .slots
            .get_mut(self.next)
            .ok_or_else(|| CudaError::Unsupported("no staging buffer".into()))?;
        self.next = (self.next + 1) % count;
        // The buffer may still be the source of a copy queued earlier: wait for that copy.
        slot.copied
            .synchronize()
            .map_err(|e| CudaError::driver("waiting for a staging copy", e))?;
        let host = slot
            .host
            .as_mut_slice()
            .map_err(|e| CudaError::driver("mapping a staging buffer", e))?;
        let staged = host.get_mut(..bytes).ok_or_else(|| {
            CudaError::Unsupported(format!(
                "staging {bytes} bytes in a buffer of {}",
                self.slot_bytes
            ))
        })?;
        fill(staged)?;
        // The driver sees page-locked memory and queues a DMA that reads `staged` after this call
        // returns; the event below is waited on before the buffer is written again or freed.
        stream
            .memcpy_htod(&*staged, dst)
            .map_err(|e| CudaError::driver("copying staged weights to the device", e))?;
        slot.copied
            .record(stream)
            .map_err(|e| CudaError::driver("recording a staging event", e))
    }
}

impl Drop for Stager {
    fn drop(&mut self) {
        // A buffer must not be freed while a queued copy still reads it; errors were already reported
        // by the copy itself (a failed stream fails every later call).
        let _ = self.finish();
    }
}

/// A unit larger than a staging buffer (a padded row of over 32 MiB): built and copied one unit at a
/// time from ordinary memory.
fn copy_unstaged(
    stream: &Arc<CudaStream>,
    map: &UnitMap<'_>,
    dst: &mut CudaSlice<u8>,
    at: usize,
) -> Result<usize> {
    let unit = map.unit_bytes();
    let mut buf = vec![0u8; unit];
    let mut offset = at;
    for u in 0..map.units() {
        map.fill_par(u, &mut buf, TASK_BYTES)?;
        let mut view = dst.slice_mut(offset..offset + unit);
        stream
            .memcpy_htod(&buf[..], &mut view)
            .map_err(|e| CudaError::driver("copying weights to the device", e))?;
        offset += unit;
    }
    Ok(offset)
}
