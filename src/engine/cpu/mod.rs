//! The CPU backend: multi-threaded (a rayon pool of its own), SIMD through the
//! `gemm` crate for matrix-matrix work (its AVX-512 kernels are compiled in and
//! chosen at run time) and our own kernels in [`simd`] for the matrix-vector
//! products of decoding, attention, softmax and SiLU.
//!
//! Weights are `f32` or `bf16` in memory. An `f32` or `bf16` checkpoint tensor of
//! the same type is used in place from the file's memory map (zero copy); other
//! combinations are converted once at load. `bf16` weights are widened on the fly:
//! per element in the decode kernels, per matrix into a scratch buffer for prefill.

mod attention;
pub mod bf16mm;
pub mod simd;

use std::cell::RefCell;
use std::sync::Arc;

use half::bf16;
use memmap2::Mmap;
use rayon::prelude::*;

use super::backend::{Backend, Heads, KvLayer};
use super::{EngineError, Result};
use crate::model::{DType, TensorRef};

/// Element type of weights held in memory: the one dtype type of palr (engine options, the
/// server's `model.dtype`, every `--dtype` flag).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightDtype {
    /// 32-bit floats (exact).
    #[default]
    F32,
    /// bfloat16 (half the memory, slightly different scores; required on a GPU).
    Bf16,
}

impl WeightDtype {
    /// Lower-case name, as configs and flags write it.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
        }
    }
}

impl std::str::FromStr for WeightDtype {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        [Self::F32, Self::Bf16]
            .into_iter()
            .find(|d| d.name() == s)
            .ok_or_else(|| format!("unknown dtype {s:?}; use f32 or bf16"))
    }
}

impl std::fmt::Display for WeightDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Elements either owned or borrowed from a checkpoint's memory map.
enum Store<T: 'static> {
    Owned(Vec<T>),
    Mapped {
        map: Arc<Mmap>,
        offset: usize,
        len: usize,
    },
}

impl<T: bytemuck::Pod> std::ops::Deref for Store<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        match self {
            Store::Owned(v) => v,
            Store::Mapped { map, offset, len } => {
                // The alignment was checked when the store was made.
                bytemuck::cast_slice(&map[*offset..*offset + len * std::mem::size_of::<T>()])
            }
        }
    }
}

enum MatData {
    F32(Store<f32>),
    Bf16(Store<bf16>),
    /// bf16 packed for the bf16 dot-product kernels ([`bf16mm`]).
    Packed(bf16mm::Packed),
}

/// A weight matrix `(rows, cols)` = `(out_features, in_features)`: row-major, or — for
/// projections loaded with [`Backend::load_linear`] — stored transposed, `(cols, rows)`
/// row-major, the layout `gemm` multiplies without repacking it on every call (prefill
/// matmuls ~20% faster at SmolLM2's sizes) and the matrix-vector kernel streams row by row.
pub struct CpuMat {
    rows: usize,
    cols: usize,
    data: MatData,
    transposed: bool,
}

impl CpuMat {
    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// A matrix owning `data` (`rows * cols` elements).
    pub fn from_f32(rows: usize, cols: usize, data: Vec<f32>, dtype: WeightDtype) -> Self {
        assert_eq!(data.len(), rows * cols);
        let data = match dtype {
            WeightDtype::F32 => MatData::F32(Store::Owned(data)),
            WeightDtype::Bf16 => {
                MatData::Bf16(Store::Owned(data.into_iter().map(bf16::from_f32).collect()))
            }
        };
        CpuMat {
            rows,
            cols,
            data,
            transposed: false,
        }
    }

    /// Whether the values are stored `(cols, rows)`.
    pub fn is_transposed(&self) -> bool {
        self.transposed
    }

    /// Whether the values are packed for the bf16 dot-product kernels.
    pub fn is_packed(&self) -> bool {
        matches!(self.data, MatData::Packed(_))
    }
}

/// `src (rows, cols)` row-major as `(cols, rows)` row-major, in parallel over blocks of
/// 64 destination rows (each reads 64 consecutive values of every source row).
fn transposed<T: Copy + Send + Sync + Default>(src: &[T], rows: usize, cols: usize) -> Vec<T> {
    const B: usize = 64;
    let mut dst = vec![T::default(); rows * cols];
    dst.par_chunks_mut(B * rows.max(1))
        .enumerate()
        .for_each(|(blk, chunk)| {
            let c0 = blk * B;
            let n = chunk.len() / rows.max(1);
            for r in 0..rows {
                let s = &src[r * cols + c0..r * cols + c0 + n];
                for (j, v) in s.iter().enumerate() {
                    chunk[j * rows + r] = *v;
                }
            }
        });
    dst
}

