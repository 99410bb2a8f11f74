//! Running the server: gRPC (`palr.v1.Recommender`, `grpc.health.v1.Health`, server
//! reflection v1 and v1alpha) on one listener, Prometheus `/metrics` on another, the admin
//! API (`palr.admin.v1.Admin`) on a third when some token has the `admin` scope, and the
//! graceful shutdown.
//!
//! gRPC is served by hyper's HTTP/2 server over tonic's `Routes` rather than by tonic's
//! `transport::Server`: that server wraps every call in its own `grpc-timeout` service, which
//! answers CANCELLED ("Timeout expired") whenever its timer wins the race with the handler —
//! always for deadlines shorter than the time to read the request — while the gRPC spec's
//! answer is DEADLINE_EXCEEDED. Here the handlers own the deadline (`grpc` module docs).
//!
//! Shutdown, when the `shutdown` future resolves (SIGTERM/SIGINT in `palr serve`):
//! 1. health reports NOT_SERVING (for `""` and `palr.v1.Recommender`);
//! 2. after `server.shutdown_grace_ms` the health statuses are cleared (which ends open
//!    `Watch` streams, so they do not hold the drain up), the listener is closed, and every
//!    connection gets an HTTP/2 GOAWAY: requests already accepted — running or queued for
//!    the ranker — finish and are answered (the admin listener closes the same way);
//! 3. at most `server.drain_timeout_s` later the server returns, whether or not everything
//!    drained (what did not is logged); the metrics endpoint stops last.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tonic::service::Routes;
use tonic_health::ServingStatus;

use crate::proto::admin::v1::admin_server::AdminServer;
use crate::proto::v1::recommender_server::RecommenderServer;

use super::admin::AdminService;
use super::config::ServerSection;
use super::conn::{Activity, ConnLimits, ConnService, Connections, RateLimiter};
use super::error::StartError;
use super::grpc::{RecommenderService, Stamp};
use super::metrics::Metrics;
use super::metrics::serve_metrics;
use super::recommender::Recommender;
use super::security::{Scope, Transport};

/// The gRPC service name of the recommender (for health checks).
pub const SERVICE_NAME: &str = "palr.v1.Recommender";

/// How a server run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// Every accepted request finished.
    All,
    /// `drain_timeout_s` passed with `dropped` requests still running: they were cut off
    /// (their callers see UNAVAILABLE or a reset stream). `palr serve` then exits non-zero.
    TimedOut { dropped: i64 },
}

/// Binds `addr`, naming it in the error.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind {
            addr: addr.to_string(),
            source,
        })
}

/// Binds the admin API's listener if the admin API is on: some token of `[server.auth]` has
/// the `admin` scope and `server.admin_addr` is set. Otherwise says in the log why it is off
/// and returns `None`.
pub async fn bind_admin(
    server: &ServerSection,
    transport: &Transport,
) -> Result<Option<TcpListener>, StartError> {
    let addr = server.admin_socket()?;
    match (transport.tokens.any_with(Scope::Admin), addr) {
        (true, Some(addr)) => Ok(Some(bind(addr).await?)),
        (false, _) => {
            tracing::info!(
                "admin API off: no token of [server.auth] has the admin scope (a tokens_file \
                 line `NAME TOKEN admin` turns it on, on server.admin_addr)"
            );
            Ok(None)
        }
        (true, None) => {
            tracing::warn!(
                "admin API off: a token has the admin scope but server.admin_addr is empty"
            );
            Ok(None)
        }
    }
}

