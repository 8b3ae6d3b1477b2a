//! GGUF reader: a tiny gpt-oss file with every ggml type and both gate/up forms is read, assembled
//! and compared value by value with the codec decode of the stored bytes; every error path is hit.

mod gguf_util;

use std::path::Path;

use gguf_util::{scratch_dir, tiny_metadata, tiny_tensors, write_gguf, TensorData, TINY};
use gptoss_formats::gguf::codecs::dequantize;
use gptoss_formats::gguf::container::{Array, GgufFile, Value};
use gptoss_formats::gguf::read_checkpoint;
use gptoss_formats::{weights::names, DType, LayerType, ModelWeights, Storage, TensorFormat};

fn decode(t: &TensorData) -> Vec<f32> {
    let numel: usize = t.0.ne.iter().product::<u64>() as usize;
    let mut out = vec![0f32; numel];
    dequantize(t.0.ty, &t.1, &mut out);
    out
}

fn find<'a>(ts: &'a [TensorData], name: &str) -> &'a TensorData {
    ts.iter()
        .find(|(p, _)| p.name == name)
        .unwrap_or_else(|| panic!("{name}"))
}

fn same(a: &[f32], b: &[f32], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            x.to_bits() == y.to_bits() || (*x == 0.0 && *y == 0.0),
            "{what}[{i}]: {x} vs {y}"
        );
    }
}

