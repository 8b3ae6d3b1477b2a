//! `gptoss chat`: an interactive Harmony conversation (what `ollama run` and `llama-cli` give). Each
//! message is added to the session's conversation, rendered as the server renders a chat request and
//! answered through the same scheduler path as `run`; the reasoning is shown dimmed (or hidden), the
//! answer plain, tool calls as they are parsed. Ctrl-C stops the answer, not the program. Works the
//! same with stdin piped (no prompt, the reasoning on stderr), for scripts and tests.
//!
//! One engine serves the whole conversation ([`gptoss_engine::Session`]): each turn's prompt starts
//! with the previous turn's, so its KV blocks come from the prefix cache and only the new tokens (the
//! last answer as Harmony renders it, the new message) are computed. `--stats` shows how many.

use std::io::{BufRead, IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use gptoss_engine::scheduler::{EngineConfig, GenRequest, PrefixCaching};
use gptoss_engine::{Backend, Capacity, Flow, Generation, Session, StopReason};
use gptoss_server::conversation::{Conversation, Turn};
use gptoss_tokenizer::harmony::{Effort, Harmony, Message};

use crate::answer::{Answer, AnswerPrinter, Paint, ReasoningTo};
use crate::sampling::{SamplingArgs, TemplateArgs};
use crate::serve::DEFAULT_BATCH_TOKENS;
use crate::source::{self, ModelArgs};
use crate::spec::SpecArgs;
use crate::{device, vocab, with_model};

/// Arguments of `gptoss chat`.
#[derive(Args)]
pub struct ChatArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    template: TemplateArgs,
    /// Do not show the reasoning (it is still generated, and dropped from the history as usual).
    #[arg(long)]
    hide_reasoning: bool,
    /// Print each turn's whole prompt (Harmony markup) on stderr before the answer.
    #[arg(long)]
    verbose_prompt: bool,
    /// Tokens per prefill step (Ctrl-C is seen between steps).
    #[arg(long, default_value_t = DEFAULT_BATCH_TOKENS)]
    batch_tokens: usize,
    /// After each answer, print its token counts and speed on stderr (prompt tokens reused from earlier
    /// turns and computed, tokens generated and run through the model, time to first token, tokens/s).
    #[arg(long)]
    stats: bool,
    /// Compute each turn's whole prompt (by default a turn reuses the KV of the turns before it; the
    /// answers are the same either way).
    #[arg(long)]
    no_prefix_cache: bool,
    #[command(flatten)]
    spec: SpecArgs,
}

const HELP: &str = "\
/effort low|medium|high   reasoning effort of the next answers
/system TEXT              developer instructions (\"system prompt\"); /system alone clears them
/reset                    forget the conversation (keeps /system and /effort)
/exit                     quit (also /quit, /bye, Ctrl-D)
\"\"\"                       start or end a message of several lines; a line ending in \\ goes on
Ctrl-C stops an answer.";

/// Runs the conversation until `/exit` or the end of stdin.
pub fn run(args: ChatArgs) -> Result<()> {
    let sampling = args.sampling.params()?;
    let loaded = source::load(&args.model)?;
    let tokenizer = vocab::tokenizer_for(&loaded)?;
    let harmony = Harmony::new(tokenizer.clone())
        .context("this vocabulary lacks Harmony's special tokens, so it cannot chat")?;
    let batch_tokens = args.batch_tokens.max(1);
    let speculative = args.spec.speculative()?;
    let capacity = Capacity {
        max_batch_tokens: batch_tokens,
        max_logit_rows: speculative.logit_rows(1, batch_tokens),
        slots: 1,
        kv_blocks: None,
        context_tokens: args.model.ctx,
    };
    let mut model = device::build_model(&args.model, &loaded.weights, capacity)?;
    let stop = Interrupt::install()?;
    let echo = if std::io::stdin().is_terminal() {
        Echo::Prompts
    } else {
        Echo::Silent
    };
    if echo == Echo::Prompts {
        eprintln!(
            "gptoss chat on {}. /help for commands; Ctrl-C stops an answer, Ctrl-D or /exit quits.",
            model.device_name()
        );
    }
    let mut chat = Chat {
        conv: Conversation {
            instructions: args.template.system.clone(),
            effort: args.template.reasoning_effort.into(),
            ..Conversation::default()
        },
        harmony,
        stop_tokens: vocab::stop_tokens(&tokenizer),
        request: GenRequest {
            prompt: Vec::new(),
            sampling,
            max_new_tokens: args.sampling.max_tokens,
            stop_tokens: Vec::new(),
        },
    };
    let config = EngineConfig {
        max_batch_tokens: None,
        mask_sampling: Default::default(),
        speculative,
        prefix_caching: if args.no_prefix_cache {
            PrefixCaching::Off
        } else {
            PrefixCaching::On
        },
    };
    let mut input = Input::new(std::io::stdin().lock(), echo);
    let controls = Controls {
        args: &args,
        stop: &stop,
    };
    with_model!(&mut model, m => chat.converse(&mut Session::new(m, config), &mut input, &controls))
}

/// What every turn of a chat needs besides the conversation: the flags and Ctrl-C.
struct Controls<'a> {
    args: &'a ChatArgs,
    stop: &'a Interrupt,
}

