//! Experts in host memory (`ExpertPlacement`): on the tiny fixture model, a model whose first layers keep
//! their experts on the host gives bit-identical logits to the all-on-device model, through a prefill and
//! several decode steps, and a traced step records the same routing. A step big enough to stream its host
//! layers' experts to the device (`expert_stream.rs`) gives the same logits bit for bit, and streaming is
//! taken exactly when a step routes the threshold's pairs per layer.

mod common;

use common::{greedy_logits, solo_capacity as capacity, tiny_weights as weights};
use gptoss_engine::{
    Batch, CpuBackend, ExpertCacheConfig, ExpertPlacement, ExpertStreamStats, ExpertStreaming,
    Model, TraceSpec,
};

/// Logits of a 12-token prefill and 6 greedy decode steps.
fn run(model: &mut Model<CpuBackend>) -> Vec<Vec<f32>> {
    greedy_logits(model, 6)
}

#[test]
fn host_experts_give_the_device_logits() {
    let w = weights();
    let layers = w.config.num_hidden_layers;
    let want = run(&mut Model::new(CpuBackend, &w, capacity()).unwrap());
    for n in [1, layers] {
        let placement = ExpertPlacement::first_on_host(layers, n);
        assert_eq!(placement.host_layers(), n);
        let mut m = Model::with_placement(CpuBackend, &w, capacity(), &placement).unwrap();
        assert_eq!(run(&mut m), want, "{n} host layers");
    }
}

/// The model placed by `place(layers)` traces the experts and MoE outputs of a 4-token step exactly as the
/// all-resident model does; returned for further checks.
fn traces_alike_with(place: impl Fn(usize) -> ExpertPlacement) -> Model<CpuBackend> {
    let w = weights();
    let placement = place(w.config.num_hidden_layers);
    let toks = [9u32, 8, 7, 6];
    let spec = TraceSpec {
        rows: &[1, 3],
        nodes: &["experts", "moe_out"],
    };
    let mut device = Model::new(CpuBackend, &w, capacity()).unwrap();
    let batch = Batch::single(&toks, 0, device.solo_table());
    let want = device.forward_traced(&batch, spec).unwrap();
    let mut host = Model::with_placement(CpuBackend, &w, capacity(), &placement).unwrap();
    assert_eq!(host.forward_traced(&batch, spec).unwrap(), want);
    host
}

#[test]
fn traced_steps_route_alike_with_host_experts() {
    traces_alike_with(|layers| ExpertPlacement::first_on_host(layers, 2));
}

/// Pairs the 12-token prefill of `greedy_logits` routes per layer (top-2): the streaming threshold the
/// tests below put just at or just above it.
const PREFILL_PAIRS: usize = 12 * 2;

#[test]
fn streamed_prefill_gives_the_resident_logits() {
    let w = weights();
    let (layers, n_experts) = (w.config.num_hidden_layers, w.config.num_local_experts);
    assert_eq!(w.config.num_experts_per_tok * 12, PREFILL_PAIRS);
    let want = run(&mut Model::new(CpuBackend, &w, capacity()).unwrap());
    for n in [1, layers] {
        let host = ExpertPlacement::first_on_host(layers, n);
        let mut unstreamed = Model::with_placement(CpuBackend, &w, capacity(), &host).unwrap();
        assert_eq!(run(&mut unstreamed), want, "{n} host layers, not streamed");
        assert_eq!(unstreamed.expert_stream_stats(), None);
        let streamed = host.with_streaming(ExpertStreaming::FromPairs(PREFILL_PAIRS));
        let mut m = Model::with_placement(CpuBackend, &w, capacity(), &streamed).unwrap();
        assert_eq!(run(&mut m), want, "{n} host layers, streamed");
        // The prefill streamed every host layer (each copied once); the 1-token steps did not.
        let s = m.expert_stream_stats().unwrap();
        assert_eq!(
            s,
            ExpertStreamStats {
                streamed_steps: 1,
                streamed_layers: n as u64,
                uploads: (n * n_experts) as u64,
            },
            "{n} host layers"
        );
    }
}

#[test]
fn steps_below_the_threshold_run_on_the_cpu() {
    let w = weights();
    let layers = w.config.num_hidden_layers;
    let want = run(&mut Model::new(CpuBackend, &w, capacity()).unwrap());
    let placement = ExpertPlacement::first_on_host(layers, layers)
        .with_streaming(ExpertStreaming::FromPairs(PREFILL_PAIRS + 1));
    let mut m = Model::with_placement(CpuBackend, &w, capacity(), &placement).unwrap();
    assert_eq!(run(&mut m), want);
    assert_eq!(m.expert_stream_stats(), Some(ExpertStreamStats::default()));
    // No host layer: nothing to stream, whatever is asked.
    let none =
        ExpertPlacement::first_on_host(layers, 0).with_streaming(ExpertStreaming::FromPairs(1));
    let mut m = Model::with_placement(CpuBackend, &w, capacity(), &none).unwrap();
    assert_eq!(run(&mut m), want);
    assert_eq!(m.expert_stream_stats(), None);
}

/// A streamed step leaves the hot-expert cache alone: only the decode steps' pairs are counted, and the
/// slots it holds afterwards still give the device's logits. A layer the cache holds whole is not
/// streamed.
#[test]
fn streaming_beside_the_expert_cache() {
    let w = weights();
    let (layers, n_experts) = (w.config.num_hidden_layers, w.config.num_local_experts);
    let top_k = w.config.num_experts_per_tok;
    let want = run(&mut Model::new(CpuBackend, &w, capacity()).unwrap());
    let stream = ExpertStreaming::FromPairs(PREFILL_PAIRS);
    for slots in [1, 3, n_experts * layers] {
        let placement = ExpertPlacement::first_on_host(layers, layers)
            .with_cache(ExpertCacheConfig {
                slots,
                refresh_steps: 1,
            })
            .with_streaming(stream);
        let mut m = Model::with_placement(CpuBackend, &w, capacity(), &placement).unwrap();
        assert_eq!(run(&mut m), want, "{slots} slots");
        let (c, s) = (
            m.expert_cache_stats().unwrap(),
            m.expert_stream_stats().unwrap(),
        );
        let whole = slots == n_experts * layers;
        // 6 one-token decode steps of top_k pairs in each layer; the prefill counted only when no
        // layer streamed (the cache holding every expert).
        let decode_pairs = (6 * top_k * layers) as u64;
        let prefill_pairs = if whole {
            (PREFILL_PAIRS * layers) as u64
        } else {
            0
        };
        assert_eq!(
            c.hits + c.misses,
            decode_pairs + prefill_pairs,
            "{slots} slots: {c:?}"
        );
        let streamed = if whole { 0 } else { layers as u64 };
        assert_eq!(s.streamed_layers, streamed, "{slots} slots: {s:?}");
        assert_eq!(s.streamed_steps, 1, "{slots} slots: {s:?}");
    }
}

#[test]
fn traced_streamed_step_routes_alike() {
    let host = traces_alike_with(|layers| {
        ExpertPlacement::first_on_host(layers, 2).with_streaming(ExpertStreaming::FromPairs(1))
    });
    assert_eq!(host.expert_stream_stats().unwrap().streamed_layers, 2);
}
