//! Replaying dead letters: their events go back through ingest into the event log,
//! exactly once, and the next run of the pipeline processes them like new events.
//!
//! A replay works while the pipeline is stopped (it holds the data directory's lock) and
//! goes in *rounds* of at most [`ROUND_MAX_ENTRIES`] entries (or about
//! [`ROUND_MAX_BYTES`] of payload). A round with id `R`:
//!
//! 1. appends `ReplayStarted { R, offsets }` to the dead-letter queue and waits until it
//!    is durable;
//! 2. parses each entry's payload with the pipeline's current configuration, by the same
//!    [`Ingestor`] as any source (so a fixed configuration applies), in queue-offset
//!    order, and appends the events to the event log with producer id
//!    [`producer_id`]`(R)` and producer position = queue offset + 1 (producer positions
//!    are per partition: each partition gets its events in queue-offset order, a batch
//!    tagged with the position after its last event). A payload refused again becomes a
//!    new entry of stage [`STAGE`] (one more attempt, same first failure, location and
//!    source), appended to the queue with the same producer id and position;
//! 3. makes both logs durable, then appends `ReplayDone { R }`.
//!
//! If the process stops between 1 and 3, the entries read as
//! [`EntryState::Replaying`](crate::dlq::EntryState) and the next replay first runs the
//! round again with the same id and offsets: the logs skip, per partition, every event
//! whose position their producer already passed, so nothing is appended twice and
//! nothing is lost. (The configuration should not change in between: an event that
//! moves from refused to accepted, or the reverse, could then be counted in both places.)
//! The new entries the interrupted round wrote were just tried; that replay leaves them
//! for a later one.
//!
//! Replayed events are new events for the pipeline: in a windowed pipeline an event
//! whose windows have closed is late again. Replay suits events whose windows are still
//! open (an HTTP pipeline that was stopped keeps its windows open) and pipelines without
//! windows that closed. Entries of sink stages (`sink:NAME`) hold window rows, not
//! events, and are never replayed.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use lungfish_log::{BatchBuilder, DurableTicket, Log, LogConfig, LogError, Producer};

use crate::codec::InputFormat;
use crate::config::{PipelineConfig, SourceConfig};
use crate::data_dir::DataDir;
use crate::dlq::{
    Control, DeadLetter, DeadLetters, EntryState, Filter, Record, Resolutions, now_ms, offsets_of,
    ranges_of,
};
use crate::error::Error;
use crate::ingest::{Ingested, Ingestor, Positions, RawChunk};

/// The stage of entries refused again by a replay.
pub const STAGE: &str = "replay";

/// A round replays at most this many entries.
pub const ROUND_MAX_ENTRIES: usize = 100_000;

/// A round holds at most about this many payload bytes.
pub const ROUND_MAX_BYTES: usize = 64 * 1024 * 1024;

/// How long to wait for an append to become durable.
const DURABLE_TIMEOUT: Duration = Duration::from_secs(120);

/// The producer id of replay `replay_id` in the event log and the dead-letter queue:
/// stable, never 0.
pub fn producer_id(replay_id: u64) -> u64 {
    xxhash_rust::xxh3::xxh3_64(format!("replay:{replay_id}").as_bytes()) | 1
}

/// What a replay did (or, in a dry run, would do) with one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Its event went to this log partition.
    Replayed {
        /// The partition.
        partition: u32,
    },
    /// An interrupted round had already appended its event (or its new entry).
    AlreadyDone,
    /// Its payload was refused again; a new entry of stage [`STAGE`] holds it.
    RejectedAgain {
        /// The short label of the problem.
        kind: String,
        /// What is wrong.
        reason: String,
    },
}

/// One round of a replay.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Round {
    /// The round's id.
    pub replay_id: u64,
    /// True if this finished a round an earlier replay started.
    pub resumed: bool,
    /// Per entry, by queue offset, what became of it.
    pub entries: Vec<(u64, Outcome)>,
}

impl Round {
    /// Entries whose event went to the log in this run.
    pub fn replayed(&self) -> u64 {
        self.count(|o| matches!(o, Outcome::Replayed { .. }))
    }

    /// Entries refused again in this run.
    pub fn rejected_again(&self) -> u64 {
        self.count(|o| matches!(o, Outcome::RejectedAgain { .. }))
    }

    /// Entries an interrupted round had already handled.
    pub fn already_done(&self) -> u64 {
        self.count(|o| *o == Outcome::AlreadyDone)
    }

