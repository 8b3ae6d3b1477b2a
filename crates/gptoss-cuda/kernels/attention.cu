// attention.cu — attention with learned sinks and an optional sliding window over the paged KV cache, prefill
// and decode alike (spec §1.3 "Attention with learned sinks", "Masks"): out = Σ_j softmax_with_sink(q·k_j/√d)_j v_j
// over the keys first..=pos of the token's sequence, first = pos+1-window for sliding layers (0 for full ones).
// Layout: q [n_tok, nq*d] f32 (already rotated, except in attention_<kv>'s fused decode form: AttnParams.rope);
//   pool (this layer) [blocks, 16, nkv*d] of f32, bf16 or f16;
//   key j of sequence s is row j % 16 of block table[s][j/16] (full, ring = 0) or table[s][(j/16) % ring]
//   (sliding); sinks f32 [nq]; out [n_tok, nq*d] f32; pos, seqs i32 [n_tok]. GQA: q head h reads kv head h/(nq/nkv).
// Grid: x = token, y = (kv head, chunk of up to 8 of its query heads), z = key split. One warp per query head;
//   the CTA stages 32 keys at a time in shared memory (coalesced 16-byte loads, f32 after conversion), so each
//   K/V row is read once for all the query heads of the chunk (the whole GQA group for gpt-oss). Lane j scores
//   key j of the tile; the value sum runs with lanes over head_dim. Online softmax whose running max starts at
//   the sink in split 0 (the sink joins the denominator only, once). With splits > 1 (long-context decode) each
//   split writes (max, sum, acc[d]) to `part` and attention_combine merges them. d <= 128, d % 8 == 0.
// Prefill (attention_rows_<kv>): one CTA per (8 consecutive step rows, kv head), one warp per query head of
//   the group (group <= 8, d = 64): every staged K/V tile serves 8 rows × the group's heads instead of one row
//   (see attention_rows_impl).
// Entry points: attention_f32, attention_bf16, attention_f16 (the cache type), attention_rows_f32,
//   attention_rows_bf16, attention_rows_f16, attention_combine, and the f16 tensor-core prefill of prompts
//   (unless --exact) attention_flash_<f32|bf16|f16>_d<16|64> (see its section).
// Prelude: common.cu, mma.cu. Minimum arch: sm_80. Launched from src/ops/attention.rs.
struct AttnParams {
    const float* q;
    const void* kc;
    const void* vc;
    const float* sinks;
    float* out;
    const int* pos;
    const int* seqs;
    const int* table;
    float* part;
    int table_stride;
    int ring;
    float scale;
    int nq;
    int nkv;
    int d;
    int window;
    int splits;
    int n_tok;
    // The fused decode form of attention_<kv> (rope = 1; every sequence one token of the step, one CTA per kv
    // head and split): q is not yet rotated, and the CTA whose split holds the token's position rotates the
    // step's k and stores it and v at that position before reading its tiles (rope_kv.cu's work, one launch
    // fewer). k_new, v_new [n_tok, nkv*d] f32; inv_freq [d/2]; conc the YaRN concentration.
    int rope;
    float conc;
    const float* k_new;
    const float* v_new;
    const float* inv_freq;
};

#define ATT_KEYS 32
#define ATT_DMAX 128
#define ATT_WARPS 8
#define NEG_INF (-__int_as_float(0x7f800000))

// N words of a bf16 or f16 pool (2N elements, low half first) as f32 at `dst`.
template <int KV, int N>
static __device__ __forceinline__ void halves_to_f32(const u32 (&r)[N], float* dst) {
    #pragma unroll
    for (int k = 0; k < N; k++) {
        u16 lo = (u16)(r[k] & 0xffffu), hi = (u16)(r[k] >> 16);
        if constexpr (KV == KV_BF16) { dst[2 * k] = bf16_to_f32(lo); dst[2 * k + 1] = bf16_to_f32(hi); }
        else { dst[2 * k] = f16_to_f32(lo); dst[2 * k + 1] = f16_to_f32(hi); }
    }
}

// Loads the 16 bytes at element `i` of a pool and stores them as f32 at `dst` (4 or 8 elements).
template <int KV>
static __device__ __forceinline__ void load16(const void* base, i64 i, float* dst) {
    if constexpr (KV == KV_F32) {
        float4 v = *(const float4*)((const float*)base + i);
        dst[0] = v.x; dst[1] = v.y; dst[2] = v.z; dst[3] = v.w;
    } else {
        uint4 q = *(const uint4*)((const u16*)base + i);
        u32 r[4] = {q.x, q.y, q.z, q.w};
        halves_to_f32<KV>(r, dst);
    }
}

