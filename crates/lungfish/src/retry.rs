//! Retries that never multiply a storm: exponential backoff with full jitter, drawing on
//! a retry budget.
//!
//! [`Backoff`] gives the wait before retry `n`: a uniform random duration in
//! `[0, min(max, base * 2^n)]` ("full jitter", so clients that failed together do not
//! come back together).
//!
//! [`RetryBudget`] allows retries only while they stay under a share of the recent
//! requests plus a small floor (as Finagle's and Linkerd's budgets do): with a ratio of
//! 10%, a component that sees 1,000 requests in the window may retry about 100 times,
//! however many of them fail. Every first attempt is [deposited](RetryBudget::deposit);
//! every retry must [withdraw](RetryBudget::try_withdraw) first, and when it cannot, the
//! failure goes on as a failure. Counting is per batch: callers deposit and withdraw
//! `n` at once.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Exponential backoff with full jitter.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    state: u64,
}

impl Backoff {
    /// Waits growing from `base`, doubling per attempt, never over `max`; `seed` makes
    /// the jitter reproducible.
    pub fn new(base: Duration, max: Duration, seed: u64) -> Self {
        Backoff {
            base,
            max: max.max(base),
            state: seed ^ 0x9E37_79B9_7F4A_7C15,
        }
    }

    /// The ceiling of the wait before retry `attempt` (0 for the first retry).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// The wait before retry `attempt`: uniform in `[0, ceiling(attempt)]`.
    pub fn delay(&mut self, attempt: u32) -> Duration {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let r = crate::sources::generator::mix64(self.state);
        let unit = (r >> 11) as f64 / (1u64 << 53) as f64;
        self.ceiling(attempt).mul_f64(unit)
    }
}

/// How a [`RetryBudget`] is sized.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetSettings {
    /// Retries allowed per request deposited, e.g. `0.1`.
    pub ratio: f64,
    /// Retries allowed per second whatever the traffic, so a quiet component can still
    /// retry a little.
    pub min_per_second: f64,
    /// How far back requests and retries count.
    pub window: Duration,
}

impl Default for BudgetSettings {
    /// 10% of the requests of the last 10 s, plus 10 retries per second.
    fn default() -> Self {
        BudgetSettings {
            ratio: 0.1,
            min_per_second: 10.0,
            window: Duration::from_secs(10),
        }
    }
}

/// Buckets the window is cut into.
const BUCKETS: usize = 10;

/// A retry budget over a sliding window. Thread-safe; one lock per call.
///
/// ```
/// use std::time::{Duration, Instant};
/// use lungfish::retry::{BudgetSettings, RetryBudget};
///
/// // 10% of requests, no floor.
/// let budget = RetryBudget::new(BudgetSettings { ratio: 0.1, min_per_second: 0.0,
///                                                window: Duration::from_secs(10) });
/// let now = Instant::now();
/// budget.deposit(100, now);                 // 100 first attempts
/// assert!(budget.try_withdraw(10, now));    // 10 retries: allowed
/// assert!(!budget.try_withdraw(1, now));    // the 11th is not: it fails as a failure
/// ```
#[derive(Debug)]
pub struct RetryBudget {
    settings: BudgetSettings,
    inner: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    start: Instant,
    /// Index of the bucket holding `now`, counted from `start`.
    current: u64,
    requests: [u64; BUCKETS],
    retries: [u64; BUCKETS],
}

impl Window {
    fn advance(&mut self, now: Instant, bucket: Duration) {
        let index = (now.saturating_duration_since(self.start).as_nanos()
            / bucket.as_nanos().max(1)) as u64;
        if index > self.current {
            let stale = (index - self.current).min(BUCKETS as u64);
            for i in 1..=stale {
                let slot = ((self.current + i) % BUCKETS as u64) as usize;
                self.requests[slot] = 0;
                self.retries[slot] = 0;
            }
            self.current = index;
        }
    }

    fn slot(&self) -> usize {
        (self.current % BUCKETS as u64) as usize
    }
}