    fn count(&self, f: impl Fn(&Outcome) -> bool) -> u64 {
        self.entries.iter().filter(|(_, o)| f(o)).count() as u64
    }
}

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// True if nothing was written.
    pub dry_run: bool,
    /// Rounds of earlier, interrupted replays finished first, then this replay's rounds.
    pub rounds: Vec<Round>,
    /// Matching pending entries of sink stages: window rows, not events; left pending.
    pub not_replayable: Vec<u64>,
    /// Offsets asked for by the filter whose entries are not pending, with their state.
    pub not_pending: Vec<(u64, EntryState)>,
}

impl ReplayReport {
    /// Entries whose event went to the log (all rounds).
    pub fn replayed(&self) -> u64 {
        self.rounds.iter().map(Round::replayed).sum()
    }

    /// Entries refused again (all rounds).
    pub fn rejected_again(&self) -> u64 {
        self.rounds.iter().map(Round::rejected_again).sum()
    }

    /// Entries that interrupted rounds had already handled.
    pub fn already_done(&self) -> u64 {
        self.rounds.iter().map(Round::already_done).sum()
    }
}

/// The ingestors: the pipeline's, and one per HTTP source with its own
/// `max_event_size` (for entries of that source's stage).
struct Ingestors {
    default: Ingestor,
    by_stage: HashMap<String, Ingestor>,
}

impl Ingestors {
    fn new(cfg: &PipelineConfig) -> Result<Self, Error> {
        let mut by_stage = HashMap::new();
        for s in &cfg.sources {
            if let SourceConfig::Http(h) = &s.config
                && let Some(size) = h.max_event_size
            {
                by_stage.insert(
                    format!("source:{}", s.name),
                    Ingestor::for_pipeline(cfg, cfg.log.partitions, size)?,
                );
            }
        }
        Ok(Ingestors {
            default: Ingestor::for_pipeline(cfg, cfg.log.partitions, cfg.pipeline.max_event_size)?,
            by_stage,
        })
    }

    fn for_stage(&self, stage: &str) -> &Ingestor {
        self.by_stage.get(stage).unwrap_or(&self.default)
    }
}

/// Opens the pipeline's event log as the pipeline does.
fn open_log(cfg: &PipelineConfig, data_dir: &DataDir) -> Result<Log, LogError> {
    Log::open(
        data_dir.log(),
        LogConfig {
            partitions: cfg.log.partitions,
            segment_bytes: cfg.log.segment_size,
            fsync: cfg.log.fsync,
            max_batch_bytes: cfg.log.max_batch_size as usize,
            retention: cfg.log.retention(),
        },
    )
}

/// A replay in progress.
struct Replay<'a> {
    cfg: &'a PipelineConfig,
    dlq: &'a DeadLetters,
    /// `None` in a dry run.
    log: Option<Log>,
    ingestors: Ingestors,
    resolutions: Resolutions,
    last_id: u64,
    origin: Arc<str>,
}

