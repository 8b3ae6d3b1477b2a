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
        let t = std::time::Instant::now();
        let (status, body) = post(&url, &req).await;
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        let content = v["choices"][0]["message"]["content"].as_str().unwrap();
        eprintln!(
            "seed {seed}: {:?} in {:?}, usage {}, finish {}",
            content,
            t.elapsed(),
            v["usage"],
            v["choices"][0]["finish_reason"]
        );
        let parsed: Value =
            serde_json::from_str(content).unwrap_or_else(|e| panic!("{content:?}: {e}"));
        assert!(valid(&parsed), "{parsed}");
    }
}
