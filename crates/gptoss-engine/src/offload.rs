//! Experts kept in host memory and computed by the CPU backend (what llama.cpp's `--cpu-moe` and
//! `--n-cpu-moe N` do), so a model larger than the GPU still runs: attention, router, norms, lm_head and
//! the KV cache stay on the model's backend; for a layer whose experts live on the host, the normed hidden
//! states and the router's choices are read back, the CPU backend runs the experts, and their sum is
//! written back before the residual add. The math is the CPU backend's, so results match it exactly.
//! With a hot-expert cache (`expert_cache.rs`) the most-routed of them also sit in device slots, and
//! their pairs run on the model's backend.

use gptoss_formats::Expert;

use crate::backend::{Backend, Batch, Capacity, MoeArgs, MoeShape, Rope};
use crate::cpu::{CpuBackend, CpuBuf, CpuStep};
use crate::error::{Error, Result};
use crate::expert_cache::{CachedMoe, ExpertCache};
use crate::expert_stream::{ExpertStream, ExpertStreaming};
use crate::kv::KvLayout;

/// Where each layer's experts live, and which CPU kernels run those kept in host memory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExpertPlacement {
    /// `host[l]`: layer `l`'s experts are in host memory (an empty list: all on the device).
    host: Vec<bool>,
    /// The CPU backend that runs them (the exact reference unless [`ExpertPlacement::run_by`] says).
    cpu: CpuBackend,
    /// Device slots for the hottest host experts (`expert_cache.rs`); none by default.
    cache: ExpertCacheConfig,
    /// Whether big steps stream host layers' experts to the device (`expert_stream.rs`); off by default.
    stream: ExpertStreaming,
}

/// The hot-expert cache's size and refresh period (see `expert_cache.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExpertCacheConfig {
    /// Device slots, each one expert, spread evenly over the layers whose experts are in host memory
    /// (at most a layer's experts each); 0: no cache.
    pub slots: usize,
    /// Steps between refreshes: the hottest experts not in a slot replace the coldest ones (the first
    /// refresh follows the first step).
    pub refresh_steps: usize,
}

/// Steps between refreshes unless told otherwise: a 20b decode step routes 4 pairs per layer, so 16
/// steps give 64 counts over 32 experts per layer to rank by, and a refresh's uploads (≈ 13 MB an
/// expert) stay a small part of 16 CPU-bound steps.
pub const DEFAULT_REFRESH_STEPS: usize = 16;

impl Default for ExpertCacheConfig {
    fn default() -> Self {
        ExpertCacheConfig {
            slots: 0,
            refresh_steps: DEFAULT_REFRESH_STEPS,
        }
    }
}

impl ExpertPlacement {
    /// Every layer's experts on the model's backend.
    pub fn all_on_device() -> Self {
        ExpertPlacement::default()
    }

    /// The experts of the first `n` of `layers` layers in host memory (llama.cpp's `--n-cpu-moe N`;
    /// `n >= layers` is `--cpu-moe`).
    pub fn first_on_host(layers: usize, n: usize) -> Self {
        ExpertPlacement {
            host: (0..layers).map(|l| l < n).collect(),
            cpu: CpuBackend,
            cache: ExpertCacheConfig::default(),
            stream: ExpertStreaming::Off,
        }
    }

    /// The same placement with a hot-expert cache of `cache.slots` device slots for its host experts.
    pub fn with_cache(self, cache: ExpertCacheConfig) -> Self {
        ExpertPlacement { cache, ..self }
    }

    /// The same placement, big steps streaming its host experts to the device as `stream` says.
    pub fn with_streaming(self, stream: ExpertStreaming) -> Self {
        ExpertPlacement { stream, ..self }
    }

    /// Whether big steps stream host experts to the device.
    pub fn streaming(&self) -> ExpertStreaming {
        self.stream
    }

    /// The hot-expert cache asked for.
    pub fn cache(&self) -> ExpertCacheConfig {
        self.cache
    }

    /// The layers whose experts are in host memory, ascending.
    pub fn host_layer_ids(&self) -> Vec<usize> {
        (0..self.host.len()).filter(|&l| self.on_host(l)).collect()
    }

    /// The same placement, its host experts run by `cpu` (e.g. [`CpuBackend::fast`]).
    pub fn run_by(self, cpu: CpuBackend) -> Self {
        ExpertPlacement { cpu, ..self }
    }

    /// Whether layer `l`'s experts are in host memory.
    pub fn on_host(&self, l: usize) -> bool {
        self.host.get(l).copied().unwrap_or(false)
    }

