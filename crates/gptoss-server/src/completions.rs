//! `POST /v1/completions`: a raw prompt (no chat template) continued as plain text, with `stop`
//! strings, `finish_reason` and `usage`; SSE `text_completion` chunks when `stream` is set.

use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::admission::Permit;
use crate::chat::usage_json;
use crate::conversation::Prompt;
use crate::error::{ApiError, ApiResult};
use crate::generation::{Delta, Finish, GenSpec, Generation, OutputMode, Step};
use crate::params::{self, check_model, check_n, check_unsupported};
use crate::request::{self, CompletionRequest};
use crate::{sse, AppState};

/// A completion request ready to generate.
pub struct CompletionParams {
    spec: GenSpec,
    stream: bool,
}

/// Parses, checks and encodes a completion body (CPU work: run on the render pool).
pub fn prepare(state: &AppState, bytes: &[u8]) -> ApiResult<CompletionParams> {
    let req: CompletionRequest = request::parse(bytes)?;
    let common = req.common();
    check_model(&common, &state.config.model_name)?;
    check_n(&common)?;
    check_unsupported(&common)?;
    let text = req
        .prompt
        .as_ref()
        .ok_or_else(|| ApiError::param("prompt", "prompt: required"))?;
    if text.0.is_empty() {
        return Err(ApiError::param("prompt", "prompt: must not be empty"));
    }
    let mut tokens = Vec::new();
    state
        .harmony
        .tokenizer()
        .encode_capped(&text.0, &mut tokens, state.prompt_cap())
        .map_err(|e| state.prompt_error(e, "prompt"))?;
    let sampling = params::sampling(&common, state.fresh_seed())?;
    let max_tokens = params::max_tokens(
        &[("max_tokens", req.max_tokens.as_ref())],
        state.context_tokens(),
    )?
    .or(Some(16));
    let prompt = Prompt {
        tokens,
        forced: Vec::new(),
    };
    let stop = req.stop.as_ref().map(|s| s.0.clone()).unwrap_or_default();
    let spec = state.gen_spec(prompt, sampling, max_tokens, stop, OutputMode::Raw)?;
    Ok(CompletionParams {
        spec,
        stream: params::stream(&common),
    })
}

/// Runs a completion request to the end and returns the `text_completion` object.
pub async fn complete(
    state: &Arc<AppState>,
    params: CompletionParams,
    permit: Permit,
) -> ApiResult<Value> {
    run_to_end(state, params.spec, permit).await
}

async fn run_to_end(state: &Arc<AppState>, spec: GenSpec, permit: Permit) -> ApiResult<Value> {
    let (deltas, finish, usage) = Generation::start(state.clone(), spec, permit)
        .await?
        .collect()
        .await?;
    let text: String = deltas.iter().filter_map(text_of).collect();
    Ok(json!({
        "id": state.completion_id("cmpl"),
        "object": "text_completion",
        "created": state.created(),
        "model": state.config.model_name,
        "choices": [{"index": 0, "text": text, "logprobs": null, "finish_reason": finish.as_str()}],
        "usage": usage_json(usage),
    }))
}

fn text_of(d: &Delta) -> Option<&str> {
    match d {
        Delta::Content(t) => Some(t),
        _ => None,
    }
}

/// The HTTP answer: the whole completion, or an SSE stream of chunks.
pub async fn respond(
    state: Arc<AppState>,
    params: CompletionParams,
    permit: Permit,
) -> ApiResult<Response> {
    let CompletionParams { spec, stream } = params;
    if !stream {
        return run_to_end(&state, spec, permit)
            .await
            .map(|v| axum::Json(v).into_response());
    }
    let mut gen = Generation::start(state.clone(), spec, permit).await?;
    let (tx, response) = sse::channel();
    let id = state.completion_id("cmpl");
    tokio::spawn(async move {
        let chunk = |text: &str, finish: Option<Finish>| {
            json!({
                "id": id, "object": "text_completion", "created": state.created(), "model": state.config.model_name,
                "choices": [{"index": 0, "text": text, "logprobs": null, "finish_reason": finish.map(Finish::as_str)}],
            })
        };
        while let Some(Some(step)) = tx.next_step(&mut gen).await {
            let sent = match step {
                Ok(Step::Deltas(d)) => {
                    let text: String = d.iter().filter_map(text_of).collect();
                    text.is_empty() || tx.json(&chunk(&text, None)).await
                }
                Ok(Step::Done(finish, usage)) => {
                    let mut last = chunk("", Some(finish));
                    last["usage"] = usage_json(usage);
                    tx.json(&last).await
                }
                Err(e) => tx.json(&e.to_json()).await,
            };
            if !sent {
                return;
            }
        }
        let _ = tx.done().await;
    });
    Ok(response)
}
