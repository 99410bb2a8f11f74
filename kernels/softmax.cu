// Row-wise reductions over logits for scoring and sampling:
//   log_softmax_f32    out[r, :] = logits[r, :] - logsumexp(logits[r, :])
//   token_logprob_f32  out[r]    = logits[r, t_r] - logsumexp(logits[r, :])
//   argmax_f32         idx[r]    = first index of the largest value (NaN never wins)
// One block per row (grid = rows, block = 1024). logsumexp is max-shifted.
#include "palr_common.cuh"

__device__ __forceinline__ float row_logsumexp(const float* __restrict__ x, int n, float* scratch) {
    float m = -PALR_INF;
    for (int i = threadIdx.x; i < n; i += blockDim.x) m = fmaxf(m, x[i]);
    m = block_max(m, scratch);
    float s = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) s += expf(x[i] - m);
    s = block_sum(s, scratch);
    return m + logf(s);
}

extern "C" __global__ void log_softmax_f32(const float* __restrict__ logits,
                                           float* __restrict__ out, int vocab) {
    __shared__ float scratch[32];
    const size_t off = (size_t)blockIdx.x * vocab;
    const float lse = row_logsumexp(logits + off, vocab, scratch);
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) out[off + i] = logits[off + i] - lse;
}

// targets[r] < vocab was checked on the host.
extern "C" __global__ void token_logprob_f32(const float* __restrict__ logits,
                                             const unsigned int* __restrict__ targets,
                                             float* __restrict__ out, int vocab) {
    __shared__ float scratch[32];
    const size_t off = (size_t)blockIdx.x * vocab;
    const float lse = row_logsumexp(logits + off, vocab, scratch);
    if (threadIdx.x == 0) out[blockIdx.x] = logits[off + targets[blockIdx.x]] - lse;
}

// (value, index) pairs: larger value wins, the smaller index on ties; NaN is below
// everything, so an all-NaN row yields index 0 (as the CPU reference does).
__device__ __forceinline__ void better(float& v, int& i, float v2, int i2) {
    const bool v_nan = v != v, v2_nan = v2 != v2;
    if (v2_nan) return;
    if (v_nan || v2 > v || (v2 == v && i2 < i)) {
        v = v2;
        i = i2;
    }
}

extern "C" __global__ void argmax_f32(const float* __restrict__ logits, int vocab,
                                      int* __restrict__ idx_out, float* __restrict__ val_out) {
    __shared__ float sv[32];
    __shared__ int si[32];
    const float* x = logits + (size_t)blockIdx.x * vocab;
    float v = __int_as_float(0x7fc00000);  // NaN: loses to any number
    int idx = 0x7fffffff;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) better(v, idx, x[i], i);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float v2 = __shfl_xor_sync(0xffffffffu, v, o);
        const int i2 = __shfl_xor_sync(0xffffffffu, idx, o);
        better(v, idx, v2, i2);
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) {
        sv[warp] = v;
        si[warp] = idx;
    }
    __syncthreads();
    if (warp == 0) {
        const int warps = blockDim.x >> 5;
        v = lane < warps ? sv[lane] : __int_as_float(0x7fc00000);
        idx = lane < warps ? si[lane] : 0x7fffffff;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            const float v2 = __shfl_xor_sync(0xffffffffu, v, o);
            const int i2 = __shfl_xor_sync(0xffffffffu, idx, o);
            better(v, idx, v2, i2);
        }
        if (lane == 0) {
            idx_out[blockIdx.x] = idx == 0x7fffffff ? 0 : idx;
            val_out[blockIdx.x] = v;
        }
    }
}
