//! Speculative decoding on the tiny fixture model (1 full + 2 sliding layers, window 8): with prompt
//! lookup drafts, greedy and seeded outputs are token for token the plain decoder's, while drafts are
//! both accepted and rejected; sampled verification keeps the target distribution (a chi-square test
//! over many seeds against the model's exact probabilities); the sliding rings and the full pool hold
//! and return every block, with several sequences speculating in one step.

mod common;

use std::path::PathBuf;
use std::sync::{mpsc, Arc};

use gptoss_engine::scheduler::{
    channel_sink, DraftProposer, Engine, EngineConfig, EngineStats, GenRequest, NgramConfig,
    Output, RequestId, Speculative,
};
use gptoss_engine::{generate_with, Batch, Capacity, CpuBackend, Model, PoolKind, SamplingParams};
use gptoss_formats::ModelWeights;

fn weights() -> ModelWeights {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny/hf-mxfp4");
    gptoss_formats::load(&dir).unwrap().weights
}

/// `slots` sequences, `step_tokens` per step, logit rows for a draft of `draft` per sequence.
fn model(w: &ModelWeights, slots: usize, step_tokens: usize, draft: usize) -> Model<CpuBackend> {
    let cap = Capacity {
        max_batch_tokens: step_tokens,
        max_logit_rows: (slots * (1 + draft)).min(step_tokens).max(slots),
        slots,
        context_tokens: 200,
        kv_blocks: None,
    };
    Model::new(CpuBackend, w, cap).unwrap()
}

fn ngram(draft_tokens: usize) -> EngineConfig {
    EngineConfig {
        max_batch_tokens: None,
        mask_sampling: Default::default(),
        prefix_caching: Default::default(),
        speculative: Speculative::Ngram(NgramConfig::new(draft_tokens, 1, 3).unwrap()),
    }
}

fn request(prompt: Vec<u32>, sampling: SamplingParams, max_new_tokens: usize) -> GenRequest {
    GenRequest {
        prompt,
        sampling,
        max_new_tokens,
        stop_tokens: vec![],
    }
}

/// A "code edit" prompt: a block of tokens, a separator, then the block's start again (the model
/// is asked to go on copying); and a prompt without repeats.
fn prompts() -> Vec<Vec<u32>> {
    let block: Vec<u32> = (0..24).map(|j| ((j * 37 + 11) % 480) as u32 + 1).collect();
    let mut edit = block.clone();
    edit.extend([490, 491]);
    edit.extend(&block[..6]);
    let prose: Vec<u32> = (0..30).map(|j| ((j * 53 + 7) % 480) as u32 + 1).collect();
    let reference = vec![491, 117, 115, 266, 493, 87, 104, 275, 282, 258, 281, 97];
    vec![edit, prose, reference]
}

/// Seeded sampling peaked enough that drafts get accepted.
fn seeded(seed: u64) -> SamplingParams {
    SamplingParams {
        temperature: 0.5,
        top_p: 0.9,
        top_k: 0,
        seed,
    }
}

#[test]
fn greedy_and_seeded_speculation_give_the_plain_tokens() {
    let w = weights();
    // (drafted, accepted) of greedy and of seeded requests.
    let mut counts = [(0, 0); 2];
    for prompt in prompts() {
        for sampling in [SamplingParams::default(), seeded(5), seeded(77)] {
            for k in [1, 4, 7] {
                let r = request(prompt.clone(), sampling, 40);
                let (want, _) = common::plain_decode(&mut model(&w, 1, 64, 0), &r);
                let mut m = model(&w, 1, 64, k);
                let got = generate_with(&mut m, r, ngram(k), |_| {}).unwrap();
                assert_eq!(got.tokens, want, "k {k}, {sampling:?}, prompt {prompt:?}");
                let s = got.stats;
                assert!(s.accepted_tokens <= s.drafted_tokens);
                assert_eq!(s.generated_tokens, want.len() as u64);
                // Every step (the prompt fits one) emits one token plus the drafts it accepted.
                assert_eq!(s.steps + s.accepted_tokens, want.len() as u64);
                let c = &mut counts[usize::from(sampling.temperature > 0.0)];
                c.0 += s.drafted_tokens;
                c.1 += s.accepted_tokens;
            }
        }
    }
    for (drafted, accepted) in counts {
        assert!(
            accepted > 0 && accepted < drafted,
            "greedy and seeded drafts must be both accepted and rejected: {counts:?}"
        );
    }
}

/// Proposes token [`DRAFTED`] after every position.
struct Always;

/// The likeliest second token after the "prose" prompt under top-3 sampling (p = 0.44; printed by
/// `sampled_verification_keeps_the_target_distribution` when its checks fail).
const DRAFTED: u32 = 295;

