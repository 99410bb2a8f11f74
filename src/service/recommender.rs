//! The serving core, transport-free: what the server loaded (catalog, retrievers, ranker)
//! and the three request flows (recommend, rank, retrieve) on plain Rust types.
//!
//! Requests are checked here, before any work, with messages that name the offending id or
//! value and the bounds. Retrieval runs on a blocking thread; ranking runs on a blocking
//! thread after [`Admission`] grants a slot. Every wait honours the caller's deadline
//! (`respond_by`): the request then fails with DEADLINE_EXCEEDED and the ranker, which gets
//! the same instant, stops at its next check and frees its slot.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::chat::ChatTemplate;
use crate::data::{Catalog, DataError, Dataset, LoadOptions, Split, UnknownItems};
use crate::engine::{self, LanguageModel};
use crate::rank::{RankError, RankMode, RankOutput, RankRequest, Ranker};
use crate::retrieval::{
    FusionSpec, Retriever, RetrieverInfo, RetrieverRegistry, Source, TrainingView,
};
use crate::util::clip;

use super::bulkhead::{BulkheadConfig, BulkheadStats, Bulkheads, HealthHook, OwnedContext};
use crate::tokenizer::Tokenizer;

use super::admission::{Admission, Refused};
use super::config::{
    ConfigError, ConfigSource, DataSection, Limits, ModelSection, RetrievalSection, ServerConfig,
    ServerSection,
};
use super::error::{Result, ServiceError, StartError};
use super::metrics::{BASE_MODEL_LABEL, GaugeGuard, Metrics};

/// How a request's candidates are ordered: the one rank-mode type of the service — requests,
/// `[limits] default_rank_mode`, the CLI's `--mode` and metric labels all use it (protobuf's
/// `RankMode` is converted in `grpc.rs` only). The LLM modes are [`RankMode`], the ranker's own
/// type; `Retriever` is the one mode that never reaches the ranker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// LLM, one pass over labelled candidates.
    #[default]
    Score,
    /// LLM, constrained generation of titles (PALR).
    Generate,
    /// No LLM: the retriever's (or caller's) order.
    Retriever,
}

impl Mode {
    /// Every mode, in the order messages list them.
    pub const ALL: [Mode; 3] = [Mode::Score, Mode::Generate, Mode::Retriever];

    /// The ranker's mode, `None` for `Retriever`.
    pub fn rank_mode(self) -> Option<RankMode> {
        match self {
            Self::Score => Some(RankMode::Score),
            Self::Generate => Some(RankMode::Generate),
            Self::Retriever => None,
        }
    }

    /// Lower-case name (config, flags, metric labels, logs).
    pub fn name(self) -> &'static str {
        self.rank_mode().map_or("retriever", RankMode::name)
    }
}

impl From<RankMode> for Mode {
    fn from(m: RankMode) -> Self {
        match m {
            RankMode::Score => Self::Score,
            RankMode::Generate => Self::Generate,
        }
    }
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| format!("unknown mode {s:?}; use score, generate or retriever"))
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A request's `num_candidates`: `None` for 0 (the default), else `n` if within `1..=max`.
fn bounded_num_candidates(n: u32, max: u32, default: u32) -> Result<Option<usize>> {
    if n == 0 {
        return Ok(None);
    }
    if n > max {
        return Err(ServiceError::InvalidArgument(format!(
            "num_candidates = {n} is out of bounds: use 1..={max} (0 = the default, {default})"
        )));
    }
    Ok(Some(n as usize))
}

/// A Recommend call. Counts of 0, empty names and `mode: None` mean the server's defaults.
#[derive(Debug, Clone, Default)]
pub struct RecommendParams {
    pub history: Vec<String>,
    pub k: u32,
    pub retriever: String,
    pub num_candidates: u32,
    pub adapter: String,
    pub mode: Option<Mode>,
    pub exclude: Vec<String>,
    /// The caller's opaque user id (passed to the retrievers; may be empty).
    pub user_id: String,
    /// One timestamp per history item, or none (passed to the retrievers).
    pub history_timestamps: Vec<i64>,
}

/// A Rank call (caller's candidates, best first in the caller's order).
#[derive(Debug, Clone, Default)]
pub struct RankParams {
    pub history: Vec<String>,
    pub candidates: Vec<String>,
    pub k: u32,
    pub adapter: String,
    pub mode: Option<Mode>,
}

/// A Retrieve call.
#[derive(Debug, Clone, Default)]
pub struct RetrieveParams {
    pub history: Vec<String>,
    pub num_candidates: u32,
    pub retriever: String,
    pub exclude: Vec<String>,
    /// As in [`RecommendParams`].
    pub user_id: String,
    pub history_timestamps: Vec<i64>,
}

/// Longest user id a request may carry, in bytes.
pub const MAX_USER_ID_BYTES: usize = 256;

/// What a retrieval call passes to the plugins beside the history (before the request time
/// is stamped).
struct Context {
    user_id: String,
    /// Parallel to the history sent to the retriever, when the caller gave timestamps.
    timestamps: Option<Vec<i64>>,
}

/// One recommended item.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recommended {
    pub id: String,
    pub title: String,
    /// LLM score for LLM-ranked items, else the retriever's score (0 for Rank calls).
    pub score: f32,
    /// 1-based position in the candidate list.
    pub retriever_rank: u32,
    pub by_llm: bool,
}

/// Where a request's time went (seconds) and its token counts.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Timings {
    pub retrieve_s: f64,
    pub queue_s: f64,
    pub prompt_s: f64,
    pub prefill_s: f64,
    pub decode_s: f64,
    pub first_token_s: f64,
    pub total_s: f64,
    pub prompt_tokens: usize,
    pub cached_prompt_tokens: usize,
    pub generated_tokens: usize,
}

/// A Recommend or Rank answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recommendation {
    pub items: Vec<Recommended>,
    pub timings: Timings,
    /// The retriever used (empty for Rank).
    pub retriever: String,
    pub mode: Mode,
    /// The adapter the LLM ranked with (the merged one when the weights carry one; empty
    /// for the base model or when the LLM did not run).
    pub adapter: String,
}

/// One retrieved item.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Retrieved {
    pub id: String,
    pub title: String,
    pub score: f32,
}

/// A Retrieve answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Retrieval {
    pub items: Vec<Retrieved>,
    pub retriever: String,
    pub timings: Timings,
}

/// What GetModelInfo reports.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSummary {
    pub name: String,
    pub architecture: String,
    pub backend: String,
    pub dtype: String,
    pub num_layers: usize,
    pub hidden_size: usize,
    pub vocab_size: usize,
    pub max_context: usize,
    pub max_prompt_tokens: usize,
    pub prompt_history_items: usize,
    pub max_score_candidates: usize,
    pub catalog_items: usize,
    /// The retrievers' view of the data: its stage and fingerprint.
    pub training_view_stage: String,
    pub training_view_fingerprint: String,
}

/// The retrievers requests run on: the registry of plugins and fusions, their bulkheads and
/// the `[retrieval]` section both were made from. Made whole at start-up or by a reload and
/// swapped whole ([`Recommender::reload_retrievers`]); a request holds the set it started
/// with, so it finishes on those instances and bulkheads whatever is swapped meanwhile.
pub struct RetrieverSet {
    registry: RetrieverRegistry,
    bulkheads: Bulkheads,
    section: RetrievalSection,
}

impl RetrieverSet {
    /// Loads `[retrieval]`'s plugins and fusions on `view`, with their bulkheads: nothing
    /// serves from it until it is complete.
    fn load(
        section: &RetrievalSection,
        view: Arc<TrainingView>,
    ) -> std::result::Result<Self, StartError> {
        Ok(Self {
            registry: load_retrievers(section, view)?,
            bulkheads: plugin_bulkheads(section)?,
            section: section.clone(),
        })
    }

    /// The loaded plugins, by name.
    pub fn retrievers(&self) -> Vec<RetrieverInfo> {
        self.registry.list()
    }

    /// The fusions, by name.
    pub fn fusions(&self) -> Vec<Arc<FusionSpec>> {
        self.registry.fusions()
    }

    /// The retriever used when a request names none.
    pub fn default_retriever(&self) -> &str {
        &self.section.default
    }

    /// Plugin `name`'s isolation state.
    pub fn bulkhead(&self, name: &str) -> Option<BulkheadStats> {
        self.bulkheads.stats(name)
    }

    /// Plugin names, then every name a request may use (fusions included).
    fn names(&self) -> (Vec<String>, Vec<String>) {
        let plugins: Vec<String> = self.registry.list().into_iter().map(|r| r.name).collect();
        let mut sources = plugins.clone();
        sources.extend(self.registry.fusions().iter().map(|f| f.name.clone()));
        (plugins, sources)
    }
}

/// Called after a reload swapped the retriever set: `(plugins now, names gone)` (the
/// server's health entries follow it).
pub type RetrieverSetHook = Arc<dyn Fn(&[String], &[String]) + Send + Sync>;

/// What a retriever reload loaded.
#[derive(Debug, Clone)]
pub struct ReloadReport {
    /// Every plugin now serving, by name.
    pub retrievers: Vec<RetrieverInfo>,
    /// Every fusion now serving, by name.
    pub fusions: Vec<String>,
    /// The retriever used when a request names none.
    pub default: String,
    /// Names (plugins and fusions) new in this set, and those no longer served.
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Sections of the configuration read that differ from the running one but are not
    /// reloaded (they need a restart).
    pub not_reloaded: Vec<&'static str>,
    pub took: Duration,
}

