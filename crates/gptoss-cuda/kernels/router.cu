// router.cu — MoE router (spec §1.3 "MoE block"): logits = h Wᵀ + b, top-k (descending, ties to the lower
// index), softmax over the selected k. Layout: h [n_tok, k] f32, W packed [n_experts, ld], bias f32 or null;
//   out experts i32 [n_tok, top_k], weights f32 [n_tok, top_k].
// Grid: one block per token, 1024 threads (32 warps, one expert row per warp at a time); the logits sit in
//   dynamic shared memory (n_experts floats + n_experts bytes), and thread 0 selects. top_k <= 32.
// Entry points: route_<fmt>. Minimum arch: sm_80. Launched from src/ops/moe.rs.
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

template <int F>
static __device__ void route_impl(const RouteParams& p) {
    extern __shared__ float logits[];
    __shared__ float tab[16];
    __shared__ int chosen[32];
    __shared__ float vals[32];
    load_table(p.w, tab);
    u8* taken = (u8*)(logits + p.n_experts);
    int t = blockIdx.x, warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nw = blockDim.x >> 5;
    const float* xs[1] = {p.h + (i64)t * p.k};
    for (int e = warp; e < p.n_experts; e += nw) {
        float acc[1][1] = {{0.0f}};
        warp_rowdot<F, 1, 1>(p.w, tab, (i64)e, xs, p.k, acc);
        if (lane == 0) {
            logits[e] = acc[0][0] + (p.bias ? p.bias[e] : 0.0f);
            taken[e] = 0;
        }
    }
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

#define ROUTE_ENTRY(NAME, F) \
    extern "C" __global__ void __launch_bounds__(1024) route_##NAME(const RouteParams p) { route_impl<F>(p); }

ROUTE_ENTRY(f32, WF_F32)
ROUTE_ENTRY(bf16, WF_BF16)
ROUTE_ENTRY(f16, WF_F16)
ROUTE_ENTRY(q8, WF_Q8)
ROUTE_ENTRY(lut4e8m0, WF_LUT4_E8M0)
ROUTE_ENTRY(lut4f32, WF_LUT4_F32)
