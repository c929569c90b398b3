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
