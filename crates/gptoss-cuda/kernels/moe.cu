// moe.cu — the MoE block's experts (spec §1.3 "MoE block"), grouped by expert so each expert's weights are
// decoded once per tile of its tokens, and only the chosen experts get blocks. A (token, choice) pair
// p = t*top_k + s.
// moe_group: counts[e], offsets[e] and list (pairs grouped by expert; the order inside an expert is
//   arbitrary: every pair's result is computed on its own) from experts i32 [n_pairs]. Grid: 1 block of 1024.
// Tiles: expert e's pairs in tiles of bm (experts ascending); block y of a launch takes tile y (find_tile),
//   blocks past the last tile exit. The host launches ceil(pairs / bm) + min(E, pairs) rows of blocks at most.
// moe_gate_up_<fmt>_t{1,8}: act[p, i] = swiglu_oai(h[t]·gate_up_e[2i] + b[2i], h[t]·gate_up_e[2i+1] + b[2i+1]).
//   gate_up packed [E*2I, ld] (expert e's rows at e*2I), bias f32 [E*2I] or null; act f32 [n_pairs, I].
// moe_down_<fmt>_t{1,8}: y[p, j] = act[p]·down_e[j] + b_e[j]; down packed [E*H, ld], bias [E*H] or null.
//   Split-K over tiles of TT pairs (bm = TT): grid x = ceil(rows / (groups*MOE_NR)), y = tiles. Block: 256.
// moe_gate_up_mma_<fmt>, moe_down_mma_<fmt>: tensor-core tiles (mma.cu) of 64 pairs × 128 weight rows,
//   bm = 64 (the _mma32_ entries: 32 pairs, bm = 32): grid x = ceil(rows / 128), y = tiles. Block: 256.
// moe_combine: out[t, j] = Σ_s w[t, s] y[(t, s), j], added in ascending expert order like the CPU backend (a
//   token's experts are distinct, as top-k gives them; pairs of an expert outside [0, n_experts) are skipped).
//   Grid: ceil(n_tok*H / 256) blocks of 256.
// The x split, ExpertParams, find_tile and the gate_up epilogue live in moe_common.cu (shared with moe_dot.cu,
// the integer dot-product kernels decode steps take). Minimum arch: sm_80. Launched from src/ops/moe.rs.
extern "C" __global__ void moe_xsplit(const XSplitParams p) {
    grid_dep_sync();
    xsplit_unit(p, (i64)blockIdx.x * blockDim.x + threadIdx.x);
}

struct GroupParams {
    const int* experts;
    int* counts;
    int* offsets;
    int* list;
    int n_pairs;
    int n_experts;
    // The MXFP4 path's split of the hidden states, done here for small steps (split.rows = 0: none).
    XSplitParams split;
};

extern "C" __global__ void __launch_bounds__(1024) moe_group(const GroupParams p) {
    grid_dep_sync();
    group_pairs(p.experts, p.n_pairs, p.n_experts, p.counts, p.offsets, p.list);
    split_rows(p.split);
}

template <int F, int CE, int TT, int GATE_UP>
static __device__ void expert_rows(const ExpertParams& p, const float* tab, float* scratch, float* res) {
    int e, start;
    if (!find_tile(p.counts, p.n_experts, TT, blockIdx.y, e, start)) return;
    int count = min(p.counts[e] - start, TT);
    auto xrows = [&](const float** xs) {
        #pragma unroll
        for (int t = 0; t < TT; t++) xs[t] = pair_x(p, e, start + min(t, count - 1));
    };
    int n_rows = GATE_UP ? 2 * p.n_out : p.n_out;
    i64 base = (i64)e * n_rows, r0 = (i64)blockIdx.x * p.groups * MOE_NR(TT);
    block_rowdot<F, CE, TT, MOE_NR(TT)>(p.w, tab, base + r0, base + n_rows - 1, p.groups, xrows, p.k, scratch, res);
    int step = GATE_UP ? 2 : 1;
    for (int o = threadIdx.x; o < p.groups * MOE_NR(TT) / step * TT; o += blockDim.x) {
        int ro = o / TT * step, t = o % TT;
        if (r0 + ro < n_rows && t < count)
            moe_store<GATE_UP>(p, e, start + t, (int)(r0 + ro), res[ro * TT + t], GATE_UP ? res[(ro + 1) * TT + t] : 0.0f);
    }
}

