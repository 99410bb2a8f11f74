//! The server's configuration: one TOML document (`palr serve --config FILE`), read with
//! serde (`deny_unknown_fields` everywhere, so a typo is an error naming the key).
//!
//! Layers, each overriding the one before:
//! 1. **defaults** — [`ServerConfig::default`], which runs the demo (SmolLM2-135M-Instruct on
//!    MovieLens-100k with the popularity / itemknn / markov plugins); `configs/palr.toml` is
//!    exactly these defaults, commented;
//! 2. **the file** — tables merge key by key into the defaults; arrays (the retriever list)
//!    replace the default array whole;
//! 3. **environment variables** — `PALR_<TABLE>__<KEY>`: `PALR_` followed by the key's path,
//!    upper-cased, with `__` (two underscores) between path parts, e.g.
//!    `PALR_SERVER__ADDR=0.0.0.0:50051`, `PALR_LIMITS__MAX_K=20`,
//!    `PALR_RANKING__PROMPT__USE_CHAT_TEMPLATE=false`. The value is read as a TOML value
//!    (`20`, `true`, `"text"`, `[1, 2]`, `[{ name = "pop", path = "..." }]`); anything that
//!    is not valid TOML is taken as a plain string. Only variables with `__` after the prefix
//!    are configuration, so `PALR_MODEL_DIR`, `PALR_DATA_DIR` and other single-underscore
//!    variables of other commands are never read here;
//! 4. **command-line flags** ([`Overrides`]: `--addr`, `--metrics-addr`, `--model`, ...).
//!
//! Relative paths are relative to the working directory. [`ServerConfig::validate`] checks
//! the bounds the service relies on; what depends on the loaded model (score labels, context
//! length) is checked when the ranker is built.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize};

use crate::data::Format;
use crate::engine::{Device, WeightDtype};
use crate::eval::ViewStage;
use crate::rank::RankerConfig;

use super::recommender::Mode;
use crate::retrieval::{FusionMethod, FusionSpec, RetrieverSpec};

/// Prefix of configuration environment variables.
pub const ENV_PREFIX: &str = "PALR_";
/// Separator between path parts in a configuration environment variable.
pub const ENV_SEPARATOR: &str = "__";

/// Errors reading or checking the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not valid TOML, or a key is unknown or has the wrong type.
    #[error("config file {}: {message}", path.display())]
    File { path: PathBuf, message: String },
    /// An environment variable cannot be applied.
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    /// A value is out of its bounds; the message names the key and the bounds.
    #[error("config: {0}")]
    Invalid(String),
}

/// Result alias of this module.
pub type Result<T, E = ConfigError> = std::result::Result<T, E>;

/// The whole server configuration.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Listening, logging, concurrency and shutdown.
    pub server: ServerSection,
    /// The LLM that ranks.
    pub model: ModelSection,
    /// The data set: item catalog (ids, titles) and the interactions retrievers learn from.
    pub data: DataSection,
    /// Retriever plugins.
    pub retrieval: RetrievalSection,
    /// Request defaults and bounds.
    pub limits: Limits,
    /// The LLM ranker: prompts, token limits, session pool (`palr::rank::RankerConfig`).
    pub ranking: RankerConfig,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!("unknown log format {other:?}; use text or json")),
        }
    }
}

/// `[server]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSection {
    /// gRPC listen address (`IP:PORT`; port 0 = any free port).
    pub addr: String,
    /// Prometheus `/metrics` listen address (`IP:PORT`); empty = no metrics endpoint.
    pub metrics_addr: String,
    /// Admin API listen address (`IP:PORT`; `palr.admin.v1.Admin`). The admin API is on only
    /// when some token of `[server.auth]` has the `admin` scope; empty = off in any case.
    pub admin_addr: String,
    /// `text` or `json` log lines. The level comes from `RUST_LOG` (default `info`).
    pub log_format: LogFormat,
    /// Ranking jobs (LLM passes) that run at once. Each runs on a blocking thread and uses
    /// the engine's whole thread pool, so 1 is right for a CPU backend.
    pub max_concurrent_rank: usize,
    /// Requests that may wait for a ranking slot; more are refused with RESOURCE_EXHAUSTED
    /// ("server busy, retry later"). 0 = never wait.
    pub max_queue: usize,
    /// Longest a request waits for a ranking slot, in milliseconds; then RESOURCE_EXHAUSTED.
    /// 0 = until its deadline. (Requests whose deadline the expected wait plus ranking time
    /// would pass are refused at once with DEADLINE_EXCEEDED, whatever this says.)
    pub max_queue_wait_ms: u64,
    /// Compute the ranker's shared prompt prefixes (both modes) before reporting SERVING.
    pub warmup: bool,
    /// On SIGTERM/SIGINT, report NOT_SERVING for this long before refusing new requests,
    /// so load balancers stop sending (milliseconds).
    pub shutdown_grace_ms: u64,
    /// Then wait at most this long for in-flight requests to finish (seconds); requests
    /// still running after it are cut off, logged with their count, and `palr serve` exits
    /// non-zero.
    pub drain_timeout_s: u64,
    /// Most gRPC connections open at once; more are closed at once (counted in
    /// `palr_connections_refused_total`). The open-file limit is raised to fit it.
    pub max_connections: usize,
    /// Most connections from one peer address, so one client cannot take them all.
    pub max_connections_per_peer: usize,
    /// A connection with no request in flight for this long is closed (GOAWAY); 0 = never.
    pub idle_timeout_s: u64,
    /// HTTP/2 keep-alive ping interval (seconds; 0 = off) ...
    pub keepalive_interval_s: u64,
    /// ... and how long an unanswered ping waits before the connection is closed.
    pub keepalive_timeout_s: u64,
    /// Most concurrent streams (calls) on one connection.
    pub max_concurrent_streams: u32,
    /// Largest request header block (bytes); a larger one refuses its stream only.
    pub max_header_bytes: u32,
    /// Calls per second one peer address may make (token bucket); 0 = no limit. Over it:
    /// RESOURCE_EXHAUSTED before any work.
    pub rate_limit_per_s: f64,
    /// The bucket's size: calls a peer may make at once after being quiet.
    pub rate_limit_burst: f64,
    /// Serve gRPC server reflection (grpcurl and the like work without proto files).
    pub reflection: bool,
    /// `[server.tls]`: TLS or mutual TLS on the gRPC listener.
    pub tls: TlsSection,
    /// `[server.auth]`: bearer-token authentication.
    pub auth: AuthSection,
}

