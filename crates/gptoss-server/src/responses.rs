//! `POST /v1/responses`: `input` (a string or message / function_call / function_call_output /
//! reasoning items), `instructions`, `reasoning.effort`, function `tools`, `tool_choice`,
//! `max_output_tokens`; output items reasoning / message / function_call, or the typed SSE events
//! (`response.created`, `response.output_item.added`, `response.output_text.delta`, ...,
//! `response.completed`) when `stream` is set.

use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::chat::{tool_choice, FunctionSpec};
use crate::conversation::{call_name, parse_effort, Conversation, Turn};
use crate::error::{ApiError, ApiResult};
use crate::generation::{Delta, Finish, GenSpec, Generation, OutputMode, Step, Usage};
use crate::params::{content_text, type_name, Body};
use crate::{sse, AppState};

fn conversation(body: &Body) -> ApiResult<Conversation> {
    let effort = body
        .get("reasoning")
        .and_then(|r| r.get("effort"))
        .and_then(Value::as_str);
    let mut conv = Conversation {
        instructions: body.str("instructions")?.map(str::to_string),
        effort: parse_effort(effort, "reasoning.effort")?,
        tool_choice: tool_choice(body)?,
        ..Conversation::default()
    };
    for (i, tool) in body
        .list::<Value>("tools")?
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        if tool.get("type").and_then(Value::as_str) != Some("function") {
            return Err(ApiError::param(
                "tools",
                format!("tools[{i}]: only {{\"type\": \"function\"}} tools are supported"),
            ));
        }
        let f: FunctionSpec = serde_json::from_value(tool)
            .map_err(|e| ApiError::param("tools", format!("tools[{i}]: {e}")))?;
        conv.tools.push(f.into_tool());
    }
    match body.get("input") {
        Some(Value::String(s)) if !s.is_empty() => conv.turns.push(Turn::User(s.clone())),
        Some(Value::Array(items)) if !items.is_empty() => {
            for (i, item) in items.iter().enumerate() {
                input_item(&mut conv, item, i)?;
            }
        }
        None => return Err(ApiError::param("input", "input: required")),
        Some(v) => {
            return Err(ApiError::param(
                "input",
                format!(
                    "input: expected a non-empty string or array, got {}",
                    type_name(v)
                ),
            ))
        }
    }
    Ok(conv)
}

fn input_item(conv: &mut Conversation, item: &Value, i: usize) -> ApiResult<()> {
    let field = format!("input[{i}]");
    let str_of = |key: &str| {
        item.get(key)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| ApiError::param("input", format!("{field}.{key}: expected a string")))
    };
    let kind = item
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("message");
    match kind {
        "message" => message_item(conv, item, &field, str_of("role")?)?,
        "function_call" => conv.turns.push(Turn::ToolCall {
            id: str_of("call_id")?,
            name: str_of("name")?,
            arguments: str_of("arguments")?,
        }),
        "function_call_output" => {
            let id = str_of("call_id")?;
            let name = call_name(&conv.turns, &id).ok_or_else(|| {
                ApiError::param(
                    "input",
                    format!("{field}: call_id {id:?} matches no earlier function_call item"),
                )
            })?;
            conv.turns.push(Turn::ToolResult {
                name,
                output: str_of("output")?,
            });
        }
        "reasoning" => {
            let parts = item
                .get("content")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let text: String = parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect();
            conv.turns.push(Turn::Reasoning(text));
        }
        other => {
            return Err(ApiError::param(
                "input",
                format!("{field}.type: unsupported item type {other:?}"),
            ))
        }
    }
    Ok(())
}

/// A `{"role", "content"}` input item.
fn message_item(conv: &mut Conversation, item: &Value, field: &str, role: String) -> ApiResult<()> {
    let content = item.get("content").unwrap_or(&Value::Null);
    let text = content_text(content, &format!("{field}.content"))?;
    match role.as_str() {
        "user" => conv.turns.push(Turn::User(text)),
        "assistant" => conv.turns.push(Turn::Answer(text)),
        "system" | "developer" => {
            let joined = conv
                .instructions
                .take()
                .map_or(text.clone(), |i| format!("{i}\n\n{text}"));
            conv.instructions = Some(joined);
        }
        other => {
            return Err(ApiError::param(
                "input",
                format!("{field}.role: unknown role {other:?}"),
            ))
        }
    }
    Ok(())
}

