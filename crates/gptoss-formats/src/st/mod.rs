//! Safetensors layouts (spec §2, §6): HF MXFP4, OpenAI `original/`, HF dense, per-expert splits and
//! bitsandbytes 4-bit, read into canonical tensors. Files are memory-mapped and tensors stay zero-copy
//! windows wherever the layout allows; every name that matches no known pattern is reported.
//! [`write_hf_mxfp4`] writes canonical weights back out in the `openai/gpt-oss` layout.

mod bnb;
mod bnb_state;
mod files;
mod header;
mod hf;
mod names;
mod original;
mod per_expert;
mod rows;
pub mod writer;
pub mod writer_config;
mod writer_encode;

use std::collections::BTreeMap;
use std::path::Path;

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::tensor::QuantTensor;
use crate::weights::{names as canon, TensorMap};
use crate::{Layout, RawCheckpoint, SourceTensor};

use files::RawTensor;
pub use header::{parse_header, HeaderEntry, MAX_DIMS, MAX_HEADER_BYTES};
pub use writer::{
    write_hf_mxfp4, write_hf_mxfp4_with_files, Existing, HfWriteOptions, HfWriteReport,
    DEFAULT_SHARD_BYTES,
};

use names::{Action, ExpertLayout, Matched, Naming};

/// Reads a safetensors checkpoint (directory or file) into canonical tensors.
pub fn read_checkpoint(path: &Path) -> Result<RawCheckpoint> {
    let src = files::open(path)?;
    let config = ModelConfig::from_json_file(&src.config_path)?;
    let source_tensors = src
        .tensors
        .iter()
        .map(|t| SourceTensor {
            name: t.name.clone(),
            dtype: t.dtype.clone(),
            shape: t.shape.clone(),
            size_bytes: t.data.len(),
        })
        .collect();
    let mut b = Builder::new(&config);
    let (matched, bnb_present) = b.gather(src.tensors);
    let layout = detect(&matched, bnb_present);
    let desc = path.display().to_string();
    let layout = match layout {
        Ok(l) if b.problems.is_empty() => l,
        Ok(_) => return Err(tensors_error(desc, b.problems)),
        Err(e) => {
            b.problems.insert(0, e);
            return Err(tensors_error(desc, b.problems));
        }
    };
    for (m, src) in matched {
        b.apply(&m, src);
    }
    b.finish();
    if !b.problems.is_empty() {
        return Err(tensors_error(desc, b.problems));
    }
    let notes = b.counts.notes();
    let tensors = b.map;
    Ok(RawCheckpoint {
        layout,
        config,
        tensors,
        source_tensors,
        notes,
        vocab: None,
    })
}

fn tensors_error(source_desc: String, problems: Vec<String>) -> Error {
    Error::Tensors {
        source_desc,
        problems,
    }
}

/// Picks the layout from the matched names; mixed namings or expert layouts are an error.
fn detect(matched: &[(Matched, Src)], bnb: bool) -> std::result::Result<Layout, String> {
    let mut naming: [Option<String>; 2] = [None, None];
    let mut kinds: Vec<(&'static [ExpertLayout], String)> = Vec::new();
    for (m, src) in matched {
        if let Some(n) = m.pattern.naming {
            naming[usize::from(n == Naming::Original)].get_or_insert_with(|| src.origin());
        }
        let ex = m.pattern.experts;
        if !ex.is_empty() && !kinds.iter().any(|(k, _)| *k == ex) {
            kinds.push((ex, src.origin()));
        }
    }
    if let [Some(hf), Some(oai)] = &naming {
        return Err(format!(
            "mixes HF names ({hf}) with OpenAI original/ names ({oai})"
        ));
    }
    let all = [
        ExpertLayout::Mxfp4,
        ExpertLayout::Dense,
        ExpertLayout::Projs,
        ExpertLayout::ProjWeights,
        ExpertLayout::GateUpWeights,
        ExpertLayout::Mixtral,
    ];
    let fits: Vec<ExpertLayout> = all
        .into_iter()
        .filter(|x| kinds.iter().all(|(k, _)| k.contains(x)))
        .collect();
    let Some(&first) = fits.first() else {
        let list: Vec<String> = kinds
            .iter()
            .map(|(k, ex)| {
                format!(
                    "{ex} ({})",
                    k.iter()
                        .map(|x| x.describe())
                        .collect::<Vec<_>>()
                        .join(" or ")
                )
            })
            .collect();
        return Err(format!("mixes expert layouts: {}", list.join("; ")));
    };
    if kinds.is_empty() {
        let looked: Vec<&str> = all.iter().map(|x| x.describe()).collect();
        return Err(format!(
            "no expert tensors found (looked for {})",
            looked.join(", ")
        ));
    }
    Ok(if naming[1].is_some() {
        Layout::OpenAiOriginal
    } else if bnb {
        Layout::Bnb4bit
    } else {
        match first {
            ExpertLayout::Mxfp4 => Layout::HfMxfp4,
            ExpertLayout::Dense => Layout::HfDense,
            other => Layout::PerExpert(other.describe().to_string()),
        }
    })
}

/// A stored tensor, or a weight already rebuilt from several (bitsandbytes).
pub(crate) enum Src {
    /// As the header describes it.
    Raw(RawTensor),
    /// Rebuilt.
    Built {
        /// The tensor.
        tensor: QuantTensor,
        /// `file: name (...)`.
        origin: String,
    },
}

impl Src {
    /// `file: name`.
    pub fn origin(&self) -> String {
        match self {
            Src::Raw(t) => t.origin(),
            Src::Built { origin, .. } => origin.clone(),
        }
    }
}

/// Counts of conversions made at load, for `notes`.
#[derive(Default)]
pub(crate) struct Counts {
    f8: usize,
    transposed: usize,
    interleaved: usize,
    qkv_split: usize,
    bnb: usize,
    dq_expanded: usize,
    mxfp4: usize,
}

impl Counts {
    fn notes(&self) -> Vec<String> {
        let mut n = Vec::new();
        let mut add = |count: usize, text: &str| {
            if count > 0 {
                n.push(format!("{text}: {count}"));
            }
        };
        add(
            self.mxfp4,
            "stacked MXFP4 expert tensors kept packed, one zero-copy view per expert",
        );
        add(
            self.transposed,
            "dense experts transposed from [E, in, out] to [out, in] (lazily, one tensor at a time when read)",
        );
        add(
            self.interleaved,
            "separate gate/up interleaved into gate_up rows (lazily, one tensor at a time when read)",
        );
        add(
            self.qkv_split,
            "fused attn.qkv split into q/k/v by rows (zero-copy)",
        );
        add(
            self.bnb,
            "bitsandbytes 4-bit weights kept packed (LUT4, high nibble first, f32 block scales)",
        );
        add(
            self.dq_expanded,
            "bitsandbytes double-quantized absmax expanded to f32 at load",
        );
        add(
            self.f8,
            "F8_E5M2 tensors widened to bf16 (exact; lazily, when read)",
        );
        n
    }
}

/// Collects canonical tensors and problems while the matched names are applied.
pub(crate) struct Builder<'a> {
    config: &'a ModelConfig,
    map: TensorMap,
    problems: Vec<String>,
    counts: Counts,
    mxfp4: hf::PendingMxfp4,
    halves: per_expert::PendingHalves,
}

