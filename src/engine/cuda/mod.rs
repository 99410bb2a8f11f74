//! The CUDA backend: palr's LLaMA on one NVIDIA GPU (compute capability 8.0+).
//!
//! Nothing CUDA is needed to build palr: the driver, NVRTC and cuBLAS are opened
//! at run time ([`loader`]), and a machine without them gets an error from
//! [`CudaBackend::new`] ("no CUDA driver found: ..."), never a panic.
//!
//! Numbers on the device:
//! - weights: bf16 ([`CudaMat`]), converted once at load;
//! - the residual stream and every op's f32 output (projections, RoPE, norms'
//!   inputs): f32;
//! - the inputs of the projections (RMSNorm output, SwiGLU output, attention
//!   output): bf16, written by the op that produces them, because cuBLAS takes
//!   both operands of a product in one type;
//! - the KV cache: bf16 ([`Backend::alloc_kv`]).
//!
//! A [`CudaBuf`] therefore holds its values in f32 or bf16; the op that writes a
//! buffer decides which, each op says which it accepts, and [`Backend::download`]
//! widens to f32. The bf16 copy of a buffer is allocated the first time an op
//! writes bf16 into it (once per session buffer, in its first forward pass).
//!
//! Kernels (`kernels/*.cu`) are compiled by NVRTC for the device's architecture
//! when the first backend is created and cached for the process ([`nvrtc`]);
//! dense projections go through cuBLAS (`cublasGemmEx`, bf16 in, f32 accumulate
//! and out). All work of one backend is queued on one stream, in call order;
//! sessions on different threads share it, and ops that use the backend's
//! scratch memory or cuBLAS handle queue their work under one lock, so the stream
//! order keeps them apart. Downloads synchronise the stream and report any error
//! a kernel raised since the last one.
//!
//! Set `PALR_CUDA_SYNC_CHECK=1` to synchronise after every launch, so a faulting
//! kernel is named (slow; for debugging), and `PALR_CUDA_ATTENTION=split` to run
//! prefill attention on the split-sequence kernel instead of the tensor-core one.

/// Launches kernel `$name` of `$self` with `$cfg` and the arguments (each kept
/// alive until the launch).
macro_rules! launch {
    ($self:expr, $name:expr, $cfg:expr; $($arg:expr),* $(,)?) => {{
        let f = $self.kernels.get($name)?;
        let mut b = $self.stream.launch_builder(f);
        $(
            let a = $arg;
            b.arg(&a);
        )*
        // SAFETY: the caller checked, in the comment at the call site, that the
        // grid stays inside every buffer passed and that the argument list matches
        // the kernel's signature in kernels/*.cu.
        unsafe { b.launch($cfg) }.map_err(drv_err(format!("launching {}", $name)))?;
        $self.after_launch($name)?;
    }};
}

mod bench;
mod diagnostics;
mod kernels;
pub mod loader;
pub mod lora;
pub mod nvrtc;
pub mod synthetic;

use std::sync::{Arc, Mutex, MutexGuard};

use cudarc::cublas::{CudaBlas, sys as blas_sys};
use cudarc::driver::{
    CudaContext, CudaSlice, CudaStream, DevicePtr, DriverError, LaunchConfig, PushKernelArg,
    result as drv, sys as drv_sys,
};
use half::bf16;

use super::backend::{Backend, Heads, KvLayer};
use super::{EngineError, Result};
use crate::model::TensorRef;

pub use kernels::{
    DECODE_HEAD_DIMS, DECODE_MAX_GROUP, FILES, KernelFile, Kernels, PREFILL_HEAD_DIMS,
};
pub use lora::{LoraAdapter, LoraSegment};

/// Errors of the CUDA backend.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    /// The driver library cannot be opened (no NVIDIA driver on this machine).
    #[error("no CUDA driver found: {0}")]
    NoDriver(String),
    /// The driver loads but reports no usable device.
    #[error("no CUDA device: {0}")]
    NoDevice(String),
    #[error("CUDA library {lib} not found: {detail}")]
    MissingLibrary { lib: &'static str, detail: String },
    #[error("CUDA: {context}: {source}")]
    Driver {
        context: String,
        #[source]
        source: DriverError,
    },
    #[error("cuBLAS: {0}")]
    Blas(String),
    #[error("NVRTC could not compile {file} ({arch}):\n{log}")]
    Compile {
        file: String,
        arch: String,
        log: String,
    },
    #[error("NVRTC: {0}")]
    Nvrtc(String),
    #[error("not supported by the CUDA backend: {0}")]
    Unsupported(String),
    #[error("{0}")]
    Invalid(String),
}

impl CudaError {
    /// True when the machine simply has no CUDA (no driver, or no device): the
    /// case GPU tests skip rather than fail.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, CudaError::NoDriver(_) | CudaError::NoDevice(_))
    }
}

fn drv_err(context: impl Into<String>) -> impl FnOnce(DriverError) -> CudaError {
    let context = context.into();
    move |source| CudaError::Driver { context, source }
}

/// Maps an allocation failure to [`EngineError::OutOfMemory`].
fn alloc_err(what: String) -> impl FnOnce(DriverError) -> EngineError {
    move |e| {
        if e.0 == drv_sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY {
            EngineError::OutOfMemory(format!("{what} on the GPU"))
        } else {
            CudaError::Driver {
                context: format!("allocating {what}"),
                source: e,
            }
            .into()
        }
    }
}

/// Element type of a device buffer's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    F32,
    Bf16,
}

/// A device buffer of `len` values, held in f32 or bf16 (see the module docs).
pub struct CudaBuf {
    len: usize,
    f32: Option<CudaSlice<f32>>,
    bf16: Option<CudaSlice<bf16>>,
    live: Dtype,
}

impl CudaBuf {
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The type the values are currently held in.
    pub fn dtype(&self) -> Dtype {
        self.live
    }
}

/// A weight matrix `(rows, cols)`, row-major, bf16 on the device.
pub struct CudaMat {
    rows: usize,
    cols: usize,
    data: CudaSlice<bf16>,
}

impl CudaMat {
    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn cols(&self) -> usize {
        self.cols
    }
}

