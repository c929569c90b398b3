//! QUIC between two network namespaces over an impaired veth pair (root only).
//!
//! Node A lives in namespace `a`, node B in `b`; both run in this process, each on its own
//! thread that entered its namespace before creating its glommio executor. What A sends is
//! capped at 50 Mbit/s by a token bucket on A's veth; one in ten packets B sends is dropped by
//! nft as it arrives in A's namespace (B's veth segments GSO batches first, so the loss is per
//! packet, and B's `sendmsg` never sees the drop).
//!
//! 1. A sends B a 20 MB request; B answers with its length and checksum. The request crosses the
//!    cap, every ACK for it and the answer cross the loss: the RPC must complete in bounded time
//!    and its goodput must not beat the cap (else the cap is not real).
//! 2. B sends A a 2 MB request that A echoes: this time the data itself crosses the loss. (2 MB,
//!    not 20: at 10% random loss a loss-based congestion controller keeps its window near the
//!    minimum, so this leg runs at a few Mbit/s and 20 MB would take most of a minute.)
//!
//! Without root or without `ip`/`tc`/`nft` the test prints SKIP and passes, unless `CI=true`,
//! where it fails and names what is missing.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use icn_engine::registry::{Registry, Subnet};
use icn_engine::transport::quic::QuicTransport;
use icn_engine::{Buf, NodeId, Priority, Route, Router, Transport};
use icn_tests::net::{executor, quic_config, start_quic};
use icn_tests::netns::{self, enter_netns, NetnsPair};
use icn_tests::routes::ECHO;
use icn_tests::runtime::LocalFuture;
use icn_tests::subnet::LocalSubnet;

/// Answers with the request's length and FNV-1a checksum (16 bytes).
const DIGEST: Route = Route(4);
const CAPPED_BODY_BYTES: usize = 20_000_000;
const LOSSY_BODY_BYTES: usize = 2_000_000;
const RATE_BITS_PER_S: f64 = 50e6;
const RATE_TC: &str = "50mbit";
/// One packet in this many that B sends is dropped (10%).
const LOSS_ONE_IN: u32 = 10;
/// Each RPC must finish within this (the capped one alone needs 3.2 s at the rate).
const RPC_TIME_MAX: Duration = Duration::from_secs(20);
/// Everything the test waits for (connect, both RPCs, shutdown) ends within this.
const TEST_TIME_MAX: Duration = Duration::from_secs(50);
const CONNECT_TIME_MAX: Duration = Duration::from_secs(10);
const PORT: u16 = 4100;
/// The token bucket lets a burst through above the rate; goodput may exceed the rate by this
/// factor before the test calls the cap fake (a 64 KiB burst on 20 MB is 0.3%).
const RATE_TOLERANCE: f64 = 1.02;

/// One RPC as its caller saw it.
#[derive(Debug)]
struct Leg {
    started: Instant,
    finished: Instant,
    /// The caller's path to the peer at the end: (rtt, cwnd bytes, packets lost).
    path: Option<(Duration, usize, usize)>,
    /// Whether the RPC succeeded with the expected answer.
    outcome: Result<(), String>,
}

impl Leg {
    fn elapsed(&self) -> Duration {
        self.finished - self.started
    }
}

/// What the two node threads share with the test.
#[derive(Default)]
struct Control {
    /// When B's DIGEST handler had the whole 20 MB request.
    capped_arrival: Mutex<Option<Instant>>,
    /// Set by the test once the capped leg is done: B starts the lossy leg.
    start_lossy_leg: AtomicBool,
    /// Set by the test at the end: both nodes shut down.
    done: AtomicBool,
}

type Report = Result<Leg, String>;

