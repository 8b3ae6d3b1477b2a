//! The weight formats the fast kernels read in place, and the scalar definition of what they read: each
//! 32-element block as 32 int8 values (in the order the SIMD decode produces them) and one f32 scale,
//! so that `value = int8 × scale` exactly. MXFP4 (both layouts), Q4_0, IQ4_NL and Q8_0 qualify; any
//! 4-bit table whose values times a power of two are small integers does.

use gptoss_formats::tensor::{e8m0_to_f32, Lut4Scales, NibbleOrder, ScaleFormat, Q8_0_BLOCK_BYTES};
use gptoss_formats::{DType, Lut4, QuantTensor, Storage, TensorFormat};
use half::f16;

/// Elements per block of every int8-kernel format.
pub(crate) const BLOCK: usize = 32;

/// Rows of a weight's bytes: one flat array, or two arrays woven row by row (the canonical gate_up of a
/// file that stores gate and up apart: row `2i` is row `i` of the first, `2i + 1` row `i` of the second).
#[derive(Clone, Copy)]
pub(crate) struct RowBytes<'a> {
    parts: [&'a [u8]; 2],
    woven: Weave,
    stride: usize,
}

/// Whether [`RowBytes`] alternates between two arrays.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Weave {
    Flat,
    Woven,
}

impl<'a> RowBytes<'a> {
    /// `n_rows` rows of `stride` bytes from `s`, read in place when `s` is an interleave of two row
    /// arrays; `None` when the sizes disagree.
    fn new(s: &'a Storage, n_rows: usize, stride: usize) -> Option<Self> {
        if let Some((a, b, unit)) = s.interleaved_parts() {
            let half = n_rows / 2 * stride;
            if unit == stride && n_rows.is_multiple_of(2) && a.len() == half && b.len() == half {
                return Some(RowBytes {
                    parts: [a.bytes(), b.bytes()],
                    woven: Weave::Woven,
                    stride,
                });
            }
        }
        let bytes = s.bytes();
        (bytes.len() == n_rows * stride).then_some(RowBytes {
            parts: [bytes, bytes],
            woven: Weave::Flat,
            stride,
        })
    }

    /// The row count given to `new`.
    #[inline(always)]
    pub(crate) fn rows(&self) -> usize {
        let per_part = self.parts[0].len() / self.stride.max(1);
        match self.woven {
            Weave::Flat => per_part,
            Weave::Woven => 2 * per_part,
        }
    }

    /// Row `j` (`j` < the row count given to `new`).
    #[inline(always)]
    pub(crate) fn row(&self, j: usize) -> &'a [u8] {
        let (part, at) = match self.woven {
            Weave::Flat => (self.parts[0], j),
            Weave::Woven => (self.parts[j & 1], j / 2),
        };
        &part[at * self.stride..(at + 1) * self.stride]
    }
}

/// Where a 4-bit block's scale is and how it decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BlockScale {
    /// One E8M0 byte.
    E8M0,
    /// A little-endian IEEE half.
    F16,
}

/// The order of a block's elements in the decoded int8 vector; activations are quantized in the same
/// order so that a dot product never needs the weights reordered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ActLayout {
    /// Element `i` at position `i`.
    Natural,
    /// The 16 even elements, then the 16 odd ones (codes stored low nibble first, HF MXFP4).
    EvensOdds,
}

impl ActLayout {
    /// The element of a block found at position `k` of the decoded vector.
    #[inline(always)]
    pub(crate) fn element(self, k: usize) -> usize {
        match self {
            ActLayout::Natural => k,
            ActLayout::EvensOdds if k < 16 => 2 * k,
            ActLayout::EvensOdds => 2 * (k - 16) + 1,
        }
    }
}

/// A 4-bit table as int8 values and the factor that turns them back into the table's values.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct IntTable {
    /// `table[c] / unit`, every one an integer in [-127, 127].
    pub values: [i8; 16],
    /// A power of two: `table[c] == values[c] × unit` exactly.
    pub unit: f32,
}