template <int F, int TT, int GATE_UP>
static __device__ void expert_impl(const ExpertParams& p) {
    __shared__ float tab[16];
    __shared__ float scratch[8 * MOE_NR(TT) * TT];
    __shared__ float res[8 * MOE_NR(TT) * TT];
    load_table(p.w, tab);
    if constexpr (F == WF_LUT4_E8M0 || F == WF_LUT4_F32) {
        if (p.w.ld % 32 == 0 && p.w.block % 32 == 0) expert_rows<F, 32, TT, GATE_UP>(p, tab, scratch, res);
        else expert_rows<F, 8, TT, GATE_UP>(p, tab, scratch, res);
    } else {
        expert_rows<F, F == WF_Q8 ? 16 : 8, TT, GATE_UP>(p, tab, scratch, res);
    }
}

template <int F, int GATE_UP, int MT>
static __device__ void expert_mma_impl(const ExpertParams& p) {
    __shared__ MmaSmem<MMA_XPARTS> sm;
    const int bm = 32 * MT;
    int e, start;
    if (!find_tile(p.counts, p.n_experts, bm, blockIdx.y, e, start)) return;
    int count = min(p.counts[e] - start, bm);
    const float* xrow[2] = {nullptr, nullptr};
    #pragma unroll
    for (int j = 0; j < MT; j++) {
        int m = (threadIdx.x >> 3) + 32 * j;
        xrow[j] = m < count ? pair_x(p, e, start + m) : nullptr;
    }
    int n_rows = GATE_UP ? 2 * p.n_out : p.n_out, n0 = blockIdx.x * MMA_BN;
    float acc[MT][4][4];
    mma_tile<F, MT, MMA_XPARTS>(p.w, xrow, (i64)e * n_rows + n0, n_rows - n0, p.k, 0, p.k, sm, acc);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, wm = warp >> 2, wn = warp & 3;
    #pragma unroll
    for (int mt = 0; mt < MT; mt++)
        #pragma unroll
        for (int nt = 0; nt < 4; nt++)
            #pragma unroll
            for (int h = 0; h < 2; h++) {
                int m = wm * 16 * MT + mt * 16 + (lane >> 2) + h * 8;
                int n = n0 + wn * 32 + nt * 8 + 2 * (lane & 3);
                if (m >= count || n >= n_rows) continue;
                if constexpr (GATE_UP) {
                    moe_store<1>(p, e, start + m, n, acc[mt][nt][2 * h], acc[mt][nt][2 * h + 1]);
                } else {
                    moe_store<0>(p, e, start + m, n, acc[mt][nt][2 * h], 0.0f);
                    if (n + 1 < n_rows) moe_store<0>(p, e, start + m, n + 1, acc[mt][nt][2 * h + 1], 0.0f);
                }
            }
}

#define MOE_ENTRY(NAME, F) \
    extern "C" __global__ void __launch_bounds__(256, 2) moe_gate_up_##NAME##_t1(const ExpertParams p) { grid_dep_sync(); expert_impl<F, 1, 1>(p); } \
    extern "C" __global__ void __launch_bounds__(256, 1) moe_gate_up_##NAME##_t8(const ExpertParams p) { grid_dep_sync(); expert_impl<F, 8, 1>(p); } \
    extern "C" __global__ void __launch_bounds__(256, 2) moe_down_##NAME##_t1(const ExpertParams p) { grid_dep_sync(); expert_impl<F, 1, 0>(p); } \
    extern "C" __global__ void __launch_bounds__(256, 1) moe_down_##NAME##_t8(const ExpertParams p) { grid_dep_sync(); expert_impl<F, 8, 0>(p); }

// MINB: blocks per SM the tensor-core kernel is register-limited for (2 = 128 registers; the three-part
// X split of mma.cu needs more than the 80 registers of 3 blocks).
#define MOE_MMA_ENTRY(NAME, F, MINB) \
    extern "C" __global__ void __launch_bounds__(256, MINB) moe_gate_up_mma_##NAME(const ExpertParams p) { grid_dep_sync(); expert_mma_impl<F, 1, 2>(p); } \
    extern "C" __global__ void __launch_bounds__(256, MINB) moe_down_mma_##NAME(const ExpertParams p) { grid_dep_sync(); expert_mma_impl<F, 0, 2>(p); } \
    extern "C" __global__ void __launch_bounds__(256, MINB) moe_gate_up_mma32_##NAME(const ExpertParams p) { grid_dep_sync(); expert_mma_impl<F, 1, 1>(p); } \
    extern "C" __global__ void __launch_bounds__(256, MINB) moe_down_mma32_##NAME(const ExpertParams p) { grid_dep_sync(); expert_mma_impl<F, 0, 1>(p); }

