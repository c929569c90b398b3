//! Floods at ten times capacity against a real `icn node` running the reference replica (issue 5,
//! "abuse"): the node must shed the excess with quick 429s, answer every request it admits
//! correctly within a latency its limits bound, keep its memory and its ingress pool within their
//! configured bounds, and still serve normal traffic afterwards.
//!
//! `http_api` floods the same front over a scripted backend; here the requests go through
//! everything a node does for them: admission, signature verification on the pool, the
//! replica's query execution and node signature, or its ingress pool, a block, execution and
//! certification for a call. Each test starts a one-node subnet (the node is the whole subnet,
//! so every call it accepts is executed by it alone) on one shard with small `[http]` limits, so
//! that a flood from the test process saturates it even on a loaded 2-core machine.
//!
//! The flood is closed loop on many keep-alive connections (each sends its next requests as soon
//! as the last are answered; queries pipelined several deep, calls one at a time): a 429 is
//! cheap, so refused connections come back at once and the offered load is many times the
//! admitted rate. The test measures capacity first (the same
//! requests on as many connections as the node has slots) and asserts that the flood offered at
//! least ten times that. Latency bounds are generous multiples: this is a correctness test on a
//! shared machine, not a benchmark (`icn-bench http` measures).

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use candid::{Decode, Encode};
use icn_codecs::ic::{
    decode_certificate, decode_request_envelope, decode_value, IcLimits, Lookup, Principal, Value,
};
use icn_shards::http::testing::{
    call_envelope, fresh_expiry, request, request_bytes, Answer, TestKey,
};
use icn_shards::replica::canisters::counter_canister_id;
use icn_tests::processes::ProcessSubnet;

/// Query slots and queue places of the node's one shard: small, so a few connections fill them
/// (one slot: the capacity is one query at a time, which a flood of cheap refusals from this
/// process can exceed tenfold on two cores). With `http.delay_target_ms` on (the default) the
/// query class keeps no wait queue, so the queue places apply only with the control off.
const QUERY_CONCURRENCY: usize = 1;
const QUERY_QUEUE: usize = 4;
/// Call slots and queue places. A synchronous call holds its slot until its block is certified
/// (a block interval or two), so the call class is full almost at once.
const CALL_CONCURRENCY: usize = 8;
const CALL_QUEUE: usize = 4;
/// Ingress messages the pool holds: fewer than the call slots, so admitted calls also meet the
/// pool's bound (429 "the ingress pool is full") and the gauge is seen at its limit.
const INGRESS_POOL_MESSAGES: usize = 4;
/// The pool's byte bound (the smallest the tuning allows).
const INGRESS_POOL_BYTES: usize = 1 << 20;
/// How long a queued request may wait for a slot before it is refused after all.
const QUEUE_WAIT_MS: u64 = 500;
/// The backend's deadline (504 after it); a synchronous call waits for its certificate for less.
const BACKEND_TIMEOUT_MS: u64 = 4_000;
const SYNC_CALL_WAIT_MS: u64 = 3_000;
const BODY_BYTES_MAX: usize = 64 << 10;
const VERIFY_QUEUE: usize = 64;
const REQUEST_STATUSES_MAX: usize = 2_000;
const REQUEST_HEAD_BYTES_MAX: usize = 16 << 10;
/// Connections of the flood (all from 127.0.0.1: the per-IP limit is raised above them).
const FLOOD_CONNECTIONS: usize = 64;
const CONNECTIONS_MAX: usize = 256;
/// Queries a flood connection sends before reading their answers (HTTP/1.1 pipelining, as a
/// cheap flood does): the client spends a write and a read on several requests, so it offers
/// far more than the node's capacity even with the node on the same two cores (measured on a
/// loaded 2-core machine: 4 deep offered 10-22x, 16 deep 20-30x).
const FLOOD_PIPELINE: usize = 16;
/// How long the capacity run and the flood last.
const CAPACITY_RUN: Duration = Duration::from_millis(1_500);
const FLOOD_RUN: Duration = Duration::from_secs(3);
/// The flood must offer at least this many times the measured capacity.
const OVERLOAD_FACTOR: f64 = 10.0;
/// A refusal decided at the gate or the pool does no backend work: on a loaded 2-core machine it
/// still takes a scheduling slice or two, and a pipelined one waits for the answers ahead of it
/// on its connection, hence the generous bound.
const QUICK_REFUSAL_P99: Duration = Duration::from_millis(250);
/// How many times its unloaded p99 an admitted query's own service may take under the flood...
const ADMITTED_SLOWDOWN_MAX: u32 = 20;
/// ... plus this, for steps delayed by the flood's threads on the same cores.
const SHARED_CORES_SLACK: Duration = Duration::from_secs(1);
/// Between two samples of the node's memory and gauges during a flood.
const SAMPLE_INTERVAL: Duration = Duration::from_millis(50);
/// One answer's read bound on the client (well above the backend's deadline: a request the node
/// lost would show as an error, not hang the test).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);
/// How long executed calls have to show in the counter once the flood is over.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(20);

