//! Crash-point enumeration: a workload runs once over a recording [`SimStorage`] with the
//! real log; then, for every prefix of the operation trace and every fault mode, the
//! file system is crashed there, the log is reopened on what survived, and checked:
//!
//! * opening never fails;
//! * every batch acknowledged before the crash point is read back, in order, exactly
//!   once, with its exact bytes; nothing is read that was never appended; offsets are
//!   contiguous (see [`sim::oracle::check_partition`]);
//! * committed offsets are at least the last commit that succeeded before the crash
//!   point, one of the committed values, and never past the log's end;
//! * each producer's sequence is the one of its last surviving batch;
//! * records are gone from the front only if retention deleted them after every
//!   consumer had committed past them;
//! * the recovered log takes a new append at its end.
//!
//! `LUNGFISH_CRASH_SCALE=N` makes the workloads N times longer (default 1).
//! `LUNGFISH_SIM_STRICT_DIRS=1` makes new directories durable only when their parent
//! is fsynced.

mod sim;

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use lungfish_log::{
    BatchBuilder, DurableTicket, FsyncPolicy, Log, LogConfig, OffsetCommit, Producer, Retention,
};
use sim::oracle::{self, ExpBatch, ExpOffset};
use sim::{Fault, FsState, Recording, Rng, SimOptions, SimStorage};

const DIR: &str = "/data/log";
const WAIT: Duration = Duration::from_secs(30);
const REORDER_SEEDS: u64 = 3;

