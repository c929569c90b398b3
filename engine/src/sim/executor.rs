//! The single-threaded executor with a virtual clock.
//!
//! Determinism rests on three rules: tasks are kept in id order (a `BTreeMap`, never a hash map),
//! woken tasks run in the order they were woken (one FIFO), and timers fire in (deadline, order of
//! registration). Nothing reads the wall clock or an OS random source.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::{pin, Pin};
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use super::rng::SimRng;

/// Limits that turn a livelock or a runaway simulation into an error instead of a hang.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SimConfig {
    /// Task polls allowed at one virtual instant. Bounds a livelock (tasks waking each other
    /// forever without time moving). A 7-node subnet does a few thousand polls per instant; the
    /// default leaves three orders of magnitude of headroom and costs well under a second to hit.
    pub polls_per_instant_max: u64,
    /// Task polls allowed in one `run_*`/`block_on` call. Bounds a simulation whose clock keeps
    /// moving (a periodic timer) when the caller waits for idleness that never comes.
    pub polls_per_run_max: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            polls_per_instant_max: 1_000_000,
            polls_per_run_max: 50_000_000,
        }
    }
}

/// Why a simulation run stopped without finishing what it was asked to do.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SimError {
    #[error("livelock: {polls} polls at virtual time {now:?} without the clock moving")]
    Livelock { now: Duration, polls: u64 },
    #[error("poll limit of {limit} reached at virtual time {now:?}")]
    PollLimit { now: Duration, limit: u64 },
    #[error(
        "deadlock: the awaited future is pending with no runnable task and no timer at {now:?}"
    )]
    Deadlock { now: Duration },
}

/// The awaited task was aborted before it finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("task aborted")]
pub struct JoinError;

type TaskId = u64;

/// Task id reserved for the future passed to `block_on`, which lives on the caller's stack.
const ROOT_TASK: TaskId = u64::MAX;

/// Ids of woken tasks, in wake order. Behind a mutex only because `Waker` must be `Send + Sync`;
/// the simulator itself is single-threaded, so the lock is never contended.
#[derive(Default)]
struct ReadyQueue {
    ids: Mutex<VecDeque<TaskId>>,
}

impl ReadyQueue {
    fn push(&self, id: TaskId) {
        self.ids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(id);
    }

    fn pop(&self) -> Option<TaskId> {
        self.ids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front()
    }
}

struct TaskWaker {
    id: TaskId,
    /// Set while the task sits in the ready queue, so that N wakes cost one poll.
    queued: AtomicBool,
    ready: Arc<ReadyQueue>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            self.ready.push(self.id);
        }
    }
}

struct Task {
    /// `None` while the task is being polled (it is moved out so that it may spawn or abort).
    future: Option<Pin<Box<dyn Future<Output = ()>>>>,
    waker: Arc<TaskWaker>,
}

type TimerKey = (Duration, u64);

pub(crate) struct Inner {
    seed: u64,
    config: SimConfig,
    now: Cell<Duration>,
    rng: RefCell<SimRng>,
    tasks: RefCell<BTreeMap<TaskId, Task>>,
    ready: Arc<ReadyQueue>,
    timers: RefCell<BTreeMap<TimerKey, Waker>>,
    next_task_id: Cell<TaskId>,
    next_timer_seq: Cell<u64>,
    polls_total: Cell<u64>,
}

/// A deterministic simulation: owns the tasks, the virtual clock and the PRNG.
pub struct Sim {
    handle: SimHandle,
}

/// A cheap, clonable reference to a running simulation, for code that must spawn, sleep or draw
/// random numbers (the memory transport keeps one). `!Send`: it belongs to the simulating thread.
#[derive(Clone)]
pub struct SimHandle {
    inner: Rc<Inner>,
}

thread_local! {
    static CURRENT: RefCell<Option<SimHandle>> = const { RefCell::new(None) };
}

/// Restores the previously current simulation when a run call returns (or unwinds).
struct EnterGuard {
    previous: Option<SimHandle>,
}

impl Drop for EnterGuard {
    fn drop(&mut self) {
        let previous = self.previous.take();
        CURRENT.with(|current| *current.borrow_mut() = previous);
    }
}

impl Sim {
    pub fn new(seed: u64) -> Self {
        Sim::with_config(seed, SimConfig::default())
    }

    pub fn with_config(seed: u64, config: SimConfig) -> Self {
        let inner = Inner {
            seed,
            config,
            now: Cell::new(Duration::ZERO),
            rng: RefCell::new(SimRng::new(seed)),
            tasks: RefCell::new(BTreeMap::new()),
            ready: Arc::new(ReadyQueue::default()),
            timers: RefCell::new(BTreeMap::new()),
            next_task_id: Cell::new(0),
            next_timer_seq: Cell::new(0),
            polls_total: Cell::new(0),
        };
        Sim {
            handle: SimHandle {
                inner: Rc::new(inner),
            },
        }
    }

