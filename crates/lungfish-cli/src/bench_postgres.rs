//! `lungfish bench postgres`: one million window rows into Postgres in four ways, side
//! by side on the same server in one invocation, with the server's CPU time:
//!
//! * **(a) one INSERT per row**, autocommit: a prepared `INSERT ... VALUES ($1, ..., $5)`
//!   through the `postgres` crate, one round trip and one commit (one WAL flush) per
//!   row. It is slow, so it writes only the first `--per-row-rows` rows (100,000 by
//!   default) and its rate stands for all of them.
//! * **(b) multi-row INSERT**: one prepared `INSERT ... VALUES (...), (...), ...` of
//!   `--insert-rows` rows (2,000) per statement, autocommit.
//! * **(c), (d) the COPY sink**: Lungfish's [`PostgresSink`], called as the pipeline's
//!   sink driver calls it, with batches of each `--copy-batches` size (2,000 and
//!   20,000): per batch, binary `COPY` into a temporary staging table and an upsert
//!   into the table, in one transaction.
//!
//! Every method writes into a fresh table of the sink's shape (`window_start`,
//! `window_end`, `key`, `count`, `sum_value`, primary key `(window_start, key)`); (a)
//! and (b) create theirs, the sink creates its own. The rows are the same for all:
//! distinct `(window_start, key)` pairs, `--keys` keys per one-minute window.
//!
//! **Measured**, per method and run: the wall time of the writes (connecting and
//! creating the table excluded), and the CPU time the server spent meanwhile: from
//! `/proc`, `utime + stime` of the postmaster and of each of its child processes (the
//! backends, the WAL writer, the checkpointer, ...), plus the postmaster's `cutime +
//! cstime` (children that exited and were reaped meanwhile), read before and after.
//! The method's connection stays open until the second reading. Before each method a
//! `CHECKPOINT` writes out what the previous one left in the buffers, so each starts
//! clean; after it the row count is checked and the table dropped. The client's own
//! CPU time (this process) is reported too. Methods are interleaved within each run
//! and each figure is the median of `--runs` runs.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use lungfish::config::{AggFunc, AggregateSpec, DatabaseSinkConfig};
use lungfish::sinks::Sink;
use lungfish::sinks::postgres::PostgresSink;
use lungfish::window::{RowSchema, WindowRows};
use postgres::types::ToSql;
use postgres::{Client, NoTls};

use crate::run::count;

/// Arguments of `lungfish bench postgres`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The server: `postgres://user[:password]@host:port/database`. Use a throwaway
    /// one: the benchmark creates and drops tables named `<table-prefix>_*`.
    #[arg(long)]
    pub url: String,
    /// The server's data directory (readable by this user): its `postmaster.pid` names
    /// the server process whose CPU time is measured. Without it or --server-pid, the
    /// server is found as the parent of the benchmark's backend, if it runs here.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The process id of the server's postmaster (instead of --data-dir).
    #[arg(long, conflicts_with = "data_dir")]
    pub server_pid: Option<u32>,
    /// Rows each method writes, except (a) (see --per-row-rows).
    #[arg(long, default_value_t = 1_000_000)]
    pub rows: u64,
    /// Keys per window: the rows are distinct (window_start, key) pairs, window after
    /// window.
    #[arg(long, default_value_t = 10_000)]
    pub keys: u64,
    /// Rows (a), one INSERT per row, writes: the first this many of the same rows; its
    /// rate and CPU per million rows stand for the whole.
    #[arg(long, default_value_t = 100_000)]
    pub per_row_rows: u64,
    /// Rows in each multi-row INSERT statement of (b) (at most 13,107: 5 parameters a
    /// row, 65,535 a statement).
    #[arg(long, default_value_t = 2_000)]
    pub insert_rows: usize,
    /// Batch sizes of the COPY sink, comma-separated: one method each.
    #[arg(long, value_delimiter = ',', default_value = "2000,20000")]
    pub copy_batches: Vec<usize>,
    /// Runs of each method (interleaved); medians are reported.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Prefix of the tables the benchmark creates (and drops).
    #[arg(long, default_value = "lungfish_bench")]
    pub table_prefix: String,
}

/// Parameters a Postgres statement may carry.
const MAX_PARAMS: usize = 65_535;
/// Columns of a row, as written by (a) and (b).
const COLUMNS: usize = 5;
/// Window length of the generated rows (one minute), and the first window's start.
const WINDOW_MS: i64 = 60_000;
const FIRST_WINDOW: i64 = 1_700_000_000_000;

