//! A local subnet of real `icn node` processes on loopback, as an external client meets one.
//!
//! The other harnesses run nodes as threads of the test (or simulate them); a client test such
//! as the one with the IC's own agent must instead reach what an operator runs: the `icn`
//! executable, one process per node, started from a config file and serving the public HTTP API
//! in plain HTTP on its registry `http_addr`. [`ProcessSubnet::start`] writes the identities and
//! the registry ([`LocalSubnet`]), one config per node, starts the processes and returns once
//! every node's `/api/v2/status` answers 200 and says "healthy" (its replica certified a
//! height); dropping it stops them (SIGTERM, then SIGKILL) and removes the directory.
//!
//! The `icn` executable is not built by `cargo test -p icn-tests` (cargo builds a package's
//! binaries only for that package's own tests), so it is looked up next to the test binary, as
//! `cargo build --workspace --all-targets` (what CI runs first) or `cargo build -p icn-shards
//! --bin icn` leave it, or taken from `ICN_BIN`.

use std::fs::File;
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use icn_shards::http::testing::{read_answer, send_request};
use icn_shards::node_process::{log_path, spawn_node, stop_nodes};

use crate::subnet::LocalSubnet;

/// How long every node of a starting subnet has to answer its status endpoint (a node binds its
/// listeners within a few hundred milliseconds; the margin is for a loaded 2-core CI machine).
pub const NODES_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a node has to exit after SIGTERM before it is killed (`icn node` stops within 1 s).
pub const NODE_STOP_TIMEOUT: Duration = Duration::from_secs(3);
/// Between two status probes of a node that is not ready yet.
const READY_POLL_INTERVAL: Duration = Duration::from_millis(50);
/// One status probe's connect and read bound.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// The end of a node's log quoted when it failed to start.
const LOG_TAIL_BYTES: usize = 4 << 10;
/// How long `gdb` may take to print a stuck node's stacks.
const STACK_DUMP_TIMEOUT: Duration = Duration::from_secs(20);

/// The nodes share the machine's cores with each other and with the test; pinned, every node's
/// shard would sit on the first core.
const ENGINE_TABLE: &str = "[engine]\n";
const UNPINNED: &str = "pin_cores = false\n";

/// The tuning file of a test subnet: `extra` with `engine.pin_cores = false`. TOML allows a table
/// once, so when `extra` has an `[engine]` table of its own (a test choosing the shard count),
/// the line goes into that table instead of a second one.
fn tuning_toml(extra: &str) -> String {
    match extra.find(ENGINE_TABLE) {
        Some(at) if at == 0 || extra[..at].ends_with('\n') => {
            let (head, tail) = extra.split_at(at + ENGINE_TABLE.len());
            format!("{head}{UNPINNED}{tail}")
        }
        _ => format!("{ENGINE_TABLE}{UNPINNED}{extra}"),
    }
}

/// The `icn` executable: `ICN_BIN` if set, else `icn` in the target directory the running test
/// binary was built into (`target/<profile>/deps/<test>` -> `target/<profile>/icn`).
pub fn icn_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("ICN_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("the test binary's own path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binaries live in target/<profile>/deps");
    let path = profile_dir.join("icn");
    assert!(
        path.is_file(),
        "no `icn` executable at {}: build it with `cargo build -p icn-shards --bin icn` \
         (CI's `cargo build --workspace --all-targets` does) or set ICN_BIN",
        path.display()
    );
    path
}

/// A running subnet of `icn node` processes; stopped and removed on drop.
pub struct ProcessSubnet {
    /// Children in node order; emptied by drop before `subnet` (and its directory) goes.
    children: Vec<Child>,
    subnet: LocalSubnet,
}

impl ProcessSubnet {
    /// Starts `nodes` nodes over QUIC on free loopback ports, with the subnet's BLS key (so
    /// each runs the reference replica), and waits until each one's status endpoint answers 200
    /// "healthy". Panics, quoting the node's log, if one exits or stays silent for
    /// [`NODES_READY_TIMEOUT`].
    pub fn start(label: &str, nodes: usize) -> ProcessSubnet {
        ProcessSubnet::start_some(label, nodes, nodes, "")
    }

