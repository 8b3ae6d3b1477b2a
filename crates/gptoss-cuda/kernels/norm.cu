// norm.cu — RMSNorm and the residual add, f32 throughout (spec §1.3 "RMSNorm").
// rmsnorm_f32: out[r] = w * (x[r] / sqrt(mean(x[r]²) + eps)); x, out [rows, n] f32, w [n] f32.
//   Grid: one block per row, 256 threads.
// add_f32: x[i] += y[i] for i < n. Grid: ceil(n / 256) blocks of 256.
// add_rmsnorm_f32: x[r] += y[r], then out[r] as rmsnorm_f32 (the residual add and the next norm in one launch).
//   Grid: one block per row, 256 threads.
// Minimum arch: sm_80. Launched from src/ops/norm.rs.
struct NormParams {
    const float* x;
    const float* w;
    float* out;
    int n;
    float eps;
};

struct AddNormParams {
    float* x;
    const float* y;
    const float* w;
    float* out;
    int n;
    float eps;
};

// One row, every load issued before the first use: a row of 2,880 is one memory latency, where a strided
// loop over it was a chain of a dozen (8 µs per decode row on the H200, measured; the vector path ~2.5 µs).
// ADD: x += y first (x written back).
template <int ADD>
static __device__ void rmsnorm_row(const AddNormParams& p) {
    __shared__ float scratch[32];
    float* x = p.x + (i64)blockIdx.x * p.n;
    const float* y = ADD ? p.y + (i64)blockIdx.x * p.n : nullptr;
    float* o = p.out + (i64)blockIdx.x * p.n;
    unsigned long long addr = (unsigned long long)x | (unsigned long long)p.w | (unsigned long long)o;
    if (ADD) addr |= (unsigned long long)y;
    if ((addr & 15) == 0 && (p.n & 3) == 0 && p.n <= RMS_VEC * 4 * 256) {
        float4 xv[RMS_VEC], wv[RMS_VEC];
        float inv = rms_row_vec<ADD>(x, y, p.w, p.n, p.eps, xv, wv, scratch);
        int nv = p.n >> 2;
        #pragma unroll
        for (int j = 0; j < RMS_VEC; j++) {
            int i = threadIdx.x + j * 256;
            if (i < nv) {
                if (ADD) ((float4*)x)[i] = xv[j];
                ((float4*)o)[i] = rms_scale(xv[j], wv[j], inv);
            }
        }
        return;
    }
    float s = 0.0f;
    for (int i = threadIdx.x; i < p.n; i += blockDim.x) {
        float v = x[i];
        if (ADD) {
            v += y[i];
            x[i] = v;
        }
        s += v * v;
    }
    s = block_sum(s, scratch);
    float inv = 1.0f / sqrtf(s / (float)p.n + p.eps);
    for (int i = threadIdx.x; i < p.n; i += blockDim.x) o[i] = p.w[i] * (x[i] * inv);
}

extern "C" __global__ void __launch_bounds__(256) rmsnorm_f32(const NormParams p) {
    grid_dep_sync();
    AddNormParams a = {(float*)p.x, nullptr, p.w, p.out, p.n, p.eps};
    rmsnorm_row<0>(a);
}

extern "C" __global__ void __launch_bounds__(256) add_rmsnorm_f32(const AddNormParams p) { grid_dep_sync(); rmsnorm_row<1>(p); }

struct AddParams {
    float* x;
    const float* y;
    i64 n;
};

extern "C" __global__ void add_f32(const AddParams p) {
    grid_dep_sync();
    i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < p.n) p.x[i] += p.y[i];
}
