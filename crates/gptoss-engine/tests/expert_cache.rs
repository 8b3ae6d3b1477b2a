//! The hot-expert cache (`expert_cache.rs`), with the exact CPU backend standing in for the device: on the
//! tiny fixture model (4 experts, top-2, 3 layers) with every layer's experts in host memory, a cache of
//! 1 to 12 slots gives the logits of the uncached offload and of the all-on-device model bit for bit
//! through a prefill and decode steps (top-2: a token's two products are added in either order to the
//! same f32, so splitting them between the slots and the CPU changes no bit), while slots are evicted
//! and refilled as the routing counts move (`expert_cache.rs`'s unit tests shift the routing on purpose
//! and follow the slots).

mod common;

use common::{greedy_logits, solo_capacity as capacity, tiny_weights as weights};
use gptoss_engine::{
    Batch, CpuBackend, ExpertCacheConfig, ExpertCacheStats, ExpertPlacement, Model, TraceSpec,
};
use gptoss_formats::ModelWeights;

/// Logits of a 12-token prefill and 10 greedy decode steps.
fn run(model: &mut Model<CpuBackend>) -> Vec<Vec<f32>> {
    greedy_logits(model, 10)
}

fn cached(layers: usize, slots: usize, refresh_steps: usize) -> ExpertPlacement {
    ExpertPlacement::first_on_host(layers, layers).with_cache(ExpertCacheConfig {
        slots,
        refresh_steps,
    })
}

fn cached_run(w: &ModelWeights, placement: &ExpertPlacement) -> (Vec<Vec<f32>>, ExpertCacheStats) {
    let mut m = Model::with_placement(CpuBackend, w, capacity(), placement).unwrap();
    let logits = run(&mut m);
    (logits, m.expert_cache_stats().unwrap())
}

#[test]
fn cached_experts_give_the_uncached_logits() {
    let w = weights();
    let layers = w.config.num_hidden_layers;
    let want = run(&mut Model::new(CpuBackend, &w, capacity()).unwrap());
    let mut plain =
        Model::with_placement(CpuBackend, &w, capacity(), &cached(layers, 0, 1)).unwrap();
    assert_eq!(plain.expert_cache_stats(), None);
    assert_eq!(run(&mut plain), want);
    // 11 steps × (12 + 10 tokens) × 2 pairs per layer.
    let pairs = (12 + 10) * 2 * layers as u64;
    // (slots, refresh period); 1 slot: layer 0 holds one expert, layers 1 and 2 have none.
    for (slots, refresh) in [(1, 1), (3, 1), (5, 2), (6, 3), (12, 1)] {
        let (got, s) = cached_run(&w, &cached(layers, slots, refresh));
        assert_eq!(got, want, "{slots} slots, refresh every {refresh} steps");
        assert_eq!(s.slots, slots);
        assert_eq!(s.hits + s.misses, pairs, "{s:?}");
        assert_eq!(s.refreshes, 11usize.div_ceil(refresh) as u64, "{s:?}");
        match slots {
            // Every expert of every layer held from the start: every pair hits, nothing moves.
            12 => assert_eq!((s.hits, s.uploads), (pairs, 12), "{s:?}"),
            1 => assert!(s.hits > 0 && s.misses > 0, "{s:?}"),
            // Some pairs on each side, and slots refilled after the initial fill.
            _ => assert!(
                s.hits > 0 && s.misses > 0 && s.uploads > slots as u64,
                "{slots} slots: {s:?}"
            ),
        }
    }
}

