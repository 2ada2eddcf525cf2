//! `Idempotency-Key`: a retried request gets the first answer, and adds nothing.
//!
//! The first request with a key (per client) runs; while it runs, a second one with
//! the same key waits for it. Its answer is kept for the horizon if it is final (`200`
//! or `400`: the events were taken, or never will be); an answer that invites a retry
//! (`413`, `429`, `503`, ...) is not kept, so the retry runs. A key reused with a
//! different body is refused (`422`), as the IETF draft on the header asks.
//!
//! Memory is bounded: at most `max_keys` answers are kept; past that the oldest is
//! forgotten first (counted in `lungfish_http_idempotency_evicted_total`). Keys live in
//! memory: a restart forgets them.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::Notify;

/// A kept answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Answer {
    pub status: u16,
    pub body: Bytes,
}

#[derive(Debug)]
enum Slot {
    Running {
        fingerprint: u64,
        done: Arc<Notify>,
    },
    Done {
        fingerprint: u64,
        answer: Answer,
        expires: Instant,
    },
}

/// What [`Keys::begin`] found.
#[derive(Debug)]
pub(crate) enum Begin {
    /// Nobody ran this key: run it, then [`Keys::finish`].
    Run,
    /// The key's answer.
    Replay(Answer),
    /// The key was used with another body.
    Mismatch,
    /// Another request with the key is running; wait for it, then ask again.
    Wait(Arc<Notify>),
}

/// The answers of recent idempotency keys.
#[derive(Debug)]
pub(crate) struct Keys {
    horizon: Duration,
    max_keys: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    slots: HashMap<String, Slot>,
    /// Keys in the order their answers were kept, with when.
    order: VecDeque<(Instant, String)>,
}

impl Keys {
    pub fn new(horizon: Duration, max_keys: usize) -> Self {
        Keys {
            horizon,
            max_keys: max_keys.max(1),
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Looks `key` up for a request whose body has `fingerprint`.
    pub fn begin(&self, key: &str, fingerprint: u64, now: Instant) -> Begin {
        let mut inner = self.lock();
        inner.expire(now);
        match inner.slots.get(key) {
            None => {
                inner.slots.insert(
                    key.to_owned(),
                    Slot::Running {
                        fingerprint,
                        done: Arc::new(Notify::new()),
                    },
                );
                Begin::Run
            }
            Some(Slot::Running {
                fingerprint: f,
                done,
            }) => {
                if *f == fingerprint {
                    Begin::Wait(done.clone())
                } else {
                    Begin::Mismatch
                }
            }
            Some(Slot::Done {
                fingerprint: f,
                answer,
                ..
            }) => {
                if *f == fingerprint {
                    Begin::Replay(answer.clone())
                } else {
                    Begin::Mismatch
                }
            }
        }
    }

    /// Ends the run of `key`: keeps `answer` if given (else forgets the key) and wakes
    /// the requests waiting for it.
    pub fn finish(&self, key: &str, answer: Option<Answer>, now: Instant) {
        let mut inner = self.lock();
        let Some(Slot::Running { fingerprint, done }) = inner.slots.remove(key) else {
            return;
        };
        if let Some(answer) = answer {
            while inner.order.len() >= self.max_keys {
                let Some((_, old)) = inner.order.pop_front() else {
                    break;
                };
                if matches!(inner.slots.get(&old), Some(Slot::Done { .. })) {
                    inner.slots.remove(&old);
                    metrics::counter!("lungfish_http_idempotency_evicted_total").increment(1);
                }
            }
            inner.slots.insert(
                key.to_owned(),
                Slot::Done {
                    fingerprint,
                    answer,
                    expires: now + self.horizon,
                },
            );
            inner.order.push_back((now, key.to_owned()));
        }
        done.notify_waiters();
    }

    /// Answers kept now.
    #[cfg(test)]
    pub fn kept(&self) -> usize {
        self.lock()
            .slots
            .values()
            .filter(|s| matches!(s, Slot::Done { .. }))
            .count()
    }
}

impl Inner {
    fn expire(&mut self, now: Instant) {
        while let Some((_, key)) = self.order.front() {
            match self.slots.get(key) {
                Some(Slot::Done { expires, .. }) if *expires <= now => {
                    let key = key.clone();
                    self.slots.remove(&key);
                    self.order.pop_front();
                }
                Some(Slot::Done { .. }) => break,
                // Forgotten or running again: the order entry is stale.
                _ => {
                    self.order.pop_front();
                }
            }
        }
    }
}

/// Ends a run when dropped without [`finish`](RunGuard::finish) (the request was
/// cancelled or panicked): the key is forgotten and waiters run it themselves.
pub(crate) struct RunGuard<'a> {
    keys: &'a Keys,
    key: String,
    finished: bool,
}

impl<'a> RunGuard<'a> {
    pub fn new(keys: &'a Keys, key: String) -> Self {
        RunGuard {
            keys,
            key,
            finished: false,
        }
    }

    /// Ends the run with `answer` kept if `keep`.
    pub fn finish(mut self, answer: &Answer, keep: bool) {
        self.finished = true;
        self.keys
            .finish(&self.key, keep.then(|| answer.clone()), Instant::now());
    }
}

impl Drop for RunGuard<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.keys.finish(&self.key, None, Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16) -> Answer {
        Answer {
            status,
            body: Bytes::from_static(b"{}"),
        }
    }

    #[test]
    fn the_first_answer_is_replayed_within_the_horizon() {
        let t0 = Instant::now();
        let keys = Keys::new(Duration::from_secs(10), 100);
        assert!(matches!(keys.begin("k", 1, t0), Begin::Run));
        assert!(matches!(keys.begin("k", 1, t0), Begin::Wait(_)));
        assert!(matches!(keys.begin("k", 2, t0), Begin::Mismatch));
        keys.finish("k", Some(answer(200)), t0);
        match keys.begin("k", 1, t0 + Duration::from_secs(9)) {
            Begin::Replay(a) => assert_eq!(a.status, 200),
            other => panic!("{other:?}"),
        }
        assert!(matches!(keys.begin("k", 2, t0), Begin::Mismatch));
        // Past the horizon it runs again.
        assert!(matches!(
            keys.begin("k", 1, t0 + Duration::from_secs(11)),
            Begin::Run
        ));
    }

    #[test]
    fn answers_that_invite_a_retry_are_not_kept() {
        let t0 = Instant::now();
        let keys = Keys::new(Duration::from_secs(10), 100);
        assert!(matches!(keys.begin("k", 1, t0), Begin::Run));
        {
            let guard = RunGuard::new(&keys, "k".into());
            guard.finish(&answer(503), false);
        }
        assert!(matches!(keys.begin("k", 1, t0), Begin::Run));
        // A dropped run (cancelled request) forgets the key too.
        drop(RunGuard::new(&keys, "k".into()));
        assert!(matches!(keys.begin("k", 1, t0), Begin::Run));
    }

    #[test]
    fn at_most_max_keys_are_kept_oldest_forgotten_first() {
        let t0 = Instant::now();
        let keys = Keys::new(Duration::from_secs(600), 3);
        for i in 0..5u64 {
            let k = format!("k{i}");
            assert!(matches!(keys.begin(&k, i, t0), Begin::Run));
            keys.finish(&k, Some(answer(200)), t0 + Duration::from_millis(i));
        }
        assert_eq!(keys.kept(), 3);
        assert!(matches!(keys.begin("k0", 0, t0), Begin::Run), "evicted");
        assert!(matches!(keys.begin("k4", 4, t0), Begin::Replay(_)));
    }
}
