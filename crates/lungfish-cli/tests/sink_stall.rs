//! A sink stalled for 30 s under load: the test holds an exclusive lock on the SQLite
//! database while it posts events as fast as it is allowed over keep-alive connections.
//! Meanwhile requests keep being acknowledged (the events wait in the log on disk), the
//! server's resident memory stays under its bound, and once the lock is released the
//! backlog drains into the table, every acknowledged event counted exactly once.

mod common;

use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use lungfish::event::{key_hash, partition_for};
use rusqlite::Connection;

use common::http::*;
use common::*;

/// How long the database stays locked, with events posted all along.
const STALL: Duration = Duration::from_secs(30);
/// Events per second the posters aim at, together: 20 times the ~25,000/s that
/// `examples/http.toml` treats as normal.
const TARGET_RATE: u64 = 500_000;
/// Keep-alive connections posting at once, one request in flight each.
const CONNECTIONS: usize = 16;
const EVENTS_PER_REQUEST: usize = 1000;
/// Keys (`u0` .. `u9999`).
const USERS: usize = 10_000;
/// Event times of a request lie in the 250 ms before the moment it is built, plus 1 s
/// (so none is before `T0`).
const SPREAD_MS: u64 = 250;
/// The pipeline's `out_of_orderness`: the events of a request built earlier may be
/// appended after those of a later one; an event is late only if its request took
/// longer than this, from being built to being durable.
const OUT_OF_ORDERNESS: &str = "3s";
/// One-second windows of event time, counted from `T0`, the tests remember.
const WINDOWS: usize = 64;
/// Acknowledged events are counted in slices of the stall this long.
const SLICE: Duration = Duration::from_secs(5);
const SLICES: usize = 6;
/// The pipeline's `memory_limit`.
const MEMORY_LIMIT_MIB: u64 = 192;
/// The product's bound for a 20x spike during a 30 s stall: the memory limit plus a
/// fixed overhead (threads, the log's index, read buffers), 256 MiB in all.
const RSS_BOUND_KIB: u64 = (MEMORY_LIMIT_MIB + 64) * 1024;
/// Longest wait for the backlog to drain after the lock is released. The sink's breaker
/// doubles its open time (0.5 s up to 5 s) while the store fails, so the first probe
/// after the stall comes within about 5 s (plus a write timeout) after it.
const DRAIN_DEADLINE: Duration = Duration::from_secs(60);

/// What one connection sent and got.
struct Sent {
    /// Events acknowledged (in 200 answers accepting every event of the request).
    acked: u64,
    /// Acknowledged events per (window, user): index `window * USERS + user`.
    counts: Vec<i64>,
    /// The sums of their values, same index.
    sums: Vec<i64>,
    /// Events acknowledged per slice of the stall (by the time of the answer).
    slices: [u64; SLICES],
    requests: u64,
    /// Longest time from building a request to its answer.
    max_latency: Duration,
    /// 503 answers because the log reached its size budget (the events are refused).
    log_full: u64,
    /// Anything else: makes the test fail.
    unexpected: Vec<String>,
}

