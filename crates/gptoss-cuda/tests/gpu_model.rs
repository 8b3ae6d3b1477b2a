//! Whole-model checks on the GPU: CUDA logits against CPU logits at every prompt position and identical
//! greedy continuations, for random weights of a tiny config and for every loadable fixture under
//! tests/fixtures/tiny; the `--max-vram` refusal. Needs a GPU (scripts/gpu-check.sh).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use gptoss_cuda::{CudaBackend, CudaOptions};
use gptoss_engine::memory::{plan, weights_bytes, KvPrecision};
use gptoss_engine::{
    generate, Backend, Batch, Capacity, CpuBackend, GenerateOptions, Model, SamplingParams,
};
use gptoss_formats::{ModelConfig, ModelWeights};

fn tiny_config() -> ModelConfig {
    let mut c = ModelConfig::gpt_oss_20b();
    c.num_hidden_layers = 3;
    c.layer_types = gptoss_formats::config::alternating_layer_types(3, 2);
    c.num_local_experts = 4;
    c.num_experts_per_tok = 2;
    c.vocab_size = 512;
    c.hidden_size = 64;
    c.intermediate_size = 96;
    c.head_dim = 16;
    c.num_attention_heads = 4;
    c.num_key_value_heads = 2;
    c.sliding_window = 8;
    c
}

fn prompt(n: usize, vocab: usize) -> Vec<u32> {
    (0..n).map(|i| ((i * 7919 + 13) % vocab) as u32).collect()
}

/// Logits of every prompt position and 16 greedy tokens.
fn run<B: Backend>(b: B, w: &ModelWeights, prompt: &[u32]) -> (Vec<f32>, Vec<u32>) {
    let n = prompt.len();
    let cap = Capacity {
        max_batch_tokens: n,
        max_logit_rows: n,
        slots: 1,
        context_tokens: 64,
    };
    let mut m = Model::new(b, w, cap).unwrap();
    let mut batch = Batch::single(prompt, 0, 0);
    batch.logit_rows = (0..n as u32).collect();
    m.forward(&batch).unwrap();
    let logits = m.logits(n).unwrap();
    let opts = GenerateOptions {
        max_new_tokens: 16,
        sampling: SamplingParams::default(),
        stop_tokens: vec![],
    };
    let (greedy, _) = generate(&mut m, prompt, &opts, |_| {}).unwrap();
    (logits, greedy)
}

/// Worst per-position max |Δ| / max |logit| and whether the greedy tokens agree.
fn compare(w: &ModelWeights, prompt: &[u32], kv: KvPrecision) -> (f32, Vec<u32>, Vec<u32>) {
    let mut o = CudaOptions::from_env().unwrap();
    o.kv = kv;
    let (gl, gg) = run(CudaBackend::new(&o).unwrap(), w, prompt);
    let (cl, cg) = run(CpuBackend, w, prompt);
    let v = w.config.vocab_size;
    assert!(gl.iter().all(|x| x.is_finite()));
    let worst = gl
        .chunks(v)
        .zip(cl.chunks(v))
        .map(|(g, c)| {
            let scale = c.iter().fold(0f32, |m, x| m.max(x.abs()));
            g.iter().zip(c).fold(0f32, |m, (a, b)| m.max((a - b).abs())) / scale
        })
        .fold(0f32, f32::max);
    (worst, gg, cg)
}

#[test]
#[ignore = "needs GPU"]
fn dummy_tiny_model_matches_cpu() {
    let w = gptoss_formats::dummy::dummy_weights(&tiny_config(), 5);
    let p = prompt(24, 512);
    for (kv, tol) in [(KvPrecision::F32, 1e-4), (KvPrecision::Bf16, 1e-2)] {
        let (worst, g, c) = compare(&w, &p, kv);
        println!("dummy tiny (MXFP4 experts, bf16 dense) kv {kv:?}: worst rel logit err {worst:.2e}, greedy {}", if g == c { "identical" } else { "DIFFERS" });
        assert!(worst <= tol, "{worst}");
        assert_eq!(g, c);
    }
}

