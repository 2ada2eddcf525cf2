//! A simulated file system for crash testing the log, shared by the crash tests.
//!
//! [`SimStorage`] implements the log's [`Storage`] seam in memory and models what a real
//! file system keeps across a power loss:
//!
//! * Every file (inode) has its *current* content (what reads see: the page cache) and
//!   its *durable* content (as of its last `sync_data`), plus the writes and `set_len`
//!   calls made since that sync, in order.
//! * Every directory has its *current* entries and its *durable* entries, plus the entry
//!   changes (create, rename, remove, mkdir) made since its last `sync_dir`, in order. A
//!   change becomes durable only at `sync_dir` of that directory. A file whose entry is
//!   not durable does not exist after a crash, whatever was fsynced in it; a removal that
//!   was not made durable is undone. An entry names an inode, so a rename over an
//!   existing file leaves, after a crash, either the old file or the new one in full:
//!   never a mix.
//! * New directories are durable at once by default (as journaling file systems
//!   behave in practice); [`SimOptions::strict_dirs`] makes a new directory an ordinary
//!   entry of its parent, durable only at `sync_dir` of the parent (POSIX's letter).
//! * Every operation that changes state is appended to a trace under the same lock that
//!   applies it, so the trace is the exact order the log's threads (writer, flusher)
//!   produced. [`Recording`] rebuilds the state after any prefix of the trace.
//! * [`FsState::crash`] materializes the file system after a crash under a [`Fault`]:
//!   only durable data and entries survive ([`Fault::DropUnsynced`]); or also the last
//!   unsynced write of each file, cut at a 512 B or 4 KiB boundary ([`Fault::Tear`]); or
//!   an arbitrary seeded subset of each file's unsynced writes and `set_len`s, later ones
//!   without earlier ones, and a seeded prefix of each directory's unsynced entry changes
//!   ([`Fault::Reorder`]).
//!
//! The module also holds the oracle both crash tests check a recovered log against
//! ([`oracle`]).

#![allow(dead_code)] // each test crate uses a part of this module

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use lungfish_log::{ReadFile, Storage, WriteFile};

/// Index of a file in [`FsState::inodes`].
pub type InodeId = usize;

/// A change to a file's content not yet made durable.
#[derive(Debug, Clone)]
pub enum Pending {
    /// `write_all_at(data, offset)`.
    Write { offset: u64, data: Arc<[u8]> },
    /// `set_len(len)`.
    SetLen(u64),
}

/// A file.
#[derive(Debug, Clone)]
pub struct Inode {
    /// The path it was last given (for messages).
    pub name: PathBuf,
    /// What reads see.
    pub current: Arc<Vec<u8>>,
    /// What survives a crash (as of the last `sync_data`).
    pub durable: Arc<Vec<u8>>,
    /// Changes since the last `sync_data`, in order.
    pub pending: Vec<Pending>,
}

/// What a directory entry names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Entry {
    File(InodeId),
    Dir,
}

/// A change to a directory's entries not yet made durable.
#[derive(Debug, Clone)]
pub enum DirChange {
    Set(String, Entry),
    Unset(String),
    /// A rename inside the directory: one atomic change.
    Rename(String, String, Entry),
}

/// A directory.
#[derive(Debug, Clone, Default)]
pub struct DirNode {
    pub current: BTreeMap<String, Entry>,
    pub durable: BTreeMap<String, Entry>,
    pub pending: Vec<DirChange>,
}

/// The whole simulated file system.
#[derive(Debug, Clone)]
pub struct FsState {
    pub inodes: Vec<Inode>,
    /// Every directory, by normalized absolute path. `/` always exists.
    pub dirs: BTreeMap<PathBuf, DirNode>,
}

/// One state-changing operation, as recorded in the trace.
#[derive(Debug, Clone)]
pub enum Op {
    Mkdir {
        path: PathBuf,
        durable: bool,
    },
    Create {
        path: PathBuf,
        inode: InodeId,
    },
    Write {
        inode: InodeId,
        offset: u64,
        data: Arc<[u8]>,
    },
    SetLen {
        inode: InodeId,
        len: u64,
    },
    SyncData {
        inode: InodeId,
    },
    Rename {
        from: PathBuf,
        to: PathBuf,
    },
    Remove {
        path: PathBuf,
    },
    SyncDir {
        path: PathBuf,
    },
}

