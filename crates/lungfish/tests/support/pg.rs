//! A throwaway Postgres server for tests: Debian's `postgresql` (which `.ci/run`
//! installs), initialised in a temporary directory and started on a free loopback port;
//! stopped on drop. As root, the server runs as the package's `postgres` user.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// A Postgres server of its own, stopped on drop.
pub struct Pg {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// The server's port on 127.0.0.1.
    pub port: u16,
    as_root: bool,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Pg {
    pub fn start() -> Pg {
        Self::start_with(false)
    }

    /// A server that also accepts TLS (a self-signed certificate made here).
    pub fn start_tls() -> Pg {
        Self::start_with(true)
    }

    fn start_with(tls: bool) -> Pg {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .and_then(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.path().join("bin"))
                    .filter(|p| p.join("pg_ctl").exists())
                    .max()
            })
            .expect("Postgres is not installed: `.ci/run` installs Debian's postgresql package");
        let uid = Command::new("id").arg("-u").output().unwrap();
        let as_root = String::from_utf8_lossy(&uid.stdout).trim() == "0";
        let dir = tempfile::tempdir().unwrap();
        if as_root {
            // initdb refuses root: the server runs as the package's `postgres` user.
            assert!(
                Command::new("chown")
                    .args(["-R", "postgres:postgres"])
                    .arg(dir.path())
                    .status()
                    .unwrap()
                    .success()
            );
        }
        let pg = Pg {
            dir,
            bin,
            port: free_port(),
            as_root,
        };
        pg.run(&format!(
            "{}/initdb -D {}/data -A trust -U postgres --no-sync > {}/initdb.log 2>&1",
            pg.bin.display(),
            pg.path().display(),
            pg.path().display()
        ));
        if tls {
            pg.run(&format!(
                "cd {}/data && openssl req -x509 -newkey rsa:2048 -nodes -keyout server.key -out server.crt -days 1 -subj /CN=localhost > /dev/null 2>&1 && chmod 600 server.key && echo 'ssl = on' >> postgresql.conf",
                pg.path().display()
            ));
        }
        pg.up();
        pg
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    fn run(&self, command: &str) {
        let status = if self.as_root {
            Command::new("su")
                .args(["postgres", "-s", "/bin/sh", "-c", command])
                .status()
        } else {
            Command::new("sh").args(["-c", command]).status()
        }
        .unwrap();
        assert!(status.success(), "`{command}` failed");
    }

    pub fn up(&self) {
        self.run(&format!(
            "{}/pg_ctl -D {dir}/data -l {dir}/server.log -o '-p {} -k {dir} -c listen_addresses=127.0.0.1' -w -t 60 start > /dev/null",
            self.bin.display(),
            self.port,
            dir = self.path().display()
        ));
    }

    pub fn down(&self) {
        self.run(&format!(
            "{}/pg_ctl -D {}/data -m immediate -w stop > /dev/null",
            self.bin.display(),
            self.path().display()
        ));
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn client(&self) -> postgres::Client {
        postgres::Client::connect(&self.url(), postgres::NoTls).unwrap()
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        let command = format!(
            "{}/pg_ctl -D {}/data -m immediate stop > /dev/null 2>&1",
            self.bin.display(),
            self.path().display()
        );
        let _ = if self.as_root {
            Command::new("su")
                .args(["postgres", "-s", "/bin/sh", "-c", &command])
                .status()
        } else {
            Command::new("sh").args(["-c", &command]).status()
        };
    }
}
