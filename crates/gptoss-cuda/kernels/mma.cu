// mma.cu — tensor-core tile GEMM core (prelude of linear.cu, moe.cu, moe_half.cu and attention.cu, after
// common.cu; attention takes only the MMA and ldmatrix wrappers): acc = X · Wᵀ for
// a tile of 64 (or 32) input rows × 128 weight rows, K in steps of 32, with mma.sync m16n8k16 bf16 (sm_80+).
// X is f32; in the exact tiles (XP = 3) each value is split into three bf16 parts (x = hi + mid + lo +
// O(2^-27 |x|)) and all three go through the tensor cores, so the products keep the full 24 mantissa bits of
// f32; each K step's partial sum is added to the running sum in f32 (mma_compute says why), so the result
// matches an f32 CUDA-core dot product to rounding (issue 16, bench/NOTES.md). The fast tiles of prompts (XP
// = 2) keep x as two bf16 parts (relative 2^-17 per element; one part, as transformers runs the model, cost
// the tiny fixtures up to 0.9 of their largest logit) and let the tensor cores accumulate all of K: two
// thirds of the MMAs and no f32 work per step (bench/BENCHMARKS.md has their KL). W must decode exactly to
// bf16 (dense bf16; 4-bit tables × E8M0 scales; bitsandbytes values rounded to bf16), or be Q8_0, whose int8
// codes are exact in bf16 and whose f16 scale (one per 32 elements: one K step) multiplies the step's partial
// sum: see DevWeight::mma_exact.
// Smem: X hi/mid/lo and W tiles, rows padded to 40 bf16 (80 bytes: conflict-free ldmatrix), refilled from
// registers loaded one K step ahead. Block: 256 threads = 8 warps as 2 (rows) × 4 (weight rows), each warp
// 32 × 32 outputs. Minimum arch: sm_80.
#define MMA_BM 64
#define MMA_BN 128
#define MMA_BK 32
#define MMA_LDS 40

// bf16 parts of x in the exact tiles.
#define MMA_XPARTS 3

template <int XP>
struct MmaSmem {
    u16 x[XP][MMA_BM * MMA_LDS];
    u16 w[MMA_BN * MMA_LDS];
    float tab[16];
    // Q8_0: each weight row's scale for the K step in `w`.
    float ws[MMA_BN];
};

// Registers holding one K step's global loads (X: 2 float4 per thread; W: 2 uint4 for bf16, 16 int8 codes
// and a scale for Q8_0, 8 bytes of 4-bit codes and a scale otherwise).
struct MmaStage {
    float4 x[2];
    uint4 w[2];
    float s;
};

static __device__ __forceinline__ u32 smem_addr(const void* p) {
    u32 a;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
    return a;
}

static __device__ __forceinline__ void ldsm_x4(u32 addr, u32 r[4]) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr) : "memory");
}

// cp.async of 16 (4) bytes (`bytes` fewer: the rest zero-filled, 0 reads nothing), its commit and its wait (shared by
// linear.cu's pipelined tiles and the expert tiles of moe.cu / moe_half.cu).
static __device__ __forceinline__ void cp_async16(u32 dst, const void* src, int bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "r"(bytes) : "memory");
}

static __device__ __forceinline__ void cp_async4(u32 dst, const void* src, int bytes) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;" ::"r"(dst), "l"(src), "r"(bytes) : "memory");
}

static __device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }

template <int N>
static __device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory"); }

// As ldsm_x4 with two matrices (lanes 0-15 give the row addresses).
static __device__ __forceinline__ void ldsm_x2(u32 addr, u32 r[2]) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];"
                 : "=r"(r[0]), "=r"(r[1]) : "r"(addr) : "memory");
}

static __device__ __forceinline__ void mma_bf16(float c[4], const u32 a[4], u32 b0, u32 b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

static __device__ __forceinline__ void mma_f16(float c[4], u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// As ldsm_x4, each 8×8 matrix transposed: thread (g, t) gets elements (2t, g) and (2t + 1, g) of its rows.
static __device__ __forceinline__ void ldsm_x4_trans(u32 addr, u32 r[4]) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr) : "memory");
}

