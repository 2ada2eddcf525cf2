//! [`OperatorChain`]: runs operators over a batch with panic isolation and budgeted
//! retries.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{BatchMemory, Failure, Operator, OperatorBatch, Verdict};
use crate::dlq::now_ms;
use crate::retry::{Backoff, BudgetSettings, RetryBudget};

/// How a chain retries.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChainSettings {
    /// Attempts per event and operator before a retryable failure is dead-lettered
    /// (at least 1).
    pub max_attempts: u32,
    /// Ceiling of the first retry's wait (full jitter), doubling per attempt ...
    pub first_backoff: Duration,
    /// ... up to this.
    pub max_backoff: Duration,
    /// The retry budget, shared by every partition's chain.
    pub budget: BudgetSettings,
}

impl Default for ChainSettings {
    /// 3 attempts, waits up to 50 ms then doubling to at most 1 s, the default budget
    /// (10% of recent events plus 10 per second).
    fn default() -> Self {
        ChainSettings {
            max_attempts: 3,
            first_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1),
            budget: BudgetSettings::default(),
        }
    }
}

/// What one [`OperatorChain::run`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ChainReport {
    /// Events dropped on purpose.
    pub dropped: u64,
    /// Events failed (to be dead-lettered).
    pub failed: u64,
    /// Event retries made.
    pub retries: u64,
    /// Panics caught.
    pub panics: u64,
}

/// A partition's operators, in order, with the guards around every call.
pub struct OperatorChain {
    operators: Vec<Box<dyn Operator>>,
    settings: ChainSettings,
    budget: Arc<RetryBudget>,
    backoff: Backoff,
    /// Scratch: saved numbers of the events of a guarded call.
    saved: Vec<f64>,
    /// Scratch of [`run`](Self::run): the targets of an operator, the events to retry.
    targets: Vec<usize>,
    retry: Vec<usize>,
    /// The dead-letter stage of each operator: `operator:NAME`.
    stages: Vec<String>,
    /// The memory of the last batch, for the next (see [`batch`](Self::batch)).
    memory: BatchMemory,
}

