//! The `icn` gossip system: icn's consensus manager (shards/src/consensus_manager) and artifact
//! manager over icn's QUIC transport, one glommio executor per node, exactly as `icn node` runs
//! them; only the pool is the harness.
//!
//! - Each node has a fresh identity; the nodes admit each other by node id (mutual TLS 1.3), and
//!   the dialer rule (smaller id dials) makes one connection per pair.
//! - Windows, packet size and socket buffers are the suite's shared constants (the quinn
//!   baseline's), the gossip knobs icn-tuning's defaults (push below 1 KiB, chunked above 2 MiB).
//! - The harness's `Insert` becomes a slot-table entry (`GossipHandle::deliver`), `Purge` an abort
//!   (`GossipHandle::abort`), which tells the peers; received artifacts go through the artifact
//!   manager into [`HarnessPool`], which hands them to the harness.
//! - Content checks: the harness hashes every delivery against its id, for every system alike,
//!   so [`HarnessPool::matches`] checks only the length; hashing twice would bill icn for a
//!   SHA-256 the baseline does not pay.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use glommio::{LocalExecutorBuilder, Placement};
use icn_engine::identity::Identity;
use icn_engine::tls::{self, PeerVerifier};
use icn_engine::transport::quic::{QuicConfig, QuicTransport};
use icn_engine::udp::UdpConfig;
use icn_engine::{Buf, NodeId, Priority, Router, Transport};
use icn_shards::artifact::{
    Advert, Artifact, ArtifactId, ArtifactKind, ArtifactPool, Transmit, Want,
};
use icn_shards::artifact_manager::ArtifactManager;
use icn_shards::consensus_manager::{ConsensusManager, GossipConfig, GossipHandle};
use icn_shards::runtime::{GlommioRuntime, Runtime};
use icn_tuning::Tuning;
use serde_json::{json, Value};
use smallvec::SmallVec;

use super::harness::{self, NodeHarness, PoolEvent};
use super::GossipSystem;
use crate::transport::case::quic as shared;

const KIND: ArtifactKind = ArtifactKind(0);
/// io_uring memory of each node's executor (the memlock limit is shared by all of them).
pub(crate) const EXECUTOR_IO_MEMORY_BYTES: usize = 256 << 10;
/// How often a node checks whether all its peers are connected during setup.
const CONNECT_POLL: Duration = Duration::from_millis(10);
/// Batch size of the artifact manager (icn-tuning's default).
const INBOUND_BATCH_MAX: usize = 256;
/// How often the artifact manager runs the pool without being poked.
const APPLY_INTERVAL: Duration = Duration::from_millis(50);

pub struct IcnGossip;

/// What each node announces during setup.
struct Announce {
    index: usize,
    id: NodeId,
    addr: SocketAddr,
}

