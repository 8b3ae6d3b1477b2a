//! `POST /v1/completions`: a raw prompt (no chat template) continued as plain text, `n` choices,
//! with `stop` strings, `echo`, `logprobs` (OpenAI's legacy form), `response_format` (the whole
//! output is the JSON value), `finish_reason` and `usage`; SSE `text_completion` chunks when `stream`
//! is set.

use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::admission::Permit;
use crate::bodies::CompletionRequest;
use crate::chat::usage_json;
use crate::choices::{total_usage, Choices};
use crate::conversation::Prompt;
use crate::error::{ApiError, ApiResult};
use crate::generation::{Delta, Finish, GenSpec, OutputMode, Step};
use crate::outputs::{answer_schema, completion_logprobs};
use crate::params::{self, check_model};
use crate::request;
use crate::structured::{Framing, OutputSchema};
use crate::{sse, AppState};

/// A completion request ready to generate.
pub struct CompletionParams {
    spec: GenSpec,
    n: usize,
    stream: bool,
    include_usage: bool,
    /// The prompt text, returned before each choice's text (`echo`).
    echo: Option<String>,
    logprobs: bool,
}

/// Parses, checks and encodes a completion body (CPU work: run on the render pool).
pub fn prepare(state: &AppState, bytes: &[u8]) -> ApiResult<CompletionParams> {
    let req: CompletionRequest = request::parse(bytes)?;
    let common = req.common();
    check_model(&common, &state.config.model_name)?;
    if req.suffix.as_ref().is_some_and(|s| !s.0.is_empty()) {
        return Err(ApiError::param(
            "suffix",
            "suffix: not supported (no insertion)",
        ));
    }
    let n = params::choices(req.n.as_ref())?;
    if let Some(b) = req.best_of.as_ref().filter(|b| b.0 != 1) {
        return Err(ApiError::param(
            "best_of",
            format!(
                "best_of: only 1 is supported (use `n` for several choices), got {}",
                b.0
            ),
        ));
    }
    let text = req
        .prompt
        .as_ref()
        .ok_or_else(|| ApiError::param("prompt", "prompt: required"))?;
    if text.0.is_empty() {
        return Err(ApiError::param("prompt", "prompt: must not be empty"));
    }
    let echo = req.echo.as_ref().is_some_and(|f| f.0);
    let logprobs = params::top_logprobs("logprobs", req.logprobs.as_ref())?;
    if echo && logprobs.is_some() {
        return Err(ApiError::param(
            "echo",
            "echo: not supported together with logprobs (prompt log-probabilities are not computed)",
        ));
    }
    let mut tokens = Vec::new();
    state
        .harmony
        .tokenizer()
        .encode_capped(&text.0, &mut tokens, state.prompt_cap())
        .map_err(|e| state.prompt_error(e, "prompt"))?;
    let mut sampling = params::sampling(&common, state.fresh_seed(), state.vocab_size())?;
    sampling.logits.logprobs = logprobs;
    let format = req.response_format.as_ref();
    let answer = answer_schema(
        format.and_then(|f| f.kind.as_ref()).map(|k| k.0.as_str()),
        format
            .and_then(|f| f.json_schema.as_ref())
            .and_then(|j| j.schema.as_deref()),
        "response_format.json_schema",
    )?;
    let schema = OutputSchema {
        answer,
        framing: Framing::Raw,
        ..OutputSchema::default()
    };
    sampling.logits.constraint = state.constraint(&schema)?;
    let max_tokens = params::max_tokens(
        &[("max_tokens", req.max_tokens.as_ref())],
        state.context_tokens(),
    )?
    .or(Some(16));
    let stop = req.stop.as_ref().map(|s| s.0.clone()).unwrap_or_default();
    let spec = state.gen_spec(
        Prompt { tokens },
        sampling,
        max_tokens,
        stop,
        OutputMode::Raw,
    )?;
    let include_usage = params::include_usage(req.stream_options.as_ref())?;
    Ok(CompletionParams {
        logprobs: spec.logits.logprobs.is_some(),
        spec,
        n,
        stream: params::stream(&common),
        include_usage,
        echo: echo.then(|| text.0.clone()),
    })
}

/// Runs a completion request to the end and returns the `text_completion` object.
pub async fn complete(
    state: &Arc<AppState>,
    params: CompletionParams,
    permit: Permit,
) -> ApiResult<Value> {
    run_to_end(state, params, permit).await
}

async fn run_to_end(
    state: &Arc<AppState>,
    params: CompletionParams,
    permit: Permit,
) -> ApiResult<Value> {
    let answers = Choices::start(state.clone(), params.spec, params.n, permit)
        .await?
        .collect()
        .await?;
    let tok = state.harmony.tokenizer();
    let echo = params.echo.unwrap_or_default();
    let choices: Vec<Value> = answers
        .iter()
        .enumerate()
        .map(|(i, (deltas, finish, _))| {
            let text: String = deltas.iter().filter_map(text_of).collect();
            let logprobs = if params.logprobs {
                completion_logprobs(tok, deltas, echo.len())
            } else {
                Value::Null
            };
            json!({"index": i, "text": format!("{echo}{text}"), "logprobs": logprobs,
                   "finish_reason": finish.as_str()})
        })
        .collect();
    Ok(json!({
        "id": state.completion_id("cmpl"),
        "object": "text_completion",
        "created": state.created(),
        "model": state.config.model_name,
        "choices": choices,
        "usage": usage_json(total_usage(answers.iter().map(|a| a.2))),
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
    if !params.stream {
        return run_to_end(&state, params, permit)
            .await
            .map(|v| axum::Json(v).into_response());
    }
    let mut choices = Choices::start(state.clone(), params.spec, params.n, permit).await?;
    let (tx, response) = sse::channel();
    let id = state.completion_id("cmpl");
    tokio::spawn(async move {
        let tok = state.harmony.tokenizer();
        let chunk = |i: usize, text: &str, logprobs: Value, finish: Option<Finish>| {
            json!({
                "id": id, "object": "text_completion", "created": state.created(), "model": state.config.model_name,
                "choices": [{"index": i, "text": text, "logprobs": logprobs, "finish_reason": finish.map(Finish::as_str)}],
            })
        };
        if let Some(echo) = &params.echo {
            for i in 0..params.n {
                if !tx.json(&chunk(i, echo, Value::Null, None)).await {
                    return;
                }
            }
        }
        let mut usages = Vec::new();
        loop {
            let next = tokio::select! {
                next = choices.next() => next,
                () = tx.closed() => return,
            };
            let Some((i, step)) = next else { break };
            let sent = match step {
                Ok(Step::Deltas(d)) => {
                    let text: String = d.iter().filter_map(text_of).collect();
                    let logprobs = if params.logprobs {
                        completion_logprobs(tok, &d, 0)
                    } else {
                        Value::Null
                    };
                    (text.is_empty() && logprobs.is_null())
                        || tx.json(&chunk(i, &text, logprobs, None)).await
                }
                Ok(Step::Done(finish, usage)) => {
                    usages.push(usage);
                    let mut last = chunk(i, "", Value::Null, Some(finish));
                    if !params.include_usage {
                        last["usage"] = usage_json(usage);
                    }
                    tx.json(&last).await
                }
                Err(e) => tx.json(&e.to_json()).await,
            };
            if !sent {
                return;
            }
        }
        if params.include_usage {
            let mut last = chunk(0, "", Value::Null, None);
            last["choices"] = json!([]);
            last["usage"] = usage_json(total_usage(usages));
            let _ = tx.json(&last).await;
        }
        let _ = tx.done().await;
    });
    Ok(response)
}