/// One way of writing the rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    /// One prepared INSERT per row, autocommit.
    PerRow,
    /// Multi-row INSERTs of this many rows.
    MultiRow(usize),
    /// The COPY sink with batches of this many rows.
    Copy(usize),
}

impl Method {
    fn label(self) -> String {
        match self {
            Method::PerRow => "one INSERT per row, autocommit".into(),
            Method::MultiRow(n) => format!("multi-row INSERT, {} rows each", count(n as u64)),
            Method::Copy(n) => format!("COPY sink, batches of {}", count(n as u64)),
        }
    }

    fn table(self, prefix: &str) -> String {
        match self {
            Method::PerRow => format!("{prefix}_per_row"),
            Method::MultiRow(n) => format!("{prefix}_multi_row_{n}"),
            Method::Copy(n) => format!("{prefix}_copy_{n}"),
        }
    }
}

/// The arguments checked, and the methods they make.
#[derive(Debug, Clone)]
struct Settings {
    url: String,
    rows: u64,
    keys: u64,
    per_row_rows: u64,
    insert_rows: usize,
    copy_batches: Vec<usize>,
    runs: usize,
    prefix: String,
}

impl Settings {
    fn new(args: &Args) -> anyhow::Result<Settings> {
        anyhow::ensure!(args.rows >= 1, "--rows must be at least 1");
        anyhow::ensure!(
            args.rows <= u64::from(u32::MAX),
            "--rows must be at most {}",
            u32::MAX
        );
        anyhow::ensure!(args.keys >= 1, "--keys must be at least 1");
        anyhow::ensure!(args.per_row_rows >= 1, "--per-row-rows must be at least 1");
        anyhow::ensure!(args.runs >= 1, "--runs must be at least 1");
        anyhow::ensure!(
            (1..=MAX_PARAMS / COLUMNS).contains(&args.insert_rows),
            "--insert-rows must be from 1 to {}",
            MAX_PARAMS / COLUMNS
        );
        anyhow::ensure!(
            !args.copy_batches.is_empty() && args.copy_batches.iter().all(|&b| b >= 1),
            "--copy-batches takes batch sizes of at least 1 row"
        );
        let p = &args.table_prefix;
        anyhow::ensure!(
            !p.is_empty()
                && p.len() <= 40
                && p.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                && p.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "--table-prefix must be a lowercase SQL identifier of at most 40 characters"
        );
        let mut copy_batches = args.copy_batches.clone();
        copy_batches.dedup();
        Ok(Settings {
            url: args.url.clone(),
            rows: args.rows,
            keys: args.keys,
            per_row_rows: args.per_row_rows.min(args.rows),
            insert_rows: args.insert_rows,
            copy_batches,
            runs: args.runs,
            prefix: args.table_prefix.clone(),
        })
    }

    fn methods(&self) -> Vec<Method> {
        let mut m = vec![Method::PerRow, Method::MultiRow(self.insert_rows)];
        m.extend(self.copy_batches.iter().map(|&b| Method::Copy(b)));
        m
    }

    fn rows_of(&self, method: Method) -> u64 {
        match method {
            Method::PerRow => self.per_row_rows,
            _ => self.rows,
        }
    }

    /// The command line that reproduces this run (the password hidden).
    fn command(&self, server: &ServerSource) -> String {
        let batches: Vec<String> = self.copy_batches.iter().map(|b| b.to_string()).collect();
        let server = match server {
            ServerSource::DataDir(dir) => format!(" --data-dir {}", dir.display()),
            ServerSource::Pid(pid) => format!(" --server-pid {pid}"),
            ServerSource::Backend | ServerSource::Unknown => String::new(),
        };
        format!(
            "lungfish bench postgres --url {}{server} --rows {} --keys {} --per-row-rows {} \
             --insert-rows {} --copy-batches {} --runs {} --table-prefix {}",
            redacted(&self.url),
            self.rows,
            self.keys,
            self.per_row_rows,
            self.insert_rows,
            batches.join(","),
            self.runs,
            self.prefix
        )
    }
}

/// The URL without its password, for messages.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => match url[scheme + 3..at].split_once(':') {
            Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
            None => url.to_owned(),
        },
        _ => url.to_owned(),
    }
}

// ---------------------------------------------------------------------------------------
// The server's CPU time, from /proc.

