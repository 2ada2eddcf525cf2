//! Event-time windows: which windows an event belongs to, the per-key aggregate state
//! of one window, and the rows a closed window produces.
//!
//! # Rules
//!
//! * Windows are aligned to the Unix epoch. A tumbling window of size `s` covers
//!   `[k*s, (k+1)*s)`; a sliding window of size `s` and slide `d` covers
//!   `[k*d, k*d + s)`, so an event belongs to `s/d` windows.
//! * A window *closes* when the watermark reaches its end (`end <= watermark`); its rows
//!   are then final and emitted once. The watermark of a partition is the largest event
//!   time seen in it minus the allowed out-of-orderness (see `consumer`).
//! * An event whose every window has closed is *late*: it is counted and sent to the
//!   dead-letter queue with its reason, never silently dropped. With sliding windows an
//!   event some of whose windows are still open is added to those (as Flink does).
//! * Aggregates: `count`, and per numeric field `sum`, `min`, `max`, `mean` (sum/count).

use std::sync::Arc;

use crate::budget::Lease;
use crate::config::{AggFunc, AggregateSpec, WindowSpec};

/// Which windows an event time falls into, and how long they take late events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windowing {
    size: i64,
    slide: i64,
    /// Allowed lateness, milliseconds.
    lateness: i64,
    /// Session windows: `size` is the gap.
    session: bool,
}

impl Windowing {
    /// Windows of the given spec, with no allowed lateness. Sizes are rounded to whole
    /// milliseconds, at least 1.
    pub fn new(spec: &WindowSpec) -> Self {
        let ms = |d: std::time::Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX).max(1);
        let (size, slide, session) = match spec {
            WindowSpec::Tumbling { size } => (ms(*size), ms(*size), false),
            WindowSpec::Sliding { size, slide } => (ms(*size), ms(*slide), false),
            WindowSpec::Session { gap } => (ms(*gap), ms(*gap), true),
        };
        Windowing {
            size,
            slide,
            lateness: 0,
            session,
        }
    }

    /// The same windows, kept `lateness` after the watermark closes them for late
    /// events (whole milliseconds).
    pub fn with_lateness(mut self, lateness: std::time::Duration) -> Self {
        self.lateness = i64::try_from(lateness.as_millis()).unwrap_or(i64::MAX);
        self
    }

    /// Window size in milliseconds (the gap, for session windows).
    pub fn size_ms(&self) -> i64 {
        self.size
    }

    /// Allowed lateness in milliseconds.
    pub fn lateness_ms(&self) -> i64 {
        self.lateness
    }

    /// True for session windows.
    pub fn is_session(&self) -> bool {
        self.session
    }

    /// The line below which windows are final at `watermark`: a window ending at or
    /// before it takes no more events and is dropped from state.
    #[inline]
    pub fn final_line(&self, watermark: i64) -> i64 {
        if watermark == i64::MAX {
            i64::MAX
        } else {
            watermark.saturating_sub(self.lateness)
        }
    }

    /// Start of the latest window containing `ts` (`ts` itself, for session windows).
    #[inline]
    pub fn last_start(&self, ts: i64) -> i64 {
        if self.session {
            return ts;
        }
        ts.div_euclid(self.slide).saturating_mul(self.slide)
    }

    /// End of the latest window containing `ts`: the event is late once the final line
    /// reaches it. For session windows, `ts + gap`: the end of the session the event
    /// opens or extends.
    #[inline]
    pub fn last_end(&self, ts: i64) -> i64 {
        self.last_start(ts).saturating_add(self.size)
    }

    /// End of the window starting at `start`.
    #[inline]
    pub fn end(&self, start: i64) -> i64 {
        start.saturating_add(self.size)
    }

    /// Calls `f` with the start of every window containing `ts` whose end is above
    /// `cutoff`, latest first. For session windows, `ts` itself if `ts + gap` is above
    /// `cutoff`.
    #[inline]
    pub fn for_each_open(&self, ts: i64, cutoff: i64, mut f: impl FnMut(i64)) {
        let mut start = self.last_start(ts);
        while start > ts.saturating_sub(self.size) && self.end(start) > cutoff {
            f(start);
            if self.session {
                return;
            }
            start = start.saturating_sub(self.slide);
        }
    }
}