struct Tile {
    float k[ATT_KEYS][ATT_DMAX + 1];  // +1: lanes reading key rows hit distinct banks
    float v[ATT_KEYS][ATT_DMAX];
    float q[ATT_WARPS][ATT_DMAX];
};

// Stages the keys and values of tile positions [j0, j0 + 32) ∩ [first, pos] of kv head g.
template <int KV>
static __device__ __forceinline__ void load_tile(const AttnParams& p, Tile& s, const int* table, int j0,
                                                 int first, int pos, int g) {
    constexpr int VEC = KV == KV_F32 ? 4 : 8;
    int vpr = p.d / VEC, kvw = p.nkv * p.d;
    for (int w = threadIdx.x; w < ATT_KEYS * vpr; w += blockDim.x) {
        int jj = w / vpr, c = w % vpr, j = j0 + jj;
        if (j < first || j > pos) continue;
        i64 row = kv_pool_row(table, p.ring, j) * kvw + (i64)g * p.d + c * VEC;
        load16<KV>(p.kc, row, &s.k[jj][c * VEC]);
        load16<KV>(p.vc, row, &s.v[jj][c * VEC]);
    }
}

template <int KV>
static __device__ void attention_impl(const AttnParams& p) {
    __shared__ Tile s;
    int t = blockIdx.x, d = p.d;
    int group = p.nq / p.nkv, chunks = (group + ATT_WARPS - 1) / ATT_WARPS;
    int g = blockIdx.y / chunks;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int hi = (blockIdx.y % chunks) * ATT_WARPS + warp;  // index within the group
    bool active = hi < group;
    int h = g * group + hi;
    int pos = p.pos[t];
    int first = p.window > 0 ? max(0, pos + 1 - p.window) : 0;
    const int* table = p.table + (i64)p.seqs[t] * p.table_stride;
    int tile0 = first / ATT_KEYS, tiles = pos / ATT_KEYS - tile0 + 1;
    int per = (tiles + p.splits - 1) / p.splits;
    int my0 = tile0 + blockIdx.z * per, my1 = min(tile0 + tiles, my0 + per);
    if (p.rope) {
        int half = d >> 1, kvw = p.nkv * d;
        float fpos = (float)pos;
        if (active) {
            const float* qh = p.q + ((i64)t * p.nq + h) * d;
            for (int i = lane; i < half; i += 32) {
                float2 r = rope_pair(qh[i], qh[i + half], fpos * p.inv_freq[i], p.conc);
                s.q[warp][i] = r.x;
                s.q[warp][i + half] = r.y;
            }
        }
        // The key at `pos` is read only by the split holding its tile; that CTA writes it (the barrier before
        // the first tile makes the stores visible to its threads).
        int own = pos / ATT_KEYS;
        if (warp == 0 && own >= my0 && own < my1) {
            i64 at = kv_pool_row(table, p.ring, pos) * kvw + (i64)g * d;
            const float* kh = p.k_new + (i64)t * kvw + (i64)g * d;
            const float* vh = p.v_new + (i64)t * kvw + (i64)g * d;
            for (int i = lane; i < half; i += 32) {
                float2 r = rope_pair(kh[i], kh[i + half], fpos * p.inv_freq[i], p.conc);
                kv_store<KV>((void*)p.kc, at + i, r.x);
                kv_store<KV>((void*)p.kc, at + i + half, r.y);
                kv_store<KV>((void*)p.vc, at + i, vh[i]);
                kv_store<KV>((void*)p.vc, at + i + half, vh[i + half]);
            }
        }
    } else if (active) {
        for (int i = lane; i < d; i += 32) s.q[warp][i] = p.q[((i64)t * p.nq + h) * d + i];
    }
    float m = blockIdx.z == 0 && active ? p.sinks[h] : NEG_INF;
    float l = blockIdx.z == 0 ? 1.0f : 0.0f;
    float acc[ATT_DMAX / 32] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int tile = my0; tile < my1; tile++) {
        int j0 = tile * ATT_KEYS;
        __syncthreads();  // the previous tile is consumed (and q is staged)
        load_tile<KV>(p, s, table, j0, first, pos, g);
        __syncthreads();
        if (!active) continue;
        int j = j0 + lane;
        bool valid = j >= first && j <= pos;
        float score = NEG_INF;
        if (valid) {
            float dot = 0.0f;
            #pragma unroll 8
            for (int i = 0; i < d; i++) dot += s.q[warp][i] * s.k[lane][i];
            score = dot * p.scale;
        }
        float m_new = fmaxf(m, warp_max(score));  // every tile holds a valid key: finite
        float e = valid ? expf(score - m_new) : 0.0f;
        float corr = expf(m - m_new);
        l = l * corr + warp_sum(e);
        #pragma unroll
        for (int r = 0; r < ATT_DMAX / 32; r++) acc[r] *= corr;
        int jlo = max(first - j0, 0), jhi = min(pos - j0, ATT_KEYS - 1);
        for (int jj = jlo; jj <= jhi; jj++) {
            float pj = __shfl_sync(0xffffffffu, e, jj);
            #pragma unroll
            for (int r = 0; r < ATT_DMAX / 32; r++)
                if (lane + 32 * r < d) acc[r] += pj * s.v[jj][lane + 32 * r];
        }
        m = m_new;
    }
    if (!active) return;
    if (p.splits == 1) {
        float* o = p.out + ((i64)t * p.nq + h) * d;
        #pragma unroll
        for (int r = 0; r < ATT_DMAX / 32; r++)
            if (lane + 32 * r < d) o[lane + 32 * r] = acc[r] / l;
        return;
    }
    float* part = p.part + (((i64)t * p.nq + h) * p.splits + blockIdx.z) * (d + 2);
    if (lane == 0) { part[0] = m; part[1] = l; }
    #pragma unroll
    for (int r = 0; r < ATT_DMAX / 32; r++)
        if (lane + 32 * r < d) part[2 + lane + 32 * r] = acc[r];
}

