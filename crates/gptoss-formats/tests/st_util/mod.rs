//! Shared helpers of the st_* tests: a safetensors writer, a tiny random gpt-oss model with MXFP4
//! experts (the truth every layout is written from), and the HF / original names of its tensors.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use half::bf16;
use serde_json::json;

pub const H: usize = 64;
pub const I: usize = 32;
pub const V: usize = 8;
pub const L: usize = 2;
pub const E: usize = 3;
pub const Q: usize = 64; // 4 heads × 16
pub const KV: usize = 32; // 2 heads × 16

/// E2M1 values by code, written out here independently of the crate.
pub const FP4: [f32; 16] = [
    0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0,
];

/// One stored tensor.
pub struct T {
    pub name: String,
    pub dtype: &'static str,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

pub fn t(name: impl Into<String>, dtype: &'static str, shape: &[usize], bytes: Vec<u8>) -> T {
    T {
        name: name.into(),
        dtype,
        shape: shape.to_vec(),
        bytes,
    }
}

pub fn bf16s(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|x| bf16::from_f32(*x).to_le_bytes())
        .collect()
}

pub fn f32s(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Writes a safetensors file by hand (header JSON padded to 8 bytes, then the data).
pub fn write_st(path: &Path, ts: &[T]) {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut off = 0;
    for x in ts {
        header.insert(
            x.name.clone(),
            json!({"dtype": x.dtype, "shape": x.shape, "data_offsets": [off, off + x.bytes.len()]}),
        );
        off += x.bytes.len();
    }
    let mut h = serde_json::to_vec(&serde_json::Value::Object(header)).unwrap();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    for x in ts {
        out.extend_from_slice(&x.bytes);
    }
    std::fs::write(path, out).unwrap();
}

/// A fresh empty directory under the target dir.
pub fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gptoss-st-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407))
    }
    pub fn next(&mut self) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) as u32
    }
    /// Uniform in [-1, 1), rounded to bf16.
    pub fn val(&mut self) -> f32 {
        let x = (self.next() % 20001) as f32 / 10000.0 - 1.0;
        bf16::from_f32(x).to_f32()
    }
    pub fn vals(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.val()).collect()
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

pub fn hf_config() -> serde_json::Value {
    json!({
        "architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss",
        "hidden_size": H, "intermediate_size": I, "head_dim": 16, "num_attention_heads": 4,
        "num_key_value_heads": 2, "num_hidden_layers": L,
        "layer_types": ["sliding_attention", "full_attention"], "sliding_window": 8,
        "num_local_experts": E, "num_experts_per_tok": 2, "vocab_size": V, "rope_theta": 150000.0,
        "rope_scaling": {"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0,
                         "original_max_position_embeddings": 4096, "truncate": false},
        "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "swiglu_limit": 7.0,
        "tie_word_embeddings": false
    })
}

pub fn original_config() -> serde_json::Value {
    json!({
        "num_hidden_layers": L, "num_experts": E, "experts_per_token": 2, "vocab_size": V,
        "hidden_size": H, "intermediate_size": I, "swiglu_limit": 7.0, "head_dim": 16,
        "num_attention_heads": 4, "num_key_value_heads": 2, "sliding_window": 8,
        "initial_context_length": 4096, "rope_theta": 150000.0, "rope_scaling_factor": 32.0,
        "rope_ntk_alpha": 1.0, "rope_ntk_beta": 32.0
    })
}

pub fn write_config(dir: &Path, cfg: &serde_json::Value) {
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_vec_pretty(cfg).unwrap(),
    )
    .unwrap();
}

/// MXFP4 expert weights of one (layer, projection): codes `[E, rows, G, 16]` and scales `[E, rows, G]`.
pub struct Mx {
    pub rows: usize,
    pub cols: usize,
    pub blocks: Vec<u8>,
    pub scales: Vec<u8>,
}

impl Mx {
    /// The `[rows, cols]` weight of expert `e`, decoded by hand (low nibble = even column).
    pub fn expert(&self, e: usize) -> Vec<f32> {
        let g = self.cols / 32;
        let mut out = Vec::with_capacity(self.rows * self.cols);
        for r in 0..self.rows {
            for c in 0..self.cols {
                let blk = (e * self.rows + r) * g + c / 32;
                let byte = self.blocks[blk * 16 + (c % 32) / 2];
                let code = if c % 2 == 0 { byte & 15 } else { byte >> 4 };
                out.push(FP4[code as usize] * 2f32.powi(self.scales[blk] as i32 - 127));
            }
        }
        out
    }
}

/// The tiny model: every non-expert tensor by canonical name, the MXFP4 experts, the expert biases.
pub struct Tiny {
    pub plain: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    /// `(layer, 0 = gate_up | 1 = down)` → experts.
    pub mx: BTreeMap<(usize, usize), Mx>,
    /// `(layer, 0 | 1)` → `[E, out]` biases.
    pub bias: BTreeMap<(usize, usize), Vec<f32>>,
}

