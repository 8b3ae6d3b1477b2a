//! Every float/MXFP4 safetensors layout written from one tiny model and read back: each must decode to
//! exactly the model's values under canonical names, with the layout detected and zero-copy kept.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod st_util;

use gptoss_formats::{Layout, Storage, TensorFormat};
use st_util::*;

fn expert_weight(tiny: &Tiny, l: usize, p: usize, e: usize) -> Vec<f32> {
    tiny.mx[&(l, p)].expert(e)
}

fn expert_bias(tiny: &Tiny, l: usize, p: usize, e: usize) -> Vec<f32> {
    let rows = tiny.mx[&(l, p)].rows;
    tiny.bias[&(l, p)][e * rows..(e + 1) * rows].to_vec()
}

fn is_mapped(s: &Storage) -> bool {
    matches!(s, Storage::Mapped { .. })
}

#[test]
fn hf_mxfp4_sharded_is_exact_and_zero_copy() {
    let tiny = Tiny::new(1);
    let dir = temp_dir("hf-mxfp4");
    write_config(&dir, &hf_config());
    let ts = tiny.hf_mxfp4();
    // Two shards: layer 1 in the second file, plus the index.
    let (second, first): (Vec<T>, Vec<T>) =
        ts.into_iter().partition(|x| x.name.contains("layers.1."));
    let names = [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ];
    let mut map = serde_json::Map::new();
    for (file, part) in names.iter().zip([&first, &second]) {
        for x in part {
            map.insert(x.name.clone(), serde_json::json!(file));
        }
        write_st(&dir.join(file), part);
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();

    let raw = check_truth(&dir, &tiny.truth());
    assert_eq!(raw.layout, Layout::HfMxfp4);
    let (w, origin) = &raw.tensors.tensors["layers.1.experts.2.down.weight"];
    assert!(
        origin.starts_with(
            "model-00002-of-00002.safetensors: model.layers.1.mlp.experts.down_proj_blocks[2]"
        ),
        "{origin}"
    );
    assert!(
        is_mapped(&w.data),
        "expert codes must be a window of the mmap"
    );
    let TensorFormat::Lut4(lut) = &w.format else {
        panic!("{:?}", w.format)
    };
    assert!(
        matches!(&lut.scales, gptoss_formats::Lut4Scales::Separate { data, .. } if is_mapped(data))
    );
    assert_eq!(w.format.describe(), "mxfp4/32");
    assert!(is_mapped(&raw.tensors.tensors["layers.0.q.weight"].0.data));
    assert!(is_mapped(
        &raw.tensors.tensors["layers.0.experts.1.gate_up.bias"]
            .0
            .data
    ));
    assert_eq!(raw.source_tensors.len(), 3 + L * (13 + 6));
}

#[test]
fn mxfp4_nibble_order_by_hand() {
    // Expert 0, row 0 of layer 0 gate_up: first byte 0x7A → col 0 = code 0xA (-1), col 1 = code 7 (+6).
    let mut tiny = Tiny::new(2);
    let m = tiny.mx.get_mut(&(0, 0)).unwrap();
    m.blocks[0] = 0x7A;
    m.scales[0] = 128; // ×2
    let w = m.expert(0);
    assert_eq!((w[0], w[1]), (-2.0, 12.0));
    let dir = temp_dir("nibbles");
    write_config(&dir, &hf_config());
    let ts = tiny.hf_mxfp4();
    write_st(&dir.join("model.safetensors"), &ts);
    let raw = gptoss_formats::read_raw(&dir).unwrap();
    let v = raw.tensors.tensors["layers.0.experts.0.gate_up.weight"]
        .0
        .to_f32_vec();
    assert_eq!((v[0], v[1]), (-2.0, 12.0));
}

#[test]
fn original_layout_splits_qkv_zero_copy() {
    let tiny = Tiny::new(3);
    let dir = temp_dir("original");
    write_config(&dir, &original_config());
    let p = |name: &str| tiny.plain[name].1.clone();
    let mut ts = vec![
        t("embedding.weight", "BF16", &[V, H], bf16s(&p("embed"))),
        t("norm.scale", "F32", &[H], f32s(&p("norm"))),
        t("unembedding.weight", "BF16", &[V, H], bf16s(&p("lm_head"))),
    ];
    for l in 0..L {
        let n = |w: &str| format!("layers.{l}.{w}");
        let cat = |a: &str, b: &str, c: &str| [p(&n(a)), p(&n(b)), p(&n(c))].concat();
        let b = |w: &str| format!("block.{l}.{w}");
        ts.push(t(
            b("attn.norm.scale"),
            "F32",
            &[H],
            f32s(&p(&n("attn_norm"))),
        ));
        ts.push(t(
            b("attn.qkv.weight"),
            "BF16",
            &[Q + 2 * KV, H],
            bf16s(&cat("q.weight", "k.weight", "v.weight")),
        ));
        ts.push(t(
            b("attn.qkv.bias"),
            "BF16",
            &[Q + 2 * KV],
            bf16s(&cat("q.bias", "k.bias", "v.bias")),
        ));
        ts.push(t(b("attn.sinks"), "BF16", &[4], bf16s(&p(&n("sinks")))));
        ts.push(t(
            b("attn.out.weight"),
            "BF16",
            &[H, Q],
            bf16s(&p(&n("o.weight"))),
        ));
        ts.push(t(b("attn.out.bias"), "BF16", &[H], bf16s(&p(&n("o.bias")))));
        ts.push(t(
            b("mlp.norm.scale"),
            "F32",
            &[H],
            f32s(&p(&n("mlp_norm"))),
        ));
        ts.push(t(
            b("mlp.gate.weight"),
            "BF16",
            &[E, H],
            bf16s(&p(&n("router.weight"))),
        ));
        ts.push(t(
            b("mlp.gate.bias"),
            "BF16",
            &[E],
            bf16s(&p(&n("router.bias"))),
        ));
        for (pi, k) in [(0, "mlp1"), (1, "mlp2")] {
            let m = &tiny.mx[&(l, pi)];
            ts.push(t(
                b(&format!("mlp.{k}_weight.blocks")),
                "U8",
                &[E, m.rows, m.cols / 32, 16],
                m.blocks.clone(),
            ));
            ts.push(t(
                b(&format!("mlp.{k}_weight.scales")),
                "U8",
                &[E, m.rows, m.cols / 32],
                m.scales.clone(),
            ));
            ts.push(t(
                b(&format!("mlp.{k}_bias")),
                "BF16",
                &[E, m.rows],
                bf16s(&tiny.bias[&(l, pi)]),
            ));
        }
    }
    write_st(&dir.join("model.safetensors"), &ts);
    let raw = check_truth(&dir, &tiny.truth());
    assert_eq!(raw.layout, Layout::OpenAiOriginal);
    let (k, origin) = &raw.tensors.tensors["layers.1.k.weight"];
    assert!(is_mapped(&k.data), "k must be a window of the fused qkv");
    assert!(
        origin.contains("block.1.attn.qkv.weight (rows 64..96)"),
        "{origin}"
    );
    assert!(
        raw.notes.iter().any(|n| n.contains("qkv")),
        "{:?}",
        raw.notes
    );
}

fn write_dense(tiny: &Tiny, dir: &std::path::Path, dtype: &'static str) {
    write_config(dir, &hf_config());
    let mut ts = tiny.hf_plain();
    for l in 0..L {
        for (p, what) in [(0, "gate_up_proj"), (1, "down_proj")] {
            let m = &tiny.mx[&(l, p)];
            // [E, in, out]: each expert's canonical [out, in] transposed.
            let v: Vec<f32> = (0..E)
                .flat_map(|e| transpose(&m.expert(e), m.rows, m.cols))
                .collect();
            let bytes = match dtype {
                "BF16" => bf16s(&v),
                "F32" => f32s(&v),
                _ => v
                    .iter()
                    .map(|x| (half::f16::from_f32(*x).to_bits() >> 8) as u8)
                    .collect(),
            };
            let pre = format!("model.layers.{l}.mlp.experts.{what}");
            ts.push(t(pre.clone(), dtype, &[E, m.cols, m.rows], bytes));
            ts.push(t(
                format!("{pre}_bias"),
                "BF16",
                &[E, m.rows],
                bf16s(&tiny.bias[&(l, p)]),
            ));
        }
    }
    write_st(&dir.join("model.safetensors"), &ts);
}

#[test]
fn hf_dense_experts_are_transposed_to_out_in() {
    let tiny = Tiny::new(4);
    for dtype in ["BF16", "F32"] {
        let dir = temp_dir(&format!("dense-{dtype}"));
        write_dense(&tiny, &dir, dtype);
        let raw = check_truth(&dir, &tiny.truth());
        assert_eq!(raw.layout, Layout::HfDense);
        let w = &raw.tensors.tensors["layers.0.experts.0.down.weight"].0;
        assert_eq!(w.format.describe(), dtype.to_lowercase());
        assert!(
            raw.notes.iter().any(|n| n.contains("transposed")),
            "{:?}",
            raw.notes
        );
        // A single .safetensors file with config.json beside it reads the same.
        let file = check_truth(&dir.join("model.safetensors"), &tiny.truth());
        assert_eq!(file.layout, Layout::HfDense);
    }
}

#[test]
fn f8_e5m2_experts_widen_exactly() {
    // FP4 values × powers of two near 1 are exact in E5M2 (2 mantissa bits, 1.5 = 1.1b).
    let tiny = Tiny::new(5);
    let dir = temp_dir("dense-f8");
    write_dense(&tiny, &dir, "F8_E5M2");
    let raw = check_truth(&dir, &tiny.truth());
    let w = &raw.tensors.tensors["layers.1.experts.2.gate_up.weight"].0;
    assert_eq!(w.format.describe(), "bf16");
    assert!(
        raw.notes.iter().any(|n| n.contains("F8_E5M2")),
        "{:?}",
        raw.notes
    );
}

/// Writes the per-expert pattern `kind` (0..4 = spec §2d rows 1..4) as bf16 `[out, in]` Linears.
fn write_split(tiny: &Tiny, dir: &std::path::Path, kind: usize) {
    write_config(dir, &hf_config());
    let mut ts = tiny.hf_plain();
    for l in 0..L {
        let pre = format!("model.layers.{l}.mlp.experts");
        for e in 0..E {
            let (gu, gub) = (expert_weight(tiny, l, 0, e), expert_bias(tiny, l, 0, e));
            let (dn, dnb) = (expert_weight(tiny, l, 1, e), expert_bias(tiny, l, 1, e));
            let mut lin = |stem: String, w: &[f32], b: &[f32], rows: usize, cols: usize| {
                ts.push(t(format!("{stem}.weight"), "BF16", &[rows, cols], bf16s(w)));
                ts.push(t(format!("{stem}.bias"), "BF16", &[rows], bf16s(b)));
            };
            let (gate_up_stem, down_stem) = match kind {
                0 => (
                    format!("{pre}.gate_up_projs.{e}"),
                    format!("{pre}.down_projs.{e}"),
                ),
                1 => (
                    format!("{pre}.gate_up_proj.weights.{e}"),
                    format!("{pre}.down_proj.weights.{e}"),
                ),
                2 => (String::new(), format!("{pre}.down_proj.weights.{e}")),
                _ => (String::new(), format!("{pre}.{e}.down_proj")),
            };
            lin(down_stem, &dn, &dnb, H, I);
            if kind < 2 {
                lin(gate_up_stem, &gu, &gub, 2 * I, H);
                continue;
            }
            let rows = |v: &[f32], odd: usize, w: usize| -> Vec<f32> {
                v.chunks(w)
                    .skip(odd)
                    .step_by(2)
                    .flatten()
                    .copied()
                    .collect()
            };
            let (gate, up) = (rows(&gu, 0, H), rows(&gu, 1, H));
            let (gate_b, up_b) = (rows(&gub, 0, 1), rows(&gub, 1, 1));
            let (gs, us) = if kind == 2 {
                (
                    format!("{pre}.gate_proj.weights.{e}"),
                    format!("{pre}.up_proj.weights.{e}"),
                )
            } else {
                (format!("{pre}.{e}.gate_proj"), format!("{pre}.{e}.up_proj"))
            };
            lin(gs, &gate, &gate_b, I, H);
            lin(us, &up, &up_b, I, H);
        }
    }
    write_st(&dir.join("model.safetensors"), &ts);
}

#[test]
fn per_expert_patterns_all_decode_identically() {
    let tiny = Tiny::new(6);
    let want = [
        "mlp.experts.gate_up_projs.{e}",
        "mlp.experts.gate_up_proj.weights.{e}",
        "mlp.experts.gate_proj/up_proj.weights.{e}",
        "mlp.experts.{e}.gate_proj",
    ];
    for (kind, desc) in want.iter().enumerate() {
        let dir = temp_dir(&format!("split-{kind}"));
        write_split(&tiny, &dir, kind);
        let raw = check_truth(&dir, &tiny.truth());
        assert_eq!(raw.layout, Layout::PerExpert(desc.to_string()));
        let (w, origin) = &raw.tensors.tensors["layers.1.experts.1.gate_up.weight"];
        if kind < 2 {
            assert!(is_mapped(&w.data), "{origin}");
        } else {
            assert!(
                origin.contains("gate_proj") && origin.contains("up_proj"),
                "{origin}"
            );
        }
    }
}
