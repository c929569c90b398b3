//! Loopback tests: every node runs on one glommio executor per test, every wait is bounded.

use std::cell::Cell;
use std::future::Future;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::pin::Pin;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::future::or;
use glommio::timer::sleep;
use glommio::LocalExecutorBuilder;
use icn_codecs::{encode_frame, Encoder, FrameKind};

use super::wire::{Envelope, FrameReader, DECODE_ERROR_KINDS};
use super::*;
use crate::identity::tests::temp_dir;
use crate::registry::{NodeRecord, Subnet};

const ECHO: Route = Route(1);
const SLOW: Route = Route(2);

fn run<F: Future<Output = ()>>(test: impl FnOnce() -> F) {
    LocalExecutorBuilder::default()
        .io_memory(512 << 10)
        .make()
        .unwrap()
        .run(test());
}

/// A subnet of `n` nodes on free loopback ports; identities sorted by node id (index 0 is the
/// smallest, so it dials everybody).
struct Fixture {
    dir: PathBuf,
    registry: Arc<Registry>,
    identities: Vec<Identity>,
}

impl Fixture {
    fn new(n: usize) -> Fixture {
        let dir = temp_dir("tcp");
        let generated = Registry::create_local_subnet(&dir, n, 42_000).unwrap();
        let mut identities: Vec<Identity> = (0..n)
            .map(|i| Identity::load(&dir.join(format!("node-{i}"))).unwrap())
            .collect();
        identities.sort_by_key(|identity| identity.node_id());
        let mut subnets: Vec<Subnet> = generated.subnets().to_vec();
        for node in &mut subnets[0].nodes {
            node.tcp_addr = free_port();
        }
        let registry = Arc::new(Registry::new(1, subnets).unwrap());
        Fixture {
            dir,
            registry,
            identities,
        }
    }

    fn start(&self, i: usize, config: TcpConfig, calls: &Rc<Cell<u32>>) -> TcpTransport {
        TcpTransport::start(
            &self.identities[i],
            self.registry.clone(),
            router(calls),
            config,
        )
        .unwrap()
    }

