//! The Postgres sink: window rows upserted through binary `COPY`, one transaction per
//! batch, with the input positions they cover.
//!
//! Per batch, in one transaction:
//! 1. `COPY lungfish_staging (...) FROM STDIN BINARY`: every row into a session-local
//!    temporary table (emptied at commit);
//! 2. `INSERT INTO <table> SELECT ... FROM lungfish_staging ON CONFLICT (window_start,
//!    key) DO UPDATE SET ...`: an upsert keyed by window and key;
//! 3. `INSERT INTO lungfish_sink_positions ... ON CONFLICT DO UPDATE` with, per log
//!    partition, the offset through which the pipeline's input is covered once the
//!    batch is in, and the watermark: `GREATEST` of the old and new values.
//!
//! **Effectively once.** A window row is complete and keyed by `(window_start, key)`;
//! writing it again writes the same values. Offsets are committed to the log only after
//! every sink acknowledged the rows before them, so after a crash the pipeline resumes
//! from offsets whose effects are all in the table; the records after them are
//! processed again and their rows upserted to the same values: no effect is lost or
//! applied twice. `lungfish_sink_positions` says how far the table is up to date,
//! written in the same transaction as the rows (so it never claims rows that are not
//! there). It moves with every batch of rows, and at the end of a run; micro-batches that
//! produce no rows change nothing in the table and are recorded with the next batch.

//! Failures: a connection error or a cancelled statement (`statement_timeout`) is
//! transient (the connection is reopened on the next write); rows the table refuses
//! (SQLSTATE classes 22 and 23: data exceptions, constraint violations, triggers) are
//! [`SinkError::rejected_rows`], so the driver isolates them into the dead-letter queue
//! and writes the rest; anything else is permanent.
//!
//! TLS: `tls = true` (or `sslmode=require` in the URL) encrypts the connection through
//! the system's OpenSSL, as libpq's `sslmode=require` does: the server's certificate is
//! not verified against a CA (verification is a next step).
//!
//! **Parallel loading.** With `pool_size = n > 1`, a batch of at least 5,000 rows a
//! connection is shared among up to `k` connections, each loading its share in its own
//! transaction; the positions are written in the first connection's transaction, which
//! commits only after every other share has. If one share fails, the others may have
//! committed: the retry upserts them again to the same values (idempotent), and the
//! positions never claim a batch that is not wholly in.
//!
//! `k` is an [`AdaptiveLimit`] between 1 and `n`, starting at `n` (the configured pool
//! is what the operator allows; the limit only learns to use less of it). Every batch
//! of at least 10,000 rows (one that could be shared) feeds it, per share, the time
//! that share took (COPY, upsert and commit; the first share's wait for the others is
//! not counted) per 10,000 rows, so that batches and shares of any size compare, and
//! whether the batch failed transiently (a lost connection, a statement timeout, a
//! deadlock...: one failure per batch). AIMD: when a share takes more than twice the
//! baseline (lock contention, a slow disk, a saturated server) or the batch fails, `k`
//! halves, at most once per batch; while batches are fast and use at least half of
//! `k`, it grows by about one per batch, back towards `n`. Smaller batches, refused
//! rows and shares on a connection opened for the batch (cold caches) say nothing
//! about the server's load and leave it alone; the first `2n` measured shares only
//! learn the baseline. Connections above `k` stay open, idle. The limit is the gauge
//! `lungfish_concurrency_limit{component}`, component `sink:NAME`
//! ([`PostgresSink::named`]; `sink:TABLE` until named).

use std::sync::Arc;
use std::time::{Duration, Instant};

use postgres::binary_copy::BinaryCopyInWriter;
use postgres::error::SqlState;
use postgres::types::{ToSql, Type};
use postgres::{Client, NoTls};

use super::{Sink, SinkError, SinkPosition};
use crate::concurrency::{AdaptiveLimit, CallOutcome, LimitSettings};
use crate::config::DatabaseSinkConfig;
use crate::window::{ColumnKind, RowSchema, WindowRows};

