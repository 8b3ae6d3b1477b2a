//! The hot-expert cache on the GPU (`gptoss-engine` `expert_cache.rs`, `src/ops/slots.rs`): with every layer's
//! experts in host memory, slots on the GPU run the cached experts' pairs (remapped routing, misses marked
//! -1 and skipped by `moe_group` and `moe_combine`), the CPU the rest, and the sums are added. Against the
//! uncached offload and the all-GPU model: the same greedy tokens and logits within the CUDA-vs-CPU bar
//! (1e-5 of the largest logit, as `gpu_model`'s host-expert test), through a prefill and decode steps,
//! while slots are evicted and refilled; and the MoE over a slot set against the CPU backend's, op by op.
//! Streaming (`expert_stream.rs`): a step over the threshold copies every host layer's experts into one
//! slot set and runs the layers' MoE on the GPU, bit for bit what the all-GPU model computes; below it
//! nothing is streamed. `streamed_layer_rates` measures both sides of the streaming cost model on a
//! 20b-shaped layer (printed; the lead calibrates `StreamCost` with it).
//! Needs a GPU (scripts/gpu-check.sh).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use gptoss_cuda::{CudaBackend, CudaOptions};
use gptoss_engine::backend::{MoeArgs, MoeShape, Rope, NO_EXPERT};
use gptoss_engine::{
    Backend, Batch, Capacity, CpuBackend, ExpertCacheConfig, ExpertCacheStats, ExpertPlacement,
    ExpertStreamStats, ExpertStreaming, KvLayout, Model,
};
use gptoss_formats::{ModelConfig, ModelWeights};

/// 8 experts, top-4, 3 layers: four products per token, so a split between slots and the CPU changes the
/// order of additions (unlike top-2).
fn config() -> ModelConfig {
    let mut c = ModelConfig::gpt_oss_20b();
    c.num_hidden_layers = 3;
    c.layer_types = gptoss_formats::config::alternating_layer_types(3, 2);
    c.num_local_experts = 8;
    c.num_experts_per_tok = 4;
    c.vocab_size = 512;
    c.hidden_size = 64;
    c.intermediate_size = 96;
    c.head_dim = 16;
    c.num_attention_heads = 4;
    c.num_key_value_heads = 2;
    c.sliding_window = 8;
    c
}

/// The exact kernels: the cached, streamed and offloaded runs split a step's MoE differently (GPU slots,
/// host pairs), and the 1e-5 bar is the exact kernels' (the prompt's default f16 kernels differ from the CPU
/// by about 1e-4, see gpu_model).
fn cuda() -> CudaBackend {
    let mut o = CudaOptions::from_env().unwrap();
    o.exact = true;
    CudaBackend::new(&o).unwrap()
}

/// Logits of the last prompt position and of 16 greedy decode steps, and the cache's counters.
fn placed_run(
    w: &ModelWeights,
    prompt: &[u32],
    placement: &ExpertPlacement,
) -> (Vec<Vec<f32>>, Vec<u32>, Option<ExpertCacheStats>) {
    let (logits, tokens, cache, _) = run_with_stats(w, prompt, placement);
    (logits, tokens, cache)
}

/// [`placed_run`] with streaming's counters too.
fn run_with_stats(
    w: &ModelWeights,
    prompt: &[u32],
    placement: &ExpertPlacement,
) -> (
    Vec<Vec<f32>>,
    Vec<u32>,
    Option<ExpertCacheStats>,
    Option<ExpertStreamStats>,
) {
    let cap = Capacity {
        max_batch_tokens: prompt.len(),
        max_logit_rows: 1,
        slots: 1,
        context_tokens: 64,
        kv_blocks: None,
    };
    let mut m = Model::with_placement(cuda(), w, cap, placement).unwrap();
    let table = m.solo_table();
    m.forward(&Batch::single(prompt, 0, table.clone())).unwrap();
    let (mut logits, mut tokens) = (vec![m.logits(1).unwrap()], vec![]);
    for pos in prompt.len() as u32..prompt.len() as u32 + 16 {
        let last = logits.last().unwrap();
        let next = (0..last.len())
            .max_by(|&a, &b| last[a].total_cmp(&last[b]).then(b.cmp(&a)))
            .unwrap() as u32;
        tokens.push(next);
        m.forward(&Batch::single(&[next], pos, table.clone()))
            .unwrap();
        logits.push(m.logits(1).unwrap());
    }
    (
        logits,
        tokens,
        m.expert_cache_stats(),
        m.expert_stream_stats(),
    )
}

