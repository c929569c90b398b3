//! `icn subnet`: a local N-node subnet running the reference workload, what `make run` shows.
//!
//! The launcher makes a temporary folder with identities and a registry of N members of subnet
//! `local` on loopback, starts each member as its own `icn node` child process (this same
//! executable) with a `[workload]` table in its config, and once a second reads every node's
//! `/metrics` over HTTP to print one status line: artifacts/s and MB/s delivered (summed over the
//! receiving nodes), delivery latency (median of the nodes' p50 and worst node's p99 over that
//! second), and connected peers. Nothing in `icn node` is special-cased: the status comes from the
//! same endpoint an operator scrapes. Ctrl-C (or `--seconds`) stops it; the children are stopped
//! and the folder removed on every way out.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use icn_engine::registry::{Registry, SubnetId};
use icn_engine::shard::Shutdown;
use icn_tuning::Tuning;

use crate::demo::{
    demo_tuning_text, free_base_port, setup, Children, DemoError, TempDir, LOCAL_SUBNET,
    PORTS_PER_NODE, STATUS_INTERVAL,
};
use crate::node_config::{NodeConfig, TransportKind};
use crate::p2p::WorkloadConfig;
use crate::replica::keys;
use crate::state_sync::reference::StateWorkloadConfig;

/// Nodes a local subnet may have (13 is the IC's usual subnet size).
pub const SUBNET_NODES_MAX: usize = 16;
/// How long one scrape may take before the node counts as not answering this second.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_millis(500);
/// Largest /metrics answer read (a node's full exposition is a few tens of KiB).
pub const SCRAPE_BYTES_MAX: usize = 4 << 20;

/// What `icn subnet` was asked to do.
#[derive(Clone, Debug)]
pub struct SubnetOptions {
    pub nodes: usize,
    /// Stop after this many status lines; run until Ctrl-C when None.
    pub seconds: Option<u64>,
    pub transport: TransportKind,
    pub workload: WorkloadConfig,
    pub base_port: Option<u16>,
    pub tuning_profile: Option<PathBuf>,
    /// The reference state every node checkpoints (None: no state, no sync).
    pub state: Option<StateWorkloadConfig>,
    /// Registry members started `join_after` later, with no state: they sync, then follow.
    pub joiners: usize,
    pub join_after: Duration,
}

/// Runs the subnet; `exe` is the `icn` binary that runs each node.
pub fn run_subnet(
    options: &SubnetOptions,
    exe: &Path,
    shutdown: Shutdown,
) -> Result<(), DemoError> {
    if options.nodes < 2 || options.nodes + options.joiners > SUBNET_NODES_MAX {
        return Err(DemoError::Usage(format!(
            "--nodes must be at least 2 and --nodes + --joiners at most {SUBNET_NODES_MAX}, not {} + {}",
            options.nodes, options.joiners
        )));
    }
    if options.joiners > 0 && options.state.is_none() {
        return Err(DemoError::Usage(
            "--joiners needs a reference state (--state-mib above 0)".into(),
        ));
    }
    if let Some(state) = &options.state {
        state.validate().map_err(DemoError::Usage)?;
    }
    let members = options.nodes + options.joiners;
    if options.seconds == Some(0) {
        return Err(DemoError::Usage("--seconds must be at least 1".into()));
    }
    let dir = TempDir::create()?;
    let base_port = match options.base_port {
        Some(port) => port,
        None => free_base_port(members)
            .ok_or_else(|| DemoError::Setup("no free range of loopback ports found".into()))?,
    };
    let registry =
        keys::create_local_subnet(&dir.0, members, base_port, &SubnetId(LOCAL_SUBNET.into()))
            .map_err(setup("creating the local registry and subnet key"))?;
    let tuning_path = dir.0.join("tuning.toml");
    std::fs::write(
        &tuning_path,
        demo_tuning_text(options.tuning_profile.as_deref())?,
    )
    .map_err(setup("writing the tuning profile"))?;
    let tuning = Tuning::load(&tuning_path).map_err(|e| DemoError::Setup(e.to_string()))?;
    options
        .workload
        .validate(&tuning)
        .map_err(DemoError::Usage)?;
    let metrics: Vec<SocketAddr> = registry.subnets()[0]
        .nodes
        .iter()
        .map(|record| {
            record
                .metrics_addr
                .expect("local registries have metrics addresses")
        })
        .collect();
    println!(
        "icn subnet: {} nodes over {} on 127.0.0.1 ports {}..{}; block {} B every {} ms, {} ingress/s of {} B per node; registry {}",
        options.nodes,
        options.transport.name(),
        base_port,
        base_port as usize + members * PORTS_PER_NODE - 1,
        options.workload.block_bytes,
        options.workload.block_interval_ms,
        options.workload.ingress_per_s,
        options.workload.ingress_bytes,
        dir.0.join("registry.toml").display()
    );
    print_api_example(&registry);
    if let Some(state) = &options.state {
        let spec = state.spec();
        // The nodes run the reference replica (the subnet has a key), so checkpoints follow
        // its executed heights: its state plus these synthetic files as ballast.
        println!(
            "icn subnet: replica checkpoints every {} executed heights, each with {:.1} MiB of reference state in {} files{}",
            tuning.replica.checkpoint_interval_count,
            spec.state_bytes() as f64 / f64::from(1u32 << 20),
            spec.file_count(),
            if options.joiners > 0 {
                format!(
                    "; {} joiner(s) start after {} s and sync it",
                    options.joiners,
                    options.join_after.as_secs()
                )
            } else {
                String::new()
            }
        );
    }
    let mut children = Children(Vec::with_capacity(members));
    for index in 0..options.nodes {
        children
            .0
            .push(spawn_node(exe, &dir.0, index, options, true)?);
    }
    let join = |children: &mut Children| -> Result<(), DemoError> {
        for index in options.nodes..members {
            children
                .0
                .push(spawn_node(exe, &dir.0, index, options, false)?);
        }
        Ok(())
    };
    let result = status_loop(options, &metrics, &mut children, &shutdown, join);
    drop(children);
    drop(dir);
    result
}

