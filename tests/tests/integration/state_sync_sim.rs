//! State sync in deterministic simulations on the memory transport: real checkpoint stores in
//! temporary directories, real hashing and file writes, virtual time.
//!
//! Scenarios (issue #4): 2 nodes with 100 × 1 MiB chunks; 13 nodes with 250 × 1 MiB; 40,000
//! chunks of 1 KiB; a state that changes while it is synced; everyone syncing from one node
//! (joiners serve each other the chunks they verified); serving peers crashing mid-sync;
//! f byzantine peers serving corrupted manifests and chunks; a restart mid-sync that fetches
//! only the chunks not on disk; an incremental sync that fetches only the changed chunks.

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use icn_codecs::state::Hash;
use icn_engine::sim::{Sim, SimHandle};
use icn_engine::transport::memory::{
    Delay, LinkFaults, MemoryConfig, MemoryNetwork, MemoryTransport,
};
use icn_engine::{Buf, NodeId, RequestContext, Router, RpcError};
use icn_shards::consensus_manager::Offence;
use icn_shards::runtime::SimRuntime;
use icn_shards::state_sync::driver::{
    FileIo, StateSync, StateSyncConfig, StateSyncStats, CHUNK_ROUTE, MANIFEST_ROUTE,
};
use icn_shards::state_sync::store::CheckpointStore;
use icn_shards::state_sync::synthetic::{write_state, SyntheticSpec};
use icn_tests::subnet::link_copy;
use icn_tuning::Tuning;

const MIB: u64 = 1 << 20;

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!(
            "icn-sync-sim-{name}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn node_id(n: u8) -> NodeId {
    let mut bytes = [0u8; 32];
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = n.wrapping_mul(37).wrapping_add((i as u8).wrapping_mul(11)) ^ 0x5a;
    }
    NodeId(bytes)
}

fn config(chunk_bytes: u64) -> StateSyncConfig {
    config_with(
        chunk_bytes,
        Tuning::default().state_sync.chunks_in_flight_per_peer_max,
    )
}

/// A config with `per_peer` chunk requests in flight per peer.
fn config_with(chunk_bytes: u64, per_peer: usize) -> StateSyncConfig {
    let mut tuning = Tuning::default();
    tuning.state_sync.chunks_in_flight_per_peer_max = per_peer;
    tuning.state_sync.chunk_bytes = chunk_bytes as usize;
    tuning.state_sync.advert_interval_ms = 500;
    tuning.state_sync.request_timeout_ms = 5_000;
    tuning.state_sync.retry_backoff_initial_ms = 100;
    tuning.state_sync.retry_backoff_max_ms = 1_000;
    tuning.state_sync.progress_interval_ms = 1_000;
    tuning.validate().expect("test tuning is valid");
    StateSyncConfig::from_tuning(&tuning)
}

/// A synthetic state: `files` files of `file_bytes` each plus a tail of small files.
fn spec(files: u32, file_bytes: u64, small_files: u32) -> SyntheticSpec {
    SyntheticSpec {
        seed: 42,
        large_files: files,
        large_file_bytes: file_bytes,
        small_files,
        small_file_bytes_max: 2_000,
        changed_per_checkpoint_permille: 100,
    }
}

/// Builds checkpoints `heights` of `spec` in a template store and returns it; nodes get
/// hardlinked copies (checkpoint files are never written in place), so 13 sources of a
/// 250 MiB state cost the disk 250 MiB.
fn template(dir: &Path, spec: &SyntheticSpec, chunk_bytes: u64, heights: &[u64]) -> PathBuf {
    let root = dir.join("template");
    let mut store = CheckpointStore::open(&root, chunk_bytes as u32, 8).unwrap();
    for &height in heights {
        store
            .create(height, |out, previous| {
                write_state(
                    out,
                    spec,
                    height,
                    previous.map(|p| (p.dir.as_path(), p.height)),
                )
            })
            .unwrap();
    }
    root
}

/// How a node's serving side misbehaves.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    Honest,
    /// Flips a byte of every chunk and meta-manifest it serves.
    Corrupting,
}

struct Node {
    id: NodeId,
    sync: StateSync,
    store_dir: PathBuf,
    penalties: Rc<RefCell<Vec<(NodeId, Offence)>>>,
    /// Corrupted answers this node sent.
    injected: Rc<Cell<u64>>,
    reports: Rc<Cell<u64>>,
}

