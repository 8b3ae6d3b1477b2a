//! MXFP4 (OCP microscaling, E2M1 codes, one E8M0 scale per 32 elements; spec §2a, §3.4).
//!
//! Quantization follows llama.cpp's `quantize_row_mxfp4_ref` exactly (so a GGUF we write from dense
//! experts is byte-identical to one llama.cpp would write): `e = floor(log2(amax)) - 2 + 127` (the OCP
//! rule, scale `2^(floor(log2 amax) - 2)`, so the largest code 6 covers `1.5·2^floor(log2 amax)` and
//! larger magnitudes clip to ±6·scale), and each element takes the nearest code, ties going to the
//! lower code index (the smaller magnitude; +0 before -0). triton_kernels' `downcast_to_mxfp`
//! instead rounds the scale up (`amax / 6` to the next power of two, no clipping); we follow llama.cpp.
//! llama.cpp casts an out-of-range exponent with undefined behaviour; here it is clamped to 0..=254.

use crate::tensor::{
    DType, Lut4Scales, NibbleOrder, QuantTensor, ScaleFormat, TensorFormat, E2M1_VALUES,
};

/// Elements per MXFP4 block.
pub const BLOCK: usize = 32;

/// ggml's doubled E2M1 values (`kvalues_mxfp4`), used with the halved scale `2^(e - 128)`.
const KVALUES: [i8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];

/// `2^(e - 128)` (ggml's `E8M0_TO_FP32_HALF`), exact for every byte.
fn e8m0_half(e: u8) -> f32 {
    if e < 2 {
        f32::from_bits(0x0020_0000 << e)
    } else {
        f32::from_bits(((e as u32) - 1) << 23)
    }
}

/// One quantized block: the E8M0 scale byte and the 32 codes in element order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Block {
    /// E8M0 scale byte: `2^(e - 127)`.
    pub e: u8,
    /// E2M1 code of each element (bit 3 = sign).
    pub codes: [u8; BLOCK],
}

impl Block {
    /// The block in ggml's `block_mxfp4` layout: `[e][qs0..qs15]`, `qs[j] = code(j) | code(j+16) << 4`.
    pub fn push_ggml(&self, out: &mut Vec<u8>) {
        out.push(self.e);
        out.extend((0..BLOCK / 2).map(|j| self.codes[j] | (self.codes[j + BLOCK / 2] << 4)));
    }

    /// The 16 code bytes in HF/OpenAI order: byte `b` = `code(2b) | code(2b+1) << 4`.
    pub fn push_hf_codes(&self, out: &mut Vec<u8>) {
        out.extend((0..BLOCK / 2).map(|b| self.codes[2 * b] | (self.codes[2 * b + 1] << 4)));
    }
}

/// Quantizes 32 values as llama.cpp's `quantize_row_mxfp4_ref` does (see the module doc).
pub fn quantize_block(x: &[f32; BLOCK]) -> Block {
    let mut amax = 0f32;
    for v in x {
        // `amax < |v|` as ggml writes it: NaN never wins.
        if amax < v.abs() {
            amax = v.abs();
        }
    }
    let e = if amax > 0.0 {
        (amax.log2().floor() - 2.0 + 127.0).clamp(0.0, 254.0) as u8
    } else {
        0
    };
    let d = e8m0_half(e);
    let mut codes = [0u8; BLOCK];
    for (c, &v) in codes.iter_mut().zip(x) {
        let mut best = 0u8;
        let mut best_err = (KVALUES[0] as f32 * d - v).abs();
        for (i, &k) in KVALUES.iter().enumerate().skip(1) {
            let err = (k as f32 * d - v).abs();
            if err < best_err {
                best = i as u8;
                best_err = err;
            }
        }
        *c = best;
    }
    Block { e, codes }
}

/// Quantizes a row (length a multiple of 32) into ggml `block_mxfp4`s appended to `out`.
pub fn quantize_row_ggml(x: &[f32], out: &mut Vec<u8>) {
    for chunk in x.chunks_exact(BLOCK) {
        let mut b = [0f32; BLOCK];
        b.copy_from_slice(chunk);
        quantize_block(&b).push_ggml(out);
    }
}

/// True when `t` holds MXFP4 values (E2M1 codes, E8M0 scales per 32) in any nibble/scale layout.
pub fn is_mxfp4(t: &QuantTensor) -> bool {
    match &t.format {
        TensorFormat::Lut4(l) => {
            let scale = match &l.scales {
                Lut4Scales::Separate { format, .. } | Lut4Scales::Inline { format } => *format,
            };
            l.table == E2M1_VALUES
                && l.block_elems == BLOCK
                && scale == ScaleFormat::E8M0
                && l.round_to != DType::F16
        }
        _ => false,
    }
}

