//! The `Backend` trait: the coarse ops the model's forward pass is written against (DESIGN.md
//! "Backend"). The CPU backend is the exact reference; the CUDA backend implements the same ops on
//! the device. A step's batch is flat: tokens of many sequences, each with its position and its
//! sequence's KV block table (`kv.rs`).

use gptoss_formats::{Expert, Linear, QuantTensor, Window};

use crate::error::Result;
use crate::kv::{BlockTable, KvLayout, PoolKind};

/// One forward step's input: a flat list of tokens from one or more sequences.
#[derive(Clone, Debug, Default)]
pub struct Batch {
    /// Token ids `[T]`.
    pub tokens: Vec<u32>,
    /// Absolute position of each token in its sequence `[T]`.
    pub positions: Vec<u32>,
    /// The sequence of each token: an index into `tables` `[T]`.
    pub seqs: Vec<u32>,
    /// Indices into `tokens` whose logits are wanted, in output order (the last token of each sequence,
    /// or every token for `logits --all-positions`).
    pub logit_rows: Vec<u32>,
    /// The KV block table of each sequence of the step.
    pub tables: Vec<BlockTable>,
}

impl Batch {
    /// A batch of one sequence with blocks `table`: `tokens` at positions `start..`, logits of the last
    /// token only.
    pub fn single(tokens: &[u32], start: u32, table: BlockTable) -> Self {
        let n = tokens.len() as u32;
        Batch {
            tokens: tokens.to_vec(),
            positions: (start..start + n).collect(),
            seqs: vec![0; tokens.len()],
            logit_rows: if n == 0 { vec![] } else { vec![n - 1] },
            tables: vec![table],
        }
    }

    /// The highest position of each sequence's tokens in this step (`None` for a sequence without any).
    pub fn last_positions(&self) -> Vec<Option<u32>> {
        let mut last = vec![None; self.tables.len()];
        for (&s, &p) in self.seqs.iter().zip(&self.positions) {
            if let Some(slot) = last.get_mut(s as usize) {
                *slot = Some(slot.map_or(p, |q: u32| q.max(p)));
            }
        }
        last
    }
}

/// How big the step buffers and the KV cache must be.
#[derive(Clone, Copy, Debug)]
pub struct Capacity {
    /// Most tokens in one step.
    pub max_batch_tokens: usize,
    /// Most logit rows in one step.
    pub max_logit_rows: usize,
    /// Sequences run at once (each gets a ring of sliding-window blocks).
    pub slots: usize,
    /// Longest sequence (prompt + generated).
    pub context_tokens: usize,
    /// Blocks of the full-attention KV pool (`None`: every slot at full context).
    pub kv_blocks: Option<usize>,
}

/// Longest context a model is built for (gpt-oss was trained to 131,072).
pub const MAX_CONTEXT_TOKENS: usize = 1 << 20;
/// Most sequences run at once (KV cache slots).
pub const MAX_SLOTS: usize = 1024;
/// Most tokens of one step.
pub const MAX_BATCH_TOKENS: usize = 1 << 16;
/// Most blocks of the full-attention KV pool (16 positions each: 268M positions).
pub const MAX_KV_BLOCKS: usize = 1 << 24;

impl Capacity {
    /// Checks every size against its bound (and that the pool they imply is countable) before anything
    /// is sized by them; names the flag each comes from.
    pub fn check(&self) -> crate::Result<()> {
        let bounded = [
            (
                "context_tokens (--ctx)",
                self.context_tokens,
                MAX_CONTEXT_TOKENS,
            ),
            ("slots (--max-seqs)", self.slots, MAX_SLOTS),
            (
                "max_batch_tokens (--batch-tokens)",
                self.max_batch_tokens,
                MAX_BATCH_TOKENS,
            ),
            ("max_logit_rows", self.max_logit_rows, MAX_BATCH_TOKENS),
        ];
        for (what, v, max) in bounded {
            if v == 0 || v > max {
                return Err(crate::Error::invalid(format!(
                    "{what} is {v}; it must be in 1..={max}"
                )));
            }
        }
        let table_blocks = self.context_tokens.div_ceil(crate::kv::BLOCK_POSITIONS);
        let pool = match self.kv_blocks {
            Some(n) => n,
            None => self.slots.saturating_mul(table_blocks),
        };
        if pool > MAX_KV_BLOCKS {
            return Err(crate::Error::invalid(format!(
                "the full-attention KV pool would hold {pool} blocks of 16 positions, over {MAX_KV_BLOCKS} \
                 (lower --ctx or --max-seqs, or give --kv-blocks)"
            )));
        }
        Ok(())
    }

