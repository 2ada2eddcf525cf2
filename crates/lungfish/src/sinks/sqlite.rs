//! The `sqlite` sink, Lungfish's embedded default.
//!
//! Rows go to a table keyed by `(window_start, key)` (a `WITHOUT ROWID` table, so rows
//! are stored in key order and an upsert is one B-tree lookup). Each batch is one
//! transaction of upserts through one prepared statement; the transaction commits with
//! the database in WAL mode and `synchronous=FULL` by default, so a batch acknowledged
//! is on disk. Writing the same window row again replaces it with the same values, so
//! replaying the log after a crash changes nothing.
//!
//! New databases get 64 KiB pages, which suit batched upserts of interleaved windows.
//! The table is created if missing: `window_start INTEGER, window_end INTEGER,
//! key TEXT`, then one column per aggregate (`count` INTEGER, the others REAL). An
//! existing table must have those columns.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rusqlite::{Connection, ErrorCode};

use crate::config::{SqliteSinkConfig, SqliteSync};
use crate::window::{ColumnKind, RowSchema, WindowRows};

use super::{Sink, SinkError};

/// Writes window rows into a SQLite table with idempotent upserts.
#[derive(Debug)]
pub struct SqliteSink {
    path: PathBuf,
    table: String,
    synchronous: SqliteSync,
    write_timeout: Duration,
    /// When the running write must stop (nanoseconds after `epoch`; 0: none).
    deadline: Arc<AtomicU64>,
    epoch: Instant,
    conn: Option<Connection>,
    upsert: String,
    columns: usize,
}

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

fn error(context: &str, e: rusqlite::Error) -> SinkError {
    let message = format!("{context}: {e}");
    match e.sqlite_error_code() {
        Some(
            ErrorCode::DatabaseBusy
            | ErrorCode::DatabaseLocked
            | ErrorCode::SystemIoFailure
            | ErrorCode::DiskFull,
        ) => SinkError::transient(message),
        // A row the table refuses (a CHECK, a trigger, a type): the rows' fault.
        Some(ErrorCode::ConstraintViolation | ErrorCode::TypeMismatch | ErrorCode::TooBig) => {
            SinkError::rejected_rows(message)
        }
        _ => SinkError::permanent(message),
    }
}

impl SqliteSink {
    /// A sink writing to `config.path`, table `config.table`.
    pub fn new(config: &SqliteSinkConfig) -> Self {
        SqliteSink {
            path: config.path.clone(),
            table: config.table.clone(),
            synchronous: config.synchronous,
            write_timeout: config.write_timeout,
            deadline: Arc::new(AtomicU64::new(0)),
            epoch: Instant::now(),
            conn: None,
            upsert: String::new(),
            columns: 0,
        }
    }

    fn conn(&mut self) -> Result<&mut Connection, SinkError> {
        self.conn
            .as_mut()
            .ok_or_else(|| SinkError::permanent("the sqlite sink was not opened"))
    }

    /// One transaction upserting every row of `batch`.
    fn write_rows(
        &mut self,
        batch: &[Arc<WindowRows>],
        upsert: &str,
        columns: usize,
        where_: &str,
    ) -> Result<(), SinkError> {
        let where_ = where_.to_owned();
        let conn = self.conn()?;
        let tx = conn.transaction().map_err(|e| error(&where_, e))?;
        {
            let mut stmt = tx.prepare_cached(upsert).map_err(|e| error(&where_, e))?;
            for rows in batch {
                let kinds = rows.schema().columns();
                for i in 0..rows.len() {
                    stmt.raw_bind_parameter(1, rows.window_start(i))
                        .and_then(|_| stmt.raw_bind_parameter(2, rows.window_end(i)))
                        .and_then(|_| stmt.raw_bind_parameter(3, rows.key(i)))
                        .map_err(|e| error(&where_, e))?;
                    for (c, (_, kind)) in kinds.iter().enumerate().take(columns) {
                        let v = rows.value(i, c);
                        let r = match kind {
                            ColumnKind::Integer => stmt.raw_bind_parameter(4 + c, v as i64),
                            ColumnKind::Real => stmt.raw_bind_parameter(4 + c, v),
                        };
                        r.map_err(|e| error(&where_, e))?;
                    }
                    stmt.raw_execute().map_err(|e| error(&where_, e))?;
                }
            }
        }
        tx.commit().map_err(|e| error(&where_, e))
    }
}

