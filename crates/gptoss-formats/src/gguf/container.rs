//! The GGUF container (spec §3.1): header, typed key/value metadata, tensor infos and the aligned
//! data section. Parsing works on the whole file's bytes (the mmap), checks every length against
//! the file size before reading it, and names the file and the item at fault in every error.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;

use crate::error::{Error, Result};

pub use super::value::{type_name, Array, Value};

/// The file magic, `GGUF` in ASCII.
pub const MAGIC: &[u8; 4] = b"GGUF";
/// Alignment of the data section and of every tensor when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: usize = 32;
/// The metadata key that overrides the alignment.
pub const ALIGNMENT_KEY: &str = "general.alignment";
/// Arrays nested deeper than this are refused (GGUF allows nesting; no real file goes past 1).
const MAX_ARRAY_DEPTH: usize = 4;
/// Most metadata keys (llama.cpp's converter writes about 40).
pub const MAX_METADATA_KEYS: usize = 1 << 16;
/// Most tensor infos (gpt-oss-120b has about 700; a model at every bound of `limits` about 20k).
pub const MAX_TENSORS: usize = 1 << 17;
/// ggml tensors have at most 4 dimensions.
pub const MAX_DIMS: usize = 4;

/// One tensor's header entry.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    /// Name as stored (`blk.0.attn_q.weight`).
    pub name: String,
    /// Dimensions in ggml order: `ne[0]` is the innermost (contiguous) one.
    pub ne: Vec<u64>,
    /// ggml type id.
    pub type_id: u32,
    /// Offset from the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    /// The shape outermost first (`ne` reversed), as the rest of gptoss writes shapes.
    pub fn shape(&self) -> Vec<usize> {
        self.ne.iter().rev().map(|&n| n as usize).collect()
    }
}

/// A parsed GGUF file: metadata, tensor infos and the mapped bytes.
#[derive(Debug)]
pub struct GgufFile {
    /// The file.
    pub path: PathBuf,
    /// Format version (2 or 3).
    pub version: u32,
    /// Metadata in file order.
    pub metadata: Vec<(String, Value)>,
    /// Tensor infos in file order.
    pub tensors: Vec<TensorInfo>,
    /// Alignment of the data section and of tensor offsets.
    pub alignment: usize,
    /// Byte offset of the data section in the file.
    pub data_start: usize,
    /// The whole file.
    pub map: Arc<Mmap>,
    index: BTreeMap<String, usize>,
}

impl GgufFile {
    /// Maps and parses the file at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the map is read-only and gptoss never writes the file while it is mapped. Another
        // process truncating or rewriting a model file during a run is outside what any mmap-based
        // loader (llama.cpp, safetensors) can defend against.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let header = parse(&map, path)?;
        Ok(Self::assemble(path, header, map))
    }

    /// Parses a GGUF held in memory (a copy goes to an anonymous map); `name` names it in errors. For
    /// tests and fuzzing: files are opened with [`GgufFile::open`].
    pub fn from_bytes(bytes: &[u8], name: &Path) -> Result<Self> {
        let mut anon =
            memmap2::MmapMut::map_anon(bytes.len().max(1)).map_err(|e| Error::io(name, e))?;
        anon[..bytes.len()].copy_from_slice(bytes);
        let map = anon.make_read_only().map_err(|e| Error::io(name, e))?;
        let header = parse(&map[..bytes.len()], name)?;
        Ok(Self::assemble(name, header, map))
    }

    fn assemble(path: &Path, header: Header, map: Mmap) -> Self {
        let index = header
            .metadata
            .iter()
            .enumerate()
            .map(|(i, (k, _))| (k.clone(), i))
            .collect();
        GgufFile {
            path: path.to_path_buf(),
            version: header.version,
            metadata: header.metadata,
            tensors: header.tensors,
            alignment: header.alignment,
            data_start: header.data_start,
            map: Arc::new(map),
            index,
        }
    }

    /// The value of metadata `key`, if present.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.index
            .get(key)
            .and_then(|&i| self.metadata.get(i))
            .map(|(_, v)| v)
    }

    /// Bytes of the whole file.
    pub fn len_bytes(&self) -> usize {
        self.map.len()
    }
}

/// Everything in a GGUF file but the tensor data.
#[derive(Debug)]
pub struct Header {
    /// Format version.
    pub version: u32,
    /// Metadata in file order.
    pub metadata: Vec<(String, Value)>,
    /// Tensor infos in file order.
    pub tensors: Vec<TensorInfo>,
    /// Alignment in force.
    pub alignment: usize,
    /// Start of the data section.
    pub data_start: usize,
}

