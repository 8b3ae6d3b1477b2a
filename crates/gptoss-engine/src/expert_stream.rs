//! Streaming a host layer's experts to the model's backend for big steps (issue 11, item 1): when a step
//! routes so many pairs that the CPU would take longer over a layer whose experts live in host memory
//! (`offload.rs`) than copying all of that layer's experts to the device, every expert of the layer is
//! uploaded into one device slot set sized for a layer (slot `e` holds expert `e`) and the layer's MoE
//! runs on the model's backend from it, with the router's choices as they are: the same kernels on the
//! same values as a layer kept on the device, so the same result bit for bit.
//!
//! The set is one layer's worth, allocated at the first streamed layer and kept. One set, not two:
//! the CUDA backend copies on its compute stream (`Backend::upload_expert_slot` is ordered after the ops
//! queued before it), so a second set would not let layer `l + 1`'s copy run beside layer `l`'s MoE
//! without a second stream; the host still fills the next staging buffer while the device copies or
//! computes. A step decides once, from its token count alone (`rows × top_k` routed pairs per layer),
//! so nothing is read back to decide and every host layer of the step streams alike.

use gptoss_formats::Expert;

use crate::backend::{Backend, MoeArgs};
use crate::error::{Error, Result};
use crate::offload::HostMoeIo;

/// Whether big steps stream host experts to the model's backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ExpertStreaming {
    /// Host experts always run on the CPU (or from the hot-expert cache's slots).
    #[default]
    Off,
    /// A step routing at least this many pairs per layer (`tokens × top_k`) streams every host layer's
    /// experts (see [`StreamCost::min_pairs`]).
    FromPairs(usize),
}

/// The rates the streaming threshold is derived from: a layer streams when copying all its experts
/// (`layer bytes / upload rate`) takes less than the CPU spends on the step's pairs of it
/// (`pairs × expert bytes / CPU rate`), i.e. from `n_experts × cpu_pair_bytes_per_s /
/// upload_bytes_per_s` pairs on (the expert size cancels out).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StreamCost {
    /// Host-to-device copy rate of a streamed layer, staging fill included (bytes/s).
    pub upload_bytes_per_s: f64,
    /// The CPU's rate in expert bytes per routed pair: one pair costs the CPU `expert bytes / this`
    /// seconds in a batched (prefill) step.
    pub cpu_pair_bytes_per_s: f64,
}

impl StreamCost {
    /// Measured on the H200 host (16 cores, PCIe 5 x16) by `gpu_expert_cache::streamed_layer_rates`
    /// (bench/NOTES.md "Streaming host experts for prefill"): one 20b layer's experts (424 MB) uploaded
    /// through the staging buffers in 22.9 ms (18.5 GB/s), and the fast CPU MoE of 512 tokens (2,048
    /// pairs) in 255.5 ms, 124.8 µs a pair of 13.25 MB (106.2 GB/s per pair).
    pub const H200_HOST: StreamCost = StreamCost {
        upload_bytes_per_s: 18.5e9,
        cpu_pair_bytes_per_s: 106.2e9,
    };

    /// The routed pairs per layer from which streaming a layer of `n_experts` costs less than the CPU
    /// (at least 1; 20b on the H200 host: 32 × 5.74 = 184 pairs, 46 tokens of top-4).
    pub fn min_pairs(&self, n_experts: usize) -> usize {
        let ratio = self.cpu_pair_bytes_per_s / self.upload_bytes_per_s.max(1.0);
        let pairs = (n_experts as f64 * ratio).ceil();
        if pairs.is_finite() && pairs >= 1.0 {
            pairs.min(usize::MAX as f64) as usize
        } else {
            1
        }
    }
}

/// Streaming's counters since the model was built.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExpertStreamStats {
    /// Steps that streamed their host layers.
    pub streamed_steps: u64,
    /// Host layers whose MoE ran on the model's backend from the streamed set.
    pub streamed_layers: u64,
    /// Experts copied into the set (a layer already in the set is not copied again).
    pub uploads: u64,
}

impl ExpertStreamStats {
    /// The counts since `earlier` (a snapshot of the same counters).
    pub fn since(self, earlier: Self) -> Self {
        ExpertStreamStats {
            streamed_steps: self.streamed_steps.saturating_sub(earlier.streamed_steps),
            streamed_layers: self.streamed_layers.saturating_sub(earlier.streamed_layers),
            uploads: self.uploads.saturating_sub(earlier.uploads),
        }
    }

    /// The counters of two stages together (a pipeline split).
    pub fn combined(self, other: Self) -> Self {
        ExpertStreamStats {
            streamed_steps: self.streamed_steps.max(other.streamed_steps),
            streamed_layers: self.streamed_layers + other.streamed_layers,
            uploads: self.uploads + other.uploads,
        }
    }
}

