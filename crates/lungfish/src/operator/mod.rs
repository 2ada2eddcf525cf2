//! Operators: per-event work between the log and the windows, a micro-batch at a time.
//!
//! A consumer reads a chunk of records from its log partition, decodes them into an
//! [`OperatorBatch`] (key, event time, numbers and the original JSON of each event), and
//! runs the pipeline's operators over it in order ([`OperatorChain`]). Each operator
//! sees the events still *live* and may change their numbers, drop them, or fail them
//! with a reason. Then the live events go on to the windows; the failed ones go to the
//! dead-letter queue (stage `operator:NAME`) with their reason, attempts and log offset,
//! and the rest of the batch proceeds.
//!
//! The chain guards every call:
//! * a **panic** inside an operator is caught; the batch is bisected until the event(s)
//!   that make it panic are isolated, and those are dead-lettered (kind `panic`), so one
//!   poison pill never stops a partition;
//! * a failure marked retryable is retried, for those events only, after a full-jitter
//!   backoff, up to `max_attempts`, while the chain's [`RetryBudget`] allows; then it is
//!   dead-lettered like any failure.
//!
//! Built-in operators: [`filter`] (`type = "filter"`) and `enrich` (`type = "enrich"`,
//! cargo feature `enrich`). A Rust program adds its own with
//! [`Pipeline::with_operator`](crate::Pipeline::with_operator).
//!
//! [`RetryBudget`]: crate::retry::RetryBudget

pub mod chain;
#[cfg(feature = "enrich")]
pub mod enrich;
pub mod filter;

use std::borrow::Cow;

pub use chain::{ChainSettings, OperatorChain};

/// Why an operator gave up on an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// A short, stable label (`filtered`, `unavailable`, `panic`, ...): the dead-letter
    /// entry's kind.
    pub kind: Cow<'static, str>,
    /// What went wrong, for people.
    pub reason: String,
    /// True if trying the same event again later may succeed (an outside service timed
    /// out); false for the event itself being wrong.
    pub retryable: bool,
}

impl Failure {
    /// A failure that retrying cannot mend.
    pub fn permanent(kind: impl Into<Cow<'static, str>>, reason: impl Into<String>) -> Self {
        Failure {
            kind: kind.into(),
            reason: reason.into(),
            retryable: false,
        }
    }

    /// A failure that may pass on a later attempt.
    pub fn transient(kind: impl Into<Cow<'static, str>>, reason: impl Into<String>) -> Self {
        Failure {
            kind: kind.into(),
            reason: reason.into(),
            retryable: true,
        }
    }
}

/// What became of an event in the operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Goes on to the windows.
    Live,
    /// Removed on purpose (a filter): counted, not dead-lettered.
    Dropped,
    /// Failed: dead-lettered with the failure (unless retried first).
    Failed(Failure),
}

/// One event of an [`OperatorBatch`].
#[derive(Debug, Clone)]
pub struct EventSlot<'a> {
    /// The event's log offset in its partition.
    pub offset: u64,
    /// The key.
    pub key: Cow<'a, [u8]>,
    /// Event time, epoch milliseconds.
    pub ts: i64,
    /// The original JSON document.
    pub raw: &'a [u8],
}

/// A micro-batch of decoded events, as operators see it.
///
/// Events are addressed by index. Each carries the pipeline's numbers in the order of
/// [`fields`](Self::fields): the fields extracted from the JSON at ingest first, then
/// those operators provide (NaN until set). Only *visible* events may be touched: the
/// chain hides the others while it retries or bisects part of the batch.
#[derive(Debug)]
pub struct OperatorBatch<'a> {
    events: Vec<EventSlot<'a>>,
    numbers: Vec<f64>,
    width: usize,
    verdicts: Vec<Verdict>,
    attempts: Vec<u32>,
    first_failure_ms: Vec<i64>,
    failed_by: Vec<u16>,
    visible: Vec<bool>,
    fields: &'a [String],
}

impl<'a> OperatorBatch<'a> {
    /// An empty batch of events carrying one number per name in `fields`.
    pub fn new(fields: &'a [String]) -> Self {
        Self::from_memory(fields, BatchMemory::default())
    }

    /// An empty batch in the memory of an earlier one (see [`BatchMemory`]).
    pub(crate) fn from_memory(fields: &'a [String], memory: BatchMemory) -> Self {
        let mut batch = OperatorBatch {
            events: relabel(memory.events),
            numbers: memory.numbers,
            width: fields.len(),
            verdicts: memory.verdicts,
            attempts: memory.attempts,
            first_failure_ms: memory.first_failure_ms,
            failed_by: memory.failed_by,
            visible: memory.visible,
            fields,
        };
        batch.clear();
        batch
    }

