//! Checkpoint markers: how the pipeline learns that everything up to an offset has
//! reached durable storage, so the offset can be committed.
//!
//! After each micro-batch, a consumer sends one [`Checkpoint`] to every shard behind the
//! batch's events. A shard closes the windows the marker's watermark allows, sends their
//! rows to every sink and the marker behind them. A sink acknowledges the marker once the
//! rows before it are durably written. When every shard x sink path has acknowledged
//! it, the checkpoint is *complete*: every effect of the records before
//! [`Checkpoint::through`] is durable and every window ending at or before
//! [`Checkpoint::watermark`] is in every sink.
//!
//! Each path is first-in first-out, so checkpoints of a partition complete in order;
//! [`PartitionProgress`] keeps only the latest.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use lungfish_log::DurableTicket;

/// A marker behind a micro-batch of one partition.
#[derive(Debug)]
pub struct Checkpoint {
    /// The log partition.
    pub partition: u32,
    /// Increases with every checkpoint of the partition (two checkpoints may share
    /// `through`, e.g. the last micro-batch and the end-of-input marker behind it).
    pub seq: u64,
    /// Every record before this offset has been processed.
    pub through: u64,
    /// Windows ending at or before this time (epoch ms) are closed by this marker.
    pub watermark: i64,
    /// What the commit records as emitted-through: the watermark, except for the
    /// end-of-input marker, which closes everything but records only the last window
    /// that can hold an event seen.
    pub emitted_through: i64,
    /// The largest event time seen in the partition before `through`.
    pub max_ts: i64,
    /// Late events of this micro-batch written to the dead-letter queue, if any.
    pub dead_letters: Option<DurableTicket>,
    /// A state checkpoint: every shard saves the partition's open windows into this
    /// directory on the marker, and acknowledges once its file is durable (see
    /// [`crate::state`]).
    pub state: Option<StateCheckpoint>,
    remaining: AtomicUsize,
    progress: Arc<PartitionProgress>,
}

/// Where a state checkpoint is saved.
#[derive(Debug, Clone)]
pub struct StateCheckpoint {
    /// Its id (increasing), committed with the offset.
    pub id: u64,
    /// Its directory.
    pub dir: std::path::PathBuf,
}

/// What a completed checkpoint guarantees; see the module documentation.
#[derive(Debug, Clone)]
pub struct Completed {
    /// The checkpoint's sequence number.
    pub seq: u64,
    /// Every record before this offset has its effects durably written.
    pub through: u64,
    /// Every window ending at or before this time is durably in every sink.
    pub watermark: i64,
    /// See [`Checkpoint::emitted_through`].
    pub emitted_through: i64,
    /// The largest event time seen before `through`.
    pub max_ts: i64,
    /// The dead-letter write of the checkpoint, to wait for before committing.
    pub dead_letters: Option<DurableTicket>,
    /// The id of the state saved with it, for a state checkpoint.
    pub state: Option<u64>,
}

/// The latest completed checkpoint of a partition, and the latest completed state
/// checkpoint.
#[derive(Debug, Default)]
pub struct PartitionProgress {
    latest: Mutex<(Option<Completed>, Option<Completed>)>,
}

impl PartitionProgress {
    /// The latest completed checkpoint, if any completed.
    pub fn latest(&self) -> Option<Completed> {
        self.latest.lock().unwrap().0.clone()
    }

    /// The latest completed state checkpoint, if any completed.
    pub fn latest_with_state(&self) -> Option<Completed> {
        self.latest.lock().unwrap().1.clone()
    }

    fn complete(&self, done: Completed) {
        let mut latest = self.latest.lock().unwrap();
        // Completion calls of consecutive checkpoints may race; keep the newest.
        if done.state.is_some() && latest.1.as_ref().is_none_or(|l| done.seq > l.seq) {
            latest.1 = Some(done.clone());
        }
        if latest.0.as_ref().is_none_or(|l| done.seq > l.seq) {
            latest.0 = Some(done);
        }
    }
}

impl Checkpoint {
    /// A marker that completes after `paths` acknowledgements.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        partition: u32,
        seq: u64,
        through: u64,
        watermark: i64,
        emitted_through: i64,
        max_ts: i64,
        dead_letters: Option<DurableTicket>,
        state: Option<StateCheckpoint>,
        paths: usize,
        progress: Arc<PartitionProgress>,
    ) -> Arc<Self> {
        let cp = Arc::new(Checkpoint {
            partition,
            seq,
            through,
            watermark,
            emitted_through,
            max_ts,
            dead_letters,
            state,
            remaining: AtomicUsize::new(paths),
            progress,
        });
        if paths == 0 {
            cp.finish();
        }
        cp
    }

    /// Acknowledges one path. The last acknowledgement completes the checkpoint.
    pub fn ack(&self) {
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.finish();
        }
    }

    fn finish(&self) {
        self.progress.complete(Completed {
            seq: self.seq,
            through: self.through,
            watermark: self.watermark,
            emitted_through: self.emitted_through,
            max_ts: self.max_ts,
            dead_letters: self.dead_letters.clone(),
            state: self.state.as_ref().map(|s| s.id),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completes_after_every_path_and_keeps_the_latest() {
        let progress = Arc::new(PartitionProgress::default());
        let a = Checkpoint::new(0, 1, 10, 1000, 1000, 3000, None, None, 2, progress.clone());
        let b = Checkpoint::new(0, 2, 20, 2000, 2000, 4000, None, None, 2, progress.clone());
        a.ack();
        assert!(progress.latest().is_none());
        b.ack();
        b.ack();
        assert_eq!(progress.latest().unwrap().through, 20);
        a.ack(); // a late completion of an older checkpoint does not move back
        assert_eq!(progress.latest().unwrap().through, 20);
        // The end-of-input marker shares `through` with the batch before it, and still
        // counts as newer.
        let c = Checkpoint::new(
            0,
            3,
            20,
            i64::MAX,
            3000,
            4000,
            None,
            None,
            1,
            progress.clone(),
        );
        c.ack();
        assert_eq!(progress.latest().unwrap().watermark, i64::MAX);
    }
}
