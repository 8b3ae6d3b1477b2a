// norm.cu — RMSNorm and the residual add, f32 throughout (spec §1.3 "RMSNorm").
// rmsnorm_f32: out[r] = w * (x[r] / sqrt(mean(x[r]²) + eps)); x, out [rows, n] f32, w [n] f32.
//   Grid: one block per row, 256 threads.
// add_f32: x[i] += y[i] for i < n. Grid: ceil(n / 256) blocks of 256.
// Minimum arch: sm_80. Launched from src/ops/norm.rs.
struct NormParams {
    const float* x;
    const float* w;
    float* out;
    int n;
    float eps;
};

extern "C" __global__ void __launch_bounds__(256) rmsnorm_f32(const NormParams p) {
    __shared__ float scratch[32];
    const float* x = p.x + (i64)blockIdx.x * p.n;
    float* o = p.out + (i64)blockIdx.x * p.n;
    float s = 0.0f;
    for (int i = threadIdx.x; i < p.n; i += blockDim.x) s += x[i] * x[i];
    s = block_sum(s, scratch);
    float inv = 1.0f / sqrtf(s / (float)p.n + p.eps);
    for (int i = threadIdx.x; i < p.n; i += blockDim.x) o[i] = p.w[i] * (x[i] * inv);
}

struct AddParams {
    float* x;
    const float* y;
    i64 n;
};

extern "C" __global__ void add_f32(const AddParams p) {
    i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < p.n) p.x[i] += p.y[i];
}