/// The node's tuning: one shard (its class gates are per shard), the limits above, and a per-IP
/// limit above the flood's connection count (every client is 127.0.0.1).
fn tuning() -> String {
    format!(
        "[engine]\nshard_count = 1\nspin_before_park_us = 0\n\
         [http]\nconnections_max = {CONNECTIONS_MAX}\nconnections_per_ip_max = {CONNECTIONS_MAX}\n\
         query_concurrency_max = {QUERY_CONCURRENCY}\nquery_queue_max = {QUERY_QUEUE}\n\
         call_concurrency_max = {CALL_CONCURRENCY}\ncall_queue_max = {CALL_QUEUE}\n\
         queue_wait_timeout_ms = {QUEUE_WAIT_MS}\nbackend_timeout_ms = {BACKEND_TIMEOUT_MS}\n\
         body_bytes_max = {BODY_BYTES_MAX}\nrequest_head_bytes_max = {REQUEST_HEAD_BYTES_MAX}\n\
         verify_threads_count = 1\nverify_queue_max = {VERIFY_QUEUE}\n\
         [replica]\nblock_interval_ms = 50\nsync_call_wait_ms = {SYNC_CALL_WAIT_MS}\n\
         ingress_pool_messages_max = {INGRESS_POOL_MESSAGES}\n\
         ingress_pool_bytes_max = {INGRESS_POOL_BYTES}\n\
         request_statuses_max = {REQUEST_STATUSES_MAX}\n"
    )
}

/// How much the node's resident memory may grow above what it held before the flood, derived
/// from the limits it runs with:
/// - every connection holds at most a request head buffer and an answer buffer in hyper
///   (`request_head_bytes_max` each) plus its task and socket state: 4 heads per connection;
/// - every request holding a slot may buffer a body of `body_bytes_max`, and so may every job in
///   the verification queue;
/// - the ingress pool holds at most `ingress_pool_bytes_max` of envelopes;
/// - request statuses (with their replies and certified tree nodes, well under 4 KiB each) are
///   bounded by `request_statuses_max`;
/// - a constant for what does not scale with the traffic: the allocator's per-thread arenas and
///   fragmentation, thread stacks touched for the first time, metrics histograms.
fn memory_growth_bound() -> u64 {
    let connections = (CONNECTIONS_MAX * 4 * REQUEST_HEAD_BYTES_MAX) as u64;
    let bodies = ((QUERY_CONCURRENCY + CALL_CONCURRENCY + VERIFY_QUEUE) * BODY_BYTES_MAX) as u64;
    let ingress = INGRESS_POOL_BYTES as u64;
    let statuses = (REQUEST_STATUSES_MAX * (4 << 10)) as u64;
    let fixed = 48 << 20;
    connections + bodies + ingress + statuses + fixed
}

fn counter() -> Principal {
    counter_canister_id()
}

/// `count` signed queries of the counter's `get` (distinct nonces; a query may be sent again).
fn query_requests(key: &TestKey, count: usize) -> Vec<Vec<u8>> {
    let path = format!("/api/v2/canister/{}/query", counter());
    let arg = Encode!().unwrap();
    (0..count)
        .map(|_| {
            let body = call_envelope(Some(key), true, counter(), "get", &arg, fresh_expiry());
            request_bytes("POST", &path, Some(&body))
        })
        .collect()
}

/// One signed synchronous (v3) call of the counter's `increment`, and its request id.
fn increment_request(key: &TestKey) -> (Vec<u8>, [u8; 32]) {
    let path = format!("/api/v3/canister/{}/call", counter());
    let arg = Encode!().unwrap();
    let body = call_envelope(
        Some(key),
        false,
        counter(),
        "increment",
        &arg,
        fresh_expiry(),
    );
    let id = decode_request_envelope(&body, &IcLimits::default())
        .expect("our own envelope decodes")
        .request_id
        .0;
    (request_bytes("POST", &path, Some(&body)), id)
}

/// A keep-alive HTTP/1.1 client connection that may pipeline requests (send several before
/// reading their answers, which the server answers in order) and reconnects when the node
/// closed it.
struct Client {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    /// Bytes read past the last parsed answer (the start of the next pipelined one).
    pending: Vec<u8>,
    /// The last answer on this connection was a refusal.
    refused: bool,
    /// Requests resent on a new connection because the node had closed the old one after a
    /// refusal (it may: it did not read the refused body, so it drains it and closes rather
    /// than parse it as the next request).
    resent: u64,
}

