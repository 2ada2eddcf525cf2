//! A pipeline: sources -> log -> consumers -> shards -> sinks, wired and run.
//!
//! [`Pipeline`] is built from a [`PipelineConfig`] (what a TOML file gives, or built in
//! Rust), optionally with extra sinks, and [`Pipeline::run`] runs it on the calling
//! thread until the input is finished and processed, or until
//! [`Control::stop`] is called, then drains, commits and returns a [`Summary`].
//!
//! Threads: one per source, one ingest worker per core, one consumer per log partition,
//! one per shard, one per sink, one committer. Every channel between them is bounded,
//! so a slow sink slows the shards, then the consumers; the backlog waits in the log on
//! disk, not in memory.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::bounded;
use lungfish_log::{Log, LogConfig, LogError, OffsetCommit};

use crate::budget::ByteBudget;
use crate::config::{MemoryPlan, OperatorConfig, PipelineConfig, SinkConfig, SourceConfig};
use crate::consumer::{Committer, Consumer, ConsumerSettings, ReplayState, StateSettings};
use crate::control::Control;
use crate::data_dir::DataDir;
use crate::dlq::DeadLetters;
use crate::error::Error;
use crate::ingest::{IngestPool, Ingestor};
use crate::operator::filter::Filter;
use crate::operator::{ChainSettings, Operator, OperatorChain};
use crate::retry::RetryBudget;
use crate::shard::{Shard, ShardMsg, SinkMsg, StateBytes};
use crate::sinks::file::FileSink;
use crate::sinks::sqlite::SqliteSink;
use crate::sinks::stdout::StdoutSink;
use crate::sinks::write_behind::{WriteBehind, WriteBehindSettings};
use crate::sinks::{DriverSettings, Sink, SinkDriver, SinkError};
use crate::sources::file::{FileSource, pinned_files};
use crate::sources::generator::GeneratorSource;
use crate::sources::{ChunkSource, SourceContext, SourceReport, run_source};
#[allow(unused_imports)] // without the kafka feature
use crate::state::{Restored, StateDir};
use crate::window::{RowSchema, Windowing};

/// How often consumers publish, and the committer commits, offsets.
const COMMIT_INTERVAL: Duration = Duration::from_millis(500);
/// Bytes of input per file-source chunk.
/// (Rejected lines cost memory beyond their bytes, so chunks stay small: at worst a
/// chunk of one-byte lines makes 128 Ki rejects.)
const FILE_CHUNK_BYTES: usize = 256 << 10;
/// Messages buffered per shard and per sink channel.
const CHANNEL_MESSAGES: usize = 16;

/// A sink's part of the summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkSummary {
    /// The sink's name.
    pub name: String,
    /// Where its rows are.
    pub description: String,
    /// Rows it holds now, if it can tell.
    pub stored_rows: Option<u64>,
    /// A command that shows them.
    pub query_hint: Option<String>,
}

/// What a run did, and the state it left.
#[derive(Debug, Clone)]
pub struct Summary {
    /// The pipeline's name.
    pub name: String,
    /// Wall-clock time of the run.
    pub elapsed: Duration,
    /// Events accepted into the log by the sources, this run.
    pub events_in: u64,
    /// Lines the sources rejected, this run.
    pub rejected: u64,
    /// Events read from the log and processed, this run.
    pub processed: u64,
    /// Late events sent to the dead-letter queue, this run.
    pub late: u64,
    /// Window rows emitted, this run (corrections included).
    pub windows: u64,
    /// Rows emitted again because late events changed a fired window, this run.
    pub corrections: u64,
    /// Events dropped as duplicates by id, this run.
    pub duplicates: u64,
    /// Per partition, its heaviest keys and their share of its events, at the last
    /// review (see [`crate::hot_keys`]).
    pub hot_keys: BTreeMap<u32, Vec<(String, f64)>>,
    /// Events in the log over all runs.
    pub log_events: u64,
    /// Dead-letter entries over all runs, by (stage, kind).
    pub dead_letters: BTreeMap<(String, String), u64>,
    /// Per source.
    pub sources: Vec<SourceReport>,
    /// Per sink.
    pub sinks: Vec<SinkSummary>,
    /// The data directory (log, offsets, dead letters).
    pub data_dir: PathBuf,
    /// True if the whole input is in and processed; false after a stop.
    pub complete: bool,
    /// How the memory limit was used.
    pub memory: MemoryReport,
    /// What the Kafka source did, for a pipeline reading Kafka.
    #[cfg(feature = "kafka")]
    pub kafka: Option<crate::kafka::KafkaReport>,
}

/// How a run used its `[pipeline] memory_limit`, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryReport {
    /// The limit and its shares.
    pub plan: MemoryPlan,
    /// The most bytes the shards' queues held at once.
    pub shard_queues_peak: u64,
    /// Times a consumer waited for room in the shards' queues (backpressure in bytes).
    pub shard_queue_waits: u64,
    /// The most bytes the sinks' queues and batches held at once.
    pub sink_queues_peak: u64,
    /// Times a shard waited for room in the sinks' queues.
    pub sink_queue_waits: u64,
    /// The most bytes of window state held at once (measured, not refused).
    pub state_peak: u64,
}

