//! Peak heap of a conversion, measured exactly by a counting global allocator: checkpoints with
//! several-MB expert tensors in the layouts whose canonical tensors need a transform (HF dense
//! `[E, in, out]`, split gate/up per expert, GGUF gate/up stacks) are converted one tensor at a time,
//! so the peak must stay near the largest single tensor, far below the experts' total size.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use gptoss_formats::gguf::{self, ExpertType, OutType, WriteOptions};
use gptoss_formats::st::{self, Existing, HfWriteOptions};
use serde_json::json;

/// The system allocator, counting live bytes and their high-water mark.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(n: usize) {
    let now = LIVE.fetch_add(n, Ordering::SeqCst) + n;
    PEAK.fetch_max(now, Ordering::SeqCst);
}

// SAFETY: every call is forwarded to `System` unchanged; only counters are updated beside it.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        LIVE.fetch_sub(layout.size(), Ordering::SeqCst);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::SeqCst);
            grew(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Runs `f` and returns its result with the heap's peak above what was live when it started.
fn peak_heap<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.load(Ordering::SeqCst);
    PEAK.store(base, Ordering::SeqCst);
    let out = f();
    (out, PEAK.load(Ordering::SeqCst) - base)
}

const H: usize = 1024;
const I: usize = 1024;
const E: usize = 8;
const L: usize = 2;
const V: usize = 1024;
const HEADS: usize = 16;
const KV_HEADS: usize = 2;
const HEAD_DIM: usize = 64;

/// One expert's gate_up `[2I, H]` in bf16: the largest tensor of the model.
const LARGEST_BYTES: usize = 2 * I * H * 2;
/// All expert weights in bf16.
const EXPERT_BYTES: usize = L * E * 3 * I * H * 2;
// The bound asserted below (twice the largest tensor) is far below the experts' total size.
const _: () = assert!(2 * LARGEST_BYTES <= EXPERT_BYTES / 8);

fn config() -> serde_json::Value {
    json!({
        "architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss",
        "hidden_size": H, "intermediate_size": I, "head_dim": HEAD_DIM,
        "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS, "num_hidden_layers": L,
        "layer_types": ["sliding_attention", "full_attention"], "sliding_window": 128,
        "num_local_experts": E, "num_experts_per_tok": 4, "vocab_size": V, "rope_theta": 150000.0,
        "rope_scaling": {"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0,
                         "original_max_position_embeddings": 4096, "truncate": false},
        "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "swiglu_limit": 7.0,
        "tie_word_embeddings": false
    })
}

/// Random finite bf16 values of magnitude in [2^-7, 2^-6), fast enough in a debug build.
fn bf16_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = vec![0u8; 2 * n];
    for chunk in out.chunks_mut(8) {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        let r = s.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
        for (d, pair) in chunk.chunks_mut(2).zip(r.chunks(2)) {
            let bits = (u16::from_le_bytes([pair[0], pair[1]]) & 0x807F) | (120 << 7);
            d.copy_from_slice(&bits.to_le_bytes());
        }
    }
    out
}

/// A safetensors file written tensor by tensor: `(name, shape)` of bf16 tensors, filled by seed.
fn write_st(path: &Path, tensors: &[(String, Vec<usize>)]) {
    let mut header = serde_json::Map::new();
    let mut off = 0;
    for (name, shape) in tensors {
        let len = 2 * shape.iter().product::<usize>();
        header.insert(
            name.clone(),
            json!({"dtype": "BF16", "shape": shape, "data_offsets": [off, off + len]}),
        );
        off += len;
    }
    let mut h = serde_json::to_vec(&serde_json::Value::Object(header)).unwrap();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = BufWriter::new(File::create(path).unwrap());
    out.write_all(&(h.len() as u64).to_le_bytes()).unwrap();
    out.write_all(&h).unwrap();
    for (seed, (_, shape)) in tensors.iter().enumerate() {
        out.write_all(&bf16_bytes(shape.iter().product(), seed as u64 + 1))
            .unwrap();
    }
    out.flush().unwrap();
}

/// Non-expert tensors under HF names.
fn plain_tensors() -> Vec<(String, Vec<usize>)> {
    let (q, kv) = (HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM);
    let mut t = vec![
        ("model.embed_tokens.weight".to_string(), vec![V, H]),
        ("model.norm.weight".to_string(), vec![H]),
        ("lm_head.weight".to_string(), vec![V, H]),
    ];
    for l in 0..L {
        let p = format!("model.layers.{l}");
        for (name, shape) in [
            ("input_layernorm.weight", vec![H]),
            ("post_attention_layernorm.weight", vec![H]),
            ("self_attn.sinks", vec![HEADS]),
            ("self_attn.q_proj.weight", vec![q, H]),
            ("self_attn.q_proj.bias", vec![q]),
            ("self_attn.k_proj.weight", vec![kv, H]),
            ("self_attn.k_proj.bias", vec![kv]),
            ("self_attn.v_proj.weight", vec![kv, H]),
            ("self_attn.v_proj.bias", vec![kv]),
            ("self_attn.o_proj.weight", vec![H, q]),
            ("self_attn.o_proj.bias", vec![H]),
            ("mlp.router.weight", vec![E, H]),
            ("mlp.router.bias", vec![E]),
        ] {
            t.push((format!("{p}.{name}"), shape));
        }
    }
    t
}

