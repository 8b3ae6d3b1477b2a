//! The request body of each endpoint, with every field it accepts (the README lists them). Unknown
//! top-level fields are refused with a 400 naming them (`deny_unknown_fields`); fields that are
//! accepted but only partly supported are checked in `params.rs` and refused there, by name.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::request::{
    ChatMessage, ChatTool, Flag, Input, Integer, List, Number, PromptIn, ReasoningIn,
    ResponsesTool, Stop, StreamOptions, Text,
};

/// Declares a request struct with the sampling fields every generating endpoint shares (not
/// `#[serde(flatten)]`: that buffers every unknown field as a value tree and loses error paths).
macro_rules! request {
    ($(#[$m:meta])* pub struct $name:ident { $($(#[$fm:meta])* pub $f:ident: $t:ty,)* }) => {
        $(#[$m])*
        #[derive(Clone, Debug, Default, Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct $name {
            /// The served model's name.
            pub model: Option<Text>,
            /// 0..=2.
            pub temperature: Option<Number>,
            /// (0, 1].
            pub top_p: Option<Number>,
            /// Keep the k most likely tokens (vLLM; 0 or -1 disables).
            pub top_k: Option<Integer>,
            /// Drop tokens below `min_p` × the most likely one's probability (vLLM).
            pub min_p: Option<Number>,
            /// RNG seed.
            pub seed: Option<Integer>,
            /// SSE when true.
            pub stream: Option<Flag>,
            /// -2..=2, per token seen in the output.
            pub presence_penalty: Option<Number>,
            /// -2..=2, per occurrence in the output.
            pub frequency_penalty: Option<Number>,
            /// > 0, on tokens of the prompt and output (vLLM; 1 = off).
            pub repetition_penalty: Option<Number>,
            /// Token id (as a string) → bias in -100..=100.
            pub logit_bias: Option<BTreeMap<String, Number>>,
            /// Keep generating past the stop tokens (vLLM).
            pub ignore_eos: Option<Flag>,
            /// The stop tokens cannot end the output before this many tokens (vLLM).
            pub min_tokens: Option<Integer>,
            /// End-user id (accepted; it does not change the answer).
            pub user: Option<Text>,
            /// A caching hint (accepted; prefix caching works by content).
            pub prompt_cache_key: Option<Text>,
            /// End-user id for abuse monitoring (accepted; it does not change the answer).
            pub safety_identifier: Option<Text>,
            /// Only `auto` or `default`.
            pub service_tier: Option<Text>,
            $($(#[$fm])* pub $f: $t,)*
        }

        impl $name {
            /// The shared fields.
            pub fn common(&self) -> Common<'_> {
                Common {
                    model: self.model.as_ref(),
                    temperature: self.temperature.as_ref(),
                    top_p: self.top_p.as_ref(),
                    top_k: self.top_k.as_ref(),
                    min_p: self.min_p.as_ref(),
                    seed: self.seed.as_ref(),
                    stream: self.stream.as_ref(),
                    presence_penalty: self.presence_penalty.as_ref(),
                    frequency_penalty: self.frequency_penalty.as_ref(),
                    repetition_penalty: self.repetition_penalty.as_ref(),
                    logit_bias: self.logit_bias.as_ref(),
                    ignore_eos: self.ignore_eos.as_ref(),
                    min_tokens: self.min_tokens.as_ref(),
                    user: self.user.as_ref(),
                    service_tier: self.service_tier.as_ref(),
                }
            }
        }
    };
}

/// The shared fields of a request, by reference.
#[derive(Clone, Copy, Debug)]
pub struct Common<'a> {
    /// The served model's name.
    pub model: Option<&'a Text>,
    /// 0..=2.
    pub temperature: Option<&'a Number>,
    /// (0, 1].
    pub top_p: Option<&'a Number>,
    /// Top-k.
    pub top_k: Option<&'a Integer>,
    /// Min-p.
    pub min_p: Option<&'a Number>,
    /// RNG seed.
    pub seed: Option<&'a Integer>,
    /// SSE when true.
    pub stream: Option<&'a Flag>,
    /// Presence penalty.
    pub presence_penalty: Option<&'a Number>,
    /// Frequency penalty.
    pub frequency_penalty: Option<&'a Number>,
    /// Repetition penalty.
    pub repetition_penalty: Option<&'a Number>,
    /// Logit bias.
    pub logit_bias: Option<&'a BTreeMap<String, Number>>,
    /// Ignore the stop tokens.
    pub ignore_eos: Option<&'a Flag>,
    /// Least new tokens.
    pub min_tokens: Option<&'a Integer>,
    /// End-user id.
    pub user: Option<&'a Text>,
    /// Service tier.
    pub service_tier: Option<&'a Text>,
}

/// `response_format` (chat and completions).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResponseFormat {
    /// `text`, `json_object`, `json_schema`.
    #[serde(rename = "type")]
    pub kind: Option<Text>,
    /// The schema of `json_schema`.
    pub json_schema: Option<JsonSchemaFormat>,
}

/// `response_format.json_schema`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JsonSchemaFormat {
    /// The schema's name.
    pub name: Option<Text>,
    /// What the schema is for.
    pub description: Option<Text>,
    /// The JSON schema (raw until compiled).
    pub schema: Option<Box<RawValue>>,
    /// Enforce the schema (always enforced here).
    pub strict: Option<Flag>,
}

/// Responses `text`: `{"format": {...}, "verbosity": ...}`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TextConfig {
    /// The answer's format.
    pub format: Option<TextFormat>,
    /// Not supported (only null).
    pub verbosity: Option<Text>,
}