impl Summary {
    /// Dead-letter entries of `stage`s starting with `prefix`, over all runs.
    pub fn dead_letters_of(&self, prefix: &str) -> u64 {
        self.dead_letters
            .iter()
            .filter(|((stage, _), _)| stage.starts_with(prefix))
            .map(|(_, n)| n)
            .sum()
    }
}

/// A pipeline ready to run.
pub struct Pipeline {
    config: PipelineConfig,
    extra_sinks: Vec<(String, Box<dyn Sink>, DriverSettings)>,
    extra_operators: Vec<OperatorFactory>,
}

/// Makes a partition's instance of an operator (called once per log partition).
pub type OperatorFactory = Arc<dyn Fn(u32) -> Box<dyn Operator> + Send + Sync>;

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("name", &self.config.name)
            .finish_non_exhaustive()
    }
}

/// Number of cores to use for per-core pools.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

impl Pipeline {
    /// A pipeline for `config`.
    ///
    /// # Errors
    /// The configuration does not validate.
    pub fn new(config: PipelineConfig) -> Result<Self, Error> {
        config.validate()?;
        Ok(Pipeline {
            config,
            extra_sinks: Vec::new(),
            extra_operators: Vec::new(),
        })
    }

    /// A pipeline of an already validated `config`, with Rust operators and sinks.
    pub(crate) fn from_parts(
        config: PipelineConfig,
        extra_operators: Vec<OperatorFactory>,
        extra_sinks: Vec<(String, Box<dyn Sink>, DriverSettings)>,
    ) -> Self {
        Pipeline {
            config,
            extra_sinks,
            extra_operators,
        }
    }

    /// Adds an operator written in Rust, after those of the configuration. `factory`
    /// makes one instance per log partition (each runs on its partition's consumer
    /// thread); it sees the numbers of [`PipelineConfig::number_fields`].
    pub fn with_operator(
        mut self,
        factory: impl Fn(u32) -> Box<dyn Operator> + Send + Sync + 'static,
    ) -> Self {
        self.extra_operators.push(Arc::new(factory));
        self
    }

    /// Adds a sink written in Rust, next to those of the configuration.
    pub fn with_sink(mut self, name: &str, sink: Box<dyn Sink>, settings: DriverSettings) -> Self {
        self.extra_sinks.push((name.to_owned(), sink, settings));
        self
    }

    /// The configuration.
    pub fn config(&self) -> &PipelineConfig {
        &self.config
    }

