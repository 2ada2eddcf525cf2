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