    /// Most sequences one step can hold (each has at least one token).
    pub fn max_step_seqs(&self) -> usize {
        self.slots.min(self.max_batch_tokens).max(1)
    }
}

/// Sampling parameters of one sequence.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 = greedy.
    pub temperature: f32,
    /// Nucleus mass in (0, 1]; 1 disables.
    pub top_p: f32,
    /// Keep only the k most likely; 0 disables.
    pub top_k: usize,
    /// RNG seed.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            seed: 0,
        }
    }
}

/// RoPE table inputs: per-pair inverse frequencies and the YaRN concentration (spec §1.3).
#[derive(Clone, Debug)]
pub struct Rope {
    /// `[head_dim / 2]`.
    pub inv_freq: Vec<f32>,
    /// Multiplies cos and sin.
    pub concentration: f32,
}

/// Attention shape parameters of one layer.
#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    /// Layer index (selects the pool and the layer within it).
    pub layer: usize,
    /// Query heads.
    pub n_q_heads: usize,
    /// Key/value heads.
    pub n_kv_heads: usize,
    /// Head width.
    pub head_dim: usize,
    /// Which keys are visible.
    pub window: Window,
}

/// MoE shape parameters.
#[derive(Clone, Copy, Debug)]
pub struct MoeShape {
    /// Experts per token.
    pub top_k: usize,
    /// SwiGLU sigmoid gain.
    pub swiglu_alpha: f32,
    /// SwiGLU clamp.
    pub swiglu_limit: f32,
}

/// The ops of one forward pass. Every op works on the first `rows` rows of its buffers; buffers are
/// allocated once at the step capacity and reused.
pub trait Backend {
    /// An activation buffer `[rows, cols]` (f32 semantics).
    type Buf;
    /// An uploaded linear layer (weight in its packed form + f32 bias).
    type Linear;
    /// An uploaded f32 vector (norm weights, sinks).
    type Vector;
    /// A layer's uploaded experts.
    type Experts;
    /// Per-token expert choices `[rows, top_k]`.
    type Routing;
    /// The paged KV cache: both pools of every layer.
    type Cache;
    /// The current step's batch, as the device sees it.
    type Step;

    /// Short name for logs and errors (`cpu`, `cuda`).
    fn name(&self) -> &'static str;

    /// Uploads a linear layer.
    fn upload_linear(&self, linear: &Linear) -> Result<Self::Linear>;
    /// Uploads an embedding table `[V, H]` (read by row, not multiplied).
    fn upload_embedding(&self, table: &QuantTensor) -> Result<Self::Linear>;
    /// Uploads an f32 vector.
    fn upload_vector(&self, values: &[f32]) -> Result<Self::Vector>;
    /// Uploads a layer's experts.
    fn upload_experts(&self, experts: &[Expert]) -> Result<Self::Experts>;
    /// Device storage for `slots` experts laid out like `like` (the hot-expert cache, `expert_cache.rs`):
    /// each slot is filled by [`Backend::upload_expert_slot`] before any pair is routed to it.
    fn alloc_expert_slots(&self, like: &Expert, slots: usize) -> Result<Self::Experts>;
    /// Copies `expert` (laid out like the experts of `experts`) into slot `slot`, replacing what was
    /// there; the host copy stays as it was (the CPU still runs it when it is evicted). Ops queued
    /// earlier that read the slot see its old contents.
    fn upload_expert_slot(
        &self,
        experts: &mut Self::Experts,
        slot: usize,
        expert: &Expert,
    ) -> Result<()>;
    /// Called once the model's last weight is uploaded: waits for the uploads and frees what was kept
    /// only for them (the CUDA backend's pinned staging buffers). Uploads after it still work.
    fn finish_upload(&self) -> Result<()> {
        Ok(())
    }