    /// Runs the pipeline on this thread until the input is finished and processed, or
    /// `control` asks it to stop; then drains, commits and returns what it did.
    ///
    /// # Errors
    /// The log or a sink cannot be opened, or a stage failed during the run (the error
    /// says which and why). Whatever was committed before stays committed: running
    /// again resumes from there.
    pub fn run(self, control: Arc<Control>) -> Result<Summary, Error> {
        #[cfg(feature = "kafka")]
        if let Some(source) = self.config.sources.iter().find_map(|s| match &s.config {
            SourceConfig::Kafka(k) => Some((s.name.clone(), k.clone())),
            _ => None,
        }) {
            return self.run_kafka(control, source);
        }
        let started = Instant::now();
        let cfg = self.config;
        let p = &cfg.pipeline;
        let data_dir = DataDir::lock(&cfg.data_dir)?;
        data_dir.check_key_field(&p.key)?;
        let fsync = cfg.log.fsync;
        let log = Log::open(
            data_dir.log(),
            LogConfig {
                partitions: cfg.log.partitions,
                segment_bytes: cfg.log.segment_size,
                fsync,
                max_batch_bytes: cfg.log.max_batch_size as usize,
                retention: cfg.log.retention(),
            },
        )?;
        let dead_letters = DeadLetters::open(data_dir.dead_letters(), fsync)?;
        let partitions = log.partitions();
        let number_fields = cfg.number_fields();
        let ingestor = Arc::new(Ingestor::for_pipeline(&cfg, partitions, p.max_event_size)?);
        let schema = Arc::new(RowSchema::new(&p.aggregates, &number_fields));
        let shard_count = if p.shards == 0 { cores() } else { p.shards };

        let started_sinks = start_sinks(&cfg, self.extra_sinks, &schema, &dead_letters, &control)?;
        let sink_txs = started_sinks.txs.clone();
        let paths = shard_count * sink_txs.len();

        let http_sources = cfg
            .sources
            .iter()
            .filter(|s| matches!(s.config, SourceConfig::Http(_)))
            .count();
        let memory = MemoryPlan::new(p.memory_limit, http_sources);
        let state_dir = StateDir::new(&cfg.data_dir, &cfg.name);
        let restoring = Instant::now();
        let restores = restore_state(&cfg, &log, &state_dir, shard_count, &schema)?;
        let state_restored = (
            restores.iter().map(|(_, r)| r.entries).sum::<u64>(),
            restoring.elapsed(),
        );
        if !restores.is_empty() {
            tracing::info!(
                keys = state_restored.0,
                elapsed = ?state_restored.1,
                partitions = restores.len(),
                "restored open windows from the committed state checkpoints"
            );
        }
        let shards = start_shards(
            &cfg,
            &memory,
            shard_count,
            partitions,
            &schema,
            sink_txs,
            &control,
            restores,
        );
        let shard_txs = shards.txs.clone();

        // A log that lost records behind a committed offset (`lungfish log repair` cut a
        // damaged tail): file and generator sources append them again (they resume from
        // the log's producer positions), but events from HTTP clients are gone, and new
        // ones would land below the committed offset, where the consumer never reads.
        if cfg
            .sources
            .iter()
            .any(|s| matches!(s.config, SourceConfig::Http(_)))
        {
            for (part, committed) in log.committed(&cfg.name)?.iter().enumerate() {
                let end = log.end_offset(part as u32);
                if let Some(c) = committed.as_ref().filter(|c| c.offset > end) {
                    return Err(Error::Failed(format!(
                        "partition {part}: pipeline {name:?} committed offset {at}, but the log now ends at {end} (records were cut, e.g. by `lungfish log repair`), and new events would land where it never reads; to go on from the end, run `lungfish log reset-offsets PIPELINE_FILE --consumer {name} --partition {part} --to latest`",
                        name = cfg.name,
                        at = c.offset,
                    )));
                }
            }
        }
        // Register the consumer before any data flows, so retention never deletes what
        // this pipeline has not read (it only respects consumers with offsets).
        let unregistered: Vec<OffsetCommit<'_>> = log
            .committed(&cfg.name)?
            .iter()
            .enumerate()
            .filter(|(_, c)| c.is_none())
            .map(|(part, _)| OffsetCommit {
                partition: part as u32,
                offset: 0,
                metadata: b"",
            })
            .collect();
        if !unregistered.is_empty() {
            log.commit(&cfg.name, &unregistered)?;
        }
        let committer = Arc::new(Committer::new(log.clone(), &cfg.name));
        let chains = chain_maker(&cfg, &number_fields, &self.extra_operators)?;
        let calls_out = cfg
            .operators
            .iter()
            .any(|o| matches!(o.config, OperatorConfig::Enrich(_)));
        let mut consumer_threads = Vec::new();
        // One settings value for all: the consumers share its watermark registry.
        let base = ConsumerSettings {
            state: (!p.checkpoint_interval.is_zero()).then(|| StateSettings {
                dir: state_dir.clone(),
                interval: p.checkpoint_interval,
            }),
            read_bytes: memory.read_bytes(partitions, calls_out),
            fields_id: ingestor.fields_id(),
            extractor: ingestor.extractor().clone(),
            #[cfg(feature = "protobuf")]
            protobuf: ingestor.protobuf().cloned(),
            ..consumer_settings(&cfg, &memory, partitions, paths, &shards)
        };
        for part in 0..partitions {
            let chain = chains(part);
            let settings = base.clone();
            let consumer = Consumer::new(
                part,
                log.clone(),
                dead_letters.clone(),
                settings,
                shard_txs.clone(),
                control.clone(),
                committer.clone(),
                chain,
            )?;
            consumer_threads.push(spawn(&format!("lungfish-consume-{part}"), move || {
                consumer.run()
            }));
        }
        drop(shard_txs);

        let committer_done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let committer_thread = {
            let (committer, control, done, log) = (
                committer.clone(),
                control.clone(),
                committer_done.clone(),
                log.clone(),
            );
            spawn("lungfish-commit", move || {
                while !done.load(Ordering::SeqCst) {
                    std::thread::sleep(COMMIT_INTERVAL.min(Duration::from_millis(100)));
                    if let Err(e) = committer.commit() {
                        // Records behind a committed offset were cut (`lungfish log
                        // repair`) and no source appended them again: say the way on.
                        let hint = match &e {
                            LogError::OffsetPastEnd {
                                consumer,
                                partition,
                                ..
                            } => format!(
                                "; the log lost records this pipeline had committed (e.g. cut by `lungfish log repair`): to go on from the end, run `lungfish log reset-offsets PIPELINE_FILE --consumer {consumer} --partition {partition} --to latest`"
                            ),
                            _ => String::new(),
                        };
                        control.abort(format!("committing offsets: {e}{hint}"));
                        return;
                    }
                    for part in 0..log.partitions() {
                        if let Ok(s) = log.stats(part) {
                            let label = part.to_string();
                            metrics::gauge!("lungfish_log_end_offset", "partition" => label.clone())
                                .set(s.end_offset as f64);
                            metrics::gauge!("lungfish_log_bytes", "partition" => label.clone())
                                .set(s.bytes as f64);
                            // Fresh even while the consumer waits on a full queue.
                            if let Some(done) = committer.committed_offset(part) {
                                metrics::gauge!("lungfish_consumer_lag", "partition" => label)
                                    .set(s.end_offset.saturating_sub(done) as f64);
                            }
                        }
                    }
                }
            })
        };

        // Sources.
        let pool = Arc::new(IngestPool::new(ingestor, cores()));
        let ctx = SourceContext {
            log: log.clone(),
            dead_letters: dead_letters.clone(),
            pool: pool.clone(),
            control: control.clone(),
        };
        let mut source_threads = Vec::new();
        for s in &cfg.sources {
            let source: Box<dyn ChunkSource> = match &s.config {
                #[cfg(feature = "http")]
                SourceConfig::Http(h) => {
                    let ingestor = Arc::new(Ingestor::for_pipeline(
                        &cfg,
                        partitions,
                        h.max_event_size.unwrap_or(p.max_event_size),
                    )?);
                    // Request bodies in flight: at most this source's part of the memory.
                    let mut h = h.clone();
                    h.max_inflight_bytes = h.max_inflight_bytes.min(memory.http_per_source);
                    let (name, ctx, consumer) = (s.name.clone(), ctx.clone(), cfg.name.clone());
                    source_threads.push((
                        s.name.clone(),
                        spawn(&format!("lungfish-source-{}", s.name), move || {
                            crate::sources::http::run_http_source(
                                &name, &h, ingestor, &consumer, &ctx,
                            )
                        }),
                    ));
                    continue;
                }
                #[cfg(not(feature = "http"))]
                SourceConfig::Http(_) => {
                    return Err(Error::Source {
                        name: s.name.clone(),
                        error: crate::sources::SourceError::Config(
                            "this build of lungfish has no HTTP source (cargo feature `http`)"
                                .to_owned(),
                        )
                        .into(),
                    });
                }
                SourceConfig::Generator(g) => {
                    let field_names = cfg.field_names();
                    Box::new(GeneratorSource::new(&s.name, g.clone(), &field_names))
                }
                SourceConfig::Kafka(_) => {
                    return Err(Error::Source {
                        name: s.name.clone(),
                        error: crate::sources::SourceError::Config(
                            "this build of lungfish has no Kafka source (cargo feature `kafka`)"
                                .to_owned(),
                        )
                        .into(),
                    });
                }
                SourceConfig::File(f) => {
                    let files =
                        pinned_files(&data_dir.sources(), &s.name, &f.paths).map_err(|error| {
                            Error::Source {
                                name: s.name.clone(),
                                error: error.into(),
                            }
                        })?;
                    Box::new(
                        FileSource::new(files, FILE_CHUNK_BYTES, p.max_event_size as usize)
                            .with_format(f.format),
                    )
                }
            };
            let (name, ctx) = (s.name.clone(), ctx.clone());
            source_threads.push((
                s.name.clone(),
                spawn(&format!("lungfish-source-{}", s.name), move || {
                    run_source(&name, source, &ctx)
                }),
            ));
        }
        let mut reports = Vec::new();
        let mut first_error: Option<Error> = None;
        for (name, handle) in source_threads {
            match handle.join() {
                Ok(Ok(report)) => reports.push(report),
                Ok(Err(error)) => {
                    control.abort(format!("source {name}: {error}"));
                    first_error.get_or_insert(Error::Source { name, error });
                }
                Err(_) => control.abort(format!("source {name} panicked")),
            }
        }
        let all_finished = reports.iter().all(|r| r.finished) && first_error.is_none();
        if all_finished && !control.is_stopping() {
            // Everything the sources appended is durable: consumers may close all windows
            // once they reach the end.
            match log.sync().and_then(|()| dead_letters.sync()) {
                Ok(()) => control.stats.sources_done.store(true, Ordering::SeqCst),
                Err(e) => {
                    // Stop the other stages before returning: never leave threads behind.
                    control.abort(format!("log: {e}"));
                    first_error.get_or_insert(Error::Log(e));
                }
            }
        }
        for h in consumer_threads {
            if h.join().is_err() {
                control.abort("a consumer panicked");
            }
        }
        let memory_report = shards.join(&control, memory);
        let sink_summaries = started_sinks.join(&control, &mut first_error);
        committer_done.store(true, Ordering::SeqCst);
        let _ = committer_thread.join();
        // Completed checkpoints are safe to commit even after a failure elsewhere.
        let commit_result = committer.commit();
        if let Ok(pool) = Arc::try_unwrap(pool) {
            pool.shutdown();
        }
        log.close()?;
        dead_letters.sync()?;
        if let Some(e) = first_error {
            return Err(e);
        }
        if let Some(e) = control.error() {
            return Err(Error::Failed(e));
        }
        commit_result?;
        let stats = &control.stats;
        let log_events = (0..partitions).map(|q| log.end_offset(q)).sum();
        Ok(Summary {
            name: cfg.name.clone(),
            elapsed: started.elapsed(),
            events_in: stats.events_in.load(Ordering::Relaxed),
            rejected: stats.rejected.load(Ordering::Relaxed),
            processed: stats.processed.load(Ordering::Relaxed),
            late: stats.late.load(Ordering::Relaxed),
            windows: stats.windows.load(Ordering::Relaxed),
            corrections: stats.corrections.load(Ordering::Relaxed),
            duplicates: stats.duplicates.load(Ordering::Relaxed),
            hot_keys: stats.hot_keys.lock().unwrap().clone(),
            log_events,
            dead_letters: dead_letters.counts()?,
            sources: reports,
            sinks: sink_summaries,
            data_dir: cfg.data_dir.clone(),
            complete: all_finished
                && stats.sources_done.load(Ordering::SeqCst)
                && !control.is_stopping(),
            memory: memory_report,
            #[cfg(feature = "kafka")]
            kafka: None,
        })
    }
}

