//! The enrichment client: numeric fields per event key from an outside HTTP service,
//! cached, and called so that a slow or failing service slows nothing else down.
//!
//! An enrichment service answers, for a key, a JSON object of fields. [`EnrichClient`]
//! is asked once per micro-batch with the batch's keys ([`EnrichClient::lookup`]) and
//! answers one [`Lookup`] per key:
//!
//! * **Cache first.** Found and not-found answers are kept (a [`moka`] cache bounded in
//!   entries, each entry living `cache_ttl`); a key asked twice in a batch is looked up
//!   once. Unavailable answers are never cached, so the next batch asks again.
//! * **Bounded calls.** Missed keys are fetched by at most `limit.max` worker threads of
//!   the calling batch, each call holding a permit of an [`AdaptiveLimit`]: as many calls
//!   in flight as the service answers quickly, fewer as soon as it slows down or fails.
//!   A worker with no permit waits on a condition variable (woken when a call ends, and
//!   every few milliseconds at worst), never spinning.
//! * **Whole-call timeout.** Each call, connection to last byte, is bounded by `timeout`.
//! * **Circuit breaker.** Every call goes through a [`CircuitBreaker`], told each call's
//!   duration so slow calls count. While it is open, missed keys come back
//!   [`Lookup::Unavailable`] at once, with no call made; keys in the cache still come
//!   back as cached.
//! * **Retries within a budget.** A call that failed in a way that may pass (a timeout,
//!   a refused or broken connection, a 5xx, 408 or 429) is retried once, after a
//!   full-jitter [`Backoff`], if the [`RetryBudget`] allows it; otherwise its keys are
//!   unavailable.
//!
//! The protocol, by [`Method`]:
//! * `Get`: `GET {url}?key=<percent-encoded key>`, one call per key. `200` with a JSON
//!   object `{"field": number, ...}` is found (other members are ignored), `404` is not
//!   found, anything else a failure.
//! * `Post`: `POST {url}` with `{"keys": ["k1", "k2", ...]}` for up to `batch_keys` keys
//!   per call. `200` with a JSON object mapping each key to an object of fields (`null`
//!   or absent: not found); anything else a failure. Keys that are not UTF-8 are sent
//!   (and matched) with invalid bytes replaced by U+FFFD.
//!
//! How a call ends, for the breaker, the limit and retries:
//!
//! | answer | keys | breaker | limit | retried |
//! |---|---|---|---|---|
//! | 200 (parsed), 404 | found / not found | success | ok (congestion if slower than `slow_call`) | no |
//! | timeout, connection error, 5xx, 408, 429 | unavailable | failure | congestion | once, within the budget |
//! | 200 that does not parse, 1xx, 3xx | unavailable | failure | ok | no |
//! | other 4xx (the service refuses what we ask) | unavailable | success | ok | no |
//!
//! Metrics (label `operator`, the client's name): `lungfish_enrich_cache_hits_total`,
//! `lungfish_enrich_cache_misses_total`, `lungfish_enrich_calls_total{outcome}` (outcome
//! `ok`, `failed`, `bad_answer`, `refused`, or `circuit_open` for a call not made),
//! `lungfish_enrich_retries_total`, and the gauges `lungfish_enrich_concurrency_limit`
//! and `lungfish_enrich_breaker_state` (0 closed, 1 half-open, 2 open). Reported once
//! per [`lookup`](EnrichClient::lookup). The limit itself also reports, per call, as
//! `lungfish_concurrency_limit{component="enrich:NAME"}`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use moka::sync::Cache;

use crate::breaker::{BreakerSettings, BreakerState, CircuitBreaker, Outcome};
use crate::concurrency::{AdaptiveLimit, CallOutcome, LimitSettings, Permit};
use crate::retry::{Backoff, BudgetSettings, RetryBudget};

/// Largest answer body read (a `POST` answer for many keys may be large).
const MAX_BODY: u64 = 16 * 1024 * 1024;

