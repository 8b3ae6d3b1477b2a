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
            Some(s) => Ok((k.clone(), s.to_string())),
            None => Err(Error::format(
                index,
                format!("weight_map[`{k}`]: expected a file name, found {v}"),
            )),
        })
        .collect()
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

/// Bytes per element of a safetensors dtype, when known.
fn dtype_size(dtype: &str) -> Option<usize> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" => 1,
        "U16" | "I16" | "F16" | "BF16" => 2,
        "U32" | "I32" | "F32" => 4,
        "U64" | "I64" | "F64" => 8,
        _ => return None,
    })
}

/// Maps one file and parses its header.
fn read_header(path: &Path) -> Result<Vec<RawTensor>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let size = file.metadata().map_err(|e| Error::io(path, e))?.len();
    if size < 8 {
        return Err(Error::format(
            path,
            format!("{size} bytes is too short for a safetensors header"),
        ));
    }
    // SAFETY: the map is read-only and lives as long as the tensors that window it; like every
    // mmap-based loader we rely on the checkpoint not being truncated while it is loaded.
    let map = Arc::new(unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?);
    let mut len_bytes = [0u8; 8];
    len_bytes.copy_from_slice(map.get(..8).unwrap_or(&[0; 8]));
    let header_len = u64::from_le_bytes(len_bytes) as usize;
    let data_start = header_len
        .checked_add(8)
        .filter(|&e| e <= map.len())
        .ok_or_else(|| {
            Error::format(
                path,
                format!("header length {header_len} runs past the end of the file"),
            )
        })?;
    let header: serde_json::Map<String, Value> = serde_json::from_slice(&map[8..data_start])
        .map_err(|e| Error::format(path, format!("header is not a JSON object: {e}")))?;
    let label = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let mut out = Vec::with_capacity(header.len());
    for (name, entry) in header.iter().filter(|(n, _)| *n != "__metadata__") {
        out.push(header_tensor(&label, name, entry, &map, data_start)?);
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// One header entry as a window of the mapped file, its offsets and byte size checked.
fn header_tensor(
    label: &str,
    name: &str,
    entry: &Value,
    map: &Arc<Mmap>,
    data_start: usize,
) -> Result<RawTensor> {
    let (dtype, shape, begin, end) = header_entry(entry)
        .ok_or_else(|| Error::tensor(label, name, format!("malformed header entry {entry}")))?;
    let data_len = map.len() - data_start;
    if begin > end || end > data_len {
        return Err(Error::tensor(
            label,
            name,
            format!("data_offsets [{begin}, {end}] outside the {data_len}-byte data section"),
        ));
    }
    if let Some(sz) = dtype_size(&dtype) {
        let need = shape.iter().try_fold(sz, |a, &d| a.checked_mul(d));
        if need != Some(end - begin) {
            let need = need.map_or_else(|| "more than usize".to_string(), |n| n.to_string());
            return Err(Error::tensor(
                label,
                name,
                format!(
                    "{dtype} {shape:?} needs {need} bytes, header gives {}",
                    end - begin
                ),
            ));
        }
    }
    Ok(RawTensor {
        name: name.to_string(),
        dtype,
        shape,
        file: label.to_string(),
        data: Storage::Mapped {
            map: map.clone(),
            start: data_start + begin,
            len: end - begin,
        },
    })
}

/// `(dtype, shape, begin, end)` of a header entry.
fn header_entry(entry: &Value) -> Option<(String, Vec<usize>, usize, usize)> {
    let dtype = entry.get("dtype")?.as_str()?.to_string();
    let shape = entry
        .get("shape")?
        .as_array()?
        .iter()
        .map(|d| d.as_u64().map(|d| d as usize))
        .collect::<Option<Vec<_>>>()?;
    let offs = entry.get("data_offsets")?.as_array()?;
    let (begin, end) = (
        offs.first()?.as_u64()? as usize,
        offs.get(1)?.as_u64()? as usize,
    );
    (offs.len() == 2).then_some((dtype, shape, begin, end))
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
