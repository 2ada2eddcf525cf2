//! The `http` source: clients POST events; the answer comes once they are durable.
//!
//! `POST /v1/events` takes a JSON object, a JSON array of objects
//! (`Content-Type: application/json`), one object per line
//! (`application/x-ndjson`) or length-delimited Protobuf messages of the pipeline's
//! `[protobuf]` type (`application/x-protobuf`, with `formats = ["protobuf"]`),
//! optionally `Content-Encoding: gzip` or `zstd`. Each event
//! is checked like every other source's ([`crate::ingest`]); the good ones are appended
//! to the log and the request is answered only when they are durable under the log's
//! fsync policy:
//!
//! | status | when | body |
//! |---|---|---|
//! | 200 | at least one event accepted | `{"accepted": n, "rejected": [{"index": i, "reason": "..."}]}` |
//! | 400 | every event invalid, an empty body, a broken array, corrupt compression | the reasons |
//! | 404 / 405 | another path / method | |
//! | 408 | the body did not arrive within `body_timeout` | |
//! | 409 | a request with the same `Idempotency-Key` is still running | |
//! | 413 | body (sent or decompressed) over `max_body_size` | |
//! | 415 | a content type or encoding not accepted | |
//! | 422 | an `Idempotency-Key` reused with another body | |
//! | 429 | the client's token bucket is empty (`Retry-After`) | |
//! | 503 | shutting down, log full, lag over `max_lag`, too many connections, too many bytes in flight, not durable in time (`Retry-After`) | |
//!
//! Every error body is `{"error": "<kind>", "message": "<what and why>"}`. Rejected
//! events also go to the dead-letter queue (stage `source:NAME`), with the request's
//! client and the event's index as location.
//!
//! **Bounds.** Connections (`max_connections`; one more is answered 503 and closed);
//! request bytes in flight, counting the body, its decompressed form and its encoded
//! records (`max_inflight_bytes`); headers and idle keep-alive time (`header_timeout`);
//! the body's arrival (`body_timeout`); the wait for durability (`ack_timeout`).
//!
//! **All or nothing.** A request's batches are appended under one lock after checking
//! that every partition has room, so a full log refuses the whole request (503) rather
//! than half of it. If a write or fsync fails, the request is answered 503 and the
//! batches of other partitions may stay: the rare duplicate on retry is preferred to a
//! loss.
//!
//! **Idempotency.** (`idempotency.rs`) a retry with the same `Idempotency-Key`
//! (per client: the `client_header`'s value, or the peer's IP address) within
//! `idempotency_horizon` gets the first answer and appends nothing.
//!
//! **Shutdown.** When the pipeline stops, new requests get 503 (`shutting_down`) while
//! those in flight finish (up to `ack_timeout`); then connections close.

mod body;
mod idempotency;

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use lungfish_log::{DurableTicket, LogError};
use serde_json::json;
use tokio::sync::Semaphore;

use self::body::{BodyError, Split};
use self::idempotency::{Answer, Begin, Keys, RunGuard};
use crate::codec::InputFormat;
use crate::config::{BodyFormat, ContentEncoding, HttpSourceConfig};
use crate::dlq::{DeadLetter, now_ms};
use crate::ingest::{Ingested, Ingestor, Positions, RawChunk};
use crate::limiter::KeyedLimiter;

use super::{RunError, SourceContext, SourceError, SourceReport};

/// In-flight bytes are counted in units of this many bytes (semaphore permits).
const PERMIT_BYTES: u64 = 1024;
/// Bodies larger than this are parsed on a blocking thread, not the reactor.
const BLOCKING_BYTES: usize = 256 * 1024;
/// Connections refused with a 503 at the same time, at most (more are just closed).
const MAX_REFUSING: usize = 64;
/// Longest idempotency key accepted.
const MAX_KEY_LEN: usize = 256;
/// Clients with a rate-limit bucket at the same time, at most.
const MAX_CLIENTS: usize = 100_000;

type Body = Full<Bytes>;

