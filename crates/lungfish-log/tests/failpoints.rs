//! Failpoints: EIO, a short write, ENOSPC and a panic injected at each of segment write,
//! fsync, segment roll, directory fsync, offset commit and retention delete.
//!
//! For every combination: the operation that hits the fault fails (or panics) without
//! taking the process down; no batch is acknowledged unless it is durable; the log heals
//! and keeps appending; after a reopen every acknowledged batch is there exactly once
//! and in order, nothing was invented, committed offsets are the last ones that
//! succeeded; a full disk is reported as such and the log stays readable.

use std::collections::HashSet;
use std::fmt;
use std::io;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lungfish_log::{
    BatchBuilder, FsStorage, FsyncPolicy, Log, LogConfig, LogError, OffsetCommit, ReadFile,
    Retention, Storage, WriteFile,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Eio,
    ShortWrite,
    Enospc,
    Panic,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Point {
    SegmentWrite,
    /// The background flusher's fsync.
    Fsync,
    /// The fsync of the old segment when a segment is rolled (in the appending thread).
    RollFsync,
    SegmentRoll,
    DirFsync,
    OffsetCommit,
    RetentionDelete,
}

/// An operation as the storage sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Write,
    Sync,
    Create,
    SyncDir,
    Rename,
    Remove,
}

/// Which thread an operation must run on to match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum On {
    Any,
    Flusher,
    NotFlusher,
}

impl On {
    fn matches(self) -> bool {
        let flusher = std::thread::current().name() == Some("lungfish-log-flush");
        match self {
            On::Any => true,
            On::Flusher => flusher,
            On::NotFlusher => !flusher,
        }
    }
}

/// Fires `fault` at the first operation matching `op` on a path containing `needle` on
/// the right thread, once armed.
#[derive(Debug)]
struct Plan {
    rule: Option<(Op, &'static str, On, Fault)>,
    armed: bool,
    fired: bool,
}

impl Plan {
    fn new(rule: (Op, &'static str, On, Fault)) -> Self {
        Plan {
            rule: Some(rule),
            armed: false,
            fired: false,
        }
    }
}

#[derive(Debug, Clone)]
struct Faulty {
    inner: FsStorage,
    plan: Arc<Mutex<Plan>>,
}

fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

impl Faulty {
    /// The fault to inject for `op` on `path`, if this is the moment.
    fn hit(&self, op: Op, path: &Path) -> Option<Fault> {
        let mut plan = self.plan.lock().unwrap();
        let (rule_op, needle, on, fault) = plan.rule?;
        if plan.armed
            && !plan.fired
            && rule_op == op
            && on.matches()
            && path.to_string_lossy().contains(needle)
        {
            plan.fired = true;
            return Some(fault);
        }
        None
    }

    fn fail(&self, op: Op, path: &Path) -> io::Result<()> {
        match self.hit(op, path) {
            None => Ok(()),
            Some(Fault::Panic) => panic!("injected panic at {op:?} {}", path.display()),
            Some(Fault::Enospc) => Err(errno(28)),
            Some(Fault::Eio | Fault::ShortWrite) => Err(errno(5)),
        }
    }
}

#[derive(Debug)]
struct FaultyFile {
    path: std::path::PathBuf,
    inner: Arc<dyn WriteFile>,
    storage: Faulty,
}

impl ReadFile for FaultyFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.inner.read_at(buf, offset)
    }
    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }
}

impl WriteFile for FaultyFile {
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        match self.storage.hit(Op::Write, &self.path) {
            None => self.inner.write_all_at(buf, offset),
            Some(Fault::ShortWrite) => {
                // Half the bytes reach the file, then the call fails.
                self.inner.write_all_at(&buf[..buf.len() / 2], offset)?;
                Err(errno(5))
            }
            Some(Fault::Panic) => panic!("injected panic writing {}", self.path.display()),
            Some(Fault::Enospc) => Err(errno(28)),
            Some(Fault::Eio) => Err(errno(5)),
        }
    }
    fn sync_data(&self) -> io::Result<()> {
        self.storage.fail(Op::Sync, &self.path)?;
        self.inner.sync_data()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
}

impl Storage for Faulty {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.inner.create_dir_all(path)
    }
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        self.inner.list_dir(path)
    }
    fn exists(&self, path: &Path) -> bool {
        self.inner.exists(path)
    }
    fn open_read(&self, path: &Path) -> io::Result<Arc<dyn ReadFile>> {
        self.inner.open_read(path)
    }
    fn open_write(&self, path: &Path, create: bool) -> io::Result<Arc<dyn WriteFile>> {
        if create && !path.exists() {
            self.fail(Op::Create, path)?;
        }
        let inner = self.inner.open_write(path, create)?;
        Ok(Arc::new(FaultyFile {
            path: path.to_path_buf(),
            inner,
            storage: self.clone(),
        }))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.fail(Op::Rename, to)?;
        self.inner.rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.fail(Op::Remove, path)?;
        self.inner.remove_file(path)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.fail(Op::SyncDir, path)?;
        self.inner.sync_dir(path)
    }
}