/// Writes window rows into a Postgres table.
pub struct PostgresSink {
    pipeline: String,
    config: DatabaseSinkConfig,
    client: Option<Client>,
    /// More connections, used to load large batches in parallel (`pool_size - 1`).
    extra: Vec<Option<Client>>,
    /// How many connections load a batch: 1 to `pool_size`.
    limit: AdaptiveLimit,
    /// Table column names, in row order: window_start, window_end, key, aggregates.
    columns: Vec<String>,
    kinds: Vec<ColumnKind>,
    upsert: String,
    copy: String,
    positions: String,
}

impl std::fmt::Debug for PostgresSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresSink")
            .field("table", &self.config.table)
            .finish_non_exhaustive()
    }
}

fn quote(ident: &str) -> String {
    ident
        .split('.')
        .map(|part| format!("\"{}\"", part.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(".")
}

/// The URL without its password, for messages.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

fn error(context: &str, e: &postgres::Error) -> SinkError {
    let message = match e.as_db_error() {
        Some(db) => format!("{context}: {} ({})", db.message(), db.code().code()),
        None => format!("{context}: {e}"),
    };
    match e.code() {
        None => SinkError::transient(message), // the connection, not the statement
        Some(code) => {
            let class = &code.code()[..2];
            if *code == SqlState::QUERY_CANCELED
                || *code == SqlState::T_R_SERIALIZATION_FAILURE
                || *code == SqlState::T_R_DEADLOCK_DETECTED
                || class == "08"
                || class == "53"
                || class == "57"
            {
                SinkError::transient(message)
            } else if class == "22" || class == "23" || *code == SqlState::RAISE_EXCEPTION {
                SinkError::rejected_rows(message)
            } else {
                SinkError::permanent(message)
            }
        }
    }
}

/// A value of a row, typed as its column.
#[derive(Debug)]
enum Cell<'a> {
    Int(i64),
    Real(f64),
    Text(&'a str),
}

impl ToSql for Cell<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut postgres::types::private::BytesMut,
    ) -> Result<postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Cell::Int(v) => v.to_sql(ty, out),
            Cell::Real(v) => v.to_sql(ty, out),
            Cell::Text(v) => v.to_sql(ty, out),
        }
    }

    fn accepts(ty: &Type) -> bool {
        <i64 as ToSql>::accepts(ty) || <f64 as ToSql>::accepts(ty) || <&str as ToSql>::accepts(ty)
    }

    postgres::types::to_sql_checked!();
}

/// A batch is shared among connections only if each gets at least this many rows.
const MIN_ROWS_PER_CONNECTION: usize = 5_000;

/// Share latencies are compared per this many rows.
const LATENCY_ROWS: f64 = 10_000.0;

/// How the number of connections loading a batch adapts: halved (at most once per batch)
/// when a share takes more than twice the baseline time per row, or the batch fails.
/// Halving rather than the enrichment's 10%: the limit learns once per batch, not per
/// call, and is small; it should leave a struggling server within a few batches. The
/// first two batches' worth of shares only set the baseline.
fn limit_settings(pool_size: usize) -> LimitSettings {
    let pool = pool_size.max(1);
    LimitSettings {
        min: 1,
        max: pool,
        initial: pool,
        tolerance: 2.0,
        backoff: 0.5,
        warmup: 2 * pool,
    }
}

