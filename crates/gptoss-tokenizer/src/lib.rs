//! gpt-oss text I/O: the o200k_harmony byte-level BPE tokenizer and the Harmony chat format.
//!
//! What it does: [`Tokenizer`] encodes text with the o200k pre-tokenizer regex and byte-level BPE and
//! decodes ids back (streaming, UTF-8 safe, via [`StreamDecoder`]). It is built from tiktoken-rs's
//! bundled vocabulary ([`Tokenizer::o200k_harmony`]), from a Hugging Face `tokenizer.json`
//! ([`Tokenizer::from_tokenizer_json`]) or from plain vocabulary data such as a GGUF file embeds
//! ([`Vocab::from_gguf`] + [`Tokenizer::from_vocab`]). [`harmony::Harmony`] renders conversations
//! (system, developer instructions and function tools, user, assistant, tool results) to ids exactly as
//! openai-harmony does, and [`harmony::StreamParser`] turns sampled ids into reasoning / answer /
//! preamble / tool-call events.
//!
//! What it must not know: checkpoints and file formats of weights (the caller converts its GGUF
//! vocabulary into a [`Vocab`]), and anything about compute.
//!
//! Key decisions: special tokens are looked up by name, never assumed to sit at fixed ids (the test
//! models put them elsewhere), and encoding text never yields a special token: specials are inserted as
//! ids by the renderer. One BPE core serves every source: tiktoken semantics (rank == id, merge by the
//! rank of the concatenation) for o200k, merge-list order for `tokenizer.json`/GGUF vocabularies.
//!
//! ```
//! use std::sync::Arc;
//! use gptoss_tokenizer::harmony::{Effort, Harmony, ParseEvent, ParserStart, Role, Strictness, StreamParser};
//! use gptoss_tokenizer::Tokenizer;
//!
//! let tok = Arc::new(Tokenizer::o200k_harmony()?);
//! assert_eq!(tok.special_id("<|start|>")?, 200006);
//! let ids = tok.encode("Hello world")?;
//! assert_eq!(tok.decode(&ids)?, "Hello world");
//!
//! let harmony = Harmony::new(tok.clone())?;
//! let prompt = harmony.render_chat_prompt(Some("Answer briefly."), "What is 2+2?", Effort::Low)?;
//! assert_eq!(&prompt[prompt.len() - 2..], &[200006, tok.encode("assistant")?[0]]);
//!
//! // Parse what the model samples after `<|start|>assistant`.
//! let mut parser = StreamParser::new(harmony.clone(), ParserStart::Header(Role::Assistant), Strictness::Strict);
//! let mut sampled = vec![tok.special_id("<|channel|>")?];
//! sampled.extend(tok.encode("final")?);
//! sampled.push(tok.special_id("<|message|>")?);
//! sampled.extend(tok.encode("4")?);
//! sampled.push(tok.special_id("<|return|>")?);
//! let mut answer = String::new();
//! for id in sampled {
//!     for event in parser.push(id)? {
//!         if let ParseEvent::Final(text) = event {
//!             answer.push_str(&text);
//!         }
//!     }
//! }
//! assert_eq!(answer, "4");
//! assert!(harmony.stop_tokens().contains(&tok.special_id("<|return|>")?));
//! # Ok::<(), gptoss_tokenizer::Error>(())
//! ```
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
#![deny(missing_docs)]

mod bpe;
mod bytes;
mod error;
pub mod harmony;
mod hf;
mod o200k;
mod stream;
mod tokenizer;
mod vocab;

pub use bytes::byte_to_char_table;
pub use error::{Error, Result};
pub use o200k::O200K_HARMONY_VOCAB_SIZE;
pub use stream::StreamDecoder;
pub use tokenizer::{TokenKind, Tokenizer, WholePiece, O200K_PATTERN};
pub use vocab::Vocab;
