//! Canonical weight tensors: a shape, a storage format and the bytes (zero-copy from the file's mmap
//! where the layout allows). Every reader produces these; every backend consumes them. The reference
//! decode here (`dequantize_row`) is the definition of each format's values that the kernels must match.

use std::borrow::Cow;

use half::{bf16, f16};

use crate::error::{Error, Result};
pub use crate::storage::Storage;

/// A plain floating-point element type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// IEEE binary32.
    F32,
    /// IEEE binary16.
    F16,
    /// bfloat16.
    BF16,
}

impl DType {
    /// Bytes per element.
    pub fn size_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }

    /// Rounds an f32 to this type and back (round-to-nearest-even, as torch's `.to(dtype)`).
    pub fn round(self, x: f32) -> f32 {
        match self {
            DType::F32 => x,
            DType::F16 => f16::from_f32(x).to_f32(),
            DType::BF16 => bf16::from_f32(x).to_f32(),
        }
    }

    /// Reads element `i` from little-endian bytes of this type.
    #[inline]
    pub fn read(self, bytes: &[u8], i: usize) -> f32 {
        match self {
            DType::F32 => f32::from_le_bytes([
                bytes[4 * i],
                bytes[4 * i + 1],
                bytes[4 * i + 2],
                bytes[4 * i + 3],
            ]),
            DType::F16 => {
                f16::from_bits(u16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]])).to_f32()
            }
            DType::BF16 => {
                bf16::from_bits(u16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]])).to_f32()
            }
        }
    }

    /// Short lower-case name (`f32`, `f16`, `bf16`).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
        }
    }
}

/// Where the two 4-bit codes of a byte sit within a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NibbleOrder {
    /// Element `2b` in the low nibble of byte `b`, `2b+1` in the high (HF/OpenAI MXFP4, spec §2a).
    LowFirst,
    /// Element `2b` in the high nibble, `2b+1` in the low (bitsandbytes, spec §2c).
    HighFirst,
    /// ggml: in a block of `n`, element `j < n/2` in the low nibble of byte `j`, `j + n/2` in the high (spec §3.6).
    SplitHalves,
}

/// The encoding of one per-block scale.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScaleFormat {
    /// One byte, `2^(e - 127)` (OCP E8M0).
    E8M0,
    /// IEEE half.
    F16,
    /// IEEE single.
    F32,
}

impl ScaleFormat {
    /// Bytes per scale.
    pub fn size_bytes(self) -> usize {
        match self {
            ScaleFormat::E8M0 => 1,
            ScaleFormat::F16 => 2,
            ScaleFormat::F32 => 4,
        }
    }

    /// Decodes scale `i` from little-endian bytes.
    #[inline]
    pub fn read(self, bytes: &[u8], i: usize) -> f32 {
        match self {
            ScaleFormat::E8M0 => e8m0_to_f32(bytes[i]),
            ScaleFormat::F16 => DType::F16.read(bytes, i),
            ScaleFormat::F32 => DType::F32.read(bytes, i),
        }
    }
}

/// `2^(e - 127)`, exact for every byte including the subnormal results of e = 0 and e = 1 (spec §2a).
#[inline]
pub fn e8m0_to_f32(e: u8) -> f32 {
    if e >= 1 {
        f32::from_bits((e as u32) << 23)
    } else {
        // 2^-127 is subnormal: mantissa bit 22 set, exponent field 0.
        f32::from_bits(1 << 22)
    }
}

/// The FP4 E2M1 value of each 4-bit code (spec §2a).
pub const E2M1_VALUES: [f32; 16] = [
    0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0,
];

/// Where a LUT4 tensor keeps its per-block scales.
#[derive(Clone, Debug)]
pub enum Lut4Scales {
    /// A separate array with one scale per block, blocks in element order (HF MXFP4, bitsandbytes).
    Separate {
        /// Encoding of each scale.
        format: ScaleFormat,
        /// The scales.
        data: Storage,
    },
    /// Each block is its scale followed by its `block_elems / 2` code bytes (ggml Q4_0, IQ4_NL, MXFP4).
    Inline {
        /// Encoding of each scale.
        format: ScaleFormat,
    },
}

