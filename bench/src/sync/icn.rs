//! The `icn` sync system: icn's state sync service (`shards/src/state_sync`) over its QUIC
//! transport, as `icn node` runs it.
//!
//! - The syncing node runs as many shards as `icn node` does with default tuning (one per
//!   core): one pinned glommio executor each, one socket each of one steered UDP port, each
//!   shard's endpoint owning the sources `shard_of` places on it, the state sync service on the
//!   home shard (`quic_shards::QuicShards`). Source identities are drawn until the sources
//!   spread over the shards as evenly as their count allows (as the peers of a real subnet
//!   spread), so a run does not measure one unlucky placement. Each source is a one-shard node.
//! - P source nodes each open a hardlinked copy of the state's checkpoint store and serve it
//!   (adverts, manifest pieces, chunks read from the files); the syncing node opens an empty
//!   store in a fresh directory and writes chunks with io_uring (`FileIo::Glommio`).
//! - Every node has a fresh identity; the sources admit only the syncing node, the syncing node
//!   every source (mutual TLS by node id); QUIC with the suite's shared constants (1452-byte
//!   packets, the quinn baseline's windows and socket buffers). State sync knobs are
//!   icn-tuning's defaults (16 chunks in flight per peer, 64 in all, 1 MiB chunks).
//! - The clock starts when every connection is up and the syncing node has heard every
//!   source's advert of the state; then the target is set (as a catch-up package would) and
//!   the clock stops when the state is adopted (every chunk verified and written, files
//!   fsynced, directory renamed into place). The adopted root hash must equal the source's.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use boring::ssl::SslContextBuilder;
use glommio::{LocalExecutorBuilder, Placement};
use icn_codecs::state::Hash;
use icn_engine::identity::Identity;
use icn_engine::shard::{run_shards, ShardConfig, ShardContext, Shutdown};
use icn_engine::tls::{self, PeerVerifier};
use icn_engine::transport::quic::{shard_of, QuicTransport, Steering};
use icn_engine::transport::quic_shards::{
    forwarding_router, run_owner_shard, QuicShards, QuicShardsShared, ShardMessage, HOME_SHARD,
};
use icn_engine::udp::{BoundSocket, SteeredPort};
use icn_engine::{NodeId, Router, Transport};
use icn_shards::consensus_manager::driver::PenaltySink;
use icn_shards::node::node_shards;
use icn_shards::node_config::TransportKind;
use icn_shards::runtime::{GlommioRuntime, Runtime};
use icn_shards::state_sync::driver::{FileIo, StateSync, StateSyncConfig, StateSyncStats};
use icn_shards::state_sync::store::CheckpointStore;
use icn_tuning::Tuning;
use serde_json::{json, Value};

use super::state::{self, RunMeter};
use super::{source_cores, thread_cores, Run, SyncCase, SyncState, SyncSystem};
use crate::gossip::icn::{quic_config, EXECUTOR_IO_MEMORY_BYTES};
use crate::transport::case::quic as shared;

/// How long the nodes have to start, connect and hear each other's adverts.
const SETUP_TIMEOUT: Duration = Duration::from_secs(20);
/// How often a node checks setup conditions and the stop flag.
const SETUP_POLL: Duration = Duration::from_millis(10);
/// How often the syncing node checks for adoption: the clock's resolution.
const ADOPTION_POLL: Duration = Duration::from_millis(1);
/// How long the syncing node's shards have to finish their tasks once it stops.
const SHARD_JOIN_GRACE: Duration = Duration::from_secs(2);
/// Identity draws allowed for spreading the sources evenly over the syncing node's shards.
const IDENTITY_DRAWS_MAX: usize = 10_000;

pub struct IcnSync;

/// The address table every node gets: index 0 is the syncing node, 1..=P the sources.
type Table = Arc<Vec<(NodeId, SocketAddr)>>;

