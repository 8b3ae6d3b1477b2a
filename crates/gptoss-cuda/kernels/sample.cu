// sample.cu — token sampling on the device with the engine's semantics (crates/gptoss-engine/src/sampler.rs):
// greedy = argmax (lowest index among equals); otherwise keep the top_k most likely, softmax with temperature
// (exp in f64 of the f32 (l - max) / T), keep the smallest prefix of mass >= top_p, and walk the kept tokens
// in order with r = u * kept mass, u drawn on the host from the sequence's seed and counter.
// Order = descending key, key(i) = (monotone bits of logit i) << 32 | (~i): unique keys, ties to the lower
// index. Every cut is "keys >= K", found by a 64-step bisection over K with block-wide counts or sums.
// A row with a mask (structured outputs; mask_row >= 0) reads every token outside its bitset, and every NaN
// logit, as -inf: the row the host's constraint path (engine logits.rs apply_mask) hands the same sampler. The
// logits themselves are not written. A masked row with no allowed finite logit gets token 0xffffffff.
// Layout: logits f32 [rows, vocab]; rows SampleRow [rows]; scratch f64 [rows, vocab]; out u32 [rows];
// masks u32 [masked rows, mask_words] (bit t % 32 of word t / 32).
// row_max_keys first finds each row's largest key in KEY_SLICES slices (grid (rows, KEY_SLICES), 256 threads;
// one block scanning a 201k row took 77 µs, 32 slices 13 µs, the whole greedy step of a decode token); sample_rows starts from
// those. Grid: one block of 1024 threads per row (launch bounds (1024, 1): one block per SM may take 64
// registers a thread; ptxas otherwise aims at two and spills the mask path). Entry points: row_max_keys,
// sample_rows. Minimum arch: sm_80.
// logprob_rows: for each listed row, the log-probabilities of its sampled token and of its top_n most likely
// tokens from the raw logits, as the engine's sampler::log_softmax_top: max ignoring NaN (f32::max), lse =
// max + ln(sum of exp in f64 of the f32 (l - max)), the token's f32 l - (float)lse, the top tokens by the
// same keys (ties to the lower index) with (float)((double)l - lse). One block of 1024 threads per listed row.
// Launched from src/ops/sample.rs.
struct SampleRow {
    double u;
    float temperature;
    float top_p;
    int top_k;
    int greedy;
    int mask_row;
    int pad_;
};

struct SampleParams {
    const float* logits;
    const SampleRow* rows;
    double* scratch;
    u32* out;
    const u32* masks;
    u64* keys;
    int vocab;
    int mask_words;
};

#define KEY_SLICES 128

// The logit the sampler sees for token i (mask null: the row is not masked).
static __device__ __forceinline__ float row_logit(const float* l, const u32* mask, int i) {
    float v = l[i];
    if (mask == nullptr) return v;
    const float ninf = __int_as_float(0xff800000);
    return ((mask[i >> 5] >> (i & 31)) & 1u) && v > ninf ? v : ninf;
}

static __device__ __forceinline__ u64 sort_key(float l, int i) {
    u32 b = __float_as_uint(l);
    u32 m = (b & 0x80000000u) ? ~b : (b | 0x80000000u);
    return ((u64)m << 32) | (u64)(0xffffffffu - (u32)i);
}

static __device__ double block_sum_f64(double v, double* scratch) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    #pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    double r = lane < nw ? scratch[lane] : 0.0;
    #pragma unroll
    for (int o = 16; o > 0; o >>= 1) r += __shfl_xor_sync(0xffffffffu, r, o);
    return r;
}

// The block's largest `v` (every thread gets it).
static __device__ u64 block_max_u64(u64 v, double* scratch) {
    #pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        u64 other = __shfl_xor_sync(0xffffffffu, v, o);
        v = other > v ? other : v;
    }
    u64* s = (u64*)scratch;
    __syncthreads();
    if ((threadIdx.x & 31) == 0) s[threadIdx.x >> 5] = v;
    __syncthreads();
    u64 r = 0;
    for (int w = 0; w < (int)(blockDim.x >> 5); w++) r = s[w] > r ? s[w] : r;
    __syncthreads();
    return r;
}

// Largest key of the row (argmax with ties to the lower index).
static __device__ u64 max_key(const float* l, const u32* mask, int vocab, double* scratch) {
    u64 best = 0;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        u64 k = sort_key(row_logit(l, mask, i), i);
        best = k > best ? k : best;
    }
    return block_max_u64(best, scratch);
}

// Σ over keys >= cut of `e` (or of 1 when e is null).
static __device__ double mass_from(const float* l, const u32* mask, const double* e, int vocab, u64 cut,
                                  double* scratch) {
    double s = 0.0;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x)
        if (sort_key(row_logit(l, mask, i), i) >= cut) s += e ? e[i] : 1.0;
    return block_sum_f64(s, scratch);
}

struct RowView {
    const float* l;
    const u32* mask;
    const double* e;
    int vocab;
};

// Largest K in [lo, hi] with mass_from(K) > target (mass_from(lo) > target must hold), or with
// mass_from(K) >= target when `inclusive`.
static __device__ u64 bisect(const RowView v, u64 lo, u64 hi, double target, int inclusive, double* scratch) {
    for (int it = 0; it < 64 && lo < hi; it++) {
        u64 mid = lo + (hi - lo) / 2 + 1;
        double m = mass_from(v.l, v.mask, v.e, v.vocab, mid, scratch);
        bool ok = inclusive ? m >= target : m > target;
        if (ok) lo = mid; else hi = mid - 1;
    }
    return lo;
}

