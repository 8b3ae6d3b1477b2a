//! Pipeline split by layers (`pipeline.rs`) on the tiny fixture model (3 layers, alternating sliding and
//! full attention): two or three `CpuBackend` stages, evenly or unevenly cut, give bit-identical logits
//! to one backend (the stages run the same ops on the same f32 values; the hidden state crosses as an
//! exact f32 copy), through a prefill and greedy decode steps, in traced steps, with host experts (and a
//! hot-expert cache whose slots the stages share out), and
//! under the scheduler with several sequences and prefix caching (which copies KV blocks in every stage).

use std::path::PathBuf;
use std::sync::{mpsc, Arc};

use gptoss_engine::scheduler::{
    channel_sink, Engine, EngineConfig, EngineStats, GenRequest, Output, PrefixCaching, RequestId,
    RequestOptions,
};
use gptoss_engine::{
    Batch, Capacity, CpuBackend, ExpertPlacement, LayerSplit, Model, SamplingParams, TraceSpec,
};
use gptoss_formats::ModelWeights;

fn weights() -> ModelWeights {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny/hf-mxfp4");
    gptoss_formats::load(&dir).unwrap().weights
}

fn capacity() -> Capacity {
    Capacity {
        max_batch_tokens: 16,
        max_logit_rows: 4,
        slots: 4,
        context_tokens: 128,
        kv_blocks: None,
    }
}

/// The model split as `counts` layers per stage, each stage its own `cpu`.
fn split(w: &ModelWeights, counts: &[usize], cpu: CpuBackend) -> Model<CpuBackend> {
    let layers = w.config.num_hidden_layers;
    let split = LayerSplit::from_counts(counts, layers).unwrap();
    let backends = vec![cpu; counts.len()];
    let all = ExpertPlacement::all_on_device();
    Model::pipeline(backends, &split, w, capacity(), &all).unwrap()
}

/// Logits of a 20-token prefill (two steps: the window of 8 wraps the sliding rings) and 8 greedy
/// decode steps, and the greedy tokens.
fn run(model: &mut Model<CpuBackend>) -> (Vec<Vec<f32>>, Vec<u32>) {
    let vocab = model.config().vocab_size;
    let table = model.solo_table();
    let prompt: Vec<u32> = (0..20).map(|i| (i * 53 % 500) as u32 + 1).collect();
    model
        .forward(&Batch::single(&prompt[..16], 0, table.clone()))
        .unwrap();
    model
        .forward(&Batch::single(&prompt[16..], 16, table.clone()))
        .unwrap();
    let mut all = vec![model.logits(1).unwrap()];
    let mut tokens = Vec::new();
    for pos in 20..28u32 {
        let last = all.last().unwrap();
        let next = (0..vocab)
            .max_by(|&a, &b| last[a].total_cmp(&last[b]))
            .unwrap() as u32;
        tokens.push(next);
        model
            .forward(&Batch::single(&[next], pos, table.clone()))
            .unwrap();
        all.push(model.logits(1).unwrap());
    }
    (all, tokens)
}

#[test]
fn two_and_three_stages_give_the_one_backend_logits() {
    let w = weights();
    assert_eq!(w.config.num_hidden_layers, 3);
    let mut one = Model::new(CpuBackend, &w, capacity()).unwrap();
    let want = run(&mut one);
    // The fixture's logits are not all alike (a test that cannot fail would pass on any constant).
    assert!(want.0[0].iter().any(|&v| v != want.0[0][0]));
    for counts in [&[1, 2][..], &[2, 1], &[1, 1, 1]] {
        let mut m = split(&w, counts, CpuBackend);
        assert_eq!(m.split().stages(), counts.len());
        assert_eq!(m.backends().count(), counts.len());
        let got = run(&mut m);
        assert_eq!(got.1, want.1, "greedy tokens, split {counts:?}");
        assert_eq!(got.0, want.0, "logits, split {counts:?}");
    }
}

#[test]
fn fast_kernels_split_alike() {
    let w = weights();
    let fast = CpuBackend::fast();
    let split_model = Model::pipeline(
        vec![fast; 1],
        &LayerSplit::whole(3),
        &w,
        capacity(),
        &ExpertPlacement::all_on_device(),
    );
    let want = run(&mut split_model.unwrap());
    assert_eq!(run(&mut split(&w, &[2, 1], fast)), want);
}

#[test]
fn traced_steps_record_every_layer_once_under_its_model_index() {
    let w = weights();
    let toks = [9u32, 8, 7, 6, 5];
    let spec = TraceSpec {
        rows: &[1, 4],
        nodes: &[],
    };
    let mut one = Model::new(CpuBackend, &w, capacity()).unwrap();
    let batch = Batch {
        logit_rows: vec![4],
        ..Batch::single(&toks, 0, one.solo_table())
    };
    let want = one.forward_traced(&batch, spec).unwrap();
    let layers: std::collections::BTreeSet<_> = want.iter().filter_map(|r| r.layer).collect();
    assert_eq!(layers.len(), 3);
    let mut m = split(&w, &[1, 2], CpuBackend);
    assert_eq!(m.forward_traced(&batch, spec).unwrap(), want);
    assert_eq!(m.logits(1).unwrap(), one.logits(1).unwrap());
}

