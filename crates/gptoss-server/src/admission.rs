//! Admission and the render pool. A request is counted from the moment its handler starts
//! ([`Admission::admit`]: 429 with `Retry-After` beyond `max_concurrency + max_queue`) through reading
//! its body, rendering and waiting, until its generation ends; at most `max_concurrency` generate at
//! once ([`Ticket::turn`]). Parsing, rendering and tokenizing run on the blocking pool, at most
//! `render_threads` at a time ([`RenderPool`]), so no body's CPU work runs on the async workers that
//! answer `/health` and stream tokens.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{ApiError, ApiResult};
use crate::generation::Usage;
use crate::request_log::RequestLog;

/// The admission gate.
#[derive(Debug)]
pub struct Admission {
    max_queue: usize,
    max_concurrency: usize,
    in_system: Arc<AtomicUsize>,
    slots: Arc<Semaphore>,
}

/// A request counted against admission, not yet generating.
#[derive(Debug)]
pub struct Ticket {
    counted: Counted,
    slots: Arc<Semaphore>,
    admitted: Instant,
    log: Option<Arc<RequestLog>>,
}

/// A request's place: generating (a permit) and counted until dropped. It carries when the request
/// was admitted (latencies count from there) and the request's log line, which its generations add
/// their tokens to.
#[derive(Debug)]
pub struct Permit {
    _slot: OwnedSemaphorePermit,
    _counted: Counted,
    admitted: Instant,
    log: Option<Arc<RequestLog>>,
}

#[derive(Debug)]
struct Counted(Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Admission {
    /// A gate of `max_concurrency` running and `max_queue` waiting requests.
    pub fn new(max_concurrency: usize, max_queue: usize) -> Self {
        let max_concurrency = max_concurrency.max(1);
        Admission {
            max_queue,
            max_concurrency,
            in_system: Arc::new(AtomicUsize::new(0)),
            slots: Arc::new(Semaphore::new(max_concurrency)),
        }
    }

    /// Counts a request in, or fails at once with 429 when the system is full.
    pub fn admit(&self) -> ApiResult<Ticket> {
        let before = self.in_system.fetch_add(1, Ordering::AcqRel);
        let counted = Counted(self.in_system.clone());
        if before >= self.max_concurrency + self.max_queue {
            return Err(ApiError::overloaded(1));
        }
        Ok(Ticket {
            counted,
            slots: self.slots.clone(),
            admitted: Instant::now(),
            log: None,
        })
    }

    /// Requests admitted but not generating (reading, rendering or waiting for a turn).
    pub fn queued(&self) -> usize {
        let inside = self.in_system.load(Ordering::Acquire);
        inside.saturating_sub(self.running())
    }

    /// Requests generating.
    pub fn running(&self) -> usize {
        self.max_concurrency - self.slots.available_permits()
    }
}

impl Ticket {
    /// The request's log line, which its generations add their tokens to.
    pub fn with_log(mut self, log: Option<Arc<RequestLog>>) -> Self {
        self.log = log;
        self
    }

    /// Waits for a generation slot.
    pub async fn turn(self) -> ApiResult<Permit> {
        let slot = self
            .slots
            .acquire_owned()
            .await
            .map_err(|_| ApiError::unavailable("the server is shutting down"))?;
        Ok(Permit {
            _slot: slot,
            _counted: self.counted,
            admitted: self.admitted,
            log: self.log,
        })
    }
}

impl Permit {
    /// When the request was admitted, before its body was read.
    pub fn admitted(&self) -> Instant {
        self.admitted
    }

    /// Adds a generation's tokens to the request's log line (if it has one: the batch runner's
    /// requests have none).
    pub fn add_usage(&self, usage: Usage) {
        if let Some(log) = &self.log {
            log.add_usage(usage);
        }
    }
}

/// At most `threads` renders at once, each on the blocking pool.
#[derive(Debug)]
pub struct RenderPool {
    slots: Arc<Semaphore>,
}

impl RenderPool {
    /// A pool of `threads` (at least 1).
    pub fn new(threads: usize) -> Self {
        RenderPool {
            slots: Arc::new(Semaphore::new(threads.max(1))),
        }
    }

    /// Runs `work` on the blocking pool once a render slot is free. The slot is held until the work
    /// ends, even if the caller stops waiting (a disconnected client), so the bound always holds.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> ApiResult<T> + Send + 'static,
    ) -> ApiResult<T> {
        let slot = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ApiError::unavailable("the server is shutting down"))?;
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            work()
        })
        .await
        .map_err(|e| ApiError::internal(format!("rendering the request failed: {e}")))?
    }
}
