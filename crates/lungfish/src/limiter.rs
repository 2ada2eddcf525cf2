//! Rate limits: a token bucket, and a bounded set of them keyed by client.
//!
//! [`TokenBucket`] refills at `rate` tokens per second up to `burst`. A request for `n`
//! tokens is admitted when the bucket holds at least `min(n, burst)` tokens and then
//! takes all `n`, so a request larger than the burst is admitted only from a full
//! bucket and leaves the bucket in debt; the caller is told how long until the next
//! request of the same size would be admitted. Callers charge once per batch, not per
//! event.
//!
//! [`KeyedLimiter`] keeps one bucket per client key, at most `max_clients` of them:
//! when full it forgets the buckets idle longest first (a forgotten client starts again
//! with a full bucket, so forgetting can only be generous, never unfair).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A token bucket: `rate` tokens per second, holding at most `burst`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket refilling at `rate` tokens per second (> 0), holding at most
    /// `burst` (>= 1).
    pub fn new(rate: f64, burst: u64, now: Instant) -> Self {
        let burst = burst.max(1) as f64;
        TokenBucket {
            rate: rate.max(f64::MIN_POSITIVE),
            burst,
            tokens: burst,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = now;
    }

    /// Takes `n` tokens if the bucket holds at least `min(n, burst)`.
    ///
    /// # Errors
    /// Not admitted: how long until it would be (nothing was taken).
    pub fn try_take(&mut self, n: u64, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        let needed = (n as f64).min(self.burst);
        if self.tokens >= needed {
            self.tokens -= n as f64;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                ((needed - self.tokens) / self.rate).min(1e9),
            ))
        }
    }

    /// True if a request of one token would be refused now.
    pub fn is_exhausted(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens < 1.0
    }

    fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.burst
    }
}

/// Token buckets per client key, at most `max_clients` of them. Thread-safe: one lock
/// per call.
///
/// ```
/// use std::time::Instant;
/// use lungfish::limiter::KeyedLimiter;
///
/// // 100 events per second per client, bursts of 200, at most 10,000 clients.
/// let limits = KeyedLimiter::new(100.0, 200, 10_000);
/// let now = Instant::now();
/// assert!(limits.try_take("client-a", 200, now).is_ok());
/// let wait = limits.try_take("client-a", 50, now).unwrap_err(); // HTTP 429, Retry-After
/// assert!(wait.as_millis() >= 490);
/// assert!(limits.try_take("client-b", 50, now).is_ok()); // each client its own bucket
/// ```
#[derive(Debug)]
pub struct KeyedLimiter {
    rate: f64,
    burst: u64,
    max_clients: usize,
    buckets: Mutex<HashMap<String, TokenBucket>>,
}

impl KeyedLimiter {
    /// Buckets of `rate` tokens per second and `burst` tokens, for at most
    /// `max_clients` clients at a time.
    pub fn new(rate: f64, burst: u64, max_clients: usize) -> Self {
        KeyedLimiter {
            rate,
            burst,
            max_clients: max_clients.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes `n` tokens from `client`'s bucket; see [`TokenBucket::try_take`].
    ///
    /// # Errors
    /// Not admitted: how long until it would be.
    pub fn try_take(&self, client: &str, n: u64, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(bucket) = buckets.get_mut(client) {
            return bucket.try_take(n, now);
        }
        if buckets.len() >= self.max_clients {
            // Full buckets carry no state worth keeping; then the longest idle.
            buckets.retain(|_, b| !b.is_full(now));
            if buckets.len() >= self.max_clients
                && let Some(oldest) = buckets
                    .iter()
                    .min_by_key(|(_, b)| b.last)
                    .map(|(k, _)| k.clone())
            {
                buckets.remove(&oldest);
            }
        }
        let mut bucket = TokenBucket::new(self.rate, self.burst, now);
        let result = bucket.try_take(n, now);
        buckets.insert(client.to_owned(), bucket);
        result
    }

    /// True if `client` could not take a single token now.
    pub fn is_exhausted(&self, client: &str, now: Instant) -> bool {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        buckets.get_mut(client).is_some_and(|b| b.is_exhausted(now))
    }

    /// Clients with a bucket now.
    pub fn clients(&self) -> usize {
        self.buckets.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_admits_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(100.0, 50, t0);
        assert!(b.try_take(30, t0).is_ok());
        assert!(b.try_take(20, t0).is_ok());
        let wait = b.try_take(10, t0).unwrap_err();
        assert!(
            (wait.as_secs_f64() - 0.1).abs() < 1e-6,
            "10 tokens at 100/s: {wait:?}"
        );
        assert!(b.is_exhausted(t0));
        // 100 ms later 10 tokens are back.
        let t1 = t0 + Duration::from_millis(100);
        assert!(b.try_take(10, t1).is_ok());
        assert!(b.try_take(1, t1).is_err());
        // Never more than the burst, however long it rested.
        let t2 = t1 + Duration::from_secs(3600);
        assert!(b.try_take(50, t2).is_ok());
        assert!(b.try_take(1, t2).is_err());
    }

    #[test]
    fn a_request_larger_than_the_burst_needs_a_full_bucket_and_leaves_debt() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 10, t0);
        assert!(b.try_take(25, t0).is_ok(), "a full bucket admits it");
        // 15 tokens of debt: one more token needs 1.6 s.
        let wait = b.try_take(1, t0).unwrap_err();
        assert!((wait.as_secs_f64() - 1.6).abs() < 1e-6, "{wait:?}");
        assert!(b.try_take(1, t0 + Duration::from_millis(1600)).is_ok());
    }

    #[test]
    fn clients_have_their_own_buckets_and_the_set_is_bounded() {
        let t0 = Instant::now();
        let l = KeyedLimiter::new(1.0, 5, 3);
        assert!(l.try_take("a", 5, t0).is_ok());
        assert!(l.try_take("a", 1, t0).is_err());
        assert!(l.is_exhausted("a", t0));
        assert!(l.try_take("b", 5, t0).is_ok(), "b is not held back by a");
        assert!(l.try_take("c", 2, t0).is_ok());
        assert!(l.try_take("d", 1, t0).is_ok());
        assert!(l.clients() <= 3, "{} clients", l.clients());
        assert!(!l.is_exhausted("unknown", t0));
    }
}
