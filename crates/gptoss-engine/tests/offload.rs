//! Experts in host memory (`ExpertPlacement`): on the tiny fixture model, a model whose first layers keep
//! their experts on the host gives bit-identical logits to the all-on-device model, through a prefill and
//! several decode steps, and a traced step records the same routing.

use std::path::PathBuf;

use gptoss_engine::{Batch, Capacity, CpuBackend, ExpertPlacement, Model, TraceSpec};
use gptoss_formats::ModelWeights;

fn weights() -> ModelWeights {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny/hf-mxfp4");
    gptoss_formats::load(&dir).unwrap().weights
}

fn capacity() -> Capacity {
    Capacity {
        max_batch_tokens: 16,
        max_logit_rows: 1,
        slots: 1,
        context_tokens: 64,
        kv_blocks: None,
    }
}

/// Logits of a 12-token prefill and 6 greedy decode steps.
fn run(model: &mut Model<CpuBackend>) -> Vec<Vec<f32>> {
    let vocab = model.config().vocab_size;
    let table = model.solo_table();
    let prompt: Vec<u32> = (0..12).map(|i| (i * 53 % 500) as u32 + 1).collect();
    model
        .forward(&Batch::single(&prompt, 0, table.clone()))
        .unwrap();
    let mut all = vec![model.logits(1).unwrap()];
    for pos in 12..18u32 {
        let last = all.last().unwrap();
        let next = (0..vocab)
            .max_by(|&a, &b| last[a].total_cmp(&last[b]))
            .unwrap() as u32;
        model
            .forward(&Batch::single(&[next], pos, table.clone()))
            .unwrap();
        all.push(model.logits(1).unwrap());
    }
    all
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
