//! Builds a pipeline in Rust: typed settings, plus operators and sinks of your own.
//!
//! A pipeline file and a [`PipelineBuilder`] produce the same [`PipelineConfig`] and run
//! on the same engine: [`PipelineConfig::load`] is a thin layer that reads TOML into
//! that struct, and [`PipelineBuilder::build`] checks it with the same validation (the
//! same messages, naming the same fields). What only code can add are operators and
//! sinks written in Rust ([`Operator`], [`Sink`]).
//!
//! ```no_run
//! use std::sync::Arc;
//! use std::time::Duration;
//! use lungfish::config::{FileSourceConfig, SqliteSinkConfig, WindowSpec};
//! use lungfish::{Control, Pipeline};
//!
//! # fn main() -> Result<(), lungfish::Error> {
//! let summary = Pipeline::builder("clicks")
//!     .data_dir("lungfish-data")
//!     .source("events", FileSourceConfig::new(["events.jsonl"]))
//!     .key("user")
//!     .time("ts")
//!     .window(WindowSpec::Tumbling { size: Duration::from_secs(60) })
//!     .aggregates(["count", "sum(value)", "p99(latency_ms)"])
//!     .sink("db", SqliteSinkConfig::new("results.db"))
//!     .build()?
//!     .run(Arc::new(Control::new()))?;
//! println!("{} events in, {} windows out", summary.events_in, summary.windows);
//! # Ok(())
//! # }
//! ```

use std::path::PathBuf;
use std::time::Duration;

use crate::config::{
    AggregateSpec, ConfigError, ConfigErrors, DatabaseSinkConfig, FileSinkConfig, FileSourceConfig,
    GeneratorConfig, HttpSourceConfig, KafkaSinkConfig, KafkaSourceConfig, LogSettings,
    MetricsConfig, NamedOperator, NamedSink, NamedSource, OperatorConfig, PipelineConfig,
    ProcessingConfig, SinkConfig, SourceConfig, SqliteSinkConfig, WindowSpec,
};
use crate::error::Error;
use crate::operator::Operator;
use crate::pipeline::{OperatorFactory, Pipeline};
use crate::sinks::{DriverSettings, Sink};

/// A typed builder of a [`Pipeline`]; start with [`Pipeline::builder`].
///
/// It starts from the defaults of a pipeline file (tumbling 1 s windows counting
/// events by `user` at time `ts`). Setters only record; [`build`](Self::build)
/// validates everything at once and reports every problem, like a pipeline file does.
pub struct PipelineBuilder {
    config: PipelineConfig,
    operators: Vec<OperatorFactory>,
    sinks: Vec<(String, Box<dyn Sink>, DriverSettings)>,
    /// Problems found while recording (an aggregate that does not parse).
    errors: Vec<ConfigError>,
    /// Whether aggregates were given (the first replaces the default `count`).
    aggregates_given: bool,
}

