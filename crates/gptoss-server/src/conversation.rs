//! The API-neutral conversation both chat and responses requests become, and its Harmony rendering
//! (spec §4.3): system/developer text → developer instructions, function tools → the `functions`
//! namespace, earlier reasoning → `analysis`, tool calls → `commentary` to `functions.NAME`, tool
//! results → `functions.NAME to=assistant`. `tool_choice` "required" or a named function is enforced
//! by the output grammar (`structured.rs`), which lets the model reason before the call.

use gptoss_tokenizer::harmony::{
    AnalysisHistory, Content, DeveloperContent, Effort, Harmony, Message, Role, SystemContent,
    ToolDescription,
};

use crate::error::{ApiError, ApiResult};

/// One turn of a conversation.
#[derive(Clone, Debug, PartialEq)]
pub enum Turn {
    /// A user message.
    User(String),
    /// Earlier assistant chain of thought.
    Reasoning(String),
    /// An earlier assistant answer.
    Answer(String),
    /// Assistant text that accompanied tool calls (Harmony's preamble).
    Preamble(String),
    /// An earlier tool call.
    ToolCall {
        /// Call id (to match results).
        id: String,
        /// Function name.
        name: String,
        /// JSON arguments.
        arguments: String,
    },
    /// A tool's output.
    ToolResult {
        /// Function name.
        name: String,
        /// The output text.
        output: String,
    },
}

/// Which tool calls the model may make.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum ToolChoice {
    /// The model decides.
    #[default]
    Auto,
    /// No tool calls: tools are left out of the prompt.
    None,
    /// The answer must be a tool call (enforced by the output grammar).
    Required,
    /// The answer must call this function (enforced by the output grammar).
    Named(String),
}

impl ToolChoice {
    /// Parses `"auto"`, `"none"`, `"required"`.
    pub fn from_mode(mode: &str, param: &str) -> ApiResult<Self> {
        match mode {
            "auto" => Ok(ToolChoice::Auto),
            "none" => Ok(ToolChoice::None),
            "required" => Ok(ToolChoice::Required),
            other => Err(ApiError::param(
                param,
                format!("{param}: expected \"auto\", \"none\", \"required\" or a named function, got {other:?}"),
            )),
        }
    }
}

/// A request's conversation, in the order the messages came.
#[derive(Clone, Debug, Default)]
pub struct Conversation {
    /// Developer instructions (the API's system prompt).
    pub instructions: Option<String>,
    /// Function tools.
    pub tools: Vec<ToolDescription>,
    /// Reasoning effort.
    pub effort: Effort,
    /// The turns.
    pub turns: Vec<Turn>,
    /// Tool choice.
    pub tool_choice: ToolChoice,
}

/// A rendered prompt, ending in `<|start|>assistant`.
#[derive(Clone, Debug)]
pub struct Prompt {
    /// What the model reads.
    pub tokens: Vec<u32>,
}

/// Parses `reasoning_effort` / `reasoning.effort`.
pub fn parse_effort(value: Option<&str>, param: &str) -> ApiResult<Effort> {
    match value {
        None | Some("medium") => Ok(Effort::Medium),
        Some("low") | Some("minimal") => Ok(Effort::Low),
        Some("high") => Ok(Effort::High),
        Some(other) => Err(ApiError::param(
            param,
            format!("{param}: expected \"low\", \"medium\" or \"high\", got {other:?}"),
        )),
    }
}

impl Conversation {
    /// Harmony messages (system, developer, then the turns).
    pub fn messages(&self) -> Vec<Message> {
        self.clone().into_messages()
    }

    /// Harmony messages, moving the texts and schemas rather than copying them (a request's turns
    /// and tools can be megabytes).
    fn into_messages(self) -> Vec<Message> {
        let system = SystemContent {
            reasoning_effort: Some(self.effort),
            ..SystemContent::default()
        };
        let mut out = vec![Message::with_content(Role::System, Content::System(system))];
        let tools = match self.tool_choice {
            ToolChoice::None => Vec::new(),
            _ => self.tools,
        };
        let developer = match (tools.is_empty(), self.instructions) {
            (true, None) => None,
            (true, Some(i)) => Some(DeveloperContent {
                instructions: Some(i),
                tools: None,
            }),
            (false, i) => Some(DeveloperContent::with_functions(i, tools)),
        };
        if let Some(dev) = developer {
            out.push(Message::with_content(
                Role::Developer,
                Content::Developer(dev),
            ));
        }
        out.extend(self.turns.into_iter().map(turn_message));
        out
    }

    /// Renders the prompt (the tool choice is checked against the tools). Rendering stops as soon as the
    /// prompt passes `cap` tokens (the context less one), so its cost is bounded by the cap whatever
    /// the messages and tool schemas hold.
    pub fn render(self, harmony: &Harmony, cap: usize) -> ApiResult<Prompt> {
        if let ToolChoice::Named(name) = &self.tool_choice {
            if !self.tools.iter().any(|t| &t.name == name) {
                return Err(ApiError::param(
                    "tool_choice",
                    format!("tool_choice names function {name:?}, which is not in tools"),
                ));
            }
        }
        if self.tool_choice == ToolChoice::Required && self.tools.is_empty() {
            return Err(ApiError::param(
                "tool_choice",
                "tool_choice is \"required\" but no tools were given",
            ));
        }
        let tokens = harmony
            .render_for_completion_capped(
                &self.into_messages(),
                Role::Assistant,
                AnalysisHistory::DropFinished,
                cap,
            )
            .map_err(|e| match e {
                gptoss_tokenizer::Error::TooManyTokens { cap } => {
                    ApiError::context_exceeded("messages", format!("more than {cap}"), cap + 1)
                }
                e => ApiError::invalid(format!("cannot render the conversation: {e}")),
            })?;
        Ok(Prompt { tokens })
    }
}

fn turn_message(turn: Turn) -> Message {
    match turn {
        Turn::User(text) => Message::text(Role::User, text),
        Turn::Reasoning(text) => Message::text(Role::Assistant, text).on_channel("analysis"),
        Turn::Answer(text) => Message::text(Role::Assistant, text).on_channel("final"),
        Turn::Preamble(text) => Message::text(Role::Assistant, text).on_channel("commentary"),
        Turn::ToolCall {
            name, arguments, ..
        } => Message::text(Role::Assistant, arguments)
            .on_channel("commentary")
            .to(format!("functions.{name}"))
            .of_type("<|constrain|>json"),
        Turn::ToolResult { name, output } => {
            Message::tool_result(format!("functions.{name}"), output)
        }
    }
}

/// Finds the function name of the call `id` among earlier turns.
pub fn call_name(turns: &[Turn], id: &str) -> Option<String> {
    turns.iter().rev().find_map(|t| match t {
        Turn::ToolCall { id: i, name, .. } if i == id => Some(name.clone()),
        _ => None,
    })
}
