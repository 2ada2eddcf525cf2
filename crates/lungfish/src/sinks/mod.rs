//! Sinks: where window rows land.
//!
//! Every sink has the same contract ([`Sink`]): it receives whole batches of rows in
//! order, writes each batch durably (one transaction where the store has them), and
//! only then returns. The [`SinkDriver`] in front of it collects rows from the shards
//! into batches of up to `batch_max_rows` rows or `batch_max_age` age, retries a
//! transiently failed write with exponential backoff and full jitter while its attempts
//! (`max_attempts`) and the sink's retry budget ([`crate::retry::RetryBudget`]: a share
//! of its recent writes) last, and acknowledges the checkpoint markers that followed the
//! rows only after their batch is written. When the store refuses rows
//! ([`SinkError::rejected_rows`]: a constraint, a type), the batch is split in halves
//! until the refused rows are alone; the others are written and the refused ones go to
//! the dead-letter queue (stage `sink:NAME`, kind `rejected_row`, the row as JSON), durably
//! before the markers are acknowledged. Every write goes through the sink's circuit
//! breaker ([`crate::breaker`]): when retries are spent and the store still fails with
//! an error worth retrying, the driver *holds* the batch and probes the store as the
//! breaker allows (open 0.5 s, doubling to 5 s, so a healed store is written to again
//! within about 5 s) until it heals; meanwhile the bounded channels fill, consumers stop
//! reading, and the input waits in the log on disk:
//! nothing is dropped. A stop while holding ends the run without committing past the
//! held rows. A permanent error (a schema mismatch) stops the pipeline.
//!
//! Rows are complete windows keyed by (window start, key); a sink that writes them
//! idempotently (SQLite's upsert) makes replays after a crash change nothing.

#[cfg(feature = "clickhouse")]
pub mod clickhouse;
pub mod file;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod sqlite;
pub mod stdout;
pub mod write_behind;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::breaker::{BreakerSettings, CircuitBreaker, Outcome};
use crate::checkpoint::Checkpoint;
use crate::control::Control;
use crate::dlq::{DeadLetter, DeadLetters, now_ms};
use crate::error::Domain;
use crate::retry::{Backoff, BudgetSettings, RetryBudget};
use crate::shard::SinkMsg;
use crate::window::{ColumnKind, RowSchema, WindowRows};

/// A failed sink operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SinkError {
    /// What went wrong.
    pub message: String,
    /// True if trying the same write again may succeed (a busy or unreachable store);
    /// false if it cannot (a schema mismatch, rows the store refuses).
    pub retryable: bool,
    /// Where the failure comes from: [`Domain::Input`] means the store refused some
    /// rows of the batch (a constraint, a type): the driver splits the batch to find
    /// them, writes the rest and sends those rows to the dead-letter queue.
    pub domain: Domain,
}

impl SinkError {
    /// An error worth retrying (the store is busy, unreachable, slow).
    pub fn transient(message: impl Into<String>) -> Self {
        SinkError {
            message: message.into(),
            retryable: true,
            domain: Domain::External,
        }
    }

    /// An error that retrying will not fix and that is not about particular rows.
    pub fn permanent(message: impl Into<String>) -> Self {
        SinkError {
            message: message.into(),
            retryable: false,
            domain: Domain::External,
        }
    }

    /// The store refused one or more rows of the batch (and wrote none of it).
    pub fn rejected_rows(message: impl Into<String>) -> Self {
        SinkError {
            message: message.into(),
            retryable: false,
            domain: Domain::Input,
        }
    }

    /// True if the store refused rows, not the write as such.
    pub fn rejects_rows(&self) -> bool {
        self.domain == Domain::Input
    }
}

/// How far a partition's input is covered by what a sink has written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SinkPosition {
    /// The log partition.
    pub partition: u32,
    /// Every record before this offset has its effects written.
    pub through: u64,
    /// Every window ending at or before this time (epoch ms) is written.
    pub watermark: i64,
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

    /// Like [`write`](Self::write), also given how far the pipeline's input is covered
    /// once this batch is durable: per log partition, the offset every record before
    /// which has its effects in this batch or earlier ones. A sink with transactions
    /// records them in the same transaction as the rows (see
    /// [`postgres`]). The default ignores them.
    ///
    /// # Errors
    /// As [`write`](Self::write).
    fn write_at(
        &mut self,
        batch: &[Arc<WindowRows>],
        positions: &[SinkPosition],
    ) -> Result<(), SinkError> {
        let _ = positions;
        self.write(batch)
    }

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
    /// Longest wait before a retry: retry `n` waits a random time up to
    /// `min(max_backoff, first_backoff * 2^n)` (full jitter).
    pub first_backoff: Duration,
    /// Cap of the wait before a retry.
    pub max_backoff: Duration,
    /// How many retries the sink may make, as a share of its recent writes.
    pub retry_budget: BudgetSettings,
    /// When the sink is considered down: writes then wait for the breaker's probes.
    pub breaker: BreakerSettings,
    /// When a batch still fails after its attempts (or the budget is spent) with an
    /// error worth retrying: hold it and probe the store under the breaker until it
    /// heals (true: the data waits in the log, nothing is dropped), or stop the
    /// pipeline (false).
    pub hold_when_failing: bool,
}

