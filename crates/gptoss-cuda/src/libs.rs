//! Finds the CUDA libraries before cudarc touches them (cudarc panics when one is missing): the driver
//! (`libcuda.so.1`), NVRTC (with its `libnvrtc-builtins` preloaded) and cuBLASLt. Each is looked for on the
//! loader path, then in the given dirs, `LD_LIBRARY_PATH`, CUDA install dirs and pip `nvidia/*/lib`, and
//! preloaded by absolute path so cudarc's later by-name `dlopen` finds it by SONAME.

use std::path::{Path, PathBuf};

use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW};

use crate::error::{CudaError, Result};

/// A CUDA library the backend loads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CudaLib {
    /// The driver API.
    Driver,
    /// The run-time compiler.
    Nvrtc,
    /// cuBLASLt (dense prefill GEMMs).
    CublasLt,
}

impl CudaLib {
    fn stem(self) -> &'static str {
        match self {
            CudaLib::Driver => "libcuda.so",
            CudaLib::Nvrtc => "libnvrtc.so",
            CudaLib::CublasLt => "libcublasLt.so",
        }
    }

    fn what(self) -> &'static str {
        match self {
            CudaLib::Driver => "the CUDA driver (libcuda.so.1)",
            CudaLib::Nvrtc => "NVRTC (libnvrtc.so)",
            CudaLib::CublasLt => "cuBLASLt (libcublasLt.so)",
        }
    }

    fn hint(self) -> &'static str {
        match self {
            CudaLib::Driver => "no NVIDIA driver on this machine; use --device cpu",
            CudaLib::Nvrtc => "install the CUDA toolkit or `pip install nvidia-cuda-nvrtc`",
            CudaLib::CublasLt => "install the CUDA toolkit or `pip install nvidia-cublas`",
        }
    }

    /// Whether cudarc can open the library by name right now.
    fn present(self) -> bool {
        // SAFETY: these only try dlopen() on cudarc's candidate names; they never call into the library.
        unsafe {
            match self {
                CudaLib::Driver => cudarc::driver::sys::is_culib_present(),
                CudaLib::Nvrtc => cudarc::nvrtc::sys::is_culib_present(),
                CudaLib::CublasLt => cudarc::cublaslt::sys::is_culib_present(),
            }
        }
    }
}

/// Makes `lib` loadable by cudarc, searching `extra` dirs first; the error names what is missing and
/// every directory searched.
pub fn ensure(lib: CudaLib, extra: &[PathBuf]) -> Result<()> {
    if lib.present() {
        return Ok(());
    }
    let dirs = candidate_dirs(extra);
    for file in dirs.iter().flat_map(|d| versioned_files(d, lib.stem())) {
        if lib == CudaLib::Nvrtc {
            if let Some(dir) = file.parent() {
                for helper in versioned_files(dir, "libnvrtc-builtins.so") {
                    preload(&helper);
                }
            }
        }
        if preload(&file) && lib.present() {
            tracing::debug!(path = %file.display(), "preloaded {}", lib.what());
            return Ok(());
        }
    }
    let searched: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    Err(CudaError::LibraryMissing {
        what: lib.what(),
        detail: format!(
            "{} (searched the loader path and {})",
            lib.hint(),
            if searched.is_empty() {
                "no other directory".to_string()
            } else {
                searched.join(", ")
            }
        ),
    })
}

fn preload(path: &Path) -> bool {
    // SAFETY: loading a CUDA library runs its initialisers, which is what cudarc would do by name.
    match unsafe { Library::open(Some(path), RTLD_NOW | RTLD_GLOBAL) } {
        Ok(lib) => {
            // Keep it loaded for the life of the process so the SONAME stays resolvable.
            std::mem::forget(lib);
            true
        }
        Err(e) => {
            tracing::debug!(path = %path.display(), "could not preload: {e}");
            false
        }
    }
}

