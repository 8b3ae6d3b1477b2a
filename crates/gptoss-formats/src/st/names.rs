//! The name map of every safetensors layout (spec §2a–§2d): each stored name pattern, what it becomes
//! in canonical form, and which naming family and expert layout it belongs to (for detection, §6).
//! Source names appear only here.

/// Which expert projection a stacked or split tensor holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Proj {
    /// `gate_up` (`[2I, H]` canonical, rows interleaved).
    GateUp,
    /// `down` (`[H, I]` canonical).
    Down,
}

impl Proj {
    /// Canonical `what` for a weight or bias of this projection.
    pub fn canonical(self, part: Part) -> &'static str {
        match (self, part) {
            (Proj::GateUp, Part::Weight) => "gate_up.weight",
            (Proj::GateUp, Part::Bias) => "gate_up.bias",
            (Proj::Down, Part::Weight) => "down.weight",
            (Proj::Down, Part::Bias) => "down.bias",
        }
    }
}

/// Weight or bias of a linear.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Part {
    /// `[out, in]`.
    Weight,
    /// `[out]`.
    Bias,
}

/// One half of a split gate/up pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Half {
    /// Gate rows (even rows of the canonical gate_up).
    Gate,
    /// Up rows (odd rows).
    Up,
}

/// What a stored tensor becomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// A global canonical tensor (`embed`, `norm`, `lm_head`).
    Global(&'static str),
    /// `layers.{L}.<what>`.
    Layer(&'static str),
    /// `layers.{L}.experts.{E}.<what>`, stored per expert in canonical orientation.
    Expert(&'static str),
    /// Gate or up half of expert `{E}`, interleaved into gate_up after all are read.
    ExpertHalf(Half, Part),
    /// OpenAI fused `attn.qkv`, split by rows into q, k, v.
    Qkv(Part),
    /// MXFP4 codes `[E, rows, G, 16]` U8.
    StackedBlocks(Proj),
    /// MXFP4 E8M0 scales `[E, rows, G]` U8.
    StackedScales(Proj),
    /// Dense `[E, in, out]`: transposed per expert.
    StackedDense(Proj),
    /// `[E, out]` biases of all experts.
    StackedBias(Proj),
}

/// Naming of the non-expert tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Naming {
    /// HF `model.layers.N.self_attn...`.
    Hf,
    /// OpenAI `block.N.attn...`.
    Original,
}

/// How the experts are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum ExpertLayout {
    /// Stacked `_blocks`/`_scales` (§2a, §2a').
    Mxfp4,
    /// Stacked dense `[E, in, out]` (§2b).
    Dense,
    /// `gate_up_projs.{e}` (§2c, §2d row 1).
    Projs,
    /// `gate_up_proj.weights.{e}` (§2d row 2).
    ProjWeights,
    /// `gate_proj.weights.{e}` + `up_proj.weights.{e}` (§2d row 3).
    GateUpWeights,
    /// `{e}.gate_proj` (§2d row 4).
    Mixtral,
}

impl ExpertLayout {
    /// The pattern as `inspect` shows it.
    pub fn describe(self) -> &'static str {
        match self {
            ExpertLayout::Mxfp4 => "mlp.experts.gate_up_proj_blocks/_scales (MXFP4)",
            ExpertLayout::Dense => "mlp.experts.gate_up_proj [E, in, out]",
            ExpertLayout::Projs => "mlp.experts.gate_up_projs.{e}",
            ExpertLayout::ProjWeights => "mlp.experts.gate_up_proj.weights.{e}",
            ExpertLayout::GateUpWeights => "mlp.experts.gate_proj/up_proj.weights.{e}",
            ExpertLayout::Mixtral => "mlp.experts.{e}.gate_proj",
        }
    }
}

/// One stored-name pattern: `.`-separated segments, `{L}` a layer index, `{E}` an expert index.
pub(crate) struct Pattern {
    /// The pattern text.
    pub text: &'static str,
    /// What a match becomes.
    pub action: Action,
    /// Naming family, if the name tells.
    pub naming: Option<Naming>,
    /// Expert layouts the name is consistent with (empty: not an expert tensor).
    pub experts: &'static [ExpertLayout],
}

/// A name matched against the table.
pub(crate) struct Matched {
    /// The pattern it matched.
    pub pattern: &'static Pattern,
    /// `{L}`, when the pattern has one.
    pub layer: usize,
    /// `{E}`, when the pattern has one.
    pub expert: usize,
}

use Action::*;
use ExpertLayout as X;
use Part::{Bias, Weight};
use Proj::{Down, GateUp};

const fn p(
    text: &'static str,
    action: Action,
    naming: Option<Naming>,
    experts: &'static [ExpertLayout],
) -> Pattern {
    Pattern {
        text,
        action,
        naming,
        experts,
    }
}

const HF: Option<Naming> = Some(Naming::Hf);
const OAI: Option<Naming> = Some(Naming::Original);
const NONE: &[ExpertLayout] = &[];

