//! `icn demo`: a live local subnet moving data, what `make run` shows.
//!
//! Design: the demo makes a temporary folder with a registry of `nodes + 1` members of subnet
//! `local` on loopback. Members 0..nodes are real nodes, each its own `icn node` child process
//! (this same executable). The last member is the load generator, run here in the parent on one
//! glommio executor: a full registry member with its own identity, so the nodes accept it through
//! the same mutual-TLS registry check as any peer, and nothing in `icn node` is special-cased for
//! the demo. It keeps `concurrency` requests in flight to every node on the sink route (2) and
//! prints one status line per second: MB/s and RPC/s acknowledged in that second, p50/p99 latency
//! (hdrhistogram, that second only), and connected peers. Ctrl-C (or `--seconds`) stops it; the
//! children are stopped and the folder removed on every way out.

use std::cell::{Cell, RefCell};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use glommio::{LocalExecutorBuilder, Placement};
use hdrhistogram::Histogram;
use icn_engine::identity::Identity;
use icn_engine::metrics::MetricsConfig;
use icn_engine::registry::{Registry, SubnetId};
use icn_engine::shard::Shutdown;
use icn_engine::{Buf, NodeId, Priority, Router, RpcError, Transport};
use icn_tuning::Tuning;

use crate::node::{ROUTE_SINK, SINK_RESPONSE_BYTES};
use crate::node_config::{NodeConfig, TransportKind};
use crate::node_transport::NodeTransport;

/// The subnet every local registry made here uses.
pub const LOCAL_SUBNET: &str = "local";
/// Ports a registry member takes: QUIC, TCP, HTTP, metrics (see `Registry::create_local_subnet`).
pub const PORTS_PER_NODE: usize = 4;
/// Where automatic port ranges are looked for: below Linux's ephemeral range (32768..), so an
/// outgoing connection cannot take a port between the check and the bind.
pub const AUTO_PORT_FIRST: u16 = 20_000;
pub const AUTO_PORT_LAST: u16 = 32_000;
/// Ranges tried before giving up on finding free ports.
pub const AUTO_PORT_ATTEMPTS_MAX: usize = 64;

/// How often a status line is printed.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(1);
/// How long the load generator waits for every node to be connected before it gives up.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long each child gets to stop after SIGTERM before it is killed.
pub const CHILD_STOP_TIMEOUT: Duration = Duration::from_secs(3);
/// Pause of a load worker after a failed RPC, so a lost peer does not turn it into a busy loop.
pub const WORKER_ERROR_BACKOFF: Duration = Duration::from_millis(50);
/// Time the workers get to finish their last RPC when the demo stops.
pub const WORKER_STOP_GRACE: Duration = Duration::from_millis(500);

/// glommio preemption interval of the load generator's executor, the same as the shard runtime's
/// (engine::shard). It also bounds how long the executor can sit parked before noticing input: a
/// QUIC RPC currently takes about one such interval (glommio's default is 100 ms).
pub const LOAD_PREEMPT_INTERVAL: Duration = Duration::from_millis(10);

/// Bounds of the demo's own options.
pub const DEMO_NODES_MAX: usize = 16;
pub const DEMO_CONCURRENCY_MAX: usize = 1024;

/// What `icn demo` was asked to do.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    pub nodes: usize,
    /// Stop after this many status lines; run until Ctrl-C when None.
    pub seconds: Option<u64>,
    pub transport: TransportKind,
    pub message_bytes: usize,
    /// Requests kept in flight to each node.
    pub concurrency: usize,
    /// First port of the registry; found automatically when None.
    pub base_port: Option<u16>,
    /// The tuning profile for the nodes and the load generator; defaults plus unpinned cores
    /// when None (several processes share the machine's cores).
    pub tuning_profile: Option<PathBuf>,
}

/// Why the demo failed.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Setup(String),
    #[error("{0}")]
    Run(String),
}

pub(crate) fn setup<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> DemoError + '_ {
    move |error| DemoError::Setup(format!("{what}: {error}"))
}

