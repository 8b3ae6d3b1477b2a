// moe_dot.cu — MXFP4 experts for decode, one pair per tile, on integer dot products: an E2M1 code is an exact
// int8 weight (E2M1 · 2 ∈ {0, ±1, ±2, ±3, ±4, ±6, ±8, ±12}), x an int24 per 32-element block split into three
// int8 planes (xsplit_unit's dot form, moe_common.cu), and dp4a multiplies four of each into exact int32 sums
// per plane and block; the E8M0 and x scales multiply each block's sum in f32. As exact as the f16 tensor-core
// kernels of moe.cu (23 bits of x against their 22), in about a third of their instructions per weight byte at
// one pair per tile, where the tensor cores' 8 pair columns are 7/8 empty (bench/NOTES.md, session 6).
// moe_{gate_up,down}_fp4_dot: grid x = pairs (find_tile with tiles of one pair), y = ceil(weight rows / 64);
// 256 threads = 8 warps × DOT_ROWS weight rows; a warp's lanes take the K blocks lane, lane + 32, ...: a lane
// reads its block's 16 code bytes of each row (a warp, 512 contiguous bytes of a row), its E8M0 scale and the
// pair's x planes (96 bytes, once for the warp's rows); each row's lane sums are added by a fixed shuffle tree.
// gate_up: a block's 64 rows are 32 act values, one 32-element block of act, written as int8 planes for down
// when act_dot (else through moe_store). Needs k % 32 == 0 (and n_out % 32 == 0 for act_dot).
// With `route_experts` set (steps of a few tokens) neither kernel reads the grouped pair lists: gate_up's grid x
// is the pairs themselves (block x = pair t · top_k + s, its expert read from the routing, or with `route_logits`
// selected by each warp from the router's logits and written to the routing by one block; pairs without one
// exit), and down runs token-major (moe_down_fp4_dot_tokens: grid x = tokens, y = ceil(rows / (8 / top_k ·
// DOT_TOKEN_ROWS)); the block's warps take its token's top_k pairs × 8 / top_k groups of DOT_TOKEN_ROWS rows)
// and, holding every pair of its rows, writes the combined output itself (moe_combine's sum, order and
// arithmetic). top_k must divide 8.
// Minimum arch: sm_80 (dp4a itself: sm_61). Launched from src/ops/moe.rs.
#define DOT_ROWS 8
// Rows per warp of the token-major down: 6 makes 20b's 2,880 rows 240 blocks (0.91 waves of 2 per SM on 132
// SMs) where 8 made 180 (0.68).
#define DOT_TOKEN_ROWS 6

// 8 codes (element 2j in the low nibble of byte j) as int8 weights E2M1 · 2, elements 0..3 in w03 and 4..7 in
// w47: the magnitudes through a byte table, the sign choosing between the positive and negative tables.
static __device__ __forceinline__ void e2m1_i8(u32 w, u32& w03, u32& w47) {
    u32 m = w & 0x77777777u;
    u32 sel = ((w & 0x88888888u) >> 1) | 0x32103210u;
    const u32 pos0 = 0x03020100u, pos1 = 0x0C080604u, neg0 = 0xFDFEFF00u, neg1 = 0xF4F8FAFCu;
    w03 = __byte_perm(__byte_perm(pos0, pos1, m), __byte_perm(neg0, neg1, m), sel);
    w47 = __byte_perm(__byte_perm(pos0, pos1, m >> 16), __byte_perm(neg0, neg1, m >> 16), sel >> 16);
}

// One code word (8 elements) against the matching x words of the three planes.
static __device__ __forceinline__ void dot_word(u32 q, u32 h03, u32 h47, u32 m03, u32 m47, u32 l03, u32 l47,
                                                int& hi, int& mid, int& lo) {
    u32 a, b;
    e2m1_i8(q, a, b);
    hi = dp4a_ss(h03, a, hi);
    hi = dp4a_ss(h47, b, hi);
    mid = dp4a_us(m03, a, mid);
    mid = dp4a_us(m47, b, mid);
    lo = dp4a_us(l03, a, lo);
    lo = dp4a_us(l47, b, lo);
}

// `v` of register r, picked by the warp's lane r without indexing a register array.
template <int NR>
static __device__ __forceinline__ float lane_pick(const float (&v)[NR], int r) {
    float out = 0.0f;
    #pragma unroll
    for (int i = 0; i < NR; i++) out = r == i ? v[i] : out;
    return out;
}