/// Longest wait for a free permit before trying again (a safety net: a call's end
/// wakes the waiters at once).
const PERMIT_WAIT: Duration = Duration::from_millis(10);

/// How the client asks the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `GET {url}?key=<percent-encoded key>`, one call per key.
    Get,
    /// `POST {url}` with `{"keys": [...]}`, up to `batch_keys` keys per call.
    Post,
}

/// How an [`EnrichClient`] calls its service.
#[derive(Debug, Clone, PartialEq)]
pub struct EnrichSettings {
    /// The service's address, `http://host:port/path` (plain HTTP only).
    pub url: String,
    /// One call per key ([`Method::Get`]) or per group of keys ([`Method::Post`]).
    pub method: Method,
    /// Numeric fields taken from each answer, in this order (at least one).
    pub fields: Vec<String>,
    /// Keys per `POST` call (>= 1).
    pub batch_keys: usize,
    /// Longest duration of one call, connection to last byte (> 0).
    pub timeout: Duration,
    /// Answers kept in the cache (entries).
    pub cache_size: u64,
    /// How long a cached answer is used (> 0).
    pub cache_ttl: Duration,
    /// Bounds of the adaptive concurrency limit; `limit.max` also bounds the worker
    /// threads of one lookup.
    pub limit: LimitSettings,
    /// When the circuit breaker opens and closes; its `slow_call` also decides which
    /// answers count as congestion for the limit.
    pub breaker: BreakerSettings,
    /// How many retries may be made (at most one per failed call).
    pub retry: BudgetSettings,
}

impl Default for EnrichSettings {
    /// No URL and no fields (both must be set); `GET`; 100 keys per `POST`; 1 s per
    /// call; 100,000 cached answers for 60 s; the default limit, breaker and budget.
    fn default() -> Self {
        EnrichSettings {
            url: String::new(),
            method: Method::Get,
            fields: Vec::new(),
            batch_keys: 100,
            timeout: Duration::from_secs(1),
            cache_size: 100_000,
            cache_ttl: Duration::from_secs(60),
            limit: LimitSettings::default(),
            breaker: BreakerSettings::default(),
            retry: BudgetSettings::default(),
        }
    }
}

/// Settings an [`EnrichClient`] cannot work with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("enrichment {name}: {reason}")]
pub struct EnrichError {
    /// The client's name.
    pub name: String,
    /// What is wrong.
    pub reason: String,
}

/// The answer for one key.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    /// The service knows the key: one value per configured field, in their order; NaN
    /// where the answer lacks the field or it is not a number.
    Found(Box<[f64]>),
    /// The service says it has nothing for the key (`GET`: 404; `POST`: the key is
    /// absent from the answer, or `null`).
    NotFound,
    /// No answer now (timeout, 5xx, connection refused, circuit open, bad answer...):
    /// the reason, for logs. Not cached; a later lookup asks again.
    Unavailable(String),
}

/// Counters of an [`EnrichClient`] since it was made, and its state now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EnrichStats {
    /// Distinct keys of a lookup answered from the cache.
    pub hits: u64,
    /// Distinct keys of a lookup not in the cache.
    pub misses: u64,
    /// Calls made to the service, retries included.
    pub calls: u64,
    /// Calls that did not bring an answer (any outcome but 200 parsed or 404).
    pub failures: u64,
    /// Retries made (each also counted in `calls`).
    pub retries: u64,
    /// Calls not made because the breaker was open.
    pub rejected: u64,
    /// The concurrency limit now.
    pub limit: usize,
    /// The breaker's state now.
    pub breaker: BreakerState,
}

