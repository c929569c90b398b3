//! TCP + TLS 1.3 transport, for networks where UDP is blocked.
//!
//! - One connection per node pair. The node with the smaller [`NodeId`] dials, the other only
//!   accepts; an inbound connection from a node we should dial ourselves is refused. The dialer
//!   reconnects with exponential backoff.
//! - Both sides authenticate with their node certificates and accept a peer only when it is a
//!   member of the same subnet in the registry version they hold ([`crate::tls`]).
//! - Requests are multiplexed by request id; dropping an RPC future sends a Cancel frame (or
//!   withdraws the request if it was not sent yet); pings keep an idle connection alive and an
//!   idle timeout detects a dead one.
//! - [`TcpTransport::apply_registry`] closes connections of nodes a new registry version removed
//!   and dials nodes it added.
//!
//! Everything runs on the glommio executor that created the transport.

mod conn;
mod tls_io;
mod wire;

#[cfg(test)]
mod tests;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use boring::ssl::{Ssl, SslContext, SslStreamBuilder};
use futures_lite::future::or;
use glommio::net::{TcpListener, TcpStream};
use glommio::timer::sleep;
use glommio::Task;

use self::conn::Conn;
use self::tls_io::{MemoryIo, TlsSocket};
use self::wire::WireError;
use crate::identity::Identity;
use crate::registry::{Registry, SubnetId};
use crate::tls::{self, SharedRegistry};
use crate::transport::{ConnId, NodeId, Priority, Route, Router, RpcError, Transport};
use crate::Buf;

/// Knobs of the TCP transport. The tuning crate maps its profile onto this struct.
#[derive(Clone, Debug)]
pub struct TcpConfig {
    /// Largest request or response body, in bytes, on send and receive. A peer announcing a
    /// larger body is dropped. Worst-case memory per connection: `requests_in_flight_max` bodies
    /// of this size in each direction.
    pub message_bytes_max: u64,
    /// Requests awaiting a response per connection, in each direction. Bounds the pending-RPC
    /// map and the running-handler map (both keyed by peer-chosen or our request ids).
    pub requests_in_flight_max: usize,
    /// How often a ping is sent on a connection; also how often the idle timeout is checked.
    pub keepalive_interval: Duration,
    /// A connection that received nothing (not even a pong) for this long is closed.
    pub idle_timeout: Duration,
    /// Connect plus TLS handshake must finish within this; bounds how long a half-open or
    /// silent peer holds a handshake slot.
    pub handshake_timeout: Duration,
    /// Concurrent inbound handshakes; further connections are closed at once. Bounds the
    /// memory unauthenticated peers can hold: this many TLS states and read buffers.
    pub handshakes_in_flight_max: usize,
    /// First wait before redialing a peer; doubles per failure up to `reconnect_backoff_max`.
    pub reconnect_backoff_min: Duration,
    pub reconnect_backoff_max: Duration,
    /// Ciphertext read ahead per connection, in bytes (at least one TLS record, 17 KiB).
    pub read_buffer_bytes: usize,
    /// Plaintext encrypted per step when sending a large body, in bytes: the most ciphertext
    /// buffered per connection before it is written to the socket.
    pub write_chunk_bytes: usize,
}

impl Default for TcpConfig {
    fn default() -> Self {
        TcpConfig {
            message_bytes_max: 128 << 20,
            requests_in_flight_max: 256,
            keepalive_interval: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(5),
            handshakes_in_flight_max: 64,
            reconnect_backoff_min: Duration::from_millis(50),
            reconnect_backoff_max: Duration::from_secs(5),
            read_buffer_bytes: 256 << 10,
            write_chunk_bytes: 256 << 10,
        }
    }
}

