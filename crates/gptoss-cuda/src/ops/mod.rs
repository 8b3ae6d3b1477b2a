//! Kernel launchers, one module per kernel file. Each op checks shapes on the host, fills the `#[repr(C)]`
//! mirror of its kernel's parameter struct and launches on the backend's stream; no op synchronizes.

pub mod attention;
pub mod embed;
pub mod linear;
pub mod moe;
pub mod norm;
pub mod repack;
pub mod sample;
pub mod slots;

use std::sync::Arc;

use cudarc::driver::{CudaStream, DeviceRepr, LaunchConfig};

use crate::device::Device;
use crate::error::{CudaError, Result};
use crate::kernels::WeightKind;
use crate::staging::Stager;
use crate::vram::{DevBuf, Meter};
use crate::weights::{PackPlan, UnitMap, ROUND_BF16, ROUND_NONE};

/// A packed weight as the kernels see it (mirror of `WRef` in common.cu).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct WeightRef {
    data: u64,
    scales: u64,
    table: [f32; 16],
    ld: i32,
    block: i32,
    round: i32,
    /// 4-bit kinds: scales per row (`ld / block`), else 0.
    row_scales: i32,
}

// SAFETY: plain #[repr(C)] data with the layout of the kernels' `WRef`.
unsafe impl DeviceRepr for WeightRef {}

/// A packed weight on the device: one tensor, or every expert of a layer stacked row-wise.
pub struct DevWeight {
    /// Decoder selector.
    pub kind: WeightKind,
    /// Rows of one tensor (one expert).
    pub rows: usize,
    /// Logical row length.
    pub k: usize,
    ld: usize,
    block: usize,
    round: i32,
    table: [f32; 16],
    data: DevBuf<u8>,
    scales: Option<DevBuf<u8>>,
}