#[test]
fn twenty_megabytes_over_a_capped_lossy_veth() {
    let _heavy = icn_tests::heavy_test_lock();
    const TEST: &str = "netns::twenty_megabytes_over_a_capped_lossy_veth";
    if !netns::can_run(TEST) {
        return;
    }
    let deadline = Instant::now() + TEST_TIME_MAX;
    let mut pair = NetnsPair::create().unwrap_or_else(|e| panic!("namespaces: {e}"));
    let (side_a, side_b) = (pair.a.clone(), pair.b.clone());
    pair.add_rate_cap(&side_a, RATE_TC)
        .unwrap_or_else(|e| panic!("tbf: {e}"));
    pair.segment_before_sending(&side_b)
        .unwrap_or_else(|e| panic!("gso_max_segs: {e}"));
    pair.add_ingress_loss(&side_a, LOSS_ONE_IN)
        .unwrap_or_else(|e| panic!("nft: {e}"));
    println!(
        "namespaces {} ({}) and {} ({}); {RATE_TC} cap a->b, 1 in {LOSS_ONE_IN} dropped b->a",
        side_a.netns, side_a.addr, side_b.netns, side_b.addr
    );
    let subnet = Arc::new(subnet_at(&[
        SocketAddr::from((side_a.addr, PORT)),
        SocketAddr::from((side_b.addr, PORT)),
    ]));
    let control = Arc::new(Control::default());
    let (a_tx, a_rx) = mpsc::channel();
    let (b_tx, b_rx) = mpsc::channel();
    let node_a = spawn_node(&side_a.netns, &subnet, &control, a_tx, run_node_a);
    let node_b = spawn_node(&side_b.netns, &subnet, &control, b_tx, run_node_b);

    let capped = receive(&a_rx, "A's 20 MB RPC", deadline);
    control.start_lossy_leg.store(true, Ordering::Release);
    let lossy = receive(&b_rx, "B's 2 MB RPC", deadline);
    control.done.store(true, Ordering::Release);
    for (name, node) in [("A", node_a), ("B", node_b)] {
        node.join()
            .unwrap_or_else(|_| panic!("node {name}'s thread panicked"));
    }
    let dropped = pair
        .dropped_packets(&side_a)
        .unwrap_or_else(|e| panic!("{e}"));
    let arrival = *control.capped_arrival.lock().unwrap();
    println!(
        "nft dropped {dropped} packets from B; A->B path (rtt, cwnd, lost) {:?}; B->A path {:?}",
        capped.path, lossy.path
    );
    check_capped_leg(&capped, arrival);
    check_lossy_leg(&lossy);
    assert!(
        dropped > 0,
        "the loss rule dropped nothing: the loss is not real"
    );
    drop(pair);
    println!("namespaces and nft tables removed");
}

fn check_capped_leg(leg: &Leg, arrival: Option<Instant>) {
    if let Err(error) = &leg.outcome {
        panic!("A's 20 MB RPC: {error}");
    }
    let arrival = arrival.expect("B's handler saw the 20 MB request");
    let request_time = arrival - leg.started;
    let goodput_bits_per_s = (CAPPED_BODY_BYTES * 8) as f64 / request_time.as_secs_f64();
    println!(
        "A->B: 20 MB request arrived after {request_time:?} ({:.1} Mbit/s through the cap), \
         answer back after {:?}",
        goodput_bits_per_s / 1e6,
        leg.elapsed()
    );
    assert!(leg.elapsed() <= RPC_TIME_MAX, "took {:?}", leg.elapsed());
    assert!(
        goodput_bits_per_s <= RATE_BITS_PER_S * RATE_TOLERANCE,
        "20 MB goodput {:.1} Mbit/s beats the {RATE_TC} cap: the cap is not real",
        goodput_bits_per_s / 1e6
    );
}

fn check_lossy_leg(leg: &Leg) {
    if let Err(error) = &leg.outcome {
        panic!("B's 2 MB RPC: {error}");
    }
    let goodput_bits_per_s = (LOSSY_BODY_BYTES * 8) as f64 / leg.elapsed().as_secs_f64();
    println!(
        "B->A: 2 MB echoed through 10% loss in {:?} ({:.1} Mbit/s)",
        leg.elapsed(),
        goodput_bits_per_s / 1e6
    );
    assert!(leg.elapsed() <= RPC_TIME_MAX, "took {:?}", leg.elapsed());
}

/// Waits for one report until `deadline`; panics with what went wrong.
fn receive(reports: &Receiver<Report>, what: &str, deadline: Instant) -> Leg {
    let left = deadline.saturating_duration_since(Instant::now());
    match reports.recv_timeout(left) {
        Ok(Ok(leg)) => leg,
        Ok(Err(error)) => panic!("{what}: {error}"),
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("{what}: no result within {TEST_TIME_MAX:?}")
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("{what}: the node's thread died"),
    }
}

/// Two nodes from a fresh local subnet, moved to `addrs` (QUIC and TCP on the same port).
fn subnet_at(addrs: &[SocketAddr]) -> LocalSubnet {
    let mut subnet = LocalSubnet::create_at("netns", addrs.len(), PORT);
    let mut subnets: Vec<Subnet> = subnet.registry().subnets().to_vec();
    for (record, addr) in subnets[0].nodes.iter_mut().zip(addrs) {
        record.quic_addr = *addr;
        record.tcp_addr = *addr;
        record.http_addr = None;
        record.metrics_addr = None;
    }
    let version = subnet.registry().version() + 1;
    subnet.set_registry(Registry::new(version, subnets).expect("moved registry is valid"));
    subnet
}

/// Runs `body` on a new thread inside `netns`, on its own executor.
fn spawn_node(
    netns: &str,
    subnet: &Arc<LocalSubnet>,
    control: &Arc<Control>,
    reports: Sender<Report>,
    body: NodeFn,
) -> thread::JoinHandle<()> {
    let (netns, subnet, control) = (netns.to_string(), subnet.clone(), control.clone());
    thread::spawn(move || {
        if let Err(error) = enter_netns(&netns) {
            let _ = reports.send(Err(error));
            return;
        }
        executor().run(body(subnet, control, reports));
    })
}

/// A node's life on its thread: start, its part of the test, serve until done, shut down.
type NodeFn = fn(Arc<LocalSubnet>, Arc<Control>, Sender<Report>) -> LocalFuture<()>;

