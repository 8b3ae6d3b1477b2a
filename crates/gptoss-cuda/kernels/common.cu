// common.cu — prelude prepended to every kernel file by kernels.rs (no CUDA headers: NVRTC ships none).
// Scalar types, bf16/f16/e8m0 conversions, warp/block reductions, and the packed-weight decoder that
// every weight-reading kernel shares. Layout of a packed weight (see src/weights.rs, which writes it):
//   row r, element i lives at flat index r*ld + i (ld = padded row length, a multiple of 8);
//   F32/BF16/F16: plain elements; Q8: int8 codes + one f16 scale per 32 elements;
//   LUT4: 4-bit codes, element 2b in the low nibble of byte b, one scale (E8M0 byte or f32) per `block`
//   elements, value = round_to(table[code] * scale).
// Minimum arch: sm_80.
typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef long long i64;
typedef unsigned long long u64;

#define WF_F32 0
#define WF_BF16 1
#define WF_F16 2
#define WF_Q8 3
#define WF_LUT4_E8M0 4
#define WF_LUT4_F32 5

#define ROUND_NONE 0
#define ROUND_BF16 1
#define ROUND_F16 2

// Programmatic dependent launch (src/device.rs launches every kernel so where the code is sm_90 or newer): a
// kernel may start while the one before it on the stream still runs. Every kernel calls this before it reads
// anything an earlier kernel wrote or writes anything (before it, only immutable weights may be read), and
// then lets the next kernel start. A no-op for older arches, whose kernels launch plainly.
static __device__ __forceinline__ void grid_dep_sync() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

static __device__ __forceinline__ float bf16_to_f32(u16 h) { return __uint_as_float(((u32)h) << 16); }

// Round-to-nearest-even, NaN kept quiet (as half::bf16::from_f32).
static __device__ __forceinline__ u16 f32_to_bf16(float f) {
    u32 u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (u16)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (u16)(u >> 16);
}

static __device__ __forceinline__ float f16_to_f32(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

static __device__ __forceinline__ u16 f32_to_f16(float f) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

// Element types of the paged KV pools (rope_kv.cu stores keys and values, attention.cu reads them and, in its
// fused decode form, stores the step's own).
#define KV_F32 0
#define KV_BF16 1
#define KV_F16 2

// The pool row (block · 16 + pos mod 16) that holds position `pos` of a sequence, through its block table: entry
// pos / 16 for full layers (ring = 0), (pos / 16) mod ring for sliding ones. (rope_kv.cu spells it out over the
// whole table: the same address.)
static __device__ __forceinline__ i64 kv_pool_row(const int* table, int ring, int pos) {
    int logical = pos / 16;
    return (i64)table[ring > 0 ? logical % ring : logical] * 16 + (pos & 15);
}

// Element i of a KV pool of type KV := v (rounded to nearest-even for the 16-bit types).
template <int KV>
static __device__ __forceinline__ void kv_store(void* base, i64 i, float v) {
    if constexpr (KV == KV_F32) ((float*)base)[i] = v;
    else if constexpr (KV == KV_BF16) ((u16*)base)[i] = f32_to_bf16(v);
    else ((u16*)base)[i] = f32_to_f16(v);
}

// RoPE of one (i, i + half) pair at `angle` = position · inv_freq[i], cos and sin scaled by the YaRN
// concentration (math::apply_rope).
static __device__ __forceinline__ float2 rope_pair(float x1, float x2, float angle, float conc) {
    float c = cosf(angle) * conc, s = sinf(angle) * conc;
    return make_float2(x1 * c - x2 * s, x2 * c + x1 * s);
}

// Two f32 as packed f16 (RNE), `lo` in the low half.
static __device__ __forceinline__ u32 f16x2(float lo, float hi) {
    u32 d;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(d) : "f"(hi), "f"(lo));
    return d;
}