    pub fn handle(&self) -> SimHandle {
        self.handle.clone()
    }

    pub fn seed(&self) -> u64 {
        self.handle.seed()
    }

    pub fn now(&self) -> Duration {
        self.handle.now()
    }

    pub fn spawn<F>(&self, future: F) -> JoinHandle<F::Output>
    where
        F: Future + 'static,
        F::Output: 'static,
    {
        self.handle.spawn(future)
    }

    /// Total task polls so far (a cheap progress and cost metric).
    pub fn polls_total(&self) -> u64 {
        self.handle.inner.polls_total.get()
    }

    /// Tasks spawned and not yet finished or aborted.
    pub fn tasks_alive(&self) -> usize {
        self.handle.inner.tasks.borrow().len()
    }

    /// Runs tasks and fires timers up to and including virtual time `deadline`, then sets the
    /// clock to `deadline` (if it is not already past it).
    pub fn run_until(&mut self, deadline: Duration) -> Result<(), SimError> {
        let _guard = self.enter();
        let mut budget = PollBudget::new(&self.handle.inner);
        loop {
            self.drain_ready(&mut budget, &mut || false)?;
            if !self.handle.inner.fire_next_timers(Some(deadline)) {
                break;
            }
        }
        if self.now() < deadline {
            self.handle.inner.now.set(deadline);
        }
        Ok(())
    }

    /// Runs for `duration` of virtual time from now.
    pub fn run_for(&mut self, duration: Duration) -> Result<(), SimError> {
        self.run_until(self.now() + duration)
    }

    /// Runs until no task is runnable and no timer is armed. Tasks still waiting on something that
    /// will never happen are left in place (see `tasks_alive`).
    pub fn run_until_idle(&mut self) -> Result<(), SimError> {
        let _guard = self.enter();
        let mut budget = PollBudget::new(&self.handle.inner);
        loop {
            self.drain_ready(&mut budget, &mut || false)?;
            if !self.handle.inner.fire_next_timers(None) {
                return Ok(());
            }
        }
    }

    /// Runs the simulation until `future` completes and returns its output. The future need not
    /// be `'static`; spawned tasks keep running alongside it.
    pub fn block_on<F: Future>(&mut self, future: F) -> Result<F::Output, SimError> {
        let _guard = self.enter();
        let mut future = pin!(future);
        let root_waker = Arc::new(TaskWaker {
            id: ROOT_TASK,
            queued: AtomicBool::new(false),
            ready: self.handle.inner.ready.clone(),
        });
        let waker = Waker::from(root_waker.clone());
        let mut cx = Context::from_waker(&waker);
        waker.wake_by_ref();
        let mut output = None;
        let mut budget = PollBudget::new(&self.handle.inner);
        loop {
            self.drain_ready(&mut budget, &mut || {
                root_waker.queued.store(false, Ordering::Release);
                if let Poll::Ready(value) = future.as_mut().poll(&mut cx) {
                    output = Some(value);
                }
                output.is_some()
            })?;
            if let Some(value) = output.take() {
                return Ok(value);
            }
            if !self.handle.inner.fire_next_timers(None) {
                return Err(SimError::Deadlock { now: self.now() });
            }
        }
    }

    /// Polls woken tasks until none is runnable. `poll_root` polls the `block_on` future and says
    /// whether it finished (which ends the drain early).
    fn drain_ready(
        &self,
        budget: &mut PollBudget,
        poll_root: &mut dyn FnMut() -> bool,
    ) -> Result<(), SimError> {
        let inner = &self.handle.inner;
        while let Some(id) = inner.ready.pop() {
            budget.charge(inner)?;
            if id == ROOT_TASK {
                if poll_root() {
                    return Ok(());
                }
            } else {
                inner.poll_task(id);
            }
        }
        Ok(())
    }

    fn enter(&self) -> EnterGuard {
        let previous = CURRENT.with(|current| current.borrow_mut().replace(self.handle.clone()));
        EnterGuard { previous }
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        // Tasks may hold handles to the simulation (an `Rc` cycle); dropping them breaks it.
        // They are dropped outside the borrow because their destructors may touch the simulation.
        // Bounded: a destructor that spawns on every drop would otherwise never let this end.
        for _ in 0..16 {
            let tasks = std::mem::take(&mut *self.handle.inner.tasks.borrow_mut());
            if tasks.is_empty() {
                break;
            }
            drop(tasks);
        }
        let timers = std::mem::take(&mut *self.handle.inner.timers.borrow_mut());
        drop(timers);
    }
}

/// Counts polls within one run call and at one virtual instant.
struct PollBudget {
    polls_run: u64,
    polls_instant: u64,
    instant: Duration,
}

