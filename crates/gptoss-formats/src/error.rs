//! The one error type of gptoss-formats: every variant names the file, tensor or field at fault.

use std::path::PathBuf;

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while reading, checking or writing a checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O failure on a named file.
    #[error("{path}: {source}")]
    Io {
        /// The file being read or written.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A config field is missing, has the wrong type or contradicts another.
    #[error("{file}: field `{field}`: {message}")]
    Config {
        /// The config file (or GGUF) the field was read from.
        file: String,
        /// The field at fault.
        field: String,
        /// What was expected versus found.
        message: String,
    },
    /// A file is not in the format its name or contents claim.
    #[error("{path}: {message}")]
    Format {
        /// The file at fault.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// One tensor is unusable (bad shape, dtype, size or metadata).
    #[error("{file}: tensor `{tensor}`: {message}")]
    Tensor {
        /// The file the tensor lives in.
        file: String,
        /// The tensor's name as stored in the file.
        tensor: String,
        /// What was expected versus found.
        message: String,
    },
    /// Several tensors are unknown, missing or of the wrong shape; each line names one.
    #[error("{}", tensors_message(source_desc, problems))]
    Tensors {
        /// The checkpoint (file or directory).
        source_desc: String,
        /// One line per tensor at fault.
        problems: Vec<String>,
    },
    /// The path holds no checkpoint layout gptoss knows.
    #[error("{path}: {message}")]
    UnknownLayout {
        /// The file or directory.
        path: PathBuf,
        /// What was looked for.
        message: String,
    },
}

/// Problems listed in full in an [`Error::Tensors`] message; the rest are counted (a corrupt file can
/// yield one problem per tensor, and a message must stay readable).
pub const SHOWN_PROBLEMS: usize = 40;

fn tensors_message(source_desc: &str, problems: &[String]) -> String {
    let mut msg = format!("{source_desc}: {} problem(s) with tensors:", problems.len());
    for p in problems.iter().take(SHOWN_PROBLEMS) {
        msg.push_str("\n  ");
        // One problem names one tensor: a line longer than this comes from a corrupt name.
        let cut = (0..=p.len().min(400))
            .rev()
            .find(|&i| p.is_char_boundary(i))
            .unwrap_or(0);
        msg.push_str(&p[..cut]);
    }
    if problems.len() > SHOWN_PROBLEMS {
        msg.push_str(&format!(
            "\n  ... and {} more",
            problems.len() - SHOWN_PROBLEMS
        ));
    }
    msg
}

impl Error {
    /// Shorthand for [`Error::Tensor`].
    pub fn tensor(
        file: impl Into<String>,
        tensor: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Error::Tensor {
            file: file.into(),
            tensor: tensor.into(),
            message: message.into(),
        }
    }

    /// Shorthand for [`Error::Config`].
    pub fn config(
        file: impl Into<String>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Error::Config {
            file: file.into(),
            field: field.into(),
            message: message.into(),
        }
    }

    /// Shorthand for [`Error::Format`].
    pub fn format(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Format {
            path: path.into(),
            message: message.into(),
        }
    }

    /// Wraps an I/O error with the file it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
