//! Checks on typed configurations: ranges and how fields fit together.

use std::collections::HashMap;
use std::time::Duration;

use super::aggregate::{is_field_name, is_identifier};
use super::error::{index, join};
use super::units::{format_duration, format_size};
use super::{
    AggFunc, AggregateSpec, FsyncPolicy, GeneratorConfig, HttpSourceConfig, KafkaSinkConfig,
    LogSettings, MemoryPlan, OperatorConfig, PipelineConfig, ProcessingConfig, Rate, SinkConfig,
    SourceConfig, WindowSpec,
};

/// One problem. `fields[0]` is the field the problem is reported at; the others are the
/// fields it also depends on (a loader points at the first one the file sets).
#[derive(Debug)]
pub(crate) struct Issue {
    pub fields: Vec<String>,
    pub message: String,
}

/// Column names every window row has.
const RESERVED_COLUMNS: [&str; 3] = ["window_start", "window_end", "key"];

#[derive(Default)]
struct Issues(Vec<Issue>);

impl Issues {
    fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.related(vec![field.into()], message);
    }

    fn related(&mut self, fields: Vec<String>, message: impl Into<String>) {
        self.0.push(Issue {
            fields,
            message: message.into(),
        });
    }

    fn non_empty(&mut self, field: String, value: &str) {
        if value.is_empty() {
            self.add(field, "must not be empty");
        }
    }

    fn positive(&mut self, field: String, value: Duration) {
        if value.is_zero() {
            self.add(field, "must be greater than 0");
        }
    }

    fn at_least_one<T: PartialOrd + From<u8>>(&mut self, field: String, value: T) {
        if value < T::from(1) {
            self.add(field, "must be at least 1");
        }
    }
}

/// Protobuf sources need a `[protobuf]` schema, and the schema must have the pipeline's
/// fields with usable types (it is compiled here, as at startup).
fn check_protobuf(out: &mut Issues, config: &PipelineConfig) {
    let mut users = Vec::new();
    for source in &config.sources {
        let path = join("sources", &source.name);
        match &source.config {
            SourceConfig::File(f) if f.format == crate::codec::InputFormat::Protobuf => {
                users.push(join(&path, "format"));
            }
            SourceConfig::Http(h) if h.formats.contains(&super::BodyFormat::Protobuf) => {
                users.push(join(&path, "formats"));
            }
            _ => {}
        }
    }
    let Some(schema) = &config.protobuf else {
        for field in users {
            out.add(
                field,
                "Protobuf input needs a [protobuf] table naming the schema: file = \"events.proto\" and message = \"acme.Event\"",
            );
        }
        return;
    };
    #[cfg(not(feature = "protobuf"))]
    {
        let _ = schema;
        out.add(
            "protobuf",
            "this build of lungfish has no Protobuf support (cargo feature `protobuf`)",
        );
    }
    #[cfg(feature = "protobuf")]
    {
        use crate::codec::protobuf::SchemaError;
        match config.protobuf_extractor() {
            Ok(_) => {}
            Err(e @ SchemaError::Compile { .. }) => out.add("protobuf.file", e.to_string()),
            Err(e @ SchemaError::NoMessage { .. }) => out.add("protobuf.message", e.to_string()),
            Err(SchemaError::Field {
                field, ref problem, ..
            }) => {
                let p = &config.pipeline;
                let mut at: Vec<String> = [("key", &p.key), ("time", &p.time), ("id", &p.id)]
                    .into_iter()
                    .filter(|(_, name)| **name == field)
                    .map(|(k, _)| format!("pipeline.{k}"))
                    .collect();
                at.push("protobuf.message".to_owned());
                out.related(
                    at,
                    format!(
                        "{}: message `{}`: {problem}",
                        schema.file.display(),
                        schema.message
                    ),
                );
            }
        }
    }
}