/// The fields of a `/proc/PID/stat` line the benchmark reads (times in clock ticks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProcStat {
    pid: u32,
    pub(crate) comm: String,
    ppid: u32,
    /// Fields 14 and 15: user and system time of the process (all its threads).
    pub(crate) utime: u64,
    pub(crate) stime: u64,
    /// Fields 16 and 17: user and system time of its children that exited and were
    /// waited for.
    pub(crate) cutime: u64,
    pub(crate) cstime: u64,
}

/// Parses one `/proc/PID/stat` line. The command name (field 2) is in parentheses and
/// may itself hold spaces and parentheses, so the fields after it are counted from the
/// last `)`.
fn parse_stat(line: &str) -> Option<ProcStat> {
    let open = line.find('(')?;
    let close = line.rfind(')')?;
    let pid = line[..open].trim().parse().ok()?;
    let comm = line.get(open + 1..close)?.to_owned();
    // From field 3 (state) on.
    let rest: Vec<&str> = line[close + 1..].split_whitespace().collect();
    let field = |n: usize| -> Option<u64> { rest.get(n - 3)?.parse().ok() };
    Some(ProcStat {
        pid,
        comm,
        ppid: u32::try_from(field(4)?).ok()?,
        utime: field(14)?,
        stime: field(15)?,
        cutime: field(16)?,
        cstime: field(17)?,
    })
}

/// CPU ticks of the server whose postmaster is `postmaster`: its own time and its
/// reaped children's, plus the time of each child process alive now. `None` if the
/// postmaster is not among `stats`.
fn server_ticks(stats: &[ProcStat], postmaster: u32) -> Option<u64> {
    let main = stats.iter().find(|s| s.pid == postmaster)?;
    let children: u64 = stats
        .iter()
        .filter(|s| s.ppid == postmaster && s.pid != postmaster)
        .map(|s| s.utime + s.stime + s.cutime + s.cstime)
        .sum();
    Some(main.utime + main.stime + main.cutime + main.cstime + children)
}

pub(crate) fn read_stat(pid: u32) -> Option<ProcStat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// The postmaster's and its children's stat lines, read now.
fn server_stats(postmaster: u32) -> Vec<ProcStat> {
    // Children first, then the postmaster: a child reaped in between is counted twice
    // rather than lost (both are rare and a few ticks at most).
    let mut out: Vec<ProcStat> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != postmaster)
        .filter_map(read_stat)
        .filter(|s| s.ppid == postmaster)
        .collect();
    out.extend(read_stat(postmaster));
    out
}

/// Seconds of CPU the server has used so far, if its postmaster is alive.
fn server_cpu(postmaster: u32, ticks_per_s: f64) -> Option<f64> {
    server_ticks(&server_stats(postmaster), postmaster).map(|t| t as f64 / ticks_per_s)
}

/// Seconds of CPU this process has used so far.
pub(crate) fn own_cpu(ticks_per_s: f64) -> f64 {
    read_stat(std::process::id()).map_or(0.0, |s| (s.utime + s.stime) as f64 / ticks_per_s)
}

/// Clock ticks per second of the times in `/proc` (`getconf CLK_TCK`; Linux reports
/// them in `USER_HZ`, 100, when the command is missing).
pub(crate) fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<f64>()
                .ok()
        })
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// Where the server's process id comes from.
#[derive(Debug, Clone)]
enum ServerSource {
    DataDir(PathBuf),
    Pid(u32),
    /// The parent of the benchmark's backend process.
    Backend,
    /// Not found: the server's CPU is not measured.
    Unknown,
}

/// The postmaster's pid from the first line of `postmaster.pid` in `data_dir`.
fn pid_from_data_dir(data_dir: &Path) -> anyhow::Result<u32> {
    let file = data_dir.join("postmaster.pid");
    let text =
        std::fs::read_to_string(&file).with_context(|| format!("read {}", file.display()))?;
    text.lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .with_context(|| format!("{}: no process id on its first line", file.display()))
}

