//! The pipeline file described option by option, for people and for editors.
//!
//! [`describe`] lists every section of a pipeline file and every option in it: its TOML
//! type, its default, its unit, its allowed values, whether it is required and what it
//! does. Defaults are read from the typed configuration's `Default` impls and
//! constructors when the description is built, and the allowed values of enumerations
//! from the reader's own tables, so neither is typed twice. Two renderings come from it:
//! a JSON Schema of the file ([`json_schema`]), which editors such as Taplo use to check
//! pipeline files as they are typed, and the Markdown reference `docs/reference/config.md`
//! ([`markdown()`]). `lungfish config schema` and `lungfish config reference` print them.
//!
//! The crate's tests keep the three in step with the reader: every key the reader accepts
//! is described and every described key is accepted, section by section; the committed
//! `docs/reference/config.md` and `docs/reference/pipeline.schema.json` are what the code
//! generates (`LUNGFISH_BLESS=1 cargo test -p lungfish --lib config::schema` rewrites
//! them); and every `examples/*.toml` validates against the JSON Schema.

mod json;
mod markdown;
#[cfg(test)]
mod tests;

use std::time::Duration;

use serde_json::{Value, json};

use super::read::{
    BODY_FORMATS, DISTRIBUTIONS, ENCODINGS, ENRICH_METHODS, INPUT_FORMATS, KAFKA_STARTS,
    ON_UNAVAILABLE, OTHERWISE, SQLITE_SYNC, WHEN_FULL,
};
use super::units::{format_duration, format_size};
use super::{
    AggregateSpec, DatabaseSinkConfig, EnrichConfig, FileSinkConfig, FileSourceConfig, FsyncPolicy,
    GeneratorConfig, HttpSourceConfig, KafkaSinkConfig, KafkaSourceConfig, LogSettings,
    MetricsConfig, OperatorConfig, PipelineConfig, ProcessingConfig, Rate, SinkConfig,
    SourceConfig, SqliteSinkConfig,
};
use crate::operator::filter::Otherwise;

pub use json::{json_schema, json_schema_text};
pub use markdown::markdown;

/// A part of a pipeline file and the options it takes.
#[derive(Debug, Clone, PartialEq)]
pub struct Section {
    /// Where the section is in a file.
    pub place: Place,
    /// What the section is for, in a sentence or three.
    pub about: &'static str,
    /// Its options, in the order the reference lists them (the section's `type` first).
    pub options: Vec<Setting>,
}

