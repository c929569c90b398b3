//! Admission: per-class concurrency limits with bounded wait queues, latency-driven shedding,
//! and per-IP connection counts. All are decided before a request body is read, so refusing
//! costs one small response and no buffering.
//!
//! [`ClassGate`] is a counting semaphore with a bounded, FIFO queue of waiters. A request gets
//! a [`Permit`] at once when fewer than the class's limit hold one; otherwise it joins the
//! queue if fewer than `queue_max` wait; otherwise it is refused (429). A released permit is
//! handed straight to the oldest waiter, so the number in flight never exceeds the limit and
//! waiters are served in arrival order. Everything is `!Send`: one gate per class per shard.
//!
//! # Delay control
//!
//! A fixed limit cannot know how many requests the machine finishes per second: set high, a
//! flood fills every slot and queue place and each admitted request waits behind hundreds of
//! others (latency = requests in the server / throughput); set low, an idle machine refuses
//! work it could do. A gate with a [`DelayControl`] has no wait queue (a request is admitted or
//! refused at once) and adapts its limit between `limit_min` and `concurrency_max` to the
//! queueing its requests meet downstream, in the spirit of CoDel and TCP's congestion window.
//! The server reports each request's queueing on its permit ([`Permit::add_wait`]: the time its
//! jobs waited behind other jobs for the CPU pool's threads). Once per interval the gate looks
//! at the request of the interval that waited least. If even that one waited longer than the
//! target, there is a standing queue: the limit halves. If it waited less and the limit was
//! reached, the limit grows by an eighth. The limit thus settles where the pool's threads stay
//! busy while an admitted request queues about the target, and the excess of a flood is refused
//! in microseconds.
//!
//! Only queueing counts, not the time a request is worked on, the operating system's delay in
//! waking an idle worker, or the wait for the shard's own executor: when the machine is
//! saturated by the flood itself (the shard answering 429s, other processes), admitting less
//! would not make anything faster, and counting those delays would shut the class down.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// Observes a gate's depths (the metrics layer's gauges implement it).
pub trait GateObserver {
    fn changed(&self, in_flight: usize, queued: usize);
    /// The delay control moved the class's limit.
    fn limit_changed(&self, _limit: usize) {}
}

/// The settings of a gate's latency-driven shedding (module docs, "Delay control").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DelayControl {
    /// The longest the request that queued least in an interval may have queued before the
    /// limit halves.
    pub target: Duration,
    /// How often the limit is reconsidered.
    pub interval: Duration,
    /// The limit never falls below this, so the CPU pool always has work queued.
    pub limit_min: usize,
}

/// The controller's state for the current interval.
struct Controller {
    config: DelayControl,
    window_start: Cell<Instant>,
    /// The shortest queueing of a request answered in this interval.
    window_min: Cell<Option<Duration>>,
    /// Whether some request found every slot of the current limit taken.
    window_bound: Cell<bool>,
}

/// One class's admission state.
pub struct ClassGate {
    concurrency_max: usize,
    /// The limit in force: `concurrency_max`, or the controller's current value.
    limit: Cell<usize>,
    queue_max: usize,
    in_flight: Cell<usize>,
    waiters: RefCell<VecDeque<Rc<Waiter>>>,
    observer: Option<Box<dyn GateObserver>>,
    control: Option<Controller>,
    clock: fn() -> Instant,
}

#[derive(Default)]
struct Waiter {
    granted: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

/// What [`ClassGate::admit`] decided.
pub enum Admission {
    /// A slot was free.
    Now(Permit),
    /// Queued; await the future for the permit.
    Queued(QueuedPermit),
    /// Slots and queue are full: refuse with 429.
    Full,
    /// The delay control holds the limit below `concurrency_max` and every slot of it is
    /// taken: refuse with 429.
    Congested,
}

impl ClassGate {
    pub fn new(
        concurrency_max: usize,
        queue_max: usize,
        observer: Option<Box<dyn GateObserver>>,
    ) -> Rc<ClassGate> {
        Self::with_control(concurrency_max, queue_max, None, observer, Instant::now)
    }

