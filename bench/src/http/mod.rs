//! The `http` suite: the public HTTP API under query and update load, icn (`icn node`
//! processes running the reference replica) against an axum + tokio baseline doing the same
//! work per query.
//!
//! # Workload (docs/benchmarks.md, "The http suite")
//!
//! - Queries: the counter canister's `get` (`POST /api/v2/canister/<id>/query`), signed by an
//!   Ed25519 sender; a pool of pre-signed envelopes with distinct nonces is built before each
//!   run, so the generator does no signing while it measures.
//! - The peak is found per system with a closed loop ([`PEAK_FIND_CONNECTIONS`] connections,
//!   back to back); `query-peak` then sends at that rate open loop, `query-10x` at ten times it,
//!   `query-unloaded` at [`UNLOADED_QUERY_RATE`].
//! - Updates (icn only: the baseline has no consensus, so its update fields are left out):
//!   the counter's `increment` through the synchronous `/api/v3/.../call`, every request
//!   distinct; `update-unloaded` at [`UNLOADED_UPDATE_RATE`], `update-peak` at the closed-loop
//!   peak. In full mode updates go to a 4-node subnet, queries to a 1-node one; `--quick`
//!   uses one node for both.
//! - Every run is bounded in time ([`Durations`]) and every request by [`load::REQUEST_TIMEOUT`].
//!   Nothing is pinned (the 2-core machine is shared by the servers and the generator); the
//!   report records the cores.

pub mod axum_tokio;
pub mod icn;
pub mod load;
pub mod table;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Child;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::report::{PointReport, RunRecord};
use load::{Endpoint, LoadOutcome, LoadSpec, Pacing, RequestPool, Wire};

/// Every system name of the http suite (BENCH.md), in report order.
pub const SYSTEM_NAMES: [&str; 2] = ["icn", "axum-tokio"];

/// (system, baseline) pairs whose ratios the report prints.
pub const RATIO_PAIRS: [(&str, &str); 1] = [("icn", "axum-tokio")];

/// Repetitions of each point.
pub const REPETITIONS_QUICK: usize = 1;
pub const REPETITIONS_FULL: usize = 3;

/// Connections of the closed loop that finds a system's peak: half of icn's query concurrency
/// limit, enough to keep every core busy without queueing in the gate.
pub const PEAK_FIND_CONNECTIONS: usize = 128;
/// Connections of the open-loop runs at and above the peak: 32 loopback source addresses of
/// [`load::CONNECTIONS_PER_SOURCE_IP`] each. More than a query class admits and queues
/// (256 + 1,024), so at ten times the peak the servers' gates, not the generator, decide what
/// is refused.
pub const OPEN_LOOP_CONNECTIONS: usize = 2048;

/// Requests each connection of `query-10x` may have unanswered (HTTP/1.1 pipelining), so the
/// flood is offered at its rate however slowly the server answers: with one at a time the
/// generator's 2,048 connections, all waiting, had capped what it could send at connections
/// divided by the server's answer time.
pub const FLOOD_PIPELINE_DEPTH: usize = 16;
/// Connections of `query-10x-h2`, the same flood over HTTP/2 (h2c): each carries as many
/// streams at once as the server allows (icn: `http.h2_streams_per_connection_max`, 100), so
/// 64 connections hold up to 6,400 requests, and a refusal never waits behind another answer.
pub const H2_FLOOD_CONNECTIONS: usize = 64;
/// Connections of the unloaded runs.
pub const UNLOADED_CONNECTIONS: usize = 8;
/// Requests per second of `query-unloaded` and `update-unloaded`.
pub const UNLOADED_QUERY_RATE: f64 = 100.0;
pub const UNLOADED_UPDATE_RATE: f64 = 10.0;
/// Connections of the update closed loop (icn's call class admits 64 at once).
pub const UPDATE_CONNECTIONS: usize = icn_tuning::HTTP_CALL_CONCURRENCY_MAX_DEFAULT;
/// Distinct query envelopes per run (reused round robin: queries are not deduplicated).
pub const QUERY_POOL: usize = 4096;
/// The most distinct update envelopes one run signs beforehand.
pub const UPDATE_POOL_MAX: usize = 20_000;
/// Nodes of the subnet the update cases run against in full mode.
pub const UPDATE_NODES_FULL: usize = 4;