/// 4-bit codes looked up in a 16-entry table and multiplied by a per-block scale:
/// `w[i] = round_to(table[code(i)] * scale[i / block_elems])`.
#[derive(Clone, Debug)]
pub struct Lut4 {
    /// Value of each code.
    pub table: [f32; 16],
    /// Elements per scale block (32 for MXFP4 and ggml, 64 for bitsandbytes).
    pub block_elems: usize,
    /// How the two codes of a byte map to elements.
    pub nibbles: NibbleOrder,
    /// Where the scales are.
    pub scales: Lut4Scales,
    /// The dtype a decoded value is rounded to (bitsandbytes rounds to its quant state's dtype).
    pub round_to: DType,
}

impl Lut4 {
    /// Bytes of one block in the code storage (including an inline scale).
    pub fn block_bytes(&self) -> usize {
        let inline = match self.scales {
            Lut4Scales::Inline { format } => format.size_bytes(),
            Lut4Scales::Separate { .. } => 0,
        };
        inline + self.block_elems / 2
    }
}

/// How a tensor's elements are stored.
#[derive(Clone, Debug)]
pub enum TensorFormat {
    /// Plain elements, row-major.
    Dense(DType),
    /// ggml `block_q8_0`: f16 scale + 32 int8 per 32 elements, 34 bytes.
    Q8_0,
    /// A 4-bit lookup format (MXFP4, bitsandbytes NF4/FP4, Q4_0, IQ4_NL).
    Lut4(Lut4),
}

impl TensorFormat {
    /// A short name for tables and errors (`bf16`, `q8_0`, `lut4/32`).
    pub fn describe(&self) -> String {
        match self {
            TensorFormat::Dense(d) => d.name().to_string(),
            TensorFormat::Q8_0 => "q8_0".to_string(),
            TensorFormat::Lut4(l) => {
                let scale = match &l.scales {
                    Lut4Scales::Separate { format, .. } | Lut4Scales::Inline { format } => *format,
                };
                let kind = if l.table == E2M1_VALUES && scale == ScaleFormat::E8M0 {
                    "mxfp4"
                } else {
                    "lut4"
                };
                format!("{kind}/{}", l.block_elems)
            }
        }
    }
}

/// Block size of Q8_0.
pub const Q8_0_BLOCK: usize = 32;
/// Bytes of one Q8_0 block.
pub const Q8_0_BLOCK_BYTES: usize = 34;

/// A weight tensor in its stored format. Elements are row-major over `shape`; the last dim is the
/// contraction (input) dimension of a linear layer.
#[derive(Clone, Debug)]
pub struct QuantTensor {
    /// Logical shape, outermost first (`[out, in]` for a linear weight).
    pub shape: Vec<usize>,
    /// Storage format.
    pub format: TensorFormat,
    /// The element (or code) bytes.
    pub data: Storage,
}

impl QuantTensor {
    /// Number of logical elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Length of the last dimension (a row).
    pub fn row_len(&self) -> usize {
        self.shape.last().copied().unwrap_or(1)
    }

    /// Number of rows (product of all dims but the last).
    pub fn n_rows(&self) -> usize {
        self.numel().checked_div(self.row_len()).unwrap_or(0)
    }

    /// An MXFP4 tensor in the HF/OpenAI layout (spec §2a): codes low nibble first, one E8M0 scale per
    /// 32 elements in a separate array.
    pub fn hf_mxfp4(shape: Vec<usize>, codes: Storage, scales: Storage) -> Self {
        QuantTensor {
            shape,
            format: TensorFormat::Lut4(Lut4 {
                table: E2M1_VALUES,
                block_elems: 32,
                nibbles: NibbleOrder::LowFirst,
                scales: Lut4Scales::Separate {
                    format: ScaleFormat::E8M0,
                    data: scales,
                },
                round_to: DType::F32,
            }),
            data: codes,
        }
    }