struct NodeSetup {
    index: usize,
    identity: Arc<Identity>,
    members: Arc<HashSet<NodeId>>,
    core: Option<usize>,
    announce: mpsc::Sender<(usize, NodeId, SocketAddr)>,
    table: mpsc::Receiver<Table>,
    stop: Arc<AtomicBool>,
    store_root: PathBuf,
}

impl SyncSystem for IcnSync {
    fn name(&self) -> &'static str {
        "icn"
    }

    fn run(&self, state: &SyncState, case: SyncCase) -> Result<Run, String> {
        let sources = state.source_stores(case.peers)?;
        let destination = state.destination()?;
        let nodes = case.peers + 1;
        let shards = syncing_node_shards();
        let identities = spread_identities(nodes, shards)?;
        let members: Arc<HashSet<NodeId>> =
            Arc::new(identities.iter().map(Identity::node_id).collect());
        // Shard k runs on the k-th usable core (run_shards' placement); each source off the
        // core of the shard that owns its connection.
        let shard_cores = thread_cores(shards);
        let serving: Vec<Option<usize>> = identities[1..]
            .iter()
            .map(|identity| shard_cores[shard_of(&identity.node_id(), shards)])
            .collect();
        let cores: Vec<Option<usize>> = std::iter::once(None)
            .chain(source_cores(&serving))
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let timeout = state::run_timeout(state.state_bytes());
        let (announce_tx, announce_rx) = mpsc::channel();
        let mut table_txs = Vec::with_capacity(nodes);
        let mut setups = Vec::with_capacity(nodes);
        for (index, identity) in identities.into_iter().enumerate() {
            let (table_tx, table_rx) = mpsc::channel();
            table_txs.push(table_tx);
            setups.push(NodeSetup {
                index,
                identity: Arc::new(identity),
                members: members.clone(),
                core: cores[index],
                announce: announce_tx.clone(),
                table: table_rx,
                stop: stop.clone(),
                store_root: if index == 0 {
                    destination.path().to_path_buf()
                } else {
                    sources[index - 1].clone()
                },
            });
        }
        drop(announce_tx);
        let mut setups = setups.into_iter();
        let syncer_setup = setups.next().expect("the syncing node");
        let (height, root, state_bytes) = (state.height, state.root_hash, state.state_bytes());
        let syncer = thread::Builder::new()
            .name("icn-sync-node".into())
            .spawn(move || {
                run_syncer_shards(syncer_setup, shards, height, root, state_bytes, timeout)
            })
            .map_err(|e| e.to_string())?;
        let mut source_threads = Vec::with_capacity(case.peers);
        for setup in setups {
            let deadline = timeout + 2 * SETUP_TIMEOUT;
            source_threads.push(
                thread::Builder::new()
                    .name("icn-sync-source".into())
                    .spawn(move || {
                        on_executor(setup.core, "icn-sync-source", || {
                            run_source(setup, deadline)
                        })
                    })
                    .map_err(|e| e.to_string())?,
            );
        }
        let mut table = vec![None; nodes];
        let mut setup_error = None;
        for _ in 0..nodes {
            match announce_rx.recv_timeout(SETUP_TIMEOUT) {
                Ok((index, id, addr)) => table[index] = Some((id, addr)),
                Err(_) => {
                    setup_error = Some("an icn node did not start in time".to_string());
                    break;
                }
            }
        }
        if setup_error.is_none() {
            let table: Table = Arc::new(table.into_iter().flatten().collect());
            for tx in &table_txs {
                let _ = tx.send(table.clone());
            }
        }
        drop(table_txs);
        let result = syncer
            .join()
            .map_err(|_| "the syncing node's thread panicked".to_string())
            .and_then(|run| run);
        stop.store(true, Ordering::Release);
        let mut served = 0u64;
        let mut source_error = None;
        for source in source_threads {
            match source.join() {
                Ok(Ok(chunks)) => served += chunks,
                Ok(Err(error)) => source_error = Some(error),
                Err(_) => source_error = Some("a source thread panicked".into()),
            }
        }
        if let Some(error) = setup_error {
            return Err(result.err().unwrap_or(error));
        }
        let mut run = result?;
        run.measurement
            .extra
            .insert("icn_chunks_served".into(), served as f64);
        run.measurement
            .extra
            .insert("icn_syncing_node_shards".into(), shards as f64);
        if let Some(error) = source_error {
            run.measurement.errors += 1;
            run.measurement
                .first_error
                .get_or_insert(format!("source: {error}"));
        }
        Ok(run)
    }

    fn config(&self, state: &SyncState) -> BTreeMap<String, Value> {
        let tuning = Tuning::default();
        let sync = &tuning.state_sync;
        BTreeMap::from([
            ("packet_bytes".into(), json!(shared::PACKET_BYTES)),
            ("stream_window_bytes".into(), json!(shared::STREAM_WINDOW_BYTES)),
            (
                "connection_window_bytes".into(),
                json!(shared::CONNECTION_WINDOW_BYTES),
            ),
            (
                "state_sync.chunks_in_flight_per_peer_max".into(),
                json!(sync.chunks_in_flight_per_peer_max),
            ),
            (
                "state_sync.chunks_in_flight_max".into(),
                json!(sync.chunks_in_flight_max),
            ),
            (
                "window_bytes".into(),
                json!(sync.chunks_in_flight_max as u64 * u64::from(state.chunk_bytes)),
            ),
            (
                "state_sync.advert_interval_ms".into(),
                json!(sync.advert_interval_ms),
            ),
            (
                "file_io".into(),
                json!("aligned chunk pieces O_DIRECT on icn's writer threads, the rest glommio buffered (io_uring), on the syncing node"),
            ),
            (
                "syncing_node_shards".into(),
                json!(syncing_node_shards()),
            ),
            (
                "manifest".into(),
                json!("fetched from the sources and checked against the root (inside the measured time)"),
            ),
            (
                "executor_io_memory_bytes".into(),
                json!(EXECUTOR_IO_MEMORY_BYTES),
            ),
        ])
    }
}

