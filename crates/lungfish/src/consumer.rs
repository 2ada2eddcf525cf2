//! Consumers: one per log partition, reading in bounded micro-batches, keeping the
//! partition's watermark, deciding lateness, routing events to shards, and deciding
//! which offset may be committed.
//!
//! # Watermark and lateness
//!
//! The watermark of a partition is `max event time seen so far - out_of_orderness`.
//! An event is *late* when the latest window containing it ends at or before the
//! watermark as it stood just before the event. Because this depends only on the
//! partition's own sequence of events (never on timing or on other partitions), a replay
//! of the same records takes exactly the same decisions.
//!
//! # Micro-batches and markers
//!
//! Events are routed by key hash to shards in per-shard batches, cut at
//! `batch_max_events` or when the first event is `batch_max_age` old. Behind each
//! micro-batch a [`Checkpoint`] goes to every shard with the new watermark; late events
//! of the batch go to the dead-letter queue.
//!
//! # What is committed, and replay
//!
//! With state checkpoints (see [`crate::state`]), only checkpoints that saved the open
//! windows are committed: `C = P` below, and the metadata names the saved state, which
//! the pipeline loads on start; nothing before `C` is read again.
//!
//! Without them (`checkpoint_interval = "0s"`, and with a Kafka source), per partition
//! the committed offset `C` comes with `(max_ts, E, P)` (see [`ReplayState`]), all
//! taken from the latest *completed* checkpoint:
//! * `P` (processed-through): every record before `P` has all its effects durable;
//! * `E` (final-through): every window ending at or before `E` is durably in every sink
//!   and takes no more events (the watermark minus the allowed lateness);
//! * `C`: the first offset of the oldest window still in state (or `P`);
//! * `max_ts`: the largest event time before `C`, so the watermark restarts exactly.
//!
//! On restart the consumer reads from `C` with that `max_ts`, and for each record: a
//! window ending at or before `E` is skipped (already in the sinks); a late event is
//! written to the dead-letter queue only if it was not before (offset at or past both
//! `P` and the queue's own last position for this partition); the rest is processed as
//! new. The final state equals that of an uninterrupted run.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use lungfish_log::{DurableTicket, Log, LogError, OffsetCommit, PartitionReader};

use crate::budget::{ByteBudget, Lease};
use crate::checkpoint::{Checkpoint, PartitionProgress};
use crate::codec::json::JsonExtractor;
use crate::control::Control;
use crate::dlq::{DeadLetter, DeadLetters};
use crate::event::{EventRef, key_hash, shard_for};
use crate::operator::{EventSlot, OperatorBatch, OperatorChain, Verdict};
use crate::shard::{ShardBatch, ShardMsg, send_patiently};
use crate::window::Windowing;

/// Event times beyond ± this many milliseconds (about ±31,700 years around 1970) are
/// refused: window arithmetic near the ends of `i64` would saturate.
pub const MAX_EVENT_TIME: i64 = 1_000_000_000_000_000;

/// The reject kind of an event whose id was seen within the dedup horizon: dropped and
/// counted, not dead-lettered.
const DUPLICATE: &str = "duplicate";

/// What a consumer stores with its committed offset to replay deterministically.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayState {
    /// Largest event time before the committed offset (`i64::MIN` if none).
    pub max_ts: i64,
    /// Every window ending at or before this is in the sinks (`i64::MIN` if none).
    pub emitted_through: i64,
    /// Every record before this offset has been processed.
    pub processed_through: u64,
    /// The state checkpoint committed with the offset, if any (see [`crate::state`]):
    /// the open windows were saved, and reading resumes at the offset with them.
    pub state_id: Option<u64>,
}

const REPLAY_TAG: &[u8; 4] = b"LWR1";
const REPLAY_TAG_WITH_STATE: &[u8; 4] = b"LWR2";

impl ReplayState {
    /// The state of a partition never processed.
    pub const INITIAL: ReplayState = ReplayState {
        max_ts: i64::MIN,
        emitted_through: i64::MIN,
        processed_through: 0,
        state_id: None,
    };

    /// The offset-metadata bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(36);
        v.extend_from_slice(if self.state_id.is_some() {
            REPLAY_TAG_WITH_STATE
        } else {
            REPLAY_TAG
        });
        v.extend_from_slice(&self.max_ts.to_le_bytes());
        v.extend_from_slice(&self.emitted_through.to_le_bytes());
        v.extend_from_slice(&self.processed_through.to_le_bytes());
        if let Some(id) = self.state_id {
            v.extend_from_slice(&id.to_le_bytes());
        }
        v
    }

    /// Decodes offset metadata; `None` if it was not written by [`encode`](Self::encode).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let with_state = match (bytes.len(), bytes.get(..4)) {
            (28, Some(tag)) if tag == REPLAY_TAG => false,
            (36, Some(tag)) if tag == REPLAY_TAG_WITH_STATE => true,
            _ => return None,
        };
        let i = |at: usize| i64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
        Some(ReplayState {
            max_ts: i(4),
            emitted_through: i(12),
            processed_through: i(20) as u64,
            state_id: with_state.then(|| i(28) as u64),
        })
    }
}

/// The producer id under which consumer `name` writes partition `partition`'s late
/// events to the dead-letter queue.
pub fn late_producer_id(name: &str, partition: u32) -> u64 {
    xxhash_rust::xxh3::xxh3_64(format!("late:{name}:{partition}").as_bytes()) | 1
}

/// A partition's commit state: the offset and its encoded [`ReplayState`].
pub type CommitState = (u64, Vec<u8>);

/// Gathers the commit states consumers publish and commits them together: to the
/// embedded log ([`Committer::new`]), or through whoever calls
/// [`Committer::changed`] (a Kafka group, [`Committer::external`]).
#[derive(Debug)]
pub struct Committer {
    log: Option<(Log, String)>,
    slots: Vec<Mutex<Option<CommitState>>>,
    committed: Mutex<Vec<Option<CommitState>>>,
}

impl Committer {
    /// A committer of consumer `name`'s offsets in `log`.
    pub fn new(log: Log, name: &str) -> Self {
        let mut c = Committer::external(log.partitions());
        c.log = Some((log, name.to_owned()));
        c
    }

    /// A committer of `partitions` partitions whose commits someone else makes, with
    /// [`changed`](Self::changed) and [`mark_committed`](Self::mark_committed).
    pub fn external(partitions: u32) -> Self {
        let n = partitions as usize;
        Committer {
            log: None,
            slots: (0..n).map(|_| Mutex::new(None)).collect(),
            committed: Mutex::new(vec![None; n]),
        }
    }

    fn publish(&self, partition: u32, offset: u64, metadata: Vec<u8>) {
        *self.slots[partition as usize].lock().unwrap() = Some((offset, metadata));
    }

    /// The state last published for `partition`, committed or not.
    pub fn published(&self, partition: u32) -> Option<CommitState> {
        self.slots[partition as usize].lock().unwrap().clone()
    }