/// The server's postmaster pid, checked against the connection: the backend serving
/// `client` must be its child, so that `--url` and the pid name the same server.
fn find_server(args: &Args, client: &mut Client) -> anyhow::Result<(ServerSource, Option<u32>)> {
    let backend: i32 = client.query_one("SELECT pg_backend_pid()", &[])?.get(0);
    let parent = u32::try_from(backend)
        .ok()
        .and_then(read_stat)
        .filter(|s| s.comm.starts_with("postgres"))
        .map(|s| s.ppid);
    let (source, pid) = if let Some(pid) = args.server_pid {
        (ServerSource::Pid(pid), pid)
    } else if let Some(dir) = &args.data_dir {
        (ServerSource::DataDir(dir.clone()), pid_from_data_dir(dir)?)
    } else {
        return Ok(match parent.and_then(read_stat) {
            Some(pm) if pm.comm.starts_with("postgres") || pm.comm == "postmaster" => {
                (ServerSource::Backend, Some(pm.pid))
            }
            _ => (ServerSource::Unknown, None),
        });
    };
    anyhow::ensure!(
        read_stat(pid).is_some(),
        "server process {pid} is not running here (or /proc/{pid}/stat is unreadable)"
    );
    anyhow::ensure!(
        parent == Some(pid),
        "the connection's backend (pid {backend}) is not a child of server process {pid}: \
         --url and --data-dir/--server-pid must name the same server, on this machine"
    );
    Ok((source, Some(pid)))
}

// ---------------------------------------------------------------------------------------
// The rows and the methods.

pub(crate) fn schema() -> Arc<RowSchema> {
    Arc::new(RowSchema::new(
        &[
            AggregateSpec::count(),
            AggregateSpec::new(AggFunc::Sum, Some("value")),
        ],
        &["value".into()],
    ))
}

/// Row `i`: window `i / keys`, key `i % keys`; count and sum vary with `i`.
fn row(i: u64, keys: u64) -> (i64, i64, String, f64, f64) {
    let start = FIRST_WINDOW + (i / keys) as i64 * WINDOW_MS;
    let count = 1 + (i * 7_919) % 100;
    let sum = count as f64 * 0.25 + (i % 13) as f64;
    (
        start,
        start + WINDOW_MS,
        format!("user-{:06}", i % keys),
        count as f64,
        sum,
    )
}

/// The rows in chunks of `chunk` rows (the last may be shorter).
pub(crate) fn chunks(
    rows: u64,
    keys: u64,
    chunk: usize,
    schema: &Arc<RowSchema>,
) -> Vec<Arc<WindowRows>> {
    let mut out = Vec::new();
    let mut current = WindowRows::new(schema.clone());
    for i in 0..rows {
        let (start, end, key, c, s) = row(i, keys);
        current.push(start, end, &key, &[c, s]);
        if current.len() == chunk {
            out.push(Arc::new(std::mem::replace(
                &mut current,
                WindowRows::new(schema.clone()),
            )));
        }
    }
    if !current.is_empty() {
        out.push(Arc::new(current));
    }
    out
}

fn connect(url: &str) -> anyhow::Result<Client> {
    let mut config: postgres::Config = url
        .parse()
        .with_context(|| format!("postgres url {}", redacted(url)))?;
    config.application_name("lungfish-bench");
    config
        .connect(NoTls)
        .with_context(|| format!("connect to {}", redacted(url)))
}

/// The table (a) and (b) write into: the shape the sink creates.
fn create_table(client: &mut Client, table: &str) -> anyhow::Result<()> {
    client
        .batch_execute(&format!(
            "CREATE TABLE {table} (window_start BIGINT NOT NULL, window_end BIGINT NOT NULL, \
             key TEXT NOT NULL, count BIGINT NOT NULL, sum_value DOUBLE PRECISION NOT NULL, \
             PRIMARY KEY (window_start, key))"
        ))
        .with_context(|| format!("create table {table}"))
}

fn insert_sql(table: &str, rows: usize) -> String {
    let mut sql =
        format!("INSERT INTO {table} (window_start, window_end, key, count, sum_value) VALUES ");
    for r in 0..rows {
        let p = r * COLUMNS;
        if r > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&format!(
            "(${}, ${}, ${}, ${}, ${})",
            p + 1,
            p + 2,
            p + 3,
            p + 4,
            p + 5
        ));
    }
    sql
}

/// The row values (a) and (b) bind, borrowed from the data.
pub(crate) type Values<'a> = (i64, i64, &'a str, i64, f64);

/// Every row of `data`, in order.
pub(crate) fn values(data: &[Arc<WindowRows>]) -> impl Iterator<Item = Values<'_>> {
    data.iter().flat_map(|rows| {
        (0..rows.len()).map(move |i| {
            (
                rows.window_start(i),
                rows.window_end(i),
                rows.key(i),
                rows.value(i, 0) as i64,
                rows.value(i, 1),
            )
        })
    })
}

