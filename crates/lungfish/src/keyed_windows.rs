//! Keyed event-time windows over a stream, in memory: the pipeline's window state and
//! watermark rule as one type, for a Rust program that has its own events.
//!
//! [`KeyedWindows`] takes events one by one (or a batch at a time, in a loop), folds
//! each into every tumbling or sliding window it belongs to, per key, and keeps a
//! *watermark*: the largest event time seen minus the allowed out-of-orderness. A
//! window closes when the watermark reaches its end; [`drain_closed`] then emits its
//! rows (one per key, keys in byte order) exactly once and forgets it. An event whose
//! every window has closed is refused as [`Late`] with its time and the watermark, and
//! changes nothing: deciding what to do with it (count it, log it, dead-letter it) is
//! the caller's.
//!
//! Memory is what the open windows hold (see [`heap_bytes`]): bounded by the keys
//! seen within `size + out_of_orderness` of event time. Session windows and allowed
//! lateness need the pipeline's shards ([`crate::shard`]) and are refused here.
//!
//! [`drain_closed`]: KeyedWindows::drain_closed
//! [`heap_bytes`]: KeyedWindows::heap_bytes
//!
//! ```
//! use std::time::Duration;
//! use lungfish::config::{AggregateSpec, WindowSpec};
//! use lungfish::keyed_windows::KeyedWindows;
//!
//! let aggregates: Vec<AggregateSpec> =
//!     ["count", "sum(amount)"].iter().map(|a| a.parse().unwrap()).collect();
//! let mut windows = KeyedWindows::new(
//!     WindowSpec::Tumbling { size: Duration::from_secs(10) },
//!     &aggregates,
//!     &["amount"],
//!     Duration::from_secs(2),
//! )
//! .unwrap();
//! windows.push("alice", 1_000, &[5.0]).unwrap();
//! windows.push("alice", 4_000, &[7.0]).unwrap();
//! windows.push("bob", 13_000, &[1.0]).unwrap(); // watermark 11 s: [0, 10 s) closes
//! let rows = windows.drain_closed();
//! assert_eq!(rows.len(), 1);
//! assert_eq!((rows.key(0), rows.value(0, 0), rows.value(0, 1)), ("alice", 2.0, 12.0));
//! assert!(windows.push("alice", 9_000, &[1.0]).is_err()); // late: its window closed
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{AggregateSpec, WindowSpec};
use crate::window::{RowSchema, WindowRows, WindowTable, Windowing};

/// An event that arrived after every window it belongs to had closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("late event: time {ts} is behind the watermark {watermark} by more than its windows allow")]
pub struct Late {
    /// The event's time, epoch milliseconds.
    pub ts: i64,
    /// The watermark when it arrived.
    pub watermark: i64,
}

/// Tumbling or sliding windows per key, closed by a bounded-out-of-orderness
/// watermark. See the [module documentation](self).
#[derive(Debug)]
pub struct KeyedWindows {
    windowing: Windowing,
    schema: Arc<RowSchema>,
    /// Open windows by start time.
    open: BTreeMap<i64, WindowTable>,
    out_of_orderness: i64,
    /// Largest event time seen (`i64::MIN` before the first).
    max_ts: i64,
    /// Set by [`advance_to`](KeyedWindows::advance_to), if ahead of the event times.
    forced: i64,
}

impl KeyedWindows {
    /// Windows of `window` computing `aggregates` over events carrying the numbers
    /// named in `number_fields`, in that order, with a watermark `out_of_orderness`
    /// behind the latest event time.
    ///
    /// # Errors
    /// Session windows; an aggregate reading a field missing from `number_fields`.
    pub fn new(
        window: WindowSpec,
        aggregates: &[AggregateSpec],
        number_fields: &[&str],
        out_of_orderness: Duration,
    ) -> Result<Self, String> {
        if matches!(window, WindowSpec::Session { .. }) {
            return Err(
                "session windows need the pipeline's shards; use tumbling or sliding windows here"
                    .to_owned(),
            );
        }
        if aggregates.is_empty() {
            return Err("at least one aggregate is needed".to_owned());
        }
        let fields: Vec<String> = number_fields.iter().map(|f| (*f).to_owned()).collect();
        for a in aggregates {
            if let Some(field) = &a.field
                && !fields.contains(field)
            {
                return Err(format!(
                    "aggregate `{a}` reads `{field}`, which is not among the number fields {fields:?}"
                ));
            }
        }
        Ok(KeyedWindows {
            windowing: Windowing::new(&window),
            schema: Arc::new(RowSchema::new(aggregates, &fields)),
            open: BTreeMap::new(),
            out_of_orderness: i64::try_from(out_of_orderness.as_millis()).unwrap_or(i64::MAX),
            max_ts: i64::MIN,
            forced: i64::MIN,
        })
    }

