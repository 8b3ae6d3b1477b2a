//! One request's way through the server, the same for HTTP and the batch runner: admitted (counted,
//! or 429), body read, parsed and rendered on the render pool (the bytes and the typed request are
//! dropped there; only the prompt's tokens queue), a generation slot awaited, then generated.

use std::sync::Arc;

use axum::response::Response;
use serde_json::Value;

use crate::admission::{Permit, Ticket};
use crate::chat::ChatParams;
use crate::completions::CompletionParams;
use crate::error::{ApiError, ApiResult};
use crate::responses::ResponsesParams;
use crate::{chat, completions, responses, AppState};

/// A generating endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `/v1/chat/completions`.
    Chat,
    /// `/v1/completions`.
    Completions,
    /// `/v1/responses`.
    Responses,
}

impl Endpoint {
    /// The endpoint of a URL path.
    pub fn from_path(path: &str) -> Option<Self> {
        match path {
            "/v1/chat/completions" => Some(Endpoint::Chat),
            "/v1/completions" => Some(Endpoint::Completions),
            "/v1/responses" => Some(Endpoint::Responses),
            _ => None,
        }
    }

    /// Its URL path.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Chat => "/v1/chat/completions",
            Endpoint::Completions => "/v1/completions",
            Endpoint::Responses => "/v1/responses",
        }
    }
}

/// A request after rendering: tokens and answer settings, nothing of its body.
enum Prepared {
    Chat(ChatParams),
    Completions(CompletionParams),
    Responses(ResponsesParams),
}

/// Parses and renders `body` on the render pool.
async fn prepare(state: &Arc<AppState>, endpoint: Endpoint, body: Vec<u8>) -> ApiResult<Prepared> {
    let s = state.clone();
    state
        .render
        .run(move || match endpoint {
            Endpoint::Chat => chat::prepare(&s, &body).map(Prepared::Chat),
            Endpoint::Completions => completions::prepare(&s, &body).map(Prepared::Completions),
            Endpoint::Responses => responses::prepare(&s, &body).map(Prepared::Responses),
        })
        .await
}

/// The HTTP path after admission and body reading: render, wait for a turn, answer.
pub(crate) async fn respond(
    state: Arc<AppState>,
    endpoint: Endpoint,
    ticket: Ticket,
    body: Vec<u8>,
) -> ApiResult<Response> {
    let prepared = prepare(&state, endpoint, body).await?;
    let permit: Permit = ticket.turn().await?;
    match prepared {
        Prepared::Chat(p) => chat::respond(state, p, permit).await,
        Prepared::Completions(p) => completions::respond(state, p, permit).await,
        Prepared::Responses(p) => responses::respond(state, p, permit).await,
    }
}

/// Runs one request body against an endpoint without HTTP (the batch runner): `url` is
/// `/v1/chat/completions`, `/v1/completions` or `/v1/responses`; streaming is ignored.
pub async fn run_endpoint(state: &Arc<AppState>, url: &str, body: Vec<u8>) -> ApiResult<Value> {
    let endpoint = Endpoint::from_path(url).ok_or_else(|| {
        ApiError::param(
            "url",
            format!(
                "url: expected /v1/chat/completions, /v1/completions or /v1/responses, got {url:?}"
            ),
        )
    })?;
    let ticket = state.admission.admit()?;
    let prepared = prepare(state, endpoint, body).await?;
    let permit = ticket.turn().await?;
    match prepared {
        Prepared::Chat(p) => chat::complete(state, p, permit).await,
        Prepared::Completions(p) => completions::complete(state, p, permit).await,
        Prepared::Responses(p) => responses::complete(state, p, permit).await,
    }
}
