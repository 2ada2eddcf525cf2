//! [`HeavyHitters`]: online top-k keys by weight (Space-Saving, Metwally, Agrawal and
//! El Abbadi, 2005, with weights).
//!
//! The table holds at most `capacity` keys with a `count` and an `error`. A key in the
//! table adds its weight to its count; a new key takes the slot of the smallest count
//! `m` with count `m + weight` and error `m`. Since the counts sum to the total weight
//! and every key absent from the table has true weight at most the smallest count:
//!
//! * `count - error <= true weight <= count` for every listed key;
//! * every key whose true weight exceeds `total / capacity` is listed (and every
//!   `error <= total / capacity`).
//!
//! Keys are identified by their 64-bit hash (two keys with the same hash are counted
//! as one, probability about `n^2 / 2^65` for `n` keys). Key bytes are kept in full in
//! one reused arena (compacted when half of it is stale). Slots sit in a binary
//! min-heap by count and a hash index, so an update is O(log capacity) worst case
//! (O(1) when the count does not pass a child's) and allocates nothing once the table
//! and arena have grown to size.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// One entry of [`HeavyHitters::top`].
#[derive(Debug, Clone, PartialEq)]
pub struct HeavyHitter {
    /// The key (lossy UTF-8).
    pub key: String,
    /// Upper bound on the key's total weight.
    pub count: u64,
    /// `count - error` is a lower bound on the key's total weight.
    pub error: u64,
    /// `count / total`, the key's share of all weight (an upper bound).
    pub share: f64,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    hash: u64,
    count: u64,
    error: u64,
    /// The key is `arena[start..start + len]`; the slot owns `start..start + room`.
    start: usize,
    len: usize,
    room: usize,
    heap_pos: usize,
}

/// A hasher for keys that are already 64-bit hashes.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Online top-k keys by weight (Space-Saving).
///
/// Guarantees, for the weight observed since creation or [`reset`](Self::reset):
/// `count - error <= true <= count` for each listed key, and every key with true weight
/// over `total / capacity` is listed. After [`merge`](Self::merge) the bounds on each
/// key hold and every key over `2 total / capacity` is listed; after
/// [`decay`](Self::decay) they hold for the decayed weights, the listing threshold
/// raised by at most one per decay (counts are rounded up).
///
/// Memory: about 56 bytes per slot plus the index (about 16 bytes per slot, at most
/// half full) plus the key bytes (up to twice their length while stale keys await
/// compaction, and a spare arena of the same size once compacted).
#[derive(Debug, Clone)]
pub struct HeavyHitters {
    capacity: usize,
    total: u64,
    slots: Vec<Slot>,
    /// Min-heap of slot numbers by count.
    heap: Vec<usize>,
    index: HashMap<u64, usize, BuildHasherDefault<PassThrough>>,
    arena: Vec<u8>,
    spare: Vec<u8>,
    stale: usize,
}

