//! The load generator of the http suite: pre-built HTTP/1.1 requests carrying pre-signed
//! envelopes, sent open loop (at a fixed rate, whatever the answers do) or closed loop (to find
//! the peak), over keep-alive connections spread across loopback source addresses.
//!
//! The client is a few lines of HTTP/1.1 over tokio's `TcpStream` rather than a general client:
//! every request is a fixed byte string built before the run, so the generator's own cost per
//! request is one write and one parse of a status line and two headers, and the server under
//! test gets the CPU.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use icn_codecs::ic::Principal;
use icn_shards::http::testing::{call_envelope, request_bytes, TestKey};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::stats::LatencyRecorder;

/// Connections opened from one loopback source address: icn's `http.connections_per_ip_max`
/// default, so the generator never meets the per-IP limit (it measures the classes' gates).
pub const CONNECTIONS_PER_SOURCE_IP: usize = icn_tuning::HTTP_CONNECTIONS_PER_IP_MAX_DEFAULT;
/// One request's bound; a request still unanswered then counts as an error and its connection
/// is dropped (icn's backend deadline is 10 s, so a sane server never reaches it).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// The most bytes of an answer head the client reads before calling the answer malformed.
const ANSWER_HEAD_BYTES_MAX: usize = 16 << 10;
/// The most body bytes of one answer the client accepts.
const ANSWER_BODY_BYTES_MAX: usize = 1 << 20;

/// Which endpoint a pool's requests go to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /api/v2/canister/<id>/query`: the counter's `get`.
    Query,
    /// `POST /api/v3/canister/<id>/call` (synchronous): the counter's `increment`.
    SyncCall,
}

/// Complete HTTP/1.1 requests, each with its own signed envelope (distinct nonces).
pub struct RequestPool {
    pub requests: Vec<Vec<u8>>,
    /// Whether a request may be sent more than once (queries) or not (updates, which a replica
    /// executes once per request id).
    pub reusable: bool,
}

impl RequestPool {
    /// The request for the run's `index`-th send: round robin when requests may repeat, else
    /// the `index`-th or, past the end, none (counted as `pool_exhausted`).
    fn take(&self, index: u64, shared: &Mutex<Shared>) -> Option<&[u8]> {
        let slot = index as usize;
        if self.reusable {
            Some(&self.requests[slot % self.requests.len()])
        } else if let Some(request) = self.requests.get(slot) {
            Some(request)
        } else {
            lock(shared).outcome.pool_exhausted += 1;
            None
        }
    }

    /// `count` requests to the counter canister from one Ed25519 sender, each signed (the
    /// envelope's nonce is the signing time in nanoseconds, so every one differs).
    pub fn build(endpoint: Endpoint, count: usize) -> RequestPool {
        let key = TestKey::ed25519();
        let canister = icn_shards::replica::canisters::counter_canister_id();
        let expiry = icn_shards::http::testing::fresh_expiry();
        let (query, method, path) = match endpoint {
            Endpoint::Query => (true, "get", format!("/api/v2/canister/{canister}/query")),
            Endpoint::SyncCall => (
                false,
                "increment",
                format!("/api/v3/canister/{canister}/call"),
            ),
        };
        let arg = candid_empty_args();
        let requests = (0..count)
            .map(|_| {
                let body = call_envelope(Some(&key), query, canister, method, &arg, expiry);
                request_bytes("POST", &path, Some(&body))
            })
            .collect();
        RequestPool {
            requests,
            reusable: endpoint == Endpoint::Query,
        }
    }
}

impl RequestPool {
    /// Each request as HTTP/2 needs it, to a server at `addr`: its URI (built once, cloned per
    /// send without allocating) and its body.
    fn h2_parts(&self, addr: SocketAddr) -> Vec<(http::Uri, Bytes)> {
        self.requests
            .iter()
            .map(|request| {
                let head_end = request
                    .windows(4)
                    .position(|w| w == b"\r\n\r\n")
                    .map_or(request.len(), |end| end + 4);
                let line = String::from_utf8_lossy(&request[..head_end]);
                let path = line.split(' ').nth(1).unwrap_or("/");
                let uri = format!("http://{addr}{path}")
                    .parse()
                    .expect("a pool's request paths are valid request targets");
                (uri, Bytes::copy_from_slice(&request[head_end..]))
            })
            .collect()
    }
}

/// Candid `()`: the magic and two empty tables.
fn candid_empty_args() -> Vec<u8> {
    b"DIDL\x00\x00".to_vec()
}

/// The principal the axum baseline and icn both answer for (used by tests and the config).
pub fn target_canister() -> Principal {
    icn_shards::replica::canisters::counter_canister_id()
}