/// Counters of the transport (the metrics registry reads them).
#[derive(Default, Debug)]
pub struct TcpStats {
    /// Frames refused because they announced a body over `message_bytes_max`.
    pub frames_oversized: Cell<u64>,
    /// Frames refused as malformed (bad magic, version, kind, or field).
    pub frames_malformed: Cell<u64>,
    /// Inbound connections refused after the handshake (we dial that peer ourselves, or it left
    /// the registry meanwhile) or because too many handshakes were in flight.
    pub connections_refused: Cell<u64>,
    /// Handshakes that failed or timed out (both directions).
    pub handshakes_failed: Cell<u64>,
    /// Requests answered TooManyInFlight without running a handler.
    pub requests_refused_in_flight: Cell<u64>,
}

impl TcpStats {
    fn count_wire_error(&self, error: &WireError) {
        let counter = match error {
            WireError::TooLarge { .. } => &self.frames_oversized,
            _ => &self.frames_malformed,
        };
        counter.set(counter.get() + 1);
    }

    fn bump(counter: &Cell<u64>) {
        counter.set(counter.get() + 1);
    }
}

/// Why the transport could not start.
#[derive(Debug, thiserror::Error)]
pub enum TcpError {
    #[error("node {0} is not in the registry")]
    NotInRegistry(NodeId),
    #[error("TLS setup: {0}")]
    Tls(#[from] boring::error::ErrorStack),
    #[error("cannot listen on {addr}: {message}")]
    Listen { addr: SocketAddr, message: String },
}

/// The TCP+TLS transport of one shard. Dropping it closes every connection.
pub struct TcpTransport {
    inner: Rc<Inner>,
    _acceptor: Task<()>,
}

struct Inner {
    local_id: NodeId,
    subnet: SubnetId,
    config: Rc<TcpConfig>,
    stats: Rc<TcpStats>,
    router: Rc<Router>,
    server_ctx: SslContext,
    client_ctx: SslContext,
    /// The registry version the TLS verifiers check peers against.
    registry: SharedRegistry,
    /// Peers of the current registry version and their TCP addresses.
    wanted: RefCell<HashMap<NodeId, SocketAddr>>,
    conns: RefCell<HashMap<NodeId, Rc<Conn>>>,
    /// Dial loops, one per peer with a larger id than ours.
    dialers: RefCell<HashMap<NodeId, Task<()>>>,
    handshakes_in_flight: Cell<usize>,
    next_conn_id: Cell<u64>,
}

impl TcpTransport {
    /// Starts listening on this node's `tcp_addr` from `registry` and dials the peers this node
    /// must dial. Must run on a glommio executor.
    pub fn start(
        identity: &Identity,
        registry: Arc<Registry>,
        router: Router,
        config: TcpConfig,
    ) -> Result<TcpTransport, TcpError> {
        let local_id = identity.node_id();
        let record = registry
            .node(local_id)
            .ok_or(TcpError::NotInRegistry(local_id))?;
        let subnet = registry
            .subnet_of(local_id)
            .ok_or(TcpError::NotInRegistry(local_id))?
            .clone();
        let listen_addr = record.tcp_addr;
        let shared: SharedRegistry = Arc::new(RwLock::new(registry.clone()));
        let verifier = tls::registry_verifier(shared.clone(), subnet.clone());
        let server_ctx = tls::server_context_builder(identity, verifier.clone())?.build();
        let client_ctx = tls::client_context_builder(identity, verifier)?.build();
        let listener = TcpListener::bind(listen_addr).map_err(|e| TcpError::Listen {
            addr: listen_addr,
            message: e.to_string(),
        })?;
        let inner = Rc::new(Inner {
            local_id,
            subnet,
            config: Rc::new(config),
            stats: Rc::default(),
            router: Rc::new(router),
            server_ctx,
            client_ctx,
            registry: shared,
            wanted: RefCell::default(),
            conns: RefCell::default(),
            dialers: RefCell::default(),
            handshakes_in_flight: Cell::new(0),
            next_conn_id: Cell::new(1),
        });
        let acceptor = glommio::spawn_local(inner.clone().accept_loop(listener));
        inner.apply_registry(&registry);
        Ok(TcpTransport {
            inner,
            _acceptor: acceptor,
        })
    }

