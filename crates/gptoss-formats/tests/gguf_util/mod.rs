//! Builds small gpt-oss GGUF files for the reader and writer tests: a tiny config, random but valid
//! blocks of every ggml type (finite f16 scales), written with the crate's GGUF stream writer.
#![allow(dead_code)]

use std::path::Path;

use gptoss_formats::gguf::container::Value;
use gptoss_formats::gguf::ggml_types::GgmlType;
use gptoss_formats::gguf::write::{PlannedTensor, StreamWriter};

/// xorshift64*: deterministic test data.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in [-1, 1).
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

/// Byte offsets of the f16 scales in one block of each type.
fn f16_fields(ty: GgmlType) -> &'static [usize] {
    match ty {
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 | GgmlType::IQ4NL | GgmlType::IQ4XS => {
            &[0]
        }
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4K | GgmlType::Q5K => &[0, 2],
        GgmlType::Q2K => &[80, 82],
        GgmlType::Q3K => &[108],
        GgmlType::Q6K => &[208],
        _ => &[],
    }
}

/// Random valid bytes for `numel` elements of `ty`.
pub fn random_bytes(ty: GgmlType, numel: usize, rng: &mut Rng) -> Vec<u8> {
    let blocks = numel / ty.block_elems();
    let mut out = Vec::with_capacity(blocks * ty.block_bytes());
    for _ in 0..blocks {
        let mut b = rng.bytes(ty.block_bytes());
        match ty {
            GgmlType::F32 => b = (rng.unit() * 2.0).to_le_bytes().to_vec(),
            GgmlType::F16 => b = half::f16::from_f32(rng.unit() * 2.0).to_le_bytes().to_vec(),
            GgmlType::BF16 => {
                b = half::bf16::from_f32(rng.unit() * 2.0)
                    .to_le_bytes()
                    .to_vec()
            }
            GgmlType::MXFP4 => b[0] = 118 + (rng.next_u64() % 8) as u8,
            _ => {}
        }
        for &at in f16_fields(ty) {
            b[at..at + 2].copy_from_slice(&half::f16::from_f32(rng.unit() * 0.05).to_le_bytes());
        }
        out.extend_from_slice(&b);
    }
    out
}

/// Shape facts of the tiny test model.
pub struct Tiny {
    pub layers: usize,
    pub experts: usize,
    pub hidden: usize,
    pub inter: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
}

pub const TINY: Tiny = Tiny {
    layers: 6,
    experts: 3,
    hidden: 64,
    inter: 96,
    heads: 4,
    kv_heads: 2,
    head_dim: 64,
    vocab: 64,
};

/// gpt-oss metadata for the tiny model, as llama.cpp's converter writes it.
pub fn tiny_metadata() -> Vec<(String, Value)> {
    let t = &TINY;
    let u = |n: usize| Value::U32(n as u32);
    let s = |x: &str| Value::String(x.into());
    let tokens: Vec<Value> = (0..t.vocab).map(|i| s(&format!("t{i}"))).collect();
    let types: Vec<Value> = (0..t.vocab)
        .map(|i| Value::I32(if i < 60 { 1 } else { 3 }))
        .collect();
    vec![
        ("general.architecture".into(), s("gpt-oss")),
        ("general.alignment".into(), u(64)),
        ("gpt-oss.block_count".into(), u(t.layers)),
        ("gpt-oss.context_length".into(), u(131072)),
        ("gpt-oss.embedding_length".into(), u(t.hidden)),
        ("gpt-oss.feed_forward_length".into(), u(t.inter)),
        ("gpt-oss.expert_feed_forward_length".into(), u(t.inter)),
        ("gpt-oss.attention.head_count".into(), u(t.heads)),
        ("gpt-oss.attention.head_count_kv".into(), u(t.kv_heads)),
        ("gpt-oss.rope.freq_base".into(), Value::F32(150000.0)),
        (
            "gpt-oss.attention.layer_norm_rms_epsilon".into(),
            Value::F32(1e-5),
        ),
        ("gpt-oss.expert_count".into(), u(t.experts)),
        ("gpt-oss.expert_used_count".into(), u(2)),
        ("gpt-oss.attention.key_length".into(), u(t.head_dim)),
        ("gpt-oss.attention.value_length".into(), u(t.head_dim)),
        ("gpt-oss.attention.sliding_window".into(), u(8)),
        ("gpt-oss.rope.scaling.type".into(), s("yarn")),
        ("gpt-oss.rope.scaling.factor".into(), Value::F32(32.0)),
        (
            "gpt-oss.rope.scaling.original_context_length".into(),
            u(4096),
        ),
        ("tokenizer.ggml.model".into(), s("gpt2")),
        ("tokenizer.ggml.pre".into(), s("gpt-4o")),
        (
            "tokenizer.ggml.tokens".into(),
            Value::array(8, tokens).unwrap(),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            Value::array(5, types).unwrap(),
        ),
        (
            "tokenizer.ggml.merges".into(),
            Value::array(8, vec![s("t1 t2"), s("t3 t4")]).unwrap(),
        ),
        ("tokenizer.ggml.bos_token_id".into(), u(61)),
        ("tokenizer.ggml.eos_token_id".into(), u(62)),
        ("tokenizer.ggml.padding_token_id".into(), u(63)),
        ("tokenizer.chat_template".into(), s("{{ messages }}")),
    ]
}

