//! `y = x Wᵀ + b` for any stored weight format: each weight row is decoded once to f32 (fast paths
//! for bf16, f32 and MXFP4; the formats crate's reference decode for the rest) and dotted with every
//! input row; for at most 4 input rows (decode) bf16 and MXFP4 rows are decoded in registers and
//! multiplied in place instead (`fused`). Parallel over blocks of weight rows; f32 accumulation.

use gptoss_formats::tensor::{e8m0_to_f32, Lut4Scales, NibbleOrder, ScaleFormat, E2M1_VALUES};
use gptoss_formats::{DType, QuantTensor, TensorFormat};
use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use super::fused::{self, FusedWeight};

/// Weight rows decoded per parallel task.
const ROWS_PER_TASK: usize = 16;

/// Decodes weight row `row` into `out` (length = row length).
/// `SIMD` selects the AVX2 MXFP4 decode; the caller guarantees the CPU has AVX2 when it is set.
#[inline(always)]
pub(crate) fn decode_row<const SIMD: bool>(w: &QuantTensor, row: usize, out: &mut [f32]) {
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
                && n.is_multiple_of(32) =>
        {
            if let Lut4Scales::Separate {
                format: ScaleFormat::E8M0,
                data,
            } = &l.scales
            {
                let codes = &bytes[row * n / 2..(row + 1) * n / 2];
                let scales = &data.bytes()[row * n / 32..(row + 1) * n / 32];
                decode_mxfp4::<SIMD>(codes, scales, out);
            } else {
                w.dequantize_row(row, out);
            }
        }
        _ => w.dequantize_row(row, out),
    }
}

/// Decodes MXFP4 blocks (16 code bytes, low nibble first, one E8M0 scale per 32) to exact f32 values.
#[inline(always)]
fn decode_mxfp4<const SIMD: bool>(codes: &[u8], scales: &[u8], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if SIMD {
        // SAFETY: AVX2 is only requested by callers that detected it on this CPU.
        unsafe { decode_mxfp4_avx2(codes, scales, out) };
        return;
    }
    for ((chunk, block), &s) in out
        .chunks_exact_mut(32)
        .zip(codes.chunks_exact(16))
        .zip(scales)
    {
        let scale = e8m0_to_f32(s);
        for (pair, &b) in chunk.chunks_exact_mut(2).zip(block) {
            pair[0] = E2M1_VALUES[(b & 0x0F) as usize] * scale;
            pair[1] = E2M1_VALUES[(b >> 4) as usize] * scale;
        }
    }
}

/// The SIMD form of [`decode_mxfp4`]: a byte shuffle looks up twice the E2M1 value of 16 codes at once
/// as an int8, which converts to f32 exactly; the halved scale (a power of two) keeps every product exact.
///
/// # Safety
/// The CPU must support AVX2; `codes` holds 16 bytes and `scales` one byte per 32 outputs.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn decode_mxfp4_avx2(codes: &[u8], scales: &[u8], out: &mut [f32]) {
    use std::arch::x86_64::*;
    const TWICE_E2M1: [i8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];
    let table = _mm_loadu_si128(TWICE_E2M1.as_ptr().cast());
    let low_mask = _mm_set1_epi8(0x0F);
    for ((chunk, block), &s) in out
        .chunks_exact_mut(32)
        .zip(codes.chunks_exact(16))
        .zip(scales)
    {
        let half_scale = _mm256_set1_ps(e8m0_to_f32(s) * 0.5);
        let bytes = _mm_loadu_si128(block.as_ptr().cast());
        let lo = _mm_and_si128(bytes, low_mask);
        let hi = _mm_and_si128(_mm_srli_epi16(bytes, 4), low_mask);
        // Element 2i is the low nibble of byte i and 2i+1 the high one.
        let first = _mm_shuffle_epi8(table, _mm_unpacklo_epi8(lo, hi));
        let second = _mm_shuffle_epi8(table, _mm_unpackhi_epi8(lo, hi));
        for (q, v) in [first, second].into_iter().enumerate() {
            let a = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v));
            let b = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(v, 8)));
            let dst = chunk.as_mut_ptr().add(16 * q);
            _mm256_storeu_ps(dst, _mm256_mul_ps(a, half_scale));
            _mm256_storeu_ps(dst.add(8), _mm256_mul_ps(b, half_scale));
        }
    }
}

/// Independent partial sums of [`dot`] (and of the fused kernels, which must match it bit for bit).
pub(super) const LANES: usize = 32;

