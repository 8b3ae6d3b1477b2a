//! The generation flags `run` and `chat` share: the answer cap (`-n`), the sampler's settings and the
//! Harmony system settings (developer instructions, reasoning effort).

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use gptoss_engine::SamplingParams;
use gptoss_tokenizer::harmony::Effort;

/// `-n`, `--temperature`, `--top-p`, `--top-k`, `--seed`.
#[derive(Args, Clone, Debug)]
pub struct SamplingArgs {
    /// Most tokens to generate (per answer in `chat`).
    #[arg(short = 'n', long = "max-tokens", default_value_t = 256, value_parser = crate::source::size_in(0, gptoss_engine::MAX_CONTEXT_TOKENS))]
    pub max_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub temperature: f32,
    /// Nucleus sampling mass.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub top_p: f32,
    /// Keep only the k most likely tokens (0: all).
    #[arg(long, default_value_t = 0, value_parser = crate::source::size_in(0, gptoss_formats::limits::MAX_VOCAB))]
    pub top_k: usize,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl SamplingArgs {
    /// The sampler's parameters, after checking them.
    pub fn params(&self) -> Result<SamplingParams> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            bail!(
                "--temperature must be a finite number >= 0, got {}",
                self.temperature
            );
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            bail!("--top-p must be in (0, 1], got {}", self.top_p);
        }
        if self.max_tokens == 0 {
            bail!("-n/--max-tokens must be at least 1");
        }
        Ok(SamplingParams {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            seed: self.seed,
        })
    }
}

/// `--system` and `--reasoning-effort`: what the Harmony system and developer messages say.
#[derive(Args, Clone, Debug)]
pub struct TemplateArgs {
    /// Developer instructions (the "system prompt") for the chat template.
    #[arg(long)]
    pub system: Option<String>,
    /// Reasoning effort written into the Harmony system message.
    #[arg(long, value_enum, default_value_t = EffortArg::Medium)]
    pub reasoning_effort: EffortArg,
}

/// `--reasoning-effort` values.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum EffortArg {
    /// Short reasoning.
    Low,
    /// The default.
    Medium,
    /// Long reasoning.
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
