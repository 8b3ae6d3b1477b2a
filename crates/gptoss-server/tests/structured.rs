//! Structured outputs, log-probabilities and sampling controls on the real engine (tiny fixture model,
//! random weights, CPU backend): every constrained answer parses and matches its schema, over several
//! seeds, plain and streamed, as a final answer and as strict tool arguments; `top_k=1` is greedy;
//! `logit_bias` +100 forces its token; `n` gives that many choices; log-probabilities agree with the
//! model's logits.

mod common;

use common::api::{
    choice_text, completion, responses_text_format_validates, sampling_controls_work, schema,
    streamed_content, strict_tool_arguments_validate, valid,
};
use common::*;
use serde_json::{json, Value};

const CTX: usize = 4096;

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
    strict_tool_arguments_validate(&base).await;
    responses_text_format_validates(&base).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sampling_controls_do_what_they_say() {
    let base = serve(real_engine(4, CTX), config()).await;
    sampling_controls_work(&base, tokenizer().encode("Q").unwrap()[0]).await;
    // echo puts the prompt first.
    let url = format!("{base}/v1/completions");
    let (_, greedy) = post(&url, &completion(json!({"temperature": 0}))).await;
    let (_, body) = post(&url, &completion(json!({"echo": true, "temperature": 0}))).await;
    assert_eq!(
        choice_text(&body, 0),
        format!("Once upon a time{}", choice_text(&greedy, 0))
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