/// Loads rows `range` (counted across `batch`) into the table in `tx`: binary COPY into
/// the staging table, then the upsert.
fn load(
    tx: &mut postgres::Transaction<'_>,
    copy: &str,
    upsert: &str,
    types: &[Type],
    batch: &[Arc<WindowRows>],
    range: std::ops::Range<usize>,
) -> Result<(), postgres::Error> {
    {
        let writer = tx.copy_in(copy)?;
        let mut writer = BinaryCopyInWriter::new(writer, types);
        let mut cells: Vec<Cell> = Vec::new();
        let mut index = 0usize;
        for rows in batch {
            let (lo, hi) = (index, index + rows.len());
            index = hi;
            if hi <= range.start || lo >= range.end {
                continue;
            }
            let kinds = rows.schema().columns();
            for i in range.start.max(lo) - lo..range.end.min(hi) - lo {
                cells.clear();
                cells.extend([
                    Cell::Int(rows.window_start(i)),
                    Cell::Int(rows.window_end(i)),
                    Cell::Text(rows.key(i)),
                ]);
                cells.extend(kinds.iter().enumerate().map(|(c, (_, kind))| {
                    let v = rows.value(i, c);
                    match kind {
                        ColumnKind::Integer => Cell::Int(v as i64),
                        ColumnKind::Real => Cell::Real(v),
                    }
                }));
                writer.write_raw(cells.iter())?;
            }
        }
        writer.finish()?;
    }
    tx.execute(upsert, &[])?;
    Ok(())
}

impl PostgresSink {
    /// A sink of pipeline `pipeline` configured by `config` (nothing is connected until
    /// [`Sink::open`]).
    ///
    /// Its concurrency limit reports as component `sink:TABLE` until
    /// [`named`](Self::named).
    pub fn new(pipeline: &str, config: &DatabaseSinkConfig) -> Self {
        PostgresSink {
            pipeline: pipeline.to_owned(),
            config: config.clone(),
            client: None,
            extra: Vec::new(),
            limit: AdaptiveLimit::new(limit_settings(config.pool_size))
                .named(format!("sink:{}", config.table)),
            columns: Vec::new(),
            kinds: Vec::new(),
            upsert: String::new(),
            copy: String::new(),
            positions: String::new(),
        }
    }

    /// The sink, its concurrency limit reported as
    /// `lungfish_concurrency_limit{component="sink:NAME"}` (`name`: the sink's name in
    /// the pipeline).
    #[must_use]
    pub fn named(mut self, name: &str) -> Self {
        self.limit = self.limit.named(format!("sink:{name}"));
        self
    }

    /// How many connections the next large batch may be loaded over now: the adaptive
    /// limit, between 1 and `pool_size` (see the module's *Parallel loading*).
    pub fn concurrency_limit(&self) -> usize {
        self.limit.limit()
    }

    fn where_(&self) -> String {
        format!("postgres table {}", self.config.table)
    }

    fn connect(&self) -> Result<Client, SinkError> {
        let url = self.config.resolved_url().map_err(SinkError::permanent)?;
        let mut config: postgres::Config = url
            .parse()
            .map_err(|e| SinkError::permanent(format!("postgres url {}: {e}", redacted(&url))))?;
        let tls = self.config.tls || config.get_ssl_mode() == postgres::config::SslMode::Require;
        config.application_name("lungfish");
        config.connect_timeout(self.config.statement_timeout);
        let connected = if tls {
            // As libpq's `sslmode=require`: encrypted; the server's certificate is not
            // checked against a CA.
            config.ssl_mode(postgres::config::SslMode::Require);
            let connector = native_tls::TlsConnector::builder()
                .danger_accept_invalid_certs(true)
                .build()
                .map_err(|e| SinkError::permanent(format!("setting up TLS: {e}")))?;
            config.connect(postgres_native_tls::MakeTlsConnector::new(connector))
        } else {
            config.ssl_mode(postgres::config::SslMode::Disable);
            config.connect(NoTls)
        };
        let mut client =
            connected.map_err(|e| error(&format!("connecting to {}", redacted(&url)), &e))?;
        let timeout_ms = self.config.statement_timeout.as_millis().max(1);
        // The staging table lives with the session; rows vanish at each commit.
        let staging = format!(
            "SET statement_timeout = {timeout_ms};
             CREATE TEMP TABLE IF NOT EXISTS lungfish_staging ({}) ON COMMIT DELETE ROWS;",
            self.columns
                .iter()
                .zip(&self.kinds_with_keys())
                .map(|(c, (t, _))| format!("{} {t}", quote(c)))
                .collect::<Vec<_>>()
                .join(", ")
        );
        client
            .batch_execute(&staging)
            .map_err(|e| error(&self.where_(), &e))?;
        Ok(client)
    }

