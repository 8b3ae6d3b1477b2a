//! The CPU backend. Two kinds of arithmetic: the exact reference (f32 activations and accumulation,
//! weights read in their stored format; what the GPU is tested against) and the fast path (the
//! default of the CLI): linear layers and experts on int8-quantized activations with integer dot
//! products, bf16 weights on bf16-rounded activations (`fast/`). Both keep the router, norms,
//! attention, softmax and SwiGLU in f32 and the KV cache paged in f32; rayon spreads work over cores.

mod attention;
mod fast;
mod fused;
mod matmul;
mod moe;

use std::sync::{Mutex, MutexGuard};

use gptoss_formats::{Expert, Linear, QuantTensor};
use rayon::prelude::*;

use crate::backend::{
    AttnShape, Backend, Batch, Capacity, MoeArgs, QkvBufs, Rope, SamplingParams, NO_EXPERT,
};
use crate::error::{Error, Result};
use crate::kv::{KvLayout, PoolKind};
use crate::math::{rms_norm, router_top_k};

use attention::LayerPool;

pub use fast::CpuIsa;

/// The CPU backend: its arithmetic ([`CpuKernels`]). Every buffer lives in the model's workspace.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuBackend {
    kernels: CpuKernels,
}

/// The exact reference backend, as a value: `Model::new(CpuBackend, ..)` builds the reference that
/// tests compare every other path with. [`CpuBackend::fast`] builds the fast one.
#[allow(non_upper_case_globals)]
pub const CpuBackend: CpuBackend = CpuBackend {
    kernels: CpuKernels::Exact,
};

/// Which arithmetic the CPU backend runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CpuKernels {
    /// f32 activations and accumulation throughout (the reference; `--exact`).
    #[default]
    Exact,
    /// Quantized activations with integer (or bf16) dot products on this instruction set.
    Fast(CpuIsa),
}

impl CpuBackend {
    /// The exact reference backend (the same as the value [`CpuBackend`]).
    pub fn exact() -> Self {
        CpuBackend
    }

    /// The fast backend on the best instruction set this CPU has.
    pub fn fast() -> Self {
        CpuBackend {
            kernels: CpuKernels::Fast(CpuIsa::best()),
        }
    }

    /// The backend with `kernels`; fails when this CPU lacks the instruction set asked for.
    pub fn with_kernels(kernels: CpuKernels) -> Result<Self> {
        if let CpuKernels::Fast(isa) = kernels {
            if !isa.supported() {
                return Err(cpu_error(&format!(
                    "this CPU does not support the {} kernels",
                    isa.name()
                )));
            }
        }
        Ok(CpuBackend { kernels })
    }

    /// The arithmetic this backend runs.
    pub fn kernels(&self) -> CpuKernels {
        self.kernels
    }

    /// The matmul of this backend's arithmetic, with `scratch` for its buffers.
    fn matmul<'a>(&self, scratch: &'a mut fast::Scratch) -> Matmul<'a> {
        match self.kernels {
            CpuKernels::Exact => Matmul::Exact,
            CpuKernels::Fast(isa) => Matmul::Fast(fast::FastMatmul { isa, scratch }),
        }
    }
}

/// `y = x Wᵀ + b` in the backend's arithmetic.
pub(crate) enum Matmul<'a> {
    /// `matmul.rs`.
    Exact,
    /// `fast/`.
    Fast(fast::FastMatmul<'a>),
}

impl Matmul<'_> {
    /// `out[t, j] = Σ_i x[t, i] · W[j, i] + bias[j]` for `rows` rows.
    pub(crate) fn run(
        &mut self,
        x: &[f32],
        rows: usize,
        w: &QuantTensor,
        bias: Option<&[f32]>,
        out: &mut [f32],
    ) {
        match self {
            Matmul::Exact => matmul::matmul(x, rows, w, bias, out),
            Matmul::Fast(f) => f.run(x, rows, w, bias, out),
        }
    }

    /// Each segment's weight on its rows of `x` (`[rows, in]`) into the same rows of `out`; `done` sees
    /// every piece of `out` once it is final ([`fast::RowsDone`]).
    pub(crate) fn run_segments(
        &mut self,
        x: &[f32],
        segs: &[fast::Segment<'_>],
        out: &mut [f32],
        done: fast::RowsDone<'_>,
    ) {
        match self {
            Matmul::Fast(f) => f.run_segments(x, segs, out, done),
            Matmul::Exact => {
                for s in segs {
                    let (n, n_out) = (s.w.row_len(), s.w.n_rows());
                    let (a, b) = (s.rows.start, s.rows.end);
                    let (xs, os) = (&x[a * n..b * n], &mut out[a * n_out..b * n_out]);
                    matmul::matmul(xs, b - a, s.w, s.bias, os);
                    fast::report_rows(done, a, os, n_out);
                }
            }
        }
    }
}