/// Everything the request handlers share.
struct Shared {
    name: String,
    stage: String,
    config: HttpSourceConfig,
    ingestor: Arc<Ingestor>,
    ctx: SourceContext,
    /// The pipeline's consumer name, for the lag.
    consumer: String,
    inflight: Arc<Semaphore>,
    keys: Option<Keys>,
    limiter: Option<KeyedLimiter>,
    /// One request appends at a time, so a room check holds until its appends are done.
    append_lock: Mutex<()>,
    /// Events appended but not committed by the consumer, updated every 100 ms.
    lag: AtomicU64,
    draining: AtomicBool,
    requests_running: AtomicUsize,
    requests: AtomicU64,
    accepted: AtomicU64,
    rejected: AtomicU64,
    bytes: AtomicU64,
}

/// Runs the HTTP source `name` until the pipeline stops.
///
/// `ingestor` checks and encodes events (built with this source's event size limit);
/// `consumer` is the pipeline's consumer name (its lag is what `max_lag` bounds).
///
/// # Errors
/// The address cannot be bound. Problems with requests are answered to their clients,
/// never returned.
pub fn run_http_source(
    name: &str,
    config: &HttpSourceConfig,
    ingestor: Arc<Ingestor>,
    consumer: &str,
    ctx: &SourceContext,
) -> Result<SourceReport, RunError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(crate::pipeline::cores())
        .max_blocking_threads(crate::pipeline::cores() * 2)
        .thread_name(
            format!("lf-http-{name}")
                .chars()
                .take(15)
                .collect::<String>(),
        )
        .enable_all()
        .build()
        .map_err(|e| SourceError::Io(format!("starting the HTTP runtime: {e}")))?;
    let permits = (config.max_inflight_bytes / PERMIT_BYTES).max(1) as usize;
    let shared = Arc::new(Shared {
        name: name.to_owned(),
        stage: format!("source:{name}"),
        config: config.clone(),
        ingestor,
        ctx: ctx.clone(),
        consumer: consumer.to_owned(),
        inflight: Arc::new(Semaphore::new(permits.min(Semaphore::MAX_PERMITS))),
        keys: (!config.idempotency_horizon.is_zero())
            .then(|| Keys::new(config.idempotency_horizon, config.idempotency_max_keys)),
        limiter: config.rate_limit.map(|rate| {
            let burst = config
                .rate_limit_burst
                .unwrap_or_else(|| rate.ceil().max(1.0) as u64);
            KeyedLimiter::new(rate, burst, MAX_CLIENTS)
        }),
        append_lock: Mutex::new(()),
        lag: AtomicU64::new(0),
        draining: AtomicBool::new(false),
        requests_running: AtomicUsize::new(0),
        requests: AtomicU64::new(0),
        accepted: AtomicU64::new(0),
        rejected: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
    });
    let result = runtime.block_on(serve(shared.clone()));
    runtime.shutdown_timeout(Duration::from_secs(1));
    result?;
    Ok(SourceReport {
        name: name.to_owned(),
        description: format!("http://{}/v1/events", config.address),
        resumed_at: 0,
        accepted: shared.accepted.load(Ordering::Relaxed),
        rejected: shared.rejected.load(Ordering::Relaxed),
        bytes: shared.bytes.load(Ordering::Relaxed),
        finished: false,
    })
}