/// One tensor to write: plan and bytes.
pub type TensorData = (PlannedTensor, Vec<u8>);

/// Every tensor of the tiny model, with a different ggml type mix per layer. Layers 1 and 4 use
/// the fused `ffn_gate_up_exps` form; the rest separate gate/up.
pub fn tiny_tensors(seed: u64) -> Vec<TensorData> {
    use GgmlType::*;
    let t = &TINY;
    let mut rng = Rng(seed);
    let mut out = Vec::new();
    let mut add = |name: String, shape: Vec<usize>, ty: GgmlType, rng: &mut Rng| {
        let numel = shape.iter().product();
        out.push((
            PlannedTensor::new(name, &shape, ty),
            random_bytes(ty, numel, rng),
        ));
    };
    let (h, q, kv, e, i) = (
        t.hidden,
        t.heads * t.head_dim,
        t.kv_heads * t.head_dim,
        t.experts,
        t.inter,
    );
    add("token_embd.weight".into(), vec![t.vocab, h], Q8_0, &mut rng);
    add("output_norm.weight".into(), vec![h], F32, &mut rng);
    add("output.weight".into(), vec![t.vocab, h], F16, &mut rng);
    let q_types = [Q4_0, Q4_1, Q5_0, Q5_1, IQ4NL, Q8_0];
    let k_types = [IQ4NL, BF16, F16, F32, Q8_0, Q4_0];
    let o_types = [Q6K, Q4K, Q2K, Q3K, Q5K, IQ4XS];
    let x_types = [MXFP4, MXFP4, BF16, Q8_0, Q4_0, MXFP4];
    for l in 0..t.layers {
        let n = |s: &str| format!("blk.{l}.{s}");
        add(n("attn_norm.weight"), vec![h], F32, &mut rng);
        add(n("attn_q.weight"), vec![q, h], q_types[l], &mut rng);
        add(n("attn_q.bias"), vec![q], F32, &mut rng);
        add(n("attn_k.weight"), vec![kv, h], k_types[l], &mut rng);
        add(n("attn_k.bias"), vec![kv], F32, &mut rng);
        add(
            n("attn_v.weight"),
            vec![kv, h],
            k_types[(l + 1) % 6],
            &mut rng,
        );
        add(n("attn_v.bias"), vec![kv], F32, &mut rng);
        add(n("attn_output.weight"), vec![h, q], o_types[l], &mut rng);
        add(n("attn_output.bias"), vec![h], F32, &mut rng);
        add(n("attn_sinks.weight"), vec![t.heads], F32, &mut rng);
        add(n("post_attention_norm.weight"), vec![h], F32, &mut rng);
        add(n("ffn_gate_inp.weight"), vec![e, h], F32, &mut rng);
        add(n("ffn_gate_inp.bias"), vec![e], F32, &mut rng);
        if l == 1 || l == 4 {
            add(
                n("ffn_gate_up_exps.weight"),
                vec![e, 2 * i, h],
                x_types[l],
                &mut rng,
            );
            add(n("ffn_gate_up_exps.bias"), vec![e, 2 * i], F32, &mut rng);
        } else {
            add(
                n("ffn_gate_exps.weight"),
                vec![e, i, h],
                x_types[l],
                &mut rng,
            );
            add(n("ffn_gate_exps.bias"), vec![e, i], F32, &mut rng);
            add(n("ffn_up_exps.weight"), vec![e, i, h], x_types[l], &mut rng);
            add(n("ffn_up_exps.bias"), vec![e, i], F32, &mut rng);
        }
        add(
            n("ffn_down_exps.weight"),
            vec![e, h, i],
            x_types[l],
            &mut rng,
        );
        add(n("ffn_down_exps.bias"), vec![e, h], F32, &mut rng);
    }
    out
}

/// Writes a GGUF file.
pub fn write_gguf(path: &Path, metadata: &[(String, Value)], tensors: &[TensorData]) {
    let plan = tensors.iter().map(|(p, _)| p.clone()).collect();
    let mut w = StreamWriter::create(path, metadata, plan).unwrap();
    for (p, bytes) in tensors {
        w.write_tensor(&p.name, bytes).unwrap();
    }
    w.finish().unwrap();
}

/// A fresh empty directory under the target dir for one test.
pub fn scratch_dir(test: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("gptoss-gguf-tests-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
