//! `--max-concurrency` and the queue limit: at most `max_concurrency` requests generate at once, at
//! most `max_queue` more wait for a turn, and anything beyond gets 429 with `Retry-After`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{ApiError, ApiResult};

/// The admission gate.
#[derive(Debug)]
pub struct Admission {
    max_queue: usize,
    max_concurrency: usize,
    in_system: Arc<AtomicUsize>,
    slots: Arc<Semaphore>,
}

/// A request's place: generating (a permit) and counted until dropped.
#[derive(Debug)]
pub struct Permit {
    _slot: OwnedSemaphorePermit,
    _counted: Counted,
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

    /// Waits for a turn, or fails at once with 429 when the queue is full.
    pub async fn enter(&self) -> ApiResult<Permit> {
        let before = self.in_system.fetch_add(1, Ordering::AcqRel);
        let counted = Counted(self.in_system.clone());
        if before >= self.max_concurrency + self.max_queue {
            return Err(ApiError::overloaded(1));
        }
        let slot = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ApiError::internal("the server is shutting down"))?;
        Ok(Permit {
            _slot: slot,
            _counted: counted,
        })
    }

    /// Requests waiting for a turn.
    pub fn queued(&self) -> usize {
        let inside = self.in_system.load(Ordering::Acquire);
        let running = self.max_concurrency - self.slots.available_permits();
        inside.saturating_sub(running)
    }

    /// Requests generating.
    pub fn running(&self) -> usize {
        self.max_concurrency - self.slots.available_permits()
    }
}
