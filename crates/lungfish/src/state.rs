//! State checkpoints: the open windows saved with the offset they cover, so a restart
//! loads them instead of replaying the log from the oldest open window.
//!
//! # The rule
//!
//! Every `checkpoint_interval` a consumer marks one of its checkpoints as a *state
//! checkpoint* with a fresh id. Each shard, on that marker (after closing what it
//! allows), writes its part of the partition's open windows to
//! `<data_dir>/state/<pipeline>/p<partition>/<id>/shard-<n>.bin` and fsyncs it; the
//! consumer writes its own part (the dedup memory) to `consumer.bin` in the same
//! directory. The checkpoint completes when every sink has the rows before it and every
//! part is durable. Only then is the offset committed, with the id in its metadata:
//! offset and state move together, atomically, in the one offset commit. A crash before
//! the commit leaves the previous commit pointing at the previous directory, which is
//! deleted only once a newer commit is durable.
//!
//! On start each partition's committed directory is read (every file checked against
//! its CRC32C), its keys are placed on the shards by hash (so the shard count may
//! change between runs), and reading resumes at the committed offset: no replay of
//! what the state covers.
//!
//! A damaged or missing state file stops the start with an error naming it; `lungfish
//! log reset-offsets` drops the committed state (windows are then rebuilt from the
//! offset it sets).

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::event::shard_for;
use crate::session::SessionTable;
use crate::window::{Accumulator, WindowTable, Windowing};

const MAGIC: &[u8; 8] = b"LFSTATE1";

/// Why saved state could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A file could not be read or written.
    #[error("state file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// A file is damaged or was written for other windows or aggregates.
    #[error(
        "state file {path}: {reason}; to start over from the committed offset without this state, run `lungfish log reset-offsets`"
    )]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Where a pipeline's state checkpoints live: `<data_dir>/state/<pipeline>`.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// The state directory of pipeline `name` under `data_dir`.
    pub fn new(data_dir: &Path, name: &str) -> Self {
        StateDir {
            root: data_dir.join("state").join(name),
        }
    }

    /// The directory of checkpoint `id` of `partition`.
    pub fn checkpoint(&self, partition: u32, id: u64) -> PathBuf {
        self.root
            .join(format!("p{partition}"))
            .join(format!("{id:020}"))
    }

    /// Creates the directory of checkpoint `id` of `partition`.
    ///
    /// # Errors
    /// The directory cannot be created.
    pub fn create(&self, partition: u32, id: u64) -> io::Result<PathBuf> {
        let dir = self.checkpoint(partition, id);
        fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    /// Makes the directory of checkpoint `id` (its entries) durable.
    ///
    /// # Errors
    /// The directory cannot be synced.
    pub fn sync(&self, partition: u32, id: u64) -> io::Result<()> {
        let dir = self.checkpoint(partition, id);
        File::open(&dir)?.sync_all()?;
        if let Some(parent) = dir.parent() {
            File::open(parent)?.sync_all()?;
        }
        Ok(())
    }

    /// Deletes the checkpoints of `partition` other than `keep` that are older than it
    /// (and, with `keep` = `None`, all of them).
    pub fn remove_older(&self, partition: u32, keep: Option<u64>) {
        let Ok(entries) = fs::read_dir(self.root.join(format!("p{partition}"))) else {
            return;
        };
        for entry in entries.flatten() {
            let id = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u64>().ok());
            if let Some(id) = id
                && keep.is_none_or(|k| id < k)
                && let Err(e) = fs::remove_dir_all(entry.path())
            {
                tracing::warn!(path = %entry.path().display(), "could not delete old state: {e}");
            }
        }
    }
}

/// Writes `body` to `path` with the magic and a CRC32C, and fsyncs it.
fn write_file(path: &Path, body: &[u8]) -> io::Result<()> {
    let mut w = BufWriter::with_capacity(1 << 20, File::create(path)?);
    w.write_all(MAGIC)?;
    w.write_all(&(body.len() as u64).to_le_bytes())?;
    w.write_all(body)?;
    w.write_all(&crc32c::crc32c(body).to_le_bytes())?;
    let file = w.into_inner().map_err(|e| e.into_error())?;
    file.sync_data()
}

