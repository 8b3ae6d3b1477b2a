//! Mixture of experts on the CPU (spec §1.3): the (token, expert) pairs are sorted by expert, every
//! chosen expert's gate_up runs over its tokens (one parallel region for all experts), then the clamped
//! SwiGLU (in parallel once it is a few thousand values), then every expert's down, and the results are
//! added with the router's weights. The matmuls run in the backend's arithmetic; buffers are reused from
//! step to step.

use gptoss_formats::Expert;
use rayon::prelude::*;

use crate::backend::MoeShape;
use crate::math::swiglu_oai;

use super::fast::Segment;
use super::Matmul;

/// SwiGLU outputs per parallel task.
const SWIGLU_CHUNK: usize = 1024;

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

/// `out[t] = Σ_(e, g) in routing[t]  g · (down_e(swiglu(gate_up_e(h[t]))) + b_e)`.
pub(crate) fn moe(input: &MoeInput<'_>, mm: &mut Matmul<'_>, bufs: &mut MoeBufs, out: &mut [f32]) {
    let Some(first) = input.experts.first() else {
        return;
    };
    let hidden = first.down.weight.n_rows();
    let i2 = first.gate_up.weight.n_rows();
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
    mm.run_segments(&bufs.x, &gate_up, &mut bufs.z);
    let s = input.shape;
    bufs.act.resize(n * i2 / 2, 0.0);
    let swiglu = |(act, z): (&mut [f32], &[f32])| {
        for (a, p) in act.iter_mut().zip(z.chunks_exact(2)) {
            *a = swiglu_oai(p[0], p[1], s.swiglu_alpha, s.swiglu_limit);
        }
    };
    let (act, z) = (&mut bufs.act[..n * i2 / 2], &bufs.z[..n * i2]);
    // Serial, the SwiGLU of one decode token's 4 experts of 20b took ≈ 50 µs (a 512-token prefill's
    // ≈ 25 ms), as much as a parallel matmul region on 16 cores.
    if act.len() >= 2 * SWIGLU_CHUNK {
        act.par_chunks_mut(SWIGLU_CHUNK)
            .zip(z.par_chunks(2 * SWIGLU_CHUNK))
            .for_each(swiglu);
    } else {
        swiglu((act, z));
    }
    bufs.y.resize(n * hidden, 0.0);
    mm.run_segments(&bufs.act, &down, &mut bufs.y);
    for (k, &(t, g)) in bufs.pairs.iter().enumerate() {
        for (o, v) in out[t * hidden..(t + 1) * hidden]
            .iter_mut()
            .zip(&bufs.y[k * hidden..(k + 1) * hidden])
        {
            *o += g * v;
        }
    }
}
