//! RoPE + KV store and attention with sinks and sliding window on the CPU (spec §1.3), f32 throughout.
//! Keys and values live in the paged pools (`kv.rs`): each token reaches its positions through its
//! sequence's block table; a block's memory is allocated on its first write and reused after.

use rayon::prelude::*;

use crate::backend::AttnShape;
use crate::error::{Error, Result};
use crate::kv::{BlockTable, PoolKind, BLOCK_POSITIONS};
use crate::math::{apply_rope, softmax_with_sink};

use super::CpuStep;
use gptoss_formats::Window;

/// Keys and values of 16 positions of one layer, `[16, kv_width]` each (empty until first written).
#[derive(Default, Clone)]
pub(crate) struct KvBlock {
    pub k: Vec<f32>,
    pub v: Vec<f32>,
}

/// One layer's pool: its kind, its blocks up to the highest written so far, and how many it may have
/// (the table grows on first write, so an unused pool costs nothing however large it is declared).
pub(crate) struct LayerPool {
    pub kind: PoolKind,
    pub blocks: Vec<KvBlock>,
    pub capacity: usize,
}

fn missing(t: usize, pos: usize, kind: PoolKind) -> Error {
    Error::Backend {
        backend: "cpu",
        message: format!("token {t}: no {kind:?} KV block holds position {pos}"),
    }
}

/// The table of token `t`'s sequence.
fn table_of(step: &CpuStep, t: usize) -> Result<&BlockTable> {
    step.batch
        .seqs
        .get(t)
        .and_then(|&s| step.batch.tables.get(s as usize))
        .ok_or_else(|| Error::invalid(format!("token {t} has no block table")))
}

/// Rotates `q` and `k` of every token and writes `k`, `v` into the block of its position.
/// Copies blocks within one layer's pool (`(src, dst)` pairs); a source never written copies as
/// unwritten.
pub(crate) fn copy_blocks(pool: &mut LayerPool, pairs: &[(u32, u32)]) -> Result<()> {
    for &(src, dst) in pairs {
        let (src, dst) = (src as usize, dst as usize);
        if src >= pool.capacity || dst >= pool.capacity {
            return Err(Error::Backend {
                backend: "cpu",
                message: format!(
                    "copy of {:?} KV block {src} to {dst} outside the pool of {}",
                    pool.kind, pool.capacity
                ),
            });
        }
        let block = pool.blocks.get(src).cloned().unwrap_or_default();
        if pool.blocks.len() <= dst {
            pool.blocks.resize_with(dst + 1, KvBlock::default);
        }
        if let Some(slot) = pool.blocks.get_mut(dst) {
            *slot = block;
        }
    }
    Ok(())
}

pub(crate) fn rope_store(
    step: &CpuStep,
    shape: &AttnShape,
    qkv: (&mut [f32], &mut [f32], &[f32]),
    pool: &mut LayerPool,
) -> Result<()> {
    let (q, k, v) = qkv;
    let (d, kvw) = (shape.head_dim, shape.n_kv_heads * shape.head_dim);
    let qw = shape.n_q_heads * d;
    let rows = step.batch.tokens.len();
    q[..rows * qw]
        .par_chunks_mut(qw)
        .zip(&step.batch.positions)
        .for_each(|(row, &pos)| {
            for head in row.chunks_exact_mut(d) {
                apply_rope(head, pos, &step.rope.inv_freq, step.rope.concentration);
            }
        });
    for (t, &pos) in step.batch.positions.iter().enumerate().take(rows) {
        let krow = &mut k[t * kvw..(t + 1) * kvw];
        for head in krow.chunks_exact_mut(d) {
            apply_rope(head, pos, &step.rope.inv_freq, step.rope.concentration);
        }
        let pos = pos as usize;
        let b = table_of(step, t)?
            .block_of(pool.kind, pos, step.ring_blocks)
            .map(|b| b as usize)
            .filter(|&b| b < pool.capacity)
            .ok_or_else(|| missing(t, pos, pool.kind))?;
        if pool.blocks.len() <= b {
            pool.blocks.resize_with(b + 1, KvBlock::default);
        }
        let block = pool
            .blocks
            .get_mut(b)
            .ok_or_else(|| missing(t, pos, pool.kind))?;
        if block.k.is_empty() {
            block.k = vec![0.0; BLOCK_POSITIONS * kvw];
            block.v = vec![0.0; BLOCK_POSITIONS * kvw];
        }
        let at = (pos % BLOCK_POSITIONS) * kvw;
        block.k[at..at + kvw].copy_from_slice(krow);
        block.v[at..at + kvw].copy_from_slice(&v[t * kvw..(t + 1) * kvw]);
    }
    Ok(())
}

/// The key and value rows (head `g`) of positions `first..=pos` of token `t`, through its block table,
/// into `rows` (cleared first).
fn window_rows<'a>(
    step: &CpuStep,
    (t, first, pos): (usize, usize, usize),
    g: usize,
    pool: &'a LayerPool,
    d: usize,
    rows: &mut Vec<(&'a [f32], &'a [f32])>,
) -> Result<()> {
    let table = table_of(step, t)?;
    rows.clear();
    for j in first..=pos {
        let block = table
            .block_of(pool.kind, j, step.ring_blocks)
            .and_then(|b| pool.blocks.get(b as usize))
            .ok_or_else(|| missing(t, j, pool.kind))?;
        let at = (j % BLOCK_POSITIONS) * (block.k.len() / BLOCK_POSITIONS) + g * d;
        match (block.k.get(at..at + d), block.v.get(at..at + d)) {
            (Some(k), Some(v)) => rows.push((k, v)),
            _ => return Err(missing(t, j, pool.kind)),
        }
    }
    Ok(())
}

/// `out[t, h] = Σ_j softmax_with_sink(q·k_j / √d)_j v_j` over the visible keys of each token.
pub(crate) fn attend(
    step: &CpuStep,
    shape: &AttnShape,
    q: &[f32],
    sinks: &[f32],
    pool: &LayerPool,
    out: &mut [f32],
) -> Result<()> {
    let d = shape.head_dim;
    let qw = shape.n_q_heads * d;
    let group = shape.n_q_heads / shape.n_kv_heads;
    let scale = 1.0 / (d as f32).sqrt();
    let rows = step.batch.tokens.len();
    // Each split of the parallel loop reuses its key/value list and score buffers across heads.
    out[..rows * qw]
        .par_chunks_mut(d)
        .enumerate()
        .try_for_each_init(
            || (Vec::new(), Vec::new()),
            |(kv, w), (i, o)| -> Result<()> {
                let (t, h) = (i / shape.n_q_heads, i % shape.n_q_heads);
                let pos = step.batch.positions[t] as usize;
                let first = match shape.window {
                    Window::Sliding(w) => (pos + 1).saturating_sub(w),
                    Window::Full => 0,
                };
                window_rows(step, (t, first, pos), h / group, pool, d, kv)?;
                let qh = &q[t * qw + h * d..t * qw + (h + 1) * d];
                w.clear();
                w.extend(
                    kv.iter()
                        .map(|(kj, _)| qh.iter().zip(*kj).map(|(a, b)| a * b).sum::<f32>() * scale),
                );
                softmax_with_sink(w, sinks[h]);
                o.fill(0.0);
                for (wj, (_, vj)) in w.iter().zip(kv.iter()) {
                    for (acc, x) in o.iter_mut().zip(*vj) {
                        *acc += wj * x;
                    }
                }
                Ok(())
            },
        )
}
