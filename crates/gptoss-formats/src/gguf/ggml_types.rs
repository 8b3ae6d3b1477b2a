//! ggml tensor types: the numeric ids GGUF stores, their names and block geometry (spec §3.6).
//! Only the types gptoss can read are variants; any other id is kept as a number for the error.

/// A ggml tensor type that gptoss understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GgmlType {
    /// IEEE binary32.
    F32,
    /// IEEE binary16.
    F16,
    /// bfloat16.
    BF16,
    /// 32-blocks: f16 scale, 4-bit codes minus 8.
    Q4_0,
    /// 32-blocks: f16 scale and min, 4-bit codes.
    Q4_1,
    /// 32-blocks: f16 scale, 5-bit codes minus 16.
    Q5_0,
    /// 32-blocks: f16 scale and min, 5-bit codes.
    Q5_1,
    /// 32-blocks: f16 scale, int8 codes.
    Q8_0,
    /// 256-superblocks, 2-bit codes.
    Q2K,
    /// 256-superblocks, 3-bit codes.
    Q3K,
    /// 256-superblocks, 4-bit codes.
    Q4K,
    /// 256-superblocks, 5-bit codes.
    Q5K,
    /// 256-superblocks, 6-bit codes.
    Q6K,
    /// 32-blocks: f16 scale, 4-bit codes into a non-linear table.
    IQ4NL,
    /// 256-superblocks of IQ4_NL codes with 6-bit sub-block scales.
    IQ4XS,
    /// 32-blocks: E8M0 scale, FP4 E2M1 codes (OCP microscaling).
    MXFP4,
}

/// Every type this reader handles, for lookups and tests.
pub const ALL_TYPES: [GgmlType; 16] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q2K,
    GgmlType::Q3K,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
    GgmlType::IQ4NL,
    GgmlType::IQ4XS,
    GgmlType::MXFP4,
];

/// Super-block size of the K-quants.
pub const QK_K: usize = 256;

impl GgmlType {
    /// The id GGUF stores (ggml's `enum ggml_type`).
    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q5_0 => 6,
            GgmlType::Q5_1 => 7,
            GgmlType::Q8_0 => 8,
            GgmlType::Q2K => 10,
            GgmlType::Q3K => 11,
            GgmlType::Q4K => 12,
            GgmlType::Q5K => 13,
            GgmlType::Q6K => 14,
            GgmlType::IQ4NL => 20,
            GgmlType::IQ4XS => 23,
            GgmlType::BF16 => 30,
            GgmlType::MXFP4 => 39,
        }
    }

    /// The type with this id, if gptoss reads it.
    pub fn from_id(id: u32) -> Option<Self> {
        ALL_TYPES.iter().copied().find(|t| t.id() == id)
    }

    /// ggml's name for the type (`Q4_K`, `MXFP4`, ...).
    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::BF16 => "BF16",
            GgmlType::Q4_0 => "Q4_0",
            GgmlType::Q4_1 => "Q4_1",
            GgmlType::Q5_0 => "Q5_0",
            GgmlType::Q5_1 => "Q5_1",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::Q2K => "Q2_K",
            GgmlType::Q3K => "Q3_K",
            GgmlType::Q4K => "Q4_K",
            GgmlType::Q5K => "Q5_K",
            GgmlType::Q6K => "Q6_K",
            GgmlType::IQ4NL => "IQ4_NL",
            GgmlType::IQ4XS => "IQ4_XS",
            GgmlType::MXFP4 => "MXFP4",
        }
    }

    /// Elements per block (1 for plain floats).
    pub fn block_elems(self) -> usize {
        match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => 1,
            GgmlType::Q4_0
            | GgmlType::Q4_1
            | GgmlType::Q5_0
            | GgmlType::Q5_1
            | GgmlType::Q8_0
            | GgmlType::IQ4NL
            | GgmlType::MXFP4 => 32,
            GgmlType::Q2K
            | GgmlType::Q3K
            | GgmlType::Q4K
            | GgmlType::Q5K
            | GgmlType::Q6K
            | GgmlType::IQ4XS => QK_K,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 | GgmlType::BF16 => 2,
            GgmlType::Q4_0 | GgmlType::IQ4NL => 18,
            GgmlType::Q4_1 => 20,
            GgmlType::Q5_0 => 22,
            GgmlType::Q5_1 => 24,
            GgmlType::Q8_0 => 34,
            GgmlType::MXFP4 => 17,
            GgmlType::Q2K => 84,
            GgmlType::Q3K => 110,
            GgmlType::Q4K => 144,
            GgmlType::Q5K => 176,
            GgmlType::Q6K => 210,
            GgmlType::IQ4XS => 136,
        }
    }

    /// Bytes of a row of `row_len` elements, or `None` when `row_len` is not a whole number of blocks.
    pub fn row_bytes(self, row_len: usize) -> Option<usize> {
        row_len
            .is_multiple_of(self.block_elems())
            .then(|| row_len / self.block_elems() * self.block_bytes())
    }
}

/// ggml's name for a type id gptoss does not read (for error messages), or `None` if ggml has none.
pub fn other_type_name(id: u32) -> Option<&'static str> {
    Some(match id {
        9 => "Q8_1",
        15 => "Q8_K",
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        21 => "IQ3_S",
        22 => "IQ2_S",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        34 => "TQ1_0",
        35 => "TQ2_0",
        40 => "NVFP4",
        41 => "Q1_0",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_are_unique() {
        for t in ALL_TYPES {
            assert_eq!(GgmlType::from_id(t.id()), Some(t));
            assert!(other_type_name(t.id()).is_none(), "{}", t.name());
        }
        assert_eq!(GgmlType::from_id(39), Some(GgmlType::MXFP4));
        assert_eq!(GgmlType::from_id(16), None);
    }

    #[test]
    fn block_bytes_match_ggml_sizes() {
        // ggml-common.h static_asserts: sizes per block.
        assert_eq!(GgmlType::Q2K.block_bytes(), 2 + 2 + 256 / 16 + 256 / 4);
        assert_eq!(GgmlType::Q3K.block_bytes(), 2 + 256 / 4 + 256 / 8 + 12);
        assert_eq!(GgmlType::Q4K.block_bytes(), 2 + 2 + 12 + 256 / 2);
        assert_eq!(GgmlType::Q5K.block_bytes(), 2 + 2 + 12 + 256 / 8 + 256 / 2);
        assert_eq!(
            GgmlType::Q6K.block_bytes(),
            2 + 256 / 2 + 256 / 4 + 256 / 16
        );
        assert_eq!(GgmlType::IQ4XS.block_bytes(), 2 + 2 + 256 / 64 + 256 / 2);
        assert_eq!(GgmlType::Q8_0.row_bytes(2880), Some(90 * 34));
        assert_eq!(GgmlType::Q4K.row_bytes(2880), None);
    }
}
