//! The engine loop body: schedule, forward, sample, update (verifying speculative drafts, see
//! `draft.rs`). [`Engine`] drives the [`Model`] through the [`Scheduler`]; requests and
//! cancellations are applied between steps.

use std::collections::HashMap;
use std::sync::Arc;

use rayon::prelude::*;

use crate::backend::{Backend, Batch, LogprobRow, SamplingParams};
use crate::error::{Error, Result};
use crate::logits::{HostSample, LogitsState, RowContext, TokenLogprobs};
use crate::model::Model;

use super::draft::{accepted_len, Speculative};
use super::kv::{BlockCopy, KvBlocks, PrefixCaching};
use super::policy::{Limits, Plan, Scheduler};
use super::sequence::{
    FailureKind, FinishReason, GenRequest, Output, OutputSink, RequestId, RequestOptions, Sequence,
};
use super::stats::EngineStats;

/// How the engine uses the model's capacity (the KV pools are the model's: [`crate::Capacity`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct EngineConfig {
    /// Token budget of one step (at most the model's `max_batch_tokens`; `None`: all of it).
    pub max_batch_tokens: Option<usize>,
    /// Speculative decoding: drafts verified in each sequence's step (bounded by the model's
    /// `max_logit_rows`; size it with [`Speculative::logit_rows`]).
    pub speculative: Speculative,
    /// Keep computed prompts' KV blocks and share them with later prompts that start the same way.
    pub prefix_caching: PrefixCaching,
    /// Where sequences whose processing is only a token mask (structured outputs) and
    /// log-probabilities are sampled.
    pub mask_sampling: MaskSampling,
}

/// Where a sequence whose logit processing is only a token mask (a constraint, `min_tokens`) and
/// log-probabilities is sampled; both give the same tokens (and log-probabilities to the last bits of
/// their log-sum-exp).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MaskSampling {
    /// By the backend's sampler with the mask ([`Backend::sample_masked`]), log-probabilities by
    /// [`Backend::logprobs`]: on CUDA no logit row is read back.
    #[default]
    Backend,
    /// On the host from the row read back, as sequences with other processing are (for comparison).
    Host,
}

/// Reads a backend's peak device memory in bytes (the CUDA backend's meter).
pub type DeviceProbe<B> = fn(&Model<B>) -> u64;

/// A model and the requests it is serving. The engine borrows the model: the engine thread owns
/// it, and [`crate::generate`] runs one request on a caller's model.
pub struct Engine<'m, B: Backend> {
    model: &'m mut Model<B>,
    sched: Scheduler,
    stats: Arc<EngineStats>,
    probe: Option<DeviceProbe<B>>,
    speculative: Speculative,
    mask_sampling: MaskSampling,
    /// The logit rows read back for host sampling, kept across steps (see [`Backend::read_into`]).
    host_logits: Vec<f32>,
}

/// A sequence's next-token mask, or why it has none.
type MaskResult = std::result::Result<Option<Vec<u32>>, String>;

/// Where each sampled slice's logit rows are in the step's output.
struct Verify {
    id: RequestId,
    /// The slice's rows: its last token's, then one per draft token.
    rows: usize,
}

