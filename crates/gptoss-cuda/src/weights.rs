//! The layouts the kernels read (`kernels/common.cu`): dense rows padded to 8 elements; Q8_0 split into int8
//! codes and f16 scales; every 4-bit format (HF MXFP4, bitsandbytes NF4/FP4, ggml Q4_0/IQ4_NL/MXFP4) as
//! low-nibble-first codes with one E8M0 or f32 scale per block, its 16-entry table and its rounding
//! (bitsandbytes rounds each decoded weight). `repack.rs` says how each stored format becomes them (an
//! upload streams that through pinned buffers, `staging.rs`, or has `kernels/repack.cu` do it on the device
//! from the raw ggml blocks, `device_repack.rs`); [`pack`] builds a whole tensor on the host
//! and [`decode`] reads one element back, the host reference of the kernels' decoder.

use std::borrow::Cow;

use gptoss_formats::tensor::e8m0_to_f32;
use gptoss_formats::{DType, QuantTensor};

use crate::error::Result;
use crate::kernels::WeightKind;
pub use crate::repack::{PackPlan, UnitMap};

/// Rounding of each decoded 4-bit weight (mirrors `ROUND_*` in common.cu).
pub const ROUND_NONE: i32 = 0;
pub(crate) const ROUND_BF16: i32 = 1;
pub(crate) const ROUND_F16: i32 = 2;

/// The layout parameters of a packed weight (everything but its bytes).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WeightLayout {
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
}

/// A weight in a kernel layout, on the host (tests and host-side checks; uploads stream a
/// [`PackPlan`] through pinned buffers instead of building this).
pub struct Packed<'a> {
    /// The layout.
    pub layout: WeightLayout,
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
}

/// Repacks `t` (its last dim is the row) into a kernel layout on this thread, after checking its bytes
/// agree with its shape and format. Arrays that are the stored bytes unchanged (HF MXFP4 codes and
/// scales, dense rows already a multiple of 8) are borrowed, not copied.
pub fn pack(t: &QuantTensor) -> Result<Packed<'_>> {
    let plan = PackPlan::new(t)?;
    let data = array(&plan.data)?;
    let scales = match &plan.scales {
        Some(m) => array(m)?,
        None => Cow::Borrowed(&[][..]),
    };
    Ok(Packed {
        layout: plan.layout,
        data,
        scales,
    })
}

/// The whole array of `m`: borrowed when it is the stored bytes unchanged, else built.
fn array<'a>(m: &UnitMap<'a>) -> Result<Cow<'a, [u8]>> {
    if let Some(b) = m.borrowed() {
        return Ok(Cow::Borrowed(b));
    }
    let mut out = vec![0u8; m.len_bytes()];
    m.fill(0, &mut out)?;
    Ok(Cow::Owned(out))
}

/// Host reference of the kernels' decoder (`load8` in common.cu): element `i` of row `row`.
pub fn decode(p: &Packed<'_>, row: usize, i: usize) -> f32 {
    let l = &p.layout;
    let e = row * l.ld + i;
    let rd16 = |b: &[u8], j: usize| u16::from_le_bytes([b[2 * j], b[2 * j + 1]]);
    match l.kind {
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
            let b = e / l.block;
            let s = if l.kind == WeightKind::Lut4E8m0 {
                e8m0_to_f32(p.scales[b])
            } else {
                f32::from_le_bytes([
                    p.scales[4 * b],
                    p.scales[4 * b + 1],
                    p.scales[4 * b + 2],
                    p.scales[4 * b + 3],
                ])
            };
            let v = l.table[code as usize] * s;
            match l.round {
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
                assert_eq!(p.layout.ld % 8, 0);
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
                .layout
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
