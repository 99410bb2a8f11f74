// Host stand-in for kernels/common.cuh: the same helpers, so the unchanged
// kernels/*.cu compile with a C++ compiler and run on CPU threads (emu.hpp).
// bf16 rounding is round-to-nearest-even like PTX cvt.rn; mma.sync is computed
// from the fragments the 32 lanes hold, with the fragment map common.cuh states.
#pragma once
#include "emu.hpp"

typedef unsigned short bf16_t;

#define PALR_INF __int_as_float(0x7f800000)

inline float bf2f(bf16_t h) { return __uint_as_float(((unsigned int)h) << 16); }

inline bf16_t f2bf(float f) {
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16_t)((u >> 16) | 0x40);  // NaN stays NaN
    u += 0x7fffu + ((u >> 16) & 1u);
    return (bf16_t)(u >> 16);
}

inline unsigned int pack_bf16x2(float lo, float hi) {
    return (unsigned int)f2bf(lo) | ((unsigned int)f2bf(hi) << 16);
}

inline float bf16x2_lo(unsigned int v) { return __uint_as_float(v << 16); }
inline float bf16x2_hi(unsigned int v) { return __uint_as_float(v & 0xffff0000u); }

inline float load_f(const float* p) { return *p; }
inline float load_f(const bf16_t* p) { return bf2f(*p); }
inline void store_f(float* p, float v) { *p = v; }
inline void store_f(bf16_t* p, float v) { *p = f2bf(v); }
inline float2 load_f2(const float* p) { return make_float2(p[0], p[1]); }
inline float2 load_f2(const bf16_t* p) { return make_float2(bf2f(p[0]), bf2f(p[1])); }
inline void store_f2(float* p, float a, float b) { p[0] = a; p[1] = b; }
inline void store_f2(bf16_t* p, float a, float b) {
    p[0] = f2bf(a);
    p[1] = f2bf(b);
}

inline float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

inline float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

inline float block_sum(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int warps = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : 0.0f;
    return warp_sum(v);
}

inline float block_max(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int warps = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : -PALR_INF;
    return warp_max(v);
}

inline void mma_bf16_16816(float (&d)[4], const unsigned int (&a)[4], unsigned int b0,
                           unsigned int b1) {
    emu_mma_bf16_16816(d, a, b0, b1);
}
