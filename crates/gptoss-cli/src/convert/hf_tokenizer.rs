//! The tokenizer files of an HF checkpoint written from a GGUF's embedded vocabulary, as the
//! `openai/gpt-oss` repositories ship them: `tokenizer.json` (byte-level BPE with the o200k split
//! regex, ByteLevel decoder, special tokens as added tokens), `tokenizer_config.json` (special tokens,
//! chat template) and `special_tokens_map.json`.

use anyhow::{bail, Result};
use gptoss_formats::EmbeddedVocab;
use gptoss_tokenizer::O200K_PATTERN;
use serde_json::{json, Map, Value};

/// ggml token types (llama.cpp `llama_token_type`).
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;

/// What a GGUF token becomes in `tokenizer.json`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// A BPE vocabulary entry.
    Bpe,
    /// An added special token.
    Added,
    /// A padding row past the last real token: not written (HF vocabularies end at the last token).
    Dropped,
}

/// The role of every id: control and user-defined tokens are added tokens, unused rows after the last
/// used one are dropped (unused rows between real tokens are kept as added tokens so ids stay dense).
/// Without token types, `<|…|>` names are the added tokens (as the GGUF reader decides).
fn roles(v: &EmbeddedVocab) -> Vec<Role> {
    let ty = |i: usize| v.token_types.get(i).copied();
    let last_used = (0..v.tokens.len()).rev().find(|&i| ty(i) != Some(UNUSED));
    v.tokens
        .iter()
        .enumerate()
        .map(|(i, t)| match ty(i) {
            Some(UNUSED) if last_used.is_none_or(|l| i > l) => Role::Dropped,
            Some(CONTROL | USER_DEFINED | UNUSED) => Role::Added,
            Some(_) => Role::Bpe,
            None if t.starts_with("<|") && t.ends_with("|>") => Role::Added,
            None => Role::Bpe,
        })
        .collect()
}

/// `(file name, contents)` of the three tokenizer files for `v`; `max_len` is the model's context.
pub fn tokenizer_files(v: &EmbeddedVocab, max_len: usize) -> Result<Vec<(String, Vec<u8>)>> {
    if v.model != "gpt2" {
        bail!(
            "tokenizer.ggml.model is {:?}: only byte-level BPE (\"gpt2\") can be written as tokenizer.json",
            v.model
        );
    }
    if let Some(pre) = v.pre.as_deref().filter(|p| *p != "gpt-4o") {
        bail!("tokenizer.ggml.pre is {pre:?}: only the o200k pre-tokenizer (\"gpt-4o\") is known");
    }
    if !v.token_types.is_empty() && v.token_types.len() != v.tokens.len() {
        bail!(
            "tokenizer.ggml.token_type has {} entries for {} tokens",
            v.token_types.len(),
            v.tokens.len()
        );
    }
    let roles = roles(v);
    let pretty = |name: &str, value: &Value| -> Result<(String, Vec<u8>)> {
        let mut text = serde_json::to_vec_pretty(value)?;
        text.push(b'\n');
        Ok((name.to_string(), text))
    };
    Ok(vec![
        pretty("tokenizer.json", &tokenizer_json(v, &roles)?)?,
        pretty(
            "tokenizer_config.json",
            &tokenizer_config(v, &roles, max_len),
        )?,
        pretty("special_tokens_map.json", &special_tokens_map(v))?,
    ])
}

/// One added token as HF writes it (`added_tokens` of tokenizer.json, without the id).
fn added_token(content: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("content".into(), json!(content));
    for flag in ["single_word", "lstrip", "rstrip", "normalized"] {
        m.insert(flag.into(), json!(false));
    }
    m.insert("special".into(), json!(true));
    m
}

fn tokenizer_json(v: &EmbeddedVocab, roles: &[Role]) -> Result<Value> {
    let mut vocab = Map::new();
    let mut added = Vec::new();
    for (id, (t, role)) in v.tokens.iter().zip(roles).enumerate() {
        match role {
            Role::Bpe => {
                if vocab.insert(t.clone(), json!(id)).is_some() {
                    bail!("tokenizer.ggml.tokens[{id}] = {t:?} appears twice");
                }
            }
            Role::Added => {
                let mut m = Map::new();
                m.insert("id".into(), json!(id));
                m.extend(added_token(t));
                added.push(Value::Object(m));
            }
            Role::Dropped => {}
        }
    }
    let merges = v
        .merges
        .iter()
        .enumerate()
        .map(|(i, m)| match m.split_once(' ') {
            Some((a, b)) => Ok(json!([a, b])),
            None => bail!("tokenizer.ggml.merges[{i}] = {m:?}: expected \"left right\""),
        })
        .collect::<Result<Vec<_>>>()?;
    let byte_level = |add_prefix_space: bool, trim_offsets: bool, use_regex: bool| {
        json!({"type": "ByteLevel", "add_prefix_space": add_prefix_space,
               "trim_offsets": trim_offsets, "use_regex": use_regex})
    };
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": O200K_PATTERN}, "behavior": "Isolated", "invert": false},
            byte_level(false, true, false),
        ]},
        "post_processor": byte_level(true, false, true),
        "decoder": byte_level(true, true, true),
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
            "ignore_merges": true, "vocab": vocab, "merges": merges,
        },
    }))
}

/// The name of token `id`, if the vocabulary has it.
fn name(v: &EmbeddedVocab, id: Option<u32>) -> Option<&str> {
    id.and_then(|i| v.tokens.get(i as usize))
        .map(String::as_str)
}

