//! Repacking at upload: every stored weight format becomes one of the layouts the kernels read
//! (`kernels/common.cu`): dense rows padded to 8 elements; Q8_0 split into int8 codes and f16 scales; every
//! 4-bit format (HF MXFP4, bitsandbytes NF4/FP4, ggml Q4_0/IQ4_NL/MXFP4) as low-nibble-first codes with one
//! E8M0 or f32 scale per block, its 16-entry table and its rounding (bitsandbytes rounds each decoded weight).
//! HF MXFP4 is already in that layout and is uploaded straight from the file mapping.

use std::borrow::Cow;

use gptoss_formats::tensor::{e8m0_to_f32, Q8_0_BLOCK, Q8_0_BLOCK_BYTES};
use gptoss_formats::{
    DType, Lut4, Lut4Scales, NibbleOrder, QuantTensor, ScaleFormat, TensorFormat,
};

use crate::error::{CudaError, Result};
use crate::kernels::WeightKind;

/// Rounding of each decoded 4-bit weight (mirrors `ROUND_*` in common.cu).
pub const ROUND_NONE: i32 = 0;
pub(crate) const ROUND_BF16: i32 = 1;
const ROUND_F16: i32 = 2;

/// A weight in a kernel layout, on the host, ready to upload.
pub struct Packed<'a> {
    /// Decoder selector.
    pub kind: WeightKind,
    /// Rows (output features).
    pub rows: usize,
    /// Logical row length.
    pub k: usize,
    /// Padded row length (multiple of 8).
    pub ld: usize,
    /// Elements per scale (4-bit kinds).
    pub block: usize,
    /// `ROUND_*`.
    pub round: i32,
    /// Code values (4-bit kinds).
    pub table: [f32; 16],
    /// Codes or elements.
    pub data: Cow<'a, [u8]>,
    /// Scales (Q8 and 4-bit kinds; empty otherwise).
    pub scales: Cow<'a, [u8]>,
}

impl Packed<'_> {
    /// Device bytes (must equal `gptoss_engine::memory::tensor_bytes`).
    pub fn size_bytes(&self) -> usize {
        self.data.len() + self.scales.len()
    }

    /// Whether two packed weights can share one kernel launch (same layout parameters).
    pub fn same_layout(&self, other: &Packed<'_>) -> bool {
        self.kind == other.kind
            && (self.rows, self.k, self.ld, self.block, self.round)
                == (other.rows, other.k, other.ld, other.block, other.round)
            && self.table == other.table
            && self.data.len() == other.data.len()
            && self.scales.len() == other.scales.len()
    }
}

/// Repacks `t` (its last dim is the row) into a kernel layout, after checking its bytes agree with its
/// shape and format (so every slice below is in range).
pub fn pack(t: &QuantTensor) -> Result<Packed<'_>> {
    t.validate("upload", &format!("{:?} tensor", t.shape))
        .map_err(|e| CudaError::Unsupported(e.to_string()))?;
    Ok(pack_valid(t))
}

fn pack_valid(t: &QuantTensor) -> Packed<'_> {
    let (rows, k) = (t.n_rows(), t.row_len());
    let base = |kind, ld, data: Cow<'static, [u8]>| Packed {
        kind,
        rows,
        k,
        ld,
        block: 32,
        round: ROUND_NONE,
        table: [0.0; 16],
        data,
        scales: Cow::Borrowed(&[]),
    };
    match &t.format {
        TensorFormat::Dense(d) => {
            let kind = match d {
                DType::F32 => WeightKind::F32,
                DType::BF16 => WeightKind::Bf16,
                DType::F16 => WeightKind::F16,
            };
            let size = d.size_bytes();
            let ld = k.div_ceil(8) * 8;
            if ld == k {
                let mut p = base(kind, ld, Cow::Borrowed(&[]));
                p.data = Cow::Borrowed(t.data.bytes());
                return p;
            }
            let mut data = vec![0u8; rows * ld * size];
            for (dst, src) in data
                .chunks_exact_mut(ld * size)
                .zip(t.data.bytes().chunks_exact(k * size))
            {
                dst[..k * size].copy_from_slice(src);
            }
            base(kind, ld, Cow::Owned(data))
        }
        TensorFormat::Q8_0 => {
            let blocks = rows * k / Q8_0_BLOCK;
            let (mut codes, mut scales) =
                (Vec::with_capacity(rows * k), Vec::with_capacity(blocks * 2));
            for b in t.data.bytes().chunks_exact(Q8_0_BLOCK_BYTES).take(blocks) {
                scales.extend_from_slice(&b[..2]);
                codes.extend_from_slice(&b[2..]);
            }
            let mut p = base(WeightKind::Q8, k, Cow::Owned(codes));
            p.scales = Cow::Owned(scales);
            p
        }
        TensorFormat::Lut4(l)
            if l.block_elems.is_multiple_of(8) && k.is_multiple_of(l.block_elems) =>
        {
            pack_lut4(t, l, rows, k)
        }
        TensorFormat::Lut4(_) => {
            // Scale blocks straddle rows: store the decoded values (exact) as f32.
            let ld = k.div_ceil(8) * 8;
            let mut data = vec![0u8; rows * ld * 4];
            let mut row = vec![0.0f32; k];
            for (r, dst) in data.chunks_exact_mut(ld * 4).enumerate() {
                t.dequantize_row(r, &mut row);
                for (d, v) in dst.chunks_exact_mut(4).zip(&row) {
                    d.copy_from_slice(&v.to_le_bytes());
                }
            }
            base(WeightKind::F32, ld, Cow::Owned(data))
        }
    }
}

