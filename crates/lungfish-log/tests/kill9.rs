//! A real `kill -9` loop: a child process appends to a log under load and is killed
//! with SIGKILL at a random moment, over and over; after every kill the log is opened
//! (recovered) and checked against the ids the child acknowledged.
//!
//! There is one test binary and no helper program: the driver, [`kill9_loop`],
//! re-executes this very binary (`std::env::current_exe()`) with
//! `--exact kill9_child_writer --nocapture` and `LUNGFISH_KILL9_WRITER=DIR` in the
//! environment. Without that variable, [`kill9_child_writer`] returns at once, so a
//! plain `cargo test` runs only the driver.
//!
//! The child opens the log in `DIR/log` (4 partitions, 256 KiB segments so they roll
//! often, `FsyncPolicy::Every(5ms)` or, one cycle in four, `Always`) and appends from
//! several threads batches of records that each carry a unique id, keeping a few
//! appends in flight per thread. Only once a batch's ticket has resolved does the
//! thread write the batch's ids to its ledger file (append + fdatasync): the ledgers
//! hold only acknowledged ids. Ids come from a range of their own per cycle
//! (`(cycle + 1) << 32` on), so a restarted child never reuses an id, acknowledged or
//! not. Each thread is a `Producer` whose sequence numbers continue from the log's
//! recovered producer state, so an append refused as a duplicate fails the child.
//!
//! After each kill the driver opens the log and reads what is new in every partition
//! (and everything, every [`FULL_CHECK_EVERY`] cycles and at the end): every
//! acknowledged id must be in the log (lost = 0) and no id may be in it twice
//! (duplicates = 0); every record's payload must match its id; data verified once must
//! stay. It prints one report line: cycles, acknowledged ids, ids in the log, lost,
//! duplicates.
//!
//! What this proves and what it does not: SIGKILL ends the process, not the machine.
//! Bytes handed to the kernel survive it in the page cache, so this loop checks that
//! nothing is acknowledged before it is written, that recovery keeps every complete
//! batch (including a kill during recovery itself or during a segment roll) and that
//! offsets, producer state and the read path stay consistent across restarts. It does
//! not check fsync placement against power loss; the model test with the simulated
//! storage does that.
//!
//! `LUNGFISH_KILL9_CYCLES` sets the number of cycles (default 100) and
//! `LUNGFISH_KILL9_SEED` the seed of the kill times and loads. `scripts/kill9.sh` runs
//! it in release mode for 1000 cycles.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lungfish_log::{BatchBuilder, DurableTicket, FsyncPolicy, Log, LogConfig, Producer};

const WRITER_ENV: &str = "LUNGFISH_KILL9_WRITER";
const CYCLE_ENV: &str = "LUNGFISH_KILL9_CYCLE";
const POLICY_ENV: &str = "LUNGFISH_KILL9_FSYNC";
const CHILD_SEED_ENV: &str = "LUNGFISH_KILL9_CHILD_SEED";
const CYCLES_ENV: &str = "LUNGFISH_KILL9_CYCLES";
const SEED_ENV: &str = "LUNGFISH_KILL9_SEED";
const CHILD_TEST: &str = "kill9_child_writer";

const PARTITIONS: u32 = 4;
const WRITER_THREADS: u64 = 4;
/// Appends each writer thread keeps in flight before it waits for the oldest ticket.
const IN_FLIGHT: usize = 4;
const MAX_RECORDS_PER_BATCH: u64 = 32;
/// A child that was not killed stops writing after this long (the driver then fails).
const CHILD_LIFETIME: Duration = Duration::from_secs(30);
/// The driver reads every partition from offset 0 this often (and after the last
/// cycle); in between it reads only what is new.
const FULL_CHECK_EVERY: u64 = 25;
/// Size of one ledger entry: first id (u64), count (u32), CRC32C of those 12 bytes.
const LEDGER_ENTRY: usize = 16;

fn config(fsync: FsyncPolicy) -> LogConfig {
    LogConfig {
        partitions: PARTITIONS,
        segment_bytes: 256 * 1024,
        fsync,
        max_batch_bytes: 64 * 1024,
        ..LogConfig::default()
    }
}

