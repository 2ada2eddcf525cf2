//! Model test: random appends, acknowledgements, commits and crashes that cut the last
//! segment at a random byte (and sometimes leave garbage), against a simple model.
//!
//! Invariants checked after every reopen:
//! * every acknowledged batch is there, in order, with its records intact;
//! * nothing that was never appended appears: the log is a prefix of what was appended;
//! * committed offsets survive and never go backwards, and stay within the log;
//! * each producer's recovered sequence is the one of the last surviving batch.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lungfish_log::{BatchBuilder, FsyncPolicy, Log, LogConfig, OffsetCommit, Producer};
use proptest::prelude::*;

const PRODUCER: u64 = 9;

#[derive(Debug, Clone)]
enum Op {
    /// Append a batch of `records` records of about `size` bytes each; wait for
    /// durability (acknowledge) if `ack`.
    Append { records: u8, size: u16, ack: bool },
    /// Commit the consumer at this share (per mille) of the acknowledged records.
    Commit { permille: u16 },
    /// Crash: cut the last segment at a random byte past the acknowledged data, maybe
    /// add garbage, and reopen.
    Crash { cut_permille: u16, garbage: u8 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1u8..20, 1u16..600, any::<bool>()).prop_map(|(records, size, ack)| Op::Append { records, size, ack }),
        1 => (0u16..=1000).prop_map(|permille| Op::Commit { permille }),
        1 => (0u16..=1000, 0u8..40).prop_map(|(cut_permille, garbage)| Op::Crash { cut_permille, garbage }),
    ]
}

fn config() -> LogConfig {
    LogConfig {
        partitions: 1,
        segment_bytes: 16 * 1024,
        fsync: FsyncPolicy::Never,
        max_batch_bytes: 16 * 1024,
        retention: lungfish_log::Retention::default(),
    }
}

