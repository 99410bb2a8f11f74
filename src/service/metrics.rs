//! Prometheus metrics of the server, in a registry of their own (nothing global), served as
//! the text exposition format (Prometheus docs, "Exposition formats", text format 0.0.4) at
//! `GET /metrics` on a port separate from gRPC.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use tokio::net::TcpListener;

/// Latency buckets in seconds: 1 ms to 60 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// The gRPC methods, as metric labels.
pub const RPCS: [&str; 5] = [
    "Recommend",
    "Rank",
    "Retrieve",
    "ListRetrievers",
    "GetModelInfo",
];
/// The admin API's methods (`palr.admin.v1.Admin`), as metric labels.
pub const ADMIN_RPCS: [&str; 5] = [
    "ReloadRetrievers",
    "ReloadData",
    "ListAdapters",
    "LoadAdapter",
    "UnloadAdapter",
];
/// The `outcome` labels of `palr_admin_calls_total`.
pub const ADMIN_OUTCOMES: [&str; 2] = ["ok", "error"];
/// The request stages, as metric labels.
pub const STAGES: [&str; 5] = ["queue", "retrieve", "prompt", "prefill", "decode"];
/// The `kind` labels of `palr_plugin_errors_total` (`ServiceError::plugin_failure`).
pub const PLUGIN_FAILURE_KINDS: [&str; 7] = [
    "error",
    "panic",
    "rejected_arguments",
    "contract",
    "timeout",
    "busy",
    "quarantined",
];
/// The `adapter` label of `palr_ranked_requests_total` for the model as loaded.
pub const BASE_MODEL_LABEL: &str = "base";

