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
//!
//! # Aggregates
//!
//! | aggregate | answer | error | memory per key |
//! |---|---|---|---|
//! | `count` | events | exact | in the slot |
//! | `sum(F)`, `min(F)`, `max(F)`, `mean(F)` | sum, extremes, sum/count | exact (floating-point sums) | 24 bytes per field (the first field in the slot) |
//! | `distinct(F)` | distinct values of F ([`Distinct`], HyperLogLog `p = 12`) | exact up to rare hash collisions while a key has at most 1024 distinct values; then standard error 1.6% (`1.04 / 64`); tested within 3 standard errors | 32 bytes + 4 bytes per distinct value up to 1024, then 4 KiB |
//! | `quantile(F, Q)`, `pNN(F)` | the value of rank `floor(Q (n - 1))` ([`Quantiles`], DDSketch) | relative 1%: `\|v - x\| <= 0.01 \|x\|`; the 0 and 1 quantiles are the exact min and max | ~170 bytes + 8 bytes per bin (`ln(max/min) / 0.02` bins per sign, at most 48 KiB); every quantile of one field shares one sketch |
//! | `ewma(F, H)` | `Σ x_i 2^(-(T - t_i)/H) / Σ 2^(-(T - t_i)/H)`, `T` the key's latest event time in the window ([`DecayedMean`]) | floating-point rounding (~1e-12 relative) | 24 bytes |
//!
//! Sketch aggregates are kept only when configured: a table without them does the same
//! work per event as before they existed. The sketches of a key live in arenas indexed
//! by the key's ordinal (its insertion rank), so the slot stays one 64-byte cache line.
//! A key whose sketch is empty (only non-finite numbers) emits NaN, which the sinks
//! write as NULL (`null` in JSON).

use std::sync::Arc;

use crate::budget::Lease;
use crate::config::{AggFunc, AggregateSpec, WindowSpec};
use crate::sketch::{DecayedMean, Distinct, Quantiles, hash_f64};

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

/// How one column of a row is computed.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Col {
    Count,
    Sum(usize),
    Min(usize),
    Max(usize),
    Mean(usize),
    /// Index of the key's `Distinct` sketch.
    Distinct(usize),
    /// Index of the key's `Quantiles` sketch, and the quantile.
    Quantile(usize, f64),
    /// Index of the key's `DecayedMean`.
    Ewma(usize),
}

/// The sketches each key keeps for a schema's sketch aggregates (`distinct`,
/// `quantile`, `ewma`): per kind, the number field each sketch reads (and for `ewma`
/// its half-life in milliseconds). Aggregates that can share a sketch do: every
/// quantile of one field reads one [`Quantiles`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SketchPlan {
    distinct: Vec<usize>,
    quantiles: Vec<usize>,
    ewma: Vec<(usize, i64)>,
}

impl SketchPlan {
    /// True if no sketch is kept.
    pub fn is_empty(&self) -> bool {
        self.distinct.is_empty() && self.quantiles.is_empty() && self.ewma.is_empty()
    }

    /// Appends a description of the plan (for state checkpoints, to check that saved
    /// sketches fit the pipeline's aggregates).
    pub fn encode(&self, out: &mut Vec<u8>) {
        use crate::sketch::wire::put_varint;
        put_varint(out, self.distinct.len() as u64);
        for &f in &self.distinct {
            put_varint(out, f as u64);
        }
        put_varint(out, self.quantiles.len() as u64);
        for &f in &self.quantiles {
            put_varint(out, f as u64);
        }
        put_varint(out, self.ewma.len() as u64);
        for &(f, h) in &self.ewma {
            put_varint(out, f as u64);
            put_varint(out, h as u64);
        }
    }

    /// Reads a plan written by [`encode`](Self::encode), advancing `input`; `None` if
    /// malformed or if it reads a field at or past `number_fields`.
    pub fn decode(input: &mut &[u8], number_fields: usize) -> Option<Self> {
        use crate::sketch::wire::get_varint;
        let field = |input: &mut &[u8]| {
            usize::try_from(get_varint(input)?)
                .ok()
                .filter(|&f| f < number_fields)
        };
        let count = |input: &mut &[u8]| {
            usize::try_from(get_varint(input)?)
                .ok()
                .filter(|&n| n <= 4096)
        };
        let mut plan = SketchPlan::default();
        for _ in 0..count(input)? {
            plan.distinct.push(field(input)?);
        }
        for _ in 0..count(input)? {
            plan.quantiles.push(field(input)?);
        }
        for _ in 0..count(input)? {
            let f = field(input)?;
            let h = i64::try_from(get_varint(input)?).ok().filter(|&h| h >= 1)?;
            plan.ewma.push((f, h));
        }
        Some(plan)
    }
}

/// The aggregate columns of the rows a pipeline produces, after `window_start`,
/// `window_end` and `key`.
#[derive(Debug, Clone, PartialEq)]
pub struct RowSchema {
    columns: Vec<(String, ColumnKind)>,
    /// How each column is computed.
    plan: Vec<Col>,
    number_fields: usize,
    /// The sketches per key, when a sketch aggregate is configured.
    sketches: Option<Arc<SketchPlan>>,
}