    /// The placement of each stage of a pipeline split (`pipeline.rs`), its layers renumbered from 0;
    /// the hot-expert cache's slots are shared out in proportion to each stage's host layers (the
    /// remainder to the first ones), so the stages together hold the slots asked for.
    pub fn stages(&self, ranges: &[std::ops::Range<usize>]) -> Vec<ExpertPlacement> {
        let total = self.host_layers();
        let host_in = |r: &std::ops::Range<usize>| r.clone().filter(|&l| self.on_host(l)).count();
        let mut slots: Vec<usize> = ranges
            .iter()
            .map(|r| {
                (self.cache.slots * host_in(r))
                    .checked_div(total)
                    .unwrap_or(0)
            })
            .collect();
        let mut left = self.cache.slots - slots.iter().sum::<usize>().min(self.cache.slots);
        for (s, r) in slots.iter_mut().zip(ranges) {
            if left > 0 && host_in(r) > 0 {
                *s += 1;
                left -= 1;
            }
        }
        ranges
            .iter()
            .zip(slots)
            .map(|(r, slots)| ExpertPlacement {
                host: r.clone().map(|l| self.on_host(l)).collect(),
                cpu: self.cpu,
                stream: self.stream,
                cache: ExpertCacheConfig {
                    slots,
                    ..self.cache
                },
            })
            .collect()
    }

    /// How many layers keep their experts in host memory.
    pub fn host_layers(&self) -> usize {
        self.host.iter().filter(|&&h| h).count()
    }
}

/// A layer's experts: uploaded to the model's backend, or kept on the host for the CPU backend.
pub(crate) enum LayerExperts<B: Backend> {
    /// On the model's backend.
    Device(B::Experts),
    /// In host memory (the checkpoint's tensors, memory-mapped where the file allows).
    Host(Vec<Expert>),
}

/// The CPU backend's buffers for host-side experts, sized once for the step capacity.
pub(crate) struct HostMoe {
    cpu: CpuBackend,
    step: CpuStep,
    h: CpuBuf,
    routing: Vec<(usize, f32)>,
    out: CpuBuf,
    /// `[one-token MoEs (decode), MoEs of more rows]`.
    times: [HostMoeTimes; 2],
}

/// Where the host-side MoEs' wall time went, logged (debug) every [`LOG_TIMES_EVERY`] MoEs and when the model is
/// dropped: a decode token with every expert on the CPU waits on the device once per layer, so this says how
/// much of it is the CPU's.
#[derive(Clone, Copy, Default)]
struct HostMoeTimes {
    calls: u64,
    /// Reading h back: waits for the device's queued work of the layer, then copies.
    read_h: std::time::Duration,
    /// Reading the router's choices back.
    read_routing: std::time::Duration,
    /// The MoE on the CPU.
    compute: std::time::Duration,
    /// Writing the result to the device.
    write: std::time::Duration,
}

/// Keeps the CPU's worker threads spinning while the host waits for the device's part of the layer (its
/// reads of h and the routing block until the device gets there), so the MoE's first parallel region finds
/// them awake: a 64-task region of 21–35 µs took 76–91 µs after an idle gap of 100 µs and 26–43 µs with
/// the workers kept spinning (2 cores, `tests::warm_workers_region_latency`, bench/NOTES.md session 10),
/// and a decode token with every expert on the CPU has two regions a layer. The spinning starts as the
/// wait does, so waking them overlaps the device's work; it stops (on drop) before the MoE's regions are
/// issued. Not from inside the pool: a worker blocked in a region could pick up its own spinning job and
/// wait on itself.
pub(crate) struct WarmWorkers(Option<std::sync::Arc<std::sync::atomic::AtomicBool>>);

impl WarmWorkers {
    pub(crate) fn start() -> Self {
        use std::sync::atomic::{AtomicBool, Ordering};
        if rayon::current_thread_index().is_some() || rayon::current_num_threads() < 2 {
            return WarmWorkers(None);
        }
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        // Worker 0 stays free: the waiting thread itself needs a core to see the device finish.
        rayon::spawn_broadcast(move |ctx| {
            while ctx.index() != 0 && !flag.load(Ordering::Acquire) {
                std::hint::spin_loop();
            }
        });
        WarmWorkers(Some(stop))
    }
}

impl Drop for WarmWorkers {
    fn drop(&mut self) {
        if let Some(stop) = &self.0 {
            stop.store(true, std::sync::atomic::Ordering::Release);
        }
    }
}