/// A first port such that `nodes × PORTS_PER_NODE` ports from it are free on 127.0.0.1 (TCP and
/// UDP) right now. Another process may still take one before the node binds; the node then fails
/// with an error naming the address.
pub fn free_base_port(nodes: usize) -> Option<u16> {
    let span = nodes.checked_mul(PORTS_PER_NODE)?;
    let range = usize::from(AUTO_PORT_LAST - AUTO_PORT_FIRST);
    if span == 0 || span > range {
        return None;
    }
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as usize)
        .unwrap_or(0)
        ^ (std::process::id() as usize).wrapping_mul(7919);
    let slots = range / span;
    (0..AUTO_PORT_ATTEMPTS_MAX).find_map(|attempt| {
        let slot = seed.wrapping_add(attempt.wrapping_mul(7)) % slots;
        let base = AUTO_PORT_FIRST + (slot * span) as u16;
        (0..span as u16)
            .all(|offset| port_is_free(base + offset))
            .then_some(base)
    })
}

fn port_is_free(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpListener::bind(addr).is_ok() && UdpSocket::bind(addr).is_ok()
}

/// A folder removed when dropped.
pub(crate) struct TempDir(pub(crate) PathBuf);

impl TempDir {
    pub(crate) fn create() -> Result<TempDir, DemoError> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!("icn-demo-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).map_err(setup("creating the demo folder"))?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Child node processes, stopped (SIGTERM, then SIGKILL) when dropped.
pub(crate) struct Children(pub(crate) Vec<Child>);

impl Children {
    /// The first child that has exited, with its status.
    pub(crate) fn exited(&mut self) -> Option<(usize, std::process::ExitStatus)> {
        self.0
            .iter_mut()
            .enumerate()
            .find_map(|(i, child)| child.try_wait().ok().flatten().map(|status| (i, status)))
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for child in &self.0 {
            // SAFETY: kill(2) on a pid we spawned and have not reaped; no memory is involved.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + CHILD_STOP_TIMEOUT;
        for child in &mut self.0 {
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

/// The demo's tuning: the given profile, or the defaults with unpinned cores (the nodes and the
/// load generator share this machine's cores; pinned, every process would sit on core 0).
pub(crate) fn demo_tuning_text(profile: Option<&Path>) -> Result<String, DemoError> {
    match profile {
        Some(path) => {
            Tuning::load(path).map_err(|e| DemoError::Usage(e.to_string()))?;
            std::fs::read_to_string(path).map_err(setup("reading the tuning profile"))
        }
        None => Ok("[engine]\npin_cores = false\n".into()),
    }
}

/// Runs the demo; `exe` is the `icn` binary that runs each node.
pub fn run_demo(options: &DemoOptions, exe: &Path, shutdown: Shutdown) -> Result<(), DemoError> {
    check_options(options)?;
    let dir = TempDir::create()?;
    let members = options.nodes + 1;
    let base_port = match options.base_port {
        Some(port) => port,
        None => free_base_port(members)
            .ok_or_else(|| DemoError::Setup("no free range of loopback ports found".into()))?,
    };
    let registry = Registry::create_local_subnet(&dir.0, members, base_port)
        .map_err(setup("creating the local registry"))?;
    let tuning_path = dir.0.join("tuning.toml");
    std::fs::write(
        &tuning_path,
        demo_tuning_text(options.tuning_profile.as_deref())?,
    )
    .map_err(setup("writing the tuning profile"))?;
    let tuning = Tuning::load(&tuning_path).map_err(|e| DemoError::Setup(e.to_string()))?;
    if options.message_bytes > tuning.rpc.message_bytes_max {
        return Err(DemoError::Usage(format!(
            "--message-bytes {} exceeds rpc.message_bytes_max ({})",
            options.message_bytes, tuning.rpc.message_bytes_max
        )));
    }

    println!(
        "icn demo: {} nodes over {} on 127.0.0.1 ports {}..{}, registry {}",
        options.nodes,
        options.transport.name(),
        base_port,
        base_port as usize + members * PORTS_PER_NODE - 1,
        dir.0.join("registry.toml").display()
    );
    let mut children = Children(Vec::with_capacity(options.nodes));
    for index in 0..options.nodes {
        children
            .0
            .push(spawn_node(exe, &dir.0, index, options.transport)?);
    }
    let client_dir = dir.0.join(format!("node-{}", options.nodes));
    let identity =
        Identity::load(&client_dir).map_err(setup("loading the load generator's identity"))?;
    let targets: Vec<NodeId> = registry.subnets()[0].nodes[..options.nodes]
        .iter()
        .map(|record| record.node_id)
        .collect();
    let load = LoadRun {
        options: options.clone(),
        tuning,
        identity,
        registry: std::sync::Arc::new(registry),
        targets,
        shutdown,
        children: RefCell::new(children),
    };
    let executor = LocalExecutorBuilder::new(Placement::Unbound)
        .name("icn-demo-load")
        .preempt_timer(LOAD_PREEMPT_INTERVAL)
        .io_memory(load.tuning.engine.io_memory_bytes)
        .make()
        .map_err(setup("starting the load generator's executor"))?;
    let result = executor.run(async {
        icn_engine::shard::spawn_wake_tick(icn_engine::config::wake_tick(&load.tuning.engine));
        load.run().await
    });
    drop(load);
    drop(dir);
    result
}

fn check_options(options: &DemoOptions) -> Result<(), DemoError> {
    if options.nodes == 0 || options.nodes > DEMO_NODES_MAX {
        return Err(DemoError::Usage(format!(
            "--nodes must be 1..={DEMO_NODES_MAX}, not {}",
            options.nodes
        )));
    }
    if options.concurrency == 0 || options.concurrency > DEMO_CONCURRENCY_MAX {
        return Err(DemoError::Usage(format!(
            "--concurrency must be 1..={DEMO_CONCURRENCY_MAX}, not {}",
            options.concurrency
        )));
    }
    if options.seconds == Some(0) {
        return Err(DemoError::Usage("--seconds must be at least 1".into()));
    }
    Ok(())
}

fn spawn_node(
    exe: &Path,
    dir: &Path,
    index: usize,
    transport: TransportKind,
) -> Result<Child, DemoError> {
    let config = NodeConfig {
        identity_dir: PathBuf::from(format!("node-{index}")),
        registry_path: PathBuf::from("registry.toml"),
        subnet_id: SubnetId(LOCAL_SUBNET.into()),
        transport,
        tuning_profile: Some(PathBuf::from("tuning.toml")),
        workload: None,
        state_dir: PathBuf::from(format!("node-{index}/state")),
        state: None,
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

/// Counters of the load, shared by the workers and the reporter.
struct LoadStats {
    bytes: Cell<u64>,
    rpcs: Cell<u64>,
    errors: Cell<u64>,
    last_error: RefCell<Option<RpcError>>,
    /// Latency of the current status interval, microseconds.
    interval: RefCell<Histogram<u64>>,
    /// Latency of the whole run, microseconds.
    total: RefCell<Histogram<u64>>,
}

impl LoadStats {
    fn new(tuning: &Tuning) -> Result<LoadStats, DemoError> {
        let config = MetricsConfig::from_tuning(&tuning.metrics);
        let histogram = || {
            Histogram::new_with_bounds(
                config.histogram_lowest_us,
                config.histogram_highest_us,
                config.histogram_significant_digits,
            )
            .map_err(|e| DemoError::Setup(format!("latency histogram: {e:?}")))
        };
        Ok(LoadStats {
            bytes: Cell::new(0),
            rpcs: Cell::new(0),
            errors: Cell::new(0),
            last_error: RefCell::new(None),
            interval: RefCell::new(histogram()?),
            total: RefCell::new(histogram()?),
        })
    }

    fn record(&self, bytes: usize, latency: Duration) {
        self.bytes.set(self.bytes.get() + bytes as u64);
        self.rpcs.set(self.rpcs.get() + 1);
        let us = latency.as_micros().max(1) as u64;
        self.interval.borrow_mut().saturating_record(us);
        self.total.borrow_mut().saturating_record(us);
    }

    fn fail(&self, error: RpcError) {
        self.errors.set(self.errors.get() + 1);
        *self.last_error.borrow_mut() = Some(error);
    }
}

struct LoadRun {
    options: DemoOptions,
    tuning: Tuning,
    identity: Identity,
    registry: std::sync::Arc<Registry>,
    targets: Vec<NodeId>,
    shutdown: Shutdown,
    children: RefCell<Children>,
}

impl LoadRun {
    async fn run(&self) -> Result<(), DemoError> {
        let transport = Rc::new(
            NodeTransport::start(
                self.options.transport,
                &self.identity,
                self.registry.clone(),
                &SubnetId(LOCAL_SUBNET.into()),
                &self.tuning,
                Router::new(),
                None,
            )
            .map_err(setup("starting the load generator's transport"))?,
        );
        let result = self.connect_and_load(&transport).await;
        transport.shutdown().await;
        result
    }

    async fn connect_and_load(&self, transport: &Rc<NodeTransport>) -> Result<(), DemoError> {
        self.wait_connected(transport).await?;
        if self.shutdown.is_triggered() {
            return Ok(());
        }
        println!(
            "connected to {} nodes; {} requests of {} bytes in flight to each on the sink route{}",
            self.targets.len(),
            self.options.concurrency,
            self.options.message_bytes,
            match self.options.seconds {
                Some(seconds) => format!(" for {seconds} s"),
                None => " (Ctrl-C stops)".into(),
            }
        );
        let stats = Rc::new(LoadStats::new(&self.tuning)?);
        let stop = Rc::new(Cell::new(false));
        let payload = Buf::from_vec(vec![0x5a; self.options.message_bytes]);
        let mut workers = Vec::new();
        for peer in &self.targets {
            for _ in 0..self.options.concurrency {
                let worker = load_worker(
                    transport.clone(),
                    *peer,
                    payload.clone(),
                    stats.clone(),
                    stop.clone(),
                );
                workers.push(glommio::spawn_local(worker));
            }
        }
        let outcome = self.report(transport, &stats).await;
        stop.set(true);
        let _ = glommio::timer::timeout(WORKER_STOP_GRACE, async {
            for worker in workers.drain(..) {
                worker.await;
            }
            Ok(())
        })
        .await;
        drop(workers);
        print_summary(&stats);
        outcome
    }

    /// Waits until every node is connected, a child exits, Ctrl-C, or [`CONNECT_TIMEOUT`].
    async fn wait_connected(&self, transport: &NodeTransport) -> Result<(), DemoError> {
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        loop {
            let connected = connected_targets(transport, &self.targets);
            if connected == self.targets.len() || self.shutdown.is_triggered() {
                return Ok(());
            }
            self.check_children()?;
            if Instant::now() >= deadline {
                return Err(DemoError::Run(format!(
                    "only {connected} of {} nodes connected within {} s",
                    self.targets.len(),
                    CONNECT_TIMEOUT.as_secs()
                )));
            }
            glommio::timer::sleep(Duration::from_millis(20)).await;
        }
    }

    fn check_children(&self) -> Result<(), DemoError> {
        match self.children.borrow_mut().exited() {
            Some((index, status)) => Err(DemoError::Run(format!(
                "node {index} exited ({status}) while the demo ran"
            ))),
            None => Ok(()),
        }
    }

    /// Prints a status line every [`STATUS_INTERVAL`] until `--seconds` lines or Ctrl-C.
    async fn report(&self, transport: &NodeTransport, stats: &LoadStats) -> Result<(), DemoError> {
        let started = Instant::now();
        let mut lines = 0u64;
        let (mut bytes_before, mut rpcs_before) = (0u64, 0u64);
        let mut tick = started;
        loop {
            tick += STATUS_INTERVAL;
            while Instant::now() < tick {
                if self.shutdown.is_triggered() {
                    return Ok(());
                }
                let left = tick.saturating_duration_since(Instant::now());
                glommio::timer::sleep(left.min(icn_engine::shard::SHUTDOWN_POLL_INTERVAL)).await;
            }
            self.check_children()?;
            lines += 1;
            let seconds = STATUS_INTERVAL.as_secs_f64();
            let (bytes, rpcs) = (stats.bytes.get(), stats.rpcs.get());
            let mut interval = stats.interval.borrow_mut();
            println!(
                "[{:>4}s] {:>9.1} MB/s {:>9.0} RPC/s   p50 {:>8}   p99 {:>8}   peers {}/{}   errors {}",
                lines,
                (bytes - bytes_before) as f64 / 1e6 / seconds,
                (rpcs - rpcs_before) as f64 / seconds,
                format_us(interval.value_at_quantile(0.5)),
                format_us(interval.value_at_quantile(0.99)),
                connected_targets(transport, &self.targets),
                self.targets.len(),
                stats.errors.get(),
            );
            interval.reset();
            (bytes_before, rpcs_before) = (bytes, rpcs);
            if self.options.seconds.is_some_and(|limit| lines >= limit) {
                return Ok(());
            }
        }
    }
}

fn connected_targets(transport: &NodeTransport, targets: &[NodeId]) -> usize {
    let peers = transport.peers();
    targets
        .iter()
        .filter(|target| peers.iter().any(|(peer, _)| peer == *target))
        .count()
}

/// Keeps one sink request in flight to `peer` until `stop`.
async fn load_worker(
    transport: Rc<NodeTransport>,
    peer: NodeId,
    payload: Buf,
    stats: Rc<LoadStats>,
    stop: Rc<Cell<bool>>,
) {
    let expected = (payload.len() as u64).to_le_bytes();
    while !stop.get() {
        let sent = Instant::now();
        let result = transport
            .rpc(peer, ROUTE_SINK, Priority::Normal, payload.clone())
            .await;
        match result {
            Ok(answer) if answer.len() == SINK_RESPONSE_BYTES && answer[..] == expected => {
                stats.record(payload.len(), sent.elapsed());
            }
            Ok(answer) => stats.fail(RpcError::PeerMisbehaved(format!(
                "sink answered {} bytes, not the request length",
                answer.len()
            ))),
            Err(error) => {
                stats.fail(error);
                glommio::timer::sleep(WORKER_ERROR_BACKOFF).await;
            }
        }
    }
}

fn format_us(us: u64) -> String {
    if us >= 1_000 {
        format!("{:.2} ms", us as f64 / 1_000.0)
    } else {
        format!("{us} µs")
    }
}

fn print_summary(stats: &LoadStats) {
    let total = stats.total.borrow();
    println!(
        "total: {:.1} MB in {} RPCs, p50 {}, p99 {}, errors {}{}",
        stats.bytes.get() as f64 / 1e6,
        stats.rpcs.get(),
        format_us(total.value_at_quantile(0.5)),
        format_us(total.value_at_quantile(0.99)),
        stats.errors.get(),
        match &*stats.last_error.borrow() {
            Some(error) => format!(" (last: {error})"),
            None => String::new(),
        }
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_base_port_finds_bindable_ranges() {
        let base = free_base_port(3).expect("some free range on loopback");
        assert!((AUTO_PORT_FIRST..AUTO_PORT_LAST).contains(&base));
        assert!(base as usize + 3 * PORTS_PER_NODE <= AUTO_PORT_LAST as usize);
        assert_eq!(free_base_port(0), None);
        assert_eq!(free_base_port(usize::MAX), None);
    }

    #[test]
    fn options_are_checked() {
        let good = DemoOptions {
            nodes: 2,
            seconds: None,
            transport: TransportKind::Quic,
            message_bytes: 1024,
            concurrency: 4,
            base_port: None,
            tuning_profile: None,
        };
        assert!(check_options(&good).is_ok());
        for bad in [
            DemoOptions {
                nodes: 0,
                ..good.clone()
            },
            DemoOptions {
                concurrency: 0,
                ..good.clone()
            },
            DemoOptions {
                seconds: Some(0),
                ..good.clone()
            },
        ] {
            assert!(matches!(check_options(&bad), Err(DemoError::Usage(_))));
        }
    }

    #[test]
    fn latencies_print_in_readable_units() {
        assert_eq!(format_us(850), "850 µs");
        assert_eq!(format_us(1_500), "1.50 ms");
    }
}