#[test]
fn tiny_model_reads_assembles_and_matches_codec_values() {
    let dir = scratch_dir("tiny");
    let path = dir.join("tiny.gguf");
    let tensors = tiny_tensors(1);
    write_gguf(&path, &tiny_metadata(), &tensors);
    let raw = read_checkpoint(&path).unwrap();

    let c = &raw.config;
    assert_eq!(
        (
            c.num_hidden_layers,
            c.num_local_experts,
            c.num_experts_per_tok
        ),
        (6, 3, 2)
    );
    assert_eq!(
        (c.hidden_size, c.intermediate_size, c.head_dim, c.vocab_size),
        (64, 96, 64, 64)
    );
    assert_eq!(
        (
            c.num_attention_heads,
            c.num_key_value_heads,
            c.sliding_window
        ),
        (4, 2, 8)
    );
    assert_eq!(
        c.layer_types[..3],
        [LayerType::Sliding, LayerType::Full, LayerType::Sliding]
    );
    let y = c.yarn.as_ref().unwrap();
    assert_eq!(
        (
            y.factor,
            y.beta_fast,
            y.beta_slow,
            y.original_max_position_embeddings,
            y.truncate
        ),
        (32.0, 32.0, 1.0, 4096, false)
    );
    assert_eq!(
        (
            c.rope_theta,
            c.rms_norm_eps as f32,
            c.max_position_embeddings
        ),
        (150000.0, 1e-5f32, 131072)
    );
    assert_eq!(
        (c.swiglu_limit, c.swiglu_alpha, c.eos_token_ids.clone()),
        (7.0, 1.702, vec![62])
    );

    let v = raw.vocab.as_ref().unwrap();
    assert_eq!(
        (
            v.model.as_str(),
            v.pre.as_deref(),
            v.tokens.len(),
            v.tokens[5].as_str()
        ),
        ("gpt2", Some("gpt-4o"), 64, "t5")
    );
    assert_eq!(
        (v.token_types[60], v.merges.clone(), v.bos, v.eos, v.pad),
        (
            3,
            vec!["t1 t2".into(), "t3 t4".into()],
            Some(61),
            Some(62),
            Some(63)
        )
    );
    assert_eq!(v.chat_template.as_deref(), Some("{{ messages }}"));

    assert_eq!(raw.source_tensors.len(), tensors.len());
    let st = raw
        .source_tensors
        .iter()
        .find(|s| s.name == "blk.0.attn_output.weight")
        .unwrap();
    assert_eq!(
        (st.dtype.as_str(), st.shape.clone()),
        ("Q6_K", vec![64, 256])
    );
    assert_eq!(st.size_bytes, 64 * 210); // as stored, not as converted
    let notes = raw.notes.join("\n");
    assert!(
        notes.contains("Q6_K → f32")
            && notes.contains("Q5_0 → q8_0")
            && notes.contains("un-truncated"),
        "{notes}"
    );

    let map = &raw.tensors.tensors;
    let get = |n: &str| &map.get(n).unwrap_or_else(|| panic!("{n}")).0;
    // Native types stay zero-copy windows of the mmap; the rest are owned conversions.
    assert!(matches!(
        get("layers.0.q.weight").data,
        Storage::Mapped { .. }
    ));
    assert_eq!(get("layers.0.q.weight").format.describe(), "lut4/32");
    assert_eq!(get("layers.2.q.weight").format.describe(), "q8_0"); // Q5_0 re-packed exactly
    assert!(matches!(
        get("layers.1.q.weight").format,
        TensorFormat::Dense(DType::F32 | DType::F16)
    ));
    assert!(matches!(
        get("layers.0.experts.2.down.weight").data,
        Storage::Mapped { .. }
    ));
    assert_eq!(
        get("layers.0.experts.2.down.weight").format.describe(),
        "mxfp4/32"
    );
    assert!(matches!(
        get("layers.0.experts.0.gate_up.weight").data,
        Storage::Lazy(_)
    ));

    for (canon, gguf) in [
        ("embed", "token_embd.weight"),
        ("lm_head", "output.weight"),
        ("norm", "output_norm.weight"),
    ] {
        same(
            &get(canon).to_f32_vec(),
            &decode(find(&tensors, gguf)),
            canon,
        );
    }
    let (h, i) = (TINY.hidden, TINY.inter);
    for l in 0..TINY.layers {
        for (canon, g) in [
            ("q.weight", "attn_q.weight"),
            ("k.weight", "attn_k.weight"),
            ("v.weight", "attn_v.weight"),
            ("o.weight", "attn_output.weight"),
            ("o.bias", "attn_output.bias"),
            ("sinks", "attn_sinks.weight"),
            ("mlp_norm", "post_attention_norm.weight"),
            ("router.weight", "ffn_gate_inp.weight"),
        ] {
            same(
                &get(&names::layer(l, canon)).to_f32_vec(),
                &decode(find(&tensors, &format!("blk.{l}.{g}"))),
                canon,
            );
        }
        let fused = l == 1 || l == 4;
        let stack = |s: &str| decode(find(&tensors, &format!("blk.{l}.{s}")));
        let (gw, uw, gb, ub) = if fused {
            let (w, b) = (
                stack("ffn_gate_up_exps.weight"),
                stack("ffn_gate_up_exps.bias"),
            );
            let split = |v: &[f32], unit: usize| -> (Vec<f32>, Vec<f32>) {
                let (mut g, mut u) = (vec![], vec![]);
                for e in v.chunks(2 * unit) {
                    g.extend_from_slice(&e[..unit]);
                    u.extend_from_slice(&e[unit..]);
                }
                (g, u)
            };
            let ((gw, uw), (gb, ub)) = (split(&w, i * h), split(&b, i));
            (gw, uw, gb, ub)
        } else {
            (
                stack("ffn_gate_exps.weight"),
                stack("ffn_up_exps.weight"),
                stack("ffn_gate_exps.bias"),
                stack("ffn_up_exps.bias"),
            )
        };
        let (dw, db) = (stack("ffn_down_exps.weight"), stack("ffn_down_exps.bias"));
        for e in 0..TINY.experts {
            let gu = get(&names::expert(l, e, "gate_up.weight")).to_f32_vec();
            let gub = get(&names::expert(l, e, "gate_up.bias")).to_f32_vec();
            for j in 0..i {
                let at = (e * i + j) * h;
                same(
                    &gu[2 * j * h..(2 * j + 1) * h],
                    &gw[at..at + h],
                    &format!("L{l} e{e} gate row {j}"),
                );
                same(
                    &gu[(2 * j + 1) * h..(2 * j + 2) * h],
                    &uw[at..at + h],
                    &format!("L{l} e{e} up row {j}"),
                );
                assert_eq!((gub[2 * j], gub[2 * j + 1]), (gb[e * i + j], ub[e * i + j]));
            }
            same(
                &get(&names::expert(l, e, "down.weight")).to_f32_vec(),
                &dw[e * h * i..(e + 1) * h * i],
                "down",
            );
            same(
                &get(&names::expert(l, e, "down.bias")).to_f32_vec(),
                &db[e * h..(e + 1) * h],
                "down bias",
            );
        }
    }
    let weights =
        ModelWeights::assemble(raw.config, raw.tensors, &path.display().to_string()).unwrap();
    assert_eq!(weights.layers[3].experts.len(), 3);
}