/// Serves `core` on `grpc` (`/metrics` on `metrics`, the admin API on `admin`) until
/// `shutdown` resolves, then shuts down gracefully (module docs). `admin` comes from
/// [`bind_admin`]; a listener given without a token that has the admin scope is refused.
/// Long because the start-up and the shutdown steps of the module docs read in order here;
/// the parts with a name of their own are [`health_service`], [`public_routes`],
/// [`admin_routes`] and [`accept_loop`].
pub async fn serve(
    core: Arc<Recommender>,
    grpc: TcpListener,
    metrics: Option<TcpListener>,
    admin: Option<TcpListener>,
    transport: Transport,
    shutdown: impl Future<Output = ()>,
) -> Result<Drained, StartError> {
    if admin.is_some() && !transport.tokens.any_with(Scope::Admin) {
        return Err(StartError::Serve(
            "the admin API needs a token with the admin scope in [server.auth] (a tokens_file \
             line `NAME TOKEN admin`); without one it stays off"
                .into(),
        ));
    }
    let admin_addr = admin.as_ref().and_then(|l| l.local_addr().ok());
    let cfg = core.config().server.clone();
    let grpc_addr = grpc.local_addr().ok();
    transport.warn_if_exposed(grpc_addr);
    let metrics_addr = metrics.as_ref().and_then(|l| l.local_addr().ok());

    let (mut health, health_svc, swaps) = health_service(&core).await;
    let (stop_metrics_tx, stop_metrics_rx) = oneshot::channel::<()>();
    let metrics_task = metrics.map(|l| {
        tokio::spawn(serve_metrics(l, core.metrics().clone(), async {
            let _ = stop_metrics_rx.await;
        }))
    });

    let routes = public_routes(&core, health_svc, cfg.reflection)?;
    let security = transport.description.clone();
    let (stop_tx, stop_rx) = watch::channel(false);
    let limits = ConnLimits::from_config(&cfg);
    super::conn::ensure_fd_limit(limits.max_connections);
    let admin_loop = match admin {
        None => None,
        Some(listener) => {
            let admin_routes = admin_routes(&core, cfg.reflection)?;
            Some(accept_loop(
                listener,
                Stamp::new(admin_routes, core.metrics().clone()),
                limits.clone(),
                transport.clone(),
                core.metrics().clone(),
                stop_rx.clone(),
            ))
        }
    };
    let main_loop = accept_loop(
        grpc,
        Stamp::new(routes, core.metrics().clone()),
        limits,
        transport,
        core.metrics().clone(),
        stop_rx,
    );
    // Both loops run until `stop`, and both drain before the server returns.
    let serving = async move {
        match admin_loop {
            Some(admin_loop) => {
                tokio::join!(main_loop, admin_loop);
            }
            None => main_loop.await,
        }
    };
    tokio::pin!(serving);
    tracing::info!(
        grpc = %grpc_addr.map_or_else(String::new, |a| a.to_string()),
        metrics = %super::metrics::describe(metrics_addr),
        %security,
        reflection = cfg.reflection,
        "serving"
    );
    match admin_addr {
        Some(addr) => tracing::info!(
            admin = %addr,
            %security,
            "admin API on (palr.admin.v1.Admin; tokens with the admin scope only)"
        ),
        None => tracing::info!("admin API off"),
    }

    tokio::pin!(shutdown);
    tokio::select! {
        () = &mut serving => {
            swaps.abort();
            return Err(StartError::Serve("the gRPC accept loop stopped unexpectedly".into()));
        }
        () = &mut shutdown => {}
    }

    tracing::info!(
        grace_ms = cfg.shutdown_grace_ms,
        "shutting down: health is NOT_SERVING"
    );
    for name in ["", SERVICE_NAME] {
        health
            .set_service_status(name, ServingStatus::NotServing)
            .await;
    }
    if cfg.shutdown_grace_ms > 0 {
        tokio::select! {
            () = &mut serving => {}
            () = tokio::time::sleep(Duration::from_millis(cfg.shutdown_grace_ms)) => {}
        }
    }
    // Ends health Watch streams (their senders go), so they do not hold the drain up.
    for name in ["", SERVICE_NAME] {
        health.clear_service_status(name).await;
    }
    // The retrievers served now (a reload may have changed them since the start).
    swaps.abort();
    for r in core.retrievers() {
        health
            .clear_service_status(&super::bulkhead::health_name(&r.name))
            .await;
    }
    let _ = stop_tx.send(true);
    tracing::info!(
        timeout_s = cfg.drain_timeout_s,
        "no longer accepting; draining in-flight requests"
    );
    let drain = Duration::from_secs(cfg.drain_timeout_s);
    let outcome = match tokio::time::timeout(drain, &mut serving).await {
        Ok(()) => {
            tracing::info!("drained; stopped");
            Drained::All
        }
        Err(_) => {
            let dropped = core.metrics().inflight_total();
            tracing::error!(
                dropped,
                timeout_s = cfg.drain_timeout_s,
                "drain timeout passed: {dropped} accepted requests were still running and are \
                 cut off (raise server.drain_timeout_s to let them finish)"
            );
            Drained::TimedOut { dropped }
        }
    };
    let _ = stop_metrics_tx.send(());
    if let Some(t) = metrics_task {
        let _ = t.await;
    }
    Ok(outcome)
}

