//! `lungfish bench clickhouse`: one million window rows into ClickHouse in four ways, side
//! by side on the same server in one invocation, with the server's CPU time:
//!
//! * **(a) one INSERT per row**: `INSERT INTO t VALUES (...)`, one HTTP request (and so
//!   one part on disk) per row. It is slow, so it writes only the first `--per-row-rows`
//!   rows (20,000 by default) and its rate stands for all of them.
//! * **(b) multi-row INSERT**: `INSERT INTO t FORMAT JSONEachRow` with `--insert-rows`
//!   rows (2,000) in each request's body.
//! * **(c), (d) the sink**: Lungfish's [`ClickHouseSink`], called as the pipeline's sink
//!   driver calls it, with batches of each `--sink-batches` size (2,000 and 20,000): one
//!   `INSERT ... FORMAT RowBinary` request a batch.
//!
//! Every method writes into a fresh table of the sink's shape (`window_start`,
//! `window_end`, `key`, `count`, `sum_value`, `_version`, a `ReplacingMergeTree` ordered by
//! `(window_start, key)`); (a) and (b) create theirs, the sink creates its own. The rows
//! are the same for all: distinct `(window_start, key)` pairs, `--keys` keys per
//! one-minute window.
//!
//! **Measured**, per method and run: the wall time of the writes (creating the table
//! excluded), and the CPU time the server spent meanwhile: `utime + stime` of the server
//! process from `/proc/PID/stat` (ClickHouse is one process with many threads, and a
//! process's times cover all its threads), plus its `cutime + cstime` (children that
//! exited and were reaped), read before and after. Merges the server runs during the
//! writes are counted; those still running when the writes end are not (the table is
//! dropped after the row count is checked, which stops them). The client's own CPU time
//! (this process) is reported too. Methods are interleaved within each run and each
//! figure is the median of `--runs` runs.

use std::io::IsTerminal;
use std::io::Write as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use lungfish::config::DatabaseSinkConfig;
use lungfish::sinks::Sink;
use lungfish::sinks::clickhouse::ClickHouseSink;
use lungfish::window::{RowSchema, WindowRows};

use crate::bench_postgres::{
    Line, chunks, clock_ticks, gcd, median, own_cpu, read_stat, render, schema, values,
};
use crate::run::count;

/// Arguments of `lungfish bench clickhouse`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The server's HTTP interface: `http://host:8123` (credentials, if any, as
    /// `?user=...&password=...`). Use a throwaway server: the benchmark creates and drops
    /// tables named `<table-prefix>_*`.
    #[arg(long)]
    pub url: String,
    /// The process id of the server, whose CPU time is measured. Without it, the process
    /// listening on the URL's port, or else the only `clickhouse-server` process, if it
    /// runs here.
    #[arg(long)]
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
    #[arg(long, default_value_t = 20_000)]
    pub per_row_rows: u64,
    /// Rows in each multi-row JSONEachRow INSERT of (b).
    #[arg(long, default_value_t = 2_000)]
    pub insert_rows: usize,
    /// Batch sizes of the sink, comma-separated: one method each.
    #[arg(long, value_delimiter = ',', default_value = "2000,20000")]
    pub sink_batches: Vec<usize>,
    /// Runs of each method (interleaved); medians are reported.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Prefix of the tables the benchmark creates (and drops).
    #[arg(long, default_value = "lungfish_bench")]
    pub table_prefix: String,
}

/// ClickHouse's code for "too many parts": inserts outran the merges.
const TOO_MANY_PARTS: &str = "Code: 252,";

/// One way of writing the rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    /// One INSERT request per row.
    PerRow,
    /// JSONEachRow INSERTs of this many rows.
    MultiRow(usize),
    /// The sink with batches of this many rows.
    Sink(usize),
}

impl Method {
    fn label(self) -> String {
        match self {
            Method::PerRow => "one INSERT per row, one request each".into(),
            Method::MultiRow(n) => format!("JSONEachRow INSERT, {} rows each", count(n as u64)),
            Method::Sink(n) => format!("ClickHouse sink, batches of {}", count(n as u64)),
        }
    }