/// Where the subnet's public HTTP API answers, and an `ic-agent` call to paste against it.
fn print_api_example(registry: &Registry) {
    let subnet = &registry.subnets()[0];
    let apis: Vec<String> = subnet
        .nodes
        .iter()
        .filter_map(|node| node.http_addr)
        .map(|addr| format!("http://{addr}"))
        .collect();
    let Some(first) = apis.first() else {
        return;
    };
    let principal = subnet
        .public_key
        .as_deref()
        .and_then(|der| crate::replica::bls::PublicKey::from_der(der).ok())
        .map(|key| key.subnet_id().to_string())
        .unwrap_or_else(|| "none".into());
    println!(
        "icn subnet: IC HTTP API on {} (subnet principal {principal}); canisters: counter {} (get, increment, add), key-value {} (get, put, delete, list)",
        apis.join(" "),
        crate::replica::canisters::counter_canister_id(),
        crate::replica::canisters::kv_canister_id(),
    );
    println!(
        "icn subnet: try it with ic-agent (README \"Talk to it\"): Agent::builder().with_url(\"{first}\"), fetch_root_key(), update(counter, \"increment\").call_and_wait()"
    );
}

fn spawn_node(
    exe: &Path,
    dir: &Path,
    index: usize,
    options: &SubnetOptions,
    genesis: bool,
) -> Result<Child, DemoError> {
    let config = NodeConfig {
        identity_dir: PathBuf::from(format!("node-{index}")),
        registry_path: PathBuf::from("registry.toml"),
        subnet_id: SubnetId(LOCAL_SUBNET.into()),
        transport: options.transport,
        tuning_profile: Some(PathBuf::from("tuning.toml")),
        workload: Some(options.workload),
        state_dir: PathBuf::from(format!("node-{index}/state")),
        state: options
            .state
            .map(|state| StateWorkloadConfig { genesis, ..state }),
    };
    let path = dir.join(format!("node-{index}.toml"));
    std::fs::write(&path, config.to_toml()).map_err(setup("writing a node config"))?;
    Command::new(exe)
        .arg("node")
        .arg("--config")
        .arg(&path)
        .spawn()
        .map_err(setup("starting a node process"))
}

/// One node's figures from one scrape.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeReading {
    pub artifacts_received: f64,
    pub bytes_received: f64,
    pub peers: f64,
    /// Newest checkpoint height, and a running sync's bytes held / total (0 when none).
    pub checkpoint_height: f64,
    pub sync_bytes_held: f64,
    pub sync_bytes_total: f64,
    /// Per kind: (window p50, window p99) in µs; 0 when the kind had no deliveries.
    pub window_us: HashMap<String, (f64, f64)>,
}

