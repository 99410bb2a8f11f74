//! Admission to the ranker, bounded by count and by time: at most `max_concurrent_rank`
//! ranking jobs run at once, at most `max_queue` requests wait for a slot, none waits longer
//! than `max_queue_wait_ms`, and a request whose deadline cannot be met — the expected wait
//! (the measured ranking time × the queue ahead of it ÷ the slots) plus its own expected
//! ranking time passes the deadline — is refused up front, so slots go to requests that can
//! still finish in time. A waiter whose turn comes too late to finish (the jobs ahead ran
//! long) hands the slot on at once instead of starting. An idle ranker admits whatever
//! comes (a probe that corrects a stale estimate), and a job stopped at its deadline still
//! teaches the estimate a lower bound. Waiting is FIFO (tokio's semaphore is fair).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::IntGauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The wait queue is full.
    QueueFull {
        /// Requests already waiting.
        waiting: usize,
    },
    /// It would finish after its deadline.
    TooLate {
        /// Expected queue wait plus ranking time.
        expected: Duration,
        /// Time left to the deadline.
        left: Duration,
    },
    /// It waited `max_queue_wait_ms` without a slot.
    WaitedTooLong { waited: Duration },
}

/// The ranker's slots and wait queue.
#[derive(Debug)]
pub struct Admission {
    slots: Arc<Semaphore>,
    n_slots: usize,
    max_queue: usize,
    max_wait: Option<Duration>,
    waiting: AtomicUsize,
    depth: IntGauge,
    /// Mean ranking time of a job, microseconds (exponentially weighted; 0 = none yet).
    service_us: AtomicU64,
    /// When each running job got its slot (for how long the slots stay taken).
    running: Arc<Mutex<Vec<(u64, Instant)>>>,
    next_slot: AtomicU64,
}

/// A ranking slot: held while the job runs, freed when dropped.
#[derive(Debug)]
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    id: u64,
    running: Arc<Mutex<Vec<(u64, Instant)>>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut r = self.running.lock().unwrap_or_else(|p| p.into_inner());
        r.retain(|(id, _)| *id != self.id);
    }
}

/// Counts one waiting request; uncounts it when dropped, also when the wait is abandoned
/// (deadline, cancelled call).
struct Waiting<'a>(&'a Admission);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let n = self.0.waiting.fetch_sub(1, Ordering::SeqCst) - 1;
        self.0.depth.set(n as i64);
    }
}

/// Weight of the newest measurement in the mean ranking time.
const EWMA_NEW: f64 = 0.2;

