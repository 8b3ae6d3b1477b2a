//! The hot-expert cache: device slots, each holding one expert of a layer whose experts live in host
//! memory (`offload.rs`), filled with the most-routed experts. Every routed pair of such a layer is
//! counted; a pair whose expert sits in a slot runs on the model's backend (the choices remapped to
//! slots, the others marked [`NO_EXPERT`]), the rest on the CPU, and the two partial sums are added.
//! Every `refresh_steps` steps the hottest experts not in a slot replace the coldest ones.

use gptoss_formats::Expert;

use crate::backend::{Backend, Capacity, MoeArgs, NO_EXPERT};
use crate::error::{Error, Result};
use crate::offload::{ExpertPlacement, HostMoe, HostMoeIo, WarmWorkers};

/// Routing counts halve at each refresh, so the ranking follows the last few refresh periods.
const HEAT_DECAY: f64 = 0.5;

/// A non-resident expert replaces a resident one only when it was routed this many pairs more (in
/// decayed counts): an upload costs about what the CPU spends on two pairs of that expert (20b: 13 MB
/// over PCIe at ~25 GB/s ≈ 0.5 ms; one decode pair reads the same 13 MB at ~50 GB/s ≈ 0.26 ms), and the
/// margin keeps two experts of equal heat from trading places at every refresh.
const MIN_GAIN: f64 = 2.0;

/// The cache's counters since the model was built.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExpertCacheStats {
    /// Device slots (experts held on the model's backend).
    pub slots: usize,
    /// Routed pairs of host-expert layers run from a slot on the model's backend.
    pub hits: u64,
    /// Routed pairs of host-expert layers run by the CPU.
    pub misses: u64,
    /// Experts copied into slots, the initial fill included.
    pub uploads: u64,
    /// Refreshes (steps at whose end the slots were re-ranked).
    pub refreshes: u64,
}

impl ExpertCacheStats {
    /// The counts since `earlier` (a snapshot of the same cache); the slots are the current ones.
    pub fn since(self, earlier: Self) -> Self {
        ExpertCacheStats {
            slots: self.slots,
            hits: self.hits.saturating_sub(earlier.hits),
            misses: self.misses.saturating_sub(earlier.misses),
            uploads: self.uploads.saturating_sub(earlier.uploads),
            refreshes: self.refreshes.saturating_sub(earlier.refreshes),
        }
    }

    /// The counters of two caches together (the stages of a pipeline split).
    pub fn combined(self, other: Self) -> Self {
        ExpertCacheStats {
            slots: self.slots + other.slots,
            hits: self.hits + other.hits,
            misses: self.misses + other.misses,
            uploads: self.uploads + other.uploads,
            refreshes: self.refreshes.max(other.refreshes),
        }
    }

    /// Hits over all routed pairs of host-expert layers (0 before any).
    pub fn hit_rate(&self) -> f64 {
        self.hits as f64 / (self.hits + self.misses).max(1) as f64
    }
}

/// One layer's slots.
struct LayerSlots<B: Backend> {
    experts: B::Experts,
    /// The expert in each slot.
    resident: Vec<u32>,
    /// Each expert's slot, or [`NO_EXPERT`].
    slot_of: Vec<u32>,
    /// Decayed routing counts per expert.
    heat: Vec<f64>,
}

/// The slots of every host-expert layer, and the buffers that take the device's share of a step.
pub(crate) struct ExpertCache<B: Backend> {
    /// By layer: `None` for layers on the device or without slots.
    layers: Vec<Option<LayerSlots<B>>>,
    /// The step's choices remapped to slots.
    routing: B::Routing,
    /// The CPU's partial sum, written for the add.
    partial: B::Buf,
    refresh_steps: usize,
    since_refresh: usize,
    refresh_due: bool,
    stats: ExpertCacheStats,
    device_choices: Vec<(u32, f32)>,
    host_choices: Vec<(usize, f32)>,
}

