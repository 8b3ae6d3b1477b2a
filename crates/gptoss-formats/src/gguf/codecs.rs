//! Reference decode of every ggml block type gptoss reads (spec §3.6), written to give the same f32
//! values as ggml's `dequantize_row_*` and the `gguf` package's `dequantize` (same operation order:
//! products first, then the offset, each rounded to f32; no fused multiply-add).

use half::{bf16, f16};

use super::ggml_types::GgmlType;

/// IQ4_NL's non-linear code book (ggml `kvalues_iq4nl`).
pub const IQ4NL_VALUES: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// MXFP4 codes doubled, as ggml stores them (`kvalues_mxfp4`); paired with a halved E8M0 scale.
pub const MXFP4_DOUBLED: [i8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];

/// Decodes whole blocks of type `ty` from `bytes` into `out`. `bytes` holds `out.len() / block_elems`
/// blocks; both lengths are the caller's to check ([`GgmlType::row_bytes`]). Extra bytes or a partial
/// trailing block are ignored.
pub fn dequantize(ty: GgmlType, bytes: &[u8], out: &mut [f32]) {
    let blocks = bytes
        .chunks_exact(ty.block_bytes())
        .zip(out.chunks_exact_mut(ty.block_elems()));
    for (b, y) in blocks {
        match ty {
            GgmlType::F32 => y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            GgmlType::F16 => y[0] = half_at(b, 0),
            GgmlType::BF16 => y[0] = bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32(),
            GgmlType::Q4_0 => q4_0(b, y),
            GgmlType::Q4_1 => q4_1(b, y),
            GgmlType::Q5_0 => q5_0(b, y),
            GgmlType::Q5_1 => q5_1(b, y),
            GgmlType::Q8_0 => q8_0(b, y),
            GgmlType::IQ4NL => iq4_nl(b, y),
            GgmlType::MXFP4 => mxfp4(b, y),
            GgmlType::Q2K => q2_k(b, y),
            GgmlType::Q3K => q3_k(b, y),
            GgmlType::Q4K => q4_k(b, y),
            GgmlType::Q5K => q5_k(b, y),
            GgmlType::Q6K => q6_k(b, y),
            GgmlType::IQ4XS => iq4_xs(b, y),
        }
    }
}

/// The f16 at byte `at`.
#[inline]
fn half_at(b: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

/// The 4-bit code of element `j` of a 32-block whose 16 code bytes are `qs` (split halves).
#[inline]
fn nibble(qs: &[u8], j: usize) -> u8 {
    if j < 16 {
        qs[j] & 0x0F
    } else {
        qs[j - 16] >> 4
    }
}

fn q4_0(b: &[u8], y: &mut [f32]) {
    let d = half_at(b, 0);
    for (j, o) in y.iter_mut().enumerate() {
        *o = d * (nibble(&b[2..18], j) as i32 - 8) as f32;
    }
}

fn q4_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (half_at(b, 0), half_at(b, 2));
    for (j, o) in y.iter_mut().enumerate() {
        *o = d * nibble(&b[4..20], j) as f32 + m;
    }
}

/// 5-bit code of element `j`: the nibble plus bit `j` of the little-endian `qh` as bit 4.
#[inline]
fn five_bit(qh: &[u8], qs: &[u8], j: usize) -> u8 {
    let h = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
    nibble(qs, j) | ((((h >> j) & 1) as u8) << 4)
}

fn q5_0(b: &[u8], y: &mut [f32]) {
    let d = half_at(b, 0);
    for (j, o) in y.iter_mut().enumerate() {
        *o = d * (five_bit(&b[2..6], &b[6..22], j) as i32 - 16) as f32;
    }
}

/// Re-packs one Q5_0 block (22 bytes) as the Q8_0 block (34 bytes) with the same values: the same
/// f16 scale, and the int8 code `q5 - 16`. Exact, since both decode as `d * code` in f32.
pub fn q5_0_block_to_q8_0(b: &[u8], out: &mut [u8]) {
    out[0] = b[0];
    out[1] = b[1];
    for j in 0..32 {
        out[2 + j] = ((five_bit(&b[2..6], &b[6..22], j) as i32 - 16) as i8) as u8;
    }
}

fn q5_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (half_at(b, 0), half_at(b, 2));
    for (j, o) in y.iter_mut().enumerate() {
        *o = d * five_bit(&b[4..8], &b[8..24], j) as f32 + m;
    }
}

fn q8_0(b: &[u8], y: &mut [f32]) {
    let d = half_at(b, 0);
    for (j, o) in y.iter_mut().enumerate() {
        *o = (b[2 + j] as i8) as f32 * d;
    }
}

fn iq4_nl(b: &[u8], y: &mut [f32]) {
    let d = half_at(b, 0);
    for (j, o) in y.iter_mut().enumerate() {
        *o = d * IQ4NL_VALUES[nibble(&b[2..18], j) as usize] as f32;
    }
}

/// ggml's `ggml_e8m0_to_fp32_half`: `2^(e - 128)` (subnormal for e < 2).
#[inline]
pub fn e8m0_to_f32_half(e: u8) -> f32 {
    if e < 2 {
        f32::from_bits(0x0020_0000 << e)
    } else {
        f32::from_bits(((e as u32) - 1) << 23)
    }
}