/// Every problem in `config`, in the order of the file format.
pub(crate) fn check(config: &PipelineConfig) -> Vec<Issue> {
    let mut out = Issues::default();
    out.non_empty("name".to_owned(), &config.name);
    out.non_empty("data_dir".to_owned(), &config.data_dir.to_string_lossy());

    if config.sources.is_empty() {
        out.add(
            "sources",
            "at least one source is required, e.g. [sources.gen] with type = \"generator\"",
        );
    }
    for source in &config.sources {
        let path = join("sources", &source.name);
        match &source.config {
            SourceConfig::Generator(generator) => check_generator(&mut out, &path, generator),
            SourceConfig::File(file) => {
                let paths = join(&path, "paths");
                if file.paths.is_empty() {
                    out.add(paths.clone(), "must list at least one path or glob pattern");
                }
                for (i, p) in file.paths.iter().enumerate() {
                    out.non_empty(index(&paths, i), p);
                }
            }
            SourceConfig::Http(http) => check_http(&mut out, &path, http),
            SourceConfig::Kafka(kafka) => {
                out.non_empty(join(&path, "brokers"), &kafka.brokers);
                let topics = join(&path, "topics");
                if kafka.topics.is_empty() {
                    out.add(topics.clone(), "must list at least one topic");
                }
                for (i, t) in kafka.topics.iter().enumerate() {
                    out.non_empty(index(&topics, i), t);
                }
                if let Some(group) = &kafka.group {
                    out.non_empty(join(&path, "group"), group);
                }
                out.positive(join(&path, "session_timeout"), kafka.session_timeout);
                out.positive(join(&path, "max_poll_interval"), kafka.max_poll_interval);
                if kafka.bounded && kafka.topics.len() > 1 {
                    out.add(
                        join(&path, "bounded"),
                        "a bounded kafka source reads one topic: list one in `topics`",
                    );
                }
                if config.sources.len() > 1 {
                    out.add(
                        join(&path, "type"),
                        "a kafka source must be the pipeline's only source: its topic takes the place of the embedded log (to bring other inputs in, produce them to the topic, or run them in another pipeline with a kafka sink)",
                    );
                }
                if matches!(config.pipeline.window, WindowSpec::Session { .. }) {
                    out.related(
                        vec![join(&path, "type"), "pipeline.window.type".to_owned()],
                        "session windows are not available with a kafka source yet: a new owner of a partition rebuilds windows by replaying from the oldest open one, which a session cannot name; use tumbling or sliding windows",
                    );
                }
            }
        }
    }

    let mut listeners: Vec<(std::net::SocketAddr, String)> = config
        .metrics
        .iter()
        .map(|m| (m.address, "metrics.address".to_owned()))
        .collect();
    for source in &config.sources {
        if let SourceConfig::Http(http) = &source.config {
            let field = join(&join("sources", &source.name), "address");
            if let Some((_, other)) = listeners.iter().find(|(a, _)| {
                a.port() == http.address.port()
                    && a.port() != 0
                    && (a.ip() == http.address.ip()
                        || a.ip().is_unspecified()
                        || http.address.ip().is_unspecified())
            }) {
                out.related(
                    vec![field.clone(), other.clone()],
                    format!("{} is also used by {other}", http.address),
                );
            }
            listeners.push((http.address, field));
        }
    }

    check_protobuf(&mut out, config);
    check_log(&mut out, &config.log);
    check_processing(&mut out, &config.pipeline, &config.log);
    check_memory(&mut out, config);
    check_operators(&mut out, config);

    if config.sinks.is_empty() {
        out.add(
            "sinks",
            "at least one sink is required, e.g. [sinks.out] with type = \"stdout\"",
        );
    }
    for sink in &config.sinks {
        let path = join("sinks", &sink.name);
        let (file, rows, age) = match &sink.config {
            SinkConfig::Sqlite(sqlite) => {
                if !is_identifier(&sqlite.table) {
                    out.add(
                        join(&path, "table"),
                        format!(
                            "`{}` is not a valid table name: expected a letter or `_` followed by letters, digits or `_`",
                            sqlite.table
                        ),
                    );
                }
                out.positive(join(&path, "write_timeout"), sqlite.write_timeout);
                (&sqlite.path, sqlite.batch_max_rows, sqlite.batch_max_age)
            }
            SinkConfig::File(file) => (&file.path, file.batch_max_rows, file.batch_max_age),
            SinkConfig::Stdout => continue,
            SinkConfig::Kafka(kafka) => {
                out.non_empty(join(&path, "brokers"), &kafka.brokers);
                out.non_empty(join(&path, "topic"), &kafka.topic);
                if !KafkaSinkConfig::COMPRESSIONS.contains(&kafka.compression.as_str()) {
                    out.add(
                        join(&path, "compression"),
                        format!(
                            "unknown compression `{}`: expected none, gzip, snappy, lz4 or zstd",
                            kafka.compression
                        ),
                    );
                }
                out.at_least_one(join(&path, "batch_max_rows"), kafka.batch_max_rows as u64);
                out.positive(join(&path, "batch_max_age"), kafka.batch_max_age);
                out.positive(join(&path, "write_timeout"), kafka.write_timeout);
                continue;
            }
            SinkConfig::Postgres(db) | SinkConfig::ClickHouse(db) => {
                if db.url.is_empty() && db.url_env.is_none() {
                    out.related(
                        vec![join(&path, "url"), join(&path, "url_env")],
                        "set `url` (e.g. \"postgres://postgres@127.0.0.1:5432/postgres\") or `url_env` (an environment variable holding it)",
                    );
                }
                let table_ok =
                    db.table.split('.').count() <= 2 && db.table.split('.').all(is_identifier);
                if !table_ok {
                    out.add(
                        join(&path, "table"),
                        format!("`{}` is not a valid table name", db.table),
                    );
                }
                for (from, to) in &db.columns {
                    if !is_identifier(to) {
                        out.add(
                            join(&join(&path, "columns"), from),
                            format!("`{to}` is not a valid column name"),
                        );
                    }
                }
                out.at_least_one(join(&path, "batch_max_rows"), db.batch_max_rows as u64);
                out.positive(join(&path, "batch_max_age"), db.batch_max_age);
                out.at_least_one(join(&path, "pool_size"), db.pool_size as u64);
                out.positive(join(&path, "statement_timeout"), db.statement_timeout);
                continue;
            }
        };
        out.non_empty(join(&path, "path"), &file.to_string_lossy());
        out.at_least_one(join(&path, "batch_max_rows"), rows as u64);
        out.positive(join(&path, "batch_max_age"), age);
    }
    out.0
}