/// Accepts connections until the pipeline stops, then drains.
async fn serve(shared: Arc<Shared>) -> Result<(), SourceError> {
    let address = shared.config.address;
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|e| SourceError::Config(format!("cannot listen on {address}: {e}")))?;
    tracing::info!(source = %shared.name, %address, "HTTP source listening");
    let connections = Arc::new(Semaphore::new(shared.config.max_connections));
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    let (closing_tx, closing) = tokio::sync::watch::channel(false);
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut lag_checked = Instant::now() - Duration::from_secs(1);
    // Once the pipeline stops: until when running requests may finish. Connections are
    // still accepted meanwhile, so new requests get their 503 (`shutting_down`) rather
    // than waiting unanswered in the listen backlog.
    let mut drain_until: Option<Instant> = None;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                match connections.clone().try_acquire_owned() {
                    Ok(permit) => {
                        tokio::spawn(connection(shared.clone(), stream, peer, closing.clone(), permit));
                    }
                    Err(_) => {
                        metrics::counter!("lungfish_http_connections_refused_total", "source" => shared.name.clone()).increment(1);
                        if let Ok(permit) = refusing.clone().try_acquire_owned() {
                            tokio::spawn(refuse_connection(stream, shared.config.retry_after, permit));
                        }
                    }
                }
            }
            _ = tick.tick() => {
                if let Some(until) = drain_until {
                    if shared.requests_running.load(Ordering::SeqCst) == 0 || Instant::now() >= until {
                        break;
                    }
                } else if shared.ctx.control.is_stopping() {
                    // Draining: new requests get 503 while running ones finish.
                    shared.draining.store(true, Ordering::SeqCst);
                    drain_until = Some(Instant::now() + shared.config.ack_timeout + Duration::from_secs(1));
                } else if lag_checked.elapsed() >= Duration::from_millis(100) {
                    lag_checked = Instant::now();
                    update_lag(&shared);
                }
            }
        }
    }
    drop(listener);
    let _ = closing_tx.send(true);
    // Connections close after their current response.
    let all = shared.config.max_connections as u32;
    let _ = tokio::time::timeout(Duration::from_secs(5), connections.acquire_many(all)).await;
    Ok(())
}

/// Answers a connection over the limit with a 503 and closes it.
async fn refuse_connection(
    mut stream: tokio::net::TcpStream,
    retry_after: Duration,
    _permit: tokio::sync::OwnedSemaphorePermit,
) {
    use tokio::io::AsyncWriteExt;
    let body = r#"{"error":"too_many_connections","message":"the server has reached max_connections; retry later"}"#;
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        retry_after.as_secs().max(1),
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
}

/// Serves one connection: HTTP/1.1 with keep-alive, headers within `header_timeout`.
async fn connection(
    shared: Arc<Shared>,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    mut closing: tokio::sync::watch::Receiver<bool>,
    _permit: tokio::sync::OwnedSemaphorePermit,
) {
    let service = {
        let shared = shared.clone();
        hyper::service::service_fn(move |req| {
            let shared = shared.clone();
            async move { Ok::<_, Infallible>(handle(&shared, peer.ip(), req).await) }
        })
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(shared.config.header_timeout)
        .keep_alive(true)
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "HTTP connection ended");
            }
        }
        _ = async { closing.wait_for(|c| *c).await.map(|_| ()) } => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(2), conn.as_mut()).await;
        }
    }
}

fn update_lag(shared: &Shared) {
    if shared.config.max_lag.is_none() {
        return;
    }
    let log = &shared.ctx.log;
    let Ok(committed) = log.committed(&shared.consumer) else {
        return;
    };
    let lag = (0..log.partitions())
        .map(|p| {
            let c = committed
                .get(p as usize)
                .and_then(|c| c.as_ref())
                .map_or(0, |c| c.offset);
            log.end_offset(p).saturating_sub(c)
        })
        .sum();
    shared.lag.store(lag, Ordering::Relaxed);
}

/// Counts a running request; the count drops when this does.
struct Running<'a>(&'a AtomicUsize);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn handle(shared: &Shared, ip: IpAddr, req: Request<Incoming>) -> Response<Body> {
    let response = match (req.method(), req.uri().path()) {
        (&Method::POST, "/v1/events") => {
            shared.requests_running.fetch_add(1, Ordering::SeqCst);
            let _running = Running(&shared.requests_running);
            events(shared, ip, req).await
        }
        (_, "/v1/events") => {
            let mut r = error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "send events with POST",
            );
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST"));
            r
        }
        (&Method::GET, "/health") => reply(StatusCode::OK, &json!({"status": "alive"})),
        (&Method::GET, "/ready") => match not_ready(shared) {
            None => reply(StatusCode::OK, &json!({"ready": true})),
            Some(reason) => with_retry_after(
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &json!({"ready": false, "reason": reason}),
                ),
                shared.config.retry_after,
            ),
        },
        _ => error(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such path: POST events to /v1/events; GET /health or /ready",
        ),
    };
    metrics::counter!(
        "lungfish_http_responses_total",
        "source" => shared.name.clone(),
        "status" => response.status().as_str().to_owned()
    )
    .increment(1);
    response
}

