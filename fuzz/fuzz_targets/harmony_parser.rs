//! The Harmony streaming parser (strict and lenient) on arbitrary token sequences of o200k_harmony,
//! starting after `<|start|>assistant` as the server does and before a `<|start|>`; then `finish`.
//! Neither may panic; a lenient parser never fails (what it cannot parse comes back as unparsed text,
//! which the server returns as content), a strict one stops at its first error.
#![no_main]

use std::sync::{Arc, OnceLock};

use gptoss_tokenizer::harmony::{Harmony, ParserStart, Role, StreamParser, Strictness};
use gptoss_tokenizer::Tokenizer;
use libfuzzer_sys::fuzz_target;

fn harmony() -> &'static Harmony {
    static H: OnceLock<Harmony> = OnceLock::new();
    H.get_or_init(|| {
        let tok = Tokenizer::o200k_harmony().expect("o200k_harmony");
        Harmony::new(Arc::new(tok)).expect("harmony tokens")
    })
}

fuzz_target!(|data: &[u8]| {
    let h = harmony();
    // Three bytes per token: ids over the whole vocabulary and a little past it (ids outside it).
    let ids: Vec<u32> = data
        .chunks_exact(3)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2] & 0x03, 0]) % 201_100)
        .collect();
    for start in [
        ParserStart::Header(Role::Assistant),
        ParserStart::ExpectStart,
    ] {
        for strictness in [Strictness::Strict, Strictness::Lenient] {
            let mut p = StreamParser::new(h.clone(), start, strictness);
            let mut failed = false;
            for &id in &ids {
                let pushed = p.push(id);
                assert!(pushed.is_ok() || strictness == Strictness::Strict);
                if pushed.is_err() {
                    failed = true;
                    break;
                }
            }
            if !failed {
                let finished = p.finish();
                assert!(finished.is_ok() || strictness == Strictness::Strict);
            }
        }
    }
});