    fn id(&self, i: usize) -> NodeId {
        self.identities[i].node_id()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> SocketAddr {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    probe.local_addr().unwrap()
}

fn test_config() -> TcpConfig {
    TcpConfig {
        keepalive_interval: Duration::from_millis(200),
        idle_timeout: Duration::from_secs(3),
        handshake_timeout: Duration::from_secs(2),
        reconnect_backoff_min: Duration::from_millis(20),
        reconnect_backoff_max: Duration::from_millis(400),
        request_timeout: Duration::from_secs(10),
        ..TcpConfig::default()
    }
}

/// Echo on ECHO; on SLOW, waits 10 s (to be cancelled). Counts every handler start.
fn router(calls: &Rc<Cell<u32>>) -> Router {
    let echo_calls = calls.clone();
    let slow_calls = calls.clone();
    Router::new()
        .route(ECHO, move |_ctx, request: Buf| {
            echo_calls.set(echo_calls.get() + 1);
            async move { Ok(request) }
        })
        .route(SLOW, move |_ctx, _request: Buf| {
            slow_calls.set(slow_calls.get() + 1);
            async move {
                sleep(Duration::from_secs(10)).await;
                Ok(Buf::empty())
            }
        })
}

/// Polls `condition` every 10 ms for at most `limit`.
async fn eventually(limit: Duration, condition: impl Fn() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if condition() {
            return true;
        }
        sleep(Duration::from_millis(10)).await;
    }
    condition()
}

fn connected(transport: &TcpTransport, peer: NodeId) -> Option<ConnId> {
    transport
        .peers()
        .into_iter()
        .find(|(p, _)| *p == peer)
        .map(|(_, id)| id)
}

#[test]
fn two_nodes_handshake_and_echo() {
    let fixture = Fixture::new(2);
    run(|| async move {
        let calls = Rc::new(Cell::new(0));
        let a = fixture.start(0, test_config(), &calls);
        let b = fixture.start(1, test_config(), &calls);
        assert!(
            eventually(Duration::from_secs(5), || {
                connected(&a, fixture.id(1)).is_some() && connected(&b, fixture.id(0)).is_some()
            })
            .await
        );
        let reply = a
            .rpc(
                fixture.id(1),
                ECHO,
                Priority::Normal,
                Buf::copy_from_slice(b"ping"),
            )
            .await;
        assert_eq!(reply.unwrap(), Buf::copy_from_slice(b"ping"));
        // The acceptor side can call the dialer over the same connection.
        let reply = b
            .rpc(
                fixture.id(0),
                ECHO,
                Priority::High,
                Buf::copy_from_slice(b"back"),
            )
            .await;
        assert_eq!(reply.unwrap(), Buf::copy_from_slice(b"back"));
        assert_eq!(calls.get(), 2);
        let missing = a
            .rpc(fixture.id(1), Route(99), Priority::Low, Buf::empty())
            .await;
        assert_eq!(missing, Err(RpcError::NoRoute(Route(99))));
        let stranger = NodeId([7; 32]);
        assert_eq!(
            a.rpc(stranger, ECHO, Priority::Low, Buf::empty()).await,
            Err(RpcError::NotConnected(stranger))
        );
        assert_eq!(a.peers().len(), 1);
    });
}

#[test]
fn hundred_megabyte_round_trip() {
    let fixture = Fixture::new(2);
    run(|| async move {
        let calls = Rc::new(Cell::new(0));
        let a = fixture.start(0, test_config(), &calls);
        let _b = fixture.start(1, test_config(), &calls);
        assert!(
            eventually(Duration::from_secs(5), || connected(&a, fixture.id(1))
                .is_some())
            .await
        );
        let body: Vec<u8> = (0..100_000_000u32).map(|i| (i % 251) as u8).collect();
        let request = Buf::from_vec(body);
        let reply = a
            .rpc(fixture.id(1), ECHO, Priority::Normal, request.clone())
            .await
            .unwrap();
        assert_eq!(reply.len(), request.len());
        assert!(reply == request);
    });
}

#[test]
fn oversized_messages_are_refused_on_send_and_in_flight_is_bounded() {
    let fixture = Fixture::new(2);
    run(|| async move {
        let calls = Rc::new(Cell::new(0));
        let config = TcpConfig {
            message_bytes_max: 1 << 10,
            requests_in_flight_max: 2,
            ..test_config()
        };
        let a = fixture.start(0, config.clone(), &calls);
        let _b = fixture.start(1, config, &calls);
        assert!(
            eventually(Duration::from_secs(5), || connected(&a, fixture.id(1))
                .is_some())
            .await
        );
        let big = Buf::from_vec(vec![0; 2 << 10]);
        assert_eq!(
            a.rpc(fixture.id(1), ECHO, Priority::Normal, big).await,
            Err(RpcError::MessageTooLarge {
                size_bytes: 2 << 10,
                limit_bytes: 1 << 10
            })
        );
        let peer = fixture.id(1);
        let slow = || a.rpc(peer, SLOW, Priority::Normal, Buf::empty());
        let third = async {
            sleep(Duration::from_millis(100)).await;
            a.rpc(peer, SLOW, Priority::Normal, Buf::empty()).await
        };
        let raced = or(
            async {
                let _ = futures_lite::future::zip(slow(), slow()).await;
                Err(RpcError::Local("slow calls finished first".into()))
            },
            third,
        )
        .await;
        assert_eq!(raced, Err(RpcError::TooManyInFlight { limit: 2 }));
    });
}

#[test]
fn dropping_an_rpc_cancels_the_remote_handler() {
    struct DropFlag(Rc<Cell<bool>>);
    impl Drop for DropFlag {
        fn drop(&mut self) {
            self.0.set(true);
        }
    }
    let fixture = Fixture::new(2);
    run(|| async move {
        let calls = Rc::new(Cell::new(0));
        let dropped = Rc::new(Cell::new(false));
        let flag = dropped.clone();
        let slow_router = Router::new().route(SLOW, move |_ctx, _req: Buf| {
            let guard = DropFlag(flag.clone());
            async move {
                sleep(Duration::from_secs(10)).await;
                drop(guard);
                Ok(Buf::empty())
            }
        });
        let config = TcpConfig {
            requests_in_flight_max: 1,
            ..test_config()
        };
        let a = fixture.start(0, config.clone(), &calls);
        let _b = TcpTransport::start(
            &fixture.identities[1],
            fixture.registry.clone(),
            slow_router,
            config,
        )
        .unwrap();
        assert!(
            eventually(Duration::from_secs(5), || connected(&a, fixture.id(1))
                .is_some())
            .await
        );
        let peer = fixture.id(1);
        let gave_up = or(
            async { Some(a.rpc(peer, SLOW, Priority::Normal, Buf::empty()).await) },
            async {
                sleep(Duration::from_millis(200)).await;
                None
            },
        )
        .await;
        assert!(gave_up.is_none());
        assert!(
            eventually(Duration::from_secs(2), || dropped.get()).await,
            "handler not cancelled"
        );
        // The slot was freed: with one request allowed in flight, another one goes through.
        let echo = a.rpc(peer, SLOW, Priority::Normal, Buf::empty());
        let retried = or(async { Some(echo.await) }, async {
            sleep(Duration::from_millis(100)).await;
            None
        })
        .await;
        assert!(
            retried.is_none(),
            "second call must be accepted and then wait, not be refused"
        );
    });
}

#[test]
fn restarted_peer_reconnects_with_a_larger_conn_id() {
    let fixture = Fixture::new(2);
    run(|| async move {
        let calls = Rc::new(Cell::new(0));
        // Node 0 dials; node 1 restarts.
        let a = fixture.start(0, test_config(), &calls);
        let b = fixture.start(1, test_config(), &calls);
        let peer = fixture.id(1);
        assert!(eventually(Duration::from_secs(5), || connected(&a, peer).is_some()).await);
        let first = connected(&a, peer).unwrap();
        drop(b);
        assert!(eventually(Duration::from_secs(5), || connected(&a, peer).is_none()).await);
        let _b = fixture.start(1, test_config(), &calls);
        assert!(eventually(Duration::from_secs(10), || connected(&a, peer).is_some()).await);
        let second = connected(&a, peer).unwrap();
        assert!(second > first, "{second:?} must be newer than {first:?}");
        let reply = a
            .rpc(peer, ECHO, Priority::Normal, Buf::copy_from_slice(b"again"))
            .await;
        assert_eq!(reply.unwrap(), Buf::copy_from_slice(b"again"));
    });
}

#[test]
fn a_node_outside_the_registry_is_refused() {
    let fixture = Fixture::new(1);
    // An outsider with a smaller id than the member, so that it is the one that dials.
    let outsider = (0..200)
        .map(|_| Identity::generate().unwrap())
        .find(|identity| identity.node_id() < fixture.id(0))
        .expect("a smaller id within 200 draws");
    let subnet = fixture.registry.subnet_of(fixture.id(0)).unwrap().clone();
    let record = NodeRecord {
        node_id: outsider.node_id(),
        cert_pem: None,
        quic_addr: free_port(),
        tcp_addr: free_port(),
        http_addr: None,
        metrics_addr: None,
    };
    let outsider_view = Arc::new(fixture.registry.add_node(&subnet, record).unwrap());
    run(|| async move {
        let member_calls = Rc::new(Cell::new(0));
        let member = fixture.start(0, test_config(), &member_calls);
        let outsider_calls = Rc::new(Cell::new(0));
        // Its registry view lists the member, so its RPC waits for a connection that never
        // comes: keep that wait short.
        let intruder_config = TcpConfig {
            request_timeout: Duration::from_millis(300),
            ..test_config()
        };
        let intruder = TcpTransport::start(
            &outsider,
            outsider_view,
            router(&outsider_calls),
            intruder_config,
        )
        .unwrap();
        assert!(
            eventually(Duration::from_secs(5), || member
                .stats()
                .handshakes_failed
                .get()
                >= 2)
            .await
        );
        assert!(member.peers().is_empty());
        assert!(intruder.peers().is_empty());
        assert_eq!(
            intruder
                .rpc(fixture.id(0), ECHO, Priority::Normal, Buf::empty())
                .await,
            Err(RpcError::NotConnected(fixture.id(0)))
        );
        assert_eq!(member_calls.get(), 0);
    });
}

#[test]
fn registry_removal_disconnects_and_readding_reconnects() {
    let fixture = Fixture::new(2);
    run(|| async move {
        let calls = Rc::new(Cell::new(0));
        let a = fixture.start(0, test_config(), &calls);
        let b = fixture.start(1, test_config(), &calls);
        let (id_a, id_b) = (fixture.id(0), fixture.id(1));
        assert!(eventually(Duration::from_secs(5), || connected(&a, id_b).is_some()).await);
        let first = connected(&a, id_b).unwrap();

        let without_b = Arc::new(fixture.registry.remove_node(id_b).unwrap());
        let removed_at = Instant::now();
        a.apply_registry(&without_b);
        assert!(
            eventually(Duration::from_secs(5), || {
                connected(&a, id_b).is_none() && connected(&b, id_a).is_none()
            })
            .await
        );
        assert!(removed_at.elapsed() < Duration::from_secs(5));
        // b was told why, rather than left to find out from a dead socket.
        let told = b.stats().goaways_received_by_reason[GoawayReason::NotInSubnet as usize].get();
        assert_eq!(told, 1);
        // And it stays out: the removed node is refused while the registry says so.
        sleep(Duration::from_millis(300)).await;
        assert!(connected(&a, id_b).is_none());

        let record = fixture.registry.node(id_b).unwrap().clone();
        let subnet = fixture.registry.subnet_of(id_a).unwrap().clone();
        let with_b = Arc::new(without_b.add_node(&subnet, record).unwrap());
        assert_eq!(with_b.version(), 3);
        a.apply_registry(&with_b);
        assert!(
            eventually(Duration::from_secs(10), || {
                connected(&a, id_b).is_some() && connected(&b, id_a).is_some()
            })
            .await
        );
        assert!(connected(&a, id_b).unwrap() > first);
    });
}

#[test]
fn refused_peers_are_disconnected_and_kept_out_until_allowed_again() {
    let fixture = Fixture::new(2);
    run(|| async move {
        let calls = Rc::new(Cell::new(0));
        let a = fixture.start(0, test_config(), &calls);
        let b = fixture.start(1, test_config(), &calls);
        let (id_a, id_b) = (fixture.id(0), fixture.id(1));
        assert!(eventually(Duration::from_secs(5), || connected(&a, id_b).is_some()).await);
        let first = connected(&a, id_b).unwrap();

        a.set_refused_peers([id_b]);
        assert!(
            eventually(Duration::from_secs(5), || {
                connected(&a, id_b).is_none() && connected(&b, id_a).is_none()
            })
            .await
        );
        let told = b.stats().goaways_received_by_reason[GoawayReason::ProtocolError as usize].get();
        assert_eq!(told, 1, "the refused peer is told why");
        // Whichever side dials, the refusal holds.
        sleep(Duration::from_millis(300)).await;
        assert!(connected(&a, id_b).is_none());

        a.set_refused_peers([]);
        assert!(
            eventually(Duration::from_secs(10), || {
                connected(&a, id_b).is_some() && connected(&b, id_a).is_some()
            })
            .await
        );
        assert!(connected(&a, id_b).unwrap() > first);
    });
}

/// A peer that speaks TLS but writes raw frames, from a plain thread (blocking std socket).
fn raw_peer(
    identity: &Identity,
    expected: NodeId,
    addr: SocketAddr,
) -> boring::ssl::SslStream<std::net::TcpStream> {
    let ctx = tls::client_context_builder(identity, Arc::new(|_| true))
        .unwrap()
        .build();
    let mut ssl = Ssl::new(&ctx).unwrap();
    tls::set_expected_peer(&mut ssl, expected).unwrap();
    // The server starts on another thread; retry until it listens (bounded).
    let deadline = Instant::now() + Duration::from_secs(5);
    let stream = loop {
        match std::net::TcpStream::connect(addr) {
            Ok(stream) => break stream,
            Err(error) if Instant::now() > deadline => panic!("cannot reach {addr}: {error}"),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    ssl.connect(stream).map_err(|e| e.to_string()).unwrap()
}

/// Reads until the server ends the connection; true when it did within the read timeout.
fn server_hung_up(stream: &mut boring::ssl::SslStream<std::net::TcpStream>) -> bool {
    let mut buf = [0u8; 256];
    for _ in 0..100 {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
    false
}

#[test]
fn oversized_truncated_and_misdirected_frames_drop_the_connection() {
    let fixture = Fixture::new(3);
    // Node 2 (largest id) serves; nodes 0 and 1 act as raw peers that may dial it.
    let server_addr = fixture.registry.node(fixture.id(2)).unwrap().tcp_addr;
    let server_id = fixture.id(2);
    let raw0 = Identity::load(&fixture.dir.join(find_dir(&fixture, 0))).unwrap();
    let raw1 = Identity::load(&fixture.dir.join(find_dir(&fixture, 1))).unwrap();
    let client = std::thread::spawn(move || {
        // Oversized: announce a body beyond message_bytes_max.
        let mut stream = raw_peer(&raw0, server_id, server_addr);
        let mut head = Vec::new();
        let request = wire::Envelope::Request {
            request_id: 1,
            route: ECHO,
            priority: Priority::Low,
        };
        wire::encode_head(&mut Encoder::default(), &request, 1 << 30, &mut head).unwrap();
        stream.write_all(&head).unwrap();
        let oversized_dropped = server_hung_up(&mut stream);
        // Truncated: half a header, then close.
        let mut stream = raw_peer(&raw1, server_id, server_addr);
        stream.write_all(&head[..7]).unwrap();
        let _ = stream.shutdown();
        drop(stream);
        // Garbage: a bad magic.
        let mut stream = raw_peer(&raw1, server_id, server_addr);
        stream.write_all(&[0xff; 64]).unwrap();
        let garbage_dropped = server_hung_up(&mut stream);
        (oversized_dropped, garbage_dropped)
    });
    run(|| async move {
        let calls = Rc::new(Cell::new(0));
        let config = TcpConfig {
            message_bytes_max: 1 << 20,
            ..test_config()
        };
        // Only node 2 runs; nodes 0 and 1 (smaller ids, so they are the dialers) are raw peers.
        let server = fixture.start(2, config, &calls);
        assert!(
            eventually(Duration::from_secs(10), || {
                server.stats().frames_oversized.get() == 1
                    && server.stats().frames_malformed.get() == 1
            })
            .await
        );
        assert_eq!(calls.get(), 0);
        drop(server);
    });
    let (oversized_dropped, garbage_dropped) = client.join().unwrap();
    assert!(oversized_dropped && garbage_dropped);
}

#[test]
fn inbound_from_a_node_we_should_dial_is_refused() {
    let fixture = Fixture::new(2);
    let server_addr = fixture.registry.node(fixture.id(0)).unwrap().tcp_addr;
    let server_id = fixture.id(0);
    // Node 1 has the larger id, so node 0 must dial it, never accept it.
    let larger = Identity::load(&fixture.dir.join(find_dir(&fixture, 1))).unwrap();
    let client = std::thread::spawn(move || {
        let mut stream = raw_peer(&larger, server_id, server_addr);
        server_hung_up(&mut stream)
    });
    run(|| async move {
        let calls = Rc::new(Cell::new(0));
        let server = fixture.start(0, test_config(), &calls);
        assert!(
            eventually(Duration::from_secs(5), || server
                .stats()
                .connections_refused
                .get()
                >= 1)
            .await
        );
        assert!(server.peers().is_empty());
    });
    assert!(client.join().unwrap());
}

#[test]
fn a_silent_peer_is_dropped_after_the_idle_timeout() {
    let fixture = Fixture::new(2);
    let server_addr = fixture.registry.node(fixture.id(1)).unwrap().tcp_addr;
    let server_id = fixture.id(1);
    let smaller = Identity::load(&fixture.dir.join(find_dir(&fixture, 0))).unwrap();
    let client = std::thread::spawn(move || {
        // Never answers the server's pings.
        let mut stream = raw_peer(&smaller, server_id, server_addr);
        let started = Instant::now();
        (server_hung_up(&mut stream), started.elapsed())
    });
    run(|| async move {
        let calls = Rc::new(Cell::new(0));
        let config = TcpConfig {
            keepalive_interval: Duration::from_millis(100),
            idle_timeout: Duration::from_millis(500),
            ..test_config()
        };
        let server = fixture.start(1, config, &calls);
        assert!(
            eventually(Duration::from_secs(5), || connected(&server, fixture.id(0))
                .is_some())
            .await
        );
        assert!(
            eventually(Duration::from_secs(5), || connected(&server, fixture.id(0))
                .is_none())
            .await
        );
    });
    let (hung_up, after) = client.join().unwrap();
    assert!(hung_up);
    assert!(
        after >= Duration::from_millis(400),
        "closed after {after:?}, before the idle timeout"
    );
}

/// The `node-<i>` directory holding the identity at sorted position `sorted`.
fn find_dir(fixture: &Fixture, sorted: usize) -> String {
    let wanted = fixture.id(sorted);
    (0..fixture.identities.len())
        .map(|i| format!("node-{i}"))
        .find(|dir| Identity::load(&fixture.dir.join(dir)).unwrap().node_id() == wanted)
        .unwrap()
}

#[test]
fn shutdown_sends_goaway_and_the_peer_fails_at_once() {
    let fixture = Fixture::new(2);
    run(|| async move {
        let calls = Rc::new(Cell::new(0));
        let a = fixture.start(0, test_config(), &calls);
        let b = fixture.start(1, test_config(), &calls);
        let id_a = fixture.id(0);
        assert!(eventually(Duration::from_secs(5), || connected(&b, id_a).is_some()).await);
        // b waits on a 10 s handler at a; a shuts down meanwhile.
        let waiting = b.rpc(id_a, SLOW, Priority::Normal, Buf::empty());
        let shutdown = async move {
            sleep(Duration::from_millis(200)).await;
            drop(a);
            Instant::now()
        };
        let (result, shut_at) = futures_lite::future::zip(waiting, shutdown).await;
        let waited = shut_at.elapsed();
        assert_eq!(result, Err(RpcError::ConnectionClosed));
        assert!(waited < Duration::from_secs(1), "failed after {waited:?}");
        let stats = b.stats();
        assert_eq!(stats.goaways_received.get(), 1);
        assert_eq!(
            stats.goaways_received_by_reason[GoawayReason::Shutdown as usize].get(),
            1
        );
        assert!(eventually(Duration::from_secs(2), || b.peers().is_empty()).await);
        assert_eq!(stats.rpc_errors[1].get(), 1, "one connection_closed error");
    });
}

/// Reads frames until the server hangs up; returns them (pings included).
fn frames_until_hangup(
    stream: &mut boring::ssl::SslStream<std::net::TcpStream>,
) -> (Vec<Envelope>, bool) {
    let config = TcpConfig::default();
    let mut reader = FrameReader::new(config.frame_limits(), config.codec_limits);
    let mut frames = Vec::new();
    for _ in 0..1000 {
        match stream.read(reader.want()) {
            Ok(0) => return (frames, true),
            Ok(n) => match reader.advance(n) {
                Ok(Some(frame)) => frames.push(frame.envelope),
                Ok(None) => {}
                Err(error) => panic!("server sent a bad frame: {error}"),
            },
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return (frames, false)
            }
            Err(_) => return (frames, true),
        }
    }
    (frames, false)
}

/// Reads frames until a Response arrives (skipping pings); panics on anything else.
fn next_response(
    stream: &mut boring::ssl::SslStream<std::net::TcpStream>,
    reader: &mut FrameReader,
) -> (Envelope, Vec<u8>) {
    for _ in 0..1000 {
        let n = stream.read(reader.want()).expect("server answers");
        assert!(n > 0, "server hung up instead of answering");
        if let Some(frame) = reader.advance(n).unwrap() {
            match frame.envelope {
                Envelope::Ping { .. } => continue,
                Envelope::Response { .. } => return (frame.envelope, frame.body),
                other => panic!("unexpected frame {other:?}"),
            }
        }
    }
    panic!("no response within 1000 reads");
}

fn frame(envelope: &Envelope, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    wire::encode_head(
        &mut Encoder::default(),
        envelope,
        body.len() as u64,
        &mut out,
    )
    .unwrap();
    out.extend_from_slice(body);
    out
}

fn goaway_reason(frames: &[Envelope]) -> Option<GoawayReason> {
    frames.iter().find_map(|envelope| match envelope {
        Envelope::Goaway { reason, .. } => Some(*reason),
        _ => None,
    })
}

#[test]
fn unknown_response_ids_bad_envelopes_and_unknown_kinds_are_counted() {
    let fixture = Fixture::new(3);
    let server_addr = fixture.registry.node(fixture.id(2)).unwrap().tcp_addr;
    let server_id = fixture.id(2);
    let raw0 = Identity::load(&fixture.dir.join(find_dir(&fixture, 0))).unwrap();
    let raw1 = Identity::load(&fixture.dir.join(find_dir(&fixture, 1))).unwrap();
    let client = std::thread::spawn(move || {
        let mut stream = raw_peer(&raw0, server_id, server_addr);
        // A response nobody asked for is ignored: the connection keeps serving.
        let stray = Envelope::Response {
            request_id: 777,
            status: icn_codecs::RpcStatus::Ok,
            error_message: String::new(),
        };
        stream.write_all(&frame(&stray, b"unasked")).unwrap();
        let request = Envelope::Request {
            request_id: 1,
            route: ECHO,
            priority: Priority::Normal,
        };
        stream.write_all(&frame(&request, b"still here")).unwrap();
        let config = TcpConfig::default();
        let mut reader = FrameReader::new(config.frame_limits(), config.codec_limits);
        let (response, body) = next_response(&mut stream, &mut reader);
        let echoed = matches!(
            response,
            Envelope::Response {
                request_id: 1,
                status: icn_codecs::RpcStatus::Ok,
                ..
            }
        ) && body == b"still here";
        // An envelope the FlatBuffers verifier rejects: Goaway(ProtocolError), then hang up.
        let mut bad = Vec::new();
        encode_frame(FrameKind::Request, &[0xff; 24], 0, &mut bad).unwrap();
        stream.write_all(&bad).unwrap();
        let (frames, hung_up) = frames_until_hangup(&mut stream);
        let bad_envelope_dropped =
            hung_up && goaway_reason(&frames) == Some(GoawayReason::ProtocolError);
        // A frame kind version 1 does not define.
        let mut stream = raw_peer(&raw1, server_id, server_addr);
        let mut unknown = frame(&Envelope::Ping { nonce: 1 }, b"");
        unknown[3] = 42;
        stream.write_all(&unknown).unwrap();
        let (frames, hung_up) = frames_until_hangup(&mut stream);
        let unknown_kind_dropped =
            hung_up && goaway_reason(&frames) == Some(GoawayReason::ProtocolError);
        (echoed, bad_envelope_dropped, unknown_kind_dropped)
    });
    run(|| async move {
        let calls = Rc::new(Cell::new(0));
        let server = fixture.start(2, test_config(), &calls);
        let invalid = DECODE_ERROR_KINDS
            .iter()
            .position(|k| *k == "invalid_flatbuffer")
            .unwrap();
        let unknown = DECODE_ERROR_KINDS
            .iter()
            .position(|k| *k == "unknown_frame_kind")
            .unwrap();
        assert!(
            eventually(Duration::from_secs(10), || {
                let stats = server.stats();
                stats.decode_errors[invalid].get() == 1 && stats.decode_errors[unknown].get() == 1
            })
            .await
        );
        let stats = server.stats();
        assert_eq!(stats.responses_unknown_id.get(), 1);
        assert_eq!(stats.frames_malformed.get(), 2);
        assert_eq!(stats.goaways_sent.get(), 2);
        assert_eq!(calls.get(), 1, "only the valid request ran");
        drop(server);
    });
    let (echoed, bad_envelope_dropped, unknown_kind_dropped) = client.join().unwrap();
    assert!(echoed, "the connection must survive a stray response");
    assert!(bad_envelope_dropped);
    assert!(unknown_kind_dropped);
}

#[test]
fn stats_are_published_into_the_standard_metrics() {
    use crate::metrics::StandardMetrics;
    use crate::metrics::{MetricsCollector, MetricsConfig, MetricsSchemaBuilder, ShardMetrics};
    let fixture = Fixture::new(2);
    run(|| async move {
        let mut builder = MetricsSchemaBuilder::new(MetricsConfig::default()).unwrap();
        let ids = StandardMetrics::declare(&mut builder).unwrap();
        let schema = builder.build();
        let shard = ShardMetrics::new(schema.clone(), 0);
        let (id_a, id_b) = (fixture.id(0), fixture.id(1));
        shard.set_registry_peers([id_b]);
        let metrics = TransportMetrics::new(ids, &shard);
        let calls = Rc::new(Cell::new(0));
        let config = TcpConfig {
            keepalive_interval: Duration::from_millis(50),
            ..test_config()
        };
        let a = fixture.start(0, config.clone(), &calls);
        let _b = fixture.start(1, config, &calls);
        assert!(eventually(Duration::from_secs(5), || connected(&a, id_b).is_some()).await);
        let reply = a
            .rpc(id_b, ECHO, Priority::Normal, Buf::from_vec(vec![7; 1000]))
            .await;
        assert_eq!(reply.unwrap().len(), 1000);
        let missing = a.rpc(id_b, Route(99), Priority::Low, Buf::empty()).await;
        assert_eq!(missing, Err(RpcError::NoRoute(Route(99))));
        // Idle for a few keep-alive intervals: pings and pongs give round-trip samples.
        sleep(Duration::from_millis(300)).await;
        a.publish_metrics(&metrics);
        // Publishing twice adds nothing new.
        a.publish_metrics(&metrics);
        let collector = MetricsCollector::new(schema, 1);
        shard.publish(&collector).unwrap();
        let text = collector.render();
        for line in [
            "icn_transport_connections_opened_total 1\n".to_string(),
            "icn_transport_active_connections 1\n".to_string(),
            format!(
                "icn_transport_sent_bytes_total{{peer=\"{}\"}} 1000\n",
                id_b.to_hex()
            ),
            format!(
                "icn_transport_received_bytes_total{{peer=\"{}\"}} 1000\n",
                id_b.to_hex()
            ),
            "icn_rpc_errors_total{kind=\"no_route\"} 1\n".to_string(),
            "icn_queue_depth{queue=\"tcp_rpcs_pending\",shard=\"0\"} 0\n".to_string(),
            // Both calls were answered (one with "no route"): one duration each, per route.
            format!("icn_rpc_duration_us_count{{route=\"{}\"}} 1\n", ECHO.0),
            "icn_rpc_duration_us_count{route=\"99\"} 1\n".to_string(),
        ] {
            assert!(text.contains(&line), "missing {line:?} in\n{text}");
        }
        assert!(metrics.rtt_us.count() >= 1, "no ping round trip recorded");
        assert_ne!(id_a, id_b);
    });
}

#[test]
fn inconsistent_configs_are_refused_at_start() {
    assert_eq!(TcpConfig::default().validate(), Ok(()));
    assert_eq!(test_config().validate(), Ok(()));
    let bad = [
        TcpConfig {
            write_chunk_bytes: 0,
            ..TcpConfig::default()
        },
        TcpConfig {
            read_buffer_bytes: 1024,
            ..TcpConfig::default()
        },
        TcpConfig {
            keepalive_interval: Duration::from_secs(60),
            ..TcpConfig::default()
        },
        TcpConfig {
            codec_limits: CodecLimits {
                message_bytes_max: 1024,
                ..CodecLimits::default()
            },
            ..TcpConfig::default()
        },
    ];
    for config in bad {
        assert!(config.validate().is_err(), "{config:?} accepted");
    }
}

#[test]
fn requests_over_the_peers_in_flight_limit_are_answered_overloaded() {
    let fixture = Fixture::new(2);
    run(|| async move {
        let calls = Rc::new(Cell::new(0));
        let client_config = TcpConfig {
            requests_in_flight_max: 4,
            ..test_config()
        };
        let server_config = TcpConfig {
            requests_in_flight_max: 1,
            ..test_config()
        };
        let a = fixture.start(0, client_config, &calls);
        let b = fixture.start(1, server_config, &calls);
        let peer = fixture.id(1);
        assert!(eventually(Duration::from_secs(5), || connected(&a, peer).is_some()).await);
        let first = a.rpc(peer, SLOW, Priority::Normal, Buf::empty());
        let second = async {
            sleep(Duration::from_millis(100)).await;
            a.rpc(peer, SLOW, Priority::Normal, Buf::empty()).await
        };
        let refused = or(
            async {
                let _ = first.await;
                Err(RpcError::Local("the slow call finished first".into()))
            },
            second,
        )
        .await;
        let Err(RpcError::Handler(message)) = refused else {
            panic!("expected an overload refusal, got {refused:?}");
        };
        assert!(message.starts_with("peer overloaded"), "{message}");
        assert_eq!(b.stats().requests_refused_in_flight.get(), 1);
        assert_eq!(calls.get(), 1, "the refused request ran no handler");
        // The connection survives a refusal.
        assert!(connected(&a, peer).is_some());
    });
}

/// RPCs pending and handlers running on every connection of `transport`.
fn in_flight(transport: &TcpTransport) -> (usize, usize) {
    let conns = transport.inner.conns.borrow();
    conns.values().fold((0, 0), |(pending, handlers), conn| {
        let (_, conn_pending, conn_handlers) = conn.depths();
        (pending + conn_pending, handlers + conn_handlers)
    })
}

/// The `tcp_rpcs_pending` and `tcp_handlers_running` gauges `publish_metrics` sets.
fn published_in_flight(transport: &TcpTransport) -> (i64, i64) {
    use crate::metrics::{MetricsConfig, MetricsSchemaBuilder, ShardMetrics, StandardMetrics};
    let mut builder = MetricsSchemaBuilder::new(MetricsConfig::default()).unwrap();
    let ids = StandardMetrics::declare(&mut builder).unwrap();
    let shard = ShardMetrics::new(builder.build(), 0);
    let metrics = TransportMetrics::new(ids, &shard);
    transport.publish_metrics(&metrics);
    (
        metrics.queue_depth("tcp_rpcs_pending").get(),
        metrics.queue_depth("tcp_handlers_running").get(),
    )
}

/// Waits (bounded) until neither side has an RPC pending or a handler running, on the
/// connections and in the published gauges.
async fn assert_nothing_in_flight(a: &TcpTransport, b: &TcpTransport) {
    assert!(
        eventually(Duration::from_secs(2), || in_flight(a) == (0, 0)
            && in_flight(b) == (0, 0))
        .await,
        "still in flight: a {:?}, b {:?}",
        in_flight(a),
        in_flight(b)
    );
    assert_eq!(published_in_flight(a), (0, 0));
    assert_eq!(published_in_flight(b), (0, 0));
}

/// Runs `futures` concurrently to completion.
async fn join_all(futures: impl IntoIterator<Item = impl Future<Output = ()>>) {
    let mut all: Pin<Box<dyn Future<Output = ()> + '_>> = Box::pin(async {});
    for future in futures {
        let before = all;
        all = Box::pin(async move {
            futures_lite::future::zip(before, future).await;
        });
    }
    all.await;
}

/// Many more RPCs than `requests_in_flight_max` on one connection, sequential and concurrent:
/// each finished handler must give its slot back, on both sides.
#[test]
fn far_more_rpcs_than_the_in_flight_limit_all_succeed() {
    const SEQUENTIAL: usize = 1_000;
    const CONCURRENT: usize = 64;
    const PER_WORKER: usize = 1_000 / CONCURRENT + 1;
    let fixture = Fixture::new(2);
    run(|| async move {
        let calls = Rc::new(Cell::new(0));
        let config = TcpConfig {
            requests_in_flight_max: 128,
            ..test_config()
        };
        let a = fixture.start(0, config.clone(), &calls);
        let b = fixture.start(1, config, &calls);
        let peer = fixture.id(1);
        assert!(eventually(Duration::from_secs(5), || connected(&a, peer).is_some()).await);
        for i in 0..SEQUENTIAL {
            let body = Buf::copy_from_slice(&(i as u64).to_le_bytes());
            let reply = a.rpc(peer, ECHO, Priority::Normal, body.clone()).await;
            assert_eq!(reply, Ok(body), "sequential rpc {i}");
        }
        let a = &a;
        let workers = (0..CONCURRENT).map(|worker| async move {
            for i in 0..PER_WORKER {
                let body = Buf::copy_from_slice(&((worker * PER_WORKER + i) as u64).to_le_bytes());
                let reply = a.rpc(peer, ECHO, Priority::Normal, body.clone()).await;
                assert_eq!(reply, Ok(body), "worker {worker} rpc {i}");
            }
        });
        join_all(workers).await;
        assert_eq!(calls.get() as usize, SEQUENTIAL + CONCURRENT * PER_WORKER);
        assert_eq!(b.stats().requests_refused_in_flight.get(), 0);
        assert_nothing_in_flight(a, &b).await;
    });
}

/// Handlers that fail, RPCs that are dropped, and RPCs that time out all give their slots back
/// on both sides: after many times `requests_in_flight_max` of each, a full window still works.
#[test]
fn failed_cancelled_and_timed_out_rpcs_leave_no_bookkeeping() {
    const WINDOW: usize = 8;
    const ROUNDS: usize = 3;
    const FAILING: Route = Route(3);
    let fixture = Fixture::new(2);
    run(|| async move {
        let calls = Rc::new(Cell::new(0));
        let config = TcpConfig {
            requests_in_flight_max: WINDOW,
            request_timeout: Duration::from_millis(300),
            ..test_config()
        };
        let a = fixture.start(0, config.clone(), &calls);
        let failing_router = router(&calls).route(FAILING, |_ctx, _request: Buf| async {
            sleep(Duration::from_millis(1)).await;
            Err(RpcError::Handler("refused on purpose".into()))
        });
        let b = TcpTransport::start(
            &fixture.identities[1],
            fixture.registry.clone(),
            failing_router,
            config,
        )
        .unwrap();
        let peer = fixture.id(1);
        assert!(a.wait_connected(peer, Duration::from_secs(5)).await);
        let (a, b) = (&a, &b);
        for _ in 0..ROUNDS {
            // Handlers that fail, at once (no route) or later.
            join_all((0..WINDOW).map(|i| async move {
                let route = if i % 2 == 0 { FAILING } else { Route(99) };
                let result = a.rpc(peer, route, Priority::Normal, Buf::empty()).await;
                assert!(
                    matches!(result, Err(RpcError::Handler(_) | RpcError::NoRoute(_))),
                    "{result:?}"
                );
            }))
            .await;
            // RPCs dropped while their handlers run (the peer gets a Cancel).
            join_all((0..WINDOW).map(|_| async move {
                let dropped = or(
                    async { Some(a.rpc(peer, SLOW, Priority::Normal, Buf::empty()).await) },
                    async {
                        sleep(Duration::from_millis(50)).await;
                        None
                    },
                )
                .await;
                assert_eq!(dropped, None);
            }))
            .await;
            // RPCs that run into the request timeout (cancelled at the peer too).
            join_all((0..WINDOW).map(|_| async move {
                let result = a.rpc(peer, SLOW, Priority::Normal, Buf::empty()).await;
                assert_eq!(result, Err(RpcError::Timeout));
            }))
            .await;
        }
        assert_nothing_in_flight(a, b).await;
        join_all((0..WINDOW).map(|i| async move {
            let body = Buf::copy_from_slice(&[i as u8]);
            assert_eq!(
                a.rpc(peer, ECHO, Priority::Normal, body.clone()).await,
                Ok(body)
            );
        }))
        .await;
        assert_eq!(b.stats().requests_refused_in_flight.get(), 0);
        let timeouts = a.stats().rpc_errors[RPC_ERROR_KINDS
            .iter()
            .position(|k| *k == "timeout")
            .unwrap()]
        .get();
        assert_eq!(timeouts, (ROUNDS * WINDOW) as u64);
    });
}

/// RPCs in flight when the connection is lost fail at once and leave nothing pending.
#[test]
fn rpcs_pending_when_the_connection_is_lost_fail_and_leave() {
    const WINDOW: usize = 8;
    let fixture = Fixture::new(2);
    run(|| async move {
        let calls = Rc::new(Cell::new(0));
        let a = fixture.start(0, test_config(), &calls);
        let b = fixture.start(1, test_config(), &calls);
        let peer = fixture.id(1);
        assert!(a.wait_connected(peer, Duration::from_secs(5)).await);
        let conn = a.inner.usable_conn(peer).unwrap();
        let a = &a;
        let calls_in_flight = join_all((0..WINDOW).map(|_| async move {
            let result = a.rpc(peer, SLOW, Priority::Normal, Buf::empty()).await;
            assert_eq!(result, Err(RpcError::ConnectionClosed));
        }));
        let lost_at = async {
            assert!(eventually(Duration::from_secs(2), || calls.get() == WINDOW as u32).await);
            assert_eq!(conn.depths().1, WINDOW);
            b.shutdown().await;
            Instant::now()
        };
        let ((), lost_at) = futures_lite::future::zip(calls_in_flight, lost_at).await;
        assert!(lost_at.elapsed() < Duration::from_millis(500));
        assert_eq!(conn.depths(), (0, 0, 0));
        assert_eq!(in_flight(a), (0, 0));
    });
}

/// Like QUIC, an RPC to a registry peer waits (within the request timeout) for a connection
/// that is being set up, in both directions; one to a stranger fails at once.
#[test]
fn rpcs_wait_for_a_connection_being_established() {
    let fixture = Fixture::new(2);
    run(|| async move {
        let calls = Rc::new(Cell::new(0));
        let (id_a, id_b) = (fixture.id(0), fixture.id(1));
        let config = TcpConfig {
            request_timeout: Duration::from_secs(3),
            ..test_config()
        };
        // a dials b, which is not up yet.
        let a = fixture.start(0, config.clone(), &calls);
        assert!(!a.wait_connected(id_b, Duration::from_millis(50)).await);
        assert_eq!(a.conn_of(id_b), None);
        let stranger = NodeId([7; 32]);
        let started = Instant::now();
        assert_eq!(
            a.rpc(stranger, ECHO, Priority::Normal, Buf::empty()).await,
            Err(RpcError::NotConnected(stranger))
        );
        assert!(!a.wait_connected(stranger, Duration::from_secs(5)).await);
        assert!(started.elapsed() < Duration::from_millis(100));
        let waiting = a.rpc(id_b, ECHO, Priority::Normal, Buf::copy_from_slice(b"early"));
        let late_start = async {
            sleep(Duration::from_millis(200)).await;
            fixture.start(1, config.clone(), &calls)
        };
        let (reply, b) = futures_lite::future::zip(waiting, late_start).await;
        assert_eq!(reply, Ok(Buf::copy_from_slice(b"early")));
        assert_eq!(a.conn_of(id_b), connected(&a, id_b));
        assert!(a.conn_of(id_b).is_some());
        // The acceptor waits for the dialer to come back after a restart.
        a.shutdown().await;
        drop(a);
        // Once b has read the Goaway, its RPC waits for the next connection.
        assert!(eventually(Duration::from_secs(2), || b.conn_of(id_a).is_none()).await);
        let waiting = b.rpc(id_a, ECHO, Priority::Normal, Buf::copy_from_slice(b"back"));
        let restart = async {
            sleep(Duration::from_millis(100)).await;
            fixture.start(0, config.clone(), &calls)
        };
        let (reply, _a) = futures_lite::future::zip(waiting, restart).await;
        assert_eq!(reply, Ok(Buf::copy_from_slice(b"back")));
        assert!(b.wait_connected(id_a, Duration::ZERO).await);
    });
}

/// A peer in the registry that never comes up: the RPC fails NotConnected at its timeout.
#[test]
fn an_rpc_waiting_for_a_connection_gives_up_at_the_request_timeout() {
    let fixture = Fixture::new(2);
    run(|| async move {
        let calls = Rc::new(Cell::new(0));
        let config = TcpConfig {
            request_timeout: Duration::from_millis(200),
            ..test_config()
        };
        let a = fixture.start(0, config, &calls);
        let started = Instant::now();
        let peer = fixture.id(1);
        let result = a.rpc(peer, ECHO, Priority::Normal, Buf::empty()).await;
        let waited = started.elapsed();
        assert_eq!(result, Err(RpcError::NotConnected(peer)));
        assert!(waited >= Duration::from_millis(200), "{waited:?}");
        assert!(waited < Duration::from_secs(1), "{waited:?}");
        assert_eq!(a.inner.conn_waiters.len(), 0, "the waiter left");
    });
}

/// `shutdown` says Goaway, fails what waits, stops every task and frees the address at once;
/// clones share the transport.
#[test]
fn shutdown_stops_every_task_and_releases_the_address() {
    let fixture = Fixture::new(2);
    run(|| async move {
        let calls = Rc::new(Cell::new(0));
        let (id_a, id_b) = (fixture.id(0), fixture.id(1));
        let a = fixture.start(0, test_config(), &calls);
        let b = fixture.start(1, test_config(), &calls);
        assert!(b.wait_connected(id_a, Duration::from_secs(5)).await);
        assert!(a.wait_connected(id_b, Duration::from_secs(5)).await);
        let first = a.conn_of(id_b).unwrap();
        // b is the acceptor: its side of the connection lives in an accepted task. A silent
        // client holds one more accepted task in its handshake.
        let b_addr = fixture.registry.node(id_b).unwrap().tcp_addr;
        let _silent = std::net::TcpStream::connect(b_addr).unwrap();
        assert!(
            eventually(Duration::from_secs(2), || b
                .inner
                .handshakes_in_flight
                .get()
                == 1)
            .await
        );
        let clone = b.clone();
        let waiting = a.rpc(id_b, SLOW, Priority::Normal, Buf::empty());
        let shutdown = async {
            sleep(Duration::from_millis(100)).await;
            let started = Instant::now();
            clone.shutdown().await;
            // Well below the handshake timeout: the silent client's task was cancelled.
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "{:?}",
                started.elapsed()
            );
            Instant::now()
        };
        let (result, shut_at) = futures_lite::future::zip(waiting, shutdown).await;
        assert_eq!(result, Err(RpcError::ConnectionClosed));
        assert!(shut_at.elapsed() < Duration::from_millis(100));
        assert_eq!(
            a.stats().goaways_received_by_reason[GoawayReason::Shutdown as usize].get(),
            1
        );
        // Every task ended, every slot and waiter is free, and both handles see it.
        let inner = &b.inner;
        assert_eq!(inner.tasks_live.get(), 0);
        assert_eq!(inner.accepted.len(), 0);
        assert_eq!(inner.handshakes_in_flight.get(), 0);
        assert!(inner.dialers.borrow().is_empty() && inner.acceptor.borrow().is_none());
        assert!(b.peers().is_empty() && clone.peers().is_empty());
        assert_eq!(
            b.rpc(id_a, ECHO, Priority::Normal, Buf::empty()).await,
            Err(RpcError::NotConnected(id_a))
        );
        b.shutdown().await;
        // The address is free at once (no retry), and the peer reconnects to the new node.
        let b = fixture.start(1, test_config(), &calls);
        assert!(b.wait_connected(id_a, Duration::from_secs(5)).await);
        assert!(a.wait_connected(id_b, Duration::from_secs(5)).await);
        assert!(a.conn_of(id_b).unwrap() > first);
        let reply = a
            .rpc(id_b, ECHO, Priority::Normal, Buf::copy_from_slice(b"new"))
            .await;
        assert_eq!(reply, Ok(Buf::copy_from_slice(b"new")));
        drop(clone);
    });
}

/// Clones are handles to one transport: dropping one keeps it running, dropping the last one
/// closes its connections with a Goaway.
#[test]
fn the_last_clone_dropped_closes_the_transport() {
    let fixture = Fixture::new(2);
    run(|| async move {
        let calls = Rc::new(Cell::new(0));
        let (id_a, id_b) = (fixture.id(0), fixture.id(1));
        let a = fixture.start(0, test_config(), &calls);
        let b = fixture.start(1, test_config(), &calls);
        assert!(a.wait_connected(id_b, Duration::from_secs(5)).await);
        let a2 = a.clone();
        drop(a);
        sleep(Duration::from_millis(50)).await;
        let reply = a2
            .rpc(id_b, ECHO, Priority::Normal, Buf::copy_from_slice(b"x"))
            .await;
        assert_eq!(reply, Ok(Buf::copy_from_slice(b"x")));
        drop(a2);
        assert!(eventually(Duration::from_secs(2), || b.conn_of(id_a).is_none()).await);
        assert_eq!(
            b.stats().goaways_received_by_reason[GoawayReason::Shutdown as usize].get(),
            1
        );
    });
}
