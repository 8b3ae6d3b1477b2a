//! The tokenizer a checkpoint comes with (its `tokenizer.json`, the vocabulary inside a GGUF, or
//! o200k_harmony when it has none), and the Harmony chat prompt of `gptoss run --prompt`.

use std::sync::Arc;

use anyhow::{Context, Result};
use gptoss_tokenizer::harmony::{Effort, Harmony};
use gptoss_tokenizer::{StreamDecoder, Tokenizer, Vocab};

use crate::source::Loaded;

/// The checkpoint's own tokenizer, else o200k_harmony.
pub fn tokenizer_for(loaded: &Loaded) -> Result<Arc<Tokenizer>> {
    let ckpt = loaded.checkpoint.as_ref();
    let tok = if let Some(path) = ckpt.and_then(|c| c.tokenizer_json.as_ref()) {
        Tokenizer::from_tokenizer_json(path)
            .with_context(|| format!("reading {}", path.display()))?
    } else if let Some(v) = ckpt.and_then(|c| c.vocab.as_ref()) {
        let vocab = Vocab::from_gguf(
            v.tokens.clone(),
            &v.token_types,
            &v.merges,
            v.pre.as_deref(),
        )
        .context("reading the GGUF's tokenizer.ggml vocabulary")?;
        Tokenizer::from_vocab(vocab).context("building the GGUF's tokenizer")?
    } else {
        Tokenizer::o200k_harmony().context("building o200k_harmony")?
    };
    Ok(Arc::new(tok))
}

/// `user` as a Harmony conversation ending in `<|start|>assistant`.
pub fn chat_prompt(
    tokenizer: &Arc<Tokenizer>,
    system: Option<&str>,
    user: &str,
    effort: Effort,
) -> Result<Vec<u32>> {
    let harmony = Harmony::new(tokenizer.clone())
        .context("this vocabulary lacks Harmony's special tokens; use --raw")?;
    Ok(harmony.render_chat_prompt(system, user, effort)?)
}

/// The tokens that end an assistant turn (`<|return|>`, `<|call|>`, `<|endoftext|>`), looked up by name.
pub fn stop_tokens(tokenizer: &Arc<Tokenizer>) -> Vec<u32> {
    ["<|return|>", "<|call|>", "<|endoftext|>"]
        .iter()
        .filter_map(|n| tokenizer.find_special(n))
        .collect()
}

/// Decodes ids to text; an id the vocabulary lacks (embedding padding rows) shows as `<|id:N|>`.
pub fn decode_lossy(tokenizer: &Tokenizer, ids: &[u32]) -> String {
    let mut stream = TextStream::default();
    let mut out: String = ids.iter().map(|&id| stream.push(tokenizer, id)).collect();
    out.push_str(&stream.finish());
    out
}

/// Streaming decode that never fails (see [`decode_lossy`]).
#[derive(Default)]
pub struct TextStream {
    inner: StreamDecoder,
}

impl TextStream {
    /// The text completed by `id`.
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> String {
        match tokenizer.token_bytes(id) {
            Ok(bytes) => self.inner.push_bytes(bytes),
            Err(_) => format!("{}<|id:{id}|>", self.finish()),
        }
    }

    /// Whatever bytes are still pending, replaced where they are not valid UTF-8.
    pub fn finish(&mut self) -> String {
        self.inner.finish()
    }
}
