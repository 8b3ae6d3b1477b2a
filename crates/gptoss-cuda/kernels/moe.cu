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
// moe_combine: out[t, j] = Σ_s w[t, s] y[(t, s), j], added in ascending expert order like the CPU backend.
//   Grid: ceil(n_tok*H / 256) blocks of 256.
// Minimum arch: sm_80. Launched from src/ops/moe.rs.
// Weight rows per thread group of the split-K kernels: 8 for one pair (more bytes in flight per block), 2 for
// tiles of 8 pairs (registers).
#define MOE_NR(TT) ((TT) == 1 ? 8 : 2)
#define MOE_MAX_EXPERTS 256

struct GroupParams {
    const int* experts;
    int* counts;
    int* offsets;
    int* list;
    int n_pairs;
    int n_experts;
};

extern "C" __global__ void __launch_bounds__(1024) moe_group(const GroupParams p) {
    __shared__ int cnt[MOE_MAX_EXPERTS];
    __shared__ int cur[MOE_MAX_EXPERTS];
    for (int e = threadIdx.x; e < p.n_experts; e += blockDim.x) cnt[e] = 0;
    __syncthreads();
    for (int i = threadIdx.x; i < p.n_pairs; i += blockDim.x) {
        int e = p.experts[i];
        if (e >= 0 && e < p.n_experts) atomicAdd(&cnt[e], 1);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        int o = 0;
        for (int e = 0; e < p.n_experts; e++) {
            p.offsets[e] = o;
            p.counts[e] = cnt[e];
            cur[e] = o;
            o += cnt[e];
        }
        p.offsets[p.n_experts] = o;
    }
    __syncthreads();
    for (int i = threadIdx.x; i < p.n_pairs; i += blockDim.x) {
        int e = p.experts[i];
        if (e >= 0 && e < p.n_experts) p.list[atomicAdd(&cur[e], 1)] = i;
    }
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

// The x row of the pair at `idx` of expert e's list.
static __device__ __forceinline__ const float* pair_x(const ExpertParams& p, int e, int idx) {
    int pair = p.list[p.offsets[e] + idx];
    return p.x + (p.x_per_pair ? (i64)pair : (i64)(pair / p.top_k)) * p.k;
}

static __device__ __forceinline__ float swiglu_oai(float gate, float up, float alpha, float limit) {
    gate = fminf(gate, limit);
    up = fminf(fmaxf(up, -limit), limit);
    return gate / (1.0f + expf(-alpha * gate)) * (up + 1.0f);
}

// Writes one output of rows `row` (and `row + 1` for gate_up) for the pair at `idx` of expert e.
template <int GATE_UP>
static __device__ __forceinline__ void moe_store(const ExpertParams& p, int e, int idx, int row, float a, float b) {
    int pair = p.list[p.offsets[e] + idx];
    i64 base = (i64)e * (GATE_UP ? 2 : 1) * p.n_out;
    if constexpr (GATE_UP) {
        float bg = p.bias ? p.bias[base + row] : 0.0f, bu = p.bias ? p.bias[base + row + 1] : 0.0f;
        p.out[(i64)pair * p.n_out + row / 2] = swiglu_oai(a + bg, b + bu, p.alpha, p.limit);
    } else {
        p.out[(i64)pair * p.n_out + row] = a + (p.bias ? p.bias[base + row] : 0.0f);
    }
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
    __shared__ MmaSmem sm;
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
    mma_tile<F, MT>(p.w, xrow, (i64)e * n_rows + n0, n_rows - n0, p.k, sm, acc);
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
    extern "C" __global__ void __launch_bounds__(256, 2) moe_gate_up_##NAME##_t1(const ExpertParams p) { expert_impl<F, 1, 1>(p); } \
    extern "C" __global__ void __launch_bounds__(256, 1) moe_gate_up_##NAME##_t8(const ExpertParams p) { expert_impl<F, 8, 1>(p); } \
    extern "C" __global__ void __launch_bounds__(256, 2) moe_down_##NAME##_t1(const ExpertParams p) { expert_impl<F, 1, 0>(p); } \
    extern "C" __global__ void __launch_bounds__(256, 1) moe_down_##NAME##_t8(const ExpertParams p) { expert_impl<F, 8, 0>(p); }

// MINB: blocks per SM the tensor-core kernel is register-limited for (2 = 128 registers; the three-part
// X split of mma.cu needs more than the 80 registers of 3 blocks).
#define MOE_MMA_ENTRY(NAME, F, MINB) \
    extern "C" __global__ void __launch_bounds__(256, MINB) moe_gate_up_mma_##NAME(const ExpertParams p) { expert_mma_impl<F, 1, 2>(p); } \
    extern "C" __global__ void __launch_bounds__(256, MINB) moe_down_mma_##NAME(const ExpertParams p) { expert_mma_impl<F, 0, 2>(p); } \
    extern "C" __global__ void __launch_bounds__(256, MINB) moe_gate_up_mma32_##NAME(const ExpertParams p) { expert_mma_impl<F, 1, 1>(p); } \
    extern "C" __global__ void __launch_bounds__(256, MINB) moe_down_mma32_##NAME(const ExpertParams p) { expert_mma_impl<F, 0, 1>(p); }

MOE_ENTRY(f32, WF_F32)
MOE_ENTRY(bf16, WF_BF16)
MOE_ENTRY(f16, WF_F16)
MOE_ENTRY(q8, WF_Q8)
MOE_ENTRY(lut4e8m0, WF_LUT4_E8M0)
MOE_ENTRY(lut4f32, WF_LUT4_F32)
MOE_MMA_ENTRY(bf16, WF_BF16, 2)
MOE_MMA_ENTRY(lut4e8m0, WF_LUT4_E8M0, 2)
MOE_MMA_ENTRY(lut4f32, WF_LUT4_F32, 2)

struct CombineParams {
    const int* experts;
    const float* weights;
    const float* y;
    float* out;
    int n_tok;
    int top_k;
    int h;
    int pad_;
};

extern "C" __global__ void moe_combine(const CombineParams p) {
    i64 idx = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (i64)p.n_tok * p.h) return;
    int t = (int)(idx / p.h), j = (int)(idx % p.h);
    const int* ex = p.experts + t * p.top_k;
    float acc = 0.0f;
    int last = -1;
    for (int n = 0; n < p.top_k; n++) {
        int best = -1;
        for (int s = 0; s < p.top_k; s++)
            if (ex[s] > last && (best < 0 || ex[s] < ex[best])) best = s;
        if (best < 0) break;
        last = ex[best];
        acc += p.weights[t * p.top_k + best] * p.y[((i64)t * p.top_k + best) * p.h + j];
    }
    p.out[idx] = acc;
}
