//! A node's QUIC transport spread over its shards.
//!
//! Every shard runs one [`QuicTransport`] on its socket of one [`crate::udp::SteeredPort`]
//! ([`Steering`]): each endpoint owns the connections of the peers [`shard_of`] places on its
//! shard, so the packets, the crypto and the stream work of different peers run on different
//! cores. The node's services (consensus managers, state sync, the replica) run on the home shard
//! ([`HOME_SHARD`]) and see one transport, [`QuicShards`]:
//! - an RPC to a peer another shard owns crosses to that shard as [`ShardMessage::Rpc`] and is
//!   sent by that shard's endpoint; the answer comes back on a one-shot channel. With
//!   [`Transport::rpc_then`] the work on the answer crosses with it and runs on the owning
//!   shard, and what it returns comes back instead;
//! - a request that arrives on another shard's endpoint crosses to the home shard as
//!   [`ShardMessage::Serve`] (that endpoint's router is [`forwarding_router`]) and is dispatched
//!   by the home router, as a request on the home shard's own endpoint is;
//! - each shard publishes its connected peers and their RTTs ([`QuicShardsShared`]) whenever a
//!   connection opens or closes and every [`PUBLISH_INTERVAL`], so [`Transport::peers`] on the
//!   home shard lists the whole node's connections;
//! - a new allowed set (registry version, peer manager) is stored once and every shard applies
//!   the peers it owns;
//! - other work for the home shard's services (the HTTP API's backend calls from the other
//!   shards) crosses as [`ShardMessage::Home`] and runs on the home shard's thread.
//!
//! Bodies cross shards as refcounted [`Buf`]s, never copied. Dropping a crossing call on either
//! side cancels the other side: the waiting end's receiver is dropped, and the working end races
//! its work against that cancellation (an RPC future dropped resets its QUIC stream; a handler
//! dropped is a cancelled request).
//!
//! Bounds: messages queued between two shards are bounded by the shard mesh's channels
//! (`engine.cross_shard_channel_messages_max`; a full channel makes the sender wait). A crossing
//! call holds what the same call holds on one shard for its whole life: an outgoing one a slot of
//! the owning endpoint's `requests_in_flight_max` for its peer (more fail with `TooManyInFlight`),
//! an incoming one a stream of its connection (`bidi_streams_max`). The published peer lists hold
//! the allowed peers only.
//!
//! The working end of a crossing call is a detached task (a task set would keep one entry per
//! call ever made): it ends with its call. At shutdown the owning endpoint's close fails its
//! outgoing RPCs at once, and dropping its handlers drops the receivers the home shard's
//! dispatch tasks race against, so none outlives the endpoints.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_channel::oneshot;
use futures_lite::future::or;

use crate::buffer::Buf;
use crate::shard::ShardContext;
use crate::transport::quic::{shard_of, QuicTransport};
use crate::transport::{
    AnswerWork, ConnId, NodeId, Priority, RequestContext, Route, Router, RpcError, Transport,
};

/// The shard that runs the node's services and dispatches every request.
pub const HOME_SHARD: usize = 0;
/// How often each shard republishes its peers' RTTs (connections opening or closing are
/// published at once).
pub const PUBLISH_INTERVAL: Duration = Duration::from_millis(200);

/// Where a crossing call's answer goes.
pub type Reply = oneshot::Sender<Result<Buf, RpcError>>;

/// What the shards of a node with a sharded QUIC transport send each other.
pub enum ShardMessage {
    /// Home shard to owner: send this RPC to a peer the owner's endpoint serves.
    Rpc {
        peer: NodeId,
        route: Route,
        priority: Priority,
        body: Buf,
        /// Runs on the answer on the owning shard (`rpc_then`); its result is the reply.
        then: Option<AnswerWork>,
        reply: Reply,
    },
    /// Owner to home shard: a peer's request, for the home router.
    Serve {
        request: RequestContext,
        body: Buf,
        reply: Reply,
    },
    /// Home shard to owner: the allowed set changed (read it from [`QuicShardsShared`]).
    AllowedChanged,
    /// Another shard to the home shard: work for the home shard's services (the node's HTTP
    /// API on another shard hands its backend calls over this way). It runs on the home
    /// shard's thread as soon as it is received; anything long it must spawn.
    Home(HomeWork),
}