impl Default for DriverSettings {
    /// 10,000 rows or 100 ms a batch; 5 attempts, backoff from 100 ms up to 5 s, retries
    /// at most 10% of the writes of the last 10 s plus 10 per second; the breaker opens
    /// when half of the last 10 writes (at least 3) failed, for 0.5 s doubling to 5 s;
    /// a failing sink is held, not abandoned.
    fn default() -> Self {
        DriverSettings {
            batch_max_rows: 10_000,
            batch_max_age: Duration::from_millis(100),
            max_attempts: 5,
            first_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            retry_budget: BudgetSettings::default(),
            breaker: BreakerSettings {
                window: 10,
                min_calls: 3,
                failure_ratio: 0.5,
                slow_call: Duration::from_secs(30),
                slow_ratio: 1.0,
                open_for: Duration::from_millis(500),
                max_open_for: Duration::from_secs(5),
                probes: 1,
            },
            hold_when_failing: true,
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
    /// Positions of markers acknowledged without a write, to record with the next one.
    unrecorded: Vec<SinkPosition>,
    first_pending: Option<Instant>,
    written: u64,
    dead_letters: Option<DeadLetters>,
    budget: RetryBudget,
    backoff: Backoff,
    breaker: CircuitBreaker,
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
            unrecorded: Vec::new(),
            first_pending: None,
            written: 0,
            dead_letters: None,
            budget: RetryBudget::new(settings.retry_budget),
            breaker: CircuitBreaker::new(settings.breaker),
            backoff: Backoff::new(
                settings.first_backoff,
                settings.max_backoff,
                crate::sources::generator::mix64(name.len() as u64),
            ),
        }
    }

    /// Sends rows the store refuses (a poison pill) to `dead_letters` instead of failing
    /// the batch: the batch is split in halves until the refused rows are alone; the
    /// others are written. Without it, a refused row stops the pipeline.
    pub fn with_dead_letters(mut self, dead_letters: DeadLetters) -> Self {
        self.dead_letters = Some(dead_letters);
        self
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
                        // Everything before it is already written; its position is
                        // recorded with the next batch (or at the end).
                        merge_position(&mut self.unrecorded, &cp);
                        cp.ack();
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
                    if !self.unrecorded.is_empty() && !self.control.is_aborting() {
                        // The positions of markers that came without rows.
                        let positions = std::mem::take(&mut self.unrecorded);
                        if let Err(e) = self.write_retrying(&[], &positions) {
                            tracing::warn!(sink = %self.name, error = %e, "recording the final input positions failed");
                        }
                    }
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
        let pending = std::mem::take(&mut self.pending);
        let mut positions = std::mem::take(&mut self.unrecorded);
        for m in &self.markers {
            merge_position(&mut positions, m);
        }
        let result = loop {
            match self.write_retrying(&pending, &positions) {
                Err(e) if e.rejects_rows() && self.dead_letters.is_some() => {
                    break self.isolate(&pending, e);
                }
                Err(e) if e.retryable && self.settings.hold_when_failing => {
                    if let Err(stopped) = self.hold(&e) {
                        break Err(stopped);
                    }
                }
                other => break other,
            }
        };
        if let Err(e) = result {
            let message = format!(
                "sink {}: write of {} rows failed: {e}",
                self.name, self.pending_rows
            );
            self.control.abort(message.clone());
            return Err(SinkError { message, ..e });
        }
        crate::telemetry::stage("sink", 0, self.pending_rows as u64);
        crate::telemetry::batch_size("sink", self.pending_rows as u64);
        self.written += self.pending_rows as u64;
        self.control
            .stats
            .rows_written
            .fetch_add(self.pending_rows as u64, Ordering::Relaxed);
        self.pending_rows = 0;
        self.first_pending = None;
        for m in self.markers.drain(..) {
            m.ack();
        }
        Ok(())
    }

