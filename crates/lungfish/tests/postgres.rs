//! The Postgres sink against a real Postgres (Debian's `postgresql`, started here on a
//! loopback port in a temporary directory; `.ci/run` installs it): idempotent upserts
//! with positions in the same transaction, a refused row isolated into the dead-letter
//! queue, a whole pipeline landing the same rows as SQLite, and a server restart ridden
//! out.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use lungfish::config::{
    AggFunc, AggregateSpec, DatabaseSinkConfig, GeneratorConfig, KeyDistribution, NamedSink,
    NamedSource, SinkConfig, SourceConfig, SqliteSinkConfig,
};
use lungfish::dlq::DeadLetters;
use lungfish::shard::SinkMsg;
use lungfish::sinks::postgres::PostgresSink;
use lungfish::sinks::{DriverSettings, Sink, SinkDriver, SinkPosition};
use lungfish::window::{RowSchema, WindowRows};
use lungfish::{Control, Pipeline, PipelineConfig};

#[path = "support/pg.rs"]
mod pg;
use pg::Pg;

fn schema() -> Arc<RowSchema> {
    Arc::new(RowSchema::new(
        &[
            AggregateSpec::count(),
            AggregateSpec::new(AggFunc::Sum, Some("value")),
        ],
        &["value".into()],
    ))
}

fn rows(n: usize, poison_at: Option<usize>) -> WindowRows {
    let mut rows = WindowRows::new(schema());
    for i in 0..n {
        let key = if Some(i) == poison_at {
            "poison".to_owned()
        } else {
            format!("k{i}")
        };
        rows.push(
            (i as i64 % 10) * 1000,
            (i as i64 % 10) * 1000 + 1000,
            &key,
            &[i as f64, i as f64 / 2.0],
        );
    }
    rows
}

#[test]
fn upserts_are_idempotent_and_positions_are_in_the_same_transaction() {
    let pg = Pg::start();
    let mut config = DatabaseSinkConfig::new(pg.url());
    config.table = "clicks".into();
    config.columns = vec![("key".into(), "user_id".into())];
    let mut sink = PostgresSink::new("p", &config);
    sink.open(&schema()).unwrap();
    let batch = [Arc::new(rows(5_000, None))];
    let at = |through| {
        vec![
            SinkPosition {
                partition: 0,
                through,
                watermark: 7_000,
            },
            SinkPosition {
                partition: 1,
                through: 10,
                watermark: 5_000,
            },
        ]
    };
    sink.write_at(&batch, &at(100)).unwrap();
    // A replay after a crash writes the same rows again, with older positions.
    sink.write_at(&batch, &at(40)).unwrap();
    assert_eq!(sink.stored_rows(), Some(5_000));
    let mut client = pg.client();
    let row = client
        .query_one(
            "SELECT count, sum_value, window_end FROM clicks WHERE user_id = 'k1234'",
            &[],
        )
        .unwrap();
    assert_eq!(
        (
            row.get::<_, i64>(0),
            row.get::<_, f64>(1),
            row.get::<_, i64>(2)
        ),
        (1234, 617.0, 5000)
    );
    let positions = sink.recorded_positions().unwrap();
    assert_eq!(positions, at(100), "positions never go backwards");
    // Another shape against the same table is refused with the missing columns.
    let other = Arc::new(RowSchema::new(
        &[AggregateSpec::new(AggFunc::Max, Some("value"))],
        &["value".into()],
    ));
    let err = PostgresSink::new("p", &config).open(&other).unwrap_err();
    assert!(err.message.contains("max_value"), "{err}");
    assert!(!err.retryable);
}

#[test]
fn a_refused_row_goes_to_the_dead_letter_queue_and_the_rest_is_written() {
    let pg = Pg::start();
    let config = DatabaseSinkConfig::new(pg.url());
    let mut sink = PostgresSink::new("p", &config);
    sink.open(&schema()).unwrap();
    pg.client()
        .batch_execute("ALTER TABLE windows ADD CONSTRAINT no_poison CHECK (key <> 'poison')")
        .unwrap();
    let dlq_dir = tempfile::tempdir().unwrap();
    let dead_letters =
        DeadLetters::open(dlq_dir.path(), lungfish_log::FsyncPolicy::Always).unwrap();
    let control = Arc::new(Control::new());
    let driver = SinkDriver::new(
        "pg",
        Box::new(sink),
        DriverSettings {
            batch_max_rows: 20_000,
            ..DriverSettings::default()
        },
        control.clone(),
    )
    .with_dead_letters(dead_letters.clone());
    let (tx, rx) = crossbeam_channel::bounded(1);
    tx.send(SinkMsg::Rows(Arc::new(rows(10_000, Some(4_321)))))
        .unwrap();
    drop(tx);
    let mut sink = driver.run(rx).expect("written around the poison pill");
    assert!(control.error().is_none());
    assert_eq!(sink.stored_rows(), Some(9_999));
    let mut letters = Vec::new();
    dead_letters
        .for_each(0, |_, d| letters.push(d.unwrap()))
        .unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].kind, "rejected_row");
    assert!(
        letters[0].reason.contains("poison"),
        "{}",
        letters[0].reason
    );
    assert!(String::from_utf8_lossy(&letters[0].payload).contains("\"key\":\"poison\""));
}