fn last_segment(pdir: &Path) -> PathBuf {
    let mut segs: Vec<_> = fs::read_dir(pdir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    segs.sort();
    segs.pop().unwrap()
}

/// Contents of a record: its index and a size, so any mix-up shows.
fn payload(index: u64, size: u16) -> Vec<u8> {
    let mut v = index.to_le_bytes().to_vec();
    v.extend((0..size).map(|i| (index as u16).wrapping_add(i) as u8));
    v
}

struct Model {
    /// Every appended batch, in order: (records, producer seq).
    batches: Vec<(Vec<Vec<u8>>, u64)>,
    /// How many of `batches` are acknowledged (a prefix: acknowledging one batch makes
    /// all before it durable too).
    acked: usize,
    /// Byte length of the last segment when the last acknowledged batch was written, and
    /// which segment that was.
    acked_at: Option<(PathBuf, u64)>,
    committed: Option<u64>,
    next_seq: u64,
}

impl Model {
    fn acked_records(&self) -> u64 {
        self.batches[..self.acked]
            .iter()
            .map(|(r, _)| r.len() as u64)
            .sum()
    }
}

fn check(log: &Log, model: &Model) -> Result<usize, TestCaseError> {
    let mut reader = log.reader(0, 0).unwrap();
    let mut got = Vec::new();
    loop {
        let chunk = reader.read(64 * 1024).unwrap();
        if chunk.is_empty() {
            break;
        }
        got.extend(chunk.records().map(|(o, r)| (o, r.to_vec())));
    }
    let appended: Vec<&Vec<u8>> = model.batches.iter().flat_map(|(r, _)| r).collect();
    prop_assert!(
        got.len() <= appended.len(),
        "records appeared that were never appended"
    );
    for (i, (offset, rec)) in got.iter().enumerate() {
        prop_assert_eq!(*offset, i as u64);
        prop_assert_eq!(rec, appended[i], "record {} differs", i);
    }
    prop_assert!(
        got.len() as u64 >= model.acked_records(),
        "acknowledged records were lost"
    );
    // The surviving batches are a prefix of the appended ones: count them.
    let mut n = 0usize;
    let mut total = 0usize;
    while n < model.batches.len() && total + model.batches[n].0.len() <= got.len() {
        total += model.batches[n].0.len();
        n += 1;
    }
    prop_assert_eq!(total, got.len(), "a batch survived only in part");
    let expected_seq = model.batches[..n].last().map(|(_, s)| *s);
    prop_assert_eq!(log.producer_seq(0, PRODUCER), expected_seq);
    let committed = log.committed("model").unwrap()[0]
        .as_ref()
        .map(|c| c.offset);
    prop_assert_eq!(committed, model.committed);
    if let Some(c) = committed {
        prop_assert!(c <= log.end_offset(0));
    }
    Ok(n)
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let pdir = dir.path().join("p0000");
    let mut log = Log::open(dir.path(), config()).unwrap();
    let mut model = Model {
        batches: Vec::new(),
        acked: 0,
        acked_at: None,
        committed: None,
        next_seq: 1,
    };
    for op in ops {
        match op {
            Op::Append { records, size, ack } => {
                let base: u64 = model.batches.iter().map(|(r, _)| r.len() as u64).sum();
                let recs: Vec<Vec<u8>> = (0..records as u64)
                    .map(|i| payload(base + i, size))
                    .collect();
                let mut b = BatchBuilder::new();
                for r in &recs {
                    b.push(r);
                }
                if b.encoded_len() > config().max_batch_bytes {
                    continue;
                }
                let seq = model.next_seq;
                model.next_seq += 1;
                let a = log
                    .append(0, &mut b, Some(Producer { id: PRODUCER, seq }))
                    .unwrap();
                prop_assert!(!a.duplicate);
                prop_assert_eq!(a.base_offset, base);
                model.batches.push((recs, seq));
                if ack {
                    a.ticket.wait(Duration::from_secs(5)).unwrap();
                    model.acked = model.batches.len();
                    let seg = last_segment(&pdir);
                    let len = fs::metadata(&seg).unwrap().len();
                    model.acked_at = Some((seg, len));
                }
            }
            Op::Commit { permille } => {
                let target = model.acked_records() * permille as u64 / 1000;
                let r = log.commit(
                    "model",
                    &[OffsetCommit {
                        partition: 0,
                        offset: target,
                        metadata: b"",
                    }],
                );
                match model.committed {
                    Some(c) if target < c => prop_assert!(r.is_err(), "a commit went backwards"),
                    _ => {
                        r.unwrap();
                        model.committed = Some(target);
                    }
                }
            }
            Op::Crash {
                cut_permille,
                garbage,
            } => {
                drop(log);
                let seg = last_segment(&pdir);
                let len = fs::metadata(&seg).unwrap().len();
                // Only bytes past the acknowledged data may be lost.
                let floor = match &model.acked_at {
                    Some((s, l)) if *s == seg => *l,
                    _ => 0,
                };
                let cut = floor + (len - floor) * cut_permille as u64 / 1000;
                let f = fs::OpenOptions::new().write(true).open(&seg).unwrap();
                f.set_len(cut).unwrap();
                if garbage > 0 {
                    use std::io::{Seek, SeekFrom, Write};
                    let mut f = f;
                    f.seek(SeekFrom::End(0)).unwrap();
                    f.write_all(&vec![garbage; garbage as usize]).unwrap();
                }
                log = Log::open(dir.path(), config()).unwrap();
                let survivors = check(&log, &model)?;
                model.batches.truncate(survivors);
                model.acked = model.acked.min(survivors);
                model.next_seq = model.batches.last().map_or(1, |(_, s)| s + 1);
                // After recovery everything that survived is durable and acknowledged.
                model.acked = model.batches.len();
                let seg = last_segment(&pdir);
                let len = fs::metadata(&seg).unwrap().len();
                model.acked_at = Some((seg, len));
            }
        }
    }
    drop(log);
    let log = Log::open(dir.path(), config()).unwrap();
    check(&log, &model)?;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        failure_persistence: Some(Box::new(proptest::test_runner::FileFailurePersistence::WithSource("regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn acknowledged_batches_survive_crashes(ops in proptest::collection::vec(op(), 1..80)) {
        run(ops)?;
    }
}
