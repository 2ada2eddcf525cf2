//! Model test over the simulated file system: random appends (with and without
//! producers, resends included), acknowledgements, commits, retention, clean reopens and
//! power losses (dropping unsynced data, tearing the last writes, or keeping a random
//! subset of them), against a simple model of what must survive.
//!
//! A power loss strikes either now or at a random earlier point of the storage's
//! operation trace (so it can fall between any two writes or fsyncs of the log's
//! threads, not just where the test happens to be); what must survive is what was
//! acknowledged or committed by that point, in trace positions.
//!
//! After every reopen and crash the recovered log is checked (see [`sim::oracle`]):
//! acknowledged batches are all there, in order, byte for byte; nothing else is; the
//! committed offsets are at least the last successful commit and one of the committed
//! values; producer sequences are those of the last surviving batches; after a clean
//! close nothing at all is lost.
//!
//! Failures are shrunk and kept in `tests/regressions/model_sim.txt`, which is replayed
//! first. `PROPTEST_CASES=N` runs more cases (default 256); `LUNGFISH_MODEL_STATS=1`
//! prints running totals of what the cases did.

mod sim;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use lungfish_log::{
    BatchBuilder, DurableTicket, FsyncPolicy, Log, LogConfig, OffsetCommit, Producer, Retention,
};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use sim::oracle::{self, ExpBatch, ExpOffset};
use sim::{Fault, SimOptions, SimStorage};

const DIR: &str = "/data/log";
const PARTITIONS: u32 = 2;
const CONSUMER: &str = "model";
const WAIT: Duration = Duration::from_secs(30);

/// Running totals over all cases: cases, actions, power losses, clean reopens.
static TOTALS: [AtomicUsize; 4] = [const { AtomicUsize::new(0) }; 4];

fn count(what: usize, n: usize) {
    TOTALS[what].fetch_add(n, Ordering::Relaxed);
}

#[derive(Debug, Clone, Copy)]
enum Who {
    /// No producer.
    Anonymous,
    /// Producer `id`, `gap` past its last position.
    Next { id: u64, gap: u64 },
    /// Producer `id` resending a position `back` before its last (a duplicate).
    Resend { id: u64, back: u64 },
}

/// When the power goes out.
#[derive(Debug, Clone, Copy)]
enum When {
    /// Now.
    Now,
    /// Earlier: after this share (per mille) of the operations the storage recorded
    /// (everything the test did since is as if it never happened, except that
    /// acknowledgements and commits obtained before that point must hold).
    Earlier(u16),
}

#[derive(Debug, Clone)]
enum Action {
    /// Append a batch with records of these sizes; do not wait.
    Append {
        partition: u32,
        sizes: Vec<u16>,
        who: Who,
    },
    /// Wait for every outstanding ticket: those batches are acknowledged.
    Ack,
    /// Commit the consumer this share (per mille) of the way from its last offset to the
    /// durable end.
    Commit { partition: u32, permille: u16 },
    /// Power loss: only durable data survives.
    Crash { at: When },
    /// Power loss tearing the last unsynced write of every file.
    Tear {
        at: When,
        block: u64,
        keep_earlier: bool,
        last_boundary: bool,
    },
    /// Power loss keeping a random subset of the unsynced writes.
    Reorder { at: When, seed: u64 },
    /// Apply retention now.
    Retention,
    /// Close cleanly and open again.
    Reopen,
}

fn who() -> impl Strategy<Value = Who> {
    prop_oneof![
        3 => Just(Who::Anonymous),
        4 => (1u64..=2, 1u64..=3).prop_map(|(id, gap)| Who::Next { id, gap }),
        1 => (1u64..=2, 0u64..3).prop_map(|(id, back)| Who::Resend { id, back }),
    ]
}

fn when() -> impl Strategy<Value = When> {
    prop_oneof![Just(When::Now), (0u16..=1000).prop_map(When::Earlier),]
}

