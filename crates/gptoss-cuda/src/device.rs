//! One opened GPU: the driver context and stream, its capabilities, the code target NVRTC builds for, and
//! the per-device module table (kernel files compiled and loaded on first use; no global state).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaStream, DeviceRepr, LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::Ptx;

use crate::error::{CudaError, Result};
use crate::kernels::{Func, KernelFile};
use crate::libs::{ensure, CudaLib};
use crate::nvrtc::{self, Target};
use crate::options::{
    compile_notice_line, CompileNotice, CudaOptions, FuseRope, LinearKernel, MoeKernel, RepackSite,
};
use crate::vram::{gib, Meter};

/// The oldest arch whose kernels wait for their predecessor in `grid_dep_sync` (`griddepcontrol` is sm_90
/// PTX); older code never starts before the kernel ahead of it ends, so it launches plainly.
const DEPENDENT_LAUNCH_MIN_ARCH: u32 = 90;

/// Most step rows whose kernels launch as programmatic dependents. Measured on the H200 (`gptoss bench
/// --dummy gpt-oss-20b`, dependent launch on every step vs off): tg128 408 vs 392 tok/s, batch1 389 vs 369,
/// batch4 812 vs 795, batch16 1,674 vs 1,696, batch64 3,979 vs 4,088: short decode steps, whose kernels are a
/// few µs each, gain; bigger steps do not.
const DEPENDENT_LAUNCH_MAX_ROWS: usize = 8;

/// What the device is.
#[derive(Clone, Debug)]
pub struct Caps {
    /// Marketing name.
    pub name: String,
    /// Compute capability as `XY` (90 for 9.0).
    pub compute: u32,
    /// Streaming multiprocessors.
    pub sm_count: u32,
    /// Device memory.
    pub total_bytes: u64,
    /// Most shared memory one block can opt in to.
    pub smem_per_block: u32,
    /// Shared memory of one SM.
    pub smem_per_sm: u32,
}

/// An opened device.
pub struct Device {
    /// The driver context.
    pub ctx: Arc<CudaContext>,
    /// The one stream every op runs on.
    pub stream: Arc<CudaStream>,
    /// Capabilities.
    pub caps: Caps,
    /// The arch kernels are built for (the device's own, or `GPTOSS_CUDA_ARCH`).
    pub target: Target,
    /// Allocation accounting.
    pub meter: Arc<Meter>,
    /// Which expert kernels run.
    pub moe_kernel: MoeKernel,
    /// Whether large steps stay on the exact kernels (experts and dense linears).
    pub exact: bool,
    /// Which dense linear kernels run.
    pub linear_kernel: LinearKernel,
    /// Whether one-row GEMVs fuse the RMSNorm before them.
    pub fuse_norm: bool,
    /// RoPE inside decode attention (`CudaOptions::fuse_rope`).
    pub fuse_rope: FuseRope,
    /// One-token top-k inside gate_up (`CudaOptions::defer_topk`).
    pub defer_topk: bool,
    /// Where ggml block formats are repacked at upload.
    pub repack: RepackSite,
    /// Whether kernels launch as programmatic dependents of the one before (see [`Device::launch`]).
    dependent_launch: bool,
    /// Whether the current step is short enough for it ([`Device::begin_step_launches`]).
    dependent_step: Cell<bool>,
    cache_dir: Option<PathBuf>,
    compile_notice: CompileNotice,
    /// Whether the first compile (a cache miss) was announced.
    announced: Cell<bool>,
    modules: RefCell<HashMap<KernelFile, Arc<CudaModule>>>,
    functions: RefCell<HashMap<Func, CudaFunction>>,
}

impl Device {
    /// Loads the driver and NVRTC, opens device `opts.device`, checks it is sm_80 or newer and picks the
    /// code target.
    pub fn open(opts: &CudaOptions) -> Result<Self> {
        ensure(CudaLib::Driver, &opts.lib_dirs)?;
        cudarc::driver::result::init().map_err(|e| {
            CudaError::Device(format!(
                "the CUDA driver is installed but cuInit failed ({e:?}): no usable GPU"
            ))
        })?;
        let count =
            CudaContext::device_count().map_err(|e| CudaError::driver("counting devices", e))?;
        if opts.device as i32 >= count {
            return Err(CudaError::Device(format!(
                "CUDA device {} requested, {count} visible",
                opts.device
            )));
        }
        let ctx = CudaContext::new(opts.device)
            .map_err(|e| CudaError::driver("creating a CUDA context", e))?;
        // SAFETY: every buffer and launch of this backend uses the one stream below, so cudarc's
        // cross-stream event tracking has nothing to order; turned off before any allocation.
        unsafe { ctx.disable_event_tracking() };
        let caps = read_caps(&ctx)?;
        if caps.compute < 80 {
            return Err(CudaError::Device(format!(
                "{} has compute capability {}.{}; gptoss needs 8.0 (Ampere) or newer",
                caps.name,
                caps.compute / 10,
                caps.compute % 10
            )));
        }
        ensure(CudaLib::Nvrtc, &opts.lib_dirs)?;
        let target = choose_target(caps.compute, opts.arch_override, &nvrtc::supported_archs())?;
        let stream = ctx
            .new_stream()
            .map_err(|e| CudaError::driver("creating a stream", e))?;
        let cap = opts.max_vram_bytes.unwrap_or(caps.total_bytes);
        tracing::info!(
            device = %caps.name, compute = caps.compute, target = %target.describe(), budget = %gib(cap),
            "CUDA device opened"
        );
        Ok(Device {
            ctx,
            stream,
            caps,
            target,
            meter: Meter::new(cap),
            cache_dir: opts.cache_dir.clone(),
            moe_kernel: opts.moe_kernel,
            exact: opts.exact,
            linear_kernel: opts.linear_kernel,
            fuse_norm: opts.fuse_norm,
            fuse_rope: opts.fuse_rope,
            defer_topk: opts.defer_topk,
            repack: opts.repack,
            dependent_launch: opts.dependent_launch && target.arch() >= DEPENDENT_LAUNCH_MIN_ARCH,
            dependent_step: Cell::new(true),
            compile_notice: opts.compile_notice,
            announced: Cell::new(false),
            modules: RefCell::new(HashMap::new()),
            functions: RefCell::new(HashMap::new()),
        })
    }

