//! Structured outputs by constrained decoding with `llguidance` (the grammar engine llama.cpp and
//! vLLM use). A request's constraint is one Lark grammar over the whole Harmony answer: the model may
//! reason first (`analysis` messages, and `commentary` preambles before a tool call when the answer
//! has no schema, run free: any non-special token),
//! and the constraint bites where the answer begins: after `<|channel|>final<|message|>` the text must
//! match `response_format`'s JSON schema (then `<|return|>`), and after a tool call's `<|message|>`
//! the arguments must match the tool's `parameters` (then `<|call|>`). `tool_choice` "required" or a
//! named function leaves out the final answer (and the other tools). Whitespace in constrained JSON
//! is fixed (`,` and `:`, no padding), as in Harmony's own examples, so a constrained value always
//! ends.
//!
//! The vocabulary is handed to `toktrie` as bytes (special tokens as `\xff<|name|>`), once per server
//! ([`Grammars`]); each request's grammar is compiled on the render pool and each sequence gets its
//! own matcher, cloned from the compiled one ([`LlgSpec`]), stepped on the engine thread.

use std::sync::{Arc, Mutex};

use gptoss_engine::{ConstraintSpec, TokenConstraint};
use gptoss_tokenizer::Tokenizer;
use llguidance::api::TopLevelGrammar;
use llguidance::{Matcher, ParserFactory};
use serde_json::{json, Value};
use toktrie::{ApproximateTokEnv, TokRxInfo, TokTrie};

use crate::error::{ApiError, ApiResult};

/// What a request constrains.
#[derive(Clone, Debug, Default)]
pub struct OutputSchema {
    /// The final answer's JSON schema (`response_format` / `text.format`), with the request field it
    /// came from.
    pub answer: Option<(Value, String)>,
    /// Function tools the model may call: name, and the arguments' schema when they are constrained
    /// (`strict`, or a forced tool choice).
    pub tools: Vec<(String, Option<Value>)>,
    /// Which answers are allowed.
    pub choice: AnswerChoice,
    /// Whether the output is a Harmony answer or plain text (`/v1/completions`).
    pub framing: Framing,
}

/// How the output around the constrained value looks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Framing {
    /// A Harmony answer: free reasoning, then the final message or a tool call.
    #[default]
    Harmony,
    /// Plain text: the constrained value is the whole output.
    Raw,
}

/// Which answers the grammar allows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum AnswerChoice {
    /// A final answer or any tool call.
    #[default]
    Any,
    /// A tool call (`tool_choice: "required"`).
    AnyCall,
    /// A call of this function.
    Call(String),
}

impl OutputSchema {
    /// Whether anything is constrained (otherwise no grammar is built).
    pub fn is_active(&self) -> bool {
        self.answer.is_some()
            || self.choice != AnswerChoice::Any
            || self.tools.iter().any(|(_, s)| s.is_some())
    }
}

/// The vocabulary as `llguidance` sees it, built once per server on first use.
pub struct Grammars {
    factory: ParserFactory,
    /// `<[...]>`: every ordinary (non-special, non-empty) token.
    free_text: String,
}

impl Grammars {
    /// The vocabulary of `tokenizer` over `vocab_rows` model rows (rows past the tokenizer are empty:
    /// never allowed).
    pub fn new(tokenizer: &Tokenizer, vocab_rows: usize) -> Result<Self, String> {
        let mut words = Vec::with_capacity(vocab_rows);
        let mut ranges: Vec<(u32, u32)> = Vec::new();
        for id in 0..vocab_rows as u32 {
            let bytes = tokenizer
                .token_bytes(id)
                .map(<[u8]>::to_vec)
                .unwrap_or_default();
            let word = if tokenizer.is_special(id) {
                let mut w = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                w.extend_from_slice(&bytes);
                w
            } else {
                if !bytes.is_empty() {
                    match ranges.last_mut() {
                        Some((_, end)) if *end + 1 == id => *end = id,
                        _ => ranges.push((id, id)),
                    }
                }
                bytes
            };
            words.push(word);
        }
        if ranges.is_empty() {
            return Err("the vocabulary has no ordinary tokens".into());
        }
        let eos = tokenizer
            .find_special("<|endoftext|>")
            .or_else(|| tokenizer.find_special("<|return|>"))
            .ok_or("the vocabulary has neither <|endoftext|> nor <|return|>")?;
        let trie = TokTrie::from(&TokRxInfo::new(vocab_rows as u32, eos), &words);
        let env: toktrie::TokEnv = Arc::new(ApproximateTokEnv::new(trie));
        let mut factory = ParserFactory::new_simple(&env).map_err(|e| e.to_string())?;
        factory.quiet();
        let free_text = ranges
            .iter()
            .map(|&(a, b)| {
                if a == b {
                    a.to_string()
                } else {
                    format!("{a}-{b}")
                }
            })
            .collect::<Vec<_>>()
            .join(",");
        Ok(Grammars {
            factory,
            free_text: format!("<[{free_text}]>"),
        })
    }