    /// Forgets `partition`'s published and committed state (its partition moved to
    /// another instance: nothing more is committed for it from here).
    pub fn forget(&self, partition: u32) {
        *self.slots[partition as usize].lock().unwrap() = None;
        self.committed.lock().unwrap()[partition as usize] = None;
    }

    /// The partitions whose published state changed since it was last committed.
    pub fn changed(&self) -> Vec<(u32, CommitState)> {
        let committed = self.committed.lock().unwrap();
        let mut entries = Vec::new();
        for (p, slot) in self.slots.iter().enumerate() {
            if let Some(state) = slot.lock().unwrap().clone()
                && committed[p].as_ref() != Some(&state)
            {
                entries.push((p as u32, state));
            }
        }
        entries
    }

    /// Records that `entries` are committed.
    pub fn mark_committed(&self, entries: Vec<(u32, CommitState)>) {
        let mut committed = self.committed.lock().unwrap();
        for (p, state) in entries {
            committed[p as usize] = Some(state);
        }
    }

    /// Commits every partition whose published state changed since the last commit
    /// to the log (nothing for an [`external`](Self::external) committer).
    ///
    /// # Errors
    /// As [`Log::commit`].
    pub fn commit(&self) -> Result<usize, LogError> {
        let Some((log, name)) = &self.log else {
            return Ok(0);
        };
        let entries = self.changed();
        if entries.is_empty() {
            return Ok(0);
        }
        let commits: Vec<OffsetCommit<'_>> = entries
            .iter()
            .map(|(p, (offset, meta))| OffsetCommit {
                partition: *p,
                offset: *offset,
                metadata: meta,
            })
            .collect();
        log.commit(name, &commits)?;
        let n = entries.len();
        self.mark_committed(entries);
        Ok(n)
    }

    /// The state checkpoint last committed for `partition` by this committer, if any.
    pub fn committed_state_id(&self, partition: u32) -> Option<u64> {
        self.committed.lock().unwrap()[partition as usize]
            .as_ref()
            .and_then(|(_, meta)| ReplayState::decode(meta))
            .and_then(|s| s.state_id)
    }

    /// The last offset committed for `partition`, if any.
    pub fn committed_offset(&self, partition: u32) -> Option<u64> {
        self.committed.lock().unwrap()[partition as usize]
            .as_ref()
            .map(|(offset, _)| *offset)
    }
}

/// Settings of a consumer.
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    /// The consumer's name (offsets and dead letters are kept under it).
    pub name: String,
    /// Watermark bound, milliseconds.
    pub out_of_orderness_ms: i64,
    /// Micro-batch count bound.
    pub batch_max_events: usize,
    /// Micro-batch age bound.
    pub batch_max_age: Duration,
    /// Bytes read from the log at a time (bounds memory).
    pub read_bytes: usize,
    /// The windows.
    pub windowing: Windowing,
    /// Fingerprint of the field names records must have been extracted with.
    pub fields_id: u32,
    /// Extracts the fields again from records written with other field names.
    pub extractor: JsonExtractor,
    /// Extracts them again from such records holding Protobuf (the pipeline's schema).
    #[cfg(feature = "protobuf")]
    pub protobuf: Option<crate::codec::protobuf::ProtobufExtractor>,
    /// Acknowledgements a checkpoint needs (shards x sinks).
    pub paths: usize,
    /// How often to publish the commit state.
    pub commit_interval: Duration,
    /// The numbers events carry after the operators (the extractor's first, then those
    /// operators add); equal to the extractor's when there are no operators.
    pub number_fields: Arc<[String]>,
    /// Bytes the micro-batches waiting in the shards' queues may hold, over all
    /// consumers: a batch waits for room before it is sent.
    pub queue_budget: ByteBudget,
    /// A micro-batch is also cut when it holds about this many bytes.
    pub max_batch_bytes: usize,
    /// A partition with no record for this long is idle: its watermark follows the
    /// lowest watermark of the partitions that are not (`None`: never idle).
    pub idle_timeout: Option<Duration>,
    /// Every partition's watermark and idleness, shared by the consumers.
    pub watermarks: Arc<Watermarks>,
    /// Pre-aggregate hot keys in the consumer (the first of two stages, see
    /// [`crate::hot_keys`]).
    pub pre_aggregate: bool,
    /// The aggregates the windows compute (what a first-stage partial holds).
    pub row_schema: Arc<crate::window::RowSchema>,
    /// Drop events whose id was seen within this horizon of event time, remembering at
    /// most this many ids (see [`crate::dedup`]); `None`: no dedup.
    pub dedup: Option<(i64, usize)>,
    /// Save the open windows with the committed offsets (see [`crate::state`]); `None`:
    /// commit the offset of the oldest open window and replay from it on restart.
    pub state: Option<StateSettings>,
}

/// How a consumer takes state checkpoints.
#[derive(Debug, Clone)]
pub struct StateSettings {
    /// Where they are saved.
    pub dir: crate::state::StateDir,
    /// How often one is taken (also at a stop and at the end of the input).
    pub interval: Duration,
}

/// The watermark of every partition and whether it is idle, so an idle partition can
/// follow the others (see [`ConsumerSettings::idle_timeout`]). Written once per
/// micro-batch.
#[derive(Debug)]
pub struct Watermarks {
    marks: Vec<std::sync::atomic::AtomicI64>,
    idle: Vec<std::sync::atomic::AtomicBool>,
}

impl Watermarks {
    /// `partitions` partitions, none with a watermark yet, none idle.
    pub fn new(partitions: u32) -> Self {
        Watermarks {
            marks: (0..partitions)
                .map(|_| std::sync::atomic::AtomicI64::new(i64::MIN))
                .collect(),
            idle: (0..partitions)
                .map(|_| std::sync::atomic::AtomicBool::new(false))
                .collect(),
        }
    }

    fn set(&self, partition: u32, watermark: i64, idle: bool) {
        if let Some(m) = self.marks.get(partition as usize) {
            m.store(watermark, Ordering::Relaxed);
            self.idle[partition as usize].store(idle, Ordering::Relaxed);
        }
    }

    /// The lowest watermark of the partitions other than `partition` that are not
    /// idle; `None` if every other partition is idle.
    pub fn lowest_active(&self, partition: u32) -> Option<i64> {
        (0..self.marks.len())
            .filter(|&q| q != partition as usize && !self.idle[q].load(Ordering::Relaxed))
            .map(|q| self.marks[q].load(Ordering::Relaxed))
            .min()
    }
}

/// Where a consumer's records come from; dead letters name the place.
#[derive(Debug, Clone)]
pub enum Origin {
    /// A partition of the embedded log (the consumer's partition number).
    Log,
    /// A Kafka topic's partition.
    Kafka {
        /// The topic.
        topic: Arc<str>,
        /// The partition, as Kafka numbers it.
        partition: i32,
    },
}