/// Why the source cannot take events now, if it cannot.
fn not_ready(shared: &Shared) -> Option<String> {
    if shared.draining.load(Ordering::SeqCst) || shared.ctx.control.is_stopping() {
        return Some("shutting down".to_owned());
    }
    if let Some(max) = shared.config.max_lag {
        let lag = shared.lag.load(Ordering::Relaxed);
        if lag > max {
            return Some(format!(
                "the pipeline is {lag} events behind the log's end (max_lag is {max})"
            ));
        }
    }
    let log = &shared.ctx.log;
    let min_room = log.config().max_batch_bytes as u64;
    for p in 0..log.partitions() {
        if log.room(p).is_some_and(|room| room < min_room) {
            return Some(format!(
                "log partition {p} is full (log.max_size): consumers must catch up"
            ));
        }
    }
    None
}

fn reply(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut r = Response::new(Full::new(body::json_body(value)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, kind: &str, message: impl Into<String>) -> Response<Body> {
    reply(status, &json!({"error": kind, "message": message.into()}))
}

fn with_retry_after(mut r: Response<Body>, after: Duration) -> Response<Body> {
    let secs = after.as_secs_f64().ceil().max(1.0) as u64;
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    r
}

fn unavailable(shared: &Shared, kind: &str, message: impl Into<String>) -> Response<Body> {
    with_retry_after(
        error(StatusCode::SERVICE_UNAVAILABLE, kind, message),
        shared.config.retry_after,
    )
}

/// The body format named by `Content-Type`, if accepted.
fn format_of(headers: &HeaderMap, accepted: &[BodyFormat]) -> Result<BodyFormat, String> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Err(
            "a Content-Type header is required: application/json or application/x-ndjson"
                .to_owned(),
        );
    };
    let value = value.to_str().unwrap_or("").trim();
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let format = match essence.as_str() {
        "application/json" => BodyFormat::Json,
        "application/x-ndjson"
        | "application/ndjson"
        | "application/jsonl"
        | "application/x-jsonlines"
        | "application/jsonlines" => BodyFormat::Ndjson,
        "application/x-protobuf" | "application/protobuf" | "application/vnd.google.protobuf" => {
            BodyFormat::Protobuf
        }
        _ => {
            return Err(format!(
                "Content-Type `{value}` is not supported: send application/json (an object or an array of objects), application/x-ndjson (one object per line) or application/x-protobuf (length-delimited messages)"
            ));
        }
    };
    if accepted.contains(&format) {
        Ok(format)
    } else {
        let names: Vec<&str> = accepted
            .iter()
            .map(|f| match f {
                BodyFormat::Json => "application/json",
                BodyFormat::Ndjson => "application/x-ndjson",
                BodyFormat::Protobuf => "application/x-protobuf",
            })
            .collect();
        Err(format!(
            "Content-Type `{essence}` is not accepted by this source (its `formats` accept {})",
            names.join(", ")
        ))
    }
}

/// The `Content-Encoding`, if accepted (`None`: identity).
fn encoding_of(
    headers: &HeaderMap,
    accepted: &[ContentEncoding],
) -> Result<Option<ContentEncoding>, String> {
    let Some(value) = headers.get(header::CONTENT_ENCODING) else {
        return Ok(None);
    };
    let value = value.to_str().unwrap_or("").trim().to_ascii_lowercase();
    let encoding = match value.as_str() {
        "" | "identity" => return Ok(None),
        "gzip" | "x-gzip" => ContentEncoding::Gzip,
        "zstd" => ContentEncoding::Zstd,
        other => {
            return Err(format!(
                "Content-Encoding `{other}` is not supported: send gzip, zstd or no encoding"
            ));
        }
    };
    if accepted.contains(&encoding) {
        Ok(Some(encoding))
    } else {
        Err(format!(
            "Content-Encoding `{value}` is not accepted by this source (see its `encodings`)"
        ))
    }
}

/// Holds in-flight byte permits for one request.
struct Reserved {
    permits: Vec<tokio::sync::OwnedSemaphorePermit>,
}

