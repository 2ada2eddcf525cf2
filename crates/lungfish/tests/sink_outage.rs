//! A store that is down for a while under load: the sink holds its batch under its
//! circuit breaker, the input waits in the log, and when the store comes back the
//! backlog drains. The result equals that of a sink that never failed: nothing lost,
//! nothing counted twice, and the pipeline never stopped.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lungfish::config::{
    GeneratorConfig, KeyDistribution, NamedSink, NamedSource, SinkConfig, SourceConfig,
    SqliteSinkConfig,
};
use lungfish::sinks::sqlite::SqliteSink;
use lungfish::sinks::{DriverSettings, Sink, SinkError};
use lungfish::window::{RowSchema, WindowRows};
use lungfish::{Control, Pipeline, PipelineConfig};

/// The real SQLite sink behind a fault: every write fails until `heals_at`.
struct Outage {
    inner: SqliteSink,
    heals_at: Instant,
    failed: Arc<AtomicU64>,
}

impl Sink for Outage {
    fn open(&mut self, schema: &RowSchema) -> Result<(), SinkError> {
        self.inner.open(schema)
    }
    fn write(&mut self, batch: &[Arc<WindowRows>]) -> Result<(), SinkError> {
        if Instant::now() < self.heals_at {
            self.failed.fetch_add(1, Ordering::SeqCst);
            return Err(SinkError::transient("connection refused (injected outage)"));
        }
        self.inner.write(batch)
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

fn rows(db: &std::path::Path) -> Vec<(i64, String, i64, f64)> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare("SELECT window_start, key, count, sum_value FROM windows ORDER BY 1, 2")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn a_store_down_for_two_seconds_loses_and_repeats_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = PipelineConfig {
        data_dir: dir.path().join("data"),
        sources: vec![NamedSource {
            name: "gen".into(),
            config: SourceConfig::Generator(GeneratorConfig {
                count: Some(300_000),
                keys: 2_000,
                distribution: KeyDistribution::Zipf,
                disorder: Duration::from_millis(500),
                seed: 11,
                events_per_second: 50_000,
                ..GeneratorConfig::default()
            }),
        }],
        sinks: vec![NamedSink {
            name: "steady".into(),
            config: SinkConfig::Sqlite(SqliteSinkConfig::new(dir.path().join("steady.db"))),
        }],
        ..PipelineConfig::default()
    };
    config.pipeline.out_of_orderness = Duration::from_millis(500);
    config.pipeline.aggregates = vec![
        lungfish::config::AggregateSpec::count(),
        lungfish::config::AggregateSpec::new(lungfish::config::AggFunc::Sum, Some("value")),
    ];
    let failed = Arc::new(AtomicU64::new(0));
    let outage = Outage {
        inner: SqliteSink::new(&SqliteSinkConfig::new(dir.path().join("outage.db"))),
        heals_at: Instant::now() + Duration::from_secs(2),
        failed: failed.clone(),
    };
    let settings = DriverSettings {
        batch_max_rows: 5_000,
        first_backoff: Duration::from_millis(5),
        ..DriverSettings::default()
    };
    let control = Arc::new(Control::new());
    let summary = Pipeline::new(config)
        .unwrap()
        .with_sink("outage", Box::new(outage), settings)
        .run(control.clone())
        .expect("the pipeline rides out the outage");
    assert!(summary.complete, "{summary:?}");
    assert!(control.error().is_none());
    let failures = failed.load(Ordering::SeqCst);
    assert!(
        failures >= 3,
        "the outage was hit ({failures} failed writes)"
    );
    assert!(
        failures < 60,
        "probed under the breaker, not hammered: {failures} failed writes in 2 s"
    );
    let steady = rows(&dir.path().join("steady.db"));
    let after_outage = rows(&dir.path().join("outage.db"));
    assert!(steady.len() > 1_000, "{} rows", steady.len());
    let events: i64 = steady.iter().map(|r| r.2).sum();
    assert_eq!(events as u64, summary.processed - summary.late);
    assert_eq!(after_outage, steady);
}
