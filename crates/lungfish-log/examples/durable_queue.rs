//! The log on its own as a durable local queue that survives a restart.
//!
//! What it shows:
//!
//! * A **producer** thread appends batches of records to two partitions and counts a
//!   batch *acknowledged* only once its [`DurableTicket`](lungfish_log::DurableTicket)
//!   resolved. It writes as an idempotent [`Producer`]: after a restart it asks the log
//!   where it got to ([`Log::producer_seq`]) and continues there, so a batch that was in
//!   flight at the restart is neither lost nor written twice.
//! * A **consumer** thread reads each partition from its committed offset, processes
//!   the records and then commits the offset under a consumer name. It registers (commits
//!   offset 0) before anything is written, so retention never deletes what it has not
//!   read. Processing goes to a downstream store that is idempotent by (partition,
//!   sequence number): records processed but not committed before a restart are
//!   delivered again afterwards, and the store recognises them.
//! * A **restart** in the middle: the consumer stops after processing a chunk it did not
//!   get to commit, the producer stops mid-stream with one batch in flight, and every
//!   handle on the log is dropped while acknowledged records are still unconsumed. The
//!   log is reopened from the same directory; a new producer finishes the stream and a
//!   new consumer resumes from the committed offsets and finishes.
//!
//! The program checks its own outcome: every acknowledged record was consumed, in order
//! per partition; the new consumer started exactly at the committed offset and delivered
//! no offset twice; only the processed-but-uncommitted records were delivered again, and
//! the store applied none of them twice. It prints a summary line starting with
//! `durable_queue: ok` and exits 0, or prints `durable_queue: FAILED: ...` and exits 1.
//! Every wait has a timeout and every channel is bounded.
//!
//! Run it with `cargo run -p lungfish-log --example durable_queue [DIR]`; without `DIR`
//! it uses a temporary directory. `DIR` must not exist yet, or be empty.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use lungfish_log::{
    BatchBuilder, FsyncPolicy, Log, LogConfig, OffsetCommit, Producer, Retention, WhenFull,
};

const PARTITIONS: u32 = 2;
const BATCHES_PER_PARTITION: u64 = 40;
const RECORDS_PER_BATCH: u64 = 10;
const RECORDS_PER_PARTITION: u64 = BATCHES_PER_PARTITION * RECORDS_PER_BATCH;
/// The consumer's name: its committed offsets live in `DIR/consumers/queue-worker.offsets`.
const CONSUMER: &str = "queue-worker";
/// The producer's identity, stable across restarts.
const PRODUCER_ID: u64 = 7;
/// Before the restart the producer pauses after this many batches (over all partitions),
/// and the consumer stops once it has processed this many records: so the restart lands
/// at the same point of the stream in every run, with acknowledged records unconsumed.
const PRODUCE_BEFORE_RESTART: u64 = 40;
const CONSUME_BEFORE_RESTART: u64 = 150;
/// How long a phase may take before the example gives up (it takes milliseconds).
const PHASE_TIMEOUT: Duration = Duration::from_secs(20);
const WAIT: Duration = Duration::from_secs(5);