/// One adapter requests may name, as the admin API lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterListing {
    pub name: String,
    /// Folded into the weights at start-up (the fields below are then 0).
    pub merged: bool,
    /// `model.default_adapter`.
    pub is_default: bool,
    /// The directory it was read from.
    pub dir: String,
    /// Unique per load, increasing.
    pub generation: u64,
    pub rank: usize,
    /// Projections it adapts, and the parameters of their A and B matrices.
    pub projections: usize,
    pub parameters: usize,
    /// When it was loaded (Unix time, milliseconds).
    pub loaded_unix_ms: u64,
}

impl AdapterListing {
    fn unmerged(i: &engine::AdapterInfo, default: &str) -> Self {
        Self {
            name: i.name.clone(),
            merged: false,
            is_default: i.name == default,
            dir: i.dir.display().to_string(),
            generation: i.generation,
            rank: i.rank,
            projections: i.projections,
            parameters: i.parameters,
            loaded_unix_ms: i
                .loaded_at
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        }
    }
}

/// The size of a data set as loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct DataCounts {
    pub items: usize,
    pub users: usize,
    pub interactions: usize,
    /// Interaction rows dropped because their item is not in the catalog
    /// (`data.skip_unknown_items`).
    pub skipped_unknown_items: usize,
}

impl DataCounts {
    fn of(ds: &Dataset) -> Self {
        Self {
            items: ds.catalog.len(),
            users: ds.interactions.n_users(),
            interactions: ds.interactions.len(),
            skipped_unknown_items: ds.skipped_unknown_items,
        }
    }
}

/// What a LoadAdapter or UnloadAdapter changed: the adapter loaded (or unloaded) and the
/// one it replaced.
#[derive(Debug, Clone)]
pub struct AdapterChange {
    pub adapter: AdapterListing,
    pub replaced: Option<AdapterListing>,
    pub took: Duration,
}

/// The adapter a request named (or the default), pinned when the request was checked.
#[derive(Debug, Clone)]
struct RequestAdapter {
    /// As requests and metrics name it.
    name: String,
    /// `None` for the adapter merged into the weights.
    pinned: Option<crate::engine::AdapterRef>,
}

/// What requests are served from, as one immutable unit: the catalog (ids, titles), the
/// training view made from the same data set, the retriever set fitted on that view and the
/// ranker over that catalog (its caches are by item index). A request takes the snapshot in
/// use at its start ([`Recommender::served`]) and resolves ids, retrieves, ranks and writes
/// ids and titles from it alone, so a reload swapping another in meanwhile — of the data
/// ([`Recommender::reload_data`]) or of the retrievers ([`Recommender::reload_retrievers`])
/// — never mixes two catalogs, or a catalog with retrievers fitted on other data, in one
/// request.
pub struct Served {
    catalog: Arc<Catalog>,
    /// The retrievers' view of the data; `set` was made on it.
    view: Arc<TrainingView>,
    set: Arc<RetrieverSet>,
    ranker: Arc<Ranker>,
    /// The data set `catalog` and `view` came from.
    data: DataCounts,
}

impl Served {
    /// The catalog.
    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    /// The retrievers' training view.
    pub fn view(&self) -> &Arc<TrainingView> {
        &self.view
    }

    /// The retriever set.
    pub fn retriever_set(&self) -> &Arc<RetrieverSet> {
        &self.set
    }

    /// The size of the data set.
    pub fn data(&self) -> DataCounts {
        self.data
    }

    fn title(&self, i: u32) -> String {
        self.catalog.title(i).unwrap_or_default().to_owned()
    }

    fn id(&self, i: u32) -> String {
        self.catalog.id(i).unwrap_or_default().to_owned()
    }
}

/// How many item ids of `new` are not in `old` (added), and of `old` not in `new` (removed).
fn catalog_diff(old: &Catalog, new: &Catalog) -> (usize, usize) {
    let added = new
        .items()
        .iter()
        .filter(|it| old.index_of(&it.id).is_none())
        .count();
    // Ids are unique in both: what is not added is in both.
    (added, old.len() - (new.len() - added))
}

/// What a data reload changed.
#[derive(Debug, Clone)]
pub struct DataReloadReport {
    /// The data set served before the reload, and now.
    pub before: DataCounts,
    pub after: DataCounts,
    /// Item ids new in the catalog, and ids no longer in it.
    pub items_added: usize,
    pub items_removed: usize,
    /// The retrievers' training view now: its stage and fingerprint, and the fingerprint of
    /// the view it replaced.
    pub view_stage: String,
    pub view_fingerprint: String,
    pub previous_view_fingerprint: String,
    /// Every plugin, created (fitted) anew on the new view.
    pub retrievers: Vec<RetrieverInfo>,
    pub took: Duration,
}

/// Everything a request needs, loaded once at start-up and shared by all requests; the data
/// and the retrievers ([`Served`]) can be reloaded while serving.
pub struct Recommender {
    cfg: ServerConfig,
    /// What requests are served from; replaced whole by reloads.
    served: std::sync::RwLock<Arc<Served>>,
    /// Where the configuration came from, for reloads; `None` = nothing to re-read.
    source: Option<ConfigSource>,
    /// Serialises reloads (admin calls and SIGHUP).
    reload_lock: std::sync::Mutex<()>,
    /// The breaker hook of the server's health service, given to every new set.
    health_hook: std::sync::Mutex<Option<HealthHook>>,
    set_hook: std::sync::Mutex<Option<RetrieverSetHook>>,
    model: Arc<dyn LanguageModel>,
    prompting: Prompting,
    admission: Admission,
    /// Mean ranking time per mode (score, generate), microseconds; 0 = none measured yet.
    rank_us: [std::sync::atomic::AtomicU64; 2],
    metrics: Metrics,
}

fn mode_index(mode: RankMode) -> usize {
    match mode {
        RankMode::Score => 0,
        RankMode::Generate => 1,
    }
}

impl std::fmt::Debug for Recommender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recommender")
            .field("catalog_items", &self.served().catalog.len())
            .field("registry", &self.retriever_set().registry)
            .finish_non_exhaustive()
    }
}

/// Runs `fut`, or fails with DEADLINE_EXCEEDED (naming `stage`) once `respond_by` passes.
async fn by<T>(
    respond_by: Option<Instant>,
    stage: &'static str,
    fut: impl Future<Output = T>,
) -> Result<T> {
    match respond_by {
        None => Ok(fut.await),
        // Already past: fail now (a timer for a past instant fires only at the next tick).
        Some(d) if Instant::now() >= d => Err(ServiceError::DeadlineExceeded(stage)),
        Some(d) => tokio::select! {
            biased;
            v = fut => Ok(v),
            _ = tokio::time::sleep_until(d.into()) => Err(ServiceError::DeadlineExceeded(stage)),
        },
    }
}

fn joined<T>(r: std::result::Result<T, tokio::task::JoinError>) -> Result<T> {
    r.map_err(|e| ServiceError::Internal(format!("worker thread failed: {e}")))
}

/// Sets its flag when dropped unless disarmed: a blocking job sharing the flag learns
/// that the async caller is gone.
#[derive(Default)]
struct CancelOnDrop(Arc<std::sync::atomic::AtomicBool>, bool);