/// What one cached MoE reads besides the host MoE's inputs.
pub(crate) struct CachedMoe<'a, B: Backend> {
    /// The host MoE's inputs.
    pub io: HostMoeIo<'a, B>,
    /// The step, as the model's backend sees it.
    pub step: &'a B::Step,
    /// Layer index.
    pub layer: usize,
    /// Tokens of the step.
    pub rows: usize,
}

impl<B: Backend> ExpertCache<B> {
    /// Slots for the host layers of `placement` (`None` when it asks for none), the first experts of
    /// each layer uploaded into them; `layers` are every layer's experts.
    pub(crate) fn new(
        b: &B,
        placement: &ExpertPlacement,
        layers: &[&[Expert]],
        capacity: &Capacity,
        (hidden, top_k): (usize, usize),
    ) -> Result<Option<Self>> {
        let config = placement.cache();
        let host = placement.host_layer_ids();
        if config.slots == 0 || host.is_empty() {
            return Ok(None);
        }
        let n_experts = layers.first().map_or(0, |e| e.len());
        let per_layer = spread_slots(config.slots, host.len(), n_experts);
        let mut slots: Vec<Option<LayerSlots<B>>> = (0..layers.len()).map(|_| None).collect();
        let mut stats = ExpertCacheStats::default();
        for (&l, &n) in host.iter().zip(&per_layer) {
            let experts = layers
                .get(l)
                .ok_or_else(|| Error::invalid(format!("expert cache: no layer {l}")))?;
            let (Some(first), true) = (experts.first(), n > 0) else {
                continue;
            };
            let mut dev = b.alloc_expert_slots(first, n)?;
            for (s, e) in experts.iter().take(n).enumerate() {
                b.upload_expert_slot(&mut dev, s, e)?;
            }
            stats.slots += n;
            stats.uploads += n as u64;
            slots[l] = Some(LayerSlots {
                experts: dev,
                resident: (0..n as u32).collect(),
                slot_of: (0..experts.len() as u32)
                    .map(|e| if (e as usize) < n { e } else { NO_EXPERT })
                    .collect(),
                heat: vec![0.0; experts.len()],
            });
        }
        let rows = capacity.max_batch_tokens;
        let refresh_steps = config.refresh_steps.max(1);
        Ok(Some(ExpertCache {
            layers: slots,
            routing: b.alloc_routing(rows, top_k)?,
            partial: b.alloc(rows, hidden)?,
            refresh_steps,
            // The first fill is a guess: re-rank after the first step.
            since_refresh: refresh_steps - 1,
            refresh_due: false,
            stats,
            device_choices: Vec::with_capacity(rows * top_k),
            host_choices: Vec::with_capacity(rows * top_k),
        }))
    }

    /// The counters so far.
    pub(crate) fn stats(&self) -> ExpertCacheStats {
        self.stats
    }

    /// Whether stage layer `layer`'s slots hold every expert of it, each in the slot of its index.
    pub(crate) fn holds_all(&self, layer: usize) -> bool {
        self.layers
            .get(layer)
            .and_then(Option::as_ref)
            .is_some_and(LayerSlots::holds_all)
    }

    /// Starts a step: decides whether each layer re-ranks its slots after its MoE in this step.
    pub(crate) fn begin_step(&mut self) {
        self.since_refresh += 1;
        self.refresh_due = self.since_refresh >= self.refresh_steps;
        if self.refresh_due {
            self.since_refresh = 0;
            self.stats.refreshes += 1;
        }
    }