impl RetryBudget {
    /// An empty budget (only the floor is available at first).
    pub fn new(settings: BudgetSettings) -> Self {
        Self::starting_at(settings, Instant::now())
    }

    /// An empty budget whose window starts at `now` (for tests with a fake clock).
    pub fn starting_at(settings: BudgetSettings, now: Instant) -> Self {
        RetryBudget {
            settings,
            inner: Mutex::new(Window {
                start: now,
                current: 0,
                requests: [0; BUCKETS],
                retries: [0; BUCKETS],
            }),
        }
    }

    fn bucket(&self) -> Duration {
        (self.settings.window / BUCKETS as u32).max(Duration::from_millis(1))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Window> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records `n` first attempts.
    pub fn deposit(&self, n: u64, now: Instant) {
        let mut w = self.lock();
        w.advance(now, self.bucket());
        let slot = w.slot();
        w.requests[slot] += n;
    }

    /// Takes `n` retries if the budget allows them all; else takes nothing.
    pub fn try_withdraw(&self, n: u64, now: Instant) -> bool {
        let mut w = self.lock();
        w.advance(now, self.bucket());
        let allowed = self.allowed(&w);
        let used: u64 = w.retries.iter().sum();
        if used + n <= allowed {
            let slot = w.slot();
            w.retries[slot] += n;
            true
        } else {
            false
        }
    }

    /// Retries still allowed in the current window.
    pub fn remaining(&self, now: Instant) -> u64 {
        let mut w = self.lock();
        w.advance(now, self.bucket());
        self.allowed(&w).saturating_sub(w.retries.iter().sum())
    }

    fn allowed(&self, w: &Window) -> u64 {
        let requests: u64 = w.requests.iter().sum();
        let s = &self.settings;
        (s.ratio * requests as f64 + s.min_per_second * s.window.as_secs_f64()).floor() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_with_full_jitter() {
        let mut b = Backoff::new(Duration::from_millis(10), Duration::from_secs(1), 7);
        assert_eq!(b.ceiling(0), Duration::from_millis(10));
        assert_eq!(b.ceiling(3), Duration::from_millis(80));
        assert_eq!(b.ceiling(40), Duration::from_secs(1));
        let delays: Vec<Duration> = (0..1000).map(|_| b.delay(3)).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(80)));
        let mean = delays.iter().sum::<Duration>() / 1000;
        assert!(
            mean > Duration::from_millis(30) && mean < Duration::from_millis(50),
            "full jitter averages half the ceiling: {mean:?}"
        );
        let distinct: std::collections::BTreeSet<_> = delays.iter().collect();
        assert!(distinct.len() > 900, "jittered, not fixed");
    }

    #[test]
    fn a_budget_allows_its_share_of_requests_plus_a_floor() {
        let t0 = Instant::now();
        let settings = BudgetSettings {
            ratio: 0.1,
            min_per_second: 1.0,
            window: Duration::from_secs(10),
        };
        let budget = RetryBudget::starting_at(settings, t0);
        // Floor only: 10 retries over 10 s.
        assert_eq!(budget.remaining(t0), 10);
        budget.deposit(1000, t0);
        assert_eq!(budget.remaining(t0), 110);
        assert!(budget.try_withdraw(100, t0));
        assert!(!budget.try_withdraw(11, t0), "all or nothing");
        assert!(budget.try_withdraw(10, t0));
        assert!(!budget.try_withdraw(1, t0));
        // A storm of failures: however many, retries stay at 10% + floor.
        let mut retried = 0;
        for i in 0..1000 {
            let now = t0 + Duration::from_millis(i);
            budget.deposit(1, now);
            if budget.try_withdraw(1, now) {
                retried += 1;
            }
        }
        assert!(retried <= 100, "{retried} retries for 1000 requests");
        // After the window passes, old requests and retries no longer count.
        let later = t0 + Duration::from_secs(30);
        assert_eq!(budget.remaining(later), 10);
    }
}
