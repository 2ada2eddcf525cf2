//! The result of a load run: counts of events and requests, answers by status code,
//! and acknowledgement latency histograms; rendered as a table and as JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;

use super::shape::Shape;
use crate::run::count;

/// A request sent later than this after its due time counts as behind schedule.
pub const BEHIND_THRESHOLD: Duration = Duration::from_millis(10);

/// Why a request got no HTTP answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Failure {
    /// The connection could not be made.
    Connect,
    /// No complete answer within `--timeout`.
    Timeout,
    /// The connection failed otherwise (closed, reset, not HTTP).
    Connection,
}

impl Failure {
    /// The short name, e.g. `connect`.
    pub fn name(self) -> &'static str {
        match self {
            Failure::Connect => "connect",
            Failure::Timeout => "timeout",
            Failure::Connection => "connection",
        }
    }

    /// The row label, e.g. `error: connect`.
    pub fn label(self) -> &'static str {
        match self {
            Failure::Connect => "error: connect",
            Failure::Timeout => "error: timeout",
            Failure::Connection => "error: connection",
        }
    }
}

/// One row of the answers table: an HTTP status or a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Response {
    /// An HTTP answer with this status code.
    Status(u16),
    /// No HTTP answer.
    Failed(Failure),
}

impl std::fmt::Display for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Response::Status(code) => write!(f, "{code}"),
            Response::Failed(failure) => f.write_str(failure.label()),
        }
    }
}

/// What became of the events of one request, after its last attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A 200 (or a 400 rejecting every event): `accepted` events acknowledged,
    /// `rejected` refused one by one.
    Answered {
        /// Events acknowledged.
        accepted: u64,
        /// Events the server rejected individually.
        rejected: u64,
    },
    /// The server refused the whole request (413, 415, 429, 503, ...), or its 200 could
    /// not be read.
    Refused {
        /// Events in the request.
        events: u64,
    },
    /// No answer (connection error or timeout).
    Failed {
        /// Events in the request.
        events: u64,
    },
}

/// A latency histogram in microseconds, 3 significant digits, up to a day.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 86_400_000_000, 3).expect("valid histogram bounds")
}

/// Accumulates what happened in a load run, and renders it.
#[derive(Debug, Clone)]
pub struct Report {
    /// The URL the events went to.
    pub url: String,
    /// The traffic shape's name (`steady`, ... or `unlimited`).
    pub shape: &'static str,
    /// Whether requests had due times (not with an unlimited rate).
    pub paced: bool,
    /// Names of the high-rate phase and the rest, for spike and bursts.
    pub phases: Option<(&'static str, &'static str)>,
    /// From the start of the run to its last answer.
    pub elapsed: Duration,
    requests: u64,
    events: u64,
    accepted: u64,
    rejected: u64,
    refused: u64,
    failed: u64,
    retries: u64,
    behind: u64,
    max_lag: Duration,
    /// 200 answers whose `accepted` disagrees with the events less the rejected ones.
    inconsistent: u64,
    responses: BTreeMap<Response, u64>,
    /// Non-200 answers by (status, `error` kind).
    kinds: BTreeMap<(u16, String), u64>,
    latency: Histogram<u64>,
    latency_high: Histogram<u64>,
    latency_low: Histogram<u64>,
    first_error: Option<String>,
}

impl Report {
    /// An empty report of a run against `url` following `shape` (`None`: as fast as
    /// possible).
    pub fn new(url: &str, shape: Option<&Shape>) -> Report {
        Report {
            url: url.to_owned(),
            shape: shape.map_or("unlimited", Shape::name),
            paced: shape.is_some(),
            phases: shape.and_then(Shape::phase_names),
            elapsed: Duration::ZERO,
            requests: 0,
            events: 0,
            accepted: 0,
            rejected: 0,
            refused: 0,
            failed: 0,
            retries: 0,
            behind: 0,
            max_lag: Duration::ZERO,
            inconsistent: 0,
            responses: BTreeMap::new(),
            kinds: BTreeMap::new(),
            latency: histogram(),
            latency_high: histogram(),
            latency_low: histogram(),
            first_error: None,
        }
    }

    /// A request of `events` events is sent for the first time, `lag` after it was due.
    pub fn sent(&mut self, events: u64, lag: Duration) {
        self.requests += 1;
        self.events += events;
        if lag > BEHIND_THRESHOLD {
            self.behind += 1;
        }
        self.max_lag = self.max_lag.max(lag);
    }