/// The sum of [`dot`]'s partial sums, in lane order (an in-order sum keeps the accumulators of the
/// dot loop in registers; a tree built with array indexing measured 2× slower prefill).
#[inline(always)]
pub(super) fn reduce_lanes(acc: &[f32; LANES]) -> f32 {
    acc.iter().sum::<f32>()
}

/// Dot product with 32 independent partial sums, so the loop vectorises and pipelines; `SIMD` (AVX2 + FMA detected) selects
/// fused multiply-adds (only where the CPU has them: `mul_add` without hardware FMA is a libm call).
#[inline(always)]
fn dot<const SIMD: bool>(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..LANES {
            acc[i] = if SIMD {
                x[i].mul_add(y[i], acc[i])
            } else {
                acc[i] + x[i] * y[i]
            };
        }
    }
    let mut s = reduce_lanes(&acc);
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// One task of [`matmul`]: decodes weight rows `first..` (one per column of `chunk`) and dots each
/// with every input row. Inlined into the feature-specific wrappers below.
#[inline(always)]
fn matmul_task<const SIMD: bool>(job: &Job<'_>, first: usize, chunk: &mut [f32]) {
    let n_in = job.w.row_len();
    let mut wrow = vec![0.0f32; n_in];
    for (r, col) in chunk.chunks_mut(job.rows).enumerate() {
        let j = first + r;
        decode_row::<SIMD>(job.w, j, &mut wrow);
        let b = job.bias.map_or(0.0, |b| b[j]);
        for (t, o) in col.iter_mut().enumerate() {
            *o = dot::<SIMD>(&job.x[t * n_in..(t + 1) * n_in], &wrow) + b;
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

/// The fused-kernel view of `w` (bf16, or MXFP4 in the standard layout), if it has one.
#[cfg(target_arch = "x86_64")]
fn fused_weight(w: &QuantTensor) -> Option<FusedWeight<'_>> {
    let n = w.row_len();
    match &w.format {
        TensorFormat::Dense(DType::BF16) => Some(FusedWeight::Bf16 {
            bytes: w.data.bytes(),
            n,
        }),
        TensorFormat::Lut4(l)
            if l.nibbles == NibbleOrder::LowFirst
                && l.block_elems == 32
                && l.table == E2M1_VALUES
                && n.is_multiple_of(32) =>
        {
            match &l.scales {
                Lut4Scales::Separate {
                    format: ScaleFormat::E8M0,
                    data,
                } => Some(FusedWeight::Mxfp4 {
                    codes: w.data.bytes(),
                    scales: data.bytes(),
                    n,
                }),
                _ => None,
            }
        }
        _ => None,
    }
}

/// The per-task kernel [`matmul`] picked for this call.
#[derive(Clone, Copy)]
enum Kernel<'a> {
    /// Decode-and-dot in registers (AVX2 + FMA detected, at most [`fused::MAX_ROWS`] input rows).
    #[cfg(target_arch = "x86_64")]
    Fused(FusedWeight<'a>),
    /// Decode each row to f32, then dot it with every input row (AVX2 + FMA detected).
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// The same without target features.
    Portable,
    #[cfg(not(target_arch = "x86_64"))]
    _Unused(std::marker::PhantomData<&'a ()>),
}

fn pick_kernel<'a>(w: &'a QuantTensor, rows: usize) -> Kernel<'a> {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        if (1..=fused::MAX_ROWS).contains(&rows) {
            if let Some(f) = fused_weight(w) {
                return Kernel::Fused(f);
            }
        }
        return Kernel::Avx2;
    }
    let _ = (w, rows);
    Kernel::Portable
}

