//! Structured outputs' token masks applied in the CUDA sampler (`sample.cu`): masked rows sampled on the
//! device give exactly the tokens of the host path (the row read back, masked and sampled on the host, as
//! the CPU backend does), greedy and sampled, for every kind of mask (dense, sparse, one token, cut short,
//! longer than the vocabulary, nothing finite allowed, a NaN logit allowed), at the tiny and the real
//! vocabulary; log-probabilities taken on the device (`logprob_rows`) match the host's; and through the
//! engine on the tiny fixture model, `MaskSampling::Backend` gives the tokens and log-probabilities of
//! `MaskSampling::Host`. Needs a GPU: run by `scripts/gpu-check.sh`
//! (`cargo test -p gptoss-cuda --test gpu_sampling -- --ignored`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../../tests/support/masked.rs"]
mod masked;

use std::path::PathBuf;

use gptoss_cuda::testing::Rng;
use gptoss_cuda::{CudaBackend, CudaOptions};
use gptoss_engine::{Backend, Capacity, CpuBackend, Model, SamplingParams};

fn cuda() -> CudaBackend {
    CudaBackend::new(&CudaOptions::from_env().unwrap()).unwrap()
}

fn write<B: Backend>(b: &B, rows: usize, cols: usize, values: &[f32]) -> B::Buf {
    let mut buf = b.alloc(rows, cols).unwrap();
    b.write(&mut buf, rows, values).unwrap();
    buf
}

/// A random bitset over `vocab` tokens allowing about one token in `one_in`.
fn random_mask(rng: &mut Rng, vocab: usize, one_in: u64) -> Vec<u32> {
    let mut m = vec![0u32; vocab.div_ceil(32)];
    for t in 0..vocab {
        if rng.next_u64().is_multiple_of(one_in) {
            m[t / 32] |= 1 << (t % 32);
        }
    }
    m
}

fn only(vocab: usize, tokens: &[usize]) -> Vec<u32> {
    let mut m = vec![0u32; vocab.div_ceil(32)];
    for &t in tokens {
        m[t / 32] |= 1 << (t % 32);
    }
    m
}

#[test]
#[ignore = "needs GPU"]
fn masked_rows_sample_on_the_device_as_on_the_host() {
    let g = cuda();
    let mut rng = Rng(21);
    for vocab in [1000usize, 201_088] {
        let rows = 8;
        let mut logits = rng.vec(rows * vocab, 4.0);
        let row = |r: usize| r * vocab;
        // Row 3: one allowed token, the least likely of the row.
        let least = (0..vocab)
            .min_by(|&a, &b| logits[row(3) + a].total_cmp(&logits[row(3) + b]))
            .unwrap();
        // Row 5: every allowed token has logit -inf (nothing can be sampled).
        for t in [10, 77, 500] {
            logits[row(5) + t] = f32::NEG_INFINITY;
        }
        // Row 6: a NaN logit allowed beside one finite one (NaN counts as -inf).
        logits[row(6) + 40] = f32::NAN;
        let short: Vec<u32> = random_mask(&mut rng, vocab, 2)
            .into_iter()
            .take(3)
            .collect();
        let mut long = random_mask(&mut rng, vocab, 3);
        long.extend([u32::MAX; 4]);
        let masks: Vec<Option<Vec<u32>>> = vec![
            None,
            Some(random_mask(&mut rng, vocab, 2)),
            Some(random_mask(&mut rng, vocab, 64)),
            Some(only(vocab, &[least])),
            Some(short),
            Some(only(vocab, &[10, 77, 500])),
            Some(only(vocab, &[40, 41])),
            Some(long),
        ];
        let masks: Vec<Option<&[u32]>> = masks.iter().map(|m| m.as_deref()).collect();
        let gb = write(&g, rows, vocab, &logits);
        let cb = write(&CpuBackend, rows, vocab, &logits);
        let configs = [
            (0.0, 1.0, 0),
            (1.0, 1.0, 0),
            (0.7, 0.9, 0),
            (1.3, 0.8, 40),
            (1.0, 1.0, 1),
            (2.0, 1.0, 3),
        ];
        let (mut same, mut draws) = (0, 0);
        for (ci, &(temperature, top_p, top_k)) in configs.iter().enumerate() {
            let params: Vec<SamplingParams> = (0..rows)
                .map(|r| SamplingParams {
                    temperature,
                    top_p,
                    top_k,
                    seed: (ci * 100 + r) as u64,
                })
                .collect();
            for c in 0..20u64 {
                let counters = vec![c; rows];
                let got = g.sample_masked(&gb, &params, &counters, &masks).unwrap();
                let want = CpuBackend
                    .sample_masked(&cb, &params, &counters, &masks)
                    .unwrap();
                assert_eq!(got[3], Some(least as u32), "vocab {vocab} config {ci}");
                assert_eq!(got[5], None, "vocab {vocab} config {ci}");
                assert_eq!(got[6], Some(41), "vocab {vocab} config {ci}");
                assert!(
                    got[4].is_some_and(|t| t < 96),
                    "vocab {vocab}: {:?}",
                    got[4]
                );
                same += got.iter().zip(&want).filter(|(a, b)| a == b).count();
                draws += rows;
                assert_eq!(got, want, "vocab {vocab} config {ci} counter {c}");
            }
        }
        println!("masked sampling, vocab {vocab}: {same} of {draws} draws equal the host path");
    }
}

