//! The seam between the model and the device it runs on.
//!
//! The LLaMA code in [`super::llama`] is written once against this trait; a backend
//! (CPU now, CUDA later) is chosen when the model is loaded and the layers never
//! branch on the device. Every op works on whole token rows of preallocated
//! buffers: callers pass how many rows are live, buffers are never resized inside
//! a forward pass.

use crate::model::TensorRef;

use super::Result;

/// Attention geometry shared by the attention-shaped ops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heads {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

/// One layer's key/value cache: keys and values of `capacity` positions,
/// laid out `(n_kv_heads, capacity, head_dim)` so each head's history is contiguous.
pub struct KvLayer<B: Backend> {
    pub k: B::Buf,
    pub v: B::Buf,
}

/// A compute device.
pub trait Backend: Send + Sync + Sized + 'static {
    /// A device buffer of activations (`f32` elements on the CPU).
    type Buf: Send + Sync;
    /// A weight matrix `(rows = out_features, cols = in_features)`, row-major.
    type Mat: Send + Sync;

    /// Human-readable description (device, ISA, threads, weight dtype).
    fn describe(&self) -> String;

    /// A zeroed buffer of `len` elements.
    fn alloc(&self, len: usize) -> Result<Self::Buf>;
    /// A zeroed buffer of `len` elements for one half (keys or values) of a KV
    /// cache layer. A backend may hold it in a narrower type (CUDA: bf16); only
    /// [`Backend::kv_store`], [`Backend::attention`] and [`Backend::kv_copy_prefix`]
    /// touch it.
    fn alloc_kv(&self, len: usize) -> Result<Self::Buf> {
        self.alloc(len)
    }
    /// A buffer holding `data`.
    fn upload(&self, data: &[f32]) -> Result<Self::Buf>;
    /// A weight matrix from a checkpoint tensor of shape `(rows, cols)`.
    fn load_mat(&self, t: &TensorRef<'_>) -> Result<Self::Mat>;
    /// A projection's weight `(out_features, in_features)` from a checkpoint tensor. A
    /// backend may store it in the layout its matrix products prefer (the CPU: transposed);
    /// only [`Backend::linear`], [`Backend::linear_acc`] and [`Backend::lora_update`] read
    /// it. Default: [`Backend::load_mat`].
    fn load_linear(&self, t: &TensorRef<'_>) -> Result<Self::Mat> {
        self.load_mat(t)
    }
    /// [`Backend::load_linear`] from host values (e.g. a LoRA-merged weight), row-major
    /// `(rows, cols)`. Default: [`Backend::mat_from_f32`].
    fn linear_from_f32(&self, rows: usize, cols: usize, data: Vec<f32>) -> Result<Self::Mat> {
        self.mat_from_f32(rows, cols, data)
    }
    /// Copies `out.len()` elements starting at `offset` back to the host.
    fn download(&self, buf: &Self::Buf, offset: usize, out: &mut [f32]) -> Result<()>;
    /// Copies `rows` rows of `width` elements from `src` (starting at row `src_row`)
    /// into `dst` (starting at row `dst_row`).
    fn copy_rows(
        &self,
        src: &Self::Buf,
        src_row: usize,
        dst: &mut Self::Buf,
        dst_row: usize,
        rows: usize,
        width: usize,
    ) -> Result<()>;

    /// `out[r, :] = table[tokens[r], :]`.
    fn embed(&self, table: &Self::Mat, tokens: &[u32], out: &mut Self::Buf) -> Result<()>;
    /// `out[r, :] = x[r, :] / rms(x[r, :]) * weight` for `rows` rows of `weight.len()`.
    fn rms_norm(
        &self,
        x: &Self::Buf,
        weight: &Self::Buf,
        rows: usize,
        dim: usize,
        eps: f32,
        out: &mut Self::Buf,
    ) -> Result<()>;
    /// `out[r, :] = x[r, :] · wᵀ (+ bias)`: `x` is `(rows, w.cols)`, `out` `(rows, w.rows)`.
    fn linear(
        &self,
        x: &Self::Buf,
        rows: usize,
        w: &Self::Mat,
        bias: Option<&Self::Buf>,
        out: &mut Self::Buf,
    ) -> Result<()>;
    /// `out[r, :] += scale · x[r, :] · wᵀ` (the LoRA update of an unmerged adapter).
    fn linear_acc(
        &self,
        x: &Self::Buf,
        rows: usize,
        w: &Self::Mat,
        scale: f32,
        out: &mut Self::Buf,
    ) -> Result<()>;
    /// The update of an unmerged LoRA adapter on top of a projection's output:
    /// `out[r, :] += scale · (x[r, :] · aᵀ) · bᵀ`, `a (rank, in)`, `b (out, rank)`;
    /// `tmp` holds at least `rows · rank` values. By default two matrix products
    /// through `tmp`; a backend may fuse them (CUDA: the SGMV kernels).
    #[allow(clippy::too_many_arguments)]
    fn lora_update(
        &self,
        x: &Self::Buf,
        rows: usize,
        a: &Self::Mat,
        b: &Self::Mat,
        scale: f32,
        tmp: &mut Self::Buf,
        out: &mut Self::Buf,
    ) -> Result<()> {
        self.linear(x, rows, a, None, tmp)?;
        self.linear_acc(tmp, rows, b, scale, out)
    }
    /// A weight matrix `(rows, cols)` from host values (e.g. a LoRA-merged weight).
    fn mat_from_f32(&self, rows: usize, cols: usize, data: Vec<f32>) -> Result<Self::Mat>;
    /// An unmerged LoRA matrix (`a` or `b` of [`Backend::lora_update`]) from host values,
    /// in the layout and type that backend's update runs fastest on. Default:
    /// [`Backend::mat_from_f32`].
    fn lora_mat_from_f32(&self, rows: usize, cols: usize, data: Vec<f32>) -> Result<Self::Mat> {
        self.mat_from_f32(rows, cols, data)
    }
    /// Fills `table` with `(rows, head_dim/2, [cos, sin])` for positions `start..start+rows`.
    fn rope_table(
        &self,
        inv_freq: &[f64],
        start: usize,
        rows: usize,
        table: &mut Self::Buf,
    ) -> Result<()>;
    /// Rotates each head of `x` (`(rows, n_heads, head_dim)`) in place, pairing
    /// element `i` with `i + head_dim/2` (the Hugging Face layout).
    fn rope(
        &self,
        x: &mut Self::Buf,
        rows: usize,
        n_heads: usize,
        head_dim: usize,
        table: &Self::Buf,
    ) -> Result<()>;
    /// Writes `rows` new keys and values (`(rows, n_kv_heads, head_dim)`) at positions
    /// `start..start+rows` of the cache.
    #[allow(clippy::too_many_arguments)]
    fn kv_store(
        &self,
        k: &Self::Buf,
        v: &Self::Buf,
        rows: usize,
        start: usize,
        heads: Heads,
        capacity: usize,
        cache: &mut KvLayer<Self>,
    ) -> Result<()>;
    /// Causal grouped-query attention of `rows` queries (`(rows, n_heads, head_dim)`,
    /// positions `start..start+rows`) over cache positions `0..start+rows`; writes
    /// `(rows, n_heads, head_dim)` to `out`.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        q: &Self::Buf,
        cache: &KvLayer<Self>,
        rows: usize,
        start: usize,
        heads: Heads,
        capacity: usize,
        out: &mut Self::Buf,
    ) -> Result<()>;
    /// Copies cache positions `0..len` of `src` into `dst` (forking a shared prefix).
    fn kv_copy_prefix(
        &self,
        src: &KvLayer<Self>,
        dst: &mut KvLayer<Self>,
        len: usize,
        heads: Heads,
        src_capacity: usize,
        dst_capacity: usize,
    ) -> Result<()>;
    /// `gate[i] = silu(gate[i]) * up[i]` for `i < n`.
    fn silu_mul(&self, gate: &mut Self::Buf, up: &Self::Buf, n: usize) -> Result<()>;
    /// `x[i] += y[i]` for `i < n`.
    fn add_assign(&self, x: &mut Self::Buf, y: &Self::Buf, n: usize) -> Result<()>;
    /// The residual add and the next sub-layer's norm in one pass:
    /// `x += h`, then `h = rms_norm(x) * weight`, for `rows` rows of `dim`.
    fn add_rms_norm(
        &self,
        x: &mut Self::Buf,
        h: &mut Self::Buf,
        weight: &Self::Buf,
        rows: usize,
        dim: usize,
        eps: f32,
    ) -> Result<()> {
        self.add_assign(x, h, rows * dim)?;
        self.rms_norm(x, weight, rows, dim, eps, h)
    }
    /// Runs `f` on the backend's worker threads (the CPU backend's own pool).
    fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        f()
    }
}
