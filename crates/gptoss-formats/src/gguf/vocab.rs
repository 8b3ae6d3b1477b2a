//! The vocabulary a GGUF carries (`tokenizer.ggml.*`, spec §3.8): built from an HF model directory
//! the way llama.cpp's converter does it for byte-level BPE (`_set_vocab_gpt2` + `SpecialVocab`),
//! and turned into GGUF metadata for the writer.

use std::path::Path;

use serde_json::Value as Json;

use crate::error::{Error, Result};
use crate::EmbeddedVocab;

use super::container::{Array, Value};

/// ggml token types.
const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;

fn read_json(path: &Path) -> Result<Json> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::format(path, format!("not valid JSON: {e}")))
}

/// Builds the GGUF vocabulary from `dir/tokenizer.json` (+ `tokenizer_config.json`, `config.json`,
/// `chat_template.jinja` when present). Ids without a token up to `vocab_size` become `[PAD{id}]`
/// (type unused); added special tokens are control tokens, other added tokens user-defined.
pub fn vocab_from_hf_dir(dir: &Path, vocab_size: usize) -> Result<EmbeddedVocab> {
    let tok_path = dir.join("tokenizer.json");
    let tok = read_json(&tok_path)?;
    let file = tok_path.display().to_string();
    let model = tok
        .get("model")
        .ok_or_else(|| Error::config(&file, "model", "missing"))?;
    if model.get("type").and_then(Json::as_str) != Some("BPE") {
        return Err(Error::config(
            &file,
            "model.type",
            "expected \"BPE\" (byte-level BPE, as o200k)",
        ));
    }
    let mut tokens: Vec<Option<String>> = vec![None; vocab_size];
    let mut types = vec![UNUSED; vocab_size];
    let mut place = |id: u64, text: &str, ty: i32, field: &str| -> Result<()> {
        let slot = tokens.get_mut(id as usize).ok_or_else(|| {
            Error::config(
                &file,
                field,
                format!("token id {id} ({text:?}) is not below vocab_size {vocab_size}"),
            )
        })?;
        *slot = Some(text.to_string());
        types[id as usize] = ty;
        Ok(())
    };
    let vocab = model
        .get("vocab")
        .and_then(Json::as_object)
        .ok_or_else(|| Error::config(&file, "model.vocab", "expected an object of token → id"))?;
    for (text, id) in vocab {
        let id = id
            .as_u64()
            .ok_or_else(|| Error::config(&file, "model.vocab", format!("{text:?}: id {id}")))?;
        place(id, text, NORMAL, "model.vocab")?;
    }
    let added = tok
        .get("added_tokens")
        .and_then(Json::as_array)
        .cloned()
        .unwrap_or_default();
    for a in &added {
        let (Some(id), Some(text)) = (
            a.get("id").and_then(Json::as_u64),
            a.get("content").and_then(Json::as_str),
        ) else {
            return Err(Error::config(
                &file,
                "added_tokens",
                format!("entry without id/content: {a}"),
            ));
        };
        let special =
            a.get("special").and_then(Json::as_bool).unwrap_or(false) || looks_special(text);
        place(
            id,
            text,
            if special { CONTROL } else { USER_DEFINED },
            "added_tokens",
        )?;
    }
    let tokens = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| t.unwrap_or_else(|| format!("[PAD{i}]")))
        .collect();
    let merges = merges(model, &file)?;
    let mut v = EmbeddedVocab {
        model: "gpt2".into(),
        pre: Some("gpt-4o".into()),
        tokens,
        token_types: types,
        merges,
        ..EmbeddedVocab::default()
    };
    special_ids(dir, &added, &mut v)?;
    Ok(v)
}

/// llama.cpp's `does_token_look_special` for the shapes o200k uses.
fn looks_special(text: &str) -> bool {
    (text.starts_with("<|") && text.ends_with("|>"))
        || (text.starts_with("<｜") && text.ends_with("｜>"))
}

