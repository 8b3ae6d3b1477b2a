//! The device memory planner: what a model needs on a GPU (packed weights + paged KV pools + step workspace)
//! for a context length and slot count, computed before anything is loaded so `--max-vram` can size the
//! full-attention KV pool from the budget ([`fit_kv_blocks`]) or refuse early with the numbers. The weight
//! sizes follow the CUDA backend's packed layout (gptoss-cuda `weights.rs`).

use gptoss_formats::{
    DType, Lut4Scales, ModelConfig, ModelWeights, QuantTensor, ScaleFormat, TensorFormat,
};

use crate::backend::Capacity;
use crate::error::{Error, Result};
use crate::kv::{KvLayout, BLOCK_POSITIONS};

/// Element type of the device KV cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KvPrecision {
    /// f32 (the default: exact against the CPU backend; the tiny fixtures give ≤ 1.6e-5 relative logit
    /// error on the GPU, where f16 gives up to 1.1e-2 and bf16 up to 7.6e-2).
    #[default]
    F32,
    /// f16: half the memory, 3 more mantissa bits than bf16.
    F16,
    /// bf16: half the memory.
    Bf16,
}

impl KvPrecision {
    /// Bytes per element.
    pub fn size_bytes(self) -> u64 {
        match self {
            KvPrecision::Bf16 | KvPrecision::F16 => 2,
            KvPrecision::F32 => 4,
        }
    }
}

/// Device bytes a model needs, by kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryPlan {
    /// Packed weights, biases and vectors.
    pub weights_bytes: u64,
    /// Both KV pools: full-attention blocks and the sliding-window rings.
    pub kv_cache_bytes: u64,
    /// Blocks in the full-attention pool (each 16 positions of every full layer).
    pub kv_blocks: usize,
    /// Activations, routing, logits and kernel scratch of one step.
    pub workspace_bytes: u64,
    /// The hot-expert cache: its slots and its per-step buffers (0 without one).
    pub expert_cache_bytes: u64,
    /// Experts the hot-expert cache holds.
    pub expert_cache_slots: usize,
    /// The slot set host layers' experts are streamed into for big steps: one layer's experts (0
    /// without streaming; `expert_stream.rs`).
    pub expert_stream_bytes: u64,
}

impl MemoryPlan {
    /// Weights + KV + workspace + expert cache + streamed set.
    pub fn total_bytes(&self) -> u64 {
        self.weights_bytes
            + self.kv_cache_bytes
            + self.workspace_bytes
            + self.expert_cache_bytes
            + self.expert_stream_bytes
    }

    /// The same plan with a streamed expert set of `bytes`.
    pub fn with_expert_stream(self, bytes: u64) -> Self {
        MemoryPlan {
            expert_stream_bytes: bytes,
            ..self
        }
    }

    /// The same plan with a hot-expert cache of `slots` experts in `bytes`.
    pub fn with_expert_cache(self, slots: usize, bytes: u64) -> Self {
        MemoryPlan {
            expert_cache_slots: slots,
            expert_cache_bytes: bytes,
            ..self
        }
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
            "weights {}, KV cache {} ({} blocks = {} tokens of full attention), workspace {}",
            gib(self.weights_bytes),
            gib(self.kv_cache_bytes),
            self.kv_blocks,
            self.kv_blocks * BLOCK_POSITIONS,
            gib(self.workspace_bytes),
        )?;
        if self.expert_cache_slots > 0 {
            write!(
                f,
                ", expert cache {} ({} experts)",
                gib(self.expert_cache_bytes),
                self.expert_cache_slots
            )?;
        }
        if self.expert_stream_bytes > 0 {
            write!(
                f,
                ", expert streaming {} (one layer's experts)",
                gib(self.expert_stream_bytes)
            )?;
        }
        write!(f, ", total {}", gib(self.total_bytes()))
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
) -> Result<MemoryPlan> {
    let layout = KvLayout::new(config, capacity)?;
    Ok(MemoryPlan {
        weights_bytes,
        kv_cache_bytes: layout.pool_bytes(kv.size_bytes()),
        kv_blocks: layout.full_blocks,
        workspace_bytes: workspace_bytes(config, capacity),
        expert_cache_bytes: 0,
        expert_cache_slots: 0,
        expert_stream_bytes: 0,
    })
}

