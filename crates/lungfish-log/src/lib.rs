//! `lungfish-log`: the embedded, durable, partitioned log at the heart of Lungfish.
//!
//! The log separates the moment data *arrives* from the moment it is *processed*.
//! Writers append batches of records to partitions and acknowledge them only once the
//! batch is durable; readers consume partitions from committed offsets at their own
//! pace. It is usable on its own as a durable local queue.
//!
//! ```
//! use lungfish_log::{BatchBuilder, Log, LogConfig, OffsetCommit};
//! use std::time::Duration;
//!
//! let dir = tempfile::tempdir().unwrap();
//! let log = Log::open(dir.path(), LogConfig::default()).unwrap();
//! let mut batch = BatchBuilder::new();
//! batch.push(b"hello");
//! batch.push(b"world");
//! let appended = log.append(0, &mut batch, None).unwrap();
//! appended.ticket.wait(Duration::from_secs(5)).unwrap(); // durable: safe to acknowledge
//!
//! let mut reader = log.reader(0, 0).unwrap();
//! let chunk = reader.read(1 << 20).unwrap();
//! let records: Vec<_> = chunk.records().map(|(_, r)| r.to_vec()).collect();
//! assert_eq!(records, vec![b"hello".to_vec(), b"world".to_vec()]);
//! log.commit("app", &[OffsetCommit { partition: 0, offset: 2, metadata: b"" }]).unwrap();
//! ```
//!
//! # Guarantees
//!
//! * An append returns a [`DurableTicket`]; it resolves only when the batch is durable
//!   under the [`FsyncPolicy`]. Acknowledge nothing before it resolves.
//! * Readers see only durable batches, in offset order, each verified by its CRC32C.
//! * A reader holds at most one read's worth of bytes (or one batch if larger) in
//!   memory, whatever the backlog.
//! * Committed consumer offsets are durable when [`Log::commit`] returns and never go
//!   backwards (only [`Log::reset_offsets`] moves them back, on purpose).
//! * With a [`Producer`], appends are idempotent: a writer that restarts can ask for its
//!   last sequence number per partition ([`Log::producer_seq`]) and continue exactly
//!   there; a batch whose sequence is not above the last is not written again.
//!
//! `examples/durable_queue.rs` uses the log on its own as a durable local queue: a
//! producer that acknowledges only durable batches, a consumer that commits its offsets,
//! and a restart in the middle of the stream (`cargo run -p lungfish-log --example
//! durable_queue`).
//!
//! # What blocks, what holds on, what drops data
//!
//! * **Blocks:** [`Log::open`] (recovery reads and fsyncs each partition's last
//!   segment); [`Log::append`] (one write, and an fsync when it starts a new segment);
//!   [`DurableTicket::wait`] and [`PartitionReader::wait`] (up to their timeout; their
//!   async forms have none: wrap them in one); [`Log::commit`] and
//!   [`Log::reset_offsets`] (a durable file replace); [`Log::sync`], [`Log::close`] and
//!   dropping the last [`Log`] clone (fsyncs); [`Log::apply_retention`]; [`repair`].
//!   Nothing waits for space: a full partition refuses appends ([`WhenFull::Refuse`]).
//! * **Holds on:** a [`BatchBuilder`] holds its records until cleared; a
//!   [`PartitionReader`] holds its largest read's buffer and an open segment file;
//!   readers and tickets hold their partition's files after the log is dropped. A
//!   consumer that has committed once holds back retention in every partition until it
//!   commits further; there is no call to remove it (delete its offsets file).
//! * **Drops data:** retention deletes whole segments ([`Retention`]; with no committed
//!   consumer, read or not), unread ones too with [`WhenFull::DeleteOldest`]; recovery
//!   truncates an unacknowledged torn tail (with [`FsyncPolicy::Never`], possibly
//!   acknowledged records after an operating-system crash); a failed write or fsync
//!   loses the batches not yet durable (their tickets fail, and the next append cuts
//!   them off); [`repair`] moves damaged tails aside; readers skip records that are gone.
//! * **One owner:** the log does not lock its directory. Open it in one place and
//!   clone the [`Log`]; never open it from two processes or run [`repair`] beside it.
//!
//! # On-disk format
//!
//! ```text
//! DIR/meta                                   "lungfish-log 1\npartitions N\n"
//! DIR/p0000/00000000000000000000.log          segment: batches from offset 0
//! DIR/p0000/00000000000000001234.log          next segment: first record is offset 1234
//! DIR/p0000/00000000000000001234.producers    producer state at the start of that segment
//! DIR/p0000/recovery-point                    last known durable position (two slots)
//! DIR/consumers/NAME.offsets                  committed offsets of consumer NAME
//! DIR/damaged/                                tails set aside by `repair`
//! ```
//!
//! A segment is a sequence of batch frames, nothing else. A frame (all integers
//! little-endian):
//!
//! ```text
//! 0   u32 magic          "LFB1"
//! 4   u32 body_len       bytes after the CRC field (header rest + records)
//! 8   u32 crc            CRC32C (Castagnoli) of the body_len bytes that follow
//! 12  u64 base_offset    offset of the first record
//! 20  u32 record_count   may be 0 (a batch that only records a producer position)
//! 24  u16 attributes     0 (reserved for compression)
//! 26  u16 reserved       0
//! 28  i64 append_time    wall-clock milliseconds since the Unix epoch at append
//! 36  u64 producer_id    0 = none
//! 44  u64 producer_seq   the producer's position after this batch
//! 52  records            record_count x (u32 length, bytes)
//! ```
//!
//! Offsets are per record and contiguous within a segment: each batch's `base_offset` is
//! the previous batch's `base_offset + record_count`, starting at the segment's base (its
//! name). Between segments there may be a gap, left by `repair`; readers skip it.
//! A producer snapshot holds `"LFP1"`, a count, `(u64 id, u64 seq)` pairs and a CRC32C.
//! An offsets file holds `"LFO1"`, a count, `(u32 partition, u64 offset, u32 length,
//! metadata)` entries and a CRC32C of everything before it. The recovery point holds two
//! 32-byte slots `"LFR1" | u64 seq | u64 segment base | u64 position | u32 CRC32C`.
//!
//! # Write and durability rules
//!
//! * Batches are written at the end of the active segment with one positioned write.
//! * A segment is rolled when the next batch would take it past `segment_bytes` and it
//!   holds at least one record (a segment is named after its first offset, so one holding
//!   only empty batches keeps growing instead). The old segment is fsynced first, then the
//!   producer snapshot of the new segment is written (temporary file, fsync, rename,
//!   directory fsync), then the new segment file is created. The directory is fsynced
//!   before any byte of the new segment counts as durable. So a new segment never exists
//!   on disk after an old one with a torn tail.
//! * The background thread fsyncs (`Always`: as soon as something was written, sharing
//!   one fsync among all appends that arrived meanwhile; `Every(d)`: fsyncs start `d`
//!   apart). After a successful fsync the durable mark advances and tickets and readers
//!   wake; at most once a second the durable position is also written as the partition's
//!   recovery point (slot `seq % 2`, fsynced), and on close.
//! * A failed write or fsync (or a panic in one) *poisons* the partition: its durable mark
//!   stops, waiting tickets fail. The next append *heals* it: the segment is cut back to
//!   the durable mark (segments started after it are removed), the producer state is
//!   rebuilt from the bytes before it, and a new epoch begins. A ticket remembers its
//!   epoch, so a batch lost to the failure is never reported durable, even when new bytes
//!   reach its position.
//! * Offsets and snapshots are replaced atomically: temporary file, fsync, rename,
//!   directory fsync. Every open fsyncs the log's directory and its parent, so the
//!   partition and consumer directories are durable entries.
//! * Retention (every second, and [`Log::apply_retention`]) deletes whole segments, oldest
//!   first, never the active one: beyond `target_bytes` or older than `max_age` once every
//!   consumer with committed offsets has read past them; at `max_bytes` either appends are
//!   refused ([`LogError::Full`], naming the lagging consumers) or unread segments are
//!   deleted and the consumers that lose data named ([`WhenFull`]). A deletion removes the
//!   segment from the readers' list, then the file, then fsyncs the directory; if the file
//!   cannot be removed the segment goes back into the list.
//!
//! # Recovery rules (on open)
//!
//! * Leftover `*.tmp` files are removed, and snapshots of segments that do not exist.
//! * Sealed segments (all but the last) are trusted as written: they were fsynced before
//!   the next segment was created. Their batches are checked when read; a bad batch is
//!   reported as [`LogError::Corrupt`] with partition, segment and byte position, never
//!   skipped. [`repair`] checks them all.
//! * The last segment is scanned from its start, verifying every batch (magic, length,
//!   CRC32C, record framing, offset continuity). At the first batch that is incomplete
//!   or fails a check: if it lies at or after the recovery point, it is an unacknowledged
//!   tail (a torn or reordered write): the file is truncated there and fsynced, and a
//!   warning says how many bytes were dropped ([`Log::recovery`] reports it too). If it
//!   lies before the recovery point, acknowledged data is damaged: open fails with
//!   [`LogError::Corrupt`] naming partition, segment and byte, and [`repair`] moves the
//!   tail aside (kept in `DIR/damaged/`) and reports what was lost. A last segment shorter
//!   than its recovery point is damaged the same way.
//! * The last segment and the directory are fsynced before its bytes count as durable
//!   (after a process crash they may have been only in the page cache).
//! * Producer state is loaded from the newest readable snapshot and brought up to date
//!   by walking the batch headers written after it.
//! * The partition count is recorded in `meta` and cannot change.

