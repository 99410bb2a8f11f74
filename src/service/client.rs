//! A typed client of `palr.v1.Recommender`: the generated tonic client with the protobuf
//! messages converted to the service's plain types, for `palr recommend` and `palr bench
//! recommend`; and [`AdminClient`], the same for `palr.admin.v1.Admin` (`palr admin`).

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::proto::admin::v1 as admin_pb;
use crate::proto::admin::v1::admin_client::AdminClient as AdminRpcClient;
use crate::proto::v1 as pb;
use crate::proto::v1::recommender_client::RecommenderClient;

use super::grpc::code_name;
use super::recommender::{
    Mode, RankParams, RecommendParams, Recommendation, Recommended, Retrieval, RetrieveParams,
    Retrieved, Timings,
};

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No connection to the server.
    #[error("cannot connect to {addr}: {message} (is `palr serve` running there?)")]
    Connect { addr: String, message: String },
    /// The server answered with an error status.
    #[error("{}: {message}", code_name(*code))]
    Status { code: tonic::Code, message: String },
    /// The server's answer is not what this client understands.
    #[error("unexpected response: {0}")]
    Response(String),
}

impl From<tonic::Status> for ClientError {
    fn from(s: tonic::Status) -> Self {
        Self::Status {
            code: s.code(),
            message: s.message().to_owned(),
        }
    }
}

/// Result alias of the client.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// One loaded retriever, as ListRetrievers reports it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RetrieverSummary {
    pub name: String,
    pub plugin_name: String,
    pub plugin_version: String,
    pub description: String,
    pub library_path: String,
    pub abi_version: u32,
    pub is_default: bool,
    pub calls: u64,
    pub failures: u64,
}

/// What GetModelInfo reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServerInfo {
    pub model_name: String,
    pub architecture: String,
    pub backend: String,
    pub dtype: String,
    pub num_layers: u32,
    pub hidden_size: u32,
    pub vocab_size: u32,
    pub max_context: u32,
    pub catalog_items: u32,
    pub default_rank_mode: Option<Mode>,
    pub default_retriever: String,
    pub default_k: u32,
    pub max_k: u32,
    pub default_num_candidates: u32,
    pub max_num_candidates: u32,
    pub max_score_candidates: u32,
    pub max_retrieve_candidates: u32,
    pub max_history: u32,
    pub history_items_used: u32,
    pub prompt_history_items: u32,
    pub max_prompt_tokens: u32,
    pub max_exclude: u32,
    pub adapters: Vec<String>,
}

fn mode_to_proto(m: Option<Mode>) -> i32 {
    m.map_or(pb::RankMode::Unspecified, super::grpc::mode_to_proto) as i32
}

/// A response's mode; one this client does not know reads as unspecified.
fn mode_from_proto(v: i32) -> Option<Mode> {
    super::grpc::mode_from_proto(v).ok().flatten()
}

fn timings_from_proto(t: Option<pb::StageTimings>) -> Timings {
    let t = t.unwrap_or_default();
    Timings {
        retrieve_s: t.retrieve_ms / 1e3,
        queue_s: t.queue_ms / 1e3,
        prompt_s: t.prompt_ms / 1e3,
        prefill_s: t.prefill_ms / 1e3,
        decode_s: t.decode_ms / 1e3,
        first_token_s: t.first_token_ms / 1e3,
        total_s: t.total_ms / 1e3,
        prompt_tokens: t.prompt_tokens as usize,
        cached_prompt_tokens: t.cached_prompt_tokens as usize,
        generated_tokens: t.generated_tokens as usize,
    }
}

fn recommendation_from_proto(r: pb::RecommendResponse) -> Result<Recommendation> {
    let mode = mode_from_proto(r.rank_mode)
        .ok_or_else(|| ClientError::Response(format!("rank_mode {} is not a mode", r.rank_mode)))?;
    Ok(Recommendation {
        items: r
            .items
            .into_iter()
            .map(|i| Recommended {
                id: i.item_id,
                title: i.title,
                score: i.score,
                retriever_rank: i.retriever_rank,
                by_llm: i.ranked_by_llm,
            })
            .collect(),
        timings: timings_from_proto(r.timings),
        retriever: r.retriever,
        mode,
        adapter: r.adapter,
    })
}