/// SplitMix64: a small seeded generator, so a failing run can be repeated.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The record of id `id`: the id, then `id % 29` bytes derived from it, so a damaged
/// or misplaced payload is noticed.
fn encode_record(id: u64, out: &mut Vec<u8>) {
    out.extend_from_slice(&id.to_le_bytes());
    out.extend(std::iter::repeat_n(id as u8 ^ 0xA5, (id % 29) as usize));
}

fn decode_record(record: &[u8]) -> Result<u64, String> {
    let Some((id, pad)) = record.split_first_chunk::<8>() else {
        return Err(format!("record of {} bytes has no id", record.len()));
    };
    let id = u64::from_le_bytes(*id);
    let want = (id % 29) as usize;
    if pad.len() != want || pad.iter().any(|&b| b != id as u8 ^ 0xA5) {
        return Err(format!("record of id {id} has a damaged payload"));
    }
    Ok(id)
}

fn ledger_dir(root: &Path) -> PathBuf {
    root.join("ledger")
}

// ---------------------------------------------------------------------------------
// The child.

/// The writer the driver starts and kills. Does nothing unless `LUNGFISH_KILL9_WRITER`
/// is set (that is, in a normal test run).
#[test]
fn kill9_child_writer() {
    let Some(root) = std::env::var_os(WRITER_ENV).map(PathBuf::from) else {
        return;
    };
    let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"));
    let cycle: u64 = var(CYCLE_ENV).parse().unwrap();
    let seed: u64 = var(CHILD_SEED_ENV).parse().unwrap();
    let policy = match var(POLICY_ENV).as_str() {
        "always" => FsyncPolicy::Always,
        _ => FsyncPolicy::Every(Duration::from_millis(5)),
    };
    let log = Log::open(root.join("log"), config(policy)).expect("child: open the log");
    let next_id = Arc::new(AtomicU64::new((cycle + 1) << 32));
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..WRITER_THREADS)
        .map(|t| {
            let (log, next_id, stop) = (log.clone(), next_id.clone(), stop.clone());
            let ledger = ledger_dir(&root).join(format!("cycle-{cycle:06}-thread-{t}"));
            std::thread::spawn(move || {
                write_until_killed(&log, t, seed ^ t, &next_id, &ledger, &stop)
            })
        })
        .collect();
    std::thread::sleep(CHILD_LIFETIME);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("child writer thread");
    }
    panic!("the child writer was not killed within {CHILD_LIFETIME:?}");
}

fn write_until_killed(
    log: &Log,
    thread: u64,
    seed: u64,
    next_id: &AtomicU64,
    ledger: &Path,
    stop: &AtomicBool,
) {
    let mut rng = Rng(seed);
    let mut ledger = OpenOptions::new()
        .create(true)
        .append(true)
        .open(ledger)
        .expect("child: open the ledger");
    let producer_id = thread + 1;
    let mut seqs: Vec<u64> = (0..PARTITIONS)
        .map(|p| log.producer_seq(p, producer_id).unwrap_or(0))
        .collect();
    let mut in_flight: VecDeque<(DurableTicket, u64, u32)> = VecDeque::new();
    let mut batch = BatchBuilder::new();
    while !stop.load(Ordering::Relaxed) {
        let partition = rng.below(u64::from(PARTITIONS)) as u32;
        let count = 1 + rng.below(MAX_RECORDS_PER_BATCH);
        let first = next_id.fetch_add(count, Ordering::Relaxed);
        batch.clear();
        for id in first..first + count {
            batch.push_with(|out| encode_record(id, out));
        }
        let seq = &mut seqs[partition as usize];
        *seq += 1;
        let producer = Producer {
            id: producer_id,
            seq: *seq,
        };
        let appended = log
            .append(partition, &mut batch, Some(producer))
            .expect("child: append");
        assert!(
            !appended.duplicate,
            "child: fresh batch refused as a duplicate ({producer:?}, partition {partition}): \
             the recovered producer state is ahead of the log"
        );
        in_flight.push_back((appended.ticket, first, count as u32));
        while in_flight.len() >= IN_FLIGHT || in_flight.front().is_some_and(|f| f.0.is_durable()) {
            let (ticket, first, count) = in_flight.pop_front().unwrap();
            ticket
                .wait(Duration::from_secs(10))
                .expect("child: wait for durability");
            // Acknowledged: only now may the ids go into the ledger.
            let mut entry = [0u8; LEDGER_ENTRY];
            entry[..8].copy_from_slice(&first.to_le_bytes());
            entry[8..12].copy_from_slice(&count.to_le_bytes());
            let crc = crc32c::crc32c(&entry[..12]);
            entry[12..].copy_from_slice(&crc.to_le_bytes());
            ledger.write_all(&entry).expect("child: write the ledger");
            ledger.sync_data().expect("child: fdatasync the ledger");
        }
    }
}

