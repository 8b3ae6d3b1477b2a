//! The vocabulary a converted GGUF carries: the checkpoint's own (embedded, or built from its
//! `tokenizer.json` as llama.cpp's converter does), else o200k_harmony when the model's vocabulary
//! has its size. o200k's merges are recovered from its ranks as HF's tiktoken converter does (every
//! split of a token into two tokens), which gives the 446189 merges of the published files.

use std::collections::HashMap;

use anyhow::{Context, Result};
use gptoss_formats::{gguf, Checkpoint, EmbeddedVocab};
use gptoss_tokenizer::{TokenKind, Tokenizer, Vocab, O200K_HARMONY_VOCAB_SIZE};

/// ggml token types.
const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const UNUSED: i32 = 5;

/// The vocabulary to write and a note saying where it came from when that is worth telling.
pub fn for_gguf(ckpt: &Checkpoint) -> Result<(Option<EmbeddedVocab>, Option<String>)> {
    if let Some(v) = gguf::checkpoint_vocab(ckpt).context("building the GGUF vocabulary")? {
        check_vocab(ckpt, &v)?;
        return Ok((Some(v), None));
    }
    let n = ckpt.weights.config.vocab_size;
    if n != O200K_HARMONY_VOCAB_SIZE as usize {
        let note = format!(
            "no tokenizer.json beside the model and its vocabulary ({n}) is not o200k_harmony's \
             ({O200K_HARMONY_VOCAB_SIZE}): the GGUF has no tokenizer.ggml.* keys"
        );
        return Ok((None, Some(note)));
    }
    let tok = Tokenizer::o200k_harmony().context("building o200k_harmony")?;
    let v = o200k_vocab(&tok)?;
    Ok((
        Some(v),
        Some("no tokenizer.json beside the model: wrote o200k_harmony (no chat template)".into()),
    ))
}

/// Text that exercises every o200k pre-tokenizer branch (letters with and without case, digits,
/// punctuation runs, newlines, space runs, other scripts).
const PROBE: &str = "Hello, World! The quick brown fox's 12345 jumps—over \"lazy\" dogs...\n\n\tÜnïcödé 日本語のテキスト   spaces  end.\r\n{\"k\": [1, 2.5e-3]}";

/// The vocabulary about to be written must load the way `gptoss run` will load the GGUF, and when it
/// was built from `tokenizer.json`, that file must load as `run` loads it and both must tokenize alike:
/// a file `run` refuses is refused here too, and nothing is silently dropped (issue 13: a
/// `model.merges` that was not a list gave a GGUF without merges).
fn check_vocab(ckpt: &Checkpoint, v: &EmbeddedVocab) -> Result<()> {
    let vocab = Vocab::from_gguf(
        v.tokens.clone(),
        &v.token_types,
        &v.merges,
        v.pre.as_deref(),
    )
    .context("the vocabulary to write does not load as a GGUF vocabulary")?;
    let written = Tokenizer::from_vocab(vocab)
        .context("the vocabulary to write does not build a tokenizer")?;
    let Some(path) = ckpt
        .vocab
        .is_none()
        .then_some(())
        .and(ckpt.tokenizer_json.as_ref())
    else {
        return Ok(());
    };
    let source = Tokenizer::from_tokenizer_json(path)
        .with_context(|| format!("reading {}", path.display()))?;
    let (a, b) = (source.encode(PROBE)?, written.encode(PROBE)?);
    if a != b {
        anyhow::bail!(
            "{}: the GGUF vocabulary built from it tokenizes a probe text into {} tokens, the file itself into {}; \
             refusing to write a GGUF that tokenizes differently",
            path.display(),
            b.len(),
            a.len()
        );
    }
    Ok(())
}

