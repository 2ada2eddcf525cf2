//! `lungfish log`: look at, repair and rewind a pipeline's log.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use lungfish::PipelineConfig;
use lungfish::data_dir::DataDir;
use lungfish_log::{FsyncPolicy, Log, LogConfig, OffsetCommit};

use crate::run::count;

/// Log commands. TARGET is a pipeline file, a data directory, or a log directory.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Show partitions, segments, offsets, bytes, and each consumer's position and lag.
    Inspect {
        /// Pipeline file, data directory or log directory.
        target: PathBuf,
        /// List every segment too.
        #[arg(long)]
        segments: bool,
    },
    /// Verify every batch; move each damaged tail aside (kept in LOG/damaged) and report
    /// what was lost, so the log opens again. Stop the pipeline first.
    Repair {
        /// Pipeline file, data directory or log directory.
        target: PathBuf,
    },
    /// Move a consumer's committed offsets, to replay or to skip. Stop the pipeline
    /// first. A window consumer then rebuilds its windows from the new position: from
    /// the earliest offset the result is exact; from a later point, windows that span
    /// it are rebuilt from their events after it only.
    ResetOffsets {
        /// Pipeline file, data directory or log directory.
        target: PathBuf,
        /// The consumer (a pipeline's consumer is named after the pipeline).
        #[arg(long)]
        consumer: String,
        /// Only this partition (default: all).
        #[arg(long)]
        partition: Option<u32>,
        /// Where to: `earliest`, `latest`, an offset, or `time:T` with T epoch
        /// milliseconds or RFC 3339 (`time:2026-01-01T00:00:00Z`).
        #[arg(long)]
        to: String,
    },
}

/// A log opened for an admin command, with the data directory's lock held when there
/// is one.
struct Opened {
    log: Log,
    _lock: Option<DataDir>,
}

/// Finds the log of `target` and opens it (which recovers it).
fn resolve(target: &Path) -> anyhow::Result<(PathBuf, Option<DataDir>)> {
    if target.extension().is_some_and(|e| e == "toml") {
        let config = PipelineConfig::load(target).map_err(|e| anyhow::anyhow!("{e}"))?;
        let lock = DataDir::lock(&config.data_dir)?;
        return Ok((lock.log(), Some(lock)));
    }
    if target.join("log").join("meta").exists() {
        let lock = DataDir::lock(target)?;
        return Ok((lock.log(), Some(lock)));
    }
    if target.join("meta").exists() {
        // A log directory: lock its data directory if it is in one.
        let lock = match target.parent() {
            Some(parent) if parent.join("lock").exists() => Some(DataDir::lock(parent)?),
            _ => None,
        };
        return Ok((target.to_path_buf(), lock));
    }
    anyhow::bail!(
        "{}: neither a pipeline file nor a directory holding a lungfish log",
        target.display()
    )
}

fn open(target: &Path) -> anyhow::Result<Opened> {
    let (dir, lock) = resolve(target)?;
    let partitions = Log::partitions_in(&dir)?;
    let log = Log::open(
        &dir,
        LogConfig {
            partitions,
            fsync: FsyncPolicy::Always,
            // Accept every batch a pipeline may have written.
            max_batch_bytes: 1 << 30,
            segment_bytes: 1 << 30,
            ..LogConfig::default()
        },
    )?;
    Ok(Opened { log, _lock: lock })
}

pub(crate) fn time(ms: i64) -> String {
    let (days, rem) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3_600_000,
        rem / 60_000 % 60,
        rem / 1000 % 60,
        rem % 1000
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// (year, month, day) to days since 1970-01-01.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from(if m > 2 { m - 3 } else { m + 9 });
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Epoch milliseconds, or `YYYY-MM-DDTHH:MM:SS[.fff](Z|±HH:MM)`.
pub fn parse_time(text: &str) -> anyhow::Result<i64> {
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    let bad = || {
        anyhow::anyhow!(
            "`{text}` is not a time: use epoch milliseconds or RFC 3339 (2026-01-01T00:00:00Z)"
        )
    };
    let b = text.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| {
        text.get(r)
            .and_then(|s| s.parse::<i64>().ok())
            .ok_or_else(bad)
    };
    let (y, mo, d, h, mi, s) = (
        num(0..4)?,
        num(5..7)?,
        num(8..10)?,
        num(11..13)?,
        num(14..16)?,
        num(17..19)?,
    );
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return Err(bad());
    }
    let mut at = 19;
    let mut millis = 0i64;
    if b.get(at) == Some(&b'.') {
        let start = at + 1;
        at = start;
        while b.get(at).is_some_and(u8::is_ascii_digit) {
            at += 1;
        }
        let frac = &text[start..at];
        millis = format!("{frac:0<3}")[..3].parse().map_err(|_| bad())?;
    }
    let offset_min = match &text[at..] {
        "Z" | "z" => 0,
        tz if tz.len() == 6 && (tz.starts_with('+') || tz.starts_with('-')) => {
            let sign = if tz.starts_with('-') { -1 } else { 1 };
            let hh: i64 = tz[1..3].parse().map_err(|_| bad())?;
            let mm: i64 = tz[4..6].parse().map_err(|_| bad())?;
            sign * (hh * 60 + mm)
        }
        _ => return Err(bad()),
    };
    let days = days_from_civil(y, mo as u32, d as u32);
    Ok(((days * 24 + h) * 60 + mi - offset_min) * 60_000 + s * 1000 + millis)
}

