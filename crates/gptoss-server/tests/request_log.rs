//! The request log on the real tiny engine: exactly one `info` line per HTTP request, with method,
//! path, status, the tokens `usage` reports (a stream's once the stream has ended, its choices summed)
//! and the time taken; requests that generate nothing log zero tokens.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// Where the subscriber writes: every formatted line, in order.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Lines {
    /// The request lines so far.
    fn requests(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .filter(|l| l.contains(" request ") || l.ends_with(" request"))
            .filter(|l| l.contains("INFO") && l.contains("method="))
            .map(str::to_string)
            .collect()
    }
}

/// The value of `key=` in a log line.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    let at = line
        .find(&format!(" {key}="))
        .unwrap_or_else(|| panic!("{key} in {line}"))
        + key.len()
        + 2;
    let rest = &line[at..];
    rest.split(' ').next().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn one_line_per_request_with_its_tokens() {
    let lines = Lines::default();
    let writer = lines.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    // This binary has one test, so the process-wide subscriber sees only its server.
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let base = serve(real_engine(4, 1024), config()).await;
    let chat = format!("{base}/v1/chat/completions");
    let (s, body) = post(
        &chat,
        &json!({"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 7}),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    let usage = serde_json::from_str::<Value>(&body).unwrap()["usage"].clone();
    let (s, body) = post(
        &chat,
        &json!({"model": MODEL, "messages": [{"role": "user", "content": "stream"}], "max_tokens": 5,
            "n": 2, "stream": true, "stream_options": {"include_usage": true}}),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    let streamed = sse_json(&body).last().unwrap()["usage"].clone();
    assert_eq!(
        reqwest::get(format!("{base}/health"))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        reqwest::get(format!("{base}/nowhere"))
            .await
            .unwrap()
            .status(),
        404
    );
    let (s, _) = post(&chat, &json!({"model": MODEL})).await;
    assert_eq!(s, 400);

    // A line is written once its response has gone out: wait for the last ones.
    let started = Instant::now();
    while lines.requests().len() < 5 && started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got = lines.requests();
    assert_eq!(got.len(), 5, "{got:#?}");
    let want = [
        ("POST", "\"/v1/chat/completions\"", "200", &usage),
        ("POST", "\"/v1/chat/completions\"", "200", &streamed),
        ("GET", "\"/health\"", "200", &Value::Null),
        ("GET", "\"/nowhere\"", "404", &Value::Null),
        ("POST", "\"/v1/chat/completions\"", "400", &Value::Null),
    ];
    // Lines come in the order responses ended, which need not be the order sent: match by content.
    for (method, path, status, usage) in want {
        let tokens = |k: &str| usage[k].as_u64().unwrap_or(0).to_string();
        let expected = (
            method,
            path,
            status,
            tokens("prompt_tokens"),
            tokens("completion_tokens"),
        );
        let matching: Vec<&String> = got
            .iter()
            .filter(|line| {
                let found = (
                    field(line, "method"),
                    field(line, "path"),
                    field(line, "status"),
                    field(line, "prompt_tokens").to_string(),
                    field(line, "completion_tokens").to_string(),
                );
                found == expected
            })
            .collect();
        assert_eq!(matching.len(), 1, "{expected:?} in {got:#?}");
        let ms: f64 = field(matching[0], "ms").parse().unwrap();
        assert!((0.0..60_000.0).contains(&ms), "{}", matching[0]);
    }
    assert!(usage["completion_tokens"].as_u64().unwrap() >= 1);
    assert!(streamed["completion_tokens"].as_u64().unwrap() >= 2);
}
