// Causal grouped-query attention for many query rows (prefill), flash-attention
// style (Dao et al. 2022; Dao 2023, "FlashAttention-2"): scores never reach
// global memory; each warp keeps a running max and sum per query row (online
// softmax, Milakov & Gimelshein 2018) and rescales its output accumulators.
//
//   q    (rows, n_heads, HD)            f32 or bf16, row r at position start + r
//   k, v (n_kv, capacity, HD)           bf16 cache, positions 0..start+rows valid
//   out  (rows, n_heads, HD)            bf16 or f32
//   query head h reads KV head h / (n_heads / n_kv)
//
// Block = 4 warps = 64 query rows of one head (16 per warp); the block walks
// 64-key tiles of K and V through shared memory up to its last row's position.
// S = Q·Kᵀ and O += P·V run on the tensor cores (mma.sync m16n8k16, bf16 in,
// f32 accumulate); P never leaves registers: the accumulator fragment of S is
// the A fragment of P·V. Softmax runs in base 2 with Q pre-scaled by
// log2(e)/sqrt(HD). Rows past `rows` and keys past the block's last position are
// zero-filled and masked, so stale cache memory never reaches an output.
// grid (ceil(rows / 64), n_heads), block 128, static shared memory
// 64·(HD+8)·2 + HD·72·2 bytes (18 KiB for HD 64, 35 KiB for HD 128).
#include "palr_common.cuh"

#define FA_BM 64
#define FA_BN 64
#define FA_THREADS 128

