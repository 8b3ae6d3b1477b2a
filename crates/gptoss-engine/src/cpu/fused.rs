//! Decode-size matmul rows (T ≤ 4 input rows, AVX2 + FMA): each weight row is decoded in registers and
//! multiplied straight into 8-wide f32 accumulators per input row, with no f32 row buffer. bf16 rows are
//! shifted into f32 lanes; MXFP4 rows go through the byte-shuffle E2M1 decode with a per-32 scale.
//! The weight values, the 32 partial sums and their reduction are exactly those of the generic path
//! (`matmul::dot`), so results are bit-identical to it whatever the batch size.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use gptoss_formats::tensor::e8m0_to_f32;

use super::matmul::{reduce_lanes, LANES};

/// The most input rows the fused kernels take (beyond, decoding each row once to f32 is cheaper).
pub(crate) const MAX_ROWS: usize = 4;

/// A weight matrix in a layout the fused kernels decode; `n` is the row length.
#[derive(Clone, Copy)]
pub(crate) enum FusedWeight<'a> {
    /// Little-endian bf16, `2 n` bytes per row.
    Bf16 { bytes: &'a [u8], n: usize },
    /// MXFP4: `n / 2` code bytes (low nibble first) and `n / 32` E8M0 scales per row; `n % 32 == 0`.
    Mxfp4 {
        codes: &'a [u8],
        scales: &'a [u8],
        n: usize,
    },
}

impl FusedWeight<'_> {
    fn row_len(&self) -> usize {
        match *self {
            FusedWeight::Bf16 { n, .. } | FusedWeight::Mxfp4 { n, .. } => n,
        }
    }
}

/// One parallel task: rows `first..` (one per `t`-wide group of `chunk`, column-major:
/// `chunk[r * t + i]` = input row `i` · weight row `first + r`). Input rows go two per pass over the
/// weight row, which keeps the 8 accumulators in registers; the row stays in L1 between passes.
///
/// # Safety
/// The CPU must support AVX2 and FMA; `x` holds `t · n` values.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn task_avx2(
    w: FusedWeight<'_>,
    x: &[f32],
    t: usize,
    first: usize,
    chunk: &mut [f32],
) {
    let n = w.row_len();
    for (r, col) in chunk.chunks_exact_mut(t).enumerate() {
        for (p, pair) in col.chunks_mut(2).enumerate() {
            let xs = &x[2 * p * n..(2 * p + pair.len()) * n];
            if let [one] = pair {
                [*one] = row::<1>(w, first + r, xs);
            } else {
                pair.copy_from_slice(&row::<2>(w, first + r, xs));
            }
        }
    }
}

/// Weight row `j` dotted with each of the `T` input rows in `x` (`x.len() == T n`).
#[inline(always)]
unsafe fn row<const T: usize>(w: FusedWeight<'_>, j: usize, x: &[f32]) -> [f32; T] {
    match w {
        FusedWeight::Bf16 { bytes, n } => bf16_row::<T>(&bytes[j * 2 * n..(j + 1) * 2 * n], x, n),
        FusedWeight::Mxfp4 { codes, scales, n } => mxfp4_row::<T>(
            &codes[j * n / 2..(j + 1) * n / 2],
            &scales[j * n / 32..(j + 1) * n / 32],
            x,
            n,
        ),
    }
}

/// Reduces each input row's 4 accumulators (partial sum `8k + l` in lane `l` of vector `k`, as in
/// `matmul::dot`) in the generic path's order.
#[inline(always)]
unsafe fn finish<const T: usize>(acc: &[[__m256; 4]; T]) -> [f32; T] {
    let mut out = [0.0f32; T];
    for (o, a) in out.iter_mut().zip(acc) {
        let mut lanes = [0.0f32; LANES];
        for (dst, &v) in lanes.chunks_exact_mut(8).zip(a) {
            _mm256_storeu_ps(dst.as_mut_ptr(), v);
        }
        *o = reduce_lanes(&lanes);
    }
    out
}

/// `Σ_i x[t·n + i] · w[i]` for each `t`, `w` being `n` bf16 values (`w.len() == 2 n`, `x.len() == T n`).
#[inline(always)]
unsafe fn bf16_row<const T: usize>(w: &[u8], x: &[f32], n: usize) -> [f32; T] {
    const STEP: usize = LANES;
    let main = n / STEP * STEP;
    let mut acc = [[_mm256_setzero_ps(); 4]; T];
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    let mut i = 0;
    while i < main {
        for k in 0..4 {
            let raw = _mm_loadu_si128(wp.add(2 * (i + 8 * k)).cast());
            let wv = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16));
            for (t, a) in acc.iter_mut().enumerate() {
                let xv = _mm256_loadu_ps(xp.add(t * n + i + 8 * k));
                a[k] = _mm256_fmadd_ps(wv, xv, a[k]);
            }
        }
        i += STEP;
    }
    let mut out = finish::<T>(&acc);
    for (i, c) in w.chunks_exact(2).enumerate().skip(main) {
        let wi = f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16);
        for (t, o) in out.iter_mut().enumerate() {
            *o += x[t * n + i] * wi;
        }
    }
    out
}

/// `Σ_i x[t·n + i] · w[i]` for each `t`, `w` being MXFP4 blocks (`codes.len() == n / 2`,
/// `scales.len() == n / 32`, `x.len() == T n`). A byte shuffle gives twice each E2M1 value as an int8,
/// which converts to f32 exactly and is scaled by half the block's power-of-two scale (exact).
#[inline(always)]
unsafe fn mxfp4_row<const T: usize>(codes: &[u8], scales: &[u8], x: &[f32], n: usize) -> [f32; T] {
    const TWICE_E2M1: [i8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];
    let table = _mm_loadu_si128(TWICE_E2M1.as_ptr().cast());
    let low_mask = _mm_set1_epi8(0x0F);
    let mut acc = [[_mm256_setzero_ps(); 4]; T];
    let xp = x.as_ptr();
    for (b, (block, &s)) in codes.chunks_exact(16).zip(scales).enumerate() {
        let half_scale = _mm256_set1_ps(e8m0_to_f32(s) * 0.5);
        let bytes = _mm_loadu_si128(block.as_ptr().cast());
        let lo = _mm_and_si128(bytes, low_mask);
        let hi = _mm_and_si128(_mm_srli_epi16(bytes, 4), low_mask);
        // Element 2i is the low nibble of byte i and 2i+1 the high one.
        let first = _mm_shuffle_epi8(table, _mm_unpacklo_epi8(lo, hi));
        let second = _mm_shuffle_epi8(table, _mm_unpackhi_epi8(lo, hi));
        let wv = [
            _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(first)),
            _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(first, 8))),
            _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(second)),
            _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(second, 8))),
        ];
        for (k, &v) in wv.iter().enumerate() {
            let v = _mm256_mul_ps(v, half_scale);
            for (t, a) in acc.iter_mut().enumerate() {
                let xv = _mm256_loadu_ps(xp.add(t * n + 32 * b + 8 * k));
                a[k] = _mm256_fmadd_ps(v, xv, a[k]);
            }
        }
    }
    finish::<T>(&acc)
}
