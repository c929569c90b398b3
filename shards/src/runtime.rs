//! What a service driver needs from the executor it runs on: a clock, timers and tasks. Two
//! implementations: glommio (a real shard) and the simulator (virtual time, one thread), so the
//! same driver code runs in production and in deterministic simulations.

use std::future::Future;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::future::or;
use icn_engine::sim::SimHandle;
use icn_engine::transport::LocalBoxFuture;

/// A shard's executor as the service drivers see it.
pub trait Runtime: 'static {
    /// Monotonic time since the runtime's epoch.
    fn now(&self) -> Duration;
    fn sleep(&self, duration: Duration) -> LocalBoxFuture<()>;
    /// Starts `future` on this shard; it runs until it finishes or is aborted.
    fn spawn(&self, future: LocalBoxFuture<()>) -> TaskHandle;
}

/// A spawned task: abort it, or wait for it to end.
pub enum TaskHandle {
    Glommio(glommio::task::JoinHandle<()>),
    Sim(icn_engine::sim::JoinHandle<()>),
}

impl TaskHandle {
    /// Stops the task at its next await point (its future is dropped).
    pub fn abort(&self) {
        match self {
            TaskHandle::Glommio(handle) => handle.cancel(),
            TaskHandle::Sim(handle) => handle.abort(),
        }
    }

    /// Waits until the task finished or was aborted.
    pub async fn join(self) {
        match self {
            TaskHandle::Glommio(handle) => {
                let _ = handle.await;
            }
            TaskHandle::Sim(handle) => {
                let _ = handle.await;
            }
        }
    }
}

/// Runs `future` with a deadline: `None` if `limit` passes first.
pub async fn timeout<T>(
    runtime: &dyn Runtime,
    limit: Duration,
    future: impl Future<Output = T>,
) -> Option<T> {
    let sleep = runtime.sleep(limit);
    or(async { Some(future.await) }, async {
        sleep.await;
        None
    })
    .await
}

/// The glommio executor of the current thread.
#[derive(Clone)]
pub struct GlommioRuntime {
    epoch: Instant,
}

impl GlommioRuntime {
    pub fn new() -> Rc<GlommioRuntime> {
        Rc::new(GlommioRuntime {
            epoch: Instant::now(),
        })
    }
}

impl Runtime for GlommioRuntime {
    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    fn sleep(&self, duration: Duration) -> LocalBoxFuture<()> {
        Box::pin(glommio::timer::sleep(duration))
    }

    fn spawn(&self, future: LocalBoxFuture<()>) -> TaskHandle {
        TaskHandle::Glommio(glommio::spawn_local(future).detach())
    }
}

/// The simulator (virtual time).
#[derive(Clone)]
pub struct SimRuntime {
    sim: SimHandle,
}

impl SimRuntime {
    pub fn new(sim: SimHandle) -> Rc<SimRuntime> {
        Rc::new(SimRuntime { sim })
    }
}

impl Runtime for SimRuntime {
    fn now(&self) -> Duration {
        self.sim.now()
    }

    fn sleep(&self, duration: Duration) -> LocalBoxFuture<()> {
        Box::pin(self.sim.sleep(duration))
    }

    fn spawn(&self, future: LocalBoxFuture<()>) -> TaskHandle {
        TaskHandle::Sim(self.sim.spawn(future))
    }
}