template <int HD, typename TQ, typename TO>
__device__ __forceinline__ void flash_prefill(const TQ* __restrict__ q,
                                              const bf16_t* __restrict__ kc,
                                              const bf16_t* __restrict__ vc, TO* __restrict__ out,
                                              int rows, int start, int n_heads, int n_kv,
                                              int capacity, float scale_log2) {
    constexpr int KS = HD + 8;     // K tile row stride (elements): 16-byte rows, conflict-free reads
    constexpr int VS = FA_BN + 8;  // transposed V tile row stride
    constexpr int CH = HD / 8;     // 16-byte chunks per K/V row
    __shared__ __align__(16) bf16_t Ks[FA_BN * KS];
    __shared__ __align__(16) bf16_t Vt[HD * VS];

    const int mt = gridDim.x - 1 - blockIdx.x;  // the longest (latest) query tiles start first
    const int h = blockIdx.y;
    const int g = h / (n_heads / n_kv);
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int gid = lane >> 2, tig = lane & 3;
    const int m0 = mt * FA_BM;
    const int r_lo = m0 + warp * 16 + gid, r_hi = r_lo + 8;
    const int pos_lo = start + r_lo, pos_hi = start + r_hi;
    const int last_row = min(m0 + FA_BM, rows) - 1;
    const int kv_lim = start + last_row + 1;  // keys read by this block: 0..kv_lim-1
    const size_t qstride = (size_t)n_heads * HD;

    // This warp's 16 query rows as A fragments, scaled, in bf16.
    unsigned int qa[HD / 16][4];
#pragma unroll
    for (int kk = 0; kk < HD / 16; ++kk) {
        const int c0 = kk * 16 + 2 * tig, c1 = c0 + 8;
        const float2 zero = make_float2(0.0f, 0.0f);
        const TQ* ql = q + (size_t)r_lo * qstride + h * HD;
        const TQ* qh = q + (size_t)r_hi * qstride + h * HD;
        const float2 a0 = r_lo < rows ? load_f2(ql + c0) : zero;
        const float2 a1 = r_hi < rows ? load_f2(qh + c0) : zero;
        const float2 a2 = r_lo < rows ? load_f2(ql + c1) : zero;
        const float2 a3 = r_hi < rows ? load_f2(qh + c1) : zero;
        qa[kk][0] = pack_bf16x2(a0.x * scale_log2, a0.y * scale_log2);
        qa[kk][1] = pack_bf16x2(a1.x * scale_log2, a1.y * scale_log2);
        qa[kk][2] = pack_bf16x2(a2.x * scale_log2, a2.y * scale_log2);
        qa[kk][3] = pack_bf16x2(a3.x * scale_log2, a3.y * scale_log2);
    }

    float o[HD / 8][4];
#pragma unroll
    for (int dt = 0; dt < HD / 8; ++dt) o[dt][0] = o[dt][1] = o[dt][2] = o[dt][3] = 0.0f;
    float m_lo = -PALR_INF, m_hi = -PALR_INF, l_lo = 0.0f, l_hi = 0.0f;

    const bf16_t* kbase = kc + (size_t)g * capacity * HD;
    const bf16_t* vbase = vc + (size_t)g * capacity * HD;
    const int n_tiles = (kv_lim + FA_BN - 1) / FA_BN;

    for (int j = 0; j < n_tiles; ++j) {
        const int n0 = j * FA_BN;
        __syncthreads();  // every warp is done with the previous tile
        // K: a warp's lanes walk along rows (16-byte chunks), so global reads coalesce.
#pragma unroll
        for (int i = 0; i < FA_BN * CH / FA_THREADS; ++i) {
            const int c = tid + i * FA_THREADS;
            const int kr = c / CH, dc = (c % CH) * 8;
            uint4 k4 = make_uint4(0u, 0u, 0u, 0u);
            if (n0 + kr < kv_lim) k4 = *(const uint4*)(kbase + (size_t)(n0 + kr) * HD + dc);
            *(uint4*)(Ks + kr * KS + dc) = k4;
        }
        // V, transposed: a warp's lanes take consecutive keys of one 16-byte column chunk,
        // so each of the 8 two-byte stores of a lane lands in a word of its own row of Vt
        // beside its neighbours' (no bank conflicts; walking along rows instead put all
        // lanes of a warp in one bank).
#pragma unroll
        for (int i = 0; i < FA_BN * CH / FA_THREADS; ++i) {
            const int c = tid + i * FA_THREADS;
            const int kr = c % FA_BN, dc = (c / FA_BN) * 8;
            uint4 v4 = make_uint4(0u, 0u, 0u, 0u);
            if (n0 + kr < kv_lim) v4 = *(const uint4*)(vbase + (size_t)(n0 + kr) * HD + dc);
            const unsigned int w[4] = {v4.x, v4.y, v4.z, v4.w};
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                Vt[(dc + 2 * e) * VS + kr] = (bf16_t)(w[e] & 0xffffu);
                Vt[(dc + 2 * e + 1) * VS + kr] = (bf16_t)(w[e] >> 16);
            }
        }
        __syncthreads();

        // S (16 × 64 per warp) = Q · Kᵀ: B fragment (k = d, n = key) is K[key][d..d+1].
        float s[FA_BN / 8][4];
#pragma unroll
        for (int nt = 0; nt < FA_BN / 8; ++nt) {
            s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
            const bf16_t* krow = Ks + (nt * 8 + gid) * KS + 2 * tig;
#pragma unroll
            for (int kk = 0; kk < HD / 16; ++kk) {
                const unsigned int b0 = *(const unsigned int*)(krow + kk * 16);
                const unsigned int b1 = *(const unsigned int*)(krow + kk * 16 + 8);
                mma_bf16_16816(s[nt], qa[kk], b0, b1);
            }
        }

        // Causal mask, then the online softmax of rows r_lo (s[.][0..1]) and r_hi (s[.][2..3]).
        float mx_lo = -PALR_INF, mx_hi = -PALR_INF;
#pragma unroll
        for (int nt = 0; nt < FA_BN / 8; ++nt) {
            const int key = n0 + nt * 8 + 2 * tig;
            if (key > pos_lo) s[nt][0] = -PALR_INF;
            if (key + 1 > pos_lo) s[nt][1] = -PALR_INF;
            if (key > pos_hi) s[nt][2] = -PALR_INF;
            if (key + 1 > pos_hi) s[nt][3] = -PALR_INF;
            mx_lo = fmaxf(mx_lo, fmaxf(s[nt][0], s[nt][1]));
            mx_hi = fmaxf(mx_hi, fmaxf(s[nt][2], s[nt][3]));
        }
        // A row's 64 scores live in the 4 threads of a quad.
        mx_lo = fmaxf(mx_lo, __shfl_xor_sync(0xffffffffu, mx_lo, 1));
        mx_lo = fmaxf(mx_lo, __shfl_xor_sync(0xffffffffu, mx_lo, 2));
        mx_hi = fmaxf(mx_hi, __shfl_xor_sync(0xffffffffu, mx_hi, 1));
        mx_hi = fmaxf(mx_hi, __shfl_xor_sync(0xffffffffu, mx_hi, 2));
        const float new_lo = fmaxf(m_lo, mx_lo), new_hi = fmaxf(m_hi, mx_hi);
        // A row with no visible key yet keeps m = -inf; subtract 0 so exp2 gives 0, not NaN.
        const float base_lo = new_lo == -PALR_INF ? 0.0f : new_lo;
        const float base_hi = new_hi == -PALR_INF ? 0.0f : new_hi;
        const float alpha_lo = exp2f(m_lo - base_lo), alpha_hi = exp2f(m_hi - base_hi);
        m_lo = new_lo;
        m_hi = new_hi;
        float sum_lo = 0.0f, sum_hi = 0.0f;
#pragma unroll
        for (int nt = 0; nt < FA_BN / 8; ++nt) {
            s[nt][0] = exp2f(s[nt][0] - base_lo);
            s[nt][1] = exp2f(s[nt][1] - base_lo);
            s[nt][2] = exp2f(s[nt][2] - base_hi);
            s[nt][3] = exp2f(s[nt][3] - base_hi);
            sum_lo += s[nt][0] + s[nt][1];
            sum_hi += s[nt][2] + s[nt][3];
        }
        l_lo = l_lo * alpha_lo + sum_lo;  // per-thread partial; the quad's sum is taken at the end
        l_hi = l_hi * alpha_hi + sum_hi;
#pragma unroll
        for (int dt = 0; dt < HD / 8; ++dt) {
            o[dt][0] *= alpha_lo;
            o[dt][1] *= alpha_lo;
            o[dt][2] *= alpha_hi;
            o[dt][3] *= alpha_hi;
        }

        // O += P · V: keys 16·kk..16·kk+15 of P are S tiles 2kk and 2kk+1; the B fragment
        // (k = key, n = d) is Vt[d][key..key+1].
#pragma unroll
        for (int kk = 0; kk < FA_BN / 16; ++kk) {
            const unsigned int pa[4] = {
                pack_bf16x2(s[2 * kk][0], s[2 * kk][1]),
                pack_bf16x2(s[2 * kk][2], s[2 * kk][3]),
                pack_bf16x2(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                pack_bf16x2(s[2 * kk + 1][2], s[2 * kk + 1][3]),
            };
#pragma unroll
            for (int dt = 0; dt < HD / 8; ++dt) {
                const bf16_t* vrow = Vt + (dt * 8 + gid) * VS + kk * 16 + 2 * tig;
                const unsigned int b0 = *(const unsigned int*)vrow;
                const unsigned int b1 = *(const unsigned int*)(vrow + 8);
                mma_bf16_16816(o[dt], pa, b0, b1);
            }
        }
    }

    l_lo += __shfl_xor_sync(0xffffffffu, l_lo, 1);
    l_lo += __shfl_xor_sync(0xffffffffu, l_lo, 2);
    l_hi += __shfl_xor_sync(0xffffffffu, l_hi, 1);
    l_hi += __shfl_xor_sync(0xffffffffu, l_hi, 2);
    const float inv_lo = 1.0f / l_lo, inv_hi = 1.0f / l_hi;
#pragma unroll
    for (int dt = 0; dt < HD / 8; ++dt) {
        const int col = dt * 8 + 2 * tig;
        if (r_lo < rows)
            store_f2(out + (size_t)r_lo * qstride + h * HD + col, o[dt][0] * inv_lo, o[dt][1] * inv_lo);
        if (r_hi < rows)
            store_f2(out + (size_t)r_hi * qstride + h * HD + col, o[dt][2] * inv_hi, o[dt][3] * inv_hi);
    }
}

