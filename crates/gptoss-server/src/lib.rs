//! gptoss-server: the OpenAI-compatible HTTP API on the gptoss engine.
//!
//! What it does: `POST /v1/chat/completions`, `/v1/completions` and `/v1/responses` (JSON or SSE
//! streams), `GET /v1/models`, `/health` and `/metrics` (Prometheus text). Chat and responses
//! requests become a Harmony conversation ([`conversation`]); sampled tokens go through Harmony's
//! streaming parser into reasoning, content and tool-call deltas ([`generation`]).
//!
//! What it must not know: the model, the backend or the checkpoint format. It holds an
//! [`EngineHandle`] and a tokenizer; the engine thread owns the model and batches every request
//! (continuous batching, `gptoss_engine::scheduler`).
//!
//! Key decisions: every error is an [`ApiError`] mapped to an OpenAI error object in one place; bad
//! input fails that request only. No client can exhaust the server: connections are capped and timed
//! (head, body, idle), a request is counted against admission before its body is read (429 with
//! `Retry-After` beyond the queue), bodies are parsed into compact typed requests and rendered with a
//! token cap on a bounded blocking pool, and only the prompt's tokens wait for a generation slot. A
//! client that disconnects drops its generation, which cancels it in the engine. Tool schemas keep
//! their key order so they render in the order given.
//!
//! ```no_run
//! # async fn demo(engine: gptoss_engine::scheduler::EngineHandle, tok: std::sync::Arc<gptoss_tokenizer::Tokenizer>) -> std::io::Result<()> {
//! use gptoss_server::{AppState, ServerConfig};
//! let state = AppState::new(engine, tok, ServerConfig::new("gpt-oss-20b")).expect("Harmony tokens");
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8000").await?;
//! gptoss_server::serve(listener, state, std::future::pending()).await
//! # }
//! ```
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod admission;
pub mod bodies;
pub mod chat;
mod choices;
pub mod completions;
mod conn;
pub mod conversation;
pub mod error;
pub mod generation;
mod metrics;
mod outputs;
pub mod params;
mod pipeline;
pub mod request;
mod request_log;
pub mod responses;
mod routes;
mod sse;
mod stop;
mod store;
pub mod structured;
mod tokenize;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gptoss_engine::scheduler::EngineHandle;
use gptoss_tokenizer::harmony::Harmony;
use gptoss_tokenizer::Tokenizer;

use admission::{Admission, RenderPool};
use conversation::Prompt;
pub use error::{ApiError, ApiResult};
use generation::{GenSpec, OutputMode};
use metrics::Metrics;
use params::Sampling;
pub use pipeline::{run_endpoint, Endpoint};
pub use routes::router;
use structured::{Grammars, OutputSchema};

/// Who may read `/metrics` when an API key is set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricsAccess {
    /// Only with the API key (the default: labels and counts describe the traffic).
    ApiKey,
    /// Anyone who can reach the server (for scrapers that cannot send a key).
    Public,
}

/// Connection limits: how long a client may take, how many may be connected, how long shutdown waits.
#[derive(Clone, Debug)]
pub struct ConnLimits {
    /// Longest wait for a request's head (its first byte included; an idle kept-alive connection waits
    /// for its next head under the same limit).
    pub header_timeout: Duration,
    /// Longest time to receive a whole request body once its head is in (408 beyond).
    pub body_timeout: Duration,
    /// A kept-alive connection with no request in progress is closed after this long without a byte.
    pub keep_alive_timeout: Duration,
    /// Connections open at once. At the cap a new connection takes the slot of the one idle the longest;
    /// when every one has a request in progress, more are answered 503 and closed.
    pub max_connections: usize,
    /// On shutdown, how long requests in progress may finish before their connections are dropped.
    pub shutdown_timeout: Duration,
}

impl Default for ConnLimits {
    /// 10 s for a head, 30 s for a body, 5 s idle, 512 connections, 10 s to shut down.
    fn default() -> Self {
        ConnLimits {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            keep_alive_timeout: Duration::from_secs(5),
            max_connections: 512,
            shutdown_timeout: Duration::from_secs(10),
        }
    }
}

/// Server settings, fixed at start.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// The `model` name requests must use (and `/v1/models` lists).
    pub model_name: String,
    /// Required bearer token for `/v1/*` (and `/metrics` unless [`MetricsAccess::Public`]), if any.
    pub api_key: Option<String>,
    /// Requests generating at once.
    pub max_concurrency: usize,
    /// Requests admitted beyond that (reading, rendering or waiting) before 429.
    pub max_queue: usize,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Requests parsed and rendered at once, on the blocking pool.
    pub render_threads: usize,
    /// Who may read `/metrics` when `api_key` is set.
    pub metrics_access: MetricsAccess,
    /// Connection limits.
    pub connections: ConnLimits,
    /// Responses kept for `previous_response_id` and `GET /v1/responses/{id}` (oldest dropped).
    pub responses_store: usize,
}

