//! Engine counters and gauges, shared with the server's `/metrics` through an `Arc` (atomics: the
//! engine thread writes, anyone reads).

use std::sync::atomic::{AtomicU64, Ordering};

/// Live numbers of one engine.
#[derive(Debug, Default)]
pub struct EngineStats {
    waiting: AtomicU64,
    running: AtomicU64,
    kv_used_blocks: AtomicU64,
    kv_total_blocks: AtomicU64,
    kv_sliding_used_blocks: AtomicU64,
    prompt_tokens: AtomicU64,
    generated_tokens: AtomicU64,
    batch_tokens: AtomicU64,
    steps: AtomicU64,
    preemptions: AtomicU64,
    device_peak_bytes: AtomicU64,
    drafted_tokens: AtomicU64,
    accepted_tokens: AtomicU64,
    prefix_hits: AtomicU64,
    prefix_tokens: AtomicU64,
    expert_cache_slots: AtomicU64,
    expert_cache_hits: AtomicU64,
    expert_cache_misses: AtomicU64,
    expert_cache_uploads: AtomicU64,
    expert_cache_refreshes: AtomicU64,
    expert_stream_steps: AtomicU64,
    expert_stream_layers: AtomicU64,
    expert_stream_uploads: AtomicU64,
}

/// The engine's current queue and cache use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Gauges {
    /// Requests queued (including preempted ones).
    pub waiting: usize,
    /// Requests holding a cache slot.
    pub running: usize,
    /// Full-attention KV blocks held (16 positions of every full layer).
    pub kv_used_blocks: usize,
    /// Full-attention KV blocks in the pool.
    pub kv_total_blocks: usize,
    /// Sliding-window KV blocks held (at most a ring per running sequence).
    pub kv_sliding_used_blocks: usize,
}

/// A copy of every number at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Queue and cache use.
    pub gauges: Gauges,
    /// Prompt tokens of accepted requests.
    pub prompt_tokens: u64,
    /// Tokens generated (delivered to requests).
    pub generated_tokens: u64,
    /// Tokens run through the model (prefill, recompute and decode).
    pub batch_tokens: u64,
    /// Forward steps.
    pub steps: u64,
    /// Sequences preempted for lack of KV blocks.
    pub preemptions: u64,
    /// Peak device memory the backend reported (0 when it reports none, e.g. the CPU).
    pub device_peak_bytes: u64,
    /// Speculative draft tokens run through the model for verification.
    pub drafted_tokens: u64,
    /// Draft tokens the target model accepted.
    pub accepted_tokens: u64,
    /// Admissions that started from prefix-cached KV blocks.
    pub prefix_hits: u64,
    /// Prompt positions whose KV came from the prefix cache.
    pub prefix_cached_tokens: u64,
    /// The hot-expert cache (zeros without one): its slots (a gauge), routed pairs of host-expert layers
    /// run from a slot (hits) and by the CPU (misses), and experts copied into slots.
    pub expert_cache: crate::ExpertCacheStats,
    /// Host experts streamed to the device for big steps (zeros without streaming): steps, layers
    /// streamed and experts copied.
    pub expert_stream: crate::ExpertStreamStats,
}

impl StatsSnapshot {
    /// The counters accumulated since `earlier` (a snapshot of the same engine); the gauges and the
    /// peak device memory are this snapshot's.
    pub fn since(&self, earlier: &StatsSnapshot) -> StatsSnapshot {
        StatsSnapshot {
            gauges: self.gauges,
            prompt_tokens: self.prompt_tokens.saturating_sub(earlier.prompt_tokens),
            generated_tokens: self
                .generated_tokens
                .saturating_sub(earlier.generated_tokens),
            batch_tokens: self.batch_tokens.saturating_sub(earlier.batch_tokens),
            steps: self.steps.saturating_sub(earlier.steps),
            preemptions: self.preemptions.saturating_sub(earlier.preemptions),
            device_peak_bytes: self.device_peak_bytes,
            drafted_tokens: self.drafted_tokens.saturating_sub(earlier.drafted_tokens),
            accepted_tokens: self.accepted_tokens.saturating_sub(earlier.accepted_tokens),
            prefix_hits: self.prefix_hits.saturating_sub(earlier.prefix_hits),
            prefix_cached_tokens: self
                .prefix_cached_tokens
                .saturating_sub(earlier.prefix_cached_tokens),
            expert_cache: self.expert_cache.since(earlier.expert_cache),
            expert_stream: self.expert_stream.since(earlier.expert_stream),
        }
    }
}

