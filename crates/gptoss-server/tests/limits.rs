//! The server's limits on clients (issue 13), each against the behaviour the audit reproduced: a body
//! that never completes, idle and half-sent connections, more connections than the cap, shutdown with
//! requests in progress, a tool schema that renders to millions of tokens, metrics labels taken from
//! client paths, and error responses without an OpenAI body.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use gptoss_server::{AppState, ConnLimits, MetricsAccess, ServerConfig};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A running server and its shutdown switch.
struct Running {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start(config: ServerConfig, context_tokens: usize) -> Running {
    let (engine, _) = fake_engine(context_tokens, |p| {
        let text = String::from_utf8_lossy(&tokenizer().decode_bytes(p).unwrap()).into_owned();
        if text.contains("hold") {
            Script::Hold
        } else {
            Script::Tokens(tokenizer().encode("ok").unwrap())
        }
    });
    let state = AppState::new(engine, tokenizer(), config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let done = tokio::spawn(gptoss_server::serve(listener, state, async {
        let _ = rx.await;
    }));
    Running {
        addr,
        stop: Some(tx),
        done,
    }
}

fn short(limits: ConnLimits) -> ServerConfig {
    ServerConfig {
        connections: limits,
        ..config()
    }
}

fn seconds(header: u64, body: u64, idle: u64) -> ConnLimits {
    ConnLimits {
        header_timeout: Duration::from_secs(header),
        body_timeout: Duration::from_secs(body),
        keep_alive_timeout: Duration::from_secs(idle),
        ..ConnLimits::default()
    }
}

/// Reads until the server closes the connection (or `limit` passes: then `None`).
async fn read_to_close(s: &mut TcpStream, limit: Duration) -> Option<String> {
    let mut out = Vec::new();
    match tokio::time::timeout(limit, s.read_to_end(&mut out)).await {
        Ok(_) => Some(String::from_utf8_lossy(&out).into_owned()),
        Err(_) => None,
    }
}

fn chat_body(user: &str) -> String {
    json!({"model": MODEL, "messages": [{"role": "user", "content": user}]}).to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_that_never_completes_gets_408_and_the_connection_closes() {
    let server = start(short(seconds(30, 1, 30)), 2048).await;
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    let body = chat_body("hi");
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&body.as_bytes()[..body.len() - 1])
        .await
        .unwrap();
    let reply = read_to_close(&mut s, Duration::from_secs(20)).await;
    let reply = reply.expect("the connection stayed open past the body timeout");
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(reply.contains("did not arrive within 1 s"), "{reply}");
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_and_half_sent_connections_are_closed() {
    let server = start(short(seconds(2, 30, 1)), 2048).await;
    let mut idle = Vec::new();
    for _ in 0..50 {
        idle.push(TcpStream::connect(server.addr).await.unwrap());
    }
    let mut half = TcpStream::connect(server.addr).await.unwrap();
    half.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    // A kept-alive connection after one request.
    let mut kept = TcpStream::connect(server.addr).await.unwrap();
    kept.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    let n = kept.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    for s in idle.iter_mut().chain([&mut half, &mut kept]) {
        assert!(
            read_to_close(s, Duration::from_secs(20)).await.is_some(),
            "a connection stayed open"
        );
    }
}

/// Sends a chat request that the fake engine holds (it never finishes) and leaves it in progress.
async fn busy_connection(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let body = chat_body("hold");
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body.as_bytes()).await.unwrap();
    s
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_past_the_cap_get_503_and_are_closed() {
    let limits = ConnLimits {
        max_connections: 4,
        ..seconds(30, 30, 30)
    };
    let server = start(short(limits), 2048).await;
    let mut open = Vec::new();
    for _ in 0..4 {
        open.push(busy_connection(server.addr).await);
    }
    // The accept loop sees connections in order, and the requests get under way: only then the fifth.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut extra = TcpStream::connect(server.addr).await.unwrap();
    let reply = read_to_close(&mut extra, Duration::from_secs(10))
        .await
        .expect("the connection past the cap stayed open");
    assert!(reply.starts_with("HTTP/1.1 503"), "{reply}");
    let body = reply.split("\r\n\r\n").nth(1).unwrap();
    let v: Value = serde_json::from_str(body).unwrap();
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("4 connections"));
    // A slot frees when a connection closes.
    drop(open.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = reqwest::get(format!("http://{}/health", server.addr))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// Idle connections cannot lock clients out: at the cap, a new connection takes the slot of the one idle
/// the longest, so `/health` answers at once (the audit's 1,000 idle connections had it refused until
/// their header timeout ran out).
#[tokio::test(flavor = "multi_thread")]
async fn idle_connections_give_way_at_the_cap() {
    let limits = ConnLimits {
        max_connections: 4,
        ..seconds(60, 60, 60)
    };
    let server = start(short(limits), 2048).await;
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(TcpStream::connect(server.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..3 {
        let started = std::time::Instant::now();
        let r = tokio::time::timeout(
            Duration::from_secs(1),
            reqwest::get(format!("http://{}/health", server.addr)),
        )
        .await
        .expect("/health did not answer within a second at the cap")
        .unwrap();
        assert_eq!(r.status(), 200);
        assert!(started.elapsed() < Duration::from_secs(1));
    }
    // The oldest idle connections were closed to make room.
    let mut closed = 0;
    for s in &mut idle {
        if read_to_close(s, Duration::from_millis(500)).await.is_some() {
            closed += 1;
        }
    }
    assert!(closed >= 1, "no idle connection gave way");
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_closes_idle_connections_and_drops_the_rest_at_the_deadline() {
    let limits = ConnLimits {
        shutdown_timeout: Duration::from_secs(1),
        ..seconds(60, 60, 60)
    };
    let mut server = start(short(limits), 2048).await;
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    let url = format!("http://{}/v1/chat/completions", server.addr);
    let held = tokio::spawn(async move {
        reqwest::Client::new()
            .post(url)
            .header("content-type", "application/json")
            .body(chat_body("hold"))
            .send()
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = server.stop.take().unwrap().send(());
    let finished = tokio::time::timeout(Duration::from_secs(20), &mut server.done).await;
    assert!(
        finished.is_ok(),
        "serve did not return after the shutdown deadline"
    );
    assert!(read_to_close(&mut idle, Duration::from_secs(5))
        .await
        .is_some());
    // The held request's connection was dropped: its client sees an error, not a hang.
    let r = tokio::time::timeout(Duration::from_secs(10), held).await;
    assert!(r.is_ok_and(|r| r.unwrap().is_err()));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tool_schema_rendering_past_the_context_is_refused() {
    let server = start(config(), 4096).await;
    let mut schema = json!({"type": "string"});
    // 55 levels: the body stays within serde_json's nesting limit of 128.
    for i in 0..55 {
        schema = json!({"type": "object", "properties": {format!("p{i}"): schema, "x": {"type": "number"}}});
    }
    let tools: Vec<Value> = (0..60)
        .map(|i| json!({"type": "function", "function": {"name": format!("f{i}"), "parameters": schema}}))
        .collect();
    let body =
        json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "tools": tools});
    let url = format!("http://{}/v1/chat/completions", server.addr);
    let (status, text) = post(&url, &body).await;
    assert_eq!(status, 400, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["error"]["code"], "context_length_exceeded", "{text}");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("more than 4095"));
    let r = reqwest::get(format!("http://{}/health", server.addr))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// Every non-comment line of a scrape is `name{labels} value` with a numeric value.
fn check_scrape(text: &str) {
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ').unwrap();
        assert!(value.parse::<f64>().is_ok(), "{line}");
        if let Some((_, labels)) = series.split_once('{') {
            assert!(
                labels.ends_with('}') && labels.matches('"').count() % 2 == 0,
                "{line}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_labels_are_routes_never_client_paths() {
    for key in [None, Some("sekret")] {
        let cfg = ServerConfig {
            api_key: key.map(str::to_string),
            metrics_access: MetricsAccess::Public,
            ..config()
        };
        let server = start(cfg, 2048).await;
        let base = format!("http://{}", server.addr);
        for i in 0..20 {
            let url = format!("{base}/v1/models/evil%22%7D9e99%23{i}");
            let r = reqwest::get(&url).await.unwrap();
            assert!(r.status() == 404 || r.status() == 401, "{}", r.status());
        }
        let text = reqwest::get(format!("{base}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        check_scrape(&text);
        assert!(!text.contains("evil"), "{text}");
        let series = text
            .lines()
            .filter(|l| l.starts_with("gptoss_requests_total{"))
            .count();
        assert_eq!(series, 1, "{text}");
        assert!(text.contains("endpoint=\"/v1/models/{id}\""), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn rejections_below_the_handlers_get_an_openai_body() {
    let server = start(config(), 2048).await;
    let base = format!("http://{}", server.addr);
    // Not UTF-8 once percent-decoded: the path extractor's own 400.
    let r = reqwest::get(format!("{base}/v1/models/%FF%FE"))
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(v["error"]["message"].is_string());
}

/// Requests hyper itself cannot parse (a garbled request line, a header without a colon, headers past
/// hyper's size limit) get hyper's 4xx with an OpenAI error body, not an empty one, and the connection
/// closes; a good request on a fresh connection still works.
#[tokio::test(flavor = "multi_thread")]
async fn requests_hyper_cannot_parse_get_an_openai_body() {
    let server = start(config(), 2048).await;
    let huge = format!(
        "GET /health HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(600_000)
    );
    for raw in [
        "BLAH\x01 / HTTP/1.1\r\nhost: x\r\n\r\n".to_string(),
        "GET /health HTTP/1.1\r\nthis header has no colon\r\n\r\n".to_string(),
        huge,
    ] {
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        let _ = s.write_all(raw.as_bytes()).await;
        let reply = read_to_close(&mut s, Duration::from_secs(10))
            .await
            .expect("the connection stayed open");
        assert!(reply.starts_with("HTTP/1.1 4"), "{reply}");
        let body = reply.split("\r\n\r\n").nth(1).unwrap_or_default();
        let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {reply}"));
        assert_eq!(v["error"]["type"], "invalid_request_error", "{reply}");
        assert!(v["error"]["message"].as_str().unwrap().contains("HTTP/1.1"));
    }
    let r = reqwest::get(format!("http://{}/health", server.addr))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oversized_declared_body_is_refused_before_it_is_read() {
    let server = start(config(), 2048).await;
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    let head =
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 999999999999\r\n\r\n";
    s.write_all(head.as_bytes()).await.unwrap();
    let reply = read_to_close(&mut s, Duration::from_secs(10))
        .await
        .expect("open after 413");
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
}

/// A schema nested past what can be parsed is an error naming it, never silently left out of the
/// prompt (the raw text is only parsed when rendered).
#[tokio::test(flavor = "multi_thread")]
async fn a_schema_too_deep_to_parse_is_an_error_not_dropped() {
    let server = start(config(), 4096).await;
    let deep = format!("{}1{}", "[".repeat(300), "]".repeat(300));
    let body = format!(
        r#"{{"model": "{MODEL}", "messages": [{{"role": "user", "content": "hi"}}],
            "tools": [{{"type": "function", "function": {{"name": "f", "parameters": {deep}}}}}]}}"#
    );
    let r = reqwest::Client::new()
        .post(format!("http://{}/v1/chat/completions", server.addr))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("tools[0].function.parameters"), "{msg}");
    assert_eq!(v["error"]["param"], "tools");
}
