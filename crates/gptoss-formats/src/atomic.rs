//! Output files that appear whole or not at all, and never through a planted link. A [`TempFile`] is an
//! anonymous file in the destination's directory (Linux `O_TMPFILE`: a crash or SIGKILL leaves nothing
//! behind, the kernel frees it) that [`TempFile::persist`] links under a fresh name and renames over
//! the destination. Where anonymous files are not supported it is a new file named
//! `<dest>.tmp-<pid>-<n>`, created exclusively (an existing file or link there is an error, never
//! followed); such names left by a process that no longer runs are removed by the next writer of the
//! same destination ([`sweep_stale`]).

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

/// Numbers the temporary names of one process.
static NEXT: AtomicU64 = AtomicU64::new(0);

/// Where the bytes of a [`TempFile`] live until it is persisted.
#[derive(Debug)]
enum Backing {
    /// An `O_TMPFILE` inode in the destination's directory: no name until persisted.
    Anonymous,
    /// A named temporary file, removed on drop unless persisted.
    Named(PathBuf),
}

/// A file being written for `dest`; dropped unpersisted, it leaves nothing behind.
#[derive(Debug)]
pub struct TempFile {
    file: File,
    backing: Option<Backing>,
    dest: PathBuf,
}

/// `<dest>.tmp-<pid>-<n>`: a fresh temporary name beside `dest`.
pub fn temp_name(dest: &Path) -> PathBuf {
    let mut name = dest.as_os_str().to_owned();
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    name.push(format!(".tmp-{}-{n}", std::process::id()));
    PathBuf::from(name)
}

fn parent_of(dest: &Path) -> PathBuf {
    match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

impl TempFile {
    /// A new temporary file for `dest`, in `dest`'s directory (so the final rename stays on one file
    /// system).
    pub fn create(dest: &Path) -> Result<Self> {
        let dir = parent_of(dest);
        if let Some(file) = anonymous(&dir) {
            return Ok(TempFile {
                file,
                backing: Some(Backing::Anonymous),
                dest: dest.to_path_buf(),
            });
        }
        sweep_stale(dest);
        let path = temp_name(dest);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        Ok(TempFile {
            file,
            backing: Some(Backing::Named(path)),
            dest: dest.to_path_buf(),
        })
    }

    /// A second handle on the file, for a buffered writer.
    pub fn handle(&self) -> Result<File> {
        self.file.try_clone().map_err(|e| Error::io(&self.dest, e))
    }

    /// Syncs the bytes and puts the file at `dest` (replacing what was there) in one rename.
    pub fn persist(self) -> Result<()> {
        let dest = self.dest.clone();
        self.persist_as(&dest)
    }

    /// Like [`TempFile::persist`], to another path on the same file system (a staging folder beside
    /// the destination).
    pub fn persist_as(mut self, dest: &Path) -> Result<()> {
        self.file.sync_all().map_err(|e| Error::io(dest, e))?;
        let dest = dest.to_path_buf();
        let named = match self.backing.take() {
            Some(Backing::Anonymous) => {
                let named = temp_name(&dest);
                if link_anonymous(&self.file, &named).is_err() {
                    // No /proc to link through: copy into a named file instead (slow, still whole).
                    copy_out(&mut self.file, &named).map_err(|e| Error::io(&named, e))?;
                }
                named
            }
            Some(Backing::Named(path)) => path,
            None => return Err(Error::format(&dest, "temporary file already persisted")),
        };
        let renamed = std::fs::rename(&named, &dest).map_err(|e| Error::io(&dest, e));
        if renamed.is_err() {
            let _ = std::fs::remove_file(&named);
        }
        renamed?;
        sync_dir(&parent_of(&dest));
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(Backing::Named(path)) = self.backing.take() {
            // Unfinished: a partial file must not be mistaken for a result. Best effort.
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Copies the whole of `file` into a new file at `to` (created exclusively) and syncs it.
fn copy_out(file: &mut File, to: &Path) -> io::Result<()> {
    use std::io::{Seek, SeekFrom};
    file.seek(SeekFrom::Start(0))?;
    let mut out = OpenOptions::new().write(true).create_new(true).open(to)?;
    let copied = io::copy(file, &mut out).and_then(|_| out.sync_all());
    if copied.is_err() {
        let _ = std::fs::remove_file(to);
    }
    copied
}

/// Writes `bytes` to `dest` whole or not at all.
pub fn write_atomically(dest: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let temp = TempFile::create(dest)?;
    temp.handle()?
        .write_all(bytes)
        .map_err(|e| Error::io(dest, e))?;
    temp.persist()
}

/// Removes `<dest>.tmp-<pid>-…` files and folders whose process no longer runs (left by a crash or a
/// SIGKILL of an earlier writer of `dest`). Best effort: what cannot be checked or removed stays.
pub fn sweep_stale(dest: &Path) {
    let (Some(name), Ok(entries)) = (
        dest.file_name().and_then(|n| n.to_str()),
        std::fs::read_dir(parent_of(dest)),
    ) else {
        return;
    };
    let prefix = format!("{name}.tmp-");
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(pid) = file_name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() || process_runs(pid) {
            continue;
        }
        let path = entry.path();
        // `file_type` does not follow links: a planted link is removed, never its target.
        let removed = match entry.file_type() {
            Ok(t) if t.is_dir() => std::fs::remove_dir_all(&path),
            Ok(_) => std::fs::remove_file(&path),
            Err(e) => Err(e),
        };
        if removed.is_ok() {
            tracing::info!(path = %path.display(), "removed a temporary file left by an earlier run");
        }
    }
}

/// True when `pid` is a running process (or when that cannot be told: then nothing is swept).
fn process_runs(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        Path::new("/proc").join(pid.to_string()).exists()
    } else {
        true
    }
}

/// Makes a directory entry change durable. Best effort (not every file system syncs directories).
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(target_os = "linux")]
fn anonymous(dir: &Path) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .read(true)
        .write(true)
        .mode(0o644)
        .custom_flags(libc::O_TMPFILE)
        .open(dir)
        .ok()
}

