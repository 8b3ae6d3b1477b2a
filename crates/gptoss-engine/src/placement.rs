//! Placement from sizes alone, before anything is loaded: which layers' experts stay in host memory when
//! the device budget is short (llama.cpp's `--n-cpu-moe`: the experts of the first N layers), the
//! largest context and the most streams a budget holds, and the bytes one decode step reads (for
//! `gptoss fit`'s speed estimate). Sizes follow the CUDA backend's packed layout (`memory.rs`).

use gptoss_formats::{Linear, ModelConfig, ModelWeights};

use crate::backend::Capacity;
use crate::error::{Error, Result};
use crate::kv::KvLayout;
use crate::memory::{plan, tensor_bytes, KvPrecision, MemoryPlan};

/// A model's device weight bytes, split the way placement moves them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WeightSplit {
    /// Everything but the experts: embedding, lm_head, attention, routers, norms, sinks, biases.
    pub shared_bytes: u64,
    /// The embedding table (a step reads one row per token of it).
    pub embed_bytes: u64,
    /// The lm_head and the final norm (on the last stage of a pipeline split).
    pub head_bytes: u64,
    /// Experts (weights and biases) of each layer.
    pub expert_bytes: Vec<u64>,
    /// Rows of the embedding table.
    pub vocab: u64,
    /// Experts a token runs per layer / experts per layer.
    pub top_k: u64,
    /// Experts per layer.
    pub n_experts: u64,
}

fn vec_bytes(v: &[f32]) -> u64 {
    4 * v.len() as u64
}

fn linear_bytes(l: &Linear) -> u64 {
    tensor_bytes(&l.weight) + l.bias.as_deref().map_or(0, vec_bytes)
}

impl WeightSplit {
    /// The split of loaded weights (shapes and formats only; no weight byte is read).
    pub fn of_weights(w: &ModelWeights) -> Self {
        let c = &w.config;
        let mut shared = tensor_bytes(&w.embed) + tensor_bytes(&w.lm_head) + vec_bytes(&w.norm);
        let mut expert_bytes = Vec::with_capacity(w.layers.len());
        for l in &w.layers {
            shared += vec_bytes(&l.attn_norm) + vec_bytes(&l.mlp_norm) + vec_bytes(&l.sinks);
            shared += [&l.q, &l.k, &l.v, &l.o, &l.router]
                .iter()
                .map(|x| linear_bytes(x))
                .sum::<u64>();
            expert_bytes.push(
                l.experts
                    .iter()
                    .map(|e| linear_bytes(&e.gate_up) + linear_bytes(&e.down))
                    .sum(),
            );
        }
        WeightSplit {
            shared_bytes: shared,
            embed_bytes: tensor_bytes(&w.embed),
            head_bytes: tensor_bytes(&w.lm_head) + vec_bytes(&w.norm),
            expert_bytes,
            vocab: c.vocab_size as u64,
            top_k: c.num_experts_per_tok as u64,
            n_experts: c.num_local_experts as u64,
        }
    }

    /// The split of the official checkpoint of `config` (spec §2a): bf16 embedding, attention, router
    /// and lm_head, MXFP4 experts with E8M0 scales, f32 biases, sinks and norms (what `--dummy` builds).
    pub fn mxfp4_checkpoint(config: &ModelConfig) -> Self {
        Self::with_dense(config, DenseFormat::Bf16)
    }