#define FLASH_ENTRY(NAME, HD, TQ, TO)                                                          \
    extern "C" __global__ void __launch_bounds__(FA_THREADS)                                    \
        NAME(const TQ* __restrict__ q, const bf16_t* __restrict__ kc,                           \
             const bf16_t* __restrict__ vc, TO* __restrict__ out, int rows, int start,          \
             int n_heads, int n_kv, int capacity, float scale_log2) {                           \
        flash_prefill<HD, TQ, TO>(q, kc, vc, out, rows, start, n_heads, n_kv, capacity,         \
                                  scale_log2);                                                  \
    }

FLASH_ENTRY(attn_prefill_hd64_f32_bf16, 64, float, bf16_t)
FLASH_ENTRY(attn_prefill_hd128_f32_bf16, 128, float, bf16_t)
FLASH_ENTRY(attn_prefill_hd64_bf16_bf16, 64, bf16_t, bf16_t)
FLASH_ENTRY(attn_prefill_hd128_bf16_bf16, 128, bf16_t, bf16_t)

// One warp multiplies a 16×16 A by a 16×8 B (both bf16, row-major in memory) into
// a 16×8 f32 D with the fragment layout above: a self-test of the layout the
// attention kernel relies on. grid 1, block 32.
extern "C" __global__ void mma_selftest(const bf16_t* __restrict__ a, const bf16_t* __restrict__ b,
                                        float* __restrict__ d) {
    const int lane = threadIdx.x & 31, gid = lane >> 2, tig = lane & 3;
    unsigned int af[4];
    af[0] = *(const unsigned int*)(a + gid * 16 + 2 * tig);
    af[1] = *(const unsigned int*)(a + (gid + 8) * 16 + 2 * tig);
    af[2] = *(const unsigned int*)(a + gid * 16 + 2 * tig + 8);
    af[3] = *(const unsigned int*)(a + (gid + 8) * 16 + 2 * tig + 8);
    // B is (16 k, 8 n) row-major: the pair (k, k+1) of column n is two loads.
    const unsigned int b0 = (unsigned int)b[(2 * tig) * 8 + gid] |
                            ((unsigned int)b[(2 * tig + 1) * 8 + gid] << 16);
    const unsigned int b1 = (unsigned int)b[(2 * tig + 8) * 8 + gid] |
                            ((unsigned int)b[(2 * tig + 9) * 8 + gid] << 16);
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    mma_bf16_16816(acc, af, b0, b1);
    d[gid * 8 + 2 * tig] = acc[0];
    d[gid * 8 + 2 * tig + 1] = acc[1];
    d[(gid + 8) * 8 + 2 * tig] = acc[2];
    d[(gid + 8) * 8 + 2 * tig + 1] = acc[3];
}
