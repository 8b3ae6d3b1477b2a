//! Shared by the engine's `masked` test (CPU) and the CUDA crate's `gpu_sampling` test: a token constraint
//! whose allowed set is a fixed function of the step and the previous token (no grammar library), and a
//! runner that pushes requests through the [`Engine`] (the scheduler path `serve` uses) with the mask
//! sampled on the backend or on the host.
#![allow(dead_code, clippy::unwrap_used)]

use std::sync::mpsc;
use std::sync::Arc;

use gptoss_engine::scheduler::{
    channel_sink, Engine, EngineConfig, EngineStats, GenRequest, MaskSampling, Output, RequestId,
    RequestOptions,
};
use gptoss_engine::{
    Backend, ConstraintSpec, LogitsOptions, Model, SamplingParams, TokenConstraint,
};

/// Which tokens a [`StepConstraint`] allows.
#[derive(Clone, Copy, Debug)]
pub enum Allow {
    /// About a quarter of the vocabulary, a different quarter at each step; every fifth step one token
    /// only; every third step a mask cut short (words for the first 256 tokens only: the rest are not
    /// allowed).
    Varied {
        /// Changes the sets.
        salt: u32,
    },
    /// Only these two tokens (to make a stop token likely).
    Pair(u32, u32),
    /// Nothing at all: sampling must fail.
    Nothing,
}

impl Allow {
    /// The allowed tokens at output step `k` after `prev`, as a bitset over `vocab` tokens.
    pub fn mask(self, vocab: usize, prev: Option<u32>, k: usize) -> Vec<u32> {
        let words = vocab.div_ceil(32);
        let mut m = vec![0u32; words];
        let mut set = |t: usize| {
            if t < vocab {
                m[t / 32] |= 1 << (t % 32);
            }
        };
        match self {
            Allow::Varied { salt } => {
                let p = prev.map_or(7, |p| p as usize);
                if k % 5 == 4 {
                    // Inside the first 256 tokens, so a cut-short mask still holds it.
                    set((p * 131 + k * 17 + salt as usize) % vocab.min(256));
                } else {
                    for t in 0..vocab {
                        let h =
                            (t as u64 * 0x9E37_79B9 + p as u64 * 31 + k as u64 * 7 + salt as u64)
                                .wrapping_mul(0x2545_F491);
                        if (h >> 13).is_multiple_of(4) {
                            set(t);
                        }
                    }
                }
                if k % 3 == 1 {
                    m.truncate(8.min(words));
                }
            }
            Allow::Pair(a, b) => {
                set(a as usize);
                set(b as usize);
            }
            Allow::Nothing => {}
        }
        m
    }
}

/// Whether `mask` allows `t`.
pub fn allows(mask: &[u32], t: u32) -> bool {
    mask.get(t as usize / 32)
        .is_some_and(|w| w >> (t % 32) & 1 == 1)
}

/// A [`ConstraintSpec`] over [`Allow`]; a constrained output ends after `len` tokens.
pub struct StepConstraint {
    /// The sets.
    pub allow: Allow,
    /// The vocabulary size.
    pub vocab: usize,
    /// Tokens until the output is complete.
    pub len: usize,
}

struct StepState {
    allow: Allow,
    vocab: usize,
    len: usize,
    out: Vec<u32>,
}

impl ConstraintSpec for StepConstraint {
    fn start(&self) -> Result<Box<dyn TokenConstraint>, String> {
        Ok(Box::new(StepState {
            allow: self.allow,
            vocab: self.vocab,
            len: self.len,
            out: Vec::new(),
        }))
    }
}

impl TokenConstraint for StepState {
    fn allowed(&mut self) -> Result<Option<Vec<u32>>, String> {
        Ok(Some(self.allow.mask(
            self.vocab,
            self.out.last().copied(),
            self.out.len(),
        )))
    }

    fn accept(&mut self, token: u32) -> Result<(), String> {
        let mask = self
            .allow
            .mask(self.vocab, self.out.last().copied(), self.out.len());
        if !allows(&mask, token) {
            return Err(format!(
                "token {token} is not allowed at step {}",
                self.out.len()
            ));
        }
        self.out.push(token);
        Ok(())
    }

    fn is_finished(&self) -> bool {
        self.out.len() >= self.len
    }
}

/// Logit options with a [`StepConstraint`].
pub fn constrained(allow: Allow, vocab: usize, len: usize) -> LogitsOptions {
    LogitsOptions {
        constraint: Some(Arc::new(StepConstraint { allow, vocab, len })),
        ..LogitsOptions::default()
    }
}

/// What one request gave: its tokens, or the failure message.
pub type Outcome = Result<Vec<u32>, String>;

