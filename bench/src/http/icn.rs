//! The `icn` system: real `icn node` processes running the reference replica, started the way
//! an operator starts them (identities, a registry with the subnet key, one config per node),
//! on free loopback ports.
//!
//! The processes are started and stopped by `icn_shards::node_process` (feature `testing`), as
//! the integration tests' `tests/src/processes.rs` does; the subnet comes from
//! `replica::keys::create_local_subnet`. The executable is `ICN_BIN`, or `icn` beside the
//! running `icn-bench` (`cargo build --release -p icn-shards --bin icn`).

use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use icn_engine::registry::SubnetId;
use icn_shards::node_process::spawn_node;

use super::ServerProcesses;

/// How long every node has to answer `/api/v2/status` and then a query with 200 (the replica
/// answers queries once it has executed a height).
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const READY_POLL: Duration = Duration::from_millis(50);
/// Nodes share the machine's 2 cores with the generator; pinned, every node's shard would sit
/// on the first core. The report records the cores.
const TUNING_TOML: &str = "[engine]\npin_cores = false\n";

/// Environment variable with more tuning TOML for the nodes (whole sections, e.g.
/// `[http]\nverify_batch_max = 1`), for comparing a knob's settings; recorded in the report's
/// config.
pub const EXTRA_TUNING_ENV: &str = "ICN_BENCH_NODE_TUNING";

/// The nodes' tuning file: [`TUNING_TOML`] plus [`EXTRA_TUNING_ENV`]'s text.
pub fn node_tuning() -> String {
    let extra = std::env::var(EXTRA_TUNING_ENV).unwrap_or_default();
    // A table is defined once in TOML: an `[engine]` of the extra text gets our key.
    if extra.contains("[engine]\n") {
        format!("{}\n", extra.replacen("[engine]\n", TUNING_TOML, 1))
    } else {
        format!("{TUNING_TOML}{extra}\n")
    }
}

/// The `icn` executable to start.
pub fn icn_binary() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("ICN_BIN") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
    let path = exe.with_file_name("icn");
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "no icn executable at {}: run `cargo build --release -p icn-shards --bin icn` or set \
             ICN_BIN",
            path.display()
        ))
    }
}

/// Starts `nodes` nodes with the subnet key and returns once each answers a signed query.
pub fn start(nodes: usize) -> Result<ServerProcesses, String> {
    let exe = icn_binary()?;
    let dir = std::env::temp_dir().join(format!(
        "icn-bench-http-{}-{}",
        std::process::id(),
        icn_shards::http::testing::now_ns()
    ));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let subnet = SubnetId("local".into());
    let registry = icn_shards::replica::keys::create_local_subnet(
        &dir,
        nodes,
        free_base_port(nodes)?,
        &subnet,
    )
    .map_err(|e| format!("subnet in {}: {e}", dir.display()))?;
    let tuning = dir.join("tuning.toml");
    std::fs::write(&tuning, node_tuning()).map_err(|e| format!("tuning: {e}"))?;
    let mut processes = ServerProcesses::new(Vec::new(), Some(dir.clone()));
    for (index, record) in registry.nodes(&subnet).iter().enumerate() {
        let addr = record
            .http_addr
            .ok_or_else(|| format!("node {index} has no http_addr"))?;
        processes.addrs.push(addr);
        processes.children.push(
            spawn_node(&exe, &dir, index, &subnet, &tuning)
                .map_err(|e| format!("starting node {index} ({}): {e}", exe.display()))?,
        );
    }
    wait_ready(&mut processes, &dir)?;
    Ok(processes)
}

/// Waits until every node answers a signed query with 200 (status alone answers before the
/// replica has a state to query).
fn wait_ready(processes: &mut ServerProcesses, dir: &Path) -> Result<(), String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let probe = super::load::RequestPool::build(super::load::Endpoint::Query, 1);
    for index in 0..processes.addrs.len() {
        let addr = processes.addrs[index];
        loop {
            let answered = super::plain_exchange(addr, &probe.requests[0]).map(|a| a.status);
            if matches!(answered, Ok(200)) {
                break;
            }
            if let Ok(Some(status)) = processes.children[index].try_wait() {
                return Err(format!(
                    "node {index} exited ({status}); log in {}",
                    dir.display()
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "node {index} on {addr} answered no query within {READY_TIMEOUT:?}"
                ));
            }
            std::thread::sleep(READY_POLL);
        }
    }
    Ok(())
}

/// A block of `4 * nodes` free loopback ports (QUIC, TCP, HTTP, metrics per node).
fn free_base_port(nodes: usize) -> Result<u16, String> {
    let span = (4 * nodes) as u16;
    let seed = icn_shards::http::testing::now_ns();
    for attempt in 0..64u64 {
        let base = 20_000 + ((seed / 1000 + attempt * 7919) % 30_000) as u16;
        let free = (base..base + span).all(|port| {
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            TcpListener::bind(addr).is_ok() && UdpSocket::bind(addr).is_ok()
        });
        if free {
            return Ok(base);
        }
    }
    Err(format!("no block of {span} free loopback ports"))
}

