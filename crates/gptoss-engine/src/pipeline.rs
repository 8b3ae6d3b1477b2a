//! Pipeline split by layers (issue 15): the model's layers cut into contiguous stages, each run by its
//! own backend instance with its layers' weights and KV cache; the embedding sits on the first stage,
//! the final norm, lm_head and sampling on the last. Between stages only the hidden state crosses
//! (`hidden_size` floats per token), through the host for now (`Model::forward` reads it back from one
//! stage and writes it into the next). The stages run one after another: the split is for memory (a
//! model larger than one card), not for speed.
//!
//! [`plan_pipeline`] is the planner: it cuts the layers in proportion to each stage's memory budget and
//! sizes the shared full-attention KV pool by the stage with the least room (every stage holds the same
//! blocks, for its own layers, so one block table serves all of them).

use std::fmt;
use std::ops::Range;

use gptoss_formats::ModelConfig;

use crate::backend::Capacity;
use crate::error::{Error, Result};
use crate::kv::{KvLayout, BLOCK_POSITIONS};
use crate::memory::{workspace_bytes, KvPrecision, MemoryPlan};
use crate::placement::WeightSplit;

/// Most stages of one pipeline.
pub const MAX_STAGES: usize = 64;

/// Contiguous layer ranges, one per stage, covering every layer in order; each stage has at least one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerSplit {
    /// The exclusive end of each stage's layers (the last is the model's layer count).
    ends: Vec<usize>,
}

impl LayerSplit {
    /// One stage holding all `layers` layers (no split).
    pub fn whole(layers: usize) -> Self {
        LayerSplit { ends: vec![layers] }
    }

    /// Stages of `counts[i]` layers each, which must add up to `layers` (the `--split` flag).
    pub fn from_counts(counts: &[usize], layers: usize) -> Result<Self> {
        if counts.is_empty() || counts.len() > MAX_STAGES {
            return Err(Error::invalid(format!(
                "a layer split has 1..={MAX_STAGES} stages, got {}",
                counts.len()
            )));
        }
        if let Some(i) = counts.iter().position(|&c| c == 0) {
            return Err(Error::invalid(format!(
                "stage {i} of the layer split {counts:?} has no layers; every stage needs at least one"
            )));
        }
        let sum: usize = counts.iter().sum();
        if sum != layers {
            return Err(Error::invalid(format!(
                "the layer split {counts:?} covers {sum} layers; the model has {layers}"
            )));
        }
        let ends = counts
            .iter()
            .scan(0, |end, &c| {
                *end += c;
                Some(*end)
            })
            .collect();
        Ok(LayerSplit { ends })
    }

    /// `stages` stages of as equal a size as `layers` allows (the first ones one layer longer).
    pub fn even(layers: usize, stages: usize) -> Result<Self> {
        if stages == 0 || stages > layers {
            return Err(Error::invalid(format!(
                "{stages} stages for {layers} layers: every stage needs at least one layer"
            )));
        }
        let counts: Vec<usize> = (0..stages)
            .map(|s| layers / stages + usize::from(s < layers % stages))
            .collect();
        Self::from_counts(&counts, layers)
    }

    /// Cuts layers of `layer_bytes` so that each stage's share of the bytes follows `room` (the bytes
    /// each stage has for layers): stage `s` ends at the layer boundary nearest to its cumulative share,
    /// keeping at least one layer for itself and for every later stage.
    pub fn by_room(layer_bytes: &[u64], room: &[u64]) -> Result<Self> {
        let (layers, stages) = (layer_bytes.len(), room.len());
        if stages == 0 || stages > layers.min(MAX_STAGES) {
            return Err(Error::invalid(format!(
                "{stages} stages for {layers} layers: every stage needs at least one layer"
            )));
        }
        let total: u128 = layer_bytes.iter().map(|&b| b as u128).sum();
        let room_total: u128 = room.iter().map(|&r| r as u128).sum::<u128>().max(1);
        let prefix: Vec<u128> = std::iter::once(0)
            .chain(layer_bytes.iter().scan(0u128, |acc, &b| {
                *acc += b as u128;
                Some(*acc)
            }))
            .collect();
        let (mut ends, mut start, mut cum_room) = (Vec::with_capacity(stages), 0usize, 0u128);
        for (s, &r) in room.iter().enumerate().take(stages - 1) {
            cum_room += r as u128;
            let target = total * cum_room / room_total;
            let last_end = layers - (stages - 1 - s);
            let end = (start + 1..=last_end)
                .min_by_key(|&e| prefix[e].abs_diff(target))
                .unwrap_or(start + 1);
            ends.push(end);
            start = end;
        }
        ends.push(layers);
        Ok(LayerSplit { ends })
    }

    /// Number of stages.
    pub fn stages(&self) -> usize {
        self.ends.len()
    }

