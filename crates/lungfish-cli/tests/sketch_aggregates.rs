//! The sketch aggregates end to end: `distinct`, `quantile` and `ewma` next to `count`
//! and `sum`, through the real binary, checked in the SQLite table and the JSON-lines
//! file against values computed here from the input.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;

const WINDOW_MS: i64 = 10_000;

/// Per (window start, key): (ts, v, u) of its events.
type Expected = BTreeMap<(i64, String), Vec<(i64, f64, f64)>>;

fn write_input(dir: &std::path::Path) -> Expected {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut lines = String::new();
    let mut want = Expected::new();
    for i in 0..12_000i64 {
        let key = ["a", "b", "c", "c"][(next() % 4) as usize];
        // Key c sees many distinct ids (the HyperLogLog goes dense), a and b few.
        let u = match key {
            "c" => next() % 1_000_000,
            _ => next() % 300,
        } as f64;
        // Log-uniform values over four decades, with decimals.
        let v = (10f64.powf((next() % 40_000) as f64 / 10_000.0) * 1000.0).round() / 1000.0;
        let ts = i * 3; // 36 s of events, in order: four tumbling windows
        lines.push_str(&format!(
            "{{\"id\":\"{i}\",\"user\":\"{key}\",\"ts\":{ts},\"v\":{v},\"u\":{u}}}\n"
        ));
        let start = ts.div_euclid(WINDOW_MS) * WINDOW_MS;
        want.entry((start, key.to_owned()))
            .or_default()
            .push((ts, v, u));
    }
    std::fs::write(dir.join("events.jsonl"), lines).unwrap();
    want
}

#[test]
fn sketch_aggregates_match_exact_values() {
    let dir = tempfile::tempdir().unwrap();
    let want = write_input(dir.path());
    std::fs::write(
        dir.path().join("sketch.toml"),
        r#"
data_dir = "data"
[sources.in]
type = "file"
paths = ["events.jsonl"]
[log]
partitions = 1
[pipeline]
out_of_orderness = "0s"
window = { type = "tumbling", size = "10s" }
aggregates = ["count", "sum(v)", "distinct(u)", "quantile(v, 0.9) as p90", "ewma(v, 10s)"]
[sinks.db]
type = "sqlite"
path = "out.db"
[sinks.rows]
type = "file"
path = "rows.jsonl"
"#,
    )
    .unwrap();
    run_ok(dir.path(), "sketch.toml");

    // (window_start, key) -> (window_end, count, sum, distinct, p90, ewma)
    type Got = BTreeMap<(i64, String), (i64, i64, f64, f64, f64, f64)>;
    let conn = rusqlite::Connection::open(dir.path().join("out.db")).unwrap();
    let mut stmt = conn
        .prepare("SELECT window_start, key, window_end, count, sum_v, distinct_u, p90, ewma_v FROM windows")
        .unwrap();
    let from_db: Got = stmt
        .query_map([], |r| {
            Ok((
                (r.get(0)?, r.get(1)?),
                (
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                ),
            ))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let from_file: Got = std::fs::read_to_string(dir.path().join("rows.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let f = |name: &str| v[name].as_f64().unwrap();
            (
                (
                    v["window_start"].as_i64().unwrap(),
                    v["key"].as_str().unwrap().to_owned(),
                ),
                (
                    v["window_end"].as_i64().unwrap(),
                    v["count"].as_i64().unwrap(),
                    f("sum_v"),
                    f("distinct_u"),
                    f("p90"),
                    f("ewma_v"),
                ),
            )
        })
        .collect();
    // Both sinks hold the same rows (SQLite may round the last digit of a REAL).
    assert_eq!(
        from_db.keys().collect::<Vec<_>>(),
        from_file.keys().collect::<Vec<_>>()
    );
    for (k, a) in &from_db {
        let b = from_file[k];
        assert_eq!((a.0, a.1), (b.0, b.1), "{k:?}");
        for (x, y) in [(a.2, b.2), (a.3, b.3), (a.4, b.4), (a.5, b.5)] {
            assert!((x - y).abs() <= 1e-12 * y.abs(), "{k:?}: {x} vs {y}");
        }
    }
    assert_eq!(
        from_db.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "one row per window and key"
    );

    for ((start, key), events) in &want {
        let got = from_db[&(*start, key.clone())];
        let ctx = format!("window {start} key {key}");
        assert_eq!(got.0, start + WINDOW_MS, "{ctx}: end");
        assert_eq!(got.1, events.len() as i64, "{ctx}: count");
        let sum: f64 = events.iter().map(|e| e.1).sum();
        assert!(
            (got.2 - sum).abs() <= 1e-9 * sum,
            "{ctx}: sum {} vs {sum}",
            got.2
        );

        let distinct = events
            .iter()
            .map(|e| e.2 as u64)
            .collect::<BTreeSet<_>>()
            .len() as f64;
        // Exact but for rare collisions while sparse (<= 1024); then 1.6% standard
        // error: allow three.
        let bound = if distinct <= 1024.0 {
            1.0
        } else {
            3.0 * 0.0163 * distinct
        };
        assert!(
            (got.3 - distinct).abs() <= bound,
            "{ctx}: distinct {} vs {distinct}",
            got.3
        );

        let mut vs: Vec<f64> = events.iter().map(|e| e.1).collect();
        vs.sort_by(f64::total_cmp);
        let p90 = vs[(0.9 * (vs.len() - 1) as f64).floor() as usize];
        assert!(
            (got.4 - p90).abs() <= 0.01 * p90,
            "{ctx}: p90 {} vs {p90}",
            got.4
        );

        let latest = events.iter().map(|e| e.0).max().unwrap();
        let (mut num, mut den) = (0.0, 0.0);
        for &(ts, v, _) in events {
            let w = (-((latest - ts) as f64) / 10_000.0).exp2();
            num += v * w;
            den += w;
        }
        let ewma = num / den;
        assert!(
            (got.5 - ewma).abs() <= 1e-9 * ewma.abs(),
            "{ctx}: ewma {} vs {ewma}",
            got.5
        );
    }
    let dense = want
        .iter()
        .filter(|((_, k), _)| k == "c")
        .map(|(_, e)| e.iter().map(|x| x.2 as u64).collect::<BTreeSet<_>>().len())
        .max()
        .unwrap();
    assert!(dense > 1024, "some key's HyperLogLog went dense ({dense})");
}