/// How a crash treats what was not made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// Only durable content and durable entries survive.
    DropUnsynced,
    /// As `DropUnsynced`, plus the last unsynced write of every file applied only up to
    /// a `block` boundary of the file (the first boundary inside the write, or the last
    /// with `last_boundary`; nothing of it if no boundary falls inside). With
    /// `keep_earlier`, the file's earlier unsynced writes and `set_len`s are applied
    /// too (a classic torn tail); without, only the torn write is (holes read as zeros).
    Tear {
        block: u64,
        keep_earlier: bool,
        last_boundary: bool,
    },
    /// As `DropUnsynced`, plus a seeded subset of each file's unsynced writes and
    /// `set_len`s (in order, later ones without earlier ones) and a seeded prefix of
    /// each directory's unsynced entry changes.
    Reorder { seed: u64 },
}

impl Fault {
    /// The tear variants: 512 B and 4 KiB blocks, first and last boundary, with and
    /// without the earlier unsynced writes.
    pub fn tears() -> Vec<Fault> {
        let mut out = Vec::new();
        for block in [512, 4096] {
            for keep_earlier in [true, false] {
                for last_boundary in [false, true] {
                    out.push(Fault::Tear {
                        block,
                        keep_earlier,
                        last_boundary,
                    });
                }
            }
        }
        out
    }

    /// A short name for reports.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::DropUnsynced => "drop",
            Fault::Tear { .. } => "tear",
            Fault::Reorder { .. } => "reorder",
        }
    }
}

/// SplitMix64: a tiny seeded generator (tests must be reproducible).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }
}

fn write_into(buf: &mut Vec<u8>, offset: u64, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    let (at, end) = (offset as usize, offset as usize + data.len());
    if buf.len() < end {
        buf.resize(end, 0);
    }
    buf[at..end].copy_from_slice(data);
}

fn apply_pending(buf: &mut Vec<u8>, p: &Pending) {
    match p {
        Pending::Write { offset, data } => write_into(buf, *offset, data),
        Pending::SetLen(len) => buf.resize(*len as usize, 0),
    }
}

/// Normalizes a path to an absolute path without `.` or `..`.
pub fn norm(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::Normal(s) => out.push(s),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

fn split(path: &Path) -> Option<(PathBuf, String)> {
    let name = path.file_name()?.to_str()?.to_owned();
    Some((path.parent()?.to_path_buf(), name))
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such file or directory", path.display()),
    )
}

fn other(msg: String) -> io::Error {
    io::Error::other(msg)
}

impl Default for FsState {
    fn default() -> Self {
        Self::new()
    }
}

impl FsState {
    /// A file system holding only `/`.
    pub fn new() -> Self {
        let mut dirs = BTreeMap::new();
        dirs.insert(PathBuf::from("/"), DirNode::default());
        FsState {
            inodes: Vec::new(),
            dirs,
        }
    }

    /// The entry at `path` as reads see it.
    pub fn lookup(&self, path: &Path) -> Option<Entry> {
        if path == Path::new("/") {
            return Some(Entry::Dir);
        }
        let (dir, name) = split(path)?;
        self.dirs.get(&dir)?.current.get(&name).copied()
    }

    /// Applies one operation. Operations are validated before they are recorded, so
    /// applying a recorded trace to the state it started from never fails.
    pub fn apply(&mut self, op: &Op) {
        match op {
            Op::Mkdir { path, durable } => {
                let (parent, name) = split(path).expect("mkdir of /");
                self.dirs.insert(path.clone(), DirNode::default());
                let p = self.dirs.get_mut(&parent).expect("parent exists");
                p.current.insert(name.clone(), Entry::Dir);
                if *durable {
                    p.durable.insert(name, Entry::Dir);
                } else {
                    p.pending.push(DirChange::Set(name, Entry::Dir));
                }
            }
            Op::Create { path, inode } => {
                assert_eq!(*inode, self.inodes.len(), "inode numbers replay in order");
                self.inodes.push(Inode {
                    name: path.clone(),
                    current: Arc::default(),
                    durable: Arc::default(),
                    pending: Vec::new(),
                });
                let (parent, name) = split(path).expect("file name");
                let d = self.dirs.get_mut(&parent).expect("parent exists");
                d.current.insert(name.clone(), Entry::File(*inode));
                d.pending.push(DirChange::Set(name, Entry::File(*inode)));
            }
            Op::Write {
                inode,
                offset,
                data,
            } => {
                let f = &mut self.inodes[*inode];
                write_into(Arc::make_mut(&mut f.current), *offset, data);
                f.pending.push(Pending::Write {
                    offset: *offset,
                    data: data.clone(),
                });
            }
            Op::SetLen { inode, len } => {
                let f = &mut self.inodes[*inode];
                Arc::make_mut(&mut f.current).resize(*len as usize, 0);
                f.pending.push(Pending::SetLen(*len));
            }
            Op::SyncData { inode } => {
                let f = &mut self.inodes[*inode];
                f.durable = f.current.clone();
                f.pending.clear();
            }
            Op::Rename { from, to } => {
                let (fd, fname) = split(from).expect("file name");
                let (td, tname) = split(to).expect("file name");
                let entry = self
                    .dirs
                    .get_mut(&fd)
                    .and_then(|d| d.current.remove(&fname))
                    .expect("rename source exists");
                if let Entry::File(id) = entry {
                    self.inodes[id].name = to.clone();
                }
                if fd == td {
                    let d = self.dirs.get_mut(&fd).expect("dir exists");
                    d.current.insert(tname.clone(), entry);
                    d.pending.push(DirChange::Rename(fname, tname, entry));
                } else {
                    let f = self.dirs.get_mut(&fd).expect("dir exists");
                    f.pending.push(DirChange::Unset(fname));
                    let t = self.dirs.get_mut(&td).expect("dir exists");
                    t.current.insert(tname.clone(), entry);
                    t.pending.push(DirChange::Set(tname, entry));
                }
            }
            Op::Remove { path } => {
                let (dir, name) = split(path).expect("file name");
                let d = self.dirs.get_mut(&dir).expect("dir exists");
                d.current.remove(&name);
                d.pending.push(DirChange::Unset(name));
            }
            Op::SyncDir { path } => {
                let d = self.dirs.get_mut(path).expect("dir exists");
                d.durable = d.current.clone();
                d.pending.clear();
            }
        }
    }

