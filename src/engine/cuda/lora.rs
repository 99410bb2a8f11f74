//! LoRA adapters on the GPU (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large
//! Language Models"): `W' = W + s·B·A`, `A (rank, in)`, `B (out, rank)`,
//! `s = alpha / rank`.
//!
//! Two ways to apply one:
//! - merged: [`CudaBackend::lora_merge`] folds `s·B·A` into a bf16 weight once
//!   (and `sign = -1` takes it out again, up to bf16 rounding); the forward pass
//!   then costs nothing extra, but the whole batch shares the adapter;
//! - unmerged: [`CudaBackend::lora_apply`] adds `s·(x·Aᵀ)·Bᵀ` to a projection's
//!   output for each segment of rows with its own adapter (or none), so requests
//!   for different adapters share one batch — the segmented shrink/expand of
//!   Punica's SGMV (Chen et al. 2023, "Punica: Multi-Tenant LoRA Serving").
//!
//! Standalone for now: the engine does not call these yet (the model's LoRA
//! integration comes with the CPU path). Use after a projection:
//!
//! ```ignore
//! backend.linear(&x, rows, &w_q, None, &mut y)?;                 // y = x·Wᵀ
//! backend.lora_apply(&x, &w_q, &mut y, &[
//!     LoraSegment { rows: 3, adapter: Some(&user_a) },            // rows 0..3
//!     LoraSegment { rows: 5, adapter: None },                     // rows 3..8: base model
//!     LoraSegment { rows: 2, adapter: Some(&user_b) },            // rows 8..10
//! ])?;
//! ```

use cudarc::driver::{CudaSlice, DeviceRepr, PushKernelArg};
use half::bf16;

use super::{CudaBackend, CudaBuf, CudaError, CudaMat, Dtype, EW_THREADS, cfg, check_len, drv_err};
use crate::engine::{EngineError, Result};

/// Largest rank the kernels take (their shared-memory tables hold 256 values).
pub const MAX_RANK: usize = 256;
/// Input columns per shrink block (`LORA_CHUNK` in kernels/lora.cu).
const LORA_CHUNK: usize = 512;
/// Rows per shrink and expand block (`LORA_RT` in kernels/lora.cu).
const LORA_ROWS_PER_BLOCK: usize = 16;

/// Segments per kernel launch (`LORA_MAX_SEGS` in kernels/lora.cu); longer lists
/// take several launches.
const MAX_SEGS: usize = 32;

/// The segment table passed by value to the SGMV kernels; mirrors `struct
/// LoraBatch` in kernels/lora.cu field for field (C layout, 904 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
struct LoraBatchArg {
    n_segs: i32,
    /// Segment s covers rows start[s]..start[s+1].
    start: [i32; MAX_SEGS + 1],
    /// Device pointers of A and B (0: the segment has no adapter).
    a: [u64; MAX_SEGS],
    b: [u64; MAX_SEGS],
    rank: [i32; MAX_SEGS],
    scale: [f32; MAX_SEGS],
}

const _: () = assert!(std::mem::size_of::<LoraBatchArg>() == 904);
const _: () = assert!(std::mem::align_of::<LoraBatchArg>() == 8);

// SAFETY: a plain C struct of integers and floats, laid out as the kernels'
// `struct LoraBatch`; the driver copies it into the kernel's parameter space.
unsafe impl DeviceRepr for LoraBatchArg {}

/// A segment as the kernels see it: its rows and, with an adapter, the device
/// pointers of A and B, the rank and the scale.
type SegmentRef = (usize, Option<(u64, u64, usize, f32)>);