impl Reserved {
    /// Takes permits for `bytes` more, waiting until `deadline`.
    async fn more(&mut self, shared: &Shared, bytes: u64, deadline: Instant) -> bool {
        let n = bytes.div_ceil(PERMIT_BYTES);
        if n == 0 {
            return true;
        }
        let Ok(n) = u32::try_from(n) else {
            return false;
        };
        let acquire = shared.inflight.clone().acquire_many_owned(n);
        match tokio::time::timeout_at(tokio::time::Instant::from_std(deadline), acquire).await {
            Ok(Ok(p)) => {
                self.permits.push(p);
                true
            }
            _ => false,
        }
    }
}

/// The client a request comes from: the `client_header`'s value, or the peer's IP.
fn client_of(shared: &Shared, headers: &HeaderMap, ip: IpAddr) -> String {
    shared
        .config
        .client_header
        .as_deref()
        .and_then(|h| headers.get(h))
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= MAX_KEY_LEN)
        .map_or_else(|| ip.to_string(), str::to_owned)
}

/// `POST /v1/events`.
async fn events(shared: &Shared, ip: IpAddr, req: Request<Incoming>) -> Response<Body> {
    let cfg = &shared.config;
    if shared.draining.load(Ordering::SeqCst) || shared.ctx.control.is_stopping() {
        return unavailable(
            shared,
            "shutting_down",
            "the pipeline is shutting down; retry against another instance or later",
        );
    }
    if let Some(max) = cfg.max_lag {
        let lag = shared.lag.load(Ordering::Relaxed);
        if lag > max {
            return unavailable(
                shared,
                "lagging",
                format!(
                    "the pipeline is {lag} events behind (max_lag is {max}); retry when it has caught up"
                ),
            );
        }
    }
    let (parts, incoming) = req.into_parts();
    let headers = &parts.headers;
    let format = match format_of(headers, &cfg.formats) {
        Ok(f) => f,
        Err(message) => {
            return error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                message,
            );
        }
    };
    let encoding = match encoding_of(headers, &cfg.encodings) {
        Ok(e) => e,
        Err(message) => {
            return error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_encoding",
                message,
            );
        }
    };
    let client = client_of(shared, headers, ip);
    let now = Instant::now();
    if let Some(limiter) = &shared.limiter
        && limiter.is_exhausted(&client, now)
    {
        let wait = limiter
            .try_take(&client, 1, now)
            .err()
            .unwrap_or(Duration::from_secs(1));
        return with_retry_after(
            error(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!(
                    "client `{client}` is over its rate limit of {} events/s",
                    cfg.rate_limit.unwrap_or(0.0)
                ),
            ),
            wait.max(Duration::from_secs(1)),
        );
    }
    let idempotency_key = match headers.get("idempotency-key") {
        Some(v) if shared.keys.is_some() => match v.to_str() {
            Ok(k) if !k.is_empty() && k.len() <= MAX_KEY_LEN => Some(k.to_owned()),
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_idempotency_key",
                    format!("Idempotency-Key must be 1 to {MAX_KEY_LEN} visible ASCII characters"),
                );
            }
        },
        _ => None,
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(len) = declared
        && len > cfg.max_body_size
    {
        return too_large(cfg.max_body_size, len, false);
    }
    let deadline = now + cfg.body_timeout;
    let mut reserved = Reserved {
        permits: Vec::new(),
    };
    if !reserved
        .more(shared, declared.unwrap_or(64 * 1024), deadline)
        .await
    {
        return busy(shared);
    }
    let raw = match body::read(incoming, cfg.max_body_size, declared, deadline).await {
        Ok(raw) => raw,
        Err(e) => return body_error(e),
    };
    shared.bytes.fetch_add(raw.len() as u64, Ordering::Relaxed);
    if raw.len() as u64 > declared.unwrap_or(64 * 1024)
        && !reserved
            .more(
                shared,
                raw.len() as u64 - declared.unwrap_or(64 * 1024),
                deadline,
            )
            .await
    {
        return busy(shared);
    }

    let Some(keys) = shared.keys.as_ref().filter(|_| idempotency_key.is_some()) else {
        return take(
            shared,
            &client,
            raw,
            format,
            encoding,
            &mut reserved,
            deadline,
        )
        .await
        .0;
    };
    let key = format!("{client}\u{0}{}", idempotency_key.unwrap_or_default());
    let fingerprint = xxhash_rust::xxh3::xxh3_64(&raw)
        ^ (format as u64).rotate_left(7)
        ^ encoding.map_or(0, |e| e as u64 + 1).rotate_left(13);
    let wait_until = tokio::time::Instant::now() + cfg.ack_timeout + cfg.body_timeout;
    loop {
        match keys.begin(&key, fingerprint, Instant::now()) {
            Begin::Run => break,
            Begin::Replay(answer) => {
                let mut r = Response::new(Full::new(answer.body));
                *r.status_mut() = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::OK);
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                r.headers_mut()
                    .insert("idempotent-replayed", HeaderValue::from_static("true"));
                return r;
            }
            Begin::Mismatch => {
                return error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "idempotency_key_reused",
                    "this Idempotency-Key was used with a different body; use a new key for a new request",
                );
            }
            Begin::Wait(done) => {
                let notified = done.notified();
                // The running request may have finished between `begin` and here.
                if tokio::time::timeout(Duration::from_millis(50), notified)
                    .await
                    .is_err()
                    && tokio::time::Instant::now() >= wait_until
                {
                    return error(
                        StatusCode::CONFLICT,
                        "idempotency_key_in_use",
                        "a request with this Idempotency-Key is still being processed; retry later",
                    );
                }
            }
        }
    }
    let guard = RunGuard::new(keys, key);
    let (response, keep) = take(
        shared,
        &client,
        raw,
        format,
        encoding,
        &mut reserved,
        deadline,
    )
    .await;
    let (parts, full) = response.into_parts();
    let body_bytes = http_body_util::BodyExt::collect(full)
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    guard.finish(
        &Answer {
            status: parts.status.as_u16(),
            body: body_bytes.clone(),
        },
        keep,
    );
    Response::from_parts(parts, Full::new(body_bytes))
}