    /// Writes `batch`, retrying transient failures with backoff while the attempts and
    /// the retry budget last.
    fn write_retrying(
        &mut self,
        batch: &[Arc<WindowRows>],
        positions: &[SinkPosition],
    ) -> Result<(), SinkError> {
        let rows: u64 = batch.iter().map(|b| b.len() as u64).sum();
        self.budget.deposit(1, Instant::now());
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            if let Err(open) = self.breaker.try_call(Instant::now()) {
                self.breaker_gauge();
                return Err(SinkError::transient(open.to_string()));
            }
            let started = Instant::now();
            let result = self.sink.write_at(batch, positions);
            let outcome = match &result {
                Err(e) if !e.rejects_rows() => Outcome::Failure,
                _ => Outcome::Success,
            };
            self.breaker
                .record(outcome, started.elapsed(), Instant::now());
            self.breaker_gauge();
            let e = match result {
                Ok(()) => {
                    metrics::histogram!("lungfish_sink_write_seconds", "sink" => self.name.clone())
                        .record(started.elapsed().as_secs_f64());
                    metrics::counter!("lungfish_sink_rows_total", "sink" => self.name.clone())
                        .increment(rows);
                    return Ok(());
                }
                Err(e) => e,
            };
            metrics::counter!("lungfish_sink_errors_total", "sink" => self.name.clone())
                .increment(1);
            if !e.retryable || self.control.is_aborting() {
                return Err(e);
            }
            if attempt >= self.settings.max_attempts.max(1) {
                return Err(SinkError {
                    message: format!("{} (after {attempt} attempts)", e.message),
                    ..e
                });
            }
            if !self.budget.try_withdraw(1, Instant::now()) {
                metrics::counter!("lungfish_sink_retry_budget_exhausted_total", "sink" => self.name.clone())
                    .increment(1);
                return Err(SinkError {
                    message: format!(
                        "{} (after {attempt} attempts; the retry budget is spent: too many recent writes failed)",
                        e.message
                    ),
                    ..e
                });
            }
            metrics::counter!("lungfish_sink_retries_total", "sink" => self.name.clone())
                .increment(1);
            tracing::warn!(sink = %self.name, attempt, error = %e, "sink write failed; retrying");
            std::thread::sleep(self.backoff.delay(attempt - 1));
        }
    }

    fn breaker_gauge(&self) {
        metrics::gauge!("lungfish_breaker_state", "component" => format!("sink:{}", self.name))
            .set(self.breaker.state(Instant::now()).as_gauge());
    }

    /// Waits until the breaker lets a probe through (or a pause passes, if it has not
    /// opened). The batch stays pending: its rows wait in the log, nothing is committed
    /// past them.
    ///
    /// # Errors
    /// The pipeline stops or aborts meanwhile.
    fn hold(&mut self, last: &SinkError) -> Result<(), SinkError> {
        let started = Instant::now();
        let mut warned: Option<Instant> = None;
        let pause = self.backoff.delay(self.settings.max_attempts);
        loop {
            if self.control.is_stopping() {
                return Err(SinkError::permanent(format!(
                    "stopped while sink {} was failing ({last}); its {} pending rows were not written, \
                     nothing past them was committed, and they are written on the next run",
                    self.name, self.pending_rows
                )));
            }
            if warned.is_none_or(|t| t.elapsed() >= Duration::from_secs(30)) {
                tracing::warn!(
                    sink = %self.name,
                    rows = self.pending_rows,
                    error = %last,
                    "the sink is failing: holding its batch and probing it; the pipeline's input waits in the log"
                );
                warned = Some(Instant::now());
            }
            let now = Instant::now();
            match self.breaker.state(now) {
                crate::breaker::BreakerState::Open { until } => {
                    std::thread::sleep((until - now).min(Duration::from_millis(100)));
                }
                _ if started.elapsed() >= pause => return Ok(()),
                _ => std::thread::sleep(Duration::from_millis(10).min(pause)),
            }
        }
    }

    /// Finds the rows of `batch` the store refuses by writing halves (the others are
    /// written), and sends those rows to the dead-letter queue, durably.
    fn isolate(&mut self, batch: &[Arc<WindowRows>], first: SinkError) -> Result<(), SinkError> {
        let dead_letters = self.dead_letters.clone().expect("checked by the caller");
        let name = self.name.clone();
        isolate_refused(&name, batch, first, &dead_letters, |part| {
            self.write_retrying(part, &[])
        })
    }
}