extern "C" __global__ void __launch_bounds__(256) attention_f32(const AttnParams p) { grid_dep_sync(); attention_impl<KV_F32>(p); }
extern "C" __global__ void __launch_bounds__(256) attention_bf16(const AttnParams p) { grid_dep_sync(); attention_impl<KV_BF16>(p); }
extern "C" __global__ void __launch_bounds__(256) attention_f16(const AttnParams p) { grid_dep_sync(); attention_impl<KV_F16>(p); }

// ---- Prefill: ATQ step rows per CTA ----
// The rows of a CTA are taken sequence by sequence (a step lays each sequence's rows out together; a tile
// that spans two sequences takes two passes, each over the union of its rows' key ranges). Per 32-key tile,
// lane j scores key j for all ATQ rows (q from shared memory as broadcast 16-byte reads, K rows padded to
// ATK_LD floats so the lanes' 16-byte reads hit distinct banks), each row's online softmax runs as in
// attention_impl (running max from the sink; the denominator kept per lane and summed once at the end), the
// probabilities go through shared memory, and lane i accumulates output dims i and i + 32 of every row.
// Keys outside the pass's range are staged as zeros. Products and sums run in the same order as
// attention_impl's, so the two differ only in how the denominator's terms are grouped.
#define ATQ 8
#define ATD 64
#define ATK_LD 68

struct RowsTile {
    float k[ATT_KEYS][ATK_LD];
    float v[ATT_KEYS][ATD];
    float q[ATT_WARPS][ATQ][ATD];
    float pr[ATT_WARPS][ATQ][ATT_KEYS];
};

template <int KV>
static __device__ __forceinline__ void load_rows_tile(const AttnParams& p, RowsTile& s, const int* table, int j0,
                                                      int lo, int hi, int g) {
    constexpr int VEC = KV == KV_F32 ? 4 : 8;
    constexpr int vpr = ATD / VEC;
    int kvw = p.nkv * ATD;
    for (int w = threadIdx.x; w < ATT_KEYS * vpr; w += blockDim.x) {
        int jj = w / vpr, c = w % vpr, j = j0 + jj;
        if (j < lo || j > hi) {
            #pragma unroll
            for (int i = 0; i < VEC; i++) {
                s.k[jj][c * VEC + i] = 0.0f;
                s.v[jj][c * VEC + i] = 0.0f;
            }
            continue;
        }
        i64 row = kv_pool_row(table, p.ring, j) * kvw + (i64)g * ATD + c * VEC;
        load16<KV>(p.kc, row, &s.k[jj][c * VEC]);
        load16<KV>(p.vc, row, &s.v[jj][c * VEC]);
    }
}

