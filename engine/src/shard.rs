//! Shard runtime: one glommio executor per core, pinned, joined by bounded channels.
//!
//! [`run_shards`] starts `count` threads, each running one `LocalExecutor` pinned to its own CPU
//! (when pinning is on), connects them with a full mesh of bounded single-producer glommio shared
//! channels, one per ordered pair of shards (a full channel hands the message back to the sender
//! with `try_send_to`, or `send_to` waits: the caller decides, nothing grows), runs the
//! given shard body on each, and joins them all. Shutdown is cooperative and quick: a
//! [`Shutdown`] flag (set by [`Shutdown::trigger`] or by SIGINT/SIGTERM once
//! [`install_signal_handlers`] ran) is observed by [`Shutdown::wait`] within
//! [`SHUTDOWN_POLL_INTERVAL`]; a shard's tasks spawned through [`ShardContext::spawn`] are joined
//! before its body returns.

use std::cell::RefCell;
use std::future::Future;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use glommio::channels::shared_channel::{
    self, ConnectedReceiver, ConnectedSender, SharedReceiver, SharedSender,
};
use glommio::{LocalExecutorBuilder, Placement, Task};

/// How often shutdown waiters look at the flag (bounds Ctrl-C-to-stop latency).
pub const SHUTDOWN_POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Settings of the shard runtime, mapped from the `engine` tuning section.
#[derive(Clone, Debug)]
pub struct ShardConfig {
    /// Number of shards; 0 means one per available CPU.
    pub shards: usize,
    /// Pin shard i to CPU i (modulo the CPUs available).
    pub pin_cores: bool,
    /// glommio io memory per executor; several executors must fit under RLIMIT_MEMLOCK.
    pub io_memory_bytes: usize,
    /// Capacity of each cross-shard channel (messages).
    pub channel_capacity: usize,
    /// How long an idle executor busy-polls before sleeping in io_uring (None: sleeps at once).
    pub spin_before_park: Option<Duration>,
    /// Longest an executor runs tasks before polling its rings (completions, foreign wakes).
    pub preempt_timer: Duration,
    /// Period of every executor's [`spawn_wake_tick`]: the longest a runnable task can wait
    /// when glommio parks with it queued.
    pub wake_tick: Duration,
}

impl Default for ShardConfig {
    fn default() -> Self {
        ShardConfig {
            shards: 0,
            pin_cores: true,
            io_memory_bytes: 512 << 10,
            channel_capacity: 1024,
            spin_before_park: None,
            preempt_timer: Duration::from_millis(10),
            wake_tick: WAKE_TICK_DEFAULT,
        }
    }
}

/// [`ShardConfig::wake_tick`] where no tuning says otherwise (`engine.wake_tick_us`'s default).
pub const WAKE_TICK_DEFAULT: Duration =
    Duration::from_micros(icn_tuning::ENGINE_WAKE_TICK_US_DEFAULT);

/// Spawns, on the current glommio executor, a detached task that sleeps `period` in a loop, so
/// the executor never sleeps longer than `period` without looking at its task queues again.
///
/// glommio 0.9's run loop can park with a task queued. As we read its executor: when the
/// preemption flag is already up at the top of `run_task_queues` (a latency-ring completion
/// landed between its I/O poll and the task run, as when the thread is descheduled there), it
/// runs nothing and reports "ran nothing", and the loop goes on to park; the completion that
/// raised the flag need not wake any task, so the executor sleeps until some later event with a
/// woken task still queued. With no later event (two executors connecting their shard channels,
/// nothing else armed) it sleeps for ever: `icn node` hung at start under CPU load, and
/// `tests::repeated_starts_with_an_immediate_message_all_finish` hung within 37-848 starts
/// without the tick and never with it. The tick is that later event; it wakes an idle executor
/// once per period (see `engine.wake_tick_us` for the measured cost).
pub fn spawn_wake_tick(period: Duration) {
    glommio::spawn_local(async move {
        loop {
            glommio::timer::sleep(period).await;
        }
    })
    .detach();
}

impl ShardConfig {
    /// The shard count this config resolves to on this machine.
    pub fn resolved_shards(&self) -> usize {
        if self.shards > 0 {
            self.shards
        } else {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        }
    }
}

/// A process-wide stop flag shared by all shards.
#[derive(Clone, Default)]
pub struct Shutdown {
    flag: Arc<AtomicBool>,
}

static SIGNALLED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_signal: libc::c_int) {
    SIGNALLED.store(true, Ordering::SeqCst);
}