    /// Compiles the grammar of `schema`; an unsupported schema feature is a 400 naming the field.
    pub fn compile(&self, schema: &OutputSchema) -> ApiResult<Arc<dyn ConstraintSpec>> {
        let lark = self.lark(schema)?;
        let parser = self
            .factory
            .create_parser(TopLevelGrammar::from_lark(lark))
            .map_err(|e| schema_error(schema, &e.to_string()))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(schema_error(schema, &e));
        }
        Ok(Arc::new(LlgSpec {
            proto: Mutex::new(matcher),
        }))
    }

    /// The Lark grammar of the whole answer.
    fn lark(&self, schema: &OutputSchema) -> ApiResult<String> {
        let text = &self.free_text;
        if schema.framing == Framing::Raw {
            return match &schema.answer {
                Some((s, _)) => Ok(format!("start: %json {}\n", compact(s))),
                None => Ok(format!("start: {text}*\n")),
            };
        }
        let mut answers = Vec::new();
        let mut rules = String::new();
        if schema.choice == AnswerChoice::Any {
            let body = match &schema.answer {
                Some((s, _)) => format!("%json {}", compact(s)),
                None => format!("{text}*"),
            };
            rules.push_str(&format!(
                "final: <|channel|> \"final\" <|message|> final_body <|return|>\nfinal_body: {body}\n"
            ));
            answers.push("final".to_string());
        }
        for (i, (name, params)) in schema.tools.iter().enumerate() {
            if let AnswerChoice::Call(only) = &schema.choice {
                if only != name {
                    continue;
                }
            }
            let args = match params {
                Some(p) => format!("%json {}", compact(p)),
                None => format!("{text}*"),
            };
            let header = serde_json::to_string(&format!("commentary to=functions.{name}"))
                .map_err(|e| ApiError::internal(e.to_string()))?;
            rules.push_str(&format!(
                "call{i}: <|channel|> {header} \" \" <|constrain|> \"json\" <|message|> args{i} <|call|>\nargs{i}: {args}\n"
            ));
            answers.push(format!("call{i}"));
        }
        if answers.is_empty() {
            return Err(ApiError::param(
                "tool_choice",
                "tool_choice: the function it names is not in tools",
            ));
        }
        // Preambles (commentary shown to the user) come before tool calls; with a schema on the answer
        // they would land in front of the JSON, so then only reasoning may come first.
        let channels = if schema.answer.is_none() && !schema.tools.is_empty() {
            "(\"analysis\" | \"commentary\")"
        } else {
            "\"analysis\""
        };
        Ok(format!(
            "start: prelude* answer\n\
             prelude: <|channel|> {channels} <|message|> free <|end|> <|start|> \"assistant\"\n\
             free: {text}*\n\
             answer: {}\n{rules}",
            answers.join(" | ")
        ))
    }
}

/// `schema` as JSON with llguidance's whitespace fixed (no flexible whitespace: a constrained value
/// always ends).
fn compact(schema: &Value) -> String {
    let mut s = match schema {
        Value::Object(_) => schema.clone(),
        Value::Bool(true) => json!({}),
        other => json!({ "allOf": [other] }),
    };
    if let Some(obj) = s.as_object_mut() {
        obj.insert(
            "x-guidance".into(),
            json!({"whitespace_flexible": false, "item_separator": ",", "key_separator": ":"}),
        );
    }
    s.to_string()
}

fn schema_error(schema: &OutputSchema, message: &str) -> ApiError {
    let field = schema.answer.as_ref().map_or("tools", |(_, f)| f.as_str());
    let param = field.split(['.', '[']).next().unwrap_or(field);
    ApiError::param(
        param,
        format!("{field}: the schema cannot be enforced: {message}"),
    )
}

/// A compiled grammar; each sequence steps its own clone.
struct LlgSpec {
    proto: Mutex<Matcher>,
}

impl ConstraintSpec for LlgSpec {
    fn start(&self) -> Result<Box<dyn TokenConstraint>, String> {
        let proto = self
            .proto
            .lock()
            .map_err(|_| "the grammar's lock is poisoned".to_string())?;
        Ok(Box::new(LlgConstraint {
            matcher: proto.deep_clone(),
        }))
    }
}

/// One sequence's matcher.
struct LlgConstraint {
    matcher: Matcher,
}

impl TokenConstraint for LlgConstraint {
    fn allowed(&mut self) -> Result<Option<Vec<u32>>, String> {
        let mask = self
            .matcher
            .compute_mask()
            .map_err(|e| format!("the output grammar failed: {e}"))?;
        Ok(Some(mask.as_slice().to_vec()))
    }

    fn accept(&mut self, token: u32) -> Result<(), String> {
        self.matcher
            .consume_token(token)
            .map_err(|e| format!("the output grammar rejected token {token}: {e}"))
    }

    fn is_finished(&self) -> bool {
        self.matcher.is_stopped()
    }
}
