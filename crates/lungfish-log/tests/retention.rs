//! Retention, size limits, replay by time, and how recovery tells bit rot in
//! acknowledged data from an unacknowledged torn tail.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lungfish_log::{
    BatchBuilder, FsyncPolicy, Log, LogConfig, LogError, OffsetCommit, Retention, WhenFull,
};

const WAIT: Duration = Duration::from_secs(10);

fn config(retention: Retention) -> LogConfig {
    LogConfig {
        partitions: 1,
        segment_bytes: 16 * 1024,
        fsync: FsyncPolicy::Always,
        max_batch_bytes: 8 * 1024,
        retention,
    }
}

/// Appends `n` batches of one 1 KiB record each (about 16 per segment); returns the
/// offset after them.
fn fill(log: &Log, n: usize) -> u64 {
    let mut end = 0;
    for i in 0..n {
        let mut b = BatchBuilder::new();
        b.push(&vec![(i % 251) as u8; 1000]);
        let a = log.append(0, &mut b, None).unwrap();
        a.ticket.wait(WAIT).unwrap();
        end = a.next_offset;
    }
    end
}

fn commit(log: &Log, consumer: &str, offset: u64) {
    log.commit(
        consumer,
        &[OffsetCommit {
            partition: 0,
            offset,
            metadata: b"",
        }],
    )
    .unwrap();
}

fn read_offsets(log: &Log, from: u64) -> Vec<u64> {
    let mut reader = log.reader(0, from).unwrap();
    let mut out = Vec::new();
    loop {
        let chunk = reader.read(1 << 20).unwrap();
        if chunk.is_empty() {
            return out;
        }
        out.extend(chunk.records().map(|(o, _)| o));
    }
}

#[test]
fn only_segments_every_consumer_has_read_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(
        dir.path(),
        config(Retention {
            target_bytes: Some(32 * 1024),
            ..Retention::default()
        }),
    )
    .unwrap();
    let end = fill(&log, 100);
    assert!(log.stats(0).unwrap().segments >= 6);
    commit(&log, "fast", end);
    commit(&log, "slow", 20);
    let report = log.apply_retention().unwrap();
    // Only what "slow" has read may go: segments ending at or before offset 20.
    let start = log.stats(0).unwrap().start_offset;
    assert!(start <= 20, "start {start}");
    assert!(report[0].deleted_segments >= 1, "{report:?}");
    assert!(report[0].lost.is_empty());
    // Once "slow" catches up, the partition shrinks to the target (plus the active one).
    commit(&log, "slow", end);
    log.apply_retention().unwrap();
    let stats = log.stats(0).unwrap();
    assert!(stats.bytes <= 32 * 1024 + 16 * 1024, "{stats:?}");
    assert_eq!(
        read_offsets(&log, stats.start_offset).last(),
        Some(&(end - 1))
    );
}

#[test]
fn a_consumer_behind_retention_jumps_to_the_first_record_left() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(
        dir.path(),
        config(Retention {
            max_bytes: Some(48 * 1024),
            when_full: WhenFull::DeleteOldest,
            ..Retention::default()
        }),
    )
    .unwrap();
    commit(&log, "lagging", 0);
    let end = fill(&log, 100);
    let report = log.apply_retention().unwrap();
    assert_eq!(
        report[0].lost,
        vec![("lagging".to_owned(), 0)],
        "the consumer that lost data is named"
    );
    let start = log.stats(0).unwrap().start_offset;
    assert!(start > 0);
    let got = read_offsets(&log, 0);
    assert_eq!(
        got.first(),
        Some(&start),
        "reading from a deleted offset starts at the first record left"
    );
    assert_eq!(got.len() as u64, end - start);
    // The chunk that jumps the gap counts the records it holds, not the deleted ones.
    let mut reader = log.reader(0, 0).unwrap();
    let chunk = reader.read(1 << 20).unwrap();
    assert_eq!(chunk.record_count(), chunk.records().count() as u64);
}

#[test]
fn a_full_partition_refuses_appends_naming_the_consumer_until_it_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(
        dir.path(),
        config(Retention {
            max_bytes: Some(48 * 1024),
            when_full: WhenFull::Refuse,
            ..Retention::default()
        }),
    )
    .unwrap();
    commit(&log, "reader", 0);
    let mut appended = 0u64;
    let err = loop {
        let mut b = BatchBuilder::new();
        b.push(&[7; 1000]);
        match log.append(0, &mut b, None) {
            Ok(a) => {
                a.ticket.wait(WAIT).unwrap();
                appended += 1;
            }
            Err(e) => break e,
        }
        assert!(appended < 1000, "the limit was never enforced");
    };
    match &err {
        LogError::Full { lagging, limit, .. } => {
            assert_eq!(lagging, &vec!["reader".to_owned()]);
            assert_eq!(*limit, 48 * 1024);
        }
        other => panic!("expected Full, got {other}"),
    }
    assert!(err.is_transient());
    // Nothing was lost and the log stays readable.
    assert_eq!(read_offsets(&log, 0).len() as u64, appended);
    // The consumer catches up: retention frees space and appends go on.
    commit(&log, "reader", appended);
    log.apply_retention().unwrap();
    let mut b = BatchBuilder::new();
    b.push(&[8; 1000]);
    log.append(0, &mut b, None)
        .unwrap()
        .ticket
        .wait(WAIT)
        .unwrap();
}

