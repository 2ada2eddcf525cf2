//! The HTTP edge through the real binary and a real client on loopback: every status
//! comes from the input that should produce it, with a body that explains it; after
//! each bad request the server still serves; and every acknowledged event, only those,
//! reaches the sink exactly once.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::http::*;
use common::*;

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn rejected_indexes(r: &Resp) -> Vec<u64> {
    r.json()["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["index"].as_u64().unwrap())
        .collect()
}

fn reasons(r: &Resp) -> Vec<String> {
    r.json()["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["reason"].as_str().unwrap().to_owned())
        .collect()
}

/// Sends events with later times to every partition so all earlier windows close, then
/// waits until the table holds `want` for the keys starting with `k-`.
fn settle(server: &Server, want: &BTreeMap<String, i64>) -> BTreeMap<String, i64> {
    let closers: String = (0..32)
        .map(|i| event(&format!("closer-{i}"), T0 + 3_600_000) + "\n")
        .collect();
    let r = post(
        server.port,
        "closer",
        "application/x-ndjson",
        closers.as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut got: BTreeMap<String, i64> = BTreeMap::new();
        if server.db().exists() {
            for ((_, key), (_, count, _, _)) in read_table(&server.db()) {
                if key.starts_with("k-") {
                    *got.entry(key).or_default() += count;
                }
            }
        }
        if &got == want || Instant::now() > deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn every_bad_input_gets_its_status_and_reason_and_nothing_acknowledged_is_lost() {
    let mut server = Server::start(
        r#"max_body_size = "8MiB"
max_event_size = "1KiB"
header_timeout = "1s"
body_timeout = "1s"
idempotency_horizon = "1m"
rate_limit = 50
rate_limit_burst = 100
client_header = "x-client-id"
max_connections = 16"#,
        "[log]\npartitions = 2\nfsync = \"every 10ms\"",
    );
    let port = server.port;
    let mut want: BTreeMap<String, i64> = BTreeMap::new();
    let json = "application/json";
    let ndjson = "application/x-ndjson";

    // A single object.
    let r = post(port, "c1", json, event("k-object", T0).as_bytes());
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), serde_json::json!({"accepted": 1, "rejected": []}));
    want.insert("k-object".into(), 1);

    // An array with bad neighbours: wrong type, missing key, oversized event, broken
    // JSON. The good ones go through.
    let body = format!(
        "[{}, {{\"user\":\"k-mixed\",\"ts\":\"late\",\"value\":1}}, {{\"ts\":{T0},\"value\":1}},\n {{\"user\":\"k-mixed\",\"ts\":{T0},\"value\":1,\"pad\":\"{}\"}}, {{\"user\": nope}}, {}]",
        event("k-mixed", T0),
        "x".repeat(2000),
        event("k-mixed", T0 + 1),
    );
    let r = post(port, "c2", json, body.as_bytes());
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["accepted"], 2);
    assert_eq!(rejected_indexes(&r), vec![1, 2, 3, 4]);
    let why = reasons(&r);
    assert!(why[0].contains("ts"), "{}", why[0]);
    assert!(why[1].contains("user"), "{}", why[1]);
    assert!(why[2].contains("max_event_size"), "{}", why[2]);
    assert!(!why[3].is_empty());
    want.insert("k-mixed".into(), 2);
    server.assert_healthy("a mixed array");

    // NDJSON with a line of invalid UTF-8.
    let mut body = b"{\"user\":\"k-utf8\xff\xfe\",\"ts\":1,\"value\":1}\n".to_vec();
    body.extend_from_slice(event("k-utf8", T0).as_bytes());
    let r = post(port, "c3", ndjson, &body);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(rejected_indexes(&r), vec![0]);
    assert!(
        reasons(&r)[0].to_lowercase().contains("utf-8"),
        "{:?}",
        reasons(&r)
    );
    want.insert("k-utf8".into(), 1);

    // Everything invalid: 400 with every reason.
    let r = post(port, "c4", json, b"{\"user\":");
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "all_rejected");
    assert_eq!(rejected_indexes(&r), vec![0]);
    let r = post(
        port,
        "c4",
        json,
        br#"[{"user":"k-none","ts":"x"},{"user":7,"ts":1}]"#,
    );
    assert_eq!(r.status, 400);
    assert_eq!(rejected_indexes(&r), vec![0, 1]);
    assert_eq!(r.json()["accepted"], 0);

    // Empty body, broken array.
    let r = post(port, "c5", json, b"");
    assert_eq!((r.status, r.json()["error"].as_str()), (400, Some("empty")));
    let r = post(port, "c5", json, b" [ ] ");
    assert_eq!(r.status, 400);
    let r = post(
        port,
        "c5",
        json,
        format!("[{},", event("k-never", T0)).as_bytes(),
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "malformed_body");
    assert!(r.message().contains("not closed"), "{}", r.message());
    server.assert_healthy("broken bodies");

    // Wrong content type, unsupported encoding.
    let r = post(port, "c6", "text/plain", event("k-never", T0).as_bytes());
    assert_eq!(r.status, 415);
    assert!(r.message().contains("text/plain"), "{}", r.message());
    let r = post_with(
        port,
        "c6",
        &[("content-type", json), ("content-encoding", "br")],
        event("k-never", T0).as_bytes(),
    );
    assert_eq!(r.status, 415);
    assert!(r.message().contains("br"), "{}", r.message());
    let r = exchange(
        port,
        &request("POST", "/v1/events", &[("x-client-id", "c6")], b"{}"),
    );
    assert_eq!(r.status, 415, "no content type");

    // Body over the limit: refused from its declared length, without reading it.
    let mut s = connect(port);
    s.write_all(b"POST /v1/events HTTP/1.1\r\nhost: t\r\nx-client-id: c7\r\ncontent-type: application/json\r\ncontent-length: 9437184\r\n\r\n")
        .unwrap();
    let mut out = vec![0u8; 4096];
    let n = s.read(&mut out).unwrap();
    let r = parse_response(&out[..n]).unwrap();
    assert_eq!(r.status, 413);
    assert!(r.message().contains("max_body_size"), "{}", r.message());
    // Chunked, no declared length: cut while streaming.
    let mut s = connect(port);
    s.write_all(b"POST /v1/events HTTP/1.1\r\nhost: t\r\nx-client-id: c7\r\ncontent-type: application/x-ndjson\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n")
        .unwrap();
    let chunk = vec![b' '; 1 << 20];
    for _ in 0..9 {
        if s.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .is_err()
            || s.write_all(&chunk).is_err()
            || s.write_all(b"\r\n").is_err()
        {
            break;
        }
    }
    let _ = s.write_all(b"0\r\n\r\n");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    assert_eq!(parse_response(&out).map(|r| r.status), Some(413));

    // A gzip bomb: 1 GiB of zeros in about 1 MiB, refused once 8 MiB are inflated.
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..1024 {
        e.write_all(&zeros).unwrap();
    }
    let bomb = e.finish().unwrap();
    assert!(bomb.len() < 2 << 20);
    let started = Instant::now();
    let r = post_with(
        port,
        "c8",
        &[("content-type", ndjson), ("content-encoding", "gzip")],
        &bomb,
    );
    assert_eq!(r.status, 413);
    assert!(r.message().contains("decompressed"), "{}", r.message());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "stopped early, not after inflating 1 GiB"
    );
    // Truncated gzip.
    let good = gzip(event("k-never", T0).as_bytes());
    let r = post_with(
        port,
        "c8",
        &[("content-type", ndjson), ("content-encoding", "gzip")],
        &good[..good.len() - 10],
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "bad_encoding");
    // Whole gzip and zstd bodies are fine.
    let r = post_with(
        port,
        "c8",
        &[("content-type", ndjson), ("content-encoding", "gzip")],
        &gzip(event("k-gzip", T0).as_bytes()),
    );
    assert_eq!(r.status, 200);
    want.insert("k-gzip".into(), 1);
    let r = post_with(
        port,
        "c8",
        &[("content-type", ndjson), ("content-encoding", "zstd")],
        &zstd::stream::encode_all(event("k-zstd", T0).as_bytes(), 3).unwrap(),
    );
    assert_eq!(r.status, 200);
    want.insert("k-zstd".into(), 1);
    server.assert_healthy("compressed bodies");

    // 100,000 events in one request.
    let big: String = (0..100_000)
        .map(|i| event(&format!("k-big-{}", i % 100), T0 + i % 900) + "\n")
        .collect();
    let r = post(port, "c9", ndjson, big.as_bytes());
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["accepted"], 100_000);
    for i in 0..100 {
        want.insert(format!("k-big-{i}"), 1000);
    }

    // Rate limit: a burst of 100 then 50 events/s for this client. A request larger
    // than the burst is taken from a full bucket and leaves it 200 events in debt, so
    // the next one waits about 4 s whatever the speed of this machine.
    let many: String = (0..300).map(|i| event("k-rate", T0 + i) + "\n").collect();
    let r = post(port, "c10", ndjson, many.as_bytes());
    assert_eq!(r.status, 200);
    want.insert("k-rate".into(), 300);
    let r = post(port, "c10", ndjson, event("k-rate", T0).as_bytes());
    assert_eq!(r.status, 429);
    assert!(r.header("retry-after").unwrap().parse::<u64>().unwrap() >= 3);
    assert!(r.message().contains("rate limit"), "{}", r.message());
    let r = post(port, "c11", ndjson, event("k-other-client", T0).as_bytes());
    assert_eq!(r.status, 200, "another client is not limited");
    want.insert("k-other-client".into(), 1);

    // Idempotency: the retry gets the first answer and adds nothing.
    let five: String = (0..5).map(|i| event("k-idem", T0 + i) + "\n").collect();
    let h = [("content-type", ndjson), ("idempotency-key", "req-1")];
    let first = post_with(port, "c12", &h, five.as_bytes());
    assert_eq!(first.status, 200);
    let again = post_with(port, "c12", &h, five.as_bytes());
    assert_eq!(again.status, 200);
    assert_eq!(again.body, first.body);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    let other = post_with(port, "c12", &h, event("k-idem", T0).as_bytes());
    assert_eq!(other.status, 422, "same key, other body");
    want.insert("k-idem".into(), 5);

    // Methods and paths.
    assert_eq!(get(port, "/v1/events").status, 405);
    assert_eq!(get(port, "/nowhere").status, 404);
    assert_eq!(get(port, "/ready").status, 200);

    // Slowloris: headers trickle; the connection is cut after header_timeout.
    let mut s = connect(port);
    s.write_all(b"POST /v1/events HTTP/1.1\r\nhost: t\r\n")
        .unwrap();
    let started = Instant::now();
    let mut cut = false;
    while started.elapsed() < Duration::from_secs(6) {
        std::thread::sleep(Duration::from_millis(200));
        if s.write_all(b"x-slow: 1\r\n").is_err() {
            cut = true;
            break;
        }
        s.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 512];
        let read = s.read(&mut buf);
        s.set_nonblocking(false).unwrap();
        if read.is_ok() {
            cut = true; // EOF or an error response
            break;
        }
    }
    assert!(cut, "a slowloris client was not cut off");
    assert!(started.elapsed() < Duration::from_secs(4));
    server.assert_healthy("slowloris");

    // A trickling body: 408 after body_timeout.
    let mut s = connect(port);
    s.write_all(b"POST /v1/events HTTP/1.1\r\nhost: t\r\nx-client-id: c13\r\ncontent-type: application/x-ndjson\r\ncontent-length: 1000\r\n\r\n")
        .unwrap();
    let started = Instant::now();
    for _ in 0..30 {
        if s.write_all(b"          ").is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        if started.elapsed() > Duration::from_millis(1500) {
            break;
        }
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let r = parse_response(&out).expect("a 408 response");
    assert_eq!(r.status, 408);
    assert!(r.message().contains("body_timeout"), "{}", r.message());

    // Connections are bounded: the 17th is answered 503 and closed.
    let idle: Vec<_> = (0..16).map(|_| connect(port)).collect();
    std::thread::sleep(Duration::from_millis(100));
    let mut s = connect(port);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let r = parse_response(&out).expect("a 503 response");
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"], "too_many_connections");
    assert!(r.header("retry-after").is_some());
    drop(idle);
    std::thread::sleep(Duration::from_millis(100));
    server.assert_healthy("too many connections");

    // Every acknowledged event is in the sink, once; nothing refused is.
    let got = settle(&server, &want);
    assert_eq!(got, want);
    let (stdout, _) = server.stop();
    assert!(stdout.contains("stopped"), "{stdout}");
    // The rejected events are in the dead-letter queue with their reasons.
    assert!(!dead_letters(server.path(), "p.toml", "wrong_type").is_empty());
    assert!(!dead_letters(server.path(), "p.toml", "missing_field").is_empty());
    assert!(!dead_letters(server.path(), "p.toml", "too_large").is_empty());
}

