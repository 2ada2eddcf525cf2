//! Sources: where events come from, and how they get into the log exactly once.
//!
//! A source is a [`ChunkSource`]: it cuts its input into chunks of whole lines, each
//! line with a growing *position*. [`run_source`] drives any of them the same way:
//!
//! 1. It asks the log, for every partition, the last position this source's producer
//!    appended there, and the dead-letter queue the same; it seeks the source to the
//!    smallest of them.
//! 2. Chunks go to the [`IngestPool`] (parsing on every core); results come back in
//!    input order.
//! 3. For each chunk, rejected lines go to the dead-letter queue and each partition gets
//!    one batch (possibly empty), all tagged with the source's producer id and the
//!    chunk's end position. A line is sent to a partition only if its position is past
//!    that partition's last one, so after a crash nothing is skipped or repeated.
//!
//! The source stops at the end of its input, or between chunks when the pipeline stops.

pub mod file;
pub mod generator;
#[cfg(feature = "http")]
pub mod http;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::{RecvTimeoutError, bounded};
use lungfish_log::{DurableTicket, Log, LogError, Producer};

use crate::control::Control;
use crate::dlq::{DeadLetter, DeadLetters, now_ms};
use crate::ingest::{Done, IngestPool, Ingested, RawChunk};

/// Why a source failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// The source's settings cannot work (a missing file, a bad pattern).
    #[error("{0}")]
    Config(String),
    /// Reading the input failed.
    #[error("{0}")]
    Io(String),
}

/// Input cut into chunks of whole lines.
pub trait ChunkSource: Send {
    /// Positions the source so the next chunk starts at `position`: 0, or the end
    /// position of a chunk this source produced before.
    ///
    /// # Errors
    /// The position cannot be reached (for instance the file got shorter).
    fn seek(&mut self, position: u64) -> Result<(), SourceError>;

    /// The next chunk, reusing `buf`'s allocation; `None` at the end of the input.
    ///
    /// # Errors
    /// Reading failed.
    fn next_chunk(&mut self, buf: Vec<u8>) -> Result<Option<RawChunk>, SourceError>;

    /// Events per second to pace to, if limited.
    fn rate(&self) -> Option<u64> {
        None
    }

    /// A short description for summaries.
    fn describe(&self) -> String;
}

/// The producer id of the source called `name`: stable, never 0.
pub fn producer_id(name: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(format!("source:{name}").as_bytes()) | 1
}

/// What a source did in this run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceReport {
    /// The source's name.
    pub name: String,
    /// Where it read from.
    pub description: String,
    /// The position it resumed from (0 on a first run).
    pub resumed_at: u64,
    /// Events accepted into the log in this run.
    pub accepted: u64,
    /// Lines rejected in this run.
    pub rejected: u64,
    /// Input bytes read in this run.
    pub bytes: u64,
    /// True if the source reached the end of its input (now or in an earlier run).
    pub finished: bool,
}

/// Errors of a running source.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The source itself failed.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// Appending to the log or the dead-letter queue failed.
    #[error(transparent)]
    Log(#[from] LogError),
}

/// Everything a running source needs.
#[derive(Debug, Clone)]
pub struct SourceContext {
    /// The pipeline's log.
    pub log: Log,
    /// The pipeline's dead-letter queue.
    pub dead_letters: DeadLetters,
    /// The ingest workers.
    pub pool: Arc<IngestPool>,
    /// Stop/abort flags and counters.
    pub control: Arc<Control>,
}

