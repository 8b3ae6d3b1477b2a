//! Safetensors files: finding the shards (`model.safetensors.index.json` or every `*.safetensors`),
//! memory-mapping them and parsing their headers into zero-copy tensor windows. Also the one
//! conversion of a stored float tensor into a dense [`QuantTensor`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::tensor::{DType, QuantTensor, Storage, TensorFormat};

/// Name of the shard index HF writes beside sharded checkpoints.
pub(crate) const INDEX_FILE: &str = "model.safetensors.index.json";

/// One tensor as a safetensors header describes it, with its bytes as a window of the mapped file.
#[derive(Clone, Debug)]
pub(crate) struct RawTensor {
    /// Name in the file.
    pub name: String,
    /// Stored dtype as safetensors spells it (`BF16`, `U8`, ...).
    pub dtype: String,
    /// Stored shape.
    pub shape: Vec<usize>,
    /// File name (no directory) for messages.
    pub file: String,
    /// The tensor's bytes (a `Storage::Mapped` window).
    pub data: Storage,
}

impl RawTensor {
    /// `file: name`, the origin string every message and `TensorMap` entry carries.
    pub fn origin(&self) -> String {
        format!("{}: {}", self.file, self.name)
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The error for a tensor whose dtype does not fit its role.
    pub fn bad_dtype(&self, expected: &str) -> String {
        format!(
            "{}: dtype {} is not supported here (expected {expected})",
            self.origin(),
            self.dtype
        )
    }
}

/// The checkpoint's config file and every tensor of every shard.
pub(crate) struct Sources {
    /// `config.json` beside the weights.
    pub config_path: PathBuf,
    /// All tensors, in (file, name) order.
    pub tensors: Vec<RawTensor>,
}

/// Opens a model directory or a single `.safetensors` file (with `config.json` beside it).
pub(crate) fn open(path: &Path) -> Result<Sources> {
    let (dir, files) = if path.is_dir() {
        (path.to_path_buf(), shard_files(path)?)
    } else {
        let dir = path
            .parent()
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        (dir, vec![path.to_path_buf()])
    };
    let config_path = dir.join("config.json");
    if !config_path.is_file() {
        return Err(Error::UnknownLayout {
            path: path.to_path_buf(),
            message: format!("no config.json at {}", config_path.display()),
        });
    }
    let mut tensors = Vec::new();
    for f in &files {
        tensors.extend(read_header(f)?);
    }
    if path.is_dir() {
        check_index(&dir, &tensors)?;
    }
    Ok(Sources {
        config_path,
        tensors,
    })
}

/// The shard files of a directory: those named by the index if there is one, else every `*.safetensors`.
fn shard_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join(INDEX_FILE);
    if index.is_file() {
        let map = read_index(&index)?;
        let mut files = Vec::new();
        for shard in map.values().collect::<BTreeSet<_>>() {
            let p = dir.join(shard);
            if !p.is_file() {
                let first = map
                    .iter()
                    .find(|(_, s)| *s == shard)
                    .map_or("", |(n, _)| n.as_str());
                let count = map.values().filter(|s| *s == shard).count();
                return Err(Error::format(
                    &index,
                    format!("lists shard `{shard}` ({count} tensors, e.g. `{first}`), which does not exist"),
                ));
            }
            files.push(p);
        }
        return Ok(files);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Error::UnknownLayout {
            path: dir.to_path_buf(),
            message:
                "no *.safetensors files (and no model.safetensors.index.json) in this directory"
                    .into(),
        });
    }
    Ok(files)
}

/// `weight_map` of an index file: tensor name → shard file name.
fn read_index(index: &Path) -> Result<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| Error::format(index, format!("not valid JSON: {e}")))?;
    let map = v
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| Error::format(index, "has no `weight_map` object"))?;
    map.iter()
        .map(|(k, v)| match v.as_str() {
            Some(s) if is_plain_file_name(s) => Ok((k.clone(), s.to_string())),
            Some(s) => Err(Error::format(
                index,
                format!(
                    "weight_map[`{k}`]: {s:?} is not a file name in the model folder \
                     (shards are named without directories, `..` or absolute paths)"
                ),
            )),
            None => Err(Error::format(
                index,
                format!("weight_map[`{k}`]: expected a file name, found {v}"),
            )),
        })
        .collect()
}

/// True for a name that stays in the folder it is joined to: one normal path component, so no
/// separator, no `..`, no root or drive prefix.
fn is_plain_file_name(name: &str) -> bool {
    let mut parts = Path::new(name).components();
    matches!(
        (parts.next(), parts.next()),
        (Some(std::path::Component::Normal(_)), None)
    ) && !name.contains(['/', '\\'])
}

/// Every tensor the index places in a shard must be in that shard.
fn check_index(dir: &Path, tensors: &[RawTensor]) -> Result<()> {
    let index = dir.join(INDEX_FILE);
    if !index.is_file() {
        return Ok(());
    }
    let have: BTreeSet<(&str, &str)> = tensors
        .iter()
        .map(|t| (t.file.as_str(), t.name.as_str()))
        .collect();
    let problems: Vec<String> = read_index(&index)?
        .iter()
        .filter(|(name, shard)| !have.contains(&(shard.as_str(), name.as_str())))
        .map(|(name, shard)| {
            format!("{INDEX_FILE} places `{name}` in {shard}, which does not contain it")
        })
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::Tensors {
            source_desc: dir.display().to_string(),
            problems,
        })
    }
}

/// Maps one file and parses its header into zero-copy windows of the map.
fn read_header(path: &Path) -> Result<Vec<RawTensor>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: the map is read-only and lives as long as the tensors that window it; like every
    // mmap-based loader we rely on the checkpoint not being truncated while it is loaded.
    let map = Arc::new(unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?);
    let label = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let entries = super::header::parse_header(&map).map_err(|e| Error::format(path, e))?;
    let mut out: Vec<RawTensor> = entries
        .into_iter()
        .map(|e| RawTensor {
            name: e.name,
            dtype: e.dtype,
            shape: e.shape,
            file: label.clone(),
            data: Storage::Mapped {
                map: map.clone(),
                start: e.start,
                len: e.len,
            },
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The dense element type of a stored float dtype.
pub(crate) fn float_dtype(dtype: &str) -> Option<DType> {
    match dtype {
        "BF16" => Some(DType::BF16),
        "F16" => Some(DType::F16),
        "F32" => Some(DType::F32),
        _ => None,
    }
}

/// Dense floats expected: BF16/F16/F32 as a zero-copy window, F8_E5M2 widened to bf16 on demand
/// (lazily; exact: every E5M2 value is a bf16 value). Anything else is an error naming file, tensor and dtype.
pub(crate) fn dense(
    t: &RawTensor,
    f8_converted: &mut usize,
) -> std::result::Result<QuantTensor, String> {
    let format = match (float_dtype(&t.dtype), t.dtype.as_str()) {
        (Some(d), _) => TensorFormat::Dense(d),
        (None, "F8_E5M2") => {
            *f8_converted += 1;
            return Ok(QuantTensor {
                shape: t.shape.clone(),
                format: TensorFormat::Dense(DType::BF16),
                data: Storage::widened_f8e5m2(t.data.clone()),
            });
        }
        _ => return Err(t.bad_dtype("BF16, F16, F32 or F8_E5M2")),
    };
    Ok(QuantTensor {
        shape: t.shape.clone(),
        format,
        data: t.data.clone(),
    })
}
