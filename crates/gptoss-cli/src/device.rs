//! Picking the backend (`--device cpu|cuda|auto`) and building the model on it, with the CUDA memory
//! plan checked against `--max-vram` before any weight is uploaded.

use anyhow::{bail, Result};
use gptoss_cuda::{CudaBackend, CudaOptions};
use gptoss_engine::memory::{self, KvPrecision, MemoryPlan};
use gptoss_engine::{Capacity, CpuBackend, ExpertPlacement, Model};
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
    match args.device {
        Device::Cpu => cpu(args, weights, capacity),
        Device::Cuda => Ok(AnyModel::Cuda(Box::new(cuda(args, weights, capacity)?))),
        Device::Auto => match open_cuda(args) {
            Ok(backend) => Ok(AnyModel::Cuda(Box::new(upload_cuda(
                backend, weights, capacity, args,
            )?))),
            Err(e) => {
                tracing::info!("no usable GPU ({e:#}); running on the CPU");
                if args.max_vram.is_some() {
                    eprintln!("warning: --max-vram ignored: running on the CPU ({e:#})");
                }
                Ok(AnyModel::Cpu(Box::new(Model::new(
                    CpuBackend, weights, capacity,
                )?)))
            }
        },
    }
}

fn cpu(args: &ModelArgs, weights: &ModelWeights, capacity: Capacity) -> Result<AnyModel> {
    if args.max_vram.is_some() {
        bail!("--max-vram caps GPU memory; it has no meaning with --device cpu");
    }
    if args.cpu_moe || args.n_cpu_moe.is_some() {
        bail!("--cpu-moe / --n-cpu-moe keep experts on the host beside a GPU; with --device cpu everything runs on the host");
    }
    Ok(AnyModel::Cpu(Box::new(Model::new(
        CpuBackend, weights, capacity,
    )?)))
}

fn cuda(
    args: &ModelArgs,
    weights: &ModelWeights,
    capacity: Capacity,
) -> Result<Model<CudaBackend>> {
    let backend = open_cuda(args).map_err(|e| anyhow::anyhow!("--device cuda: {e:#}"))?;
    upload_cuda(backend, weights, capacity, args)
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

/// The device memory the model needs at `capacity` with a `kv` cache, all experts on the device.
pub fn cuda_plan(weights: &ModelWeights, capacity: &Capacity, kv: KvCache) -> Result<MemoryPlan> {
    let weights_bytes = memory::weights_bytes(weights);
    Ok(memory::plan(
        &weights.config,
        weights_bytes,
        capacity,
        kv_precision(kv),
    )?)
}

/// Where the experts go: as `--cpu-moe` / `--n-cpu-moe` say, else on the device when they fit beside one
/// sequence's KV cache in the budget, else the experts of as few leading layers as needed on the host.
fn place_experts(
    args: &ModelArgs,
    weights: &ModelWeights,
    capacity: &Capacity,
    budget_bytes: u64,
) -> Result<ExpertPlacement> {
    let layers = weights.config.num_hidden_layers;
    if args.cpu_moe {
        return Ok(ExpertPlacement::first_on_host(layers, layers));
    }
    if let Some(n) = args.n_cpu_moe {
        if n > layers {
            bail!("--n-cpu-moe {n}: the model has {layers} layers");
        }
        return Ok(ExpertPlacement::first_on_host(layers, n));
    }
    let kv = kv_precision(args.kv_cache);
    let fits = |p: &ExpertPlacement| {
        let on_device = memory::weights_bytes(weights) - memory::host_experts_bytes(weights, p);
        memory::fit_kv_blocks(&weights.config, on_device, capacity, kv, budget_bytes).is_ok()
    };
    let all = ExpertPlacement::all_on_device();
    if fits(&all) {
        return Ok(all);
    }
    (1..=layers)
        .map(|n| ExpertPlacement::first_on_host(layers, n))
        .find(|p| fits(p))
        .map_or(Ok(all), Ok)
}

fn upload_cuda(
    backend: CudaBackend,
    weights: &ModelWeights,
    capacity: Capacity,
    args: &ModelArgs,
) -> Result<Model<CudaBackend>> {
    let kv = args.kv_cache;
    let cap = backend.device().meter.cap_bytes();
    let budget = cap.saturating_sub(backend.device().meter.used_bytes());
    let placement = place_experts(args, weights, &capacity, budget)?;
    let host_bytes = memory::host_experts_bytes(weights, &placement);
    let device_weights = memory::weights_bytes(weights) - host_bytes;
    let mut capacity = capacity;
    if capacity.kv_blocks.is_none() {
        // The full-attention pool: every slot at full context, or as many blocks as the budget holds.
        let blocks = memory::fit_kv_blocks(
            &weights.config,
            device_weights,
            &capacity,
            kv_precision(kv),
            budget,
        )?;
        capacity.kv_blocks = Some(blocks);
    }
    let plan = memory::plan(&weights.config, device_weights, &capacity, kv_precision(kv))?;
    let dev = backend.device();
    let offload = match placement.host_layers() {
        0 => String::new(),
        n => format!(
            "; experts of layers 0..{n} in host memory ({}), run on the CPU",
            gptoss_cuda::vram::gib(host_bytes)
        ),
    };
    eprintln!(
        "[{} (sm_{}), kernels {} · {}{offload}]",
        dev.caps.name,
        dev.caps.compute,
        dev.target.describe(),
        gptoss_cuda::backend::describe_budget(&plan, cap)
    );
    backend.check_plan(&plan)?;
    let started = std::time::Instant::now();
    let model = Model::with_placement(backend, weights, capacity, &placement)?;
    let took = started.elapsed().as_secs_f64();
    match host_rss() {
        Some((rss, file)) => eprintln!(
            "[weights on the GPU in {took:.2} s; host memory after upload {} (file pages {})]",
            gib_str(rss),
            gib_str(file)
        ),
        None => eprintln!("[weights on the GPU in {took:.2} s]"),
    }
    Ok(model)
}

/// This process's resident memory and the file-backed part of it (`VmRSS`, `RssFile` of
/// /proc/self/status, Linux only): what the weights' file mapping still holds after the upload.
fn host_rss() -> Option<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| -> Option<u64> {
        let value = status.lines().find_map(|l| l.strip_prefix(name))?;
        let kib: u64 = value.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kib << 10)
    };
    Some((field("VmRSS:")?, field("RssFile:")?))
}

fn gib_str(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
}
