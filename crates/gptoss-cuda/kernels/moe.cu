// moe.cu — the MoE block's experts (spec §1.3 "MoE block"), grouped by expert so each expert's weights are
// decoded once per tile of its tokens. A (token, choice) pair p = t*top_k + s.
// moe_group: counts[e], offsets[e] and list (pairs sorted by expert, pair order kept) from experts
//   i32 [n_pairs]. Grid: 1 block of 1024 threads.
// moe_gate_up_<fmt>: act[p, i] = swiglu_oai(h[t]·gate_up_e[2i] + b[2i], h[t]·gate_up_e[2i+1] + b[2i+1]).
//   gate_up packed [E*2I, ld] (expert e's rows at e*2I), bias f32 [E*2I] or null; act f32 [n_pairs, I].
// moe_down_<fmt>: y[p, j] = act[p]·down_e[j] + b_e[j]; down packed [E*H, ld], bias f32 [E*H] or null; y [n_pairs, H].
//   Both: grid x = ceil(outputs / 8 warps), y = expert, z = tiles; a block takes tiles z, z + gridDim.z, ...
//   of TT of the expert's pairs (blocks past the expert's count exit at once). _t1 (decode: one pair per
//   expert, no wasted accumulators, z = 1) and _t8 (prefill, z = ceil(pairs / 8)). Block: 256 threads.
// moe_combine: out[t, j] = Σ_s w[t, s] y[(t, s), j], added in ascending expert order like the CPU backend.
//   Grid: ceil(n_tok*H / 256) blocks of 256.
// Minimum arch: sm_80. Launched from src/ops/moe.rs.
struct GroupParams {
    const int* experts;
    int* counts;
    int* offsets;
    int* list;
    int n_pairs;
    int n_experts;
};

extern "C" __global__ void __launch_bounds__(1024) moe_group(const GroupParams p) {
    for (int e = threadIdx.x; e < p.n_experts; e += blockDim.x) {
        int c = 0;
        for (int i = 0; i < p.n_pairs; i++) c += p.experts[i] == e;
        p.counts[e] = c;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        int o = 0;
        for (int e = 0; e < p.n_experts; e++) { p.offsets[e] = o; o += p.counts[e]; }
        p.offsets[p.n_experts] = o;
    }
    __syncthreads();
    for (int e = threadIdx.x; e < p.n_experts; e += blockDim.x) {
        int o = p.offsets[e];
        for (int i = 0; i < p.n_pairs; i++)
            if (p.experts[i] == e) p.list[o++] = i;
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
};

// Pointers to the x rows of the tile at `start` of expert `e`'s pairs (unused slots repeat the first live
// row, their pair is -1); returns how many are live.
template <int TT>
static __device__ __forceinline__ int tile_rows(const ExpertParams& p, int e, int start, const float** xs, int* pairs) {
    int count = p.counts[e] - start;
    if (count <= 0) return count;
    #pragma unroll
    for (int t = 0; t < TT; t++) {
        int pair = p.list[p.offsets[e] + start + min(t, count - 1)];
        pairs[t] = t < count ? pair : -1;
        i64 row = p.x_per_pair ? (i64)pair : (i64)(pair / p.top_k);
        xs[t] = p.x + row * p.k;
    }
    return count;
}

static __device__ __forceinline__ float swiglu_oai(float gate, float up, float alpha, float limit) {
    gate = fminf(gate, limit);
    up = fminf(fmaxf(up, -limit), limit);
    return gate / (1.0f + expf(-alpha * gate)) * (up + 1.0f);
}

template <int F, int TT>
static __device__ void gate_up_impl(const ExpertParams& p) {
    __shared__ float tab[16];
    load_table(p.w, tab);
    int e = blockIdx.y, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int i = blockIdx.x * (blockDim.x >> 5) + warp;
    if (i >= p.n_out) return;
    i64 row = (i64)e * 2 * p.n_out + 2 * i;
    for (int start = blockIdx.z * TT;; start += gridDim.z * TT) {
        const float* xs[TT];
        int pairs[TT];
        if (tile_rows<TT>(p, e, start, xs, pairs) <= 0) return;
        float acc[2][TT];
        #pragma unroll
        for (int t = 0; t < TT; t++) { acc[0][t] = 0.0f; acc[1][t] = 0.0f; }
        warp_rowdot<F, TT, 2>(p.w, tab, row, xs, p.k, acc);
        if (lane == 0) {
            float bg = p.bias ? p.bias[row] : 0.0f, bu = p.bias ? p.bias[row + 1] : 0.0f;
            #pragma unroll
            for (int t = 0; t < TT; t++)
                if (pairs[t] >= 0)
                    p.out[(i64)pairs[t] * p.n_out + i] = swiglu_oai(acc[0][t] + bg, acc[1][t] + bu, p.alpha, p.limit);
        }
    }
}

template <int F, int TT>
static __device__ void down_impl(const ExpertParams& p) {
    __shared__ float tab[16];
    load_table(p.w, tab);
    int e = blockIdx.y, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int j = blockIdx.x * (blockDim.x >> 5) + warp;
    if (j >= p.n_out) return;
    i64 row = (i64)e * p.n_out + j;
    for (int start = blockIdx.z * TT;; start += gridDim.z * TT) {
        const float* xs[TT];
        int pairs[TT];
        if (tile_rows<TT>(p, e, start, xs, pairs) <= 0) return;
        float acc[1][TT];
        #pragma unroll
        for (int t = 0; t < TT; t++) acc[0][t] = 0.0f;
        warp_rowdot<F, TT, 1>(p.w, tab, row, xs, p.k, acc);
        if (lane == 0) {
            float b = p.bias ? p.bias[row] : 0.0f;
            #pragma unroll
            for (int t = 0; t < TT; t++)
                if (pairs[t] >= 0) p.out[(i64)pairs[t] * p.n_out + j] = acc[0][t] + b;
        }
    }
}

#define MOE_ENTRY(NAME, F) \
    extern "C" __global__ void __launch_bounds__(256, 2) moe_gate_up_##NAME##_t1(const ExpertParams p) { gate_up_impl<F, 1>(p); } \
    extern "C" __global__ void __launch_bounds__(256, 2) moe_gate_up_##NAME##_t8(const ExpertParams p) { gate_up_impl<F, 8>(p); } \
    extern "C" __global__ void __launch_bounds__(256, 2) moe_down_##NAME##_t1(const ExpertParams p) { down_impl<F, 1>(p); } \
    extern "C" __global__ void __launch_bounds__(256, 2) moe_down_##NAME##_t8(const ExpertParams p) { down_impl<F, 8>(p); }

MOE_ENTRY(f32, WF_F32)
MOE_ENTRY(bf16, WF_BF16)
MOE_ENTRY(f16, WF_F16)
MOE_ENTRY(q8, WF_Q8)
MOE_ENTRY(lut4e8m0, WF_LUT4_E8M0)
MOE_ENTRY(lut4f32, WF_LUT4_F32)

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