fn scale() -> usize {
    std::env::var("LUNGFISH_CRASH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
        .max(1)
}

fn options() -> SimOptions {
    SimOptions {
        strict_dirs: std::env::var("LUNGFISH_SIM_STRICT_DIRS").is_ok_and(|v| v == "1"),
        ..SimOptions::default()
    }
}

fn config(partitions: u32, fsync: FsyncPolicy, retention: Retention) -> LogConfig {
    LogConfig {
        partitions,
        segment_bytes: 4096,
        fsync,
        max_batch_bytes: 4096,
        retention,
    }
}

/// A record's bytes: where it was appended, and a size, so any mix-up shows.
fn record(partition: u32, batch: usize, index: usize, size: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(12 + size);
    v.extend_from_slice(&partition.to_le_bytes());
    v.extend_from_slice(&(batch as u32).to_le_bytes());
    v.extend_from_slice(&(index as u32).to_le_bytes());
    v.extend((0..size).map(|i| (i as u32 ^ batch as u32 ^ (index as u32) << 3) as u8));
    v
}

#[derive(Debug)]
struct Batch {
    base: u64,
    records: Vec<Vec<u8>>,
    producer: Option<Producer>,
    /// Trace position when its ticket resolved.
    acked_at: Option<usize>,
}

#[derive(Debug)]
struct Commit {
    consumer: String,
    partition: u32,
    offset: u64,
    /// Trace positions before the commit started and after it returned.
    started: usize,
    done: usize,
}

/// A workload running over a recording file system.
struct Run {
    name: String,
    sim: SimStorage,
    config: LogConfig,
    log: Option<Log>,
    batches: Vec<Vec<Batch>>,
    commits: Vec<Commit>,
    waiting: Vec<(u32, usize, DurableTicket)>,
    /// The producer state the log should have.
    last_seq: HashMap<(u32, u64), u64>,
    rng: Rng,
}

impl Run {
    fn new(name: &str, config: LogConfig, seed: u64) -> Run {
        Self::with_options(name, config, seed, options())
    }

    fn with_options(name: &str, config: LogConfig, seed: u64, options: SimOptions) -> Run {
        let sim = SimStorage::new(options);
        sim.mkdir_durable(DIR.as_ref());
        let log = Log::open_with_storage(DIR, config.clone(), sim.arc()).unwrap();
        Run {
            name: name.to_owned(),
            sim,
            batches: (0..config.partitions).map(|_| Vec::new()).collect(),
            config,
            log: Some(log),
            commits: Vec::new(),
            waiting: Vec::new(),
            last_seq: HashMap::new(),
            rng: Rng::new(seed),
        }
    }

    fn log(&self) -> &Log {
        self.log.as_ref().unwrap()
    }

    fn end(&self, p: u32) -> u64 {
        self.batches[p as usize]
            .last()
            .map_or(0, |b| b.base + b.records.len() as u64)
    }

    /// Appends a batch of `sizes.len()` records; does not wait.
    fn append(&mut self, p: u32, sizes: &[usize], producer: Option<Producer>) {
        let index = self.batches[p as usize].len();
        let records: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(i, &s)| record(p, index, i, s))
            .collect();
        let mut b = BatchBuilder::new();
        for r in &records {
            b.push(r);
        }
        let a = self.log().append(p, &mut b, producer).unwrap();
        let duplicate = producer.is_some_and(|pr| {
            self.last_seq
                .get(&(p, pr.id))
                .is_some_and(|&last| pr.seq <= last)
        });
        assert_eq!(a.duplicate, duplicate, "{}: duplicate detection", self.name);
        if duplicate {
            return;
        }
        assert_eq!(
            a.base_offset,
            self.end(p),
            "{}: offsets are contiguous",
            self.name
        );
        if let Some(pr) = producer {
            self.last_seq.insert((p, pr.id), pr.seq);
        }
        self.batches[p as usize].push(Batch {
            base: a.base_offset,
            records,
            producer,
            acked_at: None,
        });
        self.waiting.push((p, index, a.ticket));
    }

    /// A random batch: 0 to 5 records of mostly small, sometimes large sizes.
    fn append_random(&mut self, p: u32, producer: Option<Producer>) {
        let n = self.rng.below(6) as usize;
        let sizes: Vec<usize> = (0..n)
            .map(|_| {
                if self.rng.chance(1, 8) {
                    300 + self.rng.below(400) as usize
                } else {
                    self.rng.below(120) as usize
                }
            })
            .collect();
        self.append(p, &sizes, producer);
    }

    /// The next producer position of `id` in `p`: usually after the last, sometimes a
    /// resend of an old one (which the log must refuse as a duplicate).
    fn producer(&mut self, p: u32, id: u64) -> Producer {
        let last = self.last_seq.get(&(p, id)).copied().unwrap_or(0);
        let seq = if last > 0 && self.rng.chance(1, 10) {
            1 + self.rng.below(last)
        } else {
            last + 1 + self.rng.below(3)
        };
        Producer { id, seq }
    }

    /// Waits for every outstanding ticket, noting where in the trace each resolved.
    fn ack(&mut self) {
        for (p, i, ticket) in std::mem::take(&mut self.waiting) {
            ticket.wait(WAIT).unwrap();
            self.batches[p as usize][i].acked_at = Some(self.sim.trace_len());
        }
    }

    fn commit(&mut self, consumer: &str, p: u32, offset: u64) {
        let started = self.sim.trace_len();
        let metadata = format!("{consumer}@{offset}");
        self.log()
            .commit(
                consumer,
                &[OffsetCommit {
                    partition: p,
                    offset,
                    metadata: metadata.as_bytes(),
                }],
            )
            .unwrap();
        self.commits.push(Commit {
            consumer: consumer.to_owned(),
            partition: p,
            offset,
            started,
            done: self.sim.trace_len(),
        });
    }

    /// Commits a random offset between the consumer's last one and the durable end.
    fn commit_random(&mut self, consumer: &str, p: u32) {
        let last = self
            .commits
            .iter()
            .rev()
            .find(|c| c.consumer == consumer && c.partition == p)
            .map_or(0, |c| c.offset);
        let end = self.log().end_offset(p);
        let offset = last + self.rng.below(end - last + 1);
        self.commit(consumer, p, offset);
    }

    fn reopen(&mut self) {
        self.ack();
        self.log.take().unwrap().close().unwrap();
        self.log = Some(Log::open_with_storage(DIR, self.config.clone(), self.sim.arc()).unwrap());
    }

    /// The process dies (its page cache survives, its unacknowledged appends are not
    /// acknowledged) and a new one opens the log.
    fn kill_and_restart(&mut self) {
        self.sim = self.sim.kill_process();
        self.waiting.clear();
        drop(self.log.take());
        self.log = Some(Log::open_with_storage(DIR, self.config.clone(), self.sim.arc()).unwrap());
    }

    fn sync(&mut self) {
        self.log().sync().unwrap();
    }

    fn finish(mut self) -> Workload {
        self.ack();
        self.log.take().unwrap().close().unwrap();
        Workload {
            name: self.name,
            config: self.config,
            recording: self.sim.recording(),
            batches: self.batches,
            commits: self.commits,
        }
    }
}

