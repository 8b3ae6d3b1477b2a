//! Harmony message headers: the text between `<|start|>` and `<|message|>` split into role, author
//! name, recipient, channel and content type, as openai-harmony's parse_header_from_string does.

use super::{Content, Message, Role};
use crate::error::{Error, Result};

/// A parsed message header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedHeader {
    /// Author role.
    pub role: Role,
    /// Author name (a tool's name).
    pub name: Option<String>,
    /// Recipient without `to=` (e.g. `functions.get_weather`).
    pub recipient: Option<String>,
    /// Channel.
    pub channel: Option<String>,
    /// Content type (e.g. `<|constrain|>json` or `json`).
    pub content_type: Option<String>,
}

impl ParsedHeader {
    pub(crate) fn kind(&self) -> DeltaKind {
        match (self.role, &self.recipient, self.channel.as_deref()) {
            (Role::Assistant, Some(_), _) => DeltaKind::ToolArgs,
            (_, _, Some("analysis")) => DeltaKind::Reasoning,
            (_, _, Some("commentary")) => DeltaKind::Preamble,
            _ => DeltaKind::Final,
        }
    }

    pub(crate) fn into_message(self, text: String) -> Message {
        Message {
            role: self.role,
            name: self.name,
            content: vec![Content::Text { text }],
            channel: self.channel,
            recipient: self.recipient,
            content_type: self.content_type,
        }
    }
}

/// How a message's content is reported, from its header.
#[derive(Clone, Copy)]
pub(crate) enum DeltaKind {
    Reasoning,
    Final,
    Preamble,
    ToolArgs,
}

/// Whether recipient and content type are read from the header words.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeaderMode {
    Full,
    ChannelOnly,
}

const CHANNEL: &str = "<|channel|>";
const CONSTRAIN: &str = "<|constrain|>";

/// Parses header text (spec §4.6 step 1); returns the header and any words left over.
pub(crate) fn parse_header(
    text: &str,
    role: Option<Role>,
    mode: HeaderMode,
) -> Result<(ParsedHeader, Option<String>)> {
    let mut rest = text.to_string();
    let mut channel = None;
    if let Some(at) = rest.find(CHANNEL) {
        let after = rest.get(at + CHANNEL.len()..).unwrap_or_default();
        let len = after
            .find(|c: char| c.is_whitespace() || c == '<')
            .unwrap_or(after.len());
        let value = after.get(..len).unwrap_or_default();
        if value.is_empty() {
            return Err(Error::Parse(format!(
                "header {text:?}: <|channel|> without a channel name"
            )));
        }
        channel = Some(value.to_string());
        rest = format!(
            "{}{}",
            rest.get(..at).unwrap_or_default(),
            after.get(len..).unwrap_or_default()
        );
    }
    let mut rest = rest.trim().to_string();
    if rest.contains(CONSTRAIN) {
        rest = rest
            .replace(CONSTRAIN, &format!(" {CONSTRAIN}"))
            .trim()
            .to_string();
    }
    let mut parts: Vec<&str> = rest.split_ascii_whitespace().collect();
    let (role, name) = match role {
        Some(r) => (r, None),
        None => header_role(&mut parts, text)?,
    };
    if parts.first() == Some(&role.as_str()) {
        parts.remove(0);
    }
    let (mut recipient, mut content_type) = (None, None);
    if mode == HeaderMode::Full {
        let count = parts.len();
        if let Some(last) = parts.pop() {
            if let Some(r) = last.strip_prefix("to=") {
                recipient = Some(r.to_string());
            } else if count == 1 && !last.starts_with(CONSTRAIN) {
                recipient = Some(last.to_string());
            } else {
                content_type = Some(last.to_string());
                recipient = parts
                    .pop()
                    .map(|r| r.strip_prefix("to=").unwrap_or(r).to_string());
            }
        }
    }
    let leftover = if parts.is_empty() {
        None
    } else {
        Some(parts.join(" "))
    };
    Ok((
        ParsedHeader {
            role,
            name,
            recipient,
            channel,
            content_type,
        },
        leftover,
    ))
}

/// The role word opening a header; an unknown word followed by more is a tool's name.
fn header_role(parts: &mut Vec<&str>, text: &str) -> Result<(Role, Option<String>)> {
    let first = *parts
        .first()
        .ok_or_else(|| Error::Parse(format!("header {text:?} has no role")))?;
    match Role::from_name(first) {
        Some(Role::Tool) => Ok((Role::Tool, Some(first.to_string()))),
        Some(r) => Ok((r, None)),
        None if parts.len() > 1 || first.starts_with("to=") => {
            parts.remove(0);
            Ok((Role::Tool, Some(first.to_string())))
        }
        None => Err(Error::Parse(format!(
            "header {text:?}: unknown role {first:?}"
        ))),
    }
}