/// Runs `body` on a new glommio executor pinned to `core`.
fn on_executor<T, F, Fut>(core: Option<usize>, name: &str, body: F) -> Result<T, String>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let placement = core.map_or(Placement::Unbound, Placement::Fixed);
    let executor = LocalExecutorBuilder::new(placement)
        .name(name)
        .io_memory(EXECUTOR_IO_MEMORY_BYTES)
        .preempt_timer(Duration::from_millis(10))
        .make()
        .map_err(|e| format!("glommio executor: {e}"))?;
    executor.run(async move {
        icn_engine::shard::spawn_wake_tick(icn_engine::shard::WAKE_TICK_DEFAULT);
        body().await
    })
}

/// How many shards the syncing node runs: as many as `icn node` runs with default tuning.
fn syncing_node_shards() -> usize {
    node_shards(&Tuning::default(), TransportKind::Quic)
}

/// Identities for the syncing node (index 0) and its sources, drawn until the sources spread
/// over the syncing node's `shards` as evenly as their count allows.
fn spread_identities(nodes: usize, shards: usize) -> Result<Vec<Identity>, String> {
    let shards = shards.max(1);
    let sources = nodes.saturating_sub(1);
    // Every shard gets `base` sources and `extra` of them one more.
    let (base, extra) = (sources / shards, sources % shards);
    let mut placed = vec![0usize; shards];
    let mut extras_used = 0;
    let mut identities = vec![Identity::generate().map_err(|e| e.to_string())?];
    for _ in 0..IDENTITY_DRAWS_MAX {
        if identities.len() == nodes {
            return Ok(identities);
        }
        let identity = Identity::generate().map_err(|e| e.to_string())?;
        let shard = shard_of(&identity.node_id(), shards);
        let fits = placed[shard] < base || (placed[shard] == base && extras_used < extra);
        if fits {
            if placed[shard] == base {
                extras_used += 1;
            }
            placed[shard] += 1;
            identities.push(identity);
        }
    }
    if identities.len() == nodes {
        return Ok(identities);
    }
    Err(format!(
        "no even spread of {sources} sources over {shards} shards in {IDENTITY_DRAWS_MAX} draws"
    ))
}

