//! The enrichment client against a real loopback HTTP service (`support/partner.rs`)
//! with the real ureq client: answers by GET and POST, the cache and its TTL, a partner
//! that slows down (the limit drops, the breaker opens and closes again), one that fails
//! now and then (retries within the budget), and one that is down.
#![cfg(feature = "enrich")]

#[path = "support/partner.rs"]
mod partner;

use std::time::{Duration, Instant};

use lungfish::breaker::{BreakerSettings, BreakerState};
use lungfish::concurrency::LimitSettings;
use lungfish::enrich::{EnrichClient, EnrichSettings, Lookup, Method};
use lungfish::retry::BudgetSettings;
use partner::Partner;

fn settings(partner: &Partner, method: Method) -> EnrichSettings {
    EnrichSettings {
        url: partner.url(),
        method,
        fields: vec!["weight".into(), "tier".into(), "label".into()],
        ..EnrichSettings::default()
    }
}

/// Asserts `answer` is the partner's answer for `key`: weight, tier, and NaN for the
/// `label` field (a string, not a number).
fn assert_found(key: &[u8], answer: &Lookup) {
    let Lookup::Found(values) = answer else {
        panic!("{}: {answer:?}", String::from_utf8_lossy(key));
    };
    let (weight, tier) = Partner::fields_of(key);
    assert_eq!(values.len(), 3);
    assert_eq!(
        values[0],
        weight,
        "weight of {}",
        String::from_utf8_lossy(key)
    );
    assert_eq!(values[1], tier, "tier of {}", String::from_utf8_lossy(key));
    assert!(values[2].is_nan(), "label is not a number: NaN");
}

fn keys(prefix: &str, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| format!("{prefix}-{i}").into_bytes())
        .collect()
}

fn refs(keys: &[Vec<u8>]) -> Vec<&[u8]> {
    keys.iter().map(Vec::as_slice).collect()
}

#[test]
fn get_and_post_answer_fields_and_not_found_once_per_distinct_key_then_from_the_cache() {
    let batch: Vec<&[u8]> = vec![
        b"a",
        b"bb",
        b"unknown-1",
        b"a",
        "c d&e=f/\u{e9}".as_bytes(),
        b"bb",
        b"unknown-1",
    ];
    for method in [Method::Get, Method::Post] {
        let partner = Partner::start();
        let client = EnrichClient::new(
            "test",
            EnrichSettings {
                batch_keys: 2,
                ..settings(&partner, method)
            },
        )
        .unwrap();
        let mut out = Vec::new();
        client.lookup(&batch, &mut out);
        assert_eq!(out.len(), batch.len(), "{method:?}");
        for (key, answer) in batch.iter().zip(&out) {
            if key.starts_with(b"unknown") {
                assert_eq!(*answer, Lookup::NotFound, "{method:?}");
            } else {
                assert_found(key, answer);
            }
        }
        // 4 distinct keys: asked once each; GET one per call, POST two per call.
        assert_eq!(partner.keys_asked(), 4, "{method:?}");
        let calls = match method {
            Method::Get => 4,
            Method::Post => 2,
        };
        assert_eq!(partner.requests(), calls, "{method:?}");
        let stats = client.stats();
        assert_eq!((stats.hits, stats.misses), (0, 4), "{method:?}");
        assert_eq!(stats.calls, calls, "{method:?}");
        assert_eq!((stats.failures, stats.retries), (0, 0), "{method:?}");

        // Again: all from the cache (found and not found alike), no call.
        let mut again = Vec::new();
        client.lookup(&batch, &mut again);
        assert_eq!(format!("{again:?}"), format!("{out:?}"), "{method:?}");
        assert_eq!(
            partner.requests(),
            calls,
            "{method:?}: no call on a cached batch"
        );
        let stats = client.stats();
        assert_eq!((stats.hits, stats.misses), (4, 4), "{method:?}");

        // An empty batch makes nothing.
        client.lookup(&[], &mut again);
        assert!(again.is_empty());
    }
}

