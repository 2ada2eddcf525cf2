//! [`SeenIds`]: bounded-memory dedup of event ids within an event-time horizon.
//!
//! Ids (64-bit hashes of the event id) are remembered in buckets of `horizon / 8` of
//! event time, each an open-addressing set of `u64` (no allocation per id; tables grow
//! by doubling). With `T` the largest event time seen, a bucket is dropped once its
//! whole range is older than `T - horizon`, so an id is remembered for at least the
//! horizon after its event time and at most one bucket width longer.
//!
//! Memory is bounded by `max_ids`: when more ids are held, the oldest bucket is dropped
//! early (counted in [`SeenIds::evicted_early`]); under that pressure the effective
//! horizon shrinks to what `max_ids` ids cover.
//!
//! Answers depend only on the sequence of `(id, ts)` calls, so a replay of the same
//! events gives the same answers, also from a state restored with
//! [`SeenIds::decode`].

use crate::sketch::wire;

/// Buckets per horizon.
const BUCKETS: i64 = 8;
/// Ring slots: more than the at most `BUCKETS + 1` buckets live at once.
const RING: usize = 10;
/// A dropped bucket's table is kept for reuse up to this many slots.
const KEEP_SLOTS: usize = 1024;
/// A new table's slots.
const MIN_SLOTS: usize = 16;

/// Remembers event ids within an event-time horizon, in bounded memory.
///
/// [`first_sighting`](Self::first_sighting) is true for an id not seen within the
/// horizon (and records it), false for a repeat.
///
/// * False "repeat" answers come only from 64-bit hash collisions: about `n^2 / 2^65`
///   for `n` ids held (1e-9 for 200,000 ids).
/// * An id whose event time is older than `T - horizon` (`T` the largest event time
///   seen), or falls in a bucket dropped early under memory pressure, is *too old to
///   tell*: if it is still held it is a repeat (false); otherwise the answer is true,
///   it is not recorded, and [`too_old`](Self::too_old) counts it. True, because
///   dropping an event we cannot prove to be a repeat loses data silently, while a
///   late duplicate is visible downstream (and counted here); such events are usually
///   past the windows' allowed lateness anyway.
/// * A repeat does not refresh the id: the horizon counts from the first sighting.
/// * Memory: `heap_bytes() <= 8 (4 max_ids + 10 * 1024 + 64)` bytes (about 32 bytes
///   per id held at most, 3.3 MB for 100,000 ids).
#[derive(Debug, Clone)]
pub struct SeenIds {
    horizon_ms: i64,
    max_ids: usize,
    width: i64,
    ring: Vec<Bucket>,
    /// Largest event time seen (`i64::MIN` before any).
    max_ts: i64,
    any: bool,
    /// Buckets numbered below this were dropped early: their ids are too old to tell.
    forgotten_below: i64,
    held: usize,
    evicted_early: u64,
    too_old: u64,
}

#[derive(Debug, Clone, Default)]
struct Bucket {
    number: i64,
    live: bool,
    set: IdSet,
}

/// An open-addressing set of u64 (linear probing; 0 marks an empty slot, the id 0 is a
/// flag of its own).
#[derive(Debug, Clone, Default)]
struct IdSet {
    slots: Vec<u64>,
    len: usize,
    has_zero: bool,
}

impl IdSet {
    fn slot_of(id: u64, mask: usize) -> usize {
        ((id ^ (id >> 29)).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize & mask
    }

    fn contains(&self, id: u64) -> bool {
        if id == 0 {
            return self.has_zero;
        }
        if self.slots.is_empty() {
            return false;
        }
        let mask = self.slots.len() - 1;
        let mut i = Self::slot_of(id, mask);
        loop {
            match self.slots[i] {
                0 => return false,
                x if x == id => return true,
                _ => i = (i + 1) & mask,
            }
        }
    }

    /// Inserts `id` (known absent).
    fn insert(&mut self, id: u64) {
        self.len += 1;
        if id == 0 {
            self.has_zero = true;
            return;
        }
        if (self.len + 1) * 2 > self.slots.len() {
            self.grow();
        }
        Self::place(&mut self.slots, id);
    }

    fn place(slots: &mut [u64], id: u64) {
        let mask = slots.len() - 1;
        let mut i = Self::slot_of(id, mask);
        while slots[i] != 0 {
            i = (i + 1) & mask;
        }
        slots[i] = id;
    }

    fn grow(&mut self) {
        let n = (self.slots.len() * 2).max(MIN_SLOTS);
        let old = std::mem::replace(&mut self.slots, vec![0; n]);
        for id in old.into_iter().filter(|&x| x != 0) {
            Self::place(&mut self.slots, id);
        }
    }

    fn clear(&mut self) {
        if self.slots.len() > KEEP_SLOTS {
            self.slots = Vec::new();
        } else {
            self.slots.fill(0);
        }
        self.len = 0;
        self.has_zero = false;
    }

    fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.has_zero
            .then_some(0)
            .into_iter()
            .chain(self.slots.iter().copied().filter(|&x| x != 0))
    }
}

