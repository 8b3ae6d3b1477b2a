//! Checking a typed request's values (types were checked by the parser, [`crate::request`]): the
//! model name, `n`, sampling ranges, penalties and bias, token limits, and the fields this server
//! accepts only in some values. Out-of-range or unsupported values become 400 errors that name the
//! field.

use gptoss_engine::{LogitsOptions, SamplingParams};
use serde_json::value::RawValue;

use crate::bodies::Common;
use crate::error::{ApiError, ApiResult};
use crate::request::{Flag, Integer, StreamOptions, Text};

/// Most choices per request (`n`).
pub const MAX_CHOICES: usize = 8;
/// Most `top_logprobs`.
pub const MAX_TOP_LOGPROBS: usize = gptoss_engine::logits::MAX_TOP_LOGPROBS;
/// Most `logit_bias` entries.
pub const MAX_LOGIT_BIAS: usize = 1024;

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

/// `n` in 1..=[`MAX_CHOICES`] (default 1).
pub fn choices(n: Option<&Integer>) -> ApiResult<usize> {
    match n {
        None => Ok(1),
        Some(Integer(n)) if (1..=MAX_CHOICES as i64).contains(n) => Ok(*n as usize),
        Some(Integer(n)) => Err(ApiError::param(
            "n",
            format!("n: must be between 1 and {MAX_CHOICES}, got {n}"),
        )),
    }
}

/// A field this server does not implement: a 400 naming it when present (and not null).
pub fn refuse_present(name: &str, value: Option<&RawValue>, why: &str) -> ApiResult<()> {
    match value {
        Some(v) if v.get().trim() != "null" => Err(ApiError::param(
            name,
            format!("{name}: not supported ({why})"),
        )),
        _ => Ok(()),
    }
}

/// Whether a stream ends with a usage chunk (`stream_options.include_usage`); usage in every chunk
/// (`continuous_usage_stats: true`) is refused.
pub fn include_usage(options: Option<&StreamOptions>) -> ApiResult<bool> {
    refuse_true(
        "stream_options",
        options.and_then(|o| o.continuous_usage_stats.as_ref()),
        "stream_options.continuous_usage_stats: usage comes in the last chunk (include_usage)",
    )?;
    Ok(options
        .and_then(|o| o.include_usage.as_ref())
        .is_some_and(|f| f.0))
}

/// A flag that is supported only when false.
pub fn refuse_true(name: &str, value: Option<&Flag>, why: &str) -> ApiResult<()> {
    if value.is_some_and(|f| f.0) {
        return Err(ApiError::param(
            name,
            format!("{name}: not supported ({why})"),
        ));
    }
    Ok(())
}

/// A string field supported only in `allowed` values.
pub fn only_values(name: &str, value: Option<&Text>, allowed: &[&str]) -> ApiResult<()> {
    match value {
        Some(v) if !allowed.contains(&v.0.as_str()) => Err(ApiError::param(
            name,
            format!("{name}: only {allowed:?} are supported, got {:?}", v.0),
        )),
        _ => Ok(()),
    }
}

/// The sampling of a request: the device sampler's parameters, the host-side processing (bias and
/// penalties; log-probabilities and the constraint are added by the endpoint), and whether the stop
/// tokens are ignored.
pub struct Sampling {
    /// Temperature, top-p, top-k, seed.
    pub params: SamplingParams,
    /// Bias, penalties, min-p, min-tokens.
    pub logits: LogitsOptions,
    /// `ignore_eos`: generation runs to the token limit.
    pub ignore_eos: bool,
}