impl PollBudget {
    fn new(inner: &Inner) -> Self {
        PollBudget {
            polls_run: 0,
            polls_instant: 0,
            instant: inner.now.get(),
        }
    }

    fn charge(&mut self, inner: &Inner) -> Result<(), SimError> {
        let now = inner.now.get();
        if now != self.instant {
            self.instant = now;
            self.polls_instant = 0;
        }
        self.polls_run += 1;
        self.polls_instant += 1;
        inner.polls_total.set(inner.polls_total.get() + 1);
        if self.polls_instant > inner.config.polls_per_instant_max {
            return Err(SimError::Livelock {
                now,
                polls: self.polls_instant,
            });
        }
        if self.polls_run > inner.config.polls_per_run_max {
            return Err(SimError::PollLimit {
                now,
                limit: inner.config.polls_per_run_max,
            });
        }
        Ok(())
    }
}

impl Inner {
    fn poll_task(&self, id: TaskId) {
        let taken = {
            let mut tasks = self.tasks.borrow_mut();
            tasks.get_mut(&id).and_then(|task| {
                task.waker.queued.store(false, Ordering::Release);
                task.future
                    .take()
                    .map(|future| (future, task.waker.clone()))
            })
        };
        // A stale wake-up for a finished or aborted task finds nothing to poll.
        let Some((mut future, task_waker)) = taken else {
            return;
        };
        let waker = Waker::from(task_waker);
        let mut cx = Context::from_waker(&waker);
        let finished = future.as_mut().poll(&mut cx).is_ready();
        let mut tasks = self.tasks.borrow_mut();
        let finished_or_aborted = match tasks.get_mut(&id) {
            Some(task) if !finished => {
                task.future = Some(future);
                None
            }
            Some(_) => {
                tasks.remove(&id);
                Some(future)
            }
            None => Some(future),
        };
        drop(tasks);
        // Dropped outside the borrow: a future's destructor may spawn, abort or sleep.
        drop(finished_or_aborted);
    }

    /// Moves the clock to the earliest timer (if it is not after `limit`) and wakes every timer
    /// due at that instant, in registration order. Returns false when there is none to fire.
    fn fire_next_timers(&self, limit: Option<Duration>) -> bool {
        let mut timers = self.timers.borrow_mut();
        let Some((&(deadline, _), _)) = timers.first_key_value() else {
            return false;
        };
        if limit.is_some_and(|limit| deadline > limit) {
            return false;
        }
        debug_assert!(deadline >= self.now.get(), "a timer fell behind the clock");
        self.now.set(deadline.max(self.now.get()));
        let mut due = Vec::new();
        while let Some(entry) = timers.first_entry() {
            if entry.key().0 > deadline {
                break;
            }
            due.push(entry.remove());
        }
        drop(timers);
        due.into_iter().for_each(Waker::wake);
        true
    }
}

impl SimHandle {
    /// The simulation running on this thread. Panics outside a run call (a caller bug).
    pub fn current() -> SimHandle {
        SimHandle::try_current().expect("no simulation is running on this thread")
    }

    pub fn try_current() -> Option<SimHandle> {
        CURRENT.with(|current| current.borrow().clone())
    }

    pub fn seed(&self) -> u64 {
        self.inner.seed
    }

    /// Virtual time since the simulation started.
    pub fn now(&self) -> Duration {
        self.inner.now.get()
    }

    /// Draws from the simulation's PRNG. Keep the closure short and free of awaits.
    pub fn with_rng<T>(&self, draw: impl FnOnce(&mut SimRng) -> T) -> T {
        draw(&mut self.inner.rng.borrow_mut())
    }

    pub fn random_u64(&self) -> u64 {
        self.with_rng(SimRng::next_u64)
    }

    /// True with probability `probability`.
    pub fn chance(&self, probability: f64) -> bool {
        self.with_rng(|rng| rng.chance(probability))
    }

    /// Starts `future` as a new task; it first runs when the simulation next polls.
    pub fn spawn<F>(&self, future: F) -> JoinHandle<F::Output>
    where
        F: Future + 'static,
        F::Output: 'static,
    {
        let id = self.inner.next_task_id.get();
        self.inner.next_task_id.set(id + 1);
        assert!(id != ROOT_TASK, "task ids exhausted");
        let state = Rc::new(RefCell::new(JoinState {
            output: None,
            waiter: None,
            done: false,
        }));
        let task_state = state.clone();
        let wrapped = async move {
            let output = future.await;
            let waiter = {
                let mut state = task_state.borrow_mut();
                state.output = Some(output);
                state.done = true;
                state.waiter.take()
            };
            if let Some(waiter) = waiter {
                waiter.wake();
            }
        };
        let waker = Arc::new(TaskWaker {
            id,
            queued: AtomicBool::new(true),
            ready: self.inner.ready.clone(),
        });
        let task = Task {
            future: Some(Box::pin(wrapped)),
            waker,
        };
        self.inner.tasks.borrow_mut().insert(id, task);
        self.inner.ready.push(id);
        JoinHandle {
            id,
            state,
            sim: Rc::downgrade(&self.inner),
        }
    }