/// How the generator paces requests.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pacing {
    /// Request `i` is due at `start + i / rate`; latency counts from when it was due, so time a
    /// request waited for a free connection is the server's (no coordinated omission).
    Open { rate_per_s: f64 },
    /// Every connection sends its next request as soon as the last one was answered.
    Closed,
}

/// One load run's parameters.
#[derive(Clone, Copy, Debug)]
pub struct LoadSpec {
    pub addr: SocketAddr,
    pub pacing: Pacing,
    pub connections: usize,
    pub duration: Duration,
    /// The core the generator's one worker thread is pinned to (None: one worker per core,
    /// unpinned).
    pub generator_core: Option<usize>,
    /// How the requests travel.
    pub wire: Wire,
}

/// The protocol of a load's connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wire {
    /// HTTP/1.1 keep-alive with up to `pipeline_depth` requests sent and not yet answered per
    /// connection (pipelining). 1: a connection sends its next request only after the answer
    /// to the last; more (open loop only) lets an overloaded server's backlog build in its own
    /// socket buffers instead of in the generator, so the offered rate does not depend on how
    /// fast it answers; answers come in order, so each waits for those before it.
    Http1 { pipeline_depth: usize },
    /// HTTP/2 with prior knowledge (h2c), open loop only: every request is a stream of its
    /// own, as many open per connection as the server allows (a request due while all are
    /// taken waits, and the wait counts in its latency), answered in any order.
    Http2,
}

/// What one load run saw.
#[derive(Clone, Debug, Default)]
pub struct LoadOutcome {
    pub elapsed: Duration,
    pub sent: u64,
    /// 2xx answers, their body bytes and latencies.
    pub ok: u64,
    pub ok_bytes: u64,
    pub ok_latency: LatencyRecorder,
    /// 429 answers and their latencies.
    pub rejected: u64,
    pub reject_latency: LatencyRecorder,
    /// Other statuses, I/O failures, timeouts, malformed answers.
    pub errors: u64,
    pub first_error: Option<String>,
    /// Requests never sent because a one-shot pool ran out.
    pub pool_exhausted: u64,
    /// Open loop: requests due within the window (rate x duration).
    pub due: Option<u64>,
}

impl LoadOutcome {
    /// Adds the counts and latencies of `other` (one connection's) to these; the first error
    /// kept is this one's if it has one.
    fn merge(&mut self, other: LoadOutcome) {
        self.sent += other.sent;
        self.ok += other.ok;
        self.ok_bytes += other.ok_bytes;
        self.ok_latency.merge(&other.ok_latency);
        self.rejected += other.rejected;
        self.reject_latency.merge(&other.reject_latency);
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.pool_exhausted += other.pool_exhausted;
    }
}

#[derive(Default)]
struct Shared {
    outcome: LoadOutcome,
    last_answer: Option<Instant>,
}

/// Runs one load on a multi-thread tokio runtime of its own: one worker per core, sharing the
/// machine with the server as every system's generator does, or one worker on
/// `spec.generator_core`.
pub fn run(spec: LoadSpec, pool: Arc<RequestPool>) -> LoadOutcome {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(core) = spec.generator_core {
        builder
            .worker_threads(1)
            .on_thread_start(move || crate::host::pin_current_thread(Some(core)));
    }
    let runtime = builder
        .enable_all()
        .build()
        .expect("a tokio runtime for the load generator");
    runtime.block_on(run_async(spec, pool))
}

