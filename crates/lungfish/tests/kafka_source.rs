//! The Kafka source against a real Kafka-compatible broker (tansu, started on
//! loopback), fed by an independent client (Python confluent-kafka): exact windows
//! keyed by the messages' keys, poison messages dead-lettered with their topic,
//! partition and offset while their partition goes on, and a 30 s sink stall that
//! pauses the partitions with no rebalance and within the memory budgets.

#[path = "support/kafka.rs"]
mod kafka;

#[path = "support/stalled.rs"]
mod stalled;
use stalled::Stalled;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lungfish::config::{
    KafkaSourceConfig, NamedSink, NamedSource, SinkConfig, SourceConfig, SqliteSinkConfig,
    WindowSpec,
};
use lungfish::dlq::DeadLetters;
use lungfish::sinks::DriverSettings;
use lungfish::sinks::sqlite::SqliteSink;
use lungfish::{Control, Pipeline, PipelineConfig};

const WINDOW_MS: i64 = 1_000;
const T0: i64 = 1_700_000_000_000;

/// (window start, key, count, sum) rows, in order.
type Table = Vec<(i64, String, i64, f64)>;

fn rows(db: &std::path::Path) -> Table {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare("SELECT window_start, key, count, sum_value FROM windows ORDER BY 1, 2")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Keyed events: (kafka key, JSON payload, event time, value). The JSON never names the
/// Kafka key: half carry no `user` field, half a different one, so the windows can only
/// come out right if the message key is the event's key.
fn events(n: usize, keys: usize, disorder_ms: i64) -> Vec<(String, String, i64, f64)> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..n)
        .map(|i| {
            let key = format!("k{}", next() % keys as u64);
            let jitter = (next() % (disorder_ms as u64 + 1)) as i64;
            let ts = T0 + (i as i64) * 2 - jitter;
            let value = (next() % 100) as f64;
            let payload = if i % 2 == 0 {
                format!(r#"{{"ts":{ts},"value":{value}}}"#)
            } else {
                format!(r#"{{"user":"not-{key}","ts":{ts},"value":{value}}}"#)
            };
            (key, payload, ts, value)
        })
        .collect()
}

/// The windows an uninterrupted run must produce.
fn expected(events: &[(String, String, i64, f64)]) -> Table {
    let mut windows: BTreeMap<(i64, String), (i64, f64)> = BTreeMap::new();
    for (key, _, ts, value) in events {
        let start = ts.div_euclid(WINDOW_MS) * WINDOW_MS;
        let w = windows.entry((start, key.clone())).or_default();
        w.0 += 1;
        w.1 += value;
    }
    windows
        .into_iter()
        .map(|((start, key), (count, sum))| (start, key, count, sum))
        .collect()
}

fn produce(broker: &kafka::Broker, topic: &str, events: &[(String, String, i64, f64)]) {
    let messages: Vec<(Option<&[u8]>, &[u8])> = events
        .iter()
        .map(|(k, p, _, _)| (Some(k.as_bytes()), p.as_bytes()))
        .collect();
    assert_eq!(kafka::produce(broker, topic, &messages), events.len());
}

fn pipeline(dir: &std::path::Path, source: KafkaSourceConfig) -> PipelineConfig {
    let mut config = PipelineConfig {
        name: "kafka-test".into(),
        data_dir: dir.join("data"),
        sources: vec![NamedSource {
            name: "topic".into(),
            config: SourceConfig::Kafka(source),
        }],
        sinks: vec![NamedSink {
            name: "db".into(),
            config: SinkConfig::Sqlite(SqliteSinkConfig::new(dir.join("out.db"))),
        }],
        ..PipelineConfig::default()
    };
    config.pipeline.window = WindowSpec::Tumbling {
        size: Duration::from_millis(WINDOW_MS as u64),
    };
    config.pipeline.aggregates = vec![
        lungfish::config::AggregateSpec::count(),
        "sum(value)".parse().unwrap(),
    ];
    config.pipeline.out_of_orderness = Duration::from_millis(500);
    config
}

#[test]
fn a_topic_becomes_exact_windows_keyed_by_message_key_and_poison_goes_to_the_dlq() {
    let broker = kafka::Broker::start();
    broker.create_topic("events", 4);
    let first = events(12_000, 300, 400);
    let second = events(12_000, 300, 400)
        .into_iter()
        .map(|(k, _, ts, v)| {
            let ts = ts + 24_000;
            (k, format!(r#"{{"ts":{ts},"value":{v}}}"#), ts, v)
        })
        .collect::<Vec<_>>();
    produce(&broker, "events", &first);
    // Poison in the middle of partitions: not JSON, and JSON with no key anywhere.
    let poison: [(Option<&[u8]>, &[u8]); 2] = [
        (Some(b"k1"), b"this is not json"),
        (None, br#"{"ts":1700000000000,"value":1}"#),
    ];
    assert_eq!(kafka::produce(&broker, "events", &poison), 2);
    produce(&broker, "events", &second);

    let dir = tempfile::tempdir().unwrap();
    let mut source = KafkaSourceConfig::new(&broker.address(), &["events"]);
    source.bounded = true;
    let config = pipeline(dir.path(), source);
    config.validate().unwrap();
    let summary = Pipeline::new(config)
        .unwrap()
        .run(Arc::new(Control::new()))
        .expect("the run succeeds");
    let report = summary.kafka.clone().expect("a kafka report");
    assert!(report.finished, "{report:?}");
    assert!(summary.complete);
    assert_eq!(report.messages, 24_002, "{report:?}");
    assert_eq!(summary.processed, 24_002);

    let all: Vec<_> = first.iter().chain(&second).cloned().collect();
    let got = rows(&dir.path().join("out.db"));
    let want = expected(&all);
    assert_eq!(got.len(), want.len(), "as many windows as expected");
    assert_eq!(got, want, "exactly the expected windows");

    // Both poison messages are in the queue with their place in the topic.
    let in_topic = kafka::consume_all(
        &broker,
        "events",
        Duration::from_secs(2),
        Duration::from_secs(60),
    );
    let places: Vec<String> = in_topic
        .iter()
        .filter(|m| m.value_str() == "this is not json" || m.key.is_none())
        .map(|m| {
            format!(
                "kafka topic events partition {} offset {}",
                m.partition, m.offset
            )
        })
        .collect();
    assert_eq!(places.len(), 2);
    let dlq = DeadLetters::open(
        dir.path().join("data").join("dlq"),
        lungfish::config::FsyncPolicy::Never,
    )
    .unwrap();
    let mut entries = Vec::new();
    dlq.for_each(0, |_, e| entries.push(e.expect("decodable")))
        .unwrap();
    let mut locations: Vec<_> = entries.iter().map(|e| e.location.clone()).collect();
    locations.sort();
    let mut places = places;
    places.sort();
    assert_eq!(locations, places, "{entries:?}");
    let kinds: Vec<_> = entries.iter().map(|e| e.kind.as_str()).collect();
    assert!(kinds.contains(&"invalid_json"), "{kinds:?}");
    let missing = entries
        .iter()
        .find(|e| e.kind == "missing_field")
        .expect("the keyless message");
    assert!(
        missing.reason.contains("no key"),
        "says the message has no key: {}",
        missing.reason
    );
}

#[test]
fn a_sink_stalled_for_30_s_pauses_the_partitions_without_a_rebalance() {
    const STALL: Duration = Duration::from_secs(30);
    let broker = kafka::Broker::start();
    broker.create_topic("flood", 4);
    let all = events(200_000, 20_000, 400);
    produce(&broker, "flood", &all);

    let dir = tempfile::tempdir().unwrap();
    let mut source = KafkaSourceConfig::new(&broker.address(), &["flood"]);
    source.bounded = true;
    // A member that stopped polling for 10 s would be thrown out of the group, and its
    // partitions revoked: the stall lasts three times that.
    source.max_poll_interval = Duration::from_secs(10);
    source.session_timeout = Duration::from_secs(6);
    // A steady sink (out.db) and the stalled one (stalled.db).
    let mut config = pipeline(dir.path(), source);
    config.pipeline.memory_limit = 16 << 20;
    config.pipeline.batch_max_events = 65_536;
    config.validate().unwrap();
    let stalled = Stalled {
        inner: SqliteSink::new(&SqliteSinkConfig::new(dir.path().join("stalled.db"))),
        until: Instant::now() + STALL,
    };
    let settings = DriverSettings {
        batch_max_rows: 20_000,
        ..DriverSettings::default()
    };
    let started = Instant::now();
    let summary = Pipeline::new(config)
        .unwrap()
        .with_sink("stalled", Box::new(stalled), settings)
        .run(Arc::new(Control::new()))
        .expect("the run succeeds");
    assert!(started.elapsed() >= STALL);
    let report = summary.kafka.clone().expect("a kafka report");
    assert!(report.finished, "{report:?}");
    assert!(report.pauses >= 1, "the partitions were paused: {report:?}");
    assert_eq!(report.revocations, 0, "no rebalance: {report:?}");
    assert_eq!(
        report.assignments, 1,
        "one assignment, no rebalance: {report:?}"
    );
    assert!(
        report.max_poll_gap < Duration::from_secs(2),
        "the loop kept polling through the stall: {report:?}"
    );
    let m = summary.memory;
    assert!(
        m.shard_queues_peak <= m.plan.shard_queues && m.sink_queues_peak <= m.plan.sink_queues,
        "the queues stay within their byte budgets: {m:?}"
    );
    assert_eq!(report.messages, all.len() as u64);
    let want = expected(&all);
    assert_eq!(
        rows(&dir.path().join("out.db")),
        want,
        "every window is exact"
    );
    assert_eq!(
        rows(&dir.path().join("stalled.db")),
        want,
        "consumption resumed after the stall and the stalled sink has every window"
    );
}
