//! Settings of a log.

use std::time::Duration;

/// When appended bytes are made durable with `fsync` (`fdatasync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// After every write, with group commit: concurrent appends share one fsync.
    /// An append is durable against power loss when its ticket resolves.
    Always,
    /// At most this often. An append's ticket resolves at the next fsync after it, so
    /// acknowledgement latency is up to this interval; throughput is highest.
    Every(Duration),
    /// Never. Tickets resolve at once; data survives a process crash (it is in the
    /// page cache) but not an operating-system crash or power loss.
    Never,
}

impl Default for FsyncPolicy {
    /// `Every(10ms)`: group commit, acknowledgements within about 10 ms.
    fn default() -> Self {
        FsyncPolicy::Every(Duration::from_millis(10))
    }
}

/// What a partition does when it reaches [`Retention::max_bytes`] and no segment can be
/// deleted without losing data some consumer has not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WhenFull {
    /// Appends fail with [`LogError::Full`](crate::LogError::Full) until consumers
    /// catch up and retention frees space: nothing is lost, the writer is pushed back.
    #[default]
    Refuse,
    /// The oldest segments are deleted anyway; each consumer that had not read them is
    /// named in a warning and counted in the report. Writers are never refused.
    DeleteOldest,
}

/// When whole segments are deleted. A segment is only deleted once every consumer with
/// committed offsets has read past it, except when `max_bytes` is reached with
/// [`WhenFull::DeleteOldest`]. The active (last) segment is never deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Retention {
    /// Keep at most about this many bytes per partition (of consumed segments).
    pub target_bytes: Option<u64>,
    /// Delete consumed segments whose data is older than this.
    pub max_age: Option<Duration>,
    /// A partition never holds more than this; see [`WhenFull`].
    pub max_bytes: Option<u64>,
    /// What happens at `max_bytes`.
    pub when_full: WhenFull,
}

/// How a log is laid out and made durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// Number of partitions; fixed when the log is created.
    pub partitions: u32,
    /// A segment is sealed and a new one started once it would grow past this size.
    pub segment_bytes: u64,
    /// When appends become durable.
    pub fsync: FsyncPolicy,
    /// The largest batch frame accepted, header included. Bounds what a reader or
    /// recovery ever holds in memory for one batch.
    pub max_batch_bytes: usize,
    /// When old segments are deleted.
    pub retention: Retention,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            partitions: 4,
            segment_bytes: 128 * 1024 * 1024,
            fsync: FsyncPolicy::default(),
            max_batch_bytes: 8 * 1024 * 1024,
            retention: Retention::default(),
        }
    }
}

impl LogConfig {
    pub(crate) fn validate(&self) -> crate::Result<()> {
        let fail = |m: String| Err(crate::LogError::Config(m));
        if self.partitions == 0 || self.partitions > 65_536 {
            return fail(format!(
                "partitions must be in 1..=65536, not {}",
                self.partitions
            ));
        }
        if self.max_batch_bytes < 4096 || self.max_batch_bytes > (1 << 30) {
            return fail(format!(
                "max_batch_bytes must be in 4KiB..=1GiB, not {}",
                self.max_batch_bytes
            ));
        }
        if self.segment_bytes < self.max_batch_bytes as u64 {
            return fail(format!(
                "segment_bytes ({}) must be at least max_batch_bytes ({})",
                self.segment_bytes, self.max_batch_bytes
            ));
        }
        if let Some(max) = self.retention.max_bytes
            && max < 2 * self.segment_bytes
        {
            return fail(format!(
                "retention max_bytes ({max}) must be at least two segments ({} bytes)",
                2 * self.segment_bytes
            ));
        }
        if let FsyncPolicy::Every(d) = self.fsync
            && d.is_zero()
        {
            return fail("the fsync interval must be above zero (use Always)".into());
        }
        Ok(())
    }
}