/// How a client reaches a server that asks for TLS, client certificates or a bearer token
/// (`[server.tls]`, `[server.auth]`); the CLI's `--ca-cert`, `--client-cert`, `--client-key`,
/// `--tls-domain` and `PALR_TOKEN` (`cli::connect`) fill it for `palr recommend`, `palr bench
/// recommend` and `palr eval --addr`.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    /// PEM CA certificates to verify the server with (an https:// address without them uses
    /// the system's roots).
    pub ca_cert: Option<PathBuf>,
    /// Mutual TLS: this client's PEM certificate chain (with `client_key`).
    pub client_cert: Option<PathBuf>,
    /// Mutual TLS: this client's PEM private key.
    pub client_key: Option<PathBuf>,
    /// The name the server's certificate must carry (default: the address's host).
    pub tls_domain: Option<String>,
    /// Bearer token sent with every call.
    pub token: Option<String>,
}

/// Adds `authorization: Bearer TOKEN` to every call.
#[derive(Clone, Default)]
pub struct Auth(Option<MetadataValue<Ascii>>);

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Auth(Bearer ...)"
        } else {
            "Auth(none)"
        })
    }
}

impl Interceptor for Auth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// A channel with the caller's token attached.
pub type AuthChannel = InterceptedService<Channel, Auth>;

/// Flattens an error and its sources into one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        message = format!("{message}: {s}");
        src = s.source();
    }
    message
}

impl ConnectOptions {
    /// The URL of `addr` (a bare `HOST:PORT` gets `https://` when TLS options are given,
    /// else `http://`).
    pub fn url(&self, addr: &str) -> String {
        if addr.contains("://") {
            addr.to_owned()
        } else if self.ca_cert.is_some() || self.client_cert.is_some() {
            format!("https://{addr}")
        } else {
            format!("http://{addr}")
        }
    }

    /// The endpoint of `addr` with TLS configured, and the token interceptor. Errors name
    /// the option to fix.
    pub fn endpoint(&self, addr: &str) -> std::result::Result<(Endpoint, Auth), String> {
        let url = self.url(addr);
        let mut endpoint = Endpoint::from_shared(url.clone())
            .map_err(|e| format!("{addr:?} is not a valid address: {e}"))?;
        let tls_options = self.ca_cert.is_some() || self.client_cert.is_some();
        if url.starts_with("https://") {
            let mut tls = ClientTlsConfig::new();
            match &self.ca_cert {
                Some(p) => {
                    let pem =
                        std::fs::read(p).map_err(|e| format!("--ca-cert {}: {e}", p.display()))?;
                    tls = tls.ca_certificate(Certificate::from_pem(pem));
                }
                None => tls = tls.with_native_roots(),
            }
            if let (Some(c), Some(k)) = (&self.client_cert, &self.client_key) {
                let cert =
                    std::fs::read(c).map_err(|e| format!("--client-cert {}: {e}", c.display()))?;
                let key =
                    std::fs::read(k).map_err(|e| format!("--client-key {}: {e}", k.display()))?;
                tls = tls.identity(Identity::from_pem(cert, key));
            }
            if let Some(d) = &self.tls_domain {
                tls = tls.domain_name(d.clone());
            }
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| format!("TLS settings: {}", chain(&e)))?;
        } else if tls_options {
            return Err(format!(
                "{url} is plaintext but TLS options were given: use an https:// address"
            ));
        }
        let auth = match &self.token {
            None => Auth(None),
            Some(t) => Auth(Some(format!("Bearer {}", t.trim()).parse().map_err(
                |_| {
                    "the token (--token / PALR_TOKEN) has characters a header cannot carry"
                        .to_owned()
                },
            )?)),
        };
        Ok((endpoint, auth))
    }
}