fn xorshift(mut x: u64) -> u64 {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

/// Posts requests of `EVENTS_PER_REQUEST` events on one keep-alive connection from
/// `start` to `end`, paced at this connection's share of `TARGET_RATE` (a connection
/// that falls behind sends its next request at once).
fn post_until(port: u16, conn: usize, start: Instant, end: Instant) -> Sent {
    let mut client = KeepAlive::new(port);
    let name = format!("load-{conn}");
    let interval =
        Duration::from_secs_f64((EVENTS_PER_REQUEST * CONNECTIONS) as f64 / TARGET_RATE as f64);
    let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ (conn as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03);
    let mut body = Vec::with_capacity(EVENTS_PER_REQUEST * 80);
    let mut events: Vec<(usize, i64)> = Vec::with_capacity(EVENTS_PER_REQUEST);
    let mut sent = Sent {
        acked: 0,
        counts: vec![0; WINDOWS * USERS],
        sums: vec![0; WINDOWS * USERS],
        slices: [0; SLICES],
        requests: 0,
        max_latency: Duration::ZERO,
        log_full: 0,
        unexpected: Vec::new(),
    };
    let mut seq = 0u64;
    let mut due = start;
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        if due > now {
            // Pacing to the target rate (not a wait for a condition).
            thread::sleep((due - now).min(end - now));
            continue;
        }
        due += interval;
        let built = Instant::now();
        let base = T0 + 1000 + built.duration_since(start).as_millis() as i64;
        body.clear();
        events.clear();
        for _ in 0..EVENTS_PER_REQUEST {
            rng = xorshift(rng);
            let user = (rng % USERS as u64) as usize;
            let ts = base - ((rng >> 24) % SPREAD_MS) as i64;
            let value = 1 + ((rng >> 44) % 9) as i64;
            writeln!(
                body,
                r#"{{"id":"c{conn}-{seq}","user":"u{user}","ts":{ts},"value":{value}}}"#
            )
            .unwrap();
            seq += 1;
            let window = ((ts - T0) / 1000) as usize;
            assert!(window < WINDOWS, "the run went on longer than planned");
            events.push((window * USERS + user, value));
        }
        let r = client
            .post(&name, "application/x-ndjson", &body)
            .unwrap_or_else(|e| {
                panic!(
                    "connection {conn}, request {}: {e} (its events may or may not be in the log)",
                    sent.requests
                )
            });
        let answered = Instant::now();
        sent.requests += 1;
        sent.max_latency = sent.max_latency.max(answered - built);
        let json = || serde_json::from_slice::<serde_json::Value>(&r.body).unwrap_or_default();
        match r.status {
            200 => {
                let j = json();
                if j["accepted"] != EVENTS_PER_REQUEST
                    || j["rejected"].as_array().is_none_or(|a| !a.is_empty())
                {
                    sent.unexpected.push(format!("200 {j}"));
                    continue;
                }
                for &(cell, value) in &events {
                    sent.counts[cell] += 1;
                    sent.sums[cell] += value;
                }
                sent.acked += EVENTS_PER_REQUEST as u64;
                let slice =
                    (answered.duration_since(start).as_millis() / SLICE.as_millis()) as usize;
                sent.slices[slice.min(SLICES - 1)] += EVENTS_PER_REQUEST as u64;
            }
            503 if json()["error"] == "log_full" => sent.log_full += 1,
            status => sent.unexpected.push(format!(
                "{status} after {:.1} s: {}",
                answered.duration_since(start).as_secs_f64(),
                String::from_utf8_lossy(&r.body)
            )),
        }
    }
    sent
}

/// A `kB` field of `/proc/PID/status` (`VmRSS`, `VmHWM`).
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Per (window start, key): (count, sum) of the table's rows, the closers left out.
fn table_counts(db: &std::path::Path) -> std::collections::BTreeMap<(i64, String), (i64, i64)> {
    read_table(db)
        .into_iter()
        .filter(|((_, key), _)| !key.starts_with("closer-"))
        .map(|(k, (_, count, sum, _))| (k, (count, sum as i64)))
        .collect()
}

