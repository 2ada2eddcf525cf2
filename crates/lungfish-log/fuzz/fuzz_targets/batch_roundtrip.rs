//! Structured round trip through a real log: batches of fuzzer-chosen records (and
//! producer positions) are appended to partition 0 of a log in a temporary directory
//! (`FsyncPolicy::Never`, small segments so they roll), read back with a reader, and
//! must decode to exactly what was encoded: records, offsets, producer and frame length.
//! A model keeps the expected end offset and each producer's last sequence number, so
//! idempotent appends (a sequence number not above the last) are checked too. On
//! request the log is closed and reopened, and recovery must keep everything.
//!
//! One log lives for the whole fuzzing process (in `$LUNGFISH_FUZZ_TMP`, else /dev/shm
//! when there is one) and is replaced by a fresh one after a few MiB, so memory stays
//! bounded.
#![no_main]

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use lungfish_log::{BatchBuilder, FsyncPolicy, Log, LogConfig, LogError, Producer};

const MAX_BATCH: usize = 64 * 1024;
const SEGMENT: u64 = 256 * 1024;
/// A fresh log is started once this many bytes were appended to the current one.
const RESET_AFTER: u64 = 16 * 1024 * 1024;

#[derive(Debug, Arbitrary)]
enum Record {
    /// Pushed with `push`.
    Bytes(Vec<u8>),
    /// Pushed with `push_with`.
    Written(Vec<u8>),
    /// A long record of one repeated byte (cheap for the fuzzer to make big batches).
    Repeat(u8, u16),
}

impl Record {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Record::Bytes(b) | Record::Written(b) => b.clone(),
            Record::Repeat(byte, n) => vec![*byte; *n as usize],
        }
    }
}

#[derive(Debug, Arbitrary)]
struct Batch {
    records: Vec<Record>,
    /// Producer id (1..=4) and how far its sequence number moves (0 = a duplicate).
    producer: Option<(u8, u8)>,
    /// Reuse the previous builder (after `clear`) instead of a new one.
    reuse_builder: bool,
}

#[derive(Debug, Arbitrary)]
struct Input {
    batches: Vec<Batch>,
    /// Close and reopen the log after the batches.
    reopen: bool,
}

struct State {
    _dir: tempfile::TempDir,
    path: PathBuf,
    log: Log,
    next_offset: u64,
    producers: HashMap<u64, u64>,
    appended_bytes: u64,
    builder: BatchBuilder,
}

fn config() -> LogConfig {
    LogConfig {
        partitions: 1,
        segment_bytes: SEGMENT,
        fsync: FsyncPolicy::Never,
        max_batch_bytes: MAX_BATCH,
        ..LogConfig::default()
    }
}

/// Where the log lives: `$LUNGFISH_FUZZ_TMP` (run.sh sets it and removes it at the
/// end, since libFuzzer exits without running destructors), else /dev/shm, else the
/// temporary directory.
fn scratch_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("LUNGFISH_FUZZ_TMP") {
        return PathBuf::from(dir);
    }
    let shm = PathBuf::from("/dev/shm");
    if shm.is_dir() {
        shm
    } else {
        std::env::temp_dir()
    }
}

impl State {
    fn new() -> State {
        let dir = tempfile::Builder::new()
            .prefix("lungfish-fuzz-roundtrip-")
            .tempdir_in(scratch_root())
            .expect("temporary directory");
        let path = dir.path().join("log");
        let log = Log::open(&path, config()).expect("open a fresh log");
        State {
            _dir: dir,
            path,
            log,
            next_offset: 0,
            producers: HashMap::new(),
            appended_bytes: 0,
            builder: BatchBuilder::new(),
        }
    }