impl IntTable {
    /// The int8 form of `table` at the smallest power-of-two unit (down to 2^-7) that makes every value an
    /// integer in [-127, 127]; `None` for tables like NF4 that have none.
    pub(crate) fn of(table: &[f32; 16]) -> Option<Self> {
        (0..8).find_map(|shift| {
            let k = (1u32 << shift) as f32;
            let values = table.map(|v| v * k);
            let exact = values
                .iter()
                .all(|&v| v == v.round() && (-127.0..=127.0).contains(&v));
            exact.then(|| IntTable {
                values: values.map(|v| v as i8),
                unit: 1.0 / k,
            })
        })
    }
}

/// A weight matrix the int8 kernels read; every variant has rows of whole 32-element blocks.
#[derive(Clone, Copy)]
pub(crate) enum IntWeight<'a> {
    /// ggml blocks: a scale, then 16 code bytes whose low nibbles are elements 0..16 and high nibbles
    /// elements 16..32 (MXFP4, Q4_0 and IQ4_NL in GGUF files).
    Ggml4 {
        blocks: RowBytes<'a>,
        table: IntTable,
        scale: BlockScale,
    },
    /// Separate E8M0 scales and codes low nibble first, 16 bytes per block (HF / OpenAI MXFP4).
    Hf4 {
        codes: RowBytes<'a>,
        scales: RowBytes<'a>,
        table: IntTable,
    },
    /// ggml `block_q8_0`: an f16 scale, then 32 int8.
    Q8_0 { blocks: RowBytes<'a> },
}

impl<'a> IntWeight<'a> {
    /// The int8 view of `w`, when its format has one and its rows are whole blocks.
    pub(crate) fn of(w: &'a QuantTensor) -> Option<Self> {
        let (rows, n) = (w.n_rows(), w.row_len());
        if n == 0 || !n.is_multiple_of(BLOCK) {
            return None;
        }
        let nb = n / BLOCK;
        match &w.format {
            TensorFormat::Q8_0 => Some(IntWeight::Q8_0 {
                blocks: RowBytes::new(&w.data, rows, nb * Q8_0_BLOCK_BYTES)?,
            }),
            TensorFormat::Lut4(l) => lut4(w, l, rows, nb),
            TensorFormat::Dense(_) => None,
        }
    }

    /// The order the decoded blocks come in.
    pub(crate) fn layout(&self) -> ActLayout {
        match self {
            IntWeight::Hf4 { .. } => ActLayout::EvensOdds,
            IntWeight::Ggml4 { .. } | IntWeight::Q8_0 { .. } => ActLayout::Natural,
        }
    }

    /// The scalar decode: block `b` of row `j` into `out` (layout order) and its scale.
    pub(crate) fn block(&self, j: usize, b: usize, out: &mut [i8; BLOCK]) -> f32 {
        match self {
            IntWeight::Ggml4 {
                blocks,
                table,
                scale,
            } => {
                let sb = scale_bytes(*scale);
                let at = b * (sb + 16);
                let blk = &blocks.row(j)[at..at + sb + 16];
                for (k, &byte) in blk[sb..].iter().enumerate() {
                    out[k] = table.values[(byte & 0x0F) as usize];
                    out[k + 16] = table.values[(byte >> 4) as usize];
                }
                read_scale(*scale, blk) * table.unit
            }
            IntWeight::Hf4 {
                codes,
                scales,
                table,
            } => {
                let blk = &codes.row(j)[b * 16..(b + 1) * 16];
                for (k, &byte) in blk.iter().enumerate() {
                    out[k] = table.values[(byte & 0x0F) as usize];
                    out[k + 16] = table.values[(byte >> 4) as usize];
                }
                e8m0_to_f32(scales.row(j)[b]) * table.unit
            }
            IntWeight::Q8_0 { blocks } => {
                let blk = &blocks.row(j)[b * Q8_0_BLOCK_BYTES..(b + 1) * Q8_0_BLOCK_BYTES];
                for (o, &byte) in out.iter_mut().zip(&blk[2..]) {
                    *o = byte as i8;
                }
                f16::from_le_bytes([blk[0], blk[1]]).to_f32()
            }
        }
    }
}