// Thread tid loads X rows tid/8 (and tid/8 + 32 when MT = 2; xrow[j], null = zero row), 4 floats at column
// 4*(tid%8).
template <int MT>
static __device__ __forceinline__ void mma_load_x(const float* const* xrow, int k, int k0, MmaStage& st) {
    int c = k0 + (threadIdx.x & 7) * 4;
    #pragma unroll
    for (int j = 0; j < MT; j++) {
        float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        const float* r = xrow[j];
        if (r) {
            if ((k & 3) == 0 && c + 4 <= k) v = *(const float4*)(r + c);
            else {
                if (c < k) v.x = r[c];
                if (c + 1 < k) v.y = r[c + 1];
                if (c + 2 < k) v.z = r[c + 2];
                if (c + 3 < k) v.w = r[c + 3];
            }
        }
        st.x[j] = v;
    }
}

// bf16 W: thread tid loads rows tid/4 and tid/4 + 64, 8 elements at column 8*(tid%4). Q8_0 and 4-bit W: row
// tid/2, 16 codes at column 16*(tid%2) (needs ld and block multiples of 32).
template <int F>
static __device__ __forceinline__ void mma_load_w(const WRef& w, i64 wrow0, int n_valid, int k0, MmaStage& st) {
    if constexpr (F == WF_BF16) {
        int c = k0 + (threadIdx.x & 3) * 8;
        #pragma unroll
        for (int j = 0; j < 2; j++) {
            int r = (threadIdx.x >> 2) + 64 * j;
            uint4 v = make_uint4(0u, 0u, 0u, 0u);
            if (r < n_valid && c < w.ld) v = *(const uint4*)((const u16*)w.data + (wrow0 + r) * (i64)w.ld + c);
            st.w[j] = v;
        }
    } else if constexpr (F == WF_Q8) {
        int r = threadIdx.x >> 1, c = k0 + (threadIdx.x & 1) * 16;
        uint4 v = make_uint4(0u, 0u, 0u, 0u);
        float s = 0.0f;
        if (r < n_valid && c < w.ld) {
            i64 e0 = (wrow0 + r) * (i64)w.ld + c;
            v = *(const uint4*)((const u8*)w.data + e0);
            s = f16_to_f32(((const u16*)w.scales)[e0 / 32]);
        }
        st.w[0] = v;
        st.s = s;
    } else {
        int r = threadIdx.x >> 1, c = k0 + (threadIdx.x & 1) * 16;
        uint2 v = make_uint2(0u, 0u);
        float s = 0.0f;
        if (r < n_valid && c < w.ld) {
            i64 e0 = (wrow0 + r) * (i64)w.ld + c;
            v = *(const uint2*)((const u8*)w.data + e0 / 2);
            i64 si = scale_index(w, wrow0 + r, c);
            if constexpr (F == WF_LUT4_E8M0) s = e8m0_to_f32(((const u8*)w.scales)[si]);
            else s = ((const float*)w.scales)[si];
        }
        st.w[0] = make_uint4(v.x, v.y, 0u, 0u);
        st.s = s;
    }
}

// Two f32 as packed bf16 (RNE), `lo` in the low half: one cvt.rn.bf16x2.f32.
static __device__ __forceinline__ u32 bf16x2(float lo, float hi) {
    u32 d;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(d) : "f"(hi), "f"(lo));
    return d;
}

// a = part[0].a + ... + part[XP - 1].a + O(2^(-9 XP) |a|), likewise b; each part packed as bf16x2. Every
// remainder is exact in f32 (Sterbenz), so only the last rounding loses anything.
template <int XP>
static __device__ __forceinline__ void split_bf16x2(float a, float b, u32 part[XP]) {
    #pragma unroll
    for (int i = 0; i < XP; i++) {
        part[i] = bf16x2(a, b);
        a -= __uint_as_float(part[i] << 16);
        b -= __uint_as_float(part[i] & 0xffff0000u);
    }
}

