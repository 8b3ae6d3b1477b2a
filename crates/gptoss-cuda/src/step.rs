//! The step's batch on the device: `[tokens | positions | seqs]` of `max_rows` each, the logit rows, then the
//! block tables (`[max_seqs, table_blocks]` full, `[max_seqs, ring_blocks]` sliding), all copied in one
//! transfer from a pinned staging buffer (so the copy is truly asynchronous); the RoPE table; the attention
//! split scratch.

use cudarc::driver::PinnedHostSlice;
use gptoss_engine::backend::{Batch, Capacity, Rope};
use gptoss_engine::memory::{
    linear_split_floats, linear_xparts_halves, ATTN_MAX_SPLITS, ATTN_SPLIT_ROWS,
};
use gptoss_engine::KvLayout;

use crate::device::Device;
use crate::error::{CudaError, Result};
use crate::vram::DevBuf;

/// A step's batch, block tables and RoPE table on the device.
pub struct CudaStep {
    meta: DevBuf<i32>,
    staging: PinnedHostSlice<i32>,
    max_rows: usize,
    max_logit_rows: usize,
    max_seqs: usize,
    pub(crate) table_blocks: usize,
    pub(crate) ring_blocks: usize,
    pub(crate) rows: usize,
    pub(crate) logit_rows: usize,
    /// Sequences (block tables) in the step.
    pub(crate) seqs: usize,
    /// Keys the longest-reaching token of the step attends to in a full layer (its position + 1).
    pub(crate) max_keys: usize,
    pub(crate) inv_freq: DevBuf<f32>,
    pub(crate) rope_len: usize,
    pub(crate) concentration: f32,
    /// `(max, sum, acc[d])` per key split of each (token, q head), for up to `ATTN_SPLIT_ROWS` tokens.
    pub(crate) split_part: DevBuf<f32>,
    pub(crate) split_rows: usize,
    /// Partial sums of the tensor-core linears' K splits (see `ops/linear.rs`).
    pub(crate) linear_part: DevBuf<f32>,
    /// x as three bf16 planes for the pipelined tensor-core linears (see `ops/linear.rs`).
    pub(crate) linear_xparts: DevBuf<u16>,
    /// The blocks of a GEMV with a fused norm that have read the residual (`NormIn::ticket` in common.cu);
    /// zero between launches.
    pub(crate) norm_ticket: DevBuf<i32>,
    /// Query and key/value heads and the sliding window of the model (what key splits depend on).
    pub(crate) n_q_heads: usize,
    pub(crate) n_kv_heads: usize,
    pub(crate) window_tokens: usize,
}

impl CudaStep {
    /// Allocates step metadata for `capacity` and `layout`'s tables and uploads the RoPE table.
    pub fn new(d: &Device, capacity: &Capacity, layout: &KvLayout, rope: &Rope) -> Result<Self> {
        let (rows, logit_rows) = (capacity.max_batch_tokens, capacity.max_logit_rows);
        let max_seqs = capacity.max_step_seqs();
        let len = 3 * rows + logit_rows + max_seqs * (layout.table_blocks + layout.ring_blocks);
        // SAFETY: the staging buffer is only written through `as_mut_slice`, which waits for the last copy
        // out of it, and is read only by copies on this backend's stream.
        let mut staging = unsafe { d.ctx.alloc_pinned::<i32>(len.max(1)) }
            .map_err(|e| CudaError::driver("allocating pinned step staging", e))?;
        staging
            .as_mut_slice()
            .map_err(|e| CudaError::driver("clearing pinned step staging", e))?
            .fill(0);
        let split_rows = rows.min(ATTN_SPLIT_ROWS);
        let split_len = split_rows * layout.n_q_heads * ATTN_MAX_SPLITS * (layout.head_dim + 2);
        Ok(CudaStep {
            meta: DevBuf::zeros(&d.stream, &d.meter, len, "step metadata")?,
            staging,
            max_rows: rows,
            max_logit_rows: logit_rows,
            max_seqs,
            table_blocks: layout.table_blocks,
            ring_blocks: layout.ring_blocks,
            rows: 0,
            logit_rows: 0,
            seqs: 0,
            max_keys: 0,
            inv_freq: DevBuf::from_host(&d.stream, &d.meter, &rope.inv_freq, "the RoPE table")?,
            rope_len: rope.inv_freq.len(),
            concentration: rope.concentration,
            split_part: DevBuf::zeros(&d.stream, &d.meter, split_len, "attention split scratch")?,
            split_rows,
            linear_part: DevBuf::zeros(
                &d.stream,
                &d.meter,
                linear_split_floats(capacity).max(1),
                "linear K-split scratch",
            )?,
            linear_xparts: DevBuf::zeros(
                &d.stream,
                &d.meter,
                linear_xparts_halves(capacity).max(1),
                "linear x planes",
            )?,
            norm_ticket: DevBuf::zeros(&d.stream, &d.meter, 1, "fused norm ticket")?,
            n_q_heads: layout.n_q_heads,
            n_kv_heads: layout.kv_width / layout.head_dim.max(1),
            window_tokens: layout.window_tokens,
        })
    }

