//! Hot keys: finding the keys that carry a large share of a partition's events, and
//! pre-aggregating them before they cross to their shard (the first of two stages).
//!
//! Every key hashes to one shard, so a key with half the traffic would make one shard
//! do half the work. A consumer therefore samples one event in [`SAMPLE_EVERY`] into a
//! Space-Saving sketch ([`HeavyHitters`]) and, every [`REVIEW_EVERY`] micro-batches,
//! makes the keys holding at least [`HOT_SHARE`] of the sampled events (at most
//! [`MAX_HOT`]) its *hot set*, then halves the sketch's counts so the set follows
//! changes in traffic. Events of hot keys are folded per window into small tables in
//! the consumer ([`Combiner`]); at the end of the micro-batch each shard receives one
//! partial aggregate per hot key and window instead of every event, and merges it into
//! its window (the second stage). Merging is exact for counts, minimums, maximums and
//! the sketches; sums of non-integer numbers may differ from a one-stage sum in the
//! last bits (floating-point addition is not associative).
//!
//! The hot set only decides *where* an event is added first, never *whether*: results
//! do not depend on it, except for the order of floating-point additions. That is why
//! the first stage is off by default (`[pipeline] pre_aggregate`): with it, micro-batch
//! boundaries (which depend on timing) decide how a hot key's sum is grouped, so two
//! runs may differ in the last bits of a fractional sum. Detection and the metrics run
//! either way. Session windows are per event and skip both.

use crate::sketch::{HeavyHitter, HeavyHitters};
use crate::window::{RowSchema, WindowTable, Windowing};

/// About one event in this many is sampled into the heavy-hitter sketch.
pub const SAMPLE_EVERY: u32 = 8;
/// The hot set is reviewed every this many micro-batches.
pub const REVIEW_EVERY: u32 = 16;
/// A key is hot when it holds at least this share of the sampled events.
pub const HOT_SHARE: f64 = 0.01;
/// At most this many keys are hot at once.
pub const MAX_HOT: usize = 32;
/// Counters of the heavy-hitter sketch (several times [`MAX_HOT`], for accuracy).
const CAPACITY: usize = 256;

/// A partition's heavy-hitter detection and hot set.
#[derive(Debug)]
pub struct HotKeys {
    sketch: HeavyHitters,
    /// The sampling sequence's state (never 0).
    tick: u64,
    batches: u32,
    /// Hashes of the hot keys, by `hash & 63` with linear probing; 0 = empty.
    set: [u64; 64],
    hot: usize,
    top: Vec<HeavyHitter>,
}

impl Default for HotKeys {
    fn default() -> Self {
        HotKeys {
            sketch: HeavyHitters::new(CAPACITY),
            tick: 0x9E37_79B9_7F4A_7C15,
            batches: 0,
            set: [0; 64],
            hot: 0,
            top: Vec::new(),
        }
    }
}

impl HotKeys {
    /// Samples one event of `key` (one in [`SAMPLE_EVERY`] is counted).
    ///
    /// Which events are sampled comes from a xorshift sequence, not a fixed stride, so a
    /// periodic key pattern (round-robin keys) cannot hide a key from the sample.
    #[inline]
    pub fn observe(&mut self, hash: u64, key: &[u8]) {
        let mut x = self.tick;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.tick = x;
        if x.is_multiple_of(u64::from(SAMPLE_EVERY)) {
            self.sketch.observe(hash, key, 1);
        }
    }

    /// True if `hash` is a hot key's.
    #[inline]
    pub fn is_hot(&self, hash: u64) -> bool {
        if self.hot == 0 {
            return false;
        }
        let h = hash.max(1);
        let mut i = (h & 63) as usize;
        loop {
            match self.set[i] {
                0 => return false,
                x if x == h => return true,
                _ => i = (i + 1) & 63,
            }
        }
    }

    /// Counts a micro-batch; every [`REVIEW_EVERY`] batches, chooses the hot set again
    /// and returns true (the top keys changed, see [`top`](Self::top)).
    pub fn end_batch(&mut self) -> bool {
        self.batches += 1;
        if self.batches < REVIEW_EVERY {
            return false;
        }
        self.batches = 0;
        self.top = self.sketch.top(MAX_HOT);
        self.set = [0; 64];
        self.hot = 0;
        for k in self.top.iter().filter(|k| k.share >= HOT_SHARE) {
            let h = crate::event::key_hash(k.key.as_bytes()).max(1);
            let mut i = (h & 63) as usize;
            while self.set[i] != 0 {
                i = (i + 1) & 63;
            }
            self.set[i] = h;
            self.hot += 1;
        }
        self.sketch.decay(0.5);
        true
    }

    /// Number of hot keys.
    pub fn hot_count(&self) -> usize {
        self.hot
    }

    /// The heaviest keys at the last review, with their estimated share of the
    /// partition's events, heaviest first.
    pub fn top(&self) -> &[HeavyHitter] {
        &self.top
    }
}

/// A micro-batch's partial aggregates of hot keys bound for one shard: per window start,
/// a table of the hot keys' events (first stage).
#[derive(Debug, Default)]
pub struct Combiner {
    windows: Vec<(i64, WindowTable)>,
}

impl Combiner {
    /// Folds one event into every window of `windowing` containing `ts` that ends
    /// after `cutoff` (the windows the shard would add it to).
    #[inline]
    #[allow(clippy::too_many_arguments)]
    pub fn add(
        &mut self,
        windowing: &Windowing,
        schema: &RowSchema,
        hash: u64,
        key: &[u8],
        ts: i64,
        cutoff: i64,
        numbers: &[f64],
    ) {
        let windows = &mut self.windows;
        windowing.for_each_open(ts, cutoff, |start| {
            let at = match windows.iter().position(|(s, _)| *s == start) {
                Some(at) => at,
                None => {
                    windows.push((start, WindowTable::new(schema.number_fields())));
                    windows.len() - 1
                }
            };
            windows[at].1.add(hash, key, ts, numbers, schema);
        });
    }

    /// True if nothing was folded.
    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }

    /// The partial aggregates, leaving the combiner empty.
    pub fn take(&mut self) -> Vec<(i64, WindowTable)> {
        std::mem::take(&mut self.windows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_with_half_the_events_becomes_hot_and_rare_keys_do_not() {
        let mut hk = HotKeys::default();
        let hot = crate::event::key_hash(b"hot");
        let mut reviewed = false;
        for i in 0..200_000u64 {
            if i % 2 == 0 {
                hk.observe(hot, b"hot");
            } else {
                let k = format!("k{}", i % 5000);
                hk.observe(crate::event::key_hash(k.as_bytes()), k.as_bytes());
            }
            if i % 1000 == 999 {
                reviewed |= hk.end_batch();
            }
        }
        assert!(reviewed);
        assert!(hk.is_hot(hot), "{:?}", hk.top());
        assert_eq!(hk.hot_count(), 1, "{:?}", hk.top());
        assert!(!hk.is_hot(crate::event::key_hash(b"k1")));
        let top = &hk.top()[0];
        assert_eq!(top.key, "hot");
        assert!((top.share - 0.5).abs() < 0.05, "{}", top.share);
    }
}