/// Byte offset of tensor `name`'s info (the u32 n_dims right after its name) in the header.
fn info_at(bytes: &[u8], name: &str) -> usize {
    let mut key = (name.len() as u64).to_le_bytes().to_vec();
    key.extend_from_slice(name.as_bytes());
    bytes
        .windows(key.len())
        .position(|w| w == key.as_slice())
        .unwrap()
        + key.len()
}

/// Overwrites tensor `name`'s type id (`field` 0) or offset (`field` 1) in a written file.
fn patch_info(path: &Path, name: &str, field: usize, value: u64) {
    let mut b = std::fs::read(path).unwrap();
    let at = info_at(&b, name);
    let dims = u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) as usize;
    let ty_at = at + 4 + 8 * dims;
    match field {
        0 => b[ty_at..ty_at + 4].copy_from_slice(&(value as u32).to_le_bytes()),
        _ => b[ty_at + 4..ty_at + 12].copy_from_slice(&value.to_le_bytes()),
    }
    std::fs::write(path, b).unwrap();
}

fn err_of(path: &Path) -> String {
    read_checkpoint(path).unwrap_err().to_string()
}

fn written(test: &str, meta: Vec<(String, Value)>, tensors: &[TensorData]) -> std::path::PathBuf {
    let path = scratch_dir(test).join("m.gguf");
    write_gguf(&path, &meta, tensors);
    path
}

#[test]
fn bad_magic_and_version() {
    let path = written("magic", tiny_metadata(), &tiny_tensors(2));
    let mut b = std::fs::read(&path).unwrap();
    b[0] = b'X';
    std::fs::write(&path, &b).unwrap();
    let e = err_of(&path);
    assert!(e.contains("m.gguf") && e.contains("not a GGUF file"), "{e}");
    b[0] = b'G';
    b[4] = 1;
    std::fs::write(&path, &b).unwrap();
    let e = err_of(&path);
    assert!(e.contains("GGUF version 1 is not supported"), "{e}");
}

#[test]
fn truncated_header_and_data() {
    let tensors = tiny_tensors(3);
    let path = written("trunc", tiny_metadata(), &tensors);
    let full = std::fs::read(&path).unwrap();
    let header_len = GgufFile::open(&path).unwrap().data_start;
    let last_info = info_at(&full, &tensors.last().unwrap().0.name);
    assert!(last_info < header_len);
    for cut in [3, 10, 30, 200, header_len / 2, last_info + 6] {
        std::fs::write(&path, &full[..cut]).unwrap();
        let e = err_of(&path);
        assert!(e.contains("truncated"), "cut {cut}: {e}");
    }
    std::fs::write(&path, &full[..full.len() - 100]).unwrap();
    let e = err_of(&path);
    let last = &tensors.last().unwrap().0.name;
    assert!(
        e.contains(last.as_str()) && e.contains("out of bounds"),
        "{e}"
    );
}

#[test]
fn wrong_architecture_is_named() {
    let mut meta = tiny_metadata();
    meta[0].1 = Value::String("llama".into());
    let e = err_of(&written("arch", meta, &tiny_tensors(4)));
    assert!(
        e.contains("general.architecture") && e.contains("\"llama\"") && e.contains("gpt-oss"),
        "{e}"
    );
}