fn worst_rel(got: &[Vec<f32>], want: &[Vec<f32>]) -> f32 {
    got.iter()
        .zip(want)
        .map(|(g, c)| {
            assert!(g.iter().all(|x| x.is_finite()));
            let scale = c.iter().fold(0f32, |m, x| m.max(x.abs()));
            g.iter().zip(c).fold(0f32, |m, (a, b)| m.max((a - b).abs())) / scale
        })
        .fold(0f32, f32::max)
}

#[test]
#[ignore = "needs GPU"]
fn cached_experts_match_the_uncached_offload() {
    let w = gptoss_formats::dummy::dummy_weights(&config(), 11);
    let prompt: Vec<u32> = (0..20).map(|i| ((i * 7919 + 13) % 512) as u32).collect();
    let host = ExpertPlacement::first_on_host(3, 3);
    let (device, device_tokens, none) = placed_run(&w, &prompt, &ExpertPlacement::all_on_device());
    assert_eq!(none, None);
    let (want, want_tokens, none) = placed_run(&w, &prompt, &host);
    assert_eq!(none, None);
    println!(
        "uncached offload vs all on the GPU: worst rel logit err {:.2e}, greedy {}",
        worst_rel(&want, &device),
        if want_tokens == device_tokens {
            "identical"
        } else {
            "DIFFERS"
        }
    );
    // 17 steps: the prompt, then 16 tokens; 4 pairs per token and layer.
    let pairs = (20 + 16) * 4 * 3;
    for (slots, refresh_steps) in [(1, 1), (5, 1), (9, 2), (15, 4), (24, 1)] {
        let placement = host.clone().with_cache(ExpertCacheConfig {
            slots,
            refresh_steps,
        });
        let (got, tokens, stats) = placed_run(&w, &prompt, &placement);
        let s = stats.unwrap();
        let worst = worst_rel(&got, &want);
        let vs_device = worst_rel(&got, &device);
        println!(
            "{slots} slots, refresh every {refresh_steps}: {s:?}; hit rate {:.1}%; worst rel logit err vs \
             uncached offload {worst:.2e}, vs all on the GPU {vs_device:.2e}; greedy {}",
            100.0 * s.hit_rate(),
            if tokens == want_tokens { "identical" } else { "DIFFERS" }
        );
        assert!(worst <= 1e-5, "{slots} slots: {worst}");
        assert_eq!(tokens, want_tokens, "{slots} slots");
        assert_eq!((s.slots, s.hits + s.misses), (slots, pairs), "{s:?}");
        if slots == 24 {
            // Every expert held from the start: the GPU runs every pair, nothing is refilled.
            assert_eq!((s.hits, s.uploads), (pairs, 24), "{s:?}");
            assert!(vs_device <= 1e-5, "{vs_device}");
        } else {
            assert!(s.hits > 0 && s.misses > 0, "{slots} slots: {s:?}");
        }
        if (5..24).contains(&slots) {
            // Slots evicted and refilled as the counts moved.
            assert!(s.uploads > slots as u64, "{slots} slots: {s:?}");
        }
    }
}

