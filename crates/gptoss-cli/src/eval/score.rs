//! The arithmetic of `gptoss eval`: which positions each window scores (every token after the first,
//! windows of `ctx` tokens advancing by half a window, as the strided perplexity of the transformers
//! docs), log-softmax in f64, and the per-position KL divergence and top-1 agreement of two
//! distributions.

/// One window: the tokens `begin..end` go through the model; the targets `first_target..end` are
/// scored, each from the logits of the position before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// First token fed.
    pub begin: usize,
    /// One past the last token fed.
    pub end: usize,
    /// First target position scored (earlier ones were scored by the window before).
    pub first_target: usize,
}

/// The windows over `n` tokens with a window of `ctx` (at least 2) and a stride of `ctx / 2`: every
/// position `1..n` is scored exactly once, with at least half a window of context after the first window.
pub fn windows(n: usize, ctx: usize) -> Vec<Window> {
    let ctx = ctx.max(2);
    let stride = ctx / 2;
    let mut out = Vec::new();
    let (mut begin, mut scored_to) = (0, 1);
    while scored_to < n {
        let end = (begin + ctx).min(n);
        out.push(Window {
            begin,
            end,
            first_target: scored_to,
        });
        scored_to = end;
        begin += stride;
    }
    out
}

/// `log Σ exp(row)` in f64.
pub fn log_sum_exp(row: &[f32]) -> f64 {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
    if !max.is_finite() {
        return max;
    }
    let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
    max + sum.ln()
}

/// The index of the largest logit (the first one on a tie, as argmax does).
pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in row.iter().enumerate() {
        if x > row[best] {
            best = i;
        }
    }
    best
}

/// `-log p(target)` under `softmax(row)`.
pub fn nll(row: &[f32], target: u32) -> f64 {
    let x = row
        .get(target as usize)
        .copied()
        .unwrap_or(f32::NEG_INFINITY) as f64;
    log_sum_exp(row) - x
}

/// `KL(softmax(base) ‖ softmax(model)) = Σ p (log p − log q)`, in f64.
pub fn kl(base: &[f32], model: &[f32]) -> f64 {
    let (lb, lm) = (log_sum_exp(base), log_sum_exp(model));
    base.iter()
        .zip(model)
        .map(|(&b, &m)| {
            let log_p = b as f64 - lb;
            let p = log_p.exp();
            if p == 0.0 {
                0.0
            } else {
                p * (log_p - (m as f64 - lm))
            }
        })
        .sum::<f64>()
        .max(0.0)
}

/// The `q`-quantile of `values` by nearest rank (`q` in (0, 1]); 0 for none.
pub fn quantile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// Running sums of one model's scoring.
#[derive(Clone, Debug, Default)]
pub struct Perplexity {
    nll_sum: f64,
    count: usize,
}

impl Perplexity {
    /// Adds the score of one target.
    pub fn add(&mut self, row: &[f32], target: u32) {
        self.nll_sum += nll(row, target);
        self.count += 1;
    }

    /// Targets scored.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Mean negative log-likelihood (nats per token).
    pub fn mean_nll(&self) -> f64 {
        self.nll_sum / self.count.max(1) as f64
    }

    /// `exp(mean nll)`.
    pub fn ppl(&self) -> f64 {
        self.mean_nll().exp()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_score_every_position_once_with_half_a_window_of_context() {
        for (n, ctx) in [(24, 8), (24, 24), (24, 100), (25, 7), (2, 2), (10, 3)] {
            let ws = windows(n, ctx);
            let mut scored = Vec::new();
            for w in &ws {
                assert!(w.end - w.begin <= ctx.max(2) && w.begin < w.first_target);
                scored.extend(w.first_target..w.end);
                if w.begin > 0 {
                    assert!(w.first_target - w.begin >= ctx / 2, "{w:?}");
                }
            }
            assert_eq!(scored, (1..n).collect::<Vec<_>>(), "n {n} ctx {ctx}");
        }
        assert_eq!(
            windows(24, 8),
            [
                (0, 8, 1),
                (4, 12, 8),
                (8, 16, 12),
                (12, 20, 16),
                (16, 24, 20)
            ]
            .map(|(begin, end, first_target)| Window {
                begin,
                end,
                first_target
            })
        );
        assert!(windows(1, 8).is_empty());
    }

    #[test]
    fn kl_nll_and_quantiles() {
        let a = [1.0f32, 2.0, 3.0];
        assert!(kl(&a, &a).abs() < 1e-15);
        // Shifting every logit leaves the distribution as it is.
        assert!(kl(&a, &[11.0, 12.0, 13.0]).abs() < 1e-12);
        let (p, q) = ([0.0f32, 0.0], [0.0f32, (3.0f32).ln()]);
        // p = (1/2, 1/2), q = (1/4, 3/4): KL = 1/2 ln 2 + 1/2 ln(2/3).
        let want = 0.5 * 2f64.ln() + 0.5 * (2.0f64 / 3.0).ln();
        assert!((kl(&p, &q) - want).abs() < 1e-7);
        assert!((nll(&q, 1) - (4.0f64 / 3.0).ln()).abs() < 1e-7);
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), 1);
        let v: Vec<f64> = (1..=200).map(f64::from).collect();
        assert_eq!(
            (quantile(&v, 0.99), quantile(&v, 0.5), quantile(&[], 0.99)),
            (198.0, 100.0, 0.0)
        );
    }
}
