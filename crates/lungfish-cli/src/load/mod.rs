//! `lungfish load`: an HTTP load generator for the `http` source.
//!
//! It POSTs seeded generator events (the same `{"id":"NAME-i","user":"u-K","ts":T,
//! "value":V}` lines as `lungfish generate`, with event index `i` increasing across the
//! whole run, so ids are unique) to a URL in requests of `--events-per-request` events,
//! following a traffic shape (steady, a spike, periodic bursts or a sine), and reports
//! the achieved rates, what the server answered and how long acknowledgements took.
//!
//! # Pacing
//!
//! The schedule is open-loop: the request that completes event `n` is due when the
//! shape says `n` events should have been sent ([`shape::Shape::time_of_event`]), no
//! matter how the server is doing. A fixed pool of `--concurrency` tasks takes the
//! requests in order, builds each body (before its due time, reusing buffers), waits
//! until it is due and sends it. When every task is busy waiting for answers, the next
//! requests go out late: the schedule does not stretch, and the report shows the share of
//! requests sent more than 10 ms after they were due. With `--rate 0` requests go out
//! as fast as the tasks can send them.
//!
//! # Latency
//!
//! Acknowledgement latency is measured from the moment an attempt was *sent* (not from
//! its due time) to the moment its answer was completely read, for 200 answers, in an
//! HDR histogram (microseconds, 3 significant digits). A request resent after a 429 or
//! 503 (`--retry-503`) is measured from its last sending. For the spike and bursts
//! shapes the report also splits the latency by phase: a request belongs to the
//! high-rate phase if its middle event is due in it, even if it is sent late.
//!
//! An event is *acknowledged* when it was in a request answered 200 and is not in the
//! answer's `rejected` list; `--acked-ids` writes those ids to a file, so a test can
//! check that every acknowledged event survived a crash.

mod report;
mod request;
mod shape;

use std::io::{IsTerminal, Write};
use std::ops::Range;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use bytes::Bytes;
use http::header::{CONTENT_ENCODING, CONTENT_TYPE, HeaderName, HeaderValue, RETRY_AFTER};
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use indicatif::{ProgressBar, ProgressStyle};
use lungfish::codec::json::FieldNames;
use lungfish::config::units::{format_duration, parse_duration};
use lungfish::config::{GeneratorConfig, KeyDistribution};
use lungfish::sources::generator::EventWriter;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use report::{Failure, Outcome, Report};
use request::{Answer, BodyFormat, Encoding, RequestBuilder, write_acked_ids};
use shape::Shape;

use crate::run::count;

/// How often a request refused with 429 or 503 is sent again with `--retry-503`.
const MAX_RETRIES: u32 = 5;
/// The longest `Retry-After` wait honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(5);
/// The wait before a retry when the answer has no (numeric) `Retry-After`.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);
/// The largest answer body read; a longer one is a connection error.
const MAX_ANSWER_BYTES: usize = 16 << 20;
/// The duration of a run given neither `--duration` nor `--count`.
const DEFAULT_DURATION: Duration = Duration::from_secs(10);
/// Event-time density of the events when the rate is unlimited.
const UNLIMITED_EVENTS_PER_SECOND: u64 = 100_000;

/// The traffic shapes of `--shape`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ShapeKind {
    /// A constant rate.
    Steady,
    /// The rate times `--spike-factor` for `--spike-for` from `--spike-at`.
    Spike,
    /// The rate times `--spike-factor` for `--burst-for` every `--burst-every`.
    Bursts,
    /// The rate times `1 + amplitude * sin(2πt / period)`.
    Sine,
}

/// The key distributions of `--distribution`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Distribution {
    /// Every key equally likely.
    Uniform,
    /// A few hot keys and a long tail (Zipf's law).
    Zipf,
}

/// Reads a human duration (`500ms`, `10s`, `2m`) for clap.
fn duration_arg(text: &str) -> Result<Duration, String> {
    parse_duration(text).map_err(|e| e.to_string())
}

/// Arguments of `lungfish load`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Where to POST the events, e.g. `http://127.0.0.1:8080/v1/events` (without a path:
    /// `/v1/events`; without a scheme: `http://`).
    pub url: String,
    /// Base rate in events per second (0: as fast as the concurrency allows).
    #[arg(long, default_value_t = 100_000)]
    pub rate: u64,
    /// Stop sending after this long (e.g. `500ms`, `10s`, `2m`). Without it and
    /// without --count: 10s.
    #[arg(long, value_parser = duration_arg)]
    pub duration: Option<Duration>,
    /// Stop after this many events (with --duration: whichever comes first).
    #[arg(long)]
    pub count: Option<u64>,
    /// Events in one request.
    #[arg(long, default_value_t = 1000)]
    pub events_per_request: u64,
    /// Requests in flight at most (a fixed pool of tasks).
    #[arg(long, default_value_t = 8)]
    pub concurrency: u64,
    /// Body format: JSON lines or one JSON array (with --malformed, a broken event
    /// can make the whole array invalid).
    #[arg(long, value_enum, default_value_t = BodyFormat::Ndjson)]
    pub format: BodyFormat,
    /// Body compression (sets Content-Encoding).
    #[arg(long, value_enum, default_value_t = Encoding::Identity)]
    pub encoding: Encoding,
    /// Send `Idempotency-Key: NAME-SEED-N` with request number N.
    #[arg(long)]
    pub idempotency_keys: bool,
    /// Send this `X-Client-Id` header.
    #[arg(long)]
    pub client_id: Option<String>,
    /// Give up on a request with no complete answer after this long.
    #[arg(long, value_parser = duration_arg, default_value = "30s")]
    pub timeout: Duration,
    /// On 429 or 503, wait `Retry-After` (at most 5 s) and send the same request again,
    /// up to 5 times (default: count it as refused and go on).
    #[arg(long)]
    pub retry_503: bool,
    /// Append the id of every acknowledged event to this file, one a line (fsynced at
    /// the end).
    #[arg(long)]
    pub acked_ids: Option<PathBuf>,
    /// Also write the final report as JSON to this file.
    #[arg(long)]
    pub json_report: Option<PathBuf>,
    /// No progress bar, even on a terminal.
    #[arg(long)]
    pub no_progress: bool,
    /// The traffic shape (boxed, like `events`, to keep `Args` small).
    #[command(flatten)]
    pub traffic: Box<ShapeArgs>,
    /// What the events look like.
    #[command(flatten)]
    pub events: Box<EventArgs>,
}