impl GossipSystem for IcnGossip {
    fn name(&self) -> &'static str {
        "icn"
    }

    fn run(&self, nodes: Vec<NodeHarness>) -> Result<BTreeMap<String, f64>, String> {
        let count = nodes.len();
        let identities: Vec<Identity> = (0..count)
            .map(|_| Identity::generate().map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()?;
        let members: Arc<HashSet<NodeId>> =
            Arc::new(identities.iter().map(Identity::node_id).collect());
        let (announce_tx, announce_rx) = mpsc::channel::<Announce>();
        let mut table_txs = Vec::with_capacity(count);
        let mut threads = Vec::with_capacity(count);
        for (harness, identity) in nodes.into_iter().zip(identities) {
            let (table_tx, table_rx) = mpsc::channel::<Arc<Vec<(NodeId, SocketAddr)>>>();
            table_txs.push(table_tx);
            let announce = announce_tx.clone();
            let members = members.clone();
            threads.push(thread::spawn(move || {
                run_node_thread(harness, identity, members, announce, table_rx)
            }));
        }
        drop(announce_tx);
        let mut table = vec![None; count];
        for _ in 0..count {
            let announce = announce_rx
                .recv_timeout(harness::SETUP_TIMEOUT)
                .map_err(|_| "an icn node did not start in time".to_string())?;
            table[announce.index] = Some((announce.id, announce.addr));
        }
        let table: Arc<Vec<(NodeId, SocketAddr)>> = Arc::new(
            table
                .into_iter()
                .map(|entry| entry.expect("announced"))
                .collect(),
        );
        for tx in &table_txs {
            let _ = tx.send(table.clone());
        }
        let mut extras = BTreeMap::new();
        let mut failure = None;
        for thread in threads {
            match thread.join() {
                Ok(Ok(figures)) => {
                    for (name, value) in figures {
                        *extras.entry(name).or_insert(0.0) += value;
                    }
                }
                Ok(Err(error)) => failure = Some(error),
                Err(_) => failure = Some("an icn node thread panicked".into()),
            }
        }
        match failure {
            Some(error) => Err(error),
            None => Ok(extras),
        }
    }

    fn config(&self) -> BTreeMap<String, Value> {
        // An invalid extra tuning fails every node's run; the config then shows the defaults.
        let tuning = node_tuning().unwrap_or_default();
        BTreeMap::from([
            ("packet_bytes".into(), json!(shared::PACKET_BYTES)),
            (
                "stream_window_bytes".into(),
                json!(shared::STREAM_WINDOW_BYTES),
            ),
            (
                "connection_window_bytes".into(),
                json!(shared::CONNECTION_WINDOW_BYTES),
            ),
            (
                "push_threshold_bytes".into(),
                json!(tuning.gossip.push_threshold_bytes),
            ),
            (
                "chunking_threshold_bytes".into(),
                json!(tuning.gossip.chunking_threshold_bytes),
            ),
            (
                "downloads_in_flight_per_peer_max".into(),
                json!(tuning.gossip.downloads_in_flight_per_peer_max),
            ),
            (
                "fetch_batch_artifacts_max".into(),
                json!(tuning.gossip.fetch_batch_artifacts_max),
            ),
            (
                "fetch_batch_bytes_max".into(),
                json!(tuning.gossip.fetch_batch_bytes_max),
            ),
        ])
    }
}

/// The nodes' tuning: icn-tuning's defaults, or the TOML profile in
/// [`crate::http::icn::EXTRA_TUNING_ENV`] when it is set (missing keys keep their defaults;
/// e.g. `[gossip]` `fetch_batch_artifacts_max = 1` switches batched fetches off), recorded in
/// the report's config.
fn node_tuning() -> Result<Tuning, String> {
    let env = crate::http::icn::EXTRA_TUNING_ENV;
    let Ok(text) = std::env::var(env) else {
        return Ok(Tuning::default());
    };
    Tuning::from_toml_str(&text).map_err(|errors| {
        let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
        format!("{env}: {}", errors.join("; "))
    })
}

fn run_node_thread(
    harness: NodeHarness,
    identity: Identity,
    members: Arc<HashSet<NodeId>>,
    announce: mpsc::Sender<Announce>,
    table: mpsc::Receiver<Arc<Vec<(NodeId, SocketAddr)>>>,
) -> Result<BTreeMap<String, f64>, String> {
    let placement = match harness.core() {
        Some(core) => Placement::Fixed(core),
        None => Placement::Unbound,
    };
    let executor = LocalExecutorBuilder::new(placement)
        .name("icn-gossip-node")
        .io_memory(EXECUTOR_IO_MEMORY_BYTES)
        .preempt_timer(Duration::from_millis(10))
        .make()
        .map_err(|e| format!("glommio executor: {e}"))?;
    executor.run(async move {
        icn_engine::shard::spawn_wake_tick(icn_engine::shard::WAKE_TICK_DEFAULT);
        run_node(harness, identity, members, announce, table).await
    })
}

pub(crate) fn quic_config() -> QuicConfig {
    QuicConfig {
        listen_addr: "127.0.0.1:0".parse().expect("literal address"),
        udp: UdpConfig {
            send_buffer_bytes: shared::UDP_SOCKET_BUFFER_BYTES,
            recv_buffer_bytes: shared::UDP_SOCKET_BUFFER_BYTES,
            ..UdpConfig::default()
        },
        udp_payload_bytes_max: shared::PACKET_BYTES as usize,
        stream_window_bytes: shared::STREAM_WINDOW_BYTES as u64,
        connection_window_bytes: shared::CONNECTION_WINDOW_BYTES as u64,
        bidi_streams_max: shared::BIDI_STREAMS_MAX as u64,
        ..QuicConfig::default()
    }
}

