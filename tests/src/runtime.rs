//! Time for scenarios that run both on glommio (real clock) and under the simulator (virtual
//! clock). A scenario never calls `glommio::timer` or `icn_engine::sim` itself: it asks its
//! [`Runtime`], so the same code drives the QUIC, TCP and memory transports.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_lite::future::or;
use icn_engine::sim::SimHandle;

/// A boxed future that stays on its thread.
pub type LocalFuture<T> = Pin<Box<dyn Future<Output = T>>>;

/// The clock a scenario runs on.
#[derive(Clone)]
pub enum Runtime {
    /// A glommio executor: real time since `epoch`.
    Glommio { epoch: Instant },
    /// The deterministic simulator: virtual time, nothing sleeps for real.
    Sim(SimHandle),
}

impl Runtime {
    pub fn glommio() -> Runtime {
        Runtime::Glommio {
            epoch: Instant::now(),
        }
    }

    /// Time since this runtime started (virtual under the simulator).
    pub fn now(&self) -> Duration {
        match self {
            Runtime::Glommio { epoch } => epoch.elapsed(),
            Runtime::Sim(sim) => sim.now(),
        }
    }

    /// True when time is virtual (durations say nothing about real speed).
    pub fn is_virtual(&self) -> bool {
        matches!(self, Runtime::Sim(_))
    }

    pub fn sleep(&self, duration: Duration) -> LocalFuture<()> {
        match self {
            Runtime::Glommio { .. } => Box::pin(glommio::timer::sleep(duration)),
            Runtime::Sim(sim) => Box::pin(sim.sleep(duration)),
        }
    }

    /// Runs `future` for at most `limit`; None when the limit passed first (the future is then
    /// dropped, which is how an RPC is cancelled).
    pub async fn timeout<F: Future>(&self, limit: Duration, future: F) -> Option<F::Output> {
        or(async { Some(future.await) }, async {
            self.sleep(limit).await;
            None
        })
        .await
    }

    /// Polls `condition` every [`POLL_INTERVAL`] until it holds or `limit` passes; returns
    /// whether it held.
    pub async fn wait_until(&self, limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
        let deadline = self.now() + limit;
        loop {
            if condition() {
                return true;
            }
            if self.now() >= deadline {
                return false;
            }
            self.sleep(POLL_INTERVAL).await;
        }
    }
}

/// How often [`Runtime::wait_until`] re-checks its condition.
pub const POLL_INTERVAL: Duration = Duration::from_millis(5);

/// Runs all `futures` concurrently on the current task and returns their outputs in order.
/// (futures-lite 1 has no `join_all`; spawning would tie scenarios to one executor.)
pub async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut pending: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut all_done = true;
        for (future, output) in pending.iter_mut().zip(outputs.iter_mut()) {
            if output.is_some() {
                continue;
            }
            match future.as_mut().poll(cx) {
                Poll::Ready(value) => *output = Some(value),
                Poll::Pending => all_done = false,
            }
        }
        if all_done {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    outputs
        .into_iter()
        .map(|output| output.expect("every future completed"))
        .collect()
}
