//! The dead-letter queue: where events that cannot go on are kept, with why.
//!
//! It is a one-partition [`lungfish_log::Log`] of its own (in `DATA_DIR/dlq`), so entries
//! get the log's guarantees: CRC-checked batches, fsync policy, crash recovery. Writers
//! append with a [`Producer`] position, so an entry written before a crash is not
//! written again when the same input is replayed.
//!
//! Entry layout: `u32 meta length | meta (JSON) | payload bytes`, where meta holds the
//! stage, kind, reason, location, time and attempts. The payload is the original bytes,
//! kept as they were (even when they are not valid UTF-8).

use std::borrow::Cow;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use lungfish_log::{
    Appended, BatchBuilder, DurableTicket, FsyncPolicy, Log, LogConfig, LogError, Producer,
};
use serde::{Deserialize, Serialize};

/// One dead-lettered event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The stage that gave up on it: `source:NAME`, `window` (late events), ...
    pub stage: String,
    /// A short, stable label of the problem (`invalid_json`, `late`, ...).
    pub kind: String,
    /// What went wrong, for people.
    pub reason: String,
    /// Where the event came from: `FILE:LINE`, `log partition P offset O`, ...
    pub location: String,
    /// The event's original bytes.
    pub payload: Vec<u8>,
    /// When it was dead-lettered, epoch milliseconds.
    pub time_ms: i64,
    /// How many times processing was attempted.
    pub attempts: u32,
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
    time_ms: i64,
    attempts: u32,
}

/// Milliseconds since the Unix epoch, now.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl DeadLetter {
    /// Appends the encoded entry to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let meta = Meta {
            stage: Cow::Borrowed(&self.stage),
            kind: Cow::Borrowed(&self.kind),
            reason: Cow::Borrowed(&self.reason),
            location: Cow::Borrowed(&self.location),
            time_ms: self.time_ms,
            attempts: self.attempts,
        };
        let at = out.len();
        out.extend_from_slice(&[0; 4]);
        serde_json::to_writer(&mut *out, &meta).expect("serializing to a Vec cannot fail");
        let len = (out.len() - at - 4) as u32;
        out[at..at + 4].copy_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&self.payload);
    }

    /// Decodes an entry written by [`encode`](Self::encode); `None` if it is not one.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let len = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
        let meta: Meta<'_> = serde_json::from_slice(bytes.get(4..4 + len)?).ok()?;
        Some(DeadLetter {
            stage: meta.stage.into_owned(),
            kind: meta.kind.into_owned(),
            reason: meta.reason.into_owned(),
            location: meta.location.into_owned(),
            payload: bytes[4 + len..].to_vec(),
            time_ms: meta.time_ms,
            attempts: meta.attempts,
        })
    }
}

/// Dead-letter batches are cut at about this size.
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

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

    /// Appends entries as one batch. With a `producer`, an append whose position is not
    /// past the producer's last one is skipped (see [`Log::append`]). An empty batch
    /// still records the producer's position.
    ///
    /// # Errors
    /// As [`Log::append`].
    pub fn append<'a>(
        &self,
        entries: impl IntoIterator<Item = &'a DeadLetter>,
        producer: Option<Producer>,
    ) -> Result<Appended, LogError> {
        let mut batch = BatchBuilder::new();
        for e in entries {
            batch.push_with(|buf| e.encode(buf));
        }
        self.log.append(0, &mut batch, producer)
    }

    /// Appends entries that have no position (a request's rejects), in batches of at
    /// most about [`MAX_BATCH_BYTES`]. Returns the ticket of the last batch.
    ///
    /// # Errors
    /// As [`Log::append`]; batches appended before the failure stay.
    pub fn append_all(&self, entries: &[DeadLetter]) -> Result<Option<DurableTicket>, LogError> {
        let mut batch = BatchBuilder::new();
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
        let mut batch = BatchBuilder::new();
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
        Ok(ticket)
    }

    /// The last position `producer_id` appended, if any.
    pub fn producer_seq(&self, producer_id: u64) -> Option<u64> {
        self.log.producer_seq(0, producer_id)
    }

    /// Number of durable entries.
    pub fn len(&self) -> u64 {
        self.log.end_offset(0)
    }

    /// True if there is no durable entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Calls `f` with every durable entry from `from` on, with its offset, in order.
    /// Entries that cannot be decoded are passed as `None`.
    ///
    /// # Errors
    /// As [`lungfish_log::PartitionReader::read`].
    pub fn for_each(
        &self,
        from: u64,
        mut f: impl FnMut(u64, Option<DeadLetter>),
    ) -> Result<(), LogError> {
        let mut reader = self.log.reader(0, from)?;
        loop {
            let chunk = reader.read(4 * 1024 * 1024)?;
            if chunk.is_empty() {
                return Ok(());
            }
            for (offset, bytes) in chunk.records() {
                f(offset, DeadLetter::decode(bytes));
            }
        }
    }

    /// Counts entries per stage and kind, e.g. `("source:gen", "invalid_json") -> 12`.
    ///
    /// # Errors
    /// As [`for_each`](Self::for_each).
    pub fn counts(&self) -> Result<std::collections::BTreeMap<(String, String), u64>, LogError> {
        let mut counts = std::collections::BTreeMap::new();
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

    #[test]
    fn entries_with_quotes_and_line_breaks_decode() {
        let entry = DeadLetter {
            stage: "sink:ch".into(),
            kind: "rejected_row".into(),
            reason:
                "Code: 27, e.displayText() = DB::Exception: expected \" before: 'x'\nrow 3 \\ done"
                    .into(),
            location: "window 0..1000 key \"k\"".into(),
            payload: b"{\"key\":\"k\"}".to_vec(),
            time_ms: 17,
            attempts: 2,
        };
        let mut bytes = Vec::new();
        entry.encode(&mut bytes);
        assert_eq!(DeadLetter::decode(&bytes), Some(entry));
    }

    use super::*;

    fn entry(i: u32) -> DeadLetter {
        DeadLetter {
            stage: "source:gen".into(),
            kind: "invalid_json".into(),
            reason: format!("bad {i}"),
            location: format!("f.jsonl:{i}"),
            payload: vec![0xff, 0xfe, i as u8],
            time_ms: 5,
            attempts: 1,
        }
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