/// Makes SIGINT and SIGTERM set the stop flag that every [`Shutdown`] observes.
pub fn install_signal_handlers() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

impl Shutdown {
    pub fn new() -> Self {
        Shutdown::default()
    }

    pub fn trigger(&self) {
        self.flag.store(true, Ordering::SeqCst);
    }

    /// True once triggered or once a handled signal arrived.
    pub fn is_triggered(&self) -> bool {
        self.flag.load(Ordering::SeqCst) || SIGNALLED.load(Ordering::SeqCst)
    }

    /// Completes within [`SHUTDOWN_POLL_INTERVAL`] of the trigger.
    pub async fn wait(&self) {
        while !self.is_triggered() {
            glommio::timer::sleep(SHUTDOWN_POLL_INTERVAL).await;
        }
    }
}

/// What a shard body gets: its index, the mesh to the other shards, the stop flag, and a task set.
pub struct ShardContext<M: Send + 'static> {
    pub index: usize,
    pub count: usize,
    /// `senders[j]` reaches shard j (None for this shard itself).
    senders: Vec<Option<ConnectedSender<M>>>,
    /// `receivers[i]` carries what shard i sent here (None for this shard itself).
    receivers: Vec<Option<ConnectedReceiver<M>>>,
    pub shutdown: Shutdown,
    tasks: Rc<RefCell<Vec<Task<()>>>>,
}

/// Why a cross-shard send failed; the message comes back to the caller.
#[derive(Debug)]
pub enum SendError<M> {
    /// The target's channel is full (only from `try_send_to`).
    Full(M),
    /// The target shard stopped, or the index names no other shard.
    Closed(M),
}

/// Recovers the message from glommio's channel error.
fn send_error<M>(error: glommio::GlommioError<M>) -> SendError<M> {
    use glommio::{GlommioError, ResourceType};
    match error {
        GlommioError::WouldBlock(ResourceType::Channel(message)) => SendError::Full(message),
        GlommioError::Closed(ResourceType::Channel(message)) => SendError::Closed(message),
        // Channels report only the two above; anything else is a glommio contract change.
        other => unreachable!("shared channel send failed unexpectedly: {other}"),
    }
}

impl<M: Send + 'static> ShardContext<M> {
    /// Sends to shard `target`, waiting while its channel is full.
    pub async fn send_to(&self, target: usize, message: M) -> Result<(), SendError<M>> {
        match self.senders.get(target).and_then(Option::as_ref) {
            Some(sender) => sender.send(message).await.map_err(send_error),
            None => Err(SendError::Closed(message)),
        }
    }

    /// Sends to shard `target` without waiting; a full channel hands the message back.
    pub fn try_send_to(&self, target: usize, message: M) -> Result<(), SendError<M>> {
        match self.senders.get(target).and_then(Option::as_ref) {
            Some(sender) => sender.try_send(message).map_err(send_error),
            None => Err(SendError::Closed(message)),
        }
    }

    /// Receives the next message shard `source` sent here; None once it stopped.
    pub async fn recv_from(&self, source: usize) -> Option<M> {
        self.receivers.get(source)?.as_ref()?.recv().await
    }

    /// Spawns a task that is joined when the shard stops.
    pub fn spawn(&self, future: impl Future<Output = ()> + 'static) {
        self.tasks.borrow_mut().push(glommio::spawn_local(future));
    }

    /// Waits for every spawned task; tasks still running after `grace` are cancelled.
    pub async fn join_tasks(&self, grace: Duration) {
        let tasks: Vec<Task<()>> = self.tasks.borrow_mut().drain(..).collect();
        let deadline = std::time::Instant::now() + grace;
        for mut task in tasks {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let _ = glommio::timer::timeout(left.max(Duration::from_millis(1)), async {
                (&mut task).await;
                Ok(())
            })
            .await;
            // Dropping a glommio Task cancels it if it is still running.
            drop(task);
        }
    }
}

