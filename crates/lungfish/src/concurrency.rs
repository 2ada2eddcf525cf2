//! An adaptive concurrency limit: as many calls in flight as the service answers
//! quickly, fewer as soon as it slows down or fails.
//!
//! [`AdaptiveLimit`] follows AIMD on latency, as Netflix's concurrency-limits library
//! does: it keeps a slow-moving *baseline* of the call latency (an exponentially
//! weighted average that only follows fast calls closely) and, per completed call,
//! * on a failure, or a latency above `tolerance x baseline`, multiplies the limit by
//!   `backoff` (e.g. 0.9) at most once per baseline latency, so one slow burst is one
//!   decrease (the baseline follows such slow calls only by 0.1% each, so a service
//!   that stays slow for hundreds of calls becomes the new normal);
//! * otherwise, if the limit was in use (at least half of it in flight), adds
//!   `1 / limit`, so the limit grows by about one per round trip.
//!
//! The limit stays within `[min, max]`. [`AdaptiveLimit::try_acquire`] hands out
//! permits while fewer than the limit are in flight; a permit reports its call's
//! outcome when [`released`](Permit::release). Thread-safe; one lock per call (callers
//! call per batch).

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How an [`AdaptiveLimit`] moves.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LimitSettings {
    /// The limit never goes below this (>= 1).
    pub min: usize,
    /// ... nor above this.
    pub max: usize,
    /// The limit to start from.
    pub initial: usize,
    /// A call slower than this multiple of the baseline counts as congestion.
    pub tolerance: f64,
    /// Factor applied to the limit on congestion, in `(0, 1)`.
    pub backoff: f64,
}

impl Default for LimitSettings {
    /// From 4, between 1 and 64; congestion at 2x the baseline; back off by 10%.
    fn default() -> Self {
        LimitSettings {
            min: 1,
            max: 64,
            initial: 4,
            tolerance: 2.0,
            backoff: 0.9,
        }
    }
}

/// How a call ended, for the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallOutcome {
    /// Answered (whatever the answer, if the service was well).
    Ok,
    /// Failed, timed out or was refused: a sign of overload.
    Failed,
}

/// An adaptive concurrency limit.
#[derive(Debug)]
pub struct AdaptiveLimit {
    settings: LimitSettings,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    limit: f64,
    in_flight: usize,
    /// Baseline latency in seconds (0 until the first call).
    baseline: f64,
    last_decrease: Option<Instant>,
}

/// One call in flight; give it back with [`release`](Self::release).
#[derive(Debug)]
#[must_use = "release the permit with the call's outcome"]
pub struct Permit {
    started: Instant,
    in_flight_at_start: usize,
}

impl AdaptiveLimit {
    /// A limit starting at `settings.initial`.
    pub fn new(settings: LimitSettings) -> Self {
        let min = settings.min.max(1);
        let max = settings.max.max(min);
        let settings = LimitSettings {
            min,
            max,
            initial: settings.initial.clamp(min, max),
            ..settings
        };
        AdaptiveLimit {
            settings,
            inner: Mutex::new(Inner {
                limit: settings.initial as f64,
                in_flight: 0,
                baseline: 0.0,
                last_decrease: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current limit (a metric worth exporting).
    pub fn limit(&self) -> usize {
        self.lock().limit as usize
    }

    /// Calls in flight.
    pub fn in_flight(&self) -> usize {
        self.lock().in_flight
    }

    /// A permit if fewer than the limit are in flight.
    pub fn try_acquire(&self, now: Instant) -> Option<Permit> {
        let mut inner = self.lock();
        if inner.in_flight < inner.limit as usize {
            inner.in_flight += 1;
            Some(Permit {
                started: now,
                in_flight_at_start: inner.in_flight,
            })
        } else {
            None
        }
    }

    /// Ends the call of `permit` with `outcome` at `now`, and adapts the limit.
    pub fn release(&self, permit: Permit, outcome: CallOutcome, now: Instant) {
        let s = &self.settings;
        let latency = now.saturating_duration_since(permit.started).as_secs_f64();
        let mut inner = self.lock();
        inner.in_flight = inner.in_flight.saturating_sub(1);
        let congested = outcome == CallOutcome::Failed
            || (inner.baseline > 0.0 && latency > s.tolerance * inner.baseline);
        if congested {
            // One decrease per baseline round trip.
            let gap = Duration::from_secs_f64(inner.baseline.max(0.001));
            if inner
                .last_decrease
                .is_none_or(|t| now.saturating_duration_since(t) >= gap)
            {
                inner.limit = (inner.limit * s.backoff).max(s.min as f64);
                inner.last_decrease = Some(now);
            }
            // The baseline follows slow calls very slowly: a service that stays slow
            // for hundreds of calls becomes the new normal, a slow burst does not.
            if outcome == CallOutcome::Ok {
                inner.baseline += (latency - inner.baseline) * 0.001;
            }
        } else {
            inner.baseline = if inner.baseline == 0.0 {
                latency
            } else {
                inner.baseline + (latency - inner.baseline) * 0.1
            };
            if permit.in_flight_at_start as f64 >= inner.limit / 2.0 {
                inner.limit = (inner.limit + 1.0 / inner.limit).min(s.max as f64);
            }
        }
        metrics::gauge!("lungfish_concurrency_limit").set(inner.limit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `rounds` round trips of a service answering in `latency` with as many calls
    /// in flight as the limit allows.
    fn drive(limit: &AdaptiveLimit, now: &mut Instant, latency: Duration, rounds: usize) {
        for _ in 0..rounds {
            let mut permits = Vec::new();
            while let Some(p) = limit.try_acquire(*now) {
                permits.push(p);
            }
            *now += latency;
            for p in permits {
                limit.release(p, CallOutcome::Ok, *now);
            }
        }
    }

    #[test]
    fn the_limit_grows_while_fast_and_drops_when_the_partner_slows() {
        let limit = AdaptiveLimit::new(LimitSettings::default());
        let mut now = Instant::now();
        // 40 ms answers: the limit climbs towards its max.
        drive(&limit, &mut now, Duration::from_millis(40), 200);
        let fast = limit.limit();
        assert!(fast >= 32, "grew to {fast}");
        // The partner slows from 40 ms to 800 ms: the limit falls.
        drive(&limit, &mut now, Duration::from_millis(800), 20);
        let slow = limit.limit();
        assert!(slow <= fast / 4, "{fast} -> {slow}");
        assert!(slow >= 1);
        // Failures push it to its floor, never below.
        for _ in 0..100 {
            let p = limit.try_acquire(now).unwrap();
            now += Duration::from_millis(900);
            limit.release(p, CallOutcome::Failed, now);
        }
        assert_eq!(limit.limit(), 1);
        // Healed: it grows again.
        drive(&limit, &mut now, Duration::from_millis(40), 300);
        assert!(limit.limit() > 8, "recovered to {}", limit.limit());
    }

    #[test]
    fn permits_are_bounded_by_the_limit() {
        let limit = AdaptiveLimit::new(LimitSettings {
            initial: 3,
            ..LimitSettings::default()
        });
        let now = Instant::now();
        let permits: Vec<_> = (0..10).filter_map(|_| limit.try_acquire(now)).collect();
        assert_eq!(permits.len(), 3);
        assert_eq!(limit.in_flight(), 3);
        for p in permits {
            limit.release(p, CallOutcome::Ok, now + Duration::from_millis(5));
        }
        assert_eq!(limit.in_flight(), 0);
    }
}
