//! The TOML layer: maps a pipeline file onto the typed configuration, collecting every
//! problem with its location instead of stopping at the first.
//!
//! Each section has a small reader that takes what it knows from a `toml_edit` table
//! (which keeps the byte span of every key and value), reports unknown keys, wrong types
//! and bad units, and falls back to the default for a field it could not read. The typed
//! result is then checked by [`validate::check`]; those issues are located through the
//! spans recorded while reading, and dropped when they concern a field that already failed
//! to read (so one mistake is reported once).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml_edit::{Array, Document, Item, TableLike, Value};

use super::error::{LineIndex, index, is_within, join, parent};
use super::suggest::closest;
use super::units::{parse_duration, parse_size};
use super::validate::{self, Issue};
use super::{
    AggregateSpec, BodyFormat, ContentEncoding, DatabaseSinkConfig, EnrichConfig, EnrichMethod,
    FileSinkConfig, FileSourceConfig, FilterConfig, FsyncPolicy, GeneratorConfig, HttpSourceConfig,
    KafkaSinkConfig, KafkaSourceConfig, KafkaStart, KeyDistribution, LogSettings, MetricsConfig,
    NamedOperator, NamedSink, NamedSource, OnUnavailable, OperatorConfig, PipelineConfig,
    ProcessingConfig, ProtobufConfig, Rate, SinkConfig, SourceConfig, SqliteSinkConfig, SqliteSync,
    WhenFull, WindowSpec,
};
use super::{ConfigError, ConfigErrors};
use crate::codec::InputFormat;
use crate::operator::filter::Otherwise;

// The keys each table accepts; any other key is reported as unknown. The schema's tests
// (`config/schema/tests.rs`) check that these are exactly the keys it describes.

pub(crate) const TOP_KEYS: &[&str] = &[
    "name",
    "data_dir",
    "sources",
    "log",
    "pipeline",
    "operators",
    "sinks",
    "metrics",
    "protobuf",
];
pub(crate) const PROTOBUF_KEYS: &[&str] = &["file", "message"];
pub(crate) const FILTER_KEYS: &[&str] = &["type", "condition", "otherwise"];
pub(crate) const ENRICH_KEYS: &[&str] = &[
    "type",
    "url",
    "method",
    "fields",
    "flag",
    "batch_keys",
    "timeout",
    "cache_size",
    "cache_ttl",
    "max_concurrency",
    "slow_call",
    "on_unavailable",
];
pub(crate) const GENERATOR_KEYS: &[&str] = &[
    "type",
    "count",
    "duration",
    "rate",
    "keys",
    "distribution",
    "zipf_exponent",
    "hot_share",
    "disorder",
    "malformed",
    "seed",
    "start_time",
    "events_per_second",
];
pub(crate) const FILE_SOURCE_KEYS: &[&str] = &["type", "paths", "format"];
pub(crate) const KAFKA_SOURCE_KEYS: &[&str] = &[
    "type",
    "brokers",
    "topics",
    "group",
    "start",
    "bounded",
    "max_poll_interval",
    "session_timeout",
    "options",
];
pub(crate) const KAFKA_SINK_KEYS: &[&str] = &[
    "type",
    "brokers",
    "topic",
    "compression",
    "linger",
    "batch_max_rows",
    "batch_max_age",
    "write_timeout",
    "options",
];
pub(crate) const HTTP_SOURCE_KEYS: &[&str] = &[
    "type",
    "address",
    "max_body_size",
    "max_event_size",
    "formats",
    "encodings",
    "max_connections",
    "max_inflight_bytes",
    "header_timeout",
    "body_timeout",
    "ack_timeout",
    "idempotency_horizon",
    "idempotency_max_keys",
    "max_lag",
    "rate_limit",
    "rate_limit_burst",
    "client_header",
    "retry_after",
];
pub(crate) const LOG_KEYS: &[&str] = &[
    "partitions",
    "segment_size",
    "fsync",
    "max_batch_size",
    "retention_size",
    "retention_age",
    "max_size",
    "when_full",
];
pub(crate) const PIPELINE_KEYS: &[&str] = &[
    "key",
    "time",
    "id",
    "out_of_orderness",
    "allowed_lateness",
    "checkpoint_interval",
    "dedup_horizon",
    "dedup_max_ids",
    "pre_aggregate",
    "idle_timeout",
    "shards",
    "batch_max_events",
    "batch_max_age",
    "max_event_size",
    "memory_limit",
    "window",
    "aggregates",
];
pub(crate) const TUMBLING_KEYS: &[&str] = &["type", "size"];
pub(crate) const SLIDING_KEYS: &[&str] = &["type", "size", "slide"];
pub(crate) const SESSION_KEYS: &[&str] = &["type", "gap"];
pub(crate) const SQLITE_KEYS: &[&str] = &[
    "type",
    "path",
    "table",
    "batch_max_rows",
    "batch_max_age",
    "synchronous",
    "write_timeout",
    "write_behind",
];
pub(crate) const FILE_SINK_KEYS: &[&str] = &["type", "path", "batch_max_rows", "batch_max_age"];
pub(crate) const STDOUT_KEYS: &[&str] = &["type"];
pub(crate) const DATABASE_SINK_KEYS: &[&str] = &[
    "type",
    "url",
    "url_env",
    "table",
    "columns",
    "create_table",
    "batch_max_rows",
    "batch_max_age",
    "pool_size",
    "statement_timeout",
    "tls",
    "write_behind",
];
pub(crate) const METRICS_KEYS: &[&str] = &["address"];

// The names of enumerated values in pipeline files (the schema lists them from here).

