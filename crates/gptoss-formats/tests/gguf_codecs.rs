//! ggml codecs against values the `gguf` Python package's `dequantize` gives (spec §3.6).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use gptoss_formats::gguf::codecs::dequantize;
use gptoss_formats::gguf::ggml_types::{GgmlType, ALL_TYPES};

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
#[ignore = "hand check: GGUF_HAND_GOLDEN=/tmp/gguf_hand/golden.json"]
fn hand_goldens() {
    let path = std::env::var("GGUF_HAND_GOLDEN").unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    for (name, g) in v.as_object().unwrap() {
        let ty = ALL_TYPES
            .iter()
            .copied()
            .find(|t| t.name() == name)
            .unwrap();
        let bytes = hex(g["hex"].as_str().unwrap());
        let want: Vec<u32> = g["values_bits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        let mut got = vec![0f32; want.len()];
        dequantize(ty, &bytes, &mut got);
        let bad: Vec<_> = got
            .iter()
            .zip(&want)
            .enumerate()
            .filter(|(_, (g, w))| g.to_bits() != **w && !(**g == 0.0 && f32::from_bits(**w) == 0.0))
            .take(5)
            .map(|(i, (g, w))| (i, *g, f32::from_bits(*w)))
            .collect();
        assert!(bad.is_empty(), "{name}: {bad:?}");
        let _ = GgmlType::F32;
    }
}

#[test]
#[ignore = "hand check: GGUF_HAND_PY=/tmp/gguf_hand/py (a .gguf and a .json made by the gguf package)"]
fn hand_python_written_file() {
    use gptoss_formats::gguf::{container::GgufFile, read_checkpoint, tensors};
    let base = std::env::var("GGUF_HAND_PY").unwrap();
    let path = std::path::PathBuf::from(format!("{base}.gguf"));
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{base}.json")).unwrap()).unwrap();
    let f = GgufFile::open(&path).unwrap();
    for info in &f.tensors {
        let t = tensors::load(&f, info).unwrap().tensor;
        let want: Vec<u32> = v[&info.name]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        let got = t.to_f32_vec();
        assert_eq!(got.len(), want.len(), "{}", info.name);
        for (g, w) in got.iter().zip(&want) {
            assert!(
                g.to_bits() == *w || (*g == 0.0 && f32::from_bits(*w) == 0.0),
                "{}: {g} vs {}",
                info.name,
                f32::from_bits(*w)
            );
        }
    }
    let raw = read_checkpoint(&path).unwrap();
    gptoss_formats::ModelWeights::assemble(raw.config, raw.tensors, "py").unwrap();
}
