//! The shard driver of the peer manager: feeds the sans-I/O [`PeerManager`] with the registry,
//! the transport's connections, RTT samples and penalties, and applies its allowed set to the
//! transport whenever the set's generation moves.
//!
//! One task per node: every `refresh_interval` it re-derives the membership from the registry
//! source (at once after [`PeerManagerHandle::registry_changed`]), samples connections and RTTs,
//! and lifts ended bans at the time [`PeerManager::next_wakeup`] names. A penalty that bans a
//! peer wakes it, so the ban reaches the transport at the same instant (no I/O in the sink).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::future::or;
use icn_engine::registry::{Registry, SubnetId};
use icn_engine::transport::memory::MemoryTransport;
use icn_engine::transport::quic::QuicTransport;
use icn_engine::{NodeId, Transport};

use super::{PeerHealth, PeerManager, PeerManagerConfig, PeerStats};
use crate::consensus_manager::driver::PenaltySink;
use crate::runtime::{Runtime, TaskHandle};
use crate::signal::Signal;

/// The registry version the node holds now (e.g. a `RegistryWatcher`'s `current()`).
pub type RegistrySource = Rc<dyn Fn() -> Arc<Registry>>;

/// What the peer manager needs from a transport beyond [`Transport::peers`].
pub trait PeerTransport: Transport {
    /// Accept connections with exactly `allowed`; close and refuse `refused` (members left out
    /// or banned) and any other connected node outside `allowed`.
    fn apply_peer_set(&self, allowed: &BTreeMap<NodeId, SocketAddr>, refused: &[NodeId]);

    /// Latest round-trip time to `peer`, where the transport measures one.
    fn rtt(&self, _peer: NodeId) -> Option<Duration> {
        None
    }
}

impl PeerTransport for QuicTransport {
    fn apply_peer_set(&self, allowed: &BTreeMap<NodeId, SocketAddr>, _refused: &[NodeId]) {
        // QUIC refuses every peer outside the allowed map, at the handshake and on live
        // connections, so the refused list adds nothing.
        self.set_allowed_peers(allowed.iter().map(|(id, addr)| (*id, *addr)).collect());
    }

    fn rtt(&self, peer: NodeId) -> Option<Duration> {
        self.path_stats(peer).map(|(rtt, _, _)| rtt)
    }
}

impl PeerTransport for MemoryTransport {
    fn apply_peer_set(&self, allowed: &BTreeMap<NodeId, SocketAddr>, refused: &[NodeId]) {
        let network = self.network();
        let local = self.local_id();
        let connected_outside = self
            .peers()
            .into_iter()
            .map(|(peer, _)| peer)
            .filter(|peer| !allowed.contains_key(peer));
        let to_block: BTreeSet<NodeId> = refused.iter().copied().chain(connected_outside).collect();
        for peer in to_block {
            network.block(local, peer);
        }
        for peer in allowed.keys() {
            network.unblock(local, *peer);
        }
    }
}

struct Inner {
    core: RefCell<PeerManager>,
    runtime: Rc<dyn Runtime>,
    subnet: SubnetId,
    registry: RegistrySource,
    registry_dirty: Cell<bool>,
    wake: Signal,
    stopped: Cell<bool>,
    loop_task: RefCell<Option<TaskHandle>>,
}

/// A node's peer manager, shared by its task, its penalty sink and whoever reads its stats.
#[derive(Clone)]
pub struct PeerManagerHandle {
    inner: Rc<Inner>,
}

impl PeerManagerHandle {
    /// Builds the manager for `local` in `subnet`; membership comes from `registry` once the
    /// task starts.
    pub fn new(
        config: PeerManagerConfig,
        local: NodeId,
        subnet: SubnetId,
        registry: RegistrySource,
        runtime: Rc<dyn Runtime>,
    ) -> PeerManagerHandle {
        let mut core = PeerManager::new(config, local);
        core.set_registry(&registry(), &subnet, runtime.now());
        let inner = Inner {
            core: RefCell::new(core),
            runtime,
            subnet,
            registry,
            registry_dirty: Cell::new(false),
            wake: Signal::new(),
            stopped: Cell::new(false),
            loop_task: RefCell::new(None),
        };
        PeerManagerHandle {
            inner: Rc::new(inner),
        }
    }

