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
    /// Nothing is an error and nothing generated is dropped. Extra header words become content, and a
    /// terminator or the end of the stream inside the first header yields a message whose text is the
    /// header remainder (as openai-harmony's non-strict mode does). What has no place in the grammar
    /// comes out as [`ParseEvent::Unparsed`] text: tokens between messages other than terminators, a
    /// header that cannot be parsed (with the content after it, up to a terminator), a later header
    /// cut off by a terminator or the end; ids outside the vocabulary come out as empty `Unparsed`.
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
    /// Generated text that does not follow the Harmony grammar (lenient parsing only), as it was
    /// generated: special tokens appear as their names. Empty for an id outside the vocabulary, which
    /// has no text.
    Unparsed(String),
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
    /// Lenient: the content of a message whose header could not be parsed, up to a terminator.
    Unparsed,
}

/// Incremental Harmony parser: feed sampled ids with [`StreamParser::push`], then [`StreamParser::finish`].
pub struct StreamParser {
    harmony: Harmony,
    strictness: Strictness,
    next_role: Option<Role>,
    state: State,
    messages: Vec<Message>,
    last_terminator: Option<Terminator>,
    /// Lenient: decodes the text of tokens outside any message (multi-byte characters may span them).
    unparsed: StreamDecoder,
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
            unparsed: StreamDecoder::new(),
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
            // An id outside the vocabulary (e.g. a padded embedding row): no text, but not Harmony.
            events.push(ParseEvent::Unparsed(String::new()));
            return Ok(events);
        }
        match std::mem::replace(&mut self.state, State::ExpectStart) {
            State::ExpectStart if id == self.harmony.ids().start => {
                self.flush_unparsed(&mut events);
                self.state = State::Header(Vec::new())
            }
            State::ExpectStart if strict => {
                return Err(Error::Parse(format!(
                    "unexpected token {id} while expecting <|start|>"
                )));
            }
            State::ExpectStart => match terminator {
                Some(t) => {
                    self.flush_unparsed(&mut events);
                    self.last_terminator = Some(t);
                }
                None => self.push_unparsed(id, &mut events),
            },
            State::Unparsed => match terminator {
                Some(t) => {
                    self.flush_unparsed(&mut events);
                    self.last_terminator = Some(t);
                }
                None => {
                    self.push_unparsed(id, &mut events);
                    self.state = State::Unparsed;
                }
            },
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
            State::ExpectStart | State::Unparsed => self.flush_unparsed(&mut events),
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
        let after_start = self.next_role.is_none();
        let parsed = self.harmony.tokenizer().decode(tokens).and_then(|text| {
            parse_header(&text, self.next_role.take(), HeaderMode::Full).map(|h| (h, text))
        });
        let ((header, leftover), header_text) = match parsed {
            Ok(p) => p,
            Err(e) if self.strictness == Strictness::Strict => return Err(e),
            Err(_) => {
                let text = self.header_as_text(tokens, after_start) + "<|message|>";
                events.push(ParseEvent::Unparsed(text));
                self.state = State::Unparsed;
                return Ok(());
            }
        };
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

    /// Lenient: a terminator (or the end) inside the first header makes a message of the header text;
    /// inside a later header (or a first one that cannot be parsed) the header is unparsed text.
    fn close_header_early(
        &mut self,
        tokens: &[u32],
        t: Terminator,
        events: &mut Vec<ParseEvent>,
    ) -> Result<()> {
        let role = self.next_role.take();
        if let (Some(role), false) = (role, tokens.is_empty()) {
            let parsed = self
                .harmony
                .tokenizer()
                .decode(tokens)
                .and_then(|text| parse_header(&text, Some(role), HeaderMode::ChannelOnly));
            if let Ok((header, rest)) = parsed {
                let text = rest.unwrap_or_default();
                if !text.is_empty() {
                    events.push(header.kind().event(text.clone()));
                }
                self.end_message(header.into_message(text), t, events);
                return Ok(());
            }
        }
        let text = self.header_as_text(tokens, role.is_none());
        if !text.is_empty() {
            events.push(ParseEvent::Unparsed(text));
        }
        self.last_terminator = Some(t);
        Ok(())
    }

    /// A header's tokens as the text that was generated (`<|start|>` first when the model wrote it).
    fn header_as_text(&self, tokens: &[u32], after_start: bool) -> String {
        let start = if after_start { "<|start|>" } else { "" };
        let mut decoder = StreamDecoder::new();
        let mut text = start.to_string();
        for &id in tokens {
            text.push_str(
                &decoder
                    .push(self.harmony.tokenizer(), id)
                    .unwrap_or_default(),
            );
        }
        text + &decoder.finish()
    }

    /// Lenient: a token that has no place in a message, as text.
    fn push_unparsed(&mut self, id: u32, events: &mut Vec<ParseEvent>) {
        let text = self
            .unparsed
            .push(self.harmony.tokenizer(), id)
            .unwrap_or_default();
        if !text.is_empty() {
            events.push(ParseEvent::Unparsed(text));
        }
    }

    /// Lenient: the unparsed text held back (an incomplete character), at a boundary.
    fn flush_unparsed(&mut self, events: &mut Vec<ParseEvent>) {
        let text = self.unparsed.finish();
        if !text.is_empty() {
            events.push(ParseEvent::Unparsed(text));
        }
    }
}