/// Reads a file written by [`write_file`], checking its CRC.
fn read_file(path: &Path) -> Result<Vec<u8>, StateError> {
    let bytes = fs::read(path).map_err(|source| StateError::Io {
        path: path.to_owned(),
        source,
    })?;
    let damaged = |reason: &str| StateError::Damaged {
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    if bytes.len() < 20 || &bytes[..8] != MAGIC {
        return Err(damaged("not a Lungfish state file"));
    }
    let len = u64::from_le_bytes(bytes[8..16].try_into().unwrap()) as usize;
    if bytes.len() != 16 + len + 4 {
        return Err(damaged("truncated"));
    }
    let body = &bytes[16..16 + len];
    let crc = u32::from_le_bytes(bytes[16 + len..].try_into().unwrap());
    if crc32c::crc32c(body) != crc {
        return Err(damaged("checksum mismatch"));
    }
    Ok(body.to_vec())
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

/// Reads little-endian fields from a state body.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.rest.len() < n {
            return None;
        }
        let (a, b) = self.rest.split_at(n);
        self.rest = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
    }
    fn i64(&mut self) -> Option<i64> {
        self.u64().map(|v| v as i64)
    }
    fn f64s(&mut self, n: usize, out: &mut Vec<f64>) -> Option<()> {
        out.clear();
        for _ in 0..n {
            out.push(f64::from_bits(self.u64()?));
        }
        Some(())
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
}

/// The kinds of window a shard file holds.
const ALIGNED: u8 = 0;
const SESSIONS: u8 = 1;

/// Writes one shard's part of a partition's state to `dir/shard-<index>.bin`, durably.
///
/// # Errors
/// The file cannot be written.
pub fn write_shard(
    dir: &Path,
    index: usize,
    windowing: &Windowing,
    number_fields: usize,
    windows: &[(i64, WindowTable)],
    sessions: &SessionTable,
) -> io::Result<()> {
    let mut body = Vec::new();
    body.extend_from_slice(&(number_fields as u32).to_le_bytes());
    body.extend_from_slice(&windowing.size_ms().to_le_bytes());
    if !windowing.is_session() {
        body.push(ALIGNED);
        body.extend_from_slice(&(windows.len() as u32).to_le_bytes());
        for (start, table) in windows {
            body.extend_from_slice(&start.to_le_bytes());
            body.push(u8::from(table.has_fired()));
            body.extend_from_slice(&(table.len() as u64).to_le_bytes());
            table.for_each_key(|hash, key, count, aggs, dirty| {
                body.extend_from_slice(&hash.to_le_bytes());
                put_bytes(&mut body, key);
                body.extend_from_slice(&count.to_le_bytes());
                for a in aggs {
                    body.extend_from_slice(&a.to_bits().to_le_bytes());
                }
                body.push(u8::from(dirty));
            });
        }
    } else {
        body.push(SESSIONS);
        body.extend_from_slice(&(sessions.len() as u64).to_le_bytes());
        sessions.for_each_session(|key, start, last, acc, fired, dirty| {
            put_bytes(&mut body, key);
            body.extend_from_slice(&start.to_le_bytes());
            body.extend_from_slice(&last.to_le_bytes());
            body.push(u8::from(fired) | (u8::from(dirty) << 1));
            let (count, aggs) = acc.parts();
            body.extend_from_slice(&count.to_le_bytes());
            for a in aggs {
                body.extend_from_slice(&a.to_bits().to_le_bytes());
            }
        });
    }
    write_file(&dir.join(format!("shard-{index}.bin")), &body)
}

/// Writes a consumer's own part of a state checkpoint (`blob`) to `dir/consumer.bin`.
///
/// # Errors
/// The file cannot be written.
pub fn write_consumer(dir: &Path, blob: &[u8]) -> io::Result<()> {
    write_file(&dir.join("consumer.bin"), blob)
}

/// Reads a consumer's own part of a state checkpoint.
///
/// # Errors
/// The file is missing or damaged.
pub fn read_consumer(dir: &Path) -> Result<Vec<u8>, StateError> {
    read_file(&dir.join("consumer.bin"))
}

