//! Session windows: per key, a window that lasts while events keep coming less than a
//! gap apart in event time.
//!
//! # Rules
//!
//! * An event at time `t` opens the session `[t, t + gap)`. Sessions of the same key
//!   that overlap it (`start < t + gap` and `t < end`) merge into one: the start is the
//!   earliest event time, the end the latest event time plus the gap.
//! * A session *fires* when the watermark reaches its end: its row is emitted, with
//!   `window_start` = first event time and `window_end` = last event time + gap. With
//!   allowed lateness it stays in state until the final line (watermark minus the
//!   lateness) reaches its end; a late event that extends it re-emits the row
//!   (a correction, same start and key). A late event that moves a fired session's
//!   start earlier, or joins two fired sessions, emits a row under the new start; the
//!   old row stays in the sinks (sinks upsert by window start and key and cannot
//!   retract).
//! * An event whose own session `[t, t + gap)` would end at or before the final line is
//!   late (decided by the consumer, like any window).
//! * State is per source partition (each has its own watermark), like aligned windows.

use std::collections::{BTreeSet, HashMap};

use crate::window::{Accumulator, RowSchema, WindowRows};

/// One session of one key.
#[derive(Debug, Clone)]
struct Session {
    start: i64,
    /// Latest event time in the session.
    last: i64,
    acc: Accumulator,
    fired: bool,
    dirty: bool,
}

/// The open sessions of one source partition, all keys.
#[derive(Debug, Default)]
pub struct SessionTable {
    gap: i64,
    number_fields: usize,
    /// Per key, its sessions in ascending start order (never overlapping).
    by_key: HashMap<Box<[u8]>, Vec<Session>>,
    /// (end, key, start) of every session: which to fire first.
    ends: BTreeSet<(i64, Box<[u8]>, i64)>,
    sessions: usize,
    key_bytes: usize,
    /// Heap bytes of the sessions' sketches.
    sketch_bytes: u64,
}

impl SessionTable {
    /// No sessions yet; sessions close `gap_ms` after their last event.
    pub fn new(gap_ms: i64, number_fields: usize) -> Self {
        SessionTable {
            gap: gap_ms.max(1),
            number_fields,
            ..Default::default()
        }
    }

    /// Number of sessions held.
    pub fn len(&self) -> usize {
        self.sessions
    }

    /// True if no session is held.
    pub fn is_empty(&self) -> bool {
        self.sessions == 0
    }

    /// Approximate bytes held on the heap (sketches counted exactly).
    pub fn heap_bytes(&self) -> u64 {
        let per_session = std::mem::size_of::<Session>() as u64
            + 8 * 3 * self.number_fields as u64
            + 2 * (std::mem::size_of::<(i64, Box<[u8]>, i64)>() as u64 + 32);
        self.sessions as u64 * per_session + 2 * self.key_bytes as u64 + self.sketch_bytes
    }

    /// Drops every session (the partition moved to another instance).
    pub fn clear(&mut self) {
        self.by_key.clear();
        self.ends.clear();
        self.sessions = 0;
        self.key_bytes = 0;
        self.sketch_bytes = 0;
    }

    /// Adds an event of `key` at `ts` with `numbers`, keeping the aggregates `schema`
    /// needs (the consumer routes only events whose own session is not final yet).
    pub fn add(&mut self, key: &[u8], ts: i64, numbers: &[f64], schema: &RowSchema) {
        let gap = self.gap;
        let end_of = |s: &Session| s.last.saturating_add(gap);
        let list = match self.by_key.get_mut(key) {
            Some(list) => list,
            None => {
                self.key_bytes += key.len();
                self.by_key.entry(key.into()).or_default()
            }
        };
        let new_end = ts.saturating_add(gap);
        // Sessions overlapping [ts, ts + gap): a contiguous run, as they never overlap.
        let first = list.partition_point(|s| end_of(s) <= ts);
        let mut last = first;
        while last < list.len() && list[last].start < new_end {
            last += 1;
        }
        let key_box: Box<[u8]> = key.into();
        if first == last {
            let mut acc = Accumulator::new(self.number_fields);
            acc.add(ts, numbers, schema);
            self.sketch_bytes += acc.sketch_bytes();
            list.insert(
                first,
                Session {
                    start: ts,
                    last: ts,
                    acc,
                    fired: false,
                    dirty: false,
                },
            );
            self.ends.insert((new_end, key_box, ts));
            self.sessions += 1;
            return;
        }
        // Merge the run into its first session.
        let mut merged: Vec<Session> = list.drain(first..last).collect();
        for s in &merged {
            self.ends.remove(&(end_of(s), key_box.clone(), s.start));
            self.sketch_bytes -= s.acc.sketch_bytes();
        }
        self.sessions -= merged.len();
        let mut into = merged.remove(0);
        for s in merged {
            into.acc.merge(&s.acc);
            into.start = into.start.min(s.start);
            into.last = into.last.max(s.last);
            into.fired |= s.fired;
        }
        into.acc.add(ts, numbers, schema);
        self.sketch_bytes += into.acc.sketch_bytes();
        into.start = into.start.min(ts);
        into.last = into.last.max(ts);
        into.dirty = into.fired;
        self.ends
            .insert((into.last.saturating_add(gap), key_box, into.start));
        list.insert(first, into);
        self.sessions += 1;
    }

    /// Calls `f(key, start, last, acc, fired, dirty)` for every session (to save it).
    pub fn for_each_session(&self, mut f: impl FnMut(&[u8], i64, i64, &Accumulator, bool, bool)) {
        for (key, list) in &self.by_key {
            for s in list {
                f(key, s.start, s.last, &s.acc, s.fired, s.dirty);
            }
        }
    }

