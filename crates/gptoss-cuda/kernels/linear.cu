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
//   linear_mmafast_<fmt>: the same tiles of 64 rows with x as two bf16 parts (prompts unless --exact; mma.cu).
// linear_warp_<fmt> (bf16, f16) and linear_dot_q8 (Q8_0, k % 32 == 0): one step row against a weight of many rows
//   (decode). A warp takes WARP_ROWS (DOT_Q8_ROWS) weight rows over the whole K; its lanes take chunks (16 bytes;
//   Q8_0: 32-element blocks) lane, lane + 32, ... through a ring of WARP_CHUNKS (DOT_Q8_BLOCKS) per row, each slot
//   reloaded as soon as it is used, so every lane keeps that many loads per row in flight to the row's end; a
//   shuffle tree adds the lanes.
//   linear_dot_q8 multiplies the int8 codes with dp4a against x as three int8 planes per 32-element block
//   (block_planes, common.cu), which each block writes to shared memory once (dynamic shared memory of
//   k / 32 · (96 + 4) bytes, plane-major so a lane's 16-byte reads do not collide): about one instruction per
//   code where decoding to f32 took three. Grid: x = ceil(n_out / (8 · rows per warp)). Block: 256 threads.
//   linear3_warp_<fmt> / linear3_dot_q8: three of them (q, k, v) in one grid, as linear3_<fmt>_t*.
// linear3_norm_dot_q8 / linear_norm_<fmt> (the split-K GEMV at one row): x is rms_norm(resid + delta) · w,
//   which every block computes itself into shared memory (norm_prologue in common.cu, bit for bit
//   add_rmsnorm_f32) while its first weight loads are in flight, so the norm before q/k/v (Q8_0) and the one
//   before the router cost no launch of their own. Dynamic shared memory: k floats more. (The bf16 / f16 warp
//   GEMVs lost with it: 96 registers put q/k/v's 320 blocks in two waves; bench/NOTES.md, session 13.)
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