    /// SQL types of the columns, window_start first: as written in DDL, and for COPY.
    fn kinds_with_keys(&self) -> Vec<(&'static str, Type)> {
        let mut out = vec![
            ("BIGINT", Type::INT8),
            ("BIGINT", Type::INT8),
            ("TEXT", Type::TEXT),
        ];
        out.extend(self.kinds.iter().map(|k| match k {
            ColumnKind::Integer => ("BIGINT", Type::INT8),
            ColumnKind::Real => ("DOUBLE PRECISION", Type::FLOAT8),
        }));
        out
    }

    fn client(&mut self) -> Result<&mut Client, SinkError> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.client = Some(self.connect()?);
        }
        Ok(self.client.as_mut().expect("just connected"))
    }

    /// Per partition, the positions recorded for this pipeline and table.
    ///
    /// # Errors
    /// The query failed.
    pub fn recorded_positions(&mut self) -> Result<Vec<SinkPosition>, SinkError> {
        let (pipeline, table) = (self.pipeline.clone(), self.config.table.clone());
        let where_ = self.where_();
        let rows = self
            .client()?
            .query(
                "SELECT partition, through, watermark FROM lungfish_sink_positions
                 WHERE pipeline = $1 AND sink_table = $2 ORDER BY partition",
                &[&pipeline, &table],
            )
            .map_err(|e| error(&where_, &e))?;
        Ok(rows
            .iter()
            .map(|r| SinkPosition {
                partition: r.get::<_, i32>(0) as u32,
                through: r.get::<_, i64>(1) as u64,
                watermark: r.get(2),
            })
            .collect())
    }
}

