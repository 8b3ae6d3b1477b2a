//! Issue 13 end to end: size flags out of range are clap errors (they once aborted the process), a
//! tokenizer.json that `run` refuses is refused by `convert` too, a planted link at an output path is
//! replaced and never written through, and `convert` killed with SIGKILL at any moment leaves either
//! nothing or the whole file.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/tiny")
        .join(rel)
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gptoss-cli-harden-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn gptoss(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gptoss"))
        .args(args)
        .output()
        .expect("run gptoss")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn size_flags_out_of_range_are_refused_by_name() {
    let model = fixture("hf-mxfp4");
    for (args, flag) in [
        (
            vec!["run", "--prompt", "hi", "--ctx", "100000000000"],
            "--ctx",
        ),
        (
            vec!["run", "--prompt", "hi", "--batch-tokens", "0"],
            "--batch-tokens",
        ),
        (vec!["serve", "--max-seqs", "1000000000"], "--max-seqs"),
        (
            vec!["serve", "--kv-blocks", "10000000000000"],
            "--kv-blocks",
        ),
        (vec!["serve", "--max-connections", "0"], "--max-connections"),
        (
            vec!["batch", "in.jsonl", "-o", "out", "--concurrency", "0"],
            "--concurrency",
        ),
    ] {
        let mut all = args.clone();
        all.extend(["--model", s(&model)]);
        let o = gptoss(&all);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(flag) && err.contains("is not in"),
            "{args:?}: {err}"
        );
    }
}

/// The split-weights fixture copied to `dir` with its tokenizer.json edited.
fn with_tokenizer(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let model = dir.join("model");
    std::fs::create_dir_all(&model).unwrap();
    for e in std::fs::read_dir(fixture("split-weights")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), model.join(e.file_name())).unwrap();
    }
    let path = model.join("tokenizer.json");
    let mut tok: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut tok);
    std::fs::write(&path, tok.to_string()).unwrap();
    model
}

#[test]
fn convert_refuses_a_tokenizer_json_that_run_refuses() {
    let dir = scratch("tokenizer");
    let model = with_tokenizer(&dir, |t| {
        t["model"]["merges"] = serde_json::json!({"a": "b"})
    });
    let out = dir.join("m.gguf");
    let o = gptoss(&["convert", s(&model), s(&out)]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("model.merges"), "{err}");
    assert!(!out.exists());
    let o = gptoss(&["run", "--model", s(&model), "--prompt", "hi", "-n", "1"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("model.merges"), "{err}");
}

#[test]
fn a_planted_link_at_the_output_is_replaced_not_followed() {
    let dir = scratch("link");
    let victim = dir.join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    let out = dir.join("m.gguf");
    std::os::unix::fs::symlink(&victim, &out).unwrap();
    std::os::unix::fs::symlink(&victim, dir.join("m.gguf.tmp")).unwrap();
    let o = gptoss(&["convert", s(&fixture("split-weights")), s(&out), "--force"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    let meta = std::fs::symlink_metadata(&out).unwrap();
    assert!(meta.is_file() && meta.len() > 1000);
    assert_eq!(&std::fs::read(&out).unwrap()[..4], b"GGUF");
}

/// SIGKILL at spread-out moments of a conversion: after each, the output is absent or a whole GGUF that
/// opens, and no temporary file is left in the folder.
#[test]
fn convert_killed_at_any_moment_leaves_whole_or_nothing() {
    let dir = scratch("kill");
    let out = dir.join("m.gguf");
    let mut whole = None;
    for delay_ms in [0u64, 5, 15, 30, 60, 100, 200, 400] {
        let _ = std::fs::remove_file(&out);
        let mut child = Command::new(env!("CARGO_BIN_EXE_gptoss"))
            .args(["convert", s(&fixture("hf-bf16")), s(&out), "--type", "f32"])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        let names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            names.iter().all(|n| n == "m.gguf"),
            "{delay_ms} ms: {names:?}"
        );
        if out.exists() {
            let bytes = std::fs::read(&out).unwrap();
            gptoss_formats::gguf::container::GgufFile::open(&out).unwrap();
            assert!(whole.get_or_insert(bytes.len()) == &bytes.len());
        }
    }
}