impl Pipeline {
    /// [`run`](Self::run) for a pipeline whose source is a Kafka topic: the topic's
    /// partitions take the place of the log's (see [`crate::kafka`]).
    #[cfg(feature = "kafka")]
    fn run_kafka(
        self,
        control: Arc<Control>,
        (source_name, kafka): (String, crate::config::KafkaSourceConfig),
    ) -> Result<Summary, Error> {
        use crate::kafka::{KafkaInput, KafkaInputParts, Topology};
        let started = Instant::now();
        let cfg = self.config;
        let p = &cfg.pipeline;
        let source_error = |e: String| Error::Source {
            name: source_name.clone(),
            error: crate::sources::SourceError::Config(e).into(),
        };
        let data_dir = DataDir::lock(&cfg.data_dir)?;
        let dead_letters = DeadLetters::open(data_dir.dead_letters(), cfg.log.fsync)?;
        let topology = Arc::new(Topology::fetch(&kafka).map_err(source_error)?);
        let partitions = topology.partitions();
        let number_fields = cfg.number_fields();
        let schema = Arc::new(RowSchema::new(&p.aggregates, &number_fields));
        let shard_count = if p.shards == 0 { cores() } else { p.shards };
        let started_sinks = start_sinks(&cfg, self.extra_sinks, &schema, &dead_letters, &control)?;
        let paths = shard_count * started_sinks.txs.len();
        let memory = MemoryPlan::new(p.memory_limit, 0);
        let shards = start_shards(
            &cfg,
            &memory,
            shard_count,
            partitions,
            &schema,
            started_sinks.txs.clone(),
            &control,
            Vec::new(),
        );
        let chains = chain_maker(&cfg, &number_fields, &self.extra_operators)?;
        // Kafka messages come from the client's own buffers (no read size), and are the
        // original JSON: always extracted (no fields fingerprint).
        let settings = consumer_settings(&cfg, &memory, partitions, paths, &shards);
        let group = kafka.group.clone().unwrap_or_else(|| cfg.name.clone());
        let description = format!("kafka {} {:?} group {group:?}", kafka.brokers, kafka.topics);
        let input = KafkaInput::new(KafkaInputParts {
            config: kafka,
            group,
            topology,
            settings,
            dead_letters: dead_letters.clone(),
            shards: shards.txs.clone(),
            control: control.clone(),
            chains: Box::new(chains),
            // The sources' quarter of the memory limit: no HTTP source shares it.
            prefetch_bytes: memory.limit / 4,
            commit_interval: COMMIT_INTERVAL,
        });
        let input_thread = spawn(&format!("lungfish-kafka-{source_name}"), move || {
            input.run()
        });
        let mut first_error = None;
        let report = match input_thread.join() {
            Ok(Ok(report)) => Some(report),
            Ok(Err(e)) => {
                control.abort(format!("source {source_name}: {e}"));
                first_error = Some(source_error(e));
                None
            }
            Err(_) => {
                control.abort(format!("source {source_name} panicked"));
                None
            }
        };
        let memory_report = shards.join(&control, memory);
        let sink_summaries = started_sinks.join(&control, &mut first_error);
        dead_letters.sync()?;
        if let Some(e) = first_error {
            return Err(e);
        }
        if let Some(e) = control.error() {
            return Err(Error::Failed(e));
        }
        let stats = &control.stats;
        let report = report.unwrap_or_default();
        Ok(Summary {
            name: cfg.name.clone(),
            elapsed: started.elapsed(),
            events_in: report.messages,
            rejected: 0,
            processed: stats.processed.load(Ordering::Relaxed),
            late: stats.late.load(Ordering::Relaxed),
            windows: stats.windows.load(Ordering::Relaxed),
            corrections: stats.corrections.load(Ordering::Relaxed),
            duplicates: stats.duplicates.load(Ordering::Relaxed),
            hot_keys: stats.hot_keys.lock().unwrap().clone(),
            log_events: 0,
            dead_letters: dead_letters.counts()?,
            sources: vec![SourceReport {
                name: source_name,
                description,
                resumed_at: 0,
                accepted: report.messages,
                rejected: 0,
                bytes: 0,
                finished: report.finished,
            }],
            sinks: sink_summaries,
            data_dir: cfg.data_dir.clone(),
            complete: report.finished && !control.is_stopping(),
            memory: memory_report,
            kafka: Some(report),
        })
    }
}