impl Sink for PostgresSink {
    fn open(&mut self, schema: &RowSchema) -> Result<(), SinkError> {
        let c = &self.config;
        let mut columns = vec![
            c.column_name("window_start").to_owned(),
            c.column_name("window_end").to_owned(),
            c.column_name("key").to_owned(),
        ];
        columns.extend(
            schema
                .columns()
                .iter()
                .map(|(name, _)| c.column_name(name).to_owned()),
        );
        self.kinds = schema.columns().iter().map(|(_, k)| *k).collect();
        self.columns = columns;
        let table = quote(&c.table);
        let cols: Vec<String> = self.columns.iter().map(|c| quote(c)).collect();
        let list = cols.join(", ");
        let updates = cols[1..]
            .iter()
            .filter(|c| **c != cols[2])
            .map(|c| format!("{c} = EXCLUDED.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        self.copy = format!("COPY lungfish_staging ({list}) FROM STDIN BINARY");
        self.upsert = format!(
            "INSERT INTO {table} ({list}) SELECT {list} FROM lungfish_staging
             ON CONFLICT ({}, {}) DO UPDATE SET {updates}",
            cols[0], cols[2]
        );
        self.positions = "INSERT INTO lungfish_sink_positions (pipeline, sink_table, partition, through, watermark)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (pipeline, sink_table, partition) DO UPDATE SET
               through = GREATEST(lungfish_sink_positions.through, EXCLUDED.through),
               watermark = GREATEST(lungfish_sink_positions.watermark, EXCLUDED.watermark),
               updated_at = now()"
            .to_owned();
        let types = self.kinds_with_keys();
        let create = self.config.create_table;
        let table_name = self.config.table.clone();
        let where_ = self.where_();
        let definitions = self
            .columns
            .iter()
            .zip(&types)
            .map(|(c, (t, _))| format!("{} {t} NOT NULL", quote(c)))
            .collect::<Vec<_>>()
            .join(", ");
        let (ws, key) = (cols[0].clone(), cols[2].clone());
        let wanted = self.columns.clone();
        let client = self.client()?;
        if create {
            client
                .batch_execute(&format!(
                    "CREATE TABLE IF NOT EXISTS {table} ({definitions}, PRIMARY KEY ({ws}, {key}))"
                ))
                .map_err(|e| error(&where_, &e))?;
        }
        // The table must have our columns (it may have more).
        let (schema_name, bare) = match table_name.split_once('.') {
            Some((s, t)) => (Some(s.to_owned()), t.to_owned()),
            None => (None, table_name.clone()),
        };
        let rows = client
            .query(
                "SELECT column_name::text FROM information_schema.columns
                 WHERE table_name = $1 AND ($2::text IS NULL OR table_schema = $2)
                   AND ($2::text IS NOT NULL OR table_schema = ANY (current_schemas(false)))",
                &[&bare, &schema_name],
            )
            .map_err(|e| error(&where_, &e))?;
        let have: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        if have.is_empty() {
            return Err(SinkError::permanent(format!(
                "{where_}: the table does not exist (set create_table = true, or create it with columns {})",
                wanted.join(", ")
            )));
        }
        let missing: Vec<&String> = wanted.iter().filter(|c| !have.contains(c)).collect();
        if !missing.is_empty() {
            return Err(SinkError::permanent(format!(
                "{where_}: the table lacks columns {missing:?} (it has {have:?}); map them with `columns` or use another table"
            )));
        }
        client
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS lungfish_sink_positions (
                   pipeline TEXT NOT NULL, sink_table TEXT NOT NULL, partition INT NOT NULL,
                   through BIGINT NOT NULL, watermark BIGINT NOT NULL,
                   updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
                   PRIMARY KEY (pipeline, sink_table, partition))",
            )
            .map_err(|e| error(&where_, &e))?;
        self.limit.report();
        let recorded = self.recorded_positions()?;
        if !recorded.is_empty() {
            tracing::info!(table = %table_name, ?recorded, "postgres sink: positions recorded by earlier runs");
        }
        Ok(())
    }

    fn write(&mut self, batch: &[Arc<WindowRows>]) -> Result<(), SinkError> {
        self.write_at(batch, &[])
    }

    fn write_at(
        &mut self,
        batch: &[Arc<WindowRows>],
        positions: &[SinkPosition],
    ) -> Result<(), SinkError> {
        if batch.is_empty() && positions.is_empty() {
            return Ok(());
        }
        let where_ = self.where_();
        let types: Vec<Type> = self.kinds_with_keys().into_iter().map(|(_, t)| t).collect();
        let (copy, upsert, positions_sql) = (
            self.copy.clone(),
            self.upsert.clone(),
            self.positions.clone(),
        );
        let (pipeline, table) = (self.pipeline.clone(), self.config.table.clone());
        let total: usize = batch.iter().map(|b| b.len()).sum();
        // Shares: one per connection, as many as the limit allows, of at least
        // MIN_ROWS_PER_CONNECTION rows each; the first connection's helpers load the
        // others.
        let shares = self
            .limit
            .limit()
            .min(total / MIN_ROWS_PER_CONNECTION)
            .max(1);
        let helpers = shares - 1;
        // Only a batch that could be shared tells the limit something.
        let measured = total >= 2 * MIN_ROWS_PER_CONNECTION;
        // A transient failure (the server down, too many connections, a statement
        // timeout...) is a sign of overload: one per batch.
        let failed = |limit: &AdaptiveLimit, e: SinkError| {
            if measured && e.retryable {
                limit.record(Duration::ZERO, shares, CallOutcome::Failed, Instant::now());
            }
            e
        };
        // Per share, whether its connection is opened for this batch: a new session's
        // caches are cold, its time says nothing about the server's load.
        let mut fresh = vec![self.client.as_ref().is_none_or(Client::is_closed)];
        if let Err(e) = self.client() {
            return Err(failed(&self.limit, e));
        }
        while self.extra.len() < helpers {
            self.extra.push(None);
        }
        for i in 0..helpers {
            fresh.push(self.extra[i].as_ref().is_none_or(Client::is_closed));
            if fresh[i + 1] {
                self.extra[i] = Some(self.connect().map_err(|e| failed(&self.limit, e))?);
            }
        }
        let share = |k: usize| (total * k / shares)..(total * (k + 1) / shares);
        let (main, extra) = (&mut self.client, &mut self.extra);
        // Per share (the first one's first): how long it took.
        let result = std::thread::scope(|scope| -> Result<Vec<Duration>, postgres::Error> {
            let handles: Vec<_> = extra
                .iter_mut()
                .take(helpers)
                .enumerate()
                .map(|(k, c)| {
                    let client = c.as_mut().expect("connected above");
                    let (copy, upsert, types) = (&copy, &upsert, &types);
                    let range = share(k + 1);
                    scope.spawn(move || {
                        let started = Instant::now();
                        let mut tx = client.transaction()?;
                        load(&mut tx, copy, upsert, types, batch, range)?;
                        tx.commit()?;
                        Ok(started.elapsed())
                    })
                })
                .collect();
            let client = main.as_mut().expect("connected by the caller");
            let started = Instant::now();
            let mut tx = client.transaction()?;
            load(&mut tx, &copy, &upsert, &types, batch, share(0))?;
            let mut took = started.elapsed();
            // The helpers' shares are committed before the positions claim them.
            let mut latencies = vec![Duration::ZERO; shares];
            for (k, h) in handles.into_iter().enumerate() {
                latencies[k + 1] = h.join().expect("a Postgres loader panicked")?;
            }
            let started = Instant::now();
            for p in positions {
                let (partition, through) = (p.partition as i32, p.through as i64);
                tx.execute(
                    positions_sql.as_str(),
                    &[&pipeline, &table, &partition, &through, &p.watermark],
                )?;
            }
            tx.commit()?;
            took += started.elapsed();
            latencies[0] = took;
            Ok(latencies)
        });
        match result {
            Ok(latencies) => {
                if measured {
                    let now = Instant::now();
                    for (k, took) in latencies.into_iter().enumerate() {
                        if fresh[k] {
                            continue;
                        }
                        let rows = share(k).len().max(1) as f64;
                        let per_rows = took.mul_f64(LATENCY_ROWS / rows);
                        self.limit.record(per_rows, shares, CallOutcome::Ok, now);
                    }
                }
                Ok(())
            }
            Err(e) => {
                let e = failed(&self.limit, error(&where_, &e));
                if e.retryable {
                    // Reconnect on the next attempt: the sessions may be gone.
                    self.client = None;
                    self.extra.clear();
                }
                Err(e)
            }
        }
    }

    fn describe(&self) -> String {
        format!(
            "table {} in {}",
            self.config.table,
            redacted(&self.config.resolved_url().unwrap_or_default())
        )
    }

    fn query_hint(&self) -> Option<String> {
        Some(format!(
            "psql \"{}\" -c 'SELECT * FROM {} ORDER BY window_start, key LIMIT 10'",
            redacted(&self.config.resolved_url().unwrap_or_default()),
            self.config.table
        ))
    }

    fn stored_rows(&mut self) -> Option<u64> {
        let table = quote(&self.config.table);
        let client = self.client().ok()?;
        client
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .ok()
            .map(|r| r.get::<_, i64>(0) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            redacted("postgres://app:s3cret@db:5432/x"),
            "postgres://app:***@db:5432/x"
        );
        assert_eq!(redacted("postgres://app@db/x"), "postgres://app@db/x");
        assert_eq!(quote("public.win\"dows"), "\"public\".\"win\"\"dows\"");
    }
}