    /// The closure the consensus managers report offences through.
    pub fn penalty_sink(&self) -> PenaltySink {
        let inner = self.inner.clone();
        Rc::new(move |peer, offence| {
            let now = inner.runtime.now();
            if inner.core.borrow_mut().penalize(peer, offence, now) {
                inner.wake.notify();
            }
        })
    }

    /// A new registry version is available: re-derive the membership now.
    pub fn registry_changed(&self) {
        self.inner.registry_dirty.set(true);
        self.inner.wake.notify();
    }

    pub fn stats(&self) -> PeerStats {
        self.inner.core.borrow().stats(self.inner.runtime.now())
    }

    pub fn health(&self, peer: NodeId) -> Option<PeerHealth> {
        self.inner.core.borrow().health(peer).copied()
    }

    pub fn points(&self, peer: NodeId) -> u64 {
        let now = self.inner.runtime.now();
        self.inner.core.borrow().points(peer, now)
    }

    pub fn is_allowed(&self, peer: NodeId) -> bool {
        self.inner.core.borrow().is_allowed(peer)
    }

    pub fn allowed(&self) -> BTreeMap<NodeId, SocketAddr> {
        self.inner.core.borrow().allowed().clone()
    }

    /// Spawns the task that drives the manager over `transport`.
    pub fn start<T: PeerTransport + 'static>(&self, transport: Rc<T>) {
        let handle = self.clone();
        let task = self
            .inner
            .runtime
            .spawn(Box::pin(async move { handle.run(transport).await }));
        *self.inner.loop_task.borrow_mut() = Some(task);
    }

    /// Ends the task and waits for it. The transport keeps the last applied set.
    pub async fn stop(&self) {
        self.inner.stopped.set(true);
        self.inner.wake.notify();
        let task = self.inner.loop_task.borrow_mut().take();
        if let Some(task) = task {
            task.join().await;
        }
    }

    async fn run<T: PeerTransport + 'static>(&self, transport: Rc<T>) {
        let inner = &self.inner;
        let refresh_interval = inner.core.borrow().config().refresh_interval;
        let mut next_refresh = Duration::ZERO;
        let mut applied_generation = None;
        while !inner.stopped.get() {
            let now = inner.runtime.now();
            if now >= next_refresh || inner.registry_dirty.replace(false) {
                self.refresh(&*transport, now);
                next_refresh = now + refresh_interval;
            }
            inner.core.borrow_mut().poll(now);
            applied_generation = Some(self.apply(&*transport, applied_generation));
            let wakeup = inner
                .core
                .borrow()
                .next_wakeup()
                .map_or(next_refresh, |at| at.min(next_refresh));
            let sleep = inner.runtime.sleep(wakeup.saturating_sub(now));
            or(inner.wake.wait(), sleep).await;
        }
    }

    /// Re-derives the membership and samples connections and RTTs.
    fn refresh<T: PeerTransport>(&self, transport: &T, now: Duration) {
        let inner = &self.inner;
        let registry = (inner.registry)();
        let mut core = inner.core.borrow_mut();
        core.set_registry(&registry, &inner.subnet, now);
        let connected: BTreeMap<NodeId, icn_engine::ConnId> =
            transport.peers().into_iter().collect();
        let members: Vec<NodeId> = core.members().map(|(id, _)| id).collect();
        for peer in members {
            match connected.get(&peer) {
                Some(conn) => {
                    core.connected(peer, *conn, now);
                    if let Some(rtt) = transport.rtt(peer) {
                        core.rtt_sample(peer, rtt, now);
                    }
                }
                None => core.disconnected(peer, now),
            }
        }
    }

    /// Applies the allowed set if its generation moved since `applied`; returns the generation
    /// now applied.
    fn apply<T: PeerTransport>(&self, transport: &T, applied: Option<u64>) -> u64 {
        let (generation, allowed, refused) = {
            let core = self.inner.core.borrow();
            let generation = core.generation();
            if applied == Some(generation) {
                return generation;
            }
            let refused: Vec<NodeId> = core
                .members()
                .map(|(id, _)| id)
                .filter(|id| !core.is_allowed(*id))
                .collect();
            (generation, core.allowed().clone(), refused)
        };
        // Outside the borrow: closing connections drops handlers, which may report penalties.
        transport.apply_peer_set(&allowed, &refused);
        generation
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consensus_manager::Offence;
    use crate::runtime::SimRuntime;
    use icn_engine::registry::{NodeRecord, Subnet};
    use icn_engine::sim::Sim;
    use icn_engine::transport::memory::{MemoryConfig, MemoryNetwork};
    use icn_engine::Router;

    fn registry(ids: &[NodeId], version: u64) -> Arc<Registry> {
        let nodes = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let addr = SocketAddr::from(([127, 0, 0, 1], 5000 + i as u16));
                NodeRecord {
                    node_id: *id,
                    cert_pem: None,
                    quic_addr: addr,
                    tcp_addr: addr,
                    http_addr: None,
                    metrics_addr: None,
                }
            })
            .collect();
        let subnet = Subnet {
            id: SubnetId("test".into()),
            public_key: None,
            nodes,
        };
        Arc::new(Registry::new(version, vec![subnet]).unwrap())
    }

    #[test]
    fn a_ban_disconnects_the_peer_until_it_ends_and_a_removal_disconnects_for_good() {
        let mut sim = Sim::new(icn_engine::sim::test_seed(3));
        let network = MemoryNetwork::new(&sim, MemoryConfig::default());
        let ids: Vec<NodeId> = (0..3u8).map(|i| NodeId([i; 32])).collect();
        let transports: Vec<Rc<MemoryTransport>> = ids
            .iter()
            .map(|id| Rc::new(network.join(*id, Router::new())))
            .collect();
        let current = Rc::new(RefCell::new(registry(&ids, 1)));
        let source: RegistrySource = {
            let current = current.clone();
            Rc::new(move || current.borrow().clone())
        };
        let mut config = PeerManagerConfig::from_tuning(&icn_tuning::Tuning::default().peers);
        config.ban_initial = Duration::from_secs(2);
        let runtime = SimRuntime::new(sim.handle());
        let manager =
            PeerManagerHandle::new(config, ids[0], SubnetId("test".into()), source, runtime);
        manager.start(transports[0].clone());
        let handle = sim.handle();
        let (a, b, c) = (ids[0], ids[1], ids[2]);
        let task_manager = manager.clone();
        let task_network = network.clone();
        sim.block_on(async move {
            let manager = task_manager;
            let network = task_network;
            handle.sleep(Duration::from_millis(10)).await;
            assert_eq!(manager.stats().peers_connected, 2);
            let sink = manager.penalty_sink();
            for _ in 0..4 {
                sink(b, Offence::InvalidArtifact);
            }
            sink(NodeId([9; 32]), Offence::BadMessage);
            handle.sleep(Duration::from_millis(1)).await;
            assert!(
                network.connection(a, b).is_none(),
                "banned peer still connected"
            );
            assert!(network.connection(a, c).is_some());
            handle.sleep(Duration::from_secs(2)).await;
            assert!(network.connection(a, b).is_some(), "ban did not end");
            *current.borrow_mut() = registry(&[a, b], 2);
            manager.registry_changed();
            handle.sleep(Duration::from_millis(1)).await;
            assert!(
                network.connection(a, c).is_none(),
                "removed member still connected"
            );
            let stats = manager.stats();
            assert_eq!((stats.bans_total, stats.peers_banned), (1, 0));
            assert_eq!(stats.penalties_unknown_peer_total, 1);
            assert_eq!((stats.registry_version, stats.peers_allowed), (2, 1));
            manager.stop().await;
        })
        .unwrap();
    }
}
