//! Error paths of the safetensors reader: each bad checkpoint fails with a message naming the file,
//! the tensor and what was expected versus found, and every offending name is listed at once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod st_util;

use st_util::*;

/// Writes the tiny HF MXFP4 model after `edit` changes its tensor list.
fn hf_with(name: &str, edit: impl FnOnce(&mut Vec<T>)) -> std::path::PathBuf {
    let dir = temp_dir(name);
    write_config(&dir, &hf_config());
    let mut ts = Tiny::new(21).hf_mxfp4();
    edit(&mut ts);
    write_st(&dir.join("model.safetensors"), &ts);
    dir
}

fn rename(ts: &mut [T], from: &str, to: &str) {
    let x = ts
        .iter_mut()
        .find(|x| x.name == from)
        .unwrap_or_else(|| panic!("no {from}"));
    x.name = to.to_string();
}

#[test]
fn every_unknown_name_is_listed() {
    let dir = hf_with("unknown", |ts| {
        ts.push(t(
            "model.layers.0.mlp.experts.extra_scale",
            "F32",
            &[1],
            f32s(&[1.0]),
        ));
        ts.push(t(
            "model.visual.patch_embed.weight",
            "BF16",
            &[2],
            bf16s(&[1.0, 2.0]),
        ));
        rename(
            ts,
            "model.layers.1.self_attn.sinks",
            "model.layers.1.self_attn.sink",
        );
    });
    let e = err_text(&dir);
    for name in [
        "model.layers.0.mlp.experts.extra_scale",
        "model.visual.patch_embed.weight",
        "model.layers.1.self_attn.sink",
    ] {
        assert!(
            e.contains(&format!(
                "model.safetensors: {name}: not a known gpt-oss tensor name"
            )),
            "{name}: {e}"
        );
    }
    assert!(e.contains("3 problem(s)"), "{e}");
}

#[test]
fn missing_tensors_are_listed_with_expected_shape() {
    let dir = hf_with("missing", |ts| {
        ts.retain(|x| {
            x.name != "model.layers.1.self_attn.q_proj.weight"
                && x.name != "model.layers.0.self_attn.sinks"
        });
    });
    let e = err_text(&dir);
    assert!(
        e.contains("missing `layers.1.q.weight` (expected shape [64, 64])"),
        "{e}"
    );
    assert!(
        e.contains("missing `layers.0.sinks` (expected shape [4])"),
        "{e}"
    );
}

#[test]
fn shape_mismatch_names_origin_expected_and_found() {
    let dir = hf_with("shape", |ts| {
        let k = ts
            .iter_mut()
            .find(|x| x.name == "model.layers.0.self_attn.k_proj.weight")
            .unwrap();
        k.shape = vec![KV / 2, H];
        k.bytes.truncate(KV / 2 * H * 2);
    });
    let e = err_text(&dir);
    assert!(
        e.contains("model.safetensors: model.layers.0.self_attn.k_proj.weight (`layers.0.k.weight`): expected shape [32, 64], found [16, 64] bf16"),
        "{e}"
    );
}

#[test]
fn unsupported_dtype_names_file_tensor_and_dtype() {
    let dir = hf_with("dtype", |ts| {
        let q = ts
            .iter_mut()
            .find(|x| x.name == "model.layers.0.self_attn.q_proj.weight")
            .unwrap();
        q.dtype = "I32";
        q.shape = vec![Q, H / 2];
    });
    let e = err_text(&dir);
    assert!(
        e.contains("model.safetensors: model.layers.0.self_attn.q_proj.weight: dtype I32 is not supported here (expected BF16, F16, F32 or F8_E5M2)"),
        "{e}"
    );
}

#[test]
fn absent_shard_named_by_the_index() {
    let dir = temp_dir("absent-shard");
    write_config(&dir, &hf_config());
    let ts = Tiny::new(21).hf_mxfp4();
    write_st(&dir.join("model-00001-of-00002.safetensors"), &ts);
    let mut map = serde_json::Map::new();
    for x in &ts {
        map.insert(
            x.name.clone(),
            serde_json::json!("model-00001-of-00002.safetensors"),
        );
    }
    map.insert(
        "lm_head.weight".into(),
        serde_json::json!("model-00002-of-00002.safetensors"),
    );
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        serde_json::json!({"weight_map": map}).to_string(),
    )
    .unwrap();
    let e = err_text(&dir);
    assert!(e.contains("model.safetensors.index.json: lists shard `model-00002-of-00002.safetensors` (1 tensors, e.g. `lm_head.weight`), which does not exist"), "{e}");
}

