//! Behaviour of the log through its public API, on real files.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use lungfish_log::{BatchBuilder, FsyncPolicy, Log, LogConfig, LogError, OffsetCommit, Producer};

const WAIT: Duration = Duration::from_secs(10);

fn config(policy: FsyncPolicy) -> LogConfig {
    LogConfig {
        partitions: 2,
        segment_bytes: 64 * 1024,
        fsync: policy,
        max_batch_bytes: 16 * 1024,
        retention: lungfish_log::Retention::default(),
    }
}

fn batch(records: &[Vec<u8>]) -> BatchBuilder {
    let mut b = BatchBuilder::new();
    for r in records {
        b.push(r);
    }
    b
}

fn read_all(log: &Log, partition: u32, from: u64) -> Vec<(u64, Vec<u8>)> {
    let mut reader = log.reader(partition, from).unwrap();
    let mut out = Vec::new();
    loop {
        let chunk = reader.read(4096).unwrap();
        if chunk.is_empty() {
            return out;
        }
        out.extend(chunk.records().map(|(o, r)| (o, r.to_vec())));
    }
}

fn record(i: u64) -> Vec<u8> {
    format!("record-{i:06}-{}", "x".repeat((i % 137) as usize)).into_bytes()
}

#[test]
fn appends_are_read_back_in_order_across_segment_rolls_and_reopen() {
    for policy in [
        FsyncPolicy::Always,
        FsyncPolicy::Every(Duration::from_millis(2)),
        FsyncPolicy::Never,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut expected = Vec::new();
        {
            let log = Log::open(dir.path(), config(policy)).unwrap();
            let mut i = 0u64;
            for _ in 0..60 {
                let recs: Vec<Vec<u8>> = (0..20).map(|k| record(i + k)).collect();
                let a = log.append(1, &mut batch(&recs), None).unwrap();
                assert_eq!(a.base_offset, i);
                assert_eq!(a.next_offset, i + 20);
                a.ticket.wait(WAIT).unwrap();
                for (k, r) in recs.into_iter().enumerate() {
                    expected.push((i + k as u64, r));
                }
                i += 20;
            }
            assert!(
                log.stats(1).unwrap().segments > 1,
                "the test should roll segments"
            );
            assert_eq!(read_all(&log, 1, 0), expected, "{policy:?}");
            assert!(read_all(&log, 0, 0).is_empty());
        }
        let log = Log::open(dir.path(), config(policy)).unwrap();
        assert_eq!(read_all(&log, 1, 0), expected, "after reopen, {policy:?}");
        assert_eq!(log.end_offset(1), 1200);
        // Reading from the middle starts exactly at the asked offset.
        assert_eq!(read_all(&log, 1, 777), expected[777..].to_vec());
        // Appending after reopen continues the offsets.
        let a = log
            .append(1, &mut batch(&[b"more".to_vec()]), None)
            .unwrap();
        assert_eq!(a.base_offset, 1200);
    }
}

#[test]
fn a_reader_only_sees_durable_batches_and_wakes_when_more_arrive() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(
        dir.path(),
        config(FsyncPolicy::Every(Duration::from_millis(20))),
    )
    .unwrap();
    let mut reader = log.reader(0, 0).unwrap();
    assert!(reader.read(1 << 20).unwrap().is_empty());
    let a = log.append(0, &mut batch(&[b"a".to_vec()]), None).unwrap();
    assert!(reader.wait(WAIT), "the reader is woken by the fsync");
    assert!(a.ticket.is_durable());
    let chunk = reader.read(1 << 20).unwrap();
    assert_eq!(chunk.records().collect::<Vec<_>>(), vec![(0, &b"a"[..])]);
    assert!(!reader.wait(Duration::from_millis(50)), "no more data");
}

#[test]
fn reads_are_bounded_in_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), config(FsyncPolicy::Never)).unwrap();
    for i in 0..200u64 {
        log.append(0, &mut batch(&[vec![i as u8; 1000]]), None)
            .unwrap();
    }
    let mut reader = log.reader(0, 0).unwrap();
    let mut seen = 0;
    loop {
        let chunk = reader.read(8 * 1024).unwrap();
        if chunk.is_empty() {
            break;
        }
        assert!(chunk.bytes() <= 8 * 1024, "read {} bytes", chunk.bytes());
        seen += chunk.record_count();
    }
    assert_eq!(seen, 200);
    // A batch larger than the read size is still returned, alone.
    log.append(0, &mut batch(&[vec![7; 12 * 1024]]), None)
        .unwrap();
    let chunk = reader.read(1024).unwrap();
    assert_eq!(chunk.record_count(), 1);
}

#[test]
fn oversized_batches_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), config(FsyncPolicy::Never)).unwrap();
    let err = log
        .append(0, &mut batch(&[vec![0; 20 * 1024]]), None)
        .unwrap_err();
    assert!(matches!(err, LogError::BatchTooLarge { .. }), "{err}");
}