/// (a): the first `n` rows, one prepared INSERT each, autocommit.
fn per_row(
    client: &mut Client,
    table: &str,
    data: &[Arc<WindowRows>],
    n: u64,
    bar: &ProgressBar,
) -> anyhow::Result<()> {
    let stmt = client.prepare(&insert_sql(table, 1))?;
    for (i, (start, end, key, c, s)) in values(data).take(n as usize).enumerate() {
        client.execute(&stmt, &[&start, &end, &key, &c, &s])?;
        if i % 1000 == 0 {
            bar.set_position(i as u64);
        }
    }
    Ok(())
}

/// (b): all rows, in INSERT statements of `batch` rows (the last may be shorter).
fn multi_row(
    client: &mut Client,
    table: &str,
    data: &[Arc<WindowRows>],
    batch: usize,
    bar: &ProgressBar,
) -> anyhow::Result<()> {
    let full = client.prepare(&insert_sql(table, batch))?;
    let mut rows: Vec<Values<'_>> = Vec::with_capacity(batch);
    let mut all = values(data).peekable();
    let mut done = 0u64;
    while all.peek().is_some() {
        rows.clear();
        rows.extend(all.by_ref().take(batch));
        let mut params: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(rows.len() * COLUMNS);
        for (start, end, key, c, s) in &rows {
            params.extend([start as &(dyn ToSql + Sync), end, key, c, s]);
        }
        if rows.len() == batch {
            client.execute(&full, &params)?;
        } else {
            client.execute(insert_sql(table, rows.len()).as_str(), &params)?;
        }
        done += rows.len() as u64;
        bar.set_position(done);
    }
    Ok(())
}

/// The data and the connection details every measurement shares.
struct Bench<'a> {
    s: &'a Settings,
    admin: Client,
    /// The rows in chunks of `chunk` rows, for every method.
    data: Vec<Arc<WindowRows>>,
    chunk: usize,
    schema: Arc<RowSchema>,
    server: Option<u32>,
    ticks: f64,
    checkpoint: bool,
    bar: ProgressBar,
}

/// One method's run.
#[derive(Debug, Clone, Copy)]
struct Sample {
    secs: f64,
    server_cpu: Option<f64>,
    client_cpu: f64,
}

/// What a method holds open while it is measured.
enum Writer {
    Client(Box<Client>),
    Sink(Box<PostgresSink>),
}

impl Bench<'_> {
    fn measure(&mut self, method: Method) -> anyhow::Result<Sample> {
        let table = method.table(&self.s.prefix);
        let rows = self.s.rows_of(method);
        self.admin
            .batch_execute(&format!("DROP TABLE IF EXISTS {table}"))?;
        let mut writer = match method {
            Method::PerRow | Method::MultiRow(_) => {
                let mut client = connect(&self.s.url)?;
                create_table(&mut client, &table)?;
                Writer::Client(Box::new(client))
            }
            Method::Copy(batch) => {
                let mut config = DatabaseSinkConfig::new(self.s.url.clone());
                config.table = table.clone();
                config.batch_max_rows = batch;
                config.statement_timeout = Duration::from_secs(600);
                let mut sink = PostgresSink::new("lungfish-bench", &config);
                sink.open(&self.schema)
                    .with_context(|| format!("open the sink on {table}"))?;
                Writer::Sink(Box::new(sink))
            }
        };
        if self.checkpoint
            && let Err(e) = self.admin.batch_execute("CHECKPOINT")
        {
            eprintln!(
                "warning: CHECKPOINT failed ({e}); methods will not start from a clean buffer pool"
            );
            self.checkpoint = false;
        }
        self.bar.set_length(rows);
        self.bar.set_position(0);

        let server_before = self.server.and_then(|pid| server_cpu(pid, self.ticks));
        let client_before = own_cpu(self.ticks);
        let started = Instant::now();
        match (&mut writer, method) {
            (Writer::Client(c), Method::PerRow) => per_row(c, &table, &self.data, rows, &self.bar)?,
            (Writer::Client(c), Method::MultiRow(batch)) => {
                multi_row(c, &table, &self.data, batch, &self.bar)?
            }
            (Writer::Sink(sink), Method::Copy(batch)) => {
                // Batches of `batch` rows are runs of whole chunks (`chunk` divides it).
                for (done, part) in self.data.chunks(batch / self.chunk).enumerate() {
                    sink.write(part)
                        .with_context(|| format!("write a batch into {table}"))?;
                    self.bar
                        .set_position((((done + 1) * batch) as u64).min(rows));
                }
            }
            _ => unreachable!("each method has its writer"),
        }
        let secs = started.elapsed().as_secs_f64();
        let client_after = own_cpu(self.ticks);
        let server_after = self.server.and_then(|pid| server_cpu(pid, self.ticks));
        // Close the method's connection only now: its backend's time is in the reading.
        drop(writer);

        let stored: i64 = self
            .admin
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])?
            .get(0);
        anyhow::ensure!(
            stored as u64 == rows,
            "{table} holds {stored} rows after {}, not {rows}",
            method.label()
        );
        self.admin.batch_execute(&format!("DROP TABLE {table}"))?;
        Ok(Sample {
            secs,
            server_cpu: server_before
                .zip(server_after)
                .map(|(b, a)| (a - b).max(0.0)),
            client_cpu: client_after - client_before,
        })
    }
}

