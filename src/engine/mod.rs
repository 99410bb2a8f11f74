//! palr's LLaMA engine: load a Hugging Face checkpoint onto a backend and run it.
//!
//! [`load`] picks the backend once ([`Device`]); everything above this module talks
//! to a model through the object-safe [`LanguageModel`] and [`Session`] traits and
//! never learns which device it runs on. A session owns one sequence's KV cache;
//! sessions of one model may run concurrently on different threads.
//!
//! Unmerged LoRA adapters live in a table of the model that can change while it serves
//! ([`LanguageModel::load_adapter`], [`LanguageModel::unload_adapter`]): a caller looks an
//! adapter up once ([`LanguageModel::adapter`]) and gets an [`AdapterRef`], a pin on those
//! weights; a session set to it ([`Session::set_adapter`]) keeps running on them whatever
//! the table holds meanwhile, and unloaded weights are freed when the last pin goes.

pub mod backend;
pub mod cpu;
pub mod cuda;
pub mod llama;

use std::any::Any;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use crate::model::lora::Adapter;
use crate::model::{Checkpoint, LlamaConfig, ModelError};

pub use backend::Backend;
pub use cpu::{CpuBackend, WeightDtype};
pub use llama::{Llama, Logits, LoraWeights};

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
    #[error("an adapter named {0:?} is loaded already (unload it first, or replace it)")]
    AdapterExists(String),
    #[error("adapter {name:?} has rank {rank}, over the largest rank allowed ({max})")]
    AdapterRank {
        name: String,
        rank: usize,
        max: usize,
    },
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
    /// Largest rank an unmerged adapter may have, at load and later (0 = any): bounds an
    /// adapter's memory and a session's LoRA scratch.
    pub max_adapter_rank: usize,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            device: Device::Cpu,
            dtype: WeightDtype::F32,
            threads: 0,
            max_batch_rows: 512,
            adapters: Vec::new(),
            max_adapter_rank: 0,
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
    /// The adapters sessions may pick (unmerged), in load order.
    fn adapters(&self) -> Vec<AdapterRef> {
        Vec::new()
    }
    /// The unmerged adapter `name`, pinned: its weights stay while the reference does,
    /// whatever is loaded or unloaded meanwhile.
    fn adapter(&self, name: &str) -> Result<AdapterRef> {
        Err(EngineError::UnknownAdapter {
            name: name.to_owned(),
            loaded: self
                .merged_adapter()
                .map(str::to_owned)
                .into_iter()
                .collect(),
        })
    }
    /// The adapter folded into the weights, if any.
    fn merged_adapter(&self) -> Option<&str> {
        None
    }
    /// Loads a PEFT adapter directory, unmerged, as `name` while the model serves. With
    /// `replace`, an adapter of that name already loaded is swapped for the new one
    /// (sessions running on the old one finish on it); without, that is an error.
    /// Returns the new adapter and the one it replaced.
    fn load_adapter(
        &self,
        name: &str,
        dir: &Path,
        replace: bool,
    ) -> Result<(AdapterRef, Option<AdapterRef>)> {
        let _ = (dir, replace);
        Err(EngineError::Invalid(format!(
            "this model cannot load adapters (asked to load {name:?})"
        )))
    }
    /// Takes the unmerged adapter `name` out of the table: no new session can pick it;
    /// sessions running on it finish on it. Returns it.
    fn unload_adapter(&self, name: &str) -> Result<AdapterRef> {
        // An unknown name says so; a known one cannot go from a model without a table.
        self.adapter(name)?;
        Err(EngineError::Invalid(format!(
            "this model cannot unload adapters ({name:?})"
        )))
    }
}

/// What one loaded (unmerged) adapter is.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterInfo {
    /// The name sessions pick it by.
    pub name: String,
    /// The PEFT directory it was read from.
    pub dir: PathBuf,
    /// Unique per load in this process, increasing: an adapter loaded again under the same
    /// name gets a new one (caches of computed state key on it, not on the name).
    pub generation: u64,
    /// Largest rank of its projections, how many projections it adapts and the parameters
    /// of their A and B matrices.
    pub rank: usize,
    pub projections: usize,
    pub parameters: usize,
    pub loaded_at: SystemTime,
}

/// A pinned unmerged adapter of one model: its description and its weights, which stay
/// on the device while any reference does. Cheap to clone.
#[derive(Clone)]
pub struct AdapterRef {
    info: Arc<AdapterInfo>,
    /// `LoraWeights<B>` of the model's backend.
    weights: Arc<dyn Any + Send + Sync>,
    /// The model it belongs to (its `Model::id`).
    model: u64,
}