/// `[server.tls]`. Empty paths = plaintext HTTP/2 (a warning when listening beyond loopback).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSection {
    /// PEM certificate chain of the server.
    pub cert_file: PathBuf,
    /// PEM private key of the server.
    pub key_file: PathBuf,
    /// PEM CA certificates; when set, clients must present a certificate they signed
    /// (mutual TLS).
    pub client_ca_file: PathBuf,
}

/// `[server.auth]`. No tokens = no authentication.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSection {
    /// A file of accepted bearer tokens, one per line: `TOKEN` or `NAME TOKEN` (the name
    /// identifies the caller in logs and rate limits); `#` starts a comment.
    pub tokens_file: PathBuf,
    /// The name of an environment variable holding accepted tokens, comma separated.
    pub tokens_env: String,
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            addr: "127.0.0.1:50051".into(),
            metrics_addr: "127.0.0.1:9090".into(),
            admin_addr: "127.0.0.1:50052".into(),
            log_format: LogFormat::Text,
            max_concurrent_rank: 1,
            max_queue: 64,
            max_queue_wait_ms: 5000,
            warmup: true,
            shutdown_grace_ms: 0,
            drain_timeout_s: 30,
            max_connections: 4096,
            max_connections_per_peer: 512,
            idle_timeout_s: 300,
            keepalive_interval_s: 60,
            keepalive_timeout_s: 20,
            max_concurrent_streams: 128,
            max_header_bytes: 32 * 1024,
            rate_limit_per_s: 0.0,
            rate_limit_burst: 50.0,
            reflection: true,
            tls: TlsSection::default(),
            auth: AuthSection::default(),
        }
    }
}

impl ServerSection {
    /// The gRPC address, parsed.
    pub fn grpc_addr(&self) -> Result<SocketAddr> {
        parse_addr("server.addr", &self.addr)
    }

    /// The metrics address, parsed; `None` when metrics are off.
    pub fn metrics_socket(&self) -> Result<Option<SocketAddr>> {
        if self.metrics_addr.is_empty() {
            return Ok(None);
        }
        parse_addr("server.metrics_addr", &self.metrics_addr).map(Some)
    }

    /// The admin API address, parsed; `None` when it is empty (the admin API is then off
    /// whatever the tokens say).
    pub fn admin_socket(&self) -> Result<Option<SocketAddr>> {
        if self.admin_addr.is_empty() {
            return Ok(None);
        }
        parse_addr("server.admin_addr", &self.admin_addr).map(Some)
    }
}

fn parse_addr(key: &str, s: &str) -> Result<SocketAddr> {
    s.parse().map_err(|_| {
        ConfigError::Invalid(format!(
            "{key} = {s:?} is not an IP:PORT address (e.g. \"127.0.0.1:50051\" or \"0.0.0.0:50051\")"
        ))
    })
}

/// `data.format`: "" = detect, else a name [`Format`] knows.
fn format_from_str<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<Format>, D::Error> {
    let s = String::deserialize(d)?;
    if s.is_empty() {
        return Ok(None);
    }
    s.parse()
        .map(Some)
        .map_err(|e| serde::de::Error::custom(format!("data.format: {e}, or \"\" to detect")))
}

/// `model.device`: a string parsed by [`Device`]'s `FromStr` (`cpu`, `cuda`, `cuda:N`).
fn device_from_str<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Device, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map_err(serde::de::Error::custom)
}

/// `[model]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSection {
    /// Hugging Face model directory (`config.json`, safetensors, `tokenizer.json`);
    /// `palr model fetch` puts the default model here.
    pub dir: PathBuf,
    /// Where the model runs: `cpu`, `cuda` (= `cuda:0`) or `cuda:N` (that NVIDIA GPU; needs
    /// `dtype = "bf16"`).
    #[serde(deserialize_with = "device_from_str")]
    pub device: Device,
    /// `bf16` (the default; required on a GPU) or `f32`.
    pub dtype: WeightDtype,
    /// Engine worker threads; 0 = one per core.
    pub threads: usize,
    /// Most prompt tokens one forward pass processes (longer prompts are fed in chunks).
    pub max_batch_rows: usize,
    /// Adapter used when a request names none. Empty: the model as loaded (with the merged
    /// adapter, if one is).
    pub default_adapter: String,
    /// LoRA adapters (PEFT format), `[[model.adapters]]`.
    pub adapters: Vec<AdapterEntry>,
    /// Most unmerged adapters held at once, those of `adapters` and those the admin API
    /// loads (each holds its weights in memory).
    pub max_adapters: usize,
    /// Largest LoRA rank an adapter may have (bounds its memory and each session's LoRA
    /// scratch).
    pub max_adapter_rank: usize,
    /// Directories the admin API's LoadAdapter may read adapters from: an adapter directory
    /// must lie inside one of them (after symbolic links are resolved).
    pub adapter_dirs: Vec<PathBuf>,
}

