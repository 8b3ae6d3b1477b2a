// moe_half.cu — MXFP4 experts as a plain f16 GEMM with f16 activations, one accumulator over the whole K: the
// fast expert kernels of prefill and large batches (moe.cu keeps the exact ones, which `--exact` selects).
// Prelude: common.cu, mma.cu (ldmatrix, shared addresses), moe_common.cu (ExpertParams, find_tile, the store
// epilogue, the f16 MMA, the E2M1 decode and cp.async). Minimum arch: sm_80. Launched from src/ops/moe.rs.
//
// The exact kernels of moe.cu keep x in two f16 parts and restart the accumulator every 32-element block, so each
// MMA's partial sum can be scaled in f32: two MMAs and a dozen f32 instructions per useful MMA. Here x is one
// f16 per element (its row scaled by a power of two so its largest |x| lies in [2^14, 2^15): 11 significant
// bits, moe_xhalf), and each weight's E8M0 scale is folded into its f16 value relative to the largest scale of
// the block's 128 rows (max_s, scanned before the loop): w = E2M1 · 2^(s - 127) = A · 2^(max_s - 128) with
// A = E2M1 · 2^(s - max_s + 1) exact in f16 (at most 12) unless s < max_s - 29, whose blocks (weights below
// 2^-28 of the tile's largest) round to f16 subnormals or zero. The tensor cores then accumulate all of K, and
// the epilogue multiplies by 2^(max_s - 128) and the row's x scale. Results differ from the exact path by the
// f16 rounding of x (relative 2^-12 per element); bench/BENCHMARKS.md has its KL against the exact path.
// Block: 128 weight rows × 16 (h16), 64 (h64) or 128 (h128) pairs of one expert (an h16 tile holding at most 8
// runs the 8-pair code, else the 16-pair code; the others' tiles holding at most 32 the 32-pair code, at most 64
// the 64-pair code), 8 warps as WM (rows) × 8 / WM (pairs), WM = 8: each warp one m16 tile of rows (each code
// decoded once) and NT n8 tiles. K steps of 64 (two scale blocks) through an STAGES-deep cp.async ring: codes
// as [block][row][16 bytes] (a warp's 4-byte reads hit 32 banks), x as rows of H_XLD halves (ldmatrix's 8 rows
// at a stride of 144 bytes hit distinct banks). x is stored in the K order of moe_xsplit's slices (moe.cu's f16
// kernels), so one ldmatrix.x4 gives two n8 tiles' B fragments for the codes' A fragments (ldmatrix.x2 one).
// moe_xhalf: xh[r * k + L] (f16, L in that order) and xinv[r] = the row's scale inverse. One warp per row.
// moe_{gate_up,down}_fp4_h{16,64,128}: grid x = tiles of 16 / 64 / 128 pairs (find_tile), y = ceil(rows / 128).
//   Block: 256.
//   gate_up writes act as f16 in the same order (act_half), scaled by act_split, and act_scales[pair] =
//   1 / act_split: what down reads.
#define H_ROWS 128
#define H_XLD 72
// A loader's x chunk past the tile's count (read as zeros).
#define H_NO_X 0xffffffffu

struct XHalfParams {
    const float* x;
    u16* xh;
    float* xinv;
    int rows;
    int k;
};

// The element of a 32-element block at logical position l (0..31) of the MMA K order (moe_store_pair in
// moe_common.cu writes act in this order with its inverse).
static __device__ __forceinline__ int half_order_element(int l) {
    int s = l >> 4, h = (l >> 3) & 1, t = (l >> 1) & 3, j = l & 1;
    return 8 * t + 2 * s + h + 4 * j;
}