impl AdapterRef {
    pub fn name(&self) -> &str {
        &self.info.name
    }

    pub fn generation(&self) -> u64 {
        self.info.generation
    }

    pub fn info(&self) -> &AdapterInfo {
        &self.info
    }

    /// References to its weights now: the model's table (while loaded), sessions running
    /// on it, caches computed with it, and callers' pins like this one.
    pub fn pins(&self) -> usize {
        Arc::strong_count(&self.weights)
    }
}

impl std::fmt::Debug for AdapterRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdapterRef")
            .field("name", &self.info.name)
            .field("generation", &self.info.generation)
            .finish_non_exhaustive()
    }
}

/// Adapter generations and model ids: one counter for the process.
fn next_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
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
    /// Applies `adapter` (an unmerged adapter of this session's model, or none) to the
    /// tokens fed from now on; the session holds the pin until set otherwise. The session
    /// must be empty: a cache is only valid for one adapter.
    fn set_adapter(&mut self, adapter: Option<&AdapterRef>) -> Result<()> {
        match adapter {
            None => Ok(()),
            Some(a) => Err(EngineError::Invalid(format!(
                "adapter {:?} is not of this session's model",
                a.name()
            ))),
        }
    }
    /// The unmerged adapter in use.
    fn adapter(&self) -> Option<&AdapterRef> {
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
    for (i, spec) in opts.adapters.iter().enumerate() {
        if spec.name.is_empty() || opts.adapters[..i].iter().any(|s| s.name == spec.name) {
            return Err(EngineError::Invalid(format!(
                "adapter names must be unique and non-empty: {:?}",
                spec.name
            )));
        }
        if spec.merge {
            if merged.is_some() {
                return Err(EngineError::Invalid(
                    "at most one adapter can be merged into the weights".into(),
                ));
            }
            merged = Some(Adapter::open(&spec.name, &spec.dir, &cfg)?);
        }
    }
    let max_rows = opts.max_batch_rows.max(1);
    let model: Arc<dyn LanguageModel> = match opts.device {
        Device::Cpu => {
            let backend = CpuBackend::new(opts.threads, opts.dtype)?;
            let llama = Llama::load(cfg, &ck, backend, merged.as_ref())?;
            Arc::new(Model::new(llama, max_rows).with_merged(merged.map(|a| a.name), opts))
        }
        Device::Cuda(ordinal) => {
            check_device_dtype(opts.device, opts.dtype)
                .map_err(|e| EngineError::Invalid(format!("{e}; load with dtype bf16")))?;
            let backend = cuda::CudaBackend::new(ordinal)?;
            let llama = Llama::load(cfg, &ck, backend, merged.as_ref())?;
            Arc::new(Model::new(llama, max_rows).with_merged(merged.map(|a| a.name), opts))
        }
    };
    // The unmerged ones go through the same path as an adapter loaded while serving.
    for spec in opts.adapters.iter().filter(|s| !s.merge) {
        model.load_adapter(&spec.name, &spec.dir, false)?;
    }
    Ok(model)
}

/// A [`Llama`] on backend `B`, behind the object-safe traits.
pub struct Model<B: Backend> {
    pub llama: Llama<B>,
    max_rows: usize,
    /// Unmerged adapters, in load order; replaced entries keep their place.
    adapters: RwLock<Vec<AdapterRef>>,
    merged: Option<String>,
    /// `LoadOptions::max_adapter_rank`.
    max_adapter_rank: usize,
    /// Tells this model's adapter references from another's.
    id: u64,
}

impl<B: Backend> Model<B> {
    /// A model without adapters.
    pub fn new(llama: Llama<B>, max_rows: usize) -> Self {
        Model {
            llama,
            max_rows,
            adapters: RwLock::new(Vec::new()),
            merged: None,
            max_adapter_rank: 0,
            id: next_id(),
        }
    }

    /// Records the name of the adapter folded into `llama`'s weights and the bound on
    /// unmerged adapters' rank.
    fn with_merged(mut self, merged: Option<String>, opts: &LoadOptions) -> Self {
        self.merged = merged;
        self.max_adapter_rank = opts.max_adapter_rank;
        self
    }

