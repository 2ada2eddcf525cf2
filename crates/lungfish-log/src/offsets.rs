//! Consumer offsets: per consumer name, per partition, the offset to resume from and a
//! small opaque metadata blob stored with it (Lungfish keeps window progress there).
//!
//! A commit rewrites the consumer's file atomically (temporary file, fsync, rename,
//! directory fsync), so a crash leaves either the old or the new offsets, never a mix.
//! Offsets never go backwards through [`commit`](crate::Log::commit); an explicit
//! [`reset`](crate::Log::reset_offsets) may move them anywhere.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::storage::{Storage, write_file_atomic};
use crate::{LogError, Result};

const MAGIC: &[u8; 4] = b"LFO1";
const SUFFIX: &str = ".offsets";

/// A consumer's committed position in one partition, as
/// [`Log::committed`](crate::Log::committed) returns it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CommittedOffset {
    /// The offset of the next record the consumer will process: resume reading here.
    pub offset: u64,
    /// Opaque data stored with the offset (at most 64 KiB), committed atomically with it.
    pub metadata: Vec<u8>,
}

/// One entry of a [`Log::commit`](crate::Log::commit) or
/// [`Log::reset_offsets`](crate::Log::reset_offsets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetCommit<'a> {
    /// The partition.
    pub partition: u32,
    /// The offset of the next record to process (not the last one processed): after
    /// processing a chunk, its [`next_offset`](crate::Chunk::next_offset).
    pub offset: u64,
    /// Opaque data to store with it, at most 64 KiB (`b""` for none).
    pub metadata: &'a [u8],
}

/// A consumer's committed offsets, indexed by partition: `None` where it never
/// committed.
pub type ConsumerOffsets = Vec<Option<CommittedOffset>>;

#[derive(Debug)]
pub(crate) struct OffsetStore {
    dir: PathBuf,
    partitions: u32,
    cache: HashMap<String, ConsumerOffsets>,
}

/// Checks that a consumer name is usable as a file name.
pub(crate) fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(LogError::InvalidConsumerName(name.to_owned()))
    }
}

