//! `gptoss run`: generate from a prompt (rendered as a Harmony chat unless `--raw`) or from token ids,
//! streaming text to stdout, or printing `{"tokens", "text"}` with `--json`.

use std::io::Write;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use gptoss_engine::scheduler::{EngineConfig, GenRequest, StatsSnapshot};
use gptoss_engine::{generate_with, Capacity, SamplingParams, StopReason};
use gptoss_tokenizer::harmony::Effort;

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
    /// The user's message (or raw text with --raw).
    #[arg(long, conflicts_with = "tokens", required_unless_present = "tokens")]
    prompt: Option<String>,
    /// Token ids to continue, comma-separated (no template).
    #[arg(long)]
    tokens: Option<String>,
    /// Most tokens to generate.
    #[arg(short = 'n', long = "max-tokens", default_value_t = 256, value_parser = source::size_in(0, gptoss_engine::MAX_CONTEXT_TOKENS))]
    max_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    temperature: f32,
    /// Nucleus sampling mass.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    top_p: f32,
    /// Keep only the k most likely tokens (0: all).
    #[arg(long, default_value_t = 0, value_parser = source::size_in(0, gptoss_formats::limits::MAX_VOCAB))]
    top_k: usize,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Developer instructions (the "system prompt") for the chat template.
    #[arg(long)]
    system: Option<String>,
    /// Reasoning effort written into the Harmony system message.
    #[arg(long, value_enum, default_value_t = EffortArg::Medium)]
    reasoning_effort: EffortArg,
    /// Encode the prompt as plain text, without the Harmony chat template.
    #[arg(long)]
    raw: bool,
    /// Print `{"tokens": [...], "text": ...}` instead of streaming.
    #[arg(long)]
    json: bool,
    /// Tokens per prefill step.
    #[arg(long, default_value_t = DEFAULT_BATCH_TOKENS, value_parser = source::size_in(1, gptoss_engine::MAX_BATCH_TOKENS))]
    batch_tokens: usize,
    #[command(flatten)]
    spec: SpecArgs,
}

/// Generates and prints.
pub fn run(args: RunArgs) -> Result<()> {
    check_sampling(&args)?;
    let loaded = source::load(&args.model)?;
    let tokenizer = vocab::tokenizer_for(&loaded)?;
    let prompt = match (&args.tokens, &args.prompt) {
        (Some(t), _) => source::parse_tokens(t)?,
        (None, Some(text)) if args.raw => tokenizer.encode(text)?,
        (None, Some(text)) => vocab::chat_prompt(
            &tokenizer,
            args.system.as_deref(),
            text,
            args.reasoning_effort.into(),
        )?,
        (None, None) => bail!("give --prompt TEXT or --tokens 1,2,3"),
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
        sampling: SamplingParams {
            temperature: args.temperature,
            top_p: args.top_p,
            top_k: args.top_k,
            seed: args.seed,
        },
        max_new_tokens: args.max_tokens,
        stop_tokens: vocab::stop_tokens(&tokenizer),
    };
    let prompt_len = request.prompt.len();
    let config = EngineConfig {
        max_batch_tokens: None,
        prefix_caching: Default::default(),
        speculative,
    };
    let started = Instant::now();
    let mut first_token_at = None;
    let mut stream = vocab::TextStream::default();
    let mut stdout = std::io::stdout().lock();
    let done = with_model!(&mut model, m => generate_with(m, request, config, |tok| {
        first_token_at.get_or_insert_with(Instant::now);
        if !args.json {
            let piece = stream.push(&tokenizer, tok);
            let _ = stdout.write_all(piece.as_bytes());
            let _ = stdout.flush();
        }
    }))?;
    let _ = stdout.write_all(stream.finish().as_bytes());
    drop(stdout);
    let tokens = &done.tokens;
    let text = vocab::decode_lossy(&tokenizer, tokens);
    if args.json {
        println!("{}", serde_json::json!({ "tokens": tokens, "text": text }));
    } else {
        println!();
    }
    let spec = args.spec.speculative.map(|_| done.stats);
    let timing = Timing {
        started,
        first: first_token_at,
    };
    report_speed(prompt_len, tokens.len(), timing, done.reason, spec);
    if let Some(peak) = model.peak_device_bytes() {
        eprintln!(
            "[peak device memory {}]",
            crate::inspect::human_bytes(peak as usize)
        );
    }
    Ok(())
}

fn check_sampling(args: &RunArgs) -> Result<()> {
    if !(args.temperature >= 0.0 && args.temperature.is_finite()) {
        bail!(
            "--temperature must be a finite number >= 0, got {}",
            args.temperature
        );
    }
    if !(args.top_p > 0.0 && args.top_p <= 1.0) {
        bail!("--top-p must be in (0, 1], got {}", args.top_p);
    }
    if args.max_tokens == 0 {
        bail!("-n/--max-tokens must be at least 1");
    }
    Ok(())
}

/// When generation started and when its first token came.
struct Timing {
    started: Instant,
    first: Option<Instant>,
}

/// The stats line on stderr (scripts read it): `[N prompt tokens in Xs (P tok/s); M generated,
/// D tok/s decode; stop: R]`, with `; drafted X, accepted Y (Z%)` before the `]` when speculating.
fn report_speed(
    prompt: usize,
    generated: usize,
    timing: Timing,
    reason: StopReason,
    spec: Option<StatsSnapshot>,
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
    eprintln!(
        "[{prompt} prompt tokens in {prefill:.2}s ({:.1} tok/s); {generated} generated, {decode_rate:.2} tok/s decode; stop: {reason:?}{drafts}]",
        prompt as f64 / prefill.max(1e-9)
    );
}

/// `--reasoning-effort` values.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum EffortArg {
    Low,
    Medium,
    High,
}

impl From<EffortArg> for Effort {
    fn from(e: EffortArg) -> Self {
        match e {
            EffortArg::Low => Effort::Low,
            EffortArg::Medium => Effort::Medium,
            EffortArg::High => Effort::High,
        }
    }
}
