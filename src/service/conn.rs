//! Connection limits of the gRPC listener: what one client can hold is bounded.
//!
//! - at most `server.max_connections` connections, and `server.max_connections_per_peer`
//!   from one address, so one peer cannot take every file descriptor and health checks and
//!   other peers still get in (over a limit a connection is closed at once and counted);
//! - a connection with no request in flight for `server.idle_timeout_s` (including one that
//!   never speaks HTTP/2) is sent GOAWAY and closed;
//! - HTTP/2 keep-alive pings find dead peers; at most `server.max_concurrent_streams`
//!   streams per connection; a header block over `server.max_header_bytes` refuses its
//!   stream only (four times over it, h2 closes the connection as abuse);
//! - with bearer tokens (`[server.auth]`), every call but the health service's must carry
//!   an accepted token, or it is UNAUTHENTICATED before any work;
//! - optionally a token bucket per caller (`server.rate_limit_per_s`,
//!   `server.rate_limit_burst`): the token's name when authenticated, else the peer address;
//!   calls over it get RESOURCE_EXHAUSTED before any work.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::config::ServerSection;
use super::metrics::Metrics;
use super::security::{AuthFailure, Scope, Tokens};

/// The limits, from `[server]`.
#[derive(Debug, Clone)]
pub struct ConnLimits {
    pub max_connections: usize,
    pub max_per_peer: usize,
    pub idle_timeout: Option<Duration>,
    pub keepalive_interval: Option<Duration>,
    pub keepalive_timeout: Duration,
    pub max_concurrent_streams: u32,
    pub max_header_bytes: u32,
    pub rate_per_s: f64,
    pub burst: f64,
}

impl ConnLimits {
    pub fn from_config(s: &ServerSection) -> Self {
        let secs = |n: u64| (n > 0).then(|| Duration::from_secs(n));
        Self {
            max_connections: s.max_connections,
            max_per_peer: s.max_connections_per_peer,
            idle_timeout: secs(s.idle_timeout_s),
            keepalive_interval: secs(s.keepalive_interval_s),
            keepalive_timeout: Duration::from_secs(s.keepalive_timeout_s.max(1)),
            max_concurrent_streams: s.max_concurrent_streams,
            max_header_bytes: s.max_header_bytes,
            rate_per_s: s.rate_limit_per_s,
            burst: s.rate_limit_burst.max(1.0),
        }
    }
}

/// Open connections, overall and per peer address.
#[derive(Debug, Default)]
pub struct Connections {
    total: AtomicUsize,
    per_peer: Mutex<HashMap<IpAddr, usize>>,
}

/// Why a connection was closed at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `max_connections` are open.
    Total,
    /// `max_connections_per_peer` are open from this address.
    PerPeer,
}

impl Refusal {
    /// Every reason, for metrics that start at zero.
    pub const ALL: [Refusal; 2] = [Refusal::Total, Refusal::PerPeer];

    pub fn label(self) -> &'static str {
        match self {
            Refusal::Total => "max_connections",
            Refusal::PerPeer => "max_connections_per_peer",
        }
    }
}

/// One admitted connection; releases its place when dropped.
#[derive(Debug)]
pub struct ConnPermit {
    conns: Arc<Connections>,
    peer: IpAddr,
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        self.conns.total.fetch_sub(1, Ordering::SeqCst);
        let mut map = self
            .conns
            .per_peer
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.peer);
            }
        }
    }
}

impl Connections {
    /// Admits a connection from `peer`, or says which limit refuses it.
    pub fn admit(
        self: &Arc<Self>,
        peer: IpAddr,
        limits: &ConnLimits,
    ) -> Result<ConnPermit, Refusal> {
        let mut map = self.per_peer.lock().unwrap_or_else(|p| p.into_inner());
        if self.total.load(Ordering::SeqCst) >= limits.max_connections {
            return Err(Refusal::Total);
        }
        let n = map.entry(peer).or_default();
        if *n >= limits.max_per_peer {
            return Err(Refusal::PerPeer);
        }
        *n += 1;
        self.total.fetch_add(1, Ordering::SeqCst);
        Ok(ConnPermit {
            conns: self.clone(),
            peer,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.total.load(Ordering::SeqCst)
    }
}

/// Requests in flight on one connection and when the last one ended, for the idle timeout.
#[derive(Debug)]
pub struct Activity {
    active: AtomicUsize,
    /// Requests seen on the connection so far.
    seen: AtomicU64,
    /// Milliseconds since `epoch` of the last change.
    last_ms: AtomicU64,
    epoch: Instant,
}

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            active: AtomicUsize::new(0),
            seen: AtomicU64::new(0),
            last_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        })
    }

    fn touch(&self) {
        self.last_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// How long the connection has had no request in flight (zero while one runs).
    pub fn idle_for(&self) -> Duration {
        if self.active.load(Ordering::SeqCst) > 0 {
            return Duration::ZERO;
        }
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last)
    }

    /// Whether any request ever arrived (a connection that never sent one may not even speak
    /// HTTP/2).
    pub fn saw_requests(&self) -> bool {
        self.seen.load(Ordering::Relaxed) > 0
    }

    /// Marks a request in flight until the guard is dropped.
    pub fn begin(self: &Arc<Self>) -> ActiveGuard {
        self.seen.fetch_add(1, Ordering::Relaxed);
        self.active.fetch_add(1, Ordering::SeqCst);
        self.touch();
        ActiveGuard(self.clone())
    }
}

