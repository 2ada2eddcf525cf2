//! One partition: its segments, the append path, and the durable mark.
//!
//! Appends write under the writer lock and return at once with a [`DurableTicket`];
//! the flusher (see `log.rs`) makes written bytes durable and advances the durable
//! mark, which wakes everybody waiting on a ticket and every reader waiting for data.
//! Readers never see bytes past the durable mark.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::config::{FsyncPolicy, LogConfig};
use crate::format::{BatchBuilder, Producer};
use crate::segment::{
    self, Producers, SEGMENT_SUFFIX, SNAPSHOT_SUFFIX, ScanEnd, parse_name, scan_segment,
    segment_name,
};
use crate::storage::{Storage, WriteFile};
use crate::{LogError, Result};

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
    /// A segment was created since the last directory fsync.
    dir_dirty: bool,
    poisoned: Option<String>,
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
    pub error: Option<LogError>,
    pub closed: bool,
}

/// What recovery found when the partition was opened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Bytes cut from the end of the last segment (an incomplete or invalid tail).
    pub truncated_bytes: u64,
    /// Why the tail was cut, if it was.
    pub reason: Option<String>,
}

#[derive(Debug)]
pub(crate) struct Partition {
    pub id: u32,
    pub dir: PathBuf,
    storage: Arc<dyn Storage>,
    policy: FsyncPolicy,
    segment_bytes: u64,
    pub max_batch: usize,
    writer: Mutex<Writer>,
    pub durable: Mutex<DurableState>,
    durable_cond: Condvar,
    pub durable_notify: tokio::sync::Notify,
    pub segments: RwLock<Arc<Vec<SegmentInfo>>>,
    pub recovery: RecoveryReport,
}

/// The result of an append.
#[derive(Debug, Clone)]
pub struct Appended {
    /// The partition appended to.
    pub partition: u32,
    /// Offset of the first record of the batch.
    pub base_offset: u64,
    /// Offset after the last record of the batch.
    pub next_offset: u64,
    /// True if the producer's sequence number was not above its last one: nothing was
    /// written, and the ticket becomes durable with the data already in the log.
    pub duplicate: bool,
    /// Resolves once the batch is durable under the fsync policy.
    pub ticket: DurableTicket,
}

/// A claim on durability: resolves once the log's durable mark has reached the end of
/// an appended batch. Acknowledge a batch to its sender only after this resolves.
#[derive(Debug, Clone)]
pub struct DurableTicket {
    part: Arc<Partition>,
    mark: Mark,
}

impl DurableTicket {
    /// True if the batch is already durable.
    pub fn is_durable(&self) -> bool {
        self.part.durable.lock().unwrap().mark >= self.mark
    }

    /// Blocks until the batch is durable.
    ///
    /// # Errors
    /// The fsync failed ([`LogError::Io`] or [`LogError::Poisoned`]), the log was closed
    /// first, or `timeout` passed ([`LogError::Timeout`]).
    pub fn wait(&self, timeout: Duration) -> Result<()> {
        self.part.wait_durable_blocking(self.mark, timeout)
    }

    /// Waits until the batch is durable.
    ///
    /// # Errors
    /// As [`wait`](Self::wait), without the timeout: wrap it in one.
    ///
    /// # Cancel safety
    /// Cancel safe: dropping the future only stops the wait, the batch stays appended.
    pub async fn wait_async(&self) -> Result<()> {
        self.part.wait_durable(self.mark).await
    }
}

