//! The memory transport under the simulator: RPCs, faults, partitions, crashes, limits, and
//! reproducibility from a seed. Every test prints its seed; `ICN_SIM_SEED=<n>` replays one.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use icn_engine::sim::{self, test_seed, Sim};
use icn_engine::transport::memory::{
    Delay, LinkFaults, MemoryConfig, MemoryNetwork, MemoryTransport, TraceKind,
};
use icn_engine::{Buf, ConnId, NodeId, Priority, Route, Router, RpcError, Transport};

const MS: Duration = Duration::from_millis(1);
const ECHO: Route = Route(1);
/// Sleeps for the number of milliseconds in the request's first byte, then echoes it.
const SLOW: Route = Route(2);
/// Answers with a payload as large as the little-endian u64 in the request.
const BIG: Route = Route(3);

fn node(i: u8) -> NodeId {
    NodeId([i; 32])
}

fn router() -> Router {
    Router::new()
        .route(ECHO, |_ctx, request: Buf| async move { Ok(request) })
        .route(SLOW, |_ctx, request: Buf| async move {
            sim::sleep(Duration::from_millis(u64::from(request[0]))).await;
            Ok(request)
        })
        .route(BIG, |_ctx, request: Buf| async move {
            let size = u64::from_le_bytes(request[..8].try_into().unwrap());
            Ok(Buf::from_vec(vec![0; size as usize]))
        })
}

fn config() -> MemoryConfig {
    MemoryConfig {
        message_bytes_max: 1 << 20,
        requests_in_flight_max: 32,
        rpc_timeout: 200 * MS,
        idle_timeout: Duration::from_secs(1),
    }
}

fn subnet(sim: &Sim, nodes: u8) -> (MemoryNetwork, Vec<MemoryTransport>) {
    let network = MemoryNetwork::new(sim, config());
    let transports = (0..nodes)
        .map(|i| network.join(node(i), router()))
        .collect();
    (network, transports)
}

fn conn_to(transport: &MemoryTransport, peer: NodeId) -> Option<ConnId> {
    transport
        .peers()
        .into_iter()
        .find(|(id, _)| *id == peer)
        .map(|(_, conn)| conn)
}

fn slow_request(millis: u8) -> Buf {
    Buf::from_vec(vec![millis; 4])
}

#[test]
fn echo_between_two_nodes_without_copies() {
    let mut sim = Sim::new(test_seed(1));
    let (network, nodes) = subnet(&sim, 2);
    let (a, b) = (nodes[0].clone(), nodes[1].clone());
    assert_eq!(a.peers(), vec![(node(1), ConnId(1))]);
    assert_eq!(b.peers(), vec![(node(0), ConnId(1))]);
    let request = Buf::copy_from_slice(b"ping");
    let sent = request.clone();
    let (echoed, missing) = sim
        .block_on(async move {
            let echoed = a.rpc(node(1), ECHO, Priority::High, sent).await;
            let missing = a
                .rpc(node(1), Route(99), Priority::Normal, Buf::empty())
                .await;
            (echoed, missing)
        })
        .unwrap();
    let echoed = echoed.unwrap();
    assert_eq!(&echoed[..], b"ping");
    assert!(echoed.same_storage(&request), "the payload was copied");
    assert_eq!(missing, Err(RpcError::NoRoute(Route(99))));
    let counters = network.counters(node(0));
    assert_eq!(
        (counters.messages_sent, counters.messages_delivered),
        (2, 2)
    );
    assert_eq!(counters.messages_received, 2);
    assert_eq!(network.exchanges_in_flight(), 0);
    assert_eq!(
        sim.now(),
        Duration::ZERO,
        "a perfect link delivers at the same instant"
    );
}

/// What one run of the faulty 7-node mesh produced.
#[derive(Debug, PartialEq)]
struct MeshRun {
    succeeded: u64,
    timed_out: u64,
    other_errors: u64,
    /// Responses that arrived in a different order from their requests, over all pairs.
    reordered: u64,
    trace_hash: u64,
    finished_at: Duration,
}

