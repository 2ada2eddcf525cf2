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
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            partitions: 4,
            segment_bytes: 128 * 1024 * 1024,
            fsync: FsyncPolicy::default(),
            max_batch_bytes: 8 * 1024 * 1024,
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
        if let FsyncPolicy::Every(d) = self.fsync
            && d.is_zero()
        {
            return fail("the fsync interval must be above zero (use Always)".into());
        }
        Ok(())
    }
}
