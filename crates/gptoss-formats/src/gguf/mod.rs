//! GGUF v3 (llama.cpp) reader for gpt-oss (spec §3): parses the container, maps the file, and
//! yields canonical tensors that stay zero-copy windows of the mmap wherever the ggml type is one
//! the backends read (F32/F16/BF16, Q8_0, Q4_0/IQ4_NL/MXFP4 as LUT4); other types are decoded
//! losslessly at load and listed in the notes. Split files (`*-00001-of-00003.gguf`) are read whole.
//! [`write_model`] writes canonical weights back out in llama.cpp's gpt-oss layout.

pub mod codecs;
pub mod config;
pub mod container;
pub mod encode;
pub mod experts;
pub mod ggml_types;
pub mod names;
pub mod tensors;
pub mod value;
pub mod vocab;
pub mod write;
pub mod writer;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::limits::MAX_SPLIT_PARTS;
use crate::weights::TensorMap;
use crate::{Layout, RawCheckpoint, SourceTensor};

use container::{GgufFile, Value};
use experts::ExpertStacks;
use names::Mapped;

pub use writer::{
    checkpoint_vocab, plan_model, write_checkpoint, write_model, write_model_with, ExpertType,
    OutType, PlanEntry, Progress, WriteOptions, WriteReport,
};

/// Reads a GGUF file (or every part of a split GGUF, given any part) into canonical tensors.
pub fn read_checkpoint(path: &Path) -> Result<RawCheckpoint> {
    let files = open_all(path)?;
    let first = files
        .first()
        .ok_or_else(|| Error::format(path, "no GGUF parts found"))?;
    config::check_architecture(first)?;
    let vocab_rows = files
        .iter()
        .flat_map(|f| f.tensors.iter())
        .find(|t| t.name == names::TOKEN_EMBD)
        .and_then(|t| t.ne.get(1).map(|&n| n as usize));
    let (config, mut notes) = config::model_config(first, vocab_rows)?;
    let vocab = config::embedded_vocab(first)?;
    let (tensors, source_tensors, conversion_notes) =
        read_tensors(&files, path, config.num_local_experts)?;
    notes.extend(conversion_notes);
    Ok(RawCheckpoint {
        layout: Layout::Gguf,
        config,
        tensors,
        source_tensors,
        notes,
        vocab,
    })
}

/// Loads every tensor of every part and maps it to canonical names; all problems are reported at once.
fn read_tensors(
    files: &[GgufFile],
    path: &Path,
    experts: usize,
) -> Result<(TensorMap, Vec<SourceTensor>, Vec<String>)> {
    let mut problems = Vec::new();
    let mut map = TensorMap::default();
    let mut stacks = ExpertStacks::default();
    let mut sources = Vec::new();
    let mut conversions: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for file in files {
        for info in &file.tensors {
            let origin = format!("{}: {}", file.path.display(), info.name);
            let type_name = ggml_types::GgmlType::from_id(info.type_id).map_or_else(
                || format!("type {}", info.type_id),
                |t| t.name().to_string(),
            );
            let loaded = match tensors::load(file, info) {
                Ok(l) => l,
                Err(e) => {
                    problems.push(e.to_string());
                    continue;
                }
            };
            sources.push(SourceTensor {
                name: info.name.clone(),
                dtype: type_name,
                shape: info.shape(),
                size_bytes: loaded.stored_bytes,
            });
            if let Some(to) = &loaded.converted_to {
                conversions
                    .entry((loaded.stored.name().into(), to.clone()))
                    .or_default()
                    .push(info.name.clone());
            }
            match names::map_name(&info.name) {
                Some(Mapped::Direct(canon)) => {
                    if map.tensors.contains_key(&canon) {
                        problems.push(format!("{origin}: `{canon}` is given twice"));
                    }
                    map.insert(canon, loaded.tensor, origin);
                }
                Some(Mapped::Experts { layer, proj, part }) => {
                    stacks.add(layer, proj, part, loaded.tensor, origin)
                }
                None => problems.push(format!(
                    "{origin}: unknown tensor name (not part of llama.cpp's gpt-oss layout)"
                )),
            }
        }
    }
    stacks.split_into(&mut map, &mut problems, experts);
    if !problems.is_empty() {
        return Err(Error::Tensors {
            source_desc: path.display().to_string(),
            problems,
        });
    }
    let mut notes: Vec<String> = conversions
        .into_iter()
        .map(|((from, to), names)| {
            let shown = names.iter().take(6).cloned().collect::<Vec<_>>().join(", ");
            let more = if names.len() > 6 { ", ..." } else { "" };
            let n = names.len();
            format!("{from} → {to} (lossless, at load) for {n} tensor(s): {shown}{more}")
        })
        .collect();
    if sources.iter().any(|s| s.name.contains("_exps.")) {
        notes.push(
            "expert gate/up rows interleaved into canonical gate_up (lazily, one tensor at a time when read)".into(),
        );
    }
    Ok((map, sources, notes))
}