/// The tables for `segments` (consecutive rows from 0), at most 32 segments each,
/// with the first row of each; empty groups are dropped.
fn batch_args(segments: &[SegmentRef]) -> Vec<(i32, LoraBatchArg)> {
    let mut out = Vec::new();
    let mut row = 0i32;
    for group in segments.chunks(MAX_SEGS) {
        let mut arg = LoraBatchArg {
            n_segs: group.len() as i32,
            start: [0; MAX_SEGS + 1],
            a: [0; MAX_SEGS],
            b: [0; MAX_SEGS],
            rank: [0; MAX_SEGS],
            scale: [0.0; MAX_SEGS],
        };
        let row0 = row;
        for (i, &(rows, adapter)) in group.iter().enumerate() {
            arg.start[i] = row;
            row += rows as i32;
            if let Some((pa, pb, rank, scale)) = adapter {
                arg.a[i] = pa;
                arg.b[i] = pb;
                arg.rank[i] = rank as i32;
                arg.scale[i] = scale;
            }
        }
        arg.start[group.len()] = row;
        if row > row0 {
            out.push((row0, arg));
        }
    }
    out
}

/// One adapter for one projection, on the device (bf16).
pub struct LoraAdapter {
    rank: usize,
    in_features: usize,
    out_features: usize,
    scale: f32,
    a: CudaSlice<bf16>, // (rank, in_features)
    b: CudaSlice<bf16>, // (out_features, rank)
}

impl LoraAdapter {
    pub fn rank(&self) -> usize {
        self.rank
    }
    pub fn in_features(&self) -> usize {
        self.in_features
    }
    pub fn out_features(&self) -> usize {
        self.out_features
    }
    /// `alpha / rank`.
    pub fn scale(&self) -> f32 {
        self.scale
    }
}

/// `rows` consecutive rows of a batch and the adapter they use (`None`: none).
#[derive(Clone, Copy)]
pub struct LoraSegment<'a> {
    pub rows: usize,
    pub adapter: Option<&'a LoraAdapter>,
}

fn check_shape(rank: usize, in_f: usize, out_f: usize) -> Result<()> {
    if rank == 0 || rank > MAX_RANK {
        return Err(EngineError::Invalid(format!(
            "LoRA rank {rank} is outside 1..={MAX_RANK}"
        )));
    }
    if in_f == 0 || out_f == 0 {
        return Err(EngineError::Invalid(
            "a LoRA adapter needs positive in and out features".into(),
        ));
    }
    Ok(())
}

impl CudaBackend {
    /// An adapter from host matrices `a (rank, in)` and `b (out, rank)`, row-major,
    /// with `scale = alpha / rank`; values are rounded to bf16.
    pub fn lora_adapter(
        &self,
        a: &[f32],
        b: &[f32],
        rank: usize,
        in_features: usize,
        out_features: usize,
        alpha: f32,
    ) -> Result<LoraAdapter> {
        check_shape(rank, in_features, out_features)?;
        if a.len() != rank * in_features || b.len() != out_features * rank {
            return Err(EngineError::Invalid(format!(
                "LoRA A must hold rank·in = {} values and B out·rank = {}; got {} and {}",
                rank * in_features,
                out_features * rank,
                a.len(),
                b.len()
            )));
        }
        let up = |v: &[f32]| -> Result<CudaSlice<bf16>> {
            let h: Vec<bf16> = v.iter().map(|&x| bf16::from_f32(x)).collect();
            Ok(self
                .stream
                .clone_htod(&h)
                .map_err(drv_err("uploading a LoRA matrix"))?)
        };
        Ok(LoraAdapter {
            rank,
            in_features,
            out_features,
            scale: alpha / rank as f32,
            a: up(a)?,
            b: up(b)?,
        })
    }

    /// An adapter with uniform random A and B made on the device (benchmarks).
    pub fn lora_random(
        &self,
        rank: usize,
        in_features: usize,
        out_features: usize,
        alpha: f32,
        seed: u64,
    ) -> Result<LoraAdapter> {
        check_shape(rank, in_features, out_features)?;
        let a = self.random_mat(rank, in_features, seed, 1.0 / (in_features as f32).sqrt())?;
        let b = self.random_mat(
            out_features,
            rank,
            seed ^ 0x5eed,
            1.0 / (rank as f32).sqrt(),
        )?;
        Ok(LoraAdapter {
            rank,
            in_features,
            out_features,
            scale: alpha / rank as f32,
            a: a.data,
            b: b.data,
        })
    }