    /// A subnet of `members` registry members of which the first `started` start now; the
    /// others start with [`ProcessSubnet::start_next`]. `tuning` is every node's tuning profile
    /// (TOML tables, e.g. a faster `[replica]`); the harness adds `engine.pin_cores = false`, to
    /// the `[engine]` table when `tuning` has one.
    pub fn start_some(label: &str, members: usize, started: usize, tuning: &str) -> ProcessSubnet {
        assert!(started <= members);
        let subnet = LocalSubnet::create_with_subnet_key(label, members);
        let dir = subnet.dir();
        std::fs::write(dir.join("tuning.toml"), tuning_toml(tuning))
            .unwrap_or_else(|e| panic!("tuning: {e}"));
        let mut running = ProcessSubnet {
            children: Vec::with_capacity(members),
            subnet,
        };
        for _ in 0..started {
            running.spawn_next();
        }
        running.wait_ready();
        running
    }

    /// Starts the next registry member that is not running yet and waits until it answers.
    pub fn start_next(&mut self) {
        assert!(
            self.children.len() < self.subnet.len(),
            "every member runs already"
        );
        self.spawn_next();
        self.wait_ready();
    }

    fn spawn_next(&mut self) {
        let index = self.children.len();
        let dir = self.subnet.dir();
        let exe = icn_binary();
        let child = spawn_node(
            &exe,
            dir,
            index,
            &self.subnet.subnet_id(),
            &dir.join("tuning.toml"),
        )
        .unwrap_or_else(|e| panic!("starting {} node {index}: {e}", exe.display()));
        self.children.push(child);
    }

    pub fn subnet(&self) -> &LocalSubnet {
        &self.subnet
    }

    pub fn len(&self) -> usize {
        self.subnet.len()
    }

    pub fn is_empty(&self) -> bool {
        self.subnet.is_empty()
    }

    /// Node `node`'s public HTTP API address.
    pub fn http_addr(&self, node: usize) -> SocketAddr {
        self.subnet.http_addr(node)
    }

    /// Node `node`'s public HTTP API as an agent's URL (plain HTTP).
    pub fn url(&self, node: usize) -> String {
        format!("http://{}", self.http_addr(node))
    }

    /// Node `node`'s process id, for reading its memory use from `/proc/<pid>/status`.
    pub fn pid(&self, node: usize) -> u32 {
        self.children[node].id()
    }

    /// Where node `node`'s stdout and stderr go.
    pub fn log_path(&self, node: usize) -> PathBuf {
        log_path(self.subnet.dir(), node)
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + NODES_READY_TIMEOUT;
        for index in 0..self.children.len() {
            let addr = self.http_addr(index);
            loop {
                if status_answers(addr) {
                    break;
                }
                if let Ok(Some(status)) = self.children[index].try_wait() {
                    panic!(
                        "node {index} exited ({status}) before its status endpoint on {addr} \
                         answered; its log:\n{}",
                        log_tail(&self.log_path(index))
                    );
                }
                if Instant::now() >= deadline {
                    panic!(
                        "node {index}'s status endpoint on {addr} did not answer 200 \"healthy\" within \
                         {NODES_READY_TIMEOUT:?}; its log:\n{}\nits threads:\n{}",
                        log_tail(&self.log_path(index)),
                        thread_dump(self.children[index].id())
                    );
                }
                std::thread::sleep(READY_POLL_INTERVAL);
            }
        }
    }
}

impl Drop for ProcessSubnet {
    fn drop(&mut self) {
        stop_nodes(&mut self.children, NODE_STOP_TIMEOUT);
        self.children.clear();
    }
}

