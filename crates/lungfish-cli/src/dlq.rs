//! `lungfish dlq`: look at a pipeline's dead-letter queue.

use std::path::PathBuf;
use std::process::ExitCode;

use lungfish::PipelineConfig;
use lungfish::dlq::DeadLetters;
use lungfish_log::FsyncPolicy;

/// Dead-letter queue commands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// List entries: offset, stage, kind, location, reason and payload.
    List {
        /// The pipeline file (TOML).
        file: PathBuf,
        /// Only entries of this stage (e.g. `source:gen`, `window`).
        #[arg(long)]
        stage: Option<String>,
        /// Only entries of this kind (e.g. `invalid_json`, `late`).
        #[arg(long)]
        kind: Option<String>,
        /// At most this many entries.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
}

/// Runs a dead-letter queue command.
pub fn dlq(cmd: Command) -> anyhow::Result<ExitCode> {
    let Command::List {
        file,
        stage,
        kind,
        limit,
    } = cmd;
    let config = match PipelineConfig::load(&file) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            return Ok(ExitCode::from(2));
        }
    };
    let dir = config.data_dir.join("dlq");
    if !dir.exists() {
        println!("no dead letters: {} does not exist", dir.display());
        return Ok(ExitCode::SUCCESS);
    }
    // Opening a log recovers it (which may write): never while a pipeline uses it.
    let data_dir = lungfish::data_dir::DataDir::lock(&config.data_dir)?;
    let dlq = DeadLetters::open(data_dir.dead_letters(), FsyncPolicy::Never)?;
    let mut shown = 0usize;
    let mut matched = 0u64;
    dlq.for_each(0, |offset, entry| {
        let Some(e) = entry else {
            println!("{offset}\t(undecodable entry)");
            return;
        };
        if stage.as_deref().is_some_and(|s| s != e.stage)
            || kind.as_deref().is_some_and(|k| k != e.kind)
        {
            return;
        }
        matched += 1;
        if shown < limit {
            shown += 1;
            let payload = String::from_utf8_lossy(&e.payload);
            let payload: String = payload.chars().take(200).collect();
            println!(
                "{offset}\t{}\t{}\t{}\t{}\t{payload}",
                e.stage, e.kind, e.location, e.reason
            );
        }
    })?;
    eprintln!(
        "{matched} matching entr{} ({shown} shown)",
        if matched == 1 { "y" } else { "ies" }
    );
    Ok(ExitCode::SUCCESS)
}