/// `when_full` of `[log]`.
pub(crate) const WHEN_FULL: &[(&str, WhenFull)] = &[
    ("refuse", WhenFull::Refuse),
    ("delete_oldest", WhenFull::DeleteOldest),
];
/// `distribution` of generator sources.
pub(crate) const DISTRIBUTIONS: &[(&str, KeyDistribution)] = &[
    ("uniform", KeyDistribution::Uniform),
    ("zipf", KeyDistribution::Zipf),
    ("hot", KeyDistribution::Hot),
];
/// `format` of file sources.
pub(crate) const INPUT_FORMATS: &[(&str, InputFormat)] = &[
    ("json", InputFormat::Json),
    ("protobuf", InputFormat::Protobuf),
];
/// `formats` of HTTP sources.
pub(crate) const BODY_FORMATS: &[(&str, BodyFormat)] = &[
    ("json", BodyFormat::Json),
    ("ndjson", BodyFormat::Ndjson),
    ("protobuf", BodyFormat::Protobuf),
];
/// `encodings` of HTTP sources.
pub(crate) const ENCODINGS: &[(&str, ContentEncoding)] = &[
    ("gzip", ContentEncoding::Gzip),
    ("zstd", ContentEncoding::Zstd),
];
/// `start` of Kafka sources.
pub(crate) const KAFKA_STARTS: &[(&str, KafkaStart)] = &[
    ("earliest", KafkaStart::Earliest),
    ("latest", KafkaStart::Latest),
];
/// `otherwise` of filter operators.
pub(crate) const OTHERWISE: &[(&str, Otherwise)] = &[
    ("drop", Otherwise::Drop),
    ("dead_letter", Otherwise::DeadLetter),
];
/// `method` of enrich operators.
pub(crate) const ENRICH_METHODS: &[(&str, EnrichMethod)] =
    &[("get", EnrichMethod::Get), ("post", EnrichMethod::Post)];
/// `on_unavailable` of enrich operators.
pub(crate) const ON_UNAVAILABLE: &[(&str, OnUnavailable)] = &[
    ("pass", OnUnavailable::Pass),
    ("dead_letter", OnUnavailable::DeadLetter),
];
/// `synchronous` of SQLite sinks.
pub(crate) const SQLITE_SYNC: &[(&str, SqliteSync)] =
    &[("full", SqliteSync::Full), ("normal", SqliteSync::Normal)];

/// Reads and checks a pipeline file's text.
pub(crate) fn read(text: &str, origin: &Path) -> Result<PipelineConfig, ConfigErrors> {
    let doc = match Document::parse(text) {
        Ok(doc) => doc,
        Err(err) => {
            let problem = Problem {
                offset: err.span().map_or(0, |span| span.start),
                field: String::new(),
                message: format!("invalid TOML: {}", err.message()),
            };
            return Err(located(text, origin, vec![problem]));
        }
    };
    let mut reader = Reader::default();
    let config = reader.document(doc.as_table(), origin);
    for issue in validate::check(&config) {
        reader.issue(issue);
    }
    if reader.problems.is_empty() {
        Ok(config)
    } else {
        Err(located(text, origin, reader.problems))
    }
}

/// A problem at a byte offset, before it is turned into a line and column.
struct Problem {
    offset: usize,
    field: String,
    message: String,
}

fn located(text: &str, origin: &Path, mut problems: Vec<Problem>) -> ConfigErrors {
    problems.sort_by_key(|p| p.offset);
    let lines = LineIndex::new(text);
    ConfigErrors(
        problems
            .into_iter()
            .map(|p| {
                let (line, column) = lines.locate(p.offset);
                ConfigError {
                    file: origin.to_path_buf(),
                    line,
                    column,
                    field: p.field,
                    message: p.message,
                }
            })
            .collect(),
    )
}

/// Where a field of the typed configuration is in the file. The path in the file differs
/// from the typed path for array elements after one that could not be read.
struct Place {
    field: String,
    span: Range<usize>,
}

/// A table of the file: an explicit `[table]`, an inline `{ ... }` or a dotted-key table.
struct Tbl<'t> {
    path: String,
    table: &'t dyn TableLike,
    /// The header, the inline table or the key: where "missing field" errors point.
    span: Range<usize>,
}

/// A key and its item.
struct Entry<'t> {
    path: String,
    key_span: Range<usize>,
    item: &'t Item,
}

impl Entry<'_> {
    /// The value's span, or the key's when the value has none.
    fn span(&self) -> Range<usize> {
        self.item.span().unwrap_or_else(|| self.key_span.clone())
    }
}

#[derive(Default)]
struct Reader {
    problems: Vec<Problem>,
    /// File paths of fields that could not be read; issues about them are dropped.
    failed: Vec<String>,
    /// Typed path -> place in the file, for every field the file sets.
    places: HashMap<String, Place>,
}

impl Reader {
    // ----- plumbing -----

