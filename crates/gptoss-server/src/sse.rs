//! Server-sent events: a handler's task sends events into a channel and the response body streams
//! them. When the client goes away the body (and the receiver) is dropped, the task's next send
//! fails (or its wait on [`EventSender::closed`] ends), and the task drops its generations, which
//! cancels them in the engine.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tokio::sync::mpsc;

/// The sending side: JSON events, named events and the `[DONE]` marker.
pub struct EventSender(mpsc::Sender<Event>);

impl EventSender {
    /// Sends `data: {json}`; false when the client is gone.
    pub async fn json(&self, value: &Value) -> bool {
        self.0
            .send(Event::default().data(value.to_string()))
            .await
            .is_ok()
    }

    /// Sends `event: {name}` + `data: {json}` (the responses API's typed events).
    pub async fn named(&self, name: &str, value: &Value) -> bool {
        let event = Event::default().event(name).data(value.to_string());
        self.0.send(event).await.is_ok()
    }

    /// Resolves when the client is gone (the response body was dropped).
    pub async fn closed(&self) {
        self.0.closed().await
    }

    /// Sends `data: [DONE]`.
    pub async fn done(&self) -> bool {
        self.0.send(Event::default().data("[DONE]")).await.is_ok()
    }
}

struct Events(mpsc::Receiver<Event>);

impl futures_core::Stream for Events {
    type Item = Result<Event, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx).map(|e| e.map(Ok))
    }
}

/// A sender and the streaming response that carries what it sends.
pub fn channel() -> (EventSender, Response) {
    let (tx, rx) = mpsc::channel(64);
    let response = Sse::new(Events(rx))
        .keep_alive(KeepAlive::default())
        .into_response();
    (EventSender(tx), response)
}