fn check_http(out: &mut Issues, path: &str, http: &HttpSourceConfig) {
    let field = |name| join(path, name);
    if http.max_body_size < 1024 {
        out.add(field("max_body_size"), "must be at least 1KiB");
    }
    if http.max_event_size == Some(0) {
        out.add(field("max_event_size"), "must be at least 1 byte");
    }
    if http.formats.is_empty() {
        out.add(
            field("formats"),
            "must list at least one of \"json\", \"ndjson\", \"protobuf\"",
        );
    }
    out.at_least_one(field("max_connections"), http.max_connections as u64);
    if http.max_inflight_bytes < http.max_body_size {
        out.related(
            vec![field("max_inflight_bytes"), field("max_body_size")],
            format!(
                "must be at least max_body_size ({}), or no request of the largest size could be taken",
                format_size(http.max_body_size)
            ),
        );
    }
    out.positive(field("header_timeout"), http.header_timeout);
    out.positive(field("body_timeout"), http.body_timeout);
    out.positive(field("ack_timeout"), http.ack_timeout);
    if !http.idempotency_horizon.is_zero() {
        out.at_least_one(
            field("idempotency_max_keys"),
            http.idempotency_max_keys as u64,
        );
    }
    if http.max_lag == Some(0) {
        out.add(
            field("max_lag"),
            "must be at least 1 (leave it out for no limit)",
        );
    }
    if let Some(rate) = http.rate_limit
        && !(rate.is_finite() && rate > 0.0)
    {
        out.add(
            field("rate_limit"),
            "must be a number of events per second greater than 0 (leave it out for no limit)",
        );
    }
    if http.rate_limit_burst == Some(0) {
        out.add(field("rate_limit_burst"), "must be at least 1");
    }
    if http.rate_limit_burst.is_some() && http.rate_limit.is_none() {
        out.related(
            vec![field("rate_limit_burst"), field("rate_limit")],
            "has no effect without rate_limit",
        );
    }
    if let Some(header) = &http.client_header
        && (header.is_empty()
            || !header
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)))
    {
        out.add(
            field("client_header"),
            format!("`{header}` is not a valid HTTP header name"),
        );
    }
    out.positive(field("retry_after"), http.retry_after);
}