impl CancelOnDrop {
    fn disarm(mut self) {
        self.1 = true;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if !self.1 {
            self.0.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

// --- The steps of `Recommender::load`, in the order it takes them. ---

/// A data set error at start-up, naming the data directory.
fn data_error(dir: &Path, source: DataError) -> StartError {
    StartError::Data {
        dir: dir.display().to_string(),
        source,
    }
}

/// Reads the data set of `[data]` (format and unknown-item rule as configured).
fn load_dataset(data: &DataSection) -> std::result::Result<Dataset, StartError> {
    let opts = LoadOptions {
        format: data.format,
        unknown_items: if data.skip_unknown_items {
            UnknownItems::Skip
        } else {
            UnknownItems::Error
        },
    };
    Dataset::load(&data.dir, &opts).map_err(|source| data_error(&data.dir, source))
}

/// What the retrievers learn from: `ds`'s training view for `retrieval.training` (logged
/// with the data set's size).
fn retrievers_view(
    cfg: &ServerConfig,
    ds: &Dataset,
) -> std::result::Result<TrainingView, StartError> {
    let split = Split::leave_one_out(&ds.interactions);
    let view = crate::eval::training_view(
        &split,
        &ds.interactions,
        &ds.catalog,
        cfg.retrieval.training,
    )
    .map_err(|e| data_error(&cfg.data.dir, DataError::Invalid { msg: e.to_string() }))?;
    tracing::info!(
        items = ds.catalog.len(),
        users = view.n_users(),
        interactions = view.n_interactions(),
        training = ?cfg.retrieval.training,
        dir = %cfg.data.dir.display(),
        "data set loaded"
    );
    Ok(view)
}

/// The registry of `[retrieval]`'s plugins (each load logged by the registry) and fusions,
/// on `view`.
fn load_retrievers(
    r: &RetrievalSection,
    view: Arc<TrainingView>,
) -> std::result::Result<RetrieverRegistry, StartError> {
    let registry = if r.plugin_dirs.is_empty() {
        RetrieverRegistry::new(view)
    } else {
        RetrieverRegistry::with_search_dirs(view, r.plugin_dirs.clone())
    };
    registry.load_all(&r.retrievers)?;
    for f in &r.fusions {
        registry.add_fusion(f.clone())?;
    }
    Ok(registry)
}

/// The plugin thread pool, with each retriever's bound on calls at once, its timeout and
/// its circuit breaker.
fn plugin_bulkheads(r: &RetrievalSection) -> std::result::Result<Bulkheads, StartError> {
    let limits: Vec<(String, usize)> = r
        .retrievers
        .iter()
        .map(|s| {
            (
                s.name.clone(),
                s.max_concurrent_calls.unwrap_or(r.max_concurrent_calls),
            )
        })
        .collect();
    Bulkheads::new(
        &limits,
        BulkheadConfig {
            timeout: (r.timeout_ms > 0).then(|| Duration::from_millis(r.timeout_ms)),
            breaker_timeouts: r.breaker_timeouts,
            breaker_open: Duration::from_millis(r.breaker_open_ms),
        },
    )
    .map_err(|e| StartError::Serve(format!("starting the plugin thread pool: {e}")))
}

/// A model error at start-up, naming the model directory.
fn model_error(dir: &Path, message: String) -> StartError {
    StartError::Model {
        dir: dir.display().to_string(),
        message,
    }
}

/// The engine's load options from `[model]` (device, dtype, threads, adapters).
fn engine_options(m: &ModelSection) -> engine::LoadOptions {
    engine::LoadOptions {
        device: m.device,
        dtype: m.dtype,
        threads: m.threads,
        max_batch_rows: m.max_batch_rows,
        adapters: m
            .adapters
            .iter()
            .map(|a| engine::AdapterSpec {
                name: a.name.clone(),
                dir: a.dir.clone(),
                merge: a.merge,
            })
            .collect(),
        max_adapter_rank: m.max_adapter_rank,
    }
}

/// Sorts an engine load error: no driver or no such GPU is the device's fault (so not
/// "palr model fetch"), an adapter over the rank bound the configuration's, anything else
/// the model's.
fn engine_error(m: &ModelSection, e: engine::EngineError) -> StartError {
    match e {
        engine::EngineError::AdapterRank { name, rank, max } => {
            StartError::Config(ConfigError::Invalid(format!(
                "adapter {name:?} of model.adapters has rank {rank}, over model.max_adapter_rank = {max}"
            )))
        }
        engine::EngineError::Cuda(c) if c.is_unavailable() => StartError::Device {
            device: m.device.to_string(),
            message: c.to_string(),
        },
        e => model_error(&m.dir, e.to_string()),
    }
}

/// Loads the model of `[model]`, with its LoRA adapters, on `model.device`.
fn load_model(m: &ModelSection) -> std::result::Result<Arc<dyn LanguageModel>, StartError> {
    engine::load(&m.dir, &engine_options(m)).map_err(|e| engine_error(m, e))
}

/// The model directory's tokenizer and chat template (if it has one): loaded once, every
/// snapshot's ranker is made with them.
struct Prompting {
    tok: Arc<Tokenizer>,
    chat: Option<ChatTemplate>,
}

impl Prompting {
    /// Reads the tokenizer and chat template of `[model]`'s directory.
    fn load(m: &ModelSection) -> std::result::Result<Self, StartError> {
        let dir = &m.dir;
        let tok = Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| model_error(dir, e.to_string()))?;
        let chat =
            ChatTemplate::from_model_dir(dir).map_err(|e| model_error(dir, e.to_string()))?;
        Ok(Self {
            tok: Arc::new(tok),
            chat,
        })
    }

    /// A ranker: `model` with this tokenizer and chat template, over `catalog`, configured
    /// by `[ranking]`.
    fn ranker(
        &self,
        cfg: &ServerConfig,
        model: Arc<dyn LanguageModel>,
        catalog: Arc<Catalog>,
    ) -> std::result::Result<Ranker, StartError> {
        Ok(Ranker::new(
            model,
            self.tok.clone(),
            self.chat.as_ref(),
            catalog,
            cfg.ranking.clone(),
        )?)
    }
}

/// Refuses a `model.default_adapter` the ranker does not have.
fn check_default_adapter(m: &ModelSection, ranker: &Ranker) -> std::result::Result<(), StartError> {
    let default_adapter = &m.default_adapter;
    if !default_adapter.is_empty() && !ranker.has_adapter(default_adapter) {
        return Err(StartError::Config(ConfigError::Invalid(format!(
            "model.default_adapter = {default_adapter:?} is not among model.adapters"
        ))));
    }
    Ok(())
}

/// Refuses a default candidate count that the default mode, score mode, cannot rank.
fn check_default_candidates(l: &Limits, ranker: &Ranker) -> std::result::Result<(), StartError> {
    let max_score = ranker.max_score_candidates();
    if l.default_rank_mode == Mode::Score && l.default_num_candidates as usize > max_score {
        return Err(StartError::Config(ConfigError::Invalid(format!(
            "limits.default_num_candidates = {} but score mode (limits.default_rank_mode) ranks \
             at most {max_score} candidates (one per ranking.prompt.score_labels character)",
            l.default_num_candidates
        ))));
    }
    Ok(())
}

/// Sets the `build_info` metric: palr's version, the model and its backend.
fn set_build_info(metrics: &Metrics, model: &dyn LanguageModel) {
    metrics
        .build_info
        .with_label_values(&[
            env!("CARGO_PKG_VERSION"),
            &model.config().name,
            &model.describe(),
        ])
        .set(1);
}

/// Ranking admission: `[server]`'s slots, queue and queue wait, reporting the queue depth.
fn admission(s: &ServerSection, metrics: &Metrics) -> Admission {
    Admission::new(
        s.max_concurrent_rank,
        s.max_queue,
        (s.max_queue_wait_ms > 0).then(|| Duration::from_millis(s.max_queue_wait_ms)),
        metrics.queue_depth.clone(),
    )
}

impl Recommender {
    /// Loads the data set, the retriever plugins, the model and the ranker (and warms the
    /// ranker's prompt prefixes when `server.warmup` is on), in this order: each step below
    /// is one function.
    pub fn load(cfg: &ServerConfig, metrics: Metrics) -> std::result::Result<Self, StartError> {
        cfg.validate()?;
        let ds = load_dataset(&cfg.data)?;
        let view = Arc::new(retrievers_view(cfg, &ds)?);
        let data = DataCounts::of(&ds);
        let catalog = Arc::new(ds.catalog);
        let set = RetrieverSet::load(&cfg.retrieval, view.clone())?;
        let t = Instant::now();
        let model = load_model(&cfg.model)?;
        let prompting = Prompting::load(&cfg.model)?;
        let ranker = prompting.ranker(cfg, model.clone(), catalog.clone())?;
        tracing::info!(
            model = %model.config().name,
            backend = %model.describe(),
            load_ms = t.elapsed().as_millis() as u64,
            "model loaded"
        );
        check_default_adapter(&cfg.model, &ranker)?;
        check_default_candidates(&cfg.limits, &ranker)?;
        set_build_info(&metrics, model.as_ref());
        let me = Self {
            admission: admission(&cfg.server, &metrics),
            rank_us: Default::default(),
            cfg: cfg.clone(),
            served: std::sync::RwLock::new(Arc::new(Served {
                catalog,
                view,
                set: Arc::new(set),
                ranker: Arc::new(ranker),
                data,
            })),
            source: None,
            reload_lock: std::sync::Mutex::new(()),
            health_hook: std::sync::Mutex::new(None),
            set_hook: std::sync::Mutex::new(None),
            model,
            prompting,
            metrics,
        };
        me.init_metrics();
        if cfg.server.warmup {
            me.warm_up(&me.served())?;
        }
        Ok(me)
    }

    /// Tells the metrics what was loaded (plugins, retrievers and fusions, adapters) and
    /// has the quarantine gauge follow the breakers.
    fn init_metrics(&self) {
        let served = self.served();
        let (plugins, sources) = served.set.names();
        let mut adapters = self.adapter_names();
        if self.model.merged_adapter().is_none() {
            adapters.push(BASE_MODEL_LABEL.to_owned());
        }
        self.metrics.init_loaded(&plugins, &sources, &adapters);
        self.metrics.set_retriever_info(&served.set.registry.list());
        self.set_data_metrics(&served);
        self.publish_adapters();
        // The quarantine gauge follows the breakers even where no server reports health.
        self.on_retriever_health(Arc::new(|_: &str, _: bool| {}));
    }

    /// Sets the gauges that describe the data `served` holds.
    fn set_data_metrics(&self, served: &Served) {
        let d = served.data;
        self.metrics
            .set_data(d.items, d.users, d.interactions, &served.view);
    }

    /// Runs each mode once on the first catalog items of `served` so its ranker's shared
    /// prompt prefixes are in the KV cache before its first request.
    fn warm_up(&self, served: &Served) -> std::result::Result<(), StartError> {
        if served.catalog.len() < 3 {
            return Ok(());
        }
        let t = Instant::now();
        let default = self.check_adapter(served, "").ok().flatten();
        for mode in [RankMode::Score, RankMode::Generate] {
            served.ranker.rank(&RankRequest {
                history: &[0],
                candidates: &[1, 2],
                k: 1,
                mode,
                adapter: default.as_ref().and_then(|a| a.pinned.as_ref()),
                deadline: None,
                cancel: None,
            })?;
        }
        tracing::info!(ms = t.elapsed().as_millis() as u64, "ranker warmed up");
        Ok(())
    }

    /// The configuration the server started with (its `[retrieval]` as at start-up: the
    /// section in use after a reload is [`Recommender::retrieval_config`]).
    pub fn config(&self) -> &ServerConfig {
        &self.cfg
    }

    /// Makes [`Recommender::reload_retrievers`] read the configuration from `source` again
    /// (`palr serve` passes its `--config` file and flags).
    pub fn reloadable_from(mut self, source: ConfigSource) -> Self {
        self.source = Some(source);
        self
    }

    /// The `[retrieval]` section the retrievers in use were made from.
    pub fn retrieval_config(&self) -> RetrievalSection {
        self.retriever_set().section.clone()
    }

    /// The snapshot served now — catalog, training view, retriever set and ranker, one
    /// consistent unit whatever a reload swaps in meanwhile. Each request takes it once, at
    /// its start, and uses nothing else.
    pub fn served(&self) -> Arc<Served> {
        // Only ever replaced whole: a poisoned lock still holds a valid snapshot.
        self.served
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The retriever set in use now (requests keep the one they started with): one
    /// consistent view of plugins, fusions, default and bulkheads, whatever a reload swaps in
    /// meanwhile.
    pub fn retriever_set(&self) -> Arc<RetrieverSet> {
        self.served().set.clone()
    }

    /// The ranker in use now (requests keep the one they started with).
    fn ranker(&self) -> Arc<Ranker> {
        self.served().ranker.clone()
    }

    /// The server's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The catalog in use now (a data reload swaps in another).
    pub fn catalog(&self) -> Arc<Catalog> {
        self.served().catalog.clone()
    }

    /// The loaded retrievers, by name.
    pub fn retrievers(&self) -> Vec<RetrieverInfo> {
        self.retriever_set().registry.list()
    }

    /// The configured fusions of retrievers, by name.
    pub fn fusions(&self) -> Vec<Arc<FusionSpec>> {
        self.retriever_set().registry.fusions()
    }

    /// The retriever used when a request names none.
    pub fn default_retriever(&self) -> String {
        self.retriever_set().section.default.clone()
    }

    /// The mode used when a request leaves it unspecified.
    pub fn default_mode(&self) -> Mode {
        self.cfg.limits.default_rank_mode
    }

    /// The model and the ranker's limits.
    pub fn model_summary(&self) -> ModelSummary {
        let c = self.model.config();
        // One snapshot: the catalog and the view reported belong together.
        let served = self.served();
        let ranker = &served.ranker;
        ModelSummary {
            name: c.name.clone(),
            architecture: c.architecture.clone(),
            backend: self.model.describe(),
            dtype: self.cfg.model.dtype.name().to_owned(),
            num_layers: c.n_layers,
            hidden_size: c.dim,
            vocab_size: c.vocab_size,
            max_context: c.max_position_embeddings,
            max_prompt_tokens: ranker.config().max_prompt_tokens,
            prompt_history_items: ranker.config().max_history,
            max_score_candidates: ranker.max_score_candidates(),
            catalog_items: served.catalog.len(),
            training_view_stage: served.view.stage().to_owned(),
            training_view_fingerprint: served.view.fingerprint().to_owned(),
        }
    }

    /// The adapter a request runs with (`None`: the model as loaded), pinned for the
    /// request's whole life (an unload or replacement meanwhile does not touch it), or
    /// NOT_FOUND.
    fn check_adapter(&self, served: &Served, adapter: &str) -> Result<Option<RequestAdapter>> {
        let name = if adapter.is_empty() {
            self.cfg.model.default_adapter.as_str()
        } else {
            adapter
        };
        if name.is_empty() {
            return Ok(None);
        }
        if let Ok(pinned) = served.ranker.adapter(name) {
            return Ok(Some(RequestAdapter {
                name: name.to_owned(),
                pinned,
            }));
        }
        let loaded = self.adapter_names();
        Err(ServiceError::NotFound(if loaded.is_empty() {
            format!(
                "unknown adapter {:?}: this server has no adapters loaded; leave adapter empty for the base model",
                clip(name)
            )
        } else {
            format!(
                "unknown adapter {:?}; loaded: {}",
                clip(name),
                loaded.join(", ")
            )
        }))
    }

    /// What a response reports as its adapter.
    fn adapter_used(&self, mode: Mode, adapter: &Option<RequestAdapter>) -> String {
        if mode.rank_mode().is_none() {
            return String::new();
        }
        adapter
            .as_ref()
            .map(|a| a.name.clone())
            .or_else(|| self.model.merged_adapter().map(str::to_owned))
            .unwrap_or_default()
    }

    /// Names requests may use in `adapter` (unmerged ones in load order, then the merged one).
    pub fn adapter_names(&self) -> Vec<String> {
        self.adapter_listing().into_iter().map(|a| a.name).collect()
    }

    /// Every adapter requests may name, with what it is (unmerged ones first, in load
    /// order; then the merged one).
    pub fn adapter_listing(&self) -> Vec<AdapterListing> {
        let m = &self.model;
        let default = &self.cfg.model.default_adapter;
        let mut out: Vec<AdapterListing> = m
            .adapters()
            .iter()
            .map(|a| AdapterListing::unmerged(a.info(), default))
            .collect();
        if let Some(name) = m.merged_adapter() {
            let dir = self.cfg.model.adapters.iter().find(|a| a.name == name);
            out.push(AdapterListing {
                name: name.to_owned(),
                merged: true,
                is_default: default == name,
                dir: dir.map(|a| a.dir.display().to_string()).unwrap_or_default(),
                generation: 0,
                rank: 0,
                projections: 0,
                parameters: 0,
                loaded_unix_ms: 0,
            });
        }
        out
    }

    /// Loads the PEFT adapter directory `dir` as `name`, unmerged, while serving (the admin
    /// API's LoadAdapter): checked against the base model and `[model]`'s bounds
    /// (`adapter_dirs`, `max_adapters`, `max_adapter_rank`), then put in the model's table
    /// at once. With `replace`, an adapter of that name is swapped for the new one; requests
    /// already holding it finish on it. Serialised with the other admin calls, logged (with
    /// `trigger`: who asked) and counted. Anything refused leaves the adapters as they were.
    ///
    /// Blocking (reads and uploads the weights): call it on a blocking thread.
    pub fn load_adapter(
        &self,
        name: &str,
        dir: &Path,
        replace: bool,
        trigger: &str,
    ) -> Result<AdapterChange> {
        let _serial = self.reload_lock.lock().unwrap_or_else(|p| p.into_inner());
        let t = Instant::now();
        let out = self.load_adapter_locked(name, dir, replace, t);
        self.adapter_call_done("LoadAdapter", name, trigger, &out);
        out
    }

    fn load_adapter_locked(
        &self,
        name: &str,
        dir: &Path,
        replace: bool,
        t: Instant,
    ) -> Result<AdapterChange> {
        let m = &self.cfg.model;
        let model = &self.model;
        super::config::check_adapter_name(name).map_err(ServiceError::InvalidArgument)?;
        if model.merged_adapter() == Some(name) {
            return Err(ServiceError::FailedPrecondition(format!(
                "adapter {name:?} is merged into the weights (model.adapters): it cannot be \
                 replaced while serving; load the new one under another name"
            )));
        }
        let dir = super::config::inside_adapter_dirs(dir, &m.adapter_dirs)
            .map_err(ServiceError::InvalidArgument)?;
        let loaded = model.adapters();
        let exists = loaded.iter().any(|a| a.name() == name);
        if exists && !replace {
            return Err(ServiceError::AlreadyExists(format!(
                "adapter {name:?} is loaded already: unload it first, or load with replace"
            )));
        }
        if !exists && loaded.len() >= m.max_adapters {
            return Err(ServiceError::ResourceExhausted(format!(
                "{} adapters are loaded, model.max_adapters = {}: unload one first ({})",
                loaded.len(),
                m.max_adapters,
                loaded
                    .iter()
                    .map(|a| a.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let (new, old) = model
            .load_adapter(name, &dir, replace)
            .map_err(|e| match e {
                engine::EngineError::AdapterExists(_) => ServiceError::AlreadyExists(e.to_string()),
                engine::EngineError::AdapterRank { rank, max, .. } => {
                    ServiceError::InvalidArgument(format!(
                        "adapter {name:?} has rank {rank}, over model.max_adapter_rank = {max}"
                    ))
                }
                engine::EngineError::OutOfMemory(_) => ServiceError::ResourceExhausted(format!(
                    "adapter {name:?} does not fit in memory: {e}"
                )),
                e => {
                    ServiceError::InvalidArgument(format!("adapter {name:?} cannot be loaded: {e}"))
                }
            })?;
        if let Some(old) = &old {
            self.ranker().forget_adapter(old.generation());
        }
        self.metrics.init_loaded(&[], &[], &[name.to_owned()]);
        self.publish_adapters();
        let default = &self.cfg.model.default_adapter;
        Ok(AdapterChange {
            adapter: AdapterListing::unmerged(new.info(), default),
            replaced: old.map(|o| AdapterListing::unmerged(o.info(), default)),
            took: t.elapsed(),
        })
    }

    /// Takes the unmerged adapter `name` out of service (the admin API's UnloadAdapter): new
    /// requests naming it are NOT_FOUND; requests already holding it finish on it, and its
    /// memory is freed when the last of them ends. `model.default_adapter` and a merged
    /// adapter cannot be unloaded. Serialised, logged and counted as LoadAdapter is.
    pub fn unload_adapter(&self, name: &str, trigger: &str) -> Result<AdapterChange> {
        let _serial = self.reload_lock.lock().unwrap_or_else(|p| p.into_inner());
        let t = Instant::now();
        let out = self.unload_adapter_locked(name, t);
        self.adapter_call_done("UnloadAdapter", name, trigger, &out);
        out
    }

    fn unload_adapter_locked(&self, name: &str, t: Instant) -> Result<AdapterChange> {
        let model = &self.model;
        if model.merged_adapter() == Some(name) {
            return Err(ServiceError::FailedPrecondition(format!(
                "adapter {name:?} is merged into the weights: it is the model served, and goes \
                 only with a restart without it in model.adapters"
            )));
        }
        if self.cfg.model.default_adapter == name {
            return Err(ServiceError::FailedPrecondition(format!(
                "adapter {name:?} is model.default_adapter, used by every request naming none: \
                 change the default (and restart) before unloading it"
            )));
        }
        let gone = model.unload_adapter(name).map_err(|_| {
            let loaded = self.adapter_names();
            ServiceError::NotFound(format!(
                "no adapter {:?} is loaded (loaded: {})",
                clip(name),
                if loaded.is_empty() {
                    "none".to_owned()
                } else {
                    loaded.join(", ")
                }
            ))
        })?;
        self.ranker().forget_adapter(gone.generation());
        self.publish_adapters();
        Ok(AdapterChange {
            adapter: AdapterListing::unmerged(gone.info(), &self.cfg.model.default_adapter),
            replaced: None,
            took: t.elapsed(),
        })
    }

    /// Counts and logs an adapter call's outcome.
    fn adapter_call_done(
        &self,
        call: &str,
        name: &str,
        trigger: &str,
        out: &Result<AdapterChange>,
    ) {
        let outcome = if out.is_ok() { "ok" } else { "error" };
        self.metrics
            .admin_calls
            .with_label_values(&[call, outcome])
            .inc();
        match out {
            Ok(c) => tracing::info!(
                trigger,
                call,
                adapter = %c.adapter.name,
                dir = %c.adapter.dir,
                generation = c.adapter.generation,
                rank = c.adapter.rank,
                replaced_generation = c.replaced.as_ref().map(|r| r.generation),
                took_ms = c.took.as_millis() as u64,
                "adapters changed"
            ),
            Err(e) => tracing::warn!(
                trigger,
                call,
                adapter = %clip(name),
                error = %e,
                "adapter call refused; the adapters in use are unchanged"
            ),
        }
    }

    /// Sets `palr_adapter_info` to the adapters requests may name now.
    fn publish_adapters(&self) {
        let info: Vec<(String, u64, usize, bool)> = self
            .adapter_listing()
            .into_iter()
            .map(|a| (a.name, a.generation, a.rank, a.merged))
            .collect();
        self.metrics.set_adapter_info(&info);
    }

    /// Indices of `ids` in `catalog` (the request's snapshot's), or an error naming the
    /// first unknown id and where it is.
    fn resolve(catalog: &Catalog, field: &str, ids: &[String]) -> Result<Vec<u32>> {
        ids.iter()
            .enumerate()
            .map(|(pos, id)| {
                catalog.index_of(id).ok_or_else(|| {
                    ServiceError::InvalidArgument(format!(
                        "{field}[{pos}] = {:?} is not an item id of this catalog ({} items); send ids \
                         as the data set writes them",
                        clip(id),
                        catalog.len()
                    ))
                })
            })
            .collect()
    }

    fn resolve_history(&self, catalog: &Catalog, history: &[String]) -> Result<Vec<u32>> {
        let l = &self.cfg.limits;
        if history.is_empty() {
            return Err(ServiceError::InvalidArgument(
                "history is empty: send at least one item id the user interacted with, oldest first"
                    .into(),
            ));
        }
        if history.len() > l.max_request_history as usize {
            return Err(ServiceError::InvalidArgument(format!(
                "history has {} items, over the limit of {}: send the most recent {} (only the \
                 last {} are used anyway)",
                history.len(),
                l.max_request_history,
                l.max_request_history,
                l.max_history_items
            )));
        }
        Self::resolve(catalog, "history", history)
    }

    /// Checks the request's user id and history timestamps; the timestamps returned are
    /// those of `recent`, the history's last `recent` items.
    fn context(
        &self,
        user_id: String,
        timestamps: Vec<i64>,
        history_len: usize,
        recent: usize,
    ) -> Result<Context> {
        if user_id.len() > MAX_USER_ID_BYTES {
            return Err(ServiceError::InvalidArgument(format!(
                "user_id has {} bytes, over the limit of {MAX_USER_ID_BYTES}",
                user_id.len()
            )));
        }
        let timestamps = match timestamps.len() {
            0 => None,
            n if n == history_len => Some(timestamps[n - recent..].to_vec()),
            n => {
                return Err(ServiceError::InvalidArgument(format!(
                    "history_timestamps has {n} entries for {history_len} history items: send                      one per item or none"
                )));
            }
        };
        Ok(Context {
            user_id,
            timestamps,
        })
    }

    fn resolve_exclude(&self, catalog: &Catalog, exclude: &[String]) -> Result<Vec<u32>> {
        let max = self.cfg.limits.max_exclude as usize;
        if exclude.len() > max {
            return Err(ServiceError::InvalidArgument(format!(
                "exclude has {} items, over the limit of {max}",
                exclude.len()
            )));
        }
        Self::resolve(catalog, "exclude", exclude)
    }

    fn mode(&self, m: Option<Mode>) -> Mode {
        m.unwrap_or_else(|| self.default_mode())
    }

    /// `num_candidates` after defaults, checked against `max` (and, for score mode, the score
    /// labels: a default is capped to them, an explicit number over them is refused).
    fn num_candidates(&self, ranker: &Ranker, n: u32, max: u32, mode: Mode) -> Result<usize> {
        let max_score = ranker.max_score_candidates();
        let n = bounded_num_candidates(n, max, self.cfg.limits.default_num_candidates)?;
        match (n, mode.rank_mode()) {
            (None, Some(RankMode::Score)) => {
                Ok((self.cfg.limits.default_num_candidates as usize).min(max_score))
            }
            (None, _) => Ok(self.cfg.limits.default_num_candidates as usize),
            (Some(n), m) => {
                if let Some(m) = m {
                    crate::rank::check_score_cap(n, m, max_score)
                        .map_err(|p| ServiceError::InvalidArgument(p.message(|_| String::new())))?;
                }
                Ok(n)
            }
        }
    }

    /// `k` after defaults, checked against `max_k` and the `available` candidates.
    fn k(&self, k: u32, available: usize, what: &str) -> Result<usize> {
        let l = &self.cfg.limits;
        if k == 0 {
            return Ok((l.default_k as usize).min(available));
        }
        if k > l.max_k {
            return Err(ServiceError::InvalidArgument(format!(
                "k = {k} is out of bounds: use 1..={} (0 = the default, {})",
                l.max_k, l.default_k
            )));
        }
        if k as usize > available {
            return Err(ServiceError::InvalidArgument(format!(
                "k = {k} exceeds {what} = {available}: ask for at most as many items as candidates"
            )));
        }
        Ok(k as usize)
    }

    /// Splits a history into the part used (the most recent `max_history_items`) and the
    /// older part (excluded from results only).
    fn recent<'h>(&self, history: &'h [u32]) -> (&'h [u32], &'h [u32]) {
        let keep = self.cfg.limits.max_history_items as usize;
        let cut = history.len().saturating_sub(keep);
        (&history[cut..], &history[..cut])
    }

    /// Retrieval on the plugin pool of `set` (the set the request started with), with
    /// metrics.
    #[allow(clippy::too_many_arguments)]
    async fn run_retrieve(
        &self,
        set: &RetrieverSet,
        name: &str,
        history: Vec<u32>,
        ctx: Context,
        n: usize,
        exclude: Vec<u32>,
        respond_by: Option<Instant>,
    ) -> Result<(Vec<(u32, f32)>, Duration)> {
        let source = set.registry.source(name)?;
        self.metrics
            .retriever_calls
            .with_label_values(&[name])
            .inc();
        let t = Instant::now();
        let request_time_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let ctx = Arc::new(OwnedContext {
            user_id: ctx.user_id,
            timestamps: ctx.timestamps,
            request_time_ms,
        });
        let (history, exclude) = (Arc::new(history), Arc::new(exclude));
        let call = |member: String, r: Arc<Retriever>, k: usize| {
            let (history, exclude, ctx) = (history.clone(), exclude.clone(), ctx.clone());
            async move {
                set.bulkheads
                    .call(&member, r, history, k, exclude, ctx)
                    .await
            }
        };
        let calls = async {
            match source {
                Source::Plugin(r) => call(name.to_owned(), r, n).await,
                Source::Fusion(spec, members) => {
                    // Every member at once, each through its own bulkhead.
                    let depth = n.max(spec.depth);
                    let lists = futures_util::future::join_all(
                        spec.members
                            .iter()
                            .zip(members)
                            .map(|(m, r)| call(m.clone(), r, depth)),
                    )
                    .await;
                    let mut ok = Vec::with_capacity(lists.len());
                    for (m, l) in spec.members.iter().zip(lists) {
                        match l {
                            Ok(l) => ok.push(l),
                            Err(e) => {
                                self.count_plugin_failure(&e);
                                return Err(ServiceError::FusionMember {
                                    fusion: name.to_owned(),
                                    member: m.clone(),
                                    source: Box::new(e),
                                });
                            }
                        }
                    }
                    Ok(spec.merge(&ok, n))
                }
            }
        };
        let out = by(respond_by, "retrieval", calls).await?;
        let dt = t.elapsed();
        self.metrics.stage("retrieve", dt);
        if let Err(e) = &out {
            self.count_plugin_failure(e);
        }
        Ok((out?, dt))
    }

    /// Counts (and logs) a plugin's failure in `palr_plugin_errors_total`.
    fn count_plugin_failure(&self, e: &ServiceError) {
        if let Some((retriever, kind)) = e.plugin_failure() {
            self.metrics
                .plugin_errors
                .with_label_values(&[retriever, kind])
                .inc();
            tracing::warn!(retriever, kind, error = %e, "retriever plugin failed");
        }
    }

    /// The mean time a whole ranking job of `mode` took, once one did.
    fn rank_time(&self, mode: RankMode) -> Option<Duration> {
        let us = self.rank_us[mode_index(mode)].load(std::sync::atomic::Ordering::Relaxed);
        (us > 0).then(|| Duration::from_micros(us))
    }

    fn record_rank_time(&self, mode: RankMode, took: Duration) {
        let new = took.as_micros() as f64;
        let _ = self.rank_us[mode_index(mode)].fetch_update(
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
            |old| {
                Some(if old == 0 {
                    new as u64
                } else {
                    (old as f64 * 0.8 + new * 0.2) as u64
                })
            },
        );
    }

    /// Retriever `name`'s isolation state (plugins only).
    pub fn bulkhead(&self, name: &str) -> Option<BulkheadStats> {
        self.retriever_set().bulkheads.stats(name)
    }

    /// Reports each retriever's breaker changes to `hook` (the health service), after
    /// setting `palr_retriever_quarantined`.
    pub fn on_retriever_health(&self, hook: HealthHook) {
        let quarantined = self.metrics.retriever_quarantined.clone();
        let hook: HealthHook = Arc::new(move |name: &str, serving: bool| {
            quarantined
                .with_label_values(&[name])
                .set(i64::from(!serving));
            hook(name, serving);
        });
        // Held while the hook is given to the set in use, so a reload swapping sets meanwhile
        // gives it to the new set too.
        let mut held = self.health_hook.lock().unwrap_or_else(|p| p.into_inner());
        self.retriever_set().bulkheads.set_health_hook(hook.clone());
        *held = Some(hook);
    }

    /// Calls `hook` after every reload that swapped the retriever set (the server's health
    /// entries: the plugins now serving, and the names gone).
    pub fn on_retrievers_swapped(&self, hook: RetrieverSetHook) {
        *self.set_hook.lock().unwrap_or_else(|p| p.into_inner()) = Some(hook);
    }

    /// Reloads the retrievers: reads the configuration again from where it came from
    /// ([`Recommender::reloadable_from`]), loads every plugin of its `[retrieval]` (library
    /// files opened again, instances created, i.e. fitted, on the server's training view) and
    /// its fusions with new bulkheads, then swaps the complete set in at once. Requests
    /// already running finish on the set they started with. Any failure leaves the running
    /// set untouched (FAILED_PRECONDITION, saying what is wrong). Reloads are serialised,
    /// logged (with `trigger`: who asked) and counted in `palr_admin_calls_total`.
    ///
    /// Blocking (plugins load and fit on this thread): call it on a blocking thread.
    pub fn reload_retrievers(&self, trigger: &str) -> Result<ReloadReport> {
        let _serial = self.reload_lock.lock().unwrap_or_else(|p| p.into_inner());
        let t = Instant::now();
        let out = self.reload_retrievers_locked(t);
        let outcome = if out.is_ok() { "ok" } else { "error" };
        self.metrics
            .admin_calls
            .with_label_values(&["ReloadRetrievers", outcome])
            .inc();
        match &out {
            Ok(r) => tracing::info!(
                trigger,
                retrievers = %r.retrievers.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(","),
                fusions = %r.fusions.join(","),
                default = %r.default,
                added = %r.added.join(","),
                removed = %r.removed.join(","),
                not_reloaded = %r.not_reloaded.join(","),
                took_ms = r.took.as_millis() as u64,
                "retrievers reloaded"
            ),
            Err(e) => tracing::warn!(
                trigger,
                error = %e,
                "retriever reload failed; the retrievers in use are unchanged"
            ),
        }
        out
    }

    /// The reload itself, under the admin lock. Long because it is one transaction read in
    /// order: re-read the config, refuse what needs a restart, build the whole new set,
    /// swap it in, then report what changed; any early return leaves the running set as is.
    fn reload_retrievers_locked(&self, t: Instant) -> Result<ReloadReport> {
        let refused = |e: String| {
            ServiceError::FailedPrecondition(format!(
                "reload refused, the retrievers in use are unchanged: {e}"
            ))
        };
        let source = self.source.as_ref().ok_or_else(|| {
            refused(
                "this server was not given a configuration to read again (palr serve does \
                 that; an embedding server needs Recommender::reloadable_from)"
                    .into(),
            )
        })?;
        let cfg = source.load().map_err(|e| refused(e.to_string()))?;
        let old = self.served();
        if cfg.retrieval.training != old.set.section.training {
            return Err(refused(format!(
                "retrieval.training is {:?} in the configuration but the server runs on {:?}; \
                 the training view is built from the data set at start-up: restart to change it",
                cfg.retrieval.training, old.set.section.training
            )));
        }
        let set = RetrieverSet::load(&cfg.retrieval, old.view.clone())
            .map_err(|e| refused(e.to_string()))?;
        let not_reloaded: Vec<&'static str> = [
            ("server", cfg.server != self.cfg.server),
            ("model", cfg.model != self.cfg.model),
            ("data", cfg.data != self.cfg.data),
            ("limits", cfg.limits != self.cfg.limits),
            ("ranking", cfg.ranking != self.cfg.ranking),
        ]
        .into_iter()
        .filter_map(|(section, differs)| differs.then_some(section))
        .collect();
        // The same data, catalog and ranker, with the new retrievers.
        let new = Arc::new(Served {
            catalog: old.catalog.clone(),
            view: old.view.clone(),
            set: Arc::new(set),
            ranker: old.ranker.clone(),
            data: old.data,
        });
        let (added, removed) = self.swap_in(&old, &new);
        // The old set goes when the last request holding it ends (here if none does).
        drop(old);
        let set = &new.set;
        Ok(ReloadReport {
            retrievers: set.registry.list(),
            fusions: set
                .registry
                .fusions()
                .iter()
                .map(|f| f.name.clone())
                .collect(),
            default: set.section.default.clone(),
            added,
            removed,
            not_reloaded,
            took: t.elapsed(),
        })
    }

    /// Swaps `new` in for `old` (the snapshot in use: callers hold the reload lock), then
    /// has the metrics and the health entries follow its retriever set. Returns the
    /// retriever and fusion names new in it, and those gone.
    fn swap_in(&self, old: &Served, new: &Arc<Served>) -> (Vec<String>, Vec<String>) {
        {
            // The breaker hook first, so no breaker change of the new set goes unreported.
            let hook = self.health_hook.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(h) = hook.as_ref() {
                new.set.bulkheads.set_health_hook(h.clone());
            }
            *self.served.write().unwrap_or_else(|p| p.into_inner()) = new.clone();
        }
        let (plugins, sources) = new.set.names();
        let (_, old_sources) = old.set.names();
        let removed: Vec<String> = old_sources
            .iter()
            .filter(|n| !sources.contains(n))
            .cloned()
            .collect();
        let added: Vec<String> = sources
            .iter()
            .filter(|n| !old_sources.contains(n))
            .cloned()
            .collect();
        self.metrics.init_loaded(&plugins, &sources, &[]);
        self.metrics.set_retriever_info(&new.set.registry.list());
        for name in &removed {
            self.metrics
                .retriever_quarantined
                .with_label_values(&[name])
                .set(0);
        }
        self.set_data_metrics(new);
        let hook = self
            .set_hook
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(h) = hook {
            h(&plugins, &removed);
        }
        (added, removed)
    }

    /// Reloads the data: reads the data directory of `[data]` again (same directory, format
    /// and unknown-item rule as at start-up), builds the retrievers' training view from it
    /// (`retrieval.training`), creates (fits) every retriever of the `[retrieval]` in use on
    /// that view with new bulkheads, makes a ranker over the new catalog (same model,
    /// tokenizer and chat template; caches start empty; warmed up when `server.warmup` is
    /// on), and swaps the four in together as one [`Served`]. Requests already running
    /// finish on the snapshot they started with. Any failure — a file that does not parse,
    /// an interaction with an unknown item (unless skipped), no items or no interactions, a
    /// retriever refusing the new view — leaves what runs untouched (FAILED_PRECONDITION,
    /// saying which file or retriever and what to do). Serialised with the other reloads,
    /// logged (with `trigger`: who asked) and counted in `palr_admin_calls_total`.
    ///
    /// Blocking (files are read and plugins fit on this thread): call it on a blocking
    /// thread.
    pub fn reload_data(&self, trigger: &str) -> Result<DataReloadReport> {
        let _serial = self.reload_lock.lock().unwrap_or_else(|p| p.into_inner());
        let t = Instant::now();
        let out = self.reload_data_locked(t);
        let outcome = if out.is_ok() { "ok" } else { "error" };
        self.metrics
            .admin_calls
            .with_label_values(&["ReloadData", outcome])
            .inc();
        match &out {
            Ok(r) => {
                tracing::info!(
                    trigger,
                    dir = %self.cfg.data.dir.display(),
                    items = r.after.items,
                    items_before = r.before.items,
                    items_added = r.items_added,
                    items_removed = r.items_removed,
                    users = r.after.users,
                    users_before = r.before.users,
                    interactions = r.after.interactions,
                    interactions_before = r.before.interactions,
                    skipped_unknown_items = r.after.skipped_unknown_items,
                    view = %r.view_stage,
                    fingerprint = %r.view_fingerprint,
                    previous_fingerprint = %r.previous_view_fingerprint,
                    retrievers = %r.retrievers.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(","),
                    took_ms = r.took.as_millis() as u64,
                    "data reloaded"
                );
                for i in r.retrievers.iter().filter(|i| i.stale_snapshot) {
                    tracing::warn!(
                        retriever = %i.name,
                        note = i.note.as_deref().unwrap_or(""),
                        "after the data reload this retriever serves pre-trained state fitted \
                         on an older snapshot of the data; retrain it on the new view to \
                         refresh it"
                    );
                }
            }
            Err(e) => tracing::warn!(
                trigger,
                dir = %self.cfg.data.dir.display(),
                error = %e,
                "data reload failed; the data and retrievers in use are unchanged"
            ),
        }
        out
    }

    /// The data reload itself, under the admin lock: read, build the whole new snapshot,
    /// swap it in, report. Any early return leaves the running snapshot as is.
    fn reload_data_locked(&self, t: Instant) -> Result<DataReloadReport> {
        let refused = |e: String| {
            ServiceError::FailedPrecondition(format!(
                "data reload refused, the data and retrievers in use are unchanged: {e}"
            ))
        };
        let old = self.served();
        let ds = load_dataset(&self.cfg.data).map_err(|e| refused(e.to_string()))?;
        let data = DataCounts::of(&ds);
        let view = Arc::new(retrievers_view(&self.cfg, &ds).map_err(|e| refused(e.to_string()))?);
        let catalog = Arc::new(ds.catalog);
        let set = RetrieverSet::load(&old.set.section, view.clone()).map_err(|e| match e {
            StartError::Retrieval(e) => refused(format!(
                "{e}. Every retriever is created (fitted) anew on the new data's view \
                 (stage {}, fingerprint {}): make this one accept it (e.g. train its weights \
                 on the new view) or remove it from [retrieval] and ReloadRetrievers first",
                view.stage(),
                view.fingerprint().get(..12).unwrap_or(view.fingerprint())
            )),
            e => refused(e.to_string()),
        })?;
        let ranker = self
            .prompting
            .ranker(&self.cfg, self.model.clone(), catalog.clone())
            .map_err(|e| refused(e.to_string()))?;
        let new = Arc::new(Served {
            catalog,
            view,
            set: Arc::new(set),
            ranker: Arc::new(ranker),
            data,
        });
        if self.cfg.server.warmup {
            // The new ranker's prompt prefixes, before requests reach it.
            self.warm_up(&new).map_err(|e| refused(e.to_string()))?;
        }
        let (items_added, items_removed) = catalog_diff(&old.catalog, &new.catalog);
        self.swap_in(&old, &new);
        Ok(DataReloadReport {
            before: old.data,
            after: new.data,
            items_added,
            items_removed,
            view_stage: new.view.stage().to_owned(),
            view_fingerprint: new.view.fingerprint().to_owned(),
            previous_view_fingerprint: old.view.fingerprint().to_owned(),
            retrievers: new.set.registry.list(),
            took: t.elapsed(),
        })
    }

    /// The error for a refused admission, counted by reason.
    fn refused(&self, r: Refused) -> ServiceError {
        let (reason, e) = match r {
            Refused::QueueFull { waiting } => ("queue_full", ServiceError::Busy { waiting }),
            Refused::TooLate { expected, left } => (
                "too_late",
                ServiceError::TooLate {
                    expected_ms: expected.as_millis() as u64,
                    left_ms: left.as_millis() as u64,
                },
            ),
            Refused::WaitedTooLong { waited } => (
                "waited_too_long",
                ServiceError::WaitedTooLong {
                    waited_ms: waited.as_millis() as u64,
                },
            ),
        };
        self.metrics
            .admission_refusals
            .with_label_values(&[reason])
            .inc();
        e
    }

    /// Ranking: waits for a slot, then runs `ranker` (the request's snapshot's) on a
    /// blocking thread.
    #[allow(clippy::too_many_arguments)]
    async fn run_rank(
        self: &Arc<Self>,
        ranker: Arc<Ranker>,
        history: Vec<u32>,
        candidates: Vec<u32>,
        k: usize,
        mode: RankMode,
        adapter: Option<RequestAdapter>,
        respond_by: Option<Instant>,
        timings: &mut Timings,
    ) -> Result<RankOutput> {
        let t = Instant::now();
        let own = self.rank_time(mode);
        let adapter_label = adapter
            .as_ref()
            .map(|a| a.name.clone())
            .or_else(|| self.model.merged_adapter().map(str::to_owned))
            .unwrap_or_else(|| BASE_MODEL_LABEL.to_owned());
        let permit = by(
            respond_by,
            "the queue wait",
            self.admission.acquire(respond_by, own),
        )
        .await?
        .map_err(|r| self.refused(r))?;
        timings.queue_s = t.elapsed().as_secs_f64();
        self.metrics.stage("queue", t.elapsed());
        let me = self.clone();
        // If this future is dropped (the client went away, or the server answered the
        // deadline first), the flag tells the ranker to stop: nobody waits for its result.
        let cancel = CancelOnDrop::default();
        let flag = cancel.0.clone();
        let job = tokio::task::spawn_blocking(move || {
            let _slot = permit;
            let _running = GaugeGuard::new(&me.metrics.rank_running);
            let started = Instant::now();
            let out = ranker.rank(&RankRequest {
                history: &history,
                candidates: &candidates,
                k,
                mode,
                adapter: adapter.as_ref().and_then(|a| a.pinned.as_ref()),
                deadline: respond_by,
                cancel: Some(&flag),
            });
            match &out {
                Err(RankError::DeadlineExceeded(stage)) => {
                    me.metrics
                        .rank_deadline_stops
                        .with_label_values(&[stage])
                        .inc();
                    // A stopped job ran at least this long: a lower bound for the estimate.
                    me.admission.record_at_least(started.elapsed());
                }
                Err(RankError::Cancelled(stage)) => {
                    tracing::info!(stage, "ranking stopped: the caller went away");
                    me.admission.record_at_least(started.elapsed());
                }
                // Whole jobs measure the ranking time the admission estimates use.
                Ok(_) => {
                    let took = started.elapsed();
                    me.admission.record(took);
                    me.record_rank_time(mode, took);
                }
                _ => {}
            }
            out
        });
        let out = joined(by(respond_by, "ranking", job).await?)??;
        cancel.disarm();
        self.record_ranked(mode, &adapter_label, &out.timings, timings);
        Ok(out)
    }

    /// Counts a finished ranking job and copies its stage times into the response's.
    fn record_ranked(
        &self,
        mode: RankMode,
        adapter_label: &str,
        rt: &crate::rank::RankTimings,
        timings: &mut Timings,
    ) {
        let m = &self.metrics;
        let label = mode.name();
        m.ranked_requests
            .with_label_values(&[label, adapter_label])
            .inc();
        m.stage_histogram("prompt").observe(rt.prompt_s);
        m.stage_histogram("prefill").observe(rt.prefill_s);
        if mode == RankMode::Generate {
            m.stage_histogram("decode").observe(rt.decode_s);
        }
        m.first_token
            .with_label_values(&[label])
            .observe(rt.first_token_s);
        m.prompt_tokens
            .with_label_values(&[label])
            .inc_by(rt.prompt_tokens as u64);
        m.cached_prompt_tokens
            .with_label_values(&[label])
            .inc_by(rt.cached_prompt_tokens as u64);
        m.generated_tokens
            .with_label_values(&[label])
            .inc_by(rt.generated_tokens as u64);
        timings.prompt_s = rt.prompt_s;
        timings.prefill_s = rt.prefill_s;
        timings.decode_s = rt.decode_s;
        timings.first_token_s = rt.first_token_s;
        timings.prompt_tokens = rt.prompt_tokens;
        timings.cached_prompt_tokens = rt.cached_prompt_tokens;
        timings.generated_tokens = rt.generated_tokens;
    }

    /// The top `k` of `candidates` (item, retriever score; best first): ranked by the LLM in
    /// the modes that use it (items it did not rank keep their retriever score), else in
    /// the given order.
    #[allow(clippy::too_many_arguments)]
    async fn order(
        self: &Arc<Self>,
        served: &Served,
        recent: Vec<u32>,
        candidates: &[(u32, f32)],
        k: usize,
        mode: Mode,
        adapter: Option<RequestAdapter>,
        respond_by: Option<Instant>,
        timings: &mut Timings,
    ) -> Result<Vec<Recommended>> {
        let rank_mode = match mode.rank_mode() {
            _ if candidates.is_empty() => return Ok(Vec::new()),
            None => {
                return Ok(candidates[..k]
                    .iter()
                    .enumerate()
                    .map(|(pos, &(item, score))| Recommended {
                        id: served.id(item),
                        title: served.title(item),
                        score,
                        retriever_rank: pos as u32 + 1,
                        by_llm: false,
                    })
                    .collect());
            }
            Some(m) => m,
        };
        let ids: Vec<u32> = candidates.iter().map(|c| c.0).collect();
        let out = self
            .run_rank(
                served.ranker.clone(),
                recent,
                ids,
                k,
                rank_mode,
                adapter,
                respond_by,
                timings,
            )
            .await?;
        Ok(out
            .items
            .iter()
            .map(|r| Recommended {
                id: served.id(r.item),
                title: served.title(r.item),
                score: if r.by_llm {
                    r.score
                } else {
                    candidates[r.candidate_rank as usize].1
                },
                retriever_rank: r.candidate_rank + 1,
                by_llm: r.by_llm,
            })
            .collect())
    }

    /// Retrieve with a plugin, then rank with the LLM (or keep the retriever's order).
    pub async fn recommend(
        self: &Arc<Self>,
        p: RecommendParams,
        respond_by: Option<Instant>,
    ) -> Result<Recommendation> {
        let t0 = Instant::now();
        let mode = self.mode(p.mode);
        // The catalog, retrievers and ranker this request runs on, whatever a reload swaps
        // in meanwhile; then its adapter, pinned (after the snapshot: an unload meanwhile
        // retires the adapter in this snapshot's ranker, which then caches nothing for it).
        let served = self.served();
        let adapter = self.check_adapter(&served, &p.adapter)?;
        let adapter_used = self.adapter_used(mode, &adapter);
        let set = &served.set;
        let retriever = if p.retriever.is_empty() {
            set.section.default.clone()
        } else {
            p.retriever
        };
        // Unknown names fail before any other work.
        set.registry.source(&retriever)?;
        let history = self.resolve_history(&served.catalog, &p.history)?;
        let mut exclude = self.resolve_exclude(&served.catalog, &p.exclude)?;
        let n = self.num_candidates(
            &served.ranker,
            p.num_candidates,
            self.cfg.limits.max_num_candidates,
            mode,
        )?;
        let k = self.k(p.k, n, "num_candidates")?;
        let (recent, older) = self.recent(&history);
        let ctx = self.context(p.user_id, p.history_timestamps, history.len(), recent.len())?;
        exclude.extend_from_slice(older);
        let recent = recent.to_vec();
        // What the ranker could not answer in time is refused before retrieval spends on it.
        if let Some(m) = mode.rank_mode() {
            self.admission
                .in_time(respond_by, self.rank_time(m))
                .map_err(|r| self.refused(r))?;
        }

        let mut timings = Timings::default();
        let (candidates, dt) = self
            .run_retrieve(set, &retriever, recent.clone(), ctx, n, exclude, respond_by)
            .await?;
        timings.retrieve_s = dt.as_secs_f64();
        let k = k.min(candidates.len());
        let items = self
            .order(
                &served,
                recent,
                &candidates,
                k,
                mode,
                adapter,
                respond_by,
                &mut timings,
            )
            .await?;
        timings.total_s = t0.elapsed().as_secs_f64();
        Ok(Recommendation {
            items,
            timings,
            retriever,
            mode,
            adapter: adapter_used,
        })
    }

    /// Rank the caller's candidates with the LLM (or keep their order).
    pub async fn rank(
        self: &Arc<Self>,
        p: RankParams,
        respond_by: Option<Instant>,
    ) -> Result<Recommendation> {
        let t0 = Instant::now();
        let mode = self.mode(p.mode);
        // The catalog and ranker this request runs on, whatever a reload swaps in meanwhile;
        // then its adapter, pinned (as in `recommend`).
        let served = self.served();
        let adapter = self.check_adapter(&served, &p.adapter)?;
        let adapter_used = self.adapter_used(mode, &adapter);
        let history = self.resolve_history(&served.catalog, &p.history)?;
        let max = self.cfg.limits.max_num_candidates as usize;
        if p.candidates.is_empty() {
            return Err(ServiceError::InvalidArgument(
                "candidates is empty: send the item ids to rank, best first".into(),
            ));
        }
        if p.candidates.len() > max {
            return Err(ServiceError::InvalidArgument(format!(
                "{} candidates, over the limit of {max}: send at most {max}",
                p.candidates.len()
            )));
        }
        let candidates = Self::resolve(&served.catalog, "candidates", &p.candidates)?;
        // Against the whole history (the ranker sees only its recent part), before any wait.
        crate::rank::check_candidates(
            &history,
            &candidates,
            mode.rank_mode().unwrap_or(RankMode::Generate),
            served.ranker.max_score_candidates(),
        )
        .map_err(|e| ServiceError::InvalidArgument(e.message(|pos| p.candidates[pos].clone())))?;
        let k = self.k(p.k, candidates.len(), "the number of candidates")?;
        let (recent, _) = self.recent(&history);
        let mut timings = Timings::default();
        // The caller's candidates carry no scores of their own.
        let candidates: Vec<(u32, f32)> = candidates.into_iter().map(|c| (c, 0.0)).collect();
        let items = self
            .order(
                &served,
                recent.to_vec(),
                &candidates,
                k,
                mode,
                adapter,
                respond_by,
                &mut timings,
            )
            .await?;
        timings.total_s = t0.elapsed().as_secs_f64();
        Ok(Recommendation {
            items,
            timings,
            retriever: String::new(),
            mode,
            adapter: adapter_used,
        })
    }

    /// Retrieval only.
    pub async fn retrieve(
        self: &Arc<Self>,
        p: RetrieveParams,
        respond_by: Option<Instant>,
    ) -> Result<Retrieval> {
        let t0 = Instant::now();
        // The catalog and retrievers this request runs on, whatever a reload swaps in
        // meanwhile.
        let served = self.served();
        let set = &served.set;
        let retriever = if p.retriever.is_empty() {
            set.section.default.clone()
        } else {
            p.retriever
        };
        set.registry.source(&retriever)?;
        let history = self.resolve_history(&served.catalog, &p.history)?;
        let mut exclude = self.resolve_exclude(&served.catalog, &p.exclude)?;
        let l = &self.cfg.limits;
        let n = bounded_num_candidates(
            p.num_candidates,
            l.max_retrieve_candidates,
            l.default_num_candidates,
        )?
        .unwrap_or(l.default_num_candidates as usize);
        let (recent, older) = self.recent(&history);
        let ctx = self.context(p.user_id, p.history_timestamps, history.len(), recent.len())?;
        exclude.extend_from_slice(older);
        let (found, dt) = self
            .run_retrieve(
                set,
                &retriever,
                recent.to_vec(),
                ctx,
                n,
                exclude,
                respond_by,
            )
            .await?;
        Ok(Retrieval {
            items: found
                .into_iter()
                .map(|(item, score)| Retrieved {
                    id: served.id(item),
                    title: served.title(item),
                    score,
                })
                .collect(),
            retriever,
            timings: Timings {
                retrieve_s: dt.as_secs_f64(),
                total_s: t0.elapsed().as_secs_f64(),
                ..Timings::default()
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::data::{Catalog, Format, InteractionsBuilder, Item, SourceFiles};
    use crate::eval::ViewStage;

    fn dataset() -> Dataset {
        let catalog = Catalog::from_items(
            (0..5)
                .map(|i| Item::new(format!("{}", i + 1), &format!("Movie {i}")))
                .collect(),
        )
        .unwrap();
        let mut b = InteractionsBuilder::new();
        // User a: four items (two of them become valid/test targets); user b: two items
        // (too few for targets, all training).
        for (t, item) in [0u32, 1, 2, 3].into_iter().enumerate() {
            b.push("a", item, 100 + t as i64, None);
        }
        b.push("b", 4, 7, None);
        b.push("b", 0, 8, None);
        let interactions = b.build(&catalog);
        Dataset {
            catalog,
            interactions,
            files: SourceFiles {
                format: Format::Csv,
                items: "items.csv".into(),
                interactions: "inter.csv".into(),
            },
            skipped_unknown_items: 0,
        }
    }

    #[test]
    fn training_views_all_and_train_split() {
        let ds = dataset();
        let split = Split::leave_one_out(&ds.interactions);
        let training_view = |ds: &Dataset, stage| {
            crate::eval::training_view(&split, &ds.interactions, &ds.catalog, stage)
        };
        let all = training_view(&ds, ViewStage::All).unwrap();
        assert_eq!(all.stage(), "all");
        assert_eq!(all.user_ids().unwrap(), ["a", "b"]);
        assert_eq!(all.offsets(), &[0, 4, 6]);
        assert_eq!(all.items(), &[0, 1, 2, 3, 4, 0]);
        assert_eq!(all.timestamps().unwrap(), &[100, 101, 102, 103, 7, 8]);
        let train = training_view(&ds, ViewStage::Valid).unwrap();
        assert_eq!(train.stage(), "valid");
        // User a keeps its first two items (3rd = valid, 4th = test); user b keeps both.
        assert_eq!(train.offsets(), &[0, 2, 4]);
        assert_eq!(train.items(), &[0, 1, 4, 0]);
        assert_eq!(train.timestamps().unwrap(), &[100, 101, 7, 8]);
        assert_eq!(train.n_items(), 5);
    }

    #[test]
    fn catalog_diff_counts_ids_added_and_removed() {
        let catalog = |ids: &[&str]| {
            Catalog::from_items(ids.iter().map(|id| Item::new(*id, "Title")).collect()).unwrap()
        };
        let old = catalog(&["1", "2", "3"]);
        assert_eq!(catalog_diff(&old, &old), (0, 0));
        // Order does not matter, ids do.
        assert_eq!(catalog_diff(&old, &catalog(&["3", "1", "2"])), (0, 0));
        assert_eq!(catalog_diff(&old, &catalog(&["1", "2", "3", "4"])), (1, 0));
        assert_eq!(catalog_diff(&old, &catalog(&["1", "4", "5"])), (2, 2));
        assert_eq!(catalog_diff(&old, &catalog(&["9"])), (1, 3));
    }

    #[test]
    fn data_counts_of_a_data_set() {
        let ds = dataset();
        assert_eq!(
            DataCounts::of(&ds),
            DataCounts {
                items: 5,
                users: 2,
                interactions: 6,
                skipped_unknown_items: 0,
            }
        );
    }

    #[test]
    fn modes_parse() {
        assert_eq!("generate".parse::<Mode>().unwrap(), Mode::Generate);
        for m in Mode::ALL {
            assert_eq!(m.name().parse::<Mode>().unwrap(), m);
        }
        assert!(
            "llm"
                .parse::<Mode>()
                .unwrap_err()
                .contains("score, generate or retriever")
        );
    }
}
