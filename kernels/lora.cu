// LoRA (Hu et al. 2021): a rank-r update of a frozen weight, W' = W + s·B·A with
// A (r, in) and B (out, r), s = alpha / r.
//
// Merged: lora_merge_bf16 folds s·B·A into the bf16 weight once (s < 0 unmerges,
// up to bf16 rounding).
// Unmerged, several adapters in one batch (Punica's SGMV, Chen et al. 2023):
// the rows of a batch form segments, each with its own adapter (or none), and
//     shrink: t[row, :] = x[row, :] · Aᵀ          (rank values per row, f32)
//     expand: y[row, :] += s · t[row, :] · Bᵀ      (on top of the base projection)
// Segments are described per row by `row_seg` (segment index, -1 = no adapter) and
// a table of `LoraSeg` (device pointers of the segment's A and B, rank, scale).
#include "palr_common.cuh"

struct LoraSeg {
    unsigned long long a;  // const bf16_t* (rank, in)
    unsigned long long b;  // const bf16_t* (out, rank)
    int rank;
    float scale;
};

#define MERGE_ROWS 8

// w (out, in) += scale · b (out, rank) · a (rank, in).
// grid (ceil(in / 256), ceil(out / 8)), block 256; rank <= 256.
extern "C" __global__ void lora_merge_bf16(bf16_t* __restrict__ w, const bf16_t* __restrict__ a,
                                           const bf16_t* __restrict__ b, int out_f, int in_f,
                                           int rank, float scale) {
    __shared__ float bs[MERGE_ROWS][256];
    const int o0 = blockIdx.y * MERGE_ROWS;
    for (int i = threadIdx.x; i < MERGE_ROWS * rank; i += blockDim.x) {
        const int rr = i / rank, k = i - rr * rank;
        bs[rr][k] = o0 + rr < out_f ? bf2f(b[(size_t)(o0 + rr) * rank + k]) : 0.0f;
    }
    __syncthreads();
    const int col = blockIdx.x * blockDim.x + threadIdx.x;
    if (col >= in_f) return;
    float acc[MERGE_ROWS];
#pragma unroll
    for (int rr = 0; rr < MERGE_ROWS; ++rr) acc[rr] = 0.0f;
    for (int k = 0; k < rank; ++k) {
        const float av = bf2f(a[(size_t)k * in_f + col]);
#pragma unroll
        for (int rr = 0; rr < MERGE_ROWS; ++rr) acc[rr] += bs[rr][k] * av;
    }
#pragma unroll
    for (int rr = 0; rr < MERGE_ROWS; ++rr) {
        if (o0 + rr < out_f) {
            bf16_t* p = w + (size_t)(o0 + rr) * in_f + col;
            *p = f2bf(bf2f(*p) + scale * acc[rr]);
        }
    }
}

// t[row, k] = x[row, :] · a[k, :] for k < rank of the row's segment.
// x (rows, in) bf16 with row stride ldx; t (rows, max_rank) f32.
// grid (rows), block 256: each warp takes ranks k = warp, warp + 8, ...
extern "C" __global__ void lora_shrink_bf16(const bf16_t* __restrict__ x, int ldx,
                                            const int* __restrict__ row_seg,
                                            const LoraSeg* __restrict__ segs,
                                            float* __restrict__ t, int in_f, int max_rank) {
    const int row = blockIdx.x;
    const int seg = row_seg[row];
    if (seg < 0) return;
    const LoraSeg sg = segs[seg];
    const bf16_t* a = (const bf16_t*)sg.a;
    const bf16_t* xr = x + (size_t)row * ldx;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    for (int k = warp; k < sg.rank; k += warps) {
        const bf16_t* ak = a + (size_t)k * in_f;
        float dot = 0.0f;
        if ((in_f & 1) == 0) {
            for (int i = 2 * lane; i < in_f; i += 64) {
                const float2 xv = load_f2(xr + i), av = load_f2(ak + i);
                dot += xv.x * av.x + xv.y * av.y;
            }
        } else {
            for (int i = lane; i < in_f; i += 32) dot += bf2f(xr[i]) * bf2f(ak[i]);
        }
        dot = warp_sum(dot);
        if (lane == 0) t[(size_t)row * max_rank + k] = dot;
    }
}

// y[row, o] += scale · t[row, :] · b[o, :]. y (rows, out) f32 with row stride ldy.
// grid (ceil(out / 256), rows), block 256.
extern "C" __global__ void lora_expand_f32(const float* __restrict__ t,
                                           const int* __restrict__ row_seg,
                                           const LoraSeg* __restrict__ segs,
                                           float* __restrict__ y, int ldy, int out_f,
                                           int max_rank) {
    __shared__ float ts[256];
    const int row = blockIdx.y;
    const int seg = row_seg[row];
    if (seg < 0) return;
    const LoraSeg sg = segs[seg];
    for (int k = threadIdx.x; k < sg.rank; k += blockDim.x) ts[k] = t[(size_t)row * max_rank + k];
    __syncthreads();
    const int o = blockIdx.x * blockDim.x + threadIdx.x;
    if (o >= out_f) return;
    const bf16_t* bo = (const bf16_t*)sg.b + (size_t)o * sg.rank;
    float acc = 0.0f;
    for (int k = 0; k < sg.rank; ++k) acc += ts[k] * bf2f(bo[k]);
    y[(size_t)row * ldy + o] += sg.scale * acc;
}
