//! `gptoss batch` on the tiny fixture: a 200-line job killed half way and resumed ends with exactly
//! one result line per custom_id; a malformed line becomes an error line and the rest complete.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny/hf-mxfp4")
}

fn batch(dir: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gptoss"));
    c.arg("batch")
        .arg(dir.join("in.jsonl"))
        .arg("-o")
        .arg(dir.join("out.jsonl"))
        .arg("--model")
        .arg(fixture())
        .args(["--max-seqs", "2", "--ctx", "512"])
        .args(extra);
    c
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// 200 lines: Batch API chat lines, plain prompt lines, one malformed line (line 100).
fn write_input(dir: &Path) -> Vec<String> {
    let mut text = String::new();
    let mut ids = Vec::new();
    for i in 1..=200 {
        let line = if i == 100 {
            ids.push("line-100".to_string());
            "{\"custom_id\": \"broken\", ".to_string()
        } else if i % 3 == 0 {
            ids.push(format!("line-{i}"));
            json!({"prompt": format!("count {i}"), "max_tokens": 32, "seed": i}).to_string()
        } else {
            ids.push(format!("job-{i}"));
            json!({"custom_id": format!("job-{i}"), "method": "POST", "url": "/v1/chat/completions",
                   "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": format!("hi {i}")}],
                            "max_tokens": 24, "seed": i}})
            .to_string()
        };
        text.push_str(&line);
        text.push('\n');
    }
    std::fs::write(dir.join("in.jsonl"), text).unwrap();
    ids
}

#[test]
fn interrupted_job_resumes_to_one_line_per_custom_id() {
    let dir = std::env::temp_dir().join(format!("gptoss-batch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let ids = write_input(&dir);
    let out = dir.join("out.jsonl");

    // First run: killed once some results are written.
    let mut child = batch(&dir, &[])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while lines(&out).len() < 30 && start.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let partial = lines(&out).len();
    assert!(
        (30..200).contains(&partial),
        "the first run wrote {partial} lines before it was killed"
    );

    // Second run: resumes.
    let summary = dir.join("summary.json");
    let status = batch(&dir, &["--summary-json", summary.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let results = lines(&out);
    assert_eq!(results.len(), 200);
    let mut by_id: HashMap<String, Value> = HashMap::new();
    for line in &results {
        let v: Value = serde_json::from_str(line).unwrap();
        let id = v["custom_id"].as_str().unwrap().to_string();
        assert!(by_id.insert(id.clone(), v).is_none(), "{id} twice");
    }
    for id in &ids {
        let v = &by_id[id];
        if id == "line-100" {
            assert_eq!(v["response"]["status_code"], 400);
            assert!(
                v["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("line 100: not valid JSON"),
                "{v}"
            );
        } else {
            assert_eq!(v["response"]["status_code"], 200, "{v}");
            assert!(v["error"].is_null());
            let body = &v["response"]["body"];
            assert!(
                body["usage"]["completion_tokens"].as_u64().unwrap() >= 1,
                "{v}"
            );
            let object = if id.starts_with("job-") {
                "chat.completion"
            } else {
                "text_completion"
            };
            assert_eq!(body["object"], object);
        }
    }
    let s: Value = serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    let already = s["skipped_already_done"].as_u64().unwrap() as usize;
    // A line torn by the kill is dropped and rerun.
    assert!(already == partial || already + 1 == partial, "{s}");
    assert_eq!(
        s["requests"].as_u64().unwrap() as usize + already,
        200,
        "{s}"
    );
    assert!(
        s["latency_p95_seconds"].as_f64().unwrap() >= s["latency_p50_seconds"].as_f64().unwrap()
    );
    assert!(s["generated_tokens"].as_u64().unwrap() > 0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--speculative ngram` leaves every result as it is without it and reports the drafts in the
/// summary.
#[test]
fn speculative_batch_gives_the_same_results() {
    let dir = std::env::temp_dir().join(format!("gptoss-batch-spec-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut text = String::new();
    for i in 0..12 {
        let prompt = format!("{i} apples, {i} apples, {i} apples, {i}");
        let temperature = if i % 2 == 0 { 0.0 } else { 0.8 };
        text.push_str(&json!({"custom_id": format!("c{i}"), "prompt": prompt, "max_tokens": 40, "temperature": temperature, "seed": i}).to_string());
        text.push('\n');
    }
    std::fs::write(dir.join("in.jsonl"), text).unwrap();
    let mut results = Vec::new();
    for extra in [
        &[][..],
        &["--speculative", "ngram", "--prompt-lookup-min", "1"],
    ] {
        let _ = std::fs::remove_file(dir.join("out.jsonl"));
        let summary = dir.join("summary.json");
        let args = [extra, &["--summary-json", summary.to_str().unwrap()]].concat();
        let out = batch(&dir, &args).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut by_id: Vec<(String, Value)> = lines(&dir.join("out.jsonl"))
            .iter()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                let body = &v["response"]["body"];
                (
                    v["custom_id"].as_str().unwrap().to_string(),
                    json!([
                        body["choices"][0]["text"],
                        body["usage"]["completion_tokens"]
                    ]),
                )
            })
            .collect();
        by_id.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(by_id.len(), 12);
        let s: Value = serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if extra.is_empty() {
            assert!(s["drafted_tokens"].is_null(), "{s}");
        } else {
            let (d, a) = (
                s["drafted_tokens"].as_u64().unwrap(),
                s["accepted_tokens"].as_u64().unwrap(),
            );
            assert!(d > 0 && a <= d, "{s}");
            assert!(stdout.contains("drafted tokens"), "{stdout}");
        }
        results.push(by_id);
    }
    assert_eq!(results[0], results[1]);
    let _ = std::fs::remove_dir_all(&dir);
}
