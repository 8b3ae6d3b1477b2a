// router.cu — MoE router (spec §1.3 "MoE block"): logits = h Wᵀ + b, top-k (descending, ties to the lower
// index), softmax over the selected k. Layout: h [n_tok, k] f32, W packed [n_experts, ld], bias f32 or null;
//   out experts i32 [n_tok, top_k], weights f32 [n_tok, top_k].
// Grid: one block per token, 512 threads (256 for f32 and 4-bit weights; the logits by block_rowdot); the logits sit in
//   dynamic shared memory (n_experts floats + n_experts bytes), and thread 0 selects. top_k <= 32.
// route_topk: the same selection from logits already computed (f32 [n_tok, n_experts], bias included; the
//   split-K linear computes them over many blocks for small steps). Grid: ceil(n_tok / 8) blocks of 256, one
//   warp per token; n_experts <= 256.
// route_topk_group: route_topk for at most 8 tokens in one block, then moe_group's grouping and x split
//   (moe_common.cu) of its choices, for one-token steps: one launch instead of two.
// Entry points: route_<fmt>, route_topk, route_topk_group. Minimum arch: sm_80. Launched from src/ops/moe.rs.
// The logits' split-K dot (block_rowdot) runs groups of 128 threads, 4 experts each per pass; at most 4 groups.
#define ROUTE_GROUP_THREADS 128
#define ROUTE_MAX_GROUPS 4

struct RouteParams {
    WRef w;
    const float* bias;
    const float* h;
    int* experts;
    float* weights;
    int k;
    int n_experts;
    int top_k;
    int pad_;
};

template <int F, int CE>
static __device__ void route_logits(const RouteParams& p, const float* tab, float* logits, float* scratch, float* res) {
    int t = blockIdx.x;
    auto xrows = [&](const float** xs) { xs[0] = p.h + (i64)t * p.k; };
    int groups = blockDim.x / ROUTE_GROUP_THREADS;
    for (int r0 = 0; r0 < p.n_experts; r0 += groups * 4) {
        block_rowdot<F, CE, 1, 4>(p.w, tab, (i64)r0, (i64)p.n_experts - 1, groups, xrows, p.k, scratch, res);
        for (int o = threadIdx.x; o < groups * 4 && r0 + o < p.n_experts; o += blockDim.x)
            logits[r0 + o] = res[o] + (p.bias ? p.bias[r0 + o] : 0.0f);
    }
}

template <int F>
static __device__ void route_impl(const RouteParams& p) {
    extern __shared__ float logits[];
    __shared__ float tab[16];
    __shared__ int chosen[32];
    __shared__ float vals[32];
    __shared__ float scratch[ROUTE_MAX_GROUPS * ROUTE_GROUP_THREADS / 32 * 4];
    __shared__ float res[ROUTE_MAX_GROUPS * 4];
    load_table(p.w, tab);
    int t = blockIdx.x;
    u8* taken = (u8*)(logits + p.n_experts);
    if constexpr (F == WF_LUT4_E8M0 || F == WF_LUT4_F32) {
        if (p.w.ld % 32 == 0 && p.w.block % 32 == 0) route_logits<F, 32>(p, tab, logits, scratch, res);
        else route_logits<F, 8>(p, tab, logits, scratch, res);
    } else {
        route_logits<F, F == WF_Q8 ? 16 : 8>(p, tab, logits, scratch, res);
    }
    for (int e = threadIdx.x; e < p.n_experts; e += blockDim.x) taken[e] = 0;
    __syncthreads();
    if (threadIdx.x != 0) return;
    for (int s = 0; s < p.top_k; s++) {
        int best = -1;
        for (int e = 0; e < p.n_experts; e++)
            if (!taken[e] && (best < 0 || logits[e] > logits[best])) best = e;
        taken[best] = 1;
        chosen[s] = best;
        vals[s] = logits[best];
    }
    float mx = vals[0], sum = 0.0f;
    for (int s = 0; s < p.top_k; s++) { vals[s] = expf(vals[s] - mx); sum += vals[s]; }
    for (int s = 0; s < p.top_k; s++) {
        p.experts[t * p.top_k + s] = chosen[s];
        p.weights[t * p.top_k + s] = vals[s] / sum;
    }
}

// THREADS: the block size src/ops/moe.rs launches (256 for f32 and 4-bit weights: 512 would spill).
#define ROUTE_ENTRY(NAME, F, THREADS) \
    extern "C" __global__ void __launch_bounds__(THREADS) route_##NAME(const RouteParams p) { grid_dep_sync(); route_impl<F>(p); }

ROUTE_ENTRY(f32, WF_F32, 256)
ROUTE_ENTRY(bf16, WF_BF16, 512)
ROUTE_ENTRY(f16, WF_F16, 512)
ROUTE_ENTRY(q8, WF_Q8, 512)
ROUTE_ENTRY(lut4e8m0, WF_LUT4_E8M0, 256)
ROUTE_ENTRY(lut4f32, WF_LUT4_F32, 256)

struct TopkParams {
    const float* logits;
    int* experts;
    float* weights;
    int n_tok;
    int n_experts;
    int top_k;
    int pad_;
};

// Token t's selection by one warp (topk_select, moe_common.cu), written to the routing.
static __device__ void topk_warp(const TopkParams& p, int t) {
    int lane = threadIdx.x & 31, e;
    float w;
    topk_select(p.logits + (i64)t * p.n_experts, p.n_experts, p.top_k, e, w);
    if (lane < p.top_k) {
        p.experts[t * p.top_k + lane] = e;
        p.weights[t * p.top_k + lane] = w;
    }
}

extern "C" __global__ void __launch_bounds__(256) route_topk(const TopkParams p) {
    grid_dep_sync();
    int t = blockIdx.x * 8 + (threadIdx.x >> 5);
    if (t < p.n_tok) topk_warp(p, t);
}

struct TopkGroupParams {
    TopkParams topk;
    int* counts;
    int* offsets;
    int* list;
    // The hidden states' split for the MXFP4 experts (split.rows = 0: none).
    XSplitParams split;
};

// route_topk, then moe_group's work on the choices (and its split of the hidden states) in the same block, so a
// one-token step routes and groups in one launch. Grid: 1 block of 256; n_tok <= 8.
extern "C" __global__ void __launch_bounds__(256) route_topk_group(const TopkGroupParams p) {
    grid_dep_sync();
    int t = threadIdx.x >> 5;
    if (t < p.topk.n_tok) topk_warp(p.topk, t);
    __syncthreads();
    group_pairs(p.topk.experts, p.topk.n_tok * p.topk.top_k, p.topk.n_experts, p.counts, p.offsets, p.list);
    split_rows(p.split);
}
