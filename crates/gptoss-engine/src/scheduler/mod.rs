//! Continuous batching (DESIGN.md "KV cache and scheduler"): many requests share each forward step.
//!
//! vLLM v1's split: [`EngineHandle`] (what the server holds) sends [`Command`]s to one engine thread;
//! the [`Engine`] loop is schedule → forward → sample → update, with submissions and cancellations
//! applied between steps; the scheduler (`policy.rs`) hands each step a token budget, running
//! sequences first, then waiting ones (chunked prefill: a long prompt takes several steps), and
//! preempts the newest sequence (recompute) when KV blocks run out; [`KvBlocks`], the block
//! allocator, only answers "fits / does not fit" and hands out blocks.
//!
//! Determinism: a request's sampler counter is its own generated-token index and every backend op is
//! row-independent, so a request's tokens do not depend on what it is batched with, nor on being
//! preempted and recomputed.
//!
//! The KV cache is paged (`crate::kv`): [`KvBlocks`] owns the free lists of the model's two pools and
//! every sequence's block table, and each step's [`crate::Batch`] carries the tables of its sequences.
//! Full-attention blocks (16 positions of every full layer) are the budget admission and preemption
//! are decided on; sliding-window layers use a per-sequence ring of blocks, reused as positions leave
//! the window. Finishing, cancelling or preempting a sequence returns all its blocks. Prefix sharing
//! (reference-counted full blocks) fits this design and is not built yet.
//!
//! Speculative decoding (`draft.rs`): a sequence's [`DraftProposer`] guesses its next tokens, the
//! scheduler adds them to the sequence's step, and the engine keeps the prefix the model agrees
//! with; the tokens are exactly plain decoding's (greedy or seeded). Positions written for rejected
//! drafts are rewritten before any token reads them (a token reads only positions up to its own),
//! and the blocks they took stay in the sequence's table for the positions that follow.

mod draft;
mod engine;
mod handle;
pub mod kv;
mod policy;
mod prefix;
mod sequence;
mod stats;

pub use draft::{DraftProposer, NgramConfig, NgramProposer, Speculative};
pub use engine::{DeviceProbe, Engine, EngineConfig, MaskSampling};
pub use handle::{
    spawn_engine, spawn_engine_with, Command, EngineHandle, EngineInfo, EngineStarter,
};
pub use kv::{KvBlocks, PrefixCaching};
pub use sequence::{
    channel_sink, FailureKind, Finish, FinishReason, ForkGroup, GenRequest, Output, OutputSink,
    RequestId, RequestOptions,
};
pub use stats::{EngineStats, Gauges, StatsSnapshot};
