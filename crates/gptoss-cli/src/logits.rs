//! `gptoss logits`: the logits of a token sequence as JSON, for checking a checkpoint or a conversion
//! against a reference implementation.

use anyhow::{bail, Result};
use clap::Args;
use gptoss_engine::Batch;

use crate::source::{self, ModelArgs};

/// Arguments of `gptoss logits`.
#[derive(Args)]
pub struct LogitsArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Token ids, comma-separated.
    #[arg(long)]
    tokens: String,
    /// Logits of every position, not only the last.
    #[arg(long)]
    all_positions: bool,
    /// Print JSON (the only output form; accepted for symmetry with other commands).
    #[arg(long)]
    json: bool,
}

/// Runs the sequence in one step and prints `{"tokens": [...], "logits": [[...], ...]}`.
pub fn run(args: LogitsArgs) -> Result<()> {
    let tokens = source::parse_tokens(&args.tokens)?;
    if tokens.is_empty() {
        bail!("--tokens: no token ids given");
    }
    source::resolve_device(args.model.device)?;
    let loaded = source::load(&args.model)?;
    let n = tokens.len();
    let rows = if args.all_positions { n } else { 1 };
    let mut model = source::cpu_model(&loaded.weights, n.max(1), n, rows)?;
    let mut batch = Batch::single(&tokens, 0, 0);
    if args.all_positions {
        batch.logit_rows = (0..n as u32).collect();
    }
    model.forward(&batch)?;
    let flat = model.logits(rows)?;
    let vocab = model.config().vocab_size;
    let logits: Vec<&[f32]> = flat.chunks_exact(vocab).collect();
    let out = serde_json::json!({ "tokens": tokens, "logits": logits });
    println!("{out}");
    Ok(())
}