impl<'m, B: Backend> Engine<'m, B> {
    /// An engine over `model`: at most one running sequence per cache slot, blocks from the model's
    /// KV pools, the step budget and speculation from `config`.
    pub fn new(model: &'m mut Model<B>, config: EngineConfig, stats: Arc<EngineStats>) -> Self {
        let cap = *model.capacity();
        let budget = config
            .max_batch_tokens
            .map_or(cap.max_batch_tokens, |b| b.clamp(1, cap.max_batch_tokens));
        let limits = Limits {
            max_batch_tokens: budget,
            // A step samples at least one row per running sequence.
            max_running: cap.slots.min(cap.max_logit_rows),
            max_logit_rows: cap.max_logit_rows,
            context_tokens: cap.context_tokens,
            max_draft: config.speculative.draft_tokens(),
        };
        let kv = KvBlocks::with_caching(model.kv_layout().clone(), config.prefix_caching);
        let engine = Engine {
            model,
            sched: Scheduler::new(limits, kv),
            stats,
            probe: None,
            speculative: config.speculative,
            mask_sampling: config.mask_sampling,
            host_logits: Vec::new(),
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
        self.model
    }

    /// Whether any request is waiting or running.
    pub fn has_work(&self) -> bool {
        !self.sched.is_idle()
    }

    /// Queues a request, or fails it at once through `sink` when it can never run.
    pub fn submit(&mut self, id: RequestId, request: GenRequest, sink: OutputSink) {
        self.submit_with(id, request, RequestOptions::default(), sink);
    }

    /// [`Engine::submit`] with host-side logit processing and a choice group (`options`).
    pub fn submit_with(
        &mut self,
        id: RequestId,
        request: GenRequest,
        options: RequestOptions,
        mut sink: OutputSink,
    ) {
        let RequestOptions { logits, fork } = options;
        if self.sched.get(id).is_some() {
            // Two live sequences under one id would share (and corrupt) one entry of the scheduler.
            sink(Output::Failed {
                kind: FailureKind::Invalid,
                message: format!("request id {} is already in use by a running request", id.0),
            });
            return;
        }
        if let Err(message) = self.check(&request) {
            sink(Output::Failed {
                kind: FailureKind::Invalid,
                message,
            });
            return;
        }
        // A sequence with host-side processing does not speculate: its drafts would need the
        // processing of every drafted position.
        let (logits, proposer) = if logits.is_active() {
            match LogitsState::new(logits) {
                Ok(state) => (Some(state), None),
                Err(message) => {
                    sink(Output::Failed {
                        kind: FailureKind::Invalid,
                        message,
                    });
                    return;
                }
            }
        } else {
            (None, self.speculative.proposer())
        };
        self.stats.add_prompt_tokens(request.prompt.len());
        let mut seq = Sequence::with_logits(id, request, sink, proposer, logits);
        seq.fork = fork;
        self.sched.add(seq);
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
        // Drafts never reach past the last position a request can generate (see the scheduler),
        // so they need no blocks beyond these.
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
        if let Err(e) = self.try_step() {
            tracing::error!(error = %e, "engine step failed");
        }
    }

    /// Runs one step; on a backend failure the step's requests are failed and the error returned.
    pub fn try_step(&mut self) -> Result<()> {
        let plan = self.sched.schedule();
        self.stats.add_preemptions(plan.preempted);
        self.stats
            .add_prefix_hits(plan.prefix_hits, plan.prefix_tokens);
        if plan.items.is_empty() {
            return Ok(());
        }
        let ran = copy_blocks(self.model, &plan.copies).and_then(|()| self.run(&plan));
        if let Err(e) = &ran {
            for item in &plan.items {
                self.fail(item.id, FailureKind::Internal, &e.to_string());
            }
        }
        self.publish();
        ran
    }

    fn run(&mut self, plan: &Plan) -> Result<()> {
        let mut batch = Batch::default();
        let (mut params, mut counters, mut verify) = (Vec::new(), Vec::new(), Vec::new());
        // Logit rows sampled on the host, and rows the backend samples under a mask, with their
        // sequences.
        let mut host: Vec<(usize, RequestId)> = Vec::new();
        let mut masked: Vec<(usize, RequestId)> = Vec::new();
        for item in &plan.items {
            let table = self.sched.kv().table(item.id).cloned().unwrap_or_default();
            let Some(seq) = self.sched.get_mut(item.id) else {
                continue;
            };
            let Some(own) = seq
                .tokens
                .get(item.start..item.start + item.len - item.draft)
            else {
                return Err(Error::invalid(format!(
                    "scheduler: request {} was planned tokens {}..{} (+{} drafted) of its {}",
                    item.id.0,
                    item.start,
                    item.start + item.len - item.draft,
                    item.draft,
                    seq.tokens.len()
                )));
            };
            let draft = seq.draft.get(..item.draft).unwrap_or(&[]);
            let (own_len, n) = (own.len(), own.len() + draft.len());
            batch.tokens.extend_from_slice(own);
            batch.tokens.extend_from_slice(draft);
            batch
                .positions
                .extend((item.start..item.start + n).map(|p| p as u32));
            let row = batch.tables.len() as u32;
            batch.seqs.extend(std::iter::repeat_n(row, n));
            batch.tables.push(table);
            if item.sample {
                // Row j predicts generated token `generated + j`: the counter plain decoding gives
                // that token, so verification draws exactly what plain decoding would.
                let rows = 1 + draft.len();
                let (first, generated) = (batch.tokens.len() - rows, seq.generated() as u64);
                if let Some(state) = &seq.logits {
                    let on_backend =
                        self.mask_sampling == MaskSampling::Backend && state.backend_samples();
                    let rows = if on_backend { &mut masked } else { &mut host };
                    rows.push((batch.logit_rows.len(), item.id));
                }
                for j in 0..rows {
                    batch.logit_rows.push((first + j) as u32);
                    params.push(seq.sampling);
                    counters.push(generated + j as u64);
                }
                verify.push(Verify { id: item.id, rows });
            }
            seq.computed += own_len;
        }
        if batch.tokens.is_empty() {
            let items: Vec<String> = plan
                .items
                .iter()
                .map(|i| format!("request {} at {} for {}", i.id.0, i.start, i.len))
                .collect();
            return Err(Error::invalid(format!(
                "scheduler: a step planned with no tokens to compute ({})",
                items.join(", ")
            )));
        }
        self.model.forward(&batch)?;
        // Prompts just computed are registered with the prefix cache; their rings are copied now,
        // before the next step writes them (and before a sequence that ends here frees them).
        let mut copies = Vec::new();
        for item in plan.items.iter().filter(|i| i.sample) {
            copies.extend(self.sched.register_prefix(item.id));
        }
        copy_blocks(self.model, &copies)?;
        let (mut samples, mut logprobs) = self.sample_masked(&masked, &params, &counters)?;
        logprobs.extend(self.sample_on_host(&host, &params, &counters, &mut samples)?);
        self.stats.add_step(batch.tokens.len());
        if let Some(cache) = self.model.expert_cache_stats() {
            self.stats.set_expert_cache(cache);
        }
        if let Some(stream) = self.model.expert_stream_stats() {
            self.stats.set_expert_stream(stream);
        }
        let mut at = 0;
        for v in verify {
            let rows = samples.get(at..at + v.rows).unwrap_or(&[]);
            at += v.rows;
            if let Some(lp) = logprobs.get(&v.id) {
                if let Some(seq) = self.sched.get_mut(v.id) {
                    if !(seq.sink)(Output::Logprobs(lp.clone())) {
                        self.end(v.id, FinishReason::Cancelled);
                        continue;
                    }
                }
            }
            self.verify(v.id, rows);
        }
        Ok(())
    }

    /// Samples every row of the step on the backend, the `masked` rows under their sequences' masks
    /// (computed here, in parallel over the rows, while the device may still run the step), advances
    /// their constraints and takes the log-probabilities of those that ask (on the backend too); a
    /// sequence whose mask fails or leaves no token is failed.
    fn sample_masked(
        &mut self,
        masked: &[(usize, RequestId)],
        params: &[SamplingParams],
        counters: &[u64],
    ) -> Result<(Vec<u32>, HashMap<RequestId, TokenLogprobs>)> {
        if masked.is_empty() {
            return Ok((sample(self.model, params, counters)?, HashMap::new()));
        }
        let vocab = self.model.config().vocab_size;
        let mut states = self.take_states(masked);
        let sched = &self.sched;
        let computed: Vec<(usize, RequestId, MaskResult)> = states
            .iter_mut()
            .filter_map(|(row, id, state)| {
                let seq = sched.get(*id)?;
                let cx = RowContext {
                    params: params.get(*row)?,
                    counter: counters.get(*row).copied()?,
                    tokens: &seq.tokens,
                    prompt_len: seq.prompt_len,
                    stop_tokens: &seq.stop_tokens,
                };
                Some((*row, *id, state, cx))
            })
            .collect::<Vec<_>>()
            .into_par_iter()
            .map(|(row, id, state, cx)| (row, id, state.next_mask(&cx, vocab)))
            .collect();
        let mut masks: Vec<Option<&[u32]>> = vec![None; params.len()];
        let mut failed = Vec::new();
        for (row, id, mask) in &computed {
            match mask {
                Ok(m) => {
                    if let Some(slot) = masks.get_mut(*row) {
                        *slot = m.as_deref();
                    }
                }
                // Sampled unmasked below and then dropped: the sequence is failed.
                Err(message) => failed.push((*id, message.clone())),
            }
        }
        let drawn = match self.model.sample_masked(params, counters, &masks) {
            Ok(d) => d,
            Err(e) => {
                self.put_states(states);
                return Err(e);
            }
        };
        let mut wanted = Vec::new();
        for (row, id, state) in &mut states {
            if failed.iter().any(|(f, _)| f == id) {
                continue;
            }
            let accepted = match drawn.get(*row).copied().flatten() {
                Some(token) => state.accept(token).map(|()| token),
                None => Err(crate::logits::NOTHING_ALLOWED.to_string()),
            };
            match accepted {
                Ok(token) => {
                    if let Some(top) = state.logprobs() {
                        let row = *row;
                        wanted.push((*id, LogprobRow { row, token, top }));
                    }
                }
                Err(message) => failed.push((*id, message)),
            }
        }
        self.put_states(states);
        for (id, message) in failed {
            self.fail(id, FailureKind::Internal, &message);
        }
        let mut logprobs = HashMap::new();
        if !wanted.is_empty() {
            let rows: Vec<LogprobRow> = wanted.iter().map(|w| w.1).collect();
            let values = self.model.logprobs(&rows)?;
            logprobs.extend(wanted.into_iter().map(|w| w.0).zip(values));
        }
        // A failed row's token is never used: its sequence is gone.
        let tokens = drawn.into_iter().map(|t| t.unwrap_or(0)).collect();
        Ok((tokens, logprobs))
    }

    /// Takes the logit states of the sequences of `rows` out of the scheduler (put back by
    /// [`Engine::put_states`]), so jobs over the rows can own them while reading the sequences.
    fn take_states(&mut self, rows: &[(usize, RequestId)]) -> Vec<(usize, RequestId, LogitsState)> {
        rows.iter()
            .filter_map(|&(row, id)| {
                let state = self.sched.get_mut(id)?.logits.take()?;
                Some((row, id, state))
            })
            .collect()
    }

    fn put_states(&mut self, states: Vec<(usize, RequestId, LogitsState)>) {
        for (_, id, state) in states {
            if let Some(seq) = self.sched.get_mut(id) {
                seq.logits = Some(state);
            }
        }
    }

    /// Replaces the samples of `host` rows with tokens drawn on the host from their logits, read
    /// back, after each sequence's processing (in parallel over the rows); a sequence whose
    /// processing fails is failed. Returns the log-probabilities of the sequences that asked.
    fn sample_on_host(
        &mut self,
        host: &[(usize, RequestId)],
        params: &[SamplingParams],
        counters: &[u64],
        samples: &mut [u32],
    ) -> Result<HashMap<RequestId, TokenLogprobs>> {
        let Some(&(last, _)) = host.last() else {
            return Ok(HashMap::new());
        };
        let mut logits = std::mem::take(&mut self.host_logits);
        let read = self.model.logits_into(last + 1, &mut logits);
        if let Err(e) = read {
            self.host_logits = logits;
            return Err(e);
        }
        let vocab = (logits.len() / (last + 1)).max(1);
        // Each job owns its sequence's state (taken out, put back below) and its logit row.
        let mut states = self.take_states(host);
        let mut rows: Vec<Option<&mut [f32]>> = logits.chunks_mut(vocab).map(Some).collect();
        let sched = &self.sched;
        let results: Vec<(usize, RequestId, std::result::Result<HostSample, String>)> = states
            .iter_mut()
            .filter_map(|(row, id, state)| {
                let logits_row = rows.get_mut(*row)?.take()?;
                let seq = sched.get(*id)?;
                let cx = RowContext {
                    params: params.get(*row)?,
                    counter: counters.get(*row).copied()?,
                    tokens: &seq.tokens,
                    prompt_len: seq.prompt_len,
                    stop_tokens: &seq.stop_tokens,
                };
                Some((*row, *id, state, cx, logits_row))
            })
            .collect::<Vec<_>>()
            .into_par_iter()
            .map(|(row, id, state, cx, logits_row)| (row, id, state.sample(logits_row, &cx)))
            .collect();
        self.host_logits = logits;
        self.put_states(states);
        let mut out = HashMap::new();
        for (row, id, result) in results {
            match result {
                Ok(s) => {
                    if let Some(slot) = samples.get_mut(row) {
                        *slot = s.token;
                    }
                    if let Some(lp) = s.logprobs {
                        out.insert(id, lp);
                    }
                }
                Err(message) => self.fail(id, FailureKind::Internal, &message),
            }
        }
        Ok(out)
    }

    /// Emits the target's samples up to and including the first that disagrees with the draft
    /// (`samples[j]` follows the draft's first `j` tokens); the accepted draft tokens are computed.
    fn verify(&mut self, id: RequestId, samples: &[u32]) {
        let Some(seq) = self.sched.get_mut(id) else {
            return;
        };
        let draft = std::mem::take(&mut seq.draft);
        let drafted = samples.len().saturating_sub(1).min(draft.len());
        let accepted = accepted_len(draft.get(..drafted).unwrap_or(&[]), samples);
        if let Some(p) = seq.proposer.as_mut() {
            if drafted > 0 {
                p.verified(drafted, accepted);
            }
        }
        self.stats.add_draft(drafted, accepted);
        for (j, &tok) in samples.iter().take(accepted + 1).enumerate() {
            if !self.accept(id, tok) {
                return;
            }
            if j < accepted {
                // `tok` is draft token j, whose keys and values this step wrote.
                if let Some(seq) = self.sched.get_mut(id) {
                    seq.computed += 1;
                }
            }
        }
    }

    /// Appends a generated token, tells the owner, and ends the request when it is done. Returns
    /// whether the request goes on.
    fn accept(&mut self, id: RequestId, tok: u32) -> bool {
        let context = self.model.capacity().context_tokens;
        let Some(seq) = self.sched.get_mut(id) else {
            return false;
        };
        seq.tokens.push(tok);
        self.stats.add_generated(1);
        if !(seq.sink)(Output::Token(tok)) {
            self.end(id, FinishReason::Cancelled);
            return false;
        }
        let done = seq.logits.as_ref().is_some_and(LogitsState::is_finished);
        let reason = if seq.stop_tokens.contains(&tok) || done {
            Some(FinishReason::Stop)
        } else if seq.generated() >= seq.max_new_tokens || seq.tokens.len() >= context {
            Some(FinishReason::Length)
        } else {
            None
        };
        match reason {
            Some(reason) => {
                self.end(id, reason);
                false
            }
            None => true,
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
            self.stats.observe_device_bytes(probe(self.model));
        }
        if let Some(cache) = self.model.expert_cache_stats() {
            self.stats.set_expert_cache(cache);
        }
        if let Some(stream) = self.model.expert_stream_stats() {
            self.stats.set_expert_stream(stream);
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

/// Makes the KV block copies of a plan (prefix-cache restores and ring copies), pool by pool.
fn copy_blocks<B: Backend>(model: &mut Model<B>, copies: &[BlockCopy]) -> Result<()> {
    for kind in [crate::kv::PoolKind::Full, crate::kv::PoolKind::Sliding] {
        let pairs: Vec<(u32, u32)> = copies
            .iter()
            .filter(|c| c.0 == kind)
            .map(|&(_, s, d)| (s, d))
            .collect();
        if !pairs.is_empty() {
            model.copy_kv_blocks(kind, &pairs)?;
        }
    }
    Ok(())
}

/// Samples every logit row of the step (none: nothing to read back).
fn sample<B: Backend>(
    model: &Model<B>,
    params: &[SamplingParams],
    counters: &[u64],
) -> Result<Vec<u32>> {
    if params.is_empty() {
        return Ok(Vec::new());
    }
    model.sample(params, counters)
}
