//! gptoss-cuda: the engine's [`gptoss_engine::Backend`] on NVIDIA GPUs of compute capability 8.0 and newer.
//!
//! Key decisions: cudarc with `dynamic-loading`, so building needs no CUDA toolkit and a machine without a
//! GPU fails `--device cuda` with a clear message (libraries are found and checked before cudarc touches
//! them, see [`libs`]); header-free `.cu` kernels compiled at first use by NVRTC to a cubin for the exact
//! device (or PTX for a forced older arch: `GPTOSS_CUDA_ARCH=sm_80`) and cached on disk; weights repacked at
//! upload into one layout per kind ([`weights`]): ggml block formats on the device from their raw blocks
//! ([`device_repack`]), the rest on all cores, into pinned buffers copied while the next is filled
//! ([`repack`], [`staging`]); every allocation counted against `--max-vram`.
//! This crate knows nothing of file formats beyond the canonical [`gptoss_formats::QuantTensor`].
//!
//! ```no_run
//! use gptoss_cuda::{CudaBackend, CudaOptions};
//! use gptoss_engine::{Capacity, Model};
//! let ckpt = gptoss_formats::load(std::path::Path::new("gpt-oss-20b/"))?;
//! let backend = CudaBackend::new(&CudaOptions::from_env()?)?;
//! let cap = Capacity { max_batch_tokens: 512, max_logit_rows: 1, slots: 1, context_tokens: 8192, kv_blocks: None };
//! let model = Model::new(backend, &ckpt.weights, cap)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod backend;
pub mod device;
pub mod device_repack;
pub mod error;
mod graphs;
pub mod kernels;
pub mod libs;
pub mod nvrtc;
pub mod ops;
pub mod options;
pub mod repack;
pub mod staging;
pub mod step;
pub mod testing;
pub mod vram;
pub mod weights;

pub use backend::CudaBackend;
pub use error::{CudaError, Result};
pub use options::{CompileNotice, CudaOptions, LinearKernel, MoeKernel, RepackSite};