    /// Completes after `duration` of virtual time.
    pub fn sleep(&self, duration: Duration) -> Sleep {
        self.sleep_until(self.now() + duration)
    }

    /// Completes when the virtual clock reaches `deadline`.
    pub fn sleep_until(&self, deadline: Duration) -> Sleep {
        Sleep {
            sim: self.clone(),
            deadline,
            key: None,
        }
    }

    /// Runs `future` for at most `duration` of virtual time.
    pub fn timeout<F: Future>(&self, duration: Duration, future: F) -> Timeout<F> {
        Timeout {
            future: Box::pin(future),
            sleep: self.sleep(duration),
        }
    }

    /// Lets every other runnable task run once before this one continues.
    pub fn yield_now(&self) -> YieldNow {
        YieldNow { yielded: false }
    }

    fn register_timer(&self, deadline: Duration, waker: Waker) -> TimerKey {
        let seq = self.inner.next_timer_seq.get();
        self.inner.next_timer_seq.set(seq + 1);
        let key = (deadline, seq);
        self.inner.timers.borrow_mut().insert(key, waker);
        key
    }
}

struct JoinState<T> {
    output: Option<T>,
    waiter: Option<Waker>,
    done: bool,
}

/// Awaits a spawned task's output. Dropping the handle detaches the task (it keeps running);
/// [`JoinHandle::abort`] drops the task's future.
pub struct JoinHandle<T> {
    id: TaskId,
    state: Rc<RefCell<JoinState<T>>>,
    sim: Weak<Inner>,
}

impl<T> JoinHandle<T> {
    /// Drops the task's future now (its destructors run before this returns, unless the task is
    /// the one calling). Awaiting an aborted task yields `Err(JoinError)`.
    pub fn abort(&self) {
        let Some(sim) = self.sim.upgrade() else {
            return;
        };
        let removed = sim.tasks.borrow_mut().remove(&self.id);
        let waiter = {
            let mut state = self.state.borrow_mut();
            state.done = true;
            state.waiter.take()
        };
        drop(removed);
        if let Some(waiter) = waiter {
            waiter.wake();
        }
    }

    /// True once the task finished or was aborted.
    pub fn is_finished(&self) -> bool {
        self.state.borrow().done
    }
}

impl<T> Future for JoinHandle<T> {
    type Output = Result<T, JoinError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.state.borrow_mut();
        if let Some(output) = state.output.take() {
            return Poll::Ready(Ok(output));
        }
        if state.done {
            return Poll::Ready(Err(JoinError));
        }
        state.waiter = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// A virtual-time timer. Dropping it disarms it.
pub struct Sleep {
    sim: SimHandle,
    deadline: Duration,
    key: Option<TimerKey>,
}

impl Sleep {
    pub fn deadline(&self) -> Duration {
        self.deadline
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.sim.now() >= self.deadline {
            self.disarm();
            return Poll::Ready(());
        }
        let armed = self.key.and_then(|key| {
            let mut timers = self.sim.inner.timers.borrow_mut();
            timers
                .get_mut(&key)
                .map(|waker| waker.clone_from(cx.waker()))
        });
        if armed.is_none() {
            let key = self.sim.register_timer(self.deadline, cx.waker().clone());
            self.key = Some(key);
        }
        Poll::Pending
    }
}

impl Sleep {
    fn disarm(&mut self) {
        if let Some(key) = self.key.take() {
            let removed = self.sim.inner.timers.borrow_mut().remove(&key);
            drop(removed);
        }
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        self.disarm();
    }
}

/// The future passed to [`SimHandle::timeout`] did not finish in time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("virtual-time deadline elapsed")]
pub struct Elapsed;

/// Output of [`SimHandle::timeout`].
pub struct Timeout<F> {
    /// Boxed so that `Timeout` is `Unpin` without unsafe pin projection; one allocation per
    /// timeout is noise next to what a simulated RPC costs.
    future: Pin<Box<F>>,
    sleep: Sleep,
}

impl<F: Future> Future for Timeout<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Poll::Ready(output) = self.future.as_mut().poll(cx) {
            return Poll::Ready(Ok(output));
        }
        match Pin::new(&mut self.sleep).poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Elapsed)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Output of [`SimHandle::yield_now`].
pub struct YieldNow {
    yielded: bool,
}

impl Future for YieldNow {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.yielded {
            return Poll::Ready(());
        }
        self.yielded = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}
