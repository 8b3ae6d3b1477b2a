//! Start-up settings of the CUDA backend. [`CudaOptions::from_env`] is the one place that reads the
//! environment (`GPTOSS_CUDA_ARCH`, `GPTOSS_CUDA_LIB_DIRS`, `GPTOSS_CUDA_GRAPHS`, `GPTOSS_CUDA_PDL`,
//! `GPTOSS_MOE_KERNEL`, `GPTOSS_LINEAR_KERNEL`, `GPTOSS_FUSE_NORM`, `GPTOSS_FUSE_ROPE`,
//! `GPTOSS_DEFER_TOPK`, `GPTOSS_REPACK`, `GPTOSS_CACHE_DIR`, `XDG_CACHE_HOME`, `HOME`).

use std::path::PathBuf;

use gptoss_engine::memory::KvPrecision;

use crate::error::{CudaError, Result};

/// How the backend is set up; build with [`CudaOptions::from_env`] and adjust fields.
#[derive(Clone, Debug)]
pub struct CudaOptions {
    /// Device ordinal.
    pub device: usize,
    /// Compile kernels for this `sm_XY` (as `XY`) instead of the device's own arch (`GPTOSS_CUDA_ARCH`).
    pub arch_override: Option<u32>,
    /// Cap on every device allocation the backend makes (`--max-vram`); `None` = the device's memory.
    pub max_vram_bytes: Option<u64>,
    /// Element type of the KV cache.
    pub kv: KvPrecision,
    /// Where compiled cubins are cached (`$GPTOSS_CACHE_DIR/cubin`, else `$XDG_CACHE_HOME/gptoss/cubin`,
    /// else `~/.cache/gptoss/cubin`); `None` disables the disk cache.
    pub cache_dir: Option<PathBuf>,
    /// Whether the first kernel compile of a backend (a cache miss) is announced on stderr.
    pub compile_notice: CompileNotice,
    /// Extra directories searched first for the CUDA libraries (`GPTOSS_CUDA_LIB_DIRS`, `:`-separated).
    pub lib_dirs: Vec<PathBuf>,
    /// Record small steps as CUDA graphs and replay them (`GPTOSS_CUDA_GRAPHS=0` turns it off).
    pub graphs: bool,
    /// Launch each kernel as a programmatic dependent of the one before it where the code is sm_90 or
    /// newer, so it starts while that one drains (`GPTOSS_CUDA_PDL=0` turns it off).
    pub dependent_launch: bool,
    /// Which expert kernels run (`GPTOSS_MOE_KERNEL`; benchmarks and diagnosis, default automatic).
    pub moe_kernel: MoeKernel,
    /// Prompt steps on the exact kernels (`--exact`): attention in f32 on the CUDA cores instead of f16
    /// tensor cores (`attention_flash`: steps of at least 4 rows per sequence), MXFP4 experts with x in two
    /// f16 parts and f32 sums per 32-element block instead of the f16-activation GEMM, dense linears with x
    /// in three bf16 parts instead of two. Steps of one row per sequence, at most 8 pairs per expert on
    /// average and at most [`FAST_LINEAR_MIN_ROWS`] - 1 rows (decode, and batched decode of up to 64
    /// streams on 20b) are exact either way.
    ///
    /// [`FAST_LINEAR_MIN_ROWS`]: crate::ops::linear::FAST_LINEAR_MIN_ROWS
    pub exact: bool,
    /// Which dense linear kernels run (`GPTOSS_LINEAR_KERNEL`; benchmarks and diagnosis, default automatic).
    pub linear_kernel: LinearKernel,
    /// Whether one-row GEMVs compute the RMSNorm before them themselves (the norms before q/k/v and before
    /// the router, at one step row) instead of a launch of their own (`GPTOSS_FUSE_NORM=0` turns it off;
    /// the results are bit-identical either way).
    pub fuse_norm: bool,
    /// Where decode steps rotate q and store the step's keys and values inside the attention kernel instead
    /// of a RoPE launch of their own (`GPTOSS_FUSE_ROPE=auto|1|0`; bit-identical either way).
    pub fuse_rope: FuseRope,
    /// Whether a one-token step's top-k is selected by its first MXFP4 expert kernel from the router's
    /// logits, the router also splitting h, instead of a routing launch of its own (`GPTOSS_DEFER_TOPK=0`
    /// turns it off; bit-identical either way).
    pub defer_topk: bool,
    /// Where weights stored in ggml block formats are repacked at upload (`GPTOSS_REPACK`; A/B measurements,
    /// default on the device).
    pub repack: RepackSite,
}