fn too_large(limit: u64, size: u64, decoded: bool) -> Response<Body> {
    let what = if decoded { "decompressed body" } else { "body" };
    let size = if size > limit {
        format!(" ({size} bytes)")
    } else {
        String::new()
    };
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        format!(
            "the {what}{size} is over max_body_size ({limit} bytes); send fewer events per request"
        ),
    )
}

fn busy(shared: &Shared) -> Response<Body> {
    unavailable(
        shared,
        "busy",
        format!(
            "the server holds max_inflight_bytes ({} bytes) of requests already; retry later",
            shared.config.max_inflight_bytes
        ),
    )
}

fn body_error(e: BodyError) -> Response<Body> {
    match e {
        BodyError::TooLarge { limit, decoded } => too_large(limit, 0, decoded),
        BodyError::Timeout => {
            let mut r = error(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                "the request body did not arrive within body_timeout",
            );
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            r
        }
        BodyError::Read(message) => error(
            StatusCode::BAD_REQUEST,
            "body_unreadable",
            format!("reading the body failed: {message}"),
        ),
        BodyError::Corrupt(message) => error(StatusCode::BAD_REQUEST, "bad_encoding", message),
        BodyError::Malformed(message) => error(StatusCode::BAD_REQUEST, "malformed_body", message),
    }
}

/// What parsing a request produced.
struct Parsed {
    split_bad: Vec<(u64, String, Vec<u8>)>,
    events: u64,
    out: Ingested,
    /// Bytes of the body as lines (what its parse held in memory).
    bytes: u64,
}

