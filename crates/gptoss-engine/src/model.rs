//! The gpt-oss forward pass, written once against [`Backend`] (spec §1.3): embed, then per layer
//! attention and MoE (each with its own norm and residual), then the final norm and the logits. The
//! layers may be split over several instances of the backend (`pipeline.rs`): each stage runs its layers
//! on its own instance and hands the hidden state to the next through the host.

use std::ops::Range;

use gptoss_formats::{LayerWeights, ModelConfig, ModelWeights};

use crate::backend::{
    AttnShape, Backend, Batch, Capacity, MoeArgs, MoeShape, NormInput, QkvBufs, Recording, Rope,
};
use crate::error::{Error, Result};
use crate::expert_cache::{ExpertCache, ExpertCacheStats};
use crate::expert_stream::{ExpertStream, ExpertStreamStats};
use crate::kv::{BlockTable, KvLayout};
use crate::math::yarn_inv_freq;
use crate::offload::{ExpertPlacement, HostMoe, HostMoeIo, HostSides, LayerExperts};
use crate::pipeline::LayerSplit;
use crate::trace::{TraceRecord, TraceSpec, Tracer};

/// One layer's weights on the backend.
pub struct DeviceLayer<B: Backend> {
    attn_norm: B::Vector,
    q: B::Linear,
    k: B::Linear,
    v: B::Linear,
    o: B::Linear,
    sinks: B::Vector,
    mlp_norm: B::Vector,
    router: B::Linear,
    experts: LayerExperts<B>,
}

/// Every activation buffer of a stage's step, allocated once at the step capacity.
struct Workspace<B: Backend> {
    x: B::Buf,
    h: B::Buf,
    q: B::Buf,
    k: B::Buf,
    v: B::Buf,
    attn: B::Buf,
    proj: B::Buf,
    routing: B::Routing,
    step: B::Step,
    /// Set only during [`Model::forward_traced`].
    trace: Option<Tracer<B>>,
    /// The CPU side of layers whose experts live in host memory (none when all are on the device).
    host: Option<HostMoe>,
    /// Device slots for the hottest host experts (none without host experts or when not asked for).
    cache: Option<ExpertCache<B>>,
    /// Big steps' host layers streamed to the device (none without host experts or when off).
    stream: Option<ExpertStream<B>>,
    /// Tokens of the step being issued.
    rows: usize,
}

/// The final norm, the lm_head and the logits, on the last stage's backend.
struct Head<B: Backend> {
    norm: B::Vector,
    lm_head: B::Linear,
    logits: B::Buf,
}

/// One stage of the pipeline (`pipeline.rs`): a backend instance with a contiguous run of layers, their
/// KV cache and its own step buffers. The first stage also holds the embedding.
struct Stage<B: Backend> {
    backend: B,
    /// The model index of its first layer (traces and windows use model indices; the stage's cache and
    /// attention ops number its layers from 0).
    first: usize,
    layers: Vec<DeviceLayer<B>>,
    /// Only on the first stage.
    embed: Option<B::Linear>,
    cache: B::Cache,
    ws: Workspace<B>,
}

/// A model loaded on one backend, or split by layers over several instances of one (a pipeline), with
/// its KV cache and step buffers.
pub struct Model<B: Backend> {
    config: ModelConfig,
    capacity: Capacity,
    layout: KvLayout,
    /// Every stage but the last, in order (empty without a split).
    front: Vec<Stage<B>>,
    /// The last stage: it holds the head, samples and is read for logits.
    back: Stage<B>,
    head: Head<B>,
    split: LayerSplit,
    /// The hidden state crossing between stages, through the host.
    hidden: Vec<f32>,
}

impl<B: Backend> Model<B> {
    /// Uploads `weights` to `backend` and allocates the paged KV cache and step buffers for `capacity`.
    pub fn new(backend: B, weights: &ModelWeights, capacity: Capacity) -> Result<Self> {
        Self::with_placement(
            backend,
            weights,
            capacity,
            &ExpertPlacement::all_on_device(),
        )
    }