MOE_ENTRY(f32, WF_F32)
MOE_ENTRY(bf16, WF_BF16)
MOE_ENTRY(f16, WF_F16)
MOE_ENTRY(q8, WF_Q8)
MOE_ENTRY(lut4e8m0, WF_LUT4_E8M0)
MOE_ENTRY(lut4f32, WF_LUT4_F32)
MOE_MMA_ENTRY(bf16, WF_BF16, 2)
MOE_MMA_ENTRY(q8, WF_Q8, 2)
MOE_MMA_ENTRY(lut4e8m0, WF_LUT4_E8M0, 2)
MOE_MMA_ENTRY(lut4f32, WF_LUT4_F32, 2)

// ---- MXFP4 experts on f16 tensor cores, for 1–16 pairs per expert (decode and batched decode) ----
// An E2M1 code c is exactly the f16 with bits (c & 7) << 9 | (c & 8) << 12, worth E2M1(c) · 2^-14
// (subnormals included), so MXFP4 weights go to `mma.sync` f16 unchanged and the E8M0 scale multiplies each
// 32-element block's partial sum in f32. x is split per (row, 32-element block) by moe_xsplit: scaled by a
// power of two that puts the block's largest |x| in [2^14, 2^15), then x = hi + lo in two f16 (22 bits; the
// rounding residual of hi is exact in f32). Each block's 4 MMAs (2 k16 slices × lo, hi) start from a zero
// accumulator and their sum is added to the running f32 sum with the weight and x scales (the tensor cores
// truncate long accumulations: issue 16). Weights are read straight from global memory (no reuse to stage).
//
// Fragment layout. Thread (g = lane / 4, t = lane % 4) loads 4 bytes at byte 4t of a row's 16-byte block:
// codes n0..n7 of the block's elements 8t..8t+7. A dot product is free to permute k as long as weights and x
// agree, so slice s ∈ {0, 1} of the block takes, for the MMA's logical columns (2t, 2t+1) and (2t+8, 2t+9),
// the elements (8t+2s, 8t+2s+4) and (8t+2s+1, 8t+2s+5): nibbles i and i+4 of a word decode together into one
// f16x2 register. moe_xsplit writes x in that order, so each thread reads its B fragments with two 16-byte
// loads per block.
//
// moe_xsplit: xs[((r * nkb + kb) * 4 + t) * 8 + j] (u32 of f16x2: j = 0..3 the hi parts of slices 0, 1 as
//   (b0, b1) each, j = 4..7 the lo parts), xscale[r * nkb + kb] = 2^(e-127), the block's largest |x| in
//   [2^(e-127), 2^(e-126)). One thread per (row, block, t). Needs k % 32 == 0.
// moe_{gate_up,down}_fp4_p{8,16}: tiles of 8 or 16 pairs of one expert (grid x = tiles, find_tile), 32
//   weight rows per block (16·MT; grid y); the 8 warps split the K blocks (warp w takes blocks w, w + 8, ...) and
//   their sums are added in warp order through shared memory (deterministic). A p16 tile of at most 8 pairs
//   runs p8's code. Block: 256.

// c = A·B from a zero accumulator (no register moves to clear c first).
static __device__ __forceinline__ void mma_f16_first(float c[4], u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%10,%10,%10,%10};"
        : "=f"(c[0]), "=f"(c[1]), "=f"(c[2]), "=f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1), "f"(0.0f));
}

// U K blocks of a warp's loads: codes and scales of its 2·MT rows, x fragments and scales of its pairs.
template <int NB, int U, int MT>
struct Fp4Stage {
    u32 q[U][MT][2];
    u8 sc[U][MT][2];
    uint4 xb[U][NB][2];
    float xsv[U][NB][2];
};

#define FP4_NO_X 0xffffffffu

struct Fp4Rows {
    const u8* wbase;
    const u8* sbase;
    u32 row_bytes;
    u32 row_scales;
    // Offsets into xs (in uint4; FP4_NO_X: a pair slot past the tile's count) and xscale: 32 bits each.
    const uint4* xs;
    const float* xscale;
    u32 xrow[2];
    u32 xcol[2][2];
};

