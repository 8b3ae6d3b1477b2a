//! The canonical weight set (DESIGN.md "Weights") and its assembly from the canonical-name map
//! every reader produces. Assembly checks every tensor against the config and reports all problems
//! at once: unknown names, missing tensors, wrong shapes.

use std::collections::BTreeMap;

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::storage::Storage;
use crate::tensor::{QuantTensor, TensorFormat, Q8_0_BLOCK};

/// Canonical tensor names. Readers map their file's names to these; nothing after loading sees a
/// file's own names.
pub mod names {
    /// Token embedding `[V, H]`.
    pub const EMBED: &str = "embed";
    /// Final norm `[H]`.
    pub const NORM: &str = "norm";
    /// Unembedding `[V, H]`.
    pub const LM_HEAD: &str = "lm_head";

    /// `layers.{layer}.{what}` — e.g. `q.weight`, `sinks`, `router.bias`.
    pub fn layer(layer: usize, what: &str) -> String {
        format!("layers.{layer}.{what}")
    }

    /// `layers.{layer}.experts.{expert}.{what}` — `gate_up.weight` `[2I, H]` (rows interleaved gate,
    /// up), `gate_up.bias` `[2I]`, `down.weight` `[H, I]`, `down.bias` `[H]`.
    pub fn expert(layer: usize, expert: usize, what: &str) -> String {
        format!("layers.{layer}.experts.{expert}.{what}")
    }
}

/// A map from canonical name to tensor, with the file each came from (for error messages).
#[derive(Default, Debug)]
pub struct TensorMap {
    /// Canonical name → (tensor, where it was read from as `file: stored name`).
    pub tensors: BTreeMap<String, (QuantTensor, String)>,
}

impl TensorMap {
    /// Adds a tensor; `origin` is `file: stored name`.
    pub fn insert(&mut self, name: String, tensor: QuantTensor, origin: String) {
        self.tensors.insert(name, (tensor, origin));
    }
}

/// A linear layer `y = W x + b`, `W` `[out, in]`.
#[derive(Clone, Debug)]
pub struct Linear {
    /// Weight `[out, in]`.
    pub weight: QuantTensor,
    /// Bias `[out]`, f32.
    pub bias: Option<Vec<f32>>,
}

/// One expert's two projections.
#[derive(Clone, Debug)]
pub struct Expert {
    /// `[2I, H]`, rows interleaved: row `2j` gate, `2j+1` up (spec §1.3 MoE).
    pub gate_up: Linear,
    /// `[H, I]`.
    pub down: Linear,
}

/// The weights of one transformer block.
#[derive(Clone, Debug)]
pub struct LayerWeights {
    /// Pre-attention RMSNorm weight `[H]`.
    pub attn_norm: Vec<f32>,
    /// `[q_width, H]`.
    pub q: Linear,
    /// `[kv_width, H]`.
    pub k: Linear,
    /// `[kv_width, H]`.
    pub v: Linear,
    /// `[H, q_width]`.
    pub o: Linear,
    /// One sink logit per query head `[n_q_heads]`.
    pub sinks: Vec<f32>,
    /// Pre-MoE RMSNorm weight `[H]`.
    pub mlp_norm: Vec<f32>,
    /// `[E, H]` with bias `[E]`.
    pub router: Linear,
    /// `E` experts.
    pub experts: Vec<Expert>,
}

/// Every weight of a gpt-oss model, in canonical form, still on the host.
#[derive(Clone, Debug)]
pub struct ModelWeights {
    /// The hyper-parameters the weights were checked against.
    pub config: ModelConfig,
    /// `[V, H]`.
    pub embed: QuantTensor,
    /// Blocks, in order.
    pub layers: Vec<LayerWeights>,
    /// Final norm `[H]`.
    pub norm: Vec<f32>,
    /// `[V, H]`.
    pub lm_head: QuantTensor,
}

impl ModelWeights {
    /// Every weight tensor with its canonical name (for inspection and memory accounting).
    pub fn for_each_tensor(&self, mut f: impl FnMut(&str, &QuantTensor)) {
        f(names::EMBED, &self.embed);
        f(names::LM_HEAD, &self.lm_head);
        for (l, layer) in self.layers.iter().enumerate() {
            for (what, lin) in [
                ("q", &layer.q),
                ("k", &layer.k),
                ("v", &layer.v),
                ("o", &layer.o),
                ("router", &layer.router),
            ] {
                f(&names::layer(l, &format!("{what}.weight")), &lin.weight);
            }
            for (e, ex) in layer.experts.iter().enumerate() {
                f(&names::expert(l, e, "gate_up.weight"), &ex.gate_up.weight);
                f(&names::expert(l, e, "down.weight"), &ex.down.weight);
            }
        }
    }

