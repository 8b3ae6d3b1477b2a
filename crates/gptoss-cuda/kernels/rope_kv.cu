// rope_kv.cu — RoPE (NeoX half-split pairs, YaRN tables; spec §1.3 "RoPE") on q and k in place, then k and v
// stored into the layer's paged KV pool at each token's position, through its sequence's block table.
// Layout: q [n_tok, nq*d] f32, k/v [n_tok, nkv*d] f32; pool (this layer) [blocks, 16, nkv*d] of KV (f32, bf16
//   or f16); pos, seqs i32 [n_tok]; table i32 [n_seqs, table_stride]: position p of sequence s lives in block
//   table[s][p/16] (full layers, ring = 0) or table[s][(p/16) % ring] (sliding layers), row p % 16.
//   inv_freq f32 [d/2]. The angle is (float)pos * inv_freq[i], cos/sin scaled by the YaRN concentration, as
//   math::apply_rope.
// Grid: x = token, y = groups of 4 heads (the q heads, then the k heads); 128 threads = 4 heads × 32 lanes
// over the head's pairs. A k head's lanes also store its k and v rows into the pool. (One block per token,
// striding over all heads, took 11 µs per decode token on the H200: a chain of 16 rotations per thread.)
// Entry points: rope_kv_f32, rope_kv_bf16, rope_kv_f16 (the cache type). Minimum arch: sm_80. Launched from
// src/ops/attention.rs.
struct RopeParams {
    float* q;
    float* k;
    const float* v;
    void* kc;
    void* vc;
    const int* pos;
    const int* seqs;
    const int* table;
    const float* inv_freq;
    int table_stride;
    int ring;
    float conc;
    int nq;
    int nkv;
    int d;
};

// Rotates pair (i, i + half) of `head` in place; returns the rotated pair.
static __device__ __forceinline__ float2 rotate(float* head, int i, int half, float pos, const RopeParams& p) {
    float2 r = rope_pair(head[i], head[i + half], pos * p.inv_freq[i], p.conc);
    head[i] = r.x;
    head[i + half] = r.y;
    return r;
}

template <int KV>
static __device__ void rope_kv_impl(const RopeParams& p) {
    int t = blockIdx.x, head = blockIdx.y * 4 + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    int half = p.d / 2, kvw = p.nkv * p.d;
    if (head >= p.nq + p.nkv) return;
    int position = p.pos[t];
    float pos = (float)position;
    if (head < p.nq) {
        float* q = p.q + ((i64)t * p.nq + head) * p.d;
        for (int i = lane; i < half; i += 32) rotate(q, i, half, pos, p);
        return;
    }
    int kh = head - p.nq;
    float* k = p.k + (i64)t * kvw + (i64)kh * p.d;
    const float* v = p.v + (i64)t * kvw + (i64)kh * p.d;
    int logical = position / 16;
    int entry = p.ring > 0 ? logical % p.ring : logical;
    int block = p.table[(i64)p.seqs[t] * p.table_stride + entry];
    i64 at = ((i64)block * 16 + (position & 15)) * kvw + (i64)kh * p.d;
    for (int i = lane; i < half; i += 32) {
        float2 r = rotate(k, i, half, pos, p);
        kv_store<KV>(p.kc, at + i, r.x);
        kv_store<KV>(p.kc, at + i + half, r.y);
        kv_store<KV>(p.vc, at + i, v[i]);
        kv_store<KV>(p.vc, at + i + half, v[i + half]);
    }
}

extern "C" __global__ void rope_kv_f32(const RopeParams p) { grid_dep_sync(); rope_kv_impl<KV_F32>(p); }
extern "C" __global__ void rope_kv_bf16(const RopeParams p) { grid_dep_sync(); rope_kv_impl<KV_BF16>(p); }
extern "C" __global__ void rope_kv_f16(const RopeParams p) { grid_dep_sync(); rope_kv_impl<KV_F16>(p); }
