//! The committed GGUF fixtures (tests/fixtures/tiny/gguf, made by llama.cpp's own converter and by
//! the `gguf` package): every file reads and assembles into the HF config; equal-valued files give
//! equal tensors; the vocabulary built from the HF dir equals llama.cpp's; and the writer reproduces
//! llama.cpp's f32, bf16 and q8_0 files tensor for tensor, byte for byte.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use gptoss_formats::gguf::container::{GgufFile, Value};
use gptoss_formats::gguf::tensors::{byte_range, ggml_type};
use gptoss_formats::gguf::vocab::vocab_from_hf_dir;
use gptoss_formats::gguf::{read_checkpoint, write_checkpoint, write_model, OutType};
use gptoss_formats::{ModelConfig, ModelWeights, TensorFormat};

fn fixtures() -> PathBuf {
    std::env::var_os("GPTOSS_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures"))
}

fn gguf(name: &str) -> PathBuf {
    let p = fixtures().join("tiny/gguf").join(name);
    assert!(
        p.is_file(),
        "missing fixture {} (tools/fixtures/make_gguf.py makes it)",
        p.display()
    );
    p
}

fn load(path: &Path) -> (ModelWeights, Vec<String>) {
    let raw = read_checkpoint(path).unwrap();
    let notes = raw.notes.clone();
    (
        ModelWeights::assemble(raw.config, raw.tensors, &path.display().to_string()).unwrap(),
        notes,
    )
}

/// Every value of every tensor, by canonical name.
fn values(w: &ModelWeights) -> BTreeMap<String, Vec<f32>> {
    let mut out = BTreeMap::new();
    w.for_each_tensor(|n, t| {
        out.insert(n.to_string(), t.to_f32_vec());
    });
    out.insert("norm".into(), w.norm.clone());
    for (l, x) in w.layers.iter().enumerate() {
        for (what, v) in [
            ("attn_norm", &x.attn_norm),
            ("mlp_norm", &x.mlp_norm),
            ("sinks", &x.sinks),
        ] {
            out.insert(format!("layers.{l}.{what}"), v.clone());
        }
        for (what, lin) in [
            ("q", &x.q),
            ("k", &x.k),
            ("v", &x.v),
            ("o", &x.o),
            ("router", &x.router),
        ] {
            out.insert(format!("layers.{l}.{what}.bias"), lin.bias.clone().unwrap());
        }
        for (e, ex) in x.experts.iter().enumerate() {
            out.insert(
                format!("layers.{l}.experts.{e}.gate_up.bias"),
                ex.gate_up.bias.clone().unwrap(),
            );
            out.insert(
                format!("layers.{l}.experts.{e}.down.bias"),
                ex.down.bias.clone().unwrap(),
            );
        }
    }
    out
}

const FILES: [&str; 10] = [
    "tiny-llamacpp-f32.gguf",
    "tiny-llamacpp-bf16.gguf",
    "tiny-llamacpp-q8_0.gguf",
    "tiny-gguf-f16.gguf",
    "tiny-gguf-q4_0.gguf",
    "tiny-gguf-q4_1.gguf",
    "tiny-gguf-q5_0.gguf",
    "tiny-gguf-q5_1.gguf",
    "tiny-gguf-iq4_nl.gguf",
    "tiny-gguf-fused-gate-up.gguf",
];

#[test]
fn every_fixture_reads_into_the_hf_config() {
    let hf = ModelConfig::from_json_file(&fixtures().join("tiny/hf-mxfp4/config.json")).unwrap();
    for name in FILES {
        let (w, _) = load(&gguf(name));
        let mut c = w.config.clone();
        assert_eq!(c.rms_norm_eps as f32, hf.rms_norm_eps as f32, "{name}");
        c.rms_norm_eps = hf.rms_norm_eps;
        assert_eq!(c, hf, "{name}");
    }
}