impl Client {
    fn new(addr: SocketAddr) -> Client {
        Client {
            addr,
            stream: None,
            pending: Vec::new(),
            refused: false,
            resent: 0,
        }
    }

    /// Sends one request and reads its answer, timing from the write.
    fn exchange(&mut self, request: &[u8]) -> Result<(Answer, Duration), String> {
        let mut answers = self.exchange_pipelined(&[request])?;
        Ok(answers.pop().expect("one answer per request"))
    }

    /// Sends `requests` in one write and reads their answers in order, the first timed from the
    /// write and each other from the answer before it. Requests left unanswered because the node closed a reused connection after a
    /// refusal (before any byte of their answer) are sent again on a new connection, as HTTP
    /// clients do; every other failure (a refused connect, a reset, a timeout, a malformed
    /// answer) is an error.
    fn exchange_pipelined(
        &mut self,
        requests: &[&[u8]],
    ) -> Result<Vec<(Answer, Duration)>, String> {
        let mut answers = Vec::with_capacity(requests.len());
        while answers.len() < requests.len() {
            let reused = self.stream.is_some();
            if self.stream.is_none() {
                let stream = TcpStream::connect(self.addr).map_err(|e| format!("connect: {e}"))?;
                stream
                    .set_read_timeout(Some(ANSWER_TIMEOUT))
                    .and_then(|()| stream.set_nodelay(true))
                    .map_err(|e| format!("socket options: {e}"))?;
                self.stream = Some(stream);
                self.pending.clear();
            }
            let unanswered = &requests[answers.len()..];
            let mut started = Instant::now();
            let mut result = self
                .stream
                .as_mut()
                .expect("connected above")
                .write_all(&unanswered.concat());
            let mut answered_here = 0;
            while result.is_ok() && answered_here < unanswered.len() {
                match self.read_answer() {
                    Ok(answer) => {
                        let elapsed = started.elapsed();
                        self.refused = answer.status == 429;
                        let close = answer
                            .header("connection")
                            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
                        answers.push((answer, elapsed));
                        answered_here += 1;
                        // The node reads a pipelined request only once it answered the one
                        // before (HTTP/1.1 answers in order), so the next one's time starts here.
                        started = Instant::now();
                        if close {
                            self.stream = None;
                            break;
                        }
                    }
                    Err(e) => result = Err(e),
                }
            }
            if let Err(e) = result {
                self.stream = None;
                let closed = matches!(
                    e.kind(),
                    ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset | ErrorKind::BrokenPipe
                );
                let after_refusal = reused && self.refused && self.pending.is_empty();
                if !(closed && after_refusal) {
                    return Err(format!("{e} (reused connection: {reused})"));
                }
                self.refused = false;
                self.resent += (unanswered.len() - answered_here) as u64;
            }
        }
        Ok(answers)
    }

    /// Reads one answer (its head, then its Content-Length body), keeping what follows it.
    fn read_answer(&mut self) -> std::io::Result<Answer> {
        let stream = self.stream.as_mut().expect("reading a connected client");
        let mut chunk = [0u8; 16 << 10];
        let mut fill = |pending: &mut Vec<u8>| -> std::io::Result<()> {
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                return Err(ErrorKind::UnexpectedEof.into());
            }
            pending.extend_from_slice(&chunk[..n]);
            Ok(())
        };
        let head_end = loop {
            if let Some(i) = self.pending.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            fill(&mut self.pending)?;
        };
        let head = String::from_utf8_lossy(&self.pending[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let malformed = || std::io::Error::other(format!("malformed answer head {head:?}"));
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .ok_or_else(malformed)?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
            .collect();
        let length = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse::<usize>().ok())
            .ok_or_else(malformed)?;
        while self.pending.len() < head_end + length {
            fill(&mut self.pending)?;
        }
        let body = self.pending[head_end..head_end + length].to_vec();
        self.pending.drain(..head_end + length);
        Ok(Answer {
            status,
            headers,
            body,
        })
    }
}

/// How a 429 was decided, from its message: at once (class full, verification or signing pool
/// full, ingress pool full) or after waiting in the class's queue for `queue_wait_timeout_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refusal {
    Immediate,
    QueueTimeout,
}

fn refusal_kind(answer: &Answer) -> Refusal {
    if answer.text().contains("queue wait timed out") {
        Refusal::QueueTimeout
    } else {
        Refusal::Immediate
    }
}

/// One answered request of a load run.
struct Record {
    status: u16,
    latency: Duration,
    refusal: Option<Refusal>,
    /// Non-429 answers keep their body for checking.
    body: Vec<u8>,
    /// Which of the connection's requests it was.
    request: usize,
}

/// What one connection of a load run saw.
#[derive(Default)]
struct ConnectionRun {
    records: Vec<Record>,
    errors: Vec<String>,
    resent: u64,
    /// Its one-shot requests ran out before the end (calls: each is sent until answered other
    /// than 429, then never again).
    exhausted: bool,
}

