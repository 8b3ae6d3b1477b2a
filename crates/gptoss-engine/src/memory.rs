//! The device memory planner: what a model needs on a GPU (packed weights + KV cache + step workspace) for a
//! context length and slot count, computed before anything is loaded so `--max-vram` can refuse early with
//! the numbers. The weight sizes follow the CUDA backend's packed layout (gptoss-cuda `weights.rs`).

use gptoss_formats::{
    DType, Lut4Scales, ModelConfig, ModelWeights, QuantTensor, ScaleFormat, TensorFormat,
};

use crate::backend::Capacity;
use crate::error::{Error, Result};

/// Element type of the device KV cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvPrecision {
    /// bf16 (the default).
    Bf16,
    /// f32 (exact against the CPU backend).
    F32,
}

impl KvPrecision {
    /// Bytes per element.
    pub fn size_bytes(self) -> u64 {
        match self {
            KvPrecision::Bf16 => 2,
            KvPrecision::F32 => 4,
        }
    }
}

/// Device bytes a model needs, by kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryPlan {
    /// Packed weights, biases and vectors.
    pub weights_bytes: u64,
    /// Keys and values of every layer, slot and position.
    pub kv_cache_bytes: u64,
    /// Activations, routing, logits and kernel scratch of one step.
    pub workspace_bytes: u64,
}

impl MemoryPlan {
    /// Weights + KV + workspace.
    pub fn total_bytes(&self) -> u64 {
        self.weights_bytes + self.kv_cache_bytes + self.workspace_bytes
    }

    /// Fails with every number when the plan does not fit `cap_bytes`.
    pub fn check(&self, cap_bytes: u64) -> Result<()> {
        if self.total_bytes() <= cap_bytes {
            return Ok(());
        }
        Err(Error::OutOfMemory(format!(
            "the model needs {} of device memory but the budget is {}: {self}",
            gib(self.total_bytes()),
            gib(cap_bytes)
        )))
    }
}

impl std::fmt::Display for MemoryPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "weights {}, KV cache {}, workspace {}, total {}",
            gib(self.weights_bytes),
            gib(self.kv_cache_bytes),
            gib(self.workspace_bytes),
            gib(self.total_bytes())
        )
    }
}

fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// The plan for `config` with `weights_bytes` of weights, at `capacity`, with a `kv` cache.
pub fn plan(
    config: &ModelConfig,
    weights_bytes: u64,
    capacity: &Capacity,
    kv: KvPrecision,
) -> MemoryPlan {
    MemoryPlan {
        weights_bytes,
        kv_cache_bytes: kv_cache_bytes(config, capacity, kv),
        workspace_bytes: workspace_bytes(config, capacity),
    }
}

/// K and V for every layer, slot and position.
pub fn kv_cache_bytes(config: &ModelConfig, capacity: &Capacity, kv: KvPrecision) -> u64 {
    let per_token = 2 * config.kv_width() as u64 * kv.size_bytes();
    config.num_hidden_layers as u64
        * capacity.slots as u64
        * capacity.context_tokens as u64
        * per_token
}

/// One step's buffers: the model's activations, routing and logits, the step metadata, the MoE scratch
/// (pair lists, activations and outputs of every chosen expert) and the sampler's f64 scratch.
pub fn workspace_bytes(config: &ModelConfig, capacity: &Capacity) -> u64 {
    let c = config;
    let (rows, logit_rows) = (
        capacity.max_batch_tokens as u64,
        capacity.max_logit_rows as u64,
    );
    let (h, qw, kvw) = (
        c.hidden_size as u64,
        c.q_width() as u64,
        c.kv_width() as u64,
    );
    let (e, i, k, v) = (
        c.num_local_experts as u64,
        c.intermediate_size as u64,
        c.num_experts_per_tok as u64,
        c.vocab_size as u64,
    );
    let activations = 4 * rows * (3 * h + 2 * qw + 2 * kvw);
    let routing = rows * k * 8;
    let logits = 4 * logit_rows * v;
    let step = 4 * (3 * rows + logit_rows) + 4 * (c.head_dim as u64 / 2);
    let moe = 4 * (2 * e + 1) + 4 * rows * k * (1 + i + h);
    let sampler = logit_rows * (8 * v + 24 + 4);
    activations + routing + logits + step + moe + sampler
}

/// Device bytes of one packed weight tensor: rows padded to 8 elements for dense types; 4-bit codes with
/// E8M0 byte scales or f32 scales; Q8_0 as int8 codes plus an f16 scale per 32. A 4-bit tensor whose scale
/// blocks straddle rows is stored decoded, as f32.
pub fn tensor_bytes(t: &QuantTensor) -> u64 {
    let (rows, k) = (t.n_rows() as u64, t.row_len() as u64);
    let dense = |size: u64| rows * k.div_ceil(8) * 8 * size;
    match &t.format {
        TensorFormat::Dense(d) => dense(d.size_bytes() as u64),
        TensorFormat::Q8_0 => rows * k + rows * k / 32 * 2,
        TensorFormat::Lut4(l) => {
            let block = l.block_elems as u64;
            if !block.is_multiple_of(8) || !k.is_multiple_of(block) {
                return dense(DType::F32.size_bytes() as u64);
            }
            let scale = match &l.scales {
                Lut4Scales::Separate {
                    format: ScaleFormat::E8M0,
                    ..
                }
                | Lut4Scales::Inline {
                    format: ScaleFormat::E8M0,
                } => 1,
                _ => 4,
            };
            rows * k / 2 + rows * k / block * scale
        }
    }
}

