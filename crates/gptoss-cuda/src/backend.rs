//! [`CudaBackend`]: the engine's [`Backend`] on one NVIDIA GPU. Uploads repack weights (`weights.rs`), every
//! buffer is counted against the `--max-vram` budget, and ops only queue work on the one stream: nothing in
//! a forward step waits for the device (reads and sampling do, after the step).

use std::cell::{Cell, RefCell};

use gptoss_engine::backend::{
    AttnShape, Backend, Batch, Capacity, MoeArgs, NormInput, QkvBufs, Recording, Rope,
    SamplingParams,
};
use gptoss_engine::memory::{KvPrecision, MemoryPlan};
use gptoss_engine::{KvLayout, PoolKind};
use gptoss_formats::{Expert, Linear, QuantTensor};

use crate::device::Device;
use crate::error::{CudaError, Result as CudaResult};
use crate::graphs::Graphs;
use crate::kernels::KvType;
use crate::ops::attention::{CudaCache, Qkv};
use crate::ops::moe::{
    experts_error, CudaExperts, CudaRouting, ExpertTraits, Grouped, MoeInputs, MoeScratch,
    RouteWith,
};
use crate::ops::sample::SampleScratch;
use crate::ops::{self, upload_opt, DevWeight};
use crate::options::CudaOptions;
use crate::staging::{Stager, SLOTS, SLOT_BYTES};
pub use crate::step::CudaStep;
use crate::vram::{gib, DevBuf};
use crate::weights::PackPlan;

type Result<T> = gptoss_engine::Result<T>;

/// An f32 activation buffer `[rows, cols]`.
pub struct CudaBuf {
    pub(crate) buf: DevBuf<f32>,
    pub(crate) rows: usize,
    pub(crate) cols: usize,
}

/// A linear layer: packed weight and optional f32 bias.
pub struct CudaLinear {
    pub(crate) w: DevWeight,
    pub(crate) bias: Option<DevBuf<f32>>,
}

/// An f32 vector.
pub struct CudaVector {
    pub(crate) buf: DevBuf<f32>,
    pub(crate) len: usize,
}

/// The CUDA backend: one device, its kernels and its memory budget.
pub struct CudaBackend {
    dev: Device,
    kv: KvPrecision,
    /// `(experts, intermediate, hidden)` of the last uploaded experts, to size the MoE scratch at load.
    expert_dims: RefCell<Option<(usize, usize, usize)>>,
    /// The format of the experts last uploaded (every layer's, in practice): lets `route` group for `moe`.
    expert_traits: Cell<Option<ExpertTraits>>,
    /// What the last `route` did for the `moe` after it; taken by that `moe`.
    grouped: Cell<Option<Grouped>>,
    moe_scratch: RefCell<Option<MoeScratch>>,
    sample_scratch: RefCell<Option<SampleScratch>>,
    graphs: RefCell<Graphs>,
    /// Pinned buffers weights are staged through; made at the first upload, freed by `finish_upload`.
    stager: RefCell<Option<Stager>>,
    /// Raw bytes repacked on the device by stagers already freed.
    raw_bytes_done: Cell<u64>,
}

impl CudaBackend {
    /// Opens the device described by `options` (libraries, GPU, arch, budget).
    pub fn new(options: &CudaOptions) -> Result<Self> {
        Ok(CudaBackend {
            dev: Device::open(options)?,
            kv: options.kv,
            expert_dims: RefCell::new(None),
            expert_traits: Cell::new(None),
            grouped: Cell::new(None),
            moe_scratch: RefCell::new(None),
            sample_scratch: RefCell::new(None),
            graphs: RefCell::new(Graphs::new(options.graphs)),
            stager: RefCell::new(None),
            raw_bytes_done: Cell::new(0),
        })
    }

    /// The opened device (name, arch, target, meter).
    pub fn device(&self) -> &Device {
        &self.dev
    }

    /// Fails early, with the numbers, when `plan` does not fit the budget (minus what is already in use).
    pub fn check_plan(&self, plan: &MemoryPlan) -> Result<()> {
        let m = &self.dev.meter;
        plan.check(m.cap_bytes().saturating_sub(m.used_bytes()))
    }

