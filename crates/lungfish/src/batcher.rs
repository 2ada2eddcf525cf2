//! A generic micro-batcher for async services: callers submit items, one task writes
//! them in batches, flushed when a batch is full or its oldest item is old enough, and
//! every caller learns when *its* items are written.
//!
//! This is the piece in front of a database that turns a thousand small inserts a
//! second into a few large ones, with backpressure instead of an ever-growing queue:
//!
//! * **Bounded.** At most [`BatcherSettings::max_pending`] items are accepted and not
//!   yet written. [`Batcher::try_submit`] refuses at once when there is no room
//!   ([`Rejected::Full`], an HTTP handler's 503 or 429), [`Batcher::submit`] waits for
//!   room up to a timeout. Room comes back only when a flush *ends*, so a slow store
//!   slows the callers down instead of filling memory.
//! * **Flushed on count or age.** A batch is written once it holds
//!   [`BatcherSettings::max_items`] items, or [`BatcherSettings::max_age`] after its
//!   first item arrived, whichever comes first. A submission is never split across
//!   batches.
//! * **Acknowledged after the write.** Each accepted submission returns a [`Receipt`]
//!   that resolves when the batch holding it has been flushed, with the flush's
//!   result: acknowledge your own client only then.
//! * **Time-limited.** A flush that takes longer than
//!   [`BatcherSettings::flush_timeout`] is abandoned (its future dropped) and its
//!   submissions fail with [`FlushError::TimedOut`]. The write may still have
//!   happened: make the flush idempotent (an upsert, or ids the store deduplicates).
//! * **One flush at a time**, in submission order, on one task: the flush function may
//!   keep a connection and needs no lock.
//!
//! ```
//! use std::time::Duration;
//! use lungfish::batcher::{Batcher, BatcherSettings};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let settings = BatcherSettings {
//!     max_items: 100,
//!     max_age: Duration::from_millis(5),
//!     ..BatcherSettings::default()
//! };
//! let written = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
//! let counter = written.clone();
//! let (batcher, worker) = Batcher::spawn(settings, move |batch: Vec<u64>| {
//!     let counter = counter.clone();
//!     async move {
//!         // Write `batch` to the store here, in one statement or transaction.
//!         counter.fetch_add(batch.len(), std::sync::atomic::Ordering::Relaxed);
//!         Ok::<(), String>(())
//!     }
//! });
//! let receipt = batcher.submit(vec![1, 2, 3], Duration::from_secs(1)).await.unwrap();
//! receipt.await.unwrap(); // written
//! drop(batcher);
//! worker.join().await; // flushes what is left, then ends
//! assert_eq!(written.load(std::sync::atomic::Ordering::Relaxed), 3);
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How a [`Batcher`] groups and bounds its items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatcherSettings {
    /// A batch is flushed as soon as it holds this many items (at least 1).
    pub max_items: usize,
    /// A batch is flushed this long after its first item arrived, even if not full.
    pub max_age: Duration,
    /// Items accepted and not yet written, at most (at least `max_items`): the memory
    /// bound, and the point where callers are pushed back.
    pub max_pending: usize,
    /// A flush that takes longer is abandoned and its items fail.
    pub flush_timeout: Duration,
}

impl Default for BatcherSettings {
    /// 500 items or 50 ms, whichever first; 10,000 items pending; 30 s per flush.
    fn default() -> Self {
        BatcherSettings {
            max_items: 500,
            max_age: Duration::from_millis(50),
            max_pending: 10_000,
            flush_timeout: Duration::from_secs(30),
        }
    }
}

/// Why a submission was not accepted. The items come back untouched.
pub enum Rejected<T> {
    /// No room for these items now (`max_pending` reached): try later, or tell your
    /// client to (HTTP 503 with `Retry-After`).
    Full(Vec<T>),
    /// More items than `max_pending` in one submission: it could never fit (HTTP 413).
    TooLarge(Vec<T>),
    /// The batcher's task has ended (it panicked, or the runtime is shutting down).
    Closed(Vec<T>),
}

impl<T> Rejected<T> {
    /// The items that were not accepted.
    pub fn into_items(self) -> Vec<T> {
        match self {
            Rejected::Full(items) | Rejected::TooLarge(items) | Rejected::Closed(items) => items,
        }
    }
}

impl<T> fmt::Debug for Rejected<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl<T> fmt::Display for Rejected<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejected::Full(items) => write!(f, "batcher full: {} items refused", items.len()),
            Rejected::TooLarge(items) => write!(
                f,
                "{} items in one submission are more than the batcher ever holds",
                items.len()
            ),
            Rejected::Closed(items) => {
                write!(f, "batcher closed: {} items refused", items.len())
            }
        }
    }
}

