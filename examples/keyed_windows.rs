//! Keyed event-time windows over a stream in code, with a watermark.
//!
//! A program with its own stream of events (page views here, arriving up to 3 s out of
//! order) uses [`KeyedWindows`] for per-page 10-second windows with the count, the
//! p95 load time and the number of distinct visitors. Events are pushed a batch at a
//! time; after each batch, the windows the watermark has closed (the latest event time
//! minus 2 s of allowed out-of-orderness) are drained and printed: each window exactly
//! once, final. An event later than that is refused as `Late` and counted.
//!
//! The example checks its result against a plain recount of the accepted events:
//! same windows, same counts, every event accounted for. Run it with:
//!
//! ```text
//! cargo run -p lungfish --example keyed_windows
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use lungfish::config::{AggregateSpec, WindowSpec};
use lungfish::keyed_windows::KeyedWindows;

/// A page view: page, event time (ms), load time (ms), visitor id.
type View = (&'static str, i64, f64, f64);

/// A reproducible stream of `n` page views, times disordered by up to 3 s.
fn page_views(n: usize) -> Vec<View> {
    let pages = ["/", "/pricing", "/docs", "/blog", "/signup"];
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..n)
        .map(|i| {
            let page = pages[(next() % 5) as usize];
            let ts = 1_767_225_600_000 + i as i64 * 20 - (next() % 3_000) as i64;
            let load_ms = 40.0 + (next() % 400) as f64;
            let visitor = (next() % 300) as f64;
            (page, ts, load_ms, visitor)
        })
        .collect()
}

fn main() {
    let aggregates: Vec<AggregateSpec> = ["count", "p95(load_ms)", "distinct(visitor)"]
        .iter()
        .map(|a| a.parse().expect("an aggregate"))
        .collect();
    let mut windows = KeyedWindows::new(
        WindowSpec::Tumbling {
            size: Duration::from_secs(10),
        },
        &aggregates,
        &["load_ms", "visitor"],
        Duration::from_secs(2),
    )
    .expect("valid windows");

    let views = page_views(20_000);
    let mut accepted = Vec::new();
    let mut late = 0;
    let mut emitted: BTreeMap<(i64, String), f64> = BTreeMap::new();
    let mut record = |rows: lungfish::window::WindowRows| {
        for i in 0..rows.len() {
            let fresh = emitted
                .insert(
                    (rows.window_start(i), rows.key(i).to_owned()),
                    rows.value(i, 0),
                )
                .is_none();
            assert!(fresh, "a window is emitted once");
        }
        rows.len()
    };
    let mut shown = 0;
    for batch in views.chunks(500) {
        for &(page, ts, load_ms, visitor) in batch {
            match windows.push(page, ts, &[load_ms, visitor]) {
                Ok(()) => accepted.push((page, ts)),
                Err(_late) => late += 1,
            }
        }
        let closed = windows.drain_closed();
        if shown < 3 && !closed.is_empty() {
            shown += 1;
            println!(
                "keyed_windows: watermark {} closed {} rows, e.g. {} [{}, {}): {} views, p95 {:.0} ms, {:.0} visitors",
                windows.watermark(),
                closed.len(),
                closed.key(0),
                closed.window_start(0),
                closed.window_end(0),
                closed.value(0, 0),
                closed.value(0, 1),
                closed.value(0, 2),
            );
        }
        record(closed);
    }
    record(windows.finish()); // the end of the stream closes the rest

    let mut recount: BTreeMap<(i64, String), f64> = BTreeMap::new();
    for (page, ts) in &accepted {
        *recount
            .entry((ts.div_euclid(10_000) * 10_000, (*page).to_owned()))
            .or_default() += 1.0;
    }
    println!(
        "keyed_windows: {} views: {} in {} windows, {late} late",
        views.len(),
        accepted.len(),
        emitted.len()
    );
    assert_eq!(
        emitted, recount,
        "the windows hold exactly the accepted events"
    );
    assert_eq!(
        accepted.len() + late,
        views.len(),
        "every event accounted for"
    );
    assert!(
        late > 0,
        "3 s of disorder against 2 s allowed makes some late"
    );
    println!("keyed_windows: ok");
}
