//! Write-behind: a durable spool between the pipeline and a slow store.
//!
//! Every sink of a pipeline is fed from the same shards through bounded channels, so one
//! stalled store (a database locked for 30 s) fills its channel, blocks the shards, and
//! stalls the other sinks with it. [`WriteBehind`] wraps a sink and cuts that link: its
//! [`write_at`](Sink::write_at) only appends the rows (and the input positions they
//! cover) to a *spool*, a one-partition [`lungfish_log::Log`] in its own directory, and
//! returns once the append is durable. A background thread reads the spool from its
//! committed offset, writes each spooled batch to the wrapped sink (with the same retries,
//! retry budget and circuit breaker as a [`SinkDriver`](super::SinkDriver), see
//! [`DriverSettings`]), and commits the spool offset after each write.
//!
//! ```text
//! SPOOL_DIR/lock                  held (flock) while a WriteBehind uses the spool
//! SPOOL_DIR/log/                  the spool: lungfish-log, one partition
//! SPOOL_DIR/log/consumers/write-behind.offsets   how far the store has the rows
//! ```
//!
//! # Guarantees
//!
//! * **Durable on return.** Once `write_at` returns `Ok`, its rows survive a crash: they
//!   are in the spool under the [`FsyncPolicy`] of [`WriteBehindSettings::fsync`]
//!   (`Always` by default: group commit, durable against power loss; with `Every(d)` the
//!   call waits for the next fsync). On the next start the background thread writes
//!   everything past the committed offset. Sinks upsert complete rows, so rows written
//!   again after a crash between a store write and its offset commit change nothing.
//! * **Bounded.** The spool holds at most [`WriteBehindSettings::max_bytes`] (1 GiB by
//!   default; the log's `max_bytes` with [`WhenFull::Refuse`]). When a write does not
//!   fit, `write_at` fails with a retryable [`SinkError`]: "write-behind spool for sink
//!   NAME is full (N bytes): the store is not keeping up". The pipeline's own driver then
//!   retries, opens its breaker and holds the batch, which pushes back on the shards as
//!   a slow store would: nothing is dropped.
//! * **In order, same positions.** Rows reach the wrapped sink in the order they were
//!   written, one store write per `write_at` (the same batch boundaries), with exactly the
//!   positions that `write_at` carried. (Exception: a write that needed several spool
//!   batches, over `max_batch` bytes, and was cut short by a crash after some of them is
//!   written without positions; it was never acknowledged, so the pipeline writes it
//!   again.)
//! * **Rows a store refuses** ([`SinkError::rejects_rows`]): with
//!   [`with_dead_letters`](WriteBehind::with_dead_letters), the batch is split in halves
//!   until the refused rows are alone, the others are written, and the refused ones go to
//!   the dead-letter queue (stage `sink:NAME`, kind `rejected_row`, as the driver does),
//!   then the batch's positions are recorded. Without a dead-letter queue, or on a
//!   permanent error (a schema mismatch), the background thread stops: the error is logged,
//!   [`status`](WriteBehind::status) and [`flush`](WriteBehind::flush) report it, and every
//!   later `write_at` fails with a permanent error, so the pipeline stops as it would
//!   without write-behind. The rows stay in the spool for the next start. Dead letters are
//!   at least once: a crash after they are written and before the offset commit writes
//!   them again.
//! * **A stalled store is waited for, never given up on.** Transient failures are retried
//!   under the breaker for as long as it takes; the rows are safe in the spool meanwhile.
//! * **Shutdown.** [`flush`](WriteBehind::flush) waits, bounded, for the spool to drain.
//!   Dropping a `WriteBehind` flushes for up to [`WriteBehindSettings::drain_on_drop`]
//!   (a pipeline drops its sinks at the end of a run), then stops the thread: what is
//!   still spooled stays durable and is written on the next start, and a warning says so.
//!   Dropping waits for a store write in progress to return (bounded by the store's own
//!   timeout, e.g. the SQLite sink's `write_timeout`).
//! * [`stored_rows`](Sink::stored_rows) asks the wrapped sink only when the spool is
//!   drained (`None` otherwise: the store does not hold everything yet).
//!
//! The store must be reachable when [`open`](Sink::open) runs: it opens the wrapped sink
//! (creating its table) before the thread starts.
//!
//! # Spool record format (version 1)
//!
//! One `write_at` is one or more records (more only when its rows do not fit one spool
//! batch); the last has the `final` flag and the positions. All integers little-endian:
//!
//! ```text
//! 0   u8   version        1
//! 1   u8   flags          bit 0: last record of the write
//! 2   u16  columns        aggregate columns per row
//! 4   u64  schema tag     XXH3-64 of the column names and kinds
//! 12  u32  rows
//! 16  u32  positions
//! 20  positions x (u32 partition, u64 through, i64 watermark)
//!     rows x i64 window_start, rows x i64 window_end,
//!     rows x u32 end of the key in the key bytes (cumulative), the key bytes (UTF-8),
//!     rows x columns x f64 (IEEE 754 bits, so NaN and infinities survive)
//! ```
//!
//! Metrics: gauge `lungfish_write_behind_bytes{sink}` (spool bytes not yet in the store),
//! counter `lungfish_write_behind_rows_total{sink}` (rows written to the store), counter
//! `lungfish_write_behind_full_total{sink}` (writes refused by a full spool), and the
//! breaker state `lungfish_breaker_state{component="write-behind:NAME"}`.

use std::fs::{File, TryLockError};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use lungfish_log::{
    BATCH_HEADER_LEN, BatchBuilder, FsyncPolicy, Log, LogConfig, LogError, OffsetCommit, Retention,
    WhenFull,
};

use super::{DriverSettings, Sink, SinkError, SinkPosition, isolate_refused};
use crate::breaker::{BreakerState, CircuitBreaker, Outcome};
use crate::dlq::DeadLetters;
use crate::retry::{Backoff, RetryBudget};
use crate::window::{ColumnKind, RowSchema, WindowRows};

/// The spool's consumer name (its committed offset: what the store has).
const CONSUMER: &str = "write-behind";
/// The record format version.
const VERSION: u8 = 1;
/// Flag of a write's last record.
const FINAL: u8 = 1;
/// Bytes of a record's fixed header.
const RECORD_HEADER: usize = 20;
/// Bytes of one encoded position.
const POSITION_LEN: usize = 20;
/// Bytes of a record's length prefix in a spool batch.
const RECORD_PREFIX: usize = 4;
/// Bytes the background thread reads from the spool at a time.
const READ_BYTES: usize = 1 << 20;
/// The smallest spool accepted.
const MIN_MAX_BYTES: u64 = 16 << 10;

