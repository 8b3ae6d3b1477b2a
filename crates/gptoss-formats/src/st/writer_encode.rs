//! Encoding one HF MXFP4 output tensor into a writer: bf16 dense tensors (copied when already bf16),
//! expert `*_blocks` / `*_scales` (MXFP4 sources read block by block, other sources quantized with
//! `quant::mxfp4`, their scales kept for the `*_scales` tensor written next) and bf16 biases.

use std::io::Write;

use half::bf16;

use crate::quant::mxfp4;
use crate::tensor::{DType, QuantTensor, TensorFormat};

use super::writer::{bias, weight, HfTensor, Source};

/// Why a tensor could not be encoded.
pub(super) enum EncodeError {
    /// The file could not be written.
    Io(std::io::Error),
    /// The source tensor's bytes are shorter than its shape.
    Short,
}

impl From<std::io::Error> for EncodeError {
    fn from(e: std::io::Error) -> Self {
        EncodeError::Io(e)
    }
}

/// The scales of the last quantized (non-MXFP4) blocks tensor, written right after it.
#[derive(Default)]
pub(super) struct ScaleCache {
    stem: String,
    scales: Vec<u8>,
}

/// Counts bytes passed to a writer.
struct Counted<'w, W: Write> {
    w: &'w mut W,
    n: usize,
}

impl<W: Write> Counted<'_, W> {
    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.n += bytes.len();
        self.w.write_all(bytes)
    }
}

fn put_bf16(
    out: &mut Counted<impl Write>,
    values: &[f32],
    buf: &mut Vec<u8>,
) -> std::io::Result<()> {
    buf.clear();
    buf.extend(values.iter().flat_map(|&v| bf16::from_f32(v).to_le_bytes()));
    out.put(buf)
}

pub(super) fn encode(
    t: &HfTensor,
    cache: &mut ScaleCache,
    w: &mut impl Write,
) -> Result<usize, EncodeError> {
    let mut out = Counted { w, n: 0 };
    let mut buf = Vec::new();
    match &t.source {
        Source::Dense(q) if matches!(q.format, TensorFormat::Dense(DType::BF16)) => {
            for chunk in q.data.materialized().bytes().chunks(16 << 20) {
                out.put(chunk)?;
            }
        }
        Source::Dense(q) => {
            let q = q.materialized();
            let mut row = vec![0f32; q.row_len()];
            for r in 0..q.n_rows() {
                q.dequantize_row(r, &mut row);
                put_bf16(&mut out, &row, &mut buf)?;
            }
        }
        Source::Vector(v) => put_bf16(&mut out, v, &mut buf)?,
        Source::Bias(x, p) => {
            for e in x.iter() {
                put_bf16(&mut out, bias(e, *p).unwrap_or_default(), &mut buf)?;
            }
        }
        Source::Blocks(x, p) => {
            let stem = t.name.trim_end_matches("_blocks").to_string();
            let quantized = !x.iter().all(|e| mxfp4::is_mxfp4(weight(e, *p)));
            let mut scales = Vec::new();
            for e in x.iter() {
                for_each_block(weight(e, *p), |b| {
                    scales.push(b.e);
                    b.push_hf_codes(&mut buf);
                    if buf.len() >= 1 << 20 {
                        out.put(&buf)?;
                        buf.clear();
                    }
                    Ok(())
                })?;
            }
            out.put(&buf)?;
            *cache = if quantized {
                ScaleCache { stem, scales }
            } else {
                ScaleCache::default()
            };
        }
        Source::Scales(x, p) => {
            let stem = t.name.trim_end_matches("_scales");
            if cache.stem == stem {
                out.put(&std::mem::take(&mut cache.scales))?;
            } else {
                for e in x.iter() {
                    buf.clear();
                    for_each_block(weight(e, *p), |b| {
                        buf.push(b.e);
                        Ok(())
                    })?;
                    out.put(&buf)?;
                }
            }
        }
    }
    Ok(out.n)
}

/// Calls `f` with every MXFP4 block of `t` in order: read from MXFP4 tensors, quantized otherwise.
fn for_each_block(
    t: &QuantTensor,
    mut f: impl FnMut(mxfp4::Block) -> Result<(), EncodeError>,
) -> Result<(), EncodeError> {
    // Lazy bytes (a transpose, an interleave) are built for this tensor only, then dropped.
    let t = &*t.materialized();
    let per_row = t.row_len() / mxfp4::BLOCK;
    if mxfp4::is_mxfp4(t) {
        for i in 0..t.n_rows() * per_row {
            f(mxfp4::read_block(t, i).ok_or(EncodeError::Short)?)?;
        }
        return Ok(());
    }
    let mut row = vec![0f32; t.row_len()];
    for r in 0..t.n_rows() {
        t.dequantize_row(r, &mut row);
        for chunk in row.chunks_exact(mxfp4::BLOCK) {
            let mut b = [0f32; mxfp4::BLOCK];
            b.copy_from_slice(chunk);
            f(mxfp4::quantize_block(&b))?;
        }
    }
    Ok(())
}