/// The MoE over a slot set: 3 slots filled with experts 5, 2 and 7 of layer 0, slot 1 then refilled with
/// expert 0; routing written from the host with some pairs `NO_EXPERT` (skipped) and some tokens with no
/// pair left (output 0). `(rows of the step, output)`.
fn slot_moe<B: Backend>(b: &B, w: &ModelWeights, rows: usize, h: &[f32]) -> Vec<f32> {
    let c = &w.config;
    let (hidden, top_k) = (c.hidden_size, c.num_experts_per_tok);
    let cap = Capacity {
        max_batch_tokens: rows,
        max_logit_rows: 1,
        slots: 1,
        context_tokens: 64,
        kv_blocks: None,
    };
    let layout = KvLayout::new(c, &cap).unwrap();
    let rope = Rope {
        inv_freq: vec![1.0; c.head_dim / 2],
        concentration: 1.0,
    };
    let mut step = b.alloc_step(&cap, &layout, &rope).unwrap();
    let tokens = vec![1u32; rows];
    b.begin_step(&mut step, &Batch::single(&tokens, 0, layout.solo_table()))
        .unwrap();
    let experts = &w.layers[0].experts;
    let mut slots = b.alloc_expert_slots(&experts[0], 3).unwrap();
    for (s, e) in [5, 2, 7].into_iter().enumerate() {
        b.upload_expert_slot(&mut slots, s, &experts[e]).unwrap();
    }
    b.upload_expert_slot(&mut slots, 1, &experts[0]).unwrap();
    let choices: Vec<(u32, f32)> = (0..rows * top_k)
        .map(|i| {
            let (t, k) = (i / top_k, i % top_k);
            // Every third token has no pair on the device; the others some, each slot at most once per
            // token (a router's top-k never repeats an expert, and moe_combine relies on it).
            let slot = if t % 3 == 2 || (t + k) % 4 == 3 || k >= 3 {
                NO_EXPERT
            } else {
                ((t + k) % 3) as u32
            };
            (slot, 0.1 + 0.2 * k as f32)
        })
        .collect();
    let mut routing = b.alloc_routing(rows, top_k).unwrap();
    b.write_routing(&mut routing, rows, top_k, &choices)
        .unwrap();
    let mut hb = b.alloc(rows, hidden).unwrap();
    b.write(&mut hb, rows, h).unwrap();
    let mut out = b.alloc(rows, hidden).unwrap();
    let shape = MoeShape {
        top_k,
        swiglu_alpha: c.swiglu_alpha as f32,
        swiglu_limit: c.swiglu_limit as f32,
    };
    let args = MoeArgs {
        h: &hb,
        experts: &slots,
        routing: &routing,
        shape,
    };
    b.moe(&step, args, &mut out).unwrap();
    b.read(&out, rows).unwrap()
}

/// Slot sets on CUDA against the CPU backend's: refilled slots and skipped (-1) pairs, for steps that take
/// the different MoE kernels (1, 6 and 40 tokens); tokens without a device pair come out 0.
#[test]
#[ignore = "needs GPU"]
fn slot_moe_matches_cpu() {
    let w = gptoss_formats::dummy::dummy_weights(&config(), 11);
    let hidden = w.config.hidden_size;
    let g = cuda();
    for rows in [1, 6, 40] {
        let h: Vec<f32> = (0..rows * hidden)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 40.0)
            .collect();
        let got = slot_moe(&g, &w, rows, &h);
        let want = slot_moe(&CpuBackend, &w, rows, &h);
        let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
        let err = got
            .iter()
            .zip(&want)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
            / scale;
        println!("slot MoE, {rows} tokens: rel err vs CPU {err:.2e}");
        assert!(got.iter().all(|x| x.is_finite()));
        assert!(err <= 1e-5, "{rows} tokens: {err}");
        for t in (2..rows).step_by(3) {
            assert!(got[t * hidden..(t + 1) * hidden].iter().all(|&x| x == 0.0));
        }
    }
}