/// A channel to `addr` with TLS as `opts` says, and the token interceptor.
async fn connect_channel(addr: &str, opts: &ConnectOptions) -> Result<(Channel, Auth)> {
    let err = |message: String| ClientError::Connect {
        addr: opts.url(addr),
        message,
    };
    let (endpoint, auth) = opts.endpoint(addr).map_err(err)?;
    let channel = endpoint
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| err(chain(&e)))?;
    Ok((channel, auth))
}

/// A connection to a palr server.
#[derive(Debug, Clone)]
pub struct Client {
    inner: RecommenderClient<AuthChannel>,
    timeout: Option<Duration>,
}

impl Client {
    /// Connects to `addr` (`http://HOST:PORT`; a bare `HOST:PORT` gets `http://`), plaintext
    /// and without a token.
    pub async fn connect(addr: &str) -> Result<Self> {
        Self::connect_with(addr, &ConnectOptions::default()).await
    }

    /// Connects to `addr` with TLS and a token as `opts` says.
    pub async fn connect_with(addr: &str, opts: &ConnectOptions) -> Result<Self> {
        let (channel, auth) = connect_channel(addr, opts).await?;
        Ok(Self {
            inner: RecommenderClient::with_interceptor(channel, auth),
            timeout: None,
        })
    }

    /// Sends a deadline (`grpc-timeout`) with every call.
    pub fn with_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.timeout = timeout;
        self
    }

    fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        if let Some(t) = self.timeout {
            r.set_timeout(t);
        }
        r
    }

    /// Recommend: retrieve, then rank.
    pub async fn recommend(&mut self, p: &RecommendParams) -> Result<Recommendation> {
        let req = self.request(pb::RecommendRequest {
            history: p.history.clone(),
            k: p.k,
            retriever: p.retriever.clone(),
            num_candidates: p.num_candidates,
            adapter: p.adapter.clone(),
            rank_mode: mode_to_proto(p.mode),
            exclude: p.exclude.clone(),
            user_id: p.user_id.clone(),
            history_timestamps: p.history_timestamps.clone(),
        });
        recommendation_from_proto(self.inner.recommend(req).await?.into_inner())
    }

    /// Rank the caller's candidates.
    pub async fn rank(&mut self, p: &RankParams, user_id: &str) -> Result<Recommendation> {
        let req = self.request(pb::RankRequest {
            history: p.history.clone(),
            candidates: p.candidates.clone(),
            k: p.k,
            adapter: p.adapter.clone(),
            rank_mode: mode_to_proto(p.mode),
            user_id: user_id.to_owned(),
        });
        recommendation_from_proto(self.inner.rank(req).await?.into_inner())
    }

    /// Retrieval only.
    pub async fn retrieve(&mut self, p: &RetrieveParams) -> Result<Retrieval> {
        let req = self.request(pb::RetrieveRequest {
            history: p.history.clone(),
            num_candidates: p.num_candidates,
            retriever: p.retriever.clone(),
            exclude: p.exclude.clone(),
            user_id: p.user_id.clone(),
            history_timestamps: p.history_timestamps.clone(),
        });
        let r = self.inner.retrieve(req).await?.into_inner();
        Ok(Retrieval {
            items: r
                .items
                .into_iter()
                .map(|i| Retrieved {
                    id: i.item_id,
                    title: i.title,
                    score: i.score,
                })
                .collect(),
            retriever: r.retriever,
            timings: timings_from_proto(r.timings),
        })
    }

    /// The loaded retrievers.
    pub async fn list_retrievers(&mut self) -> Result<Vec<RetrieverSummary>> {
        let req = self.request(pb::ListRetrieversRequest {});
        let r = self.inner.list_retrievers(req).await?.into_inner();
        Ok(r.retrievers
            .into_iter()
            .map(|r| RetrieverSummary {
                name: r.name,
                plugin_name: r.plugin_name,
                plugin_version: r.plugin_version,
                description: r.description,
                library_path: r.library_path,
                abi_version: r.abi_version,
                is_default: r.is_default,
                calls: r.calls,
                failures: r.failures,
            })
            .collect())
    }

    /// The model and the server's defaults and limits.
    pub async fn model_info(&mut self) -> Result<ServerInfo> {
        let req = self.request(pb::GetModelInfoRequest {});
        let m = self.inner.get_model_info(req).await?.into_inner();
        Ok(ServerInfo {
            model_name: m.model_name,
            architecture: m.architecture,
            backend: m.backend,
            dtype: m.dtype,
            num_layers: m.num_layers,
            hidden_size: m.hidden_size,
            vocab_size: m.vocab_size,
            max_context: m.max_context,
            catalog_items: m.catalog_items,
            default_rank_mode: mode_from_proto(m.default_rank_mode),
            default_retriever: m.default_retriever,
            default_k: m.default_k,
            max_k: m.max_k,
            default_num_candidates: m.default_num_candidates,
            max_num_candidates: m.max_num_candidates,
            max_score_candidates: m.max_score_candidates,
            max_retrieve_candidates: m.max_retrieve_candidates,
            max_history: m.max_history,
            history_items_used: m.history_items_used,
            prompt_history_items: m.prompt_history_items,
            max_prompt_tokens: m.max_prompt_tokens,
            max_exclude: m.max_exclude,
            adapters: m.adapters,
        })
    }
}