/// The traffic-shape arguments of `lungfish load`.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Traffic shape")]
pub struct ShapeArgs {
    /// Traffic shape.
    #[arg(long, value_enum, default_value_t = ShapeKind::Steady)]
    pub shape: ShapeKind,
    /// Rate multiplier during a spike or a burst.
    #[arg(long, default_value_t = 20.0)]
    pub spike_factor: f64,
    /// When the spike starts.
    #[arg(long, value_parser = duration_arg, default_value = "10s")]
    pub spike_at: Duration,
    /// How long the spike lasts.
    #[arg(long, value_parser = duration_arg, default_value = "10s")]
    pub spike_for: Duration,
    /// Period of the bursts (the first starts after one period).
    #[arg(long, value_parser = duration_arg, default_value = "5s")]
    pub burst_every: Duration,
    /// How long a burst lasts.
    #[arg(long, value_parser = duration_arg, default_value = "1s")]
    pub burst_for: Duration,
    /// Period of the sine.
    #[arg(long, value_parser = duration_arg, default_value = "20s")]
    pub period: Duration,
    /// Relative amplitude of the sine, 0 to 1.
    #[arg(long, default_value_t = 0.8)]
    pub amplitude: f64,
}

/// The event arguments of `lungfish load` (as in `lungfish generate`).
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Events")]
pub struct EventArgs {
    /// Key cardinality.
    #[arg(long, default_value_t = 10_000)]
    pub keys: u64,
    /// How keys are drawn.
    #[arg(long, value_enum, default_value_t = Distribution::Uniform)]
    pub distribution: Distribution,
    /// Exponent of the Zipf distribution.
    #[arg(long, default_value_t = 1.0)]
    pub zipf_exponent: f64,
    /// Share of malformed events, 0 to 1.
    #[arg(long, default_value_t = 0.0)]
    pub malformed: f64,
    /// Largest event-time disorder.
    #[arg(long, value_parser = duration_arg, default_value = "0ms")]
    pub disorder: Duration,
    /// Random seed: the same seed gives the same events.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Name in the event ids (`NAME-i`) and idempotency keys.
    #[arg(long, default_value = "load")]
    pub name: String,
    /// Name of the key field.
    #[arg(long, default_value = "user")]
    pub key_field: String,
    /// Name of the event-time field (epoch milliseconds).
    #[arg(long, default_value = "ts")]
    pub time_field: String,
    /// Name of the id field.
    #[arg(long, default_value = "id")]
    pub id_field: String,
}

/// A run, checked and resolved from the arguments.
#[derive(Debug)]
struct Plan {
    uri: Uri,
    /// `None`: as fast as possible.
    shape: Option<Shape>,
    /// Events to send; `None`: until `deadline`.
    total: Option<u64>,
    /// Stop taking requests after this long (unlimited rate only; a rate-limited run
    /// turns its duration into `total`).
    deadline: Option<Duration>,
    events_per_request: u64,
    concurrency: usize,
    writer: EventWriter,
    name: String,
    seed: u64,
    format: BodyFormat,
    encoding: Encoding,
    idempotency_keys: bool,
    client_id: Option<HeaderValue>,
    timeout: Duration,
    retry: bool,
}