extern "C" __global__ void moe_xhalf(const XHalfParams p) {
    grid_dep_sync();
    int lane = threadIdx.x & 31;
    i64 row = (i64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= p.rows) return;
    const float* x = p.x + row * p.k;
    float m = 0.0f;
    for (int i = 4 * lane; i < p.k; i += 128) {
        float4 v = *(const float4*)(x + i);
        m = fmaxf(fmaxf(m, fmaxf(fabsf(v.x), fabsf(v.y))), fmaxf(fabsf(v.z), fabsf(v.w)));
    }
    #pragma unroll
    for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    // As moe_xsplit: e clamped to [15, 254] keeps both powers of two normal; NaN and inf pass through.
    int e = f16_range_exponent(m);
    float s = pow2_biased(268 - e);
    u32* out = (u32*)(p.xh + row * p.k);
    for (int u = lane; u < p.k / 2; u += 32) {
        int base = (2 * u) & ~31, e0 = base + half_order_element((2 * u) & 31);
        out[u] = f16x2(x[e0] * s, x[e0 + 4] * s);
    }
    if (lane == 0) p.xinv[row] = pow2_biased(e - 14);
}

template <int BN, int STAGES>
struct Fp4HalfSmem {
    u16 x[STAGES][BN * H_XLD];
    u32 w[STAGES][2][H_ROWS * 4];
    u32 red[8];
};

// The largest E8M0 scale of rows [r0, r_end) of the expert whose scales start at sexp, by the whole block.
static __device__ int tile_max_scale(const ExpertParams& p, const u8* sexp, int r0, int r_end, int nkb, u32* red) {
    u32 m = 0;
    i64 n = (i64)(r_end - r0) * nkb;
    const u8* first = sexp + (i64)r0 * p.w.row_scales;
    if (p.w.row_scales == nkb && (((u64)first | (u64)n) & 3) == 0) {
        const u32* s = (const u32*)first;
        for (i64 i = threadIdx.x; i < n / 4; i += blockDim.x) m = __vmaxu4(m, s[i]);
        m = max(max(m & 0xffu, (m >> 8) & 0xffu), max((m >> 16) & 0xffu, m >> 24));
    } else {
        for (i64 i = threadIdx.x; i < n; i += blockDim.x) m = max(m, (u32)first[(i / nkb) * p.w.row_scales + i % nkb]);
    }
    #pragma unroll
    for (int o = 16; o > 0; o >>= 1) m = max(m, __shfl_xor_sync(0xffffffffu, m, o));
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = m;
    __syncthreads();
    u32 r = red[0];
    #pragma unroll
    for (int w = 1; w < 8; w++) r = max(r, red[w]);
    return (int)r;
}

