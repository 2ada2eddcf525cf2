//! `lungfish run`: run a pipeline with a progress bar, metrics and a final summary.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use lungfish::config::SourceConfig;
use lungfish::{Control, Pipeline, PipelineConfig, Summary};

use crate::admin;

/// Arguments of `lungfish run`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The pipeline file (TOML).
    pub file: PathBuf,
    /// No progress bar, even on a terminal.
    #[arg(long)]
    pub quiet: bool,
}

/// Formats a count with thousands separators.
pub fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Runs the pipeline in `args.file`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = match PipelineConfig::load(&args.file) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            return Ok(ExitCode::from(2));
        }
    };
    let handle = admin::install_recorder()?;
    let control = Arc::new(Control::new());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("lungfish-admin")
        .enable_all()
        .build()?;
    runtime.spawn(admin::upkeep(handle.clone()));
    if let Some(metrics) = &config.metrics {
        let listener = runtime.block_on(admin::bind(metrics.address))?;
        runtime.spawn(async move {
            if let Err(e) = admin::serve(listener, handle).await {
                tracing::error!(error = %e, "metrics endpoint stopped");
            }
        });
    }
    {
        let control = control.clone();
        runtime.spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
                return;
            };
            loop {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
                if control.is_stopping() {
                    control.abort("interrupted twice: stopping without draining");
                } else {
                    eprintln!("lungfish: stopping: finishing the current batches and committing (Ctrl-C again to abort)");
                    control.stop();
                }
            }
        });
    }
    let expected = expected_events(&config);
    let progress = (!args.quiet && std::io::stderr().is_terminal())
        .then(|| spawn_progress(control.clone(), expected));
    let pipeline = Pipeline::new(config)?;
    let result = pipeline.run(control.clone());
    if let Some((bar, stop)) = progress {
        stop.store(true, Ordering::SeqCst);
        bar.finish_and_clear();
    }
    runtime.shutdown_timeout(Duration::from_millis(100));
    match result {
        Ok(summary) => {
            print_summary(&summary, &args.file);
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: {e}");
            eprintln!("Committed progress is kept: run the same command again to resume.");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Events the sources will produce, if every source is a generator with a count.
fn expected_events(config: &PipelineConfig) -> Option<u64> {
    config
        .sources
        .iter()
        .map(|s| match &s.config {
            SourceConfig::Generator(g) => g.count,
            _ => None,
        })
        .sum()
}

fn spawn_progress(
    control: Arc<Control>,
    expected: Option<u64>,
) -> (ProgressBar, Arc<std::sync::atomic::AtomicBool>) {
    let bar = match expected {
        Some(n) => ProgressBar::new(n).with_style(
            ProgressStyle::with_template(
                "{spinner} {elapsed_precise} [{bar:30}] {percent:>3}% in | {msg}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
                .expect("valid template"),
        ),
    };
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (b, s) = (bar.clone(), stop.clone());
    std::thread::spawn(move || {
        let started = std::time::Instant::now();
        while !s.load(Ordering::SeqCst) {
            let st = &control.stats;
            let events_in = st.events_in.load(Ordering::Relaxed);
            let processed = st.processed.load(Ordering::Relaxed);
            let rate = processed as f64 / started.elapsed().as_secs_f64().max(0.001);
            b.set_position(events_in);
            b.set_message(format!(
                "{} in, {} processed, {} windows, {} late, {} rejected, {}/s",
                count(events_in),
                count(processed),
                count(st.windows.load(Ordering::Relaxed)),
                count(st.late.load(Ordering::Relaxed)),
                count(st.rejected.load(Ordering::Relaxed)),
                count(rate as u64),
            ));
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    (bar, stop)
}

/// This process's peak resident memory in bytes (`VmHWM`), if the system tells.
pub fn peak_memory() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Prints the end-of-run summary: totals over all runs (from durable state) and this
/// run's share.
pub fn print_summary(s: &Summary, file: &Path) {
    let secs = s.elapsed.as_secs_f64();
    let state = if s.complete { "complete" } else { "stopped" };
    println!("lungfish: pipeline {:?} {state} after {secs:.2} s", s.name);
    if s.complete && s.events_in == 0 && s.processed == 0 {
        println!("  all input was already in and processed: nothing to do");
    }
    let stored = s.sinks.iter().find_map(|k| k.stored_rows);
    let rejected = s.dead_letters_of("source:");
    let late = s
        .dead_letters
        .iter()
        .filter(|((_, kind), _)| kind == "late")
        .map(|(_, n)| n)
        .sum::<u64>();
    println!("  {:<14} {:>14} {:>14}", "", "total", "this run");
    // A Kafka pipeline has no log of its own: its total is the topic's business.
    let total_in = if s.kafka.is_some() {
        "-".to_owned()
    } else {
        count(s.log_events)
    };
    println!(
        "  {:<14} {:>14} {:>14}",
        "events in",
        total_in,
        count(s.events_in)
    );
    println!(
        "  {:<14} {:>14} {:>14}",
        "rejected",
        count(rejected),
        count(s.rejected)
    );
    println!("  {:<14} {:>14} {:>14}", "late", count(late), count(s.late));
    println!(
        "  {:<14} {:>14} {:>14}",
        "windows out",
        stored.map_or("-".to_owned(), count),
        count(s.windows)
    );
    let hot: Vec<String> = s
        .hot_keys
        .iter()
        .flat_map(|(p, top)| {
            top.iter()
                .filter(|(_, share)| *share >= lungfish::hot_keys::HOT_SHARE)
                .take(3)
                .map(move |(k, share)| format!("{k} {:.1}% of p{p}", share * 100.0))
        })
        .collect();
    if !hot.is_empty() {
        println!("  {:<14} {}", "hot keys", hot.join(", "));
    }
    if s.duplicates > 0 {
        println!(
            "  {:<14} {:>14} {:>14}",
            "duplicates",
            "-",
            count(s.duplicates)
        );
    }
    if s.corrections > 0 {
        println!(
            "  {:<14} {:>14} {:>14}",
            "corrections",
            "-",
            count(s.corrections)
        );
    }
    if secs > 0.0 && s.processed > 0 {
        println!(
            "  {:<14} {:>14}",
            "events/s",
            count((s.processed as f64 / secs) as u64)
        );
    }
    if let Some(k) = &s.kafka {
        let secs = k.reading.as_secs_f64();
        if secs > 0.0 {
            println!(
                "  kafka: {} messages read in {secs:.2} s ({} messages/s, first to last)",
                count(k.messages),
                count((k.messages as f64 / secs) as u64)
            );
        }
        println!(
            "  kafka: {} partitions held at the end, {} assigned / {} revoked, paused {} times, longest poll gap {} ms",
            k.partitions_held,
            k.assignments,
            k.revocations,
            k.pauses,
            k.max_poll_gap.as_millis()
        );
        if k.commit_failures > 0 {
            println!(
                "  kafka: {} offset commits refused by the group (retried; see the log)",
                k.commit_failures
            );
        }
    }
    if let Some(peak) = peak_memory() {
        println!("  {:<14} {:>10} MiB", "peak memory", peak / (1024 * 1024));
    }
    let m = &s.memory;
    let mib = |b: u64| format!("{:.1}", b as f64 / (1024.0 * 1024.0));
    println!("  {:<14} {:>10} MiB", "memory limit", m.plan.limit >> 20);
    println!(
        "    queues: to shards {} of {} MiB, to sinks {} of {} MiB (peak of budget)",
        mib(m.shard_queues_peak),
        mib(m.plan.shard_queues),
        mib(m.sink_queues_peak),
        mib(m.plan.sink_queues),
    );
    println!(
        "    window state: {} MiB at most (its share: {} MiB)",
        mib(m.state_peak),
        mib(m.plan.state),
    );
    for k in &s.sinks {
        match k.stored_rows {
            Some(n) => println!(
                "  results ({}): {} ({} rows)",
                k.name,
                k.description,
                count(n)
            ),
            None => println!("  results ({}): {}", k.name, k.description),
        }
        if let Some(hint) = &k.query_hint {
            println!("    query: {hint}");
        }
    }
    if rejected + late + s.dead_letters_of("consumer") > 0 {
        println!(
            "  dead letters: {} (see: lungfish dlq list {})",
            s.data_dir.join("dlq").display(),
            file.display()
        );
    }
}