/// When a decode step's RoPE and KV store run inside its attention kernel ([`CudaOptions::fuse_rope`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FuseRope {
    /// Where the step's kernels do not launch as programmatic dependents (GPUs before Hopper, and steps of
    /// more than 8 rows). Measured on the H200 (bench/NOTES.md, session 19): without dependent launch, tg128
    /// with bf16 dense weights +2.3%; as a dependent, bf16 −11% and batch4 −8% (Q8_0 dense +1.3%).
    #[default]
    Auto,
    /// Every step of one row per sequence (tests, measurements).
    Always,
    /// Never: RoPE in its own launch.
    Never,
}

impl FuseRope {
    /// `auto`, `1` (always) or `0` (never).
    pub fn parse(value: &str) -> Result<Self> {
        match value.trim() {
            "" | "auto" => Ok(FuseRope::Auto),
            "1" => Ok(FuseRope::Always),
            "0" => Ok(FuseRope::Never),
            _ => Err(CudaError::Config(format!(
                "GPTOSS_FUSE_ROPE={value:?}: expected auto, 1 or 0"
            ))),
        }
    }
}

/// Where the upload rewrites weights stored in ggml block formats (Q8_0, ggml MXFP4, Q4_0, IQ4_NL) into the
/// kernels' layout. The result is byte-identical either way (`tests/gpu_upload.rs`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RepackSite {
    /// The file's raw blocks are copied up and rewritten by `kernels/repack.cu` (`device`, the default); other
    /// formats, and rows too long for a staging buffer, are repacked on the host.
    #[default]
    Device,
    /// Every weight is repacked on the host while the staging buffers are filled (`host`).
    Host,
}

impl RepackSite {
    /// Parses `GPTOSS_REPACK`'s value.
    pub fn parse(value: &str) -> Result<Self> {
        match value.trim() {
            "" | "device" => Ok(RepackSite::Device),
            "host" => Ok(RepackSite::Host),
            _ => Err(CudaError::Config(format!(
                "GPTOSS_REPACK={value:?}: expected device or host"
            ))),
        }
    }
}

/// The dense linear kernels a step uses: chosen from its rows, or forced (where the weight format allows
/// the tensor cores) to compare them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LinearKernel {
    /// At one row the one-row GEMVs (bf16 / f16 warp rows, Q8_0 on dp4a) where the weight has them, else the
    /// split-K GEMV below 5 rows; tensor-core tiles (split along K when they are few) from 5, pipelined up to 64
    /// rows for bf16 and Q8_0 (`auto`).
    #[default]
    Auto,
    /// The split-K CUDA-core GEMV at every size, one row included (`gemv`: the kernels before the one-row
    /// GEMVs).
    Gemv,
    /// Tensor-core tiles from 16 rows, never split along K (`tiles`: the kernels before K splits).
    Tiles,
    /// Tensor-core tiles split along K at every size, 1 row included (`tiles-splitk`): at 5–64 rows, the tiles
    /// before the pipelined ones.
    TilesSplitK,
    /// The pipelined tiles (`linear_pipe_<fmt>`) wherever they take the weight and the rows (up to 64), 1 row
    /// included; the split tiles elsewhere (`pipe`).
    Pipe,
}

impl LinearKernel {
    /// Parses `GPTOSS_LINEAR_KERNEL`'s value.
    pub fn parse(value: &str) -> Result<Self> {
        match value.trim() {
            "" | "auto" => Ok(LinearKernel::Auto),
            "gemv" => Ok(LinearKernel::Gemv),
            "tiles" => Ok(LinearKernel::Tiles),
            "tiles-splitk" => Ok(LinearKernel::TilesSplitK),
            "pipe" => Ok(LinearKernel::Pipe),
            _ => Err(CudaError::Config(format!(
                "GPTOSS_LINEAR_KERNEL={value:?}: expected auto, gemv, tiles, tiles-splitk or pipe"
            ))),
        }
    }
}

