//! `gptoss logits`: the logits of a token sequence as JSON, for checking a checkpoint or a conversion
//! against a reference implementation.

use anyhow::{bail, Result};
use clap::Args;
use gptoss_engine::{Batch, Capacity};

use crate::source::{self, ModelArgs};
use crate::{device, with_model};

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
    let loaded = source::load(&args.model)?;
    let n = tokens.len();
    let rows = if args.all_positions { n } else { 1 };
    let capacity = Capacity {
        max_batch_tokens: n,
        max_logit_rows: rows,
        slots: 1,
        kv_blocks: None,
        context_tokens: n,
    };
    let mut model = device::build_model(&args.model, &loaded.weights, capacity)?;
    let flat = with_model!(&mut model, m => {
        let mut batch = Batch::single(&tokens, 0, m.solo_table());
        if args.all_positions {
            batch.logit_rows = (0..n as u32).collect();
        }
        m.forward(&batch)?;
        m.logits(rows)?
    });
    let vocab = loaded.weights.config.vocab_size;
    let logits: Vec<&[f32]> = flat.chunks_exact(vocab).collect();
    let out = serde_json::json!({ "tokens": tokens, "logits": logits });
    println!("{out}");
    Ok(())
}
