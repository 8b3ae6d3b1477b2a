//! The logits file of `eval --save-logits` / `--base-logits`: the base model's logit rows, so a model too
//! big to load beside the other (or one on another machine or device) is compared later. Layout:
//! `GPTOSSLG`, a u32 version (1), a u64 header length, a JSON header (`tokens`, `ctx`, `vocab`, `rows`,
//! `model`), then `rows` rows of `vocab` little-endian f32 logits, one per scored target in order. Written
//! to a temporary file and renamed, so it is whole or absent.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

const MAGIC: &[u8; 8] = b"GPTOSSLG";
const VERSION: u32 = 1;

/// What the rows were computed from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// The evaluated tokens.
    pub tokens: Vec<u32>,
    /// The window.
    pub ctx: usize,
    /// Logits per row.
    pub vocab: usize,
    /// Rows: one per scored target (`tokens.len() - 1`).
    pub rows: usize,
    /// The model that computed them (for messages).
    pub model: String,
}

/// Writes rows to `<path>.tmp-<pid>`; [`Writer::finish`] renames it over `path`, dropping removes it.
pub struct Writer {
    out: Option<BufWriter<File>>,
    tmp: PathBuf,
    path: PathBuf,
    rows_left: usize,
}

impl Writer {
    /// Starts the file with its header.
    pub fn create(path: &Path, header: &Header) -> Result<Self> {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(".tmp-{}", std::process::id()));
        let tmp = PathBuf::from(tmp);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        let mut w = Writer {
            out: Some(BufWriter::with_capacity(1 << 20, file)),
            tmp,
            path: path.to_path_buf(),
            rows_left: header.rows,
        };
        let json = serde_json::to_vec(header)?;
        w.write(MAGIC)?;
        w.write(&VERSION.to_le_bytes())?;
        w.write(&(json.len() as u64).to_le_bytes())?;
        w.write(&json)?;
        Ok(w)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        match &mut self.out {
            Some(out) => out
                .write_all(bytes)
                .with_context(|| format!("writing {}", self.tmp.display())),
            None => bail!("{}: already finished", self.path.display()),
        }
    }

    /// Appends one row.
    pub fn row(&mut self, logits: &[f32]) -> Result<()> {
        if self.rows_left == 0 {
            bail!("{}: more rows than the header says", self.path.display());
        }
        self.rows_left -= 1;
        let bytes: Vec<u8> = logits.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.write(&bytes)
    }

    /// Flushes and renames the file into place.
    pub fn finish(mut self) -> Result<()> {
        if self.rows_left != 0 {
            bail!("{}: {} rows missing", self.path.display(), self.rows_left);
        }
        if let Some(out) = self.out.take() {
            let file = out
                .into_inner()
                .map_err(|e| anyhow::anyhow!("writing {}: {}", self.tmp.display(), e.error()))?;
            file.sync_all()?;
        }
        std::fs::rename(&self.tmp, &self.path)
            .with_context(|| format!("renaming {} into place", self.tmp.display()))
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if self.out.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Reads a logits file row by row.
pub struct Reader {
    input: BufReader<File>,
    path: PathBuf,
    /// The file's header.
    pub header: Header,
    buf: Vec<u8>,
}

impl Reader {
    /// Opens the file and reads its header, checking its size.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let size = file.metadata()?.len();
        let mut input = BufReader::with_capacity(1 << 20, file);
        let mut fixed = [0u8; 20];
        input
            .read_exact(&mut fixed)
            .with_context(|| format!("{}: too short for a logits file", path.display()))?;
        if &fixed[..8] != MAGIC {
            bail!(
                "{}: not a gptoss logits file (written by `gptoss eval --save-logits`)",
                path.display()
            );
        }
        let version = u32::from_le_bytes([fixed[8], fixed[9], fixed[10], fixed[11]]);
        if version != VERSION {
            bail!(
                "{}: logits file version {version}, expected {VERSION}",
                path.display()
            );
        }
        let mut len = [0u8; 8];
        len.copy_from_slice(&fixed[12..20]);
        let len = u64::from_le_bytes(len);
        if len > size {
            bail!(
                "{}: header length {len} exceeds the file's {size} bytes",
                path.display()
            );
        }
        let mut json = vec![0u8; len as usize];
        input.read_exact(&mut json)?;
        let header: Header = serde_json::from_slice(&json)
            .with_context(|| format!("{}: unreadable header", path.display()))?;
        if header.tokens.len() < 2 || header.rows != header.tokens.len() - 1 {
            bail!(
                "{}: {} rows for {} tokens (expected one row per token after the first)",
                path.display(),
                header.rows,
                header.tokens.len()
            );
        }
        let want = 20 + len + (header.rows as u64) * (header.vocab as u64) * 4;
        if size != want {
            bail!(
                "{}: {size} bytes, but its header ({} rows of {} logits) needs {want}",
                path.display(),
                header.rows,
                header.vocab
            );
        }
        Ok(Reader {
            input,
            path: path.to_path_buf(),
            buf: vec![0u8; header.vocab * 4],
            header,
        })
    }

    /// The next row.
    pub fn row(&mut self, out: &mut Vec<f32>) -> Result<()> {
        self.input
            .read_exact(&mut self.buf)
            .with_context(|| format!("reading {}", self.path.display()))?;
        out.clear();
        out.extend(
            self.buf
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_damage() {
        let dir = std::env::temp_dir().join(format!("gptoss-lg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("base.logits");
        let header = Header {
            tokens: vec![5, 6, 7],
            ctx: 8,
            vocab: 3,
            rows: 2,
            model: "m".into(),
        };
        let mut w = Writer::create(&path, &header).unwrap();
        w.row(&[1.0, 2.0, 3.0]).unwrap();
        drop(w);
        assert!(
            !path.exists() && std::fs::read_dir(&dir).unwrap().count() == 0,
            "an unfinished file leaves nothing"
        );
        let mut w = Writer::create(&path, &header).unwrap();
        w.row(&[1.0, 2.0, 3.0]).unwrap();
        w.row(&[-1.0, 0.5, f32::MIN]).unwrap();
        w.finish().unwrap();
        let mut r = Reader::open(&path).unwrap();
        assert_eq!(r.header, header);
        let mut row = Vec::new();
        r.row(&mut row).unwrap();
        assert_eq!(row, [1.0, 2.0, 3.0]);
        r.row(&mut row).unwrap();
        assert_eq!(row, [-1.0, 0.5, f32::MIN]);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        let e = Reader::open(&path).err().unwrap().to_string();
        assert!(e.contains("needs"), "{e}");
        std::fs::write(&path, b"not a logits file at all").unwrap();
        let e = Reader::open(&path).err().unwrap().to_string();
        assert!(e.contains("not a gptoss logits file"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
