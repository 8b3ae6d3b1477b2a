//! GGUF metadata ↔ [`ModelConfig`], and metadata → [`EmbeddedVocab`] (spec §3.2, §3.8). Keys are
//! `gpt-oss.*` as llama.cpp's converter writes them; values llama.cpp hard-codes for this
//! architecture (SwiGLU alpha/limit, YaRN betas) get the same defaults here, and the choices that
//! differ from llama.cpp (un-truncated YaRN) are returned as notes for `inspect`.

use crate::config::{alternating_layer_types, LayerType, ModelConfig, Yarn};
use crate::error::{Error, Result};
use crate::limits::{
    MAX_CONTEXT, MAX_EXPERTS, MAX_HEADS, MAX_HEAD_DIM, MAX_LAYERS, MAX_VOCAB, MAX_WIDTH,
};
use crate::EmbeddedVocab;

use super::container::{Array, GgufFile, Value};

/// The only architecture this reader accepts.
pub const ARCH: &str = "gpt-oss";
/// The key naming the architecture.
pub const ARCH_KEY: &str = "general.architecture";

/// Typed access to metadata with errors that name the file and key.
pub(crate) struct Meta<'a> {
    /// The parsed file.
    pub file: &'a GgufFile,
}

impl Meta<'_> {
    fn name(&self) -> String {
        self.file.path.display().to_string()
    }

    fn missing(&self, key: &str) -> Error {
        Error::config(self.name(), key, "missing (required for gpt-oss)")
    }

    fn wrong(&self, key: &str, expected: &str, v: &Value) -> Error {
        Error::config(
            self.name(),
            key,
            format!("expected {expected}, found {}", shown(v)),
        )
    }

    /// An unsigned integer key of at most `max`, if present (checked here, before anything is sized by it).
    pub fn opt_usize(&self, key: &str, max: usize) -> Result<Option<usize>> {
        self.file
            .get(key)
            .map(|v| {
                let n = v
                    .as_u64()
                    .ok_or_else(|| self.wrong(key, "an unsigned integer", v))?;
                crate::limits::size(&self.name(), key, n, max)
            })
            .transpose()
    }

    /// A required unsigned integer key of at most `max`.
    pub fn usize(&self, key: &str, max: usize) -> Result<usize> {
        self.opt_usize(key, max)?.ok_or_else(|| self.missing(key))
    }

    /// A float key (either width, or an integer), if present.
    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        self.file
            .get(key)
            .map(|v| v.as_f64().ok_or_else(|| self.wrong(key, "a number", v)))
            .transpose()
    }

    /// A string key, if present.
    pub fn opt_str(&self, key: &str) -> Result<Option<&str>> {
        self.file
            .get(key)
            .map(|v| v.as_str().ok_or_else(|| self.wrong(key, "a string", v)))
            .transpose()
    }

    /// A u32 token id key, if present.
    fn opt_id(&self, key: &str) -> Result<Option<u32>> {
        self.opt_usize(key, u32::MAX as usize)?
            .map(|n| {
                u32::try_from(n)
                    .map_err(|_| Error::config(self.name(), key, format!("token id {n} too large")))
            })
            .transpose()
    }

    /// An array of strings, if present.
    fn opt_strings(&self, key: &str) -> Result<Option<Vec<String>>> {
        let Some(v) = self.file.get(key) else {
            return Ok(None);
        };
        match v {
            Value::Array(items) => items
                .as_strings()
                .map(|s| Some(s.to_vec()))
                .ok_or_else(|| self.wrong(key, "an array of strings", v)),
            _ => Err(self.wrong(key, "an array of strings", v)),
        }
    }

    /// A head count (one number, or one per layer that all agree) in `0..=MAX_HEADS`.
    fn head_count(&self, key: &str) -> Result<usize> {
        let n = self
            .per_layer_number(key)?
            .ok_or_else(|| self.missing(key))?;
        if n.fract() != 0.0 || !(0.0..=MAX_HEADS as f64).contains(&n) {
            let msg = format!("expected a whole number of heads in 0..={MAX_HEADS}, found {n}");
            return Err(Error::config(self.name(), key, msg));
        }
        Ok(n as usize)
    }

    /// A number that may also be stored per layer as an array whose entries must all agree.
    fn per_layer_number(&self, key: &str) -> Result<Option<f64>> {
        let Some(v) = self.file.get(key) else {
            return Ok(None);
        };
        if let Value::Array(items) = v {
            let mut first = None;
            for (i, item) in items.values().enumerate() {
                let n = item
                    .as_f64()
                    .ok_or_else(|| self.wrong(key, "numbers", &item))?;
                match first {
                    None => first = Some(n),
                    Some(f) if f == n => {}
                    Some(f) => {
                        let msg =
                            format!("per-layer values differ: entry 0 is {f}, entry {i} is {n}");
                        return Err(Error::config(self.name(), key, msg));
                    }
                }
            }
            return first
                .map(Some)
                .ok_or_else(|| Error::config(self.name(), key, "per-layer array is empty"));
        }
        v.as_f64()
            .map(Some)
            .ok_or_else(|| self.wrong(key, "a number", v))
    }
}

