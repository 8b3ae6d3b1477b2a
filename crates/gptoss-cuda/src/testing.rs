//! Random weights in every stored format the readers produce, for the CPU repack tests and the GPU op
//! harness (the same tensor goes to the CPU backend and to the CUDA backend).

use gptoss_formats::tensor::E2M1_VALUES;
use gptoss_formats::{
    DType, Lut4, Lut4Scales, NibbleOrder, QuantTensor, ScaleFormat, Storage, TensorFormat,
};

/// A small deterministic generator (xorshift64*).
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [-a, a).
    pub fn uniform(&mut self, a: f32) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * a
    }

    /// `n` values uniform in [-a, a).
    pub fn vec(&mut self, n: usize, a: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform(a)).collect()
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| (self.next_u64() >> 56) as u8).collect()
    }
}

/// A stored weight format to generate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TestFormat {
    /// Dense of a dtype.
    Dense(DType),
    /// ggml Q8_0.
    Q8_0,
    /// HF MXFP4: low nibble first, separate E8M0 scales, blocks of 32.
    Mxfp4,
    /// bitsandbytes NF4: high nibble first, f32 scales per 64, decoded values rounded to bf16.
    BnbNf4,
    /// ggml Q4_0: inline f16 scale, split halves, table `i - 8`.
    Q4_0,
    /// ggml IQ4_NL: inline f16 scale, split halves, a non-uniform table.
    Iq4Nl,
    /// ggml MXFP4: inline E8M0 scale, split halves.
    GgmlMxfp4,
}

impl TestFormat {
    /// Every format.
    pub const ALL: [TestFormat; 9] = [
        TestFormat::Dense(DType::F32),
        TestFormat::Dense(DType::BF16),
        TestFormat::Dense(DType::F16),
        TestFormat::Q8_0,
        TestFormat::Mxfp4,
        TestFormat::BnbNf4,
        TestFormat::Q4_0,
        TestFormat::Iq4Nl,
        TestFormat::GgmlMxfp4,
    ];
}

const NF4: [f32; 16] = [
    -1.0,
    -0.696_192_8,
    -0.525_073_05,
    -0.394_917_5,
    -0.284_441_38,
    -0.184_773_43,
    -0.091_050_036,
    0.0,
    0.079_580_3,
    0.160_930_2,
    0.246_112_3,
    0.337_915_24,
    0.440_709_83,
    0.562_617,
    0.722_956_84,
    1.0,
];

const IQ4NL: [f32; 16] = [
    -127.0, -104.0, -83.0, -65.0, -49.0, -35.0, -22.0, -10.0, 1.0, 13.0, 25.0, 38.0, 53.0, 69.0,
    89.0, 113.0,
];

