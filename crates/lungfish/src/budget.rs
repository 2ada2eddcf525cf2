//! Byte budgets: how the pipeline bounds the memory its queues hold, in bytes.
//!
//! A [`ByteBudget`] is a semaphore counted in bytes. A stage that hands a batch to the
//! next one first takes a [`Lease`] on the batch's bytes ([`ByteBudget::acquire_timeout`]
//! waits while the budget is spent), stores the lease inside the batch, and the bytes
//! come back when the batch is dropped, wherever that happens (a shard done with its
//! events, the last sink done with its rows). So the bytes waiting between two stages
//! never exceed the budget, whatever the input does: a slow stage makes the one before
//! it wait, and that one stops reading the log.
//!
//! A request larger than the whole budget is granted the whole budget (it waits until
//! nothing else is held), so one oversized batch still passes, alone.
//!
//! The budget's use is a gauge, `lungfish_queue_bytes{stage}`, when it has a stage name.
//! One lock per lease, taken per batch, never per event.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::control::Control;

/// A budget of bytes shared by the producers of one queue; cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct ByteBudget {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    capacity: u64,
    usage: Mutex<Usage>,
    freed: Condvar,
    /// `lungfish_queue_bytes` and `lungfish_queue_waits_total` of its stage, if named.
    metrics: Option<(metrics::Gauge, metrics::Counter)>,
}

#[derive(Debug, Default)]
struct Usage {
    /// Bytes held now.
    used: u64,
    /// The most ever held at once.
    peak: u64,
    /// Acquisitions that did not find room at once.
    waits: u64,
}

impl Inner {
    fn usage(&self) -> std::sync::MutexGuard<'_, Usage> {
        self.usage.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn release(&self, bytes: u64) {
        let mut usage = self.usage();
        usage.used -= bytes;
        if let Some((gauge, _)) = &self.metrics {
            gauge.set(usage.used as f64);
        }
        drop(usage);
        self.freed.notify_all();
    }
}

impl ByteBudget {
    /// A budget of `capacity` bytes (at least 1).
    pub fn new(capacity: u64) -> Self {
        Self::with_metrics(capacity, None)
    }

    /// A budget of `capacity` bytes whose use is reported as
    /// `lungfish_queue_bytes{stage="STAGE"}`, and its waits as
    /// `lungfish_queue_waits_total{stage="STAGE"}`.
    pub fn for_stage(capacity: u64, stage: &'static str) -> Self {
        let gauge = metrics::gauge!("lungfish_queue_bytes", "stage" => stage);
        gauge.set(0.0);
        let waits = metrics::counter!("lungfish_queue_waits_total", "stage" => stage);
        Self::with_metrics(capacity, Some((gauge, waits)))
    }

    fn with_metrics(capacity: u64, metrics: Option<(metrics::Gauge, metrics::Counter)>) -> Self {
        ByteBudget {
            inner: Arc::new(Inner {
                capacity: capacity.max(1),
                usage: Mutex::new(Usage::default()),
                freed: Condvar::new(),
                metrics,
            }),
        }
    }

    /// The budget, in bytes.
    pub fn capacity(&self) -> u64 {
        self.inner.capacity
    }

    /// Bytes held by leases now.
    pub fn used(&self) -> u64 {
        self.inner.usage().used
    }

    /// The most bytes ever held at once (never more than the capacity).
    pub fn peak(&self) -> u64 {
        self.inner.usage().peak
    }

    /// How many times a caller had to wait for bytes to be freed (backpressure): one
    /// per acquisition that did not find room at once, and one per failed attempt.
    pub fn waits(&self) -> u64 {
        self.inner.usage().waits
    }

    /// A lease on `bytes` (at most the capacity) if they are free now.
    pub fn try_acquire(&self, bytes: u64) -> Option<Lease> {
        self.acquire_timeout(bytes, Duration::ZERO)
    }

