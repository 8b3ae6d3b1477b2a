//! The router: endpoints, the API-key check on `/v1/*` (and `/metrics`), reading bodies under the size
//! limit and the body timeout, OpenAI errors for unknown routes and methods and for any error response
//! a layer below produced without one, request counting for `/metrics` by route, never by the path
//! a client sent, and the request log (`request_log.rs`).

use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http_body_util::BodyExt;
use serde_json::json;

use crate::error::{ApiError, ApiResult};
use crate::metrics::ServerGauges;
use crate::pipeline::{self, Endpoint};
use crate::request_log::RequestLog;
use crate::{AppState, MetricsAccess};

/// The API's router over `state`.
pub fn router(state: Arc<AppState>) -> Router {
    let v1 = Router::new()
        .route("/v1/chat/completions", post(chat_route))
        .route("/v1/completions", post(completions_route))
        .route("/v1/responses", post(responses_route))
        .route("/v1/responses/{id}", get(stored_response))
        .route("/v1/models", get(models))
        // vLLM's paths, behind the API key like /v1/*.
        .route("/tokenize", post(tokenize_route))
        .route("/detokenize", post(detokenize_route))
        .route("/v1/models/{id}", get(model));
    let v1 = if state.config.api_key.is_some() {
        v1.route_layer(middleware::from_fn_with_state(state.clone(), auth))
    } else {
        v1
    };
    let metrics_route = Router::new().route("/metrics", get(metrics));
    let metrics_route = match (&state.config.api_key, state.config.metrics_access) {
        (Some(_), MetricsAccess::ApiKey) => {
            metrics_route.route_layer(middleware::from_fn_with_state(state.clone(), auth))
        }
        _ => metrics_route,
    };
    Router::new()
        .merge(v1)
        .merge(metrics_route)
        .route("/health", get(health))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::map_response(openai_error_body))
        // Outermost: the log line gives the status the client got.
        .layer(middleware::from_fn(crate::request_log::log_requests))
        .with_state(state)
}

/// True when `given` is `key`, in time that depends on the key's length only (never on where the
/// first differing byte is).
fn same_key(given: &[u8], key: &[u8]) -> bool {
    let mut diff = given.len() ^ key.len();
    for (i, k) in key.iter().enumerate() {
        diff |= usize::from(k ^ given.get(i).copied().unwrap_or(!k));
    }
    std::hint::black_box(diff) == 0
}

async fn auth(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    if let Some(key) = &state.config.api_key {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !given.is_some_and(|g| same_key(g.as_bytes(), key.as_bytes())) {
            // Counted by route: a client's path (and its ids) never becomes a label.
            let route = request
                .extensions()
                .get::<MatchedPath>()
                .map_or("other", |p| route_label(p.as_str()));
            state.metrics.request(route, 401);
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(request).await
}

/// The `/metrics` label of a matched route: one of a fixed set.
fn route_label(route: &str) -> &'static str {
    const ROUTES: [&str; 9] = [
        "/tokenize",
        "/detokenize",
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/responses",
        "/v1/responses/{id}",
        "/v1/models",
        "/v1/models/{id}",
        "/metrics",
    ];
    ROUTES.into_iter().find(|r| *r == route).unwrap_or("other")
}

/// Reads a body: 413 past the limit (from `Content-Length` before reading, else as it arrives), 408
/// when it has not all arrived within the body timeout.
async fn read_body(state: &AppState, request: Request) -> ApiResult<Vec<u8>> {
    let limit = state.config.max_body_bytes;
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::too_large(limit));
    }
    let mut body = request.into_body();
    let read = async {
        // Grown as bytes arrive, never reserved from what the client claims.
        let mut out = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame =
                frame.map_err(|e| ApiError::invalid(format!("cannot read the body: {e}")))?;
            if let Ok(data) = frame.into_data() {
                if out.len() + data.len() > limit {
                    return Err(ApiError::too_large(limit));
                }
                out.extend_from_slice(&data);
            }
        }
        Ok(out)
    };
    let timeout = state.config.connections.body_timeout;
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| ApiError::body_timeout(timeout.as_secs_f64()))?
}

/// A generating endpoint: admitted (counted before the body is read), body read, rendered, answered.
async fn generate(state: Arc<AppState>, endpoint: Endpoint, request: Request) -> Response {
    let log = request.extensions().get::<Arc<RequestLog>>().cloned();
    let result = async {
        let ticket = state.admission.admit()?.with_log(log);
        let body = read_body(&state, request).await?;
        pipeline::respond(state.clone(), endpoint, ticket, body).await
    }
    .await;
    let response = result.unwrap_or_else(IntoResponse::into_response);
    let status = response.status().as_u16();
    state.metrics.request(endpoint.path(), status);
    response
}