fn main() -> ExitCode {
    match run() {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("durable_queue: FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

type Result<T> = std::result::Result<T, String>;

fn config() -> LogConfig {
    LogConfig {
        partitions: PARTITIONS,
        // Small segments (the smallest allowed), so the run rolls several and retention
        // has whole ones to free.
        segment_bytes: 4 * 1024,
        max_batch_bytes: 4 * 1024,
        // A ticket resolves once its batch was fsynced: safe to acknowledge.
        fsync: FsyncPolicy::Always,
        // A queue keeps little of what was consumed, and never deletes what was not:
        // past `max_bytes` the producer would be refused instead.
        retention: Retention {
            target_bytes: Some(4 * 1024),
            max_age: None,
            max_bytes: Some(1024 * 1024),
            when_full: WhenFull::Refuse,
        },
    }
}

/// One record: partition, sequence number within the partition, and a payload.
fn encode(partition: u32, seq: u64, out: &mut Vec<u8>) {
    out.extend_from_slice(&partition.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(format!("order #{seq}").as_bytes());
}

fn decode(record: &[u8]) -> Result<(u32, u64)> {
    if record.len() < 12 {
        return Err(format!("a record of {} bytes is too short", record.len()));
    }
    let partition = u32::from_le_bytes(record[..4].try_into().unwrap());
    let seq = u64::from_le_bytes(record[4..12].try_into().unwrap());
    if record[12..] != *format!("order #{seq}").as_bytes() {
        return Err(format!("record {partition}:{seq} has a wrong payload"));
    }
    Ok((partition, seq))
}

/// The downstream system the consumer writes to. It outlives the restart (it stands for
/// a database, say) and is idempotent: it applies each (partition, sequence number) once,
/// in order, and recognises a record delivered again.
#[derive(Debug, Default)]
struct Store {
    /// Per partition, the sequence number it expects next.
    next: Vec<u64>,
    applied: u64,
    skipped_again: u64,
}

impl Store {
    fn new() -> Self {
        Store {
            next: vec![0; PARTITIONS as usize],
            ..Store::default()
        }
    }

    fn process(&mut self, partition: u32, offset: u64, record: &[u8]) -> Result<()> {
        let (p, seq) = decode(record)?;
        if p != partition || seq != offset {
            return Err(format!(
                "partition {partition} offset {offset} holds record {p}:{seq}"
            ));
        }
        let next = &mut self.next[p as usize];
        if seq < *next {
            self.skipped_again += 1; // delivered again after the restart: already applied
        } else if seq == *next {
            *next += 1;
            self.applied += 1;
        } else {
            return Err(format!(
                "partition {p}: record {seq} arrived before record {next}"
            ));
        }
        Ok(())
    }
}

/// A batch the producer counts as acknowledged: its ticket resolved.
#[derive(Debug, Clone, Copy)]
struct Ack {
    partition: u32,
    batch: u64,
}

#[derive(Debug, Default)]
struct ProducerRun {
    /// Batches the log already held when the producer started (from a run before).
    found_in_log: Vec<(u32, u64)>,
    /// A batch appended when the restart came, whose ticket was not waited for.
    in_flight: Option<(u32, u64)>,
}

/// Sends on a bounded channel, giving up after `timeout`.
fn send_within<T>(tx: &SyncSender<T>, mut msg: T, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        match tx.try_send(msg) {
            Ok(()) => return Ok(()),
            Err(TrySendError::Disconnected(_)) => return Err("the receiver is gone".into()),
            Err(TrySendError::Full(m)) if Instant::now() < deadline => {
                msg = m;
                thread::sleep(Duration::from_millis(1));
            }
            Err(TrySendError::Full(_)) => return Err("the receiver stopped taking messages".into()),
        }
    }
}

/// Appends the planned batches round-robin over the partitions, continuing where the log
/// says this producer got to. With `pause_after`, waits once it has appended that many
/// batches until `restart` is set, then appends one more batch and stops without
/// waiting for it: that batch is in flight at the restart.
fn produce(
    log: &Log,
    acks: &SyncSender<Ack>,
    pause_after: Option<u64>,
    restart: &AtomicBool,
) -> Result<ProducerRun> {
    let mut run = ProducerRun::default();
    // The producer's sequence number is its batch count in the partition.
    let mut next: Vec<u64> = (0..PARTITIONS)
        .map(|p| log.producer_seq(p, PRODUCER_ID).unwrap_or(0))
        .collect();
    for (p, &n) in next.iter().enumerate() {
        run.found_in_log.extend((0..n).map(|b| (p as u32, b)));
    }
    let mut batch = BatchBuilder::new();
    let deadline = Instant::now() + PHASE_TIMEOUT;
    loop {
        let p = (0..PARTITIONS)
            .min_by_key(|&p| next[p as usize])
            .unwrap_or(0);
        let b = next[p as usize];
        if b == BATCHES_PER_PARTITION {
            return Ok(run);
        }
        let paused = pause_after.is_some_and(|n| next.iter().sum::<u64>() >= n);
        while paused && !restart.load(Ordering::SeqCst) {
            if Instant::now() > deadline {
                return Err("the producer waited for the restart in vain".into());
            }
            thread::sleep(Duration::from_millis(1));
        }
        if Instant::now() > deadline {
            return Err("the producer ran out of time".into());
        }
        batch.clear();
        for seq in b * RECORDS_PER_BATCH..(b + 1) * RECORDS_PER_BATCH {
            batch.push_with(|out| encode(p, seq, out));
        }
        let producer = Some(Producer {
            id: PRODUCER_ID,
            seq: b + 1,
        });
        let appended = log
            .append(p, &mut batch, producer)
            .map_err(|e| format!("append to partition {p}: {e}"))?;
        if appended.duplicate {
            return Err(format!("partition {p} batch {b} was already in the log"));
        }
        if paused {
            // The restart comes before this batch is acknowledged.
            run.in_flight = Some((p, b));
            return Ok(run);
        }
        appended
            .ticket
            .wait(WAIT)
            .map_err(|e| format!("partition {p} batch {b} did not become durable: {e}"))?;
        send_within(
            acks,
            Ack {
                partition: p,
                batch: b,
            },
            WAIT,
        )?;
        next[p as usize] += 1;
    }
}

#[derive(Debug, Default)]
struct ConsumerRun {
    /// Per partition, where the consumer started: its committed offset.
    started_at: Vec<u64>,
    /// Per partition, the offset it committed last.
    committed: Vec<u64>,
    processed: u64,
    /// Records processed after the last commit (delivered again after a restart).
    uncommitted: u64,
}

/// Reads every partition from the committed offsets, processes into `store`, commits
/// after each chunk. With a `budget`, stops after processing that many records, before
/// committing the last chunk; without, stops when everything planned is committed.
fn consume(log: &Log, store: &Mutex<Store>, budget: Option<u64>) -> Result<ConsumerRun> {
    let committed = log.committed(CONSUMER).map_err(|e| e.to_string())?;
    let started_at: Vec<u64> = committed
        .iter()
        .map(|c| c.as_ref().map_or(0, |c| c.offset))
        .collect();
    let mut readers = (0..PARTITIONS)
        .map(|p| log.reader(p, started_at[p as usize]))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let mut run = ConsumerRun {
        committed: started_at.clone(),
        started_at,
        ..ConsumerRun::default()
    };
    // Each offset must come exactly once, in order: where this consumer run expects the
    // next record of each partition.
    let mut expect = run.started_at.clone();
    let deadline = Instant::now() + PHASE_TIMEOUT;
    loop {
        if budget.is_none() && run.committed.iter().all(|&c| c == RECORDS_PER_PARTITION) {
            return Ok(run);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the consumer ran out of time at offsets {:?}",
                run.committed
            ));
        }
        let mut progressed = false;
        for (p, reader) in (0..PARTITIONS).zip(&mut readers) {
            let chunk = reader
                .read(2 * 1024)
                .map_err(|e| format!("read partition {p}: {e}"))?;
            if chunk.is_empty() {
                continue;
            }
            {
                let mut store = store.lock().map_err(|_| "the store is poisoned")?;
                for (offset, record) in chunk.records() {
                    let want = &mut expect[p as usize];
                    if offset != *want {
                        return Err(format!(
                            "partition {p}: offset {offset} delivered where {want} was due"
                        ));
                    }
                    *want += 1;
                    store.process(p, offset, record)?;
                    run.processed += 1;
                    run.uncommitted += 1;
                }
            }
            let next = chunk.next_offset();
            if budget.is_some_and(|b| run.processed >= b) {
                // The restart comes after processing this chunk, before committing it.
                return Ok(run);
            }
            log.commit(
                CONSUMER,
                &[OffsetCommit {
                    partition: p,
                    offset: next,
                    metadata: b"",
                }],
            )
            .map_err(|e| format!("commit partition {p} at {next}: {e}"))?;
            run.committed[p as usize] = next;
            run.uncommitted = 0;
            progressed = true;
        }
        if !progressed {
            for reader in &readers {
                reader.wait(Duration::from_millis(2));
            }
        }
    }
}

/// A worker thread that reports its result on a bounded channel, so it can be waited
/// for with a timeout.
fn spawn<T: Send + 'static>(
    name: &str,
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<Receiver<Result<T>>> {
    let (tx, rx) = sync_channel(1);
    thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            // Capacity 1 and one message: this never blocks.
            let _ = tx.send(work());
        })
        .map_err(|e| format!("spawn {name}: {e}"))?;
    Ok(rx)
}