/// Streamed host layers against the all-GPU model: every step streamed (threshold 1 pair) gives the
/// all-GPU logits bit for bit, prefill and decode; a threshold at the prompt's pairs streams the
/// prefill only (its logits bit for bit the all-GPU ones, the decode steps' within the CPU bar and the
/// tokens those of the unstreamed offload); one pair more streams nothing and is the unstreamed
/// offload exactly.
#[test]
#[ignore = "needs GPU"]
fn streamed_experts_match_the_resident_model() {
    let w = gptoss_formats::dummy::dummy_weights(&config(), 11);
    let prompt: Vec<u32> = (0..20).map(|i| ((i * 7919 + 13) % 512) as u32).collect();
    let prefill_pairs = prompt.len() * 4;
    let host = ExpertPlacement::first_on_host(3, 3);
    let (device, device_tokens, _, none) =
        run_with_stats(&w, &prompt, &ExpertPlacement::all_on_device());
    assert_eq!(none, None);
    let (offload, offload_tokens, _, none) = run_with_stats(&w, &prompt, &host);
    assert_eq!(none, None);
    let stream = |pairs| {
        host.clone()
            .with_streaming(ExpertStreaming::FromPairs(pairs))
    };

    let (got, tokens, _, s) = run_with_stats(&w, &prompt, &stream(1));
    println!(
        "every step streamed: {s:?}; worst rel logit err vs all on the GPU {:.2e}",
        worst_rel(&got, &device)
    );
    assert_eq!(got, device, "every step streamed");
    assert_eq!(tokens, device_tokens);
    // 17 steps of 3 layers; the set is refilled for every layer of every step (3 layers share it).
    assert_eq!(
        s,
        Some(ExpertStreamStats {
            streamed_steps: 17,
            streamed_layers: 17 * 3,
            uploads: 17 * 3 * 8,
        })
    );

    let (got, tokens, _, s) = run_with_stats(&w, &prompt, &stream(prefill_pairs));
    println!(
        "prefill streamed: {s:?}; worst rel logit err vs unstreamed offload {:.2e}",
        worst_rel(&got, &offload)
    );
    assert_eq!(got[0], device[0], "the streamed prefill's logits");
    assert!(worst_rel(&got, &offload) <= 1e-5);
    assert_eq!(tokens, offload_tokens);
    assert_eq!(
        s,
        Some(ExpertStreamStats {
            streamed_steps: 1,
            streamed_layers: 3,
            uploads: 3 * 8,
        })
    );

    let (got, _, _, s) = run_with_stats(&w, &prompt, &stream(prefill_pairs + 1));
    assert_eq!(got, offload, "nothing streamed");
    assert_eq!(s, Some(ExpertStreamStats::default()));
}

