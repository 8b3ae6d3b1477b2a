//! `POST /v1/responses`: `input` (a string or message / function_call / function_call_output /
//! reasoning items), `instructions`, `reasoning.effort`, function `tools`, `tool_choice`,
//! `max_output_tokens`, `text.format` (a JSON schema on the final answer), `top_logprobs`; output
//! items reasoning / message / function_call, or the typed SSE events (`response.created`,
//! `response.output_item.added`, `response.output_text.delta`, ..., `response.completed`) when
//! `stream` is set. Responses are stored (`store`, `store.rs`) so that `previous_response_id`
//! continues one and `GET /v1/responses/{id}` returns it; the reasoning of a turn that ended in a
//! tool call is carried into the next turn, and dropped once a final answer was given (Harmony).
//! A response whose output did not follow Harmony carries `harmony_malformed: true`; what could not be
//! parsed is the text of its message.

use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::admission::Permit;
use crate::bodies::ResponsesRequest;
use crate::chat::{function_tool, tool_choice};
use crate::choices::Choices;
use crate::conversation::{call_name, parse_effort, Conversation, Turn};
use crate::error::{ApiError, ApiResult};
use crate::generation::{Delta, Finish, GenSpec, OutputMode, Step, Usage};
use crate::outputs::{answer_schema, chat_logprob, output_schema};
use crate::params::{self, check_model, only_values, refuse_present, refuse_true};
use crate::request::{self, Input, InputItem, Text};
use crate::store::Stored;
use crate::{sse, AppState};

/// The conversation (continuing `previous`'s turns) and each tool's `strict` flag.
fn conversation(
    req: &ResponsesRequest,
    previous: Vec<Turn>,
) -> ApiResult<(Conversation, Vec<bool>)> {
    let effort = req
        .reasoning
        .as_ref()
        .and_then(|r| r.effort.as_ref())
        .map(|e| e.0.as_str());
    let mut conv = Conversation {
        instructions: req.instructions.as_ref().map(|i| i.0.clone()),
        effort: parse_effort(effort, "reasoning.effort")?,
        tool_choice: tool_choice(req.tool_choice.as_ref())?,
        turns: previous,
        ..Conversation::default()
    };
    let mut strict = Vec::new();
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
        strict.push(tool.strict.as_ref().is_some_and(|f| f.0));
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
    Ok((conv, strict))
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
    ctx: ResponseContext,
}

/// What the answer of a responses request needs besides the generation.
struct ResponseContext {
    stream: bool,
    /// Keep the response (`store`).
    store: bool,
    /// The conversation's turns, to which the output is added when stored.
    turns: Vec<Turn>,
    /// `previous_response_id`, echoed in the response.
    previous: Option<String>,
    /// `metadata`, echoed in the response.
    metadata: Value,
    logprobs: bool,
}

/// Refuses the responses fields this server does not implement, by name.
fn refuse_unsupported(req: &ResponsesRequest) -> ApiResult<()> {
    refuse_present(
        "prompt",
        req.prompt.as_deref(),
        "no stored prompt templates",
    )?;
    refuse_present(
        "conversation",
        req.conversation.as_deref(),
        "use `previous_response_id`",
    )?;
    refuse_true(
        "background",
        req.background.as_ref(),
        "responses run in the foreground",
    )?;
    only_values("truncation", req.truncation.as_ref(), &["disabled"])?;
    if let Some(n) = &req.max_tool_calls {
        return Err(ApiError::param(
            "max_tool_calls",
            format!(
                "max_tool_calls: not supported (gpt-oss makes one call per turn), got {}",
                n.0
            ),
        ));
    }
    if let Some(r) = &req.reasoning {
        if let Some(s) = r.summary.as_ref().or(r.generate_summary.as_ref()) {
            return Err(ApiError::param(
                "reasoning",
                format!(
                    "reasoning.summary: not supported (reasoning is returned as text), got {:?}",
                    s.0
                ),
            ));
        }
    }
    if let Some(v) = req.text.as_ref().and_then(|t| t.verbosity.as_ref()) {
        return Err(ApiError::param(
            "text",
            format!("text.verbosity: not supported, got {:?}", v.0),
        ));
    }
    for (i, inc) in req.include.iter().flat_map(|l| &l.0).enumerate() {
        if ![
            "message.output_text.logprobs",
            "reasoning.encrypted_content",
        ]
        .contains(&inc.0.as_str())
        {
            return Err(ApiError::param(
                "include",
                format!("include[{i}]: not supported: {:?}", inc.0),
            ));
        }
    }
    if req.metadata.as_ref().is_some_and(|m| m.len() > 16) {
        return Err(ApiError::param("metadata", "metadata: at most 16 pairs"));
    }
    Ok(())
}

