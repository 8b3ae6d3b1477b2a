//! Request bodies parsed straight from their bytes into typed, compact requests: strings stay strings,
//! a tool's JSON schema stays its raw text until it is rendered, and no `serde_json::Value` tree of the
//! whole body is ever built (one costs 10–35× the body). Errors name the field by its path
//! (`messages[2].content: ...`) through `serde_path_to_error`; scalars have wrapper types so that a
//! wrong type reads "expected a number", "expected an array". An unknown top-level field is a 400
//! naming it (`crate::bodies` lists every field of each endpoint): a field is either honoured or
//! refused, never ignored.

use std::fmt;

use serde::de::{self, DeserializeOwned, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::error::{ApiError, ApiResult};

/// Parses a body into `T`: 400 "not valid JSON", "must be a JSON object", or the path of the bad field.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> ApiResult<T> {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    let kind = match first {
        Some(b'{') => None,
        Some(b'[') => Some("an array"),
        Some(b'"') => Some("a string"),
        Some(b't' | b'f') => Some("a boolean"),
        Some(b'n') => Some("null"),
        Some(b'-' | b'0'..=b'9') => Some("a number"),
        _ => {
            return Err(ApiError::invalid(
                "the body is not valid JSON: expected a JSON object",
            ))
        }
    };
    if let Some(kind) = kind {
        return Err(ApiError::invalid(format!(
            "the body must be a JSON object, got {kind}"
        )));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed: Result<T, _> = serde_path_to_error::deserialize(&mut de);
    let value = parsed.map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.classify() != serde_json::error::Category::Data {
            return ApiError::invalid(format!("the body is not valid JSON: {inner}"));
        }
        // serde_json appends "at line L column C"; the path already says where.
        let msg = inner.to_string();
        let msg = msg.split(" at line ").next().unwrap_or(&msg);
        if let Some(field) = unknown_field(msg) {
            let at = path.trim_end_matches(|c| c != '.').trim_end_matches('.');
            let full = if at.is_empty() || at == "." {
                field.to_string()
            } else {
                format!("{at}.{field}")
            };
            let param = full.split(['.', '[']).next().unwrap_or(field).to_string();
            return ApiError::param(
                &param,
                format!("{full}: not a field this server supports (see the README's field list)"),
            );
        }
        let param = path
            .split(['.', '['])
            .next()
            .filter(|p| !p.is_empty())
            .unwrap_or("body")
            .to_string();
        ApiError::param(&param, format!("{path}: {msg}"))
    })?;
    de.end()
        .map_err(|e| ApiError::invalid(format!("the body is not valid JSON: {e}")))?;
    Ok(value)
}

/// The field named by serde's "unknown field `x`, expected ..." message.
fn unknown_field(msg: &str) -> Option<&str> {
    msg.strip_prefix("unknown field `")?.split('`').next()
}

/// Declares a scalar wrapper whose type errors read "expected {what}".
macro_rules! scalar {
    ($(#[$doc:meta])* $name:ident($inner:ty), $what:literal, $($method:ident($arg:ty) => $conv:expr),+) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq)]
        pub struct $name(pub $inner);

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> Visitor<'de> for V {
                    type Value = $name;
                    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                        f.write_str($what)
                    }
                    $(
                        fn $method<E: de::Error>(self, v: $arg) -> Result<$name, E> {
                            #[allow(clippy::redundant_closure_call)]
                            ($conv)(v).map($name)
                        }
                    )+
                }
                d.deserialize_any(V)
            }
        }
    };
}

scalar!(
    /// A JSON number (integers included).
    Number(f64), "a number",
    visit_f64(f64) => |v| Ok::<_, E>(v),
    visit_i64(i64) => |v| Ok::<_, E>(v as f64),
    visit_u64(u64) => |v| Ok::<_, E>(v as f64)
);
scalar!(
    /// A JSON integer (one above `i64::MAX` saturates: every bound checked on it is far smaller).
    Integer(i64), "an integer",
    visit_i64(i64) => |v| Ok::<_, E>(v),
    visit_u64(u64) => |v: u64| Ok::<_, E>(i64::try_from(v).unwrap_or(i64::MAX))
);
scalar!(
    /// A JSON string.
    Text(String), "a string",
    visit_str(&str) => |v: &str| Ok::<_, E>(v.to_string()),
    visit_string(String) => |v| Ok::<_, E>(v)
);
scalar!(
    /// A JSON boolean.
    Flag(bool), "a boolean",
    visit_bool(bool) => |v| Ok::<_, E>(v)
);

/// A JSON array (the type error reads "expected an array").
#[derive(Clone, Debug, Default, PartialEq)]
pub struct List<T>(pub Vec<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for List<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = List<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an array")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<List<T>, A::Error> {
                // No capacity from a size hint: the elements themselves bound the vector.
                let mut out = Vec::new();
                while let Some(x) = seq.next_element()? {
                    out.push(x);
                }
                Ok(List(out))
            }
        }
        d.deserialize_seq(V(std::marker::PhantomData))
    }
}

