//! Where a model comes from (`--model PATH` or `--dummy NAME`), which device runs it, and building the
//! engine model on that device.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use gptoss_engine::MAX_CONTEXT_TOKENS;
use gptoss_formats::{Checkpoint, ModelConfig, ModelWeights};

/// The model-selection arguments shared by every subcommand that runs a model.
#[derive(Args, Clone, Debug)]
pub struct ModelArgs {
    /// Model directory, .safetensors file or .gguf file, or a Hugging Face repo
    /// `ORG/NAME[@REVISION][:QUANT]` (downloaded once into the Hugging Face cache; `:QUANT` picks a GGUF).
    #[arg(
        short = 'm',
        long,
        required_unless_present = "dummy",
        conflicts_with = "dummy"
    )]
    pub model: Option<PathBuf>,
    /// The file of a Hub repo to load when it holds several GGUFs (llama.cpp's --hf-file).
    #[arg(long, value_name = "FILE", requires = "model")]
    pub hf_file: Option<String>,
    /// Random weights of a real model's shapes instead of a file: gpt-oss-20b or gpt-oss-120b.
    #[arg(long, value_name = "NAME")]
    pub dummy: Option<DummyModel>,
    /// Where to run.
    #[arg(long, value_enum, default_value_t = Device::Auto)]
    pub device: Device,
    /// Context length to reserve KV cache for.
    #[arg(short = 'c', long, default_value_t = 4096, value_parser = size_in(1, MAX_CONTEXT_TOKENS))]
    pub ctx: usize,
    /// CPU threads (default: one per core).
    #[arg(short = 't', long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub threads: Option<u32>,
    /// Element type of the GPU KV cache (the CPU backend always keeps f32). f16 and bf16 halve the
    /// cache at some accuracy: on the tiny fixtures up to 1.1e-2 (f16) and 7.6e-2 (bf16) relative
    /// logit error, f32 ≤ 1.6e-5.
    #[arg(long, value_enum, default_value_t = KvCache::F32)]
    pub kv_cache: KvCache,
    /// Cap on all GPU memory the engine allocates (e.g. 16GiB, 24GB, 8000MiB). When the weights and one
    /// sequence's KV cache do not fit, the experts of as many layers as needed stay in host memory and run
    /// on the CPU (the plan printed at start says how many). With several --gpus, the budget of each.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_vram: Option<u64>,
    /// The GPUs to run on, by CUDA ordinal (e.g. `1`, or `0,1`). One GPU picks that card. Several split
    /// the model by layers (a pipeline, what llama.cpp's layer split does): each GPU holds a contiguous run
    /// of layers with their KV cache, the first also the embedding, the last the final norm and lm_head;
    /// only the hidden state crosses between them, through host memory, and they run one after another
    /// (the split is for memory, not speed). An ordinal may repeat: `--gpus 0,0 --max-vram 20GiB` runs two
    /// "virtual devices" on GPU 0, each with its own budget (for testing the split on one card). With
    /// several GPUs, --max-vram is each one's budget (required when an ordinal repeats) and experts stay
    /// on the GPUs (no --cpu-moe, --n-cpu-moe or --expert-cache SIZE yet).
    #[arg(long, value_name = "LIST", value_delimiter = ',', num_args = 1..)]
    pub gpus: Vec<usize>,
    /// With several --gpus: the number of layers of each, in order (e.g. `10,14` for a 24-layer model).
    /// By default the layers are cut in proportion to each GPU's memory budget; the start-up lines show
    /// the split.
    #[arg(long, value_name = "LIST", value_delimiter = ',', num_args = 1.., requires = "gpus")]
    pub split: Vec<usize>,
    /// Dense weights (attention projections, embedding, lm_head) as stored, or `q8_0`: quantized to
    /// 8 bits at load as the ggml-org GGUFs store them (bit for bit what llama.cpp's converter writes),
    /// half the bytes a decoded token reads. Opt-in: on a full-size random 20b, 128 positions, its logits
    /// agree with the bf16 weights' on the top token at 37.5% of positions, mean KL 0.089 (that random
    /// model magnifies any rounding: bf16 KV rounding costs it as much); see bench/BENCHMARKS.md.
    #[arg(long, value_enum, default_value_t = DenseWeights::Stored)]
    pub dense: DenseWeights,
    /// Keep every layer's experts in host memory and run them on the CPU, everything else on the GPU
    /// (llama.cpp's --cpu-moe).
    #[arg(long, conflicts_with = "n_cpu_moe")]
    pub cpu_moe: bool,
    /// Keep the experts of the first N layers in host memory and run them on the CPU (llama.cpp's
    /// --n-cpu-moe).
    #[arg(long, value_name = "N")]
    pub n_cpu_moe: Option<usize>,
    /// Hot-expert cache for experts kept in host memory (--cpu-moe, --n-cpu-moe, or a --max-vram too
    /// small for all): GPU memory that holds the most-routed of them, chosen from routing counts and
    /// refreshed every 16 steps; pairs routed to a cached expert run on the GPU, the rest on the CPU.
    /// `auto` takes the GPU memory left after the weights, the KV cache (every slot at full context)
    /// and the workspace (with no --max-vram, less a margin of 1/16 of the card, at least 1 GiB, for
    /// what the driver keeps); `off` runs every host expert on the CPU (llama.cpp's --cpu-moe); a SIZE
    /// (e.g. 4GiB) is taken before the KV cache is sized. The hit rate is in the run's stats line and
    /// in /metrics.
    #[arg(long, value_name = "auto|off|SIZE", default_value = "auto", value_parser = parse_expert_cache)]
    pub expert_cache: ExpertCacheSize,
    /// Stream experts kept in host memory to the GPU for big steps (prompts): when a step routes so
    /// many pairs per layer that the CPU would take longer than copying all of a layer's experts over
    /// PCIe (20b on the H200 host: from 184 pairs, 46 tokens; the cost model is in bench/NOTES.md), each host layer's
    /// experts are copied into one layer's worth of GPU memory and its MoE runs there, with the same
    /// result as the all-GPU model. `auto` reserves that memory (one layer's experts, 0.39 GiB on 20b)
    /// before the KV cache is sized when the weights, it and one sequence's KV cache fit the budget,
    /// and says so in the device memory plan; it never moves more experts to the host. `off`: big steps
    /// run their host experts on the CPU too.
    #[arg(long, value_enum, default_value_t = StreamExperts::Auto)]
    pub stream_experts: StreamExperts,
    /// Exact math everywhere: on the CPU the f32 reference (what the GPU is tested against) instead of the
    /// fast path (int8-quantized activations, within 1e-2 of the largest logit); with --device cuda the
    /// exact kernels for prompts too: attention in f32 instead of on f16 tensor cores (steps of 4 or more
    /// tokens per sequence), and past 64 tokens MXFP4 experts with x in two f16 parts instead of the
    /// f16-activation GEMM and dense projections with x in three bf16 parts instead of two (slower prefill;
    /// speed and KL in bench/BENCHMARKS.md), and the CPU reference for experts kept in host memory
    /// (--cpu-moe, --n-cpu-moe, or a --max-vram too small for all).
    #[arg(long)]
    pub exact: bool,
}

