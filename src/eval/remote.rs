//! Evaluating a running server over gRPC (`palr.v1.Recommender`, `proto/palr/v1`): the only
//! place in `eval` that knows protobuf.
//!
//! Per user and retriever, one `Retrieve` (depth items, the history excluded by the server),
//! then per LLM method one `Rank` of the top candidates, so retrieval is shared between
//! methods exactly as in process. Item ids go over the wire; they are mapped to the local
//! catalog's indices, and the server's catalog must be the same data set.
//!
//! The server's retrievers must have been built from the training view of the evaluated
//! split (see [`super::training_view`]): the server reports its view's stage and fingerprint
//! in `GetModelInfo`, and the evaluation refuses a server whose view is not exactly the
//! evaluated split's (e.g. one serving on all interactions, whose retrievers saw the targets).

use std::sync::Arc;
use std::time::Duration;

use super::{Backend, EvalError, LlmRanking, Method, Result};
use crate::data::Catalog;
use crate::proto::v1 as pb;
use crate::proto::v1::recommender_client::RecommenderClient;
use crate::rank::{RankMode, RankTimings};
use crate::service::client::{AuthChannel, ConnectOptions};

/// A server's evaluation backend.
pub struct RemoteBackend {
    addr: String,
    rt: tokio::runtime::Runtime,
    client: RecommenderClient<AuthChannel>,
    catalog: Arc<Catalog>,
    info: pb::ModelInfo,
    retrievers: Vec<String>,
    timeout: Duration,
}

fn status(what: &str, s: tonic::Status) -> EvalError {
    EvalError::Remote(format!("{what}: {:?}: {}", s.code(), s.message()))
}

impl RemoteBackend {
    /// Connects to `addr` (`host:port` or a URL such as `http://127.0.0.1:50051`), with TLS
    /// and a token as `opts` says, and reads the server's model info and retrievers.
    /// `timeout` bounds every call.
    pub fn connect(
        addr: &str,
        opts: &ConnectOptions,
        catalog: Arc<Catalog>,
        timeout: Duration,
    ) -> Result<Self> {
        let url = opts.url(addr);
        let (endpoint, auth) = opts
            .endpoint(addr)
            .map_err(|e| EvalError::Config(format!("--addr: {e}")))?;
        let endpoint = endpoint
            .connect_timeout(Duration::from_secs(10))
            .timeout(timeout);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| EvalError::Remote(format!("starting the client runtime: {e}")))?;
        let mut client = rt
            .block_on(endpoint.connect())
            .map(|ch| RecommenderClient::with_interceptor(ch, auth))
            .map_err(|e| {
                EvalError::Remote(format!(
                    "cannot connect to {url}: {e} (is `palr serve` running there?)"
                ))
            })?;
        let info = rt
            .block_on(client.get_model_info(pb::GetModelInfoRequest {}))
            .map_err(|s| status("GetModelInfo", s))?
            .into_inner();
        let retrievers = rt
            .block_on(client.list_retrievers(pb::ListRetrieversRequest {}))
            .map_err(|s| status("ListRetrievers", s))?
            .into_inner()
            .retrievers
            .into_iter()
            .map(|r| r.name)
            .collect();
        Ok(RemoteBackend {
            addr: url,
            rt,
            client,
            catalog,
            info,
            retrievers,
            timeout,
        })
    }

    /// What the server said about itself.
    pub fn model_info(&self) -> &pb::ModelInfo {
        &self.info
    }

    fn ids(&self, items: &[u32]) -> Vec<String> {
        items
            .iter()
            .map(|&i| self.catalog.id(i).unwrap_or_default().to_owned())
            .collect()
    }

    fn index(&self, id: &str) -> Result<u32> {
        self.catalog.index_of(id).ok_or_else(|| {
            EvalError::Remote(format!(
                "returned item {id:?}, which is not in the local catalog: \
                 the server must serve the evaluated data set"
            ))
        })
    }

    fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.set_timeout(self.timeout);
        r
    }
}

impl Backend for RemoteBackend {
    fn describe(&self) -> String {
        format!(
            "server at {} ({}, {})",
            self.addr, self.info.model_name, self.info.backend
        )
    }

    fn training_view(&self) -> Option<(String, String)> {
        let i = &self.info;
        (!i.training_view_fingerprint.is_empty()).then(|| {
            (
                i.training_view_stage.clone(),
                i.training_view_fingerprint.clone(),
            )
        })
    }

