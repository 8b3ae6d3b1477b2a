//! Hostile checkpoints (issue 13): sizes in configs and GGUF metadata that once aborted the process or
//! used gigabytes, shard paths that leave the model folder, a corrupt `.gguf` reported as something
//! else, and error messages that grew with the file. Each now ends in a clear error naming the field.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod gguf_util;
mod st_util;

use gguf_util::{scratch_dir, tiny_metadata, tiny_tensors, write_gguf};
use gptoss_formats::gguf::container::{Array, GgufFile, Value};
use serde_json::json;

fn gguf_with(test: &str, edit: impl FnOnce(&mut Vec<(String, Value)>)) -> std::path::PathBuf {
    let mut meta = tiny_metadata();
    edit(&mut meta);
    let path = scratch_dir(test).join("m.gguf");
    write_gguf(&path, &meta, &tiny_tensors(5));
    path
}

fn set(meta: &mut [(String, Value)], key: &str, v: Value) {
    meta.iter_mut().find(|(k, _)| k == key).unwrap().1 = v;
}

fn load_err(path: &std::path::Path) -> String {
    gptoss_formats::load(path).unwrap_err().to_string()
}

#[test]
fn gguf_sizes_are_bounded_where_they_are_read() {
    for (key, value, test) in [
        ("gpt-oss.block_count", 1_000_000_000u64, "blocks"),
        ("gpt-oss.expert_count", 1_000_000_000, "experts"),
        ("gpt-oss.embedding_length", 1 << 40, "width"),
    ] {
        let path = gguf_with(test, |m| set(m, key, Value::U64(value)));
        let e = load_err(&path);
        assert!(
            e.contains(&format!("`{key}`")) && e.contains("at most"),
            "{key}: {e}"
        );
    }
    let path = gguf_with("split", |m| {
        m.push(("split.count".into(), Value::U64(10_000_000_000)))
    });
    let e = load_err(&path);
    assert!(e.contains("`split.count`") && e.contains("at most"), "{e}");
}

#[test]
fn gguf_expert_count_must_match_the_stacked_tensors() {
    let path = gguf_with("expert-mismatch", |m| {
        set(m, "gpt-oss.expert_count", Value::U32(900))
    });
    let e = load_err(&path);
    assert!(e.contains("the config has 900"), "{e}");
    assert!(e.len() < 20_000, "{} bytes of message", e.len());
}

#[test]
fn gguf_values_that_make_logits_nan_are_refused() {
    for (key, v) in [
        ("gpt-oss.rope.freq_base", Value::F32(0.0)),
        (
            "gpt-oss.attention.layer_norm_rms_epsilon",
            Value::F32(-1e-5),
        ),
        ("gpt-oss.rope.scaling.factor", Value::F32(0.0)),
    ] {
        let path = gguf_with("nan", |m| set(m, key, v.clone()));
        let e = load_err(&path);
        assert!(e.contains("must be a finite number"), "{key}: {e}");
    }
}

#[test]
fn a_gguf_with_a_bad_magic_is_reported_as_a_gguf() {
    let path = gguf_with("magic", |_| {});
    let mut b = std::fs::read(&path).unwrap();
    b[..4].copy_from_slice(b"GGML");
    std::fs::write(&path, &b).unwrap();
    let e = load_err(&path);
    assert!(e.contains("not a GGUF file"), "{e}");
    assert!(!e.contains("config.json"), "{e}");
}

#[test]
fn large_metadata_arrays_are_stored_compactly() {
    let n = 16 << 20;
    let path = gguf_with("array", |m| {
        m.push(("x.bytes".into(), Value::Array(Array::U8(vec![7; n]))))
    });
    let f = GgufFile::open(&path).unwrap();
    // One byte per element: the array is a Vec<u8>, not a Vec of 32-byte values.
    match f.get("x.bytes") {
        Some(Value::Array(Array::U8(v))) => assert!(v.len() == n && v[n - 1] == 7),
        other => panic!("{:?}", other.map(Value::type_name)),
    }
}

#[test]
fn many_problems_make_a_bounded_message() {
    let path = scratch_dir("problems").join("m.gguf");
    let mut tensors = tiny_tensors(6);
    for i in 0..500 {
        let mut extra = tensors[1].clone();
        extra.0.name = format!("junk.{i}.weight");
        tensors.push(extra);
    }
    write_gguf(&path, &tiny_metadata(), &tensors);
    let e = load_err(&path);
    assert!(
        e.contains("500 problem(s)") && e.contains("and 460 more"),
        "{e}"
    );
    assert!(e.len() < 40 * 400, "{} bytes", e.len());
}

mod safetensors {
    use super::st_util::*;
    use super::*;

    fn hf_dir(name: &str) -> std::path::PathBuf {
        let dir = temp_dir(name);
        write_config(&dir, &hf_config());
        write_st(&dir.join("model.safetensors"), &Tiny::new(3).hf_mxfp4());
        dir
    }

    #[test]
    fn shard_paths_stay_in_the_model_folder() {
        for shard in [
            "../model.safetensors",
            "/etc/passwd",
            "sub/model.safetensors",
        ] {
            let dir = hf_dir("confine");
            let index = json!({"weight_map": {"lm_head.weight": shard}});
            std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
            let e = err_text(&dir);
            assert!(
                e.contains("is not a file name in the model folder"),
                "{shard}: {e}"
            );
        }
    }

    #[test]
    fn config_counts_are_checked_against_the_tensors_present() {
        for (field, value, want) in [
            (
                "num_local_experts",
                1000,
                "stacks Some(3) experts, the config has 1000",
            ),
            ("num_hidden_layers", 900, "holds tensors of 2 layers"),
            ("num_local_experts", 1_000_000_000, "at most 1024"),
        ] {
            let dir = hf_dir("counts");
            let mut cfg = hf_config();
            cfg[field] = json!(value);
            if field == "num_hidden_layers" {
                cfg["layer_types"] = json!(vec!["full_attention"; value]);
            }
            write_config(&dir, &cfg);
            let e = err_text(&dir);
            assert!(e.contains(want), "{field} = {value}: {e}");
            assert!(e.len() < 20_000, "{} bytes", e.len());
        }
    }
}
