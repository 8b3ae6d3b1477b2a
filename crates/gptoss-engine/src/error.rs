//! The one error type of gptoss-engine.

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong while building or running a model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A checkpoint problem (reading, shapes, config).
    #[error(transparent)]
    Formats(#[from] gptoss_formats::Error),
    /// A request the model cannot serve (bad token id, context too long, bad sampling parameter).
    #[error("{0}")]
    Invalid(String),
    /// The weights, KV cache and workspace do not fit the memory budget.
    #[error("{0}")]
    OutOfMemory(String),
    /// A backend failure (device error, kernel launch, missing library).
    #[error("{backend}: {message}")]
    Backend {
        /// Which backend (`cpu`, `cuda`).
        backend: &'static str,
        /// What failed.
        message: String,
    },
}

impl Error {
    /// Shorthand for [`Error::Invalid`].
    pub fn invalid(message: impl Into<String>) -> Self {
        Error::Invalid(message.into())
    }
}
