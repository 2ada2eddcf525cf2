//! A guarded outside call: a timeout, retries drawn from a retry budget, a circuit
//! breaker and an adaptive concurrency limit, in one async wrapper.
//!
//! Each of [`retry`](crate::retry), [`breaker`](crate::breaker) and
//! [`concurrency`](crate::concurrency) can be used alone; [`CallGuard`] puts them in
//! the order that keeps a slow or failing service from taking its callers down:
//!
//! 1. **Concurrency**: wait up to [`GuardSettings::queue_timeout`] for a permit of the
//!    [`AdaptiveLimit`], which shrinks as soon as the service slows down or fails and
//!    grows back while it answers fast; no permit in time is [`GuardError::Overloaded`]
//!    (shed the work, or tell your own client to retry later).
//! 2. **Breaker**: while the [`CircuitBreaker`] is open the call fails at once
//!    ([`GuardError::Open`]) without touching the service.
//! 3. **Timeout**: the call gets [`GuardSettings::timeout`]; past it, its future is
//!    dropped and the attempt counts as a failure.
//! 4. **Retry**: a transient failure is retried after a full-jitter [`Backoff`], up to
//!    [`GuardSettings::max_attempts`] attempts, and only while the [`RetryBudget`]
//!    allows, so retries stay a bounded share of the traffic and never multiply a
//!    storm. A permanent failure (bad input: the service is well) is returned at once
//!    and does not count against the breaker.
//!
//! Every wait is bounded: each attempt waits for its own permit, so a call takes at
//! most `max_attempts x (queue_timeout + timeout) + (max_attempts - 1) x backoff_max`
//! ([`GuardSettings::max_call_time`]).
//!
//! ```
//! use std::time::Duration;
//! use lungfish::guard::{CallGuard, GuardError, GuardSettings};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let guard = CallGuard::new(GuardSettings {
//!     timeout: Duration::from_millis(200),
//!     ..GuardSettings::default()
//! });
//! // Any async call: an HTTP request, a database query...
//! let answer: Result<u32, GuardError<String>> = guard.call(|| async { Ok(42) }).await;
//! assert_eq!(answer.unwrap(), 42);
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::oneshot;

use crate::breaker::{BreakerSettings, CircuitBreaker, Outcome};
use crate::concurrency::{AdaptiveLimit, CallOutcome, LimitSettings, Permit};
use crate::retry::{Backoff, BudgetSettings, RetryBudget};

/// How a [`CallGuard`] limits, times, retries and breaks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GuardSettings {
    /// Time one attempt may take.
    pub timeout: Duration,
    /// Attempts per call, the first included (at least 1).
    pub max_attempts: u32,
    /// Backoff before the first retry (doubled per retry, fully jittered).
    pub backoff_base: Duration,
    /// Longest backoff.
    pub backoff_max: Duration,
    /// Longest wait for a concurrency permit.
    pub queue_timeout: Duration,
    /// The retry budget.
    pub budget: BudgetSettings,
    /// The circuit breaker.
    pub breaker: BreakerSettings,
    /// The adaptive concurrency limit.
    pub limit: LimitSettings,
}

impl Default for GuardSettings {
    /// 1 s per attempt, 3 attempts, backoff from 50 ms up to 1 s, 1 s queue wait, and
    /// the defaults of [`BudgetSettings`], [`BreakerSettings`] and [`LimitSettings`].
    fn default() -> Self {
        GuardSettings {
            timeout: Duration::from_secs(1),
            max_attempts: 3,
            backoff_base: Duration::from_millis(50),
            backoff_max: Duration::from_secs(1),
            queue_timeout: Duration::from_secs(1),
            budget: BudgetSettings::default(),
            breaker: BreakerSettings::default(),
            limit: LimitSettings::default(),
        }
    }
}

impl GuardSettings {
    /// The longest a call can take: every attempt may wait `queue_timeout` for a
    /// permit and `timeout` for its answer, with a backoff of at most `backoff_max`
    /// between attempts.
    pub fn max_call_time(&self) -> Duration {
        let attempts = self.max_attempts.max(1);
        (self.queue_timeout + self.timeout) * attempts + self.backoff_max * (attempts - 1)
    }
}

