//! Five `icn node`s gossiping over QUIC on a real, impaired network (root only; issue #3).
//!
//! Each node runs in its own network namespace, on its own thread that entered the namespace
//! before calling [`run_node`], the same code path as `icn node --config FILE`. The namespaces
//! hang off one bridge in a hub namespace ([`NetnsMesh`]); every node's egress is capped by a
//! token bucket and one in ten packets it receives is dropped at random (nft `numgen random`).
//!
//! Timeline, from the moment the nodes start:
//! 1. the mesh connects (every node sees 4 peers) within [`CONNECT_TIME_MAX`];
//! 2. the nodes gossip under loss until [`PARTITION_AT`];
//! 3. nodes [`MINORITY`] are cut off from the other three for [`PARTITION_TIME`] (longer than
//!    QUIC's idle timeout, so the connections across the cut really close);
//! 4. after healing, every node sees 4 peers again within [`RECONNECT_TIME_MAX`], with the
//!    default tuning;
//! 5. production stops at [`STOP_AFTER`] (the workload's `stop_after_ms`) and within
//!    [`SETTLE_TIME_MAX`] every node has every artifact of every other node: for each node j
//!    and kind k, received_j(k) = Σ_{i≠j} produced_i(k). Blocks are relayed but counted once
//!    per validating node; shares and ingress come only from their producer.
//!
//! The nft counters must show that the loss and the partition dropped packets. Metrics are read
//! from each node's `/metrics`, served on 127.0.0.1 inside its namespace (each namespace has its
//! own loopback, so the test's scrapes cross neither the loss nor the cap).
//!
//! What bounds the reconnect (default tuning): the connections across the cut close when QUIC's
//! idle timeout (10 s) expires; the dialer then tries every handshake_timeout (10 s) plus a
//! doubling backoff (100 ms, 200 ms, ...). A 30 s partition heals near the end of the second
//! doomed attempt, so the mesh is back within about a second. A heal later in an attempt's life
//! waits for that attempt to expire (its Initial is retransmitted 1, 3 and 7 s in, then not
//! again) plus the backoff: a 38 s partition took 4.5 s, and the worst case of a long partition
//! is about 3 s + reconnect_backoff_max (5 s) + the handshake itself.
//!
//! Without root or without `ip`/`tc`/`nft` the test prints SKIP and passes, unless `CI=true`.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use icn_engine::registry::{Registry, SubnetId};
use icn_shards::node_config::{NodeConfig, TransportKind};
use icn_shards::p2p::{WorkloadConfig, KINDS};
use icn_tests::netns::{self, scrape_metrics_in, MeshNode, MeshNodes, NetnsMesh};
use icn_tests::subnet::TestDir;

const NODES: usize = 5;
/// Cut off from the other three during the partition.
const MINORITY: [usize; 2] = [3, 4];
/// QUIC port of every node, each on its own address.
const QUIC_PORT: u16 = 4400;
/// Admin (/metrics) port of every node, on the loopback of its own namespace.
const METRICS_PORT: u16 = 9400;
const RATE_TC: &str = "20mbit";
/// One packet in this many that a node receives is dropped (10%).
const LOSS_ONE_IN: u32 = 10;

/// Each handshake flight lost to the 10% loss costs a probe timeout that doubles (1, 2, 4 s with
/// quiche's 333 ms initial RTT), so a pair whose flights are lost three times in a row connects
/// only after about 8 s plus the dial's own wait; 10 s was missed in CI by a few pairs
/// (2026-12-06: peers per node [4, 2, 3, 4, 3]). The 10 s bound is the reconnect after
/// healing ([`RECONNECT_TIME_MAX`]), which stays.
const CONNECT_TIME_MAX: Duration = Duration::from_secs(20);
const PARTITION_AT: Duration = Duration::from_secs(12);
const PARTITION_TIME: Duration = Duration::from_secs(30);
const RECONNECT_TIME_MAX: Duration = Duration::from_secs(10);
/// Production keeps running until the mesh has had its chance to reconnect, so artifacts made
/// after the heal must arrive too.
const STOP_AFTER: Duration = Duration::from_secs(52);
/// Time for the last artifacts (and the shares for the last blocks) to arrive after production
/// stopped; with the figures below a node needs a few seconds.
const SETTLE_TIME_MAX: Duration = Duration::from_secs(30);
/// Delivery is settled when every node's counts balance in this many polls in a row (a node's
/// counters are scraped one after the other, so one balanced poll could be a coincidence).
const SETTLED_POLLS: usize = 2;
const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// 64 KiB blocks every 500 ms and 50 ingress/s of 512 B per node: about 1.5 Mbit/s of artifacts
/// out of a block maker towards 4 peers, well under the cap, so that what limits delivery is
/// the loss and the partition, not the link.
fn workload() -> WorkloadConfig {
    WorkloadConfig {
        block_interval_ms: 500,
        block_bytes: 64 << 10,
        ingress_per_s: 50,
        ingress_bytes: 512,
        // Pools must keep every artifact made during the 30 s partition until the other side
        // has fetched it after the heal: 400 heights is 200 s, longer than the whole test, so
        // nothing is purged before delivery is checked (at most ~140 heights of about 80 KiB
        // each, 11 MiB per node).
        heights_kept: 400,
        stop_after_ms: STOP_AFTER.as_millis() as u64,
    }
}

