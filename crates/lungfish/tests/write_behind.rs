//! Write-behind against real SQLite: a store stalled by another connection's exclusive
//! lock does not slow `write_at`, nor the pipeline's other sinks; the spool survives a
//! stop, is bounded, and drains to exactly the rows written, in order, with their
//! positions.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lungfish::config::{
    AggFunc, AggregateSpec, GeneratorConfig, KeyDistribution, NamedSink, NamedSource, SinkConfig,
    SourceConfig, SqliteSinkConfig,
};
use lungfish::dlq::DeadLetters;
use lungfish::sinks::sqlite::SqliteSink;
use lungfish::sinks::write_behind::{WriteBehind, WriteBehindSettings};
use lungfish::sinks::{DriverSettings, Sink, SinkError, SinkPosition};
use lungfish::window::{RowSchema, WindowRows};
use lungfish::{Control, Pipeline, PipelineConfig};

fn aggregates() -> Vec<AggregateSpec> {
    vec![
        AggregateSpec::count(),
        AggregateSpec::new(AggFunc::Sum, Some("value")),
    ]
}

fn schema() -> Arc<RowSchema> {
    Arc::new(RowSchema::new(&aggregates(), &["value".into()]))
}

/// An SQLite sink that gives up on a locked database after 100 ms (and retries).
fn sqlite_config(db: &Path) -> SqliteSinkConfig {
    let mut config = SqliteSinkConfig::new(db);
    config.write_timeout = Duration::from_millis(100);
    config
}

/// Fast retries and a breaker that probes often, so a test sees the drain soon after
/// the lock goes.
fn settings() -> WriteBehindSettings {
    let mut retry = DriverSettings {
        first_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(50),
        ..DriverSettings::default()
    };
    retry.breaker.open_for = Duration::from_millis(50);
    retry.breaker.max_open_for = Duration::from_millis(200);
    WriteBehindSettings {
        retry,
        drain_on_drop: Duration::ZERO,
        ..WriteBehindSettings::default()
    }
}

/// The store writes that succeeded: (rows, positions), in order.
type Writes = Arc<Mutex<Vec<(usize, Vec<SinkPosition>)>>>;

/// The inner sink as the store sees it: the real SQLite sink, recording every write that
/// succeeded.
struct Recording {
    inner: SqliteSink,
    writes: Writes,
}

