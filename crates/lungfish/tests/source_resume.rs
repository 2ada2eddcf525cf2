//! Sources resume exactly: whatever each partition (and the dead-letter queue) holds
//! after a crash, running the source again makes every partition equal to an
//! uninterrupted run, record for record, with no gap and no repeat.
//!
//! The crashed states are built directly: an uninterrupted run's partitions are cut back
//! to a different batch boundary each (sometimes mid-batch, a torn write), which is
//! exactly what a crash between the appends of one chunk leaves.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use lungfish::Control;
use lungfish::codec::json::FieldNames;
use lungfish::config::{GeneratorConfig, KeyDistribution};
use lungfish::dlq::DeadLetters;
use lungfish::ingest::{IngestPool, Ingestor};
use lungfish::sources::file::FileSource;
use lungfish::sources::generator::{EventRng, EventWriter, GeneratorSource};
use lungfish::sources::{ChunkSource, SourceContext, run_source};
use lungfish_log::{FsyncPolicy, Log, LogConfig};

const PARTITIONS: u32 = 3;

fn fields() -> FieldNames {
    FieldNames::default()
}

fn gen_config() -> GeneratorConfig {
    GeneratorConfig {
        count: Some(60_000),
        keys: 500,
        distribution: KeyDistribution::Zipf,
        disorder: Duration::from_secs(1),
        malformed: 0.01,
        seed: 3,
        ..GeneratorConfig::default()
    }
}

fn log_config() -> LogConfig {
    LogConfig {
        partitions: PARTITIONS,
        segment_bytes: 256 * 1024,
        fsync: FsyncPolicy::Never,
        max_batch_bytes: 64 * 1024,
        retention: lungfish_log::Retention::default(),
    }
}

/// Runs a source into the log and dead-letter queue under `dir`.
fn run(dir: &Path, source: Box<dyn ChunkSource>) {
    let log = Log::open(dir.join("log"), log_config()).unwrap();
    let dead_letters = DeadLetters::open(dir.join("dlq"), FsyncPolicy::Never).unwrap();
    let ingestor = Arc::new(Ingestor::new(fields(), PARTITIONS, 4096, 64 * 1024));
    let ctx = SourceContext {
        log,
        dead_letters,
        pool: Arc::new(IngestPool::new(ingestor, 2)),
        control: Arc::new(Control::new()),
    };
    let report = run_source("src", source, &ctx).unwrap();
    assert!(report.finished);
}

/// Every record of every partition, then the dead letters' locations.
fn contents(dir: &Path) -> Vec<Vec<Vec<u8>>> {
    let log = Log::open(dir.join("log"), log_config()).unwrap();
    let mut out = Vec::new();
    for p in 0..PARTITIONS {
        let mut reader = log.reader(p, 0).unwrap();
        let mut records = Vec::new();
        loop {
            let chunk = reader.read(1 << 20).unwrap();
            if chunk.is_empty() {
                break;
            }
            records.extend(chunk.records().map(|(_, r)| r.to_vec()));
        }
        out.push(records);
    }
    let dlq = DeadLetters::open(dir.join("dlq"), FsyncPolicy::Never).unwrap();
    let mut dead = Vec::new();
    dlq.for_each(0, |_, e| dead.push(e.unwrap().location.into_bytes()))
        .unwrap();
    out.push(dead);
    out
}

/// Byte positions where batches end in a segment file (from the documented frame).
fn batch_ends(bytes: &[u8]) -> Vec<usize> {
    let mut ends = vec![0];
    let mut at = 0;
    while at + 12 <= bytes.len() {
        let body = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
        at += 12 + body;
        ends.push(at);
    }
    ends
}

/// Cuts the last segment of every partition dir under `root` back to a random batch
/// boundary (or into a batch, to tear it), chosen by `rng`.
fn crash(root: &Path, rng: &mut EventRng) {
    for entry in std::fs::read_dir(root).unwrap() {
        let pdir = entry.unwrap().path();
        if !pdir.is_dir() || !pdir.file_name().unwrap().to_string_lossy().starts_with('p') {
            continue;
        }
        let mut segs: Vec<_> = std::fs::read_dir(&pdir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        segs.sort();
        let last = segs.pop().unwrap();
        let bytes = std::fs::read(&last).unwrap();
        let ends = batch_ends(&bytes);
        let mut cut = ends[rng.below(ends.len() as u64) as usize];
        if rng.below(3) == 0 && cut < bytes.len() {
            cut += 1 + rng.below(40) as usize; // a torn write
        }
        let f = std::fs::OpenOptions::new().write(true).open(&last).unwrap();
        f.set_len(cut.min(bytes.len()) as u64).unwrap();
    }
}

fn check_resume(make: &dyn Fn() -> Box<dyn ChunkSource>) {
    let reference = tempfile::tempdir().unwrap();
    run(reference.path(), make());
    let want = contents(reference.path());
    assert!(
        want.iter()
            .take(PARTITIONS as usize)
            .all(|p| p.len() > 1000)
    );
    assert!(
        !want[PARTITIONS as usize].is_empty(),
        "the input has rejects"
    );
    for seed in 0..12 {
        let dir = tempfile::tempdir().unwrap();
        run(dir.path(), make());
        let mut rng = EventRng::new(seed, 0);
        crash(&dir.path().join("log"), &mut rng);
        crash(&dir.path().join("dlq"), &mut rng);
        run(dir.path(), make());
        let got = contents(dir.path());
        for (p, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(
                g.len(),
                w.len(),
                "seed {seed}, partition {p} (the last is the DLQ): record count"
            );
            assert!(g == w, "seed {seed}, partition {p}: records differ");
        }
    }
}

#[test]
fn the_generator_resumes_exactly() {
    check_resume(&|| Box::new(GeneratorSource::new("src", gen_config(), &fields())));
}

#[test]
fn the_file_source_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let writer = EventWriter::new("src", gen_config(), &fields());
    let mut paths = Vec::new();
    for f in 0..2 {
        let mut text = Vec::new();
        for i in 0..30_000u64 {
            writer.write(f * 30_000 + i, &mut text);
        }
        let path = dir.path().join(format!("in-{f}.jsonl"));
        std::fs::write(&path, text).unwrap();
        paths.push(path);
    }
    // Chunks larger than a batch, so partitions get split batches and a resume can
    // start between the original chunk boundaries.
    check_resume(&|| Box::new(FileSource::new(paths.clone(), 400 * 1024, 4096)));
}