/// Makes a partition's operator chain: the configured operators, then `extra`; `None`
/// when there are none.
fn chain_maker(
    cfg: &PipelineConfig,
    number_fields: &[String],
    extra: &[OperatorFactory],
) -> Result<impl Fn(u32) -> Option<OperatorChain> + Send + 'static, Error> {
    let mut factories = build_operators(cfg, number_fields)?;
    factories.extend(extra.iter().cloned());
    let retry_budget = Arc::new(RetryBudget::new(ChainSettings::default().budget));
    Ok(move |part: u32| {
        (!factories.is_empty()).then(|| {
            OperatorChain::new(
                factories.iter().map(|f| f(part)).collect(),
                ChainSettings::default(),
                retry_budget.clone(),
            )
        })
    })
}

/// A partition consumer's settings from the configuration and the memory plan; the
/// log's read size and stored-fields fingerprint are left at zero (no log) and the
/// extractor reads the configured fields.
fn consumer_settings(
    cfg: &PipelineConfig,
    memory: &MemoryPlan,
    partitions: u32,
    paths: usize,
    shards: &StartedShards,
) -> ConsumerSettings {
    let p = &cfg.pipeline;
    ConsumerSettings {
        name: cfg.name.clone(),
        out_of_orderness_ms: i64::try_from(p.out_of_orderness.as_millis()).unwrap_or(i64::MAX),
        batch_max_events: p.batch_max_events,
        batch_max_age: p.batch_max_age,
        read_bytes: 0,
        windowing: Windowing::new(&p.window).with_lateness(p.allowed_lateness),
        fields_id: 0,
        extractor: crate::codec::json::JsonExtractor::new(cfg.field_names()),
        #[cfg(feature = "protobuf")]
        protobuf: None,
        paths,
        commit_interval: COMMIT_INTERVAL,
        number_fields: cfg.number_fields().into(),
        queue_budget: shards.shard_queue_budget.clone(),
        max_batch_bytes: memory.consumer_batch_bytes(partitions),
        idle_timeout: (!p.idle_timeout.is_zero()).then_some(p.idle_timeout),
        watermarks: Arc::new(crate::consumer::Watermarks::new(partitions)),
        state: None,
        pre_aggregate: p.pre_aggregate,
        row_schema: Arc::new(RowSchema::new(&p.aggregates, &cfg.number_fields())),
        dedup: (!p.dedup_horizon.is_zero()).then(|| {
            (
                i64::try_from(p.dedup_horizon.as_millis()).unwrap_or(i64::MAX),
                p.dedup_max_ids.max(1),
            )
        }),
    }
}

