//! Settings of a log.

use std::time::Duration;

/// When appended bytes are made durable with `fsync` (`fdatasync`), and so when a
/// [`DurableTicket`](crate::DurableTicket) resolves.
///
/// The fsyncs run on the log's background thread; an append never waits for one (but
/// see [`Log::append`](crate::Log::append) for the fsync of a segment roll).
/// [`Log::sync`](crate::Log::sync) fsyncs at once under every policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// As soon as something was written, with group commit: appends that arrive during
    /// an fsync share the next one. An append is durable against power loss when its
    /// ticket resolves.
    Always,
    /// At most this often (fsyncs start this far apart). An append's ticket resolves at
    /// the next fsync after it, so acknowledgement latency is up to this interval plus one
    /// fsync; throughput is highest. Durable against power loss when the ticket resolves,
    /// like `Always`. Must be above zero.
    Every(Duration),
    /// Never, except on an explicit [`Log::sync`](crate::Log::sync) or
    /// [`Log::close`](crate::Log::close). Tickets resolve at once and readers see data at
    /// once. Data survives a process crash (it is in the page cache) but **not** an
    /// operating-system crash or power loss: then acknowledged records can be lost, and
    /// recovery cuts them like an unacknowledged torn tail, with only a warning.
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
///
/// The choice is between pushing back on writers and losing unread data; there is no
/// third way with a bounded disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WhenFull {
    /// Appends that would take the partition past `max_bytes` fail at once (they do not
    /// block) with [`LogError::Full`](crate::LogError::Full), naming the consumers that
    /// hold the oldest segment, until they commit past it and retention frees space
    /// (within a second, or at once with
    /// [`Log::apply_retention`](crate::Log::apply_retention)). Nothing is lost; the
    /// writer is pushed back. A consumer that stopped for good keeps the partition full
    /// until its offsets file (`DIR/consumers/NAME.offsets`) is removed.
    #[default]
    Refuse,
    /// The oldest segments are deleted anyway, **unread data included**: each consumer
    /// that had not read them is named in a warning and in
    /// [`RetentionReport::lost`](crate::RetentionReport::lost), and its readers skip to the
    /// first record left. Writers are never refused.
    DeleteOldest,
}

/// When whole segments are deleted, per partition. **Retention deletes data**: read this
/// before turning it on.
///
/// Retention runs on the log's background thread every second, and when
/// [`Log::apply_retention`](crate::Log::apply_retention) is called. It deletes whole
/// segments, oldest first, never the active (last) one. A segment counts as *consumed*
/// once every consumer that has committed offsets (to any partition) has committed past
/// it in this partition; a consumer that committed other partitions but not this one
/// counts as being at offset 0 here, and so holds all of this partition's segments.
/// **Consumers that never committed do not count**: with no committed consumer at all,
/// every sealed segment counts as consumed, and `target_bytes` or `max_age` delete it
/// whether anybody read it or not. A consumer that wants its data kept commits (offset
/// 0 is fine) before retention can run.
///
/// The default keeps everything forever.
///
/// ```
/// use lungfish_log::{LogConfig, Retention, WhenFull};
/// use std::time::Duration;
///
/// // Keep about 1 GiB of consumed data per partition, at most a day of it, and never
/// // more than 4 GiB: past that, refuse appends until consumers catch up.
/// let config = LogConfig {
///     retention: Retention {
///         target_bytes: Some(1 << 30),
///         max_age: Some(Duration::from_secs(24 * 3600)),
///         max_bytes: Some(4 << 30),
///         when_full: WhenFull::Refuse,
///     },
///     ..LogConfig::default()
/// };
/// assert!(config.retention.max_bytes.unwrap() >= 2 * config.segment_bytes);
/// assert_eq!(Retention::default().max_bytes, None); // the default deletes nothing
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Retention {
    /// While the partition holds more than this many bytes, consumed segments are
    /// deleted. About, because only whole segments go and the active one stays.
    pub target_bytes: Option<u64>,
    /// Consumed segments are deleted once the segment after them started longer ago
    /// than this, so that every record in them is older (by the wall clock at append).
    pub max_age: Option<Duration>,
    /// A hard limit on a partition's bytes: consumed segments are deleted once the
    /// partition comes within one segment of it, and at the limit [`when_full`]
    /// decides between refusing appends and deleting unread data. Must be at least two
    /// segments ([`LogConfig::segment_bytes`]).
    ///
    /// [`when_full`]: Self::when_full
    pub max_bytes: Option<u64>,
    /// What happens at `max_bytes`.
    pub when_full: WhenFull,
}

/// How a log is laid out and made durable. Checked by [`Log::open`](crate::Log::open),
/// which fails with [`LogError::Config`](crate::LogError::Config) if a rule below is
/// broken.
///
/// ```
/// use lungfish_log::{FsyncPolicy, Log, LogConfig, LogError};
/// use std::time::Duration;
///
/// let config = LogConfig {
///     partitions: 2,
///     fsync: FsyncPolicy::Every(Duration::from_millis(5)),
///     ..LogConfig::default()
/// };
/// let dir = tempfile::tempdir().unwrap();
/// let log = Log::open(dir.path(), config.clone()).unwrap();
/// assert_eq!(log.partitions(), 2);
/// drop(log);
///
/// // The partition count is fixed when the log is created.
/// let four = LogConfig { partitions: 4, ..config };
/// assert!(matches!(
///     Log::open(dir.path(), four),
///     Err(LogError::PartitionCountMismatch { existing: 2, .. })
/// ));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// Number of partitions, 1 to 65 536; fixed when the log is created (opening an
    /// existing log with another count fails). Default 4.
    pub partitions: u32,
    /// A segment is sealed and a new one started once the next batch would take it past
    /// this size. At least `max_batch_bytes`. Retention deletes whole segments, so this
    /// is also its granularity. Default 128 MiB.
    pub segment_bytes: u64,
    /// When appends become durable. Default `Every(10ms)`.
    pub fsync: FsyncPolicy,
    /// The largest batch frame accepted, header included, 4 KiB to 1 GiB. Bounds what a
    /// reader or recovery ever holds in memory for one batch. Default 8 MiB.
    pub max_batch_bytes: usize,
    /// When old segments are deleted. Default: never.
    pub retention: Retention,
}

impl Default for LogConfig {
    /// 4 partitions, 128 MiB segments, `Every(10ms)` fsync, 8 MiB batches, no retention.
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
