//! Random weights of a real model's shapes (`--dummy gpt-oss-20b`): MXFP4 experts and bf16 dense
//! tensors with magnitudes that keep activations finite. They cost exactly what real weights cost,
//! so speed and memory can be measured before downloading anything.

use half::bf16;

use crate::config::ModelConfig;
use crate::tensor::{DType, QuantTensor, Storage, TensorFormat};
use crate::weights::{Expert, LayerWeights, Linear, ModelWeights};

/// E8M0 byte of the gate/up scales: 2^-7 keeps an MXFP4 weight's std near 1/sqrt(2880).
const EXPERT_SCALE_E8M0: u8 = 120;

/// Output projections (attention `o`, expert `down`) are this much smaller than fan-in scaling, so
/// each block adds a small update to the residual stream (as in trained models) instead of one as
/// large as the stream itself. With full-size blocks the random model is chaotic: an f32 rounding
/// or a near-tie expert choice changes later logits visibly, and engines cannot be compared.
const OUTPUT_PROJ_GAIN: f32 = 0.25;

/// E8M0 byte of the `down` scales: `EXPERT_SCALE_E8M0` times `OUTPUT_PROJ_GAIN` (2^-2).
const DOWN_SCALE_E8M0: u8 = EXPERT_SCALE_E8M0 - 2;

/// A small fast PRNG (xorshift64*); dummy weights need speed, not quality.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn fill_bytes(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }

    /// Uniform in [-a, a).
    fn uniform(&mut self, a: f32) -> f32 {
        ((self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * a
    }
}

/// Builds random weights for `config`; the same seed gives the same weights. Layers are generated
/// on their own threads (each from its own seed), so 20b's 13 GB take seconds, not a minute.
pub fn dummy_weights(config: &ModelConfig, seed: u64) -> ModelWeights {
    let c = config;
    let h = c.hidden_size;
    let seeded = |stream: u64| {
        Rng(
            (seed ^ stream.wrapping_mul(0xD6E8_FEB8_6659_FD93)).wrapping_mul(0x9E37_79B9_7F4A_7C15)
                | 1,
        )
    };
    let layers = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..c.num_hidden_layers)
            .map(|l| scope.spawn(move || dummy_layer(c, &mut seeded(l as u64 + 1))))
            .collect();
        handles
            .into_iter()
            .map(|t| t.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    });
    let mut rng = seeded(0);
    ModelWeights {
        config: config.clone(),
        embed: bf16_tensor(&mut rng, c.vocab_size, h, 1.0),
        layers,
        norm: vec![1.0; h],
        lm_head: bf16_tensor(&mut rng, c.vocab_size, h, (3.0 / h as f32).sqrt()),
    }
}

/// What [`dummy_weights`] would build for `config`, without building it: per storage format (as
/// [`crate::TensorFormat::describe`] names it) the tensor count and bytes, and the bytes of everything
/// (tensors plus f32 norms, sinks and biases, as [`ModelWeights::size_bytes`] counts them).
pub fn dummy_sizes(config: &ModelConfig) -> DummySizes {
    let c = config;
    let (h, qw, kvw, e, i, v, l) = (
        c.hidden_size,
        c.q_width(),
        c.kv_width(),
        c.num_local_experts,
        c.intermediate_size,
        c.vocab_size,
        c.num_hidden_layers,
    );
    let bf16 = 2 * (2 * v * h + l * (qw * h + 2 * kvw * h + h * qw + e * h));
    let mxfp4 = |rows: usize, cols: usize| rows * cols / 2 + rows * cols / 32;
    let experts = l * e * (mxfp4(2 * i, h) + mxfp4(h, i));
    let floats = h + l * (2 * h + c.num_attention_heads + qw + 2 * kvw + h + e + e * (2 * i + h));
    DummySizes {
        types: vec![
            ("bf16".to_string(), 2 + 5 * l, bf16),
            ("mxfp4/32".to_string(), 2 * e * l, experts),
        ],
        size_bytes: bf16 + experts + 4 * floats,
    }
}

/// The sizes [`dummy_sizes`] reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DummySizes {
    /// `(format, tensors, bytes)`, formats in name order.
    pub types: Vec<(String, usize, usize)>,
    /// Bytes of every weight, vectors included.
    pub size_bytes: usize,
}

fn dummy_layer(c: &ModelConfig, rng: &mut Rng) -> LayerWeights {
    let h = c.hidden_size;
    LayerWeights {
        attn_norm: vec![1.0; h],
        q: dense_linear(rng, c.q_width(), h),
        k: dense_linear(rng, c.kv_width(), h),
        v: dense_linear(rng, c.kv_width(), h),
        o: Linear {
            weight: bf16_tensor(
                rng,
                h,
                c.q_width(),
                OUTPUT_PROJ_GAIN * (3.0 / c.q_width() as f32).sqrt(),
            ),
            bias: small_bias(rng, h),
        },
        sinks: (0..c.num_attention_heads)
            .map(|_| rng.uniform(1.0))
            .collect(),
        mlp_norm: vec![1.0; h],
        router: dense_linear(rng, c.num_local_experts, h),
        experts: (0..c.num_local_experts)
            .map(|_| Expert {
                gate_up: mxfp4_linear(rng, 2 * c.intermediate_size, h, EXPERT_SCALE_E8M0),
                down: mxfp4_linear(rng, h, c.intermediate_size, DOWN_SCALE_E8M0),
            })
            .collect(),
    }
}