// The biased exponent e of m = max |x| (m >= 0), clamped to [15, 254]: scaling x by 2^(141 - e) (biased 268 - e)
// puts m in [2^14, 2^15), f16's top binade, and both that factor and its inverse 2^(e - 141) (biased e - 14)
// stay normal f32. NaN and inf give 254 and pass through the scaling.
static __device__ __forceinline__ int f16_range_exponent(float m) {
    return min(max((int)(__float_as_uint(m) >> 23), 15), 254);
}

// 2^(b - 127) for a biased exponent b in [1, 254].
static __device__ __forceinline__ float pow2_biased(int b) { return __uint_as_float((u32)b << 23); }

// 2^(e-127), exact for e = 0 (subnormal 2^-127) too.
static __device__ __forceinline__ float e8m0_to_f32(u8 e) {
    return e == 0 ? __uint_as_float(1u << 22) : __uint_as_float(((u32)e) << 23);
}

static __device__ __forceinline__ float round_to(float x, int mode) {
    if (mode == ROUND_BF16) return bf16_to_f32(f32_to_bf16(x));
    if (mode == ROUND_F16) return f16_to_f32(f32_to_f16(x));
    return x;
}

static __device__ __forceinline__ float warp_sum(float v) {
    #pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

static __device__ __forceinline__ float warp_max(float v) {
    #pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the block; `scratch` holds 32 floats. Every thread gets the result.
static __device__ float block_sum(float v, float* scratch) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float r = lane < nw ? scratch[lane] : 0.0f;
    return warp_sum(r);
}

static __device__ float block_max(float v, float* scratch) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float r = lane < nw ? scratch[lane] : -__int_as_float(0x7f800000);
    return warp_max(r);
}

// A packed weight as kernels see it (mirrors WeightRef in src/ops/mod.rs).
struct WRef {
    const void* data;
    const void* scales;
    float table[16];
    int ld;
    int block;
    int round;
    int row_scales;  // 4-bit kinds: scales per row (ld / block; rows hold whole blocks), else 0
};

// Index of the scale of element `col` of row `row` (4-bit kinds): 32-bit division only, no 64-bit call.
static __device__ __forceinline__ i64 scale_index(const WRef& w, i64 row, int col) {
    return row * (i64)w.row_scales + (i64)((unsigned)col / (unsigned)w.block);
}

// round_to over 8 values, the mode tested once.
static __device__ __forceinline__ void round8(float v[8], int mode) {
    if (mode == ROUND_BF16) {
        #pragma unroll
        for (int i = 0; i < 8; i++) v[i] = round_to(v[i], ROUND_BF16);
    } else if (mode == ROUND_F16) {
        #pragma unroll
        for (int i = 0; i < 8; i++) v[i] = round_to(v[i], ROUND_F16);
    }
}

// Copies the LUT4 table into shared memory (constant indices only: no local-memory copy of the params).
static __device__ __forceinline__ void load_table(const WRef& w, float* tab) {
    if (threadIdx.x == 0) {
        #pragma unroll
        for (int i = 0; i < 16; i++) tab[i] = w.table[i];
    }
    __syncthreads();
}

// Decodes the 8 elements [8c, 8c+8) of packed row `row`.
template <int F>
static __device__ __forceinline__ void load8(const WRef& w, const float* tab, i64 row, int c, float v[8]) {
    i64 e0 = row * (i64)w.ld + (i64)c * 8;
    if constexpr (F == WF_F32) {
        const float4* p = (const float4*)((const float*)w.data + e0);
        float4 a = p[0], b = p[1];
        v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w; v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
    } else if constexpr (F == WF_BF16 || F == WF_F16) {
        uint4 q = *(const uint4*)((const u16*)w.data + e0);
        u32 r[4] = {q.x, q.y, q.z, q.w};
        #pragma unroll
        for (int i = 0; i < 4; i++) {
            u16 lo = (u16)(r[i] & 0xffffu), hi = (u16)(r[i] >> 16);
            if constexpr (F == WF_BF16) { v[2 * i] = bf16_to_f32(lo); v[2 * i + 1] = bf16_to_f32(hi); }
            else { v[2 * i] = f16_to_f32(lo); v[2 * i + 1] = f16_to_f32(hi); }
        }
    } else if constexpr (F == WF_Q8) {
        uint2 q = *(const uint2*)((const u8*)w.data + e0);
        float d = f16_to_f32(((const u16*)w.scales)[e0 / 32]);
        u32 r[2] = {q.x, q.y};
        #pragma unroll
        for (int i = 0; i < 8; i++) v[i] = (float)(signed char)((r[i / 4] >> (8 * (i % 4))) & 0xffu) * d;
    } else {
        u32 q = *(const u32*)((const u8*)w.data + e0 / 2);
        float s;
        i64 si = scale_index(w, row, c * 8);
        if constexpr (F == WF_LUT4_E8M0) s = e8m0_to_f32(((const u8*)w.scales)[si]);
        else s = ((const float*)w.scales)[si];
        #pragma unroll
        for (int i = 0; i < 8; i++) v[i] = tab[(q >> (4 * i)) & 0xfu] * s;
        round8(v, w.round);
    }
}

