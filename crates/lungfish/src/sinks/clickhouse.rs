//! The `clickhouse` sink: window rows into a ClickHouse `ReplacingMergeTree`, over
//! ClickHouse's HTTP interface.
//!
//! # Table
//!
//! Rows are complete window aggregates keyed by `(window_start, key)`. With
//! `create_table = true` (the default) `open` runs
//!
//! ```sql
//! CREATE TABLE IF NOT EXISTS <table> (
//!     window_start Int64, window_end Int64, key String,
//!     <one column per aggregate: Int64 for a count, Float64 for the others>,
//!     _version UInt64
//! ) ENGINE = ReplacingMergeTree(_version) ORDER BY (window_start, key)
//! ```
//!
//! with the `columns` renames applied to every name but `_version`. Then, created or
//! not, the table must exist and have every column the sink writes; otherwise `open`
//! fails with a permanent error naming the missing columns (and, for a missing table
//! with `create_table = false`, the statement above). Column *types* are the user's
//! choice on a table they made (a narrower type, a `LowCardinality(String)` key): a row
//! whose value the type refuses is a refused row (below), not a startup error. A table
//! whose engine is not a `ReplacingMergeTree` is accepted with a warning, since replays
//! may then leave duplicates.
//!
//! # Writes
//!
//! Each batch is one `POST` of `INSERT INTO <table> (<columns>) FORMAT <format>` whose
//! body holds every row of the batch, built in one buffer that the sink keeps from batch
//! to batch (no allocation per row). The format depends on the table's column types,
//! read in `open`:
//!
//! * The table has the types above (the sink made it, or it was made the same way):
//!   `RowBinary`, the values in ClickHouse's own binary layout (little-endian numbers,
//!   keys as a length and their bytes). Floats arrive bit for bit, so the table holds
//!   exactly the values SQLite or Postgres get.
//! * Any other types (a narrower integer, a `FixedString` or `LowCardinality(String)`
//!   key, a `Nullable` column): `JSONEachRow`, JSON lines (keys JSON-escaped; a
//!   non-finite float sent as the quoted `"nan"`, `"inf"` or `"-inf"`, which ClickHouse
//!   reads back as such), converted by the server to the table's types. A value that
//!   does not fit is refused (see Errors). Beware: ClickHouse 18.16 parses floats in text
//!   with a fast method that is not correctly rounded, so a float may land one unit in
//!   the last place off (`6.56` is stored as `6.5600000000000005`); that, measured here,
//!   is why the sink's own tables take `RowBinary`.
//!
//! The request sets `max_insert_block_size` to at least the batch's row count, so the
//! server parses the whole batch into one block before it writes anything, and writes
//! it as one part (one per partition, on a table a user partitioned): a batch that the
//! server refuses leaves nothing of itself in the table. (With the default of 1,048,576
//! rows a block, a larger batch refused at its end would have its first blocks written;
//! measured on the server named below.) A write that got no answer (a timeout, a
//! connection lost) may have landed whole; its retry replaces it, as below.
//!
//! Every write carries `_version`, a number that grows strictly across the writes of this
//! sink (the wall clock in microseconds since the Unix epoch, or the last version plus
//! one). A row written again, by a replay after a crash or by a retry after a timeout
//! whose insert did land after all, therefore *replaces* the earlier copy: the
//! `ReplacingMergeTree` keeps, per `(window_start, key)`, the row with the highest
//! `_version`. Both copies carry the same values anyway, as windows are emitted only
//! when complete. Replacement happens in background merges, so readers ask for the
//! merged view with `FINAL`:
//!
//! ```sql
//! SELECT * FROM windows FINAL ORDER BY window_start, key
//! ```
//!
//! [`Sink::stored_rows`] is `SELECT count() FROM <table> FINAL`.
//!
//! # Durability
//!
//! A write returns once ClickHouse answered `200` to the insert, that is once the part is
//! written into the server's data directory. ClickHouse 18.16 has no setting to fsync
//! new parts (`system.merge_tree_settings` lists none), so a power loss of the
//! *server's* machine may lose the last seconds; a `Replicated*MergeTree` table with
//! `insert_quorum` is ClickHouse's answer to that.
//!
//! # Errors
//!
//! * No answer (connection refused or reset, the whole request past
//!   `statement_timeout`), a 5xx without a known code, and ClickHouse's codes for an
//!   overloaded or unreachable server (`TOO_MANY_PARTS`, `MEMORY_LIMIT_EXCEEDED`,
//!   `TIMEOUT_EXCEEDED`, `NETWORK_ERROR`, ...): [`SinkError::transient`].
//! * ClickHouse's codes for values that do not fit the table (`CANNOT_PARSE_*` like
//!   `Code: 27`, `TYPE_MISMATCH` 53, `INCORRECT_DATA` 117, `TOO_LARGE_STRING_SIZE` 131,
//!   ...): [`SinkError::rejected_rows`], whatever the HTTP status (18.16 answers most
//!   of them with a 500). The driver then splits the batch to find the refused rows.
//! * ClickHouse's codes about the table, the request or the user (an unknown table or
//!   column, a read-only user, a wrong password, a syntax error; 18.16 sends most of
//!   them with a 500 too), and any other 4xx: [`SinkError::permanent`].
//!
//! # Limits
//!
//! Plain `http://` only: this build's HTTP client has no TLS, and `tls = true` or an
//! `https://` URL fails in `open`, saying so. One request at a time; `pool_size` is the
//! number of idle connections kept alive. Credentials in the URL
//! (`http://user:password@host:8123`) are sent as HTTP basic authentication, and other
//! query parameters of the URL (`?database=analytics`) are passed on with every request.
//! ClickHouse prefers few large inserts: each batch becomes a part that background merges
//! fold in, so a `batch_max_age` of a second or more suits a busy pipeline.
//!
//! Tested against ClickHouse 18.16.1 (Debian's `clickhouse-server`), which has
//! `ReplacingMergeTree(version)`, `FINAL`, `CREATE TABLE IF NOT EXISTS`, `RowBinary`,
//! `JSONEachRow` and HTTP basic authentication; it has neither table constraints nor
//! the `input()` table function nor correctly rounded text float parsing, and it reads a
//! JSON `null` in a `Float64` column as `nan`: the sink relies on none of those.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::DatabaseSinkConfig;
use crate::window::{ColumnKind, RowSchema, WindowRows};

