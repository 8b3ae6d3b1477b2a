//! The GGUF container parser (header, typed metadata, tensor infos) on arbitrary bytes: it must return
//! a header or an error, never panic, and never allocate past what the bytes can hold.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = gptoss_formats::gguf::container::parse(data, std::path::Path::new("fuzz.gguf"));
});
