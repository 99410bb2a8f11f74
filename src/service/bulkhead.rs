//! Isolation of retriever plugins from each other and from ranking (the bulkhead and circuit
//! breaker patterns of "Release It!", Nygard 2007):
//!
//! - Plugin calls run on a thread pool of their own, never the one ranking uses.
//! - Each retriever has a bound on its concurrent calls (`retrieval.max_concurrent_calls`,
//!   or the retriever's own `max_concurrent_calls`). A call holds its slot until the plugin
//!   really returns — also after its caller gave up at `retrieval.timeout_ms` — so a hung
//!   plugin can hold at most its own slots; past the bound calls fail at once with
//!   UNAVAILABLE naming the plugin, and other retrievers never notice.
//! - After `retrieval.breaker_timeouts` consecutive timeouts a retriever is quarantined for
//!   `retrieval.breaker_open_ms`: its calls fail at once. Then one probe call is let through
//!   (half-open): an answer in time closes the breaker, another timeout opens it again.
//!   State changes are logged and shown in health (service `palr.retriever.NAME`) and in
//!   `ListRetrievers`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::{Result, ServiceError};
use crate::retrieval::{QueryContext, Retriever};

/// The health service name of retriever `name`.
pub fn health_name(name: &str) -> String {
    format!("palr.retriever.{name}")
}

/// A retriever's circuit-breaker state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Quarantined: calls fail at once until the cool-down ends.
    Open,
    /// One probe call may go through.
    HalfOpen,
}

impl BreakerState {
    /// `closed`, `open`, `half-open`.
    pub fn name(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half-open",
        }
    }
}

#[derive(Debug)]
struct Breaker {
    state: BreakerState,
    /// Consecutive timeouts while closed.
    timeouts: u32,
    /// When an open breaker lets a probe through.
    until: Instant,
    /// A half-open probe is running.
    probing: bool,
}

/// One retriever's slots, breaker and counters.
#[derive(Debug)]
struct Cell {
    slots: Arc<Semaphore>,
    limit: usize,
    breaker: Mutex<Breaker>,
    timeouts: AtomicU64,
    refused: AtomicU64,
}

/// What the server shows about a retriever's isolation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BulkheadStats {
    pub limit: usize,
    /// Calls running now (including abandoned ones still inside the plugin).
    pub running: usize,
    pub state: BreakerState,
    /// Calls that passed `retrieval.timeout_ms`.
    pub timeouts: u64,
    /// Calls refused at once (no free slot, or quarantined).
    pub refused: u64,
}

/// Settings of the bulkheads.
#[derive(Debug, Clone, Copy)]
pub struct BulkheadConfig {
    /// Per-call limit; `None` = only the request's deadline.
    pub timeout: Option<Duration>,
    /// Consecutive timeouts that open a breaker; 0 = never.
    pub breaker_timeouts: u32,
    /// How long an open breaker refuses calls.
    pub breaker_open: Duration,
}

/// Called with `(retriever, serving)` when a breaker opens or closes.
pub type HealthHook = Arc<dyn Fn(&str, bool) + Send + Sync>;

/// Every retriever's bulkhead, and the thread pool plugin calls run on.
pub struct Bulkheads {
    pool: Option<tokio::runtime::Runtime>,
    cells: HashMap<String, Cell>,
    cfg: BulkheadConfig,
    health: Mutex<Option<HealthHook>>,
}

impl std::fmt::Debug for Bulkheads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bulkheads")
            .field("retrievers", &self.cells.len())
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl Drop for Bulkheads {
    fn drop(&mut self) {
        // Abandoned plugin calls may still run: never wait for them (and never block inside
        // an async context, where dropping a runtime normally would).
        if let Some(pool) = self.pool.take() {
            pool.shutdown_background();
        }
    }
}

impl Bulkheads {
    /// One bulkhead per `(name, concurrent-call limit)`; the pool has a thread for every slot.
    pub fn new(limits: &[(String, usize)], cfg: BulkheadConfig) -> std::io::Result<Self> {
        let threads: usize = limits.iter().map(|(_, l)| *l).sum::<usize>().max(1);
        let pool = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(threads)
            .thread_name("palr-retrieve")
            .enable_time()
            .build()?;
        let cells = limits
            .iter()
            .map(|(name, limit)| {
                let limit = (*limit).max(1);
                (
                    name.clone(),
                    Cell {
                        slots: Arc::new(Semaphore::new(limit)),
                        limit,
                        breaker: Mutex::new(Breaker {
                            state: BreakerState::Closed,
                            timeouts: 0,
                            until: Instant::now(),
                            probing: false,
                        }),
                        timeouts: AtomicU64::new(0),
                        refused: AtomicU64::new(0),
                    },
                )
            })
            .collect();
        Ok(Self {
            pool: Some(pool),
            cells,
            cfg,
            health: Mutex::new(None),
        })
    }

