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
//! backend.lora_apply(&x, &mut y, &[
//!     LoraSegment { rows: 3, adapter: Some(&user_a) },            // rows 0..3
//!     LoraSegment { rows: 5, adapter: None },                     // rows 3..8: base model
//!     LoraSegment { rows: 2, adapter: Some(&user_b) },            // rows 8..10
//! ])?;
//! ```

use cudarc::driver::{CudaSlice, PushKernelArg};
use half::bf16;

use super::{CudaBackend, CudaBuf, CudaError, CudaMat, Dtype, EW_THREADS, cfg, check_len, drv_err};
use crate::engine::{EngineError, Result};

/// Largest rank the kernels take (their shared-memory tables hold 256 values).
pub const MAX_RANK: usize = 256;

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
    /// adapter. `x (rows, in)` is the projection's input, `y (rows, out)` its f32
    /// output; the segments cover `rows` rows in order.
    pub fn lora_apply(
        &self,
        x: &CudaBuf,
        y: &mut CudaBuf,
        segments: &[LoraSegment<'_>],
    ) -> Result<()> {
        let rows: usize = segments.iter().map(|s| s.rows).sum();
        let Some(first) = segments.iter().find_map(|s| s.adapter) else {
            return Ok(()); // no adapter anywhere: y is already the base projection
        };
        let (in_f, out_f) = (first.in_features, first.out_features);
        for s in segments.iter().filter_map(|s| s.adapter) {
            if s.in_features != in_f || s.out_features != out_f {
                return Err(EngineError::Invalid(format!(
                    "LoRA adapters of one call must share a shape: ({in_f} → {out_f}) and ({} → {})",
                    s.in_features, s.out_features
                )));
            }
        }
        if rows > 65_535 {
            return Err(EngineError::Invalid(format!(
                "lora_apply takes at most 65535 rows per call, got {rows}"
            )));
        }
        check_len(x.len(), rows * in_f, "lora_apply input")?;
        check_len(y.len(), rows * out_f, "lora_apply output")?;
        let max_rank = segments
            .iter()
            .filter_map(|s| s.adapter.map(|a| a.rank))
            .max()
            .unwrap_or(1);

        // Per-row segment index, then the segment table (8-byte aligned), as u32 words.
        let mut words: Vec<u32> = Vec::with_capacity(rows + 1 + 6 * segments.len());
        for (i, s) in segments.iter().enumerate() {
            let idx = if s.adapter.is_some() { i as i32 } else { -1 };
            words.extend(std::iter::repeat_n(idx as u32, s.rows));
        }
        if !words.len().is_multiple_of(2) {
            words.push(0);
        }
        let table_at = words.len();
        for s in segments {
            let (pa, pb, rank, scale) = match s.adapter {
                Some(a) => (self.ptr(&a.a), self.ptr(&a.b), a.rank as u32, a.scale),
                None => (0, 0, 0, 0.0),
            };
            words.extend([
                pa as u32,
                (pa >> 32) as u32,
                pb as u32,
                (pb >> 32) as u32,
                rank,
                scale.to_bits(),
            ]);
        }

        let yp = match y.dtype() {
            Dtype::F32 => self.f32_in(y, "lora_apply output")?,
            Dtype::Bf16 => {
                return Err(CudaError::Invalid(
                    "lora_apply adds into an f32 projection output".into(),
                )
                .into());
            }
        };
        let mut sh = self.lock();
        let xp = match x.dtype() {
            Dtype::Bf16 => self.bf16_in(x, "lora_apply input")?,
            Dtype::F32 => {
                let src = self.f32_in(x, "lora_apply input")?;
                let dst = self.scratch_bf16(&mut sh, rows * in_f)?;
                // Grid-stride over rows·in values of x and of the scratch (sized above).
                launch!(self, "cast_f32_bf16", cfg((self.grid_for(rows * in_f), 1, 1), EW_THREADS, 0); src, dst, (rows * in_f) as i64);
                dst
            }
        };
        let base = self.upload_u32(&mut sh, &words)?;
        let (row_seg, table) = (base, base + 4 * table_at as u64);
        let t = self.scratch_f32(&mut sh, rows * max_rank)?;
        // Block r: row r < rows of x (in_f values) and of t (max_rank values);
        // segment indices point into the table uploaded above.
        launch!(self, "lora_shrink_bf16", cfg((rows as u32, 1, 1), 256, 0);
            xp, in_f as i32, row_seg, table, t, in_f as i32, max_rank as i32);
        // Block (x, r): outputs 256x.. < out_f of row r < rows of y.
        launch!(self, "lora_expand_f32", cfg((out_f.div_ceil(256) as u32, rows as u32, 1), 256, 0);
            t, row_seg, table, yp, out_f as i32, out_f as i32, max_rank as i32);
        Ok(())
    }
}
