//! Lungfish: an event pipeline that stays calm under irregular load.
//!
//! Events arrive in waves; Lungfish separates arrival from processing with a durable
//! log ([`lungfish_log`]), consumes it in bounded micro-batches, routes events by key to
//! worker shards that own their window state, and lands results in storage through
//! batched, idempotent sinks. An event is acknowledged only after its effect is durable,
//! and a crash at any moment replays to the same result.
//!
//! The path of one event, module by module:
//! [`sources`] -> [`ingest`] (parse once, [`codec::json`]) -> [`event`] record ->
//! [`lungfish_log`] -> `consumer` (watermark, micro-batch) -> [`shard`] ([`window`]
//! state) -> [`sinks`], with `checkpoint` markers deciding what is committed and
//! [`dlq`] keeping what could not go on. [`pipeline`] wires it all from a [`config`].
//! `docs/ARCHITECTURE.md` tells the same story at length.
//!
//! # Two ways in
//!
//! **A whole pipeline**, from a file ([`PipelineConfig::load`]) or built in code
//! ([`Pipeline::builder`], with your own [`operator::Operator`]s and [`sinks::Sink`]s),
//! run by [`Pipeline::run`]. Both produce the same [`PipelineConfig`] and pass the same
//! validation.
//!
//! **Parts for your own service**, each usable alone:
//!
//! | part | for |
//! |---|---|
//! | [`batcher`] | many small writes into few large ones, with backpressure and a receipt per write |
//! | [`guard`] | an outside call under a timeout, a retry budget, a circuit breaker and an adaptive concurrency limit |
//! | [`breaker`], [`retry`], [`concurrency`] | the same three separately |
//! | [`limiter`] | token buckets per client (rate limits at an edge) |
//! | [`budget`] | a byte budget that makes a producer wait (memory bounds) |
//! | [`keyed_windows`] | keyed event-time windows with a watermark over your own stream |
//! | [`sketch`] | HyperLogLog, DDSketch quantiles, heavy hitters, decayed means |
//! | [`lungfish_log`] | the durable, partitioned log, as a local queue |
//!
//! `docs/guide/library.md` walks through them; `examples/` has a runnable program for
//! each of the first, the pipeline built in code and the log.
//!
//! # What is public
//!
//! The modules above, the configuration, the pipeline and its summary, the operator and
//! sink traits with the built-in sinks, the dead-letter queue's reader and the codecs
//! are the supported surface. The engine's inner stages (`consumer`, `checkpoint`,
//! state checkpoints and session windows) are private. A few stage modules
//! ([`ingest`], [`shard`], [`event`], [`data_dir`], [`dlq_replay`], [`sources`]) stay
//! public because the `lungfish` binary and the integration tests drive them directly;
//! they carry no stability promise beyond what their docs say.

#![warn(missing_docs)]
#![deny(unsafe_code)] // allowed in two places only: `prefetch`, and a librdkafka call in `kafka`

pub mod batcher;
pub mod breaker;
pub mod budget;
pub mod builder;
pub(crate) mod checkpoint;
pub mod codec;
pub mod concurrency;
pub mod config;
// Parts of the consumer serve only the Kafka source.
#[cfg_attr(not(feature = "kafka"), allow(dead_code))]
pub(crate) mod consumer;
pub mod control;
pub mod data_dir;
pub mod dedup;
pub mod dlq;
pub mod dlq_replay;
#[cfg(feature = "enrich")]
pub mod enrich;
pub mod error;
pub mod event;
pub mod guard;
pub mod hot_keys;
pub mod ingest;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod keyed_windows;
pub mod limiter;
pub mod operator;
pub mod pipeline;
mod prefetch;
pub mod retry;
pub(crate) mod session;
pub mod shard;
pub mod sinks;
pub mod sketch;
pub mod sources;
pub(crate) mod state;
pub mod telemetry;
pub mod window;

pub use config::PipelineConfig;
pub use control::Control;
pub use error::{Domain, Error};
pub use pipeline::{Pipeline, Summary};
