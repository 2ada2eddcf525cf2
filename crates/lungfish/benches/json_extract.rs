//! Throughput of the ingest JSON field extractor (`lungfish::codec::json`) against a
//! fair `serde_json` reference doing the same job: one borrowing deserialization per
//! document that matches runtime field names, extracts key / time / id / numbers with
//! type checks and duplicate detection, and skips everything else with `IgnoredAny`.
//!
//! Run: `cargo bench -p lungfish --bench json_extract`. Prints docs/s per extractor
//! and document shape, the median of 5 timed runs (interleaved), single thread. Also checks that
//! both extractors agree on every document and that the extractor does not allocate.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use lungfish::codec::json::{FieldNames, JsonExtractor};

/// Counts allocations so the benchmark can show the extractor's hot path makes none.
struct CountingAlloc;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call to the system allocator unchanged.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

/// Deterministic generator (PCG-style LCG), so every run sees the same documents.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

/// `plain`: the typical event. `extra`: the same plus three unwanted fields (a nested
/// object, an array, a string with an escape) interleaved with the wanted ones.
/// Values vary from event to event (lengths included), as in real streams.
fn make_docs(extra: bool, n: usize) -> Vec<Vec<u8>> {
    const SOURCES: [&str; 4] = ["web", "ios", "android", "api-v2"];
    const TAGS: [&str; 5] = ["a", "beta", "c", "new-user", "eu"];
    let mut rng = Lcg(0x5eed_0000 + extra as u64);
    (0..n)
        .map(|i| {
            let id = 12345 + i as u64;
            let user = rng.next() % 10_000;
            let ts = 1_767_225_600_000 + rng.next() % 86_400_000;
            let value = (rng.next() % 100_000) as f64 / 8.0;
            let doc = if extra {
                let mut pick = |items: &[&'static str]| items[rng.next() as usize % items.len()];
                let (src, t1, t2) = (pick(&SOURCES), pick(&TAGS), pick(&TAGS));
                format!(
                    r#"{{"id":"e-{id:09}","user":"u-{user}","meta":{{"src":"{src}","v":{v}}},"ts":{ts},"tags":["{t1}","{t2}",{t}],"value":{value},"note":"say \"hi\" {v}"}}"#,
                    v = rng.next() % 10,
                    t = rng.next() % 100,
                )
            } else {
                format!(r#"{{"id":"e-{id:09}","user":"u-{user}","ts":{ts},"value":{value}}}"#)
            };
            doc.into_bytes()
        })
        .collect()
}

#[path = "common/serde_reference.rs"]
mod serde_reference;
use serde_reference::serde_extract;

// ---------------------------------------------------------------------------------

const RUNS: usize = 5;
const DOCS_PER_RUN: usize = 4_000_000;

/// Docs/s of one timed run of `DOCS_PER_RUN` documents.
fn run_once(docs: &[Vec<u8>], one: &mut impl FnMut(&[u8]) -> u64) -> f64 {
    let start = Instant::now();
    let mut sum = 0u64;
    let mut n = 0;
    while n < DOCS_PER_RUN {
        for d in docs {
            sum = sum.wrapping_add(one(black_box(d)));
        }
        n += docs.len();
    }
    black_box(sum);
    n as f64 / start.elapsed().as_secs_f64()
}

/// Median docs/s of `RUNS` runs for each of two extractors, runs interleaved (so
/// both see the same machine conditions) after a warm-up of each.
fn measure_pair(
    docs: &[Vec<u8>],
    mut a: impl FnMut(&[u8]) -> u64,
    mut b: impl FnMut(&[u8]) -> u64,
) -> (f64, f64) {
    run_once(docs, &mut a);
    run_once(docs, &mut b);
    let (mut ra, mut rb) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        ra.push(run_once(docs, &mut a));
        rb.push(run_once(docs, &mut b));
    }
    ra.sort_by(f64::total_cmp);
    rb.sort_by(f64::total_cmp);
    (ra[RUNS / 2], rb[RUNS / 2])
}

fn main() {
    let fields = FieldNames {
        key: "user".into(),
        time: "ts".into(),
        id: Some("id".into()),
        numbers: vec!["value".into()],
    };
    let extractor = JsonExtractor::new(fields.clone());
    println!("json_extract: single thread, median of {RUNS} runs of {DOCS_PER_RUN} docs");
    println!(
        "{:<8} {:>10} {:>16} {:>16} {:>8}",
        "shape", "avg bytes", "lungfish docs/s", "serde docs/s", "speedup"
    );
    for (shape, extra) in [("plain", false), ("extra", true)] {
        let docs = make_docs(extra, 8192);
        let avg = docs.iter().map(Vec::len).sum::<usize>() as f64 / docs.len() as f64;

        // Both must agree on every document (and accept all of them).
        let mut a = [0.0];
        let mut b = [0.0];
        for d in &docs {
            let x = extractor.extract(d, &mut a).expect("lungfish accepts");
            let y = serde_extract(&fields, d, &mut b).expect("serde accepts");
            assert_eq!((&x.key, x.ts, &x.id), (&y.key, y.ts, &y.id));
            assert_eq!(a[0].to_bits(), b[0].to_bits());
        }

        // The extractor's hot path must not allocate.
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        for d in &docs {
            black_box(extractor.extract(d, &mut a).ok());
        }
        let allocs = ALLOCATIONS.load(Ordering::Relaxed) - before;

        let (ours, theirs) = measure_pair(
            &docs,
            |d| {
                let mut n = [0.0];
                match extractor.extract(d, &mut n) {
                    Ok(e) => e.ts as u64 ^ e.key.len() as u64 ^ n[0].to_bits(),
                    Err(_) => 1,
                }
            },
            |d| {
                let mut n = [0.0];
                match serde_extract(&fields, d, &mut n) {
                    Ok(e) => e.ts as u64 ^ e.key.len() as u64 ^ n[0].to_bits(),
                    Err(_) => 1,
                }
            },
        );
        println!(
            "{shape:<8} {avg:>10.1} {ours:>16.0} {theirs:>16.0} {:>7.2}x   (lungfish allocations: {allocs})",
            ours / theirs
        );
    }
}
