//! Experts in host memory (`ExpertPlacement`): on the tiny fixture model, a model whose first layers keep
//! their experts on the host gives bit-identical logits to the all-on-device model, through a prefill and
//! several decode steps, and a traced step records the same routing.

mod common;

use common::{greedy_logits, solo_capacity as capacity, tiny_weights as weights};
use gptoss_engine::{Batch, CpuBackend, ExpertPlacement, Model, TraceSpec};

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

#[test]
fn traced_steps_route_alike_with_host_experts() {
    let w = weights();
    let layers = w.config.num_hidden_layers;
    let toks = [9u32, 8, 7, 6];
    let spec = TraceSpec {
        rows: &[1, 3],
        nodes: &["experts", "moe_out"],
    };
    let mut device = Model::new(CpuBackend, &w, capacity()).unwrap();
    let batch = Batch::single(&toks, 0, device.solo_table());
    let want = device.forward_traced(&batch, spec).unwrap();
    let placement = ExpertPlacement::first_on_host(layers, 2);
    let mut host = Model::with_placement(CpuBackend, &w, capacity(), &placement).unwrap();
    assert_eq!(host.forward_traced(&batch, spec).unwrap(), want);
}