/// `temperature` (0..=2, default 1), `top_p` (0 < p <= 1, default 1), `top_k` (0/-1 off), `min_p`
/// (0..=1), `seed` (default: fresh), penalties, `logit_bias` (ids below `vocab`), `min_tokens`,
/// `ignore_eos`, `service_tier`.
pub fn sampling(common: &Common, fresh_seed: u64, vocab: usize) -> ApiResult<Sampling> {
    only_values("service_tier", common.service_tier, &["auto", "default"])?;
    let temperature = ranged("temperature", common.temperature, (1.0, "in [0, 2]"), |t| {
        (0.0..=2.0).contains(&t)
    })?;
    let top_p = ranged("top_p", common.top_p, (1.0, "in (0, 1]"), |p| {
        p > 0.0 && p <= 1.0
    })?;
    let min_p = ranged("min_p", common.min_p, (0.0, "in [0, 1]"), |p| {
        (0.0..=1.0).contains(&p)
    })?;
    let presence = ranged(
        "presence_penalty",
        common.presence_penalty,
        (0.0, "in [-2, 2]"),
        |p| (-2.0..=2.0).contains(&p),
    )?;
    let frequency = ranged(
        "frequency_penalty",
        common.frequency_penalty,
        (0.0, "in [-2, 2]"),
        |p| (-2.0..=2.0).contains(&p),
    )?;
    let repetition = ranged(
        "repetition_penalty",
        common.repetition_penalty,
        (1.0, "in (0, 10]"),
        |p| p > 0.0 && p <= 10.0,
    )?;
    let top_k = match common.top_k {
        None | Some(Integer(-1)) => 0,
        Some(Integer(k)) if *k >= 0 => usize::try_from(*k).unwrap_or(usize::MAX).min(vocab),
        Some(Integer(k)) => {
            return Err(ApiError::param(
                "top_k",
                format!("top_k: must be -1, 0 (off) or positive, got {k}"),
            ))
        }
    };
    let min_tokens = match common.min_tokens {
        None => 0,
        Some(Integer(n)) if *n >= 0 => usize::try_from(*n).unwrap_or(usize::MAX),
        Some(Integer(n)) => {
            return Err(ApiError::param(
                "min_tokens",
                format!("min_tokens: must be at least 0, got {n}"),
            ))
        }
    };
    let seed = common.seed.map_or(fresh_seed, |s| s.0 as u64);
    Ok(Sampling {
        params: SamplingParams {
            temperature: temperature as f32,
            top_p: top_p as f32,
            top_k,
            seed,
        },
        logits: LogitsOptions {
            logit_bias: logit_bias(common, vocab)?,
            presence_penalty: presence as f32,
            frequency_penalty: frequency as f32,
            repetition_penalty: repetition as f32,
            min_p: min_p as f32,
            min_tokens,
            logprobs: None,
            constraint: None,
        },
        ignore_eos: common.ignore_eos.is_some_and(|f| f.0),
    })
}

/// A number field with its default, its range (`ok`) and the range in words (`range`).
fn ranged(
    name: &str,
    v: Option<&crate::request::Number>,
    (default, range): (f64, &str),
    ok: impl Fn(f64) -> bool,
) -> ApiResult<f64> {
    let v = v.map_or(default, |n| n.0);
    if !v.is_finite() || !ok(v) {
        return Err(ApiError::param(
            name,
            format!("{name}: must be {range}, got {v} (out of range)"),
        ));
    }
    Ok(v)
}

fn logit_bias(common: &Common, vocab: usize) -> ApiResult<Vec<(u32, f32)>> {
    let Some(map) = common.logit_bias else {
        return Ok(Vec::new());
    };
    if map.len() > MAX_LOGIT_BIAS {
        return Err(ApiError::param(
            "logit_bias",
            format!(
                "logit_bias: at most {MAX_LOGIT_BIAS} entries, got {}",
                map.len()
            ),
        ));
    }
    map.iter()
        .map(|(k, v)| {
            let id = k
                .parse::<u32>()
                .ok()
                .filter(|&t| (t as usize) < vocab)
                .ok_or_else(|| {
                    ApiError::param(
                        "logit_bias",
                        format!("logit_bias: {k:?} is not a token id below {vocab}"),
                    )
                })?;
            if !(v.0.is_finite() && (-100.0..=100.0).contains(&v.0)) {
                return Err(ApiError::param(
                    "logit_bias",
                    format!("logit_bias[{k:?}]: must be in [-100, 100], got {}", v.0),
                ));
            }
            Ok((id, v.0 as f32))
        })
        .collect()
}

/// `top_logprobs` in 0..=[`MAX_TOP_LOGPROBS`].
pub fn top_logprobs(name: &str, v: Option<&Integer>) -> ApiResult<Option<usize>> {
    match v {
        None => Ok(None),
        Some(Integer(n)) if (0..=MAX_TOP_LOGPROBS as i64).contains(n) => Ok(Some(*n as usize)),
        Some(Integer(n)) => Err(ApiError::param(
            name,
            format!("{name}: must be between 0 and {MAX_TOP_LOGPROBS}, got {n}"),
        )),
    }
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