impl fmt::Display for Point {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Where a failpoint hooks into the storage: the operation and a path fragment.
fn rule(point: Point, fault: Fault) -> (Op, &'static str, On, Fault) {
    let (op, needle, on) = match point {
        Point::SegmentWrite => (Op::Write, ".log", On::Any),
        Point::Fsync => (Op::Sync, ".log", On::Flusher),
        Point::RollFsync => (Op::Sync, ".log", On::NotFlusher),
        // A roll writes the new segment's producer snapshot (to a temporary file, then
        // renamed) and creates the new segment file: fail the creation.
        Point::SegmentRoll => (Op::Create, ".log", On::Any),
        Point::DirFsync => (Op::SyncDir, "p0000", On::Any),
        Point::OffsetCommit => (Op::Rename, ".offsets", On::Any),
        Point::RetentionDelete => (Op::Remove, ".log", On::Any),
    };
    // A short write only makes sense for writes; elsewhere it acts as an EIO.
    (op, needle, on, fault)
}

fn config() -> LogConfig {
    LogConfig {
        partitions: 1,
        segment_bytes: 8 * 1024,
        fsync: FsyncPolicy::Always,
        max_batch_bytes: 4 * 1024,
        retention: Retention {
            target_bytes: Some(16 * 1024),
            ..Retention::default()
        },
    }
}

const WAIT: Duration = Duration::from_secs(10);

/// A batch with one record naming its id.
fn batch(id: u32) -> BatchBuilder {
    let mut b = BatchBuilder::new();
    let mut rec = id.to_le_bytes().to_vec();
    rec.resize(700, (id % 251) as u8);
    b.push(&rec);
    b
}

fn ids_in(log: &Log) -> Vec<u32> {
    let mut reader = log.reader(0, 0).unwrap();
    let mut ids = Vec::new();
    loop {
        let chunk = reader.read(1 << 20).unwrap();
        if chunk.is_empty() {
            return ids;
        }
        ids.extend(
            chunk
                .records()
                .map(|(_, r)| u32::from_le_bytes(r[..4].try_into().unwrap())),
        );
    }
}

/// Appends batch `id`, waits for it; returns its offset if it was acknowledged.
/// Catches an injected panic.
fn append(log: &Log, id: u32) -> Result<Option<u64>, String> {
    let r = std::panic::catch_unwind(AssertUnwindSafe(|| -> Result<Option<u64>, LogError> {
        let a = log.append(0, &mut batch(id), None)?;
        Ok(a.ticket.wait(WAIT).is_ok().then_some(a.base_offset))
    }));
    match r {
        Ok(Ok(acked)) => Ok(acked),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("panicked".into()),
    }
}

fn run(point: Point, fault: Fault) {
    let what = format!("{fault:?} at {point}");
    let dir = tempfile::tempdir().unwrap();
    let plan = Arc::new(Mutex::new(Plan::new(rule(point, fault))));
    let storage = Faulty {
        inner: FsStorage,
        plan: plan.clone(),
    };
    let log = Log::open_with_storage(dir.path(), config(), Arc::new(storage)).unwrap();
    let mut acked: Vec<(u32, u64)> = Vec::new();
    let mut attempted: HashSet<u32> = HashSet::new();
    let mut failures = 0;
    let mut last_commit: Option<u64> = None;
    let mut next = 0u32;
    // Warm up without faults, then arm.
    for _ in 0..10 {
        attempted.insert(next);
        if let Some(offset) = append(&log, next).unwrap() {
            acked.push((next, offset));
        }
        next += 1;
    }
    plan.lock().unwrap().armed = true;
    for round in 0..60 {
        attempted.insert(next);
        match append(&log, next) {
            Ok(Some(offset)) => acked.push((next, offset)),
            Ok(None) | Err(_) => failures += 1,
        }
        next += 1;
        if round % 5 == 4 {
            let offset = log.end_offset(0);
            let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
                log.commit(
                    "c",
                    &[OffsetCommit {
                        partition: 0,
                        offset,
                        metadata: b"m",
                    }],
                )
            }));
            match r {
                Ok(Ok(())) => last_commit = Some(offset),
                _ => failures += 1,
            }
            let r = std::panic::catch_unwind(AssertUnwindSafe(|| log.apply_retention()));
            if !matches!(r, Ok(Ok(_))) {
                failures += 1;
            }
        }
    }
    let fired = plan.lock().unwrap().fired;
    assert!(fired, "{what}: the fault never fired");
    assert!(failures > 0, "{what}: nothing reported the fault");
    assert!(
        acked.len() >= 40,
        "{what}: the log did not heal ({} of {} acknowledged)",
        acked.len(),
        next
    );

    // Everything acknowledged is readable now, in order, once.
    let seen = ids_in(&log);
    let consumed = last_commit.unwrap_or(0);
    check(&what, &seen, &acked, &attempted, consumed);

    // And after a reopen on a healthy disk.
    drop(log);
    let log = Log::open(dir.path(), config()).unwrap();
    let seen = ids_in(&log);
    check(
        &format!("{what}, reopened"),
        &seen,
        &acked,
        &attempted,
        consumed,
    );
    let committed = log.committed("c").unwrap()[0].as_ref().map(|c| c.offset);
    assert_eq!(
        committed, last_commit,
        "{what}: committed offset after reopen"
    );
}

