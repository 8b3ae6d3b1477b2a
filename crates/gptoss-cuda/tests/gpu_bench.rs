//! A short benchmark on the GPU (no timing assertions): gpt-oss-20b shapes with random MXFP4 experts under
//! `--max-vram 16GiB` at 8,192 tokens of context, prefill and decode speed, and peak device memory against
//! the planner's figure. Run by scripts/gpu-check.sh with `--nocapture`; prints `BENCH` lines.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use gptoss_cuda::{CudaBackend, CudaOptions};
use gptoss_engine::memory::{plan, weights_bytes, KvPrecision};
use gptoss_engine::{Batch, Capacity, Model};
use gptoss_formats::ModelConfig;

const GIB: u64 = 1 << 30;

#[test]
#[ignore = "needs GPU"]
fn bench_gpt_oss_20b_under_16_gib() {
    let config = ModelConfig::gpt_oss_20b();
    let t0 = Instant::now();
    let w = gptoss_formats::dummy::dummy_weights(&config, 1);
    println!(
        "BENCH dummy 20b weights built in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    let cap = Capacity {
        max_batch_tokens: 256,
        max_logit_rows: 1,
        slots: 1,
        context_tokens: 8192,
        kv_blocks: None,
    };
    // The default KV cache (f32).
    let p = plan(&config, weights_bytes(&w), &cap, KvPrecision::default()).unwrap();
    println!("BENCH plan: {p}");
    let mut o = CudaOptions::from_env().unwrap();
    o.max_vram_bytes = Some(16 * GIB);
    let b = CudaBackend::new(&o).unwrap();
    let dev = b.device();
    println!(
        "BENCH device {} sm_{} target {}",
        dev.caps.name,
        dev.caps.compute,
        dev.target.describe()
    );
    b.check_plan(&p).unwrap();
    let t0 = Instant::now();
    let mut m = Model::new(b, &w, cap).unwrap();
    m.backend().synchronize().unwrap();
    println!("BENCH upload {:.1} s", t0.elapsed().as_secs_f64());
    drop(w);
    let prompt: Vec<u32> = (0..256u32).map(|i| (i * 7919) % 200_000).collect();
    let table = m.solo_table();
    m.forward(&Batch::single(&prompt, 0, table.clone()))
        .unwrap();
    m.backend().synchronize().unwrap();
    let reps = 3;
    let t0 = Instant::now();
    for _ in 0..reps {
        m.forward(&Batch::single(&prompt, 0, table.clone()))
            .unwrap();
    }
    m.backend().synchronize().unwrap();
    let prefill_s = t0.elapsed().as_secs_f64() / reps as f64;
    let mut tok = m.sample(&[Default::default()], &[0]).unwrap()[0];
    let n_decode = 64;
    let t0 = Instant::now();
    for i in 0..n_decode {
        m.forward(&Batch::single(&[tok], 256 + i, table.clone()))
            .unwrap();
        tok = m.sample(&[Default::default()], &[i as u64]).unwrap()[0];
    }
    let decode_s = t0.elapsed().as_secs_f64() / n_decode as f64;
    let t0 = Instant::now();
    for i in 0..n_decode {
        m.forward(&Batch::single(&[tok], 256 + n_decode + i, table.clone()))
            .unwrap();
    }
    m.backend().synchronize().unwrap();
    let forward_s = t0.elapsed().as_secs_f64() / n_decode as f64;
    let (used, peak) = m.backend().memory_in_use();
    println!(
        "BENCH prefill 256 tokens: {:.1} ms ({:.0} tok/s)",
        prefill_s * 1e3,
        256.0 / prefill_s
    );
    println!(
        "BENCH decode (forward + greedy sample): {:.2} ms/token ({:.1} tok/s)",
        decode_s * 1e3,
        1.0 / decode_s
    );
    println!(
        "BENCH decode forward only (queued back to back): {:.2} ms/token",
        forward_s * 1e3
    );
    println!(
        "BENCH device memory: in use {:.2} GiB, peak {:.2} GiB, plan {:.2} GiB, cap 16 GiB",
        used as f64 / GIB as f64,
        peak as f64 / GIB as f64,
        p.total_bytes() as f64 / GIB as f64
    );
    assert!(peak <= 16 * GIB && peak <= p.total_bytes());
}
