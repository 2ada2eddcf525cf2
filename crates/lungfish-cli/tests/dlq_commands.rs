//! `lungfish dlq list | show | purge | replay` through the real binary: entries with their
//! metadata, purging only with --yes, and replay putting each event into the log and the
//! results exactly once, also when the replay is killed between its appends and the
//! record that marks it done.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;

use common::*;
use lungfish::dlq::{DeadLetter, DeadLetters};
use lungfish::event::EventRef;
use lungfish_log::{FsyncPolicy, Log, LogConfig};

fn cmd(dir: &Path, args: &[&str]) -> Output {
    lungfish(dir).args(args).output().unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs `lungfish ARGS`; panics with its output unless it succeeds; returns stdout.
fn ok(dir: &Path, args: &[&str]) -> String {
    let out = cmd(dir, args);
    assert!(
        out.status.success(),
        "{args:?}: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

/// `lungfish dlq list` lines, split at tabs.
fn listed(dir: &Path, extra: &[&str]) -> Vec<Vec<String>> {
    let mut args = vec!["dlq", "list", "p.toml"];
    args.extend_from_slice(extra);
    ok(dir, &args)
        .lines()
        .map(|l| l.split('\t').map(str::to_owned).collect())
        .collect()
}

const FILE_PIPELINE: &str = r#"data_dir = "data"
[sources.in]
type = "file"
paths = ["events.jsonl"]
[log]
partitions = 3
[pipeline]
window = { type = "tumbling", size = "1h" }
aggregates = ["count", "sum(value)", "mean(value)"]
[sinks.results]
type = "sqlite"
path = "out.db"
"#;

#[test]
fn list_show_and_purge_with_and_without_yes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut text = [
        r#"{"id":"a","user":"u1","ts":1000,"value":1.5}"#,
        r#"{"id":"c","user":"u2","ts":1300,"value":"#,
        r#"{"id":"d","ts":1400,"value":3}"#,
        r#"{"id":"e","user":"u2","ts":"1500","value":3}"#,
        r#"{"id":"f","user":"u2","ts":1600,"value":[1]}"#,
    ]
    .join("\n")
    .into_bytes();
    text.extend_from_slice(b"\n{\"id\":\"j\",\"user\":\"u3\",\"ts\":2800,\"value\":\xff}\n");
    std::fs::write(d.join("events.jsonl"), &text).unwrap();
    std::fs::write(d.join("p.toml"), FILE_PIPELINE).unwrap();
    run_ok(d, "p.toml");

    let all = listed(d, &[]);
    let kinds: Vec<(&str, &str)> = all.iter().map(|l| (l[0].as_str(), l[2].as_str())).collect();
    assert_eq!(
        kinds,
        vec![
            ("0", "invalid_json"),
            ("1", "missing_field"),
            ("2", "wrong_type"),
            ("3", "wrong_type"),
            ("4", "invalid_utf8"),
        ]
    );
    let by_reason = listed(d, &["--reason-contains", "`ts`"]);
    assert_eq!(by_reason.len(), 1, "{by_reason:?}");
    assert_eq!(by_reason[0][3], "events.jsonl:4");

    // Show: every field.
    let shown = ok(d, &["dlq", "show", "p.toml", "1"]);
    let field = |name: &str| {
        shown
            .lines()
            .find_map(|l| (l.get(..15)?.trim_end() == name).then(|| l[16..].to_owned()))
            .unwrap_or_else(|| panic!("no {name} in:\n{shown}"))
    };
    assert_eq!(field("offset"), "1");
    assert_eq!(field("state"), "pending");
    assert_eq!(field("stage"), "source:in");
    assert_eq!(field("kind"), "missing_field");
    assert!(field("reason").contains("user"), "{shown}");
    assert_eq!(field("location"), "events.jsonl:3");
    assert_eq!(field("source"), "- (never reached the event log)");
    assert_eq!(field("attempts"), "1");
    let first = field("first failure");
    assert!(
        first.len() == 24 && first.ends_with('Z') && first.as_bytes()[10] == b'T',
        "RFC 3339 UTC: {first}"
    );
    assert_eq!(field("last failure"), first);
    assert_eq!(field("payload length"), "30 bytes");
    assert_eq!(field("payload"), r#"{"id":"d","ts":1400,"value":3}"#);
    let binary = ok(d, &["dlq", "show", "p.toml", "4"]);
    assert!(binary.contains("payload (hex)"), "{binary}");
    assert!(binary.contains("ff7d"), "the bytes in hex: {binary}");

    // Purge without --yes changes nothing.
    let dry = ok(d, &["dlq", "purge", "p.toml", "--kind", "wrong_type"]);
    assert!(dry.contains("2 entries would be purged"), "{dry}");
    assert!(
        dry.contains("events.jsonl:4") && dry.contains("events.jsonl:5"),
        "{dry}"
    );
    assert_eq!(listed(d, &[]).len(), 5);

    // With --yes they are hidden from list, and shown as purged with --all.
    let done = ok(
        d,
        &["dlq", "purge", "p.toml", "--kind", "wrong_type", "--yes"],
    );
    assert!(done.contains("purged 2 entries"), "{done}");
    let pending: Vec<String> = listed(d, &[]).into_iter().map(|l| l[0].clone()).collect();
    assert_eq!(pending, vec!["0", "1", "4"]);
    let states: Vec<(String, String)> = listed(d, &["--all"])
        .into_iter()
        .map(|l| (l[0].clone(), l[5].clone()))
        .collect();
    assert_eq!(
        states,
        vec![
            ("0".into(), "pending".into()),
            ("1".into(), "pending".into()),
            ("2".into(), "purged".into()),
            ("3".into(), "purged".into()),
            ("4".into(), "pending".into()),
        ]
    );
    assert!(ok(d, &["dlq", "show", "p.toml", "2"]).contains("purged"));
    // Purging them again finds nothing to do.
    let again = ok(
        d,
        &["dlq", "purge", "p.toml", "--kind", "wrong_type", "--yes"],
    );
    assert!(again.contains("nothing to purge"), "{again}");
    // The run summary still counts every rejected line.
    let out = run_ok(d, "p.toml");
    assert!(
        stdout(&out)
            .lines()
            .any(|l| l.trim_start().starts_with("rejected") && l.contains(" 5 ")),
        "{}",
        stdout(&out)
    );
}

/// An event as JSON.
fn event(id: &str, user: &str, ts: i64, value: f64) -> String {
    format!(r#"{{"id":"{id}","user":"{user}","ts":{ts},"value":{value}}}"#)
}

/// Window [1h, 2h).
const HOUR: i64 = 3_600_000;

/// Writes dead letters as a pipeline's operator would have: valid events an operator
/// refused (and one payload that is not a valid event).
fn dead_letters_to_replay(d: &Path) -> Vec<String> {
    let replayed: Vec<String> = (0..12)
        .map(|i| {
            event(
                &format!("r{i}"),
                &format!("u{}", i % 4),
                HOUR + 100 + i,
                1.0 + i as f64,
            )
        })
        .collect();
    let dlq = DeadLetters::open(d.join("data").join("dlq"), FsyncPolicy::Always).unwrap();
    let mut entries: Vec<DeadLetter> = replayed
        .iter()
        .map(|p| {
            DeadLetter::new(
                "operator:check",
                "check_failed",
                "value out of range",
                "log partition 0 offset 0",
                p.clone().into_bytes(),
            )
        })
        .collect();
    entries.insert(
        5,
        DeadLetter::new(
            "operator:check",
            "check_failed",
            "value out of range",
            "somewhere",
            br#"{"id":"bad","ts":1}"#.to_vec(),
        ),
    );
    dlq.append(&entries, None)
        .unwrap()
        .ticket
        .wait(std::time::Duration::from_secs(5))
        .unwrap();
    replayed
}

/// The file input: events in the same hour.
fn file_events(d: &Path) -> Vec<String> {
    let lines: Vec<String> = (0..10)
        .map(|i| {
            event(
                &format!("f{i}"),
                &format!("u{}", i % 3),
                HOUR + 5000 + i,
                0.5,
            )
        })
        .collect();
    std::fs::write(d.join("events.jsonl"), lines.join("\n") + "\n").unwrap();
    std::fs::write(d.join("p.toml"), FILE_PIPELINE).unwrap();
    lines
}

/// The ids of every event in the log, sorted (repeats kept).
fn log_ids(d: &Path) -> Vec<String> {
    let dir = d.join("data").join("log");
    let log = Log::open(
        &dir,
        LogConfig {
            partitions: Log::partitions_in(&dir).unwrap(),
            ..LogConfig::default()
        },
    )
    .unwrap();
    let mut ids = Vec::new();
    for p in 0..log.partitions() {
        let mut reader = log.reader(p, 0).unwrap();
        loop {
            let chunk = reader.read(1 << 20).unwrap();
            if chunk.is_empty() {
                break;
            }
            for (_, record) in chunk.records() {
                let e = EventRef::decode(record).unwrap();
                ids.push(String::from_utf8(e.id.to_vec()).unwrap());
            }
        }
    }
    ids.sort();
    ids
}

/// Asserts the table holds each of `events` exactly once: per key, count and sum.
fn assert_counted_once(d: &Path, events: &[String]) {
    let mut want: BTreeMap<(i64, String), (i64, f64)> = BTreeMap::new();
    for e in events {
        let v: serde_json::Value = serde_json::from_str(e).unwrap();
        let key = v["user"].as_str().unwrap().to_owned();
        let start = v["ts"].as_i64().unwrap() / HOUR * HOUR;
        let w = want.entry((start, key)).or_default();
        w.0 += 1;
        w.1 += v["value"].as_f64().unwrap();
    }
    let got: BTreeMap<(i64, String), (i64, f64)> = read_table(&d.join("out.db"))
        .into_iter()
        .map(|(k, (_, count, sum, _))| (k, (count, sum)))
        .collect();
    assert_eq!(got, want);
    assert_eq!(
        got.values().map(|v| v.0).sum::<i64>(),
        events.len() as i64,
        "every event counted once"
    );
}

fn sorted_ids(events: &[String]) -> Vec<String> {
    let mut ids: Vec<String> = events
        .iter()
        .map(|e| {
            let v: serde_json::Value = serde_json::from_str(e).unwrap();
            v["id"].as_str().unwrap().to_owned()
        })
        .collect();
    ids.sort();
    ids
}

#[test]
fn replay_puts_each_event_into_the_log_and_the_table_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let replayed = dead_letters_to_replay(d);
    let file = file_events(d);

    // A dry run changes nothing.
    let dry = ok(d, &["dlq", "replay", "p.toml", "--dry-run"]);
    assert!(
        dry.contains("12 entries would be replayed, 1 would be rejected again"),
        "{dry}"
    );
    assert_eq!(listed(d, &[]).len(), 13);

    let out = ok(d, &["dlq", "replay", "p.toml"]);
    assert!(
        out.contains("replayed 12 entries into the log; rejected again 1"),
        "{out}"
    );
    assert!(out.contains("next: start the pipeline"), "{out}");
    assert!(out.contains("lungfish run p.toml"), "{out}");
    assert_eq!(log_ids(d), sorted_ids(&replayed));
    // The refused payload is a new pending entry of stage `replay`, on its 2nd attempt.
    let pending = listed(d, &[]);
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert_eq!(
        (pending[0][1].as_str(), pending[0][2].as_str()),
        ("replay", "missing_field")
    );
    let shown = ok(d, &["dlq", "show", "p.toml", &pending[0][0]]);
    assert!(
        shown
            .lines()
            .any(|l| l.starts_with("attempts") && l.ends_with(" 2")),
        "{shown}"
    );
    assert!(
        listed(d, &["--all"])
            .iter()
            .filter(|l| l[5].starts_with("replayed (replay "))
            .count()
            == 13
    );

    // Nothing of the operator's entries is left to replay.
    let again = ok(d, &["dlq", "replay", "p.toml", "--stage", "operator:check"]);
    assert!(again.contains("nothing to replay"), "{again}");

    run_ok(d, "p.toml");
    let all: Vec<String> = replayed.iter().chain(&file).cloned().collect();
    assert_counted_once(d, &all);
    assert_eq!(log_ids(d), sorted_ids(&all));
}

#[test]
fn a_replay_killed_after_its_appends_is_finished_by_the_next_without_repeats() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let replayed = dead_letters_to_replay(d);
    let file = file_events(d);

    let crashed = lungfish(d)
        .args(["dlq", "replay", "p.toml"])
        .env("LUNGFISH_TEST_CRASH_AFTER_REPLAY_APPEND", "1")
        .output()
        .unwrap();
    assert_eq!(crashed.status.code(), Some(137), "{}", stderr(&crashed));
    // The events are in the log already; the entries read as an interrupted replay.
    assert_eq!(log_ids(d), sorted_ids(&replayed));
    let states = listed(d, &["--all"]);
    assert_eq!(
        states
            .iter()
            .filter(|l| l[5].ends_with("interrupted"))
            .count(),
        13,
        "{states:?}"
    );
    assert!(listed(d, &["--stage", "replay"]).len() == 1);
    // Purge leaves an interrupted replay alone.
    let purge = cmd(
        d,
        &[
            "dlq",
            "purge",
            "p.toml",
            "--stage",
            "operator:check",
            "--yes",
        ],
    );
    assert!(
        stdout(&purge).contains("nothing to purge"),
        "{}",
        stdout(&purge)
    );

    // The next replay finishes it: nothing appended twice, no second new entry (the
    // one the interrupted replay wrote was just tried, and is left for later).
    let out = ok(d, &["dlq", "replay", "p.toml"]);
    assert!(out.contains("finished the interrupted replay"), "{out}");
    assert!(
        out.contains("13 entries (13 already in the log or the queue)"),
        "{out}"
    );
    assert!(
        out.contains("replayed 0 entries into the log; rejected again 0"),
        "{out}"
    );
    assert_eq!(log_ids(d), sorted_ids(&replayed));
    assert_eq!(listed(d, &["--stage", "replay"]).len(), 1);
    let states = listed(d, &["--all", "--stage", "operator:check"]);
    assert!(
        states.iter().all(|l| l[5].starts_with("replayed")),
        "{states:?}"
    );
    let again = ok(d, &["dlq", "replay", "p.toml", "--stage", "operator:check"]);
    assert!(again.contains("nothing to replay"), "{again}");

    run_ok(d, "p.toml");
    let all: Vec<String> = replayed.iter().chain(&file).cloned().collect();
    assert_counted_once(d, &all);
    assert_eq!(log_ids(d), sorted_ids(&all));
}

#[test]
fn bad_filters_and_unknown_offsets_are_refused_with_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    dead_letters_to_replay(d);
    file_events(d);
    let cases: &[&[&str]] = &[
        &["dlq", "show", "p.toml", "999"],
        &["dlq", "list", "p.toml", "--offset", "999"],
        &["dlq", "purge", "p.toml", "--offset", "999", "--yes"],
        &[
            "dlq", "replay", "p.toml", "--offset", "3", "--offset", "999",
        ],
        &["dlq", "purge", "p.toml", "--yes"],
        &["dlq", "list", "p.toml", "--kind", ""],
        &["dlq", "replay", "p.toml", "--reason-contains", ""],
        &["dlq", "show", "p.toml", "abc"],
        &["dlq", "purge", "p.toml", "--offset", "-1"],
    ];
    for args in cases {
        let out = cmd(d, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(!stderr(&out).is_empty(), "{args:?}: says why");
    }
    let unknown = stderr(&cmd(d, &["dlq", "replay", "p.toml", "--offset", "999"]));
    assert!(unknown.contains("no entry at offset 999"), "{unknown}");
    let no_filter = stderr(&cmd(d, &["dlq", "purge", "p.toml", "--yes"]));
    assert!(
        no_filter.contains("needs at least one filter"),
        "{no_filter}"
    );
    // Nothing was written: every entry is still pending, the log does not exist.
    assert_eq!(listed(d, &[]).len(), 13);
    assert!(!d.join("data").join("log").exists());
}

#[test]
fn the_commands_refuse_to_run_while_the_pipeline_holds_the_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    dead_letters_to_replay(d);
    file_events(d);
    let lock = lungfish::data_dir::DataDir::lock(&d.join("data")).unwrap();
    for args in [
        &["dlq", "list", "p.toml"][..],
        &["dlq", "show", "p.toml", "0"],
        &["dlq", "purge", "p.toml", "--kind", "check_failed", "--yes"],
        &["dlq", "replay", "p.toml"],
    ] {
        let out = cmd(d, args);
        assert!(!out.status.success(), "{args:?}");
        let err = stderr(&out);
        assert!(
            err.contains("works only while the pipeline is stopped") && err.contains("in use"),
            "{args:?}: {err}"
        );
    }
    drop(lock);
    assert_eq!(listed(d, &[]).len(), 13);
}