/// `dir` resolved (symbolic links and `..` included) if it lies inside one of `roots`, the
/// existing ones of `model.adapter_dirs`; else the error says what to change.
pub fn inside_adapter_dirs(dir: &Path, roots: &[PathBuf]) -> std::result::Result<PathBuf, String> {
    let real = std::fs::canonicalize(dir)
        .map_err(|e| format!("adapter directory {} cannot be opened: {e}", dir.display()))?;
    if roots
        .iter()
        .filter_map(|r| std::fs::canonicalize(r).ok())
        .any(|r| real.starts_with(r))
    {
        return Ok(real);
    }
    Err(format!(
        "adapter directory {} is outside model.adapter_dirs ({}): put the adapter inside one of \
         them, or add its parent there and restart",
        dir.display(),
        roots
            .iter()
            .map(|r| r.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

/// Whether `name` can name an adapter: 1 to 64 ASCII letters, digits, `-`, `_` or `.`
/// (names are metric labels and log fields). The error says what is wrong.
pub fn check_adapter_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err(format!(
            "adapter name {:?} must have 1 to 64 characters",
            name.chars().take(80).collect::<String>()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "adapter name {name:?} has {c:?}: use ASCII letters, digits, '-', '_' and '.'"
        ));
    }
    Ok(())
}

/// `[[model.adapters]]`: one LoRA adapter.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdapterEntry {
    /// The name requests pick it by (`adapter` field).
    pub name: String,
    /// PEFT adapter directory (`adapter_config.json`, `adapter_model.safetensors`).
    pub dir: PathBuf,
    /// Fold it into the weights at load: no run-time cost, but then the base model is not
    /// served and no other adapter may be merged. Default: kept apart, picked per request.
    #[serde(default)]
    pub merge: bool,
}

impl Default for ModelSection {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("models/smollm2-135m-instruct"),
            device: Device::Cpu,
            // bf16 ranks as f32 does (benchmarks/results/experiments/bf16-ranking) in half
            // the memory, and at twice the speed or more on CPUs with bf16 dot products.
            dtype: WeightDtype::Bf16,
            threads: 0,
            max_batch_rows: 512,
            default_adapter: String::new(),
            adapters: Vec::new(),
            max_adapters: 8,
            max_adapter_rank: 64,
            adapter_dirs: vec![PathBuf::from("adapters")],
        }
    }
}

/// `[data]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataSection {
    /// Data set directory (`palr data fetch ml-100k` puts MovieLens-100k here).
    pub dir: PathBuf,
    /// `recbole`, `ml-100k`, `ml-1m`, `csv` or `jsonl` (any case); empty = detected from the
    /// files. Parsed by [`Format`]'s own `FromStr`, the one list of formats.
    #[serde(deserialize_with = "format_from_str")]
    pub format: Option<Format>,
    /// Drop interactions whose item is not in the catalog instead of failing at start-up.
    pub skip_unknown_items: bool,
}

impl Default for DataSection {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("data/ml-100k"),
            format: None,
            skip_unknown_items: false,
        }
    }
}

/// `[retrieval]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetrievalSection {
    /// Retriever used when a request names none.
    pub default: String,
    /// What the retrievers learn from: `all` interactions (serving), or one of the
    /// leave-one-out evaluation views, `valid` (alias `train-split`: each user's training
    /// part) or `test` (alias `test-split`: plus the validation item), for evaluating against
    /// this server with `palr eval --addr --split valid|test`.
    pub training: ViewStage,
    /// Directories searched for bare library names, in order; empty = the `palr`
    /// executable's directory (and its parent when that is `deps/`), i.e. the cargo target
    /// directory the plugins were built into.
    pub plugin_dirs: Vec<PathBuf>,
    /// The plugins to load (`[[retrieval.retrievers]]`: `name`, `path`, and `config` (a
    /// table) or `config_json` (text)); see `plugins/README.md`.
    pub retrievers: Vec<RetrieverSpec>,
    /// Fused retrievers over loaded plugins (`[[retrieval.fusions]]`: `name`, `members`,
    /// `method` = "rrf" | "score", `weights`, `rrf_k`, `depth`), used by name like a plugin.
    pub fusions: Vec<FusionSpec>,
    /// Longest a retriever call may take, in milliseconds (0 = no limit besides the
    /// request's deadline). A call past it fails with UNAVAILABLE; the plugin's thread is
    /// left to finish on its own (a plugin cannot be interrupted).
    pub timeout_ms: u64,
    /// Calls one retriever may have running at once (a retriever's own
    /// `max_concurrent_calls` overrides it); past it calls fail at once with UNAVAILABLE.
    /// An abandoned call keeps its slot until the plugin returns, so a hung plugin holds at
    /// most this many threads and never slows the others.
    pub max_concurrent_calls: usize,
    /// Consecutive timeouts after which a retriever is quarantined (its calls fail at once);
    /// 0 = never.
    pub breaker_timeouts: u32,
    /// How long a quarantine lasts before one probe call is let through, in milliseconds.
    pub breaker_open_ms: u64,
}

/// The shipped SASRec weights for MovieLens-100k (one file per training view; relative to the
/// working directory, the repository root for `scripts/run.sh` and the tests).
pub const SASREC_ML100K_WEIGHTS: &str = "plugins/sasrec/weights/ml100k";