/// The URL to send to: `http://` only (assumed without a scheme), `/v1/events` if it
/// has no path.
fn target_uri(url: &str) -> anyhow::Result<Uri> {
    let with_path = match url.split_once("://") {
        Some((_, rest)) if !rest.contains('/') => format!("{url}/v1/events"),
        Some(_) => url.to_owned(),
        None if !url.contains('/') => format!("http://{url}/v1/events"),
        None => format!("http://{url}"),
    };
    let uri: Uri = with_path
        .parse()
        .with_context(|| format!("`{url}` is not a URL"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => bail!("`{url}`: https is not supported, use http://"),
        _ => bail!("`{url}` is not an http:// URL"),
    }
    if uri.host().is_none_or(str::is_empty) {
        bail!("`{url}` has no host");
    }
    Ok(uri)
}

/// Checks a name that goes into the JSON of every event as is.
fn field_name(flag: &str, name: &str) -> anyhow::Result<String> {
    if name.is_empty()
        || name
            .chars()
            .any(|c| c == '"' || c == '\\' || c.is_control())
    {
        bail!(
            "{flag} `{name}`: a field name must be non-empty, without quotes, backslashes or control characters"
        );
    }
    Ok(name.to_owned())
}

impl Plan {
    /// Checks the arguments; `start_time` is the event time of event 0 (epoch ms).
    fn new(args: &Args, start_time: i64) -> anyhow::Result<Plan> {
        let uri = target_uri(&args.url)?;
        if args.events_per_request == 0 {
            bail!("--events-per-request must be at least 1");
        }
        if args.concurrency == 0 || args.concurrency > 65_536 {
            bail!("--concurrency must be between 1 and 65536");
        }
        if args.events.keys == 0 {
            bail!("--keys must be at least 1");
        }
        if !(args.events.zipf_exponent.is_finite() && args.events.zipf_exponent > 0.0) {
            bail!("--zipf-exponent must be above 0");
        }
        if !(0.0..=1.0).contains(&args.events.malformed) {
            bail!("--malformed is a share, between 0 and 1");
        }
        if args.timeout.is_zero() {
            bail!("--timeout must be above 0");
        }
        if args.count == Some(0) {
            bail!("--count 0: nothing to send");
        }
        if args.duration.is_some_and(|d| d.is_zero()) {
            bail!("--duration 0s: nothing to send");
        }
        if args.events.name.is_empty()
            || !args
                .events
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        {
            bail!(
                "--name `{}`: use letters, digits, `.`, `_` and `-`",
                args.events.name
            );
        }
        let client_id = args
            .client_id
            .as_deref()
            .map(HeaderValue::from_str)
            .transpose()
            .context("--client-id is not a valid header value")?;
        let rate = args.rate as f64;
        let shape = match args.traffic.shape {
            _ if args.rate == 0 => {
                if args.traffic.shape != ShapeKind::Steady {
                    let name = clap::ValueEnum::to_possible_value(&args.traffic.shape)
                        .map(|v| v.get_name().to_owned())
                        .unwrap_or_default();
                    bail!("--shape {name} needs a --rate above 0");
                }
                None
            }
            ShapeKind::Steady => Some(Shape::Steady { rate }),
            ShapeKind::Spike => Some(Shape::Spike {
                rate,
                factor: args.traffic.spike_factor,
                at: args.traffic.spike_at.as_secs_f64(),
                length: args.traffic.spike_for.as_secs_f64(),
            }),
            ShapeKind::Bursts => Some(Shape::Bursts {
                rate,
                factor: args.traffic.spike_factor,
                every: args.traffic.burst_every.as_secs_f64(),
                length: args.traffic.burst_for.as_secs_f64(),
            }),
            ShapeKind::Sine => Some(Shape::Sine {
                rate,
                period: args.traffic.period.as_secs_f64(),
                amplitude: args.traffic.amplitude,
            }),
        };
        if let Some(shape) = &shape {
            shape.validate().map_err(anyhow::Error::msg)?;
        }
        let duration = match (args.duration, args.count) {
            (None, None) => Some(DEFAULT_DURATION),
            (d, _) => d,
        };
        let (total, deadline) = match (&shape, duration) {
            (Some(shape), Some(d)) => {
                let due = (shape.events_due_by(d.as_secs_f64()) + 1e-6).floor() as u64;
                let total = args.count.map_or(due, |c| c.min(due));
                if total == 0 {
                    bail!("no event is due within {} at this rate", format_duration(d));
                }
                (Some(total), None)
            }
            (Some(_), None) => (args.count, None),
            (None, d) => (args.count, d),
        };
        let config = GeneratorConfig {
            count: total,
            keys: args.events.keys,
            distribution: match args.events.distribution {
                Distribution::Uniform => KeyDistribution::Uniform,
                Distribution::Zipf => KeyDistribution::Zipf,
            },
            zipf_exponent: args.events.zipf_exponent,
            disorder: args.events.disorder,
            malformed: args.events.malformed,
            seed: args.events.seed,
            start_time,
            events_per_second: if args.rate == 0 {
                UNLIMITED_EVENTS_PER_SECOND
            } else {
                args.rate
            },
            ..GeneratorConfig::default()
        };
        let fields = FieldNames {
            key: field_name("--key-field", &args.events.key_field)?,
            time: field_name("--time-field", &args.events.time_field)?,
            id: Some(field_name("--id-field", &args.events.id_field)?),
            numbers: vec!["value".to_owned()],
        };
        Ok(Plan {
            uri,
            shape,
            total,
            deadline,
            events_per_request: args.events_per_request,
            concurrency: args.concurrency as usize,
            writer: EventWriter::new(&args.events.name, config, &fields),
            name: args.events.name.clone(),
            seed: args.events.seed,
            format: args.format,
            encoding: args.encoding,
            idempotency_keys: args.idempotency_keys,
            client_id,
            timeout: args.timeout,
            retry: args.retry_503,
        })
    }

    /// The events of request `k`, or `None` past the last request.
    fn events_of(&self, k: u64) -> Option<Range<u64>> {
        let first = k.checked_mul(self.events_per_request)?;
        let end = first.checked_add(self.events_per_request)?;
        match self.total {
            Some(total) if first >= total => None,
            Some(total) => Some(first..end.min(total)),
            None => Some(first..end),
        }
    }

    /// For spike and bursts: whether the request for `events` belongs to the high-rate
    /// phase, that is whether its middle event is due in it (whenever it is sent).
    fn phase_of(&self, events: &Range<u64>) -> Option<bool> {
        let shape = self.shape?;
        shape.phase_names()?;
        let middle = (events.start + events.end) as f64 / 2.0;
        shape.is_high(shape.time_of_event(middle))
    }

    /// When a request ending before event `end` is due, as an offset from the start
    /// (`None`: at once).
    fn due_offset(&self, end: u64) -> Option<Duration> {
        let secs = self.shape?.time_of_event(end as f64);
        // A century is as good as never; from_secs_f64 would panic on overflow.
        Some(Duration::from_secs_f64(secs.clamp(0.0, 3.2e9)))
    }
}

/// The acknowledged-ids file: written by its own thread, one write per answer, synced
/// to disk at the end.
struct AckedIds {
    sender: mpsc::Sender<Vec<u8>>,
    thread: std::thread::JoinHandle<std::io::Result<()>>,
}

impl AckedIds {
    /// Opens `path` for appending and starts the writer thread.
    fn open(path: &std::path::Path) -> anyhow::Result<AckedIds> {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        let (sender, mut receiver) = mpsc::channel::<Vec<u8>>(256);
        let thread = std::thread::Builder::new()
            .name("acked-ids".into())
            .spawn(move || {
                let mut result = Ok(());
                // Keep draining after an error, so the senders never block.
                while let Some(ids) = receiver.blocking_recv() {
                    if result.is_ok() {
                        result = file.write_all(&ids);
                    }
                }
                result?;
                file.flush()?;
                file.sync_all()
            })?;
        Ok(AckedIds { sender, thread })
    }

    /// Waits for every id sent to be written and synced (once all senders are gone).
    fn finish(self) -> std::io::Result<()> {
        drop(self.sender);
        self.thread
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the acked-ids writer panicked")))
    }
}

/// What the worker tasks share.
struct Shared {
    plan: Plan,
    client: Client<HttpConnector, Full<Bytes>>,
    /// The number of the next request to take.
    next: AtomicU64,
    start: Instant,
    report: Mutex<Report>,
}

impl Shared {
    /// The report, locked (briefly: never held across an await).
    fn report(&self) -> std::sync::MutexGuard<'_, Report> {
        // A worker panicking mid-update leaves counts that are still worth reporting.
        self.report.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The HTTP request for one attempt.
    fn request(&self, body: Bytes, key: Option<&HeaderValue>) -> Request<Full<Bytes>> {
        let plan = &self.plan;
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = plan.uri.clone();
        let headers = request.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static(plan.format.content_type()),
        );
        if let Some(encoding) = plan.encoding.header() {
            headers.insert(CONTENT_ENCODING, HeaderValue::from_static(encoding));
        }
        if let Some(key) = key {
            headers.insert(HeaderName::from_static("idempotency-key"), key.clone());
        }
        if let Some(id) = &plan.client_id {
            headers.insert(HeaderName::from_static("x-client-id"), id.clone());
        }
        request
    }

    /// Sends request `k` (events `events`, body `body`, due at `due`) until it has an
    /// answer that is not retried, and records what happened.
    async fn send(
        &self,
        k: u64,
        events: Range<u64>,
        body: Bytes,
        due: Instant,
        stop: &mut watch::Receiver<bool>,
        acked: Option<&mpsc::Sender<Vec<u8>>>,
    ) {
        let plan = &self.plan;
        let n = events.end - events.start;
        let key = plan.idempotency_keys.then(|| {
            HeaderValue::try_from(format!("{}-{}-{k}", plan.name, plan.seed))
                .expect("the name is checked to be header-safe")
        });
        let mut sent = Instant::now();
        self.report().sent(n, sent.saturating_duration_since(due));
        let high = plan.phase_of(&events);
        let mut attempt = 0;
        loop {
            let request = self.request(body.clone(), key.as_ref());
            let result = tokio::time::timeout(plan.timeout, exchange(&self.client, request)).await;
            let latency = sent.elapsed();
            let (status, retry_after, answer) = match result {
                Err(_) => {
                    let mut report = self.report();
                    let message = format!(
                        "no complete answer within {}",
                        format_duration(plan.timeout)
                    );
                    report.failure(Failure::Timeout, &message);
                    report.outcome(Outcome::Failed { events: n });
                    return;
                }
                Ok(Err((failure, message))) => {
                    let mut report = self.report();
                    report.failure(failure, &message);
                    report.outcome(Outcome::Failed { events: n });
                    return;
                }
                Ok(Ok(answer)) => answer,
            };
            let answer = Answer::parse(&answer);
            let retry = plan.retry
                && (status == 429 || status == 503)
                && attempt < MAX_RETRIES
                && !*stop.borrow();
            let unreadable = status == 200 && !answer.readable;
            let kind = if unreadable {
                Some("unreadable answer")
            } else {
                answer.error.as_deref()
            };
            let outcome = {
                let mut report = self.report();
                report.answer(status, kind, latency, high);
                if retry {
                    report.retry();
                    None
                } else {
                    let outcome = outcome_of(status, &answer, n);
                    if let Outcome::Answered { accepted, .. } = outcome
                        && status == 200
                        && answer.accepted != Some(accepted)
                    {
                        report.inconsistent();
                    }
                    report.outcome(outcome);
                    Some(outcome)
                }
            };
            let Some(outcome) = outcome else {
                attempt += 1;
                let wait = retry_after
                    .unwrap_or(DEFAULT_RETRY_AFTER)
                    .min(MAX_RETRY_AFTER);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.wait_for(|stop| *stop) => {
                        self.report().outcome(Outcome::Refused { events: n });
                        return;
                    }
                }
                sent = Instant::now();
                continue;
            };
            if let (Outcome::Answered { accepted, .. }, Some(acked)) = (outcome, acked)
                && accepted > 0
            {
                let mut ids = Vec::with_capacity(accepted as usize * (plan.name.len() + 12));
                write_acked_ids(&plan.name, events, &answer.rejected, &mut ids);
                // The writer only stops when every sender is gone.
                let _ = acked.send(ids).await;
            }
            return;
        }
    }
}