use super::{Sink, SinkError};

/// The longest answer body read from the server (error messages, counts, column lists).
const MAX_ANSWER_BYTES: u64 = 1 << 20;

/// ClickHouse's default `max_insert_block_size`: rows a block when the request says
/// nothing.
const DEFAULT_BLOCK_ROWS: usize = 1_048_576;

/// A buffer grown past this by a large batch is not kept for the next one.
const KEEP_BUFFER_BYTES: usize = 64 << 20;

/// ClickHouse error codes meaning the values of some rows do not fit the table.
const ROW_CODES: &[u32] = &[
    6,   // CANNOT_PARSE_TEXT
    25,  // CANNOT_PARSE_ESCAPE_SEQUENCE
    26,  // CANNOT_PARSE_QUOTED_STRING
    27,  // CANNOT_PARSE_INPUT_ASSERTION_FAILED
    38,  // CANNOT_PARSE_DATE
    41,  // CANNOT_PARSE_DATETIME
    53,  // TYPE_MISMATCH
    69,  // ARGUMENT_OUT_OF_BOUND
    70,  // CANNOT_CONVERT_TYPE
    72,  // CANNOT_PARSE_NUMBER
    117, // INCORRECT_DATA
    131, // TOO_LARGE_STRING_SIZE
    321, // VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE
    349, // CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN
    407, // DECIMAL_OVERFLOW
    469, // VIOLATED_CONSTRAINT (servers newer than 18.16)
];

/// ClickHouse error codes meaning the server is busy, short of something, or cannot
/// reach a part of itself: the same write may succeed later.
const TRANSIENT_CODES: &[u32] = &[
    159, // TIMEOUT_EXCEEDED
    160, // TOO_SLOW
    173, // CANNOT_ALLOCATE_MEMORY
    202, // TOO_MANY_SIMULTANEOUS_QUERIES
    203, // NO_FREE_CONNECTION
    209, // SOCKET_TIMEOUT
    210, // NETWORK_ERROR
    225, // NO_ZOOKEEPER
    241, // MEMORY_LIMIT_EXCEEDED
    242, // TABLE_IS_READ_ONLY (a replica that lost ZooKeeper)
    243, // NOT_ENOUGH_SPACE
    252, // TOO_MANY_PARTS
    285, // TOO_FEW_LIVE_REPLICAS
    319, // UNKNOWN_STATUS_OF_INSERT
    394, // QUERY_WAS_CANCELLED
    425, // SYSTEM_ERROR
    999, // KEEPER_EXCEPTION
];

/// ClickHouse error codes about the table, the request or the user, not about rows or
/// the server's health (18.16 answers most of them with a 500 all the same).
const PERMANENT_CODES: &[u32] = &[
    10,  // NOT_FOUND_COLUMN_IN_BLOCK
    16,  // NO_SUCH_COLUMN_IN_TABLE (the table changed under the sink)
    33,  // CANNOT_READ_ALL_DATA (a RowBinary body that does not match the table's types)
    44,  // ILLEGAL_COLUMN
    47,  // UNKNOWN_IDENTIFIER
    48,  // NOT_IMPLEMENTED
    60,  // UNKNOWN_TABLE
    62,  // SYNTAX_ERROR
    73,  // UNKNOWN_FORMAT
    81,  // UNKNOWN_DATABASE
    115, // UNKNOWN_SETTING
    164, // READONLY
    181, // ILLEGAL_FINAL
    192, // UNKNOWN_USER
    193, // WRONG_PASSWORD
    194, // REQUIRED_PASSWORD
    195, // IP_ADDRESS_NOT_ALLOWED
    291, // DATABASE_ACCESS_DENIED
    497, // ACCESS_DENIED
    516, // AUTHENTICATION_FAILED
];

