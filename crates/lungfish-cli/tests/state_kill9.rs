//! State checkpoints under `kill -9`: a generator pipeline with 1-hour tumbling windows,
//! so about `KEYS` keys are open at once while state checkpoints are taken every 300 ms,
//! is killed with SIGKILL 0-1 s (seeded random) after a new state checkpoint directory
//! appears, so kills land before and after its commit and during later ones, restarted each
//! time, and finally run to its end. The SQLite table must equal an uninterrupted run's
//! exactly, and the batch computation's; every late event is in the dead-letter queue
//! once.
//!
//! Sizes: `LUNGFISH_STATE_KILL9_KEYS` (default 100,000; `scripts/bench_restart.sh`
//! measures 1,000,000), `LUNGFISH_STATE_KILL9_KILLS` (default 4),
//! `LUNGFISH_STATE_KILL9_SEED`. Each restart's time to "restored open windows from the
//! committed state checkpoints" is printed (run with `--nocapture`).

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use lungfish::config::GeneratorConfig;
use lungfish::sources::generator::mix64;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Sizes {
    keys: u64,
    count: u64,
    eps: u64,
}

fn sizes() -> Sizes {
    let keys = env_u64("LUNGFISH_STATE_KILL9_KEYS", 100_000).max(1000);
    Sizes {
        keys,
        // (Fed at count/8 per second, so the input takes 8 s and the kills find it
        // running.) 4 events per key over 4000 s of event time: the first window (3600 s) holds
        // ~98% of the keys, the second closes at the end.
        count: 4 * keys,
        eps: keys / 1000,
    }
}

fn pipeline(dir: &Path, s: &Sizes) {
    std::fs::write(
        dir.join("p.toml"),
        format!(
            r#"name = "state"
data_dir = "data"

[sources.gen]
type = "generator"
count = {count}
keys = {keys}
events_per_second = {eps}
rate = {rate}
disorder = "5s"
seed = 23

[log]
partitions = 2
segment_size = "16MiB"

[pipeline]
out_of_orderness = "1s"
checkpoint_interval = "300ms"
window = {{ type = "tumbling", size = "1h" }}
aggregates = ["count", "sum(value)", "mean(value)"]

[sinks.results]
type = "sqlite"
path = "out.db"
"#,
            count = s.count,
            keys = s.keys,
            eps = s.eps,
            rate = s.count / 8,
        ),
    )
    .unwrap();
}

/// The state checkpoint directories of partition 0 present now.
fn checkpoints(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join("data/state/state/p0"))
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// `line` without terminal colour sequences.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// What one run until the kill saw.
struct Restart {
    /// From spawn to the "restored" log line, and its `keys=` and `elapsed=`.
    restored: Option<(Duration, String, String)>,
    /// The process ended by itself before the kill.
    finished: bool,
}

