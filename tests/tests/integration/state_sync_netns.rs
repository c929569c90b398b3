//! A state sync between `icn node`s on a real, rate-capped network (root only; issue #4).
//!
//! Four nodes, each in its own network namespace off one bridge ([`NetnsMesh`]), each running
//! [`run_node`] on its own thread (the code path of `icn node --config FILE`). Three source
//! nodes hold the same checkpoint of a synthetic state (hardlinked copies of one store); what
//! each of them sends is capped at 100 Mbit/s by a token bucket on its veth. The fourth node is
//! a joiner (`[state] genesis = false`, no state): it learns of the checkpoint from the sources'
//! adverts, syncs it from all three at once over QUIC, and adopts it.
//!
//! Measured from the joiner's `/metrics` (scraped inside its namespace): the rate of verified
//! chunk bytes while the sync moved from 10% to 90% of the state's bytes must reach 90% of the
//! aggregate capacity of the three links (3 × 100 Mbit/s, which the token buckets count in
//! whole frames, QUIC, UDP, IP and Ethernet headers included), and the joiner ends holding the
//! sources' root hash at the sources' height.
//!
//! Without root or without `ip`/`tc`/`nft` the test prints SKIP and passes, unless `CI=true`.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use icn_engine::registry::{Registry, SubnetId};
use icn_shards::node_config::{NodeConfig, TransportKind};
use icn_shards::p2p::{unix_us, WorkloadConfig};
use icn_shards::state_sync::reference::StateWorkloadConfig;
use icn_shards::state_sync::store::CheckpointStore;
use icn_shards::state_sync::synthetic::write_state;
use icn_tests::netns::{self, scrape_metrics_in, MeshNode, MeshNodes, NetnsMesh};
use icn_tests::subnet::{link_copy, TestDir};