impl DevWeight {
    /// Builds one or more tensors of one layout back to back on the device (experts stack this way),
    /// through `stager`'s pinned buffers: ggml block formats as raw blocks rewritten by `repack.cu` (unless
    /// `dev.repack` says host), the rest repacked on the host while each buffer is filled. Each tensor's
    /// mapped file pages are dropped from this process once its bytes are staged (see
    /// [`PackPlan::release_pages`]), so host memory does not keep a copy of what is now on the GPU.
    pub fn upload(
        dev: &Device,
        stager: &mut Stager,
        parts: &[PackPlan<'_>],
        what: &str,
    ) -> Result<Self> {
        let first = parts
            .first()
            .ok_or_else(|| CudaError::Unsupported(format!("{what}: no tensors")))?;
        if let Some(bad) = parts.iter().position(|p| !first.same_layout(p)) {
            let (b, f) = (&parts[bad].layout, &first.layout);
            return Err(CudaError::Unsupported(format!(
                "{what}: tensor {bad} is stored as {:?} [{}, {}], tensor 0 as {:?} [{}, {}]; one launch needs one layout",
                b.kind, b.rows, b.k, f.kind, f.rows, f.k
            )));
        }
        parts.iter().for_each(PackPlan::prefetch);
        let (stream, meter) = (&dev.stream, &dev.meter);
        let total = |m: fn(&PackPlan<'_>) -> usize| parts.iter().map(m).sum::<usize>();
        let data_bytes = total(|p| p.data.len_bytes());
        let scale_bytes = total(|p| p.scales.as_ref().map_or(0, |s| s.len_bytes()));
        let mut data = DevBuf::<u8>::zeros(stream, meter, data_bytes, what)?;
        let mut scales = match first.scales {
            Some(_) => Some(DevBuf::<u8>::zeros(stream, meter, scale_bytes, what)?),
            None => None,
        };
        let (mut at_data, mut at_scales) = (0, 0);
        for p in parts {
            let target = repack::RawTarget {
                data: &data,
                data_at: at_data,
                scales: scales.as_ref(),
                scales_at: at_scales,
            };
            let on_device = match &p.raw {
                Some(raw) => repack::upload_raw(dev, stager, raw, target)?,
                None => false,
            };
            if !on_device {
                stager.copy(stream, &p.data, &mut data.slice, at_data)?;
                if let (Some(map), Some(buf)) = (&p.scales, scales.as_mut()) {
                    stager.copy(stream, map, &mut buf.slice, at_scales)?;
                }
            }
            at_data += p.data.len_bytes();
            at_scales += p.scales.as_ref().map_or(0, UnitMap::len_bytes);
            p.release_pages();
        }
        let l = first.layout;
        Ok(DevWeight {
            kind: l.kind,
            rows: l.rows,
            k: l.k,
            ld: l.ld,
            block: l.block,
            round: l.round,
            table: l.table,
            data,
            scales,
        })
    }

    /// The device bytes (codes or elements, then scales), copied back (tests).
    pub fn to_host(&self, stream: &Arc<CudaStream>) -> Result<(Vec<u8>, Vec<u8>)> {
        let data = self.data.to_host(stream, self.data.len(), "a weight")?;
        let scales = match &self.scales {
            Some(s) => s.to_host(stream, s.len(), "a weight's scales")?,
            None => Vec::new(),
        };
        Ok((data, scales))
    }

    /// Whether the pipelined tiles (`linear_pipe_<fmt>`) take this weight: bf16 or Q8_0 whose rows are whole K
    /// steps of 32 (16-byte aligned cp.async chunks, no K tail).
    pub fn pipe_ready(&self) -> bool {
        matches!(self.kind, WeightKind::Bf16 | WeightKind::Q8)
            && self.k.is_multiple_of(32)
            && self.ld.is_multiple_of(32)
    }

    /// Whether every decoded value is exactly a bf16 and rows come in whole 32-element steps: the condition of
    /// the tensor-core (`_mma`) kernels, which feed the weights to the tensor cores as bf16. Dense bf16; 4-bit
    /// codes whose table values are bf16 times an E8M0 power of two; 4-bit values rounded to bf16 at decode;
    /// Q8_0 with rows of whole blocks (its int8 codes are exact in bf16, and its f16 scale, one per 32-element
    /// K step, multiplies the step's partial sum in f32).
    pub fn mma_exact(&self) -> bool {
        let steps = self.ld.is_multiple_of(32) && self.block.is_multiple_of(32);
        let bf16_table = self
            .table
            .iter()
            .all(|v| half::bf16::from_f32(*v).to_f32() == *v);
        match self.kind {
            WeightKind::Bf16 => true,
            WeightKind::Q8 => self.ld.is_multiple_of(32),
            WeightKind::Lut4E8m0 => {
                steps && (self.round == ROUND_BF16 || (self.round == ROUND_NONE && bf16_table))
            }
            WeightKind::Lut4F32 => steps && self.round == ROUND_BF16,
            _ => false,
        }
    }

    /// Whether the MXFP4 f16 tensor-core expert kernels (`moe_*_fp4_*` in moe.cu) read it: E2M1 codes
    /// (each exactly an f16 times 2^14) with one E8M0 scale per 32 elements, unrounded, rows of whole
    /// blocks and no padding (one expert's codes addressed with 32-bit offsets).
    pub fn fp4_mma(&self) -> bool {
        self.kind == WeightKind::Lut4E8m0
            && self.round == ROUND_NONE
            && self.table == gptoss_formats::tensor::E2M1_VALUES
            && self.block == 32
            && self.ld == self.k
            && self.k.is_multiple_of(32)
            && self.rows * self.k / 2 <= u32::MAX as usize
    }

    /// Thread groups per 256-thread block of the split-K kernels (`block_rowdot` in common.cu): groups of
    /// 256, 128, 64 or 32 threads, the largest not above the row's 16-byte chunks, so few threads idle.
    pub fn split_groups(&self) -> i32 {
        let chunk_elems = match self.kind {
            WeightKind::Q8 => 16,
            WeightKind::Lut4E8m0 | WeightKind::Lut4F32
                if self.ld.is_multiple_of(32) && self.block.is_multiple_of(32) =>
            {
                32
            }
            _ => 8,
        };
        let chunks = self.k.div_ceil(chunk_elems);
        let mut size = 256;
        while size > 32 && size > chunks {
            size /= 2;
        }
        (256 / size) as i32
    }

    /// The kernel view.
    pub fn as_ref(&self) -> WeightRef {
        WeightRef {
            data: self.data.ptr(),
            scales: self.scales.as_ref().map_or(0, DevBuf::ptr),
            table: self.table,
            ld: self.ld as i32,
            block: self.block as i32,
            round: self.round,
            row_scales: match self.kind {
                WeightKind::Lut4E8m0 | WeightKind::Lut4F32 => (self.ld / self.block) as i32,
                _ => 0,
            },
        }
    }
}

/// An optional f32 vector (bias) on the device.
pub fn upload_opt(
    stream: &Arc<CudaStream>,
    meter: &Arc<Meter>,
    values: Option<&[f32]>,
    what: &str,
) -> Result<Option<DevBuf<f32>>> {
    values
        .map(|v| DevBuf::from_host(stream, meter, v, what))
        .transpose()
}

/// `grid` blocks of `threads`, no dynamic shared memory.
pub fn cfg(grid: (u32, u32, u32), threads: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: grid,
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// `ceil(a / b)` as a grid dimension.
pub fn blocks(a: usize, b: usize) -> u32 {
    a.div_ceil(b).max(1) as u32
}

/// A shape mismatch between an op's operands.
pub fn shape_error(op: &str, detail: String) -> CudaError {
    CudaError::Unsupported(format!("{op}: {detail}"))
}