/// Connects every end of one shard concurrently, in this task (in sequence, two shards would wait
/// on each other: a connect finishes only once the other end connected too).
async fn connect_ends<M: Send + 'static>(
    senders: Vec<Option<SharedSender<M>>>,
    receivers: Vec<Option<SharedReceiver<M>>>,
) -> (
    Vec<Option<ConnectedSender<M>>>,
    Vec<Option<ConnectedReceiver<M>>>,
) {
    let mut sending: Vec<_> = senders
        .into_iter()
        .map(|end| end.map(|end| Box::pin(end.connect())))
        .collect();
    let mut receiving: Vec<_> = receivers
        .into_iter()
        .map(|end| end.map(|end| Box::pin(end.connect())))
        .collect();
    let mut sent: Vec<Option<ConnectedSender<M>>> = (0..sending.len()).map(|_| None).collect();
    let mut received: Vec<Option<ConnectedReceiver<M>>> =
        (0..receiving.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        // Both sides are polled every time (`&&` would skip the receivers while a sender waits).
        let senders_done = poll_into(&mut sending, &mut sent, cx);
        let receivers_done = poll_into(&mut receiving, &mut received, cx);
        if senders_done && receivers_done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    (sent, received)
}

/// Polls each future still in `futures` once, moving each finished one's output into the same
/// index of `outputs`; whether none is left.
fn poll_into<F: Future + Unpin>(
    futures: &mut [Option<F>],
    outputs: &mut [Option<F::Output>],
    cx: &mut std::task::Context<'_>,
) -> bool {
    let mut done = true;
    for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
        if let Some(pending) = future {
            match std::pin::Pin::new(pending).poll(cx) {
                std::task::Poll::Ready(value) => {
                    *output = Some(value);
                    *future = None;
                }
                std::task::Poll::Pending => done = false,
            }
        }
    }
    done
}

/// One shard's channel ends before connecting: senders to each shard, receivers from each.
type ShardEnds<M> = (Vec<Option<SharedSender<M>>>, Vec<Option<SharedReceiver<M>>>);

/// Applies the `engine.spin_before_park_us` setting to an executor builder (None leaves glommio's
/// default: park at once). Every executor the engine or a bench builds goes through here.
pub fn with_spin_before_park(
    builder: LocalExecutorBuilder,
    spin: Option<Duration>,
) -> LocalExecutorBuilder {
    match spin {
        Some(spin) if !spin.is_zero() => builder.spin_before_park(spin),
        _ => builder,
    }
}

/// Why the shards could not run.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error("starting shard {index}: {message}")]
    Start { index: usize, message: String },
    #[error("shard {index} panicked")]
    Panicked { index: usize },
}

/// Runs `body` on `config.resolved_shards()` pinned executors and returns their results in shard
/// order. `M` is the type of the cross-shard messages.
pub fn run_shards<M, T, F, Fut>(
    config: &ShardConfig,
    shutdown: Shutdown,
    body: F,
) -> Result<Vec<T>, ShardError>
where
    M: Send + 'static,
    T: Send + 'static,
    F: Fn(ShardContext<M>) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = T> + 'static,
{
    let count = config.resolved_shards();
    let cpus = core_affinity::get_core_ids().unwrap_or_default();
    let capacity = config.channel_capacity.max(1);
    // ends[i] = (senders from shard i to each j, receivers at shard i from each j).
    let mut ends: Vec<ShardEnds<M>> = (0..count)
        .map(|_| {
            (
                (0..count).map(|_| None).collect(),
                (0..count).map(|_| None).collect(),
            )
        })
        .collect();
    for from in 0..count {
        for to in 0..count {
            if from != to {
                let (sender, receiver) = shared_channel::new_bounded(capacity);
                ends[from].0[to] = Some(sender);
                ends[to].1[from] = Some(receiver);
            }
        }
    }
    let mut handles = Vec::with_capacity(count);
    for (index, (senders, receivers)) in ends.into_iter().enumerate() {
        let builder = LocalExecutorBuilder::new(placement(config, &cpus, index))
            .name(&format!("icn-shard-{index}"))
            .io_memory(config.io_memory_bytes)
            .preempt_timer(config.preempt_timer);
        let builder = with_spin_before_park(builder, config.spin_before_park);
        let body = body.clone();
        let shutdown = shutdown.clone();
        let wake_tick = config.wake_tick;
        let handle = builder
            .spawn(move || async move {
                spawn_wake_tick(wake_tick);
                let (senders, receivers) = connect_ends(senders, receivers).await;
                let ctx = ShardContext {
                    index,
                    count,
                    senders,
                    receivers,
                    shutdown,
                    tasks: Rc::default(),
                };
                body(ctx).await
            })
            .map_err(|error| ShardError::Start {
                index,
                message: error.to_string(),
            })?;
        handles.push(handle);
    }
    let mut results = Vec::with_capacity(count);
    for (index, handle) in handles.into_iter().enumerate() {
        results.push(handle.join().map_err(|error| match error {
            glommio::GlommioError::BuilderError(glommio::BuilderErrorKind::ThreadPanic(_)) => {
                ShardError::Panicked { index }
            }
            // Anything else failed while making the executor (io_uring setup, locked memory).
            other => ShardError::Start {
                index,
                message: other.to_string(),
            },
        })?);
    }
    Ok(results)
}