/// The health service: `palr.v1.Recommender` and one entry per retriever SERVING, kept in
/// step with breaker changes and with reloads (one task applies each reload's swap in order;
/// abort it at shutdown).
async fn health_service(
    core: &Arc<Recommender>,
) -> (
    tonic_health::server::HealthReporter,
    tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
    JoinHandle<()>,
) {
    let (health, health_svc) = tonic_health::server::health_reporter();
    health
        .set_service_status(SERVICE_NAME, ServingStatus::Serving)
        .await;
    // Each retriever has a health entry of its own, NOT_SERVING while quarantined.
    let retriever_names: Vec<String> = core.retrievers().into_iter().map(|r| r.name).collect();
    for name in &retriever_names {
        health
            .set_service_status(super::bulkhead::health_name(name), ServingStatus::Serving)
            .await;
    }
    // A reload brings new instances (breakers closed) and may add or drop names: one task
    // applies the swaps to health in the order the reloads made them.
    let (swaps_tx, mut swaps_rx) = mpsc::unbounded_channel::<(Vec<String>, Vec<String>)>();
    core.on_retrievers_swapped(Arc::new(move |now: &[String], gone: &[String]| {
        let _ = swaps_tx.send((now.to_vec(), gone.to_vec()));
    }));
    let mut swap_reporter = health.clone();
    let swaps = tokio::spawn(async move {
        while let Some((now, gone)) = swaps_rx.recv().await {
            for name in gone {
                swap_reporter
                    .clear_service_status(&super::bulkhead::health_name(&name))
                    .await;
            }
            for name in now {
                swap_reporter
                    .set_service_status(super::bulkhead::health_name(&name), ServingStatus::Serving)
                    .await;
            }
        }
    });
    let hook_reporter = health.clone();
    core.on_retriever_health(Arc::new(move |name: &str, serving: bool| {
        let reporter = hook_reporter.clone();
        let service = super::bulkhead::health_name(name);
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { reporter.set_service_status(service, status).await });
        }
    }));
    (health, health_svc, swaps)
}

/// The public listener's routes: health, the recommender and, when on, reflection of both.
fn public_routes(
    core: &Arc<Recommender>,
    health_svc: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
    reflection_on: bool,
) -> Result<Routes, StartError> {
    let reflection = |b: tonic_reflection::server::Builder<'static>| {
        b.register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };

    let mut routes = Routes::builder();
    routes
        .add_service(health_svc)
        .add_service(RecommenderServer::new(RecommenderService::new(
            core.clone(),
        )));
    if reflection_on {
        routes
            .add_service(
                reflection(tonic_reflection::server::Builder::configure())
                    .build_v1()
                    .map_err(|e| StartError::Serve(format!("reflection: {e}")))?,
            )
            .add_service(
                reflection(tonic_reflection::server::Builder::configure())
                    .build_v1alpha()
                    .map_err(|e| StartError::Serve(format!("reflection: {e}")))?,
            );
    }
    let routes = routes.routes();
    Ok(routes)
}

/// The admin listener's routes: the admin service and, when on, its own reflection (the
/// public listener's reflection never lists it).
fn admin_routes(core: &Arc<Recommender>, reflection_on: bool) -> Result<Routes, StartError> {
    let mut admin_routes = Routes::builder();
    admin_routes.add_service(AdminServer::new(AdminService::new(core.clone())));
    if reflection_on {
        admin_routes.add_service(
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(crate::proto::admin::FILE_DESCRIPTOR_SET)
                .build_v1()
                .map_err(|e| StartError::Serve(format!("admin reflection: {e}")))?,
        );
    }
    Ok(admin_routes.routes())
}

/// Resolves once `stop` is true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns must not live across an await (it is not Send).
    let _ = stop.wait_for(|s| *s).await.map(|_| ());
}