/// Bytes of a ggml block's scale.
pub(crate) fn scale_bytes(scale: BlockScale) -> usize {
    match scale {
        BlockScale::E8M0 => 1,
        BlockScale::F16 => 2,
    }
}

/// The scale at the start of a ggml block.
#[inline(always)]
pub(crate) fn read_scale(scale: BlockScale, blk: &[u8]) -> f32 {
    match scale {
        BlockScale::E8M0 => e8m0_to_f32(blk[0]),
        BlockScale::F16 => f16::from_le_bytes([blk[0], blk[1]]).to_f32(),
    }
}

/// The int8 view of a LUT4 tensor with 32-element blocks, an integer table and no extra rounding.
fn lut4<'a>(w: &'a QuantTensor, l: &'a Lut4, rows: usize, nb: usize) -> Option<IntWeight<'a>> {
    if l.block_elems != BLOCK || l.round_to != DType::F32 {
        return None;
    }
    let table = IntTable::of(&l.table)?;
    match (&l.scales, l.nibbles) {
        (Lut4Scales::Inline { format }, NibbleOrder::SplitHalves) => {
            let scale = match format {
                ScaleFormat::E8M0 => BlockScale::E8M0,
                ScaleFormat::F16 => BlockScale::F16,
                ScaleFormat::F32 => return None,
            };
            let stride = nb * (scale_bytes(scale) + 16);
            Some(IntWeight::Ggml4 {
                blocks: RowBytes::new(&w.data, rows, stride)?,
                table,
                scale,
            })
        }
        (
            Lut4Scales::Separate {
                format: ScaleFormat::E8M0,
                data,
            },
            NibbleOrder::LowFirst,
        ) => Some(IntWeight::Hf4 {
            codes: RowBytes::new(&w.data, rows, nb * 16)?,
            scales: RowBytes::new(data, rows, nb)?,
            table,
        }),
        _ => None,
    }
}

/// A bf16 matrix, read by rows.
#[derive(Clone, Copy)]
pub(crate) struct Bf16Weight<'a> {
    /// `2 n` bytes per row.
    pub rows: RowBytes<'a>,
}

impl<'a> Bf16Weight<'a> {
    /// The view of a dense bf16 tensor.
    pub(crate) fn of(w: &'a QuantTensor) -> Option<Self> {
        match w.format {
            TensorFormat::Dense(DType::BF16) => Some(Bf16Weight {
                rows: RowBytes::new(&w.data, w.n_rows(), 2 * w.row_len())?,
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gptoss_formats::tensor::E2M1_VALUES;

    #[test]
    fn integer_tables() {
        let e2m1 = IntTable::of(&E2M1_VALUES).unwrap();
        assert_eq!(e2m1.unit, 0.5);
        assert_eq!(
            e2m1.values,
            [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12]
        );
        let q4_0 = IntTable::of(&std::array::from_fn(|i| i as f32 - 8.0)).unwrap();
        assert_eq!((q4_0.unit, q4_0.values[0]), (1.0, -8));
        let mut nf4 = [0.0f32; 16];
        nf4[1] = 0.0796;
        assert!(IntTable::of(&nf4).is_none());
        let mut big = [0.0f32; 16];
        big[3] = 200.0;
        assert!(IntTable::of(&big).is_none());
    }

    /// Every format's scalar decode against the formats crate's reference decode, element by element.
    #[test]
    fn block_decode_matches_the_reference() {
        for w in super::super::testing::int_weights(6, 96) {
            let iw = IntWeight::of(&w).unwrap();
            let want = w.to_f32_vec();
            let mut codes = [0i8; BLOCK];
            for j in 0..6 {
                for b in 0..3 {
                    let s = iw.block(j, b, &mut codes);
                    for (k, &c) in codes.iter().enumerate() {
                        let e = b * BLOCK + iw.layout().element(k);
                        assert_eq!(c as f32 * s, want[j * 96 + e], "{}", w.format.describe());
                    }
                }
            }
        }
    }
}
