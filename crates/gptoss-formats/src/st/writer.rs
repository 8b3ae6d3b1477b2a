//! Writes canonical weights as an `openai/gpt-oss` HF MXFP4 checkpoint (spec §2a): experts as
//! `*_blocks`/`*_scales` u8 (MXFP4 sources repacked byte-for-byte, others quantized as
//! `quant::mxfp4` does), every other tensor bf16, sharded safetensors plus
//! `model.safetensors.index.json`, `config.json` and the source's tokenizer files. Tensors are
//! encoded one at a time into anonymous temporary shard files ([`crate::atomic`]: a crash leaves
//! nothing), which are linked into a fresh staging folder renamed to `dest` only when all is written.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::atomic::{self, TempFile};
use crate::error::{Error, Result};
use crate::gguf::Progress;
use crate::quant::mxfp4;
use crate::tensor::QuantTensor;
use crate::weights::{Expert, ModelWeights};

use super::files::INDEX_FILE;
use super::writer_config::{copy_tokenizer_files, hf_config};
use super::writer_encode::{encode, EncodeError, ScaleCache};

/// What to do when the destination directory exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Existing {
    /// Fail, naming it.
    Refuse,
    /// Replace it once the new checkpoint is complete.
    Replace,
}

/// How to write an HF MXFP4 checkpoint.
pub struct HfWriteOptions<'a> {
    /// Largest shard in bytes (a tensor larger than this gets a shard of its own).
    pub shard_bytes: usize,
    /// The source model directory: its `config.json` token ids and tokenizer files are carried over.
    pub source_dir: Option<PathBuf>,
    /// Whether an existing `dest` is replaced.
    pub existing: Existing,
    /// Progress (and cancellation) hook, called after each tensor.
    pub progress: Option<Progress<'a>>,
}

/// Default shard size: 4 GiB, close to the `openai/gpt-oss` shards.
pub const DEFAULT_SHARD_BYTES: usize = 4 << 30;

/// Which expert projection a tensor comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Proj {
    GateUp,
    Down,
}