fn pack_lut4<'a>(t: &'a QuantTensor, l: &'a Lut4, rows: usize, k: usize) -> Packed<'a> {
    let n = rows * k;
    let bytes = t.data.bytes();
    let (codes, scales, scale_format): (Cow<'a, [u8]>, Cow<'a, [u8]>, ScaleFormat) = match &l.scales
    {
        Lut4Scales::Separate { format, data } => {
            let codes = match l.nibbles {
                NibbleOrder::LowFirst => Cow::Borrowed(&bytes[..n / 2]),
                NibbleOrder::HighFirst => {
                    Cow::Owned(bytes[..n / 2].iter().map(|b| b.rotate_left(4)).collect())
                }
                NibbleOrder::SplitHalves => Cow::Owned(regroup(bytes, l, n, 0)),
            };
            (codes, Cow::Borrowed(data.bytes()), *format)
        }
        Lut4Scales::Inline { format } => {
            let size = format.size_bytes();
            let scales: Vec<u8> = bytes
                .chunks_exact(l.block_bytes())
                .flat_map(|b| b[..size].to_vec())
                .collect();
            (
                Cow::Owned(regroup(bytes, l, n, size)),
                Cow::Owned(scales),
                *format,
            )
        }
    };
    let (kind, scales) = match scale_format {
        ScaleFormat::E8M0 => (WeightKind::Lut4E8m0, scales),
        ScaleFormat::F32 => (WeightKind::Lut4F32, scales),
        ScaleFormat::F16 => {
            let f: Vec<u8> = scales
                .chunks_exact(2)
                .flat_map(|c| {
                    half::f16::from_le_bytes([c[0], c[1]])
                        .to_f32()
                        .to_le_bytes()
                })
                .collect();
            (WeightKind::Lut4F32, Cow::Owned(f))
        }
    };
    Packed {
        kind,
        rows,
        k,
        ld: k,
        block: l.block_elems,
        round: match l.round_to {
            DType::F32 => ROUND_NONE,
            DType::BF16 => ROUND_BF16,
            DType::F16 => ROUND_F16,
        },
        table: l.table,
        data: codes,
        scales,
    }
}

/// Codes of every block, each block stored as `skip` scale bytes then its code bytes in `l.nibbles` order,
/// rewritten low-nibble-first with no scale bytes.
fn regroup(bytes: &[u8], l: &Lut4, n: usize, skip: usize) -> Vec<u8> {
    let be = l.block_elems;
    let stride = skip + be / 2;
    let mut out = vec![0u8; n / 2];
    for (b, dst) in out.chunks_exact_mut(be / 2).enumerate() {
        let src = &bytes[b * stride + skip..b * stride + stride];
        let code = |j: usize| -> u8 {
            match l.nibbles {
                NibbleOrder::SplitHalves if j < be / 2 => src[j] & 0x0F,
                NibbleOrder::SplitHalves => src[j - be / 2] >> 4,
                NibbleOrder::LowFirst if j.is_multiple_of(2) => src[j / 2] & 0x0F,
                NibbleOrder::LowFirst => src[j / 2] >> 4,
                NibbleOrder::HighFirst if j.is_multiple_of(2) => src[j / 2] >> 4,
                NibbleOrder::HighFirst => src[j / 2] & 0x0F,
            }
        };
        for (i, d) in dst.iter_mut().enumerate() {
            *d = code(2 * i) | (code(2 * i + 1) << 4);
        }
    }
    out
}

