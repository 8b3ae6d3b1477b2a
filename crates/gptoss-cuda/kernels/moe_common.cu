// moe_common.cu — what the expert kernels of moe.cu and moe_dot.cu share (prelude of both, after common.cu):
// the x split of the MXFP4 paths by one block (split_rows, of common.cu's xsplit_unit), the expert launch
// parameters, the tile lookup and the gate_up epilogue (SwiGLU, with act written in the form down reads), a token's
// top-k by one warp (topk_select: router.cu, and moe_dot.cu's gate_up when it routes one-token steps itself), the
// grouping of pairs by expert (moe_group, and router.cu's route_topk_group for one-token steps) and the weighted
// sum of a token's expert outputs (moe_combine, and moe_dot.cu's token-major down).
// Weight rows per thread group of the split-K kernels: 8 for one pair (more bytes in flight per block), 2 for
// tiles of 8 pairs (registers).
#define MOE_NR(TT) ((TT) == 1 ? 8 : 2)
#define MOE_MAX_EXPERTS 256

// A token's top_k of its logits `l` (ties to the lower expert) by one warp, softmax over them: lane s < top_k
// gets choice s's expert and weight. top_k <= 32, n_experts <= 256.
static __device__ __forceinline__ void topk_select(const float* l, int n_experts, int top_k, int& my_e, float& my_w) {
    int lane = threadIdx.x & 31;
    const float ninf = -__int_as_float(0x7f800000);
    float v[8];
    #pragma unroll
    for (int j = 0; j < 8; j++) v[j] = lane + 32 * j < n_experts ? l[lane + 32 * j] : ninf;
    u32 taken = 0;
    my_e = 0;
    float my_v = 0.0f;
    for (int s = 0; s < top_k; s++) {
        float bv = ninf;
        int be = n_experts;
        #pragma unroll
        for (int j = 0; j < 8; j++) {
            int e = lane + 32 * j;
            if (e < n_experts && !((taken >> j) & 1u) && (be == n_experts || v[j] > bv)) { bv = v[j]; be = e; }
        }
        // The larger logit wins, ties go to the lower expert (as the CPU backend).
        #pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            float ov = __shfl_xor_sync(0xffffffffu, bv, o);
            int oe = __shfl_xor_sync(0xffffffffu, be, o);
            if (oe < n_experts && (be == n_experts || ov > bv || (ov == bv && oe < be))) { bv = ov; be = oe; }
        }
        be = be < n_experts ? be : 0;
        if ((be & 31) == lane) taken |= 1u << (be >> 5);
        if (lane == s) { my_e = be; my_v = bv; }
    }
    float mx = __shfl_sync(0xffffffffu, my_v, 0);
    float ex = lane < top_k ? expf(my_v - mx) : 0.0f;
    float sum = 0.0f;
    for (int s = 0; s < top_k; s++) sum += __shfl_sync(0xffffffffu, ex, s);
    my_w = lane < top_k ? ex / sum : 0.0f;
}

// Every unit of `split` by the threads of one block (a multiple of 32: xsplit_unit shuffles within warps).
static __device__ void split_rows(const XSplitParams& split) {
    i64 units = (i64)split.rows * (split.k / 32) * 4;
    for (i64 base = 0; base < units; base += blockDim.x) xsplit_unit(split, base + threadIdx.x);
}

// counts[e], offsets[e] (offsets[n_experts] = n_pairs kept) and list (pairs grouped by expert, arbitrary order
// inside an expert) from experts i32 [n_pairs], by the threads of one block. Pairs whose expert is outside
// [0, n_experts) (NO_EXPERT is -1) are left out.
static __device__ void group_pairs(const int* experts, int n_pairs, int n_experts, int* counts, int* offsets,
                                   int* list) {
    __shared__ int cnt[MOE_MAX_EXPERTS];
    __shared__ int cur[MOE_MAX_EXPERTS];
    for (int e = threadIdx.x; e < n_experts; e += blockDim.x) cnt[e] = 0;
    __syncthreads();
    for (int i = threadIdx.x; i < n_pairs; i += blockDim.x) {
        int e = experts[i];
        if (e >= 0 && e < n_experts) atomicAdd(&cnt[e], 1);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        int o = 0;
        for (int e = 0; e < n_experts; e++) {
            offsets[e] = o;
            counts[e] = cnt[e];
            cur[e] = o;
            o += cnt[e];
        }
        offsets[n_experts] = o;
    }
    __syncthreads();
    for (int i = threadIdx.x; i < n_pairs; i += blockDim.x) {
        int e = experts[i];
        if (e >= 0 && e < n_experts) list[atomicAdd(&cur[e], 1)] = i;
    }
}