    /// Layers covered (the model's layer count).
    pub fn layers(&self) -> usize {
        self.ends.last().copied().unwrap_or(0)
    }

    /// The layer range of each stage, in order.
    pub fn ranges(&self) -> Vec<Range<usize>> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts
            .zip(self.ends.iter().copied())
            .map(|(a, b)| a..b)
            .collect()
    }
}

impl fmt::Display for LayerSplit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ranges: Vec<String> = self
            .ranges()
            .iter()
            .map(|r| format!("{}..{}", r.start, r.end))
            .collect();
        write!(f, "layers {}", ranges.join(" | "))
    }
}

/// One stage of a planned pipeline: its layers and its device memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StagePlan {
    /// The layers it runs.
    pub layers: Range<usize>,
    /// Its weights, KV cache (its layers' share of the pools) and workspace.
    pub plan: MemoryPlan,
}

/// A pipeline's plan: the split, the full-attention blocks every stage holds, and each stage's memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PipelinePlan {
    /// The layers of each stage.
    pub split: LayerSplit,
    /// Blocks of the full-attention pool (the same on every stage).
    pub kv_blocks: usize,
    /// Each stage's memory, in order.
    pub stages: Vec<StagePlan>,
}

/// What [`plan_pipeline`] plans for.
#[derive(Clone, Copy, Debug)]
pub struct PipelineRequest<'a> {
    /// The model.
    pub config: &'a ModelConfig,
    /// Its weight bytes.
    pub weights: &'a WeightSplit,
    /// Step and cache capacity (`kv_blocks: None`: as many full blocks as every stage holds, at most
    /// every slot at full context).
    pub capacity: &'a Capacity,
    /// KV cache element type.
    pub kv: KvPrecision,
    /// Device memory each stage may use, one per stage.
    pub budgets: &'a [u64],
    /// The split to use (`--split`); `None`: cut by the budgets.
    pub split: Option<&'a LayerSplit>,
}