    /// Reports a problem with the field at `path` and remembers that it failed.
    fn fail(&mut self, offset: usize, path: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            offset,
            field: path.to_owned(),
            message: message.into(),
        });
        self.failed.push(path.to_owned());
    }

    fn place(&mut self, typed: String, field: &str, span: Range<usize>) {
        self.places.insert(
            typed,
            Place {
                field: field.to_owned(),
                span,
            },
        );
    }

    /// Locates a validation issue at the first of its fields the file sets (else the
    /// nearest enclosing table of its first field, else the start of the file), unless it
    /// concerns a field that could not be read.
    fn issue(&mut self, issue: Issue) {
        let places: Vec<(String, Option<Range<usize>>)> = issue
            .fields
            .iter()
            .map(|typed| match self.places.get(typed) {
                Some(place) => (place.field.clone(), Some(place.span.clone())),
                None => (typed.clone(), None),
            })
            .collect();
        let failed = |field: &str| {
            self.failed
                .iter()
                .any(|f| is_within(field, f) || is_within(f, field))
        };
        if places.iter().any(|(field, _)| failed(field)) {
            return;
        }
        let (field, offset) = match places.iter().find(|(_, span)| span.is_some()) {
            Some((field, span)) => (field.clone(), span.as_ref().map_or(0, |s| s.start)),
            None => {
                let field = places[0].0.clone();
                let mut offset = 0;
                let mut ancestor = parent(&field);
                while let Some(path) = ancestor {
                    if let Some(place) = self.places.get(path) {
                        offset = place.span.start;
                        break;
                    }
                    ancestor = parent(path);
                }
                (field, offset)
            }
        };
        self.problems.push(Problem {
            offset,
            field,
            message: issue.message,
        });
    }

    /// The entry for `key` in `t`, if the file sets it.
    fn entry<'t>(&mut self, t: &Tbl<'t>, key: &str) -> Option<Entry<'t>> {
        let (k, item) = t.table.get_key_value(key)?;
        let entry = Entry {
            path: join(&t.path, key),
            key_span: k.span().unwrap_or_else(|| t.span.clone()),
            item,
        };
        self.place(entry.path.clone(), &entry.path, entry.span());
        Some(entry)
    }

    /// Like [`entry`](Self::entry), reporting the key as missing when absent.
    fn required<'t>(&mut self, t: &Tbl<'t>, key: &str, example: &str) -> Option<Entry<'t>> {
        let entry = self.entry(t, key);
        if entry.is_none() {
            let path = join(&t.path, key);
            self.fail(
                t.span.start,
                &path,
                format!("missing required field `{key}`, e.g. {example}"),
            );
        }
        entry
    }

    /// Converts an entry, reporting the conversion's error at the value.
    fn convert<T>(
        &mut self,
        entry: Entry<'_>,
        convert: impl FnOnce(&Item) -> Result<T, String>,
    ) -> Option<T> {
        match convert(entry.item) {
            Ok(value) => Some(value),
            Err(message) => {
                self.fail(entry.span().start, &entry.path, message);
                None
            }
        }
    }

    /// The value of `key` in `t`, if set and valid.
    fn value<T>(
        &mut self,
        t: &Tbl<'_>,
        key: &str,
        convert: impl FnOnce(&Item) -> Result<T, String>,
    ) -> Option<T> {
        let entry = self.entry(t, key)?;
        self.convert(entry, convert)
    }

    /// The table at `entry`, or an error if it is something else.
    fn table<'t>(&mut self, entry: Entry<'t>) -> Option<Tbl<'t>> {
        match entry.item.as_table_like() {
            Some(table) => Some(Tbl {
                span: entry.span(),
                path: entry.path,
                table,
            }),
            None => {
                let message = format!("expected a table, found {}", kind(entry.item));
                self.fail(entry.span().start, &entry.path, message);
                None
            }
        }
    }

    /// The array at `entry`, or an error if it is something else.
    fn array<'t>(&mut self, entry: &Entry<'t>, example: &str) -> Option<&'t Array> {
        let array = entry.item.as_array();
        if array.is_none() {
            let message = format!(
                "expected an array such as {example}, found {}",
                kind(entry.item)
            );
            self.fail(entry.span().start, &entry.path, message);
        }
        array
    }

    /// The string elements of an array; element `i` of the file gets typed index `j`
    /// (counting only the elements that could be read).
    fn strings(&mut self, entry: &Entry<'_>, array: &Array) -> Vec<(String, Range<usize>, String)> {
        let mut out = Vec::new();
        for (i, value) in array.iter().enumerate() {
            let path = index(&entry.path, i);
            let span = value.span().unwrap_or_else(|| entry.span());
            match value.as_str() {
                Some(s) => out.push((path, span, s.to_owned())),
                None => self.fail(
                    span.start,
                    &path,
                    format!("expected a string, found {}", value_kind(value)),
                ),
            }
        }
        out
    }

    /// Reports every key of `t` not in `known`, with the closest known key if one is close.
    fn unknown_keys(&mut self, t: &Tbl<'_>, known: &[&str]) {
        self.unknown_keys_except(t, known, &[]);
    }

    /// Like [`unknown_keys`](Self::unknown_keys), leaving out the keys in `except` (reported
    /// otherwise).
    fn unknown_keys_except(&mut self, t: &Tbl<'_>, known: &[&str], except: &[&str]) {
        for (key, _) in t.table.iter() {
            if known.contains(&key) || except.contains(&key) {
                continue;
            }
            let offset = t
                .table
                .get_key_value(key)
                .and_then(|(k, _)| k.span())
                .map_or(t.span.start, |span| span.start);
            let message = match closest(key, known) {
                Some(suggestion) => format!("unknown field `{key}`, did you mean `{suggestion}`?"),
                None => format!("unknown field `{key}`; known fields: {}", known.join(", ")),
            };
            self.problems.push(Problem {
                offset,
                field: join(&t.path, key),
                message,
            });
        }
    }

    /// The `type` of a source, sink or window, one of `known`.
    fn type_of(&mut self, t: &Tbl<'_>, what: &str, known: &[&'static str]) -> Option<&'static str> {
        let list = known.join(", ");
        let Some(entry) = self.entry(t, "type") else {
            let path = join(&t.path, "type");
            self.fail(
                t.span.start,
                &path,
                format!("missing required field `type`; known {what} types: {list}"),
            );
            return None;
        };
        self.convert(entry, |item| {
            let Some(name) = item.as_str() else {
                return Err(format!("expected a string naming the {what} type ({list}), found {}", kind(item)));
            };
            known.iter().find(|k| **k == name).copied().ok_or_else(|| match closest(name, known) {
                Some(suggestion) => {
                    format!("unknown {what} type `{name}`, did you mean `{suggestion}`? Known types: {list}")
                }
                None => format!("unknown {what} type `{name}`; known types: {list}"),
            })
        })
    }

    // ----- sections -----

    fn document(&mut self, root: &dyn TableLike, origin: &Path) -> PipelineConfig {
        let t = Tbl {
            path: String::new(),
            table: root,
            span: 0..0,
        };
        self.unknown_keys(&t, TOP_KEYS);
        let defaults = PipelineConfig::default();
        let name = self.value(&t, "name", as_string).unwrap_or_else(|| {
            origin
                .file_stem()
                .map(|stem| stem.to_string_lossy().into_owned())
                .filter(|stem| !stem.is_empty())
                .unwrap_or(defaults.name)
        });
        let data_dir = self
            .value(&t, "data_dir", as_string)
            .map_or(defaults.data_dir, PathBuf::from);
        let sources = match self.entry(&t, "sources").and_then(|e| self.table(e)) {
            Some(sources) => self.sources(&sources),
            None => Vec::new(),
        };
        let log = match self.entry(&t, "log").and_then(|e| self.table(e)) {
            Some(log) => self.log(&log),
            None => LogSettings::default(),
        };
        let pipeline = match self.entry(&t, "pipeline") {
            Some(entry) => match self.table(entry) {
                Some(pipeline) => self.pipeline(&pipeline),
                None => ProcessingConfig::default(),
            },
            None => {
                self.fail(
                    0,
                    "pipeline",
                    "missing required table [pipeline] with at least `window` and `aggregates`",
                );
                ProcessingConfig::default()
            }
        };
        let operators = match self.entry(&t, "operators").and_then(|e| self.table(e)) {
            Some(operators) => self.operators(&operators),
            None => Vec::new(),
        };
        let sinks = match self.entry(&t, "sinks").and_then(|e| self.table(e)) {
            Some(sinks) => self.sinks(&sinks),
            None => Vec::new(),
        };
        let metrics = self
            .entry(&t, "metrics")
            .and_then(|e| self.table(e))
            .map(|metrics| self.metrics(&metrics));
        let protobuf = self
            .entry(&t, "protobuf")
            .and_then(|e| self.table(e))
            .and_then(|p| self.protobuf(&p, origin));
        PipelineConfig {
            name,
            data_dir,
            sources,
            log,
            pipeline,
            operators,
            sinks,
            metrics,
            protobuf,
        }
    }

    /// `[protobuf]`: the file is relative to the pipeline file's directory.
    fn protobuf(&mut self, t: &Tbl<'_>, origin: &Path) -> Option<ProtobufConfig> {
        self.unknown_keys(t, PROTOBUF_KEYS);
        let file = self.required(t, "file", "file = \"events.proto\"");
        let file = file.and_then(|e| self.convert(e, as_string));
        let message = self.required(t, "message", "message = \"acme.Event\"");
        let message = message.and_then(|e| self.convert(e, as_string));
        let file = PathBuf::from(file?);
        let file = match origin.parent() {
            Some(dir) if file.is_relative() => dir.join(file),
            _ => file,
        };
        Some(ProtobufConfig {
            file,
            message: message?,
        })
    }

    fn operators(&mut self, t: &Tbl<'_>) -> Vec<NamedOperator> {
        let mut operators = Vec::new();
        for (name, _) in t.table.iter() {
            let Some(op) = self.entry(t, name).and_then(|e| self.table(e)) else {
                continue;
            };
            let config = match self.type_of(&op, "operator", &OperatorConfig::TYPES) {
                Some("filter") => self.filter(&op).map(OperatorConfig::Filter),
                Some("enrich") => self.enrich(&op).map(OperatorConfig::Enrich),
                _ => None,
            };
            if let Some(config) = config {
                operators.push(NamedOperator {
                    name: name.to_owned(),
                    config,
                });
            }
        }
        operators
    }

    fn filter(&mut self, t: &Tbl<'_>) -> Option<FilterConfig> {
        use crate::operator::filter::Condition;
        self.unknown_keys(t, FILTER_KEYS);
        let entry = self.required(t, "condition", "condition = \"value < 1000\"")?;
        let condition = self.convert(entry, |item| Condition::parse(&as_string(item)?))?;
        let otherwise = self
            .value(t, "otherwise", |item| one_of(item, OTHERWISE))
            .unwrap_or_default();
        Some(FilterConfig {
            condition,
            otherwise,
        })
    }

    fn enrich(&mut self, t: &Tbl<'_>) -> Option<EnrichConfig> {
        self.unknown_keys(t, ENRICH_KEYS);
        let url = self.required(t, "url", "url = \"http://127.0.0.1:8080/lookup\"");
        let url = url.and_then(|e| {
            self.convert(e, |item| {
                let url = as_string(item)?;
                if url.starts_with("http://") {
                    Ok(url)
                } else {
                    Err(format!(
                        "{url:?} is not an http:// URL (https is not supported yet)"
                    ))
                }
            })
        });
        let fields = match self.required(t, "fields", "fields = [\"weight\"]") {
            Some(entry) => match self.array(&entry, "[\"weight\"]") {
                Some(array) => self
                    .strings(&entry, array)
                    .into_iter()
                    .map(|(_, _, f)| f)
                    .collect(),
                None => Vec::new(),
            },
            None => Vec::new(),
        };
        let url = url?;
        let d = EnrichConfig::new(&url, &[]);
        Some(EnrichConfig {
            url,
            method: self
                .value(t, "method", |item| one_of(item, ENRICH_METHODS))
                .unwrap_or(d.method),
            fields,
            flag: self.value(t, "flag", as_string),
            batch_keys: self.value(t, "batch_keys", as_uint).unwrap_or(d.batch_keys),
            timeout: self.value(t, "timeout", as_duration).unwrap_or(d.timeout),
            cache_size: self.value(t, "cache_size", as_uint).unwrap_or(d.cache_size),
            cache_ttl: self
                .value(t, "cache_ttl", as_duration)
                .unwrap_or(d.cache_ttl),
            max_concurrency: self
                .value(t, "max_concurrency", as_uint)
                .unwrap_or(d.max_concurrency),
            slow_call: self
                .value(t, "slow_call", as_duration)
                .unwrap_or(d.slow_call),
            on_unavailable: self
                .value(t, "on_unavailable", |item| one_of(item, ON_UNAVAILABLE))
                .unwrap_or(d.on_unavailable),
        })
    }

    fn sources(&mut self, t: &Tbl<'_>) -> Vec<NamedSource> {
        let mut sources = Vec::new();
        for (name, _) in t.table.iter() {
            let Some(source) = self.entry(t, name).and_then(|e| self.table(e)) else {
                continue;
            };
            let config = match self.type_of(&source, "source", &SourceConfig::TYPES) {
                Some("generator") => SourceConfig::Generator(self.generator(&source)),
                Some("file") => match self.file_source(&source) {
                    Some(file) => SourceConfig::File(file),
                    None => continue,
                },
                Some("http") => match self.http_source(&source) {
                    Some(http) => SourceConfig::Http(http),
                    None => continue,
                },
                Some("kafka") => match self.kafka_source(&source) {
                    Some(kafka) => SourceConfig::Kafka(kafka),
                    None => continue,
                },
                _ => continue,
            };
            sources.push(NamedSource {
                name: name.to_owned(),
                config,
            });
        }
        sources
    }

    fn generator(&mut self, t: &Tbl<'_>) -> GeneratorConfig {
        self.unknown_keys(t, GENERATOR_KEYS);
        let d = GeneratorConfig::default();
        let rate = self.value(t, "rate", as_rate).unwrap_or(d.rate);
        GeneratorConfig {
            count: self.value(t, "count", as_uint),
            duration: self.value(t, "duration", as_duration),
            rate,
            keys: self.value(t, "keys", as_uint).unwrap_or(d.keys),
            distribution: self
                .value(t, "distribution", |item| one_of(item, DISTRIBUTIONS))
                .unwrap_or(d.distribution),
            zipf_exponent: self
                .value(t, "zipf_exponent", as_float)
                .unwrap_or(d.zipf_exponent),
            hot_share: self.value(t, "hot_share", as_float).unwrap_or(d.hot_share),
            disorder: self.value(t, "disorder", as_duration).unwrap_or(d.disorder),
            malformed: self.value(t, "malformed", as_float).unwrap_or(d.malformed),
            seed: self.value(t, "seed", as_uint).unwrap_or(d.seed),
            start_time: self.value(t, "start_time", as_int).unwrap_or(d.start_time),
            events_per_second: self
                .value(t, "events_per_second", as_uint)
                .unwrap_or(match rate {
                    Rate::PerSecond(n) if n > 0 => n,
                    _ => d.events_per_second,
                }),
        }
    }

    fn file_source(&mut self, t: &Tbl<'_>) -> Option<FileSourceConfig> {
        self.unknown_keys(t, FILE_SOURCE_KEYS);
        let entry = self.required(t, "paths", "paths = [\"events/*.jsonl\"]")?;
        let array = self.array(&entry, "[\"events/*.jsonl\"]")?;
        let mut paths = Vec::new();
        for (file_path, span, path) in self.strings(&entry, array) {
            self.place(index(&entry.path, paths.len()), &file_path, span);
            paths.push(path);
        }
        let format = self
            .value(t, "format", |item| one_of(item, INPUT_FORMATS))
            .unwrap_or_default();
        Some(FileSourceConfig { paths, format })
    }

    /// A `[...options]` table of librdkafka settings: every value a string (or a
    /// number or boolean, written as librdkafka expects it).
    fn kafka_options(&mut self, t: &Tbl<'_>) -> Vec<(String, String)> {
        let mut options = Vec::new();
        if let Some(entry) = self.entry(t, "options")
            && let Some(table) = self.table(entry)
        {
            for (name, _) in table.table.iter() {
                let value = self.value(&table, name, |item| match item.as_value() {
                    Some(v) if v.as_str().is_some() => {
                        Ok(v.as_str().unwrap_or_default().to_owned())
                    }
                    Some(v) if v.as_integer().is_some() || v.as_bool().is_some() => {
                        Ok(v.to_string().trim().to_owned())
                    }
                    _ => Err(format!(
                        "expected a string (a librdkafka setting's value), found {}",
                        kind(item)
                    )),
                });
                if let Some(value) = value {
                    options.push((name.to_owned(), value));
                }
            }
        }
        options
    }

    fn kafka_source(&mut self, t: &Tbl<'_>) -> Option<KafkaSourceConfig> {
        self.unknown_keys(t, KAFKA_SOURCE_KEYS);
        let brokers = self
            .required(t, "brokers", "brokers = \"127.0.0.1:9092\"")
            .and_then(|e| self.convert(e, as_string));
        let entry = self.required(t, "topics", "topics = [\"events\"]");
        let mut topics = Vec::new();
        if let Some(entry) = entry
            && let Some(array) = self.array(&entry, "[\"events\"]")
        {
            for (_, _, topic) in self.strings(&entry, array) {
                topics.push(topic);
            }
        }
        let d = KafkaSourceConfig::new("", &[]);
        let options = self.kafka_options(t);
        Some(KafkaSourceConfig {
            brokers: brokers?,
            topics,
            group: self.value(t, "group", as_string),
            start: self
                .value(t, "start", |item| one_of(item, KAFKA_STARTS))
                .unwrap_or(d.start),
            bounded: self.value(t, "bounded", as_bool).unwrap_or(d.bounded),
            max_poll_interval: self
                .value(t, "max_poll_interval", as_duration)
                .unwrap_or(d.max_poll_interval),
            session_timeout: self
                .value(t, "session_timeout", as_duration)
                .unwrap_or(d.session_timeout),
            options,
        })
    }

    fn kafka_sink(&mut self, t: &Tbl<'_>) -> Option<KafkaSinkConfig> {
        self.unknown_keys(t, KAFKA_SINK_KEYS);
        let brokers = self
            .required(t, "brokers", "brokers = \"127.0.0.1:9092\"")
            .and_then(|e| self.convert(e, as_string));
        let topic = self
            .required(t, "topic", "topic = \"windows\"")
            .and_then(|e| self.convert(e, as_string));
        let d = KafkaSinkConfig::new("", "");
        let options = self.kafka_options(t);
        Some(KafkaSinkConfig {
            brokers: brokers?,
            topic: topic?,
            compression: self
                .value(t, "compression", as_string)
                .unwrap_or(d.compression),
            linger: self.value(t, "linger", as_duration).unwrap_or(d.linger),
            batch_max_rows: self
                .value(t, "batch_max_rows", as_uint)
                .unwrap_or(d.batch_max_rows),
            batch_max_age: self
                .value(t, "batch_max_age", as_duration)
                .unwrap_or(d.batch_max_age),
            write_timeout: self
                .value(t, "write_timeout", as_duration)
                .unwrap_or(d.write_timeout),
            options,
        })
    }

    fn http_source(&mut self, t: &Tbl<'_>) -> Option<HttpSourceConfig> {
        self.unknown_keys(t, HTTP_SOURCE_KEYS);
        let address = self.required(t, "address", "address = \"127.0.0.1:8080\"");
        let address = address.and_then(|_| self.value(t, "address", as_socket_addr))?;
        let d = HttpSourceConfig::new(address);
        let formats = match self.entry(t, "formats") {
            Some(entry) => {
                let array = self.array(&entry, "[\"json\", \"ndjson\"]")?;
                let mut formats = Vec::new();
                for (file_path, span, name) in self.strings(&entry, array) {
                    match BODY_FORMATS.iter().find(|(n, _)| *n == name) {
                        Some((_, format)) => formats.push(*format),
                        None => {
                            self.fail(
                                span.start,
                                &file_path,
                                format!(
                                    "unknown format `{name}`: expected \"json\", \"ndjson\" or \"protobuf\""
                                ),
                            );
                        }
                    }
                }
                formats
            }
            None => d.formats.clone(),
        };
        let encodings = match self.entry(t, "encodings") {
            Some(entry) => {
                let array = self.array(&entry, "[\"gzip\", \"zstd\"]")?;
                let mut encodings = Vec::new();
                for (file_path, span, name) in self.strings(&entry, array) {
                    match ENCODINGS.iter().find(|(n, _)| *n == name) {
                        Some((_, encoding)) => encodings.push(*encoding),
                        None => {
                            self.fail(
                                span.start,
                                &file_path,
                                format!("unknown encoding `{name}`: expected \"gzip\" or \"zstd\" (identity is always accepted)"),
                            );
                        }
                    }
                }
                encodings
            }
            None => d.encodings.clone(),
        };
        Some(HttpSourceConfig {
            address,
            max_body_size: self
                .value(t, "max_body_size", as_size)
                .unwrap_or(d.max_body_size),
            max_event_size: self.value(t, "max_event_size", as_size),
            formats,
            encodings,
            max_connections: self
                .value(t, "max_connections", as_uint)
                .unwrap_or(d.max_connections),
            max_inflight_bytes: self
                .value(t, "max_inflight_bytes", as_size)
                .unwrap_or(d.max_inflight_bytes),
            header_timeout: self
                .value(t, "header_timeout", as_duration)
                .unwrap_or(d.header_timeout),
            body_timeout: self
                .value(t, "body_timeout", as_duration)
                .unwrap_or(d.body_timeout),
            ack_timeout: self
                .value(t, "ack_timeout", as_duration)
                .unwrap_or(d.ack_timeout),
            idempotency_horizon: self
                .value(t, "idempotency_horizon", as_duration)
                .unwrap_or(d.idempotency_horizon),
            idempotency_max_keys: self
                .value(t, "idempotency_max_keys", as_uint)
                .unwrap_or(d.idempotency_max_keys),
            max_lag: self.value(t, "max_lag", as_uint),
            rate_limit: self.value(t, "rate_limit", as_float),
            rate_limit_burst: self.value(t, "rate_limit_burst", as_uint),
            client_header: self.value(t, "client_header", as_string),
            retry_after: self
                .value(t, "retry_after", as_duration)
                .unwrap_or(d.retry_after),
        })
    }

    fn log(&mut self, t: &Tbl<'_>) -> LogSettings {
        self.unknown_keys(t, LOG_KEYS);
        let d = LogSettings::default();
        LogSettings {
            partitions: self.value(t, "partitions", as_uint).unwrap_or(d.partitions),
            segment_size: self
                .value(t, "segment_size", as_size)
                .unwrap_or(d.segment_size),
            fsync: self.value(t, "fsync", as_fsync).unwrap_or(d.fsync),
            max_batch_size: self
                .value(t, "max_batch_size", as_size)
                .unwrap_or(d.max_batch_size),
            retention_size: self.value(t, "retention_size", as_size),
            retention_age: self.value(t, "retention_age", as_duration),
            max_size: self.value(t, "max_size", as_size),
            when_full: self
                .value(t, "when_full", |item| one_of(item, WHEN_FULL))
                .unwrap_or(d.when_full),
        }
    }

    fn pipeline(&mut self, t: &Tbl<'_>) -> ProcessingConfig {
        self.unknown_keys(t, PIPELINE_KEYS);
        let d = ProcessingConfig::default();
        let window = self
            .required(
                t,
                "window",
                "window = { type = \"tumbling\", size = \"1s\" }",
            )
            .and_then(|e| self.table(e))
            .and_then(|window| self.window(&window))
            .unwrap_or(d.window);
        let aggregates = self
            .required(t, "aggregates", "aggregates = [\"count\"]")
            .map(|e| self.aggregates(&e))
            .unwrap_or_default();
        ProcessingConfig {
            key: self.value(t, "key", as_string).unwrap_or(d.key),
            time: self.value(t, "time", as_string).unwrap_or(d.time),
            id: self.value(t, "id", as_string).unwrap_or(d.id),
            out_of_orderness: self
                .value(t, "out_of_orderness", as_duration)
                .unwrap_or(d.out_of_orderness),
            allowed_lateness: self
                .value(t, "allowed_lateness", as_duration)
                .unwrap_or(d.allowed_lateness),
            checkpoint_interval: self
                .value(t, "checkpoint_interval", as_duration)
                .unwrap_or(d.checkpoint_interval),
            pre_aggregate: self
                .value(t, "pre_aggregate", as_bool)
                .unwrap_or(d.pre_aggregate),
            dedup_horizon: self
                .value(t, "dedup_horizon", as_duration)
                .unwrap_or(d.dedup_horizon),
            dedup_max_ids: self
                .value(t, "dedup_max_ids", as_uint)
                .unwrap_or(d.dedup_max_ids),
            idle_timeout: self
                .value(t, "idle_timeout", as_duration)
                .unwrap_or(d.idle_timeout),
            shards: self.value(t, "shards", as_uint).unwrap_or(d.shards),
            batch_max_events: self
                .value(t, "batch_max_events", as_uint)
                .unwrap_or(d.batch_max_events),
            batch_max_age: self
                .value(t, "batch_max_age", as_duration)
                .unwrap_or(d.batch_max_age),
            max_event_size: self
                .value(t, "max_event_size", as_size)
                .unwrap_or(d.max_event_size),
            memory_limit: self
                .value(t, "memory_limit", as_size)
                .unwrap_or(d.memory_limit),
            window,
            aggregates,
        }
    }

    fn window(&mut self, t: &Tbl<'_>) -> Option<WindowSpec> {
        let kind = self.type_of(t, "window", &WindowSpec::TYPES)?;
        if kind == "tumbling" {
            if let Some((key, _)) = t.table.get_key_value("slide") {
                let offset = key.span().map_or(t.span.start, |span| span.start);
                self.fail(
                    offset,
                    &join(&t.path, "slide"),
                    "`slide` only applies to sliding windows (type = \"sliding\")",
                );
            }
            self.unknown_keys_except(t, TUMBLING_KEYS, &["slide"]);
            let size = self.required(t, "size", "size = \"1s\"")?;
            let size = self.convert(size, as_duration)?;
            return Some(WindowSpec::Tumbling { size });
        }
        if kind == "session" {
            self.unknown_keys(t, SESSION_KEYS);
            let gap = self.required(t, "gap", "gap = \"30s\"")?;
            let gap = self.convert(gap, as_duration)?;
            return Some(WindowSpec::Session { gap });
        }
        self.unknown_keys(t, SLIDING_KEYS);
        let size = self
            .required(t, "size", "size = \"10s\"")
            .and_then(|e| self.convert(e, as_duration));
        let slide = self
            .required(t, "slide", "slide = \"1s\"")
            .and_then(|e| self.convert(e, as_duration));
        Some(WindowSpec::Sliding {
            size: size?,
            slide: slide?,
        })
    }

    fn aggregates(&mut self, entry: &Entry<'_>) -> Vec<AggregateSpec> {
        let Some(array) = self.array(entry, "[\"count\", \"sum(value)\"]") else {
            return Vec::new();
        };
        let mut aggregates = Vec::new();
        for (file_path, span, text) in self.strings(entry, array) {
            match text.parse::<AggregateSpec>() {
                Ok(aggregate) => {
                    self.place(index(&entry.path, aggregates.len()), &file_path, span);
                    aggregates.push(aggregate);
                }
                Err(err) => self.fail(span.start, &file_path, err.to_string()),
            }
        }
        aggregates
    }

    fn sinks(&mut self, t: &Tbl<'_>) -> Vec<NamedSink> {
        let mut sinks = Vec::new();
        for (name, _) in t.table.iter() {
            let Some(sink) = self.entry(t, name).and_then(|e| self.table(e)) else {
                continue;
            };
            let config = match self.type_of(&sink, "sink", &SinkConfig::TYPES) {
                Some("sqlite") => self.sqlite(&sink).map(SinkConfig::Sqlite),
                Some("file") => self.file_sink(&sink).map(SinkConfig::File),
                Some("stdout") => {
                    self.unknown_keys(&sink, STDOUT_KEYS);
                    Some(SinkConfig::Stdout)
                }
                Some("postgres") => Some(SinkConfig::Postgres(self.database_sink(&sink))),
                Some("clickhouse") => Some(SinkConfig::ClickHouse(self.database_sink(&sink))),
                Some("kafka") => self.kafka_sink(&sink).map(SinkConfig::Kafka),
                _ => None,
            };
            if let Some(config) = config {
                sinks.push(NamedSink {
                    name: name.to_owned(),
                    config,
                });
            }
        }
        sinks
    }

    fn database_sink(&mut self, t: &Tbl<'_>) -> DatabaseSinkConfig {
        self.unknown_keys(t, DATABASE_SINK_KEYS);
        let d = DatabaseSinkConfig::new("");
        let mut columns = Vec::new();
        if let Some(entry) = self.entry(t, "columns")
            && let Some(table) = self.table(entry)
        {
            for (from, _) in table.table.iter() {
                if let Some(to) = self.value(&table, from, as_string) {
                    columns.push((from.to_owned(), to));
                }
            }
        }
        DatabaseSinkConfig {
            url: self.value(t, "url", as_string).unwrap_or_default(),
            url_env: self.value(t, "url_env", as_string),
            table: self.value(t, "table", as_string).unwrap_or(d.table),
            columns,
            create_table: self
                .value(t, "create_table", as_bool)
                .unwrap_or(d.create_table),
            batch_max_rows: self
                .value(t, "batch_max_rows", as_uint)
                .unwrap_or(d.batch_max_rows),
            batch_max_age: self
                .value(t, "batch_max_age", as_duration)
                .unwrap_or(d.batch_max_age),
            pool_size: self.value(t, "pool_size", as_uint).unwrap_or(d.pool_size),
            statement_timeout: self
                .value(t, "statement_timeout", as_duration)
                .unwrap_or(d.statement_timeout),
            tls: self.value(t, "tls", as_bool).unwrap_or(d.tls),
            write_behind: self.value(t, "write_behind", as_size),
        }
    }

    fn sqlite(&mut self, t: &Tbl<'_>) -> Option<SqliteSinkConfig> {
        self.unknown_keys(t, SQLITE_KEYS);
        let path = self
            .required(t, "path", "path = \"results.db\"")
            .and_then(|e| self.convert(e, as_string));
        let d = SqliteSinkConfig::new("");
        let table = self.value(t, "table", as_string).unwrap_or(d.table);
        let batch_max_rows = self
            .value(t, "batch_max_rows", as_uint)
            .unwrap_or(d.batch_max_rows);
        let batch_max_age = self
            .value(t, "batch_max_age", as_duration)
            .unwrap_or(d.batch_max_age);
        let synchronous = self
            .value(t, "synchronous", |item| one_of(item, SQLITE_SYNC))
            .unwrap_or(d.synchronous);
        let write_timeout = self
            .value(t, "write_timeout", as_duration)
            .unwrap_or(d.write_timeout);
        Some(SqliteSinkConfig {
            path: PathBuf::from(path?),
            table,
            batch_max_rows,
            batch_max_age,
            synchronous,
            write_timeout,
            write_behind: self.value(t, "write_behind", as_size),
        })
    }

    fn file_sink(&mut self, t: &Tbl<'_>) -> Option<FileSinkConfig> {
        self.unknown_keys(t, FILE_SINK_KEYS);
        let path = self
            .required(t, "path", "path = \"windows.jsonl\"")
            .and_then(|e| self.convert(e, as_string));
        let d = FileSinkConfig::new("");
        let batch_max_rows = self
            .value(t, "batch_max_rows", as_uint)
            .unwrap_or(d.batch_max_rows);
        let batch_max_age = self
            .value(t, "batch_max_age", as_duration)
            .unwrap_or(d.batch_max_age);
        Some(FileSinkConfig {
            path: PathBuf::from(path?),
            batch_max_rows,
            batch_max_age,
        })
    }

    fn metrics(&mut self, t: &Tbl<'_>) -> MetricsConfig {
        self.unknown_keys(t, METRICS_KEYS);
        let d = MetricsConfig::default();
        MetricsConfig {
            address: self
                .value(t, "address", as_socket_addr)
                .unwrap_or(d.address),
        }
    }
}