/// Why a guarded call gave up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuardError<E> {
    /// The breaker is open: the service has been failing. Nothing was called.
    Open {
        /// Time until the breaker lets a probe through.
        retry_in: Duration,
    },
    /// No concurrency permit within the queue timeout: too many calls in flight for
    /// what the service sustains now. Nothing was called.
    Overloaded {
        /// The concurrency limit at that moment.
        limit: usize,
    },
    /// The last attempt took longer than the timeout.
    TimedOut {
        /// Attempts made.
        attempts: u32,
    },
    /// The last attempt failed with this error (a permanent one, or a transient one
    /// with no attempt or retry budget left).
    Failed {
        /// The service's error.
        error: E,
        /// Attempts made.
        attempts: u32,
    },
}

impl<E: fmt::Display> fmt::Display for GuardError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GuardError::Open { retry_in } => {
                write!(f, "circuit open: not called; next try in {retry_in:?}")
            }
            GuardError::Overloaded { limit } => {
                write!(f, "overloaded: {limit} calls in flight already; not called")
            }
            GuardError::TimedOut { attempts } => {
                write!(f, "timed out (attempt {attempts})")
            }
            GuardError::Failed { error, attempts } => {
                write!(f, "failed after {attempts} attempt(s): {error}")
            }
        }
    }
}

impl<E: fmt::Debug + fmt::Display> std::error::Error for GuardError<E> {}

/// Guards the calls to one outside service. Share it (`Arc`) between all the tasks
/// that call that service: its limit, breaker and budget are only useful if they see
/// every call.
#[derive(Debug)]
pub struct CallGuard {
    settings: GuardSettings,
    limit: AdaptiveLimit,
    breaker: CircuitBreaker,
    budget: RetryBudget,
    /// Callers waiting for a permit, oldest first.
    waiters: Mutex<VecDeque<oneshot::Sender<Permit>>>,
    /// Seeds each call's backoff jitter.
    calls: AtomicU64,
}

impl CallGuard {
    /// A guard with a closed breaker, an empty budget and the limit at its initial
    /// value.
    pub fn new(settings: GuardSettings) -> Self {
        CallGuard {
            settings,
            limit: AdaptiveLimit::new(settings.limit),
            breaker: CircuitBreaker::new(settings.breaker),
            budget: RetryBudget::new(settings.budget),
            waiters: Mutex::new(VecDeque::new()),
            calls: AtomicU64::new(0),
        }
    }

    /// Names the guarded service in the concurrency gauge
    /// (`lungfish_concurrency_limit{component="NAME"}`).
    #[must_use]
    pub fn named(mut self, service: impl Into<String>) -> Self {
        self.limit = self.limit.named(service);
        self
    }

