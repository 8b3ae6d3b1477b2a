//! Short benchmarks on the GPU (no timing assertions), run by scripts/gpu-check.sh with `--nocapture`; they
//! print `BENCH` lines. The model bench: gpt-oss-20b shapes with random MXFP4 experts under `--max-vram 16GiB`
//! at 8,192 tokens of context, prefill (256 and 2,048 tokens) and decode speed, and peak device memory
//! against the planner's figure. The op bench: each linear and MoE shape of a 20b layer alone, with the
//! bandwidth (decode) or arithmetic rate (prefill) it reaches. The verification bench: what a speculative
//! step of T = 1..=9 tokens of one sequence costs against a one-token decode step, and the acceptance
//! rate a draft of T - 1 tokens needs to pay for itself.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use gptoss_cuda::ops::linear::FAST_LINEAR_MIN_ROWS;
use gptoss_cuda::testing::{random_tensor, Rng, TestFormat};
use gptoss_cuda::{CudaBackend, CudaOptions};
use gptoss_engine::backend::{MoeArgs, MoeShape, Rope};
use gptoss_engine::memory::{plan, weights_bytes, KvPrecision};
use gptoss_engine::{Backend, Batch, Capacity, KvLayout, Model, SamplingParams};
use gptoss_formats::{DType, Expert, Linear, ModelConfig};

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
        max_batch_tokens: 2048,
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
    let prompt: Vec<u32> = (0..2048u32).map(|i| (i * 7919) % 200_000).collect();
    let table = m.solo_table();
    for n in [256usize, 2048] {
        m.forward(&Batch::single(&prompt[..n], 0, table.clone()))
            .unwrap();
        m.backend().synchronize().unwrap();
        let reps = 3;
        let t0 = Instant::now();
        for _ in 0..reps {
            m.forward(&Batch::single(&prompt[..n], 0, table.clone()))
                .unwrap();
        }
        m.backend().synchronize().unwrap();
        let s = t0.elapsed().as_secs_f64() / reps as f64;
        println!(
            "BENCH prefill {n} tokens: {:.1} ms ({:.0} tok/s)",
            s * 1e3,
            n as f64 / s
        );
    }
    m.forward(&Batch::single(&prompt[..256], 0, table.clone()))
        .unwrap();
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
    let (graphs, replays) = m.backend().graph_counts();
    println!("BENCH cuda graphs: {graphs} recorded step shapes, {replays} steps replayed");
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