    /// Allocates a buffer of `rows × cols`.
    fn alloc(&self, rows: usize, cols: usize) -> Result<Self::Buf>;
    /// Allocates routing storage for `rows` tokens.
    fn alloc_routing(&self, rows: usize, top_k: usize) -> Result<Self::Routing>;
    /// Allocates the KV pools of `layout`.
    fn alloc_cache(&self, layout: &KvLayout) -> Result<Self::Cache>;
    /// Allocates step metadata for up to `capacity` tokens and block tables of `layout`'s widths.
    fn alloc_step(&self, capacity: &Capacity, layout: &KvLayout, rope: &Rope)
        -> Result<Self::Step>;
    /// Copies a batch (with its block tables) into the step metadata. The model has checked that
    /// every block a token writes or reads is in its table and inside the pools.
    fn begin_step(&self, step: &mut Self::Step, batch: &Batch) -> Result<()>;
    /// Whether the ops of the step just begun run from a recording of an earlier step of the same shape
    /// (a CUDA graph), get recorded while issued, or are simply issued. The default never records.
    fn recording(&self, _step: &Self::Step) -> Result<Recording> {
        Ok(Recording::Off)
    }
    /// Ends the recording [`Backend::recording`] began and runs it; `issued` says whether every op was
    /// issued without error. `false` means nothing ran and the ops must be issued again, unrecorded.
    fn finish_recording(&self, _step: &Self::Step, _issued: bool) -> Result<bool> {
        Ok(true)
    }

