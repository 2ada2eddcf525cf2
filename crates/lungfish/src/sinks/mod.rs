//! Sinks: where window rows land.
//!
//! Every sink has the same contract ([`Sink`]): it receives whole batches of rows in
//! order, writes each batch durably (one transaction where the store has them), and
//! only then returns. The [`SinkDriver`] in front of it collects rows from the shards
//! into batches of up to `batch_max_rows` rows or `batch_max_age` age, retries a failed
//! write a bounded number of times with exponential backoff, and acknowledges the
//! checkpoint markers that followed the rows only after their batch is written. A sink
//! that keeps failing stops the pipeline: nothing past the failure is committed, so
//! nothing is lost.
//!
//! Rows are complete windows keyed by (window start, key); a sink that writes them
//! idempotently (SQLite's upsert) makes replays after a crash change nothing.

pub mod file;
pub mod sqlite;
pub mod stdout;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::checkpoint::Checkpoint;
use crate::control::Control;
use crate::shard::SinkMsg;
use crate::window::{ColumnKind, RowSchema, WindowRows};

/// A failed sink operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SinkError {
    /// What went wrong.
    pub message: String,
    /// True if trying the same write again may succeed (a busy or unreachable store);
    /// false if it cannot (a schema mismatch).
    pub retryable: bool,
}

impl SinkError {
    /// An error worth retrying.
    pub fn transient(message: impl Into<String>) -> Self {
        SinkError {
            message: message.into(),
            retryable: true,
        }
    }

    /// An error that retrying will not fix.
    pub fn permanent(message: impl Into<String>) -> Self {
        SinkError {
            message: message.into(),
            retryable: false,
        }
    }
}

/// A destination for window rows.
pub trait Sink: Send {
    /// Prepares the store for rows of `schema` (creates the table if missing, checks an
    /// existing one). Called once, before any write.
    ///
    /// # Errors
    /// The store cannot be opened or has an incompatible shape.
    fn open(&mut self, schema: &RowSchema) -> Result<(), SinkError>;

    /// Writes `batch` durably; returns only when it is. Called with batches in order.
    /// A failed write must leave nothing half-written that a retry would duplicate.
    ///
    /// # Errors
    /// The write failed; [`SinkError::retryable`] says if trying again may help.
    fn write(&mut self, batch: &[Arc<WindowRows>]) -> Result<(), SinkError>;

    /// Where the rows go, for summaries: `table windows in results.db`.
    fn describe(&self) -> String;

    /// A command that shows the results, if there is one.
    fn query_hint(&self) -> Option<String> {
        None
    }

    /// How many rows the store holds now, if the sink can tell.
    fn stored_rows(&mut self) -> Option<u64> {
        None
    }
}

/// Settings of a [`SinkDriver`].
#[derive(Debug, Clone, Copy)]
pub struct DriverSettings {
    /// A batch is written once it has this many rows ...
    pub batch_max_rows: usize,
    /// ... or its first rows are this old.
    pub batch_max_age: Duration,
    /// Attempts per batch before giving up (at least 1).
    pub max_attempts: u32,
    /// Wait before the first retry; doubles each time, with jitter.
    pub first_backoff: Duration,
}

impl Default for DriverSettings {
    fn default() -> Self {
        DriverSettings {
            batch_max_rows: 10_000,
            batch_max_age: Duration::from_millis(100),
            max_attempts: 5,
            first_backoff: Duration::from_millis(100),
        }
    }
}

/// Batches rows for one sink, writes them, and acknowledges markers after the write.
pub struct SinkDriver {
    name: String,
    sink: Box<dyn Sink>,
    settings: DriverSettings,
    control: Arc<Control>,
    pending: Vec<Arc<WindowRows>>,
    pending_rows: usize,
    markers: Vec<Arc<Checkpoint>>,
    first_pending: Option<Instant>,
    written: u64,
}

