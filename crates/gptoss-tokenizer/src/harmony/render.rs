//! Rendering messages and conversations to token ids exactly as openai-harmony does (spec §4.2, §4.3):
//! each text piece is encoded on its own, formatting tokens are inserted by id.

use super::schema::tools_section;
use super::{
    AnalysisHistory, Content, DeveloperContent, Effort, Harmony, Message, Role, SystemContent,
};
use crate::error::{Error, Result};

impl Harmony {
    /// Renders a conversation (no generation prompt).
    pub fn render_conversation(
        &self,
        messages: &[Message],
        history: AnalysisHistory,
    ) -> Result<Vec<u32>> {
        self.render_conversation_capped(messages, history, usize::MAX)
    }

    /// Like [`Harmony::render_conversation`], failing with [`Error::TooManyTokens`] once the prompt
    /// would pass `cap` tokens (the work is bounded by the cap, whatever the messages hold).
    pub fn render_conversation_capped(
        &self,
        messages: &[Message],
        history: AnalysisHistory,
        cap: usize,
    ) -> Result<Vec<u32>> {
        let has_functions = messages.iter().flat_map(|m| &m.content).any(|c| match c {
            Content::Developer(d) => d
                .tools
                .as_ref()
                .and_then(|t| t.get("functions"))
                .is_some_and(|ns| !ns.tools.is_empty()),
            _ => false,
        });
        let last_assistant_final = messages
            .iter()
            .rev()
            .find(|m| m.role == Role::Assistant)
            .is_some_and(|m| m.channel.as_deref() == Some("final"));
        let drop = history == AnalysisHistory::DropFinished && last_assistant_final;
        let first_final = messages
            .iter()
            .position(|m| m.channel.as_deref() == Some("final"));
        let mut out = Vec::new();
        for (i, msg) in messages.iter().enumerate() {
            let dropped = drop
                && first_final.is_some_and(|f| i < f)
                && msg.channel.as_deref() == Some("analysis");
            if !dropped {
                let functions = FunctionTools::from_flag(has_functions);
                self.render_message_into(msg, functions, &mut out, cap)?;
            }
        }
        Ok(out)
    }

    /// Renders a conversation followed by `<|start|>{next_role}`: the prompt to sample from.
    pub fn render_for_completion(
        &self,
        messages: &[Message],
        next: Role,
        history: AnalysisHistory,
    ) -> Result<Vec<u32>> {
        self.render_for_completion_capped(messages, next, history, usize::MAX)
    }

    /// Like [`Harmony::render_for_completion`], failing with [`Error::TooManyTokens`] once the prompt
    /// would pass `cap` tokens.
    pub fn render_for_completion_capped(
        &self,
        messages: &[Message],
        next: Role,
        history: AnalysisHistory,
        cap: usize,
    ) -> Result<Vec<u32>> {
        let mut out = self.render_conversation_capped(messages, history, cap)?;
        out.push(self.ids().start);
        self.tokenizer()
            .encode_capped(next.as_str(), &mut out, cap)?;
        if out.len() > cap {
            return Err(Error::TooManyTokens { cap });
        }
        Ok(out)
    }

    /// Renders a conversation for training: a trailing assistant `final` message ends in `<|return|>`.
    pub fn render_for_training(
        &self,
        messages: &[Message],
        history: AnalysisHistory,
    ) -> Result<Vec<u32>> {
        let mut out = self.render_conversation(messages, history)?;
        let ends_final = messages
            .last()
            .is_some_and(|m| m.role == Role::Assistant && m.channel.as_deref() == Some("final"));
        if let (true, Some(last)) = (ends_final, out.last_mut()) {
            *last = self.ids().ret;
        }
        Ok(out)
    }

    /// Renders one message on its own (the system message then omits the functions line).
    pub fn render_message(&self, message: &Message) -> Result<Vec<u32>> {
        let mut out = Vec::new();
        self.render_message_into(message, FunctionTools::Absent, &mut out, usize::MAX)?;
        Ok(out)
    }

    /// The prompt for a single-turn chat: default system message with `reasoning`, the optional
    /// `system` text as developer instructions, the user message, then `<|start|>assistant`.
    pub fn render_chat_prompt(
        &self,
        system: Option<&str>,
        user: &str,
        reasoning: Effort,
    ) -> Result<Vec<u32>> {
        let sys = SystemContent {
            reasoning_effort: Some(reasoning),
            ..SystemContent::default()
        };
        let mut messages = vec![Message::with_content(Role::System, Content::System(sys))];
        if let Some(instructions) = system {
            let dev = DeveloperContent {
                instructions: Some(instructions.to_string()),
                tools: None,
            };
            messages.push(Message::with_content(
                Role::Developer,
                Content::Developer(dev),
            ));
        }
        messages.push(Message::text(Role::User, user));
        self.render_for_completion(&messages, Role::Assistant, AnalysisHistory::DropFinished)
    }

