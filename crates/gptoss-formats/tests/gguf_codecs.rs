//! Every ggml codec against tests/fixtures/codecs/ggml_*.json: random blocks and the values the
//! `gguf` package's `dequantize` gives (spec §3.6), decoded both by the reference codecs and, for
//! types kept native at load, through the canonical [`QuantTensor`] decode the backends must match;
//! plus the bytes of `gguf.quants.quantize` for the one type the writer quantizes (Q8_0).

use std::path::{Path, PathBuf};

use gptoss_formats::gguf::codecs::dequantize;
use gptoss_formats::gguf::encode::quantize_q8_0;
use gptoss_formats::gguf::ggml_types::{GgmlType, ALL_TYPES};
use gptoss_formats::gguf::tensors::native_format;
use gptoss_formats::{QuantTensor, Storage};
use serde_json::Value;

fn codecs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/codecs")
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// Bit-equal, except that +0 and -0 are the same value (ggml's MXFP4 code 8 is +0, E2M1's is -0).
fn assert_same(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            g.to_bits() == w.to_bits() || (*g == 0.0 && *w == 0.0),
            "{what}[{i}]: {g} vs {w}"
        );
    }
}

/// The golden file of `ty`, checked against the type's own geometry.
fn golden(ty: GgmlType) -> Value {
    let path = codecs_dir().join(format!("ggml_{}.json", ty.name().to_lowercase()));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(
        v["ggml_type_id"].as_u64(),
        Some(ty.id() as u64),
        "{}",
        path.display()
    );
    assert_eq!(v["type_size"].as_u64(), Some(ty.block_bytes() as u64));
    assert_eq!(v["block_size"].as_u64(), Some(ty.block_elems() as u64));
    v
}

#[test]
fn every_type_decodes_like_the_gguf_package() {
    let mut checked = 0;
    for ty in ALL_TYPES
        .into_iter()
        .filter(|t| *t != GgmlType::F32 && *t != GgmlType::IQ4XS)
    {
        let g = golden(ty);
        for (i, case) in g["blocks"].as_array().unwrap().iter().enumerate() {
            let bytes = hex(case["hex"].as_str().unwrap());
            let want = floats(&case["values"]);
            let mut got = vec![0f32; want.len()];
            dequantize(ty, &bytes, &mut got);
            assert_same(&got, &want, &format!("{} block {i}", ty.name()));
            if let Some(format) = native_format(ty) {
                let t = QuantTensor {
                    shape: vec![want.len()],
                    format,
                    data: Storage::owned(bytes),
                };
                t.validate("golden", ty.name()).unwrap();
                assert_same(
                    &t.to_f32_vec(),
                    &want,
                    &format!("{} native block {i}", ty.name()),
                );
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 14 * 4);
}

#[test]
fn packages_quantized_bytes_decode_to_its_roundtrip_values() {
    for ty in ALL_TYPES
        .into_iter()
        .filter(|t| *t != GgmlType::F32 && *t != GgmlType::IQ4XS)
    {
        let g = golden(ty);
        let Some(q) = g["quantize"].as_object() else {
            continue;
        };
        let bytes = hex(q["hex"].as_str().unwrap());
        let want = floats(&q["roundtrip"]);
        let mut got = vec![0f32; want.len()];
        dequantize(ty, &bytes, &mut got);
        assert_same(&got, &want, &format!("{} roundtrip", ty.name()));
    }
}

#[test]
fn q8_0_quantizes_byte_for_byte_like_the_gguf_package() {
    let g = golden(GgmlType::Q8_0);
    let q = g["quantize"].as_object().unwrap();
    let mut out = Vec::new();
    quantize_q8_0(&floats(&q["input"]), &mut out);
    assert_eq!(out, hex(q["hex"].as_str().unwrap()));
}