impl DraftProposer for Always {
    fn propose(&mut self, _tokens: &[u32], max: usize) -> Vec<u32> {
        vec![DRAFTED; max.min(1)]
    }
}

/// Top-3 probabilities (temperature 1) of the token after `prefix`, as the sampler computes them.
fn top3(m: &mut Model<CpuBackend>, prefix: &[u32]) -> Vec<(u32, f64)> {
    m.forward(&Batch::single(prefix, 0, m.solo_table()))
        .unwrap();
    let logits = m.logits(1).unwrap();
    let mut order: Vec<u32> = (0..logits.len() as u32).collect();
    order.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
    order.truncate(3);
    let max = logits[order[0] as usize];
    let e: Vec<f64> = order
        .iter()
        .map(|&t| ((logits[t as usize] - max) as f64).exp())
        .collect();
    let z: f64 = e.iter().sum();
    order.into_iter().zip(e.iter().map(|x| x / z)).collect()
}

/// Upper 1e-6 quantile of chi-square with `df` degrees of freedom (Wilson–Hilferty).
fn chi2_bound(df: usize) -> f64 {
    let (df, z) = (df as f64, 4.753);
    let c = 2.0 / (9.0 * df);
    df * (1.0 - c + z * c.sqrt()).powi(3)
}

/// Pearson's statistic of `counts` (pairs seen) against `expected` (pair probabilities) over `n`
/// draws, with the pairs expected fewer than 5 times pooled into one cell. Returns the statistic and
/// its degrees of freedom.
fn chi2(counts: &[(u32, u32, usize)], expected: &[((u32, u32), f64)], n: usize) -> (f64, usize) {
    let seen = |pair: (u32, u32)| {
        counts
            .iter()
            .find(|c| (c.0, c.1) == pair)
            .map_or(0, |c| c.2) as f64
    };
    let (mut stat, mut cells) = (0.0, 0);
    let (mut rare_seen, mut rare_want) = (0.0, 0.0);
    for &(pair, p) in expected {
        let want = p * n as f64;
        if want < 5.0 {
            rare_seen += seen(pair);
            rare_want += want;
        } else {
            stat += (seen(pair) - want).powi(2) / want;
            cells += 1;
        }
    }
    if rare_want > 0.0 {
        stat += (rare_seen - rare_want).powi(2) / rare_want;
        cells += 1;
    }
    (stat, cells - 1)
}

#[test]
fn sampled_verification_keeps_the_target_distribution() {
    let w = weights();
    let prompt = prompts().remove(1);
    let params = |seed| SamplingParams {
        temperature: 1.0,
        top_p: 1.0,
        top_k: 3,
        seed,
    };
    // The exact joint distribution of the first two tokens under top-3 sampling.
    let mut m = model(&w, 1, 64, 0);
    let mut exact = Vec::new();
    for (t1, p1) in top3(&mut m, &prompt) {
        let mut prefix = prompt.clone();
        prefix.push(t1);
        for (t2, p2) in top3(&mut m, &prefix) {
            exact.push(((t1, t2), p1 * p2));
        }
    }
    // The draft must be a real candidate for the second token, accepted sometimes, not always.
    let p_drafted: f64 = exact
        .iter()
        .filter(|((_, t2), _)| *t2 == DRAFTED)
        .map(|(_, p)| p)
        .sum();
    assert!(
        (0.1..0.9).contains(&p_drafted),
        "token {DRAFTED} is drawn second with probability {p_drafted}: {exact:?}"
    );
    let config = EngineConfig {
        max_batch_tokens: None,
        mask_sampling: Default::default(),
        prefix_caching: Default::default(),
        speculative: Speculative::Custom {
            draft_tokens: 1,
            make: || Box::new(Always),
        },
    };
    let n = 2000;
    let mut counts: Vec<(u32, u32, usize)> = Vec::new();
    let (mut drafted, mut accepted) = (0, 0);
    let mut spec = model(&w, 1, 64, 1);
    let mut plain = model(&w, 1, 64, 0);
    for seed in 0..n as u64 {
        // Three tokens: the first is sampled after the prompt, then [first, DRAFTED] is verified.
        let r = request(prompt.clone(), params(seed), 3);
        let got = generate_with(&mut spec, r.clone(), config, |_| {}).unwrap();
        drafted += got.stats.drafted_tokens;
        accepted += got.stats.accepted_tokens;
        // Same seed, same tokens as plain sampling.
        assert_eq!(
            got.tokens,
            common::plain_decode(&mut plain, &r).0,
            "seed {seed}"
        );
        let key = (got.tokens[0], got.tokens[1]);
        match counts.iter_mut().find(|c| (c.0, c.1) == key) {
            Some(c) => c.2 += 1,
            None => counts.push((key.0, key.1, 1)),
        }
    }
    assert!(
        drafted >= n as u64 && accepted > 0 && accepted < drafted,
        "{accepted} of {drafted}"
    );
    // Acceptance happens at the draft's probability.
    let rate = accepted as f64 / n as f64;
    assert!(
        (rate - p_drafted).abs() < 5.0 * (p_drafted * (1.0 - p_drafted) / n as f64).sqrt(),
        "accepted {rate}, p {p_drafted}"
    );
    let observed: usize = counts.iter().map(|c| c.2).sum();
    assert_eq!(observed, n);
    assert!(
        counts
            .iter()
            .all(|c| exact.iter().any(|e| e.0 == (c.0, c.1))),
        "a pair outside the top-3 support: {counts:?}"
    );
    let (stat, df) = chi2(&counts, &exact, n);
    let bound = chi2_bound(df);
    assert!(
        stat < bound,
        "chi-square {stat} >= {bound} ({df} df): {counts:?} vs {exact:?}"
    );
    // The test has power: a verifier that kept the draft whenever the target could draw it would be
    // far outside the bound.
    let p_first = |a: u32| {
        exact
            .iter()
            .filter(|e| e.0 .0 == a)
            .map(|e| e.1)
            .sum::<f64>()
    };
    let kept_when_possible: Vec<((u32, u32), f64)> = exact
        .iter()
        .map(|&((a, b), p)| {
            let possible = exact.iter().any(|e| e.0 == (a, DRAFTED));
            let q = match (possible, b == DRAFTED) {
                (true, true) => p_first(a),
                (true, false) => 1e-3,
                (false, _) => p,
            };
            ((a, b), q)
        })
        .collect();
    assert!(chi2(&counts, &kept_when_possible, n).0 > 10.0 * bound);
}

