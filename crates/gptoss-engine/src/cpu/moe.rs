//! Mixture of experts on the CPU (spec §1.3): tokens are grouped by expert, each expert runs its
//! gate_up matmul, the clamped SwiGLU and its down matmul over its tokens, and the results are added
//! with the router's weights.

use gptoss_formats::Expert;

use crate::backend::MoeShape;
use crate::math::swiglu_oai;

use super::matmul::matmul;

/// `out[t] = Σ_(e, g) in routing[t]  g · (down_e(swiglu(gate_up_e(h[t]))) + b_e)`.
pub(crate) fn moe(
    h: &[f32],
    rows: usize,
    experts: &[Expert],
    routing: &[(usize, f32)],
    shape: &MoeShape,
    out: &mut [f32],
) {
    let hidden = experts.first().map_or(0, |e| e.down.weight.n_rows());
    out[..rows * hidden].fill(0.0);
    for (e, expert) in experts.iter().enumerate() {
        let chosen: Vec<(usize, f32)> = (0..rows)
            .flat_map(|t| {
                routing[t * shape.top_k..(t + 1) * shape.top_k]
                    .iter()
                    .map(move |&(x, g)| (t, x, g))
            })
            .filter(|&(_, x, _)| x == e)
            .map(|(t, _, g)| (t, g))
            .collect();
        if chosen.is_empty() {
            continue;
        }
        let n = chosen.len();
        let mut x = Vec::with_capacity(n * hidden);
        for &(t, _) in &chosen {
            x.extend_from_slice(&h[t * hidden..(t + 1) * hidden]);
        }
        let i2 = expert.gate_up.weight.n_rows();
        let mut z = vec![0.0; n * i2];
        matmul(
            &x,
            n,
            &expert.gate_up.weight,
            expert.gate_up.bias.as_deref(),
            &mut z,
        );
        let act: Vec<f32> = z
            .chunks_exact(2)
            .map(|p| swiglu_oai(p[0], p[1], shape.swiglu_alpha, shape.swiglu_limit))
            .collect();
        let mut y = vec![0.0; n * hidden];
        matmul(
            &act,
            n,
            &expert.down.weight,
            expert.down.bias.as_deref(),
            &mut y,
        );
        for (k, &(t, g)) in chosen.iter().enumerate() {
            for (o, v) in out[t * hidden..(t + 1) * hidden]
                .iter_mut()
                .zip(&y[k * hidden..(k + 1) * hidden])
            {
                *o += g * v;
            }
        }
    }
}
