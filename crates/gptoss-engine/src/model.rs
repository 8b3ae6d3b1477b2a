//! The gpt-oss forward pass, written once against [`Backend`] (spec §1.3): embed, then per layer
//! attention and MoE (each with its own norm and residual), then the final norm and the logits.

use gptoss_formats::{LayerWeights, ModelConfig, ModelWeights};

use crate::backend::{
    AttnShape, Backend, Batch, Capacity, MoeArgs, MoeShape, QkvBufs, Recording, Rope,
};
use crate::error::{Error, Result};
use crate::expert_cache::{CachedMoe, ExpertCache, ExpertCacheStats};
use crate::kv::{BlockTable, KvLayout};
use crate::math::yarn_inv_freq;
use crate::offload::{ExpertPlacement, HostMoe, HostMoeIo, LayerExperts};
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

/// Every activation buffer of a step, allocated once at the step capacity.
struct Workspace<B: Backend> {
    x: B::Buf,
    h: B::Buf,
    q: B::Buf,
    k: B::Buf,
    v: B::Buf,
    attn: B::Buf,
    proj: B::Buf,
    routing: B::Routing,
    logits: B::Buf,
    step: B::Step,
    /// Set only during [`Model::forward_traced`].
    trace: Option<Tracer<B>>,
    /// The CPU side of layers whose experts live in host memory (none when all are on the device).
    host: Option<HostMoe>,
    /// Device slots for the hottest host experts (none without host experts or when not asked for).
    cache: Option<ExpertCache<B>>,
    /// Tokens of the step being issued.
    rows: usize,
}

