//! `ModelConfig`: the model's hyper-parameters, read once from HF `config.json` (both the
//! `rope_scaling` + `rope_theta` form and transformers v5's `rope_parameters`), OpenAI's
//! `original/config.json`, or GGUF metadata (built by the GGUF reader). Spec §1.1, §1.2, §3.2.

use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::limits::{
    MAX_CONTEXT, MAX_EXPERTS, MAX_HEADS, MAX_HEAD_DIM, MAX_LAYERS, MAX_VOCAB, MAX_WIDTH,
};

/// Attention kind of one layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerType {
    /// Attends to the last `sliding_window` positions (the current one included).
    Sliding,
    /// Attends to the whole causal history.
    Full,
}

/// The attention window of a layer, as the kernels see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Window {
    /// Keys `p - n < j <= p`.
    Sliding(usize),
    /// Keys `j <= p`.
    Full,
}

/// YaRN RoPE parameters (spec §1.3).
#[derive(Clone, Debug, PartialEq)]
pub struct Yarn {
    /// Context extension factor `s`.
    pub factor: f64,
    /// Fast correction bound.
    pub beta_fast: f64,
    /// Slow correction bound.
    pub beta_slow: f64,
    /// Context length the model was pre-trained with (`L0`).
    pub original_max_position_embeddings: usize,
    /// Whether the correction range is floored/ceiled (false for gpt-oss; llama.cpp always truncates).
    pub truncate: bool,
}

/// Hyper-parameters of a gpt-oss model. Field names follow HF's `config.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    /// `L`.
    pub num_hidden_layers: usize,
    /// `E`.
    pub num_local_experts: usize,
    /// Experts per token (top-k).
    pub num_experts_per_tok: usize,
    /// Embedding rows.
    pub vocab_size: usize,
    /// `H`.
    pub hidden_size: usize,
    /// `I`, per expert and per half of gate_up.
    pub intermediate_size: usize,
    /// `d`.
    pub head_dim: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads.
    pub num_key_value_heads: usize,
    /// Window of sliding layers.
    pub sliding_window: usize,
    /// Kind of each layer, as the file says.
    pub layer_types: Vec<LayerType>,
    /// RoPE base.
    pub rope_theta: f64,
    /// YaRN scaling; `None` means plain RoPE.
    pub yarn: Option<Yarn>,
    /// Longest supported context.
    pub max_position_embeddings: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// SwiGLU clamp.
    pub swiglu_limit: f64,
    /// SwiGLU sigmoid gain.
    pub swiglu_alpha: f64,
    /// End-of-sequence ids named by the config (may be empty).
    pub eos_token_ids: Vec<u32>,
}

impl ModelConfig {
    /// Width of the concatenated query heads.
    pub fn q_width(&self) -> usize {
        self.num_attention_heads * self.head_dim
    }

    /// Width of the concatenated key (or value) heads.
    pub fn kv_width(&self) -> usize {
        self.num_key_value_heads * self.head_dim
    }

    /// Attention window of layer `l`.
    pub fn window(&self, layer: usize) -> Window {
        match self.layer_types.get(layer) {
            Some(LayerType::Sliding) => Window::Sliding(self.sliding_window),
            _ => Window::Full,
        }
    }

    /// The gpt-oss-20b configuration (spec §1.1).
    pub fn gpt_oss_20b() -> Self {
        Self::reference(24, 32)
    }

    /// The gpt-oss-120b configuration (spec §1.1).
    pub fn gpt_oss_120b() -> Self {
        Self::reference(36, 128)
    }