#[cfg(not(target_os = "linux"))]
fn anonymous(_dir: &Path) -> Option<File> {
    None
}

/// Gives an `O_TMPFILE` file the name `at` (which must not exist: a planted file or link there makes
/// this fail with EEXIST, it is never followed).
#[cfg(target_os = "linux")]
fn link_anonymous(file: &File, at: &Path) -> io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::io::AsRawFd;
    let from = CString::new(format!("/proc/self/fd/{}", file.as_raw_fd()))?;
    let to = CString::new(at.as_os_str().as_bytes())?;
    // SAFETY: both arguments are NUL-terminated strings that live across the call; linkat reads them
    // and touches no other memory of ours.
    let rc = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn link_anonymous(_file: &File, _at: &Path) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "anonymous files exist only on Linux",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("gptoss-atomic-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn persisted_whole_dropped_leaves_nothing() {
        let dir = scratch("persist");
        let dest = dir.join("out.bin");
        write_atomically(&dest, b"abc").unwrap();
        write_atomically(&dest, b"defg").unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"defg");
        let t = TempFile::create(&dest).unwrap();
        t.handle().unwrap().write_all(b"partial").unwrap();
        drop(t);
        assert_eq!(names(&dir), vec!["out.bin"]);
        assert_eq!(std::fs::read(&dest).unwrap(), b"defg");
        assert!(write_atomically(&dir.join("no-dir").join("x"), b"x").is_err());
    }

    #[test]
    fn a_planted_link_is_replaced_not_followed() {
        let dir = scratch("link");
        let victim = dir.join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let dest = dir.join("model.gguf");
        std::os::unix::fs::symlink(&victim, &dest).unwrap();
        // The old `<dest>.tmp` name, planted too: never opened.
        std::os::unix::fs::symlink(&victim, dir.join("model.gguf.tmp")).unwrap();
        write_atomically(&dest, b"GGUF").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert_eq!(std::fs::read(&dest).unwrap(), b"GGUF");
        assert!(!std::fs::symlink_metadata(&dest).unwrap().is_symlink());
    }

    #[test]
    fn stale_temporaries_of_dead_processes_are_swept() {
        let dir = scratch("sweep");
        let dest = dir.join("out");
        // pid 0 never names a user process; u32::MAX is above any pid_max.
        let dead = dir.join(format!("out.tmp-{}-0", u32::MAX));
        std::fs::write(&dead, b"left by a SIGKILL").unwrap();
        std::fs::create_dir(dir.join(format!("out.tmp-{}-1", u32::MAX))).unwrap();
        let mine = temp_name(&dest);
        std::fs::write(&mine, b"live").unwrap();
        std::fs::write(dir.join("out.tmp-notapid"), b"not ours").unwrap();
        sweep_stale(&dest);
        let left = names(&dir);
        assert_eq!(left.len(), 2, "{left:?}");
        assert!(mine.exists() && dir.join("out.tmp-notapid").exists());
    }
}