impl Sink for Recording {
    fn open(&mut self, schema: &RowSchema) -> Result<(), SinkError> {
        self.inner.open(schema)
    }
    fn write(&mut self, batch: &[Arc<WindowRows>]) -> Result<(), SinkError> {
        self.write_at(batch, &[])
    }
    fn write_at(
        &mut self,
        batch: &[Arc<WindowRows>],
        positions: &[SinkPosition],
    ) -> Result<(), SinkError> {
        self.inner.write_at(batch, positions)?;
        let rows = batch.iter().map(|b| b.len()).sum();
        self.writes.lock().unwrap().push((rows, positions.to_vec()));
        Ok(())
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn stored_rows(&mut self) -> Option<u64> {
        self.inner.stored_rows()
    }
}

fn recording(db: &Path) -> (Box<dyn Sink>, Writes) {
    let writes = Writes::default();
    let sink = Recording {
        inner: SqliteSink::new(&sqlite_config(db)),
        writes: writes.clone(),
    };
    (Box::new(sink), writes)
}

/// Batch `i`: 20 rows. With `overlap`, every batch writes the same keys of window 0
/// (the last write must win: order matters); else keys are new in every batch.
fn batch(i: u64, overlap: bool) -> (Arc<WindowRows>, Vec<SinkPosition>) {
    let mut rows = WindowRows::new(schema());
    for j in 0..20u64 {
        let key = if overlap {
            format!("k{j}")
        } else {
            format!("b{i}-k{j}")
        };
        let start = if overlap { 0 } else { (i % 3) as i64 * 60_000 };
        rows.push(
            start,
            start + 60_000,
            &key,
            &[(i * 100 + j) as f64, i as f64 + 0.25],
        );
    }
    let positions = vec![SinkPosition {
        partition: (i % 2) as u32,
        through: i * 10 + 10,
        watermark: i as i64 * 1000,
    }];
    (Arc::new(rows), positions)
}

type Row = (i64, i64, String, i64, f64);

/// What the table must hold after `sent`, applied in order (upserts by (start, key)).
fn expected(sent: &[(Arc<WindowRows>, Vec<SinkPosition>)]) -> Vec<Row> {
    let mut table = BTreeMap::new();
    for (rows, _) in sent {
        for i in 0..rows.len() {
            table.insert(
                (rows.window_start(i), rows.key(i).to_owned()),
                (
                    rows.window_end(i),
                    rows.value(i, 0) as i64,
                    rows.value(i, 1),
                ),
            );
        }
    }
    table
        .into_iter()
        .map(|((s, k), (e, c, v))| (s, e, k, c, v))
        .collect()
}

fn table(db: &Path) -> Vec<Row> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT window_start, window_end, key, count, sum_value FROM windows ORDER BY 1, 3",
        )
        .unwrap();
    stmt.query_map([], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

fn count(db: &Path) -> Option<usize> {
    let conn = rusqlite::Connection::open(db).ok()?;
    conn.query_row("SELECT count(*) FROM windows", [], |r| r.get::<_, i64>(0))
        .ok()
        .map(|n| n as usize)
}

/// Another connection holding the database's write lock (`BEGIN EXCLUSIVE`; in WAL mode
/// readers still read, writers get SQLITE_BUSY).
struct StoreLock {
    conn: rusqlite::Connection,
}

impl StoreLock {
    fn take(db: &Path) -> Self {
        let conn = rusqlite::Connection::open(db).unwrap();
        conn.execute_batch("BEGIN EXCLUSIVE").unwrap();
        StoreLock { conn }
    }

    fn release(self) {
        self.conn.execute_batch("COMMIT").unwrap();
    }
}

/// Creates the table (a sink opens it), so a lock can be taken before the test starts.
fn create_table(db: &Path, schema: &RowSchema) {
    SqliteSink::new(&sqlite_config(db)).open(schema).unwrap();
}

#[test]
fn a_locked_store_does_not_slow_write_at_and_gets_every_row_in_order_after() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a.db");
    let (inner, writes) = recording(&db);
    let mut wb = WriteBehind::new("a", inner, dir.path().join("spool"), settings());
    assert_eq!(
        wb.describe(),
        format!("write-behind -> table windows in {}", db.display())
    );
    wb.open(&schema()).unwrap();

    let lock = StoreLock::take(&db);
    let locked_at = Instant::now();
    let mut sent = Vec::new();
    let mut slowest = Duration::ZERO;
    let mut i = 0;
    while locked_at.elapsed() < Duration::from_secs(3) {
        let (rows, positions) = batch(i, true);
        let t = Instant::now();
        wb.write_at(std::slice::from_ref(&rows), &positions)
            .expect("accepted while the store is locked");
        let took = t.elapsed();
        assert!(took < Duration::from_secs(1), "write_at {i} took {took:?}");
        slowest = slowest.max(took);
        sent.push((rows, positions));
        i += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    // Every batch was accepted while the lock was (still) held, and none reached the store.
    assert!(sent.len() >= 20, "{} batches in 3 s", sent.len());
    assert_eq!(count(&db), Some(0));
    let status = wb.status();
    assert!(
        !status.is_drained() && status.spooled_bytes > 0,
        "{status:?}"
    );
    assert!(
        status
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("locked") || e.contains("busy")),
        "{status:?}"
    );
    assert!(writes.lock().unwrap().is_empty());
    assert_eq!(wb.stored_rows(), None, "not drained: unknown");

    let released_at = Instant::now();
    lock.release();
    wb.flush(Duration::from_secs(20))
        .expect("the spool drains once the lock is gone");
    let drained_in = released_at.elapsed();
    eprintln!(
        "{} batches during a 3 s lock; slowest write_at {slowest:?}; drained {drained_in:?} after the release",
        sent.len()
    );

    let want = expected(&sent);
    assert_eq!(want.len(), 20, "the same 20 keys, rewritten by every batch");
    assert_eq!(table(&db), want, "the last batch wins: order kept");
    assert_eq!(wb.stored_rows(), Some(20));
    let status = wb.status();
    assert!(
        status.is_drained() && status.spooled_bytes == 0,
        "{status:?}"
    );
    assert_eq!(status.rows_written, sent.len() as u64 * 20);
    // One store write per write_at, in order, with the same positions.
    let writes = writes.lock().unwrap();
    let seen: Vec<_> = writes.iter().map(|(n, p)| (*n, p.clone())).collect();
    let want: Vec<_> = sent.iter().map(|(r, p)| (r.len(), p.clone())).collect();
    assert_eq!(seen, want);
}

