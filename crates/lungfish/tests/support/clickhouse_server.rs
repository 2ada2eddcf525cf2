//! A throwaway ClickHouse server for tests: its own config and data in a temporary
//! directory, free loopback ports, killed (SIGKILL) and reaped on drop.
//!
//! `.ci/run` installs Debian's `clickhouse-server` package; without the binary the test
//! fails (it never skips), saying so. The server runs as the current user, root
//! included (ClickHouse 18.16 does not refuse root; it only wants its directories
//! writable).

use std::fs;
use std::io::Read;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long the server may take to answer its first ping.
const START_DEADLINE: Duration = Duration::from_secs(60);

/// A running `clickhouse-server`.
pub struct ClickHouseServer {
    child: Option<Child>,
    dir: tempfile::TempDir,
    binary: PathBuf,
    /// The HTTP interface's port on 127.0.0.1.
    pub http_port: u16,
    /// The native protocol's port (for `clickhouse-client --port`).
    pub tcp_port: u16,
    agent: ureq::Agent,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding a loopback port")
        .port()
}

/// `clickhouse-server` on the PATH, or where Debian puts it.
fn find_binary() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|d| d.join("clickhouse-server"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "clickhouse-server was not found on the PATH, in /usr/bin or in /usr/sbin: these tests \
                 run against a real ClickHouse server; `.ci/run` installs it (Debian package \
                 `clickhouse-server`: apt-get install clickhouse-server clickhouse-client)"
            )
        })
}

impl ClickHouseServer {
    /// Starts a server and waits until it answers (at most 60 s).
    ///
    /// # Panics
    /// The binary is missing or the server does not come up; the message has its log.
    pub fn start() -> Self {
        let binary = find_binary();
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut server = ClickHouseServer {
            child: None,
            dir,
            binary,
            http_port: free_port(),
            tcp_port: free_port(),
            agent: ureq::Agent::new_with_config(
                ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .timeout_global(Some(Duration::from_secs(30)))
                    .build(),
            ),
        };
        server.write_config();
        server.spawn();
        server
    }

    fn write_config(&self) {
        let d = self.dir.path().display();
        let config = format!(
            r#"<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><console>1</console></logger>
  <http_port>{http}</http_port>
  <tcp_port>{tcp}</tcp_port>
  <listen_host>127.0.0.1</listen_host>
  <path>{d}/data/</path>
  <tmp_path>{d}/tmp/</tmp_path>
  <user_files_path>{d}/user_files/</user_files_path>
  <format_schema_path>{d}/format_schemas/</format_schema_path>
  <users_config>/etc/clickhouse-server/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <mark_cache_size>536870912</mark_cache_size>
</yandex>
"#,
            http = self.http_port,
            tcp = self.tcp_port,
        );
        fs::write(self.dir.path().join("config.xml"), config).expect("writing config.xml");
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// Starts the process (again, after [`Self::kill`]: same data, same ports) and waits
    /// for it.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "the server is already running");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("opening server.log");
        let child = Command::new(&self.binary)
            .arg(format!(
                "--config-file={}",
                self.dir.path().join("config.xml").display()
            ))
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("cloning a file handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.binary.display()));
        self.child = Some(child);
        let started = Instant::now();
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                panic!(
                    "clickhouse-server exited at start ({status}); its log:\n{}",
                    self.log_tail()
                );
            }
            if self.ping() {
                return;
            }
            if started.elapsed() > START_DEADLINE {
                panic!(
                    "clickhouse-server did not answer on port {} within {START_DEADLINE:?}; its log:\n{}",
                    self.http_port,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn ping(&self) -> bool {
        self.agent
            .get(format!("http://127.0.0.1:{}/ping", self.http_port))
            .config()
            .timeout_global(Some(Duration::from_secs(1)))
            .build()
            .call()
            .is_ok_and(|r| r.status() == 200)
    }

    fn log_tail(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = fs::File::open(self.log_path()) {
            let _ = f.read_to_string(&mut text);
        }
        let start = text.len().saturating_sub(4000);
        let start = (start..text.len())
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(text.len());
        text[start..].to_owned()
    }

    /// Stops the server at once (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the server (SIGSTOP): connections are still accepted by the kernel, but
    /// nothing answers, as with a server stuck in a long pause.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// Thaws a server frozen by [`Self::pause`] (SIGCONT).
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, name: &str) {
        let child = self.child.as_ref().expect("the server is running");
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(child.id().to_string())
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// The HTTP interface's URL: `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// Runs `sql` and returns its output (TabSeparated unless the query says otherwise).
    ///
    /// # Panics
    /// The query fails.
    pub fn query(&self, sql: &str) -> String {
        self.try_query(sql)
            .unwrap_or_else(|e| panic!("query `{sql}` failed: {e}"))
    }

    /// Runs `sql`; the server's error message on failure.
    pub fn try_query(&self, sql: &str) -> Result<String, String> {
        let mut response = self
            .agent
            .post(format!("http://127.0.0.1:{}/", self.http_port))
            .send(sql)
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let body = response
            .body_mut()
            .with_config()
            .limit(256 << 20)
            .read_to_string()
            .map_err(|e| e.to_string())?;
        if status == 200 {
            Ok(body)
        } else {
            Err(format!("HTTP {status}: {body}"))
        }
    }
}

impl Drop for ClickHouseServer {
    fn drop(&mut self) {
        self.kill();
    }
}
