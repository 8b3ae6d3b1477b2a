//! Mixture of experts on the CPU (spec §1.3): tokens are grouped by expert, each expert runs its
//! gate_up matmul, the clamped SwiGLU and its down matmul over its tokens, and the results are added
//! with the router's weights. The matmuls run in the backend's arithmetic; buffers are reused.

use gptoss_formats::Expert;

use crate::backend::MoeShape;
use crate::math::swiglu_oai;

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
    /// An expert's tokens `(token, weight)`.
    chosen: Vec<(usize, f32)>,
    /// Their hidden states `[n, H]` (also the logits op's picked rows).
    pub x: Vec<f32>,
    /// gate_up output `[n, 2I]`.
    z: Vec<f32>,
    /// SwiGLU output `[n, I]`.
    act: Vec<f32>,
    /// down output `[n, H]`.
    y: Vec<f32>,
}

/// `out[t] = Σ_(e, g) in routing[t]  g · (down_e(swiglu(gate_up_e(h[t]))) + b_e)`.
pub(crate) fn moe(input: &MoeInput<'_>, mm: &mut Matmul<'_>, bufs: &mut MoeBufs, out: &mut [f32]) {
    let (rows, top_k) = (input.rows, input.shape.top_k);
    let hidden = input.experts.first().map_or(0, |e| e.down.weight.n_rows());
    out[..rows * hidden].fill(0.0);
    for (e, expert) in input.experts.iter().enumerate() {
        bufs.chosen.clear();
        for t in 0..rows {
            for &(x, g) in &input.routing[t * top_k..(t + 1) * top_k] {
                if x == e {
                    bufs.chosen.push((t, g));
                }
            }
        }
        if bufs.chosen.is_empty() {
            continue;
        }
        let n = bufs.chosen.len();
        bufs.x.clear();
        for &(t, _) in &bufs.chosen {
            bufs.x
                .extend_from_slice(&input.h[t * hidden..(t + 1) * hidden]);
        }
        let i2 = expert.gate_up.weight.n_rows();
        bufs.z.resize(n * i2, 0.0);
        let gate_up = &expert.gate_up;
        mm.run(
            &bufs.x,
            n,
            &gate_up.weight,
            gate_up.bias.as_deref(),
            &mut bufs.z,
        );
        bufs.act.clear();
        let s = input.shape;
        bufs.act.extend(
            bufs.z[..n * i2]
                .chunks_exact(2)
                .map(|p| swiglu_oai(p[0], p[1], s.swiglu_alpha, s.swiglu_limit)),
        );
        bufs.y.resize(n * hidden, 0.0);
        let down = &expert.down;
        mm.run(
            &bufs.act,
            n,
            &down.weight,
            down.bias.as_deref(),
            &mut bufs.y,
        );
        for (k, &(t, g)) in bufs.chosen.iter().enumerate() {
            for (o, v) in out[t * hidden..(t + 1) * hidden]
                .iter_mut()
                .zip(&bufs.y[k * hidden..(k + 1) * hidden])
            {
                *o += g * v;
            }
        }
    }
}