impl HostMoe {
    /// Logs (debug) where the host-side MoEs' wall time went so far, one-token MoEs (decode) apart from those
    /// of more rows (prompts).
    fn log_times(&self) {
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
        let phases = self.step.moe_times();
        for ((t, p), kind) in self
            .times
            .iter()
            .zip(phases)
            .zip(["one-token", "many-token"])
        {
            if t.calls == 0 {
                continue;
            }
            tracing::debug!(
                "host experts, {kind} MoEs: {}; reading h {:.1} ms, routing {:.1} ms, CPU {:.1} ms (gather {:.1}, \
                 gate_up and SwiGLU {:.1}, down {:.1}, combine {:.1}), writing {:.1} ms",
                t.calls,
                ms(t.read_h),
                ms(t.read_routing),
                ms(t.compute),
                ms(p.gather),
                ms(p.gate_up),
                ms(p.down),
                ms(p.combine),
                ms(t.write)
            );
        }
    }

    /// MoEs run so far.
    fn calls(&self) -> u64 {
        self.times.iter().map(|t| t.calls).sum()
    }
}

/// MoEs between two of the host experts' debug lines (the engine may never drop the model before the process
/// exits, e.g. in `bench`).
const LOG_TIMES_EVERY: u64 = 1024;

impl Drop for HostMoe {
    fn drop(&mut self) {
        if self.calls() > 0 {
            self.log_times();
        }
    }
}

/// What one host-side MoE reads and writes on the model's backend.
pub(crate) struct HostMoeIo<'a, B: Backend> {
    /// Normed hidden states `[rows, H]`.
    pub h: &'a B::Buf,
    /// The router's choices.
    pub routing: &'a B::Routing,
    /// The layer's host experts.
    pub experts: &'a Vec<Expert>,
    /// Shape and activation constants.
    pub shape: MoeShape,
}

/// Where a host layer's MoE can run: the CPU, the hot-expert cache's slots, a streamed slot set.
pub(crate) struct HostSides<'a, B: Backend> {
    /// The CPU backend's buffers.
    pub host: &'a mut HostMoe,
    /// The hot-expert cache, if any.
    pub cache: Option<&'a mut ExpertCache<B>>,
    /// Streaming, if enabled.
    pub stream: Option<&'a mut ExpertStream<B>>,
}

impl<B: Backend> HostSides<'_, B> {
    /// `out = moe(h)` for stage layer `layer` of a step of `rows` tokens: streamed when the step
    /// streams and the cache does not already hold every expert of the layer, else through the cache
    /// (its hits on the device, its misses on the CPU), else on the CPU.
    pub(crate) fn run(
        self,
        b: &B,
        io: HostMoeIo<'_, B>,
        (step, layer, rows): (&B::Step, usize, usize),
        out: &mut B::Buf,
    ) -> Result<()> {
        let held = self.cache.as_deref().is_some_and(|c| c.holds_all(layer));
        match (self.stream.filter(|s| s.streaming() && !held), self.cache) {
            (Some(stream), _) => stream.run(b, io, (step, layer), out),
            (None, Some(cache)) => {
                let m = CachedMoe {
                    io,
                    step,
                    layer,
                    rows,
                };
                cache.run(b, self.host, m, out)
            }
            (None, None) => self.host.run(b, io, rows, out),
        }
    }
}

impl HostMoe {
    /// Buffers for steps of up to `capacity.max_batch_tokens` tokens of width `hidden`, for the host
    /// experts of `placement`.
    pub(crate) fn new(
        placement: &ExpertPlacement,
        capacity: &Capacity,
        layout: &KvLayout,
        rope: &Rope,
        (hidden, top_k): (usize, usize),
    ) -> Result<Self> {
        let cpu = placement.cpu;
        let rows = capacity.max_batch_tokens;
        Ok(HostMoe {
            cpu,
            step: cpu.alloc_step(capacity, layout, rope)?,
            h: cpu.alloc(rows, hidden)?,
            routing: cpu.alloc_routing(rows, top_k)?,
            out: cpu.alloc(rows, hidden)?,
            times: Default::default(),
        })
    }

    /// Takes the step's batch (its row count sizes every host MoE of the step).
    pub(crate) fn begin(&mut self, batch: &Batch) -> Result<()> {
        self.cpu.begin_step(&mut self.step, batch)
    }