/// The suite's cases.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum HttpCase {
    QueryUnloaded,
    QueryPeak,
    Query10x,
    Query10xH2,
    UpdateUnloaded,
    UpdatePeak,
}

impl HttpCase {
    /// The suite's cases (BENCH.md's names), run when none are named.
    pub const ALL: [HttpCase; 5] = [
        HttpCase::QueryUnloaded,
        HttpCase::QueryPeak,
        HttpCase::Query10x,
        HttpCase::UpdateUnloaded,
        HttpCase::UpdatePeak,
    ];

    /// Cases beyond BENCH.md's set, run only when named (`--cases query-10x-h2`): the 10x
    /// flood over HTTP/2.
    pub const EXTRA: [HttpCase; 1] = [HttpCase::Query10xH2];

    pub fn name(self) -> &'static str {
        match self {
            HttpCase::QueryUnloaded => "query-unloaded",
            HttpCase::QueryPeak => "query-peak",
            HttpCase::Query10x => "query-10x",
            HttpCase::Query10xH2 => "query-10x-h2",
            HttpCase::UpdateUnloaded => "update-unloaded",
            HttpCase::UpdatePeak => "update-peak",
        }
    }

    /// Every case the suite knows: BENCH.md's, then the extra ones.
    fn known() -> impl Iterator<Item = HttpCase> {
        HttpCase::ALL.into_iter().chain(HttpCase::EXTRA)
    }

    pub fn parse(name: &str) -> Option<HttpCase> {
        HttpCase::known().find(|case| case.name() == name)
    }

    fn is_update(self) -> bool {
        matches!(self, HttpCase::UpdateUnloaded | HttpCase::UpdatePeak)
    }
}

/// How long each kind of run lasts.
#[derive(Clone, Copy, Debug)]
pub struct Durations {
    pub warmup: Duration,
    pub peak_find: Duration,
    pub run: Duration,
}

impl Durations {
    pub fn standard(quick: bool) -> Durations {
        if quick {
            Durations {
                warmup: Duration::from_millis(500),
                peak_find: Duration::from_secs(2),
                run: Duration::from_secs(3),
            }
        } else {
            Durations {
                warmup: Duration::from_secs(2),
                peak_find: Duration::from_secs(5),
                run: Duration::from_secs(10),
            }
        }
    }
}

/// Server processes of one system; stopped (SIGTERM, then SIGKILL) and their directory removed
/// on drop.
pub struct ServerProcesses {
    pub children: Vec<Child>,
    /// Each process's public HTTP address, in the same order.
    pub addrs: Vec<SocketAddr>,
    dir: Option<PathBuf>,
    /// The core the load generator runs on against these servers (None: unpinned).
    generator_core: Option<usize>,
}

/// Where the servers and the load generator run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pinning {
    /// Both wherever the scheduler puts them (they share every core).
    Shared,
    /// The servers on one core, the generator on another: the generator cannot take the
    /// servers' CPU, so overload cases measure the servers rather than the generator's backlog.
    Split {
        server_core: usize,
        generator_core: usize,
    },
}

impl Pinning {
    /// `--pin`: servers on core 0, generator on core 1 (the machine must have both).
    pub fn split() -> Result<Pinning, String> {
        match crate::host::Placement::detect() {
            crate::host::Placement {
                server_core: Some(server_core),
                client_core: Some(generator_core),
            } => Ok(Pinning::Split {
                server_core,
                generator_core,
            }),
            _ => Err("--pin needs cores 0 and 1, and this process may not use both".into()),
        }
    }

    pub fn describe(self) -> String {
        match self {
            Pinning::Shared => "none: servers and generator share every core (host.cores)".into(),
            Pinning::Split {
                server_core,
                generator_core,
            } => format!(
                "servers started on core {server_core} (each sizes itself to that one core) with \
                 every thread kept there, the load generator (one tokio worker) on core \
                 {generator_core}"
            ),
        }
    }
}