/// A node's store, state sync service and QUIC transport (its home shard's view of every
/// shard's endpoint), connected to the peers it may talk to (`allowed`: which table entries).
struct Node {
    sync: StateSync,
    transport: Rc<QuicShards>,
    penalties: Rc<Cell<u64>>,
}

/// TLS contexts (server, client) admitting the other members of the bench's node set.
fn tls_contexts(
    identity: &Identity,
    members: &Arc<HashSet<NodeId>>,
) -> Result<(SslContextBuilder, SslContextBuilder), String> {
    let local = identity.node_id();
    let verifier: PeerVerifier = {
        let members = members.clone();
        Arc::new(move |peer: &NodeId| *peer != local && members.contains(peer))
    };
    let server_tls =
        tls::server_context_builder(identity, verifier.clone()).map_err(|e| e.to_string())?;
    let client_tls = tls::client_context_builder(identity, verifier).map_err(|e| e.to_string())?;
    Ok((server_tls, client_tls))
}

/// Starts a node: with `home`, the home shard of a node whose other shards run
/// [`run_other_shard`]; without, a one-shard node on a socket of its own.
async fn start_node(
    setup: &NodeSetup,
    allowed: impl Fn(usize) -> bool,
    home: Option<(
        Rc<ShardContext<ShardMessage>>,
        Arc<QuicShardsShared>,
        BoundSocket,
    )>,
) -> Result<Node, String> {
    let local = setup.identity.node_id();
    let (server_tls, client_tls) = tls_contexts(&setup.identity, &setup.members)?;
    let config = StateSyncConfig::from_tuning(&Tuning::default());
    let store = CheckpointStore::open(
        &setup.store_root,
        config.chunk_bytes,
        config.checkpoints_kept,
    )
    .map_err(|e| format!("opening the store: {e}"))?;
    let penalties = Rc::new(Cell::new(0u64));
    let sink: PenaltySink = {
        let penalties = penalties.clone();
        Rc::new(move |_, _| penalties.set(penalties.get() + 1))
    };
    let runtime: Rc<dyn Runtime> = GlommioRuntime::new();
    let sync = StateSync::new(local, config, runtime, FileIo::Glommio, store, sink);
    let router = sync.routes(Router::new());
    let transport = match home {
        None => QuicShards::single(
            QuicTransport::start(
                local,
                server_tls,
                client_tls,
                quic_config(),
                router,
                HashMap::new(),
            )
            .map_err(|e| e.to_string())?,
        ),
        Some((ctx, shared, socket)) => {
            let config = quic_config().for_shard(Steering {
                index: ctx.index,
                count: shared.shards(),
            });
            let endpoint = QuicTransport::start_steered(
                local,
                server_tls,
                client_tls,
                config,
                router.clone(),
                HashMap::new(),
                socket,
            )
            .map_err(|e| e.to_string())?;
            QuicShards::start_home(endpoint, ctx, shared, router)
        }
    };
    let transport = Rc::new(transport);
    let _ = setup
        .announce
        .send((setup.index, local, transport.local().local_addr()));
    let table = wait_for_table(&setup.table).await?;
    let peers: HashMap<NodeId, SocketAddr> = table
        .iter()
        .enumerate()
        .filter(|&(index, _)| index != setup.index && allowed(index))
        .map(|(_, entry)| *entry)
        .collect();
    let expected = peers.len();
    transport.set_allowed_peers(peers);
    let deadline = Instant::now() + SETUP_TIMEOUT;
    while transport.peers().len() < expected {
        if Instant::now() >= deadline || setup.stop.load(Ordering::Acquire) {
            transport.shutdown().await;
            return Err(format!(
                "icn node {} connected to {} of {expected} peers in time",
                setup.index,
                transport.peers().len()
            ));
        }
        glommio::timer::sleep(SETUP_POLL).await;
    }
    sync.start(transport.clone());
    Ok(Node {
        sync,
        transport,
        penalties,
    })
}