/// Reads the figures the status line needs from a Prometheus text exposition.
pub fn parse_reading(text: &str) -> NodeReading {
    let mut reading = NodeReading::default();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => (name, labels.trim_end_matches('}')),
            None => (series, ""),
        };
        let kind = labels
            .split(',')
            .find_map(|pair| pair.strip_prefix("kind="))
            .map(|v| v.trim_matches('"').to_string());
        match name {
            "icn_gossip_artifacts_received_total" => reading.artifacts_received += value,
            "icn_gossip_artifact_bytes_received_total" => reading.bytes_received += value,
            "icn_transport_active_connections" => reading.peers += value,
            "icn_state_sync_checkpoint_height" => reading.checkpoint_height = value,
            "icn_state_sync_bytes_held" => reading.sync_bytes_held = value,
            "icn_state_sync_bytes_total" => reading.sync_bytes_total = value,
            // Per-shard gauges: only the home shard delivers artifacts, the others read 0.
            "icn_gossip_delivery_latency_window_p50_us" => {
                if let Some(kind) = kind {
                    let p50 = &mut reading.window_us.entry(kind).or_default().0;
                    *p50 = p50.max(value);
                }
            }
            "icn_gossip_delivery_latency_window_p99_us" => {
                if let Some(kind) = kind {
                    let p99 = &mut reading.window_us.entry(kind).or_default().1;
                    *p99 = p99.max(value);
                }
            }
            _ => {}
        }
    }
    reading
}

/// GET /metrics from `addr` with a bounded wait and size.
pub fn scrape(addr: SocketAddr) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(&addr, SCRAPE_TIMEOUT).ok()?;
    stream.set_read_timeout(Some(SCRAPE_TIMEOUT)).ok()?;
    stream.set_write_timeout(Some(SCRAPE_TIMEOUT)).ok()?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut body = Vec::new();
    stream
        .take(SCRAPE_BYTES_MAX as u64)
        .read_to_end(&mut body)
        .ok()?;
    let text = String::from_utf8(body).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

fn status_loop(
    options: &SubnetOptions,
    metrics: &[SocketAddr],
    children: &mut Children,
    shutdown: &Shutdown,
    join: impl Fn(&mut Children) -> Result<(), DemoError>,
) -> Result<(), DemoError> {
    let started = Instant::now();
    let mut joined = options.joiners == 0;
    let mut previous: Vec<Option<NodeReading>> = vec![None; metrics.len()];
    let mut lines = 0u64;
    let mut next = started + STATUS_INTERVAL;
    while !shutdown.is_triggered() {
        if let Some((index, status)) = children.exited() {
            return Err(DemoError::Run(format!("node {index} exited: {status}")));
        }
        let now = Instant::now();
        if now < next {
            std::thread::sleep((next - now).min(Duration::from_millis(50)));
            continue;
        }
        next += STATUS_INTERVAL;
        if !joined && started.elapsed() >= options.join_after {
            println!("icn subnet: starting {} joiner(s)", options.joiners);
            join(children)?;
            joined = true;
        }
        let readings: Vec<Option<NodeReading>> = metrics
            .iter()
            .map(|addr| scrape(*addr).map(|text| parse_reading(&text)))
            .collect();
        println!(
            "{}",
            status_line(started.elapsed(), metrics.len(), &previous, &readings)
        );
        let _ = std::io::stdout().flush();
        previous = readings;
        lines += 1;
        if options.seconds.is_some_and(|seconds| lines >= seconds) {
            break;
        }
    }
    Ok(())
}

