// attention.cu — attention with learned sinks and an optional sliding window, prefill and decode alike
// (spec §1.3 "Attention with learned sinks", "Masks"): out = Σ_j softmax_with_sink(q·k_j / √d)_j v_j over
// the keys first..=pos of the token's slot, first = pos+1-window for sliding layers (0 for full ones).
// Layout: q [n_tok, nq*d] f32 (already rotated), cache (this layer) [slots, ctx, nkv*d] bf16 or f32,
//   sinks f32 [nq], out [n_tok, nq*d] f32; pos, slots i32 [n_tok]. GQA: q head h reads kv head h/(nq/nkv).
// Grid: one block per (token, q head), 128 threads; keys in tiles of 128 (one score per thread), online
//   softmax whose running max starts at the sink (so the sink joins the denominator only). d <= 128.
// Entry points: attention_bf16, attention_f32 (the cache type). Minimum arch: sm_80.
// Launched from src/ops/attention.rs.
struct AttnParams {
    const float* q;
    const void* kc;
    const void* vc;
    const float* sinks;
    float* out;
    const int* pos;
    const int* slots;
    i64 slot_stride;
    float scale;
    int nq;
    int nkv;
    int d;
    int window;
    int pad_;
};

#define ATT_TILE 128

template <typename KV>
static __device__ __forceinline__ float kv_load(const KV* p);
template <>
__device__ __forceinline__ float kv_load<u16>(const u16* p) { return bf16_to_f32(*p); }
template <>
__device__ __forceinline__ float kv_load<float>(const float* p) { return *p; }

template <typename KV>
static __device__ void attention_impl(const AttnParams& p) {
    __shared__ float qs[128];
    __shared__ float ps[ATT_TILE];
    __shared__ float scratch[32];
    int t = blockIdx.x / p.nq, h = blockIdx.x % p.nq;
    int d = p.d, kvw = p.nkv * d, g = h / (p.nq / p.nkv);
    int pos = p.pos[t];
    int first = p.window > 0 ? max(0, pos + 1 - p.window) : 0;
    const float* q = p.q + (i64)t * p.nq * d + (i64)h * d;
    for (int i = threadIdx.x; i < d; i += blockDim.x) qs[i] = q[i];
    __syncthreads();
    i64 base = (i64)p.slots[t] * p.slot_stride + (i64)g * d;
    const KV* kc = (const KV*)p.kc + base;
    const KV* vc = (const KV*)p.vc + base;
    float m = p.sinks[h];
    float l = 1.0f;
    float acc = 0.0f;
    for (int j0 = first; j0 <= pos; j0 += ATT_TILE) {
        int j = j0 + threadIdx.x;
        float s = -__int_as_float(0x7f800000);
        if (j <= pos) {
            const KV* kj = kc + (i64)j * kvw;
            float dot = 0.0f;
            for (int i = 0; i < d; i++) dot += qs[i] * kv_load<KV>(kj + i);
            s = dot * p.scale;
        }
        float m_new = fmaxf(m, block_max(s, scratch));
        float e = j <= pos ? expf(s - m_new) : 0.0f;
        ps[threadIdx.x] = e;
        float corr = expf(m - m_new);
        l = l * corr + block_sum(e, scratch);
        __syncthreads();
        if (threadIdx.x < d) {
            acc *= corr;
            int n = min(ATT_TILE, pos - j0 + 1);
            for (int jj = 0; jj < n; jj++) acc += ps[jj] * kv_load<KV>(vc + (i64)(j0 + jj) * kvw + threadIdx.x);
        }
        m = m_new;
        __syncthreads();
    }
    if (threadIdx.x < d) p.out[(i64)t * p.nq * d + (i64)h * d + threadIdx.x] = acc / l;
}

extern "C" __global__ void __launch_bounds__(128) attention_bf16(const AttnParams p) { attention_impl<u16>(p); }
extern "C" __global__ void __launch_bounds__(128) attention_f32(const AttnParams p) { attention_impl<float>(p); }