template <int NB, int U, int MT>
static __device__ __forceinline__ void fp4_load(const Fp4Rows& r, const u32 (*rows)[2], int kb0, int nkb,
                                                Fp4Stage<NB, U, MT>& st) {
    #pragma unroll
    for (int u = 0; u < U; u++) {
        int kb = kb0 + 8 * u;
        bool ok = kb < nkb;
        #pragma unroll
        for (int mt = 0; mt < MT; mt++)
            #pragma unroll
            for (int h = 0; h < 2; h++) {
                st.q[u][mt][h] = ok ? *(const u32*)(r.wbase + rows[mt][h] * r.row_bytes + kb * 16) : 0u;
                st.sc[u][mt][h] = ok ? r.sbase[rows[mt][h] * r.row_scales + kb] : (u8)0;
            }
        #pragma unroll
        for (int nb = 0; nb < NB; nb++) {
            uint4 z = make_uint4(0u, 0u, 0u, 0u);
            bool live = ok && r.xrow[nb] != FP4_NO_X;
            st.xb[u][nb][0] = live ? r.xs[r.xrow[nb] + kb * 8] : z;
            st.xb[u][nb][1] = live ? r.xs[r.xrow[nb] + kb * 8 + 1] : z;
            #pragma unroll
            for (int j = 0; j < 2; j++) st.xsv[u][nb][j] = ok ? r.xscale[r.xcol[nb][j] + kb] : 0.0f;
        }
    }
}

template <int NB, int U, int MT>
static __device__ __forceinline__ void fp4_compute(const Fp4Stage<NB, U, MT>& st, float (*acc)[NB][4]) {
    #pragma unroll
    for (int u = 0; u < U; u++)
        #pragma unroll
        for (int mt = 0; mt < MT; mt++) {
            u32 q0 = st.q[u][mt][0], q1 = st.q[u][mt][1];
            u32 a00 = e2m1x2<0>(q0), a01 = e2m1x2<0>(q1), a02 = e2m1x2<1>(q0), a03 = e2m1x2<1>(q1);
            u32 a10 = e2m1x2<2>(q0), a11 = e2m1x2<2>(q1), a12 = e2m1x2<3>(q0), a13 = e2m1x2<3>(q1);
            float ws0 = e8m0_to_f32(st.sc[u][mt][0]), ws1 = e8m0_to_f32(st.sc[u][mt][1]);
            #pragma unroll
            for (int nb = 0; nb < NB; nb++) {
                const uint4& hi = st.xb[u][nb][0];
                const uint4& lo = st.xb[u][nb][1];
                float c[4];
                mma_f16_first(c, a00, a01, a02, a03, lo.x, lo.y);
                mma_f16(c, a10, a11, a12, a13, lo.z, lo.w);
                mma_f16(c, a00, a01, a02, a03, hi.x, hi.y);
                mma_f16(c, a10, a11, a12, a13, hi.z, hi.w);
                float x0 = st.xsv[u][nb][0], x1 = st.xsv[u][nb][1];
                acc[mt][nb][0] += c[0] * (ws0 * x0);
                acc[mt][nb][1] += c[1] * (ws0 * x1);
                acc[mt][nb][2] += c[2] * (ws1 * x0);
                acc[mt][nb][3] += c[3] * (ws1 * x1);
            }
        }
}

