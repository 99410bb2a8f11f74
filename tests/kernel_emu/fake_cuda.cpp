// A fake CUDA driver (libcuda.so.1) and cuBLAS (libcublas.so.13,
// libcublasLt.so.13) for machines without a GPU: "device" memory is host memory,
// every launch runs the emulated kernel (emu.hpp + the embedded kernels/*.cu) at
// once, and cublasGemmEx is a host loop. Only the entry points palr (through
// cudarc) calls are here. With PALR_CUDA_LIB_DIR pointing at these libraries
// (and at a real NVRTC), the unchanged CUDA backend and its GPU tests run on the
// CPU: that checks the host side of every launch (grids, pointer offsets,
// argument types — each argument is read with the size the kernel's C++
// signature gives it, as the driver does from the cubin), the split plan, the
// buffer types and the cuBLAS call, slowly. Nothing here measures speed.
//
// Build (one source, three libraries, see scripts/gpu/fake-gpu.sh):
//   c++ -std=c++20 -shared -fPIC -DFAKE_DRIVER -Wl,-soname,libcuda.so.1 ...
//   c++ -std=c++20 -shared -fPIC -DFAKE_CUBLAS -Wl,-soname,libcublas.so.13 ...
//   c++ -std=c++20 -shared -fPIC -DFAKE_CUBLASLT -Wl,-soname,libcublasLt.so.13 ...
#include <algorithm>
#include <chrono>
#include <mutex>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>

typedef int CUresult;
enum : CUresult {
    CUDA_SUCCESS = 0,
    CUDA_ERROR_INVALID_VALUE = 1,
    CUDA_ERROR_OUT_OF_MEMORY = 2,
    CUDA_ERROR_INVALID_DEVICE = 101,
    CUDA_ERROR_NOT_FOUND = 500,
};

#ifdef FAKE_DRIVER
#include "kernels_all.inc"

typedef int CUdevice;
typedef void* CUcontext;
typedef void* CUstream;
typedef unsigned long long CUdeviceptr;
typedef void* CUmodule;
typedef void* CUfunction;
typedef void* CUevent;

