//! The request log: one `info` line per HTTP request, written once its response has been sent (a
//! stream's when the stream ends or the client goes away): method, path, status, prompt, cached and
//! completion tokens (summed over the `n` choices), and the milliseconds from its arrival.
//!
//! The line is written when the last holder of the request's [`RequestLog`] lets go of it: the
//! response body (until it has been sent) and the admission permit of its generations (until they
//! end), so the token counts are complete whichever ends last.

use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use http_body_util::BodyExt;

use crate::generation::Usage;

/// What the request log line of one request says.
#[derive(Debug)]
pub struct RequestLog {
    method: String,
    path: String,
    arrived: Instant,
    status: AtomicU16,
    prompt_tokens: AtomicUsize,
    cached_tokens: AtomicUsize,
    completion_tokens: AtomicUsize,
}

impl RequestLog {
    fn new(request: &Request) -> Self {
        RequestLog {
            method: request.method().to_string(),
            path: request.uri().path().to_string(),
            arrived: Instant::now(),
            status: AtomicU16::new(0),
            prompt_tokens: AtomicUsize::new(0),
            cached_tokens: AtomicUsize::new(0),
            completion_tokens: AtomicUsize::new(0),
        }
    }

    /// Adds a generation's tokens (each choice of an `n > 1` request adds its own; the prompt is
    /// counted once).
    pub fn add_usage(&self, usage: Usage) {
        self.prompt_tokens
            .fetch_max(usage.prompt_tokens, Ordering::Relaxed);
        self.cached_tokens
            .fetch_max(usage.cached_tokens, Ordering::Relaxed);
        self.completion_tokens
            .fetch_add(usage.completion_tokens, Ordering::Relaxed);
    }
}

impl Drop for RequestLog {
    fn drop(&mut self) {
        let get = |a: &AtomicUsize| a.load(Ordering::Relaxed);
        tracing::info!(
            method = %self.method,
            path = ?self.path,
            status = self.status.load(Ordering::Relaxed),
            prompt_tokens = get(&self.prompt_tokens),
            cached_tokens = get(&self.cached_tokens),
            completion_tokens = get(&self.completion_tokens),
            ms = self.arrived.elapsed().as_secs_f64() * 1e3,
            "request"
        );
    }
}

/// The middleware: gives the request its [`RequestLog`] (an extension the generating handlers hand
/// to their generations) and keeps it alive with the response body.
pub async fn log_requests(mut request: Request, next: Next) -> Response {
    let log = Arc::new(RequestLog::new(&request));
    request.extensions_mut().insert(log.clone());
    let response = next.run(request).await;
    log.status
        .store(response.status().as_u16(), Ordering::Relaxed);
    let (parts, body) = response.into_parts();
    // The closure owns a handle of the log, so the log lives as long as the body; sizes and the end of
    // the stream are the body's own.
    let body = body.map_frame(move |frame| {
        let _held = &log;
        frame
    });
    Response::from_parts(parts, Body::new(body))
}