/// A request in flight on its connection.
#[derive(Debug)]
pub struct ActiveGuard(Arc<Activity>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.touch();
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Who a rate limit applies to: an authenticated caller, or a peer address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CallerKey {
    Token(Arc<str>),
    Addr(IpAddr),
}

/// Token buckets by caller.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<CallerKey, (f64, Instant)>>,
}

impl RateLimiter {
    /// `None` when rate limiting is off (`rate_per_s` 0).
    pub fn new(limits: &ConnLimits) -> Option<Arc<Self>> {
        (limits.rate_per_s > 0.0).then(|| {
            Arc::new(Self {
                rate: limits.rate_per_s,
                burst: limits.burst,
                buckets: Mutex::new(HashMap::new()),
            })
        })
    }

    /// Takes a token for `caller`; false when its bucket is empty.
    pub fn allow(&self, caller: CallerKey) -> bool {
        let now = Instant::now();
        let mut map = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        // Forget full buckets now and then, so the map stays as small as the active peers.
        if map.len() > 10_000 {
            let (rate, burst) = (self.rate, self.burst);
            map.retain(|_, (tokens, at)| *tokens + at.elapsed().as_secs_f64() * rate < burst);
        }
        let (tokens, at) = map.entry(caller).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.rate).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The per-connection service in front of the routes: marks requests in flight (idle
/// timeout), checks the bearer token, applies the rate limit.
#[derive(Clone)]
pub struct ConnService<S> {
    pub inner: S,
    pub activity: Arc<Activity>,
    pub peer: IpAddr,
    pub limiter: Option<Arc<RateLimiter>>,
    pub tokens: Arc<Tokens>,
    pub metrics: Metrics,
}

/// The authenticated caller's name, in the request's extensions (for handlers and logs).
#[derive(Debug, Clone)]
pub struct Caller(pub Arc<str>);

/// Calls that need no token: health checks (load balancers and probes carry none).
fn needs_no_token(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.Health/")
}

/// A response body that keeps its request marked in flight until it is sent.
struct ActiveBody {
    inner: tonic::body::Body,
    _active: ActiveGuard,
}

impl hyper::body::Body for ActiveBody {
    type Data = hyper::body::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl<S, B> tonic::codegen::Service<hyper::Request<B>> for ConnService<S>
where
    S: tonic::codegen::Service<
            hyper::Request<B>,
            Response = hyper::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        >,
    S::Future: Send + 'static,
{
    type Response = hyper::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: hyper::Request<B>) -> Self::Future {
        let active = self.activity.begin();
        // A call refused here never reaches `Stamp`, so it is counted here.
        let refuse = |active: ActiveGuard, metrics: &Metrics, path: &str, status: tonic::Status| {
            metrics
                .requests
                .with_label_values(&[
                    super::grpc::rpc_label(path),
                    super::grpc::code_name(status.code()),
                ])
                .inc();
            Box::pin(async move {
                drop(active);
                Ok(status.into_http())
            }) as Self::Future
        };
        let mut caller = CallerKey::Addr(self.peer);
        if self.tokens.enabled() && !needs_no_token(req.uri().path()) {
            let header = req.headers().get(hyper::header::AUTHORIZATION);
            match self.tokens.check(header.map(|v| v.as_bytes())) {
                Ok(id) => {
                    if let Some(scope) = Scope::of_path(req.uri().path())
                        && !id.scopes.contains(scope)
                    {
                        self.metrics
                            .auth_failures
                            .with_label_values(&[AuthFailure::Forbidden.label()])
                            .inc();
                        tracing::debug!(peer = %self.peer, caller = %id.name, scope = scope.name(), "call outside the token's scopes");
                        let status =
                            tonic::Status::permission_denied(id.denied(req.uri().path(), scope));
                        return refuse(active, &self.metrics, req.uri().path(), status);
                    }
                    let name = id.name.clone();
                    req.extensions_mut().insert(Caller(name.clone()));
                    caller = CallerKey::Token(name);
                }
                Err(why) => {
                    self.metrics
                        .auth_failures
                        .with_label_values(&[why.label()])
                        .inc();
                    tracing::debug!(peer = %self.peer, reason = why.label(), "unauthenticated call");
                    let status = tonic::Status::unauthenticated(why.message());
                    return refuse(active, &self.metrics, req.uri().path(), status);
                }
            }
        }
        if let Some(l) = &self.limiter
            && !l.allow(caller)
        {
            let status = tonic::Status::resource_exhausted(
                "rate limit: too many calls from this caller (server.rate_limit_per_s); slow down",
            );
            return refuse(active, &self.metrics, req.uri().path(), status);
        }
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            Ok(resp.map(|inner| {
                tonic::body::Body::new(ActiveBody {
                    inner,
                    _active: active,
                })
            }))
        })
    }
}

