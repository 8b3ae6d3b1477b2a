//! The codec goldens of tests/fixtures/codecs (bitsandbytes' own dequantize_4bit, transformers'
//! convert_moe_packed_tensors), stored as safetensors the way each library saves them and read back
//! through the safetensors reader: every decoded value must equal the golden exactly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod st_util;

use std::path::PathBuf;

use serde_json::Value;
use st_util::*;

fn golden(name: &str) -> Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/codecs")
        .join(name);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap()
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn usizes(v: &Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect()
}

/// Writes one golden bnb case as the 4-bit weight of expert 0 and returns its decoded values.
fn decode_bnb_case(tag: &str, case: &Value) -> (Vec<usize>, Vec<f32>) {
    let dir = temp_dir(tag);
    write_config(&dir, &hf_config());
    let w = "model.layers.0.mlp.experts.gate_up_projs.0.weight";
    let packed = hex(case["packed_hex"].as_str().unwrap());
    let mut ts = vec![
        t(w, "U8", &[packed.len(), 1], packed),
        t(
            format!("{w}.quant_map"),
            "F32",
            &[16],
            f32s(&floats(&case["quant_map"])),
        ),
    ];
    if let Some(a8) = case.get("absmax_u8_hex") {
        let a8 = hex(a8.as_str().unwrap());
        ts.push(t(format!("{w}.absmax"), "U8", &[a8.len()], a8));
        let na = floats(&case["nested_absmax"]);
        ts.push(t(
            format!("{w}.nested_absmax"),
            "F32",
            &[na.len()],
            f32s(&na),
        ));
        ts.push(t(
            format!("{w}.nested_quant_map"),
            "F32",
            &[256],
            f32s(&floats(&case["nested_quant_map"])),
        ));
    } else {
        let a = floats(&case["absmax"]);
        ts.push(t(format!("{w}.absmax"), "F32", &[a.len()], f32s(&a)));
    }
    // The exact text bitsandbytes packs into the quant-state tensor.
    let state = case["quant_state_text"]
        .as_str()
        .unwrap()
        .as_bytes()
        .to_vec();
    let key = case["quant_state_key"].as_str().unwrap();
    ts.push(t(format!("{w}.{key}"), "U8", &[state.len()], state));
    write_st(&dir.join("model.safetensors"), &ts);
    let raw = gptoss_formats::read_raw(&dir).unwrap_or_else(|e| panic!("{tag}: {e}"));
    let (tensor, _) = &raw.tensors.tensors["layers.0.experts.0.gate_up.weight"];
    (tensor.shape.clone(), tensor.to_f32_vec())
}

#[test]
fn bitsandbytes_goldens_decode_exactly() {
    for file in [
        "bnb_nf4.json",
        "bnb_nf4_dq.json",
        "bnb_fp4.json",
        "bnb_fp4_dq.json",
    ] {
        let g = golden(file);
        let cases = g["cases"].as_array().unwrap();
        assert!(!cases.is_empty(), "{file}");
        for (i, case) in cases.iter().enumerate() {
            let tag = format!("{file}-{i}");
            let (shape, got) = decode_bnb_case(&tag, case);
            assert_eq!(shape, usizes(&case["shape"]), "{tag}");
            let want: Vec<f32> = hex(case["values_bf16_hex"].as_str().unwrap())
                .chunks(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect();
            assert_eq!(got.len(), want.len(), "{tag}");
            // Equal as numbers: bitsandbytes' native FP4 decode yields -0.0 for code 8 although the
            // stored quant_map (which we use, spec §2c) holds +0.0; every nonzero value is bit-exact.
            for (j, (a, b)) in got.iter().zip(&want).enumerate() {
                assert!(a == b, "{tag} [{j}]: got {a}, bitsandbytes {b}");
            }
        }
    }
}

#[test]
fn hf_mxfp4_golden_decodes_exactly() {
    let g = golden("hf_mxfp4.json");
    let (bs, ss) = (usizes(&g["blocks_shape"]), usizes(&g["scales_shape"]));
    let (n_exp, rows, groups) = (bs[0], bs[1], bs[2]);
    let scales: Vec<u8> = usizes(&g["scales"]).iter().map(|&s| s as u8).collect();
    let dir = temp_dir("codec-mxfp4");
    // The golden stacks its own expert count; the reader holds stacks to the config's.
    let mut cfg = hf_config();
    cfg["num_local_experts"] = n_exp.into();
    cfg["num_experts_per_tok"] = n_exp.min(2).into();
    write_config(&dir, &cfg);
    let pre = "model.layers.0.mlp.experts.gate_up_proj";
    let ts = vec![
        t(
            format!("{pre}_blocks"),
            "U8",
            &bs,
            hex(g["blocks_hex"].as_str().unwrap()),
        ),
        t(format!("{pre}_scales"), "U8", &ss, scales),
    ];
    write_st(&dir.join("model.safetensors"), &ts);
    let raw = gptoss_formats::read_raw(&dir).unwrap();
    // transformers returns [E, in, out]; ours is [out, in] per expert.
    let out = g["output"].as_array().unwrap();
    assert_eq!(out.len(), n_exp);
    for (e, want_e) in out.iter().enumerate() {
        let (tensor, _) = &raw.tensors.tensors[&format!("layers.0.experts.{e}.gate_up.weight")];
        assert_eq!(tensor.shape, vec![rows, groups * 32]);
        let got = tensor.to_f32_vec();
        for (col, row_vals) in want_e.as_array().unwrap().iter().enumerate() {
            for (row, want) in floats(row_vals).iter().enumerate() {
                let a = got[row * groups * 32 + col];
                assert_eq!(
                    a.to_bits(),
                    want.to_bits(),
                    "expert {e} [{row}, {col}]: got {a}, transformers {want}"
                );
            }
        }
    }
}
