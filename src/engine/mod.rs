//! palr's LLaMA engine: load a Hugging Face checkpoint onto a backend and run it.
//!
//! [`load`] picks the backend once ([`Device`]); everything above this module talks
//! to a model through the object-safe [`LanguageModel`] and [`Session`] traits and
//! never learns which device it runs on. A session owns one sequence's KV cache;
//! sessions of one model may run concurrently on different threads.

pub mod backend;
pub mod cpu;
pub mod cuda;
pub mod llama;

use std::any::Any;
use std::path::Path;
use std::sync::Arc;

use crate::model::lora::Adapter;
use crate::model::{Checkpoint, LlamaConfig, ModelError};

pub use backend::Backend;
pub use cpu::{CpuBackend, WeightDtype};
pub use llama::{Adapters, Llama, Logits};

/// A LoRA adapter to load with the model.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterSpec {
    /// The name requests pick it by.
    pub name: String,
    /// PEFT adapter directory (`adapter_config.json`, `adapter_model.safetensors`).
    pub dir: std::path::PathBuf,
    /// Fold it into the base weights at load (no run-time cost; then the base model
    /// itself is not served). At most one adapter may be merged.
    pub merge: bool,
}

/// Errors from loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("backend: {0}")]
    Backend(String),
    #[error("out of memory allocating {0}")]
    OutOfMemory(String),
    #[error("token id {token} is outside the vocabulary (size {vocab})")]
    InvalidToken { token: u32, vocab: usize },
    #[error("context full: {needed} positions needed, the session holds {capacity}")]
    ContextFull { needed: usize, capacity: usize },
    #[error("{0}")]
    Invalid(String),
    #[error("unknown adapter {name:?}; loaded: {loaded:?}")]
    UnknownAdapter { name: String, loaded: Vec<String> },
    #[error(transparent)]
    Cuda(cuda::CudaError),
    /// [`Session::feed_until`]'s stop condition held between two layers: the positions of
    /// this call were not added (the cache is as before the call).
    #[error("interrupted between layers")]
    Interrupted,
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

/// Where a model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    #[default]
    Cpu,
    /// The NVIDIA GPU of this ordinal (`cuda:0`); weights must be loaded as bf16.
    Cuda(usize),
}

impl std::str::FromStr for Device {
    type Err = String;
    /// `cpu`, `cuda` (= `cuda:0`) or `cuda:N`.
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Device::Cuda)
                .ok_or_else(|| format!("unknown device {s:?}; use cpu, cuda or cuda:N")),
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// How to load a model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub device: Device,
    /// Element type of the weights in memory.
    pub dtype: WeightDtype,
    /// Worker threads (0 = one per core).
    pub threads: usize,
    /// Most tokens one forward pass processes; longer prompts are fed in chunks.
    pub max_batch_rows: usize,
    /// LoRA adapters.
    pub adapters: Vec<AdapterSpec>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            device: Device::Cpu,
            dtype: WeightDtype::F32,
            threads: 0,
            max_batch_rows: 512,
            adapters: Vec::new(),
        }
    }
}

/// A loaded model.
pub trait LanguageModel: Send + Sync {
    fn config(&self) -> &LlamaConfig;
    /// The backend in words (device, threads, weight dtype).
    fn describe(&self) -> String;
    /// A new empty sequence whose cache holds `capacity` positions.
    fn new_session(self: Arc<Self>, capacity: usize) -> Result<Box<dyn Session>>;
    /// Names of the adapters sessions may pick (unmerged), in load order.
    fn adapters(&self) -> &[String] {
        &[]
    }
    /// The adapter folded into the weights, if any.
    fn merged_adapter(&self) -> Option<&str> {
        None
    }
}

/// One sequence being run: its KV cache and its scratch buffers.
pub trait Session: Send {
    /// Positions in the cache.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Positions the cache can hold.
    fn capacity(&self) -> usize;
    fn vocab_size(&self) -> usize;
    /// Forgets every position from `len` on (e.g. back to a shared prefix).
    fn truncate(&mut self, len: usize) -> Result<()>;
    /// Appends `tokens` to the sequence and returns the requested logits:
    /// `vocab` values for [`Logits::Last`], `tokens.len() * vocab` for [`Logits::All`],
    /// none for [`Logits::None`].
    fn feed(&mut self, tokens: &[u32], want: Logits) -> Result<&[f32]>;
    /// [`Session::feed`] that checks `stop` between layers and gives up with
    /// [`EngineError::Interrupted`] when it returns true, so abandoned work ends within one
    /// layer's time; the session keeps only the positions it had before the call.
    fn feed_until(
        &mut self,
        tokens: &[u32],
        want: Logits,
        stop: &(dyn Fn() -> bool + Sync),
    ) -> Result<&[f32]> {
        if stop() {
            return Err(EngineError::Interrupted);
        }
        self.feed(tokens, want)
    }
    /// Replaces this session's contents with the first `len` positions of `other`
    /// (a session of the same model), so a shared prefix is computed once.
    fn copy_prefix_from(&mut self, other: &dyn Session, len: usize) -> Result<()>;
    /// Applies the named unmerged adapter (or none) to the tokens fed from now on.
    /// The session must be empty: a cache is only valid for one adapter. Naming the
    /// merged adapter is the same as naming none.
    fn set_adapter(&mut self, name: Option<&str>) -> Result<()> {
        match name {
            None => Ok(()),
            Some(n) => Err(EngineError::UnknownAdapter {
                name: n.to_string(),
                loaded: Vec::new(),
            }),
        }
    }
    /// The unmerged adapter in use.
    fn adapter(&self) -> Option<&str> {
        None
    }
    fn as_any(&self) -> &dyn Any;
}