// ---------------------------------------------------------------------------------
// The driver.

#[derive(Default)]
struct Verifier {
    /// Every id read from the log.
    ids: HashSet<u64>,
    /// Per partition: the offset verified up to, and the id of the record before it.
    verified: Vec<(u64, Option<u64>)>,
    /// Per ledger file: bytes read so far.
    ledger_pos: HashMap<PathBuf, u64>,
    acknowledged: u64,
    /// Opens after a kill whose recovery cut an incomplete batch off a segment's end.
    torn_tails: u64,
    lost: u64,
    duplicates: u64,
    problems: Vec<String>,
}

impl Verifier {
    fn problem(&mut self, p: String) {
        if self.problems.len() < 20 {
            self.problems.push(p);
        }
    }

    /// Reads `partition` from `from` to its end: (offset, id) of every record.
    fn read(&mut self, log: &Log, partition: u32, from: u64) -> Vec<(u64, u64)> {
        let mut reader = log.reader(partition, from).expect("reader");
        let mut out = Vec::new();
        loop {
            let chunk = match reader.read(1 << 20) {
                Ok(chunk) => chunk,
                Err(e) => {
                    self.problem(format!("partition {partition}: read failed: {e}"));
                    return out;
                }
            };
            if chunk.is_empty() {
                return out;
            }
            let mut bad = Vec::new();
            for (offset, record) in chunk.records() {
                match decode_record(record) {
                    Ok(id) => out.push((offset, id)),
                    Err(e) => bad.push(format!("partition {partition} offset {offset}: {e}")),
                }
            }
            for b in bad {
                self.problem(b);
            }
        }
    }

