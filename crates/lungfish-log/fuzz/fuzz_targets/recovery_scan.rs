//! Fuzzer bytes as the only segment file of partition 0, then `Log::open` and a read of
//! everything. Recovery must never panic or hang and must follow the recovery rules:
//!
//! * without a recovery point, or when the first bad byte lies at or after it, open
//!   succeeds and keeps exactly the longest prefix of valid, contiguous batches, cutting
//!   the rest; a reader then returns exactly that prefix's records, from the start and
//!   from any offset, and the recovered log takes a new append and survives a reopen;
//! * when a batch before the recovery point is bad, open fails with `Corrupt` and
//!   leaves the segment as it was.
//!
//! Input: three control bytes, then the segment. First control byte:
//! * bits 0-1: the maximum batch length (4 KiB, 16 KiB, 64 KiB, 1 MiB);
//! * bits 2-3: the reader's byte budget per read (64 B, 4 KiB, 64 KiB, 1 MiB);
//! * bit 4: before writing, repair each frame the bytes describe (magic, base offset
//!   continuing from the previous frame, CRC), so the fuzzer gets past the checks and
//!   explores what lies behind them (mostly-valid segments with a bad tail);
//! * bit 5: after reading, append a batch to the recovered log and reopen it.
//!
//! The second control byte picks the offset a second reader starts from; the third the
//! recovery point: none, or one of a few real ones, made at startup by closing logs
//! whose segment ended at known positions.
//!
//! The log directory is laid out once per process (a log with one partition is opened
//! and closed), in `$LUNGFISH_FUZZ_TMP`, else /dev/shm when there is one; each input
//! restores the partition directory to that layout and overwrites
//! `p0000/00000000000000000000.log`. Memory is bounded by `-rss_limit_mb` and
//! `-max_len`, hangs by `-timeout` (see run.sh).
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use lungfish_log::{BatchBuilder, BatchView, FsyncPolicy, Log, LogConfig, LogError};

const HEADER_LEN: usize = 52;
const MAGIC: &[u8; 4] = b"LFB1";
const MAX_BATCH: [usize; 4] = [4096, 16 * 1024, 64 * 1024, 1 << 20];
const READ_BYTES: [usize; 4] = [64, 4096, 64 * 1024, 1 << 20];
const SEGMENT: &str = "00000000000000000000.log";
/// The partition directory's file that holds the recovery point.
const RECOVERY_POINT: &str = "recovery-point";
/// Recovery points made at startup: (batches, record bytes) appended before the close.
const POINTS: [(usize, usize); 5] = [(1, 0), (1, 100), (3, 100), (10, 300), (40, 1000)];

struct Layout {
    _dir: tempfile::TempDir,
    log: PathBuf,
    partition: PathBuf,
    segment: PathBuf,
    /// The partition directory's files (but the segment) right after the layout was made.
    files: Vec<(String, Vec<u8>)>,
    /// Real recovery points: the position they claim and the file's bytes.
    points: Vec<(u64, Vec<u8>)>,
}

fn config(max_batch: usize, fsync: FsyncPolicy) -> LogConfig {
    LogConfig {
        partitions: 1,
        segment_bytes: 1 << 20,
        fsync,
        max_batch_bytes: max_batch,
        ..LogConfig::default()
    }
}

fn files_of(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .expect("list the partition directory")
        .map(|e| {
            let e = e.unwrap();
            let name = e.file_name().into_string().unwrap();
            let bytes = std::fs::read(e.path()).unwrap();
            (name, bytes)
        })
        .filter(|(name, _)| name != SEGMENT)
        .collect();
    files.sort();
    files
}