fn fixture_paths() -> Vec<PathBuf> {
    // From the repo root (scripts/gpu-check.sh), else relative to this crate.
    let root = [
        Path::new("tests/fixtures/tiny").to_path_buf(),
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny"),
    ]
    .into_iter()
    .find(|p| p.is_dir())
    .unwrap_or_default();
    let mut out = Vec::new();
    for e in std::fs::read_dir(&root).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() && p.file_name().is_some_and(|n| n == "gguf") {
            for g in std::fs::read_dir(&p).into_iter().flatten().flatten() {
                if g.path().extension().is_some_and(|x| x == "gguf") {
                    out.push(g.path());
                }
            }
        } else if p.is_dir() {
            out.push(p);
        }
    }
    out.sort();
    out
}

#[test]
#[ignore = "needs GPU"]
fn every_fixture_matches_cpu() {
    let mut compared = 0;
    let mut failures = Vec::new();
    for path in fixture_paths() {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let ckpt = match gptoss_formats::load(&path) {
            Ok(c) => c,
            Err(e) => {
                failures.push(format!("{name}: does not load: {e}"));
                continue;
            }
        };
        let p = prompt(24, ckpt.weights.config.vocab_size.min(486));
        // The criterion, with the f32 KV cache (the kernels' own error); the bf16 cache's error is
        // reported beside it (the tiny random fixtures have unusually peaky attention, see bench/NOTES.md).
        let (worst, g, c) = compare(&ckpt.weights, &p, KvPrecision::F32);
        let (worst_bf16, g_bf16, _) = compare(&ckpt.weights, &p, KvPrecision::Bf16);
        println!(
            "fixture {name}: worst rel logit err {worst:.2e} (f32 KV), {worst_bf16:.2e} (bf16 KV); greedy {} (f32 KV), {} (bf16 KV)",
            if g == c { "identical" } else { "DIFFERS" },
            if g_bf16 == c { "identical" } else { "differs" }
        );
        compared += 1;
        if worst > 1e-2 || g != c {
            failures.push(format!(
                "{name}: worst {worst:.2e}, greedy {}",
                if g == c { "same" } else { "differs" }
            ));
        }
    }
    println!("{compared} fixtures compared");
    assert!(failures.is_empty(), "mismatching fixtures: {failures:?}");
    assert!(
        compared >= 21,
        "expected every fixture (21), compared {compared}"
    );
}

#[test]
#[ignore = "needs GPU"]
fn max_vram_refuses_with_numbers_and_plan_bounds_use() {
    let w = gptoss_formats::dummy::dummy_weights(&tiny_config(), 6);
    let cap = Capacity {
        max_batch_tokens: 24,
        max_logit_rows: 24,
        slots: 1,
        context_tokens: 64,
    };
    let p = plan(&w.config, weights_bytes(&w), &cap, KvPrecision::Bf16);
    let mut o = CudaOptions::from_env().unwrap();
    o.max_vram_bytes = Some(p.total_bytes() / 2);
    let b = CudaBackend::new(&o).unwrap();
    let e = b.check_plan(&p).unwrap_err().to_string();
    assert!(
        e.contains("the model needs") && e.contains("KV cache"),
        "{e}"
    );
    let e = Model::new(b, &w, cap)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        e.contains("device memory budget exceeded") && e.contains("cap"),
        "{e}"
    );
    o.max_vram_bytes = Some(p.total_bytes());
    let b = CudaBackend::new(&o).unwrap();
    b.check_plan(&p).unwrap();
    let mut m = Model::new(b, &w, cap).unwrap();
    let toks = prompt(24, 512);
    let mut batch = Batch::single(&toks, 0, 0);
    batch.logit_rows = (0..24).collect();
    m.forward(&batch).unwrap();
    m.sample(
        &[SamplingParams {
            temperature: 1.0,
            ..Default::default()
        }],
        &[0],
    )
    .unwrap();
    let (used, peak) = m.backend().memory_in_use();
    println!("tiny model: plan {p}; in use {used} bytes, peak {peak} bytes");
    assert!(
        peak <= p.total_bytes(),
        "peak {peak} above the plan {}",
        p.total_bytes()
    );
    assert!(p.weights_bytes + p.kv_cache_bytes <= used);
}

#[test]
#[ignore = "needs GPU"]
fn too_old_or_too_new_arch_is_a_clear_error() {
    let mut o = CudaOptions::from_env().unwrap();
    o.arch_override = Some(75);
    let e = CudaBackend::new(&o)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        e.contains("sm_75") && e.contains("8.0 (Ampere) or newer"),
        "{e}"
    );
    o.arch_override = Some(120);
    let e = CudaBackend::new(&o)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("newer than this GPU"), "{e}");
    println!("arch errors: {e}");
}
