//! bitsandbytes 4-bit Linears (spec §2c): a Linear with prefix `P` is 4-bit iff
//! `P.weight.quant_state.bitsandbytes__{nf4,fp4}` (packed JSON) or `P.weight.quant_type` (unpacked) exists.
//! The packed codes stay packed (LUT4, high nibble first); double-quantized absmax is expanded to f32
//! at load exactly as bitsandbytes does (`functional.dequantize_4bit`, fp32 math).

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::files::{dense, float_dtype, RawTensor};
use crate::tensor::{
    DType, Lut4, Lut4Scales, NibbleOrder, QuantTensor, ScaleFormat, Storage, TensorFormat,
};

/// A 4-bit Linear weight rebuilt from its quant-state tensors, named `P.weight`.
pub(crate) struct BnbWeight {
    /// `P.weight`.
    pub name: String,
    /// The packed tensor in canonical LUT4 form.
    pub tensor: QuantTensor,
    /// `file: P.weight (bnb nf4...)`.
    pub origin: String,
    /// Whether the absmax was double-quantized (and so expanded to an owned f32 copy).
    pub expanded_absmax: bool,
}

const PACKED_PREFIX: &str = ".quant_state.bitsandbytes__";
const AUX: &[&str] = &["absmax", "quant_map", "nested_absmax", "nested_quant_map"];
const UNPACKED: &[&str] = &[
    "quant_type",
    "blocksize",
    "dtype",
    "shape",
    "nested_blocksize",
    "nested_dtype",
    "nested_offset",
];

/// Removes every bitsandbytes group from `tensors` and returns the rebuilt weights; each group's
/// problem (bad JSON, missing piece, inconsistent sizes) goes to `problems`.
pub(crate) fn extract(
    tensors: &mut BTreeMap<String, RawTensor>,
    problems: &mut Vec<String>,
) -> Vec<BnbWeight> {
    let weights: Vec<String> = tensors
        .keys()
        .filter_map(|k| {
            k.split_once(PACKED_PREFIX)
                .map(|(w, _)| w.to_string())
                .or_else(|| k.strip_suffix(".quant_type").map(str::to_string))
        })
        .collect();
    let mut out = Vec::new();
    for w in weights {
        if !tensors.contains_key(&w) && !tensors.keys().any(|k| k.starts_with(&format!("{w}."))) {
            continue; // both a packed and an unpacked key named this weight: already read
        }
        let mut group = BTreeMap::new();
        if let Some(t) = tensors.remove(&w) {
            group.insert(String::new(), t);
        }
        let sub: Vec<String> = tensors
            .keys()
            .filter(|k| k.starts_with(&format!("{w}.")))
            .cloned()
            .collect();
        for k in sub {
            if let Some(t) = tensors.remove(&k) {
                group.insert(k[w.len() + 1..].to_string(), t);
            }
        }
        match build(&w, &group) {
            Ok(b) => out.push(b),
            Err(e) => problems.push(e),
        }
    }
    out
}

/// The quant state of one weight, from the packed JSON or the unpacked keys.
struct QuantState {
    quant_type: String,
    blocksize: usize,
    dtype: DType,
    shape: Vec<usize>,
    nested: Option<(usize, f32)>,
}

/// The tensors of one weight `P.weight`, keyed by what follows `P.weight.` (`""` for the codes).
struct Group<'a> {
    weight: &'a str,
    file: String,
    tensors: &'a BTreeMap<String, RawTensor>,
}

impl Group<'_> {
    /// `file: P.weight.key`, for messages.
    fn here(&self, key: &str) -> String {
        let dot = if key.is_empty() { "" } else { "." };
        format!("{}: {}{dot}{key}", self.file, self.weight)
    }

    fn get(&self, key: &str) -> Result<&RawTensor, String> {
        self.tensors
            .get(key)
            .ok_or_else(|| format!("{}: missing (needed by the 4-bit state)", self.here(key)))
    }
}

fn build(w: &str, tensors: &BTreeMap<String, RawTensor>) -> Result<BnbWeight, String> {
    let file = tensors
        .values()
        .next()
        .map_or_else(String::new, |t| t.file.clone());
    let g = Group {
        weight: w,
        file,
        tensors,
    };
    for k in tensors.keys() {
        let known = k.is_empty() || AUX.contains(&k.as_str()) || UNPACKED.contains(&k.as_str());
        if !known && !k.starts_with(&PACKED_PREFIX[1..]) {
            return Err(format!(
                "{}: not part of a bitsandbytes 4-bit state",
                g.here(k)
            ));
        }
    }
    let qs = quant_state(tensors).map_err(|e| format!("{}: {e}", g.here("quant_state")))?;
    let packed = g.get("")?;
    let n: usize = qs.shape.iter().product();
    if packed.data.len() < n.div_ceil(2) {
        return Err(format!(
            "{}: {} bytes cannot hold {n} 4-bit codes of shape {:?}",
            packed.origin(),
            packed.data.len(),
            qs.shape
        ));
    }
    let table = quant_map(g.get("quant_map")?, 16)?;
    let table: [f32; 16] = std::array::from_fn(|i| table.get(i).copied().unwrap_or(0.0));
    let (scales, expanded) = block_scales(&g, &qs, n.div_ceil(qs.blocksize))?;
    let tensor = QuantTensor {
        shape: qs.shape.clone(),
        format: TensorFormat::Lut4(Lut4 {
            table,
            block_elems: qs.blocksize,
            nibbles: NibbleOrder::HighFirst,
            scales: Lut4Scales::Separate {
                format: ScaleFormat::F32,
                data: scales,
            },
            round_to: qs.dtype,
        }),
        data: packed.data.slice(0, n.div_ceil(2)),
    };
    let dq = if expanded { "-dq" } else { "" };
    Ok(BnbWeight {
        name: w.to_string(),
        tensor,
        origin: format!("{} (bnb {}{dq})", packed.origin(), qs.quant_type),
        expanded_absmax: expanded,
    })
}

