//! Test weights in every format the int8 kernels read, flat and woven (gate/up stored apart).

use gptoss_formats::tensor::{Lut4Scales, NibbleOrder, ScaleFormat, E2M1_VALUES};
use gptoss_formats::{DType, Lut4, QuantTensor, Storage, TensorFormat};
use half::f16;

/// IQ4_NL's code values (ggml `kvalues_iq4nl`).
const IQ4NL: [f32; 16] = [
    -127.0, -104.0, -83.0, -65.0, -49.0, -35.0, -22.0, -10.0, 1.0, 13.0, 25.0, 38.0, 53.0, 69.0,
    89.0, 113.0,
];

/// Deterministic bytes.
pub(crate) fn bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 24) as u8
        })
        .collect()
}

fn ggml_lut4(table: [f32; 16], scale: ScaleFormat) -> TensorFormat {
    TensorFormat::Lut4(Lut4 {
        table,
        block_elems: 32,
        nibbles: NibbleOrder::SplitHalves,
        scales: Lut4Scales::Inline { format: scale },
        round_to: DType::F32,
    })
}

/// Blocks of `block_bytes` whose first bytes are a scale: an E8M0 byte near 2^-4, or an f16 near 0.01.
fn ggml_blocks(blocks: usize, block_bytes: usize, scale: ScaleFormat, seed: u64) -> Vec<u8> {
    let mut b = bytes(blocks * block_bytes, seed);
    for (i, blk) in b.chunks_exact_mut(block_bytes).enumerate() {
        match scale {
            ScaleFormat::E8M0 => blk[0] = 119 + (i % 7) as u8,
            _ => blk[..2]
                .copy_from_slice(&f16::from_f32(0.004 + 0.001 * (i % 5) as f32).to_le_bytes()),
        }
    }
    b
}

/// One `[rows, n]` tensor of each int8 format (Q8_0; ggml MXFP4, Q4_0 and IQ4_NL; HF MXFP4), then the
/// same formats as a lazy interleave of two halves (`rows` even).
pub(crate) fn int_weights(rows: usize, n: usize) -> Vec<QuantTensor> {
    let nb = rows * n / 32;
    let make = |seed: u64| -> Vec<QuantTensor> {
        let mut q8 = bytes(nb * 34, seed);
        for blk in q8.chunks_exact_mut(34) {
            blk[..2].copy_from_slice(&f16::from_f32(0.01).to_le_bytes());
        }
        let hf_scales: Vec<u8> = (0..nb).map(|i| 118 + (i % 9) as u8).collect();
        vec![
            QuantTensor {
                shape: vec![rows, n],
                format: TensorFormat::Q8_0,
                data: Storage::owned(q8),
            },
            QuantTensor {
                shape: vec![rows, n],
                format: ggml_lut4(E2M1_VALUES, ScaleFormat::E8M0),
                data: Storage::owned(ggml_blocks(nb, 17, ScaleFormat::E8M0, seed + 1)),
            },
            QuantTensor {
                shape: vec![rows, n],
                format: ggml_lut4(std::array::from_fn(|i| i as f32 - 8.0), ScaleFormat::F16),
                data: Storage::owned(ggml_blocks(nb, 18, ScaleFormat::F16, seed + 2)),
            },
            QuantTensor {
                shape: vec![rows, n],
                format: ggml_lut4(IQ4NL, ScaleFormat::F16),
                data: Storage::owned(ggml_blocks(nb, 18, ScaleFormat::F16, seed + 3)),
            },
            QuantTensor::hf_mxfp4(
                vec![rows, n],
                Storage::owned(bytes(rows * n / 2, seed + 4)),
                Storage::owned(hf_scales),
            ),
        ]
    };
    let mut all = make(1);
    let (a, b) = (make(11), make(21));
    for ((flat, ta), tb) in all.clone().iter().zip(&a).zip(&b) {
        let half = |t: &QuantTensor| t.rows(0, rows / 2, vec![rows / 2, n]);
        let (ha, hb) = (half(ta), half(tb));
        let unit = ha.data.len() / (rows / 2);
        let mut format = flat.format.clone();
        if let (
            TensorFormat::Lut4(Lut4 {
                scales: Lut4Scales::Separate { data, .. },
                ..
            }),
            TensorFormat::Lut4(Lut4 {
                scales: Lut4Scales::Separate { data: sa, .. },
                ..
            }),
            TensorFormat::Lut4(Lut4 {
                scales: Lut4Scales::Separate { data: sb, .. },
                ..
            }),
        ) = (&mut format, &ha.format, &hb.format)
        {
            *data = Storage::interleaved(sa.clone(), sb.clone(), sa.len() / (rows / 2)).unwrap();
        }
        all.push(QuantTensor {
            shape: vec![rows, n],
            format,
            data: Storage::interleaved(ha.data.clone(), hb.data.clone(), unit).unwrap(),
        });
    }
    all
}
