//! Continuous batching on the tiny fixture model: many requests batched together (with chunked
//! prefill, preemption and cancellation) give exactly the tokens each gives when run alone.

mod common;

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use gptoss_engine::scheduler::{
    channel_sink, spawn_engine, EngineConfig, EngineHandle, FailureKind, FinishReason, GenRequest,
    Output,
};
use gptoss_engine::{Capacity, CpuBackend, Model, SamplingParams, StopReason};
use gptoss_formats::ModelWeights;

fn weights() -> ModelWeights {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny/hf-mxfp4");
    gptoss_formats::load(&dir).unwrap().weights
}

fn model(w: &ModelWeights, slots: usize, batch: usize, ctx: usize) -> Model<CpuBackend> {
    model_with_pool(w, (slots, batch, ctx), None)
}

/// A model of `(slots, step tokens, context)` with a full-attention pool of `kv_blocks`.
fn model_with_pool(
    w: &ModelWeights,
    (slots, batch, ctx): (usize, usize, usize),
    kv_blocks: Option<usize>,
) -> Model<CpuBackend> {
    let cap = Capacity {
        max_batch_tokens: batch,
        max_logit_rows: slots,
        slots,
        context_tokens: ctx,
        kv_blocks,
    };
    Model::new(CpuBackend, w, cap).unwrap()
}

/// Prompts of different lengths and sampling settings (greedy and seeded).
fn requests(n: usize) -> Vec<GenRequest> {
    (0..n)
        .map(|i| {
            let len = 3 + (i * 7) % 29;
            let prompt = (0..len)
                .map(|j| ((i * 31 + j * 17) % 480) as u32 + 1)
                .collect();
            let sampling = if i % 2 == 0 {
                SamplingParams::default()
            } else {
                SamplingParams {
                    temperature: 1.0,
                    top_p: 0.95,
                    top_k: 0,
                    seed: 1000 + i as u64,
                }
            };
            GenRequest {
                prompt,
                sampling,
                max_new_tokens: 12 + i % 9,
                stop_tokens: vec![],
            }
        })
        .collect()
}

fn solo(w: &ModelWeights, r: &GenRequest, ctx: usize) -> (Vec<u32>, StopReason) {
    common::plain_decode(&mut model(w, 1, 8, ctx), r)
}

/// Submits every request, then collects (tokens, final output) of each.
fn run_all(handle: &EngineHandle, reqs: &[GenRequest]) -> Vec<(Vec<u32>, Output)> {
    let rxs: Vec<_> = reqs
        .iter()
        .map(|r| {
            let (tx, rx) = mpsc::channel();
            handle.submit(r.clone(), channel_sink(tx)).unwrap();
            rx
        })
        .collect();
    rxs.into_iter().map(collect).collect()
}

fn collect(rx: mpsc::Receiver<Output>) -> (Vec<u32>, Output) {
    let mut tokens = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_secs(60)).unwrap() {
            Output::Token(t) => tokens.push(t),
            end => return (tokens, end),
        }
    }
}

fn spawn(
    w: &ModelWeights,
    slots: usize,
    batch: usize,
    ctx: usize,
    kv_blocks: Option<usize>,
) -> EngineHandle {
    let w = w.clone();
    let config = EngineConfig::default();
    spawn_engine(
        move || Ok(model_with_pool(&w, (slots, batch, ctx), kv_blocks)),
        config,
    )
    .unwrap()
}

fn check_against_solo(w: &ModelWeights, handle: &EngineHandle, reqs: &[GenRequest], ctx: usize) {
    let got = run_all(handle, reqs);
    for (i, (r, (tokens, end))) in reqs.iter().zip(got).enumerate() {
        let (want, reason) = solo(w, r, ctx);
        assert_eq!(tokens, want, "request {i}");
        let Output::Finished(f) = end else {
            panic!("request {i}: {end:?}")
        };
        let want_reason = match reason {
            StopReason::Stop => FinishReason::Stop,
            StopReason::Length => FinishReason::Length,
            StopReason::Cancelled => FinishReason::Cancelled,
        };
        assert_eq!(
            (f.reason, f.prompt_tokens, f.generated_tokens),
            (want_reason, r.prompt.len(), want.len())
        );
    }
}