#[test]
fn index_entry_missing_from_its_shard() {
    let dir = temp_dir("index-liar");
    write_config(&dir, &hf_config());
    let ts = Tiny::new(21).hf_mxfp4();
    write_st(&dir.join("a.safetensors"), &ts);
    let mut map = serde_json::Map::new();
    for x in &ts {
        map.insert(x.name.clone(), serde_json::json!("a.safetensors"));
    }
    map.insert(
        "model.layers.7.self_attn.q_proj.weight".into(),
        serde_json::json!("a.safetensors"),
    );
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        serde_json::json!({"weight_map": map}).to_string(),
    )
    .unwrap();
    let e = err_text(&dir);
    assert!(e.contains("places `model.layers.7.self_attn.q_proj.weight` in a.safetensors, which does not contain it"), "{e}");
}

#[test]
fn mixed_expert_layouts_are_refused() {
    let dir = hf_with("mixed", |ts| {
        ts.push(t(
            "model.layers.0.mlp.experts.gate_up_projs.0.weight",
            "BF16",
            &[2 * I, H],
            bf16s(&vec![0.0; 2 * I * H]),
        ));
    });
    let e = err_text(&dir);
    assert!(e.contains("mixes expert layouts"), "{e}");
    assert!(
        e.contains("gate_up_projs.0.weight (mlp.experts.gate_up_projs.{e})"),
        "{e}"
    );
}

#[test]
fn mixed_hf_and_original_names_are_refused() {
    let dir = hf_with("mixed-naming", |ts| {
        ts.push(t("block.0.attn.sinks", "BF16", &[4], bf16s(&[0.0; 4])));
    });
    let e = err_text(&dir);
    assert!(
        e.contains("mixes HF names") && e.contains("block.0.attn.sinks"),
        "{e}"
    );
}

#[test]
fn no_expert_tensors_at_all() {
    let dir = hf_with("no-experts", |ts| {
        ts.retain(|x| !x.name.contains(".experts."))
    });
    let e = err_text(&dir);
    assert!(e.contains("no expert tensors found"), "{e}");
}

#[test]
fn mxfp4_blocks_without_scales_and_bad_block_shape() {
    let dir = hf_with("no-scales", |ts| {
        ts.retain(|x| x.name != "model.layers.1.mlp.experts.down_proj_scales");
        let b = ts
            .iter_mut()
            .find(|x| x.name == "model.layers.0.mlp.experts.down_proj_scales")
            .unwrap();
        b.shape = vec![E, H / 2, 2];
    });
    let e = err_text(&dir);
    assert!(
        e.contains("model.layers.1.mlp.experts.down_proj_blocks: no matching MXFP4 scales tensor"),
        "{e}"
    );
    assert!(e.contains("expected blocks [E, rows, G, 16] and scales [E, rows, G], found [3, 64, 1, 16] and [3, 32, 2]"), "{e}");
}

#[test]
fn two_names_for_one_canonical_tensor() {
    let dir = hf_with("dup-router", |ts| {
        let r = ts
            .iter()
            .find(|x| x.name == "model.layers.0.mlp.router.weight")
            .unwrap();
        let copy = t(
            "model.layers.0.mlp.router.linear.weight",
            r.dtype,
            &r.shape,
            r.bytes.clone(),
        );
        ts.push(copy);
    });
    let e = err_text(&dir);
    assert!(e.contains("both map to `layers.0.router.weight`"), "{e}");
}

#[test]
fn split_gate_without_up() {
    let dir = temp_dir("gate-no-up");
    write_config(&dir, &hf_config());
    let mut ts = Tiny::new(21).hf_plain();
    ts.push(t(
        "model.layers.0.mlp.experts.0.gate_proj.weight",
        "BF16",
        &[I, H],
        bf16s(&vec![0.5; I * H]),
    ));
    write_st(&dir.join("model.safetensors"), &ts);
    let e = err_text(&dir);
    assert!(
        e.contains(
            "0.gate_proj.weight: no matching up projection for `layers.0.experts.0.gate_up.weight`"
        ),
        "{e}"
    );
}

#[test]
fn truncated_file_and_missing_config() {
    let dir = hf_with("truncated", |_| {});
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
    let e = err_text(&dir);
    assert!(
        e.contains("model.safetensors: tensor `") && e.contains("outside the"),
        "{e}"
    );
    std::fs::remove_file(dir.join("config.json")).unwrap();
    let e = err_text(&path);
    assert!(e.contains("no config.json"), "{e}");
}
