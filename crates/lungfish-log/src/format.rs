//! The batch frame: how a batch of records is laid out in a segment file.
//!
//! See the crate documentation for the byte layout. This module owns encoding
//! ([`BatchBuilder`]) and decoding ([`BatchView`]); nothing else touches the bytes.

/// Identifies the start of a batch ("LFB1" read as a little-endian u32).
pub(crate) const BATCH_MAGIC: u32 = u32::from_le_bytes(*b"LFB1");
/// Size of the fixed batch header in bytes (exported as `BATCH_HEADER_LEN`). A batch's
/// encoded size is this plus, per record, 4 bytes of length and the record's bytes: use
/// it to size batches against [`LogConfig::max_batch_bytes`](crate::LogConfig).
pub const HEADER_LEN: usize = 52;
/// Bytes of the header covered by the CRC (everything after the CRC field).
const CRC_START: usize = 12;
/// Per-record framing: a little-endian u32 length.
pub(crate) const RECORD_PREFIX_LEN: usize = 4;

/// Identifies the writer of a batch so that a restarted writer can continue exactly
/// where its durable batches end: the log remembers the highest `seq` of every `id`
/// per partition and does not append a batch whose `seq` is not above it (the append
/// reports a [duplicate](crate::Appended::duplicate) instead).
///
/// ```
/// use lungfish_log::{BatchBuilder, Log, LogConfig, Producer};
///
/// let dir = tempfile::tempdir().unwrap();
/// let log = Log::open(dir.path(), LogConfig::default()).unwrap();
/// let mut batch = BatchBuilder::new();
/// batch.push(b"order 17");
/// let me = Producer { id: 42, seq: 1 };
/// assert!(!log.append(0, &mut batch, Some(me)).unwrap().duplicate);
/// // A retry of the same batch (after a restart, say) is not written twice.
/// assert!(log.append(0, &mut batch, Some(me)).unwrap().duplicate);
/// assert_eq!(log.producer_seq(0, 42), Some(1)); // where to continue
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Producer {
    /// A stable identifier of the writer, never 0.
    pub id: u64,
    /// The writer's position after this batch; strictly increasing per partition.
    pub seq: u64,
}

/// Accumulates records into one batch ready to append, without a copy at append time.
///
/// A batch is the unit of writing and of durability: its records get consecutive
/// offsets, are written with one write, and become durable (and visible to readers)
/// together. A record is any bytes, empty included.
///
/// The builder reserves room for the header up front; [`Log::append`](crate::Log::append)
/// fills it in. The builder holds all its records in memory; nothing bounds it but
/// [`LogConfig::max_batch_bytes`](crate::LogConfig), which the append checks (so check
/// [`encoded_len`](Self::encoded_len) while filling it). A builder can be reused after
/// [`clear`](Self::clear), keeping its allocation.
///
/// ```
/// use lungfish_log::{BatchBuilder, BATCH_HEADER_LEN};
///
/// let mut batch = BatchBuilder::with_capacity(64);
/// batch.push(b"first");
/// batch.push_with(|buf| buf.extend_from_slice(b"second"));
/// assert_eq!(batch.len(), 2);
/// assert_eq!(batch.encoded_len(), BATCH_HEADER_LEN + (4 + 5) + (4 + 6));
/// let records: Vec<&[u8]> = batch.records().map(|(_, r)| r).collect();
/// assert_eq!(records, [&b"first"[..], &b"second"[..]]);
/// batch.clear();
/// assert!(batch.is_empty());
/// ```
#[derive(Debug, Clone)]
pub struct BatchBuilder {
    buf: Vec<u8>,
    count: u32,
}

impl Default for BatchBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl BatchBuilder {
    /// An empty batch. Allocates only the header.
    pub fn new() -> Self {
        Self::with_capacity(0)
    }

    /// An empty batch with room for `bytes` of records before it reallocates.
    pub fn with_capacity(bytes: usize) -> Self {
        let mut buf = Vec::with_capacity(HEADER_LEN + bytes);
        buf.resize(HEADER_LEN, 0);
        BatchBuilder { buf, count: 0 }
    }