#[test]
fn batched_equals_solo_greedy_and_seeded() {
    let w = weights();
    // 16 tokens per step: prompts up to 31 tokens are prefilled in chunks, mixed with decodes.
    let handle = spawn(&w, 6, 16, 96, None);
    let reqs = requests(16);
    check_against_solo(&w, &handle, &reqs, 96);
    let s = handle.stats().snapshot();
    assert_eq!(s.preemptions, 0);
    assert_eq!(
        s.gauges.running
            + s.gauges.waiting
            + s.gauges.kv_used_blocks
            + s.gauges.kv_sliding_used_blocks,
        0
    );
    assert!(
        s.steps
            < reqs
                .iter()
                .map(|r| r.max_new_tokens as u64 + 2)
                .sum::<u64>(),
        "not batched: {s:?}"
    );
}

#[test]
fn preemption_recomputes_to_the_same_tokens() {
    let w = weights();
    // Tiny model: 1 full + 2 sliding layers (window 8). These sequences grow to 23..51 tokens, 2..4
    // full blocks each: 8 blocks cannot hold 4 of them, so running ones get preempted and recomputed.
    let handle = spawn(&w, 4, 64, 96, Some(8));
    let reqs: Vec<_> = requests(8)
        .into_iter()
        .map(|mut r| {
            r.max_new_tokens = 20;
            r
        })
        .collect();
    check_against_solo(&w, &handle, &reqs, 96);
    let s = handle.stats().snapshot();
    assert!(s.preemptions > 0);
    // Every block came back: finished and preempted sequences alike.
    assert_eq!(
        (s.gauges.kv_used_blocks, s.gauges.kv_sliding_used_blocks),
        (0, 0)
    );
    assert_eq!(s.gauges.kv_total_blocks, 8);
}

#[test]
fn stop_tokens_and_context_limit() {
    let w = weights();
    let mut reqs = requests(4);
    let (free_run, _) = solo(&w, &reqs[0], 40);
    reqs[0].stop_tokens = vec![free_run[4]];
    reqs[1].max_new_tokens = 200; // ends at the context (40 tokens)
    let handle = spawn(&w, 4, 32, 40, None);
    check_against_solo(&w, &handle, &reqs, 40);
    let got = run_all(&handle, &reqs[..2]);
    let first_stop = free_run.iter().position(|&t| t == free_run[4]).unwrap();
    assert_eq!(got[0].0.len(), first_stop + 1);
    assert_eq!(got[1].0.len() + reqs[1].prompt.len(), 40);
}

#[test]
fn long_prompts_prefill_over_several_steps() {
    let w = weights();
    // 16 tokens per step: a 100-token prompt alone takes 6 prefill-only steps before its first sample.
    let handle = spawn(&w, 2, 16, 160, None);
    let mut reqs = requests(2);
    reqs[0].prompt = (0..100).map(|j| (j * 13 % 480) as u32 + 1).collect();
    reqs[1].prompt = (0..70).map(|j| (j * 7 % 480) as u32 + 2).collect();
    check_against_solo(&w, &handle, &reqs, 160);
}