impl std::fmt::Debug for PipelineBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PipelineBuilder")
            .field("config", &self.config)
            .field("custom_operators", &self.operators.len())
            .field(
                "custom_sinks",
                &self.sinks.iter().map(|s| &s.0).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Pipeline {
    /// A builder for a pipeline named `name` (its consumer name for offsets), with the
    /// defaults of a pipeline file: data in `lungfish-data`, default log and processing
    /// settings, no metrics endpoint. Add at least one source and one sink.
    pub fn builder(name: impl Into<String>) -> PipelineBuilder {
        PipelineBuilder::from_config(PipelineConfig {
            name: name.into(),
            ..PipelineConfig::default()
        })
    }
}

impl PipelineBuilder {
    /// A builder starting from `config` (e.g. one loaded from a file, to add Rust
    /// operators or sinks to it).
    pub fn from_config(config: PipelineConfig) -> Self {
        PipelineBuilder {
            config,
            operators: Vec::new(),
            sinks: Vec::new(),
            errors: Vec::new(),
            aggregates_given: false,
        }
    }

    /// Where the log, offsets, state and dead letters live.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config.data_dir = dir.into();
        self
    }

    /// Adds a source (`[sources.NAME]`): a [`GeneratorConfig`], [`FileSourceConfig`],
    /// [`HttpSourceConfig`] or [`KafkaSourceConfig`].
    pub fn source(mut self, name: impl Into<String>, source: impl Into<SourceConfig>) -> Self {
        self.config.sources.push(NamedSource {
            name: name.into(),
            config: source.into(),
        });
        self
    }

    /// The field holding the key (a string).
    pub fn key(mut self, field: impl Into<String>) -> Self {
        self.config.pipeline.key = field.into();
        self
    }

    /// The field holding the event time (integer epoch milliseconds).
    pub fn time(mut self, field: impl Into<String>) -> Self {
        self.config.pipeline.time = field.into();
        self
    }

    /// The windows events are aggregated in.
    pub fn window(mut self, window: WindowSpec) -> Self {
        self.config.pipeline.window = window;
        self
    }

    /// How far behind the latest event time an event may arrive and still count (the
    /// watermark's bound).
    pub fn out_of_orderness(mut self, bound: Duration) -> Self {
        self.config.pipeline.out_of_orderness = bound;
        self
    }

    /// How long a fired window still accepts late events, re-emitting its corrected
    /// row.
    pub fn allowed_lateness(mut self, lateness: Duration) -> Self {
        self.config.pipeline.allowed_lateness = lateness;
        self
    }

    /// Adds one aggregate column. The first aggregate given replaces the default
    /// (`count`), as `aggregates = [...]` does in a file.
    pub fn aggregate(mut self, aggregate: AggregateSpec) -> Self {
        self.given_aggregates().push(aggregate);
        self
    }

    fn given_aggregates(&mut self) -> &mut Vec<AggregateSpec> {
        if !self.aggregates_given {
            self.aggregates_given = true;
            self.config.pipeline.aggregates.clear();
        }
        &mut self.config.pipeline.aggregates
    }

    /// Adds aggregates written as in a pipeline file (`"count"`, `"sum(value) as
    /// total"`, `"p99(latency)"`); one that does not parse is reported by
    /// [`build`](Self::build). The first aggregates given replace the default
    /// (`count`).
    pub fn aggregates<I, S>(mut self, aggregates: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        for text in aggregates {
            match text.as_ref().parse::<AggregateSpec>() {
                Ok(spec) => self.given_aggregates().push(spec),
                Err(e) => self.errors.push(ConfigError {
                    file: PathBuf::new(),
                    line: 0,
                    column: 0,
                    field: "pipeline.aggregates".to_owned(),
                    message: e.to_string(),
                }),
            }
        }
        self
    }

    /// Changes any other processing setting (shards, micro-batch bounds, memory
    /// limit, dedup, checkpoints...).
    pub fn processing(mut self, change: impl FnOnce(&mut ProcessingConfig)) -> Self {
        change(&mut self.config.pipeline);
        self
    }

    /// Changes the embedded log's settings (fsync policy, retention, segment size...).
    pub fn log(mut self, change: impl FnOnce(&mut LogSettings)) -> Self {
        change(&mut self.config.log);
        self
    }

    /// Serves Prometheus metrics at `config.address`.
    pub fn metrics(mut self, config: MetricsConfig) -> Self {
        self.config.metrics = Some(config);
        self
    }

    /// Adds a built-in operator (`[operators.NAME]`), run in the order added, before
    /// any [`custom_operator`](Self::custom_operator).
    pub fn operator(mut self, name: impl Into<String>, operator: OperatorConfig) -> Self {
        self.config.operators.push(NamedOperator {
            name: name.into(),
            config: operator,
        });
        self
    }

    /// Adds an operator written in Rust, after the built-in ones. `factory` makes one
    /// instance per log partition (each runs on its partition's consumer thread, so it
    /// needs no lock); it sees the numbers of [`PipelineConfig::number_fields`].
    pub fn custom_operator(
        mut self,
        factory: impl Fn(u32) -> Box<dyn Operator> + Send + Sync + 'static,
    ) -> Self {
        self.operators.push(std::sync::Arc::new(factory));
        self
    }

    /// Adds a built-in sink (`[sinks.NAME]`): a [`SqliteSinkConfig`],
    /// [`FileSinkConfig`], [`KafkaSinkConfig`], or a [`SinkConfig`] (Postgres,
    /// ClickHouse, stdout).
    pub fn sink(mut self, name: impl Into<String>, sink: impl Into<SinkConfig>) -> Self {
        self.config.sinks.push(NamedSink {
            name: name.into(),
            config: sink.into(),
        });
        self
    }

    /// Adds a sink written in Rust. Its writes are batched, retried, time-limited and
    /// circuit-broken by the same driver as the built-in sinks, under `settings`.
    pub fn custom_sink(
        mut self,
        name: impl Into<String>,
        sink: impl Sink + 'static,
        settings: DriverSettings,
    ) -> Self {
        self.sinks.push((name.into(), Box::new(sink), settings));
        self
    }

    /// The configuration recorded so far.
    pub fn config(&self) -> &PipelineConfig {
        &self.config
    }

    /// Checks everything and returns the pipeline, ready to [`run`](Pipeline::run).
    ///
    /// # Errors
    /// [`Error::Config`] listing every problem: an aggregate that does not parse, and
    /// all that [`PipelineConfig::validate`] finds (a pipeline with a custom sink needs
    /// no other sink).
    pub fn build(self) -> Result<Pipeline, Error> {
        let mut errors = self.errors;
        if let Err(ConfigErrors(found)) = self.config.validate_with_custom_sinks(self.sinks.len()) {
            errors.extend(found);
        }
        if !errors.is_empty() {
            return Err(ConfigErrors(errors).into());
        }
        Ok(Pipeline::from_parts(
            self.config,
            self.operators,
            self.sinks,
        ))
    }
}

