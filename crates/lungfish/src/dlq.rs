//! The dead-letter queue: where events that cannot go on are kept, with why.
//!
//! It is a one-partition [`lungfish_log::Log`] of its own (in `DATA_DIR/dlq`), so entries
//! get the log's guarantees: CRC-checked batches, fsync policy, crash recovery. Writers
//! append with a [`Producer`] position, so an entry written before a crash is not
//! written again when the same input is replayed.
//!
//! The queue holds two kinds of records:
//!
//! * **Entries** ([`DeadLetter`]): `u32 meta length | meta (JSON) | payload bytes`, where
//!   meta holds the stage, kind, reason, location, first and last failure time, attempts
//!   and, for an event that was in the event log, its partition and offset. The payload
//!   is the original bytes, kept as they were (even when they are not valid UTF-8). The
//!   first failure time keeps its original name `time_ms`, and the fields added later
//!   (`last_failure_ms`, `source`) are optional, so entries of every version decode in
//!   every version.
//! * **Control records** ([`Control`]): `"LFDC" | JSON`. They resolve entries without
//!   rewriting the log: [`Control::Purged`], and [`Control::ReplayStarted`] /
//!   [`Control::ReplayDone`] around a replay (`crate::dlq_replay`). The tag read as an
//!   entry's meta length is over a gigabyte, more than any batch may hold, so no entry
//!   starts with it.
//!
//! Reading folds the control records ([`Resolutions`]): every entry is
//! [`EntryState::Pending`], [`EntryState::Purged`], [`EntryState::Replayed`], or
//! [`EntryState::Replaying`] (a replay started and not finished: the next replay
//! finishes it). A queue without control records reads as all pending. An entry is
//! resolved once: the first control record that covers it decides.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::ControlFlow;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use lungfish_log::{
    Appended, BatchBuilder, DurableTicket, FsyncPolicy, Log, LogConfig, LogError, Producer,
};
use serde::{Deserialize, Serialize};

/// Where in the event log an event was: partition and offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LogPosition {
    /// The log partition.
    pub partition: u32,
    /// The record's offset in the partition.
    pub offset: u64,
}

/// One dead-lettered event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The stage that gave up on it: `source:NAME`, `window` (late events), `replay`, ...
    pub stage: String,
    /// A short, stable label of the problem (`invalid_json`, `late`, ...).
    pub kind: String,
    /// What went wrong, for people.
    pub reason: String,
    /// Where the event came from: `FILE:LINE`, `log partition P offset O`, ...
    pub location: String,
    /// The event's original bytes.
    pub payload: Vec<u8>,
    /// When processing it first failed, epoch milliseconds.
    pub first_failure_ms: i64,
    /// When processing it last failed (the time of this entry), epoch milliseconds.
    pub last_failure_ms: i64,
    /// How many times processing was attempted.
    pub attempts: u32,
    /// Where in the event log the event was, if it got there (`None` for an input line
    /// or a request's event refused before the log; `location` says where those came
    /// from).
    pub source: Option<LogPosition>,
}

/// The entry's header. Strings borrow from the record unless JSON escapes (quotes, line
/// breaks in a reason) make them need a copy.
#[derive(Serialize, Deserialize)]
struct Meta<'a> {
    #[serde(borrow)]
    stage: Cow<'a, str>,
    #[serde(borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    reason: Cow<'a, str>,
    #[serde(borrow)]
    location: Cow<'a, str>,
    /// The first failure (the field's name in the first format, kept so older readers
    /// decode newer entries).
    time_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_failure_ms: Option<i64>,
    attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    source: Option<LogPosition>,
}

/// Appends `s` as a JSON string, exactly as `serde_json` writes it: a string without
/// quotes, backslashes or control characters is copied as it is; any other goes through
/// `serde_json`.
fn json_str(out: &mut Vec<u8>, s: &str) {
    // Without early exit, so that it runs over many bytes at a time.
    let plain = s.bytes().fold(true, |plain, b| {
        plain & (b >= 0x20) & (b != b'"') & (b != b'\\')
    });
    if plain {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        serde_json::to_writer(&mut *out, s).expect("serializing to a Vec cannot fail");
    }
}

/// Milliseconds since the Unix epoch, now.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The leading tag of a control record.
const CONTROL_TAG: &[u8; 4] = b"LFDC";

impl DeadLetter {
    /// An entry that failed now, on its first attempt, not from the event log.
    pub fn new(
        stage: impl Into<String>,
        kind: impl Into<String>,
        reason: impl Into<String>,
        location: impl Into<String>,
        payload: Vec<u8>,
    ) -> Self {
        Self::failed_on(now_ms(), stage, kind, reason, location, payload)
    }

    /// An entry that failed at `now` (epoch ms), on its first attempt, not from the
    /// event log: [`new`](Self::new) for callers that read the clock once per batch.
    pub fn failed_on(
        now: i64,
        stage: impl Into<String>,
        kind: impl Into<String>,
        reason: impl Into<String>,
        location: impl Into<String>,
        payload: Vec<u8>,
    ) -> Self {
        DeadLetter {
            stage: stage.into(),
            kind: kind.into(),
            reason: reason.into(),
            location: location.into(),
            payload,
            first_failure_ms: now,
            last_failure_ms: now,
            attempts: 1,
            source: None,
        }
    }