    /// True if a crash now could lose or change anything (some write, `set_len` or
    /// entry change is not durable).
    pub fn has_unsynced(&self) -> bool {
        self.inodes.iter().any(|f| !f.pending.is_empty())
            || self.dirs.values().any(|d| !d.pending.is_empty())
    }

    /// The content of file `id` after a crash under `fault`.
    fn crashed_content(&self, id: InodeId, fault: Fault) -> Vec<u8> {
        let f = &self.inodes[id];
        let mut buf = f.durable.as_ref().clone();
        match fault {
            Fault::DropUnsynced => {}
            Fault::Tear {
                block,
                keep_earlier,
                last_boundary,
            } => {
                let last = f
                    .pending
                    .iter()
                    .rposition(|p| matches!(p, Pending::Write { data, .. } if !data.is_empty()));
                let Some(last) = last else {
                    if keep_earlier {
                        f.pending.iter().for_each(|p| apply_pending(&mut buf, p));
                    }
                    return buf;
                };
                if keep_earlier {
                    f.pending[..last]
                        .iter()
                        .for_each(|p| apply_pending(&mut buf, p));
                }
                let Pending::Write { offset, data } = &f.pending[last] else {
                    unreachable!()
                };
                let end = offset + data.len() as u64;
                let cut = if last_boundary {
                    (end - 1) / block * block
                } else {
                    (offset / block + 1) * block
                };
                if cut > *offset && cut < end {
                    write_into(&mut buf, *offset, &data[..(cut - offset) as usize]);
                }
                if keep_earlier {
                    f.pending[last + 1..]
                        .iter()
                        .for_each(|p| apply_pending(&mut buf, p));
                }
            }
            Fault::Reorder { seed } => {
                let mut rng = Rng::new(seed ^ (id as u64).wrapping_mul(0x2545_f491_4f6c_dd1d));
                for p in &f.pending {
                    if rng.chance(1, 2) {
                        apply_pending(&mut buf, p);
                    }
                }
            }
        }
        buf
    }

    /// The entries of directory `path` after a crash under `fault`.
    fn crashed_entries(&self, path: &Path, fault: Fault) -> BTreeMap<String, Entry> {
        let d = &self.dirs[path];
        let mut entries = d.durable.clone();
        if let Fault::Reorder { seed } = fault {
            let mut h = DefaultHasher::new();
            path.hash(&mut h);
            let mut rng = Rng::new(seed ^ h.finish());
            let keep = rng.below(d.pending.len() as u64 + 1) as usize;
            for change in &d.pending[..keep] {
                match change {
                    DirChange::Set(name, e) => {
                        entries.insert(name.clone(), *e);
                    }
                    DirChange::Unset(name) => {
                        entries.remove(name);
                    }
                    DirChange::Rename(from, to, e) => {
                        entries.remove(from);
                        entries.insert(to.clone(), *e);
                    }
                }
            }
        }
        entries
    }

