//! Shared test harness: the tiny fixture model and tokenizer, a real engine on the CPU backend or a
//! scripted fake engine (the `EngineHandle` command-channel seam), a server on 127.0.0.1:0, and an
//! SSE reader.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use gptoss_engine::scheduler::{
    spawn_engine, Command, EngineConfig, EngineHandle, EngineInfo, EngineStats, Finish,
    FinishReason, Output, OutputSink, RequestId,
};
use gptoss_engine::{Capacity, CpuBackend, Model};
use gptoss_server::{AppState, ServerConfig};
use gptoss_tokenizer::Tokenizer;
use serde_json::Value;

#[path = "../../../../tests/support/api.rs"]
pub mod api;
// Not every test file posts.
#[allow(unused_imports)]
pub use api::{post, MODEL};

pub fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny/hf-mxfp4")
}

pub fn tokenizer() -> Arc<Tokenizer> {
    Arc::new(Tokenizer::from_tokenizer_json(&fixture().join("tokenizer.json")).unwrap())
}

pub fn weights() -> gptoss_formats::ModelWeights {
    gptoss_formats::load(&fixture()).unwrap().weights
}

pub fn tiny_model(w: &gptoss_formats::ModelWeights, slots: usize, ctx: usize) -> Model<CpuBackend> {
    let cap = Capacity {
        max_batch_tokens: 64,
        max_logit_rows: slots,
        slots,
        context_tokens: ctx,
        kv_blocks: None,
    };
    Model::new(CpuBackend, w, cap).unwrap()
}

/// A real engine on the tiny model.
pub fn real_engine(slots: usize, ctx: usize) -> EngineHandle {
    real_engine_with(slots, ctx, EngineConfig::default())
}

/// A real engine on the tiny model with `config` (logit rows for its drafts).
pub fn real_engine_with(slots: usize, ctx: usize, config: EngineConfig) -> EngineHandle {
    let w = weights();
    let rows = config.speculative.logit_rows(slots, 64);
    spawn_engine(
        move || {
            let cap = Capacity {
                max_batch_tokens: 64,
                max_logit_rows: rows,
                slots,
                context_tokens: ctx,
                kv_blocks: None,
            };
            Model::new(CpuBackend, &w, cap)
        },
        config,
    )
    .unwrap()
}

/// What the fake engine does with a prompt.
pub enum Script {
    /// Emit these tokens (cut at max_new_tokens), then finish.
    Tokens(Vec<u32>),
    /// Say nothing until cancelled.
    Hold,
    /// Emit these tokens, then nothing until cancelled.
    TokensThenHold(Vec<u32>),
}

/// What the fake engine saw.
#[derive(Default)]
pub struct FakeLog {
    /// Every submitted prompt.
    pub prompts: Mutex<Vec<Vec<u32>>>,
    /// Cancellations of held requests.
    pub cancelled: Mutex<usize>,
    /// Whether each submitted request carried an output constraint.
    pub constrained: Mutex<Vec<bool>>,
}

/// A fake engine: `script` picks the output from the prompt; every prompt is recorded.
pub fn fake_engine(
    context_tokens: usize,
    script: impl Fn(&[u32]) -> Script + Send + 'static,
) -> (EngineHandle, Arc<FakeLog>) {
    let (tx, rx) = mpsc::channel::<Command>();
    let log = Arc::new(FakeLog::default());
    let seen = log.clone();
    std::thread::spawn(move || {
        let mut held: Vec<(RequestId, OutputSink)> = Vec::new();
        for cmd in rx {
            match cmd {
                Command::Submit {
                    id,
                    request,
                    mut sink,
                    options,
                } => {
                    seen.prompts.lock().unwrap().push(request.prompt.clone());
                    seen.constrained
                        .lock()
                        .unwrap()
                        .push(options.logits.constraint.is_some());
                    match script(&request.prompt) {
                        Script::Hold => held.push((id, sink)),
                        Script::TokensThenHold(t) => {
                            for tok in t {
                                sink(Output::Token(tok));
                            }
                            held.push((id, sink));
                        }
                        Script::Tokens(t) => {
                            let n = t.len().min(request.max_new_tokens);
                            for &tok in &t[..n] {
                                sink(Output::Token(tok));
                            }
                            let stopped = t[..n]
                                .last()
                                .is_some_and(|l| request.stop_tokens.contains(l));
                            let reason = if n < t.len() && !stopped {
                                FinishReason::Length
                            } else {
                                FinishReason::Stop
                            };
                            sink(Output::Finished(Finish {
                                reason,
                                prompt_tokens: request.prompt.len(),
                                generated_tokens: n,
                                cached_tokens: 0,
                            }));
                        }
                    }
                }
                Command::Cancel(id) => {
                    if let Some(i) = held.iter().position(|(h, _)| *h == id) {
                        let (_, mut sink) = held.remove(i);
                        *seen.cancelled.lock().unwrap() += 1;
                        sink(Output::Finished(Finish {
                            reason: FinishReason::Cancelled,
                            prompt_tokens: 0,
                            generated_tokens: 0,
                            cached_tokens: 0,
                        }));
                    }
                }
            }
        }
    });
    let info = EngineInfo {
        context_tokens,
        vocab_size: 512,
        max_seqs: 8,
    };
    (
        EngineHandle::from_parts(tx, Arc::new(EngineStats::default()), info),
        log,
    )
}

/// Starts the server on 127.0.0.1:0; returns its base URL (`http://127.0.0.1:PORT`).
pub async fn serve(engine: EngineHandle, config: ServerConfig) -> String {
    let state = AppState::new(engine, tokenizer(), config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(gptoss_server::serve(
        listener,
        state,
        std::future::pending(),
    ));
    format!("http://{addr}")
}

pub fn config() -> ServerConfig {
    ServerConfig::new(MODEL)
}

/// The events of an SSE body: (event name, data) pairs.
pub fn sse_events(body: &str) -> Vec<(Option<String>, String)> {
    body.split("\n\n")
        .filter(|block| !block.trim().is_empty())
        .filter_map(|block| {
            let mut name = None;
            let mut data = Vec::new();
            for line in block.lines() {
                if let Some(n) = line.strip_prefix("event:") {
                    name = Some(n.trim().to_string());
                } else if let Some(d) = line.strip_prefix("data:") {
                    data.push(d.strip_prefix(' ').unwrap_or(d).to_string());
                }
            }
            (!data.is_empty()).then(|| (name, data.join("\n")))
        })
        .collect()
}

/// The JSON data of an SSE body, checking it ends with `[DONE]`.
pub fn sse_json(body: &str) -> Vec<Value> {
    let events = sse_events(body);
    assert_eq!(
        events.last().map(|e| e.1.as_str()),
        Some("[DONE]"),
        "{body}"
    );
    events[..events.len() - 1]
        .iter()
        .map(|(_, d)| serde_json::from_str(d).unwrap())
        .collect()
}