impl Tiny {
    pub fn new(seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let mut plain = BTreeMap::new();
        let mut add = |rng: &mut Rng, name: String, shape: Vec<usize>| {
            let n = shape.iter().product();
            plain.insert(name, (shape, rng.vals(n)));
        };
        add(&mut rng, "embed".into(), vec![V, H]);
        add(&mut rng, "norm".into(), vec![H]);
        add(&mut rng, "lm_head".into(), vec![V, H]);
        for l in 0..L {
            let n = |w: &str| format!("layers.{l}.{w}");
            for (w, shape) in [
                ("attn_norm", vec![H]),
                ("q.weight", vec![Q, H]),
                ("q.bias", vec![Q]),
                ("k.weight", vec![KV, H]),
                ("k.bias", vec![KV]),
                ("v.weight", vec![KV, H]),
                ("v.bias", vec![KV]),
                ("o.weight", vec![H, Q]),
                ("o.bias", vec![H]),
                ("sinks", vec![4]),
                ("mlp_norm", vec![H]),
                ("router.weight", vec![E, H]),
                ("router.bias", vec![E]),
            ] {
                add(&mut rng, n(w), shape);
            }
        }
        let (mut mx, mut bias) = (BTreeMap::new(), BTreeMap::new());
        for l in 0..L {
            for (p, rows, cols) in [(0, 2 * I, H), (1, H, I)] {
                let nblk = E * rows * cols / 32;
                let scales = (0..nblk).map(|_| 124 + (rng.next() % 4) as u8).collect();
                let m = Mx {
                    rows,
                    cols,
                    blocks: rng.bytes(nblk * 16),
                    scales,
                };
                mx.insert((l, p), m);
                bias.insert((l, p), rng.vals(E * rows));
            }
        }
        Tiny { plain, mx, bias }
    }

    /// Canonical name → (shape, values) of every tensor, experts included.
    pub fn truth(&self) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
        let mut all = self.plain.clone();
        for ((l, p), m) in &self.mx {
            let what = ["gate_up", "down"][*p];
            for e in 0..E {
                let b = &self.bias[&(*l, *p)][e * m.rows..(e + 1) * m.rows];
                all.insert(
                    format!("layers.{l}.experts.{e}.{what}.weight"),
                    (vec![m.rows, m.cols], m.expert(e)),
                );
                all.insert(
                    format!("layers.{l}.experts.{e}.{what}.bias"),
                    (vec![m.rows], b.to_vec()),
                );
            }
        }
        all
    }

    /// The whole model in the HF MXFP4 layout (spec §2a), unsharded.
    pub fn hf_mxfp4(&self) -> Vec<T> {
        let mut ts = self.hf_plain();
        for l in 0..L {
            for (p, what) in [(0, "gate_up_proj"), (1, "down_proj")] {
                let m = &self.mx[&(l, p)];
                let pre = format!("model.layers.{l}.mlp.experts.{what}");
                let g = m.cols / 32;
                ts.push(t(
                    format!("{pre}_blocks"),
                    "U8",
                    &[E, m.rows, g, 16],
                    m.blocks.clone(),
                ));
                ts.push(t(
                    format!("{pre}_scales"),
                    "U8",
                    &[E, m.rows, g],
                    m.scales.clone(),
                ));
                ts.push(t(
                    format!("{pre}_bias"),
                    "BF16",
                    &[E, m.rows],
                    bf16s(&self.bias[&(l, p)]),
                ));
            }
        }
        ts
    }

    /// The non-expert tensors under HF names, bf16.
    pub fn hf_plain(&self) -> Vec<T> {
        self.plain
            .iter()
            .map(|(name, (shape, v))| t(hf_name(name), "BF16", shape, bf16s(v)))
            .collect()
    }
}

/// HF name of a canonical non-expert tensor.
pub fn hf_name(canonical: &str) -> String {
    let global = match canonical {
        "embed" => Some("model.embed_tokens.weight"),
        "norm" => Some("model.norm.weight"),
        "lm_head" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(g) = global {
        return g.to_string();
    }
    let rest = canonical.strip_prefix("layers.").unwrap();
    let (l, what) = rest.split_once('.').unwrap();
    let hf = match what {
        "attn_norm" => "input_layernorm.weight".to_string(),
        "mlp_norm" => "post_attention_layernorm.weight".to_string(),
        "sinks" => "self_attn.sinks".to_string(),
        w if w.starts_with("router.") => format!("mlp.{w}"),
        w => {
            let (p, part) = w.split_once('.').unwrap();
            format!("self_attn.{p}_proj.{part}")
        }
    };
    format!("model.layers.{l}.{hf}")
}

/// `[rows, cols]` → `[cols, rows]`.
pub fn transpose(v: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; v.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = v[r * cols + c];
        }
    }
    out
}

/// Loads `path` and compares every canonical tensor with `truth` (exact f32 values, shapes, no extras).
pub fn check_truth(
    path: &Path,
    truth: &BTreeMap<String, (Vec<usize>, Vec<f32>)>,
) -> gptoss_formats::RawCheckpoint {
    let raw = gptoss_formats::read_raw(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let got: Vec<&String> = raw.tensors.tensors.keys().collect();
    let want: Vec<&String> = truth.keys().collect();
    assert_eq!(got, want, "canonical names of {}", path.display());
    for (name, (shape, vals)) in truth {
        let (tensor, origin) = &raw.tensors.tensors[name];
        assert_eq!(&tensor.shape, shape, "{name} from {origin}");
        let dec = tensor.to_f32_vec();
        for (i, (a, b)) in dec.iter().zip(vals).enumerate() {
            assert!(
                a.to_bits() == b.to_bits() || a == b,
                "{name} ({origin}) [{i}]: got {a}, want {b}"
            );
        }
    }
    gptoss_formats::load(path).unwrap_or_else(|e| panic!("assemble {}: {e}", path.display()));
    raw
}

/// The message of an expected error.
pub fn err_text(path: &Path) -> String {
    match gptoss_formats::load(path) {
        Ok(_) => panic!("{} loaded but should not", path.display()),
        Err(e) => e.to_string(),
    }
}
