// repack.cu — ggml blocks rewritten at upload into the packed layout of common.cu (src/weights.rs), byte for
//   byte what the host repack (src/repack.rs) makes of them:
//   Q8_0 (34 bytes: f16 scale, 32 int8 codes) → 32 code bytes + the scale's 2 bytes;
//   ggml MXFP4 (17 bytes: E8M0 scale, 16 code bytes) → 16 code bytes + the scale byte;
//   Q4_0 / IQ4_NL (18 bytes: f16 scale, 16 code bytes) → 16 code bytes + the scale as an f32.
//   ggml stores 4-bit codes in split halves (element j < 16 in the low nibble of byte j, element j >= 16 in the
//   high nibble of byte j - 16); the output is low nibble first (element 2b low, 2b+1 high in byte b).
// Layout: src = a chunk's raw blocks in the upload scratch, in output order, or (half_rows > 0) half_rows gate
//   rows then half_rows up rows of one expert's gate_up, whose output rows alternate gate, up (the canonical
//   interleave); codes / scales point at the chunk's first output block; rows hold row_blocks blocks.
// Grid: one thread per output block, 256 per CTA. Entry points: repack_q8_0, repack_lut4_e8m0,
//   repack_lut4_f16. Minimum arch: sm_80. Launched from src/ops/repack.rs.
struct RepackParams {
    const u8* src;
    u8* codes;
    u8* scales;
    int blocks;
    int row_blocks;
    int half_rows;
};

#define RF_Q8_0 0
#define RF_LUT4_E8M0 1
#define RF_LUT4_F16 2

// The staged block that output block o is made from (32-bit: a chunk is at most one staging buffer).
static __device__ __forceinline__ u32 source_block(const RepackParams& p, u32 o) {
    if (p.half_rows == 0) return o;
    u32 rb = (u32)p.row_blocks;
    u32 r = o / rb, c = o - r * rb;
    u32 sr = (r & 1u) ? (u32)p.half_rows + (r >> 1) : (r >> 1);
    return sr * rb + c;
}

// 16 split-halves code bytes → low nibble first: output byte i holds elements 2i and 2i+1, i.e. the low
// nibbles of s[2i] and s[2i+1] for i < 8, their high nibbles for byte 8 + i (split_halves_32 in repack.rs).
static __device__ __forceinline__ uint4 split_halves_low_first(const u8* s) {
    u32 w[4] = {0u, 0u, 0u, 0u};
    #pragma unroll
    for (int i = 0; i < 8; i++) {
        u32 a = s[2 * i], b = s[2 * i + 1];
        w[i / 4] |= ((a & 0x0fu) | ((b & 0x0fu) << 4)) << (8 * (i % 4));
        w[2 + i / 4] |= ((a >> 4) | (b & 0xf0u)) << (8 * (i % 4));
    }
    return make_uint4(w[0], w[1], w[2], w[3]);
}

// The f32 bits of f16 bits h, as the host's half::f16::to_f32: exact, NaNs quieted with their payload kept
// (integer arithmetic, so no conversion instruction's NaN rule applies).
static __device__ __forceinline__ u32 f16_bits_to_f32_bits(u32 h) {
    u32 sign = (h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0x1fu) return sign | 0x7f800000u | (m != 0u ? 0x400000u | (m << 13) : 0u);
    if (e != 0u) return sign | ((e + 112u) << 23) | (m << 13);
    // Zero or subnormal: m · 2^-24, exact in f32 (a normal number there).
    return sign | __float_as_uint((float)m * 5.9604644775390625e-8f);
}

template <int F>
static __device__ __forceinline__ void repack_impl(const RepackParams& p) {
    u32 o = blockIdx.x * blockDim.x + threadIdx.x;
    if (o >= (u32)p.blocks) return;
    u32 s = source_block(p, o);
    if constexpr (F == RF_Q8_0) {
        // Blocks of 34 bytes are 2-byte aligned: 17 u16 loads, two 16-byte stores.
        const u16* b = (const u16*)(p.src + (u64)s * 34u);
        u32 w[8];
        #pragma unroll
        for (int i = 0; i < 8; i++) w[i] = (u32)b[1 + 2 * i] | ((u32)b[2 + 2 * i] << 16);
        uint4* c = (uint4*)(p.codes + (u64)o * 32u);
        c[0] = make_uint4(w[0], w[1], w[2], w[3]);
        c[1] = make_uint4(w[4], w[5], w[6], w[7]);
        ((u16*)p.scales)[o] = b[0];
    } else {
        constexpr u32 scale_bytes = F == RF_LUT4_E8M0 ? 1u : 2u;
        const u8* b = p.src + (u64)s * (16u + scale_bytes);
        *(uint4*)(p.codes + (u64)o * 16u) = split_halves_low_first(b + scale_bytes);
        if constexpr (F == RF_LUT4_E8M0) p.scales[o] = b[0];
        else ((u32*)p.scales)[o] = f16_bits_to_f32_bits((u32)b[0] | ((u32)b[1] << 8));
    }
}

extern "C" __global__ void repack_q8_0(const RepackParams p) { grid_dep_sync(); repack_impl<RF_Q8_0>(p); }
extern "C" __global__ void repack_lut4_e8m0(const RepackParams p) { grid_dep_sync(); repack_impl<RF_LUT4_E8M0>(p); }
extern "C" __global__ void repack_lut4_f16(const RepackParams p) { grid_dep_sync(); repack_impl<RF_LUT4_F16>(p); }
