use std::cell::RefCell;
use std::future::pending;
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::*;

const MS: Duration = Duration::from_millis(1);

#[test]
fn block_on_runs_non_send_tasks_in_virtual_time() {
    let mut sim = Sim::new(test_seed(1));
    let handle = sim.handle();
    let shared = Rc::new(RefCell::new(Vec::new()));
    let log = shared.clone();
    let started = Instant::now();
    let task = sim.spawn(async move {
        sleep(Duration::from_secs(3600)).await;
        log.borrow_mut().push(now());
        7
    });
    let out = sim
        .block_on(async move { task.await.unwrap() * 6 })
        .unwrap();
    assert_eq!(out, 42);
    assert_eq!(*shared.borrow(), vec![Duration::from_secs(3600)]);
    assert_eq!(handle.now(), Duration::from_secs(3600));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "virtual time slept for real"
    );
}

#[test]
fn woken_tasks_run_in_fifo_order_and_equal_timers_in_registration_order() {
    let mut sim = Sim::new(test_seed(2));
    let order = Rc::new(RefCell::new(Vec::new()));
    for i in 0..5u32 {
        let order = order.clone();
        sim.spawn(async move {
            order.borrow_mut().push(i);
            // All five share one deadline: they must wake in the order they registered.
            sleep(10 * MS).await;
            order.borrow_mut().push(10 + i);
        });
    }
    sim.run_until_idle().unwrap();
    assert_eq!(*order.borrow(), vec![0, 1, 2, 3, 4, 10, 11, 12, 13, 14]);
    assert_eq!(sim.now(), 10 * MS);
    assert_eq!(sim.tasks_alive(), 0);
}

#[test]
fn timeout_fires_or_passes_through() {
    let mut sim = Sim::new(test_seed(3));
    let h = sim.handle();
    let (slow, fast) = sim
        .block_on(async move {
            let slow = h.timeout(5 * MS, h.sleep(10 * MS)).await;
            let at_slow = h.now();
            let fast = h.timeout(5 * MS, async { 9 }).await;
            (slow.map(|_| at_slow), fast)
        })
        .unwrap();
    assert_eq!(slow, Err(Elapsed));
    assert_eq!(fast, Ok(9));
    // The slow sleep was dropped with the timeout, so its timer must not keep the clock going.
    sim.run_until_idle().unwrap();
    assert_eq!(sim.now(), 5 * MS);
}

#[test]
fn run_until_stops_at_the_deadline() {
    let mut sim = Sim::new(test_seed(4));
    let ticks = Rc::new(RefCell::new(0u32));
    let counter = ticks.clone();
    sim.spawn(async move {
        loop {
            sleep(10 * MS).await;
            *counter.borrow_mut() += 1;
        }
    });
    sim.run_until(35 * MS).unwrap();
    assert_eq!(*ticks.borrow(), 3);
    assert_eq!(sim.now(), 35 * MS);
    sim.run_for(5 * MS).unwrap();
    assert_eq!(
        *ticks.borrow(),
        4,
        "a timer due exactly at the deadline fires"
    );
}

#[test]
fn livelock_and_deadlock_end_with_errors() {
    let config = SimConfig {
        polls_per_instant_max: 1000,
        polls_per_run_max: 10_000,
    };
    let mut sim = Sim::with_config(test_seed(5), config);
    sim.spawn(async {
        loop {
            yield_now().await;
        }
    });
    assert!(matches!(
        sim.run_until_idle(),
        Err(SimError::Livelock { polls: 1001, .. })
    ));

    let mut sim = Sim::with_config(test_seed(5), config);
    sim.spawn(async {
        loop {
            sleep(MS).await;
        }
    });
    assert!(matches!(
        sim.run_until_idle(),
        Err(SimError::PollLimit { limit: 10_000, .. })
    ));

    let mut sim = Sim::new(test_seed(5));
    assert_eq!(
        sim.block_on(pending::<()>()),
        Err(SimError::Deadlock {
            now: Duration::ZERO
        })
    );
}

#[test]
fn abort_drops_the_task_and_disarms_its_timers() {
    let mut sim = Sim::new(test_seed(6));
    let dropped = Rc::new(RefCell::new(false));
    struct Flag(Rc<RefCell<bool>>);
    impl Drop for Flag {
        fn drop(&mut self) {
            *self.0.borrow_mut() = true;
        }
    }
    let flag = Flag(dropped.clone());
    let task = sim.spawn(async move {
        let _flag = flag;
        sleep(Duration::from_secs(100)).await;
    });
    sim.run_until(MS).unwrap();
    task.abort();
    assert!(*dropped.borrow());
    assert!(task.is_finished());
    assert_eq!(sim.block_on(task), Ok(Err(JoinError)));
    sim.run_until_idle().unwrap();
    assert_eq!(
        sim.now(),
        MS,
        "the aborted task's timer still moved the clock"
    );
}

/// Tasks sleeping random durations and logging their wake-ups: one run's log per seed.
fn random_schedule(seed: u64) -> Vec<(u32, Duration)> {
    let mut sim = Sim::new(seed);
    let log = Rc::new(RefCell::new(Vec::new()));
    for task in 0..8u32 {
        let (h, log) = (sim.handle(), log.clone());
        sim.spawn(async move {
            for _ in 0..20 {
                let wait = h.with_rng(|rng| rng.range_inclusive(0, 5_000));
                h.sleep(Duration::from_micros(wait)).await;
                log.borrow_mut().push((task, h.now()));
            }
        });
    }
    sim.run_until_idle().unwrap();
    let log = log.borrow().clone();
    log
}

#[test]
fn same_seed_same_schedule() {
    let seed = test_seed(7);
    let first = random_schedule(seed);
    assert_eq!(first.len(), 160);
    assert_eq!(first, random_schedule(seed));
    assert_ne!(first, random_schedule(seed + 1));
}

#[test]
fn seeds_parse_from_decimal_and_hex() {
    assert_eq!(parse_seed(" 42 "), Some(42));
    assert_eq!(parse_seed("0xff"), Some(255));
    assert_eq!(parse_seed("nope"), None);
}
