//! Reading a partition from an offset, in bounded chunks of whole, verified batches.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::format::{BatchView, FrameError, HEADER_LEN, decode_header};
use crate::partition::Partition;
use crate::storage::ReadFile;
use crate::{LogError, Result};

#[derive(Debug)]
struct Cursor {
    base: u64,
    path: PathBuf,
    file: Arc<dyn ReadFile>,
    /// File position of the next batch to read.
    pos: u64,
}

/// Reads one partition forward from an offset, from [`Log::reader`](crate::Log::reader).
/// Only durable batches are returned, in offset order, whole.
///
/// Memory is bounded: a read holds at most `max_bytes` (or one batch, if a single batch
/// is larger) whatever the backlog. The reader keeps its buffer (as large as its largest
/// read) and the current segment file open until it is dropped; a segment retention
/// deleted meanwhile keeps its disk space until the reader moves past it. Every batch
/// is verified (magic, length, CRC32C) before its records are handed out.
///
/// A reader never skips damaged data (it fails with [`LogError::Corrupt`]), but it does
/// skip **missing** data: if the records at its position were deleted by retention or
/// set aside by [`repair`](crate::repair), it moves on to the first record left, with a
/// warning. Compare [`Chunk::records`] offsets with what you expected if that matters.
///
/// A reader does not commit anything: commit with
/// [`Log::commit`](crate::Log::commit) after processing.
///
/// ```
/// use lungfish_log::{BatchBuilder, Log, LogConfig};
/// use std::time::Duration;
///
/// let dir = tempfile::tempdir().unwrap();
/// let log = Log::open(dir.path(), LogConfig::default()).unwrap();
/// let mut reader = log.reader(2, 0).unwrap();
/// assert!(reader.read(4096).unwrap().is_empty()); // nothing yet
/// assert!(!reader.wait(Duration::from_millis(1))); // and nothing arrives
///
/// for text in [&b"one"[..], b"two", b"three"] {
///     let mut batch = BatchBuilder::new();
///     batch.push(text);
///     let ticket = log.append(2, &mut batch, None).unwrap().ticket;
///     ticket.wait(Duration::from_secs(5)).unwrap();
/// }
/// reader.seek(1); // start at the second record
/// assert!(reader.wait(Duration::from_secs(5)));
/// let chunk = reader.read(4096).unwrap();
/// let got: Vec<(u64, &[u8])> = chunk.records().collect();
/// assert_eq!(got, [(1, &b"two"[..]), (2, &b"three"[..])]);
/// assert_eq!((chunk.record_count(), chunk.next_offset()), (2, 3));
/// assert_eq!(reader.position(), 3);
/// ```
#[derive(Debug)]
pub struct PartitionReader {
    part: Arc<Partition>,
    next_offset: u64,
    cursor: Option<Cursor>,
    buf: Vec<u8>,
    frames: Vec<(usize, usize)>,
}

/// Whole batches read by one [`PartitionReader::read`] call. It borrows the reader's
/// buffer, so drop it before the next read.
#[derive(Debug)]
pub struct Chunk<'a> {
    buf: &'a [u8],
    frames: &'a [(usize, usize)],
    from_offset: u64,
    next_offset: u64,
    max_batch: usize,
}

impl<'a> Chunk<'a> {
    /// True if nothing was read (the reader is at the durable end).
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Bytes read, framing included.
    pub fn bytes(&self) -> usize {
        self.buf.len()
    }

    /// The offset after the last record of the chunk: where the next read starts, and
    /// the offset to commit once the chunk is processed.
    pub fn next_offset(&self) -> u64 {
        self.next_offset
    }

    /// The batches, in order. The first may start before the reader's position; use
    /// [`records`](Self::records) to get exactly the records from the position on.
    /// Each call verifies the batches' CRC32C again.
    pub fn batches(&self) -> impl Iterator<Item = BatchView<'a>> + '_ {
        let buf = self.buf;
        let max = self.max_batch;
        self.frames.iter().map(move |&(start, len)| {
            // Verified when read; decoding again only re-reads the header.
            BatchView::decode(&buf[start..start + len], max).expect("frame verified at read")
        })
    }