// NB n8 tiles of pairs, U K blocks per load stage, MT m16 tiles of weight rows per warp, for one tile of
// `count` pairs of expert e from `start`. `red` holds 8 × MT·NB·4 × 32 floats, `outs` 16·MT rows of 8·NB + 1.
// (Measured on the H200 and dropped: 128-byte L2 fetches, a register double buffer of the next stage, MT = 1
// or 4.)
template <int NB, int U, int MT, int GATE_UP>
static __device__ void fp4_tile_rows(const ExpertParams& p, int e, int start, int count, float* red, float* outs) {
    const int acc_n = MT * NB * 4, outs_ld = 8 * NB + 1;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    int n_rows = GATE_UP ? 2 * p.n_out : p.n_out, nkb = p.k / 32;
    // 32-bit offsets within the expert keep the registers for loads in flight.
    Fp4Rows r;
    r.wbase = (const u8*)p.w.data + (i64)e * n_rows * (p.w.ld / 2) + 4 * t;
    r.sbase = (const u8*)p.w.scales + (i64)e * n_rows * p.w.row_scales;
    r.row_bytes = (u32)(p.w.ld / 2);
    r.xs = (const uint4*)p.xs;
    r.xscale = p.xscale;
    r.row_scales = (u32)p.w.row_scales;
    // B fragments: quad g feeds pair slot nb*8 + g; C columns 2t, 2t+1 are pair slots nb*8 + 2t + j.
    auto x_index = [&](int slot) { return pair_row(p, e, start + min(slot, count - 1)); };
    #pragma unroll
    for (int nb = 0; nb < NB; nb++) {
        r.xrow[nb] = nb * 8 + g < count ? (u32)(x_index(nb * 8 + g) * nkb * 8 + 2 * t) : FP4_NO_X;
        #pragma unroll
        for (int j = 0; j < 2; j++) r.xcol[nb][j] = (u32)(x_index(nb * 8 + 2 * t + j) * nkb);
    }
    // Blocks loop over row tiles (grid y may be smaller than the tiles) so the pair lookups above are paid
    // once per block; the barriers inside keep the shared arrays' reuse ordered.
    for (int r0 = blockIdx.y * 16 * MT; r0 < n_rows; r0 += gridDim.y * 16 * MT) {
        u32 rows[MT][2];
        #pragma unroll
        for (int mt = 0; mt < MT; mt++)
            #pragma unroll
            for (int h = 0; h < 2; h++) rows[mt][h] = (u32)min(r0 + mt * 16 + g + 8 * h, n_rows - 1);
        float acc[MT][NB][4];
        #pragma unroll
        for (int mt = 0; mt < MT; mt++)
            #pragma unroll
            for (int nb = 0; nb < NB; nb++)
                #pragma unroll
                for (int i = 0; i < 4; i++) acc[mt][nb][i] = 0.0f;
        for (int kb0 = warp; kb0 < nkb; kb0 += 8 * U) {
            Fp4Stage<NB, U, MT> st;
            fp4_load<NB, U, MT>(r, rows, kb0, nkb, st);
            fp4_compute<NB, U, MT>(st, acc);
        }
        #pragma unroll
        for (int mt = 0; mt < MT; mt++)
            #pragma unroll
            for (int nb = 0; nb < NB; nb++)
                #pragma unroll
                for (int i = 0; i < 4; i++) red[(warp * acc_n + (mt * NB + nb) * 4 + i) * 32 + lane] = acc[mt][nb][i];
        __syncthreads();
        for (int o = threadIdx.x; o < acc_n * 32; o += blockDim.x) {
            int i = o >> 5, l = o & 31;
            float v = 0.0f;
            #pragma unroll
            for (int w = 0; w < 8; w++) v += red[(w * acc_n + i) * 32 + l];
            int mt = i / (NB * 4), nb = (i / 4) % NB, ci = i & 3;
            int row = mt * 16 + (l >> 2) + 8 * (ci >> 1), slot = nb * 8 + 2 * (l & 3) + (ci & 1);
            outs[row * outs_ld + slot] = v;
        }
        __syncthreads();
        int step = GATE_UP ? 2 : 1;
        for (int o = threadIdx.x; o < 16 * MT / step * 8 * NB; o += blockDim.x) {
            int ro = o / (8 * NB) * step, slot = o % (8 * NB);
            if (r0 + ro < n_rows && slot < count)
                moe_store<GATE_UP>(p, e, start + slot, r0 + ro, outs[ro * outs_ld + slot],
                                   GATE_UP ? outs[(ro + 1) * outs_ld + slot] : 0.0f);
        }
    }
}

// A tile of up to 8·NB pairs. A tile of 16 holding at most 8 (an expert's only tile, in a batched step where
// most experts have a few pairs) runs the 8-pair code: the empty n8 tile's MMAs, x loads and scaling would
// otherwise cost as much as the weights' decode.
template <int NB, int U, int MT, int GATE_UP>
static __device__ void expert_fp4_impl(const ExpertParams& p) {
    __shared__ float red[8 * MT * NB * 4 * 32];
    __shared__ float outs[16 * MT * (8 * NB + 1)];
    int e, start;
    if (!find_tile(p.counts, p.n_experts, 8 * NB, blockIdx.x, e, start)) return;
    int count = min(p.counts[e] - start, 8 * NB);
    if (NB == 2 && count <= 8) fp4_tile_rows<1, 4, MT, GATE_UP>(p, e, start, count, red, outs);
    else fp4_tile_rows<NB, U, MT, GATE_UP>(p, e, start, count, red, outs);
}

// FP4_ENTRY(SUFFIX, NB, U, MT): the gate_up and down kernels of one configuration (2 blocks per SM).
#define FP4_ENTRY(SUFFIX, NB, U, MT) \
    extern "C" __global__ void __launch_bounds__(256, 2) moe_gate_up_fp4_##SUFFIX(const ExpertParams p) { grid_dep_sync(); expert_fp4_impl<NB, U, MT, 1>(p); } \
    extern "C" __global__ void __launch_bounds__(256, 2) moe_down_fp4_##SUFFIX(const ExpertParams p) { grid_dep_sync(); expert_fp4_impl<NB, U, MT, 0>(p); }