/// Writes window rows into a ClickHouse `ReplacingMergeTree` table over HTTP (see the
/// module documentation for the table, the writes and the errors).
#[derive(Debug)]
pub struct ClickHouseSink {
    config: DatabaseSinkConfig,
    /// Set by `open`.
    conn: Option<Connection>,
    /// The table as written in the SQL: `` `db`.`t` `` or `` `t` ``.
    table_sql: String,
    /// `INSERT INTO ... FORMAT RowBinary` or `JSONEachRow`.
    insert: String,
    /// How rows are sent, chosen in `open` from the table's column types.
    encoding: Encoding,
    /// The JSON text in front of each value of a row: `{"window_start":`,
    /// `,"window_end":`, `,"key":`, one per aggregate column, then `,"_version":`.
    prefixes: Vec<Vec<u8>>,
    /// The aggregate columns' kinds, in order.
    kinds: Vec<ColumnKind>,
    /// The request body, kept from batch to batch.
    body: Vec<u8>,
    /// The `_version` of the last write.
    version: u64,
    /// Whether the table's engine merges rows with `FINAL`.
    final_: bool,
}

/// The body format of inserts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    /// Values in ClickHouse's binary layout: every column has the type the sink
    /// creates, so floats arrive bit for bit.
    RowBinary,
    /// JSON lines, converted by the server to the table's own column types.
    JsonEachRow,
}

/// Where the server is and how to talk to it.
struct Connection {
    agent: ureq::Agent,
    /// `http://host:port/path`, without credentials or query.
    base: String,
    /// The URL's own query parameters, still percent-encoded.
    params: Vec<(String, String)>,
    /// `Basic ...`, from the URL's credentials.
    authorization: Option<String>,
    /// The user named in the URL, if any (for the query hint; never the password).
    user: Option<String>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("base", &self.base)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// The parts of a ClickHouse HTTP URL.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Endpoint {
    base: String,
    params: Vec<(String, String)>,
    user: Option<String>,
    password: Option<String>,
}

/// Splits `http://[user[:password]@]host[:port][/path][?query]`.
fn parse_url(url: &str) -> Result<Endpoint, String> {
    let rest = match url.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
        Some((scheme, _)) if scheme.eq_ignore_ascii_case("https") => {
            return Err(
                "TLS (https://) is not supported by this build's ClickHouse sink: it speaks plain http:// only"
                    .to_owned(),
            );
        }
        _ => {
            return Err(format!(
                "`{}` is not a ClickHouse HTTP URL: expected http://host:8123",
                redact(url)
            ));
        }
    };
    let (before_query, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, path) = match before_query.find('/') {
        Some(i) => before_query.split_at(i),
        None => (before_query, "/"),
    };
    let (userinfo, host) = match authority.rfind('@') {
        Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
        None => (None, authority),
    };
    if host.is_empty() {
        return Err(format!(
            "`{}` names no host: expected http://host:8123",
            redact(url)
        ));
    }
    let (user, password) = match userinfo {
        Some(info) => {
            let (u, p) = info.split_once(':').unwrap_or((info, ""));
            (Some(percent_decode(u)), Some(percent_decode(p)))
        }
        None => (None, None),
    };
    let params = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k.to_owned(), v.to_owned())
        })
        .collect();
    Ok(Endpoint {
        base: format!("http://{host}{path}"),
        params,
        user,
        password,
    })
}

/// `url` without its password, for messages.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => {
            let user = rest[..at].split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{}", &rest[at + 1..])
        }
        None => url.to_owned(),
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(h << 4 | l);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> shift & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// An SQL identifier in backticks.
fn quote_ident(ident: &str) -> String {
    format!("`{}`", ident.replace('\\', "\\\\").replace('`', "\\`"))
}