fn table(client: &mut postgres::Client) -> Vec<(i64, String, i64, f64)> {
    client
        .query(
            "SELECT window_start, key, count, sum_value FROM windows ORDER BY 1, 2",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

fn sqlite_table(path: &Path) -> Vec<(i64, String, i64, f64)> {
    let conn = rusqlite::Connection::open(path).unwrap();
    let mut stmt = conn
        .prepare("SELECT window_start, key, count, sum_value FROM windows ORDER BY 1, 2")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn a_pipeline_lands_the_same_rows_in_postgres_as_in_sqlite_exactly_once() {
    let pg = Pg::start();
    let dir = tempfile::tempdir().unwrap();
    let mut config = PipelineConfig {
        name: "pgtest".into(),
        data_dir: dir.path().join("data"),
        sources: vec![NamedSource {
            name: "gen".into(),
            config: SourceConfig::Generator(GeneratorConfig {
                count: Some(200_000),
                keys: 3_000,
                distribution: KeyDistribution::Zipf,
                disorder: Duration::from_millis(500),
                seed: 5,
                events_per_second: 40_000,
                ..GeneratorConfig::default()
            }),
        }],
        sinks: vec![
            NamedSink {
                name: "local".into(),
                config: SinkConfig::Sqlite(SqliteSinkConfig::new(dir.path().join("out.db"))),
            },
            NamedSink {
                name: "pg".into(),
                config: SinkConfig::Postgres(DatabaseSinkConfig::new(pg.url())),
            },
        ],
        ..PipelineConfig::default()
    };
    config.log.partitions = 3;
    config.pipeline.out_of_orderness = Duration::from_millis(500);
    config.pipeline.aggregates = vec![
        AggregateSpec::count(),
        AggregateSpec::new(AggFunc::Sum, Some("value")),
    ];
    let summary = Pipeline::new(config.clone())
        .unwrap()
        .run(Arc::new(Control::new()))
        .unwrap();
    assert!(summary.complete);
    let mut client = pg.client();
    let in_pg = table(&mut client);
    let in_sqlite = sqlite_table(&dir.path().join("out.db"));
    assert!(in_pg.len() > 1_000, "{} rows", in_pg.len());
    assert_eq!(in_pg, in_sqlite);
    // Every partition's position is recorded, in the rows' transactions.
    let positions: Vec<(i32, i64)> = client
        .query(
            "SELECT partition, through FROM lungfish_sink_positions WHERE pipeline = 'pgtest' ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(positions.len(), 3, "{positions:?}");
    let logged: u64 = positions.iter().map(|(_, t)| *t as u64).sum();
    assert_eq!(logged, summary.log_events, "positions cover the whole log");
    // Running again changes nothing.
    Pipeline::new(config)
        .unwrap()
        .run(Arc::new(Control::new()))
        .unwrap();
    assert_eq!(table(&mut client), in_sqlite);
}

#[test]
fn a_server_restart_is_ridden_out() {
    let pg = Pg::start();
    let mut sink = PostgresSink::new("p", &DatabaseSinkConfig::new(pg.url()));
    sink.open(&schema()).unwrap();
    let batch = [Arc::new(rows(100, None))];
    sink.write(&batch).unwrap();
    pg.down();
    let err = sink.write(&batch).unwrap_err();
    assert!(
        err.retryable,
        "a server that is down is worth retrying: {err}"
    );
    pg.up();
    sink.write(&batch).unwrap();
    assert_eq!(sink.stored_rows(), Some(100));
}

#[test]
fn postgres_restarted_during_a_run_loses_nothing() {
    let pg = Pg::start();
    let dir = tempfile::tempdir().unwrap();
    let mut config = PipelineConfig {
        name: "restart".into(),
        data_dir: dir.path().join("data"),
        sources: vec![NamedSource {
            name: "gen".into(),
            config: SourceConfig::Generator(GeneratorConfig {
                count: Some(150_000),
                rate: lungfish::config::Rate::PerSecond(50_000),
                keys: 2_000,
                seed: 9,
                events_per_second: 50_000,
                ..GeneratorConfig::default()
            }),
        }],
        sinks: vec![
            NamedSink {
                name: "local".into(),
                config: SinkConfig::Sqlite(SqliteSinkConfig::new(dir.path().join("out.db"))),
            },
            NamedSink {
                name: "pg".into(),
                config: SinkConfig::Postgres(DatabaseSinkConfig::new(pg.url())),
            },
        ],
        ..PipelineConfig::default()
    };
    config.pipeline.aggregates = vec![
        AggregateSpec::count(),
        AggregateSpec::new(AggFunc::Sum, Some("value")),
    ];
    let control = Arc::new(Control::new());
    let run = {
        let control = control.clone();
        std::thread::spawn(move || Pipeline::new(config).unwrap().run(control))
    };
    // Down for 1.5 s in the middle of the 3 s run.
    std::thread::sleep(Duration::from_millis(800));
    pg.down();
    std::thread::sleep(Duration::from_millis(1500));
    pg.up();
    let summary = run.join().unwrap().expect("the run rides out the restart");
    assert!(summary.complete);
    assert!(control.error().is_none());
    let in_pg = table(&mut pg.client());
    let in_sqlite = sqlite_table(&dir.path().join("out.db"));
    assert!(in_pg.len() > 1_000);
    assert_eq!(in_pg, in_sqlite);
    let events: i64 = in_pg.iter().map(|r| r.2).sum();
    assert_eq!(events as u64, summary.processed - summary.late);
}

#[test]
fn tls_is_used_when_asked() {
    let pg = Pg::start_tls();
    let mut config = DatabaseSinkConfig::new(pg.url());
    config.tls = true;
    let mut sink = PostgresSink::new("p", &config);
    sink.open(&schema()).unwrap();
    sink.write(&[Arc::new(rows(1_000, None))]).unwrap();
    assert_eq!(sink.stored_rows(), Some(1_000));
    // The server says the sink's session is encrypted.
    let row = pg
        .client()
        .query_one(
            "SELECT count(*), bool_and(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
             WHERE a.application_name = 'lungfish'",
            &[],
        )
        .unwrap();
    assert_eq!(
        (row.get::<_, i64>(0), row.get::<_, Option<bool>>(1)),
        (1, Some(true))
    );
    // sslmode=require in the URL asks for it too.
    let mut sink = PostgresSink::new(
        "p",
        &DatabaseSinkConfig::new(format!("{}?sslmode=require", pg.url())),
    );
    sink.open(&schema()).unwrap();
    assert_eq!(sink.stored_rows(), Some(1_000));
}

#[test]
fn a_large_batch_is_loaded_over_several_connections() {
    let pg = Pg::start();
    let mut config = DatabaseSinkConfig::new(pg.url());
    config.pool_size = 3;
    let mut sink = PostgresSink::new("p", &config);
    sink.open(&schema()).unwrap();
    let position = SinkPosition {
        partition: 0,
        through: 77,
        watermark: 9_000,
    };
    let batch: Vec<Arc<WindowRows>> = (0..3).map(|_| Arc::new(rows(10_000, None))).collect();
    sink.write_at(&batch[..1], &[position]).unwrap();
    let mut distinct = WindowRows::new(schema());
    for i in 0..30_000 {
        distinct.push(100_000, 101_000, &format!("p{i}"), &[1.0, i as f64]);
    }
    sink.write_at(&[Arc::new(distinct)], &[position]).unwrap();
    assert_eq!(sink.stored_rows(), Some(40_000));
    let mut client = pg.client();
    let sessions: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'lungfish'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(sessions, 3, "three connections shared the 30,000 rows");
    let sum: f64 = client
        .query_one(
            "SELECT sum(sum_value) FROM windows WHERE window_start = 100000",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(sum, (0..30_000).map(f64::from).sum::<f64>());
    assert_eq!(sink.recorded_positions().unwrap(), vec![position]);
}

/// `n` rows of distinct keys in window `window`, `sum_value` of row `i` being `i`.
fn distinct_rows(window: i64, n: usize) -> Arc<WindowRows> {
    let mut rows = WindowRows::new(schema());
    for i in 0..n {
        rows.push(
            window * 1000,
            window * 1000 + 1000,
            &format!("d{i}"),
            &[1.0, i as f64],
        );
    }
    Arc::new(rows)
}

#[test]
fn the_connections_loading_a_batch_adapt_to_the_servers_latency() {
    const ROWS: usize = 40_000; // four shares of 10,000 rows at pool_size = 4
    const POOL: usize = 4;
    let pg = Pg::start();
    let mut config = DatabaseSinkConfig::new(pg.url());
    config.pool_size = POOL;
    let mut sink = PostgresSink::new("p", &config).named("pg");
    sink.open(&schema()).unwrap();
    assert_eq!(sink.concurrency_limit(), POOL, "starts at pool_size");
    // Each batch: ROWS distinct rows in a window of its own, and its position.
    fn write(sink: &mut PostgresSink, windows: &mut i64) -> Duration {
        let batch = distinct_rows(*windows, ROWS);
        let position = SinkPosition {
            partition: 0,
            through: *windows as u64 + 1,
            watermark: *windows * 1000,
        };
        *windows += 1;
        let started = std::time::Instant::now();
        sink.write_at(&[batch], &[position]).unwrap();
        started.elapsed()
    }
    // Healthy batches until the limit is at `POOL` (after at least `min` batches); the
    // limits seen and the slowest batch. A noisy box may halve the limit now and then
    // (a share twice as slow as usual): a healthy server brings it back.
    fn healthy(sink: &mut PostgresSink, windows: &mut i64, min: usize) -> (Vec<usize>, Duration) {
        let (mut limits, mut slowest) = (Vec::new(), Duration::ZERO);
        while limits.len() < min || limits.last() != Some(&POOL) {
            assert!(limits.len() < min + 15, "never back to {POOL}: {limits:?}");
            slowest = slowest.max(write(sink, windows));
            limits.push(sink.concurrency_limit());
        }
        (limits, slowest)
    }
    let mut windows = 0i64;

    // Healthy, past the warm-up (the first two batches' shares): every connection loads.
    let (limits, slowest) = healthy(&mut sink, &mut windows, 4);
    eprintln!("healthy: {limits:?}, slowest batch {slowest:?}");

    // Slow: another session holds the table for far longer than a healthy batch takes
    // (10x the slowest, at least a second); every share waits for it, and each such
    // batch halves the limit.
    let hold = (slowest * 10).max(Duration::from_secs(1));
    let mut limits = vec![sink.concurrency_limit()];
    for _ in 0..2 {
        let (locked_tx, locked) = std::sync::mpsc::channel();
        let mut locker = pg.client();
        let holder = std::thread::spawn(move || {
            locker
                .batch_execute("BEGIN; LOCK TABLE windows IN ACCESS EXCLUSIVE MODE")
                .unwrap();
            locked_tx.send(()).unwrap();
            std::thread::sleep(hold);
            locker.batch_execute("COMMIT").unwrap();
        });
        locked.recv().unwrap();
        assert!(write(&mut sink, &mut windows) >= hold);
        holder.join().unwrap();
        limits.push(sink.concurrency_limit());
    }
    assert_eq!(limits, [4, 2, 1], "each slow batch halves the limit");

    // Healed: it grows back to pool_size.
    let (limits, _) = healthy(&mut sink, &mut windows, 1);
    eprintln!("healed: {limits:?}");
    assert!(limits.len() >= 3, "about one step a batch: {limits:?}");

    // Every row once, none lost: each batch wrote ROWS distinct rows of its own window;
    // the positions are the last batch's.
    let batches = windows;
    let mut client = pg.client();
    let row = client
        .query_one(
            "SELECT count(*), count(DISTINCT (window_start, key)), sum(count)::bigint, sum(sum_value)
             FROM windows",
            &[],
        )
        .unwrap();
    let expected = batches * ROWS as i64;
    let expected_sum = batches as f64 * (0..ROWS).map(|i| i as f64).sum::<f64>();
    assert_eq!(
        (
            row.get::<_, i64>(0),
            row.get::<_, i64>(1),
            row.get::<_, i64>(2),
            row.get::<_, f64>(3)
        ),
        (expected, expected, expected, expected_sum)
    );
    assert_eq!(
        sink.recorded_positions().unwrap(),
        vec![SinkPosition {
            partition: 0,
            through: batches as u64,
            watermark: (batches - 1) * 1000,
        }]
    );
}
