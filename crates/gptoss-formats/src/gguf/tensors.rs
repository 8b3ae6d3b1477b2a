//! One GGUF tensor → a [`QuantTensor`]. Types the backends read natively stay zero-copy windows of
//! the mmap (F32/F16/BF16 dense, Q8_0, and Q4_0/IQ4_NL/MXFP4 as LUT4). Every other type is decoded
//! at load without loss: Q5_0 re-packs exactly into Q8_0, the rest become dense f16 when every value
//! is exactly an f16 and f32 otherwise (requantizing would change the values the file holds).

use crate::error::{Error, Result};
use crate::tensor::{
    DType, Lut4, Lut4Scales, NibbleOrder, QuantTensor, ScaleFormat, Storage, TensorFormat,
    E2M1_VALUES,
};

use super::codecs::{self, IQ4NL_VALUES};
use super::container::{GgufFile, TensorInfo};
use super::ggml_types::{other_type_name, GgmlType};

/// A tensor read from the file, and what was done to it.
#[derive(Debug)]
pub struct LoadedTensor {
    /// The tensor in a format the backends read.
    pub tensor: QuantTensor,
    /// The type the file stores.
    pub stored: GgmlType,
    /// Bytes the tensor occupies in the file.
    pub stored_bytes: usize,
    /// When the stored type was converted, the format it became (`q8_0`, `f16`, `f32`).
    pub converted_to: Option<String>,
}

/// The ggml type of `info`, or an error naming the tensor and the id.
pub fn ggml_type(file: &GgufFile, info: &TensorInfo) -> Result<GgmlType> {
    GgmlType::from_id(info.type_id).ok_or_else(|| {
        let what = match other_type_name(info.type_id) {
            Some(name) => format!(
                "ggml type {name} (id {}) is not supported by gptoss",
                info.type_id
            ),
            None => format!("unknown ggml type id {}", info.type_id),
        };
        Error::tensor(file.path.display().to_string(), &info.name, what)
    })
}

/// The byte window of `info` in the file, checked against the file's length.
pub fn byte_range(file: &GgufFile, info: &TensorInfo, ty: GgmlType) -> Result<(usize, usize)> {
    let fail = |msg: String| Error::tensor(file.path.display().to_string(), &info.name, msg);
    let row_len = info.ne.first().copied().unwrap_or(1) as usize;
    let row_bytes = ty.row_bytes(row_len).ok_or_else(|| {
        fail(format!(
            "row length {row_len} is not a multiple of the {} block of {}",
            ty.block_elems(),
            ty.name()
        ))
    })?;
    let rows: usize = info.ne.iter().skip(1).map(|&n| n as usize).product();
    let len = row_bytes
        .checked_mul(rows)
        .ok_or_else(|| fail("size overflows".into()))?;
    let start = (info.offset as usize).checked_add(file.data_start);
    let end = start.and_then(|s| s.checked_add(len));
    match (start, end) {
        (Some(s), Some(e)) if e <= file.len_bytes() => Ok((s, len)),
        _ => Err(fail(format!(
            "data out of bounds: {} {:?} needs {len} bytes at offset {} of the data section (file byte {}), \
             but the file has {} bytes",
            ty.name(),
            info.shape(),
            info.offset,
            file.data_start as u64 + info.offset,
            file.len_bytes()
        ))),
    }
}

/// Reads one tensor, zero-copy where the type is native, converted otherwise.
pub fn load(file: &GgufFile, info: &TensorInfo) -> Result<LoadedTensor> {
    let ty = ggml_type(file, info)?;
    let (start, len) = byte_range(file, info, ty)?;
    let data = Storage::Mapped {
        map: file.map.clone(),
        start,
        len,
    };
    let shape = info.shape();
    let native = native_format(ty);
    if let Some(format) = native {
        return Ok(LoadedTensor {
            tensor: QuantTensor {
                shape,
                format,
                data,
            },
            stored: ty,
            stored_bytes: len,
            converted_to: None,
        });
    }
    let tensor = convert(ty, shape, data.bytes());
    let converted_to = Some(tensor.format.describe());
    Ok(LoadedTensor {
        tensor,
        stored: ty,
        stored_bytes: len,
        converted_to,
    })
}