/// Every metric the server exports.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// `palr_request_duration_seconds{rpc}`: handler latency, every outcome.
    pub request_duration: HistogramVec,
    /// `palr_requests_total{rpc,code}`: finished requests by gRPC status code (OK included).
    pub requests: IntCounterVec,
    /// `palr_stage_duration_seconds{stage}`: queue, retrieve, prompt, prefill, decode.
    pub stage_duration: HistogramVec,
    /// `palr_time_to_first_token_seconds{mode}`: from prefill start to the first generated
    /// token (generate) or to the scores (score).
    pub first_token: HistogramVec,
    /// `palr_prompt_tokens_total{mode}`.
    pub prompt_tokens: IntCounterVec,
    /// `palr_cached_prompt_tokens_total{mode}`: prompt tokens served from the prefix cache.
    pub cached_prompt_tokens: IntCounterVec,
    /// `palr_generated_tokens_total{mode}`.
    pub generated_tokens: IntCounterVec,
    /// `palr_retriever_calls_total{retriever}`.
    pub retriever_calls: IntCounterVec,
    /// `palr_plugin_errors_total{retriever,kind}`; kind: one of [`PLUGIN_FAILURE_KINDS`].
    pub plugin_errors: IntCounterVec,
    /// `palr_retriever_quarantined{retriever}`: 1 while the retriever's circuit breaker keeps
    /// it quarantined (its health entry says NOT_SERVING), else 0.
    pub retriever_quarantined: IntGaugeVec,
    /// `palr_ranked_requests_total{mode,adapter}`: requests the LLM ranked, by mode and LoRA
    /// adapter ([`BASE_MODEL_LABEL`] = the model as loaded).
    pub ranked_requests: IntCounterVec,
    /// `palr_rank_deadline_stops_total{stage}`: ranking jobs the ranker itself stopped
    /// because the caller's deadline passed (stage: prefill, decode).
    pub rank_deadline_stops: IntCounterVec,
    /// `palr_queue_depth`: requests waiting for a ranking slot.
    pub queue_depth: IntGauge,
    /// `palr_admission_refusals_total{reason}`: requests refused a ranking slot (reason:
    /// queue_full, too_late = could not finish by its deadline, waited_too_long).
    pub admission_refusals: IntCounterVec,
    /// `palr_rank_running`: ranking jobs running on blocking threads.
    pub rank_running: IntGauge,
    /// `palr_inflight_requests{rpc}`: requests being handled.
    pub inflight: IntGaugeVec,
    /// `palr_connections_open`: gRPC connections open now.
    pub connections_open: IntGauge,
    /// `palr_connections_refused_total{limit}`: connections closed at once (limit:
    /// max_connections, max_connections_per_peer).
    pub connections_refused: IntCounterVec,
    /// `palr_connections_closed_idle_total`: connections closed after `idle_timeout_s`.
    pub connections_closed_idle: prometheus::IntCounter,
    /// `palr_tls_handshake_failures_total`: connections closed because their TLS handshake
    /// failed or did not finish within `server.idle_timeout_s`.
    pub tls_handshake_failures: prometheus::IntCounter,
    /// `palr_auth_failures_total{reason}`: calls refused UNAUTHENTICATED (reason: missing,
    /// unknown) or PERMISSION_DENIED (forbidden: outside the token's scopes).
    pub auth_failures: IntCounterVec,
    /// `palr_admin_calls_total{call,outcome}`: admin calls (and SIGHUP reloads) by result.
    pub admin_calls: IntCounterVec,
    /// `palr_build_info{version,model,backend}` = 1.
    pub build_info: IntGaugeVec,
    /// `palr_retriever_info{retriever,plugin,version,abi}` = 1 per loaded plugin: its
    /// configured name, the plugin's own name and version, the ABI version it speaks.
    pub retriever_info: IntGaugeVec,
    /// `palr_adapter_info{adapter,generation,rank,merged}` = 1 per adapter requests may
    /// name: unmerged ones follow the admin API's loads and unloads.
    pub adapter_info: IntGaugeVec,
    /// `palr_data_items`, `palr_data_users`, `palr_data_interactions`: the data set served
    /// (catalog items; users and interactions of the data files), set at start-up and by
    /// every data reload.
    pub data_items: IntGauge,
    pub data_users: IntGauge,
    pub data_interactions: IntGauge,
    /// `palr_training_view_info{stage,fingerprint}` = 1 for the retrievers' training view
    /// served (the fingerprint `GetModelInfo` reports), one series at a time.
    pub training_view_info: IntGaugeVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Requests being handled now, every method together.
    pub fn inflight_total(&self) -> i64 {
        RPCS.iter()
            .map(|r| self.inflight.with_label_values(&[r]).get())
            .sum()
    }

    /// A fresh registry with every metric registered. Long by nature: one registration per
    /// metric, each with its name, help and labels, in the order of the struct's fields; no
    /// logic to split out.
    pub fn new() -> Self {
        let registry = Registry::new();
        fn reg<M: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: M) -> M {
            r.register(Box::new(m.clone()))
                .expect("metric names are unique");
            m
        }
        let hist = |name: &str, help: &str, labels: &[&str]| {
            HistogramVec::new(
                HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
                labels,
            )
            .expect("valid histogram")
        };
        let counter = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter")
        };
        let r = &registry;
        let m = Self {
            request_duration: reg(
                r,
                hist(
                    "palr_request_duration_seconds",
                    "gRPC handler latency by method",
                    &["rpc"],
                ),
            ),
            requests: reg(
                r,
                counter(
                    "palr_requests_total",
                    "Finished gRPC requests by method and status code",
                    &["rpc", "code"],
                ),
            ),
            stage_duration: reg(
                r,
                hist(
                    "palr_stage_duration_seconds",
                    "Time per request stage: queue, retrieve, prompt, prefill, decode",
                    &["stage"],
                ),
            ),
            first_token: reg(
                r,
                hist(
                    "palr_time_to_first_token_seconds",
                    "From prefill start to the first generated token (generate) or the scores (score)",
                    &["mode"],
                ),
            ),
            prompt_tokens: reg(
                r,
                counter(
                    "palr_prompt_tokens_total",
                    "Prompt tokens ranked",
                    &["mode"],
                ),
            ),
            cached_prompt_tokens: reg(
                r,
                counter(
                    "palr_cached_prompt_tokens_total",
                    "Prompt tokens served from the shared-prefix KV cache",
                    &["mode"],
                ),
            ),
            generated_tokens: reg(
                r,
                counter(
                    "palr_generated_tokens_total",
                    "Tokens generated in generate mode",
                    &["mode"],
                ),
            ),
            retriever_calls: reg(
                r,
                counter(
                    "palr_retriever_calls_total",
                    "Calls into retriever plugins",
                    &["retriever"],
                ),
            ),
            plugin_errors: reg(
                r,
                counter(
                    "palr_plugin_errors_total",
                    "Failed retriever plugin calls by kind (error, panic, rejected_arguments, \
                     contract, timeout, busy, quarantined)",
                    &["retriever", "kind"],
                ),
            ),
            retriever_quarantined: reg(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "palr_retriever_quarantined",
                        "1 while a retriever is quarantined by its circuit breaker",
                    ),
                    &["retriever"],
                )
                .expect("valid gauge"),
            ),
            ranked_requests: reg(
                r,
                counter(
                    "palr_ranked_requests_total",
                    "Requests the LLM ranked, by mode and LoRA adapter (base = the model as loaded)",
                    &["mode", "adapter"],
                ),
            ),
            rank_deadline_stops: reg(
                r,
                counter(
                    "palr_rank_deadline_stops_total",
                    "Ranking jobs stopped by the caller's deadline, by the stage they were in",
                    &["stage"],
                ),
            ),
            queue_depth: reg(
                r,
                IntGauge::new("palr_queue_depth", "Requests waiting for a ranking slot")
                    .expect("valid gauge"),
            ),
            connections_open: reg(
                r,
                IntGauge::new("palr_connections_open", "gRPC connections open")
                    .expect("valid gauge"),
            ),
            connections_refused: reg(
                r,
                counter(
                    "palr_connections_refused_total",
                    "gRPC connections closed at once, by the limit that refused them",
                    &["limit"],
                ),
            ),
            connections_closed_idle: reg(
                r,
                prometheus::IntCounter::new(
                    "palr_connections_closed_idle_total",
                    "gRPC connections closed after server.idle_timeout_s without a request",
                )
                .expect("valid counter"),
            ),
            tls_handshake_failures: reg(
                r,
                prometheus::IntCounter::new(
                    "palr_tls_handshake_failures_total",
                    "gRPC connections closed because the TLS handshake failed or timed out",
                )
                .expect("valid counter"),
            ),
            auth_failures: reg(
                r,
                counter(
                    "palr_auth_failures_total",
                    "Calls refused UNAUTHENTICATED (missing, unknown token) or PERMISSION_DENIED (forbidden: outside the token's scopes), by reason",
                    &["reason"],
                ),
            ),
            admission_refusals: reg(
                r,
                counter(
                    "palr_admission_refusals_total",
                    "Requests refused a ranking slot, by reason (queue_full, too_late, waited_too_long)",
                    &["reason"],
                ),
            ),
            rank_running: reg(
                r,
                IntGauge::new("palr_rank_running", "Ranking jobs running").expect("valid gauge"),
            ),
            inflight: reg(
                r,
                IntGaugeVec::new(
                    Opts::new("palr_inflight_requests", "gRPC requests being handled"),
                    &["rpc"],
                )
                .expect("valid gauge"),
            ),
            admin_calls: reg(
                r,
                counter(
                    "palr_admin_calls_total",
                    "Admin API calls (and SIGHUP reloads) by call and outcome (ok, error)",
                    &["call", "outcome"],
                ),
            ),
            build_info: reg(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "palr_build_info",
                        "palr version, model and backend (value 1)",
                    ),
                    &["version", "model", "backend"],
                )
                .expect("valid gauge"),
            ),
            retriever_info: reg(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "palr_retriever_info",
                        "Loaded retriever plugins: configured name, plugin name, plugin version, \
                         ABI version (value 1)",
                    ),
                    &["retriever", "plugin", "version", "abi"],
                )
                .expect("valid gauge"),
            ),
            adapter_info: reg(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "palr_adapter_info",
                        "LoRA adapters requests may name: name, load generation, rank, whether \
                         merged into the weights (value 1)",
                    ),
                    &["adapter", "generation", "rank", "merged"],
                )
                .expect("valid gauge"),
            ),
            data_items: reg(
                r,
                IntGauge::new("palr_data_items", "Items in the catalog served")
                    .expect("valid gauge"),
            ),
            data_users: reg(
                r,
                IntGauge::new("palr_data_users", "Users in the data set served")
                    .expect("valid gauge"),
            ),
            data_interactions: reg(
                r,
                IntGauge::new(
                    "palr_data_interactions",
                    "Interactions in the data set served",
                )
                .expect("valid gauge"),
            ),
            training_view_info: reg(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "palr_training_view_info",
                        "The retrievers' training view served: stage and fingerprint (value 1)",
                    ),
                    &["stage", "fingerprint"],
                )
                .expect("valid gauge"),
            ),
            registry,
        };
        // Known series start at zero, so dashboards and rate() see them before the first
        // request (Prometheus "instrumentation" guidelines: avoid missing metrics).
        for rpc in RPCS {
            m.request_duration.with_label_values(&[rpc]);
            m.requests.with_label_values(&[rpc, "OK"]);
            m.inflight.with_label_values(&[rpc]);
        }
        for stage in STAGES {
            m.stage_duration.with_label_values(&[stage]);
        }
        for mode in ["score", "generate"] {
            m.first_token.with_label_values(&[mode]);
            m.prompt_tokens.with_label_values(&[mode]);
            m.cached_prompt_tokens.with_label_values(&[mode]);
            m.generated_tokens.with_label_values(&[mode]);
        }
        for reason in ["queue_full", "too_late", "waited_too_long"] {
            m.admission_refusals.with_label_values(&[reason]);
        }
        for stage in ["prefill", "decode"] {
            m.rank_deadline_stops.with_label_values(&[stage]);
        }
        for limit in super::conn::Refusal::ALL {
            m.connections_refused.with_label_values(&[limit.label()]);
        }
        for call in ADMIN_RPCS {
            for outcome in ADMIN_OUTCOMES {
                m.admin_calls.with_label_values(&[call, outcome]);
            }
            m.request_duration.with_label_values(&[call]);
            m.requests.with_label_values(&[call, "OK"]);
        }
        for reason in super::security::AuthFailure::ALL {
            m.auth_failures.with_label_values(&[reason.label()]);
        }
        m
    }

    /// Starts the series of what the server was loaded with at zero: each retriever's calls,
    /// failures and quarantine (`plugins`: plugin names; `sources`: every name a request may
    /// use, fusions included) and each adapter's ranked requests.
    pub fn init_loaded(&self, plugins: &[String], sources: &[String], adapters: &[String]) {
        for name in sources {
            self.retriever_calls.with_label_values(&[name]);
        }
        for name in plugins {
            for kind in PLUGIN_FAILURE_KINDS {
                self.plugin_errors.with_label_values(&[name, kind]);
            }
            self.retriever_quarantined.with_label_values(&[name]).set(0);
        }
        for mode in ["score", "generate"] {
            for adapter in adapters {
                self.ranked_requests.with_label_values(&[mode, adapter]);
            }
        }
    }

    /// Sets `palr_retriever_info` to exactly the plugins given (series of plugins no longer
    /// loaded, or of their earlier versions, are removed): call it after every (re)load.
    pub fn set_retriever_info(&self, plugins: &[crate::retrieval::RetrieverInfo]) {
        self.retriever_info.reset();
        for p in plugins {
            let abi = p.abi_version.to_string();
            self.retriever_info
                .with_label_values(&[&p.name, &p.plugin_name, &p.plugin_version, &abi])
                .set(1);
        }
    }

    /// Sets `palr_adapter_info` to exactly the adapters given, as `(name, generation, rank,
    /// merged)` (a merged adapter has generation and rank 0): call it after every change.
    pub fn set_adapter_info(&self, adapters: &[(String, u64, usize, bool)]) {
        self.adapter_info.reset();
        for (name, generation, rank, merged) in adapters {
            self.adapter_info
                .with_label_values(&[
                    name,
                    &generation.to_string(),
                    &rank.to_string(),
                    &merged.to_string(),
                ])
                .set(1);
        }
    }

    /// Sets the gauges of the data served: its size and the training view (the series of
    /// the view it replaces is removed): call it after every (re)load of the data.
    pub fn set_data(
        &self,
        items: usize,
        users: usize,
        interactions: usize,
        view: &crate::retrieval::TrainingView,
    ) {
        self.data_items.set(items as i64);
        self.data_users.set(users as i64);
        self.data_interactions.set(interactions as i64);
        self.training_view_info.reset();
        self.training_view_info
            .with_label_values(&[view.stage(), view.fingerprint()])
            .set(1);
    }

    /// Observes one stage's duration.
    pub fn stage(&self, stage: &str, d: Duration) {
        self.stage_duration
            .with_label_values(&[stage])
            .observe(d.as_secs_f64());
    }

    /// A histogram of one stage (for callers that observe seconds directly).
    pub fn stage_histogram(&self, stage: &str) -> Histogram {
        self.stage_duration.with_label_values(&[stage])
    }

    /// Everything, in the text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metrics.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Increments a gauge now and decrements it when dropped (requests in flight, rankings