    /// As [`Model::new`], with the experts of the layers `placement` names kept in host memory and run by
    /// the CPU backend (see `offload.rs`).
    pub fn with_placement(
        backend: B,
        weights: &ModelWeights,
        capacity: Capacity,
        placement: &ExpertPlacement,
    ) -> Result<Self> {
        let split = LayerSplit::whole(weights.layers.len());
        Self::pipeline(vec![backend], &split, weights, capacity, placement)
    }

    /// The model split by layers over `backends` (one per stage of `split`, in order; see
    /// `pipeline.rs`): each uploads its layers and allocates their KV cache, the first the embedding, the
    /// last the final norm, lm_head and logits. The experts `placement` names stay in host memory as
    /// with one backend, the hot-expert cache's slots shared out over the stages.
    pub fn pipeline(
        backends: Vec<B>,
        split: &LayerSplit,
        weights: &ModelWeights,
        capacity: Capacity,
        placement: &ExpertPlacement,
    ) -> Result<Self> {
        let config = weights.config.clone();
        if split.layers() != weights.layers.len() || split.stages() != backends.len() {
            return Err(Error::invalid(format!(
                "a split of {} stages over {} layers ({split}) for {} backends and a model of {} layers",
                split.stages(),
                split.layers(),
                backends.len(),
                weights.layers.len()
            )));
        }
        let layout = KvLayout::new(&config, &capacity)?;
        let (inv_freq, concentration) = yarn_inv_freq(&config);
        let rope = Rope {
            inv_freq,
            concentration,
        };
        let ranges = split.ranges();
        let placements = placement.stages(&ranges);
        let mut stages = Vec::with_capacity(backends.len());
        for ((backend, range), placement) in backends.into_iter().zip(ranges).zip(&placements) {
            let build = StageBuild {
                weights,
                capacity: &capacity,
                layout: &layout,
                rope: &rope,
                placement,
            };
            stages.push(build.stage(backend, range)?);
        }
        let Some(mut back) = stages.pop() else {
            return Err(Error::invalid("a model needs at least one stage"));
        };
        let b = &back.backend;
        let head = Head {
            norm: b.upload_vector(&weights.norm)?,
            lm_head: b.upload_linear(&gptoss_formats::Linear {
                weight: weights.lm_head.clone(),
                bias: None,
            })?,
            logits: b.alloc(capacity.max_logit_rows, config.vocab_size)?,
        };
        let first = stages.first_mut().unwrap_or(&mut back);
        first.embed = Some(first.backend.upload_embedding(&weights.embed)?);
        for stage in stages.iter().chain(std::iter::once(&back)) {
            stage.backend.finish_upload()?;
        }
        Ok(Model {
            hidden: Vec::new(),
            split: split.clone(),
            front: stages,
            back,
            head,
            layout,
            config,
            capacity,
        })
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The layers of each stage (one stage without a split).
    pub fn split(&self) -> &LayerSplit {
        &self.split
    }

    /// The hot-expert cache's counters, summed over the stages (`None` without one).
    pub fn expert_cache_stats(&self) -> Option<ExpertCacheStats> {
        self.stages()
            .filter_map(|s| s.ws.cache.as_ref().map(ExpertCache::stats))
            .reduce(ExpertCacheStats::combined)
    }

    /// Streaming's counters, summed over the stages (`None` when no stage streams).
    pub fn expert_stream_stats(&self) -> Option<ExpertStreamStats> {
        self.stages()
            .filter_map(|s| s.ws.stream.as_ref().map(ExpertStream::stats))
            .reduce(ExpertStreamStats::combined)
    }

    /// The backend of the last stage (the only one without a split): it holds the logits and samples.
    pub fn backend(&self) -> &B {
        &self.back.backend
    }

    /// Every stage's backend, in order.
    pub fn backends(&self) -> impl Iterator<Item = &B> {
        self.stages().map(|s| &s.backend)
    }

    fn stages(&self) -> impl Iterator<Item = &Stage<B>> {
        self.front.iter().chain(std::iter::once(&self.back))
    }

    /// The step and cache capacity the model was built with.
    pub fn capacity(&self) -> &Capacity {
        &self.capacity
    }

    /// Runs one step; the logits of `batch.logit_rows` are left in the logits buffer (see [`Model::logits`]).
    pub fn forward(&mut self, batch: &Batch) -> Result<()> {
        self.check_batch(batch)?;
        let rows = batch.tokens.len();
        let c = &self.config;
        for stage in &mut self.front {
            stage.begin_step(batch, &self.hidden)?;
            stage.run(c, None)?;
            stage
                .backend
                .read_into(&stage.ws.x, rows, &mut self.hidden)?;
        }
        self.back.begin_step(batch, &self.hidden)?;
        self.back.run(c, Some(&mut self.head))
    }

    /// Runs one step like [`Model::forward`], unrecorded, and returns the intermediates `spec` asks for
    /// under their canonical names, in the order the ops ran; the logits of `batch.logit_rows` are left
    /// as `forward` leaves them.
    pub fn forward_traced(
        &mut self,
        batch: &Batch,
        spec: TraceSpec<'_>,
    ) -> Result<Vec<TraceRecord>> {
        self.check_batch(batch)?;
        let rows = batch.tokens.len();
        let (c, experts) = (&self.config, self.config.num_local_experts);
        let mut records = Vec::new();
        let count = self.front.len() + 1;
        for i in 0..count {
            let (stage, head) = match self.front.get_mut(i) {
                Some(stage) => (stage, None),
                None => (&mut self.back, Some(&mut self.head)),
            };
            let tracer = Tracer::new(&stage.backend, spec, rows, experts)?;
            stage.begin_step(batch, &self.hidden)?;
            stage.ws.trace = Some(tracer);
            let issued = stage.issue_ops(c, head);
            let tracer = stage.ws.trace.take();
            issued?;
            records.extend(tracer.map(Tracer::into_records).unwrap_or_default());
            if i + 1 < count {
                stage
                    .backend
                    .read_into(&stage.ws.x, rows, &mut self.hidden)?;
            }
        }
        Ok(records)
    }

    /// The logits of the last step's logit rows, `[rows, vocab]` flattened, on the host.
    pub fn logits(&self, rows: usize) -> Result<Vec<f32>> {
        self.back.backend.read(&self.head.logits, rows)
    }

    /// [`Model::logits`] into `out`, reusing its allocation.
    pub fn logits_into(&self, rows: usize, out: &mut Vec<f32>) -> Result<()> {
        self.back.backend.read_into(&self.head.logits, rows, out)
    }

    /// Samples one token for each of the last step's logit rows.
    pub fn sample(
        &self,
        params: &[crate::backend::SamplingParams],
        counters: &[u64],
    ) -> Result<Vec<u32>> {
        self.back
            .backend
            .sample(&self.head.logits, params, counters)
    }

    /// [`Model::sample`] with some rows under a token mask (see [`Backend::sample_masked`]).
    pub fn sample_masked(
        &self,
        params: &[crate::backend::SamplingParams],
        counters: &[u64],
        masks: &[Option<&[u32]>],
    ) -> Result<Vec<Option<u32>>> {
        self.back
            .backend
            .sample_masked(&self.head.logits, params, counters, masks)
    }

    /// The log-probabilities of sampled tokens of the last step's logit rows (see
    /// [`Backend::logprobs`]).
    pub fn logprobs(
        &self,
        rows: &[crate::backend::LogprobRow],
    ) -> Result<Vec<crate::logits::TokenLogprobs>> {
        self.back.backend.logprobs(&self.head.logits, rows)
    }

    /// Copies whole KV blocks within a pool (prefix caching; see [`Backend::copy_blocks`]).
    pub fn copy_kv_blocks(
        &mut self,
        kind: crate::kv::PoolKind,
        pairs: &[(u32, u32)],
    ) -> Result<()> {
        let pool = self.layout.blocks_of(kind) as u32;
        if let Some(&(s, d)) = pairs.iter().find(|&&(s, d)| s >= pool || d >= pool) {
            return Err(Error::invalid(format!(
                "KV block copy {s} -> {d} outside the {kind:?} pool of {pool} blocks"
            )));
        }
        for stage in self.front.iter_mut().chain(std::iter::once(&mut self.back)) {
            stage.backend.copy_blocks(&mut stage.cache, kind, pairs)?;
        }
        Ok(())
    }

    /// The KV cache of the last stage, which is all of it without a split (tests look at which blocks
    /// were written).
    pub fn cache(&self) -> &B::Cache {
        &self.back.cache
    }

    /// The paged KV cache's pools and table widths.
    pub fn kv_layout(&self) -> &KvLayout {
        &self.layout
    }

    /// The block table of a single sequence owning the first blocks of both pools (see
    /// [`KvLayout::solo_table`]); for runs of one sequence at a time.
    pub fn solo_table(&self) -> BlockTable {
        self.layout.solo_table()
    }

    fn check_batch(&self, batch: &Batch) -> Result<()> {
        let cap = &self.capacity;
        let n = batch.tokens.len();
        if n == 0 || n > cap.max_batch_tokens {
            return Err(Error::invalid(format!(
                "a step holds 1..={} tokens, got {n}",
                cap.max_batch_tokens
            )));
        }
        if batch.positions.len() != n || batch.seqs.len() != n {
            return Err(Error::invalid(
                "batch tokens, positions and sequence indices differ in length",
            ));
        }
        if batch.logit_rows.len() > cap.max_logit_rows
            || batch.logit_rows.iter().any(|&r| r as usize >= n)
        {
            return Err(Error::invalid("batch logit rows out of range"));
        }
        if let Some(&t) = batch
            .tokens
            .iter()
            .find(|&&t| t as usize >= self.config.vocab_size)
        {
            return Err(Error::invalid(format!(
                "token id {t} is outside the vocabulary of {}",
                self.config.vocab_size
            )));
        }
        if let Some(&p) = batch
            .positions
            .iter()
            .find(|&&p| p as usize >= cap.context_tokens)
        {
            return Err(Error::invalid(format!(
                "position {p} is beyond the context of {} tokens",
                cap.context_tokens
            )));
        }
        self.check_tables(batch)
    }

    /// Every block a token writes or reads is in its sequence's table and inside the pools.
    fn check_tables(&self, batch: &Batch) -> Result<()> {
        let l = &self.layout;
        let max_seqs = self.capacity.max_step_seqs();
        if batch.tables.len() > max_seqs {
            return Err(Error::invalid(format!(
                "a step holds at most {max_seqs} sequences, got {}",
                batch.tables.len()
            )));
        }
        if let Some(&s) = batch
            .seqs
            .iter()
            .find(|&&s| s as usize >= batch.tables.len())
        {
            return Err(Error::invalid(format!(
                "token of sequence {s} in a step of {} block tables",
                batch.tables.len()
            )));
        }
        for (i, (table, last)) in batch.tables.iter().zip(batch.last_positions()).enumerate() {
            let Some(last) = last else { continue };
            let (full, sliding) = l.blocks_for(last as usize + 1);
            let check = |what: &str, have: usize, need: usize, pool: usize, entries: &[u32]| {
                let outside = entries.iter().find(|&&b| b as usize >= pool);
                if have < need || outside.is_some() {
                    return Err(Error::invalid(format!(
                        "sequence {i} of the step reaches position {last}: its {what} table needs {need} \
                         blocks below {pool}, has {have}{}",
                        outside.map_or(String::new(), |b| format!(" (block {b} is outside the pool)"))
                    )));
                }
                Ok(())
            };
            if table.full.len() > l.table_blocks || table.sliding.len() > l.ring_blocks {
                return Err(Error::invalid(format!(
                    "sequence {i}: a table of {} full / {} sliding blocks; at most {} / {}",
                    table.full.len(),
                    table.sliding.len(),
                    l.table_blocks,
                    l.ring_blocks
                )));
            }
            check("full", table.full.len(), full, l.full_blocks, &table.full)?;
            check(
                "sliding",
                table.sliding.len(),
                sliding,
                l.sliding_blocks,
                &table.sliding,
            )?;
        }
        Ok(())
    }
}

/// What every stage is built from.
struct StageBuild<'a> {
    weights: &'a ModelWeights,
    capacity: &'a Capacity,
    /// The model's KV layout (each stage keeps its layers of it).
    layout: &'a KvLayout,
    rope: &'a Rope,
    /// The stage's expert placement, its layers numbered from 0.
    placement: &'a ExpertPlacement,
}