#[test]
fn a_cached_answer_is_fetched_again_after_its_ttl() {
    let partner = Partner::start();
    let ttl = Duration::from_millis(300);
    let client = EnrichClient::new(
        "ttl",
        EnrichSettings {
            cache_ttl: ttl,
            ..settings(&partner, Method::Get)
        },
    )
    .unwrap();
    let mut out = Vec::new();
    let fetched = Instant::now();
    client.lookup(&[b"k", b"unknown-k"], &mut out);
    assert_found(b"k", &out[0]);
    assert_eq!(out[1], Lookup::NotFound);
    assert_eq!(partner.requests(), 2);
    client.lookup(&[b"k", b"unknown-k"], &mut out);
    if fetched.elapsed() < ttl {
        assert_eq!(partner.requests(), 2, "within the ttl: from the cache");
    }
    // Past the ttl, both are asked again (once).
    let deadline = Instant::now() + Duration::from_secs(5);
    while partner.requests() < 4 {
        assert!(Instant::now() < deadline, "not fetched again after the ttl");
        std::thread::sleep(Duration::from_millis(50));
        client.lookup(&[b"k", b"unknown-k"], &mut out);
    }
    assert!(fetched.elapsed() >= ttl, "fetched again before the ttl");
    assert_eq!(partner.requests(), 4);
    assert_found(b"k", &out[0]);
    assert_eq!(out[1], Lookup::NotFound);
}

