// LoRA (Hu et al. 2021): a rank-r update of a frozen weight, W' = W + s·B·A with
// A (r, in) and B (out, r), s = alpha / r.
//
// Merged: lora_merge_bf16 folds s·B·A into the bf16 weight once (s < 0 unmerges,
// up to bf16 rounding).
// Unmerged, several adapters in one batch (Punica's SGMV, Chen et al. 2023):
// the rows of a batch form segments, each with its own adapter (or none), and
//     shrink: t[row, :] = x[row, :] · Aᵀ          (rank values per row, f32, in
//             partial sums per 512-column chunk of x, so one row fills many blocks)
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

#define LORA_CHUNK 512  // input columns per shrink block
#define LORA_RT 16       // rows per block (shrink and expand)
#define LORA_KB 16       // ranks a shrink warp keeps in flight

__device__ __forceinline__ float dot8_bf16(uint4 a, uint4 b) {
    return bf16x2_lo(a.x) * bf16x2_lo(b.x) + bf16x2_hi(a.x) * bf16x2_hi(b.x) +
           bf16x2_lo(a.y) * bf16x2_lo(b.y) + bf16x2_hi(a.y) * bf16x2_hi(b.y) +
           bf16x2_lo(a.z) * bf16x2_lo(b.z) + bf16x2_hi(a.z) * bf16x2_hi(b.z) +
           bf16x2_lo(a.w) * bf16x2_lo(b.w) + bf16x2_hi(a.w) * bf16x2_hi(b.w);
}

// Shrink, split over the input: block (c, r) takes columns c·512 .. and rows
// row0 + 16r .. +15 of this call and writes, for each row with an adapter, the
// partial products of that column chunk
//     tp[c][row][k] = x[row, chunk] · a[k, chunk]        for k < the segment's rank
// (the expand sums the chunks). One warp per row: its slice of x stays in
// registers while 16 ranks' loads of A are in flight.
// x (rows_total, in) bf16 with row stride ldx; tp (gridDim.x, rows_total, max_rank) f32.
// grid (ceil(in / 512), ceil(rows of this call / 16)), block 256.
extern "C" __global__ void __launch_bounds__(256)
    lora_shrink_bf16(const bf16_t* __restrict__ x, int ldx, const __grid_constant__ LoraBatch p,
                     int row0, float* __restrict__ tp, int in_f, int max_rank, int rows_total) {
    const int c0 = blockIdx.x * LORA_CHUNK, c1 = min(c0 + LORA_CHUNK, in_f);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const bool vec = ((in_f | ldx) & 7) == 0;  // 16-byte loads stay aligned and inside rows
    for (int rr = warp; rr < LORA_RT; rr += 8) {
        const int row = row0 + blockIdx.y * LORA_RT + rr;
        const int seg = lora_segment(p, row);  // -1 past this call's rows, too
        if (seg < 0) continue;
        const bf16_t* a = (const bf16_t*)p.a[seg];
        const int rank = p.rank[seg];
        const bf16_t* xr = x + (size_t)row * ldx;
        float* out = tp + ((size_t)blockIdx.x * rows_total + row) * max_rank;
        if (vec) {
            uint4 xv[LORA_CHUNK / 256];
#pragma unroll
            for (int it = 0; it < LORA_CHUNK / 256; ++it) {
                const int col = c0 + 256 * it + 8 * lane;
                xv[it] = col < c1 ? *(const uint4*)(xr + col) : make_uint4(0u, 0u, 0u, 0u);
            }
            for (int kb = 0; kb < rank; kb += LORA_KB) {
                float d[LORA_KB];
#pragma unroll
                for (int kk = 0; kk < LORA_KB; ++kk) {
                    d[kk] = 0.0f;
                    if (kb + kk < rank) {
                        const bf16_t* ak = a + (size_t)(kb + kk) * in_f;
#pragma unroll
                        for (int it = 0; it < LORA_CHUNK / 256; ++it) {
                            const int col = c0 + 256 * it + 8 * lane;
                            if (col < c1) d[kk] += dot8_bf16(xv[it], *(const uint4*)(ak + col));
                        }
                    }
                }
#pragma unroll
                for (int kk = 0; kk < LORA_KB; ++kk) {
                    if (kb + kk < rank) {  // the same in every lane
                        const float v = warp_sum(d[kk]);
                        if (lane == 0) out[kb + kk] = v;
                    }
                }
            }
        } else {
            for (int k = 0; k < rank; ++k) {
                const bf16_t* ak = a + (size_t)k * in_f;
                float dot = 0.0f;
                for (int i = c0 + lane; i < c1; i += 32) dot += bf2f(xr[i]) * bf2f(ak[i]);
                dot = warp_sum(dot);
                if (lane == 0) out[k] = dot;
            }
        }
    }
}

// Expand: y[row, o] += scale · t[row, :] · b[o, :] with t[row, k] = Σ_c tp[c][row][k]
// (n_splits chunks). Block (x, r): outputs 256x .. of rows row0 + 16r .. +15; a
// thread's row of B (rank values) is read from L1 after the block's first row.
// y (rows_total, out) f32 with row stride ldy. grid (ceil(out / 256), ceil(rows / 16)),
// block 256; max_rank <= 256.
extern "C" __global__ void __launch_bounds__(256)
    lora_expand_f32(const float* __restrict__ tp, int n_splits, int rows_total,
                    const __grid_constant__ LoraBatch p, int row0, float* __restrict__ y,
                    int ldy, int out_f, int max_rank) {
    __shared__ float ts[LORA_RT * 256];
    const int r_begin = row0 + blockIdx.y * LORA_RT;
    for (int i = threadIdx.x; i < LORA_RT * max_rank; i += blockDim.x) {
        const int rr = i / max_rank, k = i - rr * max_rank;
        const int seg = lora_segment(p, r_begin + rr);
        if (seg < 0 || k >= p.rank[seg]) continue;  // never read below
        // Unrolled so the chunks' loads are in flight together (a chain of dependent
        // loads here cost ~0.5 µs per chunk: 22 chunks for an 11008-wide input).
        float sum = 0.0f;
#pragma unroll 8
        for (int c = 0; c < n_splits; ++c)
            sum += tp[((size_t)c * rows_total + r_begin + rr) * max_rank + k];
        ts[i] = sum;
    }
    __syncthreads();
    const int o = blockIdx.x * blockDim.x + threadIdx.x;
    if (o >= out_f) return;
    for (int rr = 0; rr < LORA_RT; ++rr) {
        const int row = r_begin + rr;
        const int seg = lora_segment(p, row);
        if (seg < 0) continue;
        const int rank = p.rank[seg];
        const bf16_t* bo = (const bf16_t*)p.b[seg] + (size_t)o * rank;
        const float* t = ts + rr * max_rank;
        float acc = 0.0f;
        if ((rank & 7) == 0) {
            for (int k = 0; k < rank; k += 8) {
                const uint4 u = *(const uint4*)(bo + k);
                acc += t[k] * bf16x2_lo(u.x) + t[k + 1] * bf16x2_hi(u.x) + t[k + 2] * bf16x2_lo(u.y) +
                       t[k + 3] * bf16x2_hi(u.y) + t[k + 4] * bf16x2_lo(u.z) + t[k + 5] * bf16x2_hi(u.z) +
                       t[k + 6] * bf16x2_lo(u.w) + t[k + 7] * bf16x2_hi(u.w);
            }
        } else {
            for (int k = 0; k < rank; ++k) acc += t[k] * bf2f(bo[k]);
        }
        y[(size_t)row * ldy + o] += p.scale[seg] * acc;
    }
}