/// Settings of a [`WriteBehind`].
#[derive(Debug, Clone, Copy)]
pub struct WriteBehindSettings {
    /// The spool never holds more than this (bytes on disk, framing included). At least
    /// 16 KiB. Segments are an eighth of it (4 KiB to 64 MiB); a write must fit in
    /// `max_bytes` minus one segment.
    pub max_bytes: u64,
    /// When spooled rows are durable; `write_at` returns after that.
    pub fsync: FsyncPolicy,
    /// How long `write_at` waits for its append to become durable before failing (with a
    /// retryable error).
    pub durable_timeout: Duration,
    /// Retries, retry budget and circuit breaker of the writes to the wrapped sink.
    /// `batch_max_rows`, `batch_max_age` and `hold_when_failing` are not used: the spool
    /// keeps the batches of `write_at` as they are, and a failing store is always held
    /// (probed under the breaker until it heals), since the rows wait safely in the spool.
    pub retry: DriverSettings,
    /// How long dropping the `WriteBehind` waits for the spool to drain before stopping
    /// the thread (what is left is written on the next start).
    pub drain_on_drop: Duration,
}

impl Default for WriteBehindSettings {
    /// A 1 GiB spool, fsync `always` (group commit), 30 s to become durable, the
    /// driver's default retries and breaker, 10 s to drain when dropped.
    fn default() -> Self {
        WriteBehindSettings {
            max_bytes: 1 << 30,
            fsync: FsyncPolicy::Always,
            durable_timeout: Duration::from_secs(30),
            retry: DriverSettings::default(),
            drain_on_drop: Duration::from_secs(10),
        }
    }
}

/// A snapshot of a [`WriteBehind`]'s progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteBehindStatus {
    /// Spool bytes (framing included) not yet written to the store.
    pub spooled_bytes: u64,
    /// Spool offset after the last spooled record.
    pub spooled_end: u64,
    /// Spool offset before which every record is written to the store.
    pub written_through: u64,
    /// Rows written to the store by this instance.
    pub rows_written: u64,
    /// The error that stopped the background thread, if one did.
    pub failed: Option<String>,
    /// The last error of the store while it is failing (cleared by a successful write).
    pub last_error: Option<String>,
    /// True while the background thread runs.
    pub running: bool,
}

impl WriteBehindStatus {
    /// True if the store has everything spooled.
    pub fn is_drained(&self) -> bool {
        self.written_through >= self.spooled_end
    }
}

/// Writes window rows to a durable spool and from there, in the background, to another
/// sink. See the [module documentation](self) for the guarantees.
pub struct WriteBehind {
    name: String,
    spool_dir: PathBuf,
    settings: WriteBehindSettings,
    inner: Arc<Mutex<Box<dyn Sink>>>,
    inner_describe: String,
    inner_hint: Option<String>,
    dead_letters: Option<DeadLetters>,
    shared: Arc<Shared>,
    spool: Option<Spool>,
}

/// What exists once the spool is open.
struct Spool {
    log: Log,
    tag: u64,
    columns: usize,
    max_batch: usize,
    segment_bytes: u64,
    thread: Option<JoinHandle<()>>,
    _lock: File,
}

impl std::fmt::Debug for WriteBehind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteBehind")
            .field("name", &self.name)
            .field("spool_dir", &self.spool_dir)
            .field("inner", &self.inner_describe)
            .finish_non_exhaustive()
    }
}

/// Watches a [`WriteBehind`] from another thread (it may have moved into a pipeline).
#[derive(Debug, Clone)]
pub struct WriteBehindMonitor {
    shared: Arc<Shared>,
}

impl WriteBehindMonitor {
    /// The progress now.
    pub fn status(&self) -> WriteBehindStatus {
        self.shared.status()
    }

    /// As [`WriteBehind::flush`].
    ///
    /// # Errors
    /// As [`WriteBehind::flush`].
    pub fn flush(&self, timeout: Duration) -> Result<(), SinkError> {
        self.shared.flush(timeout)
    }
}

/// State shared by the `WriteBehind`, its thread and monitors.
#[derive(Debug)]
struct Shared {
    name: String,
    spool_dir: PathBuf,
    state: Mutex<State>,
    changed: Condvar,
    stop: AtomicBool,
}

#[derive(Debug, Default)]
struct State {
    end: u64,
    written: u64,
    spooled_bytes: u64,
    rows_written: u64,
    failed: Option<SinkError>,
    last_error: Option<String>,
    running: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    fn status(&self) -> WriteBehindStatus {
        let s = self.state();
        WriteBehindStatus {
            spooled_bytes: s.spooled_bytes,
            spooled_end: s.end,
            written_through: s.written,
            rows_written: s.rows_written,
            failed: s.failed.as_ref().map(|e| e.message.clone()),
            last_error: s.last_error.clone(),
            running: s.running,
        }
    }

    fn gauge(&self, bytes: u64) {
        metrics::gauge!("lungfish_write_behind_bytes", "sink" => self.name.clone())
            .set(bytes as f64);
    }

    fn stopped_error(&self, e: &SinkError) -> SinkError {
        SinkError::permanent(format!(
            "write-behind for sink {} stopped: {e}; the rows not yet written stay in the spool at {}",
            self.name,
            self.spool_dir.display()
        ))
    }