fn bf16_tensor(rng: &mut Rng, rows: usize, cols: usize, amplitude: f32) -> QuantTensor {
    // Random sign and mantissa with the exponent of `amplitude / 2`: magnitudes in [a/2, a) at
    // four values per RNG draw (a per-element float conversion makes 20b's 1.2 G values slow).
    let exponent = ((bf16::from_f32(amplitude / 2.0).to_bits() >> 7) & 0xFF) << 7;
    let mut bytes = vec![0u8; rows * cols * 2];
    for chunk in bytes.chunks_mut(8) {
        let r = rng.next().to_le_bytes();
        for (dst, src) in chunk.chunks_mut(2).zip(r.chunks(2)) {
            let bits = u16::from_le_bytes([src[0], src[1]]);
            let v = (bits & 0x807F) | exponent;
            dst.copy_from_slice(&v.to_le_bytes());
        }
    }
    QuantTensor {
        shape: vec![rows, cols],
        format: TensorFormat::Dense(DType::BF16),
        data: Storage::owned(bytes),
    }
}

fn small_bias(rng: &mut Rng, n: usize) -> Option<Vec<f32>> {
    Some((0..n).map(|_| rng.uniform(0.02)).collect())
}

fn dense_linear(rng: &mut Rng, out: usize, inp: usize) -> Linear {
    Linear {
        weight: bf16_tensor(rng, out, inp, (3.0 / inp as f32).sqrt()),
        bias: small_bias(rng, out),
    }
}

fn mxfp4_linear(rng: &mut Rng, out: usize, inp: usize, scale_e8m0: u8) -> Linear {
    let mut codes = vec![0u8; out * inp / 2];
    rng.fill_bytes(&mut codes);
    let scales = vec![scale_e8m0; out * inp / 32];
    let weight = QuantTensor::hf_mxfp4(
        vec![out, inp],
        Storage::owned(codes),
        Storage::owned(scales),
    );
    Linear {
        weight,
        bias: small_bias(rng, out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_without_building_match_the_built_weights() {
        let mut cfg = ModelConfig::gpt_oss_20b();
        cfg.num_hidden_layers = 2;
        cfg.layer_types.truncate(2);
        cfg.vocab_size = 1000;
        let w = dummy_weights(&cfg, 3);
        let mut types = std::collections::BTreeMap::<String, (usize, usize)>::new();
        w.for_each_tensor(|_, t| {
            let e = types.entry(t.format.describe()).or_default();
            e.0 += 1;
            e.1 += t.size_bytes();
        });
        let built: Vec<_> = types.into_iter().map(|(k, (n, b))| (k, n, b)).collect();
        let sizes = dummy_sizes(&cfg);
        assert_eq!(sizes.types, built);
        assert_eq!(sizes.size_bytes, w.size_bytes());
        // 120b at full size: 36 layers of 128 experts, nothing built.
        let big = dummy_sizes(&ModelConfig::gpt_oss_120b());
        assert_eq!(big.types[1].1, 2 * 128 * 36);
    }

    #[test]
    fn dummy_has_real_shapes_and_sizes() {
        let mut cfg = ModelConfig::gpt_oss_20b();
        cfg.num_hidden_layers = 1;
        cfg.layer_types.truncate(1);
        cfg.vocab_size = 1024;
        let w = dummy_weights(&cfg, 1);
        let e = &w.layers[0].experts[0];
        assert_eq!(e.gate_up.weight.shape, vec![5760, 2880]);
        e.gate_up.weight.validate("dummy", "gate_up").unwrap();
        assert_eq!(e.gate_up.weight.size_bytes(), 5760 * 2880 / 2 + 5760 * 90);
        let rms = |t: &QuantTensor| {
            let vals = t.to_f32_vec();
            (vals.iter().map(|v| v * v).sum::<f32>() / vals.len() as f32).sqrt()
        };
        // E2M1 codes uniform over 16 values have rms sqrt(68.5 / 8) = 2.926; times the block scale 2^-7.
        let gate_up = rms(&e.gate_up.weight);
        assert!((gate_up / (2.926 / 128.0) - 1.0).abs() < 0.05, "{gate_up}");
        // down is OUTPUT_PROJ_GAIN smaller (same codes distribution, scale 2^-9).
        let down = rms(&e.down.weight);
        assert!(
            (down / gate_up / OUTPUT_PROJ_GAIN - 1.0).abs() < 0.05,
            "{down} vs {gate_up}"
        );
        let o = rms(&w.layers[0].o.weight);
        let fan_in = (3.0 / 4096f32).sqrt() * OUTPUT_PROJ_GAIN;
        // bf16_tensor draws magnitudes in one binade at or below a/2 .. a: rms between 0.38 a and 0.76 a.
        assert!(o > 0.35 * fan_in && o < 0.8 * fan_in, "{o} vs {fan_in}");
    }
}