    /// `out = moe(h)` for a layer whose experts are in host memory: pairs of cached experts on the
    /// model's backend, the others on the CPU, then the sum.
    pub(crate) fn run(
        &mut self,
        b: &B,
        host: &mut HostMoe,
        m: CachedMoe<'_, B>,
        out: &mut B::Buf,
    ) -> Result<()> {
        let (shape, rows) = (m.io.shape, m.rows);
        if let Some(slots) = self.layers.get(m.layer).and_then(Option::as_ref) {
            if slots.holds_all() {
                // Every expert in the slot of its own index (nothing can move): the router's choices
                // serve as they are, with nothing read back.
                self.stats.hits += (rows * shape.top_k) as u64;
                let args = MoeArgs {
                    h: m.io.h,
                    experts: &slots.experts,
                    routing: m.io.routing,
                    shape,
                };
                return b.moe(m.step, args, out);
            }
        }
        let warm = WarmWorkers::start();
        let chosen = b.read_routing(m.io.routing, rows, shape.top_k)?;
        let Some(slots) = self.layers.get_mut(m.layer).and_then(Option::as_mut) else {
            self.stats.misses += chosen.len() as u64;
            host.load_h(b, m.io.h, rows)?;
            drop(warm);
            let y = host.compute(
                m.io.experts,
                shape,
                chosen.iter().map(|&(e, w)| (e as usize, w)),
            )?;
            return b.write(out, rows, &y);
        };
        let (dev, cpu) = (&mut self.device_choices, &mut self.host_choices);
        dev.clear();
        cpu.clear();
        for &(e, w) in &chosen {
            let slot = slots.slot_of.get(e as usize).copied().unwrap_or(NO_EXPERT);
            if let Some(h) = slots.heat.get_mut(e as usize) {
                *h += 1.0;
            }
            if slot == NO_EXPERT {
                dev.push((NO_EXPERT, w));
                cpu.push((e as usize, w));
            } else {
                dev.push((slot, w));
                cpu.push((usize::MAX, w));
            }
        }
        let misses = dev.iter().filter(|&&(s, _)| s == NO_EXPERT).count();
        let hits = dev.len() - misses;
        self.stats.hits += hits as u64;
        self.stats.misses += misses as u64;
        if misses > 0 {
            // Read before the device's share is queued, so the CPU's share overlaps it.
            host.load_h(b, m.io.h, rows)?;
        }
        // Before any op that may itself use the pool (a CPU backend standing in for the device).
        drop(warm);
        if hits > 0 {
            b.write_routing(&mut self.routing, rows, shape.top_k, dev)?;
            let args = MoeArgs {
                h: m.io.h,
                experts: &slots.experts,
                routing: &self.routing,
                shape,
            };
            b.moe(m.step, args, out)?;
        }
        if misses > 0 {
            let y = host.compute(m.io.experts, shape, cpu.iter().copied())?;
            if hits > 0 {
                b.write(&mut self.partial, rows, &y)?;
                b.add(m.step, out, &self.partial)?;
            } else {
                b.write(out, rows, &y)?;
            }
        }
        if self.refresh_due {
            self.stats.uploads += slots.refresh(b, m.io.experts)?;
        }
        Ok(())
    }
}

impl<B: Backend> LayerSlots<B> {
    /// Whether slot `e` holds expert `e` for every expert of the layer.
    fn holds_all(&self) -> bool {
        self.resident.len() == self.slot_of.len()
            && self
                .resident
                .iter()
                .enumerate()
                .all(|(s, &e)| s as u32 == e)
    }

    /// Moves the hottest non-resident experts into the coldest slots (see [`plan_swaps`]), then decays
    /// the counts; returns the uploads made.
    fn refresh(&mut self, b: &B, host: &[Expert]) -> Result<u64> {
        let swaps = plan_swaps(&self.heat, &self.resident);
        for &(slot, expert) in &swaps {
            let e = host
                .get(expert as usize)
                .ok_or_else(|| Error::invalid(format!("expert cache: no expert {expert}")))?;
            b.upload_expert_slot(&mut self.experts, slot, e)?;
            let held = self
                .resident
                .get_mut(slot)
                .ok_or_else(|| Error::invalid(format!("expert cache: no slot {slot}")))?;
            let old = std::mem::replace(held, expert);
            for (e, s) in [(old, NO_EXPERT), (expert, slot as u32)] {
                if let Some(at) = self.slot_of.get_mut(e as usize) {
                    *at = s;
                }
            }
        }
        for h in &mut self.heat {
            *h *= HEAT_DECAY;
        }
        Ok(swaps.len() as u64)
    }
}

