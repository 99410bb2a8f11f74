//! The `palr.v1.Recommender` gRPC service: protobuf in, [`Recommender`] calls, protobuf out.
//! The only place where request and response messages are converted.
//!
//! Every call gets one tracing span (`rpc`, `user_id`, `trace_id` when the caller sent a W3C
//! Trace Context `traceparent` header; `status` and `latency_ms` recorded when it finishes)
//! with one log line at the end, and is counted in the request metrics.
//!
//! Deadlines: the caller's `grpc-timeout` header (gRPC over HTTP/2, "Timeout") becomes an
//! [`Instant`], measured from when the request reached the server ([`Stamp`]), less
//! [`DEADLINE_MARGIN`] so the answer leaves in time. Every wait of the request honours it and
//! the ranker gets it, so the work stops too, and the caller gets DEADLINE_EXCEEDED. (The
//! server does not run on tonic's `transport::Server`, whose own timeout service would answer
//! CANCELLED first, also for deadlines that expire before the handler runs; see `server`.)

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::{Code, Request, Response, Status};
use tracing::Instrument;

use crate::proto::v1 as pb;
use crate::proto::v1::recommender_server::Recommender as RecommenderRpc;

use super::error::ServiceError;
use super::metrics::{ADMIN_RPCS, GaugeGuard, Metrics, RPCS};
use super::recommender::{
    Mode, RankParams, RecommendParams, Recommendation, Recommender, RetrieveParams, Timings,
};

/// How long before the caller's deadline the service gives up and answers.
pub const DEADLINE_MARGIN: Duration = Duration::from_millis(5);

/// When the request reached the server (set by [`Stamp`]).
#[derive(Debug, Clone, Copy)]
pub struct Received(pub Instant);

/// Wraps the gRPC routes, in front of routing and body decoding: records when each request
/// arrived (a [`Received`] extension), and counts every call in `palr_requests_total{rpc,
/// code}` and `palr_request_duration_seconds{rpc}` by the status it really ended with —
/// including what never reaches a handler (malformed or oversize messages, unknown methods)
/// and calls the client abandoned (CANCELLED).
#[derive(Debug, Clone)]
pub struct Stamp<S> {
    inner: S,
    metrics: Metrics,
}

impl<S> Stamp<S> {
    pub fn new(inner: S, metrics: Metrics) -> Self {
        Self { inner, metrics }
    }
}

/// The `rpc` label of a request path: the method of `palr.v1.Recommender` or of
/// `palr.admin.v1.Admin`, `Health`, `Reflection`, or `unknown` (bounded label values).
pub(crate) fn rpc_label(path: &str) -> &'static str {
    if let Some(m) = path.strip_prefix("/palr.admin.v1.Admin/") {
        return ADMIN_RPCS
            .iter()
            .find(|r| **r == m)
            .copied()
            .unwrap_or("unknown");
    }
    match path.strip_prefix("/palr.v1.Recommender/") {
        Some(m) => RPCS.iter().find(|r| **r == m).copied().unwrap_or("unknown"),
        None if path.starts_with("/grpc.health.v1.Health/") => "Health",
        None if path.starts_with("/grpc.reflection.") => "Reflection",
        None => "unknown",
    }
}

/// Counts one call once: when its status is known, or as CANCELLED if it is dropped first.
struct CallCount {
    metrics: Metrics,
    rpc: &'static str,
    start: Instant,
    done: bool,
}

impl CallCount {
    fn finish(&mut self, code: Code) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        self.metrics
            .request_duration
            .with_label_values(&[self.rpc])
            .observe(self.start.elapsed().as_secs_f64());
        self.metrics
            .requests
            .with_label_values(&[self.rpc, code_name(code)])
            .inc();
    }

    /// The `grpc-status` in `headers`, if any.
    fn status_in(headers: &tonic::codegen::http::HeaderMap) -> Option<Code> {
        let v = headers.get("grpc-status")?.to_str().ok()?;
        Some(Code::from_i32(v.parse().ok()?))
    }
}

impl Drop for CallCount {
    fn drop(&mut self) {
        self.finish(Code::Cancelled);
    }
}

/// A response body that counts its call when the trailers (carrying `grpc-status`) go out.
struct CountingBody {
    inner: tonic::body::Body,
    count: CallCount,
}