    /// The same entry, failed (first and last) at `time_ms`.
    #[must_use]
    pub fn failed_at(mut self, time_ms: i64) -> Self {
        self.first_failure_ms = time_ms;
        self.last_failure_ms = time_ms;
        self
    }

    /// The same entry, first failed at `time_ms` (an earlier attempt); ignored if 0 or
    /// later than the last failure.
    #[must_use]
    pub fn first_failed_at(mut self, time_ms: i64) -> Self {
        if time_ms != 0 && time_ms <= self.last_failure_ms {
            self.first_failure_ms = time_ms;
        }
        self
    }

    /// The same entry, after `attempts` attempts (at least 1).
    #[must_use]
    pub fn with_attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts.max(1);
        self
    }

    /// The same entry, for the event at `offset` of log partition `partition`.
    #[must_use]
    pub fn from_log(mut self, partition: u32, offset: u64) -> Self {
        self.source = Some(LogPosition { partition, offset });
        self
    }

    /// The entry of this event failing once more, at `stage` at `time_ms`: one more
    /// attempt, same first failure, location, source and payload.
    pub fn failed_again(
        &self,
        stage: impl Into<String>,
        kind: impl Into<String>,
        reason: impl Into<String>,
        time_ms: i64,
    ) -> Self {
        DeadLetter {
            stage: stage.into(),
            kind: kind.into(),
            reason: reason.into(),
            location: self.location.clone(),
            payload: self.payload.clone(),
            first_failure_ms: self.first_failure_ms,
            last_failure_ms: time_ms,
            attempts: self.attempts.saturating_add(1),
            source: self.source,
        }
    }

    /// Appends the encoded entry to `out`.
    ///
    /// The meta is written by hand, byte for byte as `serde_json` writes `Meta` (a
    /// test holds them equal): entries are written by the hundred thousand when an
    /// operator fails many events, and this is several times faster.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let at = out.len();
        out.reserve(4 + 160 + self.encoded_strings_len() + self.payload.len());
        out.extend_from_slice(&[0; 4]);
        let mut ints = itoa::Buffer::new();
        out.extend_from_slice(b"{\"stage\":");
        json_str(out, &self.stage);
        out.extend_from_slice(b",\"kind\":");
        json_str(out, &self.kind);
        out.extend_from_slice(b",\"reason\":");
        json_str(out, &self.reason);
        out.extend_from_slice(b",\"location\":");
        json_str(out, &self.location);
        out.extend_from_slice(b",\"time_ms\":");
        out.extend_from_slice(ints.format(self.first_failure_ms).as_bytes());
        out.extend_from_slice(b",\"last_failure_ms\":");
        out.extend_from_slice(ints.format(self.last_failure_ms).as_bytes());
        out.extend_from_slice(b",\"attempts\":");
        out.extend_from_slice(ints.format(self.attempts).as_bytes());
        if let Some(source) = self.source {
            out.extend_from_slice(b",\"source\":{\"partition\":");
            out.extend_from_slice(ints.format(source.partition).as_bytes());
            out.extend_from_slice(b",\"offset\":");
            out.extend_from_slice(ints.format(source.offset).as_bytes());
            out.push(b'}');
        }
        out.push(b'}');
        let len = (out.len() - at - 4) as u32;
        out[at..at + 4].copy_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&self.payload);
    }

    /// The bytes of the entry's strings (before escapes).
    fn encoded_strings_len(&self) -> usize {
        self.stage.len() + self.kind.len() + self.reason.len() + self.location.len()
    }

    /// Decodes an entry written by [`encode`](Self::encode) (by this or an earlier
    /// version); `None` if it is not one.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.starts_with(CONTROL_TAG) {
            return None;
        }
        let len = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
        let meta: Meta<'_> = serde_json::from_slice(bytes.get(4..4 + len)?).ok()?;
        Some(DeadLetter {
            stage: meta.stage.into_owned(),
            kind: meta.kind.into_owned(),
            reason: meta.reason.into_owned(),
            location: meta.location.into_owned(),
            payload: bytes[4 + len..].to_vec(),
            first_failure_ms: meta.time_ms,
            last_failure_ms: meta.last_failure_ms.unwrap_or(meta.time_ms),
            attempts: meta.attempts,
            source: meta.source,
        })
    }
}

/// A record of the queue that resolves entries. Offsets are given as half-open ranges
/// `[start, end)` of queue offsets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Control {
    /// The entries were dropped by hand (`lungfish dlq purge`).
    Purged {
        /// The entries.
        ranges: Vec<(u64, u64)>,
        /// When, epoch milliseconds.
        #[serde(default)]
        time_ms: i64,
    },
    /// A replay of these entries began; the events may be in the event log from here on.
    ReplayStarted {
        /// The replay's id: its producer id in the event log derives from it.
        replay_id: u64,
        /// The entries.
        ranges: Vec<(u64, u64)>,
        /// When, epoch milliseconds.
        #[serde(default)]
        time_ms: i64,
    },
    /// Every event of the replay is durably in the event log (or back in this queue).
    ReplayDone {
        /// The replay's id.
        replay_id: u64,
        /// When, epoch milliseconds.
        #[serde(default)]
        time_ms: i64,
    },
}