/// Without `madvise` the copied pages stay resident until the map is dropped.
#[cfg(not(unix))]
fn release_mapped(_t: &TensorRef<'_>, _bytes: usize) {}

/// Drops the pages of `t`'s bytes in the checkpoint's memory map from this process's
/// resident set once they have been copied (a transposed weight owns its values), so
/// a model does not hold every weight twice. Only whole pages inside the tensor.
#[cfg(unix)]
fn release_mapped(t: &TensorRef<'_>, bytes: usize) {
    const PAGE: usize = 4096;
    let (map, start) = t.mapping();
    let first = start.div_ceil(PAGE) * PAGE;
    let end = (start + bytes) / PAGE * PAGE;
    if end > first {
        // SAFETY: the map is a private, read-only mapping of the checkpoint file, and no
        // reference into these pages outlives this call's caller (it copied them into an
        // owned, transposed weight). After MADV_DONTNEED a read of these bytes faults the
        // same contents back from the file; nothing is written through the mapping. The
        // range is inside this tensor, so no other tensor's pages are touched.
        let _ = unsafe {
            map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, first, end - first)
        };
    }
}

/// The CPU backend.
pub struct CpuBackend {
    pool: rayon::ThreadPool,
    threads: usize,
    dtype: WeightDtype,
    /// The bf16 product kernel projections use: set for bf16 weights on a CPU with bf16
    /// dot-product instructions (their weights are then packed at load).
    packed: Option<bf16mm::Kernel>,
}

/// Batches of at most this many rows use the matrix-vector kernels; larger ones `gemm`.
const GEMV_MAX_ROWS: usize = 4;
/// Most values of a bf16 matrix widened to f32 at once for a matrix product (4 MiB of f32).
const WIDEN_BLOCK: usize = 1 << 20;

