//! One request's generation as the API sees it: submit the prompt to the engine, turn sampled tokens
//! into deltas (Harmony: reasoning / content / tool calls through the streaming parser; raw: text),
//! apply `stop` strings, and finish with a reason and usage. Dropping a [`Generation`] cancels it.
//!
//! Output that does not follow Harmony never fails the request and is never dropped: the parser hands
//! it back as text, which becomes content, and [`Delta::Malformed`] says so once. Latencies (first
//! token, between tokens, end to end) go to `/metrics` as the tokens arrive.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use gptoss_engine::scheduler::{
    FailureKind, FinishReason, ForkGroup, GenRequest, Output, RequestId, RequestOptions,
};
use gptoss_engine::{LogitsOptions, SamplingParams, TokenLogprobs};
use gptoss_tokenizer::harmony::{ParseEvent, ParserStart, Role, StreamParser, Strictness};
use gptoss_tokenizer::StreamDecoder;
use tokio::sync::mpsc;

use crate::admission::Permit;
use crate::error::{ApiError, ApiResult};
use crate::stop::StopStrings;
use crate::AppState;

/// How sampled tokens are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputMode {
    /// Harmony messages after `<|start|>assistant`.
    Harmony,
    /// Plain text (`/v1/completions`).
    Raw,
}

/// What to generate.
#[derive(Clone, Debug)]
pub struct GenSpec {
    /// Prompt ids.
    pub prompt: Vec<u32>,
    /// Sampling.
    pub sampling: SamplingParams,
    /// Most new tokens.
    pub max_tokens: usize,
    /// Stop strings (content is cut before the first one).
    pub stop: Vec<String>,
    /// How to read the output.
    pub mode: OutputMode,
    /// Host-side logit processing (bias, penalties, constraint, log-probabilities).
    pub logits: LogitsOptions,
    /// Generation runs past the stop tokens, to the token limit.
    pub ignore_eos: bool,
    /// The choice group of an `n > 1` request.
    pub fork: Option<ForkGroup>,
}

/// A piece of output.
#[derive(Clone, Debug, PartialEq)]
pub enum Delta {
    /// Chain of thought (`analysis`).
    Reasoning(String),
    /// User-visible text (`final`, preambles, or raw text).
    Content(String),
    /// A tool call begins.
    ToolStart {
        /// 0-based call index within the answer.
        index: usize,
        /// Call id.
        id: String,
        /// Function name.
        name: String,
    },
    /// Argument text of call `index`.
    ToolArgs {
        /// Call index.
        index: usize,
        /// Text.
        text: String,
    },
    /// The model's output stopped following Harmony: from here on, text it could not place (tokens
    /// between messages, a header that does not parse and what follows it) comes as [`Delta::Content`],
    /// as it was generated. Sent once per generation, before that content.
    Malformed,
    /// The log-probabilities of a sampled token (after the deltas it produced).
    Logprob {
        /// Whether the token is part of the user-visible content (`final` text, preambles, or raw
        /// completion text), as OpenAI reports logprobs for content only.
        content: bool,
        /// The token and its top alternatives.
        logprobs: TokenLogprobs,
    },
}

/// Why the answer ended, in the API's words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// `stop`
    Stop,
    /// `length`
    Length,
    /// `tool_calls`
    ToolCalls,
}

impl Finish {
    /// The `finish_reason` string.
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
            Finish::ToolCalls => "tool_calls",
        }
    }
}

/// Token counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Generated tokens.
    pub completion_tokens: usize,
    /// Prompt tokens whose keys and values came from the prefix cache.
    pub cached_tokens: usize,
}

/// What [`Generation::next`] yields.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// New output.
    Deltas(Vec<Delta>),
    /// The end.
    Done(Finish, Usage),
}

enum Reader {
    Harmony(Box<StreamParser>),
    Raw(StreamDecoder),
}

/// A running generation.
pub struct Generation {
    state: Arc<AppState>,
    id: RequestId,
    rx: mpsc::UnboundedReceiver<Output>,
    /// Steps ready to hand out.
    ready: VecDeque<Step>,
    reader: Reader,
    stop: StopStrings,
    tool_calls: usize,
    prompt_tokens: usize,
    cached_tokens: usize,
    generated: usize,
    /// The engine has nothing more to say.
    ended: bool,
    /// When the prompt was submitted to the engine.
    started: Instant,
    /// When the last token arrived.
    last_token: Option<Instant>,
    /// Log-probabilities of the next token (they arrive just before it).
    pending_logprobs: Option<TokenLogprobs>,
    /// Whether the last token read was user-visible content.
    in_content: bool,
    /// Whether [`Delta::Malformed`] was sent.
    malformed: bool,
    /// The request's place (held until the generation ends), its admission time and log line.
    permit: Arc<Permit>,
}