/// Device bytes of a model's weights as the CUDA backend stores them.
pub fn weights_bytes(w: &ModelWeights) -> u64 {
    let vec = |v: &[f32]| 4 * v.len() as u64;
    let lin =
        |l: &gptoss_formats::Linear| tensor_bytes(&l.weight) + l.bias.as_deref().map_or(0, vec);
    let layers: u64 = w
        .layers
        .iter()
        .map(|l| {
            let experts: u64 = l
                .experts
                .iter()
                .map(|e| lin(&e.gate_up) + lin(&e.down))
                .sum();
            vec(&l.attn_norm)
                + vec(&l.mlp_norm)
                + vec(&l.sinks)
                + lin(&l.q)
                + lin(&l.k)
                + lin(&l.v)
                + lin(&l.o)
                + lin(&l.router)
                + experts
        })
        .sum();
    tensor_bytes(&w.embed) + tensor_bytes(&w.lm_head) + vec(&w.norm) + layers
}

/// Device bytes of the official checkpoint of `config` (spec §2a): bf16 embedding, attention, router and
/// lm_head, MXFP4 experts with E8M0 scales, f32 biases, sinks and norms. For planning without the files.
pub fn mxfp4_checkpoint_bytes(config: &ModelConfig) -> u64 {
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
    let mxfp4 = |rows: u64, cols: u64| rows * cols / 2 + rows * cols / 32;
    let attention = bf16(qw, h) + 2 * bf16(kvw, h) + bf16(h, qw) + 4 * (qw + 2 * kvw + h);
    let router = bf16(e, h) + 4 * e;
    let experts = e * (mxfp4(2 * i, h) + 4 * 2 * i + mxfp4(h, i) + 4 * h);
    let small = 4 * (2 * h + c.num_attention_heads as u64);
    2 * bf16(v, h) + 4 * h + c.num_hidden_layers as u64 * (attention + router + experts + small)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn cap(context_tokens: usize) -> Capacity {
        Capacity {
            max_batch_tokens: 512,
            max_logit_rows: 1,
            slots: 1,
            context_tokens,
        }
    }

    #[test]
    fn gpt_oss_20b_mxfp4_fits_16_and_24_gib() {
        let c = ModelConfig::gpt_oss_20b();
        let w = mxfp4_checkpoint_bytes(&c);
        // Hand count: embed + lm_head 2 × 201088 × 2880 × 2; per layer q/k/v/o bf16 + biases, router,
        // 32 experts × (5760 × 2880 and 2880 × 2880 at 17/32 byte per weight + biases), norms and sinks.
        let per_layer = (4096 * 2880 + 2 * 512 * 2880 + 2880 * 4096) * 2
            + 4 * (4096 + 1024 + 2880)
            + 32 * 2880 * 2
            + 4 * 32
            + 32 * ((5760 * 2880 + 2880 * 2880) / 32 * 17 + 4 * (5760 + 2880))
            + 4 * (2 * 2880 + 64);
        assert_eq!(w, 2 * 201_088 * 2880 * 2 + 4 * 2880 + 24 * per_layer);
        assert_eq!(w, 13_775_206_656); // 12.83 GiB
        let p8k = plan(&c, w, &cap(8192), KvPrecision::Bf16);
        assert_eq!(p8k.kv_cache_bytes, 24 * 8192 * 2 * 512 * 2);
        assert!(p8k.total_bytes() < 16 * GIB, "{p8k}");
        p8k.check(16 * GIB).unwrap();
        let p32k = plan(&c, w, &cap(32_768), KvPrecision::Bf16);
        assert_eq!(p32k.kv_cache_bytes, 1_610_612_736);
        p32k.check(24 * GIB).unwrap();
        // 32k context does not fit 14 GiB: the error gives the parts.
        let e = p32k.check(14 * GIB).unwrap_err().to_string();
        assert!(
            e.contains("budget is 14.00 GiB") && e.contains("KV cache 1.50 GiB"),
            "{e}"
        );
    }

    #[test]
    fn packed_sizes() {
        let t = QuantTensor::from_f32(vec![3, 10], &[0.0; 30]);
        assert_eq!(tensor_bytes(&t), 3 * 16 * 4);
        let q8 = QuantTensor {
            shape: vec![2, 64],
            format: TensorFormat::Q8_0,
            data: gptoss_formats::Storage::owned(vec![0; 4 * 34]),
        };
        assert_eq!(tensor_bytes(&q8), 128 + 8);
    }
}
