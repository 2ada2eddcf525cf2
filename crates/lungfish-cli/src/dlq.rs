//! `lungfish dlq`: look at, purge and replay a pipeline's dead-letter queue.
//!
//! Every command opens `DATA_DIR/dlq` of the pipeline file and holds the data directory's
//! lock meanwhile, so they run while the pipeline is stopped. Purge and replay append
//! control records; the entries themselves stay in the queue.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use lungfish::PipelineConfig;
use lungfish::data_dir::DataDir;
use lungfish::dlq::{DeadLetter, DeadLetters, EntryState, Filter, Record};
use lungfish::dlq_replay::{self, Outcome};
use lungfish_log::FsyncPolicy;

use crate::log::time;
use crate::run::count;

/// The environment variable that stops `dlq replay` (exit code 137) after a round's
/// appends are durable and before the round is marked done. For tests.
const CRASH_AFTER_APPEND: &str = "LUNGFISH_TEST_CRASH_AFTER_REPLAY_APPEND";

/// At most this many entries are printed by purge and replay.
const PRINT_MAX: usize = 100;

/// Dead-letter queue commands. Each takes the pipeline file and works on its
/// `DATA_DIR/dlq` while the pipeline is stopped (it locks the data directory).
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// List entries: pending ones, or all with --all.
    ///
    /// One line per entry, tab-separated: offset, stage, kind, location, reason, the
    /// state (only with --all: pending, replayed (replay ID), purged, replay ID
    /// interrupted) and the payload's first 200 characters; tabs and line breaks inside
    /// a field are written `\t`, `\n`. Runs while the pipeline is stopped: it locks the
    /// pipeline's data directory.
    List {
        /// The pipeline file (TOML).
        file: PathBuf,
        #[command(flatten)]
        filter: FilterArgs,
        /// Also entries already replayed or purged, with their state.
        #[arg(long)]
        all: bool,
        /// At most this many entries.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Show one entry in full.
    ///
    /// Stage, kind, reason, location, the log partition and offset the event came from
    /// (for events that reached the log), attempts, first and last failure (UTC), state,
    /// and the payload: as text if it is UTF-8, else in hex. Runs while the pipeline is
    /// stopped: it locks the pipeline's data directory.
    Show {
        /// The pipeline file (TOML).
        file: PathBuf,
        /// The entry's offset (the first column of `list`).
        offset: u64,
    },
    /// Mark matching pending entries purged (with --yes; without, print what would be).
    ///
    /// Needs at least one filter. Purged entries stay in the queue, marked by a control
    /// record: `list` no longer shows them, `list --all` does. Runs while the pipeline is
    /// stopped: it locks the pipeline's data directory.
    Purge {
        /// The pipeline file (TOML).
        file: PathBuf,
        #[command(flatten)]
        filter: FilterArgs,
        /// Purge; without it nothing changes.
        #[arg(long)]
        yes: bool,
    },
    /// Send matching pending entries back into the pipeline's log, exactly once.
    ///
    /// Each payload is parsed with the pipeline file as it is now (so a fixed field name
    /// or type applies), like any input, and appended to the pipeline's log; the next
    /// `lungfish run FILE` processes it. Payloads refused again become new entries of
    /// stage `replay` (the old entries count as replayed). If a replay was interrupted,
    /// this first finishes it; nothing is appended twice.
    ///
    /// Replayed events are processed like new events: in a windowed pipeline, an event
    /// whose window has already closed is late and goes to the dead-letter queue again
    /// (allowing more lateness is separate work). So replay suits events whose windows
    /// are still open (for instance an HTTP-source pipeline that was stopped: its windows
    /// stay open) and pipelines whose windows have not closed. Entries of sink stages
    /// hold window rows, not events, and are never replayed.
    ///
    /// Runs while the pipeline is stopped: it locks the pipeline's data directory.
    Replay {
        /// The pipeline file (TOML).
        file: PathBuf,
        #[command(flatten)]
        filter: FilterArgs,
        /// Parse and report what would happen; write nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// Which entries a command is about; every option given must hold.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct FilterArgs {
    /// Only entries of this stage (e.g. `source:gen`, `window`, `replay`).
    #[arg(long)]
    stage: Option<String>,
    /// Only entries of this kind (e.g. `invalid_json`, `late`).
    #[arg(long)]
    kind: Option<String>,
    /// Only entries whose reason contains TEXT (case-sensitive).
    #[arg(long, value_name = "TEXT")]
    reason_contains: Option<String>,
    /// Only the entry at offset N (repeatable).
    #[arg(long = "offset", value_name = "N")]
    offsets: Vec<u64>,
}

impl FilterArgs {
    /// The filter, or what is wrong with the options.
    fn filter(self) -> Result<Filter, String> {
        for (name, value) in [
            ("--stage", &self.stage),
            ("--kind", &self.kind),
            ("--reason-contains", &self.reason_contains),
        ] {
            if value.as_deref().is_some_and(str::is_empty) {
                return Err(format!("{name} needs a value that is not empty"));
            }
        }
        Ok(Filter {
            stage: self.stage,
            kind: self.kind,
            reason_contains: self.reason_contains,
            offsets: self.offsets.into_iter().collect(),
        })
    }
}

/// `1 entry`, `2 entries`.
fn entries(n: u64) -> String {
    format!("{} entr{}", count(n), if n == 1 { "y" } else { "ies" })
}

/// A usage error: printed, exit code 2.
fn usage(message: impl std::fmt::Display) -> anyhow::Result<ExitCode> {
    eprintln!("error: {message}");
    Ok(ExitCode::from(2))
}

/// Runs a dead-letter queue command.
pub fn dlq(cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::List {
            file,
            filter,
            all,
            limit,
        } => list(&file, filter, all, limit),
        Command::Show { file, offset } => show(&file, offset),
        Command::Purge { file, filter, yes } => purge(&file, filter, yes),
        Command::Replay {
            file,
            filter,
            dry_run,
        } => replay(&file, filter, dry_run),
    }
}