/// A model loaded on a backend, with its KV cache and step buffers.
pub struct Model<B: Backend> {
    backend: B,
    config: ModelConfig,
    capacity: Capacity,
    layout: KvLayout,
    embed: B::Linear,
    layers: Vec<DeviceLayer<B>>,
    norm: B::Vector,
    lm_head: B::Linear,
    cache: B::Cache,
    ws: Workspace<B>,
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
        let config = weights.config.clone();
        let layout = KvLayout::new(&config, &capacity)?;
        let b = &backend;
        let layers = weights
            .layers
            .iter()
            .enumerate()
            .map(|(i, l)| upload_layer(b, l, placement.on_host(i)))
            .collect::<Result<Vec<_>>>()?;
        let (inv_freq, concentration) = yarn_inv_freq(&config);
        let rope = Rope {
            inv_freq,
            concentration,
        };
        let host = match placement.host_layers() {
            0 => None,
            _ => Some(HostMoe::new(
                placement,
                &capacity,
                &layout,
                &rope,
                (config.hidden_size, config.num_experts_per_tok),
            )?),
        };
        let dims = (config.hidden_size, config.num_experts_per_tok);
        let experts: Vec<&[gptoss_formats::Expert]> =
            weights.layers.iter().map(|l| &l.experts[..]).collect();
        let cache = ExpertCache::new(b, placement, &experts, &capacity, dims)?;
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
            logits: b.alloc(capacity.max_logit_rows, config.vocab_size)?,
            step: b.alloc_step(&capacity, &layout, &rope)?,
            trace: None,
            host,
            cache,
            rows: 0,
        };
        let embed = b.upload_embedding(&weights.embed)?;
        let norm = b.upload_vector(&weights.norm)?;
        let lm_head = b.upload_linear(&gptoss_formats::Linear {
            weight: weights.lm_head.clone(),
            bias: None,
        })?;
        b.finish_upload()?;
        Ok(Model {
            embed,
            norm,
            lm_head,
            cache: b.alloc_cache(&layout)?,
            layout,
            layers,
            ws,
            config,
            capacity,
            backend,
        })
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The hot-expert cache's counters (`None` without one).
    pub fn expert_cache_stats(&self) -> Option<ExpertCacheStats> {
        self.ws.cache.as_ref().map(ExpertCache::stats)
    }

    /// The backend the model runs on.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The step and cache capacity the model was built with.
    pub fn capacity(&self) -> &Capacity {
        &self.capacity
    }

    /// Runs one step; the logits of `batch.logit_rows` are left in the logits buffer (see [`Model::logits`]).
    pub fn forward(&mut self, batch: &Batch) -> Result<()> {
        self.check_batch(batch)?;
        self.begin_step(batch)?;
        if self.ws.host.is_some() {
            // Host experts read the device mid-step: nothing to record.
            return self.issue_ops();
        }
        match self.backend.recording(&self.ws.step)? {
            Recording::Replayed => Ok(()),
            Recording::Off => self.issue_ops(),
            Recording::Recording => {
                let issued = self.issue_ops();
                if self
                    .backend
                    .finish_recording(&self.ws.step, issued.is_ok())?
                {
                    issued
                } else {
                    self.issue_ops()
                }
            }
        }
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
        let tracer = Tracer::new(
            &self.backend,
            spec,
            batch.tokens.len(),
            self.config.num_local_experts,
        )?;
        self.begin_step(batch)?;
        self.ws.trace = Some(tracer);
        let issued = self.issue_ops();
        let tracer = self.ws.trace.take();
        issued?;
        Ok(tracer.map(Tracer::into_records).unwrap_or_default())
    }

    fn begin_step(&mut self, batch: &Batch) -> Result<()> {
        self.backend.begin_step(&mut self.ws.step, batch)?;
        self.ws.rows = batch.tokens.len();
        if let Some(cache) = &mut self.ws.cache {
            cache.begin_step();
        }
        match &mut self.ws.host {
            Some(host) => host.begin(batch),
            None => Ok(()),
        }
    }

    /// Queues every op of the step begun by `forward`.
    fn issue_ops(&mut self) -> Result<()> {
        let (b, c, ws) = (&self.backend, &self.config, &mut self.ws);
        b.embed(&ws.step, &self.embed, &mut ws.x)?;
        tap(b, &mut ws.trace, None, "embed", &ws.x)?;
        for (l, layer) in self.layers.iter().enumerate() {
            attention_block(b, c, l, layer, ws, &mut self.cache)?;
            moe_block(b, c, l, layer, ws)?;
        }
        b.rms_norm(
            &ws.step,
            &ws.x,
            &self.norm,
            c.rms_norm_eps as f32,
            &mut ws.h,
        )?;
        tap(b, &mut ws.trace, None, "norm", &ws.h)?;
        b.logits(&ws.step, &ws.h, &self.lm_head, &mut ws.logits)
    }

    /// The logits of the last step's logit rows, `[rows, vocab]` flattened, on the host.
    pub fn logits(&self, rows: usize) -> Result<Vec<f32>> {
        self.backend.read(&self.ws.logits, rows)
    }

    /// [`Model::logits`] into `out`, reusing its allocation.
    pub fn logits_into(&self, rows: usize, out: &mut Vec<f32>) -> Result<()> {
        self.backend.read_into(&self.ws.logits, rows, out)
    }

    /// Samples one token for each of the last step's logit rows.
    pub fn sample(
        &self,
        params: &[crate::backend::SamplingParams],
        counters: &[u64],
    ) -> Result<Vec<u32>> {
        self.backend.sample(&self.ws.logits, params, counters)
    }

    /// [`Model::sample`] with some rows under a token mask (see [`Backend::sample_masked`]).
    pub fn sample_masked(
        &self,
        params: &[crate::backend::SamplingParams],
        counters: &[u64],
        masks: &[Option<&[u32]>],
    ) -> Result<Vec<Option<u32>>> {
        self.backend
            .sample_masked(&self.ws.logits, params, counters, masks)
    }

    /// The log-probabilities of sampled tokens of the last step's logit rows (see
    /// [`Backend::logprobs`]).
    pub fn logprobs(
        &self,
        rows: &[crate::backend::LogprobRow],
    ) -> Result<Vec<crate::logits::TokenLogprobs>> {
        self.backend.logprobs(&self.ws.logits, rows)
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
        self.backend.copy_blocks(&mut self.cache, kind, pairs)
    }

    /// The KV cache (tests look at which blocks were written).
    pub fn cache(&self) -> &B::Cache {
        &self.cache
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

/// `x += o(attention(rope(q), rope(k), v))` with `q, k, v` from `rms_norm(x)`.
fn attention_block<B: Backend>(
    b: &B,
    c: &ModelConfig,
    l: usize,
    layer: &DeviceLayer<B>,
    ws: &mut Workspace<B>,
    cache: &mut B::Cache,
) -> Result<()> {
    let s = &ws.step;
    let at = Some(l);
    b.rms_norm(s, &ws.x, &layer.attn_norm, c.rms_norm_eps as f32, &mut ws.h)?;
    tap(b, &mut ws.trace, at, "attn_norm", &ws.h)?;
    b.linear(s, &ws.h, &layer.q, &mut ws.q)?;
    b.linear(s, &ws.h, &layer.k, &mut ws.k)?;
    b.linear(s, &ws.h, &layer.v, &mut ws.v)?;
    tap(b, &mut ws.trace, at, "q", &ws.q)?;
    tap(b, &mut ws.trace, at, "k", &ws.k)?;
    tap(b, &mut ws.trace, at, "v", &ws.v)?;
    let shape = AttnShape {
        layer: l,
        n_q_heads: c.num_attention_heads,
        n_kv_heads: c.num_key_value_heads,
        head_dim: c.head_dim,
        window: c.window(l),
    };
    b.rope_store_kv(
        s,
        &shape,
        QkvBufs {
            q: &mut ws.q,
            k: &mut ws.k,
            v: &ws.v,
        },
        cache,
    )?;
    tap(b, &mut ws.trace, at, "q_rope", &ws.q)?;
    tap(b, &mut ws.trace, at, "k_rope", &ws.k)?;
    b.attention(s, &shape, &ws.q, &layer.sinks, cache, &mut ws.attn)?;
    tap(b, &mut ws.trace, at, "attn_out", &ws.attn)?;
    b.linear(s, &ws.attn, &layer.o, &mut ws.proj)?;
    tap(b, &mut ws.trace, at, "attn_proj", &ws.proj)?;
    b.add(s, &mut ws.x, &ws.proj)?;
    tap(b, &mut ws.trace, at, "attn_resid", &ws.x)
}

/// `x += moe(rms_norm(x))`.
fn moe_block<B: Backend>(
    b: &B,
    c: &ModelConfig,
    l: usize,
    layer: &DeviceLayer<B>,
    ws: &mut Workspace<B>,
) -> Result<()> {
    let s = &ws.step;
    b.rms_norm(s, &ws.x, &layer.mlp_norm, c.rms_norm_eps as f32, &mut ws.h)?;
    tap(b, &mut ws.trace, Some(l), "mlp_norm", &ws.h)?;
    if let Some(t) = ws.trace.as_mut() {
        t.tap_router(b, s, l, &ws.h, &layer.router)?;
    }
    b.route(
        s,
        &ws.h,
        &layer.router,
        c.num_experts_per_tok,
        &mut ws.routing,
    )?;
    if let Some(t) = ws.trace.as_mut() {
        t.tap_routing(b, l, &ws.routing, c.num_experts_per_tok)?;
    }
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
            match ws.cache.as_mut() {
                Some(cache) => {
                    let m = CachedMoe {
                        io,
                        step: s,
                        layer: l,
                        rows: ws.rows,
                    };
                    cache.run(b, host, m, &mut ws.proj)?;
                }
                None => host.run(b, io, ws.rows, &mut ws.proj)?,
            }
        }
        (LayerExperts::Host(_), None) => {
            return Err(Error::invalid("host experts without host buffers"));
        }
    }
    tap(b, &mut ws.trace, Some(l), "moe_out", &ws.proj)?;
    b.add(s, &mut ws.x, &ws.proj)?;
    tap(b, &mut ws.trace, Some(l), "layer_out", &ws.x)
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