#![warn(missing_docs)]
#![warn(unreachable_pub)]
#![forbid(unsafe_code)]

mod config;
mod error;
mod format;
mod log;
mod offsets;
mod partition;
mod reader;
mod recovery_point;
mod repair;
mod segment;
mod storage;

pub use config::{FsyncPolicy, LogConfig, Retention, WhenFull};
pub use error::{LogError, Result};
pub use format::{
    BatchBuilder, BatchHeader, BatchView, HEADER_LEN as BATCH_HEADER_LEN, Producer, Records,
};
pub use log::{Log, PartitionStats, SegmentStats};
pub use offsets::{CommittedOffset, ConsumerOffsets, OffsetCommit};
pub use partition::{Appended, DurableTicket, RecoveryReport, RetentionReport};
pub use reader::{Chunk, PartitionReader};
pub use repair::{Damage, RepairReport, repair};

// Public only for the fuzz targets (`fuzz/fuzz_targets/batch_decode.rs` and
// `recovery_scan.rs`), which feed arbitrary bytes to `BatchView::decode`; readers get
// verified batches from `Chunk::batches` and never decode frames themselves.
#[doc(hidden)]
pub use format::FrameError;

// The file-system seam. Public only for the tests in `tests/` (`failpoints.rs`,
// `crash_points.rs`, `model_sim.rs`), which put a fault-injecting or simulated file system
// behind `Log::open_with_storage`. Not a supported extension point: the durability rules
// depend on exact rename, fsync and directory-fsync semantics that an implementation
// would have to reproduce.
#[doc(hidden)]
pub use storage::{FsStorage, ReadFile, Storage, WriteFile};