    fn flush(&self, timeout: Duration) -> Result<(), SinkError> {
        // (A year stands for "no limit", without overflowing an Instant.)
        let deadline = Instant::now() + timeout.min(Duration::from_secs(365 * 86_400));
        let mut s = self.state();
        loop {
            if let Some(e) = &s.failed {
                return Err(self.stopped_error(e));
            }
            if s.written >= s.end {
                return Ok(());
            }
            let last = s
                .last_error
                .as_ref()
                .map_or(String::new(), |e| format!(" (last store error: {e})"));
            if !s.running {
                return Err(SinkError::transient(format!(
                    "write-behind for sink {} is not running; {} bytes stay in the spool at {}{last}: \
                     they are durable and written on the next start",
                    self.name,
                    s.spooled_bytes,
                    self.spool_dir.display()
                )));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(SinkError::transient(format!(
                    "write-behind for sink {}: {} bytes are still in the spool at {} after {timeout:?}{last}; \
                     they are durable and written when the store recovers (or on the next start)",
                    self.name,
                    s.spooled_bytes,
                    self.spool_dir.display()
                )));
            }
            s = self
                .changed
                .wait_timeout(s, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

impl WriteBehind {
    /// Wraps `inner` (not yet opened) behind a spool in `spool_dir`, which must belong to
    /// this sink alone. Nothing is opened before [`open`](Sink::open).
    pub fn new(
        name: &str,
        inner: Box<dyn Sink>,
        spool_dir: impl Into<PathBuf>,
        settings: WriteBehindSettings,
    ) -> Self {
        let spool_dir = spool_dir.into();
        let inner_describe = inner.describe();
        let inner_hint = inner.query_hint();
        WriteBehind {
            name: name.to_owned(),
            shared: Arc::new(Shared {
                name: name.to_owned(),
                spool_dir: spool_dir.clone(),
                state: Mutex::new(State::default()),
                changed: Condvar::new(),
                stop: AtomicBool::new(false),
            }),
            spool_dir,
            settings,
            inner: Arc::new(Mutex::new(inner)),
            inner_describe,
            inner_hint,
            dead_letters: None,
            spool: None,
        }
    }

    /// Sends rows the store refuses to `dead_letters` (after isolating them by bisection)
    /// instead of stopping. Give it a queue of its own (e.g. `DeadLetters::open` on
    /// `SPOOL_DIR/dlq`): a pipeline's queue is open in the pipeline and must not be opened
    /// twice.
    pub fn with_dead_letters(mut self, dead_letters: DeadLetters) -> Self {
        self.dead_letters = Some(dead_letters);
        self
    }

    /// A handle to watch the progress and wait for the drain from another thread.
    pub fn monitor(&self) -> WriteBehindMonitor {
        WriteBehindMonitor {
            shared: self.shared.clone(),
        }
    }

    /// The progress now.
    pub fn status(&self) -> WriteBehindStatus {
        self.shared.status()
    }

    /// Waits up to `timeout` until the store has every row spooled so far.
    ///
    /// # Errors
    /// The spool did not drain in time (retryable: the store is still failing; the rows
    /// stay durable in the spool), or the background thread stopped on an error
    /// (permanent).
    pub fn flush(&self, timeout: Duration) -> Result<(), SinkError> {
        self.shared.flush(timeout)
    }

    fn full_error(&self, log: &Log) -> SinkError {
        let bytes = log.stats(0).map_or(0, |s| s.bytes);
        let last = self
            .shared
            .state()
            .last_error
            .as_ref()
            .map_or(String::new(), |e| format!("; last store error: {e}"));
        SinkError::transient(format!(
            "write-behind spool for sink {} is full ({bytes} bytes): the store is not keeping up \
             (spool limit {} bytes at {}{last})",
            self.name,
            self.settings.max_bytes,
            self.spool_dir.display()
        ))
    }
}

impl Sink for WriteBehind {
    fn open(&mut self, schema: &RowSchema) -> Result<(), SinkError> {
        if self.spool.is_some() {
            return Err(SinkError::permanent(format!(
                "write-behind for sink {} was opened twice",
                self.name
            )));
        }
        let where_ = format!("write-behind spool {}", self.spool_dir.display());
        let max_bytes = self.settings.max_bytes;
        if schema.columns().len() > usize::from(u16::MAX) {
            return Err(SinkError::permanent(format!(
                "{where_}: {} columns are more than the spool format holds ({})",
                schema.columns().len(),
                u16::MAX
            )));
        }
        if max_bytes < MIN_MAX_BYTES {
            return Err(SinkError::permanent(format!(
                "{where_}: max_bytes must be at least {MIN_MAX_BYTES} bytes, not {max_bytes}"
            )));
        }
        std::fs::create_dir_all(&self.spool_dir)
            .map_err(|e| SinkError::permanent(format!("{where_}: {e}")))?;
        let lock_path = self.spool_dir.join("lock");
        let lock_file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| SinkError::permanent(format!("{}: {e}", lock_path.display())))?;
        match lock_file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(SinkError::permanent(format!(
                    "{where_} is in use by another write-behind (another process, or another sink with the same spool directory)"
                )));
            }
            Err(TryLockError::Error(e)) => {
                return Err(SinkError::permanent(format!(
                    "{}: {e}",
                    lock_path.display()
                )));
            }
        }
        let segment_bytes = (max_bytes / 8).clamp(4096, 64 << 20);
        let max_batch = segment_bytes.min(8 << 20) as usize;
        let log_error = |e: LogError| SinkError::permanent(format!("{where_}: {e}"));
        let log = Log::open(
            self.spool_dir.join("log"),
            LogConfig {
                partitions: 1,
                segment_bytes,
                fsync: self.settings.fsync,
                max_batch_bytes: max_batch,
                retention: Retention {
                    // Segments the store has are deleted as soon as they are sealed.
                    target_bytes: Some(0),
                    max_age: None,
                    max_bytes: Some(max_bytes),
                    when_full: WhenFull::Refuse,
                },
            },
        )
        .map_err(log_error)?;
        // Without a committed offset retention would count everything as read: register
        // the consumer before anything is appended.
        let written = match log
            .committed(CONSUMER)
            .map_err(log_error)?
            .first()
            .cloned()
            .flatten()
        {
            Some(c) => c.offset,
            None => {
                let start = log.stats(0).map_err(log_error)?.start_offset;
                log.commit(
                    CONSUMER,
                    &[OffsetCommit {
                        partition: 0,
                        offset: start,
                        metadata: b"",
                    }],
                )
                .map_err(log_error)?;
                start
            }
        };
        lock(&self.inner).open(schema)?;
        let recovered_end = log.end_offset(0);
        {
            let mut s = self.shared.state();
            s.end = recovered_end;
            s.written = written;
            s.running = true;
        }
        if recovered_end > written {
            tracing::info!(
                sink = %self.name,
                records = recovered_end - written,
                spool = %self.spool_dir.display(),
                "write-behind: writing what the spool holds from the last run"
            );
        }
        let columns = schema.columns().len();
        let schema = Arc::new(schema.clone());
        let tag = schema_tag(&schema);
        let worker = Worker {
            name: self.name.clone(),
            shared: self.shared.clone(),
            inner: self.inner.clone(),
            log: log.clone(),
            tag,
            settings: self.settings.retry,
            dead_letters: self.dead_letters.clone(),
            budget: RetryBudget::new(self.settings.retry.retry_budget),
            breaker: CircuitBreaker::new(self.settings.retry.breaker),
            backoff: Backoff::new(
                self.settings.retry.first_backoff,
                self.settings.retry.max_backoff,
                crate::sources::generator::mix64(self.name.len() as u64 ^ 0x5752_4954_4542_4548),
            ),
            recovered_end,
            schema,
            warned: None,
        };
        let thread = std::thread::Builder::new()
            .name(format!("lungfish-write-behind-{}", self.name))
            .spawn(move || worker.run(written))
            .map_err(|e| {
                self.shared.state().running = false;
                SinkError::permanent(format!("{where_}: starting its thread: {e}"))
            })?;
        self.spool = Some(Spool {
            log,
            tag,
            columns,
            max_batch,
            segment_bytes,
            thread: Some(thread),
            _lock: lock_file,
        });
        Ok(())
    }

    fn write(&mut self, batch: &[Arc<WindowRows>]) -> Result<(), SinkError> {
        self.write_at(batch, &[])
    }

    fn write_at(
        &mut self,
        batch: &[Arc<WindowRows>],
        positions: &[SinkPosition],
    ) -> Result<(), SinkError> {
        let Some(spool) = self.spool.as_ref() else {
            return Err(SinkError::permanent(format!(
                "write-behind for sink {} was not opened",
                self.name
            )));
        };
        {
            let s = self.shared.state();
            if let Some(e) = &s.failed {
                return Err(self.shared.stopped_error(e));
            }
            if !s.running {
                return Err(SinkError::permanent(format!(
                    "write-behind for sink {}: the background writer is not running",
                    self.name
                )));
            }
        }
        if batch.iter().all(|b| b.is_empty()) && positions.is_empty() {
            return Ok(());
        }
        let mut batches = encode_write(
            &self.name,
            spool.tag,
            spool.columns,
            spool.max_batch,
            batch,
            positions,
        )?;
        let total: u64 = batches.iter().map(|b| b.encoded_len() as u64).sum();
        let log = &spool.log;
        let usable = self.settings.max_bytes - spool.segment_bytes;
        if total > usable {
            return Err(SinkError::permanent(format!(
                "write-behind for sink {}: a batch of {total} bytes can never fit in the spool ({usable} usable bytes); \
                 raise max_bytes or lower the batch size",
                self.name
            )));
        }
        if log.room(0).is_some_and(|room| room < total) {
            // Segments the store has may still wait for the retention pass.
            if let Err(e) = log.apply_retention() {
                tracing::warn!(sink = %self.name, error = %e, "write-behind: spool retention failed");
            }
            if log.room(0).is_some_and(|room| room < total) {
                metrics::counter!("lungfish_write_behind_full_total", "sink" => self.name.clone())
                    .increment(1);
                return Err(self.full_error(log));
            }
        }
        let mut tickets = Vec::with_capacity(batches.len());
        let mut end = 0;
        for b in &mut batches {
            match log.append(0, b, None) {
                Ok(a) => {
                    end = a.next_offset;
                    tickets.push(a.ticket);
                }
                Err(LogError::Full { .. }) => return Err(self.full_error(log)),
                Err(e) => return Err(spool_error(&self.name, &e)),
            }
        }
        // Every ticket, not just the last: a batch lost to a failed fsync must not be
        // reported durable because a later one is.
        for t in &tickets {
            t.wait(self.settings.durable_timeout)
                .map_err(|e| spool_error(&self.name, &e))?;
        }
        let bytes = {
            let mut s = self.shared.state();
            s.end = s.end.max(end);
            s.spooled_bytes += total;
            s.spooled_bytes
        };
        self.shared.gauge(bytes);
        Ok(())
    }

    fn describe(&self) -> String {
        format!("write-behind -> {}", self.inner_describe)
    }

    fn query_hint(&self) -> Option<String> {
        self.inner_hint.clone()
    }

    fn stored_rows(&mut self) -> Option<u64> {
        let status = self.shared.status();
        if status.failed.is_none() && status.is_drained() {
            lock(&self.inner).stored_rows()
        } else {
            tracing::info!(
                sink = %self.name,
                spooled_bytes = status.spooled_bytes,
                "write-behind: the store does not have every row yet"
            );
            None
        }
    }
}

impl Drop for WriteBehind {
    fn drop(&mut self) {
        let Some(mut spool) = self.spool.take() else {
            return;
        };
        if !self.settings.drain_on_drop.is_zero()
            && let Err(e) = self.shared.flush(self.settings.drain_on_drop)
        {
            tracing::warn!(sink = %self.name, error = %e, "write-behind: stopping before the spool drained");
        }
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = spool.thread.take()
            && t.join().is_err()
        {
            tracing::error!(sink = %self.name, "write-behind: the background thread panicked");
        }
        let status = self.shared.status();
        if !status.is_drained() {
            tracing::warn!(
                sink = %self.name,
                bytes = status.spooled_bytes,
                spool = %self.spool_dir.display(),
                "write-behind: rows stay in the spool; they are durable and written on the next start"
            );
        }
        if let Err(e) = spool.log.close() {
            tracing::warn!(sink = %self.name, error = %e, "write-behind: closing the spool failed");
        }
    }
}

fn spool_error(name: &str, e: &LogError) -> SinkError {
    let message = format!("write-behind spool for sink {name}: {e}");
    if e.is_transient() {
        SinkError::transient(message)
    } else {
        SinkError::permanent(message)
    }
}

/// Encodes one write (`batch` and the `positions` it carries) into spool batches of at
/// most `max_batch` bytes each: one record per [`WindowRows`] (cut further when it does
/// not fit a batch), the last record flagged [`FINAL`] with the positions.
fn encode_write(
    name: &str,
    tag: u64,
    columns: usize,
    max_batch: usize,
    batch: &[Arc<WindowRows>],
    positions: &[SinkPosition],
) -> Result<Vec<BatchBuilder>, SinkError> {
    let max_record = max_batch - BATCH_HEADER_LEN - RECORD_PREFIX;
    let fixed = RECORD_HEADER + positions.len() * POSITION_LEN;
    let mut parts: Vec<(&WindowRows, Range<usize>)> = Vec::new();
    for rows in batch.iter().filter(|r| !r.is_empty()) {
        if rows.schema().columns().len() != columns {
            return Err(SinkError::permanent(format!(
                "write-behind for sink {name}: rows with {} columns, but the sink was opened for {columns}",
                rows.schema().columns().len(),
            )));
        }
        let mut lo = 0;
        while lo < rows.len() {
            let (mut hi, mut size) = (lo, fixed);
            while hi < rows.len() {
                let n = row_len(rows, hi);
                if hi > lo && size + n > max_record {
                    break;
                }
                size += n;
                hi += 1;
            }
            if size > max_record {
                return Err(SinkError::rejected_rows(format!(
                    "write-behind for sink {name}: a row of {size} bytes does not fit in a spool batch ({max_record} bytes)"
                )));
            }
            parts.push((rows, lo..hi));
            lo = hi;
        }
    }
    let mut batches = Vec::new();
    let mut current = BatchBuilder::new();
    let count = parts.len().max(1);
    for i in 0..count {
        let last = i + 1 == count;
        let part = parts.get(i).cloned();
        let len = RECORD_PREFIX
            + fixed
            + part
                .as_ref()
                .map_or(0, |(r, range)| range.clone().map(|j| row_len(r, j)).sum());
        if !current.is_empty() && current.encoded_len() + len > max_batch {
            batches.push(std::mem::take(&mut current));
        }
        let positions = if last { positions } else { &[] };
        current.push_with(|out| encode_record(out, tag, columns, part, positions, last));
    }
    batches.push(current);
    Ok(batches)
}

/// Encoded bytes of row `i` of `rows`.
fn row_len(rows: &WindowRows, i: usize) -> usize {
    8 + 8 + 4 + rows.key(i).len() + 8 * rows.schema().columns().len()
}

/// A tag of the row schema's column names and kinds: records written under another
/// schema are recognised, not misread.
fn schema_tag(schema: &RowSchema) -> u64 {
    let mut bytes = Vec::new();
    for (name, kind) in schema.columns() {
        bytes.extend_from_slice(&(name.len() as u32).to_le_bytes());
        bytes.extend_from_slice(name.as_bytes());
        bytes.push(match kind {
            ColumnKind::Integer => 1,
            ColumnKind::Real => 2,
        });
    }
    xxhash_rust::xxh3::xxh3_64(&bytes)
}

/// Appends one record (see the module documentation) to `out`.
fn encode_record(
    out: &mut Vec<u8>,
    tag: u64,
    columns: usize,
    part: Option<(&WindowRows, Range<usize>)>,
    positions: &[SinkPosition],
    last: bool,
) {
    let count = part.as_ref().map_or(0, |(_, r)| r.len());
    out.push(VERSION);
    out.push(if last { FINAL } else { 0 });
    out.extend_from_slice(&(columns as u16).to_le_bytes());
    out.extend_from_slice(&tag.to_le_bytes());
    out.extend_from_slice(&(count as u32).to_le_bytes());
    out.extend_from_slice(&(positions.len() as u32).to_le_bytes());
    for p in positions {
        out.extend_from_slice(&p.partition.to_le_bytes());
        out.extend_from_slice(&p.through.to_le_bytes());
        out.extend_from_slice(&p.watermark.to_le_bytes());
    }
    let Some((rows, range)) = part else {
        return;
    };
    for i in range.clone() {
        out.extend_from_slice(&rows.window_start(i).to_le_bytes());
    }
    for i in range.clone() {
        out.extend_from_slice(&rows.window_end(i).to_le_bytes());
    }
    let mut end = 0u32;
    for i in range.clone() {
        end += rows.key(i).len() as u32;
        out.extend_from_slice(&end.to_le_bytes());
    }
    for i in range.clone() {
        out.extend_from_slice(rows.key(i).as_bytes());
    }
    for i in range {
        for c in 0..columns {
            out.extend_from_slice(&rows.value(i, c).to_bits().to_le_bytes());
        }
    }
}

/// One decoded record.
#[derive(Debug)]
struct Part {
    last: bool,
    rows: Option<WindowRows>,
    positions: Vec<SinkPosition>,
}

/// Reads fixed-size fields off a record.
struct Fields<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Fields<'a> {
    fn take(&mut self, n: u64) -> Result<&'a [u8], String> {
        let rest = (self.bytes.len() - self.at) as u64;
        if n > rest {
            return Err(format!(
                "truncated record: {n} more bytes needed at byte {}, {rest} left",
                self.at
            ));
        }
        let s = &self.bytes[self.at..self.at + n as usize];
        self.at += n as usize;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        Ok(self.take(N as u64)?.try_into().expect("N bytes taken"))
    }
}

