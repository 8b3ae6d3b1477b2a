//! The committed tiny fixtures (tests/fixtures/tiny, written by transformers / bitsandbytes): every
//! safetensors layout loads, and every layout holding the same model decodes to identical f32 values,
//! tensor by tensor, as the HF MXFP4 original.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use gptoss_formats::{Layout, ModelWeights, TensorFormat};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/tiny")
        .join(name)
}

/// Every tensor of the assembled weights as f32: matrices, and the vectors as `assemble` made them.
fn decoded(w: &ModelWeights) -> BTreeMap<String, Vec<f32>> {
    let mut out = BTreeMap::new();
    w.for_each_tensor(|name, t| {
        out.insert(format!("{name} {:?}", t.shape), t.to_f32_vec());
    });
    out.insert("norm".into(), w.norm.clone());
    for (l, layer) in w.layers.iter().enumerate() {
        let mut v = |what: &str, x: &[f32]| out.insert(format!("layers.{l}.{what}"), x.to_vec());
        v("attn_norm", &layer.attn_norm);
        v("mlp_norm", &layer.mlp_norm);
        v("sinks", &layer.sinks);
        for (what, lin) in [
            ("q", &layer.q),
            ("k", &layer.k),
            ("v", &layer.v),
            ("o", &layer.o),
            ("router", &layer.router),
        ] {
            v(&format!("{what}.bias"), lin.bias.as_deref().unwrap());
        }
        for (e, ex) in layer.experts.iter().enumerate() {
            v(
                &format!("experts.{e}.gate_up.bias"),
                ex.gate_up.bias.as_deref().unwrap(),
            );
            v(
                &format!("experts.{e}.down.bias"),
                ex.down.bias.as_deref().unwrap(),
            );
        }
    }
    out
}

#[test]
fn equal_valued_layouts_decode_identically() {
    let base = gptoss_formats::load(&fixture("hf-mxfp4")).unwrap();
    assert_eq!(base.layout, Layout::HfMxfp4);
    assert!(base.tokenizer_json.is_some());
    let want = decoded(&base.weights);
    let layouts = [
        ("original", Layout::OpenAiOriginal),
        ("hf-bf16", Layout::HfDense),
        (
            "split-projs",
            Layout::PerExpert("mlp.experts.gate_up_projs.{e}".into()),
        ),
        (
            "split-weights",
            Layout::PerExpert("mlp.experts.gate_up_proj.weights.{e}".into()),
        ),
        (
            "split-gate-up",
            Layout::PerExpert("mlp.experts.gate_proj/up_proj.weights.{e}".into()),
        ),
        (
            "split-mixtral",
            Layout::PerExpert("mlp.experts.{e}.gate_proj".into()),
        ),
    ];
    for (dir, layout) in layouts {
        let ck = gptoss_formats::load(&fixture(dir)).unwrap_or_else(|e| panic!("{dir}: {e}"));
        assert_eq!(ck.layout, layout, "{dir}");
        // original/config.json carries no eos ids (ModelConfig fills gpt-oss's); the rest must agree.
        let (mut a, mut b) = (ck.weights.config.clone(), base.weights.config.clone());
        (a.eos_token_ids, b.eos_token_ids) = (Vec::new(), Vec::new());
        assert_eq!(a, b, "{dir}: config");
        let got = decoded(&ck.weights);
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>(),
            "{dir}"
        );
        for (name, w) in &want {
            let g = &got[name];
            let diff = g.iter().zip(w).position(|(a, b)| a != b);
            assert!(
                diff.is_none(),
                "{dir}: {name}[{}]: {} vs {}",
                diff.unwrap(),
                g[diff.unwrap()],
                w[diff.unwrap()]
            );
        }
    }
}

/// Canonical names of the weights `w` keeps in a 4-bit LUT format.
fn lut4_names(w: &ModelWeights) -> Vec<String> {
    let mut out = Vec::new();
    w.for_each_tensor(|name, t| {
        if matches!(t.format, TensorFormat::Lut4(_)) {
            out.push(format!("{name} {:?}", t.shape));
        }
    });
    out
}

/// bitsandbytes fixtures hold the same model quantized: unquantized tensors are identical, and each
/// 4-bit weight is within the code book's largest half-gap (≤ 0.167 of the block absmax for NF4 and
/// FP4) of the original value. A wrong nibble order or block scale breaks this bound by far.
#[test]
fn bnb_fixtures_decode_to_the_quantized_model() {
    let base = gptoss_formats::load(&fixture("hf-mxfp4")).unwrap();
    let want = decoded(&base.weights);
    for (dir, quantized_attn) in [
        ("bnb-nf4", false),
        ("bnb-nf4-dq", true),
        ("bnb-fp4", false),
        ("bnb-fp4-dq", false),
    ] {
        let ck = gptoss_formats::load(&fixture(dir)).unwrap_or_else(|e| panic!("{dir}: {e}"));
        assert_eq!(ck.layout, Layout::Bnb4bit, "{dir}");
        let lut = lut4_names(&ck.weights);
        let experts = lut.iter().filter(|n| n.contains(".experts.")).count();
        assert_eq!(experts, 2 * 3 * 4, "{dir}: every expert weight is 4-bit");
        assert_eq!(
            lut.iter().any(|n| n.contains(".q.weight")),
            quantized_attn,
            "{dir}"
        );
        let got = decoded(&ck.weights);
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>(),
            "{dir}"
        );
        for (name, w) in &want {
            let g = &got[name];
            if !lut.contains(name) {
                assert!(g == w, "{dir}: {name} differs from the unquantized model");
                continue;
            }
            for (blk, (gb, wb)) in g.chunks(64).zip(w.chunks(64)).enumerate() {
                let absmax = wb.iter().fold(0f32, |m, x| m.max(x.abs()));
                for (i, (a, b)) in gb.iter().zip(wb).enumerate() {
                    let bound = 0.17 * absmax + a.abs() / 128.0;
                    assert!(
                        (a - b).abs() <= bound,
                        "{dir}: {name} block {blk} [{i}]: {a} vs {b} (absmax {absmax})"
                    );
                }
            }
            assert!(
                g.iter().zip(w).filter(|(a, b)| a == b).count() < g.len(),
                "{dir}: {name} is not quantized?"
            );
        }
    }
}

#[test]
fn fixture_experts_are_mxfp4_and_nonzero() {
    // Guards the comparison above against a degenerate fixture (all zeros would compare equal).
    let ck = gptoss_formats::load(&fixture("hf-mxfp4")).unwrap();
    let ex = &ck.weights.layers[1].experts[3];
    assert_eq!(ex.gate_up.weight.format.describe(), "mxfp4/32");
    let v = ex.down.weight.to_f32_vec();
    assert!(v.iter().filter(|x| **x != 0.0).count() > v.len() / 2);
    assert!(ck.weights.layers[0].sinks.iter().all(|s| *s != 0.0));
}
