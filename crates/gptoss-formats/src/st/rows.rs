//! Row operations on stored tensors, format-preserving: row windows (zero-copy) and the row interleave
//! of two tensors (gate/up → canonical gate_up, lazy: built when a consumer reads it). Quantized rows
//! must hold whole blocks so that no block is split.

use crate::tensor::{
    Lut4, Lut4Scales, QuantTensor, Storage, TensorFormat, Q8_0_BLOCK, Q8_0_BLOCK_BYTES,
};

/// Bytes of one row of `row_len` elements: `(code/element bytes, separate scale bytes)`, or why rows of
/// that length cannot be cut out of this format.
fn row_bytes(format: &TensorFormat, row_len: usize) -> Result<(usize, usize), String> {
    let whole = |block: usize| {
        if row_len.checked_rem(block) == Some(0) {
            Ok(row_len / block)
        } else {
            Err(format!(
                "rows of {row_len} elements split its {block}-element blocks"
            ))
        }
    };
    match format {
        TensorFormat::Dense(d) => Ok((row_len * d.size_bytes(), 0)),
        TensorFormat::Q8_0 => Ok((whole(Q8_0_BLOCK)? * Q8_0_BLOCK_BYTES, 0)),
        TensorFormat::Lut4(l) => {
            let blocks = whole(l.block_elems)?;
            match &l.scales {
                Lut4Scales::Inline { .. } => Ok((blocks * l.block_bytes(), 0)),
                Lut4Scales::Separate { format, .. } if row_len & 1 == 0 => {
                    Ok((row_len / 2, blocks * format.size_bytes()))
                }
                Lut4Scales::Separate { .. } => Err(format!(
                    "rows of {row_len} 4-bit codes do not end on a byte"
                )),
            }
        }
    }
}

/// Rows `[first, first + count)` of a tensor seen as `[rows, row_len]`, zero-copy, with `new_shape`.
pub(crate) fn split_rows(
    t: &QuantTensor,
    row_len: usize,
    first: usize,
    count: usize,
    new_shape: Vec<usize>,
) -> Result<QuantTensor, String> {
    let (data_row, scale_row) = row_bytes(&t.format, row_len)?;
    let rows = t.numel().checked_div(row_len).unwrap_or(0);
    if first + count > rows || t.data.len() < (first + count) * data_row {
        return Err(format!(
            "rows {first}..{} are out of range for {rows} rows",
            first + count
        ));
    }
    let format = match &t.format {
        TensorFormat::Lut4(l) => match &l.scales {
            Lut4Scales::Separate { format, data } => {
                if data.len() < (first + count) * scale_row {
                    return Err(format!("scales end before row {}", first + count));
                }
                TensorFormat::Lut4(Lut4 {
                    scales: Lut4Scales::Separate {
                        format: *format,
                        data: data.slice(first * scale_row, count * scale_row),
                    },
                    ..l.clone()
                })
            }
            Lut4Scales::Inline { .. } => t.format.clone(),
        },
        _ => t.format.clone(),
    };
    Ok(QuantTensor {
        shape: new_shape,
        format,
        data: t.data.slice(first * data_row, count * data_row),
    })
}

/// True when two formats decode alike (same kind, table, block, nibble order, scale encoding, rounding).
fn same_format(a: &TensorFormat, b: &TensorFormat) -> bool {
    match (a, b) {
        (TensorFormat::Dense(x), TensorFormat::Dense(y)) => x == y,
        (TensorFormat::Q8_0, TensorFormat::Q8_0) => true,
        (TensorFormat::Lut4(x), TensorFormat::Lut4(y)) => {
            let scale = |l: &Lut4| match &l.scales {
                Lut4Scales::Separate { format, .. } => (0, *format),
                Lut4Scales::Inline { format } => (1, *format),
            };
            x.table == y.table
                && x.block_elems == y.block_elems
                && x.nibbles == y.nibbles
                && x.round_to == y.round_to
                && scale(x) == scale(y)
        }
        _ => false,
    }
}

