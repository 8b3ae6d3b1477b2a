//! The [`Tokenizer`]: o200k-style pre-tokenization, byte-level BPE, special tokens by name, decoding.
//! Built from tiktoken-rs's bundled o200k_harmony, an HF `tokenizer.json` or a plain [`Vocab`].

use rustc_hash::FxHashMap as HashMap;

use crate::bpe::{merge_piece, MergeRule};
use crate::error::{Error, Result};

/// The o200k pre-tokenizer regex (spec §4.7), shared by o200k_base, o200k_harmony and the HF
/// `tokenizer.json` / GGUF `gpt-4o` vocabularies of gpt-oss.
pub const O200K_PATTERN: &str = concat!(
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    "|",
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    "|",
    r"\p{N}{1,3}",
    "|",
    r" ?[^\s\p{L}\p{N}]+[\r\n/]*",
    "|",
    r"\s*[\r\n]+",
    "|",
    r"\s+(?!\S)",
    "|",
    r"\s+",
);

/// What a token id stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenKind {
    /// Ordinary text; produced by encoding.
    Normal,
    /// A control token (`<|start|>`, `<|end|>`, …): never produced by encoding text, inserted by id.
    Special,
    /// A declared but unused id (GGUF padding rows): never produced by encoding.
    Unused,
}

/// Whether a pre-token that is itself a vocabulary token is emitted directly (tiktoken always does;
/// HF BPE does when `ignore_merges` is true) or always goes through the merges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WholePiece {
    /// Emit a piece found in the vocabulary as one token.
    Lookup,
    /// Always merge from bytes.
    Merge,
}

/// A byte-level BPE tokenizer with named special tokens.
///
/// Encoding never produces special tokens: text that spells `<|start|>` is encoded as ordinary text.
/// Specials are looked up by name with [`Tokenizer::special_id`] and inserted as ids.
#[derive(Debug)]
pub struct Tokenizer {
    /// Bytes of each id (a special's bytes are its name).
    tokens: Vec<Vec<u8>>,
    kinds: Vec<TokenKind>,
    /// Normal tokens only: bytes to id.
    by_bytes: HashMap<Vec<u8>, u32>,
    byte_ids: [u32; 256],
    rule: MergeRule,
    whole_piece: WholePiece,
    specials: HashMap<String, u32>,
    pattern: fancy_regex::Regex,
    /// Bytes of the longest normal token: a text of `n` bytes encodes to at least `n / longest` tokens.
    longest: usize,
}

/// Everything needed to build a [`Tokenizer`], with token bytes already decoded.
pub(crate) struct Parts {
    pub(crate) tokens: Vec<Vec<u8>>,
    pub(crate) kinds: Vec<TokenKind>,
    pub(crate) rule: MergeRule,
    pub(crate) whole_piece: WholePiece,
    pub(crate) pattern: String,
}

impl Tokenizer {
    /// Builds the lookup tables; errors if some byte has no token or the pattern does not compile.
    pub(crate) fn from_parts(parts: Parts) -> Result<Self> {
        let Parts {
            tokens,
            kinds,
            rule,
            whole_piece,
            pattern,
        } = parts;
        if tokens.len() != kinds.len() || u32::try_from(tokens.len()).is_err() {
            return Err(Error::Vocab(format!(
                "{} tokens but {} token kinds",
                tokens.len(),
                kinds.len()
            )));
        }
        let mut by_bytes = HashMap::with_capacity_and_hasher(tokens.len(), Default::default());
        let mut specials = HashMap::default();
        for (id, (bytes, kind)) in (0u32..).zip(tokens.iter().zip(&kinds)) {
            match kind {
                TokenKind::Normal => {
                    by_bytes.entry(bytes.clone()).or_insert(id);
                }
                TokenKind::Special | TokenKind::Unused => {
                    specials
                        .entry(String::from_utf8_lossy(bytes).into_owned())
                        .or_insert(id);
                }
            }
        }
        let mut byte_ids = [0u32; 256];
        for (b, slot) in (0u8..=255).zip(byte_ids.iter_mut()) {
            *slot = *by_bytes.get([b].as_slice()).ok_or_else(|| {
                Error::Vocab(format!(
                    "no token for byte 0x{b:02x}; byte-level BPE needs all 256"
                ))
            })?;
        }
        let pattern = fancy_regex::Regex::new(&pattern)
            .map_err(|e| Error::Regex(format!("{pattern:?}: {e}")))?;
        let longest = by_bytes.keys().map(Vec::len).max().unwrap_or(1).max(1);
        Ok(Self {
            longest,
            tokens,
            kinds,
            by_bytes,
            byte_ids,
            rule,
            whole_piece,
            specials,
            pattern,
        })
    }