    /// An HTTP answer with `status` (and `error` kind, if any) came `latency` after the
    /// attempt was sent; `high` says if the request belongs to the high-rate phase.
    /// Latency is recorded for 200 answers without an error kind only (a 200 whose body
    /// could not be read is given one by the caller).
    pub fn answer(
        &mut self,
        status: u16,
        error: Option<&str>,
        latency: Duration,
        high: Option<bool>,
    ) {
        *self.responses.entry(Response::Status(status)).or_default() += 1;
        match error {
            Some(kind) => *self.kinds.entry((status, kind.to_owned())).or_default() += 1,
            None if status == 200 => {
                let micros = (latency.as_micros() as u64).max(1);
                self.latency.saturating_record(micros);
                match high {
                    Some(true) => self.latency_high.saturating_record(micros),
                    Some(false) => self.latency_low.saturating_record(micros),
                    None => {}
                }
            }
            None => {}
        }
    }

    /// An attempt got no HTTP answer; `message` describes the first such error.
    pub fn failure(&mut self, failure: Failure, message: &str) {
        *self.responses.entry(Response::Failed(failure)).or_default() += 1;
        if self.first_error.is_none() {
            self.first_error = Some(format!("{}: {message}", failure.name()));
        }
    }

    /// A 200 answer's `accepted` count disagreed with its rejected indexes.
    pub fn inconsistent(&mut self) {
        self.inconsistent += 1;
    }

    /// A refused request (429 or 503) is sent again.
    pub fn retry(&mut self) {
        self.retries += 1;
    }

