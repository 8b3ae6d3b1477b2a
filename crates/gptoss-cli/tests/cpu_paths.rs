//! The two CPU paths through the binary: the fast default and `--exact`, on a committed fixture against
//! transformers' logits.

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

/// The largest `max |a - b| / max |b|` over positions.
fn worst(a: &[Vec<f64>], b: &[Vec<f64>]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let scale = y.iter().fold(0f64, |m, v| m.max(v.abs()));
            x.iter().zip(y).fold(0f64, |m, (p, q)| m.max((p - q).abs())) / scale
        })
        .fold(0f64, f64::max)
}

#[test]
fn fast_default_and_exact_reference() {
    let dir = fixture("gguf/tiny-llamacpp-q8_0.gguf");
    let r: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("gguf/tiny-llamacpp-q8_0.reference.json")).unwrap(),
    )
    .unwrap();
    let prompt: Vec<String> = r["prompt"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.to_string())
        .collect();
    let tokens = prompt.join(",");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "logits",
            "--model",
            dir.to_str().unwrap(),
            "--tokens",
            &tokens,
            "--all-positions",
            "--device",
            "cpu",
        ];
        args.extend_from_slice(extra);
        let out = gptoss(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        rows(&serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["logits"])
    };
    let want = rows(&r["logits"]);
    let (fast, exact) = (run(&[]), run(&["--exact"]));
    assert!(
        worst(&exact, &want) <= 1e-3,
        "exact: {}",
        worst(&exact, &want)
    );
    let off = worst(&fast, &exact);
    // The fast path is a different computation (quantized activations), within the bar.
    assert!(off > 0.0 && off <= 1e-2, "fast vs exact: {off}");
}