/// A shard of the syncing node other than the home shard: the endpoint of the sources placed
/// on it, until the home shard stops the node.
async fn run_other_shard(
    identity: Arc<Identity>,
    members: Arc<HashSet<NodeId>>,
    ctx: Rc<ShardContext<ShardMessage>>,
    shared: Arc<QuicShardsShared>,
    socket: BoundSocket,
) -> Result<(), String> {
    let (server_tls, client_tls) = tls_contexts(&identity, &members)?;
    let config = quic_config().for_shard(Steering {
        index: ctx.index,
        count: shared.shards(),
    });
    let endpoint = QuicTransport::start_steered(
        identity.node_id(),
        server_tls,
        client_tls,
        config,
        forwarding_router(ctx.clone()),
        shared.allowed(),
        socket,
    )
    .map_err(|e| e.to_string())?;
    run_owner_shard(ctx.clone(), endpoint.clone(), shared).await;
    endpoint.shutdown().await;
    ctx.join_tasks(SHARD_JOIN_GRACE).await;
    Ok(())
}

/// The syncing node as `icn node` runs it: `shards` pinned executors on one steered port,
/// state sync on the home shard.
fn run_syncer_shards(
    setup: NodeSetup,
    shards: usize,
    height: u64,
    root: Hash,
    state_bytes: u64,
    timeout: Duration,
) -> Result<Run, String> {
    let fail = |error: String| {
        setup.stop.store(true, Ordering::Release);
        Err(error)
    };
    let mut port = match SteeredPort::bind(quic_config().listen_addr, &quic_config().udp, shards) {
        Ok(port) => port,
        Err(error) => return fail(format!("binding the syncing node's port: {error}")),
    };
    let sockets: Vec<Mutex<Option<BoundSocket>>> = (0..shards)
        .map(|shard| Mutex::new(port.take(shard)))
        .collect();
    let shared = QuicShardsShared::new(shards, HashMap::new());
    let config = ShardConfig {
        shards,
        pin_cores: true,
        io_memory_bytes: EXECUTOR_IO_MEMORY_BYTES,
        preempt_timer: Duration::from_millis(10),
        ..ShardConfig::default()
    };
    let (identity, members, stop) = (
        setup.identity.clone(),
        setup.members.clone(),
        setup.stop.clone(),
    );
    let setup = Arc::new(Mutex::new(Some(setup)));
    let sockets = Arc::new(sockets);
    let started = run_shards::<ShardMessage, Result<Option<Run>, String>, _, _>(
        &config,
        Shutdown::new(),
        move |ctx| {
            let ctx = Rc::new(ctx);
            let socket = sockets
                .get(ctx.index)
                .and_then(|slot| slot.lock().ok()?.take());
            let home = (ctx.index == HOME_SHARD)
                .then(|| setup.lock().ok()?.take())
                .flatten();
            let (shared, identity, members) = (shared.clone(), identity.clone(), members.clone());
            async move {
                let socket = socket.ok_or("a shard without its socket")?;
                match home {
                    Some(setup) => {
                        let home = (ctx.clone(), shared, socket);
                        let run = run_syncer(&setup, home, height, root, state_bytes, timeout);
                        let run = run.await;
                        ctx.shutdown.trigger();
                        ctx.join_tasks(SHARD_JOIN_GRACE).await;
                        run.map(Some)
                    }
                    None => run_other_shard(identity, members, ctx, shared, socket)
                        .await
                        .map(|()| None),
                }
            }
        },
    );
    stop.store(true, Ordering::Release);
    let results = started.map_err(|e| format!("the syncing node's shards: {e}"))?;
    let mut run = None;
    for result in results {
        if let Some(home) = result? {
            run = Some(home);
        }
    }
    run.ok_or_else(|| "the home shard reported no run".into())
}