/// A value for an error message: its type and, for arrays, the element type and count rather than
/// every element; long strings are cut (a message must stay readable whatever the file holds).
pub(crate) fn shown(v: &Value) -> String {
    match v {
        Value::Array(a) => format!(
            "an array of {} {} elements",
            a.len(),
            super::value::type_name(a.elem_type())
        ),
        Value::String(s) if s.len() > 80 => {
            let cut = (0..=80).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0);
            format!("string {:?}... ({} bytes)", &s[..cut], s.len())
        }
        other => format!("{} {other:?}", other.type_name()),
    }
}

/// Checks `general.architecture`.
pub fn check_architecture(file: &GgufFile) -> Result<()> {
    let m = Meta { file };
    match m.opt_str(ARCH_KEY)? {
        Some(ARCH) => Ok(()),
        Some(other) => Err(Error::config(
            m.name(),
            ARCH_KEY,
            format!("is \"{other}\"; gptoss runs only \"{ARCH}\" models"),
        )),
        None => Err(m.missing(ARCH_KEY)),
    }
}

fn key(what: &str) -> String {
    format!("{ARCH}.{what}")
}

/// Builds the config from metadata. `vocab_rows` is the row count of `token_embd.weight`, used when
/// `gpt-oss.vocab_size` is absent (llama.cpp's converter does not write it). Returns the notes too.
pub fn model_config(
    file: &GgufFile,
    vocab_rows: Option<usize>,
) -> Result<(ModelConfig, Vec<String>)> {
    let m = Meta { file };
    let mut notes = Vec::new();
    let layers = m.usize(&key("block_count"), MAX_LAYERS)?;
    let head_dim = m.usize(&key("attention.key_length"), MAX_HEAD_DIM)?;
    if let Some(v) = m.opt_usize(&key("attention.value_length"), MAX_HEAD_DIM)? {
        if v != head_dim {
            let msg = format!(
                "is {v}, but attention.key_length is {head_dim}; gpt-oss uses one head size"
            );
            return Err(Error::config(m.name(), key("attention.value_length"), msg));
        }
    }
    let intermediate_key = key("expert_feed_forward_length");
    let intermediate = match m.opt_usize(&intermediate_key, MAX_WIDTH)? {
        Some(n) => n,
        None => m
            .opt_usize(&key("feed_forward_length"), MAX_WIDTH)?
            .ok_or_else(|| m.missing(&intermediate_key))?,
    };
    let vocab_size = match (m.opt_usize(&key("vocab_size"), MAX_VOCAB)?, vocab_rows) {
        (Some(n), _) | (None, Some(n)) => n,
        (None, None) => return Err(m.missing(&key("vocab_size"))),
    };
    let heads = m.head_count(&key("attention.head_count"))?;
    let kv_heads = m.head_count(&key("attention.head_count_kv"))?;
    let rope_theta = m
        .opt_f64(&key("rope.freq_base"))?
        .ok_or_else(|| m.missing(&key("rope.freq_base")))?;
    if let Some(swa_base) = m.opt_f64(&key("rope.freq_base_swa"))? {
        if swa_base != rope_theta {
            let msg = format!("is {swa_base}, differs from rope.freq_base {rope_theta}: gpt-oss uses one RoPE base");
            return Err(Error::config(m.name(), key("rope.freq_base_swa"), msg));
        }
    }
    let swiglu_limit = match m.per_layer_number(&key("swiglu_clamp_exp"))? {
        Some(v) => v,
        None => {
            notes.push(
                "SwiGLU alpha 1.702 and limit 7.0 are not stored in GGUF; using gpt-oss's values"
                    .into(),
            );
            7.0
        }
    };
    let cfg = ModelConfig {
        num_hidden_layers: layers,
        num_local_experts: m.usize(&key("expert_count"), MAX_EXPERTS)?,
        num_experts_per_tok: m.usize(&key("expert_used_count"), MAX_EXPERTS)?,
        vocab_size,
        hidden_size: m.usize(&key("embedding_length"), MAX_WIDTH)?,
        intermediate_size: intermediate,
        head_dim,
        num_attention_heads: heads,
        num_key_value_heads: kv_heads,
        sliding_window: m.usize(&key("attention.sliding_window"), MAX_CONTEXT)?,
        layer_types: layer_types(&m, layers)?,
        rope_theta,
        yarn: yarn(&m, &mut notes)?,
        max_position_embeddings: m.usize(&key("context_length"), MAX_CONTEXT)?,
        rms_norm_eps: m
            .opt_f64(&key("attention.layer_norm_rms_epsilon"))?
            .ok_or_else(|| m.missing(&key("attention.layer_norm_rms_epsilon")))?,
        swiglu_limit,
        swiglu_alpha: 1.702,
        eos_token_ids: eos_ids(&m)?,
    };
    cfg.check(&m.name())?;
    Ok((cfg, notes))
}