impl<T> std::error::Error for Rejected<T> {}

/// Why accepted items were not written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlushError {
    /// The flush function returned this error for the batch holding the items.
    Failed(Arc<str>),
    /// The flush took longer than `flush_timeout`; the write may or may not have
    /// happened.
    TimedOut(Duration),
    /// The batcher's task ended before the items were flushed.
    Closed,
}

impl fmt::Display for FlushError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FlushError::Failed(reason) => write!(f, "flush failed: {reason}"),
            FlushError::TimedOut(after) => write!(f, "flush timed out after {after:?}"),
            FlushError::Closed => write!(f, "batcher closed before the flush"),
        }
    }
}

impl std::error::Error for FlushError {}

/// Resolves when the batch holding a submission has been flushed, with the outcome.
///
/// Dropping it does not withdraw the items: they are written all the same.
#[derive(Debug)]
#[must_use = "a receipt says whether the items were written"]
pub struct Receipt {
    done: oneshot::Receiver<Result<(), FlushError>>,
}

impl Future for Receipt {
    type Output = Result<(), FlushError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.done)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(FlushError::Closed)))
    }
}

struct Submission<T> {
    items: Vec<T>,
    done: oneshot::Sender<Result<(), FlushError>>,
    _room: OwnedSemaphorePermit,
}

/// The submitting side of a micro-batcher; cheap to clone (one per handler is fine).
///
/// When every clone is dropped, the task flushes what it holds and ends.
pub struct Batcher<T> {
    tx: mpsc::Sender<Submission<T>>,
    room: Arc<Semaphore>,
    max_pending: usize,
}

impl<T> Clone for Batcher<T> {
    fn clone(&self) -> Self {
        Batcher {
            tx: self.tx.clone(),
            room: self.room.clone(),
            max_pending: self.max_pending,
        }
    }
}

impl<T> fmt::Debug for Batcher<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batcher")
            .field("max_pending", &self.max_pending)
            .field("room", &self.room.available_permits())
            .finish()
    }
}

/// The task that flushes a [`Batcher`]'s batches.
#[derive(Debug)]
pub struct BatchWorker {
    task: JoinHandle<()>,
}

impl BatchWorker {
    /// Waits until the task has flushed everything and ended, which happens once every
    /// [`Batcher`] clone is dropped.
    ///
    /// # Panics
    /// If the flush function panicked (the panic is resumed here).
    pub async fn join(self) {
        if let Err(e) = self.task.await
            && e.is_panic()
        {
            std::panic::resume_unwind(e.into_panic());
        }
    }
}

impl<T: Send + 'static> Batcher<T> {
    /// Starts the batching task on the current Tokio runtime; `flush` writes one batch
    /// (all of it, or fail all of it) and is called with one batch at a time.
    ///
    /// # Panics
    /// Outside a Tokio runtime, or if `max_items` is 0.
    pub fn spawn<F, Fut, E>(settings: BatcherSettings, flush: F) -> (Batcher<T>, BatchWorker)
    where
        F: FnMut(Vec<T>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: fmt::Display + 'static,
    {
        assert!(settings.max_items > 0, "a batch holds at least one item");
        let max_pending = settings.max_pending.max(settings.max_items);
        // Every submission holds at least one item of room, so this never fills.
        let (tx, rx) = mpsc::channel(max_pending);
        let task = tokio::spawn(run(rx, settings, flush));
        let batcher = Batcher {
            tx,
            room: Arc::new(Semaphore::new(max_pending)),
            max_pending,
        };
        (batcher, BatchWorker { task })
    }

    /// Submits `items` if there is room now; never waits.
    ///
    /// # Errors
    /// [`Rejected::Full`] without room, [`Rejected::TooLarge`] for more than
    /// `max_pending` items, [`Rejected::Closed`] if the task has ended. An empty
    /// submission is accepted and resolves at the next flush.
    pub fn try_submit(&self, items: Vec<T>) -> Result<Receipt, Rejected<T>> {
        let Some(n) = self.permits(&items) else {
            return Err(Rejected::TooLarge(items));
        };
        match self.room.clone().try_acquire_many_owned(n) {
            Ok(room) => self.send(items, room),
            Err(tokio::sync::TryAcquireError::NoPermits) => Err(Rejected::Full(items)),
            Err(tokio::sync::TryAcquireError::Closed) => Err(Rejected::Closed(items)),
        }
    }

    /// Submits `items`, waiting up to `wait` for room.
    ///
    /// # Errors
    /// As [`try_submit`](Self::try_submit); [`Rejected::Full`] once `wait` has passed
    /// without room.
    ///
    /// # Cancel safety
    /// Cancel safe: if the future is dropped before it completes, nothing was
    /// submitted (the items are dropped with it).
    pub async fn submit(&self, items: Vec<T>, wait: Duration) -> Result<Receipt, Rejected<T>> {
        let Some(n) = self.permits(&items) else {
            return Err(Rejected::TooLarge(items));
        };
        let acquire = self.room.clone().acquire_many_owned(n);
        match tokio::time::timeout(wait, acquire).await {
            Ok(Ok(room)) => self.send(items, room),
            Ok(Err(_)) => Err(Rejected::Closed(items)),
            Err(_) => Err(Rejected::Full(items)),
        }
    }

    /// Items accepted and not yet written.
    pub fn pending(&self) -> usize {
        self.max_pending - self.room.available_permits()
    }

    fn permits(&self, items: &[T]) -> Option<u32> {
        let n = items.len().max(1);
        (n <= self.max_pending).then_some(n as u32)
    }

    fn send(&self, items: Vec<T>, room: OwnedSemaphorePermit) -> Result<Receipt, Rejected<T>> {
        let (done, receipt) = oneshot::channel();
        let submission = Submission {
            items,
            done,
            _room: room,
        };
        match self.tx.try_send(submission) {
            Ok(()) => Ok(Receipt { done: receipt }),
            Err(mpsc::error::TrySendError::Closed(s)) => Err(Rejected::Closed(s.items)),
            // Cannot happen: the channel has a slot for every unit of room.
            Err(mpsc::error::TrySendError::Full(s)) => Err(Rejected::Full(s.items)),
        }
    }
}