fn parse(state: &AppState, body: &Body) -> ApiResult<(GenSpec, bool)> {
    body.check_model(&state.config.model_name)?;
    let conv = conversation(body)?;
    let prompt = conv.render(&state.harmony)?;
    let sampling = body.sampling(state.fresh_seed())?;
    let max_tokens = body.max_tokens(&["max_output_tokens"], state.context_tokens())?;
    let spec = state.gen_spec(
        prompt,
        sampling,
        max_tokens,
        Vec::new(),
        OutputMode::Harmony,
    )?;
    Ok((spec, body.bool("stream")?.unwrap_or(false)))
}

/// Output items built from deltas, with the stream events each delta causes.
struct Items {
    id: String,
    items: Vec<Value>,
    open: bool,
}

/// A typed event: its name and payload (sequence numbers are added when sent).
type Event = (&'static str, Value);

impl Items {
    fn new(id: String) -> Self {
        Items {
            id,
            items: Vec::new(),
            open: false,
        }
    }

    fn kind_of(d: &Delta) -> &'static str {
        match d {
            Delta::Reasoning(_) => "reasoning",
            Delta::Content(_) => "message",
            Delta::ToolStart { .. } | Delta::ToolArgs { .. } => "function_call",
        }
    }

    fn push(&mut self, d: &Delta, events: &mut Vec<Event>) {
        let kind = Self::kind_of(d);
        let same = self.open && self.items.last().and_then(|i| i["type"].as_str()) == Some(kind);
        if !same || matches!(d, Delta::ToolStart { .. }) {
            self.close(events);
            self.open_item(d, events);
        }
        let index = self.items.len().saturating_sub(1);
        let text = delta_text(d);
        let Some(item) = self.items.last_mut().filter(|_| !text.is_empty()) else {
            return;
        };
        let item_id = item["id"].clone();
        let (pointer, name) = match kind {
            "reasoning" => ("/content/0/text", "response.reasoning_text.delta"),
            "message" => ("/content/0/text", "response.output_text.delta"),
            _ => ("/arguments", "response.function_call_arguments.delta"),
        };
        if let Some(field) = item.pointer_mut(pointer) {
            *field = json!(format!("{}{text}", field.as_str().unwrap_or_default()));
        }
        events.push((
            name,
            json!({"item_id": item_id, "output_index": index, "content_index": 0, "delta": text}),
        ));
    }

    fn open_item(&mut self, d: &Delta, events: &mut Vec<Event>) {
        let n = self.items.len();
        let item = match d {
            Delta::Reasoning(_) => {
                json!({"type": "reasoning", "id": format!("rs_{}_{n}", self.id), "summary": [],
                "content": [{"type": "reasoning_text", "text": ""}]})
            }
            Delta::Content(_) => {
                json!({"type": "message", "id": format!("msg_{}_{n}", self.id), "status": "in_progress",
                "role": "assistant", "content": [{"type": "output_text", "text": "", "annotations": []}]})
            }
            Delta::ToolStart { id, name, .. } => {
                json!({"type": "function_call", "id": format!("fc_{}_{n}", self.id),
                "call_id": id, "name": name, "arguments": "", "status": "in_progress"})
            }
            Delta::ToolArgs { .. } => {
                json!({"type": "function_call", "id": format!("fc_{}_{n}", self.id),
                "call_id": format!("call_{}_{n}", self.id), "name": "", "arguments": "", "status": "in_progress"})
            }
        };
        events.push((
            "response.output_item.added",
            json!({"output_index": n, "item": item}),
        ));
        self.items.push(item);
        self.open = true;
    }

    fn close(&mut self, events: &mut Vec<Event>) {
        if !std::mem::take(&mut self.open) {
            return;
        }
        let index = self.items.len().saturating_sub(1);
        let Some(item) = self.items.last_mut() else {
            return;
        };
        if item.get("status").is_some() {
            item["status"] = json!("completed");
        }
        let id = item["id"].clone();
        let done = match item["type"].as_str() {
            Some("reasoning") => (
                "response.reasoning_text.done",
                json!({"item_id": id, "output_index": index, "content_index": 0, "text": item["content"][0]["text"]}),
            ),
            Some("message") => (
                "response.output_text.done",
                json!({"item_id": id, "output_index": index, "content_index": 0, "text": item["content"][0]["text"]}),
            ),
            _ => (
                "response.function_call_arguments.done",
                json!({"item_id": id, "output_index": index, "arguments": item["arguments"]}),
            ),
        };
        events.push(done);
        events.push((
            "response.output_item.done",
            json!({"output_index": index, "item": item.clone()}),
        ));
    }
}

