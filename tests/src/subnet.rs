//! A local subnet on disk: identities and a registry in a temporary directory.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use icn_engine::identity::Identity;
use icn_engine::registry::{Registry, SubnetId};
use icn_engine::NodeId;

/// Random bits that differ per call and per process (std's hasher keys are seeded randomly).
pub fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_u32(std::process::id());
    hasher.finish()
}

/// A directory under `std::env::temp_dir()`, removed with everything in it on drop.
pub struct TestDir {
    path: PathBuf,
}

impl TestDir {
    /// Creates `<tmp>/icn-tests-<label>-<pid>-<random>`.
    pub fn new(label: &str) -> TestDir {
        let name = format!(
            "icn-tests-{label}-{}-{:08x}",
            std::process::id(),
            random_u64() as u32
        );
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        TestDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Attempts to find a free port block before giving up (each attempt probes `4 * nodes` ports).
const PORT_BLOCK_ATTEMPTS_MAX: usize = 200;
/// Lowest and highest first port of a block: above the registered services, below the usual
/// Linux ephemeral range (32768..) so that outgoing connections do not take our ports.
const PORT_BLOCK_LOW: u16 = 20_000;
const PORT_BLOCK_HIGH: u16 = 32_000;

/// A base port such that `base .. base + 4 * nodes` are all free on 127.0.0.1 for both TCP and
/// UDP right now (what [`Registry::create_local_subnet`] hands out). Another process may still
/// take one before the transport binds it; the window is short and the block random.
pub fn free_base_port(nodes: usize) -> u16 {
    let span = (4 * nodes) as u16;
    for _ in 0..PORT_BLOCK_ATTEMPTS_MAX {
        let base =
            PORT_BLOCK_LOW + (random_u64() % u64::from(PORT_BLOCK_HIGH - PORT_BLOCK_LOW)) as u16;
        if (base..base + span).all(port_is_free) {
            return base;
        }
    }
    panic!("no block of {span} free loopback ports after {PORT_BLOCK_ATTEMPTS_MAX} attempts");
}

fn port_is_free(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpListener::bind(addr).is_ok() && UdpSocket::bind(addr).is_ok()
}

/// `nodes` identities and a version-1 registry with one subnet, written to a temporary directory
/// by [`Registry::create_local_subnet`] and read back the way a node reads them.
pub struct LocalSubnet {
    /// Kept for its drop: the directory goes when the subnet does.
    dir: TestDir,
    registry: Arc<Registry>,
    identities: Vec<Identity>,
}

impl LocalSubnet {
    /// A subnet on free loopback ports.
    pub fn create(label: &str, nodes: usize) -> LocalSubnet {
        LocalSubnet::create_at(label, nodes, free_base_port(nodes))
    }

    /// A subnet whose ports start at `base_port` (for tests that rewrite the addresses anyway).
    pub fn create_at(label: &str, nodes: usize, base_port: u16) -> LocalSubnet {
        let dir = TestDir::new(label);
        let registry = Registry::create_local_subnet(dir.path(), nodes, base_port)
            .unwrap_or_else(|e| panic!("create_local_subnet in {}: {e}", dir.path().display()));
        LocalSubnet::load(dir, registry, nodes)
    }

    /// A subnet on free loopback ports whose registry lists a BLS subnet key and whose node
    /// folders hold its secret (what `icn subnet` makes): `icn node` runs the reference replica
    /// on each member.
    pub fn create_with_subnet_key(label: &str, nodes: usize) -> LocalSubnet {
        let dir = TestDir::new(label);
        let subnet = SubnetId("local".into());
        let registry = icn_shards::replica::keys::create_local_subnet(
            dir.path(),
            nodes,
            free_base_port(nodes),
            &subnet,
        )
        .unwrap_or_else(|e| panic!("create_local_subnet in {}: {e}", dir.path().display()));
        LocalSubnet::load(dir, registry, nodes)
    }

    fn load(dir: TestDir, registry: Registry, nodes: usize) -> LocalSubnet {
        let identities = (0..nodes)
            .map(|i| {
                Identity::load(&identity_dir(dir.path(), i))
                    .unwrap_or_else(|e| panic!("loading identity of node {i}: {e}"))
            })
            .collect();
        LocalSubnet {
            dir,
            registry: Arc::new(registry),
            identities,
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn len(&self) -> usize {
        self.identities.len()
    }

    pub fn is_empty(&self) -> bool {
        self.identities.is_empty()
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Replaces the registry (e.g. with addresses inside network namespaces).
    pub fn set_registry(&mut self, registry: Registry) {
        self.registry = Arc::new(registry);
    }

    pub fn identity(&self, node: usize) -> &Identity {
        &self.identities[node]
    }

    pub fn id(&self, node: usize) -> NodeId {
        self.identities[node].node_id()
    }

    pub fn subnet_id(&self) -> SubnetId {
        self.registry
            .subnet_of(self.id(0))
            .expect("node 0 is in the registry")
            .clone()
    }

    pub fn quic_addr(&self, node: usize) -> SocketAddr {
        self.record(node).quic_addr
    }

    pub fn tcp_addr(&self, node: usize) -> SocketAddr {
        self.record(node).tcp_addr
    }

    /// The public HTTP API address of `node`; local registries always give one.
    pub fn http_addr(&self, node: usize) -> SocketAddr {
        self.record(node)
            .http_addr
            .expect("local registries give every node an HTTP API address")
    }

    fn record(&self, node: usize) -> &icn_engine::registry::NodeRecord {
        self.registry
            .node(self.id(node))
            .expect("every identity is in the registry")
    }
}

/// Where [`Registry::create_local_subnet`] writes node `i`'s identity.
pub fn identity_dir(dir: &Path, node: usize) -> PathBuf {
    dir.join(format!("node-{node}"))
}

/// Copies a directory tree with every file hardlinked (stores of checkpoints, whose files are
/// never written in place, so N nodes can hold one state for the disk cost of one).
pub fn link_copy(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap_or_else(|e| panic!("{}: {e}", to.display()));
    let entries = std::fs::read_dir(from).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
    for entry in entries {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            link_copy(&entry.path(), &target);
        } else {
            std::fs::hard_link(entry.path(), &target)
                .unwrap_or_else(|e| panic!("{}: {e}", target.display()));
        }
    }
}