    /// Bytes allocated now and at most so far.
    pub fn memory_in_use(&self) -> (u64, u64) {
        (self.dev.meter.used_bytes(), self.dev.meter.peak_bytes())
    }

    /// Steps recorded as CUDA graphs and steps replayed from them so far.
    pub fn graph_counts(&self) -> (usize, u64) {
        self.graphs.borrow().counts()
    }

    /// Source bytes uploaded as raw ggml blocks and repacked on the device so far (0 with
    /// `GPTOSS_REPACK=host`); the rest of the weights were repacked on the host.
    pub fn device_repacked_bytes(&self) -> u64 {
        let staging = self.stager.borrow().as_ref().map_or(0, Stager::raw_bytes);
        self.raw_bytes_done.get() + staging
    }

    /// Waits for queued work (benchmarks and tests).
    pub fn synchronize(&self) -> Result<()> {
        Ok(self.dev.sync()?)
    }

    fn vec(&self, v: &[f32], what: &str) -> CudaResult<DevBuf<f32>> {
        DevBuf::from_host(&self.dev.stream, &self.dev.meter, v, what)
    }

    /// Uploads tensors of one layout back to back through the staging buffers (made on first use).
    fn upload_weights(&self, parts: &[PackPlan<'_>], what: &str) -> CudaResult<DevWeight> {
        self.with_stager(|stager| DevWeight::upload(&self.dev, stager, parts, what))
    }

    /// Runs `f` with the staging buffers, made on first use (again after `finish_upload`: the
    /// hot-expert cache refills slots while the model runs).
    fn with_stager<T>(&self, f: impl FnOnce(&mut Stager) -> CudaResult<T>) -> CudaResult<T> {
        let mut stager = self.stager.borrow_mut();
        if stager.is_none() {
            *stager = Some(Stager::new(&self.dev.ctx, SLOT_BYTES, SLOTS)?);
        }
        let stager = stager
            .as_mut()
            .ok_or_else(|| CudaError::Unsupported("no staging buffers".into()))?;
        f(stager)
    }

    /// Notes uploaded experts' sizes for the MoE scratch, keeping the most experts seen: scratch for a
    /// whole layer serves a smaller slot set too.
    fn note_expert_dims(&self, e: &CudaExperts) {
        let mut dims = self.expert_dims.borrow_mut();
        let most = dims.map_or(0, |d| d.0).max(e.n_experts);
        *dims = Some((most, e.down.k, e.down.rows));
        self.expert_traits.set(Some(ExpertTraits::of(e)));
    }

    /// Routes a step of `rows` rows with `route` (given the MoE scratch and expert traits it may group the
    /// choices with) and keeps what it grouped for the MoE that follows.
    fn routed(
        &self,
        rows: usize,
        top_k: usize,
        route: impl FnOnce(RouteWith<'_>) -> CudaResult<Option<Grouped>>,
    ) -> CudaResult<()> {
        if self.expert_dims.borrow().is_some() {
            self.ensure_moe_scratch(rows * top_k)?;
        }
        let scratch = self.moe_scratch.borrow();
        let with = RouteWith {
            top_k,
            scratch: scratch.as_ref(),
            experts: self.expert_traits.get(),
            moe_follows: false,
        };
        self.grouped.set(route(with)?);
        Ok(())
    }

    fn ensure_moe_scratch(&self, pairs: usize) -> CudaResult<()> {
        let Some((e, i, h)) = *self.expert_dims.borrow() else {
            return Err(experts_error(
                "the MoE ran before any experts were uploaded".into(),
            ));
        };
        let mut s = self.moe_scratch.borrow_mut();
        let ok = s.as_ref().is_some_and(|s| s.fits_dims(pairs, (e, i, h)));
        if !ok {
            let mut graphs = self.graphs.borrow_mut();
            if graphs.recording() {
                // Fails the recording; the step is then issued unrecorded and allocates here.
                return Err(CudaError::Unsupported(
                    "the MoE scratch grows inside a recorded step".into(),
                ));
            }
            graphs.clear();
            *s = None;
            *s = Some(MoeScratch::new(&self.dev, pairs, e, i, h)?);
        }
        Ok(())
    }
}

/// The engine's q/k/v buffers as the attention ops take them.
fn qkv_of<'a>(qkv: QkvBufs<'a, CudaBackend>) -> Qkv<'a> {
    Qkv {
        q: qkv.q,
        k: qkv.k,
        v: qkv.v,
    }
}

