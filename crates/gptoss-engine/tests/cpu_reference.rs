//! The CPU backend against HF transformers: every fixture checkpoint in `tests/fixtures/tiny` (every
//! layout) must give transformers' float32 logits at every prompt position (max |Δ| ≤ 1e-3 × max |logit|)
//! and the same 16-token greedy continuation.

use std::path::{Path, PathBuf};

use gptoss_engine::{
    generate, Batch, Capacity, CpuBackend, GenerateOptions, Model, SamplingParams,
};

struct Reference {
    prompt: Vec<u32>,
    logits: Vec<Vec<f32>>,
    greedy: Vec<u32>,
}

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny")
}

fn read_reference(path: &Path) -> Reference {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let ids = |key: &str| -> Vec<u32> {
        v[key]
            .as_array()
            .unwrap_or_else(|| panic!("{}: no `{key}`", path.display()))
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    let logits = v["logits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        })
        .collect();
    Reference {
        prompt: ids("prompt"),
        logits,
        greedy: ids("greedy"),
    }
}

/// Every (checkpoint, reference) pair under the fixtures: model dirs with `reference.json`, and
/// `*.gguf` files with `<stem>.reference.json` beside them.
fn fixture_cases() -> Vec<(PathBuf, PathBuf)> {
    let mut cases = Vec::new();
    let mut dirs = vec![fixtures_dir()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let p = entry.path();
            if p.is_dir() {
                if p.join("reference.json").is_file() {
                    cases.push((p.clone(), p.join("reference.json")));
                }
                dirs.push(p);
            } else if p.extension().is_some_and(|e| e == "gguf") {
                let reference = p.with_extension("reference.json");
                if reference.is_file() {
                    cases.push((p, reference));
                }
            }
        }
    }
    cases.sort();
    cases
}

fn check_case(model_path: &Path, reference_path: &Path) -> Result<(), String> {
    let r = read_reference(reference_path);
    let ckpt = gptoss_formats::load(model_path).map_err(|e| format!("load: {e}"))?;
    let n = r.prompt.len();
    let cap = Capacity {
        max_batch_tokens: n,
        max_logit_rows: n,
        slots: 1,
        context_tokens: n + r.greedy.len() + 1,
        kv_blocks: None,
    };
    let mut model = Model::new(CpuBackend, &ckpt.weights, cap).map_err(|e| e.to_string())?;
    let mut batch = Batch::single(&r.prompt, 0, model.solo_table());
    batch.logit_rows = (0..n as u32).collect();
    model.forward(&batch).map_err(|e| e.to_string())?;
    let vocab = model.config().vocab_size;
    let got = model.logits(n).map_err(|e| e.to_string())?;
    for (pos, want) in r.logits.iter().enumerate() {
        let row = &got[pos * vocab..(pos + 1) * vocab];
        let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
        let diff = row
            .iter()
            .zip(want)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        if diff.is_nan() || diff > 1e-3 * scale {
            return Err(format!(
                "position {pos}: max |Δ| {diff:e} > 1e-3 × max |logit| {scale}"
            ));
        }
    }
    let options = GenerateOptions {
        max_new_tokens: r.greedy.len(),
        sampling: SamplingParams::default(),
        stop_tokens: vec![],
    };
    let (tokens, _) =
        generate(&mut model, &r.prompt, &options, |_| {}).map_err(|e| e.to_string())?;
    if tokens != r.greedy {
        return Err(format!(
            "greedy continuation {tokens:?}, transformers gives {:?}",
            r.greedy
        ));
    }
    Ok(())
}

#[test]
fn cpu_matches_transformers_on_every_fixture() {
    let cases = fixture_cases();
    assert!(
        cases.len() >= 10,
        "expected the full fixture set under {}, found {} cases",
        fixtures_dir().display(),
        cases.len()
    );
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|(m, r)| {
            check_case(m, r)
                .err()
                .map(|e| format!("{}: {e}", m.display()))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} fixtures differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// Checkpoints holding the same values in different layouts give bit-identical logits.
#[test]
fn equal_valued_layouts_give_identical_logits() {
    let r = read_reference(&fixtures_dir().join("hf-mxfp4/reference.json"));
    let n = r.prompt.len();
    let logits_of = |rel: &str| -> Vec<f32> {
        let ckpt = gptoss_formats::load(&fixtures_dir().join(rel)).unwrap();
        let cap = Capacity {
            max_batch_tokens: n,
            max_logit_rows: n,
            slots: 1,
            context_tokens: n,
            kv_blocks: None,
        };
        let mut model = Model::new(CpuBackend, &ckpt.weights, cap).unwrap();
        let mut batch = Batch::single(&r.prompt, 0, model.solo_table());
        batch.logit_rows = (0..n as u32).collect();
        model.forward(&batch).unwrap();
        model.logits(n).unwrap()
    };
    let base = logits_of("hf-mxfp4");
    for rel in [
        "original",
        "hf-bf16",
        "split-projs",
        "split-weights",
        "split-gate-up",
        "split-mixtral",
        "gguf/tiny-llamacpp-f32.gguf",
        "gguf/tiny-llamacpp-bf16.gguf",
        "gguf/tiny-gguf-fused-gate-up.gguf",
    ] {
        assert!(logits_of(rel) == base, "{rel}: logits differ from hf-mxfp4");
    }
}