#[test]
fn spooled_rows_survive_a_stop_and_are_written_once_by_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a.db");
    let spool = dir.path().join("spool");
    let mut sent = Vec::new();
    {
        let (inner, _) = recording(&db);
        let mut wb = WriteBehind::new("a", inner, &spool, settings());
        wb.open(&schema()).unwrap();
        for i in 0..5 {
            let (rows, positions) = batch(i, false);
            wb.write_at(std::slice::from_ref(&rows), &positions)
                .unwrap();
            sent.push((rows, positions));
        }
        wb.flush(Duration::from_secs(10)).unwrap();
        assert_eq!(table(&db), expected(&sent));

        let lock = StoreLock::take(&db);
        for i in 5..15 {
            let (rows, positions) = batch(i, false);
            wb.write_at(std::slice::from_ref(&rows), &positions)
                .unwrap();
            sent.push((rows, positions));
        }
        assert!(!wb.status().is_drained());
        let t = Instant::now();
        drop(wb); // a stop without draining
        let stopped_in = t.elapsed();
        eprintln!("stopped in {stopped_in:?} with the store locked");
        assert!(stopped_in < Duration::from_secs(2), "{stopped_in:?}");
        lock.release();
    }
    // Nothing past the first five batches reached the store.
    assert_eq!(table(&db), expected(&sent[..5]));

    let (inner, writes) = recording(&db);
    let mut wb = WriteBehind::new("a", inner, &spool, settings());
    wb.open(&schema()).unwrap();
    let t = Instant::now();
    wb.flush(Duration::from_secs(10))
        .expect("the next start writes the spool");
    eprintln!("restart drained in {:?}", t.elapsed());
    let rows = table(&db);
    assert_eq!(rows.len(), 15 * 20, "every row once");
    assert_eq!(rows, expected(&sent));
    // The restart wrote exactly the ten spooled batches, in order, with their positions:
    // the five the store already had were not written again.
    let seen: Vec<_> = writes.lock().unwrap().clone();
    let want: Vec<_> = sent[5..]
        .iter()
        .map(|(r, p)| (r.len(), p.clone()))
        .collect();
    assert_eq!(seen, want);
    assert_eq!(wb.stored_rows(), Some(300));
}