fn start_node(
    sim: &SimHandle,
    id: NodeId,
    store_dir: &Path,
    config: StateSyncConfig,
    behaviour: Behaviour,
    join: impl FnOnce(Router) -> MemoryTransport,
) -> Node {
    let store =
        CheckpointStore::open(store_dir, config.chunk_bytes, config.checkpoints_kept).unwrap();
    let penalties = Rc::new(RefCell::new(Vec::new()));
    let sink = {
        let penalties = penalties.clone();
        Rc::new(move |peer, offence| penalties.borrow_mut().push((peer, offence)))
    };
    let sync = StateSync::new(
        id,
        config,
        SimRuntime::new(sim.clone()),
        FileIo::Std,
        store,
        sink,
    );
    let reports = Rc::new(Cell::new(0));
    {
        let reports = reports.clone();
        sync.set_progress_sink(Rc::new(move |_| reports.set(reports.get() + 1)));
    }
    let injected = Rc::new(Cell::new(0));
    let mut router = sync.routes(Router::new());
    if behaviour == Behaviour::Corrupting {
        for route in [CHUNK_ROUTE, MANIFEST_ROUTE] {
            let honest = router.handler(route).unwrap();
            let injected = injected.clone();
            router = router.route(route, move |ctx: RequestContext, body: Buf| {
                let honest = honest.clone();
                let injected = injected.clone();
                async move {
                    let answer = honest(ctx, body).await?;
                    let mut bytes = answer.to_vec();
                    if bytes.is_empty() {
                        return Err(RpcError::Handler("empty".into()));
                    }
                    let at = bytes.len() / 2;
                    bytes[at] ^= 0x40;
                    injected.set(injected.get() + 1);
                    Ok(Buf::from_vec(bytes))
                }
            });
        }
    }
    let transport = Rc::new(join(router));
    sync.start(transport);
    Node {
        id,
        sync,
        store_dir: store_dir.to_path_buf(),
        penalties,
        injected,
        reports,
    }
}

/// The memory network of a scenario, every message delayed by `delay` one way.
fn network(sim: &Sim, delay: Duration) -> MemoryNetwork {
    let network = MemoryNetwork::new(
        sim,
        MemoryConfig {
            rpc_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(5),
            ..MemoryConfig::default()
        },
    );
    network.set_faults(LinkFaults {
        loss_probability: 0.0,
        delay: Delay::fixed(delay),
    });
    network
}

/// Starts `count` honest nodes under `dir`; the first `sources` hold hardlinked copies of the
/// template store.
fn start_honest_nodes(
    handle: &SimHandle,
    network: &MemoryNetwork,
    dir: &Path,
    template_root: &Path,
    count: u8,
    sources: u8,
    config: StateSyncConfig,
) -> Vec<Node> {
    (0..count)
        .map(|index| {
            let id = node_id(index);
            let store_dir = dir.join(format!("node{index}"));
            if index < sources {
                link_copy(template_root, &store_dir);
            }
            start_node(
                handle,
                id,
                &store_dir,
                config,
                Behaviour::Honest,
                |router| network.join(id, router),
            )
        })
        .collect()
}

/// Waits (virtual time) until every node in `syncers` adopted `height`, at most `limit`.
/// Meanwhile the counters a sync reports must add up: what a node fetched and took from disk
/// never exceeds what it holds plus what is in flight (a counter counted twice would).
async fn wait_synced(
    sim: &SimHandle,
    nodes: &[Node],
    syncers: &[usize],
    height: u64,
    limit: Duration,
) {
    let deadline = sim.now() + limit;
    while syncers
        .iter()
        .any(|&i| nodes[i].sync.latest_height() != Some(height))
    {
        for &i in syncers {
            let sync = &nodes[i].sync;
            let stats = sync.stats();
            if let (Some((held, _)), 1) = (sync.progress(), stats.syncs_started) {
                let (held_chunks, _) = sync.chunk_progress().unwrap();
                assert!(
                    stats.chunks_fetched + stats.chunks_local
                        <= held_chunks + stats.chunks_in_flight,
                    "node {i}: {stats:?} with {held_chunks} chunks ({held} bytes) held"
                );
            }
        }
        assert!(
            sim.now() < deadline,
            "sync of height {height} did not finish in {limit:?}: {:?}",
            syncers
                .iter()
                .map(|&i| (nodes[i].sync.latest_height(), nodes[i].sync.stats()))
                .collect::<Vec<_>>()
        );
        sim.sleep(Duration::from_millis(100)).await;
    }
}

