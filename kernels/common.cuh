// palr_common.cuh: helpers shared by every palr kernel.
//
// Handed to NVRTC as an in-memory header (see src/engine/cuda/nvrtc.rs), so the
// kernels need no CUDA toolkit headers at run time: bf16 values are raw 16-bit
// patterns (`bf16_t`) converted with PTX `cvt` (sm_80+), and tensor-core products
// go through inline PTX `mma.sync`.
//
// Layout conventions (every kernel):
//   activations  (rows, width) row-major, f32 or bf16
//   weights      (out_features, in_features) row-major, bf16
//   KV cache     (n_kv_heads, capacity, head_dim) per layer, bf16
#pragma once

typedef unsigned short bf16_t;

#define PALR_INF __int_as_float(0x7f800000)

__device__ __forceinline__ float bf2f(bf16_t h) {
    return __uint_as_float(((unsigned int)h) << 16);
}

// Round to nearest even.
__device__ __forceinline__ bf16_t f2bf(float f) {
    unsigned short r;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r) : "f"(f));
    return r;
}

// Two floats into one register: `lo` in bits 0..15, `hi` in bits 16..31
// (the element order of a bf16 pair in memory and in mma fragments).
__device__ __forceinline__ unsigned int pack_bf16x2(float lo, float hi) {
    unsigned int r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

__device__ __forceinline__ float bf16x2_lo(unsigned int v) { return __uint_as_float(v << 16); }
__device__ __forceinline__ float bf16x2_hi(unsigned int v) { return __uint_as_float(v & 0xffff0000u); }

// Loads and stores that widen / narrow by element type.
__device__ __forceinline__ float load_f(const float* p) { return *p; }
__device__ __forceinline__ float load_f(const bf16_t* p) { return bf2f(*p); }
__device__ __forceinline__ void store_f(float* p, float v) { *p = v; }
__device__ __forceinline__ void store_f(bf16_t* p, float v) { *p = f2bf(v); }

// Two consecutive elements (the pointer is 8-byte aligned for f32, 4-byte for bf16).
__device__ __forceinline__ float2 load_f2(const float* p) { return *(const float2*)p; }
__device__ __forceinline__ float2 load_f2(const bf16_t* p) {
    unsigned int v = *(const unsigned int*)p;
    return make_float2(bf16x2_lo(v), bf16x2_hi(v));
}
__device__ __forceinline__ void store_f2(float* p, float a, float b) { *(float2*)p = make_float2(a, b); }
__device__ __forceinline__ void store_f2(bf16_t* p, float a, float b) {
    *(unsigned int*)p = pack_bf16x2(a, b);
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the whole block (blockDim.x a multiple of 32, at most 1024); every
// thread gets the result. `scratch` holds 32 floats of shared memory.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int warps = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();  // scratch may still be read by a previous call
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : 0.0f;
    return warp_sum(v);
}

__device__ __forceinline__ float block_max(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int warps = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : -PALR_INF;
    return warp_max(v);
}

// D += A·B on the tensor cores: A 16×16 (row-major fragments), B 16×8 (column
// fragments), bf16 inputs, f32 accumulators. Fragment ownership (PTX ISA,
// "Matrix Fragments for mma.m16n8k16"), with g = lane / 4 and t = lane % 4:
//   a[0] = A[g][2t..2t+1]     a[1] = A[g+8][2t..2t+1]
//   a[2] = A[g][2t+8..2t+9]   a[3] = A[g+8][2t+8..2t+9]
//   b[0] = B[2t..2t+1][g]     b[1] = B[2t+8..2t+9][g]
//   d[0..1] = D[g][2t..2t+1]  d[2..3] = D[g+8][2t..2t+1]
// (lower-indexed element of each pair in the low 16 bits).
__device__ __forceinline__ void mma_bf16_16816(float (&d)[4], const unsigned int (&a)[4],
                                               unsigned int b0, unsigned int b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
