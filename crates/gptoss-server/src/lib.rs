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
//! input fails that request only. A request is admitted through a gate (`--max-concurrency`, queue
//! limit → 429 with `Retry-After`). A client that disconnects drops its generation, which cancels
//! it in the engine. Request JSON keeps key order so tool schemas render in the order given.
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
pub mod chat;
pub mod completions;
pub mod conversation;
pub mod error;
pub mod generation;
mod metrics;
pub mod params;
pub mod responses;
mod routes;
mod sse;
mod stop;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use gptoss_engine::scheduler::EngineHandle;
use gptoss_engine::SamplingParams;
use gptoss_tokenizer::harmony::Harmony;
use gptoss_tokenizer::Tokenizer;

use admission::Admission;
use conversation::Prompt;
pub use error::{ApiError, ApiResult};
use generation::{GenSpec, OutputMode};
use metrics::Metrics;
pub use params::Body;
pub use routes::router;

/// Server settings, fixed at start.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// The `model` name requests must use (and `/v1/models` lists).
    pub model_name: String,
    /// Required bearer token for `/v1/*`, if any.
    pub api_key: Option<String>,
    /// Requests generating at once.
    pub max_concurrency: usize,
    /// Requests waiting beyond that before 429.
    pub max_queue: usize,
    /// Largest request body.
    pub max_body_bytes: usize,
}

impl ServerConfig {
    /// Defaults: no key, 64 concurrent, 256 queued, 4 MiB bodies.
    pub fn new(model_name: impl Into<String>) -> Self {
        ServerConfig {
            model_name: model_name.into(),
            api_key: None,
            max_concurrency: 64,
            max_queue: 256,
            max_body_bytes: 4 << 20,
        }
    }
}

/// What every handler shares.
pub struct AppState {
    engine: EngineHandle,
    harmony: Harmony,
    config: ServerConfig,
    admission: Admission,
    metrics: Metrics,
    next_id: AtomicU64,
}

impl AppState {
    /// Binds the API to an engine and its tokenizer (which must have Harmony's special tokens).
    pub fn new(
        engine: EngineHandle,
        tokenizer: Arc<Tokenizer>,
        config: ServerConfig,
    ) -> gptoss_tokenizer::Result<Arc<Self>> {
        let harmony = Harmony::new(tokenizer)?;
        Ok(Arc::new(AppState {
            admission: Admission::new(config.max_concurrency, config.max_queue),
            engine,
            harmony,
            config,
            metrics: Metrics::default(),
            next_id: AtomicU64::new(1),
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

    /// Checks the prompt against the context and bounds the new tokens by what is left of it.
    fn gen_spec(
        &self,
        prompt: Prompt,
        sampling: SamplingParams,
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
            return Err(ApiError::param(
                param,
                format!("the prompt has {n} tokens; this model's context is {context} tokens (prompt + answer)"),
            )
            .with_code("context_length_exceeded"));
        }
        let room = context - n;
        Ok(GenSpec {
            prompt: prompt.tokens,
            forced: prompt.forced,
            sampling,
            max_tokens: max_tokens.map_or(room, |m| m.min(room)),
            stop,
            mode,
        })
    }
}

/// Serves the API on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Runs one request body against an endpoint without HTTP (the batch runner): `url` is
/// `/v1/chat/completions`, `/v1/completions` or `/v1/responses`; streaming is ignored.
pub async fn run_endpoint(
    state: &Arc<AppState>,
    url: &str,
    body: Body,
) -> ApiResult<serde_json::Value> {
    match url {
        "/v1/chat/completions" => chat::complete(state, &body).await,
        "/v1/completions" => completions::complete(state, &body).await,
        "/v1/responses" => responses::complete(state, &body).await,
        other => Err(ApiError::param(
            "url",
            format!("url: expected /v1/chat/completions, /v1/completions or /v1/responses, got {other:?}"),
        )),
    }
}