/// The full-attention pool for a device budget of `cap_bytes`: as many blocks as fit beside the weights,
/// the workspace and the sliding rings, at most `capacity`'s own pool (every slot at full context). Fails
/// with the numbers when not even one sequence at full context fits.
pub fn fit_kv_blocks(
    config: &ModelConfig,
    weights_bytes: u64,
    capacity: &Capacity,
    kv: KvPrecision,
    cap_bytes: u64,
) -> Result<usize> {
    let wanted = KvLayout::new(config, capacity)?;
    let one = Capacity {
        kv_blocks: Some(1),
        ..*capacity
    };
    let base = plan(config, weights_bytes, &one, kv)?;
    let block_bytes = wanted.full_block_bytes(kv.size_bytes());
    if block_bytes == 0 {
        return Ok(wanted.full_blocks);
    }
    let fixed = base.total_bytes() - block_bytes;
    let fit = cap_bytes.saturating_sub(fixed) / block_bytes;
    let blocks = (fit as usize).min(wanted.full_blocks);
    if blocks < wanted.table_blocks {
        return Err(Error::OutOfMemory(format!(
            "the budget of {} leaves room for {blocks} KV blocks ({} tokens) beside weights {}, workspace {} and \
             sliding-window rings; one sequence of {} tokens needs {} blocks (lower --ctx or --kv-cache, or \
             raise --max-vram)",
            gib(cap_bytes),
            blocks * BLOCK_POSITIONS,
            gib(weights_bytes),
            gib(base.workspace_bytes),
            capacity.context_tokens,
            wanted.table_blocks
        )));
    }
    Ok(blocks)
}

/// Most tokens of a step whose attention may split its keys across CTAs (long-context decode).
pub const ATTN_SPLIT_ROWS: usize = 64;
/// Most key splits of one (token, query head).
pub const ATTN_MAX_SPLITS: usize = 16;

/// f32 elements of the device attention's split scratch: `(max, sum, acc[head_dim])` per split of each
/// (token, query head) for up to [`ATTN_SPLIT_ROWS`] tokens.
pub fn attention_split_floats(config: &ModelConfig, capacity: &Capacity) -> usize {
    capacity.max_batch_tokens.min(ATTN_SPLIT_ROWS)
        * config.num_attention_heads
        * ATTN_MAX_SPLITS
        * (config.head_dim + 2)
}

/// Slices of a logit row in which the CUDA sampler first finds the largest logit (a u64 key each).
pub const SAMPLER_KEY_SLICES: usize = 128;

/// Most f32 partial sums the CUDA tensor-core linears split along K keep per step (64 rows × 128 weight
/// rows × 320 blocks; the launcher takes fewer splits where they would not fit).
pub const LINEAR_SPLIT_FLOATS: usize = 64 * 128 * 320;

/// f32 elements of the CUDA linears' K-split scratch for `capacity`: none when no step reaches the
/// split tensor-core tiles (5 rows).
pub fn linear_split_floats(capacity: &Capacity) -> usize {
    if capacity.max_batch_tokens >= 5 {
        LINEAR_SPLIT_FLOATS
    } else {
        0
    }
}

/// Longest K (x row) of a linear that the CUDA pipelined tiles take; longer ones keep the older tiles.
pub const PIPE_MAX_K: usize = 8192;
/// Most step rows the CUDA pipelined tiles take (batched decode; larger steps are prompts).
pub const PIPE_MAX_ROWS: usize = 64;

/// bf16 elements of the CUDA pipelined tiles' x planes for `capacity` (x in three bf16 parts, up to
/// [`PIPE_MAX_ROWS`] rows of [`PIPE_MAX_K`]): none when no step reaches the tensor-core tiles (5 rows).
pub fn linear_xparts_halves(capacity: &Capacity) -> usize {
    if capacity.max_batch_tokens >= 5 {
        3 * capacity.max_batch_tokens.min(PIPE_MAX_ROWS) * PIPE_MAX_K
    } else {
        0
    }
}

/// Bytes of the CUDA backend's upload scratch: one staging buffer, where the raw blocks of a ggml-format
/// weight land to be repacked on the device. It lives only while weights load, but the last ones (lm_head,
/// the embedding) load after the KV pool is allocated, so the workspace counts it.
pub const UPLOAD_SCRATCH_BYTES: u64 = 32 << 20;