const MESH_NODES: u8 = 7;
const MESH_RPCS_PER_PAIR: u64 = 20;

/// Every ordered pair of 7 nodes sends 20 concurrent echo RPCs through loss, delay and reordering.
fn run_mesh(seed: u64) -> MeshRun {
    let mut sim = Sim::new(seed);
    let (network, nodes) = subnet(&sim, MESH_NODES);
    network.set_faults(LinkFaults {
        loss_probability: 0.05,
        delay: Delay::Exponential {
            min: MS,
            mean: 5 * MS,
            max: 50 * MS,
        },
    });
    network.set_link_faults(
        node(0),
        node(1),
        LinkFaults {
            loss_probability: 0.05,
            delay: Delay::Uniform {
                min: 10 * MS,
                max: 20 * MS,
            },
        },
    );
    let outcomes = Rc::new(RefCell::new(Vec::new()));
    for from in &nodes {
        for to in 0..MESH_NODES {
            if node(to) == from.local_id() {
                continue;
            }
            for sequence in 0..MESH_RPCS_PER_PAIR {
                let (from, outcomes) = (from.clone(), outcomes.clone());
                sim.spawn(async move {
                    let request = Buf::from_vec(sequence.to_le_bytes().to_vec());
                    let result = from.rpc(node(to), ECHO, Priority::Normal, request).await;
                    let echoed = result.map(|r| u64::from_le_bytes(r[..8].try_into().unwrap()));
                    outcomes
                        .borrow_mut()
                        .push((from.local_id(), to, sequence, echoed));
                });
            }
        }
    }
    sim.run_until_idle().unwrap();
    let outcomes = outcomes.borrow();
    let total = u64::from(MESH_NODES) * u64::from(MESH_NODES - 1) * MESH_RPCS_PER_PAIR;
    assert_eq!(outcomes.len() as u64, total);
    let count = |f: &dyn Fn(&Result<u64, RpcError>) -> bool| {
        outcomes.iter().filter(|o| f(&o.3)).count() as u64
    };
    let mut last_seen = std::collections::BTreeMap::new();
    let mut reordered = 0;
    for (from, to, sequence, echoed) in outcomes.iter() {
        assert!(
            echoed.as_ref().map_or(true, |e| e == sequence),
            "echo mixed up RPCs"
        );
        if echoed.is_ok() {
            let last = last_seen.entry((*from, *to)).or_insert(*sequence);
            reordered += u64::from(*sequence < *last);
            *last = (*last).max(*sequence);
        }
    }
    let totals = network.total_counters();
    assert_eq!(totals.messages_in_flight(), 0);
    assert_eq!(totals.messages_delivered, totals.messages_received);
    assert_eq!(network.exchanges_in_flight(), 0);
    let run = MeshRun {
        succeeded: count(&|r| r.is_ok()),
        timed_out: count(&|r| *r == Err(RpcError::Timeout)),
        other_errors: count(&|r| r.is_err() && *r != Err(RpcError::Timeout)),
        reordered,
        trace_hash: network.trace_hash(),
        finished_at: sim.now(),
    };
    // No retransmission: each timed-out RPC lost exactly one message (its request or response).
    assert_eq!(run.timed_out, totals.messages_dropped_loss, "{run:?}");
    assert_eq!(
        totals.messages_dropped_partition + totals.messages_dropped_closed,
        0
    );
    // Every delivered request is answered: delivered = responses sent + responses delivered.
    let responses_sent = totals.messages_sent - total;
    assert_eq!(totals.messages_delivered, responses_sent + run.succeeded);
    run
}

