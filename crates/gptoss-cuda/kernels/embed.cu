// embed.cu — out[t] = decode(table row tokens[t]) for every packed weight format (see common.cu).
// Layout: table packed [n_rows, ld], tokens i32 [n_tok], out f32 [n_tok, k]. A token outside the table
//   gives a zero row (the engine rejects such tokens before the step).
// Grid: one block per token; each thread decodes chunks of 8 elements. Block: 128 threads.
// Entry points: embed_<fmt>. Minimum arch: sm_80. Launched from src/ops/embed.rs.
struct EmbedParams {
    WRef w;
    const int* tokens;
    float* out;
    int k;
    int n_rows;
};

template <int F>
static __device__ void embed_impl(const EmbedParams& p) {
    __shared__ float tab[16];
    load_table(p.w, tab);
    int t = blockIdx.x;
    int tok = p.tokens[t];
    float* o = p.out + (i64)t * p.k;
    bool ok = tok >= 0 && tok < p.n_rows;
    for (int c = threadIdx.x; c * 8 < p.k; c += blockDim.x) {
        float v[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        if (ok) load8<F>(p.w, tab, (i64)tok, c, v);
        #pragma unroll
        for (int i = 0; i < 8; i++)
            if (c * 8 + i < p.k) o[c * 8 + i] = v[i];
    }
}

#define EMBED_ENTRY(NAME, F) \
    extern "C" __global__ void embed_##NAME(const EmbedParams p) { grid_dep_sync(); embed_impl<F>(p); }

EMBED_ENTRY(f32, WF_F32)
EMBED_ENTRY(bf16, WF_BF16)
EMBED_ENTRY(f16, WF_F16)
EMBED_ENTRY(q8, WF_Q8)
EMBED_ENTRY(lut4e8m0, WF_LUT4_E8M0)
EMBED_ENTRY(lut4f32, WF_LUT4_F32)