impl OffsetStore {
    pub(crate) fn open(storage: &dyn Storage, dir: PathBuf, partitions: u32) -> Result<Self> {
        storage
            .create_dir_all(&dir)
            .map_err(|e| LogError::io("create directory", &dir, e))?;
        Ok(OffsetStore {
            dir,
            partitions,
            cache: HashMap::new(),
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}{SUFFIX}"))
    }

    /// Names of the consumers with committed offsets.
    pub(crate) fn consumers(&self, storage: &dyn Storage) -> Result<Vec<String>> {
        let mut names: Vec<String> = storage
            .list_dir(&self.dir)
            .map_err(|e| LogError::io("list directory", &self.dir, e))?
            .into_iter()
            .filter_map(|n| n.strip_suffix(SUFFIX).map(str::to_owned))
            .filter(|n| check_name(n).is_ok())
            .collect();
        names.sort();
        Ok(names)
    }

    pub(crate) fn get(&mut self, storage: &dyn Storage, name: &str) -> Result<ConsumerOffsets> {
        check_name(name)?;
        if let Some(v) = self.cache.get(name) {
            return Ok(v.clone());
        }
        let path = self.path(name);
        let offsets = if storage.exists(&path) {
            read_file(storage, &path, self.partitions)?
        } else {
            vec![None; self.partitions as usize]
        };
        self.cache.insert(name.to_owned(), offsets.clone());
        Ok(offsets)
    }

    /// Commits `entries`, keeping the other partitions' offsets. With `check`, refuses
    /// to move any offset backwards or past `ends`.
    pub(crate) fn commit(
        &mut self,
        storage: &dyn Storage,
        name: &str,
        entries: &[OffsetCommit<'_>],
        ends: &[u64],
        check: bool,
    ) -> Result<()> {
        let mut offsets = self.get(storage, name)?;
        for e in entries {
            let slot = offsets
                .get_mut(e.partition as usize)
                .ok_or(LogError::NoSuchPartition {
                    partition: e.partition,
                    partitions: self.partitions,
                })?;
            if e.metadata.len() > 64 * 1024 {
                return Err(LogError::Config(format!(
                    "offset metadata of {} bytes exceeds 64 KiB",
                    e.metadata.len()
                )));
            }
            let end = ends[e.partition as usize];
            if e.offset > end {
                return Err(LogError::OffsetPastEnd {
                    consumer: name.to_owned(),
                    partition: e.partition,
                    attempted: e.offset,
                    end,
                });
            }
            if check
                && let Some(old) = slot
                && e.offset < old.offset
            {
                return Err(LogError::OffsetRegression {
                    consumer: name.to_owned(),
                    partition: e.partition,
                    committed: old.offset,
                    attempted: e.offset,
                });
            }
            *slot = Some(CommittedOffset {
                offset: e.offset,
                metadata: e.metadata.to_vec(),
            });
        }
        write_file_atomic(storage, &self.path(name), &encode(&offsets))?;
        self.cache.insert(name.to_owned(), offsets);
        Ok(())
    }
}

fn encode(offsets: &ConsumerOffsets) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + offsets.len() * 24);
    out.extend_from_slice(MAGIC);
    let present = offsets.iter().filter(|o| o.is_some()).count() as u32;
    out.extend_from_slice(&present.to_le_bytes());
    for (p, o) in offsets.iter().enumerate() {
        if let Some(o) = o {
            out.extend_from_slice(&(p as u32).to_le_bytes());
            out.extend_from_slice(&o.offset.to_le_bytes());
            out.extend_from_slice(&(o.metadata.len() as u32).to_le_bytes());
            out.extend_from_slice(&o.metadata);
        }
    }
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

fn read_file(storage: &dyn Storage, path: &Path, partitions: u32) -> Result<ConsumerOffsets> {
    let bad = |reason: &str| LogError::BadFile {
        path: path.to_path_buf(),
        reason: reason.to_owned(),
    };
    let file = storage
        .open_read(path)
        .map_err(|e| LogError::io("open", path, e))?;
    let len = file.size().map_err(|e| LogError::io("stat", path, e))? as usize;
    if !(12..=64 * 1024 * 1024).contains(&len) {
        return Err(bad("offsets file has an impossible length"));
    }
    let mut bytes = vec![0; len];
    file.read_exact_at(&mut bytes, 0)
        .map_err(|e| LogError::io("read", path, e))?;
    let (body, crc) = bytes.split_at(len - 4);
    if crc32c::crc32c(body) != u32::from_le_bytes(crc.try_into().unwrap()) {
        return Err(bad("offsets file fails its CRC32C check"));
    }
    if &body[..4] != MAGIC {
        return Err(bad("not an offsets file"));
    }
    let mut offsets = vec![None; partitions as usize];
    let count = u32::from_le_bytes(body[4..8].try_into().unwrap());
    let mut at = 8usize;
    for _ in 0..count {
        if body.len() - at < 16 {
            return Err(bad("offsets file ends inside an entry"));
        }
        let p = u32::from_le_bytes(body[at..at + 4].try_into().unwrap());
        let offset = u64::from_le_bytes(body[at + 4..at + 12].try_into().unwrap());
        let mlen = u32::from_le_bytes(body[at + 12..at + 16].try_into().unwrap()) as usize;
        at += 16;
        if body.len() - at < mlen {
            return Err(bad("offsets file ends inside an entry"));
        }
        let slot = offsets
            .get_mut(p as usize)
            .ok_or_else(|| bad("offsets file names a partition the log does not have"))?;
        *slot = Some(CommittedOffset {
            offset,
            metadata: body[at..at + mlen].to_vec(),
        });
        at += mlen;
    }
    if at != body.len() {
        return Err(bad("trailing bytes in offsets file"));
    }
    Ok(offsets)
}