fn le_u32(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes(b[i * 4..i * 4 + 4].try_into().expect("4 bytes"))
}

fn le_u64(b: &[u8], i: usize) -> u64 {
    u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().expect("8 bytes"))
}

/// Decodes a record written by [`encode_record`] for rows of `schema` (whose
/// [`schema_tag`] is `tag`).
fn decode_record(bytes: &[u8], schema: &Arc<RowSchema>, tag: u64) -> Result<Part, String> {
    let mut f = Fields { bytes, at: 0 };
    let [version] = f.array::<1>()?;
    if version != VERSION {
        return Err(format!(
            "record version {version} is unknown (this build reads version {VERSION})"
        ));
    }
    let [flags] = f.array::<1>()?;
    let columns = u16::from_le_bytes(f.array()?) as usize;
    let record_tag = u64::from_le_bytes(f.array()?);
    if columns != schema.columns().len() || record_tag != tag {
        return Err(format!(
            "the record holds rows of another shape ({columns} columns, schema tag {record_tag:016x}; \
             this pipeline writes {} columns, tag {tag:016x}): drain the spool with the configuration \
             that wrote it, or remove it",
            schema.columns().len()
        ));
    }
    let rows = u64::from(u32::from_le_bytes(f.array()?));
    let count = u64::from(u32::from_le_bytes(f.array()?));
    let raw = f.take(count * POSITION_LEN as u64)?;
    let positions = raw
        .chunks_exact(POSITION_LEN)
        .map(|p| SinkPosition {
            partition: le_u32(p, 0),
            through: u64::from_le_bytes(p[4..12].try_into().expect("8 bytes")),
            watermark: i64::from_le_bytes(p[12..20].try_into().expect("8 bytes")),
        })
        .collect();
    let starts = f.take(rows * 8)?;
    let ends = f.take(rows * 8)?;
    let key_ends = f.take(rows * 4)?;
    let key_total = if rows == 0 {
        0
    } else {
        u64::from(le_u32(key_ends, rows as usize - 1))
    };
    let keys = f.take(key_total)?;
    let values = f.take(rows * columns as u64 * 8)?;
    if f.at != bytes.len() {
        return Err(format!(
            "{} bytes after the end of the record",
            bytes.len() - f.at
        ));
    }
    if rows == 0 {
        return Ok(Part {
            last: flags & FINAL != 0,
            rows: None,
            positions,
        });
    }
    let mut out = WindowRows::new(schema.clone());
    let mut row = vec![0.0; columns];
    let mut from = 0usize;
    for i in 0..rows as usize {
        let to = le_u32(key_ends, i) as usize;
        if to < from || to > keys.len() {
            return Err(format!("row {i}: key bytes {from}..{to} out of order"));
        }
        let key = std::str::from_utf8(&keys[from..to])
            .map_err(|e| format!("row {i}: the key is not UTF-8 ({e})"))?;
        for (c, v) in row.iter_mut().enumerate() {
            *v = f64::from_bits(le_u64(values, i * columns + c));
        }
        out.push(le_u64(starts, i) as i64, le_u64(ends, i) as i64, key, &row);
        from = to;
    }
    Ok(Part {
        last: flags & FINAL != 0,
        rows: Some(out),
        positions,
    })
}