impl StageBuild<'_> {
    /// Uploads the layers `range` to `backend` and allocates their KV cache and the stage's step buffers.
    fn stage<B: Backend>(&self, backend: B, range: Range<usize>) -> Result<Stage<B>> {
        let (config, capacity, placement) = (&self.weights.config, self.capacity, self.placement);
        let weights = self.weights.layers.get(range.clone()).ok_or_else(|| {
            Error::invalid(format!(
                "stage layers {range:?} outside the model's {} layers",
                self.weights.layers.len()
            ))
        })?;
        let layout = self.layout.stage(range.clone())?;
        let b = &backend;
        let layers = weights
            .iter()
            .enumerate()
            .map(|(i, l)| upload_layer(b, l, placement.on_host(i)))
            .collect::<Result<Vec<_>>>()?;
        let dims = (config.hidden_size, config.num_experts_per_tok);
        let (host, stream) = match placement.host_layers() {
            0 => (None, None),
            _ => (
                Some(HostMoe::new(placement, capacity, &layout, self.rope, dims)?),
                ExpertStream::new(placement.streaming(), dims.1),
            ),
        };
        let experts: Vec<&[gptoss_formats::Expert]> =
            weights.iter().map(|l| &l.experts[..]).collect();
        let cache = ExpertCache::new(b, placement, &experts, capacity, dims)?;
        let rows = capacity.max_batch_tokens;
        let ws = Workspace {
            x: b.alloc(rows, config.hidden_size)?,
            h: b.alloc(rows, config.hidden_size)?,
            q: b.alloc(rows, config.q_width())?,
            k: b.alloc(rows, config.kv_width())?,
            v: b.alloc(rows, config.kv_width())?,
            attn: b.alloc(rows, config.q_width())?,
            proj: b.alloc(rows, config.hidden_size)?,
            routing: b.alloc_routing(rows, config.num_experts_per_tok)?,
            step: b.alloc_step(capacity, &layout, self.rope)?,
            trace: None,
            host,
            cache,
            stream,
            rows: 0,
        };
        Ok(Stage {
            cache: b.alloc_cache(&layout)?,
            first: range.start,
            layers,
            embed: None,
            ws,
            backend,
        })
    }
}