/// Runs a log command.
pub fn log(cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Inspect { target, segments } => inspect(&target, segments),
        Command::Repair { target } => repair(&target),
        Command::ResetOffsets {
            target,
            consumer,
            partition,
            to,
        } => reset(&target, &consumer, partition, &to),
    }
}

fn inspect(target: &Path, show_segments: bool) -> anyhow::Result<ExitCode> {
    let Opened { log, .. } = open(target)?;
    println!(
        "log {} ({} partitions)",
        log.dir().display(),
        log.partitions()
    );
    println!(
        "  {:<9} {:>8} {:>14} {:>14} {:>12}  oldest record",
        "partition", "segments", "first offset", "end offset", "bytes"
    );
    for p in 0..log.partitions() {
        let s = log.stats(p)?;
        let segs = log.segments(p)?;
        let oldest = segs
            .first()
            .and_then(|s| s.first_append_ms)
            .map_or("-".to_owned(), time);
        println!(
            "  {:<9} {:>8} {:>14} {:>14} {:>12}  {oldest}",
            p,
            s.segments,
            count(s.start_offset),
            count(s.end_offset),
            count(s.bytes)
        );
        if show_segments {
            for seg in segs {
                println!(
                    "      segment {:>14} {:>12} bytes  {}{}",
                    count(seg.base_offset),
                    count(seg.bytes),
                    seg.first_append_ms.map_or("-".to_owned(), time),
                    if seg.active { "  (active)" } else { "" }
                );
            }
        }
    }
    let consumers = log.consumers()?;
    if consumers.is_empty() {
        println!("consumers: none has committed offsets");
    }
    for name in consumers {
        let committed = log.committed(&name)?;
        let mut total_lag = 0u64;
        let parts: Vec<String> = committed
            .iter()
            .enumerate()
            .map(|(p, c)| {
                let end = log.end_offset(p as u32);
                let at = c.as_ref().map_or(0, |c| c.offset);
                total_lag += end.saturating_sub(at);
                format!("p{p} {} (lag {})", count(at), count(end.saturating_sub(at)))
            })
            .collect();
        println!("consumer {name}: lag {} records", count(total_lag));
        println!("  {}", parts.join(", "));
    }
    Ok(ExitCode::SUCCESS)
}

fn repair(target: &Path) -> anyhow::Result<ExitCode> {
    let (dir, _lock) = resolve(target)?;
    let report = lungfish_log::repair(&dir)?;
    println!(
        "checked {} segments, {} batches intact",
        report.segments_checked,
        count(report.batches_ok)
    );
    if report.damaged.is_empty() {
        println!("no damage found");
    }
    for d in &report.damaged {
        let lost = match d.end_lost_offset {
            Some(end) => format!(
                "offsets {} to {} ({} records)",
                d.first_lost_offset,
                end - 1,
                end - d.first_lost_offset
            ),
            None => format!(
                "offsets from {} on (the end of the partition)",
                d.first_lost_offset
            ),
        };
        println!(
            "partition {}: {} at byte {}: {}\n  moved {} bytes aside to {}\n  lost: {lost}",
            d.partition,
            d.segment.display(),
            d.position,
            d.reason,
            count(d.bytes_moved),
            d.moved_to.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn reset(
    target: &Path,
    consumer: &str,
    partition: Option<u32>,
    to: &str,
) -> anyhow::Result<ExitCode> {
    let Opened { log, .. } = open(target)?;
    let partitions: Vec<u32> = match partition {
        Some(p) => vec![p],
        None => (0..log.partitions()).collect(),
    };
    let mut entries = Vec::new();
    for &p in &partitions {
        let offset = match to {
            "earliest" => log.stats(p)?.start_offset,
            "latest" => log.end_offset(p),
            t if t.starts_with("time:") => log.offset_for_time(p, parse_time(&t[5..])?)?,
            n => n.parse::<u64>().map_err(|_| {
                anyhow::anyhow!("--to must be earliest, latest, an offset or time:T, not `{n}`")
            })?,
        };
        entries.push(OffsetCommit {
            partition: p,
            offset,
            metadata: b"",
        });
    }
    log.reset_offsets(consumer, &entries)?;
    for e in &entries {
        println!(
            "consumer {consumer} partition {}: now at offset {}",
            e.partition,
            count(e.offset)
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip() {
        for (text, ms) in [
            ("1970-01-01T00:00:00Z", 0),
            ("2026-01-01T00:00:00Z", 1_767_225_600_000),
            ("2026-01-01T01:00:00.5+01:00", 1_767_225_600_500),
            ("1767225600123", 1_767_225_600_123),
        ] {
            assert_eq!(parse_time(text).unwrap(), ms, "{text}");
        }
        assert_eq!(time(1_767_225_600_123), "2026-01-01T00:00:00.123Z");
        assert!(parse_time("yesterday").is_err());
    }
}