/// Work one shard hands the home shard ([`ShardMessage::Home`]): it is `Send` to cross, and
/// finds the home shard's (non-`Send`) services there, in thread-local state.
pub type HomeWork = Box<dyn FnOnce() + Send>;

/// One connected peer as its shard last published it.
#[derive(Clone, Copy, Debug)]
struct PeerEntry {
    peer: NodeId,
    conn: ConnId,
    rtt: Option<Duration>,
}

/// What the shards of one node share: each shard's published peers and the allowed set.
pub struct QuicShardsShared {
    published: Vec<Mutex<Vec<PeerEntry>>>,
    allowed: Mutex<HashMap<NodeId, SocketAddr>>,
    /// Bumped by every new allowed set; each shard applies a generation once.
    allowed_generation: AtomicU64,
}

/// A poisoned lock means a panic mid-update on another shard; the value is still whole.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl QuicShardsShared {
    /// For a node of `shards` shards (made before they start), with the peers allowed at start.
    pub fn new(shards: usize, allowed: HashMap<NodeId, SocketAddr>) -> Arc<QuicShardsShared> {
        Arc::new(QuicShardsShared {
            published: (0..shards.max(1)).map(|_| Mutex::default()).collect(),
            allowed: Mutex::new(allowed),
            allowed_generation: AtomicU64::new(0),
        })
    }

    pub fn shards(&self) -> usize {
        self.published.len()
    }

    /// The allowed set in force (every shard's peers).
    pub fn allowed(&self) -> HashMap<NodeId, SocketAddr> {
        lock(&self.allowed).clone()
    }

    fn set_allowed(&self, allowed: HashMap<NodeId, SocketAddr>) {
        *lock(&self.allowed) = allowed;
        self.allowed_generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Records what `transport`, shard `shard`'s endpoint, is connected to now.
    fn publish(&self, shard: usize, transport: &QuicTransport) {
        let entries: Vec<PeerEntry> = transport
            .peers()
            .into_iter()
            .map(|(peer, conn)| PeerEntry {
                peer,
                conn,
                rtt: transport.path_stats(peer).map(|(rtt, _, _)| rtt),
            })
            .collect();
        if let Some(slot) = self.published.get(shard) {
            *lock(slot) = entries;
        }
    }

    fn entry(&self, shard: usize, peer: NodeId) -> Option<PeerEntry> {
        lock(self.published.get(shard)?)
            .iter()
            .find(|entry| entry.peer == peer)
            .copied()
    }
}

/// The node's QUIC transport as the home shard's services see it (see the module docs).
#[derive(Clone)]
pub struct QuicShards {
    local: QuicTransport,
    ctx: Option<Rc<ShardContext<ShardMessage>>>,
    shared: Arc<QuicShardsShared>,
}

impl QuicShards {
    /// A node of one shard: `local` is the whole transport.
    pub fn single(local: QuicTransport) -> QuicShards {
        let shared = QuicShardsShared::new(1, HashMap::new());
        QuicShards {
            local,
            ctx: None,
            shared,
        }
    }

    /// On the home shard: fronts `local` (the home shard's endpoint, started with `router`) and
    /// the other shards' endpoints, reached through `ctx`; spawns into `ctx`'s task set one loop
    /// per other shard that dispatches the requests it forwards with `router`.
    pub fn start_home(
        local: QuicTransport,
        ctx: Rc<ShardContext<ShardMessage>>,
        shared: Arc<QuicShardsShared>,
        router: Router,
    ) -> QuicShards {
        for source in (0..ctx.count).filter(|shard| *shard != ctx.index) {
            ctx.spawn(serve_forwarded(ctx.clone(), source, router.clone()));
        }
        QuicShards {
            local,
            ctx: Some(ctx),
            shared,
        }
    }

    /// The home shard's own endpoint (its metrics, its stats).
    pub fn local(&self) -> &QuicTransport {
        &self.local
    }

    pub fn shards(&self) -> usize {
        self.shared.shards()
    }