/// Replays the pending entries of `dlq` that match `filter` (see the module
/// documentation), after finishing any interrupted replay. `after_append` is called
/// with each round's id once its events are durably in the logs and before the round
/// is marked done (tests stop the process there). With `dry_run`, parses and reports
/// but writes nothing (and opens neither the event log nor the key record).
///
/// The caller holds the data directory (the pipeline is stopped) and opened `dlq` in
/// it.
///
/// # Errors
/// The key field differs from the log's, the event log cannot be opened or refuses an
/// append (full), or reading or writing the queue fails. A round that failed is
/// finished by the next replay.
pub fn replay(
    cfg: &PipelineConfig,
    data_dir: &DataDir,
    dlq: &DeadLetters,
    filter: &Filter,
    dry_run: bool,
    after_append: &mut dyn FnMut(u64),
) -> Result<ReplayReport, Error> {
    let end = dlq.len();
    let resolutions = dlq.resolutions()?;
    let log = if dry_run {
        None
    } else {
        data_dir.check_key_field(&cfg.pipeline.key)?;
        Some(open_log(cfg, data_dir)?)
    };
    let mut replay = Replay {
        cfg,
        dlq,
        log,
        ingestors: Ingestors::new(cfg)?,
        last_id: resolutions.last_replay_id().unwrap_or(0),
        resolutions,
        origin: Arc::from("dead-letter queue"),
    };
    let mut report = ReplayReport {
        dry_run,
        ..ReplayReport::default()
    };

    // Entries of stage `replay` after an interrupted round's start were written by that
    // round: they were just tried, so this replay leaves them for the next one.
    let unfinished = replay.resolutions.unfinished_replays();
    let written_by_resumed = unfinished.iter().map(|r| r.started_at).min();
    for interrupted in unfinished {
        let mut entries = Vec::new();
        let first = interrupted.ranges.first().map_or(0, |r| r.0);
        let mut wanted = offsets_of(&interrupted.ranges).peekable();
        replay.dlq.scan(first, |offset, record| {
            while wanted.next_if(|&w| w < offset).is_some() {}
            if wanted.next_if_eq(&offset).is_some()
                && let Record::Entry(e) = record
            {
                entries.push((offset, e));
            }
            if wanted.peek().is_none() {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })?;
        let round = replay.round(interrupted.replay_id, entries, true, after_append)?;
        report.rounds.push(round);
    }

    let mut from = 0;
    loop {
        let mut entries: Vec<(u64, DeadLetter)> = Vec::new();
        let mut bytes = 0usize;
        let mut next = None;
        let resolutions = &replay.resolutions;
        replay.dlq.scan(from, |offset, record| {
            if offset >= end {
                return ControlFlow::Break(());
            }
            let Record::Entry(e) = record else {
                return ControlFlow::Continue(());
            };
            if !filter.matches(offset, &e)
                || (e.stage == STAGE && written_by_resumed.is_some_and(|s| offset > s))
            {
                return ControlFlow::Continue(());
            }
            let state = resolutions.state(offset);
            if !state.is_pending() {
                if filter.offsets.contains(&offset) {
                    report.not_pending.push((offset, state));
                }
                return ControlFlow::Continue(());
            }
            if e.stage.starts_with("sink:") {
                report.not_replayable.push(offset);
                return ControlFlow::Continue(());
            }
            if !entries.is_empty()
                && (entries.len() >= ROUND_MAX_ENTRIES || bytes + e.payload.len() > ROUND_MAX_BYTES)
            {
                next = Some(offset);
                return ControlFlow::Break(());
            }
            bytes += e.payload.len();
            entries.push((offset, e));
            ControlFlow::Continue(())
        })?;
        if entries.is_empty() {
            break;
        }
        let id = (now_ms().max(0) as u64).max(replay.last_id + 1);
        let round = replay.round(id, entries, false, after_append)?;
        report.rounds.push(round);
        match next {
            Some(offset) => from = offset,
            None => break,
        }
    }
    Ok(report)
}

/// A per-partition batch being filled.
struct Pending {
    batch: BatchBuilder,
    /// Queue offset of its last event.
    last: Option<u64>,
}

impl Replay<'_> {
    /// Runs one round (see the module documentation). `resumed`: its `ReplayStarted` is
    /// already in the queue.
    fn round(
        &mut self,
        replay_id: u64,
        entries: Vec<(u64, DeadLetter)>,
        resumed: bool,
        after_append: &mut dyn FnMut(u64),
    ) -> Result<Round, Error> {
        self.last_id = self.last_id.max(replay_id);
        let pid = producer_id(replay_id);
        let partitions = self.cfg.log.partitions;
        let dry_run = self.log.is_none();
        if !dry_run && !resumed {
            let control = Control::ReplayStarted {
                replay_id,
                ranges: ranges_of(entries.iter().map(|(o, _)| *o)),
                time_ms: now_ms(),
            };
            let appended = self.dlq.append_control(&control)?;
            self.dlq.sync()?;
            appended.ticket.wait(DURABLE_TIMEOUT)?;
            self.resolutions.apply(appended.base_offset, &control);
        }
        let skip: Vec<u64> = match &self.log {
            Some(log) => (0..partitions)
                .map(|p| log.producer_seq(p, pid).unwrap_or(0))
                .collect(),
            None => vec![0; partitions as usize],
        };
        let skip_rejects = if dry_run {
            0
        } else {
            self.dlq.producer_seq(pid).unwrap_or(0)
        };
        let max_batch = self.cfg.log.max_batch_size as usize;
        let mut pending: Vec<Pending> = (0..partitions)
            .map(|_| Pending {
                batch: BatchBuilder::new(),
                last: None,
            })
            .collect();
        let mut tickets: Vec<DurableTicket> = Vec::new();
        let mut rejects: Vec<(u64, DeadLetter)> = Vec::new();
        let mut out = Ingested::default();
        let mut round = Round {
            replay_id,
            resumed,
            entries: Vec::with_capacity(entries.len()),
        };
        let now = now_ms();
        for (offset, entry) in entries {
            let mut reject = |kind: &str, reason: String| {
                if offset < skip_rejects {
                    return Outcome::AlreadyDone;
                }
                rejects.push((offset, entry.failed_again(STAGE, kind, reason.clone(), now)));
                Outcome::RejectedAgain {
                    kind: kind.to_owned(),
                    reason,
                }
            };
            let ingestor = self.ingestors.for_stage(&entry.stage);
            let (line, format) = match payload_format(ingestor, &entry.payload) {
                InputFormat::Protobuf => (delimited(&entry.payload), InputFormat::Protobuf),
                InputFormat::Json => match one_line(&entry.payload) {
                    Ok(line) => (line, InputFormat::Json),
                    Err(reason) => {
                        let outcome = reject("invalid_json", reason);
                        round.entries.push((offset, outcome));
                        continue;
                    }
                },
            };
            let chunk = RawChunk {
                data: line,
                format,
                positions: Positions::Lines { first: offset },
                end: offset + 1,
                origin: self.origin.clone(),
                first_line: 1,
            };
            ingestor.ingest(&chunk, &skip, skip_rejects, &mut out);
            let outcome = if let Some(r) = out.rejects.pop() {
                reject(r.kind, r.reason)
            } else if let Some(p) = out.batches.iter().position(|b| !b.is_empty()) {
                if let Some(log) = &self.log {
                    let target = &mut pending[p];
                    let b = &out.batches[p];
                    let records = b.sealed.iter().map(|(s, _)| s).chain([&b.open]);
                    for record in records.flat_map(|batch| batch.records()) {
                        let record = record.1;
                        if let Some(last) = target.last
                            && target.batch.encoded_len() + 4 + record.len() > max_batch
                        {
                            tickets.push(append(log, p as u32, &mut target.batch, pid, last)?);
                            target.batch.clear();
                        }
                        target.batch.push(record);
                        target.last = Some(offset);
                    }
                }
                Outcome::Replayed {
                    partition: p as u32,
                }
            } else {
                // Blank (nothing to parse), or before the producer's position in its
                // partition: an interrupted round appended it.
                if entry.payload.iter().all(u8::is_ascii_whitespace) {
                    reject("empty", "the payload is empty".to_owned())
                } else {
                    Outcome::AlreadyDone
                }
            };
            round.entries.push((offset, outcome));
        }
        let Some(log) = &self.log else {
            return Ok(round);
        };
        for (p, target) in pending.iter_mut().enumerate() {
            if let Some(last) = target.last
                && !target.batch.is_empty()
            {
                tickets.push(append(log, p as u32, &mut target.batch, pid, last)?);
            }
        }
        tickets.extend(self.dlq.append_positioned(&rejects, pid, None)?);
        log.sync()?;
        self.dlq.sync()?;
        for t in &tickets {
            t.wait(DURABLE_TIMEOUT)?;
        }
        after_append(replay_id);
        let control = Control::ReplayDone {
            replay_id,
            time_ms: now_ms(),
        };
        let appended = self.dlq.append_control(&control)?;
        self.dlq.sync()?;
        appended.ticket.wait(DURABLE_TIMEOUT)?;
        self.resolutions.apply(appended.base_offset, &control);
        Ok(round)
    }
}

