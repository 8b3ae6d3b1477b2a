//! `POST /v1/chat/completions`: messages (with earlier reasoning, tool calls and tool results) →
//! Harmony conversation → `n` generations → per choice a `message` {content, reasoning_content,
//! tool_calls} and `logprobs`, or SSE `chat.completion.chunk` deltas tagged with the choice index,
//! with `finish_reason` and `usage`. `response_format` and strict tools constrain the answer
//! (`structured.rs`). A choice whose output did not follow Harmony carries `harmony_malformed: true`
//! (beside `finish_reason`; streamed, in its finishing chunk): what could not be parsed is its content.

use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use gptoss_tokenizer::harmony::ToolDescription;
use serde_json::{json, Map, Value};

use crate::admission::Permit;
use crate::bodies::ChatRequest;
use crate::choices::{total_usage, Answer, Choices};
use crate::conversation::{call_name, parse_effort, Conversation, ToolChoice, Turn};
use crate::error::{ApiError, ApiResult};
use crate::generation::{Delta, Finish, GenSpec, OutputMode, Step, Usage};
use crate::outputs::{answer_schema, chat_logprob, chat_logprobs, output_schema};
use crate::params::{self, check_model, refuse_present, refuse_true};
use crate::request::{self, FunctionIn, Text, ToolCallIn};
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
    n: usize,
    stream: bool,
    include_usage: bool,
    logprobs: bool,
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

