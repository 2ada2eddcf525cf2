//! Operators between the log and the windows: a filter sending every tenth event to the
//! dead-letter queue, and an operator written in Rust that panics on a poison pill and
//! fails transiently now and then. In every case the rest of the batch flows, the
//! windows hold exactly the events that passed, and each failed event is in the
//! dead-letter queue once, with its stage, reason and attempts.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use lungfish::config::{
    AggFunc, AggregateSpec, FileSourceConfig, FilterConfig, NamedOperator, NamedSink, NamedSource,
    OperatorConfig, SinkConfig, SourceConfig, SqliteSinkConfig,
};
use lungfish::dlq::{DeadLetter, DeadLetters};
use lungfish::operator::filter::{Condition, Otherwise};
use lungfish::operator::{Failure, Operator, OperatorBatch};
use lungfish::{Control, Pipeline, PipelineConfig};

const EVENTS: u64 = 100_000;

/// Event `i`: key `u{i % 500}`, one event per ms, value `i % 100`, except every tenth
/// event (i % 10 == 3) whose value is 1000 + i.
fn write_events(path: &Path) -> BTreeMap<(i64, String), (i64, f64)> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut expected = BTreeMap::new();
    for i in 0..EVENTS {
        let key = format!("u{}", i % 500);
        let ts = 1_700_000_000_000 + i as i64;
        let value = if i % 10 == 3 {
            1000.0 + i as f64
        } else {
            (i % 100) as f64
        };
        writeln!(
            f,
            r#"{{"id":"e{i}","user":"{key}","ts":{ts},"value":{value}}}"#
        )
        .unwrap();
        if value < 1000.0 {
            let window = ts - ts.rem_euclid(1000);
            let e = expected.entry((window, key)).or_insert((0, 0.0));
            e.0 += 1;
            e.1 += value;
        }
    }
    f.flush().unwrap();
    expected
}

fn config(dir: &Path) -> PipelineConfig {
    let mut config = PipelineConfig {
        data_dir: dir.join("data"),
        sources: vec![NamedSource {
            name: "events".into(),
            config: SourceConfig::File(FileSourceConfig::new([dir
                .join("events.jsonl")
                .to_string_lossy()
                .into_owned()])),
        }],
        sinks: vec![NamedSink {
            name: "out".into(),
            config: SinkConfig::Sqlite(SqliteSinkConfig::new(dir.join("out.db"))),
        }],
        ..PipelineConfig::default()
    };
    config.pipeline.aggregates = vec![
        AggregateSpec::count(),
        AggregateSpec::new(AggFunc::Sum, Some("value")),
    ];
    config
}

fn rows(db: &Path) -> BTreeMap<(i64, String), (i64, f64)> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare("SELECT window_start, key, count, sum_value FROM windows")
        .unwrap();
    stmt.query_map([], |r| Ok(((r.get(0)?, r.get(1)?), (r.get(2)?, r.get(3)?))))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn dead_letters(data: &Path) -> Vec<DeadLetter> {
    let dlq = DeadLetters::open(data.join("dlq"), lungfish_log::FsyncPolicy::Never).unwrap();
    let mut out = Vec::new();
    dlq.for_each(0, |_, e| out.push(e.expect("decodable entry")))
        .unwrap();
    out
}