/// o200k_harmony as GGUF `gpt2` vocabulary metadata.
pub(super) fn o200k_vocab(tok: &Tokenizer) -> Result<EmbeddedVocab> {
    let chars = gptoss_tokenizer::byte_to_char_table();
    let text = |bytes: &[u8]| bytes.iter().map(|&b| chars[b as usize]).collect::<String>();
    let n = tok.vocab_size() as u32;
    let mut tokens = Vec::with_capacity(n as usize);
    let mut types = Vec::with_capacity(n as usize);
    let mut rank: HashMap<Vec<u8>, u32> = HashMap::new();
    for id in 0..n {
        let bytes = tok
            .token_bytes(id)
            .with_context(|| format!("o200k_harmony token {id}"))?;
        let kind = tok.kind(id).unwrap_or(TokenKind::Unused);
        tokens.push(if kind == TokenKind::Special {
            String::from_utf8_lossy(bytes).into_owned()
        } else {
            text(bytes)
        });
        types.push(match kind {
            TokenKind::Normal => NORMAL,
            TokenKind::Special => CONTROL,
            TokenKind::Unused => UNUSED,
        });
        if kind == TokenKind::Normal {
            rank.insert(bytes.to_vec(), id);
        }
    }
    let mut merges = Vec::new();
    for id in 0..n {
        let Ok(bytes) = tok.token_bytes(id) else {
            continue;
        };
        if bytes.len() >= 2 && tok.kind(id) == Some(TokenKind::Normal) {
            merges.extend(
                splits(bytes, &rank)
                    .into_iter()
                    .map(|(a, b)| format!("{} {}", text(a), text(b))),
            );
        }
    }
    Ok(EmbeddedVocab {
        model: "gpt2".into(),
        pre: Some("gpt-4o".into()),
        tokens,
        token_types: types,
        merges,
        chat_template: None,
        bos: tok.find_special("<|startoftext|>"),
        eos: tok.find_special("<|return|>"),
        pad: tok.find_special("<|endoftext|>"),
    })
}

/// Every split of `bytes` into two vocabulary tokens, ordered by the parts' ranks: the merges HF's
/// tiktoken converter lists for a token (so the list matches published gpt-oss files, §3.8).
fn splits<'a>(bytes: &'a [u8], rank: &HashMap<Vec<u8>, u32>) -> Vec<(&'a [u8], &'a [u8])> {
    let mut out: Vec<(u32, u32, usize)> = (1..bytes.len())
        .filter_map(|i| Some((*rank.get(&bytes[..i])?, *rank.get(&bytes[i..])?, i)))
        .collect();
    out.sort_unstable();
    out.into_iter().map(|(_, _, i)| bytes.split_at(i)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_are_every_split_into_two_tokens() {
        let rank: HashMap<Vec<u8>, u32> = [("a", 0), ("b", 1), ("c", 2), ("ab", 10), ("bc", 11)]
            .into_iter()
            .map(|(t, r)| (t.as_bytes().to_vec(), r))
            .collect();
        let abc: &[u8] = b"abc";
        assert_eq!(
            splits(abc, &rank),
            vec![(&abc[..1], &abc[1..]), (&abc[..2], &abc[2..])]
        );
        assert!(splits(b"xy", &rank).is_empty());
    }

    #[test]
    fn o200k_harmony_as_gguf_vocab() {
        let tok = Tokenizer::o200k_harmony().unwrap();
        let v = o200k_vocab(&tok).unwrap();
        assert_eq!(v.tokens.len(), 201_088);
        // The merge count of published gpt-oss GGUFs (spec §3.8).
        assert_eq!(v.merges.len(), 446_189);
        assert_eq!(
            (v.bos, v.eos, v.pad),
            (Some(199_998), Some(200_002), Some(199_999))
        );
        assert_eq!(
            (v.tokens[200_002].as_str(), v.token_types[200_002]),
            ("<|return|>", CONTROL)
        );
        // " the" is byte-level BPE text: the space is GPT-2's U+0120.
        let the = tok.encode(" the").unwrap();
        assert_eq!(v.tokens[the[0] as usize], "\u{120}the");
        assert_eq!(v.token_types[the[0] as usize], NORMAL);
    }
}
