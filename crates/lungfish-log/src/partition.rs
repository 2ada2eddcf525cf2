//! One partition: its segments, the append path, the durable mark, healing after a
//! failed write or fsync, and retention.
//!
//! Appends write under the writer lock and return at once with a [`DurableTicket`];
//! the flusher (see `log.rs`) makes written bytes durable and advances the durable
//! mark, which wakes everybody waiting on a ticket and every reader waiting for data.
//! Readers never see bytes past the durable mark.
//!
//! After a failed write or fsync the partition is *poisoned*: the page cache may hold
//! bytes the disk does not, so nothing past the durable mark is trusted. The next append
//! *heals* it: the segment is cut back to the durable mark, the writer state is rebuilt
//! from the bytes before it, and a new *epoch* begins. A ticket remembers its epoch, so a
//! batch lost to the failure can never be reported durable because new bytes later
//! reached the same position.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};

use crate::config::{FsyncPolicy, LogConfig, Retention, WhenFull};
use crate::format::{BatchBuilder, HEADER_LEN, Producer, decode_header};
use crate::recovery_point::{self, RecoveryPoint};
use crate::segment::{
    self, Producers, SEGMENT_SUFFIX, SNAPSHOT_SUFFIX, ScanEnd, find_position, parse_name,
    scan_segment, segment_name, snapshot_name,
};
use crate::storage::{Storage, WriteFile};
use crate::{LogError, Result};

/// How often, at most, the recovery point is rewritten.
const RECOVERY_POINT_INTERVAL: Duration = Duration::from_secs(1);

/// Locks `m`, recovering the data if a thread panicked while holding it: the state it
/// protects is checked (and healed) by the code that uses it.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A point in a partition's byte stream. Ordered by segment, then position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub(crate) struct Mark {
    /// Base offset of the segment.
    pub seg_base: u64,
    /// Byte position in that segment.
    pub position: u64,
    /// Offset of the next record after this point.
    pub next_offset: u64,
}

/// A segment as readers see it.
#[derive(Debug, Clone)]
pub(crate) struct SegmentInfo {
    pub base: u64,
    pub path: PathBuf,
    /// Final length once the segment is sealed; `None` for the active segment.
    pub sealed_len: Option<u64>,
}

#[derive(Debug)]
struct Writer {
    file: Arc<dyn WriteFile>,
    seg_base: u64,
    seg_len: u64,
    next_offset: u64,
    producers: Producers,
    /// Bytes in all segments, the active one included.
    total_bytes: u64,
    /// A segment was created since the last directory fsync.
    dir_dirty: bool,
    poisoned: Option<String>,
    epoch: u64,
}

impl Writer {
    fn mark(&self) -> Mark {
        Mark {
            seg_base: self.seg_base,
            position: self.seg_len,
            next_offset: self.next_offset,
        }
    }
}

#[derive(Debug)]
pub(crate) struct DurableState {
    pub mark: Mark,
    /// The writer epoch the mark belongs to.
    pub epoch: u64,
    /// For earlier epochs, how far they had become durable when they ended.
    ended: Vec<(u64, Mark)>,
    pub error: Option<LogError>,
    pub closed: bool,
}

/// What recovery did to one partition when the log was opened; see
/// [`Log::recovery`](crate::Log::recovery). A non-zero `truncated_bytes` means data was
/// dropped: the tail of a write that was never acknowledged (torn by a crash), or, with
/// [`FsyncPolicy::Never`], possibly acknowledged records lost to an operating-system
/// crash.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Bytes cut from the end of the last segment (an incomplete or invalid tail).
    pub truncated_bytes: u64,
    /// Why the tail was cut, if it was.
    pub reason: Option<String>,
}

/// What retention did to one partition; see
/// [`Log::apply_retention`](crate::Log::apply_retention).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// The partition.
    pub partition: u32,
    /// Segments deleted.
    pub deleted_segments: usize,
    /// Bytes freed.
    pub deleted_bytes: u64,
    /// Consumers that lost records they had not read (only with
    /// [`WhenFull::DeleteOldest`]), with their committed offset: the records from there
    /// to `start_offset` are gone.
    pub lost: Vec<(String, u64)>,
    /// The partition's first offset afterwards.
    pub start_offset: u64,
}

#[derive(Debug)]
pub(crate) struct Partition {
    pub id: u32,
    pub dir: PathBuf,
    storage: Arc<dyn Storage>,
    policy: FsyncPolicy,
    segment_bytes: u64,
    pub max_batch: usize,
    retention: Retention,
    writer: Mutex<Writer>,
    pub durable: Mutex<DurableState>,
    durable_cond: Condvar,
    pub durable_notify: tokio::sync::Notify,
    pub segments: RwLock<Arc<Vec<SegmentInfo>>>,
    recovery_point: Mutex<(recovery_point::Writer, Option<Instant>)>,
    /// Held for the whole of a sync, so that two syncs (the flusher and `Log::sync`)
    /// cannot both think the directory entry was made durable.
    sync_lock: Mutex<()>,
    pub recovery: RecoveryReport,
}

