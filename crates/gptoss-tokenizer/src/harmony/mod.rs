//! The Harmony chat format of gpt-oss (spec §4): message types (serde-compatible with
//! openai-harmony's JSON), the [`Harmony`] renderer and the streaming [`StreamParser`].

mod header;
mod parser;
mod render;
mod schema;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::tokenizer::Tokenizer;

pub use parser::{ParseEvent, ParsedHeader, ParserStart, StreamParser, Strictness, Terminator};

/// The author role of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The system header (identity, reasoning effort, channels).
    System,
    /// Developer instructions and function tools (what chat APIs call the system prompt).
    Developer,
    /// The user.
    User,
    /// The model.
    Assistant,
    /// A tool's output; the author name is the tool (`functions.get_weather`).
    Tool,
}

impl Role {
    /// The role as rendered in a header.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::Developer => "developer",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }

    /// Parses a header role word.
    pub fn from_name(name: &str) -> Option<Self> {
        [
            Role::System,
            Role::Developer,
            Role::User,
            Role::Assistant,
            Role::Tool,
        ]
        .into_iter()
        .find(|r| r.as_str() == name)
    }
}

/// Reasoning effort, rendered as `Reasoning: low|medium|high` in the system message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Effort {
    /// `low`
    Low,
    /// `medium` (the default)
    #[default]
    Medium,
    /// `high`
    High,
}

impl Effort {
    /// The word in the `Reasoning:` line.
    pub fn as_str(self) -> &'static str {
        match self {
            Effort::Low => "low",
            Effort::Medium => "medium",
            Effort::High => "high",
        }
    }
}

/// Which channels the system message declares.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChannelConfig {
    /// E.g. `["analysis", "commentary", "final"]`.
    pub valid_channels: Vec<String>,
    /// Adds "Channel must be included for every message."
    pub channel_required: bool,
}

/// A function tool: name, description and optional JSON-schema parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolDescription {
    /// Function name (called as `functions.{name}`).
    pub name: String,
    /// Free text, rendered as `//` comment lines.
    pub description: String,
    /// JSON schema of the argument object, rendered as a TypeScript type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<serde_json::Value>,
}

/// A namespace of tools (`functions` for developer-defined function tools).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolNamespace {
    /// Namespace name.
    pub name: String,
    /// Optional description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The tools.
    pub tools: Vec<ToolDescription>,
}

/// Content of the system message. [`Default`] gives openai-harmony's defaults (ChatGPT identity,
/// knowledge cutoff 2024-06, medium reasoning, required channels analysis/commentary/final).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SystemContent {
    /// First line, e.g. "You are ChatGPT, a large language model trained by OpenAI."
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_identity: Option<String>,
    /// `Reasoning:` line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_effort: Option<Effort>,
    /// `Current date:` line (e.g. "2025-06-28").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation_start_date: Option<String>,
    /// `Knowledge cutoff:` line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub knowledge_cutoff: Option<String>,
    /// `# Valid channels:` line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel_config: Option<ChannelConfig>,
    /// Built-in tool namespaces (browser, python), rendered in the system message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<BTreeMap<String, ToolNamespace>>,
}

impl Default for SystemContent {
    fn default() -> Self {
        Self {
            model_identity: Some(
                "You are ChatGPT, a large language model trained by OpenAI.".to_string(),
            ),
            reasoning_effort: Some(Effort::Medium),
            conversation_start_date: None,
            knowledge_cutoff: Some("2024-06".to_string()),
            channel_config: Some(ChannelConfig {
                valid_channels: ["analysis", "commentary", "final"]
                    .map(String::from)
                    .to_vec(),
                channel_required: true,
            }),
            tools: None,
        }
    }
}

/// Content of the developer message: instructions (`# Instructions`) and function tools.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DeveloperContent {
    /// The user-facing "system prompt".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instructions: Option<String>,
    /// Tool namespaces by name (`functions`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<BTreeMap<String, ToolNamespace>>,
}

impl DeveloperContent {
    /// Instructions plus function tools in the `functions` namespace.
    pub fn with_functions(instructions: Option<String>, tools: Vec<ToolDescription>) -> Self {
        let ns = ToolNamespace {
            name: "functions".to_string(),
            description: None,
            tools,
        };
        Self {
            instructions,
            tools: Some(BTreeMap::from([("functions".to_string(), ns)])),
        }
    }
}

