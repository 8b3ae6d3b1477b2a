//! Speculative decoding: a per-sequence [`DraftProposer`] guesses the next tokens, the scheduler runs
//! them through the model in the sequence's step (one logit row each) and keeps the longest prefix
//! the target model agrees with.
//!
//! Verification samples every row exactly as plain decoding would sample that token (same sampler,
//! same counter: the generated-token index) and accepts draft token `j` while the sample equals it.
//! The emitted tokens are the samples up to and including the first disagreement (or the bonus
//! token after the last draft). For greedy rows that is the argmax match. For sampled rows it is the
//! standard rejection rule for a deterministic draft (q = one-hot at `x`), drawn with the plain
//! sampler's own uniform: the sample equals `x` with probability `p(x)` (accept), and otherwise it
//! is distributed as `p` with `x` removed and renormalised (the residual). So a request's tokens are
//! the plain decode's tokens for the same seed, not only the same distribution, whatever was drafted.
//!
//! Drafts come from [`Speculative`], the engine-wide setting: prompt lookup ([`NgramProposer`]) now.
//! A draft model (EAGLE3 heads for gpt-oss) plugs in as another proposer: per-sequence state (its
//! KV blocks, the last hidden state) behind the same trait, told how much of each draft was
//! accepted through [`DraftProposer::verified`] so it can roll its own cache back.

use crate::error::{Error, Result};

/// Guesses how a sequence continues. One proposer per sequence, created when it is submitted.
pub trait DraftProposer: Send {
    /// Up to `max` tokens to follow `tokens` (the prompt and everything generated so far). Fewer,
    /// or none, when there is no good guess; more than `max` are cut.
    fn propose(&mut self, tokens: &[u32], max: usize) -> Vec<u32>;

    /// How many of the last proposal's `drafted` tokens the target accepted (a draft model rolls
    /// its cache back to there). Prompt lookup keeps no state and ignores it.
    fn verified(&mut self, _drafted: usize, _accepted: usize) {}
}

/// Builds a sequence's proposer.
pub type MakeProposer = fn() -> Box<dyn DraftProposer>;

/// Whether and how the engine drafts tokens.
#[derive(Clone, Copy, Debug, Default)]
pub enum Speculative {
    /// Plain decoding: one token per sequence per step.
    #[default]
    Off,
    /// Prompt lookup: drafts copied from the sequence itself.
    Ngram(NgramConfig),
    /// Proposers made elsewhere (a test double; later, a draft model's).
    Custom {
        /// Most tokens drafted per step.
        draft_tokens: usize,
        /// Makes one proposer per sequence.
        make: MakeProposer,
    },
}

impl Speculative {
    /// Most draft tokens a sequence adds to one step (0 when off).
    pub fn draft_tokens(&self) -> usize {
        match self {
            Speculative::Off => 0,
            Speculative::Ngram(c) => c.draft_tokens,
            Speculative::Custom { draft_tokens, .. } => *draft_tokens,
        }
    }

    /// Logit rows a step needs so that each of `slots` sequences can verify a full draft, at most
    /// one per token of a step of `max_batch_tokens` (never fewer than `slots`).
    pub fn logit_rows(&self, slots: usize, max_batch_tokens: usize) -> usize {
        let want = slots.saturating_mul(1 + self.draft_tokens());
        want.min(max_batch_tokens).max(slots)
    }

    /// A fresh proposer for one sequence (`None` when off).
    pub(crate) fn proposer(&self) -> Option<Box<dyn DraftProposer>> {
        match self {
            Speculative::Off => None,
            Speculative::Ngram(c) => Some(Box::new(NgramProposer::new(*c))),
            Speculative::Custom { make, .. } => Some(make()),
        }
    }
}

/// Prompt lookup settings (vLLM's `num_speculative_tokens`, `prompt_lookup_min`, `prompt_lookup_max`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NgramConfig {
    /// Most tokens drafted per step.
    pub draft_tokens: usize,
    /// Shortest suffix looked up.
    pub min_n: usize,
    /// Longest suffix looked up (tried first).
    pub max_n: usize,
}

impl NgramConfig {
    /// Checked settings: at least one draft token, `1 <= min_n <= max_n`.
    pub fn new(draft_tokens: usize, min_n: usize, max_n: usize) -> Result<Self> {
        if draft_tokens == 0 {
            return Err(Error::invalid("draft tokens must be at least 1"));
        }
        if min_n == 0 || min_n > max_n {
            return Err(Error::invalid(format!(
                "prompt lookup n-gram sizes must satisfy 1 <= min <= max, got min {min_n}, max {max_n}"
            )));
        }
        Ok(NgramConfig {
            draft_tokens,
            min_n,
            max_n,
        })
    }
}

/// Prompt lookup: finds the most recent earlier occurrence of the sequence's last `n` tokens (`n`
/// from `max_n` down to `min_n`) and proposes the tokens that followed it. Where that continuation
/// runs into the end of the sequence it goes on with its own tokens: a sequence repeating itself
/// with period `p` is predicted to keep doing so.
#[derive(Clone, Debug)]
pub struct NgramProposer {
    config: NgramConfig,
}

impl NgramProposer {
    /// A proposer with `config`.
    pub fn new(config: NgramConfig) -> Self {
        NgramProposer { config }
    }

