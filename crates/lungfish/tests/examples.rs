//! Runs every example of `examples/` (built by `cargo test` before the tests run) and
//! checks it reached its own assertions: exit status 0 and its `NAME: ok` line.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// target/debug/examples, next to target/debug/deps where this test runs.
fn examples_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().join("examples")
}

fn run(name: &str) {
    let path = examples_dir().join(name);
    // `cargo test` builds the examples first; a run that selects targets
    // (`--test examples`) does not, and would run a missing or stale binary.
    let built = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .unwrap_or_else(|e| {
            panic!(
                "{} is missing ({e}): run `cargo test -p lungfish`, or `cargo build -p lungfish --examples` first",
                path.display()
            )
        });
    let source =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../examples/{name}.rs"));
    let edited = std::fs::metadata(&source).unwrap().modified().unwrap();
    assert!(
        built >= edited,
        "{} is older than {}: run `cargo build -p lungfish --examples` first",
        path.display(),
        source.display()
    );
    let mut child = Command::new(&path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Every example finishes in seconds; give it a minute on a loaded machine.
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("example {name} did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "example {name} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains(&format!("{name}: ok")),
        "example {name} did not report success:\n{stdout}\n{stderr}"
    );
}

#[test]
fn batcher_axum_stores_every_order_once_and_pushes_clients_back() {
    run("batcher_axum");
}

#[test]
fn guarded_call_hides_blips_fails_fast_when_stalled_and_heals() {
    run("guarded_call");
}

#[test]
fn custom_pipeline_accounts_for_every_event() {
    run("custom_pipeline");
}

#[test]
fn keyed_windows_emit_each_window_once_with_the_accepted_events() {
    run("keyed_windows");
}
