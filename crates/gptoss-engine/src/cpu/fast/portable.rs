//! The scalar int8 kernel: the definition of what the SIMD kernels compute (per block, the exact integer
//! `256 Σ w q + Σ w r` of the weight's int8 values with the activation's codes and remainders, times
//! the weight's scale and the activation's unit, summed in f32), and the path for CPUs without AVX2.

use super::acts::QuantView;
use super::weights::{IntWeight, BLOCK};
use super::OutRows;

/// The exact integer `256 Σ w q + Σ w r` of a weight block with an activation block.
#[inline]
pub(crate) fn block_dot(w: &[i8; BLOCK], q: &[i8], r: &[i8]) -> i32 {
    let dot = |x: &[i8]| -> i32 {
        w.iter()
            .zip(x)
            .map(|(&a, &b)| i32::from(a) * i32::from(b))
            .sum()
    };
    256 * dot(q) + dot(r)
}

/// One task: weight rows `rows` against every activation row, results (plus bias) into `out`.
///
/// # Safety
/// `out` must hold `[acts.rows, n_out]` with `rows` inside `n_out`, and no other thread may write those
/// columns.
pub(crate) unsafe fn task(
    w: &IntWeight<'_>,
    acts: &QuantView<'_>,
    rows: std::ops::Range<usize>,
    bias: Option<&[f32]>,
    out: OutRows,
) {
    let mut codes = [0i8; BLOCK];
    let nb = acts.n / BLOCK;
    for j in rows {
        let b0 = bias.map_or(0.0, |b| b[j]);
        for t in 0..acts.rows {
            out.set(t, j, 0.0);
        }
        for b in 0..nb {
            let s = w.block(j, b, &mut codes);
            let blk = b * BLOCK..(b + 1) * BLOCK;
            for t in 0..acts.rows {
                let x = acts.row(t);
                let dot = block_dot(&codes, &x.codes[blk.clone()], &x.rems[blk.clone()]);
                out.add(t, j, dot as f32 * (s * x.scales[b]));
            }
        }
        for t in 0..acts.rows {
            out.add(t, j, b0);
        }
    }
}