impl Control {
    /// Appends the encoded record to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(CONTROL_TAG);
        serde_json::to_writer(&mut *out, self).expect("serializing to a Vec cannot fail");
    }

    /// Decodes a record written by [`encode`](Self::encode); `None` if it is not one.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes.strip_prefix(CONTROL_TAG)?).ok()
    }
}

/// One record of the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A dead-lettered event.
    Entry(DeadLetter),
    /// A control record.
    Control(Control),
    /// Bytes that decode as neither (damage, or a format from a newer version).
    Undecodable,
}

impl Record {
    /// Decodes a record of the queue.
    pub fn decode(bytes: &[u8]) -> Self {
        if bytes.starts_with(CONTROL_TAG) {
            return Control::decode(bytes).map_or(Record::Undecodable, Record::Control);
        }
        DeadLetter::decode(bytes).map_or(Record::Undecodable, Record::Entry)
    }
}

/// Sorted, distinct offsets as half-open ranges: `[1, 2, 3, 7]` -> `[(1, 4), (7, 8)]`.
pub fn ranges_of(offsets: impl IntoIterator<Item = u64>) -> Vec<(u64, u64)> {
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for o in offsets {
        match ranges.last_mut() {
            Some((_, end)) if *end == o => *end = o + 1,
            Some((_, end)) if *end > o => {} // repeated or out of order: already covered
            _ => ranges.push((o, o + 1)),
        }
    }
    ranges
}

/// The offsets of half-open ranges, in order.
pub fn offsets_of(ranges: &[(u64, u64)]) -> impl Iterator<Item = u64> + '_ {
    ranges.iter().flat_map(|&(start, end)| start..end)
}

/// What became of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryState {
    /// Nothing yet: it waits to be replayed or purged.
    Pending,
    /// A replay of it started and did not finish (the process stopped); the next
    /// replay finishes it.
    Replaying {
        /// The replay.
        replay_id: u64,
    },
    /// Replayed: its event went back into the event log (or, refused again, back into
    /// the queue as a new entry).
    Replayed {
        /// The replay.
        replay_id: u64,
    },
    /// Purged by hand.
    Purged,
}

impl EntryState {
    /// True if pending.
    pub fn is_pending(self) -> bool {
        self == EntryState::Pending
    }
}

impl std::fmt::Display for EntryState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EntryState::Pending => f.write_str("pending"),
            EntryState::Replaying { replay_id } => {
                write!(f, "replay {replay_id} interrupted")
            }
            EntryState::Replayed { replay_id } => write!(f, "replayed (replay {replay_id})"),
            EntryState::Purged => f.write_str("purged"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resolution {
    Purged,
    Replay(u64),
}

/// A replay as the control records tell it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayRecord {
    /// The replay's id.
    pub replay_id: u64,
    /// The queue offset of its `ReplayStarted` record.
    pub started_at: u64,
    /// The entries it covers, as half-open ranges.
    pub ranges: Vec<(u64, u64)>,
    /// True once its `ReplayDone` record is in the queue.
    pub done: bool,
}

/// The control records of a queue, folded: what became of each entry.
#[derive(Debug, Clone, Default)]
pub struct Resolutions {
    /// Non-overlapping ranges: start -> (end, resolution).
    ranges: BTreeMap<u64, (u64, Resolution)>,
    /// By replay id.
    replays: BTreeMap<u64, ReplayRecord>,
}

impl Resolutions {
    /// Folds in the control record at queue offset `at`.
    pub fn apply(&mut self, at: u64, control: &Control) {
        match control {
            Control::Purged { ranges, .. } => {
                for &(start, end) in ranges {
                    self.resolve(start, end, Resolution::Purged);
                }
            }
            Control::ReplayStarted {
                replay_id, ranges, ..
            } => {
                if self.replays.contains_key(replay_id) {
                    return; // ids are unique; a second start changes nothing
                }
                for &(start, end) in ranges {
                    self.resolve(start, end, Resolution::Replay(*replay_id));
                }
                self.replays.insert(
                    *replay_id,
                    ReplayRecord {
                        replay_id: *replay_id,
                        started_at: at,
                        ranges: ranges.clone(),
                        done: false,
                    },
                );
            }
            Control::ReplayDone { replay_id, .. } => {
                if let Some(r) = self.replays.get_mut(replay_id) {
                    r.done = true;
                }
            }
        }
    }

    /// Marks the parts of `[start, end)` not resolved yet.
    fn resolve(&mut self, start: u64, end: u64, how: Resolution) {
        let mut at = start;
        if let Some((_, &(e, _))) = self.ranges.range(..start).next_back() {
            at = at.max(e);
        }
        let mut gaps = Vec::new();
        for (&s, &(e, _)) in self.ranges.range(start..end) {
            if s > at {
                gaps.push((at, s));
            }
            at = at.max(e);
        }
        if at < end {
            gaps.push((at, end));
        }
        for (s, e) in gaps {
            self.ranges.insert(s, (e, how));
        }
    }

