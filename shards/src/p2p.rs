//! A node's P2P layer as `icn node` runs it: one consensus manager, artifact manager and pool per
//! artifact kind of the reference workload, plus the workload itself.
//!
//! Kinds (the IC's, reduced to what exercises the networking layer):
//! - blocks (kind 0): one per height from the height's block maker, advertised and fetched
//!   (chunked when large), relayed by every node that validated it; priority High.
//! - notarization shares (kind 1): one per node per block it validated; latency sensitive, so
//!   always pushed; not relayed (every node sends its own to everyone); priority High.
//! - ingress (kind 2): made by every node at a configured rate; pushed when small; priority Low.
//!
//! The workload (see [`WorkloadConfig`]) is a reference driver for the networking layer, not a
//! consensus protocol: heights come from the wall clock (`unix_ms / block_interval_ms`), so every
//! node agrees on the height and on its block maker (the members sorted by id, rotating per
//! height) without talking. Every payload starts with its producer's wall-clock timestamp, so a
//! receiver on the same host (or with synchronized clocks) measures delivery latency.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use icn_engine::{Buf, NodeId, Priority, Router, Transport};
use icn_tuning::Tuning;

use crate::artifact::{Artifact, ArtifactKind, ArtifactPool};
use crate::artifact_manager::{ArtifactManager, ArtifactManagerStats};
use crate::consensus_manager::driver::PenaltySink;
use crate::consensus_manager::{ConsensusManager, GossipConfig, GossipHandle, GossipStats};
use crate::pool::{height_of, make_artifact, MemoryPool, MemoryPoolConfig, PoolStats};
use crate::runtime::{Runtime, TaskHandle};

pub const BLOCK: ArtifactKind = ArtifactKind(0);
pub const NOTARIZATION: ArtifactKind = ArtifactKind(1);
pub const INGRESS: ArtifactKind = ArtifactKind(2);
/// Every kind, with its metrics label.
pub const KINDS: [(ArtifactKind, &str); 3] = [
    (BLOCK, "block"),
    (NOTARIZATION, "notarization"),
    (INGRESS, "ingress"),
];

/// Heights each pool keeps by default before purging (and withdrawing) older artifacts. Bounds
/// every pool and slot table: about this × (one block + one share per node + ingress per
/// height). A node cut off for longer than heights_kept × block_interval_ms misses what was
/// purged meanwhile.
pub const HEIGHTS_KEPT_DEFAULT: u64 = 16;
/// Most heights a pool may keep (bounds pool memory whatever the config says).
pub const HEIGHTS_KEPT_MAX: u64 = 10_000;
/// How often an artifact manager runs its pool's `apply` without being poked.
pub const APPLY_INTERVAL: Duration = Duration::from_millis(50);
/// Bytes at the start of every workload payload: producer timestamp (µs) and height.
pub const PAYLOAD_HEADER_BYTES: usize = 16;
/// Size of a notarization share's payload (a BLS signature share is 48 bytes, plus the header).
pub const SHARE_BYTES: usize = 64;
/// Latencies recorded up to this; longer ones are clamped (one minute).
const LATENCY_MAX_US: u64 = 60_000_000;

/// The reference workload's knobs (the `[workload]` table of a node config).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkloadConfig {
    /// One height per interval; the height's block maker makes one block.
    pub block_interval_ms: u64,
    pub block_bytes: usize,
    /// Ingress artifacts each node makes per second (0: none).
    pub ingress_per_s: u32,
    pub ingress_bytes: usize,
    /// Heights every pool keeps (see [`HEIGHTS_KEPT_DEFAULT`]).
    pub heights_kept: u64,
    /// Stop making blocks and ingress this long after the node started (0: never), so a test
    /// can compare what was made with what arrived once everything settled. Shares for blocks
    /// validated later are still made.
    pub stop_after_ms: u64,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        WorkloadConfig {
            block_interval_ms: 500,
            block_bytes: 256 << 10,
            ingress_per_s: 200,
            ingress_bytes: 512,
            heights_kept: HEIGHTS_KEPT_DEFAULT,
            stop_after_ms: 0,
        }
    }
}

