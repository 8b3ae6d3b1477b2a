//! GPT-2's byte-to-unicode alphabet: byte-level BPE vocabularies (HF `tokenizer.json`, GGUF `gpt2`)
//! store each token as a string of printable characters, one character per byte.

/// The character standing for each byte: printable Latin-1 bytes map to themselves, the other 68 bytes
/// to U+0100.. in byte order (the table of GPT-2's `bytes_to_unicode`).
pub fn byte_to_char_table() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next_extra = 0u32;
    for (b, slot) in table.iter_mut().enumerate() {
        let printable =
            (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
        let code = if printable {
            b as u32
        } else {
            next_extra += 1;
            0xFF + next_extra
        };
        *slot = char::from_u32(code).unwrap_or('\0');
    }
    table
}

/// Inverse of [`byte_to_char_table`]: maps a vocabulary string back to its bytes.
pub(crate) struct ByteDecoder {
    /// Byte for code points 0..=0x143 (all that the alphabet uses); `None` for characters outside it.
    byte_of: Vec<Option<u8>>,
}

impl ByteDecoder {
    /// Builds the inverse table.
    pub(crate) fn new() -> Self {
        let mut byte_of = vec![None; 0x144];
        for (b, c) in byte_to_char_table().iter().enumerate() {
            if let Some(slot) = byte_of.get_mut(*c as usize) {
                *slot = u8::try_from(b).ok();
            }
        }
        Self { byte_of }
    }

    /// The bytes a byte-level token string stands for, or the first character outside the alphabet.
    pub(crate) fn decode(&self, token: &str) -> Result<Vec<u8>, char> {
        token
            .chars()
            .map(|c| self.byte_of.get(c as usize).copied().flatten().ok_or(c))
            .collect()
    }
}

/// Encodes bytes into the byte-level alphabet (used by tests and by merges given as byte strings).
#[cfg(test)]
pub(crate) fn encode_bytes(bytes: &[u8]) -> String {
    let table = byte_to_char_table();
    bytes.iter().map(|&b| table[b as usize]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alphabet_matches_gpt2() {
        let table = byte_to_char_table();
        assert_eq!(table[b'a' as usize], 'a');
        assert_eq!(table[b' ' as usize], 'Ġ'); // U+0120
        assert_eq!(table[b'\n' as usize], 'Ċ'); // U+010A
        assert_eq!(table[0], 'Ā'); // U+0100
        assert_eq!(table[0xAD], '\u{143}'); // the last extra
        let dec = ByteDecoder::new();
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(dec.decode(&encode_bytes(&all)), Ok(all));
        assert_eq!(dec.decode("a€"), Err('€'));
    }
}