    /// Replaces the allowed set (a new registry version or peer set): the home endpoint applies
    /// it now, every other shard as soon as it reads the change.
    pub fn set_allowed_peers(&self, allowed: HashMap<NodeId, SocketAddr>) {
        self.local.set_allowed_peers(allowed.clone());
        let Some(ctx) = &self.ctx else {
            return;
        };
        self.shared.set_allowed(allowed);
        for shard in (0..ctx.count).filter(|shard| *shard != ctx.index) {
            // A full channel drops the nudge; the shard's publisher also checks the generation
            // every PUBLISH_INTERVAL.
            let _ = ctx.try_send_to(shard, ShardMessage::AllowedChanged);
        }
    }

    /// Latest RTT to `peer`, from the shard that owns it.
    pub fn rtt(&self, peer: NodeId) -> Option<Duration> {
        let owner = shard_of(&peer, self.shards());
        if owner == self.home_index() {
            return self.local.path_stats(peer).map(|(rtt, _, _)| rtt);
        }
        self.shared.entry(owner, peer)?.rtt
    }

    /// Closes the home endpoint's connections and stops its tasks (the other shards stop their
    /// own endpoints).
    pub async fn shutdown(&self) {
        self.local.shutdown().await;
    }

    fn home_index(&self) -> usize {
        self.ctx.as_ref().map_or(HOME_SHARD, |ctx| ctx.index)
    }

    /// An RPC on the endpoint that owns `peer` (this shard's or another's), and `then` on its
    /// answer there.
    async fn call(
        &self,
        peer: NodeId,
        route: Route,
        priority: Priority,
        request: Buf,
        then: Option<AnswerWork>,
    ) -> Result<Buf, RpcError> {
        let owner = shard_of(&peer, self.shards());
        let ctx = match &self.ctx {
            Some(ctx) if owner != ctx.index => ctx,
            _ => return rpc_then_here(&self.local, peer, route, priority, request, then).await,
        };
        let (reply, answer) = oneshot::channel();
        let message = ShardMessage::Rpc {
            peer,
            route,
            priority,
            body: request,
            then,
            reply,
        };
        if ctx.send_to(owner, message).await.is_err() {
            return Err(RpcError::Local(format!("QUIC shard {owner} stopped")));
        }
        answer.await.unwrap_or_else(|_| {
            Err(RpcError::Local(format!(
                "QUIC shard {owner} dropped the RPC"
            )))
        })
    }
}

/// An RPC on this shard's endpoint, then `then` (if any) on its answer.
async fn rpc_then_here(
    endpoint: &QuicTransport,
    peer: NodeId,
    route: Route,
    priority: Priority,
    request: Buf,
    then: Option<AnswerWork>,
) -> Result<Buf, RpcError> {
    match then {
        Some(then) => {
            endpoint
                .rpc_then(peer, route, priority, request, then)
                .await
        }
        None => endpoint.rpc(peer, route, priority, request).await,
    }
}

impl Transport for QuicShards {
    fn local_id(&self) -> NodeId {
        self.local.local_id()
    }

    async fn rpc(
        &self,
        peer: NodeId,
        route: Route,
        priority: Priority,
        request: Buf,
    ) -> Result<Buf, RpcError> {
        self.call(peer, route, priority, request, None).await
    }

    async fn rpc_then(
        &self,
        peer: NodeId,
        route: Route,
        priority: Priority,
        request: Buf,
        then: AnswerWork,
    ) -> Result<Buf, RpcError> {
        self.call(peer, route, priority, request, Some(then)).await
    }

    fn peers(&self) -> Vec<(NodeId, ConnId)> {
        let mut peers = self.local.peers();
        if let Some(ctx) = &self.ctx {
            for shard in (0..ctx.count).filter(|shard| *shard != ctx.index) {
                if let Some(slot) = self.shared.published.get(shard) {
                    peers.extend(lock(slot).iter().map(|entry| (entry.peer, entry.conn)));
                }
            }
            peers.sort();
        }
        peers
    }
}

/// The router of a shard other than the home shard: every request goes to the home shard's
/// router, and its answer comes back.
pub fn forwarding_router(ctx: Rc<ShardContext<ShardMessage>>) -> Router {
    Router::new().fallback(move |request: RequestContext, body: Buf| {
        let ctx = ctx.clone();
        async move {
            let (reply, answer) = oneshot::channel();
            let message = ShardMessage::Serve {
                request,
                body,
                reply,
            };
            if ctx.send_to(HOME_SHARD, message).await.is_err() {
                return Err(RpcError::Local("the home shard stopped".into()));
            }
            answer.await.unwrap_or_else(|_| {
                Err(RpcError::Local("the home shard dropped the request".into()))
            })
        }
    })
}