/// One record as a consumer reads it.
#[derive(Debug, Clone, Copy)]
pub enum RecordRef<'r> {
    /// A record of the embedded log (an encoded [`EventRef`]).
    Log(&'r [u8]),
    /// A message of a Kafka topic: the original JSON, and the message's key, which
    /// becomes the event's key when present (else the JSON's key field does).
    Message {
        /// The message key.
        key: Option<&'r [u8]>,
        /// The message value.
        payload: &'r [u8],
    },
}

#[derive(Debug, Clone, Copy)]
struct OpenWindow {
    start: i64,
    first_offset: u64,
    max_ts_before: i64,
}

/// One partition's consumer.
pub struct Consumer {
    partition: u32,
    /// The log read by [`run`](Self::run); `None` when someone else feeds the records.
    log: Option<Log>,
    origin: Origin,
    dead_letters: DeadLetters,
    settings: ConsumerSettings,
    shards: Vec<Sender<ShardMsg>>,
    control: Arc<Control>,
    committer: Arc<Committer>,
    progress: Arc<PartitionProgress>,
    late_pid: u64,
    // Replay state restored at start.
    restored: ReplayState,
    late_seq: u64,
    // Running state.
    max_ts: i64,
    through: u64,
    open: Vec<OpenWindow>,
    last_noted: Option<i64>,
    batches: Vec<ShardBatch>,
    /// Events routed to shards in the current micro-batch.
    pending: usize,
    /// Approximate bytes held by the current micro-batch (routed and dead-lettered).
    batch_bytes: usize,
    batch_started: Option<Instant>,
    /// Dead letters of the current micro-batch, with their offsets.
    late: Vec<(u64, DeadLetter)>,
    /// The newest dead-letter append, carried by every later checkpoint: a checkpoint
    /// is committed only once every dead letter before it is durable.
    last_dead_letters: Option<DurableTicket>,
    numbers: Vec<f64>,
    /// The partition's operators; `None` when the pipeline has none.
    chain: Option<OperatorChain>,
    processed_since_flush: u64,
    last_marker: Option<(u64, i64)>,
    checkpoint_seq: u64,
    last_checkpoint: Option<Arc<Checkpoint>>,
    last_published: Option<u64>,
    last_publish_at: Instant,
    /// Messages for the shards not sent yet, in order (shard, message).
    outbox: VecDeque<(usize, ShardMsg)>,
    /// Wait for room in the shards' queues (a thread of its own), or leave what does
    /// not fit in the outbox for later (a poll loop that must not block).
    blocking: bool,
    /// When the last records arrived.
    last_record_at: Instant,
    /// No record for `idle_timeout`: the watermark follows the other partitions'.
    idle: bool,
    /// When the last state checkpoint was taken, and its id.
    last_state: (Instant, u64),
    /// `through` at the last state checkpoint.
    state_through: u64,
    /// Ids seen recently, with dedup on.
    seen: Option<crate::dedup::SeenIds>,
    /// Duplicates dropped in the current micro-batch.
    duplicates: u64,
    /// Heavy-hitter detection (for the metrics and the first stage); `None` for
    /// session windows.
    hot: Option<crate::hot_keys::HotKeys>,
    /// Per shard: the hot keys' partial aggregates of the current micro-batch.
    combiners: Vec<crate::hot_keys::Combiner>,
    /// The next cut takes a state checkpoint even if nothing changed since the last.
    force_state: bool,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("partition", &self.partition)
            .field("through", &self.through)
            .finish_non_exhaustive()
    }
}