    fn append(&mut self, batch: &Batch) {
        let records: Vec<Vec<u8>> = batch.records.iter().map(Record::bytes).collect();
        let mut fresh = BatchBuilder::new();
        let builder = if batch.reuse_builder {
            self.builder.clear();
            &mut self.builder
        } else {
            &mut fresh
        };
        for (spec, bytes) in batch.records.iter().zip(&records) {
            match spec {
                Record::Written(_) => builder.push_with(|v| v.extend_from_slice(bytes)),
                _ => builder.push(bytes),
            }
        }
        assert!(builder.is_empty() == records.is_empty());
        assert_eq!(builder.len() as usize, records.len());
        let built: Vec<(u64, &[u8])> = builder.records().collect();
        let want: Vec<(u64, &[u8])> = records
            .iter()
            .enumerate()
            .map(|(i, r)| (i as u64, r.as_slice()))
            .collect();
        assert_eq!(built, want, "the builder's own view of its records");
        let encoded_len = builder.encoded_len();
        assert_eq!(
            encoded_len,
            52 + records.iter().map(|r| 4 + r.len()).sum::<usize>()
        );

        let producer = batch.producer.map(|(id, step)| {
            let id = 1 + u64::from(id % 4);
            let last = self.producers.get(&id).copied();
            Producer {
                id,
                seq: last.unwrap_or(0) + u64::from(step),
            }
        });
        let duplicate =
            producer.is_some_and(|p| self.producers.get(&p.id).is_some_and(|&last| p.seq <= last));

        let result = self.log.append(0, builder, producer);
        if encoded_len > MAX_BATCH {
            match result {
                Err(LogError::BatchTooLarge { size, max }) => {
                    assert_eq!((size, max), (encoded_len, MAX_BATCH));
                    return;
                }
                other => panic!("a batch of {encoded_len} bytes was not refused: {other:?}"),
            }
        }
        let appended = result.expect("append");
        appended
            .ticket
            .wait(Duration::from_secs(10))
            .expect("ticket under FsyncPolicy::Never");
        assert_eq!(appended.partition, 0);
        assert_eq!(appended.duplicate, duplicate, "producer {producer:?}");
        assert_eq!(appended.base_offset, self.next_offset);
        let mut reader = self.log.reader(0, self.next_offset).expect("reader");
        if duplicate {
            assert_eq!(appended.next_offset, self.next_offset);
            let chunk = reader.read(1 << 20).expect("read after a duplicate");
            assert!(chunk.is_empty(), "a duplicate append wrote something");
            return;
        }
        let count = records.len() as u64;
        assert_eq!(appended.next_offset, self.next_offset + count);
        assert_eq!(self.log.end_offset(0), self.next_offset + count);

        let chunk = reader.read(1 << 20).expect("read back");
        if count == 0 {
            // A batch without records only records a producer position: readers, which
            // hand out records, have nothing to return at its offset.
            assert!(chunk.is_empty(), "records after an empty batch");
        } else {
            self.check_read_back(&chunk, &records, producer, encoded_len);
        }
        self.next_offset += count;
        self.appended_bytes += encoded_len as u64;
        if let Some(p) = producer {
            self.producers.insert(p.id, p.seq);
        }
    }

    fn check_read_back(
        &self,
        chunk: &lungfish_log::Chunk<'_>,
        records: &[Vec<u8>],
        producer: Option<Producer>,
        encoded_len: usize,
    ) {
        let count = records.len() as u64;
        let view = chunk.batches().next().expect("the batch just appended");
        let h = *view.header();
        assert_eq!(h.base_offset, self.next_offset);
        assert_eq!(h.record_count as u64, count);
        assert_eq!(h.producer, producer);
        assert_eq!(view.frame_len(), encoded_len);
        let got: Vec<(u64, &[u8])> = view.records().collect();
        let want: Vec<(u64, &[u8])> = records
            .iter()
            .enumerate()
            .map(|(i, r)| (self.next_offset + i as u64, r.as_slice()))
            .collect();
        assert_eq!(got, want, "decode(encode(records))");
        assert_eq!(chunk.next_offset(), self.next_offset + count);
        assert_eq!(chunk.record_count(), count);
        let via_chunk: Vec<(u64, &[u8])> = chunk.records().collect();
        assert_eq!(via_chunk, want, "Chunk::records");
        // A reader starting in the middle of the batch sees exactly the rest of it.
        if count > 1 {
            let mid = self.next_offset + count / 2;
            let mut reader = self.log.reader(0, mid).expect("reader");
            let chunk = reader.read(1 << 20).expect("read from the middle");
            let rest: Vec<(u64, &[u8])> = chunk.records().collect();
            assert_eq!(rest, want[(count / 2) as usize..]);
        }
    }

    fn reopen(&mut self) {
        self.log.close().expect("close");
        self.log = Log::open(&self.path, config()).expect("reopen");
        let report = &self.log.recovery()[0];
        assert_eq!(
            report.truncated_bytes, 0,
            "recovery after a clean close: {report:?}"
        );
        assert_eq!(
            self.log.end_offset(0),
            self.next_offset,
            "end offset after reopen"
        );
        for (&id, &seq) in &self.producers {
            assert_eq!(self.log.producer_seq(0, id), Some(seq), "producer {id}");
        }
    }
}

thread_local! {
    static STATE: RefCell<Option<State>> = const { RefCell::new(None) };
}

fuzz_target!(|input: Input| {
    STATE.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.as_ref().is_none_or(|s| s.appended_bytes > RESET_AFTER) {
            *cell = None; // drop the old log (and its directory) first
            *cell = Some(State::new());
        }
        let state = cell.as_mut().unwrap();
        for batch in &input.batches {
            state.append(batch);
        }
        if input.reopen {
            state.reopen();
        }
    });
});
