//! Acknowledged means durable: `lungfish load` sends events while the server is killed
//! with SIGKILL and restarted, twice; every event the load generator recorded as
//! acknowledged is in the sink afterwards, exactly once.

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::http::*;
use common::*;

#[test]
fn every_acknowledged_event_survives_kill_9() {
    // Keyed by event id: one row per event, so the table shows each id.
    let mut server = Server::start_with(
        "client_header = \"x-client-id\"",
        "key = \"id\"\nout_of_orderness = \"10m\"",
        "[log]\npartitions = 2\nfsync = \"every 10ms\"",
    );
    let url = format!("http://127.0.0.1:{}/v1/events", server.port);
    let acked = server.path().join("acked.txt");
    let report = server.path().join("load.json");
    let mut load = Command::new(bin())
        .args(["load", &url, "--rate", "20000", "--duration", "7s"])
        .args(["--events-per-request", "200", "--concurrency", "4"])
        .args(["--timeout", "2s", "--no-progress", "--name", "kill9"])
        .arg("--acked-ids")
        .arg(&acked)
        .arg("--json-report")
        .arg(&report)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    for _ in 0..2 {
        std::thread::sleep(Duration::from_millis(1500));
        server.kill9();
        std::thread::sleep(Duration::from_millis(300));
        server.restart();
    }
    let status = wait_timeout(&mut load, Duration::from_secs(60));
    let out = load.wait_with_output().unwrap();
    assert!(
        status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let ids: Vec<String> = std::fs::read_to_string(&acked)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert!(ids.len() > 20_000, "only {} acknowledged", ids.len());
    eprintln!(
        "{} events acknowledged across 2 kill -9 restarts; load report: {}",
        ids.len(),
        std::fs::read_to_string(&report).unwrap_or_default()
    );

    // Close every window: events a day later, on every partition.
    let later = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        + 86_400_000;
    let closers: String = (0..32)
        .map(|i| event(&format!("closer-{i}"), later) + "\n")
        .collect();
    let r = post(
        server.port,
        "closer",
        "application/x-ndjson",
        closers.as_bytes(),
    );
    assert_eq!(r.status, 200);
    let deadline = Instant::now() + Duration::from_secs(30);
    let missing = loop {
        let mut counts: BTreeMap<String, i64> = BTreeMap::new();
        if server.db().exists() {
            for ((_, key), (_, count, _, _)) in read_table(&server.db()) {
                *counts.entry(key).or_default() += count;
            }
        }
        let missing: Vec<&String> = ids.iter().filter(|id| !counts.contains_key(*id)).collect();
        if missing.is_empty() {
            let duplicated: Vec<(&String, i64)> = ids
                .iter()
                .map(|id| (id, counts[id]))
                .filter(|(_, n)| *n != 1)
                .collect();
            assert!(
                duplicated.is_empty(),
                "counted twice: {:?}",
                &duplicated[..duplicated.len().min(5)]
            );
            break missing.len();
        }
        if Instant::now() > deadline {
            break missing.len();
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(missing, 0, "acknowledged events missing from the sink");
    server.stop();
}