const SOURCES: usize = 3;
const NODES: usize = SOURCES + 1;
const JOINER: usize = SOURCES;
const QUIC_PORT: u16 = 4500;
const METRICS_PORT: u16 = 9500;
const RATE_TC: &str = "100mbit";
const RATE_BITS_PER_S: f64 = 100e6;
/// Share of the aggregate link capacity the sync must reach (issue #4).
const CAPACITY_SHARE_MIN: f64 = 0.90;
/// 256 MiB: about 7 s at 300 Mbit/s, long enough for a steady rate between 10% and 90%.
const STATE_FILES: u32 = 248;
const SMALL_FILES: u32 = 2_000;
const SMALL_FILE_BYTES_MAX: u64 = 8 << 10;
/// Heights last a minute and a checkpoint is due every million heights: nobody makes a new
/// checkpoint during the test, so the sources' checkpoint is the newest state.
const BLOCK_INTERVAL_MS: u64 = 60_000;
const CHECKPOINT_INTERVAL_HEIGHTS: u64 = 1_000_000;
const SYNC_TIME_MAX: Duration = Duration::from_secs(90);
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Unpinned shards (four nodes share the machine's cores); bbr2, because a token bucket is the
/// bottleneck: cubic fills its queue until it drops and backs off, which cost 5% of the rate
/// here (87% of capacity instead of 91-92%); and full-size IPv4 datagrams (the mesh is IPv4 with
/// a 1500-byte MTU), as every header byte counts against the cap: at 1472 bytes the chunk bytes
/// are about 95% of what crosses the link.
const TUNING_TOML: &str =
    "[engine]\npin_cores = false\n[quic]\ncongestion_control = \"bbr2\"\n[udp]\nudp_payload_bytes_max = 1472\n";

fn state_config(genesis: bool) -> StateWorkloadConfig {
    StateWorkloadConfig {
        checkpoint_interval_heights: CHECKPOINT_INTERVAL_HEIGHTS,
        genesis,
        sync_quorum: 1,
        seed: 4,
        large_files: STATE_FILES,
        large_file_bytes: 1 << 20,
        small_files: SMALL_FILES,
        small_file_bytes_max: SMALL_FILE_BYTES_MAX,
        changed_per_checkpoint_permille: 50,
    }
}

/// A quiet gossip workload: one 1 KiB block a minute, no ingress, so the links carry the sync.
fn workload() -> WorkloadConfig {
    WorkloadConfig {
        block_interval_ms: BLOCK_INTERVAL_MS,
        block_bytes: 1 << 10,
        ingress_per_s: 0,
        ..WorkloadConfig::default()
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Reading {
    fetched_bytes: f64,
    bytes_held: f64,
    bytes_total: f64,
    checkpoint_height: f64,
}

#[test]
fn a_joiner_syncs_from_three_capped_peers_at_link_speed() {
    let _heavy = icn_tests::heavy_test_lock();
    const TEST: &str = "state_sync_netns::a_joiner_syncs_from_three_capped_peers_at_link_speed";
    if !netns::can_run(TEST) {
        return;
    }
    let dir = TestDir::new("sync-netns");
    // The checkpoint is due now (heights from the clock), so the sources hold the newest state.
    let now_height = unix_us() / 1_000 / BLOCK_INTERVAL_MS;
    let height = now_height - now_height % CHECKPOINT_INTERVAL_HEIGHTS;
    let spec = state_config(true).spec();
    let template = dir.path().join("template");
    let built = Instant::now();
    let (root, state_bytes) = {
        let mut store = CheckpointStore::open(&template, 1 << 20, 2).unwrap();
        let checkpoint = store
            .create(height, |out, _| write_state(out, &spec, height, None))
            .unwrap_or_else(|e| panic!("building the source state: {e}"));
        (checkpoint.root_hash, checkpoint.manifest.state_bytes())
    };
    println!(
        "source state: {:.1} MiB at height {height}, built in {:.1?}",
        state_bytes as f64 / f64::from(1u32 << 20),
        built.elapsed()
    );

    let mesh = NetnsMesh::create(NODES).unwrap_or_else(|e| panic!("namespaces: {e}"));
    for index in 0..SOURCES {
        mesh.add_rate_cap(index, RATE_TC)
            .unwrap_or_else(|e| panic!("tbf: {e}"));
    }
    let configs = write_subnet(dir.path(), &mesh.nodes);
    for config in &configs[..SOURCES] {
        link_copy(&template, &config.state_dir);
    }
    let nodes = MeshNodes::start(&mesh.nodes, configs);
    let joiner = &mesh.nodes[JOINER];

    // Every 100 ms: when did the joiner pass 10% and 90% of the state, and with what count.
    let deadline = nodes.started + SYNC_TIME_MAX;
    let mut first: Option<(Instant, Reading)> = None;
    let mut last: Option<(Instant, Reading)> = None;
    let mut done = None;
    while Instant::now() < deadline {
        let reading = scrape_node(joiner);
        let now = Instant::now();
        if let Some(reading) = reading {
            if reading.checkpoint_height as u64 == height {
                done = Some(reading);
                break;
            }
            if reading.bytes_total > 0.0 {
                let share = reading.bytes_held / reading.bytes_total;
                if share >= 0.1 && first.is_none() {
                    first = Some((now, reading));
                }
                if share <= 0.9 {
                    last = Some((now, reading));
                }
            }
        }
        thread::sleep(POLL_INTERVAL);
    }
    let done = done.unwrap_or_else(|| {
        panic!("the joiner did not adopt height {height} within {SYNC_TIME_MAX:?}")
    });
    drop(nodes);
    drop(mesh);

    let joiner_store = CheckpointStore::open(&dir.path().join("node-3/state"), 1 << 20, 2).unwrap();
    let adopted = joiner_store.checkpoint(height).expect("adopted checkpoint");
    assert_eq!(
        adopted.root_hash, root,
        "the joiner holds the sources' state"
    );
    assert!(done.fetched_bytes as u64 >= state_bytes, "{done:?}");
    let ((t0, r0), (t1, r1)) = (
        first.expect("a reading past 10%"),
        last.expect("a reading before 90%"),
    );
    let seconds = t1.duration_since(t0).as_secs_f64();
    assert!(
        seconds > 0.5,
        "too few readings between 10% and 90% ({seconds:.2} s)"
    );
    let rate_bits = (r1.fetched_bytes - r0.fetched_bytes) * 8.0 / seconds;
    let capacity = RATE_BITS_PER_S * SOURCES as f64;
    println!(
        "sync between 10% and 90%: {:.1} Mbit/s of chunks over {seconds:.1} s = {:.1}% of {:.0} Mbit/s",
        rate_bits / 1e6,
        100.0 * rate_bits / capacity,
        capacity / 1e6
    );
    assert!(
        rate_bits >= CAPACITY_SHARE_MIN * capacity,
        "the sync moved {:.1} Mbit/s, below {:.0}% of {:.0} Mbit/s",
        rate_bits / 1e6,
        CAPACITY_SHARE_MIN * 100.0,
        capacity / 1e6
    );
}

/// Identities, the registry (each node at its mesh address) and one config per node.
fn write_subnet(dir: &Path, nodes: &[MeshNode]) -> Vec<NodeConfig> {
    let local = Registry::create_local_subnet(dir, nodes.len(), QUIC_PORT)
        .unwrap_or_else(|e| panic!("registry: {e}"));
    let mut subnets = local.subnets().to_vec();
    for (record, node) in subnets[0].nodes.iter_mut().zip(nodes) {
        record.quic_addr = SocketAddr::from((node.addr, QUIC_PORT));
        record.tcp_addr = SocketAddr::from((node.addr, QUIC_PORT + 1));
        record.http_addr = None;
        record.metrics_addr = Some(SocketAddr::from((Ipv4Addr::LOCALHOST, METRICS_PORT)));
    }
    let subnet_id: SubnetId = subnets[0].id.clone();
    let registry = Registry::new(local.version() + 1, subnets).expect("moved registry is valid");
    registry
        .save(&dir.join("registry.toml"))
        .unwrap_or_else(|e| panic!("saving the registry: {e}"));
    let tuning = dir.join("tuning.toml");
    std::fs::write(&tuning, TUNING_TOML).unwrap_or_else(|e| panic!("tuning: {e}"));
    (0..nodes.len())
        .map(|index| NodeConfig {
            identity_dir: dir.join(format!("node-{index}")),
            registry_path: dir.join("registry.toml"),
            subnet_id: subnet_id.clone(),
            transport: TransportKind::Quic,
            tuning_profile: Some(PathBuf::from(&tuning)),
            workload: Some(workload()),
            state_dir: dir.join(format!("node-{index}/state")),
            state: Some(state_config(index != JOINER)),
        })
        .collect()
}

/// GET /metrics of `node` from a thread inside its namespace.
fn scrape_node(node: &MeshNode) -> Option<Reading> {
    scrape_metrics_in(node, METRICS_PORT).map(|text| parse_reading(&text))
}

fn parse_reading(text: &str) -> Reading {
    let mut reading = Reading::default();
    for line in text.lines().filter(|line| !line.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let name = series.split_once('{').map_or(series, |(name, _)| name);
        match name {
            "icn_state_sync_fetched_bytes_total" => reading.fetched_bytes += value,
            "icn_state_sync_bytes_held" => reading.bytes_held += value,
            "icn_state_sync_bytes_total" => reading.bytes_total += value,
            "icn_state_sync_checkpoint_height" => reading.checkpoint_height = value,
            _ => {}
        }
    }
    reading
}
