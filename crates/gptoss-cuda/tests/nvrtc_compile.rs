//! Compiles every kernel file with NVRTC for sm_80, sm_86, sm_89 and sm_90 (no GPU needed) and fails on a
//! compile error, a missing entry point or a register spill (read from ptxas's `-v` lines). Skips, saying
//! why, only when NVRTC itself cannot be found (`.ci/nvrtc-check.sh` installs it and points
//! `GPTOSS_CUDA_LIB_DIRS` at it).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../../tests/support/peer.rs"]
mod peer;

use gptoss_cuda::kernels::{Func, KernelFile};
use gptoss_cuda::libs::{ensure, CudaLib};
use gptoss_cuda::nvrtc::{compile, parse_resources, supported_archs, version, Target};
use gptoss_cuda::{CudaError, CudaOptions};

#[test]
fn every_kernel_compiles_without_spills_for_every_arch() {
    let opts = CudaOptions::from_env().unwrap();
    match ensure(CudaLib::Nvrtc, &opts.lib_dirs) {
        Ok(()) => {}
        Err(e @ CudaError::LibraryMissing { .. }) => {
            // .ci/nvrtc-check.sh sets GPTOSS_REQUIRE_NVRTC so CI cannot pass by skipping.
            let why = format!("{e} (.ci/nvrtc-check.sh installs it)");
            peer::skipped(
                "every_kernel_compiles_without_spills_for_every_arch",
                &why,
                "GPTOSS_REQUIRE_NVRTC",
            );
            return;
        }
        Err(e) => panic!("{e}"),
    }
    let (major, minor) = version().unwrap();
    let supported = supported_archs();
    println!("NVRTC {major}.{minor}, archs {supported:?}");
    let mut failures = Vec::new();
    for arch in [80u32, 86, 89, 90] {
        assert!(
            supported.contains(&arch),
            "NVRTC {major}.{minor} cannot target sm_{arch}"
        );
        for file in KernelFile::ALL {
            // GPTOSS_NVRTC_ONLY=<file name> compiles that file alone (a quick register check while editing it).
            if std::env::var("GPTOSS_NVRTC_ONLY").is_ok_and(|f| f != file.name()) {
                continue;
            }
            let c = match compile(file.name(), &file.source(), Target::Cubin(arch), None) {
                Ok(c) => c,
                Err(e) => {
                    failures.push(e.to_string());
                    continue;
                }
            };
            // GPTOSS_NVRTC_LOG=<file name> prints that file's ptxas report (registers per kernel).
            if std::env::var("GPTOSS_NVRTC_LOG").is_ok_and(|f| f == file.name()) {
                println!("{}", c.log);
            }
            // GPTOSS_NVRTC_DUMP=<dir> writes every cubin there as <file>.sm_<arch>.cubin (for nvdisasm / cuobjdump).
            if let Some(dir) = std::env::var_os("GPTOSS_NVRTC_DUMP") {
                let path =
                    std::path::Path::new(&dir).join(format!("{}.sm_{arch}.cubin", file.name()));
                std::fs::write(&path, &c.image)
                    .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
            }
            let res = parse_resources(&c.log);
            for f in Func::all().into_iter().filter(|f| f.file() == file) {
                if !res.iter().any(|r| r.function == f.name()) {
                    failures.push(format!(
                        "sm_{arch} {}: no entry point {}",
                        file.name(),
                        f.name()
                    ));
                }
            }
            for r in res
                .iter()
                .filter(|r| r.spill_store_bytes > 0 || r.spill_load_bytes > 0)
            {
                failures.push(format!(
                    "sm_{arch} {}: {} spills ({r:?})",
                    file.name(),
                    r.function
                ));
            }
            let stack: Vec<_> = res
                .iter()
                .filter(|r| r.stack_bytes > 0)
                .map(|r| (&r.function, r.stack_bytes))
                .collect();
            println!(
                "sm_{arch} {:<13} {:>6} bytes, {} kernels, stack frames {stack:?}",
                file.name(),
                c.image.len(),
                res.len()
            );
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