    /// Adds already-uploaded adapter weights as `name` (e.g. synthetic ones for
    /// benchmarks), as [`LanguageModel::load_adapter`] adds those it reads.
    pub fn add_adapter_weights(
        &self,
        name: &str,
        dir: PathBuf,
        weights: LoraWeights<B>,
        replace: bool,
    ) -> Result<(AdapterRef, Option<AdapterRef>)> {
        if name.is_empty() {
            return Err(EngineError::Invalid("an adapter needs a name".into()));
        }
        if self.merged.as_deref() == Some(name) {
            return Err(EngineError::Invalid(format!(
                "{name:?} is the adapter merged into the weights; pick another name"
            )));
        }
        let new = AdapterRef {
            info: Arc::new(AdapterInfo {
                name: name.to_owned(),
                dir,
                generation: next_id(),
                rank: weights.max_rank,
                projections: weights.projections,
                parameters: weights.parameters,
                loaded_at: SystemTime::now(),
            }),
            weights: Arc::new(weights),
            model: self.id,
        };
        let mut table = self.adapters.write().unwrap_or_else(|p| p.into_inner());
        match table.iter_mut().find(|a| a.name() == name) {
            Some(_) if !replace => Err(EngineError::AdapterExists(name.to_owned())),
            Some(slot) => Ok((new.clone(), Some(std::mem::replace(slot, new)))),
            None => {
                table.push(new.clone());
                Ok((new, None))
            }
        }
    }

    fn weights_of(&self, a: &AdapterRef) -> Result<Arc<LoraWeights<B>>> {
        if a.model != self.id {
            return Err(EngineError::Invalid(format!(
                "adapter {:?} was loaded on another model",
                a.name()
            )));
        }
        a.weights
            .clone()
            .downcast::<LoraWeights<B>>()
            .map_err(|_| EngineError::Invalid(format!("adapter {:?}: foreign weights", a.name())))
    }

    fn unknown(&self, name: &str) -> EngineError {
        EngineError::UnknownAdapter {
            name: name.to_owned(),
            loaded: self
                .adapters()
                .iter()
                .map(|a| a.name().to_owned())
                .chain(self.merged.clone())
                .collect(),
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

    fn adapters(&self) -> Vec<AdapterRef> {
        self.adapters
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn adapter(&self, name: &str) -> Result<AdapterRef> {
        let table = self.adapters.read().unwrap_or_else(|p| p.into_inner());
        match table.iter().find(|a| a.name() == name) {
            Some(a) => Ok(a.clone()),
            None => {
                drop(table);
                Err(self.unknown(name))
            }
        }
    }

    fn merged_adapter(&self) -> Option<&str> {
        self.merged.as_deref()
    }

    fn load_adapter(
        &self,
        name: &str,
        dir: &Path,
        replace: bool,
    ) -> Result<(AdapterRef, Option<AdapterRef>)> {
        if !replace && self.adapter(name).is_ok() {
            // Before reading anything (the check is made again when it goes in).
            return Err(EngineError::AdapterExists(name.to_owned()));
        }
        let ad = Adapter::open(name, dir, &self.llama.cfg)?;
        let (rank, max) = (ad.max_rank(), self.max_adapter_rank);
        if max > 0 && rank > max {
            // Before any weight is read.
            return Err(EngineError::AdapterRank {
                name: name.to_owned(),
                rank,
                max,
            });
        }
        let weights = self.llama.backend.install(|| self.llama.load_lora(&ad))?;
        self.add_adapter_weights(name, dir.to_path_buf(), weights, replace)
    }

    fn unload_adapter(&self, name: &str) -> Result<AdapterRef> {
        let mut table = self.adapters.write().unwrap_or_else(|p| p.into_inner());
        match table.iter().position(|a| a.name() == name) {
            Some(i) => Ok(table.remove(i)),
            None => {
                drop(table);
                Err(self.unknown(name))
            }
        }
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
            adapter: None,
            logits: vec![0.0; vocab],
        }))
    }
}

struct ModelSession<B: Backend> {
    model: Arc<Model<B>>,
    state: llama::State<B>,
    /// The pin of the adapter the state runs with (the state holds its weights).
    adapter: Option<AdapterRef>,
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
        let generation = |a: &Option<AdapterRef>| a.as_ref().map(AdapterRef::generation);
        if generation(&other.adapter) != generation(&self.adapter) {
            // Keys and values computed under one adapter are wrong under another.
            return Err(EngineError::Invalid(format!(
                "copy_prefix_from: the sessions run different adapters ({:?} and {:?})",
                other.adapter.as_ref().map(AdapterRef::name),
                self.adapter.as_ref().map(AdapterRef::name)
            )));
        }
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

    fn set_adapter(&mut self, adapter: Option<&AdapterRef>) -> Result<()> {
        let weights = adapter.map(|a| self.model.weights_of(a)).transpose()?;
        self.model.llama.set_adapter(&mut self.state, weights)?;
        self.adapter = adapter.cloned();
        Ok(())
    }

    fn adapter(&self) -> Option<&AdapterRef> {
        self.adapter.as_ref()
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