/// Waits (virtual time) until `done` holds, at most `limit`.
async fn wait_until(sim: &SimHandle, limit: Duration, what: &str, done: impl Fn() -> bool) {
    let deadline = sim.now() + limit;
    while !done() {
        assert!(
            sim.now() < deadline,
            "{what} did not happen within {limit:?}"
        );
        sim.sleep(Duration::from_millis(1)).await;
    }
}

fn root_of(node: &Node, height: u64) -> Hash {
    node.sync
        .store()
        .checkpoint(height)
        .expect("checkpoint held")
        .root_hash
}

async fn stop_all(nodes: &[Node]) {
    for node in nodes {
        node.sync.stop().await;
    }
}

/// `sources` nodes hold checkpoint `height` of `spec`; `syncers` nodes hold nothing and are
/// told to sync it. Returns the nodes after every syncer adopted the state.
struct Scenario {
    spec: SyntheticSpec,
    chunk_bytes: u64,
    sources: usize,
    syncers: usize,
    corrupting: usize,
    limit: Duration,
    /// One-way link delay and chunk requests in flight per peer: a slower sync leaves time for
    /// partial adverts to spread.
    delay: Duration,
    per_peer: usize,
}

const FAST: Duration = Duration::ZERO;
const PER_PEER: usize = 16;

struct Run {
    nodes: Vec<Node>,
    root: Hash,
    chunks: u64,
}

fn run(scenario: Scenario, dir: &TempDir) -> (Vec<StateSyncStats>, Run) {
    let height = 10;
    let template_root = template(&dir.0, &scenario.spec, scenario.chunk_bytes, &[height]);
    let mut sim = Sim::new(7);
    let handle = sim.handle();
    let network = network(&sim, scenario.delay);
    let config = config_with(scenario.chunk_bytes, scenario.per_peer);
    let total = scenario.sources + scenario.syncers;
    let mut nodes = Vec::new();
    for index in 0..total {
        let id = node_id(index as u8);
        let store_dir = dir.0.join(format!("node{index}"));
        if index < scenario.sources {
            link_copy(&template_root, &store_dir);
        }
        let behaviour = if index >= scenario.sources - scenario.corrupting.min(scenario.sources)
            && index < scenario.sources
        {
            Behaviour::Corrupting
        } else {
            Behaviour::Honest
        };
        nodes.push(start_node(
            &handle,
            id,
            &store_dir,
            config,
            behaviour,
            |router| network.join(id, router),
        ));
    }
    let root = root_of(&nodes[0], height);
    let chunks = nodes[0]
        .sync
        .store()
        .checkpoint(height)
        .unwrap()
        .manifest
        .chunks
        .len() as u64;
    let syncers: Vec<usize> = (scenario.sources..total).collect();
    let limit = scenario.limit;
    let stats = sim.block_on({
        let handle = handle.clone();
        async move {
            for &i in &syncers {
                nodes[i].sync.set_target(height, root);
            }
            wait_synced(&handle, &nodes, &syncers, height, limit).await;
            let stats = nodes.iter().map(|node| node.sync.stats()).collect();
            stop_all(&nodes).await;
            (stats, nodes)
        }
    });
    let (stats, nodes) = stats.unwrap();
    for node in &nodes[scenario.sources..] {
        assert_eq!(
            root_of(node, height),
            root,
            "adopted state has the source's root hash"
        );
    }
    (
        stats,
        Run {
            nodes,
            root,
            chunks,
        },
    )
}

