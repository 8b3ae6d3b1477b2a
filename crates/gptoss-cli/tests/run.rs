//! `gptoss run` as a user reaches for it: llama.cpp's short flags, the prompt from `-p`, `--file` or
//! stdin, the parsed answer alone on stdout (reasoning and content in `--json`), `--raw` as before, the
//! stats line in its shape, and a note when the context is full.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn model() -> String {
    let p: PathBuf =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny/hf-mxfp4");
    p.to_str().unwrap().to_string()
}

fn run(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gptoss"))
        .arg("run")
        .args(["-m", &model(), "--device", "cpu"])
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    child.wait_with_output().unwrap()
}

fn ok(args: &[&str], stdin: Option<&str>) -> Output {
    let o = run(args, stdin);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    o
}

fn json(args: &[&str], stdin: Option<&str>) -> serde_json::Value {
    serde_json::from_slice(&ok(args, stdin).stdout).unwrap()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn the_prompt_comes_from_p_file_or_stdin_alike() {
    let by_flag = json(&["-p", "Hello", "-n", "8", "--json"], None);
    let by_stdin = json(&["-n", "8", "--json"], Some("Hello\n"));
    let dir = std::env::temp_dir().join(format!("gptoss-run-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("prompt.txt");
    std::fs::write(&file, "Hello").unwrap();
    let by_file = json(
        &["--file", file.to_str().unwrap(), "-n", "8", "--json"],
        None,
    );
    assert_eq!(by_flag, by_stdin);
    assert_eq!(by_flag, by_file);
    std::fs::remove_dir_all(&dir).unwrap();
    let o = run(&["-n", "8"], Some(""));
    assert!(
        !o.status.success() && err(&o).contains("stdin was empty"),
        "{}",
        err(&o)
    );
    let o = run(&["--file", "/no/such/prompt.txt"], None);
    assert!(
        !o.status.success() && err(&o).contains("--file /no/such/prompt.txt"),
        "{}",
        err(&o)
    );
}

#[test]
fn stdout_holds_the_parsed_answer_and_json_says_what_it_was() {
    let v = json(&["-p", "Hello", "-n", "12", "--json"], None);
    for k in ["tokens", "text", "reasoning", "content", "tool_calls"] {
        assert!(!v[k].is_null(), "{k} in {v}");
    }
    // The text is the raw decoded tokens; the content is what Harmony parsing leaves for the user, and
    // all that stdout shows.
    let content = v["content"].as_str().unwrap();
    assert!(!content.is_empty());
    let streamed = ok(&["-p", "Hello", "-n", "12"], None);
    assert_eq!(
        String::from_utf8_lossy(&streamed.stdout),
        format!("{content}\n")
    );
    // A raw prompt has no Harmony answer: the raw text streams, and --json says null.
    let raw = json(&["-p", "Hello", "--raw", "-n", "6", "--json"], None);
    assert!(
        raw["content"].is_null() && raw["reasoning"].is_null() && raw["text"].is_string(),
        "{raw}"
    );
    let raw_out = ok(&["-p", "Hello", "--raw", "-n", "6"], None);
    assert_eq!(
        String::from_utf8_lossy(&raw_out.stdout),
        format!("{}\n", raw["text"].as_str().unwrap())
    );
}

#[test]
fn short_flags_and_the_stats_line() {
    let o = ok(
        &[
            "-p",
            "Hello",
            "-n",
            "3",
            "-c",
            "512",
            "-t",
            "1",
            "--temperature",
            "0.7",
            "--seed",
            "5",
        ],
        None,
    );
    let e = err(&o);
    let line = e
        .lines()
        .find(|l| l.starts_with('[') && l.contains(" prompt tokens in "))
        .unwrap_or_else(|| panic!("{e}"));
    assert!(
        line.contains("; 3 generated, ") && line.ends_with(" tok/s decode; stop: Length]"),
        "{line}"
    );
    let o = run(&["-p", "Hello", "-t", "0"], None);
    assert!(!o.status.success() && err(&o).contains("-t"), "{}", err(&o));
}

#[test]
fn a_full_context_is_reported() {
    // The prompt is 166 tokens; a context of 170 leaves room for 4 of the 100 asked for.
    let o = ok(&["-p", "Hello", "-n", "100", "-c", "170"], None);
    let e = err(&o);
    assert!(
        e.contains("; 4 generated, ")
            && e.contains("[the context is full: 170 tokens (prompt 166 + 4 generated)"),
        "{e}"
    );
    let o = ok(&["-p", "Hello", "-n", "3", "-c", "512"], None);
    assert!(!err(&o).contains("context is full"));
}
