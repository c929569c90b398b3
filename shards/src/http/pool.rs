//! A fixed set of threads with a bounded queue for CPU work the executors must not do:
//! decoding request bodies and verifying their signatures (tens of microseconds each, which
//! would add up to milliseconds of stalled I/O on a shard under load).
//!
//! Submitting never blocks and never grows memory: [`CpuPool::try_run`] fails with
//! [`PoolFull`] when `queue_max` jobs are waiting, and the HTTP layer answers 429. The result
//! comes back through a [`JobHandle`], a future that a worker thread completes and wakes
//! (glommio accepts wakes from foreign threads). A job that panics completes its handle with
//! [`JobFailed`] and the worker thread lives on.
//!
//! [`CpuPool::try_run_measured`] also reports how long the job queued: the time from submission
//! to a worker taking it, counted only when the job found every worker busy (a worker took it
//! straight after finishing another job). A job that found a worker idle did not queue; its
//! delay is the operating system waking that worker, which no admission decision can shorten.
//! The HTTP server's delay control counts only real queueing.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam::channel::{bounded, Sender, TrySendError};

/// A queued job; the flag says whether it found every worker busy.
type Job = Box<dyn FnOnce(bool) + Send>;

/// The pool's queue was full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolFull;

/// The job panicked (a bug, reported as 500).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JobFailed;

pub struct CpuPool {
    sender: Option<Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
    queue_max: usize,
    completed: Arc<AtomicU64>,
}

impl CpuPool {
    /// Starts `threads` workers (0: one per available core) sharing a queue of `queue_max`.
    pub fn new(threads: usize, queue_max: usize, name: &str) -> std::io::Result<CpuPool> {
        let threads = if threads == 0 {
            std::thread::available_parallelism().map_or(1, usize::from)
        } else {
            threads
        };
        let (sender, receiver) = bounded::<Job>(queue_max.max(1));
        let completed = Arc::new(AtomicU64::new(0));
        let handles = (0..threads)
            .map(|i| {
                let receiver = receiver.clone();
                let completed = completed.clone();
                std::thread::Builder::new()
                    .name(format!("{name}-{i}"))
                    .spawn(move || {
                        // A job already waiting when this worker comes back from the last
                        // one has queued; one the worker blocks for (or finds on starting)
                        // has not.
                        let mut busy = false;
                        loop {
                            let next = if busy {
                                receiver.try_recv().map(|job| (job, true)).ok()
                            } else {
                                None
                            };
                            let Some((job, queued)) =
                                next.or_else(|| receiver.recv().ok().map(|job| (job, false)))
                            else {
                                break;
                            };
                            job(queued);
                            completed.fetch_add(1, Ordering::Relaxed);
                            busy = true;
                        }
                    })
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(CpuPool {
            sender: Some(sender),
            threads: handles,
            queue_max: queue_max.max(1),
            completed,
        })
    }

    /// Queues `work`, or refuses it at once when the queue is full.
    pub fn try_run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<JobHandle<T>, PoolFull> {
        self.submit(move |_| work())
    }

    /// Like [`CpuPool::try_run`], and the result comes with the time the job queued behind
    /// other jobs (zero when it found a worker idle; module docs).
    pub fn try_run_measured<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<JobHandle<(T, Duration)>, PoolFull> {
        let submitted = Instant::now();
        self.submit(move |queued| {
            let wait = if queued {
                submitted.elapsed()
            } else {
                Duration::ZERO
            };
            (work(), wait)
        })
    }

    /// Queues `work`, which learns whether it found every worker busy (module docs).
    pub fn try_run_flagged<T: Send + 'static>(
        &self,
        work: impl FnOnce(bool) -> T + Send + 'static,
    ) -> Result<JobHandle<T>, PoolFull> {
        self.submit(work)
    }

    fn submit<T: Send + 'static>(
        &self,
        work: impl FnOnce(bool) -> T + Send + 'static,
    ) -> Result<JobHandle<T>, PoolFull> {
        let (done, handle) = completion::<T>();
        let job: Job = Box::new(move |queued| {
            done.complete(catch_unwind(AssertUnwindSafe(|| work(queued))).map_err(|_| JobFailed));
        });
        let sender = self.sender.as_ref().ok_or(PoolFull)?;
        match sender.try_send(job) {
            Ok(()) => Ok(handle),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => Err(PoolFull),
        }
    }

    /// Jobs waiting for a thread (bound: `queue_max`).
    pub fn queued(&self) -> usize {
        self.sender.as_ref().map_or(0, Sender::len)
    }

    pub fn queue_max(&self) -> usize {
        self.queue_max
    }

    pub fn threads(&self) -> usize {
        self.threads.len()
    }

    pub fn completed(&self) -> u64 {
        self.completed.load(Ordering::Relaxed)
    }
}

impl Drop for CpuPool {
    fn drop(&mut self) {
        // Closing the queue ends each worker's loop once the queued jobs are done.
        self.sender = None;
        for handle in self.threads.drain(..) {
            let _ = handle.join();
        }
    }
}

struct SlotState<T> {
    result: Option<Result<T, JobFailed>>,
    waker: Option<Waker>,
}

