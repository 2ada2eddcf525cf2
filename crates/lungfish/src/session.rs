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

/// One key's sessions, and the id that stands for the key in the end index.
#[derive(Debug, Default)]
struct KeySessions {
    id: u64,
    /// In ascending start order, never overlapping.
    list: Vec<Session>,
}

/// The open sessions of one source partition, all keys.
#[derive(Debug, Default)]
pub struct SessionTable {
    gap: i64,
    number_fields: usize,
    /// Per key, its sessions.
    by_key: HashMap<Box<[u8]>, KeySessions>,
    /// The key of each key id (ids keep the end index free of key copies, so an event
    /// on a known key allocates nothing).
    keys: HashMap<u64, Box<[u8]>>,
    next_id: u64,
    /// (end, key id, start) of every session: which to fire first.
    ends: BTreeSet<(i64, u64, i64)>,
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
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.sessions == 0
    }

    /// Approximate bytes held on the heap (sketches counted exactly).
    pub fn heap_bytes(&self) -> u64 {
        let per_session = std::mem::size_of::<Session>() as u64
            + 8 * 3 * self.number_fields as u64
            + std::mem::size_of::<(i64, u64, i64)>() as u64
            + 32;
        let per_key = 2 * (std::mem::size_of::<(Box<[u8]>, KeySessions)>() as u64 + 16);
        self.sessions as u64 * per_session
            + self.by_key.len() as u64 * per_key
            + 2 * self.key_bytes as u64
            + self.sketch_bytes
    }

    /// Drops every session (the partition moved to another instance).
    pub fn clear(&mut self) {
        self.by_key.clear();
        self.keys.clear();
        self.ends.clear();
        self.sessions = 0;
        self.key_bytes = 0;
        self.sketch_bytes = 0;
    }

    /// The sessions of `key`, created empty (with a new id) if it has none. Borrows
    /// only the key maps, so the caller may update the other fields meanwhile.
    fn key_sessions<'a>(
        by_key: &'a mut HashMap<Box<[u8]>, KeySessions>,
        keys: &mut HashMap<u64, Box<[u8]>>,
        next_id: &mut u64,
        key_bytes: &mut usize,
        key: &[u8],
    ) -> &'a mut KeySessions {
        if !by_key.contains_key(key) {
            let id = *next_id;
            *next_id += 1;
            *key_bytes += key.len();
            keys.insert(id, key.into());
            by_key.insert(
                key.into(),
                KeySessions {
                    id,
                    list: Vec::new(),
                },
            );
        }
        by_key.get_mut(key).expect("inserted above")
    }

    /// Adds an event of `key` at `ts` with `numbers`, keeping the aggregates `schema`
    /// needs (the consumer routes only events whose own session is not final yet).
    pub fn add(&mut self, key: &[u8], ts: i64, numbers: &[f64], schema: &RowSchema) {
        let gap = self.gap;
        let number_fields = self.number_fields;
        let end_of = |s: &Session| s.last.saturating_add(gap);
        let new_end = ts.saturating_add(gap);
        let ks = Self::key_sessions(
            &mut self.by_key,
            &mut self.keys,
            &mut self.next_id,
            &mut self.key_bytes,
            key,
        );
        let (id, list) = (ks.id, &mut ks.list);
        // Sessions overlapping [ts, ts + gap): a contiguous run, as they never overlap.
        let first = list.partition_point(|s| end_of(s) <= ts);
        let mut last = first;
        while last < list.len() && list[last].start < new_end {
            last += 1;
        }
        if first == last {
            let mut acc = Accumulator::new(number_fields);
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
            self.ends.insert((new_end, id, ts));
            self.sessions += 1;
            return;
        }
        // Merge the run into its first session, in place.
        for s in &list[first..last] {
            self.ends.remove(&(end_of(s), id, s.start));
            self.sketch_bytes -= s.acc.sketch_bytes();
        }
        let (head, rest) = list.split_at_mut(first + 1);
        let into = &mut head[first];
        for s in &rest[..last - first - 1] {
            into.acc.merge(&s.acc);
            into.start = into.start.min(s.start);
            into.last = into.last.max(s.last);
            into.fired |= s.fired;
        }
        into.acc.add(ts, numbers, schema);
        into.start = into.start.min(ts);
        into.last = into.last.max(ts);
        into.dirty = into.fired;
        self.sketch_bytes += into.acc.sketch_bytes();
        self.ends
            .insert((into.last.saturating_add(gap), id, into.start));
        list.drain(first + 1..last);
        self.sessions -= last - first - 1;
    }

    /// Calls `f(key, start, last, acc, fired, dirty)` for every session (to save it).
    pub fn for_each_session(&self, mut f: impl FnMut(&[u8], i64, i64, &Accumulator, bool, bool)) {
        for (key, ks) in &self.by_key {
            for s in &ks.list {
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
        let gap = self.gap;
        self.sketch_bytes += acc.sketch_bytes();
        let ks = Self::key_sessions(
            &mut self.by_key,
            &mut self.keys,
            &mut self.next_id,
            &mut self.key_bytes,
            key,
        );
        let id = ks.id;
        let at = ks.list.partition_point(|s| s.start < start);
        ks.list.insert(
            at,
            Session {
                start,
                last,
                acc,
                fired,
                dirty,
            },
        );
        self.ends.insert((last.saturating_add(gap), id, start));
        self.sessions += 1;
    }

    /// Emits into `out` the rows the marker allows: every session ending at or before
    /// `watermark` that has not fired, or changed since it fired; then drops the
    /// sessions ending at or before `final_line`. Rows come in (key, start) order.
    /// Returns (rows emitted, of which corrections).
    pub fn close(&mut self, watermark: i64, final_line: i64, out: &mut WindowRows) -> (u64, u64) {
        let gap = self.gap;
        let keys = &self.keys;
        let mut due: Vec<(i64, u64, i64)> = self
            .ends
            .iter()
            .take_while(|(end, _, _)| *end <= watermark)
            .copied()
            .collect();
        due.sort_unstable_by(|a, b| (&keys[&a.1], a.2).cmp(&(&keys[&b.1], b.2)));
        let (mut rows, mut corrections) = (0u64, 0u64);
        let mut gone = Vec::new();
        for (end, id, start) in due {
            let key = &keys[&id];
            let Some(ks) = self.by_key.get_mut(key) else {
                continue;
            };
            let Some(at) = ks.list.iter().position(|s| s.start == start) else {
                continue;
            };
            let s = &mut ks.list[at];
            if !s.fired || s.dirty {
                out.push_accumulated(s.start, s.last.saturating_add(gap), key, &s.acc);
                rows += 1;
                if s.fired {
                    corrections += 1;
                }
                s.fired = true;
                s.dirty = false;
            }
            if end <= final_line {
                self.sketch_bytes -= ks.list.remove(at).acc.sketch_bytes();
                self.ends.remove(&(end, id, start));
                self.sessions -= 1;
                if ks.list.is_empty() {
                    self.key_bytes -= key.len();
                    self.by_key.remove(key);
                    gone.push(id);
                }
            }
        }
        for id in gone {
            self.keys.remove(&id);
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