    /// The same weights with every dense 16- or 32-bit matrix outside the experts and the router (the
    /// attention projections, the embedding and lm_head) quantized to ggml Q8_0 as the ggml-org GGUFs
    /// store them (`--dense q8_0`): about half the bytes a decoded token reads, at a measured cost in
    /// accuracy (bench/BENCHMARKS.md). Built lazily, one tensor at a time as a consumer reads it. Tensors
    /// already quantized, and rows that are not whole 32-element blocks, are kept as they are.
    pub fn with_dense_q8_0(mut self) -> Self {
        let quantize = |t: &mut QuantTensor| {
            let TensorFormat::Dense(dtype) = t.format else {
                return;
            };
            if !t.row_len().is_multiple_of(Q8_0_BLOCK) {
                return;
            }
            if let Ok(data) = Storage::quantized_q8_0(t.data.clone(), dtype) {
                t.format = TensorFormat::Q8_0;
                t.data = data;
            }
        };
        quantize(&mut self.embed);
        quantize(&mut self.lm_head);
        for l in &mut self.layers {
            for lin in [&mut l.q, &mut l.k, &mut l.v, &mut l.o] {
                quantize(&mut lin.weight);
            }
        }
        self
    }

    /// Bytes of all tensors as stored (weights, plus f32 norms, biases and sinks).
    pub fn size_bytes(&self) -> usize {
        let mut total = 0;
        self.for_each_tensor(|_, t| total += t.size_bytes());
        let floats = self.norm.len()
            + self
                .layers
                .iter()
                .map(|l| {
                    let lin_bias = |x: &Linear| x.bias.as_ref().map_or(0, Vec::len);
                    l.attn_norm.len()
                        + l.mlp_norm.len()
                        + l.sinks.len()
                        + [&l.q, &l.k, &l.v, &l.o, &l.router]
                            .iter()
                            .map(|x| lin_bias(x))
                            .sum::<usize>()
                        + l.experts
                            .iter()
                            .map(|e| lin_bias(&e.gate_up) + lin_bias(&e.down))
                            .sum::<usize>()
                })
                .sum::<usize>();
        total + floats * 4
    }

    /// Builds the canonical weights from a reader's map, checking each tensor against `config`.
    /// Every unknown, missing or misshapen tensor is reported in one error; `source` names the checkpoint.
    pub fn assemble(config: ModelConfig, map: TensorMap, source: &str) -> Result<Self> {
        check_counts(&config, &map, source)?;
        let mut a = Assembler {
            map: map.tensors,
            problems: Vec::new(),
        };
        let c = &config;
        let (h, v, q, kv) = (c.hidden_size, c.vocab_size, c.q_width(), c.kv_width());
        let (e_count, i2) = (c.num_local_experts, 2 * c.intermediate_size);
        let embed = a.tensor(names::EMBED, &[v, h]);
        let lm_head = a.tensor(names::LM_HEAD, &[v, h]);
        let norm = a.vector(names::NORM, h);
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for l in 0..c.num_hidden_layers {
            let n = |what: &str| names::layer(l, what);
            let linear = |a: &mut Assembler, what: &str, out: usize, inp: usize| Linear {
                weight: a.tensor(&n(&format!("{what}.weight")), &[out, inp]),
                bias: Some(a.vector(&n(&format!("{what}.bias")), out)),
            };
            let attn_norm = a.vector(&n("attn_norm"), h);
            let (ql, kl, vl, ol) = (
                linear(&mut a, "q", q, h),
                linear(&mut a, "k", kv, h),
                linear(&mut a, "v", kv, h),
                linear(&mut a, "o", h, q),
            );
            let sinks = a.vector(&n("sinks"), c.num_attention_heads);
            let mlp_norm = a.vector(&n("mlp_norm"), h);
            let router = linear(&mut a, "router", e_count, h);
            let experts = (0..e_count)
                .map(|e| {
                    let ne = |what: &str| names::expert(l, e, what);
                    Expert {
                        gate_up: Linear {
                            weight: a.tensor(&ne("gate_up.weight"), &[i2, h]),
                            bias: Some(a.vector(&ne("gate_up.bias"), i2)),
                        },
                        down: Linear {
                            weight: a.tensor(&ne("down.weight"), &[h, c.intermediate_size]),
                            bias: Some(a.vector(&ne("down.bias"), h)),
                        },
                    }
                })
                .collect();
            layers.push(LayerWeights {
                attn_norm,
                q: ql,
                k: kl,
                v: vl,
                o: ol,
                sinks,
                mlp_norm,
                router,
                experts,
            });
        }
        for (name, (_, origin)) in &a.map {
            a.problems.push(format!("{origin}: not a gpt-oss tensor (maps to `{name}`, which this config does not have)"));
        }
        if !a.problems.is_empty() {
            return Err(Error::Tensors {
                source_desc: source.to_string(),
                problems: a.problems,
            });
        }
        Ok(ModelWeights {
            config,
            embed,
            layers,
            norm,
            lm_head,
        })
    }
}

