//! bitsandbytes 4-bit checkpoints (spec §2c) written by hand: NF4/FP4, with and without double
//! quantization, packed and unpacked quant states, 4-bit attention, both router names, and split
//! gate/up 4-bit experts interleaved. Expected values follow bitsandbytes' dequantize_4bit formula.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod st_util;

use std::collections::BTreeMap;

use gptoss_formats::{Layout, Storage};
use half::bf16;
use serde_json::json;
use st_util::*;

/// bitsandbytes' NF4 code book as Python doubles; the file stores them as f32.
const NF4_F64: [f64; 16] = [
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
];

fn fp4_map() -> [f32; 16] {
    let raw = [
        0.0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0, -0.0, -0.0625, -8.0, -12.0, -4.0, -6.0, -2.0,
        -3.0,
    ];
    raw.map(|x: f32| x / 12.0)
}

#[derive(Clone, Copy)]
struct Opts {
    fp4: bool,
    double: bool,
    unpacked: bool,
}

const NF4_DQ: Opts = Opts {
    fp4: false,
    double: true,
    unpacked: false,
};

/// A 4-bit Linear weight `prefix.weight` of logical `[out, inp]`: its tensors and bnb's decoded values.
fn bnb_weight(rng: &mut Rng, prefix: &str, out: usize, inp: usize, o: Opts) -> (Vec<T>, Vec<f32>) {
    let n = out * inp;
    let nb = n.div_ceil(64);
    let mut codes: Vec<u8> = (0..n).map(|_| (rng.next() % 16) as u8).collect();
    codes[0] = 0;
    codes[1] = 15;
    let packed: Vec<u8> = codes
        .chunks(2)
        .map(|c| (c[0] << 4) | c.get(1).copied().unwrap_or(0))
        .collect();
    let qmap = if o.fp4 {
        fp4_map()
    } else {
        NF4_F64.map(|x| x as f32)
    };
    let w = format!("{prefix}.weight");
    let mut ts = vec![
        t(&w, "U8", &[n.div_ceil(2), 1], packed),
        t(format!("{w}.quant_map"), "F32", &[16], f32s(&qmap)),
    ];
    let qt = if o.fp4 { "fp4" } else { "nf4" };
    let mut state =
        json!({"quant_type": qt, "blocksize": 64, "dtype": "bfloat16", "shape": [out, inp]});
    let absmax: Vec<f32> = if o.double {
        let (nbs, offset) = (16, 0.0371_f64);
        let a8 = rng.bytes(nb);
        let nqm: Vec<f32> = (0..256).map(|_| rng.val()).collect();
        let nabs: Vec<f32> = (0..nb.div_ceil(nbs))
            .map(|_| 0.5 + rng.val().abs())
            .collect();
        ts.push(t(format!("{w}.absmax"), "U8", &[nb], a8.clone()));
        ts.push(t(
            format!("{w}.nested_absmax"),
            "F32",
            &[nabs.len()],
            f32s(&nabs),
        ));
        ts.push(t(
            format!("{w}.nested_quant_map"),
            "F32",
            &[256],
            f32s(&nqm),
        ));
        let s = state.as_object_mut().unwrap();
        s.insert("nested_blocksize".into(), json!(nbs));
        s.insert("nested_dtype".into(), json!("float32"));
        s.insert("nested_offset".into(), json!(offset));
        (0..nb)
            .map(|b| nqm[a8[b] as usize] * nabs[b / nbs] + offset as f32)
            .collect()
    } else {
        let mut a: Vec<f32> = (0..nb).map(|_| 0.25 + rng.val().abs()).collect();
        a[0] = 0.5;
        ts.push(t(format!("{w}.absmax"), "F32", &[nb], f32s(&a)));
        a
    };
    if o.unpacked {
        ts.push(t(
            format!("{w}.quant_type"),
            "U8",
            &[2 + qt.len()],
            format!("\"{qt}\"").into_bytes(),
        ));
        ts.push(t(
            format!("{w}.blocksize"),
            "I64",
            &[],
            64i64.to_le_bytes().to_vec(),
        ));
        ts.push(t(format!("{w}.dtype"), "U8", &[8], b"bfloat16".to_vec()));
        let shape: Vec<u8> = [out as i64, inp as i64]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        ts.push(t(format!("{w}.shape"), "I64", &[2], shape));
        assert!(!o.double, "the unpacked test is single-quantized");
    } else {
        let bytes = state.to_string().into_bytes();
        ts.push(t(
            format!("{w}.quant_state.bitsandbytes__{qt}"),
            "U8",
            &[bytes.len()],
            bytes,
        ));
    }
    let vals = (0..n)
        .map(|i| bf16::from_f32(qmap[codes[i] as usize] * absmax[i / 64]).to_f32())
        .collect();
    (ts, vals)
}

