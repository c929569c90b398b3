//! Transports behind one trait: QUIC (quiche), TCP with TLS 1.3 (boring), and memory (simulation).
//!
//! The contract every transport keeps:
//! - `rpc(peer, route, priority, request)` sends one request and waits for its one response. On
//!   QUIC each RPC is one bidirectional stream; dropping the future cancels the RPC (QUIC sends
//!   RESET_STREAM / STOP_SENDING; TCP sends a cancel frame; memory drops the exchange).
//! - `rpc_then(peer, route, priority, request, then)` is `rpc` followed by `then` on the answer,
//!   run where the answer arrived: on the shard that owns the peer's connection when a node
//!   spreads its peers over shards (`quic_shards`), on the calling shard otherwise. It is for
//!   costly work on an answer (hashing and writing a state chunk), which then runs beside the
//!   packets it came in, on that shard's core. Dropping the future cancels the RPC and `then`.
//! - `peers()` lists the connected peers, each with a connection id that increases monotonically
//!   within one transport instance: a reconnect is always a new, larger id, so consumers can tell
//!   a fresh connection from a stale one.
//! - The server side dispatches each inbound request to the handler registered for its route in a
//!   [`Router`]. A route without a handler is answered with [`RpcError::NoRoute`].
//! - Messages larger than the configured maximum are refused on both sides with
//!   [`RpcError::MessageTooLarge`].
//!
//! Transports run on a shard (glommio executor, or the simulator's executor for memory) and are
//! `!Send` on purpose: a connection belongs to exactly one shard.

pub mod tcp;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;

use crate::buffer::Buf;

pub(crate) mod durations;
pub mod memory;
pub mod quic;
pub mod quic_shards;
pub(crate) mod wire;

pub use wire::{decode_error_index, DECODE_ERROR_KINDS};

/// A node's identity: its Ed25519 public key (32 bytes), as listed in the registry.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub [u8; 32]);

impl NodeId {
    /// Short hex form for logs.
    pub fn short(&self) -> String {
        self.0[..4].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The byte that places this node's QUIC connections on a peer's shards
    /// (`transport::quic::shard_of`): the key's first byte, uniformly distributed for Ed25519
    /// keys. A dial sends it as the first byte of its first Initial's destination id.
    pub fn steering_byte(&self) -> u8 {
        self.0[0]
    }

    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn from_hex(text: &str) -> Option<NodeId> {
        let text = text.trim();
        if text.len() != 64 || !text.is_ascii() {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(NodeId(out))
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.short())
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.short())
    }
}

/// Identifies one connection to a peer; strictly increasing per transport instance.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct ConnId(pub u64);

/// Which handler serves a request (carried in the RPC envelope).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Route(pub u16);

/// Scheduling priority of an RPC: higher priorities are sent first when a connection is busy.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub enum Priority {
    Low = 0,
    Normal = 1,
    High = 2,
}

/// Why an RPC failed. Says whose fault it is: the peer's, a limit, the network, or ours.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RpcError {
    #[error("peer {0} is not connected")]
    NotConnected(NodeId),
    #[error("connection to the peer closed before the response arrived")]
    ConnectionClosed,
    #[error("no handler for route {0:?}")]
    NoRoute(Route),
    #[error("message of {size_bytes} bytes exceeds the limit of {limit_bytes} bytes")]
    MessageTooLarge { size_bytes: u64, limit_bytes: u64 },
    #[error("too many requests in flight ({limit})")]
    TooManyInFlight { limit: usize },
    #[error("peer misbehaved: {0}")]
    PeerMisbehaved(String),
    #[error("the handler failed: {0}")]
    Handler(String),
    #[error("timed out")]
    Timeout,
    #[error("cancelled")]
    Cancelled,
    #[error("local error: {0}")]
    Local(String),
}

/// Who sent an inbound request, and over which connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestContext {
    pub peer: NodeId,
    pub conn: ConnId,
    pub route: Route,
    pub priority: Priority,
}

/// A future that stays on its shard.
pub type LocalBoxFuture<T> = Pin<Box<dyn Future<Output = T>>>;

/// Serves one route: takes the request, returns the response (or an error sent back to the peer).
pub type Handler = Rc<dyn Fn(RequestContext, Buf) -> LocalBoxFuture<Result<Buf, RpcError>>>;

