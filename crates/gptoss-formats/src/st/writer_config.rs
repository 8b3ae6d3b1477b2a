//! The non-tensor files of an HF MXFP4 checkpoint: `config.json` in the `openai/gpt-oss` form
//! (`quantization_config` mxfp4 with `modules_to_not_convert`, `layer_types`, `rope_scaling` yarn) and
//! the tokenizer files copied from the source directory.

use std::path::Path;

use serde_json::{json, Value};

use crate::config::{LayerType, ModelConfig};
use crate::error::{Error, Result};

/// Files copied verbatim from the source directory when present.
pub const TOKENIZER_FILES: [&str; 5] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "chat_template.jinja",
    "special_tokens_map.json",
];

/// Token-id fields carried over from the source `config.json`.
const TOKEN_ID_FIELDS: [&str; 3] = ["bos_token_id", "eos_token_id", "pad_token_id"];

/// `config.json` for `c`; token ids come from `source_config` when given, else from `c`.
pub fn hf_config(c: &ModelConfig, source_config: Option<&Path>) -> Result<Value> {
    let layer_types: Vec<&str> = c
        .layer_types
        .iter()
        .map(|t| match t {
            LayerType::Sliding => "sliding_attention",
            LayerType::Full => "full_attention",
        })
        .collect();
    let mut v = json!({
        "architectures": ["GptOssForCausalLM"],
        "attention_bias": true,
        "attention_dropout": 0.0,
        "experts_per_token": c.num_experts_per_tok,
        "head_dim": c.head_dim,
        "hidden_act": "silu",
        "hidden_size": c.hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": c.intermediate_size,
        "layer_types": layer_types,
        "max_position_embeddings": c.max_position_embeddings,
        "model_type": "gpt_oss",
        "num_attention_heads": c.num_attention_heads,
        "num_experts_per_tok": c.num_experts_per_tok,
        "num_hidden_layers": c.num_hidden_layers,
        "num_key_value_heads": c.num_key_value_heads,
        "num_local_experts": c.num_local_experts,
        "output_router_logits": false,
        "quantization_config": {
            "modules_to_not_convert": [
                "model.layers.*.self_attn",
                "model.layers.*.mlp.router",
                "model.embed_tokens",
                "lm_head"
            ],
            "quant_method": "mxfp4"
        },
        "rms_norm_eps": c.rms_norm_eps,
        "rope_theta": c.rope_theta,
        "router_aux_loss_coef": 0.9,
        "sliding_window": c.sliding_window,
        "swiglu_limit": c.swiglu_limit,
        "tie_word_embeddings": false,
        "use_cache": true,
        "vocab_size": c.vocab_size,
    });
    if let Some(y) = &c.yarn {
        v["rope_scaling"] = json!({
            "rope_type": "yarn",
            "factor": y.factor,
            "beta_fast": y.beta_fast,
            "beta_slow": y.beta_slow,
            "original_max_position_embeddings": y.original_max_position_embeddings,
            "truncate": y.truncate,
        });
        v["initial_context_length"] = json!(y.original_max_position_embeddings);
    }
    match source_config {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
            let src: Value = serde_json::from_str(&text)
                .map_err(|e| Error::format(path, format!("not valid JSON: {e}")))?;
            for field in TOKEN_ID_FIELDS {
                if let Some(id) = src.get(field).filter(|x| !x.is_null()) {
                    v[field] = id.clone();
                }
            }
        }
        None => match c.eos_token_ids.as_slice() {
            [] => {}
            [one] => v["eos_token_id"] = json!(one),
            many => v["eos_token_id"] = json!(many),
        },
    }
    Ok(v)
}

/// Copies the tokenizer files [`TOKENIZER_FILES`] found in `src` to `dst`; returns their names.
pub fn copy_tokenizer_files(src: &Path, dst: &Path) -> Result<Vec<String>> {
    let mut copied = Vec::new();
    for name in TOKENIZER_FILES {
        let from = src.join(name);
        if from.is_file() {
            std::fs::copy(&from, dst.join(name)).map_err(|e| Error::io(&from, e))?;
            copied.push(name.to_string());
        }
    }
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_round_trips_through_the_reader() {
        let mut c = ModelConfig::gpt_oss_20b();
        c.num_hidden_layers = 3;
        c.layer_types.truncate(3);
        let v = hf_config(&c, None).unwrap();
        assert_eq!(ModelConfig::from_json(&v, "test").unwrap(), c);
        assert_eq!(v["quantization_config"]["quant_method"], "mxfp4");
        assert_eq!(v["layer_types"][1], "full_attention");
    }
}
