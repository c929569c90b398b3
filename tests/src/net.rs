//! N nodes of one transport behind one interface, and the drivers that run a scenario on them.
//!
//! A scenario is an `async fn(Rc<N>)` generic over [`TestNet`]; it reaches the nodes only through
//! the [`icn_engine::Transport`] trait plus what [`TestNet`] adds (ids, probes, restart, clock).
//! The drivers [`drive_quic`], [`drive_tcp`] and [`drive_memory`] build the nodes, wait until
//! every node lists every other as a peer, run the scenario under [`SCENARIO_TIME_MAX`], and
//! tear the nodes down.
//!
//! Where the transports legitimately differ:
//! - memory has no handshake and no sockets: nodes are connected the instant they join, node ids
//!   are drawn from the seed (so a run replays exactly), and time is virtual;
//! - a restart is `shutdown` + start on the same address for QUIC and TCP, and crash + restart
//!   for memory.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use icn_engine::registry::Registry;
use icn_engine::sim::{self, Sim, SimRng};
use icn_engine::tls::{self, SharedRegistry};
use icn_engine::transport::memory::{MemoryConfig, MemoryNetwork, MemoryTransport};
use icn_engine::transport::quic::{QuicConfig, QuicTransport};
use icn_engine::transport::tcp::{TcpConfig, TcpTransport};
use icn_engine::{NodeId, Router, Transport};

use crate::routes::{conformance_router, Probe};
use crate::runtime::Runtime;
use crate::subnet::LocalSubnet;

/// The longest one scenario may run (real or virtual time) before the driver fails it.
pub const SCENARIO_TIME_MAX: Duration = Duration::from_secs(30);
/// How long the drivers wait for every node to list every other as a peer.
pub const MESH_WAIT_MAX: Duration = Duration::from_secs(10);
/// How long a restart keeps retrying to bind the node's address while the old socket closes.
pub const REBIND_WAIT_MAX: Duration = Duration::from_secs(3);
/// Executor io memory: io_uring buffers are locked memory and the limit here is 8 MiB for all
/// executors of the process together.
pub const EXECUTOR_IO_MEMORY_BYTES: usize = 512 << 10;

/// Builds a node's router; called again when the node restarts.
pub type RouterFactory = Rc<dyn Fn(&Runtime, Rc<Probe>) -> Router>;

/// What to build.
#[derive(Clone)]
pub struct NetSpec {
    pub nodes: usize,
    /// Largest message every node sends and accepts.
    pub message_bytes_max: u64,
    pub router: RouterFactory,
}

impl NetSpec {
    /// `nodes` nodes serving [`conformance_router`] with a 16 MiB message limit.
    pub fn conformance(nodes: usize) -> NetSpec {
        NetSpec {
            nodes,
            message_bytes_max: 16 << 20,
            router: Rc::new(conformance_router),
        }
    }
}

/// N nodes of one transport, as a scenario sees them.
#[allow(async_fn_in_trait)]
pub trait TestNet {
    type Transport: Transport + 'static;

    /// "quic", "tcp" or "memory", for logs.
    fn kind(&self) -> &'static str;
    fn runtime(&self) -> &Runtime;
    fn len(&self) -> usize;
    fn id(&self, node: usize) -> NodeId;
    /// Node `node`'s current transport. Drop the handle before [`TestNet::restart`]ing the node.
    fn node(&self, node: usize) -> Rc<Self::Transport>;
    fn probe(&self, node: usize) -> Rc<Probe>;
    fn message_bytes_max(&self) -> u64;
    /// Stops node `node` and starts it again with the same identity, address and probe.
    async fn restart(&self, node: usize);

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Prints one line of what the test did, tagged with the transport.
    fn log(&self, line: &str) {
        println!("[{} t={:?}] {line}", self.kind(), self.runtime().now());
    }
}

/// True once every node lists every other node as a peer.
pub fn full_mesh<N: TestNet>(net: &N) -> bool {
    (0..net.len()).all(|i| {
        let peers = net.node(i).peers();
        (0..net.len())
            .filter(|j| *j != i)
            .all(|j| peers.iter().any(|(id, _)| *id == net.id(j)))
    })
}