/// A load run's connections and wall time.
struct LoadRun {
    connections: Vec<ConnectionRun>,
    elapsed: Duration,
}

impl LoadRun {
    fn records(&self) -> impl Iterator<Item = &Record> {
        self.connections.iter().flat_map(|c| c.records.iter())
    }

    fn sent(&self) -> usize {
        self.connections
            .iter()
            .map(|c| c.records.len() + c.errors.len())
            .sum()
    }

    fn count(&self, status: u16) -> usize {
        self.records().filter(|r| r.status == status).count()
    }

    fn errors(&self) -> Vec<&String> {
        self.connections.iter().flat_map(|c| &c.errors).collect()
    }

    fn latencies(&self, keep: impl Fn(&Record) -> bool) -> Vec<Duration> {
        let mut all: Vec<Duration> = self
            .records()
            .filter(|r| keep(r))
            .map(|r| r.latency)
            .collect();
        all.sort();
        all
    }

    fn summary(&self) -> String {
        let mut statuses = std::collections::BTreeMap::new();
        for record in self.records() {
            *statuses.entry(record.status).or_insert(0usize) += 1;
        }
        let resent: u64 = self.connections.iter().map(|c| c.resent).sum();
        format!(
            "{} sent in {:?} on {} connections: {statuses:?}, {} errors (first: {:?}), {resent} \
             resent after a close",
            self.sent(),
            self.elapsed,
            self.connections.len(),
            self.errors().len(),
            self.errors().first()
        )
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Runs closed-loop load for `duration`: connection `i` sends `requests[i]` in turn, `pipeline`
/// at a time. Reusable requests (queries) cycle; one-shot ones (calls, sent one at a time) are
/// resent only after a 429, which means the node did not take them, and the connection stops
/// when they run out.
fn load(
    addr: SocketAddr,
    requests: Vec<Vec<Vec<u8>>>,
    reusable: bool,
    pipeline: usize,
    duration: Duration,
) -> LoadRun {
    assert!(pipeline >= 1 && (reusable || pipeline == 1));
    let start = Instant::now();
    let end = start + duration;
    let threads: Vec<_> = requests
        .into_iter()
        .map(|requests| {
            thread::spawn(move || {
                let mut client = Client::new(addr);
                let mut run = ConnectionRun::default();
                let mut next = 0usize;
                while Instant::now() < end {
                    if next == requests.len() && !reusable {
                        run.exhausted = true;
                        break;
                    }
                    let batch: Vec<usize> =
                        (0..pipeline).map(|i| (next + i) % requests.len()).collect();
                    let sent: Vec<&[u8]> = batch.iter().map(|&i| &requests[i][..]).collect();
                    match client.exchange_pipelined(&sent) {
                        Ok(answers) => {
                            for (&index, (answer, latency)) in batch.iter().zip(answers) {
                                let refused = answer.status == 429;
                                run.records.push(Record {
                                    status: answer.status,
                                    latency,
                                    refusal: refused.then(|| refusal_kind(&answer)),
                                    body: if refused { Vec::new() } else { answer.body },
                                    request: index,
                                });
                                if reusable || !refused {
                                    next += 1;
                                }
                            }
                        }
                        Err(error) => {
                            // Their fate is unknown: a one-shot request is never sent again.
                            run.errors.extend(batch.iter().map(|_| error.clone()));
                            next += batch.len();
                        }
                    }
                    if reusable {
                        next %= requests.len();
                    }
                }
                run.resent = client.resent;
                run
            })
        })
        .collect();
    let connections = threads
        .into_iter()
        .map(|t| t.join().expect("a load connection panicked"))
        .collect();
    LoadRun {
        connections,
        elapsed: start.elapsed(),
    }
}

/// `VmRSS` or `VmHWM` of process `pid` in bytes.
fn proc_memory(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|kib| kib.trim().parse::<u64>().ok())
        .map(|kib| kib << 10)
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// The node's `/metrics` text.
fn metrics(addr: SocketAddr) -> String {
    let answer = request(addr, "GET", "/metrics", None);
    assert_eq!(answer.status, 200, "{}", answer.text());
    answer.text()
}

/// The largest value among the series of `name` whose labels contain `label` (`""`: any).
fn metric_max(text: &str, name: &str, label: &str) -> Option<u64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (labels, value) = match rest.strip_prefix('{') {
                Some(labelled) => labelled.split_once("} ")?,
                None => ("", rest.strip_prefix(' ')?),
            };
            labels.contains(label).then_some(value)
        })
        .filter_map(|value| value.trim().parse::<f64>().ok())
        .map(|value| value as u64)
        .max()
}