/// A submitter waiting for its batch, holding its room until the batch is written.
struct Waiting {
    done: oneshot::Sender<Result<(), FlushError>>,
    _room: OwnedSemaphorePermit,
}

/// The batch being filled: its items, and who to tell when it is written.
struct Open<T> {
    items: Vec<T>,
    waiting: Vec<Waiting>,
    deadline: Option<Instant>,
}

async fn run<T, F, Fut, E>(
    mut rx: mpsc::Receiver<Submission<T>>,
    settings: BatcherSettings,
    mut flush: F,
) where
    F: FnMut(Vec<T>) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: fmt::Display,
{
    let mut open = Open {
        items: Vec::with_capacity(settings.max_items),
        waiting: Vec::new(),
        deadline: None,
    };
    loop {
        let deadline = open.deadline;
        tokio::select! {
            biased;
            next = rx.recv() => {
                let Some(Submission { items, done, _room }) = next else { break };
                if !open.items.is_empty() && open.items.len() + items.len() > settings.max_items {
                    write(&mut open, &settings, &mut flush).await;
                }
                if open.deadline.is_none() {
                    open.deadline = Some(Instant::now() + settings.max_age);
                }
                open.items.extend(items);
                open.waiting.push(Waiting { done, _room });
                if open.items.len() >= settings.max_items {
                    write(&mut open, &settings, &mut flush).await;
                }
            }
            () = sleep_until(deadline), if deadline.is_some() => {
                write(&mut open, &settings, &mut flush).await;
            }
        }
    }
    if !open.waiting.is_empty() {
        write(&mut open, &settings, &mut flush).await;
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    if let Some(deadline) = deadline {
        tokio::time::sleep_until(deadline).await;
    }
}

/// Flushes the open batch and tells its submitters; their room is freed afterwards.
async fn write<T, F, Fut, E>(open: &mut Open<T>, settings: &BatcherSettings, flush: &mut F)
where
    F: FnMut(Vec<T>) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: fmt::Display,
{
    let items = std::mem::replace(&mut open.items, Vec::with_capacity(settings.max_items));
    open.deadline = None;
    let outcome = match tokio::time::timeout(settings.flush_timeout, flush(items)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(FlushError::Failed(e.to_string().into())),
        Err(_) => Err(FlushError::TimedOut(settings.flush_timeout)),
    };
    for submission in open.waiting.drain(..) {
        // A caller that dropped its receipt does not want to know.
        let _ = submission.done.send(outcome.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn settings(max_items: usize, max_age_ms: u64, max_pending: usize) -> BatcherSettings {
        BatcherSettings {
            max_items,
            max_age: Duration::from_millis(max_age_ms),
            max_pending,
            flush_timeout: Duration::from_secs(5),
        }
    }

    type Batches = Arc<Mutex<Vec<Vec<u32>>>>;

    fn recording(s: BatcherSettings, delay: Duration) -> (Batcher<u32>, BatchWorker, Batches) {
        let batches: Batches = Arc::default();
        let seen = batches.clone();
        let (b, w) = Batcher::spawn(s, move |batch: Vec<u32>| {
            let seen = seen.clone();
            async move {
                tokio::time::sleep(delay).await;
                seen.lock().unwrap().push(batch);
                Ok::<_, String>(())
            }
        });
        (b, w, batches)
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_batch_is_flushed_at_once_and_a_partial_one_after_max_age() {
        let (b, _w, batches) = recording(settings(4, 100, 100), Duration::ZERO);
        let start = Instant::now();
        let r1 = b.try_submit(vec![1, 2]).unwrap();
        let r2 = b.try_submit(vec![3, 4]).unwrap();
        r1.await.unwrap();
        r2.await.unwrap();
        assert_eq!(start.elapsed(), Duration::ZERO, "count flush does not wait");
        assert_eq!(*batches.lock().unwrap(), vec![vec![1, 2, 3, 4]]);

        let r3 = b.try_submit(vec![5]).unwrap();
        r3.await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_millis(100), "age flush");
        assert_eq!(batches.lock().unwrap()[1], vec![5]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_submission_is_never_split_and_order_is_kept() {
        let (b, w, batches) = recording(settings(4, 10, 100), Duration::ZERO);
        let receipts: Vec<_> = [vec![1, 2, 3], vec![4, 5], vec![6, 7, 8, 9, 10], vec![11]]
            .into_iter()
            .map(|items| b.try_submit(items).unwrap())
            .collect();
        for r in receipts {
            r.await.unwrap();
        }
        drop(b);
        w.join().await;
        let got = batches.lock().unwrap().clone();
        assert_eq!(
            got,
            vec![vec![1, 2, 3], vec![4, 5], vec![6, 7, 8, 9, 10], vec![11]]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn room_returns_only_when_a_flush_ends() {
        // A slow store: 1 s per flush, 4 items pending at most.
        let (b, _w, batches) = recording(settings(2, 10, 4), Duration::from_secs(1));
        let r1 = b.try_submit(vec![1, 2]).unwrap();
        let r2 = b.try_submit(vec![3, 4]).unwrap();
        assert_eq!(b.pending(), 4);
        match b.try_submit(vec![5]) {
            Err(Rejected::Full(items)) => assert_eq!(items, vec![5]),
            other => panic!("expected Full, got {other:?}"),
        }
        // Waiting longer than a flush gets room.
        let r3 = b
            .submit(vec![5], Duration::from_millis(1500))
            .await
            .unwrap();
        assert!(b.pending() <= 4);
        r1.await.unwrap();
        r2.await.unwrap();
        r3.await.unwrap();
        assert_eq!(batches.lock().unwrap().concat(), vec![1, 2, 3, 4, 5]);
        assert!(matches!(
            b.try_submit(vec![0; 5]),
            Err(Rejected::TooLarge(items)) if items.len() == 5
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_or_slow_flush_fails_every_submission_of_its_batch_only() {
        let calls = Arc::new(Mutex::new(0u32));
        let counter = calls.clone();
        let mut s = settings(2, 10, 100);
        s.flush_timeout = Duration::from_millis(500);
        let (b, _w) = Batcher::spawn(s, move |batch: Vec<u32>| {
            let n = {
                let mut c = counter.lock().unwrap();
                *c += 1;
                *c
            };
            async move {
                match n {
                    1 => Err(format!("disk on fire for {batch:?}")),
                    2 => {
                        tokio::time::sleep(Duration::from_secs(10)).await;
                        Ok(())
                    }
                    _ => Ok(()),
                }
            }
        });
        let a = b.try_submit(vec![1]).unwrap();
        let c = b.try_submit(vec![2]).unwrap();
        assert_eq!(
            a.await,
            Err(FlushError::Failed("disk on fire for [1, 2]".into()))
        );
        assert!(c.await.is_err());
        let slow = b.try_submit(vec![3, 4]).unwrap();
        assert_eq!(
            slow.await,
            Err(FlushError::TimedOut(Duration::from_millis(500)))
        );
        b.try_submit(vec![5, 6]).unwrap().await.unwrap();
        assert_eq!(b.pending(), 0, "room came back after failures too");
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_every_batcher_flushes_what_is_left() {
        let (b, w, batches) = recording(settings(100, 60_000, 1000), Duration::ZERO);
        let receipt = b.try_submit(vec![7, 8]).unwrap();
        let clone = b.clone();
        drop(b);
        drop(clone);
        w.join().await;
        receipt.await.unwrap();
        assert_eq!(*batches.lock().unwrap(), vec![vec![7, 8]]);
    }
}