#[test]
fn host_experts_in_a_split_give_the_device_logits() {
    let w = weights();
    let want = run(&mut Model::new(CpuBackend, &w, capacity()).unwrap());
    // Layers 0 and 1 keep their experts on the host: one in each stage of [1, 2].
    let placement = ExpertPlacement::first_on_host(3, 2);
    let split = LayerSplit::from_counts(&[1, 2], 3).unwrap();
    let mut m = Model::pipeline(vec![CpuBackend; 2], &split, &w, capacity(), &placement).unwrap();
    assert_eq!(run(&mut m), want);
}

#[test]
fn a_bad_split_is_refused_with_its_numbers() {
    let w = weights();
    let all = ExpertPlacement::all_on_device();
    let even = LayerSplit::even(3, 2).unwrap();
    let e = Model::pipeline(vec![CpuBackend; 3], &even, &w, capacity(), &all)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("2 stages") && e.contains("3 backends"), "{e}");
    let e = LayerSplit::from_counts(&[1, 1], 3).unwrap_err().to_string();
    assert!(e.contains("covers 2 layers"), "{e}");
}

/// Requests sampled at temperature 1 with their log-probabilities (equal outputs mean equal logits),
/// run together by the scheduler with prefix caching: a repeated prompt restores KV blocks.
fn serve(m: &mut Model<CpuBackend>) -> Vec<Vec<u32>> {
    let config = EngineConfig {
        prefix_caching: PrefixCaching::On,
        ..EngineConfig::default()
    };
    let mut engine = Engine::new(m, config, Arc::new(EngineStats::default()));
    let prompt = |len: usize, salt: usize| -> Vec<u32> {
        (0..len)
            .map(|j| ((salt * 31 + j * 17) % 480) as u32 + 1)
            .collect()
    };
    let prompts = [prompt(40, 1), prompt(23, 2), prompt(40, 1), prompt(9, 3)];
    let mut out = Vec::new();
    // The first two together, then two more (the third repeats the first's prompt).
    for (round, pair) in prompts.chunks(2).enumerate() {
        let rxs: Vec<_> = pair
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let (tx, rx) = mpsc::channel();
                let req = GenRequest {
                    prompt: p.clone(),
                    sampling: SamplingParams {
                        temperature: 1.0,
                        top_p: 1.0,
                        top_k: 0,
                        seed: (round * 2 + i) as u64,
                    },
                    max_new_tokens: 10,
                    stop_tokens: vec![],
                };
                let mut opts = RequestOptions::default();
                opts.logits.logprobs = Some(0);
                engine.submit_with(
                    RequestId((round * 2 + i) as u64),
                    req,
                    opts,
                    channel_sink(tx),
                );
                rx
            })
            .collect();
        while engine.has_work() {
            engine.try_step().unwrap();
        }
        for rx in rxs {
            let mut got = Vec::new();
            for o in rx.try_iter() {
                match o {
                    Output::Token(t) => got.push(t),
                    Output::Logprobs(lp) => got.push(lp.logprob.to_bits()),
                    _ => {}
                }
            }
            out.push(got);
        }
    }
    out
}

#[test]
fn the_scheduler_serves_a_split_model_alike() {
    let w = weights();
    let want = serve(&mut Model::new(CpuBackend, &w, capacity()).unwrap());
    assert!(want.iter().all(|t| t.len() == 20), "{want:?}");
    assert_eq!(serve(&mut split(&w, &[2, 1], CpuBackend)), want);
    assert_eq!(serve(&mut split(&w, &[1, 1, 1], CpuBackend)), want);
}

#[test]
fn a_split_shares_the_expert_cache_slots_and_keeps_the_logits() {
    let w = weights();
    let want = run(&mut Model::new(CpuBackend, &w, capacity()).unwrap());
    // Every layer's experts on the host, 5 slots over 3 layers: stages [1, 2] get 2 and 3.
    let placement =
        ExpertPlacement::first_on_host(3, 3).with_cache(gptoss_engine::ExpertCacheConfig {
            slots: 5,
            refresh_steps: 2,
        });
    let per_stage = placement.stages(&[0..1, 1..3]);
    let slots: Vec<usize> = per_stage.iter().map(|p| p.cache().slots).collect();
    assert_eq!(slots, [2, 3]);
    let split = LayerSplit::from_counts(&[1, 2], 3).unwrap();
    let mut m = Model::pipeline(vec![CpuBackend; 2], &split, &w, capacity(), &placement).unwrap();
    assert_eq!(run(&mut m), want);
    let stats = m.expert_cache_stats().unwrap();
    assert_eq!(stats.slots, 5);
    assert!(stats.hits > 0 && stats.misses > 0, "{stats:?}");
}