fn layout() -> &'static Layout {
    static LAYOUT: OnceLock<Layout> = OnceLock::new();
    LAYOUT.get_or_init(|| {
        // libFuzzer exits without running destructors: run.sh points LUNGFISH_FUZZ_TMP
        // at a directory it removes at the end.
        let shm = PathBuf::from("/dev/shm");
        let root = match std::env::var_os("LUNGFISH_FUZZ_TMP") {
            Some(dir) => PathBuf::from(dir),
            None if shm.is_dir() => shm,
            None => std::env::temp_dir(),
        };
        let dir = tempfile::Builder::new()
            .prefix("lungfish-fuzz-recovery-")
            .tempdir_in(root)
            .expect("temporary directory");
        let mut points = Vec::new();
        for (i, &(batches, record)) in POINTS.iter().enumerate() {
            let path = dir.path().join(format!("point-{i}"));
            let log = Log::open(&path, config(64 * 1024, FsyncPolicy::Always)).expect("open");
            for b in 0..batches {
                let mut batch = BatchBuilder::new();
                batch.push(&vec![b as u8; record]);
                let appended = log.append(0, &mut batch, None).expect("append");
                appended
                    .ticket
                    .wait(Duration::from_secs(10))
                    .expect("durable");
            }
            log.close().expect("close");
            drop(log);
            let part = path.join("p0000");
            let position = std::fs::metadata(part.join(SEGMENT))
                .expect("segment")
                .len();
            let bytes = std::fs::read(part.join(RECOVERY_POINT)).unwrap_or_else(|e| {
                panic!("no recovery point after a clean close ({e}): has the file been renamed?")
            });
            points.push((position, bytes));
            std::fs::remove_dir_all(&path).expect("remove");
        }
        let log = dir.path().join("log");
        Log::open(&log, config(4096, FsyncPolicy::Never))
            .expect("create the layout")
            .close()
            .expect("close");
        let partition = log.join("p0000");
        let segment = partition.join(SEGMENT);
        assert!(
            segment.is_file(),
            "no segment file at {}",
            segment.display()
        );
        let files = files_of(&partition)
            .into_iter()
            .filter(|(name, _)| name != RECOVERY_POINT)
            .collect();
        Layout {
            _dir: dir,
            log,
            partition,
            segment,
            files,
            points,
        }
    })
}

/// Puts the partition directory back as the layout had it, with `point` as the
/// recovery point (none if `None`).
fn restore(layout: &Layout, point: Option<&[u8]>) {
    for e in std::fs::read_dir(&layout.partition).expect("list") {
        let e = e.unwrap();
        let name = e.file_name().into_string().unwrap();
        if name != SEGMENT && !layout.files.iter().any(|(n, _)| *n == name) {
            std::fs::remove_file(e.path()).expect("remove a file left by the last input");
        }
    }
    for (name, bytes) in &layout.files {
        std::fs::write(layout.partition.join(name), bytes).expect("restore");
    }
    if let Some(point) = point {
        std::fs::write(layout.partition.join(RECOVERY_POINT), point).expect("recovery point");
    }
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes(b[i..i + 4].try_into().unwrap())
}

/// Makes each frame the bytes describe well-formed where the fuzzer left it: magic,
/// base offset (continuing from the previous frame) and CRC.
fn repair(bytes: &mut [u8]) {
    let mut pos = 0usize;
    let mut next = 0u64;
    while bytes.len() - pos >= HEADER_LEN {
        let frame_len = 12 + u32_at(bytes, pos + 4) as usize;
        if frame_len < HEADER_LEN || bytes.len() - pos < frame_len {
            return;
        }
        bytes[pos..pos + 4].copy_from_slice(MAGIC);
        bytes[pos + 12..pos + 20].copy_from_slice(&next.to_le_bytes());
        next = next.wrapping_add(u64::from(u32_at(bytes, pos + 20)));
        let crc = crc32c::crc32c(&bytes[pos + 12..pos + frame_len]);
        bytes[pos + 8..pos + 12].copy_from_slice(&crc.to_le_bytes());
        pos += frame_len;
    }
}

/// The recovery rule, independently: the longest prefix of valid batches whose offsets
/// continue from 0. Returns its length in bytes and its records.
fn valid_prefix(bytes: &[u8], max_batch: usize) -> (usize, Vec<(u64, Vec<u8>)>) {
    let mut pos = 0usize;
    let mut next = 0u64;
    let mut records = Vec::new();
    while pos < bytes.len() {
        let Ok(view) = BatchView::decode(&bytes[pos..], max_batch) else {
            break;
        };
        let h = view.header();
        if h.base_offset != next {
            break;
        }
        for (i, (_, r)) in view.records().enumerate() {
            records.push((next + i as u64, r.to_vec()));
        }
        next += u64::from(h.record_count);
        pos += view.frame_len();
    }
    (pos, records)
}

/// Reads partition 0 from `from` to the end, checking that every read makes progress.
fn read_all(log: &Log, from: u64, budget: usize, input_len: usize) -> Vec<(u64, Vec<u8>)> {
    let mut reader = log.reader(0, from).expect("reader");
    let mut out = Vec::new();
    // Each non-empty read consumes at least one frame of at least HEADER_LEN bytes.
    let max_reads = input_len / HEADER_LEN + 2;
    for _ in 0..max_reads {
        let chunk = reader.read(budget).expect("read of recovered data");
        if chunk.is_empty() {
            return out;
        }
        let largest = chunk.batches().map(|b| b.frame_len()).max().unwrap();
        assert!(
            chunk.bytes() <= budget.max(largest),
            "a read of {} bytes with a budget of {budget}",
            chunk.bytes()
        );
        out.extend(chunk.records().map(|(o, r)| (o, r.to_vec())));
    }
    panic!("{max_reads} reads of a {input_len}-byte segment did not reach its end");
}