/// Sliding layers as llama.cpp decides them: `attention.sliding_window_pattern` is either a period
/// `n` (every layer sliding except each n-th; default 2 = sliding on even layers) or one bool per layer.
fn layer_types(m: &Meta, layers: usize) -> Result<Vec<LayerType>> {
    let k = key("attention.sliding_window_pattern");
    match m.file.get(&k) {
        None => Ok(alternating_layer_types(layers, 2)),
        Some(Value::Array(items)) => {
            if items.len() != layers {
                let msg = format!("has {} entries, block_count is {layers}", items.len());
                return Err(Error::config(m.name(), k, msg));
            }
            let pick = |v: Value| match v {
                Value::Bool(true) => Ok(LayerType::Sliding),
                Value::Bool(false) => Ok(LayerType::Full),
                other => Err(m.wrong(&k, "bools", &other)),
            };
            items.values().map(pick).collect()
        }
        Some(v) => match v.as_u64() {
            Some(p) if p > 0 => Ok(alternating_layer_types(layers, p as usize)),
            _ => Err(m.wrong(&k, "a positive integer or an array of bools", v)),
        },
    }
}

/// YaRN from `rope.scaling.*`. gptoss computes the OpenAI/HF math (`truncate = false`); llama.cpp
/// floors/ceils the correction range, a small known difference (spec §1.3).
fn yarn(m: &Meta, notes: &mut Vec<String>) -> Result<Option<Yarn>> {
    match m.opt_str(&key("rope.scaling.type"))? {
        None | Some("none") => return Ok(None),
        Some("yarn") => {}
        Some(other) => {
            let msg = format!("is \"{other}\"; gpt-oss uses \"yarn\" (or none)");
            return Err(Error::config(m.name(), key("rope.scaling.type"), msg));
        }
    }
    let factor = m
        .opt_f64(&key("rope.scaling.factor"))?
        .ok_or_else(|| m.missing(&key("rope.scaling.factor")))?;
    let original = m.usize(&key("rope.scaling.original_context_length"), MAX_CONTEXT)?;
    let beta_fast = m.opt_f64(&key("rope.scaling.yarn_beta_fast"))?;
    let beta_slow = m.opt_f64(&key("rope.scaling.yarn_beta_slow"))?;
    if beta_fast.is_none() || beta_slow.is_none() {
        notes.push(
            "YaRN beta_fast/beta_slow not in the file: using 32 / 1 as llama.cpp does".into(),
        );
    }
    notes.push(
        "YaRN computed as OpenAI/HF do (un-truncated correction range); llama.cpp truncates it"
            .into(),
    );
    Ok(Some(Yarn {
        factor,
        beta_fast: beta_fast.unwrap_or(32.0),
        beta_slow: beta_slow.unwrap_or(1.0),
        original_max_position_embeddings: original,
        truncate: false,
    }))
}

/// The end-of-sequence id and, when different, the end-of-turn id.
fn eos_ids(m: &Meta) -> Result<Vec<u32>> {
    let mut ids = Vec::new();
    for k in ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"] {
        if let Some(id) = m.opt_id(k)? {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
    }
    Ok(ids)
}