// keys[row][slice] = the largest key of the row's slice (0 for an empty slice).
extern "C" __global__ void __launch_bounds__(256) row_max_keys(const SampleParams p) {
    grid_dep_sync();
    __shared__ double scratch[64];
    const float* l = p.logits + (i64)blockIdx.x * p.vocab;
    SampleRow r = p.rows[blockIdx.x];
    const u32* mask = r.mask_row >= 0 ? p.masks + (i64)r.mask_row * p.mask_words : nullptr;
    int per = (p.vocab + KEY_SLICES - 1) / KEY_SLICES;
    int lo = blockIdx.y * per, hi = min(p.vocab, lo + per);
    u64 best = 0;
    #pragma unroll 4
    for (int i = lo + threadIdx.x; i < hi; i += blockDim.x) {
        u64 k = sort_key(row_logit(l, mask, i), i);
        best = k > best ? k : best;
    }
    best = block_max_u64(best, scratch);
    if (threadIdx.x == 0) p.keys[(i64)blockIdx.x * KEY_SLICES + blockIdx.y] = best;
}

extern "C" __global__ void __launch_bounds__(1024, 1) sample_rows(const SampleParams p) {
    grid_dep_sync();
    __shared__ double scratch[64];
    __shared__ float lmax_s;
    const float* l = p.logits + (i64)blockIdx.x * p.vocab;
    double* e = p.scratch + (i64)blockIdx.x * p.vocab;
    SampleRow r = p.rows[blockIdx.x];
    const u32* mask = r.mask_row >= 0 ? p.masks + (i64)r.mask_row * p.mask_words : nullptr;
    u64 top = block_max_u64(threadIdx.x < KEY_SLICES ? p.keys[(i64)blockIdx.x * KEY_SLICES + threadIdx.x] : 0,
                            scratch);
    int best = (int)(0xffffffffu - (u32)(top & 0xffffffffu));
    float lbest = row_logit(l, mask, best);
    if (mask != nullptr && !(lbest > __int_as_float(0xff800000))) {
        if (threadIdx.x == 0) p.out[blockIdx.x] = 0xffffffffu;
        return;
    }
    if (r.greedy) {
        if (threadIdx.x == 0) p.out[blockIdx.x] = (u32)best;
        return;
    }
    if (threadIdx.x == 0) lmax_s = lbest;
    __syncthreads();
    float lmax = lmax_s;
    for (int i = threadIdx.x; i < p.vocab; i += blockDim.x)
        e[i] = exp((double)((row_logit(l, mask, i) - lmax) / r.temperature));
    __syncthreads();
    RowView keys = {l, mask, nullptr, p.vocab};
    RowView mass = {l, mask, e, p.vocab};
    u64 cut = 0;
    if (r.top_k > 0 && r.top_k < p.vocab) cut = bisect(keys, 0, top, (double)r.top_k, 1, scratch);
    if (r.top_p < 1.0f) {
        double z = mass_from(l, mask, e, p.vocab, cut, scratch);
        cut = bisect(mass, cut, top, (double)r.top_p * z, 1, scratch);
    }
    double kept = mass_from(l, mask, e, p.vocab, cut, scratch);
    double target = r.u * kept;
    u64 pick = kept > target ? bisect(mass, cut, top, target, 0, scratch) : cut;
    if (threadIdx.x == 0) p.out[blockIdx.x] = 0xffffffffu - (u32)(pick & 0xffffffffu);
}

struct LogprobRow {
    int row;
    u32 token;
    int top_n;
    int pad_;
};

struct LogprobParams {
    const float* logits;
    const LogprobRow* jobs;
    u32* out;
    int vocab;
    int out_stride;
};

static __device__ float block_max_f32(float v, double* scratch) {
    float* s = (float*)scratch;
    #pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    __syncthreads();
    if ((threadIdx.x & 31) == 0) s[threadIdx.x >> 5] = v;
    __syncthreads();
    float r = s[0];
    for (int w = 1; w < (int)(blockDim.x >> 5); w++) r = fmaxf(r, s[w]);
    __syncthreads();
    return r;
}

// Largest key of the row below `cap` (the next of the ordering after the key `cap`).
static __device__ u64 max_key_below(const float* l, int vocab, u64 cap, double* scratch) {
    u64 best = 0;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        u64 k = sort_key(l[i], i);
        best = k < cap && k > best ? k : best;
    }
    return block_max_u64(best, scratch);
}

extern "C" __global__ void __launch_bounds__(1024) logprob_rows(const LogprobParams p) {
    grid_dep_sync();
    __shared__ double scratch[64];
    const LogprobRow j = p.jobs[blockIdx.x];
    const float* l = p.logits + (i64)j.row * p.vocab;
    u32* o = p.out + (i64)blockIdx.x * p.out_stride;
    float m = __int_as_float(0xff800000);
    for (int i = threadIdx.x; i < p.vocab; i += blockDim.x) m = fmaxf(m, l[i]);
    m = block_max_f32(m, scratch);
    double s = 0.0;
    for (int i = threadIdx.x; i < p.vocab; i += blockDim.x) s += exp((double)(l[i] - m));
    s = block_sum_f64(s, scratch);
    double lse = (double)m + log(s);
    if (threadIdx.x == 0) {
        float lt = j.token < (u32)p.vocab ? l[j.token] - (float)lse : __int_as_float(0xff800000);
        o[0] = __float_as_uint(lt);
    }
    u64 key = 0;
    for (int k = 0; k < j.top_n; k++) {
        key = k == 0 ? max_key(l, nullptr, p.vocab, scratch) : max_key_below(l, p.vocab, key, scratch);
        u32 idx = 0xffffffffu - (u32)(key & 0xffffffffu);
        if (threadIdx.x == 0) {
            o[1 + 2 * k] = idx;
            o[2 + 2 * k] = __float_as_uint((float)((double)l[idx] - lse));
        }
    }
}
