//! Run control shared by every stage of a running pipeline: the stop and abort flags,
//! the first fatal error, and the counters the progress display reads.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Counters of a running pipeline, updated once per batch by the stages.
#[derive(Debug, Default)]
pub struct Stats {
    /// Events accepted into the log by sources, this run.
    pub events_in: AtomicU64,
    /// Lines rejected by sources, this run.
    pub rejected: AtomicU64,
    /// Events read from the log by consumers, this run.
    pub processed: AtomicU64,
    /// Late events sent to the dead-letter queue, this run.
    pub late: AtomicU64,
    /// Window rows emitted by shards, this run (corrections included).
    pub windows: AtomicU64,
    /// Events dropped as duplicates (id seen within the dedup horizon), this run.
    pub duplicates: AtomicU64,
    /// Rows emitted again because late events (within the allowed lateness) changed
    /// a window that had already fired, this run.
    pub corrections: AtomicU64,
    /// Rows durably written, summed over sinks, this run.
    pub rows_written: AtomicU64,
    /// Set once every source has finished and its appends are durable.
    pub sources_done: AtomicBool,
    /// Per partition, its heaviest keys at the last review with their share of the
    /// partition's events (see [`crate::hot_keys`]).
    pub hot_keys: Mutex<std::collections::BTreeMap<u32, Vec<(String, f64)>>>,
}

impl Stats {
    /// Records partition `partition`'s heaviest keys (once per review, not per event).
    pub fn report_hot_keys(&self, partition: u32, top: Vec<(String, f64)>) {
        self.hot_keys.lock().unwrap().insert(partition, top);
    }
}

/// How a pipeline is asked to stop, and how it reports a failure.
#[derive(Debug, Default)]
pub struct Control {
    stop: AtomicBool,
    abort: AtomicBool,
    error: Mutex<Option<String>>,
    /// The run's counters.
    pub stats: Stats,
}

impl Control {
    /// A control for a new run.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks for a graceful stop: sources stop taking input, consumers finish their
    /// current micro-batch, due windows are emitted, offsets committed.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// True once a stop (graceful or not) was asked for.
    pub fn is_stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst) || self.is_aborting()
    }

    /// Stops everything as soon as possible after a fatal error; nothing more is
    /// committed. The first error is kept.
    pub fn abort(&self, error: impl Into<String>) {
        let mut slot = self.error.lock().unwrap();
        if slot.is_none() {
            *slot = Some(error.into());
        }
        self.abort.store(true, Ordering::SeqCst);
    }

    /// True after [`abort`](Self::abort).
    pub fn is_aborting(&self) -> bool {
        self.abort.load(Ordering::SeqCst)
    }

    /// The first fatal error, if any.
    pub fn error(&self) -> Option<String> {
        self.error.lock().unwrap().clone()
    }
}
