//! RoPE + KV store and attention with sinks and sliding window on the CPU (spec §1.3), f32 throughout:
//! the exact path sums every dot product in order, the fast path in SIMD lanes.
//! Keys and values live in the paged pools (`kv.rs`): each token reaches its positions through its
//! sequence's block table; a block's memory is allocated on its first write and reused after.

use rayon::prelude::*;

use crate::backend::AttnShape;
use crate::error::{Error, Result};
use crate::kv::{BlockTable, PoolKind, BLOCK_POSITIONS};
use crate::math::{apply_rope, softmax_with_sink};

use super::{CpuIsa, CpuStep};
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

/// How attention sums its dot products.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AttnSums {
    /// Each `q·k` and each output element summed key by key, in order (the exact reference).
    InOrder,
    /// In SIMD lanes on this instruction set (the fast path): eight-lane partial sums of `q·k`, four
    /// keys at a time, and the output accumulated eight elements a register.
    Lanes(CpuIsa),
}

/// `out[t, h] = Σ_j softmax_with_sink(q·k_j / √d)_j v_j` over the visible keys of each token. The query
/// heads that share a key/value head run together, so the visible rows are looked up once for them.
pub(crate) fn attend(
    step: &CpuStep,
    shape: &AttnShape,
    (q, sinks): (&[f32], &[f32]),
    pool: &LayerPool,
    out: &mut [f32],
    sums: AttnSums,
) -> Result<()> {
    let d = shape.head_dim;
    let qw = shape.n_q_heads * d;
    let group = shape.n_q_heads / shape.n_kv_heads;
    let scale = 1.0 / (d as f32).sqrt();
    let rows = step.batch.tokens.len();
    let sums = match sums {
        AttnSums::Lanes(isa) if d.is_multiple_of(LANES) && lanes_supported(isa) => sums,
        _ => AttnSums::InOrder,
    };
    // Heads a parallel item takes: a key/value head's whole group, unless that leaves cores idle
    // (one token's decode), then halves of it while the group divides.
    let mut heads = group;
    while heads.is_multiple_of(2) && rows * shape.n_q_heads / heads < rayon::current_num_threads() {
        heads /= 2;
    }
    // Each split of the parallel loop reuses its key/value list and score buffers across items.
    out[..rows * qw]
        .par_chunks_mut(heads * d)
        .enumerate()
        .try_for_each_init(
            || (Vec::new(), Vec::new()),
            |(kv, w), (i, o)| -> Result<()> {
                let t = i * heads / shape.n_q_heads;
                let h0 = i * heads % shape.n_q_heads;
                let pos = step.batch.positions[t] as usize;
                let first = match shape.window {
                    Window::Sliding(w) => (pos + 1).saturating_sub(w),
                    Window::Full => 0,
                };
                window_rows(step, (t, first, pos), h0 / group, pool, d, kv)?;
                for (hh, oh) in o.chunks_exact_mut(d).enumerate() {
                    let h = h0 + hh;
                    let qh = &q[t * qw + h * d..t * qw + (h + 1) * d];
                    scores(sums, qh, kv, scale, w);
                    softmax_with_sink(w, sinks[h]);
                    weighted_values(sums, w, kv, oh);
                }
                Ok(())
            },
        )
}

/// Elements a SIMD register holds (AVX2 f32).
const LANES: usize = 8;

/// Whether the lane sums can run on `isa` (the x86 sets need AVX2 and FMA).
fn lanes_supported(isa: CpuIsa) -> bool {
    cfg!(target_arch = "x86_64") && isa != CpuIsa::Portable && isa.supported()
}

/// `w[j] = q·k_j × scale` for every visible row (`w` cleared first).
fn scores(sums: AttnSums, q: &[f32], kv: &[(&[f32], &[f32])], scale: f32, w: &mut Vec<f32>) {
    w.clear();
    match sums {
        AttnSums::InOrder => w.extend(
            kv.iter()
                .map(|(k, _)| q.iter().zip(*k).map(|(a, b)| a * b).sum::<f32>() * scale),
        ),
        AttnSums::Lanes(_) => {
            w.resize(kv.len(), 0.0);
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `attend` chose lanes only where AVX2 and FMA were detected and `q.len()` is a
            // multiple of `LANES`; every key row has `q.len()` elements (`window_rows`).
            unsafe {
                simd::scores(q, kv, scale, w)
            };
        }
    }
}

/// `o = Σ_j w[j] v_j`.
fn weighted_values(sums: AttnSums, w: &[f32], kv: &[(&[f32], &[f32])], o: &mut [f32]) {
    match sums {
        AttnSums::InOrder => {
            o.fill(0.0);
            for (wj, (_, vj)) in w.iter().zip(kv.iter()) {
                for (acc, x) in o.iter_mut().zip(*vj) {
                    *acc += wj * x;
                }
            }
        }
        AttnSums::Lanes(_) => {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as in `scores`; `o` and every value row have the head's length.
            unsafe {
                simd::weighted_values(w, kv, o)
            };
        }
    }
}

