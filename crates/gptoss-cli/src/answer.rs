//! Showing a Harmony answer while it streams (`run` and `chat`): the final channel and commentary
//! preambles as plain text, the reasoning where the user asked for it (beside the answer, on stderr, or
//! nowhere; dimmed on a terminal), tool calls as soon as the parser sees them. The parsed answer
//! (reasoning, content, tool calls, messages) is returned for `--json` and for the chat history.

use std::io::{IsTerminal, Write};

use anyhow::{Context, Result};
use gptoss_tokenizer::harmony::{
    Harmony, Message, ParseEvent, ParserStart, Role, StreamParser, Strictness,
};

/// Where the reasoning (the `analysis` channel) goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReasoningTo {
    /// Nowhere (it is still parsed and returned).
    Hidden,
    /// To the error stream, so the output stream holds only the answer.
    ErrorStream,
    /// Before the answer in the output stream.
    Output,
}

/// Whether text is wrapped in ANSI dim escapes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Paint {
    /// `ESC[2m` ... `ESC[0m` (a terminal, `NO_COLOR` unset).
    Dim,
    /// As is.
    Plain,
}

impl Paint {
    /// Dim when `stream` is a terminal and `NO_COLOR` is not set.
    pub fn for_stream(stream: &impl IsTerminal) -> Self {
        if stream.is_terminal() && std::env::var_os("NO_COLOR").is_none() {
            Paint::Dim
        } else {
            Paint::Plain
        }
    }

    fn start(self) -> &'static str {
        match self {
            Paint::Dim => "\x1b[2m",
            Paint::Plain => "",
        }
    }

    fn end(self) -> &'static str {
        match self {
            Paint::Dim => "\x1b[0m",
            Paint::Plain => "",
        }
    }
}

/// A tool call the model made: `functions.get_weather` and its JSON arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolCall {
    /// The recipient (`functions.NAME`).
    pub recipient: String,
    /// The argument text.
    pub arguments: String,
}

/// One parsed answer.
#[derive(Clone, Debug, Default)]
pub struct Answer {
    /// The `analysis` text.
    pub reasoning: String,
    /// The user-facing text (`final`, and commentary preambles).
    pub content: String,
    /// Tool calls, in order.
    pub tool_calls: Vec<ToolCall>,
    /// Every message the answer held.
    pub messages: Vec<Message>,
}

/// What was written last, to separate sections with a line break.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Section {
    Nothing,
    Reasoning,
    Text,
    ToolCall,
}

/// Streams one answer's tokens to `out` (answer) and `err` (reasoning when asked), as it is parsed.
pub struct AnswerPrinter<O: Write, E: Write> {
    parser: StreamParser,
    out: O,
    err: E,
    reasoning_to: ReasoningTo,
    paint: (Paint, Paint),
    section: Section,
    answer: Answer,
}

impl<O: Write, E: Write> AnswerPrinter<O, E> {
    /// A printer for an answer whose prompt ended in `<|start|>assistant`. `paint` is how the reasoning
    /// is painted on `out` and on `err`.
    pub fn new(
        harmony: Harmony,
        streams: (O, E),
        reasoning_to: ReasoningTo,
        paint: (Paint, Paint),
    ) -> Self {
        Self {
            parser: StreamParser::new(
                harmony,
                ParserStart::Header(Role::Assistant),
                Strictness::Lenient,
            ),
            out: streams.0,
            err: streams.1,
            reasoning_to,
            paint,
            section: Section::Nothing,
            answer: Answer::default(),
        }
    }

    /// Feeds one generated token, printing what it completes.
    pub fn push(&mut self, id: u32) -> Result<()> {
        let events = self.parser.push(id).context("parsing the answer")?;
        self.show(events)
    }

    /// Ends the answer (closing a message cut short), ends the last line and returns what was parsed.
    pub fn finish(mut self) -> Result<Answer> {
        let events = self.parser.finish().context("parsing the answer")?;
        self.show(events)?;
        self.close_section()?;
        self.out.flush()?;
        self.err.flush()?;
        Ok(self.answer)
    }

    fn show(&mut self, events: Vec<ParseEvent>) -> Result<()> {
        for event in events {
            match event {
                ParseEvent::Reasoning(text) => {
                    self.enter(Section::Reasoning)?;
                    if let Some((w, _)) = self.reasoning_stream() {
                        w.write_all(text.as_bytes())?;
                    }
                    self.answer.reasoning.push_str(&text);
                }
                // Output that does not follow Harmony is shown as it was generated, as the server
                // returns it (it is not a message, so chat keeps it out of the history).
                ParseEvent::Final(text)
                | ParseEvent::Preamble(text)
                | ParseEvent::Unparsed(text) => {
                    if text.is_empty() {
                        continue;
                    }
                    self.enter(Section::Text)?;
                    self.out.write_all(text.as_bytes())?;
                    self.answer.content.push_str(&text);
                }
                ParseEvent::ToolCallStart { recipient, .. } => {
                    self.enter(Section::ToolCall)?;
                    write!(self.out, "[tool call {recipient}: ")?;
                    self.answer.tool_calls.push(ToolCall {
                        recipient,
                        arguments: String::new(),
                    });
                }
                ParseEvent::ToolCallArgs(text) => {
                    self.out.write_all(text.as_bytes())?;
                    if let Some(call) = self.answer.tool_calls.last_mut() {
                        call.arguments.push_str(&text);
                    }
                }
                ParseEvent::MessageEnd { message, .. } => {
                    if self.section == Section::ToolCall {
                        self.out.write_all(b"]")?;
                    }
                    self.answer.messages.push(message);
                }
            }
        }
        self.out.flush()?;
        self.err.flush()?;
        Ok(())
    }

