//! A graceful stop (SIGINT) commits everything processed, even when the last state
//! checkpoint is older than the last micro-batch: the stop takes one more. Without it,
//! the committed offsets lag, the next start re-reads events, and a dead-letter replay
//! made in between counts an event twice (found while writing the user guide).

mod common;

use std::time::Duration;

use common::http::{Server, T0, event, post};
use lungfish_log::{Log, LogConfig};

#[test]
fn a_stop_between_state_checkpoints_commits_through_the_end_of_the_log() {
    // State checkpoints every hour: only the stop can take one during this test.
    let mut server = Server::start_with(
        "",
        "out_of_orderness = \"1ms\"\ncheckpoint_interval = \"1h\"",
        "",
    );
    let body: Vec<String> = (0..2_000)
        .map(|i| event(&format!("u{}", i % 37), T0 + i))
        .collect();
    let r = post(
        server.port,
        "c",
        "application/x-ndjson",
        body.join("\n").as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.message());
    // Long enough for every micro-batch to be cut and its marker to pass (50 ms age).
    std::thread::sleep(Duration::from_millis(1_500));
    server.stop();

    let log = Log::open(server.path().join("data/log"), LogConfig::default()).unwrap();
    let committed = log.committed("edge").unwrap();
    let mut total = 0;
    for (p, c) in committed.iter().enumerate() {
        let end = log.end_offset(p as u32);
        total += end;
        let at = c.as_ref().map_or(0, |c| c.offset);
        assert_eq!(
            at, end,
            "partition {p}: committed {at} of {end} after a stop"
        );
    }
    assert_eq!(total, 2_000, "every event is in the log");
}