FP4_ENTRY(p8, 1, 4, 2)
FP4_ENTRY(p16, 2, 2, 2)

// ---- MXFP4 experts on f16 tensor cores, 32 or 64 pairs per tile (prefill and large batches) ----
// The same arithmetic as expert_fp4_impl (codes as f16, x in two f16 parts, a fresh partial sum per 32-element
// block scaled in f32), laid out as a GEMM: a block owns 128 weight rows × BN pairs of one expert; its 8 warps
// each take 16 rows and all BN pairs (BN / 8 n8 tiles), so every code is decoded once per block and feeds
// BN / 8 n8 tiles. Codes (16 bytes per row and block), x parts (128 bytes per
// pair and block) and x scales stream through a G_STAGES-deep cp.async ring in shared memory, one barrier
// per 32-element block; the E8M0 scales (one byte per row and block) are read one block ahead from global.
// The K order is the one moe_xsplit writes (see above), so a thread reads its B fragments with two 16-byte
// shared loads per n8 tile; a pair's 128 bytes sit at a stride of G_XSTRIDE u32 (36: the 8 lanes of a
// 16-byte load phase hit distinct banks).
// moe_{gate_up,down}_fp4_g{32,64}: grid x = tiles of BN pairs (find_tile), y = ceil(rows / 128). Block: 256.
#define G_ROWS 128
#define G_STAGES 4
#define G_XSTRIDE 36

template <int BN>
struct Fp4GemmSmem {
    u32 x[G_STAGES][BN * G_XSTRIDE];
    float xsc[G_STAGES][BN];
    u32 w[G_STAGES][G_ROWS * 4];
};

