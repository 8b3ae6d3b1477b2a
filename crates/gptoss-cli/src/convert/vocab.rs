//! The vocabulary a converted GGUF carries: the checkpoint's own (embedded, or built from its
//! `tokenizer.json` as llama.cpp's converter does), else o200k_harmony when the model's vocabulary
//! has its size. o200k's merges are recovered from its ranks the way llama.cpp's converter does for
//! tiktoken vocabularies: a token's merge is the last step of BPE over its bytes using lower ranks.

use std::collections::HashMap;

use anyhow::{Context, Result};
use gptoss_formats::{gguf, Checkpoint, EmbeddedVocab};
use gptoss_tokenizer::{TokenKind, Tokenizer, O200K_HARMONY_VOCAB_SIZE};

/// ggml token types.
const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const UNUSED: i32 = 5;

/// The vocabulary to write and a note saying where it came from when that is worth telling.
pub fn for_gguf(ckpt: &Checkpoint) -> Result<(Option<EmbeddedVocab>, Option<String>)> {
    if let Some(v) = gguf::checkpoint_vocab(ckpt).context("building the GGUF vocabulary")? {
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

/// GPT-2's byte-to-unicode alphabet (printable Latin-1 bytes stand for themselves).
fn byte_chars() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut extra = 0u32;
    for (b, slot) in table.iter_mut().enumerate() {
        let printable =
            (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
        let code = if printable {
            b as u32
        } else {
            extra += 1;
            0xFF + extra
        };
        *slot = char::from_u32(code).unwrap_or('\0');
    }
    table
}

/// o200k_harmony as GGUF `gpt2` vocabulary metadata.
fn o200k_vocab(tok: &Tokenizer) -> Result<EmbeddedVocab> {
    let chars = byte_chars();
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
        if bytes.len() < 2 || tok.kind(id) != Some(TokenKind::Normal) {
            continue;
        }
        if let Some((a, b)) = last_merge(bytes, id, &rank) {
            merges.push(format!("{} {}", text(&a), text(&b)));
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

/// The two parts BPE joins last when it builds `bytes` from single bytes using ranks below `max`.
fn last_merge(bytes: &[u8], max: u32, rank: &HashMap<Vec<u8>, u32>) -> Option<(Vec<u8>, Vec<u8>)> {
    let mut parts: Vec<Vec<u8>> = bytes.iter().map(|&b| vec![b]).collect();
    while parts.len() > 2 {
        let best = (0..parts.len() - 1)
            .filter_map(|i| {
                let joined = [parts[i].as_slice(), parts[i + 1].as_slice()].concat();
                rank.get(&joined).filter(|&&r| r < max).map(|&r| (r, i))
            })
            .min()?;
        let next = parts.remove(best.1 + 1);
        parts[best.1].extend(next);
    }
    let mut it = parts.into_iter();
    Some((it.next()?, it.next()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_come_from_lower_ranks() {
        let rank: HashMap<Vec<u8>, u32> = [
            (b"ab".to_vec(), 10),
            (b"bc".to_vec(), 11),
            (b"abc".to_vec(), 12),
        ]
        .into_iter()
        .collect();
        assert_eq!(
            last_merge(b"abc", 12, &rank),
            Some((b"ab".to_vec(), b"c".to_vec()))
        );
        assert_eq!(
            last_merge(b"ab", 10, &rank),
            Some((b"a".to_vec(), b"b".to_vec()))
        );
        assert_eq!(last_merge(b"abcd", 13, &HashMap::new()), None);
    }
}