/// Buffers a step's ops reuse: the fast matmul's, the router logits and the MoE's.
#[derive(Default)]
pub(crate) struct StepScratch {
    matmul: fast::Scratch,
    router: Vec<f32>,
    moe: moe::MoeBufs,
}

impl CpuStep {
    /// The MoE phases' wall time summed over this step buffer's MoEs, `[one-token, more rows]` (zero if its
    /// lock is poisoned).
    pub(crate) fn moe_times(&self) -> [moe::MoePhaseTimes; 2] {
        self.scratch.lock().map(|s| s.moe.times).unwrap_or_default()
    }
}

/// A row-major f32 buffer.
pub struct CpuBuf {
    data: Vec<f32>,
    cols: usize,
}

/// An uploaded linear layer: the weight stays in its stored format.
pub struct CpuLinear {
    weight: QuantTensor,
    bias: Option<Vec<f32>>,
}

/// The step's batch (with its block tables), RoPE table and reusable buffers.
pub struct CpuStep {
    batch: Batch,
    rope: Rope,
    ring_blocks: usize,
    scratch: Mutex<StepScratch>,
}

/// Every layer's pool of KV blocks (`kv.rs`); a block's memory is allocated on its first write.
pub struct CpuCache {
    layers: Vec<LayerPool>,
}

impl CpuCache {
    /// Blocks of `kind` whose memory has been allocated (written at least once), counted in one layer.
    pub fn touched_blocks(&self, kind: PoolKind) -> usize {
        self.layers
            .iter()
            .find(|l| l.kind == kind)
            .map_or(0, |l| l.blocks.iter().filter(|b| !b.k.is_empty()).count())
    }
}

impl CpuStep {
    fn rows(&self) -> usize {
        self.batch.tokens.len()
    }

    /// The step's buffers (one op at a time uses them).
    fn scratch(&self) -> Result<MutexGuard<'_, StepScratch>> {
        self.scratch
            .lock()
            .map_err(|_| cpu_error("a previous op panicked while holding the step buffers"))
    }
}

impl Backend for CpuBackend {
    type Buf = CpuBuf;
    type Linear = CpuLinear;
    type Vector = Vec<f32>;
    type Experts = Vec<Expert>;
    type Routing = Vec<(usize, f32)>;
    type Cache = CpuCache;
    type Step = CpuStep;

