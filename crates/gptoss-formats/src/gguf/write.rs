//! Low-level GGUF v3 serialization: metadata values, the header and tensor infos, then tensor data
//! streamed one tensor at a time into a temporary file that is renamed into place only when every
//! planned tensor has been written. The gpt-oss converter (`writer.rs`) and the tests build on it.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::atomic::TempFile;
use crate::error::{Error, Result};

use super::container::{Array, Value, ALIGNMENT_KEY, DEFAULT_ALIGNMENT, MAGIC};
use super::ggml_types::GgmlType;

/// A tensor to be written: its name, ggml dims (`ne[0]` innermost) and type.
#[derive(Clone, Debug)]
pub struct PlannedTensor {
    /// Name in the file.
    pub name: String,
    /// Dimensions, innermost first.
    pub ne: Vec<u64>,
    /// Stored type.
    pub ty: GgmlType,
}

impl PlannedTensor {
    /// A tensor of row-major `shape` (outermost first).
    pub fn new(name: impl Into<String>, shape: &[usize], ty: GgmlType) -> Self {
        PlannedTensor {
            name: name.into(),
            ne: shape.iter().rev().map(|&n| n as u64).collect(),
            ty,
        }
    }

    /// Bytes of the tensor's data, or `None` when its rows are not whole blocks.
    pub fn size_bytes(&self) -> Option<usize> {
        let row = self.ne.first().copied().unwrap_or(1) as usize;
        let rows: usize = self.ne.iter().skip(1).map(|&n| n as usize).product();
        self.ty.row_bytes(row).map(|b| b * rows)
    }
}

/// Appends the encoding of a value (without its type id).
pub fn encode_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(u8::from(*x)),
        Value::String(s) => encode_str(out, s),
        Value::Array(items) => encode_array(out, items),
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
    }
}

/// Appends an array: element type, count, elements.
fn encode_array(out: &mut Vec<u8>, items: &Array) {
    out.extend_from_slice(&items.elem_type().to_le_bytes());
    out.extend_from_slice(&(items.len() as u64).to_le_bytes());
    match items {
        Array::Array(nested) => nested.iter().for_each(|a| encode_array(out, a)),
        _ => items.values().for_each(|v| encode_value(out, &v)),
    }
}

fn encode_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Alignment named by the metadata, or the default.
fn alignment(metadata: &[(String, Value)]) -> usize {
    metadata
        .iter()
        .find(|(k, _)| k == ALIGNMENT_KEY)
        .and_then(|(_, v)| v.as_u64())
        .filter(|&a| a > 0)
        .map_or(DEFAULT_ALIGNMENT, |a| a as usize)
}

/// The header, metadata and tensor infos (offsets assigned in order, each aligned), padded to the
/// start of the data section. Returns the bytes and each tensor's offset in the data section.
pub fn encode_header(
    metadata: &[(String, Value)],
    tensors: &[PlannedTensor],
) -> Result<(Vec<u8>, Vec<u64>)> {
    let align = alignment(metadata) as u64;
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    out.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    for (k, v) in metadata {
        encode_str(&mut out, k);
        out.extend_from_slice(&v.type_id().to_le_bytes());
        encode_value(&mut out, v);
    }
    let mut offsets = Vec::with_capacity(tensors.len());
    let mut next = 0u64;
    for t in tensors {
        let size = t.size_bytes().ok_or_else(|| {
            Error::tensor(
                "<gguf writer>",
                &t.name,
                format!("{:?} is not whole {} blocks", t.ne, t.ty.name()),
            )
        })?;
        encode_str(&mut out, &t.name);
        out.extend_from_slice(&(t.ne.len() as u32).to_le_bytes());
        for n in &t.ne {
            out.extend_from_slice(&n.to_le_bytes());
        }
        out.extend_from_slice(&t.ty.id().to_le_bytes());
        out.extend_from_slice(&next.to_le_bytes());
        offsets.push(next);
        next = (next + size as u64).div_ceil(align) * align;
    }
    let padded = (out.len() as u64).div_ceil(align) * align;
    out.resize(padded as usize, 0);
    Ok((out, offsets))
}

/// Streams a GGUF file: header first, then each planned tensor's bytes in plan order.
/// A writer dropped before [`StreamWriter::finish`] removes its temporary file.
pub struct StreamWriter {
    out: Option<BufWriter<File>>,
    temp: Option<TempFile>,
    tmp: PathBuf,
    dest: PathBuf,
    plan: Vec<PlannedTensor>,
    next: usize,
    /// Bytes of the current tensor written so far.
    part_bytes: u64,
    written: u64,
    align: u64,
}

impl StreamWriter {
    /// Creates a temporary file for `dest` (see [`crate::atomic`]) and writes the header for `plan`.
    pub fn create(
        dest: &Path,
        metadata: &[(String, Value)],
        plan: Vec<PlannedTensor>,
    ) -> Result<Self> {
        let (header, _) = encode_header(metadata, &plan)?;
        let temp = TempFile::create(dest)?;
        // Errors name the destination: the temporary file may have no name at all.
        let tmp = dest.to_path_buf();
        let mut out = BufWriter::with_capacity(1 << 20, temp.handle()?);
        out.write_all(&header).map_err(|e| Error::io(&tmp, e))?;
        let align = alignment(metadata) as u64;
        Ok(StreamWriter {
            out: Some(out),
            temp: Some(temp),
            tmp,
            dest: dest.to_path_buf(),
            plan,
            next: 0,
            part_bytes: 0,
            written: 0,
            align,
        })
    }

