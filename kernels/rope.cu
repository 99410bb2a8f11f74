// Rotary position embedding (Su et al. 2021, RoFormer) in the Hugging Face
// "rotate half" layout: element i of a head pairs with element i + head_dim/2.
//     x'[i]        = x[i] cos - x[i + half] sin
//     x'[i + half] = x[i + half] cos + x[i] sin
// `table` is (rows, half, 2) = [cos, sin] per position, computed on the host in f64.
// grid (rows), block 128; x (rows, n_heads, head_dim) f32, rotated in place.
#include "palr_common.cuh"

extern "C" __global__ void rope_f32(float* __restrict__ x, const float* __restrict__ table,
                                    int n_heads, int head_dim) {
    const int r = blockIdx.x;
    const int half = head_dim / 2;
    float* row = x + (size_t)r * n_heads * head_dim;
    const float* cs = table + (size_t)r * half * 2;
    for (int p = threadIdx.x; p < n_heads * half; p += blockDim.x) {
        const int h = p / half, i = p - h * half;
        const float c = cs[2 * i], s = cs[2 * i + 1];
        float* head = row + h * head_dim;
        const float x0 = head[i], x1 = head[i + half];
        head[i] = x0 * c - x1 * s;
        head[i + half] = x1 * c + x0 * s;
    }
}
