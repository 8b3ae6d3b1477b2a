//! Model output that does not follow Harmony, fed by a scripted engine through every answer builder
//! (chat completions and Responses, JSON and streamed): it is never an error and never dropped. What
//! the parser cannot place comes back as content, as it was generated, and `harmony_malformed: true`
//! says so (absent when the output was well formed).

mod common;

use common::*;
use serde_json::{json, Value};

/// Encodes text with `<|special|>` tokens inserted by id.
fn toks(text: &str) -> Vec<u32> {
    let tok = tokenizer();
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("<|") {
        out.extend(tok.encode(&rest[..start]).unwrap());
        let end = rest[start..].find("|>").unwrap() + start + 2;
        out.push(tok.special_id(&rest[start..end]).unwrap());
        rest = &rest[end..];
    }
    out.extend(tok.encode(rest).unwrap());
    out
}

/// A generated sequence and what every endpoint must make of it.
struct Case {
    /// Also the word in the user's message that picks the script.
    name: &'static str,
    generated: Vec<u32>,
    reasoning: &'static str,
    content: &'static str,
    malformed: bool,
}

fn cases() -> Vec<Case> {
    // An id the model can sample (the engine's vocabulary is 512 rows) that the tokenizer lacks.
    let outside = tokenizer().vocab_size() as u32 + 3;
    assert!(outside < 512);
    let mut with_outside = toks("<|channel|>final<|message|>A");
    with_outside.push(outside);
    with_outside.extend(toks("B<|return|>"));
    let case = |name, generated: &str, reasoning, content, malformed| Case {
        name,
        generated: toks(generated),
        reasoning,
        content,
        malformed,
    };
    vec![
        case(
            "wellformed",
            "<|channel|>analysis<|message|>Think.<|end|><|start|>assistant<|channel|>final<|message|>Fine.<|return|>",
            "Think.",
            "Fine.",
            false,
        ),
        // Text between messages, where a <|start|> belongs.
        case(
            "stray",
            "<|channel|>analysis<|message|>Think.<|end|>loose text<|return|>",
            "Think.",
            "loose text",
            true,
        ),
        // A header that cannot be parsed (a channel without a name), then its content.
        case(
            "header",
            "<|channel|><|message|>all of it<|end|>",
            "",
            "<|channel|><|message|>all of it",
            true,
        ),
        // A second message from an unknown role.
        case(
            "role",
            "<|channel|>final<|message|>A<|end|><|start|>bogus<|message|>B<|return|>",
            "",
            "A<|start|>bogus<|message|>B",
            true,
        ),
        // A second header cut off by the end of the output.
        case(
            "cut",
            "<|channel|>final<|message|>A<|end|><|start|>assistant<|channel|>fin",
            "",
            "A<|start|>assistant<|channel|>fin",
            true,
        ),
        Case {
            name: "outside",
            generated: with_outside,
            reasoning: "",
            content: "AB",
            malformed: true,
        },
    ]
}

async fn server() -> String {
    let (engine, _) = fake_engine(2048, |prompt| {
        let text = tokenizer().decode(prompt).unwrap();
        let last = text
            .rsplit("<|start|>user")
            .next()
            .unwrap_or("")
            .to_string();
        let case = cases()
            .into_iter()
            .find(|c| last.contains(&format!("case {}<", c.name)))
            .unwrap();
        Script::Tokens(case.generated)
    });
    serve(engine, config()).await
}

/// The `harmony_malformed` flag of an object: true, or absent (never false or another value).
fn flag(v: &Value) -> bool {
    match &v["harmony_malformed"] {
        Value::Null => false,
        Value::Bool(true) => true,
        other => panic!("harmony_malformed: {other}"),
    }
}

async fn chat_json(base: &str, c: &Case) {
    let body = json!({"model": MODEL, "messages": [{"role": "user", "content": format!("case {}", c.name)}]});
    let (status, text) = post(&format!("{base}/v1/chat/completions"), &body).await;
    assert_eq!(status, 200, "{}: {text}", c.name);
    let v: Value = serde_json::from_str(&text).unwrap();
    let choice = &v["choices"][0];
    assert_eq!(
        choice["message"]["content"], c.content,
        "{}: {text}",
        c.name
    );
    let reasoning = choice["message"]["reasoning_content"]
        .as_str()
        .unwrap_or("");
    assert_eq!(reasoning, c.reasoning, "{}", c.name);
    assert_eq!(flag(choice), c.malformed, "{}: {text}", c.name);
    assert_eq!(choice["finish_reason"], "stop");
}