#[test]
fn equal_valued_files_give_equal_tensors() {
    let (f32w, _) = load(&gguf("tiny-llamacpp-f32.gguf"));
    let reference = values(&f32w);
    for name in ["tiny-llamacpp-bf16.gguf", "tiny-gguf-fused-gate-up.gguf"] {
        let got = values(&load(&gguf(name)).0);
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            reference.keys().collect::<Vec<_>>()
        );
        for (k, v) in &reference {
            assert_eq!(&got[k], v, "{name}: {k}");
        }
    }
}

#[test]
fn requantized_files_keep_native_types_and_convert_the_rest() {
    let (f32w, _) = load(&gguf("tiny-llamacpp-f32.gguf"));
    let reference = values(&f32w);
    let requant = |k: &str| {
        k == "embed"
            || k == "lm_head"
            || ["q", "k", "v", "o"]
                .iter()
                .any(|p| k.ends_with(&format!(".{p}.weight")))
    };
    for (name, format, note) in [
        ("tiny-gguf-f16.gguf", "f16", None),
        ("tiny-gguf-q4_0.gguf", "lut4/32", None),
        ("tiny-gguf-iq4_nl.gguf", "lut4/32", None),
        ("tiny-gguf-q5_0.gguf", "q8_0", Some("Q5_0 → q8_0")),
        ("tiny-gguf-q4_1.gguf", "f32", Some("Q4_1 → f32")),
        ("tiny-gguf-q5_1.gguf", "f32", Some("Q5_1 → f32")),
    ] {
        let (w, notes) = load(&gguf(name));
        assert_eq!(w.layers[2].k.weight.format.describe(), format, "{name}");
        assert_eq!(w.lm_head.format.describe(), format, "{name}");
        if let Some(n) = note {
            assert!(notes.iter().any(|x| x.starts_with(n)), "{name}: {notes:?}");
        }
        for (k, v) in values(&w) {
            if requant(&k) {
                // Dequantized values stay near the model's: a 4-bit block's error is at most
                // amax / 8 (Q4_0's scale), so amax / 6 bounds every type here.
                let r = &reference[&k];
                let amax = r.iter().fold(0f32, |m, x| m.max(x.abs()));
                let err = v
                    .iter()
                    .zip(r)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                assert!(err <= amax / 6.0, "{name}: {k} off by {err} (amax {amax})");
            } else {
                assert_eq!(v, reference[&k], "{name}: {k}");
            }
        }
    }
}

#[test]
fn vocab_from_hf_dir_equals_llama_cpp() {
    let raw = read_checkpoint(&gguf("tiny-llamacpp-f32.gguf")).unwrap();
    let theirs = raw.vocab.unwrap();
    let ours = vocab_from_hf_dir(&fixtures().join("tiny/hf-mxfp4"), raw.config.vocab_size).unwrap();
    assert_eq!(ours.tokens, theirs.tokens);
    assert_eq!(ours.token_types, theirs.token_types);
    assert_eq!(ours.merges, theirs.merges);
    assert_eq!(
        (ours.bos, ours.eos, ours.pad),
        (theirs.bos, theirs.eos, theirs.pad)
    );
    assert_eq!(
        (ours.model, ours.pre, ours.chat_template),
        (theirs.model, theirs.pre, theirs.chat_template)
    );
}

fn tensor_bytes(f: &GgufFile) -> BTreeMap<String, (u32, Vec<u64>, Vec<u8>)> {
    f.tensors
        .iter()
        .map(|t| {
            let (start, len) = byte_range(f, t, ggml_type(f, t).unwrap()).unwrap();
            (
                t.name.clone(),
                (t.type_id, t.ne.clone(), f.map[start..start + len].to_vec()),
            )
        })
        .collect()
}