/// The conversation so far and what each answer is generated with.
struct Chat {
    conv: Conversation,
    harmony: Harmony,
    stop_tokens: Vec<u32>,
    request: GenRequest,
}

impl Chat {
    /// Reads messages and commands until `/exit` or the end of the input, answering each message on
    /// `engine` (one engine for the whole conversation).
    fn converse<B: Backend, R: BufRead>(
        &mut self,
        engine: &mut Session<'_, B>,
        input: &mut Input<R>,
        controls: &Controls<'_>,
    ) -> Result<()> {
        while let Some(text) = input.message()? {
            controls.stop.clear();
            match Command::parse(&text) {
                Command::Say(msg) => self.answer(engine, controls, msg)?,
                Command::Exit => break,
                Command::Help => eprintln!("{HELP}"),
                Command::Reset => {
                    self.conv.turns.clear();
                    eprintln!("[conversation cleared]");
                }
                Command::System(s) => {
                    eprintln!(
                        "[developer instructions {}]",
                        if s.is_some() { "set" } else { "cleared" }
                    );
                    self.conv.instructions = s;
                }
                Command::Effort(Ok(e)) => {
                    self.conv.effort = e;
                    eprintln!("[reasoning effort {}]", e.as_str());
                }
                Command::Effort(Err(e)) | Command::Unknown(e) => eprintln!("{e}"),
            }
        }
        Ok(())
    }

    /// Adds the user's message, streams the answer and adds it to the history.
    fn answer<B: Backend>(
        &mut self,
        engine: &mut Session<'_, B>,
        controls: &Controls<'_>,
        msg: String,
    ) -> Result<()> {
        let (args, stop) = (controls.args, controls.stop);
        self.conv.turns.push(Turn::User(msg));
        let ctx = args.model.ctx;
        // Rendering stops once the conversation passes the context (`ctx` tokens): too long either way.
        let rendered = self.conv.clone().render(&self.harmony, ctx);
        let prompt = match rendered {
            Ok(p) => p.tokens,
            Err(e) if e.code == Some("context_length_exceeded") => vec![0; ctx],
            Err(e) => anyhow::bail!("rendering the conversation: {}", e.message),
        };
        if prompt.len() >= ctx {
            self.conv.turns.pop();
            eprintln!("[the conversation is {} tokens and the context holds {ctx}: /reset, or restart with a larger -c/--ctx]", prompt.len());
            return Ok(());
        }
        if args.verbose_prompt {
            eprintln!(
                "[prompt, {} tokens]\n{}",
                prompt.len(),
                vocab::decode_lossy(self.harmony.tokenizer(), &prompt)
            );
        }
        let prompt_len = prompt.len();
        let request = GenRequest {
            prompt,
            stop_tokens: self.stop_tokens.clone(),
            ..self.request.clone()
        };
        // Reasoning dimmed before the answer on a terminal, else on stderr so stdout holds only answers.
        let to = match (args.hide_reasoning, std::io::stdout().is_terminal()) {
            (true, _) => ReasoningTo::Hidden,
            (false, true) => ReasoningTo::Output,
            (false, false) => ReasoningTo::ErrorStream,
        };
        let mut printer = answer_printer(&self.harmony, to);
        let mut shown: Result<()> = Ok(());
        let started = Instant::now();
        let mut first_token = None;
        let done = engine.generate_until(request, |tokens| {
            if first_token.is_none() && !tokens.is_empty() {
                first_token = Some(Instant::now());
            }
            for &t in tokens {
                if shown.is_ok() {
                    shown = printer.push(t);
                }
            }
            if stop.fired() {
                Flow::Stop
            } else {
                Flow::Continue
            }
        })?;
        shown?;
        let answer = printer.finish()?;
        println!();
        if args.stats {
            let timing = Timing {
                started,
                first_token,
                ended: Instant::now(),
            };
            eprintln!("{}", stats_line(&done, prompt_len, timing));
        }
        self.conv.turns.extend(history_turns(&answer));
        let generated = done.tokens.len();
        match done.reason {
            StopReason::Cancelled => eprintln!("[stopped]"),
            StopReason::Length if prompt_len + generated >= ctx => eprintln!(
                "[the context is full ({ctx} tokens): /reset, or restart with a larger -c/--ctx]"
            ),
            StopReason::Length => eprintln!("[answer cut at -n {generated} tokens]"),
            StopReason::Stop => {}
        }
        Ok(())
    }
}

