//! OpenAI `original/` specifics (spec §2a'): the fused `attn.qkv` weight and bias are split by rows into
//! canonical q, k, v (rows q `0..q_width`, k the next `kv_width`, v the last `kv_width`), zero-copy.

use super::names::Part;
use super::rows::split_rows;
use super::{Builder, Src};
use crate::weights::names as canon;

impl Builder<'_> {
    pub(super) fn split_qkv(&mut self, layer: usize, part: Part, src: Src) {
        let Some((t, origin)) = self.tensor(src) else {
            return;
        };
        let (q, kv, h) = (
            self.config.q_width(),
            self.config.kv_width(),
            self.config.hidden_size,
        );
        let rows = q + 2 * kv;
        let (expected, row_len, suffix) = match part {
            Part::Weight => (vec![rows, h], h, "weight"),
            Part::Bias => (vec![rows], 1, "bias"),
        };
        if t.shape != expected {
            self.problems.push(format!(
                "{origin}: expected shape {expected:?} (q {q} + k {kv} + v {kv} rows), found {:?}",
                t.shape
            ));
            return;
        }
        if part == Part::Weight {
            self.counts.qkv_split += 1;
        }
        for (what, first, count) in [("q", 0, q), ("k", q, kv), ("v", q + kv, kv)] {
            let shape = match part {
                Part::Weight => vec![count, h],
                Part::Bias => vec![count],
            };
            match split_rows(&t, row_len, first, count, shape) {
                Ok(x) => {
                    let name = canon::layer(layer, &format!("{what}.{suffix}"));
                    self.put(
                        name,
                        x,
                        format!("{origin} (rows {first}..{})", first + count),
                    );
                }
                Err(msg) => self.problems.push(format!("{origin}: {msg}")),
            }
        }
    }
}