/// A finished workload: what it did and the trace of it.
struct Workload {
    name: String,
    config: LogConfig,
    recording: Recording,
    batches: Vec<Vec<Batch>>,
    commits: Vec<Commit>,
}

/// w1: appends of various sizes across segment rolls in two partitions, with and
/// without producers (and resends), acknowledged one by one or in groups, and a clean
/// reopen half way.
fn w1(fsync: FsyncPolicy) -> Workload {
    let n = 144 * scale();
    let mut run = Run::new(
        &format!("w1 appends ({fsync:?})"),
        config(2, fsync, Retention::default()),
        1,
    );
    for i in 0..n {
        // Mostly one batch, sometimes a burst appended back to back (so segments roll
        // while earlier batches are not yet durable).
        let burst = if run.rng.chance(1, 4) { 6 } else { 1 };
        for _ in 0..burst {
            let p = run.rng.below(2) as u32;
            let producer = match run.rng.below(10) {
                0..=3 => Some(run.producer(p, 7)),
                4..=5 => Some(run.producer(p, 8)),
                _ => None,
            };
            run.append_random(p, producer);
        }
        if run.rng.chance(1, 2) {
            run.ack();
        }
        if i == n / 2 {
            run.reopen();
        }
    }
    run.finish()
}

/// w2: appends interleaved with offset commits of two consumers.
fn w2(fsync: FsyncPolicy) -> Workload {
    let n = 120 * scale();
    let mut run = Run::new(
        &format!("w2 commits ({fsync:?})"),
        config(1, fsync, Retention::default()),
        2,
    );
    for i in 0..n {
        for _ in 0..1 + run.rng.below(3) {
            let producer = run.rng.chance(1, 2).then(|| run.producer(0, 5));
            run.append_random(0, producer);
        }
        if run.rng.chance(2, 3) {
            run.ack();
        }
        if i % 3 == 2 {
            run.commit_random("alpha", 0);
        }
        if i % 7 == 6 {
            run.commit_random("beta", 0);
        }
        if i == n / 2 {
            run.reopen();
        }
    }
    run.finish()
}

/// w3: appends, commits and retention deletes: the consumer commits close to the end,
/// so old segments go whenever the partition holds more than two segments' worth.
fn w3(fsync: FsyncPolicy) -> Workload {
    let n = 160 * scale();
    let retention = Retention {
        target_bytes: Some(8192),
        ..Retention::default()
    };
    let mut run = Run::new(
        &format!("w3 retention ({fsync:?})"),
        config(1, fsync, retention),
        3,
    );
    for i in 0..n {
        for _ in 0..1 + run.rng.below(2) {
            let producer = run.rng.chance(1, 3).then(|| run.producer(0, 11));
            let sizes: Vec<usize> = (0..1 + run.rng.below(3))
                .map(|_| 100 + run.rng.below(500) as usize)
                .collect();
            run.append(0, &sizes, producer);
        }
        run.ack();
        if i % 2 == 1 {
            let end = run.log().end_offset(0);
            run.commit("reader", 0, end);
        }
        if i % 10 == 9 {
            // A second, slower consumer holds segments back until it catches up.
            let end = run.log().end_offset(0);
            run.commit("laggard", 0, end);
        }
        if i % 4 == 3 {
            let reports = run.log().apply_retention().unwrap();
            assert!(reports.iter().all(|r| r.lost.is_empty()));
        }
        if i == n / 3 || i == 2 * n / 3 {
            run.reopen();
        }
    }
    run.finish()
}

