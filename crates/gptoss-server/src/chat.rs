//! `POST /v1/chat/completions`: messages (with earlier reasoning, tool calls and tool results) →
//! Harmony conversation → generation → `message` {content, reasoning_content, tool_calls} or SSE
//! `chat.completion.chunk` deltas, with `finish_reason` and `usage`.

use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use gptoss_tokenizer::harmony::ToolDescription;
use serde_json::{json, Map, Value};

use crate::admission::Permit;
use crate::conversation::{call_name, parse_effort, Conversation, ToolChoice, Turn};
use crate::error::{ApiError, ApiResult};
use crate::generation::{Delta, Finish, GenSpec, Generation, OutputMode, Step, Usage};
use crate::params::{self, check_model, check_n, check_unsupported};
use crate::request::{self, ChatRequest, FunctionIn, Text, ToolCallIn};
use crate::{sse, AppState};

/// A function tool for the renderer; the schema's raw JSON is parsed here, on the render pool, with
/// its keys in the order given. `field` names the tool in errors.
pub(crate) fn function_tool(
    field: &str,
    name: &str,
    description: Option<&Text>,
    parameters: Option<&serde_json::value::RawValue>,
) -> ApiResult<ToolDescription> {
    let parameters = parameters
        .map(|p| serde_json::from_str(p.get()))
        .transpose()
        .map_err(|e| ApiError::param("tools", format!("{field}.parameters: {e}")))?;
    Ok(ToolDescription {
        name: name.to_string(),
        description: description.map(|d| d.0.clone()).unwrap_or_default(),
        parameters,
    })
}

fn chat_tool(i: usize, f: &FunctionIn) -> ApiResult<ToolDescription> {
    let field = format!("tools[{i}].function");
    function_tool(
        &field,
        &f.name.0,
        f.description.as_ref(),
        f.parameters.as_deref(),
    )
}

/// A chat request ready to generate.
pub struct ChatParams {
    spec: GenSpec,
    stream: bool,
    include_usage: bool,
}

/// Parses `tool_choice`: a mode string or `{"type": "function", "function": {"name"}}` (chat) /
/// `{"type": "function", "name"}` (responses).
pub(crate) fn tool_choice(choice: Option<&Value>) -> ApiResult<ToolChoice> {
    match choice {
        None | Some(Value::Null) => Ok(ToolChoice::Auto),
        Some(Value::String(mode)) => ToolChoice::from_mode(mode, "tool_choice"),
        Some(v) => {
            let name = v
                .get("function")
                .and_then(|f| f.get("name"))
                .or_else(|| v.get("name"))
                .and_then(Value::as_str);
            match (v.get("type").and_then(Value::as_str), name) {
                (Some("function"), Some(name)) => Ok(ToolChoice::Named(name.to_string())),
                _ => Err(ApiError::param(
                    "tool_choice",
                    "tool_choice: expected \"auto\", \"none\", \"required\" or {\"type\": \"function\", \"function\": {\"name\": ...}}",
                )),
            }
        }
    }
}

