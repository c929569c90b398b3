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
//! - Like QUIC: an RPC to a registry peer whose connection is being (re)established waits for it
//!   (within [`TcpConfig::request_timeout`], which bounds the whole RPC);
//!   [`TcpTransport::shutdown`] says Goaway on every connection, stops every task and releases
//!   the listening socket; the transport is a cheap `Clone` handle, and dropping the last
//!   handle without `shutdown` closes the connections too (without waiting).
//!
//! Everything runs on the glommio executor that created the transport.

mod conn;
mod tasks;
mod tls_io;
mod wire;

#[cfg(test)]
mod tests;

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use boring::ssl::{Ssl, SslContext, SslStreamBuilder};
use futures_lite::future::or;
use glommio::net::{TcpListener, TcpStream};
use glommio::timer::sleep;
use glommio::Task;
use icn_codecs::{CodecLimits, DecodeError, FrameLimits, GoawayReason};

use self::conn::{Closing, Conn, ConnShared, Side};
use self::tasks::{TaskSet, Waiters};
use self::tls_io::{MemoryIo, TlsSocket};
use self::wire::{decode_error_index, DECODE_ERROR_KINDS};
use crate::identity::Identity;
use crate::metrics::{rpc_error_kind, Counter, TransportMetrics};
use crate::transport::durations::RpcDurations;

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
    /// The longest an RPC may take, waiting for a connection to the peer included; then it
    /// fails (`NotConnected` while still waiting for the connection, `Timeout` after the
    /// request went out, which cancels it at the peer).
    pub request_timeout: Duration,
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
        if self.request_timeout.is_zero() {
            return Err("request_timeout must be positive".into());
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
            request_timeout: Duration::from_secs(30),
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

/// How long [`TcpTransport::shutdown`] waits for connection tasks to send their Goaway and
/// close_notify: each is bounded by the close flush timeout twice (Goaway, then TLS close).
const SHUTDOWN_WAIT: Duration = Duration::from_secs(3);

/// The TCP+TLS transport of one shard: a cheap handle, clones share one transport. Dropping the
/// last handle closes every connection (see [`TcpTransport::shutdown`] to also wait for that).
#[derive(Clone)]
pub struct TcpTransport {
    inner: Rc<Inner>,
    /// Shared by the clones: the last one dropped stops the transport.
    _owner: Rc<Owner>,
}

/// Stops the transport when the last [`TcpTransport`] handle goes (the tasks hold `Inner`).
struct Owner {
    inner: Rc<Inner>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.inner.stop();
        // Cancelled; glommio drops its future (and the listener) when it next visits it.
        let acceptor = self.inner.acceptor.borrow_mut().take();
        drop(acceptor);
    }
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
    /// Peers of the current registry version and their TCP addresses, minus `refused`.
    wanted: RefCell<HashMap<NodeId, SocketAddr>>,
    /// Members the peer manager refuses (banned or left out): not dialed, not accepted. Set by
    /// [`TcpTransport::set_refused_peers`], whose caller passes registry members only, so it is
    /// bounded by the subnet's size.
    refused: RefCell<HashSet<NodeId>>,
    conns: RefCell<HashMap<NodeId, Rc<Conn>>>,
    /// Body bytes per peer, for the per-peer byte metrics. One entry per peer connected since
    /// the last publish (only registry members get a connection), so bounded by the subnet
    /// size plus the peers removed since then; entries of removed peers are pruned on publish.
    traffic: RefCell<HashMap<NodeId, Rc<PeerTraffic>>>,
    /// What `publish_metrics` published last: counters are published as differences.
    published: RefCell<Published>,
    /// Durations of our answered RPCs per route since the last publish (bounded, see
    /// [`crate::transport::durations`]).
    rpc_durations: RefCell<RpcDurations>,
    /// Dial loops, one per peer with a larger id than ours.
    dialers: RefCell<HashMap<NodeId, Task<()>>>,
    /// The accept loop; owns the listening socket.
    acceptor: RefCell<Option<Task<()>>>,
    /// A second descriptor of the listening socket, to stop it listening at once on shutdown
    /// (the accept loop's io_uring accept holds the socket open until that request ends).
    listening: RefCell<Option<std::net::TcpListener>>,
    /// One task per accepted socket: its handshake, then its connection's lifetime. At most
    /// `handshakes_in_flight_max` handshaking plus one established connection per registry
    /// peer (a newer one replaces an older one, whose task then ends).
    accepted: Rc<TaskSet<u64>>,
    next_accepted: Cell<u64>,
    /// Dial loops, accepted-socket and connection tasks whose futures are not dropped yet.
    /// After `stop` a connection task ends within two close flush timeouts; the others are
    /// cancelled and dropped the next time glommio visits them.
    tasks_live: Rc<Cell<usize>>,
    /// RPCs and `wait_connected` calls waiting for a connection; woken when one is established
    /// and when the wanted peers change.
    conn_waiters: Rc<Waiters>,
    handshakes_in_flight: Cell<usize>,
    next_conn_id: Cell<u64>,
    stopped: Cell<bool>,
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
        // Read-ahead: BoringSSL asks for as much ciphertext as its record buffer holds, not a
        // record's header and then its body, so once the socket is attached (tls_io) one
        // `recv` brings in a large record or many small ones.
        let mut server_ctx = tls::server_context_builder(identity, verifier.clone())?;
        server_ctx.set_read_ahead(true);
        let server_ctx = server_ctx.build();
        let mut client_ctx = tls::client_context_builder(identity, verifier)?;
        client_ctx.set_read_ahead(true);
        let client_ctx = client_ctx.build();
        let (listener, listening) = listen(listen_addr)?;
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
            refused: RefCell::default(),
            conns: RefCell::default(),
            traffic: RefCell::default(),
            published: RefCell::default(),
            rpc_durations: RefCell::default(),
            dialers: RefCell::default(),
            acceptor: RefCell::default(),
            listening: RefCell::new(Some(listening)),
            accepted: TaskSet::new(),
            next_accepted: Cell::new(0),
            tasks_live: Rc::default(),
            conn_waiters: Rc::default(),
            handshakes_in_flight: Cell::new(0),
            next_conn_id: Cell::new(1),
            stopped: Cell::new(false),
        });
        let acceptor = glommio::spawn_local(inner.clone().accept_loop(listener));
        *inner.acceptor.borrow_mut() = Some(acceptor);
        inner.apply_registry(&registry);
        Ok(TcpTransport {
            _owner: Rc::new(Owner {
                inner: inner.clone(),
            }),
            inner,
        })
    }

    /// Sends Goaway(Shutdown) on every connection, stops dialing and accepting, and returns once
    /// the listening socket is closed and the connection tasks ended (or [`SHUTDOWN_WAIT`]
    /// passed). A new transport can bind the same address right after. RPCs still waiting fail
    /// with `ConnectionClosed` (on a connection) or `NotConnected` (waiting for one); later ones
    /// fail with `NotConnected`. The other handles stay valid but see a stopped transport.
    pub async fn shutdown(&self) {
        let inner = &self.inner;
        inner.stop();
        let acceptor = inner.acceptor.borrow_mut().take();
        if let Some(acceptor) = acceptor {
            // Returns once the accept loop's future, and with it the listener, is dropped.
            acceptor.cancel().await;
        }
        let deadline = Instant::now() + SHUTDOWN_WAIT;
        while inner.tasks_live.get() > 0 && Instant::now() < deadline {
            sleep(Duration::from_millis(1)).await;
        }
    }

    /// Waits until `peer` is connected, or `limit` passes. Returns whether it is connected;
    /// false at once for a node that is not a peer in our registry version.
    pub async fn wait_connected(&self, peer: NodeId, limit: Duration) -> bool {
        let connected = async { self.inner.wait_for_conn(peer).await.is_some() };
        let timeout = async {
            sleep(limit).await;
            false
        };
        or(connected, timeout).await
    }

    /// The id of `peer`'s current usable connection, if any (as listed by `peers()`).
    pub fn conn_of(&self, peer: NodeId) -> Option<ConnId> {
        self.inner.usable_conn(peer).map(|conn| conn.id)
    }

    /// Adopts a new registry version: closes connections to nodes no longer in our subnet,
    /// dials nodes that joined, and checks later handshakes against this version.
    pub fn apply_registry(&self, registry: &Arc<Registry>) {
        self.inner.apply_registry(registry);
    }

    /// Refuses these peers (the peer manager's bans and members it leaves out): their
    /// connections close with a Goaway, they are neither dialed nor accepted, until a later call
    /// no longer lists them. Takes effect against the registry version held now and later ones.
    pub fn set_refused_peers(&self, refused: impl IntoIterator<Item = NodeId>) {
        let refused: HashSet<NodeId> = refused.into_iter().collect();
        if *self.inner.refused.borrow() == refused {
            return;
        }
        *self.inner.refused.borrow_mut() = refused;
        let current = self.inner.registry.read().map(|r| r.clone()).ok();
        if let Some(registry) = current {
            self.inner.apply_registry(&registry);
        }
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

/// Binds `addr`; returns the listener for the accept loop and a second descriptor of the same
/// socket to stop it listening with.
fn listen(addr: SocketAddr) -> Result<(TcpListener, std::net::TcpListener), TcpError> {
    let failed = |e: std::io::Error| TcpError::Listen {
        addr,
        message: e.to_string(),
    };
    // std sets SO_REUSEADDR (a restart binds despite TIME_WAIT remnants of the last run) and,
    // unlike glommio's `bind`, not SO_REUSEPORT: a second transport on a live address fails
    // instead of silently sharing its connections.
    let socket = std::net::TcpListener::bind(addr).map_err(failed)?;
    let control = socket.try_clone().map_err(failed)?;
    // SAFETY: `into_raw_fd` gives up sole ownership of an open, bound, listening socket, which
    // the glommio listener takes over (and closes when dropped); nothing else uses that fd.
    let listener = unsafe { TcpListener::from_raw_fd(socket.into_raw_fd()) };
    Ok((listener, control))
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
        let result = self.inner.rpc(peer, route, priority, request).await;
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

/// One of the `handshakes_in_flight_max` inbound handshake slots, given back when dropped
/// (handshake done, failed, or its task cancelled).
struct HandshakeSlot {
    inner: Rc<Inner>,
}

impl HandshakeSlot {
    fn take(inner: &Rc<Inner>) -> HandshakeSlot {
        let count = &inner.handshakes_in_flight;
        count.set(count.get() + 1);
        HandshakeSlot {
            inner: inner.clone(),
        }
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let count = &self.inner.handshakes_in_flight;
        count.set(count.get() - 1);
    }
}

/// Counts a task as running until its future is dropped (finished or cancelled).
struct LiveTask(Rc<Cell<usize>>);

impl LiveTask {
    fn count(live: &Rc<Cell<usize>>) -> LiveTask {
        live.set(live.get() + 1);
        LiveTask(live.clone())
    }
}

impl Drop for LiveTask {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
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
    /// Sends the request on `peer`'s connection, waiting for one while it is being set up;
    /// all of it within `request_timeout`.
    async fn rpc(
        &self,
        peer: NodeId,
        route: Route,
        priority: Priority,
        request: Buf,
    ) -> Result<Buf, RpcError> {
        let limit_bytes = self.config.message_bytes_max;
        if request.len() as u64 > limit_bytes {
            // Before waiting for a connection: the size does not depend on it.
            return Err(RpcError::MessageTooLarge {
                size_bytes: request.len() as u64,
                limit_bytes,
            });
        }
        let started = Instant::now();
        let deadline = Instant::now() + self.config.request_timeout;
        let waited = or(self.wait_for_conn(peer), async {
            sleep(self.config.request_timeout).await;
            None
        })
        .await;
        let conn = waited.ok_or(RpcError::NotConnected(peer))?;
        let remaining = deadline.saturating_duration_since(Instant::now());
        // Dropping the RPC future at the timeout withdraws or cancels the request.
        let result = or(conn.rpc(route, priority, request), async {
            sleep(remaining).await;
            Err(RpcError::Timeout)
        })
        .await;
        // As QUIC: from the call (waiting for a connection included) to the peer's answer, an
        // error answer (no route, a handler error, overloaded, refused) included; local
        // failures are left to icn_rpc_errors_total.
        if matches!(
            result,
            Ok(_) | Err(RpcError::NoRoute(_) | RpcError::Handler(_))
        ) {
            self.rpc_durations
                .borrow_mut()
                .record(route, started.elapsed());
        }
        result
    }

    /// `peer`'s usable connection, waiting for one while `peer` is wanted (in our registry
    /// version, transport running); None at once, or as soon as that stops being true.
    async fn wait_for_conn(&self, peer: NodeId) -> Option<Rc<Conn>> {
        self.conn_waiters
            .until(|| match self.usable_conn(peer) {
                Some(conn) => Some(Some(conn)),
                None if !self.wanted.borrow().contains_key(&peer) => Some(None),
                None => None,
            })
            .await
    }

    fn usable_conn(&self, peer: NodeId) -> Option<Rc<Conn>> {
        let conns = self.conns.borrow();
        conns.get(&peer).filter(|conn| conn.is_usable()).cloned()
    }

    /// Stops listening, dialing and accepting, and closes every connection with a Goaway. The
    /// connection tasks end on their own; the accept loop is cancelled by the caller.
    fn stop(&self) {
        if self.stopped.replace(true) {
            return;
        }
        self.stop_listening();
        self.wanted.borrow_mut().clear();
        // Taken out of the cells first: cancelling must not run with them borrowed.
        let dialers = std::mem::take(&mut *self.dialers.borrow_mut());
        drop(dialers);
        self.accepted.cancel_all();
        let conns = std::mem::take(&mut *self.conns.borrow_mut());
        for conn in conns.values() {
            // Each connection runs in its own task, which outlives this long enough to send
            // the Goaway and close_notify (bounded by the close flush timeout).
            conn.close(Closing::goaway(
                GoawayReason::Shutdown,
                "transport shut down",
            ));
        }
        // RPCs waiting for a connection fail now instead of at their timeout.
        self.conn_waiters.wake_all();
    }

    /// Takes the socket out of the listening state at once: new connections are refused and
    /// the pending accept ends, though the accept loop may hold its descriptor a little longer.
    fn stop_listening(&self) {
        let listening = self.listening.borrow_mut().take();
        if let Some(listening) = listening {
            // SAFETY: `listening` owns its descriptor, so it is open for the duration of the
            // call; shutdown(2) takes no pointers. Its result is irrelevant (best effort).
            unsafe { libc::shutdown(listening.as_raw_fd(), libc::SHUT_RDWR) };
        }
    }

    fn apply_registry(self: &Rc<Self>, registry: &Arc<Registry>) {
        if self.stopped.get() {
            return;
        }
        if let Ok(mut current) = self.registry.write() {
            *current = registry.clone();
        }
        let mut wanted = HashMap::new();
        if registry.is_member(&self.subnet, self.local_id) {
            let refused = self.refused.borrow();
            for node in registry.nodes(&self.subnet) {
                if node.node_id != self.local_id && !refused.contains(&node.node_id) {
                    wanted.insert(node.node_id, node.tcp_addr);
                }
            }
        }
        let previous = std::mem::replace(&mut *self.wanted.borrow_mut(), wanted.clone());
        for (peer, addr) in &previous {
            let closing = match wanted.get(peer) {
                Some(new_addr) if new_addr == addr => continue,
                Some(_) => Closing::goaway(GoawayReason::Replaced, "the registry moved the node"),
                None if self.refused.borrow().contains(peer) => Closing::goaway(
                    GoawayReason::ProtocolError,
                    "refused by the peer manager (banned or left out)",
                ),
                None => Closing::goaway(GoawayReason::NotInSubnet, "removed from the registry"),
            };
            self.disconnect(*peer, closing);
        }
        for peer in wanted.keys().filter(|peer| self.local_id < **peer) {
            if !self.dialers.borrow().contains_key(peer) {
                let live = LiveTask::count(&self.tasks_live);
                let dial = self.clone().dial_loop(*peer);
                let task = glommio::spawn_local(async move {
                    let _live = live;
                    dial.await;
                });
                self.dialers.borrow_mut().insert(*peer, task);
            }
        }
        // Waiting RPCs to peers that left fail now; those to peers that joined keep waiting.
        self.conn_waiters.wake_all();
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
            if self.stopped.get() {
                // Shut down and the listener no longer listens: wait to be cancelled.
                std::future::pending::<()>().await;
            }
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
            // Taken here, before the task runs, so a burst of accepts cannot overshoot.
            let slot = HandshakeSlot::take(&self);
            let key = self.next_accepted.get();
            self.next_accepted.set(key + 1);
            let live = LiveTask::count(&self.tasks_live);
            let serve = self.clone().serve_inbound(stream, slot);
            self.accepted.spawn(key, async move {
                let _live = live;
                serve.await;
            });
        }
    }

    async fn serve_inbound(self: Rc<Self>, stream: TcpStream, slot: HandshakeSlot) {
        let _ = stream.set_nodelay(true);
        let accepted = self.handshake(stream, None).await;
        drop(slot);
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
        let shared = ConnShared {
            config: self.config.clone(),
            stats: self.stats.clone(),
            traffic,
            conn_waiters: self.conn_waiters.clone(),
        };
        let conn = Rc::new(Conn::new(id, peer, socket, shared, side));
        TcpStats::bump(&self.stats.connections_opened);
        let replaced = self.conns.borrow_mut().insert(peer, conn.clone());
        if let Some(old) = replaced {
            old.close(Closing::goaway(
                GoawayReason::Replaced,
                "a newer connection replaced it",
            ));
        }
        // An acceptor's connection is usable at once.
        self.conn_waiters.wake_all();
        // Its own task, so that cancelling the dial loop (transport dropped, peer removed)
        // still lets the connection send its Goaway; `close` bounds how long that takes.
        let live = LiveTask::count(&self.tasks_live);
        let run = conn.clone().run(self.router.clone());
        let running = glommio::spawn_local(async move {
            let _live = live;
            run.await
        })
        .detach();
        let _reason = running.await;
        let mut conns = self.conns.borrow_mut();
        if conns.get(&peer).is_some_and(|current| current.id == id) {
            conns.remove(&peer);
        }
    }

    fn publish_metrics(&self, metrics: &TransportMetrics) {
        self.rpc_durations.borrow_mut().publish(metrics);
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