    /// A gate whose limit adapts to the queueing its requests meet (module docs); such a
    /// gate has no wait queue, whatever `queue_max` says. `clock` is `Instant::now` outside
    /// tests.
    pub fn with_control(
        concurrency_max: usize,
        queue_max: usize,
        control: Option<DelayControl>,
        observer: Option<Box<dyn GateObserver>>,
        clock: fn() -> Instant,
    ) -> Rc<ClassGate> {
        let concurrency_max = concurrency_max.max(1);
        let control = control.map(|mut config| {
            config.limit_min = config.limit_min.clamp(1, concurrency_max);
            Controller {
                config,
                window_start: Cell::new(clock()),
                window_min: Cell::new(None),
                window_bound: Cell::new(false),
            }
        });
        let queue_max = if control.is_some() { 0 } else { queue_max };
        let gate = Rc::new(ClassGate {
            concurrency_max,
            limit: Cell::new(concurrency_max),
            queue_max,
            in_flight: Cell::new(0),
            waiters: RefCell::new(VecDeque::new()),
            observer,
            control,
            clock,
        });
        if let Some(observer) = &gate.observer {
            observer.limit_changed(concurrency_max);
        }
        gate
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.get()
    }

    pub fn queued(&self) -> usize {
        self.waiters.borrow().len()
    }

    /// The limit in force (the controller's, or `concurrency_max`).
    pub fn limit(&self) -> usize {
        self.limit.get()
    }

    pub fn admit(self: &Rc<Self>) -> Admission {
        let now = (self.clock)();
        self.tick(now);
        let admission = if self.in_flight.get() < self.limit.get() {
            self.in_flight.set(self.in_flight.get() + 1);
            Admission::Now(Permit::new(self.clone(), Duration::ZERO))
        } else {
            if let Some(control) = &self.control {
                control.window_bound.set(true);
            }
            if self.waiters.borrow().len() < self.queue_max {
                let waiter = Rc::new(Waiter::default());
                self.waiters.borrow_mut().push_back(waiter.clone());
                Admission::Queued(QueuedPermit {
                    gate: self.clone(),
                    waiter,
                    taken: false,
                    admitted: now,
                })
            } else if self.limit.get() < self.concurrency_max {
                Admission::Congested
            } else {
                Admission::Full
            }
        };
        self.notify();
        admission
    }

    /// Ends the controller's interval when it is over: halve the limit when even the request
    /// that queued least queued longer than the target (or none finished while some were in
    /// flight), grow it by an eighth when it was reached without that.
    fn tick(&self, now: Instant) {
        let Some(control) = &self.control else {
            return;
        };
        if now.saturating_duration_since(control.window_start.get()) < control.config.interval {
            return;
        }
        let least = control.window_min.take();
        let stalled = least.is_none() && self.in_flight.get() > 0;
        let over = least.is_some_and(|d| d > control.config.target);
        let limit = self.limit.get();
        if stalled || over {
            self.set_limit((limit / 2).max(control.config.limit_min));
        } else if control.window_bound.get() {
            let grown = limit.saturating_add((limit / 8).max(1));
            self.set_limit(grown.min(self.concurrency_max));
        }
        control.window_bound.set(false);
        control.window_start.set(now);
    }

    fn set_limit(&self, limit: usize) {
        if limit != self.limit.get() {
            self.limit.set(limit);
            if let Some(observer) = &self.observer {
                observer.limit_changed(limit);
            }
        }
    }

    /// Records a finished request's queueing, then frees its slot.
    fn finish(&self, waited: Duration) {
        if let Some(control) = &self.control {
            let least = control.window_min.get().map_or(waited, |d| d.min(waited));
            control.window_min.set(Some(least));
            self.tick((self.clock)());
        }
        self.release();
    }

    /// Gives a released slot to the oldest waiter, or frees it.
    fn release(&self) {
        let next = self.waiters.borrow_mut().pop_front();
        match next {
            Some(waiter) => {
                waiter.granted.set(true);
                if let Some(waker) = waiter.waker.borrow_mut().take() {
                    waker.wake();
                }
            }
            None => self.in_flight.set(self.in_flight.get().saturating_sub(1)),
        }
        self.notify();
    }

    fn notify(&self) {
        if let Some(observer) = &self.observer {
            observer.changed(self.in_flight.get(), self.waiters.borrow().len());
        }
    }
}

/// A held slot; dropping it records the request's queueing and admits the next waiter.
pub struct Permit {
    gate: Rc<ClassGate>,
    /// The wait for the slot, plus the queueing reported with [`Permit::add_wait`].
    waited: Cell<Duration>,
}

impl Permit {
    fn new(gate: Rc<ClassGate>, waited: Duration) -> Permit {
        Permit {
            gate,
            waited: Cell::new(waited),
        }
    }