// One warp's NR rows from row0 of the expert at wbase / sbase against the x planes at xp / xsc: each lane's
// partial sums (the caller adds the lanes).
template <int NR>
static __device__ __forceinline__ void dot_rows(const ExpertParams& p, const u8* wbase, const u8* sbase,
                                                const uint4* xp, const float* xsc, int row0, int n_rows,
                                                float (&acc)[NR]) {
    int lane = threadIdx.x & 31, nkb = p.k / 32;
    u32 row_bytes = (u32)(p.w.ld / 2);
    #pragma unroll
    for (int r = 0; r < NR; r++) acc[r] = 0.0f;
    for (int kb = lane; kb < nkb; kb += 32) {
        uint4 q[NR];
        float ws[NR];
        #pragma unroll
        for (int r = 0; r < NR; r++) {
            i64 row = min(row0 + r, n_rows - 1);
            q[r] = *(const uint4*)(wbase + row * row_bytes + kb * 16);
            ws[r] = e8m0_to_f32(sbase[row * p.w.row_scales + kb]);
        }
        const uint4* xb = xp + kb * 8;
        uint4 h0 = xb[0], h1 = xb[1], m0 = xb[2], m1 = xb[3], l0 = xb[4], l1 = xb[5];
        float xs = xsc[kb];
        #pragma unroll
        for (int r = 0; r < NR; r++) {
            int hi = 0, mid = 0, lo = 0;
            dot_word(q[r].x, h0.x, h0.y, m0.x, m0.y, l0.x, l0.y, hi, mid, lo);
            dot_word(q[r].y, h0.z, h0.w, m0.z, m0.w, l0.z, l0.w, hi, mid, lo);
            dot_word(q[r].z, h1.x, h1.y, m1.x, m1.y, l1.x, l1.y, hi, mid, lo);
            dot_word(q[r].w, h1.z, h1.w, m1.z, m1.w, l1.z, l1.w, hi, mid, lo);
            // |hi| <= 12 · 64 · 32 is exact in f32; mid · 2^8 + lo < 2^25 rounds once, as an f32 sum would.
            float f = (float)hi * 65536.0f + (float)(mid * 256 + lo);
            acc[r] += f * (ws[r] * xs);
        }
    }
    #pragma unroll
    for (int r = 0; r < NR; r++)
        #pragma unroll
        for (int o = 16; o > 0; o >>= 1) acc[r] += __shfl_xor_sync(0xffffffffu, acc[r], o);
}

// The expert's codes and scales, and the x planes of x row xr.
struct DotOperands {
    const u8* w;
    const u8* s;
    const uint4* x;
    const float* xs;
};

static __device__ __forceinline__ DotOperands dot_operands(const ExpertParams& p, int e, int n_rows, i64 xr) {
    int nkb = p.k / 32;
    u32 row_bytes = (u32)(p.w.ld / 2);
    return DotOperands{(const u8*)p.w.data + (i64)e * n_rows * row_bytes,
                       (const u8*)p.w.scales + (i64)e * n_rows * p.w.row_scales,
                       (const uint4*)(p.xs + xr * nkb * 32), p.xscale + xr * nkb};
}

