//! `gptoss convert` to GGUF from every committed fixture layout, checked against the GGUFs llama.cpp's
//! own converter made (tests/fixtures/tiny/gguf/tiny-llamacpp-*.gguf): same tensor names, ggml types
//! and shapes; MXFP4 experts byte-identical from MXFP4 sources and value-identical from the dense
//! layouts (whose values are exactly MXFP4-representable); the MXFP4 quantizer byte-identical to the
//! `gguf` package's; and the same files read back by the `gguf` Python package when it is installed.

#[path = "../../../tests/support/peer.rs"]
mod peer;

use std::path::{Path, PathBuf};
use std::process::Command;

use gptoss_formats::gguf::container::{GgufFile, Value};
use gptoss_formats::gguf::ggml_types::GgmlType;
use gptoss_formats::gguf::{self, ExpertType, OutType, WriteOptions};
use gptoss_formats::quant::mxfp4;

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/tiny")
        .join(rel)
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gptoss-convert-gguf-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Every safetensors fixture; `true` where its experts are stored as MXFP4.
const LAYOUTS: [(&str, bool); 11] = [
    ("hf-mxfp4", true),
    ("original", true),
    ("hf-bf16", false),
    ("split-projs", false),
    ("split-weights", false),
    ("split-gate-up", false),
    ("split-mixtral", false),
    ("bnb-nf4", false),
    ("bnb-nf4-dq", false),
    ("bnb-fp4", false),
    ("bnb-fp4-dq", false),
];

/// bnb fixtures hold other values (bnb-quantized), so only names/types/shapes are compared.
fn equal_valued(dir: &str) -> bool {
    !dir.starts_with("bnb")
}

fn convert(src: &Path, dest: &Path, dense: OutType, experts: ExpertType) -> gguf::WriteReport {
    let ckpt = gptoss_formats::load(src).unwrap();
    let vocab = gguf::checkpoint_vocab(&ckpt).unwrap();
    let opts = WriteOptions {
        dense,
        experts,
        progress: None,
    };
    gguf::write_model_with(&ckpt.weights, vocab.as_ref(), opts, dest).unwrap()
}

fn tensor_bytes<'a>(f: &'a GgufFile, name: &str) -> &'a [u8] {
    let t = f.tensors.iter().find(|t| t.name == name).unwrap();
    let ty = GgmlType::from_id(t.type_id).unwrap();
    let rows: u64 = t.ne.iter().skip(1).product();
    let size = ty.row_bytes(t.ne[0] as usize).unwrap() * rows as usize;
    let at = f.data_start + t.offset as usize;
    &f.map[at..at + size]
}

/// Decodes an MXFP4 GGUF tensor to f32 (via the crate's block reader).
fn mxfp4_values(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(17)
        .flat_map(|b| {
            let e = gptoss_formats::tensor::e8m0_to_f32(b[0]);
            let code = |k: usize| (b[1 + k % 16] >> (4 * (k / 16))) & 15;
            (0..32).map(move |k| gptoss_formats::tensor::E2M1_VALUES[code(k) as usize] * e)
        })
        .collect()
}

