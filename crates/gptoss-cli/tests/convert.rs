//! `gptoss convert` and `gptoss synth` end to end: converted files give the source's logits (within
//! the chosen quantization), HF MXFP4 → GGUF → HF MXFP4 keeps every expert byte, and every failure
//! (existing output, missing or unwritable directory, a full disk) names the path and leaves no
//! partial output behind.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/tiny")
        .join(rel)
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gptoss-cli-convert-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn gptoss(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gptoss"))
        .args(args)
        .output()
        .expect("run gptoss")
}

fn ok(args: &[&str]) -> Output {
    let out = gptoss(args);
    assert!(
        out.status.success(),
        "gptoss {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The fixture's 24-token prompt as `1,2,...`.
fn prompt() -> String {
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("hf-mxfp4/reference.json")).unwrap())
            .unwrap();
    r["prompt"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap().to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn reference_logits() -> Vec<Vec<f64>> {
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("hf-mxfp4/reference.json")).unwrap())
            .unwrap();
    rows(&r["logits"])
}

fn rows(v: &serde_json::Value) -> Vec<Vec<f64>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect()
        })
        .collect()
}

fn logits(model: &Path) -> Vec<Vec<f64>> {
    let out = ok(&[
        "logits",
        "--model",
        s(model),
        "--tokens",
        &prompt(),
        "--all-positions",
        "--device",
        "cpu",
        "--exact",
    ]);
    rows(&serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["logits"])
}

/// Largest |a - b| over all positions, relative to the largest |b|.
fn rel_diff(a: &[Vec<f64>], b: &[Vec<f64>]) -> f64 {
    let scale = b.iter().flatten().fold(0f64, |m, x| m.max(x.abs()));
    let diff = a
        .iter()
        .flatten()
        .zip(b.iter().flatten())
        .fold(0f64, |m, (x, y)| m.max((x - y).abs()));
    diff / scale
}

#[test]
fn split_layout_converts_to_gguf_with_the_same_logits() {
    let dir = scratch("split");
    let want = reference_logits();
    // f32 dense, MXFP4 experts quantized from bf16 values that are exactly MXFP4: lossless.
    let f32_out = dir.join("f32.gguf");
    ok(&[
        "convert",
        s(&fixture("split-weights")),
        s(&f32_out),
        "--type",
        "f32",
    ]);
    let d = rel_diff(&logits(&f32_out), &want);
    assert!(d < 1e-4, "f32: relative max |Δ| {d}");
    // Q8_0 dense (the default): the values llama.cpp's own q8_0 conversion holds, so transformers'
    // logits on those values (the fixture's reference) are matched; the bf16 reference is not.
    let q8 = dir.join("q8.gguf");
    ok(&["convert", s(&fixture("split-weights")), s(&q8)]);
    let r: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("gguf/tiny-llamacpp-q8_0.reference.json")).unwrap(),
    )
    .unwrap();
    let q8_logits = logits(&q8);
    let d = rel_diff(&q8_logits, &rows(&r["logits"]));
    assert!(
        d < 1e-4,
        "q8_0 vs llama.cpp's q8_0 values: relative max |Δ| {d}"
    );
    assert!(
        rel_diff(&q8_logits, &want) > 1e-3,
        "Q8_0 must differ from the bf16 values"
    );
    // Experts kept bf16: lossless too.
    let bf = dir.join("bf16-experts.gguf");
    ok(&[
        "convert",
        s(&fixture("split-weights")),
        s(&bf),
        "--type",
        "bf16",
        "--experts",
        "bf16",
    ]);
    let d = rel_diff(&logits(&bf), &want);
    assert!(d < 1e-4, "bf16 experts: relative max |Δ| {d}");
    // The vocabulary and chat template come from the model dir: `run` can tokenize with the GGUF alone.
    let out = ok(&[
        "run",
        "--model",
        s(&f32_out),
        "--prompt",
        "hello",
        "--raw",
        "-n",
        "4",
        "--json",
        "--device",
        "cpu",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["tokens"].as_array().unwrap().len(), 4);
}

fn safetensors_map(
    dir: &Path,
) -> std::collections::BTreeMap<String, (String, Vec<usize>, Vec<u8>)> {
    let mut out = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "safetensors") {
            let bytes = std::fs::read(&p).unwrap();
            let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
            for (name, view) in st.tensors() {
                out.insert(
                    name,
                    (
                        format!("{:?}", view.dtype()),
                        view.shape().to_vec(),
                        view.data().to_vec(),
                    ),
                );
            }
        }
    }
    out
}