    /// Records what became of a request's events.
    pub fn outcome(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Answered { accepted, rejected } => {
                self.accepted += accepted;
                self.rejected += rejected;
            }
            Outcome::Refused { events } => self.refused += events,
            Outcome::Failed { events } => self.failed += events,
        }
    }

    /// Events sent so far.
    pub fn events_sent(&self) -> u64 {
        self.events
    }

    /// Events acknowledged so far.
    pub fn accepted(&self) -> u64 {
        self.accepted
    }

    /// HTTP answers of any status so far.
    pub fn answered(&self) -> u64 {
        self.responses
            .iter()
            .filter(|(r, _)| matches!(r, Response::Status(_)))
            .map(|(_, n)| n)
            .sum()
    }

    /// Requests sent later than [`BEHIND_THRESHOLD`] after they were due.
    pub fn behind(&self) -> u64 {
        self.behind
    }

    /// The acknowledgement latency at quantile `q` so far, in milliseconds (0 if none).
    pub fn latency_ms(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64 / 1000.0
    }

    /// The number of answers with this status (or failure).
    #[cfg(test)]
    pub fn responses(&self, response: Response) -> u64 {
        self.responses.get(&response).copied().unwrap_or(0)
    }

    /// `n` per second of the run.
    fn rate(&self, n: u64) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 { n as f64 / secs } else { 0.0 }
    }

    /// The share of requests sent behind schedule.
    fn behind_share(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.behind as f64 / self.requests as f64
        }
    }

    /// The final table, for standard output.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "lungfish load: {} requests to {} in {:.2} s (shape {})",
            count(self.requests),
            self.url,
            self.elapsed.as_secs_f64(),
            self.shape
        );
        let row = |s: &mut String, name: &str, events: String, requests: String| {
            let _ = writeln!(s, "  {name:<24} {events:>14} {requests:>12}");
        };
        row(&mut s, "", "events".into(), "requests".into());
        row(&mut s, "sent", count(self.events), count(self.requests));
        row(
            &mut s,
            "achieved rate (/s)",
            count(self.rate(self.events) as u64),
            count(self.rate(self.requests) as u64),
        );
        row(&mut s, "accepted", count(self.accepted), String::new());
        row(
            &mut s,
            "rejected by the server",
            count(self.rejected),
            String::new(),
        );
        row(
            &mut s,
            "in refused requests",
            count(self.refused),
            String::new(),
        );
        row(
            &mut s,
            "in failed requests",
            count(self.failed),
            String::new(),
        );
        if self.retries > 0 {
            row(&mut s, "retries", String::new(), count(self.retries));
        }
        if self.paced {
            let _ = writeln!(
                s,
                "  {:<24} {:>13.1}% of requests (more than {} ms late; at most {:.1} ms)",
                "behind schedule",
                100.0 * self.behind_share(),
                BEHIND_THRESHOLD.as_millis(),
                self.max_lag.as_secs_f64() * 1000.0
            );
        }
        let _ = writeln!(
            s,
            "  {:<24} {:>9} {:>9} {:>9} {:>9} {:>9} {:>11}",
            "ack latency (ms, 200s)", "p50", "p90", "p99", "p99.9", "max", "answers"
        );
        let mut latency_row = |name: &str, h: &Histogram<u64>| {
            let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
            let _ = writeln!(
                s,
                "  {name:<24} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>11}",
                ms(0.5),
                ms(0.9),
                ms(0.99),
                ms(0.999),
                h.max() as f64 / 1000.0,
                count(h.len())
            );
        };
        latency_row("all", &self.latency);
        if let Some((high, low)) = self.phases {
            latency_row(high, &self.latency_high);
            latency_row(low, &self.latency_low);
        }
        let _ = writeln!(s, "  answers");
        for (response, n) in &self.responses {
            let kinds = match response {
                Response::Status(code) => self
                    .kinds
                    .iter()
                    .filter(|((c, kind), _)| c == code && !kind.is_empty())
                    .map(|((_, kind), n)| format!("{kind} {}", count(*n)))
                    .collect::<Vec<_>>()
                    .join(", "),
                Response::Failed(_) => String::new(),
            };
            let _ = writeln!(
                s,
                "    {:<22} {:>14}  {kinds}",
                response.to_string(),
                count(*n)
            );
        }
        if self.responses.is_empty() {
            let _ = writeln!(s, "    (none)");
        }
        if self.inconsistent > 0 {
            let _ = writeln!(
                s,
                "  warning: {} answers' \"accepted\" disagreed with their \"rejected\" list",
                count(self.inconsistent)
            );
        }
        if let Some(e) = &self.first_error {
            let _ = writeln!(s, "  first error: {e}");
        }
        // Trailing spaces of rows without kinds.
        s.lines().map(|l| l.trim_end().to_owned() + "\n").collect()
    }

    /// The report as JSON, for scripts and tests.
    pub fn to_json(&self) -> serde_json::Value {
        let latency = |h: &Histogram<u64>| {
            let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
            serde_json::json!({
                "count": h.len(),
                "p50": ms(0.5),
                "p90": ms(0.9),
                "p99": ms(0.99),
                "p999": ms(0.999),
                "max": h.max() as f64 / 1000.0,
            })
        };
        let responses: serde_json::Map<String, serde_json::Value> = self
            .responses
            .iter()
            .map(|(r, n)| (r.to_string(), (*n).into()))
            .collect();
        let kinds: serde_json::Map<String, serde_json::Value> = self
            .kinds
            .iter()
            .filter(|((_, kind), _)| !kind.is_empty())
            .map(|((code, kind), n)| (format!("{code} {kind}"), (*n).into()))
            .collect();
        let (high, low) = match self.phases {
            Some(_) => (latency(&self.latency_high), latency(&self.latency_low)),
            None => (serde_json::Value::Null, serde_json::Value::Null),
        };
        serde_json::json!({
            "url": self.url,
            "shape": self.shape,
            "elapsed_s": self.elapsed.as_secs_f64(),
            "requests_sent": self.requests,
            "events_sent": self.events,
            "events_per_s": self.rate(self.events),
            "requests_per_s": self.rate(self.requests),
            "accepted": self.accepted,
            "rejected": self.rejected,
            "refused_events": self.refused,
            "failed_events": self.failed,
            "retries": self.retries,
            "behind_schedule": self.paced.then(|| self.behind_share()),
            "max_lag_ms": self.paced.then_some(self.max_lag.as_secs_f64() * 1000.0),
            "inconsistent_answers": self.inconsistent,
            "latency_ms": latency(&self.latency),
            "latency_high_ms": high,
            "latency_low_ms": low,
            "responses": responses,
            "error_kinds": kinds,
            "first_error": self.first_error,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Report {
        let spike = Shape::Spike {
            rate: 1000.0,
            factor: 20.0,
            at: 10.0,
            length: 10.0,
        };
        let mut r = Report::new("http://127.0.0.1:1/v1/events", Some(&spike));
        for i in 0..10u64 {
            r.sent(1000, Duration::from_millis(if i < 3 { 50 } else { 1 }));
        }
        for i in 0..7u64 {
            r.answer(200, None, Duration::from_millis(2 + i), Some(i >= 5));
            r.outcome(Outcome::Answered {
                accepted: 990,
                rejected: 10,
            });
        }
        r.answer(
            400,
            Some("all_rejected"),
            Duration::from_millis(1),
            Some(false),
        );
        r.outcome(Outcome::Answered {
            accepted: 0,
            rejected: 1000,
        });
        r.answer(
            429,
            Some("overloaded"),
            Duration::from_millis(1),
            Some(true),
        );
        r.outcome(Outcome::Refused { events: 1000 });
        r.failure(Failure::Timeout, "no answer in 30s");
        r.outcome(Outcome::Failed { events: 1000 });
        r.elapsed = Duration::from_secs(2);
        r
    }

    #[test]
    fn counts_add_up() {
        let r = sample();
        assert_eq!(r.events_sent(), 10_000);
        assert_eq!(r.accepted(), 6930);
        assert_eq!(r.answered(), 9);
        assert_eq!(r.behind(), 3);
        assert_eq!(r.responses(Response::Status(200)), 7);
        assert_eq!(r.responses(Response::Failed(Failure::Timeout)), 1);
        // 2..=8 ms: the median of seven is 5 ms.
        assert!(
            (r.latency_ms(0.5) - 5.0).abs() < 0.01,
            "{}",
            r.latency_ms(0.5)
        );
        assert_eq!(r.latency_high.len(), 2);
        assert_eq!(r.latency_low.len(), 5);
    }

    #[test]
    fn table_shows_statuses_kinds_and_phases() {
        let text = sample().render();
        for needle in [
            "10 requests to http://127.0.0.1:1/v1/events in 2.00 s (shape spike)",
            "due in the spike",
            "due outside the spike",
            "error: timeout",
            "overloaded 1",
            "all_rejected 1",
            "first error: timeout: no answer in 30s",
        ] {
            assert!(text.contains(needle), "{needle:?} not in\n{text}");
        }
        let line = |start: &str| {
            text.lines()
                .find(|l| l.trim_start().starts_with(start))
                .unwrap_or_else(|| panic!("no {start:?} row in\n{text}"))
                .split_whitespace()
                .collect::<Vec<_>>()
        };
        assert_eq!(line("sent"), ["sent", "10,000", "10"]);
        assert_eq!(
            line("achieved rate"),
            ["achieved", "rate", "(/s)", "5,000", "5"]
        );
        assert_eq!(line("accepted"), ["accepted", "6,930"]);
        assert_eq!(
            line("rejected by"),
            ["rejected", "by", "the", "server", "1,070"]
        );
        assert_eq!(line("in refused"), ["in", "refused", "requests", "1,000"]);
        assert_eq!(line("in failed"), ["in", "failed", "requests", "1,000"]);
        assert_eq!(line("200 "), ["200", "7"]);
        assert_eq!(line("429"), ["429", "1", "overloaded", "1"]);
        assert_eq!(line("behind")[2], "30.0%");
        assert!(!text.lines().any(|l| l.ends_with(' ')));
    }

    #[test]
    fn json_report_has_the_same_numbers() {
        let j = sample().to_json();
        assert_eq!(j["events_sent"], 10_000);
        assert_eq!(j["accepted"], 6930);
        assert_eq!(j["rejected"], 1070);
        assert_eq!(j["refused_events"], 1000);
        assert_eq!(j["failed_events"], 1000);
        assert_eq!(j["responses"]["200"], 7);
        assert_eq!(j["responses"]["429"], 1);
        assert_eq!(j["responses"]["error: timeout"], 1);
        assert_eq!(j["error_kinds"]["400 all_rejected"], 1);
        assert_eq!(j["events_per_s"], 5000.0);
        assert_eq!(j["latency_ms"]["count"], 7);
        assert_eq!(j["latency_high_ms"]["count"], 2);
        assert!((j["behind_schedule"].as_f64().unwrap() - 0.3).abs() < 1e-9);
    }

    #[test]
    fn steady_report_has_no_phase_rows() {
        let mut r = Report::new("http://h/v1/events", Some(&Shape::Steady { rate: 1.0 }));
        r.sent(1, Duration::ZERO);
        r.answer(200, None, Duration::from_micros(300), None);
        let text = r.render();
        assert!(!text.contains("spike") && !text.contains("burst"));
        assert!(text.contains("behind schedule"));
        assert!(r.to_json()["latency_high_ms"].is_null());
    }

    #[test]
    fn a_200_with_an_error_kind_is_listed_but_not_timed() {
        let mut r = Report::new("http://h/v1/events", None);
        r.answer(200, None, Duration::from_millis(3), None);
        r.answer(
            200,
            Some("unreadable answer"),
            Duration::from_millis(9),
            None,
        );
        assert_eq!(r.responses(Response::Status(200)), 2);
        assert_eq!(r.latency.len(), 1);
        assert_eq!(r.to_json()["error_kinds"]["200 unreadable answer"], 1);
        assert!(r.render().contains("unreadable answer 1"));
    }

    #[test]
    fn unpaced_report_has_no_schedule() {
        let mut r = Report::new("http://h/v1/events", None);
        r.sent(1, Duration::from_secs(1));
        let text = r.render();
        assert!(text.contains("shape unlimited"), "{text}");
        assert!(!text.contains("behind"), "{text}");
        assert!(r.to_json()["behind_schedule"].is_null());
    }
}
