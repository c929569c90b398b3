//! The transport contract (engine/src/transport/mod.rs), checked the same way on every
//! transport. Each scenario is written once against [`TestNet`] and the `Transport` trait; the
//! `conformance!` macro at the bottom instantiates it for QUIC, TCP+TLS and memory.
//!
//! Differences between transports that the scenarios tolerate on purpose are listed in
//! `icn_tests::net`; the ones a scenario meets are noted where it meets them.

use std::rc::Rc;
use std::time::Duration;

use futures_lite::future::or;
use icn_engine::{Buf, ConnId, NodeId, Priority, RpcError, Transport};
use icn_tests::net::{NetSpec, TestNet};
use icn_tests::routes::{ECHO, EMPTY, SLOW, UNROUTED};
use icn_tests::runtime::join_all;

/// Bound on each single RPC of a scenario (real or virtual time).
const RPC_TIME_MAX: Duration = Duration::from_secs(10);

/// Sends `request` from `from` to `to` on `route` and waits at most [`RPC_TIME_MAX`].
async fn call<N: TestNet>(
    net: &N,
    from: usize,
    to: usize,
    route: icn_engine::Route,
    request: Buf,
) -> Result<Buf, RpcError> {
    let transport = net.node(from);
    let peer = net.id(to);
    net.runtime()
        .timeout(
            RPC_TIME_MAX,
            transport.rpc(peer, route, Priority::Normal, request),
        )
        .await
        .unwrap_or_else(|| {
            panic!(
                "[{}] rpc {from}->{to} ran past {RPC_TIME_MAX:?}",
                net.kind()
            )
        })
}

/// The connection id `node` lists for `peer`.
fn conn_to<N: TestNet>(net: &N, node: usize, peer: usize) -> Option<ConnId> {
    let peer: NodeId = net.id(peer);
    net.node(node)
        .peers()
        .into_iter()
        .find(|(id, _)| *id == peer)
        .map(|(_, conn)| conn)
}

/// A body whose bytes depend on `seed` and position, so a reordered or truncated echo shows.
fn patterned(len: usize, seed: u8) -> Buf {
    Buf::from_vec(
        (0..len)
            .map(|i| (i % 251) as u8 ^ seed.wrapping_mul(31))
            .collect(),
    )
}

/// RPCs both ways; the server's handler sees the caller's id and the connection it listed.
async fn echo_both_directions<N: TestNet>(net: Rc<N>) {
    for (from, to, text) in [(0, 1, &b"ping"[..]), (1, 0, &b"pong"[..])] {
        let served_before = net.probe(to).served.get();
        let reply = call(&*net, from, to, ECHO, Buf::copy_from_slice(text)).await;
        assert_eq!(reply.as_deref(), Ok(text), "echo {from}->{to}");
        assert_eq!(net.probe(to).served.get(), served_before + 1);
        let ctx = net.probe(to).last_context.get().expect("handler ran");
        assert_eq!(ctx.peer, net.id(from), "handler sees the caller's id");
        assert_eq!(ctx.route, ECHO);
        assert_eq!(
            Some(ctx.conn),
            conn_to(&*net, to, from),
            "handler's ConnId is the one peers() lists"
        );
        net.log(&format!("echo {from}->{to}: {} bytes back", text.len()));
    }
}

/// A route without a handler is answered NoRoute, and the connection stays usable.
async fn no_route<N: TestNet>(net: Rc<N>) {
    let before = conn_to(&*net, 0, 1);
    let reply = call(&*net, 0, 1, UNROUTED, Buf::copy_from_slice(b"anyone?")).await;
    assert_eq!(reply, Err(RpcError::NoRoute(UNROUTED)));
    let reply = call(&*net, 0, 1, ECHO, Buf::copy_from_slice(b"still here")).await;
    assert_eq!(reply.as_deref(), Ok(&b"still here"[..]));
    assert_eq!(
        conn_to(&*net, 0, 1),
        before,
        "same connection after NoRoute"
    );
    net.log("NoRoute answered; connection kept");
}

