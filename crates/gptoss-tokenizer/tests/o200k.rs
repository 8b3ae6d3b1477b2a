//! o200k_harmony against tiktoken 0.14 goldens (tests/fixtures/harmony/encode.json) and tiktoken-rs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use gptoss_tokenizer::{StreamDecoder, Tokenizer, O200K_HARMONY_VOCAB_SIZE};

#[test]
fn encodes_exactly_like_tiktoken() {
    let tok = Tokenizer::o200k_harmony().unwrap();
    let golden = common::load("encode.json");
    assert_eq!(tok.vocab_size() as u64, golden["n_vocab"].as_u64().unwrap());
    assert_eq!(tok.vocab_size() as u32, O200K_HARMONY_VOCAB_SIZE);
    for case in golden["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let want = common::ids(&case["ids"]);
        assert_eq!(tok.encode(text).unwrap(), want, "text {text:?}");
        assert_eq!(tok.decode(&want).unwrap(), text, "decode of {text:?}");
    }
    for (name, id) in golden["specials"].as_object().unwrap() {
        assert_eq!(
            tok.special_id(name).unwrap() as u64,
            id.as_u64().unwrap(),
            "{name}"
        );
        assert!(tok.is_special(id.as_u64().unwrap() as u32));
    }
}

#[test]
fn specials_in_text_stay_text_and_unknown_names_fail() {
    let tok = Tokenizer::o200k_harmony().unwrap();
    let ids = tok.encode("<|start|>").unwrap();
    assert!(ids.len() > 1 && ids.iter().all(|&i| !tok.is_special(i)));
    assert!(tok.special_id("<|nope|>").is_err());
    assert!(tok.decode(&[O200K_HARMONY_VOCAB_SIZE]).is_err());
    assert_eq!(
        tok.decode(&[200006, 200008]).unwrap(),
        "<|start|><|message|>"
    );
}

#[test]
fn agrees_with_tiktoken_rs_on_generated_text() {
    let tok = Tokenizer::o200k_harmony().unwrap();
    let reference = tiktoken_rs::o200k_harmony().unwrap();
    let alphabet: Vec<char> = "ab cdeTHE  xyz\n\t\r0123456789'sllve.,!?-/()é日本🙂\u{301}ΑΩЖ  "
        .chars()
        .collect();
    let mut state = 0x2545_f491_u64;
    for len in 1..400 {
        let text: String = (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                alphabet[(state % alphabet.len() as u64) as usize]
            })
            .collect();
        assert_eq!(
            tok.encode(&text).unwrap(),
            reference.encode_ordinary(&text),
            "text {text:?}"
        );
    }
}

#[test]
fn stream_decoder_rebuilds_text_token_by_token() {
    let tok = Tokenizer::o200k_harmony().unwrap();
    let text = "emoji 🙂👍🏽🇺🇸 family 👨‍👩‍👧 日本語 x²";
    let ids = tok.encode(text).unwrap();
    let mut dec = StreamDecoder::new();
    let mut out = String::new();
    let mut held_back = false;
    for &id in &ids {
        let piece = dec.push(&tok, id).unwrap();
        held_back |= piece.is_empty();
        out.push_str(&piece);
    }
    out.push_str(&dec.finish());
    assert_eq!(out, text);
    assert!(held_back, "some emoji should span several tokens");
}