/// What became of the `n` events of a request whose last answer was `status` with
/// body `answer`.
fn outcome_of(status: u16, answer: &Answer, n: u64) -> Outcome {
    match status {
        200 if answer.readable => {
            let rejected = answer.rejected_of(n);
            Outcome::Answered {
                accepted: n - rejected,
                rejected,
            }
        }
        400 if answer.error.as_deref() == Some("all_rejected") => Outcome::Answered {
            accepted: 0,
            rejected: n,
        },
        // Including a 200 that cannot be read: nothing is known to be acknowledged.
        _ => Outcome::Refused { events: n },
    }
}

/// The answer to one attempt: status, `Retry-After`, and body.
type Exchange = (u16, Option<Duration>, Bytes);

/// Sends `request` and reads the whole answer.
async fn exchange(
    client: &Client<HttpConnector, Full<Bytes>>,
    request: Request<Full<Bytes>>,
) -> Result<Exchange, (Failure, String)> {
    let response = client.request(request).await.map_err(|e| {
        let failure = if e.is_connect() {
            Failure::Connect
        } else {
            Failure::Connection
        };
        (failure, describe(&e))
    })?;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
        .collect()
        .await
        .map_err(|e| (Failure::Connection, describe(&*e)))?
        .to_bytes();
    Ok((status, retry_after, body))
}