/// w4: a producer that records its position with empty batches (as a source does in
/// the dead-letter queue when a chunk has no rejects) until segments fill with nothing
/// but empty batches; a consumer at the end and retention.
fn w4(fsync: FsyncPolicy) -> Workload {
    let retention = Retention {
        target_bytes: Some(8192),
        ..Retention::default()
    };
    let mut run = Run::new(
        &format!("w4 producer positions ({fsync:?})"),
        config(1, fsync, retention),
        4,
    );
    let mut seq = 0;
    for round in 0..2 * scale() {
        run.append(
            0,
            &[40, 50],
            Some(Producer {
                id: 4,
                seq: round as u64 + 1,
            }),
        );
        // A segment holds 78 empty batches: 200 in a row fill at least one segment
        // with nothing else.
        for i in 0..200 {
            seq += 1;
            run.append(0, &[], Some(Producer { id: 3, seq }));
            if i % 10 == 9 {
                run.ack();
            }
        }
        run.ack();
        let end = run.log().end_offset(0);
        run.commit("reader", 0, end);
        run.log().apply_retention().unwrap();
    }
    run.append(0, &[60], None);
    run.ack();
    run.finish()
}

/// w5: the application calls `Log::sync` (as the pipeline does when its sources
/// finish) while the flusher is in the middle of its own sync, across segment rolls,
/// with directory fsyncs that take a while (20 ms, so the interleaving does not depend
/// on scheduling).
fn w5() -> Workload {
    let options = SimOptions {
        sync_dir_delay: Duration::from_millis(20),
        ..options()
    };
    let fsync = FsyncPolicy::Every(Duration::from_millis(1));
    let mut run = Run::with_options(
        "w5 Log::sync racing the flusher",
        config(1, fsync, Retention::default()),
        5,
        options,
    );
    for _ in 0..8 * scale() {
        for _ in 0..3 {
            let sizes: Vec<usize> = (0..2).map(|_| 300 + run.rng.below(500) as usize).collect();
            run.append(0, &sizes, None);
        }
        // The flusher (every 1 ms) starts its sync, and with it the slow directory
        // fsync, first.
        std::thread::sleep(Duration::from_millis(5));
        run.sync();
        run.ack();
    }
    run.finish()
}

/// w6: the process dies with an append not yet durable and restarts (the page cache
/// survives, as it does when only the process crashes); a consumer then reads to the
/// end and commits there. (The fsync interval is long, so what is durable is decided by
/// the explicit syncs alone.)
fn w6() -> Workload {
    let fsync = FsyncPolicy::Every(Duration::from_secs(3600));
    let mut run = Run::new(
        "w6 process crash, then commit at the end",
        config(1, fsync, Retention::default()),
        6,
    );
    for round in 0..3 * scale() {
        for _ in 0..2 {
            run.append(0, &[100, 200], None);
        }
        run.sync();
        run.ack();
        run.append(
            0,
            &[300],
            Some(Producer {
                id: 6,
                seq: round as u64 + 1,
            }),
        );
        run.kill_and_restart();
        let end = run.log().end_offset(0);
        run.commit("reader", 0, end);
    }
    run.sync();
    run.finish()
}

