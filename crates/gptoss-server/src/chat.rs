//! `POST /v1/chat/completions`: messages (with earlier reasoning, tool calls and tool results) →
//! Harmony conversation → generation → `message` {content, reasoning_content, tool_calls} or SSE
//! `chat.completion.chunk` deltas, with `finish_reason` and `usage`.

use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use gptoss_tokenizer::harmony::ToolDescription;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::conversation::{call_name, parse_effort, Conversation, ToolChoice, Turn};
use crate::error::{ApiError, ApiResult};
use crate::generation::{Delta, Finish, GenSpec, Generation, OutputMode, Step, Usage};
use crate::params::{content_text, Body};
use crate::{sse, AppState};

#[derive(Deserialize)]
struct ChatMessage {
    role: String,
    #[serde(default)]
    content: Value,
    reasoning_content: Option<String>,
    reasoning: Option<String>,
    tool_calls: Option<Vec<ToolCallIn>>,
    tool_call_id: Option<String>,
    name: Option<String>,
}

#[derive(Deserialize)]
struct ToolCallIn {
    id: Option<String>,
    function: FunctionCallIn,
}

#[derive(Deserialize)]
struct FunctionCallIn {
    name: String,
    arguments: String,
}

/// A function tool as chat requests send it: `{"type": "function", "function": {...}}`.
#[derive(Deserialize)]
struct ToolSpec {
    #[serde(rename = "type")]
    kind: String,
    function: FunctionSpec,
}

/// A function's name, description and JSON-schema parameters.
#[derive(Deserialize)]
pub(crate) struct FunctionSpec {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub parameters: Option<Value>,
}

impl FunctionSpec {
    pub fn into_tool(self) -> ToolDescription {
        ToolDescription {
            name: self.name,
            description: self.description.unwrap_or_default(),
            parameters: self.parameters,
        }
    }
}

/// A validated chat request.
struct ChatParams {
    spec: GenSpec,
    stream: bool,
    include_usage: bool,
}

/// Parses `tool_choice`: a mode string or `{"type": "function", "function": {"name"}}` (chat) /
/// `{"type": "function", "name"}` (responses).
pub(crate) fn tool_choice(body: &Body) -> ApiResult<ToolChoice> {
    match body.get("tool_choice") {
        None => Ok(ToolChoice::Auto),
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

fn conversation(body: &Body) -> ApiResult<Conversation> {
    let messages: Vec<ChatMessage> = body
        .list("messages")?
        .ok_or_else(|| ApiError::param("messages", "messages: required"))?;
    if messages.is_empty() {
        return Err(ApiError::param("messages", "messages: must not be empty"));
    }
    let mut conv = Conversation {
        effort: parse_effort(body.str("reasoning_effort")?, "reasoning_effort")?,
        tool_choice: tool_choice(body)?,
        ..Conversation::default()
    };
    for spec in body.list::<ToolSpec>("tools")?.unwrap_or_default() {
        if spec.kind != "function" {
            return Err(ApiError::param(
                "tools",
                format!(
                    "tools: only function tools are supported, got {:?}",
                    spec.kind
                ),
            ));
        }
        conv.tools.push(spec.function.into_tool());
    }
    let mut instructions: Vec<String> = Vec::new();
    for (i, m) in messages.into_iter().enumerate() {
        let text = content_text(&m.content, &format!("messages[{i}].content"))?;
        match m.role.as_str() {
            "system" | "developer" => instructions.push(text),
            "user" => conv.turns.push(Turn::User(text)),
            "assistant" => assistant_turns(&mut conv.turns, m.reasoning_content.or(m.reasoning), text, m.tool_calls),
            "tool" => {
                let name = m
                    .tool_call_id
                    .as_deref()
                    .and_then(|id| call_name(&conv.turns, id))
                    .or(m.name)
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
    calls: Option<Vec<ToolCallIn>>,
) {
    if let Some(r) = reasoning.filter(|r| !r.is_empty()) {
        turns.push(Turn::Reasoning(r));
    }
    let calls = calls.unwrap_or_default();
    if !text.is_empty() {
        turns.push(if calls.is_empty() {
            Turn::Answer(text)
        } else {
            Turn::Preamble(text)
        });
    }
    for (j, c) in calls.into_iter().enumerate() {
        turns.push(Turn::ToolCall {
            id: c.id.unwrap_or_else(|| format!("call_{j}")),
            name: c.function.name,
            arguments: c.function.arguments,
        });
    }
}

fn parse(state: &AppState, body: &Body) -> ApiResult<ChatParams> {
    body.check_model(&state.config.model_name)?;
    body.check_n()?;
    body.check_unsupported()?;
    let conv = conversation(body)?;
    let prompt = conv.render(&state.harmony)?;
    let sampling = body.sampling(state.fresh_seed())?;
    let max_tokens = body.max_tokens(
        &["max_completion_tokens", "max_tokens"],
        state.context_tokens(),
    )?;
    let spec = state.gen_spec(
        prompt,
        sampling,
        max_tokens,
        body.stop()?,
        OutputMode::Harmony,
    )?;
    let include_usage = body
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    Ok(ChatParams {
        spec,
        stream: body.bool("stream")?.unwrap_or(false),
        include_usage,
    })
}

/// Runs a chat request to the end and returns the `chat.completion` object (used by the batch runner).
pub async fn complete(state: &Arc<AppState>, body: &Body) -> ApiResult<Value> {
    run_to_end(state, parse(state, body)?).await
}

async fn run_to_end(state: &Arc<AppState>, params: ChatParams) -> ApiResult<Value> {
    let gen = Generation::start(state.clone(), params.spec).await?;
    let (deltas, finish, usage) = gen.collect().await?;
    Ok(completion_json(state, &deltas, finish, usage))
}

/// The HTTP handler.
pub async fn handle(state: Arc<AppState>, body: Body) -> ApiResult<Response> {
    let params = parse(&state, &body)?;
    if !params.stream {
        return run_to_end(&state, params)
            .await
            .map(|v| axum::Json(v).into_response());
    }
    let gen = Generation::start(state.clone(), params.spec).await?;
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