/// Pinning would put the five nodes' shards on the same first core; the rest is the default
/// tuning, reconnect and idle timeouts included.
const TUNING_TOML: &str = "[engine]\npin_cores = false\n";

/// One node's counters from one scrape, per kind in the order of [`KINDS`].
#[derive(Clone, Debug, Default, PartialEq)]
struct Reading {
    received: [u64; 3],
    produced: [u64; 3],
    connections: u64,
}

#[test]
fn five_nodes_deliver_everything_through_loss_and_a_partition() {
    let _heavy = icn_tests::heavy_test_lock();
    const TEST: &str = "gossip_netns::five_nodes_deliver_everything_through_loss_and_a_partition";
    if !netns::can_run(TEST) {
        return;
    }
    let mut mesh = NetnsMesh::create(NODES).unwrap_or_else(|e| panic!("namespaces: {e}"));
    for index in 0..NODES {
        mesh.add_rate_cap(index, RATE_TC)
            .unwrap_or_else(|e| panic!("tbf: {e}"));
        mesh.add_ingress_loss(index, LOSS_ONE_IN)
            .unwrap_or_else(|e| panic!("nft: {e}"));
    }
    let dir = TestDir::new("gossip-netns");
    let configs = write_subnet(dir.path(), &mesh.nodes);
    println!(
        "{NODES} nodes on {} behind hub {}: {RATE_TC} cap out of, 1 in {LOSS_ONE_IN} dropped into every node",
        mesh.nodes[0].addr, mesh.hub
    );
    // Dropped before `mesh`: the nodes stop (on panics too) before their namespaces go.
    let nodes = MeshNodes::start(&mesh.nodes, configs);
    let started = nodes.started;

    let connected = wait_for(&mesh.nodes, CONNECT_TIME_MAX, mesh_is_whole)
        .unwrap_or_else(|readings| panic!("not connected: {}", describe(&readings)));
    println!("mesh whole after {:?}", connected.duration_since(started));
    sleep_until(started + PARTITION_AT);
    mesh.partition(&MINORITY)
        .unwrap_or_else(|e| panic!("partition: {e}"));
    let partitioned = Instant::now();
    println!(
        "[{:>5.1}s] nodes {MINORITY:?} cut off for {PARTITION_TIME:?}",
        since(started)
    );
    sleep_until(partitioned + PARTITION_TIME);
    let cut = read_all(&mesh.nodes);
    let partition_dropped = mesh.heal().unwrap_or_else(|e| panic!("heal: {e}"));
    let healed = Instant::now();
    println!(
        "[{:>5.1}s] healed; the partition dropped {partition_dropped} packets; connections before healing: {}",
        since(started),
        describe(&cut)
    );
    assert!(
        cut.iter().flatten().any(|r| r.connections < NODES as u64 - 1),
        "no connection across the partition closed in {PARTITION_TIME:?}: the partition is not real"
    );
    let whole =
        wait_for(&mesh.nodes, RECONNECT_TIME_MAX, mesh_is_whole).unwrap_or_else(|readings| {
            panic!(
                "mesh not whole {RECONNECT_TIME_MAX:?} after healing: {}",
                describe(&readings)
            )
        });
    println!(
        "[{:>5.1}s] mesh whole again {:?} after healing",
        since(started),
        whole.duration_since(healed)
    );

    sleep_until(started + STOP_AFTER);
    let readings = wait_for_settled(&mesh.nodes);
    println!(
        "[{:>5.1}s] delivery settled: {}",
        since(started),
        describe_delivery(&readings)
    );
    check_delivery(&readings);
    check_drops(&mesh, partition_dropped);
    drop(nodes);
    drop(mesh);
    println!("nodes stopped, namespaces removed");
}

