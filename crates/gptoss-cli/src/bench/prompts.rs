//! The benchmark's prompts: random ordinary tokens (no special or unused ids, which would steer a real
//! model into Harmony control flow) drawn from a seeded generator, so a run is reproducible.

use std::sync::Arc;

use anyhow::{bail, Result};
use gptoss_tokenizer::{TokenKind, Tokenizer};

/// The ids prompts are drawn from.
pub(crate) struct TokenPool {
    ids: Vec<u32>,
}

impl TokenPool {
    /// Ordinary tokens of `tokenizer` that the model's embedding of `model_vocab` rows covers.
    pub fn new(tokenizer: &Arc<Tokenizer>, model_vocab: usize) -> Result<Self> {
        let top = tokenizer.vocab_size().min(model_vocab);
        let ids: Vec<u32> = (0..top as u32)
            .filter(|&id| tokenizer.kind(id) == Some(TokenKind::Normal))
            .collect();
        if ids.is_empty() {
            bail!("the tokenizer has no ordinary tokens below the model's vocabulary of {model_vocab}");
        }
        Ok(TokenPool { ids })
    }

    /// `len` tokens of stream `stream` under `seed`: the same arguments give the same tokens.
    pub fn prompt(&self, seed: u64, stream: u64, len: usize) -> Vec<u32> {
        let mut state = seed ^ stream.wrapping_add(1).wrapping_mul(0xA076_1D64_78BD_642F);
        (0..len)
            .map(|_| {
                let r = splitmix64(&mut state);
                // Multiply-shift maps r to 0..len without modulo bias worth mentioning at 2^64.
                let i = ((r as u128 * self.ids.len() as u128) >> 64) as usize;
                self.ids.get(i).copied().unwrap_or(0)
            })
            .collect()
    }
}

/// SplitMix64 (Steele, Lea, Flood 2014): a fast, well-mixed 64-bit stream from any seed.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture_tokenizer() -> Arc<Tokenizer> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/tiny/hf-mxfp4/tokenizer.json");
        Arc::new(Tokenizer::from_tokenizer_json(&path).unwrap())
    }

    #[test]
    fn splitmix64_matches_the_reference_sequence() {
        // The first outputs for seed 0 from the reference C implementation.
        let mut s = 0u64;
        assert_eq!(splitmix64(&mut s), 0xE220_A839_7B1D_CDAF);
        assert_eq!(splitmix64(&mut s), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn prompts_are_seeded_ordinary_tokens_inside_the_model() {
        let tok = fixture_tokenizer();
        // A model vocabulary smaller than the tokenizer's cuts the pool.
        let pool = TokenPool::new(&tok, 300).unwrap();
        let a = pool.prompt(7, 0, 2000);
        assert_eq!(a, pool.prompt(7, 0, 2000));
        assert_ne!(a, pool.prompt(8, 0, 2000));
        assert_ne!(a, pool.prompt(7, 1, 2000));
        assert!(a.iter().all(|&id| id < 300 && !tok.is_special(id)));
        // 2000 draws over the pool reach most of it (not stuck on a few ids).
        let distinct: std::collections::HashSet<_> = a.iter().collect();
        assert!(
            distinct.len() > pool.ids.len() * 3 / 4,
            "{} of {}",
            distinct.len(),
            pool.ids.len()
        );
        let full = TokenPool::new(&tok, 1 << 20).unwrap();
        assert!(full.ids.iter().all(|&id| !tok.is_special(id)));
        assert!(full.ids.len() > pool.ids.len());
    }
}
