//! Admission: per-class concurrency limits with bounded wait queues, and per-IP connection
//! counts. Both are decided before a request body is read, so refusing costs one small
//! response and no buffering.
//!
//! [`ClassGate`] is a counting semaphore with a bounded, FIFO queue of waiters. A request gets
//! a [`Permit`] at once when fewer than `concurrency_max` hold one; otherwise it joins the
//! queue if fewer than `queue_max` wait; otherwise it is refused (429). A released permit is
//! handed straight to the oldest waiter, so the number in flight never exceeds the limit and
//! waiters are served in arrival order. Everything is `!Send`: one gate per class per shard.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// Observes a gate's depths (the metrics layer's gauges implement it).
pub trait GateObserver {
    fn changed(&self, in_flight: usize, queued: usize);
}

/// One class's admission state.
pub struct ClassGate {
    concurrency_max: usize,
    queue_max: usize,
    in_flight: Cell<usize>,
    waiters: RefCell<VecDeque<Rc<Waiter>>>,
    observer: Option<Box<dyn GateObserver>>,
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
}

impl ClassGate {
    pub fn new(
        concurrency_max: usize,
        queue_max: usize,
        observer: Option<Box<dyn GateObserver>>,
    ) -> Rc<ClassGate> {
        Rc::new(ClassGate {
            concurrency_max: concurrency_max.max(1),
            queue_max,
            in_flight: Cell::new(0),
            waiters: RefCell::new(VecDeque::new()),
            observer,
        })
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.get()
    }

    pub fn queued(&self) -> usize {
        self.waiters.borrow().len()
    }

    pub fn admit(self: &Rc<Self>) -> Admission {
        let admission = if self.in_flight.get() < self.concurrency_max {
            self.in_flight.set(self.in_flight.get() + 1);
            Admission::Now(Permit { gate: self.clone() })
        } else if self.waiters.borrow().len() < self.queue_max {
            let waiter = Rc::new(Waiter::default());
            self.waiters.borrow_mut().push_back(waiter.clone());
            Admission::Queued(QueuedPermit {
                gate: self.clone(),
                waiter,
                taken: false,
            })
        } else {
            Admission::Full
        };
        self.notify();
        admission
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

/// A held slot; dropping it admits the next waiter.
pub struct Permit {
    gate: Rc<ClassGate>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.gate.release();
    }
}

/// A place in a class's queue. Dropping it before it resolves leaves the queue (or, if a slot
/// was already handed to it, passes the slot on), so a client that gives up or times out
/// never leaks a slot.
pub struct QueuedPermit {
    gate: Rc<ClassGate>,
    waiter: Rc<Waiter>,
    taken: bool,
}

impl Future for QueuedPermit {
    type Output = Permit;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Permit> {
        if self.waiter.granted.get() {
            self.taken = true;
            return Poll::Ready(Permit {
                gate: self.gate.clone(),
            });
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
