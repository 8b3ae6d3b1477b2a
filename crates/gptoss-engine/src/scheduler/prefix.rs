//! The prefix cache's index (DESIGN.md "KV cache and scheduler"): full-attention blocks of computed
//! prompts kept by content (a chain hash of every token up to the block's end, the block's own tokens
//! kept to rule out collisions), and, for the sliding-window layers, copies of a sequence's ring at
//! a block boundary ("snapshots"), because a sliding layer's keys at a boundary cannot be rebuilt
//! from the full layers' blocks. A hit restores both: the full blocks are shared (reference counted
//! by `kv.rs`), the snapshot is copied into the new sequence's ring.
//!
//! Blocks no sequence holds stay cached until their memory is needed: the least recently used idle
//! full block and the least recently used snapshot are evicted first, so the cache never holds more
//! than the pools the model was sized with.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};

use crate::kv::BLOCK_POSITIONS;

/// The chain hash of a block: its parent's hash and its tokens.
pub(crate) fn chain_hash(parent: u64, tokens: &[u32]) -> u64 {
    let mut h = DefaultHasher::new();
    parent.hash(&mut h);
    tokens.hash(&mut h);
    h.finish()
}

/// A cached full block.
#[derive(Debug)]
struct Entry {
    block: u32,
    parent: u64,
    tokens: Vec<u32>,
}

/// The index: which full block holds which chain, which are idle (LRU), which snapshots exist.
#[derive(Debug, Default)]
pub(crate) struct PrefixIndex {
    by_hash: HashMap<u64, Entry>,
    hash_of: HashMap<u32, u64>,
    /// Idle cached full blocks by last use (oldest first).
    idle: BTreeMap<u64, u32>,
    idle_since: HashMap<u32, u64>,
    /// Ring copies at a boundary, by the chain hash of the block before it.
    snapshots: HashMap<u64, (Vec<u32>, u64)>,
    /// Snapshots by last use (oldest first).
    snapshot_lru: BTreeMap<u64, u64>,
    tick: u64,
}

impl PrefixIndex {
    fn next_tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }

    /// Idle cached full blocks (free for allocation, after the free list).
    pub fn idle_blocks(&self) -> usize {
        self.idle.len()
    }

    /// Sliding blocks held by snapshots (free for ring allocation, after the free list).
    pub fn snapshot_blocks(&self) -> usize {
        self.snapshots.values().map(|(b, _)| b.len()).sum()
    }

    /// Whether `block` holds a cached chain.
    pub fn is_cached(&self, block: u32) -> bool {
        self.hash_of.contains_key(&block)
    }

    /// Marks a cached block no sequence holds any more.
    pub fn make_idle(&mut self, block: u32) {
        let t = self.next_tick();
        self.idle.insert(t, block);
        self.idle_since.insert(block, t);
    }

    /// A cached block taken by a sequence again.
    pub fn reuse(&mut self, block: u32) {
        if let Some(t) = self.idle_since.remove(&block) {
            self.idle.remove(&t);
        }
    }

    /// Evicts the least recently used idle block (its chain is forgotten) and returns it.
    pub fn evict_idle(&mut self) -> Option<u32> {
        let (_, block) = self.idle.pop_first()?;
        self.idle_since.remove(&block);
        if let Some(h) = self.hash_of.remove(&block) {
            self.by_hash.remove(&h);
        }
        Some(block)
    }

    /// Evicts the least recently used snapshot and returns its sliding blocks.
    pub fn evict_snapshot(&mut self) -> Option<Vec<u32>> {
        let (_, hash) = self.snapshot_lru.pop_first()?;
        self.snapshots.remove(&hash).map(|(b, _)| b)
    }

    /// The full blocks caching the longest prefix of `tokens` made of whole blocks, and the chain
    /// hash after each.
    pub fn lookup(&self, tokens: &[u32]) -> Vec<(u32, u64)> {
        let mut out = Vec::new();
        let mut parent = 0;
        for chunk in tokens.chunks_exact(BLOCK_POSITIONS) {
            let h = chain_hash(parent, chunk);
            match self.by_hash.get(&h) {
                Some(e) if e.parent == parent && e.tokens == chunk => out.push((e.block, h)),
                _ => break,
            }
            parent = h;
        }
        out
    }

    /// The snapshot at the boundary after the block whose chain hash is `hash` (touched as used).
    pub fn snapshot(&mut self, hash: u64) -> Option<Vec<u32>> {
        let t = self.next_tick();
        let (blocks, used) = self.snapshots.get_mut(&hash)?;
        self.snapshot_lru.remove(used);
        *used = t;
        self.snapshot_lru.insert(t, hash);
        Some(blocks.clone())
    }

    /// Whether a snapshot exists at `hash`.
    pub fn has_snapshot(&self, hash: u64) -> bool {
        self.snapshots.contains_key(&hash)
    }

    /// Records `blocks` (a sequence's full blocks, in order) as caching the whole blocks of `tokens`;
    /// blocks already cached, and chains already held by another block, are left as they are.
    /// Returns the chain hash after each whole block.
    pub fn register(&mut self, tokens: &[u32], blocks: &[u32]) -> Vec<u64> {
        let mut hashes = Vec::new();
        let mut parent = 0;
        for (chunk, &block) in tokens.chunks_exact(BLOCK_POSITIONS).zip(blocks) {
            let h = chain_hash(parent, chunk);
            if !self.by_hash.contains_key(&h) && !self.hash_of.contains_key(&block) {
                self.by_hash.insert(
                    h,
                    Entry {
                        block,
                        parent,
                        tokens: chunk.to_vec(),
                    },
                );
                self.hash_of.insert(block, h);
            }
            hashes.push(h);
            parent = h;
        }
        hashes
    }

    /// Keeps `blocks` (sliding-pool copies of a ring) as the snapshot at `hash`.
    pub fn add_snapshot(&mut self, hash: u64, blocks: Vec<u32>) {
        let t = self.next_tick();
        self.snapshots.insert(hash, (blocks, t));
        self.snapshot_lru.insert(t, hash);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_follows_the_chain_and_eviction_forgets_it() {
        let mut p = PrefixIndex::default();
        let tokens: Vec<u32> = (0..40).collect();
        let hashes = p.register(&tokens, &[7, 8, 9]);
        assert_eq!(hashes.len(), 2); // two whole blocks of 16
        assert_eq!(
            p.lookup(&tokens).iter().map(|b| b.0).collect::<Vec<_>>(),
            [7, 8]
        );
        // Another prompt sharing the first block only.
        let mut other = tokens.clone();
        other[20] = 999;
        assert_eq!(p.lookup(&other).len(), 1);
        // The same second block after a different first block is a different chain.
        let mut shifted = tokens.clone();
        shifted[0] = 5;
        assert!(p.lookup(&shifted).is_empty());
        p.make_idle(7);
        p.make_idle(8);
        p.reuse(8);
        assert_eq!(p.idle_blocks(), 1);
        assert_eq!(p.evict_idle(), Some(7));
        assert!(p.lookup(&tokens).is_empty());
        p.add_snapshot(hashes[1], vec![3, 4]);
        assert_eq!(p.snapshot_blocks(), 2);
        assert_eq!(p.snapshot(hashes[1]), Some(vec![3, 4]));
        assert_eq!(p.evict_snapshot(), Some(vec![3, 4]));
        assert!(!p.has_snapshot(hashes[1]));
    }
}