impl SeenIds {
    /// Remembers ids for `horizon_ms` of event time (at least 1), holding at most
    /// `max_ids` (at least 1).
    pub fn new(horizon_ms: i64, max_ids: usize) -> Self {
        let horizon_ms = horizon_ms.max(1);
        SeenIds {
            horizon_ms,
            max_ids: max_ids.max(1),
            width: (horizon_ms / BUCKETS + i64::from(horizon_ms % BUCKETS != 0)).max(1),
            ring: vec![Bucket::default(); RING],
            max_ts: i64::MIN,
            any: false,
            forgotten_below: i64::MIN,
            held: 0,
            evicted_early: 0,
            too_old: 0,
        }
    }

    /// The horizon in milliseconds of event time.
    pub fn horizon_ms(&self) -> i64 {
        self.horizon_ms
    }

    /// The most ids held.
    pub fn max_ids(&self) -> usize {
        self.max_ids
    }

    fn bucket_of(&self, ts: i64) -> i64 {
        ts.div_euclid(self.width)
    }

    /// Buckets numbered below this are wholly older than `max_ts - horizon`.
    fn cutoff_bucket(&self) -> i64 {
        self.bucket_of(self.max_ts.saturating_sub(self.horizon_ms))
    }

    /// True if `id_hash` was not seen within the horizon before event time `ts` (and
    /// records it); false for a repeat. See the type for ids too old to tell.
    pub fn first_sighting(&mut self, id_hash: u64, ts: i64) -> bool {
        if !self.any || ts > self.max_ts {
            self.any = true;
            self.max_ts = ts;
            self.expire();
        }
        if self.ring.iter().any(|b| b.live && b.set.contains(id_hash)) {
            return false;
        }
        let b = self.bucket_of(ts);
        if ts < self.max_ts.saturating_sub(self.horizon_ms) || b < self.forgotten_below {
            self.too_old += 1;
            return true;
        }
        while self.held >= self.max_ids {
            self.evict_oldest();
        }
        if b < self.forgotten_below {
            // Its own bucket was the oldest and just went.
            self.too_old += 1;
            return true;
        }
        let slot = &mut self.ring[b.rem_euclid(RING as i64) as usize];
        if !slot.live {
            slot.live = true;
            slot.number = b;
        }
        debug_assert_eq!(slot.number, b);
        slot.set.insert(id_hash);
        self.held += 1;
        true
    }

    fn expire(&mut self) {
        let cutoff = self.cutoff_bucket();
        for bucket in &mut self.ring {
            if bucket.live && bucket.number < cutoff {
                self.held -= bucket.set.len;
                bucket.set.clear();
                bucket.live = false;
            }
        }
    }

    /// Drops the oldest bucket under memory pressure, before an insert that would hold
    /// more than `max_ids`. Its range becomes too old to tell, unless it is the newest
    /// bucket (then it is only emptied and keeps recording: the effective horizon is
    /// what fits in `max_ids`).
    fn evict_oldest(&mut self) {
        let newest = self.bucket_of(self.max_ts);
        let Some(bucket) = self
            .ring
            .iter_mut()
            .filter(|b| b.live)
            .min_by_key(|b| b.number)
        else {
            return;
        };
        self.held -= bucket.set.len;
        self.evicted_early += bucket.set.len as u64;
        bucket.set.clear();
        if bucket.number < newest {
            bucket.live = false;
            self.forgotten_below = self.forgotten_below.max(bucket.number + 1);
        }
    }

    /// The number of ids held.
    pub fn len(&self) -> usize {
        self.held
    }

    /// Whether no id is held.
    pub fn is_empty(&self) -> bool {
        self.held == 0
    }

    /// Ids dropped before their horizon ran out because more than `max_ids` were held.
    pub fn evicted_early(&self) -> u64 {
        self.evicted_early
    }

    /// Sightings too old to tell (answered true and not recorded).
    pub fn too_old(&self) -> u64 {
        self.too_old
    }

    /// Bytes held on the heap.
    pub fn heap_bytes(&self) -> usize {
        self.ring.capacity() * std::mem::size_of::<Bucket>()
            + self
                .ring
                .iter()
                .map(|b| b.set.slots.capacity() * 8)
                .sum::<usize>()
    }