fn mxfp4(b: &[u8], y: &mut [f32]) {
    let d = e8m0_to_f32_half(b[0]);
    for (j, o) in y.iter_mut().enumerate() {
        *o = d * MXFP4_DOUBLED[nibble(&b[1..17], j) as usize] as f32;
    }
}

/// Q2_K: `scales[16]` (scale low nibble, min high), `qs[64]`, `d`, `dmin`.
fn q2_k(b: &[u8], y: &mut [f32]) {
    let (scales, qs) = (&b[0..16], &b[16..80]);
    let (d, dmin) = (half_at(b, 80), half_at(b, 82));
    for (g, out) in y.chunks_exact_mut(16).enumerate() {
        // Group g: half n = g / 8, shift step s = (g % 8) / 2, which 16 of the half's 32 bytes.
        let (n, s, second) = (g / 8, (g % 8) / 2, g % 2);
        let dl = d * (scales[g] & 0x0F) as f32;
        let ml = dmin * (scales[g] >> 4) as f32;
        let q = &qs[32 * n + 16 * second..32 * n + 16 * second + 16];
        for (o, &byte) in out.iter_mut().zip(q) {
            *o = dl * ((byte >> (2 * s)) & 3) as f32 - ml;
        }
    }
}

/// Q3_K: `hmask[32]`, `qs[64]`, `scales[12]` (16 six-bit signed scales), `d`.
fn q3_k(b: &[u8], y: &mut [f32]) {
    let (hmask, qs, sc) = (&b[0..32], &b[32..96], &b[96..108]);
    let d = half_at(b, 108);
    for (g, out) in y.chunks_exact_mut(16).enumerate() {
        let lo = if g < 8 { sc[g] & 0x0F } else { sc[g - 8] >> 4 };
        let hi = (sc[8 + g % 4] >> (2 * (g / 4))) & 3;
        let dl = d * ((lo | (hi << 4)) as i32 - 32) as f32;
        // Same traversal as Q2_K; the hmask bit index is the global shift step 0..7.
        let (n, s, second) = (g / 8, (g % 8) / 2, g % 2);
        let bit = 4 * n + s;
        let at = 16 * second;
        for (l, o) in out.iter_mut().enumerate() {
            let q = ((qs[32 * n + at + l] >> (2 * s)) & 3) as i32;
            let high = (hmask[at + l] >> bit) & 1;
            *o = dl * (q - if high == 1 { 0 } else { 4 }) as f32;
        }
    }
}

/// 6-bit scale and min of sub-block `j` (0..8) packed in `s[12]` (ggml `get_scale_min_k4`).
#[inline]
fn scale_min_k4(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// Q4_K: `d`, `dmin`, `scales[12]`, `qs[128]`.
fn q4_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (half_at(b, 0), half_at(b, 2));
    let (s, qs) = (&b[4..16], &b[16..144]);
    for (sub, out) in y.chunks_exact_mut(32).enumerate() {
        let (sc, mn) = scale_min_k4(sub, s);
        let (d1, m1) = (d * sc as f32, dmin * mn as f32);
        let q = &qs[32 * (sub / 2)..32 * (sub / 2) + 32];
        let shift = 4 * (sub % 2);
        for (o, &byte) in out.iter_mut().zip(q) {
            *o = d1 * ((byte >> shift) & 0x0F) as f32 - m1;
        }
    }
}

/// Q5_K: `d`, `dmin`, `scales[12]`, `qh[32]`, `qs[128]`.
fn q5_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (half_at(b, 0), half_at(b, 2));
    let (s, qh, qs) = (&b[4..16], &b[16..48], &b[48..176]);
    for (sub, out) in y.chunks_exact_mut(32).enumerate() {
        let (sc, mn) = scale_min_k4(sub, s);
        let (d1, m1) = (d * sc as f32, dmin * mn as f32);
        let q = &qs[32 * (sub / 2)..32 * (sub / 2) + 32];
        let shift = 4 * (sub % 2);
        for (l, o) in out.iter_mut().enumerate() {
            let code = ((q[l] >> shift) & 0x0F) | (((qh[l] >> sub) & 1) << 4);
            *o = d1 * code as f32 - m1;
        }
    }
}

/// Q6_K: `ql[128]`, `qh[64]`, `scales[16]` (i8), `d`.
fn q6_k(b: &[u8], y: &mut [f32]) {
    let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
    let d = half_at(b, 208);
    for (n, half) in y.chunks_exact_mut(128).enumerate() {
        let (ql, qh, sc) = (
            &ql[64 * n..64 * n + 64],
            &qh[32 * n..32 * n + 32],
            &sc[8 * n..8 * n + 8],
        );
        for l in 0..32 {
            let is = l / 16;
            let h = qh[l];
            let codes = [
                (ql[l] & 0x0F) | ((h & 3) << 4),
                (ql[l + 32] & 0x0F) | (((h >> 2) & 3) << 4),
                (ql[l] >> 4) | (((h >> 4) & 3) << 4),
                (ql[l + 32] >> 4) | (((h >> 6) & 3) << 4),
            ];
            for (k, code) in codes.into_iter().enumerate() {
                let scale = d * (sc[is + 2 * k] as i8) as f32;
                half[l + 32 * k] = scale * (code as i32 - 32) as f32;
            }
        }
    }
}