#[test]
fn consumed_segments_older_than_the_age_limit_go() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(
        dir.path(),
        config(Retention {
            max_age: Some(Duration::from_millis(300)),
            ..Retention::default()
        }),
    )
    .unwrap();
    let end = fill(&log, 40);
    commit(&log, "c", end);
    log.apply_retention().unwrap();
    let before = log.stats(0).unwrap().segments;
    assert!(before > 1, "nothing is old yet");
    std::thread::sleep(Duration::from_millis(400));
    fill(&log, 20); // new segments, young
    let end = log.end_offset(0);
    commit(&log, "c", end);
    log.apply_retention().unwrap();
    let stats = log.stats(0).unwrap();
    assert!(stats.start_offset >= 30, "the old segments went: {stats:?}");
}

#[test]
fn offsets_can_be_found_by_time_for_replay() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), config(Retention::default())).unwrap();
    fill(&log, 30);
    std::thread::sleep(Duration::from_millis(50));
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    std::thread::sleep(Duration::from_millis(5));
    fill(&log, 10);
    assert_eq!(log.offset_for_time(0, t).unwrap(), 30);
    assert_eq!(log.offset_for_time(0, 0).unwrap(), 0);
    assert_eq!(log.offset_for_time(0, i64::MAX).unwrap(), 40);
    log.reset_offsets(
        "replay",
        &[OffsetCommit {
            partition: 0,
            offset: 30,
            metadata: b"",
        }],
    )
    .unwrap();
    assert_eq!(
        log.committed("replay").unwrap()[0].as_ref().unwrap().offset,
        30
    );
}