    /// What became of the entry at `offset`.
    pub fn state(&self, offset: u64) -> EntryState {
        match self.ranges.range(..=offset).next_back() {
            Some((_, &(end, how))) if offset < end => match how {
                Resolution::Purged => EntryState::Purged,
                Resolution::Replay(replay_id) => {
                    if self.replays.get(&replay_id).is_some_and(|r| r.done) {
                        EntryState::Replayed { replay_id }
                    } else {
                        EntryState::Replaying { replay_id }
                    }
                }
            },
            _ => EntryState::Pending,
        }
    }

    /// The replays started and not finished, oldest first.
    pub fn unfinished_replays(&self) -> Vec<ReplayRecord> {
        let mut open: Vec<ReplayRecord> =
            self.replays.values().filter(|r| !r.done).cloned().collect();
        open.sort_by_key(|r| r.started_at);
        open
    }

    /// The largest replay id used so far.
    pub fn last_replay_id(&self) -> Option<u64> {
        self.replays.keys().next_back().copied()
    }
}

/// Which entries a command is about. Every condition given must hold; none given
/// matches every entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only entries of this stage (exact).
    pub stage: Option<String>,
    /// Only entries of this kind (exact).
    pub kind: Option<String>,
    /// Only entries whose reason contains this text (case-sensitive).
    pub reason_contains: Option<String>,
    /// Only entries at these offsets (empty: any).
    pub offsets: BTreeSet<u64>,
}

impl Filter {
    /// True if no condition is given.
    pub fn is_empty(&self) -> bool {
        self.stage.is_none()
            && self.kind.is_none()
            && self.reason_contains.is_none()
            && self.offsets.is_empty()
    }

    /// True if the entry at `offset` matches.
    pub fn matches(&self, offset: u64, entry: &DeadLetter) -> bool {
        self.stage.as_deref().is_none_or(|s| s == entry.stage)
            && self.kind.as_deref().is_none_or(|k| k == entry.kind)
            && self
                .reason_contains
                .as_deref()
                .is_none_or(|r| entry.reason.contains(r))
            && (self.offsets.is_empty() || self.offsets.contains(&offset))
    }
}

/// Dead-letter batches are cut at about this size.
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// Room for the first batch of `entries` (about their encoded size, at most about
/// [`MAX_BATCH_BYTES`]), so that encoding them does not grow the batch step by step.
fn batch_capacity<'a>(entries: impl IntoIterator<Item = &'a DeadLetter>) -> usize {
    let mut bytes = 0;
    for e in entries {
        bytes += 4 + 4 + 160 + e.encoded_strings_len() + e.payload.len();
        if bytes >= MAX_BATCH_BYTES {
            return MAX_BATCH_BYTES + 64 * 1024;
        }
    }
    bytes
}

/// At most this many ranges go into one `Purged` record.
const MAX_RANGES_PER_RECORD: usize = 100_000;

/// The dead-letter queue of a pipeline. Cheap to clone.
#[derive(Debug, Clone)]
pub struct DeadLetters {
    log: Log,
}

impl DeadLetters {
    /// Opens (or creates) the queue in `dir`.
    ///
    /// # Errors
    /// As [`Log::open`].
    pub fn open(dir: impl AsRef<Path>, fsync: FsyncPolicy) -> Result<Self, LogError> {
        let log = Log::open(
            dir,
            LogConfig {
                partitions: 1,
                segment_bytes: 64 * 1024 * 1024,
                fsync,
                max_batch_bytes: 64 * 1024 * 1024,
                retention: lungfish_log::Retention::default(),
            },
        )?;
        Ok(DeadLetters { log })
    }

