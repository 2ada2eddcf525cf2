//! `lungfish`: run, validate and benchmark Lungfish pipelines.
//!
//! The binary is thin: it parses the command line, loads the pipeline file, wires the
//! library's parts and shows progress. Everything else lives in the `lungfish` crate.

mod admin;
mod bench;
mod bench_clickhouse;
mod bench_log;
mod bench_postgres;
mod config;
mod dlq;
mod generate;
mod load;
mod log;
mod run;
mod validate;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// An event pipeline that stays calm under irregular load.
#[derive(Debug, Parser)]
#[command(name = "lungfish", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a pipeline until its input is finished and processed (or Ctrl-C).
    Run(run::Args),
    /// Check pipeline files and report every problem with file, line and field.
    Validate {
        /// Pipeline files (TOML).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Write generated JSON-lines events to standard output or a file.
    Generate(generate::Args),
    /// Benchmarks: the pipeline against parse-only speed (default), `bench log`, `bench postgres`, `bench clickhouse`.
    Bench(BenchCommand),
    /// List, show, purge and replay the dead-letter queue of a pipeline (while it is stopped).
    #[command(subcommand)]
    Dlq(dlq::Command),
    /// Inspect, repair or rewind a pipeline's log.
    #[command(subcommand)]
    Log(log::Command),
    /// Send events to an HTTP source with a chosen traffic shape, and report rates and acknowledgement latency.
    Load(load::Args),
    /// Print the pipeline file's JSON Schema (`config schema`) or Markdown reference (`config reference`).
    #[command(subcommand)]
    Config(config::Command),
}

/// `lungfish bench [log | postgres | clickhouse]`.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
struct BenchCommand {
    #[command(subcommand)]
    what: Option<BenchWhat>,
    #[command(flatten)]
    pipeline: bench::Args,
}

#[derive(Debug, Subcommand)]
enum BenchWhat {
    /// The log's append and catch-up read throughput against the disk's write bandwidth.
    Log(bench_log::Args),
    /// One million rows into Postgres: one INSERT per row, multi-row INSERTs, and the COPY sink, side by side, with the server's CPU time.
    Postgres(bench_postgres::Args),
    /// One million rows into ClickHouse: one INSERT per row, multi-row INSERTs, and the sink, side by side, with the server's CPU time.
    #[command(name = "clickhouse")]
    ClickHouse(bench_clickhouse::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Commands that print a listing end quietly when their reader goes away
    // (`lungfish log inspect ... | head`), as Unix tools do, instead of panicking on
    // a closed pipe. `run` keeps Rust's default: a stdout sink whose reader left gets
    // an error it reports, and the pipeline stops gracefully.
    if matches!(
        cli.command,
        Command::Dlq(_) | Command::Log(_) | Command::Generate(_) | Command::Config(_)
    ) {
        restore_default_sigpipe();
    }
    let filter = tracing_subscriber::EnvFilter::try_from_env("LUNGFISH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Run(args) => run::run(args),
        Command::Validate { files } => validate::validate(&files),
        Command::Generate(args) => generate::generate(args),
        Command::Bench(b) => match b.what {
            Some(BenchWhat::Log(args)) => bench_log::bench_log(args),
            Some(BenchWhat::Postgres(args)) => bench_postgres::bench_postgres(args),
            Some(BenchWhat::ClickHouse(args)) => bench_clickhouse::bench_clickhouse(args),
            None => bench::bench(b.pipeline),
        },
        Command::Dlq(cmd) => dlq::dlq(cmd),
        Command::Log(cmd) => log::log(cmd),
        Command::Load(args) => load::load(args),
        Command::Config(cmd) => config::config(cmd),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Lets SIGPIPE end the process, as it does for C programs (Rust ignores it).
#[allow(unsafe_code)]
fn restore_default_sigpipe() {
    // SAFETY: resetting a signal's disposition to its default at startup, before any
    // thread is spawned; no handler runs Rust code.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