fn last_segment(dir: &Path) -> PathBuf {
    let mut segs: Vec<_> = fs::read_dir(dir.join("p0000"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    segs.sort();
    segs.pop().unwrap()
}

#[test]
fn bit_rot_before_the_recovery_point_fails_open_and_after_it_is_cut() {
    let big = Retention::default();
    let cfg = LogConfig {
        segment_bytes: 1 << 20,
        ..config(big)
    };
    // Acknowledged data, closed cleanly: the recovery point covers all of it.
    let dir = tempfile::tempdir().unwrap();
    {
        let log = Log::open(dir.path(), cfg.clone()).unwrap();
        fill(&log, 20);
        log.close().unwrap();
    }
    let seg = last_segment(dir.path());
    let mut bytes = fs::read(&seg).unwrap();
    bytes[5000] ^= 0x01;
    fs::write(&seg, &bytes).unwrap();
    let err = Log::open(dir.path(), cfg.clone()).unwrap_err();
    match err {
        LogError::Corrupt {
            partition,
            segment,
            position,
            ..
        } => {
            assert_eq!((partition, segment), (0, seg.clone()));
            assert!(
                position <= 5000 && 5000 - position < 1100,
                "position {position}"
            );
        }
        other => panic!("expected Corrupt, got {other}"),
    }

    // The same damage past the recovery point (data appended after it was written,
    // never acknowledged in this scenario) is a torn tail: cut, and the log opens.
    let dir = tempfile::tempdir().unwrap();
    {
        let log = Log::open(dir.path(), cfg.clone()).unwrap();
        fill(&log, 5);
        log.close().unwrap();
    }
    let point = fs::metadata(last_segment(dir.path())).unwrap().len();
    {
        // Append more without a recovery point update: a log opened with `never`
        // writes no point, like a crash right after the writes.
        let log = Log::open(
            dir.path(),
            LogConfig {
                fsync: FsyncPolicy::Never,
                ..cfg.clone()
            },
        )
        .unwrap();
        fill(&log, 5);
    }
    let seg = last_segment(dir.path());
    let mut bytes = fs::read(&seg).unwrap();
    let flip = point as usize + 1500;
    bytes[flip] ^= 0x01;
    fs::write(&seg, &bytes).unwrap();
    let log = Log::open(dir.path(), cfg).unwrap();
    assert!(log.recovery()[0].truncated_bytes > 0);
    assert_eq!(
        read_offsets(&log, 0).len(),
        6,
        "five acknowledged batches and the one before the damage"
    );
}

#[test]
fn repair_sets_a_damaged_tail_aside_and_the_log_opens_and_reads_again() {
    let cfg = LogConfig {
        segment_bytes: 1 << 20,
        ..config(Retention::default())
    };
    let dir = tempfile::tempdir().unwrap();
    {
        let log = Log::open(dir.path(), cfg.clone()).unwrap();
        fill(&log, 20);
        log.close().unwrap();
    }
    let seg = last_segment(dir.path());
    let original = fs::read(&seg).unwrap();
    let mut bytes = original.clone();
    bytes[5000] ^= 0x01;
    fs::write(&seg, &bytes).unwrap();
    assert!(
        Log::open(dir.path(), cfg.clone()).is_err(),
        "bit rot before the recovery point fails open"
    );

    let report = lungfish_log::repair(dir.path()).unwrap();
    assert_eq!(report.damaged.len(), 1, "{report:?}");
    let d = &report.damaged[0];
    assert_eq!((d.partition, &d.segment), (0, &seg));
    // Batches are 1056 bytes: a 52-byte header, a 4-byte record length, 1000 bytes.
    assert!(
        d.position <= 5000 && d.position.is_multiple_of(1056),
        "{d:?}"
    );
    assert_eq!(d.first_lost_offset, d.position / 1056);
    assert_eq!(d.bytes_moved, original.len() as u64 - d.position);
    // The moved bytes are kept, not deleted.
    assert_eq!(
        fs::read(&d.moved_to).unwrap(),
        bytes[d.position as usize..].to_vec()
    );

    let log = Log::open(dir.path(), cfg.clone()).unwrap();
    assert_eq!(
        read_offsets(&log, 0),
        (0..d.first_lost_offset).collect::<Vec<_>>()
    );
    // Appends go on after the cut.
    let mut b = BatchBuilder::new();
    b.push(b"after repair");
    assert_eq!(
        log.append(0, &mut b, None).unwrap().base_offset,
        d.first_lost_offset
    );
    drop(log);
    assert!(
        lungfish_log::repair(dir.path()).unwrap().damaged.is_empty(),
        "a repaired log verifies clean"
    );
}

#[test]
fn damage_in_a_sealed_segment_is_an_error_until_repair_and_then_a_skipped_gap() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = Log::open(dir.path(), config(Retention::default())).unwrap();
        fill(&log, 60); // about four segments
        log.close().unwrap();
    }
    let first = dir.path().join("p0000").join(format!("{:020}.log", 0));
    let mut bytes = fs::read(&first).unwrap();
    bytes[3000] ^= 0x10;
    fs::write(&first, &bytes).unwrap();
    let log = Log::open(dir.path(), config(Retention::default())).unwrap();
    let mut reader = log.reader(0, 0).unwrap();
    let err = loop {
        let before = reader.position();
        match reader.read(1 << 20) {
            Ok(c) if c.is_empty() => panic!("the damage went unnoticed"),
            Ok(_) => {}
            Err(e) => {
                assert_eq!(reader.position(), before, "a failed read moves the reader");
                break e;
            }
        }
    };
    assert!(matches!(err, LogError::Corrupt { .. }), "{err}");
    // The records before the damage are still there for the same reader.
    let chunk = reader.read(1).unwrap();
    assert_eq!(chunk.records().next().map(|(o, _)| o), Some(0));
    drop(reader);
    drop(log);
    let report = lungfish_log::repair(dir.path()).unwrap();
    assert_eq!(report.damaged.len(), 1);
    let d = &report.damaged[0];
    let next = d
        .end_lost_offset
        .expect("a later segment says where the loss ends");
    let log = Log::open(dir.path(), config(Retention::default())).unwrap();
    let got = read_offsets(&log, 0);
    let want: Vec<u64> = (0..d.first_lost_offset).chain(next..60).collect();
    assert_eq!(
        got, want,
        "everything outside the damaged range is read, the gap skipped"
    );
}

#[test]
fn a_segment_cut_short_at_a_batch_boundary_below_the_recovery_point_is_not_silently_accepted() {
    // Found while fuzzing recovery: losing exactly one whole acknowledged batch opened
    // without a word.
    let cfg = LogConfig {
        segment_bytes: 1 << 20,
        ..config(Retention::default())
    };
    let dir = tempfile::tempdir().unwrap();
    {
        let log = Log::open(dir.path(), cfg.clone()).unwrap();
        fill(&log, 3);
        log.close().unwrap();
    }
    let seg = last_segment(dir.path());
    let len = fs::metadata(&seg).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(len - 1056)
        .unwrap();
    let err = Log::open(dir.path(), cfg.clone()).unwrap_err();
    assert!(
        matches!(err, LogError::Corrupt { .. })
            && err.to_string().contains("acknowledged data is missing"),
        "{err}"
    );
    let report = lungfish_log::repair(dir.path()).unwrap();
    assert_eq!(report.damaged.len(), 1);
    assert_eq!(report.damaged[0].first_lost_offset, 2);
    let log = Log::open(dir.path(), cfg).unwrap();
    assert_eq!(read_offsets(&log, 0), vec![0, 1]);
}
