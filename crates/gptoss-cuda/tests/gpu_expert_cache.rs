//! The hot-expert cache on the GPU (`gptoss-engine` `expert_cache.rs`, `src/ops/slots.rs`): with every layer's
//! experts in host memory, slots on the GPU run the cached experts' pairs (remapped routing, misses marked
//! -1 and skipped by `moe_group` and `moe_combine`), the CPU the rest, and the sums are added. Against the
//! uncached offload and the all-GPU model: the same greedy tokens and logits within the CUDA-vs-CPU bar
//! (1e-5 of the largest logit, as `gpu_model`'s host-expert test), through a prefill and decode steps,
//! while slots are evicted and refilled. Needs a GPU (scripts/gpu-check.sh).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use gptoss_cuda::{CudaBackend, CudaOptions};
use gptoss_engine::{Batch, Capacity, ExpertCacheConfig, ExpertCacheStats, ExpertPlacement, Model};
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

fn cuda() -> CudaBackend {
    CudaBackend::new(&CudaOptions::from_env().unwrap()).unwrap()
}

/// Logits of the last prompt position and of 16 greedy decode steps, and the cache's counters.
fn placed_run(
    w: &ModelWeights,
    prompt: &[u32],
    placement: &ExpertPlacement,
) -> (Vec<Vec<f32>>, Vec<u32>, Option<ExpertCacheStats>) {
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
    (logits, tokens, m.expert_cache_stats())
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
    assert_eq!(want_tokens, device_tokens);
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