/// The f32 scale of each block: the stored absmax (zero-copy), or the double-quantized one expanded
/// (owned; the bool says so).
fn block_scales(g: &Group, qs: &QuantState, blocks: usize) -> Result<(Storage, bool), String> {
    let absmax = g.get("absmax")?;
    let Some((blocksize, offset)) = qs.nested else {
        if absmax.dtype != "F32" || absmax.numel() != blocks {
            return Err(format!(
                "{}: expected F32 [{blocks}], found {} {:?}",
                absmax.origin(),
                absmax.dtype,
                absmax.shape
            ));
        }
        return Ok((absmax.data.clone(), false));
    };
    let nested = NestedState {
        absmax: g.get("nested_absmax")?,
        map: g.get("nested_quant_map")?,
        blocksize,
        offset,
    };
    Ok((
        Storage::owned(expand_absmax(absmax, &nested, blocks)?),
        true,
    ))
}

/// The double-quantization state of an absmax vector.
struct NestedState<'a> {
    absmax: &'a RawTensor,
    map: &'a RawTensor,
    blocksize: usize,
    offset: f32,
}

/// `absmax[b] = nested_quant_map[absmax_u8[b]] * nested_absmax[b / nested_blocksize] + nested_offset`,
/// each step rounded to f32 as bitsandbytes computes it; returned as little-endian f32 bytes.
fn expand_absmax(
    codes: &RawTensor,
    nested: &NestedState,
    blocks: usize,
) -> Result<Vec<u8>, String> {
    if codes.dtype != "U8" || codes.numel() != blocks {
        return Err(format!(
            "{}: expected U8 [{blocks}] (double-quantized), found {} {:?}",
            codes.origin(),
            codes.dtype,
            codes.shape
        ));
    }
    let map = quant_map(nested.map, 256)?;
    let nb = blocks.div_ceil(nested.blocksize);
    let outer = quant_map(nested.absmax, nb)?;
    let mut out = Vec::with_capacity(blocks * 4);
    for (b, &code) in codes.data.bytes().iter().enumerate() {
        let (m, s) = (map[code as usize], outer[b / nested.blocksize]);
        let v = m * s + nested.offset;
        out.extend_from_slice(&v.to_le_bytes());
    }
    Ok(out)
}

/// A float vector of exactly `len` values, read as f32.
fn quant_map(t: &RawTensor, len: usize) -> Result<Vec<f32>, String> {
    if float_dtype(&t.dtype).is_none() {
        return Err(t.bad_dtype("F32 (or BF16/F16)"));
    }
    if t.numel() != len {
        return Err(format!(
            "{}: expected {len} values, found shape {:?}",
            t.origin(),
            t.shape
        ));
    }
    let mut unused = 0;
    let q = dense(t, &mut unused)?;
    let mut v = vec![0.0; len];
    q.dequantize_into(0, &mut v);
    Ok(v)
}

/// Reads the quant state: the packed JSON tensor, or the unpacked per-field tensors.
fn quant_state(group: &BTreeMap<String, RawTensor>) -> Result<QuantState, String> {
    let packed: Vec<(&String, &RawTensor)> = group
        .iter()
        .filter(|(k, _)| k.starts_with(&PACKED_PREFIX[1..]))
        .collect();
    let obj: Map<String, Value> = match packed.as_slice() {
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

fn parse_state(obj: &Map<String, Value>) -> Result<QuantState, String> {
    let field = |k: &str| obj.get(k).ok_or_else(|| format!("field `{k}` missing"));
    let uint = |k: &str| -> Result<usize, String> {
        let v = field(k)?;
        v.as_u64()
            .filter(|&n| n > 0)
            .map(|n| n as usize)
            .ok_or_else(|| format!("field `{k}`: expected a positive integer, found {v}"))
    };
    let string = |k: &str| -> Result<String, String> {
        let v = field(k)?;
        v.as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("field `{k}`: expected a string, found {v}"))
    };
    let quant_type = string("quant_type")?;
    if quant_type != "nf4" && quant_type != "fp4" {
        return Err(format!(
            "field `quant_type`: expected \"nf4\" or \"fp4\", found {quant_type:?}"
        ));
    }
    let dtype = match string("dtype")?.as_str() {
        "bfloat16" => DType::BF16,
        "float16" => DType::F16,
        "float32" => DType::F32,
        other => {
            return Err(format!(
                "field `dtype`: expected bfloat16, float16 or float32, found {other:?}"
            ))
        }
    };
    let shape_v = field("shape")?;
    let shape = shape_v
        .as_array()
        .and_then(|a| {
            a.iter()
                .map(|d| d.as_u64().map(|d| d as usize))
                .collect::<Option<Vec<_>>>()
        })
        .ok_or_else(|| format!("field `shape`: expected an array of integers, found {shape_v}"))?;
    let nested = if obj.contains_key("nested_blocksize") || obj.contains_key("nested_offset") {
        let nd = string("nested_dtype")?;
        if nd != "float32" {
            return Err(format!(
                "field `nested_dtype`: expected \"float32\", found {nd:?}"
            ));
        }
        let off = field("nested_offset")?;
        let off = off
            .as_f64()
            .ok_or_else(|| format!("field `nested_offset`: expected a number, found {off}"))?;
        Some((uint("nested_blocksize")?, off as f32))
    } else {
        None
    };
    Ok(QuantState {
        quant_type,
        blocksize: uint("blocksize")?,
        dtype,
        shape,
        nested,
    })
}
