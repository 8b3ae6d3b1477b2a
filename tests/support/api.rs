//! Shared by the server's tests (the engine on the CPU backend) and the CUDA crate's `gpu_api` test: issue
//! 12's API checks against a running `gptoss serve` of the tiny fixture model (random weights) at a base URL.
//! The person schema and its hand validator, strict tool arguments, Responses `text.format`, the sampling
//! controls, and the measurement of constrained decoding's inter-token time through `/metrics`.
#![allow(dead_code, clippy::unwrap_used)]

use std::time::Instant;

use serde_json::{json, Value};

/// The model name the test servers answer to.
pub const MODEL: &str = "tiny";

pub async fn post(url: &str, body: &Value) -> (u16, String) {
    let r = reqwest::Client::new()
        .post(url)
        .json(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

pub fn schema() -> Value {
    json!({"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 6},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "ok": {"type": "boolean"},
        "color": {"enum": ["red", "green", "blue"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 3}, "maxItems": 2}},
        "required": ["name", "age", "ok", "color", "tags"], "additionalProperties": false})
}

/// Checks `v` against [`schema`] by hand (the Python client test uses the `jsonschema` package).
pub fn valid(v: &Value) -> bool {
    let Some(o) = v.as_object() else {
        return false;
    };
    o.len() == 5
        && o["name"].as_str().is_some_and(|s| s.chars().count() <= 6)
        && o["age"].as_i64().is_some_and(|a| (0..=120).contains(&a))
        && o["ok"].is_boolean()
        && ["red", "green", "blue"].contains(&o["color"].as_str().unwrap_or(""))
        && o["tags"].as_array().is_some_and(|t| {
            t.len() <= 2
                && t.iter()
                    .all(|s| s.as_str().is_some_and(|s| s.chars().count() <= 3))
        })
}

/// The content of a chat stream's choice 0 and its finish reason (checks the `[DONE]` end).
pub fn streamed_content(body: &str) -> (String, Option<String>) {
    let (mut content, mut finish) = (String::new(), None);
    let data: Vec<&str> = body
        .split("\n\n")
        .filter_map(|b| b.lines().find_map(|l| l.strip_prefix("data: ")))
        .collect();
    assert_eq!(data.last(), Some(&"[DONE]"), "{body}");
    for d in &data[..data.len() - 1] {
        let c: Value = serde_json::from_str(d).unwrap();
        for ch in c["choices"].as_array().into_iter().flatten() {
            content.push_str(ch["delta"]["content"].as_str().unwrap_or(""));
            if let Some(f) = ch["finish_reason"].as_str() {
                finish = Some(f.to_string());
            }
        }
    }
    (content, finish)
}

/// Strict tool arguments under tool_choice "required" (the model must call; it may reason first): the
/// arguments of seeds 20..23 parse and validate.
pub async fn strict_tool_arguments_validate(base: &str) {
    let url = format!("{base}/v1/chat/completions");
    let tool = json!({"type": "function", "function": {"name": "set_person", "strict": true,
        "parameters": schema()}});
    for seed in 20..23 {
        let req = json!({"model": MODEL, "messages": [{"role": "user", "content": "Call it."}], "seed": seed,
            "max_tokens": 3000, "tools": [tool], "tool_choice": "required"});
        let (status, body) = post(&url, &req).await;
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["choices"][0]["finish_reason"], "tool_calls", "{body}");
        let call = &v["choices"][0]["message"]["tool_calls"][0]["function"];
        assert_eq!(call["name"], "set_person");
        let args: Value = serde_json::from_str(call["arguments"].as_str().unwrap()).unwrap();
        assert!(valid(&args), "{args}");
    }
}

/// The Responses API's `text.format` json_schema: the message output parses and validates.
pub async fn responses_text_format_validates(base: &str) {
    let req = json!({"model": MODEL, "input": "Describe a person.", "max_output_tokens": 3000, "seed": 5,
        "text": {"format": {"type": "json_schema", "name": "person", "schema": schema(), "strict": true}}});
    let (status, body) = post(&format!("{base}/v1/responses"), &req).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let msg = v["output"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["type"] == "message")
        .unwrap();
    let parsed: Value = serde_json::from_str(msg["content"][0]["text"].as_str().unwrap()).unwrap();
    assert!(valid(&parsed), "{parsed}");
}

/// A `/v1/completions` request for 12 tokens of "Once upon a time" at temperature 1, with `extra`'s fields.
pub fn completion(extra: Value) -> Value {
    let mut req =
        json!({"model": MODEL, "prompt": "Once upon a time", "max_tokens": 12, "temperature": 1.0});
    for (k, v) in extra.as_object().unwrap() {
        req[k] = v.clone();
    }
    req
}

/// The text of choice `i` of a completion response.
pub fn choice_text(body: &str, i: usize) -> String {
    let v: Value = serde_json::from_str(body).unwrap();
    v["choices"][i]["text"].as_str().unwrap().to_string()
}