    /// Puts back a session saved by [`for_each_session`](Self::for_each_session).
    pub fn restore(
        &mut self,
        key: &[u8],
        start: i64,
        last: i64,
        acc: Accumulator,
        fired: bool,
        dirty: bool,
    ) {
        if !self.by_key.contains_key(key) {
            self.key_bytes += key.len();
        }
        self.sketch_bytes += acc.sketch_bytes();
        let list = self.by_key.entry(key.into()).or_default();
        let at = list.partition_point(|s| s.start < start);
        list.insert(
            at,
            Session {
                start,
                last,
                acc,
                fired,
                dirty,
            },
        );
        self.ends
            .insert((last.saturating_add(self.gap), key.into(), start));
        self.sessions += 1;
    }

    /// Emits into `out` the rows the marker allows: every session ending at or before
    /// `watermark` that has not fired, or changed since it fired; then drops the
    /// sessions ending at or before `final_line`. Rows come in (key, start) order.
    /// Returns (rows emitted, of which corrections).
    pub fn close(&mut self, watermark: i64, final_line: i64, out: &mut WindowRows) -> (u64, u64) {
        let gap = self.gap;
        let mut due: Vec<(Box<[u8]>, i64, i64)> = Vec::new();
        for (end, key, start) in self.ends.iter() {
            if *end > watermark {
                break;
            }
            due.push((key.clone(), *start, *end));
        }
        due.sort_unstable_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        let (mut rows, mut corrections) = (0u64, 0u64);
        for (key, start, end) in due {
            let Some(list) = self.by_key.get_mut(&key) else {
                continue;
            };
            let Some(at) = list.iter().position(|s| s.start == start) else {
                continue;
            };
            let s = &mut list[at];
            if !s.fired || s.dirty {
                out.push_accumulated(s.start, s.last.saturating_add(gap), &key, &s.acc);
                rows += 1;
                if s.fired {
                    corrections += 1;
                }
                s.fired = true;
                s.dirty = false;
            }
            if end <= final_line {
                self.sketch_bytes -= list.remove(at).acc.sketch_bytes();
                self.ends.remove(&(end, key.clone(), start));
                self.sessions -= 1;
                if list.is_empty() {
                    self.key_bytes -= key.len();
                    self.by_key.remove(&key);
                }
            }
        }
        (rows, corrections)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AggFunc, AggregateSpec};
    use crate::window::RowSchema;
    use std::sync::Arc;

    fn schema() -> Arc<RowSchema> {
        Arc::new(RowSchema::new(
            &[
                AggregateSpec::count(),
                AggregateSpec::new(AggFunc::Sum, Some("v")),
            ],
            &["v".into()],
        ))
    }

    fn rows(out: &WindowRows) -> Vec<(i64, i64, String, f64, f64)> {
        (0..out.len())
            .map(|i| {
                (
                    out.window_start(i),
                    out.window_end(i),
                    out.key(i).to_owned(),
                    out.value(i, 0),
                    out.value(i, 1),
                )
            })
            .collect()
    }

    #[test]
    fn events_closer_than_the_gap_share_a_session() {
        let mut t = SessionTable::new(100, 1);
        for (k, ts, v) in [
            ("a", 0, 1.0),
            ("a", 50, 2.0),
            ("b", 60, 5.0),
            ("a", 149, 3.0),
            ("a", 260, 4.0),
        ] {
            t.add(k.as_bytes(), ts, &[v], &schema());
        }
        let mut out = WindowRows::new(schema());
        assert_eq!(t.close(249, 249, &mut out), (2, 0));
        assert_eq!(
            rows(&out),
            vec![
                (0, 249, "a".into(), 3.0, 6.0),
                (60, 160, "b".into(), 1.0, 5.0)
            ]
        );
        assert_eq!(t.len(), 1, "a's second session is still open");
        let mut out = WindowRows::new(schema());
        t.close(i64::MAX, i64::MAX, &mut out);
        assert_eq!(rows(&out), vec![(260, 360, "a".into(), 1.0, 4.0)]);
        assert!(t.is_empty());
    }

    #[test]
    fn an_event_between_two_sessions_merges_them() {
        let mut t = SessionTable::new(100, 1);
        t.add(b"k", 0, &[1.0], &schema());
        t.add(b"k", 180, &[2.0], &schema());
        assert_eq!(t.len(), 2);
        t.add(b"k", 90, &[3.0], &schema()); // less than the gap from both 0 and 180
        assert_eq!(t.len(), 1);
        let mut out = WindowRows::new(schema());
        t.close(i64::MAX, i64::MAX, &mut out);
        assert_eq!(rows(&out), vec![(0, 280, "k".into(), 3.0, 6.0)]);
    }

    #[test]
    fn a_late_event_within_lateness_corrects_the_fired_row() {
        let mut t = SessionTable::new(100, 1);
        t.add(b"k", 0, &[1.0], &schema());
        let mut out = WindowRows::new(schema());
        // Watermark 100 fires [0, 100); lateness keeps it until the final line passes.
        assert_eq!(t.close(100, 50, &mut out), (1, 0));
        assert_eq!(rows(&out), vec![(0, 100, "k".into(), 1.0, 1.0)]);
        t.add(b"k", 40, &[2.0], &schema());
        let mut out = WindowRows::new(schema());
        assert_eq!(
            t.close(130, 80, &mut out),
            (0, 0),
            "extended to 140: not due yet"
        );
        assert_eq!(t.close(150, 100, &mut out), (1, 1));
        assert_eq!(rows(&out), vec![(0, 140, "k".into(), 2.0, 3.0)]);
        let mut out = WindowRows::new(schema());
        assert_eq!(
            t.close(200, 150, &mut out),
            (0, 0),
            "unchanged: nothing emitted"
        );
        assert!(t.is_empty(), "dropped once the final line passed its end");
    }
}
