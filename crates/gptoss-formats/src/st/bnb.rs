//! bitsandbytes 4-bit Linears (spec §2c): a Linear with prefix `P` is 4-bit iff
//! `P.weight.quant_state.bitsandbytes__{nf4,fp4}` (packed JSON) or `P.weight.quant_type` (unpacked) exists.
//! The packed codes stay packed (LUT4, high nibble first); double-quantized absmax is expanded to f32
//! at load exactly as bitsandbytes does (`functional.dequantize_4bit`, fp32 math).

use std::collections::{BTreeMap, BTreeSet};

use super::bnb_state::{quant_state, QuantState};
use super::files::{dense, float_dtype, RawTensor};
use crate::tensor::{
    Lut4, Lut4Scales, NibbleOrder, QuantTensor, ScaleFormat, Storage, TensorFormat,
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

pub(super) const PACKED_PREFIX: &str = ".quant_state.bitsandbytes__";
const AUX: &[&str] = &["absmax", "quant_map", "nested_absmax", "nested_quant_map"];
pub(super) const UNPACKED: &[&str] = &[
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
    let weights: BTreeSet<String> = tensors
        .keys()
        .filter_map(|k| {
            k.split_once(PACKED_PREFIX)
                .map(|(w, _)| w.to_string())
                .or_else(|| k.strip_suffix(".quant_type").map(str::to_string))
        })
        .collect();
    let mut out = Vec::new();
    for w in weights {
        let prefix = format!("{w}.");
        let sub: Vec<String> = tensors
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, _)| k.clone())
            .collect();
        let mut group = BTreeMap::new();
        if let Some(t) = tensors.remove(&w) {
            group.insert(String::new(), t);
        }
        for k in sub {
            if let Some(t) = tensors.remove(&k) {
                group.insert(k[prefix.len()..].to_string(), t);
            }
        }
        match build(&w, &group) {
            Ok(b) => out.push(b),
            Err(e) => problems.push(e),
        }
    }
    out
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