impl Default for RetrievalSection {
    fn default() -> Self {
        Self {
            default: "sasrec".into(),
            training: ViewStage::All,
            plugin_dirs: Vec::new(),
            retrievers: vec![
                RetrieverSpec::new("popularity", "palr_retriever_popularity", "{}"),
                RetrieverSpec::new("itemknn", "palr_retriever_itemknn", "{}"),
                RetrieverSpec::new("markov", "palr_retriever_markov", "{}"),
                RetrieverSpec::new(
                    "sasrec",
                    "palr_retriever_sasrec",
                    format!(r#"{{"weights":"{SASREC_ML100K_WEIGHTS}"}}"#),
                ),
            ],
            // Chosen on the validation split: benchmarks/results/fusion/valid-grid.md.
            fusions: vec![FusionSpec {
                weights: vec![1.0, 0.3, 0.3],
                ..FusionSpec::new("fused", FusionMethod::Rrf, &["sasrec", "markov", "itemknn"])
            }],
            timeout_ms: 2000,
            max_concurrent_calls: 16,
            breaker_timeouts: 5,
            breaker_open_ms: 10_000,
        }
    }
}

/// `[limits]`: defaults for unset request fields and the bounds of set ones.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Items returned when a request's `k` is 0 (capped at the number of candidates).
    pub default_k: u32,
    /// Largest `k` a request may ask for.
    pub max_k: u32,
    /// Candidates retrieved for the ranker when `num_candidates` is 0.
    pub default_num_candidates: u32,
    /// Largest `num_candidates` (Recommend) and candidate list (Rank). Score mode is further
    /// capped by its labels (`ranking.prompt.score_labels`, 26 by default).
    pub max_num_candidates: u32,
    /// Largest `num_candidates` of a Retrieve call (no LLM, so it may be large).
    pub max_retrieve_candidates: u32,
    /// Most recent history items used for retrieval and ranking; older ones are only
    /// excluded from the results. (The prompt holds `ranking.max_history` of them.)
    pub max_history_items: u32,
    /// Longest history accepted at all; longer is INVALID_ARGUMENT.
    pub max_request_history: u32,
    /// Most items a request's `exclude` may list.
    pub max_exclude: u32,
    /// `score`, `generate` or `retriever`: the mode of requests that leave it unspecified.
    pub default_rank_mode: Mode,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            default_k: 10,
            max_k: 50,
            default_num_candidates: 20,
            max_num_candidates: 50,
            max_retrieve_candidates: 1000,
            max_history_items: 200,
            max_request_history: 1000,
            max_exclude: 1000,
            default_rank_mode: Mode::Score,
        }
    }
}

/// Command-line overrides, the last layer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    pub addr: Option<String>,
    pub metrics_addr: Option<String>,
    pub model_dir: Option<PathBuf>,
    pub device: Option<Device>,
    pub dtype: Option<WeightDtype>,
    pub data_dir: Option<PathBuf>,
    pub log_format: Option<LogFormat>,
    pub threads: Option<usize>,
    pub max_concurrent_rank: Option<usize>,
    pub max_queue: Option<usize>,
    pub default_retriever: Option<String>,
}

/// Where a server's configuration came from — its file (if any) and its flags — so that it
/// can be read again, the same way, while the server runs (`ReloadRetrievers`, SIGHUP). The
/// environment is read again from the process at each load.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConfigSource {
    /// The file given to `palr serve --config`.
    pub file: Option<PathBuf>,
    /// The command-line overrides.
    pub overrides: Overrides,
}

impl ConfigSource {
    /// A source of `file` alone (no flags).
    pub fn file(file: impl Into<PathBuf>) -> Self {
        Self {
            file: Some(file.into()),
            overrides: Overrides::default(),
        }
    }

    /// The configuration as `palr serve` would load it now: defaults, the file, the
    /// process's `PALR_*__*` variables, the flags; validated.
    pub fn load(&self) -> Result<ServerConfig> {
        let env = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)));
        ServerConfig::load(self.file.as_deref(), env, &self.overrides)
    }
}