/// Runs one task of [`matmul`]: weight rows `first..`, results column-major in `chunk`.
fn run_task(kernel: Kernel<'_>, job: &Job<'_>, first: usize, chunk: &mut [f32]) {
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Kernel::Fused(f) => {
            // SAFETY: AVX2 and FMA were detected and 1 ≤ rows ≤ MAX_ROWS (pick_kernel); x holds rows · n.
            unsafe { fused::task_avx2(f, job.x, job.rows, first, chunk) };
            if let Some(b) = job.bias {
                for (col, &bj) in chunk.chunks_mut(job.rows).zip(&b[first..]) {
                    col.iter_mut().for_each(|o| *o += bj);
                }
            }
        }
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 and FMA were detected on this CPU (pick_kernel).
        Kernel::Avx2 => unsafe { matmul_task_avx2(job, first, chunk) },
        _ => matmul_task::<false>(job, first, chunk),
    }
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
    let job = Job {
        x: &x[..rows * w.row_len()],
        rows,
        w,
        bias,
    };
    let kernel = pick_kernel(w, rows);
    let tasks = |buf: &mut [f32]| {
        buf.par_chunks_mut(ROWS_PER_TASK * rows)
            .enumerate()
            .for_each(|(task, chunk)| run_task(kernel, &job, task * ROWS_PER_TASK, chunk));
    };
    if rows == 1 {
        // One input row: column-major is row-major, so the tasks write the result in place.
        tasks(&mut out[..n_out]);
        return;
    }
    // Column-major result: each task owns a contiguous block of weight rows.
    let mut out_t = vec![0.0f32; n_out * rows];
    tasks(&mut out_t);
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
    fn simd_mxfp4_decode_is_exact() {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            let codes: Vec<u8> = (0..64u32)
                .map(|i| (i.wrapping_mul(37) ^ 0x5A) as u8)
                .collect();
            let scales = [1u8, 127, 140, 0];
            let (mut a, mut b) = (vec![0.0; 128], vec![0.0; 128]);
            decode_mxfp4::<false>(&codes, &scales, &mut a);
            decode_mxfp4::<true>(&codes, &scales, &mut b);
            assert_eq!(a, b);
            assert_eq!(a[0], E2M1_VALUES[(codes[0] & 15) as usize] * e8m0_to_f32(1));
        }
    }

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

    /// `x Wᵀ + b` in f64 from the reference decode of `w`.
    fn naive(x: &[f32], rows: usize, w: &QuantTensor, bias: &[f32]) -> Vec<f64> {
        let (n_in, n_out) = (w.row_len(), w.n_rows());
        let wv = w.to_f32_vec();
        let mut out = vec![0.0f64; rows * n_out];
        for t in 0..rows {
            for j in 0..n_out {
                let dot: f64 = (0..n_in)
                    .map(|i| x[t * n_in + i] as f64 * wv[j * n_in + i] as f64)
                    .sum();
                out[t * n_out + j] = dot + bias[j] as f64;
            }
        }
        out
    }

    /// The generic path (5 input rows) against the f64 reference and the fused kernels (1–4 rows) bit for
    /// bit against it, for a bf16 matrix whose row length leaves a scalar tail and an MXFP4 matrix.
    #[test]
    fn fused_rows_match_naive() {
        let (n_out, n_bf16, n_fp4) = (37, 72, 96);
        let bf16_bytes: Vec<u8> = (0..n_out * n_bf16)
            .flat_map(|i| {
                let v = ((i * 7919) % 199) as f32 / 50.0 - 2.0;
                ((v.to_bits() >> 16) as u16).to_le_bytes()
            })
            .collect();
        let bf16 = QuantTensor {
            shape: vec![n_out, n_bf16],
            format: TensorFormat::Dense(DType::BF16),
            data: gptoss_formats::Storage::owned(bf16_bytes),
        };
        let codes: Vec<u8> = (0..n_out * n_fp4 / 2)
            .map(|i| (i * 113 + 7) as u8)
            .collect();
        let scales: Vec<u8> = (0..n_out * n_fp4 / 32)
            .map(|i| 120 + (i % 12) as u8)
            .collect();
        let fp4 = QuantTensor::hf_mxfp4(
            vec![n_out, n_fp4],
            gptoss_formats::Storage::owned(codes),
            gptoss_formats::Storage::owned(scales),
        );
        let bias: Vec<f32> = (0..n_out).map(|j| j as f32 * 0.01 - 0.1).collect();
        for w in [&bf16, &fp4] {
            let n_in = w.row_len();
            let x: Vec<f32> = (0..5 * n_in)
                .map(|i| ((i * 31) % 13) as f32 / 13.0 - 0.5)
                .collect();
            let mut generic = vec![0.0; 5 * n_out];
            matmul(&x, 5, w, Some(&bias), &mut generic);
            let want = naive(&x, 5, w, &bias);
            let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            for (o, r) in generic.iter().zip(&want) {
                assert!(
                    (*o as f64 - r).abs() <= 1e-6 * scale,
                    "{}: {o} vs {r}",
                    w.format.describe()
                );
            }
            for rows in 1..=4 {
                #[cfg(target_arch = "x86_64")]
                if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                    assert!(matches!(pick_kernel(w, rows), Kernel::Fused(_)));
                }
                let mut out = vec![0.0; rows * n_out];
                matmul(&x[..rows * n_in], rows, w, Some(&bias), &mut out);
                // Bit for bit what the generic path (5 rows) computes for the same input rows.
                let same = out
                    .iter()
                    .zip(&generic)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(
                    same,
                    "{} rows {rows}: fused differs from the generic path",
                    w.format.describe()
                );
            }
        }
    }
}
