//! The fast kernels against scalar references: SIMD weight decode equal to the scalar decode bit for bit,
//! every instruction set's matmul equal (to f32 summation order) to the f64 sum of the exact integer
//! block dots, and within the quantization error of the exact f32 matmul.

use super::acts::{quantize_row, QuantActs, QuantRow};
use super::portable::block_dot;
use super::testing::{bytes, int_weights};
use super::weights::{Bf16Weight, IntWeight, BLOCK};
use super::*;
use gptoss_formats::{DType, Storage, TensorFormat};

fn isas() -> Vec<CpuIsa> {
    [CpuIsa::Avx512, CpuIsa::Avx2, CpuIsa::Portable]
        .into_iter()
        .filter(|i| i.supported())
        .collect()
}

fn inputs(rows: usize, n: usize, seed: u64) -> Vec<f32> {
    bytes(rows * n, seed)
        .iter()
        .enumerate()
        // A few large channels, as hidden states have.
        .map(|(i, &b)| (b as f32 - 127.5) / 64.0 * if i % 37 == 5 { 8.0 } else { 1.0 })
        .collect()
}

/// `Σ_b d_w d_x (exact int dot)` in f64, from the scalar decode.
fn reference(w: &IntWeight<'_>, acts: &QuantActs, j: usize, t: usize, bias: f32) -> f64 {
    let mut codes = [0i8; BLOCK];
    let x = acts.view(0..acts.rows).row(t);
    (0..acts.n / BLOCK)
        .map(|b| {
            let s = w.block(j, b, &mut codes);
            let blk = b * BLOCK..(b + 1) * BLOCK;
            let dot = block_dot(&codes, &x.codes[blk.clone()], &x.rems[blk]);
            f64::from(dot) * f64::from(s) * f64::from(x.scales[b])
        })
        .sum::<f64>()
        + f64::from(bias)
}

/// `Σ_i |w_i| · unit(i) / 2`: how far rounding the activations can move a dot product (the remainders'
/// clamp at ±127 can add one unit more, which these inputs never reach).
fn rounding_bound(w: &[f32], acts: &QuantActs, t: usize) -> f32 {
    let units = acts.view(0..acts.rows).row(t).scales;
    w.iter()
        .enumerate()
        .map(|(i, v)| v.abs() * units[i / BLOCK] * 0.5)
        .sum()
}

#[test]
#[cfg(target_arch = "x86_64")]
fn simd_decode_is_the_scalar_decode() {
    use super::int8_x86::{decoded, X86Level};
    for w in int_weights(6, 128) {
        let iw = IntWeight::of(&w).unwrap();
        let mut codes = [0i8; BLOCK];
        for (level, supported) in [
            (X86Level::Avx2, CpuIsa::Avx2.supported()),
            (X86Level::Avx512Vnni, CpuIsa::Avx512.supported()),
            (X86Level::Avx512Vbmi, vbmi()),
        ] {
            if !supported {
                continue;
            }
            // The VBMI decode reads four blocks: the whole row.
            let starts: &[usize] = if level == X86Level::Avx512Vbmi {
                &[0]
            } else {
                &[0, 2]
            };
            for j in 0..6 {
                for &b in starts {
                    // SAFETY: the level is supported and blocks b, b + 1 exist (4 per row).
                    let (v, s) = unsafe { decoded(level, &iw, j, b) };
                    let blocks = v.len() / BLOCK;
                    for k in 0..blocks {
                        let want_s = iw.block(j, b + k, &mut codes);
                        assert_eq!(&v[k * BLOCK..(k + 1) * BLOCK], &codes, "{level:?}");
                        let lanes = s.len() / blocks;
                        assert!(s[k * lanes..(k + 1) * lanes].iter().all(|&x| x == want_s));
                    }
                }
            }
        }
    }
}

