//! What crosses the engine boundary: a [`GenRequest`] in, [`Output`]s back through the request's
//! [`OutputSink`]; and the engine's own record of a sequence (tokens, how many are in the KV cache).

use crate::backend::SamplingParams;
use crate::logits::{LogitsOptions, LogitsState, TokenLogprobs};

use super::draft::DraftProposer;

/// Identifies a request for its whole life (also across preemption).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

/// One generation request.
#[derive(Clone, Debug)]
pub struct GenRequest {
    /// Prompt token ids (non-empty, shorter than the context).
    pub prompt: Vec<u32>,
    /// Sampling parameters; the RNG counter is the request's own generated-token index, so the
    /// output does not depend on what else is batched with it.
    pub sampling: SamplingParams,
    /// Most new tokens.
    pub max_new_tokens: usize,
    /// Tokens that end generation (the stop token itself is returned).
    pub stop_tokens: Vec<u32>,
}

/// Requests submitted under one group with the same prompt are choices of one request (`n`): the
/// first to run prefills the prompt, the others start from a copy of its KV state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ForkGroup(pub u64);

/// What a request asks beyond [`GenRequest`] (default: nothing).
#[derive(Clone, Debug, Default)]
pub struct RequestOptions {
    /// Host-side logit processing: bias, penalties, a constraint, log-probabilities.
    pub logits: LogitsOptions,
    /// Share the prompt's KV state with the other choices of the same request.
    pub fork: Option<ForkGroup>,
}

/// Why a request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop token was sampled.
    Stop,
    /// `max_new_tokens` or the context was reached.
    Length,
    /// The request was cancelled (or its receiver went away).
    Cancelled,
}

/// Token counts of a finished request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Finish {
    /// Why it ended.
    pub reason: FinishReason,
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Generated tokens (including a stop token).
    pub generated_tokens: usize,
    /// Prompt tokens whose keys and values came from the prefix cache (or a sibling choice) instead
    /// of being computed.
    pub cached_tokens: usize,
}

/// Whose fault a failed request is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// The request itself is bad (empty prompt, too long, token outside the vocabulary).
    Invalid,
    /// The backend failed while running it.
    Internal,
}

/// What the engine tells a request's owner.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    /// A new token.
    Token(u32),
    /// The log-probabilities of the token that follows (only for requests that ask for them).
    Logprobs(TokenLogprobs),
    /// The request ended normally; nothing follows.
    Finished(Finish),
    /// The request failed; nothing follows.
    Failed {
        /// Whose fault.
        kind: FailureKind,
        /// What went wrong.
        message: String,
    },
}

/// Where a request's outputs go. Returns false when the receiver is gone: the engine then cancels
/// the request (a client that disconnected).
pub type OutputSink = Box<dyn FnMut(Output) -> bool + Send>;

/// A sink that sends into a std channel.
pub fn channel_sink(tx: std::sync::mpsc::Sender<Output>) -> OutputSink {
    Box::new(move |out| tx.send(out).is_ok())
}

/// The engine's record of one request.
pub(crate) struct Sequence {
    pub id: RequestId,
    /// Prompt followed by the generated tokens.
    pub tokens: Vec<u32>,
    pub prompt_len: usize,
    /// Tokens whose keys and values are in the cache (0 after preemption: recompute).
    pub computed: usize,
    pub sampling: SamplingParams,
    pub max_new_tokens: usize,
    pub stop_tokens: Vec<u32>,
    pub sink: OutputSink,
    /// Guesses the next tokens (speculative decoding); `None` decodes one token per step.
    pub proposer: Option<Box<dyn DraftProposer>>,
    /// Tokens drafted for the step being run (after `tokens`, not part of them until accepted).
    pub draft: Vec<u32>,
    /// Host-side logit processing (`None`: the backend samples this sequence).
    pub logits: Option<LogitsState>,
    /// Prompt tokens reused from the prefix cache at admission (the most of any admission).
    pub cached_tokens: usize,
    /// The request's choice group (`n`).
    pub fork: Option<ForkGroup>,
    /// Whether its prompt's blocks were registered with the prefix cache.
    pub registered: bool,
}

impl Sequence {
    #[cfg(test)]
    pub fn new(
        id: RequestId,
        request: GenRequest,
        sink: OutputSink,
        proposer: Option<Box<dyn DraftProposer>>,
    ) -> Self {
        Self::with_logits(id, request, sink, proposer, None)
    }

    /// A sequence whose logits are processed on the host by `logits`.
    pub fn with_logits(
        id: RequestId,
        request: GenRequest,
        sink: OutputSink,
        proposer: Option<Box<dyn DraftProposer>>,
        logits: Option<LogitsState>,
    ) -> Self {
        Sequence {
            id,
            prompt_len: request.prompt.len(),
            tokens: request.prompt,
            computed: 0,
            sampling: request.sampling,
            max_new_tokens: request.max_new_tokens,
            stop_tokens: request.stop_tokens,
            sink,
            proposer,
            draft: Vec::new(),
            logits,
            cached_tokens: 0,
            fork: None,
            registered: false,
        }
    }

    /// Tokens sampled so far.
    pub fn generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }

    /// Tokens the request may still generate.
    pub fn remaining(&self) -> usize {
        self.max_new_tokens.saturating_sub(self.generated())
    }

    /// Tokens still to run through the model before the next sample.
    pub fn uncomputed(&self) -> usize {
        self.tokens.len() - self.computed
    }

    /// The finish record for `reason`.
    pub fn finish(&self, reason: FinishReason) -> Finish {
        Finish {
            reason,
            prompt_tokens: self.prompt_len,
            generated_tokens: self.generated(),
            cached_tokens: self.cached_tokens,
        }
    }
}