    fn table(self, prefix: &str) -> String {
        match self {
            Method::PerRow => format!("{prefix}_per_row"),
            Method::MultiRow(n) => format!("{prefix}_multi_row_{n}"),
            Method::Sink(n) => format!("{prefix}_sink_{n}"),
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
    sink_batches: Vec<usize>,
    runs: usize,
    prefix: String,
}

impl Settings {
    fn new(args: &Args) -> anyhow::Result<Settings> {
        anyhow::ensure!(
            args.url.starts_with("http://"),
            "--url must be a plain http:// URL of ClickHouse's HTTP interface"
        );
        anyhow::ensure!(args.rows >= 1, "--rows must be at least 1");
        anyhow::ensure!(args.keys >= 1, "--keys must be at least 1");
        anyhow::ensure!(args.per_row_rows >= 1, "--per-row-rows must be at least 1");
        anyhow::ensure!(args.runs >= 1, "--runs must be at least 1");
        anyhow::ensure!(args.insert_rows >= 1, "--insert-rows must be at least 1");
        anyhow::ensure!(
            !args.sink_batches.is_empty() && args.sink_batches.iter().all(|&b| b >= 1),
            "--sink-batches takes batch sizes of at least 1 row"
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
        let mut sink_batches = args.sink_batches.clone();
        sink_batches.dedup();
        Ok(Settings {
            url: args.url.clone(),
            rows: args.rows,
            keys: args.keys,
            per_row_rows: args.per_row_rows.min(args.rows),
            insert_rows: args.insert_rows,
            sink_batches,
            runs: args.runs,
            prefix: args.table_prefix.clone(),
        })
    }

    fn methods(&self) -> Vec<Method> {
        let mut m = vec![Method::PerRow, Method::MultiRow(self.insert_rows)];
        m.extend(self.sink_batches.iter().map(|&b| Method::Sink(b)));
        m
    }

    fn rows_of(&self, method: Method) -> u64 {
        match method {
            Method::PerRow => self.per_row_rows,
            _ => self.rows,
        }
    }

    fn command(&self, pid: Option<u32>) -> String {
        let batches: Vec<String> = self.sink_batches.iter().map(|b| b.to_string()).collect();
        format!(
            "lungfish bench clickhouse --url {}{} --rows {} --keys {} --per-row-rows {} \
             --insert-rows {} --sink-batches {} --runs {} --table-prefix {}",
            without_password(&self.url),
            pid.map_or(String::new(), |p| format!(" --server-pid {p}")),
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

/// The URL with a `password=` query parameter's value hidden.
fn without_password(url: &str) -> String {
    let Some((base, query)) = url.split_once('?') else {
        return url.to_owned();
    };
    let query: Vec<String> = query
        .split('&')
        .map(|p| match p.split_once('=') {
            Some(("password", _)) => "password=***".to_owned(),
            _ => p.to_owned(),
        })
        .collect();
    format!("{base}?{}", query.join("&"))
}

// ---------------------------------------------------------------------------------------
// The server's process.

/// The port of an `http://host:port/...` URL (80 without one).
fn url_port(url: &str) -> Option<u16> {
    let rest = url.strip_prefix("http://")?;
    let authority = rest.split(['/', '?']).next()?;
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    match host.rsplit_once(':') {
        Some((_, port)) if !host.ends_with(']') => port.parse().ok(),
        _ => Some(80),
    }
}

/// The socket inodes listening on `port` in a `/proc/net/tcp` or `tcp6` listing.
fn listening_inodes(listing: &str, port: u16) -> Vec<u64> {
    listing
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let local_port = u16::from_str_radix(f.get(1)?.rsplit_once(':')?.1, 16).ok()?;
            // State 0A is LISTEN.
            (local_port == port && *f.get(3)? == "0A")
                .then(|| f.get(9)?.parse().ok())
                .flatten()
        })
        .filter(|&inode| inode != 0)
        .collect()
}

fn pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .collect()
}

/// The process holding a socket that listens on `port`, if this user can see it.
fn pid_listening_on(port: u16) -> Option<u32> {
    let inodes: Vec<u64> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .flat_map(|l| listening_inodes(&l, port))
        .collect();
    if inodes.is_empty() {
        return None;
    }
    let wanted: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    pids().into_iter().find(|pid| {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .filter_map(|e| std::fs::read_link(e.path()).ok())
            .any(|target| wanted.iter().any(|w| target.as_os_str() == w.as_str()))
    })
}

/// The only process named like `clickhouse-server` (its command name is cut to 15
/// characters), if exactly one runs.
fn pid_by_name() -> Option<u32> {
    let found: Vec<u32> = pids()
        .into_iter()
        .filter(|&pid| read_stat(pid).is_some_and(|s| s.comm.starts_with("clickhouse-serv")))
        .collect();
    match found[..] {
        [pid] => Some(pid),
        _ => None,
    }
}

/// The server's pid and where it came from.
fn find_server(args: &Args) -> anyhow::Result<Option<(u32, &'static str)>> {
    if let Some(pid) = args.server_pid {
        anyhow::ensure!(
            read_stat(pid).is_some(),
            "server process {pid} is not running here (or /proc/{pid}/stat is unreadable)"
        );
        return Ok(Some((pid, "from --server-pid")));
    }
    if let Some(pid) = url_port(&args.url).and_then(pid_listening_on) {
        return Ok(Some((pid, "the process listening on the URL's port")));
    }
    Ok(pid_by_name().map(|pid| (pid, "the only clickhouse-server process")))
}

/// Seconds of CPU the server process has used so far: all its threads, and its reaped
/// children.
fn server_cpu(pid: u32, ticks_per_s: f64) -> Option<f64> {
    read_stat(pid).map(|s| (s.utime + s.stime + s.cutime + s.cstime) as f64 / ticks_per_s)
}

// ---------------------------------------------------------------------------------------
// HTTP.

struct Http {
    agent: ureq::Agent,
    url: String,
}

impl Http {
    fn new(url: &str) -> Http {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(600)))
            // Below ClickHouse's keep_alive_timeout (10 s by default).
            .max_idle_age(Duration::from_secs(5))
            .user_agent("lungfish-bench")
            .build();
        Http {
            agent: ureq::Agent::new_with_config(config),
            url: url.to_owned(),
        }
    }

    /// POSTs `body`, with `query` (if any) as the `query` parameter; the answer on a 200.
    fn post(&self, query: Option<&str>, body: &[u8]) -> anyhow::Result<String> {
        let mut request = self.agent.post(&self.url);
        if let Some(q) = query {
            request = request.query("query", q);
        }
        let mut response = request
            .send(body)
            .with_context(|| format!("POST to {}", without_password(&self.url)))?;
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        anyhow::ensure!(status == 200, "HTTP {status}: {}", text.trim());
        Ok(text)
    }

    /// Runs one SQL statement (in the body).
    fn sql(&self, sql: &str) -> anyhow::Result<String> {
        self.post(None, sql.as_bytes())
            .with_context(|| format!("`{sql}`"))
    }
}

// ---------------------------------------------------------------------------------------
// The methods.

const COLUMNS: &str = "window_start, window_end, key, count, sum_value, _version";

/// The table (a) and (b) write into: the shape the sink creates.
fn create_sql(table: &str) -> String {
    format!(
        "CREATE TABLE {table} (window_start Int64, window_end Int64, key String, count Int64, \
         sum_value Float64, _version UInt64) ENGINE = ReplacingMergeTree(_version) \
         ORDER BY (window_start, key)"
    )
}

/// An SQL string literal.
fn sql_str(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// (a)'s statement for one row.
fn row_insert(table: &str, (start, end, key, c, s): crate::bench_postgres::Values<'_>) -> String {
    format!(
        "INSERT INTO {table} ({COLUMNS}) VALUES ({start}, {end}, {}, {c}, {s}, 1)",
        sql_str(key)
    )
}

/// One JSONEachRow line of (b).
fn json_row(out: &mut Vec<u8>, (start, end, key, c, s): crate::bench_postgres::Values<'_>) {
    let _ = write!(
        out,
        "{{\"window_start\":{start},\"window_end\":{end},\"key\":"
    );
    serde_json::to_writer(&mut *out, key).expect("writing to a Vec cannot fail");
    let _ = writeln!(out, ",\"count\":{c},\"sum_value\":{s},\"_version\":1}}");
}

/// Posts with a retry while the server says too many parts; returns the retries.
fn post_retrying(http: &Http, query: Option<&str>, body: &[u8]) -> anyhow::Result<u64> {
    let mut retries = 0;
    loop {
        match http.post(query, body) {
            Ok(_) => return Ok(retries),
            Err(e) if retries < 10_000 && e.to_string().contains(TOO_MANY_PARTS) => {
                retries += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(e),
        }
    }
}

/// (a): the first `n` rows, one INSERT request each.
fn per_row(
    http: &Http,
    table: &str,
    data: &[Arc<WindowRows>],
    n: u64,
    bar: &ProgressBar,
) -> anyhow::Result<u64> {
    let mut retries = 0;
    for (i, row) in values(data).take(n as usize).enumerate() {
        retries += post_retrying(http, None, row_insert(table, row).as_bytes())?;
        if i % 200 == 0 {
            bar.set_position(i as u64);
        }
    }
    Ok(retries)
}

/// (b): all rows, in JSONEachRow INSERTs of `batch` rows (the last may be shorter).
fn multi_row(
    http: &Http,
    table: &str,
    data: &[Arc<WindowRows>],
    batch: usize,
    bar: &ProgressBar,
) -> anyhow::Result<u64> {
    let query = format!("INSERT INTO {table} ({COLUMNS}) FORMAT JSONEachRow");
    let mut all = values(data).peekable();
    let mut body = Vec::new();
    let (mut done, mut retries) = (0u64, 0);
    while all.peek().is_some() {
        body.clear();
        let mut n = 0;
        for row in all.by_ref().take(batch) {
            json_row(&mut body, row);
            n += 1;
        }
        retries += post_retrying(http, Some(&query), &body)?;
        done += n;
        bar.set_position(done);
    }
    Ok(retries)
}

struct Bench<'a> {
    s: &'a Settings,
    admin: Http,
    data: Vec<Arc<WindowRows>>,
    chunk: usize,
    schema: Arc<RowSchema>,
    server: Option<u32>,
    ticks: f64,
    bar: ProgressBar,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    secs: f64,
    server_cpu: Option<f64>,
    client_cpu: f64,
    /// Requests repeated after "too many parts".
    retries: u64,
}

impl Bench<'_> {
    fn measure(&mut self, method: Method) -> anyhow::Result<Sample> {
        let table = method.table(&self.s.prefix);
        let rows = self.s.rows_of(method);
        self.admin.sql(&format!("DROP TABLE IF EXISTS {table}"))?;
        let http = Http::new(&self.s.url);
        let mut sink = match method {
            Method::PerRow | Method::MultiRow(_) => {
                self.admin.sql(&create_sql(&table))?;
                None
            }
            Method::Sink(batch) => {
                let mut config = DatabaseSinkConfig::new(self.s.url.clone());
                config.table = table.clone();
                config.batch_max_rows = batch;
                config.statement_timeout = Duration::from_secs(600);
                let mut sink = ClickHouseSink::new(&config);
                sink.open(&self.schema)
                    .with_context(|| format!("open the sink on {table}"))?;
                Some(sink)
            }
        };
        // Let the server settle after the previous method's DROP.
        std::thread::sleep(Duration::from_millis(500));
        self.bar.set_length(rows);
        self.bar.set_position(0);

        let server_before = self.server.and_then(|pid| server_cpu(pid, self.ticks));
        let client_before = own_cpu(self.ticks);
        let started = Instant::now();
        let retries = match (&mut sink, method) {
            (None, Method::PerRow) => per_row(&http, &table, &self.data, rows, &self.bar)?,
            (None, Method::MultiRow(batch)) => {
                multi_row(&http, &table, &self.data, batch, &self.bar)?
            }
            (Some(sink), Method::Sink(batch)) => {
                // Batches of `batch` rows are runs of whole chunks (`chunk` divides it).
                for (done, part) in self.data.chunks(batch / self.chunk).enumerate() {
                    sink.write(part)
                        .with_context(|| format!("write a batch into {table}"))?;
                    self.bar
                        .set_position((((done + 1) * batch) as u64).min(rows));
                }
                0
            }
            _ => unreachable!("each method has its writer"),
        };
        let secs = started.elapsed().as_secs_f64();
        let client_after = own_cpu(self.ticks);
        let server_after = self.server.and_then(|pid| server_cpu(pid, self.ticks));
        drop(sink);

        let stored: u64 = self
            .admin
            .sql(&format!("SELECT count() FROM {table} FINAL"))?
            .trim()
            .parse()
            .context("the row count")?;
        anyhow::ensure!(
            stored == rows,
            "{table} holds {stored} rows after {}, not {rows}",
            method.label()
        );
        self.admin.sql(&format!("DROP TABLE {table}"))?;
        Ok(Sample {
            secs,
            server_cpu: server_before
                .zip(server_after)
                .map(|(b, a)| (a - b).max(0.0)),
            client_cpu: client_after - client_before,
            retries,
        })
    }
}

/// Runs the benchmark and prints the table.
pub fn bench_clickhouse(args: Args) -> anyhow::Result<ExitCode> {
    let s = Settings::new(&args)?;
    let admin = Http::new(&s.url);
    let version = admin
        .sql("SELECT version()")
        .with_context(|| format!("reach ClickHouse at {}", without_password(&s.url)))?
        .trim()
        .to_owned();
    let found = find_server(&args)?;
    let server = found.map(|(pid, _)| pid);

    let bar = if std::io::stderr().is_terminal() {
        ProgressBar::new(0).with_style(ProgressStyle::with_template(
            "{spinner} {elapsed_precise} {msg} {pos}/{len} rows",
        )?)
    } else {
        ProgressBar::hidden()
    };
    bar.enable_steady_tick(Duration::from_millis(100));
    bar.set_message("generating the rows");
    let chunk = s.sink_batches.iter().copied().fold(0, gcd);
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
        "lungfish bench clickhouse: ClickHouse {version} at {}, {} rows ({} windows x {} keys{}), \
         median of {} run(s) with the methods interleaved, {} cores",
        without_password(&s.url),
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
            "  (*) measured on the first {} of the {} rows, as it is slow; its rows/s and CPU s/M rows stand for all of them",
            count(s.per_row_rows),
            count(s.rows)
        );
    }
    for (i, (&m, runs)) in methods.iter().zip(&samples).enumerate() {
        let rates: Vec<String> = runs
            .iter()
            .map(|r| count((s.rows_of(m) as f64 / r.secs).round() as u64))
            .collect();
        let retries: u64 = runs.iter().map(|r| r.retries).sum();
        println!(
            "  ({}) rows/s of each run: {}{}",
            letter(i),
            rates.join(", "),
            if retries > 0 {
                format!(
                    "; {retries} request(s) repeated after \"too many parts\" (50 ms pause each)"
                )
            } else {
                String::new()
            }
        );
    }
    println!(
        "  x (a) = rows/s / (a)'s rows/s; CPU x (a) = CPU s/M rows / (a)'s; (a): `INSERT INTO t VALUES (...)`, \
         (b): `INSERT INTO t FORMAT JSONEachRow`, into a ReplacingMergeTree they create; the sink: \
         `INSERT ... FORMAT RowBinary`, one request a batch, into the table it creates"
    );
    match found {
        Some((pid, how)) => println!(
            "  server CPU: utime+stime (all threads) and cutime+cstime of process {pid} ({how}), from /proc, \
             around the writes only (CREATE TABLE excluded; merges still running after the writes are not \
             counted: the table is dropped); client CPU: this process"
        ),
        None => println!(
            "  server CPU: not measured (the server does not run here, or its process is not visible: \
             pass --server-pid)"
        ),
    }
    println!("  command: {}", s.command(server));
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_sockets_are_found_by_port_and_state() {
        let listing = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
            \x20  0: 0100007F:4A9B 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 81234 1 0000000000000000 100 0 0 10 0\n\
            \x20  1: 0100007F:4A9B 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 81299 1 0000000000000000 20 4 30 10 -1\n\
            \x20  2: 0100007F:4A9C 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 81240 1 0000000000000000 100 0 0 10 0\n";
        assert_eq!(listening_inodes(listing, 0x4A9B), [81234]);
        assert_eq!(listening_inodes(listing, 0x4A9C), [81240]);
        assert!(listening_inodes(listing, 8123).is_empty());
        assert_eq!(url_port("http://127.0.0.1:18123"), Some(18123));
        assert_eq!(url_port("http://u:p@h:8123/?database=x"), Some(8123));
        assert_eq!(url_port("http://h/"), Some(80));
    }

    #[test]
    fn rows_are_written_as_sql_and_json() {
        let row = (60_000, 120_000, "it's", 3, 2.5);
        assert_eq!(
            row_insert("t", row),
            "INSERT INTO t (window_start, window_end, key, count, sum_value, _version) \
             VALUES (60000, 120000, 'it\\'s', 3, 2.5, 1)"
        );
        let mut out = Vec::new();
        json_row(&mut out, (1, 2, "a\"b", 4, 7.25));
        let line: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            line,
            serde_json::json!({"window_start": 1, "window_end": 2, "key": "a\"b",
                "count": 4, "sum_value": 7.25, "_version": 1})
        );
        assert!(out.ends_with(b"}\n"));
    }

    #[test]
    fn settings_make_the_methods_and_hide_passwords() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: Args,
        }
        let cli = Cli::parse_from(["x", "--url", "http://h:8123/?user=u&password=pw"]);
        let s = Settings::new(&cli.args).unwrap();
        assert_eq!(
            s.methods(),
            [
                Method::PerRow,
                Method::MultiRow(2_000),
                Method::Sink(2_000),
                Method::Sink(20_000)
            ]
        );
        assert_eq!(s.rows_of(Method::PerRow), 20_000);
        assert_eq!(s.rows_of(Method::Sink(2_000)), 1_000_000);
        assert!(
            s.command(Some(7))
                .contains("?user=u&password=*** --server-pid 7")
        );
        let cli = Cli::parse_from(["x", "--url", "https://h:8443"]);
        assert!(Settings::new(&cli.args).is_err());
    }
}