/// Bisection of a batch the store refused because of some of its rows: writes halves
/// with `write` until each refused row stands alone (every other row is written), then
/// appends the refused rows to `dead_letters` (stage `sink:NAME`, kind `rejected_row`,
/// the row as JSON) and waits until they are durable.
///
/// # Errors
/// A write fails for another reason than refused rows (returned as is), or the
/// dead-letter append fails (permanent: the rows must not be dropped silently).
pub(crate) fn isolate_refused(
    name: &str,
    batch: &[Arc<WindowRows>],
    first: SinkError,
    dead_letters: &DeadLetters,
    mut write: impl FnMut(&[Arc<WindowRows>]) -> Result<(), SinkError>,
) -> Result<(), SinkError> {
    let schema = batch[0].schema().clone();
    let columns = schema.columns().len();
    let mut all = WindowRows::new(schema.clone());
    let mut values = vec![0.0; columns];
    for b in batch {
        for i in 0..b.len() {
            for (c, v) in values.iter_mut().enumerate() {
                *v = b.value(i, c);
            }
            all.push(b.window_start(i), b.window_end(i), b.key(i), &values);
        }
    }
    let slice = |lo: usize, hi: usize| {
        let mut part = WindowRows::new(schema.clone());
        let mut values = vec![0.0; columns];
        for i in lo..hi {
            for (c, v) in values.iter_mut().enumerate() {
                *v = all.value(i, c);
            }
            part.push(all.window_start(i), all.window_end(i), all.key(i), &values);
        }
        part
    };
    // Ranges known to hold a refused row, with the store's reason.
    let mut failing = vec![(0usize, all.len(), first)];
    let mut refused: Vec<(usize, SinkError)> = Vec::new();
    while let Some((lo, hi, e)) = failing.pop() {
        if hi - lo <= 1 {
            refused.push((lo, e));
            continue;
        }
        let mid = lo + (hi - lo) / 2;
        for (a, b) in [(lo, mid), (mid, hi)] {
            match write(&[Arc::new(slice(a, b))]) {
                Ok(()) => {}
                Err(e) if e.rejects_rows() => failing.push((a, b, e)),
                Err(e) => return Err(e),
            }
        }
    }
    refused.sort_by_key(|(i, _)| *i);
    let stage = format!("sink:{name}");
    let time_ms = now_ms();
    let letters: Vec<DeadLetter> = refused
        .iter()
        .map(|(i, e)| {
            let mut payload = Vec::new();
            write_json_row(&all, *i, &mut payload);
            DeadLetter::new(
                stage.clone(),
                "rejected_row",
                e.message.clone(),
                format!(
                    "window {}..{} key {}",
                    all.window_start(*i),
                    all.window_end(*i),
                    all.key(*i)
                ),
                payload,
            )
            .failed_at(time_ms)
        })
        .collect();
    metrics::counter!("lungfish_events_rejected_total", "stage" => stage, "kind" => "rejected_row")
        .increment(letters.len() as u64);
    tracing::warn!(sink = %name, rows = letters.len(), "rows refused by the store went to the dead-letter queue");
    dead_letters
        .append_all(&letters)
        .and_then(|t| t.map_or(Ok(()), |t| t.wait(Duration::from_secs(30))))
        .map_err(|e| {
            SinkError::permanent(format!(
                "writing refused rows to the dead-letter queue failed: {e}"
            ))
        })
}