async fn wait_for_table(table: &mpsc::Receiver<Table>) -> Result<Table, String> {
    let deadline = Instant::now() + SETUP_TIMEOUT;
    loop {
        match table.try_recv() {
            Ok(table) => return Ok(table),
            Err(mpsc::TryRecvError::Disconnected) => {
                return Err("the bench stopped before sharing addresses".into())
            }
            Err(mpsc::TryRecvError::Empty) if Instant::now() < deadline => {
                glommio::timer::sleep(SETUP_POLL).await
            }
            Err(mpsc::TryRecvError::Empty) => return Err("no address table in time".into()),
        }
    }
}

/// A source: serves its checkpoint until the run stops (or its deadline passes); returns the
/// chunks it served.
async fn run_source(setup: NodeSetup, deadline: Duration) -> Result<u64, String> {
    let node = start_node(&setup, |index| index == 0, None).await?;
    let until = Instant::now() + deadline;
    while !setup.stop.load(Ordering::Acquire) && Instant::now() < until {
        glommio::timer::sleep(SETUP_POLL).await;
    }
    node.sync.stop().await;
    let stats = node.sync.stats();
    node.transport.shutdown().await;
    Ok(stats.chunks_served)
}

/// The syncing node: waits for every source's advert, sets the target, waits for adoption.
async fn run_syncer(
    setup: &NodeSetup,
    home: (
        Rc<ShardContext<ShardMessage>>,
        Arc<QuicShardsShared>,
        BoundSocket,
    ),
    height: u64,
    root: Hash,
    state_bytes: u64,
    timeout: Duration,
) -> Result<Run, String> {
    let node = match start_node(setup, |_| true, Some(home)).await {
        Ok(node) => node,
        Err(error) => {
            setup.stop.store(true, Ordering::Release);
            return Err(error);
        }
    };
    let sources = setup.members.len() - 1;
    let heard = wait_for_adverts(&node.sync, sources, height, root).await;
    let result = match heard {
        Err(error) => Err(error),
        Ok(()) => Ok(sync_once(&node, height, root, state_bytes, timeout).await),
    };
    setup.stop.store(true, Ordering::Release);
    node.sync.stop().await;
    node.transport.shutdown().await;
    result
}

async fn wait_for_adverts(
    sync: &StateSync,
    sources: usize,
    height: u64,
    root: Hash,
) -> Result<(), String> {
    let deadline = Instant::now() + SETUP_TIMEOUT;
    loop {
        let advertisers: HashSet<NodeId> = sync
            .peer_adverts()
            .into_iter()
            .filter(|(_, advert)| {
                advert.height == height && advert.root_hash == root && !advert.partial
            })
            .map(|(peer, _)| peer)
            .collect();
        if advertisers.len() >= sources {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "heard {} of {sources} sources advertise the state",
                advertisers.len()
            ));
        }
        glommio::timer::sleep(SETUP_POLL).await;
    }
}

