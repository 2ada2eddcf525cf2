//! Protobuf input through the real binary: the same events as JSON lines and as
//! length-delimited `acme.Event` messages (`examples/events.proto`, encoded here by
//! `prost-reflect`'s `DynamicMessage`, independent of the scanner under test) give
//! identical SQLite tables, from files and over HTTP (`application/x-protobuf`, also
//! gzip-compressed); bad messages go to the dead-letter queue with their reasons while
//! the rest of their file chunk or request goes on.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::http::*;
use common::*;
use lungfish::dlq::{DeadLetter, DeadLetters};
use prost_reflect::prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, Value};

fn proto_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/events.proto")
}

/// The schema, compiled by protox's own `compile` (the encoder below is
/// `prost-reflect`'s, not the scanner under test).
fn pool() -> DescriptorPool {
    let proto = proto_path();
    let fds = protox::compile([proto.file_name().unwrap()], [proto.parent().unwrap()]).unwrap();
    DescriptorPool::from_file_descriptor_set(fds).unwrap()
}

/// Event `i` of a data set: key, time, id, value, bytes.
struct Ev {
    user: String,
    ts: i64,
    id: String,
    value: f64,
    bytes: i64,
}

fn events(n: u64, keys: u64, step_ms: i64, prefix: &str) -> Vec<Ev> {
    (0..n)
        .map(|i| Ev {
            user: format!("{prefix}{}", (i * 7919) % keys),
            // Up to 1.2 s out of order: with 1 s allowed, a few are late (in both runs).
            ts: T0 + i as i64 * step_ms - ((i * 31) % 5) as i64 * 300,
            id: format!("e{i}"),
            // Zero sometimes: a plain proto3 field then is not on the wire at all.
            value: ((i % 41) as f64 - 7.0) * 0.25,
            bytes: (i * 13 % 1000) as i64,
        })
        .collect()
}

fn json_line(e: &Ev) -> String {
    format!(
        r#"{{"id":"{}","user":"{}","ts":{},"value":{},"bytes":{},"country":"nz","device":{{"model":"x","os":"y"}},"tags":["a","b"]}}"#,
        e.id, e.user, e.ts, e.value, e.bytes
    )
}

fn message(pool: &DescriptorPool, e: &Ev) -> Vec<u8> {
    let desc = pool.get_message_by_name("acme.Event").unwrap();
    let mut device = DynamicMessage::new(pool.get_message_by_name("acme.Device").unwrap());
    device.set_field_by_name("model", Value::String("x".into()));
    device.set_field_by_name("os", Value::String("y".into()));
    let mut m = DynamicMessage::new(desc);
    m.set_field_by_name("id", Value::String(e.id.clone()));
    m.set_field_by_name("user", Value::String(e.user.clone()));
    m.set_field_by_name("ts", Value::I64(e.ts));
    m.set_field_by_name("value", Value::F64(e.value));
    m.set_field_by_name("bytes", Value::I64(e.bytes));
    m.set_field_by_name("country", Value::String("nz".into()));
    m.set_field_by_name("device", Value::Message(device));
    m.set_field_by_name(
        "tags",
        Value::List(vec![Value::String("a".into()), Value::String("b".into())]),
    );
    m.encode_to_vec()
}

fn delimited(out: &mut Vec<u8>, msg: &[u8]) -> usize {
    let at = out.len();
    prost_reflect::prost::encoding::encode_varint(msg.len() as u64, out);
    out.extend_from_slice(msg);
    at
}

/// Bad messages, each with the kind it must be refused with: a message cut short, the
/// time sent length-delimited, a key that is not UTF-8, no time, one over
/// `max_event_size`.
fn bad_messages(pool: &DescriptorPool) -> Vec<(Vec<u8>, &'static str)> {
    let good = message(
        pool,
        &Ev {
            user: "bad".into(),
            ts: T0,
            id: "b".into(),
            value: 1.0,
            bytes: 1,
        },
    );
    let mut cut = good.clone();
    // Ends inside the last field (a tag without its value).
    cut.truncate(good.len() - 2);
    let mut huge = good.clone();
    // country = 6, 3000 bytes.
    huge.extend_from_slice(&[0x32, 0xb8, 0x17]);
    huge.extend(std::iter::repeat_n(b'x', 3000));
    vec![
        (cut, "invalid_protobuf"),
        (vec![0x12, 1, b'k', 0x1a, 1, 5], "wrong_type"),
        (vec![0x12, 2, 0xc3, 0x28, 0x18, 5], "invalid_utf8"),
        (
            vec![0x12, 1, b'k', 0x21, 0, 0, 0, 0, 0, 0, 0xf0, 0x3f],
            "missing_field",
        ),
        (huge, "too_large"),
    ]
}