/// running).
pub(super) struct GaugeGuard(IntGauge);

impl GaugeGuard {
    pub(super) fn new(g: &IntGauge) -> Self {
        g.inc();
        Self(g.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown` resolves.
pub async fn serve_metrics(
    listener: TcpListener,
    metrics: Metrics,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics: accept failed");
                    // Out of file descriptors and the like: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(stream);
            let svc = hyper::service::service_fn(move |req| {
                let metrics = metrics.clone();
                async move { Ok::<_, Infallible>(respond(&req, &metrics)) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, svc)
                .await
            {
                tracing::debug!(error = %e, %peer, "metrics connection ended with an error");
            }
        });
    }
}

fn respond<B>(req: &Request<B>, metrics: &Metrics) -> Response<Full<Bytes>> {
    let (status, ctype, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => (
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.render(),
        ),
        (_, "/metrics") => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "use GET\n".to_owned(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found; metrics are at /metrics\n".to_owned(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(ctype) {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    resp
}

/// The address a metrics listener is bound to, for logs.
pub fn describe(addr: Option<SocketAddr>) -> String {
    addr.map_or_else(|| "off".to_owned(), |a| format!("http://{a}/metrics"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_text_format_with_labels() {
        let m = Metrics::new();
        m.requests.with_label_values(&["Recommend", "OK"]).inc();
        m.plugin_errors
            .with_label_values(&["broken", "error"])
            .inc_by(2);
        m.stage("prefill", Duration::from_millis(30));
        m.queue_depth.set(3);
        let text = m.render();
        assert!(
            text.contains("palr_requests_total{code=\"OK\",rpc=\"Recommend\"} 1"),
            "{text}"
        );
        assert!(text.contains("palr_plugin_errors_total{kind=\"error\",retriever=\"broken\"} 2"));
        assert!(
            text.contains("palr_stage_duration_seconds_bucket{stage=\"prefill\",le=\"0.05\"} 1")
        );
        assert!(text.contains("palr_queue_depth 3"));
        // Series of known label values exist before anything happened.
        assert!(
            text.contains("palr_request_duration_seconds_count{rpc=\"Rank\"} 0"),
            "{text}"
        );
        assert!(text.contains("palr_generated_tokens_total{mode=\"generate\"} 0"));
    }

    #[test]
    fn retriever_info_follows_what_is_loaded() {
        let info = |name: &str, version: &str| crate::retrieval::RetrieverInfo {
            name: name.into(),
            path: "libx.so".into(),
            loaded_from: "libx.so".into(),
            plugin_name: "acme".into(),
            description: String::new(),
            plugin_version: version.into(),
            abi_version: 2,
            generation: 1,
            trained_on: None,
            view_stage: "all".into(),
            stale_snapshot: false,
            note: None,
            stats: Default::default(),
        };
        let m = Metrics::new();
        m.set_retriever_info(&[info("a", "1.0.0"), info("b", "0.3.1")]);
        let text = m.render();
        let series = |r: &str, v: &str| {
            format!(
                "palr_retriever_info{{abi=\"2\",plugin=\"acme\",retriever=\"{r}\",version=\"{v}\"}} 1"
            )
        };
        assert!(text.contains(&series("a", "1.0.0")), "{text}");
        assert!(text.contains(&series("b", "0.3.1")), "{text}");
        // A reload with a new version of `a` and without `b` leaves only what is loaded.
        m.set_retriever_info(&[info("a", "1.1.0")]);
        let text = m.render();
        assert!(text.contains(&series("a", "1.1.0")), "{text}");
        assert!(
            !text.contains("1.0.0") && !text.contains("retriever=\"b\""),
            "{text}"
        );
    }

    #[test]
    fn data_gauges_follow_the_data_served() {
        let view = |n: u32, stage: &str| {
            crate::retrieval::TrainingView::from_sequences(n, &[vec![0u32, 1]])
                .unwrap()
                .with_stage(stage)
        };
        let m = Metrics::new();
        let (a, b) = (view(3, "all"), view(4, "all"));
        m.set_data(3, 1, 2, &a);
        m.set_data(4, 1, 2, &b);
        let text = m.render();
        assert!(text.contains("palr_data_items 4"), "{text}");
        assert!(text.contains("palr_data_users 1"), "{text}");
        assert!(text.contains("palr_data_interactions 2"), "{text}");
        // Only the view served now.
        let info = |v: &crate::retrieval::TrainingView| {
            format!(
                "palr_training_view_info{{fingerprint=\"{}\",stage=\"all\"}} 1",
                v.fingerprint()
            )
        };
        assert!(text.contains(&info(&b)), "{text}");
        assert!(!text.contains(a.fingerprint()), "{text}");
    }

    #[test]
    fn http_paths() {
        let m = Metrics::new();
        let get = |method: Method, path: &str| {
            let req = Request::builder()
                .method(method)
                .uri(path)
                .body(())
                .unwrap();
            respond(&req, &m).status()
        };
        assert_eq!(get(Method::GET, "/metrics"), StatusCode::OK);
        assert_eq!(
            get(Method::POST, "/metrics"),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(get(Method::GET, "/"), StatusCode::NOT_FOUND);
    }
}
