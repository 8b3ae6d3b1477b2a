//! The safetensors header reader (length prefix, JSON entries, offsets and sizes checked against the
//! bytes) on arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = gptoss_formats::st::parse_header(data);
});