/// The queue of a pipeline, opened with its data directory locked.
struct Opened {
    config: PipelineConfig,
    data_dir: DataDir,
    dlq: DeadLetters,
}

/// Loads the pipeline file and opens its queue: `Ok(None)` with the exit code to use
/// if the file is invalid (2), or if there is no queue (the caller says what that
/// means).
enum Open {
    Opened(Box<Opened>),
    NoQueue(PathBuf),
    Invalid,
}

fn open(file: &Path, command: &str, fsync: FsyncPolicy) -> anyhow::Result<Open> {
    let config = match PipelineConfig::load(file) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            return Ok(Open::Invalid);
        }
    };
    let dir = config.data_dir.join("dlq");
    if !dir.exists() {
        return Ok(Open::NoQueue(dir));
    }
    // Opening a log recovers it (which may write): never while a pipeline uses it.
    let data_dir = DataDir::lock(&config.data_dir).with_context(|| {
        format!(
            "lungfish dlq {command} works only while the pipeline is stopped (stop `lungfish run {}` first)",
            file.display()
        )
    })?;
    let dlq = DeadLetters::open(data_dir.dead_letters(), fsync)?;
    Ok(Open::Opened(Box::new(Opened {
        config,
        data_dir,
        dlq,
    })))
}

/// [`open`] for a command taking filters: `Err` with the exit code when there is nothing
/// to do (no queue: 0, or 2 if offsets were asked for) or the file or an offset is wrong
/// (2), the message printed.
fn open_filtered(
    file: &Path,
    command: &str,
    fsync: FsyncPolicy,
    filter: &Filter,
) -> anyhow::Result<Result<Box<Opened>, ExitCode>> {
    let o = match open(file, command, fsync)? {
        Open::Opened(o) => o,
        Open::Invalid => return Ok(Err(ExitCode::from(2))),
        Open::NoQueue(dir) if filter.offsets.is_empty() => {
            println!("no dead letters: {} does not exist", dir.display());
            return Ok(Err(ExitCode::SUCCESS));
        }
        Open::NoQueue(dir) => {
            return usage(format!(
                "no entry at the offsets given: there are no dead letters ({} does not exist)",
                dir.display()
            ))
            .map(Err);
        }
    };
    if !offsets_known(&o.dlq, filter)? {
        return Ok(Err(ExitCode::from(2)));
    }
    Ok(Ok(o))
}

/// Checks that every offset of the filter is an entry; prints an error if not.
fn offsets_known(dlq: &DeadLetters, filter: &Filter) -> anyhow::Result<bool> {
    let missing = dlq.missing_entries(&filter.offsets)?;
    if missing.is_empty() {
        return Ok(true);
    }
    let list: Vec<String> = missing.iter().map(u64::to_string).collect();
    eprintln!(
        "error: no entry at offset{} {} (the queue has offsets 0 to {}; `lungfish dlq list --all` shows the entries)",
        if missing.len() == 1 { "" } else { "s" },
        list.join(", "),
        dlq.len().saturating_sub(1)
    );
    Ok(false)
}

/// Text on one line: tabs and line breaks escaped.
fn one_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out
}

/// An entry as a `list` line; with `state`, the state before the payload.
fn list_line(offset: u64, e: &DeadLetter, state: Option<EntryState>) -> String {
    let payload = String::from_utf8_lossy(&e.payload);
    let payload: String = payload.chars().take(200).collect();
    let mut line = format!(
        "{offset}\t{}\t{}\t{}\t{}\t",
        e.stage,
        e.kind,
        one_line(&e.location),
        one_line(&e.reason)
    );
    if let Some(state) = state {
        let _ = write!(line, "{state}\t");
    }
    line.push_str(&one_line(&payload));
    line
}