/// The background writer: reads the spool and writes to the wrapped sink.
struct Worker {
    name: String,
    shared: Arc<Shared>,
    inner: Arc<Mutex<Box<dyn Sink>>>,
    log: Log,
    schema: Arc<RowSchema>,
    tag: u64,
    settings: DriverSettings,
    dead_letters: Option<DeadLetters>,
    budget: RetryBudget,
    breaker: CircuitBreaker,
    backoff: Backoff,
    /// The spool's end when it was opened: what a crash may have left unfinished ends
    /// there, and no write spans it.
    recovered_end: u64,
    /// When the failing store was last reported.
    warned: Option<Instant>,
}

/// One spooled write, decoded.
struct Spooled {
    rows: Vec<Arc<WindowRows>>,
    positions: Vec<SinkPosition>,
    /// The spool offset after its last record: committed once it is written.
    next_offset: u64,
    /// Spool bytes of its batches.
    bytes: u64,
}

/// The records of a write read so far.
#[derive(Default)]
struct Partial {
    rows: Vec<Arc<WindowRows>>,
    bytes: u64,
}

impl Drop for Worker {
    fn drop(&mut self) {
        let mut s = self.shared.state();
        s.running = false;
        if std::thread::panicking() && s.failed.is_none() {
            s.failed = Some(SinkError::permanent("its thread panicked"));
        }
        drop(s);
        self.shared.changed.notify_all();
    }
}