pub(crate) fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// The median (the mean of the middle two of an even count); `NaN` for none.
pub(crate) fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

// ---------------------------------------------------------------------------------------
// The table.

/// One line of the table: a method's medians.
#[derive(Debug, Clone)]
pub(crate) struct Line {
    pub(crate) label: String,
    pub(crate) rows: u64,
    pub(crate) secs: f64,
    pub(crate) server_cpu: Option<f64>,
    pub(crate) client_cpu: f64,
}

impl Line {
    fn rate(&self) -> f64 {
        self.rows as f64 / self.secs
    }

    fn cpu_per_million(&self) -> Option<f64> {
        self.server_cpu.map(|c| c * 1e6 / self.rows as f64)
    }
}

/// The table, the first line being the reference the `x (a)` columns divide by.
pub(crate) fn render(lines: &[Line]) -> String {
    let mut out = format!(
        "  {:<44} {:>10} {:>10} {:>10} {:>7} {:>12} {:>12} {:>9} {:>12}\n",
        "",
        "rows",
        "elapsed s",
        "rows/s",
        "x (a)",
        "server CPU s",
        "CPU s/M rows",
        "CPU x (a)",
        "client CPU s"
    );
    let reference = lines.first();
    let fmt = |v: Option<f64>, digits: usize| v.map_or("-".to_owned(), |v| format!("{v:.digits$}"));
    for line in lines {
        let x_rate = reference.map(|r| line.rate() / r.rate());
        let x_cpu = reference
            .and_then(|r| Some(line.cpu_per_million()? / r.cpu_per_million()?))
            .filter(|x| x.is_finite());
        out.push_str(&format!(
            "  {:<44} {:>10} {:>10.2} {:>10} {:>7} {:>12} {:>12} {:>9} {:>12.2}\n",
            line.label,
            count(line.rows),
            line.secs,
            count(line.rate().round() as u64),
            fmt(x_rate, 1),
            fmt(line.server_cpu, 2),
            fmt(line.cpu_per_million(), 1),
            fmt(x_cpu, 3),
            line.client_cpu,
        ));
    }
    out
}