    /// `w += sign · scale · B·A` in place (`sign` = 1 merges, -1 unmerges).
    pub fn lora_merge(&self, w: &mut CudaMat, adapter: &LoraAdapter, sign: f32) -> Result<()> {
        let (out_f, in_f) = (w.rows, w.cols);
        if adapter.out_features != out_f || adapter.in_features != in_f {
            return Err(EngineError::Invalid(format!(
                "LoRA adapter is ({} → {}), the weight ({in_f} → {out_f})",
                adapter.in_features, adapter.out_features
            )));
        }
        let (pw, pa, pb) = (
            self.ptr(&w.data),
            self.ptr(&adapter.a),
            self.ptr(&adapter.b),
        );
        let grid = (in_f.div_ceil(256) as u32, out_f.div_ceil(8) as u32, 1);
        // Block (x, y) covers columns 256x.. < in_f and rows 8y.. < out_f of w;
        // A is (rank, in_f), B (out_f, rank) with rank <= 256 (the kernel's table).
        launch!(self, "lora_merge_bf16", cfg(grid, 256, 0);
            pw, pa, pb, out_f as i32, in_f as i32, adapter.rank as i32, sign * adapter.scale);
        Ok(())
    }

    /// `y[r, :] += s·(x[r, :]·Aᵀ)·Bᵀ` for each row `r` of each segment with an
    /// adapter. `x (rows, in)` is the input of the projection `w (out, in)`, `y
    /// (rows, out)` its f32 output (`linear(x, w)`); the segments cover `rows` rows
    /// in order, and every adapter must have `w`'s shape.
    pub fn lora_apply(
        &self,
        x: &CudaBuf,
        w: &CudaMat,
        y: &mut CudaBuf,
        segments: &[LoraSegment<'_>],
    ) -> Result<()> {
        let rows: usize = segments.iter().map(|s| s.rows).sum();
        let (in_f, out_f) = (w.cols, w.rows);
        for s in segments.iter().filter_map(|s| s.adapter) {
            if s.in_features != in_f || s.out_features != out_f {
                return Err(EngineError::Invalid(format!(
                    "LoRA adapter ({} → {}) does not fit the projection ({in_f} → {out_f})",
                    s.in_features, s.out_features
                )));
            }
        }
        if segments.iter().all(|s| s.adapter.is_none()) {
            return Ok(()); // y is already the base projection
        }
        let max_rank = segments
            .iter()
            .filter_map(|s| s.adapter.map(|a| a.rank))
            .max()
            .unwrap_or(1);
        let refs: Vec<SegmentRef> = segments
            .iter()
            .map(|s| {
                let ad = s
                    .adapter
                    .map(|a| (self.ptr(&a.a), self.ptr(&a.b), a.rank, a.scale));
                (s.rows, ad)
            })
            .collect();
        self.sgmv(x, rows, in_f, out_f, y, &refs, max_rank)
    }

    /// One adapter on every row, from the model's own LoRA matrices: `a (rank, in)`,
    /// `b (out, rank)` in bf16 (the [`crate::engine::backend::Backend::lora_update`] of
    /// this backend).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn lora_update_sgmv(
        &self,
        x: &CudaBuf,
        rows: usize,
        a: &CudaMat,
        b: &CudaMat,
        scale: f32,
        out: &mut CudaBuf,
    ) -> Result<()> {
        let (rank, in_f, out_f) = (a.rows, a.cols, b.rows);
        if b.cols != rank {
            return Err(EngineError::Invalid(format!(
                "LoRA B is ({out_f}, {}) but A has rank {rank}",
                b.cols
            )));
        }
        check_shape(rank, in_f, out_f)?;
        if rows == 0 {
            return Ok(());
        }
        let seg = (
            rows,
            Some((self.ptr(&a.data), self.ptr(&b.data), rank, scale)),
        );
        self.sgmv(x, rows, in_f, out_f, out, &[seg], rank)
    }