/// The expectations at crash point `k`.
fn expectations(w: &Workload, k: usize) -> (Vec<Vec<ExpBatch>>, Vec<ExpOffset>) {
    let batches = w
        .batches
        .iter()
        .map(|bs| {
            bs.iter()
                .map(|b| ExpBatch {
                    base: b.base,
                    records: b.records.clone(),
                    producer: b.producer,
                    must_survive: b.acked_at.is_some_and(|at| at <= k),
                })
                .collect()
        })
        .collect();
    let mut keys: Vec<(String, u32)> = w
        .commits
        .iter()
        .map(|c| (c.consumer.clone(), c.partition))
        .collect();
    keys.sort();
    keys.dedup();
    let offsets = keys
        .into_iter()
        .map(|(consumer, partition)| {
            let mine = || {
                w.commits
                    .iter()
                    .filter(|c| c.consumer == consumer && c.partition == partition)
            };
            ExpOffset {
                at_least: mine().filter(|c| c.done <= k).map(|c| c.offset).next_back(),
                allowed: mine().filter(|c| c.started < k).map(|c| c.offset).collect(),
                consumer,
                partition,
            }
        })
        .collect();
    (batches, offsets)
}

/// What must hold at a crash point changes only when a ticket resolves or a commit
/// starts or ends there: states are deduplicated per (fingerprint, these counts).
type Progress = (usize, usize, usize);

fn progress(w: &Workload, k: usize) -> Progress {
    let acked = w
        .batches
        .iter()
        .flatten()
        .filter(|b| b.acked_at.is_some_and(|at| at <= k))
        .count();
    let started = w.commits.iter().filter(|c| c.started < k).count();
    let done = w.commits.iter().filter(|c| c.done <= k).count();
    (acked, started, done)
}

/// Opens the log on a crashed file system and checks it.
fn verify(w: &Workload, crashed: FsState, k: usize) -> Result<(), String> {
    let sim = SimStorage::from_state(crashed, options());
    let config = LogConfig {
        fsync: FsyncPolicy::Always,
        ..w.config.clone()
    };
    let log = Log::open_with_storage(DIR, config, sim.arc())
        .map_err(|e| format!("opening the log failed: {e}"))?;
    let (batches, offsets) = expectations(w, k);
    let mut ends = Vec::new();
    for (p, exp) in batches.iter().enumerate() {
        let found = oracle::check_partition(&log, p as u32, exp)?;
        ends.push(found.end);
    }
    oracle::check_offsets(&log, &offsets)?;
    // The recovered log continues at its end.
    for (p, end) in ends.into_iter().enumerate() {
        let mut b = BatchBuilder::new();
        b.push(b"after the crash");
        let a = log
            .append(p as u32, &mut b, None)
            .map_err(|e| format!("partition {p}: append after recovery failed: {e}"))?;
        a.ticket
            .wait(WAIT)
            .map_err(|e| format!("partition {p}: append after recovery not durable: {e}"))?;
        if a.base_offset != end {
            return Err(format!(
                "partition {p}: append after recovery landed at {} instead of {end}",
                a.base_offset
            ));
        }
    }
    log.close()
        .map_err(|e| format!("closing the recovered log failed: {e}"))
}

struct Failure {
    key: (u64, Progress),
    k: usize,
    fault: Fault,
    message: String,
    listing: String,
}

#[derive(Default)]
struct Tally {
    points: AtomicUsize,
    by_kind: Mutex<HashMap<&'static str, usize>>,
    opened: AtomicUsize,
}