#[test]
fn seven_node_mesh_with_faults_is_reproducible() {
    let seed = test_seed(7);
    let run = run_mesh(seed);
    eprintln!("{run:?}");
    let total = u64::from(MESH_NODES) * u64::from(MESH_NODES - 1) * MESH_RPCS_PER_PAIR;
    assert_eq!(run.succeeded + run.timed_out, total);
    assert_eq!(run.other_errors, 0);
    // Both messages survive 5% loss with probability 0.9025; 840 RPCs keep the rate within ±3%.
    let rate = run.succeeded as f64 / total as f64;
    assert!((0.85..=0.95).contains(&rate), "success rate {rate}");
    assert!(
        run.reordered > 0,
        "independent delays never reordered anything"
    );
    assert!(run.finished_at >= 200 * MS, "timeouts took no virtual time");
    assert_eq!(run, run_mesh(seed), "same seed, different run");
    assert_ne!(run.trace_hash, run_mesh(seed.wrapping_add(1)).trace_hash);
}

#[test]
fn mesh_holds_over_many_seeds() {
    let first = test_seed(100);
    for seed in first..first + 10 {
        let run = run_mesh(seed);
        assert_eq!(run.other_errors, 0, "seed={seed}");
        assert!(run.succeeded > run.timed_out, "seed={seed} {run:?}");
    }
}

#[test]
fn partition_fails_rpcs_across_until_healed_with_new_conn_ids() {
    let mut sim = Sim::new(test_seed(3));
    let (network, nodes) = subnet(&sim, 4);
    let (a, c) = (nodes[0].clone(), nodes[2].clone());
    let before = conn_to(&a, node(2)).unwrap();
    network.partition(&[node(0), node(1)], &[node(2), node(3)]);
    let (inner, across) = sim
        .block_on({
            let a = a.clone();
            async move {
                let inner = a.rpc(node(1), ECHO, Priority::Normal, Buf::empty()).await;
                let across = a.rpc(node(2), ECHO, Priority::Normal, Buf::empty()).await;
                (inner, across)
            }
        })
        .unwrap();
    assert!(inner.is_ok());
    assert_eq!(across, Err(RpcError::Timeout));
    assert_eq!(network.counters(node(0)).messages_dropped_partition, 1);
    assert_eq!(
        conn_to(&a, node(2)),
        Some(before),
        "closed before the idle timeout"
    );
    sim.run_for(Duration::from_secs(1)).unwrap();
    assert_eq!(conn_to(&a, node(2)), None);
    assert_eq!(conn_to(&c, node(0)), None);
    assert!(
        conn_to(&a, node(1)).is_some(),
        "a connection within one side closed"
    );
    let refused = sim
        .block_on(a.rpc(node(2), ECHO, Priority::Normal, Buf::empty()))
        .unwrap();
    assert_eq!(refused, Err(RpcError::NotConnected(node(2))));

    network.heal();
    let after = conn_to(&a, node(2)).unwrap();
    assert!(after > before, "reconnect reused conn id {before:?}");
    assert_eq!(conn_to(&c, node(0)), Some(after));
    let healed = sim
        .block_on(c.rpc(node(0), ECHO, Priority::Normal, Buf::empty()))
        .unwrap();
    assert!(healed.is_ok());
}

#[test]
fn a_partition_shorter_than_the_idle_timeout_keeps_the_connection() {
    let mut sim = Sim::new(test_seed(4));
    let (network, nodes) = subnet(&sim, 2);
    let before = conn_to(&nodes[0], node(1)).unwrap();
    network.partition(&[node(0)], &[node(1)]);
    sim.run_for(500 * MS).unwrap();
    network.heal();
    // A second partition must not be closed early by the first one's idle check.
    sim.run_for(400 * MS).unwrap();
    network.partition(&[node(0)], &[node(1)]);
    sim.run_for(700 * MS).unwrap();
    assert_eq!(conn_to(&nodes[0], node(1)), Some(before));
    sim.run_for(300 * MS).unwrap();
    assert_eq!(conn_to(&nodes[0], node(1)), None);
    assert_eq!(network.counters(node(0)).connections_closed, 1);
}