impl Worker {
    fn stopping(&self) -> bool {
        self.shared.stop.load(Ordering::SeqCst)
    }

    /// Sleeps `d`, or less if asked to stop.
    fn sleep(&self, d: Duration) {
        let until = Instant::now() + d;
        loop {
            let now = Instant::now();
            if now >= until || self.stopping() {
                return;
            }
            std::thread::sleep((until - now).min(Duration::from_millis(20)));
        }
    }

    fn run(mut self, from: u64) {
        if from < self.recovered_end {
            let bytes = self.measure(from);
            let total = {
                let mut s = self.shared.state();
                s.spooled_bytes += bytes;
                s.spooled_bytes
            };
            self.shared.gauge(total);
        }
        let mut reader = match self.log.reader(0, from) {
            Ok(r) => r,
            Err(e) => return self.fail(spool_error(&self.name, &e)),
        };
        let mut partial = Partial::default();
        while !self.stopping() {
            let at = reader.position();
            let writes = match reader.read(READ_BYTES) {
                Ok(chunk) if chunk.is_empty() => None,
                Ok(chunk) => Some(self.decode_chunk(&chunk, at, &mut partial)),
                Err(e @ LogError::Corrupt { .. }) => {
                    return self.fail(spool_error(&self.name, &e));
                }
                Err(e) => {
                    tracing::warn!(sink = %self.name, error = %e, "write-behind: reading the spool failed; trying again");
                    self.sleep(Duration::from_secs(1));
                    reader.seek(at);
                    continue;
                }
            };
            let writes = match writes {
                None => {
                    reader.wait(Duration::from_millis(100));
                    continue;
                }
                Some(Ok(w)) => w,
                Some(Err(e)) => return self.fail(e),
            };
            for w in &writes {
                if !self.deliver(w) {
                    return;
                }
                self.commit(w);
            }
        }
    }

    /// Bytes of the spool batches in `[from, recovered_end)`: the backlog of the last run.
    fn measure(&self, from: u64) -> u64 {
        let Ok(mut reader) = self.log.reader(0, from) else {
            return 0;
        };
        let mut bytes = 0;
        while reader.position() < self.recovered_end && !self.stopping() {
            let at = reader.position();
            match reader.read(READ_BYTES) {
                Ok(chunk) if chunk.is_empty() => break,
                Ok(chunk) => {
                    for b in chunk.batches() {
                        let base = b.header().base_offset;
                        if base >= at && base < self.recovered_end {
                            bytes += b.frame_len() as u64;
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(sink = %self.name, error = %e, "write-behind: measuring the spool failed");
                    break;
                }
            }
        }
        bytes
    }

    /// The complete writes among the records of `chunk` at or after `from`; the records
    /// of an unfinished one stay in `partial`.
    fn decode_chunk(
        &self,
        chunk: &lungfish_log::Chunk<'_>,
        from: u64,
        partial: &mut Partial,
    ) -> Result<Vec<Spooled>, SinkError> {
        let mut out = Vec::new();
        for batch in chunk.batches() {
            if batch.header().base_offset >= from {
                partial.bytes += batch.frame_len() as u64;
            }
            for (offset, record) in batch.records() {
                if offset < from {
                    continue;
                }
                let part = decode_record(record, &self.schema, self.tag).map_err(|reason| {
                    SinkError::permanent(format!(
                        "write-behind spool for sink {}: record {offset}: {reason}",
                        self.name
                    ))
                })?;
                if let Some(rows) = part.rows {
                    partial.rows.push(Arc::new(rows));
                }
                let orphan = !part.last && offset + 1 == self.recovered_end;
                if orphan {
                    tracing::warn!(
                        sink = %self.name,
                        offset,
                        "write-behind: the spool ends in a write cut short by a crash; writing its rows without positions"
                    );
                }
                if part.last || orphan {
                    let done = std::mem::take(partial);
                    out.push(Spooled {
                        rows: done.rows,
                        positions: part.positions,
                        next_offset: offset + 1,
                        bytes: done.bytes,
                    });
                }
            }
        }
        Ok(out)
    }

    /// Writes `w` to the store, holding it while the store fails. False if the thread
    /// must end (asked to stop, or an error retrying cannot fix).
    fn deliver(&mut self, w: &Spooled) -> bool {
        loop {
            if self.stopping() {
                return false;
            }
            let e = match self.write_retrying(&w.rows, &w.positions) {
                Ok(()) => {
                    if self.warned.take().is_some() {
                        tracing::info!(sink = %self.name, "write-behind: the store is writable again");
                    }
                    return true;
                }
                Err(e) => e,
            };
            let e = if e.rejects_rows()
                && self.dead_letters.is_some()
                && w.rows.iter().any(|r| !r.is_empty())
            {
                match self.isolate(&w.rows, &w.positions, e) {
                    Ok(()) => return true,
                    Err(e) => e,
                }
            } else {
                e
            };
            if self.stopping() {
                return false;
            }
            if !e.retryable {
                self.fail(e);
                return false;
            }
            self.hold(&e);
        }
    }

    /// Writes `batch`, retrying transient failures with backoff while the attempts and
    /// the retry budget last (as [`SinkDriver`](super::SinkDriver) does).
    fn write_retrying(
        &mut self,
        batch: &[Arc<WindowRows>],
        positions: &[SinkPosition],
    ) -> Result<(), SinkError> {
        self.budget.deposit(1, Instant::now());
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            if let Err(open) = self.breaker.try_call(Instant::now()) {
                self.breaker_gauge();
                return Err(SinkError::transient(open.to_string()));
            }
            let started = Instant::now();
            let result = lock(&self.inner).write_at(batch, positions);
            let outcome = match &result {
                Err(e) if !e.rejects_rows() => Outcome::Failure,
                _ => Outcome::Success,
            };
            self.breaker
                .record(outcome, started.elapsed(), Instant::now());
            self.breaker_gauge();
            let e = match result {
                Ok(()) => {
                    self.shared.state().last_error = None;
                    return Ok(());
                }
                Err(e) => e,
            };
            if !e.rejects_rows() {
                self.shared.state().last_error = Some(e.message.clone());
            }
            if !e.retryable || self.stopping() {
                return Err(e);
            }
            if attempt >= self.settings.max_attempts.max(1) {
                return Err(SinkError {
                    message: format!("{} (after {attempt} attempts)", e.message),
                    ..e
                });
            }
            if !self.budget.try_withdraw(1, Instant::now()) {
                return Err(SinkError {
                    message: format!(
                        "{} (after {attempt} attempts; the retry budget is spent)",
                        e.message
                    ),
                    ..e
                });
            }
            tracing::debug!(sink = %self.name, attempt, error = %e, "write-behind: store write failed; retrying");
            let delay = self.backoff.delay(attempt - 1);
            self.sleep(delay);
        }
    }

    fn breaker_gauge(&self) {
        metrics::gauge!("lungfish_breaker_state", "component" => format!("write-behind:{}", self.name))
            .set(self.breaker.state(Instant::now()).as_gauge());
    }

    /// Waits until the breaker lets a probe through (or a pause passes, if it has not
    /// opened), or a stop.
    fn hold(&mut self, last: &SinkError) {
        if self
            .warned
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(30))
        {
            let spooled = self.shared.state().spooled_bytes;
            tracing::warn!(
                sink = %self.name,
                spooled_bytes = spooled,
                error = %last,
                "write-behind: the store is failing; its rows wait in the spool while it is probed"
            );
            self.warned = Some(Instant::now());
        }
        let started = Instant::now();
        let pause = self.backoff.delay(self.settings.max_attempts);
        while !self.stopping() {
            let now = Instant::now();
            match self.breaker.state(now) {
                BreakerState::Open { until } => {
                    std::thread::sleep(
                        until
                            .saturating_duration_since(now)
                            .clamp(Duration::from_millis(1), Duration::from_millis(50)),
                    );
                }
                _ if started.elapsed() >= pause => return,
                _ => std::thread::sleep(Duration::from_millis(10).min(pause)),
            }
        }
    }

