//! Two `lungfish run` instances share a topic through a consumer group; one is killed
//! with SIGKILL mid-run; the survivor takes its partitions over, replays them from the
//! committed offsets and state, and the sink ends with exactly the table of an
//! uninterrupted run: nothing lost, nothing counted twice. A real broker (tansu) on
//! loopback, events produced by an independent client (confluent-kafka).

mod common;
#[path = "../../lungfish/tests/support/kafka.rs"]
mod kafka;

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use common::http::{free_port, get};
use common::{Rows, read_table, wait_timeout};

const T0: i64 = 1_700_000_000_000;

/// (key, JSON, ts, value) events, in production order, times disordered by up to
/// `disorder` ms.
fn events(from: usize, n: usize, keys: u64, disorder: u64) -> Vec<(String, String, i64, f64)> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ from as u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (from..from + n)
        .map(|i| {
            let key = format!("u{}", next() % keys);
            let ts = T0 + i as i64 * 5 - (next() % (disorder + 1)) as i64;
            let value = (next() % 1000) as f64;
            let json = format!(r#"{{"user":"{key}","ts":{ts},"value":{value}}}"#);
            (key, json, ts, value)
        })
        .collect()
}

fn expected(events: &[(String, String, i64, f64)]) -> Rows {
    let mut rows = Rows::new();
    for (key, _, ts, value) in events {
        let start = ts.div_euclid(1000) * 1000;
        let row = rows
            .entry((start, key.clone()))
            .or_insert((start + 1000, 0, 0.0, 0.0));
        row.1 += 1;
        row.2 += value;
        row.3 = row.2 / row.1 as f64;
    }
    rows
}

fn produce(broker: &kafka::Broker, events: &[(String, String, i64, f64)]) {
    let messages: Vec<(Option<&[u8]>, &[u8])> = events
        .iter()
        .map(|(k, j, _, _)| (Some(k.as_bytes()), j.as_bytes()))
        .collect();
    assert_eq!(kafka::produce(broker, "clicks", &messages), events.len());
}

fn write_pipeline(dir: &Path, broker: &kafka::Broker, group: &str, db: &Path, extra: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let text = format!(
        r#"name = "clicks"
data_dir = "data"

[sources.clicks]
type = "kafka"
brokers = "{}"
topics = ["clicks"]
group = "{group}"
session_timeout = "6s"
{extra}

[pipeline]
key = "user"
time = "ts"
out_of_orderness = "500ms"
window = {{ type = "tumbling", size = "1s" }}
aggregates = ["count", "sum(value)", "mean(value)"]

[sinks.db]
type = "sqlite"
path = "{}"
"#,
        broker.address(),
        db.display()
    );
    std::fs::write(dir.join("pipeline.toml"), text).unwrap();
}

/// The sum of a metric's samples on an instance's /metrics (0 if absent).
fn metric(port: u16, name: &str) -> f64 {
    let Ok(resp) = std::panic::catch_unwind(|| get(port, "/metrics")) else {
        return 0.0;
    };
    String::from_utf8_lossy(&resp.body)
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with([' ', '{']))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Polls `done` until it holds; false if `timeout` passes first.
#[must_use]
fn wait_for(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    true
}

/// Rows of `db` without the tick key (whose windows stay open).
fn table(db: &Path) -> Rows {
    if !db.exists() {
        return Rows::new();
    }
    let mut rows = read_table(db);
    rows.retain(|(_, key), _| key != "tick");
    rows
}

/// A running `lungfish run` whose stderr is drained into memory by a thread, so a
/// chatty log never fills the pipe and blocks the instance.
struct Instance {
    name: &'static str,
    child: Child,
    log: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    port: u16,
}

impl Instance {
    /// Its log so far, without terminal colours (`ESC [ ... m` dropped).
    fn log(&self) -> String {
        let raw = String::from_utf8_lossy(&self.log.lock().unwrap()).into_owned();
        let mut log = String::with_capacity(raw.len());
        let mut in_escape = false;
        for c in raw.chars() {
            match (in_escape, c) {
                (false, '\u{1b}') => in_escape = true,
                (false, c) => log.push(c),
                (true, 'm') => in_escape = false,
                (true, _) => {}
            }
        }
        log
    }

    /// A metric of this instance; fails the test with its log if it has exited.
    fn metric(&mut self, name: &str) -> f64 {
        if let Some(status) = self.child.try_wait().unwrap() {
            std::thread::sleep(Duration::from_millis(200));
            panic!(
                "instance {} exited with {status} during the test; its log:\n{}",
                self.name,
                self.log()
            );
        }
        metric(self.port, name)
    }
}