#[test]
fn two_nodes_100_chunks_of_1_mib() {
    let _heavy = icn_tests::heavy_test_lock();
    let dir = TempDir::new("two");
    let (stats, run) = run(
        Scenario {
            spec: spec(100, MIB, 0),
            chunk_bytes: MIB,
            sources: 1,
            syncers: 1,
            corrupting: 0,
            limit: Duration::from_secs(120),
            delay: FAST,
            per_peer: PER_PEER,
        },
        &dir,
    );
    assert_eq!(run.chunks, 100);
    assert_eq!(stats[1].chunks_fetched, 100);
    assert_eq!(stats[1].bytes_fetched, 100 * MIB);
    assert_eq!(stats[0].chunks_served, 100);
    assert_eq!(stats[1].syncs_completed, 1);
    assert!(run.nodes[1].reports.get() >= 1, "progress was reported");
    // The adopted checkpoint verifies from its files.
    let checkpoint = run.nodes[1].sync.store().checkpoint(10).unwrap();
    let report =
        icn_shards::state_sync::store::verify_checkpoint(checkpoint.dir.parent().unwrap()).unwrap();
    assert!(report.passed(), "{report:?}");
}

#[test]
fn thirteen_nodes_250_chunks_spread_over_the_sources() {
    let _heavy = icn_tests::heavy_test_lock();
    let dir = TempDir::new("thirteen");
    let (stats, run) = run(
        Scenario {
            spec: spec(250, MIB, 0),
            chunk_bytes: MIB,
            sources: 12,
            syncers: 1,
            corrupting: 0,
            limit: Duration::from_secs(300),
            delay: FAST,
            per_peer: PER_PEER,
        },
        &dir,
    );
    assert_eq!(run.chunks, 250);
    assert_eq!(stats[12].chunks_fetched, 250);
    // Every source served part of the state, none most of it.
    for source in &stats[..12] {
        assert!(
            source.chunks_served >= 5 && source.chunks_served <= 60,
            "{:?}",
            stats.iter().map(|s| s.chunks_served).collect::<Vec<_>>()
        );
    }
}

#[test]
fn forty_thousand_chunks_of_1_kib() {
    let _heavy = icn_tests::heavy_test_lock();
    let dir = TempDir::new("small");
    let (stats, run) = run(
        Scenario {
            // 10 files of 4000 KiB cut into 1 KiB chunks, plus small files grouped.
            spec: spec(10, 4_000 << 10, 0),
            chunk_bytes: 1 << 10,
            sources: 3,
            syncers: 1,
            corrupting: 0,
            limit: Duration::from_secs(600),
            delay: FAST,
            per_peer: PER_PEER,
        },
        &dir,
    );
    assert_eq!(run.chunks, 40_000);
    assert_eq!(stats[3].chunks_fetched, 40_000);
}

#[test]
fn everyone_syncs_from_one_node_and_joiners_serve_each_other() {
    let _heavy = icn_tests::heavy_test_lock();
    let dir = TempDir::new("one-source");
    let (stats, run) = run(
        Scenario {
            spec: spec(60, MIB, 50),
            chunk_bytes: MIB,
            sources: 1,
            syncers: 6,
            corrupting: 0,
            limit: Duration::from_secs(300),
            delay: Duration::from_millis(100),
            per_peer: 4,
        },
        &dir,
    );
    for joiner in &stats[1..] {
        assert_eq!(joiner.chunks_fetched, run.chunks);
    }
    let served_by_joiners: u64 = stats[1..].iter().map(|s| s.chunks_served).sum();
    assert!(
        served_by_joiners > 0,
        "partial joiners served none of the {} chunk downloads",
        6 * run.chunks
    );
    assert!(stats[0].chunks_served < 6 * run.chunks);
}

#[test]
fn f_byzantine_peers_are_dropped_and_every_corruption_is_counted() {
    let _heavy = icn_tests::heavy_test_lock();
    let dir = TempDir::new("byzantine");
    // 7 nodes: 2 (f) corrupting sources, 4 honest sources, 1 syncer.
    let (stats, run) = run(
        Scenario {
            spec: spec(40, MIB, 20),
            chunk_bytes: MIB,
            sources: 6,
            syncers: 1,
            corrupting: 2,
            limit: Duration::from_secs(300),
            delay: FAST,
            per_peer: PER_PEER,
        },
        &dir,
    );
    let injected: u64 = run.nodes.iter().map(|node| node.injected.get()).sum();
    assert!(injected >= 1, "the byzantine peers were never asked");
    let syncer = &stats[6];
    assert_eq!(syncer.corrupted_chunks + syncer.bad_manifests, injected);
    assert_eq!(syncer.chunks_fetched, run.chunks);
    let penalized: HashSet<NodeId> = run.nodes[6]
        .penalties
        .borrow()
        .iter()
        .map(|(p, _)| *p)
        .collect();
    let byzantine: HashSet<NodeId> = [run.nodes[4].id, run.nodes[5].id].into_iter().collect();
    assert!(
        penalized.is_subset(&byzantine),
        "an honest peer was penalized"
    );
    assert_eq!(penalized.len() as u64, syncer.peers_dropped);
    let _ = run.root;
}