impl WorkloadConfig {
    /// Checks the values against the bounds the node can take.
    pub fn validate(&self, tuning: &Tuning) -> Result<(), String> {
        let message_max = tuning.rpc.message_bytes_max;
        if !(10..=60_000).contains(&self.block_interval_ms) {
            return Err(format!(
                "workload.block_interval_ms must be 10..=60000, not {}",
                self.block_interval_ms
            ));
        }
        for (name, bytes) in [
            ("block_bytes", self.block_bytes),
            ("ingress_bytes", self.ingress_bytes),
        ] {
            if bytes < PAYLOAD_HEADER_BYTES || bytes > message_max {
                return Err(format!(
                    "workload.{name} must be {PAYLOAD_HEADER_BYTES}..={message_max} (rpc.message_bytes_max), not {bytes}"
                ));
            }
        }
        if !(1..=HEIGHTS_KEPT_MAX).contains(&self.heights_kept) {
            return Err(format!(
                "workload.heights_kept must be 1..={HEIGHTS_KEPT_MAX}, not {}",
                self.heights_kept
            ));
        }
        if self.ingress_per_s > 100_000 {
            return Err(format!(
                "workload.ingress_per_s must be at most 100000, not {}",
                self.ingress_per_s
            ));
        }
        Ok(())
    }
}

/// Deliveries of one kind as this node saw them: artifacts validated from peers, their bytes,
/// and the latency from the producer's timestamp.
pub struct DeliveryStats {
    pub received: u64,
    pub received_bytes: u64,
    /// Since the last [`DeliveryStats::take_window`].
    pub window_us: Histogram<u64>,
    /// Sum of the window's latencies (what a Prometheus summary's `_sum` needs).
    pub window_sum_us: u64,
}

impl DeliveryStats {
    fn new() -> DeliveryStats {
        DeliveryStats {
            received: 0,
            received_bytes: 0,
            window_us: Histogram::new_with_bounds(1, LATENCY_MAX_US, 3)
                .expect("valid histogram bounds"),
            window_sum_us: 0,
        }
    }

    /// Counts an artifact the pool validated, if it came from a peer (not this node's own).
    fn observe(&mut self, artifact: &Artifact, from: Option<NodeId>) {
        if from.is_some() {
            self.record(artifact, unix_us());
        }
    }

    fn record(&mut self, artifact: &Artifact, now_unix_us: u64) {
        self.received += 1;
        self.received_bytes += artifact.payload.len() as u64;
        if let Some(produced_us) = payload_timestamp_us(&artifact.payload) {
            let latency = now_unix_us
                .saturating_sub(produced_us)
                .clamp(1, LATENCY_MAX_US);
            // Within the histogram's bounds after the clamp.
            let _ = self.window_us.record(latency);
            self.window_sum_us = self.window_sum_us.saturating_add(latency);
        }
    }

    /// The window's p50 and p99 (None without samples) and a fresh window.
    pub fn take_window(&mut self) -> Option<(u64, u64)> {
        let quantiles = (!self.window_us.is_empty()).then(|| {
            (
                self.window_us.value_at_quantile(0.5),
                self.window_us.value_at_quantile(0.99),
            )
        });
        self.window_us.reset();
        self.window_sum_us = 0;
        quantiles
    }
}

/// One kind's parts.
pub struct KindParts {
    pub kind: ArtifactKind,
    pub label: &'static str,
    pub pool: Rc<RefCell<MemoryPool>>,
    pub gossip: GossipHandle,
    pub manager: RefCell<Option<ArtifactManager>>,
    pub deliveries: Rc<RefCell<DeliveryStats>>,
}

/// A snapshot of one kind for metrics.
pub struct KindSnapshot {
    pub label: &'static str,
    pub gossip: GossipStats,
    pub pool: PoolStats,
    pub manager: ArtifactManagerStats,
    pub pool_validated: usize,
}

