//! Prefix caching on the tiny fixture model (window 8: its sliding layers need the ring restored): a
//! second turn whose prompt extends the first's, a repeated prompt, and the choices of one request
//! give exactly the tokens they give without the cache, and report the positions they reused.

use std::path::PathBuf;
use std::sync::mpsc;

use gptoss_engine::scheduler::{
    channel_sink, Engine, EngineConfig, EngineStats, Finish, ForkGroup, GenRequest, Output,
    PrefixCaching, RequestId, RequestOptions,
};
use gptoss_engine::{Capacity, CpuBackend, Model, SamplingParams, BLOCK_POSITIONS};
use gptoss_formats::ModelWeights;

fn weights() -> ModelWeights {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny/hf-mxfp4");
    gptoss_formats::load(&dir).unwrap().weights
}

fn model(w: &ModelWeights) -> Model<CpuBackend> {
    let cap = Capacity {
        max_batch_tokens: 32,
        max_logit_rows: 4,
        slots: 4,
        context_tokens: 512,
        kv_blocks: None,
    };
    Model::new(CpuBackend, w, cap).unwrap()
}

fn prompt(len: usize, salt: usize) -> Vec<u32> {
    (0..len)
        .map(|j| ((salt * 31 + j * 17) % 480) as u32 + 1)
        .collect()
}

fn request(prompt: Vec<u32>, seed: u64) -> GenRequest {
    let sampling = SamplingParams {
        temperature: 1.0,
        top_p: 1.0,
        top_k: 0,
        seed,
    };
    GenRequest {
        prompt,
        sampling,
        max_new_tokens: 12,
        stop_tokens: vec![],
    }
}

/// Runs `batches` of requests one batch after the other on one engine; returns each request's tokens
/// and finish record, in order.
fn run(
    w: &ModelWeights,
    caching: PrefixCaching,
    batches: Vec<Vec<(GenRequest, RequestOptions)>>,
) -> (
    Vec<(Vec<u32>, Finish)>,
    gptoss_engine::scheduler::StatsSnapshot,
) {
    let mut m = model(w);
    let config = EngineConfig {
        prefix_caching: caching,
        ..EngineConfig::default()
    };
    let stats = std::sync::Arc::new(EngineStats::default());
    let mut engine = Engine::new(&mut m, config, stats.clone());
    let mut out = Vec::new();
    let mut next = 0;
    for batch in batches {
        let rxs: Vec<_> = batch
            .into_iter()
            .map(|(req, opts)| {
                let (tx, rx) = mpsc::channel();
                engine.submit_with(RequestId(next), req, opts, channel_sink(tx));
                next += 1;
                rx
            })
            .collect();
        while engine.has_work() {
            engine.try_step().unwrap();
        }
        for rx in rxs {
            let mut tokens = Vec::new();
            let mut finish = None;
            for o in rx.try_iter() {
                match o {
                    Output::Token(t) => tokens.push(t),
                    Output::Finished(f) => finish = Some(f),
                    // The sampled token's log-probability: equal only if the logits are.
                    Output::Logprobs(lp) => tokens.push(lp.logprob.to_bits()),
                    other => panic!("{other:?}"),
                }
            }
            out.push((tokens, finish.unwrap()));
        }
    }
    (out, stats.snapshot())
}

/// A request that also reports its log-probabilities (so equal outputs mean equal logits).
fn plain(req: GenRequest) -> Vec<(GenRequest, RequestOptions)> {
    let mut opts = RequestOptions::default();
    opts.logits.logprobs = Some(0);
    vec![(req, opts)]
}

#[test]
fn a_second_turn_reuses_the_first_and_gives_the_same_tokens() {
    let w = weights();
    let turn1 = prompt(70, 1);
    let mut turn2 = turn1.clone();
    turn2.extend(prompt(25, 2));
    let batches = || {
        vec![
            plain(request(turn1.clone(), 5)),
            plain(request(turn2.clone(), 6)),
            plain(request(turn1.clone(), 5)),
        ]
    };
    let (cached, stats) = run(&w, PrefixCaching::On, batches());
    let (fresh, fresh_stats) = run(&w, PrefixCaching::Off, batches());
    for (c, f) in cached.iter().zip(&fresh) {
        assert_eq!(c.0, f.0);
        assert_eq!(c.0.len(), 24); // 12 tokens and their log-probabilities
    }
    // Turn 1's prompt: 70 tokens; its last usable boundary leaves a token to compute: 64.
    let boundary = (turn1.len() - 1) / BLOCK_POSITIONS * BLOCK_POSITIONS;
    let reused: Vec<usize> = cached.iter().map(|c| c.1.cached_tokens).collect();
    assert_eq!(reused, [0, boundary, boundary]);
    assert!(fresh.iter().all(|f| f.1.cached_tokens == 0));
    assert_eq!(
        (stats.prefix_hits, stats.prefix_cached_tokens),
        (2, 2 * boundary as u64)
    );
    assert_eq!(fresh_stats.prefix_hits, 0);
    // The hits computed fewer positions.
    assert!(stats.batch_tokens + 2 * boundary as u64 <= fresh_stats.batch_tokens + 2);
}

