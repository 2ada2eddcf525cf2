//! Pipeline files: the typed configuration of a pipeline, and its TOML form.
//!
//! The types here are plain data: build them in Rust (every struct with sensible defaults
//! is [`Default`]) and check them with [`PipelineConfig::validate`], or read them from a
//! pipeline file with [`PipelineConfig::load`] / [`PipelineConfig::parse`], a thin layer
//! that maps TOML onto these types and reports every problem at once, each with its file,
//! line, column and dotted field path. Durations and sizes are human-readable strings
//! (`50ms`, `1m30s`, `64MiB`), see [`units`].

mod aggregate;
mod error;
mod read;
pub mod schema;
pub(crate) mod suggest;
#[cfg(test)]
mod tests;
pub mod units;
mod validate;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use aggregate::InvalidAggregate;
pub use error::{ConfigError, ConfigErrors};

/// A whole pipeline: where events come from, how they are logged, aggregated and written.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineConfig {
    /// The pipeline's name, used as the consumer name for offsets (file: defaults to the
    /// file's stem).
    pub name: String,
    /// Where the log, offsets and dead letters live; relative paths are relative to the
    /// working directory.
    pub data_dir: PathBuf,
    /// The sources, in file order (at least one).
    pub sources: Vec<NamedSource>,
    /// The durable log between sources and processing.
    pub log: LogSettings,
    /// Parsing, watermarks, micro-batches, windows and aggregates.
    pub pipeline: ProcessingConfig,
    /// Operators run on every event between the log and the windows, in file order
    /// (`[operators.NAME]`; none by default).
    pub operators: Vec<NamedOperator>,
    /// The sinks, in file order (at least one).
    pub sinks: Vec<NamedSink>,
    /// The metrics endpoint, if enabled.
    pub metrics: Option<MetricsConfig>,
    /// The Protobuf schema of `format = "protobuf"` sources (`[protobuf]`), if any.
    pub protobuf: Option<ProtobufConfig>,
}

/// The Protobuf message type events arrive as (`[protobuf]`): read from the user's
/// `.proto` file at startup (no `protoc` needed); the fields named in `[pipeline]` are
/// looked up in it by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtobufConfig {
    /// The `.proto` file (in files: relative to the pipeline file). Its directory is the
    /// include path for its imports.
    pub file: PathBuf,
    /// The message's fully qualified name, e.g. `acme.Event`.
    pub message: String,
}

impl Default for PipelineConfig {
    /// Name `pipeline`, data dir `lungfish-data`, default log and processing settings, no
    /// sources, no sinks (add at least one of each), no metrics.
    fn default() -> Self {
        Self {
            name: "pipeline".to_owned(),
            data_dir: PathBuf::from("lungfish-data"),
            sources: Vec::new(),
            log: LogSettings::default(),
            pipeline: ProcessingConfig::default(),
            operators: Vec::new(),
            sinks: Vec::new(),
            metrics: None,
            protobuf: None,
        }
    }
}

impl PipelineConfig {
    /// Reads and validates a pipeline file.
    ///
    /// On failure, returns every problem found, in file order; a file that cannot be read
    /// gives one error with line and column 0.
    pub fn load(path: &Path) -> Result<Self, ConfigErrors> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text, path),
            Err(err) => Err(ConfigErrors(vec![ConfigError {
                file: path.to_path_buf(),
                line: 0,
                column: 0,
                field: String::new(),
                message: format!("cannot read the pipeline file: {err}"),
            }])),
        }
    }

    /// Same as [`load`](Self::load) from text; `origin` names the file in errors, and its
    /// stem is the default [`name`](Self::name).
    pub fn parse(text: &str, origin: &Path) -> Result<Self, ConfigErrors> {
        read::read(text, origin)
    }

    /// Checks the values and how they fit together (ranges, at least one source and sink,
    /// window shape, unique column names, ...), as [`parse`](Self::parse) does for files.
    /// Errors carry the field path but no file, line or column.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        self.validate_with_custom_sinks(0)
    }

    /// [`validate`](Self::validate) for a pipeline that also has `custom` sinks written
    /// in Rust (which count towards "at least one sink").
    pub(crate) fn validate_with_custom_sinks(&self, custom: usize) -> Result<(), ConfigErrors> {
        let errors: Vec<ConfigError> = validate::check(self)
            .into_iter()
            .filter(|issue| !(custom > 0 && issue.fields[0] == "sinks" && self.sinks.is_empty()))
            .map(|issue| ConfigError {
                file: PathBuf::new(),
                line: 0,
                column: 0,
                field: issue.fields[0].clone(),
                message: issue.message,
            })
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// The Protobuf extractor of the `[protobuf]` schema for [`field_names`](Self::field_names),
    /// if the pipeline has one.
    ///
    /// # Errors
    /// The schema cannot be read or compiled, or does not fit the field names.
    #[cfg(feature = "protobuf")]
    pub fn protobuf_extractor(
        &self,
    ) -> Result<
        Option<crate::codec::protobuf::ProtobufExtractor>,
        crate::codec::protobuf::SchemaError,
    > {
        self.protobuf
            .as_ref()
            .map(|p| {
                crate::codec::protobuf::ProtobufExtractor::load(
                    &p.file,
                    &p.message,
                    self.field_names(),
                )
            })
            .transpose()
    }

    /// The fields every event must carry, as the ingest extractor wants them.
    pub fn field_names(&self) -> crate::codec::json::FieldNames {
        crate::codec::json::FieldNames {
            key: self.pipeline.key.clone(),
            time: self.pipeline.time.clone(),
            id: Some(self.pipeline.id.clone()),
            numbers: self.ingest_number_fields(),
        }
    }

    /// The numbers every event carries after the operators, in order: those extracted
    /// from the JSON at ingest ([`ingest_number_fields`](Self::ingest_number_fields)),
    /// then those operators provide (an enrichment's fields and flag).
    pub fn number_fields(&self) -> Vec<String> {
        let mut fields = self.ingest_number_fields();
        for field in self.provided_fields() {
            if !fields.contains(&field) {
                fields.push(field);
            }
        }
        fields
    }

    /// The numeric fields read from every event's JSON: those the aggregates and the
    /// filters use, less those an operator provides, in first-use order (e.g. `["value"]`).
    pub fn ingest_number_fields(&self) -> Vec<String> {
        let provided = self.provided_fields();
        let mut fields: Vec<String> = Vec::new();
        let used = self
            .operators
            .iter()
            .filter_map(|o| match &o.config {
                OperatorConfig::Filter(f) => Some(f.condition.field.clone()),
                OperatorConfig::Enrich(_) => None,
            })
            .chain(self.pipeline.number_fields());
        for field in used {
            if !fields.contains(&field) && !provided.contains(&field) {
                fields.push(field);
            }
        }
        fields
    }

    /// Fields operators add to events, in operator order.
    fn provided_fields(&self) -> Vec<String> {
        let mut out = Vec::new();
        for o in &self.operators {
            if let OperatorConfig::Enrich(e) = &o.config {
                out.extend(e.fields.iter().cloned());
                out.extend(e.flag.iter().cloned());
            }
        }
        out
    }
}