// ---- Integer dot products on x as int8 planes (moe_dot.cu's experts, linear.cu's one-row Q8_0 GEMV) ----
static __device__ __forceinline__ int dp4a_ss(u32 a, u32 b, int c) {
    int d;
    asm("dp4a.s32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
}

// a's bytes unsigned, b's signed.
static __device__ __forceinline__ int dp4a_us(u32 a, u32 b, int c) {
    int d;
    asm("dp4a.u32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
}

// The int8-plane form of a 32-element block (moe_dot.cu): q = rint(x · 2^(148-e)), e the biased exponent of the
// block's largest |x| m, so |q| <= 2^22 (23 bits below the largest value, as exact as the f16 pair's 22), then
// q = hi · 2^16 + mid · 2^8 + lo with hi signed and mid, lo unsigned bytes. Unit (row, block) rk at xs[rk * 32]
// (u32): hi bytes 0..31 (the block's elements in order), mid at +8, lo at +16; xscale[rk] = 2^(e-149), the
// inverse scale times 1/2 (the dot kernels' weights are E2M1 · 2). A block with inf or NaN gets q = 0 and a NaN
// scale, so its products are NaN as in f32.
// The plane scale s = 2^(148-e) and the inverse `inv` for a block whose largest |x| is m; false (s = 0, inv NaN)
// when m is not finite.
static __device__ __forceinline__ bool plane_scales(float m, float& s, float& inv) {
    u32 bits = __float_as_uint(m);
    bool finite = (bits >> 23) < 255u;
    int e = min(max((int)(bits >> 23), 23), 254);
    s = finite ? __uint_as_float((u32)(275 - e) << 23) : 0.0f;
    inv = finite ? __uint_as_float((u32)(e - 22) << 23) : __int_as_float(0x7fffffff);
    return finite;
}

static __device__ __forceinline__ void block_planes(const float* v, float m, u32& hi0, u32& hi1, u32& mid0,
                                                   u32& mid1, u32& lo0, u32& lo1, float& inv) {
    float s;
    bool finite = plane_scales(m, s, inv);
    u32 h[2] = {0u, 0u}, md[2] = {0u, 0u}, l[2] = {0u, 0u};
    #pragma unroll
    for (int i = 0; i < 8; i++) {
        int q = finite ? __float2int_rn(v[i] * s) : 0;
        int w = i >> 2, sh = 8 * (i & 3);
        h[w] |= (u32)((q >> 16) & 255) << sh;
        md[w] |= (u32)((q >> 8) & 255) << sh;
        l[w] |= (u32)(q & 255) << sh;
    }
    hi0 = h[0]; hi1 = h[1]; mid0 = md[0]; mid1 = md[1]; lo0 = l[0]; lo1 = l[1];
}

// acc[r][t] = Σ_i W[row + r, i] · x_t[i] over i < k, for NR consecutive weight rows and TT input rows;
// warp-cooperative, every lane returns the full sums. Every xs[t] must be a readable row (callers repeat a
// live row for unused tile slots and drop those results). x rows are f32, 4-byte aligned at least.
template <int F, int TT, int NR>
static __device__ __forceinline__ void warp_rowdot(const WRef& w, const float* tab, i64 row,
                                                   const float* const* xs, int k, float (*acc)[TT]) {
    int lane = threadIdx.x & 31;
    int nchunks = w.ld / 8;
    int full = (k & 3) == 0 ? k / 8 : 0;
    for (int c = lane; c < full; c += 32) {
        float wv[NR][8];
        #pragma unroll
        for (int r = 0; r < NR; r++) load8<F>(w, tab, row + r, c, wv[r]);
        #pragma unroll
        for (int t = 0; t < TT; t++) {
            const float4* x4 = (const float4*)(xs[t] + c * 8);
            float4 a = x4[0], b = x4[1];
            #pragma unroll
            for (int r = 0; r < NR; r++)
                acc[r][t] += wv[r][0] * a.x + wv[r][1] * a.y + wv[r][2] * a.z + wv[r][3] * a.w
                           + wv[r][4] * b.x + wv[r][5] * b.y + wv[r][6] * b.z + wv[r][7] * b.w;
        }
    }
    for (int c = full + lane; c < nchunks; c += 32) {
        float wv[NR][8];
        #pragma unroll
        for (int r = 0; r < NR; r++) load8<F>(w, tab, row + r, c, wv[r]);
        #pragma unroll
        for (int t = 0; t < TT; t++)
            #pragma unroll
            for (int i = 0; i < 8; i++)
                if (c * 8 + i < k) {
                    float x = xs[t][c * 8 + i];
                    #pragma unroll
                    for (int r = 0; r < NR; r++) acc[r][t] += wv[r][i] * x;
                }
    }
    #pragma unroll
    for (int r = 0; r < NR; r++)
        #pragma unroll
        for (int t = 0; t < TT; t++) acc[r][t] = warp_sum(acc[r][t]);
}

// ---- Split-K row dots for few input rows (decode, T <= 8) ----
// A chunk is one 16-byte weight load (32 bytes for f32) of CE elements: 8 for dense, 16 for Q8, 32 for
// 4-bit weights whose rows and scale blocks are multiples of 32 ("wide"), else 8 (4 bytes). The block's
// threads form G groups (a group is whole warps); group g takes rows rows0 + g*NR .. +NR and splits their
// chunks over its threads, so each thread keeps NR independent 16-byte loads in flight.
struct Raw {
    uint4 a;
    uint4 b;
    float s;
};

template <int F, int CE>
static __device__ __forceinline__ void load_raw(const WRef& w, i64 row, int c, Raw& r) {
    i64 e0 = row * (i64)w.ld + (i64)c * CE;
    if constexpr (F == WF_F32) {
        const uint4* p = (const uint4*)((const float*)w.data + e0);
        r.a = p[0];
        r.b = p[1];
    } else if constexpr (F == WF_BF16 || F == WF_F16) {
        r.a = *(const uint4*)((const u16*)w.data + e0);
    } else if constexpr (F == WF_Q8) {
        r.a = *(const uint4*)((const u8*)w.data + e0);
        r.s = f16_to_f32(((const u16*)w.scales)[e0 / 32]);
    } else {
        if constexpr (CE == 32) r.a = *(const uint4*)((const u8*)w.data + e0 / 2);
        else r.a.x = *(const u32*)((const u8*)w.data + e0 / 2);
        i64 si = scale_index(w, row, c * CE);
        if constexpr (F == WF_LUT4_E8M0) r.s = e8m0_to_f32(((const u8*)w.scales)[si]);
        else r.s = ((const float*)w.scales)[si];
    }
}

static __device__ __forceinline__ u32 raw_word(const Raw& r, int i) {
    u32 w[8] = {r.a.x, r.a.y, r.a.z, r.a.w, r.b.x, r.b.y, r.b.z, r.b.w};
    return w[i];
}

// The first 8 elements of a loaded chunk; next_sub moves the following 8 to the front (Q8, 4-bit).
template <int F>
static __device__ __forceinline__ void next_sub(Raw& r) {
    if constexpr (F == WF_Q8) r.a = make_uint4(r.a.z, r.a.w, 0u, 0u);
    else r.a = make_uint4(r.a.y, r.a.z, r.a.w, 0u);
}

template <int F>
static __device__ __forceinline__ void decode_sub(const WRef& w, const float* tab, const Raw& r, float v[8]) {
    const int s = 0;
    if constexpr (F == WF_F32) {
        #pragma unroll
        for (int i = 0; i < 8; i++) v[i] = __uint_as_float(raw_word(r, i));
    } else if constexpr (F == WF_BF16 || F == WF_F16) {
        #pragma unroll
        for (int i = 0; i < 4; i++) {
            u32 x = raw_word(r, i);
            u16 lo = (u16)(x & 0xffffu), hi = (u16)(x >> 16);
            if constexpr (F == WF_BF16) { v[2 * i] = bf16_to_f32(lo); v[2 * i + 1] = bf16_to_f32(hi); }
            else { v[2 * i] = f16_to_f32(lo); v[2 * i + 1] = f16_to_f32(hi); }
        }
    } else if constexpr (F == WF_Q8) {
        // Unscaled codes (sub_dot scales the partial sum). A code flipped to offset binary becomes the low byte
        // of the float 2^23 + q + 128, and one subtraction leaves q exactly: a byte permute and an add
        // instead of a quarter-rate int-to-float conversion and a multiply per element.
        #pragma unroll
        for (int h = 0; h < 2; h++) {
            u32 word = raw_word(r, 2 * s + h) ^ 0x80808080u;
            #pragma unroll
            for (int i = 0; i < 4; i++)
                v[4 * h + i] = __uint_as_float(__byte_perm(word, 0x4B000000u, 0x7540u | (u32)i)) - 8388736.0f;
        }
    } else {
        // Unrounded 4-bit values stay unscaled: sub_dot applies the block's scale to the partial sum.
        u32 q = raw_word(r, s);
        #pragma unroll
        for (int i = 0; i < 8; i++) v[i] = tab[(q >> (4 * i)) & 0xfu];
        if (w.round != ROUND_NONE) {
            #pragma unroll
            for (int i = 0; i < 8; i++) v[i] *= r.s;
            round8(v, w.round);
        }
    }
}

// The factor sub_dot applies to a partial sum of decode_sub's values: the Q8_0 scale, and the 4-bit scale when
// those values are unscaled.
template <int F>
static __device__ __forceinline__ float sub_scale(const WRef& w, const Raw& r) {
    if constexpr (F == WF_LUT4_E8M0 || F == WF_LUT4_F32) return w.round == ROUND_NONE ? r.s : 1.0f;
    else if constexpr (F == WF_Q8) return r.s;
    else return 1.0f;
}

// acc[r][t] += Σ_{i<8} W_r[base + i] x_t[base + i] (base + i < k) for the front 8 elements of raw[r], then
// moves the chunk's next 8 to the front. x is loaded first and each row decoded just before its FMAs, so
// only one row's 8 decoded values are live at a time.
template <int F, int TT, int NR>
static __device__ __forceinline__ void sub_dot(const WRef& w, const float* tab, Raw* raw, int base,
                                               const float* const* xs, int k, float (*acc)[TT]) {
    float x[TT][8];
    if ((k & 3) == 0 && base + 8 <= k) {
        #pragma unroll
        for (int t = 0; t < TT; t++) {
            const float4* x4 = (const float4*)(xs[t] + base);
            float4 a = x4[0], b = x4[1];
            x[t][0] = a.x; x[t][1] = a.y; x[t][2] = a.z; x[t][3] = a.w;
            x[t][4] = b.x; x[t][5] = b.y; x[t][6] = b.z; x[t][7] = b.w;
        }
    } else {
        #pragma unroll
        for (int t = 0; t < TT; t++)
            #pragma unroll
            for (int i = 0; i < 8; i++) x[t][i] = base + i < k ? xs[t][base + i] : 0.0f;
    }
    #pragma unroll
    for (int r = 0; r < NR; r++) {
        float wv[8];
        decode_sub<F>(w, tab, raw[r], wv);
        float sc = sub_scale<F>(w, raw[r]);
        next_sub<F>(raw[r]);
        #pragma unroll
        for (int t = 0; t < TT; t++)
            acc[r][t] += sc * (wv[0] * x[t][0] + wv[1] * x[t][1] + wv[2] * x[t][2] + wv[3] * x[t][3]
                               + wv[4] * x[t][4] + wv[5] * x[t][5] + wv[6] * x[t][6] + wv[7] * x[t][7]);
    }
}

// res[(g*NR + r)*TT + t] = Σ_i W[rows0 + g*NR + r, i] · x_t[i] (i < k) for every group g of `groups`; rows
// past `last_row` repeat it (callers drop those). `xrows(xs)` fills the TT x row pointers; it runs after the
// first weight loads are issued, so its own loads (pair lists) overlap them. Ends with a barrier; res and scratch are shared arrays of at least
// groups*NR*TT and (blockDim/32)*NR*TT floats.
template <int F, int CE, int TT, int NR, typename X>
static __device__ void block_rowdot(const WRef& w, const float* tab, i64 rows0, i64 last_row, int groups,
                                    const X& xrows, int k, float* scratch, float* res) {
    int gsize = blockDim.x / groups, g = threadIdx.x / gsize, gt = threadIdx.x % gsize;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    i64 rows[NR];
    #pragma unroll
    for (int r = 0; r < NR; r++) rows[r] = min(rows0 + (i64)(g * NR + r), last_row);
    float acc[NR][TT];
    #pragma unroll
    for (int r = 0; r < NR; r++)
        #pragma unroll
        for (int t = 0; t < TT; t++) acc[r][t] = 0.0f;
    int nch = (k + CE - 1) / CE;
    Raw raw[NR];
    if (gt < nch) {
        #pragma unroll
        for (int r = 0; r < NR; r++) load_raw<F, CE>(w, rows[r], gt, raw[r]);
    }
    const float* xs[TT];
    xrows(xs);
    for (int c = gt; c < nch; c += gsize) {
        if (c != gt) {
            #pragma unroll
            for (int r = 0; r < NR; r++) load_raw<F, CE>(w, rows[r], c, raw[r]);
        }
        if constexpr (CE == 32) {
            // 4-bit: one sub-chunk at a time keeps its decoded weights and x loads within the registers.
            #pragma unroll 1
            for (int s = 0; s < CE / 8; s++) sub_dot<F, TT, NR>(w, tab, raw, c * CE + s * 8, xs, k, acc);
        } else {
            #pragma unroll
            for (int s = 0; s < CE / 8; s++) sub_dot<F, TT, NR>(w, tab, raw, c * CE + s * 8, xs, k, acc);
        }
    }
    #pragma unroll
    for (int r = 0; r < NR; r++)
        #pragma unroll
        for (int t = 0; t < TT; t++) {
            float v = warp_sum(acc[r][t]);
            if (lane == 0) scratch[warp * NR * TT + r * TT + t] = v;
        }
    __syncthreads();
    int wpg = gsize >> 5;
    for (int o = threadIdx.x; o < groups * NR * TT; o += blockDim.x) {
        int og = o / (NR * TT), ri = o % (NR * TT);
        float v = 0.0f;
        for (int q = 0; q < wpg; q++) v += scratch[(og * wpg + q) * NR * TT + ri];
        res[o] = v;
    }
    __syncthreads();
}

// ---- The residual add and RMSNorm of one row, shared by norm.cu and the GEMVs that fuse it ----
// Float4s per thread of a 256-thread block: rows of up to RMS_VEC · 4 · 256 = 4,096 floats.
#define RMS_VEC 4

// x (+ y) and w of one row of n floats (n % 4 == 0, n <= 4 · RMS_VEC · 256, 16-byte aligned) by a block of 256
// threads, thread t holding float4s t, t + 256, ... in xv and wv (zero past the row); returns
// 1 / sqrt(mean(x²) + eps). Every load is issued before the first use (one memory latency), and every block
// that calls it on the same row gets the same bits. The norm is then rms_scale(xv[j], wv[j], inv).
template <int ADD>
static __device__ float rms_row_vec(const float* x, const float* y, const float* w, int n, float eps,
                                    float4 (&xv)[RMS_VEC], float4 (&wv)[RMS_VEC], float* scratch) {
    int nv = n >> 2;
    const float4 zero = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    #pragma unroll
    for (int j = 0; j < RMS_VEC; j++) {
        int i = threadIdx.x + j * 256;
        xv[j] = i < nv ? ((const float4*)x)[i] : zero;
        wv[j] = i < nv ? ((const float4*)w)[i] : zero;
        if (ADD) {
            float4 yv = i < nv ? ((const float4*)y)[i] : zero;
            xv[j] = make_float4(xv[j].x + yv.x, xv[j].y + yv.y, xv[j].z + yv.z, xv[j].w + yv.w);
        }
    }
    float s = 0.0f;
    #pragma unroll
    for (int j = 0; j < RMS_VEC; j++) s += xv[j].x * xv[j].x + xv[j].y * xv[j].y + xv[j].z * xv[j].z + xv[j].w * xv[j].w;
    s = block_sum(s, scratch);
    return 1.0f / sqrtf(s / (float)n + eps);
}

static __device__ __forceinline__ float4 rms_scale(float4 x, float4 w, float inv) {
    return make_float4(w.x * (x.x * inv), w.y * (x.y * inv), w.z * (x.z * inv), w.w * (x.w * inv));
}

// The norm a one-row GEMV applies to its input itself (the launch that add_rmsnorm_f32 was before it).
struct NormIn {
    float* resid;        // the residual row x
    const float* delta;  // y, added into x first; null: none (and x is not written)
    const float* w;      // the norm's weight
    float* h;            // out: rms_norm(x) · w, written by block 0
    int* ticket;         // blocks done reading x; zero between launches
    int n;
    float eps;
};

// By every block of a fused GEMV (256 threads, after grid_dep_sync): xn (shared, n floats) = rms_norm(x + y) · w,
// bit for bit what add_rmsnorm_f32 writes; block 0 also writes it to h, and the last block to have read x
// writes x + y back (before then, another block may still be reading x). Ends with a barrier.
static __device__ void norm_prologue(const NormIn& f, float* xn) {
    __shared__ float scratch[32];
    __shared__ int last;
    int nv = f.n >> 2;
    float4 xv[RMS_VEC], wv[RMS_VEC];
    float inv = f.delta ? rms_row_vec<1>(f.resid, f.delta, f.w, f.n, f.eps, xv, wv, scratch)
                        : rms_row_vec<0>(f.resid, nullptr, f.w, f.n, f.eps, xv, wv, scratch);
    #pragma unroll
    for (int j = 0; j < RMS_VEC; j++) {
        int i = threadIdx.x + j * 256;
        if (i < nv) {
            float4 v = rms_scale(xv[j], wv[j], inv);
            ((float4*)xn)[i] = v;
            if (blockIdx.x == 0) ((float4*)f.h)[i] = v;
        }
    }
    if (f.delta) {
        // block_sum's barriers put every thread's loads of x before this ticket.
        if (threadIdx.x == 0) last = atomicAdd(f.ticket, 1) == (int)gridDim.x - 1;
        __syncthreads();
        if (last) {
            #pragma unroll
            for (int j = 0; j < RMS_VEC; j++) {
                int i = threadIdx.x + j * 256;
                if (i < nv) ((float4*)f.resid)[i] = xv[j];
            }
            if (threadIdx.x == 0) *f.ticket = 0;
        }
    }
    __syncthreads();
}

// The x split of the MXFP4 expert paths (moe_common.cu, moe.cu, moe_dot.cu), here because the router's fused-norm
// GEMV (linear.cu) also writes it: two f16 parts per element for the tensor cores, or three int8 planes per
// 32-element block for the integer dot products.
struct XSplitParams {
    const float* x;
    u32* xs;
    float* xscale;
    int rows;
    int k;
    // 1: three int8 planes for moe_dot.cu (xs must not alias x); 0: two f16 parts for the tensor cores.
    int dot;
    int pad_;
};

// xsplit_unit's int8-plane form: the quad's 8 elements 8t..8t+7 of unit rk, with the block's maximum m.
static __device__ __forceinline__ void xsplit_dot(const XSplitParams& p, bool live, i64 rk, int t, const float* v,
                                                  float m) {
    // fmaxf skipped NaNs in m; the planes need to know (an infinite m marks the block).
    int nan = 0;
    #pragma unroll
    for (int i = 0; i < 8; i++) nan |= v[i] != v[i];
    nan |= __shfl_xor_sync(0xffffffffu, nan, 1);
    nan |= __shfl_xor_sync(0xffffffffu, nan, 2);
    u32 h0, h1, m0, m1, l0, l1;
    float inv;
    block_planes(v, nan ? __int_as_float(0x7f800000) : m, h0, h1, m0, m1, l0, l1, inv);
    if (!live) return;
    u32* dst = p.xs + rk * 32 + 2 * t;
    *(uint2*)dst = make_uint2(h0, h1);
    *(uint2*)(dst + 8) = make_uint2(m0, m1);
    *(uint2*)(dst + 16) = make_uint2(l0, l1);
    if (t == 0) p.xscale[rk] = inv;
}

// One unit (row, block, t) of moe_xsplit, idx = (row * nkb + block) * 4 + t. Every lane of the warp calls it
// (the quad shares its block's maximum through shuffles); lanes past the end only take part.
static __device__ __forceinline__ void xsplit_unit(const XSplitParams& p, i64 idx) {
    int nkb = p.k / 32;
    i64 total = (i64)p.rows * nkb * 4;
    bool live = idx < total;
    int t = (int)(idx & 3);
    i64 rk = idx >> 2;
    float v[8];
    #pragma unroll
    for (int i = 0; i < 8; i++) v[i] = 0.0f;
    if (live) {
        i64 row = rk / nkb;
        int kb = (int)(rk % nkb);
        const float4* src = (const float4*)(p.x + row * p.k + kb * 32 + 8 * t);
        float4 a = src[0], b = src[1];
        v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w; v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
    }
    float m = 0.0f;
    #pragma unroll
    for (int i = 0; i < 8; i++) m = fmaxf(m, fabsf(v[i]));
    // Quads are whole (total is a multiple of 4), so every lane of a quad shares the block's maximum.
    m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 1));
    m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 2));
    // e clamped to [15, 254]: the scale 2^(141-e) and 2^(e-127) stay normal; NaN and inf pass through.
    if (p.dot) {
        xsplit_dot(p, live, rk, t, v, m);
        return;
    }
    int e = min(max((int)(__float_as_uint(m) >> 23), 15), 254);
    float s = __uint_as_float((u32)(268 - e) << 23);
    if (!live) return;
    u32 out[8];
    #pragma unroll
    for (int j = 0; j < 4; j++) {
        // j = 2s + b: slice s, register b holds elements (8t + 2s + b, 8t + 2s + b + 4).
        int i0 = (j >> 1) * 2 + (j & 1);
        float x0 = v[i0] * s, x1 = v[i0 + 4] * s;
        u32 hi = f16x2(x0, x1);
        out[j] = hi;
        out[4 + j] = f16x2(x0 - f16_to_f32((u16)(hi & 0xffffu)), x1 - f16_to_f32((u16)(hi >> 16)));
    }
    uint4* dst = (uint4*)(p.xs + (rk * 4 + t) * 8);
    dst[0] = make_uint4(out[0], out[1], out[2], out[3]);
    dst[1] = make_uint4(out[4], out[5], out[6], out[7]);
    if (t == 0) p.xscale[rk] = __uint_as_float((u32)e << 23);
}
