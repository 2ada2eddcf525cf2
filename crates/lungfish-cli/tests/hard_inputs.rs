//! Inputs that once stopped or fooled the pipeline (found in review), each now handled:
//! a flood of late events, a chunk of nothing but bad lines, and more input after a
//! finished run.

mod common;

use std::fmt::Write as _;

use common::*;

fn pipeline(dir: &std::path::Path, source: &str, extra: &str) {
    std::fs::write(
        dir.join("p.toml"),
        format!(
            r#"name = "hard"
data_dir = "data"
{source}
[log]
partitions = 1
[pipeline]
out_of_orderness = "1s"
batch_max_events = 4096
window = {{ type = "tumbling", size = "1s" }}
aggregates = ["count", "sum(value)", "mean(value)"]
[sinks.results]
type = "sqlite"
path = "out.db"
{extra}
"#
        ),
    )
    .unwrap();
}

fn peak_mib(stdout: &str) -> u64 {
    stdout
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("peak memory"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("the summary reports peak memory")
}

#[test]
fn a_flood_of_late_events_is_dead_lettered_in_bounded_batches() {
    let dir = tempfile::tempdir().unwrap();
    // One event far ahead moves the watermark; every event after it is late.
    let mut text = String::new();
    writeln!(
        text,
        r#"{{"id":"ahead","user":"u","ts":{},"value":1}}"#,
        1_000_000_000_000i64
    )
    .unwrap();
    let pad = "p".repeat(500);
    for i in 0..60_000 {
        writeln!(
            text,
            r#"{{"id":"e{i}","user":"u{}","ts":{},"value":1,"pad":"{pad}"}}"#,
            i % 97,
            1_000 + i
        )
        .unwrap();
    }
    std::fs::write(dir.path().join("in.jsonl"), text).unwrap();
    pipeline(
        dir.path(),
        "[sources.f]\ntype = \"file\"\npaths = [\"in.jsonl\"]",
        "",
    );
    let out = run_ok(dir.path(), "p.toml");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        dead_letters(dir.path(), "p.toml", "late").len(),
        60_000,
        "{stdout}"
    );
    assert!(peak_mib(&stdout) < 150, "memory stays bounded: {stdout}");
    let again = run_ok(dir.path(), "p.toml");
    assert!(String::from_utf8_lossy(&again.stdout).contains("nothing to do"));
}

#[test]
fn a_chunk_of_nothing_but_bad_lines_is_dead_lettered_in_bounded_batches() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.jsonl"), "x\n".repeat(600_000)).unwrap();
    pipeline(
        dir.path(),
        "[sources.f]\ntype = \"file\"\npaths = [\"in.jsonl\"]",
        "",
    );
    let out = run_ok(dir.path(), "p.toml");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("rejected") && l.contains("600,000")),
        "{stdout}"
    );
    let again = run_ok(dir.path(), "p.toml");
    assert!(String::from_utf8_lossy(&again.stdout).contains("nothing to do"));
}

#[test]
fn more_input_after_a_finished_run_is_counted_once_in_a_window_or_as_late() {
    let dir = tempfile::tempdir().unwrap();
    let source = |count: u64| {
        format!(
            "[sources.gen]\ntype = \"generator\"\ncount = {count}\nkeys = 50\ndisorder = \"2s\"\nevents_per_second = 10000\nmalformed = 0.01\nseed = 3"
        )
    };
    pipeline(dir.path(), &source(20_000), "");
    run_ok(dir.path(), "p.toml");
    let first = read_table(&dir.path().join("out.db"));
    // The same generator, asked for more: the first 20,000 events are already in.
    pipeline(dir.path(), &source(40_000), "");
    let out = run_ok(dir.path(), "p.toml");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let rows = read_table(&dir.path().join("out.db"));
    let counted: i64 = rows.values().map(|(_, count, _, _)| count).sum();
    let late = dead_letters(dir.path(), "p.toml", "late").len() as i64;
    let malformed: i64 = ["invalid_json", "missing_field", "wrong_type", "not_object"]
        .iter()
        .map(|k| dead_letters(dir.path(), "p.toml", k).len() as i64)
        .sum();
    assert_eq!(
        counted + late + malformed,
        40_000,
        "every event is counted exactly once:\n{stdout}"
    );
    assert!(
        late > 0,
        "events falling into windows closed by the first run are late"
    );
    assert!(rows.len() > first.len(), "new windows were written");
    for (k, v) in &first {
        assert_eq!(
            rows.get(k),
            Some(v),
            "a window closed by the first run is not rewritten"
        );
    }
}

#[test]
fn a_full_log_holds_the_source_back_until_consumers_catch_up() {
    use lungfish::config::{GeneratorConfig, KeyDistribution};
    let dir = tempfile::tempdir().unwrap();
    let config = GeneratorConfig {
        count: Some(300_000),
        keys: 200,
        distribution: KeyDistribution::Zipf,
        disorder: std::time::Duration::from_secs(1),
        events_per_second: 20_000,
        seed: 5,
        ..GeneratorConfig::default()
    };
    std::fs::write(
        dir.path().join("p.toml"),
        r#"name = "full"
data_dir = "data"
[sources.gen]
type = "generator"
count = 300000
keys = 200
distribution = "zipf"
disorder = "1s"
events_per_second = 20000
seed = 5
[log]
partitions = 1
segment_size = "1MiB"
max_batch_size = "128KiB"
max_size = "16MiB"
when_full = "refuse"
[pipeline]
out_of_orderness = "1s"
window = { type = "tumbling", size = "1s" }
aggregates = ["count", "sum(value)", "mean(value)"]
[sinks.results]
type = "sqlite"
path = "out.db"
"#,
    )
    .unwrap();
    // About 40 MB of events through a log that may hold 16 MiB; the open windows (1 s plus
    // 1 s of disorder, about 8 MB) fit.
    let out = run_ok(dir.path(), "p.toml");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the log is full"),
        "the limit was reached: {stderr}"
    );
    let lines = generated_lines("gen", config);
    let want = batch_windows(lines.iter().map(Vec::as_slice), 1, 1000, 1000, 1000);
    assert_same_rows(
        &read_table(&dir.path().join("out.db")),
        &want.rows,
        "through a full log",
    );
}