// ----- conversions: item -> value, or the message for the user -----

/// What an item is, for "expected X, found Y" messages.
fn kind(item: &Item) -> &'static str {
    match item {
        Item::None => "nothing",
        Item::Value(value) => value_kind(value),
        Item::Table(_) => "a table",
        Item::ArrayOfTables(_) => "an array of tables",
    }
}

fn value_kind(value: &Value) -> &'static str {
    match value {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a date-time",
        Value::Array(_) => "an array",
        Value::InlineTable(_) => "a table",
    }
}

fn as_bool(item: &Item) -> Result<bool, String> {
    item.as_bool()
        .ok_or_else(|| format!("expected true or false, found {}", kind(item)))
}

fn as_string(item: &Item) -> Result<String, String> {
    item.as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("expected a string, found {}", kind(item)))
}

fn as_int(item: &Item) -> Result<i64, String> {
    item.as_integer()
        .ok_or_else(|| format!("expected an integer, found {}", kind(item)))
}

/// A non-negative integer that fits `T`.
fn as_uint<T: TryFrom<u64>>(item: &Item) -> Result<T, String> {
    let n = as_int(item)?;
    let n = u64::try_from(n).map_err(|_| format!("must not be negative, got {n}"))?;
    T::try_from(n).map_err(|_| format!("{n} is too large"))
}