/// The AVX2 + FMA sums of the fast path (the AVX-512 machines run them too: at a head of 64 elements
/// the work per key is a few registers either way).
#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;

    use super::LANES;

    /// The four lane sums of `acc` in one register's lanes 0..4.
    #[inline(always)]
    unsafe fn sums4(acc: [__m256; 4]) -> __m128 {
        let ab = _mm256_hadd_ps(acc[0], acc[1]);
        let cd = _mm256_hadd_ps(acc[2], acc[3]);
        let abcd = _mm256_hadd_ps(ab, cd);
        _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1))
    }

    /// `w[j] = q·k_j × scale`, four keys at a time (one horizontal reduction for four dot products).
    ///
    /// # Safety
    /// AVX2 and FMA; `q.len()` a multiple of [`LANES`], every key row at least `q.len()` long, `w` as
    /// long as `kv`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn scores(q: &[f32], kv: &[(&[f32], &[f32])], scale: f32, w: &mut [f32]) {
        let d = q.len();
        let mut quads = kv.chunks_exact(4);
        let mut out = w.chunks_exact_mut(4);
        for (keys, o) in (&mut quads).zip(&mut out) {
            let mut acc = [_mm256_setzero_ps(); 4];
            for c in (0..d).step_by(LANES) {
                let x = _mm256_loadu_ps(q.as_ptr().add(c));
                for (a, (k, _)) in acc.iter_mut().zip(keys) {
                    *a = _mm256_fmadd_ps(x, _mm256_loadu_ps(k.as_ptr().add(c)), *a);
                }
            }
            let s = _mm_mul_ps(sums4(acc), _mm_set1_ps(scale));
            _mm_storeu_ps(o.as_mut_ptr(), s);
        }
        for ((k, _), o) in quads.remainder().iter().zip(out.into_remainder()) {
            let mut acc = _mm256_setzero_ps();
            for c in (0..d).step_by(LANES) {
                let x = _mm256_loadu_ps(q.as_ptr().add(c));
                acc = _mm256_fmadd_ps(x, _mm256_loadu_ps(k.as_ptr().add(c)), acc);
            }
            let zero = _mm256_setzero_ps();
            *o = _mm_cvtss_f32(sums4([acc, zero, zero, zero])) * scale;
        }
    }

    /// `o = Σ_j w[j] v_j`, up to 64 elements of `o` in registers while the keys stream past.
    ///
    /// # Safety
    /// AVX2 and FMA; `o.len()` a multiple of [`LANES`], every value row at least `o.len()` long, `w`
    /// as long as `kv`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn weighted_values(w: &[f32], kv: &[(&[f32], &[f32])], o: &mut [f32]) {
        const REGS: usize = 8;
        for base in (0..o.len()).step_by(REGS * LANES) {
            let regs = ((o.len() - base) / LANES).min(REGS);
            let mut acc = [_mm256_setzero_ps(); REGS];
            for (&wj, (_, v)) in w.iter().zip(kv) {
                let wv = _mm256_set1_ps(wj);
                let v = v.as_ptr().add(base);
                for (r, a) in acc.iter_mut().enumerate().take(regs) {
                    *a = _mm256_fmadd_ps(wv, _mm256_loadu_ps(v.add(r * LANES)), *a);
                }
            }
            for (r, a) in acc.iter().enumerate().take(regs) {
                _mm256_storeu_ps(o.as_mut_ptr().add(base + r * LANES), *a);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values in [-2, 2) from a fixed linear congruence (no RNG crate in the engine's tests).
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut x = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((x >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
            })
            .collect()
    }

    fn lanes() -> Option<AttnSums> {
        let isa = CpuIsa::best();
        lanes_supported(isa).then_some(AttnSums::Lanes(isa))
    }

    /// The lane sums agree with the in-order sums to f32 rounding, for heads of one, eight and seventeen
    /// registers and key counts around the four-key groups.
    #[test]
    fn lane_sums_match_the_in_order_sums() {
        let Some(fast) = lanes() else {
            return;
        };
        for d in [8, 64, 136] {
            for n in [1, 3, 4, 5, 130] {
                let (k, v) = (values(n * d, 1), values(n * d, 2));
                let q = values(d, 3);
                let kv: Vec<(&[f32], &[f32])> = k.chunks_exact(d).zip(v.chunks_exact(d)).collect();
                let (mut want, mut got) = (Vec::new(), Vec::new());
                scores(AttnSums::InOrder, &q, &kv, 0.125, &mut want);
                scores(fast, &q, &kv, 0.125, &mut got);
                for (j, (a, b)) in want.iter().zip(&got).enumerate() {
                    let bound: f32 = q.iter().zip(kv[j].0).map(|(x, y)| (x * y).abs()).sum();
                    assert!(
                        (a - b).abs() <= 1e-6 * bound,
                        "d={d} n={n} key {j}: {a} vs {b}"
                    );
                }
                softmax_with_sink(&mut want, 0.5);
                let (mut o_want, mut o_got) = (vec![f32::NAN; d], vec![f32::NAN; d]);
                weighted_values(AttnSums::InOrder, &want, &kv, &mut o_want);
                weighted_values(fast, &want, &kv, &mut o_got);
                for (i, (a, b)) in o_want.iter().zip(&o_got).enumerate() {
                    assert!(
                        (a - b).abs() <= 1e-6 * 2.0,
                        "d={d} n={n} out {i}: {a} vs {b}"
                    );
                }
            }
        }
    }

    /// A key's lane score is the same bits whether it falls in a group of four or after the last one,
    /// so a token's attention does not depend on how many keys precede it in a list.
    #[test]
    fn a_lane_score_does_not_depend_on_its_group() {
        let Some(fast) = lanes() else {
            return;
        };
        let d = 64;
        let (k, v) = (values(9 * d, 4), values(9 * d, 5));
        let q = values(d, 6);
        let kv: Vec<(&[f32], &[f32])> = k.chunks_exact(d).zip(v.chunks_exact(d)).collect();
        let (mut all, mut head) = (Vec::new(), Vec::new());
        scores(fast, &q, &kv, 1.0, &mut all);
        for n in 1..9 {
            scores(fast, &q, &kv[..n], 1.0, &mut head);
            for j in 0..n {
                assert_eq!(head[j].to_bits(), all[j].to_bits(), "{n} keys, key {j}");
            }
        }
    }
}