/// One part of a content array: `{"type": "text" | "input_text" | ..., "text": ...}`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct Part {
    /// The part's type.
    #[serde(rename = "type")]
    pub kind: Option<Text>,
    /// Its text.
    pub text: Option<Text>,
}

/// A message's `content`: a string, an array of parts, or null/absent (empty).
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Content {
    /// No content.
    #[default]
    Empty,
    /// A plain string.
    Text(String),
    /// Content parts.
    Parts(Vec<Part>),
}

impl<'de> Deserialize<'de> for Content {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Content;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or an array of text parts")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Content, E> {
                Ok(Content::Empty)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Content, E> {
                Ok(Content::Text(v.to_string()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Content, E> {
                Ok(Content::Text(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Content, A::Error> {
                let mut parts = Vec::new();
                while let Some(p) = seq.next_element()? {
                    parts.push(p);
                }
                Ok(Content::Parts(parts))
            }
        }
        d.deserialize_any(V)
    }
}

impl Content {
    /// The text of a string, or of `text`/`input_text`/`output_text` parts joined; other parts are
    /// an error naming `field[i]`.
    pub fn text(&self, field: &str) -> ApiResult<String> {
        match self {
            Content::Empty => Ok(String::new()),
            Content::Text(s) => Ok(s.clone()),
            Content::Parts(parts) => {
                let mut text = String::new();
                for (i, p) in parts.iter().enumerate() {
                    let kind = p.kind.as_ref().map(|k| k.0.as_str());
                    match (kind, &p.text) {
                        (Some("text" | "input_text" | "output_text"), Some(t)) => {
                            text.push_str(&t.0)
                        }
                        _ => {
                            return Err(ApiError::invalid(format!(
                                "{field}[{i}]: only text parts ({{\"type\": \"text\", \"text\": ...}}) are supported"
                            )))
                        }
                    }
                }
                Ok(text)
            }
        }
    }
}

/// `stop`: a string or up to 4 strings.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stop(pub Vec<String>);

impl<'de> Deserialize<'de> for Stop {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Stop;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or an array of up to 4 strings")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Stop, E> {
                Ok(Stop(Vec::new()))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Stop, E> {
                Ok(Stop(vec![v.to_string()]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Stop, A::Error> {
                let mut out = Vec::new();
                let bad = || de::Error::custom("expected a string or an array of up to 4 strings");
                while let Some(s) = seq.next_element::<String>().map_err(|_| bad())? {
                    if out.len() == 4 {
                        return Err(bad());
                    }
                    out.push(s);
                }
                Ok(Stop(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// A function: name, description and JSON-schema parameters (kept as raw JSON text until rendered).
#[derive(Clone, Debug, Deserialize)]
pub struct FunctionIn {
    /// Function name.
    pub name: Text,
    /// Description.
    #[serde(default)]
    pub description: Option<Text>,
    /// Parameters schema.
    #[serde(default)]
    pub parameters: Option<Box<RawValue>>,
    /// Arguments must match `parameters` (constrained decoding).
    #[serde(default)]
    pub strict: Option<Flag>,
}

/// A chat tool: `{"type": "function", "function": {...}}`.
#[derive(Clone, Debug, Deserialize)]
pub struct ChatTool {
    /// Only `function`.
    #[serde(rename = "type")]
    pub kind: Text,
    /// The function.
    pub function: FunctionIn,
}

/// An earlier assistant tool call in a chat message.
#[derive(Clone, Debug, Deserialize)]
pub struct ToolCallIn {
    /// Call id.
    #[serde(default)]
    pub id: Option<Text>,
    /// Name and JSON arguments.
    pub function: CalledFunction,
}

/// The function of a [`ToolCallIn`].
#[derive(Clone, Debug, Deserialize)]
pub struct CalledFunction {
    /// Function name.
    pub name: Text,
    /// JSON arguments as text.
    pub arguments: Text,
}

/// One chat message.
#[derive(Clone, Debug, Deserialize)]
pub struct ChatMessage {
    /// system, developer, user, assistant or tool.
    pub role: Text,
    /// Text or parts.
    #[serde(default)]
    pub content: Content,
    /// Earlier reasoning (vLLM's name).
    #[serde(default)]
    pub reasoning_content: Option<Text>,
    /// Earlier reasoning (another common name).
    #[serde(default)]
    pub reasoning: Option<Text>,
    /// Earlier tool calls.
    #[serde(default)]
    pub tool_calls: Option<List<ToolCallIn>>,
    /// The call a tool message answers.
    #[serde(default)]
    pub tool_call_id: Option<Text>,
    /// A tool message's function name.
    #[serde(default)]
    pub name: Option<Text>,
}

/// `stream_options`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamOptions {
    /// A last chunk with usage.
    pub include_usage: Option<Flag>,
    /// Usage in every chunk (vLLM): only false is supported.
    pub continuous_usage_stats: Option<Flag>,
}

/// `prompt` of a completion: a string or an array of one string.
#[derive(Clone, Debug, PartialEq)]
pub struct PromptIn(pub String);

impl<'de> Deserialize<'de> for PromptIn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = PromptIn;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string (or an array of one string)")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PromptIn, E> {
                Ok(PromptIn(v.to_string()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<PromptIn, A::Error> {
                match (seq.next_element::<String>()?, seq.next_element::<String>()?) {
                    (Some(s), None) => Ok(PromptIn(s)),
                    _ => Err(de::Error::custom(
                        "expected a string (or an array of one string)",
                    )),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// A responses-API tool: `{"type": "function", "name", "description", "parameters"}`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct ResponsesTool {
    /// Only `function`.
    #[serde(rename = "type")]
    pub kind: Option<Text>,
    /// Function name.
    pub name: Option<Text>,
    /// Description.
    pub description: Option<Text>,
    /// Parameters schema.
    pub parameters: Option<Box<RawValue>>,
    /// Arguments must match `parameters` (constrained decoding).
    pub strict: Option<Flag>,
}

/// One item of a responses `input` array (every field optional; which are required depends on `type`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct InputItem {
    /// message (default), function_call, function_call_output, reasoning.
    #[serde(rename = "type")]
    pub kind: Option<Text>,
    /// A message's role.
    pub role: Option<Text>,
    /// A message's (or reasoning item's) content.
    pub content: Content,
    /// A function call's id.
    pub call_id: Option<Text>,
    /// A function call's name.
    pub name: Option<Text>,
    /// A function call's arguments.
    pub arguments: Option<Text>,
    /// A function call's output.
    pub output: Option<Text>,
}

/// Responses `input`: a string or an array of items.
#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    /// One user message.
    Text(String),
    /// Items.
    Items(Vec<InputItem>),
}

impl PartialEq for InputItem {
    fn eq(&self, other: &Self) -> bool {
        (&self.kind, &self.role, &self.content, &self.call_id)
            == (&other.kind, &other.role, &other.content, &other.call_id)
            && (&self.name, &self.arguments, &self.output)
                == (&other.name, &other.arguments, &other.output)
    }
}

impl<'de> Deserialize<'de> for Input {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Input;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a non-empty string or array")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Input, E> {
                Ok(Input::Text(v.to_string()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Input, A::Error> {
                let mut items = Vec::new();
                while let Some(i) = seq.next_element()? {
                    items.push(i);
                }
                Ok(Input::Items(items))
            }
        }
        d.deserialize_any(V)
    }
}

/// `reasoning` of a responses request.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReasoningIn {
    /// low, medium, high.
    pub effort: Option<Text>,
    /// Reasoning summaries (not produced: only null is accepted).
    pub summary: Option<Text>,
    /// The older name of `summary`.
    pub generate_summary: Option<Text>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bodies::ChatRequest;

    #[test]
    fn fields_are_typed_and_errors_name_the_path() {
        let r: ChatRequest = parse(br#"{"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"b": 1, "a": [2]}}}], "temperature": 1}"#).unwrap();
        assert_eq!(r.model, Some(Text("m".into())));
        assert_eq!(r.temperature, Some(Number(1.0)));
        let msg = &r.messages.unwrap().0[0];
        assert_eq!(msg.content.text("c").unwrap(), "hi");
        let tools = r.tools.unwrap().0;
        assert_eq!(
            tools[0].function.parameters.as_ref().unwrap().get(),
            r#"{"b": 1, "a": [2]}"#
        );
        for (body, param, piece) in [
            (
                &br#"{"temperature": "hot"}"#[..],
                "temperature",
                "expected a number",
            ),
            (br#"{"messages": "hi"}"#, "messages", "expected an array"),
            (
                br#"{"messages": [{"content": "x"}]}"#,
                "messages",
                "messages[0]: missing field `role`",
            ),
            (
                br#"{"messages": [{"role": "user", "content": 5}]}"#,
                "messages",
                "messages[0].content",
            ),
            (br#"{"stop": ["a", "b", "c", "d", "e"]}"#, "stop", "up to 4"),
            (br#"{"stream": 1}"#, "stream", "expected a boolean"),
        ] {
            let e = parse::<ChatRequest>(body).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{}", e.message);
            assert!(e.message.contains(piece), "{}", e.message);
        }
        let e = parse::<ChatRequest>(b"[1]").unwrap_err();
        assert!(e.message.contains("must be a JSON object, got an array"));
        let e = parse::<ChatRequest>(b"{\"model\": ").unwrap_err();
        assert!(e.message.contains("not valid JSON"));
        let e = parse::<ChatRequest>(b"{} x").unwrap_err();
        assert!(e.message.contains("not valid JSON"));
    }
}