fn list(file: &Path, filter: FilterArgs, all: bool, limit: usize) -> anyhow::Result<ExitCode> {
    let filter = match filter.filter() {
        Ok(f) => f,
        Err(e) => return usage(e),
    };
    let o = match open_filtered(file, "list", FsyncPolicy::Never, &filter)? {
        Ok(o) => o,
        Err(code) => return Ok(code),
    };
    let (mut shown, mut matched, mut hidden) = (0usize, 0u64, 0u64);
    o.dlq.for_each_with_state(0, |offset, entry, state| {
        let Some(e) = entry else {
            println!("{offset}\t(undecodable entry)");
            return;
        };
        if !filter.matches(offset, &e) {
            return;
        }
        if !all && !state.is_pending() {
            hidden += 1;
            return;
        }
        matched += 1;
        if shown < limit {
            shown += 1;
            println!("{}", list_line(offset, &e, all.then_some(state)));
        }
    })?;
    let mut summary = format!(
        "{matched} matching {} ({shown} shown)",
        if all { "entries" } else { "pending entries" }
    );
    if hidden > 0 {
        let _ = write!(
            summary,
            "; {hidden} replayed or purged not shown (--all shows them)"
        );
    }
    eprintln!("{summary}");
    Ok(ExitCode::SUCCESS)
}

