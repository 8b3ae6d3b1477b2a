// linear.cu — y = x Wᵀ + b for every packed weight format (see common.cu), and the logits projection.
// Layout: x [n_tok, x_ld] f32 (row t, or row x_rows[t] when x_rows is set: the logits' selected rows),
//   W packed [n_out, ld], bias f32 [n_out] or null, out [n_tok, out_ld] f32.
// Grid: x = ceil(n_out / warps per block) (one warp per output feature), y = ceil(n_tok / TT) (TT input rows
//   per warp, so each weight row is decoded once per TT tokens). Block: 256 threads.
// Entry points: linear_<fmt>_t1 (decode) and linear_<fmt>_t8 (prefill). Minimum arch: sm_80.
// Launched from src/ops/linear.rs.
struct LinearParams {
    WRef w;
    const float* bias;
    const float* x;
    const int* x_rows;
    float* out;
    int k;
    int n_out;
    int n_tok;
    int x_ld;
    int out_ld;
    int pad_;
};

template <int F, int TT>
static __device__ void linear_impl(const LinearParams& p) {
    __shared__ float tab[16];
    load_table(p.w, tab);
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int j = blockIdx.x * (blockDim.x >> 5) + warp;
    int t0 = blockIdx.y * TT;
    if (j >= p.n_out) return;
    const float* xs[TT];
    float acc[1][TT];
    #pragma unroll
    for (int t = 0; t < TT; t++) {
        int tt = min(t0 + t, p.n_tok - 1);
        acc[0][t] = 0.0f;
        i64 r = p.x_rows ? (i64)p.x_rows[tt] : (i64)tt;
        xs[t] = p.x + r * p.x_ld;
    }
    warp_rowdot<F, TT, 1>(p.w, tab, (i64)j, xs, p.k, acc);
    if (lane == 0) {
        float b = p.bias ? p.bias[j] : 0.0f;
        #pragma unroll
        for (int t = 0; t < TT; t++)
            if (t0 + t < p.n_tok) p.out[(i64)(t0 + t) * p.out_ld + j] = acc[0][t] + b;
    }
}

#define LINEAR_ENTRY(NAME, F) \
    extern "C" __global__ void __launch_bounds__(256) linear_##NAME##_t1(const LinearParams p) { linear_impl<F, 1>(p); } \
    extern "C" __global__ void __launch_bounds__(256) linear_##NAME##_t8(const LinearParams p) { linear_impl<F, 8>(p); }

LINEAR_ENTRY(f32, WF_F32)
LINEAR_ENTRY(bf16, WF_BF16)
LINEAR_ENTRY(f16, WF_F16)
LINEAR_ENTRY(q8, WF_Q8)
LINEAR_ENTRY(lut4e8m0, WF_LUT4_E8M0)
LINEAR_ENTRY(lut4f32, WF_LUT4_F32)
