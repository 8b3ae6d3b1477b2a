//! Where a model comes from (`--model PATH` or `--dummy NAME`), which device runs it, and building the
//! engine model on that device.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
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
    /// Element type of the GPU KV cache (the CPU backend always keeps f32). f16 and bf16 halve the
    /// cache at some accuracy: on the tiny fixtures up to 1.1e-2 (f16) and 7.6e-2 (bf16) relative
    /// logit error, f32 ≤ 1.6e-5.
    #[arg(long, value_enum, default_value_t = KvCache::F32)]
    pub kv_cache: KvCache,
    /// Cap on all GPU memory the engine allocates (e.g. 16GiB, 24GB, 8000MiB).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_vram: Option<u64>,
    /// Run the exact f32 CPU reference (what the GPU is tested against) instead of the fast CPU path
    /// (int8-quantized activations, within 1e-2 of the largest logit). Implies the CPU.
    #[arg(long)]
    pub exact: bool,
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

/// Element type of the GPU KV cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum KvCache {
    /// f32: the CPU reference's precision (the default).
    F32,
    /// float16: half the memory.
    F16,
    /// bfloat16: half the memory, the least precise.
    Bf16,
}

/// The device to run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Device {
    /// A GPU when one is usable, else the CPU.
    Auto,
    /// The CPU: the fast path, or the exact f32 reference with --exact.
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

/// Parses a memory size: a number with an optional unit (B, KB/MB/GB = 10^3.., KiB/MiB/GiB or K/M/G = 2^10..).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("`{text}` is not a size (expected e.g. 16GiB)"))?;
    let scale: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "m" | "mib" => 1024f64.powi(2),
        "g" | "gib" => 1024f64.powi(3),
        "t" | "tib" => 1024f64.powi(4),
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        other => {
            return Err(format!(
                "`{text}`: unknown unit `{other}` (use B, KiB, MiB, GiB, KB, MB, GB)"
            ))
        }
    };
    let bytes = value * scale;
    if !(bytes >= 1.0 && bytes.is_finite()) {
        return Err(format!("`{text}` must be a positive size"));
    }
    Ok(bytes as u64)
}