    /// Copies `batch` into the step (queued on the stream; waits only for the previous copy's staging).
    pub fn load(&mut self, dev: &Device, batch: &Batch) -> Result<()> {
        let n = batch.tokens.len();
        let fits_tables = batch
            .tables
            .iter()
            .all(|t| t.full.len() <= self.table_blocks && t.sliding.len() <= self.ring_blocks);
        if n > self.max_rows
            || batch.logit_rows.len() > self.max_logit_rows
            || batch.tables.len() > self.max_seqs
            || !fits_tables
        {
            return Err(CudaError::Unsupported(format!(
                "a step of {n} tokens, {} logit rows and {} block tables exceeds the capacity of {}, {} and {} \
                 (tables of at most {} full / {} sliding blocks)",
                batch.logit_rows.len(),
                batch.tables.len(),
                self.max_rows,
                self.max_logit_rows,
                self.max_seqs,
                self.table_blocks,
                self.ring_blocks
            )));
        }
        let (max_rows, max_logit_rows) = (self.max_rows, self.max_logit_rows);
        let (full_at, ring_at) = (self.full_tables_at(), self.sliding_tables_at());
        let (tw, rw) = (self.table_blocks, self.ring_blocks);
        let meta = self
            .staging
            .as_mut_slice()
            .map_err(|e| CudaError::driver("waiting for the previous step's batch copy", e))?;
        let as_i32 = |v: &u32| *v as i32;
        for (dst, src) in [
            (0, &batch.tokens),
            (max_rows, &batch.positions),
            (2 * max_rows, &batch.seqs),
        ] {
            for (m, v) in meta[dst..dst + n].iter_mut().zip(src.iter()) {
                *m = as_i32(v);
            }
        }
        let logit = &mut meta[3 * max_rows..3 * max_rows + max_logit_rows];
        for (m, v) in logit.iter_mut().zip(&batch.logit_rows) {
            *m = as_i32(v);
        }
        for (i, table) in batch.tables.iter().enumerate() {
            for (at, width, blocks) in [(full_at, tw, &table.full), (ring_at, rw, &table.sliding)] {
                let row = &mut meta[at + i * width..at + (i + 1) * width];
                row.fill(0);
                for (m, v) in row.iter_mut().zip(blocks) {
                    *m = as_i32(v);
                }
            }
        }
        let len = self.staging.len();
        let mut dst = self.meta.slice.slice_mut(0..len);
        dev.stream
            .memcpy_htod(&self.staging, &mut dst)
            .map_err(|e| CudaError::driver("copying the step's batch", e))?;
        self.rows = n;
        self.seqs = batch.tables.len();
        self.logit_rows = batch.logit_rows.len();
        self.max_keys = batch.positions.iter().max().map_or(0, |&p| p as usize + 1);
        Ok(())
    }

    fn full_tables_at(&self) -> usize {
        3 * self.max_rows + self.max_logit_rows
    }
    fn sliding_tables_at(&self) -> usize {
        self.full_tables_at() + self.max_seqs * self.table_blocks
    }

    pub(crate) fn tokens_ptr(&self) -> u64 {
        self.meta.ptr()
    }
    pub(crate) fn positions_ptr(&self) -> u64 {
        self.meta.ptr() + 4 * self.max_rows as u64
    }
    pub(crate) fn seqs_ptr(&self) -> u64 {
        self.meta.ptr() + 8 * self.max_rows as u64
    }
    pub(crate) fn logit_rows_ptr(&self) -> u64 {
        self.meta.ptr() + 12 * self.max_rows as u64
    }
    /// The full tables (`[max_seqs, table_blocks]`).
    pub(crate) fn full_tables_ptr(&self) -> u64 {
        self.meta.ptr() + 4 * self.full_tables_at() as u64
    }
    /// The sliding rings (`[max_seqs, ring_blocks]`).
    pub(crate) fn sliding_tables_ptr(&self) -> u64 {
        self.meta.ptr() + 4 * self.sliding_tables_at() as u64
    }
}