fn parse(
    ingestor: &Ingestor,
    raw: Vec<u8>,
    format: BodyFormat,
    encoding: Option<ContentEncoding>,
    limit: u64,
    origin: Arc<str>,
) -> Result<Parsed, BodyError> {
    let decoded = body::decode(raw, encoding, limit)?;
    let Split { lines, bad, events } = body::split(decoded, format)?;
    let protobuf = format == BodyFormat::Protobuf;
    let chunk = RawChunk {
        data: lines,
        format: if protobuf {
            InputFormat::Protobuf
        } else {
            InputFormat::Json
        },
        positions: Positions::Lines { first: 0 },
        end: events,
        origin,
        first_line: 0,
    };
    let mut out = Ingested::default();
    let skip = vec![0; ingestor.partitions() as usize];
    ingestor.ingest(&chunk, &skip, 0, &mut out);
    // Protobuf messages are counted as the ingestor splits them.
    let events = if protobuf { out.events } else { events };
    out.end = events;
    Ok(Parsed {
        split_bad: bad,
        events,
        out,
        bytes: chunk.data.len() as u64,
    })
}

/// Parses, checks, appends and waits for durability. Returns the answer and whether
/// it is final (kept for idempotent retries).
async fn take(
    shared: &Shared,
    client: &str,
    raw: Vec<u8>,
    format: BodyFormat,
    encoding: Option<ContentEncoding>,
    reserved: &mut Reserved,
    deadline: Instant,
) -> (Response<Body>, bool) {
    let cfg = &shared.config;
    let request_no = shared.requests.fetch_add(1, Ordering::Relaxed);
    let origin: Arc<str> = format!("http {client} request {request_no} event").into();
    // Room for the decompressed body and its encoded records.
    let big = raw.len() > BLOCKING_BYTES || encoding.is_some();
    let ingestor = shared.ingestor.clone();
    let limit = cfg.max_body_size;
    let parsed = if big {
        match tokio::task::spawn_blocking(move || {
            parse(&ingestor, raw, format, encoding, limit, origin)
        })
        .await
        {
            Ok(p) => p,
            Err(e) => {
                return (
                    error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "internal",
                        format!("parsing failed: {e}"),
                    ),
                    false,
                );
            }
        }
    } else {
        parse(&ingestor, raw, format, encoding, limit, origin)
    };
    let mut parsed = match parsed {
        Ok(p) => p,
        Err(e) => return (body_error(e), false),
    };
    if !reserved.more(shared, 2 * parsed.bytes, deadline).await {
        return (busy(shared), false);
    }
    let accepted = parsed.out.accepted;
    // Every rejected event, in request order.
    let mut rejected: Vec<(u64, String, &'static str, Vec<u8>)> = parsed
        .split_bad
        .drain(..)
        .map(|(i, reason, payload)| (i, reason, "invalid_json", payload))
        .chain(
            parsed
                .out
                .rejects
                .drain(..)
                .map(|r| (r.position, r.reason, r.kind, r.payload)),
        )
        .collect();
    rejected.sort_by_key(|r| r.0);
    if parsed.events == 0 {
        return (
            error(
                StatusCode::BAD_REQUEST,
                "empty",
                "the body holds no events: send a JSON object, a non-empty array, or NDJSON lines",
            ),
            true,
        );
    }
    let listed = |rejected: &[(u64, String, &'static str, Vec<u8>)]| {
        rejected
            .iter()
            .map(|(i, reason, _, _)| json!({"index": i, "reason": reason}))
            .collect::<Vec<_>>()
    };
    let now = Instant::now();
    if accepted > 0
        && let Some(limiter) = &shared.limiter
        && let Err(wait) = limiter.try_take(client, accepted, now)
    {
        return (
            with_retry_after(
                error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    format!(
                        "client `{client}` is over its rate limit of {} events/s ({accepted} events in this request)",
                        cfg.rate_limit.unwrap_or(0.0)
                    ),
                ),
                wait.max(Duration::from_secs(1)),
            ),
            false,
        );
    }

    let mut tickets: Vec<DurableTicket> = Vec::new();
    if !rejected.is_empty() {
        let time_ms = now_ms();
        let letters: Vec<DeadLetter> = rejected
            .iter()
            .map(|(i, reason, kind, payload)| {
                metrics::counter!("lungfish_events_rejected_total", "stage" => shared.stage.clone(), "kind" => *kind)
                    .increment(1);
                DeadLetter::new(
                    shared.stage.clone(),
                    *kind,
                    reason.clone(),
                    format!("http {client} request {request_no} event:{i}"),
                    payload.clone(),
                )
                .failed_at(time_ms)
            })
            .collect();
        match shared.ctx.dead_letters.append_all(&letters) {
            Ok(t) => tickets.extend(t),
            Err(e) => {
                tracing::warn!(source = %shared.name, error = %e, "the dead-letter queue refused this request's rejects");
            }
        }
        shared
            .rejected
            .fetch_add(rejected.len() as u64, Ordering::Relaxed);
        shared
            .ctx
            .control
            .stats
            .rejected
            .fetch_add(rejected.len() as u64, Ordering::Relaxed);
    }
    if accepted == 0 {
        return (
            reply(
                StatusCode::BAD_REQUEST,
                &json!({
                    "error": "all_rejected",
                    "message": format!("none of the {} events is valid; see `rejected`", parsed.events),
                    "accepted": 0,
                    "rejected": listed(&rejected),
                }),
            ),
            true,
        );
    }
    if let Err(response) = append(shared, &mut parsed.out, &mut tickets) {
        return (*response, false);
    }
    let wait_all = async {
        for t in &tickets {
            t.wait_async().await?;
        }
        Ok::<(), LogError>(())
    };
    match tokio::time::timeout(cfg.ack_timeout, wait_all).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            return (
                unavailable(
                    shared,
                    "not_durable",
                    format!("the events could not be made durable: {e}"),
                ),
                false,
            );
        }
        Err(_) => {
            return (
                unavailable(
                    shared,
                    "not_durable",
                    "the events were not durable within ack_timeout; some may be in the log anyway, so a retry may duplicate them (even with the same Idempotency-Key: this answer is not kept); events with ids and dedup_horizon drop such duplicates",
                ),
                false,
            );
        }
    }
    shared.accepted.fetch_add(accepted, Ordering::Relaxed);
    let stats = &shared.ctx.control.stats;
    stats.events_in.fetch_add(accepted, Ordering::Relaxed);
    metrics::counter!("lungfish_events_in_total", "source" => shared.name.clone())
        .increment(accepted);
    crate::telemetry::stage("source", parsed.events, accepted);
    crate::telemetry::batch_size("source", parsed.events);
    (
        reply(
            StatusCode::OK,
            &json!({"accepted": accepted, "rejected": listed(&rejected)}),
        ),
        true,
    )
}

