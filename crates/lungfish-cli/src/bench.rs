//! `lungfish bench`: parse-only speed against the full pipeline, side by side.
//!
//! On one generated JSON-lines file (Zipf keys), in one invocation:
//! (a) parse only: the project's JSON extractor over the file's lines, already in
//!     memory, on one thread per core;
//! (b) the full pipeline `file -> log (fsync every 10ms) -> 1 s tumbling window
//!     count/sum/mean -> SQLite`, run by this binary as a child process on a fresh data
//!     directory, timed from start to exit;
//! (c) the peak resident memory of (b), and of (b) on a tenth of the input, to show it
//!     does not grow with the input.
//!
//! Each figure is the median of `--runs` runs, after one discarded warm-up run of (b).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use lungfish::codec::json::JsonExtractor;
use lungfish::pipeline::cores;

use crate::generate;
use crate::run::count;
use lungfish::codec::json::FieldNames;

/// Arguments of `lungfish bench`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Events in the input file.
    #[arg(long, default_value_t = 10_000_000)]
    pub events: u64,
    /// Key cardinality (Zipf, exponent 1).
    #[arg(long, default_value_t = 100_000)]
    pub keys: u64,
    /// Runs per measurement; the median is reported.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Working directory for inputs and pipeline data (kept between invocations, so the
    /// inputs are generated once).
    #[arg(long, default_value = "bench-data")]
    pub dir: PathBuf,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Makes (or reuses) the input file of `events` events.
fn input(dir: &Path, events: u64, keys: u64) -> anyhow::Result<PathBuf> {
    let path = dir.join(format!("events-{events}-{keys}.jsonl"));
    if !path.exists() {
        let args = generate::Args {
            count: events,
            keys,
            uniform: false,
            zipf_exponent: 1.0,
            hot_share: None,
            disorder_ms: 2000,
            malformed: 0.0,
            // Ten seconds of event time for ten million events.
            events_per_second: 1_000_000,
            seed: 42,
            name: "bench".into(),
            output: None,
        };
        let tmp = path.with_extension("tmp");
        let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        generate::write_events(&args, &mut out)?;
        drop(out);
        std::fs::rename(&tmp, &path)?;
    }
    Ok(path)
}