    fn reference(layers: usize, experts: usize) -> Self {
        ModelConfig {
            num_hidden_layers: layers,
            num_local_experts: experts,
            num_experts_per_tok: 4,
            vocab_size: 201_088,
            hidden_size: 2880,
            intermediate_size: 2880,
            head_dim: 64,
            num_attention_heads: 64,
            num_key_value_heads: 8,
            sliding_window: 128,
            layer_types: alternating_layer_types(layers, 2),
            rope_theta: 150_000.0,
            yarn: Some(Yarn {
                factor: 32.0,
                beta_fast: 32.0,
                beta_slow: 1.0,
                original_max_position_embeddings: 4096,
                truncate: false,
            }),
            max_position_embeddings: 131_072,
            rms_norm_eps: 1e-5,
            swiglu_limit: 7.0,
            swiglu_alpha: 1.702,
            eos_token_ids: vec![200_002, 199_999],
        }
    }

    /// Reads an HF `config.json` or an OpenAI `original/config.json` (detected by its field names).
    pub fn from_json_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let value: Value = serde_json::from_str(&text)
            .map_err(|e| Error::format(path, format!("not valid JSON: {e}")))?;
        Self::from_json(&value, &path.display().to_string())
    }

    /// Parses a config object; `file` names it in errors.
    pub fn from_json(value: &Value, file: &str) -> Result<Self> {
        let obj = value
            .as_object()
            .ok_or_else(|| Error::config(file, "<root>", "expected a JSON object"))?;
        let f = Fields { obj, file };
        if obj.contains_key("num_experts") && !obj.contains_key("num_local_experts") {
            return Self::from_original(&f);
        }
        let layers = f.size("num_hidden_layers", MAX_LAYERS)?;
        let sliding_window = f.size("sliding_window", MAX_CONTEXT)?;
        let layer_types = match obj.get("layer_types") {
            Some(v) => parse_layer_types(v, file, layers)?,
            None => {
                return Err(Error::config(
                    file,
                    "layer_types",
                    "missing: gpt-oss configs list every layer's attention type",
                ))
            }
        };
        let (rope_theta, yarn) = parse_rope(&f)?;
        let eos_token_ids = eos_ids(obj.get("eos_token_id"), file)?;
        let cfg = ModelConfig {
            num_hidden_layers: layers,
            num_local_experts: f.size("num_local_experts", MAX_EXPERTS)?,
            num_experts_per_tok: f.usize_any(&["num_experts_per_tok", "experts_per_token"])?,
            vocab_size: f.size("vocab_size", MAX_VOCAB)?,
            hidden_size: f.size("hidden_size", MAX_WIDTH)?,
            intermediate_size: f.size("intermediate_size", MAX_WIDTH)?,
            head_dim: f.size("head_dim", MAX_HEAD_DIM)?,
            num_attention_heads: f.size("num_attention_heads", MAX_HEADS)?,
            num_key_value_heads: f.size("num_key_value_heads", MAX_HEADS)?,
            sliding_window,
            layer_types,
            rope_theta,
            yarn,
            max_position_embeddings: f.size("max_position_embeddings", MAX_CONTEXT)?,
            rms_norm_eps: f.f64_or("rms_norm_eps", 1e-5)?,
            swiglu_limit: f.f64_or("swiglu_limit", 7.0)?,
            swiglu_alpha: f.f64_or("swiglu_alpha", 1.702)?,
            eos_token_ids,
        };
        cfg.check(file)?;
        Ok(cfg)
    }

    fn from_original(f: &Fields) -> Result<Self> {
        let layers = f.size("num_hidden_layers", MAX_LAYERS)?;
        let initial = f.size("initial_context_length", MAX_CONTEXT)?;
        let factor = f.f64("rope_scaling_factor")?;
        let longest = initial as f64 * factor;
        if !(factor.is_finite() && factor >= 1.0 && longest <= MAX_CONTEXT as f64) {
            return Err(Error::config(
                f.file,
                "rope_scaling_factor",
                format!("must be at least 1 and keep initial_context_length × factor within {MAX_CONTEXT} positions, found {factor}"),
            ));
        }
        let cfg = ModelConfig {
            num_hidden_layers: layers,
            num_local_experts: f.size("num_experts", MAX_EXPERTS)?,
            num_experts_per_tok: f.size("experts_per_token", MAX_EXPERTS)?,
            vocab_size: f.size("vocab_size", MAX_VOCAB)?,
            hidden_size: f.size("hidden_size", MAX_WIDTH)?,
            intermediate_size: f.size("intermediate_size", MAX_WIDTH)?,
            head_dim: f.size("head_dim", MAX_HEAD_DIM)?,
            num_attention_heads: f.size("num_attention_heads", MAX_HEADS)?,
            num_key_value_heads: f.size("num_key_value_heads", MAX_HEADS)?,
            sliding_window: f.size("sliding_window", MAX_CONTEXT)?,
            // The OpenAI reference hard-codes sliding attention on even layers (spec §1.2).
            layer_types: alternating_layer_types(layers, 2),
            rope_theta: f.f64("rope_theta")?,
            yarn: Some(Yarn {
                factor,
                beta_fast: f.f64("rope_ntk_beta")?,
                beta_slow: f.f64("rope_ntk_alpha")?,
                original_max_position_embeddings: initial,
                truncate: false,
            }),
            max_position_embeddings: longest as usize,
            rms_norm_eps: 1e-5,
            swiglu_limit: f.f64_or("swiglu_limit", 7.0)?,
            swiglu_alpha: 1.702,
            eos_token_ids: vec![200_002, 199_999],
        };
        cfg.check(f.file)?;
        Ok(cfg)
    }

    /// Checks the fields against each other; `file` names the source in errors.
    pub fn check(&self, file: &str) -> Result<()> {
        crate::limits::check_config(self, file)?;
        let fail = |field: &str, msg: String| Err(Error::config(file, field, msg));
        if self.layer_types.len() != self.num_hidden_layers {
            return fail(
                "layer_types",
                format!(
                    "has {} entries, num_hidden_layers is {}",
                    self.layer_types.len(),
                    self.num_hidden_layers
                ),
            );
        }
        if self.num_key_value_heads == 0
            || !self
                .num_attention_heads
                .is_multiple_of(self.num_key_value_heads)
        {
            return fail(
                "num_key_value_heads",
                format!(
                    "{} does not divide num_attention_heads {}",
                    self.num_key_value_heads, self.num_attention_heads
                ),
            );
        }
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            return fail(
                "head_dim",
                format!("must be even and nonzero, found {}", self.head_dim),
            );
        }
        if self.num_experts_per_tok == 0 || self.num_experts_per_tok > self.num_local_experts {
            return fail(
                "num_experts_per_tok",
                format!(
                    "{} must be in 1..={} (num_local_experts)",
                    self.num_experts_per_tok, self.num_local_experts
                ),
            );
        }
        for (field, v) in [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("vocab_size", self.vocab_size),
            ("num_hidden_layers", self.num_hidden_layers),
        ] {
            if v == 0 {
                return fail(field, "must be nonzero".into());
            }
        }
        if self.layer_types.contains(&LayerType::Sliding) && self.sliding_window == 0 {
            return fail(
                "sliding_window",
                "is 0 but layer_types has sliding layers".into(),
            );
        }
        Ok(())
    }
}

