//! Two network namespaces joined by a veth pair, for tests on an impaired link (root only).
//!
//! Names are unique per run (pid + random), and [`NetnsPair`]'s drop deletes the nft tables it
//! added and both namespaces, which removes the veth pair with them; it runs on failure too
//! (unwinding). A node enters a namespace on its own thread with [`enter_netns`] before creating
//! its executor, so its sockets live there while the test stays one process.

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::Command;

use icn_engine::shard::Shutdown;
use icn_shards::node::run_node;
use icn_shards::node_config::NodeConfig;
use icn_shards::subnet::scrape;

use crate::subnet::random_u64;

/// Tools the namespace tests need, with the package that provides them on Debian.
const TOOLS: [(&str, &str, &str); 3] = [
    ("ip", "-V", "iproute2"),
    ("tc", "-V", "iproute2"),
    ("nft", "--version", "nftables"),
];

/// Why these tests cannot run here, or Ok when they can.
pub fn prerequisites() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err("network namespace tests need root (CAP_NET_ADMIN)".into());
    }
    for (tool, version_flag, package) in TOOLS {
        let found = Command::new(tool)
            .arg(version_flag)
            .output()
            .is_ok_and(|out| out.status.success());
        if !found {
            return Err(format!(
                "`{tool}` is missing: install it with `apt-get install -y {package}`"
            ));
        }
    }
    Ok(())
}

/// True when running in CI (`CI=true`), where a test must not skip silently.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|value| value == "true" || value == "1")
}

/// Checks [`prerequisites`]: returns true when the test can run. Otherwise prints a SKIP notice
/// and returns false, or panics with the reason under CI.
pub fn can_run(test: &str) -> bool {
    match prerequisites() {
        Ok(()) => true,
        Err(reason) if in_ci() => panic!("{test}: cannot run under CI=true: {reason}"),
        Err(reason) => {
            println!("SKIP {test}: {reason} (set CI=true to make this a failure)");
            eprintln!("SKIP {test}: {reason}");
            false
        }
    }
}

/// Runs a command; Err carries the command line and its stderr.
pub fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let line = format!("{program} {}", args.join(" "));
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("`{line}` could not start: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "`{line}` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// One side of the pair.
#[derive(Clone, Debug)]
pub struct Side {
    pub netns: String,
    pub veth: String,
    pub addr: Ipv4Addr,
}

impl Side {
    /// Runs `program args` inside this side's namespace.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String, String> {
        exec_in(&self.netns, program, args)
    }
}

/// Two namespaces `a` and `b`, with `a.addr/24` and `b.addr/24` on the two ends of a veth pair.
pub struct NetnsPair {
    pub a: Side,
    pub b: Side,
    /// nft tables added through [`NetnsPair::add_loss`]: (side, table name).
    nft_tables: Vec<(Side, String)>,
    /// Namespaces created so far (all of them once `create` returns).
    created: Vec<String>,
}

impl NetnsPair {
    pub fn create() -> Result<NetnsPair, String> {
        let tag = format!("{:06x}", random_u64() & 0xff_ffff);
        let prefix = format!("icn-{}-{tag}", std::process::id());
        let side = |name: &str, last_octet: u8| Side {
            netns: format!("{prefix}-{name}"),
            // Interface names are at most 15 bytes.
            veth: format!("icn{tag}{name}"),
            addr: Ipv4Addr::new(10, 77, 0, last_octet),
        };
        let mut pair = NetnsPair {
            a: side("a", 1),
            b: side("b", 2),
            nft_tables: Vec::new(),
            created: Vec::new(),
        };
        // On error, `pair` drops here and removes whatever was created.
        pair.build()?;
        Ok(pair)
    }