/// A stage's streamed slot set and the decision of the step being issued.
pub(crate) struct ExpertStream<B: Backend> {
    min_pairs: usize,
    top_k: usize,
    /// One layer's experts, allocated at the first streamed layer.
    set: Option<B::Experts>,
    /// The stage layer whose experts fill the set (`None` before any or after a failed copy).
    holds: Option<usize>,
    /// Whether the step being issued streams.
    now: ExpertStreaming,
    stats: ExpertStreamStats,
}

impl<B: Backend> ExpertStream<B> {
    /// Streaming for a stage with host layers, as `streaming` asks (`None` when off).
    pub(crate) fn new(streaming: ExpertStreaming, top_k: usize) -> Option<Self> {
        match streaming {
            ExpertStreaming::Off => None,
            ExpertStreaming::FromPairs(min_pairs) => Some(ExpertStream {
                min_pairs: min_pairs.max(1),
                top_k,
                set: None,
                holds: None,
                now: ExpertStreaming::Off,
                stats: ExpertStreamStats::default(),
            }),
        }
    }

    /// Decides whether the step of `rows` tokens streams; returns whether it does.
    pub(crate) fn begin_step(&mut self, rows: usize) -> bool {
        let pairs = rows.saturating_mul(self.top_k);
        self.now = if pairs >= self.min_pairs {
            self.stats.streamed_steps += 1;
            ExpertStreaming::FromPairs(self.min_pairs)
        } else {
            ExpertStreaming::Off
        };
        self.streaming()
    }

    /// Whether the step being issued streams.
    pub(crate) fn streaming(&self) -> bool {
        self.now != ExpertStreaming::Off
    }

    /// The counters so far.
    pub(crate) fn stats(&self) -> ExpertStreamStats {
        self.stats
    }

    /// `out = moe(h)` for stage layer `layer` on the model's backend, its experts copied into the set
    /// first unless it already holds them.
    pub(crate) fn run(
        &mut self,
        b: &B,
        io: HostMoeIo<'_, B>,
        (step, layer): (&B::Step, usize),
        out: &mut B::Buf,
    ) -> Result<()> {
        let set = self.fill(b, io.experts, layer)?;
        let args = MoeArgs {
            h: io.h,
            experts: set,
            routing: io.routing,
            shape: io.shape,
        };
        b.moe(step, args, out)?;
        self.stats.streamed_layers += 1;
        Ok(())
    }

    /// The set holding `experts` (stage layer `layer`) in slots of their own index.
    fn fill(&mut self, b: &B, experts: &[Expert], layer: usize) -> Result<&B::Experts> {
        let first = experts.first().ok_or_else(|| {
            Error::invalid(format!("expert streaming: layer {layer} has no experts"))
        })?;
        let set = match &mut self.set {
            Some(set) => set,
            empty => empty.insert(b.alloc_expert_slots(first, experts.len())?),
        };
        if self.holds != Some(layer) {
            // Ops queued before read the old contents (upload_expert_slot is stream-ordered).
            self.holds = None;
            for (slot, e) in experts.iter().enumerate() {
                b.upload_expert_slot(set, slot, e)?;
            }
            self.holds = Some(layer);
            self.stats.uploads += experts.len() as u64;
        }
        Ok(set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_counts_the_difference() {
        let later = ExpertStreamStats {
            streamed_steps: 5,
            streamed_layers: 40,
            uploads: 300,
        };
        let earlier = ExpertStreamStats {
            streamed_steps: 2,
            streamed_layers: 10,
            uploads: 100,
        };
        let diff = ExpertStreamStats {
            streamed_steps: 3,
            streamed_layers: 30,
            uploads: 200,
        };
        assert_eq!(later.since(earlier), diff);
        assert_eq!(earlier.since(later), ExpertStreamStats::default());
    }

    #[test]
    fn threshold_from_the_rates() {
        // 20b on the H200 host: 32 experts × 106.2 / 18.5.
        assert_eq!(StreamCost::H200_HOST.min_pairs(32), 184);
        // 120b: 128 experts.
        assert_eq!(StreamCost::H200_HOST.min_pairs(128), 735);
        let even = StreamCost {
            upload_bytes_per_s: 25e9,
            cpu_pair_bytes_per_s: 25e9,
        };
        assert_eq!(even.min_pairs(32), 32);
        // Degenerate rates still give a usable threshold.
        let zero = StreamCost {
            upload_bytes_per_s: 0.0,
            cpu_pair_bytes_per_s: 0.0,
        };
        assert_eq!(zero.min_pairs(32), 1);
    }
}