/// Parses the header, metadata and tensor infos of a GGUF file held in `bytes`; `path` names it in errors.
pub fn parse(bytes: &[u8], path: &Path) -> Result<Header> {
    let mut c = Cursor {
        bytes,
        pos: 0,
        path,
    };
    let magic = c.take(4, "magic")?;
    if magic != MAGIC {
        return Err(Error::format(
            path,
            format!("not a GGUF file: magic is {magic:02x?}, expected \"GGUF\""),
        ));
    }
    let version = c.u32("version")?;
    if !(2..=3).contains(&version) {
        return Err(Error::format(
            path,
            format!("GGUF version {version} is not supported (expected 2 or 3)"),
        ));
    }
    let n_tensors = c.u64("tensor_count")?;
    let n_kv = c.u64("metadata_kv_count")?;
    // Each KV needs at least 12 bytes and each tensor info at least 24: refuse absurd counts up front.
    c.check_count(n_kv, 12, "metadata_kv_count")?;
    c.check_count(n_tensors, 24, "tensor_count")?;
    for (count, max, what) in [
        (n_kv, MAX_METADATA_KEYS, "metadata_kv_count"),
        (n_tensors, MAX_TENSORS, "tensor_count"),
    ] {
        if count > max as u64 {
            return Err(Error::format(
                path,
                format!("{what} is {count}; at most {max} are accepted"),
            ));
        }
    }
    let mut metadata: Vec<(String, Value)> = Vec::with_capacity(n_kv as usize);
    let mut seen = BTreeMap::new();
    for i in 0..n_kv {
        let key = c.string(&format!("key of metadata entry {i}"))?;
        let ty = c.u32(&format!("value type of `{key}`"))?;
        let value = c.value(ty, &key, 0)?;
        if seen.insert(key.clone(), ()).is_some() {
            return Err(Error::format(
                path,
                format!("metadata key `{key}` appears twice"),
            ));
        }
        metadata.push((key, value));
    }
    let alignment = alignment_of(&metadata, path)?;
    let tensors = parse_tensor_infos(&mut c, n_tensors, alignment)?;
    let data_start = c.pos.div_ceil(alignment) * alignment;
    Ok(Header {
        version,
        metadata,
        tensors,
        alignment,
        data_start,
    })
}

fn alignment_of(metadata: &[(String, Value)], path: &Path) -> Result<usize> {
    let Some((_, v)) = metadata.iter().find(|(k, _)| k == ALIGNMENT_KEY) else {
        return Ok(DEFAULT_ALIGNMENT);
    };
    match v {
        // ggml refuses an alignment that is not a power of two, and so do we.
        Value::U32(a) if a.is_power_of_two() => Ok(*a as usize),
        other => Err(Error::config(
            path.display().to_string(),
            ALIGNMENT_KEY,
            format!("expected a u32 power of two, found {other:?}"),
        )),
    }
}

fn parse_tensor_infos(c: &mut Cursor, n: u64, alignment: usize) -> Result<Vec<TensorInfo>> {
    let mut tensors = Vec::with_capacity(n as usize);
    let mut names = BTreeMap::new();
    for i in 0..n {
        let name = c.string(&format!("name of tensor {i}"))?;
        let n_dims = c.u32(&format!("n_dims of tensor `{name}`"))? as usize;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(Error::tensor(
                c.file(),
                &name,
                format!("has {n_dims} dimensions, expected 1..={MAX_DIMS}"),
            ));
        }
        let ne = (0..n_dims)
            .map(|_| c.u64(&format!("dimensions of tensor `{name}`")))
            .collect::<Result<Vec<_>>>()?;
        let type_id = c.u32(&format!("type of tensor `{name}`"))?;
        let offset = c.u64(&format!("offset of tensor `{name}`"))?;
        if !offset.is_multiple_of(alignment as u64) {
            return Err(Error::tensor(
                c.file(),
                &name,
                format!("offset {offset} is not a multiple of the alignment {alignment}"),
            ));
        }
        if ne
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .is_none()
        {
            return Err(Error::tensor(
                c.file(),
                &name,
                format!("dimensions {ne:?} overflow"),
            ));
        }
        if names.insert(name.clone(), ()).is_some() {
            return Err(Error::tensor(
                c.file(),
                &name,
                "appears twice in the tensor list",
            ));
        }
        tensors.push(TensorInfo {
            name,
            ne,
            type_id,
            offset,
        });
    }
    Ok(tensors)
}