    /// Finds the rows of `batch` the store refuses by writing halves (the others are
    /// written), sends them to the dead-letter queue durably
    /// ([`isolate_refused`]), then records `positions`.
    fn isolate(
        &mut self,
        batch: &[Arc<WindowRows>],
        positions: &[SinkPosition],
        first: SinkError,
    ) -> Result<(), SinkError> {
        let dead_letters = self.dead_letters.clone().expect("checked by the caller");
        let name = self.name.clone();
        isolate_refused(&name, batch, first, &dead_letters, |part| {
            self.write_retrying(part, &[])
        })?;
        if positions.is_empty() {
            Ok(())
        } else {
            self.write_retrying(&[], positions)
        }
    }

    /// Records that the store has `w`: commits the spool offset after it and lets
    /// retention delete what the store has.
    fn commit(&mut self, w: &Spooled) {
        let rows: u64 = w.rows.iter().map(|r| r.len() as u64).sum();
        metrics::counter!("lungfish_write_behind_rows_total", "sink" => self.name.clone())
            .increment(rows);
        if let Err(e) = self.log.commit(
            CONSUMER,
            &[OffsetCommit {
                partition: 0,
                offset: w.next_offset,
                metadata: b"",
            }],
        ) {
            tracing::warn!(
                sink = %self.name,
                error = %e,
                "write-behind: committing the spool offset failed; after a restart these rows are written again (upserts: harmless)"
            );
        }
        let bytes = {
            let mut s = self.shared.state();
            s.written = s.written.max(w.next_offset);
            s.spooled_bytes = s.spooled_bytes.saturating_sub(w.bytes);
            s.rows_written += rows;
            s.spooled_bytes
        };
        self.shared.changed.notify_all();
        self.shared.gauge(bytes);
        if self.log.stats(0).is_ok_and(|s| s.segments > 1)
            && let Err(e) = self.log.apply_retention()
        {
            tracing::warn!(sink = %self.name, error = %e, "write-behind: spool retention failed");
        }
    }

    /// Stops the thread on an error retrying cannot fix.
    fn fail(&self, e: SinkError) {
        tracing::error!(
            sink = %self.name,
            error = %e,
            spool = %self.shared.spool_dir.display(),
            "write-behind: the background writer stopped; the rows not yet written stay in the spool"
        );
        self.shared.state().failed = Some(e);
        self.shared.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AggFunc, AggregateSpec};

    fn schema() -> Arc<RowSchema> {
        let aggs = [
            AggregateSpec::count(),
            AggregateSpec::new(AggFunc::Sum, Some("value")),
            AggregateSpec::new(AggFunc::Max, Some("value")),
        ];
        Arc::new(RowSchema::new(&aggs, &["value".into()]))
    }

    /// Row by row, bit for bit (NaN != NaN as numbers).
    fn assert_same(a: &WindowRows, b: &WindowRows) {
        assert_eq!(a.len(), b.len());
        let columns = a.schema().columns().len();
        for i in 0..a.len() {
            assert_eq!(a.window_start(i), b.window_start(i), "row {i}");
            assert_eq!(a.window_end(i), b.window_end(i), "row {i}");
            assert_eq!(a.key(i), b.key(i), "row {i}");
            for c in 0..columns {
                assert_eq!(
                    a.value(i, c).to_bits(),
                    b.value(i, c).to_bits(),
                    "row {i} column {c}"
                );
            }
        }
    }

    fn edge_rows() -> WindowRows {
        let mut rows = WindowRows::new(schema());
        let nan_payload = f64::from_bits(0x7ff8_0000_dead_beef);
        rows.push(i64::MIN, i64::MAX, "", &[0.0, -0.0, f64::NAN]);
        rows.push(-1, 0, "é ✓ 𝄞", &[1.0, f64::INFINITY, f64::NEG_INFINITY]);
        rows.push(
            0,
            60_000,
            "\0\"quoted\"\n",
            &[u32::MAX as f64, nan_payload, -f64::NAN],
        );
        rows.push(
            1_767_225_600_000,
            1_767_225_660_000,
            &"k".repeat(70_000),
            &[2.0, f64::MIN_POSITIVE, 5e-324],
        );
        rows.push(7, 8, "last", &[f64::MAX, f64::MIN, f64::EPSILON]);
        rows
    }