fn check_operators(out: &mut Issues, config: &PipelineConfig) {
    let p = &config.pipeline;
    // Fields read from the JSON by earlier operators, and fields added by them.
    let mut read: Vec<(String, String)> = Vec::new();
    let mut provided: Vec<(String, String)> = Vec::new();
    for op in &config.operators {
        let path = join("operators", &op.name);
        match &op.config {
            OperatorConfig::Filter(f) => {
                let field = &f.condition.field;
                if !provided.iter().any(|(name, _)| name == field) {
                    read.push((field.clone(), join(&path, "condition")));
                }
            }
            OperatorConfig::Enrich(e) => {
                if e.fields.is_empty() {
                    out.add(join(&path, "fields"), "must name at least one field");
                }
                let added = e.fields.iter().chain(e.flag.iter());
                for (i, field) in added.enumerate() {
                    let at = if i < e.fields.len() {
                        index(&join(&path, "fields"), i)
                    } else {
                        join(&path, "flag")
                    };
                    if [&p.key, &p.time, &p.id].contains(&field) {
                        out.add(
                            at,
                            format!("`{field}` is the pipeline's key, time or id field"),
                        );
                    } else if let Some((_, other)) = read.iter().find(|(name, _)| name == field) {
                        out.related(
                            vec![at, other.clone()],
                            format!("`{field}` is read by {other} before this operator adds it: put the enrichment first"),
                        );
                    } else if let Some((_, other)) = provided.iter().find(|(name, _)| name == field)
                    {
                        out.related(
                            vec![at, other.clone()],
                            format!("`{field}` is also added by {other}"),
                        );
                    } else {
                        provided.push((field.clone(), at));
                    }
                }
                if e.batch_keys == 0 {
                    out.add(join(&path, "batch_keys"), "must be at least 1");
                }
                if !(1..=1024).contains(&e.max_concurrency) {
                    out.add(join(&path, "max_concurrency"), "must be between 1 and 1024");
                }
                if e.cache_size == 0 {
                    out.add(join(&path, "cache_size"), "must be at least 1 (the cache keeps hot keys flowing when the service is down)");
                }
                out.positive(join(&path, "timeout"), e.timeout);
                out.positive(join(&path, "cache_ttl"), e.cache_ttl);
                out.positive(join(&path, "slow_call"), e.slow_call);
            }
        }
    }
}

fn check_generator(out: &mut Issues, path: &str, generator: &GeneratorConfig) {
    let field = |name| join(path, name);
    if generator.count == Some(0) {
        out.add(
            field("count"),
            "must be at least 1 (leave it out to run forever)",
        );
    }
    if generator.duration == Some(Duration::ZERO) {
        out.add(
            field("duration"),
            "must be greater than 0 (leave it out to run forever)",
        );
    }
    if generator.count.is_some() && generator.duration.is_some() {
        out.related(
            vec![field("duration"), field("count")],
            "set either `count` or `duration`, not both",
        );
    }
    if generator.rate == Rate::PerSecond(0) {
        out.add(field("rate"), "must be greater than 0 (or \"unlimited\")");
    }
    out.at_least_one(field("keys"), generator.keys);
    if !(0.0..=1.0).contains(&generator.hot_share) {
        out.add(field("hot_share"), "must be a number from 0 to 1");
    }
    if !(generator.zipf_exponent.is_finite() && generator.zipf_exponent > 0.0) {
        out.add(field("zipf_exponent"), "must be a number greater than 0");
    }
    if !(0.0..=1.0).contains(&generator.malformed) {
        out.add(field("malformed"), "must be between 0 and 1");
    }
    out.at_least_one(field("events_per_second"), generator.events_per_second);
}

