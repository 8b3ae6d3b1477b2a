//! Encoding canonical tensor rows into ggml types for the GGUF writer: byte copies where the stored
//! format already is the target type, the MXFP4 repack from HF's layout into `block_mxfp4`
//! (spec §3.4), and f32 → F32/F16/BF16/Q8_0 exactly as ggml's reference quantizers do.

use half::{bf16, f16};

use crate::error::{Error, Result};
use crate::tensor::{DType, Lut4, Lut4Scales, QuantTensor, TensorFormat, Q8_0_BLOCK};

use super::ggml_types::GgmlType;
use super::tensors::native_format;

use crate::quant::mxfp4;
pub use crate::quant::mxfp4::is_mxfp4;

/// ggml's `quantize_row_q8_0_ref`: per 32 values `d = amax / 127`, codes `roundf(x / d)` (computed as
/// `x * (1/d)`, half away from zero), `d` stored as f16. `x.len()` must be a multiple of 32.
pub fn quantize_q8_0(x: &[f32], out: &mut Vec<u8>) {
    for block in x.chunks_exact(Q8_0_BLOCK) {
        let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        out.extend(block.iter().map(|&v| ((v * id).round() as i8) as u8));
    }
}

/// Appends `x` encoded as a plain float type.
fn encode_dense(x: &[f32], dtype: DType, out: &mut Vec<u8>) {
    for &v in x {
        match dtype {
            DType::F32 => out.extend_from_slice(&v.to_le_bytes()),
            DType::F16 => out.extend_from_slice(&f16::from_f32(v).to_le_bytes()),
            DType::BF16 => out.extend_from_slice(&bf16::from_f32(v).to_le_bytes()),
        }
    }
}

/// True when `format` stores elements exactly as ggml type `ty` does (so rows can be copied).
fn stored_as(format: &TensorFormat, ty: GgmlType) -> bool {
    match (format, native_format(ty)) {
        (TensorFormat::Dense(a), Some(TensorFormat::Dense(b))) => *a == b,
        (TensorFormat::Q8_0, Some(TensorFormat::Q8_0)) => true,
        (TensorFormat::Lut4(a), Some(TensorFormat::Lut4(b))) => {
            let inline = |l: &Lut4| match l.scales {
                Lut4Scales::Inline { format } => Some(format),
                Lut4Scales::Separate { .. } => None,
            };
            a.table == b.table
                && a.block_elems == b.block_elems
                && a.nibbles == b.nibbles
                && inline(a).is_some()
                && inline(a) == inline(&b)
                && a.round_to == DType::F32
        }
        _ => false,
    }
}

/// Encodes rows of canonical tensors into ggml rows, reusing scratch space between calls.
#[derive(Default)]
pub struct RowEncoder {
    scratch: Vec<f32>,
}

impl RowEncoder {
    /// Appends row `row` of `t` encoded as `ty`; `name` names the tensor in errors.
    pub fn encode_row(
        &mut self,
        t: &QuantTensor,
        row: usize,
        ty: GgmlType,
        name: &str,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        let row_len = t.row_len();
        if row >= t.n_rows() || ty.row_bytes(row_len).is_none() {
            let msg = format!("cannot write row {row} of {:?} as {}", t.shape, ty.name());
            return Err(Error::tensor("<gguf writer>", name, msg));
        }
        if ty == GgmlType::MXFP4 {
            return mxfp4_row(t, row, name, out);
        }
        if stored_as(&t.format, ty) {
            let bytes = t.data.bytes();
            let per = bytes.len() / t.n_rows().max(1);
            let src = bytes
                .get(row * per..(row + 1) * per)
                .ok_or_else(|| short(name))?;
            out.extend_from_slice(src);
            return Ok(());
        }
        self.scratch.resize(row_len, 0.0);
        t.dequantize_row(row, &mut self.scratch);
        match ty {
            GgmlType::F32 => encode_dense(&self.scratch, DType::F32, out),
            GgmlType::F16 => encode_dense(&self.scratch, DType::F16, out),
            GgmlType::BF16 => encode_dense(&self.scratch, DType::BF16, out),
            GgmlType::Q8_0 => quantize_q8_0(&self.scratch, out),
            other => {
                let msg = format!("the GGUF writer does not encode {}", other.name());
                return Err(Error::tensor("<gguf writer>", name, msg));
            }
        }
        Ok(())
    }
}

fn short(name: &str) -> Error {
    Error::tensor(
        "<gguf writer>",
        name,
        "stored bytes are shorter than its shape needs",
    )
}

/// Row `row` of a tensor as ggml `block_mxfp4`s. MXFP4 sources are repacked byte-for-byte:
/// `[e][qs0..qs15]` per 32 elements with `qs[j] = code(j) | code(j + 16) << 4` and `e` the E8M0 byte
/// unchanged (spec §3.4); other sources are quantized as llama.cpp's reference quantizer does.
fn mxfp4_row(t: &QuantTensor, row: usize, name: &str, out: &mut Vec<u8>) -> Result<()> {
    let blocks_per_row = t.row_len() / mxfp4::BLOCK;
    if !is_mxfp4(t) {
        let mut x = vec![0f32; t.row_len()];
        t.dequantize_row(row, &mut x);
        mxfp4::quantize_row_ggml(&x, out);
        return Ok(());
    }
    for g in 0..blocks_per_row {
        let block = mxfp4::read_block(t, row * blocks_per_row + g).ok_or_else(|| short(name))?;
        block.push_ggml(out);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::{NibbleOrder, ScaleFormat, Storage, E2M1_VALUES};

    #[test]
    fn q8_0_rounds_half_away_from_zero_like_ggml() {
        // amax 127 -> d = 1, so codes are roundf(x).
        let mut x = vec![0f32; 32];
        x[0] = 127.0;
        x[1] = 2.5;
        x[2] = -2.5;
        x[3] = 0.49999997;
        let mut out = Vec::new();
        quantize_q8_0(&x, &mut out);
        assert_eq!(f16::from_le_bytes([out[0], out[1]]).to_f32(), 1.0);
        assert_eq!(&out[2..6], &[127u8, 3, (-3i8) as u8, 0]);
        let mut zero = Vec::new();
        quantize_q8_0(&[0.0; 32], &mut zero);
        assert!(zero.iter().all(|&b| b == 0));
    }

    #[test]
    fn mxfp4_repack_from_hf_low_first() {
        // HF byte b: low nibble = elem 2b, high = elem 2b+1. Codes: elem k = k % 16.
        let hf: Vec<u8> = (0..16)
            .map(|b| ((2 * b) % 16) as u8 | ((((2 * b + 1) % 16) as u8) << 4))
            .collect();
        let t = QuantTensor {
            shape: vec![1, 32],
            format: TensorFormat::Lut4(Lut4 {
                table: E2M1_VALUES,
                block_elems: 32,
                nibbles: NibbleOrder::LowFirst,
                scales: Lut4Scales::Separate {
                    format: ScaleFormat::E8M0,
                    data: Storage::owned(vec![130]),
                },
                round_to: DType::BF16,
            }),
            data: Storage::owned(hf),
        };
        let mut out = Vec::new();
        RowEncoder::default()
            .encode_row(&t, 0, GgmlType::MXFP4, "w", &mut out)
            .unwrap();
        assert_eq!(out[0], 130);
        // ggml qs[j] = elem j | elem (j+16) << 4 = (j % 16) | (j % 16) << 4.
        assert!(
            (0..16).all(|j| out[1 + j] == (j as u8) | ((j as u8) << 4)),
            "{out:?}"
        );
    }
}
