//! RoPE + KV store and attention with sinks and sliding window on the CPU (spec §1.3), f32 throughout.
//! The cache keeps, per layer and slot, every position's rotated key and value.

use rayon::prelude::*;

use crate::backend::AttnShape;
use crate::math::{apply_rope, softmax_with_sink};

use super::CpuStep;
use gptoss_formats::Window;

/// Keys and values of one slot of one layer, `[positions, kv_width]` each.
#[derive(Default, Clone)]
pub(crate) struct SlotKv {
    pub k: Vec<f32>,
    pub v: Vec<f32>,
}

/// Rotates `q` and `k` of every token and writes `k`, `v` into the cache.
pub(crate) fn rope_store(
    step: &CpuStep,
    shape: &AttnShape,
    q: &mut [f32],
    k: &mut [f32],
    v: &[f32],
    slots: &mut [SlotKv],
) {
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
    for t in 0..rows {
        let pos = step.batch.positions[t];
        let krow = &mut k[t * kvw..(t + 1) * kvw];
        for head in krow.chunks_exact_mut(d) {
            apply_rope(head, pos, &step.rope.inv_freq, step.rope.concentration);
        }
        let slot = &mut slots[step.batch.slots[t] as usize];
        let need = (pos as usize + 1) * kvw;
        if slot.k.len() < need {
            slot.k.resize(need, 0.0);
            slot.v.resize(need, 0.0);
        }
        let at = pos as usize * kvw;
        slot.k[at..at + kvw].copy_from_slice(krow);
        slot.v[at..at + kvw].copy_from_slice(&v[t * kvw..(t + 1) * kvw]);
    }
}

/// `out[t, h] = Σ_j softmax_with_sink(q·k_j / √d)_j v_j` over the visible keys of each token.
pub(crate) fn attend(
    step: &CpuStep,
    shape: &AttnShape,
    q: &[f32],
    sinks: &[f32],
    slots: &[SlotKv],
    out: &mut [f32],
) {
    let d = shape.head_dim;
    let (qw, kvw) = (shape.n_q_heads * d, shape.n_kv_heads * d);
    let group = shape.n_q_heads / shape.n_kv_heads;
    let scale = 1.0 / (d as f32).sqrt();
    let rows = step.batch.tokens.len();
    out[..rows * qw]
        .par_chunks_mut(d)
        .enumerate()
        .for_each(|(i, o)| {
            let (t, h) = (i / shape.n_q_heads, i % shape.n_q_heads);
            let pos = step.batch.positions[t] as usize;
            let first = match shape.window {
                Window::Sliding(w) => (pos + 1).saturating_sub(w),
                Window::Full => 0,
            };
            let slot = &slots[step.batch.slots[t] as usize];
            let g = h / group;
            let qh = &q[t * qw + h * d..t * qw + (h + 1) * d];
            let mut w: Vec<f32> = (first..=pos)
                .map(|j| {
                    let kj = &slot.k[j * kvw + g * d..j * kvw + (g + 1) * d];
                    qh.iter().zip(kj).map(|(a, b)| a * b).sum::<f32>() * scale
                })
                .collect();
            softmax_with_sink(&mut w, sinks[h]);
            o.fill(0.0);
            for (wj, j) in w.iter().zip(first..=pos) {
                let vj = &slot.v[j * kvw + g * d..j * kvw + (g + 1) * d];
                for (acc, x) in o.iter_mut().zip(vj) {
                    *acc += wj * x;
                }
            }
        });
}
