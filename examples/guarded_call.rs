//! An outside call wrapped in a timeout, a retry budget, a circuit breaker and an
//! adaptive concurrency limit, with one [`CallGuard`].
//!
//! A partner API (an axum server on a loopback port, started by the example) answers in
//! about 40 ms and fails one request in ten with a 503. Then it stalls: every answer
//! takes 800 ms. Then it heals. 32 tasks call it all along through one shared guard:
//!
//! * while it is healthy, the one-in-ten 503s are retried (full-jitter backoff, drawn
//!   from the retry budget), so callers see almost no failure;
//! * when it stalls, attempts time out at 200 ms, the breaker opens, and calls fail
//!   fast (`GuardError::Open`) instead of piling up: the partner receives far fewer
//!   requests than callers make, and no caller waits longer than its bound;
//! * once it heals, probes close the breaker and calls succeed again.
//!
//! The example asserts each of these and prints the counts. Run it with:
//!
//! ```text
//! cargo run -p lungfish --example guarded_call
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use lungfish::breaker::BreakerSettings;
use lungfish::concurrency::LimitSettings;
use lungfish::guard::{CallGuard, GuardError, GuardSettings};
use lungfish::retry::BudgetSettings;

const HEALTHY: u8 = 0;
const STALLED: u8 = 1;

/// The partner: its mode, and how many requests reached it.
struct Partner {
    mode: AtomicU8,
    received: AtomicU64,
}

async fn score(State(partner): State<Arc<Partner>>) -> (StatusCode, &'static str) {
    let n = partner.received.fetch_add(1, Ordering::Relaxed);
    if partner.mode.load(Ordering::Relaxed) == STALLED {
        tokio::time::sleep(Duration::from_millis(800)).await;
        return (StatusCode::OK, "42");
    }
    tokio::time::sleep(Duration::from_millis(40)).await;
    if n % 10 == 7 {
        (StatusCode::SERVICE_UNAVAILABLE, "busy")
    } else {
        (StatusCode::OK, "42")
    }
}

/// What the callers saw in one phase.
#[derive(Debug, Default)]
struct Seen {
    ok: u64,
    open: u64,
    overloaded: u64,
    timed_out: u64,
    failed: u64,
    slowest: Duration,
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

/// One call to the partner: `Err` with the status for anything but 200.
async fn call_partner(client: &HttpClient, url: &str) -> Result<String, String> {
    let response = client
        .get(url.parse().unwrap())
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    if status == StatusCode::OK {
        Ok(String::from_utf8_lossy(&body).into_owned())
    } else {
        Err(format!("partner answered {status}"))
    }
}

/// 32 tasks calling through `guard` for `length`.
async fn phase(guard: &Arc<CallGuard>, client: &HttpClient, url: &str, length: Duration) -> Seen {
    let until = Instant::now() + length;
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let (guard, client, url) = (guard.clone(), client.clone(), url.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut seen = Seen::default();
            while Instant::now() < until {
                let started = Instant::now();
                let outcome = guard.call(|| call_partner(&client, &url)).await;
                seen.slowest = seen.slowest.max(started.elapsed());
                match outcome {
                    Ok(_) => seen.ok += 1,
                    Err(GuardError::Open { retry_in }) => {
                        seen.open += 1;
                        // Come back when the breaker may let a probe through.
                        tokio::time::sleep(retry_in.min(Duration::from_millis(100))).await;
                    }
                    Err(GuardError::Overloaded { .. }) => seen.overloaded += 1,
                    Err(GuardError::TimedOut { .. }) => seen.timed_out += 1,
                    Err(GuardError::Failed { .. }) => seen.failed += 1,
                }
            }
            seen
        }));
    }
    let mut all = Seen::default();
    for t in tasks {
        let s = t.await.unwrap();
        all.ok += s.ok;
        all.open += s.open;
        all.overloaded += s.overloaded;
        all.timed_out += s.timed_out;
        all.failed += s.failed;
        all.slowest = all.slowest.max(s.slowest);
    }
    all
}

#[tokio::main]
async fn main() {
    let partner = Arc::new(Partner {
        mode: AtomicU8::new(HEALTHY),
        received: AtomicU64::new(0),
    });
    let app = Router::new()
        .route("/score", get(score))
        .with_state(partner.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/score", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let settings = GuardSettings {
        timeout: Duration::from_millis(200),
        max_attempts: 3,
        backoff_base: Duration::from_millis(10),
        backoff_max: Duration::from_millis(100),
        queue_timeout: Duration::from_millis(500),
        budget: BudgetSettings {
            ratio: 0.2,
            min_per_second: 5.0,
            window: Duration::from_secs(5),
        },
        breaker: BreakerSettings {
            window: 40,
            min_calls: 20,
            failure_ratio: 0.5,
            slow_call: Duration::from_millis(150),
            slow_ratio: 0.8,
            open_for: Duration::from_millis(250),
            max_open_for: Duration::from_secs(1),
            // One probe: with one answer in ten a 503, three in a row would often
            // reopen a breaker over a healthy partner.
            probes: 1,
        },
        limit: LimitSettings {
            min: 2,
            max: 64,
            initial: 16,
            ..LimitSettings::default()
        },
    };
    let guard = Arc::new(CallGuard::new(settings).named("partner"));
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    // The longest a call may take: 3 attempts, each with its queue wait, 2 backoffs.
    let bound = settings.max_call_time();

    let healthy = phase(&guard, &client, &url, Duration::from_secs(2)).await;
    println!(
        "guarded_call: healthy: {healthy:?}, limit {}",
        guard.limit()
    );

    partner.mode.store(STALLED, Ordering::Relaxed);
    let before = partner.received.load(Ordering::Relaxed);
    let stalled = phase(&guard, &client, &url, Duration::from_secs(3)).await;
    let reached = partner.received.load(Ordering::Relaxed) - before;
    let calls = stalled.ok + stalled.open + stalled.overloaded + stalled.timed_out + stalled.failed;
    println!(
        "guarded_call: stalled: {stalled:?}, limit {}; {calls} calls, {reached} reached the partner",
        guard.limit()
    );

    partner.mode.store(HEALTHY, Ordering::Relaxed);
    // Let the breaker's open period pass, then give the callers 4 s.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let healed = phase(&guard, &client, &url, Duration::from_secs(4)).await;
    println!("guarded_call: healed: {healed:?}, limit {}", guard.limit());

    let share =
        |s: &Seen| s.ok as f64 / (s.ok + s.open + s.overloaded + s.timed_out + s.failed) as f64;
    assert!(
        share(&healthy) > 0.97,
        "retries hide the one-in-ten 503s: {healthy:?}"
    );
    assert!(stalled.open > 0, "the breaker opened: {stalled:?}");
    assert!(
        reached * 2 < calls,
        "failing fast spared the partner: {reached} of {calls} calls reached it"
    );
    // A probe that meets one of the 503s reopens the breaker for up to 1 s more.
    assert!(
        healed.ok >= 300 && healed.timed_out == 0,
        "calls succeed again once healed: {healed:?}"
    );
    for s in [&healthy, &stalled, &healed] {
        assert!(
            s.slowest <= bound + Duration::from_millis(250),
            "no call waits past its bound ({bound:?}): {s:?}"
        );
    }
    println!("guarded_call: ok");
}
