//! `--gpus` and `--split` (the pipeline split by layers): every misuse is refused by name before any
//! device is opened, so these run without a GPU. The split itself is tested in
//! crates/gptoss-engine/tests/pipeline.rs (CPU) and crates/gptoss-cuda/tests/gpu_pipeline.rs (GPU).

use std::path::Path;
use std::process::Command;

#[test]
fn gpus_and_split_misuse_is_refused_by_name() {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny/hf-mxfp4");
    let m = model.to_str().unwrap();
    let base = ["run", "--model", m, "--tokens", "1,2,3", "-n", "2"];
    let cases: [(&[&str], &str); 8] = [
        (&["--gpus", "0,0"], "names a GPU more than once"),
        (&["--gpus", "0", "--device", "cpu"], "--gpus picks GPUs"),
        (&["--gpus", "0,1", "--split", "1,1"], "covers 2 layers"),
        (
            &["--gpus", "0,1", "--split", "3"],
            "1 layer counts for 2 --gpus",
        ),
        (&["--gpus", "0,1,2,3"], "4 devices for a model of 3 layers"),
        (
            &["--gpus", "0,1", "--cpu-moe"],
            "not supported with several --gpus",
        ),
        (&["--split", "1,2"], "--gpus"),
        (&["--gpus", "0", "--split", "3"], "give at least two"),
    ];
    for (extra, needle) in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_gptoss"))
            .args([&base[..], extra].concat())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra:?} succeeded");
        assert!(err.contains(needle), "{extra:?}: {err}");
    }
}

/// Until the pipeline is verified on several physical GPUs, distinct devices need
/// `GPTOSS_EXPERIMENTAL_PIPELINE=1` (virtual devices, a repeated ordinal, do not); the
/// refusal comes before any device is opened.
#[test]
fn several_distinct_gpus_need_the_experimental_switch() {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny/hf-mxfp4");
    let out = Command::new(env!("CARGO_BIN_EXE_gptoss"))
        .env_remove("GPTOSS_EXPERIMENTAL_PIPELINE")
        .args([
            "run",
            "--model",
            model.to_str().unwrap(),
            "--tokens",
            "1,2,3",
            "-n",
            "2",
        ])
        .args(["--gpus", "0,1", "--max-vram", "1GiB"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("GPTOSS_EXPERIMENTAL_PIPELINE=1"), "{err}");
}