/// An operator and the name it has in the file (`[operators.NAME]`).
#[derive(Debug, Clone, PartialEq)]
pub struct NamedOperator {
    /// The operator's name (dead letters say `operator:NAME`).
    pub name: String,
    /// What it does.
    pub config: OperatorConfig,
}

/// An operator, by `type`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum OperatorConfig {
    /// `type = "filter"`: keeps events whose number satisfies a comparison.
    Filter(FilterConfig),
    /// `type = "enrich"`: adds numbers fetched from an HTTP service by event key.
    Enrich(EnrichConfig),
}

impl OperatorConfig {
    /// The `type` names, in the order error messages list them.
    pub const TYPES: [&'static str; 2] = ["filter", "enrich"];
}

/// A filter (`type = "filter"`); see [`crate::operator::filter`].
#[derive(Debug, Clone, PartialEq)]
pub struct FilterConfig {
    /// `condition = "value < 1000"`.
    pub condition: crate::operator::filter::Condition,
    /// `otherwise = "drop"` (default) or `"dead_letter"`.
    pub otherwise: crate::operator::filter::Otherwise,
}

/// How an enrichment asks its service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EnrichMethod {
    /// `GET URL?key=KEY`, one call per key.
    #[default]
    Get,
    /// `POST URL` with `{"keys": [...]}`, up to `batch_keys` keys per call.
    Post,
}

/// What an enrichment does with an event when its service cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnUnavailable {
    /// The event goes on with the fields missing (NaN; NULL in SQL sinks) and the flag 0.
    #[default]
    Pass,
    /// The event goes to the dead-letter queue, to be replayed after the service heals.
    DeadLetter,
}

/// An enrichment (`type = "enrich"`); see `crate::operator::enrich`.
#[derive(Debug, Clone, PartialEq)]
pub struct EnrichConfig {
    /// The service, `http://host:port/path`.
    pub url: String,
    /// `method = "get"` (default) or `"post"`.
    pub method: EnrichMethod,
    /// Numeric fields taken from the answer and added to the event (at least one).
    pub fields: Vec<String>,
    /// A field set to 1 on events enriched and 0 on those passed without (optional).
    pub flag: Option<String>,
    /// Keys per POST (default 100).
    pub batch_keys: usize,
    /// Per call, connect to last byte (default 1s).
    pub timeout: Duration,
    /// Cached answers at most (default 100,000).
    pub cache_size: u64,
    /// How long an answer is cached (default 60s).
    pub cache_ttl: Duration,
    /// Calls in flight at most; the adaptive limit moves between 1 and this (default 32).
    pub max_concurrency: usize,
    /// A call slower than this counts as slow for the circuit breaker (default 500ms).
    pub slow_call: Duration,
    /// `on_unavailable = "pass"` (default) or `"dead_letter"`.
    pub on_unavailable: OnUnavailable,
}

impl EnrichConfig {
    /// An enrichment of `fields` from `url` with the defaults.
    pub fn new(url: &str, fields: &[&str]) -> Self {
        EnrichConfig {
            url: url.to_owned(),
            method: EnrichMethod::Get,
            fields: fields.iter().map(|f| (*f).to_owned()).collect(),
            flag: None,
            batch_keys: 100,
            timeout: Duration::from_secs(1),
            cache_size: 100_000,
            cache_ttl: Duration::from_secs(60),
            max_concurrency: 32,
            slow_call: Duration::from_millis(500),
            on_unavailable: OnUnavailable::Pass,
        }
    }
}