/// What a row holds in a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnKind {
    /// An integer (`count`).
    Integer,
    /// A floating-point number.
    Real,
}

/// The aggregate columns of the rows a pipeline produces, after `window_start`,
/// `window_end` and `key`.
#[derive(Debug, Clone, PartialEq)]
pub struct RowSchema {
    columns: Vec<(String, ColumnKind)>,
    /// For each column: the aggregate and the index of its number field.
    plan: Vec<(AggFunc, usize)>,
    number_fields: usize,
}

impl RowSchema {
    /// The schema for `aggregates`, reading the numbers named in `number_fields` (the
    /// order the event records carry them in).
    ///
    /// # Panics
    /// If an aggregate names a field missing from `number_fields` (the config validation
    /// guarantees it is not).
    pub fn new(aggregates: &[AggregateSpec], number_fields: &[String]) -> Self {
        let mut columns = Vec::with_capacity(aggregates.len());
        let mut plan = Vec::with_capacity(aggregates.len());
        for a in aggregates {
            let field = a.field.as_ref().map_or(0, |f| {
                number_fields
                    .iter()
                    .position(|n| n == f)
                    .expect("aggregate field is among the number fields")
            });
            let kind = match a.func {
                AggFunc::Count => ColumnKind::Integer,
                _ => ColumnKind::Real,
            };
            columns.push((a.column.clone(), kind));
            plan.push((a.func, field));
        }
        RowSchema {
            columns,
            plan,
            number_fields: number_fields.len(),
        }
    }

    /// Column names and kinds, in order.
    pub fn columns(&self) -> &[(String, ColumnKind)] {
        &self.columns
    }

    /// Number of numeric fields each event carries.
    pub fn number_fields(&self) -> usize {
        self.number_fields
    }
}

/// Rows of closed windows, stored by column so a batch costs a few allocations, not one
/// per row. Shared read-only by every sink.
#[derive(Debug, Clone)]
pub struct WindowRows {
    schema: Arc<RowSchema>,
    starts: Vec<i64>,
    ends: Vec<i64>,
    key_data: Vec<u8>,
    key_ends: Vec<u32>,
    values: Vec<f64>,
    /// The queue bytes these rows hold until dropped (see [`crate::budget`]).
    lease: Lease,
}

impl WindowRows {
    /// An empty batch.
    pub fn new(schema: Arc<RowSchema>) -> Self {
        WindowRows {
            schema,
            starts: Vec::new(),
            ends: Vec::new(),
            key_data: Vec::new(),
            key_ends: Vec::new(),
            values: Vec::new(),
            lease: Lease::default(),
        }
    }

    /// Bytes the rows hold on the heap (their buffers' capacities).
    pub fn heap_bytes(&self) -> u64 {
        (self.starts.capacity() * 8
            + self.ends.capacity() * 8
            + self.key_data.capacity()
            + self.key_ends.capacity() * 4
            + self.values.capacity() * 8) as u64
    }

    /// Makes the rows hold `lease` until they are dropped: the queue bytes they take
    /// come back when the last sink is done with them.
    pub fn hold(&mut self, lease: Lease) {
        self.lease = lease;
    }

    /// The schema of the rows.
    pub fn schema(&self) -> &Arc<RowSchema> {
        &self.schema
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.starts.len()
    }

