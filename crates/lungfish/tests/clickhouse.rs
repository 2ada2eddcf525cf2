//! The ClickHouse sink against a real ClickHouse server (started here, see
//! `support/clickhouse_server.rs`): the table it creates, replays that change nothing,
//! a row the table refuses going to the dead-letter queue, a whole pipeline that ends
//! with the same table as its SQLite twin, and a server killed in the middle of a write
//! or frozen (each failing retryably).
#![cfg(feature = "clickhouse")]

#[path = "support/clickhouse_server.rs"]
mod clickhouse_server;

use std::sync::Arc;
use std::time::{Duration, Instant};

use clickhouse_server::ClickHouseServer;
use lungfish::config::{
    AggFunc, AggregateSpec, DatabaseSinkConfig, GeneratorConfig, KeyDistribution, NamedSink,
    NamedSource, SinkConfig, SourceConfig, SqliteSinkConfig,
};
use lungfish::shard::SinkMsg;
use lungfish::sinks::clickhouse::ClickHouseSink;
use lungfish::sinks::{DriverSettings, Sink, SinkDriver};
use lungfish::window::{RowSchema, WindowRows};
use lungfish::{Control, Pipeline, PipelineConfig};

fn schema() -> Arc<RowSchema> {
    Arc::new(RowSchema::new(
        &[
            AggregateSpec::count(),
            AggregateSpec::new(AggFunc::Sum, Some("value")),
        ],
        &["value".into()],
    ))
}

fn config(server: &ClickHouseServer, table: &str) -> DatabaseSinkConfig {
    let mut c = DatabaseSinkConfig::new(server.url());
    c.table = table.to_owned();
    c.statement_timeout = Duration::from_secs(10);
    c
}

/// One row as the tests compare them: (window_start, window_end, key, count, sum).
type Row = (i64, i64, String, i64, f64);

/// Parses TabSeparated output of `window_start, window_end, key, count, sum`.
fn parse_rows(tsv: &str) -> Vec<Row> {
    tsv.lines()
        .map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            assert_eq!(f.len(), 5, "{line}");
            (
                f[0].parse().unwrap(),
                f[1].parse().unwrap(),
                // TabSeparated escapes backslashes and quotes in strings.
                f[2].replace("\\'", "'").replace("\\\\", "\\"),
                f[3].parse().unwrap(),
                f[4].parse().unwrap(),
            )
        })
        .collect()
}

