//! NVRTC: compiles a kernel file to a cubin for one exact arch (or PTX for a forced older arch) with the raw NVRTC calls (cudarc's safe
//! helper returns PTX only), keeps the compiler log (ptxas `-v` resource lines), and caches cubins on disk
//! under a key of source hash, options, NVRTC version and arch.

use std::ffi::{c_char, CString};
use std::path::{Path, PathBuf};

use cudarc::nvrtc::{result, sys};

use crate::error::{CudaError, Result};

/// What NVRTC produces for the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Machine code for `sm_XY` (runs on that arch and newer minors of the same major).
    Cubin(u32),
    /// PTX for `compute_XY`, compiled by the driver at load (how `GPTOSS_CUDA_ARCH=sm_80` runs the
    /// baseline code on a GPU of another major, e.g. Hopper).
    Ptx(u32),
}

impl Target {
    /// The arch as `XY`.
    pub fn arch(self) -> u32 {
        match self {
            Target::Cubin(a) | Target::Ptx(a) => a,
        }
    }

    /// `sm_80` or `compute_80`.
    pub fn describe(self) -> String {
        match self {
            Target::Cubin(a) => format!("sm_{a}"),
            Target::Ptx(a) => format!("compute_{a}"),
        }
    }
}

/// A compiled kernel file.
pub struct Compiled {
    /// The cubin image, or the PTX text for [`Target::Ptx`].
    pub image: Vec<u8>,
    /// NVRTC's log (empty on a cache hit).
    pub log: String,
    /// Whether it came from the disk cache.
    pub cached: bool,
}

/// NVRTC's `(major, minor)` version. The library must already be loadable (see [`crate::libs`]).
pub fn version() -> Result<(i32, i32)> {
    let (mut major, mut minor) = (0, 0);
    // SAFETY: two valid out-pointers.
    let r = unsafe { sys::nvrtcVersion(&mut major, &mut minor) };
    if r != sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(CudaError::driver("nvrtcVersion", r));
    }
    Ok((major, minor))
}

/// The real archs (`80`, `86`, ...) this NVRTC can compile for.
pub fn supported_archs() -> Vec<u32> {
    let mut n = 0;
    // SAFETY: valid out-pointer; the array below has exactly `n` entries.
    unsafe {
        if sys::nvrtcGetNumSupportedArchs(&mut n) != sys::nvrtcResult::NVRTC_SUCCESS || n <= 0 {
            return Vec::new();
        }
        let mut v = vec![0; n as usize];
        if sys::nvrtcGetSupportedArchs(v.as_mut_ptr()) != sys::nvrtcResult::NVRTC_SUCCESS {
            return Vec::new();
        }
        v.into_iter()
            .filter_map(|a| u32::try_from(a).ok())
            .collect()
    }
}

/// The options every kernel is compiled with for `target` (part of the cache key).
pub fn options(target: Target) -> Vec<String> {
    let mut o = vec![
        format!("--gpu-architecture={}", target.describe()),
        "--std=c++17".to_string(),
    ];
    if let Target::Cubin(_) = target {
        o.push("--ptxas-options=-v".to_string());
    }
    o
}

/// Compiles `source` (file name `file`) for `target`, through the cache in `cache_dir`.
pub fn compile(
    file: &'static str,
    source: &str,
    target: Target,
    cache_dir: Option<&Path>,
) -> Result<Compiled> {
    match cached(file, source, target, cache_dir)? {
        Some(c) => Ok(c),
        None => compile_fresh(file, source, target, cache_dir),
    }
}

/// The cached image of `source` for `target` in `cache_dir`, if there is one.
pub fn cached(
    file: &'static str,
    source: &str,
    target: Target,
    cache_dir: Option<&Path>,
) -> Result<Option<Compiled>> {
    let Some(path) = cache_path(file, source, target, cache_dir)? else {
        return Ok(None);
    };
    Ok(match std::fs::read(path) {
        Ok(image) if !image.is_empty() => Some(Compiled {
            image,
            log: String::new(),
            cached: true,
        }),
        _ => None,
    })
}

/// Compiles `source` for `target` with NVRTC and stores the image in `cache_dir` (a failed store is
/// logged: the compile still counts).
pub fn compile_fresh(
    file: &'static str,
    source: &str,
    target: Target,
    cache_dir: Option<&Path>,
) -> Result<Compiled> {
    let compiled = compile_uncached(file, source, target, &options(target))?;
    if let Some(p) = cache_path(file, source, target, cache_dir)? {
        if let Err(e) = write_atomic(&p, &compiled.image) {
            tracing::warn!(path = %p.display(), "could not cache a cubin: {e}");
        }
    }
    Ok(compiled)
}

/// Where the image of `source` for `target` is cached (key: source, options, NVRTC version, arch).
fn cache_path(
    file: &'static str,
    source: &str,
    target: Target,
    cache_dir: Option<&Path>,
) -> Result<Option<PathBuf>> {
    let Some(dir) = cache_dir else {
        return Ok(None);
    };
    let key = cache_key(source, &options(target), version()?, &target.describe());
    let ext = match target {
        Target::Cubin(_) => "cubin",
        Target::Ptx(_) => "ptx",
    };
    let stem = file.trim_end_matches(".cu");
    Ok(Some(dir.join(format!(
        "{stem}-{}-{key:016x}.{ext}",
        target.describe()
    ))))
}