#[test]
fn a_sink_stalled_for_30_s_under_load_keeps_memory_bounded_and_drains_every_event_once() {
    let test_started = Instant::now();
    let mut server = Server::start_with(
        "client_header = \"x-client-id\"",
        &format!(
            "key = \"user\"\ntime = \"ts\"\nout_of_orderness = \"{OUT_OF_ORDERNESS}\"\nmemory_limit = \"{MEMORY_LIMIT_MIB}MiB\""
        ),
        // A locked database is a write that times out after 1 s: a transient failure.
        "write_timeout = \"1s\"\n\n[log]\npartitions = 4\nfsync = \"every 10ms\"\nmax_size = \"16GiB\"",
    );
    let port = server.port;
    let pid = server.child.as_ref().unwrap().id();
    let db = server.db();

    // The sink creates its table when the pipeline starts; then the test locks the
    // database as a stalled store would be.
    let deadline = Instant::now() + Duration::from_secs(30);
    let lock = loop {
        if db.exists() {
            let c = Connection::open(&db).unwrap();
            c.busy_timeout(Duration::from_secs(5)).unwrap();
            let tables: i64 = c
                .query_row(
                    "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'windows'",
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            if tables == 1 {
                break c;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the sink did not create its table"
        );
        thread::sleep(Duration::from_millis(20));
    };
    lock.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let start = Instant::now();
    let end = start + STALL;

    // The server's resident memory, every 200 ms until the end of the drain.
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        thread::spawn(move || {
            let mut samples: Vec<(Duration, u64)> = Vec::new();
            while sampling.load(Ordering::Relaxed) {
                if let Some(kib) = status_kib(pid, "VmRSS") {
                    samples.push((start.elapsed(), kib));
                }
                thread::sleep(Duration::from_millis(200));
            }
            samples
        })
    };

    let posters: Vec<_> = (0..CONNECTIONS)
        .map(|conn| thread::spawn(move || post_until(port, conn, start, end)))
        .collect();
    let mut all = Vec::with_capacity(CONNECTIONS);
    for p in posters {
        all.push(p.join().expect("a poster panicked"));
    }
    let posted_for = start.elapsed();

    // The stall was real: nothing reached the table while the lock was held.
    let rows_during_stall: i64 = lock
        .query_row("SELECT count(*) FROM windows", [], |r| r.get(0))
        .unwrap();
    lock.execute_batch("ROLLBACK").unwrap();
    drop(lock);
    let released = Instant::now();

    let acked: u64 = all.iter().map(|s| s.acked).sum();
    let requests: u64 = all.iter().map(|s| s.requests).sum();
    let log_full: u64 = all.iter().map(|s| s.log_full).sum();
    let max_latency = all.iter().map(|s| s.max_latency).max().unwrap();
    let mut slices = [0u64; SLICES];
    for s in &all {
        for (i, n) in s.slices.iter().enumerate() {
            slices[i] += n;
        }
    }
    let unexpected: Vec<&String> = all.iter().flat_map(|s| &s.unexpected).collect();
    let rate = acked as f64 / posted_for.as_secs_f64();
    eprintln!(
        "stall: {acked} events acknowledged in {requests} requests over {:.1} s = {rate:.0} events/s \
         ({:.2} x the 500k/s target); per 5 s slice {slices:?}; longest request {:.0} ms; \
         {log_full} refused as log_full; {} other answers",
        posted_for.as_secs_f64(),
        rate / TARGET_RATE as f64,
        max_latency.as_secs_f64() * 1e3,
        unexpected.len()
    );
    assert!(
        unexpected.is_empty(),
        "answers other than 200 or 503 log_full ({} of them), first: {}",
        unexpected.len(),
        unexpected[0]
    );
    assert_eq!(
        log_full, 0,
        "the log's budget of 16 GiB should not be reached"
    );
    for (i, n) in slices.iter().enumerate() {
        assert!(
            *n > 0,
            "no event was acknowledged from {} s to {} s of the stall: {slices:?}",
            i * 5,
            i * 5 + 5
        );
    }
    assert_eq!(
        rows_during_stall, 0,
        "the sink wrote while the database was locked"
    );

    // Expected windows, from what was acknowledged.
    let mut want: std::collections::BTreeMap<(i64, String), (i64, i64)> = Default::default();
    let (mut want_count, mut want_sum) = (0i64, 0i64);
    for cell in 0..WINDOWS * USERS {
        let (count, sum) = all
            .iter()
            .fold((0, 0), |(c, s), x| (c + x.counts[cell], s + x.sums[cell]));
        if count > 0 {
            let (window, user) = (cell / USERS, cell % USERS);
            want.insert(
                (T0 + window as i64 * 1000, format!("u{user}")),
                (count, sum),
            );
            want_count += count;
            want_sum += sum;
        }
    }
    assert_eq!(want_count as u64, acked);
    drop(all);

    // Close every window: an event a day later on each of the 4 partitions.
    let mut closers = String::new();
    let mut covered = [false; 4];
    for i in 0.. {
        let key = format!("closer-{i}");
        let p = partition_for(key_hash(key.as_bytes()), 4) as usize;
        if !covered[p] {
            covered[p] = true;
            closers.push_str(&event(&key, T0 + 86_400_000));
            closers.push('\n');
        }
        if covered.iter().all(|c| *c) {
            break;
        }
    }
    let r = post(port, "closer", "application/x-ndjson", closers.as_bytes());
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));

    // The backlog drains: the table's totals reach the acknowledged ones.
    let reader = Connection::open(&db).unwrap();
    reader.busy_timeout(Duration::from_secs(5)).unwrap();
    let deadline = released + DRAIN_DEADLINE;
    let mut first_rows = None;
    let (got_count, got_sum) = loop {
        let (count, sum) = reader
            .query_row(
                "SELECT coalesce(sum(count), 0), coalesce(sum(sum_value), 0) FROM windows \
                 WHERE key NOT LIKE 'closer-%'",
                [],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, f64>(1)? as i64)),
            )
            .unwrap();
        if count > 0 && first_rows.is_none() {
            first_rows = Some(released.elapsed());
        }
        if (count, sum) == (want_count, want_sum) || count > want_count || Instant::now() > deadline
        {
            break (count, sum);
        }
        thread::sleep(Duration::from_millis(200));
    };
    let drained = released.elapsed();
    sampling.store(false, Ordering::Relaxed);
    let samples = sampler.join().unwrap();
    let hwm = status_kib(pid, "VmHWM").expect("VmHWM of the server");
    let peak_in_stall = samples
        .iter()
        .filter(|(t, _)| *t <= posted_for)
        .map(|(_, k)| *k)
        .max()
        .unwrap_or(0);
    let peak = samples.iter().map(|(_, k)| *k).max().unwrap_or(0);
    let data_bytes: u64 = walk_size(&server.path().join("data"));
    eprintln!(
        "drain: first rows {:.1} s after the lock was released, all {} rows' totals after {:.1} s \
         (count {got_count} of {want_count}, sum {got_sum} of {want_sum}); \
         server RSS: peak sampled {:.1} MiB during the stall, {:.1} MiB overall ({} samples), \
         VmHWM {:.1} MiB (bound {} MiB); log + data dir {:.0} MiB; test so far {:.1} s",
        first_rows.map_or(f64::NAN, |d| d.as_secs_f64()),
        want.len(),
        drained.as_secs_f64(),
        mib(peak_in_stall),
        mib(peak),
        samples.len(),
        mib(hwm),
        RSS_BOUND_KIB / 1024,
        data_bytes as f64 / (1 << 20) as f64,
        test_started.elapsed().as_secs_f64()
    );
    assert!(
        hwm < RSS_BOUND_KIB && peak < RSS_BOUND_KIB,
        "peak resident memory {:.1} MiB (sampled {:.1} MiB) is over {} MiB",
        mib(hwm),
        mib(peak),
        RSS_BOUND_KIB / 1024
    );

    if (got_count, got_sum) != (want_count, want_sum) {
        let (_, stderr) = server.stop();
        let late = dead_letters(server.path(), "p.toml", "late").len();
        panic!(
            "after {:.1} s the table counts {got_count} events (sum {got_sum}); {want_count} \
             (sum {want_sum}) were acknowledged; {late} late events in the dead-letter queue; \
             longest request {:.0} ms\nstderr:\n{stderr}",
            drained.as_secs_f64(),
            max_latency.as_secs_f64() * 1e3
        );
    }

    // Row by row: each (window, user) holds exactly the acknowledged events.
    let got = table_counts(&db);
    if got != want {
        let missing = want.iter().find(|(k, v)| got.get(*k) != Some(*v));
        let extra = got.keys().find(|k| !want.contains_key(*k));
        panic!(
            "{} rows in the table, {} expected; first differing expected row {missing:?} \
             (table: {:?}); first unexpected row {extra:?}",
            got.len(),
            want.len(),
            missing.and_then(|(k, _)| got.get(k))
        );
    }

    let (_, stderr) = server.stop();
    assert!(
        dead_letters(server.path(), "p.toml", "late").is_empty(),
        "late events in the dead-letter queue"
    );
    assert!(
        stderr.contains("holding its batch"),
        "the sink never reported holding its batch:\n{stderr}"
    );
    eprintln!("test took {:.1} s", test_started.elapsed().as_secs_f64());
}

/// Bytes of the files under `dir`.
fn walk_size(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => walk_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}
