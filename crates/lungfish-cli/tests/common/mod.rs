//! Shared helpers of the end-to-end tests: they run the real `lungfish` binary on
//! pipeline files in temporary directories, and compare what lands in SQLite with a
//! plain batch computation of the same windows.

#![allow(dead_code)]

pub mod http;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use lungfish::codec::json::{FieldNames, JsonExtractor};
use lungfish::config::GeneratorConfig;
use lungfish::event::{key_hash, partition_for};
use lungfish::sources::generator::EventWriter;

/// The binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_lungfish"))
}

/// A command running the binary in `dir`.
pub fn lungfish(dir: &Path) -> Command {
    let mut c = Command::new(bin());
    c.current_dir(dir);
    c
}

/// Runs `lungfish run FILE --quiet` in `dir` to the end; panics with its output on failure.
pub fn run_ok(dir: &Path, file: &str) -> Output {
    let out = lungfish(dir)
        .args(["run", "--quiet", file])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "lungfish run failed: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Starts `lungfish run FILE --quiet` in `dir` in the background.
pub fn spawn_run(dir: &Path, file: &str) -> Child {
    lungfish(dir)
        .args(["run", "--quiet", file])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for `child` up to `timeout`; kills it and panics if it does not end.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("lungfish did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One window row: (window_start, key) -> (window_end, count, sum, mean).
pub type Rows = BTreeMap<(i64, String), (i64, i64, f64, f64)>;

/// Reads the `windows` table (columns window_start, window_end, key, count, sum_value,
/// mean_value).
pub fn read_table(db: &Path) -> Rows {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare("SELECT window_start, window_end, key, count, sum_value, mean_value FROM windows")
        .unwrap();
    stmt.query_map([], |r| {
        Ok((
            (r.get::<_, i64>(0)?, r.get::<_, String>(2)?),
            (
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(3)?,
                r.get::<_, f64>(4)?,
                r.get::<_, f64>(5)?,
            ),
        ))
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

/// The default event fields.
pub fn fields() -> FieldNames {
    FieldNames::default()
}

/// What a batch computation of the windows gives.
#[derive(Debug, Default)]
pub struct Expected {
    /// The rows.
    pub rows: Rows,
    /// Events that were late (every window closed).
    pub late: u64,
    /// Lines that were not valid events.
    pub malformed: u64,
}

/// Computes the windows of `lines` (in input order) the plain way: per partition the
/// watermark is the largest event time seen minus `out_of_orderness_ms`; an event whose
/// windows all end at or before it is late; every other event is added to each of its
/// windows that has not closed.
pub fn batch_windows<'a>(
    lines: impl IntoIterator<Item = &'a [u8]>,
    partitions: u32,
    out_of_orderness_ms: i64,
    size_ms: i64,
    slide_ms: i64,
) -> Expected {
    let x = JsonExtractor::new(fields());
    let mut max_ts = vec![i64::MIN; partitions as usize];
    let mut acc: BTreeMap<(i64, String), (i64, f64)> = BTreeMap::new();
    let mut exp = Expected::default();
    let mut n = [0.0];
    for line in lines {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let Ok(ev) = x.extract(line, &mut n) else {
            exp.malformed += 1;
            continue;
        };
        let key = ev.key.to_string();
        let p = partition_for(key_hash(key.as_bytes()), partitions) as usize;
        let wm = max_ts[p].saturating_sub(out_of_orderness_ms);
        let last_start = ev.ts.div_euclid(slide_ms) * slide_ms;
        if last_start + size_ms <= wm {
            exp.late += 1;
        } else {
            let mut start = last_start;
            while start > ev.ts - size_ms {
                if start + size_ms > wm {
                    let a = acc.entry((start, key.clone())).or_insert((0, 0.0));
                    a.0 += 1;
                    a.1 += n[0];
                }
                start -= slide_ms;
            }
        }
        max_ts[p] = max_ts[p].max(ev.ts);
    }
    exp.rows = acc
        .into_iter()
        .map(|((start, key), (count, sum))| {
            (
                (start, key),
                (start + size_ms, count, sum, sum / count as f64),
            )
        })
        .collect();
    exp
}

/// The lines a generator source produces.
pub fn generated_lines(name: &str, config: GeneratorConfig) -> Vec<Vec<u8>> {
    let count = config.count.expect("a count");
    let w = EventWriter::new(name, config, &fields());
    (0..count)
        .map(|i| {
            let mut line = Vec::new();
            w.write(i, &mut line);
            line.pop(); // the newline
            line
        })
        .collect()
}

/// Asserts two tables are equal, showing the first difference.
pub fn assert_same_rows(got: &Rows, want: &Rows, context: &str) {
    if got == want {
        return;
    }
    for (k, v) in want {
        match got.get(k) {
            None => panic!(
                "{context}: row {k:?} missing (expected {v:?}); {} rows vs {}",
                got.len(),
                want.len()
            ),
            Some(g) if g != v => panic!("{context}: row {k:?} is {g:?}, expected {v:?}"),
            _ => {}
        }
    }
    let extra = got.keys().find(|k| !want.contains_key(k));
    panic!(
        "{context}: unexpected row {extra:?}; {} rows vs {}",
        got.len(),
        want.len()
    );
}

/// Counts dead-letter entries of `kind` with `lungfish dlq list`, and checks that no
/// entry appears twice (same location).
pub fn dead_letters(dir: &Path, file: &str, kind: &str) -> Vec<String> {
    let out = lungfish(dir)
        .args(["dlq", "list", file, "--kind", kind, "--limit", "100000000"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let mut locations: Vec<&str> = lines
        .iter()
        .map(|l| l.split('\t').nth(3).unwrap_or(""))
        .collect();
    locations.sort_unstable();
    let before = locations.len();
    locations.dedup();
    assert_eq!(before, locations.len(), "a dead letter was written twice");
    lines
}