/// An error and its sources, `: `-separated.
fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let more = e.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = e.source();
    }
    text
}

/// One worker task: takes the next request, builds it, waits until it is due, sends
/// it; until the plan is done or the run is stopped.
async fn worker(
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    acked: Option<mpsc::Sender<Vec<u8>>>,
) -> anyhow::Result<()> {
    let plan = &shared.plan;
    let mut builder = RequestBuilder::new(plan.writer.clone(), plan.format, plan.encoding)?;
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        if plan.deadline.is_some_and(|d| shared.start.elapsed() >= d) {
            return Ok(());
        }
        let k = shared.next.fetch_add(1, Ordering::Relaxed);
        let Some(events) = plan.events_of(k) else {
            return Ok(());
        };
        let body = builder.build(events.clone())?;
        let due = match plan.due_offset(events.end) {
            Some(offset) => shared.start + offset,
            None => Instant::now(),
        };
        tokio::select! {
            _ = tokio::time::sleep_until(due) => {}
            _ = stop.wait_for(|stop| *stop) => return Ok(()),
        }
        shared
            .send(k, events, body, due, &mut stop, acked.as_ref())
            .await;
    }
}

/// The progress bar on standard error, or a hidden one.
fn progress_bar(show: bool, target: Option<u64>) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    match target {
        Some(n) => ProgressBar::new(n).with_style(
            ProgressStyle::with_template(
                "{spinner} {elapsed_precise} [{bar:30}] {human_pos}/{human_len} events | {msg}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} {elapsed_precise} {human_pos} events | {msg}")
                .expect("valid template"),
        ),
    }
}

/// Updates `bar` from the report until aborted.
async fn show_progress(shared: Arc<Shared>, bar: ProgressBar) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut last = (Instant::now(), 0u64);
    loop {
        tick.tick().await;
        let (sent, accepted, p99, behind) = {
            let r = shared.report();
            (
                r.events_sent(),
                r.accepted(),
                r.latency_ms(0.99),
                r.behind(),
            )
        };
        let now = Instant::now();
        let secs = (now - last.0).as_secs_f64();
        let rate = if secs > 0.0 {
            (sent - last.1) as f64 / secs
        } else {
            0.0
        };
        last = (now, sent);
        let target = match shared.plan.shape {
            Some(shape) => {
                let t = (now - shared.start).as_secs_f64();
                format!(" (target {}/s)", count(shape.rate_at(t) as u64))
            }
            None => String::new(),
        };
        bar.set_position(sent);
        bar.set_message(format!(
            "{}/s{target}, {} acked, p99 {p99:.1} ms, {} requests behind",
            count(rate as u64),
            count(accepted),
            count(behind)
        ));
    }
}