#[test]
fn crash_fails_rpcs_both_ways_and_restart_gets_new_conn_ids() {
    let mut sim = Sim::new(test_seed(5));
    let (network, nodes) = subnet(&sim, 3);
    let (a, b) = (nodes[0].clone(), nodes[1].clone());
    let old_ids: Vec<ConnId> = b.peers().into_iter().map(|(_, conn)| conn).collect();
    let to_b = sim.spawn({
        let a = a.clone();
        async move {
            a.rpc(node(1), SLOW, Priority::Normal, slow_request(100))
                .await
        }
    });
    let from_b = sim.spawn({
        let b = b.clone();
        async move {
            b.rpc(node(2), SLOW, Priority::Normal, slow_request(100))
                .await
        }
    });
    sim.run_for(50 * MS).unwrap();
    network.crash(node(1));
    assert_eq!(
        sim.block_on(to_b).unwrap().unwrap(),
        Err(RpcError::ConnectionClosed)
    );
    assert_eq!(
        sim.block_on(from_b).unwrap().unwrap(),
        Err(RpcError::ConnectionClosed)
    );
    assert_eq!(a.peers(), vec![(node(2), conn_to(&a, node(2)).unwrap())]);
    assert!(!b.is_alive() && b.peers().is_empty());
    let dead = sim
        .block_on(b.rpc(node(0), ECHO, Priority::Normal, Buf::empty()))
        .unwrap();
    assert_eq!(dead, Err(RpcError::ConnectionClosed));
    let down = sim
        .block_on(a.rpc(node(1), ECHO, Priority::Normal, Buf::empty()))
        .unwrap();
    assert_eq!(down, Err(RpcError::NotConnected(node(1))));

    let b2 = network.restart(node(1), router());
    let new_ids: Vec<ConnId> = b2.peers().into_iter().map(|(_, conn)| conn).collect();
    assert_eq!(new_ids.len(), 2);
    assert!(
        new_ids
            .iter()
            .all(|new| old_ids.iter().all(|old| new > old)),
        "{new_ids:?}"
    );
    assert!(!b.is_alive(), "the pre-crash transport came back to life");
    let back = sim
        .block_on(async move {
            let there = a.rpc(node(1), ECHO, Priority::Normal, Buf::empty()).await;
            let back = b2.rpc(node(0), ECHO, Priority::Normal, Buf::empty()).await;
            there.and(back)
        })
        .unwrap();
    assert!(back.is_ok());
    sim.run_until_idle().unwrap();
    assert_eq!(network.total_counters().messages_in_flight(), 0);
}

#[test]
fn dropping_the_future_cancels_the_rpc() {
    let mut sim = Sim::new(test_seed(6));
    let network = MemoryNetwork::new(&sim, config());
    let started = Rc::new(Cell::new(0u32));
    let dropped = Rc::new(Cell::new(0u32));
    struct OnDrop(Rc<Cell<u32>>);
    impl Drop for OnDrop {
        fn drop(&mut self) {
            self.0.set(self.0.get() + 1);
        }
    }
    let server = {
        let (started, dropped) = (started.clone(), dropped.clone());
        Router::new().route(SLOW, move |_ctx, request: Buf| {
            started.set(started.get() + 1);
            let guard = OnDrop(dropped.clone());
            async move {
                let _guard = guard;
                sim::sleep(Duration::from_millis(u64::from(request[0]))).await;
                Ok(request)
            }
        })
    };
    let a = network.join(node(0), router());
    network.join(node(1), server);
    let h = sim.handle();
    // Cancelled while the handler runs: the handler's future is dropped.
    let running = sim
        .block_on(h.timeout(
            10 * MS,
            a.rpc(node(1), SLOW, Priority::Normal, slow_request(100)),
        ))
        .unwrap();
    assert!(running.is_err());
    assert_eq!((started.get(), dropped.get()), (1, 1));
    assert_eq!(network.exchanges_in_flight(), 0);
    // Cancelled before the request arrives: the handler never starts.
    network.set_faults(LinkFaults {
        loss_probability: 0.0,
        delay: Delay::fixed(50 * MS),
    });
    let early = sim
        .block_on(h.timeout(
            10 * MS,
            a.rpc(node(1), SLOW, Priority::Normal, slow_request(1)),
        ))
        .unwrap();
    assert!(early.is_err());
    sim.run_until_idle().unwrap();
    assert_eq!(started.get(), 1, "a cancelled request was served");
    assert_eq!(
        network.counters(node(0)).messages_delivered,
        2,
        "the request still arrives"
    );
}