#[test]
fn hf_mxfp4_to_gguf_and_back_keeps_every_expert_byte() {
    let dir = scratch("roundtrip");
    let (gguf, back) = (dir.join("m.gguf"), dir.join("back"));
    ok(&[
        "convert",
        s(&fixture("hf-mxfp4")),
        s(&gguf),
        "--type",
        "bf16",
    ]);
    ok(&[
        "convert",
        s(&gguf),
        s(&back),
        "--to",
        "hf-mxfp4",
        "--shard-bytes",
        "150000",
    ]);
    let (src, got) = (
        safetensors_map(&fixture("hf-mxfp4")),
        safetensors_map(&back),
    );
    assert_eq!(
        src.keys().collect::<Vec<_>>(),
        got.keys().collect::<Vec<_>>()
    );
    let experts = src
        .keys()
        .filter(|k| k.ends_with("_blocks") || k.ends_with("_scales"))
        .count();
    assert_eq!(experts, 12);
    // bf16 dense survives bf16 GGUF exactly too, so every tensor is byte-identical.
    for (name, want) in &src {
        assert!(got[name] == *want, "{name}: dtype/shape/bytes differ");
    }
    let index: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(back.join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(index["weight_map"].as_object().unwrap().len(), 60);
    assert!(
        back.join("model-00003-of-00003.safetensors").is_file(),
        "150 kB shards: 3 of them"
    );
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(back.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["quantization_config"]["quant_method"], "mxfp4");
    // The GGUF's vocabulary comes back as the tokenizer files, tokenizer.json field for field.
    let json = |p: PathBuf| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    };
    assert_eq!(
        json(back.join("tokenizer.json")),
        json(fixture("hf-mxfp4/tokenizer.json"))
    );
    assert_eq!(
        json(back.join("tokenizer_config.json"))["eos_token"],
        "<|return|>"
    );
    assert_eq!(
        json(back.join("special_tokens_map.json"))["pad_token"]["content"],
        "<|endoftext|>"
    );
    // All three load to identical logits.
    let l = logits(&fixture("hf-mxfp4"));
    assert_eq!(logits(&gguf), l);
    assert_eq!(logits(&back), l);
}

#[test]
fn hf_mxfp4_from_a_split_layout_copies_the_tokenizer_files() {
    let dir = scratch("split-hf");
    let out = dir.join("hf");
    ok(&[
        "convert",
        s(&fixture("split-mixtral")),
        s(&out),
        "--to",
        "hf-mxfp4",
    ]);
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        "config.json",
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }
    let d = rel_diff(&logits(&out), &reference_logits());
    assert!(d < 1e-4, "relative max |Δ| {d}");
    let got = safetensors_map(&out);
    let (dtype, shape, _) = &got["model.layers.0.mlp.experts.gate_up_proj_blocks"];
    assert_eq!(
        (dtype.as_str(), shape.as_slice()),
        ("U8", &[4, 192, 2, 16][..])
    );
}

/// `--type mxfp4` is llama-quantize's MXFP4_MOE mix: Q8_0 dense weights, MXFP4 experts, and the file
/// typed `LLAMA_FTYPE_MOSTLY_MXFP4_MOE` (38), not `MOSTLY_Q8_0` (7) as `--type q8_0` is.
#[test]
fn type_mxfp4_writes_the_mxfp4_moe_file_type() {
    use gptoss_formats::gguf::container::{GgufFile, Value};
    let dir = scratch("file-type");
    for (ty, want) in [("mxfp4", 38), ("q8_0", 7)] {
        let out = dir.join(format!("{ty}.gguf"));
        ok(&[
            "convert",
            s(&fixture("split-weights")),
            s(&out),
            "--type",
            ty,
        ]);
        let f = GgufFile::open(&out).unwrap();
        assert_eq!(f.get("general.file_type"), Some(&Value::U32(want)), "{ty}");
        let q = f
            .tensors
            .iter()
            .find(|t| t.name == "blk.0.attn_q.weight")
            .unwrap();
        assert_eq!(q.type_id, 8, "{ty}: attn_q is Q8_0");
    }
}

#[test]
fn dry_run_prints_the_plan_and_writes_nothing() {
    let dir = scratch("dry");
    let out = dir.join("x.gguf");
    let o = ok(&["convert", s(&fixture("bnb-nf4-dq")), s(&out), "--dry-run"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("blk.*.ffn_gate_exps.weight"), "{text}");
    assert!(
        text.lines().any(|l| l.contains("ffn_down_exps.weight")
            && l.contains("lut4")
            && l.contains("MXFP4")),
        "{text}"
    );
    assert!(!out.exists());
    let o = ok(&[
        "convert",
        s(&fixture("hf-mxfp4")),
        s(&dir.join("hf")),
        "--to",
        "hf-mxfp4",
        "--dry-run",
    ]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("model.layers.*.mlp.experts.down_proj_blocks"),
        "{text}"
    );
    assert!(!dir.join("hf").exists());
    let o = ok(&[
        "inspect",
        s(&fixture("split-weights")),
        "--convert-to",
        "gguf",
    ]);
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(text.contains("conversion plan"), "{text}");
    // split-weights stores gate_up as such: nothing is built; split-gate-up interleaves 24 gate_up
    // tensors of [192, 64] bf16 (24 KiB each).
    assert!(text.contains("no tensor is built in memory"), "{text}");
    let o = ok(&[
        "convert",
        s(&fixture("split-gate-up")),
        s(&out),
        "--dry-run",
    ]);
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        text.contains("memory: 12 tensors are built") && text.contains("24.00 KiB"),
        "{text}"
    );
}