    fn name(&self) -> &'static str {
        "cpu"
    }

    fn upload_linear(&self, linear: &Linear) -> Result<CpuLinear> {
        // The CPU computes from the mapped file: map its pages now rather than fault them in
        // during the first steps (~10% of a short decode run's samples were the kernel doing so).
        linear.weight.data.populate();
        Ok(CpuLinear {
            weight: linear.weight.clone(),
            bias: linear.bias.clone(),
        })
    }

    fn upload_embedding(&self, table: &QuantTensor) -> Result<CpuLinear> {
        table.data.populate();
        Ok(CpuLinear {
            weight: table.clone(),
            bias: None,
        })
    }

    fn upload_vector(&self, values: &[f32]) -> Result<Vec<f32>> {
        Ok(values.to_vec())
    }

    fn upload_experts(&self, experts: &[Expert]) -> Result<Vec<Expert>> {
        for e in experts {
            e.gate_up.weight.data.populate();
            e.down.weight.data.populate();
        }
        Ok(experts.to_vec())
    }

    fn alloc_expert_slots(&self, like: &Expert, slots: usize) -> Result<Vec<Expert>> {
        // A slot is a handle on the host expert it holds (no copy): "uploading" swaps handles, so the
        // CPU standing in for a device runs the cache's bookkeeping with its own exact math.
        Ok(vec![like.clone(); slots])
    }

    fn upload_expert_slot(
        &self,
        experts: &mut Vec<Expert>,
        slot: usize,
        expert: &Expert,
    ) -> Result<()> {
        let n = experts.len();
        let target = experts
            .get_mut(slot)
            .ok_or_else(|| cpu_error(&format!("expert slot {slot} of {n}")))?;
        let shapes = |e: &Expert| (e.gate_up.weight.shape.clone(), e.down.weight.shape.clone());
        if shapes(target) != shapes(expert) {
            return Err(cpu_error(&format!(
                "expert slot {slot}: an expert of shapes {:?} into a slot of {:?}",
                shapes(expert),
                shapes(target)
            )));
        }
        expert.gate_up.weight.data.populate();
        expert.down.weight.data.populate();
        *target = expert.clone();
        Ok(())
    }

    fn alloc(&self, rows: usize, cols: usize) -> Result<CpuBuf> {
        // Fallible: a size the machine cannot hold is an error, not an abort.
        let n = rows.saturating_mul(cols);
        let mut data = Vec::new();
        data.try_reserve_exact(n).map_err(|_| Error::Backend {
            backend: "cpu",
            message: format!(
                "cannot allocate a [{rows}, {cols}] f32 buffer ({} bytes)",
                n.saturating_mul(4)
            ),
        })?;
        data.resize(n, 0.0);
        Ok(CpuBuf { data, cols })
    }

    fn alloc_routing(&self, rows: usize, top_k: usize) -> Result<Vec<(usize, f32)>> {
        Ok(vec![(0, 0.0); rows * top_k])
    }

    fn alloc_cache(&self, layout: &KvLayout) -> Result<CpuCache> {
        let layers = layout
            .layers
            .iter()
            .map(|&(kind, _)| LayerPool {
                kind,
                blocks: Vec::new(),
                capacity: layout.blocks_of(kind),
            })
            .collect();
        Ok(CpuCache { layers })
    }

    fn alloc_step(&self, _capacity: &Capacity, layout: &KvLayout, rope: &Rope) -> Result<CpuStep> {
        Ok(CpuStep {
            batch: Batch::default(),
            rope: rope.clone(),
            ring_blocks: layout.ring_blocks,
            scratch: Mutex::default(),
        })
    }

    fn begin_step(&self, step: &mut CpuStep, batch: &Batch) -> Result<()> {
        step.batch.clone_from(batch);
        Ok(())
    }

    fn embed(&self, step: &CpuStep, table: &CpuLinear, out: &mut CpuBuf) -> Result<()> {
        let h = out.cols;
        out.data[..step.rows() * h]
            .par_chunks_mut(h)
            .zip(&step.batch.tokens)
            .for_each(|(row, &tok)| {
                matmul::decode_row::<false>(&table.weight, tok as usize, row);
            });
        Ok(())
    }

    fn rms_norm(
        &self,
        step: &CpuStep,
        x: &CpuBuf,
        weight: &Vec<f32>,
        eps: f32,
        out: &mut CpuBuf,
    ) -> Result<()> {
        let h = x.cols;
        let rows = step.rows();
        out.data[..rows * h]
            .par_chunks_mut(h)
            .zip(x.data[..rows * h].par_chunks(h))
            .for_each(|(o, xr)| {
                rms_norm(xr, weight, eps, o);
            });
        Ok(())
    }

    fn add(&self, step: &CpuStep, x: &mut CpuBuf, y: &CpuBuf) -> Result<()> {
        let n = step.rows() * x.cols;
        x.data[..n]
            .iter_mut()
            .zip(&y.data[..n])
            .for_each(|(a, b)| *a += b);
        Ok(())
    }

    fn linear(&self, step: &CpuStep, x: &CpuBuf, w: &CpuLinear, out: &mut CpuBuf) -> Result<()> {
        let mut scratch = step.scratch()?;
        self.matmul(&mut scratch.matmul).run(
            &x.data,
            step.rows(),
            &w.weight,
            w.bias.as_deref(),
            &mut out.data,
        );
        Ok(())
    }

    fn rope_store_kv(
        &self,
        step: &CpuStep,
        shape: &AttnShape,
        qkv: QkvBufs<'_, Self>,
        cache: &mut CpuCache,
    ) -> Result<()> {
        let pool = cache
            .layers
            .get_mut(shape.layer)
            .ok_or_else(|| cpu_error("cache has no such layer"))?;
        attention::rope_store(
            step,
            shape,
            (&mut qkv.q.data, &mut qkv.k.data, &qkv.v.data),
            pool,
        )
    }

    fn attention(
        &self,
        step: &CpuStep,
        shape: &AttnShape,
        q: &CpuBuf,
        sinks: &Vec<f32>,
        cache: &CpuCache,
        out: &mut CpuBuf,
    ) -> Result<()> {
        let pool = cache
            .layers
            .get(shape.layer)
            .ok_or_else(|| cpu_error("cache has no such layer"))?;
        let sums = match self.kernels {
            CpuKernels::Exact => attention::AttnSums::InOrder,
            CpuKernels::Fast(isa) => attention::AttnSums::Lanes(isa),
        };
        attention::attend(step, shape, (&q.data, sinks), pool, &mut out.data, sums)
    }

    fn route(
        &self,
        step: &CpuStep,
        h: &CpuBuf,
        router: &CpuLinear,
        top_k: usize,
        out: &mut Vec<(usize, f32)>,
    ) -> Result<()> {
        let rows = step.rows();
        let n_experts = router.weight.n_rows();
        let mut scratch = step.scratch()?;
        let logits = &mut scratch.router;
        logits.resize(rows * n_experts, 0.0);
        // The router stays exact on every path (DESIGN.md: router in f32): a near-tie decides experts.
        matmul::matmul(
            &h.data,
            rows,
            &router.weight,
            router.bias.as_deref(),
            logits,
        );
        for (t, row) in logits[..rows * n_experts]
            .chunks_exact(n_experts)
            .enumerate()
        {
            out[t * top_k..(t + 1) * top_k].copy_from_slice(&router_top_k(row, top_k));
        }
        Ok(())
    }

    fn moe(&self, step: &CpuStep, args: MoeArgs<'_, Self>, out: &mut CpuBuf) -> Result<()> {
        let mut guard = step.scratch()?;
        let StepScratch {
            matmul, moe: bufs, ..
        } = &mut *guard;
        let input = moe::MoeInput {
            h: &args.h.data,
            rows: step.rows(),
            experts: args.experts,
            routing: args.routing,
            shape: &args.shape,
        };
        moe::moe(&input, &mut self.matmul(matmul), bufs, &mut out.data);
        Ok(())
    }

    fn logits(
        &self,
        step: &CpuStep,
        x: &CpuBuf,
        lm_head: &CpuLinear,
        out: &mut CpuBuf,
    ) -> Result<()> {
        if step.batch.logit_rows.is_empty() {
            return Ok(()); // a prefill-only step (the scheduler's chunked prefill) wants no logits
        }
        let h = x.cols;
        let mut guard = step.scratch()?;
        let StepScratch {
            matmul, moe: bufs, ..
        } = &mut *guard;
        let picked = &mut bufs.x;
        picked.clear();
        for &r in &step.batch.logit_rows {
            let row = x
                .data
                .get(r as usize * h..(r as usize + 1) * h)
                .ok_or_else(|| cpu_error("a logit row is past the end of the buffer"))?;
            picked.extend_from_slice(row);
        }
        self.matmul(matmul).run(
            picked,
            step.batch.logit_rows.len(),
            &lm_head.weight,
            None,
            &mut out.data,
        );
        Ok(())
    }

    fn write(&self, buf: &mut CpuBuf, rows: usize, values: &[f32]) -> Result<()> {
        let n = rows * buf.cols;
        if values.len() != n {
            return Err(cpu_error("write: values do not fill the rows"));
        }
        buf.data
            .get_mut(..n)
            .ok_or_else(|| cpu_error("write past the end of a buffer"))?
            .copy_from_slice(values);
        Ok(())
    }

    fn read_routing(
        &self,
        routing: &Vec<(usize, f32)>,
        rows: usize,
        top_k: usize,
    ) -> Result<Vec<(u32, f32)>> {
        routing
            .get(..rows * top_k)
            .map(|c| c.iter().map(|&(e, w)| (e as u32, w)).collect())
            .ok_or_else(|| cpu_error("read past the end of the routing"))
    }

    fn write_routing(
        &self,
        routing: &mut Vec<(usize, f32)>,
        rows: usize,
        top_k: usize,
        choices: &[(u32, f32)],
    ) -> Result<()> {
        let n = rows * top_k;
        if choices.len() != n {
            return Err(cpu_error("write_routing: choices do not fill the rows"));
        }
        let dst = routing
            .get_mut(..n)
            .ok_or_else(|| cpu_error("write past the end of the routing"))?;
        for (d, &(e, w)) in dst.iter_mut().zip(choices) {
            // NO_EXPERT becomes an index past every layer's experts, which the MoE skips.
            *d = (
                if e == NO_EXPERT {
                    usize::MAX
                } else {
                    e as usize
                },
                w,
            );
        }
        Ok(())
    }

    fn copy_blocks(
        &self,
        cache: &mut CpuCache,
        kind: PoolKind,
        pairs: &[(u32, u32)],
    ) -> Result<()> {
        for pool in cache.layers.iter_mut().filter(|l| l.kind == kind) {
            attention::copy_blocks(pool, pairs)?;
        }
        Ok(())
    }

    fn read_into(&self, buf: &CpuBuf, rows: usize, out: &mut Vec<f32>) -> Result<()> {
        let src = buf
            .data
            .get(..rows * buf.cols)
            .ok_or_else(|| cpu_error("read past the end of a buffer"))?;
        out.clear();
        out.extend_from_slice(src);
        Ok(())
    }

    fn read(&self, buf: &CpuBuf, rows: usize) -> Result<Vec<f32>> {
        buf.data
            .get(..rows * buf.cols)
            .map(<[f32]>::to_vec)
            .ok_or_else(|| cpu_error("read past the end of a buffer"))
    }

    fn sample(
        &self,
        logits: &CpuBuf,
        params: &[SamplingParams],
        counters: &[u64],
    ) -> Result<Vec<u32>> {
        let v = logits.cols;
        Ok(params
            .iter()
            .zip(counters)
            .enumerate()
            .map(|(i, (p, &c))| crate::sampler::sample(&logits.data[i * v..(i + 1) * v], p, c))
            .collect())
    }

    /// Each masked row is copied, masked and sampled (the rows in parallel, as the engine's host path
    /// does); unmasked rows as [`Backend::sample`].
    fn sample_masked(
        &self,
        logits: &CpuBuf,
        params: &[SamplingParams],
        counters: &[u64],
        masks: &[Option<&[u32]>],
    ) -> Result<Vec<Option<u32>>> {
        let v = logits.cols;
        if masks.len() != params.len() || counters.len() != params.len() {
            return Err(cpu_error("sample_masked: one mask and counter per row"));
        }
        let rows = logits
            .data
            .get(..params.len() * v)
            .ok_or_else(|| cpu_error("sample_masked: more rows than the buffer"))?;
        Ok(rows
            .par_chunks(v.max(1))
            .zip(params)
            .zip(counters)
            .zip(masks)
            .map(|(((row, p), &c), mask)| match mask {
                None => Some(crate::sampler::sample(row, p, c)),
                Some(mask) => {
                    let mut row = row.to_vec();
                    crate::logits::apply_mask(&mut row, mask)
                        .then(|| crate::sampler::sample(&row, p, c))
                }
            })
            .collect())
    }

    fn logprobs(
        &self,
        logits: &CpuBuf,
        rows: &[crate::backend::LogprobRow],
    ) -> Result<Vec<crate::logits::TokenLogprobs>> {
        let v = logits.cols;
        rows.par_iter()
            .map(|r| {
                let row = logits
                    .data
                    .get(r.row * v..(r.row + 1) * v)
                    .ok_or_else(|| cpu_error("logprobs: a row past the buffer"))?;
                Ok(crate::logits::token_logprobs(row, r.token, r.top))
            })
            .collect()
    }
}

fn cpu_error(message: &str) -> Error {
    Error::Backend {
        backend: "cpu",
        message: message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_into_reuses_the_vector_and_reads_what_read_reads() {
        let b = CpuBackend::default();
        let mut buf = b.alloc(3, 4).unwrap();
        let values: Vec<f32> = (0..12).map(|i| i as f32 * 0.5).collect();
        b.write(&mut buf, 3, &values).unwrap();
        let mut out = Vec::with_capacity(64);
        let before = out.as_ptr();
        b.read_into(&buf, 3, &mut out).unwrap();
        assert_eq!(out, b.read(&buf, 3).unwrap());
        // A shorter read leaves exactly its rows, in the same allocation.
        b.read_into(&buf, 1, &mut out).unwrap();
        assert_eq!(out, values[..4]);
        assert_eq!(out.as_ptr(), before);
        assert!(b.read_into(&buf, 4, &mut out).is_err());
    }
}