/// The vocabulary in `tokenizer.ggml.*`, or `None` when the file has no token list.
pub fn embedded_vocab(file: &GgufFile) -> Result<Option<EmbeddedVocab>> {
    let m = Meta { file };
    let Some(tokens) = m.opt_strings("tokenizer.ggml.tokens")? else {
        return Ok(None);
    };
    let model = m
        .opt_str("tokenizer.ggml.model")?
        .ok_or_else(|| m.missing("tokenizer.ggml.model"))?;
    let token_types = match file.get("tokenizer.ggml.token_type") {
        None => Vec::new(),
        Some(Value::Array(items)) => items
            .values()
            .map(|v| {
                v.as_i64()
                    .and_then(|n| i32::try_from(n).ok())
                    .ok_or_else(|| m.wrong("tokenizer.ggml.token_type", "i32", &v))
            })
            .collect::<Result<Vec<_>>>()?,
        Some(v) => return Err(m.wrong("tokenizer.ggml.token_type", "an array of i32", v)),
    };
    if !token_types.is_empty() && token_types.len() != tokens.len() {
        let msg = format!(
            "has {} entries, tokenizer.ggml.tokens has {}",
            token_types.len(),
            tokens.len()
        );
        return Err(Error::config(m.name(), "tokenizer.ggml.token_type", msg));
    }
    Ok(Some(EmbeddedVocab {
        model: model.to_string(),
        pre: m.opt_str("tokenizer.ggml.pre")?.map(str::to_string),
        tokens,
        token_types,
        merges: m.opt_strings("tokenizer.ggml.merges")?.unwrap_or_default(),
        chat_template: m.opt_str("tokenizer.chat_template")?.map(str::to_string),
        bos: m.opt_id("tokenizer.ggml.bos_token_id")?,
        eos: m.opt_id("tokenizer.ggml.eos_token_id")?,
        pad: m.opt_id("tokenizer.ggml.padding_token_id")?,
    }))
}

/// The `general.*` and `gpt-oss.*` metadata llama.cpp's converter writes, plus the keys gptoss's
/// reader understands when the config differs from what llama.cpp hard-codes.
pub fn config_metadata(
    c: &ModelConfig,
    file_type: u32,
    notes: &mut Vec<String>,
) -> Result<Vec<(String, Value)>> {
    let u = |n: usize| Value::U32(n as u32);
    let k = |s: &str| format!("gpt-oss.{s}");
    let mut m: Vec<(String, Value)> = vec![
        (
            "general.architecture".into(),
            Value::String("gpt-oss".into()),
        ),
        ("general.type".into(), Value::String("model".into())),
        ("general.quantization_version".into(), Value::U32(2)),
        ("general.file_type".into(), Value::U32(file_type)),
        (k("block_count"), u(c.num_hidden_layers)),
        (k("context_length"), u(c.max_position_embeddings)),
        (k("embedding_length"), u(c.hidden_size)),
        (k("feed_forward_length"), u(c.intermediate_size)),
        (k("attention.head_count"), u(c.num_attention_heads)),
        (k("attention.head_count_kv"), u(c.num_key_value_heads)),
        (k("rope.freq_base"), Value::F32(c.rope_theta as f32)),
        (
            k("attention.layer_norm_rms_epsilon"),
            Value::F32(c.rms_norm_eps as f32),
        ),
        (k("expert_count"), u(c.num_local_experts)),
        (k("expert_used_count"), u(c.num_experts_per_tok)),
        (k("attention.key_length"), u(c.head_dim)),
        (k("attention.value_length"), u(c.head_dim)),
        (k("attention.sliding_window"), u(c.sliding_window)),
        (k("expert_feed_forward_length"), u(c.intermediate_size)),
    ];
    if let Some(y) = &c.yarn {
        m.push((k("rope.scaling.type"), Value::String("yarn".into())));
        m.push((k("rope.scaling.factor"), Value::F32(y.factor as f32)));
        m.push((
            k("rope.scaling.original_context_length"),
            u(y.original_max_position_embeddings),
        ));
        m.push((
            k("rope.scaling.yarn_beta_fast"),
            Value::F32(y.beta_fast as f32),
        ));
        m.push((
            k("rope.scaling.yarn_beta_slow"),
            Value::F32(y.beta_slow as f32),
        ));
        if y.truncate {
            notes.push(
                "YaRN truncate=true is not expressible in GGUF; readers use their own rule".into(),
            );
        }
    }
    if c.layer_types != alternating_layer_types(c.num_hidden_layers, 2) {
        let flags = c
            .layer_types
            .iter()
            .map(|t| *t == LayerType::Sliding)
            .collect();
        m.push((
            k("attention.sliding_window_pattern"),
            Value::Array(Array::Bool(flags)),
        ));
        notes.push("layer types differ from llama.cpp's default; written as a per-layer sliding_window_pattern".into());
    }
    if c.swiglu_limit != 7.0 {
        m.push((k("swiglu_clamp_exp"), Value::F32(c.swiglu_limit as f32)));
        notes.push(format!(
            "swiglu_limit {} written as gpt-oss.swiglu_clamp_exp (llama.cpp uses 7.0)",
            c.swiglu_limit
        ));
    }
    if c.swiglu_alpha != 1.702 {
        let msg = format!(
            "is {}; GGUF has no key for it and llama.cpp hard-codes 1.702",
            c.swiglu_alpha
        );
        return Err(Error::config("<gguf writer>", "swiglu_alpha", msg));
    }
    Ok(m)
}