/// Writes identities, the registry (each node at its mesh address) and one config per node.
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
    let subnet_id = subnets[0].id.clone();
    let registry = Registry::new(local.version() + 1, subnets).expect("moved registry is valid");
    registry
        .save(&dir.join("registry.toml"))
        .unwrap_or_else(|e| panic!("saving the registry: {e}"));
    let tuning = dir.join("tuning.toml");
    std::fs::write(&tuning, TUNING_TOML).unwrap_or_else(|e| panic!("tuning: {e}"));
    (0..nodes.len())
        .map(|index| node_config(dir, index, &subnet_id, &tuning))
        .collect()
}

fn node_config(dir: &Path, index: usize, subnet_id: &SubnetId, tuning: &Path) -> NodeConfig {
    NodeConfig {
        identity_dir: dir.join(format!("node-{index}")),
        registry_path: dir.join("registry.toml"),
        subnet_id: subnet_id.clone(),
        transport: TransportKind::Quic,
        tuning_profile: Some(PathBuf::from(tuning)),
        workload: Some(workload()),
        state_dir: dir.join(format!("node-{index}/state")),
        state: None,
    }
}

/// GET /metrics of `node` from a thread inside its namespace.
fn scrape_node(node: &MeshNode) -> Option<Reading> {
    scrape_metrics_in(node, METRICS_PORT).map(|text| parse_reading(&text))
}

fn read_all(nodes: &[MeshNode]) -> Vec<Option<Reading>> {
    nodes.iter().map(scrape_node).collect()
}

/// The counters the test needs, summed over any labels other than `kind`.
fn parse_reading(text: &str) -> Reading {
    let mut reading = Reading::default();
    for line in text.lines().filter(|line| !line.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        let kind = KINDS
            .iter()
            .position(|(_, label)| labels.contains(&format!("kind=\"{label}\"")));
        let value = value as u64;
        match (name, kind) {
            ("icn_gossip_artifacts_received_total", Some(k)) => reading.received[k] += value,
            ("icn_gossip_artifacts_produced_total", Some(k)) => reading.produced[k] += value,
            ("icn_transport_active_connections", _) => reading.connections += value,
            _ => {}
        }
    }
    reading
}

fn mesh_is_whole(readings: &[Option<Reading>]) -> bool {
    readings.iter().all(|r| {
        r.as_ref()
            .is_some_and(|r| r.connections == NODES as u64 - 1)
    })
}