    /// True if there is no row.
    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }

    /// Start of row `i`'s window (epoch ms, inclusive).
    pub fn window_start(&self, i: usize) -> i64 {
        self.starts[i]
    }

    /// End of row `i`'s window (epoch ms, exclusive).
    pub fn window_end(&self, i: usize) -> i64 {
        self.ends[i]
    }

    /// Row `i`'s key.
    pub fn key(&self, i: usize) -> &str {
        let from = if i == 0 {
            0
        } else {
            self.key_ends[i - 1] as usize
        };
        let bytes = &self.key_data[from..self.key_ends[i] as usize];
        // Keys come from validated JSON text, so they are UTF-8.
        std::str::from_utf8(bytes).unwrap_or("\u{fffd}")
    }

    /// Row `i`'s value in aggregate column `c` (counts are whole numbers).
    pub fn value(&self, i: usize, c: usize) -> f64 {
        self.values[i * self.schema.columns.len() + c]
    }

    /// Appends a row (for tests and custom operators).
    pub fn push(&mut self, start: i64, end: i64, key: &str, values: &[f64]) {
        assert_eq!(
            values.len(),
            self.schema.columns.len(),
            "one value per column"
        );
        self.starts.push(start);
        self.ends.push(end);
        self.key_data.extend_from_slice(key.as_bytes());
        self.key_ends.push(self.key_data.len() as u32);
        self.values.extend_from_slice(values);
    }
}

/// The aggregate state of one key in one window, on its own: what session windows
/// keep per session. ([`WindowTable`] keeps the same state packed for many keys.)
#[derive(Debug, Clone, PartialEq)]
pub struct Accumulator {
    count: u64,
    /// Sum, minimum and maximum of each number field.
    vals: Vec<f64>,
}

impl Accumulator {
    /// Empty state for events carrying `number_fields` numbers.
    pub fn new(number_fields: usize) -> Self {
        let mut vals = Vec::with_capacity(number_fields * 3);
        for _ in 0..number_fields {
            vals.extend_from_slice(&EMPTY_AGG);
        }
        Accumulator { count: 0, vals }
    }

    /// Adds one event's numbers (in field order).
    #[inline]
    pub fn add(&mut self, numbers: &[f64]) {
        self.count += 1;
        for (f, &n) in numbers.iter().enumerate() {
            fold(&mut self.vals[f * 3..f * 3 + 3], n);
        }
    }

    /// Adds `other`'s events, as if they had been added here.
    pub fn merge(&mut self, other: &Accumulator) {
        self.count += other.count;
        for (a, b) in self
            .vals
            .chunks_exact_mut(3)
            .zip(other.vals.chunks_exact(3))
        {
            a[0] += b[0];
            a[1] = a[1].min(b[1]);
            a[2] = a[2].max(b[2]);
        }
    }

    /// The state as saved in a checkpoint: the count, then sum, min and max of each
    /// number field.
    pub fn parts(&self) -> (u64, &[f64]) {
        (self.count, &self.vals)
    }

    /// State saved with [`parts`](Self::parts); `None` if `aggs` does not hold three
    /// numbers per field.
    pub fn from_parts(count: u64, aggs: &[f64], number_fields: usize) -> Option<Self> {
        (aggs.len() == number_fields * 3).then(|| Accumulator {
            count,
            vals: aggs.to_vec(),
        })
    }

    /// Number of events added.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Bytes held on the heap.
    pub fn heap_bytes(&self) -> u64 {
        (self.vals.capacity() * 8) as u64
    }

    /// Appends the row values for `schema`'s columns to `out`.
    fn values(&self, schema: &RowSchema, out: &mut Vec<f64>) {
        for &(func, field) in &schema.plan {
            let agg = |i: usize| self.vals[field * 3 + i];
            out.push(match func {
                AggFunc::Count => self.count as f64,
                AggFunc::Sum => agg(0),
                AggFunc::Min => agg(1),
                AggFunc::Max => agg(2),
                AggFunc::Mean => agg(0) / self.count as f64,
            });
        }
    }
}