/// A source and the name it has in the file (`[sources.NAME]`).
#[derive(Debug, Clone, PartialEq)]
pub struct NamedSource {
    /// The source's name.
    pub name: String,
    /// What the source is and how it is set up.
    pub config: SourceConfig,
}

/// A source of events, by `type`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum SourceConfig {
    /// `type = "generator"`: synthetic events.
    Generator(GeneratorConfig),
    /// `type = "file"`: JSON lines read from files.
    File(FileSourceConfig),
    /// `type = "http"`: events POSTed to `/v1/events`.
    Http(HttpSourceConfig),
    /// `type = "kafka"`: a Kafka (or Redpanda) topic read in a consumer group, in place
    /// of the embedded log.
    Kafka(KafkaSourceConfig),
}

impl SourceConfig {
    /// The known source types, as written in `type`.
    pub const TYPES: [&'static str; 4] = ["generator", "file", "http", "kafka"];

    /// The `type` of this source in a pipeline file.
    pub fn type_name(&self) -> &'static str {
        match self {
            SourceConfig::Generator(_) => "generator",
            SourceConfig::File(_) => "file",
            SourceConfig::Http(_) => "http",
            SourceConfig::Kafka(_) => "kafka",
        }
    }
}

/// Where a Kafka source starts in a partition that has no committed offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KafkaStart {
    /// At the oldest message still in the topic (every event is processed).
    Earliest,
    /// At the end: only messages produced from now on.
    Latest,
}

/// A Kafka source: the topics' partitions are shared out among the pipeline's
/// instances by Kafka's group protocol (cooperative-sticky), and each instance reads
/// its partitions in place of the embedded log. Offsets are committed to the group only
/// once every effect of the events before them is durable in the sinks. See
/// [`crate::kafka`].
#[derive(Debug, Clone, PartialEq)]
pub struct KafkaSourceConfig {
    /// Bootstrap brokers, `host:port[,host:port...]` (`bootstrap.servers`).
    pub brokers: String,
    /// The topics to read (at least one).
    pub topics: Vec<String>,
    /// The consumer group (`group.id`); `None`: the pipeline's name.
    pub group: Option<String>,
    /// Where to start in a partition with no committed offset (`auto.offset.reset`).
    pub start: KafkaStart,
    /// Stop once the client has reported the end of every partition this instance
    /// holds, closing every window (backfills and benchmarks; one instance, one topic).
    pub bounded: bool,
    /// A member that does not poll for this long leaves the group (`max.poll.interval.ms`).
    /// Lungfish polls at least every 100 ms even while the sinks stall (it pauses the
    /// partitions instead of blocking), so this only matters if the process hangs.
    pub max_poll_interval: Duration,
    /// A member whose heartbeats stop for this long is declared dead and its
    /// partitions move (`session.timeout.ms`).
    pub session_timeout: Duration,
    /// Further librdkafka settings passed through as they are (security, timeouts...),
    /// e.g. `"security.protocol" = "SASL_SSL"`.
    pub options: Vec<(String, String)>,
}

impl KafkaSourceConfig {
    /// A source reading `topics` from `brokers` with the defaults: the pipeline's name
    /// as group, earliest start, unbounded, 300 s poll interval, 45 s session timeout.
    pub fn new(brokers: &str, topics: &[&str]) -> Self {
        KafkaSourceConfig {
            brokers: brokers.to_owned(),
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
            group: None,
            start: KafkaStart::Earliest,
            bounded: false,
            max_poll_interval: Duration::from_secs(300),
            session_timeout: Duration::from_secs(45),
            options: Vec::new(),
        }
    }
}

/// A Kafka sink: window rows produced as JSON messages keyed by the row's key, with an
/// idempotent producer; a batch is acknowledged only once every message of it has its
/// delivery report. See [`crate::sinks::kafka`].
#[derive(Debug, Clone, PartialEq)]
pub struct KafkaSinkConfig {
    /// Bootstrap brokers, `host:port[,host:port...]` (`bootstrap.servers`).
    pub brokers: String,
    /// The topic rows are produced to.
    pub topic: String,
    /// `none`, `gzip`, `snappy`, `lz4` or `zstd` (`compression.type`).
    pub compression: String,
    /// How long the producer waits to fill a request (`linger.ms`).
    pub linger: Duration,
    /// A write batch is cut at this many rows (>= 1) ...
    pub batch_max_rows: usize,
    /// ... or when its first row is this old (> 0).
    pub batch_max_age: Duration,
    /// Longest time one batch may take to be delivered; past it the batch fails as a
    /// transient error and is retried (`message.timeout.ms` of its messages).
    pub write_timeout: Duration,
    /// Further librdkafka settings passed through as they are.
    pub options: Vec<(String, String)>,
}