/// Whether the CPU has the AVX-512 VBMI kernel's features.
#[cfg(target_arch = "x86_64")]
fn vbmi() -> bool {
    CpuIsa::Avx512.supported() && is_x86_feature_detected!("avx512vbmi")
}

/// The VBMI kernel (four blocks per decode) gives the VNNI kernel's results bit for bit: the same sums
/// in the same order. Rows of 3 to 9 blocks cover quads, a pair after them and an odd last block; 1 to
/// 5 activation rows cover every tile width; random and edge blocks.
#[test]
#[cfg(target_arch = "x86_64")]
fn vbmi_kernel_equals_the_vnni_kernel() {
    use super::int8_x86::X86Level;
    if !vbmi() {
        return;
    }
    let cases = LevelCases {
        n_out: 38,
        weight_rows: 38,
        widths: &[96, 128, 192, 224, 288],
        rows: &[1, 2, 3, 5],
        seed_per_row: 7,
    };
    // SAFETY: VBMI (and so VNNI) was detected.
    unsafe { levels_agree_bit_for_bit((X86Level::Avx512Vnni, X86Level::Avx512Vbmi), &cases) };
}

/// A ggml MXFP4 `[rows, n]` weight whose blocks run through every code byte (all 16 × 16 nibble pairs
/// of E2M1 codes, both signs, in each 16 consecutive blocks) and E8M0 scales from the subnormal 2^-127 up.
fn edge_mxfp4(rows: usize, n: usize) -> gptoss_formats::QuantTensor {
    const SCALES: [u8; 8] = [0, 1, 2, 100, 127, 128, 140, 150];
    let blocks = rows * n / BLOCK;
    let mut data = Vec::with_capacity(blocks * 17);
    for i in 0..blocks {
        data.push(SCALES[i % SCALES.len()]);
        data.extend((0..16).map(|k| (16 * i + k) as u8));
    }
    let mut w = int_weights(2, 32).swap_remove(1);
    w.shape = vec![rows, n];
    w.data = Storage::owned(data);
    w
}

/// Activations at the quantizer's edges, a different pattern per block: every element at ±max (`q` =
/// ±127), remainders at the ±127 clamp, an all-zero block, a negative maximum, subnormal-unit blocks.
fn edge_inputs(rows: usize, n: usize) -> Vec<f32> {
    let noise = inputs(rows, n, 77);
    (0..rows * n)
        .map(|i| {
            let (blk, k) = (i / BLOCK, (i % BLOCK) as f32);
            let a = 1000.0;
            match blk % 7 {
                0 => a,
                1 => {
                    if i % 2 == 0 {
                        a
                    } else {
                        -a
                    }
                }
                // (q ± 0.498) / 127 of the max: remainders round to ±127.5, clamped to ±127.
                2 if i % BLOCK == 0 => a,
                2 => a * ((k - 16.0) * 7.0 + if i % 2 == 0 { 0.498 } else { -0.498 }) / 127.0,
                3 => 0.0,
                4 if i % BLOCK == 3 => -a,
                4 => noise[i] * 10.0,
                5 => noise[i] * 1e-36,
                _ => noise[i],
            }
        })
        .collect()
}

/// The quad tile (ggml and HF MXFP4 and Q8_0 on AVX-512 VBMI, four blocks a step) and the AVX2 pair tile
/// (MXFP4, two blocks a step) give the sums of the exact integer block dots (to f32 summation order), on
/// random and edge blocks and activations; rows of 3 to 10 blocks cover no quad, quads with a pair, an
/// odd block or both after them; 1, 2 and 5 activation rows cover tiles of one, two and four activation
/// rows and a lone last one.
#[test]
#[cfg(target_arch = "x86_64")]
fn quad_kernel_matches_the_integer_reference() {
    use super::int8_x86::X86Level;
    let levels = [
        (X86Level::Avx512Quad, vbmi()),
        (X86Level::Avx2Pair, CpuIsa::Avx2.supported()),
    ];
    for level in levels.into_iter().filter_map(|(l, ok)| ok.then_some(l)) {
        quad_levels_match_the_integer_reference(level);
    }
}