fn sizes() -> impl Strategy<Value = Vec<u16>> {
    prop_oneof![
        4 => proptest::collection::vec(0u16..150, 1..5),
        2 => proptest::collection::vec(200u16..900, 1..4),
        1 => Just(Vec::new()),
    ]
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        12 => (0..PARTITIONS, sizes(), who())
            .prop_map(|(partition, sizes, who)| Action::Append { partition, sizes, who }),
        4 => Just(Action::Ack),
        2 => (0..PARTITIONS, 0u16..=1000)
            .prop_map(|(partition, permille)| Action::Commit { partition, permille }),
        1 => when().prop_map(|at| Action::Crash { at }),
        1 => (when(), prop_oneof![Just(512u64), Just(4096u64)], any::<bool>(), any::<bool>())
            .prop_map(|(at, block, keep_earlier, last_boundary)| Action::Tear {
                at,
                block,
                keep_earlier,
                last_boundary
            }),
        1 => (when(), any::<u64>()).prop_map(|(at, seed)| Action::Reorder { at, seed }),
        1 => Just(Action::Retention),
        1 => Just(Action::Reopen),
    ]
}

fn config(every: bool) -> LogConfig {
    LogConfig {
        partitions: PARTITIONS,
        segment_bytes: 4096,
        fsync: if every {
            FsyncPolicy::Every(Duration::from_millis(1))
        } else {
            FsyncPolicy::Always
        },
        max_batch_bytes: 4096,
        retention: Retention {
            target_bytes: Some(8192),
            ..Retention::default()
        },
    }
}

fn record(partition: u32, batch: usize, index: usize, size: u16) -> Vec<u8> {
    let mut v = Vec::with_capacity(12 + size as usize);
    v.extend_from_slice(&partition.to_le_bytes());
    v.extend_from_slice(&(batch as u32).to_le_bytes());
    v.extend_from_slice(&(index as u32).to_le_bytes());
    v.extend((0..size).map(|i| (i as u32 ^ (batch as u32).wrapping_mul(31) ^ index as u32) as u8));
    v
}

/// A batch the log wrote, as the model knows it.
struct Written {
    base: u64,
    records: Vec<Vec<u8>>,
    producer: Option<Producer>,
    /// Outstanding until acknowledged.
    ticket: Option<DurableTicket>,
    /// The trace position by which it was acknowledged (or otherwise known to be on
    /// disk): a power loss at or after it must keep it.
    acked_at: Option<usize>,
}

/// A successful commit, with the trace positions before it started and after it
/// returned.
#[derive(Debug, Clone, Copy)]
struct Committed {
    offset: u64,
    started: usize,
    done: usize,
}

struct Model {
    config: LogConfig,
    sim: SimStorage,
    log: Option<Log>,
    parts: Vec<Vec<Written>>,
    /// Per partition, the committed offset on disk when the storage's trace began.
    base: Vec<Option<u64>>,
    /// Per partition, the commits since.
    commits: Vec<Vec<Committed>>,
}

impl Model {
    fn new(every: bool) -> Model {
        let sim = SimStorage::new(SimOptions::default());
        sim.mkdir_durable(DIR.as_ref());
        let config = config(every);
        let log = Log::open_with_storage(DIR, config.clone(), sim.arc()).unwrap();
        let mut model = Model {
            config,
            sim,
            log: Some(log),
            parts: (0..PARTITIONS).map(|_| Vec::new()).collect(),
            base: vec![None; PARTITIONS as usize],
            commits: vec![Vec::new(); PARTITIONS as usize],
        };
        model.ensure_consumer().unwrap();
        model
    }

    /// The consumer must exist at all times, so that retention only ever deletes what
    /// it has committed past (with no consumer at all, retention may delete anything):
    /// where it has no offset, it commits 0.
    fn ensure_consumer(&mut self) -> Result<(), TestCaseError> {
        for p in 0..PARTITIONS {
            if self.base[p as usize].is_none() && self.commits[p as usize].is_empty() {
                self.commit(p, 0)?;
            }
        }
        Ok(())
    }

    fn log(&self) -> &Log {
        self.log.as_ref().unwrap()
    }

    fn end(&self, p: u32) -> u64 {
        self.parts[p as usize]
            .last()
            .map_or(0, |b| b.base + b.records.len() as u64)
    }