    fn render_message_into(
        &self,
        msg: &Message,
        functions: FunctionTools,
        out: &mut Vec<u32>,
        cap: usize,
    ) -> Result<()> {
        let tok = self.tokenizer();
        let ids = self.ids();
        let encode = |text: &str, out: &mut Vec<u32>| tok.encode_capped(text, out, cap);
        out.push(ids.start);
        match (msg.role, &msg.name) {
            (Role::Tool, Some(name)) => encode(name, out)?,
            (Role::Tool, None) => {
                return Err(Error::Render(
                    "a tool message needs the tool's name as author name".into(),
                ))
            }
            (role, name) => {
                encode(role.as_str(), out)?;
                if let Some(name) = name {
                    encode(&format!(":{name}"), out)?;
                }
            }
        }
        if let Some(r) = msg.recipient.as_deref().filter(|r| *r != "all") {
            encode(&format!(" to={r}"), out)?;
        }
        if let Some(channel) = &msg.channel {
            out.push(ids.channel);
            encode(channel, out)?;
        }
        if let Some(ct) = &msg.content_type {
            match ct.strip_prefix("<|constrain|>") {
                Some(rest) => {
                    encode(" ", out)?;
                    out.push(ids.constrain);
                    if !rest.is_empty() {
                        encode(rest, out)?;
                    }
                }
                None => encode(&format!(" {ct}"), out)?,
            }
        }
        out.push(ids.message);
        for content in &msg.content {
            self.render_content(msg.role, content, functions, (out, cap))?;
        }
        let to_tool = msg.role == Role::Assistant && msg.recipient.is_some();
        out.push(if to_tool { ids.call } else { ids.end });
        Ok(())
    }

    fn render_content(
        &self,
        role: Role,
        content: &Content,
        functions: FunctionTools,
        (out, cap): (&mut Vec<u32>, usize),
    ) -> Result<()> {
        let text = match content {
            Content::Text { text } => text.clone(),
            Content::System(sys) if role == Role::System => system_text(sys, functions),
            Content::Developer(dev) if role == Role::Developer => developer_text(dev),
            Content::System(_) | Content::Developer(_) => {
                return Err(Error::Render(format!(
                    "system/developer content in a {} message",
                    role.as_str()
                )));
            }
        };
        self.tokenizer().encode_capped(&text, out, cap)
    }
}

/// Whether the conversation defines function tools (adds a line to the system message).
#[derive(Clone, Copy, PartialEq, Eq)]
enum FunctionTools {
    Present,
    Absent,
}

impl FunctionTools {
    fn from_flag(present: bool) -> Self {
        if present {
            FunctionTools::Present
        } else {
            FunctionTools::Absent
        }
    }
}

/// The system message body: identity/cutoff/date, reasoning, built-in tools, channels.
fn system_text(sys: &SystemContent, functions: FunctionTools) -> String {
    let mut sections = Vec::new();
    let top: Vec<String> = [
        sys.model_identity.clone(),
        sys.knowledge_cutoff
            .as_ref()
            .map(|k| format!("Knowledge cutoff: {k}")),
        sys.conversation_start_date
            .as_ref()
            .map(|d| format!("Current date: {d}")),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !top.is_empty() {
        sections.push(top.join("\n"));
    }
    if let Some(effort) = sys.reasoning_effort {
        sections.push(format!("Reasoning: {}", effort.as_str()));
    }
    if let Some(tools) = sys.tools.as_ref().filter(|t| !t.is_empty()) {
        sections.push(tools_section(tools));
    }
    if let Some(cc) = sys
        .channel_config
        .as_ref()
        .filter(|c| !c.valid_channels.is_empty())
    {
        let mut header = format!("# Valid channels: {}.", cc.valid_channels.join(", "));
        if cc.channel_required {
            header.push_str(" Channel must be included for every message.");
        }
        if functions == FunctionTools::Present {
            header
                .push_str("\nCalls to these tools must go to the commentary channel: 'functions'.");
        }
        sections.push(header);
    }
    sections.join("\n\n")
}

/// The developer message body: `# Instructions` and the tool namespaces.
fn developer_text(dev: &DeveloperContent) -> String {
    let mut sections = Vec::new();
    if let Some(instructions) = &dev.instructions {
        sections.push("# Instructions".to_string());
        sections.push(instructions.clone());
    }
    if let Some(tools) = dev.tools.as_ref().filter(|t| !t.is_empty()) {
        sections.push(tools_section(tools));
    }
    sections.join("\n\n")
}