/// IQ4_XS: `d`, `scales_h` (u16), `scales_l[4]`, `qs[128]`; eight 32-element sub-blocks of IQ4_NL codes.
fn iq4_xs(b: &[u8], y: &mut [f32]) {
    let d = half_at(b, 0);
    let scales_h = u16::from_le_bytes([b[2], b[3]]);
    let (scales_l, qs) = (&b[4..8], &b[8..136]);
    for (sub, out) in y.chunks_exact_mut(32).enumerate() {
        let lo = (scales_l[sub / 2] >> (4 * (sub % 2))) & 0x0F;
        let hi = ((scales_h >> (2 * sub)) & 3) as u8;
        let dl = d * ((lo | (hi << 4)) as i32 - 32) as f32;
        let q = &qs[16 * sub..16 * sub + 16];
        for (j, o) in out.iter_mut().enumerate() {
            *o = dl * IQ4NL_VALUES[nibble(q, j) as usize] as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::{e8m0_to_f32, E2M1_VALUES};

    fn f16b(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_le_bytes()
    }

    #[test]
    fn mxfp4_doubled_code_half_scale_equals_e2m1_times_e8m0() {
        // Spec §3.4: identical for every e that is not the NaN code 255.
        for e in 0u8..255 {
            for (code, &v) in E2M1_VALUES.iter().enumerate() {
                let ggml = e8m0_to_f32_half(e) * MXFP4_DOUBLED[code] as f32;
                assert_eq!(ggml, v * e8m0_to_f32(e), "e={e} code={code}");
            }
        }
    }

    #[test]
    fn q4_1_adds_min_after_product() {
        let mut b = Vec::new();
        b.extend_from_slice(&f16b(0.25));
        b.extend_from_slice(&f16b(-1.0));
        let mut qs = [0u8; 16];
        qs[0] = 0xF3; // elem 0 = 3, elem 16 = 15
        b.extend_from_slice(&qs);
        let mut y = [0.0; 32];
        dequantize(GgmlType::Q4_1, &b, &mut y);
        assert_eq!((y[0], y[16], y[1]), (-0.25, 2.75, -1.0));
    }

    #[test]
    fn q5_0_high_bits_come_from_qh() {
        let mut b = f16b(1.0).to_vec();
        b.extend_from_slice(&(1u32 << 17 | 1).to_le_bytes()); // elems 0 and 17 get bit 4
        let mut qs = [0u8; 16];
        qs[0] = 0x01; // elem 0 low = 1
        qs[1] = 0x20; // elem 17 high nibble = 2
        b.extend_from_slice(&qs);
        let mut y = [0.0; 32];
        dequantize(GgmlType::Q5_0, &b, &mut y);
        assert_eq!(
            (y[0], y[17], y[2]),
            ((17 - 16) as f32, (18 - 16) as f32, -16.0)
        );
    }

    #[test]
    fn q6_k_positions() {
        let mut b = vec![0u8; 210];
        b[0] = 0x21; // ql[0]: elem 0 low nibble 1, elem 64 high nibble 2
        b[128] = 0b11_10_01_00; // qh[0]: elem 0 +0, elem 32 +16, elem 64 +32, elem 96 +48
        for s in 0..16 {
            b[192 + s] = 1;
        }
        b[208..210].copy_from_slice(&f16b(1.0));
        let mut y = [0.0; 256];
        dequantize(GgmlType::Q6K, &b, &mut y);
        assert_eq!(
            (y[0], y[32], y[64], y[96]),
            (1.0 - 32.0, 16.0 - 32.0, 34.0 - 32.0, 48.0 - 32.0)
        );
        assert_eq!(y[128], -32.0);
    }

    #[test]
    fn iq4_xs_sub_block_scales_and_codes() {
        // Not in the committed goldens (the fixtures' gguf package run skips it); checked here by
        // hand and against gguf.quants.dequantize when this was written.
        let mut b = vec![0u8; 136];
        b[0..2].copy_from_slice(&f16b(1.0));
        b[2..4].copy_from_slice(&0b1010u16.to_le_bytes()); // sub 0 and 1: high bits 2 (+32)
        b[4] = 0x21; // sub 0 low bits 1, sub 1 low bits 2
        b[8] = 0xF0; // sub 0: elem 0 code 0, elem 16 code 15
        b[8 + 16] = 0x08; // sub 1: elem 32 code 8, elem 48 code 0
        let mut y = [0.0; 256];
        dequantize(GgmlType::IQ4XS, &b, &mut y);
        assert_eq!((y[0], y[16], y[32], y[48]), (-127.0, 113.0, 2.0, -254.0));
        assert_eq!(y[64], -32.0 * -127.0); // sub 2: scale 0 - 32
    }
}
