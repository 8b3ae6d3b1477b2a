//! Structured outputs, log-probabilities and sampling controls on the real engine (tiny fixture model,
//! random weights, CPU backend): every constrained answer parses and matches its schema, over several
//! seeds, plain and streamed, as a final answer and as strict tool arguments; `top_k=1` is greedy;
//! `logit_bias` +100 forces its token; `n` gives that many choices; log-probabilities agree with the
//! model's logits.

mod common;

use common::*;
use serde_json::{json, Value};

const CTX: usize = 4096;

fn schema() -> Value {
    json!({"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 6},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "ok": {"type": "boolean"},
        "color": {"enum": ["red", "green", "blue"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 3}, "maxItems": 2}},
        "required": ["name", "age", "ok", "color", "tags"], "additionalProperties": false})
}

/// Checks `v` against [`schema`] by hand (the Python client test uses the `jsonschema` package).
fn valid(v: &Value) -> bool {
    let o = match v.as_object() {
        Some(o) => o,
        None => return false,
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

#[tokio::test(flavor = "multi_thread")]
async fn json_schema_answers_parse_and_validate() {
    let base = serve(real_engine(4, CTX), config()).await;
    let url = format!("{base}/v1/chat/completions");
    for seed in 0..4 {
        let req = json!({"model": MODEL, "messages": [{"role": "user", "content": "Describe a person."}],
            "seed": seed, "temperature": 1.0, "max_tokens": 3000,
            "response_format": {"type": "json_schema", "json_schema": {"name": "person", "schema": schema(), "strict": true}}});
        let (status, body) = post(&url, &req).await;
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        let content = v["choices"][0]["message"]["content"].as_str().unwrap();
        let parsed: Value =
            serde_json::from_str(content).unwrap_or_else(|e| panic!("{content:?}: {e}"));
        assert!(valid(&parsed), "{parsed}");
    }
}

/// Concatenated content of a chat stream's choice 0, and its finish reason.
fn streamed_content(body: &str) -> (String, Option<String>) {
    let (mut content, mut finish) = (String::new(), None);
    for c in sse_json(body) {
        for ch in c["choices"].as_array().into_iter().flatten() {
            content.push_str(ch["delta"]["content"].as_str().unwrap_or(""));
            if let Some(f) = ch["finish_reason"].as_str() {
                finish = Some(f.to_string());
            }
        }
    }
    (content, finish)
}

#[tokio::test(flavor = "multi_thread")]
async fn streamed_json_and_strict_tool_arguments_validate() {
    let base = serve(real_engine(4, CTX), config()).await;
    let url = format!("{base}/v1/chat/completions");
    for seed in 10..13 {
        let req = json!({"model": MODEL, "messages": [{"role": "user", "content": "Describe a person."}],
            "seed": seed, "max_tokens": 3000, "stream": true,
            "response_format": {"type": "json_schema", "json_schema": {"name": "person", "schema": schema()}}});
        let (status, body) = post(&url, &req).await;
        assert_eq!(status, 200, "{body}");
        let (content, finish) = streamed_content(&body);
        assert_eq!(finish.as_deref(), Some("stop"), "{body}");
        let parsed: Value =
            serde_json::from_str(&content).unwrap_or_else(|e| panic!("{content:?}: {e}"));
        assert!(valid(&parsed), "{parsed}");
    }
    // json_object: any object.
    let req = json!({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "seed": 1,
        "max_tokens": 3000, "response_format": {"type": "json_object"}});
    let (status, body) = post(&url, &req).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let content = v["choices"][0]["message"]["content"].as_str().unwrap();
    // An unconstrained object may run long on random weights; a finished one must parse.
    if v["choices"][0]["finish_reason"] == "stop" {
        assert!(
            serde_json::from_str::<Value>(content).unwrap().is_object(),
            "{content}"
        );
    }
    // Strict tool arguments under tool_choice "required" (the model must call; it may reason first).
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
    // Responses text.format.
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

#[tokio::test(flavor = "multi_thread")]
async fn sampling_controls_do_what_they_say() {
    let base = serve(real_engine(4, CTX), config()).await;
    let url = format!("{base}/v1/completions");
    let ask = |extra: Value| {
        let mut req = json!({"model": MODEL, "prompt": "Once upon a time", "max_tokens": 12, "temperature": 1.0});
        for (k, v) in extra.as_object().unwrap() {
            req[k] = v.clone();
        }
        req
    };
    let text = |body: &str, i: usize| {
        let v: Value = serde_json::from_str(body).unwrap();
        v["choices"][i]["text"].as_str().unwrap().to_string()
    };
    // top_k = 1 is greedy whatever the seed and temperature.
    let (_, greedy) = post(&url, &ask(json!({"temperature": 0}))).await;
    for seed in 0..3 {
        let (s, body) = post(&url, &ask(json!({"top_k": 1, "seed": seed}))).await;
        assert_eq!(s, 200, "{body}");
        assert_eq!(text(&body, 0), text(&greedy, 0));
    }
    // logit_bias +100 forces its token (the byte 'Q').
    let q = tokenizer().encode("Q").unwrap()[0];
    let (s, body) = post(
        &url,
        &ask(json!({"logit_bias": {q.to_string(): 100}, "seed": 3})),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(text(&body, 0), "Q".repeat(12));
    // n = 3: three choices, different seeds, usage summed.
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
    // A frequency penalty of 2 changes a sampled continuation; presence -2 does too.
    let (_, plain) = post(&url, &ask(json!({"seed": 9, "max_tokens": 40}))).await;
    let (_, pen) = post(
        &url,
        &ask(json!({"seed": 9, "max_tokens": 40, "frequency_penalty": 2.0})),
    )
    .await;
    assert_ne!(text(&plain, 0), text(&pen, 0));
    // min_tokens with ignore_eos: exactly max_tokens.
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
    // echo puts the prompt first.
    let (_, body) = post(&url, &ask(json!({"echo": true, "temperature": 0}))).await;
    assert_eq!(
        text(&body, 0),
        format!("Once upon a time{}", text(&greedy, 0))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn top_logprobs_agree_with_the_model_logits() {
    let w = weights();
    let base = serve(real_engine(2, CTX), config()).await;
    let req = json!({"model": MODEL, "prompt": "The cat", "max_tokens": 4, "temperature": 0, "logprobs": 5});
    let (s, body) = post(&format!("{base}/v1/completions"), &req).await;
    assert_eq!(s, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let lp = &v["choices"][0]["logprobs"];
    let tok = tokenizer();
    let mut ids = tok.encode("The cat").unwrap();
    let mut model = tiny_model(&w, 1, CTX);
    for (i, got) in lp["token_logprobs"].as_array().unwrap().iter().enumerate() {
        // What `gptoss logits` prints: the last row's logits of the sequence so far.
        model
            .forward(&gptoss_engine::Batch::single(&ids, 0, model.solo_table()))
            .unwrap();
        let logits = model.logits(1).unwrap();
        let (lse, top) = gptoss_engine::sampler::log_softmax_top(&logits, 5);
        let (best, best_lp) = top[0];
        assert!(
            (got.as_f64().unwrap() - best_lp as f64).abs() < 1e-4,
            "{got} vs {best_lp}"
        );
        // Keyed by token text, as OpenAI's: tokens whose bytes print alike share a key.
        let tops = lp["top_logprobs"][i].as_object().unwrap();
        assert!((1..=5).contains(&tops.len()));
        for &(t, l) in &top {
            let text = String::from_utf8_lossy(tok.token_bytes(t).unwrap()).into_owned();
            let g = tops[&text].as_f64().unwrap();
            let lossy = |u: u32| String::from_utf8_lossy(tok.token_bytes(u).unwrap()).into_owned();
            let same_text = top.iter().filter(|&&(u, _)| lossy(u) == text).count();
            assert!(
                same_text > 1 || (g - l as f64).abs() < 1e-4,
                "{text}: {g} vs {l}"
            );
        }
        assert!(((logits[best as usize] - lse) - best_lp).abs() < 1e-5);
        ids.push(best);
    }
    // Chat: the content tokens' logprobs, with top alternatives.
    let req = json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3000, "seed": 1,
        "logprobs": true, "top_logprobs": 2, "response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": schema()}}});
    let (s, body) = post(&format!("{base}/v1/chat/completions"), &req).await;
    assert_eq!(s, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let content = v["choices"][0]["message"]["content"].as_str().unwrap();
    let entries = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    let bytes: Vec<u8> = entries
        .iter()
        .flat_map(|e| {
            e["bytes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b.as_u64().unwrap() as u8)
        })
        .collect();
    assert_eq!(String::from_utf8(bytes).unwrap(), content);
    assert!(entries
        .iter()
        .all(|e| e["top_logprobs"].as_array().unwrap().len() == 2
            && e["logprob"].as_f64().unwrap() <= 0.0));
}
