//! `Tokenizer::from_tokenizer_json`: a Hugging Face `tokenizer.json` with a byte-level BPE model, a
//! `Split` regex + `ByteLevel` pre-tokenizer and added (special) tokens. Anything else is refused by name.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, Result};
use crate::tokenizer::{TokenKind, Tokenizer, WholePiece};
use crate::vocab::Vocab;

/// Field-error helper bound to one file.
struct Json<'a> {
    path: &'a Path,
}

impl Json<'_> {
    fn err(&self, field: &str, msg: impl Into<String>) -> Error {
        Error::TokenizerJson {
            path: PathBuf::from(self.path),
            field: field.to_string(),
            msg: msg.into(),
        }
    }
}

impl Tokenizer {
    /// Loads a Hugging Face `tokenizer.json` (BPE model over GPT-2 byte-level strings, merges applied by
    /// list order, `ignore_merges` honoured). Added tokens become specials: they are never produced by
    /// encoding text and are looked up by name.
    pub fn from_tokenizer_json(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_tokenizer_json_bytes(&bytes, path)
    }

    /// Like [`Tokenizer::from_tokenizer_json`], from the file's bytes; `path` names it in errors.
    pub fn from_tokenizer_json_bytes(bytes: &[u8], path: &Path) -> Result<Self> {
        let root: Value = serde_json::from_slice(bytes).map_err(|source| Error::Json {
            path: path.to_path_buf(),
            source,
        })?;
        let vocab = vocab_from_json(&root, &Json { path })?;
        Tokenizer::from_vocab(vocab).map_err(|e| Json { path }.err("model", e.to_string()))
    }
}

fn vocab_from_json(root: &Value, j: &Json) -> Result<Vocab> {
    match root.get("normalizer") {
        None | Some(Value::Null) => {}
        Some(n) => return Err(j.err("normalizer", format!("expected null, found {n}"))),
    }
    let model = root.get("model").ok_or_else(|| j.err("model", "missing"))?;
    let model_type = model.get("type").and_then(Value::as_str);
    if model_type != Some("BPE") {
        return Err(j.err(
            "model.type",
            format!("expected \"BPE\", found {model_type:?}"),
        ));
    }
    for field in ["continuing_subword_prefix", "end_of_word_suffix", "dropout"] {
        match model.get(field) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if s.is_empty() => {}
            Some(v) => {
                return Err(j.err(&format!("model.{field}"), format!("unsupported value {v}")))
            }
        }
    }
    let whole_piece = match model.get("ignore_merges").and_then(Value::as_bool) {
        Some(true) => WholePiece::Lookup,
        _ => WholePiece::Merge,
    };
    // Ids must be contiguous, so none can reach the number of entries: that bounds every id (and the
    // table sized by the largest) by the file's own size.
    let entries = model
        .get("vocab")
        .and_then(Value::as_object)
        .map_or(0, |m| m.len())
        + root
            .get("added_tokens")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
    let (mut tokens, mut kinds) = model_vocab(model, entries, j)?;
    add_special_tokens(root, &mut tokens, &mut kinds, (entries, j))?;
    let (tokens, kinds) = fill(tokens, kinds, j)?;
    Ok(Vocab {
        tokens,
        kinds,
        merges: merges(model, j)?,
        whole_piece,
        pattern: split_pattern(root, j)?,
    })
}

/// `model.vocab` as `(id -> string)` slots (holes are filled by added tokens or refused later).
fn model_vocab(
    model: &Value,
    entries: usize,
    j: &Json,
) -> Result<(Vec<Option<String>>, Vec<TokenKind>)> {
    let map = model
        .get("vocab")
        .and_then(Value::as_object)
        .ok_or_else(|| j.err("model.vocab", "expected an object"))?;
    let mut tokens: Vec<Option<String>> = Vec::new();
    for (text, id) in map {
        let id = id
            .as_u64()
            .ok_or_else(|| j.err(&format!("model.vocab[{text:?}]"), "expected an integer id"))?;
        let slot = slot(&mut tokens, id, (entries, j))?;
        *slot = Some(text.clone());
    }
    let kinds = vec![TokenKind::Normal; tokens.len()];
    Ok((tokens, kinds))
}

/// The slot of `id`, growing the table to it; `entries` (vocab + added tokens) bounds the ids.
fn slot<'v>(
    tokens: &'v mut Vec<Option<String>>,
    id: u64,
    (entries, j): (usize, &Json),
) -> Result<&'v mut Option<String>> {
    let i = usize::try_from(id)
        .ok()
        .filter(|&i| i < entries && i < u32::MAX as usize)
        .ok_or_else(|| {
            j.err(
                "id",
                format!("{id} is not below the {entries} entries (ids must be contiguous)"),
            )
        })?;
    if tokens.len() <= i {
        tokens.resize(i + 1, None);
    }
    tokens
        .get_mut(i)
        .ok_or_else(|| j.err("id", format!("{id} out of range")))
}

