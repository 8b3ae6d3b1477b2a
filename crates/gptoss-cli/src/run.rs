//! `gptoss run`: generate from a prompt (`-p`, `--file` or stdin; rendered as a Harmony chat unless
//! `--raw`) or from token ids. A chat answer streams its final channel to stdout and its reasoning to
//! stderr; `--raw` and `--tokens` stream the raw text; `--json` prints tokens, text, reasoning and content.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use gptoss_engine::scheduler::{EngineConfig, GenRequest, StatsSnapshot};
use gptoss_engine::ExpertCacheStats;
use gptoss_engine::{generate_with, Capacity, StopReason};
use gptoss_tokenizer::harmony::Harmony;
use gptoss_tokenizer::Tokenizer;

use crate::answer::{Answer, AnswerPrinter, Paint, ReasoningTo};
use crate::sampling::{SamplingArgs, TemplateArgs};
use crate::serve::DEFAULT_BATCH_TOKENS;
use crate::source::{self, ModelArgs};
use crate::spec::SpecArgs;
use crate::vocab;
use crate::{device, with_model};

/// Arguments of `gptoss run`.
#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The user's message (or raw text with --raw). Without -p, --file or --tokens the prompt is read
    /// from stdin.
    #[arg(short = 'p', long, conflicts_with_all = ["tokens", "file"])]
    prompt: Option<String>,
    /// Read the prompt from this file.
    #[arg(short = 'f', long, value_name = "FILE", conflicts_with = "tokens")]
    file: Option<PathBuf>,
    /// Token ids to continue, comma-separated (no template).
    #[arg(long)]
    tokens: Option<String>,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    template: TemplateArgs,
    /// Encode the prompt as plain text, without the Harmony chat template, and print the raw tokens.
    #[arg(long)]
    raw: bool,
    /// Print the reasoning on stdout (dimmed on a terminal) before the answer, instead of on stderr.
    #[arg(long, conflicts_with = "raw")]
    show_reasoning: bool,
    /// Print `{"tokens", "text", "reasoning", "content", "tool_calls"}` instead of streaming.
    #[arg(long)]
    json: bool,
    /// Tokens per prefill step.
    #[arg(long, default_value_t = DEFAULT_BATCH_TOKENS, value_parser = source::size_in(1, gptoss_engine::MAX_BATCH_TOKENS))]
    batch_tokens: usize,
    #[command(flatten)]
    spec: SpecArgs,
}

/// How the generated tokens are shown.
enum Shown {
    /// Harmony-parsed: the answer on stdout, the reasoning as asked.
    Chat(Box<AnswerPrinter<std::io::Stdout, std::io::Stderr>>),
    /// Decoded as they come (`--raw`, `--tokens`).
    Raw(vocab::TextStream),
    /// Nothing until the end (`--json`).
    Quiet,
}