    /// Counts appended entries into `lungfish_dead_letters_total{stage,kind}`: one
    /// increment per run of equal (stage, kind), so a batch of one stage costs one.
    fn count<'a>(entries: impl IntoIterator<Item = &'a DeadLetter>) {
        let mut entries = entries.into_iter().peekable();
        while let Some(first) = entries.next() {
            let mut n = 1;
            while entries
                .next_if(|e| e.stage == first.stage && e.kind == first.kind)
                .is_some()
            {
                n += 1;
            }
            metrics::counter!("lungfish_dead_letters_total",
                "stage" => first.stage.clone(), "kind" => first.kind.clone())
            .increment(n);
        }
    }

    /// Appends entries as one batch. With a `producer`, an append whose position is not
    /// past the producer's last one is skipped (see [`Log::append`]). An empty batch
    /// still records the producer's position.
    ///
    /// # Errors
    /// As [`Log::append`].
    pub fn append<'a>(
        &self,
        entries: impl IntoIterator<Item = &'a DeadLetter> + Clone,
        producer: Option<Producer>,
    ) -> Result<Appended, LogError> {
        let mut batch = BatchBuilder::new();
        for e in entries.clone() {
            batch.push_with(|buf| e.encode(buf));
        }
        let done = self.log.append(0, &mut batch, producer)?;
        Self::count(entries);
        Ok(done)
    }

    /// Appends entries that have no position (a request's rejects), in batches of at
    /// most about [`MAX_BATCH_BYTES`]. Returns the ticket of the last batch.
    ///
    /// # Errors
    /// As [`Log::append`]; batches appended before the failure stay.
    pub fn append_all(&self, entries: &[DeadLetter]) -> Result<Option<DurableTicket>, LogError> {
        let mut batch = BatchBuilder::with_capacity(batch_capacity(entries));
        let mut ticket = None;
        for entry in entries {
            let size = entry.payload.len() + entry.reason.len() + entry.location.len() + 256;
            if !batch.is_empty() && batch.encoded_len() + size > MAX_BATCH_BYTES {
                ticket = Some(self.log.append(0, &mut batch, None)?.ticket);
                batch.clear();
            }
            batch.push_with(|buf| entry.encode(buf));
        }
        if !batch.is_empty() {
            ticket = Some(self.log.append(0, &mut batch, None)?.ticket);
        }
        Self::count(entries);
        Ok(ticket)
    }

    /// Appends entries, each with its *position* (a number that grows through the
    /// writer's input: a source position, a log offset), in batches of at most about
    /// [`MAX_BATCH_BYTES`], whatever their number. Each batch is appended with producer
    /// position = the position of its last entry + 1, and the last one with `end` if
    /// given (an empty batch then still records `end`). Entries at positions the producer
    /// already passed are skipped by the log, so replaying the same input after a crash
    /// writes nothing twice. Returns the ticket of the last batch appended.
    ///
    /// # Errors
    /// As [`Log::append`]; batches appended before the failure stay.
    pub fn append_positioned(
        &self,
        entries: &[(u64, DeadLetter)],
        producer_id: u64,
        end: Option<u64>,
    ) -> Result<Option<DurableTicket>, LogError> {
        let mut batch = BatchBuilder::with_capacity(batch_capacity(entries.iter().map(|(_, e)| e)));
        let mut ticket = None;
        let mut last_position = None;
        for (position, entry) in entries {
            let size = entry.payload.len() + entry.reason.len() + entry.location.len() + 256;
            if let Some(last) = last_position
                && batch.encoded_len() + size > MAX_BATCH_BYTES
            {
                let producer = Producer {
                    id: producer_id,
                    seq: last + 1,
                };
                ticket = Some(self.log.append(0, &mut batch, Some(producer))?.ticket);
                batch.clear();
            }
            batch.push_with(|buf| entry.encode(buf));
            last_position = Some(*position);
        }
        let seq = match (end, last_position) {
            (Some(end), _) => Some(end),
            (None, Some(last)) if !batch.is_empty() => Some(last + 1),
            _ => None,
        };
        if let Some(seq) = seq {
            let producer = Producer {
                id: producer_id,
                seq,
            };
            ticket = Some(self.log.append(0, &mut batch, Some(producer))?.ticket);
        }
        Self::count(entries.iter().map(|(_, e)| e));
        Ok(ticket)
    }

    /// Appends a control record (as its own batch).
    ///
    /// # Errors
    /// As [`Log::append`].
    pub fn append_control(&self, control: &Control) -> Result<Appended, LogError> {
        let mut batch = BatchBuilder::new();
        batch.push_with(|buf| control.encode(buf));
        self.log.append(0, &mut batch, None)
    }

    /// Marks the entries at `offsets` purged: appends `Purged` records (one per 100,000
    /// ranges) and returns the ticket of the last one, `None` if `offsets` is empty. The
    /// caller checks that they are pending entries.
    ///
    /// # Errors
    /// As [`Log::append`]; records appended before the failure stay.
    pub fn purge(
        &self,
        offsets: impl IntoIterator<Item = u64>,
    ) -> Result<Option<DurableTicket>, LogError> {
        let ranges = ranges_of(offsets);
        let time_ms = now_ms();
        let mut ticket = None;
        for part in ranges.chunks(MAX_RANGES_PER_RECORD) {
            let control = Control::Purged {
                ranges: part.to_vec(),
                time_ms,
            };
            ticket = Some(self.append_control(&control)?.ticket);
        }
        Ok(ticket)
    }

    /// The last position `producer_id` appended, if any.
    pub fn producer_seq(&self, producer_id: u64) -> Option<u64> {
        self.log.producer_seq(0, producer_id)
    }

    /// Number of durable records (entries and control records): the offset the next
    /// record gets.
    pub fn len(&self) -> u64 {
        self.log.end_offset(0)
    }

    /// True if there is no durable record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Calls `f` with every durable record from `from` on, with its offset, in order,
    /// until `f` breaks.
    ///
    /// # Errors
    /// As [`lungfish_log::PartitionReader::read`].
    pub fn scan(
        &self,
        from: u64,
        mut f: impl FnMut(u64, Record) -> ControlFlow<()>,
    ) -> Result<(), LogError> {
        let mut reader = self.log.reader(0, from)?;
        loop {
            let chunk = reader.read(4 * 1024 * 1024)?;
            if chunk.is_empty() {
                return Ok(());
            }
            for (offset, bytes) in chunk.records() {
                if f(offset, Record::decode(bytes)).is_break() {
                    return Ok(());
                }
            }
        }
    }

    /// Calls `f` with every durable entry from `from` on, with its offset, in order,
    /// whatever its state; control records are left out. Records that cannot be decoded
    /// are passed as `None`.
    ///
    /// # Errors
    /// As [`lungfish_log::PartitionReader::read`].
    pub fn for_each(
        &self,
        from: u64,
        mut f: impl FnMut(u64, Option<DeadLetter>),
    ) -> Result<(), LogError> {
        self.scan(from, |offset, record| {
            match record {
                Record::Entry(e) => f(offset, Some(e)),
                Record::Undecodable => f(offset, None),
                Record::Control(_) => {}
            }
            ControlFlow::Continue(())
        })
    }

    /// The queue's control records, folded.
    ///
    /// # Errors
    /// As [`lungfish_log::PartitionReader::read`].
    pub fn resolutions(&self) -> Result<Resolutions, LogError> {
        let mut resolutions = Resolutions::default();
        let mut reader = self.log.reader(0, 0)?;
        loop {
            let chunk = reader.read(4 * 1024 * 1024)?;
            if chunk.is_empty() {
                return Ok(resolutions);
            }
            for (offset, bytes) in chunk.records() {
                if bytes.starts_with(CONTROL_TAG)
                    && let Some(control) = Control::decode(bytes)
                {
                    resolutions.apply(offset, &control);
                }
            }
        }
    }

    /// Like [`for_each`](Self::for_each), with each entry's state (after every control
    /// record in the queue, also those after the entry). Reads the queue twice.
    ///
    /// # Errors
    /// As [`lungfish_log::PartitionReader::read`].
    pub fn for_each_with_state(
        &self,
        from: u64,
        mut f: impl FnMut(u64, Option<DeadLetter>, EntryState),
    ) -> Result<(), LogError> {
        let resolutions = self.resolutions()?;
        self.for_each(from, |offset, entry| {
            f(offset, entry, resolutions.state(offset))
        })
    }

    /// The record at `offset`, `None` if there is none (past the end).
    ///
    /// # Errors
    /// As [`lungfish_log::PartitionReader::read`].
    pub fn record(&self, offset: u64) -> Result<Option<Record>, LogError> {
        if offset >= self.len() {
            return Ok(None);
        }
        let mut found = None;
        self.scan(offset, |at, record| {
            if at == offset {
                found = Some(record);
            }
            ControlFlow::Break(())
        })?;
        Ok(found)
    }

    /// Those of `offsets` that are not entries of the queue (past its end, control
    /// records, undecodable records), in order.
    ///
    /// # Errors
    /// As [`scan`](Self::scan).
    pub fn missing_entries(&self, offsets: &BTreeSet<u64>) -> Result<Vec<u64>, LogError> {
        let (Some(&first), Some(&last)) = (offsets.first(), offsets.last()) else {
            return Ok(Vec::new());
        };
        let mut found = BTreeSet::new();
        self.scan(first, |offset, record| {
            if offset > last {
                return ControlFlow::Break(());
            }
            if matches!(record, Record::Entry(_)) && offsets.contains(&offset) {
                found.insert(offset);
            }
            ControlFlow::Continue(())
        })?;
        Ok(offsets.difference(&found).copied().collect())
    }

    /// Counts entries per stage and kind, e.g. `("source:gen", "invalid_json") -> 12`,
    /// whatever their state.
    ///
    /// # Errors
    /// As [`for_each`](Self::for_each).
    pub fn counts(&self) -> Result<BTreeMap<(String, String), u64>, LogError> {
        let mut counts = BTreeMap::new();
        self.for_each(0, |_, e| {
            let key = e.map_or(("?".to_owned(), "undecodable".to_owned()), |e| {
                (e.stage, e.kind)
            });
            *counts.entry(key).or_insert(0) += 1;
        })?;
        Ok(counts)
    }

    /// Makes everything appended durable now.
    ///
    /// # Errors
    /// As [`Log::sync`].
    pub fn sync(&self) -> Result<(), LogError> {
        self.log.sync()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: u32) -> DeadLetter {
        DeadLetter::new(
            "source:gen",
            "invalid_json",
            format!("bad {i}"),
            format!("f.jsonl:{i}"),
            vec![0xff, 0xfe, i as u8],
        )
        .failed_at(5)
    }

    #[test]
    fn entries_with_quotes_and_line_breaks_decode() {
        let entry = DeadLetter::new(
            "sink:ch",
            "rejected_row",
            "Code: 27, e.displayText() = DB::Exception: expected \" before: 'x'\nrow 3 \\ done",
            "window 0..1000 key \"k\"",
            b"{\"key\":\"k\"}".to_vec(),
        )
        .failed_at(17)
        .from_log(3, 99);
        let mut bytes = Vec::new();
        entry.encode(&mut bytes);
        assert_eq!(DeadLetter::decode(&bytes), Some(entry.clone()));
        let again = entry.failed_again("replay", "wrong_type", "still bad", 40);
        assert_eq!(
            (
                again.first_failure_ms,
                again.last_failure_ms,
                again.attempts
            ),
            (17, 40, 2)
        );
        assert_eq!(
            again.source,
            Some(LogPosition {
                partition: 3,
                offset: 99
            })
        );
        assert_eq!(again.location, entry.location);
    }

    #[test]
    fn entries_are_encoded_as_serde_json_encodes_their_meta() {
        let odd =
            "quote \" backslash \\ nl \n tab \t cr \r nul \u{0} bell \u{7} del \u{7f} é ✓ 🐟 /";
        let cases = [
            entry(1),
            entry(2).from_log(3, u64::MAX).with_attempts(u32::MAX),
            DeadLetter {
                stage: odd.to_owned(),
                kind: String::new(),
                reason: odd.repeat(3),
                location: "\u{1f}".to_owned(),
                first_failure_ms: i64::MIN,
                last_failure_ms: -1,
                ..entry(3)
            },
        ];
        for e in cases {
            let mut ours = vec![9, 9];
            e.encode(&mut ours);
            let meta = Meta {
                stage: Cow::Borrowed(&e.stage),
                kind: Cow::Borrowed(&e.kind),
                reason: Cow::Borrowed(&e.reason),
                location: Cow::Borrowed(&e.location),
                time_ms: e.first_failure_ms,
                last_failure_ms: Some(e.last_failure_ms),
                attempts: e.attempts,
                source: e.source,
            };
            let json = serde_json::to_vec(&meta).unwrap();
            let mut want = vec![9, 9];
            want.extend_from_slice(&(json.len() as u32).to_le_bytes());
            want.extend_from_slice(&json);
            want.extend_from_slice(&e.payload);
            assert_eq!(
                String::from_utf8_lossy(&ours),
                String::from_utf8_lossy(&want)
            );
            assert_eq!(ours, want);
            assert_eq!(DeadLetter::decode(&ours[2..]), Some(e));
        }
    }

    #[test]
    fn entries_of_the_first_format_still_decode_and_old_readers_read_new_ones() {
        // As the first version wrote them: no last failure, no source.
        let meta = br#"{"stage":"source:in","kind":"invalid_json","reason":"r","location":"f:1","time_ms":1234,"attempts":1}"#;
        let mut bytes = (meta.len() as u32).to_le_bytes().to_vec();
        bytes.extend_from_slice(meta);
        bytes.extend_from_slice(b"{oops");
        let e = DeadLetter::decode(&bytes).unwrap();
        assert_eq!(
            (e.first_failure_ms, e.last_failure_ms, e.attempts, e.source),
            (1234, 1234, 1, None)
        );
        assert_eq!(e.payload, b"{oops");
        assert_eq!(Record::decode(&bytes), Record::Entry(e));

        // The first format's reader needs `time_ms` and `attempts`; they are still there.
        #[derive(Deserialize)]
        #[allow(dead_code)]
        struct OldMeta {
            stage: String,
            kind: String,
            reason: String,
            location: String,
            time_ms: i64,
            attempts: u32,
        }
        let mut new = Vec::new();
        entry(1).from_log(0, 7).encode(&mut new);
        let len = u32::from_le_bytes(new[..4].try_into().unwrap()) as usize;
        let old: OldMeta = serde_json::from_slice(&new[4..4 + len]).unwrap();
        assert_eq!(old.time_ms, 5);
    }

    #[test]
    fn control_records_are_not_entries() {
        let c = Control::ReplayStarted {
            replay_id: 9,
            ranges: vec![(1, 3), (7, 8)],
            time_ms: 3,
        };
        let mut bytes = Vec::new();
        c.encode(&mut bytes);
        assert_eq!(DeadLetter::decode(&bytes), None);
        assert_eq!(Record::decode(&bytes), Record::Control(c));
        assert_eq!(Record::decode(b"LFDC{nonsense"), Record::Undecodable);
        assert_eq!(Record::decode(b"\x01"), Record::Undecodable);
    }

    #[test]
    fn ranges_round_trip() {
        assert_eq!(
            ranges_of([1, 2, 3, 7, 7, 9, 10]),
            vec![(1, 4), (7, 8), (9, 11)]
        );
        let r = ranges_of([0, 5, 6]);
        assert_eq!(offsets_of(&r).collect::<Vec<_>>(), vec![0, 5, 6]);
        assert!(ranges_of([]).is_empty());
    }

    #[test]
    fn resolutions_fold_control_records_and_the_first_one_wins() {
        let mut r = Resolutions::default();
        assert_eq!(r.state(3), EntryState::Pending);
        r.apply(
            10,
            &Control::Purged {
                ranges: vec![(2, 4)],
                time_ms: 0,
            },
        );
        r.apply(
            11,
            &Control::ReplayStarted {
                replay_id: 100,
                ranges: vec![(0, 6)],
                time_ms: 0,
            },
        );
        assert_eq!(r.state(2), EntryState::Purged);
        assert_eq!(r.state(3), EntryState::Purged);
        assert_eq!(r.state(4), EntryState::Replaying { replay_id: 100 });
        assert_eq!(r.state(0), EntryState::Replaying { replay_id: 100 });
        assert_eq!(r.state(6), EntryState::Pending);
        assert_eq!(r.unfinished_replays().len(), 1);
        assert_eq!(r.unfinished_replays()[0].started_at, 11);
        r.apply(
            12,
            &Control::ReplayDone {
                replay_id: 100,
                time_ms: 0,
            },
        );
        assert_eq!(r.state(5), EntryState::Replayed { replay_id: 100 });
        assert_eq!(r.state(3), EntryState::Purged);
        assert!(r.unfinished_replays().is_empty());
        assert_eq!(r.last_replay_id(), Some(100));
        // A later purge of replayed entries changes nothing.
        r.apply(
            13,
            &Control::Purged {
                ranges: vec![(0, 10)],
                time_ms: 0,
            },
        );
        assert_eq!(r.state(1), EntryState::Replayed { replay_id: 100 });
        assert_eq!(r.state(8), EntryState::Purged);
    }

    #[test]
    fn a_queue_reads_with_states_and_control_records_stay_out_of_entries() {
        let dir = tempfile::tempdir().unwrap();
        let dlq = DeadLetters::open(dir.path(), FsyncPolicy::Never).unwrap();
        dlq.append(&[entry(0), entry(1), entry(2), entry(3)], None)
            .unwrap();
        let mut states = vec![];
        dlq.for_each_with_state(0, |o, e, s| states.push((o, e.is_some(), s)))
            .unwrap();
        assert!(
            states.iter().all(|(_, e, s)| *e && s.is_pending()),
            "{states:?}"
        );
        dlq.purge([1, 2]).unwrap();
        dlq.append_control(&Control::ReplayStarted {
            replay_id: 1,
            ranges: vec![(3, 4)],
            time_ms: 8,
        })
        .unwrap();
        let mut states = vec![];
        dlq.for_each_with_state(0, |o, _, s| states.push((o, s)))
            .unwrap();
        assert_eq!(
            states,
            vec![
                (0, EntryState::Pending),
                (1, EntryState::Purged),
                (2, EntryState::Purged),
                (3, EntryState::Replaying { replay_id: 1 }),
            ]
        );
        let mut seen = 0;
        dlq.for_each(0, |_, e| {
            assert!(e.is_some());
            seen += 1;
        })
        .unwrap();
        assert_eq!(seen, 4);
        assert_eq!(dlq.len(), 6);
        assert!(matches!(dlq.record(4).unwrap(), Some(Record::Control(_))));
        assert_eq!(dlq.record(0).unwrap(), Some(Record::Entry(entry(0))));
        assert_eq!(dlq.record(6).unwrap(), None);
        assert_eq!(dlq.counts().unwrap().values().sum::<u64>(), 4);
        let asked: BTreeSet<u64> = [0, 3, 4, 9].into();
        assert_eq!(dlq.missing_entries(&asked).unwrap(), vec![4, 9]);
    }

    #[test]
    fn filters_match_every_condition_given() {
        let e = entry(4);
        let mut f = Filter::default();
        assert!(f.is_empty() && f.matches(9, &e));
        f.reason_contains = Some("bad".into());
        f.kind = Some("invalid_json".into());
        assert!(f.matches(9, &e));
        f.offsets.insert(8);
        assert!(!f.matches(9, &e) && f.matches(8, &e));
        f.stage = Some("window".into());
        assert!(!f.matches(8, &e));
    }

    #[test]
    fn many_entries_are_split_into_bounded_batches_that_dedupe_on_replay() {
        let dir = tempfile::tempdir().unwrap();
        let dlq = DeadLetters::open(dir.path(), FsyncPolicy::Never).unwrap();
        let big = |i: u32| DeadLetter {
            payload: vec![b'x'; 60 * 1024],
            ..entry(i)
        };
        let entries: Vec<(u64, DeadLetter)> = (0..200).map(|i| (i as u64 * 10, big(i))).collect();
        dlq.append_positioned(&entries, 7, Some(5000)).unwrap();
        assert_eq!(dlq.len(), 200);
        assert_eq!(dlq.producer_seq(7), Some(5000));
        // Replaying the same input (after a crash) adds nothing.
        dlq.append_positioned(&entries, 7, Some(5000)).unwrap();
        assert_eq!(dlq.len(), 200);
        // Without an end, the position after the last entry is recorded.
        dlq.append_positioned(&[(6000, entry(1))], 7, None).unwrap();
        assert_eq!(dlq.producer_seq(7), Some(6001));
    }

    #[test]
    fn entries_round_trip_and_dedupe_by_producer() {
        let dir = tempfile::tempdir().unwrap();
        {
            let dlq = DeadLetters::open(dir.path(), FsyncPolicy::Always).unwrap();
            let p = |seq| Some(Producer { id: 3, seq });
            dlq.append(&[entry(1), entry(2)], p(10)).unwrap();
            assert!(dlq.append(&[entry(1)], p(10)).unwrap().duplicate);
            dlq.append(&[], p(20))
                .unwrap()
                .ticket
                .wait(std::time::Duration::from_secs(5))
                .unwrap();
        }
        let dlq = DeadLetters::open(dir.path(), FsyncPolicy::Always).unwrap();
        assert_eq!(dlq.producer_seq(3), Some(20));
        let mut seen = vec![];
        dlq.for_each(0, |o, e| seen.push((o, e.unwrap()))).unwrap();
        assert_eq!(seen, vec![(0, entry(1)), (1, entry(2))]);
        assert_eq!(
            dlq.counts().unwrap()[&("source:gen".to_owned(), "invalid_json".to_owned())],
            2
        );
    }
}
