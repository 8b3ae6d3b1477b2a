//! The official `openai` Python client (pinned in tools/fixtures/openai_client/requirements.txt)
//! against the server with a scripted engine: chat, streaming, a tool-call round trip, models,
//! errors. Runs only when `python3 -c 'import openai'` works (`GPTOSS_PYTHON` picks another
//! interpreter); otherwise scripts/test.sh lists it as SKIPPED (and CI, which installs the client, fails).

mod common;
#[path = "../../../tests/support/peer.rs"]
mod peer;

use std::path::PathBuf;
use std::process::Command;

use common::*;

const TOOL_CALL: &str = "<|channel|>analysis<|message|>Need weather.<|end|><|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{\"city\":\"Paris\"}<|call|>";
const ANSWER: &str = "<|channel|>analysis<|message|>Say hi.<|end|><|start|>assistant<|channel|>final<|message|>Hello world, hello<|return|>";

fn toks(text: &str) -> Vec<u32> {
    let tok = tokenizer();
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("<|") {
        out.extend(tok.encode(&rest[..start]).unwrap());
        let end = rest[start..].find("|>").unwrap() + start + 2;
        out.push(tok.special_id(&rest[start..end]).unwrap());
        rest = &rest[end..];
    }
    out.extend(tok.encode(rest).unwrap());
    out
}

fn script(prompt: &[u32]) -> Script {
    let text = String::from_utf8_lossy(&tokenizer().decode_bytes(prompt).unwrap()).into_owned();
    let after_user = text.rsplit("<|start|>user").next().unwrap_or("");
    if after_user.contains("weather") && !after_user.contains("to=assistant") {
        Script::Tokens(toks(TOOL_CALL))
    } else {
        Script::Tokens(toks(ANSWER))
    }
}

/// The interpreter, or `None` (with the reason printed) when `modules` cannot be imported.
fn python_with(modules: &str, test: &str) -> Option<String> {
    let python = std::env::var("GPTOSS_PYTHON").unwrap_or_else(|_| "python3".into());
    let probe = Command::new(&python)
        .args(["-c", &format!("import {modules}")])
        .output();
    if probe.as_ref().is_ok_and(|o| o.status.success()) {
        return Some(python);
    }
    let why = probe.map_or_else(
        |e| e.to_string(),
        |o| String::from_utf8_lossy(&o.stderr).trim().to_string(),
    );
    println!("SKIPPED {test}: `{python} -c 'import {modules}'` failed ({why}); pip install -r tools/fixtures/openai_client/requirements.txt");
    None
}

/// Structured outputs, sampling controls, n and the prefix cache through the official client, on
/// the real tiny engine (random weights): every schema answer validates with `jsonschema`.
#[tokio::test(flavor = "multi_thread")]
async fn official_client_structured_outputs() {
    let Some(python) = python_with("openai, jsonschema", "official_client_structured_outputs")
    else {
        return;
    };
    let base = serve(real_engine(4, 4096), config()).await;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tools/fixtures/openai_client/structured_check.py");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .args([&base, MODEL])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "structured check failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stdout.contains("structured: 8 passed, 0 failed"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn official_openai_python_client() {
    let python = std::env::var("GPTOSS_PYTHON").unwrap_or_else(|_| "python3".into());
    let probe = Command::new(&python).args(["-c", "import openai"]).output();
    if !probe.as_ref().is_ok_and(|o| o.status.success()) {
        let why = probe.map_or_else(
            |e| e.to_string(),
            |o| {
                String::from_utf8_lossy(&o.stderr)
                    .trim()
                    .lines()
                    .last()
                    .unwrap_or("")
                    .to_string()
            },
        );
        let why = format!("`{python} -c 'import openai'` failed ({why}); pip install -r tools/test-requirements.txt, or set GPTOSS_PYTHON");
        peer::skipped(
            "official_openai_python_client",
            &why,
            "GPTOSS_REQUIRE_PEERS",
        );
        return;
    }
    let mut cfg = config();
    cfg.api_key = Some("sekret".into());
    let (engine, _) = fake_engine(4096, script);
    let base = serve(engine, cfg).await;
    let script_path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tools/fixtures/openai_client/client_check.py");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script_path)
            .args([&base, MODEL, "sekret"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "client check failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("6 passed, 0 failed"), "{stdout}");
}