/// Opens `path`, and when it is one part of a split GGUF, every part in order.
fn open_all(path: &Path) -> Result<Vec<GgufFile>> {
    let file = GgufFile::open(path)?;
    let count = split_key(&file, "split.count", MAX_SPLIT_PARTS)?.unwrap_or(1);
    if count <= 1 {
        return Ok(vec![file]);
    }
    let paths = split_paths(path, count)?;
    let mut files = Vec::with_capacity(count);
    for (i, p) in paths.iter().enumerate() {
        let f = GgufFile::open(p)?;
        let no = split_key(&f, "split.no", MAX_SPLIT_PARTS)?;
        let c = split_key(&f, "split.count", MAX_SPLIT_PARTS)?;
        if no != Some(i) || c != Some(count) {
            return Err(Error::format(
                p,
                format!(
                    "expected split part {} of {count}, found split.no {no:?}, split.count {c:?}",
                    i
                ),
            ));
        }
        files.push(f);
    }
    let total: usize = files.iter().map(|f| f.tensors.len()).sum();
    if let Some(first) = files.first() {
        if let Some(expected) = split_key(first, "split.tensors.count", usize::MAX)? {
            if expected != total {
                let msg =
                    format!("split.tensors.count is {expected}, the {count} parts hold {total}");
                return Err(Error::format(&first.path, msg));
            }
        }
    }
    Ok(files)
}

/// A `split.*` key, at most `max` (checked before it sizes the list of part names).
fn split_key(file: &GgufFile, key: &str, max: usize) -> Result<Option<usize>> {
    let name = file.path.display().to_string();
    file.get(key)
        .map(|v: &Value| {
            let n = v.as_u64().ok_or_else(|| {
                let msg = format!("expected an integer, found {}", config::shown(v));
                Error::config(&name, key, msg)
            })?;
            crate::limits::size(&name, key, n, max)
        })
        .transpose()
}

/// llama.cpp's split naming: `<prefix>-00001-of-00003.gguf` (1-based part numbers).
fn split_paths(path: &Path, count: usize) -> Result<Vec<PathBuf>> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let expected_tail = format!("-of-{count:05}.gguf");
    let prefix = name
        .strip_suffix(&expected_tail)
        .and_then(|s| s.len().checked_sub(6).map(|at| (s, at)))
        .filter(|(s, at)| s.as_bytes().get(*at) == Some(&b'-'))
        .map(|(s, at)| &s[..at]);
    let Some(prefix) = prefix else {
        let msg =
            format!("split.count is {count}, but the name does not end in -NNNNN{expected_tail}");
        return Err(Error::format(path, msg));
    };
    let dir = path.parent().unwrap_or(Path::new(""));
    Ok((1..=count)
        .map(|i| dir.join(format!("{prefix}-{i:05}-of-{count:05}.gguf")))
        .collect())
}