    /// Reports breaker changes to `hook` (the server's health reporter).
    pub fn set_health_hook(&self, hook: HealthHook) {
        *self.health.lock().unwrap_or_else(|p| p.into_inner()) = Some(hook);
    }

    /// The retriever names with a bulkhead.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.cells.keys().map(String::as_str)
    }

    /// Retriever `name`'s isolation state, if it has a bulkhead.
    pub fn stats(&self, name: &str) -> Option<BulkheadStats> {
        let c = self.cells.get(name)?;
        let state = self.lock(c).state;
        Some(BulkheadStats {
            limit: c.limit,
            running: c.limit - c.slots.available_permits(),
            state,
            timeouts: c.timeouts.load(Ordering::Relaxed),
            refused: c.refused.load(Ordering::Relaxed),
        })
    }

    fn lock<'a>(&self, c: &'a Cell) -> std::sync::MutexGuard<'a, Breaker> {
        c.breaker.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn notify(&self, name: &str, serving: bool) {
        let hook = self
            .health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(h) = hook {
            h(name, serving);
        }
    }

    /// Lets a call in, or says why not: quarantined, or every slot taken.
    fn admit(&self, name: &str, c: &Cell) -> Result<(OwnedSemaphorePermit, bool)> {
        let probe = {
            let mut b = self.lock(c);
            match b.state {
                BreakerState::Closed => false,
                BreakerState::Open if Instant::now() < b.until => {
                    c.refused.fetch_add(1, Ordering::Relaxed);
                    return Err(ServiceError::RetrieverQuarantined {
                        name: name.to_owned(),
                        retry_in_ms: b
                            .until
                            .saturating_duration_since(Instant::now())
                            .as_millis() as u64,
                    });
                }
                BreakerState::Open | BreakerState::HalfOpen if !b.probing => {
                    b.state = BreakerState::HalfOpen;
                    b.probing = true;
                    true
                }
                BreakerState::Open | BreakerState::HalfOpen => {
                    c.refused.fetch_add(1, Ordering::Relaxed);
                    return Err(ServiceError::RetrieverQuarantined {
                        name: name.to_owned(),
                        retry_in_ms: 0,
                    });
                }
            }
        };
        match c.slots.clone().try_acquire_owned() {
            Ok(p) => Ok((p, probe)),
            Err(_) => {
                c.refused.fetch_add(1, Ordering::Relaxed);
                if probe {
                    // The probe could not even start: every slot is still held, so stay open.
                    self.record(name, c, false, true);
                }
                Err(ServiceError::RetrieverBusy {
                    name: name.to_owned(),
                    limit: c.limit,
                })
            }
        }
    }

    /// Updates the breaker after a call: `timed_out` or not.
    fn record(&self, name: &str, c: &Cell, probe: bool, timed_out: bool) {
        let change = {
            let mut b = self.lock(c);
            if probe {
                b.probing = false;
            }
            match (b.state, timed_out) {
                (BreakerState::HalfOpen, false) if probe => {
                    b.state = BreakerState::Closed;
                    b.timeouts = 0;
                    Some(true)
                }
                (BreakerState::HalfOpen, true) if probe => {
                    b.state = BreakerState::Open;
                    b.until = Instant::now() + self.cfg.breaker_open;
                    Some(false)
                }
                (BreakerState::Closed, false) => {
                    b.timeouts = 0;
                    None
                }
                (BreakerState::Closed, true) => {
                    b.timeouts += 1;
                    let limit = self.cfg.breaker_timeouts;
                    (limit > 0 && b.timeouts >= limit).then(|| {
                        b.state = BreakerState::Open;
                        b.until = Instant::now() + self.cfg.breaker_open;
                        false
                    })
                }
                _ => None,
            }
        };
        match change {
            Some(true) => {
                tracing::info!(
                    retriever = name,
                    "retriever answered in time again: breaker closed"
                );
                self.notify(name, true);
            }
            Some(false) => {
                tracing::warn!(
                    retriever = name,
                    open_ms = self.cfg.breaker_open.as_millis() as u64,
                    "retriever quarantined after repeated timeouts: its calls fail at once until a probe answers in time"
                );
                self.notify(name, false);
            }
            None => {}
        }
    }

    /// Calls `retriever` (whose bulkhead is `name`) on the plugin pool, bounded by its slots,
    /// its breaker and `retrieval.timeout_ms`.
    pub async fn call(
        &self,
        name: &str,
        retriever: Arc<Retriever>,
        history: Arc<Vec<u32>>,
        k: usize,
        exclude: Arc<Vec<u32>>,
        ctx: Arc<OwnedContext>,
    ) -> Result<Vec<(u32, f32)>> {
        let c = self
            .cells
            .get(name)
            .ok_or_else(|| ServiceError::Internal(format!("retriever {name:?} has no bulkhead")))?;
        let (permit, probe) = self.admit(name, c)?;
        let pool = self
            .pool
            .as_ref()
            .ok_or_else(|| ServiceError::Internal("the plugin pool is gone".into()))?;
        let job = pool.spawn_blocking(move || {
            // The slot is held until the plugin returns, even if nobody waits any more.
            let _slot = permit;
            let qc = QueryContext {
                history_timestamps: ctx.timestamps.as_deref(),
                user_id: &ctx.user_id,
                request_time_ms: ctx.request_time_ms,
            };
            retriever.retrieve_with(&history, k, &exclude, &qc)
        });
        let out = match self.cfg.timeout {
            None => job.await,
            Some(limit) => match tokio::time::timeout(limit, job).await {
                Ok(r) => r,
                Err(_) => {
                    c.timeouts.fetch_add(1, Ordering::Relaxed);
                    self.record(name, c, probe, true);
                    return Err(ServiceError::RetrieverTimeout {
                        name: name.to_owned(),
                        ms: limit.as_millis() as u64,
                    });
                }
            },
        };
        self.record(name, c, probe, false);
        out.map_err(|e| ServiceError::Internal(format!("plugin call failed: {e}")))?
            .map_err(ServiceError::from)
    }
}