impl WindowRows {
    /// Appends the row of `key` in window `[start, end)` with `acc`'s aggregates.
    pub fn push_accumulated(&mut self, start: i64, end: i64, key: &[u8], acc: &Accumulator) {
        self.starts.push(start);
        self.ends.push(end);
        self.key_data.extend_from_slice(key);
        self.key_ends.push(self.key_data.len() as u32);
        let schema = self.schema.clone();
        acc.values(&schema, &mut self.values);
    }
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    hash: u64,
    /// The key's first 8 bytes, zero-padded: keys of up to 8 bytes compare without
    /// touching the arena.
    prefix: u64,
    key_len: u32,
    key_at: u32,
    count: u64,
    /// Sum, minimum and maximum of the first number field, in the slot itself: one
    /// cache line per key on the hot path.
    first: [f64; 3],
    /// Where the other number fields' sum/min/max start in the value arena.
    vals_at: u32,
    /// Changed since the window last emitted its rows (only tracked once it has).
    dirty: bool,
}

const EMPTY_AGG: [f64; 3] = [0.0, f64::INFINITY, f64::NEG_INFINITY];

#[inline]
fn fold(agg: &mut [f64], n: f64) {
    agg[0] += n;
    if n < agg[1] {
        agg[1] = n;
    }
    if n > agg[2] {
        agg[2] = n;
    }
}

#[inline]
fn prefix_of(key: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = key.len().min(8);
    b[..n].copy_from_slice(&key[..n]);
    u64::from_le_bytes(b)
}

/// The aggregate state of one window: per key, the count and per number field its sum,
/// minimum and maximum.
///
/// An open-addressing table with linear probing over 64-byte slots (one cache line
/// each), at most 70% full. Keys live in an arena, the sums of the second and later
/// number fields in another, so adding an event to a known key allocates nothing. The
/// slot of a key is found from its hash alone, which lets a caller [`prefetch`](Self::prefetch)
/// the slot of an event ahead of time, so memory latency overlaps with other work.
#[derive(Debug)]
pub struct WindowTable {
    slots: Vec<Slot>,
    len: usize,
    keys: Vec<u8>,
    vals: Vec<f64>,
    stride: usize,
    /// The window has emitted its rows once; later changes mark their key dirty.
    fired: bool,
}

const EMPTY_SLOT: Slot = Slot {
    hash: 0,
    prefix: 0,
    key_len: 0,
    key_at: 0,
    count: 0,
    first: EMPTY_AGG,
    vals_at: 0,
    dirty: false,
};

impl WindowTable {
    /// An empty window for events carrying `number_fields` numbers.
    pub fn new(number_fields: usize) -> Self {
        WindowTable {
            slots: vec![EMPTY_SLOT; 64],
            len: 0,
            keys: Vec::new(),
            vals: Vec::new(),
            stride: number_fields * 3,
            fired: false,
        }
    }

