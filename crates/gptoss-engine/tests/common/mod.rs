//! Shared by the engine's integration tests: the tiny fixture model, and two oracles written straight
//! against `Model` (no scheduler): plain one-token-per-step decoding, the reference the scheduler's output
//! is checked against, and the logits of a prefill and greedy steps.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::PathBuf;

use gptoss_engine::scheduler::GenRequest;
use gptoss_engine::{Backend, Batch, Capacity, Model, StopReason};
use gptoss_formats::ModelWeights;

/// The tiny fixture model (HF MXFP4 layout).
pub fn tiny_weights() -> ModelWeights {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny/hf-mxfp4");
    gptoss_formats::load(&dir).unwrap().weights
}

/// One sequence of up to 64 tokens, steps of up to 16 tokens, one logit row.
pub fn solo_capacity() -> Capacity {
    Capacity {
        max_batch_tokens: 16,
        max_logit_rows: 1,
        slots: 1,
        context_tokens: 64,
        kv_blocks: None,
    }
}

/// Logits of a 12-token prefill and of `steps` greedy decode steps after it.
pub fn greedy_logits<B: Backend>(model: &mut Model<B>, steps: u32) -> Vec<Vec<f32>> {
    let vocab = model.config().vocab_size;
    let table = model.solo_table();
    let prompt: Vec<u32> = (0..12).map(|i| (i * 53 % 500) as u32 + 1).collect();
    model
        .forward(&Batch::single(&prompt, 0, table.clone()))
        .unwrap();
    let mut all = vec![model.logits(1).unwrap()];
    for pos in 12..12 + steps {
        let last = all.last().unwrap();
        let next = (0..vocab)
            .max_by(|&a, &b| last[a].total_cmp(&last[b]))
            .unwrap() as u32;
        model
            .forward(&Batch::single(&[next], pos, table.clone()))
            .unwrap();
        all.push(model.logits(1).unwrap());
    }
    all
}

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
