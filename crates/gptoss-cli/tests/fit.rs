//! `gptoss fit` and `gptoss inspect --dummy` from sizes alone: the plans for 20b and 120b at several
//! budgets against the engine's planner and hand counts, and proof that planning 120b builds no weights
//! (every child of this test binary stays far under 100 MiB of peak RSS). Keep only light commands in
//! this file: the RSS check reads the largest child this process has waited for.

use std::path::Path;
use std::process::{Command, Output};

use gptoss_engine::memory::{mxfp4_checkpoint_bytes, plan, KvPrecision};
use gptoss_engine::placement::WeightSplit;
use gptoss_engine::Capacity;
use gptoss_formats::ModelConfig;

const GIB: u64 = 1 << 30;

fn gptoss(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gptoss"))
        .args(args)
        .output()
        .expect("run gptoss")
}

fn fit_json(args: &[&str]) -> serde_json::Value {
    let mut all = vec!["fit", "--json"];
    all.extend_from_slice(args);
    let out = gptoss(&all);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn cap(ctx: usize, streams: usize) -> Capacity {
    Capacity {
        max_batch_tokens: 512,
        max_logit_rows: streams,
        slots: streams,
        context_tokens: ctx,
        kv_blocks: None,
    }
}

fn total(c: &ModelConfig, weights: u64, ctx: usize, streams: usize, kv: KvPrecision) -> u64 {
    plan(c, weights, &cap(ctx, streams), kv)
        .unwrap()
        .total_bytes()
}

#[test]
fn twenty_b_fits_16_gib_and_needs_offload_at_8() {
    let c = ModelConfig::gpt_oss_20b();
    let w = mxfp4_checkpoint_bytes(&c);
    let v = fit_json(&["--dummy", "gpt-oss-20b", "--vram", "16GiB"]);
    assert_eq!(v["fits"], true);
    assert_eq!(v["weights_bytes"], 13_775_206_656u64);
    // 12 full layers × 8192 positions, and 12 sliding layers of a ring of 41 blocks plus the prefix
    // cache's 4 ring copies of 8 blocks (kv::PREFIX_SNAPSHOTS), × 16 positions; K and V of 512 f32.
    assert_eq!(
        v["kv_cache_bytes"],
        (12 * 8192 + 12 * (41 + 4 * 8) * 16) * 2 * 512 * 4u64
    );
    assert_eq!(v["n_cpu_moe"], 0);
    assert_eq!(v["stream_experts"], serde_json::Value::Null);
    let ctx = v["max_context_tokens"].as_u64().unwrap() as usize;
    assert!(total(&c, w, ctx, 1, KvPrecision::F32) <= 16 * GIB);
    assert!(total(&c, w, ctx + 1, 1, KvPrecision::F32) > 16 * GIB);
    // Each position costs 48 KiB of f32 KV: ≈ 2.7 GiB left over holds ≈ 58k more than the 8k.
    assert!((60_000..70_000).contains(&ctx), "{ctx}");
    let streams = v["max_streams"].as_u64().unwrap() as usize;
    assert!(total(&c, w, 8192, streams, KvPrecision::F32) <= 16 * GIB);
    assert!(total(&c, w, 8192, streams + 1, KvPrecision::F32) > 16 * GIB);

    let v = fit_json(&[
        "--dummy",
        "gpt-oss-20b",
        "--vram",
        "8GiB",
        "--bandwidth",
        "448",
    ]);
    assert_eq!(v["fits"], false);
    assert_eq!(v["max_context_tokens"], serde_json::Value::Null);
    // 14 layers' experts (of 24) to host memory: 13 would leave the device plan over 8 GiB.
    let split = WeightSplit::mxfp4_checkpoint(&c);
    assert_eq!(v["n_cpu_moe"], 14);
    assert!(total(&c, split.device_bytes(14), 8192, 1, KvPrecision::F32) <= 8 * GIB);
    assert!(total(&c, split.device_bytes(13), 8192, 1, KvPrecision::F32) > 8 * GIB);
    assert_eq!(v["host_bytes"], 14 * split.expert_bytes[0]);
    // What the 14 layers leave of 8 GiB holds a hot-expert cache of whole experts and its buffers.
    let spare = 8 * GIB - total(&c, split.device_bytes(14), 8192, 1, KvPrecision::F32);
    let (slots, bytes) = (
        v["expert_cache_slots"].as_u64().unwrap(),
        v["expert_cache_bytes"].as_u64().unwrap(),
    );
    let each = split.bytes_per_expert();
    assert!(
        slots > 0 && bytes <= spare && spare - bytes < each,
        "{slots} {bytes} {spare}"
    );
    let s = v["suggestions"].to_string();
    assert!(s.contains("--n-cpu-moe 14"), "{s}");
    // Streaming host experts for long prompts needs a set of one layer's experts beside the plan: 14 layers
    // leave less than that, 15 leave room (one layer fewer on the GPU frees exactly one layer's experts).
    let set = split.expert_bytes[0];
    assert!(spare < set, "{spare} {set}");
    assert!(total(&c, split.device_bytes(15) + set, 8192, 1, KvPrecision::F32) <= 8 * GIB);
    assert_eq!(v["stream_experts"]["fits"], false);
    assert_eq!(v["stream_experts"]["set_bytes"], set);
    assert_eq!(v["stream_experts"]["n_cpu_moe_for_room"], 15);
    // The estimate: device bytes at 448 GB/s, host experts at 30 GB/s, plus 1.47 ms.
    let (dev, host) = (
        v["decode_device_bytes_per_token"].as_f64().unwrap(),
        v["decode_host_bytes_per_token"].as_f64().unwrap(),
    );
    assert_eq!(host, (14 * 4 * split.expert_bytes[0] / 32) as f64);
    let want = 1.0 / (dev / 448e9 + host / 30e9 + 1.47e-3);
    let got = v["decode_tok_s_estimate"].as_f64().unwrap();
    assert!((got - want).abs() < 0.06, "{got} vs {want}");
}

#[test]
fn kv_precision_and_context_suggestions() {
    // 32k context: f32 KV (1.53 GiB) does not fit 14 GiB beside 12.83 GiB of weights; f16 does.
    let c = ModelConfig::gpt_oss_20b();
    let w = mxfp4_checkpoint_bytes(&c);
    assert!(total(&c, w, 32_768, 1, KvPrecision::F32) > 14 * GIB);
    assert!(total(&c, w, 32_768, 1, KvPrecision::F16) <= 14 * GIB);
    let v = fit_json(&[
        "--dummy",
        "gpt-oss-20b",
        "--vram",
        "14GiB",
        "--ctx",
        "32768",
    ]);
    assert_eq!(v["fits"], false);
    let s = v["suggestions"].to_string();
    let ctx = v["max_context_tokens"].as_u64().unwrap();
    assert!(
        s.contains("--kv-cache f16") && s.contains(&format!("--ctx {ctx}")),
        "{s}"
    );
    let v = fit_json(&[
        "--dummy",
        "gpt-oss-20b",
        "--vram",
        "14GiB",
        "--ctx",
        "32768",
        "--kv-cache",
        "f16",
    ]);
    assert_eq!(v["fits"], true);
    assert_eq!(v["kv_cache"], "f16");
}

#[test]
fn one_twenty_b_on_named_cards() {
    let c = ModelConfig::gpt_oss_120b();
    let split = WeightSplit::mxfp4_checkpoint(&c);
    let w = split.total_bytes();
    // Hand count per layer: attention and router bf16 with f32 biases, 128 experts at 17/32 byte per
    // weight plus f32 biases, norms and sinks; embed and lm_head bf16.
    let attention = (4096 * 2880 + 2 * 512 * 2880 + 2880 * 4096) * 2 + 4 * (4096 + 1024 + 2880);
    let router = 128 * 2880 * 2 + 4 * 128;
    let experts = 128 * ((5760 * 2880 + 2880 * 2880) / 32 * 17 + 4 * (5760 + 2880));
    let per_layer: u64 = attention + router + experts + 4 * (2 * 2880 + 64);
    assert_eq!(w, 2 * 201_088 * 2880 * 2 + 4 * 2880 + 36 * per_layer);
    let v = fit_json(&["--dummy", "gpt-oss-120b", "--gpu", "H100 80GB"]);
    assert_eq!(v["fits"], true);
    assert_eq!(v["weights_bytes"], w);
    assert_eq!(v["gpu"]["budget_bytes"], (81_559u64 << 20) - (512 << 20));
    assert!(v["decode_tok_s_estimate"].as_f64().unwrap() > 50.0);
    let v = fit_json(&["--dummy", "gpt-oss-120b", "--gpu", "RTX 4090"]);
    assert_eq!(v["fits"], false);
    let budget = (24 << 30) - (512 << 20);
    let n = v["n_cpu_moe"].as_u64().unwrap() as usize;
    assert!(total(&c, split.device_bytes(n), 8192, 1, KvPrecision::F32) <= budget);
    assert!(total(&c, split.device_bytes(n - 1), 8192, 1, KvPrecision::F32) > budget);
    assert_eq!(n, 25);
    assert!(v["suggestions"].to_string().contains("gpt-oss-20b"));
    // With too little host memory for those experts there is no estimate, and it says so.
    let v = fit_json(&[
        "--dummy",
        "gpt-oss-120b",
        "--gpu",
        "RTX 4090",
        "--ram",
        "16GiB",
    ]);
    assert_eq!(v["decode_tok_s_estimate"], serde_json::Value::Null);
    assert!(v["suggestions"].to_string().contains("more than --ram"));
}

#[test]
fn fit_reads_a_checkpoint_like_inspect() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny/hf-mxfp4");
    let d = dir.to_str().unwrap();
    let v = fit_json(&[d, "--vram", "1GiB"]);
    let out = gptoss(&["inspect", d, "--json"]);
    let i: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["weights_bytes"], i["gpu_plan"]["weights_bytes"]);
    assert_eq!(v["fits"], true);
}