/// The result of [`Log::append`](crate::Log::append): where the batch went, and the
/// ticket that says when it is durable.
#[derive(Debug, Clone)]
pub struct Appended {
    /// The partition appended to.
    pub partition: u32,
    /// Offset of the first record of the batch. For a duplicate, the partition's current
    /// end (the offsets of the earlier append are not known).
    pub base_offset: u64,
    /// Offset after the last record of the batch. For a duplicate, equal to
    /// `base_offset`.
    pub next_offset: u64,
    /// True if the producer's sequence number was not above its last one: nothing was
    /// written, and the ticket resolves once everything written to the partition so far
    /// is durable (the earlier append included).
    pub duplicate: bool,
    /// Resolves once the batch is durable under the fsync policy. Wait on it before
    /// acknowledging the batch.
    pub ticket: DurableTicket,
}

/// A claim on durability: resolves once the log's durable mark has reached the end of
/// an appended batch. Acknowledge a batch to its sender only after this resolves.
///
/// Once a ticket says `Ok` (the batch is durable and readers can see it) or
/// [`LogError::Poisoned`] (the batch is lost), that answer is final: a lost batch is
/// never reported durable, even if later batches reach the same file position. Cheap
/// to clone; it
/// holds its partition (and so its open files) until dropped, so do not keep tickets
/// around after they resolved.
///
/// ```
/// use lungfish_log::{BatchBuilder, FsyncPolicy, Log, LogConfig};
/// use std::time::Duration;
///
/// let dir = tempfile::tempdir().unwrap();
/// let config = LogConfig {
///     fsync: FsyncPolicy::Every(Duration::from_millis(50)),
///     ..LogConfig::default()
/// };
/// let log = Log::open(dir.path(), config).unwrap();
/// let mut batch = BatchBuilder::new();
/// batch.push(b"payment 9");
/// let ticket = log.append(1, &mut batch, None).unwrap().ticket;
/// // Written, but not acknowledged until the next fsync (at most 50 ms away here).
/// ticket.wait(Duration::from_secs(5)).unwrap();
/// assert!(ticket.is_durable());
/// assert_eq!(log.end_offset(1), 1);
/// ```
#[derive(Debug, Clone)]
pub struct DurableTicket {
    part: Arc<Partition>,
    mark: Mark,
    epoch: u64,
}

impl DurableTicket {
    /// True if the batch is durable now. Does not block (beyond a short lock).
    pub fn is_durable(&self) -> bool {
        matches!(
            self.part
                .check(&lock(&self.part.durable), self.mark, self.epoch),
            Some(Ok(()))
        )
    }

    /// Blocks the thread until the batch is durable, at most for `timeout`.
    ///
    /// # Errors
    /// * [`LogError::Poisoned`]: the write or an fsync failed; the batch is not durable
    ///   and never will be (append it again);
    /// * [`LogError::Closed`]: the log was closed (or dropped) before the batch became
    ///   durable;
    /// * [`LogError::Timeout`]: `timeout` passed. The batch may still become durable;
    ///   waiting again is safe.
    pub fn wait(&self, timeout: Duration) -> Result<()> {
        self.part
            .wait_durable_blocking(self.mark, self.epoch, timeout)
    }

    /// Waits until the batch is durable, without blocking the thread. Needs no
    /// particular async runtime.
    ///
    /// # Errors
    /// As [`wait`](Self::wait), without [`LogError::Timeout`]: this has no timeout of its
    /// own, so wrap it in one (`tokio::time::timeout`).
    ///
    /// # Cancel safety
    /// Cancel safe: dropping the future only stops the wait, the batch stays appended.
    pub async fn wait_async(&self) -> Result<()> {
        self.part.wait_durable(self.mark, self.epoch).await
    }
}

/// What [`Partition::cut_back`] leaves the writer with.
struct Healed {
    file: Arc<dyn WriteFile>,
    scanned: Scanned,
    segments: Vec<SegmentInfo>,
    sealed_bytes: u64,
}

/// State rebuilt from the bytes of a partition's segments: what the writer continues
/// from.
struct Scanned {
    producers: Producers,
    next_offset: u64,
    valid_len: u64,
    end: ScanEnd,
}