impl RowSchema {
    /// The schema for `aggregates`, reading the numbers named in `number_fields` (the
    /// order the event records carry them in). Plans the sketches per key: one
    /// `Distinct` per field counted, one `Quantiles` per field whose quantiles are
    /// asked (shared by all its quantile columns), one `DecayedMean` per field and
    /// half-life.
    ///
    /// # Panics
    /// If an aggregate names a field missing from `number_fields` (the config validation
    /// guarantees it is not).
    pub fn new(aggregates: &[AggregateSpec], number_fields: &[String]) -> Self {
        let mut columns = Vec::with_capacity(aggregates.len());
        let mut plan = Vec::with_capacity(aggregates.len());
        let mut sketches = SketchPlan::default();
        fn slot_of<T: PartialEq>(list: &mut Vec<T>, item: T) -> usize {
            match list.iter().position(|x| *x == item) {
                Some(i) => i,
                None => {
                    list.push(item);
                    list.len() - 1
                }
            }
        }
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
            plan.push(match a.func {
                AggFunc::Count => Col::Count,
                AggFunc::Sum => Col::Sum(field),
                AggFunc::Min => Col::Min(field),
                AggFunc::Max => Col::Max(field),
                AggFunc::Mean => Col::Mean(field),
                AggFunc::Distinct => Col::Distinct(slot_of(&mut sketches.distinct, field)),
                AggFunc::Quantile { ppm } => Col::Quantile(
                    slot_of(&mut sketches.quantiles, field),
                    f64::from(ppm) / 1e6,
                ),
                AggFunc::Ewma { half_life } => {
                    let ms = i64::try_from(half_life.as_millis())
                        .unwrap_or(i64::MAX)
                        .max(1);
                    Col::Ewma(slot_of(&mut sketches.ewma, (field, ms)))
                }
            });
        }
        RowSchema {
            columns,
            plan,
            number_fields: number_fields.len(),
            sketches: (!sketches.is_empty()).then(|| Arc::new(sketches)),
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

    /// The sketches each key keeps; `None` without sketch aggregates.
    pub fn sketches(&self) -> Option<&Arc<SketchPlan>> {
        self.sketches.as_ref()
    }
}

/// The sketches of one key, borrowed: what [`WindowTable::for_each_key`] and
/// [`Accumulator::sketches`] give to be saved, and [`WindowTable::merge_key`] takes.
#[derive(Debug, Clone, Copy)]
pub struct KeySketches<'a> {
    plan: &'a Arc<SketchPlan>,
    distinct: &'a [Distinct],
    quantiles: &'a [Quantiles],
    ewma: &'a [DecayedMean],
}

impl<'a> KeySketches<'a> {
    /// The plan the sketches follow.
    pub fn plan(&self) -> &'a Arc<SketchPlan> {
        self.plan
    }

    /// Appends the sketches' encodings, in plan order.
    pub fn encode(&self, out: &mut Vec<u8>) {
        for d in self.distinct {
            d.encode(out);
        }
        for q in self.quantiles {
            q.encode(out);
        }
        for m in self.ewma {
            m.encode(out);
        }
    }
}

/// The sketches of one key, owned: read back from a state checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct OwnedKeySketches {
    plan: Arc<SketchPlan>,
    distinct: Vec<Distinct>,
    quantiles: Vec<Quantiles>,
    ewma: Vec<DecayedMean>,
}

impl OwnedKeySketches {
    /// Reads the sketches [`KeySketches::encode`] wrote for `plan`, advancing `input`;
    /// `None` if malformed or made with other parameters than the tables use (so a
    /// damaged file can never make a merge panic).
    pub fn decode(input: &mut &[u8], plan: &Arc<SketchPlan>) -> Option<Self> {
        let mut s = OwnedKeySketches {
            plan: plan.clone(),
            distinct: Vec::with_capacity(plan.distinct.len()),
            quantiles: Vec::with_capacity(plan.quantiles.len()),
            ewma: Vec::with_capacity(plan.ewma.len()),
        };
        for _ in 0..plan.distinct.len() {
            let d = Distinct::decode(input)?;
            (d.precision() == Distinct::DEFAULT_PRECISION).then_some(())?;
            s.distinct.push(d);
        }
        for _ in 0..plan.quantiles.len() {
            let q = Quantiles::decode(input)?;
            (q.relative_accuracy() == Quantiles::DEFAULT_RELATIVE_ACCURACY
                && q.max_bins() == Quantiles::DEFAULT_MAX_BINS)
                .then_some(())?;
            s.quantiles.push(q);
        }
        for _ in 0..plan.ewma.len() {
            s.ewma.push(DecayedMean::decode(input)?);
        }
        Some(s)
    }

    /// The sketches, borrowed.
    pub fn as_ref(&self) -> KeySketches<'_> {
        KeySketches {
            plan: &self.plan,
            distinct: &self.distinct,
            quantiles: &self.quantiles,
            ewma: &self.ewma,
        }
    }
}

/// Per-key sketches of many keys: arenas indexed by key ordinal times the number of
/// sketches of each kind. Arenas grow lazily to cover the ordinals used.
#[derive(Debug, Clone)]
struct Sketches {
    plan: Arc<SketchPlan>,
    distinct: Vec<Distinct>,
    quantiles: Vec<Quantiles>,
    ewma: Vec<DecayedMean>,
    /// Bytes the sketches hold on their own heap (not the arenas), kept up to date.
    inner_heap: usize,
}

