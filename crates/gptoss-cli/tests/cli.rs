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

/// `--dense q8_0` quantizes the dense weights exactly as llama.cpp's converter does: the HF MXFP4 fixture
/// with it gives bit for bit the logits of the fixture llama.cpp's own converter wrote with `--outtype
/// q8_0` (dense Q8_0, MXFP4 experts, f32 router), on the exact CPU reference.
#[test]
fn dense_q8_0_equals_llama_cpp_q8_0_gguf() {
    let dir = std::env::temp_dir().join(format!("gptoss-dense-q8-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let logits = |model: &Path, extra: &[&str], name: &str| -> Vec<u8> {
        let npy = dir.join(name);
        let mut args = vec![
            "logits",
            "--model",
            model.to_str().unwrap(),
            "--tokens",
            "1,2,3,4,5,6,7,8,9,10",
            "--all-positions",
            "--device",
            "cpu",
            "--exact",
            "--npy",
            npy.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let out = gptoss(&args);
        assert!(out.status.success(), "{}", stderr(&out));
        std::fs::read(&npy).unwrap()
    };
    let ours = logits(&fixture("hf-mxfp4"), &["--dense", "q8_0"], "ours.npy");
    let llama = logits(&fixture("gguf/tiny-llamacpp-q8_0.gguf"), &[], "llama.npy");
    let stored = logits(&fixture("hf-mxfp4"), &[], "stored.npy");
    assert_eq!(ours, llama);
    assert_ne!(ours, stored);
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

/// The numbers of run's stats line, `[N prompt tokens in Xs (P tok/s); M generated, D tok/s decode;
/// stop: R]` with `; drafted X, accepted Y (Z%)` when speculating.
fn stats_line(stderr: &str) -> (usize, usize, Option<(usize, usize)>) {
    let line = stderr
        .lines()
        .find(|l| l.starts_with('[') && l.contains(" prompt tokens in "))
        .unwrap_or_else(|| panic!("no stats line in {stderr}"));
    let num = |s: &str| s.trim().parse::<usize>().unwrap();
    let prompt = num(line[1..].split(' ').next().unwrap());
    let generated = num(line.split("; ").nth(1).unwrap().split(' ').next().unwrap());
    assert!(line.contains(" tok/s decode; stop: "), "{line}");
    let drafts = line.split("; drafted ").nth(1).map(|rest| {
        let (d, rest) = rest.split_once(", accepted ").unwrap();
        let (a, pct) = rest.split_once(" (").unwrap();
        assert!(pct.ends_with("%)]"), "{line}");
        (num(d), num(a))
    });
    (prompt, generated, drafts)
}

#[test]
fn run_speculative_gives_the_same_tokens_and_reports_drafts() {
    let r = reference("hf-mxfp4");
    let model = fixture("hf-mxfp4");
    let prompt = csv(&ids(&r["prompt"]));
    let run = |extra: &[&str]| {
        let mut args = vec![
            "run",
            "--model",
            model.to_str().unwrap(),
            "--tokens",
            &prompt,
            "-n",
            "48",
            "--json",
        ];
        args.extend_from_slice(extra);
        let out = gptoss(&args);
        assert!(out.status.success(), "{extra:?}: {}", stderr(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        (ids(&v["tokens"]), stats_line(&stderr(&out)))
    };
    for sampling in [&[][..], &["--temperature", "0.7", "--seed", "9"]] {
        let (plain, (p, g, drafts)) = run(sampling);
        assert_eq!((p, g, drafts), (24, 48, None));
        let spec_args = [
            sampling,
            &["--speculative", "ngram", "--prompt-lookup-min", "1"],
        ]
        .concat();
        let (spec, (p, g, drafts)) = run(&spec_args);
        assert_eq!(spec, plain, "{sampling:?}");
        let (drafted, accepted) = drafts.unwrap();
        assert_eq!((p, g), (24, 48));
        assert!(drafted > 0 && accepted <= drafted, "{drafted} {accepted}");
    }
    // The transformers reference still holds with drafts.
    let (spec, _) = run(&["--speculative", "ngram", "--draft-tokens", "7"]);
    assert_eq!(spec[..16], ids(&r["greedy"]));
}

#[test]
fn speculative_flags_are_checked() {
    let model = fixture("hf-mxfp4");
    let m = model.to_str().unwrap();
    let base = ["run", "--model", m, "--tokens", "1,2,3"];
    let cases: [(&[&str], &str); 4] = [
        (&["--draft-tokens", "4"], "--speculative"),
        (
            &["--speculative", "ngram", "--draft-tokens", "0"],
            "draft tokens must be at least 1",
        ),
        (
            &[
                "--speculative",
                "ngram",
                "--prompt-lookup-min",
                "3",
                "--prompt-lookup-max",
                "2",
            ],
            "min 3, max 2",
        ),
        (&["--speculative", "eagle"], "ngram"),
    ];
    for (extra, needle) in cases {
        let out = gptoss(&[&base[..], extra].concat());
        assert!(!out.status.success(), "{extra:?} succeeded");
        assert!(stderr(&out).contains(needle), "{extra:?}: {}", stderr(&out));
    }
    let out = gptoss(&[&base[..], &["-n", "0"]].concat());
    assert!(
        stderr(&out).contains("-n/--max-tokens must be at least 1"),
        "{}",
        stderr(&out)
    );
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
    let cases: [(&[&str], &str); 9] = [
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
        (
            &[
                "run",
                "--model",
                m,
                "--tokens",
                "1",
                "--device",
                "cpu",
                "--cpu-moe",
            ],
            "with --device cpu everything runs on the host",
        ),
        (
            &[
                "run",
                "--model",
                m,
                "--tokens",
                "1",
                "--cpu-moe",
                "--n-cpu-moe",
                "2",
            ],
            "cannot be used with",
        ),
        (
            &[
                "run",
                "--model",
                m,
                "--tokens",
                "1",
                "--expert-cache",
                "lots",
            ],
            "or `auto` or `off`",
        ),
        (
            &[
                "run",
                "--model",
                m,
                "--tokens",
                "1",
                "--device",
                "cpu",
                "--expert-cache",
                "1GiB",
            ],
            "--expert-cache SIZE holds host experts on the GPU",
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
