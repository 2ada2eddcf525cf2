//! A throwaway Kafka-compatible broker for tests, and an independent client to check it.
//!
//! [`Broker::start`] runs [tansu](https://github.com/tansu-io/tansu), patched by
//! `tools/test-broker` (`tansu-lungfish-3` in `PATH` or `~/.cargo/bin`, or the file
//! `$TANSU` names; `.ci/run` builds it) on a free
//! loopback port with in-memory storage, waits until it answers a Kafka request, and
//! kills it on drop. The client side ([`produce`], [`consume`], [`consume_all`],
//! [`end_offsets`], [`floor`]) runs `scripts/kafka_client.py` with `python3` and
//! confluent-kafka (`pip install 'confluent-kafka==2.16.*'`), a client independent of
//! the rdkafka crate under test.
//!
//! Self-contained (std and serde_json only) so both crates' tests can include it:
//! `#[path = "support/kafka.rs"] mod kafka;` here, and
//! `#[path = "../../lungfish/tests/support/kafka.rs"] mod kafka;` in `lungfish-cli`.
//!
//! Caution: tansu 0.6 (memory engine) reports a partition's high watermark as the base
//! offset of its last record batch + 1, too low when a producer batches: count messages
//! by consuming them ([`consume_all`]), not with [`end_offsets`].

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A tansu broker of its own on 127.0.0.1, killed on drop.
pub struct Broker {
    child: Option<Child>,
    port: u16,
    bin: PathBuf,
    log: PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The patched tansu build of `tools/test-broker` (tansu 0.6.0 drops commit metadata,
/// cannot fetch from inside a record batch, and keeps a dead group leader; see its
/// README): `$TANSU`, or `tansu-lungfish-3` in `PATH` or in `~/.cargo/bin`.
fn tansu() -> PathBuf {
    const NAME: &str = "tansu-lungfish-3";
    if let Some(path) = std::env::var_os("TANSU") {
        return PathBuf::from(path);
    }
    let in_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(NAME))
            .find(|p| p.is_file())
    });
    let in_cargo = std::env::var_os("HOME")
        .map(|home| PathBuf::from(home).join(".cargo/bin").join(NAME))
        .filter(|p| p.is_file());
    in_path.or(in_cargo).expect(
        "the test broker (tansu-lungfish-3) is not installed: `.ci/run` builds it with \
         `bash tools/test-broker/build.sh`, or set TANSU to a broker's path",
    )
}

/// Sends an ApiVersions v0 request and reads the answer: the broker speaks Kafka.
fn answers_kafka(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    // Header v1: api_key 18 (ApiVersions), version 0, correlation id 7, client id null.
    let mut request = Vec::new();
    request.extend_from_slice(&18i16.to_be_bytes());
    request.extend_from_slice(&0i16.to_be_bytes());
    request.extend_from_slice(&7i32.to_be_bytes());
    request.extend_from_slice(&(-1i16).to_be_bytes());
    let mut framed = (request.len() as i32).to_be_bytes().to_vec();
    framed.extend_from_slice(&request);
    if stream.write_all(&framed).is_err() {
        return false;
    }
    let mut head = [0u8; 8];
    if stream.read_exact(&mut head).is_err() {
        return false;
    }
    let correlation = i32::from_be_bytes([head[4], head[5], head[6], head[7]]);
    correlation == 7
}

impl Broker {
    /// Starts a broker on a free loopback port and waits (up to 30 s) until it answers.
    pub fn start() -> Broker {
        let bin = tansu();
        for _ in 0..3 {
            let mut broker = Broker {
                child: None,
                port: free_port(),
                bin: bin.clone(),
                log: PathBuf::new(),
            };
            if broker.launch() {
                return broker;
            }
        }
        panic!("tansu did not start on a free port in 3 tries");
    }