/// The status line for one second, from the previous and current readings of every node.
pub fn status_line(
    elapsed: Duration,
    nodes: usize,
    previous: &[Option<NodeReading>],
    current: &[Option<NodeReading>],
) -> String {
    let up = current.iter().flatten().count();
    let peers: f64 = current.iter().flatten().map(|r| r.peers).sum();
    let peers_full = nodes * (nodes - 1);
    let mut artifacts = 0.0;
    let mut bytes = 0.0;
    for (before, now) in previous.iter().zip(current) {
        if let (Some(before), Some(now)) = (before, now) {
            artifacts += (now.artifacts_received - before.artifacts_received).max(0.0);
            bytes += (now.bytes_received - before.bytes_received).max(0.0);
        }
    }
    let mut kinds: Vec<String> = Vec::new();
    for kind in ["block", "notarization", "ingress"] {
        let mut p50s: Vec<f64> = current
            .iter()
            .flatten()
            .filter_map(|r| r.window_us.get(kind))
            .filter(|(p50, _)| *p50 > 0.0)
            .map(|(p50, _)| *p50)
            .collect();
        let p99 = current
            .iter()
            .flatten()
            .filter_map(|r| r.window_us.get(kind))
            .map(|(_, p99)| *p99)
            .fold(0.0, f64::max);
        if p50s.is_empty() {
            continue;
        }
        p50s.sort_by(f64::total_cmp);
        let median = p50s[p50s.len() / 2];
        kinds.push(format!("{kind} {}/{}", format_us(median), format_us(p99)));
    }
    let latency = if kinds.is_empty() {
        "no deliveries".to_string()
    } else {
        kinds.join(", ")
    };
    let checkpoints: Vec<f64> = current
        .iter()
        .flatten()
        .map(|r| r.checkpoint_height)
        .filter(|height| *height > 0.0)
        .collect();
    let mut state = String::new();
    if let Some(newest) = checkpoints.iter().copied().reduce(f64::max) {
        let behind = current
            .iter()
            .flatten()
            .filter(|r| r.checkpoint_height < newest)
            .count();
        state = format!("  checkpoint {newest:.0} ({behind} behind)");
    }
    for (index, reading) in current.iter().enumerate() {
        if let Some(reading) = reading {
            if reading.sync_bytes_total > 0.0 {
                state.push_str(&format!(
                    "  node {index} syncing {:.0}%",
                    100.0 * reading.sync_bytes_held / reading.sync_bytes_total
                ));
            }
        }
    }
    format!(
        "[{:>4}s] up {up}/{nodes}  peers {peers:.0}/{peers_full}  {artifacts:>7.0} artifacts/s  {:>7.2} MB/s  latency p50/p99: {latency}{state}",
        elapsed.as_secs(),
        bytes / 1e6,
    )
}

fn format_us(us: f64) -> String {
    if us >= 1_000.0 {
        format!("{:.1} ms", us / 1_000.0)
    } else {
        format!("{us:.0} µs")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "# HELP x\n\
        icn_gossip_artifacts_received_total{kind=\"block\"} 3\n\
        icn_gossip_artifacts_received_total{kind=\"ingress\"} 7\n\
        icn_gossip_artifact_bytes_received_total{kind=\"block\"} 3000\n\
        icn_transport_active_connections 3\n\
        icn_gossip_delivery_latency_window_p50_us{kind=\"block\",shard=\"0\"} 1500\n\
        icn_gossip_delivery_latency_window_p99_us{kind=\"block\",shard=\"0\"} 9000\n\
        icn_gossip_delivery_latency_window_p50_us{kind=\"block\",shard=\"1\"} 0\n\
        icn_gossip_delivery_latency_window_p99_us{kind=\"block\",shard=\"1\"} 0\n\
        garbage line\n";

    #[test]
    fn readings_come_from_the_exposition() {
        let reading = parse_reading(SAMPLE);
        assert_eq!(reading.artifacts_received, 10.0);
        assert_eq!(reading.bytes_received, 3000.0);
        assert_eq!(reading.peers, 3.0);
        assert_eq!(reading.window_us["block"], (1500.0, 9000.0));
    }

    #[test]
    fn status_line_sums_deltas_and_names_missing_nodes() {
        let before = parse_reading(SAMPLE);
        let mut after = before.clone();
        after.artifacts_received += 100.0;
        after.bytes_received += 2e6;
        let line = status_line(
            Duration::from_secs(2),
            2,
            &[Some(before.clone()), Some(before)],
            &[Some(after), None],
        );
        assert!(line.contains("up 1/2"), "{line}");
        assert!(line.contains("100 artifacts/s"), "{line}");
        assert!(line.contains("2.00 MB/s"), "{line}");
        assert!(line.contains("block 1.5 ms/9.0 ms"), "{line}");
    }
}
