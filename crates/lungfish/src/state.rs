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
use crate::window::{
    Accumulator, KeySketches, OwnedKeySketches, RowSchema, SketchPlan, WindowTable, Windowing,
};

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
        "state file {path}: {reason}; to start over without this state, run `lungfish log reset-offsets PIPELINE_FILE --consumer NAME --to earliest` (the windows are then rebuilt from the log)"
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

/// The kinds of window a shard file holds. The `_SKETCHED` kinds are followed by the
/// sketch plan, and every key (or session) by its encoded sketches (empty if it has
/// none); files without sketch aggregates are written as before they existed.
const ALIGNED: u8 = 0;
const SESSIONS: u8 = 1;
const ALIGNED_SKETCHED: u8 = 2;
const SESSIONS_SKETCHED: u8 = 3;

/// Appends a key's sketches as a length-prefixed block: empty unless they follow `plan`.
fn put_sketches(
    out: &mut Vec<u8>,
    plan: &std::sync::Arc<SketchPlan>,
    sketches: Option<KeySketches<'_>>,
) {
    let at = out.len();
    out.extend_from_slice(&0u32.to_le_bytes());
    if let Some(k) = sketches
        && (std::sync::Arc::ptr_eq(k.plan(), plan) || **k.plan() == **plan)
    {
        k.encode(out);
    }
    let len = (out.len() - at - 4) as u32;
    out[at..at + 4].copy_from_slice(&len.to_le_bytes());
}

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
    let put_plan = |body: &mut Vec<u8>, plan: &SketchPlan| {
        let mut encoded = Vec::new();
        plan.encode(&mut encoded);
        put_bytes(body, &encoded);
    };
    if !windowing.is_session() {
        let plan = windows.iter().find_map(|(_, t)| t.sketch_plan()).cloned();
        match &plan {
            Some(plan) => {
                body.push(ALIGNED_SKETCHED);
                put_plan(&mut body, plan);
            }
            None => body.push(ALIGNED),
        }
        body.extend_from_slice(&(windows.len() as u32).to_le_bytes());
        for (start, table) in windows {
            body.extend_from_slice(&start.to_le_bytes());
            body.push(u8::from(table.has_fired()));
            body.extend_from_slice(&(table.len() as u64).to_le_bytes());
            table.for_each_key(|hash, key, count, aggs, sketches, dirty| {
                body.extend_from_slice(&hash.to_le_bytes());
                put_bytes(&mut body, key);
                body.extend_from_slice(&count.to_le_bytes());
                for a in aggs {
                    body.extend_from_slice(&a.to_bits().to_le_bytes());
                }
                body.push(u8::from(dirty));
                if let Some(plan) = &plan {
                    put_sketches(&mut body, plan, sketches);
                }
            });
        }
    } else {
        let mut plan = None;
        sessions.for_each_session(|_, _, _, acc, _, _| {
            if plan.is_none() {
                plan = acc.sketches().map(|k| k.plan().clone());
            }
        });
        match &plan {
            Some(plan) => {
                body.push(SESSIONS_SKETCHED);
                put_plan(&mut body, plan);
            }
            None => body.push(SESSIONS),
        }
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
            if let Some(plan) = &plan {
                put_sketches(&mut body, plan, acc.sketches());
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
/// `shards` shards by its hash, for the pipeline whose rows have `schema`.
///
/// # Errors
/// A file is missing or damaged, or was written for other windows, number fields or
/// sketch aggregates (`distinct`, `quantile`, `ewma`): [`StateError::Damaged`].
pub fn load(
    dir: &Path,
    shards: usize,
    windowing: &Windowing,
    schema: &RowSchema,
) -> Result<Restored, StateError> {
    load_inner(dir, shards, windowing, schema.number_fields(), schema)
}

fn load_inner(
    dir: &Path,
    shards: usize,
    windowing: &Windowing,
    number_fields: usize,
    schema: &RowSchema,
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
        let plan = match kind {
            ALIGNED_SKETCHED | SESSIONS_SKETCHED => {
                let mut bytes = r.bytes().ok_or_else(truncated)?;
                let plan = SketchPlan::decode(&mut bytes, nf)
                    .filter(|_| bytes.is_empty())
                    .ok_or_else(|| damaged("malformed sketch plan"))?;
                Some(std::sync::Arc::new(plan))
            }
            _ => None,
        };
        // With the schema known, saved sketches must be the ones it keeps, and keys get
        // the schema's own plan (so the shards' first events find it in place).
        let want = schema.sketches();
        if plan.as_deref() != want.map(|p| &**p) {
            return Err(damaged(
                "written for other sketch aggregates (distinct, quantile, ewma): the aggregates changed",
            ));
        }
        let plan = want.cloned();
        let read_sketches = |r: &mut Reader<'_>| -> Result<Option<OwnedKeySketches>, StateError> {
            let Some(plan) = &plan else {
                return Ok(None);
            };
            let mut bytes = r.bytes().ok_or_else(truncated)?;
            if bytes.is_empty() {
                return Ok(None);
            }
            OwnedKeySketches::decode(&mut bytes, plan)
                .filter(|_| bytes.is_empty())
                .map(Some)
                .ok_or_else(|| damaged("malformed sketch"))
        };
        match kind {
            ALIGNED | ALIGNED_SKETCHED if !windowing.is_session() => {
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
                        let sketches = read_sketches(&mut r)?;
                        let windows = &mut restored.windows[shard_for(hash, shards)];
                        let at = windows.partition_point(|(s, _)| *s < start);
                        if at == windows.len() || windows[at].0 != start {
                            let mut table = WindowTable::new(number_fields);
                            table.set_fired(fired);
                            windows.insert(at, (start, table));
                        }
                        windows[at].1.merge_key(
                            hash,
                            key,
                            count,
                            &aggs,
                            sketches.as_ref().map(OwnedKeySketches::as_ref),
                            dirty,
                        );
                        restored.entries += 1;
                    }
                }
            }
            SESSIONS | SESSIONS_SKETCHED if windowing.is_session() => {
                let n = r.u64().ok_or_else(truncated)?;
                for _ in 0..n {
                    let key = r.bytes().ok_or_else(truncated)?;
                    let start = r.i64().ok_or_else(truncated)?;
                    let last = r.i64().ok_or_else(truncated)?;
                    let flags = r.u8().ok_or_else(truncated)?;
                    let count = r.u64().ok_or_else(truncated)?;
                    r.f64s(nf * 3, &mut aggs).ok_or_else(truncated)?;
                    let sketches = read_sketches(&mut r)?;
                    let acc = Accumulator::from_parts(
                        count,
                        &aggs,
                        nf,
                        sketches.as_ref().map(OwnedKeySketches::as_ref),
                    )
                    .ok_or_else(truncated)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AggregateSpec, WindowSpec};
    use crate::window::WindowRows;
    use std::sync::Arc;
    use std::time::Duration;

    fn schema(aggs: &[&str]) -> Arc<RowSchema> {
        let aggs: Vec<AggregateSpec> = aggs.iter().map(|t| t.parse().unwrap()).collect();
        Arc::new(RowSchema::new(&aggs, &["v".into(), "u".into()]))
    }

    const ALL: [&str; 10] = [
        "count",
        "sum(v)",
        "min(u)",
        "max(v)",
        "mean(u)",
        "distinct(u)",
        "quantile(v, 0.9) as p90",
        "p50(u)",
        "ewma(v, 10s)",
        "ewma(u, 250ms)",
    ];

    fn rows(rows: &WindowRows) -> Vec<(i64, String, Vec<u64>)> {
        let width = rows.schema().columns().len();
        (0..rows.len())
            .map(|i| {
                let vals = (0..width).map(|c| rows.value(i, c).to_bits()).collect();
                (rows.window_start(i), rows.key(i).to_owned(), vals)
            })
            .collect()
    }

    fn events() -> impl Iterator<Item = (String, i64, [f64; 2])> {
        (0..4000i64).map(|i| {
            let key = format!("key-{}", i % 17);
            (
                key,
                i * 7 % 20_000,
                [(i % 113) as f64 * 1.5, (i % 2100) as f64],
            )
        })
    }

    /// Writes the shard's state, loads it back and checks both emit identical rows.
    fn round_trip(windowing: Windowing, s: &Arc<RowSchema>) {
        let dir = tempfile::tempdir().unwrap();
        let mut windows: Vec<(i64, WindowTable)> = Vec::new();
        let mut sessions = SessionTable::new(windowing.size_ms(), 2);
        for (key, ts, nums) in events() {
            if windowing.is_session() {
                sessions.add(key.as_bytes(), ts, &nums, s);
                continue;
            }
            let start = windowing.last_start(ts);
            let at = match windows.iter().position(|(w, _)| *w == start) {
                Some(at) => at,
                None => {
                    windows.push((start, WindowTable::new(2)));
                    windows.sort_by_key(|w| w.0);
                    windows.iter().position(|(w, _)| *w == start).unwrap()
                }
            };
            let hash = crate::event::key_hash(key.as_bytes());
            windows[at].1.add(hash, key.as_bytes(), ts, &nums, s);
        }
        write_shard(dir.path(), 0, &windowing, 2, &windows, &sessions).unwrap();
        {
            let restored = load(dir.path(), 3, &windowing, s).unwrap();
            let emit_all = |windows: Vec<(i64, WindowTable)>,
                            mut sessions: SessionTable,
                            out: &mut WindowRows| {
                for (start, t) in windows {
                    t.emit(start, windowing.end(start), out);
                }
                sessions.close(i64::MAX, i64::MAX, out);
            };
            let mut want = WindowRows::new(s.clone());
            let mut got = WindowRows::new(s.clone());
            emit_all(
                windows
                    .iter()
                    .map(|(w, t)| {
                        let mut copy = WindowTable::new(2);
                        copy.merge_from(t);
                        (*w, copy)
                    })
                    .collect(),
                {
                    let mut copy = SessionTable::new(windowing.size_ms(), 2);
                    sessions.for_each_session(|key, start, last, acc, fired, dirty| {
                        copy.restore(key, start, last, acc.clone(), fired, dirty);
                    });
                    copy
                },
                &mut want,
            );
            for (w, ss) in restored.windows.into_iter().zip(restored.sessions) {
                emit_all(w, ss, &mut got);
            }
            let (mut want, mut got) = (rows(&want), rows(&got));
            want.sort();
            got.sort();
            assert!(!want.is_empty());
            assert_eq!(got, want);
        }
    }

    #[test]
    fn every_aggregate_survives_a_state_checkpoint() {
        let s = schema(&ALL);
        let tumbling = Windowing::new(&WindowSpec::Tumbling {
            size: Duration::from_secs(5),
        });
        round_trip(tumbling, &s);
        let session = Windowing::new(&WindowSpec::Session {
            gap: Duration::from_millis(3),
        });
        round_trip(session, &s);
        // And without sketches, the format as before.
        round_trip(tumbling, &schema(&["count", "sum(v)", "max(u)"]));
    }

    #[test]
    fn mismatched_or_damaged_sketches_are_refused() {
        let s = schema(&ALL);
        let windowing = Windowing::new(&WindowSpec::Tumbling {
            size: Duration::from_secs(5),
        });
        let dir = tempfile::tempdir().unwrap();
        let mut t = WindowTable::new(2);
        for (key, ts, nums) in events().take(100) {
            t.add(
                crate::event::key_hash(key.as_bytes()),
                key.as_bytes(),
                ts,
                &nums,
                &s,
            );
        }
        write_shard(
            dir.path(),
            0,
            &windowing,
            2,
            &[(0, t)],
            &SessionTable::new(5000, 2),
        )
        .unwrap();
        let other = schema(&["count", "distinct(v)"]);
        let err = load(dir.path(), 1, &windowing, &other).unwrap_err();
        assert!(
            matches!(&err, StateError::Damaged { reason, .. } if reason.contains("other sketch aggregates")),
            "{err}"
        );
        let none = schema(&["count"]);
        assert!(matches!(
            load(dir.path(), 1, &windowing, &none),
            Err(StateError::Damaged { .. })
        ));

        // A body with a valid checksum but a damaged sketch: still Damaged, no panic.
        let path = dir.path().join("shard-0.bin");
        let body = read_file(&path).unwrap();
        for cut in [body.len() - 1, body.len() - 30, body.len() / 2, 40] {
            write_file(&path, &body[..cut]).unwrap();
            assert!(
                matches!(
                    load(dir.path(), 1, &windowing, &s),
                    Err(StateError::Damaged { .. })
                ),
                "cut at {cut}"
            );
        }
        let mut bad = body.clone();
        // Flip bytes through the sketches: every outcome is Ok or Damaged, never a panic.
        for i in (30..bad.len()).step_by(97) {
            bad[i] ^= 0x5a;
            write_file(&path, &bad).unwrap();
            let _ = load(dir.path(), 1, &windowing, &s);
            bad[i] ^= 0x5a;
        }
    }
}
