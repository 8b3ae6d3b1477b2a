//! Sequences whose logit processing is only a token mask (a constraint, `min_tokens`) are sampled by the
//! backend under the mask (`Backend::sample_masked`): on the CPU backend, through the engine, they give
//! exactly the tokens of the host path (`MaskSampling::Host`), greedy and seeded, batched with free
//! requests and with a constrained request that also asks for log-probabilities (host-sampled either
//! way); every token is one the constraint allowed; `min_tokens` keeps the stop token out; a constraint
//! that allows nothing fails its request with the same message on both paths. And the CPU backend's
//! `sample_masked` is `apply_mask` then the sampler, row by row.

#[path = "../../../tests/support/masked.rs"]
mod masked;

use std::path::PathBuf;

use gptoss_engine::{Capacity, CpuBackend, Model};

fn model() -> Model<CpuBackend> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny/hf-mxfp4");
    let w = gptoss_formats::load(&dir).unwrap().weights;
    let cap = Capacity {
        max_batch_tokens: 64,
        max_logit_rows: 8,
        slots: 8,
        context_tokens: 256,
        kv_blocks: None,
    };
    Model::new(CpuBackend, &w, cap).unwrap()
}

#[test]
fn backend_masked_sampling_equals_the_host_path() {
    masked::backend_equals_host(&mut model());
}

/// The CPU backend's masked sampling is the host path's: the row masked by `apply_mask`, then the
/// sampler; a row left with no finite allowed logit gives `None`.
#[test]
fn cpu_sample_masked_is_mask_then_sample() {
    use gptoss_engine::{Backend, SamplingParams};
    let (rows, vocab) = (4, 300);
    let mut logits: Vec<f32> = (0..rows * vocab)
        .map(|i| ((i * 7919 % 1000) as f32 / 100.0) - 5.0)
        .collect();
    logits[3 * vocab + 5] = f32::NEG_INFINITY;
    let dense: Vec<u32> = (0..vocab.div_ceil(32) as u32)
        .map(|w| 0x5555_5555 ^ w)
        .collect();
    let masks: [Option<&[u32]>; 4] = [None, Some(&dense), Some(&[0, 0, 1 << 7]), Some(&[1 << 5])];
    let mut buf = CpuBackend.alloc(rows, vocab).unwrap();
    CpuBackend.write(&mut buf, rows, &logits).unwrap();
    for (seed, temperature, top_k) in [(0, 0.0, 0), (1, 1.0, 0), (2, 0.8, 20)] {
        let params = vec![
            SamplingParams {
                temperature,
                top_p: 0.95,
                top_k,
                seed,
            };
            rows
        ];
        for c in 0..10 {
            let got = CpuBackend
                .sample_masked(&buf, &params, &[c; 4], &masks)
                .unwrap();
            for (r, mask) in masks.iter().enumerate() {
                let mut row = logits[r * vocab..(r + 1) * vocab].to_vec();
                let ok = mask.is_none_or(|m| gptoss_engine::logits::apply_mask(&mut row, m));
                let want = ok.then(|| gptoss_engine::sampler::sample(&row, &params[r], c));
                assert_eq!(got[r], want, "row {r} seed {seed} counter {c}");
            }
            assert_eq!(got[2], Some(71));
            assert_eq!(got[3], None);
        }
    }
}
