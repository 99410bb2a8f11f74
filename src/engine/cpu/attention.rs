//! Causal grouped-query attention on the CPU.
//!
//! `softmax(q·Kᵀ / sqrt(d)) · V` per query row and head, over the cached positions
//! up to the row's own (causal). Query heads `h` read key/value head
//! `h / (n_heads / n_kv_heads)` (grouped-query attention, Ainslie et al. 2023).
//! Work is split over (head, block of query rows); scores live in a per-thread
//! scratch row, so nothing is allocated once the scratch has grown to the context.

use rayon::prelude::*;

use super::simd;
use super::{SendPtr, with_scores};
use crate::engine::backend::Heads;

/// Query rows per task in prefill.
const ROW_BLOCK: usize = 16;

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
    let out_ptr = SendPtr(out.as_mut_ptr());
    let row_blocks = rows.div_ceil(ROW_BLOCK);
    let task = |t: usize| {
        let h = t % n_heads;
        let rb = t / n_heads;
        let g = h / group;
        let kh = &k[g * capacity * hd..(g + 1) * capacity * hd];
        let vh = &v[g * capacity * hd..(g + 1) * capacity * hd];
        for r in rb * ROW_BLOCK..((rb + 1) * ROW_BLOCK).min(rows) {
            let len = start + r + 1;
            let qr = &q[r * width + h * hd..r * width + (h + 1) * hd];
            // SAFETY: this task alone writes head h of row r: out[r*width + h*hd ..][..hd].
            let o = unsafe {
                std::slice::from_raw_parts_mut(out_ptr.get().add(r * width + h * hd), hd)
            };
            o.fill(0.0);
            with_scores(len, |s| {
                for (j, sj) in s.iter_mut().enumerate() {
                    *sj = simd::dot(qr, &kh[j * hd..(j + 1) * hd]) * scale;
                }
                let m = simd::max(s);
                let sum = simd::exp_sub_sum(s, m);
                let inv = 1.0 / sum;
                for (j, sj) in s.iter().enumerate() {
                    simd::axpy(o, sj * inv, &vh[j * hd..(j + 1) * hd]);
                }
            });
        }
    };
    let tasks = n_heads * row_blocks;
    if tasks == 1 {
        task(0);
    } else {
        (0..tasks).into_par_iter().for_each(task);
    }
}
