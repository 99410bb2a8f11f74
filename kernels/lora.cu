// LoRA (Hu et al. 2021): a rank-r update of a frozen weight, W' = W + s·B·A with
// A (r, in) and B (out, r), s = alpha / r.
//
// Merged: lora_merge_bf16 folds s·B·A into the bf16 weight once (s < 0 unmerges,
// up to bf16 rounding).
// Unmerged, several adapters in one batch (Punica's SGMV, Chen et al. 2023):
// the rows of a batch form segments, each with its own adapter (or none), and
//     shrink: t[row, :] = x[row, :] · Aᵀ          (rank values per row, f32)
//     expand: y[row, :] += s · t[row, :] · Bᵀ      (on top of the base projection)
// The segment table (at most 32 segments: row bounds, device pointers of each
// segment's A and B, rank, scale) is a kernel parameter passed by value, so a
// call copies nothing from the host and never waits for the stream.
#include "palr_common.cuh"

#define LORA_MAX_SEGS 32

// Mirrors `LoraBatchArg` in src/engine/cuda/lora.rs (904 bytes, 8-byte aligned).
struct LoraBatch {
    int n_segs;
    int start[LORA_MAX_SEGS + 1];        // segment s covers rows start[s] .. start[s+1]
    unsigned long long a[LORA_MAX_SEGS];  // const bf16_t* (rank, in); 0 = no adapter
    unsigned long long b[LORA_MAX_SEGS];  // const bf16_t* (out, rank)
    int rank[LORA_MAX_SEGS];
    float scale[LORA_MAX_SEGS];
};

// The segment holding `row`, or -1 (past the last segment or without an adapter).
__device__ __forceinline__ int lora_segment(const LoraBatch& p, int row) {
    for (int s = 0; s < p.n_segs; ++s)
        if (row < p.start[s + 1]) return p.a[s] != 0 ? s : -1;
    return -1;
}

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
// grid (rows of this call, from row0), block 256: each warp takes ranks k = warp, warp + 8, ...
extern "C" __global__ void lora_shrink_bf16(const bf16_t* __restrict__ x, int ldx,
                                            const __grid_constant__ LoraBatch p, int row0,
                                            float* __restrict__ t, int in_f, int max_rank) {
    const int row = row0 + blockIdx.x;
    const int seg = lora_segment(p, row);
    if (seg < 0) return;
    const bf16_t* a = (const bf16_t*)p.a[seg];
    const int rank = p.rank[seg];
    const bf16_t* xr = x + (size_t)row * ldx;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    for (int k = warp; k < rank; k += warps) {
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
// grid (ceil(out / 256), rows of this call, from row0), block 256.
extern "C" __global__ void lora_expand_f32(const float* __restrict__ t,
                                           const __grid_constant__ LoraBatch p, int row0,
                                           float* __restrict__ y, int ldy, int out_f,
                                           int max_rank) {
    __shared__ float ts[256];
    const int row = row0 + blockIdx.y;
    const int seg = lora_segment(p, row);
    if (seg < 0) return;
    const int rank = p.rank[seg];
    for (int k = threadIdx.x; k < rank; k += blockDim.x) ts[k] = t[(size_t)row * max_rank + k];
    __syncthreads();
    const int o = blockIdx.x * blockDim.x + threadIdx.x;
    if (o >= out_f) return;
    const bf16_t* bo = (const bf16_t*)p.b[seg] + (size_t)o * rank;
    float acc = 0.0f;
    for (int k = 0; k < rank; ++k) acc += ts[k] * bf2f(bo[k]);
    y[(size_t)row * ldy + o] += p.scale[seg] * acc;
}
