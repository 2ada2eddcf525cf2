//! The pipeline end to end, through the real binary: results equal a batch computation,
//! a `kill -9` at any moment changes nothing, a stop is graceful, metrics are served.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use lungfish::config::{GeneratorConfig, KeyDistribution};

const EVENTS: u64 = 300_000;

/// A quickstart-shaped pipeline, small: generator (Zipf keys, 2 s disorder, 0.5%
/// malformed) -> log -> 1 s tumbling windows with a 1 s watermark bound (so some events
/// are late) -> SQLite.
fn pipeline(dir: &Path, extra: &str) {
    std::fs::write(
        dir.join("p.toml"),
        format!(
            r#"name = "e2e"
data_dir = "data"

[sources.gen]
type = "generator"
count = {EVENTS}
keys = 5000
distribution = "zipf"
disorder = "2s"
malformed = 0.005
events_per_second = 50000
seed = 7

[log]
partitions = 3
segment_size = "1MiB"
max_batch_size = "256KiB"

[pipeline]
out_of_orderness = "1s"
batch_max_events = 2000
window = {{ type = "tumbling", size = "1s" }}
aggregates = ["count", "sum(value)", "mean(value)"]

[sinks.results]
type = "sqlite"
path = "out.db"
batch_max_rows = 3000
{extra}
"#
        ),
    )
    .unwrap();
}

fn generator_config() -> GeneratorConfig {
    GeneratorConfig {
        count: Some(EVENTS),
        keys: 5000,
        distribution: KeyDistribution::Zipf,
        disorder: Duration::from_secs(2),
        malformed: 0.005,
        events_per_second: 50_000,
        seed: 7,
        ..GeneratorConfig::default()
    }
}

fn expected() -> Expected {
    let lines = generated_lines("gen", generator_config());
    batch_windows(lines.iter().map(Vec::as_slice), 3, 1000, 1000, 1000)
}

#[test]
fn a_small_quickstart_equals_the_batch_computation_and_a_rerun_does_nothing() {
    let dir = tempfile::tempdir().unwrap();
    pipeline(dir.path(), "");
    let out = run_ok(dir.path(), "p.toml");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let want = expected();
    assert!(
        want.late > 100,
        "the test input should have late events ({})",
        want.late
    );
    assert!(
        want.malformed > 100,
        "and malformed ones ({})",
        want.malformed
    );
    let got = read_table(&dir.path().join("out.db"));
    assert_same_rows(&got, &want.rows, "uninterrupted run");
    assert_eq!(
        dead_letters(dir.path(), "p.toml", "late").len() as u64,
        want.late
    );
    let malformed: usize = ["invalid_json", "missing_field", "wrong_type", "not_object"]
        .iter()
        .map(|k| dead_letters(dir.path(), "p.toml", k).len())
        .sum();
    assert_eq!(malformed as u64, want.malformed);
    assert!(stdout.contains("complete"), "{stdout}");
    assert!(
        stdout.contains(&format!("{} rows", common_count(want.rows.len() as u64))),
        "{stdout}"
    );

    // Sources finished, log processed: a second run ends at once, same totals.
    let again = run_ok(dir.path(), "p.toml");
    let again = String::from_utf8_lossy(&again.stdout);
    assert!(again.contains("nothing to do"), "{again}");
    let totals = |s: &str| -> Vec<String> {
        s.lines()
            .filter(|l| {
                ["events in", "rejected", "late", "windows out"]
                    .iter()
                    .any(|k| l.trim_start().starts_with(k))
            })
            .map(|l| l.split_whitespace().rev().nth(1).unwrap_or("").to_owned())
            .collect()
    };
    assert_eq!(
        totals(&again),
        totals(&stdout),
        "same totals:\n{stdout}\n{again}"
    );
    assert_same_rows(
        &read_table(&dir.path().join("out.db")),
        &want.rows,
        "after the rerun",
    );
}