// Σ_s w[s] · y[(t, s), j] over token t's pairs of an expert in [0, n_experts), added in ascending expert order
// (as the CPU backend; a token's experts are distinct). `ex` and `w` are the token's top_k choices.
static __device__ __forceinline__ float combined_value(const int* ex, const float* w, const float* y, i64 pair0,
                                                      int top_k, int n_experts, int h, int j) {
    float acc = 0.0f;
    int last = -1;
    for (int n = 0; n < top_k; n++) {
        int best = -1;
        for (int s = 0; s < top_k; s++)
            if (ex[s] > last && ex[s] < n_experts && (best < 0 || ex[s] < ex[best])) best = s;
        if (best < 0) break;
        last = ex[best];
        const float* src = y + (pair0 + best) * h + j;
        acc += w[best] * *src;
    }
    return acc;
}


struct ExpertParams {
    WRef w;
    const float* bias;
    const float* x;
    const int* counts;
    const int* offsets;
    const int* list;
    float* out;
    int k;
    int n_out;
    int x_per_pair;
    int top_k;
    float alpha;
    float limit;
    int n_experts;
    int groups;
    // The f16 tensor-core path (moe_*_fp4_*): x split by moe_xsplit, and its per-block powers of two.
    const u32* xs;
    const float* xscale;
    // gate_up of the MXFP4 path: when nonzero, act is written already split for down (moe_xsplit's layout, in
    // the act buffer) with this power of two as every block's scale, and `act_scales` the matching xscale.
    float act_split;
    // gate_up of moe_dot.cu: act is written as int8 planes (xsplit_dot's layout) with per-block scales.
    int act_dot;
    float* act_scales;
    // moe_dot.cu for steps of a few tokens: the routing itself in place of the grouped pair lists, and where
    // the token-major down writes the combined output.
    const int* route_experts;
    const float* route_weights;
    float* combined;
    // gate_up of the f16-activation GEMM (moe.cu, moe_*_fp4_h64): with act_split nonzero, act is written as
    // one f16 per element in moe_xhalf's order, and act_scales[pair] = 1 / act_split.
    int act_half;
    int pad_;
    // moe_dot.cu's gate_up of a one-token step when set: the router's logits [n_tok, n_experts], from which every
    // block selects the token's top_k itself (topk_select) and the pair-0 block of row slice 0 writes the
    // routing (route_experts, route_weights) for down and whoever reads it after; no launch of its own.
    const float* route_logits;
};

// Tile `tile` of the tiles of bm pairs of each expert (experts ascending): its expert and first pair index
// within the expert; false past the last tile. Every lane of every warp must call it (the same answer).
static __device__ bool find_tile(const int* counts, int n_experts, int bm, int tile, int& expert, int& start) {
    int lane = threadIdx.x & 31, before = 0;
    for (int e0 = 0; e0 < n_experts; e0 += 32) {
        int e = e0 + lane;
        int n = e < n_experts ? (counts[e] + bm - 1) / bm : 0;
        int incl = n;
        #pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            int v = __shfl_up_sync(0xffffffffu, incl, o);
            if (lane >= o) incl += v;
        }
        int excl = incl - n;
        unsigned hit = __ballot_sync(0xffffffffu, tile >= before + excl && tile < before + incl);
        if (hit) {
            int src = __ffs(hit) - 1;
            expert = e0 + src;
            start = (tile - before - __shfl_sync(0xffffffffu, excl, src)) * bm;
            return true;
        }
        before += __shfl_sync(0xffffffffu, incl, 31);
    }
    return false;
}

// The row of x (a pair's own row, or its token's) of the pair at `idx` of expert e's list.
static __device__ __forceinline__ i64 pair_row(const ExpertParams& p, int e, int idx) {
    int pair = p.list[p.offsets[e] + idx];
    return p.x_per_pair ? (i64)pair : (i64)(pair / p.top_k);
}

// The x row of the pair at `idx` of expert e's list.
static __device__ __forceinline__ const float* pair_x(const ExpertParams& p, int e, int idx) {
    return p.x + pair_row(p, e, idx) * p.k;
}

static __device__ __forceinline__ float swiglu_oai(float gate, float up, float alpha, float limit) {
    gate = fminf(gate, limit);
    up = fminf(fmaxf(up, -limit), limit);
    return gate / (1.0f + expf(-alpha * gate)) * (up + 1.0f);
}

