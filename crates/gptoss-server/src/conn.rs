//! The accept loop: HTTP/1.1 connections served by hyper with the limits of [`ConnLimits`]. At
//! `max_connections`, a new connection takes the slot of the open one idle the longest (no request in
//! progress), so idle clients cannot lock others out; only when every open connection has a request in
//! progress does a new one get a 503 with an OpenAI error body and is closed at once; a
//! request head must arrive within `header_timeout` (hyper's timer, which also runs while a kept-alive
//! connection waits for its next request); a connection with no request in progress and no byte moved
//! for `keep_alive_timeout` is shut down. Shutdown stops accepting, asks every connection to finish
//! its current response and close, and drops whatever is left after `shutdown_timeout`.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tower_service::Service;

use crate::error::ApiError;
use crate::{AppState, ConnLimits};

/// Serves `listener` until `shutdown`, then drains (see the module doc).
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = state.config.connections.clone();
    let app = crate::router(state.clone());
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let registry = Arc::new(Registry::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors (or a connection reset before accept): wait a little
                        // rather than spin; never stop serving.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let start = Start {
                    limits: limits.clone(),
                    stop: stop_rx.clone(),
                    registry: registry.clone(),
                    app: app.clone(),
                };
                match slots.clone().try_acquire_owned() {
                    Ok(slot) => {
                        conns.spawn(start.run(slot, stream));
                    }
                    Err(_) if registry.evict_idlest() => {
                        // The evicted connection has no request in progress and closes at once.
                        let slots = slots.clone();
                        conns.spawn(async move {
                            let waited = tokio::time::timeout(EVICTION_WAIT, slots.acquire_owned()).await;
                            match waited {
                                Ok(Ok(slot)) => start.run(slot, stream).await,
                                _ => refuse(&stream, start.limits.max_connections),
                            }
                        });
                    }
                    Err(_) => refuse(&stream, limits.max_connections),
                }
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let deadline = tokio::time::sleep(limits.shutdown_timeout);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            next = conns.join_next() => if next.is_none() { break },
            () = &mut deadline => {
                tracing::warn!(open = conns.len(), "shutdown deadline: dropping connections still open");
                conns.abort_all();
                break;
            }
        }
    }
    Ok(())
}

/// Answers a connection past the cap with 503 and closes it, without waiting on the client: the
/// response is small enough for the socket buffer, and what does not fit is dropped.
fn refuse(stream: &TcpStream, max: usize) {
    let body = ApiError::unavailable(format!(
        "the server has its maximum of {max} connections open; retry later"
    ))
    .to_json()
    .to_string();
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         retry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.try_write(response.as_bytes());
}

/// How long a new connection at the cap waits for the slot of the idle connection it evicted.
const EVICTION_WAIT: Duration = Duration::from_secs(1);

/// An open connection as the registry sees it: its activity, and how to ask it to close.
type OpenConn = (Arc<Activity>, Arc<Notify>);

/// The open connections, so that the one idle the longest can be asked to close when the cap is reached.
#[derive(Default)]
struct Registry {
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, OpenConn>>,
}

impl Registry {
    fn add(&self, activity: Arc<Activity>, evict: Arc<Notify>) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut open) = self.open.lock() {
            open.insert(id, (activity, evict));
        }
        id
    }

    fn remove(&self, id: u64) {
        if let Ok(mut open) = self.open.lock() {
            open.remove(&id);
        }
    }

    /// Asks the connection idle the longest (no request in progress) to close, and forgets it so that
    /// it is not chosen twice; false when every open connection has a request in progress.
    fn evict_idlest(&self) -> bool {
        let Ok(mut open) = self.open.lock() else {
            return false;
        };
        let idlest = open
            .iter()
            .filter(|(_, (a, _))| a.in_flight.load(Ordering::Acquire) == 0)
            .min_by_key(|(_, (a, _))| a.last())
            .map(|(&id, _)| id);
        match idlest.and_then(|id| open.remove(&id)) {
            Some((_, evict)) => {
                evict.notify_one();
                true
            }
            None => false,
        }
    }
}

/// What a connection needs to start.
struct Start {
    limits: ConnLimits,
    stop: watch::Receiver<bool>,
    registry: Arc<Registry>,
    app: Router,
}

impl Start {
    /// Serves `stream` in the slot `slot`, registered (for eviction) while it is open.
    async fn run(self, slot: OwnedSemaphorePermit, stream: TcpStream) {
        let activity = Arc::new(Activity::new());
        let evict = Arc::new(Notify::new());
        let id = self.registry.add(activity.clone(), evict.clone());
        let conn = Conn {
            limits: self.limits,
            stop: self.stop,
            evict,
            _slot: slot,
        };
        conn.run(stream, self.app, activity).await;
        self.registry.remove(id);
    }
}

