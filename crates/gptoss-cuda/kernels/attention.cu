// attention.cu — attention with learned sinks and an optional sliding window over the paged KV cache, prefill
// and decode alike (spec §1.3 "Attention with learned sinks", "Masks"): out = Σ_j softmax_with_sink(q·k_j/√d)_j v_j
// over the keys first..=pos of the token's sequence, first = pos+1-window for sliding layers (0 for full ones).
// Layout: q [n_tok, nq*d] f32 (already rotated); pool (this layer) [blocks, 16, nkv*d] of f32, bf16 or f16;
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
//   attention_rows_bf16, attention_rows_f16, attention_combine.
// Minimum arch: sm_80. Launched from src/ops/attention.rs.
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
};

#define KV_F32 0
#define KV_BF16 1
#define KV_F16 2
#define ATT_KEYS 32
#define ATT_DMAX 128
#define ATT_WARPS 8
#define NEG_INF (-__int_as_float(0x7f800000))

// Loads the 16 bytes at element `i` of a pool and stores them as f32 at `dst` (4 or 8 elements).
template <int KV>
static __device__ __forceinline__ void load16(const void* base, i64 i, float* dst) {
    if constexpr (KV == KV_F32) {
        float4 v = *(const float4*)((const float*)base + i);
        dst[0] = v.x; dst[1] = v.y; dst[2] = v.z; dst[3] = v.w;
    } else {
        uint4 q = *(const uint4*)((const u16*)base + i);
        u32 r[4] = {q.x, q.y, q.z, q.w};
        #pragma unroll
        for (int k = 0; k < 4; k++) {
            u16 lo = (u16)(r[k] & 0xffffu), hi = (u16)(r[k] >> 16);
            if constexpr (KV == KV_BF16) { dst[2 * k] = bf16_to_f32(lo); dst[2 * k + 1] = bf16_to_f32(hi); }
            else { dst[2 * k] = f16_to_f32(lo); dst[2 * k + 1] = f16_to_f32(hi); }
        }
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
        int logical = j / 16;
        int block = table[p.ring > 0 ? logical % p.ring : logical];
        i64 row = ((i64)block * 16 + (j & 15)) * kvw + (i64)g * p.d + c * VEC;
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
    if (active)
        for (int i = lane; i < d; i += 32) s.q[warp][i] = p.q[((i64)t * p.nq + h) * d + i];
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
        int logical = j / 16;
        int block = table[p.ring > 0 ? logical % p.ring : logical];
        i64 row = ((i64)block * 16 + (j & 15)) * kvw + (i64)g * ATD + c * VEC;
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