/// One retriever plugin a reload loaded.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoadedRetriever {
    pub name: String,
    pub library_file: String,
    pub plugin_name: String,
    pub plugin_version: String,
    pub generation: u64,
    pub loaded_from_copy: bool,
    /// Serving pre-trained state fitted on an older snapshot of the data.
    pub stale_snapshot: bool,
    pub note: String,
}

impl From<admin_pb::LoadedRetriever> for LoadedRetriever {
    fn from(i: admin_pb::LoadedRetriever) -> Self {
        Self {
            name: i.name,
            library_file: i.library_file,
            plugin_name: i.plugin_name,
            plugin_version: i.plugin_version,
            generation: i.generation,
            loaded_from_copy: i.loaded_from_copy,
            stale_snapshot: i.stale_snapshot,
            note: i.note,
        }
    }
}

/// What ReloadRetrievers reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReloadSummary {
    pub retrievers: Vec<LoadedRetriever>,
    pub fusions: Vec<String>,
    pub default_retriever: String,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub not_reloaded: Vec<String>,
    pub took_ms: f64,
}

/// A data set's size, as ReloadData reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct DataSize {
    pub items: u64,
    pub users: u64,
    pub interactions: u64,
    pub skipped_unknown_items: u64,
}

impl From<Option<admin_pb::DataCounts>> for DataSize {
    fn from(c: Option<admin_pb::DataCounts>) -> Self {
        c.map_or_else(Self::default, |c| Self {
            items: c.items,
            users: c.users,
            interactions: c.interactions,
            skipped_unknown_items: c.skipped_unknown_items,
        })
    }
}

/// What ReloadData reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DataReloadSummary {
    pub before: DataSize,
    pub after: DataSize,
    pub items_added: u64,
    pub items_removed: u64,
    pub training_view_stage: String,
    pub training_view_fingerprint: String,
    pub previous_training_view_fingerprint: String,
    pub retrievers: Vec<LoadedRetriever>,
    pub took_ms: f64,
}

/// One adapter, as ListAdapters reports it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AdapterSummary {
    pub name: String,
    pub merged: bool,
    pub is_default: bool,
    pub dir: String,
    pub generation: u64,
    pub rank: u32,
    pub projections: u32,
    pub parameters: u64,
    pub loaded_unix_ms: i64,
}

impl From<admin_pb::Adapter> for AdapterSummary {
    fn from(a: admin_pb::Adapter) -> Self {
        Self {
            name: a.name,
            merged: a.merged,
            is_default: a.is_default,
            dir: a.dir,
            generation: a.generation,
            rank: a.rank,
            projections: a.projections,
            parameters: a.parameters,
            loaded_unix_ms: a.loaded_unix_ms,
        }
    }
}