/// Loads the producer state as of the start of segment `bases[last]` (from the newest
/// readable snapshot, replaying the batches of the segments after it) and scans the
/// last segment up to `limit` bytes.
fn rebuild(
    id: u32,
    storage: &dyn Storage,
    dir: &Path,
    bases: &[u64],
    max_batch: usize,
    limit: Option<u64>,
) -> Result<Scanned> {
    let last = bases.len() - 1;
    let mut producers = Producers::new();
    let mut replay_from = 0usize;
    for (i, base) in bases.iter().enumerate().rev() {
        if let Some(p) = segment::read_snapshot(storage, &dir.join(snapshot_name(*base))) {
            producers = p;
            replay_from = i;
            break;
        }
    }
    for &base in &bases[replay_from..last] {
        let path = dir.join(segment_name(base));
        let file = storage
            .open_read(&path)
            .map_err(|e| LogError::io("open", &path, e))?;
        let scan = scan_segment(&*file, &path, base, max_batch, None, |view, _| {
            if let Some(p) = view.header().producer {
                producers.insert(p.id, p.seq);
            }
        })?;
        if scan.end != ScanEnd::Clean {
            return Err(LogError::Corrupt {
                partition: id,
                segment: path,
                position: scan.valid_len,
                reason: format!("{:?} in a sealed segment", scan.end),
            });
        }
    }
    let base = bases[last];
    let path = dir.join(segment_name(base));
    let file = storage
        .open_read(&path)
        .map_err(|e| LogError::io("open", &path, e))?;
    let scan = scan_segment(&*file, &path, base, max_batch, limit, |view, _| {
        if let Some(p) = view.header().producer {
            producers.insert(p.id, p.seq);
        }
    })?;
    Ok(Scanned {
        producers,
        next_offset: scan.next_offset,
        valid_len: scan.valid_len,
        end: scan.end,
    })
}

fn list_segments(storage: &dyn Storage, dir: &Path) -> Result<Vec<u64>> {
    let names = storage
        .list_dir(dir)
        .map_err(|e| LogError::io("list directory", dir, e))?;
    let mut bases: Vec<u64> = names
        .iter()
        .filter_map(|n| parse_name(n, SEGMENT_SUFFIX))
        .collect();
    bases.sort_unstable();
    Ok(bases)
}

impl Partition {
    /// Opens (or creates) the partition in `dir`, recovering its tail.
    pub(crate) fn open(
        id: u32,
        dir: PathBuf,
        storage: Arc<dyn Storage>,
        config: &LogConfig,
    ) -> Result<Arc<Self>> {
        storage
            .create_dir_all(&dir)
            .map_err(|e| LogError::io("create directory", &dir, e))?;
        let names = storage
            .list_dir(&dir)
            .map_err(|e| LogError::io("list directory", &dir, e))?;
        for name in names.iter().filter(|n| n.ends_with(".tmp")) {
            let _ = storage.remove_file(&dir.join(name));
        }
        let bases = list_segments(&*storage, &dir)?;
        // Snapshots of segments that do not exist (a crash during a roll) are leftovers.
        for base in names.iter().filter_map(|n| parse_name(n, SNAPSHOT_SUFFIX)) {
            if !bases.contains(&base) && bases.last().is_none_or(|&l| base > l) {
                let _ = storage.remove_file(&dir.join(snapshot_name(base)));
            }
        }
        let max_batch = config.max_batch_bytes;
        let point = recovery_point::read(&*storage, &dir);

        if bases.is_empty() {
            let path = dir.join(segment_name(0));
            let file = storage
                .open_write(&path, true)
                .map_err(|e| LogError::io("create", &path, e))?;
            storage
                .sync_dir(&dir)
                .map_err(|e| LogError::io("fsync directory", &dir, e))?;
            let writer = Writer {
                file,
                seg_base: 0,
                seg_len: 0,
                next_offset: 0,
                producers: HashMap::new(),
                total_bytes: 0,
                dir_dirty: false,
                poisoned: None,
                epoch: 0,
            };
            let segments = vec![SegmentInfo {
                base: 0,
                path,
                sealed_len: None,
            }];
            return Ok(Self::build(
                id,
                dir,
                storage,
                config,
                writer,
                segments,
                point,
                RecoveryReport::default(),
            ));
        }

        let last = bases.len() - 1;
        let mut segments = Vec::with_capacity(bases.len());
        let mut total_bytes = 0;
        for (i, &base) in bases.iter().enumerate() {
            let path = dir.join(segment_name(base));
            let file = storage
                .open_read(&path)
                .map_err(|e| LogError::io("open", &path, e))?;
            let len = file.size().map_err(|e| LogError::io("stat", &path, e))?;
            if i < last {
                total_bytes += len;
            }
            segments.push(SegmentInfo {
                base,
                path,
                sealed_len: (i < last).then_some(len),
            });
        }
        let scanned = rebuild(id, &*storage, &dir, &bases, max_batch, None)?;

        // The last segment: verified in full; an invalid or incomplete tail is cut, unless
        // it lies before the recovery point, which only ever covers fsynced data.
        let base = bases[last];
        let path = dir.join(segment_name(base));
        let file = storage
            .open_write(&path, false)
            .map_err(|e| LogError::io("open", &path, e))?;
        let file_len = file.size().map_err(|e| LogError::io("stat", &path, e))?;
        if let Some(p) = point
            && p.seg_base == base
            && scanned.valid_len == file_len
            && file_len < p.position
        {
            return Err(LogError::Corrupt {
                partition: id,
                segment: path,
                position: file_len,
                reason: format!(
                    "the segment ends at byte {file_len}, before the recovery point ({} bytes are known durable): \
                     acknowledged data is missing; run `lungfish log repair`",
                    p.position
                ),
            });
        }
        let mut report = RecoveryReport::default();
        if scanned.valid_len < file_len {
            if let Some(p) = point
                && p.seg_base == base
                && scanned.valid_len < p.position
            {
                return Err(LogError::Corrupt {
                    partition: id,
                    segment: path,
                    position: scanned.valid_len,
                    reason: format!(
                        "{} before the recovery point ({} bytes are known durable); run `lungfish log repair`",
                        describe(&scanned.end),
                        p.position
                    ),
                });
            }
            let dropped = file_len - scanned.valid_len;
            let reason = describe(&scanned.end);
            tracing::warn!(
                partition = id,
                segment = %path.display(),
                position = scanned.valid_len,
                dropped_bytes = dropped,
                %reason,
                "log recovery: truncating the unacknowledged tail of the last segment"
            );
            file.set_len(scanned.valid_len)
                .map_err(|e| LogError::io("truncate", &path, e))?;
            file.sync_data()
                .map_err(|e| LogError::io("fsync", &path, e))?;
            report = RecoveryReport {
                truncated_bytes: dropped,
                reason: Some(reason),
            };
        }
        // After a process crash the tail may exist only in the page cache: make it
        // durable before it counts as such (and readers or acknowledgements rely on it).
        if config.fsync != FsyncPolicy::Never {
            file.sync_data()
                .map_err(|e| LogError::io("fsync", &path, e))?;
            storage
                .sync_dir(&dir)
                .map_err(|e| LogError::io("fsync directory", &dir, e))?;
        }
        let writer = Writer {
            file,
            seg_base: base,
            seg_len: scanned.valid_len,
            next_offset: scanned.next_offset,
            producers: scanned.producers,
            total_bytes: total_bytes + scanned.valid_len,
            dir_dirty: false,
            poisoned: None,
            epoch: 0,
        };
        Ok(Self::build(
            id, dir, storage, config, writer, segments, point, report,
        ))
    }