impl From<GeneratorConfig> for SourceConfig {
    fn from(config: GeneratorConfig) -> Self {
        SourceConfig::Generator(config)
    }
}

impl From<FileSourceConfig> for SourceConfig {
    fn from(config: FileSourceConfig) -> Self {
        SourceConfig::File(config)
    }
}

impl From<HttpSourceConfig> for SourceConfig {
    fn from(config: HttpSourceConfig) -> Self {
        SourceConfig::Http(config)
    }
}

impl From<KafkaSourceConfig> for SourceConfig {
    fn from(config: KafkaSourceConfig) -> Self {
        SourceConfig::Kafka(config)
    }
}

impl From<SqliteSinkConfig> for SinkConfig {
    fn from(config: SqliteSinkConfig) -> Self {
        SinkConfig::Sqlite(config)
    }
}

impl From<FileSinkConfig> for SinkConfig {
    fn from(config: FileSinkConfig) -> Self {
        SinkConfig::File(config)
    }
}

impl From<KafkaSinkConfig> for SinkConfig {
    fn from(config: KafkaSinkConfig) -> Self {
        SinkConfig::Kafka(config)
    }
}

/// A Postgres sink: `SinkConfig::from(DatabaseSinkConfig::new(url))` is
/// `type = "postgres"` (ClickHouse: [`SinkConfig::ClickHouse`]).
impl From<DatabaseSinkConfig> for SinkConfig {
    fn from(config: DatabaseSinkConfig) -> Self {
        SinkConfig::Postgres(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AggFunc;

    #[test]
    fn a_built_pipeline_is_the_config_its_file_gives() {
        let text = r#"
name = "clicks"
data_dir = "data"

[sources.events]
type = "file"
paths = ["events.jsonl"]

[pipeline]
key = "user"
time = "ts"
out_of_orderness = "500ms"
window = { type = "tumbling", size = "1m" }
aggregates = ["count", "sum(value) as total", "p99(latency)"]

[sinks.db]
type = "sqlite"
path = "results.db"
"#;
        let dir = tempfile::tempdir().unwrap();
        let from_file = PipelineConfig::parse(text, &dir.path().join("clicks.toml")).unwrap();
        let built = Pipeline::builder("clicks")
            .data_dir("data")
            .source("events", FileSourceConfig::new(["events.jsonl"]))
            .key("user")
            .time("ts")
            .out_of_orderness(Duration::from_millis(500))
            .window(WindowSpec::Tumbling {
                size: Duration::from_secs(60),
            })
            .aggregates(["count", "sum(value) as total"])
            .aggregate(AggregateSpec::new(
                AggFunc::Quantile { ppm: 990_000 },
                Some("latency"),
            ))
            .sink("db", SqliteSinkConfig::new("results.db"))
            .build()
            .unwrap();
        assert_eq!(built.config(), &from_file);
    }

    #[test]
    fn build_reports_every_problem_with_its_field() {
        let err = Pipeline::builder("bad")
            .aggregates(["count", "median(value"])
            .build()
            .unwrap_err()
            .to_string();
        for field in ["pipeline.aggregates", "sources", "sinks"] {
            assert!(err.contains(field), "{field} missing in: {err}");
        }
    }
}
