//! Picking the backend (`--device cpu|cuda|auto`, `--exact` for the f32 CPU reference) and building the
//! model on it, with the CUDA memory plan checked against `--max-vram` before any weight is uploaded.

use anyhow::{bail, Result};
use gptoss_cuda::{CudaBackend, CudaOptions};
use gptoss_engine::memory::{self, KvPrecision};
use gptoss_engine::offload::DEFAULT_REFRESH_STEPS;
use gptoss_engine::placement::{expert_cache_fit, expert_stream_bytes, WeightSplit};
use gptoss_engine::{
    Capacity, CpuBackend, CpuIsa, CpuKernels, ExpertCacheConfig, ExpertPlacement, ExpertStreaming,
    Model, StreamCost,
};
use gptoss_formats::ModelWeights;

use crate::source::{Device, ExpertCacheSize, KvCache, ModelArgs, StreamExperts};

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
            // With a split: each device's own peak, added up.
            AnyModel::Cuda(m) => Some(m.backends().map(|b| b.memory_in_use().1).sum()),
        }
    }
}

/// Builds the model for `capacity` on the device `args` asks for.
pub fn build_model(
    args: &ModelArgs,
    weights: &ModelWeights,
    capacity: Capacity,
) -> Result<AnyModel> {
    if !args.gpus.is_empty() {
        if args.device == Device::Cpu {
            bail!("--gpus picks GPUs; it has no meaning with --device cpu");
        }
        if args.gpus.len() > 1 {
            return Ok(AnyModel::Cuda(Box::new(crate::split::build(
                args, weights, capacity,
            )?)));
        }
    }
    if !args.split.is_empty() {
        bail!("--split cuts the layers over several --gpus; give at least two");
    }
    // `--gpus` asks for the GPU: no quiet fall-back to the CPU.
    let device = match (args.device, args.gpus.is_empty()) {
        (Device::Auto, false) => Device::Cuda,
        (d, _) => d,
    };
    match (device, args.exact) {
        (Device::Cpu, _) | (Device::Auto, true) => cpu(args, weights, capacity),
        (Device::Cuda, _) => Ok(AnyModel::Cuda(Box::new(cuda(args, weights, capacity)?))),
        (Device::Auto, false) => match open_cuda(args) {
            Ok(backend) => Ok(AnyModel::Cuda(Box::new(upload_cuda(
                backend, weights, capacity, args,
            )?))),
            Err(e) => {
                tracing::info!("no usable GPU ({e:#}); running on the CPU");
                if args.max_vram.is_some() {
                    eprintln!("warning: --max-vram ignored: running on the CPU ({e:#})");
                }
                Ok(AnyModel::Cpu(Box::new(Model::new(
                    cpu_backend(args)?,
                    weights,
                    capacity,
                )?)))
            }
        },
    }
}

/// The CPU backend `args` asks for: the fast path unless `--exact`.
fn cpu_backend(args: &ModelArgs) -> Result<CpuBackend> {
    let backend = if args.exact {
        CpuBackend::exact()
    } else {
        fast_cpu_backend()?
    };
    match backend.kernels() {
        CpuKernels::Exact => tracing::info!("CPU: exact f32 reference"),
        CpuKernels::Fast(isa) => tracing::info!("CPU: fast int8 kernels ({})", isa.name()),
    }
    Ok(backend)
}

/// The fast CPU backend on the best instruction set this CPU has, or on the one `GPTOSS_CPU_ISA` names
/// (`avx512`, `avx2` or `portable`: to measure or work around a set, e.g. the AVX2 kernels on an AVX-512
/// machine).
fn fast_cpu_backend() -> Result<CpuBackend> {
    const VAR: &str = "GPTOSS_CPU_ISA";
    let Ok(name) = std::env::var(VAR) else {
        return Ok(CpuBackend::fast());
    };
    let isa = [CpuIsa::Avx512, CpuIsa::Avx2, CpuIsa::Portable]
        .into_iter()
        .find(|i| i.name() == name)
        .ok_or_else(|| anyhow::anyhow!("{VAR}={name:?}: expected avx512, avx2 or portable"))?;
    CpuBackend::with_kernels(CpuKernels::Fast(isa))
        .map_err(|e| anyhow::anyhow!("{VAR}={name}: {e}"))
}