#[test]
fn serving_peers_crash_mid_sync() {
    let _heavy = icn_tests::heavy_test_lock();
    let dir = TempDir::new("crash");
    let height = 10;
    let spec = spec(80, MIB, 0);
    let template_root = template(&dir.0, &spec, MIB, &[height]);
    let mut sim = Sim::new(11);
    let handle = sim.handle();
    let network = network(&sim, Duration::ZERO);
    let config = config(MIB);
    let nodes = start_honest_nodes(&handle, &network, &dir.0, &template_root, 5, 4, config);
    let root = root_of(&nodes[0], height);
    let result = sim.block_on({
        let handle = handle.clone();
        async move {
            nodes[4].sync.set_target(height, root);
            // Crash two sources once a few chunks arrived.
            wait_until(
                &handle,
                Duration::from_secs(60),
                "10 chunks fetched",
                || nodes[4].sync.stats().chunks_fetched >= 10,
            )
            .await;
            for victim in [0, 1] {
                network.crash(nodes[victim].id);
                nodes[victim].sync.stop().await;
            }
            wait_synced(&handle, &nodes, &[4], height, Duration::from_secs(300)).await;
            let stats = nodes[4].sync.stats();
            stop_all(&nodes[2..]).await;
            (stats, root_of(&nodes[4], height) == root)
        }
    });
    let (stats, same_root) = result.unwrap();
    assert!(same_root);
    assert!(stats.chunks_fetched >= 80);
}

#[test]
fn a_target_that_moves_abandons_the_old_sync_and_cleans_up() {
    let _heavy = icn_tests::heavy_test_lock();
    let dir = TempDir::new("moving");
    let spec = spec(40, MIB, 10);
    let template_root = template(&dir.0, &spec, MIB, &[10, 20]);
    let mut sim = Sim::new(5);
    let handle = sim.handle();
    let network = network(&sim, Duration::from_millis(50));
    let config = config_with(MIB, 4);
    let nodes = start_honest_nodes(&handle, &network, &dir.0, &template_root, 3, 2, config);
    let (root10, root20) = (root_of(&nodes[0], 10), root_of(&nodes[0], 20));
    let sync_dir = nodes[2].store_dir.join("sync");
    let result = sim.block_on({
        let handle = handle.clone();
        async move {
            nodes[2].sync.set_target(10, root10);
            wait_until(&handle, Duration::from_secs(60), "5 chunks fetched", || {
                nodes[2].sync.stats().chunks_fetched >= 5
            })
            .await;
            // The state moved on: sync 20 instead.
            nodes[2].sync.set_target(20, root20);
            wait_synced(&handle, &nodes, &[2], 20, Duration::from_secs(300)).await;
            let stats = nodes[2].sync.stats();
            stop_all(&nodes).await;
            stats
        }
    });
    let stats = result.unwrap();
    assert_eq!(stats.syncs_abandoned, 1);
    assert_eq!(stats.syncs_completed, 1);
    let left: Vec<_> = std::fs::read_dir(&sync_dir)
        .map(|entries| entries.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "scratch space left behind: {left:?}");
}