    /// Starts tansu on `self.port`; false if it exited (the port was taken meanwhile).
    fn launch(&mut self) -> bool {
        static STARTED: AtomicU32 = AtomicU32::new(0);
        self.log = std::env::temp_dir().join(format!(
            "lungfish-tansu-{}-{}-{}.log",
            std::process::id(),
            self.port,
            STARTED.fetch_add(1, Ordering::Relaxed)
        ));
        let log = std::fs::File::create(&self.log).unwrap();
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let child = Command::new(&self.bin)
            .arg("broker")
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.bin.display()));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if answers_kafka(self.port) {
                return true;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                eprintln!(
                    "tansu exited ({status}) on port {}: {}",
                    self.port,
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
                return false;
            }
            assert!(
                Instant::now() < deadline,
                "tansu did not answer on port {} within 30 s: {}",
                self.port,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `127.0.0.1:PORT`, for `bootstrap.servers`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The broker's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Creates `name` with `partitions` partitions (panics if tansu refuses).
    pub fn create_topic(&self, name: &str, partitions: u32) {
        let output = Command::new(&self.bin)
            .args(["topic", "create", "--broker"])
            .arg(format!("tcp://127.0.0.1:{}", self.port))
            .args(["--partitions", &partitions.to_string(), name])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "tansu topic create {name}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Kills the broker (SIGKILL) and waits for it: connections are refused until
    /// [`restart`](Self::restart). Its in-memory topics are gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// True while the broker process runs.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// Starts the broker again on the same port (empty: topics must be created again).
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.launch() {
            assert!(
                Instant::now() < deadline,
                "tansu could not listen on port {} again",
                self.port
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// What the broker printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A message read back by [`consume`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The key; `None` if the message had none.
    pub key: Option<Vec<u8>>,
    /// The payload (empty if it was null).
    pub value: Vec<u8>,
    /// The partition it is in.
    pub partition: i32,
    /// Its offset in the partition.
    pub offset: i64,
    /// Its timestamp, epoch ms.
    pub timestamp: i64,
}

impl Message {
    /// The key as UTF-8 (panics if it is not, or absent).
    pub fn key_str(&self) -> &str {
        std::str::from_utf8(self.key.as_deref().expect("the message has no key")).unwrap()
    }

    /// The payload as UTF-8 (panics if it is not).
    pub fn value_str(&self) -> &str {
        std::str::from_utf8(&self.value).unwrap()
    }

    /// The payload parsed as JSON (panics if it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.value).unwrap_or_else(|e| {
            panic!(
                "message at {}/{} is not JSON ({e}): {:?}",
                self.partition,
                self.offset,
                String::from_utf8_lossy(&self.value)
            )
        })
    }
}

/// What [`floor`] measured: consuming a backlog with no processing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Floor {
    /// Messages read.
    pub messages: u64,
    /// From the assignment to the last message.
    pub seconds: f64,
    /// Key and payload bytes read.
    pub bytes: u64,
}

/// `scripts/kafka_client.py` of this repository.
pub fn client_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/kafka_client.py")
}

fn client(command: &str, broker: &Broker, topic: &str, args: &[String]) -> Command {
    let mut cmd = Command::new("python3");
    cmd.arg(client_script())
        .arg(command)
        .args(["--brokers", &broker.address(), "--topic", topic])
        .args(args)
        .stderr(Stdio::inherit());
    cmd
}

fn run(mut cmd: Command, stdin: Option<&[u8]>) -> String {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("python3 {}: {e}", client_script().display()));
    if let Some(input) = stdin {
        // The script writes its output only at the end: no deadlock on the pipes.
        child.stdin.take().unwrap().write_all(input).unwrap();
    }
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    if !output.status.success() {
        let present = Command::new("python3")
            .args(["-c", "import confluent_kafka"])
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            present,
            "python3 has no confluent_kafka: pip install 'confluent-kafka==2.16.*' (`.ci/run` does)"
        );
        panic!("{cmd:?} failed ({}): {stdout}", output.status);
    }
    stdout
}

fn bytes_field(line: &mut Vec<u8>, name: &str, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(s) => {
            line.extend_from_slice(format!("\"{name}\":").as_bytes());
            serde_json::to_writer(&mut *line, s).unwrap();
        }
        Err(_) => {
            line.extend_from_slice(format!("\"{name}_hex\":\"").as_bytes());
            for b in bytes {
                line.extend_from_slice(format!("{b:02x}").as_bytes());
            }
            line.push(b'"');
        }
    }
}