impl KafkaSinkConfig {
    /// The `compression` values librdkafka knows (`compression.type`).
    pub const COMPRESSIONS: [&'static str; 5] = ["none", "gzip", "snappy", "lz4", "zstd"];

    /// A sink producing to `topic` on `brokers` with the defaults: lz4, 5 ms linger,
    /// batches of 10000 rows or 100 ms, 30 s write timeout.
    pub fn new(brokers: &str, topic: &str) -> Self {
        KafkaSinkConfig {
            brokers: brokers.to_owned(),
            topic: topic.to_owned(),
            compression: "lz4".to_owned(),
            linger: Duration::from_millis(5),
            batch_max_rows: 10_000,
            batch_max_age: Duration::from_millis(100),
            write_timeout: Duration::from_secs(30),
            options: Vec::new(),
        }
    }
}

/// An HTTP source: clients POST events to `/v1/events` and get an answer once the
/// accepted events are durable in the log. See [`crate::sources::http`].
#[derive(Debug, Clone, PartialEq)]
pub struct HttpSourceConfig {
    /// Address to listen on, e.g. `127.0.0.1:8080`.
    pub address: std::net::SocketAddr,
    /// Largest request body, compressed or decompressed (413 over it).
    pub max_body_size: u64,
    /// Largest single event; `None`: the pipeline's `max_event_size`.
    pub max_event_size: Option<u64>,
    /// Body formats accepted (415 for others).
    pub formats: Vec<BodyFormat>,
    /// Content encodings accepted besides `identity` (415 for others).
    pub encodings: Vec<ContentEncoding>,
    /// Open connections at most; one more is answered 503 and closed.
    pub max_connections: usize,
    /// Request bytes (read, decompressed and parsed) held at once, over all requests;
    /// over it, requests wait up to `body_timeout`, then get 503.
    pub max_inflight_bytes: u64,
    /// Time allowed to send a request's headers, and to keep an idle connection.
    pub header_timeout: Duration,
    /// Time allowed to send a request's body.
    pub body_timeout: Duration,
    /// Longest wait for the accepted events to become durable before answering 503.
    pub ack_timeout: Duration,
    /// How long an `Idempotency-Key` is remembered (0: the header is ignored).
    pub idempotency_horizon: Duration,
    /// Keys remembered at most; the oldest are forgotten first.
    pub idempotency_max_keys: usize,
    /// Events appended but not yet committed by the pipeline, at most; over it, 503.
    pub max_lag: Option<u64>,
    /// Per-client token bucket: events per second, if limited (429 over it).
    pub rate_limit: Option<f64>,
    /// Per-client bucket size in events (default: one second of `rate_limit`).
    pub rate_limit_burst: Option<u64>,
    /// Header naming the client for rate limits and idempotency keys; the peer's IP
    /// address when absent.
    pub client_header: Option<String>,
    /// `Retry-After` sent with a 503 (log full, not durable, shutting down) and with a
    /// refused connection, rounded up to whole seconds. A 429 carries the client
    /// bucket's own wait instead (at least 1 s).
    pub retry_after: Duration,
}

impl HttpSourceConfig {
    /// Defaults: 16 MiB bodies, JSON and NDJSON, gzip and zstd, 1024 connections,
    /// 256 MiB in flight, 10 s for headers, 30 s for a body, 10 s to acknowledge,
    /// idempotency keys kept 10 min (at most 100,000), no lag limit, no rate limit.
    pub fn new(address: std::net::SocketAddr) -> Self {
        Self {
            address,
            max_body_size: 16 << 20,
            max_event_size: None,
            formats: vec![BodyFormat::Json, BodyFormat::Ndjson],
            encodings: vec![ContentEncoding::Gzip, ContentEncoding::Zstd],
            max_connections: 1024,
            max_inflight_bytes: 256 << 20,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            ack_timeout: Duration::from_secs(10),
            idempotency_horizon: Duration::from_secs(600),
            idempotency_max_keys: 100_000,
            max_lag: None,
            rate_limit: None,
            rate_limit_burst: None,
            client_header: None,
            retry_after: Duration::from_secs(1),
        }
    }
}

/// A request body format of the HTTP source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    /// `application/json`: one JSON object, or an array of them (`"json"`).
    Json,
    /// `application/x-ndjson`: one JSON object per line (`"ndjson"`).
    Ndjson,
    /// `application/x-protobuf`: length-delimited messages of the `[protobuf]` type
    /// (`"protobuf"`).
    Protobuf,
}

/// A `Content-Encoding` the HTTP source can decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentEncoding {
    /// `gzip`.
    Gzip,
    /// `zstd`.
    Zstd,
}

/// A generator of synthetic, seeded events.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratorConfig {
    /// Total number of events to produce; `None` with `duration` also `None`: run forever.
    pub count: Option<u64>,
    /// Stop after this long (not together with `count`).
    pub duration: Option<Duration>,
    /// How fast to produce events.
    pub rate: Rate,
    /// Key cardinality (>= 1).
    pub keys: u64,
    /// How keys are drawn.
    pub distribution: KeyDistribution,
    /// Exponent of the Zipf distribution (> 0; used with [`KeyDistribution::Zipf`]).
    pub zipf_exponent: f64,
    /// Share of events on key 0 (in `[0, 1]`; used with [`KeyDistribution::Hot`]); the
    /// rest are uniform over all keys.
    pub hot_share: f64,
    /// Maximum event-time disorder.
    pub disorder: Duration,
    /// Share of malformed events, in `[0, 1]`.
    pub malformed: f64,
    /// Random seed: the same seed gives the same events.
    pub seed: u64,
    /// Event time of the first event, epoch milliseconds.
    pub start_time: i64,
    /// Event-time density: events per second of event time (>= 1). In files it defaults to
    /// the rate when that is numeric.
    pub events_per_second: u64,
}

impl GeneratorConfig {
    /// The default `start_time`: 2026-01-01T00:00:00Z in epoch milliseconds.
    pub const DEFAULT_START_TIME: i64 = 1_767_225_600_000;
    /// The default `events_per_second` when the rate is unlimited.
    pub const DEFAULT_EVENTS_PER_SECOND: u64 = 100_000;
}

