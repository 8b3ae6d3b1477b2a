//! `gptoss eval` against transformers: perplexity and KL divergence computed from the fixtures'
//! transformers logits (`reference.json`) must match ours; windows of `--ctx` score every token once,
//! each from the logits `gptoss logits` gives for its window; saved base logits give the same KL as the
//! base run in the same process; Q8_0 two ways (a llama.cpp GGUF, `--dense q8_0`) are the same model.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/tiny")
        .join(rel)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn gptoss(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gptoss"))
        .args(args)
        .output()
        .unwrap()
}

fn json(args: &[&str]) -> Value {
    let o = gptoss(args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn reference(rel: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(rel)).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn csv(ids: &[u32]) -> String {
    ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

fn rows(v: &Value) -> Vec<Vec<f64>> {
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

fn log_softmax(row: &[f64]) -> Vec<f64> {
    let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let lse = max + row.iter().map(|x| (x - max).exp()).sum::<f64>().ln();
    row.iter().map(|x| x - lse).collect()
}

/// exp(mean NLL) of `tokens[1..]` from logits rows `0..n-1`.
fn ppl(logits: &[Vec<f64>], tokens: &[u32]) -> f64 {
    let nll: f64 = (1..tokens.len())
        .map(|i| -log_softmax(&logits[i - 1])[tokens[i] as usize])
        .sum();
    (nll / (tokens.len() - 1) as f64).exp()
}

fn argmax(row: &[f64]) -> usize {
    (0..row.len()).fold(0, |b, i| if row[i] > row[b] { i } else { b })
}

fn close(got: f64, want: f64, rel: f64, what: &str) {
    assert!(
        (got - want).abs() <= rel * want.abs() + 1e-9,
        "{what}: got {got}, transformers {want}"
    );
}

#[test]
fn perplexity_matches_transformers() {
    for (dir, reference_file) in [
        ("hf-mxfp4", "hf-mxfp4/reference.json"),
        (
            "gguf/tiny-llamacpp-q8_0.gguf",
            "gguf/tiny-llamacpp-q8_0.reference.json",
        ),
        ("bnb-nf4", "bnb-nf4/reference.json"),
    ] {
        let r = reference(reference_file);
        let tokens = ids(&r["prompt"]);
        let got = json(&[
            "eval",
            "ppl",
            "-m",
            s(&fixture(dir)),
            "--tokens",
            &csv(&tokens),
            "--json",
            "--device",
            "cpu",
        ]);
        assert_eq!(
            (got["tokens"].as_u64(), got["scored"].as_u64()),
            (Some(24), Some(23))
        );
        close(
            got["ppl"].as_f64().unwrap(),
            ppl(&rows(&r["logits"]), &tokens),
            1e-4,
            dir,
        );
    }
}

#[test]
fn kl_divergence_matches_transformers() {
    let (a, b) = (
        reference("hf-bf16/reference.json"),
        reference("gguf/tiny-llamacpp-q8_0.reference.json"),
    );
    let tokens = ids(&a["prompt"]);
    assert_eq!(tokens, ids(&b["prompt"]));
    let (la, lb) = (rows(&a["logits"]), rows(&b["logits"]));
    let mut kl: Vec<f64> = (0..tokens.len() - 1)
        .map(|i| {
            let (p, q) = (log_softmax(&la[i]), log_softmax(&lb[i]));
            p.iter().zip(&q).map(|(x, y)| x.exp() * (x - y)).sum()
        })
        .collect();
    let top1 = (0..kl.len())
        .filter(|&i| argmax(&la[i]) == argmax(&lb[i]))
        .count() as f64
        / kl.len() as f64;
    let mean = kl.iter().sum::<f64>() / kl.len() as f64;
    kl.sort_by(f64::total_cmp);
    let p99 = kl[((0.99 * kl.len() as f64).ceil() as usize) - 1];
    let got = json(&[
        "eval",
        "kld",
        "--base",
        s(&fixture("hf-bf16")),
        "-m",
        s(&fixture("gguf/tiny-llamacpp-q8_0.gguf")),
        "--tokens",
        &csv(&tokens),
        "--json",
        "--device",
        "cpu",
    ]);
    assert!(mean > 1e-3, "the two models differ measurably ({mean})");
    close(got["kl_mean"].as_f64().unwrap(), mean, 1e-3, "kl_mean");
    close(got["kl_p99"].as_f64().unwrap(), p99, 1e-3, "kl_p99");
    close(got["top1"].as_f64().unwrap(), top1, 1e-12, "top1");
    close(
        got["ppl_base"].as_f64().unwrap(),
        ppl(&la, &tokens),
        1e-4,
        "ppl_base",
    );
    close(
        got["ppl_model"].as_f64().unwrap(),
        ppl(&lb, &tokens),
        1e-4,
        "ppl_model",
    );
}

/// With `--ctx 8` each window starts a fresh sequence; every target is scored from the logits
/// `gptoss logits` gives for the window that scores it.
#[test]
fn windows_score_each_token_once_from_its_windows_logits() {
    let tokens = ids(&reference("hf-mxfp4/reference.json")["prompt"]);
    let model = fixture("hf-mxfp4");
    let mut nll = 0.0;
    // Windows of 8 tokens advancing by 4: (begin, end, first target).
    for (begin, end, first) in [
        (0, 8, 1),
        (4, 12, 8),
        (8, 16, 12),
        (12, 20, 16),
        (16, 24, 20),
    ] {
        let w = json(&[
            "logits",
            "-m",
            s(&model),
            "--tokens",
            &csv(&tokens[begin..end]),
            "--all-positions",
            "--device",
            "cpu",
        ]);
        let l = rows(&w["logits"]);
        nll += (first..end)
            .map(|t| -log_softmax(&l[t - 1 - begin])[tokens[t] as usize])
            .sum::<f64>();
    }
    let want = (nll / 23.0).exp();
    let got = json(&[
        "eval",
        "ppl",
        "-m",
        s(&model),
        "--tokens",
        &csv(&tokens),
        "-c",
        "8",
        "--batch-tokens",
        "3",
        "--json",
        "--device",
        "cpu",
    ]);
    close(got["ppl"].as_f64().unwrap(), want, 1e-6, "windowed ppl");
    let whole = json(&[
        "eval",
        "ppl",
        "-m",
        s(&model),
        "--tokens",
        &csv(&tokens),
        "--json",
        "--device",
        "cpu",
    ]);
    assert_ne!(got["ppl"], whole["ppl"], "shorter windows change the score");
}

#[test]
fn saved_base_logits_give_the_same_kl_and_check_the_text() {
    let dir = std::env::temp_dir().join(format!("gptoss-eval-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let saved = dir.join("base.logits");
    let tokens = csv(&ids(&reference("hf-mxfp4/reference.json")["prompt"]));
    let (base, model) = (fixture("hf-mxfp4"), fixture("gguf/tiny-gguf-q4_0.gguf"));
    let together = json(&[
        "eval",
        "kld",
        "--base",
        s(&base),
        "-m",
        s(&model),
        "--tokens",
        &tokens,
        "--json",
        "--device",
        "cpu",
        "--save-logits",
        s(&saved),
    ]);
    let later = json(&[
        "eval",
        "kld",
        "--base-logits",
        s(&saved),
        "-m",
        s(&model),
        "--json",
        "--device",
        "cpu",
    ]);
    for k in ["kl_mean", "kl_p99", "top1", "ppl_base", "ppl_model"] {
        assert_eq!(together[k], later[k], "{k}");
    }
    // `eval ppl --save-logits` writes the same file.
    let again = dir.join("again.logits");
    json(&[
        "eval",
        "ppl",
        "-m",
        s(&base),
        "--tokens",
        &tokens,
        "--json",
        "--device",
        "cpu",
        "--save-logits",
        s(&again),
    ]);
    assert_eq!(
        std::fs::read(&saved).unwrap(),
        std::fs::read(&again).unwrap()
    );
    // The text given must be the one the base logits were computed on.
    let o = gptoss(&[
        "eval",
        "kld",
        "--base-logits",
        s(&saved),
        "-m",
        s(&model),
        "--tokens",
        "1,2,3",
        "--device",
        "cpu",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("computed on another text"),
        "{err}"
    );
    let bytes = std::fs::read(&saved).unwrap();
    std::fs::write(&saved, &bytes[..bytes.len() - 4]).unwrap();
    let o = gptoss(&[
        "eval",
        "kld",
        "--base-logits",
        s(&saved),
        "-m",
        s(&model),
        "--device",
        "cpu",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("base.logits") && err.contains("needs"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The base has its own settings: the llama.cpp Q8_0 GGUF and the HF checkpoint with `--dense q8_0` are
/// the same model (KL 0 on the exact CPU reference), as are base and model both at `--dense q8_0`; bf16
/// dense weights are not.
#[test]
fn base_and_model_settings_are_separate() {
    let tokens = csv(&ids(&reference("hf-mxfp4/reference.json")["prompt"]));
    let hf = fixture("hf-mxfp4");
    let gguf = fixture("gguf/tiny-llamacpp-q8_0.gguf");
    let same = json(&[
        "eval",
        "kld",
        "--base",
        s(&gguf),
        "-m",
        s(&hf),
        "--dense",
        "q8_0",
        "--tokens",
        &tokens,
        "--json",
        "--device",
        "cpu",
        "--exact",
    ]);
    assert_eq!(
        (same["kl_mean"].as_f64(), same["top1"].as_f64()),
        (Some(0.0), Some(1.0))
    );
    let both = json(&[
        "eval",
        "kld",
        "--base",
        s(&hf),
        "--base-dense",
        "q8_0",
        "-m",
        s(&hf),
        "--dense",
        "q8_0",
        "--tokens",
        &tokens,
        "--json",
        "--device",
        "cpu",
        "--exact",
    ]);
    assert_eq!(both["kl_mean"].as_f64(), Some(0.0));
    let differ = json(&[
        "eval",
        "kld",
        "--base",
        s(&hf),
        "-m",
        s(&hf),
        "--dense",
        "q8_0",
        "--tokens",
        &tokens,
        "--json",
        "--device",
        "cpu",
        "--exact",
    ]);
    assert!(differ["kl_mean"].as_f64().unwrap() > 1e-4, "{differ}");
    let o = gptoss(&["eval", "kld", "-m", s(&hf), "--tokens", &tokens]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("give the base with --base MODEL"));
}
