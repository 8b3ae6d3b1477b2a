//! tokenizer.json and plain-vocabulary (GGUF-style) loading against HF `tokenizers` goldens, including a
//! vocabulary whose ids are shuffled so that merge order differs from id order.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use gptoss_tokenizer::harmony::{Effort, Harmony};
use gptoss_tokenizer::{TokenKind, Tokenizer, Vocab};

fn check(tok: &Tokenizer, golden: &serde_json::Value) {
    assert_eq!(
        tok.vocab_size() as u64,
        golden["vocab_size"].as_u64().unwrap()
    );
    for (name, id) in golden["specials"].as_object().unwrap() {
        assert_eq!(
            tok.special_id(name).unwrap() as u64,
            id.as_u64().unwrap(),
            "{name}"
        );
    }
    for case in golden["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let want = common::ids(&case["ids"]);
        assert_eq!(tok.encode(text).unwrap(), want, "text {text:?}");
        assert_eq!(tok.decode(&want).unwrap(), text);
    }
}

fn golden_for(file: &str) -> serde_json::Value {
    let all = common::load("tiny-encode.json");
    all["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["file"] == file)
        .unwrap()
        .clone()
}

#[test]
fn tokenizer_json_matches_hf() {
    for file in ["tokenizer.json", "tokenizer-permuted.json"] {
        let tok = Tokenizer::from_tokenizer_json(&common::fixture(file)).unwrap();
        check(&tok, &golden_for(file));
    }
}

/// Rebuilds the vocabulary the way a GGUF file stores it: token strings by id, token types, "a b" merges.
fn gguf_parts(file: &str) -> (Vec<String>, Vec<i32>, Vec<String>) {
    let json = common::load(file);
    let mut tokens: Vec<String> = Vec::new();
    let mut types = Vec::new();
    let mut put = |id: usize, s: &str, ty: i32| {
        if tokens.len() <= id {
            tokens.resize(id + 1, String::new());
            types.resize(id + 1, 1);
        }
        tokens[id] = s.to_string();
        types[id] = ty;
    };
    for (s, id) in json["model"]["vocab"].as_object().unwrap() {
        put(id.as_u64().unwrap() as usize, s, 1);
    }
    for t in json["added_tokens"].as_array().unwrap() {
        put(
            t["id"].as_u64().unwrap() as usize,
            t["content"].as_str().unwrap(),
            3,
        );
    }
    let merges = json["model"]["merges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| match m {
            serde_json::Value::String(s) => s.clone(),
            _ => format!("{} {}", m[0].as_str().unwrap(), m[1].as_str().unwrap()),
        })
        .collect();
    (tokens, types, merges)
}

#[test]
fn gguf_style_vocab_matches_hf() {
    for file in ["tokenizer.json", "tokenizer-permuted.json"] {
        let (tokens, mut types, merges) = gguf_parts(file);
        // A padding row as llama.cpp's converter adds them.
        let pad = tokens.len();
        types.push(5);
        let mut tokens = tokens;
        tokens.push(format!("[PAD{pad}]"));
        let vocab = Vocab::from_gguf(tokens, &types, &merges, Some("gpt-4o")).unwrap();
        let tok = Tokenizer::from_vocab(vocab).unwrap();
        assert_eq!(tok.kind(pad as u32), Some(TokenKind::Unused));
        assert!(tok.is_special(pad as u32));
        let mut golden = golden_for(file);
        golden["vocab_size"] = serde_json::json!(pad + 1);
        check(&tok, &golden);
    }
}

