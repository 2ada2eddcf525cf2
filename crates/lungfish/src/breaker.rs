//! A circuit breaker: stop calling what is failing, probe it now and then, come back
//! when it heals.
//!
//! * **Closed**: calls go through; the outcomes of the last `window` calls are kept.
//!   Once at least `min_calls` are kept and the share of failures reaches
//!   `failure_ratio`, or the share of calls slower than `slow_call` reaches
//!   `slow_ratio`, the breaker opens.
//! * **Open**: calls fail fast ([`Rejected`]) for the open duration, which starts at
//!   `open_for` and doubles each time the breaker opens again without having closed,
//!   up to `max_open_for`. A caller that is held back keeps its data (in the log) and
//!   tries later: an open breaker never drops anything.
//! * **Half-open**: after the open duration, up to `probes` calls go through. If they
//!   all succeed (and are not slow) the breaker closes with an empty window and the
//!   open duration resets; the first failure opens it again.
//!
//! Callers ask [`CircuitBreaker::try_call`] before a call (per batch, not per event) and
//! report its outcome with [`CircuitBreaker::record`]. Thread-safe; one lock per call.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How a breaker decides.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerSettings {
    /// Calls remembered (a count-based sliding window).
    pub window: usize,
    /// Calls remembered before the breaker may open.
    pub min_calls: usize,
    /// Share of failed calls that opens the breaker, in `(0, 1]`.
    pub failure_ratio: f64,
    /// A call slower than this counts as slow.
    pub slow_call: Duration,
    /// Share of slow calls that opens the breaker, in `(0, 1]`.
    pub slow_ratio: f64,
    /// First open duration.
    pub open_for: Duration,
    /// Longest open duration.
    pub max_open_for: Duration,
    /// Calls let through while half-open.
    pub probes: usize,
}

impl Default for BreakerSettings {
    /// 50 calls, at least 20; opens at 50% failures or 80% calls slower than 1 s; open
    /// 1 s, doubling up to 60 s; 3 probes.
    fn default() -> Self {
        BreakerSettings {
            window: 50,
            min_calls: 20,
            failure_ratio: 0.5,
            slow_call: Duration::from_secs(1),
            slow_ratio: 0.8,
            open_for: Duration::from_secs(1),
            max_open_for: Duration::from_secs(60),
            probes: 3,
        }
    }
}

/// A breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls fail fast until the instant given.
    Open {
        /// When probing may start.
        until: Instant,
    },
    /// A few probe calls go through.
    HalfOpen,
}

impl BreakerState {
    /// 0 closed, 1 half-open, 2 open: the value of the state metric.
    pub fn as_gauge(&self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::HalfOpen => 1.0,
            BreakerState::Open { .. } => 2.0,
        }
    }
}

/// The breaker is open: do not call; try again after `retry_in`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("circuit open: the service is failing; next try in {retry_in:?}")]
pub struct Rejected {
    /// Time until the breaker lets a probe through.
    pub retry_in: Duration,
}

/// How a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It worked.
    Success,
    /// It failed in a way that says the service is unwell (timeouts, 5xx, refused
    /// connections). Bad input is not such a failure: report it as a success.
    Failure,
}