/// Where one output tensor's bytes come from.
pub(super) enum Source<'a> {
    /// A 2-D weight, written bf16.
    Dense(&'a QuantTensor),
    /// An f32 vector, written bf16.
    Vector(&'a [f32]),
    /// Expert codes `[E, rows, G, 16]`.
    Blocks(&'a [Expert], Proj),
    /// Expert E8M0 scales `[E, rows, G]`.
    Scales(&'a [Expert], Proj),
    /// Expert biases `[E, rows]`, bf16.
    Bias(&'a [Expert], Proj),
}

/// One tensor of the output.
pub struct HfTensor<'a> {
    /// HF name.
    pub name: String,
    /// Safetensors dtype (`BF16` or `U8`).
    pub dtype: &'static str,
    /// Shape.
    pub shape: Vec<usize>,
    pub(super) source: Source<'a>,
}

impl HfTensor<'_> {
    /// Bytes of the tensor's data.
    pub fn size_bytes(&self) -> usize {
        let n: usize = self.shape.iter().product();
        if self.dtype == "U8" {
            n
        } else {
            2 * n
        }
    }

    /// The source's format, for `--dry-run`.
    pub fn source_desc(&self) -> String {
        let expert = |x: &[Expert], p: Proj| {
            x.first()
                .map_or_else(String::new, |e| weight(e, p).format.describe())
        };
        match &self.source {
            Source::Dense(t) => t.format.describe(),
            Source::Vector(_) => "f32".into(),
            Source::Blocks(x, p) | Source::Scales(x, p) => expert(x, *p),
            Source::Bias(..) => "f32".into(),
        }
    }
}

pub(super) fn weight(e: &Expert, p: Proj) -> &QuantTensor {
    match p {
        Proj::GateUp => &e.gate_up.weight,
        Proj::Down => &e.down.weight,
    }
}

pub(super) fn bias(e: &Expert, p: Proj) -> Option<&[f32]> {
    match p {
        Proj::GateUp => e.gate_up.bias.as_deref(),
        Proj::Down => e.down.bias.as_deref(),
    }
}

/// Every tensor of the output in write order, checked to be writable as HF MXFP4.
pub fn plan(w: &ModelWeights) -> Result<Vec<HfTensor<'_>>> {
    let mut out = Vec::new();
    let mut push = |name: String, dtype: &'static str, shape: Vec<usize>, source| {
        out.push(HfTensor {
            name,
            dtype,
            shape,
            source,
        })
    };
    push(
        "model.embed_tokens.weight".into(),
        "BF16",
        w.embed.shape.clone(),
        Source::Dense(&w.embed),
    );
    for (l, layer) in w.layers.iter().enumerate() {
        let p = |s: &str| format!("model.layers.{l}.{s}");
        push(
            p("input_layernorm.weight"),
            "BF16",
            vec![layer.attn_norm.len()],
            Source::Vector(&layer.attn_norm),
        );
        for (hf, lin) in [
            ("q_proj", &layer.q),
            ("k_proj", &layer.k),
            ("v_proj", &layer.v),
            ("o_proj", &layer.o),
        ] {
            push(
                p(&format!("self_attn.{hf}.weight")),
                "BF16",
                lin.weight.shape.clone(),
                Source::Dense(&lin.weight),
            );
            if let Some(b) = &lin.bias {
                push(
                    p(&format!("self_attn.{hf}.bias")),
                    "BF16",
                    vec![b.len()],
                    Source::Vector(b),
                );
            }
        }
        push(
            p("self_attn.sinks"),
            "BF16",
            vec![layer.sinks.len()],
            Source::Vector(&layer.sinks),
        );
        push(
            p("post_attention_layernorm.weight"),
            "BF16",
            vec![layer.mlp_norm.len()],
            Source::Vector(&layer.mlp_norm),
        );
        push(
            p("mlp.router.weight"),
            "BF16",
            layer.router.weight.shape.clone(),
            Source::Dense(&layer.router.weight),
        );
        if let Some(b) = &layer.router.bias {
            push(
                p("mlp.router.bias"),
                "BF16",
                vec![b.len()],
                Source::Vector(b),
            );
        }
        let x = layer.experts.as_slice();
        for (hf, proj) in [("gate_up_proj", Proj::GateUp), ("down_proj", Proj::Down)] {
            let Some(first) = x.first() else { continue };
            let t = weight(first, proj);
            let (rows, cols) = match t.shape.as_slice() {
                [r, c] if c % mxfp4::BLOCK == 0 => (*r, *c),
                s => {
                    let msg = format!(
                        "expert weight {s:?} is not [rows, cols] with cols a multiple of 32"
                    );
                    return Err(Error::tensor(
                        "<hf-mxfp4 writer>",
                        p(&format!("mlp.experts.{hf}")),
                        msg,
                    ));
                }
            };
            let (e, g) = (x.len(), cols / mxfp4::BLOCK);
            push(
                p(&format!("mlp.experts.{hf}_blocks")),
                "U8",
                vec![e, rows, g, 16],
                Source::Blocks(x, proj),
            );
            push(
                p(&format!("mlp.experts.{hf}_scales")),
                "U8",
                vec![e, rows, g],
                Source::Scales(x, proj),
            );
            if x.iter().all(|e| bias(e, proj).is_some()) {
                push(
                    p(&format!("mlp.experts.{hf}_bias")),
                    "BF16",
                    vec![e, rows],
                    Source::Bias(x, proj),
                );
            }
        }
    }
    push(
        "model.norm.weight".into(),
        "BF16",
        vec![w.norm.len()],
        Source::Vector(&w.norm),
    );
    push(
        "lm_head.weight".into(),
        "BF16",
        w.lm_head.shape.clone(),
        Source::Dense(&w.lm_head),
    );
    Ok(out)
}

