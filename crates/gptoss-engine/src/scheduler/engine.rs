//! The engine loop body: schedule, forward, sample, update. [`Engine`] owns the [`Model`] and the
//! [`Scheduler`]; requests and cancellations are applied between steps.

use std::sync::Arc;

use crate::backend::{Backend, Batch};
use crate::error::Result;
use crate::model::Model;

use super::kv::KvBlocks;
use super::policy::{Plan, Scheduler};
use super::sequence::{
    FailureKind, FinishReason, GenRequest, Output, OutputSink, RequestId, Sequence,
};
use super::stats::EngineStats;

/// How the engine uses the model's capacity (the KV pools are the model's: [`crate::Capacity`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct EngineConfig {
    /// Token budget of one step (at most the model's `max_batch_tokens`; `None`: all of it).
    pub max_batch_tokens: Option<usize>,
}

/// Reads a backend's peak device memory in bytes (the CUDA backend's meter).
pub type DeviceProbe<B> = fn(&Model<B>) -> u64;

/// A model and the requests it is serving.
pub struct Engine<B: Backend> {
    model: Model<B>,
    sched: Scheduler,
    stats: Arc<EngineStats>,
    probe: Option<DeviceProbe<B>>,
}

impl<B: Backend> Engine<B> {
    /// An engine over `model`: at most one running sequence per cache slot, blocks from the model's
    /// KV pools, the step budget from `config`.
    pub fn new(model: Model<B>, config: EngineConfig, stats: Arc<EngineStats>) -> Self {
        let cap = *model.capacity();
        let budget = config
            .max_batch_tokens
            .map_or(cap.max_batch_tokens, |b| b.clamp(1, cap.max_batch_tokens));
        // A step samples at most one row per running sequence.
        let max_running = cap.slots.min(cap.max_logit_rows);
        let kv = KvBlocks::new(model.kv_layout().clone());
        let sched = Scheduler::new(budget, max_running, kv);
        let engine = Engine {
            model,
            sched,
            stats,
            probe: None,
        };
        engine.publish();
        engine
    }

    /// Reports the backend's peak device memory through `probe` after every step.
    pub fn with_device_probe(mut self, probe: DeviceProbe<B>) -> Self {
        self.probe = Some(probe);
        self.publish();
        self
    }

    /// The model.
    pub fn model(&self) -> &Model<B> {
        &self.model
    }

    /// Whether any request is waiting or running.
    pub fn has_work(&self) -> bool {
        !self.sched.is_idle()
    }

    /// Queues a request, or fails it at once through `sink` when it can never run.
    pub fn submit(&mut self, id: RequestId, request: GenRequest, mut sink: OutputSink) {
        if let Err(message) = self.check(&request) {
            sink(Output::Failed {
                kind: FailureKind::Invalid,
                message,
            });
            return;
        }
        self.stats.add_prompt_tokens(request.prompt.len());
        self.sched.add(Sequence::new(id, request, sink));
        self.publish();
    }

    fn check(&self, request: &GenRequest) -> std::result::Result<(), String> {
        let context = self.model.capacity().context_tokens;
        let vocab = self.model.config().vocab_size;
        let n = request.prompt.len();
        if n == 0 {
            return Err("the prompt has no tokens".into());
        }
        if request.max_new_tokens == 0 {
            return Err("max_new_tokens must be at least 1".into());
        }
        if n >= context {
            return Err(format!(
                "the prompt has {n} tokens; the context holds {context}"
            ));
        }
        if let Some(t) = request.prompt.iter().find(|&&t| t as usize >= vocab) {
            return Err(format!("token id {t} is outside the vocabulary of {vocab}"));
        }
        let longest = (n + request.max_new_tokens).min(context);
        let need = self.sched.kv().full_blocks_for(longest);
        if need > self.sched.kv().total_blocks() {
            return Err(format!(
                "{longest} tokens need {need} KV blocks; the pool has {}",
                self.sched.kv().total_blocks()
            ));
        }
        Ok(())
    }

    /// Cancels a request (no-op when it already ended); its owner is told `Cancelled`.
    pub fn cancel(&mut self, id: RequestId) {
        self.end(id, FinishReason::Cancelled);
    }