/// [`quad_kernel_matches_the_integer_reference`] at one level.
#[cfg(target_arch = "x86_64")]
fn quad_levels_match_the_integer_reference(level: super::int8_x86::X86Level) {
    use super::int8_x86::task;
    let n_out = 38;
    let bias: Vec<f32> = (0..n_out).map(|j| j as f32 * 0.01 - 0.2).collect();
    for n in [96, 128, 224, 288, 320] {
        let mut weights = int_weights(n_out, n);
        weights.push(edge_mxfp4(n_out, n));
        weights.push(edge_q8_0(n_out, n));
        for w in &weights {
            let iw = IntWeight::of(w).unwrap();
            for rows in [1, 2, 5] {
                for x in [
                    inputs(rows, n, rows as u64 + n as u64),
                    edge_inputs(rows, n),
                ] {
                    let mut acts = QuantActs::default();
                    acts.quantize(&x, rows, n, iw.layout());
                    let mut out = vec![f32::NAN; rows * n_out];
                    let sink = OutRows {
                        ptr: out.as_mut_ptr(),
                        n_out,
                    };
                    let view = acts.view(0..rows);
                    // SAFETY: the caller detected the level; `out` holds `[rows, n_out]`.
                    unsafe { task(level, &iw, &view, 0..n_out, Some(&bias), sink) };
                    for t in 0..rows {
                        let want: Vec<f64> = (0..n_out)
                            .map(|j| reference(&iw, &acts, j, t, bias[j]))
                            .collect();
                        let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
                        for (j, want) in want.iter().enumerate() {
                            let got = f64::from(out[t * n_out + j]);
                            assert!(
                                (got - want).abs() <= 1e-6 * scale,
                                "{level:?} {} T={rows} n={n} [{t},{j}]: {got} vs {want}",
                                w.format.describe()
                            );
                        }
                    }
                }
            }
        }
    }
}

/// The quad tile gives each activation row the outputs it gets alone (one activation row, the decode
/// tile), bit for bit, whatever rows share its step: every format, random and edge blocks and inputs,
/// widths with and without a tail after the quads, 2 to 9 activation rows (tiles of 2, 3 and 4 rows and
/// a lone last row), 38 weight rows (partial weight-row groups of both tile heights).
#[test]
#[cfg(target_arch = "x86_64")]
fn quad_tile_rows_do_not_depend_on_their_neighbours() {
    use super::int8_x86::{task, X86Level};
    if !vbmi() {
        return;
    }
    let n_out = 38;
    let bias: Vec<f32> = (0..n_out).map(|j| j as f32 * 0.01 - 0.2).collect();
    let run = |iw: &IntWeight<'_>, acts: &QuantActs, rows: usize| {
        let mut out = vec![f32::NAN; rows * n_out];
        let sink = OutRows {
            ptr: out.as_mut_ptr(),
            n_out,
        };
        let view = acts.view(0..rows);
        // SAFETY: VBMI was detected; `out` holds `[rows, n_out]`.
        unsafe { task(X86Level::Avx512Quad, iw, &view, 0..n_out, Some(&bias), sink) };
        out
    };
    for n in [128, 224, 288] {
        let mut weights = int_weights(n_out, n);
        weights.push(edge_mxfp4(n_out, n));
        weights.push(edge_q8_0(n_out, n));
        for w in &weights {
            let iw = IntWeight::of(w).unwrap();
            for rows in [2, 3, 4, 5, 9] {
                for x in [
                    inputs(rows, n, 7 * rows as u64 + n as u64),
                    edge_inputs(rows, n),
                ] {
                    let mut acts = QuantActs::default();
                    acts.quantize(&x, rows, n, iw.layout());
                    let together = run(&iw, &acts, rows);
                    for t in 0..rows {
                        let mut one = QuantActs::default();
                        one.quantize(&x[t * n..(t + 1) * n], 1, n, iw.layout());
                        let alone = run(&iw, &one, 1);
                        let what = format!("{} T={rows} n={n} row {t}", w.format.describe());
                        assert!(alone.iter().all(|v| v.is_finite()), "{what}");
                        assert_eq!(
                            alone.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                            together[t * n_out..(t + 1) * n_out]
                                .iter()
                                .map(|v| v.to_bits())
                                .collect::<Vec<_>>(),
                            "{what}"
                        );
                    }
                }
            }
        }
    }
}