/// The engine's norm input as the CUDA launchers take it.
fn norm_args(n: NormInput<'_, CudaBackend>) -> ops::linear::NormArgs<'_> {
    ops::linear::NormArgs {
        x: n.x,
        y: n.y,
        weight: n.weight,
        eps: n.eps,
        h: n.h,
    }
}

fn kv_type(kv: KvPrecision) -> KvType {
    match kv {
        KvPrecision::Bf16 => KvType::Bf16,
        KvPrecision::F16 => KvType::F16,
        KvPrecision::F32 => KvType::F32,
    }
}

impl Backend for CudaBackend {
    type Buf = CudaBuf;
    type Linear = CudaLinear;
    type Vector = CudaVector;
    type Experts = CudaExperts;
    type Routing = CudaRouting;
    type Cache = CudaCache;
    type Step = CudaStep;

    fn name(&self) -> &'static str {
        "cuda"
    }

    fn upload_linear(&self, linear: &Linear) -> Result<CudaLinear> {
        let what = format!("a linear weight {:?}", linear.weight.shape);
        let d = &self.dev;
        Ok(CudaLinear {
            w: self.upload_weights(&[PackPlan::new(&linear.weight)?], &what)?,
            bias: upload_opt(&d.stream, &d.meter, linear.bias.as_deref(), "a bias")?,
        })
    }

    fn upload_embedding(&self, table: &QuantTensor) -> Result<CudaLinear> {
        Ok(CudaLinear {
            w: self.upload_weights(&[PackPlan::new(table)?], "the embedding")?,
            bias: None,
        })
    }

    fn upload_vector(&self, values: &[f32]) -> Result<CudaVector> {
        Ok(CudaVector {
            buf: self.vec(values, "a vector")?,
            len: values.len(),
        })
    }

    fn upload_experts(&self, experts: &[Expert]) -> Result<CudaExperts> {
        let plans = |pick: fn(&Expert) -> &Linear| {
            experts
                .iter()
                .map(|e| PackPlan::new(&pick(e).weight))
                .collect::<CudaResult<Vec<_>>>()
        };
        let (gate_up, down) = (plans(|e| &e.gate_up)?, plans(|e| &e.down)?);
        let bias = |pick: fn(&Expert) -> &Linear, rows: usize| -> CudaResult<Option<DevBuf<f32>>> {
            if experts.iter().all(|e| pick(e).bias.is_none()) {
                return Ok(None);
            }
            let mut all = Vec::with_capacity(experts.len() * rows);
            for e in experts {
                match pick(e).bias.as_deref() {
                    Some(b) if b.len() == rows => all.extend_from_slice(b),
                    None => all.extend(std::iter::repeat_n(0.0, rows)),
                    Some(b) => {
                        return Err(experts_error(format!(
                            "a bias of {} values for {rows} rows",
                            b.len()
                        )))
                    }
                }
            }
            self.vec(&all, "expert biases").map(Some)
        };
        let ex = CudaExperts {
            gate_up: self.upload_weights(&gate_up, "expert gate_up weights")?,
            down: self.upload_weights(&down, "expert down weights")?,
            gate_up_bias: bias(|e| &e.gate_up, gate_up.first().map_or(0, |p| p.layout.rows))?,
            down_bias: bias(|e| &e.down, down.first().map_or(0, |p| p.layout.rows))?,
            n_experts: experts.len(),
        };
        self.note_expert_dims(&ex);
        Ok(ex)
    }

    fn alloc_expert_slots(&self, like: &Expert, slots: usize) -> Result<CudaExperts> {
        let d = &self.dev;
        let ex = ops::slots::alloc_slots(&d.stream, &d.meter, like, slots)?;
        self.note_expert_dims(&ex);
        Ok(ex)
    }

    fn upload_expert_slot(
        &self,
        experts: &mut CudaExperts,
        slot: usize,
        expert: &Expert,
    ) -> Result<()> {
        Ok(self.with_stager(|stager| {
            ops::slots::upload_slot(&self.dev, stager, experts, slot, expert)
        })?)
    }

    fn finish_upload(&self) -> Result<()> {
        // Dropping the stager waits for its last copies, then frees the pinned memory.
        if let Some(stager) = self.stager.borrow_mut().take() {
            stager.finish()?;
            self.raw_bytes_done
                .set(self.raw_bytes_done.get() + stager.raw_bytes());
        }
        Ok(())
    }

    fn alloc(&self, rows: usize, cols: usize) -> Result<CudaBuf> {
        let d = &self.dev;
        Ok(CudaBuf {
            buf: DevBuf::zeros(&d.stream, &d.meter, rows * cols, "an activation buffer")?,
            rows,
            cols,
        })
    }

    fn alloc_routing(&self, rows: usize, top_k: usize) -> Result<CudaRouting> {
        if self.expert_dims.borrow().is_some() {
            self.ensure_moe_scratch(rows * top_k)?;
        }
        Ok(CudaRouting::new(&self.dev, rows, top_k)?)
    }

    fn alloc_cache(&self, layout: &KvLayout) -> Result<CudaCache> {
        Ok(CudaCache::new(&self.dev, kv_type(self.kv), layout)?)
    }

    fn alloc_step(&self, capacity: &Capacity, layout: &KvLayout, rope: &Rope) -> Result<CudaStep> {
        Ok(CudaStep::new(&self.dev, capacity, layout, rope)?)
    }

    fn begin_step(&self, step: &mut CudaStep, batch: &Batch) -> Result<()> {
        // The tables go up with the rest of the batch in one copy; a sequence only reads positions it
        // has written, so a reused block's stale keys are never visible.
        self.dev.begin_step_launches(batch.tokens.len());
        Ok(step.load(&self.dev, batch)?)
    }

    fn recording(&self, step: &CudaStep) -> Result<Recording> {
        Ok(self.graphs.borrow_mut().begin(&self.dev, step)?)
    }

    fn finish_recording(&self, _step: &CudaStep, issued: bool) -> Result<bool> {
        Ok(self.graphs.borrow_mut().finish(&self.dev, issued)?)
    }

    fn embed(&self, step: &CudaStep, table: &CudaLinear, out: &mut CudaBuf) -> Result<()> {
        Ok(ops::embed::embed(&self.dev, step, table, out)?)
    }

    fn rms_norm(
        &self,
        step: &CudaStep,
        x: &CudaBuf,
        weight: &CudaVector,
        eps: f32,
        out: &mut CudaBuf,
    ) -> Result<()> {
        Ok(ops::norm::rms_norm(
            &self.dev, step.rows, x, weight, eps, out,
        )?)
    }

    fn add(&self, step: &CudaStep, x: &mut CudaBuf, y: &CudaBuf) -> Result<()> {
        Ok(ops::norm::add(&self.dev, step.rows, x, y)?)
    }

    fn add_rms_norm(
        &self,
        step: &CudaStep,
        x: &mut CudaBuf,
        y: &CudaBuf,
        weight: &CudaVector,
        eps: f32,
        out: &mut CudaBuf,
    ) -> Result<()> {
        Ok(ops::norm::add_rms_norm(
            &self.dev,
            step.rows,
            (x, y),
            weight,
            eps,
            out,
        )?)
    }

    fn linear(
        &self,
        step: &CudaStep,
        x: &CudaBuf,
        w: &CudaLinear,
        out: &mut CudaBuf,
    ) -> Result<()> {
        Ok(ops::linear::linear(&self.dev, step, x, w, out)?)
    }

    fn linear3(
        &self,
        step: &CudaStep,
        x: &CudaBuf,
        w: [&CudaLinear; 3],
        out: [&mut CudaBuf; 3],
    ) -> Result<()> {
        Ok(ops::linear::linear3(&self.dev, step, x, w, out)?)
    }

    fn norm_linear3(
        &self,
        step: &CudaStep,
        norm: NormInput<'_, Self>,
        w: [&CudaLinear; 3],
        out: [&mut CudaBuf; 3],
    ) -> Result<()> {
        let norm = norm_args(norm);
        Ok(ops::linear::norm_linear3(&self.dev, step, norm, w, out)?)
    }

    fn norm_route(
        &self,
        step: &CudaStep,
        norm: NormInput<'_, Self>,
        router: &CudaLinear,
        (top_k, moe_follows): (usize, bool),
        out: &mut CudaRouting,
    ) -> Result<()> {
        Ok(self.routed(step.rows, top_k, |mut with| {
            with.moe_follows = moe_follows;
            ops::moe::norm_route(&self.dev, step, norm_args(norm), router, with, out)
        })?)
    }

    fn rope_store_kv(
        &self,
        step: &CudaStep,
        shape: &AttnShape,
        qkv: QkvBufs<'_, Self>,
        cache: &mut CudaCache,
    ) -> Result<()> {
        Ok(ops::attention::rope_store_kv(
            &self.dev,
            step,
            shape,
            qkv_of(qkv),
            cache,
        )?)
    }

    fn rope_attention(
        &self,
        step: &CudaStep,
        shape: &AttnShape,
        qkv: QkvBufs<'_, Self>,
        sinks_cache: (&CudaVector, &mut CudaCache),
        out: &mut CudaBuf,
    ) -> Result<()> {
        Ok(ops::attention::rope_attention(
            &self.dev,
            step,
            shape,
            qkv_of(qkv),
            sinks_cache,
            out,
        )?)
    }

    fn attention(
        &self,
        step: &CudaStep,
        shape: &AttnShape,
        q: &CudaBuf,
        sinks: &CudaVector,
        cache: &CudaCache,
        out: &mut CudaBuf,
    ) -> Result<()> {
        Ok(ops::attention::attention(
            &self.dev, step, shape, q, sinks, cache, out,
        )?)
    }

    fn route(
        &self,
        step: &CudaStep,
        h: &CudaBuf,
        router: &CudaLinear,
        top_k: usize,
        out: &mut CudaRouting,
    ) -> Result<()> {
        Ok(self.routed(step.rows, top_k, |with| {
            ops::moe::route(&self.dev, step, h, router, with, out)
        })?)
    }

    fn moe(&self, step: &CudaStep, args: MoeArgs<'_, Self>, out: &mut CudaBuf) -> Result<()> {
        self.note_expert_dims(args.experts);
        self.ensure_moe_scratch(step.rows * args.shape.top_k)?;
        let scratch = self.moe_scratch.borrow();
        let scratch = scratch
            .as_ref()
            .ok_or_else(|| experts_error("no MoE scratch".into()))?;
        let inputs = MoeInputs {
            h: args.h,
            experts: args.experts,
            routing: args.routing,
            shape: args.shape,
            grouped: self.grouped.take(),
        };
        Ok(ops::moe::moe(&self.dev, step, inputs, scratch, out)?)
    }

    fn logits(
        &self,
        step: &CudaStep,
        x: &CudaBuf,
        lm_head: &CudaLinear,
        out: &mut CudaBuf,
    ) -> Result<()> {
        Ok(ops::linear::logits(&self.dev, step, x, lm_head, out)?)
    }

    fn read(&self, buf: &CudaBuf, rows: usize) -> Result<Vec<f32>> {
        let mut out = Vec::new();
        self.read_into(buf, rows, &mut out)?;
        Ok(out)
    }

    fn read_into(&self, buf: &CudaBuf, rows: usize, out: &mut Vec<f32>) -> Result<()> {
        if rows > buf.rows {
            return Err(CudaError::Unsupported(format!(
                "read of {rows} rows from a buffer of {}",
                buf.rows
            ))
            .into());
        }
        let n = rows * buf.cols;
        // Grows only: the pages of an earlier, longer read stay mapped and are overwritten.
        if out.len() < n {
            out.resize(n, 0.0);
        }
        out.truncate(n);
        if n == 0 {
            return Ok(());
        }
        self.dev
            .stream
            .memcpy_dtoh(&buf.buf.slice.slice(0..n), out.as_mut_slice())
            .map_err(|e| CudaError::driver("reading a buffer back", e))?;
        self.dev.sync()?;
        Ok(())
    }

    fn write(&self, buf: &mut CudaBuf, rows: usize, values: &[f32]) -> Result<()> {
        if rows > buf.rows || values.len() != rows * buf.cols {
            return Err(CudaError::Unsupported(format!(
                "write of {} values as {rows} rows into a buffer of [{}, {}]",
                values.len(),
                buf.rows,
                buf.cols
            ))
            .into());
        }
        if values.is_empty() {
            return Ok(());
        }
        let mut dst = buf.buf.slice.slice_mut(0..values.len());
        self.dev
            .stream
            .memcpy_htod(values, &mut dst)
            .map_err(|e| CudaError::driver("writing a buffer", e))?;
        Ok(())
    }

    fn copy_blocks(
        &self,
        cache: &mut CudaCache,
        kind: PoolKind,
        pairs: &[(u32, u32)],
    ) -> Result<()> {
        Ok(cache.copy_blocks(&self.dev, kind, pairs)?)
    }

    fn read_routing(
        &self,
        routing: &CudaRouting,
        rows: usize,
        top_k: usize,
    ) -> Result<Vec<(u32, f32)>> {
        Ok(routing.read(&self.dev, rows, top_k)?)
    }

    fn write_routing(
        &self,
        routing: &mut CudaRouting,
        rows: usize,
        top_k: usize,
        choices: &[(u32, f32)],
    ) -> Result<()> {
        Ok(routing.write(&self.dev, rows, top_k, choices)?)
    }

    fn sample(
        &self,
        logits: &CudaBuf,
        params: &[SamplingParams],
        counters: &[u64],
    ) -> Result<Vec<u32>> {
        Ok(self.sample_rows(logits, params, counters, &[])?)
    }

    /// Masked rows are sampled by `sample.cu` on the device (no logit row is read back); a masked row
    /// with nothing allowed comes back as [`ops::sample::NO_TOKEN`].
    fn sample_masked(
        &self,
        logits: &CudaBuf,
        params: &[SamplingParams],
        counters: &[u64],
        masks: &[Option<&[u32]>],
    ) -> Result<Vec<Option<u32>>> {
        let drawn = self.sample_rows(logits, params, counters, masks)?;
        Ok(drawn
            .into_iter()
            .enumerate()
            .map(|(i, t)| {
                let masked = masks.get(i).is_some_and(Option::is_some);
                (!masked || t != ops::sample::NO_TOKEN).then_some(t)
            })
            .collect())
    }

    /// On the device (`logprob_rows`): only the top tokens and values are read back.
    fn logprobs(
        &self,
        logits: &CudaBuf,
        rows: &[gptoss_engine::backend::LogprobRow],
    ) -> Result<Vec<gptoss_engine::TokenLogprobs>> {
        let mut scratch = self.sample_scratch(logits, rows.len())?;
        Ok(ops::sample::logprobs(
            &self.dev,
            logits,
            rows,
            &mut scratch,
        )?)
    }
}