impl ServerConfig {
    /// Defaults, then `file` (if any), then the `PALR_*__*` variables among `env`, then
    /// `overrides`; validated.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &Overrides,
    ) -> Result<Self> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                let file_err = |message: String| ConfigError::File {
                    path: path.to_owned(),
                    message,
                };
                let table: toml::Table =
                    toml::from_str(&text).map_err(|e| file_err(e.to_string()))?;
                // Checked alone first, so a bad key is reported against the file.
                Self::from_table(table.clone()).map_err(file_err)?;
                table
            }
            None => toml::Table::new(),
        };
        let mut vars: Vec<(String, String)> =
            env.into_iter().filter(|(k, _)| is_config_var(k)).collect();
        vars.sort();
        for (var, value) in vars {
            apply_env(&mut table, &var, &value)?;
            // Checked one at a time, so a bad variable is named.
            Self::from_table(table.clone()).map_err(|message| ConfigError::Env {
                var: var.clone(),
                message,
            })?;
        }
        let mut cfg = Self::from_table(table).map_err(ConfigError::Invalid)?;
        cfg.apply(overrides);
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parses a TOML document alone (no layers), validated.
    pub fn from_toml(text: &str) -> Result<Self> {
        let table: toml::Table =
            toml::from_str(text).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let cfg = Self::from_table(table).map_err(ConfigError::Invalid)?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn from_table(table: toml::Table) -> std::result::Result<Self, String> {
        let retrieval = table.get("retrieval").and_then(toml::Value::as_table);
        // The default fusions merge the default retrievers: a config with retrievers of its
        // own starts without them (it may name its own).
        let own_retrievers_only =
            retrieval.is_some_and(|r| r.contains_key("retrievers") && !r.contains_key("fusions"));
        let mut cfg = Self::deserialize(toml::Value::Table(table)).map_err(|e| e.to_string())?;
        if own_retrievers_only {
            cfg.retrieval.fusions.clear();
        }
        Ok(cfg)
    }

    /// Applies command-line overrides.
    pub fn apply(&mut self, o: &Overrides) {
        let s = &mut self.server;
        if let Some(v) = &o.addr {
            s.addr = v.clone();
        }
        if let Some(v) = &o.metrics_addr {
            s.metrics_addr = v.clone();
        }
        if let Some(v) = o.log_format {
            s.log_format = v;
        }
        if let Some(v) = o.max_concurrent_rank {
            s.max_concurrent_rank = v;
        }
        if let Some(v) = o.max_queue {
            s.max_queue = v;
        }
        if let Some(v) = &o.model_dir {
            self.model.dir = v.clone();
        }
        if let Some(v) = o.device {
            self.model.device = v;
        }
        if let Some(v) = o.dtype {
            self.model.dtype = v;
        }
        if let Some(v) = o.threads {
            self.model.threads = v;
        }
        if let Some(v) = &o.data_dir {
            self.data.dir = v.clone();
        }
        if let Some(v) = &o.default_retriever {
            self.retrieval.default = v.clone();
        }
    }

    /// Checks the bounds the service relies on; the message names the key and the bound.
    /// Long by nature: a flat list of independent checks, one per key, each with its message.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let grpc = self.server.grpc_addr()?;
        let metrics = self.server.metrics_socket()?;
        if let Some(admin) = self.server.admin_socket()?
            && admin.port() != 0
        {
            for (key, other) in [("addr", Some(grpc)), ("metrics_addr", metrics)] {
                if other == Some(admin) {
                    return bad(format!(
                        "server.admin_addr = {:?} is also server.{key}: give the admin API an \
                         address of its own (or \"\" to turn it off)",
                        self.server.admin_addr
                    ));
                }
            }
        }
        if self.server.max_concurrent_rank == 0 {
            return bad("server.max_concurrent_rank must be at least 1".into());
        }
        let m = &self.model;
        for a in &m.adapters {
            check_adapter_name(&a.name).or_else(|e| bad(format!("[[model.adapters]]: {e}")))?;
        }
        let unmerged = m.adapters.iter().filter(|a| !a.merge).count();
        if unmerged > m.max_adapters {
            return bad(format!(
                "[[model.adapters]] lists {unmerged} unmerged adapters but model.max_adapters = {}: \
                 raise it or list fewer",
                m.max_adapters
            ));
        }
        if m.max_adapter_rank == 0 {
            return bad("model.max_adapter_rank must be at least 1".into());
        }
        // Checked here, before the data, the plugins or the GPU driver are touched.
        if let Err(e) = crate::engine::check_device_dtype(self.model.device, self.model.dtype) {
            return bad(format!(
                "model.device = \"{}\": {e}: set dtype = \"bf16\" in [model] (or \
                 PALR_MODEL__DTYPE=bf16, or --dtype bf16)",
                self.model.device
            ));
        }
        let l = &self.limits;
        let range = |key: &str, v: u32, lo: u32, hi: u32, hi_key: &str| {
            if v < lo || v > hi {
                Err(ConfigError::Invalid(format!(
                    "limits.{key} = {v} must be in {lo}..={hi} ({hi_key})"
                )))
            } else {
                Ok(())
            }
        };
        range(
            "max_num_candidates",
            l.max_num_candidates,
            1,
            l.max_retrieve_candidates,
            "1..=limits.max_retrieve_candidates",
        )?;
        range(
            "default_num_candidates",
            l.default_num_candidates,
            1,
            l.max_num_candidates,
            "1..=limits.max_num_candidates",
        )?;
        range(
            "max_k",
            l.max_k,
            1,
            l.max_num_candidates,
            "1..=limits.max_num_candidates",
        )?;
        range("default_k", l.default_k, 1, l.max_k, "1..=limits.max_k")?;
        range(
            "max_history_items",
            l.max_history_items,
            1,
            l.max_request_history,
            "1..=limits.max_request_history",
        )?;
        if l.max_request_history == 0 {
            return bad("limits.max_request_history must be at least 1".into());
        }
        let r = &self.retrieval;
        if r.retrievers.is_empty() {
            return bad(
                "retrieval.retrievers is empty: configure at least one retriever plugin".into(),
            );
        }
        let names = || {
            r.retrievers
                .iter()
                .map(|s| s.name.as_str())
                .chain(r.fusions.iter().map(|f| f.name.as_str()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if !r.retrievers.iter().any(|s| s.name == r.default)
            && !r.fusions.iter().any(|f| f.name == r.default)
        {
            return bad(format!(
                "retrieval.default = {:?} is not among retrieval.retrievers or \
                 retrieval.fusions ({})",
                r.default,
                names()
            ));
        }
        for f in &r.fusions {
            f.check()
                .map_err(|e| ConfigError::Invalid(format!("retrieval.fusions: {e}")))?;
        }
        Ok(())
    }
}

/// Whether `var` is a configuration variable (`PALR_` + something with `__`).
pub fn is_config_var(var: &str) -> bool {
    var.strip_prefix(ENV_PREFIX)
        .is_some_and(|rest| rest.contains(ENV_SEPARATOR))
}

/// Sets the key that `var` names in `table` to `value` (read as TOML, else as a string).
fn apply_env(table: &mut toml::Table, var: &str, value: &str) -> Result<()> {
    let err = |message: String| ConfigError::Env {
        var: var.to_owned(),
        message,
    };
    let rest = var.strip_prefix(ENV_PREFIX).unwrap_or(var);
    let path: Vec<String> = rest.split(ENV_SEPARATOR).map(str::to_lowercase).collect();
    if path.iter().any(String::is_empty) {
        return Err(err(
            "empty key part; write PALR_<TABLE>__<KEY> with exactly two underscores between parts"
                .into(),
        ));
    }
    let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_owned()));
    let (leaf, tables) = path.split_last().expect("split yields at least one part");
    let mut at = table;
    for (i, part) in tables.iter().enumerate() {
        let entry = at
            .entry(part.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        at = match entry {
            toml::Value::Table(t) => t,
            _ => {
                return Err(err(format!(
                    "`{}` is not a table, so it has no key `{}`",
                    tables[..=i].join("."),
                    path[i + 1]
                )));
            }
        };
    }
    at.insert(leaf.clone(), parsed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo_file(rel: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn example_file_is_exactly_the_defaults() {
        let path = repo_file("configs/palr.toml");
        let from_file = ServerConfig::load(Some(&path), Vec::new(), &Overrides::default()).unwrap();
        assert_eq!(from_file, ServerConfig::default());
        ServerConfig::default().validate().unwrap();
        // The file spells every default out: it is not just empty.
        let text = std::fs::read_to_string(&path).unwrap();
        let table: toml::Table = toml::from_str(&text).unwrap();
        for key in ["server", "model", "data", "retrieval", "limits", "ranking"] {
            assert!(table.contains_key(key), "configs/palr.toml lacks [{key}]");
        }
        let ranking = table["ranking"].as_table().unwrap();
        assert!(
            ranking.contains_key("prompt"),
            "configs/palr.toml lacks [ranking.prompt]"
        );
        assert_eq!(
            table["retrieval"]["retrievers"].as_array().unwrap().len(),
            4
        );
        assert_eq!(table["retrieval"]["fusions"].as_array().unwrap().len(), 1);
    }

    /// The TOML examples in the docs are real configuration: the `[[retrieval.*]]` block of
    /// plugins/README.md and the commented fusion example of configs/palr.toml parse.
    #[test]
    fn documented_retrieval_examples_parse() {
        let readme = std::fs::read_to_string(repo_file("plugins/README.md")).unwrap();
        let block = readme
            .split("```toml")
            .skip(1)
            .map(|b| b.split("```").next().unwrap())
            .find(|b| b.contains("[[retrieval.retrievers]]"))
            .expect("plugins/README.md has a [[retrieval.retrievers]] example");
        let c =
            ServerConfig::from_toml(&format!("[retrieval]\ndefault = \"knn\"\n{block}")).unwrap();
        assert_eq!(c.retrieval.retrievers.len(), 2);
        assert_eq!(c.retrieval.fusions[0].members, ["knn", "pop"]);
        let file = std::fs::read_to_string(repo_file("configs/palr.toml")).unwrap();
        let example: String = file
            .lines()
            .skip_while(|l| !l.starts_with("# [[retrieval.fusions]]"))
            .take_while(|l| l.starts_with("# "))
            .map(|l| format!("{}\n", &l[2..]))
            .collect();
        let c = ServerConfig::from_toml(&format!("[retrieval]\n{example}")).unwrap();
        assert_eq!(c.retrieval.fusions[0].weights, [1.0, 0.5]);
    }

    /// The default fusion merges the default retrievers: a config with its own retrievers and
    /// no fusions has none (else it would fail for members it never loaded); one that keeps
    /// the default retrievers keeps it.
    #[test]
    fn own_retrievers_drop_the_default_fusions() {
        let c = ServerConfig::from_toml(
            "[retrieval]\ndefault = \"m\"\n[[retrieval.retrievers]]\nname = \"m\"\npath = \"palr_retriever_markov\"\n",
        )
        .unwrap();
        assert!(c.retrieval.fusions.is_empty());
        let c = ServerConfig::from_toml("[retrieval]\ntimeout_ms = 5\n").unwrap();
        assert_eq!(c.retrieval.fusions[0].name, "fused");
        assert_eq!(c.retrieval.default, "sasrec");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let e = ServerConfig::from_toml("[server]\nadress = \"x\"").unwrap_err();
        assert!(e.to_string().contains("unknown field `adress`"), "{e}");
        let e = ServerConfig::from_toml("[limits]\nmax_k = \"ten\"").unwrap_err();
        assert!(e.to_string().contains("max_k"), "{e}");
        let e = ServerConfig::from_toml("[server]\naddr = \"localhost\"").unwrap_err();
        assert!(e.to_string().contains("server.addr"), "{e}");
        let e = ServerConfig::from_toml("[limits]\ndefault_k = 60").unwrap_err();
        assert!(
            e.to_string()
                .contains("limits.default_k = 60 must be in 1..=50"),
            "{e}"
        );
        let e = ServerConfig::from_toml("[limits]\nmax_k = 60").unwrap_err();
        assert!(
            e.to_string()
                .contains("limits.max_k = 60 must be in 1..=50"),
            "{e}"
        );
        let e = ServerConfig::from_toml("[retrieval]\ndefault = \"nope\"").unwrap_err();
        assert!(e.to_string().contains("\"nope\" is not among"), "{e}");
        assert!(e.to_string().contains("popularity, itemknn, markov"), "{e}");
        let e = ServerConfig::from_toml("[retrieval]\nretrievers = []").unwrap_err();
        assert!(e.to_string().contains("at least one retriever"), "{e}");
        let e = ServerConfig::from_toml("[server]\nmax_concurrent_rank = 0").unwrap_err();
        assert!(e.to_string().contains("max_concurrent_rank"), "{e}");
        let e = ServerConfig::from_toml("[data]\nformat = \"parquet\"").unwrap_err();
        assert!(e.to_string().contains("data.format"), "{e}");
        assert!(e.to_string().contains("known: recbole, ml-100k"), "{e}");
        // Format's own rules: any case, "" = detect.
        let c = ServerConfig::from_toml("[data]\nformat = \"ML-100K\"").unwrap();
        assert_eq!(c.data.format, Some(crate::data::Format::MovieLens100k));
        assert_eq!(
            ServerConfig::from_toml("[data]\nformat = \"\"")
                .unwrap()
                .data
                .format,
            None
        );
        let e = ServerConfig::from_toml("[ranking]\nmax_histroy = 3").unwrap_err();
        assert!(e.to_string().contains("unknown field `max_histroy`"), "{e}");
        let e = ServerConfig::from_toml("[retrieval]\ntraining = \"train\"").unwrap_err();
        assert!(
            e.to_string().contains("`valid`") && e.to_string().contains("`all`"),
            "{e}"
        );
        for (text, stage) in [
            ("all", ViewStage::All),
            ("valid", ViewStage::Valid),
            ("train-split", ViewStage::Valid),
            ("test", ViewStage::Test),
            ("test-split", ViewStage::Test),
        ] {
            let c = ServerConfig::from_toml(&format!("[retrieval]\ntraining = {text:?}")).unwrap();
            assert_eq!(c.retrieval.training, stage, "{text}");
        }
    }

    #[test]
    fn admin_addr_is_its_own_or_empty() {
        let c = ServerConfig::default();
        assert_eq!(
            c.server.admin_socket().unwrap(),
            Some("127.0.0.1:50052".parse().unwrap())
        );
        let off = ServerConfig::from_toml("[server]\nadmin_addr = \"\"").unwrap();
        assert_eq!(off.server.admin_socket().unwrap(), None);
        let e = ServerConfig::from_toml("[server]\nadmin_addr = \"localhost:1\"").unwrap_err();
        assert!(e.to_string().contains("server.admin_addr"), "{e}");
        for key in ["addr", "metrics_addr"] {
            let e = ServerConfig::from_toml(&format!(
                "[server]\n{key} = \"127.0.0.1:7000\"\nadmin_addr = \"127.0.0.1:7000\""
            ))
            .unwrap_err();
            assert!(
                e.to_string().contains(&format!(
                    "server.admin_addr = \"127.0.0.1:7000\" is also server.{key}"
                )),
                "{e}"
            );
        }
        // Port 0 (any free port) is never a clash.
        ServerConfig::from_toml("[server]\naddr = \"127.0.0.1:0\"\nadmin_addr = \"127.0.0.1:0\"")
            .unwrap();
    }

    #[test]
    fn config_sources_read_the_file_again() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("palr.toml");
        std::fs::write(&file, "[limits]\ndefault_k = 4\n").unwrap();
        let mut source = ConfigSource::file(&file);
        source.overrides.default_retriever = Some("markov".into());
        let c = source.load().unwrap();
        assert_eq!(
            (c.limits.default_k, c.retrieval.default.as_str()),
            (4, "markov")
        );
        std::fs::write(&file, "[limits]\ndefault_k = 6\n").unwrap();
        assert_eq!(source.load().unwrap().limits.default_k, 6);
        std::fs::write(&file, "[limits]\ndefault_k = \"six\"\n").unwrap();
        let e = source.load().unwrap_err().to_string();
        assert!(e.contains("palr.toml") && e.contains("default_k"), "{e}");
    }

    #[test]
    fn model_device_parses_and_needs_bf16_on_cuda() {
        assert_eq!(ServerConfig::default().model.device, Device::Cpu);
        let c = ServerConfig::from_toml("[model]\ndevice = \"cuda:1\"\ndtype = \"bf16\"").unwrap();
        assert_eq!(c.model.device, Device::Cuda(1));
        let c = ServerConfig::from_toml("[model]\ndevice = \"cuda\"\ndtype = \"bf16\"").unwrap();
        assert_eq!(c.model.device, Device::Cuda(0));
        let c = ServerConfig::from_toml("[model]\ndevice = \"cpu\"").unwrap();
        assert_eq!(c.model.device, Device::Cpu);
        for bad in ["gpu", "cuda:", "cuda:x", "CUDA:0", "cuda:-1", ""] {
            let e = ServerConfig::from_toml(&format!("[model]\ndevice = {bad:?}"))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(&format!("unknown device {bad:?}"))
                    && e.contains("use cpu, cuda or cuda:N")
                    && e.contains("device"),
                "{bad:?}: {e}"
            );
        }
        let e = ServerConfig::from_toml("[model]\ndevice = 0").unwrap_err();
        assert!(e.to_string().contains("device"), "{e}");
        // bf16 is the default dtype, so naming a GPU is enough.
        assert_eq!(ServerConfig::default().model.dtype, WeightDtype::Bf16);
        let c = ServerConfig::from_toml("[model]\ndevice = \"cuda\"").unwrap();
        assert_eq!(
            (c.model.device, c.model.dtype),
            (Device::Cuda(0), WeightDtype::Bf16)
        );
        // CUDA with f32 weights: refused by validate(), before any file, plugin or driver
        // is touched, saying what to set.
        for text in [
            "[model]\ndevice = \"cuda\"\ndtype = \"f32\"",
            "[model]\ndevice = \"cuda:1\"\ndtype = \"f32\"",
        ] {
            let e = ServerConfig::from_toml(text).unwrap_err().to_string();
            assert!(
                e.contains("needs bf16 weights") && e.contains("set dtype = \"bf16\""),
                "{e}"
            );
        }
        // The same through the other layers: environment and flags.
        let e = ServerConfig::load(
            None,
            env(&[
                ("PALR_MODEL__DEVICE", "cuda:1"),
                ("PALR_MODEL__DTYPE", "f32"),
            ]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("model.device = \"cuda:1\": cuda:1 needs bf16"),
            "{e}"
        );
        let e = ServerConfig::load(
            None,
            env(&[("PALR_MODEL__DEVICE", "tpu")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("PALR_MODEL__DEVICE")
                && e.to_string().contains("unknown device"),
            "{e}"
        );
        let c = ServerConfig::load(
            None,
            env(&[("PALR_MODEL__DEVICE", "cuda:1")]),
            &Overrides {
                dtype: Some(WeightDtype::Bf16),
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(
            (c.model.device, c.model.dtype),
            (Device::Cuda(1), WeightDtype::Bf16)
        );
        let c = ServerConfig::load(
            None,
            Vec::new(),
            &Overrides {
                device: Some(Device::Cuda(2)),
                dtype: Some(WeightDtype::Bf16),
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(c.model.device, Device::Cuda(2));
    }

    #[test]
    fn layers_apply_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            r#"
            [server]
            addr = "0.0.0.0:1"
            max_queue = 3
            [limits]
            max_k = 30
            [[retrieval.retrievers]]
            name = "pop"
            path = "palr_retriever_popularity"
            config = { window_seconds = 60 }
            [retrieval]
            default = "pop"
            "#,
        )
        .unwrap();
        let vars = env(&[
            ("PALR_SERVER__ADDR", "0.0.0.0:2"),
            ("PALR_LIMITS__DEFAULT_K", "7"),
            ("PALR_RANKING__PROMPT__USE_CHAT_TEMPLATE", "false"),
            ("PALR_SERVER__METRICS_ADDR", ""),
            // Not configuration: single underscores, or another prefix.
            ("PALR_MODEL_DIR", "/elsewhere"),
            ("HOME", "/root"),
        ]);
        let o = Overrides {
            addr: Some("0.0.0.0:3".into()),
            threads: Some(2),
            ..Overrides::default()
        };
        let c = ServerConfig::load(Some(&file), vars.clone(), &o).unwrap();
        assert_eq!(c.server.addr, "0.0.0.0:3", "flags beat the environment");
        assert_eq!(c.server.max_queue, 3, "the file beats the defaults");
        assert_eq!(
            c.server.metrics_addr, "",
            "an empty variable sets an empty string"
        );
        assert_eq!(c.limits.max_k, 30);
        assert_eq!(c.limits.default_k, 7);
        assert_eq!(
            c.limits.max_num_candidates, 50,
            "untouched keys keep defaults"
        );
        assert!(!c.ranking.prompt.use_chat_template);
        assert_eq!(c.model.threads, 2);
        assert_eq!(
            c.model.dir,
            ModelSection::default().dir,
            "PALR_MODEL_DIR is not config"
        );
        assert_eq!(
            c.retrieval.retrievers.len(),
            1,
            "arrays replace the default"
        );
        assert_eq!(
            c.retrieval.retrievers[0].config_json,
            r#"{"window_seconds":60}"#
        );
        let c = ServerConfig::load(Some(&file), vars, &Overrides::default()).unwrap();
        assert_eq!(c.server.addr, "0.0.0.0:2", "the environment beats the file");
    }

    #[test]
    fn env_values_are_toml_or_strings() {
        let mut t = toml::Table::new();
        apply_env(&mut t, "PALR_A__B", "12").unwrap();
        apply_env(&mut t, "PALR_A__C", "127.0.0.1:80").unwrap();
        apply_env(&mut t, "PALR_A__D", "\"12\"").unwrap();
        apply_env(&mut t, "PALR_E__F__G", "[1, 2]").unwrap();
        assert_eq!(t["a"]["b"].as_integer(), Some(12));
        assert_eq!(t["a"]["c"].as_str(), Some("127.0.0.1:80"));
        assert_eq!(t["a"]["d"].as_str(), Some("12"));
        assert_eq!(t["e"]["f"]["g"].as_array().unwrap().len(), 2);
        let e = apply_env(&mut t, "PALR_A__B__C", "1").unwrap_err();
        assert!(e.to_string().contains("`a.b` is not a table"), "{e}");
        let e = apply_env(&mut t, "PALR_A____B", "1").unwrap_err();
        assert!(e.to_string().contains("empty key part"), "{e}");
    }

    #[test]
    fn bad_env_and_file_errors_name_their_source() {
        let e = ServerConfig::load(
            None,
            env(&[("PALR_SERVER__ADRR", "x")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(
            matches!(&e, ConfigError::Env { var, message } if var == "PALR_SERVER__ADRR" && message.contains("adrr")),
            "{e}"
        );
        let e = ServerConfig::load(
            None,
            env(&[("PALR_LIMITS__MAX_K", "many")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("PALR_LIMITS__MAX_K"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, "[model]\ndirr = 'x'\n").unwrap();
        let e = ServerConfig::load(Some(&file), Vec::new(), &Overrides::default()).unwrap_err();
        assert!(
            e.to_string().contains("bad.toml") && e.to_string().contains("dirr"),
            "{e}"
        );
        let e = ServerConfig::load(
            Some(&dir.path().join("missing.toml")),
            Vec::new(),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("cannot read config file"), "{e}");
    }

    #[test]
    fn adapter_names_and_directories_are_checked() {
        for ok in ["fx", "ml100k-markov_score.v2", &"a".repeat(64)] {
            assert!(check_adapter_name(ok).is_ok(), "{ok}");
        }
        for (bad, says) in [
            ("", "1 to 64"),
            (&*"a".repeat(65), "1 to 64"),
            ("two words", "' '"),
            ("../x", "'/'"),
            ("ümlaut", "'ü'"),
        ] {
            let e = check_adapter_name(bad).unwrap_err();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
        let root = tempfile::tempdir().unwrap();
        let allowed = root.path().join("adapters");
        let outside = root.path().join("elsewhere");
        std::fs::create_dir_all(allowed.join("fx")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        let roots = vec![allowed.clone(), root.path().join("missing")];
        let inside = inside_adapter_dirs(&allowed.join("fx"), &roots).unwrap();
        assert_eq!(inside, allowed.join("fx").canonicalize().unwrap());
        // `..` and a symbolic link out of an allowed directory are outside.
        let e = inside_adapter_dirs(&allowed.join("../elsewhere"), &roots).unwrap_err();
        assert!(e.contains("outside model.adapter_dirs"), "{e}");
        std::os::unix::fs::symlink(&outside, allowed.join("link")).unwrap();
        let e = inside_adapter_dirs(&allowed.join("link"), &roots).unwrap_err();
        assert!(e.contains("outside model.adapter_dirs"), "{e}");
        let e = inside_adapter_dirs(&allowed.join("nope"), &roots).unwrap_err();
        assert!(e.contains("cannot be opened"), "{e}");
    }
}