/// The sinks' threads, running.
struct StartedSinks {
    /// Their queues, in order.
    txs: Vec<crossbeam_channel::Sender<SinkMsg>>,
    threads: Vec<JoinHandle<Result<Box<dyn Sink>, SinkError>>>,
    /// Name, description and query hint of each.
    descriptions: Vec<(String, String, Option<String>)>,
}

impl StartedSinks {
    /// Waits for every sink to finish; their summaries. A sink's error becomes the
    /// run's error if there was none yet.
    fn join(self, control: &Control, first_error: &mut Option<Error>) -> Vec<SinkSummary> {
        drop(self.txs);
        let mut summaries = Vec::new();
        for ((name, description, query_hint), h) in self.descriptions.into_iter().zip(self.threads)
        {
            let stored_rows = match h.join() {
                Ok(Ok(mut sink)) => sink.stored_rows(),
                Ok(Err(error)) => {
                    first_error.get_or_insert(Error::Sink {
                        name: name.clone(),
                        error,
                    });
                    None
                }
                Err(_) => {
                    control.abort(format!("sink {name} panicked"));
                    None
                }
            };
            summaries.push(SinkSummary {
                name,
                description,
                stored_rows,
                query_hint,
            });
        }
        summaries
    }
}

/// Opens the configured sinks and `extra` ones (a bad one fails fast, before anything
/// runs) and starts a thread for each.
fn start_sinks(
    cfg: &PipelineConfig,
    extra: Vec<(String, Box<dyn Sink>, DriverSettings)>,
    schema: &RowSchema,
    dead_letters: &DeadLetters,
    control: &Arc<Control>,
) -> Result<StartedSinks, Error> {
    let fsync = cfg.log.fsync;
    // Sinks, opened before anything runs so a bad one fails fast.
    let mut sinks: Vec<(String, Box<dyn Sink>, DriverSettings)> = Vec::new();
    for s in &cfg.sinks {
        let (sink, settings): (Box<dyn Sink>, DriverSettings) = match &s.config {
            SinkConfig::Sqlite(c) => (
                Box::new(SqliteSink::new(c)),
                DriverSettings {
                    batch_max_rows: c.batch_max_rows,
                    batch_max_age: c.batch_max_age,
                    ..DriverSettings::default()
                },
            ),
            SinkConfig::File(c) => (
                Box::new(FileSink::new(c)),
                DriverSettings {
                    batch_max_rows: c.batch_max_rows,
                    batch_max_age: c.batch_max_age,
                    ..DriverSettings::default()
                },
            ),
            SinkConfig::Stdout => (Box::new(StdoutSink::default()), DriverSettings::default()),
            #[cfg(feature = "postgres")]
            SinkConfig::Postgres(c) => (
                Box::new(crate::sinks::postgres::PostgresSink::new(&cfg.name, c).named(&s.name)),
                database_settings(c),
            ),
            #[cfg(feature = "clickhouse")]
            SinkConfig::ClickHouse(c) => (
                Box::new(crate::sinks::clickhouse::ClickHouseSink::new(c)),
                database_settings(c),
            ),
            #[cfg(feature = "kafka")]
            SinkConfig::Kafka(c) => (
                Box::new(crate::sinks::kafka::KafkaSink::new(c).named(&s.name)),
                crate::sinks::kafka::KafkaSink::driver_settings(c),
            ),
            #[allow(unreachable_patterns)]
            other => {
                return Err(Error::Sink {
                    name: s.name.clone(),
                    error: SinkError::permanent(format!(
                        "this build of lungfish has no {} sink (cargo feature `{}`)",
                        other.type_name(),
                        other.type_name()
                    )),
                });
            }
        };
        let sink: Box<dyn Sink> = match s.config.write_behind() {
            Some(max_bytes) => {
                let spool = cfg.data_dir.join("spool").join(&s.name);
                // Rows the store refuses are dead-lettered beside the spool.
                let refused = DeadLetters::open(spool.join("dlq"), fsync)?;
                let settings = WriteBehindSettings {
                    max_bytes,
                    retry: settings,
                    ..WriteBehindSettings::default()
                };
                Box::new(
                    WriteBehind::new(&s.name, sink, spool, settings).with_dead_letters(refused),
                )
            }
            None => sink,
        };
        sinks.push((s.name.clone(), sink, settings));
    }
    sinks.extend(extra);
    for (name, sink, _) in &mut sinks {
        sink.open(schema).map_err(|error| Error::Sink {
            name: name.clone(),
            error,
        })?;
    }
    let mut descriptions = Vec::new();
    let (mut txs, mut threads) = (Vec::new(), Vec::new());
    for (name, sink, settings) in sinks {
        descriptions.push((name.clone(), sink.describe(), sink.query_hint()));
        let (tx, rx) = bounded::<SinkMsg>(CHANNEL_MESSAGES);
        txs.push(tx);
        let driver = SinkDriver::new(&name, sink, settings, control.clone())
            .with_dead_letters(dead_letters.clone());
        threads.push(spawn(&format!("lungfish-sink-{name}"), move || {
            driver.run(rx)
        }));
    }
    Ok(StartedSinks {
        txs,
        threads,
        descriptions,
    })
}