/// Checks the config's layer and expert counts against the tensors present, before assembly loops over
/// them: a config that claims a billion experts of a small file is one clear error, not a billion
/// "missing" lines.
fn check_counts(config: &ModelConfig, map: &TensorMap, source: &str) -> Result<()> {
    let mut layers = std::collections::BTreeSet::new();
    let mut experts = 0usize;
    for name in map.tensors.keys() {
        let Some((layer, rest)) = name.strip_prefix("layers.").and_then(|r| r.split_once('.'))
        else {
            continue;
        };
        let Ok(layer) = layer.parse::<usize>() else {
            continue;
        };
        layers.insert(layer);
        let expert = rest
            .strip_prefix("experts.")
            .and_then(|r| r.split_once('.'))
            .and_then(|(e, _)| e.parse::<usize>().ok());
        if let Some(e) = expert {
            experts = experts.max(e.saturating_add(1));
        }
    }
    let fail = |field: &str, claimed: usize, found: usize, what: &str| {
        Err(Error::config(
            source,
            field,
            format!("is {claimed}, but the checkpoint holds tensors of {found} {what}"),
        ))
    };
    if config.num_hidden_layers > layers.len() {
        return fail(
            "num_hidden_layers",
            config.num_hidden_layers,
            layers.len(),
            "layers",
        );
    }
    if config.num_local_experts > experts {
        return fail(
            "num_local_experts",
            config.num_local_experts,
            experts,
            "experts",
        );
    }
    Ok(())
}

struct Assembler {
    map: BTreeMap<String, (QuantTensor, String)>,
    problems: Vec<String>,
}

impl Assembler {
    fn placeholder() -> QuantTensor {
        QuantTensor::from_f32(vec![0], &[])
    }

    fn tensor(&mut self, name: &str, shape: &[usize]) -> QuantTensor {
        match self.map.remove(name) {
            None => {
                self.problems
                    .push(format!("missing `{name}` (expected shape {shape:?})"));
                Self::placeholder()
            }
            Some((t, origin)) => {
                if t.shape != shape {
                    self.problems.push(format!(
                        "{origin} (`{name}`): expected shape {shape:?}, found {:?} {}",
                        t.shape,
                        t.format.describe()
                    ));
                    return Self::placeholder();
                }
                if let Err(e) = t.validate(&origin, name) {
                    self.problems.push(e.to_string());
                    return Self::placeholder();
                }
                t
            }
        }
    }

    fn vector(&mut self, name: &str, len: usize) -> Vec<f32> {
        match self.map.remove(name) {
            None => {
                self.problems
                    .push(format!("missing `{name}` (expected shape [{len}])"));
                Vec::new()
            }
            Some((t, origin)) => {
                if t.numel() != len || t.shape.len() != 1 {
                    self.problems.push(format!(
                        "{origin} (`{name}`): expected shape [{len}], found {:?}",
                        t.shape
                    ));
                    return Vec::new();
                }
                if !matches!(t.format, TensorFormat::Dense(_)) {
                    self.problems.push(format!(
                        "{origin} (`{name}`): expected a plain float vector, found {}",
                        t.format.describe()
                    ));
                    return Vec::new();
                }
                if let Err(e) = t.validate(&origin, name) {
                    self.problems.push(e.to_string());
                    return Vec::new();
                }
                t.to_f32_vec()
            }
        }
    }
}