static __device__ __forceinline__ u32 hmul2(u32 a, u32 b) {
    u32 d;
    asm("mul.rn.f16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
    return d;
}

// The f16x2 factor 2^(s - max_s + 15) (both halves) for scale s, as biased exponent d = s + off with off =
// 30 - max_s; zero when d <= 0 (see the top of this section).
static __device__ __forceinline__ u32 half_factor(u32 s, int off) {
    int d = (int)s + off;
    return d > 0 ? (u32)d * 0x04000400u : 0u;
}

// half_factor as max(s + off, 0) · 0x04000400: the same value, one VIADDMNMX on sm_90 (the h16 loop; the larger
// tiles keep half_factor, the form they were register-allocated with).
static __device__ __forceinline__ u32 half_factor_max(u32 s, int off) {
    return (u32)max((int)s + off, 0) * 0x04000400u;
}

// One tile of `count` <= 16·NT pairs of expert e from `start`, in shared memory laid out for BN pairs. PAIRED:
// every row's scales start at an even byte and hold an even number of blocks, so a K step's two scale bytes
// are one 16-bit load (the 20b shapes; else two byte loads). The h16 loaders advance their sources and count
// down what is left of their column instead of recomputing addresses and bounds every step (the loop was 214
// instructions a warp per K step of 64 at NT = 2, 75 of them loads and their addresses: bench/NOTES.md).
template <int WM, int NT, int GATE_UP, int BN, int STAGES, bool PAIRED>
static __device__ __forceinline__ void fp4_half_tile(const ExpertParams& p, int e, int start, int count,
                                     Fp4HalfSmem<BN, STAGES>& sm) {
    // XC: 16-byte x chunks per thread and stage (8 per pair slot the code reads; threads past those load zeros).
    const int WN = 8 / WM, MT = 8 / WM, XC = (NT * 8 * WN * 8 + 255) / 256;
    int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t = lane & 3;
    int wm = warp / WN, wn = warp % WN;
    int n_rows = GATE_UP ? 2 * p.n_out : p.n_out, nkb = p.k / 32, nks = (nkb + 1) / 2;
    int r0 = blockIdx.y * H_ROWS;
    u32 row_bytes = (u32)(p.w.ld / 2);
    const u8* wexp = (const u8*)p.w.data + (i64)e * n_rows * row_bytes;
    const u8* sexp = (const u8*)p.w.scales + (i64)e * n_rows * p.w.row_scales;
    const u16* xh = (const u16*)p.xs;
    // Loader roles: x chunk c = tid + 256 j (pair slot c / 8, 16-byte part c % 8; slots past the count read
    // zeros), and the 16 code bytes of row tid / 2, scale block tid % 2 of the step. Element offsets into xh
    // (32 bits: rows * k < 2^32, checked by the host) keep registers for the loop. STREAM (h16): each loader
    // advances its offset and counts down what is left of its column (x: elements from part tid % 8 on, the
    // same for every j; codes: blocks) instead of recomputing addresses and bounds each step; the larger tiles
    // recompute them (two more registers made h64 spill on sm_80).
    constexpr bool STREAM = BN == 16;
    u32 xoff[XC];
    #pragma unroll
    for (int j = 0; j < XC; j++) {
        int c = tid + 256 * j, slot = c >> 3, part = c & 7;
        xoff[j] = slot < count ? (u32)(pair_row(p, e, start + slot) * p.k + part * 8) : H_NO_X;
    }
    // STREAM: which chunks hold a pair (bit j). A chunk without one, or past K, asks cp.async for 0 source
    // bytes (PTX: the 16 destination bytes are zero-filled); its advanced address may then point past the row.
    u32 x_live = 0;
    int x_left = 0, c_left = 0;
    if constexpr (STREAM) {
        #pragma unroll
        for (int j = 0; j < XC; j++) {
            x_live |= (u32)(xoff[j] != H_NO_X) << j;
            if (xoff[j] == H_NO_X) xoff[j] = 0;
        }
        x_left = p.k - (tid & 7) * 8;
    }
    u32 xdst0 = smem_addr(&sm.x[0][(tid >> 3) * H_XLD + (tid & 7) * 8]);
    int crow = tid >> 1, ckk = tid & 1;
    bool clive = r0 + crow < n_rows;
    const u8* csrc = wexp + (i64)min(r0 + crow, n_rows - 1) * row_bytes + ckk * 16;
    if constexpr (STREAM) c_left = clive ? nkb - ckk : 0;
    u32 cdst = smem_addr(&sm.w[0][ckk][crow * 4]);
    const u32 x_stage = sizeof(sm.x[0]), w_stage = sizeof(sm.w[0]);
    // Stage ks % STAGES of the ring gets K step ks (called for ks = 0, 1, 2, ... in order).
    auto load_stage = [&](int ks) {
        if (ks < nks) {
            int st = ks % STAGES;
            #pragma unroll
            for (int j = 0; j < XC; j++) {
                // Tiles of 16 pairs have fewer x chunks than threads.
                if (BN * 8 < 256 && tid + 256 * j >= BN * 8) break;
                if constexpr (STREAM) {
                    bool live = (x_live >> j & 1) && x_left > 0;
                    u32 dst = xdst0 + st * x_stage + j * 32 * H_XLD * 2;
                    cp_async16(dst, xh + xoff[j], live ? 16 : 0);
                    xoff[j] += 64;
                } else {
                    bool live = xoff[j] != H_NO_X && ks * 64 + (tid & 7) * 8 < p.k;
                    u32 dst = xdst0 + st * x_stage + j * 32 * H_XLD * 2;
                    cp_async16(dst, live ? xh + xoff[j] + ks * 64 : xh, live ? 16 : 0);
                }
            }
            if constexpr (STREAM) {
                x_left -= 64;
                bool live = c_left > 0;
                cp_async16(cdst + st * w_stage, live ? csrc : wexp, live ? 16 : 0);
                csrc += 32;
                c_left -= 2;
            } else {
                bool in_k = 2 * ks + ckk < nkb;
                cp_async16(cdst + st * w_stage, in_k ? csrc + ks * 32 : csrc, clive && in_k ? 16 : 0);
            }
        }
        cp_async_commit();
    };
    #pragma unroll
    for (int s = 0; s < STAGES - 1; s++) load_stage(s);
    int max_s = tile_max_scale(p, sexp, r0, min(r0 + H_ROWS, n_rows), nkb, sm.red);
    int off = 30 - max_s;
    // This thread's weight rows (A fragments and C rows): m16 tile mt, half h.
    int rows[MT][2];
    // Scale offsets within the expert (32 bits: registers), and a step's two scale bytes per row as one word.
    u32 srow[MT][2];
    #pragma unroll
    for (int mt = 0; mt < MT; mt++)
        #pragma unroll
        for (int h = 0; h < 2; h++) {
            rows[mt][h] = wm * 16 * MT + mt * 16 + g + 8 * h;
            srow[mt][h] = (u32)(min(r0 + rows[mt][h], n_rows - 1) * p.w.row_scales);
        }
    auto load_scales = [&](int ks, u32 (&sc)[MT][2]) {
        #pragma unroll
        for (int mt = 0; mt < MT; mt++)
            #pragma unroll
            for (int h = 0; h < 2; h++) {
                if constexpr (PAIRED) sc[mt][h] = ((const u16*)(sexp + srow[mt][h]))[ks];
                else sc[mt][h] = (u32)sexp[srow[mt][h] + min(2 * ks, nkb - 1)] |
                                 (u32)sexp[srow[mt][h] + min(2 * ks + 1, nkb - 1)] << 8;
            }
    };
    u32 sc[MT][2];
    load_scales(0, sc);
    float acc[MT][NT][4];
    #pragma unroll
    for (int mt = 0; mt < MT; mt++)
        #pragma unroll
        for (int nt = 0; nt < NT; nt++)
            #pragma unroll
            for (int i = 0; i < 4; i++) acc[mt][nt][i] = 0.0f;
    // ldmatrix.x4 rows: lanes 0-7 / 8-15 / 16-23 / 24-31 address matrices (pairs 0-7, k 0-7), (0-7, 8-15),
    // (8-15, 0-7), (8-15, 8-15) of a 16-pair group: the B fragments (b0, b1) of two n8 tiles.
    int ld_pair = wn * NT * 8 + (lane & 7) + ((lane >> 4) << 3), ld_k = ((lane >> 3) & 1) * 8;
    for (int ks = 0; ks < nks; ks++) {
        cp_async_wait<STAGES - 2>();
        __syncthreads();
        load_stage(ks + STAGES - 1);
        u32 sc_next[MT][2];
        load_scales(min(ks + 1, nks - 1), sc_next);
        int st = ks % STAGES;
        u32 xbase = smem_addr(&sm.x[st][ld_pair * H_XLD + ld_k]);
        #pragma unroll
        for (int kk = 0; kk < 2; kk++) {
            u32 q[MT][2], f[MT][2];
            #pragma unroll
            for (int mt = 0; mt < MT; mt++)
                #pragma unroll
                for (int h = 0; h < 2; h++) {
                    q[mt][h] = sm.w[st][kk][rows[mt][h] * 4 + t];
                    if constexpr (STREAM) f[mt][h] = half_factor_max((sc[mt][h] >> (8 * kk)) & 0xffu, off);
                    else f[mt][h] = half_factor((sc[mt][h] >> (8 * kk)) & 0xffu, off);
                }
            #pragma unroll
            for (int s = 0; s < 2; s++) {
                u32 a[MT][4];
                #pragma unroll
                for (int mt = 0; mt < MT; mt++) {
                    a[mt][0] = hmul2(s ? e2m1x2<2>(q[mt][0]) : e2m1x2<0>(q[mt][0]), f[mt][0]);
                    a[mt][1] = hmul2(s ? e2m1x2<2>(q[mt][1]) : e2m1x2<0>(q[mt][1]), f[mt][1]);
                    a[mt][2] = hmul2(s ? e2m1x2<3>(q[mt][0]) : e2m1x2<1>(q[mt][0]), f[mt][0]);
                    a[mt][3] = hmul2(s ? e2m1x2<3>(q[mt][1]) : e2m1x2<1>(q[mt][1]), f[mt][1]);
                }
                if (NT == 1) {
                    u32 b[2];
                    ldsm_x2(xbase + (kk * 2 + s) * 16 * 2, b);
                    #pragma unroll
                    for (int mt = 0; mt < MT; mt++)
                        mma_f16(acc[mt][0], a[mt][0], a[mt][1], a[mt][2], a[mt][3], b[0], b[1]);
                }
                #pragma unroll
                for (int np = 0; np < NT / 2; np++) {
                    u32 b[4];
                    ldsm_x4(xbase + (np * 16 * H_XLD + (kk * 2 + s) * 16) * 2, b);
                    #pragma unroll
                    for (int mt = 0; mt < MT; mt++) {
                        mma_f16(acc[mt][2 * np], a[mt][0], a[mt][1], a[mt][2], a[mt][3], b[0], b[1]);
                        mma_f16(acc[mt][2 * np + 1], a[mt][0], a[mt][1], a[mt][2], a[mt][3], b[2], b[3]);
                    }
                }
            }
        }
        #pragma unroll
        for (int mt = 0; mt < MT; mt++)
            #pragma unroll
            for (int h = 0; h < 2; h++) sc[mt][h] = sc_next[mt][h];
    }
    cp_async_wait<0>();
    // 2^(max_s - 128); the OCP MX scale 255 is NaN.
    float wsc = max_s == 255 ? __int_as_float(0x7fffffff)
              : max_s >= 2   ? __uint_as_float((u32)(max_s - 1) << 23)
                             : __uint_as_float(1u << (21 + max_s));
    float xsv[NT][2];
    #pragma unroll
    for (int nt = 0; nt < NT; nt++)
        #pragma unroll
        for (int j = 0; j < 2; j++) {
            int slot = wn * NT * 8 + nt * 8 + 2 * t + j;
            xsv[nt][j] = slot < count ? wsc * p.xscale[pair_row(p, e, start + slot)] : 0.0f;
        }
    // C fragment: rows g (i < 2) and g + 8 of the m16 tile, pair slots 2t, 2t + 1 of the n8 tile.
    #pragma unroll
    for (int mt = 0; mt < MT; mt++)
        #pragma unroll
        for (int nt = 0; nt < NT; nt++)
            #pragma unroll
            for (int h = 0; h < 2; h++) {
                int row = r0 + rows[mt][h];
                float v0 = acc[mt][nt][2 * h] * xsv[nt][0], v1 = acc[mt][nt][2 * h + 1] * xsv[nt][1];
                int slot = wn * NT * 8 + nt * 8 + 2 * t;
                moe_store_fragment<GATE_UP>(p, e, start, count, n_rows, row, slot, v0, v1);
            }
}

// A tile of up to BN pairs; one holding at most 32 runs the 32-pair code (half the MMAs and x loads), one of at
// most 64 the 64-pair code. Measured on the H200 (op bench, one 20b layer, experts µs at T = 512 / 2048): warps
// 8 (rows) × 1 at two blocks per SM 927 / 2,719; 4 × 2 (each code decoded by two warps) 1,046 / 3,004; 8 × 1
// at three blocks per SM (80 registers) 838 / 2,407, kept. BN = 128 (two stages: 45 KB of shared memory)
// decodes each code once per 128 pairs instead of 64, for long prompts. BN = 16 (batched decode, ≈ 8 pairs an
// expert at 64 streams) reads each expert's weights once for up to 16 pairs and runs one n8 tile when the tile
// holds at most 8: T = 64 306 µs against 362 for h64 and 408 for the exact 8-pair tiles; its 64 registers let
// four blocks share an SM (four stages measured equal to six). ncu at T = 64 (gate_up): 0.72 issued per
// scheduler, SM 66% busy, DRAM 24%. Its streaming loaders and paired scale loads took the loop from 214 to 156
// SASS instructions a warp per K step (8-pair code 204 → 150; 80 of them the E2M1 decode and scale multiply):
// T = 64 282 µs, batch64 +5% (bench/NOTES.md, session 17), less than the instructions saved.
template <int GATE_UP, int BN, int STAGES>
static __device__ void expert_fp4_half_impl(const ExpertParams& p) {
    __shared__ __align__(16) Fp4HalfSmem<BN, STAGES> sm;
    int e, start;
    if (!find_tile(p.counts, p.n_experts, BN, blockIdx.x, e, start)) return;
    int count = min(p.counts[e] - start, BN);
    if (BN == 16) {
        // A uniform choice per block (a choice per load made h64 / h128 spill on sm_80): the 20b shapes pair.
        bool paired = ((p.w.row_scales | (p.k / 32) | (int)(u64)p.w.scales) & 1) == 0;
        if (paired && count <= 8) fp4_half_tile<8, 1, GATE_UP, BN, STAGES, true>(p, e, start, count, sm);
        else if (paired) fp4_half_tile<8, 2, GATE_UP, BN, STAGES, true>(p, e, start, count, sm);
        else if (count <= 8) fp4_half_tile<8, 1, GATE_UP, BN, STAGES, false>(p, e, start, count, sm);
        else fp4_half_tile<8, 2, GATE_UP, BN, STAGES, false>(p, e, start, count, sm);
    } else if (count <= 32) fp4_half_tile<8, 4, GATE_UP, BN, STAGES, false>(p, e, start, count, sm);
    else if (BN == 64 || count <= 64) fp4_half_tile<8, 8, GATE_UP, BN, STAGES, false>(p, e, start, count, sm);
    else fp4_half_tile<8, BN / 8, GATE_UP, BN, STAGES, false>(p, e, start, count, sm);
}

// FP4_HALF_ENTRY(SUFFIX, BN, STAGES, MINB): gate_up and down of the f16-activation GEMM (MINB blocks per SM).
#define FP4_HALF_ENTRY(SUFFIX, BN, STAGES, MINB) \
    extern "C" __global__ void __launch_bounds__(256, MINB) moe_gate_up_fp4_##SUFFIX(const ExpertParams p) { grid_dep_sync(); expert_fp4_half_impl<1, BN, STAGES>(p); } \
    extern "C" __global__ void __launch_bounds__(256, MINB) moe_down_fp4_##SUFFIX(const ExpertParams p) { grid_dep_sync(); expert_fp4_half_impl<0, BN, STAGES>(p); }

FP4_HALF_ENTRY(h16, 16, 4, 4)
FP4_HALF_ENTRY(h64, 64, 3, 3)
FP4_HALF_ENTRY(h128, 128, 2, 2)
