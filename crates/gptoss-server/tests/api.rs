//! The HTTP API against a scripted engine: chat (JSON and SSE) with reasoning, content and tool
//! calls parsed from scripted Harmony token streams, Harmony rendering of follow-ups, forced tool
//! choice, completions, responses, every error case with its status and body, auth, 429, limits.

mod common;

use std::sync::Arc;

use common::*;
use gptoss_server::conversation::{Conversation, ToolChoice, Turn};
use gptoss_tokenizer::harmony::{Effort, Harmony, ToolDescription};
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

const TOOL_CALL: &str = "<|channel|>analysis<|message|>Need weather.<|end|><|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{\"city\":\"Paris\"}<|call|>";
const ANSWER: &str = "<|channel|>analysis<|message|>Say hi.<|end|><|start|>assistant<|channel|>final<|message|>Hello world, hello<|return|>";

/// Scripts by what the prompt's last user message asks for.
fn scripted(prompt: &[u32]) -> Script {
    let text = String::from_utf8_lossy(&tokenizer().decode_bytes(prompt).unwrap()).into_owned();
    let last = text.rsplit("<|start|>user").next().unwrap_or("");
    if last.contains("linger") {
        Script::TokensThenHold(toks("<|channel|>final<|message|>Hel"))
    } else if last.contains("hold") {
        Script::Hold
    } else if last.contains("required") {
        Script::Tokens(toks(
            "<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{}<|call|>",
        ))
    } else if last.contains("forced") {
        Script::Tokens(toks("<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{\"x\": 1}<|call|>"))
    } else if last.contains("weather") {
        Script::Tokens(toks(TOOL_CALL))
    } else if last.contains("raw") {
        Script::Tokens(toks(" and more text"))
    } else {
        Script::Tokens(toks(ANSWER))
    }
}

async fn fake_server(config: gptoss_server::ServerConfig) -> (String, Arc<FakeLog>) {
    let (engine, prompts) = fake_engine(2048, scripted);
    (serve(engine, config).await, prompts)
}

fn weather_tool() -> Value {
    json!({"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string"}}, "required": ["city"]}}})
}

fn chat(user: &str) -> Value {
    json!({"model": MODEL, "messages": [{"role": "user", "content": user}], "temperature": 0})
}