async fn run_node(
    harness: NodeHarness,
    identity: Identity,
    members: Arc<HashSet<NodeId>>,
    announce: mpsc::Sender<Announce>,
    table: mpsc::Receiver<Arc<Vec<(NodeId, SocketAddr)>>>,
) -> Result<BTreeMap<String, f64>, String> {
    let local = identity.node_id();
    let verifier: PeerVerifier = {
        let members = members.clone();
        Arc::new(move |peer: &NodeId| *peer != local && members.contains(peer))
    };
    let server_tls =
        tls::server_context_builder(&identity, verifier.clone()).map_err(|e| e.to_string())?;
    let client_tls = tls::client_context_builder(&identity, verifier).map_err(|e| e.to_string())?;

    let runtime: Rc<dyn Runtime> = GlommioRuntime::new();
    let pool = Rc::new(RefCell::new(HarnessPool::new(harness.clone())));
    let dyn_pool: Rc<RefCell<dyn ArtifactPool>> = pool.clone();
    let config = GossipConfig::from_tuning(&node_tuning()?, Priority::Normal);
    let gossip = ConsensusManager::new(config, runtime, dyn_pool, Rc::new(|_, _| {}));
    let router = gossip.routes(Router::new());
    let transport = Rc::new(
        QuicTransport::start(
            local,
            server_tls,
            client_tls,
            quic_config(),
            router,
            HashMap::new(),
        )
        .map_err(|e| e.to_string())?,
    );
    let _ = announce.send(Announce {
        index: harness.index(),
        id: local,
        addr: transport.local_addr(),
    });
    let peers = wait_for_table(&table).await?;
    transport.set_allowed_peers(
        peers
            .iter()
            .filter(|(id, _)| *id != local)
            .copied()
            .collect(),
    );
    wait_connected(&transport, peers.len() - 1).await?;
    gossip.start(transport.clone());
    let mut manager = ArtifactManager::start(gossip.clone(), INBOUND_BATCH_MAX, APPLY_INTERVAL);
    harness.ready();
    produce(&harness, &gossip).await;
    manager.stop().await;
    gossip.stop().await;
    let stats = gossip.stats();
    transport.shutdown().await;
    Ok(BTreeMap::from([
        (
            "icn_slot_updates_failed".into(),
            stats.sender.updates_failed as f64,
        ),
        (
            "icn_fetches_failed".into(),
            stats.receiver.fetches_failed as f64,
        ),
        (
            "icn_artifacts_pushed".into(),
            stats.receiver.artifacts_delivered_pushed as f64,
        ),
        (
            "icn_fetches_started".into(),
            stats.receiver.fetches_started as f64,
        ),
        (
            "icn_fetch_batches".into(),
            stats.receiver.batches_started as f64,
        ),
        (
            "icn_fetch_batch_artifacts".into(),
            stats.receiver.batch_artifacts_requested as f64,
        ),
    ]))
}

async fn wait_for_table(
    table: &mpsc::Receiver<Arc<Vec<(NodeId, SocketAddr)>>>,
) -> Result<Arc<Vec<(NodeId, SocketAddr)>>, String> {
    let deadline = Instant::now() + harness::SETUP_TIMEOUT;
    loop {
        match table.try_recv() {
            Ok(table) => return Ok(table),
            Err(mpsc::TryRecvError::Disconnected) => {
                return Err("the bench stopped before sharing addresses".into())
            }
            Err(mpsc::TryRecvError::Empty) if Instant::now() < deadline => {
                glommio::timer::sleep(CONNECT_POLL).await
            }
            Err(mpsc::TryRecvError::Empty) => return Err("no address table in time".into()),
        }
    }
}

async fn wait_connected(transport: &QuicTransport, peers: usize) -> Result<(), String> {
    let deadline = Instant::now() + harness::SETUP_TIMEOUT;
    while transport.peers().len() < peers {
        if Instant::now() >= deadline {
            return Err(format!(
                "icn node connected to {} of {peers} peers in time",
                transport.peers().len()
            ));
        }
        glommio::timer::sleep(CONNECT_POLL).await;
    }
    Ok(())
}