/// Appends a request's batches, all or none (when the log is full).
fn append(
    shared: &Shared,
    out: &mut Ingested,
    tickets: &mut Vec<DurableTicket>,
) -> Result<(), Box<Response<Body>>> {
    let log = &shared.ctx.log;
    let _lock = shared.append_lock.lock().unwrap_or_else(|e| e.into_inner());
    for (p, batches) in out.batches.iter().enumerate() {
        let needed: u64 = batches
            .sealed
            .iter()
            .map(|(b, _)| b.encoded_len() as u64)
            .sum::<u64>()
            + batches.open.encoded_len() as u64;
        if let Some(room) = log.room(p as u32)
            && !batches.is_empty()
            && room < needed
        {
            return Err(Box::new(unavailable(
                shared,
                "log_full",
                format!(
                    "log partition {p} is full (log.max_size): the pipeline must catch up before more events are taken"
                ),
            )));
        }
    }
    for (p, batches) in out.batches.iter_mut().enumerate() {
        let all = batches
            .sealed
            .iter_mut()
            .map(|(b, _)| b)
            .chain(std::iter::once(&mut batches.open));
        for batch in all {
            if batch.is_empty() {
                continue;
            }
            match log.append(p as u32, batch, None) {
                Ok(a) => tickets.push(a.ticket),
                Err(e @ LogError::Full { .. }) => {
                    return Err(Box::new(unavailable(shared, "log_full", e.to_string())));
                }
                Err(e) if e.is_disk_full() => {
                    return Err(Box::new(unavailable(
                        shared,
                        "disk_full",
                        format!("the log's disk is full: {e}"),
                    )));
                }
                Err(e) => {
                    tracing::warn!(source = %shared.name, error = %e, "appending a request to the log failed");
                    return Err(Box::new(unavailable(
                        shared,
                        "log_error",
                        format!("the log failed to take the events: {e}"),
                    )));
                }
            }
        }
    }
    Ok(())
}