/// Runs `source` (named `name`) to the end of its input or until the pipeline stops.
///
/// # Errors
/// The source failed or the log refused an append. What was appended before stays.
pub fn run_source(
    name: &str,
    mut source: Box<dyn ChunkSource>,
    ctx: &SourceContext,
) -> Result<SourceReport, RunError> {
    let pid = producer_id(name);
    let partitions = ctx.log.partitions();
    let skip: Arc<[u64]> = (0..partitions)
        .map(|p| ctx.log.producer_seq(p, pid).unwrap_or(0))
        .collect();
    let skip_rejects = ctx.dead_letters.producer_seq(pid).unwrap_or(0);
    let start = skip
        .iter()
        .copied()
        .chain([skip_rejects])
        .min()
        .unwrap_or(0);
    source.seek(start)?;
    let mut report = SourceReport {
        name: name.to_owned(),
        description: source.describe(),
        resumed_at: start,
        ..SourceReport::default()
    };
    let stage = format!("source:{name}");
    let (reply, results) = bounded::<Done>(64);
    // Chunks being parsed or waiting to be appended: enough to keep every worker busy,
    // few enough to bound memory.
    let max_inflight = 2 * crate::pipeline::cores() + 1;
    let mut inflight = 0usize;
    let mut next_submit = 0u64;
    let mut next_write = 0u64;
    let mut ready: BTreeMap<u64, Done> = BTreeMap::new();
    let mut spare_bufs: Vec<Vec<u8>> = Vec::new();
    let mut spare_outs: Vec<Ingested> = Vec::new();
    let mut eof = false;
    let mut tickets: Vec<Option<DurableTicket>> = vec![None; partitions as usize + 1];
    let pace_start = Instant::now();
    let mut produced_lines = 0u64;
    let rate = source.rate();

    loop {
        while !eof && inflight < max_inflight && !ctx.control.is_stopping() {
            if let Some(rate) = rate {
                // Pace: the events produced so far are due at `produced / rate`.
                let due = pace_start + Duration::from_secs_f64(produced_lines as f64 / rate as f64);
                let now = Instant::now();
                if due > now {
                    if inflight > 0 {
                        break; // handle results meanwhile
                    }
                    std::thread::sleep((due - now).min(Duration::from_millis(50)));
                    continue;
                }
            }
            let buf = spare_bufs.pop().unwrap_or_default();
            match source.next_chunk(buf)? {
                None => eof = true,
                Some(chunk) => {
                    // Lines are counted only to pace a rate-limited source.
                    if rate.is_some() {
                        produced_lines += match chunk.positions {
                            crate::ingest::Positions::Lines { first } => chunk.end - first,
                            crate::ingest::Positions::Bytes { .. } => {
                                memchr::memchr_iter(b'\n', &chunk.data).count() as u64
                            }
                        };
                    }
                    let mut job = Some((chunk, spare_outs.pop().unwrap_or_default()));
                    while let Some((chunk, out)) = job.take() {
                        if let Err(back) = ctx.pool.submit(
                            next_submit,
                            chunk,
                            skip.clone(),
                            skip_rejects,
                            out,
                            reply.clone(),
                            Duration::from_millis(100),
                        ) {
                            if ctx.control.is_aborting() {
                                return Ok(report);
                            }
                            job = Some(*back);
                        }
                    }
                    next_submit += 1;
                    inflight += 1;
                }
            }
        }
        if inflight == 0 {
            break;
        }
        match results.recv_timeout(Duration::from_millis(100)) {
            Ok(done) => {
                ready.insert(done.seq, done);
            }
            Err(RecvTimeoutError::Timeout) => {
                if ctx.control.is_aborting() {
                    return Ok(report);
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => unreachable!("we hold a sender"),
        }
        while let Some(mut done) = ready.remove(&next_write) {
            let written = write_chunk(
                ctx,
                pid,
                &stage,
                &skip,
                skip_rejects,
                &mut done.out,
                &mut tickets,
                &mut report,
            )?;
            if !written {
                // Stopped while the log was full: the log's producer positions say
                // where to resume.
                return Ok(report);
            }
            report.bytes += done.out.input_bytes;
            spare_bufs.push(done.chunk.data);
            spare_outs.push(done.out);
            next_write += 1;
            inflight -= 1;
        }
    }
    // Our last appends are durable before we say the input is in.
    for t in tickets.iter().flatten() {
        while let Err(e) = t.wait(Duration::from_millis(200)) {
            match e {
                LogError::Timeout(_) if !ctx.control.is_aborting() => continue,
                LogError::Timeout(_) => return Ok(report),
                other => return Err(other.into()),
            }
        }
    }
    report.finished = eof;
    Ok(report)
}

/// Appends a chunk's rejects and batches. Returns false if the pipeline stopped while
/// the log was full (nothing is lost: the chunk is read again on the next run).
#[allow(clippy::too_many_arguments)]
fn write_chunk(
    ctx: &SourceContext,
    pid: u64,
    stage: &str,
    skip: &[u64],
    skip_rejects: u64,
    out: &mut Ingested,
    tickets: &mut [Option<DurableTicket>],
    report: &mut SourceReport,
) -> Result<bool, LogError> {
    let rejected_lines = out.rejects.len() as u64;
    let producer = Some(Producer {
        id: pid,
        seq: out.end,
    });
    let stats = &ctx.control.stats;
    if out.end > skip_rejects {
        let time_ms = now_ms();
        let entries: Vec<(u64, DeadLetter)> = out
            .rejects
            .drain(..)
            .map(|r| {
                metrics::counter!("lungfish_events_rejected_total", "stage" => stage.to_owned(), "kind" => r.kind)
                    .increment(1);
                let entry = DeadLetter::new(stage, r.kind, r.reason, r.location, r.payload)
                    .failed_at(time_ms);
                (r.position, entry)
            })
            .collect();
        report.rejected += entries.len() as u64;
        stats
            .rejected
            .fetch_add(entries.len() as u64, Ordering::Relaxed);
        // In batches of bounded size, however many lines the chunk rejected. A retry
        // after a full disk writes nothing twice (producer positions).
        let appended = waiting_for_space(ctx, || {
            ctx.dead_letters
                .append_positioned(&entries, pid, Some(out.end))
        })?;
        match appended {
            None => return Ok(false),
            Some(Some(t)) => tickets[skip.len()] = Some(t),
            Some(None) => {}
        }
    }
    for (p, batches) in out.batches.iter_mut().enumerate() {
        for (batch, seq) in &mut batches.sealed {
            if *seq > skip[p] {
                let producer = Some(Producer { id: pid, seq: *seq });
                let Some(a) = waiting_for_space(ctx, || ctx.log.append(p as u32, batch, producer))?
                else {
                    return Ok(false);
                };
                tickets[p] = Some(a.ticket);
            }
        }
        if out.end > skip[p] {
            let open = &mut batches.open;
            let Some(a) = waiting_for_space(ctx, || ctx.log.append(p as u32, open, producer))?
            else {
                return Ok(false);
            };
            tickets[p] = Some(a.ticket);
        }
    }
    crate::telemetry::stage("source", out.accepted + rejected_lines, out.accepted);
    crate::telemetry::batch_size("source", out.accepted + rejected_lines);
    report.accepted += out.accepted;
    stats.events_in.fetch_add(out.accepted, Ordering::Relaxed);
    metrics::counter!("lungfish_events_in_total", "source" => report.name.clone())
        .increment(out.accepted);
    metrics::counter!("lungfish_source_bytes_total", "source" => report.name.clone())
        .increment(out.input_bytes);
    Ok(true)
}

/// Runs `append` until it succeeds. While the log is full (its size limit, or the disk)
/// it waits and tries again, so a full log holds the source back instead of failing the
/// pipeline; `None` if the pipeline stops meanwhile.
fn waiting_for_space<T>(
    ctx: &SourceContext,
    mut append: impl FnMut() -> Result<T, LogError>,
) -> Result<Option<T>, LogError> {
    let mut last_warning: Option<Instant> = None;
    loop {
        match append() {
            Ok(v) => return Ok(Some(v)),
            Err(e) if matches!(e, LogError::Full { .. }) || e.is_disk_full() => {
                if ctx.control.is_stopping() {
                    return Ok(None);
                }
                if last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(30)) {
                    tracing::warn!(
                        error = %e,
                        "the log is full: the source waits for consumers to catch up. A consumer commits at its \
                         state checkpoints (every [pipeline] checkpoint_interval), or, with them off, only up to its \
                         oldest open window; if the consumers have read everything (lungfish_consumer_lag is 0), \
                         raise log.max_size"
                    );
                    last_warning = Some(Instant::now());
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => return Err(e),
        }
    }
}
