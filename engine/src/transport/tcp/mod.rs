//! TCP + TLS 1.3 transport, for networks where UDP is blocked.
//!
//! - One connection per node pair. The node with the smaller [`NodeId`] dials, the other only
//!   accepts; an inbound connection from a node we should dial ourselves is refused. The dialer
//!   reconnects with exponential backoff.
//! - Both sides authenticate with their node certificates and accept a peer only when it is a
//!   member of the same subnet in the registry version they hold ([`crate::tls`]).
//! - Frames are `icn-codecs` frames (16-byte header, FlatBuffers envelope, raw body; see
//!   docs/protocol.md, "TCP"). Requests are multiplexed by request id; dropping an RPC future
//!   sends a Cancel frame (or withdraws the request if it was not sent yet); pings keep an idle
//!   connection alive and an idle timeout detects a dead one.
//! - A connection we end (transport dropped, peer removed from the registry, replaced by a newer
//!   connection, idle, protocol error) ends with a Goaway frame, so the peer fails its pending
//!   RPCs at once instead of waiting for a timeout.
//! - [`TcpTransport::apply_registry`] closes connections of nodes a new registry version removed
//!   and dials nodes it added.
//! - [`TcpTransport::stats`] counts events; [`TcpTransport::publish_metrics`] adds what changed
//!   since the last call to the engine's standard transport metrics.
//!
//! Everything runs on the glommio executor that created the transport.

mod conn;
mod tls_io;
mod wire;

#[cfg(test)]
mod tests;

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use boring::ssl::{Ssl, SslContext, SslStreamBuilder};
use futures_lite::future::or;
use glommio::net::{TcpListener, TcpStream};
use glommio::timer::sleep;
use glommio::Task;
use icn_codecs::{CodecLimits, DecodeError, FrameLimits, GoawayReason};

use self::conn::{Closing, Conn, Side};
use self::tls_io::{MemoryIo, TlsSocket};
use self::wire::{decode_error_index, DECODE_ERROR_KINDS};
use crate::identity::Identity;
use crate::metrics::{rpc_error_kind, Counter, TransportMetrics};

const RPC_ERROR_KINDS: [&str; TransportMetrics::RPC_ERROR_KINDS.len()] =
    TransportMetrics::RPC_ERROR_KINDS;
use crate::registry::{Registry, SubnetId};
use crate::tls::{self, SharedRegistry};
use crate::transport::{ConnId, NodeId, Priority, Route, Router, RpcError, Transport};
use crate::Buf;

/// Knobs of the TCP transport. The tuning crate maps its profile onto this struct.
#[derive(Clone, Debug)]
pub struct TcpConfig {
    /// Largest request or response body, in bytes, on send and receive (the frame header's
    /// `body_bytes_max`). A peer announcing a larger body is dropped. Worst-case memory per
    /// connection: `requests_in_flight_max` bodies of this size in each direction.
    pub message_bytes_max: u64,
    /// Largest envelope a frame header may announce, in bytes; longer ones drop the connection
    /// before anything is buffered. Bounds the per-connection envelope buffer.
    pub envelope_bytes_max: u16,
    /// Limits every received envelope is verified with (and every sent one encoded within).
    pub codec_limits: CodecLimits,
    /// Requests awaiting a response per connection, in each direction. Bounds the pending-RPC
    /// map and the running-handler map (both keyed by peer-chosen or our request ids).
    pub requests_in_flight_max: usize,
    /// A connection that received nothing for this long is pinged; also how often the idle
    /// timeout is checked. Keep it below half of `idle_timeout`: an idle pair pings from
    /// alternate sides, so each side may go two intervals without a ping of its own.
    pub keepalive_interval: Duration,
    /// A connection that showed no sign of life (no byte received, not even a pong, and no chunk
    /// of a large body taken by the socket) for this long is closed with Goaway(Idle).
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
    /// buffered per connection before it is written to the socket. Frames are not interleaved
    /// (the version 1 frame has no continuation), so chunks of one body go back to back.
    pub write_chunk_bytes: usize,
}

impl TcpConfig {
    /// What frame headers are checked against before anything they announce is buffered.
    pub fn frame_limits(&self) -> FrameLimits {
        FrameLimits {
            envelope_bytes_max: self.envelope_bytes_max,
            body_bytes_max: self.message_bytes_max,
        }
    }