    /// Where the most recent earlier occurrence of the last `n` tokens starts.
    fn find(tokens: &[u32], n: usize) -> Option<usize> {
        let len = tokens.len();
        if n == 0 || n >= len {
            return None;
        }
        let suffix = &tokens[len - n..];
        // The scan is linear in the sequence per step, like vLLM's; the first-token check rejects
        // almost every start at once.
        (0..len - n)
            .rev()
            .find(|&i| tokens[i] == suffix[0] && tokens[i..i + n] == *suffix)
    }
}

impl DraftProposer for NgramProposer {
    fn propose(&mut self, tokens: &[u32], max: usize) -> Vec<u32> {
        let max = max.min(self.config.draft_tokens);
        if max == 0 {
            return Vec::new();
        }
        let len = tokens.len();
        for n in (self.config.min_n..=self.config.max_n).rev() {
            let Some(start) = Self::find(tokens, n) else {
                continue;
            };
            let mut draft = Vec::with_capacity(max);
            for j in 0..max {
                // start + n < len, so a source past the end is a draft token already chosen.
                let src = start + n + j;
                let tok = match tokens.get(src) {
                    Some(&t) => t,
                    None => match draft.get(src - len) {
                        Some(&t) => t,
                        None => break,
                    },
                };
                draft.push(tok);
            }
            return draft;
        }
        Vec::new()
    }
}

/// How many leading draft tokens the target's samples agree with: `samples[j]` is the target's
/// token after the draft's first `j` tokens, so draft token `j` stands while `samples[j] == draft[j]`.
pub(crate) fn accepted_len(draft: &[u32], samples: &[u32]) -> usize {
    draft
        .iter()
        .zip(samples)
        .take_while(|(d, s)| d == s)
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ngram(k: usize, min_n: usize, max_n: usize) -> NgramProposer {
        NgramProposer::new(NgramConfig::new(k, min_n, max_n).unwrap())
    }

    #[test]
    fn proposes_what_followed_the_most_recent_match() {
        let mut p = ngram(3, 1, 3);
        // "1 2 3" occurs at 0 and 5; the most recent earlier occurrence of the suffix "2 3" is at 6.
        let toks = [1, 2, 3, 9, 9, 1, 2, 3, 7, 8, 4, 2, 3];
        assert_eq!(p.propose(&toks, 3), [7, 8, 4]);
        assert_eq!(p.propose(&toks, 2), [7, 8]);
        assert_eq!(p.propose(&toks, 0), Vec::<u32>::new());
        // The longest n wins over a more recent shorter match: "5 6" matches at 0 ("5 6 1"), "6"
        // alone more recently at 4 ("6 2").
        let toks = [5, 6, 1, 0, 6, 2, 0, 5, 6];
        assert_eq!(ngram(1, 1, 2).propose(&toks, 1), [1]);
        assert_eq!(ngram(1, 1, 1).propose(&toks, 1), [2]);
    }

    #[test]
    fn no_match_no_draft() {
        let mut p = ngram(4, 2, 3);
        assert!(p.propose(&[1, 2, 3, 4, 5], 4).is_empty());
        // Only single-token matches, below min_n.
        assert!(p.propose(&[1, 2, 3, 1, 4, 3], 4).is_empty());
        assert!(p.propose(&[], 4).is_empty());
        assert!(p.propose(&[7], 4).is_empty());
        assert!(p.propose(&[7, 7], 4).is_empty()); // n = 2 needs 3 tokens
    }

    #[test]
    fn a_repeating_sequence_is_continued_periodically() {
        let mut p = ngram(7, 1, 4);
        // Period 3: the match of "2 3 1 2" is at 1; its continuation runs into the end and
        // continues with the drafted tokens.
        let toks = [1, 2, 3, 1, 2, 3, 1, 2];
        assert_eq!(p.propose(&toks, 7), [3, 1, 2, 3, 1, 2, 3]);
        // A run of one token.
        assert_eq!(p.propose(&[4, 9, 9, 9], 5), [9, 9, 9, 9, 9]);
        // The config caps the draft.
        assert_eq!(ngram(2, 1, 4).propose(&toks, 7), [3, 1]);
    }

    #[test]
    fn config_is_checked() {
        assert!(NgramConfig::new(0, 1, 2).is_err());
        assert!(NgramConfig::new(4, 0, 2).is_err());
        let e = NgramConfig::new(4, 3, 2).unwrap_err().to_string();
        assert!(e.contains("min 3, max 2"), "{e}");
        let s = Speculative::Ngram(NgramConfig::new(4, 1, 3).unwrap());
        assert_eq!(s.draft_tokens(), 4);
        assert_eq!(s.logit_rows(16, 512), 80);
        assert_eq!(s.logit_rows(16, 40), 40);
        assert_eq!(s.logit_rows(16, 8), 16);
        assert_eq!(Speculative::Off.logit_rows(16, 512), 16);
        assert!(Speculative::Off.proposer().is_none());
    }

    #[test]
    fn accepted_prefix() {
        assert_eq!(accepted_len(&[], &[5]), 0);
        assert_eq!(accepted_len(&[1, 2, 3], &[1, 2, 3, 4]), 3);
        assert_eq!(accepted_len(&[1, 2, 3], &[1, 9, 3, 4]), 1);
        assert_eq!(accepted_len(&[1, 2, 3], &[0, 2, 3, 4]), 0);
    }
}