// BN pairs per tile; the 8 warps are WM (along the rows: MT = 128 / (16 WM) m16 tiles each) × 8 / WM (along the
// pairs: NW = BN / (8 (8 / WM)) n8 tiles each).
// One tile of `count` <= BN pairs of expert e from `start`, in shared memory laid out for SBN >= BN pairs.
template <int BN, int SBN, int WM, int GATE_UP>
static __device__ void fp4_gemm_tile(const ExpertParams& p, int e, int start, int count, Fp4GemmSmem<SBN>& sm) {
    const int bn = BN, WN = 8 / WM, MT = G_ROWS / (16 * WM), NW = BN / (8 * WN);
    int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t = lane & 3;
    int wm = warp / WN, wn = warp % WN;
    int n_rows = GATE_UP ? 2 * p.n_out : p.n_out, nkb = p.k / 32;
    int r0 = blockIdx.y * G_ROWS;
    u32 row_bytes = (u32)(p.w.ld / 2);
    const u8* wexp = (const u8*)p.w.data + (i64)e * n_rows * row_bytes;
    const u8* sexp = (const u8*)p.w.scales + (i64)e * n_rows * p.w.row_scales;
    // Loader roles: x chunks (slot, 16-byte part) c = tid + 256 j; weight row tid (tid < 128); x scale of
    // slot tid (tid < bn). Pairs past the tile's count and rows past n_rows read zeros.
    const int x_chunks = bn * 8 / 256;
    // u32 offset of the chunk's pair row in xs (FP4_NO_X: a slot past the count, read as zeros).
    u32 xoff[x_chunks];
    #pragma unroll
    for (int j = 0; j < x_chunks; j++) {
        int c = tid + 256 * j, slot = c >> 3, part = c & 7;
        xoff[j] = slot < count ? (u32)(pair_row(p, e, start + slot) * nkb * 32 + part * 4) : FP4_NO_X;
    }
    const float* ssrc = p.xscale;
    int sbytes = 0;
    if (tid < bn && tid < count) {
        ssrc = p.xscale + pair_row(p, e, start + tid) * nkb;
        sbytes = 4;
    }
    u32 sdst = smem_addr(&sm.xsc[0][min(tid, bn - 1)]);
    const u8* wsrc = wexp + (i64)min(r0 + tid, n_rows - 1) * row_bytes;
    int wbytes = tid < G_ROWS && r0 + tid < n_rows ? 16 : 0;
    u32 wdst = smem_addr(&sm.w[0][min(tid, G_ROWS - 1) * 4]);
    const u32 s_stage = sizeof(sm.xsc[0]), w_stage = sizeof(sm.w[0]);
    auto load_stage = [&](int kb) {
        int s = kb % G_STAGES;
        if (kb < nkb) {
            #pragma unroll
            for (int j = 0; j < x_chunks; j++) {
                int c = tid + 256 * j;
                u32 dst = smem_addr(&sm.x[s][(c >> 3) * G_XSTRIDE + (c & 7) * 4]);
                bool live = xoff[j] != FP4_NO_X;
                cp_async16(dst, p.xs + (live ? xoff[j] + kb * 32 : 0u), live ? 16 : 0);
            }
            if (tid < bn) cp_async4(sdst + s * s_stage, ssrc + (sbytes ? kb : 0), sbytes);
            if (tid < G_ROWS) cp_async16(wdst + s * w_stage, wsrc + kb * 16, wbytes);
        }
        cp_async_commit();
    };
    // This thread's weight rows (A fragments): m16 tile mt, half h.
    u32 rows[MT][2];
    #pragma unroll
    for (int mt = 0; mt < MT; mt++)
        #pragma unroll
        for (int h = 0; h < 2; h++) rows[mt][h] = (u32)(wm * 16 * MT + mt * 16 + g + 8 * h);
    const u8* srow[MT][2];
    #pragma unroll
    for (int mt = 0; mt < MT; mt++)
        #pragma unroll
        for (int h = 0; h < 2; h++) srow[mt][h] = sexp + (i64)min(r0 + (int)rows[mt][h], n_rows - 1) * p.w.row_scales;
    float acc[MT][NW][4];
    #pragma unroll
    for (int mt = 0; mt < MT; mt++)
        #pragma unroll
        for (int nb = 0; nb < NW; nb++)
            #pragma unroll
            for (int i = 0; i < 4; i++) acc[mt][nb][i] = 0.0f;
    #pragma unroll
    for (int s = 0; s < G_STAGES - 1; s++) load_stage(s);
    u8 sc[MT][2];
    #pragma unroll
    for (int mt = 0; mt < MT; mt++)
        #pragma unroll
        for (int h = 0; h < 2; h++) sc[mt][h] = srow[mt][h][0];
    for (int kb = 0; kb < nkb; kb++) {
        cp_async_wait<G_STAGES - 2>();
        __syncthreads();
        load_stage(kb + G_STAGES - 1);
        u8 sc_next[MT][2];
        int kn = min(kb + 1, nkb - 1);
        #pragma unroll
        for (int mt = 0; mt < MT; mt++)
            #pragma unroll
            for (int h = 0; h < 2; h++) sc_next[mt][h] = srow[mt][h][kn];
        int s = kb % G_STAGES;
        // Both m16 tiles' A fragments stay live while the n8 tiles' B fragments are read one tile at a time.
        u32 a[MT][8];
        float ws[MT][2];
        #pragma unroll
        for (int mt = 0; mt < MT; mt++) {
            u32 q0 = sm.w[s][rows[mt][0] * 4 + t], q1 = sm.w[s][rows[mt][1] * 4 + t];
            a[mt][0] = e2m1x2<0>(q0); a[mt][1] = e2m1x2<0>(q1); a[mt][2] = e2m1x2<1>(q0); a[mt][3] = e2m1x2<1>(q1);
            a[mt][4] = e2m1x2<2>(q0); a[mt][5] = e2m1x2<2>(q1); a[mt][6] = e2m1x2<3>(q0); a[mt][7] = e2m1x2<3>(q1);
            ws[mt][0] = e8m0_to_f32(sc[mt][0]);
            ws[mt][1] = e8m0_to_f32(sc[mt][1]);
        }
        #pragma unroll
        for (int nb = 0; nb < NW; nb++) {
            const u32* xp = &sm.x[s][(wn * 8 * NW + nb * 8 + g) * G_XSTRIDE + t * 8];
            uint4 hi = *(const uint4*)xp, lo = *(const uint4*)(xp + 4);
            float x0 = sm.xsc[s][wn * 8 * NW + nb * 8 + 2 * t], x1 = sm.xsc[s][wn * 8 * NW + nb * 8 + 2 * t + 1];
            #pragma unroll
            for (int mt = 0; mt < MT; mt++) {
                const u32* am = a[mt];
                float c[4];
                mma_f16_first(c, am[0], am[1], am[2], am[3], lo.x, lo.y);
                mma_f16(c, am[4], am[5], am[6], am[7], lo.z, lo.w);
                // The hi parts in a chain of their own (two dependent MMAs instead of four), added in f32.
                float ch[4];
                mma_f16_first(ch, am[0], am[1], am[2], am[3], hi.x, hi.y);
                mma_f16(ch, am[4], am[5], am[6], am[7], hi.z, hi.w);
                #pragma unroll
                for (int i = 0; i < 4; i++) c[i] += ch[i];
                acc[mt][nb][0] += c[0] * (ws[mt][0] * x0);
                acc[mt][nb][1] += c[1] * (ws[mt][0] * x1);
                acc[mt][nb][2] += c[2] * (ws[mt][1] * x0);
                acc[mt][nb][3] += c[3] * (ws[mt][1] * x1);
            }
        }
        #pragma unroll
        for (int mt = 0; mt < MT; mt++)
            #pragma unroll
            for (int h = 0; h < 2; h++) sc[mt][h] = sc_next[mt][h];
    }
    cp_async_wait<0>();
    // C fragment: rows g (i < 2) and g + 8 of the m16 tile, pair slots 2t, 2t + 1 of the n8 tile.
    #pragma unroll
    for (int mt = 0; mt < MT; mt++)
        #pragma unroll
        for (int nb = 0; nb < NW; nb++)
            #pragma unroll
            for (int h = 0; h < 2; h++) {
                int row = r0 + (int)rows[mt][h];
                float v0 = acc[mt][nb][2 * h], v1 = acc[mt][nb][2 * h + 1];
                int slot = wn * 8 * NW + nb * 8 + 2 * t;
                moe_store_fragment<GATE_UP>(p, e, start, count, n_rows, row, slot, v0, v1);
            }
}