/// What the backend found.
#[derive(Debug, Clone)]
pub struct DeviceInfo {
    pub ordinal: usize,
    pub name: String,
    /// Compute capability, e.g. (9, 0).
    pub cc: (i32, i32),
    pub multiprocessors: u32,
    pub l2_bytes: usize,
    pub total_mem: usize,
    /// The driver's CUDA version, e.g. 13000 for 13.0.
    pub driver_version: i32,
    pub nvrtc_version: (i32, i32),
    /// The architecture the kernels were built for and how (CUBIN or PTX).
    pub kernel_arch: u32,
    pub kernel_output: nvrtc::Output,
}

/// Opens the driver and counts devices: `Err` with [`CudaError::is_unavailable`]
/// when the machine has no CUDA at all.
pub fn device_count() -> Result<usize, CudaError> {
    loader::load(loader::DRIVER).map_err(CudaError::NoDriver)?;
    match drv::init() {
        Ok(()) => {}
        Err(e) if e.0 == drv_sys::CUresult::CUDA_ERROR_NO_DEVICE => {
            return Err(CudaError::NoDevice(format!(
                "the driver reports no device ({e})"
            )));
        }
        Err(e) => return Err(drv_err("cuInit")(e)),
    }
    let n = drv::device::get_count().map_err(drv_err("cuDeviceGetCount"))?;
    if n <= 0 {
        return Err(CudaError::NoDevice("the driver reports 0 devices".into()));
    }
    Ok(n as usize)
}

/// Scratch memory of one backend (grown to the largest request, then reused).
#[derive(Default)]
struct Scratch {
    /// Projection inputs converted to bf16.
    bf16: Option<CudaSlice<bf16>>,
    /// Attention partial results.
    f32: Option<CudaSlice<f32>>,
    /// Token ids and other small integer tables.
    u32: Option<CudaSlice<u32>>,
}

/// State used under the backend's lock: the cuBLAS handle and scratch.
struct Shared {
    blas: CudaBlas,
    scratch: Scratch,
}

/// The CUDA backend: one device, one stream.
pub struct CudaBackend {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    kernels: Kernels,
    shared: Mutex<Shared>,
    info: DeviceInfo,
    sync_check: bool,
    /// Use the tensor-core prefill kernel where it applies (else the split kernel).
    flash: bool,
}

/// Rows above which attention uses the tensor-core prefill kernel (where the
/// head size has one).
const FLASH_MIN_ROWS: usize = 8;
/// Threads per block of the grid-stride element-wise kernels.
const EW_THREADS: u32 = 256;

fn cfg(grid: (u32, u32, u32), block: u32, smem: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: grid,
        block_dim: (block, 1, 1),
        shared_mem_bytes: smem,
    }
}

fn to_i32(v: usize, what: &str) -> Result<i32, CudaError> {
    i32::try_from(v)
        .map_err(|_| CudaError::Invalid(format!("{what} = {v} exceeds the kernels' 32-bit range")))
}

fn check_len(buf_len: usize, need: usize, what: &str) -> Result<(), CudaError> {
    if need > buf_len {
        return Err(CudaError::Invalid(format!(
            "{what}: needs {need} elements, the buffer holds {buf_len}"
        )));
    }
    Ok(())
}