thread_local! {
    /// Widened bf16 weights for prefill matmuls (grows to the largest matrix once).
    static WIDEN: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// Per-row accumulators of the transposed matrix-vector kernel.
    static GEMV_ACC: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// Attention scores of one query row (grows to the longest context once).
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

impl CpuBackend {
    /// A backend with `threads` workers (0 = one per core) holding weights as `dtype`.
    pub fn new(threads: usize, dtype: WeightDtype) -> Result<Self> {
        let threads = if threads == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        } else {
            threads
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("palr-cpu-{i}"))
            .build()
            .map_err(|e| {
                EngineError::Backend(format!("cannot start {threads} CPU worker threads: {e}"))
            })?;
        let packed = match dtype {
            WeightDtype::Bf16 => bf16mm::best(),
            WeightDtype::F32 => None,
        };
        Ok(CpuBackend {
            pool,
            threads,
            dtype,
            packed,
        })
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    pub fn weight_dtype(&self) -> WeightDtype {
        self.dtype
    }

    /// The bf16 product kernel of the projections, if their weights are packed for one.
    pub fn bf16_kernel(&self) -> Option<bf16mm::Kernel> {
        self.packed
    }

    /// A projection weight `(rows, cols)` from row-major bf16 values, packed.
    fn packed_linear(&self, rows: usize, cols: usize, src: &[bf16]) -> CpuMat {
        CpuMat {
            rows,
            cols,
            data: MatData::Packed(self.install(|| bf16mm::Packed::from_rows(src, rows, cols))),
            transposed: false,
        }
    }

    /// `out (m, n) = x (m, k) · wᵀ` (or `out += acc · x · wᵀ` with `acc = Some(..)`) with
    /// the matrix-vector kernels, parallel over weight rows.
    fn gemv(&self, x: &[f32], m: usize, w: &CpuMat, out: &mut [f32], acc: Option<f32>) {
        if w.transposed {
            return self.gemv_transposed(x, m, w, out, acc);
        }
        let (n, k) = (w.rows, w.cols);
        let out_ptr = SendPtr(out.as_mut_ptr());
        // Enough tasks to balance the threads, each a multiple of the 4-row kernel.
        let blocks = n.div_ceil(simd::ROWS);
        let per_task = blocks.div_ceil(self.threads * 4).max(1) * simd::ROWS;
        let tasks = n.div_ceil(per_task);
        let run = |t: usize| {
            let lo = t * per_task;
            let hi = (lo + per_task).min(n);
            let mut o = lo;
            while o < hi {
                let take = (hi - o).min(simd::ROWS);
                for r in 0..m {
                    let xr = &x[r * k..(r + 1) * k];
                    let vals = match &w.data {
                        MatData::F32(d) => {
                            dot_rows(&d[o * k..(o + take) * k], xr, take, simd::dot4_f32)
                        }
                        MatData::Bf16(d) => {
                            dot_rows(&d[o * k..(o + take) * k], xr, take, simd::dot4_bf16)
                        }
                        MatData::Packed(_) => unreachable!("packed weights take bf16mm"),
                    };
                    for (j, v) in vals.iter().take(take).enumerate() {
                        // SAFETY: (r, o + j) is inside `out` (m * n elements) and each task
                        // writes only the columns lo..hi, so no two tasks write one element.
                        unsafe {
                            let p = out_ptr.get().add(r * n + o + j);
                            *p = match acc {
                                None => *v,
                                Some(s) => *p + s * v,
                            };
                        }
                    }
                }
                o += take;
            }
        };
        if tasks == 1 {
            run(0);
        } else {
            (0..tasks).into_par_iter().for_each(run);
        }
    }

    /// [`Self::gemv`] for a transposed weight `(k, n)`: the weight's rows are split into
    /// one contiguous range per task, each task streams its rows once into its own
    /// partial sums ([`simd::gemv_t`]), and the partials are added up at the end
    /// (buffers thread-local to the caller, reused: no allocation per token).
    fn gemv_transposed(&self, x: &[f32], m: usize, w: &CpuMat, out: &mut [f32], acc: Option<f32>) {
        let (n, k) = (w.rows, w.cols);
        if m == 0 || n == 0 {
            return;
        }
        if k == 0 {
            if acc.is_none() {
                out[..m * n].fill(0.0);
            }
            return;
        }
        if m > simd::ROWS {
            // The kernel shares a weight row among at most ROWS input rows.
            for (xs, os) in x[..m * k]
                .chunks(simd::ROWS * k)
                .zip(out[..m * n].chunks_mut(simd::ROWS * n))
            {
                self.gemv_transposed(xs, xs.len() / k, w, os, acc);
            }
            return;
        }
        let tasks = if k >= 256 { self.threads.max(1) } else { 1 };
        let per_task = k.div_ceil(tasks);
        let part = m * n;
        with_scratch(&GEMV_ACC, tasks * part, |parts| {
            parts.fill(0.0);
            let run = |(t, p): (usize, &mut [f32])| {
                let rows = t * per_task..((t + 1) * per_task).min(k);
                match &w.data {
                    MatData::F32(d) => simd::gemv_t(p, x, m, k, rows, d, n),
                    MatData::Bf16(d) => simd::gemv_t(p, x, m, k, rows, d, n),
                    MatData::Packed(_) => unreachable!("packed weights take bf16mm"),
                }
            };
            if tasks == 1 {
                run((0, parts));
            } else {
                parts.par_chunks_mut(part).enumerate().for_each(run);
            }
            let (first, rest) = parts.split_at(part);
            for (i, o) in out[..part].iter_mut().enumerate() {
                let v = first[i] + rest.chunks(part).map(|p| p[i]).sum::<f32>();
                *o = match acc {
                    None => v,
                    Some(s) => *o + s * v,
                };
            }
        });
    }

    /// `out (rows, n) = x (rows, k) · wᵀ`, or `out += acc · x · wᵀ`.
    fn matmul(&self, x: &[f32], rows: usize, w: &CpuMat, out: &mut [f32], acc: Option<f32>) {
        let (n, k) = (w.rows, w.cols);
        let x = &x[..rows * k];
        let out = &mut out[..rows * n];
        if let MatData::Packed(p) = &w.data {
            let kernel = self.packed.unwrap_or(bf16mm::Kernel::Portable);
            return bf16mm::matmul(kernel, x, rows, p, out, acc, self.threads);
        }
        if rows <= GEMV_MAX_ROWS {
            return self.gemv(x, rows, w, out, acc);
        }
        // rhs = wᵀ (k, n): element (kk, j) at wf[j·k + kk] (row-major w: column stride
        // k, row stride 1) or at wf[kk·n + j] (transposed w: column stride 1, row stride n).
        let (rhs_cs, rhs_rs) = if w.transposed {
            (1, n as isize)
        } else {
            (k as isize, 1)
        };
        let run = |wf: &[f32], out: &mut [f32]| {
            let (read_dst, beta) = match acc {
                None => (false, 1.0),
                Some(s) => (true, s),
            };
            // SAFETY: dst is (rows, n) row-major, lhs (rows, k) row-major, rhs = wᵀ with
            // the strides above; all three slices hold exactly those extents.
            unsafe {
                gemm::gemm(
                    rows,
                    n,
                    k,
                    out.as_mut_ptr(),
                    1,
                    n as isize,
                    read_dst,
                    x.as_ptr(),
                    1,
                    k as isize,
                    wf.as_ptr(),
                    rhs_cs,
                    rhs_rs,
                    1.0,
                    beta,
                    false,
                    false,
                    false,
                    gemm::Parallelism::Rayon(self.threads),
                )
            }
        };
        match &w.data {
            MatData::F32(d) => run(d, out),
            // A large row-major matrix (the LM head: 49k × 576 is 113 MB in f32) is widened
            // a block of its rows (= output columns) at a time, so each thread's scratch
            // stays at WIDEN_BLOCK values instead of a whole f32 copy.
            MatData::Bf16(d) if !w.transposed && n * k > WIDEN_BLOCK => {
                let block = (WIDEN_BLOCK / k).max(1);
                with_scratch(&WIDEN, block * k, |wide| {
                    for j0 in (0..n).step_by(block) {
                        let nb = block.min(n - j0);
                        let wide = &mut wide[..nb * k];
                        wide.par_chunks_mut(1 << 16)
                            .zip(d[j0 * k..(j0 + nb) * k].par_chunks(1 << 16))
                            .for_each(|(dst, src)| simd::bf16_to_f32(src, dst));
                        self.gemm_columns(x, rows, k, wide, nb, out, n, j0, acc);
                    }
                })
            }
            MatData::Bf16(d) => with_scratch(&WIDEN, n * k, |wide| {
                wide.par_chunks_mut(1 << 16)
                    .zip(d.par_chunks(1 << 16))
                    .for_each(|(dst, src)| simd::bf16_to_f32(src, dst));
                run(wide, out)
            }),
            MatData::Packed(_) => unreachable!("handled above"),
        }
    }

    /// `out[:, j0..j0 + nb] (=|+= acc ·) x (rows, k) · wᵀ` for a row-major block `w` of `nb`
    /// rows of a weight whose output has `n` columns (`out` is `(rows, n)` row-major).
    #[allow(clippy::too_many_arguments)]
    fn gemm_columns(
        &self,
        x: &[f32],
        rows: usize,
        k: usize,
        w: &[f32],
        nb: usize,
        out: &mut [f32],
        n: usize,
        j0: usize,
        acc: Option<f32>,
    ) {
        assert!(x.len() >= rows * k && w.len() >= nb * k && j0 + nb <= n);
        assert!(out.len() >= (rows - 1) * n + j0 + nb);
        let (read_dst, beta) = match acc {
            None => (false, 1.0),
            Some(s) => (true, s),
        };
        // SAFETY: dst element (r, c) is out[r·n + j0 + c], r < rows, c < nb: inside `out`
        // (asserted above); lhs (rows, k) and rhs = wᵀ (k, nb: column stride k, row stride
        // 1) lie inside `x` and `w`.
        unsafe {
            gemm::gemm(
                rows,
                nb,
                k,
                out.as_mut_ptr().add(j0),
                1,
                n as isize,
                read_dst,
                x.as_ptr(),
                1,
                k as isize,
                w.as_ptr(),
                k as isize,
                1,
                1.0,
                beta,
                false,
                false,
                false,
                gemm::Parallelism::Rayon(self.threads),
            )
        }
    }
}

/// Dot products of `take <= 4` consecutive rows of `w` with `x`, through the 4-row
/// kernel (a short tail block repeats its last row; the extra results are dropped).
#[inline]
fn dot_rows<T>(
    w: &[T],
    x: &[f32],
    take: usize,
    kernel: fn([&[T]; 4], &[f32]) -> [f32; 4],
) -> [f32; 4] {
    let k = x.len();
    kernel(
        std::array::from_fn(|j| &w[j.min(take - 1) * k..(j.min(take - 1) + 1) * k]),
        x,
    )
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: used only to hand disjoint output ranges to worker threads.
unsafe impl Send for SendPtr {}
// SAFETY: as above.
unsafe impl Sync for SendPtr {}
impl SendPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

fn store_from<T: bytemuck::Pod>(
    t: &TensorRef<'_>,
    zero_copy: Option<&[T]>,
    convert: impl FnOnce() -> Vec<T>,
) -> Store<T> {
    match zero_copy {
        Some(s) => {
            let (map, offset) = t.mapping();
            Store::Mapped {
                map: map.clone(),
                offset,
                len: s.len(),
            }
        }
        None => Store::Owned(convert()),
    }
}

impl Backend for CpuBackend {
    type Buf = Vec<f32>;
    type Mat = CpuMat;

    fn describe(&self) -> String {
        let products = match self.packed {
            Some(k) => format!(", {} bf16 products", k.name()),
            None => String::new(),
        };
        format!(
            "cpu ({:?}, {} threads, {} weights{products})",
            simd::isa(),
            self.threads,
            self.dtype
        )
    }

    fn alloc(&self, len: usize) -> Result<Vec<f32>> {
        let mut v = Vec::new();
        v.try_reserve_exact(len)
            .map_err(|_| EngineError::OutOfMemory(format!("{len} f32 elements")))?;
        v.resize(len, 0.0);
        Ok(v)
    }

    fn upload(&self, data: &[f32]) -> Result<Vec<f32>> {
        Ok(data.to_vec())
    }

    fn load_mat(&self, t: &TensorRef<'_>) -> Result<CpuMat> {
        let [rows, cols] = *t.shape else {
            return Err(EngineError::Backend(format!(
                "tensor {:?} has shape {:?}; a matrix needs two dimensions",
                t.name, t.shape
            )));
        };
        let data = match self.dtype {
            WeightDtype::F32 => MatData::F32(store_from(t, t.as_f32_slice(), || t.to_f32())),
            WeightDtype::Bf16 => MatData::Bf16(store_from(t, t.as_bf16_slice(), || t.to_bf16())),
        };
        debug_assert!(matches!(t.dtype, DType::F32 | DType::F16 | DType::BF16));
        if matches!(
            &data,
            MatData::F32(Store::Owned(_)) | MatData::Bf16(Store::Owned(_))
        ) {
            // Converted (e.g. an f32 checkpoint held in bf16): the mapped bytes were read once.
            release_mapped(t, rows * cols * t.dtype.size());
        }
        Ok(CpuMat {
            rows,
            cols,
            data,
            transposed: false,
        })
    }

    fn load_linear(&self, t: &TensorRef<'_>) -> Result<CpuMat> {
        let [rows, cols] = *t.shape else {
            return Err(EngineError::Backend(format!(
                "tensor {:?} has shape {:?}; a matrix needs two dimensions",
                t.name, t.shape
            )));
        };
        if self.packed.is_some() {
            let m = match t.as_bf16_slice() {
                Some(s) => self.packed_linear(rows, cols, s),
                None => self.packed_linear(rows, cols, &t.to_bf16()),
            };
            release_mapped(t, rows * cols * t.dtype.size());
            return Ok(m);
        }
        let data = self.install(|| match self.dtype {
            WeightDtype::F32 => MatData::F32(Store::Owned(match t.as_f32_slice() {
                Some(s) => transposed(s, rows, cols),
                None => transposed(&t.to_f32(), rows, cols),
            })),
            WeightDtype::Bf16 => MatData::Bf16(Store::Owned(match t.as_bf16_slice() {
                Some(s) => transposed(s, rows, cols),
                None => transposed(&t.to_bf16(), rows, cols),
            })),
        });
        release_mapped(t, rows * cols * t.dtype.size());
        Ok(CpuMat {
            rows,
            cols,
            data,
            transposed: true,
        })
    }

    fn linear_from_f32(&self, rows: usize, cols: usize, data: Vec<f32>) -> Result<CpuMat> {
        if data.len() != rows * cols {
            return Err(EngineError::Backend(format!(
                "matrix of {rows}x{cols} given {} elements",
                data.len()
            )));
        }
        if self.packed.is_some() {
            let src: Vec<bf16> = data.into_iter().map(bf16::from_f32).collect();
            return Ok(self.packed_linear(rows, cols, &src));
        }
        let t = self.install(|| transposed(&data, rows, cols));
        let mut m = CpuMat::from_f32(cols, rows, t, self.dtype);
        (m.rows, m.cols, m.transposed) = (rows, cols, true);
        Ok(m)
    }

    fn download(&self, buf: &Vec<f32>, offset: usize, out: &mut [f32]) -> Result<()> {
        out.copy_from_slice(&buf[offset..offset + out.len()]);
        Ok(())
    }

    fn copy_rows(
        &self,
        src: &Vec<f32>,
        src_row: usize,
        dst: &mut Vec<f32>,
        dst_row: usize,
        rows: usize,
        width: usize,
    ) -> Result<()> {
        dst[dst_row * width..(dst_row + rows) * width]
            .copy_from_slice(&src[src_row * width..(src_row + rows) * width]);
        Ok(())
    }

    fn embed(&self, table: &CpuMat, tokens: &[u32], out: &mut Vec<f32>) -> Result<()> {
        let d = table.cols;
        for (r, &tok) in tokens.iter().enumerate() {
            let tok = tok as usize;
            if tok >= table.rows {
                return Err(EngineError::InvalidToken {
                    token: tok as u32,
                    vocab: table.rows,
                });
            }
            let dst = &mut out[r * d..(r + 1) * d];
            match &table.data {
                MatData::F32(w) => dst.copy_from_slice(&w[tok * d..(tok + 1) * d]),
                MatData::Bf16(w) => simd::bf16_to_f32(&w[tok * d..(tok + 1) * d], dst),
                MatData::Packed(p) => dst
                    .iter_mut()
                    .enumerate()
                    .for_each(|(c, v)| *v = p.get(tok, c).to_f32()),
            }
        }
        Ok(())
    }

    fn rms_norm(
        &self,
        x: &Vec<f32>,
        weight: &Vec<f32>,
        rows: usize,
        dim: usize,
        eps: f32,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let norm = |(xr, or): (&[f32], &mut [f32])| {
            let ss = simd::dot(xr, xr);
            let inv = 1.0 / (ss / dim as f32 + eps).sqrt();
            for ((o, x), w) in or.iter_mut().zip(xr).zip(weight.iter()) {
                *o = w * (x * inv);
            }
        };
        let x = &x[..rows * dim];
        let out = &mut out[..rows * dim];
        if rows >= 16 {
            x.par_chunks(dim)
                .zip(out.par_chunks_mut(dim))
                .for_each(norm);
        } else {
            x.chunks(dim).zip(out.chunks_mut(dim)).for_each(norm);
        }
        Ok(())
    }

    fn linear(
        &self,
        x: &Vec<f32>,
        rows: usize,
        w: &CpuMat,
        bias: Option<&Vec<f32>>,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        self.matmul(x, rows, w, out, None);
        if let Some(b) = bias {
            for row in out[..rows * w.rows].chunks_mut(w.rows) {
                row.iter_mut().zip(b.iter()).for_each(|(o, b)| *o += b);
            }
        }
        Ok(())
    }

    fn linear_acc(
        &self,
        x: &Vec<f32>,
        rows: usize,
        w: &CpuMat,
        scale: f32,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        self.matmul(x, rows, w, out, Some(scale));
        Ok(())
    }

    /// With bf16 weights on a CPU with bf16 dot products, packed as the projections are
    /// (`bf16mm`: both LoRA products then run on AMX / AVX512-BF16 like the base ones; a
    /// rank below 32 is padded with zeros); otherwise in f32, so a small matrix is not
    /// widened again on every product.
    fn lora_mat_from_f32(&self, rows: usize, cols: usize, data: Vec<f32>) -> Result<CpuMat> {
        if data.len() != rows * cols {
            return Err(EngineError::Backend(format!(
                "matrix of {rows}x{cols} given {} elements",
                data.len()
            )));
        }
        if self.packed.is_some() {
            let src: Vec<bf16> = data.into_iter().map(bf16::from_f32).collect();
            return Ok(self.packed_linear(rows, cols, &src));
        }
        Ok(CpuMat::from_f32(rows, cols, data, WeightDtype::F32))
    }

    fn mat_from_f32(&self, rows: usize, cols: usize, data: Vec<f32>) -> Result<CpuMat> {
        if data.len() != rows * cols {
            return Err(EngineError::Backend(format!(
                "matrix of {rows}x{cols} given {} elements",
                data.len()
            )));
        }
        Ok(CpuMat::from_f32(rows, cols, data, self.dtype))
    }

    fn rope_table(
        &self,
        inv_freq: &[f64],
        start: usize,
        rows: usize,
        table: &mut Vec<f32>,
    ) -> Result<()> {
        let half = inv_freq.len();
        for r in 0..rows {
            let pos = (start + r) as f64;
            for (i, f) in inv_freq.iter().enumerate() {
                let (s, c) = (pos * f).sin_cos();
                table[(r * half + i) * 2] = c as f32;
                table[(r * half + i) * 2 + 1] = s as f32;
            }
        }
        Ok(())
    }

    fn rope(
        &self,
        x: &mut Vec<f32>,
        rows: usize,
        n_heads: usize,
        head_dim: usize,
        table: &Vec<f32>,
    ) -> Result<()> {
        let half = head_dim / 2;
        let width = n_heads * head_dim;
        for (r, row) in x[..rows * width].chunks_mut(width).enumerate() {
            let cs = &table[r * half * 2..(r + 1) * half * 2];
            for head in row.chunks_mut(head_dim) {
                let (a, b) = head.split_at_mut(half);
                for i in 0..half {
                    let (c, s) = (cs[2 * i], cs[2 * i + 1]);
                    let (x0, x1) = (a[i], b[i]);
                    a[i] = x0 * c - x1 * s;
                    b[i] = x1 * c + x0 * s;
                }
            }
        }
        Ok(())
    }

    fn kv_store(
        &self,
        k: &Vec<f32>,
        v: &Vec<f32>,
        rows: usize,
        start: usize,
        heads: Heads,
        capacity: usize,
        cache: &mut KvLayer<Self>,
    ) -> Result<()> {
        let hd = heads.head_dim;
        if start + rows > capacity {
            return Err(EngineError::ContextFull {
                needed: start + rows,
                capacity,
            });
        }
        for r in 0..rows {
            for g in 0..heads.n_kv_heads {
                let src = (r * heads.n_kv_heads + g) * hd;
                let dst = (g * capacity + start + r) * hd;
                cache.k[dst..dst + hd].copy_from_slice(&k[src..src + hd]);
                cache.v[dst..dst + hd].copy_from_slice(&v[src..src + hd]);
            }
        }
        Ok(())
    }

    fn attention(
        &self,
        q: &Vec<f32>,
        cache: &KvLayer<Self>,
        rows: usize,
        start: usize,
        heads: Heads,
        capacity: usize,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        attention::causal_gqa(q, &cache.k, &cache.v, rows, start, heads, capacity, out);
        Ok(())
    }

    fn kv_copy_prefix(
        &self,
        src: &KvLayer<Self>,
        dst: &mut KvLayer<Self>,
        len: usize,
        heads: Heads,
        src_capacity: usize,
        dst_capacity: usize,
    ) -> Result<()> {
        let hd = heads.head_dim;
        for g in 0..heads.n_kv_heads {
            let s = g * src_capacity * hd;
            let d = g * dst_capacity * hd;
            dst.k[d..d + len * hd].copy_from_slice(&src.k[s..s + len * hd]);
            dst.v[d..d + len * hd].copy_from_slice(&src.v[s..s + len * hd]);
        }
        Ok(())
    }

    fn silu_mul(&self, gate: &mut Vec<f32>, up: &Vec<f32>, n: usize) -> Result<()> {
        const CHUNK: usize = 1 << 14;
        if n > CHUNK {
            gate[..n]
                .par_chunks_mut(CHUNK)
                .zip(up[..n].par_chunks(CHUNK))
                .for_each(|(g, u)| simd::silu_mul(g, u));
        } else {
            simd::silu_mul(&mut gate[..n], &up[..n]);
        }
        Ok(())
    }

    fn add_assign(&self, x: &mut Vec<f32>, y: &Vec<f32>, n: usize) -> Result<()> {
        x[..n].iter_mut().zip(&y[..n]).for_each(|(a, b)| *a += b);
        Ok(())
    }

    fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.pool.install(f)
    }
}

/// Runs `f` on this thread's scratch vector `key`, grown to at least `len`, taken out of
/// the thread-local while `f` runs: `f` runs parallel work, and while this thread waits
/// rayon may run another job here that wants the same scratch (another session's
/// forward pass); that job then gets a vector of its own instead of a double borrow.
/// The larger vector is kept, so the steady state allocates nothing.
fn with_scratch<T: Clone + Default, R>(
    key: &'static std::thread::LocalKey<RefCell<Vec<T>>>,
    len: usize,
    f: impl FnOnce(&mut [T]) -> R,
) -> R {
    let mut buf = key.with(|b| std::mem::take(&mut *b.borrow_mut()));
    if buf.len() < len {
        buf.resize(len, T::default());
    }
    let r = f(&mut buf[..len]);
    key.with(|b| {
        let mut slot = b.borrow_mut();
        if slot.len() < buf.len() {
            *slot = buf;
        }
    });
    r
}

pub(crate) fn with_scores<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCORES.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < len {
            s.resize(len, 0.0);
        }
        f(&mut s[..len])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `start` after `linear` (acc None: overwritten) or `linear_acc` with scale `acc`.
    fn product(
        b: &CpuBackend,
        x: &Vec<f32>,
        rows: usize,
        w: &CpuMat,
        acc: Option<f32>,
        start: &[f32],
    ) -> Vec<f32> {
        let mut out = start.to_vec();
        match acc {
            None => b.linear(x, rows, w, None, &mut out).unwrap(),
            Some(s) => b.linear_acc(x, rows, w, s, &mut out).unwrap(),
        }
        out
    }

    /// The largest element-wise difference of `a` and `b`.
    fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
        a.iter()
            .zip(b)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max)
    }

    /// A deterministic pseudo-random vector in [-0.5, 0.5).
    pub(super) fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s % 10_000) as f32 / 10_000.0 - 0.5
            })
            .collect()
    }

    #[test]
    fn transposed_weights_give_the_row_major_products() {
        // Shapes off the SIMD widths; 1..=4 rows take the matrix-vector kernels, 5 and 40
        // gemm; plain and accumulating products; f32 and bf16 storage; k above and below
        // the size that splits the transposed kernel's rows among threads.
        for dtype in [WeightDtype::F32, WeightDtype::Bf16] {
            let b = CpuBackend::new(2, dtype).unwrap();
            for &(n, k) in &[(37usize, 300usize), (70, 600), (16, 17)] {
                let w = values(n * k, (n * 31 + k) as u64);
                let plain = b.mat_from_f32(n, k, w.clone()).unwrap();
                let t = b.linear_from_f32(n, k, w.clone()).unwrap();
                // bf16 projections are packed where the CPU has bf16 dot products.
                let packed = b.bf16_kernel().is_some();
                assert_eq!((t.is_transposed(), t.is_packed()), (!packed, packed));
                assert!(!plain.is_transposed() && !plain.is_packed());
                assert_eq!((t.rows(), t.cols()), (n, k));
                for rows in [1usize, 2, 3, 4, 5, 40] {
                    let x = values(rows * k, rows as u64);
                    for acc in [None, Some(0.5f32)] {
                        let start = values(rows * n, 99);
                        let want = product(&b, &x, rows, &plain, acc, &start);
                        let got = product(&b, &x, rows, &t, acc, &start);
                        let err = max_abs_diff(&want, &got);
                        let scale = want.iter().map(|v| v.abs()).fold(0f32, f32::max);
                        // Packed products round the activations to bf16 too (their own
                        // precision test is in bf16mm); the others only reorder sums.
                        let tol = if packed { 1e-2 } else { 1e-5 };
                        assert!(
                            err <= tol * scale.max(1.0),
                            "{dtype} {n}x{k}, {rows} rows, acc {acc:?}: max error {err}"
                        );
                    }
                }
            }
        }
    }

    /// A bf16 matrix over `WIDEN_BLOCK` values (the LM head's case) is widened a block of
    /// rows at a time: the products equal plain f32 ones, plain and accumulating, with a
    /// last block shorter than the others, and the widening scratch stays one block.
    #[test]
    fn large_bf16_matrices_are_multiplied_block_by_block() {
        let (n, k, rows) = (2 * (WIDEN_BLOCK / 384) + 7, 384, 9);
        assert!(n * k > WIDEN_BLOCK && n % (WIDEN_BLOCK / k) != 0);
        let w = values(n * k, 5);
        // bf16 values, so both matrices hold exactly the same numbers.
        let w: Vec<f32> = w.iter().map(|&v| bf16::from_f32(v).to_f32()).collect();
        let b16 = CpuBackend::new(2, WeightDtype::Bf16).unwrap();
        let b32 = CpuBackend::new(2, WeightDtype::F32).unwrap();
        let m16 = b16.mat_from_f32(n, k, w.clone()).unwrap();
        let m32 = b32.mat_from_f32(n, k, w).unwrap();
        let x = values(rows * k, 11);
        for acc in [None, Some(0.5f32)] {
            let start = values(rows * n, 3);
            let want = product(&b32, &x, rows, &m32, acc, &start);
            let got = product(&b16, &x, rows, &m16, acc, &start);
            let err = max_abs_diff(&want, &got);
            assert!(err <= 1e-4, "acc {acc:?}: max error {err}");
        }
        let scratch = WIDEN.with(|w| w.borrow().len());
        assert!(scratch <= WIDEN_BLOCK, "scratch of {scratch} values");
    }
}
