//! Golden-file tests: each `tests/golden/NAME.toml` pipeline runs through the real
//! binary on `NAME.jsonl`, and the rows it writes (a JSON-lines file sink) must equal
//! `NAME.expected.jsonl` line for line, and its late events `NAME.late` (one location
//! per line). Inputs are out of order, with late events, several keys and windows.
//! Every golden case is also checked against the plain batch computation.

mod common;

use std::path::Path;

use common::*;

fn golden(name: &str, size_ms: i64, slide_ms: i64, out_of_orderness_ms: i64) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let dir = tempfile::tempdir().unwrap();
    for ext in ["toml", "jsonl"] {
        std::fs::copy(
            src.join(format!("{name}.{ext}")),
            dir.path().join(format!("{name}.{ext}")),
        )
        .unwrap();
    }
    run_ok(dir.path(), &format!("{name}.toml"));

    let mut got: Vec<String> = std::fs::read_to_string(dir.path().join("rows.jsonl"))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    got.sort();
    let mut want: Vec<String> = std::fs::read_to_string(src.join(format!("{name}.expected.jsonl")))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    want.sort();
    assert_eq!(got, want, "{name}: rows differ from the golden file");

    let late: Vec<String> = dead_letters(dir.path(), &format!("{name}.toml"), "late")
        .iter()
        .map(|l| l.split('\t').nth(5).unwrap_or("").to_owned())
        .collect();
    let want_late: Vec<String> = std::fs::read_to_string(src.join(format!("{name}.late")))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(late, want_late, "{name}: late events differ");

    // The golden file itself agrees with the batch computation.
    let input = std::fs::read(src.join(format!("{name}.jsonl"))).unwrap();
    let exp = batch_windows(
        input.split(|&b| b == b'\n'),
        1,
        out_of_orderness_ms,
        size_ms,
        slide_ms,
    );
    let rows = read_table_from_jsonl(&dir.path().join("rows.jsonl"));
    assert_same_rows(&rows, &exp.rows, name);
    assert_eq!(exp.late as usize, want_late.len(), "{name}: late count");
}

fn read_table_from_jsonl(path: &Path) -> Rows {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                (
                    v["window_start"].as_i64().unwrap(),
                    v["key"].as_str().unwrap().to_owned(),
                ),
                (
                    v["window_end"].as_i64().unwrap(),
                    v["count"].as_i64().unwrap(),
                    v["sum_value"].as_f64().unwrap(),
                    v["mean_value"].as_f64().unwrap(),
                ),
            )
        })
        .collect()
}

#[test]
fn tumbling_windows_with_out_of_order_and_late_events() {
    golden("tumbling", 1000, 1000, 500);
}

#[test]
fn sliding_windows_with_out_of_order_and_late_events() {
    golden("sliding", 2000, 1000, 500);
}