impl hyper::body::Body for CountingBody {
    type Data = hyper::body::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let polled = std::pin::Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            std::task::Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(CallCount::status_in) {
                    this.count.finish(code);
                }
            }
            std::task::Poll::Ready(Some(Err(_))) => this.count.finish(Code::Internal),
            // The body ended without a status: the call did not complete.
            std::task::Poll::Ready(None) => this.count.finish(Code::Unknown),
            std::task::Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl<S, B> tonic::codegen::Service<tonic::codegen::http::Request<B>> for Stamp<S>
where
    S: tonic::codegen::Service<
            tonic::codegen::http::Request<B>,
            Response = tonic::codegen::http::Response<tonic::body::Body>,
        >,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: tonic::codegen::http::Request<B>) -> Self::Future {
        let start = Instant::now();
        req.extensions_mut().insert(Received(start));
        let mut count = CallCount {
            metrics: self.metrics.clone(),
            rpc: rpc_label(req.uri().path()),
            start,
            done: false,
        };
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            // A trailers-only response (every error) carries the status in its headers.
            if let Some(code) = CallCount::status_in(resp.headers()) {
                count.finish(code);
                return Ok(resp);
            }
            Ok(resp.map(|inner| tonic::body::Body::new(CountingBody { inner, count })))
        })
    }
}

/// Parses a `grpc-timeout` value: 1-8 ASCII digits and a unit (H, M, S, m, u, n).
pub fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    if !v.is_ascii() {
        return None;
    }
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The instant by which this request must be answered, if the caller set a deadline.
fn respond_by<T>(req: &Request<T>) -> Option<Instant> {
    let timeout = req
        .metadata()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout)?;
    let start = req
        .extensions()
        .get::<Received>()
        .map_or_else(Instant::now, |r| r.0);
    Some(
        start
            .checked_add(timeout.saturating_sub(DEADLINE_MARGIN))
            .unwrap_or(start),
    )
}