    /// The entry point `f`, compiling and loading its file on first use.
    pub fn function(&self, f: Func) -> Result<CudaFunction> {
        if let Some(func) = self.functions.borrow().get(&f) {
            return Ok(func.clone());
        }
        let module = self.module(f.file())?;
        let name = f.name();
        let func = module.load_function(&name).map_err(|e| {
            CudaError::driver(format!("loading kernel {name} from {}", f.file().name()), e)
        })?;
        if let Some(bytes) = f.large_smem() {
            use cudarc::driver::sys::CUfunction_attribute as FA;
            let attr = FA::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
            func.set_attribute(attr, bytes as i32).map_err(|e| {
                CudaError::driver(
                    format!("letting {name} use {bytes} bytes of shared memory"),
                    e,
                )
            })?;
        }
        self.functions.borrow_mut().insert(f, func.clone());
        Ok(func)
    }

    fn module(&self, file: KernelFile) -> Result<Arc<CudaModule>> {
        if let Some(m) = self.modules.borrow().get(&file) {
            return Ok(m.clone());
        }
        let (source, dir) = (file.source(), self.cache_dir.as_deref());
        let compiled = match nvrtc::cached(file.name(), &source, self.target, dir)? {
            Some(c) => c,
            None => {
                self.announce_compile();
                nvrtc::compile_fresh(file.name(), &source, self.target, dir)?
            }
        };
        let image = match self.target {
            Target::Cubin(_) => Ptx::from_binary(compiled.image),
            Target::Ptx(_) => Ptx::from_src(String::from_utf8_lossy(&compiled.image).into_owned()),
        };
        let module = self.ctx.load_module(image).map_err(|e| {
            CudaError::driver(
                format!(
                    "loading {} ({}) into the driver",
                    file.name(),
                    self.target.describe()
                ),
                e,
            )
        })?;
        self.modules.borrow_mut().insert(file, module.clone());
        Ok(module)
    }

    /// Says once, before the first NVRTC compile, what is compiled and where it is kept: the only slow
    /// start-up of a backend (seconds per kernel file), which later runs skip.
    fn announce_compile(&self) {
        if self.announced.replace(true) {
            return;
        }
        let line = compile_notice_line(&self.target.describe(), self.cache_dir.as_deref());
        tracing::info!("{line}");
        if self.compile_notice == CompileNotice::Stderr {
            eprintln!("{line}");
        }
    }

    /// Launches `f` with one by-value parameter struct. Where [`Device::dependent_launch`] holds, as a
    /// programmatic dependent of the kernel before it on the stream: it may start (its blocks resident, its
    /// weights loading) while that one drains, and waits in `grid_dep_sync` (common.cu) before it reads
    /// anything an earlier kernel wrote; a decode step is ~300 short kernels, whose drain and ramp-up
    /// otherwise run back to back.
    pub fn launch<P: DeviceRepr>(&self, f: Func, cfg: LaunchConfig, params: &P) -> Result<()> {
        let func = self.function(f)?;
        let launched = if self.launches_dependent() {
            self.launch_dependent(&func, cfg, params)
        } else {
            let mut b = self.stream.launch_builder(&func);
            b.arg(params);
            // SAFETY: `params` is the #[repr(C)] mirror of the kernel's parameter struct, and every device
            // address in it points into a live buffer of the size the kernel indexes (checked by the op).
            unsafe { b.launch(cfg) }.map(|_| ())
        };
        launched.map_err(|e| CudaError::driver(format!("launching {}", f.name()), e))
    }

    /// Whether the launches of the current step go as programmatic dependents ([`Device::launch`]).
    pub fn launches_dependent(&self) -> bool {
        self.dependent_launch && self.dependent_step.get()
    }