impl<B: Backend> Stage<B> {
    /// Takes the step's batch; a stage after the first takes the hidden state `x` the one before left.
    fn begin_step(&mut self, batch: &Batch, x: &[f32]) -> Result<()> {
        let rows = batch.tokens.len();
        self.backend.begin_step(&mut self.ws.step, batch)?;
        self.ws.rows = rows;
        // A streamed step leaves the hot-expert cache as it was (no counts, no refresh).
        let streamed = self.ws.stream.as_mut().is_some_and(|s| s.begin_step(rows));
        if let (Some(cache), false) = (&mut self.ws.cache, streamed) {
            cache.begin_step();
        }
        if let Some(host) = &mut self.ws.host {
            host.begin(batch)?;
        }
        match self.embed {
            Some(_) => Ok(()),
            // Before any recording: a replayed step reads `x` as the graph's input.
            None => self.backend.write(&mut self.ws.x, rows, x),
        }
    }

    /// Issues the stage's ops, from a recording where the backend has one.
    fn run(&mut self, c: &ModelConfig, mut head: Option<&mut Head<B>>) -> Result<()> {
        if self.ws.host.is_some() {
            // Host experts read the device mid-step: nothing to record.
            return self.issue_ops(c, head);
        }
        match self.backend.recording(&self.ws.step)? {
            Recording::Replayed => Ok(()),
            Recording::Off => self.issue_ops(c, head),
            Recording::Recording => {
                let issued = self.issue_ops(c, head.as_deref_mut());
                if self
                    .backend
                    .finish_recording(&self.ws.step, issued.is_ok())?
                {
                    issued
                } else {
                    self.issue_ops(c, head)
                }
            }
        }
    }