/// One accepted connection and what it needs.
struct Conn {
    limits: ConnLimits,
    stop: watch::Receiver<bool>,
    /// Notified when a new connection at the cap takes this one's slot.
    evict: Arc<Notify>,
    _slot: OwnedSemaphorePermit,
}

impl Conn {
    async fn run(mut self, stream: TcpStream, app: Router, activity: Arc<Activity>) {
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(Tracked {
            inner: stream,
            activity: activity.clone(),
            pending: None,
        });
        let service = Counting {
            app,
            activity: activity.clone(),
        };
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.header_timeout)
            .keep_alive(true)
            .serve_connection(io, service);
        tokio::pin!(conn);
        let keep_alive = self.limits.keep_alive_timeout;
        let mut closing = false;
        loop {
            // The next look at idleness: when the keep-alive runs out, or (while a request is in
            // progress past it) one keep-alive from now.
            let now = Instant::now();
            let idle_check = (activity.last() + keep_alive).max(now + Duration::from_millis(1));
            let idle_check = if idle_check <= now + Duration::from_millis(1) {
                now + keep_alive
            } else {
                idle_check
            };
            tokio::select! {
                _ = conn.as_mut() => break,
                _ = self.stop.changed(), if !closing => {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
                () = self.evict.notified(), if !closing => {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
                () = tokio::time::sleep_until(idle_check.into()), if !closing => {
                    if activity.idle(keep_alive) {
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                    }
                }
            }
        }
    }
}

/// When the connection last moved a byte, and how many requests it has in progress.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    fn new() -> Self {
        Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
        }
    }

    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }

    /// No request in progress and nothing moved for `limit`.
    fn idle(&self, limit: Duration) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0 && self.last().elapsed() >= limit
    }
}

/// Counts a request in progress from its head to its response (a streamed body then moves bytes).
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.touch();
    }
}

/// The router as a hyper service, counting requests in progress.
#[derive(Clone)]
struct Counting {
    app: Router,
    activity: Arc<Activity>,
}

impl hyper::service::Service<hyper::Request<Incoming>> for Counting {
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn call(&self, request: hyper::Request<Incoming>) -> Self::Future {
        self.activity.in_flight.fetch_add(1, Ordering::AcqRel);
        let guard = InFlight(self.activity.clone());
        let mut app = self.app.clone();
        Box::pin(async move {
            let response = app.call(request.map(axum::body::Body::new)).await;
            drop(guard);
            response
        })
    }
}

/// The socket, noting every byte read or written. It also gives hyper's own protocol-level error
/// responses (a malformed request line or header, headers too large: hyper answers them itself, with
/// an empty body and no hook) an OpenAI error body, so that every error a client sees is one.
struct Tracked {
    inner: TcpStream,
    activity: Arc<Activity>,
    /// A rewritten response being written in place of the one hyper handed over.
    pending: Option<Rewrite>,
}

/// The bytes written instead of hyper's, how many are out, and the length hyper is told was written.
struct Rewrite {
    bytes: Vec<u8>,
    written: usize,
    reported: usize,
}

/// hyper's answer to a request it could not parse (`HTTP/1.1 4xx ...`, `content-length: 0`, nothing
/// after the head) rewritten with an OpenAI error body; `None` for everything else. The handlers never
/// send an empty 4xx (every error of theirs has a body), so such a response can only be hyper's.
fn protocol_error_with_body(buf: &[u8]) -> Option<Vec<u8>> {
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    if head_end != buf.len() || !buf.starts_with(b"HTTP/1.1 4") {
        return None;
    }
    let head = std::str::from_utf8(&buf[..head_end]).ok()?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    if !lines.any(|l| l.eq_ignore_ascii_case("content-length: 0")) {
        return None;
    }
    let reason = status_line.get(9..).unwrap_or("4xx");
    let body = ApiError::invalid(format!(
        "the request could not be read as HTTP/1.1 ({reason}): check the request line and headers"
    ))
    .to_json()
    .to_string();
    Some(
        format!(
            "{status_line}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl Tracked {
    /// Writes the rest of a rewritten response; once all of it is out, reports hyper's length.
    fn write_pending(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        while let Some(p) = self.pending.as_mut() {
            if p.written == p.bytes.len() {
                let reported = p.reported;
                self.pending = None;
                return Poll::Ready(Ok(reported));
            }
            match Pin::new(&mut self.inner).poll_write(cx, &p.bytes[p.written..]) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => {
                    p.written += n;
                    self.activity.touch();
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(0))
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.pending.is_none() {
            if let Some(bytes) = protocol_error_with_body(buf) {
                self.pending = Some(Rewrite {
                    bytes,
                    written: 0,
                    reported: buf.len(),
                });
            }
        }
        if self.pending.is_some() {
            return self.write_pending(cx);
        }
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        // A rewrite in progress is finished by hyper's next `poll_write` of the same bytes.
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