/// What LoadAdapter or UnloadAdapter changed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AdapterChangeSummary {
    /// The adapter loaded (or unloaded).
    pub adapter: Option<AdapterSummary>,
    /// The adapter a load replaced.
    pub replaced: Option<AdapterSummary>,
    pub took_ms: f64,
}

/// A connection to a palr server's admin API (`server.admin_addr`; the token must have the
/// `admin` scope).
#[derive(Debug, Clone)]
pub struct AdminClient {
    inner: AdminRpcClient<AuthChannel>,
}

impl AdminClient {
    /// Connects to the admin API at `addr` with TLS and a token as `opts` says.
    pub async fn connect_with(addr: &str, opts: &ConnectOptions) -> Result<Self> {
        let (channel, auth) = connect_channel(addr, opts).await?;
        Ok(Self {
            inner: AdminRpcClient::with_interceptor(channel, auth),
        })
    }

    /// Reloads the server's retrievers from its configuration.
    pub async fn reload_retrievers(&mut self) -> Result<ReloadSummary> {
        let r = self
            .inner
            .reload_retrievers(admin_pb::ReloadRetrieversRequest {})
            .await?
            .into_inner();
        Ok(ReloadSummary {
            retrievers: r.retrievers.into_iter().map(Into::into).collect(),
            fusions: r.fusions,
            default_retriever: r.default_retriever,
            added: r.added,
            removed: r.removed,
            not_reloaded: r.not_reloaded,
            took_ms: r.took_ms,
        })
    }

    /// Reloads the server's data set (and re-fits its retrievers on it).
    pub async fn reload_data(&mut self) -> Result<DataReloadSummary> {
        let r = self
            .inner
            .reload_data(admin_pb::ReloadDataRequest {})
            .await?
            .into_inner();
        Ok(DataReloadSummary {
            before: r.before.into(),
            after: r.after.into(),
            items_added: r.items_added,
            items_removed: r.items_removed,
            training_view_stage: r.training_view_stage,
            training_view_fingerprint: r.training_view_fingerprint,
            previous_training_view_fingerprint: r.previous_training_view_fingerprint,
            retrievers: r.retrievers.into_iter().map(Into::into).collect(),
            took_ms: r.took_ms,
        })
    }

    /// The model's LoRA adapters.
    pub async fn list_adapters(&mut self) -> Result<(Vec<AdapterSummary>, String)> {
        let r = self
            .inner
            .list_adapters(admin_pb::ListAdaptersRequest {})
            .await?
            .into_inner();
        let adapters = r.adapters.into_iter().map(AdapterSummary::from).collect();
        Ok((adapters, r.default_adapter))
    }

    /// Loads the adapter directory `dir` (a path on the server) as `name`.
    pub async fn load_adapter(
        &mut self,
        name: &str,
        dir: &str,
        replace: bool,
    ) -> Result<AdapterChangeSummary> {
        let r = self
            .inner
            .load_adapter(admin_pb::LoadAdapterRequest {
                name: name.to_owned(),
                dir: dir.to_owned(),
                replace,
            })
            .await?
            .into_inner();
        Ok(AdapterChangeSummary {
            adapter: r.adapter.map(AdapterSummary::from),
            replaced: r.replaced.map(AdapterSummary::from),
            took_ms: r.took_ms,
        })
    }

    /// Unloads adapter `name`.
    pub async fn unload_adapter(&mut self, name: &str) -> Result<AdapterChangeSummary> {
        let r = self
            .inner
            .unload_adapter(admin_pb::UnloadAdapterRequest {
                name: name.to_owned(),
            })
            .await?
            .into_inner();
        Ok(AdapterChangeSummary {
            adapter: r.adapter.map(AdapterSummary::from),
            replaced: None,
            took_ms: 0.0,
        })
    }
}
