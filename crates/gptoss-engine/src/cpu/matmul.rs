//! `y = x Wᵀ + b` for any stored weight format: each weight row is decoded once to f32 (fast paths
//! for bf16, f32 and MXFP4; the formats crate's reference decode for the rest) and dotted with every
//! input row. Parallel over blocks of weight rows; f32 accumulation.

use gptoss_formats::tensor::{Lut4Scales, NibbleOrder, ScaleFormat, E2M1_VALUES};
use gptoss_formats::{DType, QuantTensor, TensorFormat};
use rayon::prelude::*;

/// Weight rows decoded per parallel task.
const ROWS_PER_TASK: usize = 16;

/// Decodes weight row `row` into `out` (length = row length).
#[inline(always)]
pub(crate) fn decode_row(w: &QuantTensor, row: usize, out: &mut [f32]) {
    let n = out.len();
    let bytes = w.data.bytes();
    match &w.format {
        TensorFormat::Dense(DType::BF16) => {
            let src = &bytes[row * n * 2..(row + 1) * n * 2];
            for (o, c) in out.iter_mut().zip(src.chunks_exact(2)) {
                *o = f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16);
            }
        }
        TensorFormat::Dense(DType::F32) => {
            let src = &bytes[row * n * 4..(row + 1) * n * 4];
            for (o, c) in out.iter_mut().zip(src.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        TensorFormat::Lut4(l)
            if l.nibbles == NibbleOrder::LowFirst
                && l.block_elems == 32
                && l.table == E2M1_VALUES
                && n % 32 == 0 =>
        {
            if let Lut4Scales::Separate {
                format: ScaleFormat::E8M0,
                data,
            } = &l.scales
            {
                let codes = &bytes[row * n / 2..(row + 1) * n / 2];
                let scales = &data.bytes()[row * n / 32..(row + 1) * n / 32];
                for ((chunk, block), &s) in out
                    .chunks_exact_mut(32)
                    .zip(codes.chunks_exact(16))
                    .zip(scales)
                {
                    let scale = gptoss_formats::tensor::e8m0_to_f32(s);
                    for (pair, &b) in chunk.chunks_exact_mut(2).zip(block) {
                        pair[0] = E2M1_VALUES[(b & 0x0F) as usize] * scale;
                        pair[1] = E2M1_VALUES[(b >> 4) as usize] * scale;
                    }
                }
            } else {
                w.dequantize_row(row, out);
            }
        }
        _ => w.dequantize_row(row, out),
    }
}

/// Dot product with 32 independent partial sums, so the loop vectorises and pipelines; `FMA` selects
/// fused multiply-adds (only where the CPU has them: `mul_add` without hardware FMA is a libm call).
#[inline(always)]
fn dot<const FMA: bool>(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 32;
    let mut acc = [0.0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..LANES {
            acc[i] = if FMA {
                x[i].mul_add(y[i], acc[i])
            } else {
                acc[i] + x[i] * y[i]
            };
        }
    }
    let mut s = acc.iter().sum::<f32>();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// One task of [`matmul`]: decodes weight rows `first..` (one per column of `chunk`) and dots each
/// with every input row. Inlined into the feature-specific wrappers below.
#[inline(always)]
fn matmul_task<const FMA: bool>(job: &Job<'_>, first: usize, chunk: &mut [f32]) {
    let n_in = job.w.row_len();
    let mut wrow = vec![0.0f32; n_in];
    for (r, col) in chunk.chunks_mut(job.rows).enumerate() {
        let j = first + r;
        decode_row(job.w, j, &mut wrow);
        let b = job.bias.map_or(0.0, |b| b[j]);
        for (t, o) in col.iter_mut().enumerate() {
            *o = dot::<FMA>(&job.x[t * n_in..(t + 1) * n_in], &wrow) + b;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
/// # Safety
/// The CPU must support AVX2 and FMA (checked by the caller).
unsafe fn matmul_task_avx2(job: &Job<'_>, first: usize, chunk: &mut [f32]) {
    matmul_task::<true>(job, first, chunk)
}

struct Job<'a> {
    x: &'a [f32],
    rows: usize,
    w: &'a QuantTensor,
    bias: Option<&'a [f32]>,
}

/// `out[t, j] = Σ_i x[t, i] · W[j, i] + bias[j]` for `rows` input rows. `x` is `[rows, in]`, `out` `[rows, out]`.
pub(crate) fn matmul(
    x: &[f32],
    rows: usize,
    w: &QuantTensor,
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    let n_out = w.n_rows();
    debug_assert!(x.len() >= rows * w.row_len() && out.len() >= rows * n_out);
    let job = Job { x, rows, w, bias };
    #[cfg(target_arch = "x86_64")]
    let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
    #[cfg(not(target_arch = "x86_64"))]
    let avx2 = false;
    // Column-major result: each task owns a contiguous block of weight rows.
    let mut out_t = vec![0.0f32; n_out * rows];
    out_t
        .par_chunks_mut(ROWS_PER_TASK * rows)
        .enumerate()
        .for_each(|(task, chunk)| {
            let first = task * ROWS_PER_TASK;
            if avx2 {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: AVX2 and FMA were detected on this CPU just above.
                unsafe {
                    matmul_task_avx2(&job, first, chunk)
                }
            } else {
                matmul_task::<false>(&job, first, chunk)
            }
        });
    for t in 0..rows {
        let dst = &mut out[t * n_out..(t + 1) * n_out];
        for (j, d) in dst.iter_mut().enumerate() {
            *d = out_t[j * rows + t];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matmul_matches_naive() {
        let (rows, n_in, n_out) = (3, 40, 37);
        let wv: Vec<f32> = (0..n_in * n_out)
            .map(|i| ((i * 7919) % 97) as f32 / 97.0 - 0.5)
            .collect();
        let x: Vec<f32> = (0..rows * n_in)
            .map(|i| ((i * 31) % 13) as f32 / 13.0 - 0.5)
            .collect();
        let bias: Vec<f32> = (0..n_out).map(|j| j as f32 * 0.01).collect();
        let w = QuantTensor::from_f32(vec![n_out, n_in], &wv);
        let mut out = vec![0.0; rows * n_out];
        matmul(&x, rows, &w, Some(&bias), &mut out);
        for t in 0..rows {
            for j in 0..n_out {
                let want: f32 = (0..n_in)
                    .map(|i| x[t * n_in + i] * wv[j * n_in + i])
                    .sum::<f32>()
                    + bias[j];
                assert!((out[t * n_out + j] - want).abs() < 1e-5);
            }
        }
    }
}
