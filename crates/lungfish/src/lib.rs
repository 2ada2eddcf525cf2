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
//! [`lungfish_log`] -> [`consumer`] (watermark, micro-batch) -> [`shard`] ([`window`]
//! state) -> [`sinks`], with [`checkpoint`] markers deciding what is committed and
//! [`dlq`] keeping what could not go on. [`pipeline`] wires it all from a [`config`].
//! `docs/ARCHITECTURE.md` tells the same story at length.
//!
//! Parts usable on their own: [`limiter`] (token buckets, per client), [`retry`]
//! (backoff with full jitter, retry budgets), [`breaker`] (circuit breaker),
//! [`concurrency`] (an adaptive concurrency limit), and the log
//! itself ([`lungfish_log`]).

#![warn(missing_docs)]
#![deny(unsafe_code)] // allowed in two places only: `prefetch`, and a librdkafka call in `kafka`

pub mod batcher;
pub mod breaker;
pub mod budget;
pub mod builder;
pub mod checkpoint;
pub mod codec;
pub mod concurrency;
pub mod config;
pub mod consumer;
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
pub mod session;
pub mod shard;
pub mod sinks;
pub mod sketch;
pub mod sources;
pub mod state;
pub mod telemetry;
pub mod window;

pub use config::PipelineConfig;
pub use control::Control;
pub use error::{Domain, Error};
pub use pipeline::{Pipeline, Summary};