impl CudaBackend {
    /// Opens device `ordinal`: loads the driver, compiles (or reuses) the kernels
    /// for its architecture and opens cuBLAS.
    pub fn new(ordinal: usize) -> Result<Self, CudaError> {
        let count = device_count()?;
        if ordinal >= count {
            return Err(CudaError::Invalid(format!(
                "cuda:{ordinal} requested, the driver reports {count} device(s) (cuda:0..cuda:{})",
                count - 1
            )));
        }
        let ctx = CudaContext::new(ordinal)
            .map_err(drv_err(format!("creating a context on cuda:{ordinal}")))?;
        // One stream carries all work, so cudarc's per-buffer event tracking (made
        // for several streams) is only overhead. Buffers made from here on skip it.
        // SAFETY: called before any buffer exists; all work goes to `stream`.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(drv_err("creating a stream"))?;

        let cc = ctx
            .compute_capability()
            .map_err(drv_err("reading the compute capability"))?;
        let name = ctx.name().map_err(drv_err("reading the device name"))?;
        if cc.0 < 8 {
            return Err(CudaError::Unsupported(format!(
                "{name} (cuda:{ordinal}) has compute capability {}.{}; palr's kernels need 8.0 or newer \
                 (bf16 tensor cores)",
                cc.0, cc.1
            )));
        }
        let arch = (cc.0 * 10 + cc.1) as u32;
        let (kernel_arch, kernel_output) = nvrtc::target_for(arch)?;
        let images = nvrtc::images(kernel_arch, kernel_output)?;
        let kernels = Kernels::load(&ctx, &images)?;

        for lib in [loader::CUBLAS_LT, loader::CUBLAS] {
            loader::load(lib).map_err(|detail| CudaError::MissingLibrary { lib, detail })?;
        }
        let blas = CudaBlas::new(stream.clone())
            .map_err(|e| CudaError::Blas(format!("creating a handle: {e:?}")))?;

        let attr = |a| {
            ctx.attribute(a)
                .map_err(drv_err("reading a device attribute"))
        };
        let multiprocessors =
            attr(drv_sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)? as u32;
        let l2_bytes =
            attr(drv_sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE)? as usize;
        let total_mem = ctx
            .total_mem()
            .map_err(drv_err("reading the memory size"))?;
        let mut driver_version = 0;
        // SAFETY: valid out-pointer; the driver is loaded and initialised.
        unsafe { drv_sys::cuDriverGetVersion(&mut driver_version) }
            .result()
            .map_err(drv_err("cuDriverGetVersion"))?;
        let info = DeviceInfo {
            ordinal,
            name,
            cc,
            multiprocessors,
            l2_bytes,
            total_mem,
            driver_version,
            nvrtc_version: nvrtc::version()?,
            kernel_arch,
            kernel_output,
        };
        let sync_check = std::env::var("PALR_CUDA_SYNC_CHECK").is_ok_and(|v| v == "1");
        let flash = std::env::var("PALR_CUDA_ATTENTION").as_deref() != Ok("split");
        Ok(CudaBackend {
            ctx,
            stream,
            kernels,
            shared: Mutex::new(Shared {
                blas,
                scratch: Scratch::default(),
            }),
            info,
            sync_check,
            flash,
        })
    }

    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    /// Whether prefill attention uses the tensor-core kernel (the default) or the
    /// split-sequence kernel for every row count (`PALR_CUDA_ATTENTION=split` at
    /// start-up; a fallback, and a second implementation to check against).
    pub fn set_flash_attention(&mut self, on: bool) {
        self.flash = on;
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// Waits for all queued work and reports any error it raised.
    pub fn synchronize(&self) -> Result<(), CudaError> {
        self.stream.synchronize().map_err(drv_err(
            "waiting for queued GPU work (a kernel failed; PALR_CUDA_SYNC_CHECK=1 names it)",
        ))?;
        self.ctx
            .check_err()
            .map_err(drv_err("an earlier asynchronous CUDA call"))
    }

    fn after_launch(&self, name: &str) -> Result<(), CudaError> {
        if self.sync_check {
            self.stream
                .synchronize()
                .map_err(drv_err(format!("kernel {name} failed")))?;
        }
        Ok(())
    }

    /// Makes the backend's context current on this thread (needed before raw
    /// driver and cuBLAS calls; cudarc's own calls do it themselves).
    fn bind(&self) -> Result<(), CudaError> {
        self.ctx
            .bind_to_thread()
            .map_err(drv_err("making the context current"))
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn grid_for(&self, n: usize) -> u32 {
        let blocks = n.div_ceil(EW_THREADS as usize).max(1);
        blocks.min(self.info.multiprocessors as usize * 16) as u32
    }

    fn ptr<T>(&self, s: &CudaSlice<T>) -> u64 {
        // Event tracking is off (see `new`), so the guard records nothing.
        let (p, _guard) = s.device_ptr(&self.stream);
        p
    }

    // --- buffers -------------------------------------------------------------

    fn alloc_f32(&self, len: usize) -> Result<CudaSlice<f32>> {
        self.stream
            .alloc_zeros::<f32>(len.max(1))
            .map_err(alloc_err(format!("{len} f32 values")))
    }

    fn alloc_bf16_slice(&self, len: usize) -> Result<CudaSlice<bf16>> {
        self.stream
            .alloc_zeros::<bf16>(len.max(1))
            .map_err(alloc_err(format!("{len} bf16 values")))
    }

    /// A zeroed buffer holding bf16 values (e.g. bf16 attention inputs for benchmarks).
    pub fn alloc_bf16(&self, len: usize) -> Result<CudaBuf> {
        Ok(CudaBuf {
            len,
            f32: None,
            bf16: Some(self.alloc_bf16_slice(len)?),
            live: Dtype::Bf16,
        })
    }

    /// Device pointer of `buf`'s f32 values; an error if it holds bf16.
    fn f32_in(&self, buf: &CudaBuf, what: &str) -> Result<u64> {
        match (buf.live, &buf.f32) {
            (Dtype::F32, Some(s)) => Ok(self.ptr(s)),
            _ => Err(CudaError::Invalid(format!(
                "{what} must hold f32 values on the CUDA backend (it holds {:?})",
                buf.live
            ))
            .into()),
        }
    }

    /// Device pointer of `buf`'s bf16 values; an error if it holds f32.
    fn bf16_in(&self, buf: &CudaBuf, what: &str) -> Result<u64> {
        match (buf.live, &buf.bf16) {
            (Dtype::Bf16, Some(s)) => Ok(self.ptr(s)),
            _ => Err(CudaError::Invalid(format!(
                "{what} must hold bf16 values on the CUDA backend (it holds {:?})",
                buf.live
            ))
            .into()),
        }
    }

    /// Makes `buf` hold f32 values from now on; returns their device pointer.
    fn f32_out(&self, buf: &mut CudaBuf) -> Result<u64> {
        if buf.f32.is_none() {
            buf.f32 = Some(self.alloc_f32(buf.len)?);
        }
        buf.live = Dtype::F32;
        Ok(self.ptr(buf.f32.as_ref().expect("allocated above")))
    }

    /// Makes `buf` hold bf16 values from now on; returns their device pointer.
    fn bf16_out(&self, buf: &mut CudaBuf) -> Result<u64> {
        if buf.bf16.is_none() {
            buf.bf16 = Some(self.alloc_bf16_slice(buf.len)?);
        }
        buf.live = Dtype::Bf16;
        Ok(self.ptr(buf.bf16.as_ref().expect("allocated above")))
    }

    /// A `(rows, cols)` matrix from host values, rounded to bf16 (the same rounding
    /// as the CPU backend's bf16 weights).
    pub fn mat_from_f32(&self, rows: usize, cols: usize, data: &[f32]) -> Result<CudaMat> {
        if data.len() != rows * cols {
            return Err(EngineError::Invalid(format!(
                "a ({rows}, {cols}) matrix needs {} values, got {}",
                rows * cols,
                data.len()
            )));
        }
        let host: Vec<bf16> = data.iter().map(|&x| bf16::from_f32(x)).collect();
        self.mat_from_bf16(rows, cols, &host)
    }

    fn mat_from_bf16(&self, rows: usize, cols: usize, host: &[bf16]) -> Result<CudaMat> {
        let mut data = self.alloc_bf16_slice(rows * cols)?;
        self.stream
            .memcpy_htod(host, &mut data)
            .map_err(drv_err("uploading a weight matrix"))?;
        Ok(CudaMat { rows, cols, data })
    }

    /// Copies `data` to the backend's integer scratch and returns its device pointer.
    fn upload_u32(&self, sh: &mut Shared, data: &[u32]) -> Result<u64> {
        let s = &mut sh.scratch.u32;
        if s.as_ref().is_none_or(|s| s.len() < data.len()) {
            *s = Some(
                self.stream
                    .alloc_zeros::<u32>(data.len().max(1024))
                    .map_err(alloc_err(format!("{} u32 values", data.len())))?,
            );
        }
        let s = s.as_mut().expect("allocated above");
        self.stream
            .memcpy_htod(data, &mut s.slice_mut(0..data.len()))
            .map_err(drv_err("uploading token ids"))?;
        Ok(self.ptr(s))
    }

    fn scratch_bf16(&self, sh: &mut Shared, len: usize) -> Result<u64> {
        let s = &mut sh.scratch.bf16;
        if s.as_ref().is_none_or(|s| s.len() < len) {
            *s = Some(self.alloc_bf16_slice(len)?);
        }
        Ok(self.ptr(s.as_ref().expect("allocated above")))
    }

    fn scratch_f32(&self, sh: &mut Shared, len: usize) -> Result<u64> {
        let s = &mut sh.scratch.f32;
        if s.as_ref().is_none_or(|s| s.len() < len) {
            *s = Some(self.alloc_f32(len)?);
        }
        Ok(self.ptr(s.as_ref().expect("allocated above")))
    }

    /// `out (rows, n) = x (rows, k) · wᵀ` through cuBLAS with bf16 inputs.
    fn gemm(&self, sh: &mut Shared, x_bf16: u64, rows: usize, w: &CudaMat, out: u64) -> Result<()> {
        self.gemm_scaled(sh, x_bf16, rows, w, out, 1.0, 0.0)
    }

    /// `out = alpha · x·wᵀ + beta · out` (f32 `out`, bf16 operands).
    #[allow(clippy::too_many_arguments)]
    fn gemm_scaled(
        &self,
        sh: &mut Shared,
        x_bf16: u64,
        rows: usize,
        w: &CudaMat,
        out: u64,
        alpha: f32,
        beta: f32,
    ) -> Result<()> {
        let (n, k) = (w.rows, w.cols);
        self.bind()?;
        // Column-major view: outᵀ (n × rows) = W (k × n, transposed) · xᵀ (k × rows).
        // SAFETY: W holds n·k bf16 values (lda = k), x holds rows·k bf16 values
        // (ldb = k) and out holds rows·n f32 values (ldc = n), all checked by the
        // caller; alpha and beta are host scalars (the default pointer mode).
        unsafe {
            cudarc::cublas::result::gemm_ex(
                *sh.blas.handle(),
                blas_sys::cublasOperation_t::CUBLAS_OP_T,
                blas_sys::cublasOperation_t::CUBLAS_OP_N,
                to_i32(n, "out_features")?,
                to_i32(rows, "rows")?,
                to_i32(k, "in_features")?,
                (&alpha as *const f32).cast(),
                self.ptr(&w.data) as *const std::ffi::c_void,
                blas_sys::cudaDataType::CUDA_R_16BF,
                k as i32,
                x_bf16 as *const std::ffi::c_void,
                blas_sys::cudaDataType::CUDA_R_16BF,
                k as i32,
                (&beta as *const f32).cast(),
                out as *mut std::ffi::c_void,
                blas_sys::cudaDataType::CUDA_R_32F,
                n as i32,
                blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| CudaError::Blas(format!("cublasGemmEx ({rows}×{k})·({n}×{k})ᵀ: {e:?}")))?;
        self.after_launch("cublasGemmEx")?;
        Ok(())
    }

    /// Attention on explicit buffers, for the benchmark (the same dispatch as
    /// [`Backend::attention`]).
    #[allow(clippy::too_many_arguments)]
    fn attention_impl(
        &self,
        q: &CudaBuf,
        cache: &KvLayer<Self>,
        rows: usize,
        start: usize,
        heads: Heads,
        capacity: usize,
        out: &mut CudaBuf,
    ) -> Result<()> {
        let Heads {
            n_heads,
            n_kv_heads,
            head_dim: hd,
        } = heads;
        if rows == 0 {
            return Ok(());
        }
        if n_kv_heads == 0 || !n_heads.is_multiple_of(n_kv_heads) {
            return Err(EngineError::Invalid(format!(
                "{n_heads} query heads cannot share {n_kv_heads} KV heads evenly"
            )));
        }
        if start + rows > capacity {
            return Err(EngineError::ContextFull {
                needed: start + rows,
                capacity,
            });
        }
        check_len(q.len, rows * n_heads * hd, "attention queries")?;
        check_len(out.len, rows * n_heads * hd, "attention output")?;
        check_len(
            cache.k.len,
            n_kv_heads * capacity * hd,
            "attention key cache",
        )?;
        check_len(
            cache.v.len,
            n_kv_heads * capacity * hd,
            "attention value cache",
        )?;
        let kc = self.bf16_in(&cache.k, "the key cache (allocate it with alloc_kv)")?;
        let vc = self.bf16_in(&cache.v, "the value cache (allocate it with alloc_kv)")?;
        let (qp, q_ty) = match q.live {
            Dtype::F32 => (self.f32_in(q, "queries")?, "f32"),
            Dtype::Bf16 => (self.bf16_in(q, "queries")?, "bf16"),
        };
        let o = self.bf16_out(out)?;
        let scale_log2 = std::f32::consts::LOG2_E / (hd as f32).sqrt();
        let (rows_i, start_i, nh, nkv, cap) = (
            to_i32(rows, "rows")?,
            to_i32(start, "start")?,
            to_i32(n_heads, "n_heads")?,
            to_i32(n_kv_heads, "n_kv_heads")?,
            to_i32(capacity, "capacity")?,
        );
        let group = n_heads / n_kv_heads;

        if self.flash && rows > FLASH_MIN_ROWS && PREFILL_HEAD_DIMS.contains(&hd) {
            let name = format!("attn_prefill_hd{hd}_{q_ty}_bf16");
            let grid = (rows.div_ceil(64) as u32, n_heads as u32, 1);
            // Each block reads query rows < rows of one head, cache positions
            // < start + rows <= capacity of its KV head, and writes only rows < rows:
            // all inside the buffers checked above.
            launch!(self, name.as_str(), cfg(grid, 128, 0); qp, kc, vc, o, rows_i, start_i, nh, nkv, cap, scale_log2);
            return Ok(());
        }

        if !DECODE_HEAD_DIMS.contains(&hd) {
            return Err(CudaError::Unsupported(format!(
                "attention with head_dim {hd} (kernels exist for {DECODE_HEAD_DIMS:?})"
            ))
            .into());
        }
        if group > DECODE_MAX_GROUP {
            return Err(CudaError::Unsupported(format!(
                "{group} query heads per KV head (at most {DECODE_MAX_GROUP})"
            ))
            .into());
        }
        let plan = split_plan(
            rows,
            start,
            n_kv_heads,
            group,
            hd,
            self.info.multiprocessors as usize,
        );
        let name = format!("attn_decode_hd{hd}_{q_ty}");
        let mut sh = self.lock();
        let (po, pml) = if plan.splits > 1 {
            let n_o = rows * n_heads * plan.splits * hd;
            let n_ml = rows * n_heads * plan.splits * 2;
            let base = self.scratch_f32(&mut sh, n_o + n_ml)?;
            (base, base + 4 * n_o as u64)
        } else {
            (0u64, 0u64) // unused with one split
        };
        let grid = (n_kv_heads as u32, plan.splits as u32, rows as u32);
        // Block (g, s, r) reads query row r's heads of KV head g, cache positions
        // [s·chunk, min((s+1)·chunk, start+r+1)) < capacity, and writes row r's
        // output (one split) or its partial slot s < splits (scratch sized above).
        launch!(self, name.as_str(), cfg(grid, 128, plan.smem_bytes);
            qp, kc, vc, o, po, pml, start_i, nh, nkv, cap,
            plan.chunk as i32, plan.splits as i32, scale_log2);
        if plan.splits > 1 {
            // One block per (row, head) with head_dim threads: reads its splits'
            // partials and writes its head_dim outputs.
            launch!(self, "attn_merge_bf16", cfg(((rows * n_heads) as u32, 1, 1), hd as u32, 0);
                po, pml, o, plan.splits as i32, hd as i32);
        }
        Ok(())
    }
}

/// How the split-sequence attention kernel divides the keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitPlan {
    pub splits: usize,
    /// Keys per split (a multiple of 16).
    pub chunk: usize,
    pub smem_bytes: u32,
}

/// Splits of the keys for `rows` query rows at positions `start..`: enough blocks
/// to fill the device (about four per multiprocessor: a block has only 128
/// threads, and the kernel is bound by memory latency), at least 64 keys each,
/// and chunks small enough for 48 KiB of shared memory.
pub fn split_plan(
    rows: usize,
    start: usize,
    n_kv: usize,
    group: usize,
    hd: usize,
    sms: usize,
) -> SplitPlan {
    const SMEM_LIMIT: usize = 48 * 1024;
    let kv_len = start + rows;
    // q (group·hd floats) and (m, l) per head; the scores (group·chunk) come on top.
    let fixed = group * hd + 2 * group;
    let chunk_max = ((SMEM_LIMIT / 4 - fixed) / group / 16 * 16).clamp(16, 1024);
    let need_for_smem = kv_len.div_ceil(chunk_max);
    let base_blocks = (n_kv * rows).max(1);
    let want = (4 * sms).div_ceil(base_blocks).max(1);
    let splits = need_for_smem.max(want.min(kv_len.div_ceil(64)));
    let chunk = kv_len.div_ceil(splits).div_ceil(16) * 16;
    let splits = kv_len.div_ceil(chunk);
    let smem_bytes = (4 * (fixed + group * chunk)) as u32;
    SplitPlan {
        splits,
        chunk,
        smem_bytes,
    }
}

impl Backend for CudaBackend {
    type Buf = CudaBuf;
    type Mat = CudaMat;

    fn describe(&self) -> String {
        let i = &self.info;
        format!(
            "cuda:{} {} (sm_{}{}, {} SMs, {:.1} GiB), driver {}.{}, NVRTC {}.{} ({:?} for sm_{}), \
             bf16 weights and KV cache, f32 residual stream",
            i.ordinal,
            i.name,
            i.cc.0,
            i.cc.1,
            i.multiprocessors,
            i.total_mem as f64 / (1u64 << 30) as f64,
            i.driver_version / 1000,
            i.driver_version % 1000 / 10,
            i.nvrtc_version.0,
            i.nvrtc_version.1,
            i.kernel_output,
            i.kernel_arch,
        )
    }

    fn alloc(&self, len: usize) -> Result<CudaBuf> {
        Ok(CudaBuf {
            len,
            f32: Some(self.alloc_f32(len)?),
            bf16: None,
            live: Dtype::F32,
        })
    }

    fn alloc_kv(&self, len: usize) -> Result<CudaBuf> {
        self.alloc_bf16(len)
    }

    fn upload(&self, data: &[f32]) -> Result<CudaBuf> {
        let s = self
            .stream
            .clone_htod(data)
            .map_err(alloc_err(format!("{} f32 values", data.len())))?;
        Ok(CudaBuf {
            len: data.len(),
            f32: Some(s),
            bf16: None,
            live: Dtype::F32,
        })
    }

    fn load_mat(&self, t: &TensorRef<'_>) -> Result<CudaMat> {
        let [rows, cols] = *t.shape else {
            return Err(EngineError::Backend(format!(
                "tensor {:?} has shape {:?}; a matrix needs two dimensions",
                t.name, t.shape
            )));
        };
        match t.as_bf16_slice() {
            Some(s) => self.mat_from_bf16(rows, cols, s),
            None => self.mat_from_bf16(rows, cols, &t.to_bf16()),
        }
    }

    fn download(&self, buf: &CudaBuf, offset: usize, out: &mut [f32]) -> Result<()> {
        let n = out.len();
        check_len(buf.len, offset + n, "download")?;
        if n == 0 {
            return Ok(());
        }
        match (buf.live, &buf.f32, &buf.bf16) {
            (Dtype::F32, Some(s), _) => {
                self.stream
                    .memcpy_dtoh(&s.slice(offset..offset + n), out)
                    .map_err(drv_err("downloading f32 values"))?;
            }
            (Dtype::Bf16, _, Some(s)) => {
                let mut host = vec![bf16::ZERO; n];
                self.stream
                    .memcpy_dtoh(&s.slice(offset..offset + n), &mut host)
                    .map_err(drv_err("downloading bf16 values"))?;
                self.synchronize()?;
                out.iter_mut().zip(&host).for_each(|(o, h)| *o = h.to_f32());
            }
            _ => unreachable!("a buffer always holds its live representation"),
        }
        self.synchronize()?;
        Ok(())
    }

    fn copy_rows(
        &self,
        src: &CudaBuf,
        src_row: usize,
        dst: &mut CudaBuf,
        dst_row: usize,
        rows: usize,
        width: usize,
    ) -> Result<()> {
        check_len(src.len, (src_row + rows) * width, "copy_rows source")?;
        check_len(dst.len, (dst_row + rows) * width, "copy_rows destination")?;
        let n = rows * width;
        if n == 0 {
            return Ok(());
        }
        let grid = (self.grid_for(n), 1, 1);
        match (src.live, dst.live) {
            (Dtype::F32, Dtype::F32) => {
                let (s, d) = (self.f32_in(src, "source")?, self.f32_out(dst)?);
                self.bind()?;
                // SAFETY: both ranges lie inside their allocations (checked above).
                unsafe {
                    drv::memcpy_dtod_async(
                        d + 4 * (dst_row * width) as u64,
                        s + 4 * (src_row * width) as u64,
                        4 * n,
                        self.stream.cu_stream(),
                    )
                }
                .map_err(drv_err("copying rows"))?;
            }
            (Dtype::Bf16, Dtype::Bf16) => {
                let (s, d) = (self.bf16_in(src, "source")?, self.bf16_out(dst)?);
                self.bind()?;
                // SAFETY: as above, 2-byte elements.
                unsafe {
                    drv::memcpy_dtod_async(
                        d + 2 * (dst_row * width) as u64,
                        s + 2 * (src_row * width) as u64,
                        2 * n,
                        self.stream.cu_stream(),
                    )
                }
                .map_err(drv_err("copying rows"))?;
            }
            (Dtype::F32, Dtype::Bf16) => {
                let (s, d) = (self.f32_in(src, "source")?, self.bf16_out(dst)?);
                let (s, d) = (
                    s + 4 * (src_row * width) as u64,
                    d + 2 * (dst_row * width) as u64,
                );
                // Grid-stride over n elements inside both ranges (checked above).
                launch!(self, "cast_f32_bf16", cfg(grid, EW_THREADS, 0); s, d, n as i64);
            }
            (Dtype::Bf16, Dtype::F32) => {
                let (s, d) = (self.bf16_in(src, "source")?, self.f32_out(dst)?);
                let (s, d) = (
                    s + 2 * (src_row * width) as u64,
                    d + 4 * (dst_row * width) as u64,
                );
                // Grid-stride over n elements inside both ranges (checked above).
                launch!(self, "cast_bf16_f32", cfg(grid, EW_THREADS, 0); s, d, n as i64);
            }
        }
        Ok(())
    }

    fn embed(&self, table: &CudaMat, tokens: &[u32], out: &mut CudaBuf) -> Result<()> {
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= table.rows) {
            return Err(EngineError::InvalidToken {
                token: bad,
                vocab: table.rows,
            });
        }
        let rows = tokens.len();
        if rows == 0 {
            return Ok(());
        }
        check_len(out.len, rows * table.cols, "embed output")?;
        let o = self.f32_out(out)?;
        let t = self.ptr(&table.data);
        let mut sh = self.lock();
        let tok = self.upload_u32(&mut sh, tokens)?;
        // Block r copies row tokens[r] < table.rows (checked) of `cols` values into
        // output row r < rows (checked).
        launch!(self, "embed_bf16_f32", cfg((rows as u32, 1, 1), 256, 0); t, tok, o, to_i32(table.cols, "dim")?);
        Ok(())
    }

    fn rms_norm(
        &self,
        x: &CudaBuf,
        weight: &CudaBuf,
        rows: usize,
        dim: usize,
        eps: f32,
        out: &mut CudaBuf,
    ) -> Result<()> {
        check_len(x.len, rows * dim, "rms_norm input")?;
        check_len(weight.len, dim, "rms_norm weight")?;
        check_len(out.len, rows * dim, "rms_norm output")?;
        if rows == 0 {
            return Ok(());
        }
        let xp = self.f32_in(x, "rms_norm input")?;
        let w = self.f32_in(weight, "rms_norm weight")?;
        let o = self.bf16_out(out)?;
        // One block per row r < rows; each touches dim values of row r (checked).
        launch!(self, "rmsnorm_f32_bf16", cfg((rows as u32, 1, 1), 256, 0); xp, w, o, to_i32(dim, "dim")?, eps);
        Ok(())
    }

    fn add_rms_norm(
        &self,
        x: &mut CudaBuf,
        h: &mut CudaBuf,
        weight: &CudaBuf,
        rows: usize,
        dim: usize,
        eps: f32,
    ) -> Result<()> {
        check_len(x.len, rows * dim, "add_rms_norm residual")?;
        check_len(h.len, rows * dim, "add_rms_norm input")?;
        check_len(weight.len, dim, "add_rms_norm weight")?;
        if rows == 0 {
            return Ok(());
        }
        let xp = self.f32_in(x, "add_rms_norm residual")?;
        let hp = self.f32_in(h, "add_rms_norm input")?;
        let w = self.f32_in(weight, "add_rms_norm weight")?;
        let o = self.bf16_out(h)?;
        // One block per row r < rows; reads/writes dim values of row r of x, h and
        // h's bf16 copy (all rows·dim long, checked).
        launch!(self, "add_rmsnorm_f32_bf16", cfg((rows as u32, 1, 1), 256, 0); xp, hp, w, o, to_i32(dim, "dim")?, eps);
        Ok(())
    }

    fn linear(
        &self,
        x: &CudaBuf,
        rows: usize,
        w: &CudaMat,
        bias: Option<&CudaBuf>,
        out: &mut CudaBuf,
    ) -> Result<()> {
        let (n, k) = (w.rows, w.cols);
        check_len(x.len, rows * k, "linear input")?;
        check_len(out.len, rows * n, "linear output")?;
        if let Some(b) = bias {
            check_len(b.len, n, "linear bias")?;
        }
        if rows == 0 {
            return Ok(());
        }
        let o = self.f32_out(out)?;
        let mut sh = self.lock();
        let xp = match x.live {
            Dtype::Bf16 => self.bf16_in(x, "linear input")?,
            Dtype::F32 => {
                // cuBLAS multiplies bf16 by bf16: narrow the input first.
                let src = self.f32_in(x, "linear input")?;
                let dst = self.scratch_bf16(&mut sh, rows * k)?;
                // Grid-stride over rows·k values of x and of the scratch (sized above).
                launch!(self, "cast_f32_bf16", cfg((self.grid_for(rows * k), 1, 1), EW_THREADS, 0); src, dst, (rows * k) as i64);
                dst
            }
        };
        self.gemm(&mut sh, xp, rows, w, o)?;
        if let Some(b) = bias {
            let bp = self.f32_in(b, "linear bias")?;
            // Grid-stride over rows·n outputs; bias holds n values (checked).
            launch!(self, "bias_add_f32", cfg((self.grid_for(rows * n), 1, 1), EW_THREADS, 0); o, bp, (rows * n) as i64, n as i32);
        }
        Ok(())
    }

    fn linear_acc(
        &self,
        x: &CudaBuf,
        rows: usize,
        w: &CudaMat,
        scale: f32,
        out: &mut CudaBuf,
    ) -> Result<()> {
        let (n, k) = (w.rows, w.cols);
        check_len(x.len, rows * k, "linear_acc input")?;
        check_len(out.len, rows * n, "linear_acc output")?;
        if rows == 0 {
            return Ok(());
        }
        // Accumulates into the f32 values `out` already holds (a projection's output).
        let o = self.f32_in(out, "linear_acc output")?;
        let mut sh = self.lock();
        let xp = match x.live {
            Dtype::Bf16 => self.bf16_in(x, "linear_acc input")?,
            Dtype::F32 => {
                let src = self.f32_in(x, "linear_acc input")?;
                let dst = self.scratch_bf16(&mut sh, rows * k)?;
                // Grid-stride over rows·k values of x and of the scratch (sized above).
                launch!(self, "cast_f32_bf16", cfg((self.grid_for(rows * k), 1, 1), EW_THREADS, 0); src, dst, (rows * k) as i64);
                dst
            }
        };
        self.gemm_scaled(&mut sh, xp, rows, w, o, scale, 1.0)
    }

    fn lora_update(
        &self,
        x: &CudaBuf,
        rows: usize,
        a: &CudaMat,
        b: &CudaMat,
        scale: f32,
        _tmp: &mut CudaBuf,
        out: &mut CudaBuf,
    ) -> Result<()> {
        // Shrink and expand in our SGMV kernels (kernels/lora.cu), no scratch of the model's.
        self.lora_update_sgmv(x, rows, a, b, scale, out)
    }

    fn mat_from_f32(&self, rows: usize, cols: usize, data: Vec<f32>) -> Result<CudaMat> {
        check_len(data.len(), rows * cols, "matrix values")?;
        let host: Vec<bf16> = data.into_iter().map(bf16::from_f32).collect();
        self.mat_from_bf16(rows, cols, &host)
    }

    fn rope_table(
        &self,
        inv_freq: &[f64],
        start: usize,
        rows: usize,
        table: &mut CudaBuf,
    ) -> Result<()> {
        let half = inv_freq.len();
        check_len(table.len, rows * half * 2, "rope table")?;
        if rows == 0 || half == 0 {
            return Ok(());
        }
        let mut host = vec![0f32; rows * half * 2];
        for r in 0..rows {
            let pos = (start + r) as f64;
            for (i, f) in inv_freq.iter().enumerate() {
                let (s, c) = (pos * f).sin_cos();
                host[(r * half + i) * 2] = c as f32;
                host[(r * half + i) * 2 + 1] = s as f32;
            }
        }
        self.f32_out(table)?;
        let dst = table.f32.as_mut().expect("f32_out allocated it");
        self.stream
            .memcpy_htod(&host, &mut dst.slice_mut(0..host.len()))
            .map_err(drv_err("uploading the RoPE table"))?;
        Ok(())
    }

    fn rope(
        &self,
        x: &mut CudaBuf,
        rows: usize,
        n_heads: usize,
        head_dim: usize,
        table: &CudaBuf,
    ) -> Result<()> {
        check_len(x.len, rows * n_heads * head_dim, "rope input")?;
        check_len(table.len, rows * head_dim, "rope table")?;
        if rows == 0 {
            return Ok(());
        }
        let xp = self.f32_in(x, "rope input")?;
        let t = self.f32_in(table, "rope table")?;
        // One block per row r < rows: n_heads·head_dim values of x and head_dim of
        // the table (checked).
        launch!(self, "rope_f32", cfg((rows as u32, 1, 1), 128, 0); xp, t, n_heads as i32, head_dim as i32);
        Ok(())
    }

    fn kv_store(
        &self,
        k: &CudaBuf,
        v: &CudaBuf,
        rows: usize,
        start: usize,
        heads: Heads,
        capacity: usize,
        cache: &mut KvLayer<Self>,
    ) -> Result<()> {
        let (nkv, hd) = (heads.n_kv_heads, heads.head_dim);
        if start + rows > capacity {
            return Err(EngineError::ContextFull {
                needed: start + rows,
                capacity,
            });
        }
        check_len(k.len, rows * nkv * hd, "kv_store keys")?;
        check_len(v.len, rows * nkv * hd, "kv_store values")?;
        check_len(cache.k.len, nkv * capacity * hd, "key cache")?;
        check_len(cache.v.len, nkv * capacity * hd, "value cache")?;
        if rows == 0 {
            return Ok(());
        }
        let kc = self.bf16_in(&cache.k, "the key cache (allocate it with alloc_kv)")?;
        let vc = self.bf16_in(&cache.v, "the value cache (allocate it with alloc_kv)")?;
        let (kp, vp, name) = match (k.live, v.live) {
            (Dtype::F32, Dtype::F32) => (
                self.f32_in(k, "keys")?,
                self.f32_in(v, "values")?,
                "kv_store_f32_bf16",
            ),
            (Dtype::Bf16, Dtype::Bf16) => (
                self.bf16_in(k, "keys")?,
                self.bf16_in(v, "values")?,
                "kv_store_bf16_bf16",
            ),
            _ => {
                return Err(CudaError::Invalid(
                    "kv_store: keys and values must hold the same type".into(),
                )
                .into());
            }
        };
        let threads = (hd.div_ceil(32) * 32).min(256) as u32;
        // Block (r, g): row r < rows of KV head g < n_kv; writes position start + r
        // < capacity (checked) of head g.
        launch!(self, name, cfg((rows as u32, nkv as u32, 1), threads, 0);
            kp, vp, kc, vc, to_i32(start, "start")?, nkv as i32, hd as i32, to_i32(capacity, "capacity")?);
        Ok(())
    }

    fn attention(
        &self,
        q: &CudaBuf,
        cache: &KvLayer<Self>,
        rows: usize,
        start: usize,
        heads: Heads,
        capacity: usize,
        out: &mut CudaBuf,
    ) -> Result<()> {
        self.attention_impl(q, cache, rows, start, heads, capacity, out)
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
        let (nkv, hd) = (heads.n_kv_heads, heads.head_dim);
        if len > src_capacity || len > dst_capacity {
            return Err(EngineError::Invalid(format!(
                "cannot copy {len} cache positions between caches of {src_capacity} and {dst_capacity}"
            )));
        }
        check_len(src.k.len, nkv * src_capacity * hd, "source key cache")?;
        check_len(src.v.len, nkv * src_capacity * hd, "source value cache")?;
        check_len(dst.k.len, nkv * dst_capacity * hd, "destination key cache")?;
        check_len(
            dst.v.len,
            nkv * dst_capacity * hd,
            "destination value cache",
        )?;
        if len == 0 {
            return Ok(());
        }
        let pairs = [
            (
                self.bf16_in(&src.k, "source key cache")?,
                self.bf16_in(&dst.k, "destination key cache")?,
            ),
            (
                self.bf16_in(&src.v, "source value cache")?,
                self.bf16_in(&dst.v, "destination value cache")?,
            ),
        ];
        self.bind()?;
        for (s, d) in pairs {
            for g in 0..nkv {
                let so = 2 * (g * src_capacity * hd) as u64;
                let dof = 2 * (g * dst_capacity * hd) as u64;
                // SAFETY: head g's first len·hd values lie inside both caches
                // (len <= both capacities, sizes checked above).
                unsafe {
                    drv::memcpy_dtod_async(d + dof, s + so, 2 * len * hd, self.stream.cu_stream())
                }
                .map_err(drv_err("copying a cache prefix"))?;
            }
        }
        Ok(())
    }

    fn silu_mul(&self, gate: &mut CudaBuf, up: &CudaBuf, n: usize) -> Result<()> {
        check_len(gate.len, n, "silu_mul gate")?;
        check_len(up.len, n, "silu_mul up")?;
        if n == 0 {
            return Ok(());
        }
        let g = self.f32_in(gate, "silu_mul gate")?;
        let u = self.f32_in(up, "silu_mul up")?;
        let o = self.bf16_out(gate)?;
        // Grid-stride over n values of gate, up and gate's bf16 copy (checked).
        launch!(self, "silu_mul_f32_bf16", cfg((self.grid_for(n), 1, 1), EW_THREADS, 0); g, u, o, n as i64);
        Ok(())
    }

    fn add_assign(&self, x: &mut CudaBuf, y: &CudaBuf, n: usize) -> Result<()> {
        check_len(x.len, n, "add_assign target")?;
        check_len(y.len, n, "add_assign operand")?;
        if n == 0 {
            return Ok(());
        }
        let xp = self.f32_in(x, "add_assign target")?;
        let yp = self.f32_in(y, "add_assign operand")?;
        // Grid-stride over n values of both (checked).
        launch!(self, "add_f32", cfg((self.grid_for(n), 1, 1), EW_THREADS, 0); xp, yp, n as i64);
        Ok(())
    }
}

impl From<CudaError> for EngineError {
    fn from(e: CudaError) -> Self {
        EngineError::Cuda(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_plan_fills_the_device_and_fits_shared_memory() {
        // Decode on a 7B-like shape: 32 KV heads, one row, 4096 keys, 132 SMs.
        let p = split_plan(1, 4095, 32, 1, 128, 132);
        assert!(p.splits * 32 >= 132, "{p:?}");
        assert!(
            p.chunk.is_multiple_of(16) && p.chunk * p.splits >= 4096,
            "{p:?}"
        );
        assert!(p.smem_bytes <= 48 * 1024, "{p:?}");
        // SmolLM2-like: 3 KV heads of 3 query heads each, head_dim 64.
        let p = split_plan(1, 99, 3, 3, 64, 132);
        assert!(p.chunk >= 16 && p.chunk * p.splits >= 100, "{p:?}");
        // A long context with a large group stays inside 48 KiB.
        let p = split_plan(1, 100_000, 8, 16, 128, 132);
        assert!(p.smem_bytes <= 48 * 1024, "{p:?}");
        assert!(p.chunk * p.splits >= 100_001, "{p:?}");
        // Many rows (prefill fallback): one split per row when rows fill the device.
        let p = split_plan(512, 0, 8, 4, 256, 132);
        assert_eq!(p.splits, 1, "{p:?}");
        assert!(p.chunk >= 512, "{p:?}");
        assert!(p.smem_bytes <= 48 * 1024, "{p:?}");
    }

    #[test]
    fn every_kernel_file_lists_entries_present_in_its_source() {
        for f in FILES {
            for e in f.entries {
                let as_fn = format!(" {e}(");
                let as_macro = format!("({e},");
                assert!(
                    f.source.contains(&as_fn) || f.source.contains(&as_macro),
                    "{} does not define {e}",
                    f.name
                );
            }
        }
    }

    #[test]
    fn no_driver_or_no_device_is_an_error_not_a_panic() {
        // Where the kernel driver has no device node (CI, laptops) this must be the
        // "no CUDA driver" / "no device" error, never a panic; where it has one, the backend
        // must open. A redirected library directory (the emulator) may go either way.
        let device_node = std::path::Path::new("/dev/nvidiactl").exists();
        let redirected = std::env::var_os("PALR_CUDA_LIB_DIR").is_some();
        match CudaBackend::new(0) {
            Ok(b) => assert!(
                device_node || redirected,
                "no /dev/nvidiactl, yet CUDA opened {}",
                b.describe()
            ),
            Err(e) if redirected => eprintln!("{e}"),
            Err(e) => {
                assert!(
                    !device_node,
                    "/dev/nvidiactl exists but the backend failed: {e}"
                );
                assert!(e.is_unavailable(), "expected no driver or no device: {e}");
                if matches!(e, CudaError::NoDriver(_)) {
                    assert!(e.to_string().starts_with("no CUDA driver found: "), "{e}");
                }
            }
        }
    }
}
