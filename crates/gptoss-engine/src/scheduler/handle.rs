//! The engine thread and its handle. One thread owns the model (built on that thread, so a device
//! context never crosses threads); everyone else talks to it through [`EngineHandle`] over a std
//! channel of [`Command`]s. Commands are applied between steps.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::Arc;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::model::Model;

use super::engine::{DeviceProbe, Engine, EngineConfig};
use super::sequence::{ForkGroup, GenRequest, OutputSink, RequestId, RequestOptions};
use super::stats::EngineStats;

/// A message to the engine thread.
pub enum Command {
    /// Start a request; outputs go to `sink`.
    Submit {
        /// The request's id (from [`EngineHandle::submit`]).
        id: RequestId,
        /// What to generate.
        request: GenRequest,
        /// Logit processing and choice group (default: none).
        options: RequestOptions,
        /// Where outputs go.
        sink: OutputSink,
    },
    /// Cancel a request.
    Cancel(RequestId),
}

/// Fixed facts about the engine's model, for validating requests before they are sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EngineInfo {
    /// Longest sequence (prompt + generated).
    pub context_tokens: usize,
    /// Vocabulary (embedding rows).
    pub vocab_size: usize,
    /// Sequences run at once.
    pub max_seqs: usize,
}

/// A cheap, clonable handle to the engine thread.
#[derive(Clone)]
pub struct EngineHandle {
    tx: Sender<Command>,
    next_id: Arc<AtomicU64>,
    stats: Arc<EngineStats>,
    info: EngineInfo,
}

impl EngineHandle {
    /// A handle over any command receiver: the engine thread of [`spawn_engine`], or a test double
    /// that answers with scripted tokens.
    pub fn from_parts(tx: Sender<Command>, stats: Arc<EngineStats>, info: EngineInfo) -> Self {
        EngineHandle {
            tx,
            next_id: Arc::new(AtomicU64::new(1)),
            stats,
            info,
        }
    }

    /// Queues a request. Outputs arrive through `sink`; an error means the engine thread is gone.
    pub fn submit(&self, request: GenRequest, sink: OutputSink) -> Result<RequestId> {
        self.submit_with(request, RequestOptions::default(), sink)
    }

    /// [`EngineHandle::submit`] with host-side logit processing (bias, penalties, a constraint,
    /// log-probabilities) and a choice group.
    pub fn submit_with(
        &self,
        request: GenRequest,
        options: RequestOptions,
        sink: OutputSink,
    ) -> Result<RequestId> {
        let id = RequestId(self.next_id.fetch_add(1, Ordering::Relaxed));
        self.tx
            .send(Command::Submit {
                id,
                request,
                options,
                sink,
            })
            .map_err(|_| Error::invalid("the engine has stopped"))?;
        Ok(id)
    }

    /// Cancels a request (ignored when it already ended).
    pub fn cancel(&self, id: RequestId) {
        let _ = self.tx.send(Command::Cancel(id));
    }

    /// A new choice group for the `n` requests of one API request.
    pub fn fork_group(&self) -> ForkGroup {
        ForkGroup(self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    /// Live counters.
    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    /// The model's limits.
    pub fn info(&self) -> EngineInfo {
        self.info
    }
}

/// Starts the engine thread: `make` builds the model on it. Returns when the model is ready (or
/// failed to build). The thread ends when every handle is dropped.
pub fn spawn_engine<B, F>(make: F, config: EngineConfig) -> Result<EngineHandle>
where
    B: Backend + 'static,
    F: FnOnce() -> Result<Model<B>> + Send + 'static,
{
    spawn_engine_with(move |starter| starter.run(make()?), config)
}

/// Hands the engine thread its model: [`spawn_engine_with`]'s closure builds a model on whichever
/// backend it picks at run time and calls [`EngineStarter::run`] with it.
pub struct EngineStarter {
    rx: Receiver<Command>,
    ready: Sender<Result<EngineInfo>>,
    stats: Arc<EngineStats>,
    config: EngineConfig,
}

impl EngineStarter {
    /// Serves requests with `model` until every handle is dropped.
    pub fn run<B: Backend>(self, mut model: Model<B>) -> Result<()> {
        let engine = Engine::new(&mut model, self.config, self.stats.clone());
        self.serve(engine)
    }

    /// Like [`EngineStarter::run`], reporting the backend's peak device memory through `probe`.
    pub fn run_with_probe<B: Backend>(
        self,
        mut model: Model<B>,
        probe: DeviceProbe<B>,
    ) -> Result<()> {
        let engine =
            Engine::new(&mut model, self.config, self.stats.clone()).with_device_probe(probe);
        self.serve(engine)
    }

    fn serve<B: Backend>(self, engine: Engine<'_, B>) -> Result<()> {
        let cap = *engine.model().capacity();
        let info = EngineInfo {
            context_tokens: cap.context_tokens,
            vocab_size: engine.model().config().vocab_size,
            max_seqs: cap.slots.min(cap.max_logit_rows),
        };
        if self.ready.send(Ok(info)).is_ok() {
            run_loop(engine, self.rx);
        }
        Ok(())
    }
}

/// Starts the engine thread and runs `start` on it; `start` builds a model (on a backend chosen at
/// run time) and passes it to [`EngineStarter::run`]. Returns when the model is ready, or with the
/// error `start` returned.
pub fn spawn_engine_with<F>(start: F, config: EngineConfig) -> Result<EngineHandle>
where
    F: FnOnce(EngineStarter) -> Result<()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel();
    let (ready_tx, ready_rx) = mpsc::channel();
    let stats = Arc::new(EngineStats::default());
    let starter = EngineStarter {
        rx,
        ready: ready_tx.clone(),
        stats: stats.clone(),
        config,
    };
    std::thread::Builder::new()
        .name("gptoss-engine".into())
        .spawn(move || {
            if let Err(e) = start(starter) {
                let _ = ready_tx.send(Err(e));
            }
        })
        .map_err(|e| Error::invalid(format!("cannot start the engine thread: {e}")))?;
    let info = ready_rx
        .recv()
        .map_err(|_| Error::invalid("the engine thread ended while building the model"))??;
    Ok(EngineHandle::from_parts(tx, stats, info))
}

/// Applies commands between steps; blocks while there is nothing to do.
fn run_loop<B: Backend>(mut engine: Engine<'_, B>, rx: Receiver<Command>) {
    loop {
        if !engine.has_work() {
            match rx.recv() {
                Ok(cmd) => apply(&mut engine, cmd),
                Err(_) => return,
            }
        }
        loop {
            match rx.try_recv() {
                Ok(cmd) => apply(&mut engine, cmd),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) if engine.has_work() => break,
                Err(TryRecvError::Disconnected) => return,
            }
        }
        // A panicking backend (a bug) fails the requests it held; the engine keeps serving.
        if let Err(panic) = std::panic::catch_unwind(AssertUnwindSafe(|| engine.step())) {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(panic = %what, "engine step panicked; failing every request");
            engine.fail_all(&format!("the engine failed: {what}"));
        }
    }
}

fn apply<B: Backend>(engine: &mut Engine<'_, B>, cmd: Command) {
    match cmd {
        Command::Submit {
            id,
            request,
            options,
            sink,
        } => engine.submit_with(id, request, options, sink),
        Command::Cancel(id) => engine.cancel(id),
    }
}