/// Runs the benchmark and prints the table.
pub fn bench_postgres(args: Args) -> anyhow::Result<ExitCode> {
    let s = Settings::new(&args)?;
    let mut admin = connect(&s.url)?;
    let (source, server) = find_server(&args, &mut admin)?;
    let version: String = admin.query_one("SHOW server_version", &[])?.get(0);
    let setting = |admin: &mut Client, name: &str| -> String {
        admin
            .query_one("SELECT current_setting($1)", &[&name])
            .map_or_else(|_| "?".into(), |r| r.get(0))
    };
    let settings = [
        "fsync",
        "synchronous_commit",
        "shared_buffers",
        "max_wal_size",
    ]
    .map(|n| format!("{n} {}", setting(&mut admin, n)))
    .join(", ");
    let host = s
        .url
        .rsplit_once('@')
        .map_or(s.url.as_str(), |(_, h)| h)
        .to_owned();

    let bar = if std::io::stderr().is_terminal() {
        ProgressBar::new(0).with_style(ProgressStyle::with_template(
            "{spinner} {elapsed_precise} {msg} {pos}/{len} rows",
        )?)
    } else {
        ProgressBar::hidden()
    };
    bar.enable_steady_tick(Duration::from_millis(100));
    bar.set_message("generating the rows");
    let chunk = s.copy_batches.iter().copied().fold(0, gcd);
    let schema = schema();
    let data = chunks(s.rows, s.keys, chunk, &schema);
    let methods = s.methods();
    let mut bench = Bench {
        s: &s,
        admin,
        data,
        chunk,
        schema,
        server,
        ticks: clock_ticks(),
        checkpoint: true,
        bar: bar.clone(),
    };
    let letter = |i: usize| (b'a' + i as u8) as char;
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); methods.len()];
    for run in 1..=s.runs {
        for (i, &m) in methods.iter().enumerate() {
            bar.set_message(format!(
                "run {run}/{}: ({}) {}",
                s.runs,
                letter(i),
                m.label()
            ));
            samples[i].push(bench.measure(m)?);
        }
    }
    bar.finish_and_clear();
    drop(bench);

    let lines: Vec<Line> = methods
        .iter()
        .zip(&samples)
        .enumerate()
        .map(|(i, (&m, runs))| {
            let secs: Vec<f64> = runs.iter().map(|r| r.secs).collect();
            let server: Option<Vec<f64>> = runs.iter().map(|r| r.server_cpu).collect();
            let client: Vec<f64> = runs.iter().map(|r| r.client_cpu).collect();
            let partial = m == Method::PerRow && s.per_row_rows < s.rows;
            Line {
                label: format!(
                    "({}) {}{}",
                    letter(i),
                    m.label(),
                    if partial { " (*)" } else { "" }
                ),
                rows: s.rows_of(m),
                secs: median(&secs),
                server_cpu: server.map(|v| median(&v)),
                client_cpu: median(&client),
            }
        })
        .collect();

    let windows = s.rows.div_ceil(s.keys);
    println!(
        "lungfish bench postgres: PostgreSQL {version} at {host} ({settings}), {} rows \
         ({} windows x {} keys{}), median of {} run(s) with the methods interleaved, {} cores",
        count(s.rows),
        count(windows),
        count(s.keys),
        if s.rows % s.keys == 0 {
            ""
        } else {
            ", the last window partly"
        },
        s.runs,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!();
    print!("{}", render(&lines));
    println!();
    if s.per_row_rows < s.rows {
        println!(
            "  (*) measured on the first {} of the {} rows; its rows/s and CPU s/M rows stand for all of them",
            count(s.per_row_rows),
            count(s.rows)
        );
    }
    // Every run's rate, so the spread behind each median shows.
    for (i, (&m, runs)) in methods.iter().zip(&samples).enumerate() {
        let rates: Vec<String> = runs
            .iter()
            .map(|r| count((s.rows_of(m) as f64 / r.secs).round() as u64))
            .collect();
        println!("  ({}) rows/s of each run: {}", letter(i), rates.join(", "));
    }
    let copy_x: Vec<String> = lines
        .iter()
        .zip(&methods)
        .enumerate()
        .filter(|(_, (_, m))| matches!(m, Method::Copy(_)))
        .map(|(i, (l, _))| format!("({}) {:.1}x", letter(i), l.rate() / lines[0].rate()))
        .collect();
    println!(
        "  aim: the COPY sink at least 20x the rate of one INSERT per row: {}",
        copy_x.join(", ")
    );
    println!(
        "  x (a) = rows/s / (a)'s rows/s; CPU x (a) = CPU s/M rows / (a)'s; (a), (b): plain INSERTs into a \
         table they create; the sink: binary COPY into a temporary table and INSERT ... ON CONFLICT DO UPDATE, \
         one transaction a batch"
    );
    match server {
        Some(pid) => println!(
            "  server CPU: utime+stime of postmaster {pid} ({}) and its child processes, and of children reaped \
             meanwhile, from /proc, around the writes only (connect, CREATE TABLE excluded); a CHECKPOINT before \
             each method; client CPU: this process",
            match &source {
                ServerSource::DataDir(d) => format!("from {}", d.join("postmaster.pid").display()),
                ServerSource::Pid(_) => "from --server-pid".to_owned(),
                _ => "the parent of the benchmark's backend".to_owned(),
            }
        ),
        None => println!(
            "  server CPU: not measured (the server does not run here, or its process is not visible: \
             pass --data-dir or --server-pid)"
        ),
    }
    println!("  command: {}", s.command(&source));
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse_past_odd_command_names() {
        let line = "4242 (postgres: postgres postgres 127.0.0.1(5) INSERT) S 4200 4200 4200 0 -1 \
                    4194560 1133 0 0 0 731 129 5 7 20 0 1 0 123456 229638144 3062 \
                    18446744073709551615 1 1 0 0 0 0 4194304 19935232 84487 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(
            parse_stat(line),
            Some(ProcStat {
                pid: 4242,
                comm: "postgres: postgres postgres 127.0.0.1(5) INSERT".into(),
                ppid: 4200,
                utime: 731,
                stime: 129,
                cutime: 5,
                cstime: 7,
            })
        );
        assert_eq!(parse_stat("12 (x) S 1 2"), None);
        assert_eq!(parse_stat(""), None);
        // This process's own line parses.
        let me = read_stat(std::process::id()).unwrap();
        assert_eq!(me.pid, std::process::id());
    }

    #[test]
    fn server_ticks_sum_the_postmaster_and_its_children_only() {
        let stat = |pid, ppid, utime, stime, cutime| ProcStat {
            pid,
            comm: "postgres".into(),
            ppid,
            utime,
            stime,
            cutime,
            cstime: 1,
        };
        let stats = [
            stat(100, 1, 10, 5, 50),   // postmaster: 10 + 5 + 50 + 1
            stat(101, 100, 20, 3, 0),  // a backend: 24
            stat(102, 100, 1, 1, 0),   // the checkpointer: 3
            stat(200, 1, 999, 999, 0), // another process
            stat(201, 101, 999, 0, 0), // a grandchild: in 101's cutime once reaped
        ];
        assert_eq!(server_ticks(&stats, 100), Some(66 + 24 + 3));
        assert_eq!(server_ticks(&stats, 300), None);
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[7.0]), 7.0);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn the_table_divides_by_the_first_line() {
        let line = |label: &str, rows, secs, cpu| Line {
            label: label.into(),
            rows,
            secs,
            server_cpu: cpu,
            client_cpu: 0.5,
        };
        let text = render(&[
            line("(a) one INSERT per row", 100_000, 10.0, Some(8.0)),
            line("(c) COPY sink", 1_000_000, 4.0, Some(4.0)),
            line("(d) no CPU", 1_000_000, 2.0, None),
        ]);
        let rows: Vec<Vec<&str>> = text
            .lines()
            .skip(1)
            .map(|l| {
                l.split("  ")
                    .filter(|c| !c.trim().is_empty())
                    .map(str::trim)
                    .collect()
            })
            .collect();
        // label, rows, elapsed, rows/s, x (a), server CPU, CPU/M, CPU x (a), client CPU
        assert_eq!(
            rows[0],
            [
                "(a) one INSERT per row",
                "100,000",
                "10.00",
                "10,000",
                "1.0",
                "8.00",
                "80.0",
                "1.000",
                "0.50"
            ]
        );
        assert_eq!(
            rows[1],
            [
                "(c) COPY sink",
                "1,000,000",
                "4.00",
                "250,000",
                "25.0",
                "4.00",
                "4.0",
                "0.050",
                "0.50"
            ]
        );
        assert_eq!(rows[2][4..8], ["50.0", "-", "-", "-"]);
        assert!(text.lines().next().unwrap().contains("CPU s/M rows"));
    }

    #[test]
    fn rows_are_distinct_window_key_pairs_in_whole_chunks() {
        let schema = schema();
        let data = chunks(25, 10, 4, &schema);
        assert_eq!(
            data.iter().map(|c| c.len()).collect::<Vec<_>>(),
            [4, 4, 4, 4, 4, 4, 1]
        );
        let pairs: std::collections::HashSet<(i64, String)> = values(&data)
            .map(|(start, _, key, _, _)| (start, key.to_owned()))
            .collect();
        assert_eq!(pairs.len(), 25);
        assert_eq!(values(&data).nth(12).unwrap().2, "user-000002");
        assert_eq!(gcd(gcd(0, 2_000), 20_000), 2_000);
        assert_eq!(
            insert_sql("t", 2),
            "INSERT INTO t (window_start, window_end, key, count, sum_value) VALUES \
             ($1, $2, $3, $4, $5), ($6, $7, $8, $9, $10)"
        );
        assert_eq!(redacted("postgres://u:pw@h:5/d"), "postgres://u:***@h:5/d");
    }
}