    /// Adopts a new registry version: closes connections to nodes no longer in our subnet,
    /// dials nodes that joined, and checks later handshakes against this version.
    pub fn apply_registry(&self, registry: &Arc<Registry>) {
        self.inner.apply_registry(registry);
    }

    pub fn stats(&self) -> &TcpStats {
        &self.inner.stats
    }

    pub fn config(&self) -> &TcpConfig {
        &self.inner.config
    }
}

impl Drop for TcpTransport {
    fn drop(&mut self) {
        self.inner.wanted.borrow_mut().clear();
        let conns = std::mem::take(&mut *self.inner.conns.borrow_mut());
        for conn in conns.values() {
            conn.close();
        }
        // Cancels the dial loops; the accept loop is cancelled with `_acceptor`.
        drop(std::mem::take(&mut *self.inner.dialers.borrow_mut()));
    }
}

impl Transport for TcpTransport {
    fn local_id(&self) -> NodeId {
        self.inner.local_id
    }

    async fn rpc(
        &self,
        peer: NodeId,
        route: Route,
        priority: Priority,
        request: Buf,
    ) -> Result<Buf, RpcError> {
        let conn = self.inner.conns.borrow().get(&peer).cloned();
        match conn {
            Some(conn) if !conn.is_closed() => conn.rpc(route, priority, request).await,
            _ => Err(RpcError::NotConnected(peer)),
        }
    }

    fn peers(&self) -> Vec<(NodeId, ConnId)> {
        let conns = self.inner.conns.borrow();
        let mut peers: Vec<_> = conns
            .values()
            .filter(|c| !c.is_closed())
            .map(|c| (c.peer, c.id))
            .collect();
        peers.sort();
        peers
    }
}

impl Inner {
    fn apply_registry(self: &Rc<Self>, registry: &Arc<Registry>) {
        if let Ok(mut current) = self.registry.write() {
            *current = registry.clone();
        }
        let mut wanted = HashMap::new();
        if registry.is_member(&self.subnet, self.local_id) {
            for node in registry.nodes(&self.subnet) {
                if node.node_id != self.local_id {
                    wanted.insert(node.node_id, node.tcp_addr);
                }
            }
        }
        let previous = std::mem::replace(&mut *self.wanted.borrow_mut(), wanted.clone());
        for (peer, addr) in &previous {
            if wanted.get(peer) != Some(addr) {
                self.disconnect(*peer);
            }
        }
        for peer in wanted.keys().filter(|peer| self.local_id < **peer) {
            if !self.dialers.borrow().contains_key(peer) {
                let task = glommio::spawn_local(self.clone().dial_loop(*peer));
                self.dialers.borrow_mut().insert(*peer, task);
            }
        }
    }

    /// Closes the connection to `peer` and stops dialing it.
    fn disconnect(&self, peer: NodeId) {
        let conn = self.conns.borrow_mut().remove(&peer);
        if let Some(conn) = conn {
            conn.close();
        }
        drop(self.dialers.borrow_mut().remove(&peer));
    }

