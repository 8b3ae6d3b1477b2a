//! State kept between requests, on the real engine (tiny fixture model, CPU): the prefix cache (a
//! second chat turn reuses the first's KV blocks, reports them in `usage`, and answers exactly as
//! without the cache; `/metrics` counts the hits), and the Responses store (`previous_response_id`,
//! `GET /v1/responses/{id}`, the store's bound).

mod common;

use std::time::{Duration, Instant};

use common::*;
use gptoss_engine::scheduler::{EngineConfig, PrefixCaching};
use serde_json::{json, Value};

const CTX: usize = 8192;

fn engine(caching: PrefixCaching) -> gptoss_engine::scheduler::EngineHandle {
    let config = EngineConfig {
        prefix_caching: caching,
        ..EngineConfig::default()
    };
    real_engine_with(2, CTX, config)
}

/// A chat of two turns with a long system prompt and a tool: turn 2 repeats turn 1 and its answer.
fn turns(system: &str, seed: u64) -> (Value, impl Fn(&str) -> Value) {
    let tools = json!([{"type": "function", "function": {"name": "lookup", "description": "Look a word up",
        "parameters": {"type": "object", "properties": {"word": {"type": "string"}}, "required": ["word"]}}}]);
    let first = json!({"model": MODEL, "seed": seed, "max_tokens": 24, "tools": tools,
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": "Hello there."}]});
    let system = system.to_string();
    let second = move |answer: &str| {
        json!({"model": MODEL, "seed": seed, "max_tokens": 24, "tools": tools,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": "Hello there."},
                {"role": "assistant", "content": answer}, {"role": "user", "content": "And then?"}]})
    };
    (first, second)
}

fn system_prompt(words: usize) -> String {
    (0..words).map(|i| format!("rule{} ", i % 97)).collect()
}

async fn chat_twice(base: &str, seed: u64) -> (Value, Value) {
    let url = format!("{base}/v1/chat/completions");
    let (first, second) = turns(&system_prompt(300), seed);
    let (s, body) = post(&url, &first).await;
    assert_eq!(s, 200, "{body}");
    let v1: Value = serde_json::from_str(&body).unwrap();
    let answer = v1["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let (s, body) = post(&url, &second(&answer)).await;
    assert_eq!(s, 200, "{body}");
    (v1, serde_json::from_str(&body).unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_turn_hits_the_prefix_cache_and_answers_the_same() {
    let cached = serve(engine(PrefixCaching::On), config()).await;
    let fresh = serve(engine(PrefixCaching::Off), config()).await;
    for seed in [1, 2] {
        let (a1, a2) = chat_twice(&cached, seed).await;
        let (b1, b2) = chat_twice(&fresh, seed).await;
        assert_eq!(a1["choices"], b1["choices"]);
        assert_eq!(a2["choices"], b2["choices"]);
        let reused = a2["usage"]["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap();
        let prompt = a2["usage"]["prompt_tokens"].as_u64().unwrap();
        assert!(reused > 0 && reused < prompt, "{}", a2["usage"]);
        assert_eq!(b2["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    }
    let metrics = reqwest::get(format!("{cached}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let hits = metrics
        .lines()
        .find_map(|l| l.strip_prefix("gptoss_prefix_cache_hits_total "))
        .unwrap();
    assert!(hits.parse::<u64>().unwrap() >= 2, "{metrics}");
}

#[tokio::test(flavor = "multi_thread")]
async fn responses_are_stored_continued_and_fetched() {
    let mut cfg = config();
    cfg.responses_store = 2;
    let base = serve(engine(PrefixCaching::On), cfg).await;
    let url = format!("{base}/v1/responses");
    let (s, body) = post(
        &url,
        &json!({"model": MODEL, "input": "Hi", "max_output_tokens": 8, "seed": 1,
        "metadata": {"k": "v"}}),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    let first: Value = serde_json::from_str(&body).unwrap();
    let id = first["id"].as_str().unwrap();
    assert_eq!(
        (first["store"].as_bool(), first["metadata"]["k"].as_str()),
        (Some(true), Some("v"))
    );
    let got: Value = reqwest::get(format!("{url}/{id}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got, first);
    // Continuing: the prompt holds the first turn, so it is longer than the new input alone.
    let (s, body) = post(
        &url,
        &json!({"model": MODEL, "input": "More", "max_output_tokens": 8,
        "previous_response_id": id}),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    let second: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(second["previous_response_id"], id);
    let (_, alone) = post(
        &url,
        &json!({"model": MODEL, "input": "More", "max_output_tokens": 8, "store": false}),
    )
    .await;
    let alone: Value = serde_json::from_str(&alone).unwrap();
    assert!(second["usage"]["input_tokens"].as_u64() > alone["usage"]["input_tokens"].as_u64());
    let r = reqwest::get(format!("{url}/{}", alone["id"].as_str().unwrap()))
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "store: false keeps nothing");
    // The store holds 2: a third stored response drops the first.
    post(
        &url,
        &json!({"model": MODEL, "input": "x", "max_output_tokens": 2}),
    )
    .await;
    let r = reqwest::get(format!("{url}/{id}")).await.unwrap();
    assert_eq!(r.status(), 404);
    let (s, body) = post(
        &url,
        &json!({"model": MODEL, "input": "x", "previous_response_id": id}),
    )
    .await;
    assert_eq!(s, 404, "{body}");
    assert!(body.contains("previous_response_id"), "{body}");
}

/// Time to first token of turn 2 of a chat with a ~4k-token system prompt and a tool, with and
/// without the prefix cache (prints the numbers; run with `--ignored --nocapture`).
#[tokio::test(flavor = "multi_thread")]
#[ignore = "measurement: prints TTFT, asserts nothing about time"]
async fn measure_turn_two_ttft() {
    for caching in [PrefixCaching::Off, PrefixCaching::On] {
        let base = serve(engine(caching), config()).await;
        let url = format!("{base}/v1/chat/completions");
        let mut samples = Vec::new();
        for seed in 0..5 {
            // A distinct system prompt per run: turn 1 is always cold.
            let system = format!("run {seed} {:?} {}", caching, system_prompt(630));
            let (first, second) = turns(&system, seed);
            let (_, body) = post(&url, &first).await;
            let v: Value = serde_json::from_str(&body).unwrap();
            let answer = v["choices"][0]["message"]["content"]
                .as_str()
                .unwrap_or("")
                .to_string();
            let mut req = second(&answer);
            req["stream"] = json!(true);
            req["stream_options"] = json!({"include_usage": true});
            let started = Instant::now();
            let mut r = reqwest::Client::new()
                .post(&url)
                .json(&req)
                .send()
                .await
                .unwrap();
            let mut ttft = None;
            let mut body = String::new();
            while let Some(chunk) = r.chunk().await.unwrap() {
                body.push_str(&String::from_utf8_lossy(&chunk));
                // The first chunk after the role chunk carries the first token's text.
                if ttft.is_none() && body.matches("data:").count() >= 2 {
                    ttft = Some(started.elapsed());
                }
            }
            let usage = sse_json(&body).last().unwrap()["usage"].clone();
            samples.push((ttft.unwrap_or(Duration::ZERO), usage));
        }
        for (t, u) in &samples {
            println!(
                "{caching:?}: turn-2 TTFT {:.1} ms, prompt {} tokens, cached {}",
                t.as_secs_f64() * 1e3,
                u["prompt_tokens"],
                u["prompt_tokens_details"]["cached_tokens"]
            );
        }
    }
}
