//! Writing result files whole or not at all: the bytes go to a new temporary file beside the destination
//! (created exclusively, so a planted file or link there is never followed), which is renamed over it.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

/// Writes `bytes` to `path` through `<path>.tmp-<pid>` and a rename; on failure nothing is left behind.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp-{}", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp);
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))
        .and_then(|mut f| {
            f.write_all(bytes)?;
            f.sync_all()?;
            Ok(())
        })
        .and_then(|()| std::fs::rename(&tmp, path).context("renaming into place"));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_whole_file_and_leaves_no_temporary() {
        let dir = std::env::temp_dir().join(format!("gptoss-output-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("out.bin");
        write_atomically(&path, b"abc").unwrap();
        write_atomically(&path, b"defg").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"defg");
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(names.len(), 1);
        let missing = dir.join("no-such-dir").join("x");
        assert!(write_atomically(&missing, b"x").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
