//! The CPU backend against HF transformers: every fixture checkpoint in `tests/fixtures/tiny` (every
//! layout) must give transformers' float32 logits at every prompt position (max |Δ| ≤ 1e-3 × max |logit|)
//! and the same 16-token greedy continuation. The fast CPU path (int8 activations) must stay within
//! 1e-2 × max |logit| of the exact path and give the same greedy continuation, on every instruction set.

use std::path::{Path, PathBuf};

use gptoss_engine::{
    generate, Batch, Capacity, CpuBackend, CpuIsa, CpuKernels, GenerateOptions, Model,
    SamplingParams,
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

/// Logits at every prompt position `[n, vocab]` and the 16-token greedy continuation on `backend`.
fn run_case(
    weights: &gptoss_formats::ModelWeights,
    r: &Reference,
    backend: CpuBackend,
) -> Result<(Vec<f32>, Vec<u32>), String> {
    let n = r.prompt.len();
    let cap = Capacity {
        max_batch_tokens: n,
        max_logit_rows: n,
        slots: 1,
        context_tokens: n + r.greedy.len() + 1,
        kv_blocks: None,
    };
    let mut model = Model::new(backend, weights, cap).map_err(|e| e.to_string())?;
    let mut batch = Batch::single(&r.prompt, 0, model.solo_table());
    batch.logit_rows = (0..n as u32).collect();
    model.forward(&batch).map_err(|e| e.to_string())?;
    let got = model.logits(n).map_err(|e| e.to_string())?;
    let options = GenerateOptions {
        max_new_tokens: r.greedy.len(),
        sampling: SamplingParams::default(),
        stop_tokens: vec![],
    };
    let (tokens, _) =
        generate(&mut model, &r.prompt, &options, |_| {}).map_err(|e| e.to_string())?;
    Ok((got, tokens))
}

/// The largest `max |a - b| / max |b|` over positions.
fn worst_ratio<'a>(a: &[f32], b: impl Iterator<Item = &'a [f32]>, vocab: usize) -> f32 {
    b.zip(a.chunks_exact(vocab))
        .map(|(want, row)| {
            let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
            let diff = row
                .iter()
                .zip(want)
                .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            if diff.is_nan() {
                f32::INFINITY
            } else {
                diff / scale
            }
        })
        .fold(0f32, f32::max)
}

fn check_case(model_path: &Path, reference_path: &Path) -> Result<(), String> {
    let r = read_reference(reference_path);
    let ckpt = gptoss_formats::load(model_path).map_err(|e| format!("load: {e}"))?;
    let (got, tokens) = run_case(&ckpt.weights, &r, CpuBackend)?;
    let vocab = ckpt.weights.config.vocab_size;
    let ratio = worst_ratio(&got, r.logits.iter().map(Vec::as_slice), vocab);
    if ratio > 1e-3 {
        return Err(format!("max |Δ| / max |logit| {ratio:e} > 1e-3"));
    }
    if tokens != r.greedy {
        return Err(format!(
            "greedy continuation {tokens:?}, transformers gives {:?}",
            r.greedy
        ));
    }
    Ok(())
}

/// The fast path on each instruction set against the exact path: the worst ratio over its runs.
fn check_fast_case(model_path: &Path, reference_path: &Path) -> Result<f32, String> {
    let r = read_reference(reference_path);
    let ckpt = gptoss_formats::load(model_path).map_err(|e| format!("load: {e}"))?;
    let vocab = ckpt.weights.config.vocab_size;
    let (exact, exact_tokens) = run_case(&ckpt.weights, &r, CpuBackend)?;
    let mut worst = 0f32;
    for isa in [CpuIsa::Avx512, CpuIsa::Avx2, CpuIsa::Portable] {
        if !isa.supported() {
            continue;
        }
        let backend = CpuBackend::with_kernels(CpuKernels::Fast(isa)).map_err(|e| e.to_string())?;
        let (fast, tokens) = run_case(&ckpt.weights, &r, backend)?;
        let ratio = worst_ratio(&fast, exact.chunks_exact(vocab), vocab);
        if ratio > 1e-2 {
            return Err(format!(
                "{isa:?}: max |Δ| / max |logit| {ratio:e} > 1e-2 against the exact path"
            ));
        }
        if tokens != exact_tokens {
            return Err(format!(
                "{isa:?}: greedy {tokens:?}, the exact path gives {exact_tokens:?}"
            ));
        }
        worst = worst.max(ratio);
    }
    Ok(worst)
}

#[test]
fn fast_path_matches_exact_on_every_fixture() {
    let cases = fixture_cases();
    assert!(cases.len() >= 10, "expected the full fixture set");
    let mut failures = Vec::new();
    for (m, r) in &cases {
        match check_fast_case(m, r) {
            Ok(worst) => eprintln!("{}: worst {worst:.2e}", m.display()),
            Err(e) => failures.push(format!("{}: {e}", m.display())),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} fixtures differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
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
