//! The [`Log`] handle: opens the partitions, runs the flusher, owns the offsets.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::{FsyncPolicy, LogConfig, WhenFull};
use crate::format::{BatchBuilder, Producer};
use crate::offsets::{ConsumerOffsets, OffsetCommit, OffsetStore};
use crate::partition::{Appended, Partition, RecoveryReport, RetentionReport, lock};
use crate::reader::PartitionReader;
use crate::segment::partition_dir;
use crate::storage::{FsStorage, Storage, write_file_atomic};
use crate::{LogError, Result};

const META_FILE: &str = "meta";
/// How often retention runs in the background.
const RETENTION_INTERVAL: Duration = Duration::from_secs(1);

/// A partitioned, durable, append-only log. Cheap to clone; all clones share the log, and
/// every method takes `&self`, so clones can be used from many threads at once.
///
/// Opening starts one background thread, which fsyncs by the [`FsyncPolicy`] and
/// applies [`Retention`](crate::Retention) every second. It stops, and a final fsync
/// runs, when the log is [`close`](Self::close)d or the last clone is dropped; dropping
/// it therefore **blocks** for that fsync (not with [`FsyncPolicy::Never`]).
/// [`PartitionReader`]s and [`DurableTicket`](crate::DurableTicket)s keep their
/// partition's files open after that and can still read, but [`PartitionReader::wait`]
/// returns at once and tickets that were not durable fail with [`LogError::Closed`].
///
/// Only one `Log` may have a directory open at a time, across all processes: the log
/// does not lock its directory, and two would overwrite each other's segments. (Lungfish
/// holds a lock on its data directory for this; open a `Log` once and clone it.)
///
/// ```
/// use lungfish_log::{BatchBuilder, Log, LogConfig, OffsetCommit};
/// use std::time::Duration;
///
/// let dir = tempfile::tempdir().unwrap();
/// let config = LogConfig { partitions: 1, ..LogConfig::default() };
/// let log = Log::open(dir.path(), config).unwrap();
///
/// // Append a batch and wait until it is durable before acknowledging it.
/// let mut batch = BatchBuilder::new();
/// batch.push(b"a");
/// batch.push(b"b");
/// let appended = log.append(0, &mut batch, None).unwrap();
/// appended.ticket.wait(Duration::from_secs(5)).unwrap();
/// assert_eq!((appended.base_offset, appended.next_offset), (0, 2));
/// assert_eq!(log.end_offset(0), 2);
///
/// // A consumer resumes from its committed offset (0 if it never committed).
/// let start = log.committed("worker").unwrap()[0].as_ref().map_or(0, |c| c.offset);
/// let mut reader = log.reader(0, start).unwrap();
/// let chunk = reader.read(64 * 1024).unwrap();
/// assert_eq!(chunk.records().map(|(offset, _)| offset).collect::<Vec<_>>(), [0, 1]);
/// let next = chunk.next_offset();
/// log.commit("worker", &[OffsetCommit { partition: 0, offset: next, metadata: b"" }])
///     .unwrap();
/// assert_eq!(log.committed("worker").unwrap()[0].as_ref().unwrap().offset, 2);
/// ```
#[derive(Debug, Clone)]
pub struct Log {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    config: LogConfig,
    storage: Arc<dyn Storage>,
    partitions: Vec<Arc<Partition>>,
    offsets: Arc<Mutex<OffsetStore>>,
    flush: Arc<FlushControl>,
    flusher: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Debug, Default)]
struct FlushControl {
    state: Mutex<FlushState>,
    cond: Condvar,
}

#[derive(Debug, Default)]
struct FlushState {
    stop: bool,
    dirty: bool,
}

/// One segment file, for inspection; see [`Log::segments`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentStats {
    /// Offset of its first record.
    pub base_offset: u64,
    /// Its bytes (the durable part, for the active segment).
    pub bytes: u64,
    /// When its first batch was appended (epoch ms), if it has one.
    pub first_append_ms: Option<i64>,
    /// True for the active (last) segment.
    pub active: bool,
}

