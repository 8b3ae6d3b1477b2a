//! Stacked GGUF expert tensors → canonical per-expert tensors (spec §3.3, §3.4). `down` is split
//! per expert zero-copy; gate and up (separate, or fused as [all gate rows; all up rows]) become the
//! canonical interleaved gate_up (row 2j = gate_j, row 2j+1 = up_j), a lazy interleave of the two
//! mmap windows that is built only when a consumer reads it.

use std::collections::BTreeMap;

use crate::tensor::{Lut4Scales, QuantTensor, Storage, TensorFormat};
use crate::weights::{names, TensorMap};

use super::names::{ExpertProj, Part};

/// A stacked tensor and where it came from (`file: name`).
type Sourced = (QuantTensor, String);

/// The stacked expert tensors of one layer and part (weight or bias).
#[derive(Default)]
struct Stacks {
    by_proj: BTreeMap<ExpertProj, Sourced>,
}

/// Every stacked expert tensor of a file, gathered before splitting.
#[derive(Default)]
pub struct ExpertStacks {
    stacks: BTreeMap<(usize, Part), Stacks>,
}

impl ExpertStacks {
    /// Records one stacked tensor.
    pub fn add(
        &mut self,
        layer: usize,
        proj: ExpertProj,
        part: Part,
        tensor: QuantTensor,
        origin: String,
    ) {
        self.stacks
            .entry((layer, part))
            .or_default()
            .by_proj
            .insert(proj, (tensor, origin));
    }

    /// Splits every stack into canonical per-expert tensors in `out`; problems go to `problems`. Each
    /// stack must hold the config's `experts` (checked before any per-expert entry is made, so the
    /// outer dimension of a file's tensor never sizes a loop by itself).
    pub fn split_into(self, out: &mut TensorMap, problems: &mut Vec<String>, experts: usize) {
        for ((layer, part), mut s) in self.stacks {
            let wrong: Vec<String> = s
                .by_proj
                .values()
                .filter(|(t, _)| t.shape.first() != Some(&experts))
                .map(|(t, origin)| {
                    format!(
                        "{origin}: stacks {:?} experts, the config has {experts}",
                        t.shape.first()
                    )
                })
                .collect();
            if !wrong.is_empty() {
                problems.extend(wrong);
                continue;
            }
            if let Some((t, origin)) = s.by_proj.remove(&ExpertProj::Down) {
                let what = format!("down.{}", part.suffix());
                match per_expert(&t, part, &origin) {
                    Ok(experts) => {
                        for (e, x) in experts.into_iter().enumerate() {
                            out.insert(
                                names::expert(layer, e, &what),
                                x,
                                format!("{origin} [expert {e}]"),
                            );
                        }
                    }
                    Err(p) => problems.push(p),
                }
            }
            if let Err(p) = gate_up(layer, part, s.by_proj, out) {
                problems.push(p);
            }
        }
    }
}

/// Checks the rank of a stacked tensor and returns `(experts, shape of one expert)`.
fn stack_dims(t: &QuantTensor, part: Part, origin: &str) -> Result<(usize, Vec<usize>), String> {
    let rank = match part {
        Part::Weight => 3,
        Part::Bias => 2,
    };
    if t.shape.len() != rank {
        let want = if rank == 3 {
            "[experts, rows, cols]"
        } else {
            "[experts, rows]"
        };
        return Err(format!(
            "{origin}: expected a {rank}-D stacked tensor {want}, found {:?}",
            t.shape
        ));
    }
    if let TensorFormat::Lut4(l) = &t.format {
        if matches!(l.scales, Lut4Scales::Separate { .. }) {
            return Err(format!(
                "{origin}: separate-scale LUT4 cannot be split by bytes"
            ));
        }
    }
    Ok((t.shape[0], t.shape[1..].to_vec()))
}

/// Zero-copy windows of each expert of a stacked tensor (each expert is whole rows of whole blocks).
fn per_expert(t: &QuantTensor, part: Part, origin: &str) -> Result<Vec<QuantTensor>, String> {
    let (e_count, inner) = stack_dims(t, part, origin)?;
    if e_count == 0 {
        return Ok(Vec::new());
    }
    let per = t.data.len() / e_count;
    if per * e_count != t.data.len() {
        return Err(format!(
            "{origin}: {} bytes do not split into {e_count} experts",
            t.data.len()
        ));
    }
    Ok((0..e_count)
        .map(|e| QuantTensor {
            shape: inner.clone(),
            format: t.format.clone(),
            data: t.data.slice(e * per, per),
        })
        .collect())
}

