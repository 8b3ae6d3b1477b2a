//! The KV block allocator, the single source of truth of which physical blocks each sequence holds: a
//! free list per pool (`crate::kv`) and a block table per sequence. Full blocks are the shared resource
//! admission and preemption are decided on; a sequence's sliding blocks form a ring of at most
//! `ring_blocks` (blocks that left the window are reused in place). Answers "fits or not"; only the
//! scheduler admits or preempts.
//!
//! Prefix caching (`prefix.rs`): full blocks are reference counted; a prompt's whole blocks are
//! registered by content once computed, with a copy of the sequence's ring at its last usable block
//! boundary, and a new sequence whose prompt starts the same way shares those blocks and gets the ring
//! copied in ([`KvBlocks::adopt_prefix`]). Cached blocks nobody holds count as free: allocation takes
//! the free list first, then evicts the least recently used cached block or ring copy.

use std::collections::HashMap;

use crate::kv::{BlockTable, KvLayout, PoolKind, BLOCK_POSITIONS};

use super::prefix::PrefixIndex;
use super::sequence::RequestId;

/// Whether finished prompts' KV blocks are kept and shared by content.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PrefixCaching {
    /// Keep and share (sliding-window aware).
    #[default]
    On,
    /// Every prompt is computed from scratch.
    Off,
}

/// A block copy the backend must make before the next forward step: `(pool, src, dst)`.
pub type BlockCopy = (PoolKind, u32, u32);

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
}

/// Both pools' free lists, every sequence's block table, and the prefix cache.
#[derive(Debug)]
pub struct KvBlocks {
    layout: KvLayout,
    full: FreeList,
    sliding: FreeList,
    tables: HashMap<RequestId, BlockTable>,
    /// Sequences holding each full block.
    refs: Vec<u32>,
    prefix: PrefixIndex,
    caching: PrefixCaching,
}

impl KvBlocks {
    /// Every block of `layout`'s pools free, prefix caching on.
    pub fn new(layout: KvLayout) -> Self {
        Self::with_caching(layout, PrefixCaching::On)
    }