fn conversation(req: &ChatRequest) -> ApiResult<Conversation> {
    let messages = req
        .messages
        .as_ref()
        .ok_or_else(|| ApiError::param("messages", "messages: required"))?;
    if messages.0.is_empty() {
        return Err(ApiError::param("messages", "messages: must not be empty"));
    }
    let effort = req.reasoning_effort.as_ref().map(|e| e.0.as_str());
    let mut conv = Conversation {
        effort: parse_effort(effort, "reasoning_effort")?,
        tool_choice: tool_choice(req.tool_choice.as_ref())?,
        ..Conversation::default()
    };
    for (i, spec) in req.tools.iter().flat_map(|t| &t.0).enumerate() {
        if spec.kind.0 != "function" {
            return Err(ApiError::param(
                "tools",
                format!(
                    "tools[{i}]: only function tools are supported, got {:?}",
                    spec.kind.0
                ),
            ));
        }
        conv.tools.push(chat_tool(i, &spec.function)?);
    }
    let mut instructions: Vec<String> = Vec::new();
    for (i, m) in messages.0.iter().enumerate() {
        let text = m.content.text(&format!("messages[{i}].content"))?;
        match m.role.0.as_str() {
            "system" | "developer" => instructions.push(text),
            "user" => conv.turns.push(Turn::User(text)),
            "assistant" => {
                let reasoning = m.reasoning_content.as_ref().or(m.reasoning.as_ref());
                let calls = m.tool_calls.as_ref().map_or(&[][..], |c| &c.0);
                assistant_turns(&mut conv.turns, reasoning.map(|r| r.0.clone()), text, calls)
            }
            "tool" => {
                let name = m
                    .tool_call_id
                    .as_ref()
                    .and_then(|id| call_name(&conv.turns, &id.0))
                    .or_else(|| m.name.as_ref().map(|n| n.0.clone()))
                    .ok_or_else(|| {
                        ApiError::param("messages", format!(
                            "messages[{i}]: a tool message needs a tool_call_id of an earlier assistant tool call (or a name)"
                        ))
                    })?;
                conv.turns.push(Turn::ToolResult { name, output: text });
            }
            other => {
                return Err(ApiError::param("messages", format!(
                    "messages[{i}].role: expected system, developer, user, assistant or tool, got {other:?}"
                )))
            }
        }
    }
    if !instructions.is_empty() {
        conv.instructions = Some(instructions.join("\n\n"));
    }
    Ok(conv)
}

/// An earlier assistant message: its reasoning (analysis), then its text (a preamble when it came
/// with tool calls, else the final answer), then its tool calls.
fn assistant_turns(
    turns: &mut Vec<Turn>,
    reasoning: Option<String>,
    text: String,
    calls: &[ToolCallIn],
) {
    if let Some(r) = reasoning.filter(|r| !r.is_empty()) {
        turns.push(Turn::Reasoning(r));
    }
    if !text.is_empty() {
        turns.push(if calls.is_empty() {
            Turn::Answer(text)
        } else {
            Turn::Preamble(text)
        });
    }
    for (j, c) in calls.iter().enumerate() {
        turns.push(Turn::ToolCall {
            id: c
                .id
                .as_ref()
                .map_or_else(|| format!("call_{j}"), |i| i.0.clone()),
            name: c.function.name.0.clone(),
            arguments: c.function.arguments.0.clone(),
        });
    }
}

/// Parses, checks and renders a chat body (CPU work: run on the render pool). The body and the typed
/// request are dropped here; what comes out is the prompt's tokens and the answer's settings.
pub fn prepare(state: &AppState, bytes: &[u8]) -> ApiResult<ChatParams> {
    let req: ChatRequest = request::parse(bytes)?;
    let common = req.common();
    check_model(&common, &state.config.model_name)?;
    check_n(&common)?;
    check_unsupported(&common)?;
    let sampling = params::sampling(&common, state.fresh_seed())?;
    let max_tokens = params::max_tokens(
        &[
            ("max_completion_tokens", req.max_completion_tokens.as_ref()),
            ("max_tokens", req.max_tokens.as_ref()),
        ],
        state.context_tokens(),
    )?;
    let stop = req.stop.as_ref().map(|s| s.0.clone()).unwrap_or_default();
    let prompt = conversation(&req)?.render(&state.harmony, state.prompt_cap())?;
    let spec = state.gen_spec(prompt, sampling, max_tokens, stop, OutputMode::Harmony)?;
    let include_usage = req
        .stream_options
        .as_ref()
        .and_then(|o| o.include_usage.as_ref())
        .is_some_and(|f| f.0);
    Ok(ChatParams {
        spec,
        stream: params::stream(&common),
        include_usage,
    })
}

/// Runs a chat request to the end and returns the `chat.completion` object (used by the batch runner).
pub async fn complete(
    state: &Arc<AppState>,
    params: ChatParams,
    permit: Permit,
) -> ApiResult<Value> {
    run_to_end(state, params, permit).await
}

async fn run_to_end(state: &Arc<AppState>, params: ChatParams, permit: Permit) -> ApiResult<Value> {
    let gen = Generation::start(state.clone(), params.spec, permit).await?;
    let (deltas, finish, usage) = gen.collect().await?;
    Ok(completion_json(state, &deltas, finish, usage))
}