fn placement(config: &ShardConfig, cpus: &[core_affinity::CoreId], index: usize) -> Placement {
    if config.pin_cores && !cpus.is_empty() {
        Placement::Fixed(cpus[index % cpus.len()].id)
    } else {
        Placement::Unbound
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn shards_exchange_messages_over_the_mesh_and_stop() {
        let config = ShardConfig {
            shards: 2,
            pin_cores: true,
            io_memory_bytes: 256 << 10,
            channel_capacity: 4,
            // Spinning executors must still exchange messages and stop.
            spin_before_park: Some(Duration::from_micros(50)),
            preempt_timer: Duration::from_millis(10),
            wake_tick: WAKE_TICK_DEFAULT,
        };
        let shutdown = Shutdown::new();
        let results = run_shards::<u64, (usize, u64), _, _>(&config, shutdown, |ctx| async move {
            let me = ctx.index;
            let peer = 1 - me;
            // Each shard sends its index * 10 to the other and receives the other's.
            assert!(ctx.send_to(peer, (me as u64) * 10).await.is_ok());
            let got = ctx.recv_from(peer).await.unwrap();
            assert!(
                matches!(ctx.try_send_to(me, 0), Err(SendError::Closed(0))),
                "no channel to itself"
            );
            (me, got)
        })
        .unwrap();
        assert_eq!(results, vec![(0, 10), (1, 0)]);
    }

    /// Starting two shards whose first act is to message each other, many times over, every
    /// start finishes. Under CPU load (the parallel test run) a start without the wake tick
    /// hung within a few hundred rounds: one executor parked with its channel connect queued.
    #[test]
    fn repeated_starts_with_an_immediate_message_all_finish() {
        const ROUNDS: usize = 500;
        const ROUND_MAX: Duration = Duration::from_secs(10);
        for round in 0..ROUNDS {
            let config = ShardConfig {
                shards: 2,
                pin_cores: false,
                io_memory_bytes: 512 << 10,
                channel_capacity: 4,
                spin_before_park: None,
                preempt_timer: Duration::from_millis(10),
                wake_tick: WAKE_TICK_DEFAULT,
            };
            let (done, finished) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let results =
                    run_shards::<u64, u64, _, _>(&config, Shutdown::new(), |ctx| async move {
                        if ctx.index == 1 {
                            for value in 0..3 {
                                assert!(ctx.send_to(0, value).await.is_ok());
                            }
                            0
                        } else {
                            let mut sum = 0;
                            for _ in 0..3 {
                                sum += ctx.recv_from(1).await.unwrap();
                            }
                            sum
                        }
                    });
                let _ = done.send(results.map_err(|e| e.to_string()));
            });
            match finished.recv_timeout(ROUND_MAX) {
                Ok(results) => assert_eq!(results.unwrap(), vec![3, 0], "round {round}"),
                Err(_) => panic!("round {round}: the shards did not finish in {ROUND_MAX:?}"),
            }
        }
    }

    #[test]
    fn shutdown_is_observed_quickly_and_tasks_are_joined() {
        let config = ShardConfig {
            shards: 2,
            pin_cores: false,
            io_memory_bytes: 256 << 10,
            channel_capacity: 4,
            spin_before_park: None,
            preempt_timer: Duration::from_millis(10),
            wake_tick: WAKE_TICK_DEFAULT,
        };
        let shutdown = Shutdown::new();
        let trigger = shutdown.clone();
        let started = Instant::now();
        let stopper = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            trigger.trigger();
        });
        let results = run_shards::<(), u32, _, _>(&config, shutdown, |ctx| async move {
            let finished = Rc::new(std::cell::Cell::new(0u32));
            for _ in 0..3 {
                let finished = finished.clone();
                let stop = ctx.shutdown.clone();
                ctx.spawn(async move {
                    stop.wait().await;
                    finished.set(finished.get() + 1);
                });
            }
            ctx.shutdown.wait().await;
            ctx.join_tasks(Duration::from_secs(1)).await;
            finished.get()
        })
        .unwrap();
        stopper.join().unwrap();
        assert_eq!(results, vec![3, 3]);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "stopped within 1 s"
        );
    }
}