/// True when two formats store elements identically (so their rows can be mixed).
fn same_format(a: &TensorFormat, b: &TensorFormat) -> bool {
    match (a, b) {
        (TensorFormat::Dense(x), TensorFormat::Dense(y)) => x == y,
        (TensorFormat::Q8_0, TensorFormat::Q8_0) => true,
        (TensorFormat::Lut4(x), TensorFormat::Lut4(y)) => {
            let inline = |l: &crate::tensor::Lut4| match l.scales {
                Lut4Scales::Inline { format } => Some(format),
                Lut4Scales::Separate { .. } => None,
            };
            x.table == y.table
                && x.block_elems == y.block_elems
                && x.nibbles == y.nibbles
                && x.round_to == y.round_to
                && inline(x).is_some()
                && inline(x) == inline(y)
        }
        _ => false,
    }
}

/// One expert's gate and up halves, before interleaving.
struct Halves {
    gate: Storage,
    up: Storage,
    format: TensorFormat,
    /// The interleaved result's shape: `[2I, H]` or `[2I]`.
    shape: Vec<usize>,
    origin: String,
}

/// Splits fused or separate gate/up stacks of one layer and part into per-expert halves.
fn expert_halves(
    layer: usize,
    part: Part,
    mut by: BTreeMap<ExpertProj, Sourced>,
) -> Result<Vec<Halves>, String> {
    let fused = by.remove(&ExpertProj::GateUpFused);
    let (gate, up) = (by.remove(&ExpertProj::Gate), by.remove(&ExpertProj::Up));
    match (fused, gate, up) {
        (None, None, None) => Ok(Vec::new()),
        (Some((t, origin)), None, None) => {
            if t.shape.get(1).is_some_and(|rows| rows % 2 != 0) {
                return Err(format!(
                    "{origin}: fused gate/up has an odd row count {:?}",
                    t.shape
                ));
            }
            let halves = per_expert(&t, part, &origin)?.into_iter().map(|x| {
                let half = x.data.len() / 2;
                let (gate, up) = (x.data.slice(0, half), x.data.slice(half, half));
                Halves {
                    gate,
                    up,
                    format: x.format,
                    shape: x.shape,
                    origin: origin.clone(),
                }
            });
            Ok(halves.collect())
        }
        (None, Some((g, go)), Some((u, uo))) => {
            if g.shape != u.shape || !same_format(&g.format, &u.format) {
                let (gf, uf) = (g.format.describe(), u.format.describe());
                let (gs, us) = (&g.shape, &u.shape);
                return Err(format!(
                    "{go} is {gs:?} {gf} but {uo} is {us:?} {uf}: gate and up must match"
                ));
            }
            let origin = format!("{go} + {uo}");
            let (gs, us) = (per_expert(&g, part, &go)?, per_expert(&u, part, &uo)?);
            let halves = gs.into_iter().zip(us).map(|(g, u)| {
                let mut shape = g.shape.clone();
                shape[0] *= 2;
                Halves {
                    gate: g.data,
                    up: u.data,
                    format: g.format,
                    shape,
                    origin: origin.clone(),
                }
            });
            Ok(halves.collect())
        }
        (Some((_, fo)), _, _) => Err(format!(
            "{fo}: layer {layer} has both fused and separate gate/up experts"
        )),
        (None, Some((_, o)), None) | (None, None, Some((_, o))) => Err(format!(
            "{o}: layer {layer} has only one of ffn_gate_exps / ffn_up_exps"
        )),
    }
}

/// Builds canonical `gate_up` per expert from separate or fused stacks of one layer and part.
fn gate_up(
    layer: usize,
    part: Part,
    by: BTreeMap<ExpertProj, Sourced>,
    out: &mut TensorMap,
) -> Result<(), String> {
    let what = format!("gate_up.{}", part.suffix());
    for (e, h) in expert_halves(layer, part, by)?.into_iter().enumerate() {
        // Units are rows of a weight, single elements of a bias: `shape[0] / 2` of each half.
        let per_unit = h.gate.len() / (h.shape[0] / 2).max(1);
        let data = Storage::interleaved(h.gate, h.up, per_unit)
            .map_err(|msg| format!("{} [expert {e}]: gate/up: {msg}", h.origin))?;
        let t = QuantTensor {
            shape: h.shape,
            format: h.format,
            data,
        };
        out.insert(
            names::expert(layer, e, &what),
            t,
            format!("{} [expert {e}]", h.origin),
        );
    }
    Ok(())
}