/// Responses `text.format`: `{"type": "json_schema", "name", "schema", "strict"}` or a plain type.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TextFormat {
    /// `text`, `json_object`, `json_schema`.
    #[serde(rename = "type")]
    pub kind: Option<Text>,
    /// The schema's name.
    pub name: Option<Text>,
    /// What the schema is for.
    pub description: Option<Text>,
    /// The JSON schema.
    pub schema: Option<Box<RawValue>>,
    /// Enforce the schema (always enforced here).
    pub strict: Option<Flag>,
}

request! {
    /// `POST /v1/chat/completions`.
    pub struct ChatRequest {
        /// The conversation.
        pub messages: Option<List<ChatMessage>>,
        /// Function tools.
        pub tools: Option<List<ChatTool>>,
        /// `auto`, `none`, `required` or a named function (small: kept as JSON).
        pub tool_choice: Option<serde_json::Value>,
        /// Several tool calls in one answer (gpt-oss makes one per turn; both values accepted).
        pub parallel_tool_calls: Option<Flag>,
        /// low, medium, high.
        pub reasoning_effort: Option<Text>,
        /// Most new tokens (older name).
        pub max_tokens: Option<Integer>,
        /// Most new tokens.
        pub max_completion_tokens: Option<Integer>,
        /// Stop strings.
        pub stop: Option<Stop>,
        /// Stream options.
        pub stream_options: Option<StreamOptions>,
        /// Choices (1..=8).
        pub n: Option<Integer>,
        /// Log-probabilities of the output tokens.
        pub logprobs: Option<Flag>,
        /// 0..=20 most likely tokens per position (needs `logprobs`).
        pub top_logprobs: Option<Integer>,
        /// `text`, `json_object` or `json_schema`.
        pub response_format: Option<ResponseFormat>,
        /// Only `["text"]`.
        pub modalities: Option<List<Text>>,
        /// Only false or absent (completions are not stored).
        pub store: Option<Flag>,
        /// Only with `store` (refused otherwise).
        pub metadata: Option<Box<RawValue>>,
        /// Refused: audio output.
        pub audio: Option<Box<RawValue>>,
        /// Refused: predicted outputs.
        pub prediction: Option<Box<RawValue>>,
        /// Refused: web search.
        pub web_search_options: Option<Box<RawValue>>,
        /// Refused: the deprecated `functions` (use `tools`).
        pub functions: Option<Box<RawValue>>,
        /// Refused: the deprecated `function_call` (use `tool_choice`).
        pub function_call: Option<Box<RawValue>>,
        /// Only null.
        pub verbosity: Option<Text>,
    }
}

request! {
    /// `POST /v1/completions`.
    pub struct CompletionRequest {
        /// The raw prompt.
        pub prompt: Option<PromptIn>,
        /// Most new tokens (default 16).
        pub max_tokens: Option<Integer>,
        /// Stop strings.
        pub stop: Option<Stop>,
        /// Stream options.
        pub stream_options: Option<StreamOptions>,
        /// Choices (1..=8).
        pub n: Option<Integer>,
        /// Log-probabilities of the output tokens and of the `logprobs` most likely (0..=20).
        pub logprobs: Option<Integer>,
        /// The prompt is returned before the completion.
        pub echo: Option<Flag>,
        /// Only 1 (or `n`).
        pub best_of: Option<Integer>,
        /// Refused: insertion is not supported.
        pub suffix: Option<Text>,
        /// `text`, `json_object` or `json_schema` (vLLM).
        pub response_format: Option<ResponseFormat>,
    }
}

request! {
    /// `POST /v1/responses`.
    pub struct ResponsesRequest {
        /// The conversation.
        pub input: Option<Input>,
        /// Developer instructions.
        pub instructions: Option<Text>,
        /// Reasoning effort.
        pub reasoning: Option<ReasoningIn>,
        /// Function tools.
        pub tools: Option<List<ResponsesTool>>,
        /// Tool choice (small: kept as JSON).
        pub tool_choice: Option<serde_json::Value>,
        /// Several tool calls in one answer (accepted; gpt-oss makes one per turn).
        pub parallel_tool_calls: Option<Flag>,
        /// Most new tokens.
        pub max_output_tokens: Option<Integer>,
        /// The answer's format (`{"format": {"type": "json_schema", ...}}`).
        pub text: Option<TextConfig>,
        /// Keep the response for `previous_response_id` and `GET /v1/responses/{id}` (default true).
        pub store: Option<Flag>,
        /// Continue from a stored response.
        pub previous_response_id: Option<Text>,
        /// Returned with the response (up to 16 string pairs).
        pub metadata: Option<BTreeMap<String, Text>>,
        /// 0..=20 most likely tokens per output position.
        pub top_logprobs: Option<Integer>,
        /// Extra output: only `message.output_text.logprobs` and `reasoning.encrypted_content`
        /// (the latter yields nothing: reasoning is returned as text).
        pub include: Option<List<Text>>,
        /// Only `disabled`.
        pub truncation: Option<Text>,
        /// Only false.
        pub background: Option<Flag>,
        /// Refused: stored prompt templates.
        pub prompt: Option<Box<RawValue>>,
        /// Refused: server-side conversations (use `previous_response_id`).
        pub conversation: Option<Box<RawValue>>,
        /// Refused: a cap on tool calls.
        pub max_tool_calls: Option<Integer>,
        /// Stream options.
        pub stream_options: Option<StreamOptions>,
    }
}