    /// Sets how the launches of a step of `rows` rows go (and of the sampling after it): as programmatic
    /// dependents up to [`DEPENDENT_LAUNCH_MAX_ROWS`] rows, plainly beyond.
    pub fn begin_step_launches(&self, rows: usize) {
        self.dependent_step.set(rows <= DEPENDENT_LAUNCH_MAX_ROWS);
    }

    fn launch_dependent<P: DeviceRepr>(
        &self,
        func: &CudaFunction,
        cfg: LaunchConfig,
        params: &P,
    ) -> std::result::Result<(), cudarc::driver::DriverError> {
        use cudarc::driver::sys;
        self.ctx.bind_to_thread()?;
        // SAFETY: an all-zero launch attribute value is a valid (empty) union value.
        let mut value: sys::CUlaunchAttributeValue = unsafe { std::mem::zeroed() };
        value.programmaticStreamSerializationAllowed = 1;
        let mut attr = sys::CUlaunchAttribute {
            id: sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION,
            pad: [0; 4],
            value,
        };
        let config = sys::CUlaunchConfig {
            gridDimX: cfg.grid_dim.0,
            gridDimY: cfg.grid_dim.1,
            gridDimZ: cfg.grid_dim.2,
            blockDimX: cfg.block_dim.0,
            blockDimY: cfg.block_dim.1,
            blockDimZ: cfg.block_dim.2,
            sharedMemBytes: cfg.shared_mem_bytes,
            hStream: self.stream.cu_stream(),
            attrs: &mut attr,
            numAttrs: 1,
        };
        let mut args = [params as *const P as *mut std::ffi::c_void];
        // SAFETY: as in the plain launch above: `params` is the kernel's one #[repr(C)] parameter struct,
        // alive for the call (the driver copies it), with device addresses of live buffers; `config` and
        // `attr` outlive the call.
        unsafe {
            sys::cuLaunchKernelEx(
                &config,
                func.cu_function(),
                args.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        }
        .result()
    }

    /// Waits for all queued work (reads and tests only; never inside a step).
    pub fn sync(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(|e| CudaError::driver("synchronizing the stream", e))
    }
}

fn read_caps(ctx: &Arc<CudaContext>) -> Result<Caps> {
    use cudarc::driver::sys::CUdevice_attribute as A;
    let (major, minor) = ctx
        .compute_capability()
        .map_err(|e| CudaError::driver("reading the compute capability", e))?;
    let sm = ctx
        .attribute(A::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
        .map_err(|e| CudaError::driver("reading the SM count", e))?;
    let smem = |a, what: &str| {
        ctx.attribute(a)
            .map(|v| v as u32)
            .map_err(|e| CudaError::driver(format!("reading the {what}"), e))
    };
    Ok(Caps {
        smem_per_block: smem(
            A::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
            "shared memory a block can opt in to",
        )?,
        smem_per_sm: smem(
            A::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR,
            "shared memory per SM",
        )?,
        name: ctx.name().unwrap_or_else(|_| "unknown GPU".into()),
        compute: (major * 10 + minor) as u32,
        sm_count: sm as u32,
        total_bytes: ctx
            .total_mem()
            .map_err(|e| CudaError::driver("reading device memory", e))?
            as u64,
    })
}

/// Cubin for the wanted arch when it runs natively (same major, not newer); otherwise PTX for the newest
/// arch NVRTC supports that is not newer than the wanted one, compiled by the driver at load.
pub fn choose_target(device: u32, wanted: Option<u32>, supported: &[u32]) -> Result<Target> {
    let want = wanted.unwrap_or(device);
    if want > device {
        return Err(CudaError::Config(format!(
            "GPTOSS_CUDA_ARCH=sm_{want} is newer than this GPU (sm_{device}); its code cannot run here"
        )));
    }
    if want < 80 {
        return Err(CudaError::Device(format!(
            "GPTOSS_CUDA_ARCH=sm_{want}: gptoss needs compute capability 8.0 (Ampere) or newer"
        )));
    }
    if want / 10 == device / 10 && supported.contains(&want) {
        return Ok(Target::Cubin(want));
    }
    match supported.iter().copied().filter(|&a| a <= want).max() {
        Some(a) => Ok(Target::Ptx(a)),
        None => Err(CudaError::Config(format!(
            "this NVRTC supports {supported:?}, none at or below sm_{want}; install a matching CUDA toolkit"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let s = [75, 80, 86, 89, 90, 100, 120];
        assert_eq!(choose_target(90, None, &s).unwrap(), Target::Cubin(90));
        assert_eq!(choose_target(86, Some(80), &s).unwrap(), Target::Cubin(80));
        assert_eq!(choose_target(90, Some(80), &s).unwrap(), Target::Ptx(80));
        assert_eq!(choose_target(121, None, &s).unwrap(), Target::Ptx(120));
        assert!(choose_target(86, Some(90), &s)
            .unwrap_err()
            .to_string()
            .contains("newer than this GPU"));
        assert!(choose_target(90, Some(75), &s)
            .unwrap_err()
            .to_string()
            .contains("8.0 (Ampere)"));
    }
}