    /// `out[t] = table[token[t]]`.
    fn embed(&self, step: &Self::Step, table: &Self::Linear, out: &mut Self::Buf) -> Result<()>;
    /// `out = rms_norm(x) * weight` over the step's rows.
    fn rms_norm(
        &self,
        step: &Self::Step,
        x: &Self::Buf,
        weight: &Self::Vector,
        eps: f32,
        out: &mut Self::Buf,
    ) -> Result<()>;
    /// `x += y` over the step's rows.
    fn add(&self, step: &Self::Step, x: &mut Self::Buf, y: &Self::Buf) -> Result<()>;
    /// `x += y`, then `out = rms_norm(x) * weight`, over the step's rows (the residual add and the next
    /// norm; a backend may fuse them).
    fn add_rms_norm(
        &self,
        step: &Self::Step,
        x: &mut Self::Buf,
        y: &Self::Buf,
        weight: &Self::Vector,
        eps: f32,
        out: &mut Self::Buf,
    ) -> Result<()> {
        self.add(step, x, y)?;
        self.rms_norm(step, x, weight, eps, out)
    }
    /// `out = x Wᵀ + b` over the step's rows.
    fn linear(
        &self,
        step: &Self::Step,
        x: &Self::Buf,
        w: &Self::Linear,
        out: &mut Self::Buf,
    ) -> Result<()>;
    /// `out[i] = x w[i]ᵀ + b[i]` over the step's rows for three linears of one input (q, k, v); a backend
    /// may run them as one launch.
    fn linear3(
        &self,
        step: &Self::Step,
        x: &Self::Buf,
        w: [&Self::Linear; 3],
        out: [&mut Self::Buf; 3],
    ) -> Result<()> {
        for (w, out) in w.into_iter().zip(out) {
            self.linear(step, x, w, out)?;
        }
        Ok(())
    }
    /// Applies RoPE to `q` and `k` in place and stores `k`, `v` in the block of each token's position.
    fn rope_store_kv(
        &self,
        step: &Self::Step,
        shape: &AttnShape,
        qkv: QkvBufs<'_, Self>,
        cache: &mut Self::Cache,
    ) -> Result<()>;
    /// Attention with sinks over the cached keys of each token's window, read through its block table:
    /// `out` `[rows, n_q_heads * head_dim]`.
    fn attention(
        &self,
        step: &Self::Step,
        shape: &AttnShape,
        q: &Self::Buf,
        sinks: &Self::Vector,
        cache: &Self::Cache,
        out: &mut Self::Buf,
    ) -> Result<()>;
    /// [`Backend::rope_store_kv`], then [`Backend::attention`] of the rotated `q` (a backend may do both in
    /// one pass, leaving `q` and `k` unrotated: callers read only `out` afterwards).
    fn rope_attention(
        &self,
        step: &Self::Step,
        shape: &AttnShape,
        qkv: QkvBufs<'_, Self>,
        (sinks, cache): (&Self::Vector, &mut Self::Cache),
        out: &mut Self::Buf,
    ) -> Result<()> {
        let QkvBufs { q, k, v } = qkv;
        self.rope_store_kv(step, shape, QkvBufs { q: &mut *q, k, v }, cache)?;
        self.attention(step, shape, q, sinks, cache, out)
    }
    /// The norm before attention, then q, k and v of it: [`NormInput::run`], then [`Backend::linear3`] of its
    /// `h` (a backend may compute the norm inside the projections).
    fn norm_linear3(
        &self,
        step: &Self::Step,
        mut norm: NormInput<'_, Self>,
        w: [&Self::Linear; 3],
        out: [&mut Self::Buf; 3],
    ) -> Result<()> {
        norm.run(self, step)?;
        self.linear3(step, norm.h, w, out)
    }
    /// The norm before the MoE, then the routing of its `h`: [`NormInput::run`], then [`Backend::route`] (a
    /// backend may compute the norm inside the router). `moe_follows`: the next reader of `out` is
    /// [`Backend::moe`] of this step on device experts, which a backend may let finish the routing (the CUDA
    /// one selects a one-token step's top-k inside its first expert kernel); false when anything else reads
    /// `out` first.
    fn norm_route(
        &self,
        step: &Self::Step,
        mut norm: NormInput<'_, Self>,
        router: &Self::Linear,
        (top_k, _moe_follows): (usize, bool),
        out: &mut Self::Routing,
    ) -> Result<()> {
        norm.run(self, step)?;
        self.route(step, norm.h, router, top_k, out)
    }
    /// Router logits → top-k → softmax over the selected.
    fn route(
        &self,
        step: &Self::Step,
        h: &Self::Buf,
        router: &Self::Linear,
        top_k: usize,
        out: &mut Self::Routing,
    ) -> Result<()>;
    /// `out = Σ_e g_e · down_e(swiglu(gate_up_e(h)))` over the step's rows, the pairs of each token
    /// added in ascending expert order; pairs of [`NO_EXPERT`] are skipped (a token with none left gets 0).
    fn moe(&self, step: &Self::Step, moe: MoeArgs<'_, Self>, out: &mut Self::Buf) -> Result<()>;
    /// `out[i] = x[logit_rows[i]] Wᵀ` for the step's logit rows (no bias).
    fn logits(
        &self,
        step: &Self::Step,
        x: &Self::Buf,
        lm_head: &Self::Linear,
        out: &mut Self::Buf,
    ) -> Result<()>;
    /// Copies whole KV blocks within the pool of `kind`, in every layer of that kind: each `(src,
    /// dst)` pair copies block `src`'s keys and values over block `dst` (prefix caching saves and
    /// restores a sliding-window ring at a block boundary this way). Pairs are applied in order.
    fn copy_blocks(
        &self,
        cache: &mut Self::Cache,
        kind: PoolKind,
        pairs: &[(u32, u32)],
    ) -> Result<()>;
    /// Reads the first `rows` rows of a buffer back to the host.
    fn read(&self, buf: &Self::Buf, rows: usize) -> Result<Vec<f32>>;
    /// [`Backend::read`] into `out` (resized to the rows read), so a caller reading every step reuses
    /// one allocation: a fresh vector of 64 vocabulary rows is 51 MB of new pages each step.
    fn read_into(&self, buf: &Self::Buf, rows: usize, out: &mut Vec<f32>) -> Result<()> {
        *out = self.read(buf, rows)?;
        Ok(())
    }
    /// Writes `values` (`rows` rows) into the first rows of a buffer (results computed elsewhere, such as
    /// experts run on the host).
    fn write(&self, buf: &mut Self::Buf, rows: usize, values: &[f32]) -> Result<()>;
    /// Reads the `(expert, weight)` choices of the first `rows` tokens back to the host, `top_k` per
    /// token in the order the route op chose them (for traces and tests).
    fn read_routing(
        &self,
        routing: &Self::Routing,
        rows: usize,
        top_k: usize,
    ) -> Result<Vec<(u32, f32)>>;
    /// Writes `(expert, weight)` choices for the first `rows` tokens, `top_k` per token (choices computed
    /// on the host, such as the hot-expert cache's remapping to slots). A pair whose expert is
    /// [`NO_EXPERT`] adds nothing in [`Backend::moe`]; every other expert must be one of those the MoE
    /// is given.
    fn write_routing(
        &self,
        routing: &mut Self::Routing,
        rows: usize,
        top_k: usize,
        choices: &[(u32, f32)],
    ) -> Result<()>;
    /// Samples one token per logit row with that row's parameters; `counters` advances each row's RNG.
    fn sample(
        &self,
        logits: &Self::Buf,
        params: &[SamplingParams],
        counters: &[u64],
    ) -> Result<Vec<u32>>;
    /// [`Backend::sample`] with some rows limited to the tokens of their mask (structured outputs): a
    /// row whose `masks` entry is `Some` is sampled as if every token outside the bitset (bit `t % 32`
    /// of word `t / 32`; words past the slice allow nothing) and every NaN logit were −∞, exactly as
    /// the host's constraint path masks a row before the same sampler ([`crate::logits::apply_mask`]).
    /// Such a row with no allowed finite logit gives `None`; unmasked rows always give a token. `masks`
    /// has one entry per row. The logits are left as they are.
    fn sample_masked(
        &self,
        logits: &Self::Buf,
        params: &[SamplingParams],
        counters: &[u64],
        masks: &[Option<&[u32]>],
    ) -> Result<Vec<Option<u32>>>;
    /// For each listed row, the log-probabilities of its sampled token and of its most likely tokens,
    /// from the raw logits (what [`crate::logits::token_logprobs`] gives for the row), in `rows`' order.
    fn logprobs(
        &self,
        logits: &Self::Buf,
        rows: &[LogprobRow],
    ) -> Result<Vec<crate::logits::TokenLogprobs>>;
}

/// A logit row whose log-probabilities [`Backend::logprobs`] computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogprobRow {
    /// The row of the step's logits.
    pub row: usize,
    /// The token sampled from it.
    pub token: u32,
    /// How many of the most likely tokens (at most [`crate::logits::MAX_TOP_LOGPROBS`]).
    pub top: usize,
}

