// linear.cu — y = x Wᵀ + b for every packed weight format (see common.cu), and the logits projection.
// Layout: x [n_tok, x_ld] f32 (row t, or row x_rows[t] when x_rows is set: the logits' selected rows),
//   W packed [n_out, ld], bias f32 [n_out] or null, out [n_tok, out_ld] f32.
// linear_<fmt>_t{1,2,4} (few rows: decode): split-K GEMV, block_rowdot in common.cu. Grid: x =
//   ceil(n_out / (groups * LIN_NR)) (each of the block's `groups` thread groups takes LIN_NR weight rows), y =
//   ceil(n_tok / TT). Block: 256 threads. linear3_<fmt>_t{1,2,4}: three of them (q, k, v) in one grid.
// linear_mma_<fmt> / linear_mma32_<fmt> (5 rows or more; bf16, Q8_0 and bf16-exact 4-bit weights): tensor-core
//   tiles of 64 / 32 rows, mma.cu. Grid: x = ceil(n_out / 128), y = ceil(n_tok / rows), z = K splits. With
//   z > 1 (a step of few rows, whose 128-row tiles alone would leave most SMs idle) each block writes its
//   K share's sums to `partial` [z][n_tok][n_out] and linear_reduce adds them in split order (so the result
//   does not depend on which block finishes first) with the bias. Block: 256 threads.
// Minimum arch: sm_80. Launched from src/ops/linear.rs.
// Weight rows per thread group of the split-K kernel.
#define LIN_NR 4

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
    int groups;
    // Split-K of the tensor-core path: K elements per split (a multiple of MMA_BK), and the partial sums.
    int k_split;
    float* partial;
};

// bx: the block's index within its linear (blockIdx.x, or less in a group launch).
template <int F, int CE, int TT>
static __device__ void linear_rows(const LinearParams& p, int bx, const float* tab, float* scratch, float* res) {
    int t0 = blockIdx.y * TT;
    // block_rowdot asks for the x rows after issuing its first weight loads: those overlap the previous
    // kernel's drain, and this is the kernel's grid_dep_sync (the GEMV entries call none before).
    auto xrows = [&](const float** xs) {
        grid_dep_sync();
        #pragma unroll
        for (int t = 0; t < TT; t++) {
            int tt = min(t0 + t, p.n_tok - 1);
            i64 r = p.x_rows ? (i64)p.x_rows[tt] : (i64)tt;
            xs[t] = p.x + r * p.x_ld;
        }
    };
    i64 rows0 = (i64)bx * p.groups * LIN_NR;
    block_rowdot<F, CE, TT, LIN_NR>(p.w, tab, rows0, (i64)p.n_out - 1, p.groups, xrows, p.k, scratch, res);
    for (int o = threadIdx.x; o < p.groups * LIN_NR * TT; o += blockDim.x) {
        i64 row = rows0 + o / TT;
        int t = t0 + o % TT;
        if (row < p.n_out && t < p.n_tok)
            p.out[(i64)t * p.out_ld + row] = res[o] + (p.bias ? p.bias[row] : 0.0f);
    }
}

template <int F, int TT>
static __device__ void linear_impl(const LinearParams& p, int bx) {
    __shared__ float tab[16];
    __shared__ float scratch[8 * LIN_NR * TT];
    __shared__ float res[8 * LIN_NR * TT];
    load_table(p.w, tab);
    if constexpr (F == WF_LUT4_E8M0 || F == WF_LUT4_F32) {
        if (p.w.ld % 32 == 0 && p.w.block % 32 == 0) linear_rows<F, 32, TT>(p, bx, tab, scratch, res);
        else linear_rows<F, 8, TT>(p, bx, tab, scratch, res);
    } else {
        linear_rows<F, F == WF_Q8 ? 16 : 8, TT>(p, bx, tab, scratch, res);
    }
}

// Three linears of one input and format in one launch (q, k and v: their separate launches left most of the
// GPU idle for the 512-row k and v, 4.6 µs each at one row on the H200). Blocks [first[i], first[i + 1]) of
// grid x belong to part i.
struct LinearGroupParams {
    LinearParams part[3];
    int first[4];
};

template <int F, int TT>
static __device__ void linear_group_impl(const LinearGroupParams& g) {
    int i = blockIdx.x >= g.first[2] ? 2 : blockIdx.x >= g.first[1] ? 1 : 0;
    linear_impl<F, TT>(g.part[i], blockIdx.x - g.first[i]);
}

