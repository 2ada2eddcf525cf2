//! A programmable "partner" enrichment service for tests: a small HTTP/1.1 server on
//! 127.0.0.1 (an ephemeral port), std only.
//!
//! * `GET /lookup?key=K` answers `200 {"weight": len(K), "tier": sum(K) % 3, "label":
//!   "K"}` (the length and sum in bytes, after percent-decoding), or `404` for keys
//!   starting with `unknown`.
//! * `POST /lookup` with `{"keys": [...]}` answers `200` with an object mapping each
//!   known key to the same object; `unknown...` keys are left out.
//!
//! Through the handle, at run time: [`Partner::set_latency`] (every answer waits that
//! long), [`Partner::set_failure_every`] (every n-th request answers 500),
//! [`Partner::set_down`] (every request answers 503); [`Partner::requests`] and
//! [`Partner::keys_asked`] count what reached it.
//!
//! Connections are kept alive (HTTP/1.1) unless the client sends `Connection: close`;
//! one thread per connection, at most [`MAX_CONNECTIONS`] at once (more are answered
//! 503 and closed). Dropping the handle stops the server and joins every thread.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 128;

/// How often an idle connection thread looks at the stop flag.
const IDLE_POLL: Duration = Duration::from_millis(50);

#[derive(Default)]
struct State {
    stop: AtomicBool,
    latency_ms: AtomicU64,
    failure_every: AtomicU64,
    down: AtomicBool,
    requests: AtomicU64,
    keys_asked: AtomicU64,
    connections: AtomicUsize,
}

/// A running partner service; stops on drop.
pub struct Partner {
    addr: SocketAddr,
    state: Arc<State>,
    acceptor: Option<JoinHandle<()>>,
}

impl Partner {
    /// Starts a partner on 127.0.0.1 (an ephemeral port), answering at once.
    pub fn start() -> Partner {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
        let addr = listener.local_addr().expect("the listener's address");
        let state = Arc::new(State::default());
        let acceptor = {
            let state = Arc::clone(&state);
            std::thread::Builder::new()
                .name("partner-accept".into())
                .spawn(move || accept(listener, state))
                .expect("spawning the partner's acceptor")
        };
        Partner {
            addr,
            state,
            acceptor: Some(acceptor),
        }
    }

    /// `http://127.0.0.1:PORT/lookup`.
    pub fn url(&self) -> String {
        format!("http://{}/lookup", self.addr)
    }

    /// Every answer from now on waits `latency` first.
    pub fn set_latency(&self, latency: Duration) {
        self.state
            .latency_ms
            .store(latency.as_millis() as u64, Ordering::SeqCst);
    }

    /// Every `n`-th request (counting all requests) answers 500; 0 turns it off.
    pub fn set_failure_every(&self, n: u64) {
        self.state.failure_every.store(n, Ordering::SeqCst);
    }

    /// While down, every request answers 503.
    pub fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::SeqCst);
    }

    /// Requests received (whatever their answer, including those the client gave up
    /// waiting for).
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Keys asked for, over all requests.
    pub fn keys_asked(&self) -> u64 {
        self.state.keys_asked.load(Ordering::SeqCst)
    }

    /// The answer's fields for `key`, as the partner computes them: (weight, tier).
    pub fn fields_of(key: &[u8]) -> (f64, f64) {
        let sum: u64 = key.iter().map(|&b| u64::from(b)).sum();
        (key.len() as f64, (sum % 3) as f64)
    }
}