/// Stage names of `icn_http_stage_us` the report keeps (`icn_stage_<name>_us`), in the order
/// a query passes them.
pub const STAGES: [&str; 10] = [
    "admission",
    "body",
    "verify_wait",
    "decode",
    "verify",
    "backend",
    "execute",
    "sign_wait",
    "sign",
    "encode",
];

/// Refusal reasons of `icn_http_rejections_total` the report keeps as
/// `icn_rejected_<reason>`.
pub const REJECTION_REASONS: [&str; 4] = ["queue_full", "queue_timeout", "congested", "pool_full"];

/// How queries were verified (`icn_http_verified_total{by}`), kept as `icn_verified_<by>`.
pub const VERIFIED_BY: [&str; 3] = ["single", "batch", "retried"];

/// The node's `/metrics` text.
pub fn read_metrics(addr: SocketAddr) -> Option<String> {
    let answer =
        super::plain_exchange(addr, b"GET /metrics HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n").ok()?;
    (answer.status == 200).then(|| String::from_utf8_lossy(&answer.body).into_owned())
}

/// The value of the sample `name{label="value"}` (or `name` without labels).
fn sample(metrics: &str, name: &str, label: Option<(&str, &str)>) -> Option<f64> {
    let key = match label {
        Some((label, value)) => format!("{name}{{{label}=\"{value}\"}} "),
        None => format!("{name} "),
    };
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(key.as_str()))
        .and_then(|value| value.trim().parse().ok())
}

/// Between two readings of `/metrics`: the average microseconds per answered query of each
/// stage, the refusals by reason, how queries were verified and the mean length of their
/// verification batches, and the query class's admission limit at the end.
pub fn metric_deltas(before: &str, after: &str) -> Vec<(String, f64)> {
    let delta = |name: &str, label: Option<(&str, &str)>| {
        sample(after, name, label).unwrap_or(0.0) - sample(before, name, label).unwrap_or(0.0)
    };
    let mut out = Vec::new();
    for stage in STAGES {
        let count = delta("icn_http_stage_us_count", Some(("stage", stage)));
        if count > 0.0 {
            let sum = delta("icn_http_stage_us_sum", Some(("stage", stage)));
            out.push((format!("icn_stage_{stage}_us"), sum / count));
        }
    }
    for reason in REJECTION_REASONS {
        let count = delta("icn_http_rejections_total", Some(("reason", reason)));
        out.push((format!("icn_rejected_{reason}"), count));
    }
    for by in VERIFIED_BY {
        let count = delta("icn_http_verified_total", Some(("by", by)));
        out.push((format!("icn_verified_{by}"), count));
    }
    let batches = delta("icn_http_verify_batch_len_count", None);
    if batches > 0.0 {
        let mean = delta("icn_http_verify_batch_len_sum", None) / batches;
        out.push(("icn_verify_batch_len_mean".into(), mean));
    }
    if let Some(limit) = sample(after, "icn_http_admission_limit", Some(("class", "query"))) {
        out.push(("icn_query_admission_limit".into(), limit));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_deltas_average_stages_and_count_refusals() {
        let before = "icn_http_stage_us_sum{stage=\"verify\"} 1000\n\
                      icn_http_stage_us_count{stage=\"verify\"} 10\n\
                      icn_http_rejections_total{reason=\"congested\"} 5\n";
        let after = "icn_http_stage_us_sum{stage=\"verify\"} 6000\n\
                     icn_http_stage_us_count{stage=\"verify\"} 110\n\
                     icn_http_stage_us_sum{stage=\"sign\"} 0\n\
                     icn_http_stage_us_count{stage=\"sign\"} 0\n\
                     icn_http_rejections_total{reason=\"congested\"} 25\n\
                     icn_http_admission_limit{class=\"query\"} 48\n\
                     icn_http_verified_total{by=\"batch\"} 40\n\
                     icn_http_verify_batch_len_sum 360\n\
                     icn_http_verify_batch_len_count 40\n";
        let deltas = metric_deltas(before, after);
        let get = |name: &str| deltas.iter().find(|(n, _)| n == name).map(|(_, v)| *v);
        assert_eq!(get("icn_stage_verify_us"), Some(50.0));
        assert_eq!(get("icn_stage_sign_us"), None);
        assert_eq!(get("icn_rejected_congested"), Some(20.0));
        assert_eq!(get("icn_rejected_queue_full"), Some(0.0));
        assert_eq!(get("icn_query_admission_limit"), Some(48.0));
        assert_eq!(get("icn_verified_batch"), Some(40.0));
        assert_eq!(get("icn_verified_retried"), Some(0.0));
        assert_eq!(get("icn_verify_batch_len_mean"), Some(9.0));
    }
}