    /// The split of `config` with MXFP4 experts and dense 2-D weights in `dense` (the router in bf16 for
    /// the official layout, f32 in a GGUF, as `gptoss convert` and llama.cpp write it).
    pub fn with_dense(config: &ModelConfig, dense: DenseFormat) -> Self {
        let c = config;
        let (h, qw, kvw, e, i, v) = (
            c.hidden_size as u64,
            c.q_width() as u64,
            c.kv_width() as u64,
            c.num_local_experts as u64,
            c.intermediate_size as u64,
            c.vocab_size as u64,
        );
        let bf16 = |rows: u64, cols: u64| rows * cols.div_ceil(8) * 8 * 2;
        let matrix = |rows: u64, cols: u64| match dense {
            DenseFormat::Bf16 => bf16(rows, cols),
            DenseFormat::Q8_0 => rows * cols + rows * cols / 32 * 2,
        };
        let router = match dense {
            DenseFormat::Bf16 => bf16(e, h),
            DenseFormat::Q8_0 => e * h.div_ceil(8) * 8 * 4,
        };
        let mxfp4 = |rows: u64, cols: u64| rows * cols / 2 + rows * cols / 32;
        let attention = matrix(qw, h) + 2 * matrix(kvw, h) + matrix(h, qw) + 4 * (qw + 2 * kvw + h);
        let small = 4 * (2 * h + c.num_attention_heads as u64);
        let layers = c.num_hidden_layers as u64;
        WeightSplit {
            shared_bytes: 2 * matrix(v, h) + 4 * h + layers * (attention + router + 4 * e + small),
            embed_bytes: matrix(v, h),
            head_bytes: matrix(v, h) + 4 * h,
            expert_bytes: vec![
                e * (mxfp4(2 * i, h) + 4 * 2 * i + mxfp4(h, i) + 4 * h);
                c.num_hidden_layers
            ],
            vocab: v,
            top_k: c.num_experts_per_tok as u64,
            n_experts: e,
        }
    }

    /// Device bytes of one expert (weights and biases; every expert of these models has one size).
    pub fn bytes_per_expert(&self) -> u64 {
        self.expert_bytes.first().copied().unwrap_or(0) / self.n_experts.max(1)
    }

    /// Device bytes of layer `l` with its experts: attention, router, norms and sinks (every layer of
    /// these models has the same shapes, so the shared part is the per-layer share of what is neither
    /// the embedding nor the head) plus the layer's experts.
    pub fn layer_bytes(&self, l: usize) -> u64 {
        let layers = self.expert_bytes.len().max(1) as u64;
        let dense = self
            .shared_bytes
            .saturating_sub(self.embed_bytes + self.head_bytes);
        let per_layer = dense / layers;
        per_layer + self.expert_bytes.get(l).copied().unwrap_or(0)
    }

    /// All weight bytes.
    pub fn total_bytes(&self) -> u64 {
        self.shared_bytes + self.expert_bytes.iter().sum::<u64>()
    }

    /// Weight bytes one decode step of one token reads, split into (device, host) when the experts of
    /// the first `cpu_moe_layers` layers live in host memory: every shared weight except the embedding
    /// (one row of it), and `top_k / n_experts` of each layer's experts.
    pub fn read_per_token(&self, cpu_moe_layers: usize) -> (u64, u64) {
        let row = self.embed_bytes / self.vocab.max(1);
        let shared = self.shared_bytes - self.embed_bytes + row;
        let active = |b: &u64| b * self.top_k / self.n_experts.max(1);
        let host: u64 = self
            .expert_bytes
            .iter()
            .take(cpu_moe_layers)
            .map(active)
            .sum();
        let device: u64 = self
            .expert_bytes
            .iter()
            .skip(cpu_moe_layers)
            .map(active)
            .sum();
        (shared + device, host)
    }

    /// Device weight bytes with the experts of the first `cpu_moe_layers` layers in host memory.
    pub fn device_bytes(&self, cpu_moe_layers: usize) -> u64 {
        self.shared_bytes + self.expert_bytes.iter().skip(cpu_moe_layers).sum::<u64>()
    }
}

/// The storage of a model's dense 2-D weights (embedding, attention, lm_head).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DenseFormat {
    /// bf16, as the official checkpoints store them.
    Bf16,
    /// Q8_0, as llama.cpp's MXFP4_MOE GGUFs (`gptoss convert --type mxfp4`) store them.
    Q8_0,
}

/// Where a model's weights go for one device budget.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// Layers, counted from the first, whose experts stay in host memory (0: everything on the device).
    pub cpu_moe_layers: usize,
    /// Expert bytes in host memory.
    pub host_bytes: u64,
    /// The device plan with the remaining weights.
    pub plan: MemoryPlan,
}