/// A summary of one partition, for inspection and metrics; see [`Log::stats`]. A
/// snapshot: appends and retention may change it at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionStats {
    /// The partition.
    pub partition: u32,
    /// Offset of the first record still in the log (earlier ones were deleted by
    /// retention).
    pub start_offset: u64,
    /// Offset after the last durable record.
    pub end_offset: u64,
    /// Offset after the last written (maybe not yet durable) record. Records between
    /// `end_offset` and this are not visible to readers yet, and may still be lost.
    pub written_offset: u64,
    /// Number of segment files.
    pub segments: usize,
    /// Bytes in segment files (durable part of the active one).
    pub bytes: u64,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Log {
    /// Opens the log in `dir`, creating it if needed, recovers every partition (see the
    /// crate documentation for the rules) and starts the background thread.
    ///
    /// This blocks for the recovery: it reads the whole last segment of every partition
    /// and fsyncs it. Recovery **drops data**: an incomplete or invalid tail after the
    /// partition's recovery point (a write that was never acknowledged) is truncated,
    /// with a warning; [`recovery`](Self::recovery) says how many bytes went. It never
    /// drops data before the recovery point: that is an error.
    ///
    /// # Errors
    /// [`LogError::Config`] if `config` is invalid; [`LogError::PartitionCountMismatch`]
    /// if `dir` holds a log with another partition count; [`LogError::BadFile`] if its
    /// `meta` file is damaged; [`LogError::Corrupt`] if a batch before a recovery point
    /// fails its checks or is missing (run [`repair`](crate::repair)); [`LogError::Io`]
    /// if a file or directory cannot be created, read, truncated or fsynced, or the
    /// background thread cannot be started.
    pub fn open(dir: impl AsRef<Path>, config: LogConfig) -> Result<Log> {
        Self::open_with_storage(dir, config, Arc::new(FsStorage))
    }

    /// Like [`open`](Self::open), doing all I/O through `storage`.
    ///
    /// # Errors
    /// As [`open`](Self::open).
    // Public only for the tests in `tests/`, which inject faults or simulate crashes
    // through a `Storage` of their own (see the re-export in lib.rs).
    #[doc(hidden)]
    pub fn open_with_storage(
        dir: impl AsRef<Path>,
        config: LogConfig,
        storage: Arc<dyn Storage>,
    ) -> Result<Log> {
        config.validate()?;
        let dir = dir.as_ref().to_path_buf();
        storage
            .create_dir_all(&dir)
            .map_err(|e| LogError::io("create directory", &dir, e))?;
        let meta = dir.join(META_FILE);
        if storage.exists(&meta) {
            let existing = read_meta(&*storage, &meta)?;
            if existing != config.partitions {
                return Err(LogError::PartitionCountMismatch {
                    dir,
                    existing,
                    configured: config.partitions,
                });
            }
        } else {
            write_file_atomic(
                &*storage,
                &meta,
                format!("lungfish-log 1\npartitions {}\n", config.partitions).as_bytes(),
            )?;
        }
        let mut partitions = Vec::with_capacity(config.partitions as usize);
        for p in 0..config.partitions {
            partitions.push(Partition::open(
                p,
                partition_dir(&dir, p),
                storage.clone(),
                &config,
            )?);
        }
        let offsets = OffsetStore::open(&*storage, dir.join("consumers"), config.partitions)?;
        // The entries of the partition and consumer directories (and of the log's own
        // directory in its parent) must be durable too, or a crash could lose them whole.
        storage
            .sync_dir(&dir)
            .map_err(|e| LogError::io("fsync directory", &dir, e))?;
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            storage
                .sync_dir(parent)
                .map_err(|e| LogError::io("fsync directory", parent, e))?;
        }
        let flush = Arc::new(FlushControl::default());
        let offsets = Arc::new(Mutex::new(offsets));
        let flusher = {
            let (parts, control, offsets, storage) = (
                partitions.clone(),
                flush.clone(),
                offsets.clone(),
                storage.clone(),
            );
            let policy = config.fsync;
            Some(
                std::thread::Builder::new()
                    .name("lungfish-log-flush".into())
                    .spawn(move || run_background(policy, &parts, &control, &offsets, &*storage))
                    .map_err(|e| LogError::io("spawn flusher thread", &dir, e))?,
            )
        };
        Ok(Log {
            inner: Arc::new(Inner {
                dir,
                config,
                storage,
                partitions,
                offsets,
                flush,
                flusher: Mutex::new(flusher),
            }),
        })
    }

    /// The number of partitions of the log in `dir`, from its `meta` file, without
    /// opening it (for opening an existing log with the right
    /// [`LogConfig::partitions`]).
    ///
    /// ```
    /// use lungfish_log::{Log, LogConfig};
    /// let dir = tempfile::tempdir().unwrap();
    /// assert!(Log::partitions_in(dir.path()).is_err()); // no log there yet
    /// Log::open(dir.path(), LogConfig { partitions: 3, ..LogConfig::default() }).unwrap();
    /// assert_eq!(Log::partitions_in(dir.path()).unwrap(), 3);
    /// ```
    ///
    /// # Errors
    /// [`LogError::Io`] if `dir` holds no log (no `meta` file) or it cannot be read,
    /// [`LogError::BadFile`] if the `meta` file is damaged.
    pub fn partitions_in(dir: impl AsRef<Path>) -> Result<u32> {
        read_meta(&FsStorage, &dir.as_ref().join(META_FILE))
    }

    /// The log's directory, as given to [`open`](Self::open).
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The configuration the log was opened with.
    pub fn config(&self) -> &LogConfig {
        &self.inner.config
    }

    /// Number of partitions; valid partition numbers are `0..partitions()`.
    pub fn partitions(&self) -> u32 {
        self.inner.partitions.len() as u32
    }

    fn part(&self, partition: u32) -> Result<&Arc<Partition>> {
        self.inner
            .partitions
            .get(partition as usize)
            .ok_or(LogError::NoSuchPartition {
                partition,
                partitions: self.partitions(),
            })
    }

    /// What recovery did to each partition when the log was opened, indexed by
    /// partition: how many bytes of an unacknowledged tail it truncated, and why.
    pub fn recovery(&self) -> Vec<RecoveryReport> {
        self.inner
            .partitions
            .iter()
            .map(|p| p.recovery.clone())
            .collect()
    }

    /// Appends `batch` to `partition` and returns without waiting for durability; the
    /// batch is durable, and visible to readers, when the returned
    /// [`ticket`](Appended::ticket) resolves. **Acknowledge nothing before that**: until
    /// then a crash or a failed fsync can lose the batch. The builder's records stay in
    /// it (call [`BatchBuilder::clear`] to reuse it).
    ///
    /// Appends to one partition are serialized; each is one positioned write, under a
    /// lock. It can block on more I/O when the batch starts a new segment: the old
    /// segment is fsynced (unless [`FsyncPolicy::Never`]) and a small snapshot file is
    /// written and fsynced first. It never waits for space: see
    /// [`WhenFull::Refuse`](crate::WhenFull::Refuse).
    ///
    /// With a `producer`, the append is idempotent: if `producer.seq` is not above the
    /// last sequence number of `producer.id` in this partition, nothing is written and
    /// [`Appended::duplicate`] is true.
    ///
    /// After a failed write or fsync this call first heals the partition: it cuts off
    /// everything after the last durable byte (those batches' tickets have failed) and
    /// continues from there.
    ///
    /// # Errors
    /// Nothing was written when this fails, except after a failed write (when the
    /// partition is healed on the next append):
    /// * [`LogError::NoSuchPartition`];
    /// * [`LogError::BatchTooLarge`] if the batch is larger than
    ///   [`LogConfig::max_batch_bytes`];
    /// * [`LogError::Config`] if `producer.id` is 0 (reserved);
    /// * [`LogError::Full`] if [`Retention::max_bytes`](crate::Retention::max_bytes)
    ///   would be passed with [`WhenFull::Refuse`](crate::WhenFull::Refuse): try again
    ///   after the named consumers commit;
    /// * [`LogError::Io`] if this write, a segment roll or the healing failed (this
    ///   poisons the partition); a full disk is an I/O error for which
    ///   [`LogError::is_disk_full`] is true;
    /// * [`LogError::Corrupt`] if healing found the durable data damaged.
    pub fn append(
        &self,
        partition: u32,
        batch: &mut BatchBuilder,
        producer: Option<Producer>,
    ) -> Result<Appended> {
        let appended = match self.part(partition)?.append(batch, producer, now_ms()) {
            Ok(a) => a,
            Err(LogError::Full {
                partition,
                bytes,
                limit,
                ..
            }) => {
                // Name the consumers holding the oldest segment, so the error says who to
                // wait for.
                let second = self
                    .part(partition)?
                    .segments()
                    .get(1)
                    .map_or(u64::MAX, |s| s.base);
                let lagging = consumer_positions(
                    &self.inner.offsets,
                    &*self.inner.storage,
                    self.inner.partitions.len(),
                )
                .map(|per| {
                    per[partition as usize]
                        .iter()
                        .filter(|(_, o)| *o < second)
                        .map(|(n, _)| n.clone())
                        .collect()
                })
                .unwrap_or_default();
                return Err(LogError::Full {
                    partition,
                    bytes,
                    limit,
                    lagging,
                });
            }
            Err(e) => return Err(e),
        };
        if self.inner.config.fsync == FsyncPolicy::Always && !appended.duplicate {
            let mut s = self
                .inner
                .flush
                .state
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            s.dirty = true;
            drop(s);
            self.inner.flush.cond.notify_one();
        }
        Ok(appended)
    }

    /// A reader of `partition` positioned at `from_offset`. Creating one does no I/O.
    /// A position before the partition's first record (deleted by retention) makes the
    /// reader start at the first record left, with a warning; a position past the end
    /// waits for records to arrive there. See [`PartitionReader`].
    ///
    /// # Errors
    /// [`LogError::NoSuchPartition`].
    pub fn reader(&self, partition: u32, from_offset: u64) -> Result<PartitionReader> {
        Ok(PartitionReader::new(
            self.part(partition)?.clone(),
            from_offset,
        ))
    }

    /// Offset after the last durable record of `partition`: readers see records up to
    /// here. 0 for a partition that does not exist.
    pub fn end_offset(&self, partition: u32) -> u64 {
        self.part(partition)
            .map_or(0, |p| p.durable_mark().next_offset)
    }

    /// Bytes `partition` can still take before appends fail with [`LogError::Full`];
    /// `None` when it never refuses (no `max_bytes`, or [`WhenFull::DeleteOldest`]).
    /// A writer that must not be refused halfway through a request checks this first,
    /// under its own lock (other writers may append meanwhile). With a limit, `Some(0)`
    /// for a partition that does not exist.
    pub fn room(&self, partition: u32) -> Option<u64> {
        let r = &self.inner.config.retention;
        match (r.max_bytes, r.when_full) {
            (Some(limit), WhenFull::Refuse) => Some(
                self.part(partition)
                    .map_or(0, |p| limit.saturating_sub(p.total_bytes())),
            ),
            _ => None,
        }
    }

    /// The last sequence number `producer_id` appended to `partition`, if any: where a
    /// restarted producer continues (see [`Producer`]). After a reopen it is the last
    /// one that survived recovery. `None` also for a partition that does not exist.
    pub fn producer_seq(&self, partition: u32, producer_id: u64) -> Option<u64> {
        self.part(partition).ok()?.producer_seq(producer_id)
    }

    /// Statistics of one partition. Does no I/O.
    ///
    /// # Errors
    /// [`LogError::NoSuchPartition`].
    pub fn stats(&self, partition: u32) -> Result<PartitionStats> {
        let p = self.part(partition)?;
        let segments = p.segments();
        let mark = p.durable_mark();
        let bytes = p.total_bytes();
        Ok(PartitionStats {
            partition,
            start_offset: segments.first().map_or(0, |s| s.base),
            end_offset: mark.next_offset,
            written_offset: p.written_end(),
            segments: segments.len(),
            bytes,
        })
    }

    /// Deletes old segments as [`LogConfig::retention`] allows, now, and reports what
    /// went, per partition. The background thread also does this every second. **This
    /// deletes data**, unread data included with
    /// [`WhenFull::DeleteOldest`](crate::WhenFull::DeleteOldest); see
    /// [`Retention`](crate::Retention) for which. Blocks for the file removals and a
    /// directory fsync per partition.
    ///
    /// # Errors
    /// [`LogError::Io`] if a segment could not be removed (segments removed before it
    /// stay removed) or the consumers' offsets could not be listed or read;
    /// [`LogError::BadFile`] if an offsets file is damaged.
    pub fn apply_retention(&self) -> Result<Vec<RetentionReport>> {
        retention(
            &self.inner.partitions,
            &self.inner.offsets,
            &*self.inner.storage,
            now_ms(),
        )
    }

    /// The offset of the first record of `partition` appended at or after `time_ms`
    /// (milliseconds since the Unix epoch, by the wall clock at append); the end offset
    /// if none was. For replaying from a point in time with
    /// [`reset_offsets`](Self::reset_offsets). Reads batch headers from disk: it blocks
    /// for up to one segment's worth of header reads.
    ///
    /// # Errors
    /// [`LogError::NoSuchPartition`]; [`LogError::Io`] if a segment cannot be read;
    /// [`LogError::Corrupt`] if a batch header in it is damaged.
    pub fn offset_for_time(&self, partition: u32, time_ms: i64) -> Result<u64> {
        self.part(partition)?.offset_for_time(time_ms)
    }

    /// The segments of `partition`, oldest first. Reads the first batch header of each
    /// segment (for its append time).
    ///
    /// # Errors
    /// [`LogError::NoSuchPartition`].
    pub fn segments(&self, partition: u32) -> Result<Vec<SegmentStats>> {
        let p = self.part(partition)?;
        let mark = p.durable_mark();
        Ok(p.segments()
            .iter()
            .map(|s| SegmentStats {
                base_offset: s.base,
                bytes: s.sealed_len.unwrap_or(mark.position),
                first_append_ms: p.first_append_time(s),
                active: s.sealed_len.is_none(),
            })
            .collect())
    }

    /// Makes everything appended so far durable now, whatever the policy, and resolves
    /// the tickets of those appends. Blocks for an fsync of every partition that has
    /// something to sync.
    ///
    /// # Errors
    /// The first failure, after trying every partition: [`LogError::Io`] if an fsync
    /// failed (the partition is poisoned, and its unsynced batches are lost), or
    /// [`LogError::Poisoned`] if a partition was poisoned already and has not been healed
    /// by an append since.
    pub fn sync(&self) -> Result<()> {
        let mut first = None;
        for p in &self.inner.partitions {
            if let Err(e) = p.sync() {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Durably records `consumer`'s offsets for the listed partitions (others keep
    /// theirs), with a small metadata blob each. An offset is the offset of the next
    /// record to process: after processing a chunk, commit its
    /// [`next_offset`](crate::Chunk::next_offset). The commit is atomic across the
    /// listed partitions and durable when this returns: it blocks for a file write, an
    /// fsync, a rename and a directory fsync.
    ///
    /// Committing makes `consumer` one that retention waits for, in every partition (see
    /// [`Retention`](crate::Retention)). Consumer names are file names: ASCII letters,
    /// digits, `-`, `_` and `.`, not starting with `.`, at most 200 bytes.
    ///
    /// # Errors
    /// On error nothing is changed:
    /// * [`LogError::OffsetRegression`] if an offset would go backwards (use
    ///   [`reset_offsets`](Self::reset_offsets) to replay);
    /// * [`LogError::OffsetPastEnd`] if an offset is past the partition's durable end;
    /// * [`LogError::NoSuchPartition`]; [`LogError::InvalidConsumerName`];
    /// * [`LogError::Config`] if a metadata blob is over 64 KiB;
    /// * [`LogError::BadFile`] if the consumer's offsets file is damaged;
    /// * [`LogError::Io`] if the offsets file cannot be read or written.
    pub fn commit(&self, consumer: &str, entries: &[OffsetCommit<'_>]) -> Result<()> {
        let ends: Vec<u64> = (0..self.partitions()).map(|p| self.end_offset(p)).collect();
        self.inner
            .offsets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .commit(&*self.inner.storage, consumer, entries, &ends, true)
    }

    /// Moves `consumer`'s offsets anywhere, backwards included (for replay). Offsets
    /// past the end are refused. Records before the partition's first offset are gone:
    /// a reader from such an offset starts at the first record left.
    ///
    /// # Errors
    /// As [`commit`](Self::commit), without [`LogError::OffsetRegression`].
    pub fn reset_offsets(&self, consumer: &str, entries: &[OffsetCommit<'_>]) -> Result<()> {
        let ends: Vec<u64> = (0..self.partitions()).map(|p| self.end_offset(p)).collect();
        self.inner
            .offsets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .commit(&*self.inner.storage, consumer, entries, &ends, false)
    }

    /// `consumer`'s committed offsets, indexed by partition (`None` where it never
    /// committed; all `None` for a consumer that never committed at all).
    ///
    /// # Errors
    /// [`LogError::InvalidConsumerName`]; [`LogError::Io`] if the offsets file cannot be
    /// read; [`LogError::BadFile`] if it is damaged.
    pub fn committed(&self, consumer: &str) -> Result<ConsumerOffsets> {
        self.inner
            .offsets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&*self.inner.storage, consumer)
    }

    /// Names of the consumers that have committed offsets, sorted. These are the
    /// consumers retention waits for. There is no call to remove one: delete its file
    /// `DIR/consumers/NAME.offsets` while the log is closed.
    ///
    /// # Errors
    /// [`LogError::Io`] if the consumers directory cannot be listed.
    pub fn consumers(&self) -> Result<Vec<String>> {
        self.inner
            .offsets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .consumers(&*self.inner.storage)
    }

    /// Stops the background thread, makes everything durable (blocking for the fsyncs,
    /// whatever the policy) and wakes all waiters: tickets not durable by then fail with
    /// [`LogError::Closed`], and [`PartitionReader::wait`] returns `false`. This affects
    /// every clone. Reads keep working; further appends are still accepted but only made
    /// durable by [`sync`](Self::sync), and retention no longer runs by itself.
    ///
    /// # Errors
    /// As [`sync`](Self::sync): the final fsync failed, and what it covered is not
    /// durable.
    pub fn close(&self) -> Result<()> {
        self.inner.stop_flusher();
        let result = self.sync();
        if result.is_ok() && self.inner.config.fsync != FsyncPolicy::Never {
            for p in &self.inner.partitions {
                p.write_recovery_point();
            }
        }
        for p in &self.inner.partitions {
            p.close();
        }
        result
    }
}

impl Inner {
    fn stop_flusher(&self) {
        self.flush
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .stop = true;
        self.flush.cond.notify_all();
        if let Some(handle) = self
            .flusher
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            let _ = handle.join();
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop_flusher();
        if self.config.fsync != FsyncPolicy::Never {
            for p in &self.partitions {
                if let Err(e) = p.sync() {
                    tracing::error!(partition = p.id, error = %e, "final fsync of the log failed");
                }
            }
        }
        for p in &self.partitions {
            p.close();
        }
    }
}

/// The log's background thread: fsyncs by the policy, and applies retention every
/// second.
fn run_background(
    policy: FsyncPolicy,
    parts: &[Arc<Partition>],
    control: &FlushControl,
    offsets: &Mutex<OffsetStore>,
    storage: &dyn Storage,
) {
    let mut last_retention = std::time::Instant::now();
    // `every` fsyncs start one interval apart (not an interval after the previous one
    // ended), so an append waits at most about one interval plus one fsync.
    let mut next_sync = std::time::Instant::now();
    loop {
        {
            let mut s = lock(&control.state);
            match policy {
                FsyncPolicy::Always => {
                    while !s.dirty && !s.stop {
                        s = control
                            .cond
                            .wait_timeout(s, Duration::from_millis(100))
                            .unwrap_or_else(PoisonError::into_inner)
                            .0;
                        if last_retention.elapsed() >= RETENTION_INTERVAL {
                            break;
                        }
                    }
                    s.dirty = false;
                }
                FsyncPolicy::Every(interval) => {
                    let now = std::time::Instant::now();
                    next_sync = (next_sync + interval).max(now);
                    if !s.stop && next_sync > now {
                        s = control
                            .cond
                            .wait_timeout(s, next_sync - now)
                            .unwrap_or_else(PoisonError::into_inner)
                            .0;
                    }
                }
                FsyncPolicy::Never => {
                    if !s.stop {
                        s = control
                            .cond
                            .wait_timeout(s, RETENTION_INTERVAL)
                            .unwrap_or_else(PoisonError::into_inner)
                            .0;
                    }
                }
            }
            if s.stop {
                return;
            }
        }
        // A panic here must not end the thread: nothing would become durable again.
        if policy != FsyncPolicy::Never {
            for p in parts {
                if !p.is_dirty() {
                    continue;
                }
                match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| p.sync())) {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::error!(partition = p.id, error = %e, "log fsync failed; the partition heals on the next append")
                    }
                    Err(_) => {
                        p.fail("a panic interrupted an fsync");
                        tracing::error!(
                            partition = p.id,
                            "log fsync panicked; the partition heals on the next append"
                        );
                    }
                }
            }
        }
        if last_retention.elapsed() >= RETENTION_INTERVAL {
            last_retention = std::time::Instant::now();
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                retention(parts, offsets, storage, now_ms())
            })) {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "log retention failed"),
                Err(_) => tracing::error!("log retention panicked; it runs again in a second"),
            }
        }
    }
}