/// A one-shot result slot: a [`Completer`] that any thread fills once, and the [`JobHandle`]
/// future a shard awaits it with (glommio accepts wakes from foreign threads).
pub(crate) fn completion<T>() -> (Completer<T>, JobHandle<T>) {
    let slot = Arc::new(Mutex::new(SlotState {
        result: None,
        waker: None,
    }));
    (
        Completer {
            slot: Some(slot.clone()),
        },
        JobHandle { slot },
    )
}

/// The filling side of [`completion`]. Dropped unfilled (a panic unwound past it), it
/// completes its handle with [`JobFailed`], so an awaiting request never hangs.
pub(crate) struct Completer<T> {
    slot: Option<Arc<Mutex<SlotState<T>>>>,
}

impl<T> Completer<T> {
    pub(crate) fn complete(mut self, result: Result<T, JobFailed>) {
        self.fill(result);
    }

    fn fill(&mut self, result: Result<T, JobFailed>) {
        let Some(slot) = self.slot.take() else {
            return;
        };
        let waker = {
            let mut state = slot.lock().unwrap_or_else(|e| e.into_inner());
            state.result = Some(result);
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl<T> Drop for Completer<T> {
    fn drop(&mut self) {
        self.fill(Err(JobFailed));
    }
}

/// The result of a queued job. Dropping it does not cancel the job (it is short by design);
/// the result is then dropped by the worker.
pub struct JobHandle<T> {
    slot: Arc<Mutex<SlotState<T>>>,
}

impl<T> std::future::Future for JobHandle<T> {
    type Output = Result<T, JobFailed>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        match state.result.take() {
            Some(result) => Poll::Ready(result),
            None => {
                state.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// Test aid: keeps one worker of a pool busy (its job has started when `hold` returns) until
/// `release`, so that what is submitted meanwhile waits in the queue.
#[cfg(test)]
pub(crate) struct HeldWorker {
    release: std::sync::mpsc::Sender<()>,
    busy: JobHandle<()>,
}

#[cfg(test)]
impl HeldWorker {
    pub(crate) fn hold(pool: &CpuPool) -> HeldWorker {
        let (release, gate) = std::sync::mpsc::channel::<()>();
        let (started_tx, started) = std::sync::mpsc::channel::<()>();
        let busy = pool
            .try_run(move || {
                started_tx.send(()).unwrap();
                gate.recv_timeout(Duration::from_secs(10)).unwrap();
            })
            .unwrap();
        started.recv_timeout(Duration::from_secs(10)).unwrap();
        HeldWorker { release, busy }
    }

    /// Lets the worker go and waits until its job has ended.
    pub(crate) fn release(self) {
        self.release.send(()).unwrap();
        futures_lite::future::block_on(self.busy).unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future::block_on;

    #[test]
    fn runs_jobs_and_returns_results() {
        let pool = CpuPool::new(2, 8, "test-pool").unwrap();
        let handles: Vec<_> = (0..8u64)
            .map(|i| pool.try_run(move || i * i).unwrap())
            .collect();
        let results: Vec<u64> = handles.into_iter().map(|h| block_on(h).unwrap()).collect();
        assert_eq!(results, (0..8u64).map(|i| i * i).collect::<Vec<_>>());
    }

    #[test]
    fn full_queue_refuses_without_blocking() {
        let pool = CpuPool::new(1, 2, "test-pool").unwrap();
        // Occupy the only worker, then fill the queue.
        let held = HeldWorker::hold(&pool);
        let queued: Vec<_> = (0..2).map(|_| pool.try_run(|| ()).unwrap()).collect();
        assert_eq!(pool.queued(), 2);
        assert_eq!(pool.try_run(|| ()).err(), Some(PoolFull));
        held.release();
        for handle in queued {
            block_on(handle).unwrap();
        }
        assert!(pool.try_run(|| ()).is_ok());
    }

    #[test]
    fn only_jobs_that_found_every_worker_busy_count_as_queued() {
        let pool = CpuPool::new(1, 4, "test-pool").unwrap();
        // An idle worker takes the first job: it did not queue, however long the wake took.
        let (_, wait) = block_on(pool.try_run_measured(|| ()).unwrap()).unwrap();
        assert_eq!(wait, Duration::ZERO);
        let held = HeldWorker::hold(&pool);
        let behind = pool.try_run_measured(|| ()).unwrap();
        std::thread::sleep(Duration::from_millis(30));
        held.release();
        let (_, wait) = block_on(behind).unwrap();
        assert!(wait >= Duration::from_millis(30), "{wait:?}");
    }

    #[test]
    fn a_completer_dropped_unfilled_fails_its_handle() {
        let (done, handle) = completion::<u32>();
        drop(done);
        assert_eq!(block_on(handle), Err(JobFailed));
        let (done, handle) = completion::<u32>();
        std::thread::spawn(move || done.complete(Ok(5)))
            .join()
            .unwrap();
        assert_eq!(block_on(handle), Ok(5));
    }

    #[test]
    fn a_panicking_job_fails_its_handle_and_the_worker_survives() {
        let pool = CpuPool::new(1, 4, "test-pool").unwrap();
        let failed = pool.try_run(|| -> u32 { panic!("job bug") }).unwrap();
        assert_eq!(block_on(failed), Err(JobFailed));
        assert_eq!(block_on(pool.try_run(|| 7).unwrap()), Ok(7));
    }
}