    /// Queues every op of the stage's part of the step begun by `begin_step`: the embedding on the
    /// first stage, its layers, and the head on the last.
    fn issue_ops(&mut self, c: &ModelConfig, head: Option<&mut Head<B>>) -> Result<()> {
        let (b, ws) = (&self.backend, &mut self.ws);
        if let Some(embed) = &self.embed {
            b.embed(&ws.step, embed, &mut ws.x)?;
            tap(b, &mut ws.trace, None, "embed", &ws.x)?;
        }
        // Each block leaves its output in `proj`; the next norm adds it into x (one launch where the backend
        // fuses the two).
        let mut pending = None;
        for (i, layer) in self.layers.iter().enumerate() {
            let at = LayerAt {
                model: self.first + i,
                stage: i,
            };
            attention_block(b, c, at, layer, ws, &mut self.cache, pending)?;
            moe_block(b, c, at, layer, ws)?;
            pending = Some(Pending {
                layer: Some(at.model),
                node: "layer_out",
            });
        }
        let Some(head) = head else {
            // The next stage reads x: the last residual goes in now.
            if let Some(p) = pending {
                b.add(&ws.step, &mut ws.x, &ws.proj)?;
                tap(b, &mut ws.trace, p.layer, p.node, &ws.x)?;
            }
            return Ok(());
        };
        norm_after(b, ws, pending, &head.norm, c.rms_norm_eps as f32)?;
        tap(b, &mut ws.trace, None, "norm", &ws.h)?;
        b.logits(&ws.step, &ws.h, &head.lm_head, &mut head.logits)
    }
}

