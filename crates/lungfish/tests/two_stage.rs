//! Two-stage aggregation of hot keys gives exactly the windows one stage gives.
//!
//! Random inputs (proptest): a few hot keys carrying most events plus a tail, integer
//! numbers (so sums are exact whatever the order), events out of order and late ones,
//! tumbling and sliding windows. Each input runs through the real pipeline (file source,
//! log, consumers, shards, SQLite sink) with `pre_aggregate = true` and `false`; the
//! tables must be identical, and the hot keys must really have been found (the run
//! summary names them), so the first run folded them in the first stage.

use std::path::Path;
use std::sync::Arc;

use lungfish::Pipeline;
use lungfish::config::PipelineConfig;
use lungfish::control::Control;
use proptest::prelude::*;

/// A row: window start, key, count, sum(v), min(v), max(w).
type Row = (i64, String, i64, i64, i64, i64);

fn table(db: &Path) -> Vec<Row> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT window_start, key, count, CAST(sum_v AS INTEGER), CAST(min_v AS INTEGER), CAST(max_w AS INTEGER) FROM windows ORDER BY window_start, key",
        )
        .unwrap();
    stmt.query_map([], |r| {
        Ok((
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
        ))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

fn run(dir: &Path, window: &str, pre_aggregate: bool) -> (Vec<Row>, usize) {
    let data = dir.join(format!("data-{pre_aggregate}"));
    let db = dir.join(format!("out-{pre_aggregate}.db"));
    let text = format!(
        r#"
name = "two-stage"
data_dir = "{data}"
[sources.f]
type = "file"
paths = ["{input}"]
[log]
partitions = 2
[pipeline]
shards = 2
batch_max_events = 512
out_of_orderness = "300ms"
pre_aggregate = {pre_aggregate}
window = {window}
aggregates = ["count", "sum(v)", "min(v)", "max(w)"]
[sinks.out]
type = "sqlite"
path = "{db}"
"#,
        data = data.display(),
        input = dir.join("in.jsonl").display(),
        db = db.display(),
    );
    let config = PipelineConfig::parse(&text, &dir.join("p.toml")).expect("valid");
    let summary = Pipeline::new(config)
        .unwrap()
        .run(Arc::new(Control::new()))
        .expect("the run succeeds");
    assert!(summary.complete);
    let hot = summary
        .hot_keys
        .values()
        .flatten()
        .filter(|(_, share)| *share >= lungfish::hot_keys::HOT_SHARE)
        .count();
    (table(&db), hot)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]

    #[test]
    fn two_stage_equals_one_stage(
        seed in any::<u64>(),
        sliding in any::<bool>(),
        events in 20_000usize..40_000,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = seed | 1;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut lines = String::new();
        for i in 0..events {
            let r = next();
            let key = match r % 10 {
                0..=4 => "hot-a".to_owned(),
                5..=6 => "hot-b".to_owned(),
                _ => format!("k{}", next() % 500),
            };
            // About 50 events per second of event time, up to 500 ms out of order
            // (so some are late past the 300 ms bound).
            let ts = 1_700_000_000_000i64 + (i as i64) * 20 - (next() % 500) as i64;
            let v = (next() % 2001) as i64 - 1000;
            let w = (next() % 100) as i64;
            lines.push_str(&format!("{{\"user\":\"{key}\",\"ts\":{ts},\"v\":{v},\"w\":{w}}}\n"));
        }
        std::fs::write(dir.path().join("in.jsonl"), lines).unwrap();
        let window = if sliding {
            r#"{ type = "sliding", size = "2s", slide = "500ms" }"#
        } else {
            r#"{ type = "tumbling", size = "1s" }"#
        };
        let (two, hot) = run(dir.path(), window, true);
        let (one, none) = run(dir.path(), window, false);
        // Detection runs either way; with `pre_aggregate` the hot keys it finds are the
        // ones the first stage folds.
        prop_assert!(hot >= 2, "the first stage found the hot keys ({hot})");
        prop_assert!(none >= 2, "detection runs without the first stage too ({none})");
        prop_assert!(!one.is_empty());
        prop_assert_eq!(two, one);
    }
}