/// A Q8_0 `[rows, n]` weight whose codes run through every byte (-128 and 127 included) and whose
/// scales are a few f16 values of either sign, subnormal and large ones among them.
fn edge_q8_0(rows: usize, n: usize) -> gptoss_formats::QuantTensor {
    const SCALES: [f32; 6] = [0.01, -0.02, 6.0e-8, 1.0, 300.0, 0.0];
    let blocks = rows * n / BLOCK;
    let mut data = Vec::with_capacity(blocks * 34);
    for i in 0..blocks {
        data.extend(half::f16::from_f32(SCALES[i % SCALES.len()]).to_le_bytes());
        data.extend((0..32).map(|k| (32 * i + k) as u8));
    }
    gptoss_formats::QuantTensor {
        shape: vec![rows, n],
        format: TensorFormat::Q8_0,
        data: Storage::owned(data),
    }
}

/// The AVX2 int16 tile gives the AVX2 tile's results bit for bit, every format, random and edge blocks,
/// odd and even block counts, every tile width.
#[test]
#[cfg(target_arch = "x86_64")]
fn avx2_int16_kernel_equals_the_avx2_kernel() {
    use super::int8_x86::X86Level;
    if !CpuIsa::Avx2.supported() {
        return;
    }
    let cases = LevelCases {
        n_out: 37,
        weight_rows: 38,
        widths: &[96, 128, 160],
        rows: &[1, 2, 5],
        seed_per_row: 3,
    };
    // SAFETY: AVX2 was detected.
    unsafe { levels_agree_bit_for_bit((X86Level::Avx2, X86Level::Avx2Int16), &cases) };
}

/// The shapes two instruction-set levels are compared on: `n_out` outputs of weights with
/// `weight_rows` rows, each width in `widths` (columns), each activation row count in `rows`.
#[cfg(target_arch = "x86_64")]
struct LevelCases {
    n_out: usize,
    weight_rows: usize,
    widths: &'static [usize],
    rows: &'static [usize],
    seed_per_row: u64,
}

/// Runs every integer weight format (and the MXFP4 edge blocks) at both levels on random and edge
/// activations and asserts finite, bit-identical outputs.
///
/// # Safety
/// The CPU must support both levels.
#[cfg(target_arch = "x86_64")]
unsafe fn levels_agree_bit_for_bit(
    (base, new): (super::int8_x86::X86Level, super::int8_x86::X86Level),
    cases: &LevelCases,
) {
    use super::int8_x86::task;
    let n_out = cases.n_out;
    let bias: Vec<f32> = (0..n_out).map(|j| j as f32 * 0.01 - 0.2).collect();
    for &n in cases.widths {
        let mut weights = int_weights(cases.weight_rows, n);
        weights.push(edge_mxfp4(cases.weight_rows, n));
        for w in &weights {
            let iw = IntWeight::of(w).unwrap();
            for &rows in cases.rows {
                for x in [
                    inputs(rows, n, rows as u64 * cases.seed_per_row + n as u64),
                    edge_inputs(rows, n),
                ] {
                    let mut acts = QuantActs::default();
                    acts.quantize(&x, rows, n, iw.layout());
                    let view = acts.view(0..rows);
                    let run = |level| {
                        let mut out = vec![f32::NAN; rows * n_out];
                        let sink = OutRows {
                            ptr: out.as_mut_ptr(),
                            n_out,
                        };
                        // SAFETY: the caller checked the levels; `out` holds `[rows, n_out]`.
                        unsafe { task(level, &iw, &view, 0..n_out, Some(&bias), sink) };
                        out
                    };
                    let (a, b) = (run(base), run(new));
                    let what = format!("{} T={rows} n={n}", w.format.describe());
                    assert!(a.iter().all(|v| v.is_finite()), "{what}");
                    assert_eq!(
                        a.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        b.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        "{what}"
                    );
                }
            }
        }
    }
}