    /// The batch's memory, emptied, for the next batch.
    pub(crate) fn into_memory(mut self) -> BatchMemory {
        self.clear();
        BatchMemory {
            events: relabel(self.events),
            numbers: self.numbers,
            verdicts: self.verdicts,
            attempts: self.attempts,
            first_failure_ms: self.first_failure_ms,
            failed_by: self.failed_by,
            visible: self.visible,
        }
    }

    /// Makes room for `additional` more events, so that pushing them does not
    /// reallocate.
    pub fn reserve(&mut self, additional: usize) {
        self.events.reserve(additional);
        self.numbers.reserve(additional * self.width);
        self.verdicts.reserve(additional);
        self.attempts.reserve(additional);
        self.first_failure_ms.reserve(additional);
        self.failed_by.reserve(additional);
        self.visible.reserve(additional);
    }

    /// Adds an event; `numbers` are its first numbers in field order (the rest are NaN).
    pub fn push(&mut self, event: EventSlot<'a>, numbers: &[f64]) {
        self.events.push(event);
        let take = numbers.len().min(self.width);
        self.numbers.extend_from_slice(&numbers[..take]);
        self.numbers
            .extend(std::iter::repeat_n(f64::NAN, self.width - take));
        self.verdicts.push(Verdict::Live);
        self.attempts.push(0);
        self.first_failure_ms.push(0);
        self.failed_by.push(0);
        self.visible.push(true);
    }

    /// Number of events (whatever their verdict).
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// True if the batch holds no event.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Empties the batch, keeping its memory.
    pub fn clear(&mut self) {
        self.events.clear();
        self.numbers.clear();
        self.verdicts.clear();
        self.attempts.clear();
        self.first_failure_ms.clear();
        self.failed_by.clear();
        self.visible.clear();
    }

    /// The names of the numbers every event carries, in order.
    pub fn fields(&self) -> &[String] {
        self.fields
    }

    /// The index of number field `name`, if events carry it.
    pub fn field_index(&self, name: &str) -> Option<usize> {
        self.fields.iter().position(|f| f == name)
    }

    /// Event `i`.
    pub fn event(&self, i: usize) -> &EventSlot<'a> {
        &self.events[i]
    }

    /// Event `i`'s number `field`.
    pub fn number(&self, i: usize, field: usize) -> f64 {
        self.numbers[i * self.width + field]
    }

    /// Event `i`'s numbers, in field order.
    pub fn numbers(&self, i: usize) -> &[f64] {
        &self.numbers[i * self.width..(i + 1) * self.width]
    }

    /// Sets event `i`'s number `field`.
    pub fn set_number(&mut self, i: usize, field: usize, value: f64) {
        self.numbers[i * self.width + field] = value;
    }

    /// True if event `i` is live and visible: the events an operator should work on.
    pub fn is_live(&self, i: usize) -> bool {
        self.visible[i] && self.verdicts[i] == Verdict::Live
    }

    /// Indexes of the live, visible events.
    pub fn live(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.events.len()).filter(|&i| self.is_live(i))
    }

    /// Removes event `i` on purpose (it is counted as dropped, not dead-lettered).
    pub fn drop_event(&mut self, i: usize) {
        if self.is_live(i) {
            self.verdicts[i] = Verdict::Dropped;
        }
    }

    /// Fails event `i` with `failure`.
    pub fn fail(&mut self, i: usize, failure: Failure) {
        if self.is_live(i) {
            self.verdicts[i] = Verdict::Failed(failure);
        }
    }

    /// Event `i`'s verdict.
    pub fn verdict(&self, i: usize) -> &Verdict {
        &self.verdicts[i]
    }

    /// Takes event `i`'s verdict out (its failure, to dead-letter it without a copy),
    /// leaving the event dropped.
    pub(crate) fn take_verdict(&mut self, i: usize) -> Verdict {
        std::mem::replace(&mut self.verdicts[i], Verdict::Dropped)
    }

    /// How many times the operators were run on event `i` and failed it.
    pub fn attempts(&self, i: usize) -> u32 {
        self.attempts[i]
    }

    /// When event `i` first failed (epoch ms; 0 if it never did).
    pub fn first_failure_ms(&self, i: usize) -> i64 {
        self.first_failure_ms[i]
    }

    /// The position in the chain of the operator that failed event `i` (see
    /// [`OperatorChain::operator_name`]).
    pub fn failed_by(&self, i: usize) -> usize {
        self.failed_by[i] as usize
    }
}