    /// The file system as it is after a crash under `fault`: everything reachable from
    /// `/` through surviving entries, with each file's surviving content, all durable.
    pub fn crash(&self, fault: Fault) -> FsState {
        let mut out = FsState::new();
        let mut ids: HashMap<InodeId, InodeId> = HashMap::new();
        let mut stack = vec![PathBuf::from("/")];
        while let Some(dir) = stack.pop() {
            let entries = self.crashed_entries(&dir, fault);
            let mut kept = BTreeMap::new();
            for (name, entry) in entries {
                let path = dir.join(&name);
                match entry {
                    Entry::Dir => {
                        if self.dirs.contains_key(&path) {
                            kept.insert(name, Entry::Dir);
                            stack.push(path);
                        }
                    }
                    Entry::File(id) => {
                        let new = *ids.entry(id).or_insert_with(|| {
                            let content = Arc::new(self.crashed_content(id, fault));
                            out.inodes.push(Inode {
                                name: path.clone(),
                                current: content.clone(),
                                durable: content,
                                pending: Vec::new(),
                            });
                            out.inodes.len() - 1
                        });
                        kept.insert(name, Entry::File(new));
                    }
                }
            }
            out.dirs.insert(
                dir,
                DirNode {
                    current: kept.clone(),
                    durable: kept,
                    pending: Vec::new(),
                },
            );
        }
        out
    }

    /// A hash of what reads see: every directory, name and file content. Two states with
    /// the same fingerprint recover the same way.
    pub fn fingerprint(&self) -> u64 {
        let mut h = DefaultHasher::new();
        for (path, d) in &self.dirs {
            path.hash(&mut h);
            for (name, e) in &d.current {
                name.hash(&mut h);
                match e {
                    Entry::Dir => 0u8.hash(&mut h),
                    Entry::File(id) => {
                        1u8.hash(&mut h);
                        self.inodes[*id].current.hash(&mut h);
                    }
                }
            }
        }
        h.finish()
    }

    /// A listing for messages: every file with its size (current / durable).
    pub fn listing(&self) -> String {
        let mut out = String::new();
        for (path, d) in &self.dirs {
            for (name, e) in &d.current {
                if let Entry::File(id) = e {
                    let f = &self.inodes[*id];
                    out.push_str(&format!(
                        "  {} {} bytes{}\n",
                        path.join(name).display(),
                        f.current.len(),
                        if d.durable.get(name) == Some(e) {
                            ""
                        } else {
                            " (entry not durable)"
                        }
                    ));
                }
            }
        }
        out
    }

    /// An operation, described with the file names of this state.
    pub fn describe(&self, op: &Op) -> String {
        let name = |id: &InodeId| {
            self.inodes
                .get(*id)
                .map_or_else(|| format!("inode {id}"), |f| f.name.display().to_string())
        };
        match op {
            Op::Mkdir { path, durable } => format!("mkdir {} (durable: {durable})", path.display()),
            Op::Create { path, .. } => format!("create {}", path.display()),
            Op::Write {
                inode,
                offset,
                data,
            } => format!("write {} @{offset} +{}", name(inode), data.len()),
            Op::SetLen { inode, len } => format!("set_len {} {len}", name(inode)),
            Op::SyncData { inode } => format!("sync_data {}", name(inode)),
            Op::Rename { from, to } => format!("rename {} -> {}", from.display(), to.display()),
            Op::Remove { path } => format!("remove {}", path.display()),
            Op::SyncDir { path } => format!("sync_dir {}", path.display()),
        }
    }
}

/// Options of a [`SimStorage`].
#[derive(Debug, Clone, Copy, Default)]
pub struct SimOptions {
    /// A new directory is an entry of its parent like any other: it survives a crash
    /// only if the parent was `sync_dir`ed after it was made.
    pub strict_dirs: bool,
    /// How long a `sync_dir` takes: the changes become durable (and are traced) when it
    /// returns. Widens race windows around directory fsyncs.
    pub sync_dir_delay: Duration,
    /// How long a `sync_data` takes, likewise.
    pub sync_data_delay: Duration,
}

#[derive(Debug)]
struct Inner {
    state: FsState,
    /// The state the trace starts from.
    base: FsState,
    trace: Vec<Op>,
    /// Handles of older generations are dead (their process crashed).
    generation: u64,
    options: SimOptions,
}

impl Inner {
    fn record(&mut self, op: Op) {
        self.state.apply(&op);
        self.trace.push(op);
    }
}

/// The simulated file system. Cheap to clone; clones share the file system.
#[derive(Clone)]
pub struct SimStorage {
    inner: Arc<Mutex<Inner>>,
    generation: u64,
}

impl fmt::Debug for SimStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SimStorage(generation {})", self.generation)
    }
}

/// A recorded run: the state it started from and every operation since.
#[derive(Debug, Clone)]
pub struct Recording {
    pub base: FsState,
    pub trace: Vec<Op>,
}