/// A residual not yet added into x: `proj` of the block before, traced as `node` of `layer` once added.
#[derive(Clone, Copy)]
struct Pending {
    layer: Option<usize>,
    node: &'static str,
}

/// `h = rms_norm(x) · w`, after `x += proj` when a residual is pending.
fn norm_after<B: Backend>(
    b: &B,
    ws: &mut Workspace<B>,
    pending: Option<Pending>,
    w: &B::Vector,
    eps: f32,
) -> Result<()> {
    let mut norm = NormInput {
        x: &mut ws.x,
        y: pending.map(|_| &ws.proj),
        weight: w,
        eps,
        h: &mut ws.h,
    };
    norm.run(b, &ws.step)?;
    match pending {
        Some(p) => tap(b, &mut ws.trace, p.layer, p.node, &ws.x),
        None => Ok(()),
    }
}

/// A layer's index in the model (traces, its window) and in its stage (its KV cache, its host experts).
#[derive(Clone, Copy)]
struct LayerAt {
    model: usize,
    stage: usize,
}

fn upload_layer<B: Backend>(b: &B, l: &LayerWeights, on_host: bool) -> Result<DeviceLayer<B>> {
    Ok(DeviceLayer {
        attn_norm: b.upload_vector(&l.attn_norm)?,
        q: b.upload_linear(&l.q)?,
        k: b.upload_linear(&l.k)?,
        v: b.upload_linear(&l.v)?,
        o: b.upload_linear(&l.o)?,
        sinks: b.upload_vector(&l.sinks)?,
        mlp_norm: b.upload_vector(&l.mlp_norm)?,
        router: b.upload_linear(&l.router)?,
        experts: if on_host {
            LayerExperts::Host(l.experts.clone())
        } else {
            LayerExperts::Device(b.upload_experts(&l.experts)?)
        },
    })
}

/// `proj = o(attention(rope(q), rope(k), v))` with `q, k, v` from `rms_norm(x)` (after adding the pending
/// residual into x); the caller adds `proj` into x.
fn attention_block<B: Backend>(
    b: &B,
    c: &ModelConfig,
    l: LayerAt,
    layer: &DeviceLayer<B>,
    ws: &mut Workspace<B>,
    cache: &mut B::Cache,
    pending: Option<Pending>,
) -> Result<()> {
    let at = Some(l.model);
    let qkv = [&layer.q, &layer.k, &layer.v];
    if ws.trace.is_none() {
        let norm = NormInput {
            x: &mut ws.x,
            y: pending.map(|_| &ws.proj),
            weight: &layer.attn_norm,
            eps: c.rms_norm_eps as f32,
            h: &mut ws.h,
        };
        b.norm_linear3(&ws.step, norm, qkv, [&mut ws.q, &mut ws.k, &mut ws.v])?;
    } else {
        norm_after(b, ws, pending, &layer.attn_norm, c.rms_norm_eps as f32)?;
        tap(b, &mut ws.trace, at, "attn_norm", &ws.h)?;
        b.linear3(&ws.step, &ws.h, qkv, [&mut ws.q, &mut ws.k, &mut ws.v])?;
    }
    let s = &ws.step;
    tap(b, &mut ws.trace, at, "q", &ws.q)?;
    tap(b, &mut ws.trace, at, "k", &ws.k)?;
    tap(b, &mut ws.trace, at, "v", &ws.v)?;
    let shape = AttnShape {
        layer: l.stage,
        n_q_heads: c.num_attention_heads,
        n_kv_heads: c.num_key_value_heads,
        head_dim: c.head_dim,
        window: c.window(l.model),
    };
    let qkv = QkvBufs {
        q: &mut ws.q,
        k: &mut ws.k,
        v: &ws.v,
    };
    if ws.trace.is_none() {
        b.rope_attention(s, &shape, qkv, (&layer.sinks, cache), &mut ws.attn)?;
    } else {
        b.rope_store_kv(s, &shape, qkv, cache)?;
        tap(b, &mut ws.trace, at, "q_rope", &ws.q)?;
        tap(b, &mut ws.trace, at, "k_rope", &ws.k)?;
        b.attention(s, &shape, &ws.q, &layer.sinks, cache, &mut ws.attn)?;
    }
    tap(b, &mut ws.trace, at, "attn_out", &ws.attn)?;
    b.linear(s, &ws.attn, &layer.o, &mut ws.proj)?;
    tap(b, &mut ws.trace, at, "attn_proj", &ws.proj)
}