#[test]
fn choices_of_one_request_prefill_the_prompt_once() {
    let w = weights();
    let p = prompt(50, 3);
    let group = || RequestOptions {
        fork: Some(ForkGroup(9)),
        ..RequestOptions::default()
    };
    let choices = || {
        vec![vec![
            (request(p.clone(), 1), group()),
            (request(p.clone(), 2), group()),
            (request(p.clone(), 3), group()),
        ]]
    };
    let (cached, stats) = run(&w, PrefixCaching::On, choices());
    let (fresh, _) = run(&w, PrefixCaching::Off, choices());
    for (c, f) in cached.iter().zip(&fresh) {
        assert_eq!(c.0, f.0);
    }
    assert_ne!(
        cached[0].0, cached[1].0,
        "different seeds, different choices"
    );
    let boundary = (p.len() - 1) / BLOCK_POSITIONS * BLOCK_POSITIONS;
    let reused: Vec<usize> = cached.iter().map(|c| c.1.cached_tokens).collect();
    assert_eq!(reused, [0, boundary, boundary]);
    // One full prefill plus two short tails, then 11 decode steps of 3 tokens.
    let tails = 2 * (p.len() - boundary) as u64;
    assert_eq!(stats.batch_tokens, p.len() as u64 + tails + 3 * 11);
}

#[test]
fn evicted_prefixes_are_recomputed_and_the_pool_is_never_exceeded() {
    let w = weights();
    // A pool of 12 full blocks: each 60-token request takes 5 (with its 12 new tokens), so cached
    // prefixes must be evicted for later prompts.
    let cap = Capacity {
        max_batch_tokens: 32,
        max_logit_rows: 1,
        slots: 1,
        context_tokens: 512,
        kv_blocks: Some(12),
    };
    let mut m = Model::new(CpuBackend, &w, cap).unwrap();
    let stats = std::sync::Arc::new(EngineStats::default());
    let mut engine = Engine::new(&mut m, EngineConfig::default(), stats.clone());
    let mut outs = Vec::new();
    for (i, salt) in [1, 2, 3, 1, 4, 1].into_iter().enumerate() {
        let (tx, rx) = mpsc::channel();
        engine.submit(
            RequestId(i as u64),
            request(prompt(60, salt), 7),
            channel_sink(tx),
        );
        while engine.has_work() {
            engine.try_step().unwrap();
            let s = stats.snapshot();
            assert!(s.gauges.kv_used_blocks <= 12);
        }
        let toks: Vec<u32> = rx
            .try_iter()
            .filter_map(|o| match o {
                Output::Token(t) => Some(t),
                _ => None,
            })
            .collect();
        outs.push(toks);
    }
    assert_eq!(outs[0], outs[3]);
    assert_eq!(outs[0], outs[5]);
    // Request 4 (salt 1 again, right after 3) hits; so does 6 after 5 only if 1's blocks survived.
    assert!(stats.snapshot().prefix_hits >= 1);
}

/// A [`gptoss_engine::Session`] keeps one engine across requests (an interactive chat): a request
/// whose prompt extends the previous one's reuses its whole blocks, computes only the rest, and gives
/// the tokens a fresh engine gives.
#[test]
fn a_session_reuses_the_previous_requests_prompt() {
    let w = weights();
    let first = prompt(45, 3);
    let mut second = first.clone();
    second.extend(prompt(21, 8));
    let fresh = |p: &[u32]| {
        let mut m = model(&w);
        gptoss_engine::generate_until(
            &mut m,
            request(p.to_vec(), 7),
            EngineConfig::default(),
            |_| gptoss_engine::Flow::Continue,
        )
        .unwrap()
    };
    let mut m = model(&w);
    let mut session = gptoss_engine::Session::new(&mut m, EngineConfig::default());
    let continue_ = |_: &[u32]| gptoss_engine::Flow::Continue;
    let a = session
        .generate_until(request(first.clone(), 7), continue_)
        .unwrap();
    let b = session
        .generate_until(request(second.clone(), 7), continue_)
        .unwrap();
    assert_eq!(a.cached_tokens, 0);
    // The first prompt's whole blocks before its last token.
    assert_eq!(
        b.cached_tokens,
        (first.len() - 1) / BLOCK_POSITIONS * BLOCK_POSITIONS
    );
    assert_eq!(b.stats.prefix_cached_tokens as usize, b.cached_tokens);
    // Prefill of the new part only, then each generated token but the last fed back.
    assert_eq!(
        b.stats.batch_tokens as usize,
        second.len() - b.cached_tokens + b.tokens.len() - 1
    );
    assert_eq!(a.tokens, fresh(&first).tokens);
    let alone = fresh(&second);
    assert_eq!(b.tokens, alone.tokens);
    assert_eq!(alone.cached_tokens, 0);
    assert_eq!(
        alone.stats.batch_tokens as usize,
        second.len() + alone.tokens.len() - 1
    );
}