async fn chat_stream(base: &str, c: &Case) {
    let body = json!({"model": MODEL, "stream": true,
        "messages": [{"role": "user", "content": format!("case {}", c.name)}]});
    let (status, text) = post(&format!("{base}/v1/chat/completions"), &body).await;
    assert_eq!(status, 200, "{}: {text}", c.name);
    let (mut content, mut reasoning) = (String::new(), String::new());
    let chunks = sse_json(&text);
    for chunk in &chunks {
        let choice = &chunk["choices"][0];
        content.push_str(choice["delta"]["content"].as_str().unwrap_or(""));
        reasoning.push_str(choice["delta"]["reasoning_content"].as_str().unwrap_or(""));
        // The flag comes with the finish, nowhere else.
        if choice["finish_reason"].is_null() {
            assert!(!flag(choice), "{}: {chunk}", c.name);
        }
    }
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "stop", "{}", c.name);
    assert_eq!(flag(&last["choices"][0]), c.malformed, "{}: {text}", c.name);
    assert_eq!(
        (content.as_str(), reasoning.as_str()),
        (c.content, c.reasoning),
        "{}",
        c.name
    );
}

/// The reasoning and message text of a response's output items.
fn output_text(response: &Value) -> (String, String) {
    let (mut reasoning, mut content) = (String::new(), String::new());
    for item in response["output"].as_array().unwrap() {
        let text = item["content"][0]["text"].as_str().unwrap_or("");
        match item["type"].as_str() {
            Some("reasoning") => reasoning.push_str(text),
            Some("message") => content.push_str(text),
            other => panic!("unexpected item {other:?}"),
        }
    }
    (reasoning, content)
}

async fn responses_json(base: &str, c: &Case) {
    let body = json!({"model": MODEL, "input": format!("case {}", c.name)});
    let (status, text) = post(&format!("{base}/v1/responses"), &body).await;
    assert_eq!(status, 200, "{}: {text}", c.name);
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["status"], "completed", "{}", c.name);
    let (reasoning, content) = output_text(&v);
    assert_eq!(
        (content.as_str(), reasoning.as_str()),
        (c.content, c.reasoning),
        "{}",
        c.name
    );
    assert_eq!(flag(&v), c.malformed, "{}: {text}", c.name);
    // The stored response says the same.
    let stored: Value = reqwest::get(format!("{base}/v1/responses/{}", v["id"].as_str().unwrap()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(flag(&stored), c.malformed, "{}: {stored}", c.name);
}

async fn responses_stream(base: &str, c: &Case) {
    let body = json!({"model": MODEL, "input": format!("case {}", c.name), "stream": true});
    let (status, text) = post(&format!("{base}/v1/responses"), &body).await;
    assert_eq!(status, 200, "{}: {text}", c.name);
    let events = sse_events(&text);
    let mut content = String::new();
    let mut completed = None;
    for (name, data) in &events {
        let v: Value = serde_json::from_str(data).unwrap();
        match name.as_deref() {
            Some("response.output_text.delta") => content.push_str(v["delta"].as_str().unwrap()),
            Some("response.completed") => completed = Some(v["response"].clone()),
            Some("error") => panic!("{}: {data}", c.name),
            _ => {}
        }
    }
    let response =
        completed.unwrap_or_else(|| panic!("{}: no response.completed in {text}", c.name));
    assert_eq!(content, c.content, "{}", c.name);
    let (reasoning, done_content) = output_text(&response);
    assert_eq!(
        (done_content.as_str(), reasoning.as_str()),
        (c.content, c.reasoning),
        "{}",
        c.name
    );
    assert_eq!(flag(&response), c.malformed, "{}: {text}", c.name);
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_output_is_returned_as_content_and_flagged() {
    let base = server().await;
    for c in cases() {
        chat_json(&base, &c).await;
        chat_stream(&base, &c).await;
        responses_json(&base, &c).await;
        responses_stream(&base, &c).await;
    }
}