#[test]
fn bad_requests_name_the_flag() {
    let out = gptoss(&["fit", "--dummy", "gpt-oss-20b", "--gpu", "Voodoo 2"]);
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && e.contains("--gpu `Voodoo 2`") && e.contains("RTX 4090"),
        "{e}"
    );
    let out = gptoss(&["fit", "--dummy", "gpt-oss-20b"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--vram"));
}

/// Peak RSS in KiB of the largest child this process has waited for.
fn children_peak_rss_kib() -> i64 {
    // SAFETY: getrusage writes one rusage struct, which lives on this stack.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) };
    assert_eq!(rc, 0);
    u.ru_maxrss
}

#[test]
fn planning_120b_builds_no_weights() {
    for args in [
        &["inspect", "--dummy", "gpt-oss-120b", "--json"][..],
        &["fit", "--dummy", "gpt-oss-120b", "--gpu", "4090", "--json"][..],
    ] {
        // Under a 100 MiB cap on heap and anonymous memory: building 61 GiB of weights would abort.
        let cmd = format!(
            "ulimit -d 102400 && exec {} {}",
            env!("CARGO_BIN_EXE_gptoss"),
            args.join(" ")
        );
        let out = Command::new("sh").args(["-c", &cmd]).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let weights = v["weights_bytes"].as_u64().unwrap();
        assert!(weights > 60 * GIB, "{weights}");
    }
    let peak = children_peak_rss_kib();
    assert!(peak < 100 * 1024, "a child peaked at {peak} KiB");
}