/// A client of one enrichment service: cache, adaptive concurrency limit, circuit
/// breaker and retry budget. Thread-safe (`&self` everywhere); meant to be shared by
/// the stages that need it.
pub struct EnrichClient {
    name: String,
    settings: EnrichSettings,
    agent: ureq::Agent,
    /// Key -> its fields (found) or `None` (not found).
    cache: Cache<Box<[u8]>, Option<Box<[f64]>>>,
    limit: AdaptiveLimit,
    /// Waited on by workers with no permit; notified when a permit is released.
    permit_freed: (Mutex<()>, Condvar),
    breaker: CircuitBreaker,
    budget: RetryBudget,
    backoff: Mutex<Backoff>,
    hits: AtomicU64,
    misses: AtomicU64,
    calls: AtomicU64,
    failures: AtomicU64,
    retries: AtomicU64,
    rejected: AtomicU64,
}

impl std::fmt::Debug for EnrichClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrichClient")
            .field("name", &self.name)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// Calls made, by outcome (the `outcome` label of `lungfish_enrich_calls_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CallKind {
    Ok,
    Failed,
    BadAnswer,
    Refused,
    CircuitOpen,
}

impl CallKind {
    const ALL: [CallKind; 5] = [
        CallKind::Ok,
        CallKind::Failed,
        CallKind::BadAnswer,
        CallKind::Refused,
        CallKind::CircuitOpen,
    ];

    fn label(self) -> &'static str {
        match self {
            CallKind::Ok => "ok",
            CallKind::Failed => "failed",
            CallKind::BadAnswer => "bad_answer",
            CallKind::Refused => "refused",
            CallKind::CircuitOpen => "circuit_open",
        }
    }
}

/// What one lookup's workers counted, reported once at its end.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    calls: [u64; 5],
    retries: u64,
}

impl Tally {
    fn add(&mut self, other: &Tally) {
        for (a, b) in self.calls.iter_mut().zip(other.calls) {
            *a += b;
        }
        self.retries += other.retries;
    }
}

/// A call that brought no answer.
#[derive(Debug)]
struct CallError {
    kind: CallKind,
    reason: String,
}

impl CallError {
    fn new(kind: CallKind, reason: String) -> Self {
        CallError { kind, reason }
    }

    /// May the same call pass if made again (and does it say the service is unwell)?
    fn transient(&self) -> bool {
        self.kind == CallKind::Failed
    }
}