impl Generation {
    /// Submits `spec` under an admission `permit` (held until the generation ends) and waits for the
    /// engine's first answer, so a request the engine rejects is an error here rather than in the
    /// middle of a stream.
    pub async fn start(
        state: Arc<AppState>,
        spec: GenSpec,
        permit: Arc<Permit>,
    ) -> ApiResult<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        let stop_tokens = if spec.ignore_eos {
            Vec::new()
        } else {
            state.harmony.stop_tokens()
        };
        let request = GenRequest {
            prompt: spec.prompt.clone(),
            sampling: spec.sampling,
            max_new_tokens: spec.max_tokens,
            stop_tokens,
        };
        let started = Instant::now();
        let id = state
            .engine
            .submit_with(
                request,
                RequestOptions {
                    logits: spec.logits.clone(),
                    fork: spec.fork,
                },
                Box::new(move |out| tx.send(out).is_ok()),
            )
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let reader = match spec.mode {
            OutputMode::Harmony => Reader::Harmony(Box::new(StreamParser::new(
                state.harmony.clone(),
                ParserStart::Header(Role::Assistant),
                Strictness::Lenient,
            ))),
            OutputMode::Raw => Reader::Raw(StreamDecoder::new()),
        };
        let mut g = Generation {
            state,
            id,
            rx,
            ready: VecDeque::new(),
            reader,
            stop: StopStrings::new(spec.stop),
            tool_calls: 0,
            prompt_tokens: spec.prompt.len(),
            cached_tokens: 0,
            generated: 0,
            ended: false,
            started,
            last_token: None,
            pending_logprobs: None,
            in_content: spec.mode == OutputMode::Raw,
            malformed: false,
            permit,
        };
        let first =
            g.rx.recv()
                .await
                .ok_or_else(|| ApiError::internal("the engine stopped"))?;
        if let Output::Failed { kind, message } = first {
            g.ended = true;
            return Err(failure(kind, message));
        }
        g.apply(first);
        Ok(g)
    }

    /// The next output, or `None` after the end.
    pub async fn next(&mut self) -> Option<ApiResult<Step>> {
        loop {
            if let Some(step) = self.ready.pop_front() {
                return Some(Ok(step));
            }
            if self.ended {
                return None;
            }
            match self.rx.recv().await {
                Some(Output::Failed { kind, message }) => {
                    self.ended = true;
                    return Some(Err(failure(kind, message)));
                }
                Some(out) => self.apply(out),
                None => {
                    self.ended = true;
                    return Some(Err(ApiError::internal("the engine stopped")));
                }
            }
        }
    }

    /// Runs to the end, gathering every delta.
    pub async fn collect(mut self) -> ApiResult<(Vec<Delta>, Finish, Usage)> {
        let mut all = Vec::new();
        while let Some(step) = self.next().await {
            match step? {
                Step::Deltas(d) => all.extend(d),
                Step::Done(finish, usage) => return Ok((all, finish, usage)),
            }
        }
        Err(ApiError::internal("the generation ended without a finish"))
    }

    /// Turns one engine output into ready steps.
    fn apply(&mut self, out: Output) {
        match out {
            Output::Logprobs(lp) => self.pending_logprobs = Some(lp),
            Output::Token(tok) => {
                self.generated += 1;
                self.time_token();
                let mut deltas = self.read(tok);
                if let Some(logprobs) = self.pending_logprobs.take() {
                    let special = self.state.harmony.tokenizer().is_special(tok);
                    deltas.push(Delta::Logprob {
                        content: self.in_content && !special,
                        logprobs,
                    });
                }
                self.push_deltas(deltas);
                if self.stop.stopped() {
                    self.state.engine.cancel(self.id);
                    self.end(Finish::Stop);
                }
            }
            Output::Finished(f) => {
                self.cached_tokens = f.cached_tokens;
                let deltas = self.flush();
                self.push_deltas(deltas);
                let finish = match f.reason {
                    FinishReason::Length => Finish::Length,
                    _ if self.tool_calls > 0 => Finish::ToolCalls,
                    _ => Finish::Stop,
                };
                self.end(finish);
            }
            Output::Failed { .. } => {}
        }
    }

    /// Records the time to this token: from admission for the first, from the last token after.
    fn time_token(&mut self) {
        let now = Instant::now();
        match self.last_token {
            None => {
                let since = now.saturating_duration_since(self.permit.admitted());
                self.state.metrics.first_token(since);
            }
            Some(last) => self
                .state
                .metrics
                .inter_token(now.saturating_duration_since(last)),
        }
        self.last_token = Some(now);
    }

    fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.generated,
            cached_tokens: self.cached_tokens,
        }
    }

    fn push_deltas(&mut self, deltas: Vec<Delta>) {
        if !deltas.is_empty() {
            self.ready.push_back(Step::Deltas(deltas));
        }
    }

    fn end(&mut self, finish: Finish) {
        self.ended = true;
        let usage = self.usage();
        let since_admission = self.permit.admitted().elapsed();
        self.state
            .metrics
            .finished(usage, since_admission, self.started.elapsed());
        self.permit.add_usage(usage);
        // The request's own line is written when its response has been sent (`request_log.rs`).
        tracing::debug!(
            request = self.id.0,
            prompt_tokens = usage.prompt_tokens,
            cached_tokens = usage.cached_tokens,
            completion_tokens = usage.completion_tokens,
            finish = finish.as_str(),
            ms = self.started.elapsed().as_secs_f64() * 1e3,
            "generation finished"
        );
        self.ready.push_back(Step::Done(finish, usage));
    }

    /// The deltas of one sampled token.
    fn read(&mut self, tok: u32) -> Vec<Delta> {
        if self.stop.stopped() {
            return Vec::new();
        }
        let events = match &mut self.reader {
            // A lenient parser does not fail; were it to, the token is still returned as text.
            Reader::Harmony(parser) => parser.push(tok).unwrap_or_else(|e| {
                tracing::debug!(token = tok, error = %e, "output token the parser refused");
                let tokenizer = self.state.harmony.tokenizer();
                let bytes = tokenizer.token_bytes(tok).unwrap_or_default();
                vec![ParseEvent::Unparsed(
                    String::from_utf8_lossy(bytes).into_owned(),
                )]
            }),
            Reader::Raw(decoder) => {
                let tokenizer = self.state.harmony.tokenizer();
                // Special tokens (the stop token among them) are not text, as in OpenAI's and vLLM's
                // completions (`skip_special_tokens`).
                let text = match tokenizer.token_bytes(tok) {
                    Ok(_) if tokenizer.is_special(tok) => String::new(),
                    Ok(bytes) => decoder.push_bytes(bytes),
                    Err(_) => String::new(), // an embedding row outside the vocabulary
                };
                vec![ParseEvent::Final(text)]
            }
        };
        self.deltas(events)
    }

    /// The deltas of the end of the stream (a message still open, held-back text).
    fn flush(&mut self) -> Vec<Delta> {
        let events = match &mut self.reader {
            Reader::Harmony(parser) => parser
                .finish()
                .unwrap_or_else(|_| vec![ParseEvent::Unparsed(String::new())]),
            Reader::Raw(decoder) => vec![ParseEvent::Final(decoder.finish())],
        };
        let mut deltas = self.deltas(events);
        let held = self.stop.flush();
        if !held.is_empty() {
            deltas.push(Delta::Content(held));
        }
        deltas
    }

    fn deltas(&mut self, events: Vec<ParseEvent>) -> Vec<Delta> {
        let mut out = Vec::new();
        for event in events {
            match &event {
                ParseEvent::Final(_) | ParseEvent::Preamble(_) | ParseEvent::Unparsed(_) => {
                    self.in_content = true
                }
                _ if self.mode_raw() => {}
                _ => self.in_content = false,
            }
            if matches!(event, ParseEvent::Unparsed(_)) && !self.malformed {
                self.malformed = true;
                out.push(Delta::Malformed);
            }
            match event {
                ParseEvent::Reasoning(t) => out.push(Delta::Reasoning(t)),
                ParseEvent::Final(t) | ParseEvent::Preamble(t) | ParseEvent::Unparsed(t) => {
                    let visible = self.stop.push(&t);
                    if !visible.is_empty() {
                        out.push(Delta::Content(visible));
                    }
                }
                ParseEvent::ToolCallStart { recipient, .. } => {
                    let name = recipient.strip_prefix("functions.").unwrap_or(&recipient);
                    out.push(Delta::ToolStart {
                        index: self.tool_calls,
                        id: format!("call_{}_{}", self.id.0, self.tool_calls),
                        name: name.to_string(),
                    });
                    self.tool_calls += 1;
                }
                ParseEvent::ToolCallArgs(text) => out.push(Delta::ToolArgs {
                    index: self.tool_calls.saturating_sub(1),
                    text,
                }),
                ParseEvent::MessageEnd { .. } => {}
            }
        }
        out
    }
}

impl Generation {
    fn mode_raw(&self) -> bool {
        matches!(self.reader, Reader::Raw(_))
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        if !self.ended {
            self.state.engine.cancel(self.id);
            self.permit.add_usage(self.usage());
        }
    }
}

fn failure(kind: FailureKind, message: String) -> ApiError {
    match kind {
        FailureKind::Invalid => ApiError::invalid(message),
        FailureKind::Internal => ApiError::internal(message),
    }
}