#[test]
fn open_creates_the_table_and_a_replayed_batch_is_stored_once() {
    let server = ClickHouseServer::start();
    server.query("CREATE DATABASE lf");
    let mut c = config(&server, "lf.windows");
    c.columns = vec![
        ("key".into(), "user_id".into()),
        ("count".into(), "events".into()),
    ];
    let mut sink = ClickHouseSink::new(&c);
    sink.open(&schema()).expect("open creates the table");

    // The table, as created: renamed columns, our types, a ReplacingMergeTree.
    let columns = server.query(
        "SELECT name, type FROM system.columns WHERE database = 'lf' AND table = 'windows' FORMAT TabSeparated",
    );
    assert_eq!(
        columns,
        "window_start\tInt64\nwindow_end\tInt64\nuser_id\tString\nevents\tInt64\nsum_value\tFloat64\n_version\tUInt64\n"
    );
    let engine =
        server.query("SELECT engine FROM system.tables WHERE database = 'lf' AND name = 'windows'");
    assert_eq!(engine.trim(), "ReplacingMergeTree");

    let mut rows = WindowRows::new(schema());
    rows.push(0, 1000, "a\"b\\c'd", &[2.0, 3.5]);
    rows.push(0, 1000, "b", &[1.0, -1.25]);
    rows.push(1000, 2000, "ключ", &[7.0, 1e300]);
    let rows = Arc::new(rows);
    sink.write(std::slice::from_ref(&rows)).unwrap();
    // A replay: the same rows again, as after a crash before the commit.
    sink.write(&[rows.clone(), rows.clone()]).unwrap();

    let select = "SELECT window_start, window_end, user_id, events, sum_value FROM lf.windows FINAL \
                  ORDER BY window_start, user_id FORMAT TabSeparated";
    let expected: Vec<Row> = vec![
        (0, 1000, "a\"b\\c'd".into(), 2, 3.5),
        (0, 1000, "b".into(), 1, -1.25),
        (1000, 2000, "ключ".into(), 7, 1e300),
    ];
    assert_eq!(parse_rows(&server.query(select)), expected);
    assert_eq!(sink.stored_rows(), Some(3));
    // Without FINAL the copies are there until a merge folds them in.
    server.query("OPTIMIZE TABLE lf.windows FINAL");
    assert_eq!(server.query("SELECT count() FROM lf.windows").trim(), "3");

    // A later write of a (window_start, key) wins: `_version` grows with every write.
    let mut newer = WindowRows::new(schema());
    newer.push(0, 1000, "b", &[5.0, 10.0]);
    sink.write(&[Arc::new(newer)]).unwrap();
    let got = parse_rows(&server.query(select));
    assert_eq!(got[1], (0, 1000, "b".into(), 5, 10.0));
    assert_eq!(sink.stored_rows(), Some(3));

    // The summary's pointers at the data.
    assert!(
        sink.describe().contains("lf.windows"),
        "{}",
        sink.describe()
    );
    let hint = sink.query_hint().unwrap();
    assert!(hint.contains("FROM lf.windows FINAL"), "{hint}");
    assert!(hint.contains(&server.url()), "{hint}");

    // Another pipeline shape against the same table: refused at open, naming the
    // missing columns.
    let other = Arc::new(RowSchema::new(
        &[AggregateSpec::new(AggFunc::Max, Some("value"))],
        &["value".into()],
    ));
    let e = ClickHouseSink::new(&c).open(&other).unwrap_err();
    assert!(!e.retryable && !e.rejects_rows(), "{e}");
    assert!(e.message.contains("lacks the column max_value"), "{e}");

    // Credentials and a database in the URL: basic authentication, and the database
    // passed on with every request (tables without `db.` land there).
    let port = server.http_port;
    let mut in_lf = config(&server, "by_url");
    in_lf.url = format!("http://default:@127.0.0.1:{port}/?database=lf");
    let mut by_url = ClickHouseSink::new(&in_lf);
    by_url
        .open(&schema())
        .expect("the default user has no password");
    by_url.write(std::slice::from_ref(&rows)).unwrap();
    assert_eq!(by_url.stored_rows(), Some(3));
    assert_eq!(
        server.query("SELECT count() FROM lf.by_url FINAL").trim(),
        "3"
    );
    assert!(
        by_url.describe().contains("default:***@"),
        "{}",
        by_url.describe()
    );
    let mut wrong = config(&server, "by_url");
    wrong.url = format!("http://default:wrong@127.0.0.1:{port}/?database=lf");
    let e = ClickHouseSink::new(&wrong).open(&schema()).unwrap_err();
    assert!(!e.retryable && e.message.contains("Code: 193"), "{e}");
    assert!(!e.message.contains("wrong@"), "the password stays out: {e}");

    // A missing table with create_table = false: refused, with the statement to run.
    let mut missing = config(&server, "lf.nowhere");
    missing.create_table = false;
    let e = ClickHouseSink::new(&missing).open(&schema()).unwrap_err();
    assert!(!e.retryable, "{e}");
    assert!(e.message.contains("does not exist"), "{e}");
    assert!(e.message.contains("ReplacingMergeTree"), "{e}");
}

