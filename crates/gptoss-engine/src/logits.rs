//! Per-sequence logit processing beyond the device sampler (DESIGN.md "Where the next capabilities
//! live"): logit bias, presence / frequency / repetition penalties, `min_tokens`, `min_p`, a token
//! constraint (structured outputs) and log-probabilities. A sequence that asks only for masks (a
//! constraint, `min_tokens`) and log-probabilities is sampled by the backend under its token mask
//! ([`LogitsState::next_mask`], [`crate::Backend::sample_masked`]) and gets its log-probabilities from
//! the backend ([`crate::Backend::logprobs`]): on CUDA both on the device, no logit row read back. A
//! sequence that asks for bias, penalties or `min_p` is sampled on the host from its logit row read
//! back after the step ([`LogitsState::sample`]); every other sequence keeps the backend's plain
//! sampler. All draw with the same counter RNG and semantics (`sampler.rs`), so a request's
//! tokens do not depend on how it is sampled.
//!
//! Order, as vLLM applies them: log-probabilities are taken from the raw logits (the model's own
//! distribution, what `gptoss logits` prints), then the bias is added, the repetition penalty scales
//! the logits of every token seen (prompt and output), frequency and presence penalties subtract by
//! the output counts, stop tokens are masked until `min_tokens`, the constraint masks what it does not
//! allow, and the sampler applies temperature, top-k, min-p and top-p.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use crate::backend::SamplingParams;
use crate::sampler;

/// Most `top_logprobs` per token (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// Which tokens may come next, for one sequence (structured outputs). Made fresh for each sequence by
/// a [`ConstraintSpec`]; lives on the engine thread.
pub trait TokenConstraint: Send {
    /// The allowed tokens as a bitset over the vocabulary (bit `t % 32` of word `t / 32`); `None`
    /// allows every token. Tokens beyond the words given are not allowed.
    fn allowed(&mut self) -> Result<Option<Vec<u32>>, String>;
    /// Advances past a sampled token.
    fn accept(&mut self, token: u32) -> Result<(), String>;
    /// Whether the constrained output is complete (nothing more may follow).
    fn is_finished(&self) -> bool;
}

/// Makes a [`TokenConstraint`] for each sequence of a request (a compiled grammar, cloned per choice).
pub trait ConstraintSpec: Send + Sync {
    /// A constraint at the start of the output.
    fn start(&self) -> Result<Box<dyn TokenConstraint>, String>;
}

/// What a request asks of the logit processing (all off by default).
#[derive(Clone, Default)]
pub struct LogitsOptions {
    /// Added to the logits of these tokens (OpenAI's `logit_bias`, -100..=100).
    pub logit_bias: Vec<(u32, f32)>,
    /// Subtracted from every token that occurred in the output.
    pub presence_penalty: f32,
    /// Subtracted once per occurrence in the output.
    pub frequency_penalty: f32,
    /// Divides positive (multiplies negative) logits of tokens in the prompt or output; 1 = off.
    pub repetition_penalty: f32,
    /// Drop tokens whose probability is below `min_p` times the most likely one's (0 = off).
    pub min_p: f32,
    /// The stop tokens cannot be sampled before this many tokens were generated.
    pub min_tokens: usize,
    /// Log-probabilities of each sampled token and of the `n` most likely (`Some(0)`: the sampled
    /// token's only).
    pub logprobs: Option<usize>,
    /// Structured outputs.
    pub constraint: Option<Arc<dyn ConstraintSpec>>,
}

impl fmt::Debug for LogitsOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogitsOptions")
            .field("logit_bias", &self.logit_bias.len())
            .field("presence_penalty", &self.presence_penalty)
            .field("frequency_penalty", &self.frequency_penalty)
            .field("repetition_penalty", &self.repetition_penalty)
            .field("min_p", &self.min_p)
            .field("min_tokens", &self.min_tokens)
            .field("logprobs", &self.logprobs)
            .field("constraint", &self.constraint.is_some())
            .finish()
    }
}