/// The expert kernels a step uses: chosen from the pairs per expert and the weight format, or forced
/// (where the format allows it; otherwise the automatic choice) to compare them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MoeKernel {
    /// By the pairs per expert and the format (`auto`).
    #[default]
    Auto,
    /// The split-K CUDA-core GEMV (`split`).
    Split,
    /// bf16 tensor-core tiles of 32 or 64 pairs (`mma`).
    Mma,
    /// MXFP4 on f16 tensor cores, tiles of 8 pairs (`fp4-8`).
    Fp4P8,
    /// Same, tiles of 16 pairs (`fp4-16`).
    Fp4P16,
    /// MXFP4 f16 GEMM tiles of 32 pairs × 128 weight rows (`fp4-g32`).
    Fp4G32,
    /// Same, 64 pairs (`fp4-g64`): the exact kernel for large steps.
    Fp4G64,
    /// MXFP4 f16 GEMM with f16 activations, tiles of 16 pairs (`fp4-h16`): batched decode.
    Fp4H16,
    /// MXFP4 f16 GEMM with f16 activations, tiles of 64 pairs (`fp4-h64`): the fast kernel for large steps.
    Fp4H64,
    /// Same, tiles of 128 pairs (`fp4-h128`): long prompts.
    Fp4H128,
    /// MXFP4 on integer dot products, tiles of one pair (`fp4-dot`).
    Fp4Dot,
}

impl MoeKernel {
    /// Parses `GPTOSS_MOE_KERNEL`'s value.
    pub fn parse(value: &str) -> Result<Self> {
        match value.trim() {
            "" | "auto" => Ok(MoeKernel::Auto),
            "split" => Ok(MoeKernel::Split),
            "mma" => Ok(MoeKernel::Mma),
            "fp4-8" => Ok(MoeKernel::Fp4P8),
            "fp4-16" => Ok(MoeKernel::Fp4P16),
            "fp4-g32" => Ok(MoeKernel::Fp4G32),
            "fp4-g64" => Ok(MoeKernel::Fp4G64),
            "fp4-h16" => Ok(MoeKernel::Fp4H16),
            "fp4-h64" => Ok(MoeKernel::Fp4H64),
            "fp4-h128" => Ok(MoeKernel::Fp4H128),
            "fp4-dot" => Ok(MoeKernel::Fp4Dot),
            _ => Err(CudaError::Config(format!(
                "GPTOSS_MOE_KERNEL={value:?}: expected auto, split, mma, fp4-8, fp4-16, fp4-g32, fp4-g64, fp4-h16, fp4-h64, fp4-h128 or fp4-dot"
            ))),
        }
    }
}

impl CudaOptions {
    /// Reads the environment once: arch override, library dirs and the cubin cache directory.
    pub fn from_env() -> Result<Self> {
        let arch_override = match std::env::var("GPTOSS_CUDA_ARCH") {
            Ok(v) if !v.trim().is_empty() => Some(parse_arch(&v)?),
            _ => None,
        };
        let lib_dirs = std::env::var("GPTOSS_CUDA_LIB_DIRS")
            .map(|v| {
                v.split(':')
                    .filter(|s| !s.is_empty())
                    .map(PathBuf::from)
                    .collect()
            })
            .unwrap_or_default();
        let nonempty = |name| std::env::var_os(name).filter(|v| !v.is_empty());
        let cache_root = nonempty("GPTOSS_CACHE_DIR").map(PathBuf::from).or_else(|| {
            nonempty("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| nonempty("HOME").map(|h| PathBuf::from(h).join(".cache")))
                .map(|c| c.join("gptoss"))
        });
        Ok(CudaOptions {
            device: 0,
            arch_override,
            max_vram_bytes: None,
            kv: KvPrecision::default(),
            cache_dir: cache_root.map(|r| r.join("cubin")),
            compile_notice: CompileNotice::Stderr,
            lib_dirs,
            graphs: std::env::var("GPTOSS_CUDA_GRAPHS").map_or(true, |v| v.trim() != "0"),
            dependent_launch: std::env::var("GPTOSS_CUDA_PDL").map_or(true, |v| v.trim() != "0"),
            moe_kernel: match std::env::var("GPTOSS_MOE_KERNEL") {
                Ok(v) => MoeKernel::parse(&v)?,
                Err(_) => MoeKernel::Auto,
            },
            exact: false,
            linear_kernel: match std::env::var("GPTOSS_LINEAR_KERNEL") {
                Ok(v) => LinearKernel::parse(&v)?,
                Err(_) => LinearKernel::Auto,
            },
            fuse_norm: std::env::var("GPTOSS_FUSE_NORM").map_or(true, |v| v.trim() != "0"),
            fuse_rope: match std::env::var("GPTOSS_FUSE_ROPE") {
                Ok(v) => FuseRope::parse(&v)?,
                Err(_) => FuseRope::Auto,
            },
            defer_topk: std::env::var("GPTOSS_DEFER_TOPK").map_or(true, |v| v.trim() != "0"),
            repack: match std::env::var("GPTOSS_REPACK") {
                Ok(v) => RepackSite::parse(&v)?,
                Err(_) => RepackSite::Device,
            },
        })
    }
}

/// Whether a backend says on stderr that it is compiling its kernels (the first run on a GPU, or after
/// an upgrade, spends seconds in NVRTC; later runs load the cached cubins).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompileNotice {
    /// One line on the first compile: `compiling CUDA kernels for sm_90 (once; cached in DIR)`.
    Stderr,
    /// Nothing (tests, embedders that report progress their own way).
    Quiet,
}