/// `x += attention proj`, then `proj = moe(rms_norm(x))`; the caller adds `proj` into x.
fn moe_block<B: Backend>(
    b: &B,
    c: &ModelConfig,
    at: LayerAt,
    layer: &DeviceLayer<B>,
    ws: &mut Workspace<B>,
) -> Result<()> {
    let resid = Pending {
        layer: Some(at.model),
        node: "attn_resid",
    };
    let top_k = c.num_experts_per_tok;
    if ws.trace.is_none() {
        let norm = NormInput {
            x: &mut ws.x,
            y: Some(&ws.proj),
            weight: &layer.mlp_norm,
            eps: c.rms_norm_eps as f32,
            h: &mut ws.h,
        };
        let moe_follows = matches!(layer.experts, LayerExperts::Device(_));
        let select = (top_k, moe_follows);
        b.norm_route(&ws.step, norm, &layer.router, select, &mut ws.routing)?;
    } else {
        norm_after(b, ws, Some(resid), &layer.mlp_norm, c.rms_norm_eps as f32)?;
        let s = &ws.step;
        tap(b, &mut ws.trace, Some(at.model), "mlp_norm", &ws.h)?;
        if let Some(t) = ws.trace.as_mut() {
            t.tap_router(b, s, at.model, &ws.h, &layer.router)?;
        }
        b.route(s, &ws.h, &layer.router, top_k, &mut ws.routing)?;
        if let Some(t) = ws.trace.as_mut() {
            t.tap_routing(b, at.model, &ws.routing, top_k)?;
        }
    }
    let s = &ws.step;
    let shape = MoeShape {
        top_k: c.num_experts_per_tok,
        swiglu_alpha: c.swiglu_alpha as f32,
        swiglu_limit: c.swiglu_limit as f32,
    };
    match (&layer.experts, ws.host.as_mut()) {
        (LayerExperts::Device(experts), _) => {
            let args = MoeArgs {
                h: &ws.h,
                experts,
                routing: &ws.routing,
                shape,
            };
            b.moe(s, args, &mut ws.proj)?;
        }
        (LayerExperts::Host(experts), Some(host)) => {
            let io = HostMoeIo {
                h: &ws.h,
                routing: &ws.routing,
                experts,
                shape,
            };
            let sides = HostSides {
                host,
                cache: ws.cache.as_mut(),
                stream: ws.stream.as_mut(),
            };
            sides.run(b, io, (s, at.stage, ws.rows), &mut ws.proj)?;
        }
        (LayerExperts::Host(_), None) => {
            return Err(Error::invalid("host experts without host buffers"));
        }
    }
    tap(b, &mut ws.trace, Some(at.model), "moe_out", &ws.proj)
}

/// Records `buf` under `node` when the step is traced.
fn tap<B: Backend>(
    b: &B,
    trace: &mut Option<Tracer<B>>,
    layer: Option<usize>,
    node: &'static str,
    buf: &B::Buf,
) -> Result<()> {
    match trace {
        Some(t) => t.tap(b, layer, node, buf),
        None => Ok(()),
    }
}