// bx: the block's index within its linear (blockIdx.x, or less in a group launch). NORM (TT = 1): x is
// rms_norm(f's rows), which each block computes into dynamic shared memory (norm_prologue).
template <int F, int CE, int TT, int NORM>
static __device__ void linear_rows(const LinearParams& p, int bx, const float* tab, float* scratch, float* res,
                                   const NormIn* f, const XSplitParams* split) {
    extern __shared__ float dyn_x[];
    int t0 = blockIdx.y * TT;
    // block_rowdot asks for the x rows after issuing its first weight loads: those overlap the previous
    // kernel's drain, and this is the kernel's grid_dep_sync (the GEMV entries call none before).
    auto xrows = [&](const float** xs) {
        grid_dep_sync();
        if (NORM) {
            norm_prologue(*f, dyn_x);
            xs[0] = dyn_x;
            return;
        }
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
    if constexpr (NORM) {
        // The router's GEMV also splits its x (the norm's output, in shared memory) for the MXFP4 dot-product
        // experts, each block its share of the units: no launch of its own for the split.
        if (split && split->rows) {
            XSplitParams sp = *split;
            sp.x = dyn_x;
            i64 units = (i64)(sp.k / 32) * 4;
            for (i64 base = (i64)bx * blockDim.x; base < units; base += (i64)gridDim.x * blockDim.x)
                xsplit_unit(sp, base + threadIdx.x);
        }
    }
}

template <int F, int TT, int NORM = 0>
static __device__ void linear_impl(const LinearParams& p, int bx, const NormIn* f = nullptr,
                                   const XSplitParams* split = nullptr) {
    __shared__ float tab[16];
    __shared__ float scratch[8 * LIN_NR * TT];
    __shared__ float res[8 * LIN_NR * TT];
    load_table(p.w, tab);
    if constexpr (F == WF_LUT4_E8M0 || F == WF_LUT4_F32) {
        if (p.w.ld % 32 == 0 && p.w.block % 32 == 0) linear_rows<F, 32, TT, NORM>(p, bx, tab, scratch, res, f, split);
        else linear_rows<F, 8, TT, NORM>(p, bx, tab, scratch, res, f, split);
    } else {
        linear_rows<F, F == WF_Q8 ? 16 : 8, TT, NORM>(p, bx, tab, scratch, res, f, split);
    }
}

// A GEMV whose x is the norm of a residual row, computed by each block (norm_prologue); with split.rows = 1 the
// blocks also write that row's split (split.x is ignored: the row is the norm's output).
struct LinearNormParams {
    LinearParams p;
    NormIn norm;
    XSplitParams split;
};

// The part (0, 1 or 2) of a three-linear group launch that this block belongs to: blocks [first[i], first[i + 1])
// of grid x are part i's (first[0] = 0).
static __device__ __forceinline__ int group_part(int first1, int first2) {
    return blockIdx.x >= first2 ? 2 : blockIdx.x >= first1 ? 1 : 0;
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
    int i = group_part(g.first[1], g.first[2]);
    linear_impl<F, TT>(g.part[i], blockIdx.x - g.first[i]);
}

// Writes a tensor-core tile's outputs (mma_tile's acc layout: rows from m0, weight rows from n0): the outputs plus
// the bias, or with K splits (grid z > 1) the split's partial sums, which linear_reduce adds.
template <int MT>
static __device__ __forceinline__ void store_tile(const LinearParams& p, int m0, int n0, const float (*acc)[4][4]) {
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

template <int F, int MT, int XP>
static __device__ void linear_mma_impl(const LinearParams& p) {
    __shared__ MmaSmem<XP> sm;
    int m0 = blockIdx.y * 32 * MT, n0 = blockIdx.x * MMA_BN;
    const float* xrow[MT];
    #pragma unroll
    for (int j = 0; j < MT; j++) {
        int m = m0 + (threadIdx.x >> 3) + 32 * j;
        xrow[j] = m < p.n_tok ? p.x + (p.x_rows ? (i64)p.x_rows[m] : (i64)m) * p.x_ld : nullptr;
    }
    int kb = blockIdx.z * p.k_split, ke = min(p.k, kb + p.k_split);
    float acc[MT][4][4];
    mma_tile<F, MT, XP>(p.w, xrow, (i64)n0, p.n_out - n0, p.k, kb, ke, sm, acc);
    store_tile<MT>(p, m0, n0, acc);
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

// out[m, n] = Σ_z partial[z][m][n] + bias[n], z in order, for output element i = m · n_out + n.
static __device__ __forceinline__ void reduce_element(const ReduceParams& p, i64 i) {
    i64 len = (i64)p.n_tok * p.n_out;
    if (i >= len) return;
    int n = (int)(i % p.n_out);
    float s = 0.0f;
    for (int z = 0; z < p.splits; z++) s += p.partial[z * len + i];
    p.out[(i / p.n_out) * p.out_ld + n] = s + (p.bias ? p.bias[n] : 0.0f);
}

// reduce_element over every output. Grid: ceil(n_tok * n_out / 256). Block: 256 threads.
extern "C" __global__ void __launch_bounds__(256) linear_reduce(const ReduceParams p) {
    grid_dep_sync();
    reduce_element(p, (i64)blockIdx.x * blockDim.x + threadIdx.x);
}

// Three reduces in one grid (linear3_pipe_<fmt>'s q, k and v): blocks [first[i], first[i + 1]) are part i's.
struct ReduceGroupParams {
    ReduceParams part[3];
    int first[4];
};

extern "C" __global__ void __launch_bounds__(256) linear3_reduce(const ReduceGroupParams g) {
    grid_dep_sync();
    int i = group_part(g.first[1], g.first[2]);
    reduce_element(g.part[i], (i64)(blockIdx.x - g.first[i]) * blockDim.x + threadIdx.x);
}

// ---- Pipelined exact tiles (batched decode: 5-64 rows, bf16 and Q8_0) ----
// The tiles above refill shared memory from registers one K step ahead and split each x value into its three
// bf16 parts in every block; at 16-64 rows that left the weights streaming at 0.6-1.1 TB/s (bench/NOTES.md,
// session 18). Here linear_xparts writes x's three parts once, as planes [part][row][kp] of bf16 (kp: K rounded
// up to MMA_BK, zeros past K), and linear_pipe_<fmt> streams x planes and weight tiles through a cp.async ring of
// PipeStage::STAGES (4 for tiles of 64 rows, 6 for 32: what keeps enough weight bytes in flight), with
// mma_compute's arithmetic: a fresh partial sum every K step of 32, smallest part first, added in f32 (times the
// Q8_0 scale of the step). Rows in shared memory are unpadded (64 bytes of bf16, 32 of Q8_0 codes) with their
// 16-byte chunks XOR-swizzled (pipe_chunk64 / pipe_chunk32) so that ldmatrix's 8 rows hit distinct banks. Q8_0
// codes go to shared memory as they are stored and are widened to bf16 per fragment: ldmatrix hands thread t
// codes 4t..4t+3 of a 16-code chunk where the MMA's B fragment wants k = 2t, 2t+1 and 2t+8, 2t+9, so the Q8_0
// planes store each 16-element chunk in that order (pipe_q8_word), which the dot product does not see.

struct XPartsParams {
    const float* x;
    const int* x_rows;
    u16* planes;
    int n_tok;
    int k;
    int kp;
    int x_ld;
    int q8_order;
};

// The x word (two elements) that logical word w of a 16-element chunk holds in the Q8_0 order: logical k 2t + 8h
// and 2t + 8h + 1 (w = t + 4h) are the codes 4t + 2h and 4t + 2h + 1 that thread t's ldmatrix word holds.
static __device__ __forceinline__ int pipe_q8_word(int w) {
    return 2 * (w & 3) + (w >> 2);
}

// planes[j][row][2u, 2u + 1] = part j of x's elements of word u (see pipe_q8_word). Grid: ceil(n_tok * kp / 2 /
// 256). Block: 256 threads.
extern "C" __global__ void __launch_bounds__(256) linear_xparts(const XPartsParams p) {
    grid_dep_sync();
    int words = p.kp / 2;
    i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x, n = (i64)p.n_tok * words;
    if (i >= n) return;
    int row = (int)(i / words), lw = (int)(i % words);
    int pw = p.q8_order ? (lw & ~7) + pipe_q8_word(lw & 7) : lw, k0 = 2 * pw;
    const float* xr = p.x + (p.x_rows ? (i64)p.x_rows[row] : (i64)row) * p.x_ld;
    float a = k0 < p.k ? xr[k0] : 0.0f, b = k0 + 1 < p.k ? xr[k0 + 1] : 0.0f;
    u32 part[MMA_XPARTS];
    split_bf16x2<MMA_XPARTS>(a, b, part);
    u32* out = (u32*)p.planes;
    #pragma unroll
    for (int j = 0; j < MMA_XPARTS; j++) out[j * n + i] = part[j];
}

struct PipeParams {
    LinearParams p;
    const u16* planes;
    int kp;
};

// Shared memory of one ring stage: x planes (32 · MT rows each of 4 chunks), then the weights (bf16: 128 rows of 4
// chunks; Q8_0: 128 rows of 2 chunks of codes, then for each row the 32-bit word holding its f16 scale).
template <int F, int MT>
struct PipeStage {
    static constexpr int STAGES = MT == 2 ? 4 : 6;
    static constexpr int X_ROWS = 32 * MT;
    static constexpr int X_BYTES = MMA_XPARTS * X_ROWS * 64;
    static constexpr int W_CODES = F == WF_Q8 ? MMA_BN * 32 : MMA_BN * 64;
    static constexpr int BYTES = X_BYTES + W_CODES + (F == WF_Q8 ? MMA_BN * 4 : 0);
};

// Byte offset of 16-byte chunk c of row r in rows of 64 bytes (x planes, bf16 weights: rows r and r + 2 would share
// banks) or of 32 (Q8_0 codes: r and r + 4 would).
static __device__ __forceinline__ u32 pipe_chunk64(int r, int c) {
    return (u32)(r * 4 + (c ^ ((r >> 1) & 3))) * 16;
}

static __device__ __forceinline__ u32 pipe_chunk32(int r, int c) {
    return (u32)(r * 2 + (c ^ ((r >> 2) & 1))) * 16;
}

// Four Q8_0 codes (bytes of r, lowest first) as two bf16x2, exactly: each byte, biased by 128, becomes the low
// mantissa byte of 2^23 and the bias comes off in one f32 subtraction.
static __device__ __forceinline__ void q8x4_bf16(u32 r, u32& lo, u32& hi) {
    u32 u = r ^ 0x80808080u;
    const float off = 8388736.0f;  // 2^23 + 128
    float f0 = __uint_as_float(__byte_perm(u, 0x4b000000u, 0x7650)) - off;
    float f1 = __uint_as_float(__byte_perm(u, 0x4b000000u, 0x7651)) - off;
    float f2 = __uint_as_float(__byte_perm(u, 0x4b000000u, 0x7652)) - off;
    float f3 = __uint_as_float(__byte_perm(u, 0x4b000000u, 0x7653)) - off;
    lo = bf16x2(f0, f1);
    hi = bf16x2(f2, f3);
}

// acc as mma_tile's (rows m0 + ..., weight rows n0 + ..., K share [kb, kb + k_split) of kp), from q.planes.
// Needs k % 32 == 0 (kp == k), ld % 8 == 0 and 16-byte aligned rows (bf16), and STAGES · BYTES of PipeStage in
// dynamic shared memory.
template <int F, int MT>
static __device__ void linear_pipe_impl(const PipeParams& q, int bx) {
    using S = PipeStage<F, MT>;
    extern __shared__ __align__(16) unsigned char pipe_smem[];
    const LinearParams& p = q.p;
    const WRef& w = p.w;
    int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wm = warp >> 2, wn = warp & 3;
    int m0 = blockIdx.y * S::X_ROWS, n0 = bx * MMA_BN;
    int kb = blockIdx.z * p.k_split, nk = (min(q.kp, kb + p.k_split) - kb) / MMA_BK;
    u32 base = smem_addr(pipe_smem);
    i64 plane = (i64)p.n_tok * q.kp;
    // Q8_0 scales: row r's for the step is f16 number (n0 + r) · ld / 32 + k0 / 32 of the weight's; its stage holds
    // the aligned 32-bit word around it (the consumer picks the half by the index's parity).
    int row_blocks = w.ld / 32;
    auto load_stage = [&](int j) {
        if (j < nk) {
            int k0 = kb + j * MMA_BK;
            u32 st = base + (j % S::STAGES) * S::BYTES;
            constexpr int X_CHUNKS = MMA_XPARTS * S::X_ROWS * 4;
            #pragma unroll
            for (int j0 = 0; j0 < X_CHUNKS; j0 += 256) {
                int c = tid + j0;
                if (X_CHUNKS % 256 != 0 && c >= X_CHUNKS) break;
                int part = c / (S::X_ROWS * 4), row = (c >> 2) % S::X_ROWS, piece = c & 3;
                bool live = m0 + row < p.n_tok;
                const u16* src = q.planes + part * plane + (i64)(m0 + row) * q.kp + k0 + piece * 8;
                cp_async16(st + pipe_chunk64(part * S::X_ROWS + row, piece), live ? src : q.planes, live ? 16 : 0);
            }
            u32 wst = st + S::X_BYTES;
            if constexpr (F == WF_Q8) {
                int row = tid >> 1, piece = tid & 1;
                bool live = n0 + row < p.n_out;
                i64 e0 = (i64)(n0 + row) * w.ld + k0;
                cp_async16(wst + pipe_chunk32(row, piece), live ? (const u8*)w.data + e0 + piece * 16 : w.data,
                           live ? 16 : 0);
                if (tid < MMA_BN) {
                    bool has = n0 + tid < p.n_out;
                    i64 idx = (i64)(n0 + tid) * row_blocks + k0 / 32;
                    // The last scale of the weight, at an even index, has no neighbour to read.
                    bool last = (idx & 1) == 0 && idx + 1 == (i64)p.n_out * row_blocks;
                    cp_async4(wst + S::W_CODES + tid * 4, has ? (const u16*)w.scales + (idx & ~(i64)1) : w.scales,
                              has ? (last ? 2 : 4) : 0);
                }
            } else {
                #pragma unroll
                for (int j0 = 0; j0 < MMA_BN * 4; j0 += 256) {
                    int c = tid + j0, row = c >> 2, piece = c & 3;
                    bool live = n0 + row < p.n_out;
                    const u16* src = (const u16*)w.data + (i64)(n0 + row) * w.ld + k0 + piece * 8;
                    cp_async16(wst + pipe_chunk64(row, piece), live ? src : w.data, live ? 16 : 0);
                }
            }
        }
        cp_async_commit();
    };
    float acc[MT][4][4];
    #pragma unroll
    for (int mt = 0; mt < MT; mt++)
        #pragma unroll
        for (int nt = 0; nt < 4; nt++)
            #pragma unroll
            for (int i = 0; i < 4; i++) acc[mt][nt][i] = 0.0f;
    #pragma unroll
    for (int s = 0; s < S::STAGES - 1; s++) load_stage(s);
    for (int ks = 0; ks < nk; ks++) {
        cp_async_wait<S::STAGES - 2>();
        __syncthreads();
        load_stage(ks + S::STAGES - 1);
        u32 xs = base + (ks % S::STAGES) * S::BYTES, wsm = xs + S::X_BYTES;
        float part[MT][4][4];
        #pragma unroll
        for (int mt = 0; mt < MT; mt++)
            #pragma unroll
            for (int nt = 0; nt < 4; nt++)
                #pragma unroll
                for (int i = 0; i < 4; i++) part[mt][nt][i] = 0.0f;
        #pragma unroll
        for (int kk = 0; kk < MMA_BK; kk += 16) {
            u32 b[4][2];
            if constexpr (F == WF_Q8) {
                u32 r[4];
                ldsm_x4(wsm + pipe_chunk32(wn * 32 + lane, kk / 16), r);
                #pragma unroll
                for (int nt = 0; nt < 4; nt++) q8x4_bf16(r[nt], b[nt][0], b[nt][1]);
            } else {
                #pragma unroll
                for (int np = 0; np < 2; np++) {
                    int row = wn * 32 + np * 16 + (lane & 7) + (lane >> 4) * 8;
                    u32 r[4];
                    ldsm_x4(wsm + pipe_chunk64(row, kk / 8 + ((lane >> 3) & 1)), r);
                    b[2 * np][0] = r[0];
                    b[2 * np][1] = r[1];
                    b[2 * np + 1][0] = r[2];
                    b[2 * np + 1][1] = r[3];
                }
            }
            #pragma unroll 1
            for (int xp = MMA_XPARTS - 1; xp >= 0; xp--) {
                u32 a[MT][4];
                #pragma unroll
                for (int mt = 0; mt < MT; mt++) {
                    int row = xp * S::X_ROWS + wm * 16 * MT + mt * 16 + (lane & 15);
                    ldsm_x4(xs + pipe_chunk64(row, kk / 8 + (lane >> 4)), a[mt]);
                }
                #pragma unroll
                for (int mt = 0; mt < MT; mt++)
                    #pragma unroll
                    for (int nt = 0; nt < 4; nt++) mma_bf16(part[mt][nt], a[mt], b[nt][0], b[nt][1]);
            }
        }
        float sc[4][2];
        #pragma unroll
        for (int nt = 0; nt < 4; nt++)
            #pragma unroll
            for (int j = 0; j < 2; j++) {
                if constexpr (F == WF_Q8) {
                    const u32* ws = (const u32*)(pipe_smem + (ks % S::STAGES) * S::BYTES + S::X_BYTES + S::W_CODES);
                    int r = wn * 32 + nt * 8 + 2 * (lane & 3) + j;
                    u32 odd = (u32)((n0 + r) * row_blocks + kb / 32 + ks) & 1u;
                    sc[nt][j] = f16_to_f32((u16)(ws[r] >> (16 * odd)));
                } else {
                    sc[nt][j] = 1.0f;
                }
            }
        #pragma unroll
        for (int mt = 0; mt < MT; mt++)
            #pragma unroll
            for (int nt = 0; nt < 4; nt++)
                #pragma unroll
                for (int i = 0; i < 4; i++) {
                    if constexpr (F == WF_Q8) acc[mt][nt][i] += part[mt][nt][i] * sc[nt][i & 1];
                    else acc[mt][nt][i] += part[mt][nt][i];
                }
    }
    cp_async_wait<0>();
    store_tile<MT>(p, m0, n0, acc);
}

// q, k and v of one input (one set of x planes) in one grid, split alike: blocks [first[i], first[i + 1]) of grid x
// are part i's weight tiles (k and v alone, 4 tiles wide, left most SMs idle: 15.5 µs each at 64 rows against
// q's 32).
struct PipeGroupParams {
    PipeParams part[3];
    int first[4];
};

template <int F, int MT>
static __device__ void linear3_pipe_impl(const PipeGroupParams& g) {
    int i = group_part(g.first[1], g.first[2]);
    linear_pipe_impl<F, MT>(g.part[i], blockIdx.x - g.first[i]);
}

// linear_pipe_<fmt> (64 rows a tile), linear_pipe32_<fmt> (32) and their q/k/v groups linear3_pipe{,32}_<fmt>. Grid
// as linear_mma_<fmt>. Block: 256 threads, PipeStage's STAGES · BYTES of dynamic shared memory (src/kernels.rs:
// pipe_smem_bytes).
#define LINEAR_PIPE_ENTRY(NAME, F) \
    extern "C" __global__ void __launch_bounds__(256, 2) linear_pipe_##NAME(const PipeParams q) { grid_dep_sync(); linear_pipe_impl<F, 2>(q, blockIdx.x); } \
    extern "C" __global__ void __launch_bounds__(256, 2) linear_pipe32_##NAME(const PipeParams q) { grid_dep_sync(); linear_pipe_impl<F, 1>(q, blockIdx.x); } \
    extern "C" __global__ void __launch_bounds__(256, 2) linear3_pipe_##NAME(const PipeGroupParams g) { grid_dep_sync(); linear3_pipe_impl<F, 2>(g); } \
    extern "C" __global__ void __launch_bounds__(256, 2) linear3_pipe32_##NAME(const PipeGroupParams g) { grid_dep_sync(); linear3_pipe_impl<F, 1>(g); }

LINEAR_PIPE_ENTRY(bf16, WF_BF16)
LINEAR_PIPE_ENTRY(q8, WF_Q8)

// ---- One step row, one warp per few weight rows (see the top) ----
#define WARP_ROWS 2
#define WARP_CHUNKS 4
#define DOT_Q8_ROWS 4
#define DOT_Q8_BLOCKS 2

// The step's one x row (the logits' selected row when x_rows is set). Call after grid_dep_sync.
static __device__ __forceinline__ const float* one_row_x(const LinearParams& p) {
    return p.x + (p.x_rows ? (i64)p.x_rows[0] : (i64)0) * p.x_ld;
}

// Lane 0 writes the warp's NR row sums (plus bias) for rows row0.. below n_out.
template <int NR>
static __device__ __forceinline__ void store_warp_rows(const LinearParams& p, i64 row0, float (&acc)[NR]) {
    #pragma unroll
    for (int r = 0; r < NR; r++) {
        float v = warp_sum(acc[r]);
        if ((threadIdx.x & 31) == 0 && row0 + r < p.n_out) p.out[row0 + r] = v + (p.bias ? p.bias[row0 + r] : 0.0f);
    }
}

template <int F>
static __device__ void linear_warp_impl(const LinearParams& p, int bx) {
    int lane = threadIdx.x & 31;
    i64 row0 = ((i64)bx * (blockDim.x >> 5) + (threadIdx.x >> 5)) * WARP_ROWS;
    i64 rows[WARP_ROWS];
    #pragma unroll
    for (int r = 0; r < WARP_ROWS; r++) rows[r] = min(row0 + r, (i64)p.n_out - 1);
    int nch = (p.k + 7) / 8;
    float acc[WARP_ROWS][1];
    #pragma unroll
    for (int r = 0; r < WARP_ROWS; r++) acc[r][0] = 0.0f;
    // A ring of WARP_CHUNKS chunks per row: chunk c's slot is refilled with chunk c + 32 · WARP_CHUNKS as soon
    // as c is used, so every lane keeps WARP_CHUNKS · WARP_ROWS loads in flight until the row's end.
    Raw ring[WARP_CHUNKS][WARP_ROWS];
    #pragma unroll
    for (int j = 0; j < WARP_CHUNKS; j++) {
        int c = lane + 32 * j;
        if (c < nch) {
            #pragma unroll
            for (int r = 0; r < WARP_ROWS; r++) load_raw<F, 8>(p.w, rows[r], c, ring[j][r]);
        }
    }
    grid_dep_sync();
    const float* xs[1] = {one_row_x(p)};
    for (int c0 = 0; c0 < nch; c0 += 32 * WARP_CHUNKS) {
        #pragma unroll
        for (int j = 0; j < WARP_CHUNKS; j++) {
            int c = c0 + lane + 32 * j, next = c + 32 * WARP_CHUNKS;
            if (c < nch) sub_dot<F, 1, WARP_ROWS>(p.w, nullptr, ring[j], c * 8, xs, p.k, acc);
            if (next < nch) {
                #pragma unroll
                for (int r = 0; r < WARP_ROWS; r++) load_raw<F, 8>(p.w, rows[r], next, ring[j][r]);
            }
        }
    }
    float sums[WARP_ROWS];
    #pragma unroll
    for (int r = 0; r < WARP_ROWS; r++) sums[r] = acc[r][0];
    store_warp_rows<WARP_ROWS>(p, row0, sums);
}

// x (k / 32 blocks of 32 f32) as int8 planes in shared memory, by the whole block: quad q (0, 1 hi; 2, 3 mid;
// 4, 5 lo; each 16 of the block's 32 bytes) of block kb at planes[q · nkb + kb], its scale (block_planes' inv) at
// scales[kb]. Ends with a barrier.
static __device__ void split_x_planes(const float* x, int nkb, uint4* planes, float* scales) {
    u32* words = (u32*)planes;
    for (int base = 0; base < nkb * 4; base += blockDim.x) {
        int u = base + threadIdx.x, kb = u >> 2, t = u & 3;
        bool live = u < nkb * 4;
        float v[8];
        #pragma unroll
        for (int i = 0; i < 8; i++) v[i] = 0.0f;
        if (live) {
            const float4* src = (const float4*)(x + kb * 32 + 8 * t);
            float4 a = src[0], b = src[1];
            v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w; v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
        }
        float m = 0.0f;
        int nan = 0;
        #pragma unroll
        for (int i = 0; i < 8; i++) {
            m = fmaxf(m, fabsf(v[i]));
            nan |= v[i] != v[i];
        }
        // Quads are whole (blockDim.x is a multiple of 4): a quad's lanes share the block's maximum.
        m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 1));
        m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 2));
        nan |= __shfl_xor_sync(0xffffffffu, nan, 1);
        nan |= __shfl_xor_sync(0xffffffffu, nan, 2);
        u32 h0, h1, m0, m1, l0, l1;
        float inv;
        block_planes(v, nan ? __int_as_float(0x7f800000) : m, h0, h1, m0, m1, l0, l1, inv);
        if (live) {
            // Elements 8t..8t+7 are plane words 2t, 2t + 1: quad t / 2, word 2t mod 4 of it.
            int q = t >> 1, w = (2 * t) & 3;
            *(uint2*)(words + ((i64)(q * nkb + kb) * 4 + w)) = make_uint2(h0, h1);
            *(uint2*)(words + ((i64)((2 + q) * nkb + kb) * 4 + w)) = make_uint2(m0, m1);
            *(uint2*)(words + ((i64)((4 + q) * nkb + kb) * 4 + w)) = make_uint2(l0, l1);
            if (t == 0) scales[kb] = inv;
        }
    }
    __syncthreads();
}

