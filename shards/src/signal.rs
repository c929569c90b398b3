//! A wake-up flag for one waiting task on the same shard: `notify` sets it, `wait` returns once
//! it is set and clears it. Notifications before the wait are not lost; several coalesce.
//! Executor-agnostic (glommio and the simulator), `!Send` on purpose.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

#[derive(Default)]
pub struct Signal {
    set: Cell<bool>,
    waiter: RefCell<Option<Waker>>,
}

impl Signal {
    pub fn new() -> Signal {
        Signal::default()
    }

    pub fn notify(&self) {
        self.set.set(true);
        if let Some(waker) = self.waiter.borrow_mut().take() {
            waker.wake();
        }
    }

    pub fn wait(&self) -> Wait<'_> {
        Wait { signal: self }
    }
}

pub struct Wait<'a> {
    signal: &'a Signal,
}

impl Future for Wait<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.signal.set.replace(false) {
            return Poll::Ready(());
        }
        *self.signal.waiter.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}
