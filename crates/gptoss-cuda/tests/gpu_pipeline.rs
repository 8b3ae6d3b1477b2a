//! Pipeline split by layers on one GPU (issue 15, before multi-GPU machines are lent): two or three
//! `CudaBackend` instances on the same card, each with its own stream, its own memory meter and budget,
//! its layers' weights and KV cache, act as "virtual devices"; the split model must give the one-device
//! logits (within 1e-5 of the largest) and the same greedy tokens, including under the scheduler with two
//! sequences and prefix caching, with CUDA graphs recorded and replayed per stage. The hidden state
//! crosses between stages through the host. Needs a GPU (scripts/gpu-check.sh).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::{mpsc, Arc};

use gptoss_cuda::{CudaBackend, CudaOptions};
use gptoss_engine::scheduler::{
    channel_sink, Engine, EngineConfig, EngineStats, GenRequest, Output, PrefixCaching, RequestId,
    RequestOptions,
};
use gptoss_engine::{
    generate, Batch, Capacity, ExpertPlacement, GenerateOptions, LayerSplit, Model, SamplingParams,
};
use gptoss_formats::{ModelConfig, ModelWeights};

/// gpt-oss-20b's widths (a hidden state of 2,880 floats, 32 experts) with 4 layers and a small vocabulary.
fn narrow_20b() -> ModelConfig {
    let mut c = ModelConfig::gpt_oss_20b();
    c.num_hidden_layers = 4;
    c.layer_types = gptoss_formats::config::alternating_layer_types(4, 2);
    c.vocab_size = 8192;
    c
}

fn fixture() -> ModelWeights {
    let dir = [
        Path::new("tests/fixtures/tiny/hf-mxfp4").to_path_buf(),
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny/hf-mxfp4"),
    ]
    .into_iter()
    .find(|p| p.is_dir())
    .unwrap();
    gptoss_formats::load(&dir).unwrap().weights
}

fn capacity() -> Capacity {
    Capacity {
        max_batch_tokens: 32,
        max_logit_rows: 32,
        slots: 2,
        context_tokens: 256,
        kv_blocks: None,
    }
}

fn cuda(budget: Option<u64>) -> CudaBackend {
    let mut o = CudaOptions::from_env().unwrap();
    o.max_vram_bytes = budget;
    CudaBackend::new(&o).unwrap()
}

/// The model on `counts.len()` backends of the same GPU, each with `budget`.
fn split(w: &ModelWeights, counts: &[usize], budget: Option<u64>) -> Model<CudaBackend> {
    let s = LayerSplit::from_counts(counts, w.config.num_hidden_layers).unwrap();
    let backends = counts.iter().map(|_| cuda(budget)).collect();
    let all = ExpertPlacement::all_on_device();
    Model::pipeline(backends, &s, w, capacity(), &all).unwrap()
}

fn prompt(n: usize, vocab: usize, salt: usize) -> Vec<u32> {
    (0..n)
        .map(|i| ((i * 7919 + 13 + salt * 101) % vocab) as u32)
        .collect()
}

/// Logits of every position of a 24-token prompt, then 16 greedy tokens.
fn run(m: &mut Model<CudaBackend>, p: &[u32]) -> (Vec<f32>, Vec<u32>) {
    let n = p.len();
    let mut batch = Batch::single(p, 0, m.solo_table());
    batch.logit_rows = (0..n as u32).collect();
    m.forward(&batch).unwrap();
    let logits = m.logits(n).unwrap();
    let opts = GenerateOptions {
        max_new_tokens: 16,
        sampling: SamplingParams::default(),
        stop_tokens: vec![],
    };
    let (greedy, _) = generate(m, p, &opts, |_| {}).unwrap();
    (logits, greedy)
}

/// Worst max |Δ| / max |logit| over the positions.
fn worst(a: &[f32], b: &[f32], vocab: usize) -> f32 {
    a.chunks(vocab)
        .zip(b.chunks(vocab))
        .map(|(x, y)| {
            let scale = y.iter().fold(0f32, |m, v| m.max(v.abs()));
            x.iter().zip(y).fold(0f32, |m, (p, q)| m.max((p - q).abs())) / scale
        })
        .fold(0f32, f32::max)
}

/// The budget each virtual device is opened with.
#[derive(Clone, Copy)]
enum Budget {
    /// The card's memory (a tiny model's stages are mostly workspace, which every stage holds).
    Card,
    /// Below what the whole model took on one device: its layers' share plus half a layer. The split
    /// fits only because each stage holds just its layers, counted by its own meter.
    LayerShare,
}

