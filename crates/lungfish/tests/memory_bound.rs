//! The memory limit in bytes: a sink that stalls makes the queues fill up to their byte
//! budgets (shares of `[pipeline] memory_limit`) and no further; the consumers wait, the
//! input waits in the log, and after the stall everything drains. The stalled sink's
//! table equals a steady sink's, and every event is counted exactly once.

#[path = "support/stalled.rs"]
mod stalled;
use stalled::Stalled;

use std::sync::Arc;
use std::time::{Duration, Instant};

use lungfish::config::{
    GeneratorConfig, KeyDistribution, MemoryPlan, NamedSink, NamedSource, SinkConfig, SourceConfig,
    SqliteSinkConfig,
};
use lungfish::pipeline::MemoryReport;
use lungfish::sinks::DriverSettings;
use lungfish::sinks::sqlite::SqliteSink;
use lungfish::{Control, Pipeline, PipelineConfig};

/// (window start, key, count) rows of a sink's table, in order.
type Table = Vec<(i64, String, i64)>;

fn rows(db: &std::path::Path) -> Table {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare("SELECT window_start, key, count FROM windows ORDER BY 1, 2")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// One run of `EVENTS` generated events under `memory_limit`, with a steady SQLite
/// sink and one that stalls for 3 s at its first write; returns the memory report and
/// both tables.
fn run(memory_limit: u64) -> (MemoryReport, Table, Table) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = PipelineConfig {
        data_dir: dir.path().join("data"),
        sources: vec![NamedSource {
            name: "gen".into(),
            config: SourceConfig::Generator(GeneratorConfig {
                count: Some(EVENTS),
                keys: 50_000,
                distribution: KeyDistribution::Uniform,
                disorder: Duration::from_millis(200),
                seed: 5,
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
    config.pipeline.out_of_orderness = Duration::from_millis(200);
    // Large micro-batches: by message count alone the queues could hold tens of MiB.
    config.pipeline.batch_max_events = 65_536;
    config.pipeline.memory_limit = memory_limit;
    config.validate().expect("a valid pipeline");

    let stalled = Stalled {
        inner: SqliteSink::new(&SqliteSinkConfig::new(dir.path().join("stalled.db"))),
        until: Instant::now() + Duration::from_secs(3),
    };
    let settings = DriverSettings {
        batch_max_rows: 20_000,
        ..DriverSettings::default()
    };
    let summary = Pipeline::new(config)
        .unwrap()
        .with_sink("stalled", Box::new(stalled), settings)
        .run(Arc::new(Control::new()))
        .expect("the run succeeds");
    assert!(summary.complete);
    assert_eq!(summary.processed, EVENTS);
    (
        summary.memory,
        rows(&dir.path().join("steady.db")),
        rows(&dir.path().join("stalled.db")),
    )
}

const EVENTS: u64 = 400_000;

#[test]
fn a_stalled_sink_fills_the_queues_to_their_byte_budgets_and_no_further() {
    const TIGHT: u64 = 16 << 20;
    let (m, steady, stalled) = run(TIGHT);
    assert_eq!(m.plan, MemoryPlan::new(TIGHT, 0));
    assert_eq!(
        (m.plan.limit, m.plan.shard_queues, m.plan.sink_queues),
        (TIGHT, TIGHT / 8, TIGHT / 8)
    );
    assert!(
        m.shard_queues_peak <= m.plan.shard_queues && m.sink_queues_peak <= m.plan.sink_queues,
        "the queues stay within their byte budgets: {m:?}"
    );
    assert!(
        m.shard_queue_waits > 0,
        "during the stall the consumers waited for room in the shards' queues: {m:?}"
    );
    assert!(m.state_peak > 0, "window state is measured: {m:?}");
    assert_eq!(
        steady.iter().map(|r| r.2 as u64).sum::<u64>(),
        EVENTS,
        "every event counted once"
    );
    assert_eq!(steady, stalled, "the stalled sink ends with the same table");

    // Side by side: with room to spare, the same stall lets the shards' queues hold
    // more than the tight budget: the byte budget, not the message count, held above.
    let (roomy, steady_roomy, _) = run(1 << 30);
    assert!(
        roomy.shard_queues_peak > m.plan.shard_queues,
        "a 1GiB limit queues more than the 16MiB one allows: {roomy:?} vs {m:?}"
    );
    assert_eq!(steady_roomy, steady, "same results under either limit");
}