impl Default for GeneratorConfig {
    /// Runs forever, unlimited rate, 1000 uniform keys, no disorder, nothing malformed,
    /// seed 0, starting at 2026-01-01T00:00:00Z, 100000 events per second of event time.
    fn default() -> Self {
        Self {
            count: None,
            duration: None,
            rate: Rate::Unlimited,
            keys: 1000,
            distribution: KeyDistribution::Uniform,
            zipf_exponent: 1.0,
            hot_share: 0.5,
            disorder: Duration::ZERO,
            malformed: 0.0,
            seed: 0,
            start_time: Self::DEFAULT_START_TIME,
            events_per_second: Self::DEFAULT_EVENTS_PER_SECOND,
        }
    }
}

/// How fast a source produces events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Rate {
    /// As fast as possible (`"unlimited"`).
    #[default]
    Unlimited,
    /// At most this many events per second (> 0).
    PerSecond(u64),
}

/// How a generator draws keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyDistribution {
    /// Every key equally likely (`"uniform"`).
    #[default]
    Uniform,
    /// A few hot keys, a long tail (`"zipf"`).
    Zipf,
    /// One key (`u-0`) with `hot_share` of the events, the rest uniform (`"hot"`).
    Hot,
}

/// A source reading JSON lines, or length-delimited Protobuf messages, from files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSourceConfig {
    /// Paths or glob patterns, read in order (at least one).
    pub paths: Vec<String>,
    /// What the files hold (`format = "json"`, the default, or `"protobuf"`).
    pub format: crate::codec::InputFormat,
}

impl FileSourceConfig {
    /// A file source reading `paths` (paths or glob patterns).
    pub fn new<I, S>(paths: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            paths: paths.into_iter().map(Into::into).collect(),
            format: crate::codec::InputFormat::Json,
        }
    }
}

/// Settings of the durable log (`[log]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogSettings {
    /// Number of partitions, 1..=1024.
    pub partitions: u32,
    /// Size at which a segment file is rolled, in bytes (>= 1MiB).
    pub segment_size: u64,
    /// When appended batches are made durable.
    pub fsync: FsyncPolicy,
    /// Largest single appended batch, in bytes (64KiB..=1GiB, <= `segment_size`).
    pub max_batch_size: u64,
    /// Delete segments every consumer has read once a partition holds more than this.
    pub retention_size: Option<u64>,
    /// Delete segments every consumer has read once their data is older than this.
    pub retention_age: Option<Duration>,
    /// A partition never holds more than this (at least two segments).
    pub max_size: Option<u64>,
    /// What happens at `max_size` when consumers have not caught up.
    pub when_full: WhenFull,
}

impl LogSettings {
    /// The log's retention settings.
    pub fn retention(&self) -> lungfish_log::Retention {
        lungfish_log::Retention {
            target_bytes: self.retention_size,
            max_age: self.retention_age,
            max_bytes: self.max_size,
            when_full: self.when_full,
        }
    }
}

impl Default for LogSettings {
    /// 4 partitions, 128MiB segments, fsync every 10ms, batches up to 8MiB.
    fn default() -> Self {
        Self {
            partitions: 4,
            segment_size: 128 << 20,
            fsync: FsyncPolicy::default(),
            max_batch_size: 8 << 20,
            retention_size: None,
            retention_age: None,
            max_size: None,
            when_full: WhenFull::Refuse,
        }
    }
}

/// When the log makes appended batches durable: `"always"`, `"every 10ms"` or
/// `"never"` in a pipeline file (the log's own type).
pub use lungfish_log::FsyncPolicy;

/// What a full partition does: `"refuse"` appends until consumers catch up (the
/// default), or `"delete_oldest"` unread data, naming the consumers that lose it.
pub use lungfish_log::WhenFull;

/// How events are read, batched, windowed and aggregated (`[pipeline]`).
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessingConfig {
    /// The JSON field holding the key (string).
    pub key: String,
    /// The JSON field holding the event time (integer epoch milliseconds).
    pub time: String,
    /// The JSON field holding the event id.
    pub id: String,
    /// Watermark bound: how far behind the latest event time an event may arrive.
    pub out_of_orderness: Duration,
    /// How long a window stays open for late events after the watermark closed it
    /// (0 = none). A late event inside it updates its window and the sinks receive the
    /// corrected row (an upsert of the same window and key); past it the event goes to
    /// the dead-letter queue as `late`.
    pub allowed_lateness: Duration,
    /// How often the open windows are saved with the committed offsets (a *state
    /// checkpoint*, see `docs/guide/concepts.md`), so a restart loads them and reads on from
    /// there instead of replaying the log from the oldest open window. `0` turns them
    /// off (replay on restart). Not used with a Kafka source, whose restarts replay.
    pub checkpoint_interval: Duration,
    /// Pre-aggregate the keys that carry a large share of the events in the consumers
    /// before they cross to their shard, so one hot key does not load one shard with
    /// its traffic (see [`crate::hot_keys`]). Off by default: it reorders
    /// floating-point additions, so sums and means of fractional numbers may differ
    /// from a one-stage run in the last bits (runs stop being bit-for-bit
    /// reproducible). Hot keys are detected and reported either way.
    pub pre_aggregate: bool,
    /// Drop an event whose id (the `id` field) was already seen within this much event
    /// time, counting it (0 = no dedup; the default). Events without an id pass.
    pub dedup_horizon: Duration,
    /// The most ids dedup remembers per partition; past it the oldest are forgotten
    /// early (the horizon shrinks; counted). Bounds dedup memory to about 32 bytes per id.
    pub dedup_max_ids: usize,
    /// A partition that receives no event for this long stops holding its windows back:
    /// its watermark advances to the lowest watermark of the partitions still receiving
    /// events (0 = never; the default).
    pub idle_timeout: Duration,
    /// Number of worker shards; 0 means one per core (at most 256).
    pub shards: usize,
    /// A micro-batch is cut at this many events (>= 1) ...
    pub batch_max_events: usize,
    /// ... or when its first event is this old (> 0), whichever comes first.
    pub batch_max_age: Duration,
    /// Largest accepted event, in bytes (> 0, < `log.max_batch_size`).
    pub max_event_size: u64,
    /// The memory the pipeline may hold in its buffers and state, in bytes (>= 16MiB);
    /// see [`MemoryPlan`] for how it is shared. Peak RSS stays under it plus a fixed
    /// overhead (threads, the log's index, per-partition read buffers).
    pub memory_limit: u64,
    /// The windows events are aggregated in.
    pub window: WindowSpec,
    /// What is computed per window and key, one column each (at least one).
    pub aggregates: Vec<AggregateSpec>,
}

