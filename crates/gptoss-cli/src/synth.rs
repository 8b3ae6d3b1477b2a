//! `gptoss synth --dummy gpt-oss-20b OUT_DIR`: the random weights of `--dummy` written as an HF MXFP4
//! checkpoint (config.json + sharded safetensors, no tokenizer), so other engines (transformers,
//! vLLM) can be run on exactly the weights gptoss benchmarks. `--layers N` keeps the first N layers
//! (for quick checks against transformers).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use gptoss_formats::config::alternating_layer_types;
use gptoss_formats::st::{self, Existing, HfWriteOptions, DEFAULT_SHARD_BYTES};

use crate::source::{dummy_config, DummyModel};

/// Arguments of `gptoss synth`.
#[derive(Args)]
pub struct SynthArgs {
    /// Which model's shapes.
    #[arg(long, value_name = "NAME")]
    dummy: DummyModel,
    /// The directory to write.
    output: PathBuf,
    /// Seed of the random weights (0 is what `--dummy` uses everywhere else).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Keep only this many layers.
    #[arg(long, hide = true, value_parser = crate::source::size_in(1, gptoss_formats::limits::MAX_LAYERS))]
    layers: Option<usize>,
    /// Largest safetensors shard in bytes.
    #[arg(long, hide = true, default_value_t = DEFAULT_SHARD_BYTES, value_parser = crate::source::size_in(1, 1 << 40))]
    shard_bytes: usize,
    /// Replace an existing output.
    #[arg(long)]
    force: bool,
}

/// Builds and writes the dummy checkpoint.
pub fn run(args: SynthArgs) -> Result<()> {
    let mut config = dummy_config(args.dummy);
    if let Some(n) = args.layers {
        if n == 0 || n > config.num_hidden_layers {
            bail!("--layers {n}: expected 1..={}", config.num_hidden_layers);
        }
        config.num_hidden_layers = n;
        config.layer_types = alternating_layer_types(n, 2);
    }
    if args.output.exists() && !args.force {
        bail!(
            "{}: already exists (give --force to replace it)",
            args.output.display()
        );
    }
    let weights = gptoss_formats::dummy::dummy_weights(&config, args.seed);
    let opts = HfWriteOptions {
        shard_bytes: args.shard_bytes,
        source_dir: None,
        existing: if args.force {
            Existing::Replace
        } else {
            Existing::Refuse
        },
        progress: None,
    };
    let report = st::write_hf_mxfp4(&weights, opts, &args.output)
        .with_context(|| format!("writing {}", args.output.display()))?;
    eprintln!(
        "wrote {} ({} tensors in {} shard(s))",
        report.path.display(),
        report.tensors,
        report.shards.len()
    );
    Ok(())
}