#[test]
fn writer_reproduces_llama_cpp_files_byte_for_byte() {
    let src = read_checkpoint(&gguf("tiny-llamacpp-f32.gguf")).unwrap();
    let vocab = src.vocab.clone().unwrap();
    let w = ModelWeights::assemble(src.config, src.tensors, "f32").unwrap();
    same_as_llama_cpp("from-gguf", |outtype, dest| {
        write_model(&w, Some(&vocab), outtype, dest).unwrap();
    });
}

/// `gptoss convert` of the HF MXFP4 dir: the same files llama.cpp's converter made from it.
#[test]
fn convert_from_hf_mxfp4_reproduces_llama_cpp() {
    let ckpt = gptoss_formats::load(&fixtures().join("tiny/hf-mxfp4")).unwrap();
    assert!(ckpt.vocab.is_none() && ckpt.tokenizer_json.is_some());
    same_as_llama_cpp("from-hf", |outtype, dest| {
        write_checkpoint(&ckpt, outtype, dest).unwrap();
    });
}

/// Writes each outtype with `write` and compares tensors and metadata with llama.cpp's file.
fn same_as_llama_cpp(test: &str, write: impl Fn(OutType, &Path)) {
    let dir = std::env::temp_dir().join(format!(
        "gptoss-gguf-fixtures-{}-{test}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    for (outtype, theirs) in [
        (OutType::F32, "tiny-llamacpp-f32.gguf"),
        (OutType::BF16, "tiny-llamacpp-bf16.gguf"),
        (OutType::Q8_0, "tiny-llamacpp-q8_0.gguf"),
    ] {
        let ours = dir.join(theirs);
        write(outtype, &ours);
        let (a, b) = (
            GgufFile::open(&ours).unwrap(),
            GgufFile::open(&gguf(theirs)).unwrap(),
        );
        let (ta, tb) = (tensor_bytes(&a), tensor_bytes(&b));
        assert_eq!(
            ta.keys().collect::<Vec<_>>(),
            tb.keys().collect::<Vec<_>>(),
            "{theirs}"
        );
        for (name, (ty, ne, bytes)) in &tb {
            let (oty, one, obytes) = &ta[name];
            assert_eq!((oty, one), (ty, ne), "{theirs}: {name}");
            assert!(obytes == bytes, "{theirs}: {name}: bytes differ");
        }
        for (key, value) in &b.metadata {
            if key.starts_with("general.name") || key == "general.size_label" {
                continue;
            }
            assert_eq!(a.get(key), Some(value), "{theirs}: metadata {key}");
        }
        assert!(matches!(
            load(&ours).0.lm_head.format,
            TensorFormat::Dense(_) | TensorFormat::Q8_0
        ));
        let _ = Value::U8(0);
    }
}

/// Every safetensors layout converts to a GGUF (F32) that reads back to exactly its own values;
/// the equal-valued layouts all give the values of llama.cpp's f32 file.
#[test]
fn every_layout_converts_and_reads_back_exactly() {
    let reference = values(&load(&gguf("tiny-llamacpp-f32.gguf")).0);
    let dir = std::env::temp_dir().join(format!("gptoss-gguf-layouts-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for layout in [
        "hf-mxfp4",
        "original",
        "hf-bf16",
        "split-projs",
        "split-weights",
        "split-gate-up",
        "split-mixtral",
        "bnb-nf4",
        "bnb-nf4-dq",
        "bnb-fp4",
        "bnb-fp4-dq",
    ] {
        let ckpt = gptoss_formats::load(&fixtures().join("tiny").join(layout)).unwrap();
        let out = dir.join(format!("{layout}.gguf"));
        write_checkpoint(&ckpt, OutType::F32, &out).unwrap();
        let (back, _) = load(&out);
        let own = values(&ckpt.weights);
        for (k, v) in values(&back) {
            assert_eq!(v, own[&k], "{layout}: {k}");
            if !layout.starts_with("bnb") {
                assert_eq!(v, reference[&k], "{layout}: {k} vs llama.cpp");
            }
        }
    }
}
