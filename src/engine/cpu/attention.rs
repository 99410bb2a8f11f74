//! Causal grouped-query attention on the CPU.
//!
//! `softmax(q·Kᵀ / sqrt(d)) · V` per query row and head over the cached positions
//! up to the row's own (causal). Query head `h` reads key/value head
//! `h / (n_heads / n_kv_heads)` (grouped-query attention, Ainslie et al. 2023).
//!
//! Work is split into (key/value head, block of query rows) tasks. Each task stacks
//! the query heads that share its key/value head and computes the block's scores
//! `S = Q·Kᵀ` and output `O = softmax(S)·V` as two small matrix products (the `gemm`
//! crate, single-threaded inside the task; the keys and values are packed once per
//! group, not once per query head), masking the few scores past each row's own
//! position. Scores live in a per-thread
//! scratch that grows once to the longest context, so nothing is allocated after.

use rayon::prelude::*;

use super::simd;
use super::{SendPtr, with_scores};
use crate::engine::backend::Heads;

/// Query rows per task.
const ROW_BLOCK: usize = 64;

/// `q`: `(rows, n_heads, head_dim)`; `k`, `v`: `(n_kv_heads, capacity, head_dim)`;
/// `out`: `(rows, n_heads, head_dim)`. Row `r` sits at position `start + r`.
#[allow(clippy::too_many_arguments)]
pub fn causal_gqa(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    rows: usize,
    start: usize,
    heads: Heads,
    capacity: usize,
    out: &mut [f32],
) {
    let Heads {
        n_heads,
        n_kv_heads,
        head_dim: hd,
    } = heads;
    let group = n_heads / n_kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let width = n_heads * hd;
    debug_assert!(q.len() >= rows * width && out.len() >= rows * width);
    debug_assert!(k.len() >= n_kv_heads * capacity * hd && start + rows <= capacity);
    let out_ptr = SendPtr(out.as_mut_ptr());
    let row_blocks = rows.div_ceil(ROW_BLOCK);
    // One task per (key/value head, block of query rows): the `group` query heads that
    // read the same keys are stacked into one product, so the keys and values are
    // packed for the product once per group instead of once per query head. A few rows
    // (decoding) have too little work for that: one task per query head spreads it over
    // the threads.
    let pieces = if rows >= 16 { 1 } else { group };
    let per_piece = group / pieces;
    let task = |t: usize| {
        let piece = t % pieces;
        let g = (t / pieces) % n_kv_heads;
        let rb = t / (pieces * n_kv_heads);
        let r0 = rb * ROW_BLOCK;
        let m = (rows - r0).min(ROW_BLOCK);
        let first = g * group + piece * per_piece;
        let gm = per_piece * m;
        // Keys visible to the block's last row.
        let len = start + r0 + m;
        let kh = &k[g * capacity * hd..][..len * hd];
        let vh = &v[g * capacity * hd..][..len * hd];
        // One head reads its queries from `q` and writes `out` in place; stacked heads go
        // through scratch (row hh·m + i is head first + hh of query row r0 + i).
        let stacked = per_piece > 1;
        let scratch = if stacked { 2 * gm * hd } else { 0 };
        with_scores(gm * len + scratch, |buf| {
            let (s, rest) = buf.split_at_mut(gm * len);
            let (qs, os) = rest.split_at_mut(scratch / 2);
            if stacked {
                for hh in 0..per_piece {
                    let h = first + hh;
                    for i in 0..m {
                        qs[(hh * m + i) * hd..][..hd]
                            .copy_from_slice(&q[(r0 + i) * width + h * hd..][..hd]);
                    }
                }
            }
            let (q_ptr, q_stride) = if stacked {
                (qs.as_ptr(), hd)
            } else {
                (q[r0 * width + first * hd..].as_ptr(), width)
            };
            // SAFETY: this task alone writes heads first..first + per_piece of rows
            // r0..r0 + m of `out` (in place, or copied from `os` below).
            let (o_ptr, o_stride) = if stacked {
                (os.as_mut_ptr(), hd)
            } else {
                (unsafe { out_ptr.get().add(r0 * width + first * hd) }, width)
            };
            // S (gm, len) = scale · Q (gm, hd) · Kᵀ (hd, len).
            // SAFETY: S is (gm, len) row-major in `s`, Q (gm, hd) rows q_stride apart; Kᵀ
            // element (d, j) is kh[j * hd + d], j < len. gemm reads/writes nothing else.
            unsafe {
                gemm::gemm(
                    gm,
                    len,
                    hd,
                    s.as_mut_ptr(),
                    1,
                    len as isize,
                    false,
                    q_ptr,
                    1,
                    q_stride as isize,
                    kh.as_ptr(),
                    hd as isize,
                    1,
                    0.0,
                    scale,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
            for (i, row) in s.chunks_mut(len).enumerate() {
                let own = start + r0 + i % m + 1; // causal: positions 0..own
                let (live, future) = row.split_at_mut(own);
                future.fill(0.0);
                let mx = simd::max(live);
                let inv = 1.0 / simd::exp_sub_sum(live, mx);
                simd::scale(live, inv);
            }
            // O (gm, hd) = P (gm, len) · V (len, hd).
            // SAFETY: O is (gm, hd) with rows o_stride apart (scratch or this task's part of
            // `out`), P (gm, len) in `s`, V (len, hd) row-major in `vh`.
            unsafe {
                gemm::gemm(
                    gm,
                    hd,
                    len,
                    o_ptr,
                    1,
                    o_stride as isize,
                    false,
                    s.as_ptr(),
                    1,
                    len as isize,
                    vh.as_ptr(),
                    1,
                    hd as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
            if stacked {
                for hh in 0..per_piece {
                    let h = first + hh;
                    for i in 0..m {
                        // SAFETY: this task alone writes heads first.. of rows r0..r0+m:
                        // elements (r0 + i) * width + h * hd + d for d < hd, inside `out`.
                        let dst = unsafe {
                            std::slice::from_raw_parts_mut(
                                out_ptr.get().add((r0 + i) * width + h * hd),
                                hd,
                            )
                        };
                        dst.copy_from_slice(&os[(hh * m + i) * hd..][..hd]);
                    }
                }
            }
        });
    };
    let tasks = pieces * n_kv_heads * row_blocks;
    if tasks == 1 {
        task(0);
    } else {
        (0..tasks).into_par_iter().for_each(task);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plain f64 attention for comparison.
    fn naive(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        rows: usize,
        start: usize,
        h: Heads,
        cap: usize,
    ) -> Vec<f64> {
        let (nh, hd) = (h.n_heads, h.head_dim);
        let mut out = vec![0.0; rows * nh * hd];
        for r in 0..rows {
            for head in 0..nh {
                let g = head / (nh / h.n_kv_heads);
                let len = start + r + 1;
                let qr = &q[(r * nh + head) * hd..][..hd];
                let s: Vec<f64> = (0..len)
                    .map(|j| {
                        let kj = &k[(g * cap + j) * hd..][..hd];
                        qr.iter()
                            .zip(kj)
                            .map(|(a, b)| *a as f64 * *b as f64)
                            .sum::<f64>()
                            / (hd as f64).sqrt()
                    })
                    .collect();
                let mx = s.iter().cloned().fold(f64::MIN, f64::max);
                let e: Vec<f64> = s.iter().map(|x| (x - mx).exp()).collect();
                let z: f64 = e.iter().sum();
                for d in 0..hd {
                    out[(r * nh + head) * hd + d] = (0..len)
                        .map(|j| e[j] / z * v[(g * cap + j) * hd + d] as f64)
                        .sum();
                }
            }
        }
        out
    }

    #[test]
    fn matches_naive_attention() {
        let mut seed = 12345u64;
        let mut rnd = |n: usize| -> Vec<f32> {
            (0..n)
                .map(|_| {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((seed >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
                })
                .collect()
        };
        for (nh, nkv, hd, rows, start) in [
            (4, 2, 16, 70, 0),
            (6, 3, 8, 1, 45),
            (3, 1, 32, 5, 9),
            (2, 2, 64, 33, 31),
        ] {
            let heads = Heads {
                n_heads: nh,
                n_kv_heads: nkv,
                head_dim: hd,
            };
            let cap = start + rows + 3;
            let q = rnd(rows * nh * hd);
            let k = rnd(nkv * cap * hd);
            let v = rnd(nkv * cap * hd);
            let mut out = vec![f32::NAN; rows * nh * hd];
            causal_gqa(&q, &k, &v, rows, start, heads, cap, &mut out);
            let want = naive(&q, &k, &v, rows, start, heads, cap);
            for (i, (a, b)) in out.iter().zip(&want).enumerate() {
                assert!(
                    (*a as f64 - b).abs() < 1e-5,
                    "{nh}/{nkv}/{hd} rows {rows} start {start}: [{i}] {a} vs {b}"
                );
            }
        }
    }
}