/// Polls every node until `done` holds (Ok: when) or `limit` passes (Err: the last readings).
fn wait_for(
    nodes: &[MeshNode],
    limit: Duration,
    done: fn(&[Option<Reading>]) -> bool,
) -> Result<Instant, Vec<Option<Reading>>> {
    let deadline = Instant::now() + limit;
    loop {
        let readings = read_all(nodes);
        if done(&readings) {
            return Ok(Instant::now());
        }
        if Instant::now() >= deadline {
            return Err(readings);
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// Waits until delivery balances in [`SETTLED_POLLS`] polls in a row; returns the last readings
/// (balanced or not: [`check_delivery`] says what is missing).
fn wait_for_settled(nodes: &[MeshNode]) -> Vec<Option<Reading>> {
    let deadline = Instant::now() + SETTLE_TIME_MAX;
    let mut balanced_polls = 0;
    loop {
        let readings = read_all(nodes);
        balanced_polls = if missing(&readings).is_empty() {
            balanced_polls + 1
        } else {
            0
        };
        if balanced_polls >= SETTLED_POLLS || Instant::now() >= deadline {
            return readings;
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// What does not balance: (node, kind, received, expected), or a node that did not answer.
fn missing(readings: &[Option<Reading>]) -> Vec<String> {
    let Some(readings) = readings.iter().cloned().collect::<Option<Vec<Reading>>>() else {
        return vec!["a node did not answer its scrape".into()];
    };
    let mut out = Vec::new();
    for (j, reading) in readings.iter().enumerate() {
        for (k, (_, label)) in KINDS.iter().enumerate() {
            let expected: u64 = readings
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != j)
                .map(|(_, other)| other.produced[k])
                .sum();
            if reading.received[k] != expected {
                out.push(format!(
                    "node {j} {label}: received {} of {expected}",
                    reading.received[k]
                ));
            }
        }
    }
    out
}

fn check_delivery(readings: &[Option<Reading>]) {
    let gaps = missing(readings);
    assert!(
        gaps.is_empty(),
        "delivery incomplete {SETTLE_TIME_MAX:?} after production stopped: {}",
        gaps.join("; ")
    );
    let readings: Vec<&Reading> = readings.iter().flatten().collect();
    let produced = |k: usize| readings.iter().map(|r| r.produced[k]).sum::<u64>();
    // 52 s at one block per 500 ms: a run that made far fewer did not really run.
    let blocks_min = STOP_AFTER.as_millis() as u64 / 500 * 8 / 10;
    assert!(
        produced(0) >= blocks_min,
        "only {} blocks made, expected at least {blocks_min}",
        produced(0)
    );
    assert!(produced(2) > 0, "no ingress made");
    for (index, reading) in readings.iter().enumerate() {
        let validated_blocks = reading.produced[0] + reading.received[0];
        assert_eq!(
            reading.produced[1], validated_blocks,
            "node {index} made {} notarization shares for {validated_blocks} validated blocks: {reading:?}",
            reading.produced[1]
        );
    }
}

fn check_drops(mesh: &NetnsMesh, partition_dropped: u64) {
    let lost: Vec<u64> = (0..NODES)
        .map(|index| {
            mesh.loss_dropped_packets(index)
                .unwrap_or_else(|e| panic!("{e}"))
        })
        .collect();
    println!("random loss dropped {lost:?} packets into nodes 0..{NODES}; the partition {partition_dropped}");
    assert!(
        lost.iter().all(|dropped| *dropped > 0),
        "a loss rule dropped nothing: the loss is not real"
    );
    assert!(
        partition_dropped > 0,
        "the partition dropped nothing: it is not real"
    );
}

fn describe(readings: &[Option<Reading>]) -> String {
    let peers: Vec<String> = readings
        .iter()
        .map(|r| r.as_ref().map_or("?".into(), |r| r.connections.to_string()))
        .collect();
    format!("peers per node [{}]", peers.join(", "))
}

fn describe_delivery(readings: &[Option<Reading>]) -> String {
    let readings: Vec<&Reading> = readings.iter().flatten().collect();
    KINDS
        .iter()
        .enumerate()
        .map(|(k, (_, label))| {
            let produced: u64 = readings.iter().map(|r| r.produced[k]).sum();
            let received: u64 = readings.iter().map(|r| r.received[k]).sum();
            format!("{label} {produced} made, {received} delivered")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn sleep_until(when: Instant) {
    thread::sleep(when.saturating_duration_since(Instant::now()));
}

fn since(start: Instant) -> f64 {
    start.elapsed().as_secs_f64()
}

#[test]
fn readings_come_from_the_exposition() {
    let text = "# HELP x\n\
        icn_gossip_artifacts_received_total{kind=\"block\"} 3\n\
        icn_gossip_artifacts_received_total{kind=\"ingress\",shard=\"0\"} 7\n\
        icn_gossip_artifacts_produced_total{kind=\"notarization\"} 5\n\
        icn_transport_active_connections 4\n\
        garbage line\n";
    let reading = parse_reading(text);
    assert_eq!(reading.received, [3, 0, 7]);
    assert_eq!(reading.produced, [0, 5, 0]);
    assert_eq!(reading.connections, 4);
    let balanced = vec![Some(Reading {
        received: [0; 3],
        produced: [1, 1, 1],
        connections: 0,
    })];
    assert!(
        missing(&balanced).is_empty(),
        "one node receives from no one"
    );
    let mut two = vec![balanced[0].clone(), balanced[0].clone()];
    assert_eq!(missing(&two).len(), 6);
    two[0] = Some(Reading {
        received: [1, 1, 1],
        ..two[0].clone().unwrap()
    });
    two[1] = two[0].clone();
    assert!(missing(&two).is_empty());
}
