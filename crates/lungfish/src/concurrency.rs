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
//! The limit stays within `[min, max]`. Two ways to use it:
//! * **Permits**, for calls made one by one: [`AdaptiveLimit::try_acquire`] hands out
//!   permits while fewer than the limit are in flight; a permit reports its call's
//!   latency and outcome when [`released`](AdaptiveLimit::release).
//! * **Measurements**, for a caller that runs a batch of `k` parallel calls itself
//!   (the Postgres sink loading a batch over `k` connections): it reads
//!   [`AdaptiveLimit::limit`] to choose `k <= limit`, and feeds each call's
//!   [`record`](AdaptiveLimit::record)ed latency (which it may normalise, e.g. per
//!   10,000 rows, so that calls of different sizes compare) and outcome.
//!
//! The limit is exported as the gauge `lungfish_concurrency_limit{component}`, the
//! component being the limit's [`named`](AdaptiveLimit::named) user (`enrich:NAME`,
//! `sink:NAME`). Thread-safe; one lock per call (callers call per batch).

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
    /// The first this many successful calls only teach the baseline: however slow, they
    /// are not congestion (failures always are). 0: the first call sets the baseline
    /// and the second may already be judged by it.
    pub warmup: usize,
}

impl Default for LimitSettings {
    /// From 4, between 1 and 64; congestion at 2x the baseline; back off by 10%; no
    /// warm-up.
    fn default() -> Self {
        LimitSettings {
            min: 1,
            max: 64,
            initial: 4,
            tolerance: 2.0,
            backoff: 0.9,
            warmup: 0,
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
///
/// ```
/// use std::time::{Duration, Instant};
/// use lungfish::concurrency::{AdaptiveLimit, CallOutcome, LimitSettings};
///
/// let limit = AdaptiveLimit::new(LimitSettings { initial: 2, ..LimitSettings::default() });
/// let now = Instant::now();
/// let a = limit.try_acquire(now).unwrap();
/// let b = limit.try_acquire(now).unwrap();
/// assert!(limit.try_acquire(now).is_none(), "two in flight at most");
/// limit.release(a, CallOutcome::Ok, now + Duration::from_millis(20));
/// limit.release(b, CallOutcome::Failed, now + Duration::from_millis(20));
/// assert!(limit.limit() >= 1);
/// ```
#[derive(Debug)]
pub struct AdaptiveLimit {
    settings: LimitSettings,
    /// The `component` label of its gauge.
    component: String,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    limit: f64,
    in_flight: usize,
    /// Baseline latency in seconds (0 until the first call).
    baseline: f64,
    /// Successful calls seen (counted up to the warm-up).
    learned: usize,
    last_decrease: Option<Instant>,
}

/// One call in flight; give it back with [`AdaptiveLimit::release`].
#[derive(Debug)]
#[must_use = "release the permit with the call's outcome"]
pub struct Permit {
    started: Instant,
    in_flight_at_start: usize,
}

impl AdaptiveLimit {
    /// A limit starting at `settings.initial` (`min` raised to 1, `max` to `min`,
    /// `initial` clamped between them), reported as component `unnamed` until
    /// [`named`](Self::named).
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
            component: "unnamed".to_owned(),
            inner: Mutex::new(Inner {
                limit: settings.initial as f64,
                in_flight: 0,
                baseline: 0.0,
                learned: 0,
                last_decrease: None,
            }),
        }
    }

    /// The limit, reported as `lungfish_concurrency_limit{component="<component>"}`
    /// (e.g. `enrich:NAME`, `sink:NAME`). Sets no gauge: the limit reports after each
    /// call, or when asked to ([`report`](Self::report)).
    #[must_use]
    pub fn named(mut self, component: impl Into<String>) -> Self {
        self.component = component.into();
        self
    }

    /// Sets the gauge `lungfish_concurrency_limit{component}` to the limit now (done
    /// after every call anyway; for a user that wants the gauge before its first call).
    pub fn report(&self) {
        let limit = self.lock().limit;
        self.publish(limit);
    }

    fn publish(&self, limit: f64) {
        metrics::gauge!("lungfish_concurrency_limit", "component" => self.component.clone())
            .set(limit);
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
        let latency = now.saturating_duration_since(permit.started);
        let mut inner = self.lock();
        inner.in_flight = inner.in_flight.saturating_sub(1);
        self.adapt(&mut inner, latency, permit.in_flight_at_start, outcome, now);
    }

    /// Gives back a permit whose call was never made (something else refused it
    /// first); the limit learns nothing from it.
    pub fn forget(&self, permit: Permit) {
        let Permit { .. } = permit;
        let mut inner = self.lock();
        inner.in_flight = inner.in_flight.saturating_sub(1);
    }

    /// Adapts the limit to one call that a caller ran without a permit: it took
    /// `latency` and ended with `outcome` at `now`, while `in_use` calls (itself
    /// included) ran in parallel. For callers that choose their own parallelism from
    /// [`limit`](Self::limit), e.g. `k` connections for one batch, then record each
    /// call; calls in flight ([`in_flight`](Self::in_flight)) are not counted.
    ///
    /// The latencies only need to compare with each other: a caller whose calls differ
    /// in size may record a latency per unit of work (e.g. per 10,000 rows). As with
    /// permits, the limit grows by `1 / limit` per fast call if `in_use` is at least
    /// half the limit, and is multiplied by `backoff` on a failure or a call slower
    /// than `tolerance x baseline`, at most once per baseline: the calls of one batch,
    /// recorded with the same `now`, decrease it at most once.
    pub fn record(&self, latency: Duration, in_use: usize, outcome: CallOutcome, now: Instant) {
        let mut inner = self.lock();
        self.adapt(&mut inner, latency, in_use, outcome, now);
    }

    /// The AIMD step for one completed call of `latency`, started with `in_use` calls
    /// in flight (itself included).
    fn adapt(
        &self,
        inner: &mut Inner,
        latency: Duration,
        in_use: usize,
        outcome: CallOutcome,
        now: Instant,
    ) {
        let s = &self.settings;
        let latency = latency.as_secs_f64();
        let warm = inner.learned >= s.warmup;
        let congested = outcome == CallOutcome::Failed
            || (warm && inner.baseline > 0.0 && latency > s.tolerance * inner.baseline);
        if outcome == CallOutcome::Ok && !warm {
            inner.learned += 1;
        }
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
            if in_use as f64 >= inner.limit / 2.0 {
                inner.limit = (inner.limit + 1.0 / inner.limit).min(s.max as f64);
            }
        }
        self.publish(inner.limit);
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

    #[test]
    fn recorded_batches_of_parallel_calls_move_the_limit() {
        // A caller running `limit` parallel calls per batch, at most 4.
        let limit = AdaptiveLimit::new(LimitSettings {
            min: 1,
            max: 4,
            initial: 4,
            tolerance: 2.0,
            backoff: 0.5,
            warmup: 0,
        });
        let mut now = Instant::now();
        let batch = |limit: &AdaptiveLimit, now: &mut Instant, latency, outcome| {
            let k = limit.limit();
            *now += latency;
            for _ in 0..k {
                limit.record(latency, k, outcome, *now);
            }
            k
        };
        let fast = Duration::from_millis(50);
        for _ in 0..10 {
            assert_eq!(batch(&limit, &mut now, fast, CallOutcome::Ok), 4);
        }
        assert_eq!(limit.in_flight(), 0, "recording takes no permit");
        // 10x slower: one halving per batch, however many calls it ran.
        let slow = Duration::from_millis(500);
        batch(&limit, &mut now, slow, CallOutcome::Ok);
        assert_eq!(limit.limit(), 2);
        batch(&limit, &mut now, slow, CallOutcome::Ok);
        assert_eq!(limit.limit(), 1);
        batch(&limit, &mut now, slow, CallOutcome::Ok);
        assert_eq!(limit.limit(), 1, "never below min");
        // Fast again: back to the max within a few batches, never above.
        for _ in 0..8 {
            batch(&limit, &mut now, fast, CallOutcome::Ok);
        }
        assert_eq!(limit.limit(), 4);
        // A failed batch halves it too, whatever its latency.
        batch(&limit, &mut now, fast, CallOutcome::Failed);
        assert_eq!(limit.limit(), 2);
    }

    #[test]
    fn a_limit_not_in_use_does_not_grow() {
        let limit = AdaptiveLimit::new(LimitSettings {
            min: 1,
            max: 16,
            initial: 8,
            tolerance: 2.0,
            backoff: 0.5,
            warmup: 0,
        });
        let mut now = Instant::now();
        for _ in 0..100 {
            now += Duration::from_millis(10);
            // One call at a time, well under half the limit.
            limit.record(Duration::from_millis(10), 1, CallOutcome::Ok, now);
        }
        assert_eq!(limit.limit(), 8);
        now += Duration::from_millis(10);
        limit.record(Duration::from_millis(10), 4, CallOutcome::Ok, now);
        assert!(limit.limit() == 8 && limit.lock().limit > 8.0);
    }

    #[test]
    fn warm_up_calls_only_teach_the_baseline() {
        let limit = AdaptiveLimit::new(LimitSettings {
            initial: 8,
            warmup: 3,
            ..LimitSettings::default()
        });
        let mut now = Instant::now();
        let mut call = |latency_ms: u64, outcome| {
            now += Duration::from_secs(1);
            limit.record(Duration::from_millis(latency_ms), 1, outcome, now);
            limit.limit()
        };
        // A failure counts even while warming up, and is no lesson.
        assert_eq!(call(10, CallOutcome::Failed), 7);
        // 10 ms, then 10x and 50x slower: still learning.
        assert_eq!(call(10, CallOutcome::Ok), 7);
        assert_eq!(call(100, CallOutcome::Ok), 7);
        assert_eq!(call(500, CallOutcome::Ok), 7);
        // Warm (baseline about 67 ms): 4x the baseline is congestion now.
        assert_eq!(call(300, CallOutcome::Ok), 6);
    }

    #[test]
    fn settings_are_clamped_and_the_gauge_is_labelled_by_component() {
        let limit = AdaptiveLimit::new(LimitSettings {
            min: 0,
            max: 3,
            initial: 10,
            ..LimitSettings::default()
        });
        assert_eq!(limit.component, "unnamed");
        assert_eq!((limit.settings.min, limit.settings.initial), (1, 3));
        assert_eq!(limit.limit(), 3);

        let recorder = gauges::Recorder::default();
        metrics::with_local_recorder(&recorder, || {
            let limit = limit.named("sink:pg");
            assert_eq!(limit.component, "sink:pg");
            limit.report();
            let now = Instant::now();
            limit.record(Duration::from_millis(5), 3, CallOutcome::Failed, now);
        });
        let seen = recorder.values();
        assert_eq!(
            seen,
            vec![
                (
                    "lungfish_concurrency_limit{component=sink:pg}".to_owned(),
                    3.0
                ),
                (
                    "lungfish_concurrency_limit{component=sink:pg}".to_owned(),
                    2.7
                ),
            ]
        );
    }

    /// A recorder keeping every value set on a gauge, as `name{label=value}`.
    mod gauges {
        use std::sync::{Arc, Mutex};

        use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, SharedString, Unit};

        type Values = Arc<Mutex<Vec<(String, f64)>>>;

        #[derive(Default)]
        pub struct Recorder(Values);

        impl Recorder {
            pub fn values(&self) -> Vec<(String, f64)> {
                self.0.lock().unwrap().clone()
            }
        }

        struct Slot(String, Values);

        impl metrics::GaugeFn for Slot {
            fn increment(&self, _: f64) {}
            fn decrement(&self, _: f64) {}
            fn set(&self, value: f64) {
                self.1.lock().unwrap().push((self.0.clone(), value));
            }
        }

        impl metrics::Recorder for Recorder {
            fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
            fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
            fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
            fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
                Counter::noop()
            }
            fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
                let labels: Vec<String> = key
                    .labels()
                    .map(|l| format!("{}={}", l.key(), l.value()))
                    .collect();
                let name = format!("{}{{{}}}", key.name(), labels.join(","));
                Gauge::from_arc(Arc::new(Slot(name, self.0.clone())))
            }
            fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
                Histogram::noop()
            }
        }
    }
}