fn metric(text: &str, name: &str) -> u64 {
    metric_max(text, name, "").unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

/// The gauges sampled during a flood, each the largest value seen.
#[derive(Clone, Copy, Debug, Default)]
struct Peaks {
    rss: u64,
    query_in_flight: u64,
    query_queue: u64,
    call_in_flight: u64,
    call_queue: u64,
    verify_queue: u64,
    ingress_messages: u64,
    ingress_bytes: u64,
    request_statuses: u64,
}

/// Samples the node's RSS and its bounded gauges every [`SAMPLE_INTERVAL`] until stopped.
struct Sampler {
    stop: Arc<AtomicBool>,
    peaks: Arc<Mutex<Peaks>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(addr: SocketAddr, pid: u32) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peaks = Arc::new(Mutex::new(Peaks::default()));
        let thread = {
            let (stop, peaks) = (stop.clone(), peaks.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let rss = proc_memory(pid, "VmRSS");
                    let text = metrics(addr);
                    let max = |name: &str, label: &str| metric_max(&text, name, label).unwrap_or(0);
                    let mut p = peaks.lock().unwrap();
                    p.rss = p.rss.max(rss);
                    let class_query = "class=\"query\"";
                    let class_call = "class=\"call\"";
                    p.query_in_flight = p
                        .query_in_flight
                        .max(max("icn_http_in_flight", class_query));
                    p.query_queue = p.query_queue.max(max("icn_http_queue_depth", class_query));
                    p.call_in_flight = p.call_in_flight.max(max("icn_http_in_flight", class_call));
                    p.call_queue = p.call_queue.max(max("icn_http_queue_depth", class_call));
                    p.verify_queue = p.verify_queue.max(max("icn_http_verify_queue_depth", ""));
                    p.ingress_messages = p
                        .ingress_messages
                        .max(max("icn_replica_ingress_pool_messages", ""));
                    p.ingress_bytes = p
                        .ingress_bytes
                        .max(max("icn_replica_ingress_pool_bytes", ""));
                    p.request_statuses = p
                        .request_statuses
                        .max(max("icn_replica_request_statuses", ""));
                    drop(p);
                    thread::sleep(SAMPLE_INTERVAL);
                }
            })
        };
        Sampler {
            stop,
            peaks,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Peaks {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("the sampler panicked");
        }
        *self.peaks.lock().unwrap()
    }
}

/// The counter's value, from a query answered 200 with a valid body.
fn query_counter(addr: SocketAddr, request: &[u8]) -> u64 {
    let mut client = Client::new(addr);
    let (answer, _) = client.exchange(request).expect("a query after the flood");
    assert_eq!(answer.status, 200, "{}", answer.text());
    query_reply(&answer.body).unwrap_or_else(|e| panic!("{e}"))
}

/// The counter value in a query answer's body: `{status: "replied", reply: {arg}, signatures}`
/// with one node signature.
fn query_reply(body: &[u8]) -> Result<u64, String> {
    let value = decode_value(body, 16).map_err(|e| format!("query answer: {e}"))?;
    if value.get("status") != Some(&Value::Text("replied".into())) {
        return Err(format!("query not replied: {value:?}"));
    }
    let Some(Value::Bytes(arg)) = value.get("reply").and_then(|r| r.get("arg")) else {
        return Err(format!("no reply arg in {value:?}"));
    };
    match value.get("signatures") {
        Some(Value::Array(signatures)) if signatures.len() == 1 => {}
        other => return Err(format!("expected one node signature, got {other:?}")),
    }
    Decode!(arg, u64).map_err(|e| format!("get's reply is not a nat64: {e}"))
}

/// The counter value a certified synchronous call's answer carries for request `id`.
fn certified_increment(body: &[u8], id: &[u8; 32]) -> Result<u64, String> {
    let value = decode_value(body, 16).map_err(|e| format!("call answer: {e}"))?;
    if value.get("status") != Some(&Value::Text("replied".into())) {
        return Err(format!("call not replied: {value:?}"));
    }
    let Some(Value::Bytes(certificate)) = value.get("certificate") else {
        return Err(format!("no certificate in {value:?}"));
    };
    let certificate = decode_certificate(certificate, &IcLimits::default())
        .map_err(|e| format!("certificate: {e}"))?;
    let lookup = |leaf: &[u8]| {
        let path: [&[u8]; 3] = [b"request_status", &id[..], leaf];
        certificate.tree.lookup(&path)
    };
    if lookup(b"status") != Lookup::Found(b"replied") {
        return Err(format!("request status {:?}", lookup(b"status")));
    }
    match lookup(b"reply") {
        Lookup::Found(reply) => {
            Decode!(reply, u64).map_err(|e| format!("increment's reply is not a nat64: {e}"))
        }
        other => Err(format!("no certified reply: {other:?}")),
    }
}