/// Raises the process's open-file limit (soft, up to the hard limit) so `max_connections`
/// plus a reserve (listeners, plugins, model files, health checks) fit; warns if it cannot.
pub fn ensure_fd_limit(max_connections: usize) {
    #[cfg(unix)]
    {
        let want = (max_connections + 256) as libc::rlim_t;
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct we own.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
            return;
        }
        if lim.rlim_cur >= want {
            return;
        }
        let raised = libc::rlimit {
            rlim_cur: want.min(lim.rlim_max),
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we own.
        let ok = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0;
        if !ok || raised.rlim_cur < want {
            tracing::warn!(
                open_files = if ok { raised.rlim_cur } else { lim.rlim_cur },
                needed = want,
                "the open-file limit is below server.max_connections plus a reserve: lower \
                 max_connections or raise the limit (ulimit -n)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, per_peer: usize) -> ConnLimits {
        ConnLimits {
            max_connections: total,
            max_per_peer: per_peer,
            idle_timeout: None,
            keepalive_interval: None,
            keepalive_timeout: Duration::from_secs(1),
            max_concurrent_streams: 8,
            max_header_bytes: 1024,
            rate_per_s: 2.0,
            burst: 2.0,
        }
    }

    #[test]
    fn connections_are_bounded_overall_and_per_peer() {
        let c = Arc::new(Connections::default());
        let l = limits(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = c.admit(a, &l).unwrap();
        let _a2 = c.admit(a, &l).unwrap();
        assert_eq!(c.admit(a, &l).unwrap_err(), Refusal::PerPeer);
        // Another peer still gets in...
        let _b1 = c.admit(b, &l).unwrap();
        // ...until the total is reached.
        assert_eq!(c.admit(b, &l).unwrap_err(), Refusal::Total);
        drop(a1);
        assert_eq!(c.open(), 2);
        c.admit(b, &l).unwrap();
    }

    #[test]
    fn buckets_refill_at_the_rate() {
        let r = RateLimiter::new(&limits(1, 1)).unwrap();
        let a = CallerKey::Addr("10.0.0.1".parse().unwrap());
        let b = CallerKey::Addr("10.0.0.2".parse().unwrap());
        let svc = CallerKey::Token(Arc::from("svc"));
        assert!(r.allow(a.clone()) && r.allow(a.clone()));
        assert!(!r.allow(a.clone()), "burst of 2 spent");
        assert!(r.allow(b), "other peers have their own bucket");
        assert!(r.allow(svc), "and so has every authenticated caller");
        std::thread::sleep(Duration::from_millis(550));
        assert!(
            r.allow(a.clone()),
            "one token back after half a second at 2/s"
        );
        assert!(!r.allow(a));
    }

    #[test]
    fn activity_counts_requests_in_flight() {
        let a = Activity::new();
        std::thread::sleep(Duration::from_millis(20));
        assert!(a.idle_for() >= Duration::from_millis(20));
        let g = a.begin();
        assert_eq!(a.idle_for(), Duration::ZERO);
        drop(g);
        assert!(a.idle_for() < Duration::from_millis(20));
    }
}
