//! Sane bounds on what a checkpoint may declare, checked where each value enters (the config and GGUF
//! readers) so that no size from a file sizes an allocation before it is checked, and no value that
//! makes every logit NaN (a non-positive RoPE base or epsilon, a YaRN factor below 1) is accepted.
//! gpt-oss-120b sits far inside every bound; the bounds exist to turn a hostile or corrupt file into a
//! clear error instead of an abort.

use crate::config::ModelConfig;
use crate::error::{Error, Result};

/// Most transformer blocks (gpt-oss-120b has 36).
pub const MAX_LAYERS: usize = 1024;
/// Most experts per layer (gpt-oss-120b has 128).
pub const MAX_EXPERTS: usize = 1024;
/// Most vocabulary rows (o200k_harmony has 201,088).
pub const MAX_VOCAB: usize = 1 << 22;
/// Widest residual stream, per-expert intermediate width and attention width.
pub const MAX_WIDTH: usize = 1 << 16;
/// Most attention heads (query or key/value).
pub const MAX_HEADS: usize = 1024;
/// Widest attention head.
pub const MAX_HEAD_DIM: usize = 1024;
/// Longest context a config may declare (positions), and the longest window.
pub const MAX_CONTEXT: usize = 1 << 24;
/// Most parts of a split GGUF (llama.cpp numbers them with 5 digits).
pub const MAX_SPLIT_PARTS: usize = 9999;

/// Checks a size read from a file against `max` (and that it fits a `usize`).
pub fn size(file: &str, field: &str, value: u64, max: usize) -> Result<usize> {
    match usize::try_from(value) {
        Ok(v) if v <= max => Ok(v),
        _ => Err(Error::config(
            file,
            field,
            format!("{value} is out of range (at most {max})"),
        )),
    }
}

/// The bound of each size field of [`ModelConfig`], by its config.json name.
const SIZE_BOUNDS: [(&str, usize); 9] = [
    ("num_hidden_layers", MAX_LAYERS),
    ("num_local_experts", MAX_EXPERTS),
    ("vocab_size", MAX_VOCAB),
    ("hidden_size", MAX_WIDTH),
    ("intermediate_size", MAX_WIDTH),
    ("head_dim", MAX_HEAD_DIM),
    ("num_attention_heads", MAX_HEADS),
    ("num_key_value_heads", MAX_HEADS),
    ("max_position_embeddings", MAX_CONTEXT),
];

/// Checks every size and float of a config (however it was built) against the bounds above and the
/// domains the math needs; `file` names the source in errors.
pub fn check_config(c: &ModelConfig, file: &str) -> Result<()> {
    let sizes = [
        c.num_hidden_layers,
        c.num_local_experts,
        c.vocab_size,
        c.hidden_size,
        c.intermediate_size,
        c.head_dim,
        c.num_attention_heads,
        c.num_key_value_heads,
        c.max_position_embeddings,
    ];
    for ((field, max), value) in SIZE_BOUNDS.iter().zip(sizes) {
        size(file, field, value as u64, *max)?;
    }
    size(file, "sliding_window", c.sliding_window as u64, MAX_CONTEXT)?;
    if c.q_width() > MAX_WIDTH || c.kv_width() > MAX_WIDTH {
        return Err(Error::config(
            file,
            "num_attention_heads",
            format!(
                "{} heads of {} make an attention width of {}, over {MAX_WIDTH}",
                c.num_attention_heads,
                c.head_dim,
                c.q_width()
            ),
        ));
    }
    positive(file, "rms_norm_eps", c.rms_norm_eps)?;
    positive(file, "swiglu_limit", c.swiglu_limit)?;
    positive(file, "swiglu_alpha", c.swiglu_alpha)?;
    if !(c.rope_theta.is_finite() && c.rope_theta > 1.0) {
        return Err(Error::config(
            file,
            "rope_theta",
            format!(
                "must be a finite number above 1 (RoPE's base), found {}",
                c.rope_theta
            ),
        ));
    }
    if let Some(y) = &c.yarn {
        if !(y.factor.is_finite() && y.factor >= 1.0) {
            return Err(Error::config(
                file,
                "rope_scaling.factor",
                format!(
                    "YaRN's factor must be a finite number of at least 1, found {}",
                    y.factor
                ),
            ));
        }
        positive(file, "rope_scaling.beta_fast", y.beta_fast)?;
        positive(file, "rope_scaling.beta_slow", y.beta_slow)?;
        let original = y.original_max_position_embeddings;
        if original == 0 || original > MAX_CONTEXT {
            return Err(Error::config(
                file,
                "rope_scaling.original_max_position_embeddings",
                format!("must be in 1..={MAX_CONTEXT}, found {original}"),
            ));
        }
    }
    Ok(())
}

/// A float that must be finite and above zero.
fn positive(file: &str, field: &str, v: f64) -> Result<()> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(Error::config(
            file,
            field,
            format!("must be a finite number above 0, found {v}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_configs_are_inside_every_bound() {
        check_config(&ModelConfig::gpt_oss_20b(), "20b").unwrap();
        check_config(&ModelConfig::gpt_oss_120b(), "120b").unwrap();
    }

    #[test]
    fn values_that_make_logits_nan_are_refused_by_name() {
        type Break = fn(&mut ModelConfig);
        let cases: [(&str, Break); 7] = [
            ("rope_theta", |c| c.rope_theta = 0.0),
            ("rope_theta", |c| c.rope_theta = -150000.0),
            ("rms_norm_eps", |c| c.rms_norm_eps = -1e-5),
            ("rms_norm_eps", |c| c.rms_norm_eps = f64::NAN),
            ("rope_scaling.factor", |c| {
                c.yarn.as_mut().unwrap().factor = 0.0
            }),
            ("rope_scaling.beta_fast", |c| {
                c.yarn.as_mut().unwrap().beta_fast = f64::INFINITY
            }),
            ("swiglu_limit", |c| c.swiglu_limit = 0.0),
        ];
        for (field, break_it) in cases {
            let mut c = ModelConfig::gpt_oss_20b();
            break_it(&mut c);
            let e = check_config(&c, "cfg.json").unwrap_err().to_string();
            assert!(e.contains(&format!("`{field}`")), "{field}: {e}");
        }
    }

    #[test]
    fn sizes_past_the_bounds_are_refused() {
        let mut c = ModelConfig::gpt_oss_20b();
        c.num_local_experts = 1_000_000_000;
        let e = check_config(&c, "cfg.json").unwrap_err().to_string();
        assert!(
            e.contains("`num_local_experts`") && e.contains("1000000000"),
            "{e}"
        );
        assert!(size("f", "x", u64::MAX, 10).is_err());
        assert_eq!(size("f", "x", 10, 10).unwrap(), 10);
    }
}