/// The main thread's side of a phase: takes the producer's acknowledgements and waits
/// for the workers' results.
struct Phase<'a> {
    acks: &'a Receiver<Ack>,
    acked: &'a mut BTreeSet<(u32, u64)>,
}

impl Phase<'_> {
    /// Takes the acknowledgements that arrive within `wait`.
    fn drain(&mut self, wait: Duration) {
        match self.acks.recv_timeout(wait) {
            Ok(ack) => {
                self.acked.insert((ack.partition, ack.batch));
                while let Ok(ack) = self.acks.try_recv() {
                    self.acked.insert((ack.partition, ack.batch));
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            // The producer is done and its sender gone: nothing more will come.
            Err(RecvTimeoutError::Disconnected) => thread::sleep(wait),
        }
    }

    /// Waits for a worker's result, taking acknowledgements meanwhile (the producer
    /// blocks when nobody takes them).
    fn finish<T>(&mut self, done: &Receiver<Result<T>>, deadline: Instant, who: &str) -> Result<T> {
        loop {
            match done.try_recv() {
                Ok(result) => return result.map_err(|e| format!("{who}: {e}")),
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    return Err(format!("{who} panicked"));
                }
                Err(std::sync::mpsc::TryRecvError::Empty) => {}
            }
            if Instant::now() > deadline {
                return Err(format!("{who} did not finish in {PHASE_TIMEOUT:?}"));
            }
            self.drain(Duration::from_millis(5));
        }
    }
}