/// One step's buffers: the model's activations, routing and logits, the step metadata, the MoE scratch
/// (pair lists, activations and outputs of every chosen expert) and the sampler's f64 scratch; and the
/// upload scratch ([`UPLOAD_SCRATCH_BYTES`]).
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
    let tables = match KvLayout::new(config, capacity) {
        Ok(l) => capacity.max_step_seqs() as u64 * (l.table_blocks + l.ring_blocks) as u64,
        Err(_) => 0,
    };
    // The last 4: the CUDA GEMVs' fused-norm ticket.
    let step = 4 * (3 * rows + logit_rows + tables)
        + 4 * (c.head_dim as u64 / 2)
        + 4
        + 4 * attention_split_floats(config, capacity) as u64
        + 4 * linear_split_floats(capacity) as u64
        + 2 * linear_xparts_halves(capacity) as u64;
    // The CUDA MXFP4 experts split x into two f16 parts inside the act and y buffers; their scales, one f32
    // per 32 values, need room of their own (two buffers: gate_up's input and act).
    let split_scales = 2 * rows * k * i.max(h) / 32;
    let moe = 4 * (2 * e + 1) + 4 * rows * k * (1 + i + h) + 4 * split_scales;
    // Per logit row: the f64 scratch, the parameters (32 bytes), the token, the largest key per slice,
    // the token mask (a bit per vocabulary entry, in whole u32 words), the log-probability job (16 bytes)
    // and its output (the token's value and up to MAX_TOP_LOGPROBS (id, value) pairs).
    let top = crate::logits::MAX_TOP_LOGPROBS as u64;
    let keys = 8 * SAMPLER_KEY_SLICES as u64;
    let sampler =
        logit_rows * (8 * v + 32 + 4 + keys + 4 * v.div_ceil(32) + 16 + 4 * (1 + 2 * top));
    activations + routing + logits + step + moe + sampler + UPLOAD_SCRATCH_BYTES
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
    crate::placement::WeightSplit::mxfp4_checkpoint(config).total_bytes()
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
            kv_blocks: None,
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
                                       // 12 full layers × 8192 positions, 12 sliding layers × a ring of (512 + 128 - 2) / 16 + 2 = 41
                                       // blocks of 16 positions (512-token prefill chunks); K and V of 512 bf16 each.
        let p8k = plan(&c, w, &cap(8192), KvPrecision::Bf16).unwrap();
        // Plus the prefix cache's 4 ring copies of 8 blocks (kv::PREFIX_SNAPSHOTS).
        assert_eq!(
            p8k.kv_cache_bytes,
            (12 * 8192 + 12 * (41 + 4 * 8) * 16) * 2 * 512 * 2
        );
        assert_eq!(p8k.kv_blocks, 512);
        assert!(p8k.total_bytes() < 16 * GIB, "{p8k}");
        p8k.check(16 * GIB).unwrap();
        // f32 doubles the cache; f16 is the size of bf16.
        let f32_8k = plan(&c, w, &cap(8192), KvPrecision::F32).unwrap();
        assert_eq!(f32_8k.kv_cache_bytes, 2 * p8k.kv_cache_bytes);
        let f16_8k = plan(&c, w, &cap(8192), KvPrecision::F16).unwrap();
        assert_eq!(f16_8k.kv_cache_bytes, p8k.kv_cache_bytes);
        let p32k = plan(&c, w, &cap(32_768), KvPrecision::Bf16).unwrap();
        assert_eq!(
            p32k.kv_cache_bytes,
            (12 * 32_768 + 12 * (41 + 4 * 8) * 16) * 2 * 512 * 2
        );
        p32k.check(24 * GIB).unwrap();
        // 32k context does not fit 13 GiB: the error gives the parts.
        let e = p32k.check(13 * GIB).unwrap_err().to_string();
        assert!(
            e.contains("budget is 13.00 GiB") && e.contains("KV cache 0.78 GiB (2048 blocks"),
            "{e}"
        );
    }

    #[test]
    fn budget_sizes_the_full_pool() {
        let c = ModelConfig::gpt_oss_20b();
        let w = mxfp4_checkpoint_bytes(&c);
        let mut many = cap(8192);
        many.slots = 16;
        many.max_logit_rows = 16;
        // 16 slots at 8k context want 8192 blocks; 16 GiB holds fewer, the plan with them fits.
        let blocks = fit_kv_blocks(&c, w, &many, KvPrecision::F32, 16 * GIB).unwrap();
        assert!((512..8192).contains(&blocks), "{blocks}");
        let sized = Capacity {
            kv_blocks: Some(blocks),
            ..many
        };
        let p = plan(&c, w, &sized, KvPrecision::F32).unwrap();
        p.check(16 * GIB).unwrap();
        let one_more = Capacity {
            kv_blocks: Some(blocks + 1),
            ..many
        };
        assert!(
            plan(&c, w, &one_more, KvPrecision::F32)
                .unwrap()
                .total_bytes()
                > 16 * GIB
        );
        // A roomy budget keeps the wanted pool; too small a one names the numbers.
        assert_eq!(
            fit_kv_blocks(&c, w, &many, KvPrecision::F32, 64 * GIB).unwrap(),
            8192
        );
        let e = fit_kv_blocks(&c, w, &many, KvPrecision::F32, 13 * GIB)
            .unwrap_err()
            .to_string();
        assert!(e.contains("needs 512 blocks"), "{e}");
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
