//! A blocking HTTP/1.1 client on a raw TCP stream, for tests that need full control of
//! what goes on the wire (slow clients, broken bodies, declared lengths), and a server
//! harness that runs `lungfish run` with an HTTP source on a free loopback port.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

/// A response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    /// The body as JSON (panics if it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {}: body is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The error body's `message`.
    pub fn message(&self) -> String {
        self.json()["message"].as_str().unwrap_or("").to_owned()
    }
}

/// Parses one response from `bytes`.
pub fn parse_response(bytes: &[u8]) -> Option<Resp> {
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&bytes[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let body = bytes[end + 4..].to_vec();
    Some(Resp {
        status,
        headers,
        body,
    })
}

/// A free loopback port (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Connects to the server.
pub fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    s
}

/// Sends `raw` (a whole request, with `Connection: close`) and reads the response.
pub fn exchange(port: u16, raw: &[u8]) -> Resp {
    let mut s = connect(port);
    s.write_all(raw).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    parse_response(&out)
        .unwrap_or_else(|| panic!("no response: {:?}", String::from_utf8_lossy(&out)))
}

/// A request with these headers and body (`Content-Length` and `Connection: close`
/// added).
pub fn request(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut raw = format!("{method} {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n");
    for (n, v) in headers {
        raw.push_str(&format!("{n}: {v}\r\n"));
    }
    raw.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
    let mut raw = raw.into_bytes();
    raw.extend_from_slice(body);
    raw
}

/// POSTs `body` to `/v1/events` as client `client` with `content_type`.
pub fn post(port: u16, client: &str, content_type: &str, body: &[u8]) -> Resp {
    post_with(port, client, &[("content-type", content_type)], body)
}

/// POSTs with extra headers.
pub fn post_with(port: u16, client: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    let mut all = vec![("x-client-id", client)];
    all.extend_from_slice(headers);
    exchange(port, &request("POST", "/v1/events", &all, body))
}

/// GETs `path`.
pub fn get(port: u16, path: &str) -> Resp {
    exchange(port, &request("GET", path, &[], b""))
}

