//! Bad input loses nothing else: malformed lines are reported with their line numbers
//! and reasons and kept in the dead-letter queue, good lines are processed; a pipeline
//! file with a typo is refused naming file, line and field.

mod common;

use common::*;

#[test]
fn bad_lines_are_kept_aside_with_line_and_reason_and_good_lines_flow() {
    let dir = tempfile::tempdir().unwrap();
    let lines = [
        r#"{"id":"a","user":"u1","ts":1000,"value":1.5}"#, // 1 good
        r#"{"id":"b","user":"u1","ts":1200,"value":2}"#,   // 2 good
        r#"{"id":"c","user":"u2","ts":1300,"value":"#,     // 3 truncated JSON
        r#"{"id":"d","ts":1400,"value":3}"#,               // 4 missing key
        r#"{"id":"e","user":"u2","ts":"1500","value":3}"#, // 5 ts is a string
        r#"{"id":"f","user":"u2","ts":1600,"value":[1]}"#, // 6 value is an array
        "",                                                // 7 blank: skipped
        r#"["not","an","object"]"#,                        // 8 not an object
        r#"{"id":"g","user":"u2","ts":2500,"value":4.25}"#, // 9 good
        "\u{fffd}garbage",                                 // 10 not JSON
        r#"{"id":"h","user":true,"ts":2600,"value":1}"#,   // 11 key is a bool
        r#"{"id":"i","user":"u3","ts":2700,"value":-1}"#,  // 12 good
    ];
    let mut text = lines.join("\n").into_bytes();
    text.extend_from_slice(b"\n{\"id\":\"j\",\"user\":\"u3\",\"ts\":2800,\"value\":\xff\xfe}\n"); // 13 invalid UTF-8
    std::fs::write(dir.path().join("events.jsonl"), &text).unwrap();
    std::fs::write(
        dir.path().join("p.toml"),
        r#"data_dir = "data"
[sources.in]
type = "file"
paths = ["events.jsonl"]
[pipeline]
window = { type = "tumbling", size = "1s" }
aggregates = ["count", "sum(value)", "mean(value)"]
[sinks.results]
type = "sqlite"
path = "out.db"
"#,
    )
    .unwrap();
    let out = run_ok(dir.path(), "p.toml");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout
            .lines()
            .any(|l| l.trim_start().starts_with("rejected") && l.contains(" 8 ")),
        "{stdout}"
    );

    let rows = read_table(&dir.path().join("out.db"));
    let got: Vec<(i64, &str, i64, f64)> = rows
        .iter()
        .map(|((w, k), (_, c, s, _))| (*w, k.as_str(), *c, *s))
        .collect();
    assert_eq!(
        got,
        vec![
            (1000, "u1", 2, 3.5),
            (2000, "u2", 1, 4.25),
            (2000, "u3", 1, -1.0)
        ],
        "the good lines are all in, and only them"
    );

    let listed = lungfish(dir.path())
        .args(["dlq", "list", "p.toml"])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    let entries: Vec<(String, String, String)> = listed
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f[2].to_owned(), f[3].to_owned(), f[4].to_owned())
        })
        .collect();
    let expect = [
        ("invalid_json", "events.jsonl:3"),
        ("missing_field", "events.jsonl:4"),
        ("wrong_type", "events.jsonl:5"),
        ("wrong_type", "events.jsonl:6"),
        ("not_object", "events.jsonl:8"),
        ("invalid_json", "events.jsonl:10"),
        ("wrong_type", "events.jsonl:11"),
        ("invalid_utf8", "events.jsonl:13"),
    ];
    assert_eq!(entries.len(), expect.len(), "{listed}");
    for ((kind, location, reason), (want_kind, want_loc)) in entries.iter().zip(expect) {
        assert_eq!(kind, want_kind, "{listed}");
        assert_eq!(location, want_loc, "{listed}");
        assert!(!reason.is_empty());
    }
    assert!(
        entries[1].2.contains("user"),
        "the reason names the field: {}",
        entries[1].2
    );
    assert!(entries[2].2.contains("ts"), "{}", entries[2].2);
    assert!(
        listed.contains(r#"{"id":"d","ts":1400,"value":3}"#),
        "the payload is kept: {listed}"
    );
}

#[test]
fn a_typo_in_the_pipeline_file_names_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("typo.toml"),
        r#"data_dir = "data"
[sources.in]
type = "file"
paths = ["x.jsonl"]

[log]
segment_szie = "64MiB"

[pipeline]
window = { type = "tumbling", size = "1s" }
aggregates = ["count", "avg(value)"]

[sinks.results]
type = "sqlite"
path = "out.db"
"#,
    )
    .unwrap();
    for cmd in [&["validate", "typo.toml"][..], &["run", "typo.toml"][..]] {
        let out = lungfish(dir.path()).args(cmd).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{cmd:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("typo.toml:7:1: log.segment_szie: unknown field `segment_szie`, did you mean `segment_size`?"),
            "{cmd:?}: {err}"
        );
        assert!(
            err.contains("typo.toml:11:") && err.contains("pipeline.aggregates[1]"),
            "{cmd:?}: {err}"
        );
    }
    assert!(
        !dir.path().join("data").exists(),
        "nothing runs on an invalid file"
    );
}