/// llama.cpp's `set_swa_pattern(n)`: every layer slides except each n-th (`l % n < n - 1`), which
/// for n = 2 is "sliding on even layers" (spec §1.2). Used where a file carries no `layer_types`.
pub fn alternating_layer_types(layers: usize, pattern: usize) -> Vec<LayerType> {
    (0..layers)
        .map(|l| {
            if pattern > 0 && l % pattern < pattern.saturating_sub(1) {
                LayerType::Sliding
            } else {
                LayerType::Full
            }
        })
        .collect()
}

fn parse_layer_types(v: &Value, file: &str, layers: usize) -> Result<Vec<LayerType>> {
    let arr = v
        .as_array()
        .ok_or_else(|| Error::config(file, "layer_types", "expected an array of strings"))?;
    let types = arr
        .iter()
        .enumerate()
        .map(|(i, t)| match t.as_str() {
            Some("sliding_attention") => Ok(LayerType::Sliding),
            Some("full_attention") => Ok(LayerType::Full),
            other => Err(Error::config(
                file,
                format!("layer_types[{i}]"),
                format!("expected \"sliding_attention\" or \"full_attention\", found {other:?}"),
            )),
        })
        .collect::<Result<Vec<_>>>()?;
    if types.len() != layers {
        return Err(Error::config(
            file,
            "layer_types",
            format!("has {} entries, num_hidden_layers is {layers}", types.len()),
        ));
    }
    Ok(types)
}