/// Appends `batch` to `partition` as producer `pid` at position `last + 1`.
fn append(
    log: &Log,
    partition: u32,
    batch: &mut BatchBuilder,
    pid: u64,
    last: u64,
) -> Result<DurableTicket, LogError> {
    let producer = Producer {
        id: pid,
        seq: last + 1,
    };
    Ok(log.append(partition, batch, Some(producer))?.ticket)
}

/// The payload as one line, as the HTTP source puts a JSON value on one line: line
/// breaks outside strings are whitespace. A raw line break inside a string is refused,
/// as everywhere (JSON wants `\n` there).
/// What an entry's payload is. Entries do not record it: a payload that is one valid
/// JSON document is JSON; any other is a Protobuf message when the pipeline has a
/// `[protobuf]` schema (no valid Protobuf event is also a JSON document: a message
/// starting with `{` or whitespace and parsing as JSON would need a string field made of
/// JSON), else JSON (and refused as such).
fn payload_format(ingestor: &Ingestor, payload: &[u8]) -> InputFormat {
    #[cfg(feature = "protobuf")]
    if ingestor.protobuf().is_some()
        && serde_json::from_slice::<serde::de::IgnoredAny>(payload).is_err()
    {
        return InputFormat::Protobuf;
    }
    let _ = (ingestor, payload);
    InputFormat::Json
}