/// One partition's state, placed on the shards.
#[derive(Debug)]
pub struct Restored {
    /// Per shard: the open aligned windows, ascending by start.
    pub windows: Vec<Vec<(i64, WindowTable)>>,
    /// Per shard: the open sessions.
    pub sessions: Vec<SessionTable>,
    /// Keys (or sessions) restored.
    pub entries: u64,
}

/// Reads every shard file of the state checkpoint in `dir` and places each key on
/// `shards` shards by its hash.
///
/// # Errors
/// A file is missing, damaged or was written for other aggregates.
pub fn load(
    dir: &Path,
    shards: usize,
    windowing: &Windowing,
    number_fields: usize,
) -> Result<Restored, StateError> {
    let mut restored = Restored {
        windows: (0..shards).map(|_| Vec::new()).collect(),
        sessions: (0..shards)
            .map(|_| SessionTable::new(windowing.size_ms(), number_fields))
            .collect(),
        entries: 0,
    };
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|source| StateError::Io {
            path: dir.to_owned(),
            source,
        })?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("shard-") && n.ends_with(".bin"))
        })
        .collect();
    files.sort();
    let mut aggs = Vec::new();
    for path in files {
        let body = read_file(&path)?;
        let damaged = |reason: &str| StateError::Damaged {
            path: path.clone(),
            reason: reason.to_owned(),
        };
        let mut r = Reader { rest: &body };
        let nf = r.u32().ok_or_else(|| damaged("truncated"))? as usize;
        if nf != number_fields {
            return Err(damaged(&format!(
                "written for {nf} number fields, the pipeline aggregates {number_fields}: the aggregates changed"
            )));
        }
        let size = r.i64().ok_or_else(|| damaged("truncated"))?;
        if size != windowing.size_ms() {
            return Err(damaged(&format!(
                "written for windows of {size} ms, the pipeline's are {} ms: the window changed",
                windowing.size_ms()
            )));
        }
        let kind = r.u8().ok_or_else(|| damaged("truncated"))?;
        let truncated = || damaged("truncated");
        match kind {
            ALIGNED if !windowing.is_session() => {
                let n = r.u32().ok_or_else(truncated)?;
                for _ in 0..n {
                    let start = r.i64().ok_or_else(truncated)?;
                    let fired = r.u8().ok_or_else(truncated)? != 0;
                    let keys = r.u64().ok_or_else(truncated)?;
                    for _ in 0..keys {
                        let hash = r.u64().ok_or_else(truncated)?;
                        let key = r.bytes().ok_or_else(truncated)?;
                        let count = r.u64().ok_or_else(truncated)?;
                        r.f64s(nf * 3, &mut aggs).ok_or_else(truncated)?;
                        let dirty = r.u8().ok_or_else(truncated)? != 0;
                        let windows = &mut restored.windows[shard_for(hash, shards)];
                        let at = windows.partition_point(|(s, _)| *s < start);
                        if at == windows.len() || windows[at].0 != start {
                            let mut table = WindowTable::new(number_fields);
                            table.set_fired(fired);
                            windows.insert(at, (start, table));
                        }
                        windows[at].1.merge_key(hash, key, count, &aggs, dirty);
                        restored.entries += 1;
                    }
                }
            }
            SESSIONS if windowing.is_session() => {
                let n = r.u64().ok_or_else(truncated)?;
                for _ in 0..n {
                    let key = r.bytes().ok_or_else(truncated)?;
                    let start = r.i64().ok_or_else(truncated)?;
                    let last = r.i64().ok_or_else(truncated)?;
                    let flags = r.u8().ok_or_else(truncated)?;
                    let count = r.u64().ok_or_else(truncated)?;
                    r.f64s(nf * 3, &mut aggs).ok_or_else(truncated)?;
                    let acc = Accumulator::from_parts(count, &aggs, nf).ok_or_else(truncated)?;
                    let shard = shard_for(crate::event::key_hash(key), shards);
                    restored.sessions[shard].restore(
                        key,
                        start,
                        last,
                        acc,
                        flags & 1 != 0,
                        flags & 2 != 0,
                    );
                    restored.entries += 1;
                }
            }
            _ => {
                return Err(damaged(
                    "written for another kind of window: the window type changed",
                ));
            }
        }
        if !r.rest.is_empty() {
            return Err(damaged("unexpected bytes after the state"));
        }
    }
    Ok(restored)
}