    /// Adds one record at the end of the batch, copying it.
    pub fn push(&mut self, record: &[u8]) {
        self.buf
            .extend_from_slice(&(record.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(record);
        self.count += 1;
    }

    /// Adds one record that `encode` writes straight into the batch buffer, avoiding an
    /// intermediate copy. The record is whatever `encode` appends to the vector.
    ///
    /// # Panics
    /// If `encode` shrinks the vector below its length at the call (it must only
    /// append). It must not rewrite bytes before the ones it appends either: that changes
    /// earlier records or breaks the batch's framing, which readers and recovery then
    /// treat as damage.
    pub fn push_with(&mut self, encode: impl FnOnce(&mut Vec<u8>)) {
        let at = self.buf.len();
        self.buf.extend_from_slice(&[0; RECORD_PREFIX_LEN]);
        encode(&mut self.buf);
        let len = (self.buf.len() - at - RECORD_PREFIX_LEN) as u32;
        self.buf[at..at + RECORD_PREFIX_LEN].copy_from_slice(&len.to_le_bytes());
        self.count += 1;
    }

    /// Number of records.
    pub fn len(&self) -> u32 {
        self.count
    }

    /// True if the batch holds no record. (An empty batch may still be appended, to
    /// record a producer's position.)
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Encoded size in bytes, header included: what the append checks against
    /// [`LogConfig::max_batch_bytes`](crate::LogConfig) and what it adds to the segment.
    pub fn encoded_len(&self) -> usize {
        self.buf.len()
    }

    /// The records pushed so far, in order. Their offsets count from 0 (the real offsets
    /// are only known at append).
    pub fn records(&self) -> Records<'_> {
        Records {
            rest: &self.buf[HEADER_LEN..],
            next_offset: 0,
        }
    }

    /// Removes all records, keeping the allocation.
    pub fn clear(&mut self) {
        self.buf.truncate(HEADER_LEN);
        self.buf[..HEADER_LEN].fill(0);
        self.count = 0;
    }

    /// Fills in the header and returns the finished frame.
    pub(crate) fn seal(
        &mut self,
        base_offset: u64,
        append_time_ms: i64,
        producer: Option<Producer>,
    ) -> &[u8] {
        let body_len = (self.buf.len() - CRC_START) as u32;
        let (pid, pseq) = producer.map_or((0, 0), |p| (p.id, p.seq));
        let h = &mut self.buf[..HEADER_LEN];
        h[0..4].copy_from_slice(&BATCH_MAGIC.to_le_bytes());
        h[4..8].copy_from_slice(&body_len.to_le_bytes());
        h[12..20].copy_from_slice(&base_offset.to_le_bytes());
        h[20..24].copy_from_slice(&self.count.to_le_bytes());
        h[24..28].fill(0); // attributes, reserved
        h[28..36].copy_from_slice(&append_time_ms.to_le_bytes());
        h[36..44].copy_from_slice(&pid.to_le_bytes());
        h[44..52].copy_from_slice(&pseq.to_le_bytes());
        let crc = crc32c::crc32c(&self.buf[CRC_START..]);
        self.buf[8..12].copy_from_slice(&crc.to_le_bytes());
        &self.buf
    }
}

/// The fixed header of a batch, decoded (see the crate documentation for the layout).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    /// Length of everything after the CRC field.
    pub body_len: u32,
    /// The stored CRC32C.
    pub crc: u32,
    /// Offset of the first record.
    pub base_offset: u64,
    /// Number of records.
    pub record_count: u32,
    /// Wall-clock time of the append, milliseconds since the Unix epoch.
    pub append_time_ms: i64,
    /// The producer that wrote it, if any.
    pub producer: Option<Producer>,
}

impl BatchHeader {
    /// Total size of the frame on disk, header included.
    pub fn frame_len(&self) -> u64 {
        CRC_START as u64 + self.body_len as u64
    }