// The ring of linear_dot_q8: DOT_Q8_BLOCKS 32-element blocks of Q8_0 codes of the warp's rows per lane, and their
// scales.
struct Q8Ring {
    uint4 lo[DOT_Q8_BLOCKS][DOT_Q8_ROWS];
    uint4 hi[DOT_Q8_BLOCKS][DOT_Q8_ROWS];
    float d[DOT_Q8_BLOCKS][DOT_Q8_ROWS];
};

// Block kb (if below nkb) of the warp's rows into slot j.
static __device__ __forceinline__ void load_q8_block(const WRef& w, const i64 (&rows)[DOT_Q8_ROWS], int kb, int nkb,
                                                     Q8Ring& q, int j) {
    if (kb >= nkb) return;
    #pragma unroll
    for (int r = 0; r < DOT_Q8_ROWS; r++) {
        i64 e0 = rows[r] * (i64)w.ld + (i64)kb * 32;
        const uint4* c = (const uint4*)((const u8*)w.data + e0);
        q.lo[j][r] = c[0];
        q.hi[j][r] = c[1];
        q.d[j][r] = f16_to_f32(((const u16*)w.scales)[e0 / 32]);
    }
}

// NORM: x is rms_norm(f's rows), computed by each block into the first k floats of the dynamic shared memory
// (norm_prologue), the planes after them.
template <int NORM = 0>
static __device__ void linear_dot_q8_impl(const LinearParams& p, int bx, const NormIn* f = nullptr) {
    extern __shared__ uint4 dyn_smem[];
    int lane = threadIdx.x & 31, nkb = p.k / 32;
    uint4* dyn_planes = NORM ? dyn_smem + p.k / 4 : dyn_smem;
    i64 row0 = ((i64)bx * (blockDim.x >> 5) + (threadIdx.x >> 5)) * DOT_Q8_ROWS;
    i64 rows[DOT_Q8_ROWS];
    #pragma unroll
    for (int r = 0; r < DOT_Q8_ROWS; r++) rows[r] = min(row0 + r, (i64)p.n_out - 1);
    float* plane_scale = (float*)(dyn_planes + 6 * nkb);
    float acc[DOT_Q8_ROWS];
    #pragma unroll
    for (int r = 0; r < DOT_Q8_ROWS; r++) acc[r] = 0.0f;
    // A ring of DOT_Q8_BLOCKS blocks per row (as linear_warp_impl's): block kb's slot is refilled with block
    // kb + 32 · DOT_Q8_BLOCKS once kb is used. The first loads overlap the x split.
    Q8Ring q;
    #pragma unroll
    for (int j = 0; j < DOT_Q8_BLOCKS; j++) load_q8_block(p.w, rows, lane + 32 * j, nkb, q, j);
    grid_dep_sync();
    if (NORM) norm_prologue(*f, (float*)dyn_smem);
    split_x_planes(NORM ? (const float*)dyn_smem : one_row_x(p), nkb, dyn_planes, plane_scale);
    for (int kb0 = 0; kb0 < nkb; kb0 += 32 * DOT_Q8_BLOCKS) {
        #pragma unroll
        for (int j = 0; j < DOT_Q8_BLOCKS; j++) {
            int kb = kb0 + lane + 32 * j;
            if (kb < nkb) {
                uint4 h0 = dyn_planes[kb], h1 = dyn_planes[nkb + kb];
                uint4 m0 = dyn_planes[2 * nkb + kb], m1 = dyn_planes[3 * nkb + kb];
                uint4 l0 = dyn_planes[4 * nkb + kb], l1 = dyn_planes[5 * nkb + kb];
                // block_planes' inv is half the plane unit (moe_dot.cu's weights are E2M1 · 2).
                float xs = 2.0f * plane_scale[kb];
                #pragma unroll
                for (int r = 0; r < DOT_Q8_ROWS; r++) {
                    uint4 a = q.lo[j][r], b = q.hi[j][r];
                    int hi = 0, mid = 0, lo = 0;
                    hi = dp4a_ss(h0.x, a.x, hi); hi = dp4a_ss(h0.y, a.y, hi); hi = dp4a_ss(h0.z, a.z, hi); hi = dp4a_ss(h0.w, a.w, hi);
                    hi = dp4a_ss(h1.x, b.x, hi); hi = dp4a_ss(h1.y, b.y, hi); hi = dp4a_ss(h1.z, b.z, hi); hi = dp4a_ss(h1.w, b.w, hi);
                    mid = dp4a_us(m0.x, a.x, mid); mid = dp4a_us(m0.y, a.y, mid); mid = dp4a_us(m0.z, a.z, mid); mid = dp4a_us(m0.w, a.w, mid);
                    mid = dp4a_us(m1.x, b.x, mid); mid = dp4a_us(m1.y, b.y, mid); mid = dp4a_us(m1.z, b.z, mid); mid = dp4a_us(m1.w, b.w, mid);
                    lo = dp4a_us(l0.x, a.x, lo); lo = dp4a_us(l0.y, a.y, lo); lo = dp4a_us(l0.z, a.z, lo); lo = dp4a_us(l0.w, a.w, lo);
                    lo = dp4a_us(l1.x, b.x, lo); lo = dp4a_us(l1.y, b.y, lo); lo = dp4a_us(l1.z, b.z, lo); lo = dp4a_us(l1.w, b.w, lo);
                    // |hi| <= 127 · 64 · 32 is exact in f32; mid · 2^8 + lo < 2^29 rounds once, as an f32 sum would.
                    float f = (float)hi * 65536.0f + (float)(mid * 256 + lo);
                    acc[r] += f * (q.d[j][r] * xs);
                }
            }
            load_q8_block(p.w, rows, kb + 32 * DOT_Q8_BLOCKS, nkb, q, j);
        }
    }
    store_warp_rows<DOT_Q8_ROWS>(p, row0, acc);
}

