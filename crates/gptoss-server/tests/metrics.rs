//! `/metrics` after real requests on the tiny model (CPU): the latency histograms (time to first
//! token, inter-token, end to end) count every choice and every token, their buckets are cumulative,
//! their sums are bounded by what the client measured, and the token counters agree with `usage`.

mod common;

use std::time::Instant;

use common::*;
use serde_json::{json, Value};

/// A histogram as scraped: `(le, cumulative count)` of its finite buckets, `+Inf`, sum, count.
struct Scraped {
    buckets: Vec<(f64, u64)>,
    inf: u64,
    sum: f64,
    count: u64,
}

fn histogram(text: &str, name: &str) -> Scraped {
    let mut h = Scraped {
        buckets: Vec::new(),
        inf: u64::MAX,
        sum: f64::NAN,
        count: u64::MAX,
    };
    for line in text.lines() {
        let (series, value) = line.rsplit_once(' ').unwrap();
        if let Some(le) = series
            .strip_prefix(&format!("{name}_bucket{{le=\""))
            .and_then(|r| r.strip_suffix("\"}"))
        {
            let n: u64 = value.parse().unwrap();
            match le {
                "+Inf" => h.inf = n,
                le => h.buckets.push((le.parse().unwrap(), n)),
            }
        } else if series == format!("{name}_sum") {
            h.sum = value.parse().unwrap();
        } else if series == format!("{name}_count") {
            h.count = value.parse().unwrap();
        }
    }
    assert!(
        text.contains(&format!("# TYPE {name} histogram")),
        "{name} is not a histogram in\n{text}"
    );
    assert!(
        !h.buckets.is_empty() && h.count != u64::MAX,
        "{name} in\n{text}"
    );
    // Bounds increase, counts are cumulative, +Inf holds every sample.
    for w in h.buckets.windows(2) {
        assert!(w[0].0 < w[1].0 && w[0].1 <= w[1].1, "{name}: {w:?}");
    }
    assert!(h.buckets.last().unwrap().1 <= h.inf, "{name}");
    assert_eq!(h.inf, h.count, "{name}");
    h
}

fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{series} ")))
        .unwrap_or_else(|| panic!("{series} not in\n{text}"))
        .parse()
        .unwrap()
}

/// What one request cost as the client saw it.
struct Sent {
    wall_seconds: f64,
    choices: u64,
    prompt_tokens: u64,
    completion_tokens: u64,
}

async fn send(url: &str, body: Value, choices: u64) -> Sent {
    let started = Instant::now();
    let (status, text) = post(url, &body).await;
    let wall_seconds = started.elapsed().as_secs_f64();
    assert_eq!(status, 200, "{text}");
    let usage = if body["stream"] == json!(true) {
        sse_json(&text).last().unwrap()["usage"].clone()
    } else {
        serde_json::from_str::<Value>(&text).unwrap()["usage"].clone()
    };
    Sent {
        wall_seconds,
        choices,
        prompt_tokens: usage["prompt_tokens"].as_u64().unwrap(),
        completion_tokens: usage["completion_tokens"].as_u64().unwrap(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn latency_histograms_count_every_choice_and_token() {
    let base = serve(real_engine(4, 1024), config()).await;
    let empty = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "gptoss_time_to_first_token_seconds",
        "gptoss_inter_token_latency_seconds",
        "gptoss_request_duration_seconds",
    ] {
        assert_eq!(histogram(&empty, name).count, 0, "{name}");
    }

    let chat = format!("{base}/v1/chat/completions");
    let chat_body = |text: &str, extra: Value| {
        let mut b = json!({"model": MODEL, "messages": [{"role": "user", "content": text}],
            "max_tokens": 6, "seed": 3});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    let sent = [
        send(&chat, chat_body("hello there", json!({})), 1).await,
        send(&chat, chat_body("how are you", json!({"max_tokens": 9})), 1).await,
        send(
            &chat,
            chat_body(
                "stream two",
                json!({"stream": true, "n": 2, "max_tokens": 5,
                "stream_options": {"include_usage": true}}),
            ),
            2,
        )
        .await,
        send(
            &format!("{base}/v1/completions"),
            json!({"model": MODEL, "prompt": "once upon", "max_tokens": 4}),
            1,
        )
        .await,
    ];
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let choices: u64 = sent.iter().map(|s| s.choices).sum();
    let tokens: u64 = sent.iter().map(|s| s.completion_tokens).sum();
    // Every choice here generates at least one token.
    assert!(sent.iter().all(|s| s.completion_tokens >= s.choices));

    let ttft = histogram(&text, "gptoss_time_to_first_token_seconds");
    let itl = histogram(&text, "gptoss_inter_token_latency_seconds");
    let e2e = histogram(&text, "gptoss_request_duration_seconds");
    assert_eq!(ttft.count, choices);
    assert_eq!(e2e.count, choices);
    // One gap between each two consecutive tokens of a choice.
    assert_eq!(itl.count, tokens - choices);
    // Each choice's latencies lie within its request's wall time as the client measured it.
    let wall: f64 = sent.iter().map(|s| s.wall_seconds * s.choices as f64).sum();
    assert!(
        ttft.sum > 0.0 && ttft.sum <= e2e.sum,
        "{} {}",
        ttft.sum,
        e2e.sum
    );
    assert!(
        itl.sum > 0.0 && itl.sum <= e2e.sum,
        "{} {}",
        itl.sum,
        e2e.sum
    );
    assert!(e2e.sum <= wall, "{} > {wall}", e2e.sum);

    // Token counters agree with `usage` (the prompt counted once per choice).
    assert_eq!(
        value(&text, "gptoss_generation_tokens_total"),
        tokens as f64
    );
    let prompt: u64 = sent.iter().map(|s| s.prompt_tokens * s.choices).sum();
    assert_eq!(value(&text, "gptoss_prompt_tokens_total"), prompt as f64);
    for (labels, n) in [
        ("endpoint=\"/v1/chat/completions\",status=\"200\"", 3.0),
        ("endpoint=\"/v1/completions\",status=\"200\"", 1.0),
    ] {
        assert_eq!(
            value(&text, &format!("gptoss_requests_total{{{labels}}}")),
            n
        );
    }
    assert!(value(&text, "gptoss_engine_steps_total") >= tokens as f64 / 2.0);
}