template <int F, int MT>
static __device__ void linear_mma_impl(const LinearParams& p) {
    __shared__ MmaSmem sm;
    int m0 = blockIdx.y * 32 * MT, n0 = blockIdx.x * MMA_BN;
    const float* xrow[MT];
    #pragma unroll
    for (int j = 0; j < MT; j++) {
        int m = m0 + (threadIdx.x >> 3) + 32 * j;
        xrow[j] = m < p.n_tok ? p.x + (p.x_rows ? (i64)p.x_rows[m] : (i64)m) * p.x_ld : nullptr;
    }
    int kb = blockIdx.z * p.k_split, ke = min(p.k, kb + p.k_split);
    float acc[MT][4][4];
    mma_tile<F, MT>(p.w, xrow, (i64)n0, p.n_out - n0, p.k, kb, ke, sm, acc);
    bool split = gridDim.z > 1;
    float* out = split ? p.partial + (i64)blockIdx.z * p.n_tok * p.n_out : p.out;
    i64 ld = split ? p.n_out : p.out_ld;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, wm = warp >> 2, wn = warp & 3;
    #pragma unroll
    for (int mt = 0; mt < MT; mt++)
        #pragma unroll
        for (int nt = 0; nt < 4; nt++)
            #pragma unroll
            for (int i = 0; i < 4; i++) {
                int m = m0 + wm * 16 * MT + mt * 16 + (lane >> 2) + (i >> 1) * 8;
                int n = n0 + wn * 32 + nt * 8 + 2 * (lane & 3) + (i & 1);
                if (m < p.n_tok && n < p.n_out)
                    out[(i64)m * ld + n] = acc[mt][nt][i] + (!split && p.bias ? p.bias[n] : 0.0f);
            }
}

struct ReduceParams {
    const float* partial;
    const float* bias;
    float* out;
    int n_tok;
    int n_out;
    int out_ld;
    int splits;
};

// out[m, n] = Σ_z partial[z][m][n] + bias[n], z in order. Grid: ceil(n_tok * n_out / 256). Block: 256 threads.
extern "C" __global__ void __launch_bounds__(256) linear_reduce(const ReduceParams p) {
    grid_dep_sync();
    i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x, len = (i64)p.n_tok * p.n_out;
    if (i >= len) return;
    int n = (int)(i % p.n_out);
    float s = 0.0f;
    for (int z = 0; z < p.splits; z++) s += p.partial[z * len + i];
    p.out[(i / p.n_out) * p.out_ld + n] = s + (p.bias ? p.bias[n] : 0.0f);
}

#define LINEAR_ENTRY(NAME, F) \
    extern "C" __global__ void __launch_bounds__(256, 2) linear_##NAME##_t1(const LinearParams p) { linear_impl<F, 1>(p, blockIdx.x); } \
    extern "C" __global__ void __launch_bounds__(256, 2) linear_##NAME##_t2(const LinearParams p) { linear_impl<F, 2>(p, blockIdx.x); } \
    extern "C" __global__ void __launch_bounds__(256, 1) linear_##NAME##_t4(const LinearParams p) { linear_impl<F, 4>(p, blockIdx.x); } \
    extern "C" __global__ void __launch_bounds__(256, 2) linear3_##NAME##_t1(const LinearGroupParams g) { linear_group_impl<F, 1>(g); } \
    extern "C" __global__ void __launch_bounds__(256, 2) linear3_##NAME##_t2(const LinearGroupParams g) { linear_group_impl<F, 2>(g); } \
    extern "C" __global__ void __launch_bounds__(256, 1) linear3_##NAME##_t4(const LinearGroupParams g) { linear_group_impl<F, 4>(g); }

// MINB: blocks per SM the tensor-core kernel is register-limited for (2 = 128 registers; the three-part
// X split of mma.cu needs more than the 80 registers of 3 blocks).
#define LINEAR_MMA_ENTRY(NAME, F, MINB) \
    extern "C" __global__ void __launch_bounds__(256, MINB) linear_mma_##NAME(const LinearParams p) { grid_dep_sync(); linear_mma_impl<F, 2>(p); } \
    extern "C" __global__ void __launch_bounds__(256, MINB) linear_mma32_##NAME(const LinearParams p) { grid_dep_sync(); linear_mma_impl<F, 1>(p); }

LINEAR_ENTRY(f32, WF_F32)
LINEAR_ENTRY(bf16, WF_BF16)
LINEAR_ENTRY(f16, WF_F16)
LINEAR_ENTRY(q8, WF_Q8)
LINEAR_ENTRY(lut4e8m0, WF_LUT4_E8M0)
LINEAR_ENTRY(lut4f32, WF_LUT4_F32)
LINEAR_MMA_ENTRY(bf16, WF_BF16, 2)
LINEAR_MMA_ENTRY(q8, WF_Q8, 2)
LINEAR_MMA_ENTRY(lut4e8m0, WF_LUT4_E8M0, 2)
LINEAR_MMA_ENTRY(lut4f32, WF_LUT4_F32, 2)