/// Generates and prints.
pub fn run(args: RunArgs) -> Result<()> {
    let sampling = args.sampling.params()?;
    let loaded = source::load(&args.model)?;
    let tokenizer = vocab::tokenizer_for(&loaded)?;
    let chat = args.tokens.is_none() && !args.raw;
    let prompt = match &args.tokens {
        Some(t) => source::parse_tokens(t)?,
        None => {
            let text = prompt_text(&args)?;
            if args.raw {
                tokenizer.encode(&text)?
            } else {
                vocab::chat_prompt(
                    &tokenizer,
                    args.template.system.as_deref(),
                    &text,
                    args.template.reasoning_effort.into(),
                )?
            }
        }
    };
    if prompt.is_empty() {
        bail!("the prompt encodes to no tokens");
    }
    let speculative = args.spec.speculative()?;
    let ctx = args.model.ctx.max(prompt.len() + 1);
    let batch_tokens = args.batch_tokens.max(1);
    let capacity = Capacity {
        max_batch_tokens: batch_tokens,
        max_logit_rows: speculative.logit_rows(1, batch_tokens),
        slots: 1,
        kv_blocks: None,
        context_tokens: ctx,
    };
    let mut model = device::build_model(&args.model, &loaded.weights, capacity)?;
    let request = GenRequest {
        prompt,
        sampling,
        max_new_tokens: args.sampling.max_tokens,
        stop_tokens: vocab::stop_tokens(&tokenizer),
    };
    let prompt_len = request.prompt.len();
    let config = EngineConfig {
        max_batch_tokens: None,
        mask_sampling: Default::default(),
        prefix_caching: Default::default(),
        speculative,
    };
    let mut shown = match (args.json, chat) {
        (true, _) => Shown::Quiet,
        (false, true) => {
            let to = if args.show_reasoning {
                ReasoningTo::Output
            } else {
                ReasoningTo::ErrorStream
            };
            Shown::Chat(Box::new(answer_printer(&tokenizer, to)?))
        }
        (false, false) => Shown::Raw(vocab::TextStream::default()),
    };
    let started = Instant::now();
    let mut first_token_at = None;
    let mut shown_ok: Result<()> = Ok(());
    let done = with_model!(&mut model, m => generate_with(m, request, config, |tok| {
        first_token_at.get_or_insert_with(Instant::now);
        if shown_ok.is_ok() {
            shown_ok = show_token(&mut shown, &tokenizer, tok);
        }
    }))?;
    shown_ok?;
    let tokens = &done.tokens;
    let answer = match shown {
        Shown::Chat(printer) => Some(printer.finish()?),
        Shown::Raw(mut stream) => {
            print!("{}", stream.finish());
            None
        }
        Shown::Quiet if chat => Some(parse_quietly(&tokenizer, tokens)?),
        Shown::Quiet => None,
    };
    if args.json {
        let text = vocab::decode_lossy(&tokenizer, tokens);
        println!("{}", json_result(tokens, &text, answer.as_ref()));
    } else {
        println!();
    }
    let spec = args.spec.speculative.map(|_| done.stats);
    let timing = Timing {
        started,
        first: first_token_at,
    };
    report_speed(
        prompt_len,
        tokens.len(),
        timing,
        done.reason,
        (spec, done.stats.expert_cache),
    );
    if done.reason == StopReason::Length && prompt_len + tokens.len() >= ctx {
        eprintln!(
            "[the context is full: {ctx} tokens (prompt {prompt_len} + {} generated); raise -c/--ctx for a longer answer]",
            tokens.len()
        );
    }
    if let Some(peak) = model.peak_device_bytes() {
        eprintln!(
            "[peak device memory {}]",
            crate::inspect::human_bytes(peak as usize)
        );
    }
    Ok(())
}

/// The prompt text: `-p`, `--file`, else stdin (when it is not a terminal).
fn prompt_text(args: &RunArgs) -> Result<String> {
    if let Some(p) = &args.prompt {
        return Ok(p.clone());
    }
    if let Some(path) = &args.file {
        return std::fs::read_to_string(path)
            .with_context(|| format!("--file {}: cannot read the prompt", path.display()));
    }
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        bail!("give the prompt with -p TEXT, --file FILE or --tokens 1,2,3, or pipe it on stdin");
    }
    let mut text = String::new();
    stdin
        .lock()
        .read_to_string(&mut text)
        .context("reading the prompt from stdin")?;
    if text.trim().is_empty() {
        bail!("no prompt: stdin was empty (give -p TEXT, --file FILE or --tokens 1,2,3)");
    }
    Ok(text.strip_suffix('\n').unwrap_or(&text).to_string())
}

fn harmony(tokenizer: &Arc<Tokenizer>) -> Result<Harmony> {
    Harmony::new(tokenizer.clone())
        .context("this vocabulary lacks Harmony's special tokens; use --raw")
}