/// Starts the pipeline with `LUNGFISH_LOG=info`, waits for a state checkpoint not there
/// at the start, then `delay` more, and kills it with SIGKILL.
fn run_and_kill(dir: &Path, delay: Duration) -> Restart {
    let before = checkpoints(dir);
    let started = Instant::now();
    let mut child = Command::new(bin())
        .current_dir(dir)
        .args(["run", "--quiet", "p.toml"])
        .env("LUNGFISH_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let line = strip_ansi(&line);
            if line.contains("restored open windows from the committed state checkpoints") {
                let field = |name: &str| {
                    line.split_whitespace()
                        .find_map(|w| w.strip_prefix(name))
                        .unwrap_or("?")
                        .to_owned()
                };
                let _ = tx.send((started.elapsed(), field("keys="), field("elapsed=")));
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut finished = false;
    loop {
        if child.try_wait().unwrap().is_some() {
            finished = true;
            break;
        }
        if checkpoints(dir).iter().any(|c| !before.contains(c)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no new state checkpoint within 120 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    if !finished {
        std::thread::sleep(delay);
        finished = child.try_wait().unwrap().is_some();
        let _ = child.kill(); // SIGKILL
    }
    let _ = child.wait();
    reader.join().unwrap();
    Restart {
        restored: rx.try_recv().ok(),
        finished,
    }
}

#[test]
fn kill_minus_nine_with_many_open_keys_restores_state_and_gives_the_same_table() {
    let s = sizes();
    let kills = env_u64("LUNGFISH_STATE_KILL9_KILLS", 4);
    let mut seed = env_u64("LUNGFISH_STATE_KILL9_SEED", 5);

    // The uninterrupted run (kept in memory: disk space is precious).
    let want = {
        let dir = tempfile::tempdir().unwrap();
        pipeline(dir.path(), &s);
        let started = Instant::now();
        run_ok(dir.path(), "p.toml");
        eprintln!(
            "state_kill9: uninterrupted run of {} events, {} keys: {:.2?}",
            s.count,
            s.keys,
            started.elapsed()
        );
        let late = dead_letters(dir.path(), "p.toml", "late").len();
        (read_table(&dir.path().join("out.db")), late)
    };
    // ... which is the batch computation.
    let config = GeneratorConfig {
        count: Some(s.count),
        keys: s.keys,
        events_per_second: s.eps,
        disorder: Duration::from_secs(5),
        seed: 23,
        ..GeneratorConfig::default()
    };
    let lines = generated_lines("gen", config);
    let exp = batch_windows(
        lines.iter().map(Vec::as_slice),
        2,
        1000,
        3_600_000,
        3_600_000,
    );
    drop(lines);
    assert_same_rows(&want.0, &exp.rows, "uninterrupted run vs batch computation");
    assert_eq!(want.1 as u64, exp.late, "late events, uninterrupted");
    assert!(exp.late > 0, "the input should have late events");
    // (The disorder puts a few events in the hour before the start time.)
    let first_start = GeneratorConfig::DEFAULT_START_TIME;
    let first_window = want
        .0
        .keys()
        .filter(|(start, _)| *start == first_start)
        .count();
    assert!(
        first_window as u64 > s.keys * 9 / 10,
        "the first window should hold most keys ({first_window})"
    );

    let dir = tempfile::tempdir().unwrap();
    pipeline(dir.path(), &s);
    let mut hits = 0;
    let mut restored_keys = Vec::new();
    for i in 0..kills {
        seed = mix64(seed);
        let delay = Duration::from_millis(seed % 1000);
        let r = run_and_kill(dir.path(), delay);
        if !r.finished {
            hits += 1;
        }
        match &r.restored {
            Some((t, keys, elapsed)) => {
                eprintln!(
                    "state_kill9: start {i}: restored keys={keys} (restore elapsed={elapsed}) {t:.2?} after process start; killed {delay:?} after a new checkpoint{}",
                    if r.finished { " (had finished)" } else { "" }
                );
                restored_keys.push(keys.parse::<u64>().unwrap_or(0));
            }
            None => eprintln!(
                "state_kill9: start {i}: nothing restored; killed {delay:?} after a new checkpoint{}",
                if r.finished { " (had finished)" } else { "" }
            ),
        }
    }
    // The final run, to the end.
    let started = Instant::now();
    let out = Command::new(bin())
        .current_dir(dir.path())
        .args(["run", "--quiet", "p.toml"])
        .env("LUNGFISH_LOG", "info")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "state_kill9: final run {:.2?}; {hits} of {kills} kills hit a running process",
        started.elapsed()
    );
    assert!(hits >= 1, "no kill hit a running process");
    assert!(
        restored_keys.iter().any(|&k| k > s.keys / 2),
        "no restart restored most of the open keys from a state checkpoint: {restored_keys:?}"
    );

    let got = read_table(&dir.path().join("out.db"));
    assert_same_rows(&got, &want.0, "after kill -9 restarts vs uninterrupted");
    assert_eq!(got, want.0, "bit-exact equality with the uninterrupted run");
    assert_eq!(
        dead_letters(dir.path(), "p.toml", "late").len(),
        want.1,
        "late events after the kills"
    );
}