impl Partition {
    /// Opens (or creates) the partition in `dir`, recovering its tail.
    pub fn open(
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
        let mut bases: Vec<u64> = names
            .iter()
            .filter_map(|n| parse_name(n, SEGMENT_SUFFIX))
            .collect();
        bases.sort_unstable();
        let snapshots: Vec<u64> = names
            .iter()
            .filter_map(|n| parse_name(n, SNAPSHOT_SUFFIX))
            .collect();
        let max_batch = config.max_batch_bytes;

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
                dir_dirty: false,
                poisoned: None,
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
                RecoveryReport::default(),
            ));
        }

        // Producer state: start from the newest snapshot we can read, then replay the
        // batch headers of every segment from there on.
        let mut producers = Producers::new();
        let mut replay_from = 0usize;
        for (i, base) in bases.iter().enumerate().rev() {
            if !snapshots.contains(base) {
                continue;
            }
            if let Some(p) =
                segment::read_snapshot(&*storage, &dir.join(segment::snapshot_name(*base)))
            {
                producers = p;
                replay_from = i;
                break;
            }
        }
        let last = bases.len() - 1;
        let mut segments = Vec::with_capacity(bases.len());
        for (i, &base) in bases.iter().enumerate() {
            let path = dir.join(segment_name(base));
            let file = storage
                .open_read(&path)
                .map_err(|e| LogError::io("open", &path, e))?;
            let len = file.size().map_err(|e| LogError::io("stat", &path, e))?;
            if i >= replay_from && i < last {
                let scan = scan_segment(&*file, &path, base, max_batch, |view, _| {
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
            segments.push(SegmentInfo {
                base,
                path,
                sealed_len: (i < last).then_some(len),
            });
        }

        // The last segment: verify every batch and cut an incomplete or invalid tail.
        let base = bases[last];
        let path = dir.join(segment_name(base));
        let file = storage
            .open_write(&path, false)
            .map_err(|e| LogError::io("open", &path, e))?;
        let file_len = file.size().map_err(|e| LogError::io("stat", &path, e))?;
        let scan = scan_segment(&*file, &path, base, max_batch, |view, _| {
            if let Some(p) = view.header().producer {
                producers.insert(p.id, p.seq);
            }
        })?;
        let mut report = RecoveryReport::default();
        if scan.valid_len < file_len {
            let dropped = file_len - scan.valid_len;
            let reason = match &scan.end {
                ScanEnd::Truncated => "incomplete batch at the end".to_owned(),
                ScanEnd::Invalid(r) => r.clone(),
                ScanEnd::Clean => "trailing bytes".to_owned(),
            };
            tracing::warn!(
                partition = id,
                segment = %path.display(),
                position = scan.valid_len,
                dropped_bytes = dropped,
                %reason,
                "log recovery: truncating the tail of the last segment"
            );
            file.set_len(scan.valid_len)
                .map_err(|e| LogError::io("truncate", &path, e))?;
            file.sync_data()
                .map_err(|e| LogError::io("fsync", &path, e))?;
            report = RecoveryReport {
                truncated_bytes: dropped,
                reason: Some(reason),
            };
        }
        let writer = Writer {
            file,
            seg_base: base,
            seg_len: scan.valid_len,
            next_offset: scan.next_offset,
            producers,
            dir_dirty: false,
            poisoned: None,
        };
        Ok(Self::build(
            id, dir, storage, config, writer, segments, report,
        ))
    }

    fn build(
        id: u32,
        dir: PathBuf,
        storage: Arc<dyn Storage>,
        config: &LogConfig,
        writer: Writer,
        segments: Vec<SegmentInfo>,
        recovery: RecoveryReport,
    ) -> Arc<Self> {
        let mark = writer.mark();
        Arc::new(Partition {
            id,
            dir,
            storage,
            policy: config.fsync,
            segment_bytes: config.segment_bytes,
            max_batch: config.max_batch_bytes,
            writer: Mutex::new(writer),
            durable: Mutex::new(DurableState {
                mark,
                error: None,
                closed: false,
            }),
            durable_cond: Condvar::new(),
            durable_notify: tokio::sync::Notify::new(),
            segments: RwLock::new(Arc::new(segments)),
            recovery,
        })
    }

    /// Appends a batch; see [`crate::Log::append`].
    pub fn append(
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
        let mut w = self.writer.lock().unwrap();
        if let Some(reason) = &w.poisoned {
            return Err(LogError::Poisoned {
                partition: self.id,
                reason: reason.clone(),
            });
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
                    },
                });
            }
        }
        if w.seg_len > 0 && w.seg_len + len as u64 > self.segment_bytes {
            self.roll(&mut w)?;
        }
        let base_offset = w.next_offset;
        let count = batch.len() as u64;
        let frame = batch.seal(base_offset, now_ms, producer);
        let at = w.seg_len;
        if let Err(e) = w.file.write_all_at(frame, at) {
            let err = LogError::io("write", self.dir.join(segment_name(w.seg_base)), e);
            w.poisoned = Some(err.to_string());
            return Err(err);
        }
        w.seg_len += len as u64;
        w.next_offset += count;
        if let Some(p) = producer {
            w.producers.insert(p.id, p.seq);
        }
        let mark = w.mark();
        if self.policy == FsyncPolicy::Never {
            self.advance_durable(mark);
        }
        drop(w);
        Ok(Appended {
            partition: self.id,
            base_offset,
            next_offset: base_offset + count,
            duplicate: false,
            ticket: DurableTicket {
                part: self.clone(),
                mark,
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
            let mut segs = self.segments.write().unwrap();
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
            self.advance_durable(old_end);
        }
        Ok(())
    }

    fn poison(&self, w: &mut Writer, err: &LogError) {
        w.poisoned = Some(err.to_string());
        let mut d = self.durable.lock().unwrap();
        d.error = Some(LogError::Poisoned {
            partition: self.id,
            reason: err.to_string(),
        });
        drop(d);
        self.durable_cond.notify_all();
        self.durable_notify.notify_waiters();
    }

    /// Makes everything written so far durable. Called by the flusher; safe to call
    /// concurrently (the durable mark only moves forward).
    pub fn sync(&self) -> Result<()> {
        let (file, mark, dir_dirty) = {
            let mut w = self.writer.lock().unwrap();
            if let Some(reason) = &w.poisoned {
                return Err(LogError::Poisoned {
                    partition: self.id,
                    reason: reason.clone(),
                });
            }
            let mark = w.mark();
            if self.durable.lock().unwrap().mark >= mark {
                return Ok(());
            }
            let dirty = std::mem::take(&mut w.dir_dirty);
            (w.file.clone(), mark, dirty)
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
                self.advance_durable(mark);
                Ok(())
            }
            Err(err) => {
                let mut w = self.writer.lock().unwrap();
                self.poison(&mut w, &err);
                Err(err)
            }
        }
    }

    /// True if bytes were written that are not durable yet.
    pub fn is_dirty(&self) -> bool {
        let w = self.writer.lock().unwrap();
        w.poisoned.is_none() && self.durable.lock().unwrap().mark < w.mark()
    }

    fn advance_durable(&self, mark: Mark) {
        let mut d = self.durable.lock().unwrap();
        if mark > d.mark {
            d.mark = mark;
            drop(d);
            self.durable_cond.notify_all();
            self.durable_notify.notify_waiters();
        }
    }

    /// Marks the partition closed: waiters wake up with [`LogError::Closed`].
    pub fn close(&self) {
        self.durable.lock().unwrap().closed = true;
        self.durable_cond.notify_all();
        self.durable_notify.notify_waiters();
    }

    fn check(&self, d: &DurableState, target: Mark) -> Option<Result<()>> {
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

    pub fn wait_durable_blocking(&self, target: Mark, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut d = self.durable.lock().unwrap();
        loop {
            if let Some(r) = self.check(&d, target) {
                return r;
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(LogError::Timeout(timeout));
            }
            d = self.durable_cond.wait_timeout(d, deadline - now).unwrap().0;
        }
    }

    pub async fn wait_durable(&self, target: Mark) -> Result<()> {
        loop {
            let notified = self.durable_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(r) = self.check(&self.durable.lock().unwrap(), target) {
                return r;
            }
            notified.await;
        }
    }

    /// Waits until the durable end passes `offset` (there is a record at `offset` to
    /// read), or `timeout` passes. Returns true if there is data.
    pub fn wait_for_offset_blocking(&self, offset: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut d = self.durable.lock().unwrap();
        loop {
            if d.mark.next_offset > offset {
                return true;
            }
            if d.error.is_some() || d.closed {
                return false;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            d = self.durable_cond.wait_timeout(d, deadline - now).unwrap().0;
        }
    }

    /// Async form of [`wait_for_offset_blocking`](Self::wait_for_offset_blocking),
    /// without a timeout (wrap it in one). Cancel safe.
    pub async fn wait_for_offset(&self, offset: u64) -> bool {
        loop {
            let notified = self.durable_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let d = self.durable.lock().unwrap();
                if d.mark.next_offset > offset {
                    return true;
                }
                if d.error.is_some() || d.closed {
                    return false;
                }
            }
            notified.await;
        }
    }

    /// The durable mark and any error.
    pub fn durable_mark(&self) -> Mark {
        self.durable.lock().unwrap().mark
    }

    /// The offset after the last written (not necessarily durable) record.
    pub fn written_end(&self) -> u64 {
        self.writer.lock().unwrap().next_offset
    }

    /// The last sequence number of `producer_id` in this partition.
    pub fn producer_seq(&self, producer_id: u64) -> Option<u64> {
        self.writer
            .lock()
            .unwrap()
            .producers
            .get(&producer_id)
            .copied()
    }

    /// The current segment list.
    pub fn segments(&self) -> Arc<Vec<SegmentInfo>> {
        self.segments.read().unwrap().clone()
    }

    pub fn storage(&self) -> &dyn Storage {
        &*self.storage
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}
