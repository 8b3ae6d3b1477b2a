//! Test oracle shared by the engine's integration tests: plain one-token-per-step decoding written
//! straight against `Model` (no scheduler), the reference the scheduler's output is checked against.
#![allow(dead_code, clippy::unwrap_used)]

use gptoss_engine::scheduler::GenRequest;
use gptoss_engine::{Backend, Batch, Model, StopReason};

/// Prefills `r.prompt` in chunks of the step capacity as the sequence of [`Model::solo_table`], then
/// samples and feeds back one token per step (sampler counter = generated-token index) until a stop
/// token, `r.max_new_tokens` or the context.
pub fn plain_decode<B: Backend>(model: &mut Model<B>, r: &GenRequest) -> (Vec<u32>, StopReason) {
    let context = model.capacity().context_tokens;
    let chunk = model.capacity().max_batch_tokens;
    let table = model.solo_table();
    for (i, part) in r.prompt.chunks(chunk).enumerate() {
        let batch = Batch::single(part, (i * chunk) as u32, table.clone());
        model.forward(&batch).unwrap();
    }
    let mut out = Vec::new();
    let mut pos = r.prompt.len();
    loop {
        let tok = model.sample(&[r.sampling], &[out.len() as u64]).unwrap()[0];
        out.push(tok);
        if r.stop_tokens.contains(&tok) {
            return (out, StopReason::Stop);
        }
        if out.len() >= r.max_new_tokens || pos + 1 >= context {
            return (out, StopReason::Length);
        }
        model
            .forward(&Batch::single(&[tok], pos as u32, table.clone()))
            .unwrap();
        pos += 1;
    }
}