/// `--stream-experts`: whether big steps copy host experts to the GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StreamExperts {
    /// When one layer's experts fit the device memory plan.
    Auto,
    /// Never.
    Off,
}

/// `--expert-cache`: how much GPU memory the hot-expert cache takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpertCacheSize {
    /// What the plan leaves spare.
    Auto,
    /// None.
    Off,
    /// This many bytes.
    Bytes(u64),
}

fn parse_expert_cache(text: &str) -> Result<ExpertCacheSize, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "auto" => Ok(ExpertCacheSize::Auto),
        "off" | "0" => Ok(ExpertCacheSize::Off),
        _ => parse_size(text)
            .map(ExpertCacheSize::Bytes)
            .map_err(|e| format!("{e}; or `auto` or `off`")),
    }
}

/// How the dense weights (attention projections, embedding, lm_head) are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DenseWeights {
    /// As the checkpoint stores them (bf16 in HF checkpoints).
    Stored,
    /// Quantized to ggml Q8_0 at load, as the ggml-org GGUFs store them.
    #[value(name = "q8_0")]
    Q8_0,
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
    if let Some(n) = args.threads {
        // Fails only when the pool already exists (a second model in `eval kld`): it has these threads.
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(n as usize)
            .build_global();
    }
    let mut loaded = load_stored(args)?;
    if args.dense == DenseWeights::Q8_0 {
        loaded.weights = loaded.weights.with_dense_q8_0();
        eprintln!("[--dense q8_0: attention projections, embedding and lm_head quantized to Q8_0 at load]");
    }
    Ok(loaded)
}

/// The weights as the checkpoint stores them (or random ones of a real model's shapes).
fn load_stored(args: &ModelArgs) -> Result<Loaded> {
    match (&args.model, args.dummy) {
        (_, Some(d)) => Ok(Loaded {
            weights: gptoss_formats::dummy::dummy_weights(&dummy_config(d), 0),
            checkpoint: None,
        }),
        (Some(name), None) => {
            let path = &crate::hub::model_path(name, args.hf_file.as_deref())?;
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

/// A flag's parser for a count in `min..=max` (out of range: clap's error naming the flag and the range,
/// before anything is sized by it).
pub fn size_in(min: usize, max: usize) -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::<usize>::new().range(min as u64..=max as u64)
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
