//! What only benchmarks use: device timers, the copy and GEMM ceilings `palr bench gpu`
//! reports, and random device data (the synthetic models of [`super::synthetic`] and the
//! benchmark's inputs). Nothing on the serving path calls these.

use cudarc::driver::PushKernelArg;
use cudarc::driver::result as drv;
use cudarc::driver::sys as drv_sys;

use super::{CudaBackend, CudaBuf, CudaMat, Dtype, EW_THREADS, cfg, drv_err};
use crate::engine::Result;

impl CudaBackend {
    /// Time of the work `f` queues, measured with device events around it.
    pub fn elapsed_ms<R>(&self, f: impl FnOnce(&Self) -> Result<R>) -> Result<(R, f32)> {
        let flags = Some(drv_sys::CUevent_flags::CU_EVENT_DEFAULT);
        let start = self
            .stream
            .record_event(flags)
            .map_err(drv_err("recording an event"))?;
        let r = f(self)?;
        let end = self
            .stream
            .record_event(flags)
            .map_err(drv_err("recording an event"))?;
        let ms = start
            .elapsed_ms(&end)
            .map_err(drv_err("reading event times"))?;
        Ok((r, ms))
    }

    /// Fills `buf`'s current representation with uniform values in
    /// `[offset - scale, offset + scale)` from `seed` (counter-based: the same on any GPU).
    pub fn fill_uniform(
        &self,
        buf: &mut CudaBuf,
        seed: u64,
        scale: f32,
        offset: f32,
    ) -> Result<()> {
        let n = buf.len;
        let grid = self.grid_for(n);
        match buf.live {
            Dtype::F32 => {
                let p = self.f32_out(buf)?;
                // Grid-stride over the n elements of the f32 allocation.
                launch!(self, "fill_uniform_f32", cfg((grid, 1, 1), EW_THREADS, 0); p, n as i64, seed, scale, offset);
            }
            Dtype::Bf16 => {
                let p = self.bf16_out(buf)?;
                // Grid-stride over the n elements of the bf16 allocation.
                launch!(self, "fill_uniform_bf16", cfg((grid, 1, 1), EW_THREADS, 0); p, n as i64, seed, scale, offset);
            }
        }
        Ok(())
    }

    /// A `(rows, cols)` matrix of uniform values in `[-scale, scale)` made on the
    /// device (synthetic weights: no host memory, no file).
    pub fn random_mat(&self, rows: usize, cols: usize, seed: u64, scale: f32) -> Result<CudaMat> {
        let data = self.alloc_bf16_slice(rows * cols)?;
        let p = self.ptr(&data);
        let n = rows * cols;
        // Grid-stride over the rows·cols elements of `data`.
        launch!(self, "fill_uniform_bf16", cfg((self.grid_for(n), 1, 1), EW_THREADS, 0); p, n as i64, seed, scale, 0.0f32);
        Ok(CudaMat { rows, cols, data })
    }

    /// Device-to-device copy of `bytes` bytes from one scratch allocation to
    /// another, timed (the bandwidth ceiling the benchmark reports).
    pub fn copy_bandwidth_ms(&self, bytes: usize, reps: usize) -> Result<Vec<f32>> {
        let n = bytes / 2;
        let src = self.alloc_bf16_slice(n)?;
        let dst = self.alloc_bf16_slice(n)?;
        let (ps, pd) = (self.ptr(&src), self.ptr(&dst));
        let mut times = Vec::with_capacity(reps);
        self.bind()?;
        for _ in 0..reps + 1 {
            let ((), ms) = self.elapsed_ms(|b| {
                // SAFETY: both allocations hold n bf16 values = 2n bytes.
                unsafe { drv::memcpy_dtod_async(pd, ps, 2 * n, b.stream.cu_stream()) }
                    .map_err(drv_err("device-to-device copy"))?;
                Ok(())
            })?;
            times.push(ms);
        }
        times.remove(0); // the first copy warms up
        Ok(times)
    }

    /// Times `reps` products `(m × k) · (n × k)ᵀ` on random bf16 data (the matrix
    /// ceiling the benchmark reports): returns milliseconds per product.
    pub fn gemm_ms(&self, m: usize, n: usize, k: usize, reps: usize) -> Result<Vec<f32>> {
        let w = self.random_mat(n, k, 11, 1.0)?;
        let mut x = self.alloc_bf16(m * k)?;
        self.fill_uniform(&mut x, 12, 1.0, 0.0)?;
        let out = self.alloc_f32(m * n)?;
        let (px, po) = (self.bf16_in(&x, "x")?, self.ptr(&out));
        let mut times = Vec::with_capacity(reps);
        for _ in 0..reps + 1 {
            let ((), ms) = self.elapsed_ms(|b| {
                let mut sh = b.lock();
                b.gemm(&mut sh, px, m, &w, po)
            })?;
            times.push(ms);
        }
        times.remove(0);
        Ok(times)
    }
}