/// (a): parses every line with the extractor on `threads` threads; events per second.
fn parse_only(data: &[u8], threads: usize) -> (f64, u64) {
    // Split at line ends into one part per thread.
    let mut parts = Vec::new();
    let mut start = 0;
    for t in 1..=threads {
        let mut end = (data.len() * t / threads).max(start);
        while end < data.len() && data[end - 1] != b'\n' {
            end += 1;
        }
        parts.push(&data[start..end]);
        start = end;
    }
    let extractor = JsonExtractor::new(FieldNames::default());
    let started = Instant::now();
    let ok: u64 = std::thread::scope(|s| {
        let handles: Vec<_> = parts
            .iter()
            .map(|part| {
                let x = extractor.clone();
                s.spawn(move || {
                    let mut numbers = [0.0];
                    let mut ok = 0u64;
                    for line in part.split(|&b| b == b'\n') {
                        if !line.is_empty() && x.extract(line, &mut numbers).is_ok() {
                            ok += 1;
                        }
                    }
                    ok
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("parser thread"))
            .sum()
    });
    (ok as f64 / started.elapsed().as_secs_f64(), ok)
}

/// Runs `lungfish run` as a child; returns (seconds, peak RSS in bytes, stdout).
fn pipeline_run(input: &Path, work: &Path) -> anyhow::Result<(f64, u64, String)> {
    if work.exists() {
        std::fs::remove_dir_all(work)?;
    }
    std::fs::create_dir_all(work)?;
    let toml = work.join("bench.toml");
    std::fs::write(
        &toml,
        format!(
            r#"name = "bench"
data_dir = {data:?}

[sources.file]
type = "file"
paths = [{input:?}]

[log]
fsync = "every 10ms"

[pipeline]
window = {{ type = "tumbling", size = "1s" }}
aggregates = ["count", "sum(value)", "mean(value)"]

[sinks.results]
type = "sqlite"
path = {db:?}
"#,
            data = work.join("data").display().to_string(),
            input = input.canonicalize()?.display().to_string(),
            db = work.join("results.db").display().to_string(),
        ),
    )?;
    let exe = std::env::current_exe()?;
    let started = Instant::now();
    let mut child = Command::new(exe)
        .args(["run", "--quiet"])
        .arg(&toml)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut stdout = child.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut s).map(|_| s)
    });
    let status = child.wait()?;
    let seconds = started.elapsed().as_secs_f64();
    let out = reader.join().expect("stdout reader")?;
    if !status.success() {
        anyhow::bail!("the pipeline run failed (status {status}); output:\n{out}");
    }
    // The child reports its own peak (VmHWM); rusage's ru_maxrss would include this
    // process's memory, which Linux carries across exec.
    let peak = out
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("peak memory"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .ok_or_else(|| anyhow::anyhow!("the run did not report its peak memory:\n{out}"))?;
    Ok((seconds, peak * 1024 * 1024, out))
}

/// Runs the benchmark and prints the table.
pub fn bench(args: Args) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(&args.dir)?;
    let runs = args.runs.max(1);
    let bar = if std::io::stderr().is_terminal() {
        ProgressBar::new_spinner().with_style(ProgressStyle::with_template(
            "{spinner} {elapsed_precise} {msg}",
        )?)
    } else {
        ProgressBar::hidden()
    };
    bar.enable_steady_tick(std::time::Duration::from_millis(100));
    bar.set_message(format!("generating {} events", count(args.events)));
    let big = input(&args.dir, args.events, args.keys)?;
    let small_events = (args.events / 10).max(1);
    let small = input(&args.dir, small_events, args.keys)?;
    let threads = cores();

    let data = std::fs::read(&big)?;
    let mut parse_rates = Vec::new();
    for r in 0..runs {
        bar.set_message(format!("(a) parse only, run {}/{runs}", r + 1));
        let (rate, ok) = parse_only(&data, threads);
        anyhow::ensure!(ok == args.events, "parsed {ok} of {} events", args.events);
        parse_rates.push(rate);
    }
    drop(data);

    // One discarded run first: on a fresh machine the first pass over new page-cache
    // pages is several times slower than the steady state.
    bar.set_message("(b) warm-up run (not counted)");
    pipeline_run(&big, &args.dir.join("run"))?;
    let mut pipe_rates = Vec::new();
    let mut rss = Vec::new();
    let mut last_out = String::new();
    for r in 0..runs {
        bar.set_message(format!("(b) full pipeline, run {}/{runs}", r + 1));
        let (secs, peak, out) = pipeline_run(&big, &args.dir.join("run"))?;
        pipe_rates.push(args.events as f64 / secs);
        rss.push(peak as f64);
        last_out = out;
    }
    let mut small_rss = Vec::new();
    for r in 0..runs {
        bar.set_message(format!(
            "(c) pipeline on {} events, run {}/{runs}",
            count(small_events),
            r + 1
        ));
        let (_, peak, _) = pipeline_run(&small, &args.dir.join("run-small"))?;
        small_rss.push(peak as f64);
    }
    bar.finish_and_clear();

    let (a, b) = (median(parse_rates), median(pipe_rates));
    let mib = |x: f64| x / (1024.0 * 1024.0);
    let windows = last_out
        .lines()
        .find(|l| l.trim_start().starts_with("windows out"))
        .map(|l| l.split_whitespace().nth(2).unwrap_or("?").to_owned())
        .unwrap_or_else(|| "?".into());
    println!(
        "lungfish bench: {} events, {} Zipf keys, median of {runs} runs, {threads} cores",
        count(args.events),
        count(args.keys)
    );
    println!(
        "  (a) parse only (JsonExtractor, {threads} threads)          {:>12} events/s",
        count(a as u64)
    );
    println!(
        "  (b) file -> log -> 1 s window -> SQLite        {:>12} events/s   {:.2} x (a)   ({windows} window rows)",
        count(b as u64),
        b / a
    );
    println!(
        "  (c) peak RSS of (b)                            {:>9.0} MiB          with {} events: {:.0} MiB",
        mib(median(rss)),
        count(small_events),
        mib(median(small_rss))
    );
    println!(
        "  command: lungfish bench --events {} --keys {} --runs {runs}",
        args.events, args.keys
    );
    Ok(ExitCode::SUCCESS)
}
