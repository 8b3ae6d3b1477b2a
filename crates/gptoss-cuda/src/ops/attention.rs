//! Launchers of `rope_kv.cu` and `attention.cu`, and the KV cache they share: per layer, slot and position
//! the rotated key and the value, `[layers, slots, context, kv_width]` in bf16 (default) or f32.

use gptoss_engine::backend::AttnShape;
use gptoss_formats::Window;

use crate::backend::{CudaBuf, CudaStep, CudaVector};
use crate::device::Device;
use crate::error::Result;
use crate::kernels::{Func, KvType};
use crate::ops::{cfg, shape_error};
use crate::vram::DevBuf;

/// Keys and values of every layer, slot and position.
pub struct CudaCache {
    k: DevBuf<u8>,
    v: DevBuf<u8>,
    /// Element type.
    pub kv: KvType,
    layers: usize,
    slots: usize,
    context: usize,
    kv_width: usize,
}

impl CudaCache {
    /// Allocates the cache.
    pub fn new(
        dev: &Device,
        kv: KvType,
        layers: usize,
        slots: usize,
        context: usize,
        kv_width: usize,
    ) -> Result<Self> {
        let elem = match kv {
            KvType::Bf16 => 2,
            KvType::F32 => 4,
        };
        let bytes = layers * slots * context * kv_width * elem;
        Ok(CudaCache {
            k: DevBuf::zeros(&dev.stream, &dev.meter, bytes, "the KV cache (keys)")?,
            v: DevBuf::zeros(&dev.stream, &dev.meter, bytes, "the KV cache (values)")?,
            kv,
            layers,
            slots,
            context,
            kv_width,
        })
    }

    /// Device addresses of `layer`'s keys and values, and the elements between slots.
    fn layer(&self, layer: usize) -> (u64, u64, i64) {
        let elem = match self.kv {
            KvType::Bf16 => 2,
            KvType::F32 => 4,
        };
        let slot_stride = self.context * self.kv_width;
        let off = (layer * self.slots * slot_stride * elem) as u64;
        (self.k.ptr() + off, self.v.ptr() + off, slot_stride as i64)
    }

    fn check(&self, op: &str, shape: &AttnShape) -> Result<()> {
        if shape.layer >= self.layers || shape.n_kv_heads * shape.head_dim != self.kv_width {
            return Err(shape_error(
                op,
                format!(
                    "layer {} kv width {} against a cache of {} layers, width {}",
                    shape.layer,
                    shape.n_kv_heads * shape.head_dim,
                    self.layers,
                    self.kv_width
                ),
            ));
        }
        if shape.head_dim > 128
            || !shape.head_dim.is_multiple_of(2)
            || shape.n_kv_heads == 0
            || !shape.n_q_heads.is_multiple_of(shape.n_kv_heads)
        {
            return Err(shape_error(
                op,
                format!(
                    "head_dim {} (even, <= 128) with {} q / {} kv heads",
                    shape.head_dim, shape.n_q_heads, shape.n_kv_heads
                ),
            ));
        }
        Ok(())
    }
}

#[repr(C)]
struct RopeParams {
    q: u64,
    k: u64,
    v: u64,
    kc: u64,
    vc: u64,
    pos: u64,
    slots: u64,
    inv_freq: u64,
    slot_stride: i64,
    conc: f32,
    nq: i32,
    nkv: i32,
    d: i32,
}

// SAFETY: #[repr(C)] mirror of `RopeParams` in rope_kv.cu.
unsafe impl cudarc::driver::DeviceRepr for RopeParams {}

/// The three projections of [`rope_store_kv`].
pub struct Qkv<'a> {
    /// `[rows, q_width]`, rotated in place.
    pub q: &'a mut CudaBuf,
    /// `[rows, kv_width]`, rotated in place.
    pub k: &'a mut CudaBuf,
    /// `[rows, kv_width]`.
    pub v: &'a CudaBuf,
}

/// RoPE on `q` and `k`, then `k` and `v` into the cache at each token's slot and position.
pub fn rope_store_kv(
    dev: &Device,
    step: &CudaStep,
    shape: &AttnShape,
    qkv: Qkv<'_>,
    cache: &mut CudaCache,
) -> Result<()> {
    cache.check("rope_store_kv", shape)?;
    let (qw, kvw) = (
        shape.n_q_heads * shape.head_dim,
        shape.n_kv_heads * shape.head_dim,
    );
    if qkv.q.cols != qw
        || qkv.k.cols != kvw
        || qkv.v.cols != kvw
        || step.rope_len * 2 != shape.head_dim
    {
        return Err(shape_error(
            "rope_store_kv",
            format!(
                "q [_, {}], k [_, {}], v [_, {}] for widths {qw}/{kvw}",
                qkv.q.cols, qkv.k.cols, qkv.v.cols
            ),
        ));
    }
    let (kc, vc, slot_stride) = cache.layer(shape.layer);
    let p = RopeParams {
        q: qkv.q.buf.ptr(),
        k: qkv.k.buf.ptr(),
        v: qkv.v.buf.ptr(),
        kc,
        vc,
        pos: step.positions_ptr(),
        slots: step.slots_ptr(),
        inv_freq: step.inv_freq.ptr(),
        slot_stride,
        conc: step.concentration,
        nq: shape.n_q_heads as i32,
        nkv: shape.n_kv_heads as i32,
        d: shape.head_dim as i32,
    };
    dev.launch(
        Func::RopeKv(cache.kv),
        cfg((step.rows as u32, 1, 1), 128),
        &p,
    )
}

#[repr(C)]
struct AttnParams {
    q: u64,
    kc: u64,
    vc: u64,
    sinks: u64,
    out: u64,
    pos: u64,
    slots: u64,
    slot_stride: i64,
    scale: f32,
    nq: i32,
    nkv: i32,
    d: i32,
    window: i32,
    pad: i32,
}

// SAFETY: #[repr(C)] mirror of `AttnParams` in attention.cu.
unsafe impl cudarc::driver::DeviceRepr for AttnParams {}

/// Attention with sinks over the cache for every token of the step.
pub fn attention(
    dev: &Device,
    step: &CudaStep,
    shape: &AttnShape,
    q: &CudaBuf,
    sinks: &CudaVector,
    cache: &CudaCache,
    out: &mut CudaBuf,
) -> Result<()> {
    cache.check("attention", shape)?;
    let qw = shape.n_q_heads * shape.head_dim;
    if q.cols != qw || out.cols != qw || sinks.len != shape.n_q_heads {
        return Err(shape_error(
            "attention",
            format!(
                "q [_, {}], out [_, {}], sinks [{}] for {} heads of {}",
                q.cols, out.cols, sinks.len, shape.n_q_heads, shape.head_dim
            ),
        ));
    }
    let (kc, vc, slot_stride) = cache.layer(shape.layer);
    let p = AttnParams {
        q: q.buf.ptr(),
        kc,
        vc,
        sinks: sinks.buf.ptr(),
        out: out.buf.ptr(),
        pos: step.positions_ptr(),
        slots: step.slots_ptr(),
        slot_stride,
        scale: 1.0 / (shape.head_dim as f32).sqrt(),
        nq: shape.n_q_heads as i32,
        nkv: shape.n_kv_heads as i32,
        d: shape.head_dim as i32,
        window: match shape.window {
            Window::Sliding(w) => w.max(1) as i32,
            Window::Full => 0,
        },
        pad: 0,
    };
    dev.launch(
        Func::Attention(cache.kv),
        cfg(((step.rows * shape.n_q_heads) as u32, 1, 1), 128),
        &p,
    )
}
