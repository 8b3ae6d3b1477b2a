//! One request on a caller's model, through the scheduler every command uses ([`Engine`]): chunked
//! prefill, then decoding (speculative when asked) until a stop token or the token limit. For
//! `gptoss run`, tests and tools; the server drives the same engine on its own thread.

use std::sync::mpsc;
use std::sync::Arc;

use crate::backend::{Backend, SamplingParams};
use crate::error::{Error, Result};
use crate::model::Model;
use crate::scheduler::{
    channel_sink, Engine, EngineConfig, EngineStats, FailureKind, FinishReason, GenRequest, Output,
    RequestId, StatsSnapshot,
};

/// What to generate.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    /// Most new tokens.
    pub max_new_tokens: usize,
    /// Sampling parameters.
    pub sampling: SamplingParams,
    /// Tokens that end generation (the stop token itself is returned).
    pub stop_tokens: Vec<u32>,
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// A stop token was sampled.
    Stop,
    /// `max_new_tokens` (or the context) was reached.
    Length,
    /// The caller asked to stop ([`Flow::Stop`] from [`generate_until`]'s callback).
    Cancelled,
}

/// What the caller of [`generate_until`] wants after a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// Go on generating.
    Continue,
    /// Cancel the request now (an interactive user pressed Ctrl-C); what was generated is kept.
    Stop,
}

/// A finished request.
#[derive(Clone, Debug)]
pub struct Generation {
    /// The new tokens.
    pub tokens: Vec<u32>,
    /// Why generation ended.
    pub reason: StopReason,
    /// The engine's counters for this request alone (steps, drafted and accepted tokens, ...).
    pub stats: StatsSnapshot,
}

/// Generates after `prompt` without speculation, calling `on_token` for each new token. Returns the
/// new tokens and why generation stopped. Earlier contents of the cache are overwritten, never read.
pub fn generate<B: Backend>(
    model: &mut Model<B>,
    prompt: &[u32],
    options: &GenerateOptions,
    on_token: impl FnMut(u32),
) -> Result<(Vec<u32>, StopReason)> {
    let request = GenRequest {
        prompt: prompt.to_vec(),
        sampling: options.sampling,
        max_new_tokens: options.max_new_tokens,
        stop_tokens: options.stop_tokens.clone(),
    };
    let done = generate_with(model, request, EngineConfig::default(), on_token)?;
    Ok((done.tokens, done.reason))
}

/// Runs `request` alone on `model` through an engine configured by `config` (step budget,
/// speculation), calling `on_token` for each new token as its step ends.
pub fn generate_with<B: Backend>(
    model: &mut Model<B>,
    request: GenRequest,
    config: EngineConfig,
    mut on_token: impl FnMut(u32),
) -> Result<Generation> {
    generate_until(model, request, config, |tokens| {
        tokens.iter().for_each(|&t| on_token(t));
        Flow::Continue
    })
}

/// [`generate_with`] that the caller can stop: `on_step` gets the tokens of each engine step (none
/// for a prefill chunk) and may answer [`Flow::Stop`], which cancels the request between steps and
/// returns what was generated with [`StopReason::Cancelled`].
pub fn generate_until<B: Backend>(
    model: &mut Model<B>,
    request: GenRequest,
    config: EngineConfig,
    mut on_step: impl FnMut(&[u32]) -> Flow,
) -> Result<Generation> {
    let stats = Arc::new(EngineStats::default());
    let mut engine = Engine::new(model, config, stats.clone());
    let (tx, rx) = mpsc::channel();
    let id = RequestId(0);
    engine.submit(id, request, channel_sink(tx));
    let mut tokens = Vec::new();
    let mut stop_asked = false;
    loop {
        let before = tokens.len();
        let mut finished = None;
        for out in rx.try_iter() {
            match out {
                Output::Token(t) => tokens.push(t),
                Output::Finished(f) => finished = Some(f.reason),
                // A backend failure comes back from `try_step` with its own error.
                Output::Failed {
                    kind: FailureKind::Invalid | FailureKind::Internal,
                    message,
                } => return Err(Error::invalid(message)),
                Output::Logprobs(_) => {}
            }
        }
        let flow = on_step(&tokens[before..]);
        if let Some(reason) = finished {
            let reason = match reason {
                FinishReason::Stop => StopReason::Stop,
                FinishReason::Length => StopReason::Length,
                FinishReason::Cancelled if stop_asked => StopReason::Cancelled,
                FinishReason::Cancelled => return Err(Error::invalid("the request was cancelled")),
            };
            let stats = stats.snapshot();
            return Ok(Generation {
                tokens,
                reason,
                stats,
            });
        }
        if flow == Flow::Stop && !stop_asked {
            stop_asked = true;
            engine.cancel(id);
            continue;
        }
        if !engine.has_work() {
            return Err(Error::invalid(
                "the engine ended the request without a result",
            ));
        }
        engine.try_step()?;
    }
}
