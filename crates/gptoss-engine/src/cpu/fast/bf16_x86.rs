//! bf16 weights × activations split into two bf16 parts (`x ≈ hi + lo`) with AVX-512 BF16 (`vdpbf16ps`:
//! pairs of bf16 products summed into f32 lanes, one op per part), in tiles of 4 weight rows × 4
//! activation rows; rows of any length (a masked load takes the last partial 32). CPUs without AVX-512
//! BF16 use the exact f32 path instead.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use super::acts::Bf16Acts;
use super::decode_x86::prefetch_ahead;
use super::weights::Bf16Weight;
use super::{OutRows, TILE_COLS};

/// Weight rows of one tile.
const TILE_ROWS: usize = 4;

/// One task: weight rows `rows` against every activation row, results (plus bias) into `out`.
///
/// # Safety
/// The CPU must support AVX-512 F/BW/VL and BF16; `out` must hold `[acts rows, n_out]` with `rows`
/// inside `n_out`, and no other thread may write those columns.
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512bf16")]
pub(crate) unsafe fn task(
    w: &Bf16Weight<'_>,
    acts: &Bf16Acts,
    n_rows: usize,
    rows: std::ops::Range<usize>,
    bias: Option<&[f32]>,
    out: OutRows,
) {
    for c0 in (0..n_rows).step_by(TILE_COLS) {
        let cols = (n_rows - c0).min(TILE_COLS);
        let mut r0 = rows.start;
        while r0 < rows.end {
            let r1 = (r0 + TILE_ROWS).min(rows.end);
            let put = Put { out, bias };
            let last = rows.end - 1;
            match (r1 - r0, cols) {
                (TILE_ROWS, 4) => put.all(&tile::<TILE_ROWS, 4>(w, acts, (r0, last), c0), r0, c0),
                (TILE_ROWS, 3) => put.all(&tile::<TILE_ROWS, 3>(w, acts, (r0, last), c0), r0, c0),
                (TILE_ROWS, 2) => put.all(&tile::<TILE_ROWS, 2>(w, acts, (r0, last), c0), r0, c0),
                (TILE_ROWS, _) => put.all(&tile::<TILE_ROWS, 1>(w, acts, (r0, last), c0), r0, c0),
                _ => {
                    for j in r0..r1 {
                        for c in c0..c0 + cols {
                            put.all(&tile::<1, 1>(w, acts, (j, last), c), j, c);
                        }
                    }
                }
            }
            r0 = r1;
        }
    }
}

/// Where a tile's results go.
struct Put<'a> {
    out: OutRows,
    bias: Option<&'a [f32]>,
}

impl Put<'_> {
    /// Stores `v` (rows `r0..`, activation rows `c0..`) plus the bias.
    #[inline(always)]
    unsafe fn all<const R: usize, const C: usize>(&self, v: &[[f32; C]; R], r0: usize, c0: usize) {
        for (r, row) in v.iter().enumerate() {
            let b = self.bias.map_or(0.0, |b| b[r0 + r]);
            for (c, &x) in row.iter().enumerate() {
                self.out.set(c0 + c, r0 + r, x + b);
            }
        }
    }
}

/// 32 bf16 values at `p`, the first `len` of them (the rest zero).
#[inline(always)]
unsafe fn load32(p: *const u16, len: usize) -> __m512bh {
    let v = if len >= 32 {
        _mm512_loadu_si512(p.cast())
    } else {
        _mm512_maskz_loadu_epi16((1u32 << len) - 1, p.cast())
    };
    // SAFETY: both are 64 bytes of SIMD lanes; the bf16 type only retypes the lanes.
    std::mem::transmute::<__m512i, __m512bh>(v)
}

#[inline(always)]
unsafe fn tile<const R: usize, const C: usize>(
    w: &Bf16Weight<'_>,
    acts: &Bf16Acts,
    (r0, last): (usize, usize),
    c0: usize,
) -> [[f32; C]; R] {
    let n = acts.n;
    let wp: [*const u16; R] = std::array::from_fn(|r| w.rows.row(r0 + r).as_ptr().cast());
    let ahead: [*const u16; R] =
        std::array::from_fn(|r| w.rows.row((r0 + R + r).min(last)).as_ptr().cast());
    let xp: [(*const u16, *const u16); C] = std::array::from_fn(|c| {
        let (hi, lo) = acts.row(c0 + c);
        (hi.as_ptr(), lo.as_ptr())
    });
    let mut acc = [[_mm512_setzero_ps(); C]; R];
    let mut k = 0;
    while k < n {
        let len = n - k;
        let mut wv = [load32(wp[0].add(k), len); R];
        for r in 1..R {
            wv[r] = load32(wp[r].add(k), len);
        }
        for p in ahead {
            // As the int8 tiles do: the next tile's rows while this one runs.
            prefetch_ahead(p.wrapping_add(k).cast());
        }
        for c in 0..C {
            let hi = load32(xp[c].0.add(k), len);
            let lo = load32(xp[c].1.add(k), len);
            for r in 0..R {
                acc[r][c] = _mm512_dpbf16_ps(acc[r][c], hi, wv[r]);
                acc[r][c] = _mm512_dpbf16_ps(acc[r][c], lo, wv[r]);
            }
        }
        k += 32;
    }
    let mut out = [[0.0f32; C]; R];
    for r in 0..R {
        for c in 0..C {
            out[r][c] = _mm512_reduce_add_ps(acc[r][c]);
        }
    }
    out
}
