//! [`StreamParser`]: Harmony completion tokens in, typed events out (spec §4.6). Follows
//! openai-harmony's StreamableParser: header text up to `<|message|>`, content up to a terminator.

pub use super::header::ParsedHeader;
use super::header::{parse_header, DeltaKind, HeaderMode};
use super::{Harmony, Message, Role};
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
    /// Any deviation from the grammar is an error (including a terminator inside a header, which
    /// openai-harmony's strict mode folds into the header text instead).
    Strict,
    /// Tokens outside a message and ids outside the vocabulary are skipped, extra header words become
    /// content, a terminator or the end of the stream inside the first header yields a message whose
    /// text is the header remainder.
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
        if !strict && self.harmony.tokenizer().kind(id).is_none() {
            return Ok(events); // an id outside the vocabulary (e.g. a padded embedding row)
        }
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