#[test]
fn traced_steps_route_alike_with_cached_experts() {
    let w = weights();
    let layers = w.config.num_hidden_layers;
    let toks = [9u32, 8, 7, 6];
    let spec = TraceSpec {
        rows: &[1, 3],
        nodes: &["experts", "moe_out", "layer_out"],
    };
    let mut device = Model::new(CpuBackend, &w, capacity()).unwrap();
    let batch = Batch::single(&toks, 0, device.solo_table());
    let want = device.forward_traced(&batch, spec).unwrap();
    let mut m = Model::with_placement(CpuBackend, &w, capacity(), &cached(layers, 4, 1)).unwrap();
    for _ in 0..3 {
        // The same step again: slots re-ranked between the runs, the records unchanged.
        assert_eq!(m.forward_traced(&batch, spec).unwrap(), want);
    }
    let s = m.expert_cache_stats().unwrap();
    assert!(s.uploads > 4 && s.hits > 0, "{s:?}");
}

/// The engine's counters carry the cache's: a generation's stats count every routed pair of the
/// host-expert layers as a hit or a miss, and its tokens are those of the uncached offload.
#[test]
fn generation_stats_report_the_cache() {
    use gptoss_engine::generate_with;
    use gptoss_engine::scheduler::{EngineConfig, GenRequest};
    let w = weights();
    let layers = w.config.num_hidden_layers;
    let request = GenRequest {
        prompt: (0..12).map(|i| (i * 53 % 500) as u32 + 1).collect(),
        sampling: Default::default(),
        max_new_tokens: 8,
        stop_tokens: vec![],
    };
    let gen = |placement: &ExpertPlacement| {
        let mut m = Model::with_placement(CpuBackend, &w, capacity(), placement).unwrap();
        generate_with(&mut m, request.clone(), EngineConfig::default(), |_| {}).unwrap()
    };
    let plain = gen(&ExpertPlacement::first_on_host(layers, layers));
    assert_eq!(plain.stats.expert_cache, ExpertCacheStats::default());
    let done = gen(&cached(layers, 5, 2));
    assert_eq!(done.tokens, plain.tokens);
    let s = done.stats.expert_cache;
    // The prompt and every generated token but the last run through the model, 2 pairs per layer.
    let pairs = (12 + done.tokens.len() as u64 - 1) * 2 * layers as u64;
    assert_eq!((s.slots, s.hits + s.misses), (5, pairs), "{s:?}");
    assert!(s.hits > 0 && s.misses > 0, "{s:?}");
}

/// Top-4 of 8 experts (random weights of a tiny config): a token's four products are added in a
/// different order once split between the slots and the CPU, so the logits agree to f32 rounding
/// (well under 1e-5 of the largest logit) rather than bit for bit, and the greedy tokens are the same.
#[test]
fn top4_cached_experts_agree_to_rounding() {
    let mut c = gptoss_formats::ModelConfig::gpt_oss_20b();
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
    let w = gptoss_formats::dummy::dummy_weights(&c, 11);
    let greedy = |logits: &[Vec<f32>]| -> Vec<usize> {
        logits
            .iter()
            .map(|l| (0..l.len()).max_by(|&a, &b| l[a].total_cmp(&l[b])).unwrap())
            .collect()
    };
    let want =
        run(&mut Model::with_placement(CpuBackend, &w, capacity(), &cached(3, 0, 1)).unwrap());
    let pairs = (12 + 10) * 4 * 3;
    for (slots, refresh) in [(5, 1), (9, 2), (15, 4)] {
        let (got, s) = cached_run(&w, &cached(3, slots, refresh));
        let worst = got
            .iter()
            .zip(&want)
            .map(|(g, c)| {
                let scale = c.iter().fold(0f32, |m, x| m.max(x.abs()));
                g.iter().zip(c).fold(0f32, |m, (a, b)| m.max((a - b).abs())) / scale
            })
            .fold(0f32, f32::max);
        println!("top-4, {slots} slots, refresh every {refresh}: {s:?}, worst rel {worst:.2e}");
        assert!(worst <= 1e-5, "{slots} slots: {worst}");
        assert_eq!(greedy(&got), greedy(&want), "{slots} slots");
        assert_eq!(s.hits + s.misses, pairs, "{s:?}");
        assert!(
            s.hits > 0 && s.misses > 0 && s.uploads > slots as u64,
            "{s:?}"
        );
    }
}