impl Recording {
    /// Replays the trace step by step.
    pub fn replayer(&self) -> Replayer<'_> {
        Replayer {
            trace: &self.trace,
            state: self.base.clone(),
            at: 0,
        }
    }

    /// The state after the first `k` operations.
    pub fn state_at(&self, k: usize) -> FsState {
        let mut r = self.replayer();
        r.advance_to(k);
        r.state
    }

    /// The first `k` operations, described, for a failure message (the last `tail`).
    pub fn describe_prefix(&self, k: usize, tail: usize) -> String {
        let mut r = self.replayer();
        let mut out = String::new();
        let from = k.saturating_sub(tail);
        while r.at < k {
            if r.at >= from {
                out.push_str(&format!(
                    "  #{:<5} {}\n",
                    r.at,
                    r.state.describe(&self.trace[r.at])
                ));
            }
            r.step();
        }
        out
    }
}

/// Rebuilds states after growing prefixes of a trace.
#[derive(Debug)]
pub struct Replayer<'a> {
    trace: &'a [Op],
    pub state: FsState,
    /// How many operations were applied.
    pub at: usize,
}

impl Replayer<'_> {
    fn step(&mut self) {
        self.state.apply(&self.trace[self.at]);
        self.at += 1;
    }

    /// Applies operations until the first `k` are applied.
    pub fn advance_to(&mut self, k: usize) {
        assert!(k >= self.at && k <= self.trace.len());
        while self.at < k {
            self.step();
        }
    }
}

impl Default for SimStorage {
    fn default() -> Self {
        Self::new(SimOptions::default())
    }
}

impl SimStorage {
    /// An empty file system (only `/`).
    pub fn new(options: SimOptions) -> Self {
        Self::from_state(FsState::new(), options)
    }

    /// A file system in `state` (e.g. after a crash), with an empty trace.
    pub fn from_state(state: FsState, options: SimOptions) -> Self {
        SimStorage {
            inner: Arc::new(Mutex::new(Inner {
                base: state.clone(),
                state,
                trace: Vec::new(),
                generation: 0,
                options,
            })),
            generation: 0,
        }
    }

    fn lock(&self) -> io::Result<MutexGuard<'_, Inner>> {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if inner.generation != self.generation {
            return Err(other("the simulated machine crashed".into()));
        }
        Ok(inner)
    }

    fn options(&self) -> SimOptions {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .options
    }

    /// This storage as the log takes it.
    pub fn arc(&self) -> Arc<dyn Storage> {
        Arc::new(self.clone())
    }

    /// Creates a directory and its parents, durably (as a test's setup would).
    pub fn mkdir_durable(&self, path: &Path) {
        let path = norm(path);
        let mut inner = self.lock().expect("live");
        let mut at = PathBuf::from("/");
        for c in path.components().skip(1) {
            at.push(c);
            if inner.state.lookup(&at).is_none() {
                inner.record(Op::Mkdir {
                    path: at.clone(),
                    durable: true,
                });
            }
        }
    }

    /// Number of operations recorded so far: a position in the trace.
    pub fn trace_len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .trace
            .len()
    }

    /// A copy of the recording so far.
    pub fn recording(&self) -> Recording {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        Recording {
            base: inner.base.clone(),
            trace: inner.trace.clone(),
        }
    }

    /// A copy of the current state.
    pub fn state(&self) -> FsState {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .state
            .clone()
    }

    /// The process using the file system dies: every handle of this storage (and files
    /// opened through it) fails from now on, but the page cache survives. Returns a
    /// storage for the next process, over the same (not crashed) file system.
    pub fn kill_process(&self) -> SimStorage {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.generation += 1;
        SimStorage {
            inner: self.inner.clone(),
            generation: inner.generation,
        }
    }

    /// The machine loses power: every handle fails from now on, and the returned
    /// storage holds what survived under `fault` (with a fresh trace).
    pub fn power_loss(&self, fault: Fault) -> SimStorage {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.generation += 1;
        let crashed = inner.state.crash(fault);
        SimStorage::from_state(crashed, inner.options)
    }

    /// As [`power_loss`](Self::power_loss), but the power went out when only the first
    /// `k` operations of the trace had happened.
    pub fn power_loss_at(&self, k: usize, fault: Fault) -> SimStorage {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.generation += 1;
        let mut replay = Replayer {
            trace: &inner.trace[..k],
            state: inner.base.clone(),
            at: 0,
        };
        replay.advance_to(k);
        SimStorage::from_state(replay.state.crash(fault), inner.options)
    }

    fn file(&self, id: InodeId, writable: bool) -> SimFile {
        SimFile {
            sim: self.clone(),
            inode: id,
            writable,
        }
    }
}