async fn run_async(spec: LoadSpec, pool: Arc<RequestPool>) -> LoadOutcome {
    let shared = Arc::new(Mutex::new(Shared::default()));
    let next = Arc::new(AtomicU64::new(0));
    // Every connection is opened before the window starts: the run measures serving, not a
    // storm of connection set-ups (a connection the server closes is reopened in the window,
    // and that time counts).
    let connected = Arc::new(tokio::sync::Barrier::new(spec.connections + 1));
    let (window_tx, window_rx) = tokio::sync::watch::channel(None::<(Instant, Instant)>);
    let mut tasks = Vec::with_capacity(spec.connections);
    let first = first_source_host();
    let h2_requests = Arc::new(if spec.wire == Wire::Http2 {
        pool.h2_parts(spec.addr)
    } else {
        Vec::new()
    });
    for connection in 0..spec.connections {
        let source = source_ip(first, connection);
        let (shared, next, pool) = (shared.clone(), next.clone(), pool.clone());
        let h2_requests = h2_requests.clone();
        let (connected, mut window_rx) = (connected.clone(), window_rx.clone());
        tasks.push(tokio::spawn(async move {
            let stream = tokio::time::timeout(REQUEST_TIMEOUT, connect(spec.addr, source))
                .await
                .ok()
                .and_then(Result::ok);
            connected.wait().await;
            let Ok(window) = window_rx.wait_for(Option::is_some).await.map(|w| *w) else {
                return;
            };
            let (start, end) = window.expect("waited for Some");
            match (spec.pacing, spec.wire) {
                (Pacing::Open { rate_per_s }, Wire::Http2) => {
                    let window = Window {
                        start,
                        end,
                        rate_per_s,
                    };
                    let load = H2Load {
                        shared: shared.clone(),
                        next: next.clone(),
                        pool: pool.clone(),
                        requests: h2_requests,
                    };
                    h2_loop(spec, source, stream, window, load).await;
                }
                (Pacing::Open { rate_per_s }, Wire::Http1 { pipeline_depth })
                    if pipeline_depth > 1 =>
                {
                    let window = Window {
                        start,
                        end,
                        rate_per_s,
                    };
                    pipelined_loop(
                        spec,
                        pipeline_depth,
                        source,
                        stream,
                        window,
                        &shared,
                        &next,
                        &pool,
                    )
                    .await;
                }
                _ => connection_loop(spec, source, stream, start, end, &shared, &next, &pool).await,
            }
        }));
    }
    drop(window_rx);
    connected.wait().await;
    let start = Instant::now();
    let end = start + spec.duration;
    let _ = window_tx.send(Some((start, end)));
    for task in tasks {
        let _ = task.await;
    }
    let mut shared = Arc::try_unwrap(shared)
        .map_err(|_| ())
        .expect("every connection task has ended")
        .into_inner()
        .expect("no connection task panicked holding the lock");
    // The window is the planned one, stretched to the last answer when answers came later (a
    // closed loop's last requests, an overloaded server's queue draining).
    let last = shared.last_answer.map_or(end, |last| last.max(end));
    shared.outcome.elapsed = last - start;
    if let Pacing::Open { rate_per_s } = spec.pacing {
        shared.outcome.due = Some((rate_per_s * spec.duration.as_secs_f64()).ceil() as u64);
    }
    shared.outcome
}

/// Loopback addresses each run may use (127.0.0.1 up to 127.255.255.254).
const SOURCE_HOSTS: u32 = (1 << 24) - 2;

/// Addresses reserved per run: enough for the most connections a run opens.
const SOURCE_HOSTS_PER_RUN: u32 = 64;

/// Runs started by this process, for [`first_source_host`].
static RUNS: AtomicU64 = AtomicU64::new(0);

/// The first source address of a new run. Each run takes fresh addresses, so connections of
/// the run before that the server has not yet seen close cannot count against a new one's
/// per-IP limit (which refuses them at accept).
fn first_source_host() -> u32 {
    let run = RUNS.fetch_add(1, Ordering::Relaxed);
    ((run as u32).wrapping_mul(SOURCE_HOSTS_PER_RUN)) % SOURCE_HOSTS
}

/// Source address of connection `index` of a run starting at host `first`: 127.0.0.0 +
/// first + 1, then the next address every [`CONNECTIONS_PER_SOURCE_IP`] connections.
fn source_ip(first: u32, index: usize) -> IpAddr {
    let host = (first + (index / CONNECTIONS_PER_SOURCE_IP) as u32) % SOURCE_HOSTS + 1;
    IpAddr::V4(Ipv4Addr::from(
        u32::from(Ipv4Addr::new(127, 0, 0, 0)) + host,
    ))
}

#[allow(clippy::too_many_arguments)]
async fn connection_loop(
    spec: LoadSpec,
    source: IpAddr,
    mut stream: Option<TcpStream>,
    start: Instant,
    end: Instant,
    shared: &Mutex<Shared>,
    next: &AtomicU64,
    pool: &RequestPool,
) {
    let mut buf = Vec::with_capacity(4096);
    loop {
        let index = next.fetch_add(1, Ordering::Relaxed);
        let due = match spec.pacing {
            Pacing::Open { rate_per_s } => {
                let due = start + Duration::from_secs_f64(index as f64 / rate_per_s);
                // A request still unsent when the window closes is not sent late: a generator
                // that fell behind would otherwise run on long after the window (its shortfall
                // shows as `not_sent`).
                if due >= end || Instant::now() >= end {
                    return;
                }
                tokio::time::sleep_until(due.into()).await;
                due
            }
            Pacing::Closed => {
                let now = Instant::now();
                if now >= end {
                    return;
                }
                now
            }
        };
        let Some(request) = pool.take(index, shared) else {
            return;
        };
        let answer = tokio::time::timeout(
            REQUEST_TIMEOUT,
            exchange(&mut stream, spec.addr, source, request, &mut buf),
        )
        .await
        .unwrap_or_else(|_| Err("no answer within the request timeout".to_string()));
        let now = Instant::now();
        let latency = now - due;
        let mut shared = lock(shared);
        shared.last_answer = Some(now);
        let outcome = &mut shared.outcome;
        outcome.sent += 1;
        match answer {
            Ok((status, body_bytes)) if (200..300).contains(&status) => {
                outcome.ok += 1;
                outcome.ok_bytes += body_bytes as u64;
                outcome.ok_latency.record(latency);
            }
            Ok((429, _)) => {
                outcome.rejected += 1;
                outcome.reject_latency.record(latency);
            }
            Ok((status, _)) => {
                outcome.errors += 1;
                outcome
                    .first_error
                    .get_or_insert_with(|| format!("HTTP status {status}"));
            }
            Err(error) => {
                stream = None;
                outcome.errors += 1;
                outcome.first_error.get_or_insert(error);
            }
        }
    }
}