/// Runs a shard other than the home shard until shutdown: the RPCs the home shard sends out
/// through `transport` (this shard's endpoint, started with [`forwarding_router`]), changes of
/// the allowed set, and the publishing of this shard's peers.
pub async fn run_owner_shard(
    ctx: Rc<ShardContext<ShardMessage>>,
    transport: QuicTransport,
    shared: Arc<QuicShardsShared>,
) {
    ctx.spawn(publish_loop(ctx.clone(), transport.clone(), shared.clone()));
    while let Some(message) = next_message(&ctx, HOME_SHARD).await {
        match message {
            ShardMessage::Rpc {
                peer,
                route,
                priority,
                body,
                then,
                reply,
            } => {
                let transport = transport.clone();
                glommio::spawn_local(answer(reply, async move {
                    rpc_then_here(&transport, peer, route, priority, body, then).await
                }))
                .detach();
            }
            ShardMessage::AllowedChanged => apply_allowed(&transport, &shared, &mut 0),
            ShardMessage::Serve { reply, .. } => {
                let _ = reply.send(Err(RpcError::Local(
                    "only the home shard serves requests".into(),
                )));
            }
            // Only the home shard has the services home work is for: dropping it drops the
            // reply channel it carries, which its sender sees as the call failing.
            ShardMessage::Home(_) => {}
        }
    }
}

/// The next message shard `source` sends here; None once it stopped or the node stops.
async fn next_message(ctx: &ShardContext<ShardMessage>, source: usize) -> Option<ShardMessage> {
    or(ctx.recv_from(source), async {
        ctx.shutdown.wait().await;
        None
    })
    .await
}

/// Applies the allowed set to this shard's endpoint if its generation is newer than `seen`.
fn apply_allowed(transport: &QuicTransport, shared: &QuicShardsShared, seen: &mut u64) {
    let generation = shared.allowed_generation.load(Ordering::SeqCst);
    if generation != *seen {
        *seen = generation;
        transport.set_allowed_peers(shared.allowed());
    }
}

/// Publishes `transport`'s peers whenever they change and every [`PUBLISH_INTERVAL`], and
/// applies allowed sets it has not seen (in case a nudge found the channel full).
async fn publish_loop(
    ctx: Rc<ShardContext<ShardMessage>>,
    transport: QuicTransport,
    shared: Arc<QuicShardsShared>,
) {
    let mut seen = 0;
    while !ctx.shutdown.is_triggered() {
        apply_allowed(&transport, &shared, &mut seen);
        shared.publish(ctx.index, &transport);
        or(transport.peers_changed(), async {
            or(glommio::timer::sleep(PUBLISH_INTERVAL), ctx.shutdown.wait()).await
        })
        .await;
    }
    if let Some(slot) = shared.published.get(ctx.index) {
        lock(slot).clear();
    }
}

/// Dispatches what shard `source` forwards with the home `router` until that shard stops.
async fn serve_forwarded(ctx: Rc<ShardContext<ShardMessage>>, source: usize, router: Router) {
    while let Some(message) = next_message(&ctx, source).await {
        match message {
            ShardMessage::Serve {
                request,
                body,
                reply,
            } => {
                let router = router.clone();
                glommio::spawn_local(answer(reply, async move {
                    router.dispatch(request, body).await
                }))
                .detach();
            }
            ShardMessage::Rpc { reply, .. } => {
                let _ = reply.send(Err(RpcError::Local(
                    "RPCs are sent by the shard that owns the peer".into(),
                )));
            }
            ShardMessage::AllowedChanged => {}
            ShardMessage::Home(work) => work(),
        }
    }
}

/// Runs `work` and sends its result to `reply`, unless the waiting side gives up first (its
/// receiver dropped): then `work` is dropped, which cancels it.
async fn answer(mut reply: Reply, work: impl std::future::Future<Output = Result<Buf, RpcError>>) {
    let outcome = or(async { Some(work.await) }, async {
        reply.cancellation().await;
        None
    })
    .await;
    if let Some(result) = outcome {
        let _ = reply.send(result);
    }
}
