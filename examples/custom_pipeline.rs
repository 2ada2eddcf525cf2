//! A pipeline built in code, with an operator and a sink written in Rust.
//!
//! The same engine that `lungfish run pipeline.toml` drives: generated events go
//! through the durable log on local disk, micro-batches, the operators, keyed one-second
//! windows, and two sinks. [`Pipeline::builder`] sets what a pipeline file would set,
//! with types; what only code can add is plugged in next to it:
//!
//! * `Screen`, an [`Operator`]: it drops the test user's events (`u-0`) on purpose,
//!   and fails the events whose value is above 990 as `suspicious`: those go to the
//!   dead-letter queue with their reason, and the rest of their micro-batch goes on;
//! * `MemorySink`, a [`Sink`]: it keeps the window rows in a map. The engine's sink
//!   driver batches, retries, time-limits and circuit-breaks it like the built-in
//!   sinks.
//!
//! It checks that every generated event is accounted for (counted in a window, dropped
//! by the operator, or dead-lettered), that no row has the test user, and that the
//! custom sink holds exactly the rows the built-in SQLite sink wrote. Run it with:
//!
//! ```text
//! cargo run -p lungfish --example custom_pipeline
//! ```

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lungfish::config::{GeneratorConfig, SqliteSinkConfig, WindowSpec};
use lungfish::operator::{Failure, Operator, OperatorBatch};
use lungfish::sinks::{DriverSettings, Sink, SinkError};
use lungfish::window::{RowSchema, WindowRows};
use lungfish::{Control, Pipeline};

/// Drops the test user's events and fails implausible values.
struct Screen {
    dropped: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
}

impl Operator for Screen {
    fn name(&self) -> &str {
        "screen"
    }

    fn process(&mut self, batch: &mut OperatorBatch<'_>) {
        let value = batch
            .field_index("value")
            .expect("the pipeline reads `value`");
        let live: Vec<usize> = batch.live().collect();
        let (mut dropped, mut failed) = (0, 0);
        for i in live {
            if batch.event(i).key.as_ref() == b"u-0" {
                batch.drop_event(i);
                dropped += 1;
            } else if batch.number(i, value) > 990.0 {
                let reason = format!("value {} is above 990", batch.number(i, value));
                batch.fail(i, Failure::permanent("suspicious", reason));
                failed += 1;
            }
        }
        // One atomic add per micro-batch, not per event.
        self.dropped.fetch_add(dropped, Ordering::Relaxed);
        self.failed.fetch_add(failed, Ordering::Relaxed);
    }
}

/// (window start, key) -> (count, sum of value).
type Table = BTreeMap<(i64, String), (f64, f64)>;

/// Keeps window rows in memory (an upsert: a corrected row replaces the old one).
struct MemorySink {
    rows: Arc<Mutex<Table>>,
    columns: (usize, usize),
}

impl Sink for MemorySink {
    fn open(&mut self, schema: &RowSchema) -> Result<(), SinkError> {
        let column = |name: &str| {
            schema
                .columns()
                .iter()
                .position(|(n, _)| n == name)
                .ok_or_else(|| SinkError::permanent(format!("no column {name}")))
        };
        self.columns = (column("count")?, column("sum_value")?);
        Ok(())
    }

    fn write(&mut self, batch: &[Arc<WindowRows>]) -> Result<(), SinkError> {
        let mut table = self
            .rows
            .lock()
            .map_err(|e| SinkError::permanent(e.to_string()))?;
        for rows in batch {
            for i in 0..rows.len() {
                table.insert(
                    (rows.window_start(i), rows.key(i).to_owned()),
                    (rows.value(i, self.columns.0), rows.value(i, self.columns.1)),
                );
            }
        }
        Ok(())
    }

    fn describe(&self) -> String {
        "an in-memory map".to_owned()
    }
}

fn sqlite_rows(path: &std::path::Path) -> Table {
    let conn = rusqlite::Connection::open(path).unwrap();
    let mut stmt = conn
        .prepare("SELECT window_start, key, count, sum_value FROM windows")
        .unwrap();
    stmt.query_map([], |r| {
        Ok((
            (r.get::<_, i64>(0)?, r.get::<_, String>(1)?),
            (r.get::<_, f64>(2)?, r.get::<_, f64>(3)?),
        ))
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

fn main() -> Result<(), lungfish::Error> {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let events = 200_000;
    let (dropped, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let memory = Arc::new(Mutex::new(Table::new()));

    let screen = (dropped.clone(), failed.clone());
    let pipeline = Pipeline::builder("custom")
        .data_dir(dir.path().join("data"))
        .source(
            "generated",
            GeneratorConfig {
                count: Some(events),
                keys: 50,
                seed: 7,
                ..GeneratorConfig::default()
            },
        )
        .key("user")
        .time("ts")
        .window(WindowSpec::Tumbling {
            size: Duration::from_secs(1),
        })
        .aggregates(["count", "sum(value)"])
        // One operator per log partition, each on its partition's consumer thread.
        .custom_operator(move |_partition| {
            Box::new(Screen {
                dropped: screen.0.clone(),
                failed: screen.1.clone(),
            })
        })
        .custom_sink(
            "memory",
            MemorySink {
                rows: memory.clone(),
                columns: (0, 0),
            },
            DriverSettings::default(),
        )
        .sink("db", SqliteSinkConfig::new(dir.path().join("results.db")))
        .build()?;

    let summary = pipeline.run(Arc::new(Control::new()))?;

    let memory = memory.lock().unwrap().clone();
    let counted: f64 = memory.values().map(|(count, _)| count).sum();
    let (dropped, failed) = (
        dropped.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
    );
    println!(
        "custom_pipeline: {} events in, {counted} counted in {} rows, {dropped} dropped, {failed} dead-lettered",
        summary.events_in,
        memory.len()
    );
    assert!(
        summary.complete,
        "the bounded input was processed to its end"
    );
    assert_eq!(summary.events_in, events);
    assert_eq!(
        counted as u64 + dropped + failed,
        events,
        "every event is in a window, dropped, or dead-lettered"
    );
    assert!(dropped > 0 && failed > 0, "the operator had work to do");
    assert_eq!(summary.dead_letters_of("operator:screen"), failed);
    assert!(!memory.keys().any(|(_, key)| key == "u-0"), "no test user");
    assert_eq!(
        memory,
        sqlite_rows(&dir.path().join("results.db")),
        "the custom sink got exactly what the built-in one wrote"
    );
    println!("custom_pipeline: ok");
    Ok(())
}