/// The line a backend prints before its first compile for `target` (`sm_90`, `compute_80`).
pub fn compile_notice_line(target: &str, cache_dir: Option<&std::path::Path>) -> String {
    match cache_dir {
        Some(d) => format!(
            "compiling CUDA kernels for {target} (once; cached in {})",
            d.display()
        ),
        None => format!(
            "compiling CUDA kernels for {target} (no cache directory: set GPTOSS_CACHE_DIR to keep them)"
        ),
    }
}

/// Parses `sm_80`, `sm80`, `80` or `8.0` into 80.
pub fn parse_arch(value: &str) -> Result<u32> {
    let v = value.trim();
    let digits = v
        .strip_prefix("sm_")
        .or_else(|| v.strip_prefix("sm"))
        .unwrap_or(v);
    let digits: String = digits.chars().filter(|c| *c != '.').collect();
    match digits.parse::<u32>() {
        Ok(n) if (10..=200).contains(&n) => Ok(n),
        _ => Err(CudaError::Config(format!(
            "GPTOSS_CUDA_ARCH={value:?}: expected an arch like sm_80, sm_86, sm_89 or sm_90"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arch_forms() {
        assert_eq!(parse_arch("sm_80").unwrap(), 80);
        assert_eq!(parse_arch("sm86").unwrap(), 86);
        assert_eq!(parse_arch("9.0").unwrap(), 90);
        let e = parse_arch("ampere").unwrap_err().to_string();
        assert!(e.contains("GPTOSS_CUDA_ARCH=\"ampere\""), "{e}");
    }

    #[test]
    fn linear_kernel_names() {
        assert_eq!(LinearKernel::parse("gemv").unwrap(), LinearKernel::Gemv);
        assert_eq!(
            LinearKernel::parse(" tiles-splitk").unwrap(),
            LinearKernel::TilesSplitK
        );
        assert_eq!(LinearKernel::parse("").unwrap(), LinearKernel::Auto);
        assert_eq!(LinearKernel::parse("pipe").unwrap(), LinearKernel::Pipe);
        let e = LinearKernel::parse("fast").unwrap_err().to_string();
        assert!(e.contains("GPTOSS_LINEAR_KERNEL=\"fast\""), "{e}");
    }

    #[test]
    fn repack_sites() {
        assert_eq!(RepackSite::parse("host").unwrap(), RepackSite::Host);
        assert_eq!(RepackSite::parse(" device").unwrap(), RepackSite::Device);
        assert_eq!(RepackSite::parse("").unwrap(), RepackSite::Device);
        let e = RepackSite::parse("gpu").unwrap_err().to_string();
        assert!(
            e.contains("GPTOSS_REPACK=\"gpu\": expected device or host"),
            "{e}"
        );
    }

    #[test]
    fn moe_kernel_names() {
        assert_eq!(MoeKernel::parse("fp4-16").unwrap(), MoeKernel::Fp4P16);
        assert_eq!(MoeKernel::parse("fp4-g64").unwrap(), MoeKernel::Fp4G64);
        assert_eq!(MoeKernel::parse("").unwrap(), MoeKernel::Auto);
        let e = MoeKernel::parse("fast").unwrap_err().to_string();
        assert!(e.contains("GPTOSS_MOE_KERNEL=\"fast\""), "{e}");
    }

    #[test]
    fn compile_notice_names_the_arch_and_the_cache() {
        let dir = std::path::Path::new("/fast/gptoss/cubin");
        assert_eq!(
            compile_notice_line("sm_86", Some(dir)),
            "compiling CUDA kernels for sm_86 (once; cached in /fast/gptoss/cubin)"
        );
        assert!(compile_notice_line("sm_90", None).contains("set GPTOSS_CACHE_DIR"));
    }
}