#[test]
fn every_layout_converts_to_llamacpp_layout() {
    let dir = scratch("layouts");
    let reference = GgufFile::open(&fixture("gguf/tiny-llamacpp-q8_0.gguf")).unwrap();
    for (layout, mxfp4_source) in LAYOUTS {
        let out = dir.join(format!("{layout}.gguf"));
        convert(&fixture(layout), &out, OutType::Q8_0, ExpertType::Mxfp4);
        let ours = GgufFile::open(&out).unwrap();
        // llama.cpp writes the same tensors in another order; the set is what must match.
        let list = |f: &GgufFile| {
            let mut v = f
                .tensors
                .iter()
                .map(|t| (t.name.clone(), t.type_id, t.ne.clone()))
                .collect::<Vec<_>>();
            v.sort();
            v
        };
        assert_eq!(
            list(&ours),
            list(&reference),
            "{layout}: names, types, shapes"
        );
        assert_eq!(
            ours.get("general.architecture"),
            reference.get("general.architecture")
        );
        for t in reference
            .tensors
            .iter()
            .filter(|t| t.type_id == GgmlType::MXFP4.id())
        {
            let (a, b) = (
                tensor_bytes(&ours, &t.name),
                tensor_bytes(&reference, &t.name),
            );
            if mxfp4_source {
                assert!(a == b, "{layout}: {} not byte-identical", t.name);
            } else if equal_valued(layout) {
                assert_eq!(
                    mxfp4_values(a),
                    mxfp4_values(b),
                    "{layout}: {} values",
                    t.name
                );
            }
        }
        if equal_valued(layout) {
            // Dense tensors: the same source values through the same Q8_0 quantizer.
            for t in reference
                .tensors
                .iter()
                .filter(|t| t.type_id != GgmlType::MXFP4.id())
            {
                assert!(
                    tensor_bytes(&ours, &t.name) == tensor_bytes(&reference, &t.name),
                    "{layout}: {}",
                    t.name
                );
            }
        }
    }
}

#[test]
fn experts_bf16_and_q8_0_keep_the_dense_values() {
    let dir = scratch("experts");
    let out = dir.join("bf16-experts.gguf");
    let report = convert(
        &fixture("split-weights"),
        &out,
        OutType::BF16,
        ExpertType::Other(OutType::BF16),
    );
    let exps: Vec<_> = report
        .tensors
        .iter()
        .filter(|(n, _, _)| n.contains("_exps.weight"))
        .collect();
    assert_eq!(exps.len(), 9);
    assert!(
        exps.iter().all(|(_, ty, _)| *ty == GgmlType::BF16),
        "{exps:?}"
    );
    // Read back: every expert value equals the source's exactly (bf16 in, bf16 out).
    let src = gptoss_formats::load(&fixture("split-weights"))
        .unwrap()
        .weights;
    let back = gptoss_formats::load(&out).unwrap().weights;
    for (a, b) in src.layers.iter().zip(&back.layers) {
        for (x, y) in a.experts.iter().zip(&b.experts) {
            assert_eq!(x.gate_up.weight.to_f32_vec(), y.gate_up.weight.to_f32_vec());
            assert_eq!(x.down.weight.to_f32_vec(), y.down.weight.to_f32_vec());
        }
    }
    let out = dir.join("q8-experts.gguf");
    let report = convert(
        &fixture("hf-mxfp4"),
        &out,
        OutType::Q8_0,
        ExpertType::Other(OutType::Q8_0),
    );
    assert!(report
        .tensors
        .iter()
        .filter(|(n, _, _)| n.contains("_exps.weight"))
        .all(|(_, ty, _)| *ty == GgmlType::Q8_0));
}

/// `--type mxfp4` (llama-quantize's MXFP4_MOE mix): the tensors of llama.cpp's q8_0 conversion byte
/// for byte, in a file typed `LLAMA_FTYPE_MOSTLY_MXFP4_MOE` (38 in llama.h and gguf-py's
/// `LlamaFileType`) as llama.cpp's converter types its files with MXFP4 experts; `--type q8_0`
/// keeps the `MOSTLY_Q8_0` (7) of llama.cpp's q8_0 conversion.
#[test]
fn mxfp4_moe_mix_is_typed_as_llamacpp_types_mxfp4_files() {
    let dir = scratch("file-type");
    let q8 = GgufFile::open(&fixture("gguf/tiny-llamacpp-q8_0.gguf")).unwrap();
    let bf16 = GgufFile::open(&fixture("gguf/tiny-llamacpp-bf16.gguf")).unwrap();
    let file_type = |f: &GgufFile| f.get("general.file_type").cloned();
    assert_eq!(file_type(&bf16), Some(Value::U32(38)));
    assert_eq!(file_type(&q8), Some(Value::U32(7)));
    let cases = [
        (OutType::Mxfp4Moe, ExpertType::Mxfp4, file_type(&bf16)),
        (OutType::Q8_0, ExpertType::Mxfp4, file_type(&q8)),
        // No MXFP4 tensor in the file: not an MXFP4_MOE file.
        (
            OutType::Mxfp4Moe,
            ExpertType::Other(OutType::BF16),
            file_type(&q8),
        ),
    ];
    for (i, (dense, experts, want)) in cases.into_iter().enumerate() {
        let out = dir.join(format!("{i}.gguf"));
        convert(&fixture("hf-mxfp4"), &out, dense, experts);
        let ours = GgufFile::open(&out).unwrap();
        assert_eq!(file_type(&ours), want, "{dense:?} / {experts:?}");
        if experts == ExpertType::Mxfp4 {
            for t in &q8.tensors {
                assert!(
                    tensor_bytes(&ours, &t.name) == tensor_bytes(&q8, &t.name),
                    "{dense:?}: {}",
                    t.name
                );
            }
        }
    }
}