/// Host reference of the kernels' decoder (`load8` in common.cu): element `i` of row `row`.
pub fn decode(p: &Packed<'_>, row: usize, i: usize) -> f32 {
    let e = row * p.ld + i;
    let rd16 = |b: &[u8], j: usize| u16::from_le_bytes([b[2 * j], b[2 * j + 1]]);
    match p.kind {
        WeightKind::F32 => f32::from_le_bytes([
            p.data[4 * e],
            p.data[4 * e + 1],
            p.data[4 * e + 2],
            p.data[4 * e + 3],
        ]),
        WeightKind::Bf16 => half::bf16::from_bits(rd16(&p.data, e)).to_f32(),
        WeightKind::F16 => half::f16::from_bits(rd16(&p.data, e)).to_f32(),
        WeightKind::Q8 => {
            (p.data[e] as i8) as f32 * half::f16::from_bits(rd16(&p.scales, e / 32)).to_f32()
        }
        WeightKind::Lut4E8m0 | WeightKind::Lut4F32 => {
            let code = (p.data[e / 2] >> (4 * (e % 2))) & 0x0F;
            let b = e / p.block;
            let s = if p.kind == WeightKind::Lut4E8m0 {
                e8m0_to_f32(p.scales[b])
            } else {
                f32::from_le_bytes([
                    p.scales[4 * b],
                    p.scales[4 * b + 1],
                    p.scales[4 * b + 2],
                    p.scales[4 * b + 3],
                ])
            };
            let v = p.table[code as usize] * s;
            match p.round {
                ROUND_BF16 => DType::BF16.round(v),
                ROUND_F16 => DType::F16.round(v),
                _ => v,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{random_tensor, Rng, TestFormat};

    #[test]
    fn repack_decodes_to_the_reference_values_in_every_format() {
        let mut rng = Rng(3);
        for format in TestFormat::ALL {
            for (rows, cols) in [(3, 64), (5, 96), (2, 45)] {
                if cols % 32 != 0 && !matches!(format, TestFormat::Dense(_)) {
                    continue;
                }
                let t = random_tensor(&mut rng, format, rows, cols, 0.3);
                let want = t.to_f32_vec();
                let p = pack(&t).unwrap();
                assert_eq!(p.ld % 8, 0);
                assert_eq!(
                    p.size_bytes() as u64,
                    gptoss_engine::memory::tensor_bytes(&t),
                    "{format:?} {rows}x{cols}"
                );
                for r in 0..rows {
                    for i in 0..cols {
                        let got = decode(&p, r, i);
                        assert_eq!(
                            got.to_bits(),
                            want[r * cols + i].to_bits(),
                            "{format:?} {rows}x{cols} [{r}, {i}]"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn kinds_chosen_per_format() {
        let mut rng = Rng(4);
        let kind = |f, cols| {
            pack(&random_tensor(&mut Rng(5), f, 2, cols, 1.0))
                .unwrap()
                .kind
        };
        assert_eq!(kind(TestFormat::Mxfp4, 64), WeightKind::Lut4E8m0);
        assert_eq!(kind(TestFormat::GgmlMxfp4, 64), WeightKind::Lut4E8m0);
        assert_eq!(kind(TestFormat::Q4_0, 64), WeightKind::Lut4F32);
        assert_eq!(kind(TestFormat::BnbNf4, 64), WeightKind::Lut4F32);
        // NF4 blocks of 64 straddle rows of 96: stored decoded.
        assert_eq!(kind(TestFormat::BnbNf4, 96), WeightKind::F32);
        assert_eq!(kind(TestFormat::Q8_0, 64), WeightKind::Q8);
        // HF MXFP4 is uploaded straight from the mapping, with no copy.
        let t = random_tensor(&mut rng, TestFormat::Mxfp4, 4, 64, 1.0);
        assert!(matches!(pack(&t).unwrap().data, Cow::Borrowed(_)));
    }
}