impl LogitsOptions {
    /// Whether anything is asked (otherwise the backend's sampler serves the sequence).
    pub fn is_active(&self) -> bool {
        !self.logit_bias.is_empty()
            || self.presence_penalty != 0.0
            || self.frequency_penalty != 0.0
            || (self.repetition_penalty != 1.0 && self.repetition_penalty != 0.0)
            || self.min_p > 0.0
            || self.min_tokens > 0
            || self.logprobs.is_some()
            || self.constraint.is_some()
    }
}

/// The log-probability of a sampled token and of the most likely tokens at its step.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprobs {
    /// The sampled token.
    pub token: u32,
    /// Its log-probability under the model's distribution.
    pub logprob: f32,
    /// The most likely tokens, most likely first (ties: lower id first).
    pub top: Vec<(u32, f32)>,
}

/// What a host-sampled row yields.
#[derive(Debug)]
pub struct HostSample {
    /// The sampled token.
    pub token: u32,
    /// Its log-probabilities, when asked.
    pub logprobs: Option<TokenLogprobs>,
}

/// The inputs of one host-sampled row besides the logits.
pub struct RowContext<'a> {
    /// The sequence's sampling parameters.
    pub params: &'a SamplingParams,
    /// Its RNG counter (generated-token index).
    pub counter: u64,
    /// Its tokens so far (prompt then output).
    pub tokens: &'a [u32],
    /// Prompt length.
    pub prompt_len: usize,
    /// Its stop tokens.
    pub stop_tokens: &'a [u32],
}

/// One sequence's processing state: the options, output counts, and its constraint.
pub struct LogitsState {
    options: LogitsOptions,
    constraint: Option<Box<dyn TokenConstraint>>,
}

impl LogitsState {
    /// The state at the start of a sequence's output (makes its constraint).
    pub fn new(options: LogitsOptions) -> Result<Self, String> {
        let constraint = match &options.constraint {
            Some(spec) => Some(spec.start()?),
            None => None,
        };
        Ok(LogitsState {
            options,
            constraint,
        })
    }

    /// Whether the constrained output is complete.
    pub fn is_finished(&self) -> bool {
        self.constraint.as_ref().is_some_and(|c| c.is_finished())
    }