/// Splits the plan into shards of at most `shard_bytes` (a larger tensor gets its own shard).
pub fn shard(tensors: &[HfTensor], shard_bytes: usize) -> Vec<std::ops::Range<usize>> {
    let mut shards = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, t) in tensors.iter().enumerate() {
        let size = t.size_bytes();
        if i > start && bytes + size > shard_bytes {
            shards.push(start..i);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < tensors.len() {
        shards.push(start..tensors.len());
    }
    shards
}

/// What was written.
#[derive(Debug)]
pub struct HfWriteReport {
    /// The checkpoint directory.
    pub path: PathBuf,
    /// The shard files, in order.
    pub shards: Vec<String>,
    /// Tensors written.
    pub tensors: usize,
    /// Bytes of tensor data.
    pub data_bytes: usize,
    /// Tokenizer and other files copied from the source directory.
    pub copied: Vec<String>,
    /// Files written from the caller's contents (e.g. a tokenizer built from a GGUF vocabulary).
    pub generated: Vec<String>,
}

/// Writes `weights` to the directory `dest` as an HF MXFP4 checkpoint.
pub fn write_hf_mxfp4(
    weights: &ModelWeights,
    opts: HfWriteOptions,
    dest: &Path,
) -> Result<HfWriteReport> {
    write_hf_mxfp4_with_files(weights, opts, &[], dest)
}

/// [`write_hf_mxfp4`] with extra files `(name, contents)` written beside the tensors. When any are
/// given they stand for the tokenizer: nothing is copied from the source directory.
pub fn write_hf_mxfp4_with_files(
    weights: &ModelWeights,
    mut opts: HfWriteOptions,
    extra: &[(String, Vec<u8>)],
    dest: &Path,
) -> Result<HfWriteReport> {
    let tensors = plan(weights)?;
    let shards = shard(&tensors, opts.shard_bytes.max(1));
    if dest.exists() && opts.existing == Existing::Refuse {
        return Err(Error::format(
            dest,
            "already exists (give --force to replace it)",
        ));
    }
    let n = shards.len();
    let mut weight_map = serde_json::Map::new();
    let mut files = Vec::new();
    let mut written = Vec::with_capacity(n);
    let mut cache = ScaleCache::default();
    for (i, range) in shards.iter().enumerate() {
        let file = format!("model-{:05}-of-{n:05}.safetensors", i + 1);
        let part = &tensors[range.clone()];
        let temp = TempFile::create(dest)?;
        let shard = Shard {
            path: dest.join(&file),
            tensors: part,
        };
        write_shard(temp.handle()?, &shard, &mut cache, &mut opts.progress)?;
        for t in part {
            weight_map.insert(t.name.clone(), Value::String(file.clone()));
        }
        written.push(temp);
        files.push(file);
    }
    let tmp = TempDir::create(dest)?;
    for (temp, file) in written.into_iter().zip(&files) {
        temp.persist_as(&tmp.path.join(file))?;
    }
    let data_bytes: usize = tensors.iter().map(HfTensor::size_bytes).sum();
    let index = json!({"metadata": {"total_size": data_bytes}, "weight_map": weight_map});
    write_json(&tmp.path.join(INDEX_FILE), &index)?;
    let source_config = opts
        .source_dir
        .as_deref()
        .map(|d| d.join("config.json"))
        .filter(|p| p.is_file());
    let config = hf_config(&weights.config, source_config.as_deref())?;
    write_json(&tmp.path.join("config.json"), &config)?;
    let copied = match &opts.source_dir {
        Some(dir) if extra.is_empty() => copy_tokenizer_files(dir, &tmp.path)?,
        _ => Vec::new(),
    };
    let mut generated = Vec::with_capacity(extra.len());
    for (name, contents) in extra {
        if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
            return Err(Error::format(
                dest,
                format!("{name:?} is not a plain file name"),
            ));
        }
        let path = tmp.path.join(name);
        std::fs::write(&path, contents).map_err(|e| Error::io(&path, e))?;
        generated.push(name.clone());
    }
    tmp.commit(dest, opts.existing)?;
    Ok(HfWriteReport {
        path: dest.to_path_buf(),
        shards: files,
        tensors: tensors.len(),
        data_bytes,
        copied,
        generated,
    })
}

/// Writes pretty JSON to `path`.
pub(crate) fn write_json(path: &Path, value: &Value) -> Result<()> {
    let text =
        serde_json::to_string_pretty(value).map_err(|e| Error::format(path, e.to_string()))?;
    std::fs::write(path, text + "\n").map_err(|e| Error::io(path, e))
}