/// Crashes `w` at every prefix of its trace under every fault mode and checks each.
fn enumerate(w: &Workload) -> Tally {
    let started = Instant::now();
    let trace_len = w.recording.trace.len();
    let tally = Tally::default();
    // Every distinct crashed state, with the first crash point (and fault) giving it.
    let seen: Mutex<HashMap<(u64, Progress), (usize, Fault)>> = Mutex::new(HashMap::new());
    let failures: Mutex<Vec<Failure>> = Mutex::new(Vec::new());
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get().min(2));
    std::thread::scope(|s| {
        for t in 0..threads {
            let (tally, seen, failures) = (&tally, &seen, &failures);
            s.spawn(move || {
                let mut replay = w.recording.replayer();
                for k in (t..=trace_len).step_by(threads) {
                    replay.advance_to(k);
                    let state = &replay.state;
                    let mut faults = vec![Fault::DropUnsynced];
                    faults.extend(Fault::tears());
                    faults.extend((0..REORDER_SEEDS).map(|i| Fault::Reorder {
                        seed: (k as u64) << 8 | i,
                    }));
                    let unsynced = state.has_unsynced();
                    let progress = progress(w, k);
                    for fault in faults {
                        tally.points.fetch_add(1, Ordering::Relaxed);
                        *tally
                            .by_kind
                            .lock()
                            .unwrap()
                            .entry(fault.kind())
                            .or_default() += 1;
                        if !unsynced && fault != Fault::DropUnsynced {
                            continue; // the same state as dropping nothing
                        }
                        let crashed = state.crash(fault);
                        let key = (crashed.fingerprint(), progress);
                        match seen.lock().unwrap().entry(key) {
                            Entry::Occupied(mut e) => {
                                if k < e.get().0 {
                                    e.insert((k, fault));
                                }
                                continue;
                            }
                            Entry::Vacant(e) => {
                                e.insert((k, fault));
                            }
                        }
                        tally.opened.fetch_add(1, Ordering::Relaxed);
                        let listing = crashed.listing();
                        if let Err(message) = verify(w, crashed, k) {
                            failures.lock().unwrap().push(Failure {
                                key,
                                k,
                                fault,
                                message,
                                listing,
                            });
                        }
                    }
                }
            });
        }
    });
    let mut failures = failures.into_inner().unwrap();
    // Report each failing state at the first crash point that gives it.
    let seen = seen.into_inner().unwrap();
    for f in &mut failures {
        (f.k, f.fault) = seen[&f.key];
    }
    failures.sort_by_key(|f| f.k);
    let by_kind = tally.by_kind.lock().unwrap().clone();
    eprintln!(
        "{}: {} operations, {} crash points x modes checked ({} drop, {} tear, {} reorder), \
         {} distinct crashed states opened, {:.1?}",
        w.name,
        trace_len,
        tally.points.load(Ordering::Relaxed),
        by_kind.get("drop").unwrap_or(&0),
        by_kind.get("tear").unwrap_or(&0),
        by_kind.get("reorder").unwrap_or(&0),
        tally.opened.load(Ordering::Relaxed),
        started.elapsed()
    );
    if let Some(first) = failures.first() {
        let mut kinds: Vec<&str> = failures.iter().map(|f| f.fault.kind()).collect();
        kinds.sort_unstable();
        kinds.dedup();
        let last = failures.last().unwrap();
        panic!(
            "{}: {} crashed states fail ({kinds:?}); the first, after {} operations with {:?}:\n  {}\n\
             the operations before the crash:\n{}the file system after it:\n{}\
             the last, after {} of {trace_len} operations with {:?}:\n  {}\n",
            w.name,
            failures.len(),
            first.k,
            first.fault,
            first.message,
            w.recording.describe_prefix(first.k, 30),
            first.listing,
            last.k,
            last.fault,
            last.message,
        );
    }
    tally
}

#[test]
fn w1_appends_across_rolls_with_producers_survive_every_crash_point() {
    enumerate(&w1(FsyncPolicy::Always));
    enumerate(&w1(FsyncPolicy::Every(Duration::from_millis(1))));
}

#[test]
fn w2_appends_and_commits_survive_every_crash_point() {
    enumerate(&w2(FsyncPolicy::Always));
    enumerate(&w2(FsyncPolicy::Every(Duration::from_millis(1))));
}

#[test]
fn w3_retention_survives_every_crash_point() {
    enumerate(&w3(FsyncPolicy::Always));
    enumerate(&w3(FsyncPolicy::Every(Duration::from_millis(1))));
}

#[test]
fn w4_producer_positions_filling_segments_survive_every_crash_point() {
    enumerate(&w4(FsyncPolicy::Always));
}

#[test]
fn w5_log_sync_racing_the_flusher_survives_every_crash_point() {
    enumerate(&w5());
}

#[test]
fn w6_commits_after_a_process_crash_survive_every_crash_point() {
    enumerate(&w6());
}
