//! `gptoss convert`: any checkpoint the loaders read → a GGUF llama.cpp loads (dense tensors in
//! `--type`, experts MXFP4 unless `--experts` says otherwise) or an `openai/gpt-oss` HF MXFP4
//! directory (`--to hf-mxfp4`). Output is streamed to a temporary name and renamed at the end;
//! an error or Ctrl-C leaves nothing under the target name. `--dry-run` prints the plan only.

mod hf_tokenizer;
mod plan;
mod progress;
mod vocab;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use gptoss_formats::gguf::{self, ExpertType, OutType, WriteOptions};
use gptoss_formats::st::{self, Existing, HfWriteOptions, DEFAULT_SHARD_BYTES};
use gptoss_formats::Checkpoint;

pub use plan::print_plan;

/// The plan of `gptoss convert --dry-run` with the default types (for `inspect --convert-to`).
pub fn print_default_plan(weights: &gptoss_formats::ModelWeights, target: Target) -> Result<()> {
    print_plan(weights, target, DenseType::Q8_0, ExpertsArg::Mxfp4)
}

/// Arguments of `gptoss convert`.
#[derive(Args)]
pub struct ConvertArgs {
    /// Model directory, .safetensors or .gguf file to read.
    input: PathBuf,
    /// The .gguf file (or, with --to hf-mxfp4, the directory) to write.
    output: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Target::Gguf)]
    to: Target,
    /// GGUF type of dense 2-D weights (embeddings, attention, lm_head). `mxfp4` is llama.cpp's
    /// MXFP4_MOE mix: dense Q8_0, experts MXFP4, file type MOSTLY_MXFP4_MOE (38).
    #[arg(long = "type", value_enum, default_value_t = DenseType::Q8_0)]
    dense: DenseType,
    /// GGUF type of the expert weights: MXFP4 sources are repacked byte-for-byte, dense ones quantized.
    #[arg(long, value_enum, default_value_t = ExpertsArg::Mxfp4)]
    experts: ExpertsArg,
    /// Replace an existing output.
    #[arg(long)]
    force: bool,
    /// Print what would be written (per tensor group: source type → output type, bytes) and stop.
    #[arg(long)]
    dry_run: bool,
    /// Largest safetensors shard in bytes (--to hf-mxfp4).
    #[arg(long, hide = true, default_value_t = DEFAULT_SHARD_BYTES, value_parser = crate::source::size_in(1, 1 << 40))]
    shard_bytes: usize,
}

/// Output format of `gptoss convert`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Target {
    /// One GGUF file in llama.cpp's gpt-oss layout.
    Gguf,
    /// A directory of sharded safetensors in the openai/gpt-oss layout.
    #[value(name = "hf-mxfp4")]
    HfMxfp4,
}

/// `--type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DenseType {
    /// llama.cpp's MXFP4_MOE mix (dense Q8_0, experts MXFP4).
    Mxfp4,
    /// ggml Q8_0 (llama.cpp's reference quantizer).
    #[value(name = "q8_0")]
    Q8_0,
    /// bfloat16.
    Bf16,
    /// IEEE half.
    F16,
    /// IEEE single.
    F32,
}

/// `--experts`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ExpertsArg {
    /// MXFP4 (repacked or quantized).
    Mxfp4,
    /// bfloat16.
    Bf16,
    /// ggml Q8_0.
    #[value(name = "q8_0")]
    Q8_0,
    /// IEEE half.
    F16,
    /// IEEE single.
    F32,
}

impl DenseType {
    /// The GGUF writer's type for dense weights.
    pub fn out_type(self) -> OutType {
        match self {
            DenseType::Mxfp4 => OutType::Mxfp4Moe,
            DenseType::Q8_0 => OutType::Q8_0,
            DenseType::Bf16 => OutType::BF16,
            DenseType::F16 => OutType::F16,
            DenseType::F32 => OutType::F32,
        }
    }
}

impl ExpertsArg {
    /// The GGUF writer's type for experts.
    pub fn expert_type(self) -> ExpertType {
        match self {
            ExpertsArg::Mxfp4 => ExpertType::Mxfp4,
            ExpertsArg::Bf16 => ExpertType::Other(OutType::BF16),
            ExpertsArg::Q8_0 => ExpertType::Other(OutType::Q8_0),
            ExpertsArg::F16 => ExpertType::Other(OutType::F16),
            ExpertsArg::F32 => ExpertType::Other(OutType::F32),
        }
    }
}