/// Every known name.
#[rustfmt::skip]
pub(crate) static PATTERNS: &[Pattern] = &[
    // HF names (§2a), shared by every HF layout.
    p("model.embed_tokens.weight", Global("embed"), HF, NONE),
    p("model.norm.weight", Global("norm"), HF, NONE),
    p("lm_head.weight", Global("lm_head"), HF, NONE),
    p("model.layers.{L}.input_layernorm.weight", Layer("attn_norm"), HF, NONE),
    p("model.layers.{L}.post_attention_layernorm.weight", Layer("mlp_norm"), HF, NONE),
    p("model.layers.{L}.self_attn.q_proj.weight", Layer("q.weight"), HF, NONE),
    p("model.layers.{L}.self_attn.q_proj.bias", Layer("q.bias"), HF, NONE),
    p("model.layers.{L}.self_attn.k_proj.weight", Layer("k.weight"), HF, NONE),
    p("model.layers.{L}.self_attn.k_proj.bias", Layer("k.bias"), HF, NONE),
    p("model.layers.{L}.self_attn.v_proj.weight", Layer("v.weight"), HF, NONE),
    p("model.layers.{L}.self_attn.v_proj.bias", Layer("v.bias"), HF, NONE),
    p("model.layers.{L}.self_attn.o_proj.weight", Layer("o.weight"), HF, NONE),
    p("model.layers.{L}.self_attn.o_proj.bias", Layer("o.bias"), HF, NONE),
    p("model.layers.{L}.self_attn.sinks", Layer("sinks"), HF, NONE),
    p("model.layers.{L}.mlp.router.weight", Layer("router.weight"), HF, NONE),
    p("model.layers.{L}.mlp.router.bias", Layer("router.bias"), HF, NONE),
    p("model.layers.{L}.mlp.router.linear.weight", Layer("router.weight"), HF, NONE),
    p("model.layers.{L}.mlp.router.linear.bias", Layer("router.bias"), HF, NONE),
    // HF stacked experts: MXFP4 (§2a) and dense [E, in, out] (§2b); the biases are common to both.
    p("model.layers.{L}.mlp.experts.gate_up_proj_blocks", StackedBlocks(GateUp), HF, &[X::Mxfp4]),
    p("model.layers.{L}.mlp.experts.gate_up_proj_scales", StackedScales(GateUp), HF, &[X::Mxfp4]),
    p("model.layers.{L}.mlp.experts.down_proj_blocks", StackedBlocks(Down), HF, &[X::Mxfp4]),
    p("model.layers.{L}.mlp.experts.down_proj_scales", StackedScales(Down), HF, &[X::Mxfp4]),
    p("model.layers.{L}.mlp.experts.gate_up_proj", StackedDense(GateUp), HF, &[X::Dense]),
    p("model.layers.{L}.mlp.experts.down_proj", StackedDense(Down), HF, &[X::Dense]),
    p("model.layers.{L}.mlp.experts.gate_up_proj_bias", StackedBias(GateUp), HF, &[X::Mxfp4, X::Dense]),
    p("model.layers.{L}.mlp.experts.down_proj_bias", StackedBias(Down), HF, &[X::Mxfp4, X::Dense]),
    // Per-expert Linears (§2c, §2d), `[out, in]`.
    p("model.layers.{L}.mlp.experts.gate_up_projs.{E}.weight", Expert("gate_up.weight"), HF, &[X::Projs]),
    p("model.layers.{L}.mlp.experts.gate_up_projs.{E}.bias", Expert("gate_up.bias"), HF, &[X::Projs]),
    p("model.layers.{L}.mlp.experts.down_projs.{E}.weight", Expert("down.weight"), HF, &[X::Projs]),
    p("model.layers.{L}.mlp.experts.down_projs.{E}.bias", Expert("down.bias"), HF, &[X::Projs]),
    p("model.layers.{L}.mlp.experts.gate_up_proj.weights.{E}.weight", Expert("gate_up.weight"), HF, &[X::ProjWeights]),
    p("model.layers.{L}.mlp.experts.gate_up_proj.weights.{E}.bias", Expert("gate_up.bias"), HF, &[X::ProjWeights]),
    p("model.layers.{L}.mlp.experts.down_proj.weights.{E}.weight", Expert("down.weight"), HF, &[X::ProjWeights, X::GateUpWeights]),
    p("model.layers.{L}.mlp.experts.down_proj.weights.{E}.bias", Expert("down.bias"), HF, &[X::ProjWeights, X::GateUpWeights]),
    p("model.layers.{L}.mlp.experts.gate_proj.weights.{E}.weight", ExpertHalf(Half::Gate, Weight), HF, &[X::GateUpWeights]),
    p("model.layers.{L}.mlp.experts.gate_proj.weights.{E}.bias", ExpertHalf(Half::Gate, Bias), HF, &[X::GateUpWeights]),
    p("model.layers.{L}.mlp.experts.up_proj.weights.{E}.weight", ExpertHalf(Half::Up, Weight), HF, &[X::GateUpWeights]),
    p("model.layers.{L}.mlp.experts.up_proj.weights.{E}.bias", ExpertHalf(Half::Up, Bias), HF, &[X::GateUpWeights]),
    p("model.layers.{L}.mlp.experts.{E}.gate_proj.weight", ExpertHalf(Half::Gate, Weight), HF, &[X::Mixtral]),
    p("model.layers.{L}.mlp.experts.{E}.gate_proj.bias", ExpertHalf(Half::Gate, Bias), HF, &[X::Mixtral]),
    p("model.layers.{L}.mlp.experts.{E}.up_proj.weight", ExpertHalf(Half::Up, Weight), HF, &[X::Mixtral]),
    p("model.layers.{L}.mlp.experts.{E}.up_proj.bias", ExpertHalf(Half::Up, Bias), HF, &[X::Mixtral]),
    p("model.layers.{L}.mlp.experts.{E}.down_proj.weight", Expert("down.weight"), HF, &[X::Mixtral]),
    p("model.layers.{L}.mlp.experts.{E}.down_proj.bias", Expert("down.bias"), HF, &[X::Mixtral]),
    // OpenAI original/ (§2a').
    p("embedding.weight", Global("embed"), OAI, NONE),
    p("norm.scale", Global("norm"), OAI, NONE),
    p("unembedding.weight", Global("lm_head"), OAI, NONE),
    p("block.{L}.attn.norm.scale", Layer("attn_norm"), OAI, NONE),
    p("block.{L}.attn.qkv.weight", Qkv(Weight), OAI, NONE),
    p("block.{L}.attn.qkv.bias", Qkv(Bias), OAI, NONE),
    p("block.{L}.attn.sinks", Layer("sinks"), OAI, NONE),
    p("block.{L}.attn.out.weight", Layer("o.weight"), OAI, NONE),
    p("block.{L}.attn.out.bias", Layer("o.bias"), OAI, NONE),
    p("block.{L}.mlp.norm.scale", Layer("mlp_norm"), OAI, NONE),
    p("block.{L}.mlp.gate.weight", Layer("router.weight"), OAI, NONE),
    p("block.{L}.mlp.gate.bias", Layer("router.bias"), OAI, NONE),
    p("block.{L}.mlp.mlp1_weight.blocks", StackedBlocks(GateUp), OAI, &[X::Mxfp4]),
    p("block.{L}.mlp.mlp1_weight.scales", StackedScales(GateUp), OAI, &[X::Mxfp4]),
    p("block.{L}.mlp.mlp1_bias", StackedBias(GateUp), OAI, &[X::Mxfp4]),
    p("block.{L}.mlp.mlp2_weight.blocks", StackedBlocks(Down), OAI, &[X::Mxfp4]),
    p("block.{L}.mlp.mlp2_weight.scales", StackedScales(Down), OAI, &[X::Mxfp4]),
    p("block.{L}.mlp.mlp2_bias", StackedBias(Down), OAI, &[X::Mxfp4]),
];

