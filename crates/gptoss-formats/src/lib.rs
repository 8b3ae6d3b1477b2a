//! gptoss-formats: every gpt-oss checkpoint layout people have, read into one canonical weight set.
//!
//! This crate does I/O and codecs only; it knows nothing of compute. A reader maps a file's tensor
//! names to canonical names (`layers.3.q.weight`, `layers.3.experts.7.down.weight`, ...) and yields
//! [`QuantTensor`]s that keep the file's packed format (MXFP4, bitsandbytes NF4/FP4, Q8_0, ...),
//! zero-copy from the mmap where the layout allows; where the file stores a tensor another way (dense
//! `[E, in, out]` experts, gate and up apart) the tensor is a lazy [`Storage`] recipe over mmap windows,
//! built only when read, so a converter holds one tensor at a time. [`ModelWeights::assemble`] then
//! checks every tensor against the [`ModelConfig`] and reports every problem at once.
//!
//! Key decision: quantized weights are never expanded to 16 bits at load. The reference decode in
//! [`tensor`] defines each format's values; backends read the packed bytes directly.
//!
//! ```no_run
//! let ckpt = gptoss_formats::load(std::path::Path::new("gpt-oss-20b/"))?;
//! println!("{:?}: {} layers", ckpt.layout, ckpt.weights.config.num_hidden_layers);
//! # Ok::<(), gptoss_formats::Error>(())
//! ```
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod atomic;
pub mod config;
pub mod dummy;
pub mod error;
pub mod gguf;
pub mod limits;
pub mod quant;
pub mod st;
pub mod storage;
pub mod tensor;
pub mod weights;

pub use config::{LayerType, ModelConfig, Window, Yarn};
pub use error::{Error, Result};
pub use tensor::{
    DType, Lut4, Lut4Scales, NibbleOrder, QuantTensor, ScaleFormat, Storage, TensorFormat,
};
pub use weights::{Expert, LayerWeights, Linear, ModelWeights, TensorMap};

use std::path::{Path, PathBuf};

/// Which checkpoint layout a path holds (spec §6).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Layout {
    /// HF `openai/gpt-oss-*` root: MXFP4 experts as `_blocks`/`_scales` (spec §2a).
    HfMxfp4,
    /// OpenAI `original/` folder naming (spec §2a').
    OpenAiOriginal,
    /// HF dense experts `[E, in, out]` in bf16/f16/f32 (spec §2b).
    HfDense,
    /// Per-expert tensors of a merged fine-tune; the string names the pattern (spec §2d).
    PerExpert(String),
    /// bitsandbytes 4-bit linears (spec §2c).
    Bnb4bit,
    /// GGUF v3 (spec §3).
    Gguf,
}

/// One tensor as the file stores it, for `inspect`.
#[derive(Clone, Debug)]
pub struct SourceTensor {
    /// Name in the file.
    pub name: String,
    /// Stored type as the file names it (`BF16`, `U8`, `MXFP4`, `Q4_K`, ...).
    pub dtype: String,
    /// Stored shape (outermost first).
    pub shape: Vec<usize>,
    /// Bytes in the file.
    pub size_bytes: usize,
}

/// A vocabulary carried inside a checkpoint file (GGUF `tokenizer.ggml.*`).
#[derive(Clone, Debug, Default)]
pub struct EmbeddedVocab {
    /// `tokenizer.ggml.model` (`gpt2` for byte-level BPE).
    pub model: String,
    /// `tokenizer.ggml.pre`.
    pub pre: Option<String>,
    /// Token strings by id (GPT-2 byte-to-unicode mapped for byte-level BPE).
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.token_type` by id, when present.
    pub token_types: Vec<i32>,
    /// Merges as `"a b"` strings.
    pub merges: Vec<String>,
    /// `tokenizer.chat_template`.
    pub chat_template: Option<String>,
    /// bos/eos/pad ids when present.
    pub bos: Option<u32>,
    /// End-of-sequence id.
    pub eos: Option<u32>,
    /// Padding id.
    pub pad: Option<u32>,
}

/// A loaded checkpoint: canonical weights plus what `inspect` reports about the source.
#[derive(Debug)]
pub struct Checkpoint {
    /// Where it was read from.
    pub path: PathBuf,
    /// Detected layout.
    pub layout: Layout,
    /// The canonical weights.
    pub weights: ModelWeights,
    /// Tensors as stored in the file(s).
    pub source_tensors: Vec<SourceTensor>,
    /// Conversions made at load (e.g. "Q4_K → f16 for 12 tensors"), for `inspect`.
    pub notes: Vec<String>,
    /// A vocabulary stored inside the checkpoint, if any.
    pub vocab: Option<EmbeddedVocab>,
    /// The model directory's `tokenizer.json`, if present.
    pub tokenizer_json: Option<PathBuf>,
}

/// What a reader returns before assembly.
#[derive(Debug)]
pub struct RawCheckpoint {
    /// Detected layout.
    pub layout: Layout,
    /// Hyper-parameters.
    pub config: ModelConfig,
    /// Canonical tensors.
    pub tensors: TensorMap,
    /// Tensors as stored.
    pub source_tensors: Vec<SourceTensor>,
    /// Conversions made at load.
    pub notes: Vec<String>,
    /// Embedded vocabulary.
    pub vocab: Option<EmbeddedVocab>,
}

/// Detects the layout at `path` (a model directory, a `.safetensors` file or a `.gguf` file), reads
/// it and assembles the canonical weights.
pub fn load(path: &Path) -> Result<Checkpoint> {
    let raw = read_raw(path)?;
    let weights = ModelWeights::assemble(raw.config, raw.tensors, &path.display().to_string())?;
    let dir = if path.is_dir() {
        Some(path.to_path_buf())
    } else {
        path.parent().map(Path::to_path_buf)
    };
    let tokenizer_json = dir
        .map(|d| d.join("tokenizer.json"))
        .filter(|p| p.is_file());
    Ok(Checkpoint {
        path: path.to_path_buf(),
        layout: raw.layout,
        weights,
        source_tensors: raw.source_tensors,
        notes: raw.notes,
        vocab: raw.vocab,
        tokenizer_json,
    })
}

/// Reads a checkpoint into canonical tensors without assembling (for `inspect` and conversion).
pub fn read_raw(path: &Path) -> Result<RawCheckpoint> {
    if !path.exists() {
        return Err(Error::UnknownLayout {
            path: path.to_path_buf(),
            message: "no such file or directory".into(),
        });
    }
    // A `.gguf` name goes to the GGUF reader even when its magic is wrong, so a corrupt file is
    // reported as one ("not a GGUF file: magic is ...") rather than as a folder without config.json.
    let named_gguf = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
    if path.is_file() && (named_gguf || is_gguf(path)?) {
        return gguf::read_checkpoint(path);
    }
    st::read_checkpoint(path)
}

fn is_gguf(path: &Path) -> Result<bool> {
    use std::io::Read;
    let mut magic = [0u8; 4];
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    Ok(f.read_exact(&mut magic).is_ok() && &magic == b"GGUF")
}
