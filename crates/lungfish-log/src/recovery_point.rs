//! The recovery point: a partition's last known durable position, kept so that recovery
//! can tell damage to acknowledged data (an error) from an unacknowledged torn tail (cut).
//!
//! The file `p0000/recovery-point` holds two 32-byte slots written alternately, each
//! `"LFR1" | u64 seq | u64 segment base | u64 position | u32 CRC32C of the 28 bytes
//! before it`. A write goes to the slot of `seq % 2` and is fsynced; the reader takes
//! the valid slot with the highest `seq`. A torn write spoils at most one slot, so the
//! other (older, still true) point survives. A point is written only after the data
//! before it was fsynced, so it never claims more than is durable.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::storage::{Storage, WriteFile};
use crate::{LogError, Result};

const MAGIC: &[u8; 4] = b"LFR1";
const SLOT: usize = 32;
/// File name of the recovery point in a partition directory.
pub(crate) const FILE: &str = "recovery-point";

/// A durable position: every batch before `position` in segment `seg_base` (and in
/// every segment before it) was fsynced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecoveryPoint {
    pub seq: u64,
    pub seg_base: u64,
    pub position: u64,
}

fn encode(p: &RecoveryPoint) -> [u8; SLOT] {
    let mut b = [0u8; SLOT];
    b[..4].copy_from_slice(MAGIC);
    b[4..12].copy_from_slice(&p.seq.to_le_bytes());
    b[12..20].copy_from_slice(&p.seg_base.to_le_bytes());
    b[20..28].copy_from_slice(&p.position.to_le_bytes());
    let crc = crc32c::crc32c(&b[..28]);
    b[28..].copy_from_slice(&crc.to_le_bytes());
    b
}

fn decode(b: &[u8]) -> Option<RecoveryPoint> {
    if b.len() < SLOT || &b[..4] != MAGIC {
        return None;
    }
    let crc = u32::from_le_bytes(b[28..32].try_into().ok()?);
    if crc32c::crc32c(&b[..28]) != crc {
        return None;
    }
    let u = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
    Some(RecoveryPoint {
        seq: u(4),
        seg_base: u(12),
        position: u(20),
    })
}

/// Reads the recovery point of the partition in `dir`; `None` if there is none yet or
/// both slots are damaged.
pub(crate) fn read(storage: &dyn Storage, dir: &Path) -> Option<RecoveryPoint> {
    let path = dir.join(FILE);
    let file = storage.open_read(&path).ok()?;
    let mut buf = [0u8; 2 * SLOT];
    let len = (file.size().ok()? as usize).min(buf.len());
    file.read_exact_at(&mut buf[..len], 0).ok()?;
    let a = decode(&buf[..len.min(SLOT)]);
    let b = if len >= 2 * SLOT {
        decode(&buf[SLOT..])
    } else {
        None
    };
    match (a, b) {
        (Some(a), Some(b)) => Some(if a.seq >= b.seq { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// Writes recovery points of one partition.
#[derive(Debug)]
pub(crate) struct Writer {
    path: PathBuf,
    file: Option<Arc<dyn WriteFile>>,
    next_seq: u64,
}

impl Writer {
    pub(crate) fn new(dir: &Path, last: Option<RecoveryPoint>) -> Self {
        Writer {
            path: dir.join(FILE),
            file: None,
            next_seq: last.map_or(1, |p| p.seq + 1),
        }
    }

    /// Durably records that everything before `position` of segment `seg_base` is
    /// durable. Call only after that data was fsynced.
    pub(crate) fn write(
        &mut self,
        storage: &dyn Storage,
        seg_base: u64,
        position: u64,
    ) -> Result<()> {
        let file = match &self.file {
            Some(f) => f.clone(),
            None => {
                let f = storage
                    .open_write(&self.path, true)
                    .map_err(|e| LogError::io("create", &self.path, e))?;
                // A new file's directory entry must be durable before the point counts.
                if let Some(dir) = self.path.parent() {
                    storage
                        .sync_dir(dir)
                        .map_err(|e| LogError::io("fsync directory", dir, e))?;
                }
                self.file = Some(f.clone());
                f
            }
        };
        let point = RecoveryPoint {
            seq: self.next_seq,
            seg_base,
            position,
        };
        let slot = (point.seq % 2) * SLOT as u64;
        file.write_all_at(&encode(&point), slot)
            .map_err(|e| LogError::io("write", &self.path, e))?;
        file.sync_data()
            .map_err(|e| LogError::io("fsync", &self.path, e))?;
        self.next_seq += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::FsStorage;

    #[test]
    fn the_newest_valid_slot_wins_and_a_torn_slot_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(&FsStorage, dir.path()), None);
        let mut w = Writer::new(dir.path(), None);
        w.write(&FsStorage, 0, 100).unwrap();
        w.write(&FsStorage, 0, 200).unwrap();
        w.write(&FsStorage, 5, 50).unwrap();
        let p = read(&FsStorage, dir.path()).unwrap();
        assert_eq!((p.seq, p.seg_base, p.position), (3, 5, 50));
        // Tear the newest slot (seq 3 lives in slot 1): the previous point survives.
        let path = dir.path().join(FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[SLOT + 20] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let p = read(&FsStorage, dir.path()).unwrap();
        assert_eq!((p.seq, p.seg_base, p.position), (2, 0, 200));
        // A writer continues after the highest sequence it finds.
        let w = Writer::new(dir.path(), Some(p));
        assert_eq!(w.next_seq, 3);
    }
}
