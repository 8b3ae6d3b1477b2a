//! The one error type of gptoss-cuda; it converts into the engine's error (a budget overrun becomes
//! [`gptoss_engine::Error::OutOfMemory`], everything else a `cuda` backend error).

/// Result alias for this crate.
pub type Result<T, E = CudaError> = std::result::Result<T, E>;

/// What can go wrong on the CUDA side.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    /// A CUDA library could not be found or loaded.
    #[error("{what} not found: {detail}")]
    LibraryMissing {
        /// Which library (`the CUDA driver (libcuda.so.1)`, `NVRTC (libnvrtc.so)`).
        what: &'static str,
        /// Where we looked and what to install.
        detail: String,
    },
    /// No usable GPU, or one older than the baseline.
    #[error("{0}")]
    Device(String),
    /// `GPTOSS_CUDA_ARCH` or another start-up setting is malformed.
    #[error("{0}")]
    Config(String),
    /// NVRTC rejected a kernel file.
    #[error("NVRTC could not compile {file} for {arch}: {message}\n{log}")]
    Compile {
        /// The kernel file.
        file: &'static str,
        /// Target (`sm_80`).
        arch: String,
        /// NVRTC's error.
        message: String,
        /// The compiler log.
        log: String,
    },
    /// A driver call failed.
    #[error("{op}: {message}")]
    Driver {
        /// What we were doing (kernel name, allocation, copy).
        op: String,
        /// The driver's error.
        message: String,
    },
    /// The device memory budget (`--max-vram`) would be exceeded.
    #[error("{0}")]
    OutOfMemory(String),
    /// A weight or request the kernels cannot take.
    #[error("{0}")]
    Unsupported(String),
}

impl CudaError {
    /// Wraps a driver error with what was being done.
    pub fn driver(op: impl Into<String>, e: impl std::fmt::Debug) -> Self {
        CudaError::Driver {
            op: op.into(),
            message: format!("{e:?}"),
        }
    }
}

impl From<CudaError> for gptoss_engine::Error {
    fn from(e: CudaError) -> Self {
        match e {
            CudaError::OutOfMemory(m) => gptoss_engine::Error::OutOfMemory(m),
            other => gptoss_engine::Error::Backend {
                backend: "cuda",
                message: other.to_string(),
            },
        }
    }
}