template <int F, int MT, int XP>
static __device__ __forceinline__ void mma_store(const WRef& w, const MmaStage& st, MmaSmem<XP>& sm) {
    int c = (threadIdx.x & 7) * 4;
    #pragma unroll
    for (int j = 0; j < MT; j++) {
        int r = (threadIdx.x >> 3) + 32 * j;
        float4 v = st.x[j];
        u32 p01[XP], p23[XP];
        split_bf16x2<XP>(v.x, v.y, p01);
        split_bf16x2<XP>(v.z, v.w, p23);
        #pragma unroll
        for (int i = 0; i < XP; i++) *(uint2*)&sm.x[i][r * MMA_LDS + c] = make_uint2(p01[i], p23[i]);
    }
    if constexpr (F == WF_BF16) {
        #pragma unroll
        for (int j = 0; j < 2; j++) {
            int r = (threadIdx.x >> 2) + 64 * j;
            *(uint4*)&sm.w[r * MMA_LDS + (threadIdx.x & 3) * 8] = st.w[j];
        }
    } else if constexpr (F == WF_Q8) {
        // The codes as bf16 (exact: |q| <= 128); the scale applies to the step's partial sums (mma_compute).
        u32 q[4] = {st.w[0].x, st.w[0].y, st.w[0].z, st.w[0].w}, o[8];
        #pragma unroll
        for (int i = 0; i < 8; i++) {
            u32 word = q[i / 2], sh = 16 * (i % 2);
            o[i] = bf16x2((float)(signed char)((word >> sh) & 0xffu), (float)(signed char)((word >> (sh + 8)) & 0xffu));
        }
        int r = threadIdx.x >> 1, c2 = (threadIdx.x & 1) * 16;
        *(uint4*)&sm.w[r * MMA_LDS + c2] = make_uint4(o[0], o[1], o[2], o[3]);
        *(uint4*)&sm.w[r * MMA_LDS + c2 + 8] = make_uint4(o[4], o[5], o[6], o[7]);
        if ((threadIdx.x & 1) == 0) sm.ws[r] = st.s;
    } else {
        // Exact products (mma_exact): the bf16 conversion is exact.
        u32 o[8];
        #pragma unroll
        for (int h = 0; h < 2; h++) {
            u32 q = h == 0 ? st.w[0].x : st.w[0].y;
            float v[8];
            #pragma unroll
            for (int i = 0; i < 8; i++) v[i] = sm.tab[(q >> (4 * i)) & 0xfu] * st.s;
            round8(v, w.round);
            #pragma unroll
            for (int i = 0; i < 4; i++) o[4 * h + i] = bf16x2(v[2 * i], v[2 * i + 1]);
        }
        int r = threadIdx.x >> 1, c2 = (threadIdx.x & 1) * 16;
        *(uint4*)&sm.w[r * MMA_LDS + c2] = make_uint4(o[0], o[1], o[2], o[3]);
        *(uint4*)&sm.w[r * MMA_LDS + c2 + 8] = make_uint4(o[4], o[5], o[6], o[7]);
    }
}