/// An event of key `user` at `ts`.
pub fn event(user: &str, ts: i64) -> String {
    format!(r#"{{"id":"{user}-{ts}","user":"{user}","ts":{ts},"value":1}}"#)
}

/// `lungfish run` with an HTTP source, in a directory of its own.
pub struct Server {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub child: Option<Child>,
}

/// Start of event time in tests: 2026-01-01T00:00:00Z.
pub const T0: i64 = 1_767_225_600_000;

impl Server {
    /// Writes `p.toml` (an HTTP source with `source_extra` lines, 1 s tumbling windows
    /// with no allowed disorder, a SQLite sink `out.db`, and `extra` at the end) and
    /// starts the pipeline.
    pub fn start(source_extra: &str, extra: &str) -> Server {
        Self::start_with(source_extra, "out_of_orderness = \"1ms\"", extra)
    }

    /// Like [`start`](Self::start), with `pipeline` as the `[pipeline]` table's settings
    /// besides the window and aggregates.
    pub fn start_with(source_extra: &str, pipeline: &str, extra: &str) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        std::fs::write(
            dir.path().join("p.toml"),
            format!(
                r#"name = "edge"
data_dir = "data"

[sources.api]
type = "http"
address = "127.0.0.1:{port}"
{source_extra}

[pipeline]
{pipeline}
window = {{ type = "tumbling", size = "1s" }}
aggregates = ["count", "sum(value)", "mean(value)"]

[sinks.results]
type = "sqlite"
path = "out.db"
batch_max_age = "50ms"
{extra}
"#
            ),
        )
        .unwrap();
        let mut server = Server {
            dir,
            port,
            child: None,
        };
        server.restart();
        server
    }

    /// Starts (again) the pipeline and waits until it answers `/health`.
    pub fn restart(&mut self) {
        let child = super::spawn_run(self.dir.path(), "p.toml");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let _ = s.write_all(&request("GET", "/health", &[], b""));
                let mut out = Vec::new();
                let _ = s.read_to_end(&mut out);
                if parse_response(&out).is_some_and(|r| r.status == 200) {
                    return;
                }
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                let out = self.child.take().unwrap().wait_with_output().unwrap();
                panic!(
                    "lungfish exited ({status}) before serving: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            assert!(Instant::now() < deadline, "the HTTP source did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The directory the pipeline runs in.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The SQLite file.
    pub fn db(&self) -> PathBuf {
        self.dir.path().join("out.db")
    }

    /// Asserts the server still serves.
    pub fn assert_healthy(&self, after: &str) {
        let r = get(self.port, "/health");
        assert_eq!(r.status, 200, "unhealthy after {after}");
    }

    /// SIGINT, then waits for a graceful end; returns stdout and stderr.
    pub fn stop(&mut self) -> (String, String) {
        let mut child = self.child.take().expect("running");
        let pid = child.id() as i32;
        // Through the `kill` command: a graceful stop, as Ctrl-C would.
        let _ = std::process::Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status();
        let status = super::wait_timeout(&mut child, Duration::from_secs(30));
        let out = child.wait_with_output().unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        assert!(
            status.success(),
            "lungfish failed: {status}\n{stdout}\n{stderr}"
        );
        (stdout, stderr)
    }

    /// SIGKILL.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A keep-alive connection for tests that send many requests in a row (load): requests
/// without `Connection: close`, each response read to the end of its `Content-Length`.
/// Nothing is retried: after an I/O error the outcome of the request is unknown, so the
/// error goes to the caller (and the connection is dropped).
pub struct KeepAlive {
    port: u16,
    stream: Option<TcpStream>,
    out: Vec<u8>,
    buf: Vec<u8>,
}

impl KeepAlive {
    /// A client of the server on `port` (it connects on the first request).
    pub fn new(port: u16) -> KeepAlive {
        KeepAlive {
            port,
            stream: None,
            out: Vec::new(),
            buf: Vec::new(),
        }
    }

    /// POSTs `body` to `/v1/events` as client `client` with `content_type`.
    ///
    /// # Errors
    /// Connecting, sending or reading failed, or the connection closed before a whole
    /// response.
    pub fn post(&mut self, client: &str, content_type: &str, body: &[u8]) -> std::io::Result<Resp> {
        let result = self.exchange(client, content_type, body);
        if result.is_err() {
            self.stream = None;
        }
        result
    }

    fn exchange(&mut self, client: &str, content_type: &str, body: &[u8]) -> std::io::Result<Resp> {
        use std::io::{Error, ErrorKind};
        if self.stream.is_none() {
            let s = TcpStream::connect(("127.0.0.1", self.port))?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(Duration::from_secs(30)))?;
            s.set_write_timeout(Some(Duration::from_secs(30)))?;
            self.stream = Some(s);
        }
        let s = self.stream.as_mut().expect("connected");
        self.out.clear();
        write!(
            self.out,
            "POST /v1/events HTTP/1.1\r\nhost: test\r\nx-client-id: {client}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )?;
        self.out.extend_from_slice(body);
        s.write_all(&self.out)?;
        self.buf.clear();
        let mut chunk = [0u8; 16 * 1024];
        let mut need: Option<usize> = None;
        loop {
            if need.is_none()
                && let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n")
            {
                let head = String::from_utf8_lossy(&self.buf[..end]).to_ascii_lowercase();
                let length = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .ok_or_else(|| {
                        Error::new(ErrorKind::InvalidData, format!("no content-length: {head}"))
                    })?;
                need = Some(end + 4 + length);
            }
            if need.is_some_and(|n| self.buf.len() >= n) {
                break;
            }
            let n = s.read(&mut chunk)?;
            if n == 0 {
                return Err(Error::new(
                    ErrorKind::UnexpectedEof,
                    format!(
                        "the connection closed after {} bytes of the response",
                        self.buf.len()
                    ),
                ));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
        let resp = parse_response(&self.buf).ok_or_else(|| {
            Error::new(ErrorKind::InvalidData, "an unreadable response".to_owned())
        })?;
        if resp
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
        {
            self.stream = None;
        }
        Ok(resp)
    }
}
