//! The backend of the API on a shard other than the home shard.
//!
//! With QUIC a node runs one shard per core and every shard serves the API on its own
//! SO_REUSEPORT listener, so accepting, parsing, admission, decoding and signature checks
//! spread over all cores. The replica lives on the home shard only. [`RemoteBackend`] hands
//! each call, query and read_state to it as [`ShardMessage::Home`] work and awaits the answer
//! on a one-shot channel. On the home shard the work finds the node's backend in
//! thread-local state ([`HomeBackend::install`]). Requests and answers are owned values; they
//! cross shards by move, never by reference.
//!
//! `status` must answer synchronously, so the home shard copies its backend's status into a
//! shared [`StatusBoard`] every [`STATUS_REFRESH`] and the other shards read the copy.
//!
//! Bounds: a call in flight here holds its class's admission permit on this shard while it
//! waits. The crossing is bounded by the shard mesh's channel
//! (`engine.cross_shard_channel_messages_max`; a full channel makes the sender wait, inside the
//! request's `http.backend_timeout_ms`). The work on the home shard ends with the request
//! here: when the client goes away or the backend deadline passes, the permit is released and
//! the home shard drops the work (a synchronous call stops waiting for its certificate; an
//! ingress message already submitted stays in the pool, as with the home shard's own API). So
//! the home shard never holds more of the other shards' requests than their gates admit plus
//! what the channel holds.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_channel::oneshot;
use icn_engine::shard::ShardContext;
use icn_engine::transport::quic_shards::{ShardMessage, HOME_SHARD};

use super::backend::{
    Backend, BackendError, BackendStatus, CallReply, CallRequest, LocalBoxFuture, QueryReply,
    QueryRequest, ReadStateReply, ReadStateRequest,
};

/// How often the home shard copies its backend's status for the other shards.
pub const STATUS_REFRESH: Duration = Duration::from_millis(100);

/// The home backend's latest status, as the other shards' API servers report it.
pub type StatusBoard = Arc<Mutex<BackendStatus>>;

thread_local! {
    /// The node's backend, on the home shard's thread once it is installed.
    static HOME_BACKEND: RefCell<Option<Rc<dyn Backend>>> = const { RefCell::new(None) };
}

/// The home shard's backend as the work of the other shards finds it.
pub struct HomeBackend;

impl HomeBackend {
    /// Makes `backend` the one the other shards' requests reach; call on the home shard.
    /// Until then, and after [`HomeBackend::remove`], they are answered 503.
    pub fn install(backend: Rc<dyn Backend>) {
        HOME_BACKEND.with(|home| *home.borrow_mut() = Some(backend));
    }

    /// Forgets the backend (the node is stopping).
    pub fn remove() {
        HOME_BACKEND.with(|home| home.borrow_mut().take());
    }

    fn current() -> Option<Rc<dyn Backend>> {
        HOME_BACKEND.with(|home| home.borrow().clone())
    }

    /// Copies the installed backend's status to `board` every [`STATUS_REFRESH`], until the
    /// future is dropped. Run on the home shard.
    pub async fn publish_status(board: StatusBoard) {
        loop {
            if let Some(backend) = HomeBackend::current() {
                let status = backend.status();
                *board.lock().unwrap_or_else(|p| p.into_inner()) = status;
            }
            glommio::timer::sleep(STATUS_REFRESH).await;
        }
    }
}

/// A [`Backend`] on a shard other than the home shard: every request crosses to the home
/// shard's backend (see the module docs).
pub struct RemoteBackend {
    ctx: Rc<ShardContext<ShardMessage>>,
    status: StatusBoard,
}

impl RemoteBackend {
    pub fn new(ctx: Rc<ShardContext<ShardMessage>>, status: StatusBoard) -> RemoteBackend {
        RemoteBackend { ctx, status }
    }

