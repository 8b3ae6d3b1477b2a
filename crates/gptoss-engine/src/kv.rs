//! The paged KV cache's geometry (DESIGN.md "KV cache and scheduler"): blocks of [`BLOCK_POSITIONS`]
//! positions in two pools by layer kind, so one block-table entry covers every layer of its kind. The full
//! pool is the shared, budget-limited resource; the sliding pool gives each sequence a ring of
//! [`KvLayout::ring_blocks`] blocks, reused as positions leave the window.

use gptoss_formats::{ModelConfig, Window};

use crate::backend::Capacity;
use crate::error::{Error, Result};

/// Positions per KV block.
pub const BLOCK_POSITIONS: usize = 16;

/// Ring copies (one window each) the sliding pool holds beyond the rings, for the prefix cache
/// (idle rings of unused slots hold more).
pub const PREFIX_SNAPSHOTS: usize = 4;

/// Which pool a layer's keys and values live in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolKind {
    /// Full-attention layers: a block per 16 positions of the whole history.
    Full,
    /// Sliding-window layers: a ring of blocks per sequence.
    Sliding,
}

impl PoolKind {
    /// The pool of a layer with `window`.
    pub fn of(window: Window) -> Self {
        match window {
            Window::Full => PoolKind::Full,
            Window::Sliding(_) => PoolKind::Sliding,
        }
    }
}

/// Sizes of the two pools and of the per-sequence tables, from the model config and the capacity.
///
/// Pool memory per kind is `[layers of the kind, blocks, BLOCK_POSITIONS, kv_width]` for keys and the same
/// for values (layer-major: one layer's blocks are one region, indexed by the shared block table).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvLayout {
    /// Pool and index within the pool of every layer.
    pub layers: Vec<(PoolKind, usize)>,
    /// Layers that attend to the whole history.
    pub full_layers: usize,
    /// Layers with a sliding window.
    pub sliding_layers: usize,
    /// The sliding window in positions (0 when there are no sliding layers).
    pub window_tokens: usize,
    /// Key (and value) width of one position of one layer.
    pub kv_width: usize,
    /// Query heads the pools serve (attention scratch is sized by them).
    pub n_q_heads: usize,
    /// Head width.
    pub head_dim: usize,
    /// Full-table entries a sequence can hold: `ceil(context / BLOCK_POSITIONS)`.
    pub table_blocks: usize,
    /// Sliding-ring entries per sequence (see [`ring_blocks`]).
    pub ring_blocks: usize,
    /// Blocks in the full pool.
    pub full_blocks: usize,
    /// Blocks in the sliding pool: one ring per cache slot, plus room for [`PREFIX_SNAPSHOTS`] copies of
    /// a window (the prefix cache's ring copies).
    pub sliding_blocks: usize,
}

/// Ring length of a sliding layer: a step writes the keys of all its tokens before any of them attends,
/// so the ring holds the window of the step's first token plus every position the step writes:
/// `floor((max_step_tokens + window - 2) / 16) + 2` blocks (9 for a window of 128 and one token), at most
/// `table_blocks` (a ring that long is never reused).
pub fn ring_blocks(window_tokens: usize, max_step_tokens: usize, table_blocks: usize) -> usize {
    if window_tokens == 0 {
        return 0;
    }
    let span = (max_step_tokens.max(1) + window_tokens).saturating_sub(2);
    (span / BLOCK_POSITIONS + 2).min(table_blocks)
}

impl KvLayout {
    /// The layout of `config` at `capacity`; fails when the pools cannot hold one sequence.
    pub fn new(config: &ModelConfig, capacity: &Capacity) -> Result<Self> {
        capacity.check()?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        let (mut full_layers, mut sliding_layers, mut window_tokens) = (0, 0, 0);
        for layer in 0..config.num_hidden_layers {
            let kind = PoolKind::of(config.window(layer));
            let counter = match kind {
                PoolKind::Full => &mut full_layers,
                PoolKind::Sliding => &mut sliding_layers,
            };
            layers.push((kind, *counter));
            *counter += 1;
            if let Window::Sliding(w) = config.window(layer) {
                window_tokens = window_tokens.max(w);
            }
        }
        let table_blocks = capacity.context_tokens.div_ceil(BLOCK_POSITIONS);
        let ring = ring_blocks(window_tokens, capacity.max_batch_tokens, table_blocks);
        let full_blocks = capacity.kv_blocks.unwrap_or(capacity.slots * table_blocks);
        if full_blocks == 0 && full_layers > 0 {
            return Err(Error::invalid(
                "the KV pool has no blocks (kv_blocks must be at least 1)",
            ));
        }
        Ok(KvLayout {
            layers,
            full_layers,
            sliding_layers,
            window_tokens,
            kv_width: config.kv_width(),
            n_q_heads: config.num_attention_heads,
            head_dim: config.head_dim,
            table_blocks,
            ring_blocks: ring,
            full_blocks,
            sliding_blocks: capacity.slots * ring
                + PREFIX_SNAPSHOTS * window_tokens.div_ceil(BLOCK_POSITIONS).min(ring),
        })
    }

