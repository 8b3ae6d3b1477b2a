//! The safetensors header (an 8-byte little-endian length, then a JSON object of tensor entries) parsed
//! from a file's bytes into typed entries, every size bounded as it is read: the header at most the
//! format's 100 MB, a shape at most 8 dimensions, offsets inside the data section, byte sizes matching
//! dtype × shape. Typed parsing keeps a header at about its own size in memory (a `serde_json::Value`
//! tree costs 10–30× that).

use std::fmt;

use serde::de::{Deserializer, Error as _, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

/// Largest safetensors header (the format's own limit, which the reference reader enforces too).
pub const MAX_HEADER_BYTES: usize = 100_000_000;
/// Most dimensions of a stored tensor.
pub const MAX_DIMS: usize = 8;

/// One tensor of a header, checked against the data section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderEntry {
    /// Name in the file.
    pub name: String,
    /// Stored dtype as safetensors spells it (`BF16`, `U8`, ...).
    pub dtype: String,
    /// Stored shape.
    pub shape: Vec<usize>,
    /// Start of the tensor's bytes, from the start of the file.
    pub start: usize,
    /// Bytes of the tensor.
    pub len: usize,
}

/// Parses the header of a safetensors file held in `bytes` (the whole file: offsets are checked against
/// it). Errors are plain messages; the caller adds the file name. Entries come in header order.
pub fn parse_header(bytes: &[u8]) -> Result<Vec<HeaderEntry>, String> {
    let Some(len_bytes) = bytes.get(..8) else {
        return Err(format!(
            "{} bytes is too short for a safetensors header",
            bytes.len()
        ));
    };
    let mut len = [0u8; 8];
    len.copy_from_slice(len_bytes);
    let header_len = u64::from_le_bytes(len);
    if header_len > MAX_HEADER_BYTES as u64 {
        return Err(format!(
            "header length {header_len} is over the format's limit of {MAX_HEADER_BYTES} bytes"
        ));
    }
    let data_start = 8 + header_len as usize;
    let Some(json) = bytes.get(8..data_start) else {
        return Err(format!(
            "header length {header_len} runs past the end of the file"
        ));
    };
    let Entries(entries) = serde_json::from_slice(json)
        .map_err(|e| format!("header is not a JSON object of tensor entries: {e}"))?;
    let data_len = bytes.len() - data_start;
    entries
        .into_iter()
        .map(|(name, raw)| checked(name, raw, data_start, data_len))
        .collect()
}

/// Checks one entry's offsets and size against the data section.
fn checked(
    name: String,
    raw: RawEntry,
    data_start: usize,
    data_len: usize,
) -> Result<HeaderEntry, String> {
    let RawEntry {
        dtype,
        shape: Dims(shape),
        data_offsets: (begin, end),
    } = raw;
    if shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .is_none()
    {
        return Err(format!(
            "tensor `{name}`: shape {shape:?} has more elements than a usize holds"
        ));
    }
    let (begin, end) = match (usize::try_from(begin), usize::try_from(end)) {
        (Ok(b), Ok(e)) if b <= e && e <= data_len => (b, e),
        _ => {
            return Err(format!(
                "tensor `{name}`: data_offsets [{begin}, {end}] outside the {data_len}-byte data section"
            ))
        }
    };
    if let Some(size) = dtype_size(&dtype) {
        let need = shape.iter().try_fold(size, |a, &d| a.checked_mul(d));
        if need != Some(end - begin) {
            let need = need.map_or_else(|| "more than usize".to_string(), |n| n.to_string());
            return Err(format!(
                "tensor `{name}`: {dtype} {shape:?} needs {need} bytes, header gives {}",
                end - begin
            ));
        }
    }
    Ok(HeaderEntry {
        name,
        dtype,
        shape,
        start: data_start + begin,
        len: end - begin,
    })
}