    /// Refuses values the transport cannot run with (instead of panicking on first use).
    pub fn validate(&self) -> Result<(), String> {
        self.codec_limits.validate()?;
        if usize::from(self.envelope_bytes_max) > self.codec_limits.message_bytes_max {
            return Err(format!(
                "envelope_bytes_max ({}) is above codec_limits.message_bytes_max ({})",
                self.envelope_bytes_max, self.codec_limits.message_bytes_max
            ));
        }
        if self.write_chunk_bytes == 0 || self.requests_in_flight_max == 0 {
            return Err("write_chunk_bytes and requests_in_flight_max must be positive".into());
        }
        if self.read_buffer_bytes < tls_io::MIN_INPUT_BYTES {
            return Err(format!(
                "read_buffer_bytes ({}) is below one TLS record ({})",
                self.read_buffer_bytes,
                tls_io::MIN_INPUT_BYTES
            ));
        }
        if self.keepalive_interval.is_zero() || self.keepalive_interval >= self.idle_timeout {
            return Err("keepalive_interval must be positive and below idle_timeout".into());
        }
        Ok(())
    }
}

impl Default for TcpConfig {
    fn default() -> Self {
        TcpConfig {
            message_bytes_max: 128 << 20,
            envelope_bytes_max: FrameLimits::ENVELOPE_BYTES_MAX_DEFAULT,
            codec_limits: CodecLimits::default(),
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

/// Round-trip-time samples kept until the next [`TcpTransport::publish_metrics`]; older ones are
/// dropped first. One sample per pong (at most one ping per connection per keep-alive
/// interval), so 1024 covers many intervals of a large subnet. Worst-case memory: 8 KiB.
const RTT_SAMPLES_QUEUED_MAX: usize = 1024;

/// Counters of the transport, on its shard. [`TcpTransport::publish_metrics`] maps them onto the
/// engine's standard metrics; [`TcpStats::snapshot`] copies them for anything else.
#[derive(Default, Debug)]
pub struct TcpStats {
    /// Connections established (after the handshake and the registry check).
    pub connections_opened: Cell<u64>,
    /// Connections ended, for any reason.
    pub connections_closed: Cell<u64>,
    /// Frames refused because a length was over a limit (`LimitExceeded`).
    pub frames_oversized: Cell<u64>,
    /// Frames refused for any other decode error (bad magic, version, kind, envelope).
    pub frames_malformed: Cell<u64>,
    /// Every refused frame by [`DecodeError`] kind, indexed like [`DECODE_ERROR_KINDS`].
    pub decode_errors: [Cell<u64>; DECODE_ERROR_KINDS.len()],
    /// Inbound connections refused after the handshake (we dial that peer ourselves, or it left
    /// the registry meanwhile) or because too many handshakes were in flight.
    pub connections_refused: Cell<u64>,
    /// Handshakes that failed or timed out (both directions).
    pub handshakes_failed: Cell<u64>,
    /// Peer requests answered Overloaded without running a handler.
    pub requests_refused_in_flight: Cell<u64>,
    /// Peer requests whose id did not grow (the connection is dropped).
    pub requests_out_of_order: Cell<u64>,
    /// Responses for a request id we do not wait for (cancelled meanwhile, or bogus); ignored.
    pub responses_unknown_id: Cell<u64>,
    pub goaways_sent: Cell<u64>,
    pub goaways_received: Cell<u64>,
    /// Goaways received, indexed by `GoawayReason as usize`.
    pub goaways_received_by_reason: [Cell<u64>; GoawayReason::ALL.len()],
    /// Pings left unanswered because [`conn`]'s pong queue was full.
    pub pongs_dropped: Cell<u64>,
    /// Frames of ours that did not encode (our bug or inconsistent limits; never sent).
    pub frames_unencodable: Cell<u64>,
    /// Our RPCs that failed, by kind, indexed like [`RPC_ERROR_KINDS`].
    pub rpc_errors: [Cell<u64>; RPC_ERROR_KINDS.len()],
    /// Ping round trips not yet published, in microseconds; at most `RTT_SAMPLES_QUEUED_MAX`.
    rtt_samples_us: RefCell<VecDeque<u64>>,
}

/// A copy of [`TcpStats`]' counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TcpStatsSnapshot {
    pub connections_opened: u64,
    pub connections_closed: u64,
    pub frames_oversized: u64,
    pub frames_malformed: u64,
    pub decode_errors: [u64; DECODE_ERROR_KINDS.len()],
    pub connections_refused: u64,
    pub handshakes_failed: u64,
    pub requests_refused_in_flight: u64,
    pub requests_out_of_order: u64,
    pub responses_unknown_id: u64,
    pub goaways_sent: u64,
    pub goaways_received: u64,
    pub goaways_received_by_reason: [u64; GoawayReason::ALL.len()],
    pub pongs_dropped: u64,
    pub frames_unencodable: u64,
    pub rpc_errors: [u64; RPC_ERROR_KINDS.len()],
}

impl TcpStatsSnapshot {
    /// `(event label, count)` for the standard metric `icn_transport_events_total`.
    fn events(&self) -> [(&'static str, u64); 9] {
        [
            ("handshake_failed", self.handshakes_failed),
            ("connection_refused", self.connections_refused),
            ("request_refused_in_flight", self.requests_refused_in_flight),
            ("request_out_of_order", self.requests_out_of_order),
            ("response_unknown_id", self.responses_unknown_id),
            ("goaway_sent", self.goaways_sent),
            ("goaway_received", self.goaways_received),
            ("pong_dropped", self.pongs_dropped),
            ("frame_unencodable", self.frames_unencodable),
        ]
    }
}

impl TcpStats {
    pub fn snapshot(&self) -> TcpStatsSnapshot {
        let copy = |cells: &[Cell<u64>]| -> Vec<u64> { cells.iter().map(Cell::get).collect() };
        TcpStatsSnapshot {
            connections_opened: self.connections_opened.get(),
            connections_closed: self.connections_closed.get(),
            frames_oversized: self.frames_oversized.get(),
            frames_malformed: self.frames_malformed.get(),
            decode_errors: copy(&self.decode_errors).try_into().expect("same length"),
            connections_refused: self.connections_refused.get(),
            handshakes_failed: self.handshakes_failed.get(),
            requests_refused_in_flight: self.requests_refused_in_flight.get(),
            requests_out_of_order: self.requests_out_of_order.get(),
            responses_unknown_id: self.responses_unknown_id.get(),
            goaways_sent: self.goaways_sent.get(),
            goaways_received: self.goaways_received.get(),
            goaways_received_by_reason: copy(&self.goaways_received_by_reason)
                .try_into()
                .expect("same length"),
            pongs_dropped: self.pongs_dropped.get(),
            frames_unencodable: self.frames_unencodable.get(),
            rpc_errors: copy(&self.rpc_errors).try_into().expect("same length"),
        }
    }

    fn count_decode_error(&self, error: &DecodeError) {
        let counter = match error {
            DecodeError::LimitExceeded { .. } => &self.frames_oversized,
            _ => &self.frames_malformed,
        };
        Self::bump(counter);
        Self::bump(&self.decode_errors[decode_error_index(error)]);
    }

    fn count_rpc_error(&self, error: &RpcError) {
        let kind = rpc_error_kind(error);
        let index = RPC_ERROR_KINDS
            .iter()
            .position(|known| *known == kind)
            .expect("rpc_error_kind returns a declared kind");
        Self::bump(&self.rpc_errors[index]);
    }

    fn record_rtt(&self, rtt: Duration) {
        let mut samples = self.rtt_samples_us.borrow_mut();
        if samples.len() >= RTT_SAMPLES_QUEUED_MAX {
            samples.pop_front();
        }
        samples.push_back(u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX));
    }

    fn bump(counter: &Cell<u64>) {
        counter.set(counter.get() + 1);
    }
}

/// Body bytes exchanged with one peer (all its connections), and how much of it was published.
#[derive(Default, Debug)]
struct PeerTraffic {
    sent_bytes: Cell<u64>,
    received_bytes: Cell<u64>,
    published_sent_bytes: Cell<u64>,
    published_received_bytes: Cell<u64>,
}

impl PeerTraffic {
    fn add_sent(&self, bytes: u64) {
        self.sent_bytes.set(self.sent_bytes.get() + bytes);
    }

    fn add_received(&self, bytes: u64) {
        self.received_bytes.set(self.received_bytes.get() + bytes);
    }

    /// Adds what was not published yet to `sent` and `received`.
    fn publish(&self, sent: &Counter, received: &Counter) {
        publish_delta(sent, self.sent_bytes.get(), &self.published_sent_bytes);
        publish_delta(
            received,
            self.received_bytes.get(),
            &self.published_received_bytes,
        );
    }

    fn all_published(&self) -> bool {
        self.sent_bytes.get() == self.published_sent_bytes.get()
            && self.received_bytes.get() == self.published_received_bytes.get()
    }
}

/// Adds `now - published` to `counter` and remembers `now` as published.
fn publish_delta(counter: &Counter, now: u64, published: &Cell<u64>) {
    counter.add(now.saturating_sub(published.get()));
    published.set(now);
}

/// Why the transport could not start.
#[derive(Debug, thiserror::Error)]
pub enum TcpError {
    #[error("node {0} is not in the registry")]
    NotInRegistry(NodeId),
    #[error("TLS setup: {0}")]
    Tls(#[from] boring::error::ErrorStack),
    #[error("invalid TCP configuration: {0}")]
    Config(String),
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
    /// Body bytes per peer, for the per-peer byte metrics. One entry per peer connected since
    /// the last publish (only registry members get a connection), so bounded by the subnet
    /// size plus the peers removed since then; entries of removed peers are pruned on publish.
    traffic: RefCell<HashMap<NodeId, Rc<PeerTraffic>>>,
    /// What `publish_metrics` published last: counters are published as differences.
    published: RefCell<Published>,
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
        config.validate().map_err(TcpError::Config)?;
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
            traffic: RefCell::default(),
            published: RefCell::default(),
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

    /// Adds everything counted since the last call to the shard's standard transport metrics:
    /// connections opened/closed and open, body bytes per peer, ping round trips, failed RPCs
    /// by kind, refused frames by decode error kind, transport events (handshake failures,
    /// refusals, goaways, ...) and the depth of the send queues, pending-RPC and handler maps
    /// (queues `tcp_send_frames`, `tcp_rpcs_pending`, `tcp_handlers_running`). Call it from the
    /// shard's metrics publisher, before `ShardMetrics::publish`. Counters are published as
    /// differences, so other transports may share the handles; the `tcp_*` queue gauges assume
    /// one TCP transport per shard.
    pub fn publish_metrics(&self, metrics: &TransportMetrics) {
        self.inner.publish_metrics(metrics);
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
            // Each connection runs in its own task, which outlives this drop long enough to
            // send the Goaway and close_notify (bounded by the close flush timeout).
            conn.close(Closing::goaway(
                GoawayReason::Shutdown,
                "transport shut down",
            ));
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
        let result = match conn {
            Some(conn) if conn.is_usable() => conn.rpc(route, priority, request).await,
            _ => Err(RpcError::NotConnected(peer)),
        };
        if let Err(error) = &result {
            self.inner.stats.count_rpc_error(error);
        }
        result
    }

    fn peers(&self) -> Vec<(NodeId, ConnId)> {
        let conns = self.inner.conns.borrow();
        let mut peers: Vec<_> = conns
            .values()
            .filter(|c| c.is_usable())
            .map(|c| (c.peer, c.id))
            .collect();
        peers.sort();
        peers
    }
}

/// What [`TcpTransport::publish_metrics`] published last.
#[derive(Default)]
struct Published {
    stats: TcpStatsSnapshot,
    active_connections: i64,
}

/// Adds `now - before` to the counter `series` looks up; no lookup when nothing changed.
fn add_if_changed(series: impl FnOnce() -> Counter, now: u64, before: u64) {
    if now > before {
        series().add(now - before);
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
            let closing = match wanted.get(peer) {
                Some(new_addr) if new_addr == addr => continue,
                Some(_) => Closing::goaway(GoawayReason::Replaced, "the registry moved the node"),
                None => Closing::goaway(GoawayReason::NotInSubnet, "removed from the registry"),
            };
            self.disconnect(*peer, closing);
        }
        for peer in wanted.keys().filter(|peer| self.local_id < **peer) {
            if !self.dialers.borrow().contains_key(peer) {
                let task = glommio::spawn_local(self.clone().dial_loop(*peer));
                self.dialers.borrow_mut().insert(*peer, task);
            }
        }
    }

    /// Closes the connection to `peer` (which left our subnet or moved) and stops dialing it.
    fn disconnect(&self, peer: NodeId, closing: Closing) {
        let conn = self.conns.borrow_mut().remove(&peer);
        if let Some(conn) = conn {
            conn.close(closing);
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
        self.run_connection(peer, socket, Side::Acceptor).await;
    }

    async fn dial_loop(self: Rc<Self>, peer: NodeId) {
        let mut backoff = self.config.reconnect_backoff_min;
        loop {
            let Some(addr) = self.wanted.borrow().get(&peer).copied() else {
                return;
            };
            if let Some(socket) = self.dial(peer, addr).await {
                backoff = self.config.reconnect_backoff_min;
                self.run_connection(peer, socket, Side::Dialer).await;
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
    async fn run_connection(self: &Rc<Self>, peer: NodeId, socket: TlsSocket, side: Side) {
        if !self.wanted.borrow().contains_key(&peer) {
            socket.close().await;
            return;
        }
        let id = ConnId(self.next_conn_id.get());
        self.next_conn_id.set(id.0 + 1);
        let traffic = self.traffic.borrow_mut().entry(peer).or_default().clone();
        let conn = Rc::new(Conn::new(
            id,
            peer,
            socket,
            self.config.clone(),
            self.stats.clone(),
            traffic,
            side,
        ));
        TcpStats::bump(&self.stats.connections_opened);
        let replaced = self.conns.borrow_mut().insert(peer, conn.clone());
        if let Some(old) = replaced {
            old.close(Closing::goaway(
                GoawayReason::Replaced,
                "a newer connection replaced it",
            ));
        }
        // Its own task, so that cancelling the dial loop (transport dropped, peer removed)
        // still lets the connection send its Goaway; `close` bounds how long that takes.
        let running = glommio::spawn_local(conn.clone().run(self.router.clone())).detach();
        let _reason = running.await;
        let mut conns = self.conns.borrow_mut();
        if conns.get(&peer).is_some_and(|current| current.id == id) {
            conns.remove(&peer);
        }
    }

    fn publish_metrics(&self, metrics: &TransportMetrics) {
        let mut published = self.published.borrow_mut();
        let now = self.stats.snapshot();
        let before = &published.stats;
        metrics
            .connections_opened
            .add(now.connections_opened - before.connections_opened);
        metrics
            .connections_closed
            .add(now.connections_closed - before.connections_closed);
        for (i, kind) in DECODE_ERROR_KINDS.iter().enumerate() {
            add_if_changed(
                || metrics.decode_errors(kind),
                now.decode_errors[i],
                before.decode_errors[i],
            );
        }
        for (i, kind) in RPC_ERROR_KINDS.iter().enumerate() {
            add_if_changed(
                || metrics.rpc_errors(kind),
                now.rpc_errors[i],
                before.rpc_errors[i],
            );
        }
        for ((event, count), (_, count_before)) in now.events().into_iter().zip(before.events()) {
            add_if_changed(|| metrics.transport_events(event), count, count_before);
        }
        published.stats = now;
        let open = self.publish_connections(metrics);
        // A delta, so that other transports on the shard may share the gauge.
        metrics
            .active_connections
            .add(open - published.active_connections);
        published.active_connections = open;
        for rtt_us in self.stats.rtt_samples_us.borrow_mut().drain(..) {
            metrics.rtt_us.record(rtt_us);
        }
        self.publish_traffic(metrics);
    }

    /// Sets the queue-depth gauges; returns how many connections are open.
    fn publish_connections(&self, metrics: &TransportMetrics) -> i64 {
        let conns = self.conns.borrow();
        let (mut open, mut frames, mut pending, mut handlers) = (0, 0, 0, 0);
        for conn in conns.values().filter(|conn| conn.is_usable()) {
            let (conn_frames, conn_pending, conn_handlers) = conn.depths();
            open += 1;
            frames += conn_frames;
            pending += conn_pending;
            handlers += conn_handlers;
        }
        for (queue, depth) in [
            ("tcp_send_frames", frames),
            ("tcp_rpcs_pending", pending),
            ("tcp_handlers_running", handlers),
        ] {
            metrics.queue_depth(queue).set(depth as i64);
        }
        open
    }

    fn publish_traffic(&self, metrics: &TransportMetrics) {
        let mut traffic = self.traffic.borrow_mut();
        for (peer, bytes) in traffic.iter() {
            if !bytes.all_published() {
                bytes.publish(
                    &metrics.sent_bytes_for(peer),
                    &metrics.received_bytes_for(peer),
                );
            }
        }
        let wanted = self.wanted.borrow();
        let conns = self.conns.borrow();
        traffic.retain(|peer, _| wanted.contains_key(peer) || conns.contains_key(peer));
    }
}