/// Folds `marker`'s position into `positions` (the furthest per partition).
fn merge_position(positions: &mut Vec<SinkPosition>, marker: &Checkpoint) {
    match positions
        .iter_mut()
        .find(|p| p.partition == marker.partition)
    {
        Some(p) => {
            p.through = p.through.max(marker.through);
            p.watermark = p.watermark.max(marker.emitted_through);
        }
        None => positions.push(SinkPosition {
            partition: marker.partition,
            through: marker.through,
            watermark: marker.emitted_through,
        }),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AggFunc, AggregateSpec};

    /// Fails its first `failures` writes with a transient error (fault injection).
    struct Flaky {
        failures: u32,
        writes: Arc<std::sync::atomic::AtomicU32>,
    }

    impl Sink for Flaky {
        fn open(&mut self, _: &RowSchema) -> Result<(), SinkError> {
            Ok(())
        }
        fn write(&mut self, _: &[Arc<WindowRows>]) -> Result<(), SinkError> {
            let n = self.writes.fetch_add(1, Ordering::SeqCst);
            if n < self.failures {
                Err(SinkError::transient("store busy"))
            } else {
                Ok(())
            }
        }
        fn describe(&self) -> String {
            "flaky".into()
        }
    }

    fn run(failures: u32, budget: BudgetSettings) -> (Result<(), SinkError>, u32) {
        let writes = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let sink = Flaky {
            failures,
            writes: writes.clone(),
        };
        let settings = DriverSettings {
            first_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(4),
            retry_budget: budget,
            hold_when_failing: false,
            // Retries only: no breaker in the way.
            breaker: BreakerSettings {
                window: 1000,
                min_calls: 1000,
                ..DriverSettings::default().breaker
            },
            ..DriverSettings::default()
        };
        let control = Arc::new(Control::new());
        let driver = SinkDriver::new("flaky", Box::new(sink), settings, control);
        let schema = Arc::new(RowSchema::new(
            &[AggregateSpec {
                func: AggFunc::Count,
                field: None,
                column: "count".into(),
            }],
            &[],
        ));
        let mut rows = WindowRows::new(schema);
        rows.push(0, 1000, "k", &[1.0]);
        let (tx, rx) = crossbeam_channel::bounded(1);
        tx.send(SinkMsg::Rows(Arc::new(rows))).unwrap();
        drop(tx);
        let result = driver.run(rx).map(|_| ());
        (result, writes.load(Ordering::SeqCst))
    }

    #[test]
    fn transient_failures_are_retried_inside_the_budget_and_attempts() {
        let (result, writes) = run(3, BudgetSettings::default());
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(writes, 4, "three failures, then the write");
        let (result, writes) = run(100, BudgetSettings::default());
        let e = result.unwrap_err();
        assert_eq!(writes, 5, "max_attempts");
        assert!(e.message.contains("after 5 attempts"), "{e}");
    }

    #[test]
    fn a_spent_retry_budget_stops_retries() {
        let none = BudgetSettings {
            ratio: 0.0,
            min_per_second: 0.1,
            window: Duration::from_secs(10),
        };
        // One retry in the window (0.1/s x 10 s), then none.
        let (result, writes) = run(3, none);
        let e = result.unwrap_err();
        assert_eq!(writes, 2);
        assert!(e.message.contains("retry budget is spent"), "{e}");
    }

    /// Fails every write until `heals_at` (fault injection), counting them.
    struct Down {
        heals_at: Instant,
        writes: Arc<std::sync::atomic::AtomicU32>,
    }

    impl Sink for Down {
        fn open(&mut self, _: &RowSchema) -> Result<(), SinkError> {
            Ok(())
        }
        fn write(&mut self, _: &[Arc<WindowRows>]) -> Result<(), SinkError> {
            self.writes.fetch_add(1, Ordering::SeqCst);
            if Instant::now() < self.heals_at {
                Err(SinkError::transient("connection refused"))
            } else {
                Ok(())
            }
        }
        fn describe(&self) -> String {
            "down".into()
        }
    }

    #[test]
    fn a_failing_sink_is_held_under_the_breaker_until_it_heals() {
        let writes = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let sink = Down {
            heals_at: Instant::now() + Duration::from_millis(600),
            writes: writes.clone(),
        };
        let mut settings = DriverSettings {
            first_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
            ..DriverSettings::default()
        };
        settings.breaker.open_for = Duration::from_millis(40);
        settings.breaker.max_open_for = Duration::from_millis(160);
        let control = Arc::new(Control::new());
        let driver = SinkDriver::new("down", Box::new(sink), settings, control.clone());
        let schema = Arc::new(RowSchema::new(
            &[AggregateSpec {
                func: AggFunc::Count,
                field: None,
                column: "count".into(),
            }],
            &[],
        ));
        let mut rows = WindowRows::new(schema);
        rows.push(0, 1000, "k", &[1.0]);
        let (tx, rx) = crossbeam_channel::bounded(1);
        tx.send(SinkMsg::Rows(Arc::new(rows))).unwrap();
        drop(tx);
        let started = Instant::now();
        assert!(driver.run(rx).is_ok(), "{:?}", control.error());
        assert!(started.elapsed() >= Duration::from_millis(600));
        assert!(control.error().is_none());
        // While down, the breaker let a few probes through, not a storm of retries.
        let n = writes.load(Ordering::SeqCst);
        assert!((4..=20).contains(&n), "{n} writes during a 600 ms outage");
    }
}