/// How long a TLS handshake may take before the connection is dropped (a peer that opens a
/// socket and never finishes the handshake holds a connection slot at most this long).
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts HTTP/2 connections (h2c, or h2 over TLS) on `listener` and serves `svc` on each,
/// within the connection limits (`conn` module), until `stop` turns true; then closes the
/// listener, asks every connection to finish (GOAWAY: streams already open complete, new ones
/// are refused) and returns once all have closed. Long because a connection's life reads
/// in order: admitted under the limits, TLS handshake under a timeout, served by `Conn`,
/// counted when it ends.
async fn accept_loop<S>(
    listener: TcpListener,
    svc: S,
    limits: ConnLimits,
    transport: Transport,
    metrics: Metrics,
    mut stop: watch::Receiver<bool>,
) where
    S: tonic::codegen::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = hyper::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.keepalive_interval)
        .keep_alive_timeout(limits.keepalive_timeout)
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(limits.max_header_bytes);
    let conns = Arc::new(Connections::default());
    let limiter = RateLimiter::new(&limits);
    // Each connection task holds a clone; `recv` returns None once all are gone.
    let (open_tx, mut open_rx) = mpsc::channel::<()>(1);
    loop {
        let (stream, peer) = tokio::select! {
            () = stopped(&mut stop) => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let permit = match conns.admit(peer.ip(), &limits) {
            Ok(p) => p,
            Err(why) => {
                metrics
                    .connections_refused
                    .with_label_values(&[why.label()])
                    .inc();
                tracing::debug!(%peer, limit = why.label(), "connection refused");
                drop(stream);
                continue;
            }
        };
        metrics.connections_open.set(conns.open() as i64);
        let _ = stream.set_nodelay(true);
        let activity = Activity::new();
        let service = ConnService {
            inner: svc.clone(),
            activity: activity.clone(),
            peer: peer.ip(),
            limiter: limiter.clone(),
            tokens: transport.tokens.clone(),
            metrics: metrics.clone(),
        };
        let conn = Conn {
            builder: builder.clone(),
            activity,
            idle_limit: limits.idle_timeout,
            stop: stop.clone(),
            metrics: metrics.clone(),
            peer,
        };
        let tls = transport.tls.clone();
        let open = open_tx.clone();
        let (metrics, conns) = (metrics.clone(), conns.clone());
        tokio::spawn(async move {
            let result = match tls {
                None => conn.drive(TokioIo::new(stream), service).await,
                Some(tls) => {
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.accept(stream)).await {
                        Ok(Ok(stream)) => conn.drive(TokioIo::new(stream), service).await,
                        Ok(Err(e)) => {
                            metrics.tls_handshake_failures.inc();
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            Ok(())
                        }
                        Err(_) => {
                            metrics.tls_handshake_failures.inc();
                            tracing::debug!(%peer, "TLS handshake timed out");
                            Ok(())
                        }
                    }
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
            drop(permit);
            metrics.connections_open.set(conns.open() as i64);
            drop(open);
        });
    }
    // Closing the listener now refuses new connections at once.
    drop(listener);
    drop(open_tx);
    let _ = open_rx.recv().await;
}

/// One admitted connection's HTTP/2 session, whatever stream it runs on.
struct Conn {
    builder: hyper::server::conn::http2::Builder<TokioExecutor>,
    activity: Arc<Activity>,
    idle_limit: Option<Duration>,
    stop: watch::Receiver<bool>,
    metrics: Metrics,
    peer: SocketAddr,
}

impl Conn {
    /// Serves HTTP/2 on `io` until the peer closes, the server stops (GOAWAY, open streams
    /// finish) or the connection is idle for `idle_limit`.
    async fn drive<I, S>(mut self, io: I, service: ConnService<S>) -> Result<(), hyper::Error>
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
        S: tonic::codegen::Service<
                hyper::Request<hyper::body::Incoming>,
                Response = hyper::Response<tonic::body::Body>,
                Error = std::convert::Infallible,
            > + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
    {
        let conn = self
            .builder
            .serve_connection(io, TowerToHyperService::new(service));
        tokio::pin!(conn);
        let activity = self.activity.clone();
        let idle_limit = self.idle_limit;
        let idle = async {
            match idle_limit {
                None => std::future::pending::<()>().await,
                Some(limit) => loop {
                    let idle_for = activity.idle_for();
                    if idle_for >= limit {
                        break;
                    }
                    tokio::time::sleep((limit - idle_for).max(Duration::from_millis(50))).await;
                },
            }
        };
        tokio::select! {
            r = conn.as_mut() => r,
            () = stopped(&mut self.stop) => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
            () = idle => {
                self.metrics.connections_closed_idle.inc();
                tracing::debug!(peer = %self.peer, "closing an idle connection");
                if self.activity.saw_requests() {
                    // A real client: GOAWAY, and let it close (a bounded wait).
                    conn.as_mut().graceful_shutdown();
                    match tokio::time::timeout(Duration::from_secs(5), conn.as_mut()).await {
                        Ok(r) => r,
                        Err(_) => Ok(()),
                    }
                } else {
                    // It never sent a request (maybe not even the HTTP/2 preface): drop it.
                    Ok(())
                }
            }
        }
    }
}

/// A server running on the current tokio runtime (tests, embedding).
#[derive(Debug)]
pub struct RunningServer {
    /// Where gRPC listens.
    pub grpc_addr: SocketAddr,
    /// Where `/metrics` listens, if enabled.
    pub metrics_addr: Option<SocketAddr>,
    /// Where the admin API listens, if it is on ([`bind_admin`]).
    pub admin_addr: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<Drained, StartError>>,
}

impl RunningServer {
    /// Binds the configured addresses and starts serving `core` in a task.
    pub async fn start(core: Arc<Recommender>) -> Result<Self, StartError> {
        let cfg = &core.config().server;
        let transport = Transport::from_config(cfg)?;
        let grpc = bind(cfg.grpc_addr()?).await?;
        let metrics = match cfg.metrics_socket()? {
            Some(a) => Some(bind(a).await?),
            None => None,
        };
        let grpc_addr = grpc.local_addr().map_err(|source| StartError::Bind {
            addr: cfg.addr.clone(),
            source,
        })?;
        let metrics_addr = metrics.as_ref().and_then(|l| l.local_addr().ok());
        let admin = bind_admin(cfg, &transport).await?;
        let admin_addr = admin.as_ref().and_then(|l| l.local_addr().ok());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(core, grpc, metrics, admin, transport, async {
            let _ = stopped.await;
        }));
        Ok(Self {
            grpc_addr,
            metrics_addr,
            admin_addr,
            stop: Some(stop),
            task,
        })
    }

    /// Starts the graceful shutdown (returns at once).
    pub fn shutdown(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }

    /// Waits for the server to end (after [`RunningServer::shutdown`]).
    pub async fn wait(self) -> Result<Drained, StartError> {
        self.task
            .await
            .map_err(|e| StartError::Serve(format!("server task failed: {e}")))?
    }
}

