//! GGUF tensor names (llama.cpp's gpt-oss table, spec §3.3) ↔ canonical names. One table serves
//! the reader and the writer; expert tensors are classified here and split in [`super::experts`].

use crate::weights::names;

/// GGUF name of the token embedding.
pub const TOKEN_EMBD: &str = "token_embd.weight";
/// GGUF name of the final norm.
pub const OUTPUT_NORM: &str = "output_norm.weight";
/// GGUF name of the unembedding.
pub const OUTPUT: &str = "output.weight";

/// Per-layer tensors that map one-to-one: (GGUF suffix after `blk.N.`, canonical suffix after `layers.N.`).
pub const LAYER_TABLE: [(&str, &str); 14] = [
    ("attn_norm.weight", "attn_norm"),
    ("attn_q.weight", "q.weight"),
    ("attn_q.bias", "q.bias"),
    ("attn_k.weight", "k.weight"),
    ("attn_k.bias", "k.bias"),
    ("attn_v.weight", "v.weight"),
    ("attn_v.bias", "v.bias"),
    ("attn_output.weight", "o.weight"),
    ("attn_output.bias", "o.bias"),
    ("attn_sinks.weight", "sinks"),
    // HF's post_attention_layernorm: the norm before the MoE block.
    ("post_attention_norm.weight", "mlp_norm"),
    ("ffn_gate_inp.weight", "router.weight"),
    ("ffn_gate_inp.bias", "router.bias"),
    // Some writers omit the `.weight` llama.cpp's converter appends to `sinks`.
    ("attn_sinks", "sinks"),
];

/// Which stacked expert tensor a name is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ExpertProj {
    /// `ffn_gate_exps` `[E, I, H]`.
    Gate,
    /// `ffn_up_exps` `[E, I, H]`.
    Up,
    /// `ffn_gate_up_exps` `[E, 2I, H]`: all gate rows, then all up rows.
    GateUpFused,
    /// `ffn_down_exps` `[E, H, I]`.
    Down,
}

/// Weight or bias of an expert projection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Part {
    /// `.weight`: `[E, rows, cols]`.
    Weight,
    /// `.bias`: `[E, rows]`.
    Bias,
}

impl Part {
    /// The suffix (`weight` / `bias`).
    pub fn suffix(self) -> &'static str {
        match self {
            Part::Weight => "weight",
            Part::Bias => "bias",
        }
    }
}

/// Stacked-expert names: (GGUF stem after `blk.N.`, projection).
pub const EXPERT_TABLE: [(&str, ExpertProj); 4] = [
    ("ffn_gate_exps", ExpertProj::Gate),
    ("ffn_up_exps", ExpertProj::Up),
    ("ffn_gate_up_exps", ExpertProj::GateUpFused),
    ("ffn_down_exps", ExpertProj::Down),
];

/// What a GGUF tensor name means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mapped {
    /// A tensor that becomes one canonical tensor as it is.
    Direct(String),
    /// A stacked expert tensor of a layer, split per expert later.
    Experts {
        /// Layer index.
        layer: usize,
        /// Which projection.
        proj: ExpertProj,
        /// Weight or bias.
        part: Part,
    },
}

/// Maps a GGUF tensor name; `None` for a name that is not part of a gpt-oss model.
pub fn map_name(name: &str) -> Option<Mapped> {
    match name {
        TOKEN_EMBD => return Some(Mapped::Direct(names::EMBED.into())),
        OUTPUT_NORM => return Some(Mapped::Direct(names::NORM.into())),
        OUTPUT => return Some(Mapped::Direct(names::LM_HEAD.into())),
        _ => {}
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer, suffix) = rest.split_once('.')?;
    if layer.is_empty() || !layer.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let layer: usize = layer.parse().ok()?;
    if let Some((_, canon)) = LAYER_TABLE.iter().find(|(g, _)| *g == suffix) {
        return Some(Mapped::Direct(names::layer(layer, canon)));
    }
    let (stem, part) = suffix.rsplit_once('.')?;
    let part = match part {
        "weight" => Part::Weight,
        "bias" => Part::Bias,
        _ => return None,
    };
    let (_, proj) = EXPERT_TABLE.iter().find(|(s, _)| *s == stem)?;
    Some(Mapped::Experts {
        layer,
        proj: *proj,
        part,
    })
}

/// The GGUF name of a per-layer canonical tensor (`layers.N.<what>`), for the writer.
pub fn gguf_layer_name(layer: usize, canonical_suffix: &str) -> Option<String> {
    LAYER_TABLE
        .iter()
        .find(|(g, c)| *c == canonical_suffix && g.contains('.'))
        .map(|(g, _)| format!("blk.{layer}.{g}"))
}

/// The GGUF name of a stacked expert tensor.
pub fn gguf_expert_name(layer: usize, proj: ExpertProj, part: Part) -> String {
    let stem = EXPERT_TABLE
        .iter()
        .find(|(_, p)| *p == proj)
        .map_or("ffn_down_exps", |(s, _)| s);
    format!("blk.{layer}.{stem}.{}", part.suffix())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_every_llama_cpp_name() {
        let direct = |n: &str| {
            map_name(n).and_then(|m| {
                if let Mapped::Direct(c) = m {
                    Some(c)
                } else {
                    None
                }
            })
        };
        assert_eq!(direct("token_embd.weight").as_deref(), Some("embed"));
        assert_eq!(direct("output.weight").as_deref(), Some("lm_head"));
        assert_eq!(direct("output_norm.weight").as_deref(), Some("norm"));
        assert_eq!(
            direct("blk.3.post_attention_norm.weight").as_deref(),
            Some("layers.3.mlp_norm")
        );
        assert_eq!(
            direct("blk.12.attn_sinks.weight").as_deref(),
            Some("layers.12.sinks")
        );
        assert_eq!(
            direct("blk.0.ffn_gate_inp.bias").as_deref(),
            Some("layers.0.router.bias")
        );
        assert_eq!(
            direct("blk.1.attn_output.weight").as_deref(),
            Some("layers.1.o.weight")
        );
        assert_eq!(
            map_name("blk.2.ffn_gate_up_exps.bias"),
            Some(Mapped::Experts {
                layer: 2,
                proj: ExpertProj::GateUpFused,
                part: Part::Bias
            })
        );
        for bad in [
            "blk.x.attn_q.weight",
            "blk.1.attn_qq.weight",
            "rope_freqs.weight",
            "blk.1.ffn_up_exps.scale",
        ] {
            assert_eq!(map_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn writer_names_round_trip() {
        for (_, canon) in LAYER_TABLE.iter().filter(|(g, _)| g.contains('.')) {
            let g = gguf_layer_name(7, canon).unwrap_or_default();
            assert_eq!(map_name(&g), Some(Mapped::Direct(names::layer(7, canon))));
        }
        for (_, proj) in EXPERT_TABLE {
            let g = gguf_expert_name(4, proj, Part::Weight);
            assert_eq!(
                map_name(&g),
                Some(Mapped::Experts {
                    layer: 4,
                    proj,
                    part: Part::Weight
                })
            );
        }
    }
}