#[test]
fn cancellation_and_bad_requests() {
    let w = weights();
    let handle = spawn(&w, 2, 16, 512, None);
    let mut long = requests(1).remove(0);
    long.max_new_tokens = 400;
    let (tx, rx) = mpsc::channel();
    let id = handle.submit(long, channel_sink(tx)).unwrap();
    assert!(matches!(
        rx.recv_timeout(Duration::from_secs(60)).unwrap(),
        Output::Token(_)
    ));
    handle.cancel(id);
    let (_, end) = collect(rx);
    let Output::Finished(f) = end else {
        panic!("{end:?}")
    };
    assert_eq!(f.reason, FinishReason::Cancelled);
    assert!(f.generated_tokens < 400);

    // A dropped receiver cancels too: the engine goes on serving the others.
    let (tx, rx) = mpsc::channel();
    let mut r = requests(2).remove(1);
    r.max_new_tokens = 400;
    handle.submit(r, channel_sink(tx)).unwrap();
    drop(rx);
    let reqs = requests(3);
    check_against_solo(&w, &handle, &reqs, 512);

    let bad = [
        (vec![], "no tokens"),
        (vec![1; 512], "context holds 512"),
        (vec![1, 600], "token id 600"),
    ];
    for (prompt, msg) in bad {
        let r = GenRequest {
            prompt,
            sampling: SamplingParams::default(),
            max_new_tokens: 4,
            stop_tokens: vec![],
        };
        let (_, end) = run_all(&handle, &[r]).remove(0);
        let Output::Failed { kind, message } = end else {
            panic!("{end:?}")
        };
        assert_eq!(kind, FailureKind::Invalid);
        assert!(message.contains(msg), "{message}");
    }
    assert_eq!(handle.stats().snapshot().gauges.running, 0);
}

/// `generate_until` stops when its caller says so (as chat's Ctrl-C does): the tokens before the stop
/// are exactly the first tokens of the uninterrupted run, the reason is `Cancelled`, and the model
/// serves the next request as if nothing happened.
#[test]
fn generate_until_stops_between_steps_and_keeps_the_tokens() {
    use gptoss_engine::{generate_until, Flow};
    let w = weights();
    let mut m = model(&w, 1, 8, 96);
    let mut r = requests(1).remove(0);
    r.max_new_tokens = 10;
    let (full, reason) = solo(&w, &r, 96);
    assert_eq!((full.len(), reason), (10, StopReason::Length));
    let mut seen = 0;
    let done = generate_until(&mut m, r.clone(), EngineConfig::default(), |toks| {
        seen += toks.len();
        if seen >= 4 {
            Flow::Stop
        } else {
            Flow::Continue
        }
    })
    .unwrap();
    assert_eq!(done.reason, StopReason::Cancelled);
    assert_eq!(done.tokens, full[..4]);
    let again = generate_until(&mut m, r, EngineConfig::default(), |_| Flow::Continue).unwrap();
    assert_eq!((again.tokens, again.reason), (full, StopReason::Length));
}

/// A second request under the id of a running one is refused with a message naming the id, and the
/// first runs on undisturbed (two sequences under one id once shared the scheduler's entry and
/// underflowed its token count).
#[test]
fn a_request_id_in_use_is_refused() {
    use gptoss_engine::scheduler::{Engine, EngineStats, RequestId, RequestOptions};
    let w = weights();
    let mut m = model(&w, 2, 32, 256);
    let reqs = requests(2);
    let (want, _) = solo(&w, &reqs[0], 256);
    let stats = std::sync::Arc::new(EngineStats::default());
    let mut engine = Engine::new(&mut m, EngineConfig::default(), stats);
    let (tx1, rx1) = mpsc::channel();
    let (tx2, rx2) = mpsc::channel();
    let id = RequestId(10);
    engine.submit_with(
        id,
        reqs[0].clone(),
        RequestOptions::default(),
        channel_sink(tx1),
    );
    engine.submit_with(
        id,
        reqs[1].clone(),
        RequestOptions::default(),
        channel_sink(tx2),
    );
    while engine.has_work() {
        engine.try_step().unwrap();
    }
    let (tokens, end) = collect(rx1);
    assert!(matches!(end, Output::Finished(_)), "{end:?}");
    assert_eq!(tokens, want);
    let (none, end) = collect(rx2);
    assert!(none.is_empty());
    let Output::Failed { kind, message } = end else {
        panic!("{end:?}")
    };
    assert_eq!(kind, FailureKind::Invalid);
    assert!(
        message.contains("request id 10 is already in use"),
        "{message}"
    );
}
