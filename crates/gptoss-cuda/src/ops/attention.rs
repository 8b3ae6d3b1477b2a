//! Launchers of `rope_kv.cu` and `attention.cu`, and the paged KV cache they share (`gptoss_engine::kv`): two
//! pools by layer kind, each `[layers of the kind, blocks, 16, kv_width]` of keys and the same of values, in
//! f32 (default), f16 or bf16; every token reaches its positions through its sequence's block table.

use gptoss_engine::backend::AttnShape;
use gptoss_engine::{KvLayout, PoolKind, BLOCK_POSITIONS};
use gptoss_formats::Window;

use crate::backend::{CudaBuf, CudaStep, CudaVector};
use crate::device::Device;
use crate::error::{CudaError, Result};
use crate::kernels::{Func, KvType, FLASH_HEAD_DIMS};
use crate::ops::{blocks, cfg, shape_error};
use crate::options::FuseRope;
use crate::vram::DevBuf;

// The kernels address positions as `block * 16 + position % 16`.
const _: () = assert!(BLOCK_POSITIONS == 16);

/// Keys and values of one pool (none when the model has no layer of its kind).
struct Pool {
    kv: Option<(DevBuf<u8>, DevBuf<u8>)>,
    blocks: usize,
}

/// Both KV pools of every layer.
pub struct CudaCache {
    full: Pool,
    sliding: Pool,
    /// Element type.
    pub kv: KvType,
    layout: KvLayout,
}

/// Bytes per cache element.
pub fn kv_elem_bytes(kv: KvType) -> usize {
    match kv {
        KvType::Bf16 | KvType::F16 => 2,
        KvType::F32 => 4,
    }
}

impl CudaCache {
    /// Allocates both pools of `layout`.
    pub fn new(dev: &Device, kv: KvType, layout: &KvLayout) -> Result<Self> {
        let pool = |kind: PoolKind, what: &str| -> Result<Pool> {
            let bytes = layout.layers_of(kind)
                * layout.blocks_of(kind)
                * layout.block_elems()
                * kv_elem_bytes(kv);
            let buf = |part: &str| {
                let what = format!("the {what} KV pool ({part})");
                DevBuf::zeros(&dev.stream, &dev.meter, bytes, &what)
            };
            let kv = if bytes == 0 {
                None
            } else {
                Some((buf("keys")?, buf("values")?))
            };
            Ok(Pool {
                kv,
                blocks: layout.blocks_of(kind),
            })
        };
        Ok(CudaCache {
            full: pool(PoolKind::Full, "full-attention")?,
            sliding: pool(PoolKind::Sliding, "sliding-window")?,
            kv,
            layout: layout.clone(),
        })
    }

    /// Copies whole blocks within the pool of `kind` in every layer of it (keys and values), device to
    /// device on the stream: each `(src, dst)` pair in order.
    pub fn copy_blocks(&self, dev: &Device, kind: PoolKind, pairs: &[(u32, u32)]) -> Result<()> {
        let pool = match kind {
            PoolKind::Full => &self.full,
            PoolKind::Sliding => &self.sliding,
        };
        // A cache with no layers of this kind (a pipeline stage of only full or only sliding layers) has
        // nothing to copy, as the CPU backend's.
        let Some((k, v)) = &pool.kv else {
            return match pairs.is_empty() || self.layout.layers_of(kind) == 0 {
                true => Ok(()),
                false => Err(shape_error("copy_blocks", format!("no {kind:?} KV pool"))),
            };
        };
        let block_bytes = self.layout.block_elems() * kv_elem_bytes(self.kv);
        for &(src, dst) in pairs {
            if src as usize >= pool.blocks || dst as usize >= pool.blocks {
                return Err(shape_error(
                    "copy_blocks",
                    format!(
                        "block {src} to {dst} outside the {kind:?} pool of {}",
                        pool.blocks
                    ),
                ));
            }
            for layer in 0..self.layout.layers_of(kind) {
                let base = (layer * pool.blocks * block_bytes) as u64;
                for buf in [k, v] {
                    let (from, to) = (
                        buf.ptr() + base + src as u64 * block_bytes as u64,
                        buf.ptr() + base + dst as u64 * block_bytes as u64,
                    );
                    // SAFETY: both ranges lie inside `buf` (block indices checked against the pool,
                    // layer < layers of the kind), which outlives the copy: the stream is ordered and
                    // the cache is freed only after a sync.
                    unsafe {
                        cudarc::driver::result::memcpy_dtod_async(
                            to,
                            from,
                            block_bytes,
                            dev.stream.cu_stream(),
                        )
                    }
                    .map_err(|e| CudaError::driver("copying KV blocks", e))?;
                }
            }
        }
        Ok(())
    }