/// A poison pill: the user made the table with a `FixedString(8)` key, and one key of
/// 2,000 is longer. ClickHouse refuses the insert (`Code: 131`); the sink reports the
/// rows' fault, nothing of the batch is written, and the driver finds the row, writes
/// the other 1,999 and sends that one to the dead-letter queue.
#[test]
fn a_row_the_table_refuses_goes_to_the_dead_letter_queue() {
    let server = ClickHouseServer::start();
    server.query(
        "CREATE TABLE narrow (window_start Int64, window_end Int64, key FixedString(8), \
         count Int64, sum_value Float64, _version UInt64) \
         ENGINE = ReplacingMergeTree(_version) ORDER BY (window_start, key)",
    );
    let mut c = config(&server, "narrow");
    c.create_table = false;
    let mut rows = WindowRows::new(schema());
    for i in 0..2_000 {
        let key = if i == 1_234 {
            "a-key-far-too-long".to_owned()
        } else {
            format!("k{i}")
        };
        rows.push(0, 1000, &key, &[1.0, i as f64]);
    }
    let rows = Arc::new(rows);

    let mut sink = ClickHouseSink::new(&c);
    sink.open(&schema()).expect("the table has every column");
    let e = sink.write(std::slice::from_ref(&rows)).unwrap_err();
    assert!(e.rejects_rows(), "{e}");
    assert!(e.message.contains("Code: 131"), "{e}");
    assert_eq!(sink.stored_rows(), Some(0), "all or nothing");

    let dir = tempfile::tempdir().unwrap();
    let dead_letters =
        lungfish::dlq::DeadLetters::open(dir.path().join("dlq"), lungfish_log::FsyncPolicy::Always)
            .unwrap();
    let control = Arc::new(Control::new());
    let driver = SinkDriver::new(
        "ch",
        Box::new(sink),
        DriverSettings {
            batch_max_rows: 10_000,
            ..DriverSettings::default()
        },
        control.clone(),
    )
    .with_dead_letters(dead_letters.clone());
    let (tx, rx) = crossbeam_channel::bounded(4);
    tx.send(SinkMsg::Rows(rows)).unwrap();
    drop(tx);
    let mut sink = driver.run(rx).expect("the batch goes through");
    assert!(control.error().is_none());
    assert_eq!(sink.stored_rows(), Some(1_999));
    let mut letters = Vec::new();
    dead_letters
        .for_each(0, |_, d| letters.push(d.expect("a readable entry")))
        .unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].stage, "sink:ch");
    assert_eq!(letters[0].kind, "rejected_row");
    assert!(
        letters[0].reason.contains("FixedString"),
        "{}",
        letters[0].reason
    );
    let row: serde_json::Value = serde_json::from_slice(&letters[0].payload).unwrap();
    assert_eq!(row["key"], "a-key-far-too-long");
    assert_eq!(row["sum_value"], 1234.0);
}

