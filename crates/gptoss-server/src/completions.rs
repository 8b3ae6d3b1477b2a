//! `POST /v1/completions`: a raw prompt (no chat template) continued as plain text, with `stop`
//! strings, `finish_reason` and `usage`; SSE `text_completion` chunks when `stream` is set.

use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::chat::usage_json;
use crate::conversation::Prompt;
use crate::error::{ApiError, ApiResult};
use crate::generation::{Delta, Finish, GenSpec, Generation, OutputMode, Step};
use crate::params::Body;
use crate::{sse, AppState};

fn parse(state: &AppState, body: &Body) -> ApiResult<(GenSpec, bool)> {
    body.check_model(&state.config.model_name)?;
    body.check_n()?;
    body.check_unsupported()?;
    let text = match body.get("prompt") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => {
            a[0].as_str().unwrap_or_default().to_string()
        }
        None => return Err(ApiError::param("prompt", "prompt: required")),
        Some(_) => {
            return Err(ApiError::param(
                "prompt",
                "prompt: expected a string (or an array of one string)",
            ))
        }
    };
    if text.is_empty() {
        return Err(ApiError::param("prompt", "prompt: must not be empty"));
    }
    let tokens = state
        .harmony
        .tokenizer()
        .encode(&text)
        .map_err(|e| ApiError::param("prompt", format!("prompt: cannot encode: {e}")))?;
    let sampling = body.sampling(state.fresh_seed())?;
    let max_tokens = body
        .max_tokens(&["max_tokens"], state.context_tokens())?
        .or(Some(16));
    let prompt = Prompt {
        tokens,
        forced: Vec::new(),
    };
    let spec = state.gen_spec(prompt, sampling, max_tokens, body.stop()?, OutputMode::Raw)?;
    Ok((spec, body.bool("stream")?.unwrap_or(false)))
}

/// Runs a completion request to the end and returns the `text_completion` object.
pub async fn complete(state: &Arc<AppState>, body: &Body) -> ApiResult<Value> {
    let (spec, _) = parse(state, body)?;
    run_to_end(state, spec).await
}

async fn run_to_end(state: &Arc<AppState>, spec: GenSpec) -> ApiResult<Value> {
    let (deltas, finish, usage) = Generation::start(state.clone(), spec)
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

/// The HTTP handler.
pub async fn handle(state: Arc<AppState>, body: Body) -> ApiResult<Response> {
    let (spec, stream) = parse(&state, &body)?;
    if !stream {
        return run_to_end(&state, spec)
            .await
            .map(|v| axum::Json(v).into_response());
    }
    let mut gen = Generation::start(state.clone(), spec).await?;
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