fn produce_lines(messages: &[(Option<&[u8]>, &[u8])], partition: Option<i32>) -> Vec<u8> {
    let mut input = Vec::new();
    for (key, value) in messages {
        input.push(b'{');
        match key {
            Some(key) => bytes_field(&mut input, "key", key),
            None => input.extend_from_slice(b"\"key\":null"),
        }
        input.push(b',');
        bytes_field(&mut input, "value", value);
        if let Some(p) = partition {
            input.extend_from_slice(format!(",\"partition\":{p}").as_bytes());
        }
        input.extend_from_slice(b"}\n");
    }
    input
}

fn produced(stdout: &str) -> usize {
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    v["produced"].as_u64().unwrap() as usize
}

/// Produces `messages` (key, payload) to `topic` with an idempotent producer (keyed
/// messages go to the partition of their key's hash), waits for every delivery report
/// and returns how many were delivered (all of them; panics otherwise).
pub fn produce(broker: &Broker, topic: &str, messages: &[(Option<&[u8]>, &[u8])]) -> usize {
    let cmd = client("produce", broker, topic, &[]);
    produced(&run(cmd, Some(&produce_lines(messages, None))))
}

/// Like [`produce`], all to `partition`.
pub fn produce_to_partition(
    broker: &Broker,
    topic: &str,
    partition: i32,
    messages: &[(Option<&[u8]>, &[u8])],
) -> usize {
    let cmd = client("produce", broker, topic, &[]);
    produced(&run(cmd, Some(&produce_lines(messages, Some(partition)))))
}

fn from_hex(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

fn messages(stdout: &str) -> Vec<Message> {
    stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            Message {
                key: v["key_hex"].as_str().map(from_hex),
                value: v["value_hex"].as_str().map(from_hex).unwrap_or_default(),
                partition: v["partition"].as_i64().unwrap() as i32,
                offset: v["offset"].as_i64().unwrap(),
                timestamp: v["timestamp"].as_i64().unwrap_or(-1),
            }
        })
        .collect()
}

/// Reads `topic` from the beginning (every partition, a fresh group, nothing committed)
/// until `n` messages or `timeout`; returns what came, in arrival order (per partition
/// in offset order).
pub fn consume(broker: &Broker, topic: &str, n: usize, timeout: Duration) -> Vec<Message> {
    let args = [
        "--count".to_owned(),
        n.to_string(),
        "--timeout".to_owned(),
        timeout.as_secs_f64().to_string(),
    ];
    messages(&run(client("consume", broker, topic, &args), None))
}

/// Reads every message of `topic`: from the beginning until none came for `idle` after
/// the first one (or `timeout` passed).
pub fn consume_all(
    broker: &Broker,
    topic: &str,
    idle: Duration,
    timeout: Duration,
) -> Vec<Message> {
    let args = [
        "--count".to_owned(),
        i64::MAX.to_string(),
        "--idle".to_owned(),
        idle.as_secs_f64().to_string(),
        "--timeout".to_owned(),
        timeout.as_secs_f64().to_string(),
    ];
    messages(&run(client("consume", broker, topic, &args), None))
}

/// The high watermark of each partition of `topic` (see the module's caution about
/// tansu: too low when producers batch).
pub fn end_offsets(broker: &Broker, topic: &str) -> Vec<i64> {
    let stdout = run(client("offsets", broker, topic, &[]), None);
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    v["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_i64().unwrap())
        .collect()
}

/// A benchmark's floor: consumes `count` messages of `topic` (its whole backlog) with no
/// processing, as fast as confluent-kafka can. Panics if fewer come within `timeout`.
pub fn floor(broker: &Broker, topic: &str, count: u64, timeout: Duration) -> Floor {
    let args = [
        "--count".to_owned(),
        count.to_string(),
        "--timeout".to_owned(),
        timeout.as_secs_f64().to_string(),
    ];
    let stdout = run(client("floor", broker, topic, &args), None);
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    Floor {
        messages: v["messages"].as_u64().unwrap(),
        seconds: v["seconds"].as_f64().unwrap(),
        bytes: v["bytes"].as_u64().unwrap(),
    }
}