#[test]
fn a_full_spool_pushes_back_with_a_retryable_error_until_the_store_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    let (inner, _) = recording(&db);
    let mut wb = WriteBehind::new(
        "c",
        inner,
        dir.path().join("spool"),
        WriteBehindSettings {
            max_bytes: 16 << 10,
            ..settings()
        },
    );
    wb.open(&schema()).unwrap();
    let lock = StoreLock::take(&db);
    let mut sent = Vec::new();
    let refused = loop {
        let (rows, positions) = batch(sent.len() as u64, false);
        match wb.write_at(std::slice::from_ref(&rows), &positions) {
            Ok(()) => sent.push((rows, positions)),
            Err(e) => break (e, rows, positions),
        }
        assert!(sent.len() < 100, "a 16 KiB spool never filled");
    };
    let (e, rows, positions) = refused;
    eprintln!("full after {} batches: {e}", sent.len());
    assert!(sent.len() >= 5, "{} batches", sent.len());
    assert!(e.retryable, "{e:?}");
    assert!(
        e.message
            .contains("write-behind spool for sink c is full (")
            && e.message.contains("bytes): the store is not keeping up"),
        "{e}"
    );
    // Still full while the store is locked.
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        wb.write_at(std::slice::from_ref(&rows), &positions)
            .is_err()
    );

    lock.release();
    let released_at = Instant::now();
    loop {
        match wb.write_at(std::slice::from_ref(&rows), &positions) {
            Ok(()) => break,
            Err(e) => {
                assert!(e.retryable, "{e}");
                assert!(
                    released_at.elapsed() < Duration::from_secs(10),
                    "still refused 10 s after the release: {e}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    eprintln!(
        "accepted again {:?} after the release",
        released_at.elapsed()
    );
    sent.push((rows, positions));
    wb.flush(Duration::from_secs(10)).unwrap();
    assert_eq!(table(&db), expected(&sent));
}

/// A poison row: with a dead-letter queue it is isolated and the rest written; without,
/// the write-behind stops and says so, keeping the rows in the spool.
#[test]
fn rows_the_store_refuses_go_to_the_dead_letter_queue_or_stop_the_sink() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("p.db");
    create_table(&db, &schema());
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch(
            "CREATE TRIGGER no_poison BEFORE INSERT ON windows WHEN NEW.key = 'poison'
             BEGIN SELECT RAISE(ABORT, 'key poison is not allowed'); END;",
        )
        .unwrap();
    let mut rows = WindowRows::new(schema());
    for i in 0..100 {
        let key = if i == 37 {
            "poison".to_owned()
        } else {
            format!("k{i:03}")
        };
        rows.push(0, 60_000, &key, &[1.0, i as f64]);
    }
    let rows = Arc::new(rows);
    let positions = [SinkPosition {
        partition: 1,
        through: 500,
        watermark: 60_000,
    }];

    let dead_letters =
        DeadLetters::open(dir.path().join("dlq"), lungfish_log::FsyncPolicy::Always).unwrap();
    let (inner, writes) = recording(&db);
    let mut wb = WriteBehind::new("p", inner, dir.path().join("spool"), settings())
        .with_dead_letters(dead_letters.clone());
    wb.open(&schema()).unwrap();
    wb.write_at(std::slice::from_ref(&rows), &positions)
        .unwrap();
    wb.flush(Duration::from_secs(10)).unwrap();
    assert_eq!(count(&db), Some(99));
    let mut letters = Vec::new();
    dead_letters
        .for_each(0, |_, d| letters.push(d.unwrap()))
        .unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].stage, "sink:p");
    assert_eq!(letters[0].kind, "rejected_row");
    assert!(
        letters[0].reason.contains("poison"),
        "{}",
        letters[0].reason
    );
    // The batch's positions were still recorded, after the isolated rows.
    let last = writes.lock().unwrap().last().cloned().unwrap();
    assert_eq!(last, (0, positions.to_vec()));
    drop(wb);

    // Without a dead-letter queue: the thread stops, flush and write_at say why.
    let db2 = dir.path().join("p2.db");
    std::fs::copy(&db, &db2).unwrap();
    let (inner, _) = recording(&db2);
    let mut wb = WriteBehind::new("p2", inner, dir.path().join("spool2"), settings());
    wb.open(&schema()).unwrap();
    wb.write_at(std::slice::from_ref(&rows), &positions)
        .unwrap();
    let e = wb.flush(Duration::from_secs(10)).unwrap_err();
    assert!(!e.retryable, "{e}");
    assert!(
        e.message.contains("poison") && e.message.contains("spool"),
        "{e}"
    );
    assert!(wb.status().failed.is_some());
    let e = wb
        .write_at(std::slice::from_ref(&rows), &positions)
        .unwrap_err();
    assert!(!e.retryable && e.message.contains("stopped"), "{e}");
}

