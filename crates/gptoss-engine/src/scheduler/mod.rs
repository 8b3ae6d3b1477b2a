//! Continuous batching (DESIGN.md "KV cache and scheduler"): many requests share each forward step.
//!
//! vLLM v1's split: [`EngineHandle`] (what the server holds) sends [`Command`]s to one engine thread;
//! the [`Engine`] loop is schedule → forward → sample → update, with submissions and cancellations
//! applied between steps; the scheduler (`policy.rs`) hands each step a token budget, running
//! sequences first, then waiting ones (chunked prefill: a long prompt takes several steps), and
//! preempts the newest sequence (recompute) when KV blocks run out; [`KvBlocks`] only answers
//! "fits / does not fit".
//!
//! Determinism: a request's sampler counter is its own generated-token index and every backend op is
//! row-independent, so a request's tokens do not depend on what it is batched with, nor on being
//! preempted and recomputed.
//!
//! What is physical and what is not: each running sequence owns one cache slot of the model (the
//! backends' cache is one contiguous region per slot today). KV blocks (16 positions of one layer;
//! sliding-window layers capped at `ceil(window/16)+1` per sequence) are accounting the scheduler
//! keeps to decide admission and preemption; a physical paged cache with block tables, which frees
//! sliding-window blocks for real and allows prefix sharing, is a later step.

mod engine;
mod handle;
pub mod kv;
mod policy;
mod sequence;
mod stats;

pub use engine::{DeviceProbe, Engine, EngineConfig};
pub use handle::{
    spawn_engine, spawn_engine_with, Command, EngineHandle, EngineInfo, EngineStarter,
};
pub use kv::{BlockShape, KvBlocks, BLOCK_POSITIONS};
pub use sequence::{
    channel_sink, FailureKind, Finish, FinishReason, GenRequest, Output, OutputSink, RequestId,
};
pub use stats::{EngineStats, Gauges, StatsSnapshot};