/// A random `[rows, cols]` weight in `format` whose values are about `scale` in size. Block formats need
/// `cols` to be a multiple of 32 (64 for NF4 to stay in the 4-bit layout; other widths fall back to f32).
pub fn random_tensor(
    rng: &mut Rng,
    format: TestFormat,
    rows: usize,
    cols: usize,
    scale: f32,
) -> QuantTensor {
    let n = rows * cols;
    let shape = vec![rows, cols];
    let lut = |table, block_elems, nibbles, scales, round_to| {
        TensorFormat::Lut4(Lut4 {
            table,
            block_elems,
            nibbles,
            scales,
            round_to,
        })
    };
    let f16_scale = |rng: &mut Rng, s: f32| {
        half::f16::from_f32(s * (0.5 + rng.uniform(0.5).abs())).to_le_bytes()
    };
    let (format, data) = match format {
        TestFormat::Dense(d) => {
            let v = rng.vec(n, scale);
            let bytes: Vec<u8> = match d {
                DType::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                DType::BF16 => v
                    .iter()
                    .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
                    .collect(),
                DType::F16 => v
                    .iter()
                    .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
                    .collect(),
            };
            (TensorFormat::Dense(d), bytes)
        }
        TestFormat::Q8_0 => {
            let mut bytes = Vec::with_capacity(n / 32 * 34);
            for _ in 0..n / 32 {
                bytes.extend_from_slice(&f16_scale(rng, scale / 127.0));
                bytes.extend(rng.bytes(32));
            }
            (TensorFormat::Q8_0, bytes)
        }
        TestFormat::Mxfp4 => {
            let e = (scale.log2().round() as i32 + 126).clamp(1, 254) as u8;
            let scales: Vec<u8> = (0..n / 32)
                .map(|_| e + (rng.next_u64() % 3) as u8)
                .collect();
            let sep = Lut4Scales::Separate {
                format: ScaleFormat::E8M0,
                data: Storage::owned(scales),
            };
            (
                lut(E2M1_VALUES, 32, NibbleOrder::LowFirst, sep, DType::F32),
                rng.bytes(n / 2),
            )
        }
        TestFormat::BnbNf4 => {
            let scales: Vec<u8> = (0..n.div_ceil(64))
                .flat_map(|_| (scale * (1.0 + rng.uniform(0.5))).to_le_bytes())
                .collect();
            let sep = Lut4Scales::Separate {
                format: ScaleFormat::F32,
                data: Storage::owned(scales),
            };
            (
                lut(NF4, 64, NibbleOrder::HighFirst, sep, DType::BF16),
                rng.bytes(n.div_ceil(2)),
            )
        }
        TestFormat::Q4_0 | TestFormat::Iq4Nl | TestFormat::GgmlMxfp4 => {
            let (table, fmt, size) = match format {
                TestFormat::Q4_0 => (std::array::from_fn(|i| i as f32 - 8.0), ScaleFormat::F16, 2),
                TestFormat::Iq4Nl => (IQ4NL, ScaleFormat::F16, 2),
                _ => (E2M1_VALUES, ScaleFormat::E8M0, 1),
            };
            let mut bytes = Vec::with_capacity(n / 32 * (16 + size));
            for _ in 0..n / 32 {
                if fmt == ScaleFormat::F16 {
                    bytes.extend_from_slice(&f16_scale(rng, scale / table[0].abs()));
                } else {
                    bytes.push((scale.log2().round() as i32 + 126).clamp(1, 254) as u8);
                }
                bytes.extend(rng.bytes(16));
            }
            (
                lut(
                    table,
                    32,
                    NibbleOrder::SplitHalves,
                    Lut4Scales::Inline { format: fmt },
                    DType::F32,
                ),
                bytes,
            )
        }
    };
    QuantTensor {
        shape,
        format,
        data: Storage::owned(data),
    }
}

/// An MXFP4 tensor as [`random_tensor`] makes it, with its E8M0 scales spread over `spread` + 1 powers of two:
/// from 2^spread below the top block's to the top (the first block has the largest, the last the smallest),
/// for kernels that fold every scale into f16 relative to the largest of a tile (`moe_*_fp4_h64`).
pub fn random_mxfp4_spread(
    rng: &mut Rng,
    rows: usize,
    cols: usize,
    scale: f32,
    spread: u8,
) -> QuantTensor {
    let mut t = random_tensor(rng, TestFormat::Mxfp4, rows, cols, scale);
    let top = (scale.log2().round() as i32 + 128).clamp(spread as i32 + 1, 254) as u8;
    if let TensorFormat::Lut4(Lut4 {
        scales: Lut4Scales::Separate { data, .. },
        ..
    }) = &mut t.format
    {
        let n = data.len();
        let mut v: Vec<u8> = (0..n)
            .map(|_| top - (rng.next_u64() % (spread as u64 + 1)) as u8)
            .collect();
        v[0] = top;
        v[n - 1] = top - spread;
        *data = Storage::owned(v);
    }
    t
}

/// A `[rows, cols]` tensor laid out as `format` whose stored bytes are all random, scales included (NaN,
/// infinite and subnormal f16 scales, every E8M0 byte), for tests of byte-exact repacks. Its values are
/// not meant to be computed with.
pub fn random_bytes_tensor(
    rng: &mut Rng,
    format: TestFormat,
    rows: usize,
    cols: usize,
) -> QuantTensor {
    let t = random_tensor(rng, format, rows, cols, 1.0);
    QuantTensor {
        data: Storage::owned(rng.bytes(t.data.len())),
        ..t
    }
}