fn pipeline(source: &str, extra: &str) -> String {
    format!(
        r#"name = "p"
data_dir = "data"

{source}

[pipeline]
out_of_orderness = "1s"
max_event_size = "2KiB"
window = {{ type = "tumbling", size = "1s" }}
aggregates = ["count", "sum(value)", "mean(value)"]

[sinks.results]
type = "sqlite"
path = "out.db"
{extra}"#
    )
}

fn protobuf_table(proto: &Path) -> String {
    format!(
        "[protobuf]\nfile = {:?}\nmessage = \"acme.Event\"\n",
        proto.display().to_string()
    )
}

fn dead_letters(dir: &Path) -> Vec<DeadLetter> {
    let dlq = DeadLetters::open(dir.join("data/dlq"), lungfish_log::FsyncPolicy::Never).unwrap();
    let mut out = Vec::new();
    dlq.for_each(0, |_, e| out.push(e.expect("decodable entry")))
        .unwrap();
    out
}

#[test]
fn json_lines_and_protobuf_files_with_the_same_events_give_identical_tables() {
    let pool = pool();
    let evs = events(30_000, 300, 3, "u");
    let json_dir = tempfile::tempdir().unwrap();
    let pb_dir = tempfile::tempdir().unwrap();
    let mut lines = String::new();
    for e in &evs {
        lines.push_str(&json_line(e));
        lines.push('\n');
    }
    std::fs::write(json_dir.path().join("events.jsonl"), &lines).unwrap();
    // The Protobuf file: the same events, with the bad messages among them and a
    // broken length prefix at the end.
    let bad = bad_messages(&pool);
    let mut data = Vec::new();
    let mut bad_at = Vec::new();
    for (i, e) in evs.iter().enumerate() {
        if i % 5000 == 2500 {
            let (msg, kind) = &bad[(i / 5000) % bad.len()];
            bad_at.push((delimited(&mut data, msg), *kind));
        }
        delimited(&mut data, &message(&pool, e));
    }
    bad_at.push((data.len(), "invalid_framing"));
    data.extend_from_slice(&[0x85]);
    std::fs::write(pb_dir.path().join("events.pb"), &data).unwrap();
    // Protobuf is smaller on the wire.
    assert!(
        data.len() < lines.len() * 2 / 3,
        "{} vs {}",
        data.len(),
        lines.len()
    );

    std::fs::write(
        json_dir.path().join("p.toml"),
        pipeline(
            "[sources.events]\ntype = \"file\"\npaths = [\"events.jsonl\"]",
            "",
        ),
    )
    .unwrap();
    std::fs::write(
        pb_dir.path().join("p.toml"),
        pipeline(
            "[sources.events]\ntype = \"file\"\npaths = [\"events.pb\"]\nformat = \"protobuf\"",
            &protobuf_table(&proto_path()),
        ),
    )
    .unwrap();
    run_ok(json_dir.path(), "p.toml");
    run_ok(pb_dir.path(), "p.toml");
    let json_rows = read_table(&json_dir.path().join("out.db"));
    let pb_rows = read_table(&pb_dir.path().join("out.db"));
    assert!(json_rows.len() > 1000, "{} rows", json_rows.len());
    assert_eq!(pb_rows, json_rows);
    // And both are what a batch computation of the JSON gives.
    let expected = batch_windows(
        lines.lines().map(str::as_bytes),
        lungfish::config::LogSettings::default().partitions,
        1000,
        1000,
        1000,
    );
    assert_eq!(json_rows, expected.rows);
    assert!(expected.late > 0, "the data has late events");

    // The bad messages: each once, with its reason and byte offset, and the late
    // events as Protobuf payloads.
    let letters = dead_letters(pb_dir.path());
    let origin = "events.pb";
    let source: Vec<(String, String)> = letters
        .iter()
        .filter(|d| d.stage == "source:events")
        .map(|d| (d.kind.clone(), d.location.clone()))
        .collect();
    let want: Vec<(String, String)> = bad_at
        .iter()
        .map(|(at, kind)| ((*kind).to_owned(), format!("{origin}@{at}")))
        .collect();
    assert_eq!(source, want);
    for d in letters.iter().filter(|d| d.stage == "source:events") {
        assert!(!d.reason.is_empty());
        if d.kind == "too_large" {
            assert!(d.reason.contains("exceeds max_event_size"), "{}", d.reason);
        }
        if d.kind == "invalid_framing" {
            assert!(d.reason.contains("cannot be split"), "{}", d.reason);
        }
    }
    let late: Vec<&DeadLetter> = letters.iter().filter(|d| d.kind == "late").collect();
    assert_eq!(late.len() as u64, expected.late);
    let desc = pool.get_message_by_name("acme.Event").unwrap();
    for d in late {
        let m = DynamicMessage::decode(desc.clone(), &d.payload[..]).unwrap();
        assert!(m.get_field_by_name("user").is_some());
    }
}

