//! `lungfish bench log`: the log's append and read throughput against the disk's own
//! sequential write bandwidth, side by side in one run.
//!
//! * **Floor**: the same number of bytes written by a plain loop of large (1 MiB)
//!   `write`s to one file, with one `fdatasync` at the end (and, for reference, with
//!   an `fdatasync` every 10 ms). Nothing that writes the same bytes durably can be
//!   faster.
//! * **Append**: 100-byte records in batches of 1000, appended by 1 and by 8 producer
//!   threads (producer `i` to partition `i`), each keeping several appends in flight
//!   and waiting for their tickets, under `every 10ms`, `always` and `never`. Reported
//!   in MB/s of log bytes (records with their framing, as written to disk) and events/s,
//!   with the append-to-durable latency (p50, p99, p99.9) and the ratio to the floor.
//! * **Catch-up read**: one consumer reading a backlog (1 GiB by default) from offset 0
//!   in reads of at most 1 MiB, in MB/s and events/s, with the peak resident memory of
//!   the process during the read, and the ratio of read to append throughput.
//!
//! Throughputs are medians of `--runs` runs; latency percentiles are over all runs'
//! appends. The data directory's contents are deleted at the end.

use std::collections::VecDeque;
use std::fs::OpenOptions;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use lungfish::config::units::parse_size;
use lungfish_log::{BatchBuilder, DurableTicket, FsyncPolicy, Log, LogConfig};

use crate::run::{count, peak_memory};

/// Arguments of `lungfish bench log`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Log bytes each append measurement writes per run (records and framing), and the
    /// floor writes the same [default: 512MiB; with --quick 64MiB]
    #[arg(long, value_parser = size)]
    pub bytes: Option<u64>,
    /// Size of the backlog the catch-up read reads [default: 1GiB; with --quick 256MiB]
    #[arg(long, value_parser = size)]
    pub backlog_bytes: Option<u64>,
    /// Runs of each measurement; the median is reported [default: 3; with --quick 1]
    #[arg(long)]
    pub runs: Option<usize>,
    /// Bytes of each record.
    #[arg(long, default_value_t = 100)]
    pub record_bytes: usize,
    /// Records in each appended batch.
    #[arg(long, default_value_t = 1000)]
    pub batch_records: usize,
    /// Appends each producer keeps in flight before it waits for the oldest ticket
    /// (enough that `every 10ms` is limited by the disk, not by this window).
    #[arg(long, default_value_t = 64)]
    pub in_flight: usize,
    /// Producer thread counts to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    pub producers: Vec<usize>,
    /// A quick run: smaller sizes and one run each (explicit options still win).
    #[arg(long)]
    pub quick: bool,
    /// Before the catch-up read, drop the operating system's page cache (needs root;
    /// affects the whole machine) so that the read comes from the disk.
    #[arg(long)]
    pub drop_caches: bool,
    /// Working directory for the data; what the benchmark writes there is deleted at
    /// the end.
    #[arg(long, default_value = "bench-data/log")]
    pub dir: PathBuf,
}

fn size(text: &str) -> Result<u64, String> {
    parse_size(text).map_err(|e| e.to_string())
}

/// The settings after `--quick` and the defaults are applied.
#[derive(Debug, Clone)]
struct Settings {
    bytes: u64,
    backlog_bytes: u64,
    runs: usize,
    record_bytes: usize,
    batch_records: usize,
    in_flight: usize,
    producers: Vec<usize>,
    drop_caches: bool,
    dir: PathBuf,
}

impl Settings {
    fn new(args: &Args) -> anyhow::Result<Settings> {
        let quick = args.quick;
        let s = Settings {
            bytes: args
                .bytes
                .unwrap_or(if quick { 64 << 20 } else { 512 << 20 }),
            backlog_bytes: args
                .backlog_bytes
                .unwrap_or(if quick { 256 << 20 } else { 1 << 30 }),
            runs: args.runs.unwrap_or(if quick { 1 } else { 3 }).max(1),
            record_bytes: args.record_bytes,
            batch_records: args.batch_records,
            in_flight: args.in_flight.max(1),
            producers: args.producers.clone(),
            drop_caches: args.drop_caches,
            dir: args.dir.clone(),
        };
        anyhow::ensure!(s.record_bytes >= 8, "--record-bytes must be at least 8");
        anyhow::ensure!(s.batch_records >= 1, "--batch-records must be at least 1");
        anyhow::ensure!(
            !s.producers.is_empty() && s.producers.iter().all(|&p| (1..=256).contains(&p)),
            "--producers takes counts from 1 to 256"
        );
        anyhow::ensure!(
            s.frame_len() as u64 <= MAX_BATCH_BYTES as u64,
            "a batch of {} bytes is larger than the log's maximum ({} bytes)",
            s.frame_len(),
            MAX_BATCH_BYTES
        );
        Ok(s)
    }