/// Every format, flat and woven, on every instruction set: T = 1..=9 input rows (partial tiles),
/// 37 output rows (a partial 4-row tile and task), 96 and 128 columns (an odd and an even block count).
#[test]
fn int8_matmul_matches_the_integer_reference() {
    for n in [96, 128] {
        for w in int_weights(38, n) {
            let (n_out, iw) = (38, IntWeight::of(&w).unwrap());
            let bias: Vec<f32> = (0..n_out).map(|j| j as f32 * 0.01 - 0.2).collect();
            for rows in [1, 2, 3, 4, 5, 9] {
                let x = inputs(rows, n, rows as u64 + n as u64);
                let mut acts = QuantActs::default();
                acts.quantize(&x, rows, n, iw.layout());
                let mut exact = vec![0.0; rows * n_out];
                crate::cpu::matmul::matmul(&x, rows, &w, Some(&bias), &mut exact);
                for isa in isas() {
                    let mut scratch = Scratch::default();
                    let mut out = vec![f32::NAN; rows * n_out];
                    FastMatmul {
                        isa,
                        scratch: &mut scratch,
                    }
                    .run(&x, rows, &w, Some(&bias), &mut out);
                    let scale = exact.iter().fold(0f32, |m, v| m.max(v.abs()));
                    for t in 0..rows {
                        for j in 0..n_out {
                            let got = out[t * n_out + j];
                            let want = reference(&iw, &acts, j, t, bias[j]);
                            let what =
                                format!("{} {isa:?} T={rows} n={n} [{t},{j}]", w.format.describe());
                            assert!(
                                (f64::from(got) - want).abs() <= 1e-6 * f64::from(scale),
                                "{what}: {got} vs {want}"
                            );
                            // Rounding each activation moves it by at most half its block's step.
                            let bound =
                                rounding_bound(&w.to_f32_vec()[j * n..(j + 1) * n], &acts, t);
                            let off = (got - exact[t * n_out + j]).abs();
                            assert!(
                                off <= bound * 1.001 + 1e-5 * scale,
                                "{what}: {off} vs exact, bound {bound}"
                            );
                        }
                    }
                }
            }
        }
    }
}

/// The same block dots whichever of the two layouts the activations are quantized in, since each
/// matches its weight's element order: the HF MXFP4 codes of a ggml MXFP4 tensor give the same results.
#[test]
fn hf_and_ggml_mxfp4_agree() {
    let (rows, n) = (8, 64);
    let ggml = &int_weights(rows, n)[1];
    // The same values in HF's layout: codes low nibble first, scales apart.
    let raw = ggml.data.bytes();
    let (mut codes, mut scales) = (Vec::new(), Vec::new());
    for blk in raw.chunks_exact(17) {
        scales.push(blk[0]);
        let q = &blk[1..];
        for k in 0..16 {
            let code = |e: usize| if e < 16 { q[e] & 15 } else { q[e - 16] >> 4 };
            codes.push(code(2 * k) | code(2 * k + 1) << 4);
        }
    }
    let hf = gptoss_formats::QuantTensor::hf_mxfp4(
        vec![rows, n],
        Storage::owned(codes),
        Storage::owned(scales),
    );
    assert_eq!(hf.to_f32_vec(), ggml.to_f32_vec());
    let x = inputs(3, n, 5);
    for isa in isas() {
        let mut s = Scratch::default();
        let (mut a, mut b) = (vec![0.0; 3 * rows], vec![0.0; 3 * rows]);
        FastMatmul {
            isa,
            scratch: &mut s,
        }
        .run(&x, 3, ggml, None, &mut a);
        FastMatmul {
            isa,
            scratch: &mut s,
        }
        .run(&x, 3, &hf, None, &mut b);
        for (p, q) in a.iter().zip(&b) {
            assert!(
                (p - q).abs() <= 1e-6 * p.abs().max(1.0),
                "{isa:?}: {p} vs {q}"
            );
        }
    }
}