impl Drop for Partner {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        // Wake the acceptor blocked in accept().
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn accept(listener: TcpListener, state: Arc<State>) {
    let mut workers: Vec<JoinHandle<()>> = Vec::new();
    for stream in listener.incoming() {
        if state.stop.load(Ordering::SeqCst) {
            break;
        }
        let Ok(mut stream) = stream else { continue };
        workers.retain(|w| !w.is_finished());
        if state.connections.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
            let _ = respond(
                &mut stream,
                503,
                b"{\"error\":\"too many connections\"}",
                false,
            );
            continue;
        }
        state.connections.fetch_add(1, Ordering::SeqCst);
        let conn_state = Arc::clone(&state);
        let spawned = std::thread::Builder::new()
            .name("partner-conn".into())
            .spawn(move || {
                let _ = serve(stream, &conn_state);
                conn_state.connections.fetch_sub(1, Ordering::SeqCst);
            });
        match spawned {
            Ok(worker) => workers.push(worker),
            Err(_) => {
                state.connections.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }
    for worker in workers {
        let _ = worker.join();
    }
}

/// One parsed request.
struct Request {
    method: String,
    target: String,
    body: Vec<u8>,
    close: bool,
}

/// Serves requests on one connection until it closes, asks to, or the server stops.
fn serve(stream: TcpStream, state: &State) -> std::io::Result<()> {
    stream.set_read_timeout(Some(IDLE_POLL))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        let Some(request) = read_request(&mut reader, state)? else {
            return Ok(());
        };
        let n = state.requests.fetch_add(1, Ordering::SeqCst) + 1;
        let latency = state.latency_ms.load(Ordering::SeqCst);
        if latency > 0 {
            std::thread::sleep(Duration::from_millis(latency));
        }
        let every = state.failure_every.load(Ordering::SeqCst);
        let (status, body) = if state.down.load(Ordering::SeqCst) {
            (503, b"{\"error\":\"down\"}".to_vec())
        } else if every > 0 && n.is_multiple_of(every) {
            (500, b"{\"error\":\"injected failure\"}".to_vec())
        } else {
            answer(&request, state)
        };
        respond(&mut writer, status, &body, !request.close)?;
        if request.close {
            return Ok(());
        }
    }
}

/// Reads one request; `None` when the connection closed cleanly or the server stops.
fn read_request(
    reader: &mut BufReader<TcpStream>,
    state: &State,
) -> std::io::Result<Option<Request>> {
    let mut line = String::new();
    // The request line: wait for it, looking at the stop flag now and then.
    loop {
        if state.stop.load(Ordering::SeqCst) {
            return Ok(None);
        }
        match reader.read_line(&mut line) {
            Ok(0) => return Ok(None),
            Ok(_) if line.ends_with('\n') => break,
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(e) => return Err(e),
        }
    }
    // Past the request line, the rest comes at once: wait longer per read.
    reader
        .get_ref()
        .set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let target = parts.next().unwrap_or_default().to_owned();
    let mut content_length = 0usize;
    let mut chunked = false;
    let mut close = false;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 {
            return Ok(None);
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        let Some((name, value)) = header.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => content_length = value.parse().unwrap_or(0),
            "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
            "connection" => close = value.eq_ignore_ascii_case("close"),
            _ => {}
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size)?;
            let size = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16)
                .unwrap_or(0);
            if size == 0 {
                // Trailers, up to the empty line.
                let mut trailer = String::new();
                while reader.read_line(&mut trailer)? > 0 && !trailer.trim_end().is_empty() {
                    trailer.clear();
                }
                break;
            }
            let start = body.len();
            body.resize(start + size, 0);
            reader.read_exact(&mut body[start..])?;
            let mut crlf = [0u8; 2];
            reader.read_exact(&mut crlf)?;
        }
    } else if content_length > 0 {
        body.resize(content_length, 0);
        reader.read_exact(&mut body)?;
    }
    reader.get_ref().set_read_timeout(Some(IDLE_POLL))?;
    Ok(Some(Request {
        method,
        target,
        body,
        close,
    }))
}

/// The answer's object for a known key.
fn fields_json(key: &[u8]) -> serde_json::Value {
    let (weight, tier) = Partner::fields_of(key);
    serde_json::json!({
        "weight": weight,
        "tier": tier,
        "label": String::from_utf8_lossy(key),
    })
}

fn answer(request: &Request, state: &State) -> (u16, Vec<u8>) {
    let (path, query) = request
        .target
        .split_once('?')
        .unwrap_or((request.target.as_str(), ""));
    if path != "/lookup" {
        return (404, b"{\"error\":\"no such path\"}".to_vec());
    }
    match request.method.as_str() {
        "GET" => {
            let Some(key) = query
                .split('&')
                .find_map(|pair| pair.strip_prefix("key="))
                .map(percent_decode)
            else {
                return (400, b"{\"error\":\"no key\"}".to_vec());
            };
            state.keys_asked.fetch_add(1, Ordering::SeqCst);
            if key.starts_with(b"unknown") {
                return (404, b"{\"error\":\"unknown key\"}".to_vec());
            }
            (200, fields_json(&key).to_string().into_bytes())
        }
        "POST" => {
            let parsed: serde_json::Value = match serde_json::from_slice(&request.body) {
                Ok(v) => v,
                Err(_) => return (400, b"{\"error\":\"bad json\"}".to_vec()),
            };
            let Some(keys) = parsed.get("keys").and_then(|k| k.as_array()) else {
                return (400, b"{\"error\":\"no keys\"}".to_vec());
            };
            state
                .keys_asked
                .fetch_add(keys.len() as u64, Ordering::SeqCst);
            let mut map = serde_json::Map::new();
            for key in keys.iter().filter_map(|k| k.as_str()) {
                if !key.starts_with("unknown") {
                    map.insert(key.to_owned(), fields_json(key.as_bytes()));
                }
            }
            (200, serde_json::Value::Object(map).to_string().into_bytes())
        }
        _ => (405, b"{\"error\":\"method not allowed\"}".to_vec()),
    }
}

fn percent_decode(s: &str) -> Vec<u8> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

fn respond(
    stream: &mut TcpStream,
    status: u16,
    body: &[u8],
    keep_alive: bool,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: {}\r\n\r\n",
        body.len(),
        if keep_alive { "keep-alive" } else { "close" },
    );
    let mut message = Vec::with_capacity(head.len() + body.len());
    message.extend_from_slice(head.as_bytes());
    message.extend_from_slice(body);
    stream.write_all(&message)?;
    stream.flush()
}
