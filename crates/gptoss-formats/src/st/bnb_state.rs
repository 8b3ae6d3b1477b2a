//! The quant state of a bitsandbytes 4-bit weight (spec §2c): the packed JSON tensor
//! `quant_state.bitsandbytes__{nf4,fp4}` as `QuantState.as_dict(packed=True)` writes it, or the same
//! fields as separate tensors (strings as UTF-8 bytes, numbers as scalars).

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::bnb::{PACKED_PREFIX, UNPACKED};
use super::files::RawTensor;
use crate::tensor::DType;

/// The quant state of one weight, from the packed JSON or the unpacked keys.
pub(crate) struct QuantState {
    /// `nf4` or `fp4`.
    pub quant_type: String,
    /// Elements per absmax block.
    pub blocksize: usize,
    /// The dtype decoded values are rounded to.
    pub dtype: DType,
    /// Logical shape of the weight.
    pub shape: Vec<usize>,
    /// `(nested_blocksize, nested_offset)` when double-quantized.
    pub nested: Option<(usize, f32)>,
}

/// Largest packed quant_state JSON read (bitsandbytes writes a few hundred bytes).
const MAX_STATE_BYTES: usize = 1 << 16;

/// Reads the quant state: the packed JSON tensor, or the unpacked per-field tensors.
pub(crate) fn quant_state(group: &BTreeMap<String, RawTensor>) -> Result<QuantState, String> {
    let packed: Vec<(&String, &RawTensor)> = group
        .iter()
        .filter(|(k, _)| k.starts_with(&PACKED_PREFIX[1..]))
        .collect();
    let obj: Map<String, Value> = match packed.as_slice() {
        [(_, t)] if t.data.len() > MAX_STATE_BYTES => {
            return Err(format!(
                "packed quant_state is {} bytes; a real one is a few hundred (at most {MAX_STATE_BYTES})",
                t.data.len()
            ))
        }
        [(key, t)] => {
            let v: Value = serde_json::from_slice(t.data.bytes())
                .map_err(|e| format!("not valid JSON: {e}"))?;
            let Value::Object(obj) = v else {
                return Err(format!("expected a JSON object, found {v}"));
            };
            let suffix = &key[PACKED_PREFIX.len() - 1..];
            let qt = obj
                .get("quant_type")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if qt != suffix {
                return Err(format!(
                    "key says `{suffix}` but quant_type is {:?}",
                    obj.get("quant_type")
                ));
            }
            obj
        }
        [] => unpacked_fields(group)?,
        _ => {
            return Err(format!(
                "{} packed quant_state tensors; expected one",
                packed.len()
            ))
        }
    };
    parse_state(&obj)
}

/// The unpacked form: each field its own tensor (strings as U8 bytes, numbers as scalars).
fn unpacked_fields(group: &BTreeMap<String, RawTensor>) -> Result<Map<String, Value>, String> {
    let mut obj = Map::new();
    for &field in UNPACKED {
        let Some(t) = group.get(field) else { continue };
        let bytes = t.data.bytes();
        let v = match t.dtype.as_str() {
            "U8" | "I8" => {
                let s = std::str::from_utf8(bytes)
                    .map_err(|_| format!("`{field}` is not UTF-8 text"))?;
                serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.to_string()))
            }
            "I64" | "I32" | "F32" | "F64" => {
                let vals = scalars(&t.dtype, bytes);
                match (field, vals.as_slice()) {
                    ("shape", _) => Value::from(vals.iter().map(|&x| x as u64).collect::<Vec<_>>()),
                    ("nested_offset", [x]) => Value::from(*x),
                    (_, [x]) => Value::from(*x as u64),
                    _ => {
                        return Err(format!(
                            "`{field}` should be a scalar, found shape {:?}",
                            t.shape
                        ))
                    }
                }
            }
            other => return Err(format!("`{field}` has unsupported dtype {other}")),
        };
        obj.insert(field.to_string(), v);
    }
    Ok(obj)
}

fn scalars(dtype: &str, bytes: &[u8]) -> Vec<f64> {
    let (size, read): (usize, fn(&[u8]) -> f64) = match dtype {
        "I64" => (8, |b| {
            i64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as f64
        }),
        "F64" => (8, |b| f64::from_le_bytes(b.try_into().unwrap_or([0; 8]))),
        "I32" => (4, |b| {
            i32::from_le_bytes(b.try_into().unwrap_or([0; 4])) as f64
        }),
        _ => (4, |b| {
            f32::from_le_bytes(b.try_into().unwrap_or([0; 4])) as f64
        }),
    };
    bytes.chunks_exact(size).map(read).collect()
}

/// Typed access to the quant-state JSON fields.
struct Fields<'a>(&'a Map<String, Value>);

impl Fields<'_> {
    fn get(&self, k: &str) -> Result<&Value, String> {
        self.0.get(k).ok_or_else(|| format!("field `{k}` missing"))
    }

    fn uint(&self, k: &str) -> Result<usize, String> {
        let v = self.get(k)?;
        let n = v.as_u64().filter(|&n| n > 0);
        n.map(|n| n as usize)
            .ok_or_else(|| format!("field `{k}`: expected a positive integer, found {v}"))
    }

    fn string(&self, k: &str) -> Result<&str, String> {
        let v = self.get(k)?;
        v.as_str()
            .ok_or_else(|| format!("field `{k}`: expected a string, found {v}"))
    }

    fn shape(&self, k: &str) -> Result<Vec<usize>, String> {
        let v = self.get(k)?;
        let dims = v.as_array().and_then(|a| {
            a.iter()
                .map(|d| d.as_u64().map(|d| d as usize))
                .collect::<Option<Vec<_>>>()
        });
        dims.ok_or_else(|| format!("field `{k}`: expected an array of integers, found {v}"))
    }

    /// `(nested_blocksize, nested_offset)` when the absmax is double-quantized.
    fn nested(&self) -> Result<Option<(usize, f32)>, String> {
        if !self.0.contains_key("nested_blocksize") && !self.0.contains_key("nested_offset") {
            return Ok(None);
        }
        let nd = self.string("nested_dtype")?;
        if nd != "float32" {
            return Err(format!(
                "field `nested_dtype`: expected \"float32\", found {nd:?}"
            ));
        }
        let off = self.get("nested_offset")?;
        let off = off
            .as_f64()
            .ok_or_else(|| format!("field `nested_offset`: expected a number, found {off}"))?;
        // bitsandbytes makes `torch.tensor(float(nested_offset))`: an f32.
        Ok(Some((self.uint("nested_blocksize")?, off as f32)))
    }
}

fn parse_state(obj: &Map<String, Value>) -> Result<QuantState, String> {
    let f = Fields(obj);
    let quant_type = f.string("quant_type")?.to_string();
    if quant_type != "nf4" && quant_type != "fp4" {
        return Err(format!(
            "field `quant_type`: expected \"nf4\" or \"fp4\", found {quant_type:?}"
        ));
    }
    let dtype = match f.string("dtype")? {
        "bfloat16" => DType::BF16,
        "float16" => DType::F16,
        "float32" => DType::F32,
        other => {
            return Err(format!(
                "field `dtype`: expected bfloat16, float16 or float32, found {other:?}"
            ))
        }
    };
    Ok(QuantState {
        quant_type,
        blocksize: f.uint("blocksize")?,
        dtype,
        shape: f.shape("shape")?,
        nested: f.nested()?,
    })
}
