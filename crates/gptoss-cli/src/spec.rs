//! The speculative decoding flags shared by `run`, `serve` and `batch` (named after vLLM's
//! prompt-lookup options), turned into the engine's [`Speculative`] setting.

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use gptoss_engine::scheduler::{NgramConfig, Speculative};

/// `--speculative` and its settings.
#[derive(Args, Clone, Debug)]
pub struct SpecArgs {
    /// Speculative decoding: `ngram` drafts tokens by prompt lookup and verifies them in one step.
    /// The output is unchanged (greedy and seeded alike); it is faster when the output repeats the
    /// prompt (editing code, quoting).
    #[arg(long, value_enum, value_name = "METHOD")]
    pub speculative: Option<SpecMethod>,
    /// Most tokens drafted per step (vLLM: num_speculative_tokens).
    #[arg(long, default_value_t = 4, requires = "speculative")]
    pub draft_tokens: usize,
    /// Longest suffix looked up in the sequence, tried first (vLLM: prompt_lookup_max).
    #[arg(long, default_value_t = 4, requires = "speculative")]
    pub prompt_lookup_max: usize,
    /// Shortest suffix looked up (vLLM: prompt_lookup_min).
    #[arg(long, default_value_t = 2, requires = "speculative")]
    pub prompt_lookup_min: usize,
}

/// Ways of drafting tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SpecMethod {
    /// Prompt lookup: copy what followed the last n tokens where they occurred before.
    Ngram,
}

impl SpecArgs {
    /// The engine setting these flags ask for.
    pub fn speculative(&self) -> Result<Speculative> {
        match self.speculative {
            None => Ok(Speculative::Off),
            Some(SpecMethod::Ngram) => {
                let config = NgramConfig::new(
                    self.draft_tokens,
                    self.prompt_lookup_min,
                    self.prompt_lookup_max,
                )
                .context("--draft-tokens / --prompt-lookup-min / --prompt-lookup-max")?;
                Ok(Speculative::Ngram(config))
            }
        }
    }
}