/// The measured part: from setting the target to adoption.
async fn sync_once(
    node: &Node,
    height: u64,
    root: Hash,
    state_bytes: u64,
    timeout: Duration,
) -> Run {
    let meter = RunMeter::start();
    let deadline = Instant::now() + timeout;
    node.sync.set_target(height, root);
    let mut failure = None;
    while node.sync.latest_height() != Some(height) {
        if Instant::now() >= deadline {
            failure = Some(format!("sync did not finish in {timeout:?}"));
            break;
        }
        glommio::timer::sleep(ADOPTION_POLL).await;
    }
    let adopted = node.sync.latest();
    if failure.is_none() {
        match &adopted {
            Some(checkpoint) if checkpoint.root_hash == root => {}
            Some(_) => failure = Some("the adopted root differs from the source's".into()),
            None => failure = Some("nothing adopted".into()),
        }
    }
    let stats = node.sync.stats();
    let (errors, first_error) = error_count(&stats, node.penalties.get(), failure);
    let bytes = if adopted.is_some_and(|c| c.root_hash == root) {
        state_bytes
    } else {
        0
    };
    let mut run = meter.finish(bytes, stats.chunks_fetched, errors, first_error);
    for (name, value) in [
        ("icn_chunks_fetched", stats.chunks_fetched),
        ("icn_bytes_fetched", stats.bytes_fetched),
        ("icn_request_failures", stats.request_failures),
        ("icn_corrupted_chunks", stats.corrupted_chunks),
        ("icn_io_errors", stats.io_errors),
    ] {
        run.measurement.extra.insert(name.into(), value as f64);
    }
    run
}

/// Failed operations of a sync: failed requests, bad data, disk errors, penalties handed
/// out, and the run's own failure (timeout, wrong root).
fn error_count(
    stats: &StateSyncStats,
    penalties: u64,
    failure: Option<String>,
) -> (u64, Option<String>) {
    let counted = [
        ("failed chunk or manifest requests", stats.request_failures),
        ("corrupted chunks", stats.corrupted_chunks),
        ("bad manifests", stats.bad_manifests),
        ("disk errors", stats.io_errors),
        ("undecodable requests", stats.undecodable_requests),
        ("penalties", penalties),
    ];
    let mut errors: u64 = counted.iter().map(|(_, n)| n).sum();
    let mut first = counted
        .iter()
        .find(|(_, n)| *n > 0)
        .map(|(what, n)| format!("{n} {what}"));
    if let Some(failure) = failure {
        errors += 1;
        first = Some(failure);
    }
    (errors, first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn icn_syncs_a_tiny_state_from_three_peers() {
        let state = SyncState::build(state::tests::tiny_spec(), 1 << 20).unwrap();
        for peers in [1, 3] {
            let run = IcnSync.run(&state, SyncCase { peers }).unwrap();
            let measurement = &run.measurement;
            assert_eq!(measurement.errors, 0, "{:?}", measurement.first_error);
            assert_eq!(measurement.bytes, state.state_bytes());
            assert_eq!(measurement.ops, u64::from(state.chunk_count()));
            assert_eq!(
                measurement.extra["icn_chunks_served"],
                f64::from(state.chunk_count())
            );
            assert_eq!(
                measurement.extra["icn_syncing_node_shards"],
                syncing_node_shards() as f64
            );
        }
    }

    #[test]
    fn sources_spread_evenly_over_the_syncing_nodes_shards() {
        for (sources, shards) in [(1, 2), (3, 2), (6, 2), (6, 4), (3, 1)] {
            let identities = spread_identities(sources + 1, shards).unwrap();
            assert_eq!(identities.len(), sources + 1);
            let mut placed = vec![0usize; shards];
            for identity in &identities[1..] {
                placed[shard_of(&identity.node_id(), shards)] += 1;
            }
            let (least, most) = (placed.iter().min().unwrap(), placed.iter().max().unwrap());
            assert!(most - least <= 1, "{sources} over {shards}: {placed:?}");
        }
    }

    #[test]
    fn errors_name_the_first_failure() {
        let stats = StateSyncStats {
            corrupted_chunks: 2,
            ..StateSyncStats::default()
        };
        assert_eq!(
            error_count(&stats, 1, None),
            (3, Some("2 corrupted chunks".into()))
        );
        assert_eq!(
            error_count(&StateSyncStats::default(), 0, Some("late".into())),
            (1, Some("late".into()))
        );
    }
}