/// A float; integers are accepted too (`zipf_exponent = 1`).
fn as_float(item: &Item) -> Result<f64, String> {
    match item.as_value() {
        Some(Value::Float(f)) => Ok(*f.value()),
        Some(Value::Integer(i)) => Ok(*i.value() as f64),
        _ => Err(format!("expected a number, found {}", kind(item))),
    }
}

fn as_duration(item: &Item) -> Result<Duration, String> {
    match item.as_value() {
        Some(Value::String(s)) => parse_duration(s.value()).map_err(|e| e.to_string()),
        Some(Value::Integer(i)) => Err(format!(
            "expected a duration string with a unit, such as \"{0}s\" or \"{0}ms\", found the integer {0}",
            i.value()
        )),
        _ => Err(format!(
            "expected a duration such as \"50ms\", found {}",
            kind(item)
        )),
    }
}

/// A size: a string with a unit, or an integer number of bytes.
fn as_size(item: &Item) -> Result<u64, String> {
    match item.as_value() {
        Some(Value::String(s)) => parse_size(s.value()).map_err(|e| e.to_string()),
        Some(Value::Integer(_)) => as_uint(item),
        _ => Err(format!(
            "expected a size such as \"64MiB\" or a number of bytes, found {}",
            kind(item)
        )),
    }
}

