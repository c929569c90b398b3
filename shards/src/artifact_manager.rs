//! The artifact manager: one event loop per artifact kind between the consensus manager and the
//! kind's pool. It takes received artifacts from the consensus manager's bounded inbound queue in
//! batches, hands them to the pool, runs the pool's `apply`, and turns its output into slot-table
//! changes (deliver / abort). It also runs `apply` on an interval (the pool's own timed work, and
//! artifacts the node itself produced) and whenever [`ArtifactManager::poke`] is called.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use futures_lite::future::or;

use crate::consensus_manager::driver::PoolInput;
use crate::consensus_manager::GossipHandle;
use crate::runtime::TaskHandle;
use crate::signal::Signal;

/// Counters of one artifact manager.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArtifactManagerStats {
    pub batches: u64,
    pub inserted: u64,
    pub removed: u64,
    pub delivered: u64,
    pub aborted: u64,
    /// Deliveries the full slot table refused (the pool must purge faster).
    pub refused_full: u64,
}

struct Inner {
    gossip: GossipHandle,
    batch_max: usize,
    apply_interval: Duration,
    signal: Rc<Signal>,
    stopped: Cell<bool>,
    stats: Cell<ArtifactManagerStats>,
}

/// A running artifact manager.
pub struct ArtifactManager {
    inner: Rc<Inner>,
    task: Option<TaskHandle>,
}

impl ArtifactManager {
    /// Starts the loop for `gossip`'s kind: batches of at most `batch_max` inputs, `apply` at
    /// least every `apply_interval`.
    pub fn start(gossip: GossipHandle, batch_max: usize, apply_interval: Duration) -> Self {
        assert!(batch_max > 0);
        let inner = Rc::new(Inner {
            signal: gossip.inbound_signal(),
            gossip,
            batch_max,
            apply_interval,
            stopped: Cell::new(false),
            stats: Cell::new(ArtifactManagerStats::default()),
        });
        let runner = inner.clone();
        let task = inner
            .gossip
            .runtime()
            .spawn(Box::pin(async move { runner.run().await }));
        ArtifactManager {
            inner,
            task: Some(task),
        }
    }

    /// Runs the pool's `apply` soon (the pool has new work, e.g. an artifact the node made).
    pub fn poke(&self) {
        self.inner.signal.notify();
    }

    pub fn stats(&self) -> ArtifactManagerStats {
        self.inner.stats.get()
    }

    /// Ends the loop and waits for it.
    pub async fn stop(&mut self) {
        self.inner.stopped.set(true);
        self.inner.signal.notify();
        if let Some(task) = self.task.take() {
            task.join().await;
        }
    }
}

impl Inner {
    async fn run(&self) {
        let runtime = self.gossip.runtime();
        while !self.stopped.get() {
            let more = self.step();
            if more {
                // A full batch: let the shard's other tasks run before the next one.
                runtime.sleep(Duration::ZERO).await;
                continue;
            }
            let sleep = runtime.sleep(self.apply_interval);
            or(self.signal.wait(), sleep).await;
        }
    }

    /// One batch: inputs to the pool, `apply`, transmits to the slot table. True if the inbound
    /// queue had a full batch (there may be more).
    fn step(&self) -> bool {
        let batch = self.gossip.take_inbound(self.batch_max);
        let full = batch.len() == self.batch_max;
        let mut stats = self.stats.get();
        let now = self.gossip.runtime().now();
        let transmits = {
            let pool = self.gossip.pool();
            let mut pool = pool.borrow_mut();
            for input in batch {
                match input {
                    PoolInput::Insert { artifact, from } => {
                        stats.inserted += 1;
                        pool.insert_unvalidated(from, artifact);
                    }
                    PoolInput::Remove(id) => {
                        stats.removed += 1;
                        pool.remove_unvalidated(&id);
                    }
                }
            }
            pool.apply(now)
        };
        stats.batches += 1;
        for transmit in &transmits {
            match transmit {
                crate::artifact::Transmit::Deliver { .. } => stats.delivered += 1,
                crate::artifact::Transmit::Abort(_) => stats.aborted += 1,
            }
        }
        stats.refused_full += self.gossip.apply_transmits(transmits) as u64;
        self.stats.set(stats);
        full
    }
}