fn check(name: &str, w: &ModelWeights, splits: &[&[usize]], budget: Budget) {
    let vocab = w.config.vocab_size;
    let p = prompt(24, vocab, 0);
    let mut one = Model::new(cuda(None), w, capacity()).unwrap();
    let one_used = one.backend().memory_in_use().0;
    let (want_logits, want_greedy) = run(&mut one, &p);
    assert!(want_logits.iter().all(|x| x.is_finite()));
    drop(one);
    for &counts in splits {
        let stages = counts.len() as u64;
        let layers = w.config.num_hidden_layers as u64;
        let most = counts.iter().max().copied().unwrap_or(0) as u64;
        let budget = match budget {
            Budget::Card => None,
            Budget::LayerShare => Some(one_used * (2 * most + 1) / (2 * layers)),
        };
        let mut m = split(w, counts, budget);
        let used: Vec<u64> = m.backends().map(|b| b.memory_in_use().0).collect();
        let cap = budget.unwrap_or(u64::MAX);
        assert!(used.iter().all(|&u| u <= cap && u > 0), "{used:?}");
        let (logits, greedy) = run(&mut m, &p);
        let err = worst(&logits, &want_logits, vocab);
        let graphs: Vec<(usize, u64)> = m.backends().map(|b| b.graph_counts()).collect();
        println!(
            "{name} split {counts:?} ({stages} virtual devices, budget {budget:?} B each, one device used {one_used} B, in use {used:?}): \
             worst rel logit diff {err:.2e} ({}), greedy {}, graphs (recorded, replayed) per stage {graphs:?}",
            if logits == want_logits { "bit-identical" } else { "not bit-identical" },
            if greedy == want_greedy { "identical" } else { "DIFFERS" }
        );
        assert!(err <= 1e-5, "{name} {counts:?}: {err}");
        assert_eq!(greedy, want_greedy, "{name} {counts:?}");
        if CudaOptions::from_env().unwrap().graphs {
            assert!(
                graphs.iter().all(|&(_, replayed)| replayed > 0),
                "{graphs:?}"
            );
        }
    }
}

#[test]
#[ignore = "needs GPU"]
fn virtual_devices_match_one_gpu_20b_widths() {
    let w = gptoss_formats::dummy::dummy_weights(&narrow_20b(), 11);
    check(
        "dummy 20b widths, 4 layers",
        &w,
        &[&[2, 2], &[1, 3], &[1, 2, 1]],
        Budget::LayerShare,
    );
}

#[test]
#[ignore = "needs GPU"]
fn virtual_devices_match_one_gpu_fixture() {
    check(
        "tiny hf-mxfp4",
        &fixture(),
        &[&[1, 2], &[2, 1], &[1, 1, 1]],
        Budget::Card,
    );
}

/// Two requests at once, sampled (temperature 0.7), then a third repeating the first's prompt (prefix
/// caching restores KV blocks in every stage): the tokens of each.
fn serve(m: &mut Model<CudaBackend>) -> Vec<Vec<u32>> {
    let config = EngineConfig {
        prefix_caching: PrefixCaching::On,
        ..EngineConfig::default()
    };
    let vocab = m.config().vocab_size;
    let mut engine = Engine::new(m, config, Arc::new(EngineStats::default()));
    let prompts = [
        prompt(40, vocab, 1),
        prompt(23, vocab, 2),
        prompt(40, vocab, 1),
    ];
    let mut out = Vec::new();
    let mut next_id = 10;
    for round in [&prompts[..2], &prompts[2..]] {
        let rxs: Vec<_> = round
            .iter()
            .map(|p| {
                let (tx, rx) = mpsc::channel();
                next_id += 1;
                let id = next_id;
                let req = GenRequest {
                    prompt: p.clone(),
                    sampling: SamplingParams {
                        temperature: 0.7,
                        seed: id,
                        ..SamplingParams::default()
                    },
                    max_new_tokens: 12,
                    stop_tokens: vec![],
                };
                engine.submit_with(
                    RequestId(id),
                    req,
                    RequestOptions::default(),
                    channel_sink(tx),
                );
                rx
            })
            .collect();
        while engine.has_work() {
            engine.try_step().unwrap();
        }
        for rx in rxs {
            let tokens = rx
                .try_iter()
                .filter_map(|o| match o {
                    Output::Token(t) => Some(t),
                    _ => None,
                })
                .collect();
            out.push(tokens);
        }
    }
    out
}

#[test]
#[ignore = "needs GPU"]
fn the_scheduler_serves_virtual_devices_alike() {
    let w = gptoss_formats::dummy::dummy_weights(&narrow_20b(), 12);
    let want = serve(&mut Model::new(cuda(None), &w, capacity()).unwrap());
    assert!(want.iter().all(|t| t.len() == 12), "{want:?}");
    let got = serve(&mut split(&w, &[1, 3], None));
    println!("scheduler, 2 requests then 1 cached: one GPU {want:?}, split [1, 3] {got:?}");
    assert_eq!(got, want);
}