    fn check(&self, methods: &[Method], depth: usize, candidates: usize) -> Result<()> {
        let info = &self.info;
        if info.catalog_items != 0 && info.catalog_items as usize != self.catalog.len() {
            return Err(EvalError::Config(format!(
                "the server's catalog has {} items, the evaluated data set {}: serve the same data set",
                info.catalog_items,
                self.catalog.len()
            )));
        }
        if info.max_num_candidates != 0 && depth > info.max_num_candidates as usize {
            return Err(EvalError::Config(format!(
                "the evaluation asks retrievers for {depth} items but the server allows at most {}: \
                 raise its max_num_candidates",
                info.max_num_candidates
            )));
        }
        for m in methods {
            if !self.retrievers.contains(&m.retriever) {
                return Err(EvalError::Config(format!(
                    "method {m}: the server has no retriever {:?} (it has: {})",
                    m.retriever,
                    self.retrievers.join(", ")
                )));
            }
            if m.mode.is_none() {
                continue;
            }
            if info.max_k != 0 && candidates > info.max_k as usize {
                return Err(EvalError::Config(format!(
                    "method {m}: --candidates {candidates} exceeds the server's max_k {}",
                    info.max_k
                )));
            }
            if let Some(a) = &m.adapter
                && !info.adapters.contains(a)
            {
                return Err(EvalError::Config(format!(
                    "method {m}: the server has no adapter {a:?} (it has: [{}])",
                    info.adapters.join(", ")
                )));
            }
        }
        Ok(())
    }

    fn retrieve(&self, retriever: &str, history: &[u32], n: usize) -> Result<Vec<u32>> {
        let req = self.request(pb::RetrieveRequest {
            user_id: String::new(),
            history_timestamps: Vec::new(),
            history: self.ids(history),
            num_candidates: n as u32,
            retriever: retriever.to_owned(),
            exclude: Vec::new(),
        });
        let mut client = self.client.clone();
        let resp = self
            .rt
            .block_on(client.retrieve(req))
            .map_err(|s| status("Retrieve", s))?
            .into_inner();
        if resp.items.len() > n {
            return Err(EvalError::Remote(format!(
                "Retrieve returned {} items, {n} were asked for",
                resp.items.len()
            )));
        }
        let mut out = Vec::with_capacity(resp.items.len());
        for it in &resp.items {
            let i = self.index(&it.item_id)?;
            if history.contains(&i) {
                return Err(EvalError::Remote(format!(
                    "Retrieve returned history item {:?}; history items must be excluded",
                    it.item_id
                )));
            }
            if out.contains(&i) {
                return Err(EvalError::Remote(format!(
                    "Retrieve returned {:?} twice",
                    it.item_id
                )));
            }
            out.push(i);
        }
        Ok(out)
    }

    fn rank(
        &self,
        mode: RankMode,
        adapter: Option<&str>,
        history: &[u32],
        candidates: &[u32],
    ) -> Result<LlmRanking> {
        let req = self.request(pb::RankRequest {
            history: self.ids(history),
            candidates: self.ids(candidates),
            k: candidates.len() as u32,
            adapter: adapter.unwrap_or_default().to_owned(),
            rank_mode: match mode {
                RankMode::Score => pb::RankMode::Score,
                RankMode::Generate => pb::RankMode::Generate,
            } as i32,
            user_id: String::new(),
        });
        let mut client = self.client.clone();
        let resp = self
            .rt
            .block_on(client.rank(req))
            .map_err(|s| status("Rank", s))?
            .into_inner();
        let order = resp
            .items
            .iter()
            .map(|it| self.index(&it.item_id))
            .collect::<Result<Vec<_>>>()?;
        let t = resp.timings.unwrap_or_default();
        Ok(LlmRanking {
            order,
            scores: resp.items.iter().map(|it| it.score).collect(),
            timings: RankTimings {
                prompt_s: t.prompt_ms / 1e3,
                prefill_s: t.prefill_ms / 1e3,
                decode_s: t.decode_ms / 1e3,
                first_token_s: t.first_token_ms / 1e3,
                prompt_tokens: t.prompt_tokens as usize,
                cached_prompt_tokens: t.cached_prompt_tokens as usize,
                generated_tokens: t.generated_tokens as usize,
            },
        })
    }
}