/// Sends one more increment after a flood: the node must take it within [`SETTLE_TIMEOUT`] and
/// certify it (200) or accept it and certify it soon after (202, then the counter shows it).
/// Right after a call flood the ingress pool may still be full: executed calls stay in it for
/// `replica.heights_ahead_max` heights for lagging peers, so the call is retried after a 429,
/// as an agent backs off; a node that keeps refusing is wedged.
fn increment_after_flood(addr: SocketAddr, key: &TestKey, get: &[u8], before: u64) {
    let (call, id) = increment_request(key);
    let mut client = Client::new(addr);
    let start = Instant::now();
    loop {
        let (answer, _) = client.exchange(&call).expect("an update after the flood");
        match answer.status {
            200 => {
                assert_eq!(
                    certified_increment(&answer.body, &id),
                    Ok(before + 1),
                    "the update after the flood"
                );
                return;
            }
            202 => return wait_for_counter(addr, get, before + 1),
            429 if start.elapsed() < SETTLE_TIMEOUT => {
                thread::sleep(Duration::from_millis(50));
            }
            other => panic!(
                "the update after the flood answered {other} after {:?}: {}",
                start.elapsed(),
                answer.text()
            ),
        }
    }
}

/// Waits until the counter reads `expected`, failing if it reads more or takes too long.
fn wait_for_counter(addr: SocketAddr, get: &[u8], expected: u64) {
    let start = Instant::now();
    loop {
        let value = query_counter(addr, get);
        assert!(
            value <= expected,
            "the counter reads {value}, above {expected}"
        );
        if value == expected {
            return;
        }
        assert!(
            start.elapsed() < SETTLE_TIMEOUT,
            "the counter reads {value}, {expected} expected"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

fn start_node(label: &str) -> ProcessSubnet {
    ProcessSubnet::start_some(label, 1, 1, &tuning())
}

/// Asserts the node's memory stayed within [`memory_growth_bound`] of `before`, both while
/// sampled and at its high-water mark.
fn assert_memory_bounded(subnet: &ProcessSubnet, before: u64, peaks: &Peaks) {
    let hwm = proc_memory(subnet.pid(0), "VmHWM");
    let bound = memory_growth_bound();
    let peak = peaks.rss.max(hwm);
    assert!(
        peak <= before + bound,
        "the node's memory grew from {} MiB to {} MiB (sampled peak {} MiB), over the {} MiB \
         its limits allow",
        before >> 20,
        hwm >> 20,
        peaks.rss >> 20,
        bound >> 20
    );
}

#[test]
fn a_query_flood_at_ten_times_capacity_is_shed_quickly_and_admitted_queries_stay_bounded() {
    let _heavy = icn_tests::heavy_test_lock();
    let subnet = start_node("overload-query");
    let addr = subnet.http_addr(0);
    // secp256k1, as many agents sign: its verification (pure Rust, on the node's one
    // verification thread) is the query's largest cost, which keeps the capacity well below
    // what the flood's cheap refusals can reach.
    let key = TestKey::secp256k1(7);
    let get = query_requests(&key, 1).remove(0);
    assert_eq!(query_counter(addr, &get), 0);

    // Capacity: as many connections as the node has query slots, so none waits in the queue.
    let capacity_run = load(
        addr,
        (0..QUERY_CONCURRENCY)
            .map(|_| query_requests(&key, 16))
            .collect(),
        true,
        1,
        CAPACITY_RUN,
    );
    assert!(
        capacity_run.errors().is_empty() && capacity_run.count(200) == capacity_run.sent(),
        "{}",
        capacity_run.summary()
    );
    let capacity = capacity_run.count(200) as f64 / capacity_run.elapsed.as_secs_f64();
    let unloaded_p99 = percentile(&capacity_run.latencies(|_| true), 0.99);
    assert!(capacity > 0.0, "{}", capacity_run.summary());

    let memory_before = proc_memory(subnet.pid(0), "VmRSS");
    let sampler = Sampler::start(addr, subnet.pid(0));
    let flood = load(
        addr,
        (0..FLOOD_CONNECTIONS)
            .map(|_| query_requests(&key, 16))
            .collect(),
        true,
        FLOOD_PIPELINE,
        FLOOD_RUN,
    );
    let peaks = sampler.finish();
    let summary = flood.summary();
    let offered = flood.sent() as f64 / flood.elapsed.as_secs_f64();
    eprintln!(
        "query capacity {capacity:.0}/s (p99 {unloaded_p99:?}); flood offered {offered:.0}/s: \
         {summary}; peaks {peaks:?}; memory before {} MiB",
        memory_before >> 20
    );

    // Every request got an answer, and only 200 or 429.
    assert!(flood.errors().is_empty(), "{summary}");
    assert_eq!(
        flood.count(200) + flood.count(429),
        flood.sent(),
        "{summary}"
    );
    assert!(
        offered >= OVERLOAD_FACTOR * capacity,
        "the flood offered {offered:.0}/s, not {OVERLOAD_FACTOR}x the capacity of \
         {capacity:.0}/s: {summary}"
    );
    // At ten times capacity most requests are refused, and refusals are quick.
    assert!(flood.count(429) * 2 >= flood.sent(), "{summary}");
    let quick = flood.latencies(|r| r.refusal == Some(Refusal::Immediate));
    let quick_p99 = percentile(&quick, 0.99);
    assert!(
        quick_p99 < QUICK_REFUSAL_P99,
        "429 p99 {quick_p99:?}: {summary}"
    );
    let waited = flood.latencies(|r| r.refusal == Some(Refusal::QueueTimeout));
    if let Some(slowest) = waited.last() {
        assert!(
            *slowest < Duration::from_millis(QUEUE_WAIT_MS) + QUICK_REFUSAL_P99 * 4,
            "a queue timeout answered after {slowest:?}: {summary}"
        );
    }
    // Every admitted query was answered correctly, within its bound: at most the queue wait
    // (after that it is refused) plus its own service time. The flood stretches the service
    // time: each of a query's steps on the shard (body, after verification, after signing,
    // the answer) waits behind the refusals the shard is serving, and the machine's cores are
    // shared with the flood's threads (100-200 ms measured on a 2-core machine), hence the
    // multiple of the unloaded p99 and the constant for the shared cores.
    assert!(flood.count(200) > 0, "{summary}");
    for record in flood.records().filter(|r| r.status == 200) {
        assert_eq!(query_reply(&record.body), Ok(0), "{summary}");
    }
    let admitted = flood.latencies(|r| r.status == 200);
    let admitted_p99 = percentile(&admitted, 0.99);
    let admitted_bound = Duration::from_millis(QUEUE_WAIT_MS)
        + unloaded_p99 * ADMITTED_SLOWDOWN_MAX
        + SHARED_CORES_SLACK;
    assert!(
        admitted_p99 < admitted_bound,
        "admitted p99 {admitted_p99:?}, bound {admitted_bound:?}: {summary}"
    );
    let slowest = *admitted.last().expect("some admitted");
    eprintln!(
        "query flood: 429 p99 {quick_p99:?} ({} after a queue wait), admitted p99 \
         {admitted_p99:?} (bound {admitted_bound:?}), slowest {slowest:?}",
        waited.len()
    );
    assert!(
        slowest < Duration::from_millis(BACKEND_TIMEOUT_MS),
        "an admitted query took {slowest:?}: {summary}"
    );
    // The gates held their bounds, and memory stayed within what the limits allow.
    assert!(
        peaks.query_in_flight <= QUERY_CONCURRENCY as u64,
        "{peaks:?}"
    );
    assert!(peaks.query_queue <= QUERY_QUEUE as u64, "{peaks:?}");
    assert!(peaks.verify_queue <= VERIFY_QUEUE as u64, "{peaks:?}");
    assert_memory_bounded(&subnet, memory_before, &peaks);
    let text = metrics(addr);
    // The node's own view of the query latencies (head to answer), for comparison with the
    // client's when reading a run's output.
    let server_side: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("icn_http_request_latency_us") && l.contains("query"))
        .collect();
    eprintln!("query flood, server side: {server_side:?}");
    assert!(
        metric_max(&text, "icn_http_rejections_total", "reason=\"queue_full\"").unwrap_or(0) > 0,
        "{text}"
    );

    // Not wedged: a normal query and an update go through afterwards.
    assert_eq!(query_counter(addr, &get), 0);
    increment_after_flood(addr, &key, &get, 0);
    assert_eq!(query_counter(addr, &get), 1);
}

#[test]
fn an_update_flood_is_shed_with_429s_and_every_admitted_call_executes_exactly_once() {
    let _heavy = icn_tests::heavy_test_lock();
    let subnet = start_node("overload-call");
    let addr = subnet.http_addr(0);
    let key = TestKey::ed25519();
    let get = query_requests(&key, 1).remove(0);
    assert_eq!(query_counter(addr, &get), 0);

    // Each connection has its own one-shot calls (distinct nonces, so distinct request ids): a
    // call is resent only after a 429 (the node did not take it) and never after an answer
    // that took it (200 certified, 202 accepted).
    let calls_per_connection = 64;
    let calls: Vec<Vec<(Vec<u8>, [u8; 32])>> = (0..FLOOD_CONNECTIONS)
        .map(|_| {
            (0..calls_per_connection)
                .map(|_| increment_request(&key))
                .collect()
        })
        .collect();
    let requests = calls
        .iter()
        .map(|c| c.iter().map(|(r, _)| r.clone()).collect())
        .collect();

    let memory_before = proc_memory(subnet.pid(0), "VmRSS");
    let executed_before = metric(&metrics(addr), "icn_replica_calls_executed_total");
    let sampler = Sampler::start(addr, subnet.pid(0));
    let flood = load(addr, requests, false, 1, FLOOD_RUN);
    let peaks = sampler.finish();
    let summary = flood.summary();
    eprintln!(
        "call flood: {summary}; peaks {peaks:?}; memory before {} MiB",
        memory_before >> 20
    );

    assert!(flood.errors().is_empty(), "{summary}");
    assert!(
        flood.connections.iter().all(|c| !c.exhausted),
        "a connection ran out of calls: {summary}"
    );
    let (certified, accepted, refused) = (flood.count(200), flood.count(202), flood.count(429));
    assert_eq!(certified + accepted + refused, flood.sent(), "{summary}");
    // The call class (and the ingress pool behind it) is full almost all the time.
    assert!(refused * 2 >= flood.sent(), "{summary}");
    assert!(certified > 0, "{summary}");
    let quick = flood.latencies(|r| r.refusal == Some(Refusal::Immediate));
    let quick_p99 = percentile(&quick, 0.99);
    assert!(
        quick_p99 < QUICK_REFUSAL_P99,
        "429 p99 {quick_p99:?}: {summary}"
    );
    let waited = flood.latencies(|r| r.refusal == Some(Refusal::QueueTimeout));
    if let Some(slowest) = waited.last() {
        assert!(
            *slowest < Duration::from_millis(QUEUE_WAIT_MS) + QUICK_REFUSAL_P99 * 4,
            "a queue timeout answered after {slowest:?}: {summary}"
        );
    }
    // An admitted call waits at most the queue wait, then the synchronous wait for its
    // certificate (after which it is answered 202), and never reaches the backend's deadline.
    let admitted = flood.latencies(|r| r.status != 429);
    let slowest = *admitted.last().expect("some admitted");
    eprintln!(
        "call flood: 429 p99 {quick_p99:?} ({} after a queue wait), admitted p50 {:?}, \
         slowest {slowest:?}",
        waited.len(),
        percentile(&admitted, 0.5)
    );
    assert!(
        slowest < Duration::from_millis(BACKEND_TIMEOUT_MS),
        "an admitted call took {slowest:?}: {summary}"
    );

    // Every certified answer carries the reply of its own call, and no two calls saw the same
    // counter value: each increment executed once, in some order.
    let mut values = Vec::new();
    for (connection, run) in flood.connections.iter().enumerate() {
        for record in run.records.iter().filter(|r| r.status == 200) {
            let (_, id) = &calls[connection][record.request];
            let value =
                certified_increment(&record.body, id).unwrap_or_else(|e| panic!("{e}: {summary}"));
            values.push(value);
        }
    }
    values.sort_unstable();
    let distinct = values.windows(2).all(|w| w[0] < w[1]);
    assert!(distinct, "two calls saw the same counter value: {values:?}");
    let admitted_count = (certified + accepted) as u64;
    assert!(
        values.last().is_some_and(|v| *v <= admitted_count),
        "a certified value above the {admitted_count} admitted calls: {values:?}"
    );

    // The bounds held: the call gate, the verification queue, the ingress pool.
    assert!(peaks.call_in_flight <= CALL_CONCURRENCY as u64, "{peaks:?}");
    assert!(peaks.call_queue <= CALL_QUEUE as u64, "{peaks:?}");
    assert!(peaks.verify_queue <= VERIFY_QUEUE as u64, "{peaks:?}");
    assert!(
        peaks.ingress_messages <= INGRESS_POOL_MESSAGES as u64,
        "{peaks:?}"
    );
    assert!(
        peaks.ingress_bytes <= INGRESS_POOL_BYTES as u64,
        "{peaks:?}"
    );
    assert!(
        peaks.request_statuses <= REQUEST_STATUSES_MAX as u64,
        "{peaks:?}"
    );
    let text = metrics(addr);
    assert_eq!(
        metric(&text, "icn_replica_ingress_pool_messages_max"),
        INGRESS_POOL_MESSAGES as u64
    );
    assert_eq!(
        metric(&text, "icn_replica_ingress_pool_bytes_max"),
        INGRESS_POOL_BYTES as u64
    );
    assert_memory_bounded(&subnet, memory_before, &peaks);

    // Exactly once: once the accepted (202) calls have executed too, the counter equals the
    // number of calls the node took, and so does the number of calls it executed.
    wait_for_counter(addr, &get, admitted_count);
    let executed = metric(&metrics(addr), "icn_replica_calls_executed_total") - executed_before;
    assert_eq!(executed, admitted_count, "{summary}");

    // Not wedged: one more update and a query.
    increment_after_flood(addr, &key, &get, admitted_count);
    assert_eq!(query_counter(addr, &get), admitted_count + 1);
}