// A tile of up to BN pairs. A 64-pair tile holding at most 32 (an expert's last, when its count is a little
// over a multiple of 64: about half the experts of a 512-token prefill) runs the 32-pair code: half the MMAs,
// x loads and scaling, for the same weight decode.
template <int BN, int WM, int GATE_UP>
static __device__ void expert_fp4_gemm_impl(const ExpertParams& p) {
    __shared__ __align__(16) Fp4GemmSmem<BN> sm;
    int e, start;
    if (!find_tile(p.counts, p.n_experts, BN, blockIdx.x, e, start)) return;
    int count = min(p.counts[e] - start, BN);
    if (BN == 64 && count <= 32) fp4_gemm_tile<32, BN, WM, GATE_UP>(p, e, start, count, sm);
    else fp4_gemm_tile<BN, BN, WM, GATE_UP>(p, e, start, count, sm);
}

// FP4_GEMM_ENTRY(SUFFIX, NW): gate_up and down with tiles of 16·NW pairs (2 blocks per SM).
#define FP4_GEMM_ENTRY(SUFFIX, BN, WM) \
    extern "C" __global__ void __launch_bounds__(256, 2) moe_gate_up_fp4_##SUFFIX(const ExpertParams p) { grid_dep_sync(); expert_fp4_gemm_impl<BN, WM, 1>(p); } \
    extern "C" __global__ void __launch_bounds__(256, 2) moe_down_fp4_##SUFFIX(const ExpertParams p) { grid_dep_sync(); expert_fp4_gemm_impl<BN, WM, 0>(p); }

// (Tiles of 8 and 16 pairs with an 8-deep ring, for decode, measured slower than moe_*_fp4_p{8,16}: T = 1
// 107 / 118 vs 63 µs, T = 16 324 / 451 vs 270 µs.) Warps 8 × 1 (each 16 rows × all 64 pairs: every code
// decoded once per block). Measured on the H200 at
// T = 2048 / 512 (op bench, ms, lo and hi MMAs as two chains): 8 × 1 4.42 / 1.55, 4 × 2 4.61 / 1.62, 2 × 4
// 6.01 / 2.10; one chain of four vs two of two (4 × 2): 4.54 vs 4.61 (8 × 1 with one chain spills). Dropped:
// the weight rows as the grid's fast axis (4.24 vs 4.30).
FP4_GEMM_ENTRY(g32, 32, 8)
FP4_GEMM_ENTRY(g64, 64, 8)

struct CombineParams {
    const int* experts;
    const float* weights;
    const float* y;
    float* out;
    int n_tok;
    int top_k;
    int h;
    int n_experts;
};

extern "C" __global__ void moe_combine(const CombineParams p) {
    grid_dep_sync();
    i64 idx = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (i64)p.n_tok * p.h) return;
    int t = (int)(idx / p.h), j = (int)(idx % p.h);
    const int* ex = p.experts + t * p.top_k;
    p.out[idx] = combined_value(ex, p.weights + t * p.top_k, p.y, (i64)t * p.top_k, p.top_k, p.n_experts, p.h, j);
}
