//! Offline repair of a damaged log: verify every batch of every segment, and move the
//! tail of a segment from its first bad batch aside, kept in `DIR/damaged/`, so the log
//! opens again. Nothing is deleted; what was moved is reported, with the offsets lost.
//!
//! Run it on a log no process has open. Later segments stay where they are: readers
//! skip the gap in offsets the cut leaves (with a warning).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::recovery_point;
use crate::segment::{
    SEGMENT_SUFFIX, ScanEnd, parse_name, partition_dir, scan_segment, segment_name,
};
use crate::storage::{FsStorage, Storage};
use crate::{LogError, Result};

/// The largest batch repair accepts as plausible (the format's length field allows more;
/// anything this large is damage).
const MAX_PLAUSIBLE_BATCH: usize = 1 << 30;

/// One damaged segment and what [`repair`] did about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// The partition.
    pub partition: u32,
    /// The segment file.
    pub segment: PathBuf,
    /// Byte position of the first bad batch.
    pub position: u64,
    /// What was wrong with it.
    pub reason: String,
    /// Bytes moved aside.
    pub bytes_moved: u64,
    /// Where they were moved (empty if nothing could be moved: the bytes were missing).
    pub moved_to: PathBuf,
    /// The first offset lost.
    pub first_lost_offset: u64,
    /// The offset after the last one lost, when a later segment says (`None` for the
    /// last segment: the records after the damage cannot be counted).
    pub end_lost_offset: Option<u64>,
}

/// What [`repair`] found and did. An empty `damaged` means the log verified clean and
/// nothing was changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepairReport {
    /// Segments checked.
    pub segments_checked: usize,
    /// Batches verified intact.
    pub batches_ok: u64,
    /// Damaged segments, cut and moved aside.
    pub damaged: Vec<Damage>,
}

/// Verifies every batch of the log in `dir` and moves damaged tails aside, so that a log
/// [`Log::open`](crate::Log::open) refuses with [`LogError::Corrupt`] opens again.
///
/// This **drops data from the log**: from the first bad batch of a segment, the rest of
/// that segment is cut off (kept in `DIR/damaged/`, not deleted) and the offsets lost
/// are reported. Later segments stay; readers skip the gap with a warning. A torn tail
/// of the last segment (an interrupted write) is cut the same way; opening the log
/// would also cut it, but only past the recovery point.
///
/// Run it only on a log no process has open: nothing stops it from running beside an
/// open [`Log`](crate::Log), which would then lose track of its files. It blocks for a
/// full read of every segment.
///
/// ```
/// use lungfish_log::{repair, BatchBuilder, Log, LogConfig};
///
/// let dir = tempfile::tempdir().unwrap();
/// let log = Log::open(dir.path(), LogConfig::default()).unwrap();
/// let mut batch = BatchBuilder::new();
/// batch.push(b"x");
/// log.append(0, &mut batch, None).unwrap();
/// log.close().unwrap();
/// drop(log);
/// let report = repair(dir.path()).unwrap();
/// assert!(report.damaged.is_empty()); // intact: nothing changed
/// assert_eq!(report.batches_ok, 1);
/// ```
///
/// # Errors
/// [`LogError::Io`] if `dir` holds no log or a file cannot be read, written, cut or
/// fsynced; [`LogError::BadFile`] if its `meta` file is damaged. Damage found is not an
/// error: it is in the report. Segments repaired before an error stay repaired.
pub fn repair(dir: impl AsRef<Path>) -> Result<RepairReport> {
    repair_with_storage(dir.as_ref(), Arc::new(FsStorage))
}

