//! `convert --dry-run` (and `inspect --convert-to`): what a conversion will write, per tensor group
//! (layer numbers folded to `*`): source format → output type, tensor count and bytes.

use std::collections::BTreeMap;

use anyhow::Result;
use gptoss_formats::gguf;
use gptoss_formats::st;
use gptoss_formats::ModelWeights;

use super::{DenseType, ExpertsArg, Target};
use crate::inspect::human_bytes;

/// `12.3 GiB`-style sizes.
pub fn human(bytes: usize) -> String {
    human_bytes(bytes)
}

/// A plan row's key: tensor group, source format, output type.
type GroupKey = (String, String, String);

/// A tensor name with its layer number replaced by `*`.
fn group(name: &str) -> String {
    name.split('.')
        .map(|part| {
            if !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) {
                "*"
            } else {
                part
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// Prints the plan of converting `weights` to `target`.
pub fn print_plan(
    weights: &ModelWeights,
    target: Target,
    dense: DenseType,
    experts: ExpertsArg,
) -> Result<()> {
    // (group, source, output) → (tensors, bytes), in first-seen order.
    let mut rows: Vec<(GroupKey, (usize, usize))> = Vec::new();
    let mut index: BTreeMap<GroupKey, usize> = BTreeMap::new();
    let mut add = |name: &str, source: String, out: String, bytes: usize| {
        let key = (group(name), source, out);
        let at = *index.entry(key.clone()).or_insert_with(|| {
            rows.push((key, (0, 0)));
            rows.len() - 1
        });
        if let Some((_, (n, b))) = rows.get_mut(at) {
            *n += 1;
            *b += bytes;
        }
    };
    let mut notes = Vec::new();
    match target {
        Target::Gguf => {
            let (entries, n) = gguf::plan_model(weights, dense.out_type(), experts.expert_type())?;
            notes = n;
            for e in &entries {
                add(&e.name, e.source.clone(), e.ty.name().to_string(), e.bytes);
            }
        }
        Target::HfMxfp4 => {
            for t in st::writer::plan(weights)? {
                add(
                    &t.name,
                    t.source_desc(),
                    t.dtype.to_string(),
                    t.size_bytes(),
                );
            }
        }
    }
    let total: usize = rows.iter().map(|(_, (_, b))| b).sum();
    let count: usize = rows.iter().map(|(_, (n, _))| n).sum();
    let width = rows.iter().map(|((g, _, _), _)| g.len()).max().unwrap_or(0);
    println!(
        "conversion plan ({target:?}): {count} tensors, {}",
        human(total)
    );
    println!(
        "  {:<width$} {:>7}  {:<24} {:<6} {:>12}",
        "tensor group", "tensors", "source", "output", "bytes"
    );
    for ((g, src, out), (n, b)) in &rows {
        println!("  {g:<width$} {n:>7}  {src:<24} {out:<6} {:>12}", human(*b));
    }
    println!("{}", memory_line(weights));
    for n in notes {
        println!("note: {n}");
    }
    Ok(())
}

/// What the conversion holds in memory: tensors stream one at a time, and only those the source
/// does not store as such (a transpose, a gate/up interleave) are built, one at a time.
fn memory_line(weights: &ModelWeights) -> String {
    let (mut built, mut largest) = (0usize, 0usize);
    weights.for_each_tensor(|_, t| {
        let lazy = match &t.format {
            gptoss_formats::TensorFormat::Lut4(gptoss_formats::Lut4 {
                scales: gptoss_formats::Lut4Scales::Separate { data, .. },
                ..
            }) => t.data.is_lazy() || data.is_lazy(),
            _ => t.data.is_lazy(),
        };
        if lazy {
            built += 1;
            largest = largest.max(t.size_bytes());
        }
    });
    if built == 0 {
        return "memory: every tensor is streamed from the source files (no tensor is built in memory)"
            .into();
    }
    format!(
        "memory: {built} tensors are built from the source's layout one at a time; peak ≈ {} (the largest) + ~2 MiB of buffers",
        human(largest)
    )
}