#[test]
fn a_restart_mid_sync_fetches_only_the_chunks_not_on_disk() {
    let _heavy = icn_tests::heavy_test_lock();
    let dir = TempDir::new("restart");
    let spec = spec(60, MIB, 0);
    let height = 10;
    let template_root = template(&dir.0, &spec, MIB, &[height]);
    let source_dir = dir.0.join("source");
    link_copy(&template_root, &source_dir);
    let syncer_dir = dir.0.join("syncer");
    let mut sim = Sim::new(3);
    let handle = sim.handle();
    let network = network(&sim, Duration::from_millis(50));
    let config = config_with(MIB, 4);
    let (source_id, syncer_id) = (node_id(1), node_id(2));
    let source = start_node(
        &handle,
        source_id,
        &source_dir,
        config,
        Behaviour::Honest,
        |router| network.join(source_id, router),
    );
    let root = root_of(&source, height);
    let syncer = start_node(
        &handle,
        syncer_id,
        &syncer_dir,
        config,
        Behaviour::Honest,
        |router| network.join(syncer_id, router),
    );
    let result = sim.block_on({
        let handle = handle.clone();
        let syncer_dir = syncer_dir.clone();
        async move {
            syncer.sync.set_target(height, root);
            wait_until(
                &handle,
                Duration::from_secs(60),
                "20 chunks fetched",
                || syncer.sync.stats().chunks_fetched >= 20,
            )
            .await;
            let first = syncer.sync.stats();
            network.crash(syncer_id);
            syncer.sync.stop().await;
            drop(syncer);
            // What the journal holds and still verifies: exactly what the restarted sync keeps.
            let on_disk = {
                let mut store = CheckpointStore::open(&syncer_dir, MIB as u32, 2).unwrap();
                store
                    .scratch(height, root)
                    .unwrap()
                    .verified_chunks()
                    .unwrap()
                    .len() as u64
            };
            let restarted = start_node(
                &handle,
                syncer_id,
                &syncer_dir,
                config,
                Behaviour::Honest,
                |router| network.restart(syncer_id, router),
            );
            restarted.sync.set_target(height, root);
            let nodes = [source, restarted];
            wait_synced(&handle, &nodes, &[1], height, Duration::from_secs(300)).await;
            let second = nodes[1].sync.stats();
            stop_all(&nodes).await;
            (first, on_disk, second)
        }
    });
    let (first, on_disk, second) = result.unwrap();
    assert!(
        on_disk > 0 && on_disk <= first.chunks_fetched,
        "{on_disk} of {}",
        first.chunks_fetched
    );
    assert_eq!(second.chunks_local, on_disk);
    assert_eq!(second.chunks_fetched, 60 - on_disk);
}

#[test]
fn a_node_one_checkpoint_behind_fetches_only_changed_chunks() {
    let _heavy = icn_tests::heavy_test_lock();
    let dir = TempDir::new("incremental");
    let spec = spec(50, MIB, 40);
    let template_root = template(&dir.0, &spec, MIB, &[10, 20]);
    let mut sim = Sim::new(9);
    let handle = sim.handle();
    let network = network(&sim, Duration::ZERO);
    let config = config(MIB);
    let mut nodes = Vec::new();
    for index in 0..3u8 {
        let id = node_id(index);
        let store_dir = dir.0.join(format!("node{index}"));
        link_copy(&template_root, &store_dir);
        if index == 2 {
            // The lagging node holds only checkpoint 10.
            std::fs::remove_dir_all(store_dir.join("checkpoints").join(format!("{:020}", 20)))
                .unwrap();
        }
        nodes.push(start_node(
            &handle,
            id,
            &store_dir,
            config,
            Behaviour::Honest,
            |router| network.join(id, router),
        ));
    }
    assert_eq!(nodes[2].sync.latest_height(), Some(10));
    let (old, new) = {
        let store = nodes[0].sync.store();
        (store.checkpoint(10).unwrap(), store.checkpoint(20).unwrap())
    };
    let old_hashes: HashSet<Hash> = old.manifest.chunks.iter().map(|c| c.hash).collect();
    let changed = new
        .manifest
        .chunks
        .iter()
        .filter(|c| !old_hashes.contains(&c.hash))
        .count() as u64;
    assert!(changed > 0 && changed < new.manifest.chunks.len() as u64);
    let root = new.root_hash;
    let result = sim.block_on({
        let handle = handle.clone();
        async move {
            nodes[2].sync.set_target(20, root);
            wait_synced(&handle, &nodes, &[2], 20, Duration::from_secs(300)).await;
            let stats = nodes[2].sync.stats();
            stop_all(&nodes).await;
            stats
        }
    });
    let stats = result.unwrap();
    assert_eq!(stats.chunks_fetched, changed);
    assert_eq!(
        stats.chunks_local,
        new.manifest.chunks.len() as u64 - changed
    );
}