    #[allow(clippy::too_many_arguments)]
    fn build(
        id: u32,
        dir: PathBuf,
        storage: Arc<dyn Storage>,
        config: &LogConfig,
        writer: Writer,
        segments: Vec<SegmentInfo>,
        point: Option<RecoveryPoint>,
        recovery: RecoveryReport,
    ) -> Arc<Self> {
        let mark = writer.mark();
        Arc::new(Partition {
            id,
            storage,
            policy: config.fsync,
            segment_bytes: config.segment_bytes,
            max_batch: config.max_batch_bytes,
            retention: config.retention,
            writer: Mutex::new(writer),
            durable: Mutex::new(DurableState {
                mark,
                epoch: 0,
                ended: Vec::new(),
                error: None,
                closed: false,
            }),
            durable_cond: Condvar::new(),
            durable_notify: tokio::sync::Notify::new(),
            segments: RwLock::new(Arc::new(segments)),
            recovery_point: Mutex::new((recovery_point::Writer::new(&dir, point), None)),
            sync_lock: Mutex::new(()),
            recovery,
            dir,
        })
    }

    /// Locks the writer. A panic while it was held left it in an unknown state: it is
    /// treated like a failed write, and healed before the next append.
    fn writer(&self) -> MutexGuard<'_, Writer> {
        match self.writer.lock() {
            Ok(w) => w,
            Err(poisoned) => {
                let mut w = poisoned.into_inner();
                if w.poisoned.is_none() {
                    w.poisoned = Some("a panic interrupted a write".to_owned());
                }
                self.writer.clear_poison();
                w
            }
        }
    }

    /// Appends a batch; see [`crate::Log::append`].
    pub(crate) fn append(
        self: &Arc<Self>,
        batch: &mut BatchBuilder,
        producer: Option<Producer>,
        now_ms: i64,
    ) -> Result<Appended> {
        let len = batch.encoded_len();
        if len > self.max_batch {
            return Err(LogError::BatchTooLarge {
                size: len,
                max: self.max_batch,
            });
        }
        let mut w = self.writer();
        if w.poisoned.is_some() {
            self.heal(&mut w)?;
        }
        if let Some(p) = producer {
            if p.id == 0 {
                return Err(LogError::Config("producer id 0 is reserved".into()));
            }
            if w.producers.get(&p.id).is_some_and(|&last| p.seq <= last) {
                let mark = w.mark();
                return Ok(Appended {
                    partition: self.id,
                    base_offset: w.next_offset,
                    next_offset: w.next_offset,
                    duplicate: true,
                    ticket: DurableTicket {
                        part: self.clone(),
                        mark,
                        epoch: w.epoch,
                    },
                });
            }
        }
        if let Some(limit) = self.retention.max_bytes
            && self.retention.when_full == WhenFull::Refuse
            && w.total_bytes + len as u64 > limit
        {
            return Err(LogError::Full {
                partition: self.id,
                bytes: w.total_bytes,
                limit,
                lagging: Vec::new(),
            });
        }
        // A segment is named after its first offset, so one that holds no record yet
        // (only empty batches recording producer positions) must not roll: the next
        // segment would get its name. It grows past the limit by empty batches only.
        if w.seg_len > 0
            && w.seg_len + len as u64 > self.segment_bytes
            && w.next_offset > w.seg_base
        {
            self.roll(&mut w)?;
        }
        let base_offset = w.next_offset;
        let count = batch.len() as u64;
        let frame = batch.seal(base_offset, now_ms, producer);
        let at = w.seg_len;
        if let Err(e) = w.file.write_all_at(frame, at) {
            let err = LogError::io("write", self.dir.join(segment_name(w.seg_base)), e);
            self.poison(&mut w, &err);
            return Err(err);
        }
        w.seg_len += len as u64;
        w.total_bytes += len as u64;
        w.next_offset += count;
        if let Some(p) = producer {
            w.producers.insert(p.id, p.seq);
        }
        let mark = w.mark();
        if self.policy == FsyncPolicy::Never {
            self.advance_durable(mark, w.epoch);
        }
        Ok(Appended {
            partition: self.id,
            base_offset,
            next_offset: base_offset + count,
            duplicate: false,
            ticket: DurableTicket {
                part: self.clone(),
                mark,
                epoch: w.epoch,
            },
        })
    }

    /// Seals the active segment and starts a new one. The old segment is made durable
    /// first and the producer snapshot of the new one is written before the new file
    /// exists, so recovery never sees a new segment after a torn old one.
    fn roll(&self, w: &mut Writer) -> Result<()> {
        let old_path = self.dir.join(segment_name(w.seg_base));
        let sync = self.policy != FsyncPolicy::Never;
        if sync && let Err(e) = w.file.sync_data() {
            let err = LogError::io("fsync", &old_path, e);
            self.poison(w, &err);
            return Err(err);
        }
        let new_base = w.next_offset;
        if let Err(err) = segment::write_snapshot(&*self.storage, &self.dir, new_base, &w.producers)
        {
            self.poison(w, &err);
            return Err(err);
        }
        let new_path = self.dir.join(segment_name(new_base));
        let file = match self.storage.open_write(&new_path, true) {
            Ok(f) => f,
            Err(e) => {
                let err = LogError::io("create", &new_path, e);
                self.poison(w, &err);
                return Err(err);
            }
        };
        {
            let mut segs = self
                .segments
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            let mut list: Vec<SegmentInfo> = segs.as_ref().clone();
            if let Some(last) = list.last_mut() {
                last.sealed_len = Some(w.seg_len);
            }
            list.push(SegmentInfo {
                base: new_base,
                path: new_path,
                sealed_len: None,
            });
            *segs = Arc::new(list);
        }
        let old_end = w.mark();
        w.file = file;
        w.seg_base = new_base;
        w.seg_len = 0;
        w.dir_dirty = true;
        if sync {
            // The old segment is durable in full.
            self.advance_durable(old_end, w.epoch);
        }
        Ok(())
    }

    /// Marks the partition failed (after a panic in a write or fsync): waiting tickets
    /// fail and the next append heals it.
    pub(crate) fn fail(&self, reason: &str) {
        let mut w = self.writer();
        let err = LogError::Poisoned {
            partition: self.id,
            reason: reason.to_owned(),
        };
        self.poison(&mut w, &err);
    }

    fn poison(&self, w: &mut Writer, err: &LogError) {
        w.poisoned = Some(err.to_string());
        let mut d = lock(&self.durable);
        d.error = Some(LogError::Poisoned {
            partition: self.id,
            reason: err.to_string(),
        });
        drop(d);
        self.durable_cond.notify_all();
        self.durable_notify.notify_waiters();
    }

    /// Cuts the partition back to its durable mark after a failure and starts a new
    /// epoch. Nothing past the durable mark is trusted: it may exist only in the page
    /// cache.
    fn heal(&self, w: &mut Writer) -> Result<()> {
        let mark = lock(&self.durable).mark;
        let Healed {
            file,
            scanned,
            segments: list,
            sealed_bytes: total,
        } = self.cut_back(mark)?;
        tracing::warn!(
            partition = self.id,
            offset = mark.next_offset,
            "log partition healed after a failure: continuing from the durable data"
        );
        *self
            .segments
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(list);
        w.file = file;
        w.seg_base = mark.seg_base;
        w.seg_len = mark.position;
        w.next_offset = mark.next_offset;
        w.producers = scanned.producers;
        w.total_bytes = total + mark.position;
        w.dir_dirty = false;
        w.poisoned = None;
        w.epoch += 1;
        let mut d = lock(&self.durable);
        let old = d.epoch;
        let last = d.mark;
        d.ended.push((old, last));
        if d.ended.len() > 64 {
            d.ended.remove(0);
        }
        d.epoch = w.epoch;
        d.error = None;
        drop(d);
        self.durable_cond.notify_all();
        self.durable_notify.notify_waiters();
        Ok(())
    }

    /// Removes everything past `mark` from disk and rebuilds the writer state from the
    /// bytes before it.
    fn cut_back(&self, mark: Mark) -> Result<Healed> {
        // Segments started after the durable mark hold nothing durable.
        let bases = list_segments(&*self.storage, &self.dir)?;
        for &base in bases.iter().filter(|&&b| b > mark.seg_base) {
            let path = self.dir.join(segment_name(base));
            self.storage
                .remove_file(&path)
                .map_err(|e| LogError::io("remove", &path, e))?;
            let _ = self
                .storage
                .remove_file(&self.dir.join(snapshot_name(base)));
        }
        let path = self.dir.join(segment_name(mark.seg_base));
        let file = self
            .storage
            .open_write(&path, false)
            .map_err(|e| LogError::io("open", &path, e))?;
        file.set_len(mark.position)
            .map_err(|e| LogError::io("truncate", &path, e))?;
        file.sync_data()
            .map_err(|e| LogError::io("fsync", &path, e))?;
        self.storage
            .sync_dir(&self.dir)
            .map_err(|e| LogError::io("fsync directory", &self.dir, e))?;
        let bases: Vec<u64> = bases.into_iter().filter(|&b| b <= mark.seg_base).collect();
        let scanned = rebuild(
            self.id,
            &*self.storage,
            &self.dir,
            &bases,
            self.max_batch,
            Some(mark.position),
        )?;
        if scanned.valid_len != mark.position || scanned.next_offset != mark.next_offset {
            return Err(LogError::Corrupt {
                partition: self.id,
                segment: path,
                position: scanned.valid_len,
                reason: "durable data does not verify after a failed write".into(),
            });
        }
        let mut list: Vec<SegmentInfo> = self
            .segments()
            .iter()
            .filter(|s| s.base <= mark.seg_base)
            .cloned()
            .collect();
        let mut total = 0;
        for s in &mut list {
            if s.base == mark.seg_base {
                s.sealed_len = None;
            } else {
                total += s.sealed_len.unwrap_or(0);
            }
        }
        Ok(Healed {
            file,
            scanned,
            segments: list,
            sealed_bytes: total,
        })
    }

    /// Makes everything written so far durable. Called by the flusher; safe to call
    /// concurrently (the durable mark only moves forward).
    pub(crate) fn sync(&self) -> Result<()> {
        let _serial = lock(&self.sync_lock);
        let (file, mark, dir_dirty, epoch) = {
            let mut w = self.writer();
            if let Some(reason) = &w.poisoned {
                return Err(LogError::Poisoned {
                    partition: self.id,
                    reason: reason.clone(),
                });
            }
            let mark = w.mark();
            if lock(&self.durable).mark >= mark {
                return Ok(());
            }
            let dirty = std::mem::take(&mut w.dir_dirty);
            (w.file.clone(), mark, dirty, w.epoch)
        };
        let result = (|| {
            if dir_dirty {
                self.storage
                    .sync_dir(&self.dir)
                    .map_err(|e| LogError::io("fsync directory", &self.dir, e))?;
            }
            file.sync_data()
                .map_err(|e| LogError::io("fsync", self.dir.join(segment_name(mark.seg_base)), e))
        })();
        match result {
            Ok(()) => {
                self.advance_durable(mark, epoch);
                self.maybe_write_recovery_point(mark);
                Ok(())
            }
            Err(err) => {
                let mut w = self.writer();
                if w.epoch == epoch {
                    if dir_dirty {
                        w.dir_dirty = true;
                    }
                    self.poison(&mut w, &err);
                }
                Err(err)
            }
        }
    }

    fn maybe_write_recovery_point(&self, mark: Mark) {
        let mut rp = lock(&self.recovery_point);
        if rp.1.is_some_and(|t| t.elapsed() < RECOVERY_POINT_INTERVAL) {
            return;
        }
        match rp.0.write(&*self.storage, mark.seg_base, mark.position) {
            Ok(()) => rp.1 = Some(Instant::now()),
            // Not fatal: recovery then treats more of the tail as unverified.
            Err(e) => {
                tracing::warn!(partition = self.id, error = %e, "writing the recovery point failed")
            }
        }
    }

    /// Records the current durable mark as the recovery point now (on close).
    pub(crate) fn write_recovery_point(&self) {
        lock(&self.recovery_point).1 = None;
        let mark = lock(&self.durable).mark;
        self.maybe_write_recovery_point(mark);
    }

    /// True if bytes were written that are not durable yet.
    pub(crate) fn is_dirty(&self) -> bool {
        let w = self.writer();
        w.poisoned.is_none() && lock(&self.durable).mark < w.mark()
    }

    fn advance_durable(&self, mark: Mark, epoch: u64) {
        let mut d = lock(&self.durable);
        if d.epoch == epoch && mark > d.mark {
            d.mark = mark;
            drop(d);
            self.durable_cond.notify_all();
            self.durable_notify.notify_waiters();
        }
    }

    /// Marks the partition closed: waiters wake up with [`LogError::Closed`].
    pub(crate) fn close(&self) {
        lock(&self.durable).closed = true;
        self.durable_cond.notify_all();
        self.durable_notify.notify_waiters();
    }

    fn check(&self, d: &DurableState, target: Mark, epoch: u64) -> Option<Result<()>> {
        if epoch != d.epoch {
            // The batch's epoch ended with a failure: it is durable only if it was
            // before that epoch's last durable mark.
            let ended = d.ended.iter().find(|(e, _)| *e == epoch).map(|(_, m)| *m);
            return Some(match ended {
                Some(m) if target <= m => Ok(()),
                _ => Err(LogError::Poisoned {
                    partition: self.id,
                    reason: "the batch was lost to a failed write or fsync; append it again".into(),
                }),
            });
        }
        if d.mark >= target {
            Some(Ok(()))
        } else if let Some(e) = &d.error {
            Some(Err(e.clone()))
        } else if d.closed {
            Some(Err(LogError::Closed))
        } else {
            None
        }
    }

    pub(crate) fn wait_durable_blocking(
        &self,
        target: Mark,
        epoch: u64,
        timeout: Duration,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut d = lock(&self.durable);
        loop {
            if let Some(r) = self.check(&d, target, epoch) {
                return r;
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(LogError::Timeout(timeout));
            }
            d = self
                .durable_cond
                .wait_timeout(d, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    pub(crate) async fn wait_durable(&self, target: Mark, epoch: u64) -> Result<()> {
        loop {
            let notified = self.durable_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(r) = self.check(&lock(&self.durable), target, epoch) {
                return r;
            }
            notified.await;
        }
    }

    /// Waits until the durable end passes `offset` (there is a record at `offset` to
    /// read), or `timeout` passes. Returns true if there is data.
    pub(crate) fn wait_for_offset_blocking(&self, offset: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut d = lock(&self.durable);
        loop {
            if d.mark.next_offset > offset {
                return true;
            }
            if d.closed {
                return false;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            d = self
                .durable_cond
                .wait_timeout(d, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Async form of [`wait_for_offset_blocking`](Self::wait_for_offset_blocking),
    /// without a timeout (wrap it in one). Cancel safe.
    pub(crate) async fn wait_for_offset(&self, offset: u64) -> bool {
        loop {
            let notified = self.durable_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let d = lock(&self.durable);
                if d.mark.next_offset > offset {
                    return true;
                }
                if d.closed {
                    return false;
                }
            }
            notified.await;
        }
    }

    /// The durable mark.
    pub(crate) fn durable_mark(&self) -> Mark {
        lock(&self.durable).mark
    }

    /// The offset after the last written (not necessarily durable) record.
    pub(crate) fn written_end(&self) -> u64 {
        self.writer().next_offset
    }

    /// Bytes in all segments.
    pub(crate) fn total_bytes(&self) -> u64 {
        self.writer().total_bytes
    }

    /// The last sequence number of `producer_id` in this partition.
    pub(crate) fn producer_seq(&self, producer_id: u64) -> Option<u64> {
        self.writer().producers.get(&producer_id).copied()
    }

    /// The current segment list.
    pub(crate) fn segments(&self) -> Arc<Vec<SegmentInfo>> {
        self.segments
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn storage(&self) -> &dyn Storage {
        &*self.storage
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The append time of the first batch of `segment`, if it has one.
    pub(crate) fn first_append_time(&self, segment: &SegmentInfo) -> Option<i64> {
        let file = self.storage.open_read(&segment.path).ok()?;
        let mut header = [0u8; HEADER_LEN];
        file.read_exact_at(&mut header, 0).ok()?;
        decode_header(&header, self.max_batch)
            .ok()
            .map(|h| h.append_time_ms)
    }

    /// The offset of the first record appended at or after `time_ms` (the end offset
    /// if none was).
    ///
    /// # Errors
    /// A segment cannot be read.
    pub(crate) fn offset_for_time(&self, time_ms: i64) -> Result<u64> {
        let segments = self.segments();
        let end = self.durable_mark();
        // The segment to search: the last whose first batch is not after `time_ms`.
        let mut at = 0;
        for (i, s) in segments.iter().enumerate() {
            match self.first_append_time(s) {
                Some(t) if t <= time_ms => at = i,
                _ => break,
            }
        }
        for s in &segments[at..] {
            let file = self
                .storage
                .open_read(&s.path)
                .map_err(|e| LogError::io("open", &s.path, e))?;
            let limit = s.sealed_len.unwrap_or(if s.base == end.seg_base {
                end.position
            } else {
                0
            });
            let mut pos = 0u64;
            let mut header = [0u8; HEADER_LEN];
            while pos + HEADER_LEN as u64 <= limit {
                file.read_exact_at(&mut header, pos)
                    .map_err(|e| LogError::io("read", &s.path, e))?;
                let h = decode_header(&header, self.max_batch).map_err(|e| LogError::Corrupt {
                    partition: self.id,
                    segment: s.path.clone(),
                    position: pos,
                    reason: format!("{e:?}"),
                })?;
                if h.append_time_ms >= time_ms && h.record_count > 0 {
                    return Ok(h.base_offset);
                }
                pos += h.frame_len();
            }
        }
        Ok(end.next_offset)
    }

    /// Deletes segments as the retention settings allow, given every consumer's
    /// committed offset in this partition. See [`Retention`].
    ///
    /// # Errors
    /// A file could not be removed; segments removed before the failure stay removed.
    pub(crate) fn apply_retention(
        &self,
        consumers: &[(String, u64)],
        now_ms: i64,
    ) -> Result<RetentionReport> {
        let r = self.retention;
        let mut report = RetentionReport {
            partition: self.id,
            ..RetentionReport::default()
        };
        // The oldest offset some consumer still needs.
        let needed = consumers.iter().map(|(_, o)| *o).min().unwrap_or(u64::MAX);
        loop {
            let segments = self.segments();
            let total = self.total_bytes();
            report.start_offset = segments.first().map_or(0, |s| s.base);
            let (Some(oldest), Some(next)) = (segments.first(), segments.get(1)) else {
                return Ok(report); // never delete the active segment
            };
            let consumed = needed >= next.base;
            let over_target = r.target_bytes.is_some_and(|t| total > t);
            let too_old = r.max_age.is_some_and(|age| {
                // Everything in `oldest` was appended before `next`'s first batch.
                self.first_append_time(next)
                    .is_some_and(|t| now_ms.saturating_sub(t) > age.as_millis() as i64)
            });
            let over_max = r
                .max_bytes
                .is_some_and(|m| total > m.saturating_sub(self.segment_bytes));
            let forced = !consumed && over_max && r.when_full == WhenFull::DeleteOldest;
            if !((consumed && (over_target || too_old || over_max)) || forced) {
                return Ok(report);
            }
            if forced {
                for (name, offset) in consumers.iter().filter(|(_, o)| *o < next.base) {
                    tracing::warn!(
                        partition = self.id,
                        consumer = %name,
                        committed = offset,
                        deleted_through = next.base,
                        "log retention: the size limit was reached; deleting records this consumer has not read"
                    );
                    if !report.lost.iter().any(|(n, _)| n == name) {
                        report.lost.push((name.clone(), *offset));
                    }
                }
            }
            let len = oldest.sealed_len.unwrap_or(0);
            self.delete_oldest(oldest)?;
            report.deleted_segments += 1;
            report.deleted_bytes += len;
        }
    }

    /// Removes the oldest segment: first from the list readers use (so no new reader
    /// opens it), then its files, then makes the removal durable. If the file cannot be
    /// removed, the segment goes back into the list.
    fn delete_oldest(&self, oldest: &SegmentInfo) -> Result<()> {
        let len = oldest.sealed_len.unwrap_or(0);
        let set_list = |keep_oldest: bool| {
            let mut segs = self
                .segments
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            let mut list: Vec<SegmentInfo> = segs
                .iter()
                .filter(|s| s.base != oldest.base)
                .cloned()
                .collect();
            if keep_oldest {
                list.insert(0, oldest.clone());
            }
            *segs = Arc::new(list);
        };
        set_list(false);
        self.writer().total_bytes -= len;
        if let Err(e) = self.storage.remove_file(&oldest.path) {
            set_list(true);
            self.writer().total_bytes += len;
            return Err(LogError::io("remove", &oldest.path, e));
        }
        let snapshot = self.dir.join(snapshot_name(oldest.base));
        if self.storage.exists(&snapshot) {
            // A stale snapshot of a deleted segment is harmless (recovery prefers the
            // newest), so a failure here is reported but changes nothing.
            self.storage
                .remove_file(&snapshot)
                .map_err(|e| LogError::io("remove", &snapshot, e))?;
        }
        self.storage
            .sync_dir(&self.dir)
            .map_err(|e| LogError::io("fsync directory", &self.dir, e))
    }

    /// Finds the position of the batch holding `offset` in segment `seg` (see
    /// [`find_position`]).
    pub(crate) fn position_of(&self, seg: &SegmentInfo, offset: u64) -> Result<u64> {
        let file = self
            .storage
            .open_read(&seg.path)
            .map_err(|e| LogError::io("open", &seg.path, e))?;
        let limit = match seg.sealed_len {
            Some(len) => len,
            None => self.durable_mark().position,
        };
        find_position(&*file, &seg.path, limit, seg.base, offset, self.max_batch)
            .map(|(pos, _)| pos)
            .map_err(|e| match e {
                LogError::Corrupt {
                    segment,
                    position,
                    reason,
                    ..
                } => LogError::Corrupt {
                    partition: self.id,
                    segment,
                    position,
                    reason,
                },
                other => other,
            })
    }
}

fn describe(end: &ScanEnd) -> String {
    match end {
        ScanEnd::Truncated => "incomplete batch at the end".to_owned(),
        ScanEnd::Invalid(r) => r.clone(),
        ScanEnd::Clean => "trailing bytes".to_owned(),
    }
}