fn show(file: &Path, offset: u64) -> anyhow::Result<ExitCode> {
    let o = match open(file, "show", FsyncPolicy::Never)? {
        Open::Opened(o) => o,
        Open::Invalid => return Ok(ExitCode::from(2)),
        Open::NoQueue(dir) => {
            return usage(format!(
                "no entry at offset {offset}: there are no dead letters ({} does not exist)",
                dir.display()
            ));
        }
    };
    let e = match o.dlq.record(offset)? {
        Some(Record::Entry(e)) => e,
        Some(Record::Control(c)) => {
            return usage(format!(
                "offset {offset} is not an entry but a control record (bookkeeping of purge and replay): {}",
                serde_json::to_string(&c)?
            ));
        }
        Some(Record::Undecodable) => {
            return usage(format!(
                "offset {offset} holds a record that cannot be decoded"
            ));
        }
        None => {
            return usage(format!(
                "no entry at offset {offset}: the queue has offsets 0 to {}",
                o.dlq.len().saturating_sub(1)
            ));
        }
    };
    let state = o.dlq.resolutions()?.state(offset);
    let row = |name: &str, value: &dyn std::fmt::Display| println!("{name:<15} {value}");
    row("offset", &offset);
    row("state", &state);
    row("stage", &e.stage);
    row("kind", &e.kind);
    row("reason", &e.reason);
    row("location", &e.location);
    match e.source {
        Some(s) => row(
            "source",
            &format!("log partition {} offset {}", s.partition, s.offset),
        ),
        None => row("source", &"- (never reached the event log)"),
    }
    row("attempts", &e.attempts);
    row("first failure", &time(e.first_failure_ms));
    row("last failure", &time(e.last_failure_ms));
    row("payload length", &format!("{} bytes", e.payload.len()));
    match std::str::from_utf8(&e.payload) {
        Ok(text) => row("payload", &text),
        Err(_) => {
            let mut hex = String::with_capacity(e.payload.len() * 2);
            for b in &e.payload {
                let _ = write!(hex, "{b:02x}");
            }
            row("payload (hex)", &hex);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn purge(file: &Path, filter: FilterArgs, yes: bool) -> anyhow::Result<ExitCode> {
    let filter = match filter.filter() {
        Ok(f) => f,
        Err(e) => return usage(e),
    };
    if filter.is_empty() {
        return usage(
            "purge needs at least one filter (--stage, --kind, --reason-contains, --offset)",
        );
    }
    let o = match open_filtered(file, "purge", FsyncPolicy::Always, &filter)? {
        Ok(o) => o,
        Err(code) => return Ok(code),
    };
    let mut chosen = Vec::new();
    let mut skipped = Vec::new();
    let mut replaying = 0u64;
    o.dlq.for_each_with_state(0, |offset, entry, state| {
        let Some(e) = entry else { return };
        if !filter.matches(offset, &e) {
            return;
        }
        if matches!(state, EntryState::Replaying { .. }) {
            replaying += 1;
        } else if !state.is_pending() && filter.offsets.contains(&offset) {
            skipped.push((offset, state));
        }
        if !state.is_pending() {
            return;
        }
        if chosen.len() < PRINT_MAX {
            println!("{}", list_line(offset, &e, None));
        }
        chosen.push(offset);
    })?;
    if chosen.len() > PRINT_MAX {
        println!("... and {} more", count((chosen.len() - PRINT_MAX) as u64));
    }
    for (offset, state) in &skipped {
        eprintln!("skipped offset {offset}: already {state}");
    }
    if replaying > 0 {
        eprintln!(
            "skipped {} of an interrupted replay: `lungfish dlq replay {}` finishes it",
            entries(replaying),
            file.display()
        );
    }
    let n = entries(chosen.len() as u64);
    if chosen.is_empty() {
        println!("no pending entry matches: nothing to purge");
    } else if !yes {
        println!("{n} would be purged; nothing changed. Add --yes to purge them.");
    } else {
        if let Some(t) = o.dlq.purge(chosen.iter().copied())? {
            o.dlq.sync()?;
            t.wait(std::time::Duration::from_secs(60))?;
        }
        println!(
            "purged {n} (kept in the queue as purged: `lungfish dlq list --all {}` shows them)",
            file.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn replay(file: &Path, filter: FilterArgs, dry_run: bool) -> anyhow::Result<ExitCode> {
    let filter = match filter.filter() {
        Ok(f) => f,
        Err(e) => return usage(e),
    };
    let o = match open_filtered(file, "replay", FsyncPolicy::Always, &filter)? {
        Ok(o) => o,
        Err(code) => return Ok(code),
    };
    if o.config
        .sources
        .iter()
        .any(|s| matches!(s.config, lungfish::config::SourceConfig::Kafka(_)))
    {
        eprintln!(
            "lungfish: {}: this pipeline reads a Kafka topic and has no log to replay into; \
             replaying dead letters into a topic is not supported yet (`lungfish dlq show` \
             gives the payloads, to produce back to the topic)",
            file.display()
        );
        return Ok(ExitCode::from(2));
    }
    let crash = std::env::var_os(CRASH_AFTER_APPEND).is_some_and(|v| v == "1");
    let mut after_append = |replay_id: u64| {
        if crash {
            eprintln!(
                "lungfish: {CRASH_AFTER_APPEND}=1: exiting after the appends of replay {replay_id}, before it is marked done"
            );
            std::process::exit(137);
        }
    };
    let report = lungfish::dlq_replay::replay(
        &o.config,
        &o.data_dir,
        &o.dlq,
        &filter,
        dry_run,
        &mut after_append,
    )?;
    let would = if dry_run { "would be " } else { "" };
    let mut printed = 0usize;
    for round in &report.rounds {
        if round.resumed && dry_run {
            println!(
                "would first finish the interrupted replay {}: {} (what it appended already is skipped)",
                round.replay_id,
                entries(round.entries.len() as u64),
            );
        } else if round.resumed {
            println!(
                "finished the interrupted replay {}: {} ({} already in the log or the queue)",
                round.replay_id,
                entries(round.entries.len() as u64),
                count(round.already_done())
            );
        }
        for (offset, outcome) in &round.entries {
            let line = match outcome {
                Outcome::RejectedAgain { kind, reason } => {
                    format!(
                        "{offset}\t{would}rejected again\t{kind}\t{}",
                        one_line(reason)
                    )
                }
                Outcome::Replayed { partition } if dry_run => {
                    format!("{offset}\twould be replayed\tpartition {partition}")
                }
                _ => continue,
            };
            if printed < PRINT_MAX {
                println!("{line}");
            }
            printed += 1;
        }
    }
    if printed > PRINT_MAX {
        println!("... and {} more", count((printed - PRINT_MAX) as u64));
    }
    for (offset, state) in &report.not_pending {
        eprintln!("skipped offset {offset}: already {state}");
    }
    if !report.not_replayable.is_empty() {
        eprintln!(
            "skipped {} of sink stages: they hold window rows refused by a store, not events, and cannot be replayed (purge them once the store is fixed)",
            entries(report.not_replayable.len() as u64)
        );
    }
    let (replayed, rejected) = (report.replayed(), report.rejected_again());
    if dry_run {
        println!(
            "dry run: {} would be replayed, {} would be rejected again; nothing changed",
            entries(replayed),
            count(rejected)
        );
        return Ok(ExitCode::SUCCESS);
    }
    if report.rounds.is_empty() {
        println!("no pending entry matches: nothing to replay");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "replayed {} into the log; rejected again {} (new pending entries of stage `{}`: lungfish dlq list {} --stage {})",
        entries(replayed),
        count(rejected),
        dlq_replay::STAGE,
        file.display(),
        dlq_replay::STAGE
    );
    if replayed + report.already_done() > 0 {
        println!(
            "next: start the pipeline to process them: lungfish run {}",
            file.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}
