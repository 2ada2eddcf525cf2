//! kill -9 of `lungfish run` at several points of a run into a real Postgres: after
//! restarts to the end, the table equals an uninterrupted run's, row for row (nothing
//! lost, no window counted twice).

mod common;
#[path = "../../lungfish/tests/support/pg.rs"]
mod pg;

use std::path::Path;
use std::time::Duration;

use common::*;
use pg::Pg;

fn pipeline(dir: &Path, url: &str, table: &str) {
    std::fs::write(
        dir.join("p.toml"),
        format!(
            r#"name = "pgkill"
data_dir = "data"

[sources.gen]
type = "generator"
count = 300000
rate = 100000
keys = 5000
distribution = "zipf"
disorder = "1s"
events_per_second = 50000
seed = 3

[log]
partitions = 3

[pipeline]
out_of_orderness = "1s"
window = {{ type = "tumbling", size = "1s" }}
aggregates = ["count", "sum(value)", "mean(value)"]

[sinks.pg]
type = "postgres"
url = "{url}"
table = "{table}"
batch_max_rows = 2000
"#
        ),
    )
    .unwrap();
}

fn rows(client: &mut postgres::Client, table: &str) -> Vec<(i64, String, i64, f64)> {
    client
        .query(
            &format!("SELECT window_start, key, count, sum_value FROM {table} ORDER BY 1, 2"),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

#[test]
fn kill_9_during_a_run_into_postgres_changes_nothing() {
    let pg = Pg::start();
    let reference = tempfile::tempdir().unwrap();
    pipeline(reference.path(), &pg.url(), "reference");
    run_ok(reference.path(), "p.toml");

    let crashy = tempfile::tempdir().unwrap();
    pipeline(crashy.path(), &pg.url(), "crashy");
    for after in [600, 1100, 900] {
        let mut child = spawn_run(crashy.path(), "p.toml");
        std::thread::sleep(Duration::from_millis(after));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
    run_ok(crashy.path(), "p.toml");

    let mut client = pg.client();
    let want = rows(&mut client, "reference");
    let got = rows(&mut client, "crashy");
    assert!(want.len() > 10_000, "{} rows", want.len());
    let events: i64 = want.iter().map(|r| r.2).sum();
    assert!(events > 250_000, "{events} events in windows");
    assert_eq!(got.len(), want.len());
    assert_eq!(got, want);
}