/// 64 RPCs in flight at once on one connection, each answered with its own body.
async fn sixty_four_concurrent_rpcs<N: TestNet>(net: Rc<N>) {
    const RPCS: usize = 64;
    let transport = net.node(0);
    let peer = net.id(1);
    let bodies: Vec<Buf> = (0..RPCS).map(|i| patterned(1024 + i, i as u8)).collect();
    let calls = bodies
        .iter()
        .map(|body| transport.rpc(peer, ECHO, Priority::Normal, body.clone()))
        .collect();
    let replies = net
        .runtime()
        .timeout(RPC_TIME_MAX, join_all(calls))
        .await
        .expect("64 RPCs within the time bound");
    for (i, (reply, body)) in replies.iter().zip(&bodies).enumerate() {
        assert_eq!(reply.as_ref(), Ok(body), "rpc {i}");
    }
    assert_eq!(net.probe(1).served.get(), RPCS as u64);
    net.log(&format!(
        "{RPCS} concurrent RPCs answered in order of their bodies"
    ));
}

/// A request over the limit is refused before anything is sent; the handler never runs.
async fn message_too_large_on_send<N: TestNet>(net: Rc<N>) {
    let limit = net.message_bytes_max();
    let too_big = Buf::from_vec(vec![7u8; limit as usize + 1]);
    let reply = call(&*net, 0, 1, ECHO, too_big).await;
    assert_eq!(
        reply,
        Err(RpcError::MessageTooLarge {
            size_bytes: limit + 1,
            limit_bytes: limit,
        })
    );
    assert_eq!(net.probe(1).served.get(), 0, "nothing reached the handler");
    let at_limit = patterned(limit as usize, 3);
    let reply = call(&*net, 0, 1, ECHO, at_limit.clone()).await;
    assert_eq!(reply, Ok(at_limit), "exactly the limit still passes");
    net.log(&format!(
        "{} bytes refused, {limit} bytes echoed",
        limit + 1
    ));
}

/// Empty bodies are messages like any other, in both directions.
async fn empty_request_and_response<N: TestNet>(net: Rc<N>) {
    let reply = call(&*net, 0, 1, ECHO, Buf::empty()).await;
    assert_eq!(reply.map(|b| b.len()), Ok(0), "empty request echoed");
    let reply = call(&*net, 1, 0, EMPTY, Buf::copy_from_slice(b"give me nothing")).await;
    assert_eq!(reply.map(|b| b.len()), Ok(0), "empty response");
    assert_eq!(net.probe(1).served.get() + net.probe(0).served.get(), 2);
    net.log("empty request and empty response delivered");
}

/// A 10 MB request echoed back whole.
async fn ten_megabyte_body<N: TestNet>(net: Rc<N>) {
    const SIZE: usize = 10_000_000;
    let body = patterned(SIZE, 10);
    let started = net.runtime().now();
    let reply = call(&*net, 0, 1, ECHO, body.clone()).await;
    let elapsed = net.runtime().now() - started;
    let reply = reply.expect("10 MB echo");
    assert_eq!(reply.len(), SIZE);
    assert!(reply == body, "10 MB echo differs");
    let clock = if net.runtime().is_virtual() {
        "virtual"
    } else {
        "real"
    };
    net.log(&format!("10 MB echoed in {elapsed:?} ({clock} time)"));
}

/// Every node lists every other with a ConnId; a node's ConnIds are distinct, and each handler
/// is told the ConnId its node lists for the caller.
async fn peers_list_conn_ids<N: TestNet>(net: Rc<N>) {
    assert!(net.len() >= 3, "needs three nodes");
    for node in 0..net.len() {
        let peers = net.node(node).peers();
        let mut expected: Vec<NodeId> = (0..net.len())
            .filter(|other| *other != node)
            .map(|other| net.id(other))
            .collect();
        expected.sort();
        let listed: Vec<NodeId> = peers.iter().map(|(id, _)| *id).collect();
        assert_eq!(
            listed, expected,
            "node {node} lists exactly the others, sorted"
        );
        let mut conns: Vec<ConnId> = peers.iter().map(|(_, conn)| *conn).collect();
        conns.sort();
        conns.dedup();
        assert_eq!(
            conns.len(),
            peers.len(),
            "node {node}'s ConnIds are distinct"
        );
        for caller in (0..net.len()).filter(|other| *other != node) {
            let reply = call(&*net, caller, node, ECHO, Buf::copy_from_slice(b"who am i")).await;
            assert!(reply.is_ok(), "{caller}->{node}: {reply:?}");
            let ctx = net.probe(node).last_context.get().expect("handler ran");
            assert_eq!(ctx.peer, net.id(caller));
            assert_eq!(Some(ctx.conn), conn_to(&*net, node, caller));
        }
        net.log(&format!("node {node} peers: {peers:?}"));
    }
}