async fn chat_route(State(state): State<Arc<AppState>>, request: Request) -> Response {
    generate(state, Endpoint::Chat, request).await
}

async fn completions_route(State(state): State<Arc<AppState>>, request: Request) -> Response {
    generate(state, Endpoint::Completions, request).await
}

async fn responses_route(State(state): State<Arc<AppState>>, request: Request) -> Response {
    generate(state, Endpoint::Responses, request).await
}

/// `/tokenize` and `/detokenize`: small CPU work, done inline under the body limit.
async fn tokens_route(
    state: Arc<AppState>,
    request: Request,
    route: &'static str,
    f: fn(&AppState, &[u8]) -> ApiResult<serde_json::Value>,
) -> Response {
    let response = match read_body(&state, request).await {
        Ok(body) => match f(&state, &body) {
            Ok(v) => Json(v).into_response(),
            Err(e) => e.into_response(),
        },
        Err(e) => e.into_response(),
    };
    state.metrics.request(route, response.status().as_u16());
    response
}

async fn tokenize_route(State(state): State<Arc<AppState>>, request: Request) -> Response {
    tokens_route(state, request, "/tokenize", crate::tokenize::tokenize).await
}

async fn detokenize_route(State(state): State<Arc<AppState>>, request: Request) -> Response {
    tokens_route(state, request, "/detokenize", crate::tokenize::detokenize).await
}

async fn stored_response(
    State(state): State<Arc<AppState>>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    let response = match crate::responses::stored(&state, &id) {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    };
    state
        .metrics
        .request("/v1/responses/{id}", response.status().as_u16());
    response
}

fn model_json(state: &AppState) -> serde_json::Value {
    json!({"id": state.config.model_name, "object": "model", "created": state.created(), "owned_by": "gptoss"})
}

async fn models(State(state): State<Arc<AppState>>) -> Response {
    state.metrics.request("/v1/models", 200);
    Json(json!({"object": "list", "data": [model_json(&state)]})).into_response()
}

async fn model(
    State(state): State<Arc<AppState>>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    let response = if id == state.config.model_name {
        Json(model_json(&state)).into_response()
    } else {
        ApiError::not_found(
            format!("the model {id:?} does not exist"),
            "model_not_found",
        )
        .into_response()
    };
    state
        .metrics
        .request("/v1/models/{id}", response.status().as_u16());
    response
}

async fn health() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let gauges = ServerGauges {
        queued: state.admission.queued(),
        running: state.admission.running(),
        stored_responses: state.responses.len(),
    };
    let text = state
        .metrics
        .render(&state.engine.stats().snapshot(), gauges);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn not_found(request: Request) -> Response {
    let msg = format!("no route {} {}", request.method(), request.uri().path());
    ApiError::not_found(msg, "unknown_url").into_response()
}

async fn method_not_allowed(request: Request) -> Response {
    let mut e = ApiError::invalid(format!(
        "method {} is not allowed on {}",
        request.method(),
        request.uri().path()
    ));
    e.status = StatusCode::METHOD_NOT_ALLOWED;
    e.into_response()
}

/// Gives an OpenAI error object to any error response that lacks one (an extractor's rejection such as
/// a malformed percent-encoding in a path, a layer's plain-text error), keeping its status and text.
async fn openai_error_body(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (_, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 16 << 10)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let reason = status.canonical_reason().unwrap_or("error");
    let mut e = if status.is_server_error() {
        ApiError::internal(if text.is_empty() { reason.into() } else { text })
    } else {
        ApiError::invalid(if text.is_empty() { reason.into() } else { text })
    };
    e.status = status;
    let mut out = e.into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::TOO_MANY_REQUESTS {
        out.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from(1));
    }
    out
}

/// A plain-text error response, as a layer below the handlers makes one.
#[cfg(test)]
fn plain(status: StatusCode, text: &'static str) -> Response {
    (status, axum::body::Body::from(text)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_comparison_is_exact() {
        assert!(same_key(b"sekret", b"sekret"));
        for wrong in [
            &b"sekreT"[..],
            b"sekre",
            b"sekrets",
            b"",
            b"\xff\xff\xff\xff\xff\xff",
        ] {
            assert!(!same_key(wrong, b"sekret"), "{wrong:?}");
        }
    }

    #[tokio::test]
    async fn plain_error_responses_get_an_openai_body() {
        let r = openai_error_body(plain(StatusCode::BAD_REQUEST, "Invalid URL: bad utf-8")).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        let b = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["error"]["message"], "Invalid URL: bad utf-8");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        let r = openai_error_body(plain(StatusCode::PAYLOAD_TOO_LARGE, "")).await;
        let b = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["error"]["message"], "Payload Too Large");
    }
}