/// The safetensors header of `tensors` laid out in order, padded with spaces to 8 bytes.
fn header(tensors: &[HfTensor]) -> Vec<u8> {
    let mut map = serde_json::Map::new();
    map.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut at = 0usize;
    for t in tensors {
        let end = at + t.size_bytes();
        map.insert(
            t.name.clone(),
            json!({"dtype": t.dtype, "shape": t.shape, "data_offsets": [at, end]}),
        );
        at = end;
    }
    let mut text = Value::Object(map).to_string().into_bytes();
    text.resize(text.len().div_ceil(8) * 8, b' ');
    text
}

/// One shard's tensors and the path it will have (for messages).
struct Shard<'s, 'a> {
    path: PathBuf,
    tensors: &'s [HfTensor<'a>],
}

fn write_shard(
    file: File,
    shard: &Shard,
    cache: &mut ScaleCache,
    progress: &mut Option<Progress>,
) -> Result<()> {
    let (path, tensors) = (shard.path.as_path(), shard.tensors);
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let head = header(tensors);
    let io = |e| Error::io(path, e);
    out.write_all(&(head.len() as u64).to_le_bytes())
        .map_err(io)?;
    out.write_all(&head).map_err(io)?;
    for t in tensors {
        let written = encode(t, cache, &mut out).map_err(|e| match e {
            EncodeError::Io(e) => Error::io(path, e),
            EncodeError::Short => Error::tensor(
                path.display().to_string(),
                &t.name,
                "source bytes shorter than its shape",
            ),
        })?;
        if written != t.size_bytes() {
            let msg = format!("wrote {written} bytes, its shape needs {}", t.size_bytes());
            return Err(Error::tensor(path.display().to_string(), &t.name, msg));
        }
        if let Some(p) = progress.as_mut() {
            p(&t.name, written)?;
        }
    }
    out.into_inner()
        .map_err(|e| Error::io(path, e.into_error()))?;
    Ok(())
}

/// A fresh staging folder `<dest>.tmp-<pid>-<n>/`, removed unless committed.
struct TempDir {
    path: PathBuf,
    committed: bool,
}

impl TempDir {
    fn create(dest: &Path) -> Result<Self> {
        atomic::sweep_stale(dest);
        let path = atomic::temp_name(dest);
        // Created here and now (fails if anything is at that name): nothing planted is written into.
        std::fs::create_dir(&path).map_err(|e| Error::io(&path, e))?;
        Ok(TempDir {
            path,
            committed: false,
        })
    }

    /// Renames the directory to `dest`, replacing an existing one when asked (old one removed last).
    fn commit(mut self, dest: &Path, existing: Existing) -> Result<()> {
        let mut old = None;
        if dest.exists() {
            if existing == Existing::Refuse {
                return Err(Error::format(
                    dest,
                    "already exists (give --force to replace it)",
                ));
            }
            // The old one moves to a temporary name (swept if a crash leaves it) and goes last.
            let o = atomic::temp_name(dest);
            std::fs::rename(dest, &o).map_err(|e| Error::io(dest, e))?;
            old = Some(o);
        }
        std::fs::rename(&self.path, dest).map_err(|e| Error::io(dest, e))?;
        self.committed = true;
        if let Some(o) = old {
            let removed = if o.is_dir() {
                std::fs::remove_dir_all(&o)
            } else {
                std::fs::remove_file(&o)
            };
            removed.map_err(|e| Error::io(&o, e))?;
        }
        Ok(())
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.committed {
            // Unfinished: never leave a partial checkpoint behind. Best effort.
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_padded_and_offsets_are_contiguous() {
        let a = vec![1.0f32; 3];
        let t = |name: &str| HfTensor {
            name: name.into(),
            dtype: "BF16",
            shape: vec![3],
            source: Source::Vector(&a),
        };
        let ts = [t("x"), t("y")];
        let h = header(&ts);
        assert_eq!(h.len() % 8, 0);
        let v: Value = serde_json::from_slice(&h).unwrap();
        assert_eq!(v["x"]["data_offsets"], json!([0, 6]));
        assert_eq!(v["y"]["data_offsets"], json!([6, 12]));
        assert_eq!(shard(&ts, 6), vec![0..1, 1..2]);
        assert_eq!(shard(&ts, 12), vec![0..2]);
        assert_eq!(shard(&ts, 1), vec![0..1, 1..2]);
    }
}
