//! The KV block allocator, the single source of truth of which physical blocks each sequence holds: a
//! free list per pool (`crate::kv`) and a block table per sequence. Full blocks are the shared resource
//! admission and preemption are decided on; a sequence's sliding blocks form a ring of at most
//! `ring_blocks` (blocks that left the window are reused in place). Answers "fits or not"; only the
//! scheduler admits or preempts.

use std::collections::HashMap;

use crate::kv::{BlockTable, KvLayout};

use super::sequence::RequestId;

/// Free blocks of one pool (a stack: the most recently freed block is handed out first).
#[derive(Debug)]
struct FreeList {
    free: Vec<u32>,
    total: usize,
}

impl FreeList {
    fn new(total: usize) -> Self {
        FreeList {
            free: (0..total as u32).rev().collect(),
            total,
        }
    }

    fn used(&self) -> usize {
        self.total - self.free.len()
    }
}

/// Both pools' free lists and every sequence's block table.
#[derive(Debug)]
pub struct KvBlocks {
    layout: KvLayout,
    full: FreeList,
    sliding: FreeList,
    tables: HashMap<RequestId, BlockTable>,
}

impl KvBlocks {
    /// Every block of `layout`'s pools free.
    pub fn new(layout: KvLayout) -> Self {
        KvBlocks {
            full: FreeList::new(layout.full_blocks),
            sliding: FreeList::new(layout.sliding_blocks),
            layout,
            tables: HashMap::new(),
        }
    }

    /// The pools and table widths.
    pub fn layout(&self) -> &KvLayout {
        &self.layout
    }

    /// Blocks in the full pool (the budget admission is decided on).
    pub fn total_blocks(&self) -> usize {
        self.full.total
    }

    /// Full blocks held by sequences.
    pub fn used_blocks(&self) -> usize {
        self.full.used()
    }

    /// Sliding blocks held by sequences.
    pub fn sliding_used_blocks(&self) -> usize {
        self.sliding.used()
    }

    /// Full blocks a sequence of `len_tokens` positions needs.
    pub fn full_blocks_for(&self, len_tokens: usize) -> usize {
        self.layout.blocks_for(len_tokens).0
    }

    /// The blocks `id` holds.
    pub fn table(&self, id: RequestId) -> Option<&BlockTable> {
        self.tables.get(&id)
    }

    /// Extra (full, sliding) blocks `id` needs to cover `len_tokens` positions.
    fn extra_for(&self, id: RequestId, len_tokens: usize) -> (usize, usize) {
        let (full, sliding) = self.layout.blocks_for(len_tokens);
        let held = self.tables.get(&id);
        let have = |f: fn(&BlockTable) -> usize| held.map_or(0, f);
        (
            full.saturating_sub(have(|t| t.full.len())),
            sliding.saturating_sub(have(|t| t.sliding.len())),
        )
    }

    /// Whether `id` can grow to `len_tokens` positions with the blocks now free.
    pub fn fits(&self, id: RequestId, len_tokens: usize) -> bool {
        let (full, sliding) = self.extra_for(id, len_tokens);
        full <= self.full.free.len() && sliding <= self.sliding.free.len()
    }

    /// Grows `id` to `len_tokens` positions; returns false (and changes nothing) when it does not fit.
    pub fn grow(&mut self, id: RequestId, len_tokens: usize) -> bool {
        if !self.fits(id, len_tokens) {
            return false;
        }
        let (full, sliding) = self.extra_for(id, len_tokens);
        let table = self.tables.entry(id).or_default();
        let cut_full = self.full.free.len() - full;
        table.full.extend(self.full.free.drain(cut_full..).rev());
        let cut_sliding = self.sliding.free.len() - sliding;
        table
            .sliding
            .extend(self.sliding.free.drain(cut_sliding..).rev());
        true
    }

    /// Returns every block `id` holds.
    pub fn free(&mut self, id: RequestId) {
        if let Some(t) = self.tables.remove(&id) {
            self.full.free.extend(t.full.iter().rev());
            self.sliding.free.extend(t.sliding.iter().rev());
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::backend::Capacity;
    use gptoss_formats::ModelConfig;

    /// gpt-oss-20b's layer kinds with a window of 16 and one-token steps: rings of 2 blocks.
    fn layout(full_blocks: usize, slots: usize) -> KvLayout {
        let mut c = ModelConfig::gpt_oss_20b();
        c.sliding_window = 16;
        let cap = Capacity {
            max_batch_tokens: 1,
            max_logit_rows: 1,
            slots,
            context_tokens: 256,
            kv_blocks: Some(full_blocks),
        };
        KvLayout::new(&c, &cap).unwrap()
    }

    #[test]
    fn grow_and_free_keep_the_count() {
        let mut kv = KvBlocks::new(layout(6, 2));
        assert_eq!(kv.layout().ring_blocks, 2);
        let (a, b) = (RequestId(1), RequestId(2));
        assert!(kv.grow(a, 16)); // 1 full, 1 sliding
        assert!(kv.grow(a, 40)); // 3 full, 2 sliding (the ring)
        assert_eq!((kv.used_blocks(), kv.sliding_used_blocks()), (3, 2));
        assert!(kv.grow(a, 80)); // 5 full, still 2 sliding: the ring is reused
        assert_eq!((kv.used_blocks(), kv.sliding_used_blocks()), (5, 2));
        assert!(!kv.fits(b, 17)); // needs 2 full, 1 free
        assert!(!kv.grow(b, 17));
        assert_eq!(kv.used_blocks(), 5);
        assert!(kv.grow(a, 80)); // no change
        assert!(kv.fits(a, 96)); // 6 full
        let t = kv.table(a).unwrap().clone();
        assert_eq!(t.full, [0, 1, 2, 3, 4]);
        assert_eq!(t.sliding, [0, 1]);
        kv.free(a);
        assert_eq!((kv.used_blocks(), kv.sliding_used_blocks()), (0, 0));
        assert!(kv.table(a).is_none());
        assert!(kv.grow(b, 1));
        assert_eq!((kv.used_blocks(), kv.sliding_used_blocks()), (1, 1));
    }

    #[test]
    fn interleaved_sequences_get_scattered_blocks_that_are_reused() {
        let mut kv = KvBlocks::new(layout(8, 3));
        let (a, b, c) = (RequestId(1), RequestId(2), RequestId(3));
        for len in [16, 32, 48] {
            assert!(kv.grow(a, len));
            assert!(kv.grow(b, len));
        }
        assert_eq!(kv.table(a).unwrap().full, [0, 2, 4]);
        assert_eq!(kv.table(b).unwrap().full, [1, 3, 5]);
        kv.free(a);
        // c takes a's blocks back (most recently freed first), then the never-used ones.
        assert!(kv.grow(c, 80));
        assert_eq!(kv.table(c).unwrap().full, [0, 2, 4, 6, 7]);
        assert_eq!(kv.table(c).unwrap().sliding, [0, 2]);
        assert!(!kv.fits(a, 1));
        kv.free(b);
        kv.free(c);
        assert_eq!((kv.used_blocks(), kv.sliding_used_blocks()), (0, 0));
    }
}