/// Block `block` (flat block index) of an MXFP4 tensor, whatever its layout; `None` when `t` is not
/// MXFP4 or its bytes are too short.
pub fn read_block(t: &QuantTensor, block: usize) -> Option<Block> {
    let TensorFormat::Lut4(l) = &t.format else {
        return None;
    };
    if !is_mxfp4(t) {
        return None;
    }
    let data = t.data.bytes();
    let (e, bytes) = match &l.scales {
        Lut4Scales::Separate { data: scales, .. } => (
            *scales.bytes().get(block)?,
            data.get(block * 16..block * 16 + 16)?,
        ),
        Lut4Scales::Inline { .. } => {
            let at = block * 17;
            (*data.get(at)?, data.get(at + 1..at + 17)?)
        }
    };
    let mut codes = [0u8; BLOCK];
    for (k, c) in codes.iter_mut().enumerate() {
        *c = match l.nibbles {
            NibbleOrder::LowFirst => (bytes[k / 2] >> (4 * (k % 2))) & 0x0F,
            NibbleOrder::HighFirst => (bytes[k / 2] >> (4 * (1 - k % 2))) & 0x0F,
            NibbleOrder::SplitHalves => (bytes[k % 16] >> (4 * (k / 16))) & 0x0F,
        };
    }
    Some(Block { e, codes })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::e8m0_to_f32;

    fn decode(b: &Block) -> Vec<f32> {
        b.codes
            .iter()
            .map(|&c| E2M1_VALUES[c as usize] * e8m0_to_f32(b.e))
            .collect()
    }

    #[test]
    fn e8m0_half_is_half_of_e8m0() {
        for e in 0..=254u8 {
            assert_eq!(e8m0_half(e) * 2.0, e8m0_to_f32(e), "e = {e}");
        }
    }

    #[test]
    fn representable_values_round_trip_exactly() {
        // amax 6 → e = floor(log2 6) - 2 + 127 = 127, scale 1: every E2M1 value is exact.
        let mut x = [0f32; BLOCK];
        for (i, v) in x.iter_mut().enumerate() {
            *v = E2M1_VALUES[i % 16];
        }
        x[7] = 6.0;
        let b = quantize_block(&x);
        assert_eq!(b.e, 127);
        let back = decode(&b);
        for (a, w) in back.iter().zip(&x) {
            assert_eq!(a, w);
        }
        // -0.0 quantizes to code 0 (+0 comes first), as ggml's search order gives.
        assert_eq!(b.codes[8], 0);
    }

    #[test]
    fn scale_rule_ties_and_clipping_follow_llamacpp() {
        let mut x = [0f32; BLOCK];
        x[0] = 7.9; // amax: floor(log2 7.9) = 2 → e = 127, scale 1; 7.9 clips to code 7 (6.0)
        x[1] = 1.25; // tie between 1.0 (code 2) and 1.5 (code 3): lower index wins
        x[2] = -1.25; // tie between -1.0 (code 10) and -1.5 (code 11): code 10
        x[3] = 0.2; // nearest 0 → code 0
        x[4] = -0.3; // nearest -0.5 → code 9
        x[5] = 5.0; // tie between 4 (code 6) and 6 (code 7): code 6
        let b = quantize_block(&x);
        assert_eq!(b.e, 127);
        assert_eq!(&b.codes[..6], &[7, 2, 10, 0, 9, 6]);
        assert_eq!(
            quantize_block(&[0.0; BLOCK]),
            Block {
                e: 0,
                codes: [0; BLOCK]
            }
        );
        // amax 0.75: floor(log2) = -1 → e = 124, scale 1/8; 0.75 = 6/8 → code 7.
        let mut y = [0f32; BLOCK];
        y[31] = -0.75;
        let b = quantize_block(&y);
        assert_eq!((b.e, b.codes[31]), (124, 15));
    }

    #[test]
    fn layouts_pack_the_same_codes() {
        let mut codes = [0u8; BLOCK];
        for (k, c) in codes.iter_mut().enumerate() {
            *c = (k * 7 % 16) as u8;
        }
        let b = Block { e: 130, codes };
        let (mut g, mut h) = (Vec::new(), Vec::new());
        b.push_ggml(&mut g);
        b.push_hf_codes(&mut h);
        let as_tensor = |bytes: Vec<u8>, nibbles, scales| QuantTensor {
            shape: vec![1, 32],
            format: TensorFormat::Lut4(crate::tensor::Lut4 {
                table: E2M1_VALUES,
                block_elems: 32,
                nibbles,
                scales,
                round_to: DType::F32,
            }),
            data: crate::tensor::Storage::owned(bytes),
        };
        let ggml = as_tensor(
            g,
            NibbleOrder::SplitHalves,
            Lut4Scales::Inline {
                format: ScaleFormat::E8M0,
            },
        );
        let hf = as_tensor(
            h,
            NibbleOrder::LowFirst,
            Lut4Scales::Separate {
                format: ScaleFormat::E8M0,
                data: crate::tensor::Storage::owned(vec![130]),
            },
        );
        assert_eq!(read_block(&ggml, 0), Some(b));
        assert_eq!(read_block(&hf, 0), Some(b));
        assert_eq!(ggml.to_f32_vec(), hf.to_f32_vec());
        assert_eq!(read_block(&hf, 1), None);
    }
}