#[test]
fn bad_inputs_are_clear_errors() {
    let err = Vocab::from_gguf(vec!["a".into()], &[], &[], Some("llama-bpe"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("tokenizer.ggml.pre"), "{err}");
    let (tokens, types, mut merges) = gguf_parts("tokenizer.json");
    merges.push("zzz qqq".to_string());
    let err = Tokenizer::from_vocab(Vocab::from_gguf(tokens, &types, &merges, None).unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("merge") && err.contains("zzzqqq\" is not a token"),
        "{err}"
    );
    let err = Tokenizer::from_vocab(Vocab::from_gguf(vec!["ab".into()], &[1], &[], None).unwrap())
        .unwrap_err();
    assert!(err.to_string().contains("no token for byte"), "{err}");
    let dir = std::env::temp_dir().join(format!("gptoss-tok-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tokenizer.json");
    let mut json = common::load("tokenizer.json");
    json["model"]["type"] = serde_json::json!("WordPiece");
    std::fs::write(&path, json.to_string()).unwrap();
    let err = Tokenizer::from_tokenizer_json(&path)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("model.type") && err.contains("tokenizer.json"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The tiny test model's own tokenizer (tests/fixtures/tiny, specials at ids of its own choosing).
#[test]
fn fixture_model_tokenizer_matches_hf_and_renders_harmony() {
    let golden = common::load("tiny-model-encode.json");
    let path = common::fixture("../../..").join(golden["file"].as_str().unwrap());
    let tok = Tokenizer::from_tokenizer_json(&path).unwrap();
    let hint =
        "if tests/fixtures/tiny was regenerated, rerun tools/fixtures/harmony/make_goldens.py";
    assert_eq!(
        tok.vocab_size() as u64,
        golden["vocab_size"].as_u64().unwrap(),
        "{hint}"
    );
    for (name, id) in golden["specials"].as_object().unwrap() {
        assert_eq!(
            tok.special_id(name).unwrap() as u64,
            id.as_u64().unwrap(),
            "{name}; {hint}"
        );
    }
    for case in golden["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        assert_eq!(
            tok.encode(text).unwrap(),
            common::ids(&case["ids"]),
            "text {text:?}; {hint}"
        );
    }

    let harmony = Harmony::new(std::sync::Arc::new(tok)).unwrap();
    let ids = harmony
        .render_chat_prompt(None, "Hi there", Effort::High)
        .unwrap();
    let start = harmony.tokenizer().special_id("<|start|>").unwrap();
    assert_eq!(ids.iter().filter(|&&i| i == start).count(), 3);
    let text = harmony.tokenizer().decode(&ids).unwrap();
    assert!(
        text.starts_with("<|start|>system<|message|>You are ChatGPT")
            && text.contains("Reasoning: high")
    );
    assert!(
        text.ends_with("<|end|><|start|>user<|message|>Hi there<|end|><|start|>assistant"),
        "{text}"
    );
}

/// A `tokenizer.json` whose pre-tokenizer regex does not cover the text keeps the text between matches
/// as pieces, as HF tokenizers does (it was silently dropped before issue 13).
#[test]
fn text_between_regex_matches_is_kept_like_hf() {
    let golden = common::load("uncovered-split.json");
    let mut doc = common::load("tokenizer.json");
    doc["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = golden["pattern"].clone();
    let path = std::env::temp_dir().join(format!("gptoss-uncovered-{}.json", std::process::id()));
    std::fs::write(&path, doc.to_string()).unwrap();
    let tok = Tokenizer::from_tokenizer_json(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    for case in golden["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let ids = tok.encode(text).unwrap();
        assert_eq!(ids, common::ids(&case["ids"]), "{text:?}");
        assert_eq!(tok.decode(&ids).unwrap(), text);
    }
}

/// Ids must be contiguous: one far past the number of entries is refused before any table is sized by
/// it (an id of 4e9 once sized a 96 GB table).
#[test]
fn a_token_id_past_the_entries_is_refused() {
    let mut doc = common::load("tokenizer.json");
    doc["model"]["vocab"]["zzz"] = serde_json::json!(4_000_000_000u64);
    let path = std::env::temp_dir().join(format!("gptoss-bigid-{}.json", std::process::id()));
    std::fs::write(&path, doc.to_string()).unwrap();
    let e = Tokenizer::from_tokenizer_json(&path)
        .unwrap_err()
        .to_string();
    std::fs::remove_file(&path).unwrap();
    assert!(e.contains("4000000000") && e.contains("contiguous"), "{e}");
}

/// Capped encoding: the same tokens as uncapped below the cap; past it an error, decided from the
/// length of the text before any merging (10 MB of one letter is refused without merging it).
#[test]
fn capped_encoding_stops_at_the_cap() {
    let tok = Tokenizer::from_tokenizer_json(&common::fixture("tokenizer.json")).unwrap();
    let text = "The quick brown fox jumps over the lazy dog. ".repeat(20);
    let all = tok.encode(&text).unwrap();
    let mut out = Vec::new();
    tok.encode_capped(&text, &mut out, all.len()).unwrap();
    assert_eq!(out, all);
    let mut out = Vec::new();
    let e = tok
        .encode_capped(&text, &mut out, all.len() - 1)
        .unwrap_err();
    assert!(matches!(e, gptoss_tokenizer::Error::TooManyTokens { cap } if cap == all.len() - 1));
    let huge = "a".repeat(10_000_000);
    assert!(matches!(
        tok.encode_capped(&huge, &mut Vec::new(), 4096),
        Err(gptoss_tokenizer::Error::TooManyTokens { cap: 4096 })
    ));
}