/// The trace id of the caller's `traceparent` metadata (W3C Trace Context, "traceparent
/// header": `VERSION-TRACEID-PARENTID-FLAGS`, lowercase hex of 2, 32, 16 and 2 digits), so a
/// request's log lines join the caller's trace. `None` when absent or malformed: version `ff`,
/// an all-zero trace or parent id, or anything after the flags in version `00` (later
/// versions may append fields, which are ignored).
pub fn trace_id(metadata: &tonic::metadata::MetadataMap) -> Option<&str> {
    let v = metadata.get("traceparent")?.to_str().ok()?;
    let mut parts = v.splitn(5, '-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let zero = |s: &str| s.bytes().all(|b| b == b'0');
    let valid = hex(version, 2)
        && version != "ff"
        && hex(trace, 32)
        && !zero(trace)
        && hex(parent, 16)
        && !zero(parent)
        && hex(flags, 2)
        && (version != "00" || parts.next().is_none());
    valid.then_some(trace)
}

/// Canonical name of a status code (metric labels, logs).
pub fn code_name(c: Code) -> &'static str {
    match c {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// A request's `rank_mode` (0 = the server's default).
pub(crate) fn mode_from_proto(v: i32) -> Result<Option<Mode>, ServiceError> {
    match pb::RankMode::try_from(v) {
        Ok(pb::RankMode::Unspecified) => Ok(None),
        Ok(pb::RankMode::Score) => Ok(Some(Mode::Score)),
        Ok(pb::RankMode::Generate) => Ok(Some(Mode::Generate)),
        Ok(pb::RankMode::Retriever) => Ok(Some(Mode::Retriever)),
        Err(_) => Err(ServiceError::InvalidArgument(format!(
            "rank_mode = {v} is not a RankMode: use 0 (server default), 1 (score), 2 (generate) \
             or 3 (retriever)"
        ))),
    }
}

pub(crate) fn mode_to_proto(m: Mode) -> pb::RankMode {
    match m {
        Mode::Score => pb::RankMode::Score,
        Mode::Generate => pb::RankMode::Generate,
        Mode::Retriever => pb::RankMode::Retriever,
    }
}

fn ms(s: f64) -> f64 {
    s * 1e3
}

fn timings_to_proto(t: &Timings) -> pb::StageTimings {
    pb::StageTimings {
        retrieve_ms: ms(t.retrieve_s),
        prompt_ms: ms(t.prompt_s),
        prefill_ms: ms(t.prefill_s),
        decode_ms: ms(t.decode_s),
        total_ms: ms(t.total_s),
        first_token_ms: ms(t.first_token_s),
        prompt_tokens: t.prompt_tokens as u32,
        generated_tokens: t.generated_tokens as u32,
        cached_prompt_tokens: t.cached_prompt_tokens as u32,
        queue_ms: ms(t.queue_s),
    }
}

fn recommendation_to_proto(r: Recommendation) -> pb::RecommendResponse {
    pb::RecommendResponse {
        timings: Some(timings_to_proto(&r.timings)),
        items: r
            .items
            .into_iter()
            .map(|i| pb::RankedItem {
                item_id: i.id,
                title: i.title,
                score: i.score,
                retriever_rank: i.retriever_rank,
                ranked_by_llm: i.by_llm,
            })
            .collect(),
        retriever: r.retriever,
        rank_mode: mode_to_proto(r.mode) as i32,
        adapter: r.adapter,
    }
}

/// The gRPC face of a [`Recommender`].
#[derive(Debug, Clone)]
pub struct RecommenderService {
    core: Arc<Recommender>,
}

impl RecommenderService {
    pub fn new(core: Arc<Recommender>) -> Self {
        Self { core }
    }

    /// Runs one call inside its span, with metrics and the finishing log line.
    async fn observe<T>(
        &self,
        rpc: &'static str,
        user_id: &str,
        trace_id: Option<&str>,
        fut: impl Future<Output = Result<T, ServiceError>>,
    ) -> Result<Response<T>, Status> {
        let span = tracing::info_span!(
            "rpc",
            rpc,
            user_id = crate::util::clip(user_id),
            trace_id = tracing::field::Empty,
            status = tracing::field::Empty,
            latency_ms = tracing::field::Empty
        );
        if let Some(t) = trace_id {
            span.record("trace_id", t);
        }
        let m = self.core.metrics().clone();
        async move {
            let t = Instant::now();
            // A guard, so a call the client abandons (its future dropped) is uncounted too.
            let inflight = GaugeGuard::new(&m.inflight.with_label_values(&[rpc]));
            let r = fut.await.map_err(Status::from);
            drop(inflight);
            let dt = t.elapsed();
            let code = r.as_ref().map_or_else(|s| s.code(), |_| Code::Ok);
            let latency_ms = dt.as_secs_f64() * 1e3;
            let span = tracing::Span::current();
            span.record("status", code_name(code));
            span.record("latency_ms", latency_ms);
            match &r {
                Ok(_) => tracing::info!("request finished"),
                Err(s) if matches!(s.code(), Code::Internal | Code::Unknown | Code::DataLoss) => {
                    tracing::error!(error = s.message(), "request failed")
                }
                Err(s) if matches!(s.code(), Code::Unavailable) => {
                    tracing::warn!(error = s.message(), "request failed")
                }
                // The caller's mistakes and load shedding: counted in the metrics, logged
                // only at debug so a flood of bad requests cannot flood the log.
                Err(s) => tracing::debug!(error = s.message(), "request refused"),
            }
            r.map(Response::new)
        }
        .instrument(span)
        .await
    }
}

#[tonic::async_trait]
impl RecommenderRpc for RecommenderService {
    async fn recommend(
        &self,
        request: Request<pb::RecommendRequest>,
    ) -> Result<Response<pb::RecommendResponse>, Status> {
        let by = respond_by(&request);
        let trace = trace_id(request.metadata()).map(str::to_owned);
        let r = request.into_inner();
        let user = r.user_id.clone();
        self.observe("Recommend", &user, trace.as_deref(), async move {
            let p = RecommendParams {
                mode: mode_from_proto(r.rank_mode)?,
                history: r.history,
                k: r.k,
                retriever: r.retriever,
                num_candidates: r.num_candidates,
                adapter: r.adapter,
                exclude: r.exclude,
                user_id: r.user_id,
                history_timestamps: r.history_timestamps,
            };
            Ok(recommendation_to_proto(self.core.recommend(p, by).await?))
        })
        .await
    }

    async fn rank(
        &self,
        request: Request<pb::RankRequest>,
    ) -> Result<Response<pb::RecommendResponse>, Status> {
        let by = respond_by(&request);
        let trace = trace_id(request.metadata()).map(str::to_owned);
        let r = request.into_inner();
        let user = r.user_id.clone();
        self.observe("Rank", &user, trace.as_deref(), async move {
            let p = RankParams {
                mode: mode_from_proto(r.rank_mode)?,
                history: r.history,
                candidates: r.candidates,
                k: r.k,
                adapter: r.adapter,
            };
            Ok(recommendation_to_proto(self.core.rank(p, by).await?))
        })
        .await
    }

    async fn retrieve(
        &self,
        request: Request<pb::RetrieveRequest>,
    ) -> Result<Response<pb::RetrieveResponse>, Status> {
        let by = respond_by(&request);
        let trace = trace_id(request.metadata()).map(str::to_owned);
        let r = request.into_inner();
        let user = r.user_id.clone();
        self.observe("Retrieve", &user, trace.as_deref(), async move {
            let p = RetrieveParams {
                history: r.history,
                num_candidates: r.num_candidates,
                retriever: r.retriever,
                exclude: r.exclude,
                user_id: r.user_id,
                history_timestamps: r.history_timestamps,
            };
            let out = self.core.retrieve(p, by).await?;
            Ok(pb::RetrieveResponse {
                timings: Some(timings_to_proto(&out.timings)),
                items: out
                    .items
                    .into_iter()
                    .map(|i| pb::ScoredItem {
                        item_id: i.id,
                        title: i.title,
                        score: i.score,
                    })
                    .collect(),
                retriever: out.retriever,
            })
        })
        .await
    }

    async fn list_retrievers(
        &self,
        request: Request<pb::ListRetrieversRequest>,
    ) -> Result<Response<pb::ListRetrieversResponse>, Status> {
        let trace = trace_id(request.metadata());
        self.observe("ListRetrievers", "", trace, async {
            // One set: a reload swapping another in meanwhile is not half shown.
            let set = self.core.retriever_set();
            let default = set.default_retriever();
            let plugins = set.retrievers().into_iter().map(|r| {
                let (trained_on_stage, trained_on_fingerprint) = r
                    .trained_on
                    .map(|t| (t.stage, t.fingerprint))
                    .unwrap_or_default();
                let b = set.bulkhead(&r.name);
                let timeouts = b.map_or(0, |b| b.timeouts);
                pb::RetrieverInfo {
                    is_default: r.name == default,
                    // The file name only: the server's directory layout is not the caller's
                    // business.
                    library_path: r
                        .path
                        .file_name()
                        .map(|f| f.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    description: r.description,
                    abi_version: r.abi_version,
                    plugin_name: r.plugin_name,
                    plugin_version: r.plugin_version,
                    calls: r.stats.calls,
                    failures: r.stats.errors
                        + r.stats.panics
                        + r.stats.contract_violations
                        + timeouts,
                    max_concurrent_calls: b.map_or(0, |b| b.limit as u32),
                    running_calls: b.map_or(0, |b| b.running as u32),
                    breaker_state: b.map_or("", |b| b.state.name()).into(),
                    timeouts,
                    refused: b.map_or(0, |b| b.refused),
                    view_stage: r.view_stage,
                    trained_on_stage,
                    trained_on_fingerprint,
                    stale_snapshot: r.stale_snapshot,
                    note: r.note.unwrap_or_default(),
                    name: r.name,
                    ..Default::default()
                }
            });
            let fusions = set.fusions().into_iter().map(|f| pb::RetrieverInfo {
                is_default: f.name == default,
                description: format!("fusion ({}) of {}", f.method.name(), f.members.join(", ")),
                plugin_name: "fusion".into(),
                fusion_method: f.method.name().into(),
                fusion_weights: (0..f.members.len()).map(|m| f.weight(m)).collect(),
                fusion_members: f.members.clone(),
                name: f.name.clone(),
                ..Default::default()
            });
            Ok(pb::ListRetrieversResponse {
                retrievers: plugins.chain(fusions).collect(),
            })
        })
        .await
    }

    async fn get_model_info(
        &self,
        request: Request<pb::GetModelInfoRequest>,
    ) -> Result<Response<pb::ModelInfo>, Status> {
        let trace = trace_id(request.metadata());
        self.observe("GetModelInfo", "", trace, async {
            let s = self.core.model_summary();
            let l = &self.core.config().limits;
            Ok(pb::ModelInfo {
                model_name: s.name,
                architecture: s.architecture,
                backend: s.backend,
                dtype: s.dtype,
                num_layers: s.num_layers as u32,
                hidden_size: s.hidden_size as u32,
                vocab_size: s.vocab_size as u32,
                max_context: s.max_context as u32,
                adapters: self.core.adapter_names(),
                default_adapter: self.core.config().model.default_adapter.clone(),
                default_rank_mode: mode_to_proto(self.core.default_mode()) as i32,
                default_k: l.default_k,
                max_k: l.max_k,
                default_num_candidates: l.default_num_candidates,
                max_num_candidates: l.max_num_candidates,
                max_history: l.max_request_history,
                catalog_items: s.catalog_items as u32,
                max_prompt_tokens: s.max_prompt_tokens as u32,
                history_items_used: l.max_history_items,
                prompt_history_items: s.prompt_history_items as u32,
                max_score_candidates: s.max_score_candidates as u32,
                max_retrieve_candidates: l.max_retrieve_candidates,
                default_retriever: self.core.default_retriever(),
                max_exclude: l.max_exclude,
                training_view_stage: s.training_view_stage,
                training_view_fingerprint: s.training_view_fingerprint,
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_gives_the_trace_id_when_valid() {
        let id = |v: &str| {
            let mut m = tonic::metadata::MetadataMap::new();
            m.insert("traceparent", v.parse().unwrap());
            trace_id(&m).map(str::to_owned)
        };
        let t = "4bf92f3577b34da6a3ce929d0e0e4736";
        let p = "00f067aa0ba902b7";
        assert_eq!(id(&format!("00-{t}-{p}-01")).as_deref(), Some(t));
        assert_eq!(id(&format!("00-{t}-{p}-00")).as_deref(), Some(t));
        // A later version may append fields after the flags.
        assert_eq!(id(&format!("cc-{t}-{p}-01-more")).as_deref(), Some(t));
        for bad in [
            format!("00-{t}-{p}-01-more"),
            format!("ff-{t}-{p}-01"),
            format!("00-{}-{p}-01", "0".repeat(32)),
            format!("00-{t}-{}-01", "0".repeat(16)),
            format!("00-{}-{p}-01", t.to_uppercase()),
            format!("00-{t}a-{p}-01"),
            format!("00-{t}-{p}"),
            format!("0-{t}-{p}-01"),
            "not a traceparent".to_owned(),
        ] {
            assert_eq!(id(&bad), None, "{bad}");
        }
        assert_eq!(trace_id(&tonic::metadata::MetadataMap::new()), None);
    }

    #[test]
    fn grpc_timeout_values() {
        assert_eq!(parse_grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse_grpc_timeout("7u"), Some(Duration::from_micros(7)));
        assert_eq!(
            parse_grpc_timeout("99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        for bad in ["", "m", "123456789m", "10x", "-1S", "1.5S", "1 S", "é"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn deadline_counts_from_arrival() {
        let arrived = Instant::now() - Duration::from_millis(40);
        let mut req = Request::new(());
        req.extensions_mut().insert(Received(arrived));
        req.metadata_mut()
            .insert("grpc-timeout", "100m".parse().unwrap());
        assert_eq!(
            respond_by(&req),
            Some(arrived + Duration::from_millis(100) - DEADLINE_MARGIN)
        );
        let plain = Request::new(());
        assert_eq!(respond_by(&plain), None);
    }

    #[test]
    fn rpc_labels_are_bounded() {
        assert_eq!(rpc_label("/palr.v1.Recommender/Recommend"), "Recommend");
        assert_eq!(
            rpc_label("/palr.admin.v1.Admin/ReloadRetrievers"),
            "ReloadRetrievers"
        );
        assert_eq!(rpc_label("/palr.admin.v1.Admin/ReloadData"), "ReloadData");
        assert_eq!(
            rpc_label("/palr.admin.v1.Admin/ListAdapters"),
            "ListAdapters"
        );
        assert_eq!(rpc_label("/palr.admin.v1.Admin/Recommend"), "unknown");
        assert_eq!(rpc_label("/palr.v1.Recommender/ListAdapters"), "unknown");
        assert_eq!(rpc_label("/grpc.health.v1.Health/Check"), "Health");
        assert_eq!(rpc_label("/x.Y/Z"), "unknown");
    }

    #[test]
    fn rank_modes() {
        assert_eq!(mode_from_proto(0).unwrap(), None);
        assert_eq!(mode_from_proto(3).unwrap(), Some(Mode::Retriever));
        let e = mode_from_proto(9).unwrap_err();
        assert!(e.to_string().contains("rank_mode = 9"), "{e}");
        assert_eq!(mode_to_proto(Mode::Generate), pb::RankMode::Generate);
    }
}