/// Matches a stored name against the table.
pub(crate) fn classify(name: &str) -> Option<Matched> {
    PATTERNS.iter().find_map(|pat| matches(pat, name))
}

fn matches(pat: &'static Pattern, name: &str) -> Option<Matched> {
    let mut m = Matched {
        pattern: pat,
        layer: 0,
        expert: 0,
    };
    let mut segs = name.split('.');
    for want in pat.text.split('.') {
        let got = segs.next()?;
        match want {
            "{L}" => m.layer = index(got)?,
            "{E}" => m.expert = index(got)?,
            _ if want == got => {}
            _ => return None,
        }
    }
    segs.next().is_none().then_some(m)
}

/// A decimal index without sign or leading zeros (so `01` is not silently the same as `1`).
fn index(s: &str) -> Option<usize> {
    let ok =
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    if ok {
        s.parse().ok()
    } else {
        None
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn every_pattern_matches_itself_and_no_earlier_pattern_shadows_it() {
        for (i, pat) in PATTERNS.iter().enumerate() {
            let name = pat.text.replace("{L}", "3").replace("{E}", "12");
            let m = classify(&name).unwrap();
            assert!(
                std::ptr::eq(m.pattern, &PATTERNS[i]),
                "{name} matched {}",
                m.pattern.text
            );
            if pat.text.contains("{L}") {
                assert_eq!(m.layer, 3);
            }
            if pat.text.contains("{E}") {
                assert_eq!(m.expert, 12);
            }
        }
    }

    #[test]
    fn near_misses_do_not_match() {
        for name in [
            "model.layers.x.self_attn.q_proj.weight",
            "model.layers.01.self_attn.q_proj.weight",
            "model.layers.1.self_attn.q_proj.weight.extra",
            "model.layers.1.self_attn.q_proj",
            "model.layers.1.mlp.experts.gate_up_projs.a.weight",
            "layers.1.self_attn.q_proj.weight",
        ] {
            assert!(classify(name).is_none(), "{name}");
        }
    }
}