namespace {

using Entry = std::function<void(void**, dim3, unsigned, size_t)>;

template <class T>
T read_arg(void* p) {
    T v;
    std::memcpy(&v, p, sizeof(T));
    return v;
}

template <class... A, size_t... I>
Entry entry_impl(void (*f)(A...), std::index_sequence<I...>) {
    return [f](void** params, dim3 grid, unsigned block, size_t smem) {
        std::tuple<std::remove_cv_t<std::remove_reference_t<A>>...> args{
            read_arg<std::remove_cv_t<std::remove_reference_t<A>>>(params[I])...};
        emu_launch(grid, block, smem, [&] { std::apply(f, args); });
    };
}

template <class... A>
Entry entry(void (*f)(A...)) {
    return entry_impl(f, std::index_sequence_for<A...>{});
}

#define E(name) {#name, entry(name)}

std::map<std::string, Entry>& kernels() {
    static std::map<std::string, Entry> k = {
        E(embed_bf16_f32), E(add_f32), E(cast_f32_bf16), E(cast_bf16_f32), E(bias_add_f32),
        E(silu_mul_f32_bf16), E(kv_store_f32_bf16), E(kv_store_bf16_bf16), E(fill_f32), E(fill_bf16),
        E(fill_uniform_bf16), E(fill_uniform_f32), E(rmsnorm_f32_bf16), E(add_rmsnorm_f32_bf16),
        E(rope_f32), E(log_softmax_f32), E(token_logprob_f32), E(argmax_f32),
        E(attn_prefill_hd64_f32_bf16), E(attn_prefill_hd128_f32_bf16), E(attn_prefill_hd64_bf16_bf16),
        E(attn_prefill_hd128_bf16_bf16), E(mma_selftest), E(attn_decode_hd32_f32), E(attn_decode_hd64_f32),
        E(attn_decode_hd128_f32), E(attn_decode_hd256_f32), E(attn_decode_hd32_bf16), E(attn_decode_hd64_bf16),
        E(attn_decode_hd128_bf16), E(attn_decode_hd256_bf16), E(attn_merge_bf16), E(lora_merge_bf16),
        E(lora_shrink_bf16), E(lora_expand_f32),
    };
    return k;
}

int g_ctx_token;
thread_local CUcontext t_current = nullptr;
std::mutex g_launch;  // one launch at a time: emu.hpp's launch state is global

double now_ms() {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

}  // namespace

extern "C" {
CUresult cuInit(unsigned) { return CUDA_SUCCESS; }
CUresult cuDriverGetVersion(int* v) {
    *v = 13000;
    return CUDA_SUCCESS;
}
CUresult cuDeviceGetCount(int* n) {
    *n = 1;
    return CUDA_SUCCESS;
}
CUresult cuDeviceGet(CUdevice* d, int ordinal) {
    if (ordinal != 0) return CUDA_ERROR_INVALID_DEVICE;
    *d = 0;
    return CUDA_SUCCESS;
}
CUresult cuDeviceGetAttribute(int* v, int attrib, CUdevice) {
    switch (attrib) {
        case 75: *v = 9; break;                  // compute capability major
        case 76: *v = 0; break;                  // minor
        case 16: *v = 132; break;                // multiprocessors
        case 38: *v = 50 << 20; break;           // L2 bytes
        case 115: *v = 1; break;                 // memory pools supported
        case 97: *v = 227 * 1024; break;         // shared memory per block (opt-in)
        default: *v = 0;
    }
    return CUDA_SUCCESS;
}
CUresult cuDeviceGetName(char* name, int len, CUdevice) {
    std::snprintf(name, len, "fake CUDA device (CPU emulation)");
    return CUDA_SUCCESS;
}
CUresult cuDeviceTotalMem_v2(size_t* bytes, CUdevice) {
    *bytes = 80ull << 30;
    return CUDA_SUCCESS;
}
CUresult cuDevicePrimaryCtxRetain(CUcontext* c, CUdevice) {
    *c = &g_ctx_token;
    return CUDA_SUCCESS;
}
CUresult cuDevicePrimaryCtxRelease_v2(CUdevice) { return CUDA_SUCCESS; }
CUresult cuCtxSetCurrent(CUcontext c) {
    t_current = c;
    return CUDA_SUCCESS;
}
CUresult cuCtxGetCurrent(CUcontext* c) {
    *c = t_current;
    return CUDA_SUCCESS;
}
CUresult cuCtxSynchronize() { return CUDA_SUCCESS; }
CUresult cuStreamCreate(CUstream* s, unsigned) {
    *s = new int(0);
    return CUDA_SUCCESS;
}
CUresult cuStreamCreateWithPriority(CUstream* s, unsigned, int) { return cuStreamCreate(s, 0); }
CUresult cuStreamDestroy_v2(CUstream s) {
    delete static_cast<int*>(s);
    return CUDA_SUCCESS;
}
CUresult cuStreamSynchronize(CUstream) { return CUDA_SUCCESS; }
CUresult cuStreamWaitEvent(CUstream, CUevent, unsigned) { return CUDA_SUCCESS; }
CUresult cuMemAlloc_v2(CUdeviceptr* p, size_t n) {
    void* m = std::aligned_alloc(256, ((n + 255) / 256) * 256 + 256);
    if (!m) return CUDA_ERROR_OUT_OF_MEMORY;
    *p = (CUdeviceptr)m;
    return CUDA_SUCCESS;
}
CUresult cuMemAllocAsync(CUdeviceptr* p, size_t n, CUstream) { return cuMemAlloc_v2(p, n); }
CUresult cuMemFree_v2(CUdeviceptr p) {
    std::free((void*)p);
    return CUDA_SUCCESS;
}
CUresult cuMemFreeAsync(CUdeviceptr p, CUstream) { return cuMemFree_v2(p); }
CUresult cuMemsetD8Async(CUdeviceptr p, unsigned char v, size_t n, CUstream) {
    std::memset((void*)p, v, n);
    return CUDA_SUCCESS;
}
CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr d, const void* s, size_t n, CUstream) {
    std::memcpy((void*)d, s, n);
    return CUDA_SUCCESS;
}
CUresult cuMemcpyDtoHAsync_v2(void* d, CUdeviceptr s, size_t n, CUstream) {
    std::memcpy(d, (const void*)s, n);
    return CUDA_SUCCESS;
}
CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr d, CUdeviceptr s, size_t n, CUstream) {
    std::memmove((void*)d, (const void*)s, n);
    return CUDA_SUCCESS;
}
CUresult cuModuleLoadData(CUmodule* m, const void*) {
    *m = &g_ctx_token;
    return CUDA_SUCCESS;
}
CUresult cuModuleUnload(CUmodule) { return CUDA_SUCCESS; }
CUresult cuModuleGetFunction(CUfunction* f, CUmodule, const char* name) {
    auto it = kernels().find(name);
    if (it == kernels().end()) {
        std::fprintf(stderr, "fake CUDA: no kernel named %s\n", name);
        return CUDA_ERROR_NOT_FOUND;
    }
    *f = &it->second;
    return CUDA_SUCCESS;
}
CUresult cuLaunchKernel(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                        unsigned bz, unsigned smem, CUstream, void** params, void** extra) {
    if (by != 1 || bz != 1 || bx % 32 != 0 || bx > 1024 || extra || gx == 0 || gy == 0 || gz == 0 ||
        gy > 65535 || gz > 65535 || smem > 48 * 1024) {
        std::fprintf(stderr, "fake CUDA: unsupported launch grid (%u,%u,%u) block (%u,%u,%u) smem %u\n", gx,
                     gy, gz, bx, by, bz, smem);
        return CUDA_ERROR_INVALID_VALUE;
    }
    std::lock_guard<std::mutex> lock(g_launch);
    (*static_cast<Entry*>(f))(params, dim3{gx, gy, gz}, bx, smem);
    return CUDA_SUCCESS;
}
CUresult cuEventCreate(CUevent* e, unsigned) {
    *e = new double(0);
    return CUDA_SUCCESS;
}
CUresult cuEventRecord(CUevent e, CUstream) {
    *static_cast<double*>(e) = now_ms();
    return CUDA_SUCCESS;
}
CUresult cuEventSynchronize(CUevent) { return CUDA_SUCCESS; }
CUresult cuEventQuery(CUevent) { return CUDA_SUCCESS; }
CUresult cuEventElapsedTime(float* ms, CUevent a, CUevent b) {
    *ms = (float)(*static_cast<double*>(b) - *static_cast<double*>(a));
    return CUDA_SUCCESS;
}
CUresult cuEventElapsedTime_v2(float* ms, CUevent a, CUevent b) { return cuEventElapsedTime(ms, a, b); }
CUresult cuEventDestroy_v2(CUevent e) {
    delete static_cast<double*>(e);
    return CUDA_SUCCESS;
}
// NVRTC opens libcuda.so.1 itself and asks for the driver's private tables;
// refusing makes it go on without them.
CUresult cuGetExportTable(const void** table, const void*) {
    *table = nullptr;
    return 801;  // CUDA_ERROR_NOT_SUPPORTED
}
CUresult cuGetErrorString(CUresult, const char** s) {
    *s = "fake CUDA error";
    return CUDA_SUCCESS;
}
CUresult cuGetErrorName(CUresult, const char** s) {
    *s = "CUDA_ERROR_FAKE";
    return CUDA_SUCCESS;
}
}
#endif  // FAKE_DRIVER