/// Runs the conversion (or prints its plan).
pub fn run(args: ConvertArgs) -> Result<()> {
    if args.to == Target::HfMxfp4
        && (args.dense != DenseType::Q8_0 || args.experts != ExpertsArg::Mxfp4)
    {
        bail!("--type and --experts are GGUF options; --to hf-mxfp4 always writes bf16 dense tensors and MXFP4 experts");
    }
    if args.input == args.output {
        bail!(
            "{}: the output would overwrite the input",
            args.output.display()
        );
    }
    let ckpt = gptoss_formats::load(&args.input)
        .with_context(|| format!("reading {}", args.input.display()))?;
    if args.dry_run {
        print_plan(&ckpt.weights, args.to, args.dense, args.experts)?;
        return Ok(());
    }
    if args.output.exists() && !args.force {
        bail!(
            "{}: already exists (give --force to replace it)",
            args.output.display()
        );
    }
    check_parent(&args.output)?;
    let interrupt = progress::Interrupt::install()?;
    match args.to {
        Target::Gguf => to_gguf(&ckpt, &args, &interrupt),
        Target::HfMxfp4 => to_hf(&ckpt, &args, &interrupt),
    }
}

/// The output's directory must exist; say so before any work.
fn check_parent(output: &Path) -> Result<()> {
    let parent = output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !parent.is_dir() {
        bail!(
            "{}: the directory {} does not exist",
            output.display(),
            parent.display()
        );
    }
    Ok(())
}

fn to_gguf(ckpt: &Checkpoint, args: &ConvertArgs, interrupt: &progress::Interrupt) -> Result<()> {
    let (vocab, vocab_note) = vocab::for_gguf(ckpt)?;
    let (entries, _) = gguf::plan_model(
        &ckpt.weights,
        args.dense.out_type(),
        args.experts.expert_type(),
    )?;
    let total: usize = entries.iter().map(|e| e.bytes).sum();
    let mut bar = progress::Bar::new(total, &args.output, interrupt);
    let mut hook = |name: &str, bytes: usize| bar.advance(name, bytes);
    let opts = WriteOptions {
        dense: args.dense.out_type(),
        experts: args.experts.expert_type(),
        progress: Some(&mut hook),
    };
    let report = gguf::write_model_with(&ckpt.weights, vocab.as_ref(), opts, &args.output)
        .with_context(|| format!("writing {}", args.output.display()))?;
    bar.finish();
    eprintln!(
        "wrote {} ({} tensors, {})",
        report.path.display(),
        report.tensors.len(),
        plan::human(total)
    );
    for note in report.notes.iter().chain(&vocab_note) {
        eprintln!("note: {note}");
    }
    Ok(())
}

fn to_hf(ckpt: &Checkpoint, args: &ConvertArgs, interrupt: &progress::Interrupt) -> Result<()> {
    // A GGUF carries its vocabulary: write it as the HF tokenizer files (nothing is copied then).
    let extra = match &ckpt.vocab {
        Some(v) => hf_tokenizer::tokenizer_files(v, ckpt.weights.config.max_position_embeddings)
            .with_context(|| format!("{}: the embedded vocabulary", args.input.display()))?,
        None => Vec::new(),
    };
    let tensors = st::writer::plan(&ckpt.weights)?;
    let total: usize = tensors.iter().map(|t| t.size_bytes()).sum();
    let mut bar = progress::Bar::new(total, &args.output, interrupt);
    let mut hook = |name: &str, bytes: usize| bar.advance(name, bytes);
    let source_dir = if args.input.is_dir() {
        Some(args.input.clone())
    } else {
        args.input.parent().map(Path::to_path_buf)
    };
    let opts = HfWriteOptions {
        shard_bytes: args.shard_bytes,
        source_dir,
        existing: if args.force {
            Existing::Replace
        } else {
            Existing::Refuse
        },
        progress: Some(&mut hook),
    };
    let report = st::write_hf_mxfp4_with_files(&ckpt.weights, opts, &extra, &args.output)
        .with_context(|| format!("writing {}", args.output.display()))?;
    bar.finish();
    let tokenizer = match (report.copied.is_empty(), report.generated.is_empty()) {
        (true, true) => "no tokenizer files".to_string(),
        (false, _) => format!("copied: {}", report.copied.join(", ")),
        (true, false) => format!("from the GGUF vocabulary: {}", report.generated.join(", ")),
    };
    eprintln!(
        "wrote {} ({} tensors in {} shard(s), {}; {tokenizer})",
        report.path.display(),
        report.tensors,
        report.shards.len(),
        plan::human(report.data_bytes),
    );
    Ok(())
}