    /// The layout a pipeline stage holding `layers` of the model uses (`pipeline.rs`): only those layers,
    /// renumbered from 0 within each pool, so the stage allocates their KV cache alone. Every block count
    /// and table width stays the model's, so one block table serves every stage.
    pub fn stage(&self, layers: std::ops::Range<usize>) -> Result<Self> {
        let picked = self.layers.get(layers.clone()).ok_or_else(|| {
            Error::invalid(format!(
                "stage layers {layers:?} outside the model's {} layers",
                self.layers.len()
            ))
        })?;
        let (mut full_layers, mut sliding_layers) = (0, 0);
        let mut renumbered = Vec::with_capacity(picked.len());
        for &(kind, _) in picked {
            let counter = match kind {
                PoolKind::Full => &mut full_layers,
                PoolKind::Sliding => &mut sliding_layers,
            };
            renumbered.push((kind, *counter));
            *counter += 1;
        }
        Ok(KvLayout {
            layers: renumbered,
            full_layers,
            sliding_layers,
            ..self.clone()
        })
    }

    /// Pool and index within the pool of `layer`.
    pub fn place(&self, layer: usize) -> Result<(PoolKind, usize)> {
        self.layers.get(layer).copied().ok_or_else(|| {
            Error::invalid(format!(
                "layer {layer} is outside the cache of {} layers",
                self.layers.len()
            ))
        })
    }

    /// Layers stored in the pool of `kind`.
    pub fn layers_of(&self, kind: PoolKind) -> usize {
        match kind {
            PoolKind::Full => self.full_layers,
            PoolKind::Sliding => self.sliding_layers,
        }
    }

    /// Blocks in the pool of `kind`.
    pub fn blocks_of(&self, kind: PoolKind) -> usize {
        match kind {
            PoolKind::Full => self.full_blocks,
            PoolKind::Sliding => self.sliding_blocks,
        }
    }

    /// Elements of keys (or of values) in one block of one layer.
    pub fn block_elems(&self) -> usize {
        BLOCK_POSITIONS * self.kv_width
    }

    /// Full and sliding blocks a sequence of `len_tokens` positions holds.
    pub fn blocks_for(&self, len_tokens: usize) -> (usize, usize) {
        let logical = len_tokens.div_ceil(BLOCK_POSITIONS);
        let full = if self.full_layers > 0 { logical } else { 0 };
        (full, logical.min(self.ring_blocks))
    }

    /// The table of a single sequence that owns the first blocks of both pools (`generate`, `logits`
    /// and tests): full blocks `0..table_blocks` (as many as the pool has), ring `0..ring_blocks`.
    pub fn solo_table(&self) -> BlockTable {
        let full = if self.full_layers > 0 {
            self.table_blocks.min(self.full_blocks)
        } else {
            0
        };
        BlockTable {
            full: (0..full as u32).collect(),
            sliding: (0..self.ring_blocks.min(self.sliding_blocks) as u32).collect(),
        }
    }

    /// Device/host bytes of both pools (keys and values) with `elem_bytes` per element.
    pub fn pool_bytes(&self, elem_bytes: u64) -> u64 {
        let per_block_layer = 2 * self.block_elems() as u64 * elem_bytes;
        per_block_layer
            * (self.full_layers as u64 * self.full_blocks as u64
                + self.sliding_layers as u64 * self.sliding_blocks as u64)
    }

    /// Bytes of one full block (keys and values of 16 positions of every full layer).
    pub fn full_block_bytes(&self, elem_bytes: u64) -> u64 {
        2 * self.block_elems() as u64 * elem_bytes * self.full_layers as u64
    }
}

/// One sequence's blocks: `full[i]` holds positions `16i..16i+16` of every full layer; `sliding[i % R]`
/// holds them for every sliding layer (R = [`KvLayout::ring_blocks`]). Tables list only allocated blocks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlockTable {
    /// Physical full-pool block of each logical block.
    pub full: Vec<u32>,
    /// Physical sliding-pool block of each ring entry.
    pub sliding: Vec<u32>,
}