/// `seen` holds, in order and once, only ids that were appended, and every acknowledged
/// id except those retention may have deleted: below the `consumed` offset.
fn check(what: &str, seen: &[u32], acked: &[(u32, u64)], attempted: &HashSet<u32>, consumed: u64) {
    let mut unique = HashSet::new();
    for id in seen {
        assert!(attempted.contains(id), "{what}: id {id} was never appended");
        assert!(unique.insert(*id), "{what}: id {id} appears twice");
    }
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "{what}: ids out of order: {seen:?}"
    );
    for (id, offset) in acked {
        if *offset < consumed {
            continue; // consumed: retention may have deleted it
        }
        assert!(
            unique.contains(id),
            "{what}: acknowledged id {id} (offset {offset}) is missing; log has {seen:?}"
        );
    }
}

#[test]
fn every_fault_at_every_failpoint_keeps_acknowledged_data_and_heals() {
    for point in [
        Point::SegmentWrite,
        Point::Fsync,
        Point::RollFsync,
        Point::SegmentRoll,
        Point::DirFsync,
        Point::OffsetCommit,
        Point::RetentionDelete,
    ] {
        for fault in [Fault::Eio, Fault::ShortWrite, Fault::Enospc, Fault::Panic] {
            run(point, fault);
        }
    }
}

#[test]
fn a_full_disk_is_reported_as_such_and_the_log_stays_readable() {
    let dir = tempfile::tempdir().unwrap();
    let plan = Arc::new(Mutex::new(Plan::new((
        Op::Write,
        ".log",
        On::Any,
        Fault::Enospc,
    ))));
    let log = Log::open_with_storage(
        dir.path(),
        config(),
        Arc::new(Faulty {
            inner: FsStorage,
            plan: plan.clone(),
        }),
    )
    .unwrap();
    for id in 0..5 {
        assert!(append(&log, id).unwrap().is_some());
    }
    plan.lock().unwrap().armed = true;
    let err = log.append(0, &mut batch(5), None).unwrap_err();
    assert!(err.is_disk_full(), "{err}");
    assert!(err.is_transient());
    assert_eq!(
        ids_in(&log),
        vec![0, 1, 2, 3, 4],
        "readable, and nothing of the failed batch shows"
    );
    // Space is back: the next append heals the partition and goes on.
    assert!(append(&log, 6).unwrap().is_some());
    assert_eq!(ids_in(&log), vec![0, 1, 2, 3, 4, 6]);
}

#[test]
fn a_ticket_waiting_on_a_failed_fsync_fails_and_never_turns_durable_later() {
    let dir = tempfile::tempdir().unwrap();
    let plan = Arc::new(Mutex::new(Plan::new((
        Op::Sync,
        ".log",
        On::Flusher,
        Fault::Eio,
    ))));
    let log = Log::open_with_storage(
        dir.path(),
        LogConfig {
            fsync: FsyncPolicy::Every(Duration::from_millis(50)),
            ..config()
        },
        Arc::new(Faulty {
            inner: FsStorage,
            plan: plan.clone(),
        }),
    )
    .unwrap();
    plan.lock().unwrap().armed = true;
    let lost = log.append(0, &mut batch(1), None).unwrap();
    assert!(
        lost.ticket.wait(WAIT).is_err(),
        "the fsync failed: no acknowledgement"
    );
    // New data reaches the same positions after healing, and becomes durable...
    let a = log.append(0, &mut batch(2), None).unwrap();
    a.ticket.wait(WAIT).unwrap();
    assert_eq!(
        a.base_offset, lost.base_offset,
        "the lost batch's offsets are reused"
    );
    // ...but the old ticket still reports the loss.
    assert!(!lost.ticket.is_durable());
    assert!(lost.ticket.wait(Duration::from_millis(10)).is_err());
    assert_eq!(ids_in(&log), vec![2]);
}
