use super::*;

const MS: Duration = Duration::from_millis(1);

#[test]
fn delays_stay_within_their_bounds() {
    let mut rng = SimRng::new(crate::sim::test_seed(11));
    let uniform = Delay::Uniform {
        min: 2 * MS,
        max: 9 * MS,
    };
    let exponential = Delay::Exponential {
        min: MS,
        mean: 4 * MS,
        max: 40 * MS,
    };
    let mut exponential_total = Duration::ZERO;
    for _ in 0..20_000 {
        let u = uniform.sample(&mut rng);
        assert!((2 * MS..=9 * MS).contains(&u), "{u:?}");
        let e = exponential.sample(&mut rng);
        assert!((MS..=40 * MS).contains(&e), "{e:?}");
        exponential_total += e;
    }
    // Mean of min + Exp(3 ms) capped at 40 ms is a hair under 4 ms.
    let mean = exponential_total / 20_000;
    assert!((3_700..=4_100).contains(&mean.as_micros()), "mean {mean:?}");
    assert_eq!(Delay::fixed(MS).sample(&mut rng), MS);
}

#[test]
#[should_panic(expected = "loss probability")]
fn invalid_faults_are_refused() {
    LinkFaults {
        loss_probability: 1.5,
        delay: Delay::fixed(MS),
    }
    .assert_valid();
}

#[test]
fn trace_hash_depends_on_every_word_and_order() {
    let start = TraceHash {
        value: 1,
        events: 0,
    };
    let mut a = start;
    a.record(&[1, 2]);
    a.record(&[3]);
    let mut b = start;
    b.record(&[3]);
    b.record(&[1, 2]);
    let mut c = start;
    c.record(&[1, 2]);
    c.record(&[4]);
    assert_ne!(a, b);
    assert_ne!(a, c);
    assert_eq!(a.events, 2);
}

#[test]
fn counters_account_for_every_message() {
    let counters = NodeCounters {
        messages_sent: 10,
        messages_delivered: 5,
        messages_dropped_loss: 2,
        messages_dropped_partition: 1,
        messages_dropped_closed: 1,
        ..NodeCounters::default()
    };
    assert_eq!(counters.messages_dropped(), 4);
    assert_eq!(counters.messages_in_flight(), 1);
    let mut total = NodeCounters::default();
    total.add(&counters);
    total.add(&counters);
    assert_eq!(total.messages_sent, 20);
}

#[test]
fn block_closes_and_refuses_until_every_refusal_is_lifted() {
    let mut sim = Sim::new(crate::sim::test_seed(5));
    let network = MemoryNetwork::new(&sim, MemoryConfig::default());
    let ids: Vec<NodeId> = (0..3u8).map(|i| NodeId([i; 32])).collect();
    let slow = Route(1);
    let router = || {
        Router::new().route(slow, |_ctx, request: Buf| async move {
            crate::sim::sleep(Duration::from_millis(10)).await;
            Ok(request)
        })
    };
    let transports: Vec<MemoryTransport> =
        ids.iter().map(|id| network.join(*id, router())).collect();
    let (a, b, c) = (ids[0], ids[1], ids[2]);
    let first = network.connection(a, b).expect("full mesh");
    let caller = transports[0].clone();
    let handle = sim.handle();
    let blocker = network.clone();
    let (in_flight, refused) = sim
        .block_on(async move {
            let rpc = caller.rpc(b, slow, Priority::Normal, Buf::copy_from_slice(b"x"));
            let block = async {
                handle.sleep(Duration::from_millis(1)).await;
                blocker.block(b, a);
            };
            let (result, ()) = futures_lite::future::zip(rpc, block).await;
            let refused = caller.rpc(b, slow, Priority::Normal, Buf::empty()).await;
            (result, refused)
        })
        .unwrap();
    assert_eq!(in_flight, Err(RpcError::ConnectionClosed));
    assert_eq!(refused, Err(RpcError::NotConnected(b)));
    assert!(network.is_blocked(b, a) && !network.is_blocked(a, b));
    assert!(network.connection(a, c).is_some(), "other pairs stay up");
    network.heal();
    assert_eq!(network.connection(a, b), None, "a heal does not lift a ban");
    network.block(a, b);
    network.unblock(b, a);
    assert_eq!(network.connection(a, b), None, "a still refuses b");
    network.unblock(a, b);
    let second = network.connection(a, b).expect("reconnected");
    assert!(second > first, "a reconnect gets a larger id");
    assert_eq!(network.counters(a).connections_closed, 1);
}