/// `logprob_rows` against the host's `token_logprobs` on the same rows: the same top tokens in the same
/// order (ties to the lower id), values within 1e-5 (the two log-sum-exps may round apart in the last bit).
#[test]
#[ignore = "needs GPU"]
fn logprobs_on_the_device_match_the_host() {
    use gptoss_engine::backend::LogprobRow;
    let g = cuda();
    let mut rng = Rng(33);
    for vocab in [1000usize, 201_088] {
        let rows = 6;
        let mut logits = rng.vec(rows * vocab, 6.0);
        // Row 1: ties at the top (lower id first); row 2: -inf logits.
        for t in [17, 5, 900] {
            logits[vocab + t] = 9.0;
        }
        for t in 0..100 {
            logits[2 * vocab + t] = f32::NEG_INFINITY;
        }
        let gb = write(&g, rows, vocab, &logits);
        let cb = write(&CpuBackend, rows, vocab, &logits);
        let jobs: Vec<LogprobRow> = [
            (0, 3, 5),
            (1, 900, 20),
            (2, 50, 1),
            (3, 7, 0),
            (5, 999, 20),
            (1, 5, 3),
        ]
        .into_iter()
        .map(|(row, token, top)| LogprobRow { row, token, top })
        .collect();
        let got = g.logprobs(&gb, &jobs).unwrap();
        let want = CpuBackend.logprobs(&cb, &jobs).unwrap();
        assert_eq!(
            want[1].top[..3].iter().map(|t| t.0).collect::<Vec<_>>(),
            [5, 17, 900]
        );
        assert_eq!(want[2].logprob, f32::NEG_INFINITY);
        let mut worst = 0f32;
        for (a, b) in got.iter().zip(&want) {
            assert_eq!(a.token, b.token);
            assert_eq!(
                a.top.iter().map(|t| t.0).collect::<Vec<_>>(),
                b.top.iter().map(|t| t.0).collect::<Vec<_>>(),
                "vocab {vocab}"
            );
            let d = |x: f32, y: f32| if x == y { 0.0 } else { (x - y).abs() };
            worst = a
                .top
                .iter()
                .zip(&b.top)
                .fold(d(a.logprob, b.logprob), |m, (p, q)| m.max(d(p.1, q.1)))
                .max(worst);
        }
        println!("logprobs on the device, vocab {vocab}: worst |d| {worst:.1e}");
        assert!(worst <= 1e-5, "vocab {vocab}: {worst}");
    }
}

fn fixture() -> PathBuf {
    // From the repo root (scripts/gpu-check.sh), else relative to this crate.
    [
        PathBuf::from("tests/fixtures/tiny/hf-mxfp4"),
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny/hf-mxfp4"),
    ]
    .into_iter()
    .find(|p| p.is_dir())
    .unwrap()
}

#[test]
#[ignore = "needs GPU"]
fn engine_masked_sampling_on_cuda_equals_the_host_path() {
    let w = gptoss_formats::load(&fixture()).unwrap().weights;
    let cap = Capacity {
        max_batch_tokens: 64,
        max_logit_rows: 8,
        slots: 8,
        context_tokens: 256,
        kv_blocks: None,
    };
    let mut m = Model::new(cuda(), &w, cap).unwrap();
    masked::backend_equals_host(&mut m);
}