    /// Where `layer` lives: its keys' and values' base addresses, the step's tables of its kind, the
    /// table width and the ring length (0 for full layers).
    fn layer(&self, layer: usize, step: &CudaStep) -> Result<LayerView> {
        let (kind, index) = self
            .layout
            .place(layer)
            .map_err(|e| shape_error("attention", e.to_string()))?;
        let (pool, table, stride, ring) = match kind {
            PoolKind::Full => (&self.full, step.full_tables_ptr(), step.table_blocks, 0),
            PoolKind::Sliding => (
                &self.sliding,
                step.sliding_tables_ptr(),
                step.ring_blocks,
                step.ring_blocks,
            ),
        };
        let Some((k, v)) = &pool.kv else {
            return Err(shape_error(
                "attention",
                format!("layer {layer} has no {kind:?} KV pool"),
            ));
        };
        let off = (index * pool.blocks * self.layout.block_elems() * kv_elem_bytes(self.kv)) as u64;
        Ok(LayerView {
            k: k.ptr() + off,
            v: v.ptr() + off,
            table,
            stride: stride as i32,
            ring: ring as i32,
        })
    }

    fn check(&self, op: &str, shape: &AttnShape) -> Result<()> {
        let kvw = shape.n_kv_heads * shape.head_dim;
        if shape.layer >= self.layout.layers.len() || kvw != self.layout.kv_width {
            return Err(shape_error(
                op,
                format!(
                    "layer {} kv width {kvw} against a cache of {} layers, width {}",
                    shape.layer,
                    self.layout.layers.len(),
                    self.layout.kv_width
                ),
            ));
        }
        if shape.head_dim > 128
            || !shape.head_dim.is_multiple_of(8)
            || shape.n_kv_heads == 0
            || !shape.n_q_heads.is_multiple_of(shape.n_kv_heads)
        {
            return Err(shape_error(
                op,
                format!(
                    "head_dim {} (a multiple of 8, <= 128) with {} q / {} kv heads",
                    shape.head_dim, shape.n_q_heads, shape.n_kv_heads
                ),
            ));
        }
        Ok(())
    }
}

/// One layer's view of its pool and tables.
struct LayerView {
    k: u64,
    v: u64,
    table: u64,
    stride: i32,
    ring: i32,
}