fn fails_with(args: &[&str], needle: &str) {
    let out = gptoss(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains(needle),
        "gptoss {args:?}: expected `{needle}` in: {err}"
    );
}

#[test]
fn failures_name_the_path_and_leave_nothing_behind() {
    let dir = scratch("errors");
    let src = fixture("split-weights");
    let out = dir.join("m.gguf");
    std::fs::write(&out, b"keep me").unwrap();
    fails_with(
        &["convert", s(&src), s(&out)],
        "already exists (give --force",
    );
    assert_eq!(std::fs::read(&out).unwrap(), b"keep me");
    ok(&["convert", s(&src), s(&out), "--force"]);
    assert!(std::fs::metadata(&out).unwrap().len() > 1000);
    // Missing directory; a file where a directory should be.
    let missing = dir.join("no/such/dir/m.gguf");
    fails_with(&["convert", s(&src), s(&missing)], "no/such/dir");
    let blocker = dir.join("file");
    std::fs::write(&blocker, b"").unwrap();
    fails_with(
        &["convert", s(&src), s(&blocker.join("m.gguf"))],
        s(&blocker),
    );
    // Unknown layout.
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    fails_with(&["convert", s(&empty), s(&dir.join("e.gguf"))], s(&empty));
}

/// Runs gptoss under a 64 KiB file-size limit (SIGXFSZ ignored, so writes fail with EFBIG).
fn with_small_fsize(args: &[&str]) -> Output {
    let quoted: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
    let script = format!(
        "trap '' XFSZ; ulimit -f 128 && exec '{}' {}",
        env!("CARGO_BIN_EXE_gptoss"),
        quoted.join(" ")
    );
    Command::new("sh").args(["-c", &script]).output().unwrap()
}

#[test]
fn a_full_disk_leaves_no_partial_file() {
    let dir = scratch("full");
    let out = dir.join("m.gguf");
    let o = with_small_fsize(&[
        "convert",
        s(&fixture("split-weights")),
        s(&out),
        "--type",
        "f32",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("m.gguf") && err.contains("too large"),
        "{err}"
    );
    assert!(!out.exists());
    let hf = dir.join("hf");
    let o = with_small_fsize(&[
        "convert",
        s(&fixture("hf-bf16")),
        s(&hf),
        "--to",
        "hf-mxfp4",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("hf/model-00001") && err.contains("too large"),
        "{err}"
    );
    assert!(!hf.exists());
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
}

/// transformers (from GPTOSS_FIXTURES_PYTHON, default /work/venvs/fixtures/bin/python) loads a one-layer
/// gpt-oss-20b-shaped `synth` checkpoint and gives our logits.
#[test]
#[ignore = "slow: writes a 2.8 GB checkpoint and needs a Python with transformers 5.23"]
fn synth_checkpoint_loads_in_transformers_with_our_logits() {
    let py = std::env::var("GPTOSS_FIXTURES_PYTHON")
        .unwrap_or_else(|_| "/work/venvs/fixtures/bin/python".into());
    let dir = scratch("synth");
    let out = dir.join("dummy");
    ok(&["synth", "--dummy", "gpt-oss-20b", s(&out), "--layers", "1"]);
    let tokens = "1,200,3000,45000,199999";
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tools/fixtures/hf_logits.py");
    let hf = Command::new(&py)
        .arg(&script)
        .arg(&out)
        .arg(tokens)
        .output()
        .unwrap();
    assert!(
        hf.status.success(),
        "{}",
        String::from_utf8_lossy(&hf.stderr)
    );
    let want = rows(&serde_json::from_slice::<serde_json::Value>(&hf.stdout).unwrap()["logits"]);
    let o = ok(&[
        "logits",
        "--model",
        s(&out),
        "--tokens",
        tokens,
        "--all-positions",
        "--device",
        "cpu",
        "--exact",
    ]);
    let got = rows(&serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["logits"]);
    let d = rel_diff(&got, &want);
    assert!(d < 1e-4, "relative max |Δ| {d}");
    let _ = std::fs::remove_dir_all(&dir);
}