impl ServerConfig {
    /// Defaults: no key, 64 concurrent, 256 queued, 4 MiB bodies, half the cores rendering, `/metrics`
    /// behind the key, [`ConnLimits::default`], 1024 stored responses.
    pub fn new(model_name: impl Into<String>) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        ServerConfig {
            model_name: model_name.into(),
            api_key: None,
            max_concurrency: 64,
            max_queue: 256,
            max_body_bytes: 4 << 20,
            render_threads: (cores / 2).max(1),
            metrics_access: MetricsAccess::ApiKey,
            connections: ConnLimits::default(),
            responses_store: 1024,
        }
    }
}

/// What every handler shares.
pub struct AppState {
    engine: EngineHandle,
    harmony: Harmony,
    config: ServerConfig,
    admission: Admission,
    render: RenderPool,
    metrics: Metrics,
    next_id: AtomicU64,
    /// The vocabulary as the grammar engine sees it, built on the first constrained request.
    grammars: OnceLock<Result<Grammars, String>>,
    /// Stored responses.
    responses: store::ResponseStore,
}

impl AppState {
    /// Binds the API to an engine and its tokenizer (which must have Harmony's special tokens).
    pub fn new(
        engine: EngineHandle,
        tokenizer: Arc<Tokenizer>,
        config: ServerConfig,
    ) -> gptoss_tokenizer::Result<Arc<Self>> {
        let harmony = Harmony::new(tokenizer)?;
        let responses = store::ResponseStore::new(config.responses_store);
        Ok(Arc::new(AppState {
            admission: Admission::new(config.max_concurrency, config.max_queue),
            render: RenderPool::new(config.render_threads),
            engine,
            harmony,
            config,
            metrics: Metrics::new(),
            next_id: AtomicU64::new(1),
            grammars: OnceLock::new(),
            responses,
        }))
    }

    /// The server settings.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// The engine's counters now.
    pub fn engine_stats(&self) -> gptoss_engine::scheduler::StatsSnapshot {
        self.engine.stats().snapshot()
    }

    fn context_tokens(&self) -> usize {
        self.engine.info().context_tokens
    }

    /// Most prompt tokens rendering may produce: the context less one token to generate.
    fn prompt_cap(&self) -> usize {
        self.context_tokens().saturating_sub(1)
    }

    /// The API error of a prompt that cannot be encoded (`param` names it).
    fn prompt_error(&self, e: gptoss_tokenizer::Error, param: &str) -> ApiError {
        match e {
            gptoss_tokenizer::Error::TooManyTokens { cap } => {
                ApiError::context_exceeded(param, format!("more than {cap}"), self.context_tokens())
            }
            e => ApiError::param(param, format!("{param}: cannot encode: {e}")),
        }
    }

    fn created(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }

    fn completion_id(&self, prefix: &str) -> String {
        format!("{prefix}-{}", self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    /// A seed for requests that give none.
    fn fresh_seed(&self) -> u64 {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        nanos ^ self.next_id.fetch_add(1, Ordering::Relaxed).rotate_left(32)
    }

    fn vocab_size(&self) -> usize {
        self.engine.info().vocab_size
    }

    /// Compiles the constraint of `schema` (none when nothing is constrained).
    fn constraint(
        &self,
        schema: &OutputSchema,
    ) -> ApiResult<Option<Arc<dyn gptoss_engine::ConstraintSpec>>> {
        if !schema.is_active() {
            return Ok(None);
        }
        let grammars = self
            .grammars
            .get_or_init(|| Grammars::new(self.harmony.tokenizer(), self.vocab_size()));
        match grammars {
            Ok(g) => g.compile(schema).map(Some),
            Err(e) => Err(ApiError::internal(format!(
                "structured outputs are unavailable: {e}"
            ))),
        }
    }

    /// Checks the prompt against the context and bounds the new tokens by what is left of it.
    fn gen_spec(
        &self,
        prompt: Prompt,
        sampling: Sampling,
        max_tokens: Option<usize>,
        stop: Vec<String>,
        mode: OutputMode,
    ) -> ApiResult<GenSpec> {
        let context = self.context_tokens();
        let n = prompt.tokens.len();
        if n >= context {
            let param = if mode == OutputMode::Raw {
                "prompt"
            } else {
                "messages"
            };
            return Err(ApiError::context_exceeded(param, n.to_string(), context));
        }
        let room = context - n;
        let max_tokens = max_tokens.map_or(room, |m| m.min(room));
        if sampling.logits.min_tokens > max_tokens {
            return Err(ApiError::param(
                "min_tokens",
                format!(
                    "min_tokens: {} is more than the token limit {max_tokens}",
                    sampling.logits.min_tokens
                ),
            ));
        }
        Ok(GenSpec {
            prompt: prompt.tokens,
            sampling: sampling.params,
            max_tokens,
            stop,
            mode,
            logits: sampling.logits,
            ignore_eos: sampling.ignore_eos,
            fork: None,
        })
    }
}

/// Serves the API on `listener` until `shutdown` completes, then lets requests in progress finish for
/// at most the configured shutdown deadline (see [`ConnLimits`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    conn::serve(listener, state, shutdown).await
}