/// The fewest layers whose experts must stay in host memory for `capacity` to fit `cap_bytes` of device
/// memory; fails with the numbers when not even every expert in host memory leaves room.
pub fn place_experts(
    config: &ModelConfig,
    split: &WeightSplit,
    capacity: &Capacity,
    kv: KvPrecision,
    cap_bytes: u64,
) -> Result<Placement> {
    for cpu_moe_layers in 0..=split.expert_bytes.len() {
        let p = plan(config, split.device_bytes(cpu_moe_layers), capacity, kv)?;
        if p.total_bytes() <= cap_bytes {
            return Ok(Placement {
                cpu_moe_layers,
                host_bytes: split.total_bytes() - split.device_bytes(cpu_moe_layers),
                plan: p,
            });
        }
    }
    let all_host = plan(config, split.shared_bytes, capacity, kv)?;
    Err(Error::OutOfMemory(format!(
        "even with every expert in host memory the device needs {all_host}, over the budget of {:.2} GiB",
        cap_bytes as f64 / (1u64 << 30) as f64
    )))
}

/// The hot-expert cache that fits `bytes` of device memory when the experts of the first `cpu_moe_layers`
/// layers are in host memory: `(slots, device bytes)`, its per-step buffers (the remapped routing and the
/// CPU's partial sum, `[max_batch_tokens, H]`) included, at most every host expert; `(0, 0)` when not even
/// one expert fits or none is in host memory.
pub fn expert_cache_fit(
    config: &ModelConfig,
    split: &WeightSplit,
    capacity: &Capacity,
    cpu_moe_layers: usize,
    bytes: u64,
) -> (usize, u64) {
    let rows = capacity.max_batch_tokens as u64;
    let buffers =
        rows * config.num_experts_per_tok as u64 * 8 + rows * config.hidden_size as u64 * 4;
    let each = split.bytes_per_expert();
    let most = cpu_moe_layers.min(split.expert_bytes.len()) as u64 * split.n_experts;
    if each == 0 || bytes <= buffers {
        return (0, 0);
    }
    let slots = ((bytes - buffers) / each).min(most);
    match slots {
        0 => (0, 0),
        n => (n as usize, n * each + buffers),
    }
}

/// Device bytes of the slot set big steps stream host layers' experts into (`expert_stream.rs`): the
/// largest layer's experts among the first `cpu_moe_layers` (0 when none is in host memory).
pub fn expert_stream_bytes(split: &WeightSplit, cpu_moe_layers: usize) -> u64 {
    split
        .expert_bytes
        .iter()
        .take(cpu_moe_layers)
        .copied()
        .max()
        .unwrap_or(0)
}

/// The largest context (in tokens, at most the model's `max_position_embeddings`) at which `capacity`'s
/// streams, each at that context, fit `cap_bytes` with `weights_bytes` on the device; `None` when not
/// even one position does.
pub fn max_context(
    config: &ModelConfig,
    weights_bytes: u64,
    capacity: &Capacity,
    kv: KvPrecision,
    cap_bytes: u64,
) -> Result<Option<usize>> {
    let fits = |ctx: usize| -> Result<bool> {
        let c = Capacity {
            context_tokens: ctx,
            kv_blocks: None,
            ..*capacity
        };
        Ok(plan(config, weights_bytes, &c, kv)?.total_bytes() <= cap_bytes)
    };
    largest(1, config.max_position_embeddings.max(1), fits)
}

/// The most streams (each with its own logit row, at `capacity.context_tokens`) that fit `cap_bytes`,
/// up to `limit` (and the engine's `MAX_SLOTS`); `None` when not even one does.
pub fn max_streams(
    config: &ModelConfig,
    weights_bytes: u64,
    capacity: &Capacity,
    kv: KvPrecision,
    (cap_bytes, limit): (u64, usize),
) -> Result<Option<usize>> {
    let fits = |slots: usize| -> Result<bool> {
        let c = Capacity {
            slots,
            max_logit_rows: slots,
            kv_blocks: None,
            ..*capacity
        };
        Ok(plan(config, weights_bytes, &c, kv)?.total_bytes() <= cap_bytes)
    };
    // The engine runs at most MAX_SLOTS sequences at once, whatever the memory would hold.
    largest(1, limit.clamp(1, crate::backend::MAX_SLOTS), fits)
}

