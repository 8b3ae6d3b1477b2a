//! The server on the real engine (tiny fixture model, CPU backend): 64 concurrent streaming clients for
//! 30 seconds, each request asking for a different seeded output, every stream complete, well-formed and
//! equal to the same request run alone; the engine's queue, KV use and process memory flat afterwards.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use gptoss_engine::scheduler::{NgramConfig, Speculative};
use gptoss_engine::{generate, GenerateOptions, SamplingParams, StopReason};
use gptoss_tokenizer::harmony::Harmony;
use gptoss_tokenizer::StreamDecoder;
use serde_json::{json, Value};

const CTX: usize = 1024;

/// The text `/v1/completions` should stream for `prompt` with `seed`, computed without the server.
fn solo_text(
    w: &gptoss_formats::ModelWeights,
    prompt: &str,
    seed: u64,
    max_tokens: usize,
) -> (String, usize, StopReason) {
    solo_text_at(w, prompt, (1.0, seed), max_tokens)
}

/// Like [`solo_text`] at `(temperature, seed)`.
fn solo_text_at(
    w: &gptoss_formats::ModelWeights,
    prompt: &str,
    (temperature, seed): (f32, u64),
    max_tokens: usize,
) -> (String, usize, StopReason) {
    let tok = tokenizer();
    let mut model = tiny_model(w, 1, CTX);
    let opts = GenerateOptions {
        max_new_tokens: max_tokens,
        sampling: SamplingParams {
            temperature,
            top_p: 1.0,
            top_k: 0,
            seed,
        },
        stop_tokens: Harmony::new(tok.clone()).unwrap().stop_tokens(),
    };
    let ids = tok.encode(prompt).unwrap();
    let (out, reason) = generate(&mut model, &ids, &opts, |_| {}).unwrap();
    let mut dec = StreamDecoder::new();
    let mut text: String = out
        .iter()
        .filter(|&&t| !tok.is_special(t))
        .filter_map(|&t| tok.token_bytes(t).ok())
        .map(|b| dec.push_bytes(b))
        .collect();
    text.push_str(&dec.finish());
    (text, out.len(), reason)
}