/// The canonical format that holds a ggml type's bytes as they are, if there is one.
pub fn native_format(ty: GgmlType) -> Option<TensorFormat> {
    let lut = |table: [f32; 16], scale: ScaleFormat| {
        TensorFormat::Lut4(Lut4 {
            table,
            block_elems: 32,
            nibbles: NibbleOrder::SplitHalves,
            scales: Lut4Scales::Inline { format: scale },
            round_to: DType::F32,
        })
    };
    Some(match ty {
        GgmlType::F32 => TensorFormat::Dense(DType::F32),
        GgmlType::F16 => TensorFormat::Dense(DType::F16),
        GgmlType::BF16 => TensorFormat::Dense(DType::BF16),
        GgmlType::Q8_0 => TensorFormat::Q8_0,
        GgmlType::Q4_0 => lut(std::array::from_fn(|i| i as f32 - 8.0), ScaleFormat::F16),
        GgmlType::IQ4NL => lut(IQ4NL_VALUES.map(f32::from), ScaleFormat::F16),
        // ggml's doubled codes with a halved scale equal E2M1 × 2^(e-127) (spec §3.4).
        GgmlType::MXFP4 => lut(E2M1_VALUES, ScaleFormat::E8M0),
        _ => return None,
    })
}

/// Decodes a non-native type into the most compact lossless canonical format.
fn convert(ty: GgmlType, shape: Vec<usize>, bytes: &[u8]) -> QuantTensor {
    let row_len = shape.last().copied().unwrap_or(1);
    let row_bytes = ty.row_bytes(row_len).unwrap_or(0);
    if ty == GgmlType::Q5_0 {
        let mut out = vec![0u8; bytes.len() / 22 * 34];
        for (src, dst) in bytes.chunks_exact(22).zip(out.chunks_exact_mut(34)) {
            codecs::q5_0_block_to_q8_0(src, dst);
        }
        return QuantTensor {
            shape,
            format: TensorFormat::Q8_0,
            data: Storage::owned(out),
        };
    }
    let mut row = vec![0f32; row_len];
    let rows = || bytes.chunks_exact(row_bytes.max(1));
    let f16_exact = rows().all(|r| {
        codecs::dequantize(ty, r, &mut row);
        row.iter()
            .all(|&v| DType::F16.round(v).to_bits() == v.to_bits())
    });
    let dtype = if f16_exact { DType::F16 } else { DType::F32 };
    let n_rows = bytes.len().checked_div(row_bytes).unwrap_or(0);
    let mut out = Vec::with_capacity(n_rows * row_len * dtype.size_bytes());
    for r in rows() {
        codecs::dequantize(ty, r, &mut row);
        for &v in &row {
            match dtype {
                DType::F16 => out.extend_from_slice(&half::f16::from_f32(v).to_le_bytes()),
                _ => out.extend_from_slice(&v.to_le_bytes()),
            }
        }
    }
    QuantTensor {
        shape,
        format: TensorFormat::Dense(dtype),
        data: Storage::owned(out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q4_1_block(d: f32, m: f32, qs: [u8; 16]) -> Vec<u8> {
        let mut b = half::f16::from_f32(d).to_le_bytes().to_vec();
        b.extend_from_slice(&half::f16::from_f32(m).to_le_bytes());
        b.extend_from_slice(&qs);
        b
    }

    #[test]
    fn conversion_is_f16_only_when_every_value_is_an_f16() {
        // d = 0.25, m = -1: every value is a multiple of 0.25 in [-1, 2.75], all exact in f16.
        let exact = convert(
            GgmlType::Q4_1,
            vec![32],
            &q4_1_block(0.25, -1.0, [0x5A; 16]),
        );
        assert!(matches!(exact.format, TensorFormat::Dense(DType::F16)));
        assert_eq!(exact.to_f32_vec()[0], 10.0 * 0.25 - 1.0);
        // d = 0.1 (f16 0.0999755859375), m = 1000: 1000 + 5 * d needs more than f16's 11 bits.
        let wide = convert(
            GgmlType::Q4_1,
            vec![32],
            &q4_1_block(0.1, 1000.0, [0x55; 16]),
        );
        assert!(matches!(wide.format, TensorFormat::Dense(DType::F32)));
        let d = half::f16::from_f32(0.1).to_f32();
        assert_eq!(wide.to_f32_vec()[3], d * 5.0 + 1000.0);
    }

    #[test]
    fn q5_0_repacks_exactly_into_q8_0() {
        let mut b = half::f16::from_f32(0.5).to_le_bytes().to_vec();
        b.extend_from_slice(&0xF0F0_1234u32.to_le_bytes());
        b.extend((0..16u8).map(|i| i.wrapping_mul(37)));
        let t = convert(GgmlType::Q5_0, vec![32], &b);
        assert!(matches!(t.format, TensorFormat::Q8_0));
        let mut want = vec![0f32; 32];
        codecs::dequantize(GgmlType::Q5_0, &b, &mut want);
        assert_eq!(t.to_f32_vec(), want);
    }
}
