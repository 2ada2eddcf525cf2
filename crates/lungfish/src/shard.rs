//! Worker shards: threads that own window state.
//!
//! Every key hashes to exactly one shard ([`crate::event::shard_for`]), so a shard owns
//! its keys' windows outright and updates them with no lock. A shard receives, from each
//! consumer, micro-batches of events and, behind each, a `Checkpoint` marker. On a
//! marker it closes the marker partition's windows that end at or before the marker's
//! watermark, sends their rows to every sink, then sends the marker on behind them.
//!
//! State is kept per source partition, because each partition has its own watermark
//! (see `consumer`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, SendTimeoutError, Sender};

use crate::budget::{ByteBudget, Lease};
use crate::checkpoint::Checkpoint;
use crate::control::Control;
use crate::session::SessionTable;
use crate::window::{RowSchema, WindowRows, WindowTable, Windowing};

/// Events of one micro-batch of one partition bound for one shard, by column.
#[derive(Debug, Default)]
pub struct ShardBatch {
    /// The source partition.
    pub partition: u32,
    /// Key hashes ([`crate::event::key_hash`]).
    pub hashes: Vec<u64>,
    /// Event times.
    pub ts: Vec<i64>,
    /// Per event: only windows ending after this time take the event (see `consumer`).
    pub cutoffs: Vec<i64>,
    /// Keys, concatenated.
    pub key_data: Vec<u8>,
    /// End of each key in `key_data`.
    pub key_ends: Vec<u32>,
    /// Numbers, `number_fields` per event.
    pub numbers: Vec<f64>,
    /// Partial aggregates of hot keys (the first stage, see [`crate::hot_keys`]): per
    /// window start, the table to merge into the shard's window.
    pub partials: Vec<(i64, WindowTable)>,
    /// The queue bytes this batch holds until it is dropped (see [`crate::budget`]).
    pub lease: Lease,
}

impl ShardBatch {
    /// Number of events.
    pub fn len(&self) -> usize {
        self.ts.len()
    }

    /// True if there is no event and no partial aggregate.
    pub fn is_empty(&self) -> bool {
        self.ts.is_empty() && self.partials.is_empty()
    }

    /// Bytes the batch holds on the heap (its buffers' capacities).
    pub fn heap_bytes(&self) -> u64 {
        (self.hashes.capacity() * 8
            + self.ts.capacity() * 8
            + self.cutoffs.capacity() * 8
            + self.key_data.capacity()
            + self.key_ends.capacity() * 4
            + self.numbers.capacity() * 8) as u64
            + self
                .partials
                .iter()
                .map(|(_, t)| t.heap_bytes())
                .sum::<u64>()
    }

    /// Adds one event.
    #[inline]
    pub fn push(
        &mut self,
        hash: u64,
        ts: i64,
        cutoff: i64,
        key: &[u8],
        numbers: impl Iterator<Item = f64>,
    ) {
        self.hashes.push(hash);
        self.ts.push(ts);
        self.cutoffs.push(cutoff);
        self.key_data.extend_from_slice(key);
        self.key_ends.push(self.key_data.len() as u32);
        self.numbers.extend(numbers);
    }
}

/// What flows into a shard.
#[derive(Debug)]
pub enum ShardMsg {
    /// Events to aggregate.
    Events(ShardBatch),
    /// A checkpoint marker behind the partition's events so far.
    Marker(Arc<Checkpoint>),
    /// The partition moved to another instance: drop its open windows (they are
    /// rebuilt there from the last committed offset).
    Forget(u32),
}

/// What flows from a shard into a sink.
#[derive(Debug, Clone)]
pub enum SinkMsg {
    /// Rows of closed windows.
    Rows(Arc<WindowRows>),
    /// A checkpoint marker behind the rows so far.
    Marker(Arc<Checkpoint>),
}

/// Sends `msg`, waiting while the channel is full (backpressure), checking for abort
/// every 100 ms. Returns false if the pipeline aborted or the receiver is gone.
pub(crate) fn send_patiently<T>(tx: &Sender<T>, mut msg: T, control: &Control) -> bool {
    loop {
        match tx.send_timeout(msg, Duration::from_millis(100)) {
            Ok(()) => return true,
            Err(SendTimeoutError::Timeout(back)) => {
                if control.is_aborting() {
                    return false;
                }
                msg = back;
            }
            Err(SendTimeoutError::Disconnected(_)) => {
                // The receiving stage is gone without the pipeline stopping: it failed.
                control.abort("a pipeline stage stopped unexpectedly");
                return false;
            }
        }
    }
}

/// The window starting at `start`, created if missing; keeps `windows` sorted.
#[inline]
fn window_mut(
    windows: &mut Vec<(i64, WindowTable)>,
    start: i64,
    numbers: usize,
) -> &mut WindowTable {
    // Most events fall in the newest windows: search from the end.
    let mut at = windows.len();
    while at > 0 && windows[at - 1].0 > start {
        at -= 1;
    }
    if at == 0 || windows[at - 1].0 != start {
        windows.insert(at, (start, WindowTable::new(numbers)));
        return &mut windows[at].1;
    }
    &mut windows[at - 1].1
}