fn check_log(out: &mut Issues, log: &LogSettings) {
    if !(1..=1024).contains(&log.partitions) {
        out.add(
            "log.partitions",
            format!("must be between 1 and 1024, got {}", log.partitions),
        );
    }
    if log.segment_size < 1 << 20 {
        out.add(
            "log.segment_size",
            format!(
                "must be at least 1MiB, got {}",
                format_size(log.segment_size)
            ),
        );
    }
    if let Some(max) = log.max_size
        && log.segment_size >= 1 << 20
        && max < 2 * log.segment_size
    {
        out.related(
            vec!["log.max_size".to_owned(), "log.segment_size".to_owned()],
            format!(
                "{} must be at least two segments ({}): the active segment is never deleted",
                format_size(max),
                format_size(2 * log.segment_size)
            ),
        );
    }
    if log.retention_age.is_some_and(|a| a.is_zero()) {
        out.add("log.retention_age", "must be greater than 0");
    }
    if log.fsync == FsyncPolicy::Every(Duration::ZERO) {
        out.add(
            "log.fsync",
            "the interval must be greater than 0 (use \"always\" to sync every batch)",
        );
    }
    if log.max_batch_size < 64 << 10 {
        out.add(
            "log.max_batch_size",
            format!(
                "must be at least 64KiB, got {}",
                format_size(log.max_batch_size)
            ),
        );
    } else if log.max_batch_size > 1 << 30 {
        out.add(
            "log.max_batch_size",
            format!(
                "must be at most 1GiB, got {}",
                format_size(log.max_batch_size)
            ),
        );
    } else if log.max_batch_size > log.segment_size && log.segment_size >= 1 << 20 {
        out.related(
            vec![
                "log.max_batch_size".to_owned(),
                "log.segment_size".to_owned(),
            ],
            format!(
                "{} must not exceed log.segment_size ({}): a batch must fit in a segment",
                format_size(log.max_batch_size),
                format_size(log.segment_size)
            ),
        );
    }
}

/// The memory limit must leave each HTTP source room for its largest request.
fn check_memory(out: &mut Issues, config: &PipelineConfig) {
    const MIN: u64 = 16 << 20;
    let limit = config.pipeline.memory_limit;
    if limit < MIN {
        out.add(
            "pipeline.memory_limit",
            format!(
                "must be at least {}, got {}",
                format_size(MIN),
                format_size(limit)
            ),
        );
        return;
    }
    let http: Vec<_> = config
        .sources
        .iter()
        .filter_map(|s| match &s.config {
            SourceConfig::Http(h) => Some((&s.name, h)),
            _ => None,
        })
        .collect();
    let plan = MemoryPlan::new(limit, http.len());
    for (name, h) in http {
        if plan.http_per_source < h.max_body_size {
            let body = join(&join("sources", name), "max_body_size");
            out.related(
                vec!["pipeline.memory_limit".to_owned(), body.clone()],
                format!(
                    "memory_limit {} leaves {} for this HTTP source's requests (a quarter, \
                     shared by the HTTP sources), less than {body} ({}): raise \
                     memory_limit or lower max_body_size",
                    format_size(limit),
                    format_size(plan.http_per_source),
                    format_size(h.max_body_size)
                ),
            );
        }
    }
}

fn check_processing(out: &mut Issues, p: &ProcessingConfig, log: &LogSettings) {
    out.non_empty("pipeline.key".to_owned(), &p.key);
    out.non_empty("pipeline.time".to_owned(), &p.time);
    out.non_empty("pipeline.id".to_owned(), &p.id);
    if p.shards > 256 {
        out.add(
            "pipeline.shards",
            format!("must be at most 256 (0 = one per core), got {}", p.shards),
        );
    }
    out.at_least_one(
        "pipeline.batch_max_events".to_owned(),
        p.batch_max_events as u64,
    );
    out.positive("pipeline.batch_max_age".to_owned(), p.batch_max_age);
    if p.max_event_size == 0 {
        out.add("pipeline.max_event_size", "must be greater than 0");
    } else if p.max_event_size >= log.max_batch_size
        && (64 << 10..=1 << 30).contains(&log.max_batch_size)
    {
        out.related(
            vec![
                "pipeline.max_event_size".to_owned(),
                "log.max_batch_size".to_owned(),
            ],
            format!(
                "{} must be smaller than log.max_batch_size ({}): an event must fit in a batch",
                format_size(p.max_event_size),
                format_size(log.max_batch_size)
            ),
        );
    }

    check_window(out, &p.window);
    if !p.allowed_lateness.subsec_nanos().is_multiple_of(1_000_000) {
        out.add(
            "pipeline.allowed_lateness",
            "must be a whole number of milliseconds (event times are in milliseconds)",
        );
    }
    if !p.dedup_horizon.is_zero() && p.dedup_max_ids == 0 {
        out.add("pipeline.dedup_max_ids", "must be greater than 0");
    }
    if matches!(p.window, WindowSpec::Session { .. }) && p.checkpoint_interval.is_zero() {
        out.related(
            vec![
                "pipeline.window.type".to_owned(),
                "pipeline.checkpoint_interval".to_owned(),
            ],
            "session windows need state checkpoints (a restart cannot replay from the oldest open session): set checkpoint_interval above 0",
        );
    }

    if p.aggregates.is_empty() {
        out.add(
            "pipeline.aggregates",
            "must list at least one aggregate, e.g. [\"count\"]",
        );
    }
    // Column names are compared ignoring ASCII case: SQL identifiers are case-insensitive.
    let mut columns: HashMap<String, usize> = HashMap::new();
    for (i, aggregate) in p.aggregates.iter().enumerate() {
        let field = index("pipeline.aggregates", i);
        if let Some(message) = aggregate_problem(aggregate) {
            out.add(field, message);
            continue;
        }
        let lower = aggregate.column.to_ascii_lowercase();
        if RESERVED_COLUMNS.contains(&lower.as_str()) {
            out.add(
                field,
                format!(
                    "column `{}` is reserved (window_start, window_end and key are in every row); rename it with `as NAME`",
                    aggregate.column
                ),
            );
        } else if let Some(&first) = columns.get(&lower) {
            out.related(
                vec![field, index("pipeline.aggregates", first)],
                format!(
                    "column `{}` is already produced by an earlier aggregate (`{}`); rename one with `as NAME`",
                    aggregate.column, p.aggregates[first]
                ),
            );
        } else {
            columns.insert(lower, i);
        }
    }
}

