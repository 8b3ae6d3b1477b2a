//! Per-expert layouts whose gate and up projections are stored apart (spec §2d rows 3 and 4): the two
//! halves of each expert are collected, then interleaved into the canonical gate_up (row `2j` gate,
//! `2j+1` up), for weights and biases alike and in the stored format (dense or 4-bit).

use std::collections::BTreeMap;

use super::names::{Half, Part, Proj};
use super::rows::interleave_rows;
use super::{Builder, Src};
use crate::tensor::QuantTensor;
use crate::weights::names as canon;

/// Gate and up halves seen so far, by (layer, expert, weight/bias).
pub(crate) type PendingHalves = BTreeMap<(usize, usize, Part), [Option<(QuantTensor, String)>; 2]>;

impl Builder<'_> {
    pub(super) fn add_half(
        &mut self,
        layer: usize,
        expert: usize,
        half: Half,
        part: Part,
        src: Src,
    ) {
        let Some(t) = self.tensor(src) else { return };
        let slot = usize::from(half == Half::Up);
        self.halves.entry((layer, expert, part)).or_default()[slot] = Some(t);
    }

    pub(super) fn finish_halves(&mut self) {
        for ((layer, expert, part), pair) in std::mem::take(&mut self.halves) {
            let name = canon::expert(layer, expert, Proj::GateUp.canonical(part));
            match pair {
                [Some((gate, go)), Some((up, uo))] => match interleave_rows(&gate, &up) {
                    Ok(t) => {
                        self.counts.interleaved += 1;
                        self.put(name, t, format!("{go} + {uo} (interleaved)"));
                    }
                    Err(msg) => self
                        .problems
                        .push(format!("{go} + {uo}: cannot interleave gate and up: {msg}")),
                },
                [Some((_, o)), None] => self
                    .problems
                    .push(format!("{o}: no matching up projection for `{name}`")),
                [None, Some((_, o))] => self
                    .problems
                    .push(format!("{o}: no matching gate projection for `{name}`")),
                [None, None] => {}
            }
        }
    }
}