impl<'a> Builder<'a> {
    fn new(config: &'a ModelConfig) -> Self {
        Builder {
            config,
            map: TensorMap::default(),
            problems: Vec::new(),
            counts: Counts::default(),
            mxfp4: Default::default(),
            halves: Default::default(),
        }
    }

    /// Adds a canonical tensor; a second tensor for the same name is a problem naming both.
    pub(crate) fn put(&mut self, name: String, tensor: QuantTensor, origin: String) {
        if let Some((_, prev)) = self.map.tensors.get(&name) {
            self.problems
                .push(format!("{origin} and {prev} both map to `{name}`"));
        } else {
            self.map.insert(name, tensor, origin);
        }
    }

    /// The tensor as a float (or rebuilt quantized) tensor, or `None` with the problem recorded.
    pub(crate) fn tensor(&mut self, src: Src) -> Option<(QuantTensor, String)> {
        match src {
            Src::Built { tensor, origin } => Some((tensor, origin)),
            Src::Raw(t) => match files::dense(&t, &mut self.counts.f8) {
                Ok(q) => Some((q, t.origin())),
                Err(e) => {
                    self.problems.push(e);
                    None
                }
            },
        }
    }

    /// Drops duplicates, rebuilds bitsandbytes weights and matches every name; unknown names become
    /// problems. Returns the matched tensors and whether any bitsandbytes weight was found.
    fn gather(&mut self, tensors: Vec<RawTensor>) -> (Vec<(Matched, Src)>, bool) {
        let mut raw: BTreeMap<String, RawTensor> = BTreeMap::new();
        for t in tensors {
            match raw.get(&t.name) {
                Some(prev) => {
                    self.problems
                        .push(format!("{} duplicates {}", t.origin(), prev.origin()))
                }
                None => {
                    raw.insert(t.name.clone(), t);
                }
            }
        }
        let bnb = bnb::extract(&mut raw, &mut self.problems);
        let bnb_present = !bnb.is_empty();
        let mut items = Vec::with_capacity(raw.len() + bnb.len());
        for w in bnb {
            self.counts.bnb += 1;
            self.counts.dq_expanded += usize::from(w.expanded_absmax);
            let src = Src::Built {
                tensor: w.tensor,
                origin: w.origin,
            };
            items.push((w.name, src));
        }
        items.extend(raw.into_iter().map(|(n, t)| (n, Src::Raw(t))));
        let mut matched = Vec::with_capacity(items.len());
        for (name, src) in items {
            match names::classify(&name) {
                Some(m) => matched.push((m, src)),
                None => self
                    .problems
                    .push(format!("{}: not a known gpt-oss tensor name", src.origin())),
            }
        }
        (matched, bnb_present)
    }

    fn apply(&mut self, m: &Matched, src: Src) {
        let (l, e) = (m.layer, m.expert);
        match m.pattern.action {
            Action::Global(what) => self.direct(what.to_string(), src),
            Action::Layer(what) => self.direct(canon::layer(l, what), src),
            Action::Expert(what) => self.direct(canon::expert(l, e, what), src),
            Action::ExpertHalf(half, part) => self.add_half(l, e, half, part, src),
            Action::Qkv(part) => self.split_qkv(l, part, src),
            Action::StackedBlocks(proj) => self.add_mxfp4(l, proj, hf::Piece::Blocks, src),
            Action::StackedScales(proj) => self.add_mxfp4(l, proj, hf::Piece::Scales, src),
            Action::StackedDense(proj) => self.stacked_dense(l, proj, src),
            Action::StackedBias(proj) => self.stacked_bias(l, proj, src),
        }
    }

    fn direct(&mut self, name: String, src: Src) {
        if let Some((t, origin)) = self.tensor(src) {
            self.put(name, t, origin);
        }
    }

    fn finish(&mut self) {
        self.finish_mxfp4();
        self.finish_halves();
    }
}