/// Tiny model with 4-bit experts (`gate_up_projs.{e}`) and layer-0 q_proj; router under `router.linear`
/// in layer 0. Returns the truth with the 4-bit tensors' bnb-decoded values.
fn write_bnb_model(dir: &std::path::Path, o: Opts) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let tiny = Tiny::new(11);
    let mut truth = tiny.truth();
    let mut rng = Rng::new(99);
    write_config(dir, &hf_config());
    let mut ts: Vec<T> = tiny
        .hf_plain()
        .into_iter()
        .filter(|x| x.name != "model.layers.0.self_attn.q_proj.weight")
        .collect();
    for x in ts
        .iter_mut()
        .filter(|x| x.name.starts_with("model.layers.0.mlp.router."))
    {
        x.name = x.name.replace("router.", "router.linear.");
    }
    let (q, qv) = bnb_weight(&mut rng, "model.layers.0.self_attn.q_proj", Q, H, o);
    ts.extend(q);
    truth.insert("layers.0.q.weight".into(), (vec![Q, H], qv));
    for l in 0..L {
        for e in 0..E {
            for (stem, what, rows, cols) in [
                ("gate_up_projs", "gate_up", 2 * I, H),
                ("down_projs", "down", H, I),
            ] {
                let pre = format!("model.layers.{l}.mlp.experts.{stem}.{e}");
                let (w, wv) = bnb_weight(&mut rng, &pre, rows, cols, o);
                ts.extend(w);
                let b = truth[&format!("layers.{l}.experts.{e}.{what}.bias")]
                    .1
                    .clone();
                ts.push(t(format!("{pre}.bias"), "BF16", &[rows], bf16s(&b)));
                truth.insert(
                    format!("layers.{l}.experts.{e}.{what}.weight"),
                    (vec![rows, cols], wv),
                );
            }
        }
    }
    write_st(&dir.join("model.safetensors"), &ts);
    truth
}

#[test]
fn nf4_double_quant_model_decodes_like_bitsandbytes() {
    let dir = temp_dir("bnb-nf4-dq");
    let truth = write_bnb_model(&dir, NF4_DQ);
    let raw = check_truth(&dir, &truth);
    assert_eq!(raw.layout, Layout::Bnb4bit);
    let (q, origin) = &raw.tensors.tensors["layers.0.q.weight"];
    assert_eq!(q.format.describe(), "lut4/64");
    assert!(origin.contains("q_proj.weight (bnb nf4-dq)"), "{origin}");
    assert!(
        matches!(q.data, Storage::Mapped { .. }),
        "codes stay in the mmap"
    );
    assert!(
        raw.notes.iter().any(|n| n.contains("double-quantized")),
        "{:?}",
        raw.notes
    );
}

#[test]
fn fp4_and_nf4_single_quant_with_hand_checked_nibbles() {
    for (name, o) in [
        (
            "bnb-nf4",
            Opts {
                fp4: false,
                double: false,
                unpacked: false,
            },
        ),
        (
            "bnb-fp4",
            Opts {
                fp4: true,
                double: false,
                unpacked: false,
            },
        ),
        (
            "bnb-nf4-unpacked",
            Opts {
                fp4: false,
                double: false,
                unpacked: true,
            },
        ),
    ] {
        let dir = temp_dir(name);
        let truth = write_bnb_model(&dir, o);
        let raw = check_truth(&dir, &truth);
        // First byte 0x0F, absmax[0] = 0.5: element 0 = table[0] × 0.5, element 1 = table[15] × 0.5.
        let v = raw.tensors.tensors["layers.0.q.weight"].0.to_f32_vec();
        let (lo, hi) = if o.fp4 {
            (0.0, -3.0 / 12.0 * 0.5)
        } else {
            (-0.5, 0.5)
        };
        assert_eq!((v[0], v[1]), (lo, bf16::from_f32(hi).to_f32()), "{name}");
    }
}