/// Runs all `requests` at once on one engine over `model` with masks sampled per `mode`; returns each
/// request's outcome, in order.
pub fn run_all<B: Backend>(
    model: &mut Model<B>,
    mode: MaskSampling,
    requests: &[(GenRequest, LogitsOptions)],
) -> Vec<Outcome> {
    let config = EngineConfig {
        mask_sampling: mode,
        ..EngineConfig::default()
    };
    let mut engine = Engine::new(model, config, Arc::new(EngineStats::default()));
    let rxs: Vec<_> = requests
        .iter()
        .enumerate()
        .map(|(i, (r, logits))| {
            let (tx, rx) = mpsc::channel();
            let options = RequestOptions {
                logits: logits.clone(),
                ..RequestOptions::default()
            };
            engine.submit_with(RequestId(i as u64), r.clone(), options, channel_sink(tx));
            rx
        })
        .collect();
    while engine.has_work() {
        engine.try_step().unwrap();
    }
    rxs.into_iter()
        .map(|rx| {
            let mut toks = Vec::new();
            for o in rx.try_iter() {
                match o {
                    Output::Token(t) => toks.push(t),
                    Output::Failed { message, .. } => return Err(message),
                    Output::Finished(_) | Output::Logprobs(_) => {}
                }
            }
            Ok(toks)
        })
        .collect()
}

/// Checks that `tokens` follow `allow` step by step (the constraint's own check, replayed).
pub fn follows(allow: Allow, vocab: usize, tokens: &[u32]) -> bool {
    tokens.iter().enumerate().all(|(k, &t)| {
        let prev = k.checked_sub(1).map(|j| tokens[j]);
        allows(&allow.mask(vocab, prev, k), t)
    })
}

/// The tiny fixture's vocabulary.
pub const VOCAB: usize = 512;

fn request(salt: usize, sampling: SamplingParams, stop_tokens: Vec<u32>) -> GenRequest {
    GenRequest {
        prompt: (0..20)
            .map(|j| ((salt * 31 + j * 17) % 480) as u32 + 1)
            .collect(),
        sampling,
        max_new_tokens: 20,
        stop_tokens,
    }
}

fn sampling(temperature: f32, top_p: f32, top_k: usize, seed: u64) -> SamplingParams {
    SamplingParams {
        temperature,
        top_p,
        top_k,
        seed,
    }
}

/// On the tiny fixture model `m` (slots and logit rows for 8 sequences): constrained requests, greedy
/// and seeded, batched with a free request, a `min_tokens` request whose stop token greedy decoding would
/// pick first, a constrained request with log-probabilities (host-sampled on both paths) and one whose
/// constraint allows nothing, give the same outcomes with the mask sampled on the backend and on the
/// host; every constrained token is allowed; `min_tokens` keeps the stop token out.
pub fn backend_equals_host<B: Backend>(m: &mut Model<B>) {
    // The stop token of the min_tokens request is the one of the pair greedy decoding picks first, so
    // without min_tokens it would stop at once.
    let pair = |stop| {
        (
            request(6, sampling(0.0, 1.0, 0, 0), stop),
            constrained(Allow::Pair(300, 301), VOCAB, 10),
        )
    };
    let first = run_all(m, MaskSampling::Backend, &[pair(vec![])]);
    let stop = first[0].as_ref().unwrap()[0];
    let other = 601 - stop;
    for mode in [MaskSampling::Backend, MaskSampling::Host] {
        assert_eq!(run_all(m, mode, &[pair(vec![stop])])[0], Ok(vec![stop]));
    }
    let varied = |salt| Allow::Varied { salt };
    let (pair_request, pair_options) = pair(vec![stop]);
    let requests = vec![
        (
            request(1, sampling(0.0, 1.0, 0, 0), vec![]),
            constrained(varied(1), VOCAB, 12),
        ),
        (
            request(2, sampling(1.0, 1.0, 0, 3), vec![]),
            constrained(varied(2), VOCAB, 12),
        ),
        (
            request(3, sampling(0.8, 0.9, 50, 4), vec![]),
            constrained(varied(3), VOCAB, 12),
        ),
        (
            request(4, sampling(1.3, 1.0, 5, 5), vec![]),
            constrained(varied(4), VOCAB, 12),
        ),
        (
            request(5, sampling(1.0, 1.0, 0, 6), vec![]),
            LogitsOptions::default(),
        ),
        (
            pair_request,
            LogitsOptions {
                min_tokens: 4,
                ..pair_options
            },
        ),
        (
            request(7, sampling(1.0, 1.0, 0, 8), vec![]),
            LogitsOptions {
                logprobs: Some(2),
                ..constrained(varied(7), VOCAB, 12)
            },
        ),
        (
            request(8, sampling(1.0, 1.0, 0, 9), vec![]),
            constrained(Allow::Nothing, VOCAB, 12),
        ),
    ];
    let on_backend = run_all(m, MaskSampling::Backend, &requests);
    let on_host = run_all(m, MaskSampling::Host, &requests);
    assert_eq!(on_backend, on_host);
    for (i, salt) in [(0, 1), (1, 2), (2, 3), (3, 4), (6, 7)] {
        let toks = on_backend[i].as_ref().unwrap();
        assert_eq!(
            toks.len(),
            12,
            "request {i} ends with its constraint: {toks:?}"
        );
        assert!(follows(varied(salt), VOCAB, toks), "request {i}: {toks:?}");
    }
    // The seeds draw differently (the constraint leaves a choice at most steps).
    assert_ne!(on_backend[1], on_backend[2]);
    let pair = on_backend[5].as_ref().unwrap();
    assert!(
        pair.len() >= 5 && pair[..4].iter().all(|&t| t == other),
        "{pair:?}"
    );
    assert!(pair.iter().all(|&t| t == stop || t == other), "{pair:?}");
    assert_eq!(
        on_backend[7],
        Err(gptoss_engine::logits::NOTHING_ALLOWED.to_string())
    );
}