/// When a turn started, produced its first token and ended.
struct Timing {
    started: Instant,
    first_token: Option<Instant>,
    ended: Instant,
}

/// `--stats`: what a turn computed and how fast, e.g. `[prompt 203 tokens: 192 reused, 11 computed |
/// 8 generated | 18 run through the model | first token 35.2 ms | 120.5 tokens/s]`.
fn stats_line(done: &Generation, prompt_len: usize, t: Timing) -> String {
    let reused = done.cached_tokens;
    let generated = done.tokens.len();
    let first = t.first_token.map_or(t.ended, |f| f);
    let decode_secs = t.ended.duration_since(first).as_secs_f64();
    let rate = match generated {
        0 | 1 => String::from("-"),
        n => format!("{:.1}", (n - 1) as f64 / decode_secs.max(1e-9)),
    };
    format!(
        "[prompt {prompt_len} tokens: {reused} reused, {} computed | {generated} generated | {} run through the model | first token {:.1} ms | {rate} tokens/s]",
        prompt_len.saturating_sub(reused),
        done.stats.batch_tokens,
        first.duration_since(t.started).as_secs_f64() * 1e3,
    )
}

/// The answer on stdout, the reasoning where `to` says (dimmed where it lands on a terminal).
fn answer_printer(
    harmony: &Harmony,
    to: ReasoningTo,
) -> AnswerPrinter<std::io::Stdout, std::io::Stderr> {
    let paint = (
        Paint::for_stream(&std::io::stdout()),
        Paint::for_stream(&std::io::stderr()),
    );
    AnswerPrinter::new(
        harmony.clone(),
        (std::io::stdout(), std::io::stderr()),
        to,
        paint,
    )
}

/// The answer's messages as conversation turns (earlier reasoning is dropped by the renderer once a
/// final answer follows, as Harmony asks).
fn history_turns(answer: &Answer) -> Vec<Turn> {
    answer
        .messages
        .iter()
        .enumerate()
        .filter_map(|(i, m)| message_turn(m, i))
        .collect()
}

fn message_turn(m: &Message, i: usize) -> Option<Turn> {
    let text = m.text_content();
    match (m.channel.as_deref(), m.recipient.as_deref()) {
        (_, Some(to)) => to.strip_prefix("functions.").map(|name| Turn::ToolCall {
            id: format!("call_{i}"),
            name: name.to_string(),
            arguments: text,
        }),
        (Some("analysis"), None) => Some(Turn::Reasoning(text)),
        (Some("commentary"), None) => Some(Turn::Preamble(text)),
        _ => Some(Turn::Answer(text)),
    }
}

/// One line of input, read as a command or a message.
#[derive(Debug, PartialEq)]
enum Command {
    Say(String),
    Effort(Result<Effort, String>),
    System(Option<String>),
    Reset,
    Exit,
    Help,
    Unknown(String),
}

impl Command {
    fn parse(text: &str) -> Self {
        let trimmed = text.trim();
        let Some(rest) = trimmed.strip_prefix('/') else {
            return Command::Say(text.to_string());
        };
        let (word, arg) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
        let arg = arg.trim();
        match word {
            "exit" | "quit" | "bye" => Command::Exit,
            "reset" | "clear" => Command::Reset,
            "help" | "?" => Command::Help,
            "system" => Command::System((!arg.is_empty()).then(|| arg.to_string())),
            "effort" => Command::Effort(match arg {
                "low" => Ok(Effort::Low),
                "medium" => Ok(Effort::Medium),
                "high" => Ok(Effort::High),
                other => Err(format!(
                    "/effort: expected low, medium or high, got {other:?}"
                )),
            }),
            other => Command::Unknown(format!("unknown command /{other}; /help lists them")),
        }
    }
}

/// Whether the input prompts (`>>> `, `... `) are printed: only when a person types at a terminal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Echo {
    Prompts,
    Silent,
}

/// Messages from stdin: a line, lines joined by a trailing `\`, or a `"""` block.
struct Input<R: BufRead> {
    reader: R,
    echo: Echo,
}