impl HeavyHitters {
    /// An empty table of at most `capacity` keys (at least 1). Keys with more than
    /// `total / capacity` of the weight are always listed.
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self::with_reserve(capacity, capacity)
    }

    /// An empty table of `capacity` keys with room for `reserve` without growing
    /// (twice that in the index, so removals never make it grow).
    fn with_reserve(capacity: usize, reserve: usize) -> Self {
        HeavyHitters {
            capacity,
            total: 0,
            slots: Vec::with_capacity(reserve),
            heap: Vec::with_capacity(reserve),
            index: HashMap::with_capacity_and_hasher(2 * reserve, Default::default()),
            arena: Vec::new(),
            spare: Vec::new(),
            stale: 0,
        }
    }

    /// The most keys the table holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The number of keys held.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether nothing has been observed.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The total weight observed (saturating).
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Records `weight` more for the key with bytes `key` and hash `hash` (the caller's
    /// 64-bit hash of `key`, which identifies it). A zero weight is ignored.
    pub fn observe(&mut self, hash: u64, key: &[u8], weight: u64) {
        if weight == 0 {
            return;
        }
        self.total = self.total.saturating_add(weight);
        if let Some(&s) = self.index.get(&hash) {
            let slot = &mut self.slots[s];
            slot.count = slot.count.saturating_add(weight);
            let pos = slot.heap_pos;
            self.sift_down(pos);
            return;
        }
        if self.slots.len() < self.capacity {
            let s = self.slots.len();
            let start = self.arena.len();
            self.arena.extend_from_slice(key);
            self.slots.push(Slot {
                hash,
                count: weight,
                error: 0,
                start,
                len: key.len(),
                room: key.len(),
                heap_pos: self.heap.len(),
            });
            self.heap.push(s);
            self.sift_up(self.heap.len() - 1);
            self.index.insert(hash, s);
            return;
        }
        let s = self.heap[0];
        let old = self.slots[s];
        self.index.remove(&old.hash);
        self.index.insert(hash, s);
        self.put_key(s, key);
        let slot = &mut self.slots[s];
        slot.hash = hash;
        slot.error = old.count;
        slot.count = old.count.saturating_add(weight);
        self.sift_down(0);
    }

    /// Stores `key` as slot `s`'s key, in place when it fits.
    fn put_key(&mut self, s: usize, key: &[u8]) {
        let slot = self.slots[s];
        if key.len() <= slot.room {
            self.arena[slot.start..slot.start + key.len()].copy_from_slice(key);
            self.slots[s].len = key.len();
            return;
        }
        self.stale += slot.room;
        let start = self.arena.len();
        self.arena.extend_from_slice(key);
        let slot = &mut self.slots[s];
        slot.start = start;
        slot.len = key.len();
        slot.room = key.len();
        if self.stale > 4096 && self.stale * 2 > self.arena.len() {
            self.compact();
        }
    }

    /// Copies the live keys into the spare arena and swaps the two.
    fn compact(&mut self) {
        self.spare.clear();
        for slot in &mut self.slots {
            let start = self.spare.len();
            self.spare
                .extend_from_slice(&self.arena[slot.start..slot.start + slot.len]);
            slot.start = start;
            slot.room = slot.len;
        }
        std::mem::swap(&mut self.arena, &mut self.spare);
        self.stale = 0;
    }

    fn key(&self, slot: &Slot) -> &[u8] {
        &self.arena[slot.start..slot.start + slot.len]
    }

    fn count_at(&self, heap_pos: usize) -> u64 {
        self.slots[self.heap[heap_pos]].count
    }

    fn swap_heap(&mut self, a: usize, b: usize) {
        self.heap.swap(a, b);
        self.slots[self.heap[a]].heap_pos = a;
        self.slots[self.heap[b]].heap_pos = b;
    }

    fn sift_up(&mut self, mut i: usize) {
        while i > 0 {
            let parent = (i - 1) / 2;
            if self.count_at(parent) <= self.count_at(i) {
                break;
            }
            self.swap_heap(parent, i);
            i = parent;
        }
    }

    fn sift_down(&mut self, mut i: usize) {
        let n = self.heap.len();
        loop {
            let l = 2 * i + 1;
            if l >= n {
                break;
            }
            let r = l + 1;
            let child = if r < n && self.count_at(r) < self.count_at(l) {
                r
            } else {
                l
            };
            if self.count_at(i) <= self.count_at(child) {
                break;
            }
            self.swap_heap(i, child);
            i = child;
        }
    }

    /// The smallest count held, 0 while the table is not full (an upper bound on the
    /// weight of any key not listed).
    pub fn min_count(&self) -> u64 {
        if self.slots.len() < self.capacity {
            0
        } else {
            self.count_at(0)
        }
    }

    /// The `n` keys with the largest counts, by count descending then key bytes.
    pub fn top(&self, n: usize) -> Vec<HeavyHitter> {
        let mut order: Vec<&Slot> = self.slots.iter().collect();
        order.sort_by(|a, b| {
            b.count
                .cmp(&a.count)
                .then_with(|| self.key(a).cmp(self.key(b)))
                .then(a.hash.cmp(&b.hash))
        });
        order
            .into_iter()
            .take(n)
            .map(|s| HeavyHitter {
                key: String::from_utf8_lossy(self.key(s)).into_owned(),
                count: s.count,
                error: s.error,
                share: if self.total == 0 {
                    0.0
                } else {
                    s.count as f64 / self.total as f64
                },
            })
            .collect()
    }

    /// The count and error of the key with hash `hash`, if listed.
    pub fn get(&self, hash: u64) -> Option<(u64, u64)> {
        self.index.get(&hash).map(|&s| {
            let slot = &self.slots[s];
            (slot.count, slot.error)
        })
    }

    /// Forgets everything (keeps the allocations).
    pub fn reset(&mut self) {
        self.total = 0;
        self.slots.clear();
        self.heap.clear();
        self.index.clear();
        self.arena.clear();
        self.stale = 0;
    }

    /// Multiplies every weight by `factor` (clamped to `[0, 1]`), for a view that
    /// favours recent keys: counts are rounded up and lower bounds down, so both bounds
    /// keep holding for the decayed true weights. `decay(0.0)` is [`reset`](Self::reset).
    pub fn decay(&mut self, factor: f64) {
        let factor = if factor.is_nan() {
            1.0
        } else {
            factor.clamp(0.0, 1.0)
        };
        if factor == 0.0 {
            self.reset();
            return;
        }
        if factor == 1.0 {
            return;
        }
        for slot in &mut self.slots {
            let count = (slot.count as f64 * factor).ceil() as u64;
            let lower = ((slot.count - slot.error) as f64 * factor).floor() as u64;
            slot.count = count;
            slot.error = count - lower.min(count);
        }
        // Rounding up is monotone: the heap order still holds.
        self.total = (self.total as f64 * factor).ceil() as u64;
    }

    /// Adds `other`'s table (the mergeable Space-Saving of Agarwal et al., 2012): a key
    /// in both sums counts and errors; a key in one only is charged the other's
    /// [`min_count`](Self::min_count) in count and error; the `capacity` largest stay.
    /// Allocates (not a hot path).
    pub fn merge(&mut self, other: &HeavyHitters) {
        let min_a = self.min_count();
        let min_b = other.min_count();
        let mut rows: Vec<(u64, u64, u64, Vec<u8>)> =
            Vec::with_capacity(self.slots.len() + other.slots.len());
        for s in &self.slots {
            let (count, error) = match other.get(s.hash) {
                Some((c, e)) => (s.count.saturating_add(c), s.error.saturating_add(e)),
                None => (s.count.saturating_add(min_b), s.error.saturating_add(min_b)),
            };
            rows.push((s.hash, count, error, self.key(s).to_vec()));
        }
        for s in &other.slots {
            if self.index.contains_key(&s.hash) {
                continue;
            }
            rows.push((
                s.hash,
                s.count.saturating_add(min_a),
                s.error.saturating_add(min_a),
                other.key(s).to_vec(),
            ));
        }
        rows.sort_by(|a, b| {
            b.1.cmp(&a.1)
                .then_with(|| a.3.cmp(&b.3))
                .then(a.0.cmp(&b.0))
        });
        rows.truncate(self.capacity);
        let total = self.total.saturating_add(other.total);
        self.reset();
        self.total = total;
        for (hash, count, error, key) in rows {
            let s = self.slots.len();
            let start = self.arena.len();
            self.arena.extend_from_slice(&key);
            self.slots.push(Slot {
                hash,
                count,
                error,
                start,
                len: key.len(),
                room: key.len(),
                heap_pos: s,
            });
            self.heap.push(s);
            self.sift_up(s);
            self.index.insert(hash, s);
        }
    }

    /// Bytes held on the heap (approximate for the index).
    pub fn heap_bytes(&self) -> usize {
        self.slots.capacity() * std::mem::size_of::<Slot>()
            + self.heap.capacity() * std::mem::size_of::<usize>()
            + self.index.capacity() * (std::mem::size_of::<(u64, usize)>() + 1)
            + self.arena.capacity()
            + self.spare.capacity()
    }

    /// Appends the table's encoding (slots in heap order: the decoded table answers
    /// and evicts exactly as this one would).
    pub fn encode(&self, out: &mut Vec<u8>) {
        use super::wire::*;
        out.push(1);
        put_varint(out, self.capacity as u64);
        put_varint(out, self.total);
        put_varint(out, self.slots.len() as u64);
        // In heap order, so a decoded table has the same heap and evicts the same keys.
        for &i in &self.heap {
            let s = &self.slots[i];
            put_u64(out, s.hash);
            put_varint(out, s.count);
            put_varint(out, s.error);
            put_varint(out, s.len as u64);
            out.extend_from_slice(self.key(s));
        }
    }

    /// Reads a table written by [`encode`](Self::encode), advancing `input` past it;
    /// `None` if the bytes are malformed.
    pub fn decode(input: &mut &[u8]) -> Option<Self> {
        use super::wire::*;
        if get_u8(input)? != 1 {
            return None;
        }
        let capacity = usize::try_from(get_varint(input)?).ok()?;
        let total = get_varint(input)?;
        let n = usize::try_from(get_varint(input)?).ok()?;
        if capacity == 0 || n > capacity || n > input.len() {
            return None;
        }
        // Reserve what is there, not what a (possibly corrupt) capacity says.
        let mut h = HeavyHitters::with_reserve(capacity, n);
        h.total = total;
        for _ in 0..n {
            let hash = get_u64(input)?;
            let count = get_varint(input)?;
            let error = get_varint(input)?;
            let len = usize::try_from(get_varint(input)?).ok()?;
            let key = get_bytes(input, len)?;
            if error > count || h.index.contains_key(&hash) {
                return None;
            }
            let s = h.slots.len();
            let start = h.arena.len();
            h.arena.extend_from_slice(key);
            h.slots.push(Slot {
                hash,
                count,
                error,
                start,
                len,
                room: len,
                heap_pos: s,
            });
            h.heap.push(s);
            h.sift_up(s);
            h.index.insert(hash, s);
        }
        Some(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sketch::TestRng;
    use std::collections::HashMap as Map;
    use xxhash_rust::xxh3::xxh3_64;

    fn key_of(i: u64) -> Vec<u8> {
        format!("key-{i}").into_bytes()
    }

    /// A Zipf(1.1)-ish stream of `n` keys over `universe` (inverse-CDF on a table).
    fn zipf_stream(rng: &mut TestRng, n: usize, universe: usize, s: f64) -> Vec<u64> {
        let mut cdf = Vec::with_capacity(universe);
        let mut acc = 0.0;
        for k in 1..=universe {
            acc += 1.0 / (k as f64).powf(s);
            cdf.push(acc);
        }
        (0..n)
            .map(|_| {
                let u = rng.unit() * acc;
                cdf.partition_point(|&c| c < u) as u64
            })
            .collect()
    }

    fn check_guarantees(h: &HeavyHitters, exact: &Map<u64, u64>, heavy_factor: u64) {
        let total: u64 = exact.values().sum();
        assert_eq!(h.total(), total);
        let listed: Map<String, HeavyHitter> = h
            .top(usize::MAX)
            .into_iter()
            .map(|e| (e.key.clone(), e))
            .collect();
        assert!(listed.len() <= h.capacity());
        for (&k, &true_count) in exact {
            let name = String::from_utf8(key_of(k)).unwrap();
            match listed.get(&name) {
                Some(e) => {
                    assert!(e.count >= true_count, "{name}: {e:?} < {true_count}");
                    assert!(
                        e.count - e.error <= true_count,
                        "{name}: {e:?} lower bound above {true_count}"
                    );
                }
                None => {
                    assert!(
                        true_count * h.capacity() as u64 <= heavy_factor * total,
                        "{name} with {true_count} of {total} missing"
                    );
                    assert!(true_count <= h.min_count());
                }
            }
        }
        for e in listed.values() {
            if heavy_factor == 1 {
                assert!(e.error * h.capacity() as u64 <= total, "{e:?}");
            }
        }
    }

    fn feed(h: &mut HeavyHitters, exact: &mut Map<u64, u64>, stream: &[u64], rng: &mut TestRng) {
        for &k in stream {
            let w = 1 + rng.below(3);
            h.observe(xxh3_64(&key_of(k)), &key_of(k), w);
            *exact.entry(k).or_default() += w;
        }
    }

    #[test]
    fn zipf_stream_keeps_the_guarantees() {
        let mut rng = TestRng(1);
        for (capacity, s) in [(10usize, 1.1), (50, 1.1), (100, 0.8), (200, 1.5)] {
            let stream = zipf_stream(&mut rng, 100_000, 5_000, s);
            let mut h = HeavyHitters::new(capacity);
            let mut exact = Map::new();
            feed(&mut h, &mut exact, &stream, &mut rng);
            check_guarantees(&h, &exact, 1);
            // The top of a skewed stream is found in order.
            // Keys whose true weights differ by more than total / capacity are ranked
            // in their true order (count bounds are that tight).
            let mut by_count: Vec<(u64, u64)> = exact.iter().map(|(&k, &c)| (c, k)).collect();
            by_count.sort_unstable_by(|a, b| b.cmp(a));
            let slack = h.total() / capacity as u64;
            let top = h.top(capacity);
            let rank = |k: u64| top.iter().position(|e| e.key.as_bytes() == key_of(k));
            let mut compared = 0;
            for w in by_count.windows(2).take(capacity) {
                if w[0].0 > w[1].0 + slack {
                    let (a, b) = (rank(w[0].1).unwrap(), rank(w[1].1));
                    assert!(b.is_none_or(|b| a < b), "{w:?}");
                    compared += 1;
                }
            }
            if capacity >= 50 && s > 1.0 {
                assert!(compared > 0);
            }
        }
    }

    #[test]
    fn a_key_with_half_the_weight_is_on_top() {
        let mut rng = TestRng(9);
        let capacity = 20;
        let mut h = HeavyHitters::new(capacity);
        let mut exact = Map::new();
        let mut stream = Vec::new();
        for i in 0..100_000u64 {
            stream.push(if i % 2 == 0 {
                0
            } else {
                1 + rng.below(100_000)
            });
        }
        for &k in &stream {
            h.observe(xxh3_64(&key_of(k)), &key_of(k), 1);
            *exact.entry(k).or_default() += 1;
        }
        check_guarantees(&h, &exact, 1);
        let top = h.top(1);
        assert_eq!(top[0].key, "key-0");
        let slack = 1.0 / capacity as f64;
        assert!(
            top[0].share >= 0.5 && top[0].share <= 0.5 + slack,
            "{:?}",
            top[0]
        );
        assert!((top[0].count - top[0].error) as f64 / h.total() as f64 >= 0.5 - slack);
    }

    #[test]
    fn merge_keeps_the_bounds() {
        let mut rng = TestRng(4);
        for overlap in [true, false] {
            let a_stream = zipf_stream(&mut rng, 50_000, 3_000, 1.1);
            let mut b_stream = zipf_stream(&mut rng, 50_000, 3_000, 1.1);
            if !overlap {
                for k in &mut b_stream {
                    *k += 10_000;
                }
            }
            let (mut a, mut b) = (HeavyHitters::new(40), HeavyHitters::new(40));
            let mut exact = Map::new();
            feed(&mut a, &mut exact, &a_stream, &mut rng);
            feed(&mut b, &mut exact, &b_stream, &mut rng);
            a.merge(&b);
            check_guarantees(&a, &exact, 2);
            // And it keeps counting correctly afterwards.
            let more = zipf_stream(&mut rng, 20_000, 3_000, 1.1);
            feed(&mut a, &mut exact, &more, &mut rng);
            check_guarantees(&a, &exact, 2);
        }
    }

    #[test]
    fn decay_keeps_bounds_on_decayed_weights() {
        let mut rng = TestRng(6);
        let stream = zipf_stream(&mut rng, 30_000, 2_000, 1.2);
        let mut h = HeavyHitters::new(30);
        let mut exact: Map<u64, f64> = Map::new();
        for (i, &k) in stream.iter().enumerate() {
            h.observe(xxh3_64(&key_of(k)), &key_of(k), 1);
            *exact.entry(k).or_default() += 1.0;
            if i % 5_000 == 4_999 {
                h.decay(0.5);
                for v in exact.values_mut() {
                    *v *= 0.5;
                }
            }
        }
        let total: f64 = exact.values().sum();
        assert!(h.total() as f64 >= total && (h.total() as f64) < total + 10.0);
        for e in h.top(usize::MAX) {
            let k: u64 = e.key[4..].parse().unwrap();
            let t = exact[&k];
            assert!(
                e.count as f64 >= t && (e.count - e.error) as f64 <= t,
                "{e:?} {t}"
            );
        }
        for (&k, &t) in &exact {
            // Each decay's rounding up adds at most one per slot to the counts.
            if t * 30.0 > total + 60.0 {
                assert!(h.get(xxh3_64(&key_of(k))).is_some(), "{k}: {t}");
            }
        }
        h.decay(0.0);
        assert!(h.is_empty());
        assert_eq!(h.total(), 0);
    }

    #[test]
    fn long_keys_are_kept_whole_and_the_arena_is_reused() {
        let mut rng = TestRng(8);
        let mut h = HeavyHitters::new(16);
        let mut last = Vec::new();
        for i in 0..20_000u64 {
            let len = rng.below(300) as usize;
            let key: Vec<u8> = (0..len)
                .map(|j| b'a' + ((i as usize + j) % 26) as u8)
                .collect();
            h.observe(xxh3_64(&key), &key, 1 + (i % 7 == 0) as u64 * 100);
            last = key;
        }
        let top = h.top(usize::MAX);
        assert!(top.iter().any(|e| e.key.as_bytes() == last.as_slice()));
        for e in &top {
            assert_eq!(
                h.get(xxh3_64(e.key.as_bytes())).unwrap(),
                (e.count, e.error)
            );
        }
        // Bounded by the live keys (16 x 300) twice over, plus compaction slack.
        assert!(
            h.arena.capacity() + h.spare.capacity() < 64 * 1024,
            "{}",
            h.heap_bytes()
        );
    }

    #[test]
    fn encode_decode_round_trip() {
        let mut rng = TestRng(2);
        let stream = zipf_stream(&mut rng, 10_000, 1_000, 1.1);
        let mut h = HeavyHitters::new(25);
        let mut exact = Map::new();
        feed(&mut h, &mut exact, &stream, &mut rng);
        let mut out = vec![1u8];
        h.encode(&mut out);
        out.push(2);
        let mut input = &out[1..];
        let mut back = HeavyHitters::decode(&mut input).unwrap();
        assert_eq!(input, &[2]);
        assert_eq!(back.top(100), h.top(100));
        assert_eq!(back.min_count(), h.min_count());
        // Both go on the same way.
        let more = zipf_stream(&mut rng, 5_000, 1_000, 1.1);
        for &k in &more {
            h.observe(xxh3_64(&key_of(k)), &key_of(k), 1);
            back.observe(xxh3_64(&key_of(k)), &key_of(k), 1);
        }
        let counts = |x: &HeavyHitters| {
            let mut v: Vec<(String, u64)> =
                x.top(100).into_iter().map(|e| (e.key, e.count)).collect();
            v.sort();
            v
        };
        assert_eq!(counts(&back), counts(&h));
        for cut in 0..out.len() - 2 {
            assert!(HeavyHitters::decode(&mut &out[1..1 + cut]).is_none());
        }
        assert!(HeavyHitters::decode(&mut &[2u8][..]).is_none());
    }
}