/// Where a [`Section`] is in a pipeline file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// The top level of the file.
    Top,
    /// A table of its own: `[log]`, `[pipeline]`, `[metrics]` or `[protobuf]`.
    Table(&'static str),
    /// A source, `[sources.NAME]`, of this `type`.
    Source(&'static str),
    /// An operator, `[operators.NAME]`, of this `type`.
    Operator(&'static str),
    /// A sink, `[sinks.NAME]`, of this `type`.
    Sink(&'static str),
    /// The `window` table of `[pipeline]`, of this `type`.
    Window(&'static str),
}

impl Place {
    /// How the section is written in a file, e.g. `[log]`,
    /// `[sources.NAME] type = "http"` or `window = { type = "sliding", ... }`.
    pub fn title(&self) -> String {
        match self {
            Place::Top => "Top level".to_owned(),
            Place::Table(name) => format!("[{name}]"),
            Place::Source(kind) => format!("[sources.NAME] type = \"{kind}\""),
            Place::Operator(kind) => format!("[operators.NAME] type = \"{kind}\""),
            Place::Sink(kind) => format!("[sinks.NAME] type = \"{kind}\""),
            Place::Window(kind) => format!("[pipeline] window = {{ type = \"{kind}\", ... }}"),
        }
    }

    /// A short name for the section, unique in a description: `top`, `log`,
    /// `source-http`, `window-session`, ... (JSON Schema definitions are named so).
    pub fn id(&self) -> String {
        match self {
            Place::Top => "top".to_owned(),
            Place::Table(name) => (*name).to_owned(),
            Place::Source(kind) => format!("source-{kind}"),
            Place::Operator(kind) => format!("operator-{kind}"),
            Place::Sink(kind) => format!("sink-{kind}"),
            Place::Window(kind) => format!("window-{kind}"),
        }
    }
}

/// One option of a section: a key and what it takes.
#[derive(Debug, Clone, PartialEq)]
pub struct Setting {
    /// The key, as written in the file.
    pub name: &'static str,
    /// The value it takes.
    pub kind: Kind,
    /// What a file that leaves it out gets, or that it must be set.
    pub default: DefaultValue,
    /// The unit of a number (durations and sizes carry theirs in the value).
    pub unit: Option<&'static str>,
    /// What it does, in a sentence or two.
    pub meaning: &'static str,
}

impl Setting {
    /// Whether a file must set it.
    pub fn required(&self) -> bool {
        matches!(self.default, DefaultValue::Required(_))
    }

    /// The unit shown in the reference: [`unit`](Self::unit), or `time` for durations and
    /// `bytes` for sizes; empty when there is none.
    pub fn unit_text(&self) -> &'static str {
        match (self.unit, &self.kind) {
            (Some(unit), _) => unit,
            (None, Kind::Duration) => "time",
            (None, Kind::Size) => "bytes",
            (None, _) => "",
        }
    }
}

/// The TOML value an option takes.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// A string.
    String,
    /// `true` or `false`.
    Boolean,
    /// A whole number, not negative.
    Count,
    /// A whole number, negative ones included.
    Integer,
    /// A number; a whole number is accepted too.
    Number,
    /// A duration: a string of whole numbers and units, largest first, e.g. `"50ms"`,
    /// `"1m30s"` (units `ns`, `us`, `ms`, `s`, `m`, `h`, `d`).
    Duration,
    /// A size: a string such as `"64MiB"` (units `B`, `KiB`, `MiB`, `GiB`, `TiB`, `KB`,
    /// `MB`, `GB`), or a whole number of bytes.
    Size,
    /// A socket address string, `IP:PORT` (`[IPv6]:PORT`); no host names.
    Address,
    /// One of these strings.
    Choice(Vec<&'static str>),
    /// An array of strings, each one of these.
    Choices(Vec<&'static str>),
    /// An array of strings; at least one when `non_empty`.
    Strings {
        /// Whether the array must hold at least one string.
        non_empty: bool,
    },
    /// The `type` of a source, operator, sink or window: this string.
    Type(&'static str),
    /// `"unlimited"`, or a whole number of events per second.
    Rate,
    /// `"always"`, `"never"` or `"every DURATION"`.
    Fsync,
    /// A table of strings under any keys.
    StringTable,
    /// A table of librdkafka settings, passed on as they are: string values (whole
    /// numbers and booleans are accepted and passed as their text).
    ClientOptions,
    /// The window: an inline table (or `[pipeline.window]`) described by the
    /// [`Place::Window`] sections.
    Window,
    /// An array of aggregate expressions (at least one), see [`aggregate_forms`].
    Aggregates,
    /// A table described by the [`Place::Table`] section of this name.
    Table(&'static str),
    /// A table of named tables: sources, operators or sinks, each described by the
    /// sections of its family.
    Named(Family),
}

/// The families of named tables, whose `type` picks their section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `[sources.NAME]`.
    Sources,
    /// `[operators.NAME]`.
    Operators,
    /// `[sinks.NAME]`.
    Sinks,
}

impl Family {
    /// The family's key at the top level: `sources`, `operators` or `sinks`.
    pub fn key(self) -> &'static str {
        match self {
            Family::Sources => "sources",
            Family::Operators => "operators",
            Family::Sinks => "sinks",
        }
    }

    /// The `type` names of the family, as the reader knows them.
    pub fn types(self) -> &'static [&'static str] {
        match self {
            Family::Sources => &SourceConfig::TYPES,
            Family::Operators => &OperatorConfig::TYPES,
            Family::Sinks => &SinkConfig::TYPES,
        }
    }

    /// The place of the section for `kind` in this family.
    pub fn place(self, kind: &'static str) -> Place {
        match self {
            Family::Sources => Place::Source(kind),
            Family::Operators => Place::Operator(kind),
            Family::Sinks => Place::Sink(kind),
        }
    }
}

/// What a file that leaves an option out gets.
#[derive(Debug, Clone, PartialEq)]
pub enum DefaultValue {
    /// This value, as JSON in the TOML shape (durations and sizes as strings such as
    /// `"5s"`), taken from the code.
    Value(Value),
    /// Nothing fixed: the text says what happens (off, unbounded, taken from another
    /// option...).
    Absent(&'static str),
    /// None: the file must set the option; an example of a value, in TOML.
    Required(String),
}

/// One form of aggregate expression, for the reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AggregateForm {
    /// The form with `F` for the field, e.g. `sum(F)`; it parses as an aggregate.
    pub form: &'static str,
    /// What it computes.
    pub meaning: &'static str,
}

impl AggregateForm {
    /// The column the form writes to (e.g. `sum_F`), as the parser names it.
    ///
    /// # Panics
    /// If the form does not parse (the tests parse every form).
    pub fn column(&self) -> String {
        let spec: AggregateSpec = self.form.parse().expect("aggregate forms parse");
        spec.column
    }
}

/// The forms an entry of `aggregates` takes.
pub fn aggregate_forms() -> Vec<AggregateForm> {
    let form = |form, meaning| AggregateForm { form, meaning };
    vec![
        form("count", "Events in the window for the key."),
        form("sum(F)", "Sum of the numeric field F."),
        form("min(F)", "Smallest value of F."),
        form("max(F)", "Largest value of F."),
        form("mean(F)", "Mean of F (sum / count)."),
        form(
            "distinct(F)",
            "Approximate number of distinct values of F (HyperLogLog, 1.6% standard error; exact up to rare collisions below 1024 values).",
        ),
        form(
            "quantile(F, 0.99)",
            "The Q-quantile of F, Q from 0 to 1 with at most 6 decimals, within 1% relative error (DDSketch); Q = 0 and 1 are the exact minimum and maximum.",
        ),
        form(
            "p99(F)",
            "Shorthands for quantiles: p50, p90, p95, p99 and p999 (0.999).",
        ),
        form(
            "ewma(F, 30s)",
            "Mean of F weighted by 2^(-age / HALF_LIFE), the age in event time before the key's latest event in the window; the half-life a duration of whole milliseconds.",
        ),
        form(
            "sum(F) as total",
            "Any form followed by `as NAME` writes to column NAME (a letter or `_`, then letters, digits or `_`).",
        ),
    ]
}

/// Every section of a pipeline file: the top level, `[log]`, `[pipeline]`, `[metrics]`,
/// `[protobuf]`, each source, operator and sink type, and each window type, in that
/// order.
pub fn describe() -> Vec<Section> {
    let mut sections = vec![top(), log(), pipeline(), metrics(), protobuf()];
    sections.extend([generator(), file_source(), http_source(), kafka_source()]);
    sections.extend([filter(), enrich()]);
    sections.extend([
        sqlite(),
        file_sink(),
        stdout(),
        database("postgres"),
        database("clickhouse"),
        kafka_sink(),
    ]);
    sections.extend(windows());
    sections
}

// ----- building blocks -----

fn setting(
    name: &'static str,
    kind: Kind,
    default: DefaultValue,
    unit: Option<&'static str>,
    meaning: &'static str,
) -> Setting {
    Setting {
        name,
        kind,
        default,
        unit,
        meaning,
    }
}

fn type_setting(kind: &'static str, meaning: &'static str) -> Setting {
    let example = format!("\"{kind}\"");
    setting(
        "type",
        Kind::Type(kind),
        DefaultValue::Required(example),
        None,
        meaning,
    )
}

fn required(example: &str) -> DefaultValue {
    DefaultValue::Required(example.to_owned())
}

fn duration(d: Duration) -> DefaultValue {
    DefaultValue::Value(json!(format_duration(d)))
}

fn size(bytes: u64) -> DefaultValue {
    DefaultValue::Value(json!(format_size(bytes)))
}

fn value(v: impl Into<Value>) -> DefaultValue {
    DefaultValue::Value(v.into())
}

/// The name `value` has in a reader table.
fn name_of<T: PartialEq>(table: &[(&'static str, T)], value: &T) -> &'static str {
    table
        .iter()
        .find(|(_, v)| v == value)
        .map(|(name, _)| *name)
        .expect("every value of a reader table has a name")
}

fn choice<T: PartialEq>(table: &[(&'static str, T)]) -> Kind {
    Kind::Choice(table.iter().map(|(name, _)| *name).collect())
}

fn choices<T: PartialEq>(table: &[(&'static str, T)]) -> Kind {
    Kind::Choices(table.iter().map(|(name, _)| *name).collect())
}

/// The fsync policy as a pipeline file writes it.
fn fsync_text(policy: FsyncPolicy) -> String {
    match policy {
        FsyncPolicy::Always => "always".to_owned(),
        FsyncPolicy::Never => "never".to_owned(),
        FsyncPolicy::Every(interval) => format!("every {}", format_duration(interval)),
    }
}

// ----- sections -----

fn top() -> Section {
    let d = PipelineConfig::default();
    Section {
        place: Place::Top,
        about: "The pipeline's name and data directory, and its sections. Relative paths in the file are relative to the working directory, except `[protobuf] file`.",
        options: vec![
            setting(
                "name",
                Kind::String,
                DefaultValue::Absent("the pipeline file's name without its extension"),
                None,
                "The pipeline's name: the consumer its offsets are committed under, the directory of its state checkpoints, and the default Kafka consumer group.",
            ),
            setting(
                "data_dir",
                Kind::String,
                value(d.data_dir.to_string_lossy().into_owned()),
                None,
                "Directory of the log and its committed offsets, the dead-letter queue, state checkpoints, write-behind spools and file sources' pinned file lists; one process uses it at a time (it is locked).",
            ),
            setting(
                "sources",
                Kind::Named(Family::Sources),
                required("{ gen = { type = \"generator\" } }"),
                None,
                "Where events come from: one `[sources.NAME]` table per source (at least one), read in file order.",
            ),
            setting(
                "log",
                Kind::Table("log"),
                DefaultValue::Absent("the `[log]` defaults"),
                None,
                "The durable, partitioned log between the sources and processing.",
            ),
            setting(
                "pipeline",
                Kind::Table("pipeline"),
                required(
                    "{ window = { type = \"tumbling\", size = \"1s\" }, aggregates = [\"count\"] }",
                ),
                None,
                "Event fields, watermarks, micro-batches, windows and aggregates.",
            ),
            setting(
                "operators",
                Kind::Named(Family::Operators),
                DefaultValue::Absent("none"),
                None,
                "Operators run on every event between the log and the windows, one `[operators.NAME]` table each, in file order.",
            ),
            setting(
                "sinks",
                Kind::Named(Family::Sinks),
                required("{ out = { type = \"stdout\" } }"),
                None,
                "Where window rows go: one `[sinks.NAME]` table per sink (at least one); every sink gets every row.",
            ),
            setting(
                "metrics",
                Kind::Table("metrics"),
                DefaultValue::Absent("no metrics endpoint"),
                None,
                "Serve Prometheus metrics; the table's presence turns the endpoint on.",
            ),
            setting(
                "protobuf",
                Kind::Table("protobuf"),
                DefaultValue::Absent("none (needed by Protobuf input)"),
                None,
                "The Protobuf message type of `format = \"protobuf\"` file sources and `formats = [\"protobuf\"]` HTTP sources.",
            ),
        ],
    }
}

fn log() -> Section {
    let d = LogSettings::default();
    Section {
        place: Place::Table("log"),
        about: "The embedded log events are appended to before they are processed (`DATA_DIR/log`). With a Kafka source the topic takes its place and only `fsync` is used, for the dead-letter queue.",
        options: vec![
            setting(
                "partitions",
                Kind::Count,
                value(d.partitions),
                Some("partitions"),
                "Number of partitions, 1 to 1024; events are partitioned by key, and each partition has its own consumer.",
            ),
            setting(
                "segment_size",
                Kind::Size,
                size(d.segment_size),
                None,
                "Size at which a segment file is rolled (at least 1MiB); retention deletes whole segments.",
            ),
            setting(
                "fsync",
                Kind::Fsync,
                value(fsync_text(d.fsync)),
                None,
                "When appends are made durable: \"always\" (group commit per write), \"every DURATION\" (acknowledgements wait for the next sync) or \"never\" (survives a process crash, not a power loss).",
            ),
            setting(
                "max_batch_size",
                Kind::Size,
                size(d.max_batch_size),
                None,
                "Largest single appended batch, 64KiB to 1GiB and at most `segment_size`; `[pipeline] max_event_size` must be smaller.",
            ),
            setting(
                "retention_size",
                Kind::Size,
                DefaultValue::Absent("no size retention"),
                None,
                "Delete segments every consumer has read once a partition holds more than this.",
            ),
            setting(
                "retention_age",
                Kind::Duration,
                DefaultValue::Absent("no age retention"),
                None,
                "Delete segments every consumer has read once their data is older than this.",
            ),
            setting(
                "max_size",
                Kind::Size,
                DefaultValue::Absent("unbounded"),
                None,
                "A partition never holds more than this (at least two segments); see `when_full`.",
            ),
            setting(
                "when_full",
                choice(WHEN_FULL),
                value(name_of(WHEN_FULL, &d.when_full)),
                None,
                "At `max_size` with unread data: \"refuse\" appends until consumers catch up (sources wait, HTTP answers 503), or \"delete_oldest\" deletes it anyway, naming the consumers that lose data.",
            ),
        ],
    }
}

fn pipeline() -> Section {
    let d = ProcessingConfig::default();
    Section {
        place: Place::Table("pipeline"),
        about: "How events are read, batched, windowed and aggregated. `window` and `aggregates` are required.",
        options: vec![
            setting(
                "key",
                Kind::String,
                value(d.key),
                None,
                "The event field holding the key (a string or an integer); windows are computed per key.",
            ),
            setting(
                "time",
                Kind::String,
                value(d.time),
                None,
                "The event field holding the event time, an integer of epoch milliseconds.",
            ),
            setting(
                "id",
                Kind::String,
                value(d.id),
                None,
                "The event field holding the event id, used by dedup (events without one pass).",
            ),
            setting(
                "out_of_orderness",
                Kind::Duration,
                duration(d.out_of_orderness),
                None,
                "Watermark bound: the watermark trails the latest event time by this, so events this late still make their window.",
            ),
            setting(
                "allowed_lateness",
                Kind::Duration,
                duration(d.allowed_lateness),
                None,
                "How long a fired window stays open for late events (0: none); a late event inside it updates the window and the sinks get the corrected row, later ones go to the dead-letter queue as `late`. Whole milliseconds.",
            ),
            setting(
                "checkpoint_interval",
                Kind::Duration,
                duration(d.checkpoint_interval),
                None,
                "How often the open windows are saved with the committed offsets, so a restart loads them instead of replaying the log (0: off, replay on restart; session windows need it). Not used with a Kafka source.",
            ),
            setting(
                "dedup_horizon",
                Kind::Duration,
                duration(d.dedup_horizon),
                None,
                "Drop an event whose `id` was already seen within this much event time, counting it (0: no dedup).",
            ),
            setting(
                "dedup_max_ids",
                Kind::Count,
                value(d.dedup_max_ids),
                Some("ids per partition"),
                "The most ids dedup remembers per partition (about 32 bytes each); past it the oldest are forgotten early and the horizon shrinks.",
            ),
            setting(
                "pre_aggregate",
                Kind::Boolean,
                value(d.pre_aggregate),
                None,
                "Pre-aggregate hot keys in the consumers before they reach their shard (two stages). Sums and means of fractional numbers may then differ in the last bits between runs; hot keys are detected and reported either way.",
            ),
            setting(
                "idle_timeout",
                Kind::Duration,
                duration(d.idle_timeout),
                None,
                "A partition that receives no event for this long follows the lowest watermark of the partitions still receiving events, so its windows close (0: never).",
            ),
            setting(
                "shards",
                Kind::Count,
                value(d.shards as u64),
                Some("shards"),
                "Number of worker shards that own the window state, by key hash; 0 means one per core (at most 256).",
            ),
            setting(
                "batch_max_events",
                Kind::Count,
                value(d.batch_max_events as u64),
                Some("events"),
                "A micro-batch is cut at this many events (at least 1) ...",
            ),
            setting(
                "batch_max_age",
                Kind::Duration,
                duration(d.batch_max_age),
                None,
                "... or when its first event is this old (more than 0), whichever comes first.",
            ),
            setting(
                "max_event_size",
                Kind::Size,
                size(d.max_event_size),
                None,
                "Largest accepted event (more than 0, less than `[log] max_batch_size`); a larger one goes to the dead-letter queue as `too_large`.",
            ),
            setting(
                "memory_limit",
                Kind::Size,
                size(d.memory_limit),
                None,
                "Memory the pipeline may hold in buffers and window state (at least 16MiB): a quarter for HTTP request bodies, an eighth each for the shards' and the sinks' queues, half for window state.",
            ),
            setting(
                "window",
                Kind::Window,
                required("{ type = \"tumbling\", size = \"1s\" }"),
                None,
                "The windows events are aggregated in, by `type`: \"tumbling\", \"sliding\" or \"session\" (see the window sections).",
            ),
            setting(
                "aggregates",
                Kind::Aggregates,
                required("[\"count\", \"sum(value)\"]"),
                None,
                "What is computed per window and key, one column each (at least one; see Aggregates).",
            ),
        ],
    }
}

fn metrics() -> Section {
    let d = MetricsConfig::default();
    Section {
        place: Place::Table("metrics"),
        about: "The metrics endpoint: Prometheus text at `/metrics`, and `/health`. Served only when the table is present.",
        options: vec![setting(
            "address",
            Kind::Address,
            value(d.address.to_string()),
            None,
            "Where to listen.",
        )],
    }
}

fn protobuf() -> Section {
    Section {
        place: Place::Table("protobuf"),
        about: "The Protobuf message type events arrive as, compiled from the user's `.proto` file at startup (no `protoc` needed). The `[pipeline]` fields and aggregated numbers are looked up in it by name.",
        options: vec![
            setting(
                "file",
                Kind::String,
                required("\"events.proto\""),
                None,
                "The `.proto` file, relative to the pipeline file; its directory is the include path for its imports.",
            ),
            setting(
                "message",
                Kind::String,
                required("\"acme.Event\""),
                None,
                "The message's fully qualified name.",
            ),
        ],
    }
}

fn generator() -> Section {
    let d = GeneratorConfig::default();
    Section {
        place: Place::Source("generator"),
        about: "Synthetic, seeded JSON events `{\"id\": \"NAME-i\", \"user\": \"u-K\", \"ts\": T, \"value\": V}` (with the pipeline's field names, one number per aggregated field, uniform in [0, 1000)). Event i is a function of the seed and i, so a restart resumes exactly.",
        options: vec![
            type_setting("generator", "A generator source."),
            setting(
                "count",
                Kind::Count,
                DefaultValue::Absent("none: run forever, or for `duration`"),
                Some("events"),
                "Total number of events to produce (at least 1); not together with `duration`.",
            ),
            setting(
                "duration",
                Kind::Duration,
                DefaultValue::Absent("none: run forever, or to `count`"),
                None,
                "Stop after this much wall-clock time, per run; not together with `count`.",
            ),
            setting(
                "rate",
                Kind::Rate,
                value(match d.rate {
                    Rate::Unlimited => json!("unlimited"),
                    Rate::PerSecond(n) => json!(n),
                }),
                Some("events/s"),
                "How fast to produce events: \"unlimited\" or a whole number of events per second (more than 0).",
            ),
            setting(
                "keys",
                Kind::Count,
                value(d.keys),
                Some("keys"),
                "Key cardinality (at least 1): keys are `u-0` to `u-(keys - 1)`.",
            ),
            setting(
                "distribution",
                choice(DISTRIBUTIONS),
                value(name_of(DISTRIBUTIONS, &d.distribution)),
                None,
                "How keys are drawn: every key equally likely, Zipf (`u-0` the hottest), or one hot key `u-0` with `hot_share` of the events.",
            ),
            setting(
                "zipf_exponent",
                Kind::Number,
                value(d.zipf_exponent),
                None,
                "Exponent of the Zipf distribution (more than 0).",
            ),
            setting(
                "hot_share",
                Kind::Number,
                value(d.hot_share),
                Some("share, 0 to 1"),
                "Share of events on key `u-0` with `distribution = \"hot\"`; the rest are uniform over all keys.",
            ),
            setting(
                "disorder",
                Kind::Duration,
                duration(d.disorder),
                None,
                "Maximum event-time disorder: each event's time is moved back by a uniform 0 to this many whole milliseconds.",
            ),
            setting(
                "malformed",
                Kind::Number,
                value(d.malformed),
                Some("share, 0 to 1"),
                "Share of events broken in one of five ways (truncated JSON, missing key, wrong-typed time, not an object, wrong-typed number), for testing rejections.",
            ),
            setting(
                "seed",
                Kind::Count,
                value(d.seed),
                None,
                "Random seed: the same seed gives the same events.",
            ),
            setting(
                "start_time",
                Kind::Integer,
                value(d.start_time),
                Some("epoch ms"),
                "Event time of the first event.",
            ),
            setting(
                "events_per_second",
                Kind::Count,
                DefaultValue::Absent(
                    "`rate` when it is a number, else 100000 (`GeneratorConfig::DEFAULT_EVENTS_PER_SECOND`)",
                ),
                Some("events per second of event time"),
                "Event-time density (at least 1): event i has time `start_time + i * 1000 / events_per_second`, before disorder.",
            ),
        ],
    }
}

fn file_source() -> Section {
    let d = FileSourceConfig::new(Vec::<String>::new());
    Section {
        place: Place::Source("file"),
        about: "JSON lines, or length-delimited Protobuf messages, read from files. The files are resolved on the first run and pinned in `DATA_DIR/sources/NAME.files`, so positions keep their meaning; a restart resumes at the exact line.",
        options: vec![
            type_setting("file", "A file source."),
            setting(
                "paths",
                Kind::Strings { non_empty: true },
                required("[\"events/*.jsonl\"]"),
                None,
                "Paths or glob patterns (at least one), read in the order listed, each pattern's matches sorted, each file once.",
            ),
            setting(
                "format",
                choice(INPUT_FORMATS),
                value(name_of(INPUT_FORMATS, &d.format)),
                None,
                "What the files hold: JSON lines, or Protobuf messages each preceded by its length as a varint (needs `[protobuf]`).",
            ),
        ],
    }
}

fn http_source() -> Section {
    let d = HttpSourceConfig::new(MetricsConfig::default().address);
    let formats: Vec<&str> = d.formats.iter().map(|f| name_of(BODY_FORMATS, f)).collect();
    let encodings: Vec<&str> = d.encodings.iter().map(|e| name_of(ENCODINGS, e)).collect();
    Section {
        place: Place::Source("http"),
        about: "Clients POST events to `/v1/events`; a request is answered once its accepted events are durable in the log. `/health` and `/ready` answer too.",
        options: vec![
            type_setting("http", "An HTTP source."),
            setting(
                "address",
                Kind::Address,
                required("\"127.0.0.1:8080\""),
                None,
                "Address to listen on.",
            ),
            setting(
                "max_body_size",
                Kind::Size,
                size(d.max_body_size),
                None,
                "Largest request body, sent or decompressed (at least 1KiB); 413 over it.",
            ),
            setting(
                "max_event_size",
                Kind::Size,
                DefaultValue::Absent("`[pipeline] max_event_size`"),
                None,
                "Largest single event (at least 1 byte).",
            ),
            setting(
                "formats",
                choices(BODY_FORMATS),
                value(formats),
                None,
                "Body formats accepted (at least one): `application/json` (an object or an array), `application/x-ndjson`, `application/x-protobuf` (needs `[protobuf]`); 415 for others.",
            ),
            setting(
                "encodings",
                choices(ENCODINGS),
                value(encodings),
                None,
                "`Content-Encoding`s accepted besides `identity`; 415 for others.",
            ),
            setting(
                "max_connections",
                Kind::Count,
                value(d.max_connections as u64),
                Some("connections"),
                "Open connections at most (at least 1); one more is answered 503 and closed.",
            ),
            setting(
                "max_inflight_bytes",
                Kind::Size,
                size(d.max_inflight_bytes),
                None,
                "Request bytes (read, decompressed and parsed) held at once over all requests, at least `max_body_size`; over it requests wait up to `body_timeout`, then get 503. Capped at this source's part of `[pipeline] memory_limit`.",
            ),
            setting(
                "header_timeout",
                Kind::Duration,
                duration(d.header_timeout),
                None,
                "Time allowed to send a request's headers, and to keep an idle connection open.",
            ),
            setting(
                "body_timeout",
                Kind::Duration,
                duration(d.body_timeout),
                None,
                "Time allowed to send a request's body; 408 past it.",
            ),
            setting(
                "ack_timeout",
                Kind::Duration,
                duration(d.ack_timeout),
                None,
                "Longest wait for the accepted events to become durable before answering 503.",
            ),
            setting(
                "idempotency_horizon",
                Kind::Duration,
                duration(d.idempotency_horizon),
                None,
                "How long an `Idempotency-Key` is remembered, in memory (0: the header is ignored); a retry with the same key gets the first answer and appends nothing.",
            ),
            setting(
                "idempotency_max_keys",
                Kind::Count,
                value(d.idempotency_max_keys as u64),
                Some("keys"),
                "Idempotency keys remembered at most; the oldest are forgotten first.",
            ),
            setting(
                "max_lag",
                Kind::Count,
                DefaultValue::Absent("no limit"),
                Some("events"),
                "Events appended but not yet committed by the pipeline, at most (at least 1); over it, 503.",
            ),
            setting(
                "rate_limit",
                Kind::Number,
                DefaultValue::Absent("no limit"),
                Some("events/s"),
                "Per-client token bucket rate (more than 0); 429 when it is empty.",
            ),
            setting(
                "rate_limit_burst",
                Kind::Count,
                DefaultValue::Absent("one second of `rate_limit`"),
                Some("events"),
                "Per-client bucket size (at least 1); needs `rate_limit`.",
            ),
            setting(
                "client_header",
                Kind::String,
                DefaultValue::Absent("the peer's IP address names the client"),
                None,
                "Request header naming the client, for rate limits and idempotency keys.",
            ),
            setting(
                "retry_after",
                Kind::Duration,
                duration(d.retry_after),
                None,
                "`Retry-After` sent with 503, in whole seconds rounded up (at least 1). A 429 does not use it: it says when the client's bucket has a token again.",
            ),
        ],
    }
}

fn kafka_source() -> Section {
    let d = KafkaSourceConfig::new("", &[]);
    Section {
        place: Place::Source("kafka"),
        about: "A Kafka (or Redpanda) topic read in a consumer group, in place of the embedded log: the pipeline's only source. Offsets are committed to the group only once every effect of the events before them is in the sinks. Not with session windows.",
        options: vec![
            type_setting("kafka", "A Kafka source."),
            setting(
                "brokers",
                Kind::String,
                required("\"127.0.0.1:9092\""),
                None,
                "Bootstrap brokers, `host:port[,host:port...]` (`bootstrap.servers`).",
            ),
            setting(
                "topics",
                Kind::Strings { non_empty: true },
                required("[\"events\"]"),
                None,
                "The topics to read (at least one).",
            ),
            setting(
                "group",
                Kind::String,
                DefaultValue::Absent("the pipeline's `name`"),
                None,
                "The consumer group (`group.id`); instances with the same group share the partitions.",
            ),
            setting(
                "start",
                choice(KAFKA_STARTS),
                value(name_of(KAFKA_STARTS, &d.start)),
                None,
                "Where to start in a partition with no committed offset: the oldest message, or only new ones (`auto.offset.reset`).",
            ),
            setting(
                "bounded",
                Kind::Boolean,
                value(d.bounded),
                None,
                "Stop once every partition this instance holds is read to its end, closing every window (backfills, benchmarks; one instance, one topic).",
            ),
            setting(
                "max_poll_interval",
                Kind::Duration,
                duration(d.max_poll_interval),
                None,
                "A member that does not poll for this long leaves the group (`max.poll.interval.ms`); Lungfish polls at least every 100 ms even while sinks stall.",
            ),
            setting(
                "session_timeout",
                Kind::Duration,
                duration(d.session_timeout),
                None,
                "A member whose heartbeats stop for this long is declared dead and its partitions move (`session.timeout.ms`).",
            ),
            setting(
                "options",
                Kind::ClientOptions,
                DefaultValue::Absent("none"),
                None,
                "Further librdkafka settings, e.g. `\"security.protocol\" = \"SASL_SSL\"`; set last, so they override Lungfish's own.",
            ),
        ],
    }
}

fn filter() -> Section {
    Section {
        place: Place::Operator("filter"),
        about: "Keeps the events whose number satisfies a comparison.",
        options: vec![
            type_setting("filter", "A filter operator."),
            setting(
                "condition",
                Kind::String,
                required("\"value < 1000\""),
                None,
                "`FIELD OP NUMBER`, OP one of `<` `<=` `>` `>=` `==` `!=`; the field is read as a number.",
            ),
            setting(
                "otherwise",
                choice(OTHERWISE),
                value(name_of(OTHERWISE, &Otherwise::default())),
                None,
                "What happens to an event that fails the condition: dropped (counted), or sent to the dead-letter queue with the condition as reason.",
            ),
        ],
    }
}

fn enrich() -> Section {
    let d = EnrichConfig::new("http://127.0.0.1/", &[]);
    Section {
        place: Place::Operator("enrich"),
        about: "Adds numbers fetched by event key from an HTTP service, through a cache, an adaptive concurrency limit, a circuit breaker and a retry budget. Fields the service does not give are missing (NaN; NULL in SQL sinks).",
        options: vec![
            type_setting("enrich", "An enrichment operator."),
            setting(
                "url",
                Kind::String,
                required("\"http://127.0.0.1:8080/lookup\""),
                None,
                "The service, an `http://` URL (no https yet).",
            ),
            setting(
                "method",
                choice(ENRICH_METHODS),
                value(name_of(ENRICH_METHODS, &d.method)),
                None,
                "\"get\": `GET URL?key=KEY`, one call per key, answering `{\"FIELD\": number}` (404: nothing); \"post\": `POST URL` with `{\"keys\": [...]}`, up to `batch_keys` keys a call, answering `{\"KEY\": {\"FIELD\": number}}`.",
            ),
            setting(
                "fields",
                Kind::Strings { non_empty: true },
                required("[\"weight\"]"),
                None,
                "Numeric fields taken from the answer and added to the event (at least one), usable in aggregates; not the pipeline's key, time or id.",
            ),
            setting(
                "flag",
                Kind::String,
                DefaultValue::Absent("no flag"),
                None,
                "A field set to 1 on events enriched and 0 on those passed without.",
            ),
            setting(
                "batch_keys",
                Kind::Count,
                value(d.batch_keys as u64),
                Some("keys"),
                "Keys per POST call (at least 1).",
            ),
            setting(
                "timeout",
                Kind::Duration,
                duration(d.timeout),
                None,
                "Per call, from connecting to the last byte.",
            ),
            setting(
                "cache_size",
                Kind::Count,
                value(d.cache_size),
                Some("answers"),
                "Answers cached at most (at least 1); cached keys keep flowing while the service is down.",
            ),
            setting(
                "cache_ttl",
                Kind::Duration,
                duration(d.cache_ttl),
                None,
                "How long an answer is cached.",
            ),
            setting(
                "max_concurrency",
                Kind::Count,
                value(d.max_concurrency as u64),
                Some("calls"),
                "Calls in flight at most, 1 to 1024; the adaptive limit moves between 1 and this.",
            ),
            setting(
                "slow_call",
                Kind::Duration,
                duration(d.slow_call),
                None,
                "A call slower than this counts as slow for the circuit breaker (which opens on 80% slow calls or 50% failures).",
            ),
            setting(
                "on_unavailable",
                choice(ON_UNAVAILABLE),
                value(name_of(ON_UNAVAILABLE, &d.on_unavailable)),
                None,
                "When the service cannot answer (timeout, error, breaker open): \"pass\" the event on with the fields missing and the flag 0, or retry it within the budget and then send it to the dead-letter queue (\"dead_letter\").",
            ),
        ],
    }
}

/// `batch_max_rows` and `batch_max_age` of a sink whose defaults are `rows` and `age`.
fn sink_batch(rows: usize, age: Duration) -> [Setting; 2] {
    [
        setting(
            "batch_max_rows",
            Kind::Count,
            value(rows as u64),
            Some("rows"),
            "A write batch is cut at this many rows (at least 1) ...",
        ),
        setting(
            "batch_max_age",
            Kind::Duration,
            duration(age),
            None,
            "... or when its first row is this old (more than 0).",
        ),
    ]
}

fn write_behind() -> Setting {
    setting(
        "write_behind",
        Kind::Size,
        DefaultValue::Absent("off: rows are written directly"),
        None,
        "Write-behind: rows wait in a durable spool of at most this many bytes (`DATA_DIR/spool/NAME`) and a thread of its own writes them to the store, so a stalled store slows only this sink.",
    )
}

fn sqlite() -> Section {
    let d = SqliteSinkConfig::new("");
    let mut options = vec![
        type_setting("sqlite", "An SQLite sink."),
        setting(
            "path",
            Kind::String,
            required("\"results.db\""),
            None,
            "The database file, created if missing.",
        ),
        setting(
            "table",
            Kind::String,
            value(d.table),
            None,
            "The table rows are upserted into, keyed by `(window_start, key)`, created if missing: an SQL identifier.",
        ),
    ];
    options.extend(sink_batch(d.batch_max_rows, d.batch_max_age));
    options.extend([
        setting(
            "synchronous",
            choice(SQLITE_SYNC),
            value(name_of(SQLITE_SYNC, &d.synchronous)),
            None,
            "SQLite's `synchronous` pragma (the database is in WAL mode): \"full\" is durable at every commit; \"normal\" is faster, and a power loss may undo the latest commits.",
        ),
        setting(
            "write_timeout",
            Kind::Duration,
            duration(d.write_timeout),
            None,
            "Longest time one batch write may take, waiting for a lock included (more than 0); past it the write is interrupted, rolled back and retried.",
        ),
        write_behind(),
    ]);
    Section {
        place: Place::Sink("sqlite"),
        about: "Upserts window rows into an SQLite table, one transaction per batch; a replay after a crash writes the same rows again, changing nothing.",
        options,
    }
}

fn file_sink() -> Section {
    let d = FileSinkConfig::new("");
    let mut options = vec![
        type_setting("file", "A file sink."),
        setting(
            "path",
            Kind::String,
            required("\"windows.jsonl\""),
            None,
            "The output file, appended to.",
        ),
    ];
    options.extend(sink_batch(d.batch_max_rows, d.batch_max_age));
    Section {
        place: Place::Sink("file"),
        about: "Appends window rows as JSON lines, each batch made durable before it counts as written. It cannot upsert: after a crash rows may repeat (each complete; the last wins).",
        options,
    }
}

fn stdout() -> Section {
    Section {
        place: Place::Sink("stdout"),
        about: "Prints window rows as JSON lines on standard output, for trying things out. Nothing is durable; rows may repeat after a crash.",
        options: vec![type_setting("stdout", "A standard-output sink.")],
    }
}

fn database(kind: &'static str) -> Section {
    let d = DatabaseSinkConfig::new("");
    let postgres = kind == "postgres";
    let mut options = vec![
        type_setting(
            kind,
            if postgres {
                "A Postgres sink."
            } else {
                "A ClickHouse sink."
            },
        ),
        setting(
            "url",
            Kind::String,
            DefaultValue::Absent("read from `url_env`; one of the two must be set"),
            None,
            if postgres {
                "Where the server is: `postgres://user:password@host:port/database` (`sslmode=require` asks for TLS)."
            } else {
                "ClickHouse's HTTP interface, `http://[user:password@]host:8123[?database=...]`; https is not supported."
            },
        ),
        setting(
            "url_env",
            Kind::String,
            DefaultValue::Absent("none"),
            None,
            "An environment variable holding the URL, to keep passwords out of files; `url` wins when both are set.",
        ),
        setting(
            "table",
            Kind::String,
            value(d.table),
            None,
            if postgres {
                "The target table, keyed by `(window_start, key)`: an SQL identifier (`schema.table` allowed)."
            } else {
                "The target `ReplacingMergeTree(_version)` table, ordered by `(window_start, key)`: an SQL identifier (`database.table` allowed). Read it with `FINAL`."
            },
        ),
        setting(
            "columns",
            Kind::StringTable,
            DefaultValue::Absent("no renames"),
            None,
            "Output column -> table column renames (`key`, `window_start`, `window_end` and the aggregates' columns), e.g. `{ key = \"user_id\" }`.",
        ),
        setting(
            "create_table",
            Kind::Boolean,
            value(d.create_table),
            None,
            "Create the table if it is missing; otherwise it must exist with every column written.",
        ),
    ];
    options.extend(sink_batch(d.batch_max_rows, d.batch_max_age));
    options.extend([
        setting(
            "pool_size",
            Kind::Count,
            value(d.pool_size as u64),
            Some("connections"),
            if postgres {
                "Connections (at least 1): a large batch is loaded over up to this many in parallel, how many adapting to the server."
            } else {
                "Idle connections kept alive (at least 1); ClickHouse writes go one request at a time."
            },
        ),
        setting(
            "statement_timeout",
            Kind::Duration,
            duration(d.statement_timeout),
            None,
            "Longest time one batch write may take (more than 0); past it the write is cancelled and retried like any transient failure.",
        ),
        setting(
            "tls",
            Kind::Boolean,
            value(d.tls),
            None,
            if postgres {
                "Encrypt the connection, as libpq's `sslmode=require` (the certificate is not verified against a CA)."
            } else {
                "Not supported by the ClickHouse sink: `true` makes the sink fail when it opens."
            },
        ),
        write_behind(),
    ]);
    Section {
        place: Place::Sink(kind),
        about: if postgres {
            "Upserts window rows into a Postgres table, one transaction per batch (binary COPY into a staging table, then INSERT ... ON CONFLICT), with the log positions it covers in `lungfish_sink_positions`."
        } else {
            "Inserts window rows into a ClickHouse `ReplacingMergeTree` over the HTTP interface, one INSERT per batch; every write carries a higher `_version`, so a replay replaces rows instead of adding them."
        },
        options,
    }
}

fn kafka_sink() -> Section {
    let d = KafkaSinkConfig::new("", "");
    let mut options = vec![
        type_setting("kafka", "A Kafka sink."),
        setting(
            "brokers",
            Kind::String,
            required("\"127.0.0.1:9092\""),
            None,
            "Bootstrap brokers, `host:port[,host:port...]` (`bootstrap.servers`).",
        ),
        setting(
            "topic",
            Kind::String,
            required("\"windows\""),
            None,
            "The topic rows are produced to.",
        ),
        setting(
            "compression",
            Kind::Choice(KafkaSinkConfig::COMPRESSIONS.to_vec()),
            value(d.compression),
            None,
            "Compression of produced batches (`compression.type`).",
        ),
        setting(
            "linger",
            Kind::Duration,
            duration(d.linger),
            None,
            "How long the producer waits to fill a request (`linger.ms`).",
        ),
    ];
    options.extend(sink_batch(d.batch_max_rows, d.batch_max_age));
    options.extend([
        setting(
            "write_timeout",
            Kind::Duration,
            duration(d.write_timeout),
            None,
            "Longest time one batch may take to be delivered (more than 0, `message.timeout.ms`); past it the batch fails as transient and is retried.",
        ),
        setting(
            "options",
            Kind::ClientOptions,
            DefaultValue::Absent("none"),
            None,
            "Further librdkafka settings, passed through as they are; set last, so they override the sink's own.",
        ),
    ]);
    Section {
        place: Place::Sink("kafka"),
        about: "Produces window rows as JSON messages keyed by the row's key, with an idempotent producer; a batch counts as written once every message has its delivery report. After a failed batch or a crash, rows may be produced again (same key, same content).",
        options,
    }
}

fn windows() -> Vec<Section> {
    let whole_ms = "Window length: whole milliseconds, more than 0.";
    vec![
        Section {
            place: Place::Window("tumbling"),
            about: "Back-to-back windows of `size`; each event is in exactly one.",
            options: vec![
                type_setting("tumbling", "Tumbling windows."),
                setting("size", Kind::Duration, required("\"1s\""), None, whole_ms),
            ],
        },
        Section {
            place: Place::Window("sliding"),
            about: "Windows of `size` starting every `slide`; each event is in `size / slide` windows.",
            options: vec![
                type_setting("sliding", "Sliding windows."),
                setting(
                    "size",
                    Kind::Duration,
                    required("\"10s\""),
                    None,
                    "Window length: whole milliseconds, more than 0, a multiple of `slide`.",
                ),
                setting(
                    "slide",
                    Kind::Duration,
                    required("\"1s\""),
                    None,
                    "Distance between window starts: whole milliseconds, more than 0, at most `size`.",
                ),
            ],
        },
        Section {
            place: Place::Window("session"),
            about: "Per key, a window that grows while events keep arriving less than `gap` apart in event time, and closes `gap` after its last event: a row covers `[first event time, last event time + gap)`. Needs state checkpoints; not with a Kafka source.",
            options: vec![
                type_setting("session", "Session windows."),
                setting(
                    "gap",
                    Kind::Duration,
                    required("\"30s\""),
                    None,
                    "Inactivity that closes a session: whole milliseconds, more than 0.",
                ),
            ],
        },
    ]
}