/// Bytes of window state over all shards: now and the most at once.
#[derive(Debug, Default)]
pub(crate) struct StateBytes {
    now: AtomicU64,
    peak: AtomicU64,
}

impl StateBytes {
    /// Moves the total from `old` to `new` bytes (one shard's change).
    fn update(&self, old: u64, new: u64) {
        let now = if new >= old {
            self.now.fetch_add(new - old, Ordering::Relaxed) + (new - old)
        } else {
            self.now.fetch_sub(old - new, Ordering::Relaxed) - (old - new)
        };
        self.peak.fetch_max(now, Ordering::Relaxed);
    }

    /// The most bytes of window state held at once.
    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }
}

/// A shard's state and loop.
pub(crate) struct Shard {
    index: usize,
    windowing: Windowing,
    schema: Arc<RowSchema>,
    number_fields: usize,
    /// Per source partition: open windows, ascending by start. Few are open at a time
    /// (about (out-of-orderness + size) / slide), so a short vector searched from the
    /// newest end beats a tree.
    windows: Vec<Vec<(i64, WindowTable)>>,
    /// Per source partition, for session windows: the open sessions.
    sessions: Vec<SessionTable>,
    sinks: Vec<Sender<SinkMsg>>,
    control: Arc<Control>,
    /// Bytes the rows waiting for the sinks may hold, over all shards.
    rows_budget: ByteBudget,
    /// Bytes of window state this shard is expected to stay under (a share of the
    /// pipeline's `memory_limit`); past it, a warning (once) and the gauge tell.
    state_share: u64,
    state_bytes: metrics::Gauge,
    state_total: Arc<StateBytes>,
    /// This shard's last measured state, bytes.
    state_last: u64,
    warned: bool,
}

