//! Task bookkeeping that cannot leak: a set of tasks that leave it when they end, and a list of
//! wakers for futures that wait for a connection.
//!
//! glommio's `spawn_local` polls a new task once before it returns (`spawn_and_run`), so a task
//! that finishes on its first poll has finished before its spawner holds its handle. A task
//! that "removes itself from the map when done" therefore cannot rely on the spawner inserting
//! it first: [`TaskSet::spawn`] reserves the entry before spawning, the task frees it as its
//! last step, and the spawner stores the handle only if the entry is still there. A cancelled
//! task's entry is removed by whoever cancels it (removing is what cancels it).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::{poll_fn, Future};
use std::hash::Hash;
use std::rc::{Rc, Weak};
use std::task::{Poll, Waker};

use glommio::Task;

/// Running tasks by key. Removing a task's entry cancels it; a task that ends removes its own.
/// Bounded by its owner, which checks [`TaskSet::len`] before spawning (see where it is used).
pub(super) struct TaskSet<K: Copy + Eq + Hash + 'static> {
    /// `None` while the task runs its first poll inside `spawn`.
    tasks: RefCell<HashMap<K, Option<Task<()>>>>,
}

impl<K: Copy + Eq + Hash + 'static> TaskSet<K> {
    pub fn new() -> Rc<TaskSet<K>> {
        Rc::new(TaskSet {
            tasks: RefCell::default(),
        })
    }

    pub fn len(&self) -> usize {
        self.tasks.borrow().len()
    }

    /// Spawns `future` as the task for `key` (which must not be in the set).
    pub fn spawn(self: &Rc<Self>, key: K, future: impl Future<Output = ()> + 'static) {
        let reserved = self.tasks.borrow_mut().insert(key, None);
        assert!(reserved.is_none(), "task key spawned twice");
        let set = Rc::downgrade(self);
        let task = glommio::spawn_local(async move {
            future.await;
            // Still inside the task's poll. Not from a drop guard: glommio drops a finished
            // future after it has read the task state, and a handle released then is missed.
            leave(&set, key);
        });
        let mut tasks = self.tasks.borrow_mut();
        match tasks.get_mut(&key) {
            Some(slot) => *slot = Some(task),
            // It finished during its first poll (dropping a finished task is a no-op), or the
            // set was cancelled meanwhile (dropping cancels it).
            None => {
                drop(tasks);
                drop(task);
            }
        }
    }

    /// Cancels the task for `key`, if it still runs. Returns whether there was one.
    pub fn cancel(&self, key: K) -> bool {
        // Taken out before the drop: cancelling must not run with the map borrowed.
        let removed = self.tasks.borrow_mut().remove(&key);
        removed.is_some()
    }

    /// Cancels every task. glommio drops a cancelled task's future the next time it visits it.
    pub fn cancel_all(&self) {
        let all = std::mem::take(&mut *self.tasks.borrow_mut());
        drop(all);
    }
}

/// Frees the entry of a task that is finishing; called by that task.
fn leave<K: Copy + Eq + Hash + 'static>(set: &Weak<TaskSet<K>>, key: K) {
    let Some(set) = set.upgrade() else {
        return;
    };
    let own = set.tasks.borrow_mut().remove(&key);
    if let Some(Some(task)) = own {
        // Our own handle: dropping it would cancel the task that is running this.
        drop(task.detach());
    }
}

/// Wakers of futures waiting for a connection to become usable (or for the set of wanted peers
/// to change). At most one entry per waiting future: a waiter registers once per poll,
/// replacing nothing, and removes itself when dropped.
#[derive(Default)]
pub(super) struct Waiters {
    wakers: RefCell<Vec<(u64, Waker)>>,
    next_id: Cell<u64>,
}

impl Waiters {
    /// Wakes every waiter; each checks its condition again.
    pub fn wake_all(&self) {
        let wakers = std::mem::take(&mut *self.wakers.borrow_mut());
        for (_, waker) in wakers {
            waker.wake();
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.wakers.borrow().len()
    }

    /// Resolves once `ready` returns a value, checking it now and after every `wake_all`.
    pub async fn until<T>(&self, mut ready: impl FnMut() -> Option<T>) -> T {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let _registered = Unregister { waiters: self, id };
        poll_fn(|cx| {
            if let Some(value) = ready() {
                return Poll::Ready(value);
            }
            let mut wakers = self.wakers.borrow_mut();
            match wakers.iter_mut().find(|(waiter, _)| *waiter == id) {
                Some((_, waker)) => waker.clone_from(cx.waker()),
                None => wakers.push((id, cx.waker().clone())),
            }
            Poll::Pending
        })
        .await
    }
}

struct Unregister<'a> {
    waiters: &'a Waiters,
    id: u64,
}

impl Drop for Unregister<'_> {
    fn drop(&mut self) {
        self.waiters
            .wakers
            .borrow_mut()
            .retain(|(waiter, _)| *waiter != self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn run(test: impl Future<Output = ()> + 'static) {
        glommio::LocalExecutorBuilder::default()
            .io_memory(512 << 10)
            .make()
            .unwrap()
            .run(test);
    }

    #[test]
    fn tasks_that_finish_on_their_first_poll_leave_the_set() {
        run(async {
            let set = TaskSet::new();
            for key in 0..1000u64 {
                set.spawn(key, async {});
            }
            assert_eq!(set.len(), 0);
        });
    }

    #[test]
    fn tasks_that_finish_later_or_are_cancelled_leave_the_set() {
        run(async {
            let set = TaskSet::new();
            let finished = Rc::new(Cell::new(0));
            for key in 0..10u64 {
                let finished = finished.clone();
                set.spawn(key, async move {
                    glommio::timer::sleep(Duration::from_millis(1 + key)).await;
                    finished.set(finished.get() + 1);
                });
            }
            assert_eq!(set.len(), 10);
            assert!(set.cancel(9));
            assert!(!set.cancel(9));
            glommio::timer::sleep(Duration::from_millis(50)).await;
            assert_eq!((set.len(), finished.get()), (0, 9));
            set.spawn(10, glommio::timer::sleep(Duration::from_secs(10)));
            set.cancel_all();
            assert_eq!(set.len(), 0);
        });
    }

    #[test]
    fn waiters_wake_when_ready_and_unregister_when_dropped() {
        run(async {
            let waiters = Rc::new(Waiters::default());
            let flag = Rc::new(Cell::new(false));
            let (w, f) = (waiters.clone(), flag.clone());
            let waiting =
                glommio::spawn_local(async move { w.until(|| f.get().then_some(7)).await });
            glommio::yield_if_needed().await;
            glommio::timer::sleep(Duration::from_millis(1)).await;
            assert_eq!(waiters.wakers.borrow().len(), 1);
            waiters.wake_all();
            glommio::timer::sleep(Duration::from_millis(1)).await;
            assert_eq!(
                waiters.wakers.borrow().len(),
                1,
                "woken, not ready: waits again"
            );
            flag.set(true);
            waiters.wake_all();
            assert_eq!(waiting.await, 7);
            let gave_up = futures_lite::future::or(
                async { Some(waiters.until(|| None::<u8>).await) },
                async {
                    glommio::timer::sleep(Duration::from_millis(1)).await;
                    None
                },
            )
            .await;
            assert!(gave_up.is_none());
            assert!(waiters.wakers.borrow().is_empty());
        });
    }
}