/// The node's P2P layer.
pub struct P2p {
    runtime: Rc<dyn Runtime>,
    kinds: Vec<KindParts>,
    workload: RefCell<Option<TaskHandle>>,
}

impl P2p {
    /// Builds the pools and consensus managers of every kind (nothing runs until
    /// [`P2p::start`]).
    pub fn new(
        tuning: &Tuning,
        runtime: Rc<dyn Runtime>,
        penalties: PenaltySink,
        heights_kept: u64,
    ) -> Rc<P2p> {
        let kinds = KINDS
            .iter()
            .map(|(kind, label)| {
                let (priority, relay, latency_sensitive) = match *kind {
                    BLOCK => (Priority::High, true, false),
                    NOTARIZATION => (Priority::High, false, true),
                    _ => (Priority::Low, false, false),
                };
                let pool = Rc::new(RefCell::new(MemoryPool::new(MemoryPoolConfig {
                    kind: *kind,
                    relay,
                    latency_sensitive,
                    heights_kept,
                })));
                let deliveries = Rc::new(RefCell::new(DeliveryStats::new()));
                let observed = deliveries.clone();
                pool.borrow_mut()
                    .set_observer(Box::new(move |artifact, from, _now| {
                        observed.borrow_mut().observe(artifact, from)
                    }));
                let dyn_pool: Rc<RefCell<dyn ArtifactPool>> = pool.clone();
                let config = GossipConfig::from_tuning(tuning, priority);
                let gossip =
                    ConsensusManager::new(config, runtime.clone(), dyn_pool, penalties.clone());
                KindParts {
                    kind: *kind,
                    label,
                    pool,
                    gossip,
                    manager: RefCell::new(None),
                    deliveries,
                }
            })
            .collect();
        Rc::new(P2p {
            runtime,
            kinds,
            workload: RefCell::new(None),
        })
    }

    /// Adds every kind's routes to `router`.
    pub fn routes(&self, mut router: Router) -> Router {
        for parts in &self.kinds {
            router = parts.gossip.routes(router);
        }
        router
    }