template <int GATE_UP>
static __device__ void expert_fp4_dot_impl(const ExpertParams& p) {
    __shared__ float acts[8 * DOT_ROWS / 2];
    int e, pair;
    if (p.route_logits) {
        pair = blockIdx.x;
        int t = pair / p.top_k, s = pair % p.top_k, my_e;
        float my_w;
        topk_select(p.route_logits + (i64)t * p.n_experts, p.n_experts, p.top_k, my_e, my_w);
        e = __shfl_sync(0xffffffffu, my_e, s);
        if (s == 0 && blockIdx.y == 0 && threadIdx.x < p.top_k) {
            ((int*)p.route_experts)[(i64)t * p.top_k + threadIdx.x] = my_e;
            ((float*)p.route_weights)[(i64)t * p.top_k + threadIdx.x] = my_w;
        }
    } else if (p.route_experts) {
        pair = blockIdx.x;
        e = p.route_experts[pair];
        if (e < 0 || e >= p.n_experts) return;
    } else {
        int start;
        if (!find_tile(p.counts, p.n_experts, 1, blockIdx.x, e, start)) return;
        pair = p.list[p.offsets[e] + start];
    }
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int n_rows = GATE_UP ? 2 * p.n_out : p.n_out;
    int row0 = (blockIdx.y * 8 + warp) * DOT_ROWS;
    DotOperands d = dot_operands(p, e, n_rows, p.x_per_pair ? (i64)pair : (i64)(pair / p.top_k));
    float acc[DOT_ROWS];
    dot_rows(p, d.w, d.s, d.x, d.xs, row0, n_rows, acc);
    if constexpr (!GATE_UP) {
        int row = row0 + lane;
        if (lane < DOT_ROWS && row < n_rows) moe_store_pair<0>(p, e, pair, row, lane_pick(acc, lane), 0.0f);
        return;
    } else {
        // Lane j < DOT_ROWS / 2 holds act (row0 / 2 + j): gate row row0 + 2j, up row row0 + 2j + 1.
        int j = lane, row = row0 + 2 * j;
        float gate = lane_pick(acc, 2 * j), up = lane_pick(acc, 2 * j + 1);
        bool mine = j < DOT_ROWS / 2 && row < n_rows;
        if (!p.act_dot) {
            if (mine) moe_store_pair<1>(p, e, pair, row, gate, up);
            return;
        }
        i64 base = (i64)e * n_rows;
        if (mine) {
            float bg = p.bias ? p.bias[base + row] : 0.0f, bu = p.bias ? p.bias[base + row + 1] : 0.0f;
            acts[warp * (DOT_ROWS / 2) + j] = swiglu_oai(gate + bg, up + bu, p.alpha, p.limit);
        }
        __syncthreads();
        if (warp != 0) return;
        int i0 = blockIdx.y * 32;
        float v = i0 + lane < p.n_out ? acts[lane] : 0.0f;
        float m = fabsf(v);
        int nan = v != v;
        #pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
            nan |= __shfl_xor_sync(0xffffffffu, nan, o);
        }
        float s, inv;
        bool finite = plane_scales(nan ? __int_as_float(0x7f800000) : m, s, inv);
        int q = finite ? __float2int_rn(v * s) : 0;
        i64 unit = (i64)pair * (p.n_out / 32) + blockIdx.y;
        u8* o = (u8*)((u32*)p.out + unit * 32);
        o[lane] = (u8)((q >> 16) & 255);
        o[32 + lane] = (u8)((q >> 8) & 255);
        o[64 + lane] = (u8)(q & 255);
        if (lane == 0) p.act_scales[unit] = inv;
    }
}

// down, token-major, combining (see the top): warp w takes choice s = w / (8 / top_k) of token blockIdx.x and
// rows (w mod (8 / top_k)) · DOT_TOKEN_ROWS.. of the block's block_rows = 8 / top_k · DOT_TOKEN_ROWS; y (with the
// expert's bias) meets in shared memory, and threads j < block_rows add row j's choices in ascending expert order
// into `combined`.
static __device__ void expert_fp4_dot_down_tokens(const ExpertParams& p) {
    __shared__ float ys[8 * DOT_TOKEN_ROWS];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int t = blockIdx.x, groups = 8 / p.top_k, block_rows = groups * DOT_TOKEN_ROWS;
    int s = warp / groups, n_rows = p.n_out;
    int row0 = blockIdx.y * block_rows + (warp % groups) * DOT_TOKEN_ROWS;
    const int* ex = p.route_experts + (i64)t * p.top_k;
    int e = ex[s];
    if (e >= 0 && e < p.n_experts) {
        int pair = t * p.top_k + s;
        DotOperands d = dot_operands(p, e, n_rows, (i64)pair);
        float acc[DOT_TOKEN_ROWS];
        dot_rows(p, d.w, d.s, d.x, d.xs, row0, n_rows, acc);
        int row = row0 + lane;
        if (lane < DOT_TOKEN_ROWS && row < n_rows)
            ys[warp * DOT_TOKEN_ROWS + lane] = lane_pick(acc, lane) + (p.bias ? p.bias[(i64)e * n_rows + row] : 0.0f);
    }
    __syncthreads();
    int j = threadIdx.x, row = blockIdx.y * block_rows + j;
    if (j >= block_rows || row >= n_rows) return;
    // Row j of choice s sits at ys[(s · groups + j / NR) · NR + j mod NR] = ys[s · block_rows + j]
    // (NR = DOT_TOKEN_ROWS).
    p.combined[(i64)t * n_rows + row] =
        combined_value(ex, p.route_weights + (i64)t * p.top_k, ys + j, 0, p.top_k, p.n_experts, block_rows, 0);
}

extern "C" __global__ void __launch_bounds__(256, 2) moe_gate_up_fp4_dot(const ExpertParams p) { grid_dep_sync(); expert_fp4_dot_impl<1>(p); }
extern "C" __global__ void __launch_bounds__(256, 2) moe_down_fp4_dot(const ExpertParams p) { grid_dep_sync(); expert_fp4_dot_impl<0>(p); }
extern "C" __global__ void __launch_bounds__(256, 2) moe_down_fp4_dot_tokens(const ExpertParams p) { grid_dep_sync(); expert_fp4_dot_down_tokens(p); }