#[test]
fn producers_are_idempotent_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let producer = |seq| Some(Producer { id: 42, seq });
    {
        let log = Log::open(dir.path(), config(FsyncPolicy::Always)).unwrap();
        // Enough batches to roll segments, so the snapshot path is exercised.
        for seq in 1..=100u64 {
            let a = log
                .append(0, &mut batch(&[vec![1; 900]]), producer(seq))
                .unwrap();
            assert!(!a.duplicate);
        }
        assert!(log.stats(0).unwrap().segments > 1);
        let dup = log
            .append(0, &mut batch(&[b"again".to_vec()]), producer(100))
            .unwrap();
        assert!(dup.duplicate);
        dup.ticket.wait(WAIT).unwrap();
        assert_eq!(log.end_offset(0), 100);
        // An empty batch records a position without adding records.
        log.append(1, &mut BatchBuilder::new(), producer(7))
            .unwrap();
        assert_eq!(log.end_offset(1), 0);
    }
    let log = Log::open(dir.path(), config(FsyncPolicy::Always)).unwrap();
    assert_eq!(log.producer_seq(0, 42), Some(100));
    assert_eq!(log.producer_seq(1, 42), Some(7));
    assert_eq!(log.producer_seq(0, 43), None);
    assert!(
        log.append(0, &mut batch(&[b"x".to_vec()]), producer(50))
            .unwrap()
            .duplicate
    );
    assert!(
        !log.append(0, &mut batch(&[b"x".to_vec()]), producer(101))
            .unwrap()
            .duplicate
    );

    // A missing snapshot is rebuilt by scanning older segments.
    drop(log);
    let pdir = dir.path().join("p0000");
    for entry in fs::read_dir(&pdir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "producers") {
            fs::remove_file(path).unwrap();
        }
    }
    let log = Log::open(dir.path(), config(FsyncPolicy::Always)).unwrap();
    assert_eq!(log.producer_seq(0, 42), Some(101));
}

#[test]
fn offsets_are_durable_monotonic_and_carry_metadata() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = Log::open(dir.path(), config(FsyncPolicy::Always)).unwrap();
        let recs: Vec<Vec<u8>> = (0..10).map(record).collect();
        log.append(0, &mut batch(&recs), None)
            .unwrap()
            .ticket
            .wait(WAIT)
            .unwrap();
        assert_eq!(log.committed("c").unwrap(), vec![None, None]);
        log.commit(
            "c",
            &[OffsetCommit {
                partition: 0,
                offset: 4,
                metadata: b"m4",
            }],
        )
        .unwrap();
        let err = log
            .commit(
                "c",
                &[OffsetCommit {
                    partition: 0,
                    offset: 3,
                    metadata: b"",
                }],
            )
            .unwrap_err();
        assert!(
            matches!(
                err,
                LogError::OffsetRegression {
                    committed: 4,
                    attempted: 3,
                    ..
                }
            ),
            "{err}"
        );
        let err = log
            .commit(
                "c",
                &[OffsetCommit {
                    partition: 0,
                    offset: 11,
                    metadata: b"",
                }],
            )
            .unwrap_err();
        assert!(matches!(err, LogError::OffsetPastEnd { .. }), "{err}");
        log.commit(
            "c",
            &[OffsetCommit {
                partition: 0,
                offset: 10,
                metadata: b"m10",
            }],
        )
        .unwrap();
        assert!(log.commit("bad/name", &[]).is_err());
    }
    let log = Log::open(dir.path(), config(FsyncPolicy::Always)).unwrap();
    let c = log.committed("c").unwrap();
    assert_eq!(c[0].as_ref().unwrap().offset, 10);
    assert_eq!(c[0].as_ref().unwrap().metadata, b"m10");
    assert_eq!(c[1], None);
    assert_eq!(log.consumers().unwrap(), vec!["c".to_owned()]);
    // Explicit reset may move backwards.
    log.reset_offsets(
        "c",
        &[OffsetCommit {
            partition: 0,
            offset: 0,
            metadata: b"",
        }],
    )
    .unwrap();
    assert_eq!(log.committed("c").unwrap()[0].as_ref().unwrap().offset, 0);
}

fn last_segment(pdir: &Path) -> std::path::PathBuf {
    let mut segs: Vec<_> = fs::read_dir(pdir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    segs.sort();
    segs.pop().unwrap()
}

#[test]
fn a_torn_tail_is_truncated_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = Log::open(dir.path(), config(FsyncPolicy::Always)).unwrap();
        for i in 0..5u64 {
            log.append(0, &mut batch(&[record(i)]), None)
                .unwrap()
                .ticket
                .wait(WAIT)
                .unwrap();
        }
    }
    let seg = last_segment(&dir.path().join("p0000"));
    let good_len = fs::metadata(&seg).unwrap().len();
    // A torn write: half a batch header and some garbage.
    OpenOptions::new()
        .append(true)
        .open(&seg)
        .unwrap()
        .write_all(b"LFB1\x10\x00\x00")
        .unwrap();
    let log = Log::open(dir.path(), config(FsyncPolicy::Always)).unwrap();
    assert_eq!(log.recovery()[0].truncated_bytes, 7);
    assert_eq!(fs::metadata(&seg).unwrap().len(), good_len);
    assert_eq!(read_all(&log, 0, 0).len(), 5);
    // The log goes on after the cut.
    let a = log
        .append(0, &mut batch(&[b"next".to_vec()]), None)
        .unwrap();
    assert_eq!(a.base_offset, 5);
}