impl EnrichClient {
    /// A client named `name` (the `operator` label of its metrics) for the service of
    /// `settings`. Makes no call.
    ///
    /// # Errors
    /// The URL is not `http://...`, there are no fields, `batch_keys` is 0, or
    /// `timeout` or `cache_ttl` is zero.
    pub fn new(name: &str, settings: EnrichSettings) -> Result<Self, EnrichError> {
        let invalid = |reason: &str| EnrichError {
            name: name.to_owned(),
            reason: reason.to_owned(),
        };
        let rest = settings
            .url
            .strip_prefix("http://")
            .ok_or_else(|| invalid("url must start with http:// (plain HTTP only)"))?;
        if rest.is_empty() || rest.starts_with('/') {
            return Err(invalid("url has no host"));
        }
        if settings.fields.is_empty() {
            return Err(invalid("no fields to take from the answers"));
        }
        if settings.batch_keys == 0 {
            return Err(invalid("batch_keys must be at least 1"));
        }
        if settings.timeout.is_zero() {
            return Err(invalid("timeout must be above zero"));
        }
        if settings.cache_ttl.is_zero() || settings.cache_ttl > Duration::from_secs(86_400 * 365) {
            return Err(invalid("cache_ttl must be above zero and at most a year"));
        }
        let pool = settings.limit.max.max(1);
        let agent_config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(settings.timeout))
            .max_idle_connections(pool)
            .max_idle_connections_per_host(pool)
            .max_idle_age(Duration::from_secs(5))
            .user_agent("lungfish")
            .build();
        let cache = Cache::builder()
            .max_capacity(settings.cache_size)
            .time_to_live(settings.cache_ttl)
            .build();
        let seed = xxhash_rust::xxh3::xxh3_64(name.as_bytes())
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
        let base =
            (settings.timeout / 10).clamp(Duration::from_millis(1), Duration::from_millis(100));
        Ok(EnrichClient {
            name: name.to_owned(),
            agent: ureq::Agent::new_with_config(agent_config),
            cache,
            limit: AdaptiveLimit::new(settings.limit).named(format!("enrich:{name}")),
            permit_freed: (Mutex::new(()), Condvar::new()),
            breaker: CircuitBreaker::new(settings.breaker),
            budget: RetryBudget::new(settings.retry),
            backoff: Mutex::new(Backoff::new(base, base, seed)),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            calls: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            settings,
        })
    }

    /// The client's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The settings it was made with.
    pub fn settings(&self) -> &EnrichSettings {
        &self.settings
    }

    /// Looks up `keys`, replacing the contents of `out` with one [`Lookup`] per key:
    /// `out[i]` answers `keys[i]`.
    ///
    /// Keys may repeat; each distinct key is looked up once. Cached answers come first;
    /// the others are fetched with at most the concurrency limit's calls in flight (and
    /// at most `limit.max` threads), each call bounded by the timeout and allowed by the
    /// breaker. Returns when every key has its answer: at worst after about two timeouts
    /// and a backoff per call, as calls queued behind the limit wait their turn.
    /// Never fails as a whole: what could not be fetched is [`Lookup::Unavailable`].
    pub fn lookup(&self, keys: &[&[u8]], out: &mut Vec<Lookup>) {
        out.clear();
        if keys.is_empty() {
            return;
        }
        // Distinct keys, and for each key the index of its distinct key.
        let mut index: HashMap<&[u8], usize> = HashMap::with_capacity(keys.len());
        let mut distinct: Vec<&[u8]> = Vec::with_capacity(keys.len());
        let mut slot_of: Vec<usize> = Vec::with_capacity(keys.len());
        for &key in keys {
            let slot = *index.entry(key).or_insert_with(|| {
                distinct.push(key);
                distinct.len() - 1
            });
            slot_of.push(slot);
        }
        drop(index);

        let mut answers: Vec<Option<Lookup>> = vec![None; distinct.len()];
        let mut missed: Vec<usize> = Vec::new();
        for (i, key) in distinct.iter().enumerate() {
            match self.cache.get(*key) {
                Some(Some(fields)) => answers[i] = Some(Lookup::Found(fields)),
                Some(None) => answers[i] = Some(Lookup::NotFound),
                None => missed.push(i),
            }
        }
        let hits = (distinct.len() - missed.len()) as u64;
        let misses = missed.len() as u64;
        self.hits.fetch_add(hits, Ordering::Relaxed);
        self.misses.fetch_add(misses, Ordering::Relaxed);

        let mut tally = Tally::default();
        if !missed.is_empty() {
            self.fetch(&distinct, &missed, &mut answers, &mut tally);
        }

        // Each answer is cloned for all but the last of its keys, and moved there.
        let mut left = vec![0u32; distinct.len()];
        for &slot in &slot_of {
            left[slot] += 1;
        }
        out.reserve(keys.len());
        for slot in slot_of {
            left[slot] -= 1;
            let answer = if left[slot] == 0 {
                answers[slot].take()
            } else {
                answers[slot].clone()
            };
            out.push(
                answer.unwrap_or_else(|| Lookup::Unavailable("no answer (internal)".to_owned())),
            );
        }
        self.report(hits, misses, &tally);
    }

    /// The client's counters and state now.
    pub fn stats(&self) -> EnrichStats {
        EnrichStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            calls: self.calls.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            limit: self.limit.limit(),
            breaker: self.breaker.state(Instant::now()),
        }
    }

    fn report(&self, hits: u64, misses: u64, tally: &Tally) {
        let name = &self.name;
        metrics::counter!("lungfish_enrich_cache_hits_total", "operator" => name.clone())
            .increment(hits);
        metrics::counter!("lungfish_enrich_cache_misses_total", "operator" => name.clone())
            .increment(misses);
        for kind in CallKind::ALL {
            let n = tally.calls[kind as usize];
            if n > 0 {
                metrics::counter!("lungfish_enrich_calls_total", "operator" => name.clone(), "outcome" => kind.label())
                    .increment(n);
            }
        }
        if tally.retries > 0 {
            metrics::counter!("lungfish_enrich_retries_total", "operator" => name.clone())
                .increment(tally.retries);
        }
        metrics::gauge!("lungfish_enrich_concurrency_limit", "operator" => name.clone())
            .set(self.limit.limit() as f64);
        metrics::gauge!("lungfish_enrich_breaker_state", "operator" => name.clone())
            .set(self.breaker.state(Instant::now()).as_gauge());
    }

    /// Fetches the distinct keys `missed` (indexes into `distinct`), writing their
    /// answers into `answers` and the cache.
    fn fetch(
        &self,
        distinct: &[&[u8]],
        missed: &[usize],
        answers: &mut [Option<Lookup>],
        tally: &mut Tally,
    ) {
        // Work items: groups of keys, one call each.
        let per_call = match self.settings.method {
            Method::Get => 1,
            Method::Post => self.settings.batch_keys,
        };
        // The breaker is open: no call, no thread.
        if let BreakerState::Open { until } = self.breaker.state(Instant::now()) {
            let reason = format!(
                "circuit open (next try in {:?})",
                until.saturating_duration_since(Instant::now())
            );
            for &i in missed {
                answers[i] = Some(Lookup::Unavailable(reason.clone()));
            }
            let not_made = missed.len().div_ceil(per_call) as u64;
            tally.calls[CallKind::CircuitOpen as usize] += not_made;
            self.rejected.fetch_add(not_made, Ordering::Relaxed);
            return;
        }
        let items: Vec<&[usize]> = missed.chunks(per_call).collect();
        // Enough threads for the limit to grow while the batch runs, never over its max.
        let threads = items
            .len()
            .min(self.settings.limit.max.max(1))
            .min(self.limit.limit().max(1) * 2);
        let next = AtomicUsize::new(0);
        let work = |results: &mut Vec<(usize, Lookup)>, tally: &mut Tally| {
            let mut scratch = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let Some(item) = items.get(n) else { break };
                self.run(distinct, item, &mut scratch, results, tally);
            }
        };
        let mut results: Vec<(usize, Lookup)> = Vec::with_capacity(missed.len());
        if threads <= 1 {
            work(&mut results, tally);
        } else {
            std::thread::scope(|scope| {
                let handles: Vec<_> = (1..threads)
                    .map(|_| {
                        scope.spawn(|| {
                            let mut results = Vec::new();
                            let mut tally = Tally::default();
                            work(&mut results, &mut tally);
                            (results, tally)
                        })
                    })
                    .collect();
                // The calling thread works too.
                work(&mut results, tally);
                for handle in handles {
                    match handle.join() {
                        Ok((more, their_tally)) => {
                            results.extend(more);
                            tally.add(&their_tally);
                        }
                        Err(panic) => std::panic::resume_unwind(panic),
                    }
                }
            });
        }
        for (i, answer) in results {
            answers[i] = Some(answer);
        }
    }

    /// One work item: a call for the keys `item` (indexes into `distinct`), retried at
    /// most once; pushes one answer per key to `results`.
    fn run(
        &self,
        distinct: &[&[u8]],
        item: &[usize],
        scratch: &mut Vec<u8>,
        results: &mut Vec<(usize, Lookup)>,
        tally: &mut Tally,
    ) {
        let unavailable = |results: &mut Vec<(usize, Lookup)>, reason: String| {
            results.extend(
                item.iter()
                    .map(|&i| (i, Lookup::Unavailable(reason.clone()))),
            );
        };
        // The failure of the first attempt, once it failed and is being retried.
        let mut first: Option<CallError> = None;
        loop {
            if let Err(rejected) = self.breaker.try_call(Instant::now()) {
                tally.calls[CallKind::CircuitOpen as usize] += 1;
                self.rejected.fetch_add(1, Ordering::Relaxed);
                let open = format!("circuit open (next try in {:?})", rejected.retry_in);
                let reason = match &first {
                    Some(e) => format!("{}; not retried: {open}", e.reason),
                    None => open,
                };
                return unavailable(results, reason);
            }
            let permit = self.acquire();
            if first.is_none() {
                self.budget.deposit(1, Instant::now());
            } else {
                tally.retries += 1;
                self.retries.fetch_add(1, Ordering::Relaxed);
            }
            let started = Instant::now();
            let answer = self.call(distinct, item, scratch);
            let ended = Instant::now();
            let took = ended.saturating_duration_since(started);
            let slow = took >= self.settings.breaker.slow_call;
            let kind = match &answer {
                Ok(()) => CallKind::Ok,
                Err(e) => e.kind,
            };
            let congested = kind == CallKind::Failed || slow;
            self.release(
                permit,
                if congested {
                    CallOutcome::Failed
                } else {
                    CallOutcome::Ok
                },
                ended,
            );
            self.breaker.record(
                match kind {
                    CallKind::Ok | CallKind::Refused => Outcome::Success,
                    _ => Outcome::Failure,
                },
                took,
                ended,
            );
            tally.calls[kind as usize] += 1;
            self.calls.fetch_add(1, Ordering::Relaxed);
            let error = match answer {
                Ok(()) => return self.answer(distinct, item, scratch, results),
                Err(e) => e,
            };
            self.failures.fetch_add(1, Ordering::Relaxed);
            if !error.transient() || first.is_some() {
                return unavailable(results, error.reason);
            }
            // Retry once: not into an open breaker, and only within the budget.
            if let BreakerState::Open { .. } = self.breaker.state(Instant::now()) {
                return unavailable(
                    results,
                    format!("{}; not retried: circuit open", error.reason),
                );
            }
            if !self.budget.try_withdraw(1, Instant::now()) {
                return unavailable(
                    results,
                    format!("{}; not retried: retry budget spent", error.reason),
                );
            }
            let wait = self
                .backoff
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .delay(0);
            std::thread::sleep(wait);
            first = Some(error);
        }
    }

    /// A permit of the limit, waiting (on the condition variable, never spinning) until
    /// one is free.
    fn acquire(&self) -> Permit {
        let (lock, freed) = &self.permit_freed;
        loop {
            if let Some(permit) = self.limit.try_acquire(Instant::now()) {
                return permit;
            }
            let guard = lock.lock().unwrap_or_else(|e| e.into_inner());
            // Again under the lock: a release between the first try and here notifies
            // only after this thread waits.
            if let Some(permit) = self.limit.try_acquire(Instant::now()) {
                return permit;
            }
            let _ = freed
                .wait_timeout(guard, PERMIT_WAIT)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    fn release(&self, permit: Permit, outcome: CallOutcome, now: Instant) {
        self.limit.release(permit, outcome, now);
        let (lock, freed) = &self.permit_freed;
        let _guard = lock.lock().unwrap_or_else(|e| e.into_inner());
        freed.notify_all();
    }

    /// Makes the call for `item`; on success leaves the answer's body in `scratch`.
    fn call(
        &self,
        distinct: &[&[u8]],
        item: &[usize],
        scratch: &mut Vec<u8>,
    ) -> Result<(), CallError> {
        let url = &self.settings.url;
        let response = match self.settings.method {
            Method::Get => {
                let key = distinct[item[0]];
                let mut target = String::with_capacity(url.len() + 5 + key.len() * 3);
                target.push_str(url);
                target.push(if url.contains('?') { '&' } else { '?' });
                target.push_str("key=");
                percent_encode(key, &mut target);
                self.agent.get(&target).call()
            }
            Method::Post => {
                scratch.clear();
                scratch.extend_from_slice(b"{\"keys\":[");
                for (n, &i) in item.iter().enumerate() {
                    if n > 0 {
                        scratch.push(b',');
                    }
                    let key = String::from_utf8_lossy(distinct[i]);
                    // Writing a string to a Vec cannot fail.
                    let _ = serde_json::to_writer(&mut *scratch, key.as_ref());
                }
                scratch.extend_from_slice(b"]}");
                self.agent
                    .post(url)
                    .content_type("application/json")
                    .send(&scratch[..])
            }
        };
        let mut response = response.map_err(|e| request_error(&e))?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_BODY)
            .read_to_vec();
        match status {
            200 => {
                *scratch = body.map_err(|e| request_error(&e))?;
                Ok(())
            }
            // Not found: an answer, as good as a 200 (the body is of no interest).
            404 if self.settings.method == Method::Get => {
                scratch.clear();
                Ok(())
            }
            s if s >= 500 || s == 408 || s == 429 => {
                Err(CallError::new(CallKind::Failed, format!("HTTP {s}")))
            }
            s if (400..500).contains(&s) => {
                Err(CallError::new(CallKind::Refused, format!("HTTP {s}")))
            }
            s => Err(CallError::new(
                CallKind::BadAnswer,
                format!("bad answer: HTTP {s}"),
            )),
        }
    }

    /// Turns the answer of a successful call (its body in `scratch`; empty for a `GET`
    /// 404) into one result per key of `item`, caching found and not-found ones.
    fn answer(
        &self,
        distinct: &[&[u8]],
        item: &[usize],
        scratch: &[u8],
        results: &mut Vec<(usize, Lookup)>,
    ) {
        let bad = |reason: String| Lookup::Unavailable(format!("bad answer: {reason}"));
        match self.settings.method {
            Method::Get => {
                let i = item[0];
                if scratch.is_empty() {
                    self.cache.insert(distinct[i].into(), None);
                    results.push((i, Lookup::NotFound));
                    return;
                }
                let lookup = match serde_json::from_slice::<serde_json::Value>(scratch) {
                    Ok(serde_json::Value::Object(fields)) => {
                        let values = self.values(&fields);
                        self.cache.insert(distinct[i].into(), Some(values.clone()));
                        Lookup::Found(values)
                    }
                    Ok(_) => bad("not a JSON object".to_owned()),
                    Err(e) => bad(e.to_string()),
                };
                results.push((i, lookup));
            }
            Method::Post => {
                let map = match serde_json::from_slice::<serde_json::Value>(scratch) {
                    Ok(serde_json::Value::Object(map)) => map,
                    Ok(_) => {
                        let reason = "not a JSON object".to_owned();
                        results.extend(item.iter().map(|&i| (i, bad(reason.clone()))));
                        return;
                    }
                    Err(e) => {
                        let reason = e.to_string();
                        results.extend(item.iter().map(|&i| (i, bad(reason.clone()))));
                        return;
                    }
                };
                for &i in item {
                    let key = String::from_utf8_lossy(distinct[i]);
                    let lookup = match map.get(key.as_ref()) {
                        None | Some(serde_json::Value::Null) => {
                            self.cache.insert(distinct[i].into(), None);
                            Lookup::NotFound
                        }
                        Some(serde_json::Value::Object(fields)) => {
                            let values = self.values(fields);
                            self.cache.insert(distinct[i].into(), Some(values.clone()));
                            Lookup::Found(values)
                        }
                        Some(_) => bad(format!("the value of key {key:?} is not an object")),
                    };
                    results.push((i, lookup));
                }
            }
        }
    }

    /// The configured fields of one answer, NaN where missing or not a number.
    fn values(&self, fields: &serde_json::Map<String, serde_json::Value>) -> Box<[f64]> {
        self.settings
            .fields
            .iter()
            .map(|f| {
                fields
                    .get(f)
                    .and_then(serde_json::Value::as_f64)
                    .unwrap_or(f64::NAN)
            })
            .collect()
    }
}