    /// Offset after the last record.
    pub fn next_offset(&self) -> u64 {
        self.base_offset + self.record_count as u64
    }
}

/// Why a frame could not be decoded by [`BatchView::decode`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// Fewer bytes than the header or the declared length: the frame is cut short.
    Truncated,
    /// The bytes are not a valid frame.
    Invalid(String),
}

/// Decodes a header from the first [`HEADER_LEN`] bytes, checking what can be checked
/// without the body: the magic and a plausible length.
pub(crate) fn decode_header(bytes: &[u8], max_batch_len: usize) -> Result<BatchHeader, FrameError> {
    if bytes.len() < HEADER_LEN {
        return Err(FrameError::Truncated);
    }
    let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().unwrap());
    let u64_at = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().unwrap());
    let magic = u32_at(0);
    if magic != BATCH_MAGIC {
        return Err(FrameError::Invalid(format!("bad magic {magic:#010x}")));
    }
    let body_len = u32_at(4);
    let frame_len = CRC_START + body_len as usize;
    if frame_len < HEADER_LEN {
        return Err(FrameError::Invalid(format!(
            "length {body_len} shorter than a header"
        )));
    }
    if frame_len > max_batch_len {
        return Err(FrameError::Invalid(format!(
            "length {frame_len} exceeds the maximum batch size {max_batch_len}"
        )));
    }
    let pid = u64_at(36);
    let (base, count) = (u64_at(12), u32_at(20));
    if base.checked_add(count as u64).is_none() {
        return Err(FrameError::Invalid(format!(
            "offsets {base} + {count} overflow"
        )));
    }
    Ok(BatchHeader {
        body_len,
        crc: u32_at(8),
        base_offset: u64_at(12),
        record_count: u32_at(20),
        append_time_ms: u64_at(28) as i64,
        producer: (pid != 0).then(|| Producer {
            id: pid,
            seq: u64_at(44),
        }),
    })
}

/// A whole batch, verified (magic, length, CRC32C and record framing), borrowed from a
/// buffer. [`Chunk::batches`](crate::Chunk::batches) hands them out; use it to see batch
/// boundaries and headers (append time, producer), or
/// [`Chunk::records`](crate::Chunk::records) for just the records.
#[derive(Debug, Clone, Copy)]
pub struct BatchView<'a> {
    header: BatchHeader,
    records: &'a [u8],
}

impl<'a> BatchView<'a> {
    /// Decodes and verifies the frame at the start of `bytes`: magic, length, CRC32C and
    /// record framing. Returns the batch and its frame length.
    ///
    /// # Errors
    /// [`FrameError::Truncated`] if `bytes` ends inside the frame, [`FrameError::Invalid`]
    /// if a check fails or the frame is longer than `max_batch_len`.
    // Public only for the fuzz targets; readers get verified batches from
    // `Chunk::batches`.
    #[doc(hidden)]
    pub fn decode(bytes: &'a [u8], max_batch_len: usize) -> Result<Self, FrameError> {
        let header = decode_header(bytes, max_batch_len)?;
        let frame_len = header.frame_len() as usize;
        if bytes.len() < frame_len {
            return Err(FrameError::Truncated);
        }
        let actual = crc32c::crc32c(&bytes[CRC_START..frame_len]);
        if actual != header.crc {
            return Err(FrameError::Invalid(format!(
                "CRC32C mismatch: stored {:#010x}, computed {actual:#010x}",
                header.crc
            )));
        }
        let records = &bytes[HEADER_LEN..frame_len];
        // Check the record framing once, so iteration cannot go out of bounds.
        let mut at = 0usize;
        for i in 0..header.record_count {
            if records.len() - at < RECORD_PREFIX_LEN {
                return Err(FrameError::Invalid(format!(
                    "record {i} has no length prefix"
                )));
            }
            let len = u32::from_le_bytes(records[at..at + 4].try_into().unwrap()) as usize;
            at += RECORD_PREFIX_LEN;
            if records.len() - at < len {
                return Err(FrameError::Invalid(format!(
                    "record {i} overruns the batch"
                )));
            }
            at += len;
        }
        if at != records.len() {
            return Err(FrameError::Invalid(format!(
                "{} trailing bytes after the last record",
                records.len() - at
            )));
        }
        Ok(BatchView { header, records })
    }