/// Interleaves the rows of `a` and `b` (both `[R, C]`, or `[R]` for a bias): row `2j` of the result is
/// `a[j]`, row `2j+1` is `b[j]`. The result is `[2R, C]` (or `[2R]`) in the same format, lazy.
pub(crate) fn interleave_rows(a: &QuantTensor, b: &QuantTensor) -> Result<QuantTensor, String> {
    if a.shape != b.shape || a.shape.is_empty() || a.shape.len() > 2 {
        return Err(format!(
            "shapes {:?} and {:?} are not one matrix or vector shape",
            a.shape, b.shape
        ));
    }
    if !same_format(&a.format, &b.format) {
        return Err(format!(
            "formats differ: {} and {}",
            a.format.describe(),
            b.format.describe()
        ));
    }
    let row_len = if a.shape.len() == 2 { a.shape[1] } else { 1 };
    let rows = a.shape[0];
    let (data_row, scale_row) = row_bytes(&a.format, row_len)?;
    let weave = |x: &Storage, y: &Storage, per_row: usize| -> Result<Storage, String> {
        if x.len() != rows * per_row || y.len() != rows * per_row {
            return Err(format!(
                "stored sizes {} and {} do not hold {rows} rows",
                x.len(),
                y.len()
            ));
        }
        Storage::interleaved(x.clone(), y.clone(), per_row)
    };
    let data = weave(&a.data, &b.data, data_row)?;
    let format = match (&a.format, &b.format) {
        (TensorFormat::Lut4(la), TensorFormat::Lut4(lb)) => match (&la.scales, &lb.scales) {
            (Lut4Scales::Separate { format, data: sa }, Lut4Scales::Separate { data: sb, .. }) => {
                TensorFormat::Lut4(Lut4 {
                    scales: Lut4Scales::Separate {
                        format: *format,
                        data: weave(sa, sb, scale_row)?,
                    },
                    ..la.clone()
                })
            }
            _ => a.format.clone(),
        },
        _ => a.format.clone(),
    };
    let mut shape = a.shape.clone();
    shape[0] = 2 * rows;
    Ok(QuantTensor {
        shape,
        format,
        data,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::tensor::{DType, NibbleOrder, ScaleFormat};

    fn lut4(shape: Vec<usize>, codes: Vec<u8>, scales: Vec<f32>) -> QuantTensor {
        let table = std::array::from_fn(|i| i as f32);
        QuantTensor {
            shape,
            format: TensorFormat::Lut4(Lut4 {
                table,
                block_elems: 4,
                nibbles: NibbleOrder::HighFirst,
                scales: Lut4Scales::Separate {
                    format: ScaleFormat::F32,
                    data: Storage::owned(scales.iter().flat_map(|s| s.to_le_bytes()).collect()),
                },
                round_to: DType::F32,
            }),
            data: Storage::owned(codes),
        }
    }

    #[test]
    fn interleave_dense_rows_and_vectors() {
        let a = QuantTensor::from_f32(vec![2, 3], &[1., 2., 3., 4., 5., 6.]);
        let b = QuantTensor::from_f32(vec![2, 3], &[-1., -2., -3., -4., -5., -6.]);
        let c = interleave_rows(&a, &b).unwrap();
        assert_eq!(c.shape, vec![4, 3]);
        assert_eq!(
            c.to_f32_vec(),
            vec![1., 2., 3., -1., -2., -3., 4., 5., 6., -4., -5., -6.]
        );
        let va = QuantTensor::from_f32(vec![2], &[1., 2.]);
        let vb = QuantTensor::from_f32(vec![2], &[3., 4.]);
        assert_eq!(
            interleave_rows(&va, &vb).unwrap().to_f32_vec(),
            vec![1., 3., 2., 4.]
        );
    }

    #[test]
    fn interleave_lut4_moves_codes_and_scales_together() {
        // [2, 4] each, one 4-element block per row; table[i] = i; high nibble first.
        let a = lut4(vec![2, 4], vec![0x12, 0x34, 0x56, 0x78], vec![1.0, 10.0]);
        let b = lut4(vec![2, 4], vec![0x9A, 0xBC, 0xDE, 0xF0], vec![2.0, 100.0]);
        let c = interleave_rows(&a, &b).unwrap();
        c.validate("t", "c").unwrap();
        // Codes and scales are lazy until read; materialized() builds both without keeping them.
        let m = c.materialized();
        let TensorFormat::Lut4(Lut4 {
            scales: Lut4Scales::Separate { data, .. },
            ..
        }) = &m.format
        else {
            panic!("{:?}", m.format)
        };
        assert!(c.data.is_lazy() && !m.data.is_lazy() && !data.is_lazy());
        assert_eq!(m.to_f32_vec(), c.to_f32_vec());
        assert_eq!(
            c.to_f32_vec(),
            vec![
                1., 2., 3., 4., // a row 0 × 1
                18., 20., 22., 24., // b row 0 × 2
                50., 60., 70., 80., // a row 1 × 10
                1300., 1400., 1500., 0., // b row 1 × 100
            ]
        );
    }

    #[test]
    fn interleave_refuses_split_blocks_and_mixed_formats() {
        let a = lut4(vec![4, 2], vec![0; 4], vec![1.0, 1.0]);
        let e = interleave_rows(&a, &a).unwrap_err();
        assert!(e.contains("split its 4-element blocks"), "{e}");
        let d = QuantTensor::from_f32(vec![4, 2], &[0.; 8]);
        let e = interleave_rows(&a, &d).unwrap_err();
        assert!(e.contains("formats differ"), "{e}");
    }

    #[test]
    fn split_rows_of_lut4_and_dense() {
        let a = lut4(vec![2, 4], vec![0x12, 0x34, 0x56, 0x78], vec![1.0, 10.0]);
        let r = split_rows(&a, 4, 1, 1, vec![4]).unwrap();
        assert_eq!(r.to_f32_vec(), vec![50., 60., 70., 80.]);
        let d = QuantTensor::from_f32(vec![6], &[0., 1., 2., 3., 4., 5.]);
        assert_eq!(
            split_rows(&d, 1, 2, 3, vec![3]).unwrap().to_f32_vec(),
            vec![2., 3., 4.]
        );
        assert!(split_rows(&d, 1, 4, 3, vec![3]).is_err());
    }
}