impl Storage for SimStorage {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let path = norm(path);
        let mut inner = self.lock()?;
        let strict = inner.options.strict_dirs;
        let mut at = PathBuf::from("/");
        for c in path.components().skip(1) {
            at.push(c);
            match inner.state.lookup(&at) {
                Some(Entry::Dir) => {}
                Some(Entry::File(_)) => {
                    return Err(other(format!("{}: not a directory", at.display())));
                }
                None => inner.record(Op::Mkdir {
                    path: at.clone(),
                    durable: !strict,
                }),
            }
        }
        Ok(())
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let path = norm(path);
        let inner = self.lock()?;
        let d = inner
            .state
            .dirs
            .get(&path)
            .ok_or_else(|| not_found(&path))?;
        Ok(d.current.keys().cloned().collect())
    }

    fn exists(&self, path: &Path) -> bool {
        let path = norm(path);
        self.lock()
            .is_ok_and(|inner| inner.state.lookup(&path).is_some())
    }

    fn open_read(&self, path: &Path) -> io::Result<Arc<dyn ReadFile>> {
        let path = norm(path);
        let inner = self.lock()?;
        match inner.state.lookup(&path) {
            Some(Entry::File(id)) => Ok(Arc::new(self.file(id, false))),
            Some(Entry::Dir) => Err(other(format!("{}: is a directory", path.display()))),
            None => Err(not_found(&path)),
        }
    }

    fn open_write(&self, path: &Path, create: bool) -> io::Result<Arc<dyn WriteFile>> {
        let path = norm(path);
        let mut inner = self.lock()?;
        match inner.state.lookup(&path) {
            Some(Entry::File(id)) => Ok(Arc::new(self.file(id, true))),
            Some(Entry::Dir) => Err(other(format!("{}: is a directory", path.display()))),
            None if create => {
                let parent = path.parent().map(Path::to_path_buf).unwrap_or_default();
                if inner.state.lookup(&parent) != Some(Entry::Dir) {
                    return Err(not_found(&parent));
                }
                let id = inner.state.inodes.len();
                inner.record(Op::Create {
                    path: path.clone(),
                    inode: id,
                });
                Ok(Arc::new(self.file(id, true)))
            }
            None => Err(not_found(&path)),
        }
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let (from, to) = (norm(from), norm(to));
        let mut inner = self.lock()?;
        if !matches!(inner.state.lookup(&from), Some(Entry::File(_))) {
            return Err(not_found(&from));
        }
        let to_parent = to.parent().map(Path::to_path_buf).unwrap_or_default();
        if inner.state.lookup(&to_parent) != Some(Entry::Dir) {
            return Err(not_found(&to_parent));
        }
        if inner.state.lookup(&to) == Some(Entry::Dir) {
            return Err(other(format!("{}: is a directory", to.display())));
        }
        if from != to {
            inner.record(Op::Rename { from, to });
        }
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let path = norm(path);
        let mut inner = self.lock()?;
        match inner.state.lookup(&path) {
            Some(Entry::File(_)) => {
                inner.record(Op::Remove { path });
                Ok(())
            }
            Some(Entry::Dir) => Err(other(format!("{}: is a directory", path.display()))),
            None => Err(not_found(&path)),
        }
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let path = norm(path);
        let delay = self.options().sync_dir_delay;
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        let mut inner = self.lock()?;
        if inner.state.lookup(&path) != Some(Entry::Dir) {
            return Err(not_found(&path));
        }
        inner.record(Op::SyncDir { path });
        Ok(())
    }
}

/// An open file of a [`SimStorage`].
#[derive(Debug)]
pub struct SimFile {
    sim: SimStorage,
    inode: InodeId,
    writable: bool,
}

impl ReadFile for SimFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let inner = self.sim.lock()?;
        let content = &inner.state.inodes[self.inode].current;
        let at = (offset as usize).min(content.len());
        let n = buf.len().min(content.len() - at);
        buf[..n].copy_from_slice(&content[at..at + n]);
        Ok(n)
    }

    fn size(&self) -> io::Result<u64> {
        let inner = self.sim.lock()?;
        Ok(inner.state.inodes[self.inode].current.len() as u64)
    }
}

impl WriteFile for SimFile {
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        assert!(self.writable);
        let mut inner = self.sim.lock()?;
        inner.record(Op::Write {
            inode: self.inode,
            offset,
            data: Arc::from(buf),
        });
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let delay = self.sim.options().sync_data_delay;
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        let mut inner = self.sim.lock()?;
        inner.record(Op::SyncData { inode: self.inode });
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        assert!(self.writable);
        let mut inner = self.sim.lock()?;
        inner.record(Op::SetLen {
            inode: self.inode,
            len,
        });
        Ok(())
    }
}