    /// Starts the consensus managers over `transport` and the artifact managers, with batches
    /// of `batch_max`.
    pub fn start<T: Transport + 'static>(&self, transport: Rc<T>, batch_max: usize) {
        for parts in &self.kinds {
            parts.gossip.start(transport.clone());
            *parts.manager.borrow_mut() = Some(ArtifactManager::start(
                parts.gossip.clone(),
                batch_max,
                APPLY_INTERVAL,
            ));
        }
    }

    /// Starts the reference workload: `members` are the subnet's nodes (this one included).
    pub fn start_workload(
        self: &Rc<Self>,
        config: WorkloadConfig,
        local: NodeId,
        members: Rc<RefCell<Vec<NodeId>>>,
    ) {
        // Before the spawn: the workload's first block must find the share maker in place.
        self.install_share_maker(local);
        let p2p = self.clone();
        let task = self.runtime.spawn(Box::pin(async move {
            run_workload(p2p, config, local, members).await;
        }));
        *self.workload.borrow_mut() = Some(task);
    }

    /// Every block this node validates (its own or a peer's) makes it send a notarization share
    /// for that height.
    pub(crate) fn install_share_maker(self: &Rc<Self>, local: NodeId) {
        let shares = self.parts(NOTARIZATION).pool.clone();
        let blocks = self.parts(BLOCK);
        let deliveries = blocks.deliveries.clone();
        let runtime = self.runtime.clone();
        let poke = self.weak_poke(NOTARIZATION);
        blocks
            .pool
            .borrow_mut()
            .set_observer(Box::new(move |artifact, from, _now| {
                deliveries.borrow_mut().observe(artifact, from);
                let Some(height) = height_of(artifact.id()) else {
                    return;
                };
                let mut payload = payload_with_header(height, SHARE_BYTES);
                payload[PAYLOAD_HEADER_BYTES..PAYLOAD_HEADER_BYTES + 32].copy_from_slice(&local.0);
                let share = make_artifact(height, Buf::from_vec(payload));
                shares.borrow_mut().produce(share, runtime.now());
                poke();
            }));
    }

    fn weak_poke(self: &Rc<Self>, kind: ArtifactKind) -> impl Fn() + 'static {
        let p2p = Rc::downgrade(self);
        move || {
            if let Some(p2p) = p2p.upgrade() {
                if let Some(manager) = p2p.parts(kind).manager.borrow().as_ref() {
                    manager.poke();
                }
            }
        }
    }

    pub fn parts(&self, kind: ArtifactKind) -> &KindParts {
        self.kinds
            .iter()
            .find(|parts| parts.kind == kind)
            .expect("a workload kind")
    }

    pub fn kinds(&self) -> &[KindParts] {
        &self.kinds
    }

    pub fn snapshot(&self) -> Vec<KindSnapshot> {
        self.kinds
            .iter()
            .map(|parts| KindSnapshot {
                label: parts.label,
                gossip: parts.gossip.stats(),
                pool: parts.pool.borrow().stats(),
                manager: parts
                    .manager
                    .borrow()
                    .as_ref()
                    .map(ArtifactManager::stats)
                    .unwrap_or_default(),
                pool_validated: parts.pool.borrow().validated_len(),
            })
            .collect()
    }

    /// Stops the workload, the artifact managers and the consensus managers, and waits for them.
    pub async fn stop(&self) {
        let workload = self.workload.borrow_mut().take();
        if let Some(task) = workload {
            task.abort();
            task.join().await;
        }
        for parts in &self.kinds {
            let manager = parts.manager.borrow_mut().take();
            if let Some(mut manager) = manager {
                manager.stop().await;
            }
            parts.gossip.stop().await;
        }
    }

    pub(crate) fn produce(&self, kind: ArtifactKind, artifact: Artifact) {
        let parts = self.parts(kind);
        parts
            .pool
            .borrow_mut()
            .produce(artifact, self.runtime.now());
        if let Some(manager) = parts.manager.borrow().as_ref() {
            manager.poke();
        }
    }
}

/// Wall-clock microseconds since the Unix epoch.
pub fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// A payload of `bytes` (at least the header) stamped with the current time and `height`; the
/// rest is filled with bytes that differ per call, so two payloads never share an id.
pub fn payload_with_header(height: u64, bytes: usize) -> Vec<u8> {
    let bytes = bytes.max(PAYLOAD_HEADER_BYTES);
    let mut payload = vec![0u8; bytes];
    payload[..8].copy_from_slice(&unix_us().to_le_bytes());
    payload[8..16].copy_from_slice(&height.to_le_bytes());
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let call = CALLS.fetch_add(1, Ordering::Relaxed);
    let mut state = unix_us() ^ height.rotate_left(32) ^ call.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    state |= 1;
    for chunk in payload[PAYLOAD_HEADER_BYTES..].chunks_mut(8) {
        // xorshift64: cheap filler, enough to make payloads distinct.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let len = chunk.len();
        chunk.copy_from_slice(&state.to_le_bytes()[..len]);
    }
    payload
}

/// The producer timestamp at the start of a workload payload.
pub fn payload_timestamp_us(payload: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = payload.get(..8)?.try_into().ok()?;
    Some(u64::from_le_bytes(bytes))
}

/// The block maker of `height`: members sorted by id, rotating per height.
pub fn block_maker(members: &[NodeId], height: u64) -> Option<NodeId> {
    if members.is_empty() {
        return None;
    }
    let mut sorted = members.to_vec();
    sorted.sort_unstable();
    Some(sorted[(height % sorted.len() as u64) as usize])
}

/// Granularity of ingress production: artifacts are made in bursts this often.
const INGRESS_TICK: Duration = Duration::from_millis(10);