fn common_count(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[test]
fn kill_minus_nine_at_any_point_then_restart_gives_the_same_table() {
    let want = expected();
    // How long an uninterrupted run takes here, to spread the kills over it.
    let probe = tempfile::tempdir().unwrap();
    pipeline(probe.path(), "");
    let started = Instant::now();
    run_ok(probe.path(), "p.toml");
    let full = started.elapsed();

    for (i, share) in [0.05, 0.2, 0.35, 0.5, 0.65, 0.8, 0.95].iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        pipeline(dir.path(), "");
        // Kill once, and for some points a second time during the restart.
        let kills = if i % 2 == 0 { 1 } else { 2 };
        for _ in 0..kills {
            let mut child = spawn_run(dir.path(), "p.toml");
            std::thread::sleep(full.mul_f64(*share));
            let _ = child.kill(); // SIGKILL
            let _ = child.wait();
        }
        run_ok(dir.path(), "p.toml");
        let got = read_table(&dir.path().join("out.db"));
        assert_same_rows(
            &got,
            &want.rows,
            &format!("killed at {:.0}% of the run", share * 100.0),
        );
        assert_eq!(
            dead_letters(dir.path(), "p.toml", "late").len() as u64,
            want.late,
            "late events after a kill at {:.0}%",
            share * 100.0
        );
    }
}

#[test]
fn sigint_stops_gracefully_and_a_restart_completes_the_same_table() {
    let want = expected();
    let dir = tempfile::tempdir().unwrap();
    pipeline(dir.path(), "");
    let mut child = spawn_run(dir.path(), "p.toml");
    std::thread::sleep(Duration::from_millis(400));
    interrupt(&child);
    let status = wait_timeout(&mut child, Duration::from_secs(60));
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    assert!(
        status.success(),
        "a graceful stop exits 0: {status}\n{stdout}"
    );
    assert!(
        stdout.contains("stopped") || stdout.contains("complete"),
        "a summary is printed: {stdout}"
    );
    run_ok(dir.path(), "p.toml");
    assert_same_rows(
        &read_table(&dir.path().join("out.db")),
        &want.rows,
        "after a graceful stop",
    );
}

/// Sends SIGINT (Ctrl-C) to `child`.
fn interrupt(child: &std::process::Child) {
    // SAFETY: kill(2) with our own child's pid and a valid signal number has no memory
    // effects.
    let r = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    assert_eq!(r, 0, "kill: {}", std::io::Error::last_os_error());
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

#[test]
fn metrics_and_health_are_served_while_running() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    std::fs::write(
        dir.path().join("m.toml"),
        format!(
            r#"name = "metrics"
data_dir = "data"
[sources.gen]
type = "generator"
rate = 20000
keys = 100
malformed = 0.01
[pipeline]
window = {{ type = "tumbling", size = "100ms" }}
out_of_orderness = "0s"
aggregates = ["count"]
[sinks.results]
type = "sqlite"
path = "out.db"
[metrics]
address = "127.0.0.1:{port}"
"#
        ),
    )
    .unwrap();
    let mut child = spawn_run(dir.path(), "m.toml");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut metrics = String::new();
    while Instant::now() < deadline {
        if let Some(body) = http_get(port, "/metrics")
            && body.contains("lungfish_sink_write_seconds_bucket")
            && body.contains("lungfish_consumer_lag")
            && body.contains("lungfish_dead_letters_total")
        {
            metrics = body;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let health = http_get(port, "/health").unwrap_or_default();
    interrupt(&child);
    let status = wait_timeout(&mut child, Duration::from_secs(60));
    assert!(
        health.starts_with("HTTP/1.1 200") && health.ends_with("ok\n"),
        "{health}"
    );
    for name in [
        "lungfish_events_in_total",
        "lungfish_stage_events_in_total{stage=\"source\"}",
        "lungfish_stage_events_out_total{stage=\"consumer\"}",
        "lungfish_stage_events_out_total{stage=\"window\"}",
        "lungfish_stage_events_out_total{stage=\"sink\"}",
        "lungfish_windows_emitted_total",
        "lungfish_log_end_offset",
        "lungfish_log_bytes",
        "lungfish_consumer_lag",
        "lungfish_batch_events_bucket",
        "lungfish_sink_write_seconds_bucket",
        "lungfish_sink_rows_total",
        "lungfish_dead_letters_total{stage=\"source:gen\"",
        "lungfish_queue_bytes{stage=\"shards\"}",
        "lungfish_queue_bytes{stage=\"sinks\"}",
        "lungfish_state_bytes{shard=\"0\"}",
    ] {
        assert!(
            metrics.contains(name),
            "{name} missing from /metrics:\n{metrics}"
        );
    }
    assert!(status.success(), "{status}");
}