    /// The next tensor the writer expects, if any.
    pub fn next_tensor(&self) -> Option<&PlannedTensor> {
        self.plan.get(self.next)
    }

    /// Writes the data of the next planned tensor; `bytes` must be exactly its size.
    pub fn write_tensor(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        self.write_part(name, bytes)?;
        self.end_tensor(name)
    }

    /// The next planned tensor and its size, checked to be `name`.
    fn current(&self, name: &str) -> Result<u64> {
        let fail = |msg: String| Error::tensor(self.dest.display().to_string(), name, msg);
        match self.plan.get(self.next) {
            None => Err(fail("not in the plan (all tensors written)".into())),
            Some(t) if t.name != name => Err(fail(format!("expected `{}` next", t.name))),
            Some(t) => Ok(t.size_bytes().unwrap_or(0) as u64),
        }
    }

    /// Appends bytes of the next planned tensor `name` (a tensor may be written in many parts).
    pub fn write_part(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        let size = self.current(name)?;
        if self.part_bytes + bytes.len() as u64 > size {
            let msg = format!("more than its {size} bytes written");
            return Err(Error::tensor(self.dest.display().to_string(), name, msg));
        }
        let tmp = &self.tmp;
        let out = self
            .out
            .as_mut()
            .ok_or_else(|| Error::format(tmp, "writer already finished"))?;
        out.write_all(bytes).map_err(|e| Error::io(tmp, e))?;
        self.part_bytes += bytes.len() as u64;
        Ok(())
    }

    /// Ends tensor `name`: checks all its bytes were written and pads to the alignment.
    pub fn end_tensor(&mut self, name: &str) -> Result<()> {
        let size = self.current(name)?;
        if self.part_bytes != size {
            let msg = format!("{} of its {size} bytes written", self.part_bytes);
            return Err(Error::tensor(self.dest.display().to_string(), name, msg));
        }
        let pad = (self.written + size).div_ceil(self.align) * self.align - self.written - size;
        let tmp = &self.tmp;
        let out = self
            .out
            .as_mut()
            .ok_or_else(|| Error::format(tmp, "writer already finished"))?;
        out.write_all(&vec![0u8; pad as usize])
            .map_err(|e| Error::io(tmp, e))?;
        self.written += size + pad;
        self.part_bytes = 0;
        self.next += 1;
        Ok(())
    }

    /// Checks every tensor was written, flushes and renames the temporary file into place.
    pub fn finish(mut self) -> Result<PathBuf> {
        if let Some(t) = self.plan.get(self.next) {
            let msg = format!("{} of {} tensors written", self.next, self.plan.len());
            return Err(Error::tensor(self.dest.display().to_string(), &t.name, msg));
        }
        let out = self
            .out
            .take()
            .ok_or_else(|| Error::format(&self.tmp, "writer already finished"))?;
        let temp = self
            .temp
            .take()
            .ok_or_else(|| Error::format(&self.tmp, "writer already finished"))?;
        // If the last buffered bytes do not reach the disk (e.g. it is full), the temporary file is
        // dropped unpersisted: no partial file.
        out.into_inner()
            .map_err(|e| Error::io(&self.tmp, e.into_error()))?;
        temp.persist()?;
        Ok(self.dest.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::container::GgufFile;

    #[test]
    fn tensors_written_in_parts_are_checked_and_aligned() {
        let dir = std::env::temp_dir().join(format!("gptoss-gguf-write-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let dest = dir.join("parts.gguf");
        let plan = vec![
            PlannedTensor::new("a", &[3], GgmlType::F32),
            PlannedTensor::new("b", &[2, 32], GgmlType::Q8_0),
        ];
        let meta = vec![("general.alignment".to_string(), Value::U32(64))];
        let mut w = StreamWriter::create(&dest, &meta, plan).unwrap();
        assert!(w.write_part("b", &[0; 4]).is_err()); // not next
        w.write_part("a", &[1; 8]).unwrap();
        assert!(w.write_part("a", &[1; 8]).is_err()); // 16 > 12 bytes
        assert!(w.end_tensor("a").is_err()); // 8 of 12
        w.write_part("a", &[1; 4]).unwrap();
        w.end_tensor("a").unwrap();
        w.write_part("b", &[2; 34]).unwrap();
        w.write_part("b", &[3; 34]).unwrap();
        w.end_tensor("b").unwrap();
        w.finish().unwrap();
        let f = GgufFile::open(&dest).unwrap();
        assert_eq!((f.tensors[0].offset, f.tensors[1].offset), (0, 64));
        let b = &f.map[f.data_start + 64..f.data_start + 64 + 68];
        assert_eq!((b[0], b[33], b[34], b[67]), (2, 2, 3, 3));
        assert_eq!(f.len_bytes(), f.data_start + 64 + 128);

        let unfinished = dir.join("unfinished.gguf");
        let w = StreamWriter::create(
            &unfinished,
            &[],
            vec![PlannedTensor::new("a", &[1], GgmlType::F32)],
        );
        let e = w.unwrap().finish().unwrap_err().to_string();
        assert!(e.contains("0 of 1 tensors written"), "{e}");
        let left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("parts.gguf")]);
    }
}