template <int KV>
static __device__ void attention_rows_impl(const AttnParams& p) {
    __shared__ __align__(16) RowsTile s;
    int g = blockIdx.y, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int h = g * (p.nq / p.nkv) + warp;
    int t0 = blockIdx.x * ATQ, nrow = min(ATQ, p.n_tok - t0);
    for (int i = lane; i < ATQ * ATD; i += 32) {
        int r = i / ATD, c = i % ATD;
        s.q[warp][r][c] = r < nrow ? p.q[((i64)(t0 + r) * p.nq + h) * ATD + c] : 0.0f;
    }
    int done = 0;
    while (done != (1 << nrow) - 1) {
        int seq = p.seqs[t0 + __ffs(~done) - 1];
        // Rows' positions are re-read per tile (uniform, cached) rather than held: registers.
        int mine = 0, lo = 0x7fffffff, hi = -1;
        for (int r = 0; r < nrow; r++) {
            if (!((done >> r) & 1) && p.seqs[t0 + r] == seq) {
                int pos = p.pos[t0 + r];
                mine |= 1 << r;
                lo = min(lo, p.window > 0 ? max(0, pos + 1 - p.window) : 0);
                hi = max(hi, pos);
            }
        }
        const int* table = p.table + (i64)seq * p.table_stride;
        float m[ATQ], l[ATQ], acc[ATQ][2];
        #pragma unroll
        for (int r = 0; r < ATQ; r++) {
            m[r] = p.sinks[h];
            l[r] = lane == 0 ? 1.0f : 0.0f;
            acc[r][0] = 0.0f;
            acc[r][1] = 0.0f;
        }
        for (int j0 = lo / ATT_KEYS * ATT_KEYS; j0 <= hi; j0 += ATT_KEYS) {
            __syncthreads();  // the previous tile is consumed (and q is staged)
            load_rows_tile<KV>(p, s, table, j0, lo, hi, g);
            __syncthreads();
            float sc[ATQ];
            #pragma unroll
            for (int r = 0; r < ATQ; r++) sc[r] = 0.0f;
            #pragma unroll 1
            for (int i = 0; i < ATD; i += 4) {
                float4 kv = *(const float4*)&s.k[lane][i];
                #pragma unroll
                for (int r = 0; r < ATQ; r++) {
                    float4 qv = *(const float4*)&s.q[warp][r][i];
                    sc[r] = fmaf(qv.x, kv.x, sc[r]);
                    sc[r] = fmaf(qv.y, kv.y, sc[r]);
                    sc[r] = fmaf(qv.z, kv.z, sc[r]);
                    sc[r] = fmaf(qv.w, kv.w, sc[r]);
                }
            }
            int j = j0 + lane;
            #pragma unroll
            for (int r = 0; r < ATQ; r++) {
                int pos = r < nrow ? p.pos[t0 + r] : -1;
                int first = p.window > 0 ? max(0, pos + 1 - p.window) : 0;
                bool valid = ((mine >> r) & 1) && j >= first && j <= pos;
                float score = valid ? sc[r] * p.scale : NEG_INF;
                float m_new = fmaxf(m[r], warp_max(score));
                float e = valid ? expf(score - m_new) : 0.0f;
                float corr = expf(m[r] - m_new);
                l[r] = l[r] * corr + e;
                acc[r][0] *= corr;
                acc[r][1] *= corr;
                m[r] = m_new;
                s.pr[warp][r][lane] = e;
            }
            __syncwarp();
            #pragma unroll 1
            for (int jj = 0; jj < ATT_KEYS; jj += 4) {
                float v0[4], v1[4];
                #pragma unroll
                for (int u = 0; u < 4; u++) {
                    v0[u] = s.v[jj + u][lane];
                    v1[u] = s.v[jj + u][lane + 32];
                }
                #pragma unroll
                for (int r = 0; r < ATQ; r++) {
                    float4 pv = *(const float4*)&s.pr[warp][r][jj];
                    float pw[4] = {pv.x, pv.y, pv.z, pv.w};
                    #pragma unroll
                    for (int u = 0; u < 4; u++) {
                        acc[r][0] = fmaf(pw[u], v0[u], acc[r][0]);
                        acc[r][1] = fmaf(pw[u], v1[u], acc[r][1]);
                    }
                }
            }
            __syncwarp();
        }
        #pragma unroll
        for (int r = 0; r < ATQ; r++) {
            if (!((mine >> r) & 1)) continue;
            float total = warp_sum(l[r]);
            float* o = p.out + ((i64)(t0 + r) * p.nq + h) * ATD;
            o[lane] = acc[r][0] / total;
            o[lane + 32] = acc[r][1] / total;
        }
        done |= mine;
    }
}

extern "C" __global__ void __launch_bounds__(256, 2) attention_rows_f32(const AttnParams p) { grid_dep_sync(); attention_rows_impl<KV_F32>(p); }
extern "C" __global__ void __launch_bounds__(256, 2) attention_rows_bf16(const AttnParams p) { grid_dep_sync(); attention_rows_impl<KV_BF16>(p); }
extern "C" __global__ void __launch_bounds__(256, 2) attention_rows_f16(const AttnParams p) { grid_dep_sync(); attention_rows_impl<KV_F16>(p); }