    /// Counts time this request queued in the server (behind other jobs for a pool thread)
    /// towards the delay control.
    pub fn add_wait(&self, wait: Duration) {
        self.waited.set(self.waited.get().saturating_add(wait));
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.gate.finish(self.waited.get());
    }
}

/// A place in a class's queue. Dropping it before it resolves leaves the queue (or, if a slot
/// was already handed to it, passes the slot on), so a client that gives up or times out
/// never leaks a slot.
pub struct QueuedPermit {
    gate: Rc<ClassGate>,
    waiter: Rc<Waiter>,
    taken: bool,
    admitted: Instant,
}

impl Future for QueuedPermit {
    type Output = Permit;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Permit> {
        if self.waiter.granted.get() {
            self.taken = true;
            let waited = (self.gate.clock)().saturating_duration_since(self.admitted);
            return Poll::Ready(Permit::new(self.gate.clone(), waited));
        }
        *self.waiter.waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for QueuedPermit {
    fn drop(&mut self) {
        if self.taken {
            return;
        }
        if self.waiter.granted.get() {
            // The slot was handed over but never used: pass it on.
            self.gate.release();
        } else {
            self.gate
                .waiters
                .borrow_mut()
                .retain(|w| !Rc::ptr_eq(w, &self.waiter));
            self.gate.notify();
        }
    }
}

/// Open connections per client IP address. Entries exist only while a connection from the
/// address is open, so the map is bounded by `http.connections_max`.
pub struct IpLimiter {
    per_ip_max: usize,
    open: RefCell<HashMap<IpAddr, usize>>,
}

impl IpLimiter {
    pub fn new(per_ip_max: usize) -> Rc<IpLimiter> {
        Rc::new(IpLimiter {
            per_ip_max,
            open: RefCell::new(HashMap::new()),
        })
    }

    /// Counts one more connection from `ip`, or refuses it when the address is at its limit.
    pub fn acquire(self: &Rc<Self>, ip: IpAddr) -> Option<IpGuard> {
        let mut open = self.open.borrow_mut();
        let count = open.entry(ip).or_insert(0);
        if *count >= self.per_ip_max {
            return None;
        }
        *count += 1;
        Some(IpGuard {
            limiter: self.clone(),
            ip,
        })
    }

    /// Addresses with at least one open connection.
    pub fn addresses(&self) -> usize {
        self.open.borrow().len()
    }
}

/// One counted connection; dropping it uncounts it.
pub struct IpGuard {
    limiter: Rc<IpLimiter>,
    ip: IpAddr,
}

impl Drop for IpGuard {
    fn drop(&mut self) {
        let mut open = self.limiter.open.borrow_mut();
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future::{block_on, poll_once};

    fn now(admission: Admission) -> Permit {
        match admission {
            Admission::Now(permit) => permit,
            _ => panic!("expected a free slot"),
        }
    }

    fn queued(admission: Admission) -> QueuedPermit {
        match admission {
            Admission::Queued(q) => q,
            _ => panic!("expected a queue place"),
        }
    }

    #[test]
    fn slots_then_queue_then_full_and_fifo_handover() {
        let gate = ClassGate::new(2, 2, None);
        let a = now(gate.admit());
        let _b = now(gate.admit());
        let mut first = queued(gate.admit());
        let mut second = queued(gate.admit());
        assert!(matches!(gate.admit(), Admission::Full));
        assert_eq!((gate.in_flight(), gate.queued()), (2, 2));
        assert!(block_on(poll_once(&mut first)).is_none());
        drop(a);
        // The slot went to the oldest waiter; the count in flight did not drop.
        assert_eq!((gate.in_flight(), gate.queued()), (2, 1));
        assert!(block_on(poll_once(&mut second)).is_none());
        let first = block_on(poll_once(&mut first)).expect("first waiter granted");
        drop(first);
        let second = block_on(poll_once(&mut second)).expect("second waiter granted");
        drop(second);
        assert_eq!((gate.in_flight(), gate.queued()), (1, 0));
    }

    #[test]
    fn abandoned_waiters_leave_the_queue_and_pass_granted_slots_on() {
        let gate = ClassGate::new(1, 3, None);
        let a = now(gate.admit());
        let gone = queued(gate.admit());
        let granted_but_dropped = queued(gate.admit());
        let mut last = queued(gate.admit());
        drop(gone);
        assert_eq!(gate.queued(), 2);
        drop(a);
        // granted_but_dropped got the slot; dropping it unused hands it to `last`.
        drop(granted_but_dropped);
        let permit = block_on(poll_once(&mut last)).expect("last waiter granted");
        assert_eq!((gate.in_flight(), gate.queued()), (1, 0));
        drop(permit);
        assert_eq!((gate.in_flight(), gate.queued()), (0, 0));
    }

    #[test]
    fn zero_queue_refuses_as_soon_as_slots_are_taken() {
        let gate = ClassGate::new(1, 0, None);
        let _a = now(gate.admit());
        assert!(matches!(gate.admit(), Admission::Full));
    }

    thread_local! {
        static ORIGIN: Instant = Instant::now();
        static OFFSET_MS: Cell<u64> = const { Cell::new(0) };
    }

    fn fake_now() -> Instant {
        ORIGIN.with(|o| *o) + Duration::from_millis(OFFSET_MS.with(Cell::get))
    }

    fn set_ms(ms: u64) {
        OFFSET_MS.with(|o| o.set(ms));
    }

    fn controlled(max: usize, limit_min: usize) -> Rc<ClassGate> {
        let control = DelayControl {
            target: Duration::from_millis(5),
            interval: Duration::from_millis(100),
            limit_min,
        };
        ClassGate::with_control(max, 16, Some(control), None, fake_now)
    }

    #[test]
    fn a_controlled_gate_never_queues() {
        set_ms(0);
        let gate = controlled(2, 1);
        let held: Vec<Permit> = (0..2).map(|_| now(gate.admit())).collect();
        // At the configured maximum the refusal is an ordinary full class.
        assert!(matches!(gate.admit(), Admission::Full));
        assert_eq!(gate.queued(), 0);
        drop(held);
    }

    #[test]
    fn queueing_above_the_target_halves_the_limit_and_refuses_the_excess() {
        set_ms(0);
        let gate = controlled(16, 2);
        let held: Vec<Permit> = (0..16).map(|_| now(gate.admit())).collect();
        for permit in &held {
            // Each queued 20 ms for a pool thread, four times the target.
            permit.add_wait(Duration::from_millis(20));
        }
        set_ms(20);
        drop(held);
        set_ms(100);
        // The interval is over and even its least queued request queued too long.
        let held: Vec<Permit> = (0..8).map(|_| now(gate.admit())).collect();
        assert_eq!(gate.limit(), 8);
        assert!(matches!(gate.admit(), Admission::Congested));
        drop(held);
        assert_eq!(gate.in_flight(), 0);
    }

    #[test]
    fn requests_that_do_not_queue_grow_the_limit_back_while_it_is_reached() {
        set_ms(0);
        let gate = controlled(8, 2);
        let slow = now(gate.admit());
        slow.add_wait(Duration::from_millis(50));
        drop(slow);
        set_ms(100);
        drop(now(gate.admit()));
        assert_eq!(gate.limit(), 4);
        // Intervals where every slot is used and nothing queues grow the limit by an eighth
        // (at least one) each time, back up to the maximum.
        let mut limits = Vec::new();
        for interval in 1..=5u64 {
            set_ms(100 * interval + 1);
            let held: Vec<Permit> = (0..gate.limit()).map(|_| now(gate.admit())).collect();
            assert!(matches!(
                gate.admit(),
                Admission::Congested | Admission::Full
            ));
            drop(held);
            set_ms(100 * (interval + 1) + 1);
            drop(now(gate.admit()));
            limits.push(gate.limit());
        }
        assert_eq!(limits, vec![5, 6, 7, 8, 8]);
        // An interval where the limit is not reached leaves it alone.
        set_ms(800);
        drop(now(gate.admit()));
        assert_eq!(gate.limit(), 8);
    }

    #[test]
    fn a_stalled_class_halves_to_its_floor_and_no_lower() {
        set_ms(0);
        let gate = controlled(64, 5);
        // One request never finishes: every interval ends with nothing answered.
        let stuck = now(gate.admit());
        let mut limits = Vec::new();
        for interval in 1..=5u64 {
            set_ms(100 * interval);
            gate.tick(fake_now());
            limits.push(gate.limit());
        }
        assert_eq!(limits, vec![32, 16, 8, 5, 5]);
        drop(stuck);
    }

    #[test]
    fn ip_limit_counts_open_connections_only() {
        let limiter = IpLimiter::new(2);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let a = limiter.acquire(ip).unwrap();
        let _b = limiter.acquire(ip).unwrap();
        assert!(limiter.acquire(ip).is_none());
        let _c = limiter.acquire(other).unwrap();
        drop(a);
        assert!(limiter.acquire(ip).is_some());
        drop(_c);
        assert_eq!(limiter.addresses(), 1);
    }
}
