//! [`Vocab`]: a vocabulary as plain data (token strings, kinds, merges), the form a GGUF file embeds
//! (`tokenizer.ggml.*`, spec §3.8). The caller converts its own structs into this one.

use rustc_hash::FxHashMap as HashMap;

use crate::bpe::MergeRule;
use crate::bytes::ByteDecoder;
use crate::error::{Error, Result};
use crate::tokenizer::{Parts, TokenKind, Tokenizer, WholePiece, O200K_PATTERN};

/// A byte-level BPE vocabulary as plain data.
#[derive(Clone, Debug)]
pub struct Vocab {
    /// Token strings by id: GPT-2 byte-to-unicode form for [`TokenKind::Normal`], the literal name for
    /// special and unused ids.
    pub tokens: Vec<String>,
    /// The kind of each id (same length as `tokens`).
    pub kinds: Vec<TokenKind>,
    /// Ordered merges `(left, right)` in byte-to-unicode form; the first merges first.
    pub merges: Vec<(String, String)>,
    /// Whether a pre-token found whole in the vocabulary skips merging (HF `ignore_merges`).
    pub whole_piece: WholePiece,
    /// The pre-tokenizer regex (usually [`O200K_PATTERN`]).
    pub pattern: String,
}

/// GGUF `tokenizer.ggml.token_type` values (llama.cpp `llama_token_type`).
const GGUF_CONTROL: i32 = 3;
const GGUF_USER_DEFINED: i32 = 4;
const GGUF_UNUSED: i32 = 5;

impl Vocab {
    /// Builds a vocabulary from GGUF metadata: `tokenizer.ggml.tokens`, `.token_type` (may be empty),
    /// `.merges` (`"a b"` strings) and `.pre`. Control and user-defined tokens become specials, unused
    /// ones (the padding rows) [`TokenKind::Unused`]. With no token types, `<|…|>` names are specials.
    /// Only the `gpt-4o` pre-tokenizer (or none) is accepted.
    pub fn from_gguf(
        tokens: Vec<String>,
        token_types: &[i32],
        merges: &[String],
        pre: Option<&str>,
    ) -> Result<Self> {
        if let Some(p) = pre.filter(|p| *p != "gpt-4o") {
            return Err(Error::Vocab(format!(
                "tokenizer.ggml.pre: expected \"gpt-4o\" (o200k), found {p:?}"
            )));
        }
        if !token_types.is_empty() && token_types.len() != tokens.len() {
            return Err(Error::Vocab(format!(
                "tokenizer.ggml.token_type has {} entries for {} tokens",
                token_types.len(),
                tokens.len()
            )));
        }
        let kinds = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| match token_types.get(i) {
                Some(&GGUF_CONTROL | &GGUF_USER_DEFINED) => TokenKind::Special,
                Some(&GGUF_UNUSED) => TokenKind::Unused,
                Some(_) => TokenKind::Normal,
                None if t.starts_with("<|") && t.ends_with("|>") => TokenKind::Special,
                None => TokenKind::Normal,
            })
            .collect();
        let merges = merges
            .iter()
            .enumerate()
            .map(|(i, m)| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| {
                        Error::Vocab(format!(
                            "tokenizer.ggml.merges[{i}] = {m:?}: expected \"left right\""
                        ))
                    })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            tokens,
            kinds,
            merges,
            whole_piece: WholePiece::Merge,
            pattern: O200K_PATTERN.to_string(),
        })
    }
}

impl Tokenizer {
    /// Builds a tokenizer from plain vocabulary data (e.g. the vocabulary embedded in a GGUF file).
    /// Merges apply in list order (HF BPE semantics), whatever the ids.
    pub fn from_vocab(vocab: Vocab) -> Result<Self> {
        let Vocab {
            tokens,
            kinds,
            merges,
            whole_piece,
            pattern,
        } = vocab;
        if tokens.len() != kinds.len() {
            return Err(Error::Vocab(format!(
                "{} tokens but {} token kinds",
                tokens.len(),
                kinds.len()
            )));
        }
        let dec = ByteDecoder::new();
        let mut ids: HashMap<&str, u32> =
            HashMap::with_capacity_and_hasher(tokens.len(), Default::default());
        let mut bytes = Vec::with_capacity(tokens.len());
        for (id, (text, kind)) in (0u32..).zip(tokens.iter().zip(&kinds)) {
            match kind {
                TokenKind::Normal => {
                    let b = dec.decode(text).map_err(|c| {
                        Error::Vocab(format!(
                            "token {id} {text:?}: U+{:04X} is not a byte-level character",
                            c as u32
                        ))
                    })?;
                    bytes.push(b);
                    ids.entry(text.as_str()).or_insert(id);
                }
                TokenKind::Special | TokenKind::Unused => bytes.push(text.as_bytes().to_vec()),
            }
        }
        let rule = MergeRule::Pairs(merge_table(&merges, &ids)?);
        Tokenizer::from_parts(Parts {
            tokens: bytes,
            kinds,
            rule,
            whole_piece,
            pattern,
        })
    }
}

/// `(left id, right id) -> (merge index, merged id)`; every part and result must be a normal token.
fn merge_table(
    merges: &[(String, String)],
    ids: &HashMap<&str, u32>,
) -> Result<HashMap<(u32, u32), (u32, u32)>> {
    let mut table = HashMap::with_capacity_and_hasher(merges.len(), Default::default());
    for (rank, (a, b)) in (0u32..).zip(merges) {
        let lookup = |s: &str| {
            ids.get(s).copied().ok_or_else(|| {
                Error::Vocab(format!("merge {rank} ({a:?}, {b:?}): {s:?} is not a token"))
            })
        };
        let merged = lookup(&format!("{a}{b}"))?;
        table
            .entry((lookup(a)?, lookup(b)?))
            .or_insert((rank, merged));
    }
    Ok(table)
}