#[test]
fn a_filter_dead_letters_every_tenth_event_and_the_rest_flows() {
    let dir = tempfile::tempdir().unwrap();
    let expected = write_events(&dir.path().join("events.jsonl"));
    let mut config = config(dir.path());
    config.operators = vec![NamedOperator {
        name: "sane".into(),
        config: OperatorConfig::Filter(FilterConfig {
            condition: Condition::parse("value < 1000").unwrap(),
            otherwise: Otherwise::DeadLetter,
        }),
    }];
    let summary = Pipeline::new(config)
        .unwrap()
        .run(Arc::new(Control::new()))
        .unwrap();
    assert!(summary.complete);
    assert_eq!(rows(&dir.path().join("out.db")), expected);
    let dlq = dead_letters(&dir.path().join("data"));
    assert_eq!(dlq.len() as u64, EVENTS / 10);
    let mut ids: Vec<u64> = Vec::new();
    for d in &dlq {
        assert_eq!(
            (d.stage.as_str(), d.kind.as_str(), d.attempts),
            ("operator:sane", "filtered", 1)
        );
        assert!(
            d.reason.contains("does not satisfy value < 1000"),
            "{}",
            d.reason
        );
        assert!(d.location.starts_with("log partition "), "{}", d.location);
        let doc: serde_json::Value = serde_json::from_slice(&d.payload).unwrap();
        ids.push(doc["id"].as_str().unwrap()[1..].parse().unwrap());
    }
    ids.sort_unstable();
    let want: Vec<u64> = (0..EVENTS).filter(|i| i % 10 == 3).collect();
    assert_eq!(ids, want, "each failed event once");
    assert_eq!(summary.dead_letters_of("operator:"), EVENTS / 10);
}

/// Adds nothing, but panics on the event with value 4242 and fails each event of key
/// `u7` once (a flaky outside call) before letting it through.
struct Moody {
    flaky_seen: Arc<AtomicU64>,
}

impl Operator for Moody {
    fn name(&self) -> &str {
        "moody"
    }
    fn process(&mut self, batch: &mut OperatorBatch<'_>) {
        let live: Vec<usize> = batch.live().collect();
        for i in live {
            if batch.number(i, 0) == 4242.0 {
                panic!("cannot digest 4242");
            }
            if &batch.event(i).key[..] == b"u7" && batch.attempts(i) == 0 {
                self.flaky_seen.fetch_add(1, Ordering::Relaxed);
                batch.fail(i, Failure::transient("unavailable", "partner timed out"));
            }
        }
    }
}

#[test]
fn a_panicking_operator_quarantines_its_poison_pill_and_transient_failures_heal() {
    let dir = tempfile::tempdir().unwrap();
    let mut expected = write_events(&dir.path().join("events.jsonl"));
    // The poison pill: one more line with value 4242 (not in `expected`).
    {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join("events.jsonl"))
            .unwrap();
        writeln!(
            f,
            r#"{{"id":"poison","user":"u1","ts":1700000050000,"value":4242}}"#
        )
        .unwrap();
    }
    // Every event goes through (no filter); values >= 1000 count too.
    for i in 0..EVENTS {
        if i % 10 == 3 {
            let ts = 1_700_000_000_000 + i as i64;
            let e = expected
                .entry((ts - ts.rem_euclid(1000), format!("u{}", i % 500)))
                .or_insert((0, 0.0));
            e.0 += 1;
            e.1 += 1000.0 + i as f64;
        }
    }
    let config = config(dir.path());
    let flaky_seen = Arc::new(AtomicU64::new(0));
    let seen = flaky_seen.clone();
    let summary = Pipeline::new(config)
        .unwrap()
        .with_operator(move |_| {
            Box::new(Moody {
                flaky_seen: seen.clone(),
            })
        })
        .run(Arc::new(Control::new()))
        .unwrap();
    assert!(summary.complete);
    assert_eq!(
        rows(&dir.path().join("out.db")),
        expected,
        "every event but the pill, once"
    );
    let dlq = dead_letters(&dir.path().join("data"));
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    assert_eq!(
        (dlq[0].stage.as_str(), dlq[0].kind.as_str()),
        ("operator:moody", "panic")
    );
    assert!(
        dlq[0].reason.contains("cannot digest 4242"),
        "{}",
        dlq[0].reason
    );
    assert!(String::from_utf8_lossy(&dlq[0].payload).contains("\"poison\""));
    // Key u7 has EVENTS / 500 events; each failed at least once (more where the
    // bisection after the panic ran the operator on it again) and passed on a retry.
    assert!(flaky_seen.load(Ordering::Relaxed) >= EVENTS / 500);
}