/// Parses, checks and renders a responses body (CPU work: run on the render pool).
pub fn prepare(state: &AppState, bytes: &[u8]) -> ApiResult<ResponsesParams> {
    let req: ResponsesRequest = request::parse(bytes)?;
    let common = req.common();
    check_model(&common, &state.config.model_name)?;
    refuse_unsupported(&req)?;
    let mut sampling = params::sampling(&common, state.fresh_seed(), state.vocab_size())?;
    let wants_logprobs = req
        .include
        .iter()
        .flat_map(|l| &l.0)
        .any(|i| i.0 == "message.output_text.logprobs");
    let top = params::top_logprobs("top_logprobs", req.top_logprobs.as_ref())?;
    sampling.logits.logprobs = match (wants_logprobs, top) {
        (false, None) => None,
        (_, top) => Some(top.unwrap_or(0)),
    };
    let max_tokens = params::max_tokens(
        &[("max_output_tokens", req.max_output_tokens.as_ref())],
        state.context_tokens(),
    )?;
    let previous = match &req.previous_response_id {
        None => Vec::new(),
        Some(id) => {
            state
                .responses
                .get(&id.0)
                .ok_or_else(|| {
                    ApiError::not_found(
                        format!("previous_response_id: no stored response {:?}", id.0),
                        "previous_response_not_found",
                    )
                })?
                .turns
        }
    };
    let format = req.text.as_ref().and_then(|t| t.format.as_ref());
    let answer = answer_schema(
        format.and_then(|f| f.kind.as_ref()).map(|k| k.0.as_str()),
        format.and_then(|f| f.schema.as_deref()),
        "text.format",
    )?;
    let (conv, strict) = conversation(&req, previous)?;
    let schema = output_schema(&conv, &strict, answer);
    let turns = conv.turns.clone();
    let prompt = conv.render(&state.harmony, state.prompt_cap())?;
    sampling.logits.constraint = state.constraint(&schema)?;
    let spec = state.gen_spec(
        prompt,
        sampling,
        max_tokens,
        Vec::new(),
        OutputMode::Harmony,
    )?;
    let metadata = req.metadata.as_ref().map_or(Value::Null, |m| {
        Value::Object(m.iter().map(|(k, v)| (k.clone(), json!(v.0))).collect())
    });
    let ctx = ResponseContext {
        logprobs: spec.logits.logprobs.is_some(),
        stream: params::stream(&common),
        store: req.store.as_ref().is_none_or(|f| f.0),
        turns,
        previous: req.previous_response_id.as_ref().map(|t| t.0.clone()),
        metadata,
    };
    Ok(ResponsesParams { spec, ctx })
}

/// Output items built from deltas, with the stream events each delta causes.
struct Items {
    id: String,
    items: Vec<Value>,
    open: bool,
    /// The output did not follow Harmony ([`Delta::Malformed`]).
    malformed: bool,
}