#[test]
fn split_gate_up_4bit_experts_are_interleaved() {
    let dir = temp_dir("bnb-split");
    let tiny = Tiny::new(12);
    let mut truth = tiny.truth();
    let mut rng = Rng::new(5);
    write_config(&dir, &hf_config());
    let mut ts = tiny.hf_plain();
    for l in 0..L {
        for e in 0..E {
            let pre = format!("model.layers.{l}.mlp.experts");
            let (g, gv) = bnb_weight(
                &mut rng,
                &format!("{pre}.gate_proj.weights.{e}"),
                I,
                H,
                NF4_DQ,
            );
            let (u, uv) = bnb_weight(
                &mut rng,
                &format!("{pre}.up_proj.weights.{e}"),
                I,
                H,
                NF4_DQ,
            );
            let (d, dv) = bnb_weight(
                &mut rng,
                &format!("{pre}.down_proj.weights.{e}"),
                H,
                I,
                NF4_DQ,
            );
            ts.extend(g.into_iter().chain(u).chain(d));
            let gub = truth[&format!("layers.{l}.experts.{e}.gate_up.bias")]
                .1
                .clone();
            let half =
                |odd: usize| -> Vec<f32> { gub.iter().skip(odd).step_by(2).copied().collect() };
            ts.push(t(
                format!("{pre}.gate_proj.weights.{e}.bias"),
                "BF16",
                &[I],
                bf16s(&half(0)),
            ));
            ts.push(t(
                format!("{pre}.up_proj.weights.{e}.bias"),
                "BF16",
                &[I],
                bf16s(&half(1)),
            ));
            let db = truth[&format!("layers.{l}.experts.{e}.down.bias")]
                .1
                .clone();
            ts.push(t(
                format!("{pre}.down_proj.weights.{e}.bias"),
                "BF16",
                &[H],
                bf16s(&db),
            ));
            let inter: Vec<f32> = gv
                .chunks(H)
                .zip(uv.chunks(H))
                .flat_map(|(a, b)| a.iter().chain(b))
                .copied()
                .collect();
            truth.insert(
                format!("layers.{l}.experts.{e}.gate_up.weight"),
                (vec![2 * I, H], inter),
            );
            truth.insert(
                format!("layers.{l}.experts.{e}.down.weight"),
                (vec![H, I], dv),
            );
        }
    }
    write_st(&dir.join("model.safetensors"), &ts);
    let raw = check_truth(&dir, &truth);
    assert_eq!(raw.layout, Layout::Bnb4bit);
    let w = &raw.tensors.tensors["layers.1.experts.2.gate_up.weight"].0;
    assert_eq!(w.format.describe(), "lut4/64");
}

#[test]
fn bad_quant_state_json_names_the_tensor() {
    let dir = temp_dir("bnb-bad-json");
    write_bnb_model(&dir, NF4_DQ);
    let path = dir.join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    // Corrupt a packed quant state's JSON in place: its opening brace becomes '['.
    let key = br#""blocksize":64"#;
    let inside = bytes
        .windows(key.len())
        .rposition(|w| w == key)
        .expect("a packed quant state");
    let at = bytes[..inside]
        .iter()
        .rposition(|&b| b == b'{')
        .expect("the state's opening brace");
    bytes[at] = b'[';
    std::fs::write(&path, bytes).unwrap();
    let e = err_text(&dir);
    assert!(
        e.contains("quant_state") && e.contains("not valid JSON"),
        "{e}"
    );
    assert!(e.contains("model.safetensors: model.layers."), "{e}");
}

#[test]
fn missing_nested_absmax_is_reported() {
    let dir = temp_dir("bnb-missing-nested");
    let mut rng = Rng::new(3);
    write_config(&dir, &hf_config());
    let (ts, _) = bnb_weight(&mut rng, "model.layers.0.self_attn.q_proj", Q, H, NF4_DQ);
    let ts: Vec<T> = ts
        .into_iter()
        .filter(|x| !x.name.ends_with("nested_absmax"))
        .collect();
    write_st(&dir.join("model.safetensors"), &ts);
    let e = err_text(&dir);
    assert!(
        e.contains("model.layers.0.self_attn.q_proj.weight.nested_absmax: missing"),
        "{e}"
    );
}
