//! `Tokenizer::o200k_harmony()`: the gpt-oss vocabulary taken from tiktoken-rs's bundled o200k_harmony
//! (o200k_base ranks 0..199998 plus the Harmony specials 199998..=201087, spec §4.1).

use crate::bpe::MergeRule;
use crate::error::{Error, Result};
use crate::tokenizer::{Parts, TokenKind, Tokenizer, WholePiece, O200K_PATTERN};

/// Number of ids o200k_harmony declares (text ranks, named specials and reserved specials).
pub const O200K_HARMONY_VOCAB_SIZE: u32 = 201_088;

impl Tokenizer {
    /// The o200k_harmony tokenizer of gpt-oss, exactly as tiktoken defines it: rank == id, tiktoken
    /// merge semantics, `<|reserved_N|>` for unnamed ids up to 201087.
    pub fn o200k_harmony() -> Result<Self> {
        let bpe = tiktoken_rs::o200k_harmony()
            .map_err(|e| Error::Vocab(format!("tiktoken-rs o200k_harmony: {e}")))?;
        let specials = bpe.special_tokens();
        let mut tokens = Vec::with_capacity(O200K_HARMONY_VOCAB_SIZE as usize);
        let mut kinds = Vec::with_capacity(O200K_HARMONY_VOCAB_SIZE as usize);
        for id in 0..O200K_HARMONY_VOCAB_SIZE {
            let bytes = bpe.decode_bytes(&[id]).map_err(|_| {
                Error::Vocab(format!("tiktoken-rs o200k_harmony has no token {id}"))
            })?;
            let is_special = std::str::from_utf8(&bytes).is_ok_and(|s| specials.contains(s));
            kinds.push(if is_special {
                TokenKind::Special
            } else {
                TokenKind::Normal
            });
            tokens.push(bytes);
        }
        Tokenizer::from_parts(Parts {
            tokens,
            kinds,
            rule: MergeRule::Ranks,
            whole_piece: WholePiece::Lookup,
            pattern: O200K_PATTERN.to_string(),
        })
    }
}