    /// The records at or after the reader's position, with their offsets, in order.
    /// Offsets are consecutive within the chunk unless records were missing (see
    /// [`PartitionReader`]). Each call verifies the batches' CRC32C again.
    pub fn records(&self) -> impl Iterator<Item = (u64, &'a [u8])> + '_ {
        let from = self.from_offset;
        self.batches()
            .flat_map(|b| b.records())
            .filter(move |(offset, _)| *offset >= from)
    }

    /// Number of records [`records`](Self::records) yields, without iterating them.
    pub fn record_count(&self) -> u64 {
        self.next_offset - self.from_offset
    }
}

impl PartitionReader {
    pub(crate) fn new(part: Arc<Partition>, from_offset: u64) -> Self {
        PartitionReader {
            part,
            next_offset: from_offset,
            cursor: None,
            buf: Vec::new(),
            frames: Vec::new(),
        }
    }

    /// The partition read.
    pub fn partition(&self) -> u32 {
        self.part.id
    }

    /// The offset of the next record to read: after a read, the chunk's
    /// [`next_offset`](Chunk::next_offset).
    pub fn position(&self) -> u64 {
        self.next_offset
    }

    /// Moves the reader to `offset`, backwards or forwards. Does no I/O; the next read
    /// finds the batch holding `offset`.
    pub fn seek(&mut self, offset: u64) {
        self.next_offset = offset;
        self.cursor = None;
    }

    /// The durable end offset of the partition: how far there is data to read. Same as
    /// [`Log::end_offset`](crate::Log::end_offset).
    pub fn end_offset(&self) -> u64 {
        self.part.durable_mark().next_offset
    }

    /// Blocks the thread until there is a durable record at the reader's position, at
    /// most for `timeout`. Returns true if there is one; false on timeout, or at once if
    /// the log was closed.
    pub fn wait(&self, timeout: Duration) -> bool {
        self.part
            .wait_for_offset_blocking(self.next_offset, timeout)
    }

    /// Waits, without blocking the thread, until there is a durable record at the
    /// reader's position; true if there is one, false if the log was closed. Cancel
    /// safe. It has **no timeout** of its own: wrap it in one (`tokio::time::timeout`).
    /// Needs no particular async runtime.
    pub async fn wait_async(&self) -> bool {
        self.part.wait_for_offset(self.next_offset).await
    }

    /// Reads whole durable batches from the reader's position, up to about `max_bytes`
    /// (at least one batch if any is available), and moves the position past them.
    /// Returns an empty chunk at the end; it does not wait for data (see
    /// [`wait`](Self::wait)). Blocks for the file reads.
    ///
    /// # Errors
    /// A failed read hands out nothing and moves the position past no record that is
    /// still in the log, so it can be retried.
    /// * [`LogError::Corrupt`] if a batch fails its checks: the reader never skips past
    ///   damaged data (see [`repair`](crate::repair));
    /// * [`LogError::Io`] if a segment cannot be opened or read;
    /// * [`LogError::BadFile`] if segments kept disappearing under the reader (retention
    ///   racing it on a tiny log); retry.
    pub fn read(&mut self, max_bytes: usize) -> Result<Chunk<'_>> {
        self.frames.clear();
        let from = self.next_offset;
        let read_end = self.fill(max_bytes.max(HEADER_LEN))?;
        // If records at the position were deleted (retention) or set aside (repair), the
        // reader jumped forward: the chunk starts at its first batch, not at `from`.
        let from = match self.frames.first() {
            Some(&(start, len)) => {
                decode_header(&self.buf[start..start + len], self.part.max_batch)
                    .map_or(from, |h| from.max(h.base_offset))
            }
            None => self.next_offset,
        };
        Ok(Chunk {
            buf: &self.buf[..read_end],
            frames: &self.frames,
            from_offset: from,
            next_offset: self.next_offset,
            max_batch: self.part.max_batch,
        })
    }

    fn fill(&mut self, max_bytes: usize) -> Result<usize> {
        let mark = self.part.durable_mark();
        if self.next_offset >= mark.next_offset {
            return Ok(0);
        }
        // A few rounds at most: each round either reads, or moves past a segment that
        // ended or disappeared (retention), so the loop cannot spin.
        for _ in 0..1024 {
            if self.cursor.is_none() {
                match self.open_cursor()? {
                    Some(c) => self.cursor = Some(c),
                    None => return Ok(0),
                }
            }
            let cursor = self.cursor.as_ref().expect("opened above");
            let segments = self.part.segments();
            let Some(seg) = segments.iter().find(|s| s.base == cursor.base) else {
                // Deleted by retention (or a repair) while we read it: start again from
                // the first segment that exists.
                self.cursor = None;
                continue;
            };
            let end = match seg.sealed_len {
                Some(len) if cursor.base < mark.seg_base => len,
                _ => mark.position,
            };
            if cursor.pos >= end {
                if cursor.base < mark.seg_base {
                    // Sealed and fully read: on to the next segment.
                    let Some(next) = segments.iter().find(|s| s.base > cursor.base) else {
                        return Ok(0);
                    };
                    let next_base = next.base;
                    self.jump_to(next_base);
                    self.cursor = None;
                    continue;
                }
                return Ok(0);
            }
            return self.read_frames(end, max_bytes);
        }
        Err(LogError::BadFile {
            path: self.part.dir().to_path_buf(),
            reason: "the reader could not settle on a segment".into(),
        })
    }

