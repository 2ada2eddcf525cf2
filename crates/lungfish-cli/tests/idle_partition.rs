//! `idle_timeout`: a partition that receives nothing for that long raises its watermark
//! to the lowest watermark of the partitions still receiving events, so its windows are
//! emitted while the input goes on (here: an HTTP source that never ends). Without it,
//! the quiet partition's windows wait for its own next event.

mod common;

use std::time::{Duration, Instant};

use common::http::*;
use common::*;
use lungfish::event::{key_hash, partition_for};

/// A key of `prefix` that lands in `partition` of 2.
fn key_in(prefix: &str, partition: u32) -> String {
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .find(|k| partition_for(key_hash(k.as_bytes()), 2) == partition)
        .unwrap()
}

fn post_ok(port: u16, body: String) {
    let r = post(port, "t", "application/x-ndjson", body.as_bytes());
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

/// Starts the server with two partitions, posts one event of `quiet` (partition 0) and
/// one of `busy` (partition 1) in the first second, then keeps posting `busy` events
/// one second of event time apart until `done(table)` holds (bounded); returns the
/// server, the keys and the last busy event time posted.
fn run_with(pipeline: &str, done: impl Fn(&Rows, &str, &str) -> bool) -> (Server, String, String) {
    let server = Server::start_with(
        "",
        &format!("out_of_orderness = \"1ms\"\n{pipeline}"),
        "[log]\npartitions = 2",
    );
    let (quiet, busy) = (key_in("quiet", 0), key_in("busy", 1));
    post_ok(
        server.port,
        format!("{}\n{}\n", event(&quiet, T0 + 100), event(&busy, T0 + 100)),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut i = 1;
    loop {
        if server.db().exists() && done(&read_table(&server.db()), &quiet, &busy) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not done within 60 s; table: {:?}",
            server.db().exists().then(|| read_table(&server.db()))
        );
        // The busy partition keeps advancing, one window per post.
        if i < 1000 {
            post_ok(server.port, event(&busy, T0 + 1000 * i + 100) + "\n");
            i += 1;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    (server, quiet, busy)
}

#[test]
fn an_idle_partition_follows_the_others_and_its_windows_are_emitted_before_the_end() {
    let (mut server, quiet, busy) = run_with("idle_timeout = \"500ms\"", |t, quiet, _| {
        t.contains_key(&(T0, quiet.to_owned()))
    });
    // Emitted while the source is still running, with its one event.
    let table = read_table(&server.db());
    assert_eq!(table[&(T0, quiet.clone())], (T0 + 1000, 1, 1.0, 1.0));
    assert_eq!(table[&(T0, busy.clone())], (T0 + 1000, 1, 1.0, 1.0));
    server.assert_healthy("the idle partition's window was emitted");

    // Its watermark moved with the busy partition's: an event in its first window is
    // now late, though nothing newer ever arrived on its own partition.
    post_ok(server.port, event(&quiet, T0 + 150) + "\n");
    let (stdout, _) = server.stop();
    let late = dead_letters(server.path(), "p.toml", "late");
    assert_eq!(late.len(), 1, "{late:?}\n{stdout}");
    assert!(
        late[0].contains(&format!("\"user\":\"{quiet}\"")),
        "{late:?}"
    );
    let table = read_table(&server.db());
    assert_eq!(
        table[&(T0, quiet.clone())],
        (T0 + 1000, 1, 1.0, 1.0),
        "the late event did not change the emitted row"
    );
}

#[test]
fn without_an_idle_timeout_a_quiet_partition_holds_its_windows() {
    // Run until the busy partition has emitted a window five seconds past the quiet
    // one's: had the quiet partition followed, its window would be out too.
    let (mut server, quiet, _) = run_with("", |t, _, busy| {
        t.contains_key(&(T0 + 5000, busy.to_owned()))
    });
    let table = read_table(&server.db());
    assert!(
        !table.contains_key(&(T0, quiet.clone())),
        "the quiet partition's window was emitted without an idle timeout: {table:?}"
    );
    let (stdout, _) = server.stop();
    assert!(
        !read_table(&server.db()).contains_key(&(T0, quiet)),
        "a stop does not close an HTTP source's windows\n{stdout}"
    );
}