    /// Calls `attempt` under the guard, treating every error as transient (retried,
    /// and counted by the breaker as the service being unwell).
    ///
    /// # Errors
    /// See [`GuardError`].
    ///
    /// # Cancel safety
    /// Dropping the returned future drops the attempt in flight (its outcome is not
    /// recorded) and gives its concurrency permit back; what the service did with a
    /// dropped attempt is unknown, as with a timeout.
    pub async fn call<T, E, F, Fut>(&self, attempt: F) -> Result<T, GuardError<E>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.call_classified(attempt, |_| true).await
    }

    /// Like [`call`](Self::call), with `is_transient` telling which errors are worth
    /// retrying (a timeout, a 503) and which are permanent (a 400: returned at once,
    /// and the breaker counts the call as a success since the service answered).
    ///
    /// # Errors
    /// See [`GuardError`].
    ///
    /// # Cancel safety
    /// As [`call`](Self::call).
    pub async fn call_classified<T, E, F, Fut>(
        &self,
        mut attempt: F,
        is_transient: impl Fn(&E) -> bool,
    ) -> Result<T, GuardError<E>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let s = &self.settings;
        let seed = self.calls.fetch_add(1, Ordering::Relaxed);
        let mut backoff = Backoff::new(s.backoff_base, s.backoff_max, seed);
        self.budget.deposit(1, now());
        let mut made = 0u32;
        loop {
            let permit = self.permit().await?;
            let permit = Held {
                guard: self,
                permit: Some(permit),
            };
            if let Err(open) = self.breaker.try_call(now()) {
                drop(permit); // never used: the limit learns nothing
                return Err(GuardError::Open {
                    retry_in: open.retry_in,
                });
            }
            made += 1;
            let started = now();
            let result = tokio::time::timeout(s.timeout, attempt()).await;
            let took = now().saturating_duration_since(started);
            let error = match result {
                Ok(Ok(value)) => {
                    self.breaker.record(Outcome::Success, took, now());
                    permit.release(CallOutcome::Ok);
                    return Ok(value);
                }
                Ok(Err(error)) if !is_transient(&error) => {
                    self.breaker.record(Outcome::Success, took, now());
                    permit.release(CallOutcome::Ok);
                    return Err(GuardError::Failed {
                        error,
                        attempts: made,
                    });
                }
                Ok(Err(error)) => Some(error),
                Err(_elapsed) => None,
            };
            self.breaker.record(Outcome::Failure, took, now());
            permit.release(CallOutcome::Failed);
            if made >= s.max_attempts.max(1) || !self.budget.try_withdraw(1, now()) {
                return Err(match error {
                    Some(error) => GuardError::Failed {
                        error,
                        attempts: made,
                    },
                    None => GuardError::TimedOut { attempts: made },
                });
            }
            tokio::time::sleep(backoff.delay(made - 1)).await;
        }
    }

    /// The concurrency limit now.
    pub fn limit(&self) -> usize {
        self.limit.limit()
    }

    /// Calls in flight now.
    pub fn in_flight(&self) -> usize {
        self.limit.in_flight()
    }

    /// Waits up to the queue timeout for a permit. Waiters are served in arrival
    /// order: a freed permit goes to the longest waiter, never to a newcomer.
    async fn permit<E>(&self) -> Result<Permit, GuardError<E>> {
        let waiting = {
            let mut queue = self.lock_queue();
            if queue.is_empty()
                && let Some(permit) = self.limit.try_acquire(now())
            {
                return Ok(permit);
            }
            let (tx, rx) = oneshot::channel();
            queue.push_back(tx);
            rx
        };
        let mut waiting = waiting;
        match tokio::time::timeout(self.settings.queue_timeout, &mut waiting).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => {
                // A permit handed over just as the wait ended is ours: use it.
                waiting.close();
                match waiting.try_recv() {
                    Ok(permit) => Ok(permit),
                    Err(_) => Err(GuardError::Overloaded {
                        limit: self.limit.limit(),
                    }),
                }
            }
        }
    }

    fn lock_queue(&self) -> std::sync::MutexGuard<'_, VecDeque<oneshot::Sender<Permit>>> {
        self.waiters.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands permits to the waiters, oldest first, while the limit allows.
    fn hand_over(&self) {
        let mut queue = self.lock_queue();
        while !queue.is_empty() {
            let Some(permit) = self.limit.try_acquire(now()) else {
                return;
            };
            let waiter = queue.pop_front().expect("not empty");
            if let Err(permit) = waiter.send(permit) {
                // That waiter gave up: the permit goes back.
                self.limit.forget(permit);
            }
        }
    }
}

/// A permit that goes back to the limit however the call ends, and on to the longest
/// waiter: [`release`](Held::release) with the call's outcome, or dropped (the call
/// was never made, or its future was dropped) without one.
struct Held<'a> {
    guard: &'a CallGuard,
    permit: Option<Permit>,
}

impl Held<'_> {
    fn release(mut self, outcome: CallOutcome) {
        if let Some(permit) = self.permit.take() {
            self.guard.limit.release(permit, outcome, now());
            self.guard.hand_over();
        }
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            self.guard.limit.forget(permit);
            self.guard.hand_over();
        }
    }
}