/// Merges as `"a b"`; the pair-list form has spaces inside parts encoded as U+0120 as gguf-py does.
fn merges(model: &Json, file: &str) -> Result<Vec<String>> {
    // Refused, not read as "no merges": a GGUF without them tokenizes differently (issue 13).
    let list = match model.get("merges") {
        Some(Json::Array(list)) => list,
        Some(other) => {
            let kind = match other {
                Json::Null => "null",
                Json::Object(_) => "an object",
                Json::String(_) => "a string",
                _ => "a scalar",
            };
            return Err(Error::config(
                file,
                "model.merges",
                format!("expected an array of merges, found {kind}"),
            ));
        }
        None => return Err(Error::config(file, "model.merges", "missing")),
    };
    list.iter()
        .map(|m| match m {
            Json::String(s) => Ok(s.clone()),
            Json::Array(pair) if pair.len() == 2 => {
                let part = |p: &Json| p.as_str().map(|s| s.replace(' ', "\u{0120}"));
                match (part(&pair[0]), part(&pair[1])) {
                    (Some(a), Some(b)) => Ok(format!("{a} {b}")),
                    _ => Err(Error::config(
                        file,
                        "model.merges",
                        "a pair of two strings expected",
                    )),
                }
            }
            _ => Err(Error::config(
                file,
                "model.merges",
                "unknown merge form (expected \"a b\" or [\"a\", \"b\"])",
            )),
        })
        .collect()
}

/// bos/eos/pad ids from `tokenizer_config.json` token names, else `config.json` ids; chat template.
fn special_ids(dir: &Path, added: &[Json], v: &mut EmbeddedVocab) -> Result<()> {
    let tc_path = dir.join("tokenizer_config.json");
    let tc = if tc_path.is_file() {
        read_json(&tc_path)?
    } else {
        Json::Null
    };
    let n = v.tokens.len() as u64;
    let by_name = |typ: &str| -> Option<u32> {
        let entry = tc.get(format!("{typ}_token"))?;
        let content = entry
            .as_str()
            .or_else(|| entry.get("content").and_then(Json::as_str))?;
        let id = added
            .iter()
            .find(|a| a.get("content").and_then(Json::as_str) == Some(content))?
            .get("id")?;
        id.as_u64().filter(|&i| i < n).map(|i| i as u32)
    };
    let cfg_path = dir.join("config.json");
    let cfg = if cfg_path.is_file() {
        read_json(&cfg_path)?
    } else {
        Json::Null
    };
    let by_id = |typ: &str| {
        cfg.get(format!("{typ}_token_id"))
            .and_then(Json::as_u64)
            .filter(|&i| i < n)
            .map(|i| i as u32)
    };
    v.bos = by_name("bos").or_else(|| by_id("bos"));
    v.eos = by_name("eos").or_else(|| by_id("eos"));
    v.pad = by_name("pad").or_else(|| by_id("pad"));
    let jinja = dir.join("chat_template.jinja");
    v.chat_template = match tc.get("chat_template").and_then(Json::as_str) {
        Some(t) => Some(t.to_string()),
        None if jinja.is_file() => {
            Some(std::fs::read_to_string(&jinja).map_err(|e| Error::io(&jinja, e))?)
        }
        None => None,
    };
    Ok(())
}

/// The `tokenizer.*` metadata for a vocabulary, in llama.cpp's key order.
pub fn vocab_metadata(v: &EmbeddedVocab) -> Vec<(String, Value)> {
    let strings = |xs: &[String]| Value::Array(Array::String(xs.to_vec()));
    let mut m = vec![(
        "tokenizer.ggml.model".to_string(),
        Value::String(v.model.clone()),
    )];
    if let Some(pre) = &v.pre {
        m.push(("tokenizer.ggml.pre".into(), Value::String(pre.clone())));
    }
    m.push(("tokenizer.ggml.tokens".into(), strings(&v.tokens)));
    if !v.token_types.is_empty() {
        m.push((
            "tokenizer.ggml.token_type".into(),
            Value::Array(Array::I32(v.token_types.clone())),
        ));
    }
    if !v.merges.is_empty() {
        m.push(("tokenizer.ggml.merges".into(), strings(&v.merges)));
    }
    for (key, id) in [("bos", v.bos), ("eos", v.eos), ("padding", v.pad)] {
        if let Some(id) = id {
            m.push((format!("tokenizer.ggml.{key}_token_id"), Value::U32(id)));
        }
    }
    // Harmony never starts with BOS; llama.cpp's converter writes both flags false for gpt-oss too.
    m.push(("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)));
    m.push(("tokenizer.ggml.add_eos_token".into(), Value::Bool(false)));
    if let Some(t) = &v.chat_template {
        m.push(("tokenizer.chat_template".into(), Value::String(t.clone())));
    }
    m
}