    fn build(&mut self) -> Result<(), String> {
        for side in [self.a.clone(), self.b.clone()] {
            run("ip", &["netns", "add", &side.netns])?;
            self.created.push(side.netns.clone());
        }
        // Both ends are created inside their namespaces: nothing ever appears in ours.
        run(
            "ip",
            &[
                "link",
                "add",
                &self.a.veth,
                "netns",
                &self.a.netns,
                "type",
                "veth",
                "peer",
                "name",
                &self.b.veth,
                "netns",
                &self.b.netns,
            ],
        )?;
        for side in [&self.a, &self.b] {
            let cidr = format!("{}/24", side.addr);
            run(
                "ip",
                &["-n", &side.netns, "addr", "add", &cidr, "dev", &side.veth],
            )?;
            run("ip", &["-n", &side.netns, "link", "set", &side.veth, "up"])?;
            run("ip", &["-n", &side.netns, "link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    /// Caps what `side` sends on its veth at `rate` (tc syntax, e.g. "50mbit") with a token
    /// bucket filter.
    pub fn add_rate_cap(&self, side: &Side, rate: &str) -> Result<(), String> {
        add_rate_cap(&side.netns, &side.veth, rate)
    }

    /// Makes `side` segment its GSO batches into single packets before they leave its veth
    /// (`gso_max_segs 1`), so the other side sees, and can drop, packets one by one. The
    /// application still sends with UDP GSO; only the device refuses super-packets.
    pub fn segment_before_sending(&self, side: &Side) -> Result<(), String> {
        segment_before_sending(&side.netns, &side.veth)
    }

    /// Drops one in `one_in` TCP and UDP packets arriving at `side` on its veth, at random (nft
    /// `numgen random` in the prerouting hook), with a counter read by
    /// [`NetnsPair::dropped_packets`].
    ///
    /// The drop is on arrival rather than in the sender's output hook: a packet dropped in the
    /// output hook fails the sender's `sendmsg` with EPERM (a local firewall, not a lossy link),
    /// and it would drop a whole GSO batch at once.
    pub fn add_ingress_loss(&mut self, side: &Side, one_in: u32) -> Result<(), String> {
        let table = format!("icn_loss_{}", random_u64() as u16);
        self.nft_tables.push((side.clone(), table.clone()));
        add_ingress_loss(&side.netns, &side.veth, &table, one_in)
    }

    /// Packets the loss rules of `side` dropped so far.
    pub fn dropped_packets(&self, side: &Side) -> Result<u64, String> {
        let mut total = 0;
        for (owner, table) in &self.nft_tables {
            if owner.netns != side.netns {
                continue;
            }
            total += table_dropped_packets(&side.netns, table)?;
        }
        Ok(total)
    }
}

/// Runs `program args` inside namespace `netns`.
pub fn exec_in(netns: &str, program: &str, args: &[&str]) -> Result<String, String> {
    let mut full = vec!["netns", "exec", netns, program];
    full.extend_from_slice(args);
    run("ip", &full)
}

/// Caps what `dev` in `netns` sends at `rate` (tc syntax, e.g. "20mbit") with a token bucket
/// filter: 64 KiB of burst, packets queued longer than 50 ms are dropped like on a real link.
pub fn add_rate_cap(netns: &str, dev: &str, rate: &str) -> Result<(), String> {
    run(
        "tc",
        &[
            "-n", netns, "qdisc", "add", "dev", dev, "root", "tbf", "rate", rate, "burst", "64kb",
            "latency", "50ms",
        ],
    )
    .map(drop)
}

/// Makes `dev` in `netns` segment GSO batches into single packets before they leave it
/// (`gso_max_segs 1`), so that loss rules downstream see, and drop, packets one by one.
pub fn segment_before_sending(netns: &str, dev: &str) -> Result<(), String> {
    run(
        "ip",
        &["-n", netns, "link", "set", "dev", dev, "gso_max_segs", "1"],
    )
    .map(drop)
}

/// Adds nft table `table` in `netns` that drops one in `one_in` TCP and UDP packets arriving on
/// `dev`, at random (`numgen random` in the prerouting hook), with a counter
/// ([`table_dropped_packets`]). Only TCP and UDP: control traffic (ICMP, IPv6 neighbour
/// discovery should a namespace still have IPv6) is neither lost nor counted, so the counter
/// holds exactly the transport packets that were dropped.
///
/// The drop is on arrival rather than in the sender's output hook: a packet dropped in the
/// output hook fails the sender's `sendmsg` with EPERM (a local firewall, not a lossy link),
/// and it would drop a whole GSO batch at once.
pub fn add_ingress_loss(netns: &str, dev: &str, table: &str, one_in: u32) -> Result<(), String> {
    let modulus = one_in.to_string();
    add_prerouting_table(netns, table, 0)?;
    exec_in(
        netns,
        "nft",
        &[
            "add", "rule", "inet", table, "in", "iifname", dev, "meta", "l4proto", "{", "tcp,",
            "udp", "}", "numgen", "random", "mod", &modulus, "0", "counter", "drop",
        ],
    )
    .map(drop)
}

/// Turns IPv6 off in `netns` before its interfaces exist: the mesh is IPv4 only, and IPv6's own
/// chatter (router and neighbour solicitations, MLD reports) would otherwise cross the loss and
/// partition rules and blur their counters.
fn disable_ipv6(netns: &str) -> Result<(), String> {
    for scope in ["all", "default"] {
        let key = format!("net.ipv6.conf.{scope}.disable_ipv6=1");
        exec_in(netns, "sysctl", &["-q", "-w", &key])?;
    }
    Ok(())
}

/// Adds nft table `table` with one chain `in` in the prerouting hook at `priority`.
fn add_prerouting_table(netns: &str, table: &str, priority: i32) -> Result<(), String> {
    exec_in(netns, "nft", &["add", "table", "inet", table])?;
    let chain = format!("{{ type filter hook prerouting priority {priority}; policy accept; }}");
    exec_in(netns, "nft", &["add", "chain", "inet", table, "in", &chain]).map(drop)
}

/// Packets counted by the first counter of nft table `table` in `netns`.
pub fn table_dropped_packets(netns: &str, table: &str) -> Result<u64, String> {
    let listing = exec_in(netns, "nft", &["list", "table", "inet", table])?;
    parse_counter_packets(&listing)
        .ok_or_else(|| format!("no counter in nft table {table}: {listing}"))
}

/// The packet count of the first `counter packets N bytes M` in an nft listing.
fn parse_counter_packets(listing: &str) -> Option<u64> {
    let mut words = listing.split_whitespace();
    while let Some(word) = words.next() {
        if word == "packets" {
            return words.next()?.parse().ok();
        }
    }
    None
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        for (side, table) in self.nft_tables.drain(..) {
            if let Err(error) = side.exec("nft", &["delete", "table", "inet", &table]) {
                eprintln!("cleanup: {error}");
            }
        }
        // Deleting a namespace destroys the veth end inside it, and with it the pair.
        for netns in self.created.drain(..) {
            if let Err(error) = run("ip", &["netns", "del", &netns]) {
                eprintln!("cleanup: {error}");
            }
        }
    }
}

/// Nodes a [`NetnsMesh`] may have (addresses are 10.78.0.1..=254; the hub's ports are named
/// by index).
pub const MESH_NODES_MAX: usize = 64;
/// Name of each node's interface inside its own namespace (names are per namespace).
const MESH_NODE_DEV: &str = "mesh0";
/// Name of the bridge inside the hub namespace.
const MESH_BRIDGE: &str = "meshbr";
/// nft table of a node's random loss.
const LOSS_TABLE: &str = "icn_loss";
/// nft table of a node's partition rule; runs before the loss table so that a packet the
/// partition drops is counted there, not as random loss.
const PARTITION_TABLE: &str = "icn_partition";
const PARTITION_PRIORITY: i32 = -10;

/// One node of a [`NetnsMesh`]: its namespace, its interface there, its address.
#[derive(Clone, Debug)]
pub struct MeshNode {
    pub netns: String,
    pub dev: String,
    pub addr: Ipv4Addr,
}

/// `n` namespaces, each with one veth whose other end is a port of a bridge in a hub namespace:
/// a switch between all nodes, like a rack. Nothing is added to the caller's namespace.
///
/// Impairments are per node: a rate cap on what it sends ([`NetnsMesh::add_rate_cap`]), random
/// loss of what it receives ([`NetnsMesh::add_ingress_loss`]), and a partition of the nodes into
/// two sides ([`NetnsMesh::partition`], [`NetnsMesh::heal`]). Every veth segments GSO batches
/// before sending, so every impairment acts on single packets. Drop deletes every namespace
/// (with them the veths, the bridge and the nft tables), on panics too.
pub struct NetnsMesh {
    pub hub: String,
    pub nodes: Vec<MeshNode>,
    /// Namespaces created so far (all of them once `create` returns).
    created: Vec<String>,
    /// Nodes whose loss table exists.
    lossy: Vec<usize>,
    /// Nodes whose partition table exists (empty when healed).
    partitioned: Vec<usize>,
    /// Packets dropped by partitions already healed.
    healed_partition_dropped: u64,
}

impl NetnsMesh {
    pub fn create(n: usize) -> Result<NetnsMesh, String> {
        if !(2..=MESH_NODES_MAX).contains(&n) {
            return Err(format!("a mesh has 2..={MESH_NODES_MAX} nodes, not {n}"));
        }
        let tag = format!("{:06x}", random_u64() & 0xff_ffff);
        let prefix = format!("icn-{}-{tag}", std::process::id());
        let nodes = (0..n)
            .map(|index| MeshNode {
                netns: format!("{prefix}-n{index}"),
                dev: MESH_NODE_DEV.to_string(),
                addr: Ipv4Addr::new(10, 78, 0, index as u8 + 1),
            })
            .collect();
        let mut mesh = NetnsMesh {
            hub: format!("{prefix}-hub"),
            nodes,
            created: Vec::new(),
            lossy: Vec::new(),
            partitioned: Vec::new(),
            healed_partition_dropped: 0,
        };
        // On error, `mesh` drops here and removes whatever was created.
        mesh.build()?;
        Ok(mesh)
    }

    fn build(&mut self) -> Result<(), String> {
        let hub = self.hub.clone();
        run("ip", &["netns", "add", &hub])?;
        self.created.push(hub.clone());
        disable_ipv6(&hub)?;
        run("ip", &["-n", &hub, "link", "set", "lo", "up"])?;
        run(
            "ip",
            &["-n", &hub, "link", "add", MESH_BRIDGE, "type", "bridge"],
        )?;
        run("ip", &["-n", &hub, "link", "set", MESH_BRIDGE, "up"])?;
        for index in 0..self.nodes.len() {
            let node = self.nodes[index].clone();
            run("ip", &["netns", "add", &node.netns])?;
            self.created.push(node.netns.clone());
            disable_ipv6(&node.netns)?;
            self.attach(index, &node)?;
        }
        Ok(())
    }

    /// Connects `node` to the hub's bridge and gives it its address.
    fn attach(&self, index: usize, node: &MeshNode) -> Result<(), String> {
        let port = format!("port{index}");
        run(
            "ip",
            &[
                "link",
                "add",
                &port,
                "netns",
                &self.hub,
                "type",
                "veth",
                "peer",
                "name",
                &node.dev,
                "netns",
                &node.netns,
            ],
        )?;
        run(
            "ip",
            &["-n", &self.hub, "link", "set", &port, "master", MESH_BRIDGE],
        )?;
        run("ip", &["-n", &self.hub, "link", "set", &port, "up"])?;
        // The bridge forwards whatever the node sent; segmenting on both ends keeps it per packet.
        segment_before_sending(&self.hub, &port)?;
        segment_before_sending(&node.netns, &node.dev)?;
        let cidr = format!("{}/24", node.addr);
        run(
            "ip",
            &["-n", &node.netns, "addr", "add", &cidr, "dev", &node.dev],
        )?;
        run("ip", &["-n", &node.netns, "link", "set", &node.dev, "up"])?;
        run("ip", &["-n", &node.netns, "link", "set", "lo", "up"])?;
        disable_ipv6(&node.netns)
    }

    fn node(&self, index: usize) -> Result<&MeshNode, String> {
        self.nodes
            .get(index)
            .ok_or_else(|| format!("no node {index} in a mesh of {}", self.nodes.len()))
    }

    /// Caps what node `index` sends at `rate` (tc syntax, e.g. "20mbit").
    pub fn add_rate_cap(&self, index: usize, rate: &str) -> Result<(), String> {
        let node = self.node(index)?;
        add_rate_cap(&node.netns, &node.dev, rate)
    }

    /// Drops one in `one_in` TCP and UDP packets node `index` receives, at random.
    pub fn add_ingress_loss(&mut self, index: usize, one_in: u32) -> Result<(), String> {
        let node = self.node(index)?.clone();
        if self.lossy.contains(&index) {
            return Err(format!("node {index} already has a loss rule"));
        }
        add_ingress_loss(&node.netns, &node.dev, LOSS_TABLE, one_in)?;
        self.lossy.push(index);
        Ok(())
    }

    /// Packets the random loss of node `index` dropped so far (0 without a loss rule).
    pub fn loss_dropped_packets(&self, index: usize) -> Result<u64, String> {
        let node = self.node(index)?;
        if !self.lossy.contains(&index) {
            return Ok(0);
        }
        table_dropped_packets(&node.netns, LOSS_TABLE)
    }

    /// Cuts the nodes in `side` off from all others, both ways: every node drops what arrives
    /// from the other side. Nodes on the same side still reach each other.
    pub fn partition(&mut self, side: &[usize]) -> Result<(), String> {
        if !self.partitioned.is_empty() {
            return Err("already partitioned: heal first".into());
        }
        if side.is_empty() || side.len() >= self.nodes.len() {
            return Err(format!(
                "a partition side of {} nodes cuts nothing",
                side.len()
            ));
        }
        for &index in side {
            self.node(index)?;
        }
        let (inside, outside): (Vec<usize>, Vec<usize>) =
            (0..self.nodes.len()).partition(|index| side.contains(index));
        for (members, others) in [(&inside, &outside), (&outside, &inside)] {
            let others = self.address_set(others);
            for &index in members {
                self.partitioned.push(index);
                self.add_partition_rule(index, &others)?;
            }
        }
        Ok(())
    }

    /// An nft anonymous set of the nodes' addresses: `{ 10.78.0.1, 10.78.0.2 }`.
    fn address_set(&self, indices: &[usize]) -> String {
        let addrs: Vec<String> = indices
            .iter()
            .map(|&index| self.nodes[index].addr.to_string())
            .collect();
        format!("{{ {} }}", addrs.join(", "))
    }

    fn add_partition_rule(&self, index: usize, sources: &str) -> Result<(), String> {
        let node = &self.nodes[index];
        add_prerouting_table(&node.netns, PARTITION_TABLE, PARTITION_PRIORITY)?;
        exec_in(
            &node.netns,
            "nft",
            &[
                "add",
                "rule",
                "inet",
                PARTITION_TABLE,
                "in",
                "iifname",
                &node.dev,
                "ip",
                "saddr",
                sources,
                "counter",
                "drop",
            ],
        )
        .map(drop)
    }

    /// Removes the partition; returns the packets it dropped.
    pub fn heal(&mut self) -> Result<u64, String> {
        let dropped = self.current_partition_dropped();
        let mut first_error = None;
        for index in std::mem::take(&mut self.partitioned) {
            let node = &self.nodes[index];
            let deleted = exec_in(
                &node.netns,
                "nft",
                &["delete", "table", "inet", PARTITION_TABLE],
            );
            if let Err(error) = deleted {
                first_error.get_or_insert(error);
            }
        }
        self.healed_partition_dropped += dropped;
        first_error.map_or(Ok(dropped), Err)
    }

    /// Packets every partition so far dropped (the current one included).
    pub fn partition_dropped_packets(&self) -> u64 {
        self.healed_partition_dropped + self.current_partition_dropped()
    }

    fn current_partition_dropped(&self) -> u64 {
        // A table half-built by a failed `partition` may lack its rule: count what exists.
        self.partitioned
            .iter()
            .filter_map(|&index| {
                table_dropped_packets(&self.nodes[index].netns, PARTITION_TABLE).ok()
            })
            .sum()
    }

    /// The namespaces this mesh owns (hub first), for checks that they are gone.
    pub fn namespaces(&self) -> Vec<String> {
        let mut names = vec![self.hub.clone()];
        names.extend(self.nodes.iter().map(|node| node.netns.clone()));
        names
    }
}

impl Drop for NetnsMesh {
    fn drop(&mut self) {
        // A namespace takes its interfaces, the bridge and its nft tables with it.
        for netns in self.created.drain(..) {
            if let Err(error) = run("ip", &["netns", "del", &netns]) {
                eprintln!("cleanup: {error}");
            }
        }
    }
}

/// Moves the calling thread into network namespace `netns` (created by `ip netns add`). Sockets
/// the thread creates afterwards live there; other threads are not affected.
pub fn enter_netns(netns: &str) -> Result<(), String> {
    let path = format!("/run/netns/{netns}");
    let file = File::open(&path).map_err(|e| format!("open {path}: {e}"))?;
    // SAFETY: `file` is an open namespace file for the duration of the call; setns changes only
    // this thread's network namespace and touches no memory of ours.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(format!(
            "setns({path}): {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// `icn node`s running in mesh namespaces, one thread each: the thread enters its node's
/// namespace, then calls [`run_node`] (the code path of `icn node --config FILE`), so the shard
/// threads it spawns inherit the namespace. Dropping it stops every node and waits for its
/// thread; a node that failed fails the test (unless it is already panicking).
pub struct MeshNodes {
    shutdown: Shutdown,
    threads: Vec<(usize, std::thread::JoinHandle<Result<(), String>>)>,
    pub started: std::time::Instant,
}

impl MeshNodes {
    pub fn start(mesh_nodes: &[MeshNode], configs: Vec<NodeConfig>) -> MeshNodes {
        let shutdown = Shutdown::new();
        let started = std::time::Instant::now();
        let threads = mesh_nodes
            .iter()
            .zip(configs)
            .enumerate()
            .map(|(index, (node, config))| {
                let (netns, shutdown) = (node.netns.clone(), shutdown.clone());
                let thread = std::thread::spawn(move || {
                    enter_netns(&netns)?;
                    run_node(&config, shutdown).map_err(|e| e.to_string())
                });
                (index, thread)
            })
            .collect();
        MeshNodes {
            shutdown,
            threads,
            started,
        }
    }
}

impl Drop for MeshNodes {
    fn drop(&mut self) {
        self.shutdown.trigger();
        let mut failures = Vec::new();
        for (index, thread) in self.threads.drain(..) {
            match thread.join() {
                Ok(Ok(())) => {}
                Ok(Err(error)) => failures.push(format!("node {index}: {error}")),
                Err(_) => failures.push(format!("node {index}: its thread panicked")),
            }
        }
        if !failures.is_empty() && !std::thread::panicking() {
            panic!("nodes failed: {}", failures.join("; "));
        }
    }
}

/// `GET /metrics` of the node in `node`'s namespace, on its loopback at `port`, from a thread
/// inside that namespace: the exposition text, or None if it did not answer.
pub fn scrape_metrics_in(node: &MeshNode, port: u16) -> Option<String> {
    let netns = node.netns.clone();
    std::thread::spawn(move || {
        enter_netns(&netns).ok()?;
        scrape(std::net::SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
    })
    .join()
    .ok()
    .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_packets_are_parsed() {
        let listing = "table inet t {\n chain out {\n numgen random mod 10 0 counter packets 42 bytes 6300 drop\n }\n}";
        assert_eq!(parse_counter_packets(listing), Some(42));
        assert_eq!(parse_counter_packets("table inet t {}"), None);
    }

    /// Datagrams sent from node `from` to node `to` (one thread in each namespace) that arrive.
    fn udp_probe(mesh: &NetnsMesh, from: usize, to: usize, count: usize) -> usize {
        use std::net::UdpSocket;
        use std::sync::mpsc;
        use std::time::Duration;
        const PROBE_PORT: u16 = 4999;
        let (source, target) = (mesh.nodes[from].clone(), mesh.nodes[to].clone());
        let (bound_tx, bound_rx) = mpsc::channel();
        std::thread::scope(|scope| {
            let receiver = scope.spawn(move || {
                enter_netns(&target.netns).unwrap();
                let socket = UdpSocket::bind((target.addr, PROBE_PORT)).unwrap();
                socket
                    .set_read_timeout(Some(Duration::from_secs(2)))
                    .unwrap();
                bound_tx.send(()).unwrap();
                let mut buf = [0u8; 64];
                // Bounded: every datagram is read once, and a quiet 2 s ends the loop (long enough
                // that a sender stalled on a loaded machine does not end it early).
                (0..count)
                    .take_while(|_| socket.recv(&mut buf).is_ok())
                    .count()
            });
            bound_rx.recv().unwrap();
            scope.spawn(move || {
                enter_netns(&source.netns).unwrap();
                let socket = UdpSocket::bind((source.addr, 0)).unwrap();
                for sequence in 0..count {
                    socket
                        .send_to(&sequence.to_le_bytes(), (target.addr, PROBE_PORT))
                        .unwrap();
                    // Paced, so that no socket buffer overflows and every loss is nft's.
                    std::thread::sleep(Duration::from_micros(200));
                }
            });
            receiver.join().unwrap()
        })
    }

    #[test]
    fn mesh_partitions_and_heals() {
        if !can_run("netns::mesh_partitions_and_heals") {
            return;
        }
        let mut mesh = NetnsMesh::create(3).unwrap();
        assert_eq!(udp_probe(&mesh, 0, 1, 20), 20, "a clean link loses nothing");
        mesh.partition(&[0]).unwrap();
        assert_eq!(udp_probe(&mesh, 0, 1, 20), 0, "0 is cut off from 1");
        assert_eq!(udp_probe(&mesh, 2, 0, 20), 0, "and 2 from 0");
        assert_eq!(udp_probe(&mesh, 1, 2, 20), 20, "1 and 2 share a side");
        assert_eq!(mesh.partition_dropped_packets(), 40);
        assert_eq!(mesh.heal().unwrap(), 40);
        assert_eq!(udp_probe(&mesh, 0, 1, 20), 20, "healed");
        assert_eq!(mesh.partition_dropped_packets(), 40);
    }

    #[test]
    fn mesh_loss_drops_and_counts_single_packets() {
        if !can_run("netns::mesh_loss_drops_and_counts_single_packets") {
            return;
        }
        let mut mesh = NetnsMesh::create(2).unwrap();
        mesh.add_ingress_loss(1, 2).unwrap();
        let sent = 200;
        let arrived = udp_probe(&mesh, 0, 1, sent);
        let dropped = mesh.loss_dropped_packets(1).unwrap();
        assert_eq!(
            arrived as u64 + dropped,
            sent as u64,
            "every packet is accounted for"
        );
        assert!(
            (40..=160).contains(&dropped),
            "1 in 2 of 200 dropped, not {dropped}"
        );
        assert_eq!(mesh.loss_dropped_packets(0).unwrap(), 0);
    }

    #[test]
    fn mesh_namespaces_are_removed_when_a_test_panics() {
        if !can_run("netns::mesh_namespaces_are_removed_when_a_test_panics") {
            return;
        }
        let mut mesh = NetnsMesh::create(3).unwrap();
        mesh.add_ingress_loss(0, 10).unwrap();
        mesh.partition(&[2]).unwrap();
        let names = mesh.namespaces();
        let listing = run("ip", &["netns", "list"]).unwrap();
        assert!(names.iter().all(|name| listing.contains(name.as_str())));
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _mesh = mesh;
            panic!("a failing test body (expected)");
        }));
        assert!(unwound.is_err());
        let listing = run("ip", &["netns", "list"]).unwrap();
        for name in &names {
            assert!(
                !listing.contains(name.as_str()),
                "{name} survived: {listing}"
            );
        }
    }
}
