//! The router: endpoints, the API-key check on `/v1/*`, the body size limit, OpenAI errors for
//! unknown routes and methods, and request counting for `/metrics`.

use std::future::Future;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::error::{ApiError, ApiResult};
use crate::metrics::ServerGauges;
use crate::params::Body;
use crate::{chat, completions, responses, AppState};

/// The API's router over `state`.
pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.config.max_body_bytes;
    let v1 = Router::new()
        .route("/v1/chat/completions", post(chat_route))
        .route("/v1/completions", post(completions_route))
        .route("/v1/responses", post(responses_route))
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .merge(v1)
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

async fn auth(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    if let Some(key) = &state.config.api_key {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(key.as_str()) {
            state.metrics.request(request.uri().path(), 401);
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(request).await
}

/// Reads the body (413 over the limit, 400 when it is not a JSON object), runs `f`, counts the result.
async fn with_body<F, Fut>(
    state: Arc<AppState>,
    endpoint: &str,
    body: Result<Bytes, BytesRejection>,
    f: F,
) -> Response
where
    F: FnOnce(Arc<AppState>, Body) -> Fut,
    Fut: Future<Output = ApiResult<Response>>,
{
    let parsed = match body {
        Ok(bytes) => Body::parse(&bytes),
        Err(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            Err(ApiError::too_large(state.config.max_body_bytes))
        }
        Err(r) => Err(ApiError::invalid(format!(
            "cannot read the body: {}",
            r.body_text()
        ))),
    };
    let response = match parsed {
        Ok(body) => f(state.clone(), body)
            .await
            .unwrap_or_else(IntoResponse::into_response),
        Err(e) => e.into_response(),
    };
    state.metrics.request(endpoint, response.status().as_u16());
    response
}

async fn chat_route(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    with_body(state, "/v1/chat/completions", body, chat::handle).await
}

async fn completions_route(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    with_body(state, "/v1/completions", body, completions::handle).await
}

async fn responses_route(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    with_body(state, "/v1/responses", body, responses::handle).await
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
    if id == state.config.model_name {
        Json(model_json(&state)).into_response()
    } else {
        ApiError::not_found(
            format!("the model {id:?} does not exist"),
            "model_not_found",
        )
        .into_response()
    }
}

async fn health() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let gauges = ServerGauges {
        queued: state.admission.queued(),
        running: state.admission.running(),
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
