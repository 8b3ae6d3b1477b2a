//! Single-sequence generation: prefill the prompt in chunks (the KV cache keeps it), then decode one
//! token per step until a stop token or the token limit. The sequence owns the first blocks of the KV
//! pools ([`Model::solo_table`]). The server's scheduler batches many of these.

use crate::backend::{Backend, Batch, SamplingParams};
use crate::error::{Error, Result};
use crate::model::Model;

/// What to generate.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    /// Most new tokens.
    pub max_new_tokens: usize,
    /// Sampling parameters.
    pub sampling: SamplingParams,
    /// Tokens that end generation (the stop token itself is returned).
    pub stop_tokens: Vec<u32>,
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// A stop token was sampled.
    Stop,
    /// `max_new_tokens` (or the context) was reached.
    Length,
}

/// Generates after `prompt`, calling `on_token` for each new token. Returns the new tokens and why
/// generation stopped. Earlier contents of the cache are overwritten, never read.
pub fn generate<B: Backend>(
    model: &mut Model<B>,
    prompt: &[u32],
    options: &GenerateOptions,
    mut on_token: impl FnMut(u32),
) -> Result<(Vec<u32>, StopReason)> {
    if prompt.is_empty() {
        return Err(Error::invalid("the prompt has no tokens"));
    }
    let context = model.capacity().context_tokens;
    if prompt.len() >= context {
        return Err(Error::invalid(format!(
            "the prompt has {} tokens; the context holds {context}",
            prompt.len()
        )));
    }
    prefill(model, prompt)?;
    let table = model.solo_table();
    let mut out = Vec::new();
    let mut pos = prompt.len();
    loop {
        let tok = model.sample(&[options.sampling], &[out.len() as u64])?[0];
        out.push(tok);
        on_token(tok);
        if options.stop_tokens.contains(&tok) {
            return Ok((out, StopReason::Stop));
        }
        if out.len() >= options.max_new_tokens || pos + 1 >= context {
            return Ok((out, StopReason::Length));
        }
        model.forward(&Batch::single(&[tok], pos as u32, table.clone()))?;
        pos += 1;
    }
}

/// Runs `prompt` through the model (as the sequence of [`Model::solo_table`]) in chunks of the step
/// capacity; the last chunk leaves the final token's logits ready.
pub fn prefill<B: Backend>(model: &mut Model<B>, prompt: &[u32]) -> Result<()> {
    let chunk = model.capacity().max_batch_tokens;
    let table = model.solo_table();
    for (i, part) in prompt.chunks(chunk).enumerate() {
        model.forward(&Batch::single(part, (i * chunk) as u32, table.clone()))?;
    }
    Ok(())
}
