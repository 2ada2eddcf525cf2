//! The `enrich` operator in a running pipeline, against a real HTTP partner on loopback:
//! fields land in the windows; a partner that is down either passes events on with the
//! fields missing and the flag 0, or dead-letters them (kind `unavailable`) after
//! retries within the budget. No event is lost either way.

#[path = "support/partner.rs"]
mod partner;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use lungfish::config::{
    AggFunc, AggregateSpec, EnrichConfig, EnrichMethod, FileSourceConfig, NamedOperator, NamedSink,
    NamedSource, OnUnavailable, OperatorConfig, SinkConfig, SourceConfig, SqliteSinkConfig,
};
use lungfish::dlq::DeadLetters;
use lungfish::{Control, Pipeline, PipelineConfig};
use partner::Partner;

const EVENTS: u64 = 30_000;

/// Event `i`: key `user-{i % 300}` (keys of 6 to 8 bytes), one event per ms, value 1.
fn write_events(path: &Path) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for i in 0..EVENTS {
        let ts = 1_700_000_000_000 + i as i64;
        writeln!(
            f,
            r#"{{"id":"e{i}","user":"user-{}","ts":{ts},"value":1}}"#,
            i % 300
        )
        .unwrap();
    }
    f.flush().unwrap();
}

fn config(
    dir: &Path,
    url: &str,
    method: EnrichMethod,
    on_unavailable: OnUnavailable,
) -> PipelineConfig {
    let mut enrich = EnrichConfig::new(url, &["weight"]);
    enrich.method = method;
    enrich.flag = Some("enriched".into());
    enrich.timeout = Duration::from_millis(300);
    enrich.on_unavailable = on_unavailable;
    let mut config = PipelineConfig {
        data_dir: dir.join("data"),
        sources: vec![NamedSource {
            name: "events".into(),
            config: SourceConfig::File(FileSourceConfig::new([dir
                .join("events.jsonl")
                .to_string_lossy()
                .into_owned()])),
        }],
        operators: vec![NamedOperator {
            name: "lookup".into(),
            config: OperatorConfig::Enrich(enrich),
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
        AggregateSpec::new(AggFunc::Sum, Some("weight")),
        AggregateSpec::new(AggFunc::Min, Some("enriched")),
    ];
    config
}

/// (window_start, key) -> (count, sum_weight (None if NULL), min_enriched).
type Rows = BTreeMap<(i64, String), (i64, Option<f64>, f64)>;

fn rows(db: &Path) -> Rows {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare("SELECT window_start, key, count, sum_weight, min_enriched FROM windows")
        .unwrap();
    stmt.query_map([], |r| {
        Ok(((r.get(0)?, r.get(1)?), (r.get(2)?, r.get(3)?, r.get(4)?)))
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

fn run(config: PipelineConfig) -> lungfish::Summary {
    let summary = Pipeline::new(config)
        .unwrap()
        .run(Arc::new(Control::new()))
        .unwrap();
    assert!(summary.complete);
    summary
}

#[test]
fn enriched_fields_land_in_the_windows_through_get_and_post() {
    let partner = Partner::start();
    for method in [EnrichMethod::Get, EnrichMethod::Post] {
        let dir = tempfile::tempdir().unwrap();
        write_events(&dir.path().join("events.jsonl"));
        run(config(
            dir.path(),
            &partner.url(),
            method,
            OnUnavailable::Pass,
        ));
        let rows = rows(&dir.path().join("out.db"));
        let events: i64 = rows.values().map(|r| r.0).sum();
        assert_eq!(events as u64, EVENTS);
        for ((_, key), (count, weight, enriched)) in &rows {
            let (w, _) = Partner::fields_of(key.as_bytes());
            assert_eq!(*weight, Some(w * *count as f64), "{method:?} {key}");
            assert_eq!(*enriched, 1.0);
        }
    }
    // 300 keys, cached: far fewer questions than events.
    assert!(
        partner.keys_asked() <= 2 * 300 + 50,
        "{}",
        partner.keys_asked()
    );
}

#[test]
fn a_partner_that_is_down_passes_events_flagged_or_dead_letters_them() {
    let partner = Partner::start();
    partner.set_down(true);

    // Pass: every event counted, the field missing (NULL), the flag 0.
    let dir = tempfile::tempdir().unwrap();
    write_events(&dir.path().join("events.jsonl"));
    run(config(
        dir.path(),
        &partner.url(),
        EnrichMethod::Post,
        OnUnavailable::Pass,
    ));
    let rows_pass = rows(&dir.path().join("out.db"));
    assert_eq!(rows_pass.values().map(|r| r.0).sum::<i64>() as u64, EVENTS);
    assert!(rows_pass.values().all(|r| r.1.is_none() && r.2 == 0.0));

    // Dead letter: no window rows, every event in the queue once, retried within budget.
    let dir = tempfile::tempdir().unwrap();
    write_events(&dir.path().join("events.jsonl"));
    let summary = run(config(
        dir.path(),
        &partner.url(),
        EnrichMethod::Post,
        OnUnavailable::DeadLetter,
    ));
    assert!(rows(&dir.path().join("out.db")).is_empty());
    let dlq = DeadLetters::open(
        dir.path().join("data").join("dlq"),
        lungfish_log::FsyncPolicy::Never,
    )
    .unwrap();
    let mut ids = Vec::new();
    let mut attempts = 0u64;
    dlq.for_each(0, |_, e| {
        let e = e.unwrap();
        assert_eq!(
            (e.stage.as_str(), e.kind.as_str()),
            ("operator:lookup", "unavailable")
        );
        assert!(
            e.reason.contains("503") || e.reason.contains("circuit"),
            "{}",
            e.reason
        );
        attempts += u64::from(e.attempts);
        let doc: serde_json::Value = serde_json::from_slice(&e.payload).unwrap();
        ids.push(doc["id"].as_str().unwrap().to_owned());
    })
    .unwrap();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len() as u64, EVENTS, "each event once");
    assert_eq!(summary.dead_letters_of("operator:lookup"), EVENTS);
    // Retries: at most 10% of the events plus the floor (10/s over the run).
    let retries = attempts - EVENTS;
    let floor = 10 * (summary.elapsed.as_secs() + 1) * 10;
    assert!(retries <= EVENTS / 10 + floor, "{retries} retries");
}