    /// A dense tensor from f32 values (tests, dummy weights, small converted tensors).
    pub fn from_f32(shape: Vec<usize>, values: &[f32]) -> Self {
        let mut bytes = Vec::with_capacity(values.len() * 4);
        for v in values {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        QuantTensor {
            shape,
            format: TensorFormat::Dense(DType::F32),
            data: Storage::owned(bytes),
        }
    }

    /// The same tensor with lazy bytes (a transpose, an interleave: see [`Storage`]) built now, for a
    /// consumer that reads each tensor once and drops it; without lazy bytes, `self` unchanged.
    pub fn materialized(&self) -> Cow<'_, QuantTensor> {
        let lazy_scales = match &self.format {
            TensorFormat::Lut4(Lut4 {
                scales: Lut4Scales::Separate { data, .. },
                ..
            }) => data.is_lazy(),
            _ => false,
        };
        if !self.data.is_lazy() && !lazy_scales {
            return Cow::Borrowed(self);
        }
        let mut format = self.format.clone();
        if let TensorFormat::Lut4(Lut4 {
            scales: Lut4Scales::Separate { data, .. },
            ..
        }) = &mut format
        {
            *data = data.materialized().into_owned();
        }
        Cow::Owned(QuantTensor {
            shape: self.shape.clone(),
            format,
            data: self.data.materialized().into_owned(),
        })
    }

    /// Bytes the tensor occupies as stored, scales included.
    pub fn size_bytes(&self) -> usize {
        let extra = match &self.format {
            TensorFormat::Lut4(Lut4 {
                scales: Lut4Scales::Separate { data, .. },
                ..
            }) => data.len(),
            _ => 0,
        };
        self.data.len() + extra
    }

    /// Expected byte length of `data` (and of separate scales) for this shape and format.
    pub fn expected_bytes(&self) -> (usize, usize) {
        let n = self.numel();
        match &self.format {
            TensorFormat::Dense(d) => (n * d.size_bytes(), 0),
            TensorFormat::Q8_0 => (n.div_ceil(Q8_0_BLOCK) * Q8_0_BLOCK_BYTES, 0),
            TensorFormat::Lut4(l) => {
                let blocks = n.div_ceil(l.block_elems);
                match &l.scales {
                    Lut4Scales::Separate { format, .. } => {
                        (n.div_ceil(2), blocks * format.size_bytes())
                    }
                    Lut4Scales::Inline { .. } => (blocks * l.block_bytes(), 0),
                }
            }
        }
    }

    /// Checks that the stored bytes agree with shape and format; `file`/`name` go into the error.
    pub fn validate(&self, file: &str, name: &str) -> Result<()> {
        let (data, scales) = self.expected_bytes();
        if self.data.len() != data {
            return Err(Error::tensor(
                file,
                name,
                format!(
                    "{} {:?} needs {data} bytes, found {}",
                    self.format.describe(),
                    self.shape,
                    self.data.len()
                ),
            ));
        }
        if let TensorFormat::Lut4(Lut4 {
            scales: Lut4Scales::Separate { data: s, .. },
            block_elems,
            ..
        }) = &self.format
        {
            if s.len() != scales {
                return Err(Error::tensor(
                    file,
                    name,
                    format!(
                        "{:?} in blocks of {block_elems} needs {scales} scale bytes, found {}",
                        self.shape,
                        s.len()
                    ),
                ));
            }
        }
        let block = match &self.format {
            TensorFormat::Q8_0 => Q8_0_BLOCK,
            TensorFormat::Lut4(l) if matches!(l.scales, Lut4Scales::Inline { .. }) => l.block_elems,
            _ => 1,
        };
        if !self.row_len().is_multiple_of(block) {
            return Err(Error::tensor(
                file,
                name,
                format!(
                    "row length {} is not a multiple of the {block}-element block",
                    self.row_len()
                ),
            ));
        }
        Ok(())
    }

    /// Decodes `out.len()` elements starting at flat element `start` into f32 (the reference decode).
    /// For block formats stored inline (Q8_0, ggml LUT4) `start` must be a multiple of the block.
    pub fn dequantize_into(&self, start: usize, out: &mut [f32]) {
        let bytes = self.data.bytes();
        match &self.format {
            TensorFormat::Dense(d) => {
                for (i, o) in out.iter_mut().enumerate() {
                    *o = d.read(bytes, start + i);
                }
            }
            TensorFormat::Q8_0 => dequantize_q8_0(bytes, start, out),
            TensorFormat::Lut4(l) => dequantize_lut4(l, bytes, start, out),
        }
    }

    /// Decodes row `row` (the last dim) into `out` (length `row_len`).
    pub fn dequantize_row(&self, row: usize, out: &mut [f32]) {
        self.dequantize_into(row * self.row_len(), out);
    }