impl<R: BufRead> Input<R> {
    fn new(reader: R, echo: Echo) -> Self {
        Self { reader, echo }
    }

    fn prompt(&self, text: &str) -> Result<()> {
        if self.echo == Echo::Prompts {
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes())?;
            out.flush()?;
        }
        Ok(())
    }

    fn line(&mut self) -> Result<Option<String>> {
        let mut line = String::new();
        if self.reader.read_line(&mut line).context("reading stdin")? == 0 {
            return Ok(None);
        }
        let end = line.trim_end_matches(['\n', '\r']).len();
        line.truncate(end);
        Ok(Some(line))
    }

    /// The next message (or command), skipping blank lines; `None` at the end of input.
    fn message(&mut self) -> Result<Option<String>> {
        loop {
            self.prompt(">>> ")?;
            let Some(first) = self.line()? else {
                return Ok(None);
            };
            let text = if first.trim() == "\"\"\"" || first.trim_start().starts_with("\"\"\"") {
                self.block(first.trim_start().trim_start_matches("\"\"\"").to_string())?
            } else {
                self.continued(first)?
            };
            if !text.trim().is_empty() {
                return Ok(Some(text));
            }
        }
    }

    /// Lines up to a closing `"""` (a block left open at the end of input is taken as it is).
    fn block(&mut self, first: String) -> Result<String> {
        if let Some(done) = first.strip_suffix("\"\"\"") {
            return Ok(done.to_string());
        }
        let mut lines = vec![first];
        loop {
            self.prompt("... ")?;
            let Some(line) = self.line()? else { break };
            if let Some(last) = line.strip_suffix("\"\"\"") {
                if !last.is_empty() {
                    lines.push(last.to_string());
                }
                break;
            }
            lines.push(line);
        }
        let text = lines.join("\n");
        Ok(text.strip_prefix('\n').unwrap_or(&text).to_string())
    }

    /// A line and those that follow while each ends in `\`.
    fn continued(&mut self, first: String) -> Result<String> {
        let mut text = first;
        while let Some(head) = text.strip_suffix('\\') {
            text = format!("{head}\n");
            self.prompt("... ")?;
            let Some(line) = self.line()? else { break };
            text.push_str(&line);
        }
        Ok(text)
    }
}

/// Ctrl-C while installed: a flag the answer loop polls between steps.
struct Interrupt {
    flag: Arc<AtomicBool>,
    id: signal_hook_registry::SigId,
}

impl Interrupt {
    fn install() -> Result<Self> {
        let flag = Arc::new(AtomicBool::new(false));
        let f = flag.clone();
        // SAFETY: the action only stores to an atomic, which is async-signal-safe.
        let id = unsafe {
            signal_hook_registry::register(libc::SIGINT, move || f.store(true, Ordering::SeqCst))
        }
        .context("installing the Ctrl-C handler")?;
        Ok(Self { flag, id })
    }

    fn fired(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    fn clear(&self) {
        self.flag.store(false, Ordering::SeqCst);
    }
}

impl Drop for Interrupt {
    fn drop(&mut self) {
        signal_hook_registry::unregister(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages(input: &str) -> Vec<String> {
        let mut i = Input::new(input.as_bytes(), Echo::Silent);
        std::iter::from_fn(|| i.message().unwrap()).collect()
    }

    #[test]
    fn reads_lines_continuations_and_blocks() {
        let got = messages(
            "hi\n\n  \nfirst \\\nsecond\n\"\"\"\na\n\nb\n\"\"\"\n\"\"\"one line\"\"\"\nlast",
        );
        assert_eq!(got, ["hi", "first \nsecond", "a\n\nb", "one line", "last"]);
        // A block left open at the end of input is taken whole.
        assert_eq!(messages("\"\"\"x\ny"), ["x\ny"]);
    }

    #[test]
    fn parses_commands() {
        assert_eq!(
            Command::parse("/effort high"),
            Command::Effort(Ok(Effort::High))
        );
        assert!(
            matches!(Command::parse("/effort max"), Command::Effort(Err(e)) if e.contains("\"max\""))
        );
        assert_eq!(
            Command::parse("/system Be brief. "),
            Command::System(Some("Be brief.".into()))
        );
        assert_eq!(Command::parse("/system"), Command::System(None));
        assert_eq!(Command::parse(" /exit"), Command::Exit);
        assert_eq!(Command::parse("/reset"), Command::Reset);
        assert!(
            matches!(Command::parse("/frobnicate"), Command::Unknown(e) if e.contains("/frobnicate"))
        );
        assert_eq!(Command::parse("a/b"), Command::Say("a/b".into()));
    }
}