/// The memory of an [`OperatorBatch`] between batches: a consumer builds a batch per
/// chunk of the log, and reusing the vectors of the previous one saves growing them
/// from nothing (reallocating and faulting in fresh pages) every time.
#[derive(Debug, Default)]
pub(crate) struct BatchMemory {
    events: Vec<EventSlot<'static>>,
    numbers: Vec<f64>,
    verdicts: Vec<Verdict>,
    attempts: Vec<u32>,
    first_failure_ms: Vec<i64>,
    failed_by: Vec<u16>,
    visible: Vec<bool>,
}

/// An emptied vector of event slots, under another lifetime. Collecting a vector's
/// `into_iter().map(..)` into a vector of a type of the same size and alignment reuses
/// its allocation (no event is left to map).
fn relabel<'b>(mut events: Vec<EventSlot<'_>>) -> Vec<EventSlot<'b>> {
    events.clear();
    events
        .into_iter()
        .map(|_| -> EventSlot<'b> { unreachable!("the vector was emptied") })
        .collect()
}

/// Work done on every event between the log and the windows, a batch at a time.
///
/// An operator is owned by one consumer thread (one per log partition), so it may keep
/// state without locks; share state between partitions with an `Arc` inside.
///
/// Guarantees the chain gives an operator: [`process`](Self::process) is called with
/// batches in log order; events an earlier operator dropped or failed are not live.
/// What an operator must give: only touch live events; setting an event's numbers
/// must not depend on how many times it was done (a retry or a bisection after a panic
/// runs the operator again on some events, from their values before the failed call).
pub trait Operator: Send {
    /// The operator's name (dead letters say `operator:NAME`; metrics carry it).
    fn name(&self) -> &str;

    /// Works on the live events of `batch`: change numbers, drop or fail events.
    fn process(&mut self, batch: &mut OperatorBatch<'_>);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_fills_missing_numbers_with_nan_and_tracks_verdicts() {
        let fields = vec!["value".to_owned(), "weight".to_owned()];
        let mut b = OperatorBatch::new(&fields);
        for (i, key) in ["a", "b", "c"].iter().enumerate() {
            b.push(
                EventSlot {
                    offset: i as u64,
                    key: Cow::Borrowed(key.as_bytes()),
                    ts: 0,
                    raw: b"{}",
                },
                &[i as f64],
            );
        }
        assert_eq!(b.len(), 3);
        assert_eq!(b.number(1, 0), 1.0);
        assert!(b.number(1, 1).is_nan());
        b.set_number(1, 1, 7.0);
        assert_eq!(b.numbers(1), &[1.0, 7.0]);
        b.drop_event(0);
        b.fail(2, Failure::permanent("bad", "no"));
        b.drop_event(2); // already failed: stays failed
        assert_eq!(b.live().collect::<Vec<_>>(), vec![1]);
        assert_eq!(b.verdict(0), &Verdict::Dropped);
        assert!(matches!(b.verdict(2), Verdict::Failed(f) if f.kind == "bad"));
        assert_eq!(b.field_index("weight"), Some(1));
    }

    #[test]
    fn a_batch_reuses_the_memory_of_the_previous_one() {
        let fields = vec!["value".to_owned()];
        let mut b = OperatorBatch::new(&fields);
        b.reserve(100);
        let keys: Vec<String> = (0..100).map(|i| format!("k{i}")).collect();
        for (i, key) in keys.iter().enumerate() {
            b.push(
                EventSlot {
                    offset: i as u64,
                    key: Cow::Borrowed(key.as_bytes()),
                    ts: 0,
                    raw: b"{}",
                },
                &[i as f64],
            );
        }
        b.fail(3, Failure::permanent("bad", "no"));
        assert!(matches!(b.take_verdict(3), Verdict::Failed(f) if f.reason == "no"));
        assert_eq!(b.verdict(3), &Verdict::Dropped);
        let (events, verdicts) = (b.events.as_ptr() as usize, b.verdicts.as_ptr() as usize);
        let memory = b.into_memory();
        drop(keys); // the memory borrows no event
        let other = vec!["value".to_owned()];
        let mut b = OperatorBatch::from_memory(&other, memory);
        assert!(b.is_empty() && b.events.capacity() >= 100);
        assert_eq!(b.events.as_ptr() as usize, events, "same allocation");
        assert_eq!(b.verdicts.as_ptr() as usize, verdicts);
        b.push(
            EventSlot {
                offset: 7,
                key: Cow::Borrowed(b"x"),
                ts: 0,
                raw: b"{}",
            },
            &[],
        );
        assert!(b.number(0, 0).is_nan());
        assert_eq!(b.live().collect::<Vec<_>>(), vec![0]);
    }
}