impl Sketches {
    fn new(plan: Arc<SketchPlan>) -> Self {
        Sketches {
            plan,
            distinct: Vec::new(),
            quantiles: Vec::new(),
            ewma: Vec::new(),
            inner_heap: 0,
        }
    }

    /// Makes the arenas cover key ordinal `ord`.
    #[inline]
    fn ensure(&mut self, ord: usize) {
        let (nd, nq, ne) = (
            self.plan.distinct.len(),
            self.plan.quantiles.len(),
            self.plan.ewma.len(),
        );
        if self.distinct.len() < (ord + 1) * nd {
            self.distinct.resize_with((ord + 1) * nd, Distinct::default);
        }
        if self.quantiles.len() < (ord + 1) * nq {
            self.quantiles
                .resize_with((ord + 1) * nq, Quantiles::default);
        }
        if self.ewma.len() < (ord + 1) * ne {
            self.ewma.resize((ord + 1) * ne, DecayedMean::new());
        }
    }

    /// Adds one event of key `ord` at `ts`.
    #[inline]
    fn add(&mut self, ord: usize, ts: i64, numbers: &[f64]) {
        self.ensure(ord);
        let plan = &*self.plan;
        let nd = plan.distinct.len();
        for (d, &f) in self.distinct[ord * nd..].iter_mut().zip(&plan.distinct) {
            let before = d.heap_bytes();
            d.add_hash(hash_f64(numbers[f]));
            self.inner_heap = self.inner_heap + d.heap_bytes() - before;
        }
        let nq = plan.quantiles.len();
        for (q, &f) in self.quantiles[ord * nq..].iter_mut().zip(&plan.quantiles) {
            let before = q.heap_bytes();
            q.add(numbers[f]);
            self.inner_heap = self.inner_heap + q.heap_bytes() - before;
        }
        let ne = plan.ewma.len();
        for (m, &(f, h)) in self.ewma[ord * ne..].iter_mut().zip(&plan.ewma) {
            m.add(numbers[f], ts, h);
        }
    }

    /// The sketches of key `ord` (empty slices if it has none yet).
    fn key(&self, ord: usize) -> KeySketches<'_> {
        let part = |len: usize, n: usize| {
            if len >= (ord + 1) * n {
                ord * n..(ord + 1) * n
            } else {
                0..0
            }
        };
        KeySketches {
            plan: &self.plan,
            distinct: &self.distinct[part(self.distinct.len(), self.plan.distinct.len())],
            quantiles: &self.quantiles[part(self.quantiles.len(), self.plan.quantiles.len())],
            ewma: &self.ewma[part(self.ewma.len(), self.plan.ewma.len())],
        }
    }

    /// Merges `other` (same plan) into key `ord`.
    fn merge_key(&mut self, ord: usize, other: KeySketches<'_>) {
        self.ensure(ord);
        let plan = &*self.plan;
        let nd = plan.distinct.len();
        for (d, o) in self.distinct[ord * nd..(ord + 1) * nd]
            .iter_mut()
            .zip(other.distinct)
        {
            let before = d.heap_bytes();
            d.merge(o);
            self.inner_heap = self.inner_heap + d.heap_bytes() - before;
        }
        let nq = plan.quantiles.len();
        for (q, o) in self.quantiles[ord * nq..(ord + 1) * nq]
            .iter_mut()
            .zip(other.quantiles)
        {
            let before = q.heap_bytes();
            q.merge(o);
            self.inner_heap = self.inner_heap + q.heap_bytes() - before;
        }
        let ne = plan.ewma.len();
        for ((m, o), &(_, h)) in self.ewma[ord * ne..(ord + 1) * ne]
            .iter_mut()
            .zip(other.ewma)
            .zip(&plan.ewma)
        {
            m.merge(o, h);
        }
    }

    fn heap_bytes(&self) -> usize {
        self.distinct.capacity() * std::mem::size_of::<Distinct>()
            + self.quantiles.capacity() * std::mem::size_of::<Quantiles>()
            + self.ewma.capacity() * std::mem::size_of::<DecayedMean>()
            + self.inner_heap
    }

    /// The value of sketch column `col` for key `ord`; NaN if the key has no such
    /// sketch or it is empty.
    fn value(&self, ord: usize, col: Col) -> f64 {
        let k = self.key(ord);
        match col {
            Col::Distinct(j) => k.distinct.get(j).map_or(f64::NAN, Distinct::estimate),
            Col::Quantile(j, q) => k
                .quantiles
                .get(j)
                .and_then(|s| s.quantile(q))
                .unwrap_or(f64::NAN),
            Col::Ewma(j) => k
                .ewma
                .get(j)
                .and_then(DecayedMean::value)
                .unwrap_or(f64::NAN),
            _ => f64::NAN,
        }
    }
}

/// The table's sketches when they follow `schema`'s plan.
fn sketches_for<'a>(
    sketches: &'a Option<Box<Sketches>>,
    schema: &RowSchema,
) -> Option<&'a Sketches> {
    let sk = sketches.as_deref()?;
    let plan = schema.sketches.as_ref()?;
    (Arc::ptr_eq(&sk.plan, plan) || sk.plan == *plan).then_some(sk)
}

/// The sketches, created for (or switched to) `plan`: a table restored for another
/// plan starts its sketches over (see [`crate::state::load`], which refuses such
/// state).
#[cold]
fn sketches_adopt(sketches: &mut Option<Box<Sketches>>, plan: &Arc<SketchPlan>) {
    match sketches {
        Some(sk) if sk.plan == *plan => sk.plan = plan.clone(),
        _ => *sketches = Some(Box::new(Sketches::new(plan.clone()))),
    }
}