    /// A lease on `bytes` (at most the capacity), waiting up to `timeout` for them to
    /// be freed; `None` if they were not. Waiters are not queued fairly: a small
    /// request may pass a large one that waits.
    pub fn acquire_timeout(&self, bytes: u64, timeout: Duration) -> Option<Lease> {
        let bytes = bytes.min(self.inner.capacity);
        let deadline = Instant::now() + timeout;
        let mut usage = self.inner.usage();
        if usage.used + bytes > self.inner.capacity {
            usage.waits += 1;
            if let Some((_, waits)) = &self.inner.metrics {
                waits.increment(1);
            }
        }
        while usage.used + bytes > self.inner.capacity {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            usage = self
                .inner
                .freed
                .wait_timeout(usage, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        usage.used += bytes;
        usage.peak = usage.peak.max(usage.used);
        if let Some((gauge, _)) = &self.inner.metrics {
            gauge.set(usage.used as f64);
        }
        Some(Lease {
            budget: Some(self.inner.clone()),
            bytes,
        })
    }

    /// A lease on `bytes`, waiting as long as it takes while the pipeline runs
    /// (backpressure), checking `control` every 100 ms; `None` if the pipeline aborts.
    pub(crate) fn acquire_patiently(&self, bytes: u64, control: &Control) -> Option<Lease> {
        loop {
            if let Some(lease) = self.acquire_timeout(bytes, Duration::from_millis(100)) {
                return Some(lease);
            }
            if control.is_aborting() {
                return None;
            }
        }
    }
}

/// Bytes held against a [`ByteBudget`], given back when the lease is dropped.
///
/// The default lease holds nothing (for batches made outside a budgeted pipeline). A
/// clone holds nothing either: the bytes are accounted once, to the original.
#[derive(Debug, Default)]
pub struct Lease {
    budget: Option<Arc<Inner>>,
    bytes: u64,
}

impl Lease {
    /// Bytes this lease holds.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// True if the lease holds bytes of a budget (false for the default lease).
    pub fn is_held(&self) -> bool {
        self.budget.is_some()
    }
}

impl Clone for Lease {
    fn clone(&self) -> Self {
        Lease::default()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(budget) = self.budget.take() {
            budget.release(self.bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_hold_bytes_until_dropped() {
        let budget = ByteBudget::new(100);
        let a = budget.try_acquire(60).expect("free");
        assert_eq!(budget.used(), 60);
        assert!(budget.try_acquire(50).is_none(), "60 + 50 > 100");
        assert_eq!(budget.waits(), 1);
        let b = budget.try_acquire(40).expect("exactly fits");
        assert_eq!(budget.used(), 100);
        drop(a);
        assert_eq!(budget.used(), 40);
        assert_eq!(budget.peak(), 100);
        assert_eq!(b.clone().bytes(), 0, "a clone is not accounted");
        drop(b);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn an_oversized_request_takes_the_whole_budget_alone() {
        let budget = ByteBudget::new(100);
        let small = budget.try_acquire(1).unwrap();
        assert!(budget.try_acquire(1_000).is_none());
        drop(small);
        let big = budget.try_acquire(1_000).expect("alone, it passes");
        assert_eq!(big.bytes(), 100);
        assert!(budget.try_acquire(1).is_none());
    }

    #[test]
    fn a_waiter_wakes_when_bytes_are_freed() {
        let budget = ByteBudget::new(10);
        let held = budget.try_acquire(10).unwrap();
        let waiter = {
            let budget = budget.clone();
            std::thread::spawn(move || budget.acquire_timeout(5, Duration::from_secs(10)))
        };
        std::thread::sleep(Duration::from_millis(20));
        drop(held);
        let got = waiter.join().unwrap().expect("woken by the release");
        assert_eq!(got.bytes(), 5);
        assert!(
            budget
                .acquire_timeout(6, Duration::from_millis(10))
                .is_none(),
            "times out while 5 + 6 > 10"
        );
    }
}