#[tokio::test(flavor = "multi_thread")]
async fn chat_answer_and_tool_call() {
    let (base, _) = fake_server(config()).await;
    let url = format!("{base}/v1/chat/completions");
    let (status, body) = post(&url, &chat("hi")).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let msg = &v["choices"][0]["message"];
    assert_eq!(
        (msg["content"].as_str(), msg["reasoning_content"].as_str()),
        (Some("Hello world, hello"), Some("Say hi."))
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert!(msg.get("tool_calls").is_none());
    let n = toks(ANSWER).len();
    assert_eq!(v["usage"]["completion_tokens"], n);
    assert_eq!(
        v["usage"]["total_tokens"].as_u64().unwrap(),
        v["usage"]["prompt_tokens"].as_u64().unwrap() + n as u64
    );
    assert_eq!(
        (v["object"].as_str(), v["model"].as_str()),
        (Some("chat.completion"), Some(MODEL))
    );

    let mut req = chat("what is the weather in Paris?");
    req["tools"] = json!([weather_tool()]);
    let (status, body) = post(&url, &req).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let msg = &v["choices"][0]["message"];
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(msg["content"], Value::Null);
    assert_eq!(msg["reasoning_content"], "Need weather.");
    let call = &msg["tool_calls"][0];
    assert_eq!(
        (call["type"].as_str(), call["function"]["name"].as_str()),
        (Some("function"), Some("get_weather"))
    );
    assert_eq!(call["function"]["arguments"], "{\"city\":\"Paris\"}");
    assert!(call["id"].as_str().unwrap().starts_with("call_"));
}

#[tokio::test(flavor = "multi_thread")]
async fn chat_streaming_deltas() {
    let (base, _) = fake_server(config()).await;
    let url = format!("{base}/v1/chat/completions");
    let mut req = chat("weather please");
    req["tools"] = json!([weather_tool()]);
    req["stream"] = json!(true);
    req["stream_options"] = json!({"include_usage": true});
    let (status, body) = post(&url, &req).await;
    assert_eq!(status, 200, "{body}");
    let chunks = sse_json(&body);
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let (mut reasoning, mut args, mut names, mut finish) =
        (String::new(), String::new(), vec![], None);
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        let Some(choice) = c["choices"].get(0) else {
            continue;
        };
        let d = &choice["delta"];
        reasoning += d["reasoning_content"].as_str().unwrap_or("");
        for call in d["tool_calls"].as_array().into_iter().flatten() {
            assert_eq!(call["index"], 0);
            names.extend(call["function"]["name"].as_str().map(str::to_string));
            args += call["function"]["arguments"].as_str().unwrap_or("");
        }
        if let Some(f) = choice["finish_reason"].as_str() {
            finish = Some(f.to_string());
        }
        assert!(d.get("content").is_none_or(|c| c == ""), "{d}");
    }
    assert_eq!(
        (reasoning.as_str(), args.as_str(), names),
        (
            "Need weather.",
            "{\"city\":\"Paris\"}",
            vec!["get_weather".to_string()]
        )
    );
    assert_eq!(finish.as_deref(), Some("tool_calls"));
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["completion_tokens"], toks(TOOL_CALL).len());

    // Content streams in pieces that add up to the answer; stop strings cut it.
    let mut req = chat("hi");
    req["stream"] = json!(true);
    req["stop"] = json!([", hel"]);
    let chunks = sse_json(&post(&url, &req).await.1);
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, "Hello world");
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "stop"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn follow_up_renders_reasoning_and_tool_results_the_harmony_way() {
    let (base, prompts) = fake_server(config()).await;
    let tools = json!([weather_tool()]);
    let req = json!({"model": MODEL, "tools": tools, "reasoning_effort": "high", "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "reasoning_content": "Need weather.", "content": null,
         "tool_calls": [{"id": "call_7", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_7", "content": "{\"temp\": 21}"},
    ]});
    let (status, body) = post(&format!("{base}/v1/chat/completions"), &req).await;
    assert_eq!(status, 200, "{body}");
    let expected = Conversation {
        instructions: Some("Be brief.".into()),
        tools: vec![ToolDescription {
            name: "get_weather".into(),
            description: "Weather in a city".into(),
            parameters: Some(weather_tool()["function"]["parameters"].clone()),
        }],
        effort: Effort::High,
        turns: vec![
            Turn::User("Weather in Paris?".into()),
            Turn::Reasoning("Need weather.".into()),
            Turn::ToolCall {
                id: "call_7".into(),
                name: "get_weather".into(),
                arguments: "{\"city\":\"Paris\"}".into(),
            },
            Turn::ToolResult {
                name: "get_weather".into(),
                output: "{\"temp\": 21}".into(),
            },
        ],
        tool_choice: ToolChoice::Auto,
    };
    let harmony = Harmony::new(tokenizer()).unwrap();
    let want = expected.render(&harmony, usize::MAX).unwrap().tokens;
    assert_eq!(prompts.prompts.lock().unwrap().last().unwrap(), &want);
    // The rendered text keeps the analysis before the tool call and shows the tool result message.
    let text = String::from_utf8_lossy(&tokenizer().decode_bytes(&want).unwrap()).into_owned();
    for piece in [
        "Reasoning: high",
        "# Instructions\n\nBe brief.",
        "// Weather in a city\ntype get_weather = (_: {\ncity: string,\nunit?: string,\n}) => any;",
        "<|start|>assistant<|channel|>analysis<|message|>Need weather.<|end|>",
        "<|start|>assistant to=functions.get_weather<|channel|>commentary <|constrain|>json<|message|>{\"city\":\"Paris\"}<|call|>",
        "<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>{\"temp\": 21}<|end|>",
    ] {
        assert!(text.contains(piece), "missing {piece:?} in {text}");
    }
    assert!(text.ends_with("<|start|>assistant"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn named_and_required_tool_choice_are_enforced_by_a_grammar() {
    let (base, prompts) = fake_server(config()).await;
    let mut req = chat("forced");
    req["tools"] = json!([weather_tool()]);
    req["tool_choice"] = json!({"type": "function", "function": {"name": "get_weather"}});
    let (status, body) = post(&format!("{base}/v1/chat/completions"), &req).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let call = &v["choices"][0]["message"]["tool_calls"][0]["function"];
    assert_eq!(
        (call["name"].as_str(), call["arguments"].as_str()),
        (Some("get_weather"), Some("{\"x\": 1}"))
    );
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    // No header is forced (the model may reason first): the output grammar enforces the call.
    let prompt = prompts.prompts.lock().unwrap().last().unwrap().clone();
    assert!(prompt.ends_with(&toks("<|start|>assistant")[..]));
    assert_eq!(prompts.constrained.lock().unwrap().last(), Some(&true));

    // tool_choice "required": any of the tools, also by grammar.
    req["messages"] = json!([{"role": "user", "content": "required"}]);
    req["tool_choice"] = json!("required");
    let (status, body) = post(&format!("{base}/v1/chat/completions"), &req).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let call = &v["choices"][0]["message"]["tool_calls"][0]["function"];
    assert_eq!(
        (call["name"].as_str(), call["arguments"].as_str()),
        (Some("get_weather"), Some("{}"))
    );
    assert_eq!(prompts.constrained.lock().unwrap().last(), Some(&true));

    // tool_choice "none" leaves the tools out of the prompt, and nothing is constrained.
    req["tool_choice"] = json!("none");
    post(&format!("{base}/v1/chat/completions"), &req).await;
    assert_eq!(prompts.constrained.lock().unwrap().last(), Some(&false));
    let prompt = prompts.prompts.lock().unwrap().last().unwrap().clone();
    let text = String::from_utf8_lossy(&tokenizer().decode_bytes(&prompt).unwrap()).into_owned();
    assert!(!text.contains("get_weather"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn completions_and_responses() {
    let (base, prompts) = fake_server(config()).await;
    let (status, body) = post(
        &format!("{base}/v1/completions"),
        &json!({"model": MODEL, "prompt": "raw text", "max_tokens": 3}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let want = tokenizer().decode(&toks(" and more text")[..3]).unwrap();
    assert_eq!(
        (
            v["choices"][0]["text"].as_str(),
            v["choices"][0]["finish_reason"].as_str()
        ),
        (Some(want.as_str()), Some("length"))
    );
    assert_eq!(
        prompts.prompts.lock().unwrap().last().unwrap(),
        &tokenizer().encode("raw text").unwrap()
    );

    let url = format!("{base}/v1/responses");
    let req = json!({"model": MODEL, "input": "weather?", "instructions": "Be brief.", "reasoning": {"effort": "low"},
        "tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}}}]});
    let (status, body) = post(&url, &req).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "completed");
    let out = v["output"].as_array().unwrap();
    assert_eq!(out[0]["type"], "reasoning");
    assert_eq!(out[0]["content"][0]["text"], "Need weather.");
    assert_eq!(
        (out[1]["type"].as_str(), out[1]["name"].as_str()),
        (Some("function_call"), Some("get_weather"))
    );
    assert_eq!(out[1]["arguments"], "{\"city\":\"Paris\"}");
    let call_id = out[1]["call_id"].as_str().unwrap().to_string();

    // Follow-up with the call and its output; streamed as typed events.
    let req = json!({"model": MODEL, "stream": true, "input": [
        {"role": "user", "content": "weather?"},
        {"type": "function_call", "call_id": call_id, "name": "get_weather", "arguments": "{\"city\":\"Paris\"}"},
        {"type": "function_call_output", "call_id": call_id, "output": "sunny"},
        {"role": "user", "content": "thanks"}]});
    let (status, body) = post(&url, &req).await;
    assert_eq!(status, 200, "{body}");
    let events = sse_events(&body);
    let names: Vec<&str> = events.iter().map(|e| e.0.as_deref().unwrap()).collect();
    assert_eq!(names.first(), Some(&"response.created"));
    assert_eq!(names.last(), Some(&"response.completed"));
    let text: String = events
        .iter()
        .filter(|e| e.0.as_deref() == Some("response.output_text.delta"))
        .map(|e| {
            serde_json::from_str::<Value>(&e.1).unwrap()["delta"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(text, "Hello world, hello");
    let done: Value = serde_json::from_str(&events.last().unwrap().1).unwrap();
    assert_eq!(
        done["response"]["output"][1]["content"][0]["text"],
        "Hello world, hello"
    );
    let prompt = prompts.prompts.lock().unwrap().last().unwrap().clone();
    let rendered =
        String::from_utf8_lossy(&tokenizer().decode_bytes(&prompt).unwrap()).into_owned();
    assert!(rendered.contains("<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>sunny<|end|>"), "{rendered}");
}

/// (body, status, expected `param` or `code`, a piece of the message).
fn bad_requests() -> Vec<(Value, u16, &'static str, &'static str)> {
    let long = "word ".repeat(2000);
    vec![
        (
            json!({"messages": [{"role": "user", "content": "hi"}]}),
            400,
            "model",
            "model: required",
        ),
        (
            json!({"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}),
            404,
            "model_not_found",
            "gpt-4",
        ),
        (
            json!({"model": MODEL, "messages": []}),
            400,
            "messages",
            "must not be empty",
        ),
        (
            json!({"model": MODEL}),
            400,
            "messages",
            "messages: required",
        ),
        (
            json!({"model": MODEL, "messages": "hi"}),
            400,
            "messages",
            "expected an array",
        ),
        (
            json!({"model": MODEL, "messages": [{"content": "hi"}]}),
            400,
            "messages",
            "messages[0]: missing field `role`",
        ),
        (
            json!({"model": MODEL, "messages": [{"role": "wizard", "content": "hi"}]}),
            400,
            "messages",
            "wizard",
        ),
        (
            json!({"model": MODEL, "messages": [{"role": "user", "content": 5}]}),
            400,
            "",
            "messages[0].content",
        ),
        (
            json!({"model": MODEL, "messages": [{"role": "tool", "content": "x", "tool_call_id": "nope"}]}),
            400,
            "messages",
            "tool_call_id",
        ),
        (
            json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}),
            400,
            "temperature",
            "expected a number",
        ),
        (
            json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "temperature": -1}),
            400,
            "temperature",
            "[0, 2]",
        ),
        (
            json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "top_p": 0}),
            400,
            "top_p",
            "(0, 1]",
        ),
        (
            json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": -5}),
            400,
            "max_tokens",
            "between 1",
        ),
        (
            json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1_000_000_000_000u64}),
            400,
            "max_tokens",
            "between 1",
        ),
        (
            json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 0}),
            400,
            "max_completion_tokens",
            "between 1",
        ),
        (
            json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": "yes"}),
            400,
            "stream",
            "a boolean",
        ),
        (
            json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stop": [1]}),
            400,
            "stop",
            "strings",
        ),
        (
            json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "reasoning_effort": "max"}),
            400,
            "reasoning_effort",
            "max",
        ),
        (
            json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "tool_choice": "sometimes"}),
            400,
            "tool_choice",
            "sometimes",
        ),
        (
            json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "tool_choice": "required"}),
            400,
            "tool_choice",
            "no tools",
        ),
        (
            json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "tools": [weather_tool()],
            "tool_choice": {"type": "function", "function": {"name": "other"}}}),
            400,
            "tool_choice",
            "other",
        ),
        (
            json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]}),
            400,
            "tools",
            "tools[0]",
        ),
        (
            json!({"model": MODEL, "messages": [{"role": "user", "content": long}]}),
            400,
            "context_length_exceeded",
            "context",
        ),
        (
            json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "presence_penalty": 2.5}),
            400,
            "presence_penalty",
            "out of range",
        ),
        (
            json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "top_logprobs": 3}),
            400,
            "top_logprobs",
            "needs `logprobs: true`",
        ),
        (
            json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "response_format": {"type": "yaml"}}),
            400,
            "response_format",
            "yaml",
        ),
        (
            json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "frobnicate": 1}),
            400,
            "frobnicate",
            "not a field this server supports",
        ),
        (
            json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "n": 9}),
            400,
            "n",
            "between 1 and 8",
        ),
        (
            json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "logit_bias": {"99999": 5}}),
            400,
            "logit_bias",
            "not a token id",
        ),
        (
            json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "audio": {"voice": "x"}}),
            400,
            "audio",
            "not supported",
        ),
        (
            json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                   "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "if": {}}}}}),
            400,
            "response_format",
            "cannot be enforced",
        ),
        (json!([1, 2]), 400, "", "JSON object"),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn every_bad_input_gets_an_openai_error() {
    let (base, _) = fake_server(config()).await;
    let url = format!("{base}/v1/chat/completions");
    for (body, status, field, msg) in bad_requests() {
        let (got, text) = post(&url, &body).await;
        assert_eq!(got, status, "{body} -> {text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        let e = &v["error"];
        assert!(
            e["message"].as_str().unwrap().contains(msg),
            "{body} -> {text}"
        );
        assert!(e["type"].is_string(), "{text}");
        if !field.is_empty() {
            assert!(
                e["param"] == field || e["code"] == field,
                "{body} -> {text}"
            );
        }
    }
    let client = reqwest::Client::new();
    let r = client
        .post(&url)
        .header("content-type", "application/json")
        .body("{\"model\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("not valid JSON"));
    let r = client
        .get(format!("{base}/v1/nothing"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "unknown_url"
    );
    let r = client.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert!(r.json::<Value>().await.unwrap()["error"]["message"].is_string());
    for (path, body) in [
        ("/v1/completions", json!({"model": MODEL, "prompt": 5})),
        ("/v1/completions", json!({"model": MODEL, "prompt": ""})),
        ("/v1/responses", json!({"model": MODEL})),
        (
            "/v1/responses",
            json!({"model": MODEL, "input": [{"type": "function_call_output", "call_id": "x", "output": "y"}]}),
        ),
        (
            "/v1/responses",
            json!({"model": MODEL, "input": "hi", "max_output_tokens": -1}),
        ),
    ] {
        let (status, text) = post(&format!("{base}{path}"), &body).await;
        assert_eq!(status, 400, "{path} {body} -> {text}");
        assert!(serde_json::from_str::<Value>(&text).unwrap()["error"]["message"].is_string());
    }
    // The server still serves.
    assert_eq!(post(&url, &chat("hi")).await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn auth_limits_models_health_metrics() {
    let mut cfg = config();
    cfg.api_key = Some("sekret".into());
    cfg.max_body_bytes = 2048;
    let (base, _) = fake_server(cfg).await;
    let client = reqwest::Client::new();
    let url = format!("{base}/v1/chat/completions");
    let r = client.post(&url).json(&chat("hi")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "invalid_api_key"
    );
    let r = client
        .post(&url)
        .bearer_auth("wrong")
        .json(&chat("hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = client
        .post(&url)
        .bearer_auth("sekret")
        .json(&chat("hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let big = chat(&"x".repeat(4096));
    let r = client
        .post(&url)
        .bearer_auth("sekret")
        .json(&big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert!(r.json::<Value>().await.unwrap()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("2048"));

    let models: Value = client
        .get(format!("{base}/v1/models"))
        .bearer_auth("sekret")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["data"][0]["id"], MODEL);
    assert_eq!(
        client
            .get(format!("{base}/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // With a key set, /metrics is behind it too (MetricsAccess::ApiKey, the default).
    let r = client.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let metrics = client
        .get(format!("{base}/metrics"))
        .bearer_auth("sekret")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "gptoss_requests_total{endpoint=\"/v1/chat/completions\",status=\"200\"} 1",
        "gptoss_queue_depth 0",
        "gptoss_generation_tokens_total",
        "gptoss_time_to_first_token_seconds_count 1",
        "gptoss_kv_blocks_used",
        "gptoss_spec_draft_tokens_total 0",
        "gptoss_spec_accepted_tokens_total 0",
    ] {
        assert!(metrics.contains(name), "{name} not in\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn full_queue_gets_429_with_retry_after() {
    let mut cfg = config();
    cfg.max_concurrency = 1;
    cfg.max_queue = 1;
    let (base, prompts) = fake_server(cfg).await;
    let url = format!("{base}/v1/chat/completions");
    // One generating (held by the engine), one waiting for a turn.
    let held = tokio::spawn({
        let url = url.clone();
        async move { post(&url, &chat("hold")).await }
    });
    while prompts.prompts.lock().unwrap().is_empty() {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let queued = tokio::spawn({
        let url = url.clone();
        async move { post(&url, &chat("hi")).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let r = reqwest::Client::new()
        .post(&url)
        .json(&chat("hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["type"],
        "rate_limit_error"
    );
    // The client of the held request goes away: its request is cancelled and the queued one runs.
    held.abort();
    let (status, _) = queued.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(prompts.prompts.lock().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_streaming_client_that_disconnects_is_cancelled() {
    let (base, log) = fake_server(config()).await;
    let mut req = chat("linger");
    req["stream"] = json!(true);
    let mut r = reqwest::Client::new()
        .post(format!("{base}/v1/chat/completions"))
        .json(&req)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut seen = String::new();
    while !seen.contains("{\"content\":\"H") {
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(10), r.chunk()).await;
        let chunk = chunk.unwrap_or_else(|_| panic!("no content chunk; got {seen}"));
        seen += &String::from_utf8_lossy(&chunk.unwrap().unwrap());
    }
    assert_eq!(*log.cancelled.lock().unwrap(), 0);
    drop(r);
    let start = std::time::Instant::now();
    while *log.cancelled.lock().unwrap() == 0 {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "no cancel reached the engine"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}