    /// The decoded header.
    pub fn header(&self) -> &BatchHeader {
        &self.header
    }

    /// Total size of the frame, header included.
    pub fn frame_len(&self) -> usize {
        self.header.frame_len() as usize
    }

    /// All the batch's records with their offsets, in order (the first may come before a
    /// reader's position: see [`Chunk::batches`](crate::Chunk::batches)).
    pub fn records(&self) -> Records<'a> {
        Records {
            rest: self.records,
            next_offset: self.header.base_offset,
        }
    }
}

/// Iterator over `(offset, record bytes)` of a verified batch, from
/// [`BatchView::records`] or [`BatchBuilder::records`]. The record bytes borrow the
/// batch's buffer; nothing is copied.
#[derive(Debug, Clone)]
pub struct Records<'a> {
    rest: &'a [u8],
    next_offset: u64,
}

impl<'a> Iterator for Records<'a> {
    type Item = (u64, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        // The framing was verified in `BatchView::decode`.
        let len = u32::from_le_bytes(self.rest[..4].try_into().unwrap()) as usize;
        let record = &self.rest[4..4 + len];
        self.rest = &self.rest[4 + len..];
        let offset = self.next_offset;
        self.next_offset += 1;
        Some((offset, record))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_round_trip() {
        let mut b = BatchBuilder::new();
        b.push(b"alpha");
        b.push_with(|v| v.extend_from_slice(b"beta"));
        b.push(b"");
        let producer = Some(Producer { id: 7, seq: 99 });
        let frame = b.seal(40, 1234, producer).to_vec();
        let view = BatchView::decode(&frame, 1 << 20).unwrap();
        assert_eq!(view.header().base_offset, 40);
        assert_eq!(view.header().record_count, 3);
        assert_eq!(view.header().append_time_ms, 1234);
        assert_eq!(view.header().producer, producer);
        assert_eq!(view.frame_len(), frame.len());
        let recs: Vec<_> = view.records().collect();
        assert_eq!(
            recs,
            vec![(40, &b"alpha"[..]), (41, &b"beta"[..]), (42, &b""[..])]
        );
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let mut b = BatchBuilder::new();
        b.push(b"some record bytes");
        b.push(b"another");
        let frame = b.seal(0, 1, None).to_vec();
        for i in 0..frame.len() {
            for bit in 0..8 {
                let mut bad = frame.clone();
                bad[i] ^= 1 << bit;
                assert!(
                    BatchView::decode(&bad, 1 << 20).is_err(),
                    "flip of bit {bit} in byte {i} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn offsets_that_overflow_are_invalid() {
        // Found by fuzzing: iterating such a batch overflowed the offset counter.
        let mut b = BatchBuilder::new();
        b.push(b"");
        let frame = b.seal(u64::MAX, 0, None).to_vec();
        assert!(matches!(
            BatchView::decode(&frame, 1 << 20),
            Err(FrameError::Invalid(_))
        ));
    }

    #[test]
    fn short_input_is_truncated_not_invalid() {
        let mut b = BatchBuilder::new();
        b.push(b"xyz");
        let frame = b.seal(0, 1, None).to_vec();
        for cut in 0..frame.len() {
            assert_eq!(
                BatchView::decode(&frame[..cut], 1 << 20).unwrap_err(),
                FrameError::Truncated
            );
        }
    }

    #[test]
    fn clear_reuses_the_builder() {
        let mut b = BatchBuilder::with_capacity(64);
        b.push(b"one");
        b.clear();
        assert!(b.is_empty());
        b.push(b"two");
        let frame = b.seal(5, 0, None).to_vec();
        let view = BatchView::decode(&frame, 1 << 20).unwrap();
        assert_eq!(view.records().collect::<Vec<_>>(), vec![(5, &b"two"[..])]);
    }
}