/// An open loop's window and rate.
#[derive(Clone, Copy)]
struct Window {
    start: Instant,
    end: Instant,
    rate_per_s: f64,
}

/// One connection of a pipelined open loop: a writer sends each request it takes when it is
/// due, while up to `pipeline_depth` are unanswered (beyond that it waits, and the wait
/// counts in the latency), and a reader takes the answers in order. A broken connection ends
/// the loop; its unanswered requests count as errors.
#[allow(clippy::too_many_arguments)]
async fn pipelined_loop(
    spec: LoadSpec,
    pipeline_depth: usize,
    source: IpAddr,
    stream: Option<TcpStream>,
    window: Window,
    shared: &Mutex<Shared>,
    next: &AtomicU64,
    pool: &RequestPool,
) {
    let stream = match connected(stream, spec.addr, source).await {
        Ok(stream) => stream,
        Err(error) => return count_error(shared, error),
    };
    let (mut reader, mut writer) = stream.into_split();
    let (due_tx, mut due_rx) = tokio::sync::mpsc::channel::<Instant>(pipeline_depth);
    // The write half outlives the writer: dropping it would shut our side down, and a server
    // may then drop the answers still owed on the connection.
    let writer = &mut writer;
    let write = async move {
        loop {
            let index = next.fetch_add(1, Ordering::Relaxed);
            let due = window.start + Duration::from_secs_f64(index as f64 / window.rate_per_s);
            if due >= window.end || Instant::now() >= window.end {
                return Ok(());
            }
            tokio::time::sleep_until(due.into()).await;
            let Some(request) = pool.take(index, shared) else {
                return Ok(());
            };
            // A full pipeline waits here for an answer: the request goes out late, and its
            // latency from `due` says so.
            let Ok(permit) = due_tx.reserve().await else {
                return Ok(());
            };
            writer
                .write_all(request)
                .await
                .map_err(|e| format!("write: {e}"))?;
            permit.send(due);
        }
    };
    let read = async move {
        let mut buf = Vec::with_capacity(4096);
        while let Some(due) = due_rx.recv().await {
            let answer = tokio::time::timeout(REQUEST_TIMEOUT, next_answer(&mut reader, &mut buf))
                .await
                .unwrap_or_else(|_| Err("no answer within the request timeout".to_string()));
            let now = Instant::now();
            let mut shared = lock(shared);
            shared.last_answer = Some(now);
            let outcome = &mut shared.outcome;
            match answer {
                Ok((status, body_bytes, close)) => {
                    outcome.sent += 1;
                    record_answer(outcome, status, body_bytes, now - due);
                    if close {
                        return Err("the server closed a pipelined connection".to_string());
                    }
                }
                Err(error) => {
                    // This request and every one still in the pipeline are lost.
                    let lost = 1 + due_rx.len() as u64;
                    outcome.sent += lost;
                    outcome.errors += lost;
                    outcome.first_error.get_or_insert(error.clone());
                    return Err(error);
                }
            }
        }
        Ok(())
    };
    let (written, _) = tokio::join!(write, read);
    if let Err(error) = written {
        count_error(shared, error);
    }
}

/// Counts one failed operation; the run keeps its first error.
fn count_error(shared: &Mutex<Shared>, error: String) {
    let mut shared = lock(shared);
    shared.outcome.errors += 1;
    shared.outcome.first_error.get_or_insert(error);
}

/// The connection opened before the window, or a new one where that failed.
async fn connected(
    stream: Option<TcpStream>,
    addr: SocketAddr,
    source: IpAddr,
) -> Result<TcpStream, String> {
    match stream {
        Some(stream) => Ok(stream),
        None => connect(addr, source)
            .await
            .map_err(|error| format!("connect: {error}")),
    }
}

/// The HTTP/2 generator's receive window per stream (hyper's client default).
const H2_STREAM_WINDOW_BYTES: u32 = 2 << 20;
/// The HTTP/2 generator's receive window per connection (hyper's client default).
const H2_CONNECTION_WINDOW_BYTES: u32 = 5 << 20;

/// The content type of every HTTP/2 request.
const CBOR: http::HeaderValue = http::HeaderValue::from_static("application/cbor");