/// The conversation and each tool's `strict` flag.
fn conversation(req: &ChatRequest) -> ApiResult<(Conversation, Vec<bool>)> {
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
    let mut strict = Vec::new();
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
        strict.push(spec.function.strict.as_ref().is_some_and(|f| f.0));
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
    Ok((conv, strict))
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

/// Refuses the chat fields this server does not implement, by name.
fn refuse_unsupported(req: &ChatRequest) -> ApiResult<()> {
    refuse_present("audio", req.audio.as_deref(), "text output only")?;
    refuse_present(
        "prediction",
        req.prediction.as_deref(),
        "no predicted outputs",
    )?;
    refuse_present(
        "web_search_options",
        req.web_search_options.as_deref(),
        "no web search",
    )?;
    refuse_present("functions", req.functions.as_deref(), "use `tools`")?;
    refuse_present(
        "function_call",
        req.function_call.as_deref(),
        "use `tool_choice`",
    )?;
    refuse_true(
        "store",
        req.store.as_ref(),
        "chat completions are not stored",
    )?;
    refuse_present(
        "metadata",
        req.metadata.as_deref(),
        "kept only with `store`",
    )?;
    if let Some(v) = &req.verbosity {
        return Err(ApiError::param(
            "verbosity",
            format!("verbosity: not supported, got {:?}", v.0),
        ));
    }
    if let Some(m) = req
        .modalities
        .as_ref()
        .and_then(|m| m.0.iter().find(|m| m.0 != "text"))
    {
        return Err(ApiError::param(
            "modalities",
            format!("modalities: only [\"text\"] is supported, got {:?}", m.0),
        ));
    }
    Ok(())
}

/// `logprobs` / `top_logprobs`: the count of top tokens per position, `None` when not asked.
pub(crate) fn chat_logprobs_asked(
    logprobs: Option<&request::Flag>,
    top: Option<&request::Integer>,
) -> ApiResult<Option<usize>> {
    let top = params::top_logprobs("top_logprobs", top)?;
    match (logprobs.is_some_and(|f| f.0), top) {
        (true, top) => Ok(Some(top.unwrap_or(0))),
        (false, Some(n)) if n > 0 => Err(ApiError::param(
            "top_logprobs",
            "top_logprobs: needs `logprobs: true`",
        )),
        (false, _) => Ok(None),
    }
}

/// Parses, checks and renders a chat body (CPU work: run on the render pool). The body and the typed
/// request are dropped here; what comes out is the prompt's tokens and the answer's settings.
pub fn prepare(state: &AppState, bytes: &[u8]) -> ApiResult<ChatParams> {
    let req: ChatRequest = request::parse(bytes)?;
    let common = req.common();
    check_model(&common, &state.config.model_name)?;
    refuse_unsupported(&req)?;
    let n = params::choices(req.n.as_ref())?;
    let mut sampling = params::sampling(&common, state.fresh_seed(), state.vocab_size())?;
    sampling.logits.logprobs =
        chat_logprobs_asked(req.logprobs.as_ref(), req.top_logprobs.as_ref())?;
    let max_tokens = params::max_tokens(
        &[
            ("max_completion_tokens", req.max_completion_tokens.as_ref()),
            ("max_tokens", req.max_tokens.as_ref()),
        ],
        state.context_tokens(),
    )?;
    let stop = req.stop.as_ref().map(|s| s.0.clone()).unwrap_or_default();
    let format = req.response_format.as_ref();
    let answer = answer_schema(
        format.and_then(|f| f.kind.as_ref()).map(|k| k.0.as_str()),
        format
            .and_then(|f| f.json_schema.as_ref())
            .and_then(|j| j.schema.as_deref()),
        "response_format.json_schema",
    )?;
    let (conv, strict) = conversation(&req)?;
    let schema = output_schema(&conv, &strict, answer);
    let prompt = conv.render(&state.harmony, state.prompt_cap())?;
    sampling.logits.constraint = state.constraint(&schema)?;
    let spec = state.gen_spec(prompt, sampling, max_tokens, stop, OutputMode::Harmony)?;
    let include_usage = params::include_usage(req.stream_options.as_ref())?;
    Ok(ChatParams {
        logprobs: spec.logits.logprobs.is_some(),
        spec,
        n,
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
    let logprobs = params.logprobs;
    let answers = Choices::start(state.clone(), params.spec, params.n, permit)
        .await?
        .collect()
        .await?;
    Ok(completion_json(state, &answers, logprobs))
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
    let choices = Choices::start(state.clone(), params.spec, params.n, permit).await?;
    let (tx, response) = sse::channel();
    let id = state.completion_id("chatcmpl");
    let opts = StreamOpts {
        include_usage: params.include_usage,
        logprobs: params.logprobs,
        n: params.n,
    };
    tokio::spawn(stream(state, choices, tx, id, opts));
    Ok(response)
}

struct StreamOpts {
    include_usage: bool,
    logprobs: bool,
    n: usize,
}

async fn stream(
    state: Arc<AppState>,
    mut choices: Choices,
    tx: sse::EventSender,
    id: String,
    opts: StreamOpts,
) {
    let created = state.created();
    let tok = state.harmony.tokenizer();
    let chunk = |index: usize, delta: Value, logprobs: Value, finish: Option<Finish>| {
        json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": state.config.model_name,
            "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish.map(Finish::as_str)}],
        })
    };
    for i in 0..opts.n {
        let first = chunk(
            i,
            json!({"role": "assistant", "content": ""}),
            Value::Null,
            None,
        );
        if !tx.json(&first).await {
            return;
        }
    }
    let mut usages = Vec::new();
    let mut malformed = vec![false; opts.n];
    loop {
        let next = tokio::select! {
            next = choices.next() => next,
            () = tx.closed() => return,
        };
        let Some((i, step)) = next else { break };
        match step {
            Ok(Step::Deltas(deltas)) => {
                for d in &deltas {
                    let sent = match d {
                        Delta::Logprob {
                            content: true,
                            logprobs,
                        } if opts.logprobs => {
                            let lp =
                                json!({"content": [chat_logprob(tok, logprobs)], "refusal": null});
                            tx.json(&chunk(i, json!({}), lp, None)).await
                        }
                        Delta::Logprob { .. } => true,
                        Delta::Malformed => {
                            if let Some(m) = malformed.get_mut(i) {
                                *m = true;
                            }
                            true
                        }
                        d => tx.json(&chunk(i, delta_json(d), Value::Null, None)).await,
                    };
                    if !sent {
                        return;
                    }
                }
            }
            Ok(Step::Done(finish, usage)) => {
                usages.push(usage);
                let mut last = chunk(i, json!({}), Value::Null, Some(finish));
                if malformed.get(i).copied().unwrap_or(false) {
                    last["choices"][0][MALFORMED] = json!(true);
                }
                if !tx.json(&last).await {
                    return;
                }
            }
            Err(e) => {
                let _ = tx.json(&e.to_json()).await;
            }
        }
    }
    if opts.include_usage {
        let mut last = chunk(0, json!({}), Value::Null, None);
        last["choices"] = json!([]);
        last["usage"] = usage_json(total_usage(usages));
        let _ = tx.json(&last).await;
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
        Delta::Logprob { .. } | Delta::Malformed => json!({}),
    }
}

/// The field that marks a choice (chat, and the response object of `/v1/responses`) whose output did
/// not follow Harmony: what could not be parsed was returned as content.
pub(crate) const MALFORMED: &str = "harmony_malformed";

/// `usage` of chat and completions.
pub(crate) fn usage_json(u: Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
    })
}

/// The assistant message gathered from all deltas.
#[derive(Default)]
pub(crate) struct Gathered {
    pub reasoning: String,
    pub content: String,
    /// (id, name, arguments)
    pub calls: Vec<(String, String, String)>,
    /// The output did not follow Harmony ([`Delta::Malformed`]).
    pub malformed: bool,
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
            Delta::Malformed => g.malformed = true,
            Delta::Logprob { .. } => {}
        }
    }
    g
}

fn message_json(g: &Gathered) -> Value {
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
    Value::Object(message)
}

fn completion_json(state: &AppState, answers: &[Answer], logprobs: bool) -> Value {
    let tok = state.harmony.tokenizer();
    let choices: Vec<Value> = answers
        .iter()
        .enumerate()
        .map(|(i, (deltas, finish, _))| {
            let gathered = gather(deltas);
            let mut choice = json!({"index": i, "message": message_json(&gathered),
                   "logprobs": chat_logprobs(tok, deltas, logprobs), "finish_reason": finish.as_str()});
            if gathered.malformed {
                choice[MALFORMED] = json!(true);
            }
            choice
        })
        .collect();
    json!({
        "id": state.completion_id("chatcmpl"),
        "object": "chat.completion",
        "created": state.created(),
        "model": state.config.model_name,
        "choices": choices,
        "usage": usage_json(total_usage(answers.iter().map(|a| a.2))),
    })
}
