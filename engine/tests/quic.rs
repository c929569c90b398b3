//! Two (or three) QUIC endpoints on loopback, each with its own certificate, in one glommio executor.

use std::cell::Cell;
use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::rc::Rc;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use icn_engine::identity::Identity;
use icn_engine::tls::{self, PeerVerifier};
use icn_engine::transport::quic::{QuicConfig, QuicTransport};
use icn_engine::{Buf, NodeId, Priority, Route, Router, RpcError, Transport};

const ECHO: Route = Route(1);
const LEN: Route = Route(2);

fn executor() -> glommio::LocalExecutor {
    glommio::LocalExecutorBuilder::default()
        .io_memory(512 << 10)
        .make()
        .unwrap()
}

/// A node's identity plus the set of peers it currently allows (its view of the registry).
struct Node {
    identity: Identity,
    allowed: Arc<RwLock<HashMap<NodeId, SocketAddr>>>,
}

impl Node {
    fn new() -> Node {
        Node {
            identity: Identity::generate().unwrap(),
            allowed: Arc::default(),
        }
    }

    fn id(&self) -> NodeId {
        self.identity.node_id()
    }

    fn verifier(&self) -> PeerVerifier {
        let allowed = self.allowed.clone();
        Arc::new(move |peer: &NodeId| allowed.read().unwrap().contains_key(peer))
    }

    fn start(&self, config: QuicConfig, router: Router) -> QuicTransport {
        let server = tls::server_context_builder(&self.identity, self.verifier()).unwrap();
        let client = tls::client_context_builder(&self.identity, self.verifier()).unwrap();
        let allowed = self.allowed.read().unwrap().clone();
        QuicTransport::start(self.id(), server, client, config, router, allowed).unwrap()
    }

    fn allow(&self, peer: NodeId, addr: SocketAddr) {
        self.allowed.write().unwrap().insert(peer, addr);
    }

    fn allowed(&self) -> HashMap<NodeId, SocketAddr> {
        self.allowed.read().unwrap().clone()
    }
}

fn reserve_port() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.local_addr().unwrap()
}

fn config_at(addr: SocketAddr) -> QuicConfig {
    QuicConfig {
        listen_addr: addr,
        reconnect_backoff_initial: Duration::from_millis(50),
        reconnect_backoff_max: Duration::from_millis(500),
        request_timeout: Duration::from_secs(20),
        ..QuicConfig::default()
    }
}

fn router(served: Rc<Cell<u64>>) -> Router {
    let counter = served.clone();
    Router::new()
        .route(ECHO, move |_ctx, request: Buf| {
            counter.set(counter.get() + 1);
            async move { Ok(request) }
        })
        .route(LEN, |_ctx, request: Buf| async move {
            let sum = request
                .iter()
                .fold(0u64, |acc, b| acc.wrapping_mul(31).wrapping_add(*b as u64));
            let mut out = (request.len() as u64).to_le_bytes().to_vec();
            out.extend_from_slice(&sum.to_le_bytes());
            Ok(Buf::from_vec(out))
        })
}

/// Two mutually allowed nodes; `a` has the smaller id, so `a` dials.
fn pair() -> (Node, Node, SocketAddr, SocketAddr) {
    let (mut a, mut b) = (Node::new(), Node::new());
    if b.id() < a.id() {
        std::mem::swap(&mut a, &mut b);
    }
    let (addr_a, addr_b) = (reserve_port(), reserve_port());
    a.allow(b.id(), addr_b);
    b.allow(a.id(), addr_a);
    (a, b, addr_a, addr_b)
}