/// Maps routes to handlers on the serving side.
#[derive(Clone, Default)]
pub struct Router {
    handlers: HashMap<Route, Handler>,
    /// Serves every route without a handler of its own (a shard that forwards its peers'
    /// requests to the shard where the services run).
    fallback: Option<Handler>,
}

impl Router {
    pub fn new() -> Self {
        Router::default()
    }

    /// Registers `handler` for `route`, replacing any earlier one.
    pub fn route<F, Fut>(mut self, route: Route, handler: F) -> Self
    where
        F: Fn(RequestContext, Buf) -> Fut + 'static,
        Fut: Future<Output = Result<Buf, RpcError>> + 'static,
    {
        let handler: Handler = Rc::new(move |ctx, req| Box::pin(handler(ctx, req)));
        self.handlers.insert(route, handler);
        self
    }

    /// Serves every route that has no handler of its own with `handler`.
    pub fn fallback<F, Fut>(mut self, handler: F) -> Self
    where
        F: Fn(RequestContext, Buf) -> Fut + 'static,
        Fut: Future<Output = Result<Buf, RpcError>> + 'static,
    {
        let handler: Handler = Rc::new(move |ctx, req| Box::pin(handler(ctx, req)));
        self.fallback = Some(handler);
        self
    }

    /// The handler of `route`, else the fallback.
    pub fn handler(&self, route: Route) -> Option<Handler> {
        self.handlers
            .get(&route)
            .or(self.fallback.as_ref())
            .cloned()
    }

    /// Runs the handler for `ctx.route`, or answers `NoRoute`.
    pub async fn dispatch(&self, ctx: RequestContext, request: Buf) -> Result<Buf, RpcError> {
        match self.handler(ctx.route) {
            Some(handler) => handler(ctx, request).await,
            None => Err(RpcError::NoRoute(ctx.route)),
        }
    }
}

/// What `Transport::rpc_then` runs on an answer. It may be sent to another shard before it runs,
/// so it is `Send`; the future it makes runs on that shard and need not be.
pub type AnswerWork =
    Box<dyn FnOnce(Buf) -> Pin<Box<dyn Future<Output = Result<Buf, RpcError>>>> + Send>;

/// The transport contract (see the module docs). Implemented by QUIC, TCP+TLS and memory.
#[allow(async_fn_in_trait)]
pub trait Transport {
    /// This node's identity.
    fn local_id(&self) -> NodeId;

    /// Sends `request` to `peer` on `route` and waits for the response. Dropping the future
    /// cancels the RPC.
    async fn rpc(
        &self,
        peer: NodeId,
        route: Route,
        priority: Priority,
        request: Buf,
    ) -> Result<Buf, RpcError>;

    /// [`Transport::rpc`], then `then` on the answer where the answer arrived (see the module
    /// docs); returns what `then` returns. A transport that owns all its connections on the
    /// calling shard runs `then` here, as this default does.
    async fn rpc_then(
        &self,
        peer: NodeId,
        route: Route,
        priority: Priority,
        request: Buf,
        then: AnswerWork,
    ) -> Result<Buf, RpcError> {
        let answer = self.rpc(peer, route, priority, request).await?;
        then(answer).await
    }

    /// Connected peers and their current connection ids.
    fn peers(&self) -> Vec<(NodeId, ConnId)>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_id_hex_round_trip() {
        let id = NodeId([0xab; 32]);
        assert_eq!(NodeId::from_hex(&id.to_hex()), Some(id));
        assert_eq!(NodeId::from_hex("zz"), None);
        assert_eq!(NodeId::from_hex(&"g".repeat(64)), None);
    }

    #[test]
    fn router_dispatches_and_refuses_unknown_routes() {
        let router = Router::new().route(Route(7), |_ctx, req: Buf| async move { Ok(req) });
        let ctx = RequestContext {
            peer: NodeId([1; 32]),
            conn: ConnId(1),
            route: Route(7),
            priority: Priority::Normal,
        };
        let ex = glommio::LocalExecutorBuilder::default().make().unwrap();
        ex.run(async {
            let echoed = router
                .dispatch(ctx, Buf::copy_from_slice(b"hi"))
                .await
                .unwrap();
            assert_eq!(&echoed[..], b"hi");
            let missing = RequestContext {
                route: Route(8),
                ..ctx
            };
            assert_eq!(
                router.dispatch(missing, Buf::empty()).await.err(),
                Some(RpcError::NoRoute(Route(8)))
            );
        });
    }
}