/// SIGINT (Ctrl-C) and, on Unix, SIGTERM, listened for from the moment this is made: made
/// before anything loads, a signal that arrives during start-up or right after the server
/// reports SERVING starts a graceful shutdown instead of killing the process.
pub struct Termination {
    #[cfg(unix)]
    signals: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl Termination {
    /// Installs the handlers (needs a tokio runtime with I/O).
    pub fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            match (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) {
                (Ok(t), Ok(i)) => Self {
                    signals: Some((t, i)),
                },
                (Err(e), _) | (_, Err(e)) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM/SIGINT; falling back to Ctrl-C");
                    Self { signals: None }
                }
            }
        }
        #[cfg(not(unix))]
        Self {}
    }

    /// Resolves on the first signal.
    pub async fn wait(self) {
        #[cfg(unix)]
        if let Some((mut term, mut int)) = self.signals {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("Ctrl-C received");
    }
}

/// SIGHUP, listened for from the moment this is made (before anything loads: the default
/// action of SIGHUP would end the process). Each one reloads the retrievers as the admin
/// API's `ReloadRetrievers` does ([`Recommender::reload_retrievers`]); one that arrives
/// during start-up is acted on once the server runs.
pub struct Hangup {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
}

impl Hangup {
    /// Installs the handler (needs a tokio runtime with I/O).
    pub fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            match signal(SignalKind::hangup()) {
                Ok(s) => Self { signal: Some(s) },
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGHUP: no reloads by signal");
                    Self { signal: None }
                }
            }
        }
        #[cfg(not(unix))]
        Self {}
    }

    /// Reloads `core`'s retrievers on every SIGHUP, one at a time, until the task is dropped.
    pub async fn reload_on_signal(self, core: Arc<Recommender>) {
        #[cfg(unix)]
        if let Some(mut hup) = self.signal {
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP received: reloading the retrievers");
                let core = core.clone();
                // Success and failure are logged and counted by the reload itself.
                let _ = tokio::task::spawn_blocking(move || core.reload_retrievers("SIGHUP")).await;
            }
            return;
        }
        let _ = core;
        std::future::pending::<()>().await;
    }
}