/// The reason for a call that got no (complete) answer.
fn request_error(e: &ureq::Error) -> CallError {
    match e {
        ureq::Error::Timeout(_) => CallError::new(CallKind::Failed, format!("timeout: {e}")),
        ureq::Error::Io(_)
        | ureq::Error::ConnectionFailed
        | ureq::Error::HostNotFound
        | ureq::Error::Protocol(_) => CallError::new(CallKind::Failed, format!("connection: {e}")),
        ureq::Error::BodyExceedsLimit(_) => {
            CallError::new(CallKind::BadAnswer, format!("bad answer: {e}"))
        }
        _ => CallError::new(CallKind::Failed, e.to_string()),
    }
}

/// Appends `bytes` to `out`, percent-encoding all but the unreserved characters of
/// RFC 3986 (letters, digits, `-`, `.`, `_`, `~`).
fn percent_encode(bytes: &[u8], out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 15) as usize] as char);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One client is shared by the stages that use it.
    const _: fn() = || {
        fn shared<T: Send + Sync>() {}
        shared::<EnrichClient>();
    };

    #[test]
    fn keys_are_percent_encoded_byte_by_byte() {
        let mut s = String::new();
        percent_encode(b"a b&c=d/e~f.g-h_i", &mut s);
        assert_eq!(s, "a%20b%26c%3Dd%2Fe~f.g-h_i");
        s.clear();
        percent_encode(&[0xC3, 0xA9, 0xFF, b'%'], &mut s);
        assert_eq!(s, "%C3%A9%FF%25");
    }

    #[test]
    fn bad_settings_are_refused_with_a_reason() {
        let ok = EnrichSettings {
            url: "http://127.0.0.1:1/lookup".to_owned(),
            fields: vec!["weight".to_owned()],
            ..EnrichSettings::default()
        };
        assert!(EnrichClient::new("e", ok.clone()).is_ok());
        for (settings, needle) in [
            (
                EnrichSettings {
                    url: "https://x/lookup".to_owned(),
                    ..ok.clone()
                },
                "http://",
            ),
            (
                EnrichSettings {
                    url: "http:///lookup".to_owned(),
                    ..ok.clone()
                },
                "host",
            ),
            (
                EnrichSettings {
                    fields: Vec::new(),
                    ..ok.clone()
                },
                "fields",
            ),
            (
                EnrichSettings {
                    batch_keys: 0,
                    ..ok.clone()
                },
                "batch_keys",
            ),
            (
                EnrichSettings {
                    timeout: Duration::ZERO,
                    ..ok.clone()
                },
                "timeout",
            ),
        ] {
            let e = EnrichClient::new("e", settings).unwrap_err();
            assert!(e.to_string().contains(needle), "{e}");
            assert!(e.to_string().starts_with("enrichment e: "), "{e}");
        }
    }

    #[test]
    fn an_unreachable_service_is_unavailable_and_nothing_is_cached() {
        // A port nobody listens on: bind one, then close it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let client = EnrichClient::new(
            "e",
            EnrichSettings {
                url: format!("http://127.0.0.1:{port}/lookup"),
                fields: vec!["weight".to_owned()],
                timeout: Duration::from_millis(300),
                ..EnrichSettings::default()
            },
        )
        .unwrap();
        let mut out = Vec::new();
        client.lookup(&[b"a", b"a"], &mut out);
        assert_eq!(out.len(), 2);
        for answer in &out {
            match answer {
                Lookup::Unavailable(reason) => assert!(reason.contains("connection"), "{reason}"),
                other => panic!("{other:?}"),
            }
        }
        let stats = client.stats();
        assert_eq!((stats.hits, stats.misses), (0, 1));
        assert_eq!(stats.retries, 1, "one retry per failed call");
        assert_eq!(stats.calls, 2);
        client.lookup(&[b"a"], &mut out);
        assert_eq!(client.stats().misses, 2, "unavailable is not cached");
    }
}