/// A circuit breaker.
///
/// ```
/// use std::time::{Duration, Instant};
/// use lungfish::breaker::{BreakerSettings, CircuitBreaker, Outcome};
///
/// let breaker = CircuitBreaker::new(BreakerSettings { min_calls: 4, ..BreakerSettings::default() });
/// let now = Instant::now();
/// for _ in 0..4 {
///     breaker.try_call(now).unwrap();          // ask before each call (or batch)
///     breaker.record(Outcome::Failure, Duration::from_millis(5), now);
/// }
/// let refused = breaker.try_call(now).unwrap_err(); // open: fail fast
/// assert_eq!(refused.retry_in, Duration::from_secs(1));
/// // After the open duration, a probe goes through.
/// assert!(breaker.try_call(now + Duration::from_secs(1)).is_ok());
/// ```
#[derive(Debug)]
pub struct CircuitBreaker {
    settings: BreakerSettings,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    state: BreakerState,
    /// (failed, slow) of the last calls, while closed.
    calls: VecDeque<(bool, bool)>,
    failures: usize,
    slow: usize,
    /// Times opened since the last close.
    opened: u32,
    probes_started: usize,
    probes_ok: usize,
}

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(settings: BreakerSettings) -> Self {
        CircuitBreaker {
            settings,
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                calls: VecDeque::with_capacity(settings.window),
                failures: 0,
                slow: 0,
                opened: 0,
                probes_started: 0,
                probes_ok: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The state now.
    pub fn state(&self, now: Instant) -> BreakerState {
        let mut inner = self.lock();
        self.tick(&mut inner, now);
        inner.state
    }

    fn tick(&self, inner: &mut Inner, now: Instant) {
        if let BreakerState::Open { until } = inner.state
            && now >= until
        {
            inner.state = BreakerState::HalfOpen;
            inner.probes_started = 0;
            inner.probes_ok = 0;
        }
    }

    /// May a call be made now?
    ///
    /// # Errors
    /// The breaker is open, or half-open with all its probes out.
    pub fn try_call(&self, now: Instant) -> Result<(), Rejected> {
        let mut inner = self.lock();
        self.tick(&mut inner, now);
        match inner.state {
            BreakerState::Closed => Ok(()),
            BreakerState::Open { until } => Err(Rejected {
                retry_in: until - now,
            }),
            BreakerState::HalfOpen => {
                if inner.probes_started < self.settings.probes {
                    inner.probes_started += 1;
                    Ok(())
                } else {
                    Err(Rejected {
                        retry_in: Duration::from_millis(100),
                    })
                }
            }
        }
    }

    /// Reports how a call that [`try_call`](Self::try_call) allowed ended, and how long
    /// it took.
    pub fn record(&self, outcome: Outcome, took: Duration, now: Instant) {
        let s = &self.settings;
        let failed = outcome == Outcome::Failure;
        let slow = took >= s.slow_call;
        let mut inner = self.lock();
        self.tick(&mut inner, now);
        match inner.state {
            BreakerState::Closed => {
                if inner.calls.len() == s.window.max(1)
                    && let Some((f, sl)) = inner.calls.pop_front()
                {
                    inner.failures -= usize::from(f);
                    inner.slow -= usize::from(sl);
                }
                inner.calls.push_back((failed, slow));
                inner.failures += usize::from(failed);
                inner.slow += usize::from(slow);
                let n = inner.calls.len();
                if n >= s.min_calls.max(1)
                    && (inner.failures as f64 >= s.failure_ratio * n as f64
                        || inner.slow as f64 >= s.slow_ratio * n as f64)
                {
                    self.open(&mut inner, now);
                }
            }
            BreakerState::HalfOpen => {
                if failed || slow {
                    self.open(&mut inner, now);
                } else {
                    inner.probes_ok += 1;
                    if inner.probes_ok >= s.probes.max(1) {
                        inner.state = BreakerState::Closed;
                        inner.opened = 0;
                        inner.calls.clear();
                        inner.failures = 0;
                        inner.slow = 0;
                    }
                }
            }
            // A call allowed before the breaker opened: its outcome is already counted
            // in what opened it.
            BreakerState::Open { .. } => {}
        }
    }

    fn open(&self, inner: &mut Inner, now: Instant) {
        let s = &self.settings;
        let factor = 1u32.checked_shl(inner.opened.min(31)).unwrap_or(u32::MAX);
        let open_for = s.open_for.saturating_mul(factor).min(s.max_open_for);
        inner.opened = inner.opened.saturating_add(1);
        inner.state = BreakerState::Open {
            until: now + open_for,
        };
        inner.calls.clear();
        inner.failures = 0;
        inner.slow = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> BreakerSettings {
        BreakerSettings {
            window: 10,
            min_calls: 5,
            failure_ratio: 0.5,
            slow_call: Duration::from_millis(500),
            slow_ratio: 0.8,
            open_for: Duration::from_secs(1),
            max_open_for: Duration::from_secs(4),
            probes: 2,
        }
    }

    const FAST: Duration = Duration::from_millis(40);
    const SLOW: Duration = Duration::from_millis(800);

    #[test]
    fn failures_open_it_and_probes_close_it() {
        let t0 = Instant::now();
        let b = CircuitBreaker::new(settings());
        // Under min_calls nothing opens it, even all failures.
        for _ in 0..4 {
            b.try_call(t0).unwrap();
            b.record(Outcome::Failure, FAST, t0);
        }
        assert_eq!(b.state(t0), BreakerState::Closed);
        b.try_call(t0).unwrap();
        b.record(Outcome::Failure, FAST, t0);
        assert!(matches!(b.state(t0), BreakerState::Open { .. }));
        let e = b.try_call(t0 + Duration::from_millis(400)).unwrap_err();
        assert_eq!(e.retry_in, Duration::from_millis(600));
        // Half-open after 1 s: two probes, no third.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(b.state(t1), BreakerState::HalfOpen);
        b.try_call(t1).unwrap();
        b.try_call(t1).unwrap();
        assert!(b.try_call(t1).is_err());
        b.record(Outcome::Success, FAST, t1);
        b.record(Outcome::Success, FAST, t1);
        assert_eq!(b.state(t1), BreakerState::Closed);
    }

    #[test]
    fn a_failed_probe_reopens_it_for_longer_each_time() {
        let t0 = Instant::now();
        let b = CircuitBreaker::new(settings());
        for _ in 0..5 {
            b.record(Outcome::Failure, FAST, t0);
        }
        let mut now = t0;
        for expected in [2, 4, 4] {
            now += Duration::from_secs(5);
            b.try_call(now).unwrap();
            b.record(Outcome::Failure, FAST, now);
            match b.state(now) {
                BreakerState::Open { until } => {
                    assert_eq!(until - now, Duration::from_secs(expected));
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn slow_calls_open_it_and_a_mixed_window_does_not() {
        let t0 = Instant::now();
        let b = CircuitBreaker::new(settings());
        // 40% failures and 40% slow over 10 calls: stays closed.
        for i in 0..10 {
            let outcome = if [2, 4, 7, 9].contains(&i) {
                Outcome::Failure
            } else {
                Outcome::Success
            };
            let took = if i % 5 >= 3 { SLOW } else { FAST };
            b.record(outcome, took, t0);
        }
        assert_eq!(b.state(t0), BreakerState::Closed);
        // The partner slows from 40 ms to 800 ms: slow calls open it.
        for _ in 0..8 {
            b.record(Outcome::Success, SLOW, t0);
        }
        assert!(matches!(b.state(t0), BreakerState::Open { .. }));
        assert_eq!(b.state(t0).as_gauge(), 2.0);
    }
}