    /// Adds an event of `key` at `ts` (epoch milliseconds) carrying `numbers` (one per
    /// number field, in order; NaN for a missing one) to every open window containing
    /// `ts`, and moves the watermark.
    ///
    /// # Errors
    /// [`Late`] if every window containing `ts` has closed; nothing changes then.
    ///
    /// # Panics
    /// If `numbers` does not hold one number per number field.
    pub fn push(&mut self, key: &str, ts: i64, numbers: &[f64]) -> Result<(), Late> {
        assert_eq!(
            numbers.len(),
            self.schema.number_fields(),
            "one number per number field"
        );
        let watermark = self.watermark();
        if self.windowing.last_end(ts) <= watermark {
            return Err(Late { ts, watermark });
        }
        let hash = crate::event::key_hash(key.as_bytes());
        let (open, schema) = (&mut self.open, &self.schema);
        let fields = schema.number_fields();
        self.windowing.for_each_open(ts, watermark, |start| {
            open.entry(start)
                .or_insert_with(|| WindowTable::new(fields))
                .add(hash, key.as_bytes(), ts, numbers, schema);
        });
        self.max_ts = self.max_ts.max(ts);
        Ok(())
    }

    /// The watermark: windows ending at or before it are closed. `i64::MIN` before
    /// the first event.
    pub fn watermark(&self) -> i64 {
        self.max_ts
            .saturating_sub(self.out_of_orderness)
            .max(self.forced)
    }

    /// Moves the watermark to at least `watermark`, even without events (a quiet
    /// stream whose windows should still close, as an idle timeout does). It never
    /// moves back.
    pub fn advance_to(&mut self, watermark: i64) {
        self.forced = self.forced.max(watermark);
    }

    /// Emits the rows of every window the watermark has closed, oldest window first,
    /// and forgets those windows.
    pub fn drain_closed(&mut self) -> WindowRows {
        self.drain_until(self.watermark())
    }

    /// Closes every window and emits all rows: the end of the stream.
    pub fn finish(&mut self) -> WindowRows {
        self.drain_until(i64::MAX)
    }

    fn drain_until(&mut self, watermark: i64) -> WindowRows {
        let mut out = WindowRows::new(self.schema.clone());
        while let Some(entry) = self.open.first_entry() {
            let start = *entry.key();
            let end = self.windowing.end(start);
            if end > watermark {
                break;
            }
            entry.remove().emit(start, end, &mut out);
        }
        out
    }

    /// The columns of the rows, after `window_start`, `window_end` and `key`.
    pub fn schema(&self) -> &Arc<RowSchema> {
        &self.schema
    }

    /// Windows open now.
    pub fn open_windows(&self) -> usize {
        self.open.len()
    }

    /// Bytes the open windows hold on the heap.
    pub fn heap_bytes(&self) -> u64 {
        self.open.values().map(WindowTable::heap_bytes).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aggs(list: &[&str]) -> Vec<AggregateSpec> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn sliding_windows_match_a_brute_force_count_and_nothing_is_emitted_twice() {
        let mut w = KeyedWindows::new(
            WindowSpec::Sliding {
                size: Duration::from_millis(300),
                slide: Duration::from_millis(100),
            },
            &aggs(&["count", "sum(v)"]),
            &["v"],
            Duration::from_millis(50),
        )
        .unwrap();
        let mut state = 7u64;
        let mut events = Vec::new();
        let mut rows = BTreeMap::new();
        let mut late = 0;
        for i in 0..5_000i64 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let ts = i * 2 - (state % 400) as i64;
            let key = format!("k{}", state % 5);
            let watermark = w.watermark();
            match w.push(&key, ts, &[1.0]) {
                // With sliding windows an event may still be in some open windows.
                Ok(()) => events.push((key, ts, watermark)),
                Err(l) => {
                    assert_eq!((l.ts, l.watermark), (ts, watermark));
                    assert!(ts.div_euclid(100) * 100 + 300 <= watermark);
                    late += 1;
                }
            }
            if i % 97 == 0 {
                let out = w.drain_closed();
                for r in 0..out.len() {
                    let prev = rows.insert(
                        (out.window_start(r), out.key(r).to_owned()),
                        out.value(r, 0),
                    );
                    assert!(prev.is_none(), "a window emitted twice");
                }
            }
        }
        let out = w.finish();
        for r in 0..out.len() {
            assert!(
                rows.insert(
                    (out.window_start(r), out.key(r).to_owned()),
                    out.value(r, 0)
                )
                .is_none()
            );
        }
        let mut want: BTreeMap<(i64, String), f64> = BTreeMap::new();
        let mut partly_late = 0;
        for (key, ts, watermark) in &events {
            let mut start = ts.div_euclid(100) * 100;
            while start > ts - 300 {
                if start + 300 > *watermark {
                    *want.entry((start, key.clone())).or_default() += 1.0;
                } else {
                    partly_late += 1;
                }
                start -= 100;
            }
        }
        assert!(rows == want, "rows differ from the brute-force windows");
        assert!(
            partly_late > 0,
            "the test should exercise partly late events"
        );
        assert!(late > 0, "the test should exercise late events");
        assert_eq!(w.open_windows(), 0);
    }

    #[test]
    fn a_quiet_stream_closes_its_windows_when_the_watermark_is_advanced() {
        let mut w = KeyedWindows::new(
            WindowSpec::Tumbling {
                size: Duration::from_secs(1),
            },
            &aggs(&["count"]),
            &[],
            Duration::from_secs(5),
        )
        .unwrap();
        w.push("a", 500, &[]).unwrap();
        assert!(w.drain_closed().is_empty());
        w.advance_to(1_000);
        assert_eq!(w.drain_closed().len(), 1);
        assert!(
            KeyedWindows::new(
                WindowSpec::Session {
                    gap: Duration::from_secs(1)
                },
                &aggs(&["count"]),
                &[],
                Duration::ZERO
            )
            .is_err()
        );
    }
}