fn add_special_tokens(
    root: &Value,
    tokens: &mut Vec<Option<String>>,
    kinds: &mut Vec<TokenKind>,
    (entries, j): (usize, &Json),
) -> Result<()> {
    let Some(added) = root.get("added_tokens").and_then(Value::as_array) else {
        return Ok(());
    };
    for (i, t) in added.iter().enumerate() {
        let field = format!("added_tokens[{i}]");
        let id = t
            .get("id")
            .and_then(Value::as_u64)
            .ok_or_else(|| j.err(&field, "missing integer `id`"))?;
        let content = t
            .get("content")
            .and_then(Value::as_str)
            .ok_or_else(|| j.err(&field, "missing `content`"))?;
        *slot(tokens, id, (entries, j))? = Some(content.to_string());
        kinds.resize(tokens.len(), TokenKind::Normal);
        if let Some(k) = kinds.get_mut(id as usize) {
            *k = TokenKind::Special;
        }
    }
    Ok(())
}

fn fill(
    tokens: Vec<Option<String>>,
    kinds: Vec<TokenKind>,
    j: &Json,
) -> Result<(Vec<String>, Vec<TokenKind>)> {
    let tokens = tokens
        .into_iter()
        .enumerate()
        .map(|(id, t)| {
            t.ok_or_else(|| {
                j.err(
                    "model.vocab",
                    format!("no token has id {id} (ids must be contiguous)"),
                )
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let mut kinds = kinds;
    kinds.resize(tokens.len(), TokenKind::Normal);
    Ok((tokens, kinds))
}

/// `model.merges`: either `"a b"` strings (older files) or `["a", "b"]` pairs.
fn merges(model: &Value, j: &Json) -> Result<Vec<(String, String)>> {
    let list = model
        .get("merges")
        .and_then(Value::as_array)
        .ok_or_else(|| j.err("model.merges", "expected an array"))?;
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            let pair = match m {
                Value::String(s) => s
                    .split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string())),
                Value::Array(p) => match p.as_slice() {
                    [Value::String(a), Value::String(b)] => Some((a.clone(), b.clone())),
                    _ => None,
                },
                _ => None,
            };
            pair.ok_or_else(|| {
                j.err(
                    &format!("model.merges[{i}]"),
                    format!("expected \"a b\" or [a, b], found {m}"),
                )
            })
        })
        .collect()
}

/// The `Split` regex of the pre-tokenizer, which must be followed by a `ByteLevel` without its own regex.
fn split_pattern(root: &Value, j: &Json) -> Result<String> {
    let pre = root
        .get("pre_tokenizer")
        .ok_or_else(|| j.err("pre_tokenizer", "missing"))?;
    let steps: Vec<&Value> = match pre.get("type").and_then(Value::as_str) {
        Some("Sequence") => pre
            .get("pretokenizers")
            .and_then(Value::as_array)
            .map(|a| a.iter().collect())
            .unwrap_or_default(),
        _ => vec![pre],
    };
    let mut pattern = None;
    for (i, step) in steps.iter().enumerate() {
        let field = format!("pre_tokenizer[{i}]");
        match step.get("type").and_then(Value::as_str) {
            Some("Split") => {
                let regex = step
                    .get("pattern")
                    .and_then(|p| p.get("Regex"))
                    .and_then(Value::as_str);
                let behavior = step.get("behavior").and_then(Value::as_str);
                let inverted = step.get("invert").and_then(Value::as_bool).unwrap_or(false);
                match (regex, behavior, inverted) {
                    (Some(r), Some("Isolated"), false) if pattern.is_none() => {
                        pattern = Some(r.to_string())
                    }
                    _ => return Err(j.err(
                        &field,
                        "expected one Split {pattern: {Regex}, behavior: Isolated, invert: false}",
                    )),
                }
            }
            Some("ByteLevel") => {
                let prefix = step
                    .get("add_prefix_space")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                let own_regex = step
                    .get("use_regex")
                    .and_then(Value::as_bool)
                    .unwrap_or(true);
                if prefix || own_regex {
                    return Err(j.err(
                        &field,
                        "ByteLevel must have add_prefix_space=false and use_regex=false",
                    ));
                }
            }
            other => return Err(j.err(&field, format!("unsupported pre-tokenizer {other:?}"))),
        }
    }
    pattern.ok_or_else(|| j.err("pre_tokenizer", "no Split regex found"))
}