    async fn accept_loop(self: Rc<Self>, listener: TcpListener) {
        loop {
            let stream = match listener.accept().await {
                Ok(stream) => stream,
                Err(_) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            if self.handshakes_in_flight.get() >= self.config.handshakes_in_flight_max {
                TcpStats::bump(&self.stats.connections_refused);
                continue;
            }
            // Counted here, before the task runs, so a burst of accepts cannot overshoot.
            self.handshakes_in_flight
                .set(self.handshakes_in_flight.get() + 1);
            glommio::spawn_local(self.clone().serve_inbound(stream)).detach();
        }
    }

    async fn serve_inbound(self: Rc<Self>, stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        let accepted = self.handshake(stream, None).await;
        self.handshakes_in_flight
            .set(self.handshakes_in_flight.get() - 1);
        let Some((peer, socket)) = accepted else {
            return;
        };
        if peer >= self.local_id || !self.wanted.borrow().contains_key(&peer) {
            // Either we dial this peer ourselves (one connection per pair) or it just left.
            TcpStats::bump(&self.stats.connections_refused);
            socket.close().await;
            return;
        }
        self.run_connection(peer, socket).await;
    }

    async fn dial_loop(self: Rc<Self>, peer: NodeId) {
        let mut backoff = self.config.reconnect_backoff_min;
        loop {
            let Some(addr) = self.wanted.borrow().get(&peer).copied() else {
                return;
            };
            if let Some(socket) = self.dial(peer, addr).await {
                backoff = self.config.reconnect_backoff_min;
                self.run_connection(peer, socket).await;
            }
            sleep(backoff).await;
            backoff = (backoff * 2).min(self.config.reconnect_backoff_max);
        }
    }

    async fn dial(&self, peer: NodeId, addr: SocketAddr) -> Option<TlsSocket> {
        let connect = async {
            let stream = TcpStream::connect(addr).await.ok()?;
            let _ = stream.set_nodelay(true);
            Some(stream)
        };
        let timeout = async {
            sleep(self.config.handshake_timeout).await;
            None
        };
        let Some(stream) = or(connect, timeout).await else {
            TcpStats::bump(&self.stats.handshakes_failed);
            return None;
        };
        let (_, socket) = self.handshake(stream, Some(peer)).await?;
        Some(socket)
    }

    /// Runs a TLS handshake as client (`dialing` names the expected peer) or server; returns
    /// the authenticated peer, or None (counted) when it fails or times out.
    async fn handshake(
        &self,
        stream: TcpStream,
        dialing: Option<NodeId>,
    ) -> Option<(NodeId, TlsSocket)> {
        let attempt = async {
            let (ctx, is_client) = match dialing {
                Some(_) => (&self.client_ctx, true),
                None => (&self.server_ctx, false),
            };
            let mut ssl = Ssl::new(ctx).ok()?;
            if let Some(peer) = dialing {
                tls::set_expected_peer(&mut ssl, peer).ok()?;
            }
            let builder = SslStreamBuilder::new(ssl, MemoryIo::new(self.config.read_buffer_bytes));
            let mid = if is_client {
                builder.setup_connect()
            } else {
                builder.setup_accept()
            };
            let stream = RefCell::new(stream);
            let mid = tls_io::start(mid).ok()?;
            let done = tls_io::handshake(&stream, mid).await.ok()?;
            if !tls::negotiated_as_expected(done.ssl()) {
                return None;
            }
            let peer = tls::peer_node_id(done.ssl())?;
            Some((peer, TlsSocket::new(stream, done)))
        };
        let timeout = async {
            sleep(self.config.handshake_timeout).await;
            None
        };
        let outcome = or(attempt, timeout).await;
        if outcome.is_none() {
            TcpStats::bump(&self.stats.handshakes_failed);
        }
        outcome
    }

    /// Registers a new connection to `peer` (replacing an older one) and runs it to its end.
    async fn run_connection(self: &Rc<Self>, peer: NodeId, socket: TlsSocket) {
        if !self.wanted.borrow().contains_key(&peer) {
            socket.close().await;
            return;
        }
        let id = ConnId(self.next_conn_id.get());
        self.next_conn_id.set(id.0 + 1);
        let conn = Rc::new(Conn::new(
            id,
            peer,
            socket,
            self.config.clone(),
            self.stats.clone(),
        ));
        let replaced = self.conns.borrow_mut().insert(peer, conn.clone());
        if let Some(old) = replaced {
            old.close();
        }
        let _reason = conn.clone().run(self.router.clone()).await;
        let mut conns = self.conns.borrow_mut();
        if conns.get(&peer).is_some_and(|current| current.id == id) {
            conns.remove(&peer);
        }
    }
}