/// Plans a pipeline: splits the layers by the stages' budgets (unless the split is given), sizes the
/// full-attention pool by the stage with the least room, and checks every stage fits its budget;
/// errors name the stage and the numbers. Each stage counts a whole step workspace (logits included:
/// conservative for all but the last).
pub fn plan_pipeline(req: PipelineRequest<'_>) -> Result<PipelinePlan> {
    let (c, w, kv) = (req.config, req.weights, req.kv);
    let layers = c.num_hidden_layers;
    let stages = req.budgets.len();
    let wanted = KvLayout::new(c, req.capacity)?;
    let elem = kv.size_bytes();
    let workspace = workspace_bytes(c, req.capacity);
    let ends_bytes = |s: usize| {
        let first = if s == 0 { w.embed_bytes } else { 0 };
        let last = if s + 1 == stages { w.head_bytes } else { 0 };
        first + last
    };
    let split = match req.split {
        Some(split) if split.stages() != stages || split.layers() != layers => {
            return Err(Error::invalid(format!(
                "the split ({split}) has {} stages over {} layers; the pipeline has {stages} devices and \
                 the model {layers} layers",
                split.stages(),
                split.layers()
            )))
        }
        Some(split) => split.clone(),
        None => {
            // Layers weighed with one sequence's KV cache: the pool is sized after the cut.
            let one = KvLayout::new(
                c,
                &Capacity {
                    kv_blocks: Some(wanted.table_blocks.max(1)),
                    ..*req.capacity
                },
            )?;
            let per_layer: Vec<u64> = (0..layers)
                .map(|l| {
                    let kv = one.stage(l..l + 1).map_or(0, |s| s.pool_bytes(elem));
                    w.layer_bytes(l) + kv
                })
                .collect();
            let room: Vec<u64> = (0..stages)
                .map(|s| req.budgets[s].saturating_sub(workspace + ends_bytes(s)))
                .collect();
            LayerSplit::by_room(&per_layer, &room)?
        }
    };
    let ranges = split.ranges();
    let stage_layouts = ranges
        .iter()
        .map(|r| wanted.stage(r.clone()))
        .collect::<Result<Vec<_>>>()?;
    let weights_of = |s: usize| -> u64 {
        ranges[s].clone().map(|l| w.layer_bytes(l)).sum::<u64>() + ends_bytes(s)
    };
    let kv_blocks = match req.capacity.kv_blocks {
        Some(n) => n,
        None => {
            let mut blocks = wanted.full_blocks;
            for (s, layout) in stage_layouts.iter().enumerate() {
                let block = layout.full_block_bytes(elem);
                if block == 0 {
                    continue;
                }
                let sliding = KvLayout {
                    full_blocks: 0,
                    ..layout.clone()
                }
                .pool_bytes(elem);
                let fixed = weights_of(s) + workspace + sliding;
                let fit = req.budgets[s].saturating_sub(fixed) / block;
                blocks = blocks.min(fit as usize);
            }
            if blocks < wanted.table_blocks {
                return Err(Error::OutOfMemory(format!(
                    "split {split}: a stage's budget leaves room for {blocks} KV blocks ({} tokens); one \
                     sequence of {} tokens needs {} blocks (lower --ctx or --kv-cache, or raise --max-vram)",
                    blocks * BLOCK_POSITIONS,
                    req.capacity.context_tokens,
                    wanted.table_blocks
                )));
            }
            blocks
        }
    };
    let mut plans = Vec::with_capacity(stages);
    for (s, (layout, range)) in stage_layouts.into_iter().zip(&ranges).enumerate() {
        let layout = KvLayout {
            full_blocks: kv_blocks,
            ..layout
        };
        let plan = MemoryPlan {
            weights_bytes: weights_of(s),
            kv_cache_bytes: layout.pool_bytes(elem),
            kv_blocks,
            workspace_bytes: workspace,
            expert_cache_bytes: 0,
            expert_cache_slots: 0,
            expert_stream_bytes: 0,
        };
        plan.check(req.budgets[s]).map_err(|e| {
            Error::OutOfMemory(format!(
                "stage {s} (layers {}..{}): {e}",
                range.start, range.end
            ))
        })?;
        plans.push(StagePlan {
            layers: range.clone(),
            plan,
        });
    }
    Ok(PipelinePlan {
        split,
        kv_blocks,
        stages: plans,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn counts_even_and_display() {
        let s = LayerSplit::from_counts(&[3, 1, 2], 6).unwrap();
        assert_eq!(s.ranges(), vec![0..3, 3..4, 4..6]);
        assert_eq!(s.to_string(), "layers 0..3 | 3..4 | 4..6");
        assert_eq!(
            LayerSplit::even(24, 2).unwrap().ranges(),
            vec![0..12, 12..24]
        );
        assert_eq!(
            LayerSplit::even(5, 3).unwrap().ranges(),
            vec![0..2, 2..4, 4..5]
        );
        assert!(LayerSplit::from_counts(&[3, 2], 6).is_err());
        assert!(LayerSplit::from_counts(&[6, 0], 6).is_err());
        assert!(LayerSplit::even(2, 3).is_err());
    }

    #[test]
    fn by_room_follows_the_budgets() {
        let bytes = vec![10u64; 24];
        assert_eq!(
            LayerSplit::by_room(&bytes, &[1, 1]).unwrap().ranges(),
            vec![0..12, 12..24]
        );
        assert_eq!(
            LayerSplit::by_room(&bytes, &[1, 3]).unwrap().ranges(),
            vec![0..6, 6..24]
        );
        // A stage with no room still gets its one layer.
        let s = LayerSplit::by_room(&bytes, &[0, 0, 10]).unwrap();
        assert_eq!(s.ranges(), vec![0..1, 1..2, 2..24]);
    }

    fn cap() -> Capacity {
        Capacity {
            max_batch_tokens: 64,
            max_logit_rows: 4,
            slots: 2,
            context_tokens: 4096,
            kv_blocks: None,
        }
    }

    #[test]
    fn plan_splits_20b_by_budget_and_sizes_the_pool_by_the_tightest_stage() {
        let c = ModelConfig::gpt_oss_20b();
        let w = WeightSplit::mxfp4_checkpoint(&c);
        let gib = 1u64 << 30;
        let req = PipelineRequest {
            config: &c,
            weights: &w,
            capacity: &cap(),
            kv: KvPrecision::Bf16,
            budgets: &[8 * gib, 16 * gib],
            split: None,
        };
        let p = plan_pipeline(req).unwrap();
        let r = p.split.ranges();
        // The larger budget takes more layers; every stage fits its budget.
        assert!(r[0].len() < r[1].len(), "{}", p.split);
        for (s, st) in p.stages.iter().enumerate() {
            assert!(st.plan.total_bytes() <= req.budgets[s]);
        }
        // Every slot at full context fits both: the whole pool.
        assert_eq!(p.kv_blocks, 2 * 4096 / 16);
        // Weights of the stages add up to the model's.
        let sum: u64 = p.stages.iter().map(|s| s.plan.weights_bytes).sum();
        assert_eq!(sum, w.total_bytes());
        // A budget too small for its stage is refused, naming it.
        let tight = PipelineRequest {
            budgets: &[gib, 16 * gib],
            split: Some(&LayerSplit::even(24, 2).unwrap()),
            ..req
        };
        let e = plan_pipeline(tight).unwrap_err().to_string();
        assert!(e.contains("stage 0") || e.contains("KV blocks"), "{e}");
    }
}