    /// Bytes the window holds on the heap (slots, keys and aggregates).
    pub fn heap_bytes(&self) -> u64 {
        (self.slots.capacity() * std::mem::size_of::<Slot>()
            + self.keys.capacity()
            + self.vals.capacity() * 8) as u64
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if no event was added.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Asks the CPU to start loading the first slot `hash` would probe, so that a later
    /// [`add`](Self::add) of that key finds it in cache. Call it for an event a few
    /// positions ahead. Has no effect other than on timing.
    #[inline]
    pub fn prefetch(&self, hash: u64) {
        crate::prefetch::read(&self.slots[hash as usize & (self.slots.len() - 1)]);
    }

    /// Adds one event: `hash` is [`crate::event::key_hash`] of `key`, `numbers` its
    /// aggregated numbers in field order.
    #[inline]
    pub fn add(&mut self, hash: u64, key: &[u8], numbers: impl Iterator<Item = f64>) {
        let i = self.slot_of(hash, key);
        let slot = &mut self.slots[i];
        slot.count += 1;
        slot.dirty |= self.fired;
        let mut numbers = numbers;
        if let Some(n) = numbers.next() {
            fold(&mut slot.first, n);
        }
        let at = slot.vals_at as usize;
        for (f, n) in numbers.enumerate() {
            fold(&mut self.vals[at + f * 3..at + f * 3 + 3], n);
        }
    }

    /// The slot of `key`, claimed (with empty aggregates) if it is new.
    #[inline]
    fn slot_of(&mut self, hash: u64, key: &[u8]) -> usize {
        if (self.len + 1) * 10 > self.slots.len() * 7 {
            self.grow();
        }
        let prefix = prefix_of(key);
        let len = key.len() as u32;
        let mask = self.slots.len() - 1;
        let mut i = hash as usize & mask;
        loop {
            let s = &self.slots[i];
            if s.count == 0 {
                // A new key: claim this slot.
                let key_at = self.keys.len() as u32;
                self.keys.extend_from_slice(key);
                let vals_at = self.vals.len() as u32;
                for _ in 1..self.stride / 3 {
                    self.vals.extend_from_slice(&EMPTY_AGG);
                }
                self.slots[i] = Slot {
                    hash,
                    prefix,
                    key_len: len,
                    key_at,
                    count: 0,
                    first: EMPTY_AGG,
                    vals_at,
                    dirty: false,
                };
                self.len += 1;
                return i;
            }
            if s.hash == hash
                && s.prefix == prefix
                && s.key_len == len
                && (len <= 8
                    || &self.keys[s.key_at as usize..(s.key_at + s.key_len) as usize] == key)
            {
                return i;
            }
            i = (i + 1) & mask;
        }
    }

    /// Doubles the table, placing every key again.
    #[cold]
    fn grow(&mut self) {
        let doubled = vec![EMPTY_SLOT; self.slots.len() * 2];
        let old = std::mem::replace(&mut self.slots, doubled);
        let mask = self.slots.len() - 1;
        for s in old.into_iter().filter(|s| s.count > 0) {
            let mut i = s.hash as usize & mask;
            while self.slots[i].count > 0 {
                i = (i + 1) & mask;
            }
            self.slots[i] = s;
        }
    }

    /// Emits one row per key into `out`, keys in ascending byte order (so output is
    /// reproducible), and consumes the window.
    pub fn emit(self, start: i64, end: i64, out: &mut WindowRows) {
        let slots: Vec<Slot> = self.slots.iter().filter(|s| s.count > 0).copied().collect();
        self.emit_slots(slots, start, end, out);
    }

    /// Adds a key's whole state (as [`for_each_key`](Self::for_each_key) gives it):
    /// `count` events whose number fields folded to `aggs` (sum, min, max per field).
    /// Merging the states of two tables gives the table of all their events.
    pub fn merge_key(&mut self, hash: u64, key: &[u8], count: u64, aggs: &[f64], dirty: bool) {
        if count == 0 {
            return;
        }
        let i = self.slot_of(hash, key);
        let slot = &mut self.slots[i];
        slot.count += count;
        slot.dirty |= dirty || self.fired;
        let merge = |a: &mut [f64], b: &[f64]| {
            a[0] += b[0];
            a[1] = a[1].min(b[1]);
            a[2] = a[2].max(b[2]);
        };
        if aggs.len() >= 3 {
            merge(&mut slot.first, &aggs[..3]);
        }
        let at = slot.vals_at as usize;
        for f in 1..self.stride / 3 {
            merge(
                &mut self.vals[at + (f - 1) * 3..at + f * 3],
                &aggs[f * 3..f * 3 + 3],
            );
        }
    }

    /// Calls `f(hash, key, count, aggs, dirty)` for every key, `aggs` holding sum, min
    /// and max of each number field in order.
    pub fn for_each_key(&self, mut f: impl FnMut(u64, &[u8], u64, &[f64], bool)) {
        let mut aggs = Vec::with_capacity(self.stride);
        for s in self.slots.iter().filter(|s| s.count > 0) {
            aggs.clear();
            if self.stride > 0 {
                aggs.extend_from_slice(&s.first);
                let at = s.vals_at as usize;
                aggs.extend_from_slice(&self.vals[at..at + self.stride - 3]);
            }
            let key = &self.keys[s.key_at as usize..(s.key_at + s.key_len) as usize];
            f(s.hash, key, s.count, &aggs, s.dirty);
        }
    }

    /// Marks the window as having emitted its rows (restored from a checkpoint).
    pub fn set_fired(&mut self, fired: bool) {
        self.fired = fired;
    }

    /// True once the window has emitted its rows ([`emit_changes`](Self::emit_changes)).
    pub fn has_fired(&self) -> bool {
        self.fired
    }

    /// Emits the rows not emitted yet and keeps the window (it is still taking late
    /// events): every key the first time, then only the keys changed since. Returns
    /// the number of rows emitted.
    pub fn emit_changes(&mut self, start: i64, end: i64, out: &mut WindowRows) -> usize {
        let fired = self.fired;
        let mut slots = Vec::new();
        for s in self.slots.iter_mut().filter(|s| s.count > 0) {
            if !fired || s.dirty {
                s.dirty = false;
                slots.push(*s);
            }
        }
        self.fired = true;
        let n = slots.len();
        self.emit_slots(slots, start, end, out);
        n
    }

    /// Emits `slots`' rows in ascending key order.
    fn emit_slots(&self, mut slots: Vec<Slot>, start: i64, end: i64, out: &mut WindowRows) {
        let schema = out.schema.clone();
        let keys = &self.keys;
        let key_of = |s: &Slot| &keys[s.key_at as usize..(s.key_at + s.key_len) as usize];
        slots.sort_unstable_by(|a, b| key_of(a).cmp(key_of(b)));
        out.starts.reserve(slots.len());
        out.ends.reserve(slots.len());
        out.key_ends.reserve(slots.len());
        out.values.reserve(slots.len() * schema.columns.len());
        for s in &slots {
            out.starts.push(start);
            out.ends.push(end);
            out.key_data.extend_from_slice(key_of(s));
            out.key_ends.push(out.key_data.len() as u32);
            let arena = &self.vals[s.vals_at as usize..];
            let agg = |field: usize| -> &[f64] {
                if field == 0 {
                    &s.first
                } else {
                    &arena[(field - 1) * 3..field * 3]
                }
            };
            for &(func, field) in &schema.plan {
                let x = match func {
                    AggFunc::Count => s.count as f64,
                    AggFunc::Sum => agg(field)[0],
                    AggFunc::Min => agg(field)[1],
                    AggFunc::Max => agg(field)[2],
                    AggFunc::Mean => agg(field)[0] / s.count as f64,
                };
                out.values.push(x);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn spec(func: AggFunc, field: Option<&str>, column: &str) -> AggregateSpec {
        AggregateSpec::new(func, field).named(column)
    }

    #[test]
    fn tumbling_and_sliding_assignment() {
        let t = Windowing::new(&WindowSpec::Tumbling {
            size: Duration::from_secs(1),
        });
        let mut starts = vec![];
        t.for_each_open(2_500, i64::MIN, |s| starts.push(s));
        assert_eq!(starts, vec![2_000]);
        assert_eq!(t.last_end(2_500), 3_000);
        assert_eq!(t.last_start(-1), -1_000, "negative times floor correctly");

        let s = Windowing::new(&WindowSpec::Sliding {
            size: Duration::from_secs(3),
            slide: Duration::from_secs(1),
        });
        let mut starts = vec![];
        s.for_each_open(2_500, i64::MIN, |x| starts.push(x));
        assert_eq!(starts, vec![2_000, 1_000, 0]);
        let mut open = vec![];
        s.for_each_open(2_500, 3_000, |x| open.push(x));
        assert_eq!(
            open,
            vec![2_000, 1_000],
            "windows ending at or before the cutoff are skipped"
        );
        let mut starts = vec![];
        s.for_each_open(3_000, i64::MIN, |x| starts.push(x));
        assert_eq!(
            starts,
            vec![3_000, 2_000, 1_000],
            "a window's end is exclusive"
        );
    }

    #[test]
    fn the_table_grows_and_agrees_with_a_hash_map() {
        use std::collections::HashMap;
        let schema = Arc::new(RowSchema::new(
            &[
                spec(AggFunc::Count, None, "count"),
                spec(AggFunc::Sum, Some("v"), "sum_v"),
                spec(AggFunc::Max, Some("w"), "max_w"),
            ],
            &["v".into(), "w".into()],
        ));
        let mut t = WindowTable::new(2);
        let mut want: HashMap<String, (u64, f64, f64)> = HashMap::new();
        let mut rng = crate::sources::generator::EventRng::new(9, 0);
        for i in 0..50_000u64 {
            // Short and long keys; a few hashes forced to collide in the low bits.
            let k = rng.below(7_000);
            let key = if k.is_multiple_of(3) {
                format!("a-much-longer-key-{k}")
            } else {
                format!("k{k}")
            };
            let hash = if k.is_multiple_of(10) {
                42
            } else {
                crate::event::key_hash(key.as_bytes())
            };
            let (v, w) = ((i % 17) as f64, (i % 23) as f64 - 5.0);
            t.add(hash, key.as_bytes(), [v, w].into_iter());
            let e = want.entry(key).or_insert((0, 0.0, f64::NEG_INFINITY));
            e.0 += 1;
            e.1 += v;
            e.2 = e.2.max(w);
        }
        assert_eq!(t.len(), want.len());
        let mut rows = WindowRows::new(schema);
        t.emit(0, 1, &mut rows);
        assert_eq!(rows.len(), want.len());
        for i in 0..rows.len() {
            let (count, sum, max) = want[rows.key(i)];
            assert_eq!(
                (rows.value(i, 0), rows.value(i, 1), rows.value(i, 2)),
                (count as f64, sum, max),
                "{}",
                rows.key(i)
            );
            assert!(
                i == 0 || rows.key(i - 1) < rows.key(i),
                "rows are sorted by key"
            );
        }
    }

    #[test]
    fn table_aggregates_per_key() {
        let aggs = vec![
            spec(AggFunc::Count, None, "count"),
            spec(AggFunc::Sum, Some("v"), "sum_v"),
            spec(AggFunc::Min, Some("v"), "min_v"),
            spec(AggFunc::Max, Some("w"), "max_w"),
            spec(AggFunc::Mean, Some("v"), "mean_v"),
        ];
        let schema = Arc::new(RowSchema::new(&aggs, &["v".into(), "w".into()]));
        let mut t = WindowTable::new(2);
        for (key, v, w) in [
            ("b", 1.0, 10.0),
            ("a", 2.0, -1.0),
            ("b", 3.0, 5.0),
            ("b", -4.0, 7.0),
        ] {
            t.add(
                crate::event::key_hash(key.as_bytes()),
                key.as_bytes(),
                [v, w].into_iter(),
            );
        }
        let mut rows = WindowRows::new(schema);
        t.emit(0, 1000, &mut rows);
        assert_eq!(rows.len(), 2);
        assert_eq!((rows.key(0), rows.key(1)), ("a", "b"));
        let row = |i: usize| (0..5).map(|c| rows.value(i, c)).collect::<Vec<_>>();
        assert_eq!(row(0), vec![1.0, 2.0, 2.0, -1.0, 2.0]);
        assert_eq!(row(1), vec![3.0, 0.0, -4.0, 10.0, 0.0]);
        assert_eq!((rows.window_start(1), rows.window_end(1)), (0, 1000));
    }
}
