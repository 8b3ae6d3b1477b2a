//! Picking the backend (`--device cpu|cuda|auto`, `--exact` for the f32 CPU reference) and building the
//! model on it, with the CUDA memory plan checked against `--max-vram` before any weight is uploaded.

use anyhow::{bail, Result};
use gptoss_cuda::{CudaBackend, CudaOptions};
use gptoss_engine::memory::{self, KvPrecision, MemoryPlan};
use gptoss_engine::{Capacity, CpuBackend, CpuKernels, Model};
use gptoss_formats::ModelWeights;

use crate::source::{Device, KvCache, ModelArgs};

/// A model on whichever backend was chosen.
pub enum AnyModel {
    /// On the CPU.
    Cpu(Box<Model<CpuBackend>>),
    /// On an NVIDIA GPU.
    Cuda(Box<Model<CudaBackend>>),
}

/// Runs `$body` with `$m` bound to the concrete `Model<B>` inside an [`AnyModel`].
#[macro_export]
macro_rules! with_model {
    ($model:expr, $m:ident => $body:expr) => {
        match $model {
            $crate::device::AnyModel::Cpu(boxed) => {
                let $m = &mut **boxed;
                $body
            }
            $crate::device::AnyModel::Cuda(boxed) => {
                let $m = &mut **boxed;
                $body
            }
        }
    };
}

impl AnyModel {
    /// The backend's short name (`cpu`, `cuda`).
    pub fn device_name(&self) -> &'static str {
        use gptoss_engine::Backend;
        match self {
            AnyModel::Cpu(m) => m.backend().name(),
            AnyModel::Cuda(m) => m.backend().name(),
        }
    }

    /// Peak device memory so far, for the GPU backend.
    pub fn peak_device_bytes(&self) -> Option<u64> {
        match self {
            AnyModel::Cpu(_) => None,
            AnyModel::Cuda(m) => Some(m.backend().memory_in_use().1),
        }
    }
}

/// Builds the model for `capacity` on the device `args` asks for.
pub fn build_model(
    args: &ModelArgs,
    weights: &ModelWeights,
    capacity: Capacity,
) -> Result<AnyModel> {
    match (args.device, args.exact) {
        (Device::Cpu, _) | (Device::Auto, true) => cpu(args, weights, capacity),
        (Device::Cuda, true) => {
            bail!("--exact runs the exact CPU reference; it cannot be combined with --device cuda")
        }
        (Device::Cuda, false) => Ok(AnyModel::Cuda(Box::new(cuda(args, weights, capacity)?))),
        (Device::Auto, false) => match open_cuda(args) {
            Ok(backend) => Ok(AnyModel::Cuda(Box::new(upload_cuda(
                backend,
                weights,
                capacity,
                args.kv_cache,
            )?))),
            Err(e) => {
                tracing::info!("no usable GPU ({e:#}); running on the CPU");
                if args.max_vram.is_some() {
                    eprintln!("warning: --max-vram ignored: running on the CPU ({e:#})");
                }
                Ok(AnyModel::Cpu(Box::new(Model::new(
                    cpu_backend(args),
                    weights,
                    capacity,
                )?)))
            }
        },
    }
}

/// The CPU backend `args` asks for: the fast path unless `--exact`.
fn cpu_backend(args: &ModelArgs) -> CpuBackend {
    let backend = if args.exact {
        CpuBackend::exact()
    } else {
        CpuBackend::fast()
    };
    match backend.kernels() {
        CpuKernels::Exact => tracing::info!("CPU: exact f32 reference"),
        CpuKernels::Fast(isa) => tracing::info!("CPU: fast int8 kernels ({})", isa.name()),
    }
    backend
}

fn cpu(args: &ModelArgs, weights: &ModelWeights, capacity: Capacity) -> Result<AnyModel> {
    if args.max_vram.is_some() {
        bail!("--max-vram caps GPU memory; it has no meaning with --device cpu");
    }
    Ok(AnyModel::Cpu(Box::new(Model::new(
        cpu_backend(args),
        weights,
        capacity,
    )?)))
}

fn cuda(
    args: &ModelArgs,
    weights: &ModelWeights,
    capacity: Capacity,
) -> Result<Model<CudaBackend>> {
    let backend = open_cuda(args).map_err(|e| anyhow::anyhow!("--device cuda: {e:#}"))?;
    upload_cuda(backend, weights, capacity, args.kv_cache)
}

fn open_cuda(args: &ModelArgs) -> Result<CudaBackend> {
    let mut options = CudaOptions::from_env()?;
    options.max_vram_bytes = args.max_vram;
    options.kv = kv_precision(args.kv_cache);
    Ok(CudaBackend::new(&options)?)
}

fn kv_precision(kv: KvCache) -> KvPrecision {
    match kv {
        KvCache::Bf16 => KvPrecision::Bf16,
        KvCache::F16 => KvPrecision::F16,
        KvCache::F32 => KvPrecision::F32,
    }
}

/// The device memory the model needs at `capacity` with a `kv` cache.
pub fn cuda_plan(weights: &ModelWeights, capacity: &Capacity, kv: KvCache) -> Result<MemoryPlan> {
    let weights_bytes = memory::weights_bytes(weights);
    Ok(memory::plan(
        &weights.config,
        weights_bytes,
        capacity,
        kv_precision(kv),
    )?)
}

fn upload_cuda(
    backend: CudaBackend,
    weights: &ModelWeights,
    capacity: Capacity,
    kv: KvCache,
) -> Result<Model<CudaBackend>> {
    let cap = backend.device().meter.cap_bytes();
    let mut capacity = capacity;
    if capacity.kv_blocks.is_none() {
        // The full-attention pool: every slot at full context, or as many blocks as the budget holds.
        let blocks = memory::fit_kv_blocks(
            &weights.config,
            memory::weights_bytes(weights),
            &capacity,
            kv_precision(kv),
            cap.saturating_sub(backend.device().meter.used_bytes()),
        )?;
        capacity.kv_blocks = Some(blocks);
    }
    let plan = cuda_plan(weights, &capacity, kv)?;
    let dev = backend.device();
    eprintln!(
        "[{} (sm_{}), kernels {} · {}]",
        dev.caps.name,
        dev.caps.compute,
        dev.target.describe(),
        gptoss_cuda::backend::describe_budget(&plan, cap)
    );
    backend.check_plan(&plan)?;
    Ok(Model::new(backend, weights, capacity)?)
}