/// Reads `rope_theta` and YaRN from `rope_scaling` (+ top-level `rope_theta`) or `rope_parameters`.
fn parse_rope(f: &Fields) -> Result<(f64, Option<Yarn>)> {
    let (scaling, scaling_field, theta) =
        match (f.obj.get("rope_parameters"), f.obj.get("rope_scaling")) {
            (Some(p), None) | (Some(p), Some(Value::Null)) if !p.is_null() => {
                let theta = p
                    .get("rope_theta")
                    .and_then(Value::as_f64)
                    .or_else(|| f.obj.get("rope_theta").and_then(Value::as_f64))
                    .ok_or_else(|| {
                        Error::config(f.file, "rope_parameters.rope_theta", "missing")
                    })?;
                (Some(p), "rope_parameters", theta)
            }
            (Some(p), Some(s)) if !p.is_null() && p != s => {
                return Err(Error::config(
                    f.file,
                    "rope_parameters",
                    "both rope_parameters and rope_scaling are set and differ",
                ));
            }
            (_, s) => (
                s.filter(|s| !s.is_null()),
                "rope_scaling",
                f.f64("rope_theta")?,
            ),
        };
    let Some(s) = scaling else {
        return Ok((theta, None));
    };
    let field = |name: &str| format!("{scaling_field}.{name}");
    let rope_type = s
        .get("rope_type")
        .or_else(|| s.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    match rope_type {
        "default" => return Ok((theta, None)),
        "yarn" => {}
        other => {
            return Err(Error::config(
                f.file,
                field("rope_type"),
                format!("expected \"yarn\", found {other:?}"),
            ))
        }
    }
    let num = |name: &str, default: Option<f64>| -> Result<f64> {
        match s.get(name) {
            Some(v) => v.as_f64().ok_or_else(|| {
                Error::config(f.file, field(name), format!("expected a number, found {v}"))
            }),
            None => default.ok_or_else(|| Error::config(f.file, field(name), "missing")),
        }
    };
    let original = match s.get("original_max_position_embeddings") {
        Some(v) => {
            let name = field("original_max_position_embeddings");
            let n = v.as_u64().ok_or_else(|| {
                Error::config(f.file, &name, format!("expected an integer, found {v}"))
            })?;
            crate::limits::size(f.file, &name, n, MAX_CONTEXT)?
        }
        None => f.size("initial_context_length", MAX_CONTEXT)?,
    };
    let yarn = Yarn {
        factor: num("factor", None)?,
        beta_fast: num("beta_fast", Some(32.0))?,
        beta_slow: num("beta_slow", Some(1.0))?,
        original_max_position_embeddings: original,
        truncate: s.get("truncate").and_then(Value::as_bool).unwrap_or(true),
    };
    Ok((theta, Some(yarn)))
}

/// `eos_token_id`: one id or a list; every id must fit a u32 token id (a larger one is refused, not
/// truncated to some other token).
fn eos_ids(v: Option<&Value>, file: &str) -> Result<Vec<u32>> {
    let one = |v: &Value, field: String| {
        v.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| {
                Error::config(
                    file,
                    field,
                    format!("expected a token id (0..2^32), found {v}"),
                )
            })
    };
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, v)| one(v, format!("eos_token_id[{i}]")))
            .collect(),
        Some(v) => Ok(vec![one(v, "eos_token_id".into())?]),
    }
}

struct Fields<'a> {
    obj: &'a serde_json::Map<String, Value>,
    file: &'a str,
}