impl Default for ProcessingConfig {
    /// Fields `user`, `ts`, `id`; 2s out-of-orderness, no allowed lateness, state
    /// checkpoints every 5s, no idle timeout; one shard per core; micro-batches of
    /// 8192 events or 50ms; events up to 64KiB; a memory limit of 256MiB. Window and aggregates are required in
    /// pipeline files; here they default to 1s tumbling windows and `count`.
    fn default() -> Self {
        Self {
            key: "user".to_owned(),
            time: "ts".to_owned(),
            id: "id".to_owned(),
            out_of_orderness: Duration::from_secs(2),
            allowed_lateness: Duration::ZERO,
            checkpoint_interval: Duration::from_secs(5),
            pre_aggregate: false,
            dedup_horizon: Duration::ZERO,
            dedup_max_ids: 1_000_000,
            idle_timeout: Duration::ZERO,
            shards: 0,
            batch_max_events: 8192,
            batch_max_age: Duration::from_millis(50),
            max_event_size: 64 << 10,
            memory_limit: 256 << 20,
            window: WindowSpec::Tumbling {
                size: Duration::from_secs(1),
            },
            aggregates: vec![AggregateSpec::count()],
        }
    }
}

/// How `[pipeline] memory_limit` is shared between the parts that hold memory.
///
/// * A quarter for request bodies on the HTTP edge, split evenly between the HTTP
///   sources (each source's `max_inflight_bytes` is capped at its part);
/// * an eighth for micro-batches waiting in the shards' queues and an eighth for rows
///   waiting in the sinks' queues and batches (byte budgets: a full queue makes the
///   stage before it wait, and the consumers stop reading the log; see
///   [`crate::budget`]);
/// * half for window state (open windows' keys and aggregates), which grows with the
///   keys in the open windows: it is measured (`lungfish_state_bytes`) and a warning
///   says when it goes over its half, but it is not refused.
///
/// The plan also sizes what the consumers hold: a micro-batch in the making is cut at a
/// share of the shards' queue bytes ([`consumer_batch_bytes`](Self::consumer_batch_bytes)),
/// and the log is read in chunks of [`read_bytes`](Self::read_bytes), which come on top
/// of the shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryPlan {
    /// The limit shared out.
    pub limit: u64,
    /// In-flight request bytes of each HTTP source.
    pub http_per_source: u64,
    /// Bytes of micro-batches in the shards' queues, all consumers together.
    pub shard_queues: u64,
    /// Bytes of rows in the sinks' queues and pending batches, all shards together.
    pub sink_queues: u64,
    /// Bytes of window state all shards are expected to stay under.
    pub state: u64,
}

impl MemoryPlan {
    /// The plan for `memory_limit` bytes with `http_sources` HTTP sources.
    pub fn new(memory_limit: u64, http_sources: usize) -> Self {
        MemoryPlan {
            limit: memory_limit,
            http_per_source: memory_limit / 4 / http_sources.max(1) as u64,
            shard_queues: memory_limit / 8,
            sink_queues: memory_limit / 8,
            state: memory_limit / 2,
        }
    }

    /// Bytes at which each of `partitions` consumers cuts its micro-batch in the making:
    /// half the shards' queue bytes shared by the consumers, between 256KiB and 8MiB.
    pub fn consumer_batch_bytes(&self, partitions: u32) -> usize {
        (self.shard_queues / (2 * u64::from(partitions.max(1)))).clamp(256 << 10, 8 << 20) as usize
    }

    /// Bytes each of `partitions` consumers reads from the log at a time: 1MiB, or, when
    /// an operator waits on outside calls (`calls_out`: an `enrich`, whose batches wait
    /// for their slowest call, so larger ones spread the wait over more events), an
    /// eighth of the limit shared by the consumers, between 1MiB and 8MiB.
    pub fn read_bytes(&self, partitions: u32, calls_out: bool) -> usize {
        const READ: u64 = 1 << 20;
        if calls_out {
            (self.limit / 8 / u64::from(partitions.max(1))).clamp(READ, 8 << 20) as usize
        } else {
            READ as usize
        }
    }
}