/// The request context a plugin call carries to its thread.
#[derive(Debug, Clone, Default)]
pub struct OwnedContext {
    pub user_id: String,
    pub timestamps: Option<Vec<i64>>,
    pub request_time_ms: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulkheads(timeouts: u32) -> Bulkheads {
        Bulkheads::new(
            &[("a".into(), 2)],
            BulkheadConfig {
                timeout: Some(Duration::from_millis(10)),
                breaker_timeouts: timeouts,
                breaker_open: Duration::from_millis(50),
            },
        )
        .unwrap()
    }

    #[test]
    fn breaker_opens_after_repeated_timeouts_and_a_probe_closes_it() {
        let b = bulkheads(2);
        let c = &b.cells["a"];
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        b.set_health_hook(Arc::new(move |n, ok| {
            s.lock().unwrap().push((n.to_owned(), ok))
        }));
        b.record("a", c, false, true);
        assert_eq!(b.stats("a").unwrap().state, BreakerState::Closed);
        b.record("a", c, false, true);
        assert_eq!(b.stats("a").unwrap().state, BreakerState::Open);
        // Quarantined: refused at once, counted.
        let e = b.admit("a", c).unwrap_err();
        assert!(
            matches!(e, ServiceError::RetrieverQuarantined { .. }),
            "{e}"
        );
        assert_eq!(b.stats("a").unwrap().refused, 1);
        // After the cool-down one probe goes through; a second caller is still refused.
        std::thread::sleep(Duration::from_millis(60));
        let (permit, probe) = b.admit("a", c).unwrap();
        assert!(probe);
        assert_eq!(b.stats("a").unwrap().state, BreakerState::HalfOpen);
        assert!(b.admit("a", c).is_err());
        // The probe answers in time: closed again.
        b.record("a", c, true, false);
        drop(permit);
        assert_eq!(b.stats("a").unwrap().state, BreakerState::Closed);
        assert_eq!(
            *seen.lock().unwrap(),
            [("a".to_owned(), false), ("a".to_owned(), true)]
        );
        // A success in between resets the count of consecutive timeouts.
        b.record("a", c, false, true);
        b.record("a", c, false, false);
        b.record("a", c, false, true);
        assert_eq!(b.stats("a").unwrap().state, BreakerState::Closed);
    }

    #[test]
    fn a_failed_probe_reopens_and_slots_bound_calls() {
        let b = bulkheads(1);
        let c = &b.cells["a"];
        b.record("a", c, false, true);
        std::thread::sleep(Duration::from_millis(60));
        let (p, probe) = b.admit("a", c).unwrap();
        b.record("a", c, probe, true);
        drop(p);
        assert_eq!(b.stats("a").unwrap().state, BreakerState::Open);
        // Zero = never opens.
        let b = bulkheads(0);
        let c = &b.cells["a"];
        for _ in 0..10 {
            b.record("a", c, false, true);
        }
        assert_eq!(b.stats("a").unwrap().state, BreakerState::Closed);
        // Two slots: a third concurrent call is refused, naming the retriever and its limit.
        let (p1, _) = b.admit("a", c).unwrap();
        let (_p2, _) = b.admit("a", c).unwrap();
        assert_eq!(b.stats("a").unwrap().running, 2);
        let e = b.admit("a", c).unwrap_err().to_string();
        assert!(
            e.contains("\"a\"") && e.contains("2 concurrent calls"),
            "{e}"
        );
        drop(p1);
        assert!(b.admit("a", c).is_ok());
    }
}