/// The two rates of `StreamCost` on this host, for one 20b-shaped layer (32 experts of [5760, 2880] and
/// [2880, 2880], ≈ 422 MB): copying all its experts into a slot set (3 times, after a warm-up), and the
/// CPU (fast kernels) running a 512-token step's MoE over it (2048 pairs). The GPU's MoE from the set
/// must equal the same MoE from the layer uploaded whole, bit for bit. Prints the threshold the rates give.
#[test]
#[ignore = "needs GPU"]
fn streamed_layer_rates() {
    let mut c = ModelConfig::gpt_oss_20b();
    c.num_hidden_layers = 1;
    c.layer_types.truncate(1);
    c.vocab_size = 512;
    let w = gptoss_formats::dummy::dummy_weights(&c, 5);
    let experts = &w.layers[0].experts;
    let (rows, hidden, top_k) = (512, c.hidden_size, c.num_experts_per_tok);
    let g = cuda();
    let layer_bytes: u64 = gptoss_engine::placement::WeightSplit::of_weights(&w).expert_bytes[0];
    let mut set = g.alloc_expert_slots(&experts[0], experts.len()).unwrap();
    let mut seconds = vec![];
    for _ in 0..4 {
        let t = std::time::Instant::now();
        for (s, e) in experts.iter().enumerate() {
            g.upload_expert_slot(&mut set, s, e).unwrap();
        }
        g.synchronize().unwrap();
        seconds.push(t.elapsed().as_secs_f64());
    }
    let upload = seconds[1..].iter().cloned().fold(f64::MAX, f64::min);
    let upload_rate = layer_bytes as f64 / upload;
    let cap = Capacity {
        max_batch_tokens: rows,
        max_logit_rows: 1,
        slots: 1,
        context_tokens: rows,
        kv_blocks: None,
    };
    let h: Vec<f32> = (0..rows * hidden)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 40.0)
        .collect();
    // Each token's top_k distinct experts, spread over all of them.
    let choices: Vec<(u32, f32)> = (0..rows * top_k)
        .map(|i| (((i / top_k) * 7 + (i % top_k) * 5) % experts.len()) as u32)
        .map(|e| (e, 0.25))
        .collect();
    let run = |b: &CudaBackend, ex: &<CudaBackend as Backend>::Experts| {
        one_moe(b, ex, (&c, &cap), &h, &choices).0
    };
    let resident = g.upload_experts(experts).unwrap();
    assert_eq!(
        run(&g, &set),
        run(&g, &resident),
        "MoE from the streamed set vs resident"
    );
    let cpu = CpuBackend::fast();
    let host_experts = cpu.upload_experts(experts).unwrap();
    let mut cpu_seconds = f64::MAX;
    for _ in 0..3 {
        cpu_seconds = cpu_seconds.min(one_moe(&cpu, &host_experts, (&c, &cap), &h, &choices).1);
    }
    let pair_rate =
        (layer_bytes / experts.len() as u64) as f64 * choices.len() as f64 / cpu_seconds;
    let cost = gptoss_engine::StreamCost {
        upload_bytes_per_s: upload_rate,
        cpu_pair_bytes_per_s: pair_rate,
    };
    println!(
        "one 20b layer's experts ({layer_bytes} B): upload {:.1} ms ({:.1} GB/s; runs {seconds:?}); CPU MoE of \
         {rows} tokens ({} pairs) {:.1} ms ({:.1} µs a pair, {:.1} GB/s per pair); threshold {} pairs a layer \
         (StreamCost::H200_HOST gives {})",
        upload * 1e3,
        upload_rate / 1e9,
        choices.len(),
        cpu_seconds * 1e3,
        cpu_seconds * 1e6 / choices.len() as f64,
        pair_rate / 1e9,
        cost.min_pairs(experts.len()),
        gptoss_engine::StreamCost::H200_HOST.min_pairs(experts.len()),
    );
    assert!(upload_rate.is_finite() && pair_rate.is_finite());
}

/// One MoE of `choices` over `experts` on `b`: the output and the seconds it took (synchronised by the
/// read).
fn one_moe<B: Backend>(
    b: &B,
    experts: &B::Experts,
    (c, cap): (&ModelConfig, &Capacity),
    h: &[f32],
    choices: &[(u32, f32)],
) -> (Vec<f32>, f64) {
    let (rows, hidden, top_k) = (cap.max_batch_tokens, c.hidden_size, c.num_experts_per_tok);
    let layout = KvLayout::new(c, cap).unwrap();
    let rope = Rope {
        inv_freq: vec![1.0; c.head_dim / 2],
        concentration: 1.0,
    };
    let mut step = b.alloc_step(cap, &layout, &rope).unwrap();
    let tokens = vec![1u32; rows];
    b.begin_step(&mut step, &Batch::single(&tokens, 0, layout.solo_table()))
        .unwrap();
    let mut routing = b.alloc_routing(rows, top_k).unwrap();
    b.write_routing(&mut routing, rows, top_k, choices).unwrap();
    let mut hb = b.alloc(rows, hidden).unwrap();
    b.write(&mut hb, rows, h).unwrap();
    let mut out = b.alloc(rows, hidden).unwrap();
    let args = MoeArgs {
        h: &hb,
        experts,
        routing: &routing,
        shape: MoeShape {
            top_k,
            swiglu_alpha: c.swiglu_alpha as f32,
            swiglu_limit: c.swiglu_limit as f32,
        },
    };
    b.read(&out, rows).unwrap();
    let t = std::time::Instant::now();
    b.moe(&step, args, &mut out).unwrap();
    let y = b.read(&out, rows).unwrap();
    (y, t.elapsed().as_secs_f64())
}