impl BlockTable {
    /// The physical block holding `position` in the pool of `kind`, if the table has one.
    pub fn block_of(&self, kind: PoolKind, position: usize, ring_blocks: usize) -> Option<u32> {
        let logical = position / BLOCK_POSITIONS;
        match kind {
            PoolKind::Full => self.full.get(logical).copied(),
            PoolKind::Sliding if ring_blocks > 0 => {
                self.sliding.get(logical % ring_blocks).copied()
            }
            PoolKind::Sliding => None,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn cap(context_tokens: usize, max_batch_tokens: usize, slots: usize) -> Capacity {
        Capacity {
            max_batch_tokens,
            max_logit_rows: 1,
            slots,
            context_tokens,
            kv_blocks: None,
        }
    }

    #[test]
    fn a_stage_keeps_its_layers_and_the_model_s_pools() {
        let whole = KvLayout::new(&ModelConfig::gpt_oss_20b(), &cap(4096, 1, 2)).unwrap();
        // 20b alternates sliding (even) and full (odd) layers.
        let s = whole.stage(3..8).unwrap();
        assert_eq!(s.layers.len(), 5);
        assert_eq!((s.full_layers, s.sliding_layers), (3, 2));
        assert_eq!(s.place(0).unwrap(), (PoolKind::Full, 0));
        assert_eq!(s.place(1).unwrap(), (PoolKind::Sliding, 0));
        assert_eq!(s.place(4).unwrap(), (PoolKind::Full, 2));
        assert!(s.place(5).is_err());
        assert_eq!(
            (
                s.full_blocks,
                s.sliding_blocks,
                s.table_blocks,
                s.ring_blocks
            ),
            (
                whole.full_blocks,
                whole.sliding_blocks,
                whole.table_blocks,
                whole.ring_blocks
            )
        );
        // The stages' pools add up to the model's.
        let parts: u64 = [0..3, 3..8, 8..24]
            .into_iter()
            .map(|r| whole.stage(r).unwrap().pool_bytes(2))
            .sum();
        assert_eq!(parts, whole.pool_bytes(2));
        assert!(whole.stage(20..25).is_err());
    }

    #[test]
    fn gpt_oss_20b_layout() {
        let l = KvLayout::new(&ModelConfig::gpt_oss_20b(), &cap(4096, 1, 2)).unwrap();
        assert_eq!(
            (l.full_layers, l.sliding_layers, l.window_tokens),
            (12, 12, 128)
        );
        assert_eq!(l.layers[0], (PoolKind::Sliding, 0));
        assert_eq!(l.layers[1], (PoolKind::Full, 0));
        assert_eq!(l.layers[23], (PoolKind::Full, 11));
        // Decode: the window of 128 positions straddles at most 9 blocks.
        assert_eq!((l.table_blocks, l.ring_blocks), (256, 9));
        assert_eq!((l.full_blocks, l.sliding_blocks), (512, 18 + 4 * 8));
        assert_eq!(l.blocks_for(1), (1, 1));
        assert_eq!(l.blocks_for(160), (10, 9));
        assert_eq!(l.blocks_for(4096), (256, 9));
        // 512-token prefill chunks: the ring also holds every position the chunk writes.
        let l = KvLayout::new(&ModelConfig::gpt_oss_20b(), &cap(4096, 512, 1)).unwrap();
        assert_eq!(l.ring_blocks, (512 + 128 - 2) / 16 + 2);
        // Never longer than the table.
        let l = KvLayout::new(&ModelConfig::gpt_oss_20b(), &cap(64, 512, 1)).unwrap();
        assert_eq!(l.ring_blocks, 4);
    }

    #[test]
    fn ring_holds_every_key_a_step_reads() {
        // Brute force: for every step start and length up to `n`, the keys the step's tokens read
        // (their windows) and the positions it writes never share a ring entry with another block.
        for (w, n) in [(8, 1), (8, 5), (16, 16), (128, 1), (128, 7), (20, 33)] {
            let r = ring_blocks(w, n, usize::MAX);
            for p0 in 0..200usize {
                for len in 1..=n {
                    let p_last = p0 + len - 1;
                    let oldest = (p0 + 1).saturating_sub(w) / BLOCK_POSITIONS;
                    let newest = p_last / BLOCK_POSITIONS;
                    assert!(
                        newest - oldest < r,
                        "window {w}, step {p0}+{len}: {oldest}..={newest} in {r}"
                    );
                }
            }
        }
    }

    #[test]
    fn solo_table_and_lookup() {
        let mut c = cap(40, 4, 1);
        let mut cfg = ModelConfig::gpt_oss_20b();
        cfg.sliding_window = 8;
        c.kv_blocks = Some(2);
        let l = KvLayout::new(&cfg, &c).unwrap();
        assert_eq!((l.table_blocks, l.ring_blocks), (3, 2));
        let t = l.solo_table();
        assert_eq!(t.full, [0, 1]); // the pool has only two blocks
        assert_eq!(t.sliding, [0, 1]);
        assert_eq!(t.block_of(PoolKind::Full, 31, 2), Some(1));
        assert_eq!(t.block_of(PoolKind::Full, 32, 2), None);
        assert_eq!(t.block_of(PoolKind::Sliding, 32, 2), Some(0));
        c.kv_blocks = Some(0);
        assert!(KvLayout::new(&cfg, &c).is_err());
    }
}