#[test]
fn handshake_and_rpc_both_ways() {
    let (a, b, addr_a, addr_b) = pair();
    executor().run(async move {
        let served_a = Rc::new(Cell::new(0));
        let served_b = Rc::new(Cell::new(0));
        let ta = a.start(config_at(addr_a), router(served_a.clone()));
        let tb = b.start(config_at(addr_b), router(served_b.clone()));
        assert!(ta.wait_connected(b.id(), Duration::from_secs(5)).await);
        assert!(tb.wait_connected(a.id(), Duration::from_secs(5)).await);

        let reply = ta
            .rpc(
                b.id(),
                ECHO,
                Priority::Normal,
                Buf::copy_from_slice(b"ping"),
            )
            .await
            .unwrap();
        assert_eq!(&reply[..], b"ping");
        let reply = tb
            .rpc(a.id(), ECHO, Priority::High, Buf::copy_from_slice(b"pong"))
            .await
            .unwrap();
        assert_eq!(&reply[..], b"pong");
        assert_eq!((served_a.get(), served_b.get()), (1, 1));

        // Unknown route: the peer answers NoRoute.
        let missing = ta.rpc(b.id(), Route(99), Priority::Low, Buf::empty()).await;
        assert_eq!(missing.err(), Some(RpcError::NoRoute(Route(99))));

        // Many concurrent RPCs on one connection.
        let mut tasks = Vec::new();
        for i in 0..64u32 {
            let ta = ta.clone();
            let peer = b.id();
            tasks.push(glommio::spawn_local(async move {
                let body = Buf::from_vec(i.to_le_bytes().repeat(256));
                let reply = ta.rpc(peer, ECHO, Priority::Normal, body.clone()).await;
                assert_eq!(reply, Ok(body), "rpc {i}");
            }));
        }
        for task in tasks {
            task.await;
        }
        assert_eq!(ta.peers().len(), 1);
        assert_eq!(ta.peers()[0].0, b.id());
        ta.shutdown().await;
        tb.shutdown().await;
    });
}

#[test]
fn hundred_megabyte_message() {
    let (a, b, addr_a, addr_b) = pair();
    executor().run(async move {
        let ta = a.start(config_at(addr_a), router(Rc::default()));
        let tb = b.start(config_at(addr_b), router(Rc::default()));
        assert!(ta.wait_connected(b.id(), Duration::from_secs(5)).await);
        let size = 100_000_000usize;
        let body: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let expected = body
            .iter()
            .fold(0u64, |acc, b| acc.wrapping_mul(31).wrapping_add(*b as u64));
        let started = Instant::now();
        let reply = ta
            .rpc(b.id(), LEN, Priority::Normal, Buf::from_vec(body))
            .await;
        eprintln!(
            "100 MB over QUIC in {:?}; path (rtt, cwnd, lost) {:?}",
            started.elapsed(),
            ta.path_stats(b.id())
        );
        let reply = reply.unwrap();
        assert_eq!(
            u64::from_le_bytes(reply[..8].try_into().unwrap()),
            size as u64
        );
        assert_eq!(
            u64::from_le_bytes(reply[8..16].try_into().unwrap()),
            expected
        );
        // Packets are full-size: the sender's datagrams average well above the 1200-byte minimum.
        let stats = ta.udp_stats();
        let average = stats.bytes_sent.get() / stats.datagrams_sent.get().max(1);
        assert!(average > 1300, "average datagram {average} bytes");
        ta.shutdown().await;
        tb.shutdown().await;
    });
}

#[test]
fn restart_reconnects_with_a_new_connection_id() {
    let (a, b, addr_a, addr_b) = pair();
    executor().run(async move {
        let ta = a.start(config_at(addr_a), router(Rc::default()));
        let tb = b.start(config_at(addr_b), router(Rc::default()));
        assert!(ta.wait_connected(b.id(), Duration::from_secs(5)).await);
        let first = ta.conn_of(b.id()).unwrap();
        tb.shutdown().await;
        drop(tb);
        // b comes back on the same address with the same identity.
        let tb = b.start(config_at(addr_b), router(Rc::default()));
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut second = None;
        while Instant::now() < deadline {
            if let Some(id) = ta.conn_of(b.id()) {
                if id != first {
                    second = Some(id);
                    break;
                }
            }
            glommio::timer::sleep(Duration::from_millis(20)).await;
        }
        let second = second.expect("reconnected within 10 s");
        assert!(
            second > first,
            "connection ids increase: {first:?} then {second:?}"
        );
        let reply = ta
            .rpc(
                b.id(),
                ECHO,
                Priority::Normal,
                Buf::copy_from_slice(b"again"),
            )
            .await
            .unwrap();
        assert_eq!(&reply[..], b"again");
        ta.shutdown().await;
        tb.shutdown().await;
    });
}