    fn last_seq(&self, p: u32, id: u64) -> Option<u64> {
        self.parts[p as usize]
            .iter()
            .rev()
            .find_map(|b| b.producer.filter(|pr| pr.id == id).map(|pr| pr.seq))
    }

    fn append(&mut self, p: u32, sizes: &[u16], who: Who) -> Result<(), TestCaseError> {
        let producer = match who {
            Who::Anonymous => None,
            Who::Next { id, gap } => Some(Producer {
                id,
                seq: self.last_seq(p, id).unwrap_or(0) + gap,
            }),
            Who::Resend { id, back } => Some(match self.last_seq(p, id) {
                Some(last) => Producer {
                    id,
                    seq: last.saturating_sub(back).max(1),
                },
                None => Producer { id, seq: 1 },
            }),
        };
        let index = self.parts[p as usize].len();
        let records: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(i, &s)| record(p, index, i, s))
            .collect();
        let mut b = BatchBuilder::new();
        for r in &records {
            b.push(r);
        }
        let a = self
            .log()
            .append(p, &mut b, producer)
            .map_err(|e| TestCaseError::fail(format!("append failed: {e}")))?;
        let duplicate =
            producer.is_some_and(|pr| self.last_seq(p, pr.id).is_some_and(|l| pr.seq <= l));
        prop_assert_eq!(
            a.duplicate,
            duplicate,
            "duplicate detection of {:?}",
            producer
        );
        if !duplicate {
            prop_assert_eq!(a.base_offset, self.end(p), "append offset");
            self.parts[p as usize].push(Written {
                base: a.base_offset,
                records,
                producer,
                ticket: Some(a.ticket),
                acked_at: None,
            });
        }
        Ok(())
    }

    fn ack(&mut self) -> Result<(), TestCaseError> {
        for b in self.parts.iter_mut().flatten() {
            if let Some(t) = b.ticket.take() {
                t.wait(WAIT)
                    .map_err(|e| TestCaseError::fail(format!("ticket failed: {e}")))?;
                b.acked_at = Some(self.sim.trace_len());
            }
        }
        Ok(())
    }

    fn commit(&mut self, p: u32, permille: u16) -> Result<(), TestCaseError> {
        let last = self.commits[p as usize]
            .last()
            .map(|c| c.offset)
            .or(self.base[p as usize])
            .unwrap_or(0);
        let started = self.sim.trace_len();
        let end = self.log().end_offset(p);
        prop_assert!(
            end >= last,
            "the durable end {} is before the committed {}",
            end,
            last
        );
        let offset = last + (end - last) * permille as u64 / 1000;
        self.log()
            .commit(
                CONSUMER,
                &[OffsetCommit {
                    partition: p,
                    offset,
                    metadata: &offset.to_le_bytes(),
                }],
            )
            .map_err(|e| TestCaseError::fail(format!("commit failed: {e}")))?;
        self.commits[p as usize].push(Committed {
            offset,
            started,
            done: self.sim.trace_len(),
        });
        Ok(())
    }

    /// Opens the log on the current storage and checks it against what had happened by
    /// trace position `k` (`clean` if the log was closed cleanly: then nothing at all
    /// may be lost). Drops from the model what did not survive.
    fn reopen_and_check(&mut self, k: usize, clean: bool) -> Result<(), TestCaseError> {
        let log = Log::open_with_storage(DIR, self.config.clone(), self.sim.arc())
            .map_err(|e| TestCaseError::fail(format!("opening the log failed: {e}")))?;
        for p in 0..PARTITIONS {
            let exp: Vec<ExpBatch> = self.parts[p as usize]
                .iter()
                .map(|b| ExpBatch {
                    base: b.base,
                    records: b.records.clone(),
                    producer: b.producer,
                    must_survive: clean || b.acked_at.is_some_and(|at| at <= k),
                })
                .collect();
            let found = oracle::check_partition(&log, p, &exp).map_err(TestCaseError::fail)?;
            self.parts[p as usize].truncate(found.surviving);
        }
        let offsets: Vec<ExpOffset> = (0..PARTITIONS)
            .map(|p| {
                let (base, commits) = (self.base[p as usize], &self.commits[p as usize]);
                ExpOffset {
                    consumer: CONSUMER.to_owned(),
                    partition: p,
                    at_least: commits
                        .iter()
                        .filter(|c| clean || c.done <= k)
                        .map(|c| c.offset)
                        .next_back()
                        .or(base),
                    allowed: base
                        .into_iter()
                        .chain(
                            commits
                                .iter()
                                .filter(|c| clean || c.started < k)
                                .map(|c| c.offset),
                        )
                        .collect(),
                }
            })
            .collect();
        oracle::check_offsets(&log, &offsets).map_err(TestCaseError::fail)?;
        self.log = Some(log);
        Ok(())
    }

    fn power_loss(&mut self, at: When, fault: Fault) -> Result<(), TestCaseError> {
        count(2, 1);
        let now = self.sim.trace_len();
        let k = match at {
            When::Now => now,
            When::Earlier(permille) => now * permille as usize / 1000,
        };
        self.sim = self.sim.power_loss_at(k, fault);
        // The old process is gone: its tickets and log go with it (its storage fails).
        drop(self.log.take());
        self.reopen_and_check(k, false)?;
        // A new trace begins: what survived is on disk at its start.
        for b in self.parts.iter_mut().flatten() {
            b.ticket = None;
            b.acked_at = Some(0);
        }
        let recovered = self
            .log()
            .committed(CONSUMER)
            .map_err(|e| TestCaseError::fail(format!("reading offsets failed: {e}")))?;
        self.base = recovered.into_iter().map(|c| c.map(|c| c.offset)).collect();
        self.commits = vec![Vec::new(); PARTITIONS as usize];
        self.ensure_consumer()
    }

    fn run(&mut self, action: &Action) -> Result<(), TestCaseError> {
        match action {
            Action::Append {
                partition,
                sizes,
                who,
            } => self.append(*partition, sizes, *who),
            Action::Ack => self.ack(),
            Action::Commit {
                partition,
                permille,
            } => self.commit(*partition, *permille),
            Action::Crash { at } => self.power_loss(*at, Fault::DropUnsynced),
            Action::Tear {
                at,
                block,
                keep_earlier,
                last_boundary,
            } => self.power_loss(
                *at,
                Fault::Tear {
                    block: *block,
                    keep_earlier: *keep_earlier,
                    last_boundary: *last_boundary,
                },
            ),
            Action::Reorder { at, seed } => self.power_loss(*at, Fault::Reorder { seed: *seed }),
            Action::Retention => {
                let reports = self
                    .log()
                    .apply_retention()
                    .map_err(|e| TestCaseError::fail(format!("retention failed: {e}")))?;
                prop_assert!(reports.iter().all(|r| r.lost.is_empty()));
                Ok(())
            }
            Action::Reopen => {
                count(3, 1);
                self.log
                    .take()
                    .unwrap()
                    .close()
                    .map_err(|e| TestCaseError::fail(format!("close failed: {e}")))?;
                let now = self.sim.trace_len();
                self.reopen_and_check(now, true)?;
                // Everything is on disk as of now (the trace goes on).
                for b in self.parts.iter_mut().flatten() {
                    b.ticket = None;
                    b.acked_at.get_or_insert(now);
                }
                Ok(())
            }
        }
    }
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(256)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        max_shrink_iters: 2000,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "tests/regressions/model_sim.txt",
        ))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn acknowledged_data_and_commits_survive_power_loss(
        every in any::<bool>(),
        actions in proptest::collection::vec(action(), 1..80),
    ) {
        let mut model = Model::new(every);
        for action in &actions {
            model.run(action)?;
        }
        // A final clean close keeps everything.
        model.run(&Action::Reopen)?;
        model.log.take().unwrap().close().unwrap();
        count(0, 1);
        count(1, actions.len());
        if std::env::var("LUNGFISH_MODEL_STATS").is_ok_and(|v| v == "1") {
            let t: Vec<usize> = TOTALS.iter().map(|t| t.load(Ordering::Relaxed)).collect();
            eprintln!(
                "model_sim: {} cases passed, {} actions, {} power losses, {} clean reopens",
                t[0], t[1], t[2], t[3]
            );
        }
    }
}