/// The one rule on devices and dtypes: a GPU holds weights in bf16. Every layer that takes a
/// device and a dtype (engine load, `palr serve`'s config, the CLI's flags) checks with this
/// and says how to fix it in its own terms (a config key, a flag).
pub fn check_device_dtype(device: Device, dtype: WeightDtype) -> std::result::Result<(), String> {
    if device != Device::Cpu && dtype != WeightDtype::Bf16 {
        return Err(format!(
            "{device} needs bf16 weights (the CUDA backend holds weights in bf16), not {dtype}"
        ));
    }
    Ok(())
}

/// Loads the Hugging Face model directory `dir` (`config.json` + safetensors).
pub fn load(dir: &Path, opts: &LoadOptions) -> Result<Arc<dyn LanguageModel>> {
    let cfg = LlamaConfig::from_dir(dir)?;
    let ck = Checkpoint::open(dir)?;
    let mut merged = None;
    let mut unmerged = Vec::new();
    for (i, spec) in opts.adapters.iter().enumerate() {
        if spec.name.is_empty() || opts.adapters[..i].iter().any(|s| s.name == spec.name) {
            return Err(EngineError::Invalid(format!(
                "adapter names must be unique and non-empty: {:?}",
                spec.name
            )));
        }
        let ad = Adapter::open(&spec.name, &spec.dir, &cfg)?;
        if spec.merge {
            if merged.is_some() {
                return Err(EngineError::Invalid(
                    "at most one adapter can be merged into the weights".into(),
                ));
            }
            merged = Some(ad);
        } else {
            unmerged.push(ad);
        }
    }
    let adapters = Adapters {
        merged: merged.as_ref(),
        unmerged: &unmerged,
    };
    let names = unmerged.iter().map(|a| a.name.clone()).collect();
    let merged_name = merged.as_ref().map(|a| a.name.clone());
    match opts.device {
        Device::Cpu => {
            let backend = CpuBackend::new(opts.threads, opts.dtype)?;
            Ok(Arc::new(Model {
                llama: Llama::load(cfg, &ck, backend, adapters)?,
                max_rows: opts.max_batch_rows.max(1),
                adapters: names,
                merged: merged_name,
            }))
        }
        Device::Cuda(ordinal) => {
            check_device_dtype(opts.device, opts.dtype)
                .map_err(|e| EngineError::Invalid(format!("{e}; load with dtype bf16")))?;
            let backend = cuda::CudaBackend::new(ordinal)?;
            Ok(Arc::new(Model {
                llama: Llama::load(cfg, &ck, backend, adapters)?,
                max_rows: opts.max_batch_rows.max(1),
                adapters: names,
                merged: merged_name,
            }))
        }
    }
}

/// A [`Llama`] on backend `B`, behind the object-safe traits.
pub struct Model<B: Backend> {
    pub llama: Llama<B>,
    max_rows: usize,
    adapters: Vec<String>,
    merged: Option<String>,
}

impl<B: Backend> Model<B> {
    /// A model without adapters.
    pub fn new(llama: Llama<B>, max_rows: usize) -> Self {
        Model {
            llama,
            max_rows,
            adapters: Vec::new(),
            merged: None,
        }
    }
}

impl<B: Backend> LanguageModel for Model<B> {
    fn config(&self) -> &LlamaConfig {
        &self.llama.cfg
    }

    fn describe(&self) -> String {
        self.llama.backend.describe()
    }

    fn adapters(&self) -> &[String] {
        &self.adapters
    }

    fn merged_adapter(&self) -> Option<&str> {
        self.merged.as_deref()
    }

