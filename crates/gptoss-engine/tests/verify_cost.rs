//! What a speculative verification step costs on the CPU at gpt-oss-20b's shapes (random weights, no
//! timing assertions; ignored by default: it builds 13 GB of weights and runs for minutes). One
//! sequence, 64 positions of context, then steps of T = 1..=9 tokens with a logit row and a greedy
//! sample per token, interleaved over several rounds; prints each T's fastest and median wall time,
//! its median CPU time (user + system) against T = 1's, and the acceptance rate a draft of T - 1
//! tokens needs to break even at that ratio. Run with
//! `cargo test -p gptoss-engine --test verify_cost -- --ignored --nocapture`.
#![allow(clippy::unwrap_used)]

use std::time::Instant;

use gptoss_engine::{Batch, Capacity, CpuBackend, Model, SamplingParams};
use gptoss_formats::ModelConfig;

/// CPU seconds this process has used (user + system, from /proc/self/stat; 10 ms ticks): on a machine
/// shared with other jobs, the work a step does is steadier than its wall time.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the command name, which ends with the last ')': state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / 100.0
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

#[test]
fn break_even_solves_the_geometric_sum() {
    assert_eq!(break_even(4, 1.0), Some(0.0));
    let a = break_even(1, 1.5).unwrap();
    assert!((a - 0.5).abs() < 1e-9);
    assert!(break_even(2, 3.5).is_none());
}

#[test]
#[ignore = "slow: gpt-oss-20b shapes, 13 GB of weights"]
fn cpu_verification_step_cost_20b() {
    let config = ModelConfig::gpt_oss_20b();
    let w = gptoss_formats::dummy::dummy_weights(&config, 1);
    let cap = Capacity {
        max_batch_tokens: 64,
        max_logit_rows: 9,
        slots: 1,
        context_tokens: 256,
        kv_blocks: None,
    };
    let mut m = Model::new(CpuBackend, &w, cap).unwrap();
    drop(w);
    let context = 64;
    let tokens: Vec<u32> = (0..context + 9)
        .map(|i| (i * 7919 + 17) % 200_000)
        .collect();
    m.forward(&Batch::single(
        &tokens[..context as usize],
        0,
        m.solo_table(),
    ))
    .unwrap();
    let rounds = 5;
    let mut secs = vec![Vec::new(); 10];
    let mut cpu = vec![Vec::new(); 10];
    for round in 0..rounds {
        for t in 1..=9usize {
            // Different tokens each round: the experts a step reads follow its tokens.
            let start = context as usize - round;
            let step: Vec<u32> = tokens[start..start + t].to_vec();
            let mut batch = Batch::single(&step, context, m.solo_table());
            batch.logit_rows = (0..t as u32).collect();
            let (t0, c0) = (Instant::now(), cpu_seconds());
            m.forward(&batch).unwrap();
            m.sample(&vec![SamplingParams::default(); t], &vec![0; t])
                .unwrap();
            secs[t].push(t0.elapsed().as_secs_f64());
            cpu[t].push(cpu_seconds() - c0);
        }
    }
    let stat = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        (v[0], v[v.len() / 2])
    };
    let (_, base) = stat(&cpu[1]);
    for t in 1..=9 {
        let (fast, median) = stat(&secs[t]);
        let (_, work) = stat(&cpu[t]);
        let ratio = work / base;
        let even = break_even(t - 1, ratio).map_or("never".into(), |a| format!("{a:.2}"));
        println!(
            "COST T={t}: wall fastest {fast:.3} s, median {median:.3} s; CPU time median {work:.2} s = {ratio:.2}x T=1; a draft of {} breaks even at acceptance {even}",
            t - 1
        );
    }
}