#[test]
fn a_slow_partner_lowers_the_limit_opens_the_breaker_and_hot_keys_stay_served() {
    let started = Instant::now();
    let partner = Partner::start();
    partner.set_latency(Duration::from_millis(40));
    let client = EnrichClient::new(
        "slow",
        EnrichSettings {
            timeout: Duration::from_millis(500),
            limit: LimitSettings {
                min: 1,
                max: 16,
                initial: 8,
                ..LimitSettings::default()
            },
            breaker: BreakerSettings {
                window: 20,
                min_calls: 5,
                failure_ratio: 0.5,
                slow_call: Duration::from_millis(300),
                slow_ratio: 0.5,
                open_for: Duration::from_secs(1),
                max_open_for: Duration::from_secs(2),
                probes: 2,
            },
            ..settings(&partner, Method::Get)
        },
    )
    .unwrap();
    let mut out = Vec::new();

    // 40 ms answers: hot keys fetched and cached; the limit has room.
    let hot = keys("hot", 40);
    client.lookup(&refs(&hot), &mut out);
    for (key, answer) in hot.iter().zip(&out) {
        assert_found(key, answer);
    }
    let before = client.stats();
    assert_eq!(before.breaker, BreakerState::Closed);
    assert!(before.limit >= 2, "{before:?}");

    // 800 ms answers, 500 ms timeout: calls time out (failed and slow), the limit
    // drops and the breaker opens.
    partner.set_latency(Duration::from_millis(800));
    let cold = keys("cold", 16);
    client.lookup(&refs(&cold), &mut out);
    for answer in &out {
        assert!(matches!(answer, Lookup::Unavailable(_)), "{answer:?}");
    }
    let after = client.stats();
    assert!(
        matches!(after.breaker, BreakerState::Open { .. }),
        "{after:?}"
    );
    assert!(after.limit < before.limit, "{before:?} -> {after:?}");
    assert!(after.failures >= 5, "{after:?}");

    // While open: uncached keys are unavailable with no request reaching the partner;
    // hot keys still come from the cache.
    let requests = partner.requests();
    let colder = keys("colder", 10);
    let mut mixed = refs(&colder);
    mixed.extend(refs(&hot[..10]));
    client.lookup(&mixed, &mut out);
    for (key, answer) in mixed.iter().zip(&out) {
        if key.starts_with(b"hot") {
            assert_found(key, answer);
        } else {
            match answer {
                Lookup::Unavailable(reason) => {
                    assert!(reason.starts_with("circuit open"), "{reason}");
                }
                other => panic!("{other:?}"),
            }
        }
    }
    assert_eq!(
        partner.requests(),
        requests,
        "no call while the breaker is open"
    );
    assert!(client.stats().rejected >= 1);

    // Healed: once the open period has passed, probes go through and close it.
    partner.set_latency(Duration::from_millis(40));
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut n = 0;
    loop {
        assert!(
            Instant::now() < deadline,
            "never closed: {:?}",
            client.stats()
        );
        let key = format!("probe-{n}").into_bytes();
        n += 1;
        client.lookup(&[&key], &mut out);
        if client.stats().breaker == BreakerState::Closed {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let fresh = keys("fresh", 20);
    client.lookup(&refs(&fresh), &mut out);
    for (key, answer) in fresh.iter().zip(&out) {
        assert_found(key, answer);
    }
    assert_eq!(client.stats().breaker, BreakerState::Closed);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn retries_of_failed_calls_stay_within_the_budget_and_answers_are_never_wrong() {
    let partner = Partner::start();
    partner.set_failure_every(10);
    let budget = BudgetSettings {
        ratio: 0.1,
        min_per_second: 1.0,
        window: Duration::from_secs(10),
    };
    let client = EnrichClient::new(
        "flaky",
        EnrichSettings {
            retry: budget,
            breaker: BreakerSettings {
                min_calls: 50,
                window: 100,
                ..BreakerSettings::default()
            },
            ..settings(&partner, Method::Get)
        },
    )
    .unwrap();
    let mut out = Vec::new();
    let mut found = 0;
    let mut unavailable = 0;
    for round in 0..6 {
        let batch = keys(&format!("r{round}"), 50);
        client.lookup(&refs(&batch), &mut out);
        for (key, answer) in batch.iter().zip(&out) {
            match answer {
                Lookup::Found(_) => {
                    assert_found(key, answer);
                    found += 1;
                }
                Lookup::Unavailable(reason) => {
                    assert!(reason.contains("500"), "{reason}");
                    unavailable += 1;
                }
                Lookup::NotFound => panic!("{key:?} is known"),
            }
        }
    }
    let stats = client.stats();
    assert_eq!(found + unavailable, 300);
    assert!(
        found >= 270,
        "{found} found, {unavailable} unavailable; {stats:?}"
    );
    assert!(stats.failures >= 25, "{stats:?}");
    assert!(stats.retries >= 1, "{stats:?}");
    // Every call reached the partner, and each failure was retried at most once.
    assert_eq!(stats.calls, partner.requests());
    assert!(stats.retries <= stats.failures, "{stats:?}");
    let allowed =
        budget.ratio * stats.calls as f64 + budget.min_per_second * budget.window.as_secs_f64();
    assert!(
        stats.retries as f64 <= allowed,
        "{} retries for {} calls",
        stats.retries,
        stats.calls
    );
    // Whatever was not found was unavailable: failures not retried, or failed twice.
    assert_eq!(stats.breaker, BreakerState::Closed);
}

#[test]
fn a_down_partner_is_unavailable_with_its_status_and_nothing_is_cached() {
    let partner = Partner::start();
    partner.set_down(true);
    let client = EnrichClient::new(
        "down",
        EnrichSettings {
            method: Method::Post,
            ..settings(&partner, Method::Post)
        },
    )
    .unwrap();
    let mut out = Vec::new();
    client.lookup(&[b"a", b"unknown-b"], &mut out);
    for answer in &out {
        match answer {
            Lookup::Unavailable(reason) => assert!(reason.contains("HTTP 503"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }
    let stats = client.stats();
    assert_eq!(stats.calls, 2, "one call and its retry: {stats:?}");
    assert_eq!((stats.failures, stats.retries), (2, 1));
    // Back up: asked again (nothing was cached), answered.
    partner.set_down(false);
    client.lookup(&[b"a", b"unknown-b"], &mut out);
    assert_found(b"a", &out[0]);
    assert_eq!(out[1], Lookup::NotFound);
    assert_eq!(partner.requests(), 3);
}