    /// Checks the log after a kill: what is new in it, and what the ledgers added.
    fn check(&mut self, log: &Log, root: &Path, full: bool) {
        if self.verified.is_empty() {
            self.verified = vec![(0, None); PARTITIONS as usize];
        }
        if full {
            // Everything from offset 0: the same ids, each once, as read incrementally.
            let mut all = HashSet::with_capacity(self.ids.len());
            for p in 0..PARTITIONS {
                for (offset, id) in self.read(log, p, 0) {
                    if !all.insert(id) {
                        self.duplicates += 1;
                        self.problem(format!(
                            "id {id} twice (again at partition {p} offset {offset})"
                        ));
                    }
                }
            }
            let vanished = self.ids.difference(&all).count() as u64;
            if vanished > 0 {
                self.lost += vanished;
                self.problem(format!("{vanished} ids read before are gone from the log"));
            }
            self.ids.extend(all);
        }
        for p in 0..PARTITIONS {
            let (done, last_id) = self.verified[p as usize];
            let end = log.end_offset(p);
            if end < done {
                self.problem(format!("partition {p} shrank from offset {done} to {end}"));
                self.verified[p as usize] = (end, None);
                continue;
            }
            let from = done.saturating_sub(1);
            let records = self.read(log, p, from);
            let mut new = records.as_slice();
            if let Some(want) = last_id {
                match records.first() {
                    Some(&(o, id)) if o == from && id == want => new = &records[1..],
                    other => self.problem(format!(
                        "partition {p}: offset {from} held id {want}, now {other:?}"
                    )),
                }
            }
            for &(offset, id) in new {
                if offset < done {
                    continue;
                }
                if !self.ids.insert(id) && !full {
                    self.duplicates += 1;
                    self.problem(format!(
                        "id {id} twice (again at partition {p} offset {offset})"
                    ));
                }
            }
            if let Some(&(offset, id)) = records.last()
                && offset + 1 >= done
            {
                self.verified[p as usize] = (offset + 1, Some(id));
            }
        }
        // The ledgers: every acknowledged id must be in the log.
        let mut files: Vec<PathBuf> = fs::read_dir(ledger_dir(root))
            .expect("ledger directory")
            .map(|e| e.expect("ledger entry").path())
            .collect();
        files.sort();
        for file in files {
            let bytes = fs::read(&file).expect("read a ledger");
            let pos = self.ledger_pos.entry(file.clone()).or_insert(0);
            let mut at = *pos as usize;
            let mut missing = Vec::new();
            // A trailing partial entry can only be the last write of a killed child.
            while bytes.len() - at >= LEDGER_ENTRY {
                let entry = &bytes[at..at + LEDGER_ENTRY];
                let crc = u32::from_le_bytes(entry[12..].try_into().unwrap());
                assert_eq!(
                    crc,
                    crc32c::crc32c(&entry[..12]),
                    "damaged ledger entry in {} at {at}",
                    file.display()
                );
                let first = u64::from_le_bytes(entry[..8].try_into().unwrap());
                let count = u32::from_le_bytes(entry[8..12].try_into().unwrap());
                for id in first..first + u64::from(count) {
                    self.acknowledged += 1;
                    if !self.ids.contains(&id) {
                        missing.push(id);
                    }
                }
                at += LEDGER_ENTRY;
            }
            *pos = at as u64;
            if !missing.is_empty() {
                self.lost += missing.len() as u64;
                let name = file.file_name().unwrap().to_string_lossy().into_owned();
                self.problem(format!(
                    "{} acknowledged ids missing from the log ({name}), first {:?}",
                    missing.len(),
                    &missing[..missing.len().min(5)]
                ));
            }
        }
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

#[test]
fn kill9_loop() {
    if std::env::var_os(WRITER_ENV).is_some() {
        return; // this is the child process
    }
    let cycles = env_u64(CYCLES_ENV, 100);
    let seed = env_u64(SEED_ENV, 0x6C75_6E67);
    let mut rng = Rng(seed);
    let exe = std::env::current_exe().expect("current_exe");
    let tmp = tempfile::tempdir().expect("temporary directory");
    let root = tmp.path();
    fs::create_dir_all(ledger_dir(root)).unwrap();
    let mut v = Verifier::default();
    let started = Instant::now();
    let mut cycle = 0;
    let mut always_cycles = 0;
    let mut segments = 0;
    while cycle < cycles {
        let always = rng.below(4) == 0;
        always_cycles += u64::from(always);
        let stderr_path = root.join("child.stderr");
        let mut child = Command::new(&exe)
            .args(["--exact", CHILD_TEST, "--nocapture", "--test-threads=1"])
            .env(WRITER_ENV, root)
            .env(CYCLE_ENV, cycle.to_string())
            .env(CHILD_SEED_ENV, rng.next().to_string())
            .env(POLICY_ENV, if always { "always" } else { "every" })
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&stderr_path).unwrap())
            .spawn()
            .expect("start the child writer");
        std::thread::sleep(Duration::from_millis(20 + rng.below(181)));
        if let Some(status) = child.try_wait().expect("child status") {
            panic!(
                "cycle {cycle}: the child writer ended by itself ({status}) before the kill:\n{}",
                fs::read_to_string(&stderr_path).unwrap_or_default()
            );
        }
        child.kill().expect("SIGKILL the child");
        child.wait().expect("reap the child");
        cycle += 1;

        let log = Log::open(root.join("log"), config(FsyncPolicy::Never))
            .unwrap_or_else(|e| panic!("cycle {cycle}: opening the log after the kill: {e}"));
        v.torn_tails += log
            .recovery()
            .iter()
            .filter(|r| r.truncated_bytes > 0)
            .count() as u64;
        segments = (0..PARTITIONS)
            .map(|p| log.stats(p).map_or(0, |s| s.segments))
            .sum();
        v.check(&log, root, cycle % FULL_CHECK_EVERY == 0 || cycle == cycles);
        drop(log);
        if !v.problems.is_empty() {
            break;
        }
    }
    let report = format!(
        "kill9: cycles {cycle}, acknowledged ids {}, ids in log {}, lost {}, duplicates {} \
         (fsync always in {always_cycles} cycles, torn tails recovered {}, segments {segments}, \
         {:.1} s, seed {seed})",
        v.acknowledged,
        v.ids.len(),
        v.lost,
        v.duplicates,
        v.torn_tails,
        started.elapsed().as_secs_f64()
    );
    println!("{report}");
    assert!(
        v.problems.is_empty() && v.lost == 0 && v.duplicates == 0,
        "{report}\n{}",
        v.problems.join("\n")
    );
    assert!(
        v.acknowledged > 0,
        "{report}: the child never acknowledged anything, the loop proved nothing"
    );
}