/// The shards' threads, running.
struct StartedShards {
    /// Their queues, in order.
    txs: Vec<crossbeam_channel::Sender<ShardMsg>>,
    threads: Vec<JoinHandle<()>>,
    shard_queue_budget: ByteBudget,
    sink_queue_budget: ByteBudget,
    state_bytes: Arc<StateBytes>,
}

impl StartedShards {
    /// Waits for every shard to finish; how the memory limit was used.
    fn join(self, control: &Control, plan: MemoryPlan) -> MemoryReport {
        drop(self.txs);
        for h in self.threads {
            if h.join().is_err() {
                control.abort("a shard panicked");
            }
        }
        MemoryReport {
            plan,
            shard_queues_peak: self.shard_queue_budget.peak(),
            shard_queue_waits: self.shard_queue_budget.waits(),
            sink_queues_peak: self.sink_queue_budget.peak(),
            sink_queue_waits: self.sink_queue_budget.waits(),
            state_peak: self.state_bytes.peak(),
        }
    }
}

/// Starts `shard_count` shards keeping state for `partitions` source partitions and
/// writing to `sink_txs`.
#[allow(clippy::too_many_arguments)]
fn start_shards(
    cfg: &PipelineConfig,
    memory: &MemoryPlan,
    shard_count: usize,
    partitions: u32,
    schema: &Arc<RowSchema>,
    sink_txs: Vec<crossbeam_channel::Sender<SinkMsg>>,
    control: &Arc<Control>,
    mut restores: Vec<(u32, Restored)>,
) -> StartedShards {
    let windowing =
        Windowing::new(&cfg.pipeline.window).with_lateness(cfg.pipeline.allowed_lateness);
    let shard_queue_budget = ByteBudget::for_stage(memory.shard_queues, "shards");
    let sink_queue_budget = ByteBudget::for_stage(memory.sink_queues, "sinks");
    let state_bytes = Arc::new(StateBytes::default());
    let (mut shard_txs, mut shard_threads) = (Vec::new(), Vec::new());
    for s in 0..shard_count {
        let (tx, rx) = bounded::<ShardMsg>(CHANNEL_MESSAGES);
        shard_txs.push(tx);
        let shard = Shard::new(
            s,
            windowing,
            schema.clone(),
            partitions,
            sink_txs.clone(),
            control.clone(),
            sink_queue_budget.clone(),
            memory.state / shard_count as u64,
            state_bytes.clone(),
        );
        let mut shard = shard;
        for (partition, restored) in &mut restores {
            shard.restore(
                *partition,
                std::mem::take(&mut restored.windows[s]),
                std::mem::replace(
                    &mut restored.sessions[s],
                    crate::session::SessionTable::new(0, 0),
                ),
            );
        }
        shard_threads.push(spawn(&format!("lungfish-shard-{s}"), move || shard.run(rx)));
    }
    StartedShards {
        txs: shard_txs,
        threads: shard_threads,
        shard_queue_budget,
        sink_queue_budget,
        state_bytes,
    }
}