/// What the connections of an HTTP/2 load share.
struct H2Load {
    shared: Arc<Mutex<Shared>>,
    next: Arc<AtomicU64>,
    pool: Arc<RequestPool>,
    /// The pool's requests as (URI, body), same order.
    requests: Arc<Vec<(http::Uri, Bytes)>>,
}

/// One connection of an HTTP/2 open loop, in one task: the next due request goes out as a new
/// stream once fewer than the server's stream limit are unanswered (the wait counts in its
/// latency, and a request still waiting when the window closes is not sent), and
/// every answer is taken as soon as it has come, before anything else is sent, so that its
/// latency is the server's and not the generator's. A broken connection ends the loop; the
/// requests it carried count as errors.
async fn h2_loop(
    spec: LoadSpec,
    source: IpAddr,
    stream: Option<TcpStream>,
    window: Window,
    load: H2Load,
) {
    let fail = |error: String| count_error(&load.shared, error);
    let stream = match connected(stream, spec.addr, source).await {
        Ok(stream) => stream,
        Err(error) => return fail(error),
    };
    // The receive windows of hyper's HTTP/2 client, which IC agents talk through (reqwest),
    // not the h2 crate's 64 KiB: with that, answers waiting to be read fill the connection
    // window, the server sends the rest of each answer in small pieces as the window opens,
    // and the client counts those against the connection (`too_many_data_frames`).
    let handshake = h2::client::Builder::new()
        .initial_window_size(H2_STREAM_WINDOW_BYTES)
        .initial_connection_window_size(H2_CONNECTION_WINDOW_BYTES)
        .handshake(stream)
        .await;
    let (mut sender, mut connection) = match handshake {
        Ok(handshake) => handshake,
        Err(error) => return fail(format!("HTTP/2 handshake: {error}")),
    };
    let mut ping_pong = connection.ping_pong();
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    // The server's SETTINGS (its stream limit among them) come before its answer to a PING:
    // until they are read the client knows no limit, and a burst of due requests would open
    // streams the server refuses.
    if let Some(ping_pong) = ping_pong.as_mut() {
        let pong = tokio::time::timeout(REQUEST_TIMEOUT, ping_pong.ping(h2::Ping::opaque())).await;
        let error = match pong {
            Ok(Ok(_pong)) => None,
            Ok(Err(error)) => Some(error.to_string()),
            Err(_) => Some("no answer within the request timeout".to_string()),
        };
        if let Some(error) = error {
            driver.abort();
            return fail(format!("HTTP/2 ping: {error}"));
        }
    }
    // The h2 client applies no bound of its own: `poll_ready` waits only while a stream it
    // knows to be over the server's limit waits to open, and it counts a stream as open only
    // once its connection task has written it, so a burst of requests sent before that task
    // runs all queue inside it. The loop therefore keeps at most the server's limit of
    // unanswered requests, and waits for an answer before sending more.
    let mut outcome = LoadOutcome::default();
    let mut last_answer = None;
    let mut in_flight = FuturesUnordered::new();
    // The request this connection took and has not sent yet: (index, due).
    let mut next: Option<(u64, Instant)> = None;
    let mut sending = true;
    loop {
        if sending && next.is_none() {
            let index = load.next.fetch_add(1, Ordering::Relaxed);
            let due = window.start + Duration::from_secs_f64(index as f64 / window.rate_per_s);
            if due >= window.end || Instant::now() >= window.end {
                sending = false;
            } else {
                next = Some((index, due));
            }
        }
        if !sending && in_flight.is_empty() {
            break;
        }
        let due = next.map_or(window.end, |(_, due)| due);
        tokio::select! {
            biased;
            Some((due, result)) = in_flight.next(), if !in_flight.is_empty() => {
                let now = Instant::now();
                last_answer = Some(now);
                outcome.sent += 1;
                match result {
                    Ok((status, bytes)) => record_answer(&mut outcome, status, bytes, now - due),
                    Err(error) => {
                        outcome.errors += 1;
                        outcome.first_error.get_or_insert(error);
                    }
                }
            }
            ready = async {
                if due > Instant::now() {
                    tokio::time::sleep_until(due.into()).await;
                }
                let ready = std::future::poll_fn(|cx| sender.poll_ready(cx));
                tokio::time::timeout_at(window.end.into(), ready).await
            }, if next.is_some() && in_flight.len() < sender.current_max_send_streams() => {
                let (index, due) = next.take().expect("a request was taken");
                match ready {
                    // A stream came free only after the window closed: not sent late.
                    Ok(Ok(())) if Instant::now() >= window.end => {
                        sending = false;
                        continue;
                    }
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => {
                        outcome.errors += 1;
                        outcome.first_error.get_or_insert(format!("HTTP/2 connection: {error}"));
                        sending = false;
                        continue;
                    }
                    // The window closed while every stream was taken: never sent.
                    Err(_) => {
                        sending = false;
                        continue;
                    }
                }
                if load.pool.take(index, &load.shared).is_none() {
                    sending = false;
                    continue;
                }
                let (uri, body) = &load.requests[index as usize % load.requests.len()];
                let request = http::Request::post(uri.clone())
                    .header(http::header::CONTENT_TYPE, CBOR)
                    .body(())
                    .expect("a valid request head");
                let sent = sender
                    .send_request(request, false)
                    .map_err(|error| format!("HTTP/2 request: {error}"))
                    .and_then(|(answer, mut body_out)| {
                        body_out
                            .send_data(body.clone(), true)
                            .map(|()| answer)
                            .map_err(|error| format!("HTTP/2 body: {error}"))
                    });
                match sent {
                    Ok(answer) => in_flight.push(async move {
                        let result = tokio::time::timeout(REQUEST_TIMEOUT, h2_answer(answer))
                            .await
                            .unwrap_or_else(|_| {
                                Err("no answer within the request timeout".to_string())
                            });
                        (due, result)
                    }),
                    Err(error) => {
                        outcome.errors += 1;
                        outcome.first_error.get_or_insert(error);
                        sending = false;
                    }
                }
            }
        }
    }
    drop(sender);
    driver.abort();
    let mut shared = lock(&load.shared);
    shared.outcome.merge(outcome);
    shared.last_answer = shared.last_answer.max(last_answer);
}