impl Fields<'_> {
    /// A non-negative integer of at most `max` (checked here, before anything is sized by it).
    fn size(&self, name: &str, max: usize) -> Result<usize> {
        match self.obj.get(name) {
            Some(v) => {
                let n = v.as_u64().ok_or_else(|| {
                    Error::config(
                        self.file,
                        name,
                        format!("expected a non-negative integer, found {v}"),
                    )
                })?;
                crate::limits::size(self.file, name, n, max)
            }
            None => Err(Error::config(self.file, name, "missing")),
        }
    }

    fn usize_any(&self, names: &[&str]) -> Result<usize> {
        let found: Vec<usize> = names
            .iter()
            .filter(|n| self.obj.contains_key(**n))
            .map(|n| self.size(n, MAX_EXPERTS))
            .collect::<Result<_>>()?;
        match found.as_slice() {
            [] => Err(Error::config(self.file, names.join(" / "), "missing")),
            [first, rest @ ..] if rest.iter().all(|v| v == first) => Ok(*first),
            _ => Err(Error::config(
                self.file,
                names.join(" / "),
                format!("disagree: {found:?}"),
            )),
        }
    }

    fn f64(&self, name: &str) -> Result<f64> {
        match self.obj.get(name) {
            Some(v) => v.as_f64().ok_or_else(|| {
                Error::config(self.file, name, format!("expected a number, found {v}"))
            }),
            None => Err(Error::config(self.file, name, "missing")),
        }
    }

    fn f64_or(&self, name: &str, default: f64) -> Result<f64> {
        match self.obj.get(name) {
            Some(Value::Null) | None => Ok(default),
            Some(_) => self.f64(name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn hf_20b() -> Value {
        json!({
            "architectures": ["GptOssForCausalLM"], "attention_bias": true, "eos_token_id": 200002,
            "experts_per_token": 4, "head_dim": 64, "hidden_size": 2880, "initial_context_length": 4096,
            "intermediate_size": 2880,
            "layer_types": (0..24).map(|i| if i % 2 == 0 { "sliding_attention" } else { "full_attention" }).collect::<Vec<_>>(),
            "max_position_embeddings": 131072, "model_type": "gpt_oss", "num_attention_heads": 64,
            "num_experts_per_tok": 4, "num_hidden_layers": 24, "num_key_value_heads": 8, "num_local_experts": 32,
            "rms_norm_eps": 1e-05,
            "rope_scaling": {"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0,
                             "original_max_position_embeddings": 4096, "truncate": false},
            "rope_theta": 150000, "sliding_window": 128, "swiglu_limit": 7.0, "tie_word_embeddings": false,
            "vocab_size": 201088
        })
    }

    #[test]
    fn hf_config_matches_reference() {
        let mut cfg = ModelConfig::from_json(&hf_20b(), "config.json").unwrap();
        cfg.eos_token_ids = vec![200_002, 199_999];
        assert_eq!(cfg, ModelConfig::gpt_oss_20b());
    }

    #[test]
    fn rope_parameters_form_is_the_same_model() {
        let mut v = hf_20b();
        let obj = v.as_object_mut().unwrap();
        let mut params = obj.remove("rope_scaling").unwrap();
        params["rope_theta"] = json!(150000.0);
        obj.remove("rope_theta");
        obj.insert("rope_parameters".into(), params);
        obj.insert("pad_token_id".into(), Value::Null);
        let a = ModelConfig::from_json(&hf_20b(), "a").unwrap();
        let b = ModelConfig::from_json(&v, "b").unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn layer_types_are_read_not_assumed() {
        let mut v = hf_20b();
        v["layer_types"][0] = json!("full_attention");
        let cfg = ModelConfig::from_json(&v, "c").unwrap();
        assert_eq!(cfg.window(0), Window::Full);
        assert_eq!(cfg.window(2), Window::Sliding(128));
    }

    #[test]
    fn errors_name_the_field() {
        let mut v = hf_20b();
        v.as_object_mut().unwrap().remove("head_dim");
        let e = ModelConfig::from_json(&v, "cfg.json")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cfg.json") && e.contains("`head_dim`") && e.contains("missing"),
            "{e}"
        );

        let mut v = hf_20b();
        v["layer_types"] = json!(["sliding_attention"]);
        let e = ModelConfig::from_json(&v, "cfg.json")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`layer_types`") && e.contains("1 entries"),
            "{e}"
        );

        let mut v = hf_20b();
        v["experts_per_token"] = json!(2);
        let e = ModelConfig::from_json(&v, "cfg.json")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("num_experts_per_tok / experts_per_token") && e.contains("disagree"),
            "{e}"
        );

        let mut v = hf_20b();
        v["layer_types"][3] = json!("local");
        let e = ModelConfig::from_json(&v, "cfg.json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("layer_types[3]"), "{e}");
    }

    #[test]
    fn original_config() {
        let v = json!({
            "num_hidden_layers": 24, "num_experts": 32, "experts_per_token": 4, "vocab_size": 201088,
            "hidden_size": 2880, "intermediate_size": 2880, "swiglu_limit": 7.0, "head_dim": 64,
            "num_attention_heads": 64, "num_key_value_heads": 8, "sliding_window": 128,
            "initial_context_length": 4096, "rope_theta": 150000, "rope_scaling_factor": 32.0,
            "rope_ntk_alpha": 1.0, "rope_ntk_beta": 32.0
        });
        let cfg = ModelConfig::from_json(&v, "original/config.json").unwrap();
        assert_eq!(cfg, ModelConfig::gpt_oss_20b());
    }

    /// Sizes that once aborted the process or made every logit NaN: each is refused at the field.
    #[test]
    fn hostile_values_are_refused_where_they_enter() {
        let cases = [
            ("num_local_experts", json!(1_000_000_000u64)),
            ("num_hidden_layers", json!(2_000_000_000u64)),
            ("vocab_size", json!(u64::MAX)),
            ("rope_theta", json!(0)),
            ("rope_theta", json!(-1.5)),
            ("rms_norm_eps", json!(-1e-5)),
            ("eos_token_id", json!(4_294_967_296u64)),
        ];
        for (field, value) in cases {
            let mut v = hf_20b();
            v[field] = value.clone();
            let e = ModelConfig::from_json(&v, "cfg.json")
                .unwrap_err()
                .to_string();
            assert!(e.contains(&format!("`{field}`")), "{field} = {value}: {e}");
        }
        let mut v = hf_20b();
        v["rope_scaling"]["factor"] = json!(0.0);
        let e = ModelConfig::from_json(&v, "cfg.json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("factor"), "{e}");
        let mut v = hf_20b();
        v["eos_token_id"] = json!([200002, 4_294_967_297u64]);
        let e = ModelConfig::from_json(&v, "cfg.json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("eos_token_id[1]"), "{e}");
        // The original layout builds its layer list from the count: the bound comes first.
        let original = json!({
            "num_hidden_layers": 2_000_000_000u64, "num_experts": 32, "experts_per_token": 4,
            "vocab_size": 201088, "hidden_size": 2880, "intermediate_size": 2880, "head_dim": 64,
            "num_attention_heads": 64, "num_key_value_heads": 8, "sliding_window": 128,
            "initial_context_length": 4096, "rope_theta": 150000, "rope_scaling_factor": 32.0,
            "rope_ntk_alpha": 1.0, "rope_ntk_beta": 32.0
        });
        let e = ModelConfig::from_json(&original, "original/config.json")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`num_hidden_layers`") && e.contains("at most"),
            "{e}"
        );
    }

    #[test]
    fn swa_pattern() {
        let t = alternating_layer_types(4, 2);
        assert_eq!(
            t,
            vec![
                LayerType::Sliding,
                LayerType::Full,
                LayerType::Sliding,
                LayerType::Full
            ]
        );
        let t = alternating_layer_types(3, 3);
        assert_eq!(
            t,
            vec![LayerType::Sliding, LayerType::Sliding, LayerType::Full]
        );
    }
}