/// The per-token acceptance rate `a` at which a draft of `k` tokens, accepted token by token with
/// probability `a`, emits `ratio` tokens per step on average: `(1 - a^(k+1)) / (1 - a) = ratio`.
fn break_even(k: usize, ratio: f64) -> Option<f64> {
    let tokens = |a: f64| (0..=k).map(|i| a.powi(i as i32)).sum::<f64>();
    if tokens(1.0) < ratio {
        return None;
    }
    let (mut lo, mut hi) = (0.0, 1.0);
    for _ in 0..60 {
        let mid = 0.5 * (lo + hi);
        if tokens(mid) < ratio {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Some(lo)
}

/// Speculative verification at gpt-oss-20b's shapes: one sequence at 512 positions of context, steps of
/// T = 1..=9 tokens, each with T logit rows and a greedy sample per row (what the engine runs for a
/// draft of T - 1), recorded as CUDA graphs like decode steps. Prints ms per step, the ratio to T = 1
/// and the break-even acceptance rate.
#[test]
#[ignore = "needs GPU"]
fn bench_verification_steps_20b() {
    let config = ModelConfig::gpt_oss_20b();
    let w = gptoss_formats::dummy::dummy_weights(&config, 1);
    let cap = Capacity {
        max_batch_tokens: 512,
        max_logit_rows: 9,
        slots: 1,
        context_tokens: 1024,
        kv_blocks: None,
    };
    let b = CudaBackend::new(&CudaOptions::from_env().unwrap()).unwrap();
    let mut m = Model::new(b, &w, cap).unwrap();
    drop(w);
    let context = 512u32;
    let tokens: Vec<u32> = (0..context + 9)
        .map(|i| (i * 7919 + 17) % 200_000)
        .collect();
    let table = m.solo_table();
    m.forward(&Batch::single(
        &tokens[..context as usize],
        0,
        table.clone(),
    ))
    .unwrap();
    let mut base = 0.0;
    for t in 1..=9usize {
        let mut batch = Batch::single(&tokens[..t], context, table.clone());
        batch.logit_rows = (0..t as u32).collect();
        let params = vec![SamplingParams::default(); t];
        let counters = vec![0; t];
        let mut step = || {
            m.forward(&batch).unwrap();
            m.sample(&params, &counters).unwrap();
        };
        // The second run of a shape records it; later runs replay.
        for _ in 0..3 {
            step();
        }
        let reps = 50;
        let t0 = Instant::now();
        for _ in 0..reps {
            step();
        }
        let s = t0.elapsed().as_secs_f64() / reps as f64;
        if t == 1 {
            base = s;
            println!("BENCH verify T=1 (plain decode step): {:.2} ms", s * 1e3);
            continue;
        }
        let ratio = s / base;
        let even = break_even(t - 1, ratio).map_or("never".into(), |a| format!("{a:.2}"));
        println!(
            "BENCH verify T={t}: {:.2} ms = {ratio:.2}x T=1; a draft of {} pays at acceptance > {even}",
            s * 1e3,
            t - 1
        );
    }
}

/// A `[rows, cols]` buffer holding `data`, written by embedding rows of an f32 table (the one generic way
/// to fill a buffer through the Backend trait).
fn filled(
    b: &CudaBackend,
    rows: usize,
    cols: usize,
    data: &[f32],
) -> <CudaBackend as Backend>::Buf {
    let src = b
        .upload_embedding(&gptoss_formats::QuantTensor::from_f32(
            vec![rows, cols],
            data,
        ))
        .unwrap();
    let step = step_of(b, rows);
    let mut out = b.alloc(rows, cols).unwrap();
    b.embed(&step, &src, &mut out).unwrap();
    out
}

fn step_of(b: &CudaBackend, rows: usize) -> <CudaBackend as Backend>::Step {
    // At least 16 rows of capacity, so that the linears' K-split scratch exists at every size
    // (GPTOSS_LINEAR_KERNEL=tiles-splitk compares it with the GEMV below 16 rows).
    let cap = Capacity {
        max_batch_tokens: rows.max(16),
        max_logit_rows: rows,
        slots: 1,
        context_tokens: rows,
        kv_blocks: None,
    };
    let rope = Rope {
        inv_freq: vec![1.0],
        concentration: 1.0,
    };
    let layout = KvLayout::new(&ModelConfig::gpt_oss_20b(), &cap).unwrap();
    let mut s = b.alloc_step(&cap, &layout, &rope).unwrap();
    let batch = Batch {
        tokens: (0..rows as u32).collect(),
        positions: (0..rows as u32).collect(),
        seqs: vec![0; rows],
        logit_rows: vec![],
        tables: vec![],
    };
    b.begin_step(&mut s, &batch).unwrap();
    s
}

/// Seconds per call of `f`, after one warm-up call, over `reps` calls queued back to back.
fn time(b: &CudaBackend, reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    b.synchronize().unwrap();
    let t0 = Instant::now();
    for _ in 0..reps {
        f();
    }
    b.synchronize().unwrap();
    t0.elapsed().as_secs_f64() / reps as f64
}

#[test]
#[ignore = "needs GPU"]
fn bench_moe_20b_shapes() {
    let b = CudaBackend::new(&CudaOptions::from_env().unwrap()).unwrap();
    bench_moe(&b, &mut Rng(8));
}

/// The dense linears of 20b (bf16, and Q8_0 as the GGUF stores them) at decode, batched-decode and prefill
/// sizes (`GPTOSS_LINEAR_KERNEL` picks the kernel to compare); prompt sizes on the default (fast) tiles and
/// on the exact ones (`--exact`).
#[test]
#[ignore = "needs GPU"]
fn bench_linear_20b_shapes() {
    let b = CudaBackend::new(&CudaOptions::from_env().unwrap()).unwrap();
    let exact = {
        let mut o = CudaOptions::from_env().unwrap();
        o.exact = true;
        CudaBackend::new(&o).unwrap()
    };
    let mut rng = Rng(7);
    for (format, label, bytes_per_weight) in [
        (TestFormat::Dense(DType::BF16), "bf16", 2.0),
        (TestFormat::Q8_0, "q8_0", 34.0 / 32.0),
    ] {
        for (name, n_out, k) in [
            ("q", 4096, 2880),
            ("k", 512, 2880),
            ("o", 2880, 4096),
            ("lm_head", 201_088, 2880),
        ] {
            let lin = Linear {
                weight: random_tensor(&mut rng, format, n_out, k, 0.05),
                bias: Some(rng.vec(n_out, 0.1)),
            };
            let tokens: &[usize] = if name == "lm_head" {
                &[1, 16, 64]
            } else {
                &[1, 2, 4, 5, 8, 16, 32, 64, 512, 2048]
            };
            let backends: &[(&CudaBackend, &str)] = if name == "lm_head" {
                &[(&b, "")]
            } else {
                &[(&b, ""), (&exact, " exact")]
            };
            for &(be, mode) in backends {
                let w = be.upload_linear(&lin).unwrap();
                for &t in tokens {
                    if !mode.is_empty() && t < FAST_LINEAR_MIN_ROWS {
                        continue;
                    }
                    let x = filled(be, t, k, &rng.vec(t * k, 1.0));
                    let mut out = be.alloc(t, n_out).unwrap();
                    let step = step_of(be, t);
                    let reps = if t > 64 { 10 } else { 50 };
                    let s = time(be, reps, || be.linear(&step, &x, &w, &mut out).unwrap());
                    let gbs = (n_out * k) as f64 * bytes_per_weight / s / 1e9;
                    let tflops = 2.0 * (t * n_out * k) as f64 / s / 1e12;
                    println!(
                        "BENCH op linear {label}{mode} {name} [{n_out}, {k}] T={t}: {:.1} us, weights {gbs:.0} GB/s, {tflops:.2} TFLOP/s",
                        s * 1e6
                    );
                }
            }
        }
    }
}

/// q, k and v of one 20b layer through `linear3` at batched-decode sizes (one grid for the three on the
/// pipelined tiles; `GPTOSS_LINEAR_KERNEL=tiles-splitk` gives the launches before them).
#[test]
#[ignore = "needs GPU"]
fn bench_qkv_20b_shapes() {
    let b = CudaBackend::new(&CudaOptions::from_env().unwrap()).unwrap();
    let mut rng = Rng(11);
    let k = 2880;
    for (format, label, bytes_per_weight) in [
        (TestFormat::Dense(DType::BF16), "bf16", 2.0),
        (TestFormat::Q8_0, "q8_0", 34.0 / 32.0),
    ] {
        let lins = [4096, 512, 512].map(|n_out| Linear {
            weight: random_tensor(&mut rng, format, n_out, k, 0.05),
            bias: Some(rng.vec(n_out, 0.1)),
        });
        let w = lins.each_ref().map(|l| b.upload_linear(l).unwrap());
        for t in [5, 16, 32, 64] {
            let x = filled(&b, t, k, &rng.vec(t * k, 1.0));
            let mut out = [4096, 512, 512].map(|n| b.alloc(t, n).unwrap());
            let step = step_of(&b, t);
            let s = time(&b, 50, || {
                let [o0, o1, o2] = &mut out;
                b.linear3(&step, &x, [&w[0], &w[1], &w[2]], [o0, o1, o2])
                    .unwrap()
            });
            let gbs = (5120 * k) as f64 * bytes_per_weight / s / 1e9;
            println!(
                "BENCH op linear3 {label} qkv [5120, {k}] T={t}: {:.1} us, weights {gbs:.0} GB/s",
                s * 1e6
            );
        }
    }
}

fn bench_moe(b: &CudaBackend, rng: &mut Rng) {
    let (n_exp, hidden, inter, top_k) = (32, 2880, 2880, 4);
    let experts: Vec<Expert> = (0..n_exp)
        .map(|_| Expert {
            gate_up: Linear {
                weight: random_tensor(rng, TestFormat::Mxfp4, 2 * inter, hidden, 0.05),
                bias: Some(rng.vec(2 * inter, 0.1)),
            },
            down: Linear {
                weight: random_tensor(rng, TestFormat::Mxfp4, hidden, inter, 0.05),
                bias: Some(rng.vec(hidden, 0.1)),
            },
        })
        .collect();
    let expert_bytes = (3 * hidden * inter) as f64 * (0.5 + 1.0 / 32.0);
    let ex = b.upload_experts(&experts).unwrap();
    drop(experts);
    let router = b
        .upload_linear(&Linear {
            weight: random_tensor(rng, TestFormat::Dense(DType::BF16), n_exp, hidden, 1.0),
            bias: Some(rng.vec(n_exp, 0.5)),
        })
        .unwrap();
    let shape = MoeShape {
        top_k,
        swiglu_alpha: 1.702,
        swiglu_limit: 7.0,
    };
    for t in [1usize, 2, 4, 8, 16, 32, 64, 128, 256, 512, 2048] {
        let h = filled(b, t, hidden, &rng.vec(t * hidden, 1.0));
        let mut routing = b.alloc_routing(t, top_k).unwrap();
        let mut out = b.alloc(t, hidden).unwrap();
        let step = step_of(b, t);
        let reps = if t > 8 { 10 } else { 50 };
        let route_s = time(b, reps, || {
            b.route(&step, &h, &router, top_k, &mut routing).unwrap()
        });
        let moe = |routing: &_, out: &mut _| {
            let args = MoeArgs {
                h: &h,
                experts: &ex,
                routing,
                shape,
            };
            b.moe(&step, args, out).unwrap()
        };
        let s = time(b, reps, || moe(&routing, &mut out));
        // Routed and run back to back, as a layer does (a one-token step groups its choices while routing).
        let layer_s = time(b, reps, || {
            b.route(&step, &h, &router, top_k, &mut routing).unwrap();
            moe(&routing, &mut out)
        });
        let used = (t * top_k).min(n_exp) as f64;
        let tflops = 2.0 * (t * top_k * 3 * hidden * inter) as f64 / s / 1e12;
        println!(
            "BENCH op moe mxfp4 32 experts top-4 T={t}: route {:.1} us, experts {:.1} us, both {:.1} us, \
             weights of <= {used} experts {:.0} GB/s, {tflops:.2} TFLOP/s",
            route_s * 1e6,
            s * 1e6,
            layer_s * 1e6,
            used * expert_bytes / s / 1e9
        );
    }
}