    /// Bytes of one batch frame: header, then a length prefix and the bytes per record.
    fn frame_len(&self) -> usize {
        BATCH_HEADER_BYTES + self.batch_records * (4 + self.record_bytes)
    }

    /// Batches that make about `bytes` of log (at least one per producer).
    fn batches_for(&self, bytes: u64, producers: usize) -> u64 {
        bytes
            .div_ceil(self.frame_len() as u64)
            .max(producers as u64)
    }

    /// The command line that reproduces this run.
    fn command(&self) -> String {
        let producers: Vec<String> = self.producers.iter().map(|p| p.to_string()).collect();
        format!(
            "lungfish bench log --bytes {} --backlog-bytes {} --runs {} --record-bytes {} \
             --batch-records {} --in-flight {} --producers {}{} --dir {}",
            self.bytes,
            self.backlog_bytes,
            self.runs,
            self.record_bytes,
            self.batch_records,
            self.in_flight,
            producers.join(","),
            if self.drop_caches {
                " --drop-caches"
            } else {
                ""
            },
            self.dir.display()
        )
    }
}

/// Size of the fixed batch header (see the crate documentation of `lungfish-log`).
const BATCH_HEADER_BYTES: usize = 52;
const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;
const SEGMENT_BYTES: u64 = 128 * 1024 * 1024;
const READ_BYTES: usize = 1 << 20;
const FLOOR_BUFFER: usize = 1 << 20;
const TICKET_TIMEOUT: Duration = Duration::from_secs(120);

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn mb_per_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / secs / 1e6
}

/// Deletes what the benchmark wrote under the data directory, also on an error.
struct Cleanup {
    paths: Vec<PathBuf>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for p in &self.paths {
            let _ = if p.is_dir() {
                std::fs::remove_dir_all(p)
            } else {
                std::fs::remove_file(p)
            };
        }
    }
}

fn remove(path: &Path) -> anyhow::Result<()> {
    if path.is_dir() {
        std::fs::remove_dir_all(path).with_context(|| format!("remove {}", path.display()))?;
    } else if path.exists() {
        std::fs::remove_file(path).with_context(|| format!("remove {}", path.display()))?;
    }
    Ok(())
}

/// The floor: `bytes` written in 1 MiB buffers, then one `fdatasync` (or, with
/// `sync_every`, one every that often and one at the end). Returns seconds.
fn floor_run(path: &Path, bytes: u64, sync_every: Option<Duration>) -> anyhow::Result<f64> {
    remove(path)?;
    let buf: Vec<u8> = (0..FLOOR_BUFFER).map(|i| (i * 31 % 251) as u8).collect();
    let mut file = OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(path)
        .with_context(|| format!("create {}", path.display()))?;
    let started = Instant::now();
    let mut last_sync = started;
    let mut left = bytes;
    while left > 0 {
        let n = left.min(FLOOR_BUFFER as u64) as usize;
        file.write_all(&buf[..n])?;
        left -= n as u64;
        if let Some(every) = sync_every
            && last_sync.elapsed() >= every
        {
            file.sync_data()?;
            last_sync = Instant::now();
        }
    }
    file.sync_data()?;
    let secs = started.elapsed().as_secs_f64();
    drop(file);
    remove(path)?;
    Ok(secs)
}

/// One append measurement: its duration, the log bytes and events it appended, and the
/// append-to-durable latencies in microseconds.
struct AppendRun {
    secs: f64,
    bytes: u64,
    events: u64,
    latency: Histogram<u64>,
}

