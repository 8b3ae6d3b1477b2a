//! KV capacity accounting in blocks of [`BLOCK_POSITIONS`] positions of one layer. Full-attention
//! layers need a block for every 16 positions of a sequence; sliding-window layers never need more
//! than `ceil(window / 16) + 1` (the window can straddle one extra block). Answers "fits or not";
//! only the scheduler admits or preempts.

use std::collections::HashMap;

use gptoss_formats::{ModelConfig, Window};

use super::sequence::RequestId;

/// Positions per KV block.
pub const BLOCK_POSITIONS: usize = 16;

/// How many blocks a sequence of a given length holds, by layer kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockShape {
    /// Layers that attend to the whole history.
    pub full_layers: usize,
    /// Layers with a sliding window.
    pub sliding_layers: usize,
    /// The sliding window in positions (0 when there are no sliding layers).
    pub window_tokens: usize,
}

impl BlockShape {
    /// The layer kinds of `config` (spec §1.2).
    pub fn of(config: &ModelConfig) -> Self {
        let mut shape = BlockShape {
            full_layers: 0,
            sliding_layers: 0,
            window_tokens: 0,
        };
        for layer in 0..config.num_hidden_layers {
            match config.window(layer) {
                Window::Full => shape.full_layers += 1,
                Window::Sliding(w) => {
                    shape.sliding_layers += 1;
                    shape.window_tokens = shape.window_tokens.max(w);
                }
            }
        }
        shape
    }

    /// Layer-blocks a sequence of `len_tokens` positions needs.
    pub fn blocks_for(&self, len_tokens: usize) -> usize {
        let per_layer = len_tokens.div_ceil(BLOCK_POSITIONS);
        let window_cap = self.window_tokens.div_ceil(BLOCK_POSITIONS) + 1;
        self.full_layers * per_layer + self.sliding_layers * per_layer.min(window_cap)
    }
}

/// The block pool: a total, and what each sequence holds.
///
/// This is accounting only. Today's backends store each sequence's keys and values in one contiguous
/// region per cache slot (the CPU cache grows a slot to its longest position, every layer, and does not
/// return sliding-window positions that left the window), so the blocks counted here are a budget the
/// scheduler keeps, not pages in memory. A physical paged cache with per-sequence block tables is a
/// later step; it will take over these numbers unchanged.
#[derive(Debug)]
pub struct KvBlocks {
    shape: BlockShape,
    total_blocks: usize,
    used_blocks: usize,
    held: HashMap<RequestId, usize>,
}

impl KvBlocks {
    /// A pool of `total_blocks` layer-blocks for sequences of `shape`.
    pub fn new(shape: BlockShape, total_blocks: usize) -> Self {
        KvBlocks {
            shape,
            total_blocks,
            used_blocks: 0,
            held: HashMap::new(),
        }
    }

    /// The layer kinds blocks are counted for.
    pub fn shape(&self) -> BlockShape {
        self.shape
    }

    /// Blocks in the pool.
    pub fn total_blocks(&self) -> usize {
        self.total_blocks
    }

    /// Blocks held by sequences.
    pub fn used_blocks(&self) -> usize {
        self.used_blocks
    }

    /// Extra blocks `id` needs to cover `len_tokens` positions.
    fn extra_for(&self, id: RequestId, len_tokens: usize) -> usize {
        let held = self.held.get(&id).copied().unwrap_or(0);
        self.shape.blocks_for(len_tokens).saturating_sub(held)
    }

    /// Whether `id` can grow to `len_tokens` positions with the blocks now free.
    pub fn fits(&self, id: RequestId, len_tokens: usize) -> bool {
        self.used_blocks + self.extra_for(id, len_tokens) <= self.total_blocks
    }

    /// Grows `id` to `len_tokens` positions; returns false (and changes nothing) when it does not fit.
    pub fn grow(&mut self, id: RequestId, len_tokens: usize) -> bool {
        if !self.fits(id, len_tokens) {
            return false;
        }
        let extra = self.extra_for(id, len_tokens);
        self.used_blocks += extra;
        *self.held.entry(id).or_insert(0) += extra;
        true
    }

    /// Returns every block `id` holds.
    pub fn free(&mut self, id: RequestId) {
        if let Some(n) = self.held.remove(&id) {
            self.used_blocks -= n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> BlockShape {
        // gpt-oss-20b: 12 full + 12 sliding layers, window 128.
        BlockShape {
            full_layers: 12,
            sliding_layers: 12,
            window_tokens: 128,
        }
    }

    #[test]
    fn sliding_layers_cap_at_window_blocks() {
        let s = shape();
        assert_eq!(s.blocks_for(0), 0);
        assert_eq!(s.blocks_for(1), 24);
        assert_eq!(s.blocks_for(16), 24);
        assert_eq!(s.blocks_for(17), 48);
        // 128 / 16 + 1 = 9 sliding blocks at most.
        assert_eq!(s.blocks_for(160), 12 * 10 + 12 * 9);
        assert_eq!(s.blocks_for(4096), 12 * 256 + 12 * 9);
    }

    #[test]
    fn of_config_counts_layer_kinds() {
        let s = BlockShape::of(&ModelConfig::gpt_oss_20b());
        assert_eq!(
            (s.full_layers, s.sliding_layers, s.window_tokens),
            (12, 12, 128)
        );
    }

    #[test]
    fn grow_and_free_keep_the_count() {
        let s = BlockShape {
            full_layers: 1,
            sliding_layers: 1,
            window_tokens: 16,
        };
        let mut kv = KvBlocks::new(s, 6);
        let (a, b) = (RequestId(1), RequestId(2));
        assert!(kv.grow(a, 16)); // 1 + 1
        assert!(kv.grow(a, 40)); // 3 + 2
        assert_eq!(kv.used_blocks(), 5);
        assert!(!kv.fits(b, 1)); // needs 2, 1 free
        assert!(!kv.grow(b, 1));
        assert_eq!(kv.used_blocks(), 5);
        assert!(kv.grow(a, 48)); // 3 + 2: no change
        assert!(kv.fits(a, 49)); // 4 + 2 = 6
        kv.free(a);
        assert_eq!(kv.used_blocks(), 0);
        assert!(kv.grow(b, 1));
        assert_eq!(kv.used_blocks(), 2);
    }
}
