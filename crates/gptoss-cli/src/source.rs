//! Where a model comes from (`--model PATH` or `--dummy NAME`), which device runs it, and building the
//! engine model on that device.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use gptoss_engine::{Capacity, CpuBackend, Model};
use gptoss_formats::{Checkpoint, ModelConfig, ModelWeights};

/// The model-selection arguments shared by every subcommand that runs a model.
#[derive(Args, Clone, Debug)]
pub struct ModelArgs {
    /// Model directory, .safetensors file or .gguf file.
    #[arg(long, required_unless_present = "dummy", conflicts_with = "dummy")]
    pub model: Option<PathBuf>,
    /// Random weights of a real model's shapes instead of a file: gpt-oss-20b or gpt-oss-120b.
    #[arg(long, value_name = "NAME")]
    pub dummy: Option<DummyModel>,
    /// Where to run.
    #[arg(long, value_enum, default_value_t = Device::Auto)]
    pub device: Device,
    /// Context length to reserve KV cache for.
    #[arg(long, default_value_t = 4096)]
    pub ctx: usize,
}

/// A model of real shapes with random weights.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum DummyModel {
    /// 24 layers, 32 experts.
    #[value(name = "gpt-oss-20b")]
    GptOss20b,
    /// 36 layers, 128 experts.
    #[value(name = "gpt-oss-120b")]
    GptOss120b,
}

/// The device to run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Device {
    /// A GPU when one is usable, else the CPU.
    Auto,
    /// The exact f32 CPU backend.
    Cpu,
    /// An NVIDIA GPU (compute capability 8.0 or newer).
    Cuda,
}

/// A loaded model and, when it came from a file, the checkpoint's description.
pub struct Loaded {
    /// The canonical weights.
    pub weights: ModelWeights,
    /// The checkpoint, when read from a file.
    pub checkpoint: Option<CheckpointInfo>,
}

/// What the CLI keeps of a checkpoint besides its weights.
pub struct CheckpointInfo {
    /// The model directory's tokenizer.json, if any.
    pub tokenizer_json: Option<PathBuf>,
    /// A vocabulary embedded in the file (GGUF).
    pub vocab: Option<gptoss_formats::EmbeddedVocab>,
}

/// Reads the checkpoint or builds the dummy weights.
pub fn load(args: &ModelArgs) -> Result<Loaded> {
    match (&args.model, args.dummy) {
        (_, Some(d)) => Ok(Loaded {
            weights: gptoss_formats::dummy::dummy_weights(&dummy_config(d), 0),
            checkpoint: None,
        }),
        (Some(path), None) => {
            let Checkpoint {
                weights,
                tokenizer_json,
                vocab,
                ..
            } = gptoss_formats::load(path)
                .with_context(|| format!("loading {}", path.display()))?;
            Ok(Loaded {
                weights,
                checkpoint: Some(CheckpointInfo {
                    tokenizer_json,
                    vocab,
                }),
            })
        }
        (None, None) => bail!("give --model PATH or --dummy gpt-oss-20b"),
    }
}

/// The config of a dummy model.
pub fn dummy_config(d: DummyModel) -> ModelConfig {
    match d {
        DummyModel::GptOss20b => ModelConfig::gpt_oss_20b(),
        DummyModel::GptOss120b => ModelConfig::gpt_oss_120b(),
    }
}

/// Resolves `auto` and rejects devices this build cannot use.
pub fn resolve_device(device: Device) -> Result<Device> {
    match device {
        Device::Cpu | Device::Auto => Ok(Device::Cpu),
        Device::Cuda => bail!(
            "--device cuda: this gptoss has no CUDA backend yet (it is being built); use --device cpu"
        ),
    }
}

/// Builds a CPU model with room for one sequence of `ctx` tokens and `max_batch_tokens` per step.
pub fn cpu_model(
    weights: &ModelWeights,
    ctx: usize,
    max_batch_tokens: usize,
    logit_rows: usize,
) -> Result<Model<CpuBackend>> {
    let capacity = Capacity {
        max_batch_tokens,
        max_logit_rows: logit_rows,
        slots: 1,
        context_tokens: ctx,
    };
    Ok(Model::new(CpuBackend, weights, capacity)?)
}

/// Parses `1,2,3` into token ids.
pub fn parse_tokens(text: &str) -> Result<Vec<u32>> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<u32>()
                .with_context(|| format!("--tokens: `{s}` is not a token id (expected e.g. 1,2,3)"))
        })
        .collect()
}
