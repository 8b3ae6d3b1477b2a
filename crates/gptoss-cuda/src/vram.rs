//! Device memory accounting: every allocation the backend makes goes through [`Meter::reserve`], which fails
//! with the numbers when the cap (`--max-vram`) would be exceeded, and is released when its buffer drops.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, DeviceRepr, ValidAsZeroBits};

use crate::error::{CudaError, Result};

/// Bytes in use, the peak, and the cap.
#[derive(Debug)]
pub struct Meter {
    cap_bytes: u64,
    used_bytes: AtomicU64,
    peak_bytes: AtomicU64,
}

impl Meter {
    /// A meter with a cap.
    pub fn new(cap_bytes: u64) -> Arc<Self> {
        Arc::new(Meter {
            cap_bytes,
            used_bytes: AtomicU64::new(0),
            peak_bytes: AtomicU64::new(0),
        })
    }

    /// Claims `bytes` for `what`, or fails naming the request, what is in use and the cap.
    pub fn reserve(&self, bytes: u64, what: &str) -> Result<()> {
        let used = self.used_bytes.load(Ordering::Relaxed);
        if used + bytes > self.cap_bytes {
            return Err(CudaError::OutOfMemory(format!(
                "device memory budget exceeded allocating {what}: {} requested, {} already in use, cap {} \
                 (raise --max-vram or lower the context length / slots)",
                gib(bytes),
                gib(used),
                gib(self.cap_bytes)
            )));
        }
        let now = self.used_bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.peak_bytes.fetch_max(now, Ordering::Relaxed);
        Ok(())
    }

    /// Returns `bytes` to the budget.
    pub fn release(&self, bytes: u64) {
        self.used_bytes.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Bytes in use now.
    pub fn used_bytes(&self) -> u64 {
        self.used_bytes.load(Ordering::Relaxed)
    }

    /// Most bytes ever in use.
    pub fn peak_bytes(&self) -> u64 {
        self.peak_bytes.load(Ordering::Relaxed)
    }

    /// The cap.
    pub fn cap_bytes(&self) -> u64 {
        self.cap_bytes
    }
}

/// `1.50 GiB (1610612736 bytes)`.
pub fn gib(bytes: u64) -> String {
    format!(
        "{:.2} GiB ({bytes} bytes)",
        bytes as f64 / (1u64 << 30) as f64
    )
}

/// A device buffer counted against a [`Meter`].
pub struct DevBuf<T> {
    /// The allocation.
    pub slice: CudaSlice<T>,
    meter: Arc<Meter>,
    bytes: u64,
}

impl<T: DeviceRepr + ValidAsZeroBits> DevBuf<T> {
    /// Allocates `len` zeroed elements (at least one, so every buffer has an address).
    pub fn zeros(
        stream: &Arc<CudaStream>,
        meter: &Arc<Meter>,
        len: usize,
        what: &str,
    ) -> Result<Self> {
        let len = len.max(1);
        let bytes = (len * std::mem::size_of::<T>()) as u64;
        meter.reserve(bytes, what)?;
        match stream.alloc_zeros::<T>(len) {
            Ok(slice) => Ok(DevBuf {
                slice,
                meter: meter.clone(),
                bytes,
            }),
            Err(e) => {
                meter.release(bytes);
                Err(CudaError::driver(
                    format!("allocating {what} ({})", gib(bytes)),
                    e,
                ))
            }
        }
    }

    /// Copies `data` to a new buffer (an empty slice gives a one-element zero buffer).
    pub fn from_host(
        stream: &Arc<CudaStream>,
        meter: &Arc<Meter>,
        data: &[T],
        what: &str,
    ) -> Result<Self> {
        let mut b = Self::zeros(stream, meter, data.len(), what)?;
        if !data.is_empty() {
            stream
                .memcpy_htod(data, &mut b.slice)
                .map_err(|e| CudaError::driver(format!("copying {what} to the device"), e))?;
        }
        Ok(b)
    }
}

impl<T: DeviceRepr + ValidAsZeroBits + Default + Clone> DevBuf<T> {
    /// Copies the first `len` elements back to the host and waits for them.
    pub fn to_host(&self, stream: &Arc<CudaStream>, len: usize, what: &str) -> Result<Vec<T>> {
        let mut out = vec![T::default(); len];
        if len == 0 {
            return Ok(out);
        }
        if len > self.slice.len() {
            return Err(CudaError::Unsupported(format!(
                "reading {len} elements of {what}, which holds {}",
                self.slice.len()
            )));
        }
        stream
            .memcpy_dtoh(&self.slice.slice(0..len), &mut out)
            .map_err(|e| CudaError::driver(format!("reading {what} back"), e))?;
        stream
            .synchronize()
            .map_err(|e| CudaError::driver(format!("reading {what} back"), e))?;
        Ok(out)
    }
}

impl<T> DevBuf<T> {
    /// The raw device address (kernel parameter structs carry these).
    pub fn ptr(&self) -> u64 {
        use cudarc::driver::DevicePtr;
        let stream = self.slice.stream().clone();
        let (p, _sync) = self.slice.device_ptr(&stream);
        p
    }

    /// Elements.
    pub fn len(&self) -> usize {
        self.slice.len()
    }

    /// Whether it holds no elements (never: buffers hold at least one).
    pub fn is_empty(&self) -> bool {
        self.slice.len() == 0
    }
}

impl<T> Drop for DevBuf<T> {
    fn drop(&mut self) {
        self.meter.release(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_is_enforced_with_numbers() {
        let m = Meter::new(1 << 30);
        m.reserve(768 << 20, "weights").unwrap();
        let e = m.reserve(512 << 20, "KV cache").unwrap_err().to_string();
        assert!(e.contains("allocating KV cache: 0.50 GiB"), "{e}");
        assert!(
            e.contains("0.75 GiB (805306368 bytes) already in use, cap 1.00 GiB"),
            "{e}"
        );
        m.release(768 << 20);
        m.reserve(512 << 20, "KV cache").unwrap();
        assert_eq!((m.used_bytes(), m.peak_bytes()), (512 << 20, 768 << 20));
    }
}