// One K step (32) of the warp's (16*MT) × 32 outputs from the smem tiles. The tensor cores add each product
// into their accumulator truncated to its exponent (not rounded), so a long chain of MMAs into one running
// sum drifts by ~2^-23 per step, always towards zero: over K = 2880 that was 1e-5 relative (issue 16). So
// the exact tiles (XP = 3) start a fresh partial sum every K step (6 MMAs), smallest X parts first, and add
// it to `acc` with an ordinary f32 add (times the weight row's scale for the step when SCALED: Q8_0). The
// fast tiles (XP = 2) accumulate in the tensor cores, unless SCALED: drift and the two-part rounding together
// measured 2.1e-6 … 2.2e-6 of the largest output at K = 2,880 (gpu_ops, against 2e-7 exact).
template <int MT, bool SCALED, int XP>
static __device__ __forceinline__ void mma_compute(const MmaSmem<XP>& sm, float (*acc)[4][4]) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, wm = warp >> 2, wn = warp & 3;
    auto step = [&](float (*c)[4][4]) {
        #pragma unroll
        for (int kk = 0; kk < MMA_BK; kk += 16) {
            u32 b[4][2];
            #pragma unroll
            for (int np = 0; np < 2; np++) {
                int off = (wn * 32 + np * 16 + (lane & 7) + (lane >> 4) * 8) * MMA_LDS + kk + ((lane >> 3) & 1) * 8;
                u32 r[4];
                ldsm_x4(smem_addr(&sm.w[off]), r);
                b[2 * np][0] = r[0];
                b[2 * np][1] = r[1];
                b[2 * np + 1][0] = r[2];
                b[2 * np + 1][1] = r[3];
            }
            // Not unrolled: one part's fragments live at a time (the bf16 gate_up kernel stays within 128 registers).
            #pragma unroll 1
            for (int xp = XP - 1; xp >= 0; xp--) {
                u32 a[MT][4];
                #pragma unroll
                for (int mt = 0; mt < MT; mt++) {
                    int off = (wm * 16 * MT + mt * 16 + (lane & 15)) * MMA_LDS + kk + (lane >> 4) * 8;
                    ldsm_x4(smem_addr(&sm.x[xp][off]), a[mt]);
                }
                #pragma unroll
                for (int mt = 0; mt < MT; mt++)
                    #pragma unroll
                    for (int nt = 0; nt < 4; nt++) mma_bf16(c[mt][nt], a[mt], b[nt][0], b[nt][1]);
            }
        }
    };
    if constexpr (XP < 3 && !SCALED) {
        step(acc);
        return;
    }
    float part[MT][4][4];
    #pragma unroll
    for (int mt = 0; mt < MT; mt++)
        #pragma unroll
        for (int nt = 0; nt < 4; nt++)
            #pragma unroll
            for (int i = 0; i < 4; i++) part[mt][nt][i] = 0.0f;
    step(part);
    float scale[4][2];
    #pragma unroll
    for (int nt = 0; nt < 4; nt++)
        #pragma unroll
        for (int j = 0; j < 2; j++) scale[nt][j] = SCALED ? sm.ws[wn * 32 + nt * 8 + 2 * (lane & 3) + j] : 1.0f;
    #pragma unroll
    for (int mt = 0; mt < MT; mt++)
        #pragma unroll
        for (int nt = 0; nt < 4; nt++)
            #pragma unroll
            for (int i = 0; i < 4; i++) {
                if constexpr (SCALED) acc[mt][nt][i] += part[mt][nt][i] * scale[nt][i & 1];
                else acc[mt][nt][i] += part[mt][nt][i];
            }
}

// acc[mt][nt][i] = Σ_k X[row, k] W[wrow0 + col, k] over k in [kb, ke) (kb a multiple of MMA_BK, ke ≤ k: a
// split-K share; the whole row with kb = 0, ke = k), row = wm*16*MT + mt*16 + lane/4 (+8 for i >= 2),
// col = wn*32 + nt*8 + 2*(lane%4) + (i & 1); weight rows at or past n_valid read as zero. MT = 2: tiles of
// 64 rows; MT = 1: 32 rows (half the MMAs when most rows would be empty). XP: bf16 parts of x (3 exact, 2 fast).
template <int F, int MT, int XP>
static __device__ void mma_tile(const WRef& w, const float* const* xrow, i64 wrow0, int n_valid, int k, int kb,
                                int ke, MmaSmem<XP>& sm, float (*acc)[4][4]) {
    if (threadIdx.x == 0) {
        #pragma unroll
        for (int i = 0; i < 16; i++) sm.tab[i] = w.table[i];
    }
    #pragma unroll
    for (int mt = 0; mt < MT; mt++)
        #pragma unroll
        for (int nt = 0; nt < 4; nt++)
            #pragma unroll
            for (int i = 0; i < 4; i++) acc[mt][nt][i] = 0.0f;
    int nk = (ke - kb + MMA_BK - 1) / MMA_BK;
    if (nk <= 0) return;
    MmaStage st;
    mma_load_x<MT>(xrow, k, kb, st);
    mma_load_w<F>(w, wrow0, n_valid, kb, st);
    __syncthreads();
    mma_store<F, MT, XP>(w, st, sm);
    __syncthreads();
    for (int ks = 0; ks < nk; ks++) {
        bool more = ks + 1 < nk;
        if (more) {
            mma_load_x<MT>(xrow, k, kb + (ks + 1) * MMA_BK, st);
            mma_load_w<F>(w, wrow0, n_valid, kb + (ks + 1) * MMA_BK, st);
        }
        mma_compute<MT, F == WF_Q8, XP>(sm, acc);
        __syncthreads();
        if (more) {
            mma_store<F, MT, XP>(w, st, sm);
            __syncthreads();
        }
    }
}
