//! One request at a time on a caller's model, through the scheduler every command uses ([`Engine`]):
//! chunked prefill, then decoding (speculative when asked) until a stop token or the token limit. For
//! `gptoss run`, tests and tools ([`generate`], a fresh engine per request) and `gptoss chat`
//! ([`Session`], one engine for the whole conversation, so each turn reuses the KV blocks of the turns
//! before it through the prefix cache). The server drives the same engine on its own thread.

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
    /// The engine's counters for this request alone (steps, tokens run through the model, drafted
    /// and accepted tokens, ...); its gauges as the request ended.
    pub stats: StatsSnapshot,
    /// Prompt tokens whose keys and values came from the prefix cache (computed by an earlier request
    /// of the same [`Session`]).
    pub cached_tokens: usize,
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
    on_step: impl FnMut(&[u32]) -> Flow,
) -> Result<Generation> {
    Session::new(model, config).generate_until(request, on_step)
}

/// A model answering one request after another through one engine (an interactive chat): the engine,
/// and with it the prefix cache, lives as long as the session, so a request whose prompt starts with
/// an earlier one's (the next turn of a conversation) shares that prompt's KV blocks and computes only
/// the rest. The output is the same as with a fresh engine per request.
pub struct Session<'m, B: Backend> {
    engine: Engine<'m, B>,
    stats: Arc<EngineStats>,
    next_id: u64,
}

impl<'m, B: Backend> Session<'m, B> {
    /// A session on `model`, its engine configured by `config` (step budget, speculation, prefix
    /// caching).
    pub fn new(model: &'m mut Model<B>, config: EngineConfig) -> Self {
        let stats = Arc::new(EngineStats::default());
        Session {
            engine: Engine::new(model, config, stats.clone()),
            stats,
            next_id: 0,
        }
    }

    /// The model.
    pub fn model(&self) -> &Model<B> {
        self.engine.model()
    }

    /// [`generate_until`] on this session's engine.
    pub fn generate_until(
        &mut self,
        request: GenRequest,
        on_step: impl FnMut(&[u32]) -> Flow,
    ) -> Result<Generation> {
        let id = RequestId(self.next_id);
        self.next_id += 1;
        let before = self.stats.snapshot();
        let mut done = drive(&mut self.engine, id, request, on_step)?;
        done.stats = self.stats.snapshot().since(&before);
        Ok(done)
    }
}

/// Runs request `id` on `engine` until it ends; `stats` of the result are left for the caller.
fn drive<B: Backend>(
    engine: &mut Engine<'_, B>,
    id: RequestId,
    request: GenRequest,
    mut on_step: impl FnMut(&[u32]) -> Flow,
) -> Result<Generation> {
    let (tx, rx) = mpsc::channel();
    engine.submit(id, request, channel_sink(tx));
    let mut tokens = Vec::new();
    let mut stop_asked = false;
    loop {
        let before = tokens.len();
        let mut finished = None;
        for out in rx.try_iter() {
            match out {
                Output::Token(t) => tokens.push(t),
                Output::Finished(f) => finished = Some(f),
                // A backend failure comes back from `try_step` with its own error.
                Output::Failed {
                    kind: FailureKind::Invalid | FailureKind::Internal,
                    message,
                } => return Err(Error::invalid(message)),
                Output::Logprobs(_) => {}
            }
        }
        let flow = on_step(&tokens[before..]);
        if let Some(f) = finished {
            let reason = match f.reason {
                FinishReason::Stop => StopReason::Stop,
                FinishReason::Length => StopReason::Length,
                FinishReason::Cancelled if stop_asked => StopReason::Cancelled,
                FinishReason::Cancelled => return Err(Error::invalid("the request was cancelled")),
            };
            return Ok(Generation {
                tokens,
                reason,
                stats: StatsSnapshot::default(),
                cached_tokens: f.cached_tokens,
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
