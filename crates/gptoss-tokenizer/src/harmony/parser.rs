//! [`StreamParser`]: Harmony completion tokens in, typed events out (spec §4.6). Follows
//! openai-harmony's StreamableParser: header text up to `<|message|>`, content up to a terminator.

use super::{Content, Harmony, Message, Role};
use crate::error::{Error, Result};
use crate::stream::StreamDecoder;

/// Where the token stream starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParserStart {
    /// Inside a header whose role was already rendered (the prompt ended in `<|start|>assistant`).
    Header(Role),
    /// Before a `<|start|>` token.
    ExpectStart,
}

/// How malformed output is handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strictness {
    /// Any deviation from the grammar is an error.
    Strict,
    /// Tokens outside a message are skipped, extra header words become content, a terminator or the end
    /// of the stream inside the first header yields a message whose text is the header remainder.
    Lenient,
}

/// What ended a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Terminator {
    /// `<|end|>`: the model goes on with another message.
    End,
    /// `<|return|>`: final answer done; generation stops.
    Return,
    /// `<|call|>`: tool call done; generation stops.
    Call,
    /// `<|endoftext|>`: generation stops.
    EndOfText,
    /// The stream ended ([`StreamParser::finish`]) without a terminator.
    Eos,
}

impl Terminator {
    /// True for the terminators after which the model samples nothing more.
    pub fn stops_generation(self) -> bool {
        !matches!(self, Terminator::End)
    }
}

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
    fn kind(&self) -> DeltaKind {
        match (self.role, &self.recipient, self.channel.as_deref()) {
            (Role::Assistant, Some(_), _) => DeltaKind::ToolArgs,
            (_, _, Some("analysis")) => DeltaKind::Reasoning,
            (_, _, Some("commentary")) => DeltaKind::Preamble,
            _ => DeltaKind::Final,
        }
    }

    fn into_message(self, text: String) -> Message {
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

/// One thing the parser learned from a token.
#[derive(Clone, Debug, PartialEq)]
pub enum ParseEvent {
    /// Text on the `analysis` channel (chain of thought).
    Reasoning(String),
    /// User-facing answer text (`final` channel, or no/unknown channel).
    Final(String),
    /// `commentary` text without a recipient (a preamble shown to the user).
    Preamble(String),
    /// An assistant message addressed to a tool begins; its content is the call's arguments.
    ToolCallStart {
        /// E.g. `functions.get_weather`.
        recipient: String,
        /// E.g. `<|constrain|>json`.
        content_type: Option<String>,
    },
    /// Argument text of the current tool call.
    ToolCallArgs(String),
    /// A message is complete.
    MessageEnd {
        /// The whole message.
        message: Message,
        /// What ended it.
        terminator: Terminator,
    },
}

#[derive(Clone, Copy)]
enum DeltaKind {
    Reasoning,
    Final,
    Preamble,
    ToolArgs,
}

impl DeltaKind {
    fn event(self, text: String) -> ParseEvent {
        match self {
            DeltaKind::Reasoning => ParseEvent::Reasoning(text),
            DeltaKind::Final => ParseEvent::Final(text),
            DeltaKind::Preamble => ParseEvent::Preamble(text),
            DeltaKind::ToolArgs => ParseEvent::ToolCallArgs(text),
        }
    }
}

enum State {
    ExpectStart,
    Header(Vec<u32>),
    Content {
        header: ParsedHeader,
        text: String,
        decoder: StreamDecoder,
    },
}

/// Incremental Harmony parser: feed sampled ids with [`StreamParser::push`], then [`StreamParser::finish`].
pub struct StreamParser {
    harmony: Harmony,
    strictness: Strictness,
    next_role: Option<Role>,
    state: State,
    messages: Vec<Message>,
    last_terminator: Option<Terminator>,
}

impl StreamParser {
    /// A parser starting at `start`.
    pub fn new(harmony: Harmony, start: ParserStart, strictness: Strictness) -> Self {
        let (state, next_role) = match start {
            ParserStart::Header(role) => (State::Header(Vec::new()), Some(role)),
            ParserStart::ExpectStart => (State::ExpectStart, None),
        };
        Self {
            harmony,
            strictness,
            next_role,
            state,
            messages: Vec::new(),
            last_terminator: None,
        }
    }

    /// Completed messages so far.
    pub fn messages(&self) -> &[Message] {
        &self.messages
    }

    /// Consumes the parser, returning the completed messages.
    pub fn into_messages(self) -> Vec<Message> {
        self.messages
    }

    /// The terminator of the last completed message.
    pub fn last_terminator(&self) -> Option<Terminator> {
        self.last_terminator
    }

    /// The header of the message being streamed, once its `<|message|>` has arrived.
    pub fn current_header(&self) -> Option<&ParsedHeader> {
        match &self.state {
            State::Content { header, .. } => Some(header),
            _ => None,
        }
    }

    fn terminator(&self, id: u32) -> Option<Terminator> {
        let ids = self.harmony.ids();
        match id {
            _ if id == ids.end => Some(Terminator::End),
            _ if id == ids.ret => Some(Terminator::Return),
            _ if id == ids.call => Some(Terminator::Call),
            _ if Some(id) == ids.endoftext => Some(Terminator::EndOfText),
            _ => None,
        }
    }

    /// Feeds one token; returns the events it produced.
    pub fn push(&mut self, id: u32) -> Result<Vec<ParseEvent>> {
        let mut events = Vec::new();
        let terminator = self.terminator(id);
        let strict = self.strictness == Strictness::Strict;
        match std::mem::replace(&mut self.state, State::ExpectStart) {
            State::ExpectStart if id == self.harmony.ids().start => {
                self.state = State::Header(Vec::new())
            }
            State::ExpectStart if strict => {
                return Err(Error::Parse(format!(
                    "unexpected token {id} while expecting <|start|>"
                )));
            }
            State::ExpectStart => {}
            State::Header(tokens) if id == self.harmony.ids().message => {
                self.open_content(&tokens, &mut events)?
            }
            State::Header(tokens) => match terminator {
                Some(_) if strict => {
                    return Err(Error::Parse(format!(
                        "terminator {id} inside a message header"
                    )))
                }
                Some(t) => self.close_header_early(&tokens, t, &mut events)?,
                None => self.state = State::Header([tokens, vec![id]].concat()),
            },
            State::Content {
                header,
                mut text,
                mut decoder,
            } => match terminator {
                Some(t) => {
                    text.push_str(&decoder.finish());
                    self.end_message(header.into_message(text), t, &mut events);
                }
                None => {
                    let delta = match decoder.push(self.harmony.tokenizer(), id) {
                        Ok(d) => d,
                        Err(e) if strict => return Err(e),
                        Err(_) => String::new(),
                    };
                    if !delta.is_empty() {
                        text.push_str(&delta);
                        events.push(header.kind().event(delta));
                    }
                    self.state = State::Content {
                        header,
                        text,
                        decoder,
                    };
                }
            },
        }
        Ok(events)
    }

    /// Signals the end of the stream: completes a message in progress.
    pub fn finish(&mut self) -> Result<Vec<ParseEvent>> {
        let mut events = Vec::new();
        match std::mem::replace(&mut self.state, State::ExpectStart) {
            State::ExpectStart => {}
            State::Header(_) if self.strictness == Strictness::Strict => {
                return Err(Error::Parse("end of stream inside a message header".into()));
            }
            State::Header(tokens) => {
                self.close_header_early(&tokens, Terminator::Eos, &mut events)?
            }
            State::Content {
                header,
                mut text,
                mut decoder,
            } => {
                text.push_str(&decoder.finish());
                self.end_message(header.into_message(text), Terminator::Eos, &mut events);
            }
        }
        Ok(events)
    }

    fn end_message(
        &mut self,
        message: Message,
        terminator: Terminator,
        events: &mut Vec<ParseEvent>,
    ) {
        self.messages.push(message.clone());
        self.last_terminator = Some(terminator);
        events.push(ParseEvent::MessageEnd {
            message,
            terminator,
        });
    }

    fn open_content(&mut self, tokens: &[u32], events: &mut Vec<ParseEvent>) -> Result<()> {
        let header_text = self.harmony.tokenizer().decode(tokens)?;
        let (header, leftover) =
            parse_header(&header_text, self.next_role.take(), HeaderMode::Full)?;
        if let (Some(words), Strictness::Strict) = (&leftover, self.strictness) {
            return Err(Error::Parse(format!(
                "unexpected words in header {header_text:?}: {words:?}"
            )));
        }
        let kind = header.kind();
        if let (DeltaKind::ToolArgs, Some(recipient)) = (kind, &header.recipient) {
            events.push(ParseEvent::ToolCallStart {
                recipient: recipient.clone(),
                content_type: header.content_type.clone(),
            });
        }
        let text = leftover.unwrap_or_default();
        if !text.is_empty() {
            events.push(kind.event(text.clone()));
        }
        self.state = State::Content {
            header,
            text,
            decoder: StreamDecoder::new(),
        };
        Ok(())
    }

    /// Lenient: a terminator (or the end) inside the first header makes a message of the header text.
    fn close_header_early(
        &mut self,
        tokens: &[u32],
        t: Terminator,
        events: &mut Vec<ParseEvent>,
    ) -> Result<()> {
        if let (Some(role), false) = (self.next_role.take(), tokens.is_empty()) {
            let header_text = self.harmony.tokenizer().decode(tokens)?;
            let (header, rest) = parse_header(&header_text, Some(role), HeaderMode::ChannelOnly)?;
            let text = rest.unwrap_or_default();
            if !text.is_empty() {
                events.push(header.kind().event(text.clone()));
            }
            self.end_message(header.into_message(text), t, events);
        }
        Ok(())
    }
}

/// Whether recipient and content type are read from the header words.
#[derive(Clone, Copy, PartialEq, Eq)]
enum HeaderMode {
    Full,
    ChannelOnly,
}

const CHANNEL: &str = "<|channel|>";
const CONSTRAIN: &str = "<|constrain|>";

/// Parses header text (spec §4.6 step 1); returns the header and any words left over.
fn parse_header(
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