impl std::fmt::Debug for OperatorChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OperatorChain")
            .field(
                "operators",
                &self.operators.iter().map(|o| o.name()).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl OperatorChain {
    /// A chain of `operators`, retrying under `budget` (share one budget between the
    /// partitions of a pipeline).
    pub fn new(
        operators: Vec<Box<dyn Operator>>,
        settings: ChainSettings,
        budget: Arc<RetryBudget>,
    ) -> Self {
        OperatorChain {
            settings,
            budget,
            backoff: Backoff::new(settings.first_backoff, settings.max_backoff, 0x0b5e_55ed),
            saved: Vec::new(),
            targets: Vec::new(),
            retry: Vec::new(),
            stages: operators
                .iter()
                .map(|o| format!("operator:{}", o.name()))
                .collect(),
            memory: BatchMemory::default(),
            operators,
        }
    }

    /// An empty batch with room for `capacity` events, in the memory of the batch last
    /// given back with [`recycle`](Self::recycle): a consumer builds one per chunk.
    pub(crate) fn batch<'a>(&mut self, fields: &'a [String], capacity: usize) -> OperatorBatch<'a> {
        let mut batch = OperatorBatch::from_memory(fields, std::mem::take(&mut self.memory));
        batch.reserve(capacity);
        batch
    }

    /// Gives a batch's memory back, for the next [`batch`](Self::batch).
    pub(crate) fn recycle(&mut self, batch: OperatorBatch<'_>) {
        self.memory = batch.into_memory();
    }

    /// The dead-letter stage of the operator at `position`: `operator:NAME`.
    pub fn stage(&self, position: usize) -> &str {
        self.stages
            .get(position)
            .map_or("operator:?", |s| s.as_str())
    }

    /// The name of the operator at `position` in the chain.
    pub fn operator_name(&self, position: usize) -> &str {
        self.operators.get(position).map_or("?", |o| o.name())
    }

    /// True if the chain has no operator (then a consumer skips it altogether).
    pub fn is_empty(&self) -> bool {
        self.operators.is_empty()
    }

    /// Runs every operator over `batch`, in order.
    ///
    /// Guarantees: returns (an operator's panic is caught); afterwards every event is
    /// live, dropped or failed, and a failed event's `attempts` says how many times it
    /// was tried. Waits between retries are bounded by `max_backoff` each and by
    /// `max_attempts` in number.
    pub fn run(&mut self, batch: &mut OperatorBatch<'_>) -> ChainReport {
        let mut report = ChainReport::default();
        // The index lists are the chain's scratch, kept between batches.
        let mut targets = std::mem::take(&mut self.targets);
        let mut retry = std::mem::take(&mut self.retry);
        targets.clear();
        targets.extend(batch.live());
        self.budget.deposit(targets.len() as u64, Instant::now());
        for o in 0..self.operators.len() {
            if o > 0 {
                // An event an operator dropped or failed never comes back to life: the
                // targets of an operator are those of the one before still live.
                targets.retain(|&i| batch.is_live(i));
            }
            if targets.is_empty() {
                break;
            }
            self.guarded(o, batch, &targets, &mut report);
            let mut tally = note_failures(batch, &targets, o);
            if tally.retryable > 0 {
                self.retry(o, batch, &targets, &mut retry, &mut report);
                tally = Tally::of(batch, &targets);
            }
            let Tally {
                dropped, failed, ..
            } = tally;
            let name = self.operators[o].name().to_owned();
            let passed = targets.len() as u64 - dropped - failed;
            metrics::counter!("lungfish_operator_events_total", "operator" => name.clone(), "outcome" => "passed")
                .increment(passed);
            if dropped > 0 {
                metrics::counter!("lungfish_operator_events_total", "operator" => name.clone(), "outcome" => "dropped")
                    .increment(dropped);
            }
            if failed > 0 {
                metrics::counter!("lungfish_operator_events_total", "operator" => name, "outcome" => "failed")
                    .increment(failed);
            }
            report.dropped += dropped;
            report.failed += failed;
        }
        (self.targets, self.retry) = (targets, retry);
        if report.retries > 0 {
            metrics::counter!("lungfish_operator_retries_total").increment(report.retries);
        }
        metrics::gauge!("lungfish_operator_retry_budget_remaining")
            .set(self.budget.remaining(Instant::now()) as f64);
        report
    }

    /// Retries the events of `targets` that operator `o` failed with a retryable
    /// failure, while attempts and the budget allow (`retry` is scratch).
    fn retry(
        &mut self,
        o: usize,
        batch: &mut OperatorBatch<'_>,
        targets: &[usize],
        retry: &mut Vec<usize>,
        report: &mut ChainReport,
    ) {
        let mut attempt = 1;
        loop {
            retry.clear();
            retry.extend(
                targets
                    .iter()
                    .copied()
                    .filter(|&i| matches!(batch.verdict(i), Verdict::Failed(f) if f.retryable)),
            );
            if retry.is_empty() || attempt >= self.settings.max_attempts.max(1) {
                break;
            }
            // Retry as many as the budget allows; the rest stay failed.
            let now = Instant::now();
            retry.truncate(self.budget.remaining(now) as usize);
            if retry.is_empty() || !self.budget.try_withdraw(retry.len() as u64, now) {
                break;
            }
            std::thread::sleep(self.backoff.delay(attempt - 1));
            for &i in retry.iter() {
                batch.verdicts[i] = Verdict::Live;
            }
            report.retries += retry.len() as u64;
            self.guarded(o, batch, retry, report);
            note_failures(batch, retry, o);
            attempt += 1;
        }
    }

    /// Runs operator `o` on the events `targets` only; if it panics, restores them and
    /// bisects until the events that panic alone are failed with kind `panic`.
    fn guarded(
        &mut self,
        o: usize,
        batch: &mut OperatorBatch<'_>,
        targets: &[usize],
        report: &mut ChainReport,
    ) {
        if targets.is_empty() {
            return;
        }
        let width = batch.width;
        self.saved.clear();
        if targets.len() == batch.len() {
            // All of them, in order (targets are distinct, ascending indexes).
            self.saved.extend_from_slice(&batch.numbers);
        } else {
            for &i in targets {
                self.saved.extend_from_slice(batch.numbers(i));
            }
        }
        let hid = show_only(batch, targets);
        let op = &mut self.operators[o];
        let outcome = catch_unwind(AssertUnwindSafe(|| op.process(batch)));
        if hid {
            batch.visible.iter_mut().for_each(|v| *v = true);
        }
        let Err(payload) = outcome else {
            return;
        };
        report.panics += 1;
        let name = op.name().to_owned();
        metrics::counter!("lungfish_operator_panics_total", "operator" => name.clone())
            .increment(1);
        for (n, &i) in targets.iter().enumerate() {
            batch.numbers[i * width..(i + 1) * width]
                .copy_from_slice(&self.saved[n * width..(n + 1) * width]);
            batch.verdicts[i] = Verdict::Live;
        }
        if let [i] = targets {
            let message = panic_message(&payload);
            tracing::warn!(operator = %name, offset = batch.event(*i).offset, "operator panicked on an event: {message}; it goes to the dead-letter queue");
            batch.verdicts[*i] = Verdict::Failed(Failure::permanent(
                "panic",
                format!("operator {name} panicked on this event: {message}"),
            ));
            return;
        }
        let (left, right) = targets.split_at(targets.len() / 2);
        self.guarded(o, batch, left, report);
        self.guarded(o, batch, right, report);
    }
}

