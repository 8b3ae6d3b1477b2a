//! Mixture of experts on the CPU (spec §1.3): the (token, expert) pairs are sorted by expert, every
//! chosen expert's gate_up runs over its tokens (one parallel region for all experts, each task applying
//! the clamped SwiGLU to the values it computed), then every expert's down, and the results are
//! added with the router's weights. The matmuls run in the backend's arithmetic; buffers are reused from
//! step to step.

use gptoss_formats::Expert;

use crate::backend::MoeShape;
use crate::math::swiglu_oai;

use super::fast::Segment;
use super::Matmul;

/// The inputs of one MoE op.
pub(crate) struct MoeInput<'a> {
    /// Normed hidden states `[rows, H]`.
    pub h: &'a [f32],
    /// Tokens of the step.
    pub rows: usize,
    /// The layer's experts.
    pub experts: &'a [Expert],
    /// `top_k` (expert, weight) choices per token.
    pub routing: &'a [(usize, f32)],
    /// Top-k and the SwiGLU constants.
    pub shape: &'a MoeShape,
}

/// Buffers reused from step to step (they grow to the largest step, then stay).
#[derive(Default)]
pub(crate) struct MoeBufs {
    /// Pairs per expert, then (prefix sums) where each expert's pairs start.
    starts: Vec<usize>,
    /// The next free slot of each expert while sorting.
    next: Vec<usize>,
    /// The pairs `(token, weight)` in expert order.
    pairs: Vec<(usize, f32)>,
    /// Their hidden states `[pairs, H]` (also the logits op's picked rows).
    pub x: Vec<f32>,
    /// gate_up output `[pairs, 2I]`.
    z: Vec<f32>,
    /// SwiGLU output `[pairs, I]`.
    act: Vec<f32>,
    /// down output `[pairs, H]`.
    y: Vec<f32>,
    /// Where the MoEs' wall time went, summed over every call (read by the host experts' debug log):
    /// `[one-token MoEs, MoEs of more rows]`.
    pub times: [MoePhaseTimes; 2],
}

/// Wall time of a MoE's phases, summed over calls.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct MoePhaseTimes {
    /// Sorting the pairs and gathering their hidden states.
    pub gather: std::time::Duration,
    /// gate_up of every chosen expert with the clamped SwiGLU (the input's quantization and one parallel
    /// region).
    pub gate_up: std::time::Duration,
    /// down of every chosen expert.
    pub down: std::time::Duration,
    /// Adding the pairs' outputs with the router's weights.
    pub combine: std::time::Duration,
}

impl MoeBufs {
    /// Sorts the step's (token, expert, weight) choices by expert (a counting sort).
    fn sort_pairs(&mut self, input: &MoeInput<'_>) {
        let (n_experts, top_k) = (input.experts.len(), input.shape.top_k);
        let choices = &input.routing[..input.rows * top_k];
        self.starts.clear();
        self.starts.resize(n_experts + 1, 0);
        for &(e, _) in choices {
            if e < n_experts {
                self.starts[e + 1] += 1;
            }
        }
        for e in 0..n_experts {
            self.starts[e + 1] += self.starts[e];
        }
        self.pairs.clear();
        self.pairs.resize(self.starts[n_experts], (0, 0.0));
        self.next.clone_from(&self.starts);
        for (i, &(e, g)) in choices.iter().enumerate() {
            if e < n_experts {
                self.pairs[self.next[e]] = (i / top_k, g);
                self.next[e] += 1;
            }
        }
    }
}

/// act `[pairs, I]` written by gate_up's tasks, each its own (pair, column) pieces.
struct ActSink {
    ptr: *mut f32,
    len: usize,
    i: usize,
}

// SAFETY: the tasks write disjoint elements of a buffer that outlives them.
unsafe impl Sync for ActSink {}

impl ActSink {
    /// `act[t, j] = v`.
    ///
    /// # Safety
    /// No other thread writes or reads `(t, j)` meanwhile.
    unsafe fn set(&self, t: usize, j: usize, v: f32) {
        let at = t * self.i + j;
        assert!(
            j < self.i && at < self.len,
            "SwiGLU output ({t}, {j}) outside act"
        );
        *self.ptr.add(at) = v;
    }
}

/// `out[t] = Σ_(e, g) in routing[t]  g · (down_e(swiglu(gate_up_e(h[t]))) + b_e)`.
pub(crate) fn moe(input: &MoeInput<'_>, mm: &mut Matmul<'_>, bufs: &mut MoeBufs, out: &mut [f32]) {
    let Some(first) = input.experts.first() else {
        return;
    };
    let hidden = first.down.weight.n_rows();
    let i2 = first.gate_up.weight.n_rows();
    let t0 = std::time::Instant::now();
    out[..input.rows * hidden].fill(0.0);
    bufs.sort_pairs(input);
    let n = bufs.pairs.len();
    bufs.x.clear();
    for &(t, _) in &bufs.pairs {
        bufs.x
            .extend_from_slice(&input.h[t * hidden..(t + 1) * hidden]);
    }
    let segments = |proj: fn(&Expert) -> &gptoss_formats::Linear| -> Vec<Segment<'_>> {
        input
            .experts
            .iter()
            .enumerate()
            .filter(|&(e, _)| bufs.starts[e] < bufs.starts[e + 1])
            .map(|(e, ex)| Segment {
                rows: bufs.starts[e]..bufs.starts[e + 1],
                w: &proj(ex).weight,
                bias: proj(ex).bias.as_deref(),
            })
            .collect()
    };
    let gate_up = segments(|e| &e.gate_up);
    let down = segments(|e| &e.down);
    bufs.z.resize(n * i2, 0.0);
    bufs.act.resize(n * i2 / 2, 0.0);
    let s = input.shape;
    let act = ActSink {
        ptr: bufs.act.as_mut_ptr(),
        len: n * i2 / 2,
        i: i2 / 2,
    };
    // Each gate_up task applies the clamped SwiGLU to the (gate, up) pairs it just computed, on its own
    // worker: as a pass of its own it was a parallel region (≈ 76 µs a layer for one token on 16 cores, ≈ 5%
    // of a `--cpu-moe` decode token's CPU time; a 512-token prefill's ≈ 25 ms serially).
    let swiglu = |t: usize, j0: usize, z: &[f32]| {
        for (k, p) in z.chunks_exact(2).enumerate() {
            // SAFETY: the pieces the matmul hands out are disjoint, so act[t, j0 / 2 + k] is this call's alone.
            unsafe {
                act.set(
                    t,
                    j0 / 2 + k,
                    swiglu_oai(p[0], p[1], s.swiglu_alpha, s.swiglu_limit),
                )
            };
        }
    };
    let t1 = std::time::Instant::now();
    mm.run_segments(&bufs.x, &gate_up, &mut bufs.z, Some(&swiglu));
    let t2 = std::time::Instant::now();
    bufs.y.resize(n * hidden, 0.0);
    mm.run_segments(&bufs.act, &down, &mut bufs.y, None);
    let t3 = std::time::Instant::now();
    for (k, &(t, g)) in bufs.pairs.iter().enumerate() {
        for (o, v) in out[t * hidden..(t + 1) * hidden]
            .iter_mut()
            .zip(&bufs.y[k * hidden..(k + 1) * hidden])
        {
            *o += g * v;
        }
    }
    let t = &mut bufs.times[usize::from(input.rows > 1)];
    t.gather += t1 - t0;
    t.gate_up += t2 - t1;
    t.down += t3 - t2;
    t.combine += t3.elapsed();
}