#[test]
fn a_full_log_and_a_lagging_pipeline_are_503_with_retry_after() {
    // Events of one open window are never committed: the lag grows past max_lag.
    let mut server = Server::start(
        "max_lag = 1000\nretry_after = \"2s\"\nclient_header = \"x-client-id\"",
        "",
    );
    let batch: String = (0..600).map(|i| event("k-lag", T0 + i) + "\n").collect();
    let mut statuses = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let refused = loop {
        let r = post(server.port, "c", "application/x-ndjson", batch.as_bytes());
        statuses.push(r.status);
        if r.status != 200 {
            break r;
        }
        assert!(Instant::now() < deadline, "never refused: {statuses:?}");
        std::thread::sleep(Duration::from_millis(150));
    };
    assert_eq!(refused.status, 503, "{}", refused.message());
    assert_eq!(refused.json()["error"], "lagging");
    assert!(
        refused.message().contains("max_lag"),
        "{}",
        refused.message()
    );
    assert_eq!(refused.header("retry-after"), Some("2"));
    let ready = get(server.port, "/ready");
    assert_eq!(ready.status, 503);
    assert!(ready.json()["reason"].as_str().unwrap().contains("behind"));
    server.assert_healthy("lagging");
    server.stop();

    // A log at its size limit refuses whole requests.
    let mut server = Server::start(
        "client_header = \"x-client-id\"",
        "[log]\npartitions = 3\nsegment_size = \"1MiB\"\nmax_size = \"2MiB\"\nmax_batch_size = \"256KiB\"",
    );
    let batch: String = (0..1000)
        .map(|i| event(&format!("k-full-{}", i % 7), T0 + i) + "\n")
        .collect();
    let mut accepted = 0;
    let refused = loop {
        let r = post(server.port, "c", "application/x-ndjson", batch.as_bytes());
        if r.status != 200 {
            break r;
        }
        accepted += 1;
        assert!(accepted < 1000, "the log never filled");
    };
    assert_eq!(refused.status, 503, "{}", refused.message());
    assert_eq!(refused.json()["error"], "log_full");
    assert!(refused.header("retry-after").is_some());
    assert_eq!(get(server.port, "/ready").status, 503);
    server.assert_healthy("a full log");
    let (stdout, _) = server.stop();
    // Nothing of the refused request went in: the log holds whole requests only.
    let events_in: u64 = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("events in"))
        .and_then(|l| l.split_whitespace().nth(2))
        .map(|n| n.replace(',', "").parse().unwrap())
        .unwrap();
    assert_eq!(events_in, accepted * 1000, "{stdout}");
}