fn as_rate(item: &Item) -> Result<Rate, String> {
    match item.as_value() {
        Some(Value::String(s)) if s.value() == "unlimited" => Ok(Rate::Unlimited),
        Some(Value::String(s)) if s.value().parse::<u64>().is_ok() => Err(format!(
            "write a number of events per second as an integer, without quotes: rate = {}",
            s.value()
        )),
        Some(Value::Integer(i)) if *i.value() < 0 => {
            Err("must be greater than 0 (or \"unlimited\")".to_owned())
        }
        Some(Value::Integer(i)) => Ok(Rate::PerSecond(*i.value() as u64)),
        Some(Value::String(s)) => Err(format!(
            "expected \"unlimited\" or an integer number of events per second, found \"{}\"",
            s.value()
        )),
        _ => Err(format!(
            "expected \"unlimited\" or an integer number of events per second, found {}",
            kind(item)
        )),
    }
}

fn as_fsync(item: &Item) -> Result<FsyncPolicy, String> {
    const EXPECTED: &str =
        "expected \"always\", \"never\" or \"every <duration>\" (e.g. \"every 10ms\")";
    let text = item
        .as_str()
        .ok_or_else(|| format!("{EXPECTED}, found {}", kind(item)))?;
    match text.trim() {
        "always" => Ok(FsyncPolicy::Always),
        "never" => Ok(FsyncPolicy::Never),
        other => match other.strip_prefix("every") {
            Some(interval) if interval.starts_with(char::is_whitespace) => parse_duration(interval)
                .map(FsyncPolicy::Every)
                .map_err(|e| e.to_string()),
            _ => Err(format!("{EXPECTED}, found \"{text}\"")),
        },
    }
}

fn as_socket_addr(item: &Item) -> Result<SocketAddr, String> {
    let text = as_string(item)?;
    text.parse().map_err(|_| {
        format!("`{text}` is not a socket address: expected IP:PORT, e.g. \"127.0.0.1:9898\"")
    })
}

/// One of a fixed set of strings.
fn one_of<T: Copy>(item: &Item, options: &[(&str, T)]) -> Result<T, String> {
    let names: Vec<&str> = options.iter().map(|(name, _)| *name).collect();
    let expected = names
        .iter()
        .map(|n| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(" or ");
    let Some(text) = item.as_str() else {
        return Err(format!("expected {expected}, found {}", kind(item)));
    };
    if let Some((_, value)) = options.iter().find(|(name, _)| *name == text) {
        return Ok(*value);
    }
    Err(match closest(text, &names) {
        Some(suggestion) => {
            format!("expected {expected}, found \"{text}\" (did you mean \"{suggestion}\"?)")
        }
        None => format!("expected {expected}, found \"{text}\""),
    })
}