    /// Moves the position forward to `offset` if it is behind it: records between were
    /// deleted (retention) or set aside (repair).
    fn jump_to(&mut self, offset: u64) {
        if self.next_offset < offset {
            tracing::warn!(
                partition = self.part.id,
                from = self.next_offset,
                to = offset,
                "records are missing from the log (deleted by retention or set aside by repair); skipping them"
            );
            self.next_offset = offset;
        }
    }

    /// Opens the segment holding the reader's position, at the batch holding it. `None`
    /// if the file vanished meanwhile (try again).
    fn open_cursor(&mut self) -> Result<Option<Cursor>> {
        let segments = self.part.segments();
        let Some(first) = segments.first() else {
            return Ok(None);
        };
        if self.next_offset < first.base {
            self.jump_to(first.base);
        }
        let seg = segments
            .iter()
            .rev()
            .find(|s| s.base <= self.next_offset)
            .unwrap_or(first);
        let file = match self.part.storage().open_read(&seg.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(LogError::io("open", &seg.path, e)),
        };
        let pos = self.part.position_of(seg, self.next_offset)?;
        Ok(Some(Cursor {
            base: seg.base,
            path: seg.path.clone(),
            file,
            pos,
        }))
    }

    /// Reads batches from the cursor up to `end` (a durable limit), at most about
    /// `max_bytes`, into `buf`; records their frames. Returns the bytes used.
    fn read_frames(&mut self, end: u64, max_bytes: usize) -> Result<usize> {
        let part_id = self.part.id;
        let max_batch = self.part.max_batch;
        let cursor = self.cursor.as_mut().unwrap();
        let available = (end - cursor.pos) as usize;
        let mut want = available.min(max_bytes);
        // The position moves only when the whole read succeeds: after an error the same
        // read can be retried, and no record before the error is passed over.
        let mut next_offset = self.next_offset;
        loop {
            // Only ever grow: zero-filling a buffer on every read costs more than the read.
            if self.buf.len() < want {
                self.buf.resize(want, 0);
            }
            cursor
                .file
                .read_exact_at(&mut self.buf[..want], cursor.pos)
                .map_err(|e| LogError::io("read", &cursor.path, e))?;
            let mut at = 0usize;
            while at < want {
                match BatchView::decode(&self.buf[at..want], max_batch) {
                    Ok(view) => {
                        let len = view.frame_len();
                        next_offset = next_offset.max(view.header().next_offset());
                        self.frames.push((at, len));
                        at += len;
                    }
                    Err(FrameError::Truncated) => break,
                    Err(FrameError::Invalid(reason)) => {
                        return Err(LogError::Corrupt {
                            partition: part_id,
                            segment: cursor.path.clone(),
                            position: cursor.pos + at as u64,
                            reason,
                        });
                    }
                }
            }
            if at == 0 {
                // The first batch is larger than `max_bytes`: read exactly that batch.
                let need = match decode_header(&self.buf[..want], max_batch) {
                    Ok(h) => h.frame_len() as usize,
                    Err(FrameError::Truncated) => HEADER_LEN,
                    Err(FrameError::Invalid(reason)) => {
                        return Err(LogError::Corrupt {
                            partition: part_id,
                            segment: cursor.path.clone(),
                            position: cursor.pos,
                            reason,
                        });
                    }
                };
                if need > available {
                    return Err(LogError::Corrupt {
                        partition: part_id,
                        segment: cursor.path.clone(),
                        position: cursor.pos,
                        reason: format!("batch of {need} bytes runs past the durable end"),
                    });
                }
                if need <= want {
                    return Err(LogError::Corrupt {
                        partition: part_id,
                        segment: cursor.path.clone(),
                        position: cursor.pos,
                        reason: "batch cannot be decoded".into(),
                    });
                }
                want = need;
                continue;
            }
            cursor.pos += at as u64;
            self.next_offset = next_offset;
            return Ok(at);
        }
    }
}