#[test]
fn shutting_down_refuses_new_requests_and_finishes_running_ones() {
    let mut server = Server::start("body_timeout = \"5s\"\nclient_header = \"x-client-id\"", "");
    let port = server.port;
    // A request whose body is still arriving when the stop comes.
    let body = event("k-late-body", T0);
    let mut slow = connect(port);
    slow.write_all(
        format!(
            "POST /v1/events HTTP/1.1\r\nhost: t\r\nx-client-id: a\r\ncontent-type: application/x-ndjson\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .unwrap();
    slow.write_all(&body.as_bytes()[..5]).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let pid = server.child.as_ref().unwrap().id();
    std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
    // New requests are refused while the running one finishes.
    let deadline = Instant::now() + Duration::from_secs(5);
    let refused = loop {
        let r = post(
            port,
            "b",
            "application/x-ndjson",
            event("k-new", T0).as_bytes(),
        );
        if r.status == 503 {
            break r;
        }
        assert!(Instant::now() < deadline, "never refused");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(refused.json()["error"], "shutting_down");
    assert!(refused.header("retry-after").is_some());
    slow.write_all(&body.as_bytes()[5..]).unwrap();
    let mut out = Vec::new();
    let _ = slow.read_to_end(&mut out);
    let r = parse_response(&out).expect("the running request is answered");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let mut child = server.child.take().unwrap();
    let status = wait_timeout(&mut child, Duration::from_secs(20));
    assert!(status.success());
}

#[test]
fn bytes_in_flight_are_bounded() {
    let server = Server::start(
        "max_body_size = \"1MiB\"\nmax_inflight_bytes = \"1MiB\"\nbody_timeout = \"1s\"\nclient_header = \"x-client-id\"",
        "",
    );
    let port = server.port;
    // A request that declares the largest body holds the whole budget while it trickles.
    let mut hog = connect(port);
    hog.write_all(b"POST /v1/events HTTP/1.1\r\nhost: t\r\nx-client-id: hog\r\ncontent-type: application/x-ndjson\r\nconnection: close\r\ncontent-length: 1048576\r\n\r\n  ")
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    // Another request waits for room: it is taken only once the hog is cut off.
    let started = Instant::now();
    let r = post(
        port,
        "b",
        "application/x-ndjson",
        event("k-b", T0).as_bytes(),
    );
    let waited = started.elapsed();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(
        waited >= Duration::from_millis(700),
        "taken after {waited:?}, while the budget was held"
    );
    let mut out = Vec::new();
    let _ = hog.read_to_end(&mut out);
    assert_eq!(parse_response(&out).map(|r| r.status), Some(408));
    // Without a hog there is no wait.
    let started = Instant::now();
    let r = post(
        port,
        "b",
        "application/x-ndjson",
        event("k-b", T0).as_bytes(),
    );
    assert_eq!(r.status, 200);
    assert!(started.elapsed() < Duration::from_millis(700));
}