/// A typed event: its name and payload (sequence numbers are added when sent).
type Event = (&'static str, Value);

impl Items {
    fn new(id: String) -> Self {
        Items {
            id,
            items: Vec::new(),
            open: false,
            malformed: false,
        }
    }

    fn kind_of(d: &Delta) -> &'static str {
        match d {
            Delta::Reasoning(_) => "reasoning",
            Delta::Content(_) => "message",
            Delta::ToolStart { .. } | Delta::ToolArgs { .. } => "function_call",
            Delta::Logprob { .. } | Delta::Malformed => "marker",
        }
    }

    /// Adds a content token's log-probabilities to the open message (`output_text.logprobs`).
    fn push_logprob(&mut self, entry: Value) {
        let open_message =
            self.open && self.items.last().and_then(|i| i["type"].as_str()) == Some("message");
        if let Some(list) = self
            .items
            .last_mut()
            .filter(|_| open_message)
            .and_then(|i| i.pointer_mut("/content/0/logprobs"))
            .and_then(Value::as_array_mut)
        {
            list.push(entry);
        }
    }

    fn push(&mut self, d: &Delta, events: &mut Vec<Event>) {
        if matches!(d, Delta::Logprob { .. }) {
            return;
        }
        if matches!(d, Delta::Malformed) {
            self.malformed = true;
            return;
        }
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
                "role": "assistant", "content": [{"type": "output_text", "text": "", "annotations": [], "logprobs": []}]})
            }
            Delta::ToolStart { id, name, .. } => {
                json!({"type": "function_call", "id": format!("fc_{}_{n}", self.id),
                "call_id": id, "name": name, "arguments": "", "status": "in_progress"})
            }
            Delta::ToolArgs { .. } | Delta::Logprob { .. } | Delta::Malformed => {
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
        Delta::ToolStart { .. } | Delta::Logprob { .. } | Delta::Malformed => "",
    }
}