fn new_histogram() -> Histogram<u64> {
    // 1 µs to 10 minutes, 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

fn log_config(partitions: u32, fsync: FsyncPolicy) -> LogConfig {
    LogConfig {
        partitions,
        segment_bytes: SEGMENT_BYTES,
        fsync,
        max_batch_bytes: MAX_BATCH_BYTES,
        ..LogConfig::default()
    }
}

/// Fills `batch` with `records` records of `record_bytes` bytes, numbered from `first`.
fn fill_batch(batch: &mut BatchBuilder, first: u64, records: usize, record_bytes: usize) {
    batch.clear();
    for i in 0..records as u64 {
        batch.push_with(|out| {
            let n = first + i;
            out.extend_from_slice(&n.to_le_bytes());
            out.extend(std::iter::repeat_n(n as u8, record_bytes - 8));
        });
    }
}

/// Appends `batches` batches from `producers` threads (producer `i` to partition `i`),
/// each keeping `in_flight` appends in flight, and waits until all are durable.
fn append_run(
    s: &Settings,
    dir: &Path,
    fsync: FsyncPolicy,
    producers: usize,
) -> anyhow::Result<AppendRun> {
    remove(dir)?;
    let log = Log::open(dir, log_config(producers as u32, fsync))
        .with_context(|| format!("open a log in {}", dir.display()))?;
    let batches = s.batches_for(s.bytes, producers);
    let barrier = Arc::new(Barrier::new(producers + 1));
    let handles: Vec<_> = (0..producers)
        .map(|p| {
            let log = log.clone();
            let barrier = barrier.clone();
            let s = s.clone();
            // Spread the batches evenly: the first `batches % producers` take one more.
            let mine =
                batches / producers as u64 + u64::from((p as u64) < batches % producers as u64);
            std::thread::spawn(move || produce(&log, p as u32, mine, &s, &barrier))
        })
        .collect();
    barrier.wait();
    let started = Instant::now();
    let mut latency = new_histogram();
    let mut first_error = None;
    for h in handles {
        match h.join() {
            Ok(Ok(hist)) => latency.add(&hist).expect("histograms of the same bounds"),
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(_) => {
                first_error.get_or_insert(anyhow::anyhow!("a producer thread panicked"));
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    if let Some(e) = first_error {
        return Err(e);
    }
    // Outside the measurement: make `never`'s bytes durable too, so they are not still
    // being written back while the next measurement runs.
    log.close().context("close the log")?;
    drop(log);
    remove(dir)?;
    Ok(AppendRun {
        secs,
        bytes: batches * s.frame_len() as u64,
        events: batches * s.batch_records as u64,
        latency,
    })
}

/// One producer: appends `batches` batches to `partition`, at most `in_flight` waiting
/// for durability at a time; returns the append-to-durable latencies.
fn produce(
    log: &Log,
    partition: u32,
    batches: u64,
    s: &Settings,
    barrier: &Barrier,
) -> anyhow::Result<Histogram<u64>> {
    let mut hist = new_histogram();
    let mut batch = BatchBuilder::with_capacity(s.frame_len());
    let mut pending: VecDeque<(Instant, DurableTicket)> = VecDeque::with_capacity(s.in_flight);
    let done = |appended_at: Instant, hist: &mut Histogram<u64>| {
        hist.saturating_record(appended_at.elapsed().as_micros().max(1) as u64);
    };
    barrier.wait();
    for b in 0..batches {
        fill_batch(
            &mut batch,
            b * s.batch_records as u64,
            s.batch_records,
            s.record_bytes,
        );
        // Collect what became durable meanwhile, then wait if too much is in flight.
        while pending.front().is_some_and(|(_, t)| t.is_durable()) {
            let (at, _) = pending.pop_front().unwrap();
            done(at, &mut hist);
        }
        if pending.len() >= s.in_flight {
            let (at, ticket) = pending.pop_front().unwrap();
            ticket.wait(TICKET_TIMEOUT).context("wait for a ticket")?;
            done(at, &mut hist);
        }
        let at = Instant::now();
        let appended = log.append(partition, &mut batch, None).context("append")?;
        pending.push_back((at, appended.ticket));
    }
    while let Some((at, ticket)) = pending.pop_front() {
        ticket.wait(TICKET_TIMEOUT).context("wait for a ticket")?;
        done(at, &mut hist);
    }
    Ok(hist)
}

/// Writes a backlog of about `s.backlog_bytes` into one partition, made durable.
fn write_backlog(s: &Settings, dir: &Path) -> anyhow::Result<(u64, u64)> {
    remove(dir)?;
    let log = Log::open(dir, log_config(1, FsyncPolicy::Never))
        .with_context(|| format!("open a log in {}", dir.display()))?;
    let batches = s.batches_for(s.backlog_bytes, 1);
    let mut batch = BatchBuilder::with_capacity(s.frame_len());
    for b in 0..batches {
        fill_batch(
            &mut batch,
            b * s.batch_records as u64,
            s.batch_records,
            s.record_bytes,
        );
        log.append(0, &mut batch, None).context("append")?;
    }
    log.sync().context("fsync the backlog")?;
    log.close().context("close the log")?;
    Ok((
        batches * s.frame_len() as u64,
        batches * s.batch_records as u64,
    ))
}

/// One consumer reads partition 0 from offset 0 to the end in reads of at most 1 MiB,
/// touching every record. Returns (seconds, bytes, events).
fn read_run(log: &Log) -> anyhow::Result<(f64, u64, u64)> {
    let started = Instant::now();
    let mut reader = log.reader(0, 0)?;
    let (mut bytes, mut events, mut check) = (0u64, 0u64, 0u64);
    loop {
        let chunk = reader.read(READ_BYTES)?;
        if chunk.is_empty() {
            break;
        }
        bytes += chunk.bytes() as u64;
        for (_, record) in chunk.records() {
            events += 1;
            check = check.wrapping_add(u64::from(record[0]) + record.len() as u64);
        }
    }
    std::hint::black_box(check);
    Ok((started.elapsed().as_secs_f64(), bytes, events))
}

/// Resets this process's peak resident memory (`VmHWM`) to its current RSS, if the
/// kernel allows it (Linux 4.0 and later).
fn reset_peak_memory() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn policy_name(p: FsyncPolicy) -> String {
    match p {
        FsyncPolicy::Always => "always".into(),
        FsyncPolicy::Never => "never".into(),
        FsyncPolicy::Every(d) => format!("every {}ms", d.as_millis()),
    }
}

struct Row {
    policy: FsyncPolicy,
    producers: usize,
    mb_s: f64,
    events_s: f64,
    latency: Histogram<u64>,
}

/// Runs the benchmark and prints the table.
pub fn bench_log(args: Args) -> anyhow::Result<ExitCode> {
    let s = Settings::new(&args)?;
    std::fs::create_dir_all(&s.dir)
        .with_context(|| format!("create the data directory {}", s.dir.display()))?;
    let floor_file = s.dir.join("floor.bin");
    let append_dir = s.dir.join("append");
    let backlog_dir = s.dir.join("backlog");
    let _cleanup = Cleanup {
        paths: vec![floor_file.clone(), append_dir.clone(), backlog_dir.clone()],
    };
    let bar = if std::io::stderr().is_terminal() {
        ProgressBar::new_spinner().with_style(ProgressStyle::with_template(
            "{spinner} {elapsed_precise} {msg}",
        )?)
    } else {
        ProgressBar::hidden()
    };
    bar.enable_steady_tick(Duration::from_millis(100));
    let runs = s.runs;

    // The floor, for the bytes one append measurement writes (with one producer).
    let floor_bytes = s.batches_for(s.bytes, 1) * s.frame_len() as u64;
    let mut floor = Vec::new();
    let mut floor_10ms = Vec::new();
    for r in 1..=runs {
        bar.set_message(format!("floor: write + fdatasync, run {r}/{runs}"));
        floor.push(mb_per_s(
            floor_bytes,
            floor_run(&floor_file, floor_bytes, None)?,
        ));
        bar.set_message(format!(
            "floor: write + fdatasync every 10 ms, run {r}/{runs}"
        ));
        let secs = floor_run(&floor_file, floor_bytes, Some(Duration::from_millis(10)))?;
        floor_10ms.push(mb_per_s(floor_bytes, secs));
    }
    let (floor, floor_10ms) = (median(floor), median(floor_10ms));

    let policies = [
        FsyncPolicy::Every(Duration::from_millis(10)),
        FsyncPolicy::Always,
        FsyncPolicy::Never,
    ];
    let mut rows = Vec::new();
    for policy in policies {
        for &producers in &s.producers {
            let (mut mb_s, mut events_s) = (Vec::new(), Vec::new());
            let mut latency = new_histogram();
            for r in 1..=runs {
                bar.set_message(format!(
                    "append, fsync {}, {producers} producer(s), run {r}/{runs}",
                    policy_name(policy)
                ));
                let run = append_run(&s, &append_dir, policy, producers)?;
                mb_s.push(mb_per_s(run.bytes, run.secs));
                events_s.push(run.events as f64 / run.secs);
                latency.add(&run.latency).expect("same bounds");
            }
            rows.push(Row {
                policy,
                producers,
                mb_s: median(mb_s),
                events_s: median(events_s),
                latency,
            });
        }
    }

    bar.set_message(format!(
        "writing a backlog of {} MiB",
        s.backlog_bytes >> 20
    ));
    let (backlog_bytes, backlog_events) = write_backlog(&s, &backlog_dir)?;
    let cold = s.drop_caches && std::fs::write("/proc/sys/vm/drop_caches", "1").is_ok();
    anyhow::ensure!(
        !s.drop_caches || cold,
        "--drop-caches: cannot write /proc/sys/vm/drop_caches (not root?)"
    );
    let peak_reset = reset_peak_memory();
    bar.set_message("opening the backlog");
    let log = Log::open(&backlog_dir, log_config(1, FsyncPolicy::Never))?;
    let (mut read_mb_s, mut read_events_s) = (Vec::new(), Vec::new());
    for r in 1..=runs {
        bar.set_message(format!("catch-up read, run {r}/{runs}"));
        if r > 1 && cold {
            std::fs::write("/proc/sys/vm/drop_caches", "1")?;
        }
        let (secs, bytes, events) = read_run(&log)?;
        anyhow::ensure!(
            bytes == backlog_bytes && events == backlog_events,
            "read {bytes} bytes and {events} events of a backlog of {backlog_bytes} and {backlog_events}"
        );
        read_mb_s.push(mb_per_s(bytes, secs));
        read_events_s.push(events as f64 / secs);
    }
    let read_peak = peak_memory();
    drop(log);
    bar.finish_and_clear();
    let (read_mb_s, read_events_s) = (median(read_mb_s), median(read_events_s));

    // The table.
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "lungfish bench log: {}-byte records, {} a batch ({} bytes a frame), {} appends ({:.1} MB) in flight a producer, {} MiB of log a run, median of {runs} run(s), {} cores",
        s.record_bytes,
        count(s.batch_records as u64),
        count(s.frame_len() as u64),
        s.in_flight,
        (s.in_flight * s.frame_len()) as f64 / 1e6,
        s.bytes >> 20,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!();
    println!(
        "  {:<40} {:>9} {:>13} {:>9} {:>9} {:>9} {:>8} {:>11}",
        "", "MB/s", "events/s", "p50 ms", "p99 ms", "p99.9 ms", "x floor", "read/append"
    );
    let dash = "-";
    println!(
        "  {:<40} {:>9.1} {:>13} {:>9} {:>9} {:>9} {:>8.2} {:>11}",
        "floor: 1 MiB writes, one fdatasync", floor, dash, dash, dash, dash, 1.0, dash
    );
    println!(
        "  {:<40} {:>9.1} {:>13} {:>9} {:>9} {:>9} {:>8.2} {:>11}",
        "floor: 1 MiB writes, fdatasync / 10 ms",
        floor_10ms,
        dash,
        dash,
        dash,
        dash,
        floor_10ms / floor,
        dash
    );
    for row in &rows {
        let label = format!(
            "append, fsync {}, {} producer{}{}",
            policy_name(row.policy),
            row.producers,
            if row.producers == 1 { "" } else { "s" },
            if row.policy == FsyncPolicy::Never {
                " (*)"
            } else {
                ""
            }
        );
        println!(
            "  {:<40} {:>9.1} {:>13} {:>9.2} {:>9.2} {:>9.2} {:>8.2} {:>11.2}",
            label,
            row.mb_s,
            count(row.events_s as u64),
            ms(&row.latency, 0.5),
            ms(&row.latency, 0.99),
            ms(&row.latency, 0.999),
            row.mb_s / floor,
            read_mb_s / row.mb_s
        );
    }
    println!(
        "  {:<40} {:>9.1} {:>13} {:>9} {:>9} {:>9} {:>8.2} {:>11}",
        "catch-up read, 1 consumer, 1 MiB reads",
        read_mb_s,
        count(read_events_s as u64),
        dash,
        dash,
        dash,
        read_mb_s / floor,
        dash
    );
    println!();
    println!(
        "  catch-up read: a backlog of {} MiB ({} events) in one partition, {}; peak RSS {}",
        backlog_bytes >> 20,
        count(backlog_events),
        if cold {
            "page cache dropped before each run (read from disk)"
        } else {
            "page cache warm (use --drop-caches as root to read from disk)"
        },
        match read_peak {
            Some(b) if peak_reset => format!("during the read {} MiB", b >> 20),
            Some(b) => format!("of the whole run {} MiB", b >> 20),
            None => "unknown".into(),
        }
    );
    println!(
        "  MB = 10^6 bytes of log frames (records + 4-byte length + {BATCH_HEADER_BYTES}-byte batch header); \
         latency = append call to durable ticket; read/append = catch-up read MB/s / that row's MB/s"
    );
    println!(
        "  latency includes the wait behind the producer's own appends in flight: with W MB in flight at T MB/s, at least W/T"
    );
    println!("  (*) never: acknowledged before any fsync, durable against a process crash only");
    println!("  floor bytes per run: {floor_bytes}; producer i appends to partition i");
    println!("  command: {}", s.command());
    Ok(ExitCode::SUCCESS)
}