fn sqlite_rows(db: &std::path::Path) -> Vec<Row> {
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

#[test]
fn a_pipeline_writes_the_same_table_to_clickhouse_as_to_sqlite_and_a_rerun_changes_nothing() {
    let server = ClickHouseServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut config = PipelineConfig {
        name: "ch-e2e".into(),
        data_dir: dir.path().join("data"),
        sources: vec![NamedSource {
            name: "gen".into(),
            config: SourceConfig::Generator(GeneratorConfig {
                count: Some(200_000),
                keys: 3_000,
                distribution: KeyDistribution::Zipf,
                disorder: Duration::from_millis(500),
                seed: 7,
                events_per_second: 40_000,
                ..GeneratorConfig::default()
            }),
        }],
        sinks: vec![
            NamedSink {
                name: "sqlite".into(),
                config: SinkConfig::Sqlite(SqliteSinkConfig::new(dir.path().join("out.db"))),
            },
            NamedSink {
                name: "clickhouse".into(),
                config: SinkConfig::ClickHouse(config(&server, "windows")),
            },
        ],
        ..PipelineConfig::default()
    };
    config.pipeline.out_of_orderness = Duration::from_millis(500);
    config.pipeline.aggregates = vec![
        AggregateSpec::count(),
        AggregateSpec::new(AggFunc::Sum, Some("value")),
    ];
    let select = "SELECT window_start, window_end, key, count, sum_value FROM windows FINAL \
                  ORDER BY window_start, key FORMAT TabSeparated";

    let started = Instant::now();
    let summary = Pipeline::new(config.clone())
        .unwrap()
        .run(Arc::new(Control::new()))
        .expect("the pipeline runs");
    eprintln!("first run: {:?}", started.elapsed());
    assert!(summary.complete, "{summary:?}");
    let sqlite = sqlite_rows(&dir.path().join("out.db"));
    assert!(sqlite.len() > 5_000, "{} rows", sqlite.len());
    let events: i64 = sqlite.iter().map(|r| r.3).sum();
    assert_eq!(events as u64, summary.processed - summary.late);
    let clickhouse = parse_rows(&server.query(select));
    assert_eq!(clickhouse.len(), sqlite.len());
    if let Some(i) = (0..sqlite.len()).find(|&i| clickhouse[i] != sqlite[i]) {
        panic!(
            "ClickHouse and SQLite differ first at row {i}: {:?} != {:?}",
            clickhouse[i], sqlite[i]
        );
    }
    let ch = summary
        .sinks
        .iter()
        .find(|s| s.name == "clickhouse")
        .unwrap();
    assert_eq!(ch.stored_rows, Some(sqlite.len() as u64));
    assert!(
        ch.query_hint.as_deref().unwrap().contains("FINAL"),
        "{ch:?}"
    );

    // Again on the same data directory: the input is finished and processed, so it ends
    // at once and the table is the same, without a duplicate even before merges.
    let raw_before = server.query("SELECT count() FROM windows");
    let summary = Pipeline::new(config)
        .unwrap()
        .run(Arc::new(Control::new()))
        .expect("the second run");
    assert!(summary.complete, "{summary:?}");
    assert_eq!(summary.processed, 0);
    assert_eq!(parse_rows(&server.query(select)), sqlite);
    assert_eq!(sqlite_rows(&dir.path().join("out.db")), sqlite);
    assert_eq!(server.query("SELECT count() FROM windows"), raw_before);
}

#[test]
fn a_server_killed_during_a_write_gives_a_retryable_error_and_the_retry_lands() {
    let mut server = ClickHouseServer::start();
    let mut c = config(&server, "windows");
    c.statement_timeout = Duration::from_secs(5);
    let mut sink = ClickHouseSink::new(&c);
    sink.open(&schema()).unwrap();
    // Batches of 300,000 rows (about 14 MB), one window each, so a write takes a while
    // and what landed can be counted.
    const ROWS: usize = 300_000;
    let batch = |w: i64| {
        let mut rows = WindowRows::new(schema());
        for i in 0..ROWS {
            rows.push(
                w * 1000,
                w * 1000 + 1000,
                &format!("k{i}"),
                &[1.0, i as f64 / 7.0],
            );
        }
        Arc::new(rows)
    };

    // A writer that keeps writing until a write fails, saying when each write starts
    // and how long it took.
    let (tx, rx) = std::sync::mpsc::channel();
    let writer = std::thread::spawn(move || {
        let mut written = 0i64;
        loop {
            let rows = batch(written);
            let started = Instant::now();
            let _ = tx.send((written, started, None));
            match sink.write(&[rows]) {
                Ok(()) => {
                    let _ = tx.send((written, started, Some(started.elapsed())));
                    written += 1;
                }
                Err(e) => return (sink, written, e),
            }
            assert!(written < 100, "the server never went away");
        }
    });
    // The server dies halfway through the third write (as long as the second took).
    let mut second = None;
    let third = loop {
        let (n, at, took) = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the writer goes on");
        match (n, took) {
            (1, Some(took)) => second = Some(took),
            (2, None) => break at,
            _ => {}
        }
    };
    let halfway = third + second.expect("the second write's time") / 2;
    std::thread::sleep(halfway.saturating_duration_since(Instant::now()));
    server.kill();
    let (mut sink, written, e) = writer.join().expect("no panic in the sink");
    assert_eq!(written, 2, "the third write failed: {e}");
    assert!(e.retryable, "{e}");
    assert!(!e.rejects_rows(), "{e}");

    // While it is down: still a retryable error, at once (connection refused).
    let started = Instant::now();
    let e = sink.write(&[batch(written)]).unwrap_err();
    assert!(e.retryable, "{e}");
    assert!(started.elapsed() < Duration::from_secs(5));

    // Back on the same data: what was acknowledged is there, and the retry lands (if
    // the killed insert had landed after all, the retry replaces it).
    server.spawn();
    sink.write(&[batch(written)])
        .expect("the retry after the restart");
    let windows = server.query(
        "SELECT window_start, count() FROM windows FINAL GROUP BY window_start ORDER BY window_start",
    );
    assert_eq!(windows, format!("0\t{ROWS}\n1000\t{ROWS}\n2000\t{ROWS}\n"));
    assert_eq!(sink.stored_rows(), Some(3 * ROWS as u64));

    // A server that accepts the connection but never answers: the write gives up after
    // statement_timeout, retryably.
    c.statement_timeout = Duration::from_secs(1);
    let mut impatient = ClickHouseSink::new(&c);
    impatient.open(&schema()).unwrap();
    let rows = batch(3);
    server.pause();
    let started = Instant::now();
    let e = impatient.write(&[rows]).unwrap_err();
    let waited = started.elapsed();
    server.resume();
    assert!(e.retryable, "{e}");
    assert!(e.message.contains("timeout"), "{e}");
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
}
