//! Reading a request body: malformed JSON, wrong types and out-of-range values become 400 errors
//! that name the field. Scalars are read one by one (so the message names them); lists of objects
//! are deserialized element by element (`messages[2]: ...`).

use gptoss_engine::SamplingParams;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::error::{ApiError, ApiResult};

/// A request body: a JSON object, key order preserved.
#[derive(Clone, Debug)]
pub struct Body(pub Map<String, Value>);

impl Body {
    /// Parses the raw body.
    pub fn parse(bytes: &[u8]) -> ApiResult<Body> {
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|e| ApiError::invalid(format!("the body is not valid JSON: {e}")))?;
        Body::from_value(value)
    }

    /// Wraps a parsed body (a batch line's `body`).
    pub fn from_value(value: Value) -> ApiResult<Body> {
        match value {
            Value::Object(map) => Ok(Body(map)),
            other => Err(ApiError::invalid(format!(
                "the body must be a JSON object, got {}",
                type_name(&other)
            ))),
        }
    }

    /// The value of `key`, treating `null` as absent.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key).filter(|v| !v.is_null())
    }

    fn typed<'a, T>(
        &'a self,
        key: &str,
        want: &str,
        f: impl Fn(&'a Value) -> Option<T>,
    ) -> ApiResult<Option<T>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => f(v).map(Some).ok_or_else(|| {
                ApiError::param(key, format!("{key}: expected {want}, got {}", type_name(v)))
            }),
        }
    }

    /// An optional number.
    pub fn f64(&self, key: &str) -> ApiResult<Option<f64>> {
        self.typed(key, "a number", Value::as_f64)
    }

    /// An optional integer.
    pub fn i64(&self, key: &str) -> ApiResult<Option<i64>> {
        self.typed(key, "an integer", |v| {
            v.as_i64().or_else(|| v.as_u64().map(|u| u as i64))
        })
    }

    /// An optional string.
    pub fn str(&self, key: &str) -> ApiResult<Option<&str>> {
        self.typed(key, "a string", Value::as_str)
    }

    /// An optional boolean.
    pub fn bool(&self, key: &str) -> ApiResult<Option<bool>> {
        self.typed(key, "a boolean", Value::as_bool)
    }

    /// An optional list whose elements deserialize to `T`.
    pub fn list<T: DeserializeOwned>(&self, key: &str) -> ApiResult<Option<Vec<T>>> {
        let Some(items) = self.typed(key, "an array", |v| v.as_array().cloned())? else {
            return Ok(None);
        };
        items
            .into_iter()
            .enumerate()
            .map(|(i, item)| {
                serde_json::from_value(item)
                    .map_err(|e| ApiError::param(key, format!("{key}[{i}]: {e}")))
            })
            .collect::<ApiResult<Vec<T>>>()
            .map(Some)
    }

    /// Checks `model` names the served model (404 otherwise, as OpenAI answers).
    pub fn check_model(&self, served: &str) -> ApiResult<()> {
        match self.str("model")? {
            None => Err(ApiError::param("model", "model: required")),
            Some(m) if m == served => Ok(()),
            Some(m) => Err(ApiError::not_found(
                format!("the model {m:?} does not exist; this server serves {served:?}"),
                "model_not_found",
            )),
        }
    }

    /// Rejects `n` other than 1.
    pub fn check_n(&self) -> ApiResult<()> {
        match self.i64("n")? {
            None | Some(1) => Ok(()),
            Some(n) => Err(ApiError::param(
                "n",
                format!("n: only 1 choice is supported, got {n}"),
            )),
        }
    }

    /// Rejects parameters this server does not implement rather than ignoring them: non-zero
    /// `presence_penalty` / `frequency_penalty`, `logprobs`, `top_logprobs`, and a `response_format`
    /// other than text.
    pub fn check_unsupported(&self) -> ApiResult<()> {
        for key in ["presence_penalty", "frequency_penalty"] {
            if self.f64(key)?.is_some_and(|v| v != 0.0) {
                return Err(ApiError::param(
                    key,
                    format!("{key}: not supported (only 0)"),
                ));
            }
        }
        if self.bool("logprobs")? == Some(true) || self.i64("top_logprobs")?.is_some_and(|n| n > 0)
        {
            return Err(ApiError::param("logprobs", "logprobs: not supported"));
        }
        let format = self
            .get("response_format")
            .and_then(|f| f.get("type"))
            .and_then(Value::as_str);
        match format {
            None | Some("text") => Ok(()),
            Some(other) => Err(ApiError::param(
                "response_format",
                format!("response_format: only \"text\" is supported, got {other:?}"),
            )),
        }
    }

    /// `temperature` (0..=2, default 1), `top_p` (0 < p <= 1, default 1) and `seed` (default: fresh).
    pub fn sampling(&self, fresh_seed: u64) -> ApiResult<SamplingParams> {
        let temperature = self.f64("temperature")?.unwrap_or(1.0);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(ApiError::param(
                "temperature",
                format!("temperature: must be in [0, 2], got {temperature}"),
            ));
        }
        let top_p = self.f64("top_p")?.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(ApiError::param(
                "top_p",
                format!("top_p: must be in (0, 1], got {top_p}"),
            ));
        }
        let seed = self.i64("seed")?.map_or(fresh_seed, |s| s as u64);
        Ok(SamplingParams {
            temperature: temperature as f32,
            top_p: top_p as f32,
            top_k: 0,
            seed,
        })
    }

    /// The first present of `keys` as a token limit in `1..=context_tokens`; absent: `None`.
    pub fn max_tokens(&self, keys: &[&str], context_tokens: usize) -> ApiResult<Option<usize>> {
        for key in keys {
            if let Some(n) = self.i64(key)? {
                if n < 1 || n as u64 > context_tokens as u64 {
                    return Err(ApiError::param(
                        key,
                        format!("{key}: must be between 1 and the context length {context_tokens}, got {n}"),
                    ));
                }
                return Ok(Some(n as usize));
            }
        }
        Ok(None)
    }

    /// `stop`: a string or up to 4 strings.
    pub fn stop(&self) -> ApiResult<Vec<String>> {
        let bad = || {
            ApiError::param(
                "stop",
                "stop: expected a string or an array of up to 4 strings",
            )
        };
        match self.get("stop") {
            None => Ok(Vec::new()),
            Some(Value::String(s)) => Ok(vec![s.clone()]),
            Some(Value::Array(items)) if items.len() <= 4 => items
                .iter()
                .map(|v| v.as_str().map(str::to_string).ok_or_else(bad))
                .collect(),
            Some(_) => Err(bad()),
        }
    }
}

/// The JSON type of a value, for messages.
pub fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Text of a `content` that is a string or an array of `{type: text|input_text|output_text, text}` parts.
pub fn content_text(content: &Value, field: &str) -> ApiResult<String> {
    match content {
        Value::Null => Ok(String::new()),
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => {
            let mut text = String::new();
            for (i, part) in parts.iter().enumerate() {
                let kind = part.get("type").and_then(Value::as_str);
                let t = part.get("text").and_then(Value::as_str);
                match (kind, t) {
                    (Some("text" | "input_text" | "output_text"), Some(t)) => text.push_str(t),
                    _ => {
                        return Err(ApiError::invalid(format!(
                            "{field}[{i}]: only text parts ({{\"type\": \"text\", \"text\": ...}}) are supported"
                        )))
                    }
                }
            }
            Ok(text)
        }
        other => Err(ApiError::invalid(format!(
            "{field}: expected a string or an array of text parts, got {}",
            type_name(other)
        ))),
    }
}