fn probes(nodes: usize) -> Vec<Rc<Probe>> {
    (0..nodes).map(|_| Rc::default()).collect()
}

/// Settings for a QUIC node in tests: short reconnect backoff so restarts take milliseconds.
pub fn quic_config(listen_addr: SocketAddr, message_bytes_max: u64) -> QuicConfig {
    QuicConfig {
        listen_addr,
        message_bytes_max,
        reconnect_backoff_initial: Duration::from_millis(20),
        reconnect_backoff_max: Duration::from_millis(200),
        request_timeout: Duration::from_secs(20),
        ..QuicConfig::default()
    }
}

/// Settings for a TCP node in tests: short reconnect backoff so restarts take milliseconds.
pub fn tcp_config(message_bytes_max: u64) -> TcpConfig {
    TcpConfig {
        message_bytes_max,
        reconnect_backoff_min: Duration::from_millis(20),
        reconnect_backoff_max: Duration::from_millis(200),
        request_timeout: Duration::from_secs(20),
        ..TcpConfig::default()
    }
}

/// Starts node `node` of `subnet` as a QUIC endpoint on the current glommio executor, accepting
/// the peers of its subnet in `subnet`'s registry (the node's own view of it).
pub fn start_quic(
    subnet: &LocalSubnet,
    node: usize,
    config: QuicConfig,
    router: Router,
) -> Result<QuicTransport, String> {
    let registry = subnet.registry();
    let subnet_id = subnet.subnet_id();
    let shared: SharedRegistry = Arc::new(RwLock::new(registry.clone()));
    let verifier = tls::registry_verifier(shared, subnet_id.clone());
    let identity = subnet.identity(node);
    let server = tls::server_context_builder(identity, verifier.clone())
        .map_err(|e| format!("server TLS context: {e}"))?;
    let client = tls::client_context_builder(identity, verifier)
        .map_err(|e| format!("client TLS context: {e}"))?;
    let allowed = peer_addrs(registry, subnet, node, |r| r.quic_addr);
    QuicTransport::start(identity.node_id(), server, client, config, router, allowed)
        .map_err(|e| e.to_string())
}

fn peer_addrs(
    registry: &Registry,
    subnet: &LocalSubnet,
    node: usize,
    addr: impl Fn(&icn_engine::registry::NodeRecord) -> SocketAddr,
) -> HashMap<NodeId, SocketAddr> {
    registry
        .nodes(&subnet.subnet_id())
        .iter()
        .filter(|record| record.node_id != subnet.id(node))
        .map(|record| (record.node_id, addr(record)))
        .collect()
}

/// QUIC nodes on loopback, one glommio executor.
pub struct QuicNet {
    runtime: Runtime,
    subnet: LocalSubnet,
    spec: NetSpec,
    probes: Vec<Rc<Probe>>,
    nodes: RefCell<Vec<Option<Rc<QuicTransport>>>>,
}

impl QuicNet {
    /// Starts every node of `subnet`; must run on a glommio executor.
    pub fn start(runtime: Runtime, subnet: LocalSubnet, spec: NetSpec) -> QuicNet {
        let probes = probes(subnet.len());
        let net = QuicNet {
            runtime,
            subnet,
            spec,
            probes,
            nodes: RefCell::default(),
        };
        let nodes = (0..net.subnet.len())
            .map(|i| {
                Some(Rc::new(
                    net.start_node(i)
                        .unwrap_or_else(|e| panic!("node {i}: {e}")),
                ))
            })
            .collect();
        *net.nodes.borrow_mut() = nodes;
        net
    }

    fn start_node(&self, node: usize) -> Result<QuicTransport, String> {
        let router = (self.spec.router)(&self.runtime, self.probes[node].clone());
        let config = quic_config(self.subnet.quic_addr(node), self.spec.message_bytes_max);
        start_quic(&self.subnet, node, config, router)
    }

    pub fn subnet(&self) -> &LocalSubnet {
        &self.subnet
    }

    /// Closes every endpoint.
    pub async fn shutdown(&self) {
        let nodes: Vec<_> = self.nodes.borrow_mut().drain(..).flatten().collect();
        for node in nodes {
            node.shutdown().await;
        }
    }
}