/// The HTTP answer: the whole completion, or an SSE stream of chunks.
pub async fn respond(
    state: Arc<AppState>,
    params: ChatParams,
    permit: Permit,
) -> ApiResult<Response> {
    if !params.stream {
        return run_to_end(&state, params, permit)
            .await
            .map(|v| axum::Json(v).into_response());
    }
    let gen = Generation::start(state.clone(), params.spec, permit).await?;
    let (tx, response) = sse::channel();
    let id = state.completion_id("chatcmpl");
    tokio::spawn(stream(state, gen, tx, id, params.include_usage));
    Ok(response)
}

async fn stream(
    state: Arc<AppState>,
    mut gen: Generation,
    tx: sse::EventSender,
    id: String,
    include_usage: bool,
) {
    let created = state.created();
    let chunk = |delta: Value, finish: Option<Finish>| {
        json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": state.config.model_name,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish.map(Finish::as_str)}],
        })
    };
    if !tx
        .json(&chunk(json!({"role": "assistant", "content": ""}), None))
        .await
    {
        return;
    }
    while let Some(Some(step)) = tx.next_step(&mut gen).await {
        match step {
            Ok(Step::Deltas(deltas)) => {
                for d in deltas {
                    if !tx.json(&chunk(delta_json(&d), None)).await {
                        return;
                    }
                }
            }
            Ok(Step::Done(finish, usage)) => {
                let _ = tx.json(&chunk(json!({}), Some(finish))).await;
                if include_usage {
                    let mut last = chunk(json!({}), None);
                    last["choices"] = json!([]);
                    last["usage"] = usage_json(usage);
                    let _ = tx.json(&last).await;
                }
            }
            Err(e) => {
                let _ = tx.json(&e.to_json()).await;
            }
        }
    }
    let _ = tx.done().await;
}

fn delta_json(d: &Delta) -> Value {
    match d {
        Delta::Reasoning(t) => json!({ "reasoning_content": t }),
        Delta::Content(t) => json!({ "content": t }),
        Delta::ToolStart { index, id, name } => json!({ "tool_calls": [{
            "index": index, "id": id, "type": "function", "function": {"name": name, "arguments": ""},
        }]}),
        Delta::ToolArgs { index, text } => {
            json!({ "tool_calls": [{"index": index, "function": {"arguments": text}}] })
        }
    }
}

/// `usage` of chat and completions.
pub(crate) fn usage_json(u: Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
    })
}

/// The assistant message gathered from all deltas.
#[derive(Default)]
pub(crate) struct Gathered {
    pub reasoning: String,
    pub content: String,
    /// (id, name, arguments)
    pub calls: Vec<(String, String, String)>,
}

pub(crate) fn gather(deltas: &[Delta]) -> Gathered {
    let mut g = Gathered::default();
    for d in deltas {
        match d {
            Delta::Reasoning(t) => g.reasoning.push_str(t),
            Delta::Content(t) => g.content.push_str(t),
            Delta::ToolStart { id, name, .. } => {
                g.calls.push((id.clone(), name.clone(), String::new()))
            }
            Delta::ToolArgs { index, text } => {
                if let Some(call) = g.calls.get_mut(*index) {
                    call.2.push_str(text);
                }
            }
        }
    }
    g
}

fn completion_json(state: &AppState, deltas: &[Delta], finish: Finish, usage: Usage) -> Value {
    let g = gather(deltas);
    let mut message = Map::new();
    message.insert("role".into(), json!("assistant"));
    let content = if g.content.is_empty() && !g.calls.is_empty() {
        Value::Null
    } else {
        json!(g.content)
    };
    message.insert("content".into(), content);
    let reasoning = if g.reasoning.is_empty() {
        Value::Null
    } else {
        json!(g.reasoning)
    };
    message.insert("reasoning_content".into(), reasoning);
    if !g.calls.is_empty() {
        let calls: Vec<Value> = g
            .calls
            .iter()
            .map(|(id, name, args)| json!({"id": id, "type": "function", "function": {"name": name, "arguments": args}}))
            .collect();
        message.insert("tool_calls".into(), json!(calls));
    }
    json!({
        "id": state.completion_id("chatcmpl"),
        "object": "chat.completion",
        "created": state.created(),
        "model": state.config.model_name,
        "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish.as_str()}],
        "usage": usage_json(usage),
    })
}