fn delta_text(d: &Delta) -> &str {
    match d {
        Delta::Reasoning(t) | Delta::Content(t) => t,
        Delta::ToolArgs { text, .. } => text,
        Delta::ToolStart { .. } => "",
    }
}

fn response_json(
    state: &AppState,
    id: &str,
    items: &[Value],
    end: Option<(Finish, Usage)>,
) -> Value {
    let (status, incomplete) = match end {
        None => ("in_progress", Value::Null),
        Some((Finish::Length, _)) => ("incomplete", json!({"reason": "max_output_tokens"})),
        Some(_) => ("completed", Value::Null),
    };
    let usage = end.map_or(Value::Null, |(_, u)| {
        json!({"input_tokens": u.prompt_tokens, "output_tokens": u.completion_tokens,
               "total_tokens": u.prompt_tokens + u.completion_tokens})
    });
    json!({"id": id, "object": "response", "created_at": state.created(), "status": status,
           "incomplete_details": incomplete, "model": state.config.model_name, "output": items, "usage": usage})
}

/// Runs a responses request to the end and returns the `response` object.
pub async fn complete(state: &Arc<AppState>, body: &Body) -> ApiResult<Value> {
    let (spec, _) = parse(state, body)?;
    run_to_end(state, spec).await
}

async fn run_to_end(state: &Arc<AppState>, spec: GenSpec) -> ApiResult<Value> {
    let (deltas, finish, usage) = Generation::start(state.clone(), spec)
        .await?
        .collect()
        .await?;
    let id = state.completion_id("resp");
    let mut items = Items::new(id.clone());
    let mut events = Vec::new();
    deltas.iter().for_each(|d| items.push(d, &mut events));
    items.close(&mut events);
    Ok(response_json(
        state,
        &id,
        &items.items,
        Some((finish, usage)),
    ))
}

/// The HTTP handler.
pub async fn handle(state: Arc<AppState>, body: Body) -> ApiResult<Response> {
    let (spec, stream) = parse(&state, &body)?;
    if !stream {
        return run_to_end(&state, spec)
            .await
            .map(|v| axum::Json(v).into_response());
    }
    let gen = Generation::start(state.clone(), spec).await?;
    let (tx, response) = sse::channel();
    tokio::spawn(stream_events(state, gen, tx));
    Ok(response)
}

async fn stream_events(state: Arc<AppState>, mut gen: Generation, tx: sse::EventSender) {
    let id = state.completion_id("resp");
    let mut items = Items::new(id.clone());
    let mut seq = 0u64;
    let mut events: Vec<Event> = vec![(
        "response.created",
        json!({"response": response_json(&state, &id, &[], None)}),
    )];
    while let Some(Some(step)) = tx.next_step(&mut gen).await {
        match step {
            Ok(Step::Deltas(deltas)) => deltas.iter().for_each(|d| items.push(d, &mut events)),
            Ok(Step::Done(finish, usage)) => {
                items.close(&mut events);
                let response = response_json(&state, &id, &items.items, Some((finish, usage)));
                let name = if finish == Finish::Length {
                    "response.incomplete"
                } else {
                    "response.completed"
                };
                events.push((name, json!({ "response": response })));
            }
            Err(e) => events.push(("error", e.to_json())),
        }
        for (name, mut payload) in events.drain(..) {
            payload["type"] = json!(name);
            payload["sequence_number"] = json!(seq);
            seq += 1;
            if !tx.named(name, &payload).await {
                return;
            }
        }
    }
}
