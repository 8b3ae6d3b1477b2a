//! The serial packer that `repack.rs` replaced (commit 4ddaadf), kept for tests only: the streaming
//! repack must produce exactly its bytes, so the kernels see the layouts they always read.

use gptoss_formats::tensor::{Q8_0_BLOCK, Q8_0_BLOCK_BYTES};
use gptoss_formats::{Lut4, Lut4Scales, NibbleOrder, QuantTensor, ScaleFormat, TensorFormat};

/// `(data, scales)` of `t` as the previous `pack` built them.
pub fn pack_bytes(t: &QuantTensor) -> (Vec<u8>, Vec<u8>) {
    let (rows, k) = (t.n_rows(), t.row_len());
    let bytes = t.data.bytes();
    match &t.format {
        TensorFormat::Dense(d) => {
            let size = d.size_bytes();
            let ld = k.div_ceil(8) * 8;
            let mut data = vec![0u8; rows * ld * size];
            for (dst, src) in data
                .chunks_exact_mut(ld * size)
                .zip(bytes.chunks_exact(k * size))
            {
                dst[..k * size].copy_from_slice(src);
            }
            (data, Vec::new())
        }
        TensorFormat::Q8_0 => {
            let blocks = rows * k / Q8_0_BLOCK;
            let (mut codes, mut scales) = (Vec::new(), Vec::new());
            for b in bytes.chunks_exact(Q8_0_BLOCK_BYTES).take(blocks) {
                scales.extend_from_slice(&b[..2]);
                codes.extend_from_slice(&b[2..]);
            }
            (codes, scales)
        }
        TensorFormat::Lut4(l)
            if l.block_elems.is_multiple_of(8) && k.is_multiple_of(l.block_elems) =>
        {
            pack_lut4(bytes, l, rows * k)
        }
        TensorFormat::Lut4(_) => {
            let ld = k.div_ceil(8) * 8;
            let mut data = vec![0u8; rows * ld * 4];
            let mut row = vec![0.0f32; k];
            for (r, dst) in data.chunks_exact_mut(ld * 4).enumerate() {
                t.dequantize_row(r, &mut row);
                for (d, v) in dst.chunks_exact_mut(4).zip(&row) {
                    d.copy_from_slice(&v.to_le_bytes());
                }
            }
            (data, Vec::new())
        }
    }
}

fn pack_lut4(bytes: &[u8], l: &Lut4, n: usize) -> (Vec<u8>, Vec<u8>) {
    let (codes, scales, format) = match &l.scales {
        Lut4Scales::Separate { format, data } => {
            let codes = match l.nibbles {
                NibbleOrder::LowFirst => bytes[..n / 2].to_vec(),
                NibbleOrder::HighFirst => bytes[..n / 2].iter().map(|b| b.rotate_left(4)).collect(),
                NibbleOrder::SplitHalves => regroup(bytes, l, n, 0),
            };
            (codes, data.bytes().to_vec(), *format)
        }
        Lut4Scales::Inline { format } => {
            let size = format.size_bytes();
            let scales: Vec<u8> = bytes
                .chunks_exact(l.block_bytes())
                .flat_map(|b| b[..size].to_vec())
                .collect();
            (regroup(bytes, l, n, size), scales, *format)
        }
    };
    let scales = match format {
        ScaleFormat::E8M0 | ScaleFormat::F32 => scales,
        ScaleFormat::F16 => scales
            .chunks_exact(2)
            .flat_map(|c| {
                half::f16::from_le_bytes([c[0], c[1]])
                    .to_f32()
                    .to_le_bytes()
            })
            .collect(),
    };
    (codes, scales)
}

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