/// A bounds-checked little-endian reader over the file's bytes.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn file(&self) -> String {
        self.path.display().to_string()
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            return Err(Error::format(
                self.path,
                format!(
                    "truncated: reading {what} needs {n} bytes at offset {}, but the file has {} bytes",
                    self.pos,
                    self.bytes.len()
                ),
            ));
        };
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// Refuses a count whose items (each at least `min_bytes`) cannot fit in the rest of the file.
    fn check_count(&self, count: u64, min_bytes: u64, what: &str) -> Result<()> {
        let left = (self.bytes.len() - self.pos) as u64;
        if count.saturating_mul(min_bytes) > left {
            return Err(Error::format(
                self.path,
                format!("truncated or corrupt: {what} is {count}, but only {left} bytes remain at offset {}", self.pos),
            ));
        }
        Ok(())
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let len = self.u64(what)?;
        self.check_count(len, 1, what)?;
        let bytes = self.take(len as usize, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| {
            Error::format(
                self.path,
                format!("{what} is not valid UTF-8 (at offset {})", self.pos),
            )
        })
    }

    fn value(&mut self, ty: u32, key: &str, depth: usize) -> Result<Value> {
        Ok(match ty {
            0 => Value::U8(self.array::<1>(key)?[0]),
            1 => Value::I8(i8::from_le_bytes(self.array(key)?)),
            2 => Value::U16(u16::from_le_bytes(self.array(key)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(key)?)),
            4 => Value::U32(self.u32(key)?),
            5 => Value::I32(i32::from_le_bytes(self.array(key)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(key)?)),
            7 => match self.array::<1>(key)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => {
                    return Err(Error::config(
                        self.file(),
                        key,
                        format!("bool value must be 0 or 1, found {b}"),
                    ))
                }
            },
            8 => Value::String(self.string(&format!("value of `{key}`"))?),
            9 => self.array_value(key, depth)?,
            10 => Value::U64(self.u64(key)?),
            11 => Value::I64(i64::from_le_bytes(self.array(key)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(key)?)),
            other => {
                return Err(Error::config(
                    self.file(),
                    key,
                    format!("unknown GGUF value type {other} (expected 0..=12)"),
                ))
            }
        })
    }

    fn array_value(&mut self, key: &str, depth: usize) -> Result<Value> {
        Ok(Value::Array(self.elements(key, depth)?))
    }

    /// An array's element type, count and elements, read straight into a vector of the element type.
    fn elements(&mut self, key: &str, depth: usize) -> Result<Array> {
        if depth >= MAX_ARRAY_DEPTH {
            return Err(Error::config(
                self.file(),
                key,
                format!("arrays nested deeper than {MAX_ARRAY_DEPTH}"),
            ));
        }
        let elem = self.u32(key)?;
        let count = self.u64(key)?;
        let min = match elem {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            8 | 10..=12 => 8,
            _ => 12,
        };
        // Every element needs at least `min` bytes of the file: this bounds every vector below by the
        // file's size before it is allocated.
        self.check_count(count, min, &format!("element count of `{key}`"))?;
        let n = count as usize;
        Ok(match elem {
            0 => Array::U8(self.fixed(n, key, |b: [u8; 1]| b[0])?),
            1 => Array::I8(self.fixed(n, key, i8::from_le_bytes)?),
            2 => Array::U16(self.fixed(n, key, u16::from_le_bytes)?),
            3 => Array::I16(self.fixed(n, key, i16::from_le_bytes)?),
            4 => Array::U32(self.fixed(n, key, u32::from_le_bytes)?),
            5 => Array::I32(self.fixed(n, key, i32::from_le_bytes)?),
            6 => Array::F32(self.fixed(n, key, f32::from_le_bytes)?),
            7 => Array::Bool(
                self.fixed(n, key, |b: [u8; 1]| b[0])?
                    .into_iter()
                    .map(|b| match b {
                        0 => Ok(false),
                        1 => Ok(true),
                        b => Err(Error::config(
                            self.file(),
                            key,
                            format!("bool value must be 0 or 1, found {b}"),
                        )),
                    })
                    .collect::<Result<_>>()?,
            ),
            8 => Array::String(
                (0..n)
                    .map(|_| self.string(&format!("value of `{key}`")))
                    .collect::<Result<_>>()?,
            ),
            9 => Array::Array(
                (0..n)
                    .map(|_| self.elements(key, depth + 1))
                    .collect::<Result<_>>()?,
            ),
            10 => Array::U64(self.fixed(n, key, u64::from_le_bytes)?),
            11 => Array::I64(self.fixed(n, key, i64::from_le_bytes)?),
            12 => Array::F64(self.fixed(n, key, f64::from_le_bytes)?),
            other => {
                return Err(Error::config(
                    self.file(),
                    key,
                    format!("unknown GGUF array element type {other} (expected 0..=12)"),
                ))
            }
        })
    }

    /// `n` fixed-size little-endian elements.
    fn fixed<const N: usize, T>(
        &mut self,
        n: usize,
        key: &str,
        decode: impl Fn([u8; N]) -> T,
    ) -> Result<Vec<T>> {
        let bytes = self.take(n.saturating_mul(N), key)?;
        Ok(bytes
            .chunks_exact(N)
            .map(|c| {
                let mut a = [0u8; N];
                a.copy_from_slice(c);
                decode(a)
            })
            .collect())
    }
}
