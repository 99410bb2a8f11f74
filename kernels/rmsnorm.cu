// RMSNorm (Zhang & Sennrich 2019) as LLaMA uses it:
//     out[r, :] = x[r, :] / sqrt(mean(x[r, :]^2) + eps) * weight
// and the fused form the decoder needs between sub-layers:
//     x[r, :] += h[r, :];  out[r, :] = rmsnorm(x[r, :]) * weight
// One block per row (grid = rows, block = 256). Each thread touches the same
// indices in both passes, so `out` may even alias `h`. The output is bf16: it
// feeds a projection (cuBLAS takes both operands in one type).
#include "palr_common.cuh"

template <typename TOut>
__device__ __forceinline__ void rmsnorm_row(const float* __restrict__ x,
                                            const float* __restrict__ w, TOut* out, int dim,
                                            float eps) {
    __shared__ float scratch[32];
    float ss = 0.0f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
        const float v = x[i];
        ss += v * v;
    }
    ss = block_sum(ss, scratch);
    const float inv = rsqrtf(ss / (float)dim + eps);
    for (int i = threadIdx.x; i < dim; i += blockDim.x) store_f(out + i, w[i] * (x[i] * inv));
}

template <typename TOut>
__device__ __forceinline__ void add_rmsnorm_row(float* __restrict__ x, const float* h,
                                                const float* __restrict__ w, TOut* out, int dim,
                                                float eps) {
    __shared__ float scratch[32];
    float ss = 0.0f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
        const float v = x[i] + h[i];
        x[i] = v;
        ss += v * v;
    }
    ss = block_sum(ss, scratch);
    const float inv = rsqrtf(ss / (float)dim + eps);
    for (int i = threadIdx.x; i < dim; i += blockDim.x) store_f(out + i, w[i] * (x[i] * inv));
}

extern "C" __global__ void rmsnorm_f32_bf16(const float* __restrict__ x, const float* __restrict__ w,
                                            bf16_t* __restrict__ out, int dim, float eps) {
    const size_t off = (size_t)blockIdx.x * dim;
    rmsnorm_row(x + off, w, out + off, dim, eps);
}

// h is f32 (the sub-layer's output); out is h's bf16 twin (another allocation).
extern "C" __global__ void add_rmsnorm_f32_bf16(float* __restrict__ x, const float* __restrict__ h,
                                                const float* __restrict__ w,
                                                bf16_t* __restrict__ out, int dim, float eps) {
    const size_t off = (size_t)blockIdx.x * dim;
    add_rmsnorm_row(x + off, h + off, w, out + off, dim, eps);
}
