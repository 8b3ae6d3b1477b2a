//! What chat, completions and responses share about an answer's shape: the output constraint a
//! request asks for (`response_format` / `text.format`, strict tools, `tool_choice`), and
//! log-probabilities in each endpoint's JSON form.

use gptoss_engine::TokenLogprobs;
use gptoss_tokenizer::Tokenizer;
use serde_json::{json, Map, Value};

use crate::conversation::{Conversation, ToolChoice};
use crate::error::{ApiError, ApiResult};
use crate::generation::Delta;
use crate::structured::{AnswerChoice, OutputSchema};

/// The answer schema of a format `kind` (`text`, `json_object`, `json_schema`) with the raw `schema`
/// of `json_schema`; `field` names the request field in errors.
pub fn answer_schema(
    kind: Option<&str>,
    schema: Option<&serde_json::value::RawValue>,
    field: &str,
) -> ApiResult<Option<(Value, String)>> {
    let param = field.split(['.', '[']).next().unwrap_or(field);
    match kind {
        None | Some("text") => Ok(None),
        Some("json_object") => Ok(Some((json!({"type": "object"}), field.to_string()))),
        Some("json_schema") => {
            let raw = schema.ok_or_else(|| {
                ApiError::param(param, format!("{field}: json_schema needs a `schema`"))
            })?;
            let value: Value = serde_json::from_str(raw.get())
                .map_err(|e| ApiError::param(param, format!("{field}.schema: {e}")))?;
            Ok(Some((value, format!("{field}.schema"))))
        }
        Some(other) => Err(ApiError::param(
            param,
            format!("{field}.type: expected \"text\", \"json_object\" or \"json_schema\", got {other:?}"),
        )),
    }
}

/// The constraint of a conversation: the answer's schema, and each tool's arguments constrained
/// when `strict[i]` is set or the tool choice forces a call (a tool without `parameters` takes an
/// object).
pub fn output_schema(
    conv: &Conversation,
    strict: &[bool],
    answer: Option<(Value, String)>,
) -> OutputSchema {
    let forced = matches!(
        conv.tool_choice,
        ToolChoice::Required | ToolChoice::Named(_)
    );
    let tools = match conv.tool_choice {
        ToolChoice::None => Vec::new(),
        _ => conv
            .tools
            .iter()
            .zip(strict.iter().chain(std::iter::repeat(&false)))
            .map(|(t, &s)| {
                let params = (s || forced).then(|| {
                    t.parameters
                        .clone()
                        .unwrap_or_else(|| json!({"type": "object"}))
                });
                (t.name.clone(), params)
            })
            .collect(),
    };
    let choice = match &conv.tool_choice {
        ToolChoice::Auto | ToolChoice::None => AnswerChoice::Any,
        ToolChoice::Required => AnswerChoice::AnyCall,
        ToolChoice::Named(n) => AnswerChoice::Call(n.clone()),
    };
    OutputSchema {
        answer,
        tools,
        choice,
        framing: crate::structured::Framing::Harmony,
    }
}

/// A token's text (lossy UTF-8 of its bytes; a special token's name) and bytes.
fn token_text(tok: &Tokenizer, id: u32) -> (String, Vec<u8>) {
    let bytes = tok.token_bytes(id).map(<[u8]>::to_vec).unwrap_or_default();
    (String::from_utf8_lossy(&bytes).into_owned(), bytes)
}

/// Chat's (and responses') entry for one token: `{token, logprob, bytes, top_logprobs}`.
pub fn chat_logprob(tok: &Tokenizer, lp: &TokenLogprobs) -> Value {
    let entry = |id: u32, logprob: f32| {
        let (text, bytes) = token_text(tok, id);
        json!({"token": text, "logprob": logprob, "bytes": bytes})
    };
    let mut v = entry(lp.token, lp.logprob);
    v["top_logprobs"] = lp.top.iter().map(|&(t, l)| entry(t, l)).collect();
    v
}

/// Chat's `logprobs` of the content tokens among `deltas` (`None` when none were asked).
pub fn chat_logprobs(tok: &Tokenizer, deltas: &[Delta], asked: bool) -> Value {
    if !asked {
        return Value::Null;
    }
    let content: Vec<Value> = deltas
        .iter()
        .filter_map(|d| match d {
            Delta::Logprob {
                content: true,
                logprobs,
            } => Some(chat_logprob(tok, logprobs)),
            _ => None,
        })
        .collect();
    json!({"content": content, "refusal": null})
}

/// Completions' `logprobs` of every token among `deltas`: `{tokens, token_logprobs, top_logprobs,
/// text_offset}` (offsets into the choice's text, which starts at `offset`).
pub fn completion_logprobs(tok: &Tokenizer, deltas: &[Delta], offset: usize) -> Value {
    let mut out = Map::new();
    let (mut tokens, mut lps, mut tops, mut offsets) = (vec![], vec![], vec![], vec![]);
    let mut at = offset;
    for d in deltas {
        if let Delta::Logprob { logprobs, .. } = d {
            let (text, _) = token_text(tok, logprobs.token);
            offsets.push(at);
            if !tok.is_special(logprobs.token) {
                at += text.len();
            }
            tokens.push(json!(text));
            lps.push(json!(logprobs.logprob));
            let top: Map<String, Value> = logprobs
                .top
                .iter()
                .map(|&(t, l)| (token_text(tok, t).0, json!(l)))
                .collect();
            tops.push(Value::Object(top));
        }
    }
    out.insert("tokens".into(), json!(tokens));
    out.insert("token_logprobs".into(), json!(lps));
    out.insert("top_logprobs".into(), json!(tops));
    out.insert("text_offset".into(), json!(offsets));
    Value::Object(out)
}