#[repr(C)]
struct RopeParams {
    q: u64,
    k: u64,
    v: u64,
    kc: u64,
    vc: u64,
    pos: u64,
    seqs: u64,
    table: u64,
    inv_freq: u64,
    table_stride: i32,
    ring: i32,
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

/// RoPE on `q` and `k`, then `k` and `v` into the block of each token's position.
pub fn rope_store_kv(
    dev: &Device,
    step: &CudaStep,
    shape: &AttnShape,
    qkv: Qkv<'_>,
    cache: &mut CudaCache,
) -> Result<()> {
    cache.check("rope_store_kv", shape)?;
    check_qkv(step, shape, &qkv)?;
    let view = cache.layer(shape.layer, step)?;
    let p = RopeParams {
        q: qkv.q.buf.ptr(),
        k: qkv.k.buf.ptr(),
        v: qkv.v.buf.ptr(),
        kc: view.k,
        vc: view.v,
        pos: step.positions_ptr(),
        seqs: step.seqs_ptr(),
        table: view.table,
        inv_freq: step.inv_freq.ptr(),
        table_stride: view.stride,
        ring: view.ring,
        conc: step.concentration,
        nq: shape.n_q_heads as i32,
        nkv: shape.n_kv_heads as i32,
        d: shape.head_dim as i32,
    };
    let head_groups = blocks(shape.n_q_heads + shape.n_kv_heads, 4);
    dev.launch(
        Func::RopeKv(cache.kv),
        cfg((step.rows as u32, head_groups, 1), 128),
        &p,
    )
}

/// The widths of q, k and v against the heads, and the step's RoPE table against the head width.
fn check_qkv(step: &CudaStep, shape: &AttnShape, qkv: &Qkv<'_>) -> Result<()> {
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
    Ok(())
}

#[repr(C)]
struct AttnParams {
    q: u64,
    kc: u64,
    vc: u64,
    sinks: u64,
    out: u64,
    pos: u64,
    seqs: u64,
    table: u64,
    part: u64,
    table_stride: i32,
    ring: i32,
    scale: f32,
    nq: i32,
    nkv: i32,
    d: i32,
    window: i32,
    splits: i32,
    n_tok: i32,
    rope: i32,
    conc: f32,
    k_new: u64,
    v_new: u64,
    inv_freq: u64,
}

// SAFETY: #[repr(C)] mirror of `AttnParams` in attention.cu.
unsafe impl cudarc::driver::DeviceRepr for AttnParams {}

/// Query heads one attention CTA serves (one warp each; `ATT_WARPS` in attention.cu).
const HEADS_PER_CTA: usize = 8;
/// Step rows one `attention_rows` CTA serves (`ATQ` in attention.cu), and the head width it is written for
/// (`ATD`).
const ROWS_PER_CTA: usize = 8;
const ROWS_HEAD_DIM: usize = 64;

/// The query heads each kv head serves, for a prefill-shaped step of one unsplit launch (at least 4 rows per
/// sequence on average, so few tiles span two sequences) whose query heads split evenly over the kv heads.
fn prompt_group(
    step_rows: usize,
    step_seqs: usize,
    splits: usize,
    shape: &AttnShape,
) -> Option<usize> {
    let group = shape.n_q_heads / shape.n_kv_heads.max(1);
    (splits == 1
        && step_rows >= 4 * step_seqs.max(1)
        && group * shape.n_kv_heads == shape.n_q_heads)
        .then_some(group)
}

/// Whether a step's attention runs `attention_rows` (8 rows per CTA: each staged key tile serves 8 rows)
/// rather than one CTA per row: prefill-shaped steps ([`prompt_group`]) for heads of 64 and groups of at most
/// 8 query heads. Recorded steps (one row per sequence) never take it, so the CUDA graph keys need not name
/// it.
pub fn rows_kernel_fits(
    step_rows: usize,
    step_seqs: usize,
    splits: usize,
    shape: &AttnShape,
) -> bool {
    prompt_group(step_rows, step_seqs, splits, shape)
        .is_some_and(|group| shape.head_dim == ROWS_HEAD_DIM && group <= HEADS_PER_CTA)
}

/// Query rows (step rows × the group's query heads) one `attention_flash` CTA serves (`FL_ROWS`).
const FLASH_ROWS: usize = 128;

/// Whether a step's attention runs `attention_flash` (f16 tensor cores, 128 query rows per CTA) when not
/// exact: prefill-shaped steps ([`prompt_group`]) for heads of a width of [`FLASH_HEAD_DIMS`] and groups that
/// divide 16 (one m16 tile holds whole step rows).
pub fn flash_kernel_fits(
    step_rows: usize,
    step_seqs: usize,
    splits: usize,
    shape: &AttnShape,
) -> bool {
    prompt_group(step_rows, step_seqs, splits, shape).is_some_and(|group| {
        FLASH_HEAD_DIMS.contains(&shape.head_dim) && group > 0 && 16 % group == 0
    })
}

/// Keys per split below which splitting does not pay (8 tiles of 32).
const KEYS_PER_SPLIT: usize = 256;

/// Key splits of a layer's attention launch in this step: a function of the step's tokens, its longest
/// reach and the layer's window only (CUDA graphs are keyed on it).
pub(crate) fn splits_for(
    step: &CudaStep,
    window: Window,
    (n_q_heads, n_kv_heads): (usize, usize),
    sms: usize,
) -> usize {
    if step.rows > step.split_rows {
        return 1;
    }
    let chunks = (n_q_heads / n_kv_heads.max(1)).div_ceil(HEADS_PER_CTA);
    let keys = match window {
        Window::Sliding(w) => step.max_keys.min(w.max(1)),
        Window::Full => step.max_keys,
    };
    choose_attention_splits(step.rows, step.rows * n_kv_heads * chunks, keys, sms)
}

/// How many CTAs share one (token, head chunk)'s keys: 1 unless fewer CTAs than SMs would each walk a long
/// history (long-context decode), then enough to give every SM about two CTAs, each split at least
/// `KEYS_PER_SPLIT` keys.
pub fn choose_attention_splits(rows: usize, ctas: usize, keys: usize, sms: usize) -> usize {
    use gptoss_engine::memory::{ATTN_MAX_SPLITS, ATTN_SPLIT_ROWS};
    if rows > ATTN_SPLIT_ROWS || keys <= KEYS_PER_SPLIT || ctas >= sms {
        return 1;
    }
    let by_keys = keys.div_ceil(KEYS_PER_SPLIT);
    let by_sms = (2 * sms).div_ceil(ctas.max(1));
    by_keys.min(by_sms).clamp(1, ATTN_MAX_SPLITS)
}

/// Whether a step's [`rope_attention`] runs as one launch (`attention_<kv>` rotating q and storing the step's
/// keys and values itself): every sequence has one row in the step (decode; so no row reads a key another row
/// of the step stores) and one CTA serves each kv head's whole group (a single writer of each new key).
pub fn fuses_rope(step_rows: usize, step_seqs: usize, shape: &AttnShape) -> bool {
    let group = shape.n_q_heads / shape.n_kv_heads.max(1);
    step_rows > 0 && step_rows == step_seqs && group.div_ceil(HEADS_PER_CTA) == 1
}

/// [`rope_store_kv`] then [`attention`]: in one launch where [`fuses_rope`] and the device's [`FuseRope`]
/// allow (decode: one launch of a layer's chain fewer), else the two. `q` and `k` are left unrotated by the
/// one launch.
pub fn rope_attention(
    dev: &Device,
    step: &CudaStep,
    shape: &AttnShape,
    qkv: Qkv<'_>,
    (sinks, cache): (&CudaVector, &mut CudaCache),
    out: &mut CudaBuf,
) -> Result<()> {
    let wanted = match dev.fuse_rope {
        FuseRope::Always => true,
        FuseRope::Never => false,
        FuseRope::Auto => !dev.launches_dependent(),
    };
    if !wanted || !fuses_rope(step.rows, step.seqs, shape) {
        let Qkv { q, k, v } = qkv;
        rope_store_kv(dev, step, shape, Qkv { q: &mut *q, k, v }, cache)?;
        return attention(dev, step, shape, q, sinks, cache, out);
    }
    check_qkv(step, shape, &qkv)?;
    let rope = RopeIn {
        k: qkv.k.buf.ptr(),
        v: qkv.v.buf.ptr(),
        inv_freq: step.inv_freq.ptr(),
        conc: step.concentration,
    };
    launch_attention(dev, step, shape, (qkv.q, sinks, cache), out, Some(rope))
}

/// The step's keys and values that the fused form rotates and stores (see [`rope_attention`]).
struct RopeIn {
    k: u64,
    v: u64,
    inv_freq: u64,
    conc: f32,
}

/// Attention with sinks over each token's window, read through its block table.
pub fn attention(
    dev: &Device,
    step: &CudaStep,
    shape: &AttnShape,
    q: &CudaBuf,
    sinks: &CudaVector,
    cache: &CudaCache,
    out: &mut CudaBuf,
) -> Result<()> {
    launch_attention(dev, step, shape, (q, sinks, cache), out, None)
}

fn launch_attention(
    dev: &Device,
    step: &CudaStep,
    shape: &AttnShape,
    (q, sinks, cache): (&CudaBuf, &CudaVector, &CudaCache),
    out: &mut CudaBuf,
    rope: Option<RopeIn>,
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
    let view = cache.layer(shape.layer, step)?;
    let group = shape.n_q_heads / shape.n_kv_heads;
    let chunks = group.div_ceil(HEADS_PER_CTA);
    let window = match shape.window {
        Window::Sliding(w) => w.max(1),
        Window::Full => 0,
    };
    let splits = splits_for(
        step,
        shape.window,
        (shape.n_q_heads, shape.n_kv_heads),
        dev.caps.sm_count as usize,
    );
    let p = AttnParams {
        q: q.buf.ptr(),
        kc: view.k,
        vc: view.v,
        sinks: sinks.buf.ptr(),
        out: out.buf.ptr(),
        pos: step.positions_ptr(),
        seqs: step.seqs_ptr(),
        table: view.table,
        part: step.split_part.ptr(),
        table_stride: view.stride,
        ring: view.ring,
        scale: 1.0 / (shape.head_dim as f32).sqrt(),
        nq: shape.n_q_heads as i32,
        nkv: shape.n_kv_heads as i32,
        d: shape.head_dim as i32,
        window: window as i32,
        splits: splits as i32,
        n_tok: step.rows as i32,
        rope: rope.is_some() as i32,
        conc: rope.as_ref().map_or(1.0, |r| r.conc),
        k_new: rope.as_ref().map_or(0, |r| r.k),
        v_new: rope.as_ref().map_or(0, |r| r.v),
        inv_freq: rope.as_ref().map_or(0, |r| r.inv_freq),
    };
    if rope.is_none() && !dev.exact && flash_kernel_fits(step.rows, step.seqs, splits, shape) {
        let grid = (
            step.rows.div_ceil(FLASH_ROWS / group) as u32,
            shape.n_kv_heads as u32,
            1,
        );
        let func = Func::AttentionFlash(cache.kv, shape.head_dim);
        return dev.launch(func, cfg(grid, 256), &p);
    }
    let threads = 32 * group.min(HEADS_PER_CTA) as u32;
    if rope.is_none() && rows_kernel_fits(step.rows, step.seqs, splits, shape) {
        let grid = (
            step.rows.div_ceil(ROWS_PER_CTA) as u32,
            shape.n_kv_heads as u32,
            1,
        );
        return dev.launch(Func::AttentionRows(cache.kv), cfg(grid, threads), &p);
    }
    let grid = (
        step.rows as u32,
        (shape.n_kv_heads * chunks) as u32,
        splits as u32,
    );
    dev.launch(Func::Attention(cache.kv), cfg(grid, threads), &p)?;
    if splits > 1 {
        let grid = ((step.rows * shape.n_q_heads) as u32, 1, 1);
        dev.launch(Func::AttentionCombine, cfg(grid, 128), &p)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Full-attention heads: `nq` query, `nkv` kv, `d` wide.
    fn shape(nq: usize, nkv: usize, d: usize) -> AttnShape {
        AttnShape {
            layer: 0,
            n_q_heads: nq,
            n_kv_heads: nkv,
            head_dim: d,
            window: Window::Full,
        }
    }

    #[test]
    fn rows_kernel_only_for_prefill_shaped_steps() {
        let oss = shape(64, 8, 64);
        assert!(rows_kernel_fits(2048, 1, 1, &oss));
        assert!(rows_kernel_fits(12, 2, 1, &oss));
        // Decode and mostly-decode steps, split launches, other widths and groups keep one CTA per row.
        assert!(!rows_kernel_fits(64, 64, 1, &oss));
        assert!(!rows_kernel_fits(70, 20, 1, &oss));
        assert!(!rows_kernel_fits(64, 1, 2, &oss));
        assert!(!rows_kernel_fits(64, 1, 1, &shape(4, 2, 16)));
        assert!(!rows_kernel_fits(64, 1, 1, &shape(24, 2, 64)));
    }

    #[test]
    fn flash_kernel_for_prefill_of_whole_groups() {
        let oss = shape(64, 8, 64);
        assert!(flash_kernel_fits(2048, 1, 1, &oss));
        assert!(flash_kernel_fits(24, 1, 1, &shape(4, 2, 16)));
        assert!(flash_kernel_fits(64, 1, 1, &shape(8, 2, 64)));
        // Decode steps, split launches, widths without a build, groups that do not divide 16.
        assert!(!flash_kernel_fits(64, 64, 1, &oss));
        assert!(!flash_kernel_fits(64, 1, 2, &oss));
        assert!(!flash_kernel_fits(64, 1, 1, &shape(64, 8, 128)));
        assert!(!flash_kernel_fits(64, 1, 1, &shape(24, 2, 64)));
        assert!(!flash_kernel_fits(64, 1, 1, &shape(64, 2, 64)));
    }

    #[test]
    fn splits_only_for_few_long_rows() {
        // Decode of one sequence on 132 SMs, 8 kv heads: 8 CTAs; 4096 keys → 16 splits of 256.
        assert_eq!(choose_attention_splits(1, 8, 4096, 132), 16);
        // Short history: no split.
        assert_eq!(choose_attention_splits(1, 8, 200, 132), 1);
        // 600 keys: 3 splits of at least 256.
        assert_eq!(choose_attention_splits(1, 8, 600, 132), 3);
        // 32 sequences decoding: 256 CTAs already fill 132 SMs.
        assert_eq!(choose_attention_splits(32, 256, 4096, 132), 1);
        // 16 sequences: 128 CTAs, room for 3 splits.
        assert_eq!(choose_attention_splits(16, 128, 4096, 132), 3);
        // Prefill chunks never split.
        assert_eq!(choose_attention_splits(512, 4096, 4096, 132), 1);
    }
}