/// Every consumer's committed offset in each partition (0 where it never committed).
fn consumer_positions(
    offsets: &Mutex<OffsetStore>,
    storage: &dyn Storage,
    partitions: usize,
) -> Result<Vec<Vec<(String, u64)>>> {
    let mut store = lock(offsets);
    let mut per_partition = vec![Vec::new(); partitions];
    for name in store.consumers(storage)? {
        let committed = store.get(storage, &name)?;
        for (p, c) in committed.iter().enumerate() {
            per_partition[p].push((name.clone(), c.as_ref().map_or(0, |c| c.offset)));
        }
    }
    Ok(per_partition)
}

fn retention(
    parts: &[Arc<Partition>],
    offsets: &Mutex<OffsetStore>,
    storage: &dyn Storage,
    now_ms: i64,
) -> Result<Vec<RetentionReport>> {
    let positions = consumer_positions(offsets, storage, parts.len())?;
    parts
        .iter()
        .zip(&positions)
        .map(|(p, consumers)| p.apply_retention(consumers, now_ms))
        .collect()
}

pub(crate) fn read_meta(storage: &dyn Storage, path: &Path) -> Result<u32> {
    let bad = |reason: &str| LogError::BadFile {
        path: path.to_path_buf(),
        reason: reason.to_owned(),
    };
    let file = storage
        .open_read(path)
        .map_err(|e| LogError::io("open", path, e))?;
    let len = file.size().map_err(|e| LogError::io("stat", path, e))? as usize;
    if len > 4096 {
        return Err(bad("meta file too large"));
    }
    let mut bytes = vec![0; len];
    file.read_exact_at(&mut bytes, 0)
        .map_err(|e| LogError::io("read", path, e))?;
    let text = String::from_utf8(bytes).map_err(|_| bad("meta file is not UTF-8"))?;
    let mut lines = text.lines();
    if lines.next() != Some("lungfish-log 1") {
        return Err(bad(
            "not a lungfish-log meta file (or an unknown format version)",
        ));
    }
    lines
        .find_map(|l| l.strip_prefix("partitions "))
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| bad("meta file has no partition count"))
}