/// Reads the state checkpoint committed for each partition, if any, placed on
/// `shard_count` shards, and deletes the state no commit names.
fn restore_state(
    cfg: &PipelineConfig,
    log: &Log,
    state_dir: &StateDir,
    shard_count: usize,
    schema: &RowSchema,
) -> Result<Vec<(u32, Restored)>, Error> {
    let windowing =
        Windowing::new(&cfg.pipeline.window).with_lateness(cfg.pipeline.allowed_lateness);
    let mut restores = Vec::new();
    for (partition, committed) in log.committed(&cfg.name)?.iter().enumerate() {
        let partition = partition as u32;
        let id = committed
            .as_ref()
            .and_then(|c| ReplayState::decode(&c.metadata))
            .and_then(|s| s.state_id);
        state_dir.remove_older(partition, id);
        if let Some(id) = id {
            let dir = state_dir.checkpoint(partition, id);
            let restored = crate::state::load(&dir, shard_count, &windowing, schema)?;
            restores.push((partition, restored));
        }
    }
    Ok(restores)
}

/// Batching for a database sink.
#[allow(dead_code)] // without the database features
fn database_settings(c: &crate::config::DatabaseSinkConfig) -> DriverSettings {
    DriverSettings {
        batch_max_rows: c.batch_max_rows,
        batch_max_age: c.batch_max_age,
        ..DriverSettings::default()
    }
}

fn spawn<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> JoinHandle<T> {
    std::thread::Builder::new()
        .name(name.chars().take(15).collect())
        .spawn(f)
        .expect("spawning a pipeline thread")
}

impl From<SinkError> for Error {
    fn from(error: SinkError) -> Self {
        Error::Sink {
            name: String::new(),
            error,
        }
    }
}

/// The factories of the configured operators, in file order.
fn build_operators(
    cfg: &PipelineConfig,
    number_fields: &[String],
) -> Result<Vec<OperatorFactory>, Error> {
    let mut out: Vec<OperatorFactory> = Vec::new();
    for op in &cfg.operators {
        match &op.config {
            OperatorConfig::Filter(f) => {
                let filter = Filter::new(&op.name, f.condition.clone(), f.otherwise, number_fields)
                    .map_err(Error::Failed)?;
                out.push(Arc::new(move |_| Box::new(filter.clone())));
            }
            #[cfg(feature = "enrich")]
            OperatorConfig::Enrich(e) => {
                use crate::operator::enrich::{Enrich, client};
                let client = client(&op.name, e).map_err(|err| Error::Failed(err.to_string()))?;
                // Checked once here, so the factory cannot fail.
                Enrich::new(&op.name, client.clone(), e, number_fields).map_err(Error::Failed)?;
                let (name, e, fields) = (op.name.clone(), e.clone(), number_fields.to_vec());
                out.push(Arc::new(move |_| {
                    Box::new(
                        Enrich::new(&name, client.clone(), &e, &fields)
                            .expect("checked when the pipeline was built"),
                    )
                }));
            }
            #[cfg(not(feature = "enrich"))]
            OperatorConfig::Enrich(_) => {
                return Err(Error::Failed(format!(
                    "operator {}: this build has no enrichment (cargo feature `enrich`)",
                    op.name
                )));
            }
        }
    }
    Ok(out)
}