    /// Decodes the whole tensor (tests and small tensors only).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.numel()];
        self.dequantize_into(0, &mut out);
        out
    }

    /// Rows `[first, first + count)` as a zero-copy view (for splitting a fused tensor such as qkv or
    /// the experts of a stacked `[E, rows, cols]` tensor). Rows must start on a block boundary.
    pub fn rows(&self, first: usize, count: usize, new_shape: Vec<usize>) -> QuantTensor {
        let row_len = self.row_len();
        let (elem_start, elems) = (first * row_len, count * row_len);
        let (data, format) = match &self.format {
            TensorFormat::Dense(d) => (
                self.data
                    .slice(elem_start * d.size_bytes(), elems * d.size_bytes()),
                self.format.clone(),
            ),
            TensorFormat::Q8_0 => {
                let (b0, nb) = (elem_start / Q8_0_BLOCK, elems.div_ceil(Q8_0_BLOCK));
                (
                    self.data
                        .slice(b0 * Q8_0_BLOCK_BYTES, nb * Q8_0_BLOCK_BYTES),
                    self.format.clone(),
                )
            }
            TensorFormat::Lut4(l) => {
                let (b0, nb) = (elem_start / l.block_elems, elems.div_ceil(l.block_elems));
                match &l.scales {
                    Lut4Scales::Inline { .. } => (
                        self.data.slice(b0 * l.block_bytes(), nb * l.block_bytes()),
                        self.format.clone(),
                    ),
                    Lut4Scales::Separate { format, data } => {
                        let mut l2 = l.clone();
                        l2.scales = Lut4Scales::Separate {
                            format: *format,
                            data: data.slice(b0 * format.size_bytes(), nb * format.size_bytes()),
                        };
                        (
                            self.data.slice(elem_start / 2, elems.div_ceil(2)),
                            TensorFormat::Lut4(l2),
                        )
                    }
                }
            }
        };
        QuantTensor {
            shape: new_shape,
            format,
            data,
        }
    }
}

fn dequantize_q8_0(bytes: &[u8], start: usize, out: &mut [f32]) {
    debug_assert!(start.is_multiple_of(Q8_0_BLOCK));
    for (bi, chunk) in out.chunks_mut(Q8_0_BLOCK).enumerate() {
        let base = (start / Q8_0_BLOCK + bi) * Q8_0_BLOCK_BYTES;
        let d = DType::F16.read(&bytes[base..base + 2], 0);
        for (j, o) in chunk.iter_mut().enumerate() {
            *o = (bytes[base + 2 + j] as i8) as f32 * d;
        }
    }
}

/// Code of element `i` of a LUT4 tensor (flat index).
#[inline]
fn lut4_code(l: &Lut4, bytes: &[u8], i: usize) -> u8 {
    match (&l.scales, l.nibbles) {
        (Lut4Scales::Separate { .. }, NibbleOrder::LowFirst) => {
            let b = bytes[i / 2];
            if i.is_multiple_of(2) {
                b & 0x0F
            } else {
                b >> 4
            }
        }
        (Lut4Scales::Separate { .. }, NibbleOrder::HighFirst) => {
            let b = bytes[i / 2];
            if i.is_multiple_of(2) {
                b >> 4
            } else {
                b & 0x0F
            }
        }
        (scales, order) => {
            let scale_bytes = match scales {
                Lut4Scales::Inline { format } => format.size_bytes(),
                Lut4Scales::Separate { .. } => 0,
            };
            let (block, j) = (i / l.block_elems, i % l.block_elems);
            let codes = block * l.block_bytes() + scale_bytes;
            let half = l.block_elems / 2;
            match order {
                NibbleOrder::SplitHalves if j < half => bytes[codes + j] & 0x0F,
                NibbleOrder::SplitHalves => bytes[codes + j - half] >> 4,
                NibbleOrder::LowFirst if j % 2 == 0 => bytes[codes + j / 2] & 0x0F,
                NibbleOrder::LowFirst => bytes[codes + j / 2] >> 4,
                NibbleOrder::HighFirst if j % 2 == 0 => bytes[codes + j / 2] >> 4,
                NibbleOrder::HighFirst => bytes[codes + j / 2] & 0x0F,
            }
        }
    }
}