impl Shard {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        index: usize,
        windowing: Windowing,
        schema: Arc<RowSchema>,
        partitions: u32,
        sinks: Vec<Sender<SinkMsg>>,
        control: Arc<Control>,
        rows_budget: ByteBudget,
        state_share: u64,
        state_total: Arc<StateBytes>,
    ) -> Self {
        let number_fields = schema.number_fields();
        Shard {
            index,
            windowing,
            number_fields,
            schema,
            windows: (0..partitions).map(|_| Vec::new()).collect(),
            sessions: (0..partitions)
                .map(|_| SessionTable::new(windowing.size_ms(), number_fields))
                .collect(),
            sinks,
            control,
            rows_budget,
            state_share,
            state_bytes: metrics::gauge!("lungfish_state_bytes", "shard" => index.to_string()),
            state_total,
            state_last: 0,
            warned: false,
        }
    }

    /// Bytes of open window state, all partitions (a few windows each: cheap).
    fn measure_state(&mut self) {
        let bytes: u64 = self
            .windows
            .iter()
            .flatten()
            .map(|(_, table)| table.heap_bytes())
            .sum::<u64>()
            + self
                .sessions
                .iter()
                .map(SessionTable::heap_bytes)
                .sum::<u64>();
        self.state_bytes.set(bytes as f64);
        self.state_total.update(self.state_last, bytes);
        self.state_last = bytes;
        if bytes > self.state_share && !self.warned {
            self.warned = true;
            tracing::warn!(
                state_bytes = bytes,
                share = self.state_share,
                "window state is over its share of [pipeline] memory_limit: too many keys \
                 in the open windows for the memory given; raise memory_limit, or shorten \
                 the windows or the out-of-orderness"
            );
        }
    }

    /// Puts back the state of `partition` saved by a state checkpoint.
    pub fn restore(
        &mut self,
        partition: u32,
        windows: Vec<(i64, WindowTable)>,
        sessions: SessionTable,
    ) {
        self.windows[partition as usize] = windows;
        self.sessions[partition as usize] = sessions;
        self.measure_state();
    }

    /// Runs until every sender is gone or the pipeline aborts.
    pub fn run(mut self, rx: Receiver<ShardMsg>) {
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(ShardMsg::Events(batch)) => {
                    self.add(&batch);
                    self.measure_state();
                    crate::telemetry::stage("window", batch.len() as u64, 0);
                    crate::telemetry::batch_size("window", batch.len() as u64);
                }
                Ok(ShardMsg::Marker(cp)) => {
                    if !self.close(&cp) {
                        return;
                    }
                    if let Some(state) = &cp.state {
                        let p = cp.partition as usize;
                        let written = crate::state::write_shard(
                            &state.dir,
                            self.index,
                            &self.windowing,
                            self.number_fields,
                            &self.windows[p],
                            &self.sessions[p],
                        );
                        match written {
                            Ok(()) => cp.ack(),
                            Err(e) => {
                                self.control.abort(format!(
                                    "state checkpoint {}: {e}",
                                    state.dir.display()
                                ));
                                return;
                            }
                        }
                    }
                }
                Ok(ShardMsg::Forget(partition)) => {
                    self.windows[partition as usize].clear();
                    self.sessions[partition as usize].clear();
                    self.measure_state();
                }
                Err(RecvTimeoutError::Timeout) => {
                    if self.control.is_aborting() {
                        return;
                    }
                }
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    fn add(&mut self, batch: &ShardBatch) {
        /// How many events ahead a slot is prefetched: enough to overlap a few misses.
        const AHEAD: usize = 8;
        if self.windowing.is_session() {
            let sessions = &mut self.sessions[batch.partition as usize];
            let n = self.number_fields;
            let mut key_from = 0usize;
            for i in 0..batch.len() {
                let key_to = batch.key_ends[i] as usize;
                sessions.add(
                    &batch.key_data[key_from..key_to],
                    batch.ts[i],
                    &batch.numbers[i * n..i * n + n],
                    &self.schema,
                );
                key_from = key_to;
            }
            return;
        }
        let windows = &mut self.windows[batch.partition as usize];
        let n = self.number_fields;
        for (start, partial) in &batch.partials {
            window_mut(windows, *start, n).merge_from(partial);
        }
        let mut key_from = 0usize;
        for i in 0..batch.len() {
            if let Some(&ts) = batch.ts.get(i + AHEAD) {
                let start = self.windowing.last_start(ts);
                if let Some((_, table)) = windows.iter().rev().find(|(s, _)| *s == start) {
                    table.prefetch(batch.hashes[i + AHEAD]);
                }
            }
            let key_to = batch.key_ends[i] as usize;
            let key = &batch.key_data[key_from..key_to];
            key_from = key_to;
            let numbers = &batch.numbers[i * n..i * n + n];
            let hash = batch.hashes[i];
            let (ts, schema) = (batch.ts[i], &*self.schema);
            self.windowing.for_each_open(ts, batch.cutoffs[i], |start| {
                window_mut(windows, start, n).add(hash, key, ts, numbers, schema);
            });
        }
    }

    /// Emits the rows the marker allows, drops the windows that became final, and
    /// passes rows and marker on. Returns false if the pipeline is aborting.
    ///
    /// A window *fires* when the watermark reaches its end: all its rows are emitted.
    /// With allowed lateness it stays in state until the final line (watermark minus
    /// the lateness) reaches its end; meanwhile each marker emits the rows late events
    /// changed (corrections: the same window and key, new values).
    fn close(&mut self, cp: &Arc<Checkpoint>) -> bool {
        let windows = &mut self.windows[cp.partition as usize];
        let size = self.windowing.size_ms();
        let final_line = self
            .windowing
            .final_line(cp.watermark)
            .max(cp.emitted_through);
        // Windows starting before `first_x` end at or before line x.
        let first_open = cp.watermark.saturating_sub(size).saturating_add(1);
        let first_kept = final_line.saturating_sub(size).saturating_add(1);
        let n_final = windows.partition_point(|(start, _)| *start < first_kept);
        let n_fired = windows.partition_point(|(start, _)| *start < first_open);
        let mut rows = WindowRows::new(self.schema.clone());
        let mut corrections = 0u64;
        if self.windowing.is_session() {
            let (_, c) =
                self.sessions[cp.partition as usize].close(cp.watermark, final_line, &mut rows);
            corrections += c;
        }
        for (start, table) in windows.drain(..n_final) {
            if table.has_fired() {
                let mut table = table;
                let (_, c) = table.emit_changes(start, self.windowing.end(start), &mut rows);
                corrections += c as u64;
            } else {
                table.emit(start, self.windowing.end(start), &mut rows);
            }
        }
        for (start, table) in windows.iter_mut().take(n_fired.saturating_sub(n_final)) {
            let (_, c) = table.emit_changes(*start, self.windowing.end(*start), &mut rows);
            corrections += c as u64;
        }
        if corrections > 0 {
            self.control
                .stats
                .corrections
                .fetch_add(corrections, Ordering::Relaxed);
            metrics::counter!("lungfish_window_corrections_total").increment(corrections);
        }
        let closed = rows;
        if !closed.is_empty() {
            let mut rows = closed;
            self.control
                .stats
                .windows
                .fetch_add(rows.len() as u64, Ordering::Relaxed);
            metrics::counter!("lungfish_windows_emitted_total").increment(rows.len() as u64);
            crate::telemetry::stage("window", 0, rows.len() as u64);
            // Wait for room in the sinks' queue bytes (backpressure in bytes).
            match self
                .rows_budget
                .acquire_patiently(rows.heap_bytes(), &self.control)
            {
                Some(lease) => rows.hold(lease),
                None => return false,
            }
            self.measure_state();
            let rows = Arc::new(rows);
            for tx in &self.sinks {
                if !send_patiently(tx, SinkMsg::Rows(rows.clone()), &self.control) {
                    return false;
                }
            }
        }
        for tx in &self.sinks {
            if !send_patiently(tx, SinkMsg::Marker(cp.clone()), &self.control) {
                return false;
            }
        }
        true
    }
}