impl Consumer {
    /// A consumer of `partition`, resuming from the committed offset.
    ///
    /// # Errors
    /// The committed offsets cannot be read.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        partition: u32,
        log: Log,
        dead_letters: DeadLetters,
        settings: ConsumerSettings,
        shards: Vec<Sender<ShardMsg>>,
        control: Arc<Control>,
        committer: Arc<Committer>,
        chain: Option<OperatorChain>,
    ) -> Result<Self, LogError> {
        let committed = log.committed(&settings.name)?;
        let (start, restored) = match &committed[partition as usize] {
            // Offsets moved by `lungfish log reset-offsets` carry no state: start fresh
            // from there (windows are rebuilt from that offset on).
            Some(c) if c.metadata.is_empty() => (c.offset, ReplayState::INITIAL),
            Some(c) => {
                let state = ReplayState::decode(&c.metadata).ok_or_else(|| LogError::BadFile {
                    path: log.dir().join("consumers"),
                    reason: format!(
                        "consumer {:?} partition {partition}: offset metadata was not written by a window consumer",
                        settings.name
                    ),
                })?;
                (c.offset, state)
            }
            None => (0, ReplayState::INITIAL),
        };
        let mut consumer = Consumer::resuming(
            partition,
            Origin::Log,
            start,
            restored,
            dead_letters,
            settings,
            shards,
            control,
            committer,
            chain,
        );
        if let (Some(st), Some(id)) = (&consumer.settings.state, restored.state_id) {
            let dir = st.dir.checkpoint(partition, id);
            consumer.restore_blob(&dir).map_err(|e| LogError::BadFile {
                path: dir.join("consumer.bin"),
                reason: e.to_string(),
            })?;
        }
        consumer.log = Some(log);
        consumer.blocking = true;
        Ok(consumer)
    }

    /// A consumer of `partition` fed by someone else (see
    /// [`process_records`](Self::process_records)), resuming at `start` with `restored`
    /// (what was committed with that offset). It never blocks: what does not fit in
    /// the shards' queues waits in its outbox ([`send_outbox`](Self::send_outbox)).
    #[allow(clippy::too_many_arguments)]
    pub fn resuming(
        partition: u32,
        origin: Origin,
        start: u64,
        restored: ReplayState,
        dead_letters: DeadLetters,
        settings: ConsumerSettings,
        shards: Vec<Sender<ShardMsg>>,
        control: Arc<Control>,
        committer: Arc<Committer>,
        chain: Option<OperatorChain>,
    ) -> Self {
        let late_pid = late_producer_id(&settings.name, partition);
        let late_seq = dead_letters.producer_seq(late_pid).unwrap_or(0);
        let shard_count = shards.len();
        let per_shard = settings.batch_max_events / shard_count.max(1) + 16;
        let numbers = vec![0.0; settings.extractor.fields().numbers.len()];
        Consumer {
            partition,
            log: None,
            origin,
            dead_letters,
            shards,
            control,
            committer,
            progress: Arc::new(PartitionProgress::default()),
            late_pid,
            restored,
            late_seq,
            max_ts: restored.max_ts,
            through: start,
            open: Vec::new(),
            last_noted: None,
            batches: (0..shard_count)
                .map(|_| batch_with_capacity(partition, per_shard))
                .collect(),
            pending: 0,
            batch_bytes: 0,
            batch_started: None,
            late: Vec::new(),
            last_dead_letters: None,
            numbers,
            chain: chain.filter(|c| !c.is_empty()),
            processed_since_flush: 0,
            last_marker: None,
            checkpoint_seq: 0,
            last_checkpoint: None,
            last_published: None,
            last_publish_at: Instant::now(),
            outbox: VecDeque::new(),
            blocking: false,
            last_record_at: Instant::now(),
            idle: false,
            last_state: (Instant::now(), restored.state_id.unwrap_or(0)),
            state_through: start,
            force_state: false,
            seen: settings
                .dedup
                .map(|(horizon, max_ids)| crate::dedup::SeenIds::new(horizon, max_ids)),
            duplicates: 0,
            hot: (!settings.windowing.is_session()).then(crate::hot_keys::HotKeys::default),
            combiners: (0..shard_count)
                .map(|_| crate::hot_keys::Combiner::default())
                .collect(),
            settings,
        }
    }

    /// Runs until the input is finished and processed, a stop, or an abort.
    pub fn run(mut self) {
        if let Err(e) = self.run_inner() {
            self.control
                .abort(format!("consumer of partition {}: {e}", self.partition));
        }
    }

    fn run_inner(&mut self) -> Result<(), LogError> {
        let log = self
            .log
            .clone()
            .expect("run needs a log: built with Consumer::new");
        let mut reader: PartitionReader = log.reader(self.partition, self.through)?;
        loop {
            if self.control.is_aborting() {
                return Ok(());
            }
            if self.control.is_stopping() {
                return self.close(false);
            }
            let chunk = reader.read(self.settings.read_bytes)?;
            if chunk.is_empty() {
                if self.has_batch() && self.batch_age() >= self.settings.batch_max_age {
                    self.flush(false);
                }
                if self.control.stats.sources_done.load(Ordering::SeqCst)
                    && reader.position() >= log.end_offset(self.partition)
                {
                    // All input is in and processed: every window can close.
                    self.flush(true);
                    return self.finish();
                }
                self.check_idle();
                self.check_state_due();
                self.maybe_publish();
                let wait = if self.has_batch() {
                    self.settings
                        .batch_max_age
                        .saturating_sub(self.batch_age())
                        .max(Duration::from_millis(1))
                } else {
                    Duration::from_millis(50)
                };
                reader.wait(wait.min(Duration::from_millis(50)));
                continue;
            }
            self.process_records(
                chunk.records().map(|(o, r)| (o, RecordRef::Log(r))),
                chunk.record_count() as usize,
            );
            if self.has_batch() && self.batch_age() >= self.settings.batch_max_age {
                self.flush(false);
            }
            self.maybe_publish();
        }
    }

    /// For a consumer fed by someone else, between records: cuts the micro-batch if it
    /// is `batch_max_age` old, sends what the shards have room for, and publishes the
    /// latest completed checkpoint every `commit_interval`.
    pub fn tick(&mut self) {
        if self.has_batch() && self.batch_age() >= self.settings.batch_max_age {
            self.cut(false);
        }
        self.check_idle();
        self.check_state_due();
        self.send_outbox();
        self.maybe_publish();
    }

    /// With state checkpoints on and no micro-batch in the making: if the last one is
    /// `interval` old and records were processed since, takes one now (a quiet
    /// partition must still commit, or a full log would never free room).
    fn check_state_due(&mut self) {
        let Some(st) = &self.settings.state else {
            return;
        };
        if self.has_batch()
            || self.through == self.state_through
            || self.last_state.0.elapsed() < st.interval
        {
            return;
        }
        self.force_state = true;
        self.cut(false);
        self.send_outbox();
    }

    /// With an idle timeout: once no record has come for that long, marks the partition
    /// idle and raises its watermark to the lowest of the partitions still receiving
    /// events, sending a marker that closes what that allows. Raising it is like
    /// receiving an event at that time: an event arriving later below the new watermark
    /// is late.
    fn check_idle(&mut self) {
        let Some(timeout) = self.settings.idle_timeout else {
            return;
        };
        if self.has_batch() || self.last_record_at.elapsed() < timeout {
            return;
        }
        if !self.idle {
            self.idle = true;
            tracing::info!(
                partition = self.partition,
                "partition idle for {timeout:?}: its watermark follows the other partitions'"
            );
        }
        let ooo = self.settings.out_of_orderness_ms;
        let own = self.max_ts.saturating_sub(ooo);
        let others = self.settings.watermarks.lowest_active(self.partition);
        self.settings.watermarks.set(self.partition, own, true);
        if let Some(target) = others.filter(|&t| t > own && t != i64::MIN) {
            self.max_ts = target.saturating_add(ooo);
            metrics::counter!("lungfish_idle_advances_total").increment(1);
            self.cut(false);
            self.send_outbox();
        }
    }

    /// The next offset to process (every record before it has been).
    pub fn position(&self) -> u64 {
        self.through
    }

    /// Ends a consumer fed by someone else: cuts the micro-batch (closing every window
    /// if `close_all`, the input being finished), waits for room to send it, then for
    /// its checkpoint to complete, and publishes it. Returns at once if the pipeline
    /// aborts.
    ///
    /// # Errors
    /// The dead-letter queue failed.
    pub fn close(&mut self, close_all: bool) -> Result<(), LogError> {
        self.blocking = true;
        // With state checkpoints only they are committed: the last marker may have
        // been a plain one, and a stop must still commit through what it processed.
        if self.settings.state.is_some() {
            self.force_state = true;
        }
        self.flush(close_all);
        self.finish()
    }

    /// True if the current micro-batch holds anything (events or dead letters).
    fn has_batch(&self) -> bool {
        self.pending > 0 || !self.late.is_empty()
    }

    /// Starts the micro-batch's age clock with its first item.
    #[inline]
    fn note_item(&mut self, bytes: usize) {
        if !self.has_batch() {
            self.batch_started = Some(Instant::now());
        }
        self.batch_bytes += bytes;
    }

    fn batch_age(&self) -> Duration {
        self.batch_started.map_or(Duration::ZERO, |t| t.elapsed())
    }

    #[inline]
    fn flush_if_full(&mut self) {
        if self.pending + self.late.len() >= self.settings.batch_max_events
            || self.batch_bytes >= self.settings.max_batch_bytes
        {
            self.flush(false);
        }
    }

    /// Processes `records` (in offset order; about `count` of them): through the
    /// operators if there are any, then routed to the shards in micro-batches, which are
    /// cut as they fill.
    pub fn process_records<'r>(
        &mut self,
        records: impl Iterator<Item = (u64, RecordRef<'r>)>,
        count: usize,
    ) {
        self.last_record_at = Instant::now();
        self.idle = false;
        if self.chain.is_some() {
            self.process_with_operators(records, count);
        } else {
            for (offset, record) in records {
                self.process(offset, record);
                self.flush_if_full();
            }
        }
    }

    #[inline]
    fn process(&mut self, offset: u64, record: RecordRef<'_>) {
        self.through = offset + 1;
        self.processed_since_flush += 1;
        match self.decode(record) {
            Ok((key, ts, raw)) => {
                let numbers = std::mem::take(&mut self.numbers);
                self.route(offset, &key, ts, &numbers, raw);
                self.numbers = numbers;
            }
            Err((DUPLICATE, _, _)) => self.duplicates += 1,
            Err((kind, reason, payload)) => self.dead_letter(kind, reason, offset, payload),
        }
    }

    /// A chunk through the operators: decode every record into one batch, run the
    /// chain over it, then route what is live and dead-letter what failed, in offset
    /// order.
    ///
    /// The batch lives in the chain's memory of the previous chunk, sized for the chunk
    /// up front; a failed event's entry takes its failure's reason without a copy, and
    /// the entries of a chunk share one clock reading (they go to the queue with the
    /// micro-batch, in one append).
    fn process_with_operators<'r>(
        &mut self,
        records: impl Iterator<Item = (u64, RecordRef<'r>)>,
        count: usize,
    ) {
        let fields = self.settings.number_fields.clone();
        let mut chain = self.chain.take().expect("called with operators");
        let mut batch: OperatorBatch<'_> = chain.batch(&fields, count);
        // Records that could not be decoded (rare), with their offsets, in order.
        let mut bad: Vec<(u64, &'static str, String, &[u8])> = Vec::new();
        for (offset, record) in records {
            match self.decode(record) {
                Ok((key, ts, raw)) => batch.push(
                    EventSlot {
                        offset,
                        key,
                        ts,
                        raw,
                    },
                    &self.numbers,
                ),
                Err((kind, reason, payload)) => bad.push((offset, kind, reason, payload)),
            }
        }
        chain.run(&mut batch);
        // When this chunk's entries are written: after every failure of the chunk.
        let mut now = None;
        let mut bad = bad.into_iter().peekable();
        let mut ints = itoa::Buffer::new();
        for i in 0..=batch.len() {
            // The undecodable records before event `i` (after the last event at the end).
            let next = (i < batch.len()).then(|| batch.event(i).offset);
            while let Some((offset, kind, reason, payload)) =
                bad.next_if(|b| next.is_none_or(|n| b.0 < n))
            {
                self.through = offset + 1;
                self.processed_since_flush += 1;
                if kind == DUPLICATE {
                    self.duplicates += 1;
                } else {
                    self.dead_letter(kind, reason, offset, payload);
                }
                self.flush_if_full();
            }
            let Some(offset) = next else { break };
            self.through = offset + 1;
            self.processed_since_flush += 1;
            match batch.verdict(i) {
                Verdict::Live => {
                    let e = batch.event(i);
                    self.route(offset, &e.key, e.ts, batch.numbers(i), e.raw);
                }
                Verdict::Dropped => {}
                Verdict::Failed(_) => {
                    if offset >= self.restored.processed_through.max(self.late_seq) {
                        let raw = batch.event(i).raw;
                        self.note_item(raw.len() + 256);
                        let now = *now.get_or_insert_with(crate::dlq::now_ms);
                        let (attempts, first, by) = (
                            batch.attempts(i),
                            batch.first_failure_ms(i),
                            batch.failed_by(i),
                        );
                        let Verdict::Failed(f) = batch.take_verdict(i) else {
                            unreachable!("matched above")
                        };
                        let location = self.location(offset, &mut ints);
                        let entry = DeadLetter::failed_on(
                            now,
                            chain.stage(by),
                            f.kind,
                            f.reason,
                            location,
                            raw.to_vec(),
                        )
                        .with_attempts(attempts)
                        .first_failed_at(first);
                        let entry = self.positioned(entry, offset);
                        self.late.push((offset, entry));
                    }
                }
            }
            self.flush_if_full();
        }
        chain.recycle(batch);
        self.chain = Some(chain);
    }

    /// Decodes a record into key, event time and original JSON, with its numbers in
    /// `self.numbers`; or says why it cannot go on (kind, reason, payload).
    #[allow(clippy::type_complexity)]
    #[inline]
    fn decode<'r>(
        &mut self,
        record: RecordRef<'r>,
    ) -> Result<(std::borrow::Cow<'r, [u8]>, i64, &'r [u8]), (&'static str, String, &'r [u8])> {
        let record = match record {
            RecordRef::Log(record) => record,
            RecordRef::Message { key, payload } => return self.decode_message(key, payload),
        };
        let event = match EventRef::decode(record) {
            Ok(e) => e,
            Err(e) => return Err(("undecodable", e.to_string(), record)),
        };
        let n = self.numbers.len();
        let (key, ts): (std::borrow::Cow<'_, [u8]>, i64) = if event.fields_id
            == self.settings.fields_id
            && event.number_count() == n
        {
            for i in 0..n {
                self.numbers[i] = event.number(i);
            }
            (std::borrow::Cow::Borrowed(event.key), event.ts)
        } else {
            // Written with other field names: extract again from the stored payload.
            match event.format {
                crate::codec::InputFormat::Json => match self
                    .settings
                    .extractor
                    .extract(event.raw, &mut self.numbers)
                {
                    Ok(x) => (std::borrow::Cow::Owned(x.key.as_bytes().to_vec()), x.ts),
                    Err(r) => return Err((r.kind(), r.to_string(), event.raw)),
                },
                #[cfg(feature = "protobuf")]
                crate::codec::InputFormat::Protobuf if self.settings.protobuf.is_some() => {
                    let pb = self.settings.protobuf.as_ref().expect("checked");
                    match pb.extract(event.raw, &mut self.numbers) {
                        Ok(x) => {
                            let key = x.key.to_cow().into_owned().into_bytes();
                            (std::borrow::Cow::Owned(key), x.ts)
                        }
                        Err(r) => return Err((r.kind(), r.to_string(), event.raw)),
                    }
                }
                crate::codec::InputFormat::Protobuf => {
                    let reason = "the record holds Protobuf and the pipeline has no [protobuf] schema to read it with".to_owned();
                    return Err(("unsupported_format", reason, event.raw));
                }
            }
        };
        if !(-MAX_EVENT_TIME..=MAX_EVENT_TIME).contains(&ts) {
            let reason =
                format!("event time {ts} is outside the supported range of ±{MAX_EVENT_TIME} ms");
            return Err(("out_of_range", reason, event.raw));
        }
        if self.is_duplicate(event.id, ts) {
            return Err((DUPLICATE, String::new(), event.raw));
        }
        Ok((key, ts, event.raw))
    }

    /// With dedup on: true if an event with this id (non-empty) was seen within the
    /// horizon; otherwise remembers it.
    #[inline]
    fn is_duplicate(&mut self, id: &[u8], ts: i64) -> bool {
        match &mut self.seen {
            Some(seen) if !id.is_empty() => {
                !seen.first_sighting(xxhash_rust::xxh3::xxh3_64(id), ts)
            }
            _ => false,
        }
    }

    /// Decodes a message's JSON; its key, if it has one, is the event's key.
    #[allow(clippy::type_complexity)]
    #[inline]
    fn decode_message<'r>(
        &mut self,
        key: Option<&'r [u8]>,
        payload: &'r [u8],
    ) -> Result<(std::borrow::Cow<'r, [u8]>, i64, &'r [u8]), (&'static str, String, &'r [u8])> {
        let extractor = &self.settings.extractor;
        let extracted = match key {
            Some(_) => extractor.extract_key_optional(payload, &mut self.numbers),
            None => extractor.extract(payload, &mut self.numbers),
        };
        let x = match extracted {
            Ok(x) => x,
            Err(r) => {
                let reason = match (key, &r) {
                    (None, crate::codec::json::Reject::MissingField { field })
                        if *field == extractor.fields().key =>
                    {
                        format!("{r}, and the message has no key")
                    }
                    _ => r.to_string(),
                };
                return Err((r.kind(), reason, payload));
            }
        };
        let key = match (key, x.key) {
            (Some(k), _) => std::borrow::Cow::Borrowed(k),
            (None, std::borrow::Cow::Borrowed(k)) => std::borrow::Cow::Borrowed(k.as_bytes()),
            (None, std::borrow::Cow::Owned(k)) => std::borrow::Cow::Owned(k.into_bytes()),
        };
        if !(-MAX_EVENT_TIME..=MAX_EVENT_TIME).contains(&x.ts) {
            let reason = format!(
                "event time {} is outside the supported range of ±{MAX_EVENT_TIME} ms",
                x.ts
            );
            return Err(("out_of_range", reason, payload));
        }
        let id = x.id.as_deref().unwrap_or("").as_bytes();
        if self.is_duplicate(id, x.ts) {
            return Err((DUPLICATE, String::new(), payload));
        }
        Ok((key, x.ts, payload))
    }

    /// Where the record at `offset` is, for a dead letter.
    fn location(&self, offset: u64, ints: &mut itoa::Buffer) -> String {
        let mut location = String::with_capacity(64);
        match &self.origin {
            Origin::Log => {
                location.push_str("log partition ");
                location.push_str(ints.format(self.partition));
            }
            Origin::Kafka { topic, partition } => {
                location.push_str("kafka topic ");
                location.push_str(topic);
                location.push_str(" partition ");
                location.push_str(ints.format(*partition));
            }
        }
        location.push_str(" offset ");
        location.push_str(ints.format(offset));
        location
    }

    /// `entry` with its position in the log, when it came from the log (the queue's
    /// replay writes it back there).
    fn positioned(&self, entry: DeadLetter, offset: u64) -> DeadLetter {
        match self.origin {
            Origin::Log => entry.from_log(self.partition, offset),
            Origin::Kafka { .. } => entry,
        }
    }

    /// Routes a decoded event: late to the dead-letter queue, else to its key's shard.
    #[inline]
    fn route(&mut self, offset: u64, key: &[u8], ts: i64, numbers: &[f64], raw: &[u8]) {
        let w = self.settings.windowing;
        let watermark = self
            .max_ts
            .saturating_sub(self.settings.out_of_orderness_ms);
        // Windows ending at or before `closed` are final: by the watermark less the
        // allowed lateness, or by an earlier run (restored state).
        let closed = self.restored.emitted_through.max(w.final_line(watermark));
        let last_end = w.last_end(ts);
        if last_end <= closed {
            // Every window of the event is closed. Before the restored positions this is a
            // replay of an event already accounted for (in an emitted window, or in the
            // dead-letter queue): skip it. After them it is late.
            if offset >= self.restored.processed_through.max(self.late_seq) {
                let reason = if last_end <= w.final_line(watermark) && w.lateness_ms() > 0 {
                    format!(
                        "late: event time {ts} is in window [{}, {last_end}), which closed at watermark {watermark} and is past the allowed lateness of {} ms",
                        w.last_start(ts),
                        w.lateness_ms()
                    )
                } else if last_end <= watermark {
                    format!(
                        "late: event time {ts} is in window [{}, {last_end}), which closed at watermark {watermark}",
                        w.last_start(ts)
                    )
                } else {
                    format!(
                        "late: event time {ts} is in window [{}, {last_end}), which was closed and emitted when an earlier run reached the end of its input",
                        w.last_start(ts)
                    )
                };
                self.note_item(raw.len() + 256);
                let location = self.location(offset, &mut itoa::Buffer::new());
                let entry = DeadLetter::new("window", "late", reason, location, raw.to_vec());
                let entry = self.positioned(entry, offset);
                self.late.push((offset, entry));
            }
        } else {
            let hash = key_hash(key);
            let shard = shard_for(hash, self.batches.len());
            match &mut self.hot {
                Some(hot) if self.settings.pre_aggregate && hot.is_hot(hash) => {
                    hot.observe(hash, key);
                    // The partial grows with the hot keys' windows, not their events.
                    self.combiners[shard].add(
                        &w,
                        &self.settings.row_schema,
                        hash,
                        key,
                        ts,
                        closed,
                        numbers,
                    );
                    self.note_item(0);
                }
                hot => {
                    if let Some(hot) = hot {
                        hot.observe(hash, key);
                    }
                    self.note_item(key.len() + 40 + 8 * numbers.len());
                    self.batches[shard].push(hash, ts, closed, key, numbers.iter().copied());
                }
            }
            self.pending += 1;
            let max_ts_before = self.max_ts;
            let (open, last_noted) = (&mut self.open, &mut self.last_noted);
            // With state checkpoints the committed offset is the checkpoint's own: no
            // need to know where the open windows began.
            let track = self.settings.state.is_none();
            w.for_each_open(ts, closed, |start| {
                if !track {
                    return;
                }
                if *last_noted == Some(start) {
                    return;
                }
                if !open.iter().any(|o| o.start == start) {
                    open.push(OpenWindow {
                        start,
                        first_offset: offset,
                        max_ts_before,
                    });
                }
                *last_noted = Some(start);
            });
        }
        self.max_ts = self.max_ts.max(ts);
    }

    fn dead_letter(&mut self, kind: &str, reason: String, offset: u64, payload: &[u8]) {
        if offset < self.restored.processed_through.max(self.late_seq) {
            return;
        }
        self.note_item(payload.len() + 256);
        let location = self.location(offset, &mut itoa::Buffer::new());
        let entry = DeadLetter::new("consumer", kind, reason, location, payload.to_vec());
        let entry = self.positioned(entry, offset);
        self.late.push((offset, entry));
    }

    /// Cuts the micro-batch and its marker and sends them (see
    /// [`send_outbox`](Self::send_outbox)). With `close_all`, the marker closes every
    /// window (the input is finished).
    pub fn flush(&mut self, close_all: bool) {
        self.cut(close_all);
        self.send_outbox();
    }

    /// True if messages for the shards wait in the outbox (the shards' queues were
    /// full): the caller should not give this consumer more records until
    /// [`send_outbox`](Self::send_outbox) has sent them.
    pub fn is_backed_up(&self) -> bool {
        !self.outbox.is_empty()
    }

    /// Sends what waits in the outbox to the shards, in order. A blocking consumer
    /// waits for room (backpressure); otherwise sending stops at the first full queue
    /// and the rest waits for the next call. Returns true if the outbox is empty.
    pub fn send_outbox(&mut self) -> bool {
        while let Some((s, msg)) = self.outbox.pop_front() {
            let msg = match msg {
                ShardMsg::Events(mut batch) if !batch.lease.is_held() => {
                    // Room in the shards' queue bytes (backpressure in bytes).
                    let budget = &self.settings.queue_budget;
                    let lease = if self.blocking {
                        budget.acquire_patiently(batch.heap_bytes(), &self.control)
                    } else {
                        budget.try_acquire(batch.heap_bytes())
                    };
                    match lease {
                        Some(lease) => batch.lease = lease,
                        None => {
                            self.outbox.push_front((s, ShardMsg::Events(batch)));
                            return false;
                        }
                    }
                    ShardMsg::Events(batch)
                }
                other => other,
            };
            if self.blocking {
                if !send_patiently(&self.shards[s], msg, &self.control) {
                    // Aborting: nothing more will be sent.
                    self.outbox.clear();
                    return false;
                }
            } else {
                match self.shards[s].try_send(msg) {
                    Ok(()) => {}
                    Err(crossbeam_channel::TrySendError::Full(msg)) => {
                        self.outbox.push_front((s, msg));
                        return false;
                    }
                    Err(crossbeam_channel::TrySendError::Disconnected(_)) => {
                        self.control.abort("a pipeline stage stopped unexpectedly");
                        self.outbox.clear();
                        return false;
                    }
                }
            }
        }
        true
    }

    /// Gives up this consumer's partition (it moved to another instance): what was not
    /// sent is dropped, and every shard is told to drop the partition's open windows
    /// once it has what was sent before. The outbox then holds only those notices.
    pub fn abandon(&mut self) {
        self.outbox.clear();
        for batch in &mut self.batches {
            *batch = batch_with_capacity(self.partition, 0);
        }
        self.late.clear();
        self.pending = 0;
        self.batch_bytes = 0;
        self.batch_started = None;
        for s in 0..self.shards.len() {
            self.outbox.push_back((s, ShardMsg::Forget(self.partition)));
        }
    }

    /// Takes over `other`'s unsent messages, ahead of this consumer's own (a partition
    /// given back before the notices of its abandonment were all sent).
    pub fn inherit_outbox(&mut self, other: Consumer) {
        let mut outbox = other.outbox;
        outbox.append(&mut self.outbox);
        self.outbox = outbox;
    }

    /// Moves the micro-batch into the outbox, appends its dead letters, and puts a
    /// checkpoint marker behind it for every shard.
    fn cut(&mut self, close_all: bool) {
        let partition = self.partition;
        let per_shard = self.settings.batch_max_events / self.batches.len().max(1) + 16;
        for (s, batch) in self.batches.iter_mut().enumerate() {
            if !self.combiners[s].is_empty() {
                batch.partials = self.combiners[s].take();
            }
            if batch.is_empty() {
                continue;
            }
            let full = std::mem::replace(batch, batch_with_capacity(partition, per_shard));
            self.outbox.push_back((s, ShardMsg::Events(full)));
        }
        let wrote_dead_letters = !self.late.is_empty();
        if wrote_dead_letters {
            let late = self.late.iter().filter(|(_, d)| d.kind == "late").count() as u64;
            self.control.stats.late.fetch_add(late, Ordering::Relaxed);
            metrics::counter!("lungfish_late_events_total").increment(late);
            match self
                .dead_letters
                .append_positioned(&self.late, self.late_pid, None)
            {
                Ok(t) => self.last_dead_letters = t.or(self.last_dead_letters.take()),
                Err(e) => {
                    self.control
                        .abort(format!("dead-letter queue, partition {partition}: {e}"));
                    return;
                }
            }
            self.late.clear();
        }
        let normal = self.restored.emitted_through.max(
            self.max_ts
                .saturating_sub(self.settings.out_of_orderness_ms),
        );
        let final_line = self
            .restored
            .emitted_through
            .max(self.settings.windowing.final_line(normal));
        // At the end of the input every window closes; what is recorded as final is the
        // last window that can hold any event seen, so later input (a longer file, a
        // larger count) finds those windows closed and dead-letters what falls into them,
        // and is processed normally past them.
        let (watermark, emitted_through) = if close_all {
            let last = if self.max_ts == i64::MIN {
                i64::MIN
            } else {
                self.settings.windowing.last_end(self.max_ts)
            };
            (i64::MAX, final_line.max(last))
        } else {
            (normal, final_line)
        };
        if let Some(hot) = &mut self.hot
            && hot.end_batch()
        {
            let top: Vec<(String, f64)> = hot
                .top()
                .iter()
                .take(5)
                .map(|k| (k.key.clone(), k.share))
                .collect();
            let p = partition.to_string();
            metrics::gauge!("lungfish_hot_keys", "partition" => p.clone())
                .set(hot.hot_count() as f64);
            for rank in 0..3 {
                metrics::gauge!("lungfish_hot_key_share", "partition" => p.clone(), "rank" => (rank + 1).to_string())
                    .set(top.get(rank).map_or(0.0, |k| k.1));
            }
            self.control.stats.report_hot_keys(partition, top);
        }
        let duplicates = std::mem::take(&mut self.duplicates);
        if duplicates > 0 {
            self.control
                .stats
                .duplicates
                .fetch_add(duplicates, Ordering::Relaxed);
            metrics::counter!("lungfish_duplicates_dropped_total").increment(duplicates);
        }
        let processed = std::mem::take(&mut self.processed_since_flush);
        self.control
            .stats
            .processed
            .fetch_add(processed, Ordering::Relaxed);
        crate::telemetry::stage("consumer", processed, self.pending as u64);
        crate::telemetry::batch_size("consumer", processed);
        metrics::gauge!("lungfish_consumer_offset", "partition" => partition.to_string())
            .set(self.through as f64);
        self.pending = 0;
        self.batch_bytes = 0;
        self.batch_started = None;
        self.settings.watermarks.set(partition, normal, self.idle);
        if self.last_marker == Some((self.through, watermark))
            && !wrote_dead_letters
            && !self.force_state
        {
            return;
        }
        self.force_state = false;
        self.last_marker = Some((self.through, watermark));
        let state = self.take_state(close_all);
        if state.is_none() && self.control.is_aborting() {
            return;
        }
        let paths = self.settings.paths + state.as_ref().map_or(0, |_| self.shards.len());
        self.checkpoint_seq += 1;
        let cp: Arc<Checkpoint> = Checkpoint::new(
            partition,
            self.checkpoint_seq,
            self.through,
            watermark,
            emitted_through,
            self.max_ts,
            self.last_dead_letters.clone(),
            state,
            paths,
            self.progress.clone(),
        );
        for s in 0..self.shards.len() {
            self.outbox.push_back((s, ShardMsg::Marker(cp.clone())));
        }
        self.last_checkpoint = Some(cp);
    }

    /// With state checkpoints on, whether this checkpoint saves state (every
    /// `interval`, at a stop and at the end of the input): creates its directory and
    /// writes the consumer's own part. Aborts the pipeline if it cannot.
    fn take_state(&mut self, close_all: bool) -> Option<crate::checkpoint::StateCheckpoint> {
        let st = self.settings.state.as_ref()?;
        if !(close_all || self.control.is_stopping() || self.last_state.0.elapsed() >= st.interval)
        {
            return None;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let id = now.max(self.last_state.1 + 1);
        let made = st
            .dir
            .create(self.partition, id)
            .and_then(|dir| crate::state::write_consumer(&dir, &self.state_blob()).map(|()| dir));
        match made {
            Ok(dir) => {
                self.last_state = (Instant::now(), id);
                self.state_through = self.through;
                Some(crate::checkpoint::StateCheckpoint { id, dir })
            }
            Err(e) => {
                self.control.abort(format!(
                    "state checkpoint of partition {}: {e}",
                    self.partition
                ));
                None
            }
        }
    }

    /// The consumer's own part of a state checkpoint.
    ///
    /// Format: `1u8`, then `1u8` and the [`SeenIds`](crate::dedup::SeenIds) encoding
    /// with dedup on, or `0u8`.
    fn state_blob(&self) -> Vec<u8> {
        let mut blob = vec![1u8];
        match &self.seen {
            Some(seen) => {
                blob.push(1);
                seen.encode(&mut blob);
            }
            None => blob.push(0),
        }
        blob
    }

    /// Restores the consumer's own part of state checkpoint `dir`.
    ///
    /// # Errors
    /// The file is missing or damaged.
    fn restore_blob(&mut self, dir: &std::path::Path) -> Result<(), crate::state::StateError> {
        let blob = crate::state::read_consumer(dir)?;
        let damaged = || crate::state::StateError::Damaged {
            path: dir.join("consumer.bin"),
            reason: "not a consumer state this version reads".to_owned(),
        };
        match blob.as_slice() {
            [1, 0] => {}
            [1, 1, rest @ ..] => {
                let mut input = rest;
                let seen = crate::dedup::SeenIds::decode(&mut input).ok_or_else(damaged)?;
                // With dedup still on, keep what was seen (under today's settings'
                // horizon if they changed, the saved ids age out by their own times).
                if self.seen.is_some() {
                    self.seen = Some(seen);
                }
            }
            _ => return Err(damaged()),
        }
        Ok(())
    }

    /// Waits for the last checkpoint to complete, then publishes it.
    fn finish(&mut self) -> Result<(), LogError> {
        if let Some(cp) = self.last_checkpoint.clone() {
            loop {
                if self.control.is_aborting() {
                    return Ok(());
                }
                if self.progress.latest().is_some_and(|d| d.seq >= cp.seq) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        // The last checkpoint's dead letters must be durable before it is committed.
        loop {
            if self.publish(Duration::from_millis(100)) || self.control.is_aborting() {
                return Ok(());
            }
        }
    }

    fn maybe_publish(&mut self) {
        if self.last_publish_at.elapsed() >= self.settings.commit_interval {
            self.publish(Duration::ZERO);
        }
    }

    /// Publishes the commit state of the latest completed checkpoint, waiting up to
    /// `wait` for its dead letters to be durable. Returns false if it could not yet.
    fn publish(&mut self, wait: Duration) -> bool {
        self.last_publish_at = Instant::now();
        let done = if self.settings.state.is_some() {
            self.progress.latest_with_state()
        } else {
            self.progress.latest()
        };
        let Some(done) = done else {
            return true;
        };
        if self.last_published == Some(done.seq) {
            return true;
        }
        if let Some(t) = &done.dead_letters {
            match t.wait(wait) {
                Ok(()) => {}
                Err(LogError::Timeout(_)) => return false, // not durable yet: later
                Err(e) => {
                    // Dead letters before this checkpoint were lost: committing past them
                    // would lose them for good. Stop; a restart writes them again.
                    self.control.abort(format!(
                        "dead-letter queue, partition {}: a write failed: {e}",
                        self.partition
                    ));
                    return true;
                }
            }
        }
        let emitted_through = done.emitted_through.max(self.restored.emitted_through);
        let (offset, state) = if let (Some(st), Some(id)) = (&self.settings.state, done.state) {
            // The state files are durable; their directory entries must be too before
            // the commit names them.
            if let Err(e) = st.dir.sync(self.partition, id) {
                self.control.abort(format!(
                    "state checkpoint of partition {}: {e}",
                    self.partition
                ));
                return true;
            }
            if let Some(committed) = self.committer.committed_state_id(self.partition) {
                st.dir.remove_older(self.partition, Some(committed));
            }
            let state = ReplayState {
                max_ts: done.max_ts,
                emitted_through,
                processed_through: done.through,
                state_id: Some(id),
            };
            (done.through, state)
        } else {
            let w = self.settings.windowing;
            self.open.retain(|o| w.end(o.start) > done.emitted_through);
            self.last_noted = None;
            let (offset, max_ts) = self
                .open
                .iter()
                .filter(|o| o.first_offset < done.through)
                .min_by_key(|o| o.first_offset)
                .map_or((done.through, done.max_ts), |o| {
                    (o.first_offset, o.max_ts_before)
                });
            let state = ReplayState {
                max_ts,
                emitted_through,
                processed_through: done.through,
                state_id: None,
            };
            (offset, state)
        };
        self.committer
            .publish(self.partition, offset, state.encode());
        self.last_published = Some(done.seq);
        true
    }
}

fn batch_with_capacity(partition: u32, events: usize) -> ShardBatch {
    ShardBatch {
        partition,
        hashes: Vec::with_capacity(events),
        ts: Vec::with_capacity(events),
        cutoffs: Vec::with_capacity(events),
        key_data: Vec::with_capacity(events * 8),
        key_ends: Vec::with_capacity(events),
        numbers: Vec::new(),
        partials: Vec::new(),
        lease: Lease::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_state_round_trips() {
        let with_state = ReplayState {
            max_ts: 5,
            emitted_through: 6,
            processed_through: 7,
            state_id: Some(8),
        };
        assert_eq!(ReplayState::decode(&with_state.encode()), Some(with_state));
        let s = ReplayState {
            max_ts: -5,
            emitted_through: i64::MAX,
            processed_through: 77,
            state_id: None,
        };
        assert_eq!(ReplayState::decode(&s.encode()), Some(s));
        assert_eq!(ReplayState::decode(b"nope"), None);
    }
}