impl EngineStats {
    pub(crate) fn set_gauges(&self, g: Gauges) {
        self.waiting.store(g.waiting as u64, Ordering::Relaxed);
        self.running.store(g.running as u64, Ordering::Relaxed);
        self.kv_used_blocks
            .store(g.kv_used_blocks as u64, Ordering::Relaxed);
        self.kv_total_blocks
            .store(g.kv_total_blocks as u64, Ordering::Relaxed);
        self.kv_sliding_used_blocks
            .store(g.kv_sliding_used_blocks as u64, Ordering::Relaxed);
    }

    pub(crate) fn add_prefix_hits(&self, hits: usize, tokens: usize) {
        self.prefix_hits.fetch_add(hits as u64, Ordering::Relaxed);
        self.prefix_tokens
            .fetch_add(tokens as u64, Ordering::Relaxed);
    }

    pub(crate) fn add_prompt_tokens(&self, n: usize) {
        self.prompt_tokens.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn add_step(&self, batch_tokens: usize) {
        self.steps.fetch_add(1, Ordering::Relaxed);
        self.batch_tokens
            .fetch_add(batch_tokens as u64, Ordering::Relaxed);
    }

    pub(crate) fn add_generated(&self, n: usize) {
        self.generated_tokens.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn add_draft(&self, drafted: usize, accepted: usize) {
        self.drafted_tokens
            .fetch_add(drafted as u64, Ordering::Relaxed);
        self.accepted_tokens
            .fetch_add(accepted as u64, Ordering::Relaxed);
    }

    pub(crate) fn add_preemptions(&self, n: usize) {
        self.preemptions.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Takes the hot-expert cache's counters (the model's, cumulative since it was built).
    pub(crate) fn set_expert_cache(&self, c: crate::ExpertCacheStats) {
        self.expert_cache_slots
            .store(c.slots as u64, Ordering::Relaxed);
        self.expert_cache_hits.store(c.hits, Ordering::Relaxed);
        self.expert_cache_misses.store(c.misses, Ordering::Relaxed);
        self.expert_cache_uploads
            .store(c.uploads, Ordering::Relaxed);
        self.expert_cache_refreshes
            .store(c.refreshes, Ordering::Relaxed);
    }

    /// Takes streaming's counters (the model's, cumulative since it was built).
    pub(crate) fn set_expert_stream(&self, s: crate::ExpertStreamStats) {
        self.expert_stream_steps
            .store(s.streamed_steps, Ordering::Relaxed);
        self.expert_stream_layers
            .store(s.streamed_layers, Ordering::Relaxed);
        self.expert_stream_uploads
            .store(s.uploads, Ordering::Relaxed);
    }

    pub(crate) fn observe_device_bytes(&self, peak: u64) {
        self.device_peak_bytes.fetch_max(peak, Ordering::Relaxed);
    }

    /// Reads every number.
    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            gauges: Gauges {
                waiting: get(&self.waiting) as usize,
                running: get(&self.running) as usize,
                kv_used_blocks: get(&self.kv_used_blocks) as usize,
                kv_total_blocks: get(&self.kv_total_blocks) as usize,
                kv_sliding_used_blocks: get(&self.kv_sliding_used_blocks) as usize,
            },
            prompt_tokens: get(&self.prompt_tokens),
            generated_tokens: get(&self.generated_tokens),
            batch_tokens: get(&self.batch_tokens),
            steps: get(&self.steps),
            preemptions: get(&self.preemptions),
            device_peak_bytes: get(&self.device_peak_bytes),
            drafted_tokens: get(&self.drafted_tokens),
            accepted_tokens: get(&self.accepted_tokens),
            prefix_hits: get(&self.prefix_hits),
            prefix_cached_tokens: get(&self.prefix_tokens),
            expert_cache: crate::ExpertCacheStats {
                slots: get(&self.expert_cache_slots) as usize,
                hits: get(&self.expert_cache_hits),
                misses: get(&self.expert_cache_misses),
                uploads: get(&self.expert_cache_uploads),
                refreshes: get(&self.expert_cache_refreshes),
            },
            expert_stream: crate::ExpertStreamStats {
                streamed_steps: get(&self.expert_stream_steps),
                streamed_layers: get(&self.expert_stream_layers),
                uploads: get(&self.expert_stream_uploads),
            },
        }
    }
}