impl CudaBackend {
    /// The sampler's scratch, made (or remade) for `rows` rows of `logits`.
    fn sample_scratch(
        &self,
        logits: &CudaBuf,
        rows: usize,
    ) -> crate::error::Result<std::cell::RefMut<'_, SampleScratch>> {
        let mut s = self.sample_scratch.borrow_mut();
        if !s.as_ref().is_some_and(|s| s.fits(rows, logits.cols)) {
            *s = None;
            *s = Some(SampleScratch::new(
                &self.dev,
                logits.rows.max(rows),
                logits.cols,
            )?);
        }
        std::cell::RefMut::filter_map(s, Option::as_mut)
            .map_err(|_| CudaError::Unsupported("no sampler scratch".into()))
    }

    fn sample_rows(
        &self,
        logits: &CudaBuf,
        params: &[SamplingParams],
        counters: &[u64],
        masks: &[Option<&[u32]>],
    ) -> crate::error::Result<Vec<u32>> {
        let mut scratch = self.sample_scratch(logits, params.len())?;
        ops::sample::sample(&self.dev, logits, params, counters, masks, &mut scratch)
    }
}

/// Logs the plan against the budget (the startup log line of `--max-vram`).
pub fn describe_budget(plan: &MemoryPlan, cap_bytes: u64) -> String {
    format!("device memory plan: {plan}; budget {}", gib(cap_bytes))
}