/// Directories to search, in priority order, existing ones only.
fn candidate_dirs(extra: &[PathBuf]) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = extra.to_vec();
    if let Some(v) = std::env::var_os("LD_LIBRARY_PATH") {
        dirs.extend(std::env::split_paths(&v));
    }
    let mut roots: Vec<PathBuf> = ["CUDA_HOME", "CUDA_PATH", "CUDA_ROOT"]
        .iter()
        .filter_map(std::env::var_os)
        .map(PathBuf::from)
        .collect();
    roots.push("/usr/local/cuda".into());
    let mut versioned: Vec<PathBuf> = subdirs(Path::new("/usr/local"))
        .into_iter()
        .filter(|d| {
            d.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("cuda-"))
        })
        .collect();
    versioned.reverse();
    roots.extend(versioned);
    for r in &roots {
        dirs.extend([
            r.join("lib64"),
            r.join("lib"),
            r.join("targets/x86_64-linux/lib"),
        ]);
    }
    for d in [
        "/usr/local/nvidia/lib64",
        "/usr/local/nvidia/lib",
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib64",
        "/usr/lib/wsl/lib",
    ] {
        dirs.push(d.into());
    }
    for site in site_packages() {
        for pkg in subdirs(&site.join("nvidia")) {
            dirs.push(pkg.join("lib"));
        }
    }
    dirs.retain(|d| d.is_dir());
    let mut seen = std::collections::HashSet::new();
    dirs.retain(|d| seen.insert(d.clone()));
    dirs
}

/// Python site-packages that may hold pip's `nvidia/*` wheels: the active venv, then `python3`'s own.
fn site_packages() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(venv) = std::env::var_os("VIRTUAL_ENV") {
        for lib in subdirs(&PathBuf::from(venv).join("lib")) {
            out.push(lib.join("site-packages"));
        }
    }
    let probe = std::process::Command::new("python3")
        .args(["-c", "import site,sys; print('\\n'.join(site.getsitepackages() + [site.getusersitepackages()] + sys.path))"])
        .stderr(std::process::Stdio::null())
        .output();
    if let Ok(o) = probe {
        if o.status.success() {
            out.extend(
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .filter(|l| !l.is_empty())
                    .map(PathBuf::from),
            );
        }
    }
    out
}

fn subdirs(p: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(p)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Files in `dir` named `stem` or `stem.<digits and dots>`, highest major version first.
fn versioned_files(dir: &Path, stem: &str) -> Vec<PathBuf> {
    let mut hits: Vec<(u32, PathBuf)> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().to_string();
                    let rest = name.strip_prefix(stem)?;
                    let ver = match rest.strip_prefix('.') {
                        Some(v) if v.chars().all(|c| c.is_ascii_digit() || c == '.') => v,
                        None if rest.is_empty() => "",
                        _ => return None,
                    };
                    let major = ver
                        .split('.')
                        .next()
                        .and_then(|m| m.parse().ok())
                        .unwrap_or(0);
                    Some((major, e.path()))
                })
                .collect()
        })
        .unwrap_or_default();
    hits.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    hits.into_iter().map(|(_, p)| p).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versioned_names_newest_first() {
        let dir = std::env::temp_dir().join(format!("gptoss-libs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for n in [
            "libnvrtc.so.12",
            "libnvrtc.so.13",
            "libnvrtc.so",
            "libnvrtc.alt.so.13",
            "libnvrtc-builtins.so.13.0",
        ] {
            std::fs::write(dir.join(n), b"").unwrap();
        }
        let names: Vec<String> = versioned_files(&dir, "libnvrtc.so")
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().to_string())
            .collect();
        assert_eq!(names, ["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"]);
        let b = versioned_files(&dir, "libnvrtc-builtins.so");
        assert_eq!(b.len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_library_names_itself() {
        // cuBLASLt is absent on CPU-only CI machines; where it is found there is no error to check.
        let Err(e) = ensure(
            CudaLib::CublasLt,
            &[std::env::temp_dir().join("gptoss-no-such-dir")],
        ) else {
            return;
        };
        let e = e.to_string();
        assert!(
            e.starts_with("cuBLASLt (libcublasLt.so) not found: install"),
            "{e}"
        );
    }
}
