//! The CPU backend: the exact reference implementation of every [`Backend`] op, f32 activations and
//! paged f32 KV, f32 accumulation, weights read in their stored format (rayon across cores).

mod attention;
mod fused;
mod matmul;
mod moe;

use gptoss_formats::{Expert, Linear, QuantTensor};
use rayon::prelude::*;

use crate::backend::{AttnShape, Backend, Batch, Capacity, MoeArgs, QkvBufs, Rope, SamplingParams};
use crate::error::{Error, Result};
use crate::kv::{KvLayout, PoolKind};
use crate::math::{rms_norm, router_top_k};

use attention::LayerPool;

/// The CPU backend. Stateless: every buffer lives in the model's workspace.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuBackend;

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

/// The step's batch (with its block tables) and RoPE table.
pub struct CpuStep {
    batch: Batch,
    rope: Rope,
    ring_blocks: usize,
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
        Ok(CpuLinear {
            weight: linear.weight.clone(),
            bias: linear.bias.clone(),
        })
    }

    fn upload_embedding(&self, table: &QuantTensor) -> Result<CpuLinear> {
        Ok(CpuLinear {
            weight: table.clone(),
            bias: None,
        })
    }

    fn upload_vector(&self, values: &[f32]) -> Result<Vec<f32>> {
        Ok(values.to_vec())
    }

    fn upload_experts(&self, experts: &[Expert]) -> Result<Vec<Expert>> {
        Ok(experts.to_vec())
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
        matmul::matmul(
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
        attention::attend(step, shape, &q.data, sinks, pool, &mut out.data)
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
        let mut logits = vec![0.0; rows * n_experts];
        matmul::matmul(
            &h.data,
            rows,
            &router.weight,
            router.bias.as_deref(),
            &mut logits,
        );
        for (t, row) in logits.chunks_exact(n_experts).enumerate() {
            out[t * top_k..(t + 1) * top_k].copy_from_slice(&router_top_k(row, top_k));
        }
        Ok(())
    }

    fn moe(&self, step: &CpuStep, args: MoeArgs<'_, Self>, out: &mut CpuBuf) -> Result<()> {
        moe::moe(
            &args.h.data,
            step.rows(),
            args.experts,
            args.routing,
            &args.shape,
            &mut out.data,
        );
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
        let picked: Vec<f32> = step
            .batch
            .logit_rows
            .iter()
            .flat_map(|&r| x.data[r as usize * h..(r as usize + 1) * h].iter().copied())
            .collect();
        matmul::matmul(
            &picked,
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
}

fn cpu_error(message: &str) -> Error {
    Error::Backend {
        backend: "cpu",
        message: message.to_string(),
    }
}