/// One HTTP/2 answer: its status and body length.
async fn h2_answer(answer: h2::client::ResponseFuture) -> Result<(u16, usize), String> {
    let answer = answer.await.map_err(|e| format!("HTTP/2 answer: {e}"))?;
    let status = answer.status().as_u16();
    let mut body = answer.into_body();
    let mut bytes = 0usize;
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|e| format!("HTTP/2 answer body: {e}"))?;
        bytes += chunk.len();
        if bytes > ANSWER_BODY_BYTES_MAX {
            return Err(format!("answer body over {ANSWER_BODY_BYTES_MAX} bytes"));
        }
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    Ok((status, bytes))
}

/// Counts one answer: 2xx with its latency, 429 with its latency, anything else an error.
fn record_answer(outcome: &mut LoadOutcome, status: u16, body_bytes: usize, latency: Duration) {
    match status {
        200..=299 => {
            outcome.ok += 1;
            outcome.ok_bytes += body_bytes as u64;
            outcome.ok_latency.record(latency);
        }
        429 => {
            outcome.rejected += 1;
            outcome.reject_latency.record(latency);
        }
        _ => {
            outcome.errors += 1;
            outcome
                .first_error
                .get_or_insert_with(|| format!("HTTP status {status}"));
        }
    }
}

/// Reads the next answer on a connection from `buf` and the socket, leaving any bytes of the
/// (pipelined) answers after it in `buf`: (status, body length, whether the server closes).
async fn next_answer(
    reader: &mut (impl AsyncRead + Unpin),
    buf: &mut Vec<u8>,
) -> Result<(u16, usize, bool), String> {
    let (head_len, answer) = loop {
        if let Some(parsed) = parse_head(buf)? {
            break parsed;
        }
        if buf.len() > ANSWER_HEAD_BYTES_MAX {
            return Err("answer head too long".into());
        }
        read_more(reader, buf).await?;
    };
    if answer.content_length > ANSWER_BODY_BYTES_MAX {
        return Err(format!("answer body of {} bytes", answer.content_length));
    }
    let total = head_len + answer.content_length;
    while buf.len() < total {
        read_more(reader, buf).await?;
    }
    buf.drain(..total);
    Ok((answer.status, answer.content_length, answer.close))
}

fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    shared
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Sends one request on the connection (opening it when there is none) and reads the answer:
/// (status, body length). A connection the server asked to close is dropped after the answer.
async fn exchange(
    stream: &mut Option<TcpStream>,
    addr: SocketAddr,
    source: IpAddr,
    request: &[u8],
    buf: &mut Vec<u8>,
) -> Result<(u16, usize), String> {
    if stream.is_none() {
        *stream = Some(
            connect(addr, source)
                .await
                .map_err(|e| format!("connect: {e}"))?,
        );
    }
    let conn = stream.as_mut().expect("connected above");
    conn.write_all(request)
        .await
        .map_err(|e| format!("write: {e}"))?;
    buf.clear();
    let (status, body_bytes, close) = next_answer(conn, buf).await?;
    if close {
        *stream = None;
    }
    Ok((status, body_bytes))
}