/// `payload` as a one-message length-delimited batch.
fn delimited(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 10);
    let mut len = payload.len() as u64;
    while len >= 0x80 {
        out.push((len as u8) | 0x80);
        len >>= 7;
    }
    out.push(len as u8);
    out.extend_from_slice(payload);
    out
}

fn one_line(payload: &[u8]) -> Result<Vec<u8>, String> {
    let mut line = payload.to_vec();
    let mut in_string = false;
    let mut i = 0;
    while i < line.len() {
        match (in_string, line[i]) {
            (true, b'\\') => i += 1,
            (_, b'"') => in_string = !in_string,
            (true, b'\n' | b'\r') => {
                return Err(
                    "invalid JSON: a raw line break inside a string (write it as \\n)".to_owned(),
                );
            }
            (false, b'\n' | b'\r') => line[i] = b' ',
            _ => {}
        }
        i += 1;
    }
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lungfish_log::FsyncPolicy;

    use crate::event;

    fn config(dir: &std::path::Path, partitions: u32) -> PipelineConfig {
        let text = format!(
            r#"data_dir = "{}"
[sources.in]
type = "file"
paths = ["x.jsonl"]
[log]
partitions = {partitions}
[pipeline]
window = {{ type = "tumbling", size = "1h" }}
aggregates = ["count"]
[sinks.out]
type = "stdout"
"#,
            dir.join("data").display()
        );
        PipelineConfig::parse(&text, std::path::Path::new("p.toml")).unwrap()
    }

    fn event_json(i: u32) -> Vec<u8> {
        format!(
            r#"{{"id":"e{i}","user":"u{}","ts":{},"value":1}}"#,
            i % 5,
            1000 + i
        )
        .into_bytes()
    }

    fn letter(payload: Vec<u8>) -> DeadLetter {
        DeadLetter::new("operator:check", "failed", "was refused", "x", payload)
    }

    /// Every event in the log: (partition, id).
    fn log_ids(cfg: &PipelineConfig, data_dir: &DataDir) -> Vec<(u32, String)> {
        let log = open_log(cfg, data_dir).unwrap();
        let mut ids = Vec::new();
        for p in 0..log.partitions() {
            let mut reader = log.reader(p, 0).unwrap();
            loop {
                let chunk = reader.read(1 << 20).unwrap();
                if chunk.is_empty() {
                    break;
                }
                for (_, bytes) in chunk.records() {
                    let e = event::EventRef::decode(bytes).unwrap();
                    ids.push((p, String::from_utf8(e.id.to_vec()).unwrap()));
                }
            }
        }
        ids.sort();
        ids
    }

    #[test]
    fn one_line_flattens_breaks_between_tokens_and_refuses_them_in_strings() {
        assert_eq!(one_line(b"{\"a\":\n1}\r\n").unwrap(), b"{\"a\": 1}  ");
        assert_eq!(one_line(br#"{"a":"x\"\n"}"#).unwrap(), br#"{"a":"x\"\n"}"#);
        assert!(one_line(b"{\"a\":\"x\ny\"}").is_err());
    }

    #[test]
    fn a_replay_appends_each_event_once_and_an_interrupted_one_is_finished() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), 3);
        let data_dir = DataDir::lock(&cfg.data_dir).unwrap();
        let dlq = DeadLetters::open(data_dir.dead_letters(), FsyncPolicy::Always).unwrap();
        // 0..10 valid, 10 invalid, 11 a sink row, 12..20 valid.
        let mut entries: Vec<DeadLetter> = (0..10).map(|i| letter(event_json(i))).collect();
        entries.push(letter(b"{\"id\":\"bad\",\"user\":\"u\"}".to_vec()));
        entries.push(DeadLetter::new(
            "sink:db",
            "rejected_row",
            "no",
            "w",
            b"{}".to_vec(),
        ));
        entries.extend((12..20).map(|i| letter(event_json(i))));
        dlq.append(&entries, None)
            .unwrap()
            .ticket
            .wait(Duration::from_secs(5))
            .unwrap();

        // A dry run writes nothing.
        let report = replay(&cfg, &data_dir, &dlq, &Filter::default(), true, &mut |_| {}).unwrap();
        assert_eq!((report.replayed(), report.rejected_again()), (18, 1));
        assert_eq!(report.not_replayable, vec![11]);
        assert_eq!(dlq.len(), 20);

        // Interrupted after the appends, before ReplayDone.
        let filter = Filter {
            stage: Some("operator:check".into()),
            ..Filter::default()
        };
        let crashed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            replay(&cfg, &data_dir, &dlq, &filter, false, &mut |_| {
                panic!("crash point")
            })
        }));
        assert!(crashed.is_err());
        let after_crash = log_ids(&cfg, &data_dir);
        assert_eq!(after_crash.len(), 18);
        let states = dlq.resolutions().unwrap();
        assert!(matches!(states.state(0), EntryState::Replaying { .. }));
        assert_eq!(states.unfinished_replays().len(), 1);

        // The next replay finishes it: nothing twice, nothing new to do.
        let report = replay(&cfg, &data_dir, &dlq, &filter, false, &mut |_| {}).unwrap();
        assert_eq!(report.rounds.len(), 1);
        assert!(report.rounds[0].resumed);
        assert_eq!(report.already_done(), 19);
        assert_eq!(report.replayed(), 0);
        assert_eq!(log_ids(&cfg, &data_dir), after_crash);
        let states = dlq.resolutions().unwrap();
        assert!(states.unfinished_replays().is_empty());
        let mut pending = Vec::new();
        let mut refused = Vec::new();
        dlq.for_each_with_state(0, |o, e, s| {
            let e = e.unwrap();
            if s.is_pending() {
                pending.push(o);
            }
            if e.stage == STAGE {
                refused.push((e.kind, e.attempts, s));
            }
            if o < 20 && o != 11 {
                assert!(matches!(s, EntryState::Replayed { .. }), "{o}: {s}");
            }
        })
        .unwrap();
        // The sink row and the new entry of the refused payload are pending.
        assert_eq!(pending.len(), 2, "{pending:?}");
        assert_eq!(
            refused,
            vec![("missing_field".to_owned(), 2, EntryState::Pending)]
        );

        // Replaying again: only the refused one, refused again.
        let report = replay(&cfg, &data_dir, &dlq, &filter, false, &mut |_| {}).unwrap();
        assert_eq!(report.replayed(), 0);
        let report = replay(
            &cfg,
            &data_dir,
            &dlq,
            &Filter::default(),
            false,
            &mut |_| {},
        )
        .unwrap();
        assert_eq!((report.replayed(), report.rejected_again()), (0, 1));
        assert_eq!(report.not_replayable, vec![11]);
        assert_eq!(log_ids(&cfg, &data_dir).len(), 18);
    }

    #[test]
    fn events_keep_queue_order_per_partition_across_batches() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path(), 2);
        // Small batches: a partition's events span several.
        cfg.log.max_batch_size = 4096;
        cfg.pipeline.max_event_size = 512;
        let data_dir = DataDir::lock(&cfg.data_dir).unwrap();
        let dlq = DeadLetters::open(data_dir.dead_letters(), FsyncPolicy::Always).unwrap();
        let entries: Vec<DeadLetter> = (0..300).map(|i| letter(event_json(i))).collect();
        dlq.append(&entries, None)
            .unwrap()
            .ticket
            .wait(Duration::from_secs(5))
            .unwrap();
        let report = replay(
            &cfg,
            &data_dir,
            &dlq,
            &Filter::default(),
            false,
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(report.replayed(), 300);
        let log = open_log(&cfg, &data_dir).unwrap();
        let pid = producer_id(report.rounds[0].replay_id);
        for p in 0..2 {
            let mut reader = log.reader(p, 0).unwrap();
            let chunk = reader.read(1 << 20).unwrap();
            assert!(chunk.batches().count() > 1);
            let times: Vec<i64> = chunk
                .records()
                .map(|(_, r)| event::EventRef::decode(r).unwrap().ts)
                .collect();
            assert!(times.is_sorted(), "partition {p}: {times:?}");
            let last = times.last().map(|t| (t - 1000) as u64 + 1);
            assert_eq!(log.producer_seq(p, pid), last);
        }
    }
}