/// Writes node `index`'s config (no workload: the node serves the HTTP API and its replica)
/// and starts `icn node --config` on it, its output appended to its log file.
/// Whether `GET /api/v2/status` on `addr` answers 200 with `replica_health_status` "healthy"
/// within [`PROBE_TIMEOUT`]; a node that is not listening yet refuses the connection, which is a
/// plain "no".
fn status_answers(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT) else {
        return false;
    };
    if stream.set_read_timeout(Some(PROBE_TIMEOUT)).is_err() {
        return false;
    }
    send_request(&mut stream, "GET", "/api/v2/status", None);
    // The CBOR map holds the text "healthy" once the replica certified a height: before that,
    // read_state (which agents need for a query's node keys) has nothing to answer with.
    matches!(read_answer(&mut stream), Ok(answer)
        if answer.status == 200 && answer.body.windows(7).any(|w| w == b"healthy"))
}

/// The last [`LOG_TAIL_BYTES`] of a node's log, for a failure message.
fn log_tail(path: &Path) -> String {
    let mut text = Vec::new();
    if let Ok(mut file) = File::open(path) {
        let _ = file.read_to_end(&mut text);
    }
    let start = text.len().saturating_sub(LOG_TAIL_BYTES);
    String::from_utf8_lossy(&text[start..]).into_owned()
}

/// What process `pid`'s threads are doing, for the report on a node that never answered:
/// each thread's name, state and kernel wait channel from `/proc`, and, where `gdb` is
/// installed, every thread's stack (bounded by [`STACK_DUMP_TIMEOUT`]).
fn thread_dump(pid: u32) -> String {
    let mut out = String::new();
    let tasks = Path::new("/proc").join(pid.to_string()).join("task");
    match std::fs::read_dir(&tasks) {
        Ok(entries) => {
            let mut tids: Vec<_> = entries
                .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
                .collect();
            tids.sort();
            for tid in tids {
                let read = |name: &str| {
                    std::fs::read_to_string(tasks.join(&tid).join(name))
                        .map(|text| text.trim().to_string())
                        .unwrap_or_else(|e| format!("({e})"))
                };
                let stat = read("stat");
                // The state is the field after the parenthesised name.
                let state = stat
                    .rsplit_once(") ")
                    .and_then(|(_, rest)| rest.split(' ').next())
                    .unwrap_or("?")
                    .to_string();
                out.push_str(&format!(
                    "  {tid} {} state {state} wchan {}\n",
                    read("comm"),
                    read("wchan")
                ));
            }
        }
        Err(e) => out.push_str(&format!("  {}: {e}\n", tasks.display())),
    }
    let gdb = std::process::Command::new("timeout")
        .arg(STACK_DUMP_TIMEOUT.as_secs().to_string())
        .args([
            "gdb",
            "-p",
            &pid.to_string(),
            "-batch",
            "-ex",
            "thread apply all bt 30",
        ])
        .stdin(std::process::Stdio::null())
        .output();
    match gdb {
        Ok(output) if output.status.success() => {
            out.push_str(&String::from_utf8_lossy(&output.stdout));
        }
        Ok(output) => out.push_str(&format!(
            "  (no stacks: gdb {}; {})\n",
            output.status,
            String::from_utf8_lossy(&output.stderr)
                .lines()
                .last()
                .unwrap_or("")
        )),
        Err(e) => out.push_str(&format!("  (no stacks: {e})\n")),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::tuning_toml;

    #[test]
    fn the_unpinned_line_joins_an_engine_table_of_the_tests_own() {
        assert_eq!(
            tuning_toml("[replica]\nblock_interval_ms = 40\n"),
            "[engine]\npin_cores = false\n[replica]\nblock_interval_ms = 40\n"
        );
        assert_eq!(
            tuning_toml("[http]\nx = 1\n[engine]\nshard_count = 1\n"),
            "[http]\nx = 1\n[engine]\npin_cores = false\nshard_count = 1\n"
        );
        assert_eq!(
            tuning_toml("[engine]\nshard_count = 1\n"),
            "[engine]\npin_cores = false\nshard_count = 1\n"
        );
    }
}