async fn read_more(conn: &mut (impl AsyncRead + Unpin), buf: &mut Vec<u8>) -> Result<(), String> {
    let mut chunk = [0u8; 4096];
    let n = conn
        .read(&mut chunk)
        .await
        .map_err(|e| format!("read: {e}"))?;
    if n == 0 {
        return Err("connection closed before the whole answer".into());
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

async fn connect(addr: SocketAddr, source: IpAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

#[derive(Debug, PartialEq, Eq)]
struct AnswerHead {
    status: u16,
    content_length: usize,
    close: bool,
}

/// Parses an HTTP/1.1 answer head once it is complete: `None` while it is not, an error for
/// anything this client does not speak (chunked bodies, a missing length).
fn parse_head(buf: &[u8]) -> Result<Option<(usize, AnswerHead)>, String> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| "answer head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut content_length = None;
    let mut close = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            content_length = Some(value.parse().map_err(|_| "bad content-length")?);
        } else if name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(format!("transfer-encoding {value} is not supported"));
        }
    }
    let content_length = content_length.ok_or("answer without content-length")?;
    Ok(Some((
        end + 4,
        AnswerHead {
            status,
            content_length,
            close,
        },
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server that answers each request on a connection 429 after `delay`, one at a time,
    /// writing every second answer together with the next (so answers arrive split and
    /// coalesced). Returns its address.
    async fn slow_server(delay: Duration) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut pending = Vec::new();
                    let mut answered = 0u64;
                    loop {
                        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                            let mut chunk = [0u8; 4096];
                            match conn.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                            continue;
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                        let length: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .map_or(0, |v| v.trim().parse().unwrap());
                        while buf.len() < end + 4 + length {
                            let mut chunk = [0u8; 4096];
                            match conn.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        buf.drain(..end + 4 + length);
                        tokio::time::sleep(delay).await;
                        pending.extend_from_slice(
                            b"HTTP/1.1 429 Too Many Requests\r\ncontent-length: 4\r\n\r\nbusy",
                        );
                        answered += 1;
                        if answered.is_multiple_of(2) || buf.is_empty() {
                            if conn.write_all(&pending).await.is_err() {
                                return;
                            }
                            pending.clear();
                        }
                    }
                });
            }
        });
        addr
    }

    #[test]
    fn a_pipelined_open_loop_offers_its_rate_however_slowly_the_server_answers() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let addr = runtime.block_on(slow_server(Duration::from_millis(40)));
        let pool = Arc::new(RequestPool {
            requests: vec![request_bytes("POST", "/x", Some(b"abc"))],
            reusable: true,
        });
        let spec = |pipeline_depth| LoadSpec {
            addr,
            pacing: Pacing::Open { rate_per_s: 200.0 },
            connections: 4,
            duration: Duration::from_secs(1),
            generator_core: None,
            wire: Wire::Http1 { pipeline_depth },
        };
        // One at a time, four connections answered every 40 ms carry at most 100/s.
        let single = runtime.block_on(run_async(spec(1), pool.clone()));
        let pipelined = runtime.block_on(run_async(spec(64), pool));
        assert!(single.sent <= 110, "{}", single.sent);
        assert_eq!(single.errors, 0, "{:?}", single.first_error);
        assert_eq!(single.rejected, single.sent);
        assert_eq!(pipelined.errors, 0, "{:?}", pipelined.first_error);
        // Every due request goes out (a few may miss the window on a loaded machine) and is
        // answered.
        assert!(pipelined.sent >= 180, "{}", pipelined.sent);
        assert_eq!(pipelined.rejected, pipelined.sent);
        // The queue built in the server: the last answers came long after they were due.
        let latency = pipelined.reject_latency.summary().unwrap();
        assert!(latency.p99 >= 500_000.0, "{latency:?}");
    }

    /// An HTTP/2 (h2c) server that answers every request 429 with a short body, reading the
    /// request body to its end first.
    /// An h2c server that answers every request 429 after `delay`, with at most
    /// `streams_max` streams open per connection (None: h2's default).
    async fn h2_server(streams_max: Option<u32>, delay: Duration) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut builder = h2::server::Builder::new();
                    if let Some(max) = streams_max {
                        builder.max_concurrent_streams(max);
                    }
                    let Ok(mut connection) = builder.handshake(conn).await else {
                        return;
                    };
                    while let Some(Ok((request, mut respond))) = connection.accept().await {
                        tokio::spawn(async move {
                            let mut body = request.into_body();
                            while let Some(Ok(chunk)) = body.data().await {
                                let _ = body.flow_control().release_capacity(chunk.len());
                            }
                            tokio::time::sleep(delay).await;
                            let answer = http::Response::builder().status(429).body(()).unwrap();
                            if let Ok(mut out) = respond.send_response(answer, false) {
                                let _ = out.send_data(Bytes::from_static(b"busy"), true);
                            }
                        });
                    }
                });
            }
        });
        addr
    }

    /// A one-second HTTP/2 open loop at `rate_per_s` over `connections` to `addr`.
    fn h2_open_loop(addr: SocketAddr, rate_per_s: f64, connections: usize) -> LoadSpec {
        LoadSpec {
            addr,
            pacing: Pacing::Open { rate_per_s },
            connections,
            duration: Duration::from_secs(1),
            generator_core: None,
            wire: Wire::Http2,
        }
    }

    /// A connection whose streams are all taken sends nothing more until one closes: the
    /// requests due meanwhile wait in the generator (and count as not sent if the window ends
    /// first), not in the h2 client's queue of streams waiting to open, which has no bound.
    #[test]
    fn an_http2_connection_sends_no_more_than_the_server_s_stream_limit_allows() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let addr = runtime.block_on(h2_server(Some(2), Duration::from_millis(100)));
        let pool = Arc::new(RequestPool {
            requests: vec![request_bytes("POST", "/api/x", Some(b"abc"))],
            reusable: true,
        });
        let outcome = runtime.block_on(run_async(h2_open_loop(addr, 200.0, 1), pool));
        assert_eq!(outcome.errors, 0, "{:?}", outcome.first_error);
        assert_eq!(outcome.due, Some(200));
        // Two streams answered every 100 ms: about 20 in the second, plus the two open and the
        // one waiting to open when it ends. Queued in the client, all 200 would have been sent.
        assert!(
            (10..=26).contains(&outcome.sent),
            "sent {} of {:?} due",
            outcome.sent,
            outcome.due
        );
        assert_eq!(outcome.rejected, outcome.sent);
        // Answers came until the end of the window and were not late by the whole backlog.
        assert!(
            outcome.elapsed < Duration::from_millis(1500),
            "{:?}",
            outcome.elapsed
        );
    }

    #[test]
    fn an_http2_open_loop_sends_its_rate_as_streams_and_counts_every_answer() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let addr = runtime.block_on(h2_server(None, Duration::ZERO));
        let pool = Arc::new(RequestPool {
            requests: vec![request_bytes("POST", "/api/x", Some(b"abc"))],
            reusable: true,
        });
        assert_eq!(
            pool.h2_parts(addr),
            vec![(
                format!("http://{addr}/api/x").parse::<http::Uri>().unwrap(),
                Bytes::from_static(b"abc")
            )]
        );
        let outcome = runtime.block_on(run_async(h2_open_loop(addr, 400.0, 4), pool));
        assert_eq!(outcome.errors, 0, "{:?}", outcome.first_error);
        assert!(outcome.sent >= 360, "{}", outcome.sent);
        assert_eq!(outcome.rejected, outcome.sent);
        assert_eq!(outcome.ok, 0);
        assert_eq!(outcome.reject_latency.count(), outcome.sent);
    }

    #[test]
    fn answer_heads_parse() {
        assert_eq!(parse_head(b"HTTP/1.1 200 OK\r\ncontent-le").unwrap(), None);
        let (len, head) = parse_head(
            b"HTTP/1.1 429 Too Many\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
        )
        .unwrap()
        .unwrap();
        assert_eq!(len, 63);
        assert_eq!(
            head,
            AnswerHead {
                status: 429,
                content_length: 5,
                close: true
            }
        );
        assert!(parse_head(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\n\r\n").is_err());
        assert!(parse_head(b"garbage\r\n\r\n").is_err());
    }

    #[test]
    fn sources_spread_over_loopback_addresses() {
        assert_eq!(source_ip(0, 0), IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)));
        assert_eq!(
            source_ip(0, CONNECTIONS_PER_SOURCE_IP),
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))
        );
        // The next run starts on fresh addresses; the last ones wrap to the start.
        assert_eq!(
            source_ip(SOURCE_HOSTS_PER_RUN, 0),
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, 65))
        );
        assert_eq!(
            source_ip(SOURCE_HOSTS - 1, CONNECTIONS_PER_SOURCE_IP),
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1))
        );
        // Enough addresses per run for the most connections a run opens.
        let most = super::super::OPEN_LOOP_CONNECTIONS.div_ceil(CONNECTIONS_PER_SOURCE_IP);
        assert!(most as u32 <= SOURCE_HOSTS_PER_RUN);
    }

    #[test]
    fn pools_hold_distinct_signed_requests() {
        let pool = RequestPool::build(Endpoint::SyncCall, 3);
        assert!(!pool.reusable);
        assert_eq!(pool.requests.len(), 3);
        assert_ne!(pool.requests[0], pool.requests[1]);
        let text = String::from_utf8_lossy(&pool.requests[0]);
        assert!(text.starts_with(&format!("POST /api/v3/canister/{}/call", target_canister())));
    }
}