impl TestNet for QuicNet {
    type Transport = QuicTransport;

    fn kind(&self) -> &'static str {
        "quic"
    }

    fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    fn len(&self) -> usize {
        self.subnet.len()
    }

    fn id(&self, node: usize) -> NodeId {
        self.subnet.id(node)
    }

    fn node(&self, node: usize) -> Rc<QuicTransport> {
        self.nodes.borrow()[node]
            .clone()
            .unwrap_or_else(|| panic!("node {node} is not running"))
    }

    fn probe(&self, node: usize) -> Rc<Probe> {
        self.probes[node].clone()
    }

    fn message_bytes_max(&self) -> u64 {
        self.spec.message_bytes_max
    }

    async fn restart(&self, node: usize) {
        let old = self.nodes.borrow_mut()[node]
            .take()
            .unwrap_or_else(|| panic!("node {node} is not running"));
        old.shutdown().await;
        assert_eq!(
            Rc::strong_count(&old),
            1,
            "the scenario still holds a handle to node {node} across its restart"
        );
        drop(old);
        let started = retry_start(&self.runtime, || self.start_node(node)).await;
        self.nodes.borrow_mut()[node] = Some(Rc::new(started));
    }
}

/// Starts a node, retrying while its old socket is still being released.
async fn retry_start<T>(runtime: &Runtime, mut start: impl FnMut() -> Result<T, String>) -> T {
    let deadline = runtime.now() + REBIND_WAIT_MAX;
    loop {
        match start() {
            Ok(started) => return started,
            Err(error) if runtime.now() >= deadline => {
                panic!("restart failed for {REBIND_WAIT_MAX:?}: {error}")
            }
            Err(_) => runtime.sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Starts node `node` of `subnet` as a TCP+TLS transport on the current glommio executor.
pub fn start_tcp(
    subnet: &LocalSubnet,
    node: usize,
    config: TcpConfig,
    router: Router,
) -> Result<TcpTransport, String> {
    TcpTransport::start(
        subnet.identity(node),
        subnet.registry().clone(),
        router,
        config,
    )
    .map_err(|e| e.to_string())
}

/// TCP+TLS nodes on loopback, one glommio executor.
pub struct TcpNet {
    runtime: Runtime,
    subnet: LocalSubnet,
    spec: NetSpec,
    probes: Vec<Rc<Probe>>,
    nodes: RefCell<Vec<Option<Rc<TcpTransport>>>>,
}

impl TcpNet {
    /// Starts every node of `subnet`; must run on a glommio executor.
    pub fn start(runtime: Runtime, subnet: LocalSubnet, spec: NetSpec) -> TcpNet {
        let probes = probes(subnet.len());
        let net = TcpNet {
            runtime,
            subnet,
            spec,
            probes,
            nodes: RefCell::default(),
        };
        let nodes = (0..net.subnet.len())
            .map(|i| {
                Some(Rc::new(
                    net.start_node(i)
                        .unwrap_or_else(|e| panic!("node {i}: {e}")),
                ))
            })
            .collect();
        *net.nodes.borrow_mut() = nodes;
        net
    }

    fn start_node(&self, node: usize) -> Result<TcpTransport, String> {
        let router = (self.spec.router)(&self.runtime, self.probes[node].clone());
        start_tcp(
            &self.subnet,
            node,
            tcp_config(self.spec.message_bytes_max),
            router,
        )
    }

    pub fn subnet(&self) -> &LocalSubnet {
        &self.subnet
    }

    /// Closes every transport.
    pub async fn shutdown(&self) {
        let nodes: Vec<_> = self.nodes.borrow_mut().drain(..).flatten().collect();
        for node in nodes {
            node.shutdown().await;
        }
    }
}

impl TestNet for TcpNet {
    type Transport = TcpTransport;

    fn kind(&self) -> &'static str {
        "tcp"
    }

    fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    fn len(&self) -> usize {
        self.subnet.len()
    }

    fn id(&self, node: usize) -> NodeId {
        self.subnet.id(node)
    }

    fn node(&self, node: usize) -> Rc<TcpTransport> {
        self.nodes.borrow()[node]
            .clone()
            .unwrap_or_else(|| panic!("node {node} is not running"))
    }

    fn probe(&self, node: usize) -> Rc<Probe> {
        self.probes[node].clone()
    }

    fn message_bytes_max(&self) -> u64 {
        self.spec.message_bytes_max
    }

    async fn restart(&self, node: usize) {
        let old = self.nodes.borrow_mut()[node]
            .take()
            .unwrap_or_else(|| panic!("node {node} is not running"));
        old.shutdown().await;
        assert_eq!(
            Rc::strong_count(&old),
            1,
            "the scenario still holds a handle to node {node} across its restart"
        );
        drop(old);
        // `shutdown` released the address: the new node binds it at once, no retry.
        let started = self
            .start_node(node)
            .unwrap_or_else(|e| panic!("restarting node {node}: {e}"));
        self.nodes.borrow_mut()[node] = Some(Rc::new(started));
    }
}

/// Memory-transport nodes under the simulator.
pub struct MemoryNet {
    runtime: Runtime,
    network: MemoryNetwork,
    ids: Vec<NodeId>,
    spec: NetSpec,
    probes: Vec<Rc<Probe>>,
    nodes: RefCell<Vec<Rc<MemoryTransport>>>,
}

impl MemoryNet {
    /// Joins `spec.nodes` nodes to a new network on `sim`. Node ids come from the seed, not from
    /// keys: the memory transport authenticates nobody, and seeded ids keep a run replayable.
    pub fn new(sim: &Sim, spec: NetSpec) -> MemoryNet {
        let runtime = Runtime::Sim(sim.handle());
        let config = MemoryConfig {
            message_bytes_max: spec.message_bytes_max,
            ..MemoryConfig::default()
        };
        let network = MemoryNetwork::new(sim, config);
        let mut rng = SimRng::new(sim.seed() ^ NODE_ID_SEED_SALT);
        let ids: Vec<NodeId> = (0..spec.nodes).map(|_| seeded_node_id(&mut rng)).collect();
        let probes = probes(spec.nodes);
        let nodes = ids
            .iter()
            .zip(&probes)
            .map(|(id, probe)| Rc::new(network.join(*id, (spec.router)(&runtime, probe.clone()))))
            .collect();
        MemoryNet {
            runtime,
            network,
            ids,
            spec,
            probes,
            nodes: RefCell::new(nodes),
        }
    }

    pub fn network(&self) -> &MemoryNetwork {
        &self.network
    }
}

/// Keeps the node-id stream apart from the simulation's own draws from the same seed.
const NODE_ID_SEED_SALT: u64 = 0x6e6f_6465_5f69_6473;

fn seeded_node_id(rng: &mut SimRng) -> NodeId {
    let mut bytes = [0u8; 32];
    for chunk in bytes.chunks_mut(8) {
        chunk.copy_from_slice(&rng.next_u64().to_le_bytes());
    }
    NodeId(bytes)
}

impl TestNet for MemoryNet {
    type Transport = MemoryTransport;

    fn kind(&self) -> &'static str {
        "memory"
    }

    fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    fn len(&self) -> usize {
        self.ids.len()
    }

    fn id(&self, node: usize) -> NodeId {
        self.ids[node]
    }

    fn node(&self, node: usize) -> Rc<MemoryTransport> {
        self.nodes.borrow()[node].clone()
    }

    fn probe(&self, node: usize) -> Rc<Probe> {
        self.probes[node].clone()
    }

    fn message_bytes_max(&self) -> u64 {
        self.spec.message_bytes_max
    }

    async fn restart(&self, node: usize) {
        let id = self.ids[node];
        self.network.crash(id);
        let router = (self.spec.router)(&self.runtime, self.probes[node].clone());
        let restarted = self.network.restart(id, router);
        self.nodes.borrow_mut()[node] = Rc::new(restarted);
    }
}

/// The preempt timer icn's shard runtime gives its executors (engine/src/shard.rs). Besides
/// preemption it bounds how long a parked executor takes to notice a UDP datagram (see
/// [`executor`]), so tests use the production value rather than glommio's default (100 ms).
pub const SHARD_PREEMPT_TIMER: Duration = Duration::from_millis(10);

/// A glommio executor set up like one of icn's shards (io memory, preempt timer).
///
/// Known engine issue this works around only as far as production does: a parked executor
/// notices a datagram for the QUIC socket only when its preempt timer fires, so an idle QUIC
/// round trip costs about one preempt timer (100 ms with glommio's default, 10 ms here).
pub fn executor() -> glommio::LocalExecutor {
    glommio::LocalExecutorBuilder::default()
        .preempt_timer(SHARD_PREEMPT_TIMER)
        .io_memory(EXECUTOR_IO_MEMORY_BYTES)
        .make()
        .expect("glommio executor (is the memlock limit at least 8 MiB?)")
}

/// Waits for the full mesh, then runs `scenario` under [`SCENARIO_TIME_MAX`].
async fn run_scenario<N, F, Fut>(net: Rc<N>, scenario: F)
where
    N: TestNet,
    F: FnOnce(Rc<N>) -> Fut,
    Fut: Future<Output = ()>,
{
    let runtime = net.runtime().clone();
    let meshed = runtime.wait_until(MESH_WAIT_MAX, || full_mesh(&*net)).await;
    assert!(
        meshed,
        "[{}] nodes not connected within {MESH_WAIT_MAX:?}",
        net.kind()
    );
    net.log(&format!("{} nodes connected", net.len()));
    let finished = runtime
        .timeout(SCENARIO_TIME_MAX, scenario(net.clone()))
        .await;
    assert!(
        finished.is_some(),
        "[{}] scenario ran past {SCENARIO_TIME_MAX:?}",
        net.kind()
    );
    net.log("scenario passed");
}

/// Runs `scenario` on `spec.nodes` QUIC nodes on loopback, in one glommio executor.
pub fn drive_quic<F, Fut>(spec: NetSpec, scenario: F)
where
    F: FnOnce(Rc<QuicNet>) -> Fut,
    Fut: Future<Output = ()>,
{
    let subnet = LocalSubnet::create("quic", spec.nodes);
    println!(
        "[quic] {} nodes, registry in {}",
        subnet.len(),
        subnet.dir().display()
    );
    executor().run(async move {
        let net = Rc::new(QuicNet::start(Runtime::glommio(), subnet, spec));
        run_scenario(net.clone(), scenario).await;
        net.shutdown().await;
    });
}

/// Runs `scenario` on `spec.nodes` TCP+TLS nodes on loopback, in one glommio executor.
pub fn drive_tcp<F, Fut>(spec: NetSpec, scenario: F)
where
    F: FnOnce(Rc<TcpNet>) -> Fut,
    Fut: Future<Output = ()>,
{
    let subnet = LocalSubnet::create("tcp", spec.nodes);
    println!(
        "[tcp] {} nodes, registry in {}",
        subnet.len(),
        subnet.dir().display()
    );
    executor().run(async move {
        let net = Rc::new(TcpNet::start(Runtime::glommio(), subnet, spec));
        run_scenario(net.clone(), scenario).await;
        net.shutdown().await;
    });
}

/// Runs `scenario` on `spec.nodes` memory-transport nodes under the simulator, seeded from
/// `ICN_SIM_SEED` or `default_seed` (printed either way, to replay a failure).
pub fn drive_memory<F, Fut>(spec: NetSpec, default_seed: u64, scenario: F)
where
    F: FnOnce(Rc<MemoryNet>) -> Fut,
    Fut: Future<Output = ()>,
{
    let seed = sim::test_seed(default_seed);
    println!(
        "[memory] {} nodes, seed {seed} (replay: {}={seed})",
        spec.nodes,
        sim::SEED_ENV
    );
    let mut sim = Sim::new(seed);
    let net = Rc::new(MemoryNet::new(&sim, spec));
    let outcome = sim.block_on(run_scenario(net, scenario));
    if let Err(error) = outcome {
        panic!("[memory] simulation with seed {seed} failed: {error}");
    }
}