/// What is wrong with an aggregate built in Rust (parsed ones are always well-formed).
fn aggregate_problem(aggregate: &AggregateSpec) -> Option<String> {
    let name = aggregate.func.name();
    match (&aggregate.field, aggregate.func.takes_field()) {
        (Some(_), false) => return Some(format!("`{name}` takes no field")),
        (None, true) => return Some(format!("`{name}` needs a field")),
        (Some(field), true) if !is_field_name(field) => {
            return Some(format!("`{field}` is not a valid field name"));
        }
        _ => {}
    }
    match aggregate.func {
        AggFunc::Quantile { ppm } if ppm > 1_000_000 => {
            return Some(format!(
                "quantile {ppm} ppm is out of range: expected 0..=1000000 parts per million"
            ));
        }
        AggFunc::Ewma { half_life } => {
            if let Some(problem) = super::aggregate::half_life_problem(half_life) {
                return Some(problem);
            }
        }
        _ => {}
    }
    if !is_identifier(&aggregate.column) {
        return Some(format!(
            "`{}` is not a valid column name: expected a letter or `_` followed by letters, digits or `_`",
            aggregate.column
        ));
    }
    None
}

fn check_window(out: &mut Issues, window: &WindowSpec) {
    let whole_ms = |out: &mut Issues, field: &str, d: Duration| {
        if d.is_zero() {
            out.add(field, "must be greater than 0");
            false
        } else if !d.subsec_nanos().is_multiple_of(1_000_000) {
            out.add(
                field,
                format!(
                    "must be a whole number of milliseconds (event times are in milliseconds), got {}",
                    format_duration(d)
                ),
            );
            false
        } else {
            true
        }
    };
    match *window {
        WindowSpec::Tumbling { size } => {
            whole_ms(out, "pipeline.window.size", size);
        }
        WindowSpec::Session { gap } => {
            whole_ms(out, "pipeline.window.gap", gap);
        }
        WindowSpec::Sliding { size, slide } => {
            let size_ok = whole_ms(out, "pipeline.window.size", size);
            let slide_ok = whole_ms(out, "pipeline.window.slide", slide);
            if !(size_ok && slide_ok) {
                return;
            }
            let fields = vec![
                "pipeline.window.slide".to_owned(),
                "pipeline.window.size".to_owned(),
            ];
            if slide > size {
                out.related(
                    fields,
                    format!(
                        "the slide ({}) must not be longer than the window size ({})",
                        format_duration(slide),
                        format_duration(size)
                    ),
                );
            } else if size.as_nanos() % slide.as_nanos() != 0 {
                out.related(
                    fields,
                    format!(
                        "the window size ({}) must be a multiple of the slide ({})",
                        format_duration(size),
                        format_duration(slide)
                    ),
                );
            }
        }
    }
}