#[test]
fn node_outside_the_registry_is_refused() {
    let (a, b, addr_a, addr_b) = pair();
    // The stranger has the smallest id, so by the dialer rule it is the one that dials.
    let stranger = loop {
        let candidate = Node::new();
        if candidate.id() < a.id() {
            break candidate;
        }
    };
    let addr_s = reserve_port();
    // The stranger believes it may talk to both, but neither lists it.
    stranger.allow(a.id(), addr_a);
    stranger.allow(b.id(), addr_b);
    executor().run(async move {
        let served_a = Rc::new(Cell::new(0));
        let served_b = Rc::new(Cell::new(0));
        let ta = a.start(config_at(addr_a), router(served_a.clone()));
        let tb = b.start(config_at(addr_b), router(served_b.clone()));
        let ts = stranger.start(
            QuicConfig {
                request_timeout: Duration::from_secs(2),
                ..config_at(addr_s)
            },
            router(Rc::default()),
        );
        for peer in [a.id(), b.id()] {
            let result = ts
                .rpc(
                    peer,
                    ECHO,
                    Priority::Normal,
                    Buf::copy_from_slice(b"let me in"),
                )
                .await;
            assert!(result.is_err(), "stranger's RPC must fail");
        }
        assert_eq!(
            served_a.get() + served_b.get(),
            0,
            "no handler ran for the stranger"
        );
        assert!(ta.peers().iter().all(|(p, _)| *p != stranger.id()));
        assert!(tb.peers().iter().all(|(p, _)| *p != stranger.id()));
        // The members refuse the stranger inside TLS; each counts the failed handshake once the
        // refused connection is reaped.
        let counted = || ta.stats().handshakes_failed.get() + tb.stats().handshakes_failed.get();
        let deadline = Instant::now() + Duration::from_secs(3);
        while counted() == 0 && Instant::now() < deadline {
            glommio::timer::sleep(Duration::from_millis(20)).await;
        }
        assert!(counted() > 0, "the members counted the refused handshakes");
        ts.shutdown().await;
        ta.shutdown().await;
        tb.shutdown().await;
    });
}

#[test]
fn registry_removal_closes_and_readding_reconnects() {
    let (a, b, addr_a, addr_b) = pair();
    executor().run(async move {
        let ta = a.start(config_at(addr_a), router(Rc::default()));
        let tb = b.start(config_at(addr_b), router(Rc::default()));
        assert!(ta.wait_connected(b.id(), Duration::from_secs(5)).await);
        let first = ta.conn_of(b.id()).unwrap();

        // New registry version without b, seen by both nodes.
        a.allowed.write().unwrap().remove(&b.id());
        b.allowed.write().unwrap().remove(&a.id());
        let removed_at = Instant::now();
        ta.set_allowed_peers(a.allowed());
        tb.set_allowed_peers(b.allowed());
        while (ta.conn_of(b.id()).is_some() || tb.conn_of(a.id()).is_some())
            && removed_at.elapsed() < Duration::from_secs(5)
        {
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            ta.conn_of(b.id()).is_none() && tb.conn_of(a.id()).is_none(),
            "closed within 5 s"
        );

        a.allow(b.id(), addr_b);
        b.allow(a.id(), addr_a);
        let readded_at = Instant::now();
        tb.set_allowed_peers(b.allowed());
        ta.set_allowed_peers(a.allowed());
        assert!(
            ta.wait_connected(b.id(), Duration::from_secs(10)).await,
            "reconnected within 10 s"
        );
        assert!(readded_at.elapsed() < Duration::from_secs(10));
        assert!(ta.conn_of(b.id()).unwrap() > first);
        ta.shutdown().await;
        tb.shutdown().await;
    });
}

#[test]
fn garbage_datagrams_are_counted_not_fatal() {
    let (a, b, addr_a, addr_b) = pair();
    executor().run(async move {
        let ta = a.start(config_at(addr_a), router(Rc::default()));
        let tb = b.start(config_at(addr_b), router(Rc::default()));
        assert!(ta.wait_connected(b.id(), Duration::from_secs(5)).await);
        let junk = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for i in 0..200usize {
            let len = 1 + (i * 37) % 1400;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            junk.send_to(&bytes, addr_b).unwrap();
        }
        // Short-header packets with a plausible but unknown connection id.
        for _ in 0..20 {
            let mut packet = vec![0x40u8; 64];
            packet[1..17].copy_from_slice(&[7u8; 16]);
            junk.send_to(&packet, addr_b).unwrap();
        }
        glommio::timer::sleep(Duration::from_millis(200)).await;
        assert!(tb.stats().garbage_datagrams.get() > 0);
        let reply = ta
            .rpc(
                b.id(),
                ECHO,
                Priority::Normal,
                Buf::copy_from_slice(b"still up"),
            )
            .await
            .unwrap();
        assert_eq!(&reply[..], b"still up");
        ta.shutdown().await;
        tb.shutdown().await;
    });
}

