//! `POST /v1/responses`: `input` (a string or message / function_call / function_call_output /
//! reasoning items), `instructions`, `reasoning.effort`, function `tools`, `tool_choice`,
//! `max_output_tokens`; output items reasoning / message / function_call, or the typed SSE events
//! (`response.created`, `response.output_item.added`, `response.output_text.delta`, ...,
//! `response.completed`) when `stream` is set.

use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::admission::Permit;
use crate::chat::{function_tool, tool_choice};
use crate::conversation::{call_name, parse_effort, Conversation, Turn};
use crate::error::{ApiError, ApiResult};
use crate::generation::{Delta, Finish, GenSpec, Generation, OutputMode, Step, Usage};
use crate::params::{self, check_model};
use crate::request::{self, Input, InputItem, ResponsesRequest, Text};
use crate::{sse, AppState};

fn conversation(req: &ResponsesRequest) -> ApiResult<Conversation> {
    let effort = req
        .reasoning
        .as_ref()
        .and_then(|r| r.effort.as_ref())
        .map(|e| e.0.as_str());
    let mut conv = Conversation {
        instructions: req.instructions.as_ref().map(|i| i.0.clone()),
        effort: parse_effort(effort, "reasoning.effort")?,
        tool_choice: tool_choice(req.tool_choice.as_ref())?,
        ..Conversation::default()
    };
    for (i, tool) in req.tools.iter().flat_map(|t| &t.0).enumerate() {
        if tool.kind.as_ref().map(|k| k.0.as_str()) != Some("function") {
            return Err(ApiError::param(
                "tools",
                format!("tools[{i}]: only {{\"type\": \"function\"}} tools are supported"),
            ));
        }
        let name = tool
            .name
            .as_ref()
            .ok_or_else(|| ApiError::param("tools", format!("tools[{i}]: missing field `name`")))?;
        let params = tool.parameters.as_deref();
        let field = format!("tools[{i}]");
        let description = tool.description.as_ref();
        conv.tools
            .push(function_tool(&field, &name.0, description, params)?);
    }
    match &req.input {
        Some(Input::Text(s)) if !s.is_empty() => conv.turns.push(Turn::User(s.clone())),
        Some(Input::Items(items)) if !items.is_empty() => {
            for (i, item) in items.iter().enumerate() {
                input_item(&mut conv, item, i)?;
            }
        }
        None => return Err(ApiError::param("input", "input: required")),
        Some(_) => {
            return Err(ApiError::param(
                "input",
                "input: expected a non-empty string or array",
            ))
        }
    }
    Ok(conv)
}

fn input_item(conv: &mut Conversation, item: &InputItem, i: usize) -> ApiResult<()> {
    let field = format!("input[{i}]");
    let str_of = |key: &str, v: &Option<Text>| {
        v.as_ref()
            .map(|t| t.0.clone())
            .ok_or_else(|| ApiError::param("input", format!("{field}.{key}: expected a string")))
    };
    let kind = item.kind.as_ref().map_or("message", |k| k.0.as_str());
    match kind {
        "message" => message_item(conv, item, &field, str_of("role", &item.role)?)?,
        "function_call" => conv.turns.push(Turn::ToolCall {
            id: str_of("call_id", &item.call_id)?,
            name: str_of("name", &item.name)?,
            arguments: str_of("arguments", &item.arguments)?,
        }),
        "function_call_output" => {
            let id = str_of("call_id", &item.call_id)?;
            let name = call_name(&conv.turns, &id).ok_or_else(|| {
                ApiError::param(
                    "input",
                    format!("{field}: call_id {id:?} matches no earlier function_call item"),
                )
            })?;
            conv.turns.push(Turn::ToolResult {
                name,
                output: str_of("output", &item.output)?,
            });
        }
        "reasoning" => {
            let text: String = match &item.content {
                request::Content::Parts(parts) => parts
                    .iter()
                    .filter_map(|p| p.text.as_ref())
                    .map(|t| t.0.as_str())
                    .collect(),
                _ => String::new(),
            };
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
fn message_item(
    conv: &mut Conversation,
    item: &InputItem,
    field: &str,
    role: String,
) -> ApiResult<()> {
    let text = item.content.text(&format!("{field}.content"))?;
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

/// A responses request ready to generate.
pub struct ResponsesParams {
    spec: GenSpec,
    stream: bool,
}

/// Parses, checks and renders a responses body (CPU work: run on the render pool).
pub fn prepare(state: &AppState, bytes: &[u8]) -> ApiResult<ResponsesParams> {
    let req: ResponsesRequest = request::parse(bytes)?;
    let common = req.common();
    check_model(&common, &state.config.model_name)?;
    let sampling = params::sampling(&common, state.fresh_seed())?;
    let max_tokens = params::max_tokens(
        &[("max_output_tokens", req.max_output_tokens.as_ref())],
        state.context_tokens(),
    )?;
    let prompt = conversation(&req)?.render(&state.harmony, state.prompt_cap())?;
    let spec = state.gen_spec(
        prompt,
        sampling,
        max_tokens,
        Vec::new(),
        OutputMode::Harmony,
    )?;
    Ok(ResponsesParams {
        spec,
        stream: params::stream(&common),
    })
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
pub async fn complete(
    state: &Arc<AppState>,
    params: ResponsesParams,
    permit: Permit,
) -> ApiResult<Value> {
    run_to_end(state, params.spec, permit).await
}

async fn run_to_end(state: &Arc<AppState>, spec: GenSpec, permit: Permit) -> ApiResult<Value> {
    let (deltas, finish, usage) = Generation::start(state.clone(), spec, permit)
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

/// The HTTP answer: the whole response object, or its typed SSE events.
pub async fn respond(
    state: Arc<AppState>,
    params: ResponsesParams,
    permit: Permit,
) -> ApiResult<Response> {
    if !params.stream {
        return run_to_end(&state, params.spec, permit)
            .await
            .map(|v| axum::Json(v).into_response());
    }
    let gen = Generation::start(state.clone(), params.spec, permit).await?;
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