/// An SQL string literal.
fn quote_str(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// A ClickHouse error message on one line, without its `e.what()` trailer.
fn tidy(message: &str) -> String {
    let message = message.trim();
    let message = message
        .strip_suffix("e.what() = DB::Exception")
        .map_or(message, |m| m.trim_end().trim_end_matches(',').trim_end());
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The `Code: N` of a ClickHouse error message.
fn error_code(message: &str) -> Option<u32> {
    let at = message.find("Code: ")? + "Code: ".len();
    let digits: String = message[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// The sink error for an answer with HTTP status `status` and body `message`.
fn classify(status: u16, message: &str, context: &str) -> SinkError {
    let text = format!("{context}: HTTP {status}: {}", tidy(message));
    match error_code(message) {
        Some(code) if ROW_CODES.contains(&code) => SinkError::rejected_rows(text),
        Some(code) if TRANSIENT_CODES.contains(&code) => SinkError::transient(text),
        Some(code) if PERMANENT_CODES.contains(&code) => SinkError::permanent(text),
        Some(_) if status < 500 => SinkError::permanent(text),
        // A ClickHouse error with a code we do not know, on a 5xx: the server's own
        // trouble, as far as we can tell.
        _ if status >= 500 || status == 408 || status == 429 => SinkError::transient(text),
        _ => SinkError::permanent(text),
    }
}

/// The sink error for a request that got no answer.
fn request_error(e: ureq::Error, context: &str) -> SinkError {
    let text = format!("{context}: {e}");
    match e {
        ureq::Error::Io(_)
        | ureq::Error::Timeout(_)
        | ureq::Error::ConnectionFailed
        | ureq::Error::HostNotFound
        | ureq::Error::Protocol(_) => SinkError::transient(text),
        _ => SinkError::permanent(text),
    }
}

impl Connection {
    fn open(url: &str, config: &DatabaseSinkConfig) -> Result<Self, SinkError> {
        let endpoint = parse_url(url).map_err(SinkError::permanent)?;
        let agent_config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(config.statement_timeout))
            .timeout_connect(Some(config.statement_timeout.min(Duration::from_secs(10))))
            .max_idle_connections(config.pool_size.max(1))
            .max_idle_connections_per_host(config.pool_size.max(1))
            // Below ClickHouse's keep_alive_timeout (10 s by default), so a kept
            // connection is not one the server is closing.
            .max_idle_age(Duration::from_secs(5))
            .user_agent("lungfish")
            .build();
        let authorization = endpoint.user.as_ref().map(|u| {
            let password = endpoint.password.as_deref().unwrap_or("");
            format!("Basic {}", base64(format!("{u}:{password}").as_bytes()))
        });
        Ok(Connection {
            agent: ureq::Agent::new_with_config(agent_config),
            base: endpoint.base,
            params: endpoint.params,
            authorization,
            user: endpoint.user,
        })
    }

    /// POSTs `body`, with `query` (if any) and `settings` as URL parameters; returns
    /// the answer's body on a 200.
    fn post(
        &self,
        query: Option<&str>,
        settings: &[(&str, String)],
        body: &[u8],
        context: &str,
    ) -> Result<String, SinkError> {
        let mut request = self.agent.post(&self.base);
        for (k, v) in &self.params {
            request = request.query_raw(k, v);
        }
        if let Some(query) = query {
            request = request.query("query", query);
        }
        for (k, v) in settings {
            request = request.query(k, v);
        }
        if let Some(auth) = &self.authorization {
            request = request.header("Authorization", auth);
        }
        let mut response = request.send(body).map_err(|e| request_error(e, context))?;
        let status = response.status().as_u16();
        let answer = response
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER_BYTES)
            .lossy_utf8(true)
            .read_to_string();
        match (status, answer) {
            (200, Ok(answer)) => Ok(answer),
            (200, Err(e)) => Err(request_error(e, context)),
            (_, Ok(answer)) => Err(classify(status, &answer, context)),
            (_, Err(e)) => Err(classify(status, &e.to_string(), context)),
        }
    }

    /// Runs one SQL statement (sent as the body) and returns its output.
    fn sql(&self, sql: &str, context: &str) -> Result<String, SinkError> {
        self.post(None, &[], sql.as_bytes(), context)
    }
}

impl ClickHouseSink {
    /// A sink writing to the ClickHouse server at `c.url` (or `url_env`), table
    /// `c.table`. Nothing is contacted before [`Sink::open`].
    pub fn new(c: &DatabaseSinkConfig) -> Self {
        ClickHouseSink {
            config: c.clone(),
            conn: None,
            table_sql: String::new(),
            insert: String::new(),
            encoding: Encoding::RowBinary,
            prefixes: Vec::new(),
            kinds: Vec::new(),
            body: Vec::new(),
            version: 0,
            final_: true,
        }
    }

    fn context(&self) -> String {
        format!("clickhouse table {}", self.config.table)
    }

    fn conn(&self) -> Result<&Connection, SinkError> {
        self.conn
            .as_ref()
            .ok_or_else(|| SinkError::permanent("the clickhouse sink was not opened"))
    }

    /// The table's names for the columns the sink writes, in order.
    fn column_names(&self, schema: &RowSchema) -> Vec<String> {
        let c = &self.config;
        let mut names: Vec<String> = ["window_start", "window_end", "key"]
            .iter()
            .map(|n| c.column_name(n).to_owned())
            .collect();
        names.extend(
            schema
                .columns()
                .iter()
                .map(|(n, _)| c.column_name(n).to_owned()),
        );
        names.push("_version".to_owned());
        names
    }

    /// The ClickHouse types of the columns the sink writes, in order.
    fn expected_types(&self, schema: &RowSchema) -> Vec<&'static str> {
        let mut types = vec!["Int64", "Int64", "String"];
        types.extend(schema.columns().iter().map(|(_, kind)| match kind {
            ColumnKind::Integer => "Int64",
            ColumnKind::Real => "Float64",
        }));
        types.push("UInt64");
        types
    }

    /// The `CREATE TABLE` statement for `schema`.
    fn create_statement(&self, schema: &RowSchema, names: &[String]) -> String {
        let defs: Vec<String> = names
            .iter()
            .zip(self.expected_types(schema))
            .map(|(name, ty)| format!("{} {ty}", quote_ident(name)))
            .collect();
        format!(
            "CREATE TABLE IF NOT EXISTS {} ({}) ENGINE = ReplacingMergeTree(`_version`) ORDER BY ({}, {})",
            self.table_sql,
            defs.join(", "),
            quote_ident(&names[0]),
            quote_ident(&names[2]),
        )
    }

    /// The next `_version`: the clock in microseconds, strictly above the last one.
    fn next_version(&mut self) -> u64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        self.version = now.max(self.version + 1);
        self.version
    }

    /// Appends `batch` to `out` in the sink's encoding.
    fn encode(
        &self,
        batch: &[Arc<WindowRows>],
        version: u64,
        out: &mut Vec<u8>,
    ) -> Result<(), SinkError> {
        let columns = self.kinds.len();
        for rows in batch {
            if rows.schema().columns().len() != columns {
                return Err(SinkError::permanent(format!(
                    "{}: rows with {} aggregate columns, but the sink was opened for {columns}",
                    self.context(),
                    rows.schema().columns().len()
                )));
            }
            match self.encoding {
                Encoding::RowBinary => self.encode_binary(rows, version, out),
                Encoding::JsonEachRow => self.encode_json(rows, version, out),
            }
        }
        Ok(())
    }

    /// Appends `rows` in `RowBinary`: little-endian numbers, strings as a LEB128 length
    /// and their bytes, in the order of the `INSERT`'s column list.
    fn encode_binary(&self, rows: &WindowRows, version: u64, out: &mut Vec<u8>) {
        for i in 0..rows.len() {
            out.extend_from_slice(&rows.window_start(i).to_le_bytes());
            out.extend_from_slice(&rows.window_end(i).to_le_bytes());
            let key = rows.key(i).as_bytes();
            let mut len = key.len() as u64;
            loop {
                let byte = (len & 0x7f) as u8;
                len >>= 7;
                if len == 0 {
                    out.push(byte);
                    break;
                }
                out.push(byte | 0x80);
            }
            out.extend_from_slice(key);
            for (c, kind) in self.kinds.iter().enumerate() {
                let v = rows.value(i, c);
                match kind {
                    ColumnKind::Integer => out.extend_from_slice(&(v as i64).to_le_bytes()),
                    ColumnKind::Real => out.extend_from_slice(&v.to_le_bytes()),
                }
            }
            out.extend_from_slice(&version.to_le_bytes());
        }
    }

    /// Appends `rows` as JSON lines.
    fn encode_json(&self, rows: &WindowRows, version: u64, out: &mut Vec<u8>) {
        let mut itoa = itoa::Buffer::new();
        let p = &self.prefixes;
        let columns = self.kinds.len();
        for i in 0..rows.len() {
            out.extend_from_slice(&p[0]);
            out.extend_from_slice(itoa.format(rows.window_start(i)).as_bytes());
            out.extend_from_slice(&p[1]);
            out.extend_from_slice(itoa.format(rows.window_end(i)).as_bytes());
            out.extend_from_slice(&p[2]);
            serde_json::to_writer(&mut *out, rows.key(i)).expect("writing to a Vec cannot fail");
            for (c, kind) in self.kinds.iter().enumerate() {
                out.extend_from_slice(&p[3 + c]);
                let v = rows.value(i, c);
                match kind {
                    ColumnKind::Integer => {
                        out.extend_from_slice(itoa.format(v as i64).as_bytes());
                    }
                    ColumnKind::Real if v.is_finite() => {
                        serde_json::to_writer(&mut *out, &v).expect("writing to a Vec cannot fail");
                    }
                    // JSON has no such numbers; ClickHouse reads these strings as
                    // floats (a `null` would become nan, even for infinities).
                    ColumnKind::Real if v.is_nan() => out.extend_from_slice(b"\"nan\""),
                    ColumnKind::Real if v > 0.0 => out.extend_from_slice(b"\"inf\""),
                    ColumnKind::Real => out.extend_from_slice(b"\"-inf\""),
                }
            }
            out.extend_from_slice(&p[3 + columns]);
            out.extend_from_slice(itoa.format(version).as_bytes());
            out.extend_from_slice(b"}\n");
        }
    }
}

