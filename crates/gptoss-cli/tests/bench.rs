//! `gptoss bench` on the tiny fixture with small sizes: the JSON rows, their fields and arithmetic,
//! the sd that repetitions give, the table, and clear errors for bad flags. No timing assertions.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny/hf-mxfp4")
}

fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gptoss"))
        .arg("bench")
        .arg("--model")
        .arg(fixture())
        .args(["--device", "cpu"])
        .args(args)
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn rows(args: &[&str]) -> Vec<Value> {
    let out = bench(args);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array().unwrap().clone()
}

fn positive(row: &Value, key: &str) -> f64 {
    let x = row[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} missing: {row}"));
    assert!(x.is_finite() && x > 0.0, "{key} = {x} in {row}");
    x
}

#[test]
fn json_rows_have_every_test_and_consistent_numbers() {
    let rows = rows(&[
        "--json",
        "-p",
        "16,40",
        "-n",
        "8",
        "--streams",
        "1,3",
        "--stream-tokens",
        "6",
        "--short-prompt",
        "5",
        "-r",
        "2",
        "--seed",
        "3",
    ]);
    let tests: Vec<&str> = rows.iter().map(|r| r["test"].as_str().unwrap()).collect();
    assert_eq!(tests, ["pp16", "pp40", "tg8", "batch1", "batch3"]);
    // (prompt tokens per request, streams, tokens a run counts)
    let shapes: Vec<(u64, u64, u64)> = rows
        .iter()
        .map(|r| {
            (
                r["prompt_tokens"].as_u64().unwrap(),
                r["streams"].as_u64().unwrap(),
                r["tokens"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        shapes,
        [(16, 1, 16), (40, 1, 40), (5, 1, 8), (5, 1, 6), (5, 3, 18)]
    );
    for row in &rows {
        assert_eq!(row["reps"], 2, "{row}");
        assert_eq!(row["device"], "cpu");
        assert_eq!(row["model"], "hf-mxfp4");
        assert_eq!(row["seed"], 3);
        assert_eq!(row["batch_tokens"], 2048);
        assert_eq!(row["max_seqs"], 3, "the largest --streams");
        assert_eq!(row["preemptions"], 0, "the default pool holds every test");
        // Counted runs repeat the warm-up's prompts; a prefix-cache hit would time no prefill at all.
        assert_eq!(row["prefix_cached_tokens"], 0, "{row}");
        assert!(
            row["peak_device_bytes"].is_null(),
            "the CPU has no device meter"
        );
        positive(row, "peak_host_bytes");
        positive(row, "load_seconds");
        let tps = positive(row, "tokens_per_second");
        let ms = positive(row, "ms_per_token");
        let sd = row["sd"].as_f64().expect("-r 2 gives an sd");
        assert!(sd.is_finite() && sd >= 0.0);
        // The rates are the counted tokens over each run's seconds, averaged.
        let tokens = row["tokens"].as_f64().unwrap();
        let secs: Vec<f64> = row["samples_seconds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_f64().unwrap())
            .collect();
        assert_eq!(secs.len(), 2);
        assert!(secs.iter().all(|s| s.is_finite() && *s > 0.0));
        let rates: Vec<f64> = secs.iter().map(|s| tokens / s).collect();
        let mean_rate = (rates[0] + rates[1]) / 2.0;
        assert!(
            (tps - mean_rate).abs() <= 1e-9 * mean_rate,
            "{tps} vs {mean_rate}"
        );
        let sd_expected = (rates[0] - rates[1]).abs() / 2f64.sqrt();
        assert!((sd - sd_expected).abs() <= 1e-9 * mean_rate + 1e-12, "{sd}");
        let mean_ms = 1000.0 * (secs[0] + secs[1]) / 2.0 / tokens;
        assert!((ms - mean_ms).abs() <= 1e-9 * mean_ms, "{ms} vs {mean_ms}");
    }
    // The pool is what the largest test needs: 3 streams of 5 + 6 positions (1 block each) < pp40's
    // 41 positions (3 blocks).
    assert_eq!(rows[0]["kv_blocks"], 3);
}

#[test]
fn one_repetition_has_no_sd() {
    let rows = rows(&["--json", "--tests", "tg", "-n", "4", "-r", "1"]);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["test"], "tg4");
    assert_eq!(rows[0]["reps"], 1);
    assert!(rows[0]["sd"].is_null());
    positive(&rows[0], "tokens_per_second");
}

#[test]
fn table_lists_the_tests_and_the_memory() {
    let json_out = std::env::temp_dir().join(format!("gptoss-bench-{}.json", std::process::id()));
    let _ = std::fs::remove_file(&json_out);
    let out = bench(&[
        "-p",
        "8",
        "-n",
        "4",
        "--streams",
        "2",
        "--stream-tokens",
        "4",
        "-r",
        "1",
        "--json-out",
        json_out.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("| model") && lines[0].contains("t/s"),
        "{text}"
    );
    assert!(lines[1].starts_with("| ---"), "{text}");
    for (line, test) in lines[2..5].iter().zip(["pp8", "tg4", "batch2"]) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        assert_eq!(&cells[1..4], ["hf-mxfp4", "cpu", test], "{line}");
        let rate: f64 = cells[4].parse().unwrap();
        assert!(rate.is_finite() && rate > 0.0, "{line}");
    }
    // Every row is as wide as the header (aligned columns).
    assert!(lines[..5]
        .iter()
        .all(|l| l.chars().count() == lines[0].chars().count()));
    assert!(text.contains("peak host memory (RSS)"), "{text}");
    // --json-out writes the same rows beside the table.
    let saved: Value = serde_json::from_str(&std::fs::read_to_string(&json_out).unwrap()).unwrap();
    let names: Vec<&str> = saved
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["test"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["pp8", "tg4", "batch2"]);
    std::fs::remove_file(&json_out).unwrap();
}

#[test]
fn bad_flags_are_clear_errors() {
    let cases: [(&[&str], &[&str]); 7] = [
        (
            &["--json-out", "/no/such/dir/rows.json"],
            &["--json-out", "/no/such/dir", "does not exist"],
        ),
        (&["-p", "0"], &["-p", "at least 1"]),
        (&["--streams", ""], &["--streams", "got nothing"]),
        (&["--streams", "4,x"], &["--streams", "`x` is not a count"]),
        (&["-r", "0"], &["-r", "at least 1"]),
        (&["-p", "600", "--ctx", "512"], &["-p 600", "--ctx is 512"]),
        (
            &["--tests", "batch", "--stream-tokens", "500", "--ctx", "512"],
            &["--stream-tokens 500", "520 positions", "--ctx is 512"],
        ),
    ];
    for (args, needles) in cases {
        let out = bench(args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = stderr(&out);
        for needle in needles {
            assert!(err.contains(needle), "{args:?}: `{needle}` not in {err}");
        }
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn too_small_a_pool_is_an_error_not_a_silent_number() {
    // One block holds 16 positions; pp40 needs 3.
    let out = bench(&["--json", "--tests", "pp", "-p", "40", "--kv-blocks", "1"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("pp40") && err.contains("KV blocks"), "{err}");
}