fn tokenizer_config(v: &EmbeddedVocab, roles: &[Role], max_len: usize) -> Value {
    let decoder: Map<String, Value> = roles
        .iter()
        .enumerate()
        .filter(|(_, r)| **r == Role::Added)
        .filter_map(|(id, _)| {
            Some((
                id.to_string(),
                Value::Object(added_token(v.tokens.get(id)?)),
            ))
        })
        .collect();
    let mut c = json!({
        "added_tokens_decoder": decoder,
        "clean_up_tokenization_spaces": false,
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": max_len,
        "tokenizer_class": "PreTrainedTokenizerFast",
    });
    for (key, id) in [
        ("bos_token", v.bos),
        ("eos_token", v.eos),
        ("pad_token", v.pad),
    ] {
        if let Some(n) = name(v, id) {
            c[key] = json!(n);
        }
    }
    if let Some(t) = &v.chat_template {
        c["chat_template"] = json!(t);
    }
    c
}

fn special_tokens_map(v: &EmbeddedVocab) -> Value {
    let mut m = Map::new();
    for (key, id) in [
        ("bos_token", v.bos),
        ("eos_token", v.eos),
        ("pad_token", v.pad),
    ] {
        if let Some(n) = name(v, id) {
            let mut t = added_token(n);
            t.remove("special");
            m.insert(key.into(), Value::Object(t));
        }
    }
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gptoss_formats::gguf::read_checkpoint;
    use gptoss_tokenizer::{Tokenizer, Vocab};
    use std::path::{Path, PathBuf};

    fn fixtures(rel: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures")
            .join(rel)
    }

    fn json_of(files: &[(String, Vec<u8>)], name: &str) -> Value {
        let (_, bytes) = files.iter().find(|(n, _)| n == name).unwrap();
        serde_json::from_slice(bytes).unwrap()
    }

    /// llama.cpp's converter wrote the tiny GGUF's vocabulary from the tiny HF tokenizer.json (made by
    /// HF tokenizers); writing it back must give that tokenizer.json again, field for field.
    #[test]
    fn tiny_gguf_vocab_gives_back_the_hf_tokenizer_json() {
        let raw = read_checkpoint(&fixtures("tiny/gguf/tiny-llamacpp-q8_0.gguf")).unwrap();
        let mut v = raw.vocab.unwrap();
        assert_eq!(v.tokens.len(), 512); // 495 tokens + 17 `[PADn]` rows (UNUSED)
        let files = tokenizer_files(&v, 131072).unwrap();
        let want: Value = serde_json::from_str(
            &std::fs::read_to_string(fixtures("tiny/hf-mxfp4/tokenizer.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(json_of(&files, "tokenizer.json"), want);
        let config = json_of(&files, "tokenizer_config.json");
        assert_eq!(
            (
                &config["bos_token"],
                &config["eos_token"],
                &config["pad_token"]
            ),
            (
                &json!("<|startoftext|>"),
                &json!("<|return|>"),
                &json!("<|endoftext|>")
            )
        );
        assert_eq!(config["added_tokens_decoder"]["492"]["content"], "<|end|>");
        assert!(config.get("chat_template").is_none());
        assert_eq!(
            json_of(&files, "special_tokens_map.json")["eos_token"]["content"],
            "<|return|>"
        );

        v.chat_template = Some("{{ messages }}".into());
        let config = json_of(&tokenizer_files(&v, 8).unwrap(), "tokenizer_config.json");
        assert_eq!(
            (&config["chat_template"], &config["model_max_length"]),
            (&json!("{{ messages }}"), &json!(8))
        );

        v.pre = Some("llama-bpe".into());
        let e = tokenizer_files(&v, 8).unwrap_err().to_string();
        assert!(
            e.contains("tokenizer.ggml.pre") && e.contains("llama-bpe"),
            "{e}"
        );
    }

    /// o200k_harmony as convert writes it into a GGUF, then as tokenizer.json: our tokenizer loading
    /// that file encodes every golden text to tiktoken's ids (tests/fixtures/harmony/encode.json) and
    /// to the ids of the same vocabulary read the GGUF way, with every special at its id.
    #[test]
    fn o200k_tokenizer_json_encodes_like_tiktoken_and_the_gguf_vocab() {
        let v = super::super::vocab::o200k_vocab(&Tokenizer::o200k_harmony().unwrap()).unwrap();
        let files = tokenizer_files(&v, 131072).unwrap();
        let dir = std::env::temp_dir().join(format!("gptoss-hf-tokenizer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tokenizer.json");
        let (_, bytes) = files.iter().find(|(n, _)| n == "tokenizer.json").unwrap();
        std::fs::write(&path, bytes).unwrap();
        let from_json = Tokenizer::from_tokenizer_json(&path).unwrap();
        let vocab = Vocab::from_gguf(
            v.tokens.clone(),
            &v.token_types,
            &v.merges,
            v.pre.as_deref(),
        );
        let from_gguf = Tokenizer::from_vocab(vocab.unwrap()).unwrap();
        let golden: Value = serde_json::from_str(
            &std::fs::read_to_string(fixtures("harmony/encode.json")).unwrap(),
        )
        .unwrap();
        let cases = golden["cases"].as_array().unwrap();
        assert_eq!(cases.len(), 20);
        for case in cases {
            let text = case["text"].as_str().unwrap();
            let want: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
            assert_eq!(from_json.encode(text).unwrap(), want, "{text:?}");
            assert_eq!(from_gguf.encode(text).unwrap(), want, "{text:?}");
        }
        for (name, id) in golden["specials"].as_object().unwrap() {
            let id = id.as_u64().unwrap() as u32;
            assert_eq!(from_json.find_special(name), Some(id), "{name}");
            assert_eq!(from_gguf.find_special(name), Some(id), "{name}");
        }
        assert_eq!(from_json.vocab_size(), 201_088);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
