// Element-wise and gather kernels: embedding lookup, residual add, dtype casts,
// bias add, SwiGLU, KV-cache store, fills. All memory-bound; the floors are in
// kernels/NOTES.md.
#include "palr_common.cuh"

// out[r, :] = table[tokens[r], :]        table (vocab, dim) bf16, out (rows, dim) f32.
// grid (rows), block 256. Token ids were checked against the vocabulary on the host.
extern "C" __global__ void embed_bf16_f32(const bf16_t* __restrict__ table,
                                          const unsigned int* __restrict__ tokens,
                                          float* __restrict__ out, int dim) {
    const int r = blockIdx.x;
    const bf16_t* src = table + (size_t)tokens[r] * dim;
    float* dst = out + (size_t)r * dim;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) dst[i] = bf2f(src[i]);
}

// x[i] += y[i], i < n.                   grid-stride, any grid.
extern "C" __global__ void add_f32(float* __restrict__ x, const float* __restrict__ y, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x)
        x[i] += y[i];
}

// y[i] = bf16(x[i]).
extern "C" __global__ void cast_f32_bf16(const float* __restrict__ x, bf16_t* __restrict__ y,
                                         long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x)
        y[i] = f2bf(x[i]);
}

// y[i] = f32(x[i]).
extern "C" __global__ void cast_bf16_f32(const bf16_t* __restrict__ x, float* __restrict__ y,
                                         long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x)
        y[i] = bf2f(x[i]);
}

// out[r, j] += bias[j]                   out (rows, n) f32; grid-stride over rows * n.
extern "C" __global__ void bias_add_f32(float* __restrict__ out, const float* __restrict__ bias,
                                        long long total, int n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x)
        out[i] += bias[i % n];
}

__device__ __forceinline__ float silu(float g) { return g / (1.0f + __expf(-g)); }

// out[i] = silu(gate[i]) * up[i], written as bf16 (the input of the down projection).
// `out` is a different allocation from `gate` and `up`.
extern "C" __global__ void silu_mul_f32_bf16(const float* __restrict__ gate,
                                             const float* __restrict__ up,
                                             bf16_t* __restrict__ out, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x)
        out[i] = f2bf(silu(gate[i]) * up[i]);
}

// Writes `rows` new keys and values (rows, n_kv, head_dim) f32 into the bf16 cache
// (n_kv, capacity, head_dim) at positions start..start+rows.
// grid (rows, n_kv), block 64..256. start + rows <= capacity was checked on the host.
extern "C" __global__ void kv_store_f32_bf16(const float* __restrict__ k,
                                             const float* __restrict__ v,
                                             bf16_t* __restrict__ kc, bf16_t* __restrict__ vc,
                                             int start, int n_kv, int head_dim, int capacity) {
    const int r = blockIdx.x, g = blockIdx.y;
    const size_t src = ((size_t)r * n_kv + g) * head_dim;
    const size_t dst = ((size_t)g * capacity + start + r) * head_dim;
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        kc[dst + d] = f2bf(k[src + d]);
        vc[dst + d] = f2bf(v[src + d]);
    }
}

// The same for bf16 keys and values (the attention benchmark's inputs).
extern "C" __global__ void kv_store_bf16_bf16(const bf16_t* __restrict__ k,
                                              const bf16_t* __restrict__ v,
                                              bf16_t* __restrict__ kc, bf16_t* __restrict__ vc,
                                              int start, int n_kv, int head_dim, int capacity) {
    const int r = blockIdx.x, g = blockIdx.y;
    const size_t src = ((size_t)r * n_kv + g) * head_dim;
    const size_t dst = ((size_t)g * capacity + start + r) * head_dim;
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        kc[dst + d] = k[src + d];
        vc[dst + d] = v[src + d];
    }
}

extern "C" __global__ void fill_f32(float* __restrict__ x, float value, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x)
        x[i] = value;
}

extern "C" __global__ void fill_bf16(bf16_t* __restrict__ x, float value, long long n) {
    const bf16_t b = f2bf(value);
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x)
        x[i] = b;
}

// SplitMix64 (Steele, Lea, Flood 2014) of the element index: a counter-based
// generator, so any grid gives the same values.
__device__ __forceinline__ unsigned long long splitmix64(unsigned long long z) {
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

// x[i] = uniform in [-scale, scale) (+ offset), from (seed, i). Synthetic weights
// for benchmarks of models too large to ship (e.g. LLaMA-2-7B shapes).
extern "C" __global__ void fill_uniform_bf16(bf16_t* __restrict__ x, long long n,
                                             unsigned long long seed, float scale, float offset) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const unsigned long long z = splitmix64(seed * 0x632be59bd9b4e019ull + (unsigned long long)i);
        const float u = (float)(z >> 40) * (1.0f / 16777216.0f);  // [0, 1), 24 bits
        x[i] = f2bf(offset + scale * (2.0f * u - 1.0f));
    }
}

extern "C" __global__ void fill_uniform_f32(float* __restrict__ x, long long n,
                                            unsigned long long seed, float scale, float offset) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const unsigned long long z = splitmix64(seed * 0x632be59bd9b4e019ull + (unsigned long long)i);
        const float u = (float)(z >> 40) * (1.0f / 16777216.0f);
        x[i] = offset + scale * (2.0f * u - 1.0f);
    }
}