/// Runs the engine synchronously until idle, checking block counts after every step.
fn drive(engine: &mut Engine<'_, CpuBackend>, stats: &EngineStats) {
    let ring = engine.model().kv_layout().ring_blocks;
    let sliding_pool = engine.model().kv_layout().sliding_blocks;
    let mut steps = 0;
    while engine.has_work() {
        engine.step();
        steps += 1;
        assert!(steps < 10_000, "the engine does not finish");
        let g = stats.snapshot().gauges;
        assert!(g.kv_sliding_used_blocks <= g.running * ring);
        assert!(g.kv_used_blocks <= g.kv_total_blocks);
        assert!(engine.model().cache().touched_blocks(PoolKind::Sliding) <= sliding_pool);
    }
}

#[test]
fn batched_speculation_wraps_rings_and_returns_every_block() {
    let w = weights();
    let stats = Arc::new(EngineStats::default());
    // 3 sequences, 8 tokens a step: rings of floor((8 + 8 - 2) / 16) + 2 = 2 blocks, reused many
    // times over 100+ positions; drafts of up to 4 share the 8 tokens.
    let mut m = model(&w, 3, 8, 4);
    let mut engine = Engine::new(&mut m, ngram(4), stats.clone());
    assert_eq!(engine.model().kv_layout().ring_blocks, 2);
    let mut reqs = Vec::new();
    for (i, prompt) in prompts().into_iter().enumerate() {
        reqs.push(request(prompt.clone(), SamplingParams::default(), 110));
        reqs.push(request(prompt, seeded(i as u64), 90));
    }
    let mut rxs = Vec::new();
    for (i, r) in reqs.iter().enumerate() {
        let (tx, rx) = mpsc::channel();
        engine.submit(RequestId(i as u64), r.clone(), channel_sink(tx));
        rxs.push(rx);
    }
    drive(&mut engine, &stats);
    let s = stats.snapshot();
    assert_eq!(
        (
            s.gauges.kv_used_blocks,
            s.gauges.kv_sliding_used_blocks,
            s.gauges.running
        ),
        (0, 0, 0)
    );
    assert!(
        s.accepted_tokens > 0 && s.accepted_tokens < s.drafted_tokens,
        "{s:?}"
    );
    for (i, (r, rx)) in reqs.iter().zip(rxs).enumerate() {
        let got: Vec<u32> = rx
            .try_iter()
            .filter_map(|o| match o {
                Output::Token(t) => Some(t),
                _ => None,
            })
            .collect();
        let (want, _) = common::plain_decode(&mut model(&w, 1, 8, 0), r);
        assert_eq!(got, want, "request {i}");
    }
}
