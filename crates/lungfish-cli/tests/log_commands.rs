//! `lungfish log inspect | reset-offsets | repair` through the real binary.

mod common;

use common::*;

fn pipeline(dir: &std::path::Path) {
    std::fs::write(
        dir.join("p.toml"),
        r#"name = "logcmd"
data_dir = "data"
[sources.gen]
type = "generator"
count = 50000
keys = 300
disorder = "2s"
malformed = 0.01
events_per_second = 20000
seed = 11
[log]
partitions = 2
segment_size = "1MiB"
max_batch_size = "256KiB"
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
}

fn run_cmd(dir: &std::path::Path, args: &[&str]) -> String {
    let out = lungfish(dir).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn inspect_then_replay_from_the_earliest_offset_gives_the_same_table() {
    let dir = tempfile::tempdir().unwrap();
    pipeline(dir.path());
    run_ok(dir.path(), "p.toml");
    let table = read_table(&dir.path().join("out.db"));
    let late = dead_letters(dir.path(), "p.toml", "late").len();
    assert!(late > 0);

    let inspect = run_cmd(dir.path(), &["log", "inspect", "p.toml"]);
    assert!(inspect.contains("(2 partitions)"), "{inspect}");
    assert!(
        inspect.contains("consumer logcmd: lag 0 records"),
        "{inspect}"
    );

    let reset = run_cmd(
        dir.path(),
        &[
            "log",
            "reset-offsets",
            "p.toml",
            "--consumer",
            "logcmd",
            "--to",
            "earliest",
        ],
    );
    assert!(reset.contains("partition 0: now at offset 0"), "{reset}");
    let inspect = run_cmd(dir.path(), &["log", "inspect", "data"]);
    assert!(
        !inspect.contains("lag 0 records"),
        "the consumer is back at the start: {inspect}"
    );

    // Replaying everything rebuilds every window to the same values, and writes no
    // dead letter twice.
    let again = run_ok(dir.path(), "p.toml");
    let again = String::from_utf8_lossy(&again.stdout);
    assert!(!again.contains("nothing to do"), "{again}");
    assert_same_rows(
        &read_table(&dir.path().join("out.db")),
        &table,
        "after a replay from the earliest offset",
    );
    assert_eq!(dead_letters(dir.path(), "p.toml", "late").len(), late);
}

#[test]
fn repair_moves_damage_aside_and_the_pipeline_runs_again() {
    let dir = tempfile::tempdir().unwrap();
    pipeline(dir.path());
    run_ok(dir.path(), "p.toml");
    assert!(run_cmd(dir.path(), &["log", "repair", "p.toml"]).contains("no damage found"));

    // Bit rot in the middle of partition 0's first segment.
    let seg = dir.path().join("data/log/p0000/00000000000000000000.log");
    let mut bytes = std::fs::read(&seg).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x20;
    std::fs::write(&seg, &bytes).unwrap();

    let out = run_cmd(dir.path(), &["log", "repair", "p.toml"]);
    assert!(
        out.contains("partition 0:") && out.contains("moved") && out.contains("lost: offsets"),
        "{out}"
    );
    let damaged: Vec<_> = std::fs::read_dir(dir.path().join("data/log/damaged"))
        .unwrap()
        .collect();
    assert_eq!(damaged.len(), 1, "the damaged bytes are kept");
    // The log opens and the pipeline runs (its input is already in: nothing to do).
    run_ok(dir.path(), "p.toml");
    assert!(run_cmd(dir.path(), &["log", "repair", "data/log"]).contains("no damage found"));
}

#[test]
fn log_commands_refuse_a_data_directory_in_use() {
    let dir = tempfile::tempdir().unwrap();
    pipeline(dir.path());
    run_ok(dir.path(), "p.toml");
    let _held = lungfish::data_dir::DataDir::lock(&dir.path().join("data")).unwrap();
    let out = lungfish(dir.path())
        .args(["log", "inspect", "p.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use by another lungfish process"));
    let out = lungfish(dir.path())
        .args(["run", "p.toml"])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "a second pipeline on the same data directory is refused"
    );
}

/// Flips a bit 200 bytes before the end of partition 0's last segment.
fn damage_the_tail_of_partition_0(log: &std::path::Path) {
    let mut segments: Vec<_> = std::fs::read_dir(log.join("p0000"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    segments.sort();
    let last = segments.last().unwrap();
    let mut bytes = std::fs::read(last).unwrap();
    let at = bytes.len() - 200;
    bytes[at] ^= 0x20;
    std::fs::write(last, &bytes).unwrap();
}

#[test]
fn a_repaired_tail_is_refilled_by_a_generator_and_the_pipeline_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    pipeline(dir.path());
    run_ok(dir.path(), "p.toml");
    let before = read_table(&dir.path().join("out.db"));
    damage_the_tail_of_partition_0(&dir.path().join("data/log"));
    let out = run_cmd(dir.path(), &["log", "repair", "p.toml"]);
    assert!(
        out.contains("partition 0:") && out.contains("lost: offsets"),
        "{out}"
    );
    // The generator resumes from the log's producer positions: it appends the cut
    // records again, so the committed offsets are valid once more.
    run_ok(dir.path(), "p.toml");
    assert_eq!(read_table(&dir.path().join("out.db")), before);
}

#[test]
fn a_repair_that_cuts_committed_http_events_stops_the_next_run_with_the_way_on() {
    let mut server = common::http::Server::start("", "");
    let body: Vec<String> = (0..2_000)
        .map(|i| common::http::event(&format!("u{}", i % 37), common::http::T0 + i))
        .collect();
    let r = common::http::post(
        server.port,
        "c",
        "application/x-ndjson",
        body.join("\n").as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.message());
    std::thread::sleep(std::time::Duration::from_millis(1_000));
    server.stop(); // commits everything read
    let dir = server.path().to_path_buf();
    damage_the_tail_of_partition_0(&dir.join("data/log"));
    let out = run_cmd(&dir, &["log", "repair", "p.toml"]);
    assert!(out.contains("partition 0:"), "{out}");

    // HTTP clients do not send their events again, and new ones would land below the
    // committed offset: the run refuses to start.
    let mut child = lungfish(&dir)
        .args(["run", "--quiet", "p.toml"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_timeout(&mut child, std::time::Duration::from_secs(30));
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!status.success(), "the run must stop: {err}");
    assert!(
        err.contains("partition 0") && err.contains("the log now ends at"),
        "names the partition and the new end: {err}"
    );
    assert!(
        err.contains(
            "lungfish log reset-offsets PIPELINE_FILE --consumer edge --partition 0 --to latest"
        ),
        "gives the way on: {err}"
    );
    // Doing what it says lets the pipeline run again.
    run_cmd(
        &dir,
        &[
            "log",
            "reset-offsets",
            "p.toml",
            "--consumer",
            "edge",
            "--partition",
            "0",
            "--to",
            "latest",
        ],
    );
    server.restart();
    server.stop();
}
