//! The Kafka sink against a real Kafka-compatible broker (tansu, `support/kafka.rs`),
//! checked with an independent client (confluent-kafka): every row exactly once, keyed
//! by the row's key, the same JSON as the file sink's line; a pipeline's rows equal
//! those of its SQLite sink; a broker that is down fails the write transiently within
//! the write timeout, and writes succeed again once it is back.

#[path = "support/kafka.rs"]
mod kafka;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lungfish::config::{
    AggFunc, AggregateSpec, GeneratorConfig, KafkaSinkConfig, KeyDistribution, NamedSink,
    NamedSource, SinkConfig, SourceConfig, SqliteSinkConfig,
};
use lungfish::sinks::kafka::KafkaSink;
use lungfish::sinks::{Sink, write_json_row};
use lungfish::window::{RowSchema, WindowRows};
use lungfish::{Control, Pipeline, PipelineConfig};

use kafka::{Broker, Message};

fn schema() -> Arc<RowSchema> {
    Arc::new(RowSchema::new(
        &[
            AggregateSpec::count(),
            AggregateSpec::new(AggFunc::Sum, Some("value")),
            AggregateSpec::new(AggFunc::Max, Some("value")),
        ],
        &["value".to_owned()],
    ))
}

fn config(broker: &Broker, topic: &str) -> KafkaSinkConfig {
    let mut config = KafkaSinkConfig::new(&broker.address(), topic);
    config.write_timeout = Duration::from_secs(10);
    config
}

/// The messages of `topic`: all of them (until none came for a second).
fn read_all(broker: &Broker, topic: &str) -> Vec<Message> {
    kafka::consume_all(
        broker,
        topic,
        Duration::from_secs(1),
        Duration::from_secs(60),
    )
}

#[test]
fn every_row_is_one_message_keyed_by_its_key_with_the_file_sinks_json() {
    let broker = Broker::start();
    broker.create_topic("rows", 4);
    let mut sink = KafkaSink::new(&config(&broker, "rows")).named("test");
    sink.open(&schema()).unwrap();

    // Three batches; the first of two parts, the last with keys that need escaping.
    let mut batches: Vec<Vec<Arc<WindowRows>>> = Vec::new();
    let part = |start: i64, keys: std::ops::Range<u32>| {
        let mut rows = WindowRows::new(schema());
        for k in keys {
            let v = f64::from(k);
            rows.push(
                start,
                start + 1000,
                &format!("user-{k}"),
                &[v, v * 2.5, v + 0.25],
            );
        }
        Arc::new(rows)
    };
    batches.push(vec![part(0, 0..700), part(1000, 0..300)]);
    batches.push(vec![part(2000, 0..2500)]);
    let mut odd = WindowRows::new(schema());
    odd.push(3000, 4000, "ключ \"☃\"\\\n", &[1.0, -0.5, f64::NAN]);
    odd.push(3000, 4000, "", &[2.0, 1e300, 3.0]);
    batches.push(vec![Arc::new(odd)]);

    let mut expected: BTreeMap<(i64, String), Vec<u8>> = BTreeMap::new();
    for batch in &batches {
        for rows in batch {
            for i in 0..rows.len() {
                let mut json = Vec::new();
                write_json_row(rows, i, &mut json);
                let previous =
                    expected.insert((rows.window_start(i), rows.key(i).to_owned()), json);
                assert!(previous.is_none());
            }
        }
        sink.write(batch).unwrap();
    }

    let messages = read_all(&broker, "rows");
    assert_eq!(messages.len(), expected.len(), "every row exactly once");
    let mut seen = BTreeSet::new();
    let mut partition_of_key: BTreeMap<String, i32> = BTreeMap::new();
    for m in &messages {
        let json = m.json();
        let key = json["key"].as_str().unwrap().to_owned();
        assert_eq!(m.key_str(), key, "keyed by the row's key");
        let start = json["window_start"].as_i64().unwrap();
        assert!(
            seen.insert((start, key.clone())),
            "duplicate {key} at {start}"
        );
        assert_eq!(
            m.value,
            expected[&(start, key.clone())],
            "the file sink's JSON for {key:?}"
        );
        // The same key always lands in the same partition.
        let p = *partition_of_key.entry(key).or_insert(m.partition);
        assert_eq!(p, m.partition);
    }
    assert!(
        messages
            .iter()
            .map(|m| m.partition)
            .collect::<BTreeSet<_>>()
            .len()
            > 1,
        "keys are spread over the partitions"
    );
    // One row checked by hand: the JSON object itself.
    let m = messages.iter().find(|m| m.key_str() == "user-7").unwrap();
    assert_eq!(
        m.json(),
        serde_json::json!({
            "window_start": m.json()["window_start"], "window_end": m.json()["window_end"],
            "key": "user-7", "count": 7, "sum_value": 17.5, "max_value": 7.25
        })
    );
    let odd = messages
        .iter()
        .find(|m| m.key_str().starts_with("ключ"))
        .unwrap();
    assert_eq!(odd.key_str(), "ключ \"☃\"\\\n");
    assert_eq!(
        odd.json()["max_value"],
        serde_json::Value::Null,
        "NaN is null"
    );
}