/// The printer of a chat answer: the answer on stdout, the reasoning on stderr (or before the answer with
/// `--show-reasoning`), dimmed where it lands on a terminal.
fn answer_printer(
    tokenizer: &Arc<Tokenizer>,
    to: ReasoningTo,
) -> Result<AnswerPrinter<std::io::Stdout, std::io::Stderr>> {
    let paint = (
        Paint::for_stream(&std::io::stdout()),
        Paint::for_stream(&std::io::stderr()),
    );
    Ok(AnswerPrinter::new(
        harmony(tokenizer)?,
        (std::io::stdout(), std::io::stderr()),
        to,
        paint,
    ))
}

fn show_token(shown: &mut Shown, tokenizer: &Tokenizer, tok: u32) -> Result<()> {
    match shown {
        Shown::Chat(printer) => printer.push(tok),
        Shown::Raw(stream) => {
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(stream.push(tokenizer, tok).as_bytes())?;
            Ok(stdout.flush()?)
        }
        Shown::Quiet => Ok(()),
    }
}

/// The answer of `--json`, parsed without printing.
fn parse_quietly(tokenizer: &Arc<Tokenizer>, tokens: &[u32]) -> Result<Answer> {
    let mut printer = AnswerPrinter::new(
        harmony(tokenizer)?,
        (std::io::sink(), std::io::sink()),
        ReasoningTo::Hidden,
        (Paint::Plain, Paint::Plain),
    );
    for &t in tokens {
        printer.push(t)?;
    }
    printer.finish()
}

/// `{"tokens", "text", "reasoning", "content", "tool_calls"}`; the last three are null for a raw prompt.
fn json_result(tokens: &[u32], text: &str, answer: Option<&Answer>) -> serde_json::Value {
    let calls = answer.map(|a| {
        a.tool_calls
            .iter()
            .map(|c| serde_json::json!({ "recipient": c.recipient, "arguments": c.arguments }))
            .collect::<Vec<_>>()
    });
    serde_json::json!({
        "tokens": tokens,
        "text": text,
        "reasoning": answer.map(|a| a.reasoning.as_str()),
        "content": answer.map(|a| a.content.as_str()),
        "tool_calls": calls,
    })
}

/// When generation started and when its first token came.
struct Timing {
    started: Instant,
    first: Option<Instant>,
}

/// The stats line on stderr (scripts read it): `[N prompt tokens in Xs (P tok/s); M generated,
/// D tok/s decode; stop: R]`, with `; drafted X, accepted Y (Z%)` before the `]` when speculating and
/// `; expert cache hits Z% (H of N pairs, S experts)` with a hot-expert cache.
fn report_speed(
    prompt: usize,
    generated: usize,
    timing: Timing,
    reason: StopReason,
    (spec, cache): (Option<StatsSnapshot>, ExpertCacheStats),
) {
    let Some(first) = timing.first else { return };
    let prefill = first.duration_since(timing.started).as_secs_f64();
    let decode = first.elapsed().as_secs_f64();
    let decode_rate = if generated > 1 && decode > 0.0 {
        (generated - 1) as f64 / decode
    } else {
        0.0
    };
    tracing::info!(
        prompt_tokens = prompt,
        generated_tokens = generated,
        prefill_tok_s = prompt as f64 / prefill.max(1e-9),
        decode_tok_s = decode_rate,
        stop = ?reason,
        "done"
    );
    let drafts = spec.map_or(String::new(), |s| {
        let rate = 100.0 * s.accepted_tokens as f64 / s.drafted_tokens.max(1) as f64;
        format!(
            "; drafted {}, accepted {} ({rate:.1}%)",
            s.drafted_tokens, s.accepted_tokens
        )
    });
    let cached = match cache.slots {
        0 => String::new(),
        n => format!(
            "; expert cache hits {:.1}% ({} of {} pairs, {n} experts)",
            100.0 * cache.hit_rate(),
            cache.hits,
            cache.hits + cache.misses
        ),
    };
    eprintln!(
        "[{prompt} prompt tokens in {prefill:.2}s ({:.1} tok/s); {generated} generated, {decode_rate:.2} tok/s decode; stop: {reason:?}{drafts}{cached}]",
        prompt as f64 / prefill.max(1e-9)
    );
}