    /// `out = moe(h)` with the experts on the host; `rows` is the step's token count.
    pub(crate) fn run<B: Backend>(
        &mut self,
        b: &B,
        io: HostMoeIo<'_, B>,
        rows: usize,
        out: &mut B::Buf,
    ) -> Result<()> {
        let t0 = std::time::Instant::now();
        let warm = WarmWorkers::start();
        self.load_h(b, io.h, rows)?;
        let t1 = std::time::Instant::now();
        let chosen = b.read_routing(io.routing, rows, io.shape.top_k)?;
        drop(warm);
        let choices = chosen.iter().map(|&(e, w)| (e as usize, w));
        let t2 = std::time::Instant::now();
        let y = self.compute(io.experts, io.shape, choices)?;
        let t3 = std::time::Instant::now();
        b.write(out, rows, &y)?;
        let t = &mut self.times[usize::from(rows > 1)];
        t.calls += 1;
        t.read_h += t1 - t0;
        t.read_routing += t2 - t1;
        t.compute += t3 - t2;
        t.write += t3.elapsed();
        if self.calls().is_multiple_of(LOG_TIMES_EVERY) {
            self.log_times();
        }
        Ok(())
    }

    /// Reads the step's normed hidden states `[rows, H]` into the CPU's buffer.
    pub(crate) fn load_h<B: Backend>(&mut self, b: &B, h: &B::Buf, rows: usize) -> Result<()> {
        let h = b.read(h, rows)?;
        self.cpu.write(&mut self.h, rows, &h)
    }

    /// The MoE of the loaded hidden states over `choices` (`top_k` per token; a pair whose expert is past
    /// the layer's experts adds nothing), on the host: `[rows, H]`.
    pub(crate) fn compute(
        &mut self,
        experts: &Vec<Expert>,
        shape: MoeShape,
        choices: impl ExactSizeIterator<Item = (usize, f32)>,
    ) -> Result<Vec<f32>> {
        let rows = choices.len() / shape.top_k.max(1);
        let slots = self
            .routing
            .get_mut(..choices.len())
            .ok_or_else(|| Error::invalid("host experts: more routed pairs than the step holds"))?;
        for (slot, choice) in slots.iter_mut().zip(choices) {
            *slot = choice;
        }
        let args = MoeArgs {
            h: &self.h,
            experts,
            routing: &self.routing,
            shape,
        };
        self.cpu.moe(&self.step, args, &mut self.out)?;
        self.cpu.read(&self.out, rows)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use rayon::prelude::*;

    use super::WarmWorkers;

    /// A parallel region of `per_thread` small tasks per pool thread.
    fn region(per_thread: usize) -> u64 {
        (0..per_thread * rayon::current_num_threads())
            .into_par_iter()
            .map(|i| (0..200u64).fold(i as u64, |s, k| s.wrapping_mul(6364136223846793005) ^ k))
            .reduce(|| 0, u64::wrapping_add)
    }

    fn busy_wait(d: Duration) {
        let t = Instant::now();
        while t.elapsed() < d {
            std::hint::spin_loop();
        }
    }

    #[test]
    fn regions_run_while_and_after_workers_are_kept_warm() {
        let want = region(8);
        let warm = WarmWorkers::start();
        busy_wait(Duration::from_micros(200));
        drop(warm);
        assert_eq!(region(8), want);
        // Started from inside the pool it does nothing (a worker could wait on its own spinning job).
        let inside = rayon::scope(|_| WarmWorkers::start().0.is_none());
        assert!(inside);
        // Dropped without a region in between, the spinners still stop: a later region completes.
        for _ in 0..100 {
            drop(WarmWorkers::start());
        }
        assert_eq!(region(8), want);
    }

    /// Not a test (ignored; nothing asserted): a 64-task region's wall time back to back, after an idle gap
    /// (what a host MoE sees after waiting on the device), and after the same gap with the workers kept
    /// warm. `cargo test --release -p gptoss-engine --lib warm_workers_region_latency -- --ignored --nocapture`
    #[test]
    #[ignore = "a measurement, run by hand"]
    fn warm_workers_region_latency() {
        for warm in [false, true] {
            for gap_us in [0u64, 20, 100, 1000] {
                let (reps, mut total) = (2000, Duration::ZERO);
                for _ in 0..reps {
                    let w = warm.then(WarmWorkers::start);
                    busy_wait(Duration::from_micros(gap_us));
                    drop(w);
                    let t = Instant::now();
                    std::hint::black_box(region(64));
                    total += t.elapsed();
                }
                println!(
                    "threads {} warm {warm} gap {gap_us} us: region {:.1} us",
                    rayon::current_num_threads(),
                    total.as_secs_f64() * 1e6 / reps as f64
                );
            }
        }
    }
}
