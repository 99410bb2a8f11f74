// Causal grouped-query attention for few query rows (decode), split over the KV
// sequence ("flash-decoding", Dao et al. 2023): a block handles one query row, one
// KV head (all the query heads that share it, so K and V are read once) and one
// chunk of keys; a second kernel merges the chunks' partial results:
//     m_s = max score, l_s = Σ exp2(score - m_s), o_s = Σ exp2(score - m_s) · v
//     out = Σ_s 2^(m_s - M) o_s / Σ_s 2^(m_s - M) l_s,   M = max_s m_s
// With one chunk the first kernel writes the normalised output itself. It is
// also the general fallback for head sizes the tensor-core prefill kernel lacks.
//
//   q    (rows, n_heads, HD) f32 or bf16, row r at position start + r (keys 0..start+r)
//   k, v (n_kv, capacity, HD) bf16
//   out  (rows, n_heads, HD) bf16
//   part_o  (rows, n_heads, n_splits, HD) f32, part_ml (rows, n_heads, n_splits, 2) f32
// grid (n_kv, n_splits, rows), block 128, dynamic shared memory (floats):
//   group·HD (q) + group·chunk (scores) + 2·group (m, l).
//   HD ∈ {32, 64, 128, 256}, group = n_heads / n_kv ≤ 16.
#include "palr_common.cuh"

#define DEC_THREADS 128
#define DEC_MAX_GROUP 16

template <int HD, typename TQ>
__device__ __forceinline__ void attn_split(const TQ* __restrict__ q, const bf16_t* __restrict__ kc,
                                           const bf16_t* __restrict__ vc, bf16_t* __restrict__ out,
                                           float* __restrict__ part_o,
                                           float* __restrict__ part_ml, int start, int n_heads,
                                           int n_kv, int capacity, int chunk, int n_splits,
                                           float scale_log2) {
    constexpr int QUADS = HD / 4;
    constexpr int KL = DEC_THREADS / QUADS;  // key lanes in the P·V phase (2..16, within a warp)
    extern __shared__ float smem[];
    const int g = blockIdx.x, split = blockIdx.y, r = blockIdx.z;
    const int group = n_heads / n_kv;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int kv_len = start + r + 1;
    const int k0 = split * chunk;
    const int k1 = min(k0 + chunk, kv_len);
    float* q_s = smem;                   // [group][HD]
    float* p_s = q_s + group * HD;       // [group][chunk]
    float* ml_s = p_s + group * chunk;   // [group][2]
    const size_t row_head0 = (size_t)r * n_heads + (size_t)g * group;  // (r, first head of the group)

    if (k1 <= k0) {  // this chunk lies past the row's position: an empty partial
        if (tid < group) {
            part_ml[((row_head0 + tid) * n_splits + split) * 2] = -PALR_INF;
            part_ml[((row_head0 + tid) * n_splits + split) * 2 + 1] = 0.0f;
        }
        return;
    }

    for (int i = tid; i < group * HD; i += DEC_THREADS)
        q_s[i] = load_f(q + row_head0 * HD + i) * scale_log2;
    __syncthreads();

    // Scores: 16 groups of 8 lanes, one key each per step; lane l8 holds elements
    // 4·(8i + l8) .. +3 of the key (8-byte loads, 64 contiguous bytes per group).
    const bf16_t* kbase = kc + (size_t)g * capacity * HD;
    const int l8 = lane & 7;
    for (int base = k0 + warp * 4; base < k1; base += DEC_THREADS / 8) {
        const int key = base + (lane >> 3);
        const bool valid = key < k1;
        float dot[DEC_MAX_GROUP];
#pragma unroll
        for (int j = 0; j < DEC_MAX_GROUP; ++j) dot[j] = 0.0f;
#pragma unroll
        for (int i = 0; i < HD / 32; ++i) {
            uint2 u = make_uint2(0u, 0u);
            if (valid) u = *(const uint2*)(kbase + (size_t)key * HD + (i * 8 + l8) * 4);
            const float k0v = bf16x2_lo(u.x), k1v = bf16x2_hi(u.x);
            const float k2v = bf16x2_lo(u.y), k3v = bf16x2_hi(u.y);
#pragma unroll
            for (int j = 0; j < DEC_MAX_GROUP; ++j) {
                if (j < group) {
                    const float4 qv = *(const float4*)(q_s + j * HD + (i * 8 + l8) * 4);
                    dot[j] += qv.x * k0v + qv.y * k1v + qv.z * k2v + qv.w * k3v;
                }
            }
        }
        // `group` is the same in every lane, so the whole warp takes the same branches.
#pragma unroll
        for (int j = 0; j < DEC_MAX_GROUP; ++j) {
            if (j < group) {
                float d = dot[j];
                d += __shfl_xor_sync(0xffffffffu, d, 4);
                d += __shfl_xor_sync(0xffffffffu, d, 2);
                d += __shfl_xor_sync(0xffffffffu, d, 1);
                if (valid && l8 == 0) p_s[j * chunk + (key - k0)] = d;
            }
        }
    }
    __syncthreads();

    // Softmax numerators per head, one warp per head.
    const int n = k1 - k0;
    for (int j = warp; j < group; j += DEC_THREADS / 32) {
        float* p = p_s + j * chunk;
        float m = -PALR_INF;
        for (int i = lane; i < n; i += 32) m = fmaxf(m, p[i]);
        m = warp_max(m);
        float l = 0.0f;
        for (int i = lane; i < n; i += 32) {
            const float e = exp2f(p[i] - m);
            p[i] = e;
            l += e;
        }
        l = warp_sum(l);
        if (lane == 0) {
            ml_s[2 * j] = m;
            ml_s[2 * j + 1] = l;
        }
    }
    __syncthreads();

    // o[j][d] = Σ_key p[j][key] · v[key][d]: thread (quad qi, key lane kl) reads 4
    // values (8 bytes) of every KL-th key, KL adjacent lanes share a quad (so a warp
    // reads 32/KL quads of KL keys), the loop is unrolled so several loads are in
    // flight, and the key lanes' sums meet through shuffles (no shared memory).
    const bf16_t* vbase = vc + (size_t)g * capacity * HD;
    const int kl = tid % KL, qi = tid / KL;
    float4 acc[DEC_MAX_GROUP];
#pragma unroll
    for (int j = 0; j < DEC_MAX_GROUP; ++j) acc[j] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll 4
    for (int key = k0 + kl; key < k1; key += KL) {
        const uint2 u = *(const uint2*)(vbase + (size_t)key * HD + 4 * qi);
        const float v0 = bf16x2_lo(u.x), v1 = bf16x2_hi(u.x), v2 = bf16x2_lo(u.y), v3 = bf16x2_hi(u.y);
        const float* pk = p_s + (key - k0);
#pragma unroll
        for (int j = 0; j < DEC_MAX_GROUP; ++j) {
            if (j < group) {
                const float p = pk[j * chunk];
                acc[j].x += p * v0;
                acc[j].y += p * v1;
                acc[j].z += p * v2;
                acc[j].w += p * v3;
            }
        }
    }
#pragma unroll
    for (int j = 0; j < DEC_MAX_GROUP; ++j) {
        if (j < group) {
#pragma unroll
            for (int o = KL / 2; o > 0; o >>= 1) {
                acc[j].x += __shfl_xor_sync(0xffffffffu, acc[j].x, o);
                acc[j].y += __shfl_xor_sync(0xffffffffu, acc[j].y, o);
                acc[j].z += __shfl_xor_sync(0xffffffffu, acc[j].z, o);
                acc[j].w += __shfl_xor_sync(0xffffffffu, acc[j].w, o);
            }
            if (kl == 0) {
                const size_t rh = row_head0 + j;
                if (n_splits == 1) {
                    const float inv = 1.0f / ml_s[2 * j + 1];
                    store_f2(out + rh * HD + 4 * qi, acc[j].x * inv, acc[j].y * inv);
                    store_f2(out + rh * HD + 4 * qi + 2, acc[j].z * inv, acc[j].w * inv);
                } else {
                    *(float4*)(part_o + (rh * n_splits + split) * HD + 4 * qi) = acc[j];
                }
            }
        }
    }
    if (n_splits > 1 && tid < group) {
        part_ml[((row_head0 + tid) * n_splits + split) * 2] = ml_s[2 * tid];
        part_ml[((row_head0 + tid) * n_splits + split) * 2 + 1] = ml_s[2 * tid + 1];
    }
}