/// HF dense (spec §2b): stacked `[E, in, out]` experts.
fn write_hf_dense(dir: &Path) {
    let mut t = plain_tensors();
    for l in 0..L {
        let p = format!("model.layers.{l}.mlp.experts");
        t.push((format!("{p}.gate_up_proj"), vec![E, H, 2 * I]));
        t.push((format!("{p}.gate_up_proj_bias"), vec![E, 2 * I]));
        t.push((format!("{p}.down_proj"), vec![E, I, H]));
        t.push((format!("{p}.down_proj_bias"), vec![E, H]));
    }
    write_st(&dir.join("model.safetensors"), &t);
}

/// Per-expert gate and up stored apart (spec §2d row 3).
fn write_split_gate_up(dir: &Path) {
    let mut t = plain_tensors();
    for l in 0..L {
        for e in 0..E {
            let p = format!("model.layers.{l}.mlp.experts");
            for (proj, rows, cols) in [("gate_proj", I, H), ("up_proj", I, H), ("down_proj", H, I)]
            {
                t.push((format!("{p}.{proj}.weights.{e}.weight"), vec![rows, cols]));
                t.push((format!("{p}.{proj}.weights.{e}.bias"), vec![rows]));
            }
        }
    }
    write_st(&dir.join("model.safetensors"), &t);
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gptoss-convert-mem-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn model_dir(root: &Path, name: &str, write: fn(&Path)) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), config().to_string()).unwrap();
    write(&dir);
    dir
}

/// Loads `src` and writes it as a GGUF with bf16 dense tensors and bf16 experts (a plain copy of
/// every row, so the measurement is of the data flow, not of a quantizer's scratch).
fn to_gguf(src: &Path, dest: &Path) {
    let ckpt = gptoss_formats::load(src).unwrap();
    let opts = WriteOptions {
        dense: OutType::BF16,
        experts: ExpertType::Other(OutType::BF16),
        progress: None,
    };
    gguf::write_model_with(&ckpt.weights, None, opts, dest).unwrap();
}

fn to_hf_mxfp4(src: &Path, dest: &Path) {
    let ckpt = gptoss_formats::load(src).unwrap();
    let opts = HfWriteOptions {
        shard_bytes: 64 << 20,
        source_dir: None,
        existing: Existing::Refuse,
        progress: None,
    };
    st::write_hf_mxfp4(&ckpt.weights, opts, dest).unwrap();
}

#[test]
fn conversions_stream_one_tensor_at_a_time() {
    let root = scratch("layouts");
    let hf_dense = model_dir(&root, "hf-dense", write_hf_dense);
    let split = model_dir(&root, "split-gate-up", write_split_gate_up);
    let gguf_src = root.join("bf16-experts.gguf");
    let mut peaks = Vec::new();
    let ((), p) = peak_heap(|| to_gguf(&hf_dense, &gguf_src));
    peaks.push(("hf-dense → gguf", p));
    let ((), p) = peak_heap(|| to_gguf(&split, &root.join("split.gguf")));
    peaks.push(("split-gate-up → gguf", p));
    let ((), p) = peak_heap(|| to_gguf(&gguf_src, &root.join("retyped.gguf")));
    peaks.push(("gguf → gguf", p));
    let ((), p) = peak_heap(|| to_hf_mxfp4(&gguf_src, &root.join("hf-out")));
    peaks.push(("gguf → hf-mxfp4", p));
    let ((), p) = peak_heap(|| to_hf_mxfp4(&hf_dense, &root.join("hf-out-2")));
    peaks.push(("hf-dense → hf-mxfp4", p));
    let mib = |b: usize| b as f64 / (1 << 20) as f64;
    for (what, p) in &peaks {
        eprintln!(
            "{what}: peak heap {:.1} MiB (largest tensor {:.1} MiB, experts {:.1} MiB)",
            mib(*p),
            mib(LARGEST_BYTES),
            mib(EXPERT_BYTES)
        );
    }
    for (what, p) in peaks {
        assert!(
            p < 2 * LARGEST_BYTES,
            "{what}: peak heap {:.1} MiB; largest tensor {:.1} MiB, experts {:.1} MiB",
            mib(p),
            mib(LARGEST_BYTES),
            mib(EXPERT_BYTES)
        );
    }
    std::fs::remove_dir_all(&root).unwrap();
}
