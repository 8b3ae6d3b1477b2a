//! Quantizers for writing checkpoints (the decoders live in `tensor`): f32 → MXFP4 blocks as
//! llama.cpp's reference quantizer makes them, and reading the (scale, codes) of any MXFP4 tensor
//! whatever its stored nibble and scale layout.

pub mod mxfp4;