#[test]
fn a_pipelines_rows_in_kafka_equal_its_sqlite_rows() {
    let broker = Broker::start();
    broker.create_topic("windows", 4);
    let dir = std::env::temp_dir().join(format!("lungfish-kafka-sink-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut config = PipelineConfig {
        data_dir: dir.join("data"),
        sources: vec![NamedSource {
            name: "gen".into(),
            config: SourceConfig::Generator(GeneratorConfig {
                count: Some(100_000),
                keys: 300,
                distribution: KeyDistribution::Zipf,
                seed: 5,
                events_per_second: 10_000,
                ..GeneratorConfig::default()
            }),
        }],
        sinks: vec![NamedSink {
            name: "sqlite".into(),
            config: SinkConfig::Sqlite(SqliteSinkConfig::new(dir.join("out.db"))),
        }],
        ..PipelineConfig::default()
    };
    config.pipeline.aggregates = vec![
        AggregateSpec::count(),
        AggregateSpec::new(AggFunc::Sum, Some("value")),
    ];
    let mut kafka_config = KafkaSinkConfig::new(&broker.address(), "windows");
    kafka_config.batch_max_rows = 1_000;
    let settings = KafkaSink::driver_settings(&kafka_config);
    let sink = KafkaSink::new(&kafka_config).named("kafka");
    let control = Arc::new(Control::new());
    let summary = Pipeline::new(config)
        .unwrap()
        .with_sink("kafka", Box::new(sink), settings)
        .run(control.clone())
        .expect("the pipeline runs");
    assert!(summary.complete, "{summary:?}");
    assert!(control.error().is_none());

    // (window_start, window_end, key) -> (count, sum).
    type Rows = BTreeMap<(i64, i64, String), (i64, f64)>;
    let conn = rusqlite::Connection::open(dir.join("out.db")).unwrap();
    let mut stmt = conn
        .prepare("SELECT window_start, window_end, key, count, sum_value FROM windows")
        .unwrap();
    let sqlite: Rows = stmt
        .query_map([], |r| {
            Ok(((r.get(0)?, r.get(1)?, r.get(2)?), (r.get(3)?, r.get(4)?)))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(sqlite.len() > 1_000, "{} rows", sqlite.len());

    let messages = read_all(&broker, "windows");
    let kafka: Rows = messages
        .iter()
        .map(|m| {
            let j = m.json();
            assert_eq!(m.key_str(), j["key"].as_str().unwrap());
            (
                (
                    j["window_start"].as_i64().unwrap(),
                    j["window_end"].as_i64().unwrap(),
                    j["key"].as_str().unwrap().to_owned(),
                ),
                (
                    j["count"].as_i64().unwrap(),
                    j["sum_value"].as_f64().unwrap(),
                ),
            )
        })
        .collect();
    assert_eq!(messages.len(), kafka.len(), "no row produced twice");
    assert_eq!(
        kafka.keys().collect::<Vec<_>>(),
        sqlite.keys().collect::<Vec<_>>(),
        "the same windows and keys"
    );
    for (row, (count, sum)) in &sqlite {
        let (k_count, k_sum) = kafka[row];
        assert_eq!(k_count, *count, "{row:?}");
        // serde_json's default float parsing may be off by an ulp.
        assert!(
            (k_sum - sum).abs() <= 1e-9 * sum.abs().max(1.0),
            "{row:?}: {k_sum} vs {sum}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_broker_that_is_down_fails_the_write_transiently_within_the_timeout() {
    let mut broker = Broker::start();
    broker.create_topic("rows", 2);
    let mut config = config(&broker, "rows");
    config.write_timeout = Duration::from_secs(2);
    let mut sink = KafkaSink::new(&config);
    sink.open(&schema()).unwrap();
    let batch = |start: i64| {
        let mut rows = WindowRows::new(schema());
        for k in 0..50 {
            rows.push(start, start + 1000, &format!("k{k}"), &[1.0, 2.0, 3.0]);
        }
        vec![Arc::new(rows)]
    };
    sink.write(&batch(0)).unwrap();

    broker.kill();
    let started = Instant::now();
    let e = sink.write(&batch(1000)).unwrap_err();
    let took = started.elapsed();
    eprintln!("while down, after {took:?}: {e}");
    assert!(e.retryable, "transient: {e:?}");
    assert!(
        took <= Duration::from_millis(2200),
        "failed within the write timeout: {took:?}"
    );
    assert!(e.message.contains("`rows`"), "names the topic: {e}");
    assert!(e.message.contains("of 50 messages acknowledged"), "{e}");
    assert!(e.message.contains("last client error"), "says why: {e}");

    // The broker comes back (empty: in-memory); the same sink writes again, retried as
    // the driver would.
    broker.restart();
    broker.create_topic("rows", 2);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut attempts = 0;
    loop {
        attempts += 1;
        match sink.write(&batch(2000)) {
            Ok(()) => break,
            Err(e) => {
                eprintln!("attempt {attempts}: {e}");
                assert!(e.retryable, "{e:?}");
                assert!(Instant::now() < deadline, "still failing: {e}");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
    let messages = read_all(&broker, "rows");
    let starts: BTreeSet<i64> = messages
        .iter()
        .map(|m| m.json()["window_start"].as_i64().unwrap())
        .collect();
    assert!(
        starts.contains(&2000),
        "{starts:?} after {attempts} attempts"
    );
    let keys: BTreeSet<&str> = messages
        .iter()
        .filter(|m| m.json()["window_start"] == 2000)
        .map(|m| m.key_str())
        .collect();
    assert_eq!(keys.len(), 50, "the whole batch, after {attempts} attempts");
}

#[test]
fn a_topic_that_does_not_exist_fails_open_permanently() {
    let broker = Broker::start();
    let mut sink = KafkaSink::new(&config(&broker, "missing"));
    let e = sink.open(&schema()).unwrap_err();
    assert!(!e.retryable, "{e:?}");
    assert!(
        e.message.contains("`missing`") && e.message.contains("does not exist"),
        "{e}"
    );
}