impl ProcessingConfig {
    /// The distinct numeric fields the aggregates read, in first-use order (e.g.
    /// `["value"]`).
    pub fn number_fields(&self) -> Vec<String> {
        let mut fields: Vec<String> = Vec::new();
        for field in self.aggregates.iter().filter_map(|a| a.field.as_ref()) {
            if !fields.contains(field) {
                fields.push(field.clone());
            }
        }
        fields
    }
}

/// The shape of the windows (`window = { type = ..., ... }`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WindowSpec {
    /// Back-to-back windows of `size`; each event is in exactly one.
    Tumbling {
        /// Window length (> 0, whole milliseconds).
        size: Duration,
    },
    /// Windows of `size` starting every `slide`; each event is in `size / slide` windows.
    Sliding {
        /// Window length (> 0, whole milliseconds, a multiple of `slide`).
        size: Duration,
        /// Distance between window starts (> 0, whole milliseconds, <= `size`).
        slide: Duration,
    },
    /// Per key, a window that grows while events keep arriving less than `gap` apart
    /// (in event time) and closes `gap` after its last event. A row's window is
    /// `[first event time, last event time + gap)`.
    Session {
        /// Inactivity that closes a session (> 0, whole milliseconds).
        gap: Duration,
    },
}

impl WindowSpec {
    /// The known window types, as written in `type`.
    pub const TYPES: [&'static str; 3] = ["tumbling", "sliding", "session"];

    /// The window length (the gap, for session windows: their shortest length).
    pub fn size(&self) -> Duration {
        match *self {
            WindowSpec::Tumbling { size } | WindowSpec::Sliding { size, .. } => size,
            WindowSpec::Session { gap } => gap,
        }
    }

    /// The distance between window starts (the size, for tumbling windows; the gap, for
    /// session windows).
    pub fn slide(&self) -> Duration {
        match *self {
            WindowSpec::Tumbling { size } => size,
            WindowSpec::Sliding { slide, .. } => slide,
            WindowSpec::Session { gap } => gap,
        }
    }
}

/// One aggregate: a function, the field it reads and the column it is written to.
///
/// Parse it from the file grammar with [`str::parse`] (`"sum(value) as total"`) or build it
/// with [`AggregateSpec::new`]; `Display` writes the grammar back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AggregateSpec {
    /// The function.
    pub func: AggFunc,
    /// The numeric field read (`None` for `count`).
    pub field: Option<String>,
    /// The output column: an SQL identifier, unique, not `window_start`, `window_end` or `key`.
    pub column: String,
}

/// An aggregate function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AggFunc {
    /// Number of events.
    Count,
    /// Sum of a field.
    Sum,
    /// Minimum of a field.
    Min,
    /// Maximum of a field.
    Max,
    /// Mean of a field (sum / count).
    Mean,
    /// Approximate number of distinct values of a field (HyperLogLog, 1.6% standard
    /// error; see [`crate::sketch::Distinct`]).
    Distinct,
    /// The `ppm / 10^6`-quantile of a field, within 1% relative error (DDSketch; see
    /// [`crate::sketch::Quantiles`]).
    Quantile {
        /// The quantile in parts per million: `0..=1_000_000` (`990_000` is p99).
        ppm: u32,
    },
    /// Exponentially weighted mean of a field over event time: each value weighs
    /// `2^(-age / half_life)` relative to the window's latest event (see
    /// [`crate::sketch::DecayedMean`]).
    Ewma {
        /// The half-life: a whole number of milliseconds, at least 1 ms.
        half_life: Duration,
    },
}

/// A sink and the name it has in the file (`[sinks.NAME]`).
#[derive(Debug, Clone, PartialEq)]
pub struct NamedSink {
    /// The sink's name.
    pub name: String,
    /// What the sink is and how it is set up.
    pub config: SinkConfig,
}

/// A destination for window rows, by `type`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum SinkConfig {
    /// `type = "sqlite"`: upserts into an SQLite table.
    Sqlite(SqliteSinkConfig),
    /// `type = "file"`: JSON lines of window rows.
    File(FileSinkConfig),
    /// `type = "stdout"`: rows printed to standard output.
    Stdout,
    /// `type = "postgres"`: upserts into a Postgres table through binary COPY.
    Postgres(DatabaseSinkConfig),
    /// `type = "clickhouse"`: inserts into a ClickHouse ReplacingMergeTree over HTTP.
    ClickHouse(DatabaseSinkConfig),
    /// `type = "kafka"`: rows produced to a Kafka (or Redpanda) topic.
    Kafka(KafkaSinkConfig),
}

impl SinkConfig {
    /// The write-behind spool size, if the sink is set up with one.
    pub fn write_behind(&self) -> Option<u64> {
        match self {
            SinkConfig::Sqlite(c) => c.write_behind,
            SinkConfig::Postgres(c) | SinkConfig::ClickHouse(c) => c.write_behind,
            _ => None,
        }
    }

    /// The known sink types, as written in `type`.
    pub const TYPES: [&'static str; 6] = [
        "sqlite",
        "file",
        "stdout",
        "postgres",
        "clickhouse",
        "kafka",
    ];