/// The pipeline of the problem: two sinks fed by the same shards, one of them (behind
/// write-behind) locked for 5 s. The other completes while the lock is held; once it is
/// released, the locked one catches up to the same rows.
#[test]
fn a_locked_sink_behind_write_behind_does_not_stall_the_other_sink() {
    const LOCK_FOR: Duration = Duration::from_secs(5);
    let dir = tempfile::tempdir().unwrap();
    let a_db = dir.path().join("a.db");
    let b_db = dir.path().join("b.db");
    let mut config = PipelineConfig {
        data_dir: dir.path().join("data"),
        sources: vec![NamedSource {
            name: "gen".into(),
            config: SourceConfig::Generator(GeneratorConfig {
                count: Some(60_000),
                keys: 500,
                distribution: KeyDistribution::Zipf,
                seed: 7,
                events_per_second: 5_000,
                ..GeneratorConfig::default()
            }),
        }],
        sinks: vec![NamedSink {
            name: "b".into(),
            config: SinkConfig::Sqlite(SqliteSinkConfig::new(&b_db)),
        }],
        ..PipelineConfig::default()
    };
    config.pipeline.aggregates = aggregates();
    let schema = RowSchema::new(&config.pipeline.aggregates, &config.number_fields());
    create_table(&a_db, &schema);

    let lock = StoreLock::take(&a_db);
    let locked_at = Instant::now();
    let locker = std::thread::spawn(move || {
        std::thread::sleep(LOCK_FOR);
        let released_at = Instant::now();
        lock.release();
        released_at
    });
    // Row counts of both tables over time.
    let done = Arc::new(AtomicBool::new(false));
    let poller = {
        let (done, a_db, b_db) = (done.clone(), a_db.clone(), b_db.clone());
        std::thread::spawn(move || {
            let mut samples: Vec<(Instant, Option<usize>, Option<usize>)> = Vec::new();
            while !done.load(Ordering::SeqCst) {
                samples.push((Instant::now(), count(&a_db), count(&b_db)));
                std::thread::sleep(Duration::from_millis(20));
            }
            samples
        })
    };

    let wb = WriteBehind::new(
        "a",
        Box::new(SqliteSink::new(&sqlite_config(&a_db))),
        dir.path().join("spool-a"),
        WriteBehindSettings {
            // The pipeline drops its sinks at the end of the run: wait there for the drain.
            drain_on_drop: Duration::from_secs(60),
            ..settings()
        },
    );
    let monitor = wb.monitor();
    let control = Arc::new(Control::new());
    let summary = Pipeline::new(config)
        .unwrap()
        .with_sink("a", Box::new(wb), DriverSettings::default())
        .run(control.clone())
        .expect("the run completes");
    let ran_for = locked_at.elapsed();
    let released_at = locker.join().unwrap();
    done.store(true, Ordering::SeqCst);
    let samples = poller.join().unwrap();
    assert!(summary.complete, "{summary:?}");
    assert!(control.error().is_none(), "{:?}", control.error());

    let b = table(&b_db);
    assert!(b.len() > 1_000, "{} rows", b.len());
    let events: i64 = b.iter().map(|r| r.3).sum();
    assert_eq!(events as u64, summary.processed - summary.late);
    // B had every row while A's store was still locked, and A had none then.
    let (b_complete_at, a_then, _) = samples
        .iter()
        .find(|(_, _, b_rows)| *b_rows == Some(b.len()))
        .copied()
        .expect("B's final count was seen");
    assert!(
        b_complete_at < released_at,
        "B complete {:?} after the lock, released at {:?}",
        b_complete_at - locked_at,
        released_at - locked_at
    );
    assert_eq!(a_then, Some(0));
    eprintln!(
        "B complete {:?} into a {LOCK_FOR:?} lock; the run (with A's drain) took {ran_for:?}",
        b_complete_at - locked_at
    );
    // After the release A drained (the run waited for it when dropping the sink): A == B.
    let status = monitor.status();
    assert!(status.is_drained() && !status.running, "{status:?}");
    assert_eq!(table(&a_db), b);
    let a_summary = summary.sinks.iter().find(|s| s.name == "a").unwrap();
    assert!(
        a_summary
            .description
            .starts_with("write-behind -> table windows in"),
        "{a_summary:?}"
    );
}