/// Scale of block `b` of a LUT4 tensor.
#[inline]
fn lut4_scale(l: &Lut4, bytes: &[u8], b: usize) -> f32 {
    match &l.scales {
        Lut4Scales::Separate { format, data } => format.read(data.bytes(), b),
        Lut4Scales::Inline { format } => {
            let at = b * l.block_bytes();
            format.read(&bytes[at..at + format.size_bytes()], 0)
        }
    }
}

fn dequantize_lut4(l: &Lut4, bytes: &[u8], start: usize, out: &mut [f32]) {
    let mut block = usize::MAX;
    let mut scale = 0.0;
    for (k, o) in out.iter_mut().enumerate() {
        let i = start + k;
        let b = i / l.block_elems;
        if b != block {
            block = b;
            scale = lut4_scale(l, bytes, b);
        }
        *o = l
            .round_to
            .round(l.table[lut4_code(l, bytes, i) as usize] * scale);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e8m0_is_exact_power_of_two() {
        assert_eq!(e8m0_to_f32(127), 1.0);
        assert_eq!(e8m0_to_f32(128), 2.0);
        assert_eq!(e8m0_to_f32(120), 2f32.powi(-7));
        assert_eq!(e8m0_to_f32(1), 2f32.powi(-126));
        assert_eq!(e8m0_to_f32(0), 2f32.powi(-127));
    }

    #[test]
    fn mxfp4_low_nibble_first_separate_scales() {
        // One block of 32: byte b holds elements 2b (low) and 2b+1 (high).
        let mut codes = vec![0u8; 16];
        codes[0] = 0x71; // elem0 = code 1 (+0.5), elem1 = code 7 (+6)
        codes[15] = 0xA2; // elem30 = code 2 (+1), elem31 = code 10 (-1)
        let t = QuantTensor::hf_mxfp4(
            vec![1, 32],
            Storage::owned(codes),
            Storage::owned(vec![128]),
        );
        t.validate("t", "w").unwrap();
        let v = t.to_f32_vec();
        assert_eq!((v[0], v[1], v[30], v[31]), (1.0, 12.0, 2.0, -2.0));
    }

    #[test]
    fn ggml_split_halves_inline_scale() {
        // Q4_0-like: f16 scale 0.5 then 16 bytes; byte j low = elem j, high = elem j+16.
        let mut block = f16::from_f32(0.5).to_le_bytes().to_vec();
        let mut qs = vec![0x88u8; 16];
        qs[3] = 0xF0; // elem 3 = code 0, elem 19 = code 15
        block.extend_from_slice(&qs);
        let mut table = [0.0; 16];
        for (i, t) in table.iter_mut().enumerate() {
            *t = i as f32 - 8.0;
        }
        let t = QuantTensor {
            shape: vec![32],
            format: TensorFormat::Lut4(Lut4 {
                table,
                block_elems: 32,
                nibbles: NibbleOrder::SplitHalves,
                scales: Lut4Scales::Inline {
                    format: ScaleFormat::F16,
                },
                round_to: DType::F32,
            }),
            data: Storage::owned(block),
        };
        t.validate("t", "w").unwrap();
        let v = t.to_f32_vec();
        assert_eq!(v[3], -4.0);
        assert_eq!(v[19], 3.5);
        assert_eq!(v[0], 0.0);
    }

    #[test]
    fn rows_view_of_separate_scales() {
        let codes: Vec<u8> = (0..32)
            .map(|i| (i % 16) as u8 | (((i + 1) % 16) as u8) << 4)
            .collect();
        let t = QuantTensor::hf_mxfp4(
            vec![2, 32],
            Storage::owned(codes),
            Storage::owned(vec![127, 129]),
        );
        let all = t.to_f32_vec();
        let second = t.rows(1, 1, vec![32]).to_f32_vec();
        assert_eq!(&all[32..], &second[..]);
    }

    #[test]
    fn validate_names_the_tensor() {
        let t = QuantTensor {
            shape: vec![4],
            format: TensorFormat::Dense(DType::BF16),
            data: Storage::owned(vec![0; 6]),
        };
        let e = t
            .validate("model.safetensors", "lm_head.weight")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("lm_head.weight") && e.contains("needs 8 bytes, found 6"),
            "{e}"
        );
    }
}