/// One piece of message content.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Content {
    /// Plain text.
    #[serde(rename = "text")]
    Text {
        /// The text.
        text: String,
    },
    /// The system message's structured content.
    #[serde(rename = "system_content")]
    System(SystemContent),
    /// The developer message's structured content.
    #[serde(rename = "developer_content")]
    Developer(DeveloperContent),
}

/// A Harmony message (openai-harmony's JSON form: `role`, `name`, `content`, `channel`, `recipient`,
/// `content_type`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Author role.
    pub role: Role,
    /// Author name (the tool name for [`Role::Tool`]).
    #[serde(default)]
    pub name: Option<String>,
    /// Content pieces, rendered in order.
    pub content: Vec<Content>,
    /// `analysis`, `commentary` or `final`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// `functions.NAME` for a tool call, `assistant` for a tool result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient: Option<String>,
    /// E.g. `<|constrain|>json` or `json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
}

impl Message {
    /// A message with one text content.
    pub fn text(role: Role, text: impl Into<String>) -> Self {
        Self::with_content(role, Content::Text { text: text.into() })
    }

    /// A message with one content piece.
    pub fn with_content(role: Role, content: Content) -> Self {
        Self {
            role,
            name: None,
            content: vec![content],
            channel: None,
            recipient: None,
            content_type: None,
        }
    }

    /// Sets the channel.
    pub fn on_channel(mut self, channel: impl Into<String>) -> Self {
        self.channel = Some(channel.into());
        self
    }

    /// Sets the recipient.
    pub fn to(mut self, recipient: impl Into<String>) -> Self {
        self.recipient = Some(recipient.into());
        self
    }

    /// Sets the content type.
    pub fn of_type(mut self, content_type: impl Into<String>) -> Self {
        self.content_type = Some(content_type.into());
        self
    }

    /// A tool result: author `tool` named `name`, to `assistant` on the commentary channel.
    pub fn tool_result(name: impl Into<String>, output: impl Into<String>) -> Self {
        let mut m = Self::text(Role::Tool, output)
            .to("assistant")
            .on_channel("commentary");
        m.name = Some(name.into());
        m
    }

    /// The concatenated text contents.
    pub fn text_content(&self) -> String {
        let texts = self.content.iter().filter_map(|c| match c {
            Content::Text { text } => Some(text.as_str()),
            _ => None,
        });
        texts.collect()
    }
}

/// Whether analysis messages of earlier, finished turns are dropped when rendering (openai-harmony's
/// `auto_drop_analysis`, on by default; spec §4.3).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AnalysisHistory {
    /// Drop analysis messages before the first `final` message when the last assistant message is final.
    #[default]
    DropFinished,
    /// Render every message.
    KeepAll,
}

/// Ids of the Harmony formatting tokens, looked up by name in the tokenizer.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FormatIds {
    pub(crate) start: u32,
    pub(crate) end: u32,
    pub(crate) message: u32,
    pub(crate) channel: u32,
    pub(crate) constrain: u32,
    pub(crate) ret: u32,
    pub(crate) call: u32,
    pub(crate) endoftext: Option<u32>,
}

/// Renders conversations to token ids and creates parsers; cheap to clone (shares the tokenizer).
#[derive(Clone, Debug)]
pub struct Harmony {
    tokenizer: Arc<Tokenizer>,
    ids: FormatIds,
}

impl Harmony {
    /// Binds the Harmony format to a tokenizer; errors if a formatting token is missing.
    pub fn new(tokenizer: Arc<Tokenizer>) -> Result<Self> {
        let t = &tokenizer;
        let ids = FormatIds {
            start: t.special_id("<|start|>")?,
            end: t.special_id("<|end|>")?,
            message: t.special_id("<|message|>")?,
            channel: t.special_id("<|channel|>")?,
            constrain: t.special_id("<|constrain|>")?,
            ret: t.special_id("<|return|>")?,
            call: t.special_id("<|call|>")?,
            endoftext: t.find_special("<|endoftext|>"),
        };
        Ok(Self { tokenizer, ids })
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Ids that end generation (spec §4.4): `<|return|>`, `<|call|>` and `<|endoftext|>` when present.
    /// `<|end|>` is not one: the model continues with the next message.
    pub fn stop_tokens(&self) -> Vec<u32> {
        [Some(self.ids.ret), Some(self.ids.call), self.ids.endoftext]
            .into_iter()
            .flatten()
            .collect()
    }

    pub(crate) fn ids(&self) -> &FormatIds {
        &self.ids
    }
}
