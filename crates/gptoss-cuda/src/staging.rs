//! Weight uploads through pinned staging buffers: a ring of page-locked host buffers, each filled in
//! parallel from a [`UnitMap`] (the repack happens during that fill) and copied to the device
//! asynchronously on the backend's stream, so the next buffer is filled while the previous one is in
//! flight. Copies from pinned memory run at the bus's speed; pageable copies go through the driver's
//! own bounce buffer on the calling thread.

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaEvent, CudaSlice, CudaStream, PinnedHostSlice};

use crate::error::{CudaError, Result};
use crate::repack::{UnitMap, TASK_BYTES};

/// Bytes of one staging buffer by default: a few milliseconds of copy, tens of parallel fill tasks.
pub const SLOT_BYTES: usize = 32 << 20;
/// Staging buffers by default: one being filled, the others in flight.
pub const SLOTS: usize = 4;

/// One staging buffer and the event marking the end of the last copy out of it.
struct Slot {
    host: PinnedHostSlice<u8>,
    copied: CudaEvent,
}

/// A ring of pinned host buffers for host-to-device weight copies on one stream.
pub struct Stager {
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
            slots,
            next: 0,
            slot_bytes,
        })
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
        if unit > self.slot_bytes {
            return copy_unstaged(stream, map, dst, at);
        }
        let per_slot = self.slot_bytes / unit;
        let (mut first, mut offset) = (0, at);
        while first < map.units() {
            let n = per_slot.min(map.units() - first);
            let bytes = n * unit;
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
            let staged = &mut host[..bytes];
            map.fill_par(first, staged, TASK_BYTES)?;
            let mut view = dst.slice_mut(offset..offset + bytes);
            // The driver sees page-locked memory and queues a DMA that reads `staged` after this call
            // returns; the event below is waited on before the buffer is written again or freed.
            stream
                .memcpy_htod(&*staged, &mut view)
                .map_err(|e| CudaError::driver("copying staged weights to the device", e))?;
            slot.copied
                .record(stream)
                .map_err(|e| CudaError::driver("recording a staging event", e))?;
            first += n;
            offset += bytes;
        }
        Ok(end)
    }

    /// Waits for every copy out of the staging buffers.
    pub fn finish(&self) -> Result<()> {
        for s in &self.slots {
            s.copied
                .synchronize()
                .map_err(|e| CudaError::driver("waiting for a staging copy", e))?;
        }
        Ok(())
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