/// `(slot, expert)` replacements that leave the slots holding the hottest experts: the hottest
/// non-resident expert against the coldest slot, the next against the next, while the newcomer's heat
/// beats the resident's by [`MIN_GAIN`] (ties in heat go to the lower expert index).
pub(crate) fn plan_swaps(heat: &[f64], resident: &[u32]) -> Vec<(usize, u32)> {
    let mut out: Vec<u32> = (0..heat.len() as u32)
        .filter(|e| !resident.contains(e))
        .collect();
    out.sort_by(|&a, &b| {
        heat[b as usize]
            .total_cmp(&heat[a as usize])
            .then(a.cmp(&b))
    });
    let mut slots: Vec<usize> = (0..resident.len()).collect();
    let heat_of = |s: usize| heat.get(resident[s] as usize).copied().unwrap_or(0.0);
    slots.sort_by(|&a, &b| {
        heat_of(a)
            .total_cmp(&heat_of(b))
            .then(resident[b].cmp(&resident[a]))
    });
    out.into_iter()
        .zip(slots)
        .take_while(|&(e, s)| heat[e as usize] >= heat_of(s) + MIN_GAIN)
        .map(|(e, s)| (s, e))
        .collect()
}

/// `total` slots spread evenly over `layers` layers, at most `n_experts` each (the first layers get
/// the remainder).
pub(crate) fn spread_slots(total: usize, layers: usize, n_experts: usize) -> Vec<usize> {
    let (base, extra) = (total / layers.max(1), total % layers.max(1));
    (0..layers)
        .map(|i| (base + usize::from(i < extra)).min(n_experts))
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::backend::{Batch, MoeShape, Rope};
    use crate::cpu::CpuBackend;
    use crate::kv::KvLayout;
    use crate::offload::ExpertCacheConfig;

    /// Layer 0 of the tiny fixture (4 experts, top-2) with one slot, re-ranked every step: four tokens
    /// routed to experts 0 and 1 for three steps, then to 2 and 3. Each step's sum equals the uncached
    /// host MoE's bit for bit; the slot first keeps expert 0, then is evicted for expert 2 once 2's
    /// count passes 0's decayed one, after which expert 2's pairs hit.
    #[test]
    fn slots_follow_a_shift_in_routing() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/tiny/hf-mxfp4");
        let w = gptoss_formats::load(&dir).unwrap().weights;
        let c = &w.config;
        let (hidden, top_k) = (c.hidden_size, c.num_experts_per_tok);
        let cap = Capacity {
            max_batch_tokens: 4,
            max_logit_rows: 1,
            slots: 1,
            context_tokens: 16,
            kv_blocks: None,
        };
        let config = ExpertCacheConfig {
            slots: 1,
            refresh_steps: 1,
        };
        let placement = ExpertPlacement::first_on_host(1, 1).with_cache(config);
        let b = CpuBackend;
        let experts = [&w.layers[0].experts[..]];
        let mut cache = ExpertCache::new(&b, &placement, &experts, &cap, (hidden, top_k))
            .unwrap()
            .unwrap();
        let layout = KvLayout::new(c, &cap).unwrap();
        let rope = Rope {
            inv_freq: vec![1.0; c.head_dim / 2],
            concentration: 1.0,
        };
        let mut host = HostMoe::new(&placement, &cap, &layout, &rope, (hidden, top_k)).unwrap();
        let batch = Batch::single(&[1, 2, 3, 4], 0, layout.solo_table());
        let mut step = b.alloc_step(&cap, &layout, &rope).unwrap();
        b.begin_step(&mut step, &batch).unwrap();
        host.begin(&batch).unwrap();
        let mut h = b.alloc(4, hidden).unwrap();
        let values: Vec<f32> = (0..4 * hidden)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 40.0)
            .collect();
        b.write(&mut h, 4, &values).unwrap();
        let shape = MoeShape {
            top_k,
            swiglu_alpha: c.swiglu_alpha as f32,
            swiglu_limit: c.swiglu_limit as f32,
        };
        let mut routing = b.alloc_routing(4, top_k).unwrap();
        let (mut got, mut want) = (b.alloc(4, hidden).unwrap(), b.alloc(4, hidden).unwrap());
        let mut held = vec![];
        for (i, pair) in [[0u32, 1], [0, 1], [0, 1], [2, 3], [2, 3], [2, 3], [2, 3]]
            .iter()
            .enumerate()
        {
            let choices: Vec<(u32, f32)> = (0..4)
                .flat_map(|t| {
                    [
                        (pair[0], 0.25 + 0.1 * t as f32),
                        (pair[1], 0.75 - 0.1 * t as f32),
                    ]
                })
                .collect();
            b.write_routing(&mut routing, 4, top_k, &choices).unwrap();
            let io = || HostMoeIo {
                h: &h,
                routing: &routing,
                experts: &w.layers[0].experts,
                shape,
            };
            let before = cache.stats();
            cache.begin_step();
            let m = CachedMoe {
                io: io(),
                step: &step,
                layer: 0,
                rows: 4,
            };
            cache.run(&b, &mut host, m, &mut got).unwrap();
            host.run(&b, io(), 4, &mut want).unwrap();
            assert_eq!(
                b.read(&got, 4).unwrap(),
                b.read(&want, 4).unwrap(),
                "step {i}"
            );
            let after = cache.stats();
            held.push((
                cache.layers[0].as_ref().unwrap().resident[0],
                after.hits - before.hits,
                after.uploads - before.uploads,
            ));
        }
        // (expert held after the step, hits in the step, uploads in the step's refresh)
        assert_eq!(
            held,
            [
                (0, 4, 0),
                (0, 4, 0),
                (0, 4, 0),
                (0, 0, 0),
                (2, 0, 1),
                (2, 4, 0),
                (2, 4, 0)
            ]
        );
    }

    #[test]
    fn hottest_newcomers_replace_coldest_residents() {
        // Experts 0..4 resident in slots 0..4; 5 and 6 are hot, 4 is cold, 1 is coldest.
        let heat = [9.0, 0.5, 7.0, 8.0, 3.0, 12.0, 4.0, 0.0];
        let resident = [0, 1, 2, 3, 4];
        // 5 (12) for 1 (0.5) in slot 1; 6 (4) does not beat 4 (3) by 2.
        assert_eq!(plan_swaps(&heat, &resident), vec![(1, 5)]);
        let heat = [9.0, 0.5, 7.0, 8.0, 3.0, 12.0, 6.0, 0.0];
        assert_eq!(plan_swaps(&heat, &resident), vec![(1, 5), (4, 6)]);
        // Nothing hotter outside: no swap; all resident: no swap.
        assert_eq!(plan_swaps(&[5.0, 5.0, 1.0], &[0, 1]), vec![]);
        assert_eq!(plan_swaps(&[5.0, 0.0], &[1, 0]), vec![]);
        // Ties among newcomers go to the lower index.
        assert_eq!(plan_swaps(&[0.0, 3.0, 3.0], &[0]), vec![(0, 1)]);
    }

    #[test]
    fn slots_spread_over_layers() {
        assert_eq!(spread_slots(10, 3, 32), vec![4, 3, 3]);
        assert_eq!(spread_slots(100, 3, 32), vec![32, 32, 32]);
        assert_eq!(spread_slots(2, 3, 32), vec![1, 1, 0]);
        assert_eq!(spread_slots(5, 0, 32), Vec::<usize>::new());
    }

    #[test]
    fn hit_rate_of_no_pairs_is_zero() {
        let s = ExpertCacheStats::default();
        assert_eq!(s.hit_rate(), 0.0);
        let s = ExpertCacheStats {
            hits: 3,
            misses: 1,
            ..s
        };
        assert_eq!(s.hit_rate(), 0.75);
    }
}