    /// Processes `logits` (one row, modified in place) and samples a token; the constraint advances
    /// past it. Fails when the constraint allows nothing or rejects the token.
    pub fn sample(
        &mut self,
        logits: &mut [f32],
        cx: &RowContext<'_>,
    ) -> Result<HostSample, String> {
        // The model's distribution, before any processing changes the row.
        let raw = self.options.logprobs.map(|n| (n, logits.to_vec()));
        self.apply_bias_and_penalties(logits, cx);
        if cx.tokens.len() - cx.prompt_len < self.options.min_tokens {
            for &t in cx.stop_tokens {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = f32::NEG_INFINITY;
                }
            }
        }
        if let Some(c) = self.constraint.as_mut() {
            if let Some(mask) = c.allowed()? {
                if !apply_mask(logits, &mask) {
                    return Err(NOTHING_ALLOWED.into());
                }
            }
        }
        let token = sampler::sample_min_p(logits, cx.params, self.options.min_p, cx.counter);
        if let Some(c) = self.constraint.as_mut() {
            c.accept(token)?;
        }
        let logprobs = raw.map(|(n, row)| token_logprobs(&row, token, n));
        Ok(HostSample { token, logprobs })
    }

    /// Whether the backend can sample this sequence from its logits where they are, given a mask
    /// ([`LogitsState::next_mask`], [`crate::Backend::sample_masked`]) and take its log-probabilities
    /// there ([`crate::Backend::logprobs`]): when only a constraint, `min_tokens` (both only forbid
    /// tokens) and log-probabilities are asked. Bias and penalties change logit values and `min_p` is a
    /// cut the device sampler lacks: those sequences are sampled on the host ([`LogitsState::sample`]).
    pub fn backend_samples(&self) -> bool {
        let o = &self.options;
        o.logit_bias.is_empty()
            && o.presence_penalty == 0.0
            && o.frequency_penalty == 0.0
            && (o.repetition_penalty == 1.0 || o.repetition_penalty == 0.0)
            && o.min_p <= 0.0
    }

    /// How many top log-probabilities each token asks for (`None`: none, not even the token's own).
    pub fn logprobs(&self) -> Option<usize> {
        self.options.logprobs
    }

    /// The tokens the next sample may take, for a sequence the backend samples: the constraint's mask
    /// with the stop tokens cleared until `min_tokens` (what [`LogitsState::sample`] sets to −∞), over
    /// `vocab` tokens; `None` allows every token.
    pub fn next_mask(
        &mut self,
        cx: &RowContext<'_>,
        vocab: usize,
    ) -> Result<Option<Vec<u32>>, String> {
        let mut mask = match self.constraint.as_mut() {
            Some(c) => c.allowed()?,
            None => None,
        };
        if cx.tokens.len().saturating_sub(cx.prompt_len) < self.options.min_tokens {
            let m = mask.get_or_insert_with(|| vec![u32::MAX; vocab.div_ceil(32)]);
            for &t in cx.stop_tokens {
                if let Some(w) = m.get_mut(t as usize / 32) {
                    *w &= !(1u32 << (t % 32));
                }
            }
        }
        Ok(mask)
    }

    /// Advances the constraint past a token the backend sampled under [`LogitsState::next_mask`].
    pub fn accept(&mut self, token: u32) -> Result<(), String> {
        match self.constraint.as_mut() {
            Some(c) => c.accept(token),
            None => Ok(()),
        }
    }

    fn apply_bias_and_penalties(&self, logits: &mut [f32], cx: &RowContext<'_>) {
        let o = &self.options;
        for &(t, b) in &o.logit_bias {
            if let Some(l) = logits.get_mut(t as usize) {
                *l += b;
            }
        }
        let rep = o.repetition_penalty;
        if rep > 0.0 && rep != 1.0 {
            let mut seen = vec![false; logits.len()];
            for &t in cx.tokens {
                if let Some(s) = seen.get_mut(t as usize) {
                    *s = true;
                }
            }
            for (l, _) in logits.iter_mut().zip(&seen).filter(|(_, s)| **s) {
                *l = if *l > 0.0 { *l / rep } else { *l * rep };
            }
        }
        if o.presence_penalty != 0.0 || o.frequency_penalty != 0.0 {
            let mut counts: HashMap<u32, u32> = HashMap::new();
            for &t in cx.tokens.get(cx.prompt_len..).unwrap_or(&[]) {
                *counts.entry(t).or_insert(0) += 1;
            }
            for (t, n) in counts {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l -= o.frequency_penalty * n as f32 + o.presence_penalty;
                }
            }
        }
    }
}

/// The log-probabilities of `token` and of the `n` most likely tokens (at most [`MAX_TOP_LOGPROBS`])
/// under the distribution of the raw logit `row`.
pub fn token_logprobs(row: &[f32], token: u32, n: usize) -> TokenLogprobs {
    let (lse, top) = sampler::log_softmax_top(row, n.min(MAX_TOP_LOGPROBS));
    TokenLogprobs {
        token,
        logprob: row
            .get(token as usize)
            .map_or(f32::NEG_INFINITY, |l| l - lse),
        top,
    }
}

/// Why a constrained row cannot be sampled.
pub const NOTHING_ALLOWED: &str = "the output constraint allows no token of the vocabulary here";

/// Sets the logits of tokens outside `mask` (and NaN logits) to −∞; returns whether any token is left
/// with a finite logit. [`crate::Backend::sample_masked`] keeps these semantics on the device.
pub fn apply_mask(logits: &mut [f32], mask: &[u32]) -> bool {
    let mut any = false;
    for (t, l) in logits.iter_mut().enumerate() {
        let allowed = mask.get(t / 32).is_some_and(|w| w >> (t % 32) & 1 == 1);
        if allowed && *l > f32::NEG_INFINITY {
            any = true;
        } else {
            *l = f32::NEG_INFINITY;
        }
    }
    any
}
