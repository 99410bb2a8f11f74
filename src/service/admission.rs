//! Admission to the ranker: at most `max_concurrent_rank` ranking jobs run at once, at most
//! `max_queue` requests wait for a slot, and the rest are refused at once ("server busy,
//! retry later") instead of piling up. Waiting is FIFO (tokio's semaphore is fair).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use prometheus::IntGauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueFull {
    /// Requests already waiting.
    pub waiting: usize,
}

/// The ranker's slots and wait queue.
#[derive(Debug)]
pub struct Admission {
    slots: Arc<Semaphore>,
    max_queue: usize,
    waiting: AtomicUsize,
    depth: IntGauge,
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

impl Admission {
    /// `slots` concurrent jobs (at least 1), `max_queue` waiters; `depth` mirrors the queue.
    pub fn new(slots: usize, max_queue: usize, depth: IntGauge) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(slots.max(1))),
            max_queue,
            waiting: AtomicUsize::new(0),
            depth,
        }
    }

    /// Requests waiting now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// A slot: at once if one is free, else after waiting in the queue, or `QueueFull` if
    /// the queue is full. The permit frees the slot when dropped; move it into the job so
    /// the slot stays taken until the job really ends.
    pub async fn acquire(&self) -> Result<OwnedSemaphorePermit, QueueFull> {
        if let Ok(p) = self.slots.clone().try_acquire_owned() {
            return Ok(p);
        }
        let mut n = self.waiting.load(Ordering::SeqCst);
        loop {
            if n >= self.max_queue {
                return Err(QueueFull { waiting: n });
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
        // The semaphore is never closed, so acquiring cannot fail.
        self.slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| QueueFull { waiting: n })
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
            let a = Arc::new(Admission::new(1, 2, gauge.clone()));
            let running = a.acquire().await.unwrap();
            // Two may wait...
            let w1 = tokio::spawn({
                let a = a.clone();
                async move { a.acquire().await.map(drop) }
            });
            let w2 = tokio::spawn({
                let a = a.clone();
                async move { a.acquire().await.map(drop) }
            });
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert_eq!(a.waiting(), 2);
            assert_eq!(gauge.get(), 2);
            // ...the third is refused at once.
            assert_eq!(a.acquire().await.unwrap_err(), QueueFull { waiting: 2 });
            // Freeing the slot lets the waiters through, in turn.
            drop(running);
            w1.await.unwrap().unwrap();
            w2.await.unwrap().unwrap();
            assert_eq!(a.waiting(), 0);
            assert_eq!(gauge.get(), 0);
            let _again = a.acquire().await.unwrap();
        });
    }

    #[test]
    fn abandoned_waits_leave_the_queue() {
        rt().block_on(async {
            let gauge = IntGauge::new("q", "q").unwrap();
            let a = Admission::new(1, 1, gauge.clone());
            let _running = a.acquire().await.unwrap();
            let r = tokio::time::timeout(Duration::from_millis(10), a.acquire()).await;
            assert!(r.is_err(), "nothing frees the slot");
            assert_eq!(a.waiting(), 0, "the timed-out waiter left the queue");
            assert_eq!(gauge.get(), 0);
            // So the queue has room again (still times out, but is not refused).
            let r = tokio::time::timeout(Duration::from_millis(10), a.acquire()).await;
            assert!(r.is_err());
        });
    }

    #[test]
    fn zero_queue_never_waits() {
        rt().block_on(async {
            let a = Admission::new(2, 0, IntGauge::new("q", "q").unwrap());
            let _p1 = a.acquire().await.unwrap();
            let _p2 = a.acquire().await.unwrap();
            assert_eq!(a.acquire().await.unwrap_err(), QueueFull { waiting: 0 });
        });
    }
}