#[test]
fn oversized_messages_are_refused_on_both_sides() {
    let (a, b, addr_a, addr_b) = pair();
    executor().run(async move {
        let limit = 1 << 20;
        // a believes larger messages are fine; b enforces 1 MiB.
        let ta = a.start(config_at(addr_a), router(Rc::default()));
        let tb = b.start(
            QuicConfig {
                message_bytes_max: limit,
                ..config_at(addr_b)
            },
            router(Rc::default()),
        );
        assert!(tb.wait_connected(a.id(), Duration::from_secs(5)).await);

        // Sender side: b refuses to send more than its limit.
        let too_big = Buf::from_vec(vec![1u8; limit as usize + 1]);
        let refused = tb
            .rpc(a.id(), ECHO, Priority::Normal, too_big.clone())
            .await;
        assert_eq!(
            refused.err(),
            Some(RpcError::MessageTooLarge {
                size_bytes: limit + 1,
                limit_bytes: limit
            })
        );
        // Receiver side: a sends it anyway; b resets the stream without reading the body.
        let result = ta.rpc(b.id(), ECHO, Priority::Normal, too_big).await;
        assert!(
            result.is_err(),
            "oversized request must fail, got {result:?}"
        );
        assert_eq!(tb.stats().oversized_messages.get(), 1);
        // ... and counts it as a decode error of kind limit_exceeded (icn_decode_errors_total).
        let limit_exceeded = icn_engine::transport::DECODE_ERROR_KINDS
            .iter()
            .position(|kind| *kind == "limit_exceeded")
            .unwrap();
        let counts: Vec<u64> = tb.stats().decode_errors.iter().map(|c| c.get()).collect();
        let mut expected = vec![0; counts.len()];
        expected[limit_exceeded] = 1;
        assert_eq!(counts, expected);
        // The connection survives.
        let reply = ta
            .rpc(b.id(), ECHO, Priority::Normal, Buf::copy_from_slice(b"ok"))
            .await
            .unwrap();
        assert_eq!(&reply[..], b"ok");
        ta.shutdown().await;
        tb.shutdown().await;
    });
}