#[test]
fn bf16_matmul_matches_rounded_reference() {
    let (n_out, n) = (37, 72); // a partial last 32 of each row
    let raw: Vec<u8> = bytes(n_out * n, 3)
        .iter()
        .flat_map(|&b| half::bf16::from_f32((b as f32 - 127.0) / 300.0).to_le_bytes())
        .collect();
    let w = gptoss_formats::QuantTensor {
        shape: vec![n_out, n],
        format: TensorFormat::Dense(DType::BF16),
        data: Storage::owned(raw),
    };
    assert!(Bf16Weight::of(&w).is_some());
    let wf = w.to_f32_vec();
    for rows in [1, 3, 6] {
        let x = inputs(rows, n, 9);
        for isa in isas() {
            let mut s = Scratch::default();
            let mut out = vec![0.0; rows * n_out];
            FastMatmul {
                isa,
                scratch: &mut s,
            }
            .run(&x, rows, &w, None, &mut out);
            let rounded = isa.bf16_dot();
            for t in 0..rows {
                for j in 0..n_out {
                    let want: f64 = (0..n)
                        .map(|i| {
                            let xi = x[t * n + i];
                            let xi = if rounded {
                                let hi = half::bf16::from_f32(xi).to_f32();
                                hi + half::bf16::from_f32(xi - hi).to_f32()
                            } else {
                                xi
                            };
                            f64::from(xi) * f64::from(wf[j * n + i])
                        })
                        .sum();
                    let got = f64::from(out[t * n_out + j]);
                    assert!(
                        (got - want).abs() <= 1e-5 * want.abs().max(1.0),
                        "{isa:?}: {got} vs {want}"
                    );
                }
            }
        }
    }
}

#[test]
fn rows_that_are_not_whole_blocks_take_the_exact_path() {
    let w = gptoss_formats::QuantTensor::from_f32(vec![3, 40], &[0.5; 120]);
    assert!(IntWeight::of(&w).is_none());
    let x = vec![1.0; 80];
    let mut out = vec![0.0; 6];
    FastMatmul {
        isa: CpuIsa::best(),
        scratch: &mut Scratch::default(),
    }
    .run(&x, 2, &w, None, &mut out);
    assert_eq!(out, vec![20.0; 6]);
    let (mut codes, mut rems, mut scales, mut offsets) = ([0i8; 32], [0i8; 32], [0f32; 1], [0; 8]);
    let out = QuantRow {
        codes: &mut codes,
        rems: &mut rems,
        scales: &mut scales,
        offsets: &mut offsets,
    };
    quantize_row(&[1.0; 32], weights::ActLayout::Natural, out);
    assert_eq!((codes, rems), ([127; 32], [0; 32]));
    assert_eq!(offsets, [-128 * 4 * 256 * 127; 8]);
}