impl Sink for SqliteSink {
    fn open(&mut self, schema: &RowSchema) -> Result<(), SinkError> {
        let where_ = format!("sqlite {}", self.path.display());
        if let Some(dir) = self.path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)
                .map_err(|e| SinkError::permanent(format!("{where_}: {e}")))?;
        }
        let mut conn = Connection::open(&self.path).map_err(|e| error(&where_, e))?;
        conn.busy_timeout(self.write_timeout)
            .map_err(|e| error(&where_, e))?;
        // A write past its deadline is interrupted (and rolled back): checked every
        // 10,000 virtual-machine steps, a few microseconds.
        let (deadline, epoch) = (self.deadline.clone(), self.epoch);
        conn.progress_handler(
            10_000,
            Some(move || {
                let d = deadline.load(Ordering::Relaxed);
                d != 0 && epoch.elapsed().as_nanos() as u64 > d
            }),
        )
        .map_err(|e| error(&where_, e))?;
        let sync = match self.synchronous {
            SqliteSync::Full => "FULL",
            SqliteSync::Normal => "NORMAL",
        };
        // 64 KiB pages (set before WAL mode; an existing database keeps its own): rows of
        // many windows arrive interleaved, and large pages cut the B-tree splits. Measured
        // here, 880,000 interleaved upserts: 4 KiB pages ~0.7 M rows/s, 64 KiB ~1.1 M.
        // Switching a new database to WAL needs it to itself, and SQLite answers "busy"
        // at once, without its busy handler, while another process (a second instance
        // writing the same file) opens it too: retry within the write timeout.
        let setup =
            format!("PRAGMA page_size=65536; PRAGMA journal_mode=WAL; PRAGMA synchronous={sync};");
        let deadline = Instant::now() + self.write_timeout;
        loop {
            match conn.execute_batch(&setup) {
                Ok(()) => break,
                Err(e)
                    if Instant::now() < deadline
                        && matches!(
                            e.sqlite_error_code(),
                            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
                        ) =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(error(&where_, e)),
            }
        }
        let table = quote(&self.table);
        let mut defs = vec![
            "\"window_start\" INTEGER NOT NULL".to_owned(),
            "\"window_end\" INTEGER NOT NULL".to_owned(),
            "\"key\" TEXT NOT NULL".to_owned(),
        ];
        let mut names = vec![
            "window_start".to_owned(),
            "window_end".to_owned(),
            "key".to_owned(),
        ];
        for (name, kind) in schema.columns() {
            let ty = match kind {
                ColumnKind::Integer => "INTEGER",
                ColumnKind::Real => "REAL",
            };
            defs.push(format!("{} {ty}", quote(name)));
            names.push(name.clone());
        }
        conn.execute_batch(&format!(
            "CREATE TABLE IF NOT EXISTS {table} ({}, PRIMARY KEY (\"window_start\", \"key\")) WITHOUT ROWID;",
            defs.join(", ")
        ))
        .map_err(|e| error(&where_, e))?;
        // An existing table must have exactly our columns.
        let existing: Vec<String> = {
            let mut stmt = conn
                .prepare(&format!("PRAGMA table_info({table})"))
                .map_err(|e| error(&where_, e))?;
            stmt.query_map([], |r| r.get::<_, String>(1))
                .map_err(|e| error(&where_, e))?
                .collect::<Result<_, _>>()
                .map_err(|e| error(&where_, e))?
        };
        if existing
            .iter()
            .map(|s| s.to_ascii_lowercase())
            .collect::<Vec<_>>()
            != names
                .iter()
                .map(|s| s.to_ascii_lowercase())
                .collect::<Vec<_>>()
        {
            return Err(SinkError::permanent(format!(
                "{where_}: table {} exists with columns ({}), but the pipeline writes ({}); use another table or database",
                self.table,
                existing.join(", "),
                names.join(", ")
            )));
        }
        let placeholders: Vec<String> = (1..=names.len()).map(|i| format!("?{i}")).collect();
        let updates: Vec<String> = names
            .iter()
            .filter(|n| *n != "window_start" && *n != "key")
            .map(|n| format!("{0} = excluded.{0}", quote(n)))
            .collect();
        self.upsert = format!(
            "INSERT INTO {table} ({}) VALUES ({}) ON CONFLICT (\"window_start\", \"key\") DO UPDATE SET {}",
            names
                .iter()
                .map(|n| quote(n))
                .collect::<Vec<_>>()
                .join(", "),
            placeholders.join(", "),
            updates.join(", ")
        );
        self.columns = schema.columns().len();
        self.conn = Some(conn);
        Ok(())
    }

    fn write(&mut self, batch: &[Arc<WindowRows>]) -> Result<(), SinkError> {
        let upsert = self.upsert.clone();
        let columns = self.columns;
        let where_ = format!("sqlite {}", self.path.display());
        let deadline = (self.epoch.elapsed() + self.write_timeout).as_nanos() as u64;
        self.deadline.store(deadline.max(1), Ordering::Relaxed);
        let result = self.write_rows(batch, &upsert, columns, &where_);
        let late = self.epoch.elapsed().as_nanos() as u64 > deadline;
        self.deadline.store(0, Ordering::Relaxed);
        match result {
            Err(e) if late => Err(SinkError::transient(format!(
                "{where_}: the write took longer than write_timeout ({:?}) and was rolled back ({e})",
                self.write_timeout
            ))),
            other => other,
        }
    }

    fn describe(&self) -> String {
        format!("table {} in {}", self.table, self.path.display())
    }

    fn query_hint(&self) -> Option<String> {
        Some(format!(
            "sqlite3 {} 'SELECT * FROM {} ORDER BY window_start, key LIMIT 10'",
            self.path.display(),
            self.table
        ))
    }

    fn stored_rows(&mut self) -> Option<u64> {
        let table = quote(&self.table);
        let conn = self.conn.as_ref()?;
        conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| {
            r.get::<_, i64>(0)
        })
        .ok()
        .map(|n| n as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AggFunc, AggregateSpec};

    fn schema() -> Arc<RowSchema> {
        let aggs = vec![
            AggregateSpec {
                func: AggFunc::Count,
                field: None,
                column: "count".into(),
            },
            AggregateSpec {
                func: AggFunc::Sum,
                field: Some("value".into()),
                column: "sum_value".into(),
            },
        ];
        Arc::new(RowSchema::new(&aggs, &["value".into()]))
    }

    #[test]
    fn upserts_are_idempotent_and_shapes_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.db");
        let mut sink = SqliteSink::new(&SqliteSinkConfig::new(&path));
        sink.open(&schema()).unwrap();
        let mut rows = WindowRows::new(schema());
        rows.push(0, 1000, "a", &[2.0, 3.5]);
        rows.push(0, 1000, "b", &[1.0, -1.0]);
        let rows = Arc::new(rows);
        sink.write(std::slice::from_ref(&rows)).unwrap();
        sink.write(&[rows.clone(), rows]).unwrap();
        assert_eq!(sink.stored_rows(), Some(2));
        let conn = Connection::open(&path).unwrap();
        let (count, sum): (i64, f64) = conn
            .query_row(
                "SELECT count, sum_value FROM windows WHERE key = 'a'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((count, sum), (2, 3.5));

        // Another pipeline shape against the same table is refused, clearly.
        let other = Arc::new(RowSchema::new(
            &[AggregateSpec {
                func: AggFunc::Max,
                field: Some("value".into()),
                column: "max_value".into(),
            }],
            &["value".into()],
        ));
        let err = SqliteSink::new(&SqliteSinkConfig::new(&path))
            .open(&other)
            .unwrap_err();
        assert!(err.message.contains("exists with columns"), "{err}");
        assert!(!err.retryable);
    }

    /// A poison pill: one row of 10,000 that the table refuses (a trigger, as a user's
    /// constraint would) goes to the dead-letter queue; the other 9,999 are written.
    #[test]
    fn a_refused_row_is_isolated_and_the_rest_written() {
        use crate::shard::SinkMsg;
        use crate::sinks::{DriverSettings, SinkDriver};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.db");
        let mut sink = SqliteSink::new(&SqliteSinkConfig::new(&path));
        sink.open(&schema()).unwrap();
        Connection::open(&path)
            .unwrap()
            .execute_batch(
                "CREATE TRIGGER no_poison BEFORE INSERT ON windows WHEN NEW.key = 'poison'
                 BEGIN SELECT RAISE(ABORT, 'key poison is not allowed'); END;",
            )
            .unwrap();
        let dead_letters = crate::dlq::DeadLetters::open(
            dir.path().join("dlq"),
            lungfish_log::FsyncPolicy::Always,
        )
        .unwrap();
        let control = Arc::new(crate::control::Control::new());
        let driver = SinkDriver::new(
            "db",
            Box::new(sink),
            DriverSettings {
                batch_max_rows: 20_000,
                ..DriverSettings::default()
            },
            control.clone(),
        )
        .with_dead_letters(dead_letters.clone());
        let mut rows = WindowRows::new(schema());
        for i in 0..10_000 {
            let key = if i == 6_789 {
                "poison".to_owned()
            } else {
                format!("k{i}")
            };
            rows.push(0, 1000, &key, &[1.0, i as f64]);
        }
        let (tx, rx) = crossbeam_channel::bounded(4);
        tx.send(SinkMsg::Rows(Arc::new(rows))).unwrap();
        drop(tx);
        let mut sink = driver.run(rx).expect("the batch goes through");
        assert_eq!(sink.stored_rows(), Some(9_999));
        assert!(control.error().is_none());
        let mut letters = Vec::new();
        dead_letters
            .for_each(0, |_, d| letters.push(d.expect("a readable entry")))
            .unwrap();
        assert_eq!(letters.len(), 1);
        assert_eq!(letters[0].stage, "sink:db");
        assert_eq!(letters[0].kind, "rejected_row");
        assert!(
            letters[0].reason.contains("poison"),
            "{}",
            letters[0].reason
        );
        let row: serde_json::Value = serde_json::from_slice(&letters[0].payload).unwrap();
        assert_eq!(row["key"], "poison");
        assert_eq!(row["sum_value"], 6789.0);
    }

    #[test]
    fn instances_opening_one_new_database_at_once_all_succeed() {
        // Two `lungfish run` sharing a database start together (the Kafka group test
        // caught "database is locked" from the switch to WAL).
        let dir = tempfile::tempdir().unwrap();
        for round in 0..20 {
            let path = dir.path().join(format!("shared-{round}.db"));
            let start = Arc::new(std::sync::Barrier::new(4));
            let opened: Vec<_> = (0..4)
                .map(|_| {
                    let (path, start) = (path.clone(), start.clone());
                    std::thread::spawn(move || {
                        let mut sink = SqliteSink::new(&SqliteSinkConfig::new(&path));
                        start.wait();
                        sink.open(&schema()).map(|_| ())
                    })
                })
                .collect();
            for handle in opened {
                handle.join().unwrap().unwrap();
            }
        }
    }

    #[test]
    fn a_write_past_its_timeout_is_rolled_back_and_retryable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.db");
        let mut config = SqliteSinkConfig::new(&path);
        config.write_timeout = Duration::from_millis(1);
        let mut sink = SqliteSink::new(&config);
        sink.open(&schema()).unwrap();
        let mut rows = WindowRows::new(schema());
        for i in 0..300_000 {
            rows.push(0, 1000, &format!("k{i}"), &[1.0, 1.0]);
        }
        let err = sink.write(&[Arc::new(rows)]).unwrap_err();
        assert!(err.retryable, "{err}");
        assert!(err.message.contains("write_timeout"), "{err}");
        assert_eq!(sink.stored_rows(), Some(0), "rolled back");
        // The connection still works.
        let mut one = WindowRows::new(schema());
        one.push(0, 1000, "a", &[1.0, 1.0]);
        sink.write(&[Arc::new(one)]).unwrap();
        assert_eq!(sink.stored_rows(), Some(1));
    }
}