/// Now, on Tokio's clock (so tests with a paused clock control it).
fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicU32;

    fn settings() -> GuardSettings {
        GuardSettings {
            timeout: Duration::from_millis(100),
            max_attempts: 3,
            backoff_base: Duration::from_millis(10),
            backoff_max: Duration::from_millis(50),
            queue_timeout: Duration::from_millis(200),
            budget: BudgetSettings {
                ratio: 0.1,
                min_per_second: 1.0,
                window: Duration::from_secs(10),
            },
            breaker: BreakerSettings {
                window: 10,
                min_calls: 5,
                failure_ratio: 0.5,
                slow_call: Duration::from_secs(10),
                slow_ratio: 1.0,
                open_for: Duration::from_secs(1),
                max_open_for: Duration::from_secs(4),
                probes: 1,
            },
            limit: LimitSettings {
                min: 1,
                max: 4,
                initial: 2,
                ..LimitSettings::default()
            },
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_transient_failure_is_retried_and_a_permanent_one_is_not() {
        let guard = CallGuard::new(settings());
        let tries = AtomicU32::new(0);
        let got = guard
            .call(|| {
                let n = tries.fetch_add(1, Ordering::Relaxed);
                async move { if n == 0 { Err("503") } else { Ok(n) } }
            })
            .await;
        assert_eq!(got, Ok(1));
        assert_eq!(tries.load(Ordering::Relaxed), 2);

        let tries = AtomicU32::new(0);
        let got: Result<(), _> = guard
            .call_classified(
                || {
                    tries.fetch_add(1, Ordering::Relaxed);
                    async { Err("400 bad input") }
                },
                |e| !e.starts_with("400"),
            )
            .await;
        assert_eq!(
            got,
            Err(GuardError::Failed {
                error: "400 bad input",
                attempts: 1
            })
        );
        assert_eq!(tries.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_attempt_times_out_and_attempts_are_bounded() {
        let guard = CallGuard::new(settings());
        let tries = AtomicU32::new(0);
        let started = tokio::time::Instant::now();
        let got: Result<(), GuardError<()>> = guard
            .call(|| {
                tries.fetch_add(1, Ordering::Relaxed);
                async {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    Ok(())
                }
            })
            .await;
        assert_eq!(got, Err(GuardError::TimedOut { attempts: 3 }));
        assert_eq!(tries.load(Ordering::Relaxed), 3);
        assert_eq!(guard.in_flight(), 0);
        assert!(started.elapsed() <= settings().max_call_time());
    }

    #[tokio::test(start_paused = true)]
    async fn the_retry_budget_caps_retries_across_calls() {
        // Floor of 1 retry/s over 10 s = 10 retries, plus 10% of the calls.
        let guard = CallGuard::new(GuardSettings {
            breaker: BreakerSettings {
                min_calls: 1_000,
                window: 1_000,
                ..settings().breaker
            },
            ..settings()
        });
        let tries = AtomicU32::new(0);
        for _ in 0..50 {
            let _ = guard
                .call(|| {
                    tries.fetch_add(1, Ordering::Relaxed);
                    async { Err::<(), _>("down") }
                })
                .await;
        }
        let retries = tries.load(Ordering::Relaxed) - 50;
        // 10 (floor) + 10% of 50 calls = 15 at most.
        assert!(retries <= 15, "{retries} retries");
        assert!(retries >= 10, "{retries} retries");
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_breaker_fails_fast_without_calling() {
        let guard = CallGuard::new(GuardSettings {
            max_attempts: 1,
            ..settings()
        });
        for _ in 0..5 {
            let _ = guard.call(|| async { Err::<(), _>("down") }).await;
        }
        let called = AtomicU32::new(0);
        let got = guard
            .call(|| {
                called.fetch_add(1, Ordering::Relaxed);
                async { Ok::<_, &str>(()) }
            })
            .await;
        assert!(matches!(got, Err(GuardError::Open { .. })), "{got:?}");
        assert_eq!(called.load(Ordering::Relaxed), 0);
        assert_eq!(guard.in_flight(), 0, "a refused call gives its permit back");
        // After the open period a probe goes through and closes it.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(guard.call(|| async { Ok::<_, &str>(7) }).await, Ok(7));
    }

    #[tokio::test(start_paused = true)]
    async fn calls_beyond_the_limit_wait_for_a_permit_or_are_shed() {
        // A fixed limit of 2 (the adaptive steps are tested in `concurrency`).
        let guard = Arc::new(CallGuard::new(GuardSettings {
            timeout: Duration::from_secs(10),
            limit: LimitSettings {
                min: 2,
                max: 2,
                initial: 2,
                ..LimitSettings::default()
            },
            ..settings()
        }));
        let slow = |ms| {
            let guard = guard.clone();
            tokio::spawn(async move {
                guard
                    .call(|| async move {
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                        Ok::<_, &str>(ms)
                    })
                    .await
            })
        };
        // Limit 2: two calls run, a third waits (150 ms < queue timeout 200 ms) and
        // gets the first freed permit; a fourth waits longer than 200 ms and is shed.
        let a = slow(150);
        let b = slow(1_000);
        tokio::task::yield_now().await;
        let c = slow(10);
        let d = slow(10);
        assert_eq!(a.await.unwrap(), Ok(150));
        let (c, d) = (c.await.unwrap(), d.await.unwrap());
        assert_eq!(
            (c, d),
            (Ok(10), Ok(10)),
            "both fit after the first call ended"
        );
        assert_eq!(b.await.unwrap(), Ok(1_000));
        let e = slow(500);
        let f = slow(500);
        tokio::task::yield_now().await;
        let g = slow(10);
        assert!(matches!(
            g.await.unwrap(),
            Err(GuardError::Overloaded { .. })
        ));
        assert_eq!(e.await.unwrap(), Ok(500));
        assert_eq!(f.await.unwrap(), Ok(500));
    }
}