impl Admission {
    /// `slots` concurrent jobs (at least 1), `max_queue` waiters, each waiting at most
    /// `max_wait` (`None`: until its deadline); `depth` mirrors the queue.
    pub fn new(
        slots: usize,
        max_queue: usize,
        max_wait: Option<Duration>,
        depth: IntGauge,
    ) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(slots.max(1))),
            n_slots: slots.max(1),
            max_queue,
            max_wait,
            waiting: AtomicUsize::new(0),
            depth,
            service_us: AtomicU64::new(0),
            running: Arc::new(Mutex::new(Vec::new())),
            next_slot: AtomicU64::new(0),
        }
    }

    fn slot(&self, permit: OwnedSemaphorePermit) -> Slot {
        let id = self.next_slot.fetch_add(1, Ordering::Relaxed);
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((id, Instant::now()));
        Slot {
            _permit: permit,
            id,
            running: self.running.clone(),
        }
    }

    /// Requests waiting now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// Records how long one ranking job took (slot held), for the time estimates.
    pub fn record(&self, took: Duration) {
        let new = took.as_micros() as f64;
        let _ = self
            .service_us
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                Some(if old == 0 {
                    new as u64
                } else {
                    (old as f64 * (1.0 - EWMA_NEW) + new * EWMA_NEW) as u64
                })
            });
    }

    /// Records a job stopped (deadline, caller gone) after running `ran`: its whole time is
    /// at least that, so the estimate rises to meet it, never falls. Without this a server
    /// whose every job is stopped (a fresh one under tight deadlines) never learns a time.
    pub fn record_at_least(&self, ran: Duration) {
        if self.service_time().is_none_or(|t| ran > t) {
            self.record(ran);
        }
    }

    /// The mean ranking time of a job, once one was measured.
    pub fn service_time(&self) -> Option<Duration> {
        match self.service_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }

    /// How long a request that joins the queue now should expect to wait, and then to rank
    /// (`own`: its own expected ranking time, else the mean), once a ranking time is known:
    /// the first running job's expected remaining time (the mean less how long it has run),
    /// plus a mean time per `n_slots` requests already waiting, plus its own.
    pub fn expected(&self, own: Option<Duration>) -> Option<Duration> {
        let t = self.service_time()?;
        let own = own.unwrap_or(t);
        if self.slots.available_permits() > 0 {
            return Some(own);
        }
        let first_free = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(_, since)| t.saturating_sub(since.elapsed()))
            .min()
            .unwrap_or(Duration::ZERO);
        let ahead = self.waiting() as f64 / self.n_slots as f64;
        Some(first_free + t.mul_f64(ahead) + own)
    }

    /// Whether a request with this deadline could still be answered if it joined the queue
    /// now (`own`: its expected ranking time): callers ask before spending work on a request
    /// (retrieval) that [`Admission::acquire`] would refuse anyway.
    /// When the ranker is idle (every slot free, nobody waiting) the request is admitted
    /// whatever the estimate says: it costs nobody else anything, and its outcome corrects an
    /// estimate that only requests let through can correct — without it, an estimate above
    /// the deadlines callers send would refuse every call for good.
    pub fn in_time(&self, deadline: Option<Instant>, own: Option<Duration>) -> Result<(), Refused> {
        if self.slots.available_permits() == self.n_slots && self.waiting() == 0 {
            return Ok(());
        }
        if let (Some(d), Some(expected)) = (deadline, self.expected(own)) {
            let left = d.saturating_duration_since(Instant::now());
            if expected > left {
                return Err(Refused::TooLate { expected, left });
            }
        }
        Ok(())
    }

    /// A slot: at once if one is free, else after waiting in the queue. Refused at once when
    /// the queue is full or the request could not finish by `deadline` (`own`: its expected
    /// ranking time), and after waiting `max_queue_wait`. The permit frees the slot when
    /// dropped; move it into the job so the slot stays taken until the job really ends.
    pub async fn acquire(
        &self,
        deadline: Option<Instant>,
        own: Option<Duration>,
    ) -> Result<Slot, Refused> {
        self.in_time(deadline, own)?;
        if let Ok(p) = self.slots.clone().try_acquire_owned() {
            return Ok(self.slot(p));
        }
        let mut n = self.waiting.load(Ordering::SeqCst);
        loop {
            if n >= self.max_queue {
                return Err(Refused::QueueFull { waiting: n });
            }
            match self
                .waiting
                .compare_exchange(n, n + 1, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => break,
                Err(now) => n = now,
            }
        }
        self.depth.set((n + 1) as i64);
        let _waiting = Waiting(self);
        let started = Instant::now();
        // The semaphore is never closed, so acquiring cannot fail.
        let wait = self.slots.clone().acquire_owned();
        let permit = match self.max_wait {
            None => wait.await.map_err(|_| Refused::QueueFull { waiting: n })?,
            Some(limit) => match tokio::time::timeout(limit, wait).await {
                Ok(p) => p.map_err(|_| Refused::QueueFull { waiting: n })?,
                Err(_) => {
                    return Err(Refused::WaitedTooLong {
                        waited: started.elapsed(),
                    });
                }
            },
        };
        // The wait took longer than estimated (the jobs ahead ran long): a job that can no
        // longer finish by its deadline gives the slot straight to the next waiter instead of
        // starting work nobody will receive.
        let slot = self.slot(permit);
        if let (Some(d), Some(t)) = (deadline, own.or_else(|| self.service_time())) {
            let left = d.saturating_duration_since(Instant::now());
            if t > left {
                return Err(Refused::TooLate { expected: t, left });
            }
        }
        Ok(slot)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    }

    #[test]
    fn bounded_slots_and_queue() {
        rt().block_on(async {
            let gauge = IntGauge::new("q", "q").unwrap();
            let a = Arc::new(Admission::new(1, 2, None, gauge.clone()));
            let running = a.acquire(None, None).await.unwrap();
            // Two may wait...
            let w1 = tokio::spawn({
                let a = a.clone();
                async move { a.acquire(None, None).await.map(drop) }
            });
            let w2 = tokio::spawn({
                let a = a.clone();
                async move { a.acquire(None, None).await.map(drop) }
            });
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert_eq!(a.waiting(), 2);
            assert_eq!(gauge.get(), 2);
            // ...the third is refused at once.
            assert_eq!(
                a.acquire(None, None).await.unwrap_err(),
                Refused::QueueFull { waiting: 2 }
            );
            // Freeing the slot lets the waiters through, in turn.
            drop(running);
            w1.await.unwrap().unwrap();
            w2.await.unwrap().unwrap();
            assert_eq!(a.waiting(), 0);
            assert_eq!(gauge.get(), 0);
            let _again = a.acquire(None, None).await.unwrap();
        });
    }

    #[test]
    fn abandoned_waits_leave_the_queue() {
        rt().block_on(async {
            let gauge = IntGauge::new("q", "q").unwrap();
            let a = Admission::new(1, 1, None, gauge.clone());
            let _running = a.acquire(None, None).await.unwrap();
            let r = tokio::time::timeout(Duration::from_millis(10), a.acquire(None, None)).await;
            assert!(r.is_err(), "nothing frees the slot");
            assert_eq!(a.waiting(), 0, "the timed-out waiter left the queue");
            assert_eq!(gauge.get(), 0);
            // So the queue has room again (still times out, but is not refused).
            let r = tokio::time::timeout(Duration::from_millis(10), a.acquire(None, None)).await;
            assert!(r.is_err());
        });
    }

    #[test]
    fn zero_queue_never_waits() {
        rt().block_on(async {
            let a = Admission::new(2, 0, None, IntGauge::new("q", "q").unwrap());
            let _p1 = a.acquire(None, None).await.unwrap();
            let _p2 = a.acquire(None, None).await.unwrap();
            assert_eq!(
                a.acquire(None, None).await.unwrap_err(),
                Refused::QueueFull { waiting: 0 }
            );
        });
    }

    #[test]
    fn requests_that_cannot_finish_in_time_are_refused_up_front() {
        rt().block_on(async {
            let a = Admission::new(1, 10, None, IntGauge::new("q", "q").unwrap());
            // Nothing measured yet: no estimate, so admitted.
            let soon = Some(Instant::now() + Duration::from_millis(50));
            let running = a.acquire(soon, None).await.unwrap();
            a.record(Duration::from_millis(100));
            a.record(Duration::from_millis(100));
            assert_eq!(a.service_time(), Some(Duration::from_millis(100)));
            // The slot's job just started: about its 100 ms to wait, then its own 100 ms.
            let e = a.expected(None).unwrap();
            assert!(
                e > Duration::from_millis(190) && e <= Duration::from_millis(200),
                "{e:?}"
            );
            let e = a.acquire(soon, None).await.unwrap_err();
            assert!(matches!(e, Refused::TooLate { .. }), "{e:?}");
            // Once the running job has run 60 ms, 40 ms of it remain.
            tokio::time::sleep(Duration::from_millis(60)).await;
            let e = a.expected(Some(Duration::from_millis(10))).unwrap();
            assert!(e <= Duration::from_millis(50), "{e:?}");
            // A later deadline is admitted to the queue (and gets the slot when it frees).
            let later = Some(Instant::now() + Duration::from_secs(5));
            let waiter = a.acquire(later, None);
            drop(running);
            let _slot = waiter.await.unwrap();
            // The mean follows new measurements.
            a.record(Duration::from_millis(200));
            assert_eq!(a.service_time(), Some(Duration::from_millis(120)));
        });
    }

    #[test]
    fn a_waiter_that_can_no_longer_finish_passes_the_slot_on() {
        rt().block_on(async {
            let a = Arc::new(Admission::new(
                1,
                10,
                None,
                IntGauge::new("q", "q").unwrap(),
            ));
            a.record(Duration::from_millis(50));
            let running = a.acquire(None, None).await.unwrap();
            // Expected: the running job's ~50 ms, then its own 50 ms, inside 150 ms: admitted.
            let tight = Some(Instant::now() + Duration::from_millis(150));
            let waiter = tokio::spawn({
                let a = a.clone();
                async move { a.acquire(tight, None).await.map(drop) }
            });
            let patient = tokio::spawn({
                let a = a.clone();
                let later = Some(Instant::now() + Duration::from_secs(5));
                async move { a.acquire(later, None).await.map(drop) }
            });
            // The running job overruns: 120 ms instead of 50, leaving the first waiter < 50 ms.
            tokio::time::sleep(Duration::from_millis(120)).await;
            assert_eq!(a.waiting(), 2);
            drop(running);
            let e = waiter.await.unwrap().unwrap_err();
            assert!(
                matches!(e, Refused::TooLate { expected, left }
                    if expected == Duration::from_millis(50) && left < expected),
                "{e:?}"
            );
            // ...and the slot went on to the next waiter at once.
            patient.await.unwrap().unwrap();
            assert_eq!(a.waiting(), 0);
        });
    }

    #[test]
    fn an_idle_ranker_admits_a_probe_and_stopped_jobs_teach_a_lower_bound() {
        rt().block_on(async {
            let a = Admission::new(1, 10, None, IntGauge::new("q", "q").unwrap());
            // An estimate far above the deadlines callers send (e.g. learnt while starved).
            a.record(Duration::from_millis(500));
            let soon = Some(Instant::now() + Duration::from_millis(100));
            // Idle: admitted all the same, so its outcome can correct the estimate...
            let probe = a.acquire(soon, None).await.unwrap();
            // ...while busy, the estimate decides.
            let e = a.acquire(soon, None).await.unwrap_err();
            assert!(matches!(e, Refused::TooLate { .. }), "{e:?}");
            drop(probe);
            // A job stopped after 800 ms ran at least that long: the estimate rises...
            a.record_at_least(Duration::from_millis(800));
            assert_eq!(a.service_time(), Some(Duration::from_millis(560)));
            // ...a stopped job shorter than the estimate says nothing...
            a.record_at_least(Duration::from_millis(100));
            assert_eq!(a.service_time(), Some(Duration::from_millis(560)));
            // ...and a fresh admission learns from its first stopped job.
            let fresh = Admission::new(1, 10, None, IntGauge::new("q", "q").unwrap());
            fresh.record_at_least(Duration::from_millis(290));
            assert_eq!(fresh.service_time(), Some(Duration::from_millis(290)));
        });
    }

    #[test]
    fn waiting_is_bounded_in_time() {
        rt().block_on(async {
            let a = Admission::new(
                1,
                10,
                Some(Duration::from_millis(20)),
                IntGauge::new("q", "q").unwrap(),
            );
            let _running = a.acquire(None, None).await.unwrap();
            let e = a.acquire(None, None).await.unwrap_err();
            assert!(matches!(e, Refused::WaitedTooLong { waited } if waited >= Duration::from_millis(20)), "{e:?}");
            assert_eq!(a.waiting(), 0);
        });
    }
}