#ifdef FAKE_CUBLAS
#include <cmath>
#include <cstring>
#include <vector>

extern "C" {
int cublasCreate_v2(void** h) {
    *h = new int(0);
    return 0;
}
int cublasDestroy_v2(void* h) {
    delete static_cast<int*>(h);
    return 0;
}
int cublasSetStream_v2(void*, void*) { return 0; }

// C (m×n) = alpha·op(A)·op(B) + beta·C, column-major; A, B bf16 (14) or f32 (0),
// C f32 or bf16, f32 accumulation (compute type 32F).
int cublasGemmEx(void*, int transa, int transb, int m, int n, int k, const void* alpha, const void* A,
                 int atype, int lda, const void* B, int btype, int ldb, const void* beta, void* C, int ctype,
                 int ldc, int /*compute*/, int /*algo*/) {
    auto load = [](const void* p, int type, size_t i) -> float {
        if (type == 0) return static_cast<const float*>(p)[i];
        unsigned int u = (unsigned int)static_cast<const unsigned short*>(p)[i] << 16;
        float f;
        std::memcpy(&f, &u, 4);
        return f;
    };
    if ((atype != 0 && atype != 14) || (btype != 0 && btype != 14) || (ctype != 0 && ctype != 14)) return 7;
    const float al = *static_cast<const float*>(alpha), be = *static_cast<const float*>(beta);
    auto a_at = [&](int i, int l) {
        return transa ? load(A, atype, (size_t)l + (size_t)i * lda) : load(A, atype, (size_t)i + (size_t)l * lda);
    };
    auto b_at = [&](int l, int j) {
        return transb ? load(B, btype, (size_t)j + (size_t)l * ldb) : load(B, btype, (size_t)l + (size_t)j * ldb);
    };
    unsigned nt = std::max(1u, std::min(8u, std::thread::hardware_concurrency()));
    std::vector<std::thread> ts;
    for (unsigned t = 0; t < nt; ++t)
        ts.emplace_back([&, t] {
            std::vector<float> arow(k), bcol(k);
            for (int j = (int)t; j < n; j += (int)nt) {
                for (int l = 0; l < k; ++l) bcol[l] = b_at(l, j);
                for (int i = 0; i < m; ++i) {
                    float acc = 0;
                    for (int l = 0; l < k; ++l) acc += a_at(i, l) * bcol[l];
                    const size_t ci = (size_t)i + (size_t)j * ldc;
                    if (ctype == 0) {
                        float* c = static_cast<float*>(C) + ci;
                        *c = al * acc + (be != 0 ? be * *c : 0.0f);
                    } else {
                        unsigned short* c = static_cast<unsigned short*>(C) + ci;
                        float v = al * acc + (be != 0 ? be * load(C, 14, ci) : 0.0f);
                        unsigned int u;
                        std::memcpy(&u, &v, 4);
                        u += 0x7fffu + ((u >> 16) & 1u);
                        *c = (unsigned short)(u >> 16);
                    }
                }
            }
        });
    for (auto& th : ts) th.join();
    return 0;
}
}
#endif  // FAKE_CUBLAS

#ifdef FAKE_CUBLASLT
extern "C" int cublasLtGetVersion() { return 130000; }
#endif