fn run_node_a(
    subnet: Arc<LocalSubnet>,
    control: Arc<Control>,
    reports: Sender<Report>,
) -> LocalFuture<()> {
    Box::pin(async move {
        let router = Router::new().route(ECHO, |_ctx, request: Buf| async move { Ok(request) });
        let Some(node) = start(&subnet, 0, router, &reports).await else {
            return;
        };
        let body = patterned(CAPPED_BODY_BYTES);
        let expected = digest(&body);
        let leg = timed_rpc(&node, subnet.id(1), DIGEST, body, |reply| {
            (reply[..] == expected[..])
                .then_some(())
                .ok_or("digest differs".into())
        })
        .await;
        let _ = reports.send(Ok(leg));
        serve_until(&control.done).await;
        node.shutdown().await;
    })
}

fn run_node_b(
    subnet: Arc<LocalSubnet>,
    control: Arc<Control>,
    reports: Sender<Report>,
) -> LocalFuture<()> {
    Box::pin(async move {
        let arrival_control = control.clone();
        let router = Router::new().route(DIGEST, move |_ctx, request: Buf| {
            *arrival_control.capped_arrival.lock().unwrap() = Some(Instant::now());
            async move { Ok(Buf::copy_from_slice(&digest(&request))) }
        });
        let Some(node) = start(&subnet, 1, router, &reports).await else {
            return;
        };
        serve_until(&control.start_lossy_leg).await;
        if !control.done.load(Ordering::Acquire) {
            let body = patterned(LOSSY_BODY_BYTES);
            let sent = body.clone();
            let leg = timed_rpc(&node, subnet.id(0), ECHO, body, move |reply| {
                (reply == sent).then_some(()).ok_or("echo differs".into())
            })
            .await;
            let _ = reports.send(Ok(leg));
        }
        serve_until(&control.done).await;
        node.shutdown().await;
    })
}

/// Starts node `index` and waits for its peer; reports and returns None on failure.
async fn start(
    subnet: &LocalSubnet,
    index: usize,
    router: Router,
    reports: &Sender<Report>,
) -> Option<QuicTransport> {
    let mut config = quic_config(subnet.quic_addr(index), CAPPED_BODY_BYTES as u64);
    config.request_timeout = RPC_TIME_MAX;
    let node = match start_quic(subnet, index, config, router) {
        Ok(node) => node,
        Err(error) => {
            let _ = reports.send(Err(error));
            return None;
        }
    };
    let peer = subnet.id(1 - index);
    if !node.wait_connected(peer, CONNECT_TIME_MAX).await {
        let _ = reports.send(Err(format!("not connected within {CONNECT_TIME_MAX:?}")));
        node.shutdown().await;
        return None;
    }
    Some(node)
}

/// Lets the node serve until `flag` is set or the test's time is up.
async fn serve_until(flag: &AtomicBool) {
    let deadline = Instant::now() + TEST_TIME_MAX;
    while !flag.load(Ordering::Acquire) && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
}

async fn timed_rpc(
    node: &QuicTransport,
    peer: NodeId,
    route: Route,
    body: Buf,
    check: impl FnOnce(Buf) -> Result<(), String>,
) -> Leg {
    let started = Instant::now();
    let reply = node.rpc(peer, route, Priority::Normal, body).await;
    let finished = Instant::now();
    let outcome = reply
        .map_err(|e| format!("failed after {:?}: {e}", finished - started))
        .and_then(check);
    Leg {
        started,
        finished,
        path: node.path_stats(peer),
        outcome,
    }
}

fn patterned(len: usize) -> Buf {
    Buf::from_vec((0..len).map(|i| (i % 253) as u8).collect())
}

/// Length and FNV-1a 64 of `bytes`, little-endian.
fn digest(bytes: &[u8]) -> [u8; 16] {
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
    out[8..].copy_from_slice(&hash.to_le_bytes());
    out
}

#[test]
fn namespaces_are_removed_when_a_test_panics() {
    const TEST: &str = "netns::namespaces_are_removed_when_a_test_panics";
    if !netns::can_run(TEST) {
        return;
    }
    let mut pair = NetnsPair::create().unwrap_or_else(|e| panic!("namespaces: {e}"));
    let side_a = pair.a.clone();
    pair.add_ingress_loss(&side_a, LOSS_ONE_IN)
        .unwrap_or_else(|e| panic!("nft: {e}"));
    let names = [pair.a.netns.clone(), pair.b.netns.clone()];
    let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let _pair = pair;
        panic!("a failing test body (expected)");
    }));
    assert!(unwound.is_err());
    let listing = netns::run("ip", &["netns", "list"]).unwrap_or_else(|e| panic!("{e}"));
    for name in &names {
        assert!(
            !listing.contains(name.as_str()),
            "{name} survived: {listing}"
        );
    }
    println!("{names:?} created, a panic unwound, both removed");
}