/// The expert of a routed pair that [`Backend::moe`] skips (written by [`Backend::write_routing`]).
pub const NO_EXPERT: u32 = u32::MAX;

/// What [`Backend::recording`] decided for a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recording {
    /// Issue the ops as usual.
    Off,
    /// A recording of this step's shape already ran: issue nothing.
    Replayed,
    /// Issue the ops; they are recorded (not run) until [`Backend::finish_recording`].
    Recording,
}

/// The norm before a block, handed to [`Backend::norm_linear3`] and [`Backend::norm_route`]: `x += y` when `y`
/// is given (the previous block's output), then `h = rms_norm(x) · weight`.
pub struct NormInput<'a, B: Backend + ?Sized> {
    /// The residual stream `[rows, H]`.
    pub x: &'a mut B::Buf,
    /// The output to add into it first, if any.
    pub y: Option<&'a B::Buf>,
    /// The norm's weight.
    pub weight: &'a B::Vector,
    /// The norm's epsilon.
    pub eps: f32,
    /// The normed rows `[rows, H]` (what the block reads).
    pub h: &'a mut B::Buf,
}

impl<B: Backend + ?Sized> NormInput<'_, B> {
    /// The norm on its own: [`Backend::add_rms_norm`], or [`Backend::rms_norm`] without `y`.
    pub fn run(&mut self, b: &B, step: &B::Step) -> Result<()> {
        match self.y {
            Some(y) => b.add_rms_norm(step, self.x, y, self.weight, self.eps, self.h),
            None => b.rms_norm(step, self.x, self.weight, self.eps, self.h),
        }
    }
}

/// The three projections handed to [`Backend::rope_store_kv`].
pub struct QkvBufs<'a, B: Backend + ?Sized> {
    /// `[rows, q_width]`, rotated in place.
    pub q: &'a mut B::Buf,
    /// `[rows, kv_width]`, rotated in place.
    pub k: &'a mut B::Buf,
    /// `[rows, kv_width]`.
    pub v: &'a B::Buf,
}

/// The inputs of [`Backend::moe`].
pub struct MoeArgs<'a, B: Backend + ?Sized> {
    /// Normed hidden states `[rows, H]`.
    pub h: &'a B::Buf,
    /// The layer's experts.
    pub experts: &'a B::Experts,
    /// The choices made by [`Backend::route`].
    pub routing: &'a B::Routing,
    /// Shape and activation constants.
    pub shape: MoeShape,
}