    #[test]
    fn a_record_round_trips_bit_for_bit_with_edge_values() {
        let schema = schema();
        let tag = schema_tag(&schema);
        let rows = edge_rows();
        let positions = [
            SinkPosition {
                partition: 0,
                through: 0,
                watermark: i64::MIN,
            },
            SinkPosition {
                partition: u32::MAX,
                through: u64::MAX,
                watermark: i64::MAX,
            },
        ];
        let mut out = Vec::new();
        encode_record(
            &mut out,
            tag,
            3,
            Some((&rows, 0..rows.len())),
            &positions,
            true,
        );
        assert_eq!(out[0], VERSION);
        let part = decode_record(&out, &schema, tag).unwrap();
        assert!(part.last);
        assert_eq!(part.positions, positions);
        assert_same(&part.rows.unwrap(), &rows);

        // A sub-range, not last, without positions.
        let mut out = Vec::new();
        encode_record(&mut out, tag, 3, Some((&rows, 1..3)), &[], false);
        let part = decode_record(&out, &schema, tag).unwrap();
        assert!(!part.last);
        assert!(part.positions.is_empty());
        let decoded = part.rows.unwrap();
        assert_eq!(decoded.len(), 2);
        assert_eq!(decoded.key(0), "é ✓ 𝄞");
        assert_eq!(decoded.value(1, 1).to_bits(), 0x7ff8_0000_dead_beef);

        // Positions only (the driver's final write).
        let mut out = Vec::new();
        encode_record(&mut out, tag, 3, None, &positions[..1], true);
        let part = decode_record(&out, &schema, tag).unwrap();
        assert!(part.last && part.rows.is_none());
        assert_eq!(part.positions, positions[..1]);
    }

    #[test]
    fn a_large_write_is_cut_into_batches_that_decode_to_the_same_rows() {
        let schema = schema();
        let tag = schema_tag(&schema);
        let mut a = WindowRows::new(schema.clone());
        for i in 0..500 {
            a.push(i, i + 10, &format!("key-{i:026}"), &[i as f64, 0.5, -1.0]);
        }
        let b = edge_rows();
        let batch = [
            Arc::new(a),
            Arc::new(WindowRows::new(schema.clone())),
            Arc::new(b),
        ];
        let positions = [SinkPosition {
            partition: 3,
            through: 99,
            watermark: 1234,
        }];
        // The edge rows hold a 70,000-byte key: batches of 128 KiB.
        let max_batch = 128 << 10;
        let batches = encode_write("t", tag, 3, max_batch, &batch, &positions).unwrap();
        let mut decoded = WindowRows::new(schema.clone());
        let mut parts = Vec::new();
        for builder in &batches {
            assert!(builder.encoded_len() <= max_batch);
            for (_, record) in builder.records() {
                parts.push(decode_record(record, &schema, tag).unwrap());
            }
        }
        assert!(parts.len() >= 2, "{} records", parts.len());
        let last = parts.len() - 1;
        for (i, part) in parts.iter().enumerate() {
            assert_eq!(part.last, i == last);
            assert_eq!(part.positions.is_empty(), i != last);
            let rows = part.rows.as_ref().unwrap();
            let mut values = [0.0; 3];
            for r in 0..rows.len() {
                for (c, v) in values.iter_mut().enumerate() {
                    *v = rows.value(r, c);
                }
                decoded.push(
                    rows.window_start(r),
                    rows.window_end(r),
                    rows.key(r),
                    &values,
                );
            }
        }
        let mut expected = WindowRows::new(schema.clone());
        for rows in &batch {
            let mut values = [0.0; 3];
            for r in 0..rows.len() {
                for (c, v) in values.iter_mut().enumerate() {
                    *v = rows.value(r, c);
                }
                expected.push(
                    rows.window_start(r),
                    rows.window_end(r),
                    rows.key(r),
                    &values,
                );
            }
        }
        assert_same(&decoded, &expected);

        // Small batches: many of them, same rows.
        let small = [batch[0].clone()];
        let batches = encode_write("t", tag, 3, 4096, &small, &positions).unwrap();
        assert!(batches.len() > 5, "{} batches", batches.len());
        let rows: usize = batches
            .iter()
            .flat_map(|b| b.records())
            .map(|(_, r)| {
                decode_record(r, &schema, tag)
                    .unwrap()
                    .rows
                    .map_or(0, |r| r.len())
            })
            .sum();
        assert_eq!(rows, 500);

        // A row that can never fit is refused as a row, not as a stalled store.
        let err = encode_write("t", tag, 3, 4096, &batch, &positions).unwrap_err();
        assert!(
            err.rejects_rows() && err.message.contains("does not fit"),
            "{err}"
        );

        // Nothing but positions: one record.
        let batches = encode_write("t", tag, 3, 4096, &[], &positions).unwrap();
        assert_eq!(batches.len(), 1);
        assert_eq!(batches[0].len(), 1);
    }

    #[test]
    fn damaged_or_foreign_records_are_refused_not_misread() {
        let schema = schema();
        let tag = schema_tag(&schema);
        let mut rows = WindowRows::new(schema.clone());
        rows.push(0, 10, "ab", &[1.0, 2.0, 3.0]);
        let mut good = Vec::new();
        encode_record(&mut good, tag, 3, Some((&rows, 0..1)), &[], true);
        assert!(decode_record(&good, &schema, tag).is_ok());

        for cut in 0..good.len() {
            assert!(
                decode_record(&good[..cut], &schema, tag).is_err(),
                "cut at {cut}"
            );
        }
        let mut longer = good.clone();
        longer.push(0);
        assert!(
            decode_record(&longer, &schema, tag)
                .unwrap_err()
                .contains("after the end")
        );

        let mut version = good.clone();
        version[0] = 2;
        assert!(
            decode_record(&version, &schema, tag)
                .unwrap_err()
                .contains("version 2")
        );

        let other = Arc::new(RowSchema::new(
            &[
                AggregateSpec::count(),
                AggregateSpec::new(AggFunc::Sum, Some("value")),
                AggregateSpec::new(AggFunc::Min, Some("value")),
            ],
            &["value".into()],
        ));
        let other_tag = schema_tag(&other);
        assert_ne!(other_tag, tag, "same shape, other names: another tag");
        assert!(
            decode_record(&good, &other, other_tag)
                .unwrap_err()
                .contains("another shape")
        );

        // WindowRows keys are UTF-8 (`push` takes a &str); a record whose key bytes are
        // not is damaged and refused.
        let key_at = good.len() - 3 * 8 - 2;
        assert_eq!(&good[key_at..key_at + 2], b"ab");
        let mut bad_utf8 = good.clone();
        bad_utf8[key_at] = 0xff;
        assert!(
            decode_record(&bad_utf8, &schema, tag)
                .unwrap_err()
                .contains("UTF-8")
        );

        let mut bad_offsets = good.clone();
        let ends_at = key_at - 4;
        bad_offsets[ends_at..key_at].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_record(&bad_offsets, &schema, tag).is_err());
    }
}