/// `/v1/completions`' sampling controls: `top_k = 1` is greedy whatever the seed; seeded sampling repeats
/// itself; `logit_bias` +100 forces token `q` (which must decode to "Q"); `n = 3` gives three choices, choice
/// i sampled with seed + i, usage summed; frequency, presence and repetition penalties change a sampled
/// continuation; `min_tokens` with `ignore_eos` gives exactly `max_tokens`.
pub async fn sampling_controls_work(base: &str, q: u32) {
    let url = format!("{base}/v1/completions");
    let (ask, text) = (completion, choice_text);
    let (_, greedy) = post(&url, &ask(json!({"temperature": 0}))).await;
    for seed in 0..3 {
        let (s, body) = post(&url, &ask(json!({"top_k": 1, "seed": seed}))).await;
        assert_eq!(s, 200, "{body}");
        assert_eq!(text(&body, 0), text(&greedy, 0));
    }
    let (_, a) = post(&url, &ask(json!({"seed": 4}))).await;
    let (_, b) = post(&url, &ask(json!({"seed": 4}))).await;
    assert_eq!(text(&a, 0), text(&b, 0));
    let (s, body) = post(
        &url,
        &ask(json!({"logit_bias": {q.to_string(): 100}, "seed": 3})),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(text(&body, 0), "Q".repeat(12));
    let (s, body) = post(&url, &ask(json!({"n": 3, "seed": 7}))).await;
    assert_eq!(s, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["choices"].as_array().unwrap().len(), 3);
    assert_eq!(v["usage"]["completion_tokens"], 36);
    let (_, one) = post(&url, &ask(json!({"seed": 8}))).await;
    assert_eq!(
        text(&body, 1),
        text(&one, 0),
        "choice i samples with seed + i"
    );
    let (_, plain) = post(&url, &ask(json!({"seed": 9, "max_tokens": 40}))).await;
    let (_, pen) = post(
        &url,
        &ask(json!({"seed": 9, "max_tokens": 40, "frequency_penalty": 2.0})),
    )
    .await;
    assert_ne!(text(&plain, 0), text(&pen, 0));
    let (s, rep) = post(
        &url,
        &ask(json!({"seed": 9, "max_tokens": 40, "presence_penalty": -2.0, "repetition_penalty": 1.5})),
    )
    .await;
    assert_eq!(s, 200, "{rep}");
    assert_ne!(text(&plain, 0), text(&rep, 0));
    let (s, body) = post(&url, &ask(json!({"ignore_eos": true, "min_tokens": 12}))).await;
    assert_eq!(s, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (
            v["usage"]["completion_tokens"].as_u64(),
            v["choices"][0]["finish_reason"].as_str()
        ),
        (Some(12), Some("length"))
    );
}

/// A `/metrics` series' value.
pub fn scraped(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{series} ")))
        .unwrap()
        .parse()
        .unwrap()
}

/// Constrained decoding's time per step through the server at `base` (public `/metrics`, model "m"):
/// `/v1/completions` with a JSON schema (every token masked) and without, greedy, 48 tokens, 1 and 64
/// streams at once, three rounds; prints `{label}round R: ...` lines with the mean time between a stream's
/// tokens (the inter-token histogram of `/metrics`). Asserts only that every request succeeds.
pub async fn measure_constrained_inter_token(base: &str, label: &str) {
    let schema = json!({"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string"}}}, "required": ["name", "age", "tags"],
        "additionalProperties": false});
    let client = reqwest::Client::new();
    let scrape = || async {
        let text = client
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        (
            scraped(&text, "gptoss_inter_token_latency_seconds_sum"),
            scraped(&text, "gptoss_inter_token_latency_seconds_count"),
        )
    };
    for round in 0..3 {
        for streams in [1usize, 64] {
            for constrained in [false, true] {
                let (sum0, n0) = scrape().await;
                let started = Instant::now();
                let handles: Vec<_> = (0..streams)
                    .map(|i| {
                        let mut body = json!({"model": "m", "prompt": format!("Person {i}:"),
                            "max_tokens": 48, "temperature": 0, "ignore_eos": true});
                        if constrained {
                            body["response_format"] = json!({"type": "json_schema",
                                "json_schema": {"name": "p", "schema": schema}});
                            body["ignore_eos"] = json!(false);
                        }
                        let (client, url) = (client.clone(), format!("{base}/v1/completions"));
                        tokio::spawn(async move {
                            let r = client.post(url).json(&body).send().await.unwrap();
                            assert_eq!(r.status(), 200);
                            let v: Value = r.json().await.unwrap();
                            v["usage"]["completion_tokens"].as_u64().unwrap()
                        })
                    })
                    .collect();
                let mut tokens = 0;
                for h in handles {
                    tokens += h.await.unwrap();
                }
                let wall = started.elapsed().as_secs_f64();
                let (sum1, n1) = scrape().await;
                let itl_ms = (sum1 - sum0) / (n1 - n0).max(1.0) * 1e3;
                println!(
                    "{label}round {round}: {streams:>2} stream(s), {}: {tokens} tokens in {wall:.2} s, mean inter-token {itl_ms:.3} ms ({:.3} ms per token per stream)",
                    if constrained { "json_schema" } else { "free       " },
                    itl_ms / streams as f64
                );
            }
        }
    }
}