// Writes one output of rows `row` (and `row + 1` for gate_up) for `pair`, whose expert is e.
template <int GATE_UP>
static __device__ __forceinline__ void moe_store_pair(const ExpertParams& p, int e, int pair, int row, float a,
                                                      float b) {
    i64 base = (i64)e * (GATE_UP ? 2 : 1) * p.n_out;
    if constexpr (GATE_UP) {
        float bg = p.bias ? p.bias[base + row] : 0.0f, bu = p.bias ? p.bias[base + row + 1] : 0.0f;
        float act = swiglu_oai(a + bg, b + bu, p.alpha, p.limit);
        int i = row / 2;
        if (p.act_split == 0.0f) {
            p.out[(i64)pair * p.n_out + i] = act;
            return;
        }
        if (p.act_half) {
            int w = i & 31, t = w >> 3, r = w & 7;
            // Where element w goes (the inverse of moe_half.cu's half_order_element): slice, half, 2t, member.
            int l = ((r >> 1) & 1) * 16 + (r & 1) * 8 + 2 * t + (r >> 2);
            ((u16*)p.out)[(i64)pair * p.n_out + (i & ~31) + l] = f32_to_f16(act * p.act_split);
            if (i == 0) p.act_scales[pair] = 1.0f / p.act_split;
            return;
        }
        // Element i = 32 kb + 8 t + w: register j = w mod 4 of (row, kb, t), low half for w < 4 (see moe_xsplit).
        int kb = i >> 5, t = (i >> 3) & 3, w = i & 7;
        i64 reg = (((i64)pair * (p.n_out >> 5) + kb) * 4 + t) * 8 + (w & 3);
        float x = act * p.act_split;
        u16 hi = f32_to_f16(x);
        u16 lo = f32_to_f16(x - f16_to_f32(hi));
        u16* halves = (u16*)p.out;
        halves[2 * reg + (w >> 2)] = hi;
        halves[2 * (reg + 4) + (w >> 2)] = lo;
        // As moe_xsplit's scales, the inverse times 2^14 (the codes are E2M1 values × 2^-14).
        if ((i & 31) == 0) p.act_scales[(i64)pair * (p.n_out >> 5) + kb] = 16384.0f / p.act_split;
    } else {
        p.out[(i64)pair * p.n_out + row] = a + (p.bias ? p.bias[base + row] : 0.0f);
    }
}

// moe_store_pair for the pair at `idx` of expert e's list.
template <int GATE_UP>
static __device__ __forceinline__ void moe_store(const ExpertParams& p, int e, int idx, int row, float a, float b) {
    moe_store_pair<GATE_UP>(p, e, p.list[p.offsets[e] + idx], row, a, b);
}

// Stores one C-fragment half of an m16n8 tile: v0, v1 at weight row `row` (r0 + the fragment's row g or g + 8)
// for pair slots `slot`, `slot` + 1 of the tile starting at `start` (count pairs). gate_up's rows 2i and 2i + 1
// are one output's gate and up: the lane four up (row + 1) hands over its values, so every lane must call this.
template <int GATE_UP>
static __device__ __forceinline__ void moe_store_fragment(const ExpertParams& p, int e, int start, int count,
                                                          int n_rows, int row, int slot, float v0, float v1) {
    if constexpr (GATE_UP) {
        float u0 = __shfl_down_sync(0xffffffffu, v0, 4), u1 = __shfl_down_sync(0xffffffffu, v1, 4);
        if (((threadIdx.x >> 2) & 1) == 0 && row < n_rows) {
            if (slot < count) moe_store<1>(p, e, start + slot, row, v0, u0);
            if (slot + 1 < count) moe_store<1>(p, e, start + slot + 1, row, v1, u1);
        }
    } else if (row < n_rows) {
        if (slot < count) moe_store<0>(p, e, start + slot, row, v0, 0.0f);
        if (slot + 1 < count) moe_store<0>(p, e, start + slot + 1, row, v1, 0.0f);
    }
}

// ---- Shared by the f16 tensor-core expert kernels (moe.cu, moe_half.cu) ----

// Nibbles i (low half) and i + 4 (high half) of q as two f16 E2M1 · 2^-14.
template <int I>
static __device__ __forceinline__ u32 e2m1x2(u32 q) {
    u32 mag = (I <= 2 ? q << (9 - 4 * I) : q >> 3) & 0x0E000E00u;
    u32 sign = (q << (12 - 4 * I)) & 0x80008000u;
    return mag | sign;
}