    /// Runs `work` on the home shard's backend and awaits what it sends back.
    async fn on_home<T: Send + 'static>(
        &self,
        work: impl FnOnce(Rc<dyn Backend>, oneshot::Sender<Result<T, BackendError>>) + Send + 'static,
    ) -> Result<T, BackendError> {
        let (reply, answer) = oneshot::channel();
        let message = ShardMessage::Home(Box::new(move || match HomeBackend::current() {
            Some(backend) => work(backend, reply),
            None => {
                let _ = reply.send(Err(BackendError::Unavailable(
                    "the node's replica is not running".into(),
                )));
            }
        }));
        if self.ctx.send_to(HOME_SHARD, message).await.is_err() {
            return Err(BackendError::Unavailable(
                "the node's home shard stopped".into(),
            ));
        }
        answer.await.unwrap_or_else(|_| {
            Err(BackendError::Unavailable(
                "the node's home shard dropped the request".into(),
            ))
        })
    }
}

/// Spawns `future` on the home shard (the caller is the home shard's message loop) and sends
/// its output to `reply`. The future is dropped unfinished, or never started, once nobody
/// awaits the answer: the request's task on its own shard ended (the client went away, or the
/// backend deadline answered 504), which dropped the receiver.
fn spawn_answer<T: 'static>(
    mut reply: oneshot::Sender<Result<T, BackendError>>,
    future: impl std::future::Future<Output = Result<T, BackendError>> + 'static,
) {
    glommio::spawn_local(async move {
        let outcome = {
            let abandoned = reply.cancellation();
            // The abandonment is polled first, so work already abandoned never starts.
            futures_lite::future::or(
                async {
                    abandoned.await;
                    None
                },
                async { Some(future.await) },
            )
            .await
        };
        if let Some(outcome) = outcome {
            let _ = reply.send(outcome);
        }
    })
    .detach();
}

impl Backend for RemoteBackend {
    fn status(&self) -> BackendStatus {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn call(&self, request: CallRequest) -> LocalBoxFuture<'_, Result<CallReply, BackendError>> {
        Box::pin(self.on_home(move |backend, reply| {
            spawn_answer(reply, async move { backend.call(request).await })
        }))
    }

    fn query(&self, request: QueryRequest) -> LocalBoxFuture<'_, Result<QueryReply, BackendError>> {
        Box::pin(self.on_home(move |backend, reply| {
            spawn_answer(reply, async move { backend.query(request).await })
        }))
    }

    fn read_state(
        &self,
        request: ReadStateRequest,
    ) -> LocalBoxFuture<'_, Result<ReadStateReply, BackendError>> {
        Box::pin(self.on_home(move |backend, reply| {
            spawn_answer(reply, async move { backend.read_state(request).await })
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// Sets its flag when dropped: shows whether the work was dropped.
    struct DropFlag(Rc<Cell<bool>>);

    impl Drop for DropFlag {
        fn drop(&mut self) {
            self.0.set(true);
        }
    }

    #[test]
    fn home_work_stops_when_nobody_awaits_its_answer() {
        glommio::LocalExecutorBuilder::default()
            .io_memory(256 << 10)
            .make()
            .unwrap()
            .run(async {
                // Abandoned while running: the waiting work is dropped unfinished.
                let (reply, answer) = oneshot::channel::<Result<u32, BackendError>>();
                let (dropped, finished) = (Rc::new(Cell::new(false)), Rc::new(Cell::new(false)));
                let (guard, done) = (DropFlag(dropped.clone()), finished.clone());
                spawn_answer(reply, async move {
                    let _guard = guard;
                    glommio::timer::sleep(Duration::from_secs(30)).await;
                    done.set(true);
                    Ok(1)
                });
                glommio::timer::sleep(Duration::from_millis(20)).await;
                assert!(!dropped.get());
                drop(answer);
                glommio::timer::sleep(Duration::from_millis(20)).await;
                assert!(dropped.get() && !finished.get());
                // Abandoned before it ran: never started.
                let (reply, answer) = oneshot::channel::<Result<u32, BackendError>>();
                drop(answer);
                let started = Rc::new(Cell::new(false));
                let flag = started.clone();
                spawn_answer(reply, async move {
                    flag.set(true);
                    Ok(2)
                });
                glommio::timer::sleep(Duration::from_millis(20)).await;
                assert!(!started.get());
                // Awaited: the answer arrives.
                let (reply, answer) = oneshot::channel::<Result<u32, BackendError>>();
                spawn_answer(reply, async { Ok(3) });
                assert_eq!(answer.await.unwrap().unwrap(), 3);
            });
    }
}
