//! `POST /tokenize` and `POST /detokenize` in vLLM's shapes: `{"model", "prompt"}` →
//! `{"count", "max_model_len", "tokens"}`, and `{"model", "tokens"}` → `{"prompt"}`. Text is encoded
//! as `/v1/completions` encodes a prompt (no chat template, special-token text stays text).

use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::{ApiError, ApiResult};
use crate::request::{self, Integer, List, Text};
use crate::AppState;

/// `POST /tokenize`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct TokenizeRequest {
    model: Option<Text>,
    prompt: Option<Text>,
    /// Refused: chat templating (use `prompt`).
    messages: Option<Box<serde_json::value::RawValue>>,
    /// Accepted only false (no BOS is added; gpt-oss prompts carry their own specials).
    add_special_tokens: Option<request::Flag>,
}

/// `POST /detokenize`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct DetokenizeRequest {
    model: Option<Text>,
    tokens: Option<List<Integer>>,
}

fn check_model(state: &AppState, model: Option<&Text>) -> ApiResult<()> {
    match model {
        Some(m) if m.0 != state.config.model_name => Err(ApiError::not_found(
            format!("the model {:?} does not exist", m.0),
            "model_not_found",
        )),
        _ => Ok(()),
    }
}

/// Encodes a prompt.
pub fn tokenize(state: &AppState, bytes: &[u8]) -> ApiResult<Value> {
    let req: TokenizeRequest = request::parse(bytes)?;
    check_model(state, req.model.as_ref())?;
    crate::params::refuse_present("messages", req.messages.as_deref(), "use `prompt`")?;
    crate::params::refuse_true(
        "add_special_tokens",
        req.add_special_tokens.as_ref(),
        "no BOS token is added to gpt-oss prompts",
    )?;
    let prompt = req
        .prompt
        .ok_or_else(|| ApiError::param("prompt", "prompt: required"))?;
    let mut tokens = Vec::new();
    state
        .harmony
        .tokenizer()
        .encode_capped(&prompt.0, &mut tokens, state.context_tokens())
        .map_err(|e| state.prompt_error(e, "prompt"))?;
    Ok(json!({"count": tokens.len(), "max_model_len": state.context_tokens(), "tokens": tokens}))
}

/// Decodes token ids (lossy UTF-8; special tokens as their names).
pub fn detokenize(state: &AppState, bytes: &[u8]) -> ApiResult<Value> {
    let req: DetokenizeRequest = request::parse(bytes)?;
    check_model(state, req.model.as_ref())?;
    let tokens = req
        .tokens
        .ok_or_else(|| ApiError::param("tokens", "tokens: required"))?;
    let vocab = state.harmony.tokenizer().vocab_size();
    let ids = tokens
        .0
        .iter()
        .enumerate()
        .map(|(i, t)| {
            u32::try_from(t.0)
                .ok()
                .filter(|&id| (id as usize) < vocab)
                .ok_or_else(|| {
                    ApiError::param(
                        "tokens",
                        format!("tokens[{i}]: {} is not a token id below {vocab}", t.0),
                    )
                })
        })
        .collect::<ApiResult<Vec<u32>>>()?;
    let bytes = state
        .harmony
        .tokenizer()
        .decode_bytes(&ids)
        .map_err(|e| ApiError::param("tokens", format!("tokens: {e}")))?;
    Ok(json!({"prompt": String::from_utf8_lossy(&bytes)}))
}
