//! The log's error type.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Everything that can go wrong in the log. Each variant names the partition,
/// file and position involved where there is one, so an operator can act on it.
///
/// Cheap to clone (the I/O error is shared). New variants may be added.
/// [`is_transient`](Self::is_transient) tells the errors worth retrying from the rest.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// An I/O call failed. `op` says which (`"write"`, `"fsync"`, ...). A failed write
    /// or fsync also poisons the partition (see [`Poisoned`](Self::Poisoned)); a full
    /// disk is this variant with [`is_disk_full`](Self::is_disk_full) true.
    #[error("{op} {path}: {source}")]
    Io {
        /// The operation that failed.
        op: &'static str,
        /// The file or directory it was applied to.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: Arc<io::Error>,
    },
    /// A batch failed its checks (magic, length or CRC32C) somewhere other than the
    /// torn tail that recovery truncates: acknowledged data is damaged. The data past
    /// this point is not trusted and never skipped; [`repair`](crate::repair) sets it
    /// aside.
    #[error(
        "corrupt batch in partition {partition}, segment {segment}, at byte {position}: {reason}"
    )]
    Corrupt {
        /// The partition.
        partition: u32,
        /// The segment file.
        segment: PathBuf,
        /// Byte offset of the bad batch in the segment.
        position: u64,
        /// What check failed.
        reason: String,
    },
    /// A write or fsync failed (or panicked), so what was written since the last
    /// successful fsync is not trusted (after a failed fsync the page cache cannot be).
    /// Tickets of batches caught by the failure fail with this error: those batches are
    /// **not** durable and never will be; append them again. [`Log::sync`] fails with it
    /// too. The next [`Log::append`] heals the partition by cutting it back to its last
    /// durable byte.
    ///
    /// [`Log::sync`]: crate::Log::sync
    /// [`Log::append`]: crate::Log::append
    #[error("partition {partition} is unusable after an earlier failure: {reason}")]
    Poisoned {
        /// The partition.
        partition: u32,
        /// The failure that poisoned it.
        reason: String,
    },
    /// A batch is larger than [`LogConfig::max_batch_bytes`](crate::LogConfig). Nothing
    /// was written; split the batch.
    #[error("batch of {size} bytes exceeds the maximum batch size of {max} bytes")]
    BatchTooLarge {
        /// Encoded size of the batch.
        size: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The partition reached its size limit ([`crate::Retention::max_bytes`]) and no
    /// segment can be deleted without losing unread data: try again after consumers
    /// catch up. Nothing was written.
    #[error(
        "partition {partition} is full: {bytes} bytes of at most {limit}; waiting for consumers {lagging:?} to catch up"
    )]
    Full {
        /// The partition.
        partition: u32,
        /// Its size.
        bytes: u64,
        /// The limit.
        limit: u64,
        /// Consumers that have not read the oldest segment.
        lagging: Vec<String>,
    },
    /// A commit tried to move a consumer's offset backwards. Nothing was committed.
    #[error(
        "consumer {consumer:?} partition {partition}: offset {attempted} is behind the committed offset {committed}; offsets never go backwards (use reset to replay)"
    )]
    OffsetRegression {
        /// The consumer name.
        consumer: String,
        /// The partition.
        partition: u32,
        /// The offset already committed.
        committed: u64,
        /// The offset the commit asked for.
        attempted: u64,
    },
    /// A commit named an offset past the durable end of the partition. Nothing was
    /// committed.
    #[error(
        "consumer {consumer:?} partition {partition}: offset {attempted} is past the end of the partition ({end})"
    )]
    OffsetPastEnd {
        /// The consumer name.
        consumer: String,
        /// The partition.
        partition: u32,
        /// The offset the commit asked for.
        attempted: u64,
        /// The partition's end offset.
        end: u64,
    },
    /// A partition number outside `0..partitions`.
    #[error("partition {partition} does not exist (the log has {partitions})")]
    NoSuchPartition {
        /// The partition asked for.
        partition: u32,
        /// How many the log has.
        partitions: u32,
    },
    /// The log on disk was created with a different number of partitions.
    #[error(
        "the log at {dir} has {existing} partitions but {configured} were configured; the partition count cannot change"
    )]
    PartitionCountMismatch {
        /// The log directory.
        dir: PathBuf,
        /// Partitions on disk.
        existing: u32,
        /// Partitions in the configuration.
        configured: u32,
    },
    /// A consumer name that cannot be used as a file name.
    #[error(
        "invalid consumer name {0:?}: use letters, digits, '-', '_' and '.', not starting with '.'"
    )]
    InvalidConsumerName(String),
    /// A file the log owns is not in the expected format.
    #[error("{path}: {reason}")]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A configuration or argument is not usable: an invalid
    /// [`LogConfig`](crate::LogConfig) at open, producer id 0 at append, or offset
    /// metadata over 64 KiB at commit.
    #[error("invalid log configuration: {0}")]
    Config(String),
    /// A wait for durability did not finish in time. The batch may still become
    /// durable: waiting again is safe.
    #[error("timed out after {0:?} waiting for the log")]
    Timeout(Duration),
    /// The log was closed (or its last handle dropped) before the batch waited for became
    /// durable.
    #[error("the log is closed")]
    Closed,
}

impl LogError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        LogError::Io {
            op,
            path: path.into(),
            source: Arc::new(source),
        }
    }

    /// True if the error is the disk being full (`ENOSPC`), which callers usually
    /// turn into "try again later" rather than a crash.
    ///
    /// ```
    /// use lungfish_log::LogError;
    /// assert!(!LogError::Closed.is_disk_full());
    /// ```
    pub fn is_disk_full(&self) -> bool {
        matches!(self, LogError::Io { source, .. } if source.raw_os_error() == Some(28))
    }

    /// True if retrying the same call later may succeed: the disk or the partition was
    /// full, a wait timed out, or a write failed and the partition heals on the next
    /// append. Every [`Io`](Self::Io) error counts, including ones a retry will not fix
    /// (a missing permission, say): bound your retries.
    ///
    /// ```
    /// use lungfish_log::LogError;
    /// use std::time::Duration;
    /// assert!(LogError::Timeout(Duration::from_secs(1)).is_transient());
    /// assert!(!LogError::Closed.is_transient());
    /// ```
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            LogError::Full { .. }
                | LogError::Timeout(_)
                | LogError::Poisoned { .. }
                | LogError::Io { .. }
        )
    }
}

/// Shorthand for results in this crate: the error is [`LogError`] unless given.
pub type Result<T, E = LogError> = std::result::Result<T, E>;