/// The node's producer loop: the harness's artifacts into the slot table, purges out of it.
async fn produce(harness: &NodeHarness, gossip: &GossipHandle) {
    while let Some(event) = harness.next_event().await {
        match event {
            PoolEvent::Insert(artifact) => {
                let content = Buf::from_vec(Vec::from(artifact.content));
                let advert = Advert {
                    id: ArtifactId::from_slice(&artifact.id.0),
                    attributes: SmallVec::new(),
                    size_bytes: content.len() as u64,
                };
                let entry = Artifact {
                    advert,
                    payload: content,
                };
                if let Err(error) = gossip.deliver(entry, false) {
                    harness.record_error(&error.to_string());
                }
            }
            PoolEvent::Purge(id) => {
                gossip.abort(&ArtifactId::from_slice(&id.0));
            }
        }
    }
}

/// The pool side of a bench node: received artifacts go straight to the harness, which checks
/// and counts them. Ids stay known until no peer advertises them, so none is taken twice.
pub struct HarnessPool {
    harness: NodeHarness,
    held: HashSet<ArtifactId>,
}

impl HarnessPool {
    fn new(harness: NodeHarness) -> HarnessPool {
        HarnessPool {
            harness,
            held: HashSet::new(),
        }
    }
}

impl ArtifactPool for HarnessPool {
    fn kind(&self) -> ArtifactKind {
        KIND
    }

    fn want(&self, advert: &Advert) -> Want {
        if self.held.contains(&advert.id) {
            Want::Unwanted
        } else {
            Want::Wanted
        }
    }

    fn matches(&self, advert: &Advert, payload: &[u8]) -> bool {
        payload.len() as u64 == advert.size_bytes && advert.id.len() == 32
    }

    fn insert_unvalidated(&mut self, _from: NodeId, artifact: Artifact) {
        if !self.held.insert(artifact.advert.id.clone()) {
            return;
        }
        let mut id = [0u8; 32];
        id.copy_from_slice(artifact.advert.id.as_bytes());
        // Errors (a bad hash, a duplicate) are counted by the harness.
        let _ = self
            .harness
            .deliver(&harness::ArtifactId(id), &[&artifact.payload[..]]);
    }

    fn remove_unvalidated(&mut self, id: &ArtifactId) {
        self.held.remove(id);
    }

    fn apply(&mut self, _now: Duration) -> Vec<Transmit> {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gossip::case::{GossipCase, GossipSpec};
    use crate::gossip::harness::run_case;

    fn short(case: &str, artifact_bytes: usize) -> GossipSpec {
        let mut spec = GossipSpec {
            warmup: Duration::from_millis(50),
            measure: Duration::from_millis(300),
            ..GossipSpec::standard(GossipCase::parse(case).unwrap(), true)
        };
        spec.case.artifact_bytes = artifact_bytes;
        spec
    }

    fn assert_everything_delivered(spec: &GossipSpec) -> crate::transport::load::Measurement {
        let measurement = run_case(&IcnGossip, spec).unwrap();
        assert_eq!(measurement.errors, 0, "{:?}", measurement.first_error);
        let inserted = measurement.extra["artifacts_inserted"];
        assert!(inserted > 0.0);
        let receivers = (spec.case.nodes - 1) as f64;
        assert_eq!(measurement.extra["deliveries_total"], inserted * receivers);
        assert_eq!(measurement.extra["duplicate_deliveries"], 0.0);
        assert!(measurement.ops > 0, "deliveries in the measured phase");
        measurement
    }

    #[test]
    fn icn_gossip_delivers_adverts_pushes_and_chunked_artifacts() {
        let advertised = assert_everything_delivered(&short("n4-1KiB", 1024));
        assert_eq!(advertised.extra["icn_artifacts_pushed"], 0.0);
        let pushed = assert_everything_delivered(&short("n4-1KiB", 512));
        assert!(pushed.extra["icn_artifacts_pushed"] > 0.0);
        // Above gossip.chunking_threshold_bytes (2 MiB): fetched in 1 MiB chunks.
        assert_everything_delivered(&short("n4-4MiB", 3 << 20));
    }
}