#[test]
fn too_large_messages_are_refused_on_both_sides() {
    let mut sim = Sim::new(test_seed(8));
    let (network, nodes) = subnet(&sim, 2);
    let a = nodes[0].clone();
    let limit_bytes = config().message_bytes_max;
    let oversized = Buf::from_vec(vec![0; limit_bytes as usize + 1]);
    let (request, response, fits) = sim
        .block_on(async move {
            let request = a.rpc(node(1), ECHO, Priority::Normal, oversized).await;
            let big = |size: u64| Buf::from_vec(size.to_le_bytes().to_vec());
            let response = a
                .rpc(node(1), BIG, Priority::Normal, big(limit_bytes + 1))
                .await;
            let fits = a
                .rpc(node(1), BIG, Priority::Normal, big(limit_bytes))
                .await;
            (request, response, fits.map(|r| r.len() as u64))
        })
        .unwrap();
    let too_large = RpcError::MessageTooLarge {
        size_bytes: limit_bytes + 1,
        limit_bytes,
    };
    assert_eq!(request, Err(too_large.clone()));
    assert_eq!(response, Err(too_large));
    assert_eq!(fits, Ok(limit_bytes));
    let counters = network.counters(node(0));
    assert_eq!((counters.rpcs_refused, counters.messages_sent), (1, 2));
}

#[test]
fn requests_in_flight_are_bounded_per_connection() {
    let mut sim = Sim::new(test_seed(9));
    let network = MemoryNetwork::new(
        &sim,
        MemoryConfig {
            requests_in_flight_max: 2,
            ..config()
        },
    );
    let a = network.join(node(0), router());
    network.join(node(1), router());
    network.join(node(2), router());
    let slow = |a: &MemoryTransport, peer: u8| {
        let a = a.clone();
        async move {
            a.rpc(node(peer), SLOW, Priority::Normal, slow_request(10))
                .await
        }
    };
    let first = sim.spawn(slow(&a, 1));
    let second = sim.spawn(slow(&a, 1));
    sim.run_for(MS).unwrap();
    let third = sim.block_on(slow(&a, 1)).unwrap();
    assert_eq!(third, Err(RpcError::TooManyInFlight { limit: 2 }));
    assert!(
        sim.block_on(slow(&a, 2)).unwrap().is_ok(),
        "the limit is per connection"
    );
    assert!(sim.block_on(first).unwrap().is_ok());
    assert!(sim.block_on(second).unwrap().is_ok());
    assert!(
        sim.block_on(slow(&a, 1)).unwrap().is_ok(),
        "the limit did not free up"
    );
    assert_eq!(network.counters(node(0)).rpcs_refused, 1);
}