impl std::fmt::Debug for SinkDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkDriver")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl SinkDriver {
    /// A driver for `sink`, already opened.
    pub fn new(
        name: &str,
        sink: Box<dyn Sink>,
        settings: DriverSettings,
        control: Arc<Control>,
    ) -> Self {
        SinkDriver {
            name: name.to_owned(),
            sink,
            settings,
            control,
            pending: Vec::new(),
            pending_rows: 0,
            markers: Vec::new(),
            first_pending: None,
            written: 0,
        }
    }

    /// Runs until every sender is gone (then writes what is pending) or an abort.
    /// Returns the sink, for a final summary.
    ///
    /// # Errors
    /// A write failed after every attempt; the pipeline is aborted with it.
    pub fn run(mut self, rx: Receiver<SinkMsg>) -> Result<Box<dyn Sink>, SinkError> {
        loop {
            let timeout = match self.first_pending {
                Some(t) => self.settings.batch_max_age.saturating_sub(t.elapsed()),
                None => Duration::from_millis(100),
            };
            match rx.recv_timeout(timeout) {
                Ok(SinkMsg::Rows(rows)) => {
                    if rows.is_empty() {
                        continue;
                    }
                    self.first_pending.get_or_insert_with(Instant::now);
                    crate::telemetry::stage("sink", rows.len() as u64, 0);
                    self.pending_rows += rows.len();
                    self.pending.push(rows);
                    if self.pending_rows >= self.settings.batch_max_rows {
                        self.flush()?;
                    }
                }
                Ok(SinkMsg::Marker(cp)) => {
                    if self.pending.is_empty() {
                        cp.ack(); // everything before it is already written
                    } else {
                        self.markers.push(cp);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    if self.control.is_aborting() {
                        return Ok(self.sink);
                    }
                    if self
                        .first_pending
                        .is_some_and(|t| t.elapsed() >= self.settings.batch_max_age)
                    {
                        self.flush()?;
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.flush()?;
                    return Ok(self.sink);
                }
            }
        }
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        if self.pending.is_empty() {
            for m in self.markers.drain(..) {
                m.ack();
            }
            return Ok(());
        }
        let mut attempt = 0u32;
        let mut backoff = self.settings.first_backoff;
        loop {
            attempt += 1;
            let started = Instant::now();
            match self.sink.write(&self.pending) {
                Ok(()) => {
                    let elapsed = started.elapsed();
                    metrics::histogram!("lungfish_sink_write_seconds", "sink" => self.name.clone())
                        .record(elapsed.as_secs_f64());
                    crate::telemetry::stage("sink", 0, self.pending_rows as u64);
                    crate::telemetry::batch_size("sink", self.pending_rows as u64);
                    metrics::counter!("lungfish_sink_rows_total", "sink" => self.name.clone())
                        .increment(self.pending_rows as u64);
                    break;
                }
                Err(e) => {
                    metrics::counter!("lungfish_sink_errors_total", "sink" => self.name.clone())
                        .increment(1);
                    if !e.retryable
                        || attempt >= self.settings.max_attempts.max(1)
                        || self.control.is_aborting()
                    {
                        let msg = format!(
                            "sink {}: write of {} rows failed after {attempt} attempt(s): {e}",
                            self.name, self.pending_rows
                        );
                        self.control.abort(msg.clone());
                        return Err(SinkError::permanent(msg));
                    }
                    tracing::warn!(sink = %self.name, attempt, error = %e, "sink write failed; retrying");
                    // Full jitter: sleep a random share of the backoff.
                    let jitter =
                        (crate::sources::generator::mix64(started.elapsed().as_nanos() as u64)
                            % 1000) as f64
                            / 1000.0;
                    std::thread::sleep(backoff.mul_f64(0.5 + jitter / 2.0));
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        self.written += self.pending_rows as u64;
        self.control
            .stats
            .rows_written
            .fetch_add(self.pending_rows as u64, Ordering::Relaxed);
        self.pending.clear();
        self.pending_rows = 0;
        self.first_pending = None;
        for m in self.markers.drain(..) {
            m.ack();
        }
        Ok(())
    }
}

/// Writes row `i` of `rows` as one JSON object (no newline) into `out`.
pub fn write_json_row(rows: &WindowRows, i: usize, out: &mut Vec<u8>) {
    let mut itoa = itoa::Buffer::new();
    out.extend_from_slice(b"{\"window_start\":");
    out.extend_from_slice(itoa.format(rows.window_start(i)).as_bytes());
    out.extend_from_slice(b",\"window_end\":");
    out.extend_from_slice(itoa.format(rows.window_end(i)).as_bytes());
    out.extend_from_slice(b",\"key\":");
    serde_json::to_writer(&mut *out, rows.key(i)).expect("writing to a Vec cannot fail");
    for (c, (name, kind)) in rows.schema().columns().iter().enumerate() {
        out.push(b',');
        serde_json::to_writer(&mut *out, name).expect("writing to a Vec cannot fail");
        out.push(b':');
        let v = rows.value(i, c);
        match kind {
            ColumnKind::Integer => out.extend_from_slice(itoa.format(v as i64).as_bytes()),
            ColumnKind::Real => match serde_json::Number::from_f64(v) {
                Some(n) => out.extend_from_slice(n.to_string().as_bytes()),
                None => out.extend_from_slice(b"null"),
            },
        }
    }
    out.push(b'}');
}