#[test]
fn gguf_retyped_to_q8_0_matches_llamacpp_q8_0() {
    let dir = scratch("retype");
    let out = dir.join("f32-to-q8.gguf");
    convert(
        &fixture("gguf/tiny-llamacpp-f32.gguf"),
        &out,
        OutType::Q8_0,
        ExpertType::Mxfp4,
    );
    let (ours, reference) = (
        GgufFile::open(&out).unwrap(),
        GgufFile::open(&fixture("gguf/tiny-llamacpp-q8_0.gguf")).unwrap(),
    );
    assert_eq!(ours.tensors.len(), reference.tensors.len());
    for t in &reference.tensors {
        assert!(
            tensor_bytes(&ours, &t.name) == tensor_bytes(&reference, &t.name),
            "{}",
            t.name
        );
    }
}

#[test]
fn plan_matches_what_is_written() {
    let dir = scratch("plan");
    let ckpt = gptoss_formats::load(&fixture("hf-bf16")).unwrap();
    let (plan, _) = gguf::plan_model(&ckpt.weights, OutType::F16, ExpertType::Mxfp4).unwrap();
    let out = dir.join("p.gguf");
    let report = convert(&fixture("hf-bf16"), &out, OutType::F16, ExpertType::Mxfp4);
    let planned: Vec<_> = plan
        .iter()
        .map(|p| (p.name.clone(), p.ty, p.shape.clone()))
        .collect();
    assert_eq!(planned, report.tensors);
    let gate = plan
        .iter()
        .find(|p| p.name == "blk.0.ffn_gate_exps.weight")
        .unwrap();
    assert_eq!(
        (gate.source.as_str(), gate.ty, gate.bytes),
        ("bf16", GgmlType::MXFP4, 4 * 96 * 64 / 32 * 17)
    );
}

/// The Python interpreter with `gguf` and `numpy`, or `None` (with the reason printed).
fn python_with_gguf(test: &str) -> Option<String> {
    let py = std::env::var("GPTOSS_PYTHON").unwrap_or_else(|_| "python3".into());
    match Command::new(&py)
        .args(["-c", "import gguf, numpy"])
        .output()
    {
        Ok(o) if o.status.success() => Some(py),
        Ok(o) => {
            let why = format!("`{py} -c 'import gguf, numpy'` failed ({}); pip install -r tools/test-requirements.txt, or set GPTOSS_PYTHON", String::from_utf8_lossy(&o.stderr).trim().lines().last().unwrap_or(""));
            peer::skipped(test, &why, "GPTOSS_REQUIRE_PEERS");
            None
        }
        Err(e) => {
            let why = format!(
                "cannot run `{py}` ({e}); set GPTOSS_PYTHON to a Python with the gguf package"
            );
            peer::skipped(test, &why, "GPTOSS_REQUIRE_PEERS");
            None
        }
    }
}

