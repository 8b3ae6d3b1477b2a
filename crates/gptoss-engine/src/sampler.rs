//! Token sampling on the host: greedy, or temperature with top-k, min-p and top-p, from a seeded
//! counter-based RNG so a sequence's draws depend only on its seed and step (reproducible under
//! batching); and the log-softmax of a row with its most likely tokens (`logprobs`).

use crate::backend::SamplingParams;

/// SplitMix64 of `seed ^ counter`: a uniform value in [0, 1).
pub fn uniform(seed: u64, counter: u64) -> f64 {
    let mut z = seed
        ^ counter
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(0x632B_E59B_D9B4_E019);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// Index of the largest logit (the lowest index among equals).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Samples one token from `logits` with `params`; `counter` is the sequence's step number.
pub fn sample(logits: &[f32], params: &SamplingParams, counter: u64) -> u32 {
    sample_min_p(logits, params, 0.0, counter)
}

/// [`sample`] that also drops tokens less likely than `min_p` times the most likely one (after
/// temperature, before top-p; 0 keeps all), as vLLM's `min_p`.
pub fn sample_min_p(logits: &[f32], params: &SamplingParams, min_p: f32, counter: u64) -> u32 {
    if params.temperature <= 0.0 || params.top_k == 1 {
        return argmax(logits);
    }
    let mut order: Vec<u32> = (0..logits.len() as u32).collect();
    let by_logit = |a: &u32, b: &u32| {
        logits[*b as usize]
            .total_cmp(&logits[*a as usize])
            .then(a.cmp(b))
    };
    if params.top_k > 0 && params.top_k < order.len() {
        order.select_nth_unstable_by(params.top_k - 1, by_logit);
        order.truncate(params.top_k);
    }
    order.sort_by(by_logit);
    let max = logits[order[0] as usize];
    let mut probs: Vec<f64> = order
        .iter()
        .map(|&i| (((logits[i as usize] - max) / params.temperature) as f64).exp())
        .collect();
    if min_p > 0.0 {
        // `probs` are relative to the most likely token (its value is 1), before normalising.
        let keep = probs
            .iter()
            .take_while(|&&p| p >= min_p as f64)
            .count()
            .max(1);
        probs.truncate(keep);
        order.truncate(keep);
    }
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    if params.top_p < 1.0 {
        let mut mass = 0.0;
        let keep = probs
            .iter()
            .position(|p| {
                mass += p;
                mass >= params.top_p as f64
            })
            .map_or(probs.len(), |i| i + 1);
        probs.truncate(keep);
        order.truncate(keep);
    }
    let total: f64 = probs.iter().sum();
    let mut r = uniform(params.seed, counter) * total;
    for (p, &tok) in probs.iter().zip(&order) {
        if r < *p {
            return tok;
        }
        r -= p;
    }
    order.last().copied().unwrap_or(0)
}

/// The log-sum-exp of `logits` and its `n` most likely tokens with their log-probabilities, most
/// likely first (ties: the lower id first). Computed in f64 from the f32 logits.
pub fn log_softmax_top(logits: &[f32], n: usize) -> (f32, Vec<(u32, f32)>) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
    let lse = max as f64 + sum.ln();
    let mut order: Vec<u32> = (0..logits.len() as u32).collect();
    let by_logit = |a: &u32, b: &u32| {
        logits[*b as usize]
            .total_cmp(&logits[*a as usize])
            .then(a.cmp(b))
    };
    let n = n.min(order.len());
    if n > 0 && n < order.len() {
        order.select_nth_unstable_by(n - 1, by_logit);
    }
    order.truncate(n);
    order.sort_by(by_logit);
    let top = order
        .into_iter()
        .map(|t| (t, (logits[t as usize] as f64 - lse) as f32))
        .collect();
    (lse as f32, top)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_and_seeded() {
        let logits = [0.1, 3.0, 2.9, -1.0];
        assert_eq!(sample(&logits, &SamplingParams::default(), 0), 1);
        let p = SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            seed: 7,
        };
        let a: Vec<u32> = (0..50).map(|c| sample(&logits, &p, c)).collect();
        let b: Vec<u32> = (0..50).map(|c| sample(&logits, &p, c)).collect();
        assert_eq!(a, b);
        assert!(a.contains(&1) && a.contains(&2));
        let k2 = SamplingParams { top_k: 2, ..p };
        assert!((0..200).all(|c| matches!(sample(&logits, &k2, c), 1 | 2)));
        let p_small = SamplingParams { top_p: 0.3, ..p };
        assert!((0..200).all(|c| sample(&logits, &p_small, c) == 1));
    }

    #[test]
    fn empirical_distribution_matches_softmax() {
        let logits = [0.0f32, 1.0, 2.0];
        let p = SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            seed: 3,
        };
        let mut counts = [0usize; 3];
        let n = 20_000;
        for c in 0..n {
            counts[sample(&logits, &p, c) as usize] += 1;
        }
        let z: f64 = logits.iter().map(|&l| (l as f64).exp()).sum();
        for i in 0..3 {
            let want = (logits[i] as f64).exp() / z;
            assert!(
                (counts[i] as f64 / n as f64 - want).abs() < 0.015,
                "{counts:?}"
            );
        }
    }

    #[test]
    fn min_p_keeps_tokens_near_the_most_likely() {
        // Probabilities relative to the best: 1, e^-1 = 0.37, e^-3 = 0.05.
        let logits = [2.0f32, 1.0, -1.0];
        let p = SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            seed: 9,
        };
        let drawn: Vec<u32> = (0..400)
            .map(|c| sample_min_p(&logits, &p, 0.3, c))
            .collect();
        assert!(drawn.contains(&0) && drawn.contains(&1) && !drawn.contains(&2));
        assert!((0..400).all(|c| sample_min_p(&logits, &p, 0.5, c) == 0));
        // min_p 0 is plain sampling.
        assert!((0..2000).any(|c| sample_min_p(&logits, &p, 0.0, c) == 2));
    }

    #[test]
    fn log_softmax_top_matches_the_formula() {
        let logits = [1.0f32, 3.0, 3.0, -2.0];
        let (lse, top) = log_softmax_top(&logits, 3);
        let z: f64 = logits.iter().map(|&l| (l as f64).exp()).sum();
        assert!((lse as f64 - z.ln()).abs() < 1e-6);
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), [1, 2, 0]);
        for (t, lp) in top {
            let want = (logits[t as usize] as f64).exp() / z;
            assert!((lp as f64 - want.ln()).abs() < 1e-6);
        }
        assert!(log_softmax_top(&logits, 0).1.is_empty());
        assert_eq!(log_softmax_top(&logits, 9).1.len(), 4);
    }
}
