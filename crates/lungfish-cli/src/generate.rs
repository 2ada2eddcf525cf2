//! `lungfish generate`: seeded JSON-lines events, the same the `generator` source makes.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use lungfish::codec::json::FieldNames;
use lungfish::config::{GeneratorConfig, KeyDistribution};
use lungfish::sources::generator::EventWriter;

/// Arguments of `lungfish generate`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Number of events.
    #[arg(long, default_value_t = 1_000_000)]
    pub count: u64,
    /// Key cardinality.
    #[arg(long, default_value_t = 100_000)]
    pub keys: u64,
    /// Draw keys uniformly instead of by Zipf's law.
    #[arg(long)]
    pub uniform: bool,
    /// Zipf exponent.
    #[arg(long, default_value_t = 1.0)]
    pub zipf_exponent: f64,
    /// Give key `u-0` this share of the events (0 to 1) and draw the rest uniformly.
    #[arg(long, conflicts_with = "uniform")]
    pub hot_share: Option<f64>,
    /// Largest event-time disorder, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    pub disorder_ms: u64,
    /// Share of malformed lines, 0 to 1.
    #[arg(long, default_value_t = 0.0)]
    pub malformed: f64,
    /// Events per second of event time.
    #[arg(long, default_value_t = 100_000)]
    pub events_per_second: u64,
    /// Random seed.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Name used in event ids (`NAME-i`).
    #[arg(long, default_value = "gen")]
    pub name: String,
    /// Output file (default: standard output).
    #[arg(long, short)]
    pub output: Option<PathBuf>,
}

impl Args {
    /// The generator configuration these arguments describe.
    pub fn config(&self) -> GeneratorConfig {
        GeneratorConfig {
            count: Some(self.count),
            keys: self.keys,
            distribution: if self.hot_share.is_some() {
                KeyDistribution::Hot
            } else if self.uniform {
                KeyDistribution::Uniform
            } else {
                KeyDistribution::Zipf
            },
            hot_share: self.hot_share.unwrap_or(0.5),
            zipf_exponent: self.zipf_exponent,
            disorder: Duration::from_millis(self.disorder_ms),
            malformed: self.malformed,
            seed: self.seed,
            events_per_second: self.events_per_second,
            ..GeneratorConfig::default()
        }
    }
}

/// Writes the events to `out`.
pub fn write_events(args: &Args, out: &mut dyn Write) -> std::io::Result<()> {
    let writer = EventWriter::new(&args.name, args.config(), &FieldNames::default());
    let mut buf = Vec::with_capacity(1 << 20);
    for i in 0..args.count {
        writer.write(i, &mut buf);
        if buf.len() >= 1 << 20 {
            out.write_all(&buf)?;
            buf.clear();
        }
    }
    out.write_all(&buf)?;
    out.flush()
}

/// Runs `lungfish generate`.
pub fn generate(args: Args) -> anyhow::Result<ExitCode> {
    match &args.output {
        Some(path) => {
            let mut out = BufWriter::new(File::create(path)?);
            write_events(&args, &mut out)?;
        }
        None => {
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            if let Err(e) = write_events(&args, &mut out)
                && e.kind() != std::io::ErrorKind::BrokenPipe
            {
                return Err(e.into());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
