//! The trace hook on the tiny fixture model: a traced step gives the same logits as a plain one, records
//! every node of every layer in order with the right widths, and its records are the model's own
//! intermediates (the final norm of the last `layer_out`, the top-k of the `router_logits`).

use std::path::PathBuf;

use gptoss_engine::math::{rms_norm, router_top_k};
use gptoss_engine::{Batch, Capacity, CpuBackend, Model, TraceSpec, TRACE_NODES};
use gptoss_formats::ModelWeights;

fn weights() -> ModelWeights {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny/hf-mxfp4");
    gptoss_formats::load(&dir).unwrap().weights
}

fn model(w: &ModelWeights, n: usize) -> Model<CpuBackend> {
    let cap = Capacity {
        max_batch_tokens: n,
        max_logit_rows: n,
        slots: 1,
        context_tokens: n,
        kv_blocks: None,
    };
    Model::new(CpuBackend, w, cap).unwrap()
}

#[test]
fn traced_step_records_the_models_own_intermediates() {
    let w = weights();
    let c = w.config.clone();
    let toks: Vec<u32> = (0..12).map(|i| (i * 41 % 500) as u32 + 1).collect();
    let mut plain = model(&w, toks.len());
    let mut batch = Batch::single(&toks, 0, plain.solo_table());
    batch.logit_rows = (0..toks.len() as u32).collect();
    plain.forward(&batch).unwrap();
    let want = plain.logits(toks.len()).unwrap();

    let mut traced = model(&w, toks.len());
    let rows = [3u32, 11];
    let spec = TraceSpec {
        rows: &rows,
        nodes: &[],
    };
    let records = traced.forward_traced(&batch, spec).unwrap();
    assert_eq!(traced.logits(toks.len()).unwrap(), want);

    let per_layer = TRACE_NODES.len() - 2;
    assert_eq!(records.len(), 2 + c.num_hidden_layers * per_layer);
    assert_eq!((records[0].layer, records[0].node), (None, "embed"));
    let last = records.last().unwrap();
    assert_eq!((last.layer, last.node), (None, "norm"));
    for r in &records {
        assert_eq!(r.rows.len(), rows.len(), "{}", r.node);
        let width = match r.node {
            "q" | "q_rope" | "attn_out" => c.q_width(),
            "k" | "v" | "k_rope" => c.kv_width(),
            "router_logits" => c.num_local_experts,
            "experts" | "expert_weights" => c.num_experts_per_tok,
            _ => c.hidden_size,
        };
        assert_eq!(r.rows[0].len(), width, "{}", r.node);
    }
    let find = |layer, node| {
        records
            .iter()
            .find(|r| r.layer == layer && r.node == node)
            .unwrap()
    };
    let top = Some(c.num_hidden_layers - 1);
    let mut normed = vec![0.0; c.hidden_size];
    for (i, row) in find(top, "layer_out").rows.iter().enumerate() {
        rms_norm(row, &w.norm, c.rms_norm_eps as f32, &mut normed);
        assert_eq!(normed, find(None, "norm").rows[i]);
    }
    for layer in 0..c.num_hidden_layers {
        let logits = &find(Some(layer), "router_logits").rows;
        let experts = &find(Some(layer), "experts").rows;
        let weights = &find(Some(layer), "expert_weights").rows;
        for i in 0..rows.len() {
            let chosen = router_top_k(&logits[i], c.num_experts_per_tok);
            let ids: Vec<f32> = chosen.iter().map(|&(e, _)| e as f32).collect();
            let ws: Vec<f32> = chosen.iter().map(|&(_, w)| w).collect();
            assert_eq!((&ids, &ws), (&experts[i], &weights[i]), "layer {layer}");
        }
    }
}

#[test]
fn trace_filters_nodes_and_rejects_bad_requests() {
    let w = weights();
    let toks = [5u32, 6, 7];
    let mut m = model(&w, toks.len());
    let batch = Batch::single(&toks, 0, m.solo_table());
    let records = m
        .forward_traced(
            &batch,
            TraceSpec {
                rows: &[2],
                nodes: &["experts", "norm"],
            },
        )
        .unwrap();
    assert_eq!(records.len(), w.config.num_hidden_layers + 1);
    assert!(records
        .iter()
        .all(|r| r.node == "experts" || r.node == "norm"));
    let bad_node = TraceSpec {
        rows: &[0],
        nodes: &["attention"],
    };
    let e = m.forward_traced(&batch, bad_node).unwrap_err().to_string();
    assert!(
        e.contains("\"attention\"") && e.contains("router_logits"),
        "{e}"
    );
    let bad_row = TraceSpec {
        rows: &[3],
        nodes: &[],
    };
    let e = m.forward_traced(&batch, bad_row).unwrap_err().to_string();
    assert!(e.contains("row 3") && e.contains("3 tokens"), "{e}");
}