    /// Appends the state's encoding (8 bytes per id held plus a small header).
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(1);
        wire::put_ivarint(out, self.horizon_ms);
        wire::put_varint(out, self.max_ids as u64);
        out.push(u8::from(self.any));
        wire::put_ivarint(out, self.max_ts);
        wire::put_ivarint(out, self.forgotten_below);
        wire::put_varint(out, self.evicted_early);
        wire::put_varint(out, self.too_old);
        let mut live: Vec<&Bucket> = self.ring.iter().filter(|b| b.live).collect();
        live.sort_by_key(|b| b.number);
        wire::put_varint(out, live.len() as u64);
        for b in live {
            wire::put_ivarint(out, b.number);
            wire::put_varint(out, b.set.len as u64);
            for id in b.set.iter() {
                wire::put_u64(out, id);
            }
        }
    }

    /// Reads a state written by [`encode`](Self::encode), advancing `input` past it;
    /// `None` if the bytes are malformed. The restored state answers exactly as the
    /// saved one would.
    pub fn decode(input: &mut &[u8]) -> Option<Self> {
        if wire::get_u8(input)? != 1 {
            return None;
        }
        let horizon_ms = wire::get_ivarint(input)?;
        let max_ids = usize::try_from(wire::get_varint(input)?).ok()?;
        if horizon_ms < 1 || max_ids < 1 {
            return None;
        }
        let mut s = SeenIds::new(horizon_ms, max_ids);
        s.any = match wire::get_u8(input)? {
            0 => false,
            1 => true,
            _ => return None,
        };
        s.max_ts = wire::get_ivarint(input)?;
        s.forgotten_below = wire::get_ivarint(input)?;
        s.evicted_early = wire::get_varint(input)?;
        s.too_old = wire::get_varint(input)?;
        let n = usize::try_from(wire::get_varint(input)?).ok()?;
        if n > RING || (!s.any && n > 0) {
            return None;
        }
        let (lowest, newest) = (s.cutoff_bucket(), s.bucket_of(s.max_ts));
        for _ in 0..n {
            let number = wire::get_ivarint(input)?;
            let len = usize::try_from(wire::get_varint(input)?).ok()?;
            if number < lowest || number > newest || len > input.len() / 8 {
                return None;
            }
            let bucket = &mut s.ring[number.rem_euclid(RING as i64) as usize];
            if bucket.live {
                return None;
            }
            bucket.live = true;
            bucket.number = number;
            for _ in 0..len {
                let id = wire::get_u64(input)?;
                if bucket.set.contains(id) {
                    return None;
                }
                bucket.set.insert(id);
            }
            s.held += len;
        }
        (s.held <= s.max_ids).then_some(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sketch::TestRng;
    use xxhash_rust::xxh3::xxh3_64;

    fn id(i: u64) -> u64 {
        xxh3_64(&i.to_le_bytes())
    }

    #[test]
    fn repeats_within_the_horizon_are_rejected() {
        let mut s = SeenIds::new(10_000, 1_000);
        assert!(s.first_sighting(id(1), 1_000));
        assert!(!s.first_sighting(id(1), 1_000));
        assert!(!s.first_sighting(id(1), 5_000)); // a later copy
        assert!(!s.first_sighting(id(1), 500)); // an earlier copy
        assert!(s.first_sighting(id(2), 1_000));
        assert!(s.first_sighting(0, 1_000)); // the zero hash is an id like any other
        assert!(!s.first_sighting(0, 2_000));
        // Time moves on to exactly the horizon: still remembered.
        assert!(s.first_sighting(id(3), 11_000));
        assert!(!s.first_sighting(id(1), 11_000));
        assert_eq!(s.len(), 4);
        assert_eq!(s.too_old(), 0);
    }

    #[test]
    fn ids_are_forgotten_after_the_horizon() {
        let horizon = 8_000;
        let mut s = SeenIds::new(horizon, 1_000);
        assert!(s.first_sighting(id(1), 0));
        // Remembered for at least the horizon...
        for t in (0..=horizon).step_by(500) {
            assert!(s.first_sighting(id(100 + t as u64), t));
            assert!(!s.first_sighting(id(1), t), "t = {t}");
        }
        // ...and at most one bucket width (1 s) longer.
        assert!(s.first_sighting(id(99), horizon + 1_000));
        assert!(s.first_sighting(id(1), horizon + 1_000));
        assert_eq!(s.too_old(), 0);
        // An old id far behind is too old to tell: let through, counted, not recorded.
        assert!(s.first_sighting(id(7), 100));
        assert!(s.first_sighting(id(7), 100));
        assert_eq!(s.too_old(), 2);
        // But a held id is still a repeat even when its copy is late.
        assert!(s.first_sighting(id(8), horizon + 1_000));
        assert!(!s.first_sighting(id(8), 100));
    }

    #[test]
    fn random_stream_matches_an_exact_model() {
        // No memory pressure: answers equal an exact map of first sightings, except in
        // the up-to-one-bucket slack past the horizon.
        let mut rng = TestRng(12);
        let horizon = 80_000i64;
        let width = horizon / 8;
        let mut s = SeenIds::new(horizon, 1 << 20);
        let mut first: std::collections::HashMap<u64, i64> = Default::default();
        let mut max_ts = i64::MIN;
        let mut t = 0i64;
        for _ in 0..200_000 {
            t += rng.below(5) as i64;
            let ts = t - rng.below(3_000) as i64; // a little disorder
            let k = id(rng.below(20_000));
            let answer = s.first_sighting(k, ts);
            max_ts = max_ts.max(ts);
            let cutoff = max_ts - horizon;
            match first.get(&k) {
                Some(&f) if f >= cutoff => assert!(!answer, "repeat at {ts} of {f}"),
                Some(&f) if f.div_euclid(width) >= cutoff.div_euclid(width) => {
                    assert!(!answer)
                }
                _ => {
                    assert!(answer);
                    if ts >= cutoff {
                        first.insert(k, ts);
                    }
                }
            }
        }
        assert_eq!(s.evicted_early(), 0);
    }

    #[test]
    fn memory_stays_bounded_under_five_million_ids() {
        let n: u64 = if cfg!(debug_assertions) {
            2_000_000
        } else {
            5_000_000
        };
        let max_ids = 100_000;
        let bound = 8 * (4 * max_ids + 10 * KEEP_SLOTS + 64);
        let mut s = SeenIds::new(3_600_000, max_ids);
        let mut peak = 0;
        for i in 0..n {
            // 1000 ids per second of event time: an hour holds 3.6M ids.
            assert!(s.first_sighting(id(i), (i / 1_000) as i64));
            if i % 1_024 == 0 {
                peak = peak.max(s.heap_bytes());
                assert!(s.len() <= max_ids);
            }
        }
        peak = peak.max(s.heap_bytes());
        assert!(peak <= bound, "{peak} > {bound}");
        assert!(s.evicted_early() > 0);
        // The ids held are the most recent ones, and are told apart.
        let held = s.len() as u64;
        assert!(held > 0);
        for i in n - held..n {
            assert!(!s.first_sighting(id(i), (i / 1_000) as i64));
        }
        // Everything in one bucket: the newest bucket is emptied but keeps recording.
        let mut s = SeenIds::new(1_000_000, 1_000);
        for i in 0..100_000u64 {
            assert!(s.first_sighting(id(i), 5));
            assert!(!s.first_sighting(id(i), 5));
            assert!(s.len() <= 1_000);
        }
        assert!(s.heap_bytes() <= 8 * (4 * 1_000 + 10 * KEEP_SLOTS + 64));
    }

    #[test]
    fn deterministic_and_restorable() {
        let mut rng = TestRng(4);
        let events: Vec<(u64, i64)> = (0..60_000)
            .map(|i| (id(rng.below(8_000)), i / 3 - rng.below(5_000) as i64))
            .collect();
        let run = |s: &mut SeenIds, evs: &[(u64, i64)]| -> Vec<bool> {
            evs.iter().map(|&(k, t)| s.first_sighting(k, t)).collect()
        };
        let mut a = SeenIds::new(4_000, 3_000);
        let mut b = SeenIds::new(4_000, 3_000);
        let all_a = run(&mut a, &events);
        assert_eq!(all_a, run(&mut b, &events));
        assert!(a.evicted_early() > 0 && a.too_old() > 0);

        // Save half-way, restore, continue: same answers as never stopping.
        let mut c = SeenIds::new(4_000, 3_000);
        let (head, tail) = events.split_at(30_000);
        run(&mut c, head);
        let mut out = vec![5u8];
        c.encode(&mut out);
        out.push(6);
        let mut input = &out[1..];
        let mut restored = SeenIds::decode(&mut input).unwrap();
        assert_eq!(input, &[6]);
        assert_eq!(restored.len(), c.len());
        assert_eq!(run(&mut restored, tail), all_a[30_000..].to_vec());
        assert_eq!(restored.evicted_early(), a.evicted_early());
        assert_eq!(restored.too_old(), a.too_old());
        for cut in [0, 1, 5, out.len() / 2, out.len() - 3] {
            assert!(SeenIds::decode(&mut &out[1..1 + cut]).is_none());
        }
        let mut empty = Vec::new();
        SeenIds::new(10, 10).encode(&mut empty);
        assert!(SeenIds::decode(&mut &empty[..]).unwrap().is_empty());
    }
}
