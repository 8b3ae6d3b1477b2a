//! gptoss-engine: the gpt-oss model, written once against the [`Backend`] trait, and the exact CPU
//! backend it is tested with.
//!
//! The engine never sees a file format: it takes [`gptoss_formats::ModelWeights`] and each backend
//! uploads the packed tensors in the layout its kernels read. The exact CPU backend ([`CpuBackend`])
//! keeps activations and the KV cache in f32 so it matches transformers in f32; the CUDA backend and
//! the fast CPU path ([`CpuBackend::fast`], int8 activations) are tested against it.
//!
//! ```no_run
//! use gptoss_engine::{Batch, Capacity, CpuBackend, Model};
//! let ckpt = gptoss_formats::load(std::path::Path::new("tests/fixtures/tiny/hf-mxfp4"))?;
//! let cap = Capacity { max_batch_tokens: 64, max_logit_rows: 1, slots: 1, context_tokens: 256, kv_blocks: None };
//! let mut model = Model::new(CpuBackend, &ckpt.weights, cap)?;
//! model.forward(&Batch::single(&[1, 2, 3], 0, model.solo_table()))?;
//! let logits = model.logits(1)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod backend;
pub mod cpu;
pub mod error;
pub mod expert_cache;
pub mod expert_stream;
pub mod generate;
pub mod kv;
pub mod logits;
pub mod math;
pub mod memory;
pub mod model;
pub mod offload;
pub mod pipeline;
pub mod placement;
pub mod sampler;
pub mod scheduler;
pub mod trace;

pub use backend::{
    Backend, Batch, Capacity, Recording, SamplingParams, MAX_BATCH_TOKENS, MAX_CONTEXT_TOKENS,
    MAX_KV_BLOCKS, MAX_SLOTS,
};
pub use cpu::{CpuBackend, CpuIsa, CpuKernels};
pub use error::{Error, Result};
pub use expert_cache::ExpertCacheStats;
pub use expert_stream::{ExpertStreamStats, ExpertStreaming, StreamCost};
pub use generate::{
    generate, generate_until, generate_with, Flow, GenerateOptions, Generation, Session, StopReason,
};
pub use kv::{BlockTable, KvLayout, PoolKind, BLOCK_POSITIONS};
pub use logits::{ConstraintSpec, LogitsOptions, TokenConstraint, TokenLogprobs};
pub use model::Model;
pub use offload::{ExpertCacheConfig, ExpertPlacement};
pub use pipeline::LayerSplit;
pub use trace::{TraceRecord, TraceSpec, TRACE_NODES};