/// Bytes per element of a safetensors dtype, when known.
pub(crate) fn dtype_size(dtype: &str) -> Option<usize> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" => 1,
        "U16" | "I16" | "F16" | "BF16" => 2,
        "U32" | "I32" | "F32" => 4,
        "U64" | "I64" | "F64" => 8,
        _ => return None,
    })
}

/// An entry as the JSON gives it.
#[derive(Deserialize)]
struct RawEntry {
    dtype: String,
    shape: Dims,
    data_offsets: (u64, u64),
}

/// A shape, refused past [`MAX_DIMS`] as it is read.
struct Dims(Vec<usize>);

impl<'de> Deserialize<'de> for Dims {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Dims;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "a shape of at most {MAX_DIMS} non-negative integers")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Dims, A::Error> {
                let mut dims = Vec::new();
                while let Some(n) = seq.next_element::<u64>()? {
                    if dims.len() == MAX_DIMS {
                        return Err(A::Error::custom(format!(
                            "a shape has at most {MAX_DIMS} dimensions"
                        )));
                    }
                    dims.push(usize::try_from(n).map_err(A::Error::custom)?);
                }
                Ok(Dims(dims))
            }
        }
        d.deserialize_seq(V)
    }
}

/// Every tensor entry of the header object (`__metadata__` skipped), duplicates kept for the caller.
struct Entries(Vec<(String, RawEntry)>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entries;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object of tensor entries")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries, A::Error> {
                let mut out = Vec::new();
                while let Some(name) = map.next_key::<String>()? {
                    if name == "__metadata__" {
                        map.next_value::<IgnoredAny>()?;
                        continue;
                    }
                    let entry = map
                        .next_value::<RawEntry>()
                        .map_err(|e| A::Error::custom(format!("tensor `{name}`: {e}")))?;
                    out.push((name, entry));
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(header: &str, data: usize) -> Vec<u8> {
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(header.as_bytes());
        out.resize(out.len() + data, 0);
        out
    }

    #[test]
    fn reads_entries_and_skips_metadata() {
        let h = r#"{"__metadata__": {"format": "pt"}, "b": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}}"#;
        let entries = parse_header(&file(h, 24)).unwrap();
        let start = 8 + h.len();
        assert_eq!(
            entries,
            vec![HeaderEntry {
                name: "b".into(),
                dtype: "F32".into(),
                shape: vec![2, 3],
                start,
                len: 24
            }]
        );
    }

    #[test]
    fn bounds_are_checked_as_the_header_is_read() {
        let nine =
            r#"{"t": {"dtype": "U8", "shape": [1,1,1,1,1,1,1,1,1], "data_offsets": [0, 1]}}"#;
        let cases = [
            (file(nine, 1), "at most 8 dimensions"),
            (
                file(
                    r#"{"t": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}"#,
                    8,
                ),
                "needs 16 bytes",
            ),
            (
                file(
                    r#"{"t": {"dtype": "U8", "shape": [9], "data_offsets": [0, 9]}}"#,
                    4,
                ),
                "outside the 4-byte data section",
            ),
            (
                file(
                    r#"{"t": {"dtype": "X", "shape": [4294967296, 4294967296, 4294967296], "data_offsets": [0, 0]}}"#,
                    0,
                ),
                "more elements than a usize",
            ),
            (file("[1, 2]", 0), "JSON object"),
            (vec![1, 2, 3], "too short"),
        ];
        for (bytes, want) in cases {
            let e = parse_header(&bytes).unwrap_err();
            assert!(e.contains(want), "{want}: {e}");
        }
        let mut huge = (u64::MAX).to_le_bytes().to_vec();
        huge.extend_from_slice(b"{}");
        assert!(parse_header(&huge).unwrap_err().contains("limit"));
        let mut past = 100u64.to_le_bytes().to_vec();
        past.extend_from_slice(b"{}");
        assert!(parse_header(&past).unwrap_err().contains("past the end"));
    }
}