#define SPLIT_ENTRY(NAME, HD, TQ)                                                              \
    extern "C" __global__ void __launch_bounds__(DEC_THREADS)                                  \
        NAME(const TQ* __restrict__ q, const bf16_t* __restrict__ kc,                          \
             const bf16_t* __restrict__ vc, bf16_t* __restrict__ out,                          \
             float* __restrict__ part_o, float* __restrict__ part_ml, int start, int n_heads,  \
             int n_kv, int capacity, int chunk, int n_splits, float scale_log2) {              \
        attn_split<HD, TQ>(q, kc, vc, out, part_o, part_ml, start, n_heads, n_kv, capacity,    \
                           chunk, n_splits, scale_log2);                                       \
    }

SPLIT_ENTRY(attn_decode_hd32_f32, 32, float)
SPLIT_ENTRY(attn_decode_hd64_f32, 64, float)
SPLIT_ENTRY(attn_decode_hd128_f32, 128, float)
SPLIT_ENTRY(attn_decode_hd256_f32, 256, float)
SPLIT_ENTRY(attn_decode_hd32_bf16, 32, bf16_t)
SPLIT_ENTRY(attn_decode_hd64_bf16, 64, bf16_t)
SPLIT_ENTRY(attn_decode_hd128_bf16, 128, bf16_t)
SPLIT_ENTRY(attn_decode_hd256_bf16, 256, bf16_t)

// Merges the chunks of every (row, head): grid (rows · n_heads), block head_dim
// (a multiple of 32, at most 256).
extern "C" __global__ void attn_merge_bf16(const float* __restrict__ part_o,
                                           const float* __restrict__ part_ml,
                                           bf16_t* __restrict__ out, int n_splits, int head_dim) {
    const size_t rh = blockIdx.x;
    const int d = threadIdx.x;
    const float* ml = part_ml + rh * n_splits * 2;
    float mx = -PALR_INF;
    for (int s = 0; s < n_splits; ++s) mx = fmaxf(mx, ml[2 * s]);
    float acc = 0.0f, l = 0.0f;
    for (int s = 0; s < n_splits; ++s) {
        const float m = ml[2 * s];
        if (m == -PALR_INF) continue;  // an empty chunk: its o was never written
        const float w = exp2f(m - mx);
        acc += w * part_o[(rh * n_splits + s) * head_dim + d];
        l += w * ml[2 * s + 1];
    }
    out[rh * head_dim + d] = f2bf(acc / l);
}
