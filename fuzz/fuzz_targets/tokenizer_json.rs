//! tokenizer.json loading on arbitrary bytes; a tokenizer that loads must encode and decode text
//! without panicking, and decoding its encoding must give the text back (byte-level BPE loses nothing).
#![no_main]

use gptoss_tokenizer::Tokenizer;
use libfuzzer_sys::fuzz_target;

const TEXTS: [&str; 3] = ["Hello, world! 123", "  \t\nünï 日本 ", "a"];

fuzz_target!(|data: &[u8]| {
    let Ok(tok) = Tokenizer::from_tokenizer_json_bytes(data, std::path::Path::new("fuzz.json"))
    else {
        return;
    };
    for text in TEXTS {
        let mut ids = Vec::new();
        if tok.encode_capped(text, &mut ids, 4096).is_ok() {
            let back = tok.decode_bytes(&ids).expect("encoded ids decode");
            assert_eq!(back, text.as_bytes());
        }
    }
});