/// The turns the output items add to the conversation (for `previous_response_id`): reasoning,
/// the answer (a preamble when a call follows), the calls.
fn output_turns(items: &[Value]) -> Vec<Turn> {
    let text = |i: &Value| {
        i["content"][0]["text"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let calls_follow = |at: usize| items[at..].iter().any(|i| i["type"] == "function_call");
    items
        .iter()
        .enumerate()
        .filter_map(|(at, i)| match i["type"].as_str() {
            Some("reasoning") => Some(Turn::Reasoning(text(i))),
            Some("message") if calls_follow(at) => Some(Turn::Preamble(text(i))),
            Some("message") => Some(Turn::Answer(text(i))),
            Some("function_call") => Some(Turn::ToolCall {
                id: i["call_id"].as_str().unwrap_or_default().to_string(),
                name: i["name"].as_str().unwrap_or_default().to_string(),
                arguments: i["arguments"].as_str().unwrap_or_default().to_string(),
            }),
            _ => None,
        })
        .collect()
}

/// What a response echoes of its request.
struct Echo<'a> {
    previous: Option<&'a str>,
    metadata: &'a Value,
    store: bool,
}

fn response_json(
    state: &AppState,
    id: &str,
    items: &[Value],
    end: Option<(Finish, Usage)>,
    echo: &Echo<'_>,
) -> Value {
    let (status, incomplete) = match end {
        None => ("in_progress", Value::Null),
        Some((Finish::Length, _)) => ("incomplete", json!({"reason": "max_output_tokens"})),
        Some(_) => ("completed", Value::Null),
    };
    let usage = end.map_or(Value::Null, |(_, u)| {
        json!({"input_tokens": u.prompt_tokens, "output_tokens": u.completion_tokens,
               "total_tokens": u.prompt_tokens + u.completion_tokens,
               "input_tokens_details": {"cached_tokens": u.cached_tokens}})
    });
    json!({"id": id, "object": "response", "created_at": state.created(), "status": status,
           "incomplete_details": incomplete, "model": state.config.model_name, "output": items, "usage": usage,
           "previous_response_id": echo.previous, "metadata": echo.metadata, "store": echo.store})
}

/// A finished response: its items, and `harmony_malformed: true` when the output did not follow
/// Harmony (what could not be parsed is in its message's text).
fn finished_json(state: &AppState, items: &Items, end: (Finish, Usage), echo: &Echo<'_>) -> Value {
    let mut response = response_json(state, &items.id, &items.items, Some(end), echo);
    if items.malformed {
        response[crate::chat::MALFORMED] = json!(true);
    }
    response
}

/// Stores a finished response with its conversation when `store` was asked.
fn keep(state: &AppState, params: &ResponseContext, id: &str, items: &[Value], response: &Value) {
    if !params.store {
        return;
    }
    let mut turns = params.turns.clone();
    turns.extend(output_turns(items));
    state.responses.put(
        id.to_string(),
        Stored {
            response: response.clone(),
            turns,
        },
    );
}

/// Runs a responses request to the end and returns the `response` object.
pub async fn complete(
    state: &Arc<AppState>,
    params: ResponsesParams,
    permit: Permit,
) -> ApiResult<Value> {
    run_to_end(state, params, permit).await
}

async fn run_to_end(
    state: &Arc<AppState>,
    params: ResponsesParams,
    permit: Permit,
) -> ApiResult<Value> {
    let ResponsesParams { spec, ctx: params } = params;
    let mut answers = Choices::start(state.clone(), spec, 1, permit)
        .await?
        .collect()
        .await?;
    let (deltas, finish, usage) = answers
        .pop()
        .ok_or_else(|| ApiError::internal("the response has no answer"))?;
    let id = state.completion_id("resp");
    let mut items = Items::new(id.clone());
    let mut events = Vec::new();
    for d in &deltas {
        push_delta(state, &params, &mut items, d, &mut events);
    }
    items.close(&mut events);
    let echo = Echo {
        previous: params.previous.as_deref(),
        metadata: &params.metadata,
        store: params.store,
    };
    let response = finished_json(state, &items, (finish, usage), &echo);
    keep(state, &params, &id, &items.items, &response);
    Ok(response)
}

/// Adds a delta to the items (a log-probability to the open message when asked).
fn push_delta(
    state: &AppState,
    params: &ResponseContext,
    items: &mut Items,
    d: &Delta,
    events: &mut Vec<Event>,
) {
    match d {
        Delta::Logprob {
            content: true,
            logprobs,
        } if params.logprobs => {
            items.push_logprob(chat_logprob(state.harmony.tokenizer(), logprobs))
        }
        d => items.push(d, events),
    }
}

/// The HTTP answer: the whole response object, or its typed SSE events.
pub async fn respond(
    state: Arc<AppState>,
    params: ResponsesParams,
    permit: Permit,
) -> ApiResult<Response> {
    if !params.ctx.stream {
        return run_to_end(&state, params, permit)
            .await
            .map(|v| axum::Json(v).into_response());
    }
    let ResponsesParams { spec, ctx } = params;
    let choices = Choices::start(state.clone(), spec, 1, permit).await?;
    let (tx, response) = sse::channel();
    tokio::spawn(stream_events(state, ctx, choices, tx));
    Ok(response)
}

async fn stream_events(
    state: Arc<AppState>,
    params: ResponseContext,
    mut choices: Choices,
    tx: sse::EventSender,
) {
    let id = state.completion_id("resp");
    let mut items = Items::new(id.clone());
    let mut seq = 0u64;
    let echo = Echo {
        previous: params.previous.as_deref(),
        metadata: &params.metadata,
        store: params.store,
    };
    let mut events: Vec<Event> = vec![(
        "response.created",
        json!({"response": response_json(&state, &id, &[], None, &echo)}),
    )];
    loop {
        let next = tokio::select! {
            next = choices.next() => next,
            () = tx.closed() => return,
        };
        let Some((_, step)) = next else { break };
        match step {
            Ok(Step::Deltas(deltas)) => {
                for d in &deltas {
                    push_delta(&state, &params, &mut items, d, &mut events);
                }
            }
            Ok(Step::Done(finish, usage)) => {
                items.close(&mut events);
                let response = finished_json(&state, &items, (finish, usage), &echo);
                keep(&state, &params, &id, &items.items, &response);
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

/// `GET /v1/responses/{id}`: a stored response (404 when unknown or dropped).
pub fn stored(state: &AppState, id: &str) -> ApiResult<Value> {
    state.responses.get(id).map(|s| s.response).ok_or_else(|| {
        ApiError::not_found(
            format!(
                "no stored response {id:?} (responses are kept in memory, at most {})",
                state.responses.capacity()
            ),
            "response_not_found",
        )
    })
}