#[test]
fn a_flipped_byte_in_a_sealed_segment_is_an_error_naming_the_place() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = Log::open(dir.path(), config(FsyncPolicy::Never)).unwrap();
        for i in 0..200u64 {
            log.append(0, &mut batch(&[vec![(i % 251) as u8; 800]]), None)
                .unwrap();
        }
        assert!(log.stats(0).unwrap().segments > 2);
    }
    let pdir = dir.path().join("p0000");
    let first = pdir.join(format!("{:020}.log", 0));
    let mut bytes = fs::read(&first).unwrap();
    bytes[3000] ^= 0x40;
    fs::write(&first, &bytes).unwrap();
    let log = Log::open(dir.path(), config(FsyncPolicy::Never)).unwrap();
    let mut reader = log.reader(0, 0).unwrap();
    let err = loop {
        match reader.read(1 << 20) {
            Ok(c) if c.is_empty() => panic!("the corruption was not detected"),
            Ok(_) => continue,
            Err(e) => break e,
        }
    };
    match err {
        LogError::Corrupt {
            partition,
            segment,
            position,
            ..
        } => {
            assert_eq!(partition, 0);
            assert_eq!(segment, first);
            assert!(
                position <= 3000 && 3000 - position < 900,
                "position {position}"
            );
        }
        other => panic!("expected Corrupt, got {other}"),
    }
}

#[test]
fn the_partition_count_cannot_change() {
    let dir = tempfile::tempdir().unwrap();
    drop(Log::open(dir.path(), config(FsyncPolicy::Never)).unwrap());
    let mut other = config(FsyncPolicy::Never);
    other.partitions = 3;
    let err = Log::open(dir.path(), other).unwrap_err();
    assert!(
        matches!(
            err,
            LogError::PartitionCountMismatch {
                existing: 2,
                configured: 3,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn tickets_and_readers_can_be_awaited() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(
        dir.path(),
        config(FsyncPolicy::Every(Duration::from_millis(5))),
    )
    .unwrap();
    let reader = log.reader(0, 0).unwrap();
    let waiter = tokio::spawn(async move { reader.wait_async().await });
    let a = log.append(0, &mut batch(&[b"z".to_vec()]), None).unwrap();
    tokio::time::timeout(WAIT, a.ticket.wait_async())
        .await
        .unwrap()
        .unwrap();
    assert!(tokio::time::timeout(WAIT, waiter).await.unwrap().unwrap());
}

#[test]
fn concurrent_appenders_share_fsyncs_and_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), config(FsyncPolicy::Always)).unwrap();
    std::thread::scope(|s| {
        for t in 0..4u8 {
            let log = log.clone();
            s.spawn(move || {
                for i in 0..100u8 {
                    let a = log.append(0, &mut batch(&[vec![t, i]]), None).unwrap();
                    a.ticket.wait(WAIT).unwrap();
                }
            });
        }
    });
    let all = read_all(&log, 0, 0);
    assert_eq!(all.len(), 400);
    for t in 0..4u8 {
        let mine: Vec<u8> = all
            .iter()
            .filter(|(_, r)| r[0] == t)
            .map(|(_, r)| r[1])
            .collect();
        assert_eq!(
            mine,
            (0..100).collect::<Vec<u8>>(),
            "per-writer order holds"
        );
    }
}

#[test]
fn a_segment_of_only_empty_batches_does_not_roll_onto_itself() {
    // Found by the crash-point enumeration: rolling a segment with no record gave the new
    // segment the same name, and writing restarted at byte 0 of the live file.
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig {
        partitions: 1,
        segment_bytes: 4096,
        fsync: FsyncPolicy::Always,
        max_batch_bytes: 4096,
        retention: lungfish_log::Retention::default(),
    };
    {
        let log = Log::open(dir.path(), cfg.clone()).unwrap();
        let a = log.append(0, &mut batch(&[vec![1; 100]]), None).unwrap();
        a.ticket.wait(WAIT).unwrap();
        for seq in 1..=300u64 {
            let a = log
                .append(0, &mut BatchBuilder::new(), Some(Producer { id: 5, seq }))
                .unwrap();
            a.ticket.wait(WAIT).unwrap();
        }
        assert_eq!(log.end_offset(0), 1);
        let a = log.append(0, &mut batch(&[vec![2; 100]]), None).unwrap();
        a.ticket.wait(WAIT).unwrap();
        assert_eq!(a.base_offset, 1);
        log.close().unwrap();
    }
    let log = Log::open(dir.path(), cfg).unwrap();
    assert_eq!(log.producer_seq(0, 5), Some(300));
    let records: Vec<_> = read_all(&log, 0, 0)
        .into_iter()
        .map(|(o, r)| (o, r[0]))
        .collect();
    assert_eq!(records, vec![(0, 1), (1, 2)]);
}