    /// The shrink and expand launches over `segments` (rows and adapter pointers).
    #[allow(clippy::too_many_arguments)]
    fn sgmv(
        &self,
        x: &CudaBuf,
        rows: usize,
        in_f: usize,
        out_f: usize,
        y: &mut CudaBuf,
        segments: &[SegmentRef],
        max_rank: usize,
    ) -> Result<()> {
        if rows > 65_535 * LORA_ROWS_PER_BLOCK {
            return Err(EngineError::Invalid(format!(
                "a LoRA update takes at most {} rows per call, got {rows}",
                65_535 * LORA_ROWS_PER_BLOCK
            )));
        }
        check_len(x.len(), rows * in_f, "LoRA input")?;
        check_len(y.len(), rows * out_f, "LoRA output")?;
        let yp = match y.dtype() {
            Dtype::F32 => self.f32_in(y, "LoRA output")?,
            Dtype::Bf16 => {
                return Err(CudaError::Invalid(
                    "a LoRA update adds into an f32 projection output".into(),
                )
                .into());
            }
        };
        let mut sh = self.lock();
        let xp = match x.dtype() {
            Dtype::Bf16 => self.bf16_in(x, "LoRA input")?,
            Dtype::F32 => {
                let src = self.f32_in(x, "LoRA input")?;
                let dst = self.scratch_bf16(&mut sh, rows * in_f)?;
                // Grid-stride over rows·in values of x and of the scratch (sized above).
                launch!(self, "cast_f32_bf16", cfg((self.grid_for(rows * in_f), 1, 1), EW_THREADS, 0); src, dst, (rows * in_f) as i64);
                dst
            }
        };
        // Partial shrink sums, one slab per 512-column chunk of the input
        // (LORA_CHUNK in kernels/lora.cu); the expand adds the slabs up.
        let n_splits = in_f.div_ceil(LORA_CHUNK);
        let t = self.scratch_f32(&mut sh, n_splits * rows * max_rank)?;
        for (row0, arg) in batch_args(segments) {
            let n = (arg.start[arg.n_segs as usize] - row0) as usize;
            let tiles = n.div_ceil(LORA_ROWS_PER_BLOCK) as u32;
            // Block (c, r): columns 512c.. < in_f of rows row0 + 16r.. of x; rows
            // past the call's last segment are skipped in the kernel. Writes slab
            // c < n_splits of t (sized above), ranks < the row's adapter rank <= max_rank.
            launch!(self, "lora_shrink_bf16", cfg((n_splits as u32, tiles, 1), 256, 0);
                xp, in_f as i32, arg, row0, t, in_f as i32, max_rank as i32, rows as i32);
            // Block (x, r): outputs 256x.. < out_f of rows row0 + 16r.. < rows of y
            // (the same row bound), reading the slabs the shrink wrote for those rows.
            launch!(self, "lora_expand_f32", cfg((out_f.div_ceil(256) as u32, tiles, 1), 256, 0);
                t, n_splits as i32, rows as i32, arg, row0, yp, out_f as i32, out_f as i32, max_rank as i32);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_tables_cover_the_rows_in_groups_of_32() {
        // 70 segments of 2 rows, every third without an adapter.
        let segs: Vec<SegmentRef> = (0..70)
            .map(|i| {
                (
                    2,
                    (i % 3 != 0).then_some((0x1000 + i as u64, 0x2000 + i as u64, 16, 0.5)),
                )
            })
            .collect();
        let args = batch_args(&segs);
        assert_eq!(args.len(), 3);
        assert_eq!(
            args.iter().map(|(r, _)| *r).collect::<Vec<_>>(),
            vec![0, 64, 128]
        );
        let (row0, a) = &args[1];
        assert_eq!((*row0, a.n_segs), (64, 32));
        assert_eq!(a.start[0], 64);
        assert_eq!(a.start[32], 128);
        assert_eq!(a.a[0], 0x1000 + 32); // segment 32 has an adapter
        assert_eq!(a.a[1], 0); // segment 33: none
        assert_eq!((a.a[2], a.b[2]), (0x1000 + 34, 0x2000 + 34));
        assert_eq!((a.rank[0], a.scale[0]), (16, 0.5));
        let (row0, a) = &args[2];
        assert_eq!((*row0, a.n_segs, a.start[6]), (128, 6, 140));
        // Segments without rows make no launch.
        assert!(batch_args(&[(0, None), (0, Some((1, 2, 4, 1.0)))]).is_empty());
    }
}