// Merges the splits of one (token, q head) per block: out = Σ_s acc_s e^(m_s - M) / Σ_s l_s e^(m_s - M).
extern "C" __global__ void __launch_bounds__(128) attention_combine(const AttnParams p) {
    grid_dep_sync();
    int d = p.d;
    const float* part = p.part + (i64)blockIdx.x * p.splits * (d + 2);
    float big = NEG_INF;
    for (int z = 0; z < p.splits; z++) big = fmaxf(big, part[z * (d + 2)]);
    float sum = 0.0f;
    for (int z = 0; z < p.splits; z++) sum += part[z * (d + 2) + 1] * expf(part[z * (d + 2)] - big);
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        float o = 0.0f;
        for (int z = 0; z < p.splits; z++) o += part[z * (d + 2) + 2 + i] * expf(part[z * (d + 2)] - big);
        p.out[(i64)blockIdx.x * d + i] = o / sum;
    }
}

// ---- Prefill on f16 tensor cores (attention_flash_<kv>_d<D>): prompts unless --exact ----
// A CTA serves FL_ROWS query rows of kv head g: FT = FL_ROWS / G consecutive step rows × the G query heads of the
// group (row r: step row t0 + r / G, head g·G + r % G; G divides 16), one warp per 16 rows as the A operand of
// mma.sync m16n8k16. Keys go in tiles of FL_KEYS through shared memory as f16: S = Q·Kᵀ, the online softmax
// in registers (base 2, the running max starting at the row's sink, which joins the denominator once), then
// O += P·V with P as f16 straight from S's accumulators (the C fragments of two n8 tiles are the A fragment of
// one k16 step). Every operand is scaled by a power of two that puts its block's largest |x| in [2^14, 2^15)
// (f16_range_exponent): q per warp, k per key row (both undone in the score's factor), v by the running
// maximum of the tiles' exponents (the O accumulators live in that unit; a larger exponent rescales them by a
// power of two with the softmax correction), so f16's range never clips. q and k are kept as two f16 parts
// (x = hi + lo + O(2^-22 |x|)) and S = q_hi·k_hi + q_hi·k_lo + q_lo·k_hi: the scores carry about 22 bits, since
// exp() turns a score's absolute error into the probability's relative one (one f16 part each cost the tiny
// fixtures 2e-2 of their largest logit). P and v are one f16 part each (11 bits, relative 2^-12 per term of
// an average). The rows of a CTA are taken by runs of one sequence, as attention_rows does;
// rows of other runs see every key masked. d = D (16 or 64); the host checks G and D.
#define FL_ROWS 128
#define FL_KEYS 64
#define FL_SUB 32
#define FL_LOG2E 1.4426950408889634f

template <int D>
struct FlashTile {
    u16 k[2][FL_KEYS][D + 8];  // hi, lo; +8 halves: ldmatrix's 8 rows at a stride of 2D + 16 bytes hit distinct banks
    u16 v[FL_KEYS][D + 8];
    u16 qlo[8][16][D + 8];     // each warp's q_lo (q_hi stays in registers)
    float kinv[FL_KEYS];       // each key row's 2^(e - 141): its scale undone in the scores
    float red[8];
};

// x = hi + lo for the packed f16 pair hi = f16x2(a, b): lo = f16x2(a - hi.a, b - hi.b), the differences exact.
static __device__ __forceinline__ u32 f16x2_rest(float a, float b, u32 hi) {
    return f16x2(a - f16_to_f32((u16)(hi & 0xffffu)), b - f16_to_f32((u16)(hi >> 16)));
}

// Four elements at element `i` of a pool, as f32.
template <int KV>
static __device__ __forceinline__ void load4(const void* base, i64 i, float dst[4]) {
    if constexpr (KV == KV_F32) {
        float4 v = *(const float4*)((const float*)base + i);
        dst[0] = v.x; dst[1] = v.y; dst[2] = v.z; dst[3] = v.w;
    } else {
        uint2 q = *(const uint2*)((const u16*)base + i);
        u32 r[2] = {q.x, q.y};
        halves_to_f32<KV>(r, dst);
    }
}