    /// Fails every request (after a backend panic: nothing the engine holds can be trusted).
    pub fn fail_all(&mut self, message: &str) {
        for id in self.sched.ids() {
            self.fail(id, FailureKind::Internal, message);
        }
    }

    /// Runs one step. A backend failure fails the step's requests, not the engine.
    pub fn step(&mut self) {
        let plan = self.sched.schedule();
        self.stats.add_preemptions(plan.preempted);
        if plan.items.is_empty() {
            return;
        }
        if let Err(e) = self.run(&plan) {
            tracing::error!(error = %e, "engine step failed");
            for item in &plan.items {
                self.fail(item.id, FailureKind::Internal, &e.to_string());
            }
        }
        self.publish();
    }

    fn run(&mut self, plan: &Plan) -> Result<()> {
        let mut batch = Batch::default();
        let (mut params, mut counters, mut sampled_ids) = (Vec::new(), Vec::new(), Vec::new());
        for item in &plan.items {
            let table = self.sched.kv().table(item.id).cloned().unwrap_or_default();
            let Some(seq) = self.sched.get_mut(item.id) else {
                continue;
            };
            let part = seq
                .tokens
                .get(item.start..item.start + item.len)
                .unwrap_or(&[]);
            batch.tokens.extend_from_slice(part);
            batch
                .positions
                .extend((item.start..item.start + part.len()).map(|p| p as u32));
            let row = batch.tables.len() as u32;
            batch.seqs.extend(std::iter::repeat_n(row, part.len()));
            batch.tables.push(table);
            if item.sample {
                batch.logit_rows.push(batch.tokens.len() as u32 - 1);
                params.push(seq.sampling);
                counters.push(seq.generated() as u64);
                sampled_ids.push(item.id);
            }
            seq.computed += item.len;
        }
        self.model.forward(&batch)?;
        let tokens = if params.is_empty() {
            Vec::new()
        } else {
            self.model.sample(&params, &counters)?
        };
        self.stats.add_step(batch.tokens.len(), tokens.len());
        for (id, tok) in sampled_ids.into_iter().zip(tokens) {
            self.accept(id, tok);
        }
        Ok(())
    }

    /// Appends a sampled token, tells the owner, and ends the request when it is done.
    fn accept(&mut self, id: RequestId, tok: u32) {
        let context = self.model.capacity().context_tokens;
        let Some(seq) = self.sched.get_mut(id) else {
            return;
        };
        seq.tokens.push(tok);
        if !(seq.sink)(Output::Token(tok)) {
            self.end(id, FinishReason::Cancelled);
            return;
        }
        let reason = if seq.stop_tokens.contains(&tok) {
            Some(FinishReason::Stop)
        } else if seq.generated() >= seq.max_new_tokens || seq.tokens.len() >= context {
            Some(FinishReason::Length)
        } else {
            None
        };
        if let Some(reason) = reason {
            self.end(id, reason);
        }
    }

    fn end(&mut self, id: RequestId, reason: FinishReason) {
        if let Some(mut seq) = self.take(id) {
            let finish = seq.finish(reason);
            (seq.sink)(Output::Finished(finish));
        }
    }

    fn fail(&mut self, id: RequestId, kind: FailureKind, message: &str) {
        if let Some(mut seq) = self.take(id) {
            let message = message.to_string();
            (seq.sink)(Output::Failed { kind, message });
        }
    }

    /// Removes a sequence, returning its blocks to the pools.
    fn take(&mut self, id: RequestId) -> Option<Sequence> {
        let seq = self.sched.remove(id)?;
        self.publish();
        Some(seq)
    }

    fn publish(&self) {
        if let Some(probe) = self.probe {
            self.stats.observe_device_bytes(probe(&self.model));
        }
        let kv = self.sched.kv();
        self.stats.set_gauges(super::stats::Gauges {
            waiting: self.sched.waiting_len(),
            running: self.sched.running_len(),
            kv_used_blocks: kv.used_blocks(),
            kv_total_blocks: kv.total_blocks(),
            kv_sliding_used_blocks: kv.sliding_used_blocks(),
        });
    }
}