#[test]
fn each_missing_key_is_named() {
    let tensors = tiny_tensors(5);
    for key in [
        "block_count",
        "embedding_length",
        "expert_count",
        "expert_used_count",
        "attention.head_count",
        "attention.head_count_kv",
        "attention.key_length",
        "attention.sliding_window",
        "rope.freq_base",
        "context_length",
        "attention.layer_norm_rms_epsilon",
        "rope.scaling.factor",
        "rope.scaling.original_context_length",
        "expert_feed_forward_length",
    ] {
        let full = format!("gpt-oss.{key}");
        let mut meta = tiny_metadata();
        meta.retain(|(k, _)| {
            *k != full && !(key.starts_with("expert_feed") && k == "gpt-oss.feed_forward_length")
        });
        let e = err_of(&written("missing", meta, &tensors));
        assert!(
            e.contains(&format!("`{full}`")) && e.contains("missing"),
            "{key}: {e}"
        );
    }
}

#[test]
fn unknown_types_and_names_are_all_reported() {
    let mut tensors = tiny_tensors(6);
    let mut extra = tensors[1].clone();
    extra.0.name = "blk.0.rope_freqs.weight".into();
    tensors.push(extra.clone());
    extra.0.name = "mystery.weight".into();
    tensors.push(extra);
    let path = written("unknown", tiny_metadata(), &tensors);
    patch_info(&path, "blk.2.attn_q.bias", 0, 16);
    patch_info(&path, "blk.3.attn_k.bias", 0, 99);
    let e = err_of(&path);
    for want in [
        "blk.2.attn_q.bias",
        "IQ2_XXS (id 16)",
        "blk.3.attn_k.bias",
        "unknown ggml type id 99",
        "blk.0.rope_freqs.weight: unknown tensor name",
        "mystery.weight: unknown tensor name",
    ] {
        assert!(e.contains(want), "missing {want:?} in {e}");
    }
}

#[test]
fn misaligned_and_out_of_bounds_offsets() {
    let path = written("offsets", tiny_metadata(), &tiny_tensors(7));
    patch_info(&path, "blk.1.attn_norm.weight", 1, 32); // alignment is 64
    let e = err_of(&path);
    assert!(
        e.contains("blk.1.attn_norm.weight") && e.contains("not a multiple of the alignment 64"),
        "{e}"
    );
    patch_info(&path, "blk.1.attn_norm.weight", 1, 1 << 40);
    let e = err_of(&path);
    assert!(
        e.contains("blk.1.attn_norm.weight") && e.contains("out of bounds"),
        "{e}"
    );
}

#[test]
fn alignment_default_and_custom() {
    let tensors = tiny_tensors(8);
    for align in [None, Some(32u32), Some(256)] {
        let mut meta = tiny_metadata();
        meta.retain(|(k, _)| k != "general.alignment");
        if let Some(a) = align {
            meta.push(("general.alignment".into(), Value::U32(a)));
        }
        let path = written("align", meta, &tensors);
        let f = GgufFile::open(&path).unwrap();
        let a = align.unwrap_or(32) as usize;
        assert_eq!(f.alignment, a);
        assert_eq!(f.data_start % a, 0);
        assert!(f
            .tensors
            .iter()
            .all(|t| (t.offset as usize).is_multiple_of(a)));
        let raw = read_checkpoint(&path).unwrap();
        assert_eq!(
            raw.tensors.tensors["norm"].0.to_f32_vec(),
            decode(find(&tensors, "output_norm.weight"))
        );
    }
    for bad in [0, 48] {
        let mut meta = tiny_metadata();
        meta[1].1 = Value::U32(bad);
        let e = err_of(&written("align-bad", meta, &tensors));
        assert!(
            e.contains("general.alignment") && e.contains("power of two"),
            "{e}"
        );
    }
}

#[test]
fn metadata_value_types_round_trip() {
    let mut meta = tiny_metadata();
    let extra = vec![
        ("x.u8", Value::U8(7)),
        ("x.i8", Value::I8(-7)),
        ("x.u16", Value::U16(700)),
        ("x.i16", Value::I16(-700)),
        ("x.i32", Value::I32(-70000)),
        ("x.bool", Value::Bool(true)),
        ("x.u64", Value::U64(1 << 40)),
        ("x.i64", Value::I64(-(1 << 40))),
        ("x.f64", Value::F64(0.1)),
        (
            "x.nested",
            Value::Array(Array::Array(vec![Array::U32(vec![1]), Array::U32(vec![])])),
        ),
    ];
    meta.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
    let f = GgufFile::open(&written("values", meta, &tiny_tensors(9))).unwrap();
    for (k, v) in &extra {
        assert_eq!(f.get(k), Some(v), "{k}");
    }
    assert_eq!(f.version, 3);
}