/// Makes exactly `targets` visible; false if that is every event (nothing was hidden).
fn show_only(batch: &mut OperatorBatch<'_>, targets: &[usize]) -> bool {
    if targets.len() == batch.len() {
        return false; // all of them (targets are distinct indexes)
    }
    batch.visible.iter_mut().for_each(|v| *v = false);
    for &i in targets {
        batch.visible[i] = true;
    }
    true
}

/// The verdicts of some events, counted.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    dropped: u64,
    failed: u64,
    /// Failed with a retryable failure.
    retryable: u64,
}

impl Tally {
    fn add(&mut self, verdict: &Verdict) {
        match verdict {
            Verdict::Live => {}
            Verdict::Dropped => self.dropped += 1,
            Verdict::Failed(f) => {
                self.failed += 1;
                self.retryable += u64::from(f.retryable);
            }
        }
    }

    fn of(batch: &OperatorBatch<'_>, targets: &[usize]) -> Tally {
        let mut tally = Tally::default();
        for &i in targets {
            tally.add(&batch.verdicts[i]);
        }
        tally
    }
}

/// Counts an attempt for every event of `targets` operator `o` failed, stamping first
/// failures; returns the verdicts of `targets`, counted.
fn note_failures(batch: &mut OperatorBatch<'_>, targets: &[usize], o: usize) -> Tally {
    let mut now = None;
    let mut tally = Tally::default();
    for &i in targets {
        tally.add(&batch.verdicts[i]);
        if matches!(batch.verdicts[i], Verdict::Failed(_)) {
            batch.attempts[i] += 1;
            batch.failed_by[i] = o as u16;
            if batch.first_failure_ms[i] == 0 {
                batch.first_failure_ms[i] = *now.get_or_insert_with(now_ms);
            }
        }
    }
    tally
}

