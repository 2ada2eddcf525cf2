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

/// A partitioned, durable, append-only log. Cheap to clone; all clones share the log.
/// The flusher stops and a final fsync runs when the last clone is dropped or
/// [`close`](Self::close)d.
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

/// One segment file, for inspection.
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

/// A summary of one partition, for inspection and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionStats {
    /// The partition.
    pub partition: u32,
    /// Offset of the first record still in the log.
    pub start_offset: u64,
    /// Offset after the last durable record.
    pub end_offset: u64,
    /// Offset after the last written (maybe not yet durable) record.
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
    /// Opens the log in `dir`, creating it if needed, and recovers every partition (see
    /// the crate documentation for the rules).
    ///
    /// # Errors
    /// The configuration is invalid, the directory holds a log with another partition
    /// count, a file cannot be read, or a sealed segment is corrupt.
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

    /// The number of partitions of the log in `dir`, from its `meta` file.
    ///
    /// # Errors
    /// `dir` holds no log, or its meta file is damaged.
    pub fn partitions_in(dir: impl AsRef<Path>) -> Result<u32> {
        read_meta(&FsStorage, &dir.as_ref().join(META_FILE))
    }

    /// The log's directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The configuration the log was opened with.
    pub fn config(&self) -> &LogConfig {
        &self.inner.config
    }

    /// Number of partitions.
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

    /// What recovery did to each partition when the log was opened.
    pub fn recovery(&self) -> Vec<RecoveryReport> {
        self.inner
            .partitions
            .iter()
            .map(|p| p.recovery.clone())
            .collect()
    }

    /// Appends `batch` to `partition` and returns at once; the batch is durable when the
    /// returned ticket resolves. The builder's records stay in it (call
    /// [`BatchBuilder::clear`] to reuse it).
    ///
    /// With a `producer`, the append is idempotent: if `producer.seq` is not above the
    /// last sequence number of `producer.id` in this partition, nothing is written and
    /// [`Appended::duplicate`] is true.
    ///
    /// # Errors
    /// [`LogError::BatchTooLarge`], [`LogError::Poisoned`] after an earlier I/O failure,
    /// or the I/O error of this write (which poisons the partition: a torn write is cut
    /// off by recovery on the next open). A full disk is an I/O error for which
    /// [`LogError::is_disk_full`] is true.
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

    /// A reader of `partition` positioned at `from_offset`.
    ///
    /// # Errors
    /// [`LogError::NoSuchPartition`].
    pub fn reader(&self, partition: u32, from_offset: u64) -> Result<PartitionReader> {
        Ok(PartitionReader::new(
            self.part(partition)?.clone(),
            from_offset,
        ))
    }

    /// Offset after the last durable record of `partition` (0 for a bad partition).
    pub fn end_offset(&self, partition: u32) -> u64 {
        self.part(partition)
            .map_or(0, |p| p.durable_mark().next_offset)
    }

    /// Bytes `partition` can still take before appends fail with [`LogError::Full`];
    /// `None` when it never refuses (no `max_bytes`, or [`WhenFull::DeleteOldest`]).
    /// A writer that must not be refused halfway through a request checks this first,
    /// under its own lock (other writers may append meanwhile).
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

    /// The last sequence number `producer_id` appended to `partition`, if any.
    pub fn producer_seq(&self, partition: u32, producer_id: u64) -> Option<u64> {
        self.part(partition).ok()?.producer_seq(producer_id)
    }

    /// Statistics of one partition.
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

    /// Deletes old segments as [`LogConfig::retention`] allows, now. (A background
    /// thread also does this every second.)
    ///
    /// # Errors
    /// A segment could not be removed, or the consumers' offsets could not be read.
    pub fn apply_retention(&self) -> Result<Vec<RetentionReport>> {
        retention(
            &self.inner.partitions,
            &self.inner.offsets,
            &*self.inner.storage,
            now_ms(),
        )
    }

    /// The offset of the first record of `partition` appended at or after `time_ms`
    /// (milliseconds since the Unix epoch); the end offset if none was. For replaying
    /// from a point in time with [`reset_offsets`](Self::reset_offsets).
    ///
    /// # Errors
    /// [`LogError::NoSuchPartition`], or a segment cannot be read.
    pub fn offset_for_time(&self, partition: u32, time_ms: i64) -> Result<u64> {
        self.part(partition)?.offset_for_time(time_ms)
    }

    /// The segments of `partition`, oldest first.
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

    /// Makes everything appended so far durable now, whatever the policy.
    ///
    /// # Errors
    /// The first fsync failure.
    pub fn sync(&self) -> Result<()> {
        let mut first = None;
        for p in &self.inner.partitions {
            if let Err(e) = p.sync() {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Durably records `consumer`'s offsets for the listed partitions (others keep theirs).
    ///
    /// # Errors
    /// [`LogError::OffsetRegression`] if an offset would go backwards,
    /// [`LogError::OffsetPastEnd`] past the durable end, an invalid name or an I/O error.
    /// On error nothing is changed.
    pub fn commit(&self, consumer: &str, entries: &[OffsetCommit<'_>]) -> Result<()> {
        let ends: Vec<u64> = (0..self.partitions()).map(|p| self.end_offset(p)).collect();
        self.inner
            .offsets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .commit(&*self.inner.storage, consumer, entries, &ends, true)
    }

    /// Moves `consumer`'s offsets anywhere, backwards included (for replay). Offsets
    /// past the end are refused.
    ///
    /// # Errors
    /// As [`commit`](Self::commit), without the backwards check.
    pub fn reset_offsets(&self, consumer: &str, entries: &[OffsetCommit<'_>]) -> Result<()> {
        let ends: Vec<u64> = (0..self.partitions()).map(|p| self.end_offset(p)).collect();
        self.inner
            .offsets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .commit(&*self.inner.storage, consumer, entries, &ends, false)
    }

    /// `consumer`'s committed offsets, per partition (`None` where it never committed).
    ///
    /// # Errors
    /// An invalid name, or an unreadable or damaged offsets file.
    pub fn committed(&self, consumer: &str) -> Result<ConsumerOffsets> {
        self.inner
            .offsets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&*self.inner.storage, consumer)
    }

    /// Names of the consumers that have committed offsets.
    ///
    /// # Errors
    /// The consumers directory cannot be listed.
    pub fn consumers(&self) -> Result<Vec<String>> {
        self.inner
            .offsets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .consumers(&*self.inner.storage)
    }

    /// Stops the flusher, makes everything durable and wakes all waiters. Other clones
    /// keep working for reads; further appends are still accepted but only made
    /// durable by [`sync`](Self::sync).
    ///
    /// # Errors
    /// The final fsync failed.
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
