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
//! request's `http.backend_timeout_ms`). A request whose client went away still runs to its
//! end on the home shard; its answer is dropped.

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
/// its output to `reply`.
fn spawn_answer<T: 'static>(
    reply: oneshot::Sender<Result<T, BackendError>>,
    future: impl std::future::Future<Output = Result<T, BackendError>> + 'static,
) {
    glommio::spawn_local(async move {
        let _ = reply.send(future.await);
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