/// Runs the plan to its end (or Ctrl-C) and returns the report.
async fn drive(
    plan: Plan,
    show_bar: bool,
    acked: Option<mpsc::Sender<Vec<u8>>>,
) -> anyhow::Result<Report> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(plan.timeout));
    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(plan.concurrency)
        .build(connector);
    let report = Report::new(&plan.uri.to_string(), plan.shape.as_ref());
    let target = plan.total;
    let concurrency = plan.concurrency;
    let shared = Arc::new(Shared {
        plan,
        client,
        next: AtomicU64::new(0),
        start: Instant::now(),
        report: Mutex::new(report),
    });
    let (stop_sender, stop) = watch::channel(false);
    let signals = tokio::spawn(async move {
        let mut interrupts = 0;
        while tokio::signal::ctrl_c().await.is_ok() {
            interrupts += 1;
            if interrupts > 1 {
                eprintln!("lungfish load: interrupted twice: exiting without a report");
                std::process::exit(130);
            }
            eprintln!(
                "lungfish load: stopping: waiting for the answers in flight (Ctrl-C again to quit)"
            );
            let _ = stop_sender.send(true);
        }
    });
    let bar = progress_bar(show_bar, target);
    let progress = tokio::spawn(show_progress(shared.clone(), bar.clone()));
    let workers: Vec<_> = (0..concurrency)
        .map(|_| tokio::spawn(worker(shared.clone(), stop.clone(), acked.clone())))
        .collect();
    drop(acked);
    let mut result = Ok(());
    for w in workers {
        let outcome = w.await.context("a load task panicked").and_then(|r| r);
        if result.is_ok() {
            result = outcome;
        }
    }
    let elapsed = shared.start.elapsed();
    progress.abort();
    signals.abort();
    bar.finish_and_clear();
    result?;
    let mut report = shared.report().clone();
    report.elapsed = elapsed;
    Ok(report)
}

