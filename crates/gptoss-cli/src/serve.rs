//! `gptoss serve`: the OpenAI-compatible server. Also the engine start-up shared with `gptoss batch`:
//! load the checkpoint, pick its tokenizer, start the engine thread with `--max-seqs` cache slots.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use gptoss_engine::scheduler::{spawn_engine_with, EngineConfig, EngineHandle, PrefixCaching};
use gptoss_engine::{Capacity, MAX_BATCH_TOKENS, MAX_KV_BLOCKS, MAX_SLOTS};
use gptoss_formats::ModelWeights;
use gptoss_server::{AppState, ConnLimits, MetricsAccess, ServerConfig};
use gptoss_tokenizer::Tokenizer;

use crate::device::{self, AnyModel};
use crate::source::{self, size_in, ModelArgs};
use crate::spec::SpecArgs;
use crate::vocab;

/// Default token budget of one engine step. Each step reads every weight once, so a long prompt goes faster
/// in bigger chunks: on the H200, a 2,048-token prompt of 20b took 0.35 s in chunks of 512, 0.28 s in
/// chunks of 1,024 and 0.25 s in one step of 2,048 (bench/BENCHMARKS.md); the step's buffers cost ~0.3 GiB.
pub const DEFAULT_BATCH_TOKENS: usize = 2048;

/// How the engine batches (shared by `serve` and `batch`).
#[derive(Args, Clone, Debug)]
pub struct EngineArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Sequences run together (KV cache slots).
    #[arg(long, default_value_t = 16, value_parser = size_in(1, MAX_SLOTS))]
    pub max_seqs: usize,
    /// Token budget of one engine step (prefill chunks and decodes together).
    #[arg(long, default_value_t = DEFAULT_BATCH_TOKENS, value_parser = size_in(1, MAX_BATCH_TOKENS))]
    pub batch_tokens: usize,
    /// Full-attention KV pool in blocks of 16 positions (of every full-attention layer); default: every
    /// slot at full context, or on a GPU as many as --max-vram holds.
    #[arg(long, value_parser = size_in(1, MAX_KV_BLOCKS))]
    pub kv_blocks: Option<usize>,
    /// The model name clients use (default: the checkpoint's directory or file name).
    #[arg(long)]
    pub served_model_name: Option<String>,
    /// Compute every prompt from scratch: no KV blocks are kept and shared between requests
    /// (prefix caching is on by default; outputs are the same either way).
    #[arg(long)]
    pub no_prefix_cache: bool,
    #[command(flatten)]
    pub spec: SpecArgs,
}

/// A running engine with its tokenizer and name.
pub struct Started {
    /// The engine thread's handle.
    pub engine: EngineHandle,
    /// The checkpoint's tokenizer.
    pub tokenizer: Arc<Tokenizer>,
    /// The model name.
    pub name: String,
}

/// Loads the model and starts the engine thread.
pub fn start_engine(args: &EngineArgs) -> Result<Started> {
    anyhow::ensure!(args.max_seqs >= 1, "--max-seqs must be at least 1");
    anyhow::ensure!(args.batch_tokens >= 1, "--batch-tokens must be at least 1");
    let speculative = args.spec.speculative()?;
    let loaded = source::load(&args.model)?;
    let tokenizer = vocab::tokenizer_for(&loaded)?;
    let name = served_name(args);
    let capacity = Capacity {
        max_batch_tokens: args.batch_tokens,
        max_logit_rows: speculative.logit_rows(args.max_seqs, args.batch_tokens),
        slots: args.max_seqs,
        context_tokens: args.model.ctx,
        kv_blocks: args.kv_blocks,
    };
    let weights = loaded.weights;
    let config = EngineConfig {
        max_batch_tokens: None,
        mask_sampling: Default::default(),
        prefix_caching: if args.no_prefix_cache {
            PrefixCaching::Off
        } else {
            PrefixCaching::On
        },
        speculative,
    };
    let engine = spawn_on_device(&args.model, weights, capacity, config)?.engine;
    Ok(Started {
        engine,
        tokenizer,
        name,
    })
}

/// An engine thread serving a model, and the device the model went to.
pub struct OnDevice {
    /// The engine thread's handle.
    pub engine: EngineHandle,
    /// The backend's short name (`cpu`, `cuda`): what `--device auto` chose.
    pub device: &'static str,
}

/// Starts the engine thread with the model built at `capacity` on the device `model` asks for; the
/// engine reports the CUDA backend's peak device memory. `serve`, `batch` and `bench` all start here.
pub fn spawn_on_device(
    model: &ModelArgs,
    weights: ModelWeights,
    capacity: Capacity,
    config: EngineConfig,
) -> Result<OnDevice> {
    let model_args = model.clone();
    let (device_tx, device_rx) = std::sync::mpsc::channel();
    let engine = spawn_engine_with(
        move |starter| {
            let model = device::build_model(&model_args, &weights, capacity)
                .map_err(|e| gptoss_engine::Error::invalid(format!("{e:#}")))?;
            drop(weights);
            let _ = device_tx.send(model.device_name());
            match model {
                AnyModel::Cpu(m) => starter.run(*m),
                AnyModel::Cuda(m) => {
                    starter.run_with_probe(*m, |m| m.backends().map(|b| b.memory_in_use().1).sum())
                }
            }
        },
        config,
    )
    .context("starting the engine")?;
    // Sent before the engine reported ready, so it is there once `spawn_engine_with` returns.
    let device = device_rx.try_recv().unwrap_or("unknown");
    Ok(OnDevice { engine, device })
}

