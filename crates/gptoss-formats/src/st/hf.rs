//! Stacked expert tensors `[E, ...]` of the HF layouts (and `original/`'s identical MXFP4): MXFP4
//! `_blocks` + `_scales` become one zero-copy LUT4 view per expert (spec §2a), dense `[E, in, out]`
//! experts become lazy `[out, in]` transposes of their mmap windows (spec §2b), built only when a
//! consumer reads them, and `[E, out]` biases are split per expert.

use std::collections::BTreeMap;

use super::names::{Part, Proj};
use super::{Builder, RawTensor, Src};
use crate::tensor::{QuantTensor, Storage, TensorFormat};
use crate::weights::names as canon;

/// Which half of an MXFP4 pair a tensor is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Piece {
    /// `[E, rows, G, 16]` codes.
    Blocks,
    /// `[E, rows, G]` E8M0 scales.
    Scales,
}

/// MXFP4 blocks and scales seen so far, by (layer, projection).
pub(crate) type PendingMxfp4 = BTreeMap<(usize, Proj), (Option<RawTensor>, Option<RawTensor>)>;

/// Elements per MXFP4 block (and 16 bytes per block).
const MX_BLOCK: usize = 32;

impl Builder<'_> {
    pub(super) fn add_mxfp4(&mut self, layer: usize, proj: Proj, piece: Piece, src: Src) {
        let Src::Raw(t) = src else {
            self.problems.push(format!(
                "{}: MXFP4 blocks/scales cannot be bitsandbytes-quantized",
                src.origin()
            ));
            return;
        };
        let entry = self.mxfp4.entry((layer, proj)).or_default();
        match piece {
            Piece::Blocks => entry.0 = Some(t),
            Piece::Scales => entry.1 = Some(t),
        }
    }

    pub(super) fn finish_mxfp4(&mut self) {
        for ((layer, proj), pair) in std::mem::take(&mut self.mxfp4) {
            match pair {
                (Some(b), Some(_)) if !self.experts_match(b.shape.first(), &b.origin()) => {}
                (Some(b), Some(s)) => match mxfp4_experts(&b, &s) {
                    Ok(experts) => {
                        self.counts.mxfp4 += 1;
                        for (e, t) in experts.into_iter().enumerate() {
                            let origin = format!("{}[{e}] (+ {})", b.origin(), s.name);
                            self.put(
                                canon::expert(layer, e, proj.canonical(Part::Weight)),
                                t,
                                origin,
                            );
                        }
                    }
                    Err(msg) => self.problems.push(msg),
                },
                (Some(t), None) => self
                    .problems
                    .push(format!("{}: no matching MXFP4 scales tensor", t.origin())),
                (None, Some(t)) => self
                    .problems
                    .push(format!("{}: no matching MXFP4 blocks tensor", t.origin())),
                (None, None) => {}
            }
        }
    }

    /// True when a stacked tensor's outer dimension is the config's expert count; otherwise records the
    /// problem (checked before any per-expert entry is made).
    fn experts_match(&mut self, n_exp: Option<&usize>, origin: &str) -> bool {
        let want = self.config.num_local_experts;
        if n_exp == Some(&want) {
            return true;
        }
        self.problems.push(format!(
            "{origin}: stacks {n_exp:?} experts, the config has {want}"
        ));
        false
    }

    pub(super) fn stacked_dense(&mut self, layer: usize, proj: Proj, src: Src) {
        let Some((t, origin)) = self.tensor(src) else {
            return;
        };
        let (TensorFormat::Dense(d), [n_exp, n_in, n_out]) = (&t.format, t.shape.as_slice()) else {
            self.problems.push(format!(
                "{origin}: expected a dense [E, in, out] tensor, found {:?} {}",
                t.shape,
                t.format.describe()
            ));
            return;
        };
        let (d, n_exp, n_in, n_out) = (*d, *n_exp, *n_in, *n_out);
        if !self.experts_match(Some(&n_exp), &origin) {
            return;
        }
        let per = n_in * n_out * d.size_bytes();
        if Some(t.data.len()) != n_exp.checked_mul(per) {
            self.problems.push(format!(
                "{origin}: {} bytes do not hold {:?} {}",
                t.data.len(),
                t.shape,
                d.name()
            ));
            return;
        }
        self.counts.transposed += 1;
        for e in 0..n_exp {
            let window = t.data.slice(e * per, per);
            let data = match Storage::transposed(window, n_in, n_out, d.size_bytes()) {
                Ok(data) => data,
                Err(msg) => {
                    self.problems.push(format!("{origin}[{e}]: {msg}"));
                    return;
                }
            };
            let q = QuantTensor {
                shape: vec![n_out, n_in],
                format: TensorFormat::Dense(d),
                data,
            };
            let name = canon::expert(layer, e, proj.canonical(Part::Weight));
            self.put(
                name,
                q,
                format!("{origin}[{e}] (transposed from [in, out])"),
            );
        }
    }

    pub(super) fn stacked_bias(&mut self, layer: usize, proj: Proj, src: Src) {
        let Some((t, origin)) = self.tensor(src) else {
            return;
        };
        let [n_exp, n_out] = t.shape[..] else {
            self.problems.push(format!(
                "{origin}: expected [E, out] expert biases, found {:?}",
                t.shape
            ));
            return;
        };
        if !self.experts_match(Some(&n_exp), &origin) {
            return;
        }
        for e in 0..n_exp {
            match super::rows::split_rows(&t, n_out, e, 1, vec![n_out]) {
                Ok(b) => self.put(
                    canon::expert(layer, e, proj.canonical(Part::Bias)),
                    b,
                    format!("{origin}[{e}]"),
                ),
                Err(msg) => self.problems.push(format!("{origin}: {msg}")),
            }
        }
    }
}

/// One `[rows, G*32]` MXFP4 view per expert of a stacked blocks/scales pair.
fn mxfp4_experts(blocks: &RawTensor, scales: &RawTensor) -> Result<Vec<QuantTensor>, String> {
    let (n_exp, rows, groups) = match (blocks.shape.as_slice(), scales.shape.as_slice()) {
        ([e, r, g, 16], [e2, r2, g2]) if (e, r, g) == (e2, r2, g2) => (*e, *r, *g),
        _ => {
            return Err(format!(
                "{}: expected blocks [E, rows, G, 16] and scales [E, rows, G], found {:?} and {:?} ({})",
                blocks.origin(),
                blocks.shape,
                scales.shape,
                scales.name
            ))
        }
    };
    for t in [blocks, scales] {
        if t.dtype != "U8" {
            return Err(t.bad_dtype("U8 (MXFP4 codes / E8M0 scales)"));
        }
    }
    let whole = QuantTensor::hf_mxfp4(
        vec![n_exp * rows, groups * MX_BLOCK],
        blocks.data.clone(),
        scales.data.clone(),
    );
    whole
        .validate(&blocks.file, &blocks.name)
        .map_err(|e| e.to_string())?;
    Ok((0..n_exp)
        .map(|e| whole.rows(e * rows, rows, vec![rows, groups * MX_BLOCK]))
        .collect())
}
