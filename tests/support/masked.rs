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
    Backend, ConstraintSpec, LogitsOptions, Model, SamplingParams, TokenConstraint, TokenLogprobs,
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

/// What one request gave: its tokens and their log-probabilities (when asked), or the failure message.
pub type Outcome = Result<Run, String>;

/// A request's output.
#[derive(Clone, Debug, PartialEq)]
pub struct Run {
    /// The tokens.
    pub tokens: Vec<u32>,
    /// One entry per token when log-probabilities were asked.
    pub logprobs: Vec<TokenLogprobs>,
}

/// Whether two outcomes agree: the same tokens, failures and top-token ids, log-probabilities within
/// `tol` (the backend's and the host's log-sum-exp may round apart).
pub fn agree(a: &[Outcome], b: &[Outcome], tol: f32) -> bool {
    let close = |x: f32, y: f32| x == y || (x - y).abs() <= tol;
    a.len() == b.len()
        && a.iter().zip(b).all(|(a, b)| match (a, b) {
            (Ok(a), Ok(b)) => {
                a.tokens == b.tokens
                    && a.logprobs.len() == b.logprobs.len()
                    && a.logprobs.iter().zip(&b.logprobs).all(|(x, y)| {
                        x.token == y.token
                            && close(x.logprob, y.logprob)
                            && x.top.len() == y.top.len()
                            && x.top
                                .iter()
                                .zip(&y.top)
                                .all(|(p, q)| p.0 == q.0 && close(p.1, q.1))
                    })
            }
            (a, b) => a == b,
        })
}

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
            let mut run = Run {
                tokens: Vec::new(),
                logprobs: Vec::new(),
            };
            for o in rx.try_iter() {
                match o {
                    Output::Token(t) => run.tokens.push(t),
                    Output::Logprobs(l) => run.logprobs.push(l),
                    Output::Failed { message, .. } => return Err(message),
                    Output::Finished(_) => {}
                }
            }
            Ok(run)
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
/// pick first, a constrained request with log-probabilities, a request with log-probabilities only, and
/// one whose constraint allows nothing, give the same outcomes with the mask (and the log-probabilities)
/// taken on the backend and on the host; every constrained token is allowed; `min_tokens` keeps the stop
/// token out.
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
    let stop = first[0].as_ref().unwrap().tokens[0];
    let other = 601 - stop;
    for mode in [MaskSampling::Backend, MaskSampling::Host] {
        let run = run_all(m, mode, &[pair(vec![stop])]);
        assert_eq!(run[0].as_ref().unwrap().tokens, [stop]);
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
        (
            request(9, sampling(0.7, 0.9, 0, 10), vec![]),
            LogitsOptions {
                logprobs: Some(5),
                ..LogitsOptions::default()
            },
        ),
    ];
    let on_backend = run_all(m, MaskSampling::Backend, &requests);
    let on_host = run_all(m, MaskSampling::Host, &requests);
    assert!(
        agree(&on_backend, &on_host, 1e-5),
        "{on_backend:?}\n{on_host:?}"
    );
    for (i, n) in [(6, 2), (8, 5)] {
        let run = on_backend[i].as_ref().unwrap();
        assert_eq!(run.logprobs.len(), run.tokens.len());
        for (l, &t) in run.logprobs.iter().zip(&run.tokens) {
            assert_eq!((l.token, l.top.len()), (t, n));
            assert!(l.logprob <= 0.0 && l.top.windows(2).all(|w| w[0].1 >= w[1].1));
        }
    }
    for (i, salt) in [(0, 1), (1, 2), (2, 3), (3, 4), (6, 7)] {
        let toks = &on_backend[i].as_ref().unwrap().tokens;
        assert_eq!(
            toks.len(),
            12,
            "request {i} ends with its constraint: {toks:?}"
        );
        assert!(follows(varied(salt), VOCAB, toks), "request {i}: {toks:?}");
    }
    // The seeds draw differently (the constraint leaves a choice at most steps).
    assert_ne!(on_backend[1], on_backend[2]);
    let pair = &on_backend[5].as_ref().unwrap().tokens;
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