impl Sink for ClickHouseSink {
    fn open(&mut self, schema: &RowSchema) -> Result<(), SinkError> {
        let c = &self.config;
        let url = c
            .resolved_url()
            .map_err(|e| SinkError::permanent(format!("clickhouse sink: {e}")))?;
        if c.tls
            || url
                .get(..8)
                .is_some_and(|s| s.eq_ignore_ascii_case("https://"))
        {
            return Err(SinkError::permanent(format!(
                "clickhouse sink ({}): TLS is not supported by this build's ClickHouse sink \
                 (its HTTP client speaks plain http:// only); set tls = false and use an \
                 http:// URL on a trusted network",
                redact(&url)
            )));
        }
        let conn = Connection::open(&url, c)?;
        let (database, table) = match c.table.split_once('.') {
            Some((db, t)) => (Some(db), t),
            None => (None, c.table.as_str()),
        };
        self.table_sql = match database {
            Some(db) => format!("{}.{}", quote_ident(db), quote_ident(table)),
            None => quote_ident(table),
        };
        let context = format!("clickhouse table {} at {}", c.table, redact(&url));
        let names = self.column_names(schema);
        let create = self.create_statement(schema, &names);
        if c.create_table {
            conn.sql(&create, &context)?;
        }
        let database_sql = database.map_or("currentDatabase()".to_owned(), quote_str);
        let listing = conn.sql(
            &format!(
                "SELECT name, type FROM system.columns WHERE database = {database_sql} AND table = {} FORMAT TabSeparated",
                quote_str(table)
            ),
            &context,
        )?;
        let columns: Vec<(&str, &str)> = listing
            .lines()
            .map(|l| l.split_once('\t').unwrap_or((l, "")))
            .collect();
        let existing: Vec<&str> = columns.iter().map(|(n, _)| *n).collect();
        if existing.is_empty() {
            return Err(SinkError::permanent(format!(
                "{context}: the table does not exist and create_table = false; create it, e.g. `{create}`, \
                 or set create_table = true"
            )));
        }
        let missing: Vec<&str> = names
            .iter()
            .filter(|n| !existing.contains(&n.as_str()))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            return Err(SinkError::permanent(format!(
                "{context}: the table lacks the column{} {} that the pipeline writes (it has {}); \
                 add them, or use another table",
                if missing.len() == 1 { "" } else { "s" },
                missing.join(", "),
                existing.join(", ")
            )));
        }
        let engine = conn.sql(
            &format!(
                "SELECT engine FROM system.tables WHERE database = {database_sql} AND name = {} FORMAT TabSeparated",
                quote_str(table)
            ),
            &context,
        )?;
        let engine = engine.trim();
        self.final_ = engine.contains("ReplacingMergeTree");
        if !self.final_ {
            tracing::warn!(
                table = %c.table,
                engine,
                "the ClickHouse table is not a ReplacingMergeTree: rows written again after a crash or a retry may stay duplicated"
            );
        }
        // The types the sink creates: with them, rows go bit for bit in RowBinary.
        // Anything else (a user's narrower or wrapped type) takes JSON, which the server
        // converts, refusing the values that do not fit.
        let expected = self.expected_types(schema);
        let own_types = names
            .iter()
            .zip(&expected)
            .all(|(n, ty)| columns.iter().any(|(name, t)| name == n && t == ty));
        self.encoding = if own_types {
            Encoding::RowBinary
        } else {
            Encoding::JsonEachRow
        };
        self.insert = format!(
            "INSERT INTO {} ({}) FORMAT {}",
            self.table_sql,
            names
                .iter()
                .map(|n| quote_ident(n))
                .collect::<Vec<_>>()
                .join(", "),
            match self.encoding {
                Encoding::RowBinary => "RowBinary",
                Encoding::JsonEachRow => "JSONEachRow",
            }
        );
        self.prefixes = names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let mut p = if i == 0 { b"{".to_vec() } else { b",".to_vec() };
                serde_json::to_writer(&mut p, n).expect("writing to a Vec cannot fail");
                p.push(b':');
                p
            })
            .collect();
        self.kinds = schema.columns().iter().map(|(_, k)| *k).collect();
        self.conn = Some(conn);
        Ok(())
    }

    fn write(&mut self, batch: &[Arc<WindowRows>]) -> Result<(), SinkError> {
        let rows: usize = batch.iter().map(|b| b.len()).sum();
        if rows == 0 {
            return Ok(());
        }
        self.conn()?;
        let version = self.next_version();
        let mut body = std::mem::take(&mut self.body);
        body.clear();
        let per_row: usize = match self.encoding {
            Encoding::RowBinary => 8 * self.prefixes.len() + 16,
            Encoding::JsonEachRow => {
                self.prefixes.iter().map(Vec::len).sum::<usize>() + 24 * self.prefixes.len()
            }
        };
        body.reserve(rows * per_row);
        let mut result = self.encode(batch, version, &mut body);
        if result.is_ok() {
            let conn = self.conn()?;
            let settings = [(
                "max_insert_block_size",
                rows.max(DEFAULT_BLOCK_ROWS).to_string(),
            )];
            result = conn
                .post(Some(&self.insert), &settings, &body, &self.context())
                .map(|_| ());
        }
        if body.capacity() <= KEEP_BUFFER_BYTES {
            self.body = body;
        }
        result
    }

    fn describe(&self) -> String {
        let url = self
            .config
            .resolved_url()
            .map_or_else(|_| "(no url)".to_owned(), |u| redact(&u));
        format!("ClickHouse table {} at {url}", self.config.table)
    }

    fn query_hint(&self) -> Option<String> {
        let conn = self.conn.as_ref()?;
        let final_ = if self.final_ { " FINAL" } else { "" };
        let user = conn
            .user
            .as_ref()
            .map_or(String::new(), |u| format!(" --user '{u}'"));
        Some(format!(
            "curl -sS{user} '{}' --data-binary 'SELECT * FROM {}{final_} ORDER BY {}, {} LIMIT 10 FORMAT PrettyCompact'",
            conn.base,
            self.config.table,
            self.config.column_name("window_start"),
            self.config.column_name("key"),
        ))
    }

    fn stored_rows(&mut self) -> Option<u64> {
        let conn = self.conn.as_ref()?;
        let final_ = if self.final_ { " FINAL" } else { "" };
        conn.sql(
            &format!("SELECT count() FROM {}{final_}", self.table_sql),
            &self.context(),
        )
        .ok()?
        .trim()
        .parse()
        .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AggFunc, AggregateSpec};

    fn schema() -> Arc<RowSchema> {
        Arc::new(RowSchema::new(
            &[
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
            ],
            &["value".into()],
        ))
    }

    #[test]
    fn urls_are_split_and_credentials_kept_out_of_messages() {
        let e = parse_url("http://bob:s%40cret@db.local:8123/?database=analytics&x=1").unwrap();
        assert_eq!(e.base, "http://db.local:8123/");
        assert_eq!(e.user.as_deref(), Some("bob"));
        assert_eq!(e.password.as_deref(), Some("s@cret"));
        assert_eq!(
            e.params,
            vec![
                ("database".to_owned(), "analytics".to_owned()),
                ("x".to_owned(), "1".to_owned())
            ]
        );
        let e = parse_url("http://127.0.0.1:8123").unwrap();
        assert_eq!(e.base, "http://127.0.0.1:8123/");
        assert!(e.user.is_none() && e.params.is_empty());
        assert!(parse_url("https://h:8443").unwrap_err().contains("TLS"));
        assert!(parse_url("tcp://h:9000").is_err());
        assert_eq!(
            redact("http://bob:secret@h:8123/?q=a@b"),
            "http://bob:***@h:8123/?q=a@b"
        );
        assert_eq!(base64(b"default:"), "ZGVmYXVsdDo=");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b"abc"), "YWJj");
    }

    /// Messages as ClickHouse 18.16.1 sends them.
    #[test]
    fn errors_are_classified_by_clickhouse_code() {
        let fixed = "Code: 131, e.displayText() = DB::Exception: Too large value for FixedString(3): (while read the value of key key): (at row 1)\n, e.what() = DB::Exception\n";
        let e = classify(500, fixed, "t");
        assert!(e.rejects_rows());
        assert_eq!(
            e.message,
            "t: HTTP 500: Code: 131, e.displayText() = DB::Exception: Too large value for FixedString(3): (while read the value of key key): (at row 1)"
        );
        let parse = "Code: 27, e.displayText() = DB::Exception: Cannot parse input: expected , before: .5: (at row 1)";
        assert!(classify(500, parse, "t").rejects_rows());
        let sign =
            "Code: 72, e.displayText() = DB::Exception: Unsigned type must not contain '-' symbol";
        assert!(classify(400, sign, "t").rejects_rows());
        let parts = "Code: 252, e.displayText() = DB::Exception: Too many parts (300). Merges are processing significantly slower than inserts.";
        let e = classify(500, parts, "t");
        assert!(e.retryable && !e.rejects_rows());
        let table = "Code: 60, e.displayText() = DB::Exception: Table default.nosuch doesn't exist., e.what() = DB::Exception";
        let e = classify(404, table, "t");
        assert!(!e.retryable && !e.rejects_rows());
        let user = "Code: 192, e.displayText() = DB::Exception: Unknown user nouser";
        assert!(!classify(401, user, "t").retryable);
        let column = "Code: 16, e.displayText() = DB::Exception: No such column nosuch in table a, e.what() = DB::Exception";
        let e = classify(500, column, "t");
        assert!(!e.retryable && !e.rejects_rows());
        let readonly = "Code: 164, e.displayText() = DB::Exception: Cannot insert into table in readonly mode, e.what() = DB::Exception";
        assert!(!classify(500, readonly, "t").retryable);
        assert!(classify(502, "Bad Gateway", "t").retryable);
        assert!(!classify(400, "Bad Request", "t").retryable);
        assert!(classify(500, "Code: 9999, e.displayText() = unheard of", "t").retryable);
    }

    #[test]
    fn rows_become_json_lines_with_escaped_keys_and_a_version() {
        let mut config = DatabaseSinkConfig::new("http://127.0.0.1:1");
        config.columns = vec![("key".into(), "user_id".into())];
        let mut sink = ClickHouseSink::new(&config);
        let names = sink.column_names(&schema());
        assert_eq!(
            names,
            [
                "window_start",
                "window_end",
                "user_id",
                "count",
                "sum_value",
                "_version"
            ]
        );
        sink.prefixes = names
            .iter()
            .enumerate()
            .map(|(i, n)| format!("{}\"{n}\":", if i == 0 { "{" } else { "," }).into_bytes())
            .collect();
        sink.kinds = vec![ColumnKind::Integer, ColumnKind::Real];
        sink.encoding = Encoding::JsonEachRow;
        let mut rows = WindowRows::new(schema());
        rows.push(0, 1000, "a\"b\\c\nd\u{1}é", &[2.0, 3.5]);
        rows.push(1000, 2000, "x", &[1.0, f64::INFINITY]);
        rows.push(1000, 2000, "y", &[1.0, f64::NAN]);
        rows.push(1000, 2000, "z", &[1.0, f64::NEG_INFINITY]);
        let mut out = Vec::new();
        sink.encode(&[Arc::new(rows)], 7, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[0]["user_id"], "a\"b\\c\nd\u{1}é");
        assert_eq!(lines[0]["count"], 2);
        assert_eq!(lines[0]["sum_value"], 3.5);
        assert_eq!(lines[0]["_version"], 7);
        assert_eq!(lines[1]["sum_value"], "inf");
        assert_eq!(lines[2]["sum_value"], "nan");
        assert_eq!(lines[3]["sum_value"], "-inf");
        let v1 = sink.next_version();
        let v2 = sink.next_version();
        assert!(v2 > v1);
    }

    #[test]
    fn rows_become_row_binary_bit_for_bit() {
        let mut sink = ClickHouseSink::new(&DatabaseSinkConfig::new("http://127.0.0.1:1"));
        sink.kinds = vec![ColumnKind::Integer, ColumnKind::Real];
        sink.encoding = Encoding::RowBinary;
        let key = "k".repeat(200); // a two-byte length
        let mut rows = WindowRows::new(schema());
        rows.push(-5, 1000, &key, &[3.0, 6.56]);
        let mut out = Vec::new();
        sink.encode(&[Arc::new(rows)], 42, &mut out).unwrap();
        let mut expected = Vec::new();
        expected.extend_from_slice(&(-5i64).to_le_bytes());
        expected.extend_from_slice(&1000i64.to_le_bytes());
        expected.extend_from_slice(&[200 & 0x7f | 0x80, 1]);
        expected.extend_from_slice(key.as_bytes());
        expected.extend_from_slice(&3i64.to_le_bytes());
        expected.extend_from_slice(&6.56f64.to_le_bytes());
        expected.extend_from_slice(&42u64.to_le_bytes());
        assert_eq!(out, expected);
    }

    #[test]
    fn tls_is_refused_in_open() {
        let mut config = DatabaseSinkConfig::new("http://127.0.0.1:1");
        config.tls = true;
        let e = ClickHouseSink::new(&config).open(&schema()).unwrap_err();
        assert!(
            !e.retryable && e.message.contains("TLS is not supported"),
            "{e}"
        );
        let e = ClickHouseSink::new(&DatabaseSinkConfig::new("https://127.0.0.1:1"))
            .open(&schema())
            .unwrap_err();
        assert!(
            !e.retryable && e.message.contains("TLS is not supported"),
            "{e}"
        );
    }

    #[test]
    fn an_unreachable_server_is_a_transient_failure() {
        // A port nobody listens on: bound, then released.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let e = ClickHouseSink::new(&DatabaseSinkConfig::new(format!("http://127.0.0.1:{port}")))
            .open(&schema())
            .unwrap_err();
        assert!(e.retryable, "{e}");
    }
}
