//! Ops only the tests call, to check the device and the kernels: NaN poisoning (to see
//! elements an op failed to write), matrix download, log-softmax, token log-probabilities,
//! argmax and the tensor-core fragment self-test. Nothing on the serving path calls these.
//!
//! They stay public (not `cfg(test)`) because their callers are the integration tests in
//! `tests/cuda_ops.rs` and `tests/cuda_model.rs`, a separate crate that sees only the
//! library's public items; the kernels behind them (`kernels/softmax.cu`, `mma_selftest`)
//! stay in the kernel list so the compile tests keep checking them.

use cudarc::driver::PushKernelArg;
use half::bf16;

use super::{
    CudaBackend, CudaBuf, CudaMat, EW_THREADS, alloc_err, cfg, check_len, drv_err, to_i32,
};
use crate::engine::{EngineError, Result};

impl CudaBackend {
    /// Fills every element of both of `buf`'s representations with NaN (allocating
    /// the missing one), so a test can see any element an op failed to write.
    pub fn poison(&self, buf: &mut CudaBuf) -> Result<()> {
        let live = buf.live;
        let n = buf.len;
        let p = self.f32_out(buf)?;
        let grid = self.grid_for(n);
        // Grid-stride over n elements of the f32 allocation (len n).
        launch!(self, "fill_f32", cfg((grid, 1, 1), EW_THREADS, 0); p, f32::NAN, n as i64);
        let p = self.bf16_out(buf)?;
        // Grid-stride over n elements of the bf16 allocation (len n).
        launch!(self, "fill_bf16", cfg((grid, 1, 1), EW_THREADS, 0); p, f32::NAN, n as i64);
        buf.live = live;
        Ok(())
    }

    /// Downloads a matrix as f32 (tests).
    pub fn download_mat(&self, m: &CudaMat) -> Result<Vec<f32>> {
        let mut host = vec![bf16::ZERO; m.rows * m.cols];
        self.stream
            .memcpy_dtoh(&m.data.slice(0..m.rows * m.cols), &mut host)
            .map_err(drv_err("downloading a matrix"))?;
        self.synchronize()?;
        Ok(host.iter().map(|x| x.to_f32()).collect())
    }

    /// `out[r, :] = log_softmax(logits[r, :])` for `rows` rows of `vocab`.
    pub fn log_softmax(
        &self,
        logits: &CudaBuf,
        rows: usize,
        vocab: usize,
        out: &mut CudaBuf,
    ) -> Result<()> {
        check_len(logits.len, rows * vocab, "log_softmax input")?;
        check_len(out.len, rows * vocab, "log_softmax output")?;
        let x = self.f32_in(logits, "log_softmax input")?;
        let o = self.f32_out(out)?;
        // One block per row; each row's vocab values lie inside both buffers (checked).
        launch!(self, "log_softmax_f32", cfg((rows as u32, 1, 1), 1024, 0); x, o, to_i32(vocab, "vocab")?);
        Ok(())
    }

    /// `log p(targets[r])` under row `r` of `logits` (`rows = targets.len()` rows of `vocab`).
    pub fn token_logprobs(
        &self,
        logits: &CudaBuf,
        vocab: usize,
        targets: &[u32],
    ) -> Result<Vec<f32>> {
        let rows = targets.len();
        check_len(logits.len, rows * vocab, "token_logprobs input")?;
        if let Some(&bad) = targets.iter().find(|&&t| t as usize >= vocab) {
            return Err(EngineError::InvalidToken { token: bad, vocab });
        }
        if rows == 0 {
            return Ok(Vec::new());
        }
        let x = self.f32_in(logits, "token_logprobs input")?;
        let out = self.alloc_f32(rows)?;
        let o = self.ptr(&out);
        {
            let mut sh = self.lock();
            let t = self.upload_u32(&mut sh, targets)?;
            // One block per row; targets were checked < vocab; `out` holds `rows` values.
            launch!(self, "token_logprob_f32", cfg((rows as u32, 1, 1), 1024, 0); x, t, o, to_i32(vocab, "vocab")?);
        }
        let mut host = vec![0f32; rows];
        self.stream
            .memcpy_dtoh(&out.slice(0..rows), &mut host)
            .map_err(drv_err("downloading log-probabilities"))?;
        self.synchronize()?;
        Ok(host)
    }

    /// The first index of each row's largest value, and that value (NaN never wins).
    pub fn argmax(&self, logits: &CudaBuf, rows: usize, vocab: usize) -> Result<Vec<(u32, f32)>> {
        check_len(logits.len, rows * vocab, "argmax input")?;
        if rows == 0 {
            return Ok(Vec::new());
        }
        let x = self.f32_in(logits, "argmax input")?;
        let idx = self
            .stream
            .alloc_zeros::<i32>(rows)
            .map_err(alloc_err(format!("{rows} indices")))?;
        let val = self.alloc_f32(rows)?;
        let (pi, pv) = (self.ptr(&idx), self.ptr(&val));
        // One block per row; `idx` and `val` hold `rows` values each.
        launch!(self, "argmax_f32", cfg((rows as u32, 1, 1), 1024, 0); x, to_i32(vocab, "vocab")?, pi, pv);
        let mut hi = vec![0i32; rows];
        let mut hv = vec![0f32; rows];
        self.stream
            .memcpy_dtoh(&idx, &mut hi)
            .map_err(drv_err("downloading argmax"))?;
        self.stream
            .memcpy_dtoh(&val, &mut hv)
            .map_err(drv_err("downloading argmax"))?;
        self.synchronize()?;
        Ok(hi.into_iter().map(|i| i as u32).zip(hv).collect())
    }

    /// Runs the tensor-core fragment self-test: `d (16×8) = a (16×16) · b (16×8)`,
    /// all row-major (a and b rounded to bf16). Checks the layout the prefill
    /// attention kernel relies on.
    pub fn mma_selftest(&self, a: &[f32], b: &[f32]) -> Result<Vec<f32>> {
        if a.len() != 256 || b.len() != 128 {
            return Err(EngineError::Invalid(
                "mma_selftest takes 16×16 and 16×8 values".into(),
            ));
        }
        let ab: Vec<bf16> = a.iter().map(|&x| bf16::from_f32(x)).collect();
        let bb: Vec<bf16> = b.iter().map(|&x| bf16::from_f32(x)).collect();
        let da = self.stream.clone_htod(&ab).map_err(drv_err("upload"))?;
        let db = self.stream.clone_htod(&bb).map_err(drv_err("upload"))?;
        let dd = self.alloc_f32(128)?;
        let (pa, pb, pd) = (self.ptr(&da), self.ptr(&db), self.ptr(&dd));
        // One warp; a, b, d hold 256, 128 and 128 values.
        launch!(self, "mma_selftest", cfg((1, 1, 1), 32, 0); pa, pb, pd);
        let mut out = vec![0f32; 128];
        self.stream
            .memcpy_dtoh(&dd, &mut out)
            .map_err(drv_err("download"))?;
        self.synchronize()?;
        Ok(out)
    }
}