async fn stream_completion(
    url: String,
    prompt: String,
    seed: u64,
    max_tokens: usize,
) -> (String, String, u64) {
    let body = json!({"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "temperature": 1.0, "seed": seed, "stream": true});
    let r = reqwest::Client::new()
        .post(&url)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let chunks = sse_json(&r.text().await.unwrap());
    let text: String = chunks
        .iter()
        .map(|c| c["choices"][0]["text"].as_str().unwrap().to_string())
        .collect();
    let last = chunks.last().unwrap();
    let finish = last["choices"][0]["finish_reason"]
        .as_str()
        .unwrap()
        .to_string();
    (
        text,
        finish,
        last["usage"]["completion_tokens"].as_u64().unwrap(),
    )
}

/// Resident set size of this process (Linux `/proc/self/status`), in bytes.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

/// One client: streams requests back to back until `deadline`, each with its own seed, and checks every
/// answer against the same request run alone. Returns how many requests it made.
async fn client_loop(
    w: Arc<gptoss_formats::ModelWeights>,
    url: String,
    client: u64,
    deadline: Instant,
) -> u64 {
    let mut done = 0u64;
    while done == 0 || Instant::now() < deadline {
        let seed = client * 1_000_000 + done;
        let prompt = format!("client {client} request {done} says hello");
        let max_tokens = 8 + ((client + done) as usize % 17);
        let (text, finish, n) =
            stream_completion(url.clone(), prompt.clone(), seed, max_tokens).await;
        let w = w.clone();
        let (want, want_n, reason) =
            tokio::task::spawn_blocking(move || solo_text(&w, &prompt, seed, max_tokens))
                .await
                .unwrap();
        assert_eq!(text, want, "client {client} seed {seed}");
        assert_eq!(n as usize, want_n, "client {client} seed {seed}");
        let want_finish = if reason == StopReason::Length {
            "length"
        } else {
            "stop"
        };
        assert_eq!(finish, want_finish, "client {client} seed {seed}");
        done += 1;
    }
    done
}

/// 64 concurrent streaming clients for 30 s (`GPTOSS_LOAD_SECS` overrides): every response complete,
/// well-formed and equal to its solo run; afterwards the engine is idle with no KV blocks held and the
/// process's memory is where it was once warmed up.
#[tokio::test(flavor = "multi_thread")]
async fn sixty_four_concurrent_streams_for_thirty_seconds() {
    let secs: u64 = std::env::var("GPTOSS_LOAD_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let w = Arc::new(weights());
    let base = serve(real_engine(16, CTX), config()).await;
    let url = format!("{base}/v1/completions");
    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    let clients: Vec<_> = (0..64u64)
        .map(|i| tokio::spawn(client_loop(w.clone(), url.clone(), i, deadline)))
        .collect();
    // Memory once every client has been through a few requests (allocator pools and the engine's
    // buffers at their working size), then at the end.
    tokio::time::sleep(Duration::from_secs(secs / 3)).await;
    let rss_warm = rss_bytes();
    let mut requests = 0;
    for handle in clients {
        requests += handle.await.unwrap();
    }
    let elapsed = started.elapsed();
    let rss_end = rss_bytes();
    eprintln!(
        "load: 64 clients, {requests} requests in {:.1} s; RSS {:.1} MiB after warm-up, {:.1} MiB at the end",
        elapsed.as_secs_f64(),
        rss_warm as f64 / 1048576.0,
        rss_end as f64 / 1048576.0
    );
    assert!(elapsed >= Duration::from_secs(secs));
    assert!(requests >= 128, "only {requests} requests in {secs} s");
    assert!(
        rss_end <= rss_warm + 64 * 1024 * 1024,
        "memory grew under steady load: {rss_warm} → {rss_end} bytes"
    );
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for flat in [
        "gptoss_queue_depth 0",
        "gptoss_requests_running 0",
        "gptoss_kv_blocks_used 0",
        "gptoss_requests_admitted 0",
    ] {
        assert!(metrics.contains(flat), "{flat} not in\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn chat_on_the_real_model_stream_equals_json() {
    let base = serve(real_engine(4, CTX), config()).await;
    let url = format!("{base}/v1/chat/completions");
    let req = json!({"model": MODEL, "messages": [{"role": "user", "content": "hello there"}], "seed": 5, "max_tokens": 40});
    let (status, body) = post(&url, &req).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let msg = &v["choices"][0]["message"];
    let mut sreq = req.clone();
    sreq["stream"] = json!(true);
    let chunks = sse_json(&post(&url, &sreq).await.1);
    let field = |k: &str| -> String {
        chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"][k].as_str())
            .collect()
    };
    assert_eq!(field("content"), msg["content"].as_str().unwrap_or(""));
    assert_eq!(
        field("reasoning_content"),
        msg["reasoning_content"].as_str().unwrap_or("")
    );
    assert!(v["usage"]["completion_tokens"].as_u64().unwrap() >= 1);

    // A prompt longer than the context is a 400 and the server goes on.
    let long =
        json!({"model": MODEL, "messages": [{"role": "user", "content": "a b ".repeat(1000)}]});
    let (status, body) = post(&url, &long).await;
    assert_eq!(status, 400);
    assert!(body.contains("context_length_exceeded"), "{body}");
    assert_eq!(post(&url, &req).await.0, 200);
}

/// The value of an unlabelled series in a `/metrics` text.
fn metric_value(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in\n{metrics}"))
}

/// With prompt lookup drafts, concurrent completions (greedy and seeded) are exactly the plain
/// decoder's, `/metrics` counts the drafts, and every KV block comes back.
#[tokio::test(flavor = "multi_thread")]
async fn speculative_engine_serves_the_plain_tokens_and_counts_drafts() {
    let w = Arc::new(weights());
    let config_ngram = gptoss_engine::scheduler::EngineConfig {
        max_batch_tokens: None,
        mask_sampling: Default::default(),
        prefix_caching: Default::default(),
        speculative: Speculative::Ngram(NgramConfig::new(4, 1, 3).unwrap()),
    };
    let base = serve(real_engine_with(4, CTX, config_ngram), config()).await;
    let url = format!("{base}/v1/completions");
    let prompt = "fn add(a: u32, b: u32) -> u32 { a + b }\nfn add(a: u32, b: u32) -> u32 {";
    let runs = [(0.0, 0), (0.5, 1), (0.5, 2), (1.0, 3), (0.0, 4)];
    let tasks: Vec<_> = runs
        .iter()
        .map(|&(temperature, seed)| {
            let body = json!({"model": MODEL, "prompt": prompt, "max_tokens": 120, "temperature": temperature, "seed": seed});
            let url = url.clone();
            tokio::spawn(async move { post(&url, &body).await })
        })
        .collect();
    for (task, (temperature, seed)) in tasks.into_iter().zip(runs) {
        let (status, body) = task.await.unwrap();
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        let w = w.clone();
        let (want, n, _) =
            tokio::task::spawn_blocking(move || solo_text_at(&w, prompt, (temperature, seed), 120))
                .await
                .unwrap();
        assert_eq!(
            v["choices"][0]["text"], want,
            "temperature {temperature}, seed {seed}"
        );
        assert_eq!(v["usage"]["completion_tokens"], n);
    }
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let drafted = metric_value(&metrics, "gptoss_spec_draft_tokens_total");
    let accepted = metric_value(&metrics, "gptoss_spec_accepted_tokens_total");
    // Random weights rarely copy the prompt: 423 drafted, 1 accepted when written.
    assert!(
        accepted > 0 && accepted < drafted,
        "{drafted} drafted, {accepted} accepted"
    );
    assert_eq!(metric_value(&metrics, "gptoss_kv_blocks_used"), 0);
}