/// What must hold of a recovered log, given what was appended and committed.
pub mod oracle {
    use lungfish_log::{BatchHeader, Log, Producer};

    /// A batch that was written to a partition (duplicates, which write nothing, are
    /// not listed), in append order.
    #[derive(Debug, Clone)]
    pub struct ExpBatch {
        pub base: u64,
        pub records: Vec<Vec<u8>>,
        pub producer: Option<Producer>,
        /// Acknowledged (or otherwise known durable): it must be there after a crash.
        pub must_survive: bool,
    }

    impl ExpBatch {
        pub fn next(&self) -> u64 {
            self.base + self.records.len() as u64
        }
    }

    /// What a consumer's committed offset in one partition may be after the crash.
    #[derive(Debug, Clone)]
    pub struct ExpOffset {
        pub consumer: String,
        pub partition: u32,
        /// The last commit that succeeded: the offset is at least this.
        pub at_least: Option<u64>,
        /// Every offset a commit that had started tried to store: the offset is one of
        /// these (or absent, if no commit succeeded).
        pub allowed: Vec<u64>,
    }

    /// What the check found in one partition.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Found {
        /// How many of the expected batches survived (a prefix).
        pub surviving: usize,
        /// How many of those were deleted by retention (a prefix of those).
        pub deleted: usize,
        /// The partition's first and end offsets.
        pub start: u64,
        pub end: u64,
    }

    type Batch = (BatchHeader, Vec<Vec<u8>>);

    /// Every batch a reader from offset 0 returns.
    pub fn read_all(log: &Log, partition: u32) -> Result<Vec<Batch>, String> {
        let mut reader = log.reader(partition, 0).map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        loop {
            let chunk = reader
                .read(64 * 1024)
                .map_err(|e| format!("partition {partition}: read failed: {e}"))?;
            if chunk.is_empty() {
                return Ok(out);
            }
            for b in chunk.batches() {
                out.push((*b.header(), b.records().map(|(_, r)| r.to_vec()).collect()));
            }
        }
    }

    fn show(b: &ExpBatch) -> String {
        format!(
            "batch @{} ({} records, producer {:?})",
            b.base,
            b.records.len(),
            b.producer.map(|p| (p.id, p.seq))
        )
    }

    /// Checks a recovered partition against the batches appended to it:
    /// * what is read back is, batch for batch, a contiguous run of the appended
    ///   batches with the same offsets, records and producer, ending at the log's end
    ///   (so every record is read exactly once and none was invented);
    /// * the batches before that run are gone only because retention deleted them (no
    ///   consumer needed them);
    /// * every batch that must survive did (the surviving batches are a prefix of the
    ///   appended ones; empty batches at the end are told by the producer sequences);
    /// * each producer's sequence is the one of its last surviving batch.
    pub fn check_partition(log: &Log, p: u32, exp: &[ExpBatch]) -> Result<Found, String> {
        for w in exp.windows(2) {
            assert_eq!(w[0].next(), w[1].base, "the expectation is contiguous");
        }
        let read: Vec<Batch> = read_all(log, p)?
            .into_iter()
            .filter(|(h, _)| h.record_count > 0)
            .collect();
        for w in read.windows(2) {
            if w[1].0.base_offset != w[0].0.next_offset() {
                return Err(format!(
                    "partition {p}: offsets are not contiguous: a batch at offset {} follows one \
                     ending at {} (records {}..{} are missing)",
                    w[1].0.base_offset,
                    w[0].0.next_offset(),
                    w[0].0.next_offset(),
                    w[1].0.base_offset
                ));
            }
        }
        let end = log.end_offset(p);
        let start = log.stats(p).map_err(|e| e.to_string())?.start_offset;
        // The batches wholly before the end (empty batches at the end are undecided).
        let e = exp
            .iter()
            .take_while(|b| b.next() <= end && !(b.records.is_empty() && b.base == end))
            .count();
        let written_end = exp.last().map_or(0, ExpBatch::next);
        if end > written_end || (end > 0 && exp[..e].last().is_none_or(|b| b.next() != end)) {
            return Err(format!(
                "partition {p}: the log ends at offset {end}, which is not the end of an appended \
                 batch (appended: {} batches up to offset {written_end})",
                exp.len()
            ));
        }
        let nonempty: Vec<usize> = (0..e).filter(|&i| !exp[i].records.is_empty()).collect();
        if read.len() > nonempty.len() {
            return Err(format!(
                "partition {p}: read {} batches with records, but only {} were appended before offset {end}",
                read.len(),
                nonempty.len()
            ));
        }
        let first_read = nonempty.len() - read.len();
        for (k, (h, records)) in read.iter().enumerate() {
            let b = &exp[nonempty[first_read + k]];
            if h.base_offset != b.base
                || h.producer != b.producer
                || h.record_count as usize != b.records.len()
                || *records != b.records
            {
                return Err(format!(
                    "partition {p}: read batch #{k} @{} ({} records, producer {:?}) but expected {}{}",
                    h.base_offset,
                    h.record_count,
                    h.producer.map(|p| (p.id, p.seq)),
                    show(b),
                    if h.base_offset == b.base && h.record_count as usize == b.records.len() {
                        " (same place, different bytes)"
                    } else {
                        ""
                    }
                ));
            }
        }
        let first_readable = read.first().map_or(end, |(h, _)| h.base_offset);
        if first_readable != start {
            return Err(format!(
                "partition {p}: the first record read is at offset {first_readable}, but the log starts at {start}"
            ));
        }
        // Batches before `start` are gone: only retention may have done that, and only
        // if every consumer with committed offsets had committed past them (with none,
        // retention deletes freely: that is its documented contract).
        let deleted = exp
            .iter()
            .take_while(|b| b.next() <= start && b.base < start)
            .count();
        if start > 0 {
            let consumers = log.consumers().map_err(|e| e.to_string())?;
            for c in consumers {
                let committed = log.committed(&c).map_err(|e| e.to_string())?;
                let at = committed
                    .get(p as usize)
                    .cloned()
                    .flatten()
                    .map_or(0, |c| c.offset);
                if at < start {
                    return Err(format!(
                        "partition {p}: records before offset {start} are gone, but consumer {c} \
                         committed only {at}"
                    ));
                }
            }
        }
        // Which empty batches at the end survived: the producer sequences decide.
        let trailing = exp[e..]
            .iter()
            .take_while(|b| b.records.is_empty() && b.base == end)
            .count();
        let mut ids: Vec<u64> = exp
            .iter()
            .filter_map(|b| b.producer.map(|p| p.id))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let actual: Vec<Option<u64>> = ids.iter().map(|&id| log.producer_seq(p, id)).collect();
        let expected_at = |m: usize| -> Vec<Option<u64>> {
            ids.iter()
                .map(|&id| {
                    exp[..m]
                        .iter()
                        .rev()
                        .find_map(|b| b.producer.filter(|p| p.id == id).map(|p| p.seq))
                })
                .collect()
        };
        let Some(surviving) = (e..=e + trailing).rev().find(|&m| expected_at(m) == actual) else {
            return Err(format!(
                "partition {p}: producer sequences {:?} are {:?}; after the {e} surviving batches \
                 they should be {:?}",
                ids,
                actual,
                expected_at(e)
            ));
        };
        if let Some(lost) = exp[surviving..].iter().position(|b| b.must_survive) {
            let b = &exp[surviving + lost];
            return Err(format!(
                "partition {p}: acknowledged {} (#{}) is lost: the log ends at offset {end} \
                 after {surviving} of {} appended batches",
                show(b),
                surviving + lost,
                exp.len()
            ));
        }
        Ok(Found {
            surviving,
            deleted,
            start,
            end,
        })
    }

    /// Checks committed offsets: at least the last successful commit, one of the
    /// attempted values, and never past the log's end.
    pub fn check_offsets(log: &Log, offsets: &[ExpOffset]) -> Result<(), String> {
        for o in offsets {
            let committed = log
                .committed(&o.consumer)
                .map_err(|e| format!("consumer {}: reading offsets failed: {e}", o.consumer))?;
            let got = committed
                .get(o.partition as usize)
                .cloned()
                .flatten()
                .map(|c| c.offset);
            let end = log.end_offset(o.partition);
            let what = format!("consumer {} partition {}", o.consumer, o.partition);
            match (got, o.at_least) {
                (None, Some(l)) => {
                    return Err(format!("{what}: the commit of offset {l} is lost"));
                }
                (Some(g), Some(l)) if g < l => {
                    return Err(format!(
                        "{what}: committed offset went back from {l} to {g}"
                    ));
                }
                _ => {}
            }
            if let Some(g) = got {
                if !o.allowed.contains(&g) {
                    return Err(format!("{what}: offset {g} was never committed"));
                }
                if g > end {
                    return Err(format!(
                        "{what}: committed offset {g} is past the log's end {end}"
                    ));
                }
            }
        }
        Ok(())
    }
}