/// The model name clients use: `--served-model-name`, else the checkpoint's name.
pub fn served_name(args: &EngineArgs) -> String {
    args.served_model_name
        .clone()
        .unwrap_or_else(|| default_name(&args.model))
}

/// The model's name: the checkpoint's directory or file name, or the dummy's name.
pub fn default_name(model: &ModelArgs) -> String {
    match (&model.model, model.dummy) {
        (Some(path), _) => path
            .file_name()
            .map(|n| n.to_string_lossy().trim_end_matches(".gguf").to_string())
            .unwrap_or_else(|| "gpt-oss".into()),
        (None, Some(d)) => d
            .to_possible_value()
            .map_or_else(|| "gpt-oss".into(), |v| v.get_name().to_string()),
        (None, None) => "gpt-oss".into(),
    }
}

/// Arguments of `gptoss serve`.
#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    engine: EngineArgs,
    /// Address to bind.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to bind (0: any free port, printed at start).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Require `Authorization: Bearer KEY` on /v1/* and /metrics (401 otherwise; see --metrics-access).
    #[arg(long)]
    api_key: Option<String>,
    /// Who may read /metrics when --api-key is set.
    #[arg(long, value_enum, default_value_t = MetricsArg::ApiKey)]
    metrics_access: MetricsArg,
    #[command(flatten)]
    limits: LimitArgs,
}

/// `--metrics-access`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MetricsArg {
    /// Only with the API key.
    ApiKey,
    /// Anyone who can reach the server.
    Public,
}

/// The server's limits on clients (each with a default; see README "Security").
#[derive(Args)]
struct LimitArgs {
    /// Requests generating at once (default: 2 × --max-seqs).
    #[arg(long, value_parser = size_in(1, 1 << 16))]
    max_concurrency: Option<usize>,
    /// Requests admitted beyond --max-concurrency (reading, rendering or waiting) before 429.
    #[arg(long, default_value_t = 256, value_parser = size_in(0, 1 << 20))]
    max_queue: usize,
    /// Largest request body in bytes (413 beyond).
    #[arg(long, default_value_t = 4 << 20, value_parser = size_in(1, 1 << 30))]
    max_body_bytes: usize,
    /// Connections open at once. At the cap a new connection takes the slot of the one idle the longest;
    /// when every one has a request in progress, new ones are answered 503 and closed.
    #[arg(long, default_value_t = 512, value_parser = size_in(1, 1 << 16))]
    max_connections: usize,
    /// Seconds a client has to send a request head (also the longest a kept-alive connection waits).
    #[arg(long, default_value_t = 10, value_parser = size_in(1, 3600))]
    header_timeout: usize,
    /// Seconds a client has to send a whole request body (408 beyond).
    #[arg(long, default_value_t = 30, value_parser = size_in(1, 3600))]
    body_timeout: usize,
    /// Seconds an idle kept-alive connection stays open.
    #[arg(long, default_value_t = 5, value_parser = size_in(1, 3600))]
    keep_alive_timeout: usize,
    /// Seconds requests in progress may take to finish after Ctrl-C / SIGTERM.
    #[arg(long, default_value_t = 10, value_parser = size_in(0, 3600))]
    shutdown_timeout: usize,
    /// Requests parsed and rendered at once, off the async workers (default: half the cores).
    #[arg(long, value_parser = size_in(1, 256))]
    render_threads: Option<usize>,
    /// Responses kept in memory for `previous_response_id` and GET /v1/responses/{id} (the oldest
    /// is dropped beyond; 0 keeps none).
    #[arg(long, default_value_t = 1024, value_parser = size_in(0, 1 << 20))]
    responses_store: usize,
}

/// Serves until Ctrl-C or SIGTERM.
pub fn run(args: ServeArgs) -> Result<()> {
    let started = start_engine(&args.engine)?;
    let l = &args.limits;
    let secs = |s: usize| Duration::from_secs(s as u64);
    let defaults = ServerConfig::new(started.name.clone());
    let config = ServerConfig {
        api_key: args.api_key.clone(),
        max_concurrency: l.max_concurrency.unwrap_or(2 * args.engine.max_seqs),
        max_queue: l.max_queue,
        max_body_bytes: l.max_body_bytes,
        render_threads: l.render_threads.unwrap_or(defaults.render_threads),
        responses_store: l.responses_store,
        metrics_access: match args.metrics_access {
            MetricsArg::ApiKey => MetricsAccess::ApiKey,
            MetricsArg::Public => MetricsAccess::Public,
        },
        connections: ConnLimits {
            header_timeout: secs(l.header_timeout),
            body_timeout: secs(l.body_timeout),
            keep_alive_timeout: secs(l.keep_alive_timeout),
            max_connections: l.max_connections,
            shutdown_timeout: secs(l.shutdown_timeout),
        },
        ..defaults
    };
    let state = AppState::new(started.engine, started.tokenizer, config)
        .context("this vocabulary lacks Harmony's special tokens; the server needs them")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let addr = format!("{}:{}", args.host, args.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let local = listener.local_addr()?;
        eprintln!("gptoss: serving {} at http://{local}/v1", started.name);
        gptoss_server::serve(listener, state, stop_signal())
            .await
            .context("the server failed")?;
        eprintln!("gptoss: stopped");
        Ok(())
    })
}

/// Ctrl-C or SIGTERM.
async fn stop_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}