/// Runs `lungfish load`.
pub fn load(args: Args) -> anyhow::Result<ExitCode> {
    let start_time = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let plan = Plan::new(&args, start_time)?;
    if args.format == BodyFormat::Json && args.events.malformed > 0.0 {
        eprintln!(
            "lungfish load: warning: with --format json a malformed event can make a whole request's array invalid"
        );
    }
    let show_bar = !args.no_progress && std::io::stderr().is_terminal();
    let acked = args.acked_ids.as_deref().map(AckedIds::open).transpose()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the Tokio runtime")?;
    let sender = acked.as_ref().map(|a| a.sender.clone());
    let report = runtime.block_on(drive(plan, show_bar, sender));
    runtime.shutdown_timeout(Duration::from_millis(100));
    let acked_result = acked.map(AckedIds::finish).transpose();
    let report = report?;
    print!("{}", report.render());
    if let Some(path) = &args.json_report {
        let text = serde_json::to_string_pretty(&report.to_json())?;
        std::fs::write(path, text + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let (Err(e), Some(path)) = (acked_result, &args.acked_ids) {
        return Err(anyhow::Error::new(e).context(format!("cannot write {}", path.display())));
    }
    if report.answered() == 0 {
        eprintln!("lungfish load: not a single request got an answer");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::IntoResponse;
    use clap::Parser;
    use std::collections::{BTreeSet, HashMap};
    use std::io::Read;
    use std::net::SocketAddr;

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn args(line: &[&str]) -> Args {
        Cli::try_parse_from(std::iter::once("load").chain(line.iter().copied()))
            .expect("valid arguments")
            .args
    }

    /// What the test server saw.
    #[derive(Debug, Default)]
    struct Seen {
        /// Ids in the bodies it processed (refused attempts excluded).
        received: Vec<String>,
        /// Ids it acknowledged.
        accepted: Vec<String>,
        /// Attempts by idempotency key.
        keys: HashMap<String, u32>,
        client_ids: BTreeSet<String>,
    }

    #[derive(Debug, Default)]
    struct ServerState {
        /// Answer 503 to the first attempt of every idempotency key.
        refuse_first: bool,
        seen: Mutex<Seen>,
    }

    /// A small stand-in for the HTTP source: decodes the body, rejects the events that
    /// are not well-formed, answers like the real one.
    async fn handle(
        State(state): State<Arc<ServerState>>,
        headers: HeaderMap,
        body: Bytes,
    ) -> axum::response::Response {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let mut seen = state.seen.lock().unwrap();
        if let Some(id) = header("x-client-id") {
            seen.client_ids.insert(id);
        }
        if let Some(key) = header("idempotency-key") {
            let attempts = seen.keys.entry(key).or_default();
            *attempts += 1;
            if state.refuse_first && *attempts == 1 {
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    [(RETRY_AFTER, "0")],
                    r#"{"error":"overloaded","message":"try again"}"#,
                )
                    .into_response();
            }
        }
        let raw = match header("content-encoding").as_deref() {
            None => body.to_vec(),
            Some("gzip") => {
                let mut out = Vec::new();
                flate2::read::GzDecoder::new(&body[..])
                    .read_to_end(&mut out)
                    .unwrap();
                out
            }
            Some("zstd") => zstd::decode_all(&body[..]).unwrap(),
            Some(other) => panic!("unexpected encoding {other}"),
        };
        let documents: Vec<Vec<u8>> = match header("content-type").as_deref() {
            Some("application/x-ndjson") => raw
                .split(|&c| c == b'\n')
                .filter(|l| !l.is_empty())
                .map(<[u8]>::to_vec)
                .collect(),
            Some("application/json") => serde_json::from_slice::<Vec<serde_json::Value>>(&raw)
                .unwrap()
                .iter()
                .map(|v| serde_json::to_vec(v).unwrap())
                .collect(),
            other => panic!("unexpected content type {other:?}"),
        };
        let mut rejected = Vec::new();
        for (index, doc) in documents.iter().enumerate() {
            let text = String::from_utf8_lossy(doc);
            let id = text
                .split_once(r#""id":""#)
                .and_then(|(_, rest)| rest.split_once('"'))
                .map(|(id, _)| id.to_owned())
                .expect("every event has an id");
            seen.received.push(id.clone());
            let ok = serde_json::from_slice::<serde_json::Value>(doc)
                .is_ok_and(|v| v["user"].is_string() && v["ts"].is_i64() && v["value"].is_number());
            if ok {
                seen.accepted.push(id);
            } else {
                rejected.push(serde_json::json!({"index": index, "reason": "malformed"}));
            }
        }
        let accepted = documents.len() - rejected.len();
        if accepted == 0 {
            let body = serde_json::json!({"error": "all_rejected", "message": "m", "accepted": 0, "rejected": rejected});
            return (StatusCode::BAD_REQUEST, body.to_string()).into_response();
        }
        let body = serde_json::json!({"accepted": accepted, "rejected": rejected});
        (StatusCode::OK, body.to_string()).into_response()
    }

    /// The test server, on its own runtime, until dropped.
    struct TestServer {
        addr: SocketAddr,
        state: Arc<ServerState>,
        _runtime: tokio::runtime::Runtime,
    }

    impl TestServer {
        fn start(refuse_first: bool) -> TestServer {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            let state = Arc::new(ServerState {
                refuse_first,
                ..ServerState::default()
            });
            let listener = runtime
                .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
                .unwrap();
            let addr = listener.local_addr().unwrap();
            let app = axum::Router::new()
                .route("/v1/events", axum::routing::post(handle))
                .with_state(state.clone());
            runtime.spawn(async move { axum::serve(listener, app).await.unwrap() });
            TestServer {
                addr,
                state,
                _runtime: runtime,
            }
        }

        fn url(&self) -> String {
            format!("http://{}/v1/events", self.addr)
        }

        fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
            self.state.seen.lock().unwrap()
        }
    }

    fn run(line: &[&str], report: &std::path::Path) -> (ExitCode, serde_json::Value) {
        let mut a = args(line);
        a.no_progress = true;
        a.json_report = Some(report.to_owned());
        let code = load(a).expect("the run completes");
        let json = serde_json::from_slice(&std::fs::read(report).unwrap()).unwrap();
        (code, json)
    }

    fn sorted(mut ids: Vec<String>) -> Vec<String> {
        ids.sort();
        ids
    }

    #[test]
    fn every_event_is_sent_once_and_acked_ids_are_the_accepted_ones() {
        let server = TestServer::start(false);
        let dir = tempfile::tempdir().unwrap();
        let acked = dir.path().join("acked.txt");
        let (code, report) = run(
            &[
                &server.url(),
                "--rate=0",
                "--count=5000",
                "--events-per-request=700",
                "--concurrency=3",
                "--malformed=0.05",
                "--encoding=gzip",
                "--client-id=tester",
                "--acked-ids",
                acked.to_str().unwrap(),
            ],
            &dir.path().join("report.json"),
        );
        assert_eq!(code, ExitCode::SUCCESS);
        let seen = server.seen();
        let all: Vec<String> = sorted((0..5000).map(|i| format!("load-{i}")).collect());
        assert_eq!(sorted(seen.received.clone()), all);
        let acked_ids: Vec<String> = std::fs::read_to_string(&acked)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
        assert_eq!(sorted(acked_ids), sorted(seen.accepted.clone()));
        let rejected = 5000 - seen.accepted.len() as u64;
        assert!(rejected > 100 && rejected < 500, "{rejected} rejected");
        assert_eq!(report["events_sent"], 5000);
        assert_eq!(report["requests_sent"], 8);
        assert_eq!(report["responses"]["200"], 8);
        assert_eq!(report["accepted"], seen.accepted.len() as u64);
        assert_eq!(report["rejected"], rejected);
        assert_eq!(report["inconsistent_answers"], 0);
        assert_eq!(report["latency_ms"]["count"], 8);
        assert!(seen.keys.is_empty(), "no idempotency keys unless asked");
        assert_eq!(seen.client_ids, BTreeSet::from(["tester".to_owned()]));
    }

    #[test]
    fn paced_run_sends_what_the_shape_says_in_json_and_zstd() {
        let server = TestServer::start(false);
        let dir = tempfile::tempdir().unwrap();
        let started = std::time::Instant::now();
        // 2000/s for 300 ms, but 5x from 100 ms to 200 ms: 200 + 1000 + 200 events.
        let (code, report) = run(
            &[
                &server.url(),
                "--rate=2000",
                "--duration=300ms",
                "--shape=spike",
                "--spike-factor=5",
                "--spike-at=100ms",
                "--spike-for=100ms",
                "--events-per-request=50",
                "--format=json",
                "--encoding=zstd",
                "--name=paced",
            ],
            &dir.path().join("report.json"),
        );
        assert_eq!(code, ExitCode::SUCCESS);
        assert!(started.elapsed() >= Duration::from_millis(290));
        assert_eq!(report["events_sent"], 1400);
        assert_eq!(report["accepted"], 1400);
        assert_eq!(report["responses"]["200"], 28);
        assert_eq!(report["shape"], "spike");
        // A request belongs to the phase its middle event is due in: the spike holds
        // events 200 to 1199, 20 requests.
        assert_eq!(report["latency_high_ms"]["count"], 20);
        assert_eq!(report["latency_low_ms"]["count"], 8);
        let seen = server.seen();
        assert_eq!(
            sorted(seen.accepted.clone()),
            sorted((0..1400).map(|i| format!("paced-{i}")).collect())
        );
    }

    #[test]
    fn refused_requests_are_retried_with_the_same_idempotency_key() {
        let server = TestServer::start(true);
        let dir = tempfile::tempdir().unwrap();
        let (code, report) = run(
            &[
                &server.url(),
                "--rate=0",
                "--count=1000",
                "--events-per-request=250",
                "--idempotency-keys",
                "--retry-503",
                "--seed=9",
            ],
            &dir.path().join("report.json"),
        );
        assert_eq!(code, ExitCode::SUCCESS);
        assert_eq!(report["accepted"], 1000);
        assert_eq!(report["retries"], 4);
        assert_eq!(report["responses"]["503"], 4);
        assert_eq!(report["responses"]["200"], 4);
        assert_eq!(report["refused_events"], 0);
        let keys: BTreeSet<_> = server.seen().keys.clone().into_iter().collect();
        let expected: BTreeSet<_> = (0..4).map(|k| (format!("load-9-{k}"), 2)).collect();
        assert_eq!(keys, expected);
    }

    #[test]
    fn refused_requests_are_counted_and_dropped_without_retry() {
        let server = TestServer::start(true);
        let dir = tempfile::tempdir().unwrap();
        let (code, report) = run(
            &[
                &server.url(),
                "--rate=0",
                "--count=1000",
                "--events-per-request=250",
                "--idempotency-keys",
            ],
            &dir.path().join("report.json"),
        );
        assert_eq!(code, ExitCode::SUCCESS, "answers, even refusals, are a run");
        assert_eq!(report["accepted"], 0);
        assert_eq!(report["refused_events"], 1000);
        assert_eq!(report["responses"]["503"], 4);
        assert_eq!(report["error_kinds"]["503 overloaded"], 4);
        assert!(server.seen().received.is_empty());
    }

    #[test]
    fn no_server_is_a_failure_with_connect_errors() {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (code, report) = run(
            &[&format!("http://{addr}"), "--count=3000", "--rate=0"],
            &dir.path().join("report.json"),
        );
        assert_eq!(code, ExitCode::FAILURE);
        assert_eq!(report["responses"]["error: connect"], 3);
        assert_eq!(report["failed_events"], 3000);
        assert_eq!(report["url"], format!("http://{addr}/v1/events"));
    }

    #[test]
    fn outcomes_follow_the_status_and_the_rejected_list() {
        let partly = Answer::parse(
            br#"{"accepted":8,"rejected":[{"index":2,"reason":"r"},{"index":5,"reason":"r"}]}"#,
        );
        assert_eq!(
            outcome_of(200, &partly, 10),
            Outcome::Answered {
                accepted: 8,
                rejected: 2
            }
        );
        let all =
            Answer::parse(br#"{"error":"all_rejected","message":"m","accepted":0,"rejected":[]}"#);
        assert_eq!(
            outcome_of(400, &all, 10),
            Outcome::Answered {
                accepted: 0,
                rejected: 10
            }
        );
        let invalid = Answer::parse(br#"{"error":"invalid_json","message":"m"}"#);
        assert_eq!(
            outcome_of(400, &invalid, 10),
            Outcome::Refused { events: 10 }
        );
        let busy = Answer::parse(br#"{"error":"overloaded","message":"m"}"#);
        assert_eq!(outcome_of(503, &busy, 10), Outcome::Refused { events: 10 });
        assert_eq!(
            outcome_of(200, &Answer::parse(b"ok"), 10),
            Outcome::Refused { events: 10 }
        );
    }

    #[test]
    fn plan_resolves_defaults_and_rejects_bad_arguments() {
        let plan = Plan::new(&args(&["http://127.0.0.1:9"]), 0).unwrap();
        assert_eq!(plan.uri.path(), "/v1/events");
        // 100000/s for the default 10 s.
        assert_eq!(plan.total, Some(1_000_000));
        assert_eq!(plan.events_of(999), Some(999_000..1_000_000));
        assert_eq!(plan.events_of(1000), None);
        assert_eq!(plan.due_offset(1000), Some(Duration::from_millis(10)));
        let unlimited = Plan::new(&args(&["http://h:1/x", "--rate=0"]), 0).unwrap();
        assert_eq!(
            (unlimited.total, unlimited.deadline),
            (None, Some(DEFAULT_DURATION))
        );
        assert_eq!(unlimited.due_offset(5), None);
        let capped = Plan::new(
            &args(&["http://h:1/x", "--rate=100", "--count=50", "--duration=2s"]),
            0,
        )
        .unwrap();
        assert_eq!(capped.total, Some(50));
        let bare = Plan::new(&args(&["127.0.0.1:8080"]), 0).unwrap();
        assert_eq!(bare.uri.to_string(), "http://127.0.0.1:8080/v1/events");
        let other_path = Plan::new(&args(&["http://h:1/ingest?x=1"]), 0).unwrap();
        assert_eq!(other_path.uri.to_string(), "http://h:1/ingest?x=1");
        for bad in [
            &["https://h/v1/events"][..],
            &["ftp://h/v1/events"],
            &["http://"],
            &["http://h/", "--rate=0", "--shape=spike"],
            &["http://h/", "--shape=sine", "--amplitude=2"],
            &["http://h/", "--malformed=1.5"],
            &["http://h/", "--events-per-request=0"],
            &["http://h/", "--name=a b"],
            &["http://h/", "--key-field=a\"b"],
            &["http://h/", "--count=0"],
        ] {
            assert!(Plan::new(&args(bad), 0).is_err(), "{bad:?} accepted");
        }
    }
}