/// Segments (the experts of a MoE step) in one call give bit for bit what one call per segment gives,
/// int8 formats in one region and anything else segment by segment; the pieces a call reports as done
/// cover its output once, with the values it wrote.
#[test]
fn segments_equal_separate_calls() {
    let (n_out, n) = (29, 64);
    let all = int_weights(n_out + 1, n);
    let shaped: Vec<_> = all
        .iter()
        .map(|w| w.rows(0, n_out, vec![n_out, n]))
        .collect();
    let dense = gptoss_formats::QuantTensor::from_f32(vec![n_out, n], &inputs(n_out, n, 4));
    let bias: Vec<f32> = (0..n_out).map(|j| j as f32 * 0.1).collect();
    let x = inputs(7, n, 8);
    for group in [
        vec![&shaped[1], &shaped[1], &shaped[6]],
        vec![&shaped[0], &dense, &shaped[4]],
    ] {
        let segs: Vec<Segment<'_>> = [0..2, 2..3, 3..7]
            .into_iter()
            .zip(&group)
            .map(|(rows, w)| Segment {
                rows,
                w,
                bias: Some(&bias),
            })
            .collect();
        for isa in isas() {
            let mut s = Scratch::default();
            let mut together = vec![0.0; 7 * n_out];
            FastMatmul {
                isa,
                scratch: &mut s,
            }
            .run_segments(&x, &segs, &mut together, None);
            // The same call reporting its pieces: every output element in exactly one piece, as written.
            let pieces = std::sync::Mutex::new(Vec::new());
            let record = |t: usize, j0: usize, piece: &[f32]| {
                pieces.lock().unwrap().push((t, j0, piece.to_vec()));
            };
            let mut reported = vec![0.0; 7 * n_out];
            FastMatmul {
                isa,
                scratch: &mut s,
            }
            .run_segments(&x, &segs, &mut reported, Some(&record));
            let mut seen = vec![0u32; 7 * n_out];
            for (t, j0, piece) in pieces.into_inner().unwrap() {
                for (j, v) in (j0..).zip(piece) {
                    seen[t * n_out + j] += 1;
                    assert_eq!(
                        v.to_bits(),
                        together[t * n_out + j].to_bits(),
                        "{isa:?} ({t}, {j})"
                    );
                }
            }
            assert!(seen.iter().all(|&c| c == 1), "{isa:?}: pieces {seen:?}");
            for seg in &segs {
                let (a, b) = (seg.rows.start, seg.rows.end);
                let mut alone = vec![0.0; (b - a) * n_out];
                FastMatmul {
                    isa,
                    scratch: &mut s,
                }
                .run(&x[a * n..b * n], b - a, seg.w, seg.bias, &mut alone);
                assert_eq!(&together[a * n_out..b * n_out], &alone[..], "{isa:?}");
            }
        }
    }
}

/// A segment without int8 tasks (an f32 weight) and enough rows to report its rows in parallel: every
/// element is reported once, with the value written.
#[test]
fn pieces_of_a_long_segment_without_int8_tasks_cover_its_output() {
    let (n_out, n, rows) = (30, 64, 150);
    assert!(rows * n_out >= super::DONE_PARALLEL_MIN);
    let w = gptoss_formats::QuantTensor::from_f32(vec![n_out, n], &inputs(n_out, n, 5));
    let x = inputs(rows, n, 6);
    let segs = [Segment {
        rows: 0..rows,
        w: &w,
        bias: None,
    }];
    let mut s = Scratch::default();
    let mut out = vec![0.0; rows * n_out];
    let seen = std::sync::Mutex::new(vec![(0u32, 0f32); rows * n_out]);
    let record = |t: usize, j0: usize, piece: &[f32]| {
        let mut seen = seen.lock().unwrap();
        for (j, &v) in (j0..).zip(piece) {
            let slot = &mut seen[t * n_out + j];
            *slot = (slot.0 + 1, v);
        }
    };
    FastMatmul {
        isa: isas()[0],
        scratch: &mut s,
    }
    .run_segments(&x, &segs, &mut out, Some(&record));
    for (i, &(count, v)) in seen.into_inner().unwrap().iter().enumerate() {
        assert_eq!((count, v.to_bits()), (1, out[i].to_bits()), "element {i}");
    }
}