    /// The stream the reasoning goes to and how it is painted there.
    fn reasoning_stream(&mut self) -> Option<(&mut dyn Write, Paint)> {
        match self.reasoning_to {
            ReasoningTo::Hidden => None,
            ReasoningTo::ErrorStream => Some((&mut self.err, self.paint.1)),
            ReasoningTo::Output => Some((&mut self.out, self.paint.0)),
        }
    }

    /// Ends the current section and starts `next`, with a line break between sections that share a stream.
    fn enter(&mut self, next: Section) -> Result<()> {
        if self.section == next && next != Section::ToolCall {
            return Ok(());
        }
        let shared = self.reasoning_to == ReasoningTo::Output;
        let was_on_out = match self.section {
            Section::Nothing => false,
            Section::Reasoning => shared,
            Section::Text | Section::ToolCall => true,
        };
        self.close_section()?;
        let goes_to_out = next != Section::Reasoning || shared;
        if was_on_out && goes_to_out {
            self.out.write_all(b"\n")?;
        }
        if next == Section::Reasoning {
            if let Some((w, paint)) = self.reasoning_stream() {
                w.write_all(paint.start().as_bytes())?;
            }
        }
        self.section = next;
        Ok(())
    }

    /// Ends the reasoning's paint (and its line on the error stream).
    fn close_section(&mut self) -> Result<()> {
        if self.section == Section::Reasoning {
            let on_err = self.reasoning_to == ReasoningTo::ErrorStream;
            if let Some((w, paint)) = self.reasoning_stream() {
                w.write_all(paint.end().as_bytes())?;
                if on_err {
                    w.write_all(b"\n")?;
                }
            }
        }
        self.section = Section::Nothing;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gptoss_tokenizer::Tokenizer;
    use std::sync::Arc;

    fn harmony() -> Harmony {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/tiny/hf-mxfp4/tokenizer.json");
        Harmony::new(Arc::new(Tokenizer::from_tokenizer_json(&path).unwrap())).unwrap()
    }

    /// The ids of `text`, with Harmony's special tokens written as themselves.
    fn ids(h: &Harmony, text: &str) -> Vec<u32> {
        let tok = h.tokenizer();
        let mut out = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            match rest.find("<|") {
                Some(0) => {
                    let end = rest.find("|>").unwrap() + 2;
                    out.push(tok.find_special(&rest[..end]).unwrap());
                    rest = &rest[end..];
                }
                Some(i) => {
                    out.extend(tok.encode(&rest[..i]).unwrap());
                    rest = &rest[i..];
                }
                None => {
                    out.extend(tok.encode(rest).unwrap());
                    rest = "";
                }
            }
        }
        out
    }

    fn show(text: &str, to: ReasoningTo, paint: Paint) -> (String, String, Answer) {
        let h = harmony();
        let tokens = ids(&h, text);
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let mut p = AnswerPrinter::new(h, (&mut out, &mut err), to, (paint, paint));
        for t in tokens {
            p.push(t).unwrap();
        }
        let answer = p.finish().unwrap();
        let s = |b: Vec<u8>| String::from_utf8(b).unwrap();
        (s(out), s(err), answer)
    }

    const ANSWER: &str = "<|channel|>analysis<|message|>Think.<|end|><|start|>assistant<|channel|>final<|message|>Hi!<|return|>";

    #[test]
    fn reasoning_goes_where_asked_and_the_answer_to_the_output() {
        let (out, err, a) = show(ANSWER, ReasoningTo::ErrorStream, Paint::Plain);
        assert_eq!((out.as_str(), err.as_str()), ("Hi!", "Think.\n"));
        assert_eq!(
            (a.reasoning.as_str(), a.content.as_str(), a.messages.len()),
            ("Think.", "Hi!", 2)
        );
        let (out, err, _) = show(ANSWER, ReasoningTo::Output, Paint::Dim);
        assert_eq!(
            (out.as_str(), err.as_str()),
            ("\x1b[2mThink.\x1b[0m\nHi!", "")
        );
        let (out, err, a) = show(ANSWER, ReasoningTo::Hidden, Paint::Dim);
        assert_eq!(
            (out.as_str(), err.as_str(), a.reasoning.as_str()),
            ("Hi!", "", "Think.")
        );
    }

    #[test]
    fn tool_calls_show_as_they_are_parsed() {
        let call = "<|channel|>analysis<|message|>Need weather.<|end|><|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{\"city\":\"Paris\"}<|call|>";
        let (out, err, a) = show(call, ReasoningTo::ErrorStream, Paint::Plain);
        assert_eq!(
            out,
            "[tool call functions.get_weather: {\"city\":\"Paris\"}]"
        );
        assert_eq!(err, "Need weather.\n");
        assert_eq!(
            a.tool_calls,
            [ToolCall {
                recipient: "functions.get_weather".into(),
                arguments: "{\"city\":\"Paris\"}".into()
            }]
        );
        // An answer cut short inside its reasoning still ends the paint.
        let (out, _, a) = show(
            "<|channel|>analysis<|message|>Hmm",
            ReasoningTo::Output,
            Paint::Dim,
        );
        assert_eq!(
            (out.as_str(), a.content.as_str()),
            ("\x1b[2mHmm\x1b[0m", "")
        );
    }
}
