//! Runs the crate's examples, which check their own outcome, and asserts that they pass.
//!
//! `cargo test` builds the examples before it runs the tests, into
//! `TARGET/PROFILE/examples/`; this test binary is `TARGET/PROFILE/deps/examples-HASH`.
//! A test run that selects targets (`cargo test --test examples`) does not build them:
//! then the binary is missing or older than its source, and the test says so.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

/// An example takes well under a second; this only bounds a hang.
const TIMEOUT: Duration = Duration::from_secs(60);

/// The built binary of example `name`, checked to exist and to be newer than its source.
fn example(name: &str) -> PathBuf {
    let test_exe = std::env::current_exe().expect("the test binary's path");
    let profile_dir = test_exe
        .parent() // deps/
        .and_then(Path::parent)
        .expect("the test binary lives in TARGET/PROFILE/deps/");
    let exe = profile_dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    let build = format!("cargo build -p lungfish-log --example {name}");
    let built = std::fs::metadata(&exe)
        .and_then(|m| m.modified())
        .unwrap_or_else(|e| {
            panic!(
                "example binary {} is missing ({e}): `cargo test` builds it unless targets are \
             selected; run `cargo test -p lungfish-log`, or `{build}` first",
                exe.display()
            )
        });
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("examples/{name}.rs"));
    let edited = std::fs::metadata(&source)
        .and_then(|m| m.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH);
    assert!(
        built >= edited,
        "example binary {} is older than {}: run `cargo test -p lungfish-log`, or `{build}` \
         first",
        exe.display(),
        source.display()
    );
    exe
}

/// Runs `exe` with `args`; returns its exit status and output, killing it after
/// [`TIMEOUT`].
fn run(exe: &Path, args: &[&Path]) -> (std::process::ExitStatus, String, String) {
    let mut child = Command::new(exe)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", exe.display()));
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match child.try_wait().expect("wait for the example") {
            Some(_) => break,
            None if Instant::now() > deadline => {
                let _ = child.kill();
                let out = child
                    .wait_with_output()
                    .expect("collect the example's output");
                panic!(
                    "{} did not finish in {TIMEOUT:?}; stdout:\n{}\nstderr:\n{}",
                    exe.display(),
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    let out = child
        .wait_with_output()
        .expect("collect the example's output");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_durable_queue_passes(args: &[&Path]) {
    let (status, stdout, stderr) = run(&example("durable_queue"), args);
    assert!(
        status.success(),
        "durable_queue exited with {status}; stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stdout.lines().any(|l| l.starts_with("durable_queue: ok: ")),
        "durable_queue printed no summary line; stdout:\n{stdout}\nstderr:\n{stderr}"
    );
}

#[test]
fn durable_queue_survives_a_restart_in_its_own_temporary_directory() {
    assert_durable_queue_passes(&[]);
}

#[test]
fn durable_queue_survives_a_restart_in_a_given_directory() {
    let dir = tempfile::tempdir().unwrap();
    let queue = dir.path().join("queue");
    assert_durable_queue_passes(&[&queue]);
    assert!(
        queue.join("meta").exists(),
        "the example used the directory it was given"
    );
}