fn panic_message(payload: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(a panic without a message)".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;
    use crate::operator::EventSlot;

    /// Doubles numbers; panics on keys starting with "boom"; fails keys starting with
    /// "flaky" the first `flaky_failures` times it sees them.
    struct Doubler {
        flaky_failures: u32,
        seen_flaky: u32,
        calls: u32,
    }

    impl Operator for Doubler {
        fn name(&self) -> &str {
            "doubler"
        }
        fn process(&mut self, batch: &mut OperatorBatch<'_>) {
            self.calls += 1;
            let live: Vec<usize> = batch.live().collect();
            for i in live {
                let v = batch.number(i, 0);
                batch.set_number(i, 0, v * 2.0);
                let key = batch.event(i).key.clone();
                if key.starts_with(b"boom") {
                    panic!("boom on {}", String::from_utf8_lossy(&key));
                }
                if key.starts_with(b"flaky") {
                    self.seen_flaky += 1;
                    if self.seen_flaky <= self.flaky_failures {
                        batch.fail(i, Failure::transient("unavailable", "try later"));
                    }
                }
            }
        }
    }

    fn batch<'a>(fields: &'a [String], keys: &'a [String]) -> OperatorBatch<'a> {
        let mut b = OperatorBatch::new(fields);
        for (i, k) in keys.iter().enumerate() {
            b.push(
                EventSlot {
                    offset: i as u64,
                    key: Cow::Borrowed(k.as_bytes()),
                    ts: 0,
                    raw: b"{}",
                },
                &[i as f64],
            );
        }
        b
    }

    fn settings() -> ChainSettings {
        ChainSettings {
            max_attempts: 3,
            first_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(2),
            budget: BudgetSettings::default(),
        }
    }

    #[test]
    fn a_panicking_event_is_isolated_and_the_rest_is_processed_once() {
        let fields = vec!["value".to_owned()];
        let keys: Vec<String> = (0..1000)
            .map(|i| {
                if i == 617 {
                    "boom".to_owned()
                } else {
                    format!("k{i}")
                }
            })
            .collect();
        let mut b = batch(&fields, &keys);
        let doubler = Doubler {
            flaky_failures: 0,
            seen_flaky: 0,
            calls: 0,
        };
        let mut chain = OperatorChain::new(
            vec![Box::new(doubler)],
            settings(),
            Arc::new(RetryBudget::new(BudgetSettings::default())),
        );
        let report = chain.run(&mut b);
        assert_eq!(report.failed, 1);
        assert!(report.panics >= 10, "bisection panics: {}", report.panics);
        for i in 0..1000 {
            if i == 617 {
                match b.verdict(i) {
                    Verdict::Failed(f) => {
                        assert_eq!(f.kind, "panic");
                        assert!(f.reason.contains("boom on boom"), "{}", f.reason);
                    }
                    v => panic!("{v:?}"),
                }
                assert_eq!(b.number(i, 0), 617.0, "restored");
            } else {
                assert_eq!(b.verdict(i), &Verdict::Live);
                // Doubled exactly once, although the batch was processed in pieces.
                assert_eq!(b.number(i, 0), 2.0 * i as f64, "event {i}");
            }
        }
    }

    #[test]
    fn transient_failures_are_retried_until_they_pass_or_attempts_run_out() {
        let fields = vec!["value".to_owned()];
        let keys: Vec<String> = (0..10)
            .map(|i| {
                if i < 3 {
                    format!("flaky{i}")
                } else {
                    format!("k{i}")
                }
            })
            .collect();
        // Three flaky events fail on their first pass only: one retry heals them.
        let mut b = batch(&fields, &keys);
        let mut chain = OperatorChain::new(
            vec![Box::new(Doubler {
                flaky_failures: 3,
                seen_flaky: 0,
                calls: 0,
            })],
            settings(),
            Arc::new(RetryBudget::new(BudgetSettings::default())),
        );
        let report = chain.run(&mut b);
        assert_eq!((report.failed, report.retries), (0, 3));
        assert_eq!(b.live().count(), 10);

        // Failing forever: given up after max_attempts, with attempts recorded.
        let mut b = batch(&fields, &keys);
        let mut chain = OperatorChain::new(
            vec![Box::new(Doubler {
                flaky_failures: u32::MAX,
                seen_flaky: 0,
                calls: 0,
            })],
            settings(),
            Arc::new(RetryBudget::new(BudgetSettings::default())),
        );
        let report = chain.run(&mut b);
        assert_eq!((report.failed, report.retries), (3, 6));
        for i in 0..3 {
            assert_eq!(b.attempts(i), 3);
            assert!(b.first_failure_ms(i) > 0);
        }
    }

    #[test]
    fn retries_stop_when_the_budget_is_spent() {
        let fields = vec!["value".to_owned()];
        let keys: Vec<String> = (0..100).map(|i| format!("flaky{i}")).collect();
        let mut b = batch(&fields, &keys);
        // 10% of 100 deposited plus no floor: 10 retries in all, whatever the attempts
        // left.
        let budget = BudgetSettings {
            ratio: 0.1,
            min_per_second: 0.0,
            window: Duration::from_secs(10),
        };
        let mut chain = OperatorChain::new(
            vec![Box::new(Doubler {
                flaky_failures: u32::MAX,
                seen_flaky: 0,
                calls: 0,
            })],
            settings(),
            Arc::new(RetryBudget::new(budget)),
        );
        let report = chain.run(&mut b);
        assert_eq!((report.failed, report.retries), (100, 10));
        assert_eq!((0..100).map(|i| b.attempts(i)).sum::<u32>(), 110);
    }
}