/// Dropping an RPC future stops the handler on the server, and the connection stays usable.
async fn cancellation_by_drop<N: TestNet>(net: Rc<N>) {
    let runtime = net.runtime().clone();
    let probe = net.probe(1);
    let transport = net.node(0);
    let slow_call = transport.rpc(
        net.id(1),
        SLOW,
        Priority::Normal,
        Buf::copy_from_slice(b"zzz"),
    );
    // Race the call against "the handler started"; `or` returns when the handler is running and
    // drops the call with it.
    let raced = or(async { Some(slow_call.await) }, async {
        runtime
            .wait_until(RPC_TIME_MAX, || probe.slow_started.get() == 1)
            .await;
        None
    })
    .await;
    assert!(raced.is_none(), "the slow RPC returned early: {raced:?}");
    assert_eq!(
        probe.slow_started.get(),
        1,
        "handler started before the drop"
    );
    let dropped_at = runtime.now();
    let stopped = runtime
        .wait_until(Duration::from_secs(5), || probe.slow_dropped.get() == 1)
        .await;
    assert!(
        stopped,
        "the handler was not dropped within 5 s of the cancel"
    );
    assert_eq!(probe.slow_finished.get(), 0, "the handler never finished");
    net.log(&format!(
        "handler stopped {:?} after the caller dropped the RPC",
        runtime.now() - dropped_at
    ));
    let reply = call(&*net, 0, 1, ECHO, Buf::copy_from_slice(b"after")).await;
    assert_eq!(reply.as_deref(), Ok(&b"after"[..]));
}

/// A restarted peer is reached over a new connection with a larger ConnId.
async fn conn_ids_increase_after_restart<N: TestNet>(net: Rc<N>) {
    let runtime = net.runtime().clone();
    let first = conn_to(&*net, 0, 1).expect("connected before the restart");
    net.restart(1).await;
    net.log(&format!("node 1 restarted; node 0 had {first:?}"));
    let mut second = None;
    let reconnected = runtime
        .wait_until(Duration::from_secs(10), || {
            second = conn_to(&*net, 0, 1).filter(|conn| *conn != first);
            second.is_some()
        })
        .await;
    assert!(
        reconnected,
        "node 0 did not reconnect to node 1 within 10 s"
    );
    let second = second.expect("checked above");
    assert!(
        second > first,
        "ConnIds increase: {first:?} then {second:?}"
    );
    let reply = call(&*net, 0, 1, ECHO, Buf::copy_from_slice(b"again")).await;
    assert_eq!(reply.as_deref(), Ok(&b"again"[..]));
    let reply = call(&*net, 1, 0, ECHO, Buf::copy_from_slice(b"back")).await;
    assert_eq!(reply.as_deref(), Ok(&b"back"[..]));
    net.log(&format!("reconnected: {first:?} -> {second:?}"));
}

/// One test per (transport, scenario): `$nodes` nodes, memory seeded with `$seed`.
macro_rules! conformance {
    ($($scenario:ident: $nodes:expr, $seed:expr;)*) => {
        mod quic {
            $(#[test]
            fn $scenario() {
                icn_tests::net::drive_quic(super::NetSpec::conformance($nodes), super::$scenario);
            })*
        }
        mod tcp {
            $(#[test]
            fn $scenario() {
                icn_tests::net::drive_tcp(super::NetSpec::conformance($nodes), super::$scenario);
            })*
        }
        mod memory {
            $(#[test]
            fn $scenario() {
                icn_tests::net::drive_memory(super::NetSpec::conformance($nodes), $seed, super::$scenario);
            })*
        }
    };
}

conformance! {
    echo_both_directions: 2, 1;
    no_route: 2, 2;
    sixty_four_concurrent_rpcs: 2, 3;
    message_too_large_on_send: 2, 4;
    empty_request_and_response: 2, 5;
    ten_megabyte_body: 2, 6;
    peers_list_conn_ids: 3, 7;
    cancellation_by_drop: 2, 8;
    conn_ids_increase_after_restart: 2, 9;
}