    /// Number of ids (normal, special and unused).
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// Encodes text as ordinary text (special-token names in it are not recognised).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let mut out = Vec::with_capacity(text.len() / 3 + 1);
        self.encode_into(text, &mut out)?;
        Ok(out)
    }

    /// Like [`Tokenizer::encode`], appending to `out`.
    pub fn encode_into(&self, text: &str, out: &mut Vec<u32>) -> Result<()> {
        self.encode_capped(text, out, usize::MAX)
    }

    /// Like [`Tokenizer::encode_into`], but fails with [`Error::TooManyTokens`] as soon as `out` would
    /// hold more than `cap` tokens. The work is bounded by the cap, not by the text: a piece (or the
    /// whole text) too long to fit is refused from its length before it is merged.
    pub fn encode_capped(&self, text: &str, out: &mut Vec<u32>, cap: usize) -> Result<()> {
        let over = || Error::TooManyTokens { cap };
        if out.len() + text.len() / self.longest > cap {
            return Err(over());
        }
        // Text between matches is a piece of its own, as Hugging Face's `Split` (Isolated) keeps it:
        // a pattern that does not cover the text must not drop any of it.
        let mut covered = 0;
        for m in self.pattern.find_iter(text) {
            let m = m.map_err(|e| {
                Error::Regex(format!("while splitting {} bytes of text: {e}", text.len()))
            })?;
            if let Some(gap) = text.get(covered..m.start()).filter(|g| !g.is_empty()) {
                self.encode_piece(gap.as_bytes(), out, cap)?;
            }
            self.encode_piece(m.as_str().as_bytes(), out, cap)?;
            covered = m.end();
        }
        if let Some(tail) = text.get(covered..).filter(|t| !t.is_empty()) {
            self.encode_piece(tail.as_bytes(), out, cap)?;
        }
        Ok(())
    }

    fn encode_piece(&self, bytes: &[u8], out: &mut Vec<u32>, cap: usize) -> Result<()> {
        let over = || Error::TooManyTokens { cap };
        if out.len() + bytes.len().div_ceil(self.longest) > cap {
            return Err(over());
        }
        match (self.whole_piece, self.by_bytes.get(bytes)) {
            (WholePiece::Lookup, Some(&id)) => out.push(id),
            _ => out.extend(merge_piece(
                bytes,
                &self.byte_ids,
                &self.by_bytes,
                &self.rule,
            )),
        }
        if out.len() > cap {
            return Err(over());
        }
        Ok(())
    }

    /// The id of a special token by name, e.g. `special_id("<|start|>")`.
    pub fn special_id(&self, name: &str) -> Result<u32> {
        self.specials
            .get(name)
            .copied()
            .ok_or_else(|| Error::UnknownSpecial(name.to_string()))
    }

    /// The id of a special token by name, or `None` when the vocabulary lacks it.
    pub fn find_special(&self, name: &str) -> Option<u32> {
        self.specials.get(name).copied()
    }

    /// What `id` stands for, or `None` when it is outside the vocabulary.
    pub fn kind(&self, id: u32) -> Option<TokenKind> {
        self.kinds.get(id as usize).copied()
    }

    /// True for special and unused ids.
    pub fn is_special(&self, id: u32) -> bool {
        matches!(self.kind(id), Some(TokenKind::Special | TokenKind::Unused))
    }

    /// The bytes of one token (a special token's bytes are its name).
    pub fn token_bytes(&self, id: u32) -> Result<&[u8]> {
        self.tokens
            .get(id as usize)
            .map(Vec::as_slice)
            .ok_or(Error::UnknownId {
                id,
                size: self.tokens.len(),
            })
    }

    /// The concatenated bytes of `ids` (not necessarily valid UTF-8).
    pub fn decode_bytes(&self, ids: &[u32]) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            out.extend_from_slice(self.token_bytes(id)?);
        }
        Ok(out)
    }

    /// Decodes `ids` to text; invalid UTF-8 becomes U+FFFD. Special tokens appear as their names.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        Ok(String::from_utf8_lossy(&self.decode_bytes(ids)?).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizer_can_be_shared_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Tokenizer>();
        assert_send_sync::<crate::harmony::Harmony>();
    }
}