#[test]
fn duplicate_key_and_half_gate_up_are_errors() {
    let mut meta = tiny_metadata();
    meta.push(("gpt-oss.block_count".into(), Value::U32(6)));
    let e = err_of(&written("dupkey", meta, &tiny_tensors(10)));
    assert!(e.contains("`gpt-oss.block_count` appears twice"), "{e}");

    let mut tensors = tiny_tensors(10);
    tensors.retain(|(p, _)| p.name != "blk.0.ffn_up_exps.weight");
    let e = err_of(&written("halfgu", tiny_metadata(), &tensors));
    assert!(
        e.contains("blk.0.ffn_gate_exps.weight") && e.contains("only one of"),
        "{e}"
    );
}

#[test]
fn split_files_read_as_one_model() {
    let tensors = tiny_tensors(11);
    let dir = scratch_dir("split");
    let (a, b) = tensors.split_at(40);
    for (no, part) in [(0u16, a), (1, b)] {
        let mut meta = if no == 0 { tiny_metadata() } else { vec![] };
        meta.push(("split.no".into(), Value::U16(no)));
        meta.push(("split.count".into(), Value::U16(2)));
        meta.push((
            "split.tensors.count".into(),
            Value::I32(tensors.len() as i32),
        ));
        write_gguf(
            &dir.join(format!("tiny-{:05}-of-00002.gguf", no + 1)),
            &meta,
            part,
        );
    }
    for start in ["tiny-00001-of-00002.gguf", "tiny-00002-of-00002.gguf"] {
        let raw = read_checkpoint(&dir.join(start)).unwrap();
        assert_eq!(raw.source_tensors.len(), tensors.len());
        let got = raw.tensors.tensors["layers.5.o.bias"].0.to_f32_vec();
        assert_eq!(got, decode(find(&tensors, "blk.5.attn_output.bias")));
    }
    std::fs::remove_file(dir.join("tiny-00002-of-00002.gguf")).unwrap();
    let e = err_of(&dir.join("tiny-00001-of-00002.gguf"));
    assert!(e.contains("tiny-00002-of-00002.gguf"), "{e}");
}

#[test]
fn crate_load_detects_gguf_and_assembles() {
    let path = written("load", tiny_metadata(), &tiny_tensors(12));
    let ckpt = gptoss_formats::load(&path).unwrap();
    assert_eq!(ckpt.layout, gptoss_formats::Layout::Gguf);
    assert_eq!(ckpt.weights.layers.len(), TINY.layers);
    assert!(ckpt.vocab.is_some() && !ckpt.notes.is_empty());
}

#[test]
#[ignore = "hand check: GGUF_HAND_FILE=<any gpt-oss .gguf> prints what the reader makes of it"]
fn hand_read_any_file() {
    let path = std::path::PathBuf::from(std::env::var("GGUF_HAND_FILE").unwrap());
    let f = GgufFile::open(&path).unwrap();
    for (k, v) in &f.metadata {
        let shown = match v {
            Value::Array(items) => format!(
                "array<{}> x {}: {:?}",
                items.elem_type(),
                items.len(),
                items.values().take(4).collect::<Vec<_>>()
            ),
            Value::String(s) => format!("{:?}", &s[..s.len().min(60)]),
            other => format!("{other:?}"),
        };
        println!("{k} = {shown}");
    }
    let ckpt = gptoss_formats::load(&path).unwrap();
    println!("{:#?}\nnotes: {:#?}", ckpt.weights.config, ckpt.notes);
    for s in &ckpt.source_tensors {
        println!("{} {} {:?}", s.name, s.dtype, s.shape);
    }
}