/// [`repair`] through `storage`.
///
/// # Errors
/// As [`repair`].
pub(crate) fn repair_with_storage(dir: &Path, storage: Arc<dyn Storage>) -> Result<RepairReport> {
    let partitions = crate::log::read_meta(&*storage, &dir.join("meta"))?;
    let mut report = RepairReport::default();
    let damaged_dir = dir.join("damaged");
    for p in 0..partitions {
        let pdir = partition_dir(dir, p);
        let names = storage
            .list_dir(&pdir)
            .map_err(|e| LogError::io("list directory", &pdir, e))?;
        let mut bases: Vec<u64> = names
            .iter()
            .filter_map(|n| parse_name(n, SEGMENT_SUFFIX))
            .collect();
        bases.sort_unstable();
        for (i, &base) in bases.iter().enumerate() {
            let path = pdir.join(segment_name(base));
            let file = storage
                .open_write(&path, false)
                .map_err(|e| LogError::io("open", &path, e))?;
            let len = file.size().map_err(|e| LogError::io("stat", &path, e))?;
            let mut batches = 0u64;
            let scan = scan_segment(&*file, &path, base, MAX_PLAUSIBLE_BATCH, None, |_, _| {
                batches += 1
            })?;
            report.segments_checked += 1;
            report.batches_ok += batches;
            // A segment cut short below its recovery point lost acknowledged bytes that
            // cannot be set aside: record the loss and lower the point.
            if let Some(point) = recovery_point::read(&*storage, &pdir)
                && point.seg_base == base
                && point.position > len
                && scan.end == ScanEnd::Clean
            {
                recovery_point::Writer::new(&pdir, Some(point)).write(&*storage, base, len)?;
                report.damaged.push(Damage {
                    partition: p,
                    segment: path.clone(),
                    position: len,
                    reason: format!(
                        "{} bytes missing before the recovery point",
                        point.position - len
                    ),
                    bytes_moved: 0,
                    moved_to: PathBuf::new(),
                    first_lost_offset: scan.next_offset,
                    end_lost_offset: bases.get(i + 1).copied(),
                });
                continue;
            }
            if scan.end == ScanEnd::Clean {
                continue;
            }
            let reason = match &scan.end {
                ScanEnd::Truncated => "incomplete batch".to_owned(),
                ScanEnd::Invalid(r) => r.clone(),
                ScanEnd::Clean => unreachable!(),
            };
            // Keep the damaged bytes: copy them out, make the copy durable, then cut.
            storage
                .create_dir_all(&damaged_dir)
                .map_err(|e| LogError::io("create directory", &damaged_dir, e))?;
            let moved_to = damaged_dir.join(format!(
                "p{p:04}-{}.from-{}",
                segment_name(base),
                scan.valid_len
            ));
            let out = storage
                .open_write(&moved_to, true)
                .map_err(|e| LogError::io("create", &moved_to, e))?;
            let mut at = scan.valid_len;
            let mut buf = vec![0u8; 1 << 20];
            while at < len {
                let n = ((len - at) as usize).min(buf.len());
                file.read_exact_at(&mut buf[..n], at)
                    .map_err(|e| LogError::io("read", &path, e))?;
                out.write_all_at(&buf[..n], at - scan.valid_len)
                    .map_err(|e| LogError::io("write", &moved_to, e))?;
                at += n as u64;
            }
            out.sync_data()
                .map_err(|e| LogError::io("fsync", &moved_to, e))?;
            storage
                .sync_dir(&damaged_dir)
                .map_err(|e| LogError::io("fsync directory", &damaged_dir, e))?;
            file.set_len(scan.valid_len)
                .map_err(|e| LogError::io("truncate", &path, e))?;
            file.sync_data()
                .map_err(|e| LogError::io("fsync", &path, e))?;
            // The recovery point must not claim bytes that are gone.
            if let Some(point) = recovery_point::read(&*storage, &pdir)
                && point.seg_base == base
                && point.position > scan.valid_len
            {
                recovery_point::Writer::new(&pdir, Some(point)).write(
                    &*storage,
                    base,
                    scan.valid_len,
                )?;
            }
            tracing::warn!(
                partition = p,
                segment = %path.display(),
                position = scan.valid_len,
                bytes = len - scan.valid_len,
                moved_to = %moved_to.display(),
                "log repair: moved a damaged tail aside"
            );
            report.damaged.push(Damage {
                partition: p,
                segment: path,
                position: scan.valid_len,
                reason,
                bytes_moved: len - scan.valid_len,
                moved_to,
                first_lost_offset: scan.next_offset,
                end_lost_offset: bases.get(i + 1).copied(),
            });
        }
    }
    Ok(report)
}