/// Starts servers with `start` and places them. With split pinning the calling thread sits on
/// the server core while they start, so each server process inherits that one core and sizes
/// itself to it, as under `taskset -c <core>`: an icn node runs one shard and one verification
/// thread, the baseline one tokio worker and one blocking thread. (Pinned only after they
/// started, both would size themselves to every core and crowd threads onto one.)
fn start_placed(
    pinning: Pinning,
    start: impl FnOnce() -> Result<ServerProcesses, String>,
) -> Result<ServerProcesses, String> {
    let Pinning::Split { server_core, .. } = pinning else {
        return start();
    };
    let saved = thread_affinity()?;
    let mut only = empty_cpu_set();
    // SAFETY: CPU_SET writes one bit of the set we own.
    unsafe { libc::CPU_SET(server_core, &mut only) };
    set_thread_affinity(&only)?;
    let started = start();
    let restored = set_thread_affinity(&saved);
    let mut servers = started?;
    restored?;
    servers.place(pinning)?;
    Ok(servers)
}

fn empty_cpu_set() -> libc::cpu_set_t {
    // SAFETY: an all-zero cpu_set_t is the valid empty set.
    unsafe { std::mem::zeroed() }
}

/// The calling thread's CPU affinity.
fn thread_affinity() -> Result<libc::cpu_set_t, String> {
    let mut set = empty_cpu_set();
    // SAFETY: sched_getaffinity writes at most size_of::<cpu_set_t>() bytes into our set.
    let result =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if result != 0 {
        return Err(format!(
            "reading this thread's CPU affinity: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(set)
}

fn set_thread_affinity(set: &libc::cpu_set_t) -> Result<(), String> {
    // SAFETY: sched_setaffinity only reads the set.
    let result = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set) };
    if result != 0 {
        return Err(format!(
            "setting this thread's CPU affinity: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Sets the affinity of every thread of `pid` to `core`.
fn pin_process(pid: u32, core: usize) -> Result<(), String> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map_err(|e| format!("threads of {pid}: {e}"))?;
    for task in tasks.flatten() {
        let Some(tid) = task
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<i32>().ok())
        else {
            continue;
        };
        // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET and sched_setaffinity only
        // read and write the set we own.
        let result = unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(core, &mut set);
            libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set)
        };
        if result != 0 {
            return Err(format!(
                "pinning thread {tid} of {pid} to core {core}: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

/// How long a server has to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(3);

impl ServerProcesses {
    pub fn new(children: Vec<Child>, dir: Option<PathBuf>) -> ServerProcesses {
        ServerProcesses {
            children,
            addrs: Vec::new(),
            dir,
            generator_core: None,
        }
    }

    /// With `pinning`, moves every thread of the servers onto its server core (threads they
    /// start later inherit it) and runs the generator on its own core.
    fn place(&mut self, pinning: Pinning) -> Result<(), String> {
        let Pinning::Split {
            server_core,
            generator_core,
        } = pinning
        else {
            return Ok(());
        };
        for pid in self.pids() {
            pin_process(pid, server_core)?;
        }
        self.generator_core = Some(generator_core);
        Ok(())
    }

    fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }
}

impl Drop for ServerProcesses {
    fn drop(&mut self) {
        icn_shards::node_process::stop_nodes(&mut self.children, STOP_TIMEOUT);
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// One blocking request on a fresh connection (probes and the baseline's stage counters).
pub(crate) fn plain_exchange(
    addr: SocketAddr,
    request: &[u8],
) -> std::io::Result<icn_shards::http::testing::Answer> {
    let timeout = Duration::from_secs(2);
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(request)?;
    let mut reader: &mut dyn Read = &mut stream;
    icn_shards::http::testing::read_answer(&mut reader)
}

/// Resets the peak resident set of `pid` (`/proc/<pid>/clear_refs`, value 5), so a run's
/// VmHWM is its own.
fn reset_peak_rss(pid: u32) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

/// VmHWM of `pid` in bytes.
fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vm_hwm(&status)
}

fn parse_vm_hwm(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// User + system CPU seconds of `pid` so far (/proc/<pid>/stat fields 14 and 15).
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1);
    Some((utime + stime) as f64 / ticks as f64)
}

fn total_cpu_seconds(pids: &[u32]) -> f64 {
    pids.iter().filter_map(|&pid| cpu_seconds(pid)).sum()
}

/// One measured load against `servers` (node 0's address), with the servers' peak memory, CPU
/// and (for the baseline) stage times.
fn measure(
    servers: &ServerProcesses,
    system: &str,
    pacing: Pacing,
    connections: usize,
    wire: Wire,
    duration: Duration,
    pool: RequestPool,
) -> RunRecord {
    let pids = servers.pids();
    let addr = servers.addrs[0];
    for &pid in &pids {
        reset_peak_rss(pid);
    }
    let stages_before = (system == "axum-tokio")
        .then(|| axum_tokio::read_stages(addr))
        .flatten();
    let metrics_before = (system == "icn").then(|| icn::read_metrics(addr)).flatten();
    let cpu_before = total_cpu_seconds(&pids);
    let spec = LoadSpec {
        addr,
        pacing,
        connections,
        duration,
        generator_core: servers.generator_core,
        wire,
    };
    let outcome = load::run(spec, Arc::new(pool));
    let cpu = total_cpu_seconds(&pids) - cpu_before;
    let mut record = record(&outcome, pacing);
    record.peak_rss_bytes = pids.iter().map(|&pid| peak_rss(pid)).sum();
    if outcome.elapsed > Duration::ZERO {
        record.extra.insert(
            "server_cpu_cores".into(),
            cpu / outcome.elapsed.as_secs_f64(),
        );
    }
    if let Some(ok_per_s) = record.ops_per_s.filter(|r| *r > 0.0) {
        // The servers' CPU per answered request: the efficiency figure that the generator
        // sharing the cores does not bend as much as throughput.
        let ok = ok_per_s * outcome.elapsed.as_secs_f64();
        record
            .extra
            .insert("server_cpu_us_per_ok".into(), cpu * 1e6 / ok);
    }
    if let (Some(before), Some(after)) = (metrics_before, icn::read_metrics(addr)) {
        record.extra.extend(icn::metric_deltas(&before, &after));
    }
    if let (Some(before), Some(after)) = (stages_before, axum_tokio::read_stages(addr)) {
        record
            .extra
            .extend(axum_tokio::stage_averages(&before, &after));
    }
    record
}

/// A load outcome as the report keeps it (BENCH.md: ops are 2xx answers, latency that of
/// admitted requests, plus `rejected_per_s` and `reject_latency_us`).
fn record(outcome: &LoadOutcome, pacing: Pacing) -> RunRecord {
    let seconds = outcome.elapsed.as_secs_f64();
    let per_second = |count: u64| (seconds > 0.0).then(|| count as f64 / seconds);
    let mut record = RunRecord {
        goodput_bytes_per_s: per_second(outcome.ok_bytes).filter(|_| outcome.ok > 0),
        ops_per_s: per_second(outcome.ok).filter(|_| outcome.ok > 0),
        latency_us: outcome.ok_latency.summary(),
        reject_latency_us: outcome.reject_latency.summary(),
        errors: outcome.errors + outcome.pool_exhausted,
        duration_s: Some(seconds),
        bytes: Some(outcome.ok_bytes),
        ops: Some(outcome.ok),
        first_error: outcome.first_error.clone().or_else(|| {
            (outcome.pool_exhausted > 0).then(|| "the pre-signed request pool ran out".into())
        }),
        ..RunRecord::default()
    };
    if let Some(rejected) = per_second(outcome.rejected) {
        record.extra.insert("rejected_per_s".into(), rejected);
    }
    if let Some(offered) = per_second(outcome.sent) {
        record.extra.insert("sent_per_s".into(), offered);
    }
    if let Pacing::Open { rate_per_s } = pacing {
        record.extra.insert("target_rate_per_s".into(), rate_per_s);
    }
    if let Some(due) = outcome.due {
        let not_sent = due.saturating_sub(outcome.sent + outcome.pool_exhausted);
        record.extra.insert("not_sent".into(), not_sent as f64);
    }
    record
}

/// Raises the soft open-files limit to the hard one: the generator holds
/// [`OPEN_LOOP_CONNECTIONS`] sockets, and the baseline child (which inherits the limit) as many,
/// more than a common default soft limit of 1,024.
fn raise_open_files_limit() {
    // SAFETY: rlimit is plain old data; getrlimit fills it and setrlimit reads it.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// Runs every selected case of every selected system; `progress` hears one line per run.
/// Returns the points and, per system, the peak rates the open-loop cases were derived from.
pub fn run_points(
    systems: &[&'static str],
    cases: &[HttpCase],
    repetitions: usize,
    quick: bool,
    pinning: Pinning,
    progress: &mut dyn FnMut(&str),
) -> (Vec<PointReport>, Value) {
    raise_open_files_limit();
    let durations = Durations::standard(quick);
    let mut points = Vec::new();
    let mut peaks = serde_json::Map::new();
    for &system in systems {
        let query_cases: Vec<HttpCase> = cases.iter().copied().filter(|c| !c.is_update()).collect();
        let update_cases: Vec<HttpCase> = if system == "icn" {
            cases.iter().copied().filter(|c| c.is_update()).collect()
        } else {
            Vec::new()
        };
        let mut query_server = None;
        if !query_cases.is_empty() || (quick && !update_cases.is_empty()) {
            let started = start_placed(pinning, || match system {
                "icn" => icn::start(1),
                _ => axum_tokio::start(),
            });
            match started {
                Ok(servers) => query_server = Some(servers),
                Err(error) => {
                    progress(&format!("{system}: could not start: {error}"));
                    for case in &query_cases {
                        points.push(failed_point(system, *case, &error, repetitions));
                    }
                }
            }
        }
        if let (Some(servers), false) = (&query_server, query_cases.is_empty()) {
            let pool = || RequestPool::build(Endpoint::Query, QUERY_POOL);
            let _ = measure(
                servers,
                system,
                Pacing::Closed,
                PEAK_FIND_CONNECTIONS,
                Wire::Http1 { pipeline_depth: 1 },
                durations.warmup,
                pool(),
            );
            let find = measure(
                servers,
                system,
                Pacing::Closed,
                PEAK_FIND_CONNECTIONS,
                Wire::Http1 { pipeline_depth: 1 },
                durations.peak_find,
                pool(),
            );
            let peak = find.ops_per_s.unwrap_or(0.0);
            progress(&format!(
                "{system} query peak (closed loop): {}",
                table::one_line(&find)
            ));
            peaks.insert(format!("{system}_query_peak_per_s"), json!(peak));
            for &case in &query_cases {
                let one = Wire::Http1 { pipeline_depth: 1 };
                let (rate, connections, wire) = match case {
                    HttpCase::QueryUnloaded => (UNLOADED_QUERY_RATE, UNLOADED_CONNECTIONS, one),
                    HttpCase::QueryPeak => (peak, OPEN_LOOP_CONNECTIONS, one),
                    HttpCase::Query10xH2 => (peak * 10.0, H2_FLOOD_CONNECTIONS, Wire::Http2),
                    _ => (
                        peak * 10.0,
                        OPEN_LOOP_CONNECTIONS,
                        Wire::Http1 {
                            pipeline_depth: FLOOD_PIPELINE_DEPTH,
                        },
                    ),
                };
                points.push(repeat(system, case, repetitions, progress, || {
                    if rate <= 0.0 {
                        return RunRecord::failed("no query peak was found".into());
                    }
                    measure(
                        servers,
                        system,
                        Pacing::Open { rate_per_s: rate },
                        connections,
                        wire,
                        durations.run,
                        pool(),
                    )
                }));
            }
        }
        if update_cases.is_empty() {
            continue;
        }
        let subnet = if quick {
            query_server
                .take()
                .ok_or_else(|| "the node did not start".to_string())
        } else {
            drop(query_server.take());
            start_placed(pinning, || icn::start(UPDATE_NODES_FULL))
        };
        let servers = match subnet {
            Ok(servers) => servers,
            Err(error) => {
                for case in &update_cases {
                    points.push(failed_point(system, *case, &error, repetitions));
                }
                continue;
            }
        };
        let updates =
            |count: usize| RequestPool::build(Endpoint::SyncCall, count.clamp(1, UPDATE_POOL_MAX));
        let mut peak = 0.0;
        if update_cases.contains(&HttpCase::UpdatePeak) {
            let find = measure(
                &servers,
                system,
                Pacing::Closed,
                UPDATE_CONNECTIONS,
                Wire::Http1 { pipeline_depth: 1 },
                durations.peak_find,
                updates(UPDATE_POOL_MAX),
            );
            peak = find.ops_per_s.unwrap_or(0.0);
            progress(&format!(
                "{system} update peak (closed loop): {}",
                table::one_line(&find)
            ));
            peaks.insert(format!("{system}_update_peak_per_s"), json!(peak));
        }
        for &case in &update_cases {
            let rate = if case == HttpCase::UpdateUnloaded {
                UNLOADED_UPDATE_RATE
            } else {
                peak
            };
            let connections = if case == HttpCase::UpdateUnloaded {
                UNLOADED_CONNECTIONS
            } else {
                UPDATE_CONNECTIONS * 2
            };
            points.push(repeat(system, case, repetitions, progress, || {
                if rate <= 0.0 {
                    return RunRecord::failed("no update peak was found".into());
                }
                let count = (rate * durations.run.as_secs_f64() * 1.2) as usize + 16;
                measure(
                    &servers,
                    system,
                    Pacing::Open { rate_per_s: rate },
                    connections,
                    Wire::Http1 { pipeline_depth: 1 },
                    durations.run,
                    updates(count),
                )
            }));
        }
    }
    (points, Value::Object(peaks))
}

fn repeat(
    system: &str,
    case: HttpCase,
    repetitions: usize,
    progress: &mut dyn FnMut(&str),
    mut run: impl FnMut() -> RunRecord,
) -> PointReport {
    let raw: Vec<RunRecord> = (0..repetitions)
        .map(|repetition| {
            let record = run();
            progress(&format!(
                "{system} {} run {}/{repetitions}: {}",
                case.name(),
                repetition + 1,
                table::one_line(&record)
            ));
            record
        })
        .collect();
    PointReport::from_runs(system, case.name(), raw)
}

fn failed_point(system: &str, case: HttpCase, error: &str, repetitions: usize) -> PointReport {
    let raw = (0..repetitions.max(1))
        .map(|_| RunRecord::failed(error.to_string()))
        .collect();
    PointReport::from_runs(system, case.name(), raw)
}

/// The requested systems in report order; an unknown name is an error.
pub fn select_systems(names: &[String]) -> Result<Vec<&'static str>, String> {
    for name in names {
        if !SYSTEM_NAMES.contains(&name.as_str()) {
            return Err(format!(
                "unknown http system {name}; known: {}",
                SYSTEM_NAMES.join(", ")
            ));
        }
    }
    Ok(SYSTEM_NAMES
        .into_iter()
        .filter(|system| names.is_empty() || names.iter().any(|name| name == system))
        .collect())
}

/// The requested cases in report order (all when none are named).
pub fn select_cases(names: &[String]) -> Result<Vec<HttpCase>, String> {
    if names.is_empty() {
        return Ok(HttpCase::ALL.to_vec());
    }
    let mut cases = names
        .iter()
        .map(|name| {
            HttpCase::parse(name).ok_or_else(|| {
                let known: Vec<&str> = HttpCase::known().map(HttpCase::name).collect();
                format!("unknown http case {name}; known: {}", known.join(", "))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    cases.sort();
    cases.dedup();
    Ok(cases)
}

/// The suite-wide knobs for the report's config.
pub fn suite_config(quick: bool, repetitions: usize, peaks: Value, pinning: Pinning) -> Value {
    let durations = Durations::standard(quick);
    json!({
        "build": if cfg!(debug_assertions) { "debug" } else { "release" },
        "repetitions": repetitions,
        "median": "run with the median goodput; errors summed over runs",
        "canister": load::target_canister().to_string(),
        "query": "counter get, POST /api/v2/canister/<id>/query, Ed25519 sender, pre-signed",
        "update": "counter increment, POST /api/v3/canister/<id>/call (synchronous), distinct request ids; icn only (the baseline has no consensus)",
        "query_nodes": 1,
        "update_nodes": if quick { 1 } else { UPDATE_NODES_FULL },
        "warmup_s": durations.warmup.as_secs_f64(),
        "peak_find_s": durations.peak_find.as_secs_f64(),
        "run_s": durations.run.as_secs_f64(),
        "peak_find_connections": PEAK_FIND_CONNECTIONS,
        "open_loop_connections": OPEN_LOOP_CONNECTIONS,
        "flood_pipeline_depth": FLOOD_PIPELINE_DEPTH,
        "h2_flood_connections": H2_FLOOD_CONNECTIONS,
        "unloaded_connections": UNLOADED_CONNECTIONS,
        "update_connections": UPDATE_CONNECTIONS,
        "unloaded_query_rate_per_s": UNLOADED_QUERY_RATE,
        "unloaded_update_rate_per_s": UNLOADED_UPDATE_RATE,
        "query_pool": QUERY_POOL,
        "peaks": peaks,
        "pinning": pinning.describe(),
        "latency": "2xx answers, from when the request was due (open loop) or sent (closed loop)",
        "peak_rss_bytes": "VmHWM of the server process(es), reset before each run, summed over nodes",
        "server_cpu_cores": "server processes' CPU seconds per second of the run",
        "server_cpu_us_per_ok": "server processes' CPU microseconds per 2xx answer (refusals' work included)",
        "axum_stage_us": "the baseline's own per-query stage times (Instant timers)",
        "icn_stage_us": "icn's icn_http_stage_us per answered query, from node 0's /metrics before and after the run (execute, sign_wait and sign are parts of backend)",
        "axum-tokio": {
            "layers": "HandleError -> load_shed -> buffer(query_queue_max) -> concurrency_limit(query_concurrency_max) -> timeout(backend_timeout_ms)",
            "query_concurrency_max": icn_tuning::HTTP_QUERY_CONCURRENCY_MAX_DEFAULT,
            "query_queue_max": icn_tuning::HTTP_QUERY_QUEUE_MAX_DEFAULT,
            "backend_timeout_ms": icn_tuning::HTTP_BACKEND_TIMEOUT_MS_DEFAULT,
            "cpu_work": "tokio spawn_blocking, max_blocking_threads = cores",
        },
        "icn": {
            "binary": icn::icn_binary().map(|p| p.display().to_string()).unwrap_or_else(|e| e),
            "tuning": icn::node_tuning(),
            "transport": "quic",
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cases_and_systems_follow_bench_md() {
        let names: Vec<&str> = HttpCase::ALL.iter().map(|c| c.name()).collect();
        assert_eq!(
            names,
            [
                "query-unloaded",
                "query-peak",
                "query-10x",
                "update-unloaded",
                "update-peak"
            ]
        );
        for name in names {
            assert_eq!(HttpCase::parse(name).map(HttpCase::name), Some(name));
        }
        assert_eq!(HttpCase::parse("query"), None);
        // The HTTP/2 flood runs only when named.
        assert_eq!(
            select_cases(&["query-10x-h2".into()]).unwrap(),
            [HttpCase::Query10xH2]
        );
        assert!(!select_cases(&[]).unwrap().contains(&HttpCase::Query10xH2));
        assert_eq!(
            select_cases(&["update-peak".into(), "query-peak".into()]).unwrap(),
            [HttpCase::QueryPeak, HttpCase::UpdatePeak]
        );
        assert!(select_cases(&["peers1".into()]).is_err());
        assert_eq!(select_systems(&[]).unwrap(), SYSTEM_NAMES);
        assert_eq!(
            select_systems(&["axum-tokio".into()]).unwrap(),
            ["axum-tokio"]
        );
        assert!(select_systems(&["quinn-tokio".into()]).is_err());
    }

    #[test]
    fn process_figures_parse() {
        assert_eq!(
            parse_vm_hwm("VmPeak:\t  100 kB\nVmHWM:\t    2048 kB\n"),
            Some(2048 * 1024)
        );
        assert_eq!(parse_vm_hwm("VmRSS: 1 kB\n"), None);
        let own = std::process::id();
        assert!(peak_rss(own).unwrap() > 1 << 20);
        assert!(cpu_seconds(own).is_some());
    }

    #[test]
    fn records_follow_the_overload_contract() {
        let mut outcome = LoadOutcome {
            elapsed: Duration::from_secs(2),
            sent: 30,
            ok: 10,
            ok_bytes: 1000,
            rejected: 20,
            ..LoadOutcome::default()
        };
        outcome.ok_latency.record(Duration::from_micros(100));
        outcome.reject_latency.record(Duration::from_micros(10));
        let run = record(&outcome, Pacing::Open { rate_per_s: 15.0 });
        assert_eq!(run.ops_per_s, Some(5.0));
        assert_eq!(run.extra["rejected_per_s"], 10.0);
        assert_eq!(run.extra["sent_per_s"], 15.0);
        assert!(run.reject_latency_us.is_some());
        let idle = record(
            &LoadOutcome {
                elapsed: Duration::from_secs(1),
                ..LoadOutcome::default()
            },
            Pacing::Closed,
        );
        assert_eq!((idle.ops_per_s, idle.latency_us), (None, None));
        assert_eq!(
            idle.extra["rejected_per_s"], 0.0,
            "none refused is a measured zero"
        );
    }
}