/// Waits until the table's rows of keys starting with `prefix` count `want` events.
fn wait_for(db: &Path, prefix: &str, want: i64) -> BTreeMap<(i64, String), (i64, i64, f64, f64)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if db.exists() {
            let rows: BTreeMap<_, _> = read_table(db)
                .into_iter()
                .filter(|((_, k), _)| k.starts_with(prefix))
                .collect();
            let n: i64 = rows.values().map(|r| r.1).sum();
            if n == want || Instant::now() > deadline {
                return rows;
            }
        }
        assert!(Instant::now() < deadline, "no table");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn protobuf_over_http_matches_ndjson_and_bad_messages_are_listed_by_index() {
    let pool = pool();
    let evs = events(3_000, 40, 2, "k-");
    let proto = protobuf_table(&proto_path());
    let mut json = Server::start_with("formats = [\"ndjson\"]", "out_of_orderness = \"5s\"", "");
    let mut pb = Server::start_with(
        "formats = [\"protobuf\"]",
        "out_of_orderness = \"5s\"",
        &proto,
    );
    let bad = bad_messages(&pool);
    for (n, chunk) in evs.chunks(500).enumerate() {
        let ndjson: String = chunk.iter().map(|e| json_line(e) + "\n").collect();
        let r = post(json.port, "c", "application/x-ndjson", ndjson.as_bytes());
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let mut body = Vec::new();
        let mut bad_indexes = Vec::new();
        let mut index = 0u64;
        for (i, e) in chunk.iter().enumerate() {
            if n == 1 && (i == 10 || i == 20) {
                delimited(&mut body, &bad[i / 10].0);
                bad_indexes.push((index, bad[i / 10].1));
                index += 1;
            }
            delimited(&mut body, &message(&pool, e));
            index += 1;
        }
        if n == 5 {
            // A broken prefix: the rest of the request is one rejection.
            body.extend_from_slice(&[0xff, 0xff, 0x01, 9, 9]);
            bad_indexes.push((index, "invalid_framing"));
        }
        let r = if n == 2 {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(&body).unwrap();
            post_with(
                pb.port,
                "c",
                &[
                    ("content-type", "application/x-protobuf"),
                    ("content-encoding", "gzip"),
                ],
                &e.finish().unwrap(),
            )
        } else {
            post(pb.port, "c", "application/x-protobuf", &body)
        };
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let v = r.json();
        assert_eq!(v["accepted"].as_u64(), Some(chunk.len() as u64), "{v}");
        let rejected: Vec<u64> = v["rejected"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["index"].as_u64().unwrap())
            .collect();
        let want: Vec<u64> = bad_indexes.iter().map(|b| b.0).collect();
        assert_eq!(rejected, want, "{v}");
        if n == 5 {
            let reason = v["rejected"][0]["reason"].as_str().unwrap();
            assert!(reason.contains("cannot be split"), "{reason}");
        }
    }
    // The wrong content type for each: 415 with a reason.
    let r = post(json.port, "c", "application/x-protobuf", b"\x00");
    assert_eq!(r.status, 415);
    assert!(
        r.message().contains("application/x-ndjson"),
        "{}",
        r.message()
    );
    let r = post(pb.port, "c", "application/x-ndjson", b"{}\n");
    assert_eq!(r.status, 415);
    assert!(
        r.message().contains("application/x-protobuf"),
        "{}",
        r.message()
    );
    // Close the windows: later events on every partition.
    let closers: Vec<Ev> = (0..32)
        .map(|i| Ev {
            user: format!("closer-{i}"),
            ts: T0 + 3_600_000,
            id: String::new(),
            value: 0.0,
            bytes: 0,
        })
        .collect();
    let ndjson: String = closers.iter().map(|e| json_line(e) + "\n").collect();
    assert_eq!(
        post(json.port, "c", "application/x-ndjson", ndjson.as_bytes()).status,
        200
    );
    let mut body = Vec::new();
    for e in &closers {
        delimited(&mut body, &message(&pool, e));
    }
    assert_eq!(
        post(pb.port, "c", "application/x-protobuf", &body).status,
        200
    );
    let want = evs.len() as i64;
    let json_rows = wait_for(&json.db(), "k-", want);
    let pb_rows = wait_for(&pb.db(), "k-", want);
    assert_eq!(json_rows.values().map(|r| r.1).sum::<i64>(), want);
    assert_eq!(pb_rows, json_rows);
    json.stop();
    pb.stop();
    let letters = dead_letters(pb.path());
    let kinds: Vec<&str> = letters.iter().map(|d| d.kind.as_str()).collect();
    assert_eq!(kinds, vec!["wrong_type", "invalid_utf8", "invalid_framing"]);
    assert!(
        letters[0].location.ends_with("event:10"),
        "{}",
        letters[0].location
    );
}
