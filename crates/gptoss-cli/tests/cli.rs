//! End-to-end checks of the `gptoss` binary on the committed tiny fixtures: the JSON outputs against
//! transformers' references, and every user-facing error path naming its culprit.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/tiny")
        .join(rel)
}

fn gptoss(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gptoss"))
        .args(args)
        .output()
        .expect("run gptoss")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn reference(dir: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(dir).join("reference.json")).unwrap())
        .unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn csv(ids: &[u32]) -> String {
    ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

#[test]
fn logits_json_matches_transformers() {
    let r = reference("hf-mxfp4");
    let prompt = ids(&r["prompt"]);
    let model = fixture("hf-mxfp4");
    let out = gptoss(&[
        "logits",
        "--model",
        model.to_str().unwrap(),
        "--tokens",
        &csv(&prompt),
        "--all-positions",
        "--json",
        "--exact",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ids(&got["tokens"]), prompt);
    let rows = got["logits"].as_array().unwrap();
    assert_eq!(rows.len(), prompt.len());
    for (row, want) in rows.iter().zip(r["logits"].as_array().unwrap()) {
        let (row, want) = (row.as_array().unwrap(), want.as_array().unwrap());
        assert_eq!(row.len(), want.len());
        let scale = want
            .iter()
            .map(|x| x.as_f64().unwrap().abs())
            .fold(0.0, f64::max);
        let diff = row
            .iter()
            .zip(want)
            .map(|(a, b)| (a.as_f64().unwrap() - b.as_f64().unwrap()).abs())
            .fold(0.0, f64::max);
        assert!(
            diff <= 1e-3 * scale,
            "max |Δ| {diff} vs max |logit| {scale}"
        );
    }
    // Without --all-positions only the last row comes back.
    let out = gptoss(&[
        "logits",
        "--model",
        model.to_str().unwrap(),
        "--tokens",
        &csv(&prompt),
        "--json",
    ]);
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["logits"].as_array().unwrap().len(), 1);
}

/// `--npy` writes the same logits as the JSON output, as a float32 array numpy can read; `--dump-layers`
/// writes each layer's nodes at the positions asked for, and its last `layer_out` row leads to those logits.
#[test]
fn logits_npy_and_layer_dump() {
    let r = reference("hf-mxfp4");
    let prompt = csv(&ids(&r["prompt"]));
    let model = fixture("hf-mxfp4");
    let model = model.to_str().unwrap();
    let dir = std::env::temp_dir().join(format!("gptoss-npy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (npy, dump) = (dir.join("l.npy"), dir.join("d.json"));
    let json = gptoss(&[
        "logits",
        "--model",
        model,
        "--tokens",
        &prompt,
        "--all-positions",
    ]);
    let out = gptoss(&[
        "logits",
        "--model",
        model,
        "--tokens",
        &prompt,
        "--all-positions",
        "--npy",
        npy.to_str().unwrap(),
        "--dump-layers",
        "0,2",
        "--dump-out",
        dump.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(out.stdout.is_empty());
    let bytes = std::fs::read(&npy).unwrap();
    assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    assert_eq!((10 + header_len) % 64, 0);
    let header = std::str::from_utf8(&bytes[10..10 + header_len]).unwrap();
    let rows = r["prompt"].as_array().unwrap().len();
    assert!(
        header.contains(&format!("'shape': ({rows}, 512)")),
        "{header}"
    );
    let values: Vec<f32> = bytes[10 + header_len..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let want: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let want: Vec<f32> = want["logits"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
        })
        .collect();
    assert_eq!(values, want);
    let dump: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&dump).unwrap()).unwrap();
    assert_eq!(dump["device"], "cpu");
    assert_eq!(dump["positions"], serde_json::json!([0, 2]));
    let nodes = dump["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 2 + 3 * 15, "tiny has 3 layers of 15 nodes");
    assert!(nodes
        .iter()
        .all(|n| n["rows"].as_array().unwrap().len() == 2));
    let bad = gptoss(&[
        "logits",
        "--model",
        model,
        "--tokens",
        "1,2",
        "--dump-layers",
        "5",
        "--dump-out",
        "x.json",
    ]);
    assert!(
        stderr(&bad).contains("position 5 is beyond the 2 tokens"),
        "{}",
        stderr(&bad)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn run_json_greedy_matches_transformers() {
    for dir in ["hf-mxfp4", "split-weights"] {
        let r = reference(dir);
        let model = fixture(dir);
        let out = gptoss(&[
            "run",
            "--model",
            model.to_str().unwrap(),
            "--tokens",
            &csv(&ids(&r["prompt"])),
            "-n",
            "16",
            "--json",
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(ids(&got["tokens"]), ids(&r["greedy"]), "{dir}");
        assert!(got["text"].is_string());
    }
}

#[test]
fn run_chat_prompt_streams_text() {
    let model = fixture("hf-mxfp4");
    let out = gptoss(&[
        "run",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "Hello",
        "-n",
        "4",
        "--temperature",
        "0.8",
        "--seed",
        "3",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("4 generated"), "{}", stderr(&out));
}

#[test]
fn inspect_reports_layout_and_types() {
    let out = gptoss(&["inspect", fixture("hf-mxfp4").to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("HfMxfp4")
            && text.contains("mxfp4/32")
            && text.contains("3 layers (2 sliding window 8, 1 full)"),
        "{text}"
    );
    let out = gptoss(&["inspect", fixture("bnb-nf4-dq").to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["layout"], "Bnb4bit");
    assert!(v["weights_bytes"].as_u64().unwrap() > 0);
}

#[test]
fn cuda_device_is_a_clear_error() {
    let out = gptoss(&[
        "run",
        "--model",
        fixture("hf-mxfp4").to_str().unwrap(),
        "--tokens",
        "1,2",
        "--device",
        "cuda",
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--device cuda"), "{}", stderr(&out));
}

#[test]
fn bad_inputs_name_the_culprit() {
    let model = fixture("hf-mxfp4");
    let m = model.to_str().unwrap();
    let cases: [(&[&str], &str); 5] = [
        (
            &["run", "--model", "/no/such/model", "--tokens", "1"],
            "/no/such/model",
        ),
        (
            &["run", "--model", m, "--tokens", "1,x,3"],
            "`x` is not a token id",
        ),
        (
            &["logits", "--model", m, "--tokens", "1,999999"],
            "token id 999999 is outside the vocabulary of 512",
        ),
        (
            &["run", "--model", m, "--tokens", "1", "--top-p", "0"],
            "--top-p must be in (0, 1]",
        ),
        (
            &["run", "--model", m, "--tokens", "1", "--temperature", "-1"],
            "--temperature must be",
        ),
    ];
    for (args, needle) in cases {
        let out = gptoss(args);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
        assert!(
            !stderr(&out).contains("panicked"),
            "{args:?} panicked: {}",
            stderr(&out)
        );
    }
}

#[test]
fn unknown_tensor_is_listed_by_name() {
    let dir = std::env::temp_dir().join(format!("gptoss-cli-unknown-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let src = fixture("original");
    for entry in std::fs::read_dir(&src).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
    }
    // Add a stray tensor to a copy of the checkpoint by rewriting its safetensors header.
    let st = dir.join("model.safetensors");
    let bytes = std::fs::read(&st).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data_len = bytes.len() - 8 - n;
    header["block.0.mlp.experts.down_proj.weights.0.lora_A"] =
        serde_json::json!({"dtype": "F32", "shape": [1], "data_offsets": [data_len, data_len + 4]});
    let mut text = serde_json::to_vec(&header).unwrap();
    while !text.len().is_multiple_of(8) {
        text.push(b' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&text);
    out.extend_from_slice(&bytes[8 + n..]);
    out.extend_from_slice(&[0; 4]);
    std::fs::write(&st, out).unwrap();
    let o = gptoss(&["inspect", dir.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("block.0.mlp.experts.down_proj.weights.0.lora_A"),
        "{}",
        stderr(&o)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