#[test]
fn dropping_an_rpc_cancels_it_on_the_server() {
    let (a, b, addr_a, addr_b) = pair();
    executor().run(async move {
        let started = Rc::new(Cell::new(0u32));
        let finished = Rc::new(Cell::new(0u32));
        let (s, f) = (started.clone(), finished.clone());
        let slow = Router::new().route(ECHO, move |_ctx, request: Buf| {
            let (s, f) = (s.clone(), f.clone());
            async move {
                s.set(s.get() + 1);
                glommio::timer::sleep(Duration::from_secs(3)).await;
                f.set(f.get() + 1);
                Ok(request)
            }
        });
        let ta = a.start(config_at(addr_a), router(Rc::default()));
        let tb = b.start(config_at(addr_b), slow);
        assert!(ta.wait_connected(b.id(), Duration::from_secs(5)).await);
        let call = ta.rpc(
            b.id(),
            ECHO,
            Priority::Normal,
            Buf::copy_from_slice(b"slow"),
        );
        let outcome =
            glommio::timer::timeout(Duration::from_millis(300), async { Ok(call.await) }).await;
        assert!(
            outcome.is_err(),
            "the call was still running and is dropped"
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while started.get() == 1
            && Instant::now() < deadline
            && tb.stats().streams_reset_by_peer.get() == 0
        {
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(started.get(), 1);
        assert_eq!(
            tb.stats().streams_reset_by_peer.get(),
            1,
            "server saw the reset"
        );
        glommio::timer::sleep(Duration::from_millis(3200)).await;
        assert_eq!(finished.get(), 0, "the handler was cancelled");
        ta.shutdown().await;
        tb.shutdown().await;
    });
}

#[test]
fn unanswered_rpc_times_out_and_the_connection_keeps_serving() {
    let (a, b, addr_a, addr_b) = pair();
    executor().run(async move {
        // SLOW waits (so it is served by a task, not answered inline); ECHO answers at once.
        let slow = router(Rc::default()).route(LEN, |_ctx, request: Buf| async move {
            glommio::timer::sleep(Duration::from_millis(1500)).await;
            Ok(request)
        });
        let short = QuicConfig {
            request_timeout: Duration::from_millis(200),
            ..config_at(addr_a)
        };
        let ta = a.start(short, router(Rc::default()));
        let tb = b.start(config_at(addr_b), slow);
        assert!(ta.wait_connected(b.id(), Duration::from_secs(5)).await);
        let started = Instant::now();
        let outcome = ta
            .rpc(b.id(), LEN, Priority::Normal, Buf::copy_from_slice(b"x"))
            .await;
        let waited = started.elapsed();
        assert_eq!(outcome.err(), Some(RpcError::Timeout));
        assert!(
            waited >= Duration::from_millis(200) && waited < Duration::from_millis(1200),
            "timed out after {waited:?}"
        );
        assert_eq!(ta.stats().rpcs_failed.get(), 1);
        // Many quick RPCs after it: their deadlines are retired without timing anything out.
        for i in 0..300u32 {
            let body = Buf::from_vec(i.to_le_bytes().to_vec());
            let reply = ta.rpc(b.id(), ECHO, Priority::Normal, body.clone()).await;
            assert_eq!(reply, Ok(body));
        }
        assert_eq!(ta.stats().rpcs_failed.get(), 1);
        ta.shutdown().await;
        tb.shutdown().await;
    });
}

/// `text` (Prometheus exposition) has the line `series value`.
fn assert_metric(text: &str, series: &str, value: &str) {
    let line = format!("{series} {value}\n");
    assert!(text.contains(&line), "missing {line:?} in\n{text}");
}

#[test]
fn publish_metrics_reports_durations_errors_and_depths() {
    use icn_engine::metrics::{
        MetricsCollector, MetricsConfig, MetricsSchemaBuilder, ShardMetrics, StandardMetrics,
        TransportMetrics,
    };
    const SLOW: Route = Route(3);
    let (a, b, addr_a, addr_b) = pair();
    executor().run(async move {
        let mut builder = MetricsSchemaBuilder::new(MetricsConfig::default()).unwrap();
        let ids = StandardMetrics::declare(&mut builder).unwrap();
        let schema = builder.build();
        let collector = MetricsCollector::new(schema.clone(), 2);
        // One shard per endpoint, as in a node: queue depths are rendered per shard.
        let (shard_a, shard_b) = (
            ShardMetrics::new(schema.clone(), 0),
            ShardMetrics::new(schema, 1),
        );
        shard_a.set_registry_peers([b.id()]);
        shard_b.set_registry_peers([a.id()]);
        let (metrics_a, metrics_b) = (
            TransportMetrics::new(ids, &shard_a),
            TransportMetrics::new(ids, &shard_b),
        );
        let slow = router(Rc::default()).route(SLOW, |_ctx, request: Buf| async move {
            glommio::timer::sleep(Duration::from_millis(1500)).await;
            Ok(request)
        });
        let config_a = QuicConfig {
            request_timeout: Duration::from_millis(300),
            requests_in_flight_max: 1,
            message_bytes_max: 64 << 10,
            ..config_at(addr_a)
        };
        let ta = a.start(config_a, router(Rc::default()));
        let tb = b.start(config_at(addr_b), slow);
        assert!(ta.wait_connected(b.id(), Duration::from_secs(5)).await);
        assert!(tb.wait_connected(a.id(), Duration::from_secs(5)).await);
        let render = || {
            ta.publish_metrics(&metrics_a);
            tb.publish_metrics(&metrics_b);
            shard_a.publish(&collector).unwrap();
            shard_b.publish(&collector).unwrap();
            collector.render()
        };

        for _ in 0..5 {
            let reply = ta.rpc(
                b.id(),
                ECHO,
                Priority::Normal,
                Buf::copy_from_slice(b"ping"),
            );
            assert_eq!(&reply.await.unwrap()[..], b"ping");
        }
        let missing = ta.rpc(b.id(), Route(99), Priority::Low, Buf::empty()).await;
        assert_eq!(missing.err(), Some(RpcError::NoRoute(Route(99))));
        let oversized = Buf::from_vec(vec![0; (64 << 10) + 1]);
        let refused = ta.rpc(b.id(), ECHO, Priority::Normal, oversized).await;
        assert!(matches!(refused, Err(RpcError::MessageTooLarge { .. })));

        // One slow RPC fills a's only in-flight slot; the next is refused, then it times out.
        let slow_rpc = {
            let (ta, peer) = (ta.clone(), b.id());
            glommio::spawn_local(async move {
                ta.rpc(peer, SLOW, Priority::Normal, Buf::copy_from_slice(b"x"))
                    .await
            })
        };
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut text = render();
        while !text.contains("icn_queue_depth{queue=\"quic_handlers_running\",shard=\"1\"} 1\n")
            && Instant::now() < deadline
        {
            glommio::timer::sleep(Duration::from_millis(5)).await;
            text = render();
        }
        for (series, value) in [
            (
                "icn_queue_depth{queue=\"quic_handlers_running\",shard=\"1\"}",
                "1",
            ),
            (
                "icn_queue_depth{queue=\"quic_rpcs_pending\",shard=\"0\"}",
                "1",
            ),
            // The live deadline and the 6 of ended RPCs, which are dropped lazily.
            (
                "icn_queue_depth{queue=\"quic_rpc_deadlines\",shard=\"0\"}",
                "7",
            ),
            (
                "icn_queue_depth{queue=\"quic_streams_open\",shard=\"0\"}",
                "1",
            ),
            (
                "icn_queue_depth{queue=\"quic_streams_open\",shard=\"1\"}",
                "1",
            ),
            (
                "icn_queue_depth{queue=\"quic_connections\",shard=\"0\"}",
                "1",
            ),
        ] {
            assert_metric(&text, series, value);
        }
        let busy = ta.rpc(b.id(), ECHO, Priority::Normal, Buf::empty()).await;
        assert_eq!(busy.err(), Some(RpcError::TooManyInFlight { limit: 1 }));
        assert_eq!(slow_rpc.await.err(), Some(RpcError::Timeout));

        // b cancels the handler once the reset arrives; a forgets the stream at once.
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut text = render();
        while !text.contains("icn_queue_depth{queue=\"quic_handlers_running\",shard=\"1\"} 0\n")
            && Instant::now() < deadline
        {
            glommio::timer::sleep(Duration::from_millis(5)).await;
            text = render();
        }
        let (peer_a, peer_b) = (a.id().to_hex(), b.id().to_hex());
        for (series, value) in [
            // Answered RPCs only: 5 echoes, and the NoRoute answer of route 99.
            ("icn_rpc_duration_us_count{route=\"1\"}", "5"),
            ("icn_rpc_duration_us_count{route=\"99\"}", "1"),
            ("icn_rpc_errors_total{kind=\"timeout\"}", "1"),
            ("icn_rpc_errors_total{kind=\"too_many_in_flight\"}", "1"),
            ("icn_rpc_errors_total{kind=\"no_route\"}", "1"),
            ("icn_rpc_errors_total{kind=\"message_too_large\"}", "1"),
            ("icn_rpc_errors_total{kind=\"connection_closed\"}", "0"),
            ("icn_transport_active_connections", "2"),
            ("icn_transport_connections_opened_total", "2"),
            ("icn_transport_connections_closed_total", "0"),
            ("icn_transport_packets_lost_total", "0"),
            // Request bodies a sent: 5 × "ping" and "x"; response bodies: 5 × "ping".
            (
                &format!("icn_transport_sent_bytes_total{{peer=\"{peer_b}\"}}"),
                "21",
            ),
            (
                &format!("icn_transport_received_bytes_total{{peer=\"{peer_b}\"}}"),
                "20",
            ),
            (
                &format!("icn_transport_sent_bytes_total{{peer=\"{peer_a}\"}}"),
                "20",
            ),
            (
                &format!("icn_transport_received_bytes_total{{peer=\"{peer_a}\"}}"),
                "21",
            ),
            (
                "icn_queue_depth{queue=\"quic_handlers_running\",shard=\"1\"}",
                "0",
            ),
            (
                "icn_queue_depth{queue=\"quic_rpcs_pending\",shard=\"0\"}",
                "0",
            ),
            (
                "icn_queue_depth{queue=\"quic_streams_pending_send\",shard=\"0\"}",
                "0",
            ),
        ] {
            assert_metric(&text, series, value);
        }
        assert!(metrics_a.packets_sent.get() > 0 && metrics_b.packets_received.get() > 0);
        assert!(metrics_a.rtt_us.count() >= 2, "one RTT sample per publish");
        assert!(metrics_a.congestion_window_bytes_for(&b.id()).get() > 0);
        // Publishing again adds nothing: counters are published as differences.
        let again = render();
        assert_metric(&again, "icn_rpc_errors_total{kind=\"timeout\"}", "1");
        assert_metric(&again, "icn_rpc_duration_us_count{route=\"1\"}", "5");
        assert_metric(&again, "icn_transport_active_connections", "2");
        ta.shutdown().await;
        tb.shutdown().await;
        let closed = render();
        assert_metric(&closed, "icn_transport_active_connections", "0");
        assert_metric(&closed, "icn_transport_connections_closed_total", "2");
    });
}
