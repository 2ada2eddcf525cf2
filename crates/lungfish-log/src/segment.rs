//! Segment files: naming, producer snapshots, and the scanner that walks a segment's
//! batches (used by recovery and by readers seeking to an offset).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::format::{BatchHeader, BatchView, FrameError, HEADER_LEN, decode_header};
use crate::storage::{ReadFile, Storage, write_file_atomic};
use crate::{LogError, Result};

/// Suffix of segment files.
pub(crate) const SEGMENT_SUFFIX: &str = ".log";
/// Suffix of producer snapshot files.
pub(crate) const SNAPSHOT_SUFFIX: &str = ".producers";
const SNAPSHOT_MAGIC: &[u8; 4] = b"LFP1";

/// File name of the segment whose first offset is `base`: 20 zero-padded digits.
pub(crate) fn segment_name(base: u64) -> String {
    format!("{base:020}{SEGMENT_SUFFIX}")
}

/// File name of the producer snapshot taken at the start of segment `base`.
pub(crate) fn snapshot_name(base: u64) -> String {
    format!("{base:020}{SNAPSHOT_SUFFIX}")
}

/// Parses `NNNNNNNNNNNNNNNNNNNN<suffix>` into its base offset.
pub(crate) fn parse_name(name: &str, suffix: &str) -> Option<u64> {
    let digits = name.strip_suffix(suffix)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The producer state: the last sequence number of each producer id.
pub(crate) type Producers = HashMap<u64, u64>;

/// Writes the producer snapshot for the segment starting at `base`, durably.
pub(crate) fn write_snapshot(
    storage: &dyn Storage,
    dir: &Path,
    base: u64,
    producers: &Producers,
) -> Result<()> {
    let mut bytes = Vec::with_capacity(12 + producers.len() * 16);
    bytes.extend_from_slice(SNAPSHOT_MAGIC);
    bytes.extend_from_slice(&(producers.len() as u32).to_le_bytes());
    let mut entries: Vec<_> = producers.iter().collect();
    entries.sort();
    for (id, seq) in entries {
        bytes.extend_from_slice(&id.to_le_bytes());
        bytes.extend_from_slice(&seq.to_le_bytes());
    }
    let crc = crc32c::crc32c(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    write_file_atomic(storage, &dir.join(snapshot_name(base)), &bytes)
}

/// Reads a producer snapshot; `None` if it is missing or damaged (the caller then
/// rebuilds the state by scanning older segments).
pub(crate) fn read_snapshot(storage: &dyn Storage, path: &Path) -> Option<Producers> {
    let file = storage.open_read(path).ok()?;
    let len = file.size().ok()? as usize;
    if !(12..=16 * 1024 * 1024).contains(&len) {
        return None;
    }
    let mut bytes = vec![0; len];
    file.read_exact_at(&mut bytes, 0).ok()?;
    let (body, crc) = bytes.split_at(len - 4);
    if crc32c::crc32c(body) != u32::from_le_bytes(crc.try_into().ok()?)
        || &body[..4] != SNAPSHOT_MAGIC
    {
        return None;
    }
    let count = u32::from_le_bytes(body[4..8].try_into().ok()?) as usize;
    if body.len() != 8 + count * 16 {
        return None;
    }
    let mut producers = Producers::with_capacity(count);
    for entry in body[8..].chunks_exact(16) {
        let id = u64::from_le_bytes(entry[..8].try_into().ok()?);
        let seq = u64::from_le_bytes(entry[8..].try_into().ok()?);
        producers.insert(id, seq);
    }
    Some(producers)
}

/// How a scan ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ScanEnd {
    /// Every byte up to the end belonged to a valid batch.
    Clean,
    /// The bytes from `valid_len` on are an incomplete batch.
    Truncated,
    /// The batch at `valid_len` failed a check.
    Invalid(String),
}

/// Result of scanning a segment.
#[derive(Debug, Clone)]
pub(crate) struct Scan {
    /// Bytes from the start that hold valid, contiguous batches.
    pub valid_len: u64,
    /// Offset after the last valid batch.
    pub next_offset: u64,
    /// Why the scan stopped before the end of the file, if it did.
    pub end: ScanEnd,
}

/// Reads a segment from the start, verifying every batch (magic, length, CRC32C,
/// record framing and offset continuity from `base`), and calls `visit` for each valid
/// batch with its byte position. Reads at most `limit` bytes if given. Memory use is
/// bounded by `max_batch` plus one read block.
pub(crate) fn scan_segment(
    file: &dyn ReadFile,
    path: &Path,
    base: u64,
    max_batch: usize,
    limit: Option<u64>,
    mut visit: impl FnMut(&BatchView<'_>, u64),
) -> Result<Scan> {
    const BLOCK: usize = 4 * 1024 * 1024;
    let size = file.size().map_err(|e| LogError::io("stat", path, e))?;
    let file_len = limit.map_or(size, |l| l.min(size));
    let mut buf: Vec<u8> = Vec::new();
    let mut pos = 0u64; // file position of buf[0]
    let mut next_offset = base;
    loop {
        if pos >= file_len {
            return Ok(Scan {
                valid_len: pos,
                next_offset,
                end: ScanEnd::Clean,
            });
        }
        let want = ((file_len - pos) as usize).min(BLOCK.max(max_batch));
        buf.resize(want, 0);
        file.read_exact_at(&mut buf, pos)
            .map_err(|e| LogError::io("read", path, e))?;
        let mut at = 0usize;
        loop {
            if at == buf.len() {
                break;
            }
            match BatchView::decode(&buf[at..], max_batch) {
                Ok(view) => {
                    let h = view.header();
                    if h.base_offset != next_offset {
                        return Ok(Scan {
                            valid_len: pos + at as u64,
                            next_offset,
                            end: ScanEnd::Invalid(format!(
                                "batch starts at offset {} but {next_offset} was expected",
                                h.base_offset
                            )),
                        });
                    }
                    visit(&view, pos + at as u64);
                    next_offset = h.next_offset();
                    at += view.frame_len();
                }
                Err(FrameError::Truncated) => {
                    // Either the batch continues past this block (read on) or the file
                    // ends inside it (a torn tail).
                    let at_pos = pos + at as u64;
                    let needed = match decode_header(&buf[at..], max_batch) {
                        Ok(h) => h.frame_len(),
                        Err(_) => HEADER_LEN as u64,
                    };
                    if at_pos + needed > file_len {
                        return Ok(Scan {
                            valid_len: at_pos,
                            next_offset,
                            end: ScanEnd::Truncated,
                        });
                    }
                    break;
                }
                Err(FrameError::Invalid(reason)) => {
                    return Ok(Scan {
                        valid_len: pos + at as u64,
                        next_offset,
                        end: ScanEnd::Invalid(reason),
                    });
                }
            }
        }
        if at == 0 {
            // Cannot happen (a frame never exceeds one read), but never loop forever.
            return Ok(Scan {
                valid_len: pos,
                next_offset,
                end: ScanEnd::Invalid("scanner made no progress".into()),
            });
        }
        pos += at as u64;
    }
}

/// Finds the byte position of the batch containing `offset` (or the first batch after
/// it) by walking batch headers from the start of the segment. Returns the position
/// and the base offset of that batch; the end of the valid data if none.
pub(crate) fn find_position(
    file: &dyn ReadFile,
    path: &Path,
    limit: u64,
    base: u64,
    offset: u64,
    max_batch: usize,
) -> Result<(u64, u64)> {
    let mut pos = 0u64;
    let mut next = base;
    let mut header = [0u8; HEADER_LEN];
    while pos + HEADER_LEN as u64 <= limit {
        file.read_exact_at(&mut header, pos)
            .map_err(|e| LogError::io("read", path, e))?;
        let h: BatchHeader = decode_header(&header, max_batch).map_err(|e| LogError::Corrupt {
            partition: u32::MAX,
            segment: path.to_path_buf(),
            position: pos,
            reason: format!("{e:?}"),
        })?;
        if h.next_offset() > offset {
            return Ok((pos, h.base_offset));
        }
        next = h.next_offset();
        pos += h.frame_len();
    }
    Ok((pos.min(limit), next))
}

/// Path of a partition's directory.
pub(crate) fn partition_dir(root: &Path, partition: u32) -> PathBuf {
    root.join(format!("p{partition:04}"))
}