// q, k and v of one input whose x is the norm of a residual row (norm_prologue; Q8_0).
struct LinearGroupNormParams {
    LinearGroupParams g;
    NormIn norm;
};

template <int F>
static __device__ void linear3_warp_impl(const LinearGroupParams& g) {
    int i = group_part(g.first[1], g.first[2]);
    linear_warp_impl<F>(g.part[i], blockIdx.x - g.first[i]);
}

template <int NORM = 0>
static __device__ void linear3_dot_q8_impl(const LinearGroupParams& g, const NormIn* f = nullptr) {
    int i = group_part(g.first[1], g.first[2]);
    linear_dot_q8_impl<NORM>(g.part[i], blockIdx.x - g.first[i], f);
}

#define LINEAR_WARP_ENTRY(NAME, F) \
    extern "C" __global__ void __launch_bounds__(256, 2) linear_warp_##NAME(const LinearParams p) { linear_warp_impl<F>(p, blockIdx.x); } \
    extern "C" __global__ void __launch_bounds__(256, 2) linear3_warp_##NAME(const LinearGroupParams g) { linear3_warp_impl<F>(g); }

LINEAR_WARP_ENTRY(bf16, WF_BF16)
LINEAR_WARP_ENTRY(f16, WF_F16)
extern "C" __global__ void __launch_bounds__(256, 2) linear_dot_q8(const LinearParams p) { linear_dot_q8_impl(p, blockIdx.x); }
extern "C" __global__ void __launch_bounds__(256, 2) linear3_dot_q8(const LinearGroupParams g) { linear3_dot_q8_impl(g); }
extern "C" __global__ void __launch_bounds__(256, 2) linear3_norm_dot_q8(const LinearGroupNormParams n) { linear3_dot_q8_impl<1>(n.g, &n.norm); }