fn cpu(args: &ModelArgs, weights: &ModelWeights, capacity: Capacity) -> Result<AnyModel> {
    if args.max_vram.is_some() {
        bail!("--max-vram caps GPU memory; it has no meaning with --device cpu");
    }
    if args.cpu_moe || args.n_cpu_moe.is_some() {
        bail!("--cpu-moe / --n-cpu-moe keep experts on the host beside a GPU; with --device cpu everything runs on the host");
    }
    if let ExpertCacheSize::Bytes(_) = args.expert_cache {
        bail!("--expert-cache SIZE holds host experts on the GPU; with --device cpu everything runs on the host");
    }
    Ok(AnyModel::Cpu(Box::new(Model::new(
        cpu_backend(args)?,
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
    upload_cuda(backend, weights, capacity, args)
}

/// Opens the GPU `--gpus` names (GPU 0 without it) with `--max-vram` and `--kv-cache`.
fn open_cuda(args: &ModelArgs) -> Result<CudaBackend> {
    open_gpu(args, args.gpus.first().copied().unwrap_or(0))
}

/// Opens GPU `ordinal` with `--max-vram` as its budget and `--kv-cache`.
pub(crate) fn open_gpu(args: &ModelArgs, ordinal: usize) -> Result<CudaBackend> {
    let mut options = CudaOptions::from_env()?;
    options.device = ordinal;
    options.max_vram_bytes = args.max_vram;
    options.kv = kv_precision(args.kv_cache);
    options.exact = args.exact;
    Ok(CudaBackend::new(&options)?)
}

pub(crate) fn kv_precision(kv: KvCache) -> KvPrecision {
    match kv {
        KvCache::Bf16 => KvPrecision::Bf16,
        KvCache::F16 => KvPrecision::F16,
        KvCache::F32 => KvPrecision::F32,
    }
}

/// How many leading layers keep their experts in host memory: as `--cpu-moe` / `--n-cpu-moe` say, else
/// none when everything fits beside one sequence's KV cache in the budget, else as few as that needs (the
/// KV pool then takes what is left: experts on the GPU are worth more than cache for more streams). A
/// sized `--expert-cache` is reserved beside the layers kept on the GPU once some must leave.
fn host_expert_layers(
    args: &ModelArgs,
    weights: &ModelWeights,
    split: &WeightSplit,
    capacity: &Capacity,
    budget_bytes: u64,
) -> Result<usize> {
    let layers = weights.config.num_hidden_layers;
    if args.cpu_moe {
        return Ok(layers);
    }
    if let Some(n) = args.n_cpu_moe {
        if n > layers {
            bail!("--n-cpu-moe {n}: the model has {layers} layers");
        }
        return Ok(n);
    }
    let kv = kv_precision(args.kv_cache);
    let fits = |n: usize, reserve: u64| {
        memory::fit_kv_blocks(
            &weights.config,
            split.device_bytes(n) + reserve,
            capacity,
            kv,
            budget_bytes,
        )
        .is_ok()
    };
    if fits(0, 0) {
        return Ok(0);
    }
    let reserve = match args.expert_cache {
        ExpertCacheSize::Bytes(b) => b,
        ExpertCacheSize::Auto | ExpertCacheSize::Off => 0,
    };
    // None fitting: all on the device, and the plan check below refuses with the numbers.
    Ok((1..=layers).find(|&n| fits(n, reserve)).unwrap_or(0))
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
    let split = WeightSplit::of_weights(weights);
    let host_layers = host_expert_layers(args, weights, &split, &capacity, budget)?;
    let host_cpu = if args.exact {
        CpuBackend::exact()
    } else {
        fast_cpu_backend()?
    };
    let device_weights = split.device_bytes(host_layers);
    let host_bytes = split.total_bytes() - device_weights;
    let config = &weights.config;
    // A sized cache is taken before the KV pool; `auto` takes what the plan leaves.
    let (mut slots, mut cache_bytes) = match args.expert_cache {
        ExpertCacheSize::Bytes(b) => expert_cache_fit(config, &split, &capacity, host_layers, b),
        ExpertCacheSize::Auto | ExpertCacheSize::Off => (0, 0),
    };
    let stream = Reserved {
        taken: device_weights + cache_bytes,
        budget,
    };
    let stream_bytes = stream_reserve(args, weights, &split, &capacity, (host_layers, stream));
    let mut capacity = capacity;
    if capacity.kv_blocks.is_none() {
        // The full-attention pool: every slot at full context, or as many blocks as the budget holds.
        let blocks = memory::fit_kv_blocks(
            config,
            device_weights + cache_bytes + stream_bytes,
            &capacity,
            kv_precision(kv),
            budget,
        )?;
        capacity.kv_blocks = Some(blocks);
    }
    let plan = memory::plan(config, device_weights, &capacity, kv_precision(kv))?
        .with_expert_stream(stream_bytes);
    if args.expert_cache == ExpertCacheSize::Auto {
        // Without --max-vram the budget is the whole card, part of which the driver, cuBLASLt and the
        // compiled kernels take outside the meter.
        let margin = match args.max_vram {
            Some(_) => 0,
            None => (cap / 16).max(1 << 30),
        };
        let spare = budget.saturating_sub(plan.total_bytes() + margin);
        (slots, cache_bytes) = expert_cache_fit(config, &split, &capacity, host_layers, spare);
    }
    let plan = plan.with_expert_cache(slots, cache_bytes);
    let placement = ExpertPlacement::first_on_host(config.num_hidden_layers, host_layers)
        .run_by(host_cpu)
        .with_cache(ExpertCacheConfig {
            slots,
            refresh_steps: DEFAULT_REFRESH_STEPS,
        })
        .with_streaming(match stream_bytes {
            0 => ExpertStreaming::Off,
            _ => ExpertStreaming::FromPairs(stream_min_pairs(config)),
        });
    let dev = backend.device();
    let offload = match placement.host_layers() {
        0 => String::new(),
        n => format!(
            "; experts of layers 0..{n} in host memory ({}), run on the CPU{}{}",
            gptoss_cuda::vram::gib(host_bytes),
            match slots {
                0 => String::new(),
                s => format!(" except the {s} most-routed, held on the GPU (--expert-cache)"),
            },
            match placement.streaming() {
                ExpertStreaming::Off => String::new(),
                ExpertStreaming::FromPairs(p) => format!(
                    "; steps of {} tokens or more stream them to the GPU (--stream-experts)",
                    p.div_ceil(config.num_experts_per_tok.max(1))
                ),
            }
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

/// Device memory already spoken for and the budget, for [`stream_reserve`].
#[derive(Clone, Copy)]
struct Reserved {
    /// Weights and a sized expert cache.
    taken: u64,
    budget: u64,
}

/// The routed pairs per layer from which a step streams its host layers (`StreamCost::H200_HOST`: the
/// only host where both rates were measured; see bench/NOTES.md, "Streaming host experts for prefill").
fn stream_min_pairs(config: &gptoss_formats::ModelConfig) -> usize {
    StreamCost::H200_HOST.min_pairs(config.num_local_experts)
}

/// The device bytes `--stream-experts` reserves for the streamed set: one host layer's experts when
/// some are in host memory and they fit beside `r.taken` and one sequence's KV cache (the whole pool
/// when `--kv-blocks` gives it); 0 (with the reason logged) otherwise.
fn stream_reserve(
    args: &ModelArgs,
    weights: &ModelWeights,
    split: &WeightSplit,
    capacity: &Capacity,
    (host_layers, r): (usize, Reserved),
) -> u64 {
    let bytes = expert_stream_bytes(split, host_layers);
    if args.stream_experts == StreamExperts::Off || bytes == 0 {
        return 0;
    }
    let (config, kv) = (&weights.config, kv_precision(args.kv_cache));
    let fits = match capacity.kv_blocks {
        // A pool given by --kv-blocks: the whole plan must fit.
        Some(_) => memory::plan(config, r.taken + bytes, capacity, kv)
            .and_then(|p| p.check(r.budget).map(|_| ())),
        // A pool sized to the budget: one sequence's KV cache at full context must fit beside it.
        None => memory::fit_kv_blocks(config, r.taken + bytes, capacity, kv, r.budget).map(|_| ()),
    };
    match fits {
        Ok(()) => bytes,
        Err(e) => {
            tracing::info!(
                "--stream-experts auto: off, one layer's experts ({}) do not fit beside the plan ({e}); \
                 prompts run their host experts on the CPU (more --n-cpu-moe layers or a larger \
                 --max-vram would leave room)",
                gib_str(bytes)
            );
            0
        }
    }
}

/// This process's resident memory and the file-backed part of it (`VmRSS`, `RssFile` of
/// /proc/self/status, Linux only): what the weights' file mapping still holds after the upload.
pub(crate) fn host_rss() -> Option<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| -> Option<u64> {
        let value = status.lines().find_map(|l| l.strip_prefix(name))?;
        let kib: u64 = value.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kib << 10)
    };
    Some((field("VmRSS:")?, field("RssFile:")?))
}

pub(crate) fn gib_str(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
}