/// Adds one event of key `ord` to `sketches` under `plan`.
#[inline]
fn sketches_add(
    sketches: &mut Option<Box<Sketches>>,
    plan: &Arc<SketchPlan>,
    ord: usize,
    ts: i64,
    numbers: &[f64],
) {
    if !sketches
        .as_ref()
        .is_some_and(|sk| Arc::ptr_eq(&sk.plan, plan))
    {
        sketches_adopt(sketches, plan);
    }
    if let Some(sk) = sketches {
        sk.add(ord, ts, numbers);
    }
}

/// Merges `other` into key `ord` of `sketches` (adopting its plan if there is none).
fn sketches_merge(sketches: &mut Option<Box<Sketches>>, ord: usize, other: KeySketches<'_>) {
    if !sketches
        .as_ref()
        .is_some_and(|sk| Arc::ptr_eq(&sk.plan, other.plan))
    {
        sketches_adopt(sketches, other.plan);
    }
    if let Some(sk) = sketches {
        sk.merge_key(ord, other);
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
#[derive(Debug, Clone)]
pub struct Accumulator {
    count: u64,
    /// Sum, minimum and maximum of each number field.
    vals: Vec<f64>,
    /// The sketches, when the schema has sketch aggregates (one key: ordinal 0).
    sketches: Option<Box<Sketches>>,
}

impl PartialEq for Accumulator {
    fn eq(&self, other: &Self) -> bool {
        let sketches = |a: &Self| {
            a.sketches.as_ref().map(|s| OwnedKeySketches {
                plan: s.plan.clone(),
                distinct: s.key(0).distinct.to_vec(),
                quantiles: s.key(0).quantiles.to_vec(),
                ewma: s.key(0).ewma.to_vec(),
            })
        };
        self.count == other.count && self.vals == other.vals && sketches(self) == sketches(other)
    }
}

impl Accumulator {
    /// Empty state for events carrying `number_fields` numbers (sketches are added
    /// when an event comes with a schema that has sketch aggregates).
    pub fn new(number_fields: usize) -> Self {
        let mut vals = Vec::with_capacity(number_fields * 3);
        for _ in 0..number_fields {
            vals.extend_from_slice(&EMPTY_AGG);
        }
        Accumulator {
            count: 0,
            vals,
            sketches: None,
        }
    }

    /// Adds one event at `ts` with its numbers (in field order), keeping the sketches
    /// `schema` asks for.
    #[inline]
    pub fn add(&mut self, ts: i64, numbers: &[f64], schema: &RowSchema) {
        self.count += 1;
        for (f, &n) in numbers.iter().enumerate() {
            fold(&mut self.vals[f * 3..f * 3 + 3], n);
        }
        if let Some(plan) = &schema.sketches {
            sketches_add(&mut self.sketches, plan, 0, ts, numbers);
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
        if let Some(o) = &other.sketches {
            sketches_merge(&mut self.sketches, 0, o.key(0));
        }
    }

    /// The state as saved in a checkpoint: the count, then sum, min and max of each
    /// number field (the sketches are in [`sketches`](Self::sketches)).
    pub fn parts(&self) -> (u64, &[f64]) {
        (self.count, &self.vals)
    }

    /// The sketches, if the accumulator keeps any.
    pub fn sketches(&self) -> Option<KeySketches<'_>> {
        self.sketches.as_ref().map(|s| s.key(0))
    }

    /// State saved with [`parts`](Self::parts) and [`sketches`](Self::sketches);
    /// `None` if `aggs` does not hold three numbers per field.
    pub fn from_parts(
        count: u64,
        aggs: &[f64],
        number_fields: usize,
        sketches: Option<KeySketches<'_>>,
    ) -> Option<Self> {
        (aggs.len() == number_fields * 3).then(|| {
            let mut acc = Accumulator {
                count,
                vals: aggs.to_vec(),
                sketches: None,
            };
            if let Some(k) = sketches {
                sketches_merge(&mut acc.sketches, 0, k);
            }
            acc
        })
    }

    /// Number of events added.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Bytes held on the heap (sketches included).
    pub fn heap_bytes(&self) -> u64 {
        (self.vals.capacity() * 8) as u64 + self.sketch_bytes()
    }

    /// Bytes the sketches hold on the heap (0 without sketch aggregates).
    pub fn sketch_bytes(&self) -> u64 {
        self.sketches.as_ref().map_or(0, |s| {
            (std::mem::size_of::<Sketches>() + s.heap_bytes()) as u64
        })
    }

    /// Appends the row values for `schema`'s columns to `out`.
    fn values(&self, schema: &RowSchema, out: &mut Vec<f64>) {
        let sketches = sketches_for(&self.sketches, schema);
        for &col in &schema.plan {
            let agg = |field: usize, i: usize| self.vals[field * 3 + i];
            out.push(match col {
                Col::Count => self.count as f64,
                Col::Sum(f) => agg(f, 0),
                Col::Min(f) => agg(f, 1),
                Col::Max(f) => agg(f, 2),
                Col::Mean(f) => agg(f, 0) / self.count as f64,
                _ => sketches.map_or(f64::NAN, |s| s.value(0, col)),
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
    /// The key's ordinal (insertion rank): the other number fields' sum/min/max start
    /// at `ord * (stride - 3)` in the value arena, its sketches at `ord * n` in each
    /// sketch arena.
    ord: u32,
    /// Changed since the window last emitted its rows (only tracked once it has).
    dirty: bool,
    /// The key's row has been emitted: emitting it again is a correction.
    emitted: bool,
}

const _: () = assert!(
    std::mem::size_of::<Slot>() == 64,
    "a slot is one cache line"
);

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
fn merge_agg(a: &mut [f64], b: &[f64]) {
    a[0] += b[0];
    a[1] = a[1].min(b[1]);
    a[2] = a[2].max(b[2]);
}

#[inline]
fn prefix_of(key: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = key.len().min(8);
    b[..n].copy_from_slice(&key[..n]);
    u64::from_le_bytes(b)
}

/// The aggregate state of one window: per key, the count, per number field its sum,
/// minimum and maximum, and the sketches of the sketch aggregates (if any).
///
/// An open-addressing table with linear probing over 64-byte slots (one cache line
/// each), at most 70% full. Keys live in an arena, the sums of the second and later
/// number fields in another, and the sketches in one arena per kind, all indexed by
/// the key's ordinal, so adding an event to a known key allocates nothing (sketches
/// grow amortised). The slot of a key is found from its hash alone, which lets a
/// caller [`prefetch`](Self::prefetch) the slot of an event ahead of time, so memory
/// latency overlaps with other work.
#[derive(Debug)]
pub struct WindowTable {
    slots: Vec<Slot>,
    len: usize,
    keys: Vec<u8>,
    vals: Vec<f64>,
    stride: usize,
    /// The window has emitted its rows once; later changes mark their key dirty.
    fired: bool,
    /// Per-key sketches, created on the first event whose schema has sketch aggregates.
    sketches: Option<Box<Sketches>>,
}

const EMPTY_SLOT: Slot = Slot {
    hash: 0,
    prefix: 0,
    key_len: 0,
    key_at: 0,
    count: 0,
    first: EMPTY_AGG,
    ord: 0,
    dirty: false,
    emitted: false,
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
            sketches: None,
        }
    }

    /// Bytes the window holds on the heap (slots, keys, aggregates and sketches).
    pub fn heap_bytes(&self) -> u64 {
        (self.slots.capacity() * std::mem::size_of::<Slot>()
            + self.keys.capacity()
            + self.vals.capacity() * 8
            + self
                .sketches
                .as_ref()
                .map_or(0, |s| std::mem::size_of::<Sketches>() + s.heap_bytes())) as u64
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

    /// Adds one event at time `ts`: `hash` is [`crate::event::key_hash`] of `key`,
    /// `numbers` its aggregated numbers in field order (`schema.number_fields()` of
    /// them). The sketches `schema` plans are updated too; without sketch aggregates
    /// that costs one branch.
    #[inline]
    pub fn add(&mut self, hash: u64, key: &[u8], ts: i64, numbers: &[f64], schema: &RowSchema) {
        let i = self.slot_of(hash, key);
        let slot = &mut self.slots[i];
        slot.count += 1;
        slot.dirty |= self.fired;
        if let Some((&n, rest)) = numbers.split_first() {
            fold(&mut slot.first, n);
            let at = slot.ord as usize * (self.stride - 3);
            for (f, &n) in rest.iter().enumerate() {
                fold(&mut self.vals[at + f * 3..at + f * 3 + 3], n);
            }
        }
        if let Some(plan) = &schema.sketches {
            let ord = slot.ord as usize;
            sketches_add(&mut self.sketches, plan, ord, ts, numbers);
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
                    ord: self.len as u32,
                    dirty: false,
                    emitted: false,
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

    /// The sum/min/max of the second and later number fields of the key in `slot`.
    fn rest_of(&self, slot: &Slot) -> &[f64] {
        let n = self.stride.saturating_sub(3);
        let at = slot.ord as usize * n;
        &self.vals[at..at + n]
    }

    /// Adds a key's whole state (as [`for_each_key`](Self::for_each_key) gives it):
    /// `count` events whose number fields folded to `aggs` (sum, min, max per field)
    /// and whose sketches are `sketches`. Merging the states of two tables gives the
    /// table of all their events.
    pub fn merge_key(
        &mut self,
        hash: u64,
        key: &[u8],
        count: u64,
        aggs: &[f64],
        sketches: Option<KeySketches<'_>>,
        dirty: bool,
    ) {
        if count == 0 {
            return;
        }
        let i = self.slot_of(hash, key);
        let slot = &mut self.slots[i];
        slot.count += count;
        slot.dirty |= dirty || self.fired;
        // Restored into a fired window: its row was emitted, unless it is still dirty
        // from a key new since the firing (counted as a first emission, not as a
        // correction; a restart may count such a key as a correction once).
        slot.emitted |= self.fired && !dirty;
        if aggs.len() >= 3 {
            merge_agg(&mut slot.first, &aggs[..3]);
        }
        let ord = slot.ord as usize;
        let at = ord * self.stride.saturating_sub(3);
        for f in 1..self.stride / 3 {
            merge_agg(
                &mut self.vals[at + (f - 1) * 3..at + f * 3],
                &aggs[f * 3..f * 3 + 3],
            );
        }
        if let Some(k) = sketches {
            sketches_merge(&mut self.sketches, ord, k);
        }
    }

    /// Adds every key of `other` (a table for the same number fields and schema):
    /// counts, sums, minima, maxima and sketches. The result is the table of both
    /// tables' events: sketches merge exactly (`distinct`, `quantile`; `ewma` up to
    /// rounding) and sums equal one table's whenever the sums are exact (e.g. integer
    /// values). For two-stage (pre-aggregated) windows.
    pub fn merge_from(&mut self, other: &WindowTable) {
        let other_sketches = other.sketches.as_deref();
        for s in other.slots.iter().filter(|s| s.count > 0) {
            let i = self.slot_of(s.hash, other.key_of(s));
            let slot = &mut self.slots[i];
            slot.count += s.count;
            slot.dirty |= s.dirty || self.fired;
            merge_agg(&mut slot.first, &s.first);
            let ord = slot.ord as usize;
            let n = self.stride.saturating_sub(3);
            let from = other.rest_of(s);
            for (a, b) in self.vals[ord * n..ord * n + n]
                .chunks_exact_mut(3)
                .zip(from.chunks_exact(3))
            {
                merge_agg(a, b);
            }
            if let Some(o) = other_sketches {
                sketches_merge(&mut self.sketches, ord, o.key(s.ord as usize));
            }
        }
    }

    fn key_of(&self, s: &Slot) -> &[u8] {
        &self.keys[s.key_at as usize..(s.key_at + s.key_len) as usize]
    }

    /// Calls `f(hash, key, count, aggs, sketches, dirty)` for every key, `aggs` holding
    /// sum, min and max of each number field in order, `sketches` the key's sketches
    /// (`None` if the table keeps none).
    pub fn for_each_key(
        &self,
        mut f: impl FnMut(u64, &[u8], u64, &[f64], Option<KeySketches<'_>>, bool),
    ) {
        let mut aggs = Vec::with_capacity(self.stride);
        for s in self.slots.iter().filter(|s| s.count > 0) {
            aggs.clear();
            if self.stride > 0 {
                aggs.extend_from_slice(&s.first);
                aggs.extend_from_slice(self.rest_of(s));
            }
            let sketches = self.sketches.as_ref().map(|sk| sk.key(s.ord as usize));
            f(s.hash, self.key_of(s), s.count, &aggs, sketches, s.dirty);
        }
    }

    /// The plan of the sketches the table keeps, if any.
    pub fn sketch_plan(&self) -> Option<&Arc<SketchPlan>> {
        self.sketches.as_ref().map(|s| &s.plan)
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
    /// the number of rows emitted, and how many of them are corrections (rows of keys
    /// emitted before).
    pub fn emit_changes(&mut self, start: i64, end: i64, out: &mut WindowRows) -> (usize, usize) {
        let fired = self.fired;
        let mut slots = Vec::new();
        let mut corrections = 0;
        for s in self.slots.iter_mut().filter(|s| s.count > 0) {
            if !fired || s.dirty {
                corrections += usize::from(s.emitted);
                s.dirty = false;
                s.emitted = true;
                slots.push(*s);
            }
        }
        self.fired = true;
        let n = slots.len();
        self.emit_slots(slots, start, end, out);
        (n, corrections)
    }

    /// Emits `slots`' rows in ascending key order.
    fn emit_slots(&self, mut slots: Vec<Slot>, start: i64, end: i64, out: &mut WindowRows) {
        let schema = out.schema.clone();
        slots.sort_unstable_by(|a, b| self.key_of(a).cmp(self.key_of(b)));
        out.starts.reserve(slots.len());
        out.ends.reserve(slots.len());
        out.key_ends.reserve(slots.len());
        out.values.reserve(slots.len() * schema.columns.len());
        let sketches = sketches_for(&self.sketches, &schema);
        for s in &slots {
            out.starts.push(start);
            out.ends.push(end);
            out.key_data.extend_from_slice(self.key_of(s));
            out.key_ends.push(out.key_data.len() as u32);
            let rest = self.rest_of(s);
            let agg = |field: usize| -> &[f64] {
                if field == 0 {
                    &s.first
                } else {
                    &rest[(field - 1) * 3..field * 3]
                }
            };
            for &col in &schema.plan {
                let x = match col {
                    Col::Count => s.count as f64,
                    Col::Sum(f) => agg(f)[0],
                    Col::Min(f) => agg(f)[1],
                    Col::Max(f) => agg(f)[2],
                    Col::Mean(f) => agg(f)[0] / s.count as f64,
                    _ => sketches.map_or(f64::NAN, |sk| sk.value(s.ord as usize, col)),
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
            t.add(hash, key.as_bytes(), i as i64, &[v, w], &schema);
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
        for (ts, (key, v, w)) in [
            ("b", 1.0, 10.0),
            ("a", 2.0, -1.0),
            ("b", 3.0, 5.0),
            ("b", -4.0, 7.0),
        ]
        .into_iter()
        .enumerate()
        {
            t.add(
                crate::event::key_hash(key.as_bytes()),
                key.as_bytes(),
                ts as i64,
                &[v, w],
                &schema,
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

    /// Every aggregate, on fields `v` (values) and `u` (ids).
    fn all_aggregates() -> Vec<AggregateSpec> {
        [
            "count",
            "sum(v)",
            "min(v)",
            "max(u)",
            "mean(v)",
            "distinct(u)",
            "quantile(v, 0.5) as median",
            "p99(v)",
            "quantile(v, 0) as q0",
            "quantile(u, 0.9)",
            "ewma(v, 10s)",
            "ewma(v, 1s) as fast",
            "distinct(u) as again",
        ]
        .iter()
        .map(|t| t.parse().unwrap())
        .collect()
    }

    fn all_schema() -> Arc<RowSchema> {
        Arc::new(RowSchema::new(&all_aggregates(), &["v".into(), "u".into()]))
    }

    fn rows_of(rows: &WindowRows) -> Vec<(String, Vec<f64>)> {
        let width = rows.schema().columns().len();
        (0..rows.len())
            .map(|i| {
                let vals = (0..width).map(|c| rows.value(i, c)).collect();
                (rows.key(i).to_owned(), vals)
            })
            .collect()
    }

    #[test]
    fn sketches_are_shared_and_planned_once() {
        let schema = all_schema();
        let plan = schema.sketches().unwrap();
        assert_eq!(
            plan.distinct,
            vec![1],
            "two distinct(u) columns share one sketch"
        );
        assert_eq!(
            plan.quantiles,
            vec![0, 1],
            "quantiles of v share one sketch"
        );
        assert_eq!(plan.ewma, vec![(0, 10_000), (0, 1_000)]);
        let kinds: Vec<ColumnKind> = schema.columns().iter().map(|c| c.1).collect();
        assert_eq!(kinds[0], ColumnKind::Integer);
        assert!(kinds[1..].iter().all(|&k| k == ColumnKind::Real));
        let plain = RowSchema::new(&[AggregateSpec::count()], &[]);
        assert!(
            plain.sketches().is_none(),
            "no sketch aggregate, no sketches"
        );
        assert_eq!(std::mem::size_of::<Slot>(), 64);
    }

    #[test]
    fn every_aggregate_agrees_with_exact_answers() {
        use std::collections::HashMap;
        let schema = all_schema();
        let mut t = WindowTable::new(2);
        let mut rng = crate::sketch::TestRng(7);
        // key -> (ts, v, u) in order added.
        let mut events: HashMap<String, Vec<(i64, f64, f64)>> = HashMap::new();
        for i in 0..60_000i64 {
            let k = rng.below(6);
            let key = format!("key{k}");
            // Key k has about 10^k distinct ids (up to the sparse/dense switch and past it).
            let u = rng.below(10u64.pow(k as u32).min(20_000)) as f64;
            let v = (rng.normal() * 2.0).exp() * 100.0;
            // Mostly ascending event times, some out of order.
            let ts = i * 10 - rng.below(5_000) as i64;
            t.add(
                crate::event::key_hash(key.as_bytes()),
                key.as_bytes(),
                ts,
                &[v, u],
                &schema,
            );
            events.entry(key).or_default().push((ts, v, u));
        }
        assert!(t.heap_bytes() > 6 * 4096, "sketch memory is counted");
        let mut rows = WindowRows::new(schema.clone());
        t.emit(0, 1, &mut rows);
        let rank =
            |sorted: &[f64], q: f64| sorted[(q * (sorted.len() - 1) as f64).floor() as usize];
        for (key, got) in rows_of(&rows) {
            let ev = &events[&key];
            let n = ev.len() as f64;
            let mut vs: Vec<f64> = ev.iter().map(|e| e.1).collect();
            vs.sort_by(f64::total_cmp);
            let mut us: Vec<f64> = ev.iter().map(|e| e.2).collect();
            us.sort_by(f64::total_cmp);
            let sum: f64 = ev.iter().map(|e| e.1).sum();
            assert_eq!(got[0], n, "{key} count");
            assert!((got[1] - sum).abs() <= 1e-9 * sum, "{key} sum");
            assert_eq!(got[2], vs[0], "{key} min");
            assert_eq!(got[3], *us.last().unwrap(), "{key} max");
            assert!((got[4] - sum / n).abs() <= 1e-9 * sum / n, "{key} mean");
            us.dedup();
            let exact = us.len() as f64;
            // Exact-ish while sparse; 3 standard errors (1.04/64) once dense.
            let bound = if exact <= 1024.0 {
                1.0
            } else {
                3.0 * 1.04 / 64.0 * exact
            };
            assert!(
                (got[5] - exact).abs() <= bound,
                "{key} distinct {} vs {exact}",
                got[5]
            );
            assert_eq!(got[12], got[5], "the same sketch");
            for (c, q) in [(6, 0.5), (7, 0.99), (8, 0.0)] {
                let x = rank(&vs, q);
                assert!(
                    (got[c] - x).abs() <= 0.01 * x.abs(),
                    "{key} q{q}: {} vs {x}",
                    got[c]
                );
            }
            assert_eq!(got[8], vs[0], "the 0-quantile is the exact minimum");
            let mut all_u: Vec<f64> = ev.iter().map(|e| e.2).collect();
            all_u.sort_by(f64::total_cmp);
            let x = rank(&all_u, 0.9);
            assert!((got[9] - x).abs() <= 0.01 * x.abs(), "{key} p90(u)");
            for (c, h) in [(10, 10_000.0), (11, 1_000.0)] {
                let latest = ev.iter().map(|e| e.0).max().unwrap();
                let (mut num, mut den) = (0.0, 0.0);
                for &(ts, v, _) in ev {
                    let w = (-((latest - ts) as f64) / h).exp2();
                    num += v * w;
                    den += w;
                }
                let want = num / den;
                assert!(
                    (got[c] - want).abs() <= 1e-9 * want.abs(),
                    "{key} ewma {h}: {} vs {want}",
                    got[c]
                );
            }
        }
    }

    #[test]
    fn a_key_with_only_non_finite_numbers_emits_nan() {
        let schema = Arc::new(RowSchema::new(
            &["count", "p50(v)", "ewma(v, 1s)", "distinct(v)"].map(|t| t.parse().unwrap()),
            &["v".into()],
        ));
        let mut t = WindowTable::new(1);
        t.add(1, b"k", 0, &[f64::NAN], &schema);
        let mut rows = WindowRows::new(schema);
        t.emit(0, 1, &mut rows);
        let r = &rows_of(&rows)[0].1;
        assert_eq!(r[0], 1.0);
        assert!(r[1].is_nan() && r[2].is_nan(), "{r:?}");
        assert!(
            (r[3] - 1.0).abs() < 1e-3,
            "NaN is one distinct value: {}",
            r[3]
        );
    }

    #[test]
    fn sessions_accumulate_sketches() {
        let schema = all_schema();
        let mut a = Accumulator::new(2);
        let mut b = Accumulator::new(2);
        let mut one = Accumulator::new(2);
        for i in 0..1000i64 {
            let (v, u) = ((i % 37) as f64 + 1.0, (i % 101) as f64);
            one.add(i, &[v, u], &schema);
            if i % 3 == 0 { &mut a } else { &mut b }.add(i, &[v, u], &schema);
        }
        a.merge(&b);
        assert!(a.heap_bytes() > one.vals.capacity() as u64 * 8);
        let mut x = WindowRows::new(schema.clone());
        x.push_accumulated(0, 1, b"k", &a);
        let mut y = WindowRows::new(schema.clone());
        y.push_accumulated(0, 1, b"k", &one);
        let (x, y) = (&rows_of(&x)[0].1, &rows_of(&y)[0].1);
        for c in 0..x.len() {
            assert!(
                (x[c] - y[c]).abs() <= 1e-9 * y[c].abs(),
                "column {c}: {} vs {}",
                x[c],
                y[c]
            );
        }
        assert!(
            (y[5] - 101.0).abs() < 0.01,
            "distinct while sparse: {}",
            y[5]
        );
    }

    #[test]
    fn checkpoint_parts_round_trip_through_merge_key() {
        let schema = all_schema();
        let mut t = WindowTable::new(2);
        for i in 0..5000i64 {
            let key = format!("k{}", i % 13);
            t.add(
                crate::event::key_hash(key.as_bytes()),
                key.as_bytes(),
                i,
                &[(i % 97) as f64, (i % 1500) as f64],
                &schema,
            );
        }
        let mut copy = WindowTable::new(2);
        t.for_each_key(|hash, key, count, aggs, sketches, dirty| {
            let mut bytes = Vec::new();
            let k = sketches.unwrap();
            k.encode(&mut bytes);
            let owned = OwnedKeySketches::decode(&mut &bytes[..], k.plan()).unwrap();
            copy.merge_key(hash, key, count, aggs, Some(owned.as_ref()), dirty);
        });
        let (mut a, mut b) = (WindowRows::new(schema.clone()), WindowRows::new(schema));
        t.emit(0, 1, &mut a);
        copy.emit(0, 1, &mut b);
        assert_eq!(rows_of(&a), rows_of(&b));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

        /// Two tables merged give exactly the rows of one table fed every event
        /// (integer values: the sums are exact; ewma up to rounding).
        #[test]
        fn merge_from_equals_one_table(
            events in proptest::collection::vec(
                (0u8..20, -1000i64..1000, -50i32..50, 0u16..3000, proptest::bool::ANY),
                0..400,
            ),
        ) {
            let schema = all_schema();
            let (mut one, mut a, mut b) = (WindowTable::new(2), WindowTable::new(2), WindowTable::new(2));
            for &(k, ts, v, u, left) in &events {
                let key = format!("key-{k}");
                let hash = crate::event::key_hash(key.as_bytes());
                let nums = [f64::from(v), f64::from(u)];
                one.add(hash, key.as_bytes(), ts, &nums, &schema);
                if left { &mut a } else { &mut b }.add(hash, key.as_bytes(), ts, &nums, &schema);
            }
            a.merge_from(&b);
            let (mut x, mut y) = (WindowRows::new(schema.clone()), WindowRows::new(schema.clone()));
            one.emit(0, 1, &mut x);
            a.emit(0, 1, &mut y);
            let (x, y) = (rows_of(&x), rows_of(&y));
            proptest::prop_assert_eq!(x.len(), y.len());
            for ((kx, vx), (ky, vy)) in x.iter().zip(&y) {
                proptest::prop_assert_eq!(kx, ky);
                for (c, (p, q)) in vx.iter().zip(vy).enumerate() {
                    if c == 10 || c == 11 {
                        proptest::prop_assert!((p - q).abs() <= 1e-9 * p.abs().max(1.0), "ewma {} vs {}", p, q);
                    } else {
                        proptest::prop_assert_eq!(p.to_bits(), q.to_bits(), "column {}: {} vs {}", c, p, q);
                    }
                }
            }
        }
    }
}
