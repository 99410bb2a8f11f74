// A CUDA execution model on CPU threads, for checking the logic of
// kernels/*.cu without a GPU: every thread of a block is an OS thread,
// __syncthreads is a barrier of the block, warp shuffles and mma.sync exchange
// values through the warp's shared slots between two barriers of the warp.
// Blocks run one after another, so `__shared__` (mapped to `static`) is shared
// by the threads of the running block. Threads that return early drop out of
// later barriers, as exited threads do on the GPU.
//
// It checks indexing, masking, synchronisation and arithmetic; it says nothing
// about speed, and the mma fragment map it uses is the one common.cuh states
// (the GPU's own is checked by mma_selftest on a GPU).
#pragma once
#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __grid_constant__
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
struct float2 {
    float x, y;
};
struct float4 {
    float x, y, z, w;
};
struct uint2 {
    unsigned int x, y;
};
struct alignas(16) uint4 {
    unsigned int x, y, z, w;
};
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }

inline float __uint_as_float(unsigned int u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline float __int_as_float(int i) {
    float f;
    std::memcpy(&f, &i, 4);
    return f;
}
inline unsigned int __float_as_uint(float f) {
    unsigned int u;
    std::memcpy(&u, &f, 4);
    return u;
}
inline float __expf(float x) { return std::exp(x); }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline int min(int a, int b) { return a < b ? a : b; }
#include <math.h>
using std::exp2f;
using std::fmaxf;

inline thread_local dim3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;

struct EmuWarp {
    std::barrier<> bar{32};
    float f[32];
    int i[32];
    unsigned int a[32][4];
    unsigned int b[32][2];
};

struct EmuBlock {
    std::unique_ptr<std::barrier<>> bar;
    std::vector<std::unique_ptr<EmuWarp>> warps;
};

inline thread_local EmuBlock* t_block = nullptr;
inline thread_local EmuWarp* t_warp = nullptr;
inline std::vector<unsigned char> g_dyn_smem;

inline float* emu_dyn_smem() { return reinterpret_cast<float*>(g_dyn_smem.data()); }

inline void __syncthreads() { t_block->bar->arrive_and_wait(); }

inline float __shfl_xor_sync(unsigned, float v, int o) {
    const int l = threadIdx.x & 31;
    t_warp->f[l] = v;
    t_warp->bar.arrive_and_wait();
    const float r = t_warp->f[l ^ o];
    t_warp->bar.arrive_and_wait();
    return r;
}

inline int __shfl_xor_sync(unsigned, int v, int o) {
    const int l = threadIdx.x & 31;
    t_warp->i[l] = v;
    t_warp->bar.arrive_and_wait();
    const int r = t_warp->i[l ^ o];
    t_warp->bar.arrive_and_wait();
    return r;
}

// D += A·B for one warp, A 16×16 and B 16×8 rebuilt from the lanes' fragments.
inline void emu_mma_bf16_16816(float (&d)[4], const unsigned int (&a)[4], unsigned int b0,
                               unsigned int b1) {
    const int l = threadIdx.x & 31;
    for (int k = 0; k < 4; ++k) t_warp->a[l][k] = a[k];
    t_warp->b[l][0] = b0;
    t_warp->b[l][1] = b1;
    t_warp->bar.arrive_and_wait();
    float A[16][16], B[16][8];
    auto lo = [](unsigned v) { return __uint_as_float(v << 16); };
    auto hi = [](unsigned v) { return __uint_as_float(v & 0xffff0000u); };
    for (int L = 0; L < 32; ++L) {
        const int g = L >> 2, t = L & 3;
        const unsigned* f = t_warp->a[L];
        A[g][2 * t] = lo(f[0]);
        A[g][2 * t + 1] = hi(f[0]);
        A[g + 8][2 * t] = lo(f[1]);
        A[g + 8][2 * t + 1] = hi(f[1]);
        A[g][2 * t + 8] = lo(f[2]);
        A[g][2 * t + 9] = hi(f[2]);
        A[g + 8][2 * t + 8] = lo(f[3]);
        A[g + 8][2 * t + 9] = hi(f[3]);
        B[2 * t][g] = lo(t_warp->b[L][0]);
        B[2 * t + 1][g] = hi(t_warp->b[L][0]);
        B[2 * t + 8][g] = lo(t_warp->b[L][1]);
        B[2 * t + 9][g] = hi(t_warp->b[L][1]);
    }
    const int g = l >> 2, t = l & 3;
    for (int k = 0; k < 16; ++k) {
        d[0] += A[g][k] * B[k][2 * t];
        d[1] += A[g][k] * B[k][2 * t + 1];
        d[2] += A[g + 8][k] * B[k][2 * t];
        d[3] += A[g + 8][k] * B[k][2 * t + 1];
    }
    t_warp->bar.arrive_and_wait();
}

// Runs `kernel()` for every thread of every block of `grid`, `block` threads per
// block (a multiple of 32), with `smem` bytes of dynamic shared memory filled
// with 0xFF (NaN as floats) so reads of unwritten shared memory show. The
// `block` threads are made once and walk the blocks in order; each block gets
// fresh barriers (a thread that returned early has dropped out of the old ones).
template <class F>
void emu_launch(dim3 grid, unsigned block, size_t smem, F kernel) {
    gridDim = grid;
    blockDim = dim3{block, 1, 1};
    const unsigned long long nblocks = (unsigned long long)grid.x * grid.y * grid.z;
    std::unique_ptr<EmuBlock> cur;
    auto fresh = [&] {
        cur = std::make_unique<EmuBlock>();
        cur->bar = std::make_unique<std::barrier<>>(block);
        for (unsigned w = 0; w < block / 32; ++w) cur->warps.push_back(std::make_unique<EmuWarp>());
        g_dyn_smem.assign(smem, 0xFF);  // exact size: AddressSanitizer flags any overrun
    };
    fresh();
    unsigned long long b = 0;
    auto advance = [&]() noexcept {
        ++b;
        if (b < nblocks) fresh();
    };
    std::barrier<decltype(advance)> next(block, advance);
    std::vector<std::thread> threads;
    threads.reserve(block);
    for (unsigned t = 0; t < block; ++t) {
        threads.emplace_back([&, t] {
            while (b < nblocks) {
                const unsigned long long i = b;
                threadIdx = dim3{t, 0, 0};
                blockIdx = dim3{(unsigned)(i % grid.x), (unsigned)(i / grid.x % grid.y),
                                (unsigned)(i / grid.x / grid.y)};
                t_block = cur.get();
                t_warp = cur->warps[t / 32].get();
                kernel();
                t_warp->bar.arrive_and_drop();
                t_block->bar->arrive_and_drop();
                next.arrive_and_wait();
            }
        });
    }
    for (auto& th : threads) th.join();
}