async fn run_workload(
    p2p: Rc<P2p>,
    config: WorkloadConfig,
    local: NodeId,
    members: Rc<RefCell<Vec<NodeId>>>,
) {
    let interval_ms = config.block_interval_ms;
    let mut last_height = None;
    let mut ingress_credit = 0.0f64;
    let started = p2p.runtime.now();
    let stop_after = Duration::from_millis(config.stop_after_ms);
    loop {
        if config.stop_after_ms > 0 && p2p.runtime.now() - started >= stop_after {
            return;
        }
        let now_ms = unix_us() / 1_000;
        let height = now_ms / interval_ms;
        if last_height != Some(height) {
            last_height = Some(height);
            if block_maker(&members.borrow(), height) == Some(local) {
                let payload = payload_with_header(height, config.block_bytes);
                p2p.produce(BLOCK, make_artifact(height, Buf::from_vec(payload)));
            }
        }
        ingress_credit += f64::from(config.ingress_per_s) * INGRESS_TICK.as_secs_f64();
        // Never more than one second's worth at once (after a stall, do not burst).
        ingress_credit = ingress_credit.min(f64::from(config.ingress_per_s).max(1.0));
        while ingress_credit >= 1.0 {
            ingress_credit -= 1.0;
            let payload = payload_with_header(height, config.ingress_bytes);
            p2p.produce(INGRESS, make_artifact(height, Buf::from_vec(payload)));
        }
        p2p.runtime.sleep(INGRESS_TICK).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_makers_rotate_over_sorted_members() {
        let members = [NodeId([3; 32]), NodeId([1; 32]), NodeId([2; 32])];
        let makers: Vec<u8> = (0..4)
            .map(|h| block_maker(&members, h).unwrap().0[0])
            .collect();
        assert_eq!(makers, [1, 2, 3, 1]);
        assert_eq!(block_maker(&[], 1), None);
    }

    #[test]
    fn payloads_carry_their_timestamp_and_differ() {
        let a = payload_with_header(7, 100);
        let b = payload_with_header(7, 100);
        assert_ne!(a, b);
        assert!(payload_timestamp_us(&a).unwrap() > 0);
        assert_eq!(&a[8..16], &7u64.to_le_bytes());
        assert_eq!(payload_with_header(1, 0).len(), PAYLOAD_HEADER_BYTES);
    }

    /// The share maker must be in place before the workload's first block: with the workload
    /// spawned first, a node that was the block maker of the height it started at made that
    /// block without a share (seen in the 5-node namespace test: 524 shares for 105 blocks).
    #[test]
    fn every_block_made_gets_a_share_from_the_first_one() {
        let executor = glommio::LocalExecutorBuilder::default()
            .io_memory(256 << 10)
            .make()
            .expect("a test executor starts");
        let (blocks, shares) = executor.run(async {
            let runtime = crate::runtime::GlommioRuntime::new();
            let p2p = P2p::new(&Tuning::default(), runtime, Rc::new(|_, _| {}), 16);
            let local = NodeId([1; 32]);
            let config = WorkloadConfig {
                block_interval_ms: 10,
                ingress_per_s: 0,
                ..WorkloadConfig::default()
            };
            // The only member makes every block.
            p2p.start_workload(config, local, Rc::new(RefCell::new(vec![local])));
            glommio::timer::sleep(Duration::from_millis(35)).await;
            let blocks = p2p.parts(BLOCK).pool.borrow().stats().produced;
            let shares = p2p.parts(NOTARIZATION).pool.borrow().stats().produced;
            p2p.stop().await;
            (blocks, shares)
        });
        assert!(blocks >= 1, "the workload made no block");
        assert_eq!(shares, blocks, "one share per block made");
    }

    #[test]
    fn workload_config_is_validated() {
        let tuning = Tuning::default();
        assert!(WorkloadConfig::default().validate(&tuning).is_ok());
        let bad = WorkloadConfig {
            block_bytes: tuning.rpc.message_bytes_max + 1,
            ..WorkloadConfig::default()
        };
        assert!(bad.validate(&tuning).unwrap_err().contains("block_bytes"));
    }
}