fn run() -> Result<String> {
    let temp;
    let dir = match std::env::args_os().nth(1) {
        Some(arg) => {
            let dir = Path::new(&arg).to_path_buf();
            if dir.exists()
                && std::fs::read_dir(&dir)
                    .map_err(|e| format!("{}: {e}", dir.display()))?
                    .next()
                    .is_some()
            {
                return Err(format!("{} is not empty", dir.display()));
            }
            dir
        }
        None => {
            temp = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
            temp.path().to_path_buf()
        }
    };
    let store = Arc::new(Mutex::new(Store::new()));
    let mut acked = BTreeSet::new();

    // Before the restart.
    let log = Log::open(&dir, config()).map_err(|e| format!("open: {e}"))?;
    // Register the consumer before anything is written: retention only waits for
    // consumers that have committed.
    let zero: Vec<OffsetCommit> = (0..PARTITIONS)
        .map(|partition| OffsetCommit {
            partition,
            offset: 0,
            metadata: b"",
        })
        .collect();
    log.commit(CONSUMER, &zero)
        .map_err(|e| format!("register the consumer: {e}"))?;
    let restart = Arc::new(AtomicBool::new(false));
    let (ack_tx, ack_rx) = sync_channel::<Ack>(16);
    let producer = {
        let (log, acks, restart) = (log.clone(), ack_tx.clone(), restart.clone());
        spawn("producer", move || {
            produce(&log, &acks, Some(PRODUCE_BEFORE_RESTART), &restart)
        })?
    };
    let consumer = {
        let (log, store) = (log.clone(), store.clone());
        spawn("consumer", move || {
            consume(&log, &store, Some(CONSUME_BEFORE_RESTART))
        })?
    };
    let deadline = Instant::now() + PHASE_TIMEOUT;
    let mut phase = Phase {
        acks: &ack_rx,
        acked: &mut acked,
    };
    let before = phase.finish(&consumer, deadline, "consumer before the restart")?;
    while (phase.acked.len() as u64) < PRODUCE_BEFORE_RESTART {
        if Instant::now() > deadline {
            return Err("the producer did not get far enough before the restart".into());
        }
        phase.drain(Duration::from_millis(5));
    }
    restart.store(true, Ordering::SeqCst);
    let produced = phase.finish(&producer, deadline, "producer before the restart")?;
    let acked_at_restart = phase.acked.len() as u64 * RECORDS_PER_BATCH;
    let committed_at_restart: u64 = before.committed.iter().sum();
    // Everything is dropped: the workers are done and their handles gone; this is the
    // last one.
    drop(log);

    // After the restart: the same directory, new handles, new workers.
    let log = Log::open(&dir, config()).map_err(|e| format!("reopen: {e}"))?;
    let truncated: u64 = log.recovery().iter().map(|r| r.truncated_bytes).sum();
    let producer = {
        let (log, acks, restart) = (log.clone(), ack_tx, Arc::new(AtomicBool::new(false)));
        spawn("producer", move || produce(&log, &acks, None, &restart))?
    };
    let consumer = {
        let (log, store) = (log.clone(), store.clone());
        spawn("consumer", move || consume(&log, &store, None))?
    };
    let deadline = Instant::now() + PHASE_TIMEOUT;
    let mut phase = Phase {
        acks: &ack_rx,
        acked: &mut acked,
    };
    let resumed = phase.finish(&producer, deadline, "producer after the restart")?;
    let after = phase.finish(&consumer, deadline, "consumer after the restart")?;

    // The checks.
    let mut problems = Vec::new();
    if acked_at_restart <= before.processed {
        problems.push(format!(
            "the restart did not leave acknowledged records unconsumed \
             ({acked_at_restart} acknowledged, {} processed)",
            before.processed
        ));
    }
    if produced.in_flight.is_none() {
        problems.push("no batch was in flight at the restart".into());
    }
    // A batch the log held at the restart counts as acknowledged then: after a reopen,
    // everything in the log is durable.
    let mut acknowledged = acked.clone();
    acknowledged.extend(resumed.found_in_log.iter().copied());
    let planned = u64::from(PARTITIONS) * BATCHES_PER_PARTITION;
    if acknowledged.len() as u64 != planned {
        problems.push(format!(
            "{} of {planned} batches acknowledged",
            acknowledged.len()
        ));
    }
    if let Some(b) = produced.in_flight
        && !resumed.found_in_log.contains(&b)
        && !acked.contains(&b)
    {
        problems.push(format!(
            "the batch in flight at the restart, {b:?}, was lost"
        ));
    }
    if after.started_at != before.committed {
        problems.push(format!(
            "the consumer resumed at {:?}, not at the committed offsets {:?}",
            after.started_at, before.committed
        ));
    }
    let store = store.lock().map_err(|_| "the store is poisoned")?;
    let all = u64::from(PARTITIONS) * RECORDS_PER_PARTITION;
    if store.applied != all || store.next.iter().any(|&n| n != RECORDS_PER_PARTITION) {
        problems.push(format!(
            "the store applied {} records (next per partition {:?}), not {all}",
            store.applied, store.next
        ));
    }
    if store.skipped_again != before.uncommitted {
        problems.push(format!(
            "{} records were delivered again, but {} were processed and not committed",
            store.skipped_again, before.uncommitted
        ));
    }
    let committed = log.committed(CONSUMER).map_err(|e| e.to_string())?;
    if committed
        .iter()
        .any(|c| c.as_ref().map(|c| c.offset) != Some(RECORDS_PER_PARTITION))
    {
        problems.push(format!("final committed offsets {committed:?}"));
    }
    let freed: usize = log
        .apply_retention()
        .map_err(|e| format!("retention: {e}"))?
        .iter()
        .map(|r| r.deleted_segments)
        .sum::<usize>();
    log.close().map_err(|e| format!("close: {e}"))?;
    if !problems.is_empty() {
        return Err(problems.join("; "));
    }
    Ok(format!(
        "durable_queue: ok: {all} records acknowledged and consumed in order across a restart \
         (at the restart: {acked_at_restart} acknowledged, {committed_at_restart} committed, \
         {} processed but not committed and delivered again, {} batch in flight; \
         recovery truncated {truncated} bytes; retention freed {freed} segments at the end)",
        before.uncommitted,
        u8::from(produced.in_flight.is_some()),
    ))
}
