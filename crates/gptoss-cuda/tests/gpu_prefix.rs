//! Prefix caching on CUDA: the ring restore and the choices' prefix sharing go through
//! `Backend::copy_blocks` (device-to-device copies); a second turn, a repeated prompt and the choices
//! of one request must give the tokens of uncached runs, and report reused positions. Run by
//! `scripts/gpu-check.sh` (`cargo test -p gptoss-cuda --test gpu_prefix -- --ignored`).

use std::path::PathBuf;
use std::sync::mpsc;

use gptoss_cuda::{CudaBackend, CudaOptions};
use gptoss_engine::scheduler::{
    channel_sink, Engine, EngineConfig, EngineStats, ForkGroup, GenRequest, Output, PrefixCaching,
    RequestId, RequestOptions,
};
use gptoss_engine::{Capacity, Model, SamplingParams};

fn prompt(len: usize, salt: usize) -> Vec<u32> {
    (0..len)
        .map(|j| ((salt * 31 + j * 17) % 480) as u32 + 1)
        .collect()
}

/// Runs the batches one after another; returns (tokens, cached positions) per request.
fn run(caching: PrefixCaching, batches: &[Vec<(Vec<u32>, Option<u64>)>]) -> Vec<(Vec<u32>, usize)> {
    // From the repo root (scripts/gpu-check.sh), else relative to this crate.
    let dir = [
        PathBuf::from("tests/fixtures/tiny/hf-mxfp4"),
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny/hf-mxfp4"),
    ]
    .into_iter()
    .find(|p| p.is_dir())
    .unwrap();
    let w = gptoss_formats::load(&dir).unwrap().weights;
    let cap = Capacity {
        max_batch_tokens: 32,
        max_logit_rows: 4,
        slots: 4,
        context_tokens: 512,
        kv_blocks: None,
    };
    // The exact kernels (`--exact`): turn 2 runs 95 prompt rows fresh (the fast tiles of prompts) but only
    // the 31 after its reused prefix cached (exact tiles), and a random model's greedy tokens can flip on
    // that rounding; what this test checks is the reuse.
    let mut options = CudaOptions::from_env().unwrap();
    options.exact = true;
    let backend = CudaBackend::new(&options).unwrap();
    let mut m = Model::new(backend, &w, cap).unwrap();
    let config = EngineConfig {
        prefix_caching: caching,
        ..EngineConfig::default()
    };
    let mut engine = Engine::new(&mut m, config, std::sync::Arc::new(EngineStats::default()));
    let mut out = Vec::new();
    let mut id = 0;
    for batch in batches {
        let rxs: Vec<_> = batch
            .iter()
            .map(|(p, group)| {
                let (tx, rx) = mpsc::channel();
                let request = GenRequest {
                    prompt: p.clone(),
                    sampling: SamplingParams::default(),
                    max_new_tokens: 24,
                    stop_tokens: vec![],
                };
                let options = RequestOptions {
                    fork: group.map(ForkGroup),
                    ..RequestOptions::default()
                };
                engine.submit_with(RequestId(id), request, options, channel_sink(tx));
                id += 1;
                rx
            })
            .collect();
        while engine.has_work() {
            engine.try_step().unwrap();
        }
        for rx in rxs {
            let (mut toks, mut cached) = (Vec::new(), 0);
            for o in rx.try_iter() {
                match o {
                    Output::Token(t) => toks.push(t),
                    Output::Finished(f) => cached = f.cached_tokens,
                    other => panic!("{other:?}"),
                }
            }
            out.push((toks, cached));
        }
    }
    out
}

#[test]
#[ignore = "needs GPU"]
fn prefix_cache_on_cuda_gives_the_uncached_tokens() {
    let turn1 = prompt(70, 1);
    let mut turn2 = turn1.clone();
    turn2.extend(prompt(25, 2));
    let batches = vec![
        vec![(turn1.clone(), None)],
        vec![(turn2, None)],
        vec![(turn1.clone(), None)],
        vec![(prompt(50, 3), Some(9)), (prompt(50, 3), Some(9))],
    ];
    let cached = run(PrefixCaching::On, &batches);
    let fresh = run(PrefixCaching::Off, &batches);
    for (i, (c, f)) in cached.iter().zip(&fresh).enumerate() {
        assert_eq!(c.0, f.0, "request {i}");
        assert_eq!(f.1, 0);
    }
    let reused: Vec<usize> = cached.iter().map(|c| c.1).collect();
    assert_eq!(reused, [0, 64, 64, 0, 48]);
}
