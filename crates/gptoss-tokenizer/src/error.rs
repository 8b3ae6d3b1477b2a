//! The tokenizer crate's error type: every variant names the file, token or field at fault and what
//! was expected.

use std::path::PathBuf;

/// Errors from loading vocabularies, encoding, decoding, rendering and parsing Harmony.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file is not valid JSON.
    #[error("{path}: invalid JSON: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: serde_json::Error,
    },
    /// A `tokenizer.json` field is missing or holds something this crate does not support.
    #[error("{path}: field `{field}`: {msg}")]
    TokenizerJson {
        /// The file.
        path: PathBuf,
        /// The JSON path of the field, e.g. `model.type`.
        field: String,
        /// What was expected versus found.
        msg: String,
    },
    /// The vocabulary itself is inconsistent (bad token string, unknown merge part, missing byte).
    #[error("vocabulary: {0}")]
    Vocab(String),
    /// The pre-tokenizer regex does not compile or failed on an input.
    #[error("pre-tokenizer regex: {0}")]
    Regex(String),
    /// Encoding or rendering would produce more tokens than the caller allows.
    #[error("the text encodes to more than {cap} tokens")]
    TooManyTokens {
        /// The limit.
        cap: usize,
    },
    /// A token id outside the vocabulary.
    #[error("token id {id} is not in the vocabulary (size {size})")]
    UnknownId {
        /// The id.
        id: u32,
        /// The vocabulary size.
        size: usize,
    },
    /// A special token the caller asked for is not in the vocabulary.
    #[error("special token {0:?} is not in the vocabulary")]
    UnknownSpecial(String),
    /// A conversation cannot be rendered (e.g. a tool message without a name).
    #[error("harmony render: {0}")]
    Render(String),
    /// A completion does not follow the Harmony grammar (strict parsing only).
    #[error("harmony parse: {0}")]
    Parse(String),
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;