/// The largest `n` in `lo..=hi` with `fits(n)`, for a `fits` that holds up to some point and not after.
fn largest(lo: usize, hi: usize, fits: impl Fn(usize) -> Result<bool>) -> Result<Option<usize>> {
    if !fits(lo)? {
        return Ok(None);
    }
    let (mut good, mut bad) = (lo, hi + 1);
    if fits(hi)? {
        return Ok(Some(hi));
    }
    bad = bad.min(hi);
    while bad - good > 1 {
        let mid = good + (bad - good) / 2;
        if fits(mid)? {
            good = mid;
        } else {
            bad = mid;
        }
    }
    Ok(Some(good))
}

/// KV-cache bytes one decode step reads at `context` tokens: every position of the full layers and at
/// most a window of the sliding ones, keys and values.
pub fn kv_read_per_token(config: &ModelConfig, context: usize, kv: KvPrecision) -> Result<u64> {
    let one = Capacity {
        max_batch_tokens: 1,
        max_logit_rows: 1,
        slots: 1,
        context_tokens: context.max(1),
        kv_blocks: None,
    };
    let layout = KvLayout::new(config, &one)?;
    let per_position = 2 * layout.kv_width as u64 * kv.size_bytes();
    let full = layout.full_layers as u64 * context as u64;
    let sliding = layout.sliding_layers as u64 * context.min(layout.window_tokens) as u64;
    Ok(per_position * (full + sliding))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::memory::{mxfp4_checkpoint_bytes, weights_bytes};

    const GIB: u64 = 1 << 30;

    fn cap(ctx: usize, slots: usize) -> Capacity {
        Capacity {
            max_batch_tokens: 512,
            max_logit_rows: slots,
            slots,
            context_tokens: ctx,
            kv_blocks: None,
        }
    }

    #[test]
    fn checkpoint_split_matches_the_dummy_weights() {
        let mut c = ModelConfig::gpt_oss_20b();
        c.num_hidden_layers = 2;
        c.layer_types.truncate(2);
        c.vocab_size = 1000;
        let w = gptoss_formats::dummy::dummy_weights(&c, 1);
        let split = WeightSplit::mxfp4_checkpoint(&c);
        assert_eq!(split, WeightSplit::of_weights(&w));
        assert_eq!(split.total_bytes(), weights_bytes(&w));
        assert_eq!(split.total_bytes(), mxfp4_checkpoint_bytes(&c));
        // The GGUF mix: dense Q8_0 (34 bytes per 32), router f32, the rest as before.
        let q8 = WeightSplit::with_dense(&c, DenseFormat::Q8_0);
        let (h, qw, kvw) = (2880u64, 4096u64, 512u64);
        let dense = 2 * 1000 * h + 2 * (qw * h + 2 * kvw * h + h * qw);
        let router = 2 * 32 * h;
        assert_eq!(
            split.shared_bytes - q8.shared_bytes,
            dense * 2 - dense / 32 * 34 + router * 2 - router * 4
        );
        assert_eq!(q8.expert_bytes, split.expert_bytes);
    }

    #[test]
    fn twenty_b_reads_per_token() {
        let c = ModelConfig::gpt_oss_20b();
        let s = WeightSplit::mxfp4_checkpoint(&c);
        // One expert: [5760, 2880] and [2880, 2880] at 17/32 byte per weight plus f32 biases.
        let expert = (5760 * 2880 + 2880 * 2880) / 32 * 17 + 4 * (5760 + 2880);
        assert_eq!(s.expert_bytes, vec![32 * expert; 24]);
        let (device, host) = s.read_per_token(0);
        let embed = 201_088 * 2880 * 2;
        assert_eq!(host, 0);
        assert_eq!(device, s.shared_bytes - embed + 2880 * 2 + 24 * 4 * expert);
        // ≈ 2.43 GB of dense weights (attention, routers, lm_head) + 1.27 GB of active experts.
        assert_eq!(device, 3_710_418_816);
        let (d6, h6) = s.read_per_token(6);
        assert_eq!((d6 + h6, h6), (device, 6 * 4 * expert));
        // An 8k context reads 12 full layers × 8192 + 12 sliding × 128 positions of K and V (512 f32 each).
        assert_eq!(
            kv_read_per_token(&c, 8192, KvPrecision::F32).unwrap(),
            (12 * 8192 + 12 * 128) * 2 * 512 * 4
        );
    }

    #[test]
    fn experts_move_to_host_until_the_plan_fits() {
        let c = ModelConfig::gpt_oss_20b();
        let s = WeightSplit::mxfp4_checkpoint(&c);
        let p = place_experts(&c, &s, &cap(8192, 1), KvPrecision::F32, 16 * GIB).unwrap();
        assert_eq!((p.cpu_moe_layers, p.host_bytes), (0, 0));
        // 8 GiB: the shared 2.5 GiB + KV + workspace leave room for the experts of 10 of 24 layers.
        let p = place_experts(&c, &s, &cap(8192, 1), KvPrecision::F32, 8 * GIB).unwrap();
        let per_layer = s.expert_bytes[0];
        assert_eq!(p.cpu_moe_layers, 14);
        assert_eq!(p.host_bytes, 14 * per_layer);
        assert!(p.plan.total_bytes() <= 8 * GIB);
        let one_less = plan(&c, s.device_bytes(13), &cap(8192, 1), KvPrecision::F32).unwrap();
        assert!(one_less.total_bytes() > 8 * GIB);
        let e = place_experts(&c, &s, &cap(8192, 1), KvPrecision::F32, 2 * GIB).unwrap_err();
        assert!(e.to_string().contains("every expert in host memory"), "{e}");
    }

    #[test]
    fn expert_cache_takes_whole_experts() {
        let c = ModelConfig::gpt_oss_20b();
        let s = WeightSplit::mxfp4_checkpoint(&c);
        let each = (5760 * 2880 + 2880 * 2880) / 32 * 17 + 4 * (5760 + 2880);
        assert_eq!(s.bytes_per_expert(), each);
        let buffers = 512 * 4 * 8 + 512 * 2880 * 4;
        let fit = |layers, bytes| expert_cache_fit(&c, &s, &cap(8192, 1), layers, bytes);
        assert_eq!(
            fit(24, GIB),
            (
                ((GIB - buffers) / each) as usize,
                ((GIB - buffers) / each) * each + buffers
            )
        );
        // No host layers, or too little for one expert: no cache. More than every host expert: all of them.
        assert_eq!(fit(0, GIB), (0, 0));
        assert_eq!(fit(24, buffers + each - 1), (0, 0));
        assert_eq!(fit(2, 100 * GIB), (64, 64 * each + buffers));
        // The streamed set: one layer's 32 experts (≈ 422 MB), none without host layers.
        assert_eq!(expert_stream_bytes(&s, 24), 32 * each);
        assert_eq!(expert_stream_bytes(&s, 0), 0);
    }

    #[test]
    fn largest_context_and_streams() {
        let c = ModelConfig::gpt_oss_20b();
        let w = mxfp4_checkpoint_bytes(&c);
        let budget = 16 * GIB;
        let ctx = max_context(&c, w, &cap(0, 1), KvPrecision::F32, budget)
            .unwrap()
            .unwrap();
        let at = |ctx: usize, slots: usize| {
            plan(&c, w, &cap(ctx, slots), KvPrecision::F32)
                .unwrap()
                .total_bytes()
        };
        assert!(at(ctx, 1) <= budget && at(ctx + 16, 1) > budget, "{ctx}");
        // Every position costs 12 full layers × 2 × 512 f32: 48 KiB; 16 GiB leaves room for ≈ 58k.
        assert!((50_000..70_000).contains(&ctx), "{ctx}");
        let n = max_streams(&c, w, &cap(8192, 1), KvPrecision::F32, (budget, 1024))
            .unwrap()
            .unwrap();
        assert!(at(8192, n) <= budget && at(8192, n + 1) > budget, "{n}");
        assert_eq!(
            max_context(&c, w, &cap(0, 1), KvPrecision::F32, 12 * GIB).unwrap(),
            None
        );
        // 141 GiB holds the full 131072 context.
        assert_eq!(
            max_context(&c, w, &cap(0, 1), KvPrecision::F32, 141 * GIB).unwrap(),
            Some(131_072)
        );
    }
}