fn instance(
    name: &'static str,
    dir: &Path,
    broker: &kafka::Broker,
    db: &Path,
    metrics_port: u16,
) -> Instance {
    write_pipeline(
        dir,
        broker,
        "clicks-group",
        db,
        &format!("\n[metrics]\naddress = \"127.0.0.1:{metrics_port}\""),
    );
    // Info logs name every partition taken and the offset it starts from.
    let mut child = common::lungfish(dir)
        .env("LUNGFISH_LOG", "lungfish=info")
        .args(["run", "--quiet", "pipeline.toml"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut stderr = child.stderr.take().unwrap();
    let sink = log.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = std::io::Read::read(&mut stderr, &mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    Instance {
        name,
        child,
        log,
        port: metrics_port,
    }
}

#[test]
fn the_survivor_of_a_kill_9_finishes_the_groups_work_with_nothing_lost_or_doubled() {
    let broker = kafka::Broker::start();
    broker.create_topic("clicks", 4);
    let first = events(0, 20_000, 400, 300);
    let second = events(20_000, 20_000, 400, 300);
    produce(&broker, &first);

    let root = tempfile::tempdir().unwrap();
    let db = root.path().join("shared.db");
    let (port_a, port_b) = (free_port(), free_port());
    let mut a = instance("a", &root.path().join("a"), &broker, &db, port_a);
    let mut b = instance("b", &root.path().join("b"), &broker, &db, port_b);
    let both = wait_for(Duration::from_secs(60), || {
        let (pa, pb) = (
            a.metric("lungfish_kafka_partitions"),
            b.metric("lungfish_kafka_partitions"),
        );
        pa > 0.0 && pb > 0.0 && pa + pb == 4.0
    });
    assert!(
        both,
        "timed out waiting for both instances to hold partitions; a:\n{}\nb:\n{}",
        a.log(),
        b.log()
    );
    let progress = wait_for(Duration::from_secs(60), || {
        a.metric("lungfish_kafka_messages_total") > 0.0 && !table(&db).is_empty()
    });
    assert!(
        progress,
        "timed out waiting for instance a to make progress; a:\n{}",
        a.log()
    );
    // Long enough for a's durable offsets to be committed at least once.
    std::thread::sleep(Duration::from_millis(1500));
    a.child.kill().unwrap();
    a.child.wait().unwrap();

    produce(&broker, &second);
    // One late tick per partition moves every watermark past the events' windows.
    for partition in 0..4 {
        let tick = format!(r#"{{"user":"tick","ts":{},"value":0}}"#, T0 + 10_000_000);
        kafka::produce_to_partition(
            &broker,
            "clicks",
            partition,
            &[(Some(b"tick".as_slice()), tick.as_bytes())],
        );
    }
    let taken = wait_for(Duration::from_secs(60), || {
        b.metric("lungfish_kafka_partitions") == 4.0
    });
    assert!(
        taken,
        "timed out waiting for the survivor to take every partition; b:\n{}",
        b.log()
    );
    let all: Vec<_> = first.iter().chain(&second).cloned().collect();
    let want = expected(&all);
    let written = wait_for(Duration::from_secs(120), || {
        b.metric("lungfish_kafka_partitions");
        table(&db).len() >= want.len()
    });
    assert!(
        written,
        "timed out waiting for the survivor to write every window ({} of {} rows); b:\n{}",
        table(&db).len(),
        want.len(),
        b.log()
    );
    // Give a wrongly doubled window the time to show up.
    std::thread::sleep(Duration::from_secs(1));
    b.child.kill().unwrap();
    let _ = wait_timeout(&mut b.child, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(200));
    let log = b.log();
    // The survivor took a's partitions from where a had committed, with its state.
    let resumed: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("partition assigned") && !l.contains("offset=0"))
        .collect();
    assert!(
        !resumed.is_empty(),
        "the survivor resumed a partition from a committed offset:\n{log}"
    );
    assert!(
        !log.contains("without Lungfish's state"),
        "every committed offset came with its replay state:\n{log}"
    );
    let got = table(&db);
    common::assert_same_rows(&got, &want, "after a kill -9 and a takeover");

    // The same topic read by one uninterrupted instance in a group of its own.
    let single = root.path().join("single");
    let single_db = root.path().join("single.db");
    write_pipeline(
        &single,
        &broker,
        "single-group",
        &single_db,
        "bounded = true",
    );
    common::run_ok(&single, "pipeline.toml");
    common::assert_same_rows(&table(&single_db), &got, "uninterrupted vs taken over");
}

#[test]
fn replaying_dead_letters_of_a_kafka_pipeline_is_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("pipeline.toml"),
        r#"data_dir = "data"
[sources.k]
type = "kafka"
brokers = "127.0.0.1:1"
topics = ["t"]
[pipeline]
window = { type = "tumbling", size = "1s" }
aggregates = ["count"]
[sinks.out]
type = "stdout"
"#,
    )
    .unwrap();
    let dlq = lungfish::dlq::DeadLetters::open(
        dir.path().join("data").join("dlq"),
        lungfish::config::FsyncPolicy::Always,
    )
    .unwrap();
    let entry = lungfish::dlq::DeadLetter::new(
        "consumer",
        "invalid_json",
        "invalid JSON at byte 1",
        "kafka topic t partition 0 offset 7",
        b"nope".to_vec(),
    );
    dlq.append_all(&[entry]).unwrap();
    drop(dlq);
    let out = common::lungfish(dir.path())
        .args(["dlq", "replay", "pipeline.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("reads a Kafka topic"), "{err}");
}