#define LINEAR_ENTRY(NAME, F) \
    extern "C" __global__ void __launch_bounds__(256, 2) linear_##NAME##_t1(const LinearParams p) { linear_impl<F, 1>(p, blockIdx.x); } \
    extern "C" __global__ void __launch_bounds__(256, 2) linear_##NAME##_t2(const LinearParams p) { linear_impl<F, 2>(p, blockIdx.x); } \
    extern "C" __global__ void __launch_bounds__(256, 1) linear_##NAME##_t4(const LinearParams p) { linear_impl<F, 4>(p, blockIdx.x); } \
    extern "C" __global__ void __launch_bounds__(256, 2) linear3_##NAME##_t1(const LinearGroupParams g) { linear_group_impl<F, 1>(g); } \
    extern "C" __global__ void __launch_bounds__(256, 2) linear3_##NAME##_t2(const LinearGroupParams g) { linear_group_impl<F, 2>(g); } \
    extern "C" __global__ void __launch_bounds__(256, 1) linear3_##NAME##_t4(const LinearGroupParams g) { linear_group_impl<F, 4>(g); } \
    extern "C" __global__ void __launch_bounds__(256, 2) linear_norm_##NAME(const LinearNormParams n) { linear_impl<F, 1, 1>(n.p, blockIdx.x, &n.norm, &n.split); }