fn compile_uncached(
    file: &'static str,
    source: &str,
    target: Target,
    opts: &[String],
) -> Result<Compiled> {
    let fail = |message: String, log: String| CudaError::Compile {
        file,
        arch: target.describe(),
        message,
        log,
    };
    let src =
        CString::new(source).map_err(|_| fail("source holds a NUL byte".into(), String::new()))?;
    let name =
        CString::new(file).map_err(|_| fail("file name holds a NUL byte".into(), String::new()))?;
    let prog = result::create_program(&src, Some(&name))
        .map_err(|e| fail(format!("{e:?}"), String::new()))?;
    // SAFETY: `prog` is a live program until destroy_program below; buffers are sized by NVRTC's own
    // size queries.
    unsafe {
        let compiled = result::compile_program(prog, opts);
        let log = result::get_program_log(prog)
            .map(|l| c_chars_to_string(&l))
            .unwrap_or_default();
        let out = match compiled {
            Err(e) => Err(fail(format!("{e:?}"), log)),
            Ok(()) => get_image(prog, target)
                .map(|image| Compiled {
                    image,
                    log,
                    cached: false,
                })
                .map_err(|e| fail(e, String::new())),
        };
        let _ = result::destroy_program(prog);
        out
    }
}

/// # Safety
/// `prog` must be a successfully compiled, live NVRTC program.
unsafe fn get_image(
    prog: sys::nvrtcProgram,
    target: Target,
) -> std::result::Result<Vec<u8>, String> {
    if let Target::Ptx(_) = target {
        let ptx = result::get_ptx(prog).map_err(|e| format!("nvrtcGetPTX: {e:?}"))?;
        return Ok(c_chars_to_string(&ptx).into_bytes());
    }
    let mut n = 0usize;
    let r = sys::nvrtcGetCUBINSize(prog, &mut n);
    if r != sys::nvrtcResult::NVRTC_SUCCESS || n == 0 {
        return Err(format!("no cubin ({r:?}, {n} bytes)"));
    }
    let mut buf = vec![0 as c_char; n];
    let r = sys::nvrtcGetCUBIN(prog, buf.as_mut_ptr());
    if r != sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(format!("nvrtcGetCUBIN: {r:?}"));
    }
    Ok(buf.into_iter().map(|c| c as u8).collect())
}

fn c_chars_to_string(v: &[c_char]) -> String {
    let bytes: Vec<u8> = v
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// FNV-1a 64 over every input of the compile (stable across Rust versions, unlike `DefaultHasher`).
fn cache_key(source: &str, opts: &[String], nvrtc: (i32, i32), target: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for &b in bytes {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    };
    feed(source.as_bytes());
    for o in opts {
        feed(o.as_bytes());
    }
    feed(format!("nvrtc {}.{} {target}", nvrtc.0, nvrtc.1).as_bytes());
    h
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp: PathBuf = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// Resource use of one kernel, from ptxas's `-v` lines in an NVRTC log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelResources {
    /// Kernel (mangled or `extern "C"`) name.
    pub function: String,
    /// Bytes of stack frame.
    pub stack_bytes: u32,
    /// Bytes of spill stores.
    pub spill_store_bytes: u32,
    /// Bytes of spill loads.
    pub spill_load_bytes: u32,
}

/// Parses `Function properties for X` / `N bytes stack frame, N bytes spill stores, N bytes spill loads`.
pub fn parse_resources(log: &str) -> Vec<KernelResources> {
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in log.lines() {
        if let Some(i) = line.find("Function properties for ") {
            current = Some(
                line[i + "Function properties for ".len()..]
                    .trim()
                    .to_string(),
            );
        } else if line.contains("bytes spill stores") {
            let nums: Vec<u32> = line
                .split(|c: char| !c.is_ascii_digit())
                .filter(|s| !s.is_empty())
                .filter_map(|s| s.parse().ok())
                .collect();
            if let (Some(f), [stack, stores, loads, ..]) = (current.take(), nums.as_slice()) {
                out.push(KernelResources {
                    function: f,
                    stack_bytes: *stack,
                    spill_store_bytes: *stores,
                    spill_load_bytes: *loads,
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ptxas_lines() {
        let log = "ptxas info    : Compiling entry function 'k' for 'sm_80'\n\
                   ptxas info    : Function properties for k\n\
                   \x20   16 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads\n\
                   ptxas info    : Used 40 registers\n";
        let r = parse_resources(log);
        assert_eq!(
            r,
            vec![KernelResources {
                function: "k".into(),
                stack_bytes: 16,
                spill_store_bytes: 8,
                spill_load_bytes: 4
            }]
        );
    }

    #[test]
    fn key_depends_on_every_input() {
        let o = options(Target::Cubin(80));
        let base = cache_key("a", &o, (13, 0), "sm_80");
        assert_ne!(base, cache_key("b", &o, (13, 0), "sm_80"));
        assert_ne!(
            base,
            cache_key("a", &options(Target::Cubin(86)), (13, 0), "sm_86")
        );
        assert_ne!(base, cache_key("a", &o, (13, 1), "sm_80"));
        assert_eq!(base, cache_key("a", &o, (13, 0), "sm_80"));
    }
}
