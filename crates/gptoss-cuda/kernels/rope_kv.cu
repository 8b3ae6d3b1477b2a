// rope_kv.cu — RoPE (NeoX half-split pairs, YaRN tables; spec §1.3 "RoPE") on q and k in place, then k and v
// stored into the layer's KV cache at each token's slot and position.
// Layout: q [n_tok, nq*d] f32, k/v [n_tok, nkv*d] f32; cache (this layer) [slots, ctx, nkv*d] of KV
//   (bf16 or f32); pos, slots i32 [n_tok]; inv_freq f32 [d/2]. The angle is (float)pos * inv_freq[i], and
//   cos/sin are scaled by the YaRN concentration, as math::apply_rope.
// Grid: one block per token, 128 threads striding over q pairs, k pairs and v elements.
// Entry points: rope_kv_bf16, rope_kv_f32 (the cache type). Minimum arch: sm_80. Launched from
// src/ops/attention.rs.
struct RopeParams {
    float* q;
    float* k;
    const float* v;
    void* kc;
    void* vc;
    const int* pos;
    const int* slots;
    const float* inv_freq;
    i64 slot_stride;
    float conc;
    int nq;
    int nkv;
    int d;
};

template <typename KV>
static __device__ __forceinline__ void kv_store(KV* p, float v);
template <>
__device__ __forceinline__ void kv_store<u16>(u16* p, float v) { *p = f32_to_bf16(v); }
template <>
__device__ __forceinline__ void kv_store<float>(float* p, float v) { *p = v; }

static __device__ __forceinline__ void rotate(float* head, int i, int half, float pos, const RopeParams& p) {
    float angle = pos * p.inv_freq[i];
    float c = cosf(angle) * p.conc, s = sinf(angle) * p.conc;
    float x1 = head[i], x2 = head[i + half];
    head[i] = x1 * c - x2 * s;
    head[i + half] = x2 * c + x1 * s;
}

template <typename KV>
static __device__ void rope_kv_impl(const RopeParams& p) {
    int t = blockIdx.x;
    int half = p.d / 2, kvw = p.nkv * p.d;
    float pos = (float)p.pos[t];
    float* q = p.q + (i64)t * p.nq * p.d;
    float* k = p.k + (i64)t * kvw;
    for (int w = threadIdx.x; w < p.nq * half; w += blockDim.x)
        rotate(q + (w / half) * p.d, w % half, half, pos, p);
    for (int w = threadIdx.x; w < p.nkv * half; w += blockDim.x)
        rotate(k + (w / half) * p.d, w % half, half, pos, p);
    __syncthreads();
    i64 at = (i64)p.slots[t] * p.slot_stride + (i64)p.pos[t] * kvw;
    KV* kc = (KV*)p.kc + at;
    KV* vc = (KV*)p.vc + at;
    const float* v = p.v + (i64)t * kvw;
    for (int i = threadIdx.x; i < kvw; i += blockDim.x) {
        kv_store<KV>(kc + i, k[i]);
        kv_store<KV>(vc + i, v[i]);
    }
}

extern "C" __global__ void rope_kv_bf16(const RopeParams p) { rope_kv_impl<u16>(p); }
extern "C" __global__ void rope_kv_f32(const RopeParams p) { rope_kv_impl<float>(p); }