fn run_python(py: &str, script: &str, args: &[&Path]) {
    let out = Command::new(py)
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python check failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

const GGUF_PY_CHECK: &str = r#"
import sys, numpy as np
from gguf import GGUFReader, GGMLQuantizationType as Q
ref = GGUFReader(sys.argv[1])
want = {t.name: t for t in ref.tensors}
for path in sys.argv[2:]:
    r = GGUFReader(path)
    arch = bytes(r.fields["general.architecture"].parts[-1]).decode()
    assert arch == "gpt-oss", (path, arch)
    got = {t.name: t for t in r.tensors}
    assert sorted(got) == sorted(want), (path, sorted(set(got) ^ set(want)))
    for name, t in got.items():
        w = want[name]
        assert (t.tensor_type, list(t.shape)) == (w.tensor_type, list(w.shape)), (path, name, t.tensor_type, t.shape, w.tensor_type, w.shape)
        if t.tensor_type == Q.MXFP4 and "mxfp4" in path:
            assert np.array_equal(np.asarray(t.data), np.asarray(w.data)), (path, name)
print("ok", len(sys.argv) - 2)
"#;

#[test]
fn gguf_python_package_reads_every_conversion() {
    let Some(py) = python_with_gguf("gguf_python_package_reads_every_conversion") else {
        return;
    };
    let dir = scratch("python");
    let mut paths = Vec::new();
    for (layout, _) in LAYOUTS {
        let out = dir.join(format!("{layout}.gguf"));
        convert(&fixture(layout), &out, OutType::Q8_0, ExpertType::Mxfp4);
        paths.push(out);
    }
    let reference = fixture("gguf/tiny-llamacpp-q8_0.gguf");
    let mut args = vec![reference.as_path()];
    args.extend(paths.iter().map(PathBuf::as_path));
    run_python(&py, GGUF_PY_CHECK, &args);
    // The other outtypes against their llama.cpp twins.
    for ty in ["f32", "bf16"] {
        let out = dir.join(format!("hf-mxfp4-{ty}.gguf"));
        let outtype = if ty == "f32" {
            OutType::F32
        } else {
            OutType::BF16
        };
        convert(&fixture("hf-mxfp4"), &out, outtype, ExpertType::Mxfp4);
        let reference = fixture(&format!("gguf/tiny-llamacpp-{ty}.gguf"));
        run_python(&py, GGUF_PY_CHECK, &[&reference, &out]);
    }
}

/// Awkward MXFP4 inputs: ties, clipping, tiny and huge magnitudes, zeros, negative zero, a 3.9999998.
fn quantizer_inputs() -> Vec<f32> {
    let mut x = Vec::new();
    let mut s = 0x1234_5678u32;
    for block in 0..64 {
        let scale = 2f32.powi(block % 40 - 20);
        for k in 0..32 {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            let u = (s >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0;
            x.push(match (block, k) {
                (0, _) => 0.0,
                (1, k) => [
                    0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -0.25, -1.25, -5.0, 7.0, -0.0,
                ][k % 12],
                (2, 0) => 3.999_999_8,
                (3, k) => 1e-30 * (k as f32 - 16.0),
                _ => u * 6.0 * scale,
            });
        }
    }
    x
}

#[test]
fn mxfp4_quantizer_matches_gguf_package() {
    let Some(py) = python_with_gguf("mxfp4_quantizer_matches_gguf_package") else {
        return;
    };
    let dir = scratch("quantizer");
    let x = quantizer_inputs();
    let mut ours = Vec::new();
    mxfp4::quantize_row_ggml(&x, &mut ours);
    let (xin, qout) = (dir.join("x.f32"), dir.join("q.bin"));
    std::fs::write(
        &xin,
        x.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>(),
    )
    .unwrap();
    std::fs::write(&qout, &ours).unwrap();
    let script = r#"
import sys, numpy as np
from gguf import quants, GGMLQuantizationType as Q
x = np.fromfile(sys.argv[1], dtype=np.float32).reshape(-1, 32)
want = quants.quantize(x, Q.MXFP4).reshape(-1)
got = np.fromfile(sys.argv[2], dtype=np.uint8)
bad = np.nonzero(want != got)[0]
assert len(bad) == 0, f"{len(bad)} bytes differ, first at {bad[:8]}: ours {got[bad[:8]]}, gguf {want[bad[:8]]}"
print("ok")
"#;
    run_python(&py, script, &[&xin, &qout]);
}