// MINB: blocks per SM the tensor-core kernel is register-limited for (2 = 128 registers; the three-part
// X split of mma.cu needs more than the 80 registers of 3 blocks). linear_mmafast_<fmt>: the fast tiles of
// prompts (x as two bf16 parts, mma.cu), 64 rows, FAST_MINB blocks per SM.
#define LINEAR_MMA_ENTRY(NAME, F, MINB, FAST_MINB) \
    extern "C" __global__ void __launch_bounds__(256, MINB) linear_mma_##NAME(const LinearParams p) { grid_dep_sync(); linear_mma_impl<F, 2, MMA_XPARTS>(p); } \
    extern "C" __global__ void __launch_bounds__(256, MINB) linear_mma32_##NAME(const LinearParams p) { grid_dep_sync(); linear_mma_impl<F, 1, MMA_XPARTS>(p); } \
    extern "C" __global__ void __launch_bounds__(256, FAST_MINB) linear_mmafast_##NAME(const LinearParams p) { grid_dep_sync(); linear_mma_impl<F, 2, 2>(p); }

LINEAR_ENTRY(f32, WF_F32)
LINEAR_ENTRY(bf16, WF_BF16)
LINEAR_ENTRY(f16, WF_F16)
LINEAR_ENTRY(q8, WF_Q8)
LINEAR_ENTRY(lut4e8m0, WF_LUT4_E8M0)
LINEAR_ENTRY(lut4f32, WF_LUT4_F32)
LINEAR_MMA_ENTRY(bf16, WF_BF16, 2, 3)
LINEAR_MMA_ENTRY(q8, WF_Q8, 2, 2)
LINEAR_MMA_ENTRY(lut4e8m0, WF_LUT4_E8M0, 2, 2)
LINEAR_MMA_ENTRY(lut4f32, WF_LUT4_F32, 2, 2)