    /// Every block of `layout`'s pools free, prefix caching as `caching` says.
    pub fn with_caching(layout: KvLayout, caching: PrefixCaching) -> Self {
        KvBlocks {
            full: FreeList::new(layout.full_blocks),
            sliding: FreeList::new(layout.sliding_blocks),
            refs: vec![0; layout.full_blocks],
            layout,
            tables: HashMap::new(),
            prefix: PrefixIndex::default(),
            caching,
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

    /// Full blocks held by sequences (cached blocks nobody holds are not counted).
    pub fn used_blocks(&self) -> usize {
        self.full.total - self.full.free.len() - self.prefix.idle_blocks()
    }

    /// Full blocks kept by the prefix cache that no sequence holds.
    pub fn cached_idle_blocks(&self) -> usize {
        self.prefix.idle_blocks()
    }

    /// Sliding blocks held by sequences (ring copies kept by the prefix cache are not counted).
    pub fn sliding_used_blocks(&self) -> usize {
        self.sliding.total - self.sliding.free.len() - self.prefix.snapshot_blocks()
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

    /// Whether `id` can grow to `len_tokens` positions with the blocks now free (or cached and idle).
    pub fn fits(&self, id: RequestId, len_tokens: usize) -> bool {
        let (full, sliding) = self.extra_for(id, len_tokens);
        full <= self.full.free.len() + self.prefix.idle_blocks()
            && sliding <= self.sliding.free.len() + self.prefix.snapshot_blocks()
    }

    /// A full block: a free one, else the least recently used idle cached one.
    fn take_full(&mut self) -> Option<u32> {
        let b = self.full.free.pop().or_else(|| self.prefix.evict_idle())?;
        if let Some(r) = self.refs.get_mut(b as usize) {
            *r = 1;
        }
        Some(b)
    }

    /// A sliding block: a free one, else one of the least recently used ring copy's.
    fn take_sliding(&mut self) -> Option<u32> {
        while self.sliding.free.is_empty() {
            let blocks = self.prefix.evict_snapshot()?;
            self.sliding.free.extend(blocks.into_iter().rev());
        }
        self.sliding.free.pop()
    }

    /// Grows `id` to `len_tokens` positions; returns false (and changes nothing) when it does not fit.
    pub fn grow(&mut self, id: RequestId, len_tokens: usize) -> bool {
        if !self.fits(id, len_tokens) {
            return false;
        }
        let (full, sliding) = self.extra_for(id, len_tokens);
        let mut add_full = Vec::with_capacity(full);
        let mut add_sliding = Vec::with_capacity(sliding);
        for _ in 0..full {
            add_full.extend(self.take_full());
        }
        for _ in 0..sliding {
            add_sliding.extend(self.take_sliding());
        }
        let table = self.tables.entry(id).or_default();
        table.full.extend(add_full);
        table.sliding.extend(add_sliding);
        true
    }

    /// Returns every block `id` holds; full blocks still holding a cached prefix stay cached, idle.
    pub fn free(&mut self, id: RequestId) {
        let Some(t) = self.tables.remove(&id) else {
            return;
        };
        for &b in t.full.iter().rev() {
            let Some(r) = self.refs.get_mut(b as usize) else {
                continue;
            };
            *r = r.saturating_sub(1);
            if *r == 0 {
                if self.caching == PrefixCaching::On && self.prefix.is_cached(b) {
                    self.prefix.make_idle(b);
                } else {
                    self.full.free.push(b);
                }
            }
        }
        self.sliding.free.extend(t.sliding.iter().rev());
    }

    /// Blocks of the window before a boundary: the sliding layers read these positions.
    fn window_blocks(&self) -> usize {
        self.layout.window_tokens.div_ceil(BLOCK_POSITIONS)
    }

    /// Starts `id` (holding nothing) from the longest cached prefix of `tokens` that leaves at least
    /// one token to compute: its full blocks are shared and, when the model has sliding layers, the
    /// ring copy at that boundary is copied into a new ring. Returns the positions reused and the
    /// copies to make; none when nothing is cached or the blocks do not fit.
    pub fn adopt_prefix(
        &mut self,
        id: RequestId,
        tokens: &[u32],
    ) -> Option<(usize, Vec<BlockCopy>)> {
        if self.caching == PrefixCaching::Off || self.tables.contains_key(&id) {
            return None;
        }
        let usable = tokens.len().saturating_sub(1);
        let mut found = self.prefix.lookup(tokens.get(..usable)?);
        let sliding = self.layout.sliding_layers > 0 && self.layout.ring_blocks > 0;
        if sliding {
            while found
                .last()
                .is_some_and(|&(_, h)| !self.prefix.has_snapshot(h))
            {
                found.pop();
            }
        }
        let &(_, last_hash) = found.last()?;
        let hit = found.len() * BLOCK_POSITIONS;
        let (_, ring_len) = self.layout.blocks_for(hit);
        // The new ring comes from free blocks only: evicting copies could evict the one to restore.
        if ring_len > self.sliding.free.len() {
            return None;
        }
        let snapshot = if sliding {
            self.prefix.snapshot(last_hash)?
        } else {
            Vec::new()
        };
        let mut table = BlockTable::default();
        for &(b, _) in &found {
            self.prefix.reuse(b);
            if let Some(r) = self.refs.get_mut(b as usize) {
                *r += 1;
            }
            table.full.push(b);
        }
        for _ in 0..ring_len {
            match self.sliding.free.pop() {
                Some(b) => table.sliding.push(b),
                None => break,
            }
        }
        let mut copies = Vec::new();
        let (boundary, ring) = (found.len(), self.layout.ring_blocks);
        let first = boundary.saturating_sub(snapshot.len());
        for (j, &src) in snapshot.iter().enumerate() {
            if let Some(&dst) = table.sliding.get((first + j) % ring) {
                copies.push((PoolKind::Sliding, src, dst));
            }
        }
        let complete = table.sliding.len() == ring_len;
        self.tables.insert(id, table);
        if !complete {
            self.free(id);
            return None;
        }
        Some((hit, copies))
    }

    /// After `id` computed `tokens` (its prompt, all of it): registers its whole blocks by content and
    /// keeps a copy of its ring at the last boundary a later prompt with the same start can use.
    /// Returns the copies to make now, before the next step writes the ring.
    pub fn register_prefix(&mut self, id: RequestId, tokens: &[u32]) -> Vec<BlockCopy> {
        if self.caching == PrefixCaching::Off {
            return Vec::new();
        }
        let Some(table) = self.tables.get(&id) else {
            return Vec::new();
        };
        let (full_blocks, ring_blocks) = (table.full.clone(), table.sliding.clone());
        let hashes = self.prefix.register(tokens, &full_blocks);
        // The boundary an identical prompt can use leaves its last token to compute.
        let boundary = tokens.len().saturating_sub(1) / BLOCK_POSITIONS;
        let sliding = self.layout.sliding_layers > 0 && self.layout.ring_blocks > 0;
        let Some(&hash) = boundary.checked_sub(1).and_then(|i| hashes.get(i)) else {
            return Vec::new();
        };
        if !sliding || self.prefix.has_snapshot(hash) {
            return Vec::new();
        }
        let first = boundary.saturating_sub(self.window_blocks());
        let ring = self.layout.ring_blocks;
        // Only free blocks (or older copies) are taken: never a ring a sequence needs.
        if self.sliding.free.len() + self.prefix.snapshot_blocks() < boundary - first {
            return Vec::new();
        }
        let mut blocks = Vec::new();
        let mut copies = Vec::new();
        for logical in first..boundary {
            let (Some(&src), Some(dst)) = (ring_blocks.get(logical % ring), self.take_sliding())
            else {
                break;
            };
            blocks.push(dst);
            copies.push((PoolKind::Sliding, src, dst));
        }
        if blocks.len() != boundary - first {
            self.sliding.free.extend(blocks);
            return Vec::new();
        }
        self.prefix.add_snapshot(hash, blocks);
        copies
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