#[test]
fn loss_on_one_directed_link_is_counted_exactly() {
    let mut sim = Sim::new(test_seed(10));
    let (network, nodes) = subnet(&sim, 3);
    network.set_link_faults(
        node(0),
        node(1),
        LinkFaults {
            loss_probability: 1.0,
            delay: Delay::fixed(MS),
        },
    );
    let (a, b) = (nodes[0].clone(), nodes[1].clone());
    let results = sim
        .block_on(async move {
            let a_to_b = a.rpc(node(1), ECHO, Priority::Normal, Buf::empty()).await;
            let b_to_a = b.rpc(node(0), ECHO, Priority::Normal, Buf::empty()).await;
            let a_to_c = a.rpc(node(2), ECHO, Priority::Normal, Buf::empty()).await;
            (a_to_b, b_to_a, a_to_c)
        })
        .unwrap();
    assert_eq!(results.0, Err(RpcError::Timeout), "request lost");
    assert_eq!(results.1, Err(RpcError::Timeout), "response lost");
    assert!(results.2.is_ok());
    assert_eq!(network.counters(node(0)).messages_dropped_loss, 2);
    assert_eq!(network.total_counters().messages_dropped_loss, 2);
    network.clear_link_faults(node(0), node(1));
    let healed = sim
        .block_on(nodes[0].rpc(node(1), ECHO, Priority::Normal, Buf::empty()))
        .unwrap();
    assert!(healed.is_ok());
}

#[test]
fn messages_in_flight_to_a_crashed_node_are_counted_as_closed() {
    let mut sim = Sim::new(test_seed(12));
    let (network, nodes) = subnet(&sim, 3);
    network.set_faults(LinkFaults {
        loss_probability: 0.0,
        delay: Delay::fixed(10 * MS),
    });
    network.enable_trace_log(64);
    let a = nodes[0].clone();
    let call = sim.spawn(async move { a.rpc(node(1), ECHO, Priority::Normal, Buf::empty()).await });
    sim.run_for(5 * MS).unwrap();
    // Partitioned from node 2 while down: the restart must reconnect only to node 0.
    network.crash(node(1));
    network.partition(&[node(1)], &[node(2)]);
    let b = network.restart(node(1), router());
    assert_eq!(
        sim.block_on(call).unwrap().unwrap(),
        Err(RpcError::ConnectionClosed)
    );
    sim.run_until_idle().unwrap();
    let counters = network.counters(node(0));
    assert_eq!(
        (counters.messages_sent, counters.messages_dropped_closed),
        (1, 1)
    );
    assert_eq!(
        b.peers().iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        vec![node(0)]
    );
    network.heal();
    assert_eq!(b.peers().len(), 2);
    let kinds: Vec<TraceKind> = network.trace_log().iter().map(|event| event.kind).collect();
    assert_eq!(
        kinds,
        [
            TraceKind::Disconnected, // crash closes 0-1
            TraceKind::Disconnected, // and 1-2
            TraceKind::Connected,    // restart: 0-1 only
            TraceKind::DroppedClosed,
            TraceKind::Connected, // heal: 1-2
        ]
    );
}

#[test]
fn trace_logs_of_two_runs_from_one_seed_are_equal() {
    let seed = test_seed(13);
    let run = |seed: u64| {
        let mut sim = Sim::new(seed);
        let (network, nodes) = subnet(&sim, 3);
        network.enable_trace_log(1000);
        network.set_faults(LinkFaults {
            loss_probability: 0.2,
            delay: Delay::Uniform {
                min: MS,
                max: 30 * MS,
            },
        });
        for from in nodes {
            for to in 0..3 {
                let from = from.clone();
                sim.spawn(
                    async move { from.rpc(node(to), ECHO, Priority::Low, Buf::empty()).await },
                );
            }
        }
        sim.run_until_idle().unwrap();
        (
            network.trace_log(),
            network.trace_hash(),
            network.trace_events(),
        )
    };
    let (log, hash, events) = run(seed);
    assert_eq!(
        events - log.len() as u64,
        3,
        "the 3 connections opened before the log"
    );
    assert!(log
        .iter()
        .any(|event| event.kind == TraceKind::DroppedLoss || event.at > MS));
    assert_eq!((log.clone(), hash), {
        let again = run(seed);
        (again.0, again.1)
    });
    assert_ne!(log, run(seed ^ 0x5555).0);
}