    /// The `type` of this sink in a pipeline file.
    pub fn type_name(&self) -> &'static str {
        match self {
            SinkConfig::Sqlite(_) => "sqlite",
            SinkConfig::File(_) => "file",
            SinkConfig::Stdout => "stdout",
            SinkConfig::Postgres(_) => "postgres",
            SinkConfig::ClickHouse(_) => "clickhouse",
            SinkConfig::Kafka(_) => "kafka",
        }
    }
}

/// A sink writing to a database server (Postgres or ClickHouse).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseSinkConfig {
    /// Where the server is: `postgres://user:password@host:port/database` or
    /// `http://host:8123` (ClickHouse's HTTP interface). Empty: read it from `url_env`.
    pub url: String,
    /// An environment variable holding the URL (keeps passwords out of files).
    pub url_env: Option<String>,
    /// The target table: an SQL identifier (ClickHouse: `database.table` allowed).
    pub table: String,
    /// Output column -> table column renames (`key`, `window_start`, `window_end` and
    /// the aggregates' columns); unnamed columns keep their names.
    pub columns: Vec<(String, String)>,
    /// Create the table if it is missing.
    pub create_table: bool,
    /// A write batch is cut at this many rows (>= 1) ...
    pub batch_max_rows: usize,
    /// ... or when its first row is this old (> 0).
    pub batch_max_age: Duration,
    /// Connections to the server (>= 1).
    pub pool_size: usize,
    /// Longest time one batch write may take; past it the write is cancelled, rolled
    /// back and retried like any transient failure.
    pub statement_timeout: Duration,
    /// Use TLS to the server (Postgres: `sslmode=require` also asks for it).
    pub tls: bool,
    /// Write-behind: rows wait in a durable spool of at most this many bytes
    /// (`DATA_DIR/spool/NAME`) and a thread writes them to the store, so a stalled
    /// store slows only this sink (see [`crate::sinks::write_behind`]). `None`: off.
    pub write_behind: Option<u64>,
}

impl DatabaseSinkConfig {
    /// A sink to `url`, table `windows`, created if missing, batches of 10,000 rows or
    /// 200 ms, one connection, 30 s statement timeout, no TLS.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            url_env: None,
            table: "windows".to_owned(),
            columns: Vec::new(),
            create_table: true,
            batch_max_rows: 10_000,
            batch_max_age: Duration::from_millis(200),
            pool_size: 1,
            statement_timeout: Duration::from_secs(30),
            tls: false,
            write_behind: None,
        }
    }

    /// The URL: `url`, or the value of `url_env`.
    ///
    /// # Errors
    /// Neither is set, or the variable is missing.
    pub fn resolved_url(&self) -> Result<String, String> {
        if !self.url.is_empty() {
            return Ok(self.url.clone());
        }
        match &self.url_env {
            Some(var) => std::env::var(var)
                .map_err(|_| format!("the environment variable {var} (url_env) is not set")),
            None => Err("set `url` or `url_env`".to_owned()),
        }
    }

    /// The table's name for output column `column`.
    pub fn column_name<'a>(&'a self, column: &'a str) -> &'a str {
        self.columns
            .iter()
            .find(|(from, _)| from == column)
            .map_or(column, |(_, to)| to.as_str())
    }
}

/// An SQLite sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqliteSinkConfig {
    /// The database file.
    pub path: PathBuf,
    /// The table rows are upserted into: an SQL identifier.
    pub table: String,
    /// A write batch is cut at this many rows (>= 1) ...
    pub batch_max_rows: usize,
    /// ... or when its first row is this old (> 0).
    pub batch_max_age: Duration,
    /// SQLite's `synchronous` pragma.
    pub synchronous: SqliteSync,
    /// Longest time one batch write may take (waiting for a lock included); past it the
    /// write is interrupted, rolled back and retried like any transient failure (> 0).
    pub write_timeout: Duration,
    /// Write-behind spool size, as [`DatabaseSinkConfig::write_behind`]. `None`: off.
    pub write_behind: Option<u64>,
}

impl SqliteSinkConfig {
    /// An SQLite sink writing to `path` with the defaults: table `windows`, batches of
    /// 10000 rows or 100ms, `synchronous = full`, writes interrupted after 30 s.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            table: "windows".to_owned(),
            batch_max_rows: 10_000,
            batch_max_age: Duration::from_millis(100),
            synchronous: SqliteSync::Full,
            write_timeout: Duration::from_secs(30),
            write_behind: None,
        }
    }
}

/// SQLite's `synchronous` pragma.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SqliteSync {
    /// `FULL`: durable at every commit.
    #[default]
    Full,
    /// `NORMAL`: faster; in WAL mode a power loss may undo the latest commits.
    Normal,
}

/// A sink writing JSON lines of window rows to a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSinkConfig {
    /// The output file.
    pub path: PathBuf,
    /// A write batch is cut at this many rows (>= 1) ...
    pub batch_max_rows: usize,
    /// ... or when its first row is this old (> 0).
    pub batch_max_age: Duration,
}

impl FileSinkConfig {
    /// A file sink writing to `path`, with batches of 10000 rows or 100ms.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            batch_max_rows: 10_000,
            batch_max_age: Duration::from_millis(100),
        }
    }
}

/// The metrics endpoint (`[metrics]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsConfig {
    /// Where to serve metrics.
    pub address: SocketAddr,
}

impl Default for MetricsConfig {
    /// `127.0.0.1:9898`.
    fn default() -> Self {
        Self {
            address: SocketAddr::from((Ipv4Addr::LOCALHOST, 9898)),
        }
    }
}