    fn new_session(self: Arc<Self>, capacity: usize) -> Result<Box<dyn Session>> {
        if capacity == 0 {
            return Err(EngineError::Invalid(
                "a session needs a capacity of at least one position".into(),
            ));
        }
        let state = self.llama.new_state(capacity, self.max_rows)?;
        let vocab = self.llama.cfg.vocab_size;
        Ok(Box::new(ModelSession {
            model: self,
            state,
            logits: vec![0.0; vocab],
        }))
    }
}

struct ModelSession<B: Backend> {
    model: Arc<Model<B>>,
    state: llama::State<B>,
    /// Host copy of the logits handed out by `feed`.
    logits: Vec<f32>,
}

impl<B: Backend> Session for ModelSession<B> {
    fn len(&self) -> usize {
        self.state.len
    }

    fn capacity(&self) -> usize {
        self.state.capacity
    }

    fn vocab_size(&self) -> usize {
        self.model.llama.cfg.vocab_size
    }

    fn truncate(&mut self, len: usize) -> Result<()> {
        if len > self.state.len {
            return Err(EngineError::Invalid(format!(
                "cannot truncate a session of {} positions to {len}",
                self.state.len
            )));
        }
        self.state.len = len;
        Ok(())
    }

    fn feed(&mut self, tokens: &[u32], want: Logits) -> Result<&[f32]> {
        self.feed_until(tokens, want, &|| false)
    }

    fn feed_until(
        &mut self,
        tokens: &[u32],
        want: Logits,
        stop: &(dyn Fn() -> bool + Sync),
    ) -> Result<&[f32]> {
        let llama = &self.model.llama;
        let vocab = llama.cfg.vocab_size;
        if tokens.is_empty() {
            return Err(EngineError::Invalid("feed needs at least one token".into()));
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(EngineError::InvalidToken { token: bad, vocab });
        }
        let needed = self.state.len + tokens.len();
        if needed > self.state.capacity {
            return Err(EngineError::ContextFull {
                needed,
                capacity: self.state.capacity,
            });
        }
        let out_rows = match want {
            Logits::None => 0,
            Logits::Last => 1,
            Logits::All => tokens.len(),
        };
        if self.logits.len() < out_rows * vocab {
            self.logits.resize(out_rows * vocab, 0.0);
        }
        let (state, logits, b) = (&mut self.state, &mut self.logits, &llama.backend);
        let max_rows = state.max_rows;
        let n_chunks = tokens.len().div_ceil(max_rows);
        b.install(|| -> Result<()> {
            for (i, chunk) in tokens.chunks(max_rows).enumerate() {
                let last = i + 1 == n_chunks;
                let w = match want {
                    Logits::All => Logits::All,
                    Logits::Last if last => Logits::Last,
                    _ => Logits::None,
                };
                let rows = llama.forward_until(state, chunk, w, stop)?;
                let dst = match want {
                    Logits::All => &mut logits[i * max_rows * vocab..][..rows * vocab],
                    _ => &mut logits[..rows * vocab],
                };
                b.download(&state.logits, 0, dst)?;
            }
            Ok(())
        })?;
        Ok(&self.logits[..out_rows * vocab])
    }

    fn copy_prefix_from(&mut self, other: &dyn Session, len: usize) -> Result<()> {
        let other = other
            .as_any()
            .downcast_ref::<ModelSession<B>>()
            .filter(|o| Arc::ptr_eq(&o.model, &self.model))
            .ok_or_else(|| {
                EngineError::Invalid("copy_prefix_from needs a session of the same model".into())
            })?;
        if len > other.state.len || len > self.state.capacity {
            return Err(EngineError::Invalid(format!(
                "cannot copy {len} positions from a session of {} into one holding {}",
                other.state.len, self.state.capacity
            )));
        }
        let llama = &self.model.llama;
        let heads = llama.heads();
        for (src, dst) in other.state.kv.iter().zip(self.state.kv.iter_mut()) {
            llama.backend.kv_copy_prefix(
                src,
                dst,
                len,
                heads,
                other.state.capacity,
                self.state.capacity,
            )?;
        }
        self.state.len = len;
        Ok(())
    }

    fn set_adapter(&mut self, name: Option<&str>) -> Result<()> {
        if self.state.len > 0 {
            return Err(EngineError::Invalid(
                "set_adapter needs an empty session (truncate it to 0 first)".into(),
            ));
        }
        let m = &self.model;
        self.state.adapter = match name {
            None => None,
            Some(n) if m.merged.as_deref() == Some(n) => None,
            Some(n) => Some(m.adapters.iter().position(|a| a == n).ok_or_else(|| {
                EngineError::UnknownAdapter {
                    name: n.to_string(),
                    loaded: m.adapters.iter().chain(&m.merged).cloned().collect(),
                }
            })?),
        };
        Ok(())
    }

    fn adapter(&self) -> Option<&str> {
        self.state.adapter.map(|i| self.model.adapters[i].as_str())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
