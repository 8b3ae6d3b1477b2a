//! The model's stateless formulas, one function each, as spec §1.3 writes them. The CPU backend uses
//! them directly; GPU kernels are tested against them.

use gptoss_formats::ModelConfig;

/// RMSNorm in f32: `y = w * x / sqrt(mean(x²) + eps)` (spec §1.3 "RMSNorm"; weight applied before any downcast).
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    // The sum of squares in f64: an f32 running sum over 2,880 terms is off by ~2e-6 relative, which is
    // as large as the CUDA backend's whole difference from transformers at a layer (issue 16).
    let sum_sq: f64 = x.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
    let mean_sq = (sum_sq / x.len() as f64) as f32;
    let inv = 1.0 / (mean_sq + eps).sqrt();
    for ((o, v), w) in out.iter_mut().zip(x).zip(weight) {
        *o = w * (v * inv);
    }
}

/// Per-pair inverse frequencies and the attention concentration `m` of YaRN as OpenAI and HF compute
/// them, un-truncated unless the config says `truncate` (spec §1.3 "YaRN"). Computed in f64, returned as
/// f32 like the references' fp32 tables.
pub fn yarn_inv_freq(cfg: &ModelConfig) -> (Vec<f32>, f32) {
    let d = cfg.head_dim as f64;
    let base = cfg.rope_theta;
    let half = cfg.head_dim / 2;
    let pos_freq = |i: usize| base.powf(2.0 * i as f64 / d);
    let Some(y) = &cfg.yarn else {
        return ((0..half).map(|i| (1.0 / pos_freq(i)) as f32).collect(), 1.0);
    };
    let l0 = y.original_max_position_embeddings as f64;
    let corr = |beta: f64| d * (l0 / (beta * 2.0 * std::f64::consts::PI)).ln() / (2.0 * base.ln());
    let (mut low, mut high) = (corr(y.beta_fast), corr(y.beta_slow));
    if y.truncate {
        low = low.floor();
        high = high.ceil();
    }
    let low = low.max(0.0);
    let high = high.min(d - 1.0);
    // HF nudges a zero-width ramp to avoid dividing by zero.
    let span = if (high - low).abs() < f64::EPSILON {
        0.001
    } else {
        high - low
    };
    let inv = (0..half)
        .map(|i| {
            let ramp = ((i as f64 - low) / span).clamp(0.0, 1.0);
            let extrap = 1.0 / pos_freq(i);
            let interp = 1.0 / (y.factor * pos_freq(i));
            (interp * ramp + extrap * (1.0 - ramp)) as f32
        })
        .collect();
    let concentration = if y.factor > 1.0 {
        0.1 * y.factor.ln() + 1.0
    } else {
        1.0
    };
    (inv, concentration as f32)
}

/// Rotates one head in place, NeoX half-split pairs `(i, i + d/2)` (spec §1.3 "RoPE"). The angle is
/// computed in f32 as `pos * inv_freq[i]`, like the fp32 tables of the references.
pub fn apply_rope(head: &mut [f32], pos: u32, inv_freq: &[f32], concentration: f32) {
    let half = inv_freq.len();
    for (i, f) in inv_freq.iter().enumerate() {
        let angle = pos as f32 * f;
        let (cos, sin) = (angle.cos() * concentration, angle.sin() * concentration);
        let (x1, x2) = (head[i], head[i + half]);
        head[i] = x1 * cos - x2 * sin;
        head[i + half] = x2 * cos + x1 * sin;
    }
}

/// Softmax over `logits` with one extra sink logit in the denominator only (spec §1.3 "Attention with
/// learned sinks"); writes the weights (which sum to < 1) back into `logits`.
pub fn softmax_with_sink(logits: &mut [f32], sink: f32) {
    let max = logits.iter().copied().fold(sink, f32::max);
    let mut den = (sink - max).exp();
    for l in logits.iter_mut() {
        *l = (*l - max).exp();
        den += *l;
    }
    for l in logits.iter_mut() {
        *l /= den;
    }
}

/// The clamped SwiGLU of gpt-oss on one (gate, up) pair (spec §1.3 "MoE block").
#[inline]
pub fn swiglu_oai(gate: f32, up: f32, alpha: f32, limit: f32) -> f32 {
    let gate = gate.min(limit);
    let up = up.clamp(-limit, limit);
    gate / (1.0 + (-alpha * gate).exp()) * (up + 1.0)
}

/// Top-k of router logits (descending, ties to the lower index) then softmax over the selected ones
/// (spec §1.3 "MoE block"). Returns `(expert, weight)` pairs.
pub fn router_top_k(logits: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    order.truncate(k);
    let max = order.first().map_or(0.0, |&e| logits[e]);
    let exps: Vec<f32> = order.iter().map(|&e| (logits[e] - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    order
        .into_iter()
        .zip(exps)
        .map(|(e, x)| (e, x / sum))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yarn_matches_spec_values() {
        let cfg = ModelConfig::gpt_oss_20b();
        let (inv, m) = yarn_inv_freq(&cfg);
        assert!((m - 1.346_573_6).abs() < 1e-6);
        // i <= 8: pure extrapolation; i >= 18: pure interpolation (spec §1.3).
        let base = 150_000f64;
        for i in [0usize, 8] {
            let want = base.powf(-(2.0 * i as f64) / 64.0);
            assert!((inv[i] as f64 - want).abs() / want < 1e-7);
        }
        for i in [18usize, 31] {
            let want = base.powf(-(2.0 * i as f64) / 64.0) / 32.0;
            assert!((inv[i] as f64 - want).abs() / want < 1e-7);
        }
        // Blended entry i = 12: ramp = (12 - 8.092779) / (17.398025 - 8.092779).
        let ramp = (12.0 - 8.092_779_f64) / (17.398_025 - 8.092_779);
        let f = base.powf(-24.0 / 64.0);
        let want = f / 32.0 * ramp + f * (1.0 - ramp);
        assert!(((inv[12] as f64) - want).abs() / want < 1e-5);
    }

    #[test]
    fn sink_takes_probability_mass() {
        let mut l = vec![0.0, 0.0];
        softmax_with_sink(&mut l, 0.0);
        assert!((l[0] - 1.0 / 3.0).abs() < 1e-7 && (l[1] - 1.0 / 3.0).abs() < 1e-7);
        let mut l = vec![1.0];
        softmax_with_sink(&mut l, f32::NEG_INFINITY);
        assert_eq!(l[0], 1.0);
    }

    #[test]
    fn swiglu_clamps() {
        let a = 1.702;
        assert_eq!(swiglu_oai(0.0, 3.0, a, 7.0), 0.0);
        let big = swiglu_oai(100.0, 100.0, a, 7.0);
        let want = 7.0 / (1.0 + (-a * 7.0f32).exp()) * 8.0;
        assert!((big - want).abs() < 1e-5);
        let neg = swiglu_oai(1.0, -100.0, a, 7.0);
        assert!((neg - (1.0 / (1.0 + (-a).exp())) * -6.0).abs() < 1e-6);
    }

    #[test]
    fn top_k_then_softmax() {
        let r = router_top_k(&[0.1, 2.0, -1.0, 2.0, 0.5], 2);
        assert_eq!((r[0].0, r[1].0), (1, 3));
        assert!((r[0].1 - 0.5).abs() < 1e-7);
    }
}
