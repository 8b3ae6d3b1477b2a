//! Checking a typed request's values (types were checked by the parser, [`crate::request`]): the
//! model name, `n`, the parameters this server does not implement, sampling ranges, token limits.
//! Out-of-range values become 400 errors that name the field.

use gptoss_engine::SamplingParams;

use crate::error::{ApiError, ApiResult};
use crate::request::{Common, Integer};

/// Checks `model` names the served model (404 otherwise, as OpenAI answers).
pub fn check_model(common: &Common, served: &str) -> ApiResult<()> {
    match common.model {
        None => Err(ApiError::param("model", "model: required")),
        Some(m) if m.0 == served => Ok(()),
        Some(m) => Err(ApiError::not_found(
            format!(
                "the model {:?} does not exist; this server serves {served:?}",
                m.0
            ),
            "model_not_found",
        )),
    }
}

/// Rejects `n` other than 1.
pub fn check_n(common: &Common) -> ApiResult<()> {
    match common.n {
        None | Some(Integer(1)) => Ok(()),
        Some(Integer(n)) => Err(ApiError::param(
            "n",
            format!("n: only 1 choice is supported, got {n}"),
        )),
    }
}

/// Rejects parameters this server does not implement rather than ignoring them: non-zero
/// `presence_penalty` / `frequency_penalty`, `logprobs`, `top_logprobs`, and a `response_format`
/// other than text.
pub fn check_unsupported(common: &Common) -> ApiResult<()> {
    for (key, v) in [
        ("presence_penalty", common.presence_penalty),
        ("frequency_penalty", common.frequency_penalty),
    ] {
        if v.is_some_and(|v| v.0 != 0.0) {
            return Err(ApiError::param(
                key,
                format!("{key}: not supported (only 0)"),
            ));
        }
    }
    let logprobs = common.logprobs.is_some_and(|f| f.0);
    if logprobs || common.top_logprobs.is_some_and(|n| n.0 > 0) {
        return Err(ApiError::param("logprobs", "logprobs: not supported"));
    }
    let format = common
        .response_format
        .and_then(|f| f.kind.as_ref())
        .map(|k| k.0.as_str());
    match format {
        None | Some("text") => Ok(()),
        Some(other) => Err(ApiError::param(
            "response_format",
            format!("response_format: only \"text\" is supported, got {other:?}"),
        )),
    }
}

/// `temperature` (0..=2, default 1), `top_p` (0 < p <= 1, default 1) and `seed` (default: fresh).
pub fn sampling(common: &Common, fresh_seed: u64) -> ApiResult<SamplingParams> {
    let temperature = common.temperature.map_or(1.0, |t| t.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::param(
            "temperature",
            format!("temperature: must be in [0, 2], got {temperature}"),
        ));
    }
    let top_p = common.top_p.map_or(1.0, |t| t.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::param(
            "top_p",
            format!("top_p: must be in (0, 1], got {top_p}"),
        ));
    }
    let seed = common.seed.map_or(fresh_seed, |s| s.0 as u64);
    Ok(SamplingParams {
        temperature: temperature as f32,
        top_p: top_p as f32,
        top_k: 0,
        seed,
    })
}

/// The first present of `fields` as a token limit in `1..=context_tokens`; none present: `None`.
pub fn max_tokens(
    fields: &[(&str, Option<&Integer>)],
    context_tokens: usize,
) -> ApiResult<Option<usize>> {
    for (key, v) in fields {
        if let Some(Integer(n)) = v {
            let n = *n;
            if n < 1 || n as u64 > context_tokens as u64 {
                return Err(ApiError::param(
                    key,
                    format!(
                        "{key}: must be between 1 and the context length {context_tokens}, got {n}"
                    ),
                ));
            }
            return Ok(Some(n as usize));
        }
    }
    Ok(None)
}

/// Whether `stream` is set.
pub fn stream(common: &Common) -> bool {
    common.stream.is_some_and(|f| f.0)
}