template <int KV, int D>
static __device__ void attention_flash_impl(const AttnParams& p) {
    constexpr int CH = D / 16;  // 4-element chunks of K (and of V) per thread and tile
    constexpr int NS = FL_SUB / 8, ND = D / 8;
    __shared__ __align__(16) FlashTile<D> s;
    int g = blockIdx.y, group = p.nq / p.nkv, ft = FL_ROWS / group;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gr = lane >> 2, t = lane & 3;
    int t0 = blockIdx.x * ft, t_end = min(t0 + ft, p.n_tok), kvw = p.nkv * D;
    // This thread's two rows (C fragment rows gr and gr + 8 of the warp's m16 tile).
    // (Recomputed where used: registers.)
    auto tok = [&](int h) { return t0 + (warp * 16 + gr + 8 * h) / group; };
    auto head = [&](int h) { return g * group + (warp * 16 + gr + 8 * h) % group; };
    // q as A fragments (k16 step kk: a0 (row gr, dims 16kk + 2t), a1 (row gr + 8), a2 / a3 the same at + 8).
    float qf[CH][4][2];
    float qmax = 0.0f;
    #pragma unroll
    for (int kk = 0; kk < CH; kk++)
        #pragma unroll
        for (int i = 0; i < 4; i++) {
            int h = i & 1, dim = 16 * kk + 2 * t + 8 * (i >> 1);
            float2 v = tok(h) < p.n_tok ? *(const float2*)(p.q + ((i64)tok(h) * p.nq + head(h)) * D + dim)
                                        : make_float2(0.0f, 0.0f);
            qf[kk][i][0] = v.x;
            qf[kk][i][1] = v.y;
            qmax = fmaxf(qmax, fmaxf(fabsf(v.x), fabsf(v.y)));
        }
    int eq = f16_range_exponent(warp_max(qmax));
    float qs = pow2_biased(268 - eq);
    u32 qa[CH][4];
    #pragma unroll
    for (int kk = 0; kk < CH; kk++)
        #pragma unroll
        for (int i = 0; i < 4; i++) {
            float a = qf[kk][i][0] * qs, b = qf[kk][i][1] * qs;
            qa[kk][i] = f16x2(a, b);
            *(u32*)&s.qlo[warp][gr + 8 * (i & 1)][16 * kk + 2 * t + 8 * (i >> 1)] = f16x2_rest(a, b, qa[kk][i]);
        }
    __syncwarp();
    // Scores in base 2: s = (q'·k') · 2^(eq - 141) · 2^(ek - 141) · scale · log2 e (ek the key row's).
    float score_unit = p.scale * FL_LOG2E * pow2_biased(eq - 14);
    float m[2], l[2], acc[ND][4];
    #pragma unroll
    for (int h = 0; h < 2; h++) {
        m[h] = tok(h) < p.n_tok ? p.sinks[head(h)] * FL_LOG2E : 0.0f;
        l[h] = t == 0 ? 1.0f : 0.0f;
    }
    #pragma unroll
    for (int nd = 0; nd < ND; nd++)
        #pragma unroll
        for (int i = 0; i < 4; i++) acc[nd][i] = 0.0f;
    int ev_run = 15;
    // ldmatrix lanes: K (non-transposed) rows key 8·nt + (lane & 7) + 8·(lane >> 4), dims + 8·((lane >> 3) & 1);
    // V (transposed) rows key 16·kc + (lane & 7) + 8·((lane >> 3) & 1), dims + 8·(lane >> 4).
    u32 kaddr = smem_addr(&s.k[0][(lane & 7) + ((lane >> 4) << 3)][((lane >> 3) & 1) * 8]);
    // q_lo as A fragments: rows lane & 15, dims + 8·(lane >> 4).
    u32 qaddr = smem_addr(&s.qlo[warp][lane & 15][(lane >> 4) * 8]);
    u32 vaddr = smem_addr(&s.v[(lane & 7) + (((lane >> 3) & 1) << 3)][(lane >> 4) * 8]);
    constexpr u32 ROW_BYTES = (D + 8) * 2, K_PART_BYTES = FL_KEYS * ROW_BYTES;
    for (int ta = t0; ta < t_end;) {
        int seq = p.seqs[ta], tb = ta, lo = 0x7fffffff, hi = -1;
        for (; tb < t_end && p.seqs[tb] == seq; tb++) {
            int pos = p.pos[tb];
            lo = min(lo, p.window > 0 ? max(0, pos + 1 - p.window) : 0);
            hi = max(hi, pos);
        }
        const int* table = p.table + (i64)seq * p.table_stride;
        int first[2], last[2];
        #pragma unroll
        for (int h = 0; h < 2; h++) {
            bool mine = tok(h) >= ta && tok(h) < tb;
            int pos = mine ? p.pos[tok(h)] : -1;
            last[h] = pos;
            first[h] = mine ? (p.window > 0 ? max(0, pos + 1 - p.window) : 0) : 0;
        }
        for (int j0 = lo / FL_KEYS * FL_KEYS; j0 <= hi; j0 += FL_KEYS) {
            // The tile's chunks: chunk c of this thread is key jj = w / (D / 4), dims 4 · (w % (D / 4)), so the D / 4
            // lanes of a key row are neighbours (one shuffle group). Its row is found again for k rather than held
            // from v's loop (registers: the kernel sits at 128).
            auto chunk_row = [&](int c, int& jj, int& part) -> i64 {
                int w = threadIdx.x + 256 * c, j = j0 + w / (D / 4);
                jj = w / (D / 4);
                part = w % (D / 4);
                if (j < lo || j > hi) return -1;
                return kv_pool_row(table, p.ring, j) * kvw + (i64)g * D + part * 4;
            };
            __syncthreads();  // the previous tile is consumed
            float vf[CH][4];
            float vmax = 0.0f;
            #pragma unroll
            for (int c = 0; c < CH; c++) {
                int jj, part;
                i64 row = chunk_row(c, jj, part);
                if (row < 0) {
                    #pragma unroll
                    for (int i = 0; i < 4; i++) vf[c][i] = 0.0f;
                } else {
                    load4<KV>(p.vc, row, vf[c]);
                }
                #pragma unroll
                for (int i = 0; i < 4; i++) vmax = fmaxf(vmax, fabsf(vf[c][i]));
            }
            vmax = warp_max(vmax);
            if (lane == 0) s.red[warp] = vmax;
            // k: one scale per key row (its lanes' maximum), stored as its inverse for the scores.
            #pragma unroll
            for (int c = 0; c < CH; c++) {
                int jj, part;
                i64 row = chunk_row(c, jj, part);
                float kf[4] = {0.0f, 0.0f, 0.0f, 0.0f};
                if (row >= 0) load4<KV>(p.kc, row, kf);
                float kmax = fmaxf(fmaxf(fabsf(kf[0]), fabsf(kf[1])), fmaxf(fabsf(kf[2]), fabsf(kf[3])));
                #pragma unroll
                for (int o = 1; o < D / 4; o <<= 1) kmax = fmaxf(kmax, __shfl_xor_sync(0xffffffffu, kmax, o));
                int ek = f16_range_exponent(kmax);
                float ks = pow2_biased(268 - ek);
                float k0 = kf[0] * ks, k1 = kf[1] * ks, k2 = kf[2] * ks, k3 = kf[3] * ks;
                u32 h01 = f16x2(k0, k1), h23 = f16x2(k2, k3);
                *(uint2*)&s.k[0][jj][part * 4] = make_uint2(h01, h23);
                *(uint2*)&s.k[1][jj][part * 4] = make_uint2(f16x2_rest(k0, k1, h01), f16x2_rest(k2, k3, h23));
                if (part == 0) s.kinv[jj] = pow2_biased(ek - 14);
            }
            __syncthreads();  // v's maxima are in
            #pragma unroll
            for (int w = 0; w < 8; w++) vmax = fmaxf(vmax, s.red[w]);
            int ev = max(ev_run, f16_range_exponent(vmax));
            float vs = pow2_biased(268 - ev);
            #pragma unroll
            for (int c = 0; c < CH; c++) {
                int w = threadIdx.x + 256 * c, jj = w / (D / 4), part = w % (D / 4);
                *(uint2*)&s.v[jj][part * 4] = make_uint2(f16x2(vf[c][0] * vs, vf[c][1] * vs),
                                                         f16x2(vf[c][2] * vs, vf[c][3] * vs));
            }
            __syncthreads();
            // O's unit follows v's: a larger exponent scales the sums so far down by a power of two.
            float vrescale = exp2f((float)(ev_run - ev));  // <= 1; underflows to 0 past 2^-149
            ev_run = ev;
            // The tile in halves of FL_SUB keys (a half's scores in registers, not the tile's: 128 registers).
            #pragma unroll 1
            for (int sub = 0; sub < FL_KEYS / FL_SUB; sub++) {
                u32 key_off = sub * FL_SUB * ROW_BYTES;
                // S = Q·Kᵀ for the half's n8 tiles of keys.
                float sc[NS][4];
                #pragma unroll
                for (int nt = 0; nt < NS; nt++)
                    #pragma unroll
                    for (int i = 0; i < 4; i++) sc[nt][i] = 0.0f;
                #pragma unroll
                for (int kk = 0; kk < CH; kk++) {
                    u32 ql[4];
                    ldsm_x4(qaddr + kk * 32, ql);
                    #pragma unroll
                    for (int np = 0; np < NS / 2; np++) {
                        u32 b[4], bl[4];
                        ldsm_x4(kaddr + key_off + np * 16 * ROW_BYTES + kk * 32, b);
                        ldsm_x4(kaddr + K_PART_BYTES + key_off + np * 16 * ROW_BYTES + kk * 32, bl);
                        // Smallest products first.
                        mma_f16(sc[2 * np], ql[0], ql[1], ql[2], ql[3], b[0], b[1]);
                        mma_f16(sc[2 * np + 1], ql[0], ql[1], ql[2], ql[3], b[2], b[3]);
                        mma_f16(sc[2 * np], qa[kk][0], qa[kk][1], qa[kk][2], qa[kk][3], bl[0], bl[1]);
                        mma_f16(sc[2 * np + 1], qa[kk][0], qa[kk][1], qa[kk][2], qa[kk][3], bl[2], bl[3]);
                        mma_f16(sc[2 * np], qa[kk][0], qa[kk][1], qa[kk][2], qa[kk][3], b[0], b[1]);
                        mma_f16(sc[2 * np + 1], qa[kk][0], qa[kk][1], qa[kk][2], qa[kk][3], b[2], b[3]);
                    }
                }
                float tmax[2] = {NEG_INF, NEG_INF};
                #pragma unroll
                for (int nt = 0; nt < NS; nt++)
                    #pragma unroll
                    for (int i = 0; i < 4; i++) {
                        int h = i >> 1, jj = sub * FL_SUB + 8 * nt + 2 * t + (i & 1), j = j0 + jj;
                        bool valid = j >= first[h] && j <= last[h];
                        sc[nt][i] = valid ? sc[nt][i] * (score_unit * s.kinv[jj]) : NEG_INF;
                        tmax[h] = fmaxf(tmax[h], sc[nt][i]);
                    }
                float corr[2];
                #pragma unroll
                for (int h = 0; h < 2; h++) {
                    tmax[h] = fmaxf(tmax[h], __shfl_xor_sync(0xffffffffu, tmax[h], 1));
                    tmax[h] = fmaxf(tmax[h], __shfl_xor_sync(0xffffffffu, tmax[h], 2));
                    float m_new = fmaxf(m[h], tmax[h]);
                    corr[h] = exp2f(m[h] - m_new);
                    m[h] = m_new;
                    l[h] *= corr[h];
                    corr[h] *= vrescale;
                }
                vrescale = 1.0f;
                #pragma unroll
                for (int nt = 0; nt < NS; nt++)
                    #pragma unroll
                    for (int i = 0; i < 4; i++) {
                        float e = exp2f(sc[nt][i] - m[i >> 1]);  // masked: exp2(-inf) = 0
                        sc[nt][i] = e;
                        l[i >> 1] += e;
                    }
                #pragma unroll
                for (int nd = 0; nd < ND; nd++)
                    #pragma unroll
                    for (int i = 0; i < 4; i++) acc[nd][i] *= corr[i >> 1];
                // O += P·V', keys in k16 steps.
                #pragma unroll
                for (int kc = 0; kc < NS / 2; kc++) {
                    u32 a0 = f16x2(sc[2 * kc][0], sc[2 * kc][1]), a1 = f16x2(sc[2 * kc][2], sc[2 * kc][3]);
                    u32 a2 = f16x2(sc[2 * kc + 1][0], sc[2 * kc + 1][1]);
                    u32 a3 = f16x2(sc[2 * kc + 1][2], sc[2 * kc + 1][3]);
                    #pragma unroll
                    for (int dp = 0; dp < ND / 2; dp++) {
                        u32 b[4];
                        ldsm_x4_trans(vaddr + key_off + kc * 16 * ROW_BYTES + dp * 32, b);
                        mma_f16(acc[2 * dp], a0, a1, a2, a3, b[0], b[1]);
                        mma_f16(acc[2 * dp + 1], a0, a1, a2, a3, b[2], b[3]);
                    }
                }
            }
        }
        ta = tb;
    }
    // Rows: the quad's denominators summed; O back from the V unit 2^(141 - ev_run).
    float vunit = pow2_biased(ev_run - 14);
    #pragma unroll
    for (int h = 0; h < 2; h++) {
        float total = l[h];
        total += __shfl_xor_sync(0xffffffffu, total, 1);
        total += __shfl_xor_sync(0xffffffffu, total, 2);
        if (tok(h) >= t_end) continue;
        float f = vunit / total;
        float* o = p.out + ((i64)tok(h) * p.nq + head(h)) * D + 2 * t;
        #pragma unroll
        for (int nd = 0; nd < ND; nd++)
            *(float2*)(o + 8 * nd) = make_float2(acc[nd][2 * h] * f, acc[nd][2 * h + 1] * f);
    }
}

// FLASH_ENTRY(NAME, KV, D) defines attention_flash_NAME (NAME = <kv>_d<D>).
#define FLASH_ENTRY(NAME, KV, D) \
    extern "C" __global__ void __launch_bounds__(256, 2) attention_flash_##NAME(const AttnParams p) { grid_dep_sync(); attention_flash_impl<KV, D>(p); }
FLASH_ENTRY(f32_d64, KV_F32, 64)
FLASH_ENTRY(bf16_d64, KV_BF16, 64)
FLASH_ENTRY(f16_d64, KV_F16, 64)
FLASH_ENTRY(f32_d16, KV_F32, 16)
FLASH_ENTRY(bf16_d16, KV_BF16, 16)
FLASH_ENTRY(f16_d16, KV_F16, 16)