fuzz_target!(|data: &[u8]| {
    let Some((&[ctl, start, point], segment)) = data.split_first_chunk::<3>() else {
        return;
    };
    let layout = layout();
    let max_batch = MAX_BATCH[(ctl & 3) as usize];
    let budget = READ_BYTES[((ctl >> 2) & 3) as usize];
    let point = match point as usize % (layout.points.len() + 1) {
        0 => None,
        i => Some(&layout.points[i - 1]),
    };
    let mut bytes = segment.to_vec();
    if ctl & 0x10 != 0 {
        repair(&mut bytes);
    }
    restore(layout, point.map(|p| p.1.as_slice()));
    std::fs::write(&layout.segment, &bytes).expect("write the segment");

    let (valid_len, expected) = valid_prefix(&bytes, max_batch);
    let end = expected.last().map_or(0, |(o, _)| o + 1);
    let durable = point.map_or(0, |p| p.0);
    let damaged_before_point = valid_len < bytes.len() && (valid_len as u64) < durable;

    let opened = Log::open(&layout.log, config(max_batch, FsyncPolicy::Never));
    let on_disk = std::fs::read(&layout.segment).expect("read the segment back");
    if damaged_before_point {
        match opened {
            Err(LogError::Corrupt {
                partition,
                position,
                ..
            }) => {
                assert_eq!(partition, 0);
                assert_eq!(position, valid_len as u64, "position of the damage");
            }
            Err(e) => panic!("damage before the recovery point ({durable}): wrong error {e}"),
            Ok(_) => panic!(
                "damage at byte {valid_len}, before the recovery point ({durable}), was not reported"
            ),
        }
        assert!(on_disk == bytes, "a failed recovery changed the segment");
        return;
    }
        // A segment that is valid but shorter than its recovery point lost acknowledged
    // bytes: open must say so.
    if (bytes.len() as u64) < durable {
        match opened {
            Err(LogError::Corrupt { partition, .. }) => assert_eq!(partition, 0),
            Err(e) => panic!("a segment shorter than its recovery point ({durable}): wrong error {e}"),
            Ok(_) => panic!("a segment of {} bytes, shorter than its recovery point ({durable}), was accepted", bytes.len()),
        }
        assert!(on_disk == bytes, "a failed recovery changed the segment");
        return;
    }
    let log = opened.expect("open must recover a last segment damaged after its recovery point");
    let report = &log.recovery()[0];
    assert_eq!(
        report.truncated_bytes,
        (bytes.len() - valid_len) as u64,
        "bytes cut by recovery ({report:?}), valid prefix {valid_len} of {}",
        bytes.len()
    );
    assert!(on_disk[..] == bytes[..valid_len], "segment after recovery");
    assert_eq!(log.end_offset(0), end, "end offset after recovery");

    let all = read_all(&log, 0, budget, bytes.len());
    assert!(
        all == expected,
        "read {} records, expected {}",
        all.len(),
        expected.len()
    );
    if !expected.is_empty() {
        let from = u64::from(start) % (end + 1);
        let rest = read_all(&log, from, budget, bytes.len());
        assert!(
            rest[..] == expected[from as usize..],
            "reading from offset {from}: {} records, expected {}",
            rest.len(),
            expected.len() - from as usize
        );
    }

    if ctl & 0x20 != 0 {
        let mut batch = BatchBuilder::new();
        batch.push(b"after recovery");
        let appended = log
            .append(0, &mut batch, None)
            .expect("append after recovery");
        assert_eq!(appended.base_offset, end);
        appended
            .ticket
            .wait(Duration::from_secs(10))
            .expect("durable");
        log.close().expect("close");
        drop(log);
        let log = Log::open(&layout.log, config(max_batch, FsyncPolicy::Never)).expect("reopen");
        assert_eq!(
            log.recovery()[0].truncated_bytes,
            0,
            "second recovery cut bytes"
        );
        assert_eq!(log.end_offset(0), end + 1);
        let all = read_all(&log, end, budget, bytes.len() + 100);
        assert_eq!(all, vec![(end, b"after recovery".to_vec())]);
    }
});
