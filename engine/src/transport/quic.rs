//! QUIC transport on quiche, driven by one glommio executor.
//!
//! One `QuicTransport` is one endpoint: a UDP socket ([`UdpIo`], GSO/GRO), the quiche connections
//! that arrive on it, and four tasks on the local executor:
//! - the receiver waits for datagrams, feeds each (each GRO segment) to its connection, reads
//!   stream data and dispatches complete requests to the [`Router`];
//! - the sender drains every connection that has output into GSO batches (all packets of a batch
//!   go to one peer and have one size, the last may be shorter);
//! - the timer task runs quiche's loss/idle timers and sends keep-alive PINGs;
//! - one dialer per peer that this node must dial (the node with the smaller id dials; the other
//!   only accepts), reconnecting with exponential backoff.
//!
//! Mutual TLS 1.3: the TLS context (built by [`crate::tls`]) requires and checks the peer's
//! certificate; after the handshake the peer's node id is read from its certificate and must be an
//! allowed peer (and, when we dialed, the one we meant to reach). Only then is any stream data
//! read, so nothing from an unknown node reaches a handler.
//!
//! One RPC is one bidirectional stream: request frame out with FIN, response frame back with FIN.
//! Bodies are handed to quiche zero-copy (`stream_send_zc` with refcounted [`Buf`]s). Dropping an
//! RPC future resets the stream (RESET_STREAM + STOP_SENDING); the serving side then drops the
//! handler task.
//!
//! [`QuicTransport::publish_metrics`] adds what the endpoint counted since its last call to the
//! engine's standard transport metrics (the same contract as the TCP transport's).
//!
//! Bounds of everything that remote input can grow (knobs of [`QuicConfig`], mapped from the
//! `quic` and `rpc` tuning sections):
//! - connections (`State::conns`): Initials beyond `connections_max` open connections are
//!   dropped; dialed ones are one at a time per allowed peer (plus closing ones, reaped within
//!   `CLOSE_GRACE`);
//! - connection ids (`State::by_cid`, `Conn::cids`): ours plus the client's Initial id, two per
//!   connection (we register no other ids, whatever the peer announces);
//! - admitted peers (`State::by_peer`): registry members only, one connection each;
//! - streams per connection (`Conn::streams`, and its subsets `Conn::pending_tx` and the
//!   handler tasks): `bidi_streams_max` opened by the peer (quiche refuses more) plus
//!   `requests_in_flight_max` of ours;
//! - bytes of one message being assembled (`Stream::rx`): `message_bytes_max` (the frame
//!   header is checked before its body is buffered); unread bytes per stream and connection are
//!   bounded by `stream_window_bytes` and `connection_window_bytes` (quiche's flow control);
//! - response bytes waiting for flow control (`Stream::tx`): at most a head and a body;
//! - RPC deadlines (`Conn::rpc_deadlines`): below 2 × `requests_in_flight_max` + 64;
//! - connections with output (`State::dirty`): each connection at most once;
//! - unpublished counts of closed connections (`State::closed_unpublished`): one entry per
//!   admitted peer, emptied by every publish;
//! - RPC durations between publishes: [`RPC_DURATION_ROUTES_MAX`] histograms (routes are ours).

use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::BufMut as _;
use glommio::task::JoinHandle;
use icn_codecs::frame::FrameLimits;
use icn_codecs::{CodecLimits, DecodeError, Encoder};
use quiche::{BufFactory, BufSplit, ConnectionId, RecvInfo, Shutdown};
use rustc_hash::{FxHashMap, FxHashSet};

use crate::buffer::Buf;
use crate::metrics::{rpc_error_kind, Counter, TransportMetrics};
use crate::transport::wire::{
    self, decode_error_index, Assembler, Message, Sink, DECODE_ERROR_KINDS,
};
use crate::transport::{
    ConnId, NodeId, Priority, RequestContext, Route, Router, RpcError, Transport,
};
use crate::udp::{BoundSocket, RecvBatch, UdpConfig, UdpIo, STEERED_SHARDS_MAX};

/// Length of the connection ids we issue. The first byte is reserved for shard steering.
pub const LOCAL_CID_BYTES: usize = 16;
/// ALPN protocol id of icn's RPC protocol.
pub const ALPN: &[u8] = b"icn/1";

/// Application error codes on streams and connections.
pub mod codes {
    /// The RPC was cancelled by its caller.
    pub const STREAM_CANCELLED: u64 = 0x1;
    /// The message exceeded `message_bytes_max`.
    pub const STREAM_TOO_LARGE: u64 = 0x2;
    /// The peer broke the framing rules.
    pub const STREAM_PROTOCOL: u64 = 0x3;
    /// Orderly shutdown.
    pub const CONN_SHUTDOWN: u64 = 0x0;
    /// The peer is not (or no longer) in the registry.
    pub const CONN_NOT_ALLOWED: u64 = 0x10;
    /// A newer connection to the same peer replaced this one.
    pub const CONN_REPLACED: u64 = 0x11;
    /// The connection reached a shard that does not own its peer (see `Steering`).
    pub const CONN_WRONG_SHARD: u64 = 0x12;
}

/// Settings of a QUIC endpoint, mapped from the `quic`, `udp` and `rpc` tuning sections.
#[derive(Clone, Debug)]
pub struct QuicConfig {
    pub listen_addr: SocketAddr,
    pub udp: UdpConfig,
    /// Largest UDP payload we send and accept (1200..=1472; packets on loopback otherwise grow to
    /// 64 KiB and flatter every benchmark).
    pub udp_payload_bytes_max: usize,
    pub handshake_timeout: Duration,
    /// The RTT a new connection assumes before its first sample (sets the first probe timeout).
    pub initial_rtt: Duration,
    pub idle_timeout: Duration,
    /// A PING is sent on a connection idle for this long (must be below `idle_timeout`).
    pub keep_alive_interval: Duration,
    /// Initial per-stream flow-control window (bytes the peer may send on one stream unread).
    pub stream_window_bytes: u64,
    /// Initial connection flow-control window; memory per connection is bounded by it.
    pub connection_window_bytes: u64,
    /// Concurrent bidirectional streams the peer may open (bounds inbound RPCs per connection).
    pub bidi_streams_max: u64,
    /// Connections this endpoint keeps, handshaking included; further Initials are dropped.
    pub connections_max: usize,
    /// Largest RPC body accepted or sent.
    pub message_bytes_max: u64,
    /// Outgoing RPCs in flight per peer; more fail with `TooManyInFlight`.
    pub requests_in_flight_max: usize,
    pub request_timeout: Duration,
    pub reconnect_backoff_initial: Duration,
    pub reconnect_backoff_max: Duration,
    pub congestion_control: quiche::CongestionControlAlgorithm,
    /// Which of the node's shards this endpoint is (see [`Steering`]).
    pub steering: Steering,
}

/// One endpoint per shard, all on one UDP port ([`crate::udp::SteeredPort`]): the endpoint of
/// shard `index` of `count` owns the connections of the peers [`shard_of`] places on it, issues
/// connection ids whose first byte is `index` (so the kernel delivers their packets to its
/// socket), dials only its own peers, and opens each dial with a destination id whose first
/// byte is this node's [`NodeId::steering_byte`], which puts the connection on the shard of the
/// peer's endpoint that owns this node. A handshake that lands on a shard that does not own
/// the peer (a dialer that does not steer) is refused with [`codes::CONN_WRONG_SHARD`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Steering {
    pub index: usize,
    pub count: usize,
}

impl Steering {
    /// A node with one shard: every peer is its own.
    pub const SINGLE: Steering = Steering { index: 0, count: 1 };

    /// Whether this shard owns `peer`'s connection.
    pub fn owns(&self, peer: &NodeId) -> bool {
        shard_of(peer, self.count) == self.index
    }
}

/// The shard of a node with `shards` shards that owns the connection to `peer`: its steering
/// byte modulo the shard count, the same rule the kernel applies to the first byte of the
/// destination id of that peer's first Initial.
pub fn shard_of(peer: &NodeId, shards: usize) -> usize {
    peer.steering_byte() as usize % shards.max(1)
}

impl Default for QuicConfig {
    fn default() -> Self {
        QuicConfig {
            listen_addr: "127.0.0.1:0".parse().expect("literal address"),
            udp: UdpConfig::default(),
            udp_payload_bytes_max: 1452,
            handshake_timeout: Duration::from_secs(5),
            initial_rtt: Duration::from_millis(icn_tuning::QUIC_INITIAL_RTT_MS_DEFAULT),
            idle_timeout: Duration::from_secs(30),
            keep_alive_interval: Duration::from_secs(5),
            stream_window_bytes: 16 << 20,
            connection_window_bytes: 64 << 20,
            bidi_streams_max: 1024,
            connections_max: 1024,
            message_bytes_max: 128 << 20,
            requests_in_flight_max: 1024,
            request_timeout: Duration::from_secs(30),
            reconnect_backoff_initial: Duration::from_millis(100),
            reconnect_backoff_max: Duration::from_secs(5),
            congestion_control: quiche::CongestionControlAlgorithm::CUBIC,
            steering: Steering::SINGLE,
        }
    }
}

/// Counters of one endpoint (merged into the metrics registry by the node).
#[derive(Default, Debug)]
pub struct QuicStats {
    /// Connections whose handshake completed and whose peer was admitted.
    pub connections_opened: Cell<u64>,
    /// Admitted connections that ended.
    pub connections_closed: Cell<u64>,
    /// Handshakes that completed but whose peer we refused (wrong node, not allowed, wrong dialer,
    /// wrong shard).
    pub handshakes_refused: Cell<u64>,
    /// Of `handshakes_refused`: allowed peers whose handshake reached a shard that does not own
    /// them (a dialer that did not steer its first Initial).
    pub handshakes_misrouted: Cell<u64>,
    /// Connection attempts that ended before being admitted (TLS refusal, timeout, peer gone,
    /// and the refusals counted in `handshakes_refused`).
    pub handshakes_failed: Cell<u64>,
    pub garbage_datagrams: Cell<u64>,
    pub initials_dropped_full: Cell<u64>,
    pub rpcs_sent: Cell<u64>,
    pub rpcs_served: Cell<u64>,
    pub rpcs_failed: Cell<u64>,
    pub streams_reset_by_peer: Cell<u64>,
    pub protocol_errors: Cell<u64>,
    pub oversized_messages: Cell<u64>,
    /// Sends that found packets only after quiche had answered "nothing to send" (the stale
    /// stream it rotated away; see [`fill_batch`]): each is a stall of the connection avoided.
    pub flushes_retried: Cell<u64>,
    /// Packets lost on connections that closed (a connection still open is sampled by
    /// [`QuicTransport::publish_metrics`] instead).
    pub packets_lost: Cell<u64>,
    /// Our RPCs that failed, by kind, indexed like [`RPC_ERROR_KINDS`] (every failure, also
    /// those refused before a stream was opened).
    pub rpc_errors: [Cell<u64>; RPC_ERROR_KINDS.len()],
    /// Streams refused because their bytes did not decode, by [`icn_codecs::DecodeError`] kind,
    /// indexed like [`DECODE_ERROR_KINDS`] (a stream that ends inside its message counts as
    /// truncated, bytes after it as unexpected).
    pub decode_errors: [Cell<u64>; DECODE_ERROR_KINDS.len()],
}

/// The `kind` values of `icn_rpc_errors_total`, shared with the other transports.
const RPC_ERROR_KINDS: [&str; TransportMetrics::RPC_ERROR_KINDS.len()] =
    TransportMetrics::RPC_ERROR_KINDS;

impl QuicStats {
    fn count_rpc_error(&self, error: &RpcError) {
        let kind = rpc_error_kind(error);
        let index = RPC_ERROR_KINDS
            .iter()
            .position(|known| *known == kind)
            .expect("rpc_error_kind returns a declared kind");
        bump(&self.rpc_errors[index]);
    }
}

fn bump(cell: &Cell<u64>) {
    cell.set(cell.get().wrapping_add(1));
}

use crate::transport::durations::RpcDurations;
pub use crate::transport::durations::RPC_DURATION_ROUTES_MAX;

/// Refcounted buffers for quiche's zero-copy sends.
#[derive(Clone, Default, Debug)]
pub struct IcnBufFactory;

impl BufFactory for IcnBufFactory {
    type Buf = Buf;
    type DgramBuf = Vec<u8>;

    fn buf_from_slice(bytes: &[u8]) -> Buf {
        Buf::copy_from_slice(bytes)
    }

    fn dgram_buf_from_slice(bytes: &[u8]) -> Vec<u8> {
        bytes.to_vec()
    }
}

impl BufSplit for Buf {
    fn split_at(&mut self, at: usize) -> Self {
        let tail = self.slice(at..self.len());
        *self = self.slice(0..at);
        tail
    }
}

type QuicConn = quiche::Connection<IcnBufFactory>;

/// A single-waiter wake-up flag (the sender and timer tasks each wait on one).
#[derive(Default)]
struct Notify {
    notified: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Notify {
    fn notify(&self) {
        self.notified.set(true);
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }

    fn wait(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            if self.notified.replace(false) {
                Poll::Ready(())
            } else {
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
    }
}

enum Role {
    /// Our RPC: waits for the response.
    Outgoing {
        route: Route,
        /// When the RPC started (its deadline minus `request_timeout`: no clock read of its own).
        started: Instant,
        waker: Option<Waker>,
        result: Option<Result<Buf, RpcError>>,
    },
    /// The peer's RPC: the handler task, once the request is complete.
    Incoming { handler: Option<JoinHandle<()>> },
}

struct Stream {
    role: Role,
    rx: Assembler,
    /// Bytes not yet accepted by quiche (flow control), in order; FIN after the last.
    tx: VecDeque<Buf>,
    tx_fin: bool,
}

struct Conn {
    quic: QuicConn,
    id: ConnId,
    /// Known once the handshake completed and the certificate was checked.
    peer: Option<NodeId>,
    /// The node we dialed (None for accepted connections).
    expected_peer: Option<NodeId>,
    cids: Vec<Vec<u8>>,
    /// Fx-hashed although inbound stream ids are the peer's choice: quiche admits at most
    /// `bidi_streams_max` peer streams and we open at most `requests_in_flight_max`, so the map
    /// cannot be flooded whatever the ids collide on.
    streams: FxHashMap<u64, Stream>,
    next_stream_id: u64,
    /// Streams with bytes quiche has not taken yet (a subset of `streams`, same bound).
    pending_tx: FxHashSet<u64>,
    outgoing_in_flight: usize,
    /// Deadlines of our RPCs on this connection, earliest first, checked by the timer task (one
    /// glommio timer per RPC cost a red-black-tree insert and remove each). Entries of RPCs that
    /// already ended are dropped lazily; see [`RpcDeadlines`] for the bound.
    rpc_deadlines: RpcDeadlines,
    last_send: Instant,
    opened: Instant,
    /// When we closed it; it is dropped at the latest `CLOSE_GRACE` later even if quiche has not
    /// finished closing (quiche sends nothing for an application close before the handshake is
    /// confirmed, which would otherwise keep it until the idle timeout).
    closing_since: Option<Instant>,
    /// Whether the key is in `State::dirty` (so that it is there at most once).
    queued_for_send: bool,
    counts: ConnCounts,
}

/// RPC body bytes a connection carried, and what [`QuicTransport::publish_metrics`] published
/// of them and of quiche's count of lost packets (published as differences, so a connection's
/// losses are counted once whether it is sampled open, closes, or both).
#[derive(Default)]
struct ConnCounts {
    sent_bytes: u64,
    received_bytes: u64,
    published_sent_bytes: u64,
    published_received_bytes: u64,
    published_lost_packets: u64,
}

impl ConnCounts {
    /// The bytes not published yet, as (sent, received); marks them published.
    fn take_unpublished_bytes(&mut self) -> (u64, u64) {
        let sent = self.sent_bytes - self.published_sent_bytes;
        let received = self.received_bytes - self.published_received_bytes;
        self.published_sent_bytes = self.sent_bytes;
        self.published_received_bytes = self.received_bytes;
        (sent, received)
    }

    /// Lost packets quiche reports (`lost_now`) not published yet; marks them published.
    fn take_unpublished_lost(&mut self, lost_now: u64) -> u64 {
        let lost = lost_now.saturating_sub(self.published_lost_packets);
        self.published_lost_packets = self.published_lost_packets.max(lost_now);
        lost
    }
}

/// Queues `key` for the sender, once however many events touch it before the sender runs.
fn mark_dirty(state: &mut State, key: u64) {
    if let Some(conn) = state.conns.get_mut(&key) {
        if !conn.queued_for_send {
            conn.queued_for_send = true;
            state.dirty.push_back(key);
        }
    }
}

/// How long a connection we closed may linger for its CONNECTION_CLOSE and draining period.
const CLOSE_GRACE: Duration = Duration::from_millis(500);

/// Deadlines of one connection's outgoing RPCs, earliest first (a min-heap of
/// `(deadline, stream id)`). An RPC that ends leaves its entry behind; it is dropped when it falls
/// due, or earlier when the heap is compacted when stale entries outnumber live ones.
///
/// Bound: live entries are at most `requests_in_flight_max` (we open no more streams), and
/// compaction keeps the heap below 2 × that + `RPC_DEADLINES_SLACK`: 32 bytes an entry, 66 KiB
/// per connection at the default 1024. Nothing in it comes from the peer.
#[derive(Default)]
struct RpcDeadlines {
    heap: BinaryHeap<Reverse<(Instant, u64)>>,
}

/// Stale deadline entries tolerated beyond twice the in-flight limit before compacting, so that
/// a small limit does not compact on every RPC.
const RPC_DEADLINES_SLACK: usize = 64;

impl RpcDeadlines {
    fn push(
        &mut self,
        deadline: Instant,
        stream_id: u64,
        live: impl Fn(u64) -> bool,
        live_max: usize,
    ) {
        if self.heap.len() >= 2 * live_max + RPC_DEADLINES_SLACK {
            self.heap.retain(|Reverse((_, id))| live(*id));
        }
        self.heap.push(Reverse((deadline, stream_id)));
    }

    fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((when, _))| *when)
    }

    /// Pops the earliest entry if it is due by `now`.
    fn pop_due(&mut self, now: Instant) -> Option<u64> {
        let Reverse((when, stream_id)) = *self.heap.peek()?;
        if when > now {
            return None;
        }
        self.heap.pop();
        Some(stream_id)
    }
}

/// Closes a connection on our initiative: it stops serving its peer at once (no new RPCs pick it),
/// the peer learns why, and the connection is reaped within `CLOSE_GRACE`.
fn close_conn(state: &mut State, key: u64, app: bool, code: u64, reason: &[u8]) {
    let Some(conn) = state.conns.get_mut(&key) else {
        return;
    };
    let _ = conn.quic.close(app, code, reason);
    conn.closing_since.get_or_insert_with(Instant::now);
    if let Some(peer) = conn.peer {
        if state.by_peer.get(&peer) == Some(&key) {
            state.by_peer.remove(&peer);
        }
        wake_peer_waiters(state, peer);
    }
    mark_dirty(state, key);
}

struct State {
    /// Keyed by our own connection counter.
    conns: FxHashMap<u64, Conn>,
    /// Looked up with connection ids from every datagram (peer bytes), but holds only ids we
    /// issued plus one client-chosen Initial id per accepted connection: at most
    /// `connections_max` × a few entries, so a non-DoS-resistant hash cannot be flooded.
    by_cid: FxHashMap<Vec<u8>, u64>,
    /// Admitted peers only (registry members), at most one entry each.
    by_peer: FxHashMap<NodeId, u64>,
    /// Who may connect, and where to dial them: the allowed peers this shard owns.
    allowed: HashMap<NodeId, SocketAddr>,
    /// Allowed peers that other shards of this node own (a connection from one is misrouted).
    others: FxHashSet<NodeId>,
    /// Tasks waiting for a peer's connection state to change (our own RPCs and dialers, for
    /// allowed peers only; an entry is removed when it is woken).
    peer_waiters: HashMap<NodeId, Vec<Waker>>,
    /// Connections with output for the sender; each at most once (`Conn::queued_for_send`).
    dirty: VecDeque<u64>,
    dialers: HashMap<NodeId, JoinHandle<()>>,
    /// Notified whenever a peer's connection is established or gone (one waiter:
    /// [`QuicTransport::peers_changed`]).
    peers_changed: Rc<Notify>,
    /// What connections that closed since the last publish left unpublished.
    closed_unpublished: ClosedUnpublished,
}

/// Counts of closed connections that [`QuicTransport::publish_metrics`] has not published yet.
#[derive(Default)]
struct ClosedUnpublished {
    lost_packets: u64,
    /// (sent, received) body bytes per admitted peer. Only registry peers are admitted and the
    /// map is emptied on every publish, so it holds at most the peers allowed since then.
    bytes: FxHashMap<NodeId, (u64, u64)>,
}

struct Inner {
    local_id: NodeId,
    config: QuicConfig,
    udp: UdpIo,
    /// For connections we accept (server TLS context).
    server_config: RefCell<quiche::Config>,
    /// For connections we dial (client TLS context).
    client_config: RefCell<quiche::Config>,
    router: Router,
    state: RefCell<State>,
    encoder: RefCell<Encoder>,
    frame_limits: FrameLimits,
    codec_limits: CodecLimits,
    send_wake: Notify,
    timer_wake: Notify,
    /// When the timer task will next wake by itself (None while it waits without a deadline).
    /// A new deadline later than this needs no wake-up: the task re-reads all deadlines then.
    timer_armed_until: Cell<Option<Instant>>,
    next_conn_id: Cell<u64>,
    shutdown: Cell<bool>,
    tasks: RefCell<Vec<JoinHandle<()>>>,
    /// Driver and dialer tasks not yet dropped; shutdown waits for 0 so the socket is closed
    /// once the caller drops its handles.
    live_tasks: Rc<Cell<usize>>,
    pub stats: QuicStats,
    /// Durations of our answered RPCs, recorded where the response completes.
    rpc_durations: RefCell<RpcDurations>,
    /// What `publish_metrics` published last: counters are published as differences.
    published: RefCell<Published>,
}

/// The counter values [`QuicTransport::publish_metrics`] published last.
#[derive(Default)]
struct Published {
    connections_opened: u64,
    connections_closed: u64,
    packets_sent: u64,
    packets_received: u64,
    garbage_datagrams: u64,
    handshakes_failed: u64,
    connections_refused: u64,
    rpc_errors: [u64; RPC_ERROR_KINDS.len()],
    decode_errors: [u64; DECODE_ERROR_KINDS.len()],
    active_connections: i64,
}

/// A QUIC endpoint (see the module docs).
#[derive(Clone)]
pub struct QuicTransport {
    inner: Rc<Inner>,
}

/// Why an endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum QuicStartError {
    #[error("QUIC configuration: {0}")]
    Config(quiche::Error),
    #[error("UDP socket on {addr}: {source}")]
    Socket {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "shard {index} of {count}: a node steers QUIC to 1..=256 shards, each below the count"
    )]
    Steering { index: usize, count: usize },
}

impl QuicTransport {
    /// Starts an endpoint on the current glommio executor, on its own socket bound to
    /// `config.listen_addr`. The TLS context builders must present this node's certificate and
    /// require and check the peer's (see [`crate::tls`]): the server one serves connections we
    /// accept, the client one those we dial. `allowed` lists the peers that may connect and their
    /// addresses (this endpoint keeps those `config.steering` gives it).
    pub fn start(
        local_id: NodeId,
        server_tls: boring::ssl::SslContextBuilder,
        client_tls: boring::ssl::SslContextBuilder,
        config: QuicConfig,
        router: Router,
        allowed: HashMap<NodeId, SocketAddr>,
    ) -> Result<QuicTransport, QuicStartError> {
        let udp = UdpIo::bind(config.listen_addr, &config.udp).map_err(|source| {
            QuicStartError::Socket {
                addr: config.listen_addr,
                source,
            }
        })?;
        QuicTransport::start_on(
            local_id, server_tls, client_tls, config, router, allowed, udp,
        )
    }

    /// Starts shard `config.steering.index`'s endpoint on its socket of a
    /// [`crate::udp::SteeredPort`] bound for `config.steering.count` shards (see [`Steering`]).
    pub fn start_steered(
        local_id: NodeId,
        server_tls: boring::ssl::SslContextBuilder,
        client_tls: boring::ssl::SslContextBuilder,
        config: QuicConfig,
        router: Router,
        allowed: HashMap<NodeId, SocketAddr>,
        socket: BoundSocket,
    ) -> Result<QuicTransport, QuicStartError> {
        let udp =
            UdpIo::from_bound(socket, &config.udp).map_err(|source| QuicStartError::Socket {
                addr: config.listen_addr,
                source,
            })?;
        QuicTransport::start_on(
            local_id, server_tls, client_tls, config, router, allowed, udp,
        )
    }

    fn start_on(
        local_id: NodeId,
        server_tls: boring::ssl::SslContextBuilder,
        client_tls: boring::ssl::SslContextBuilder,
        config: QuicConfig,
        router: Router,
        allowed: HashMap<NodeId, SocketAddr>,
        udp: UdpIo,
    ) -> Result<QuicTransport, QuicStartError> {
        let Steering { index, count } = config.steering;
        if count == 0 || count > STEERED_SHARDS_MAX || index >= count {
            return Err(QuicStartError::Steering { index, count });
        }
        let server_config =
            build_quic_config(server_tls, &config).map_err(QuicStartError::Config)?;
        let client_config =
            build_quic_config(client_tls, &config).map_err(QuicStartError::Config)?;
        let body_bytes_max = config.message_bytes_max;
        let inner = Rc::new(Inner {
            local_id,
            udp,
            server_config: RefCell::new(server_config),
            client_config: RefCell::new(client_config),
            router,
            state: RefCell::new(State {
                conns: FxHashMap::default(),
                by_cid: FxHashMap::default(),
                by_peer: FxHashMap::default(),
                allowed: HashMap::new(),
                others: FxHashSet::default(),
                peer_waiters: HashMap::new(),
                dirty: VecDeque::new(),
                dialers: HashMap::new(),
                peers_changed: Rc::default(),
                closed_unpublished: ClosedUnpublished::default(),
            }),
            encoder: RefCell::new(Encoder::new(CodecLimits::default())),
            frame_limits: FrameLimits {
                body_bytes_max,
                ..FrameLimits::default()
            },
            codec_limits: CodecLimits::default(),
            send_wake: Notify::default(),
            timer_wake: Notify::default(),
            timer_armed_until: Cell::new(None),
            next_conn_id: Cell::new(1),
            shutdown: Cell::new(false),
            tasks: RefCell::new(Vec::new()),
            live_tasks: Rc::new(Cell::new(0)),
            stats: QuicStats::default(),
            rpc_durations: RefCell::default(),
            published: RefCell::default(),
            config,
        });
        let transport = QuicTransport { inner };
        transport.spawn_driver_tasks();
        transport.set_allowed_peers(allowed);
        Ok(transport)
    }

    fn spawn_driver_tasks(&self) {
        let receiver = spawn_tracked(&self.inner, receive_loop(self.inner.clone()));
        let sender = spawn_tracked(&self.inner, send_loop(self.inner.clone()));
        let timer = spawn_tracked(&self.inner, timer_loop(self.inner.clone()));
        self.inner
            .tasks
            .borrow_mut()
            .extend([receiver, sender, timer]);
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.inner.udp.local_addr()
    }

    pub fn stats(&self) -> &QuicStats {
        &self.inner.stats
    }

    /// Datagram counters of the socket (sent/received, batching).
    pub fn udp_stats(&self) -> &crate::udp::UdpStats {
        &self.inner.udp.stats
    }

    pub fn gso_active(&self) -> bool {
        self.inner.udp.gso_active()
    }

    /// Replaces the set of allowed peers (a new registry version): connections to peers that are
    /// gone are closed, dialers start for new peers this node must dial.
    pub fn set_allowed_peers(&self, allowed: HashMap<NodeId, SocketAddr>) {
        let inner = &self.inner;
        let mut to_dial = Vec::new();
        {
            let mut state = inner.state.borrow_mut();
            let steering = inner.config.steering;
            state.others = allowed
                .keys()
                .filter(|peer| !steering.owns(peer))
                .copied()
                .collect();
            state.allowed = allowed
                .into_iter()
                .filter(|(peer, _)| steering.owns(peer))
                .collect();
            let removed: Vec<u64> = state
                .conns
                .iter()
                .filter(|(_, c)| {
                    c.peer
                        .or(c.expected_peer)
                        .is_some_and(|p| !state.allowed.contains_key(&p))
                })
                .map(|(key, _)| *key)
                .collect();
            for key in removed {
                close_conn(
                    &mut state,
                    key,
                    true,
                    codes::CONN_NOT_ALLOWED,
                    b"removed from registry",
                );
            }
            let gone: Vec<NodeId> = state
                .dialers
                .keys()
                .filter(|p| !state.allowed.contains_key(p))
                .copied()
                .collect();
            for peer in gone {
                if let Some(task) = state.dialers.remove(&peer) {
                    task.cancel();
                }
            }
            for peer in state.allowed.keys() {
                if inner.local_id < *peer && !state.dialers.contains_key(peer) {
                    to_dial.push(*peer);
                }
            }
        }
        for peer in to_dial {
            let task = spawn_tracked(inner, dial_loop(inner.clone(), peer));
            inner.state.borrow_mut().dialers.insert(peer, task);
        }
        inner.send_wake.notify();
        inner.timer_wake.notify();
    }

    /// Closes every connection and stops the endpoint's tasks.
    pub async fn shutdown(&self) {
        let inner = &self.inner;
        inner.shutdown.set(true);
        {
            let mut state = inner.state.borrow_mut();
            for task in state.dialers.drain().map(|(_, t)| t) {
                task.cancel();
            }
            let keys: Vec<u64> = state.conns.keys().copied().collect();
            for key in keys {
                if let Some(conn) = state.conns.get_mut(&key) {
                    let _ = conn.quic.close(true, codes::CONN_SHUTDOWN, b"shutdown");
                }
                mark_dirty(&mut state, key);
            }
        }
        flush_all(inner, &mut vec![0u8; send_buffer_bytes(&inner.config)]).await;
        for task in inner.tasks.borrow_mut().drain(..) {
            task.cancel();
        }
        {
            let mut state = inner.state.borrow_mut();
            let keys: Vec<u64> = state.conns.keys().copied().collect();
            for key in keys {
                remove_conn(inner, &mut state, key);
            }
        }
        // Cancelled tasks are dropped when the executor next visits them.
        let deadline = Instant::now() + Duration::from_secs(1);
        while inner.live_tasks.get() > 0 && Instant::now() < deadline {
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Waits until `peer` is connected, or `limit` passes. Returns whether it is connected.
    pub async fn wait_connected(&self, peer: NodeId, limit: Duration) -> bool {
        wait_for_peer(&self.inner, peer, limit).await.is_some()
    }

    /// Completes once a peer connected or disconnected since the last call completed (one
    /// caller at a time).
    pub async fn peers_changed(&self) {
        let notify = self.inner.state.borrow().peers_changed.clone();
        notify.wait().await
    }

    /// The connection id of `peer`'s current connection, if any.
    pub fn conn_of(&self, peer: NodeId) -> Option<ConnId> {
        let state = self.inner.state.borrow();
        state
            .by_peer
            .get(&peer)
            .and_then(|key| state.conns.get(key))
            .map(|c| c.id)
    }

    /// Path statistics of the connection to `peer`: (rtt, congestion window bytes, lost packets).
    pub fn path_stats(&self, peer: NodeId) -> Option<(Duration, usize, usize)> {
        let state = self.inner.state.borrow();
        let conn = state
            .by_peer
            .get(&peer)
            .and_then(|key| state.conns.get(key))?;
        let path = conn.quic.path_stats().next()?;
        Some((path.rtt, path.cwnd, path.lost))
    }

    /// Adds everything counted since the last call to the shard's standard transport metrics:
    /// connections opened, closed and open; RPC body bytes per peer; UDP datagrams sent and
    /// received; packets lost (sampled from every connection, so losses count while it is open,
    /// once); garbage datagrams; one RTT sample and the congestion window per connected peer;
    /// client-side RPC durations per route and failed RPCs by kind; transport events
    /// (`handshake_failed`, `connection_refused`); and the depth gauges `quic_connections`,
    /// `quic_streams_open`, `quic_streams_pending_send`, `quic_rpcs_pending`,
    /// `quic_rpc_deadlines` and `quic_handlers_running`. Call it from the shard's metrics
    /// publisher, before `ShardMetrics::publish`. Counters are published as differences, so
    /// other transports may share the handles; the `quic_*` gauges assume one QUIC endpoint per
    /// shard.
    pub fn publish_metrics(&self, metrics: &TransportMetrics) {
        let inner = &self.inner;
        publish_counters(inner, metrics);
        publish_connections(inner, metrics);
        inner.rpc_durations.borrow_mut().publish(metrics);
    }
}

/// Adds `now - published` to `counter` (no lookup when nothing changed) and remembers `now`.
fn publish_delta(counter: impl FnOnce() -> Counter, now: u64, published: &mut u64) {
    if now > *published {
        counter().add(now - *published);
    }
    *published = now.max(*published);
}

/// The endpoint's event counters, as differences since the last publish.
fn publish_counters(inner: &Inner, metrics: &TransportMetrics) {
    let stats = &inner.stats;
    let udp = &inner.udp.stats;
    let mut published = inner.published.borrow_mut();
    let last = &mut *published;
    for (counter, now, published) in [
        (
            &metrics.connections_opened,
            stats.connections_opened.get(),
            &mut last.connections_opened,
        ),
        (
            &metrics.connections_closed,
            stats.connections_closed.get(),
            &mut last.connections_closed,
        ),
        (
            &metrics.packets_sent,
            udp.datagrams_sent.get(),
            &mut last.packets_sent,
        ),
        (
            &metrics.packets_received,
            udp.datagrams_received.get(),
            &mut last.packets_received,
        ),
        (
            &metrics.garbage_datagrams,
            stats.garbage_datagrams.get(),
            &mut last.garbage_datagrams,
        ),
    ] {
        publish_delta(|| counter.clone(), now, published);
    }
    for (i, kind) in RPC_ERROR_KINDS.iter().enumerate() {
        let now = stats.rpc_errors[i].get();
        publish_delta(|| metrics.rpc_errors(kind), now, &mut last.rpc_errors[i]);
    }
    for (i, kind) in DECODE_ERROR_KINDS.iter().enumerate() {
        let now = stats.decode_errors[i].get();
        publish_delta(
            || metrics.decode_errors(kind),
            now,
            &mut last.decode_errors[i],
        );
    }
    // handshakes_failed includes the refused ones (see `QuicStats`), as TCP's event does not;
    // connection_refused is QUIC's refusals after the handshake plus Initials dropped when full.
    let refused = stats.handshakes_refused.get() + stats.initials_dropped_full.get();
    publish_delta(
        || metrics.transport_events("handshake_failed"),
        stats.handshakes_failed.get(),
        &mut last.handshakes_failed,
    );
    publish_delta(
        || metrics.transport_events("connection_refused"),
        refused,
        &mut last.connections_refused,
    );
}

/// Items in the bounded per-connection structures, summed over the endpoint's connections.
#[derive(Default)]
struct QueueDepths {
    connections: usize,
    streams_open: usize,
    streams_pending_send: usize,
    rpcs_pending: usize,
    rpc_deadlines: usize,
    handlers_running: usize,
}

impl QueueDepths {
    fn add(&mut self, conn: &Conn) {
        self.connections += 1;
        self.streams_open += conn.streams.len();
        self.streams_pending_send += conn.pending_tx.len();
        self.rpcs_pending += conn.outgoing_in_flight;
        self.rpc_deadlines += conn.rpc_deadlines.heap.len();
        self.handlers_running += conn
            .streams
            .values()
            .filter(|stream| matches!(stream.role, Role::Incoming { handler: Some(_) }))
            .count();
    }

    fn publish(&self, metrics: &TransportMetrics) {
        for (queue, depth) in [
            ("quic_connections", self.connections),
            ("quic_streams_open", self.streams_open),
            ("quic_streams_pending_send", self.streams_pending_send),
            ("quic_rpcs_pending", self.rpcs_pending),
            ("quic_rpc_deadlines", self.rpc_deadlines),
            ("quic_handlers_running", self.handlers_running),
        ] {
            metrics
                .queue_depth(queue)
                .set(i64::try_from(depth).unwrap_or(i64::MAX));
        }
    }
}

/// Samples every connection: lost packets and body bytes since the last publish, path stats of
/// connected peers, queue depths, and the number of usable connections.
fn publish_connections(inner: &Inner, metrics: &TransportMetrics) {
    let mut state = inner.state.borrow_mut();
    let state = &mut *state;
    let mut depths = QueueDepths::default();
    let mut open = 0i64;
    let mut lost = std::mem::take(&mut state.closed_unpublished.lost_packets);
    for (key, conn) in state.conns.iter_mut() {
        depths.add(conn);
        lost += conn
            .counts
            .take_unpublished_lost(conn.quic.stats().lost as u64);
        let Some(peer) = conn.peer else {
            continue;
        };
        let (sent, received) = conn.counts.take_unpublished_bytes();
        publish_bytes(metrics, &peer, sent, received);
        if state.by_peer.get(&peer) != Some(key) {
            continue; // closing, or replaced by a newer connection
        }
        open += 1;
        if let Some(path) = conn.quic.path_stats().next() {
            metrics.rtt_us.record_duration(path.rtt);
            metrics
                .congestion_window_bytes_for(&peer)
                .set(i64::try_from(path.cwnd).unwrap_or(i64::MAX));
        }
    }
    for (peer, (sent, received)) in state.closed_unpublished.bytes.drain() {
        publish_bytes(metrics, &peer, sent, received);
    }
    metrics.packets_lost.add(lost);
    depths.publish(metrics);
    // A difference, so that other transports on the shard may share the gauge.
    let mut published = inner.published.borrow_mut();
    metrics
        .active_connections
        .add(open - published.active_connections);
    published.active_connections = open;
}

fn publish_bytes(metrics: &TransportMetrics, peer: &NodeId, sent: u64, received: u64) {
    if sent > 0 {
        metrics.sent_bytes_for(peer).add(sent);
    }
    if received > 0 {
        metrics.received_bytes_for(peer).add(received);
    }
}

/// Counts a task as live until its future is dropped (finished or cancelled).
struct LiveToken(Rc<Cell<usize>>);

impl Drop for LiveToken {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

fn spawn_tracked(inner: &Rc<Inner>, future: impl Future<Output = ()> + 'static) -> JoinHandle<()> {
    let counter = inner.live_tasks.clone();
    counter.set(counter.get() + 1);
    let token = LiveToken(counter);
    glommio::spawn_local(async move {
        let _token = token;
        future.await;
    })
    .detach()
}

fn send_buffer_bytes(config: &QuicConfig) -> usize {
    config.udp_payload_bytes_max * config.udp.send_batch_datagrams_max.clamp(1, 64)
}

fn build_quic_config(
    tls: boring::ssl::SslContextBuilder,
    config: &QuicConfig,
) -> Result<quiche::Config, quiche::Error> {
    let mut q = quiche::Config::with_boring_ssl_ctx_builder(quiche::PROTOCOL_VERSION, tls)?;
    q.set_application_protos(&[ALPN])?;
    q.set_max_idle_timeout(config.idle_timeout.as_millis() as u64);
    q.set_initial_rtt(config.initial_rtt);
    q.set_max_recv_udp_payload_size(config.udp_payload_bytes_max);
    q.set_max_send_udp_payload_size(config.udp_payload_bytes_max);
    q.set_initial_max_data(config.connection_window_bytes);
    q.set_initial_max_stream_data_bidi_local(config.stream_window_bytes);
    q.set_initial_max_stream_data_bidi_remote(config.stream_window_bytes);
    q.set_initial_max_stream_data_uni(0);
    q.set_initial_max_streams_bidi(config.bidi_streams_max);
    q.set_initial_max_streams_uni(0);
    q.set_max_connection_window(config.connection_window_bytes.max(q_default_window()));
    q.set_max_stream_window(config.stream_window_bytes.max(q_default_window()));
    q.set_disable_active_migration(true);
    q.set_cc_algorithm(config.congestion_control);
    // Pacing needs a send-time-aware I/O path (SO_TXTIME); we send as soon as quiche has output.
    q.enable_pacing(false);
    Ok(q)
}

fn q_default_window() -> u64 {
    1 << 20
}

/// A random connection id whose first byte is `steer`: our shard index for the ids we issue
/// (the kernel steers their packets to our socket), our node's steering byte for the destination
/// id of a dial's first Initial (the peer's kernel steers it to the shard that owns us).
fn new_cid(steer: u8) -> ConnectionId<'static> {
    let mut bytes = [0u8; LOCAL_CID_BYTES];
    boring::rand::rand_bytes(&mut bytes).expect("BoringSSL RNG never fails");
    bytes[0] = steer;
    ConnectionId::from_vec(bytes.to_vec())
}

/// Node id of the peer of an established connection, from its certificate.
fn peer_id_of(conn: &QuicConn) -> Option<NodeId> {
    let der = conn.peer_cert()?;
    let cert = boring::x509::X509::from_der(der).ok()?;
    crate::identity::node_id_from_cert(&cert).ok()
}

impl Transport for QuicTransport {
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
        if self.inner.state.borrow().others.contains(&peer) {
            let error = RpcError::Local(format!(
                "peer {} is served by shard {} of this node, not {}",
                peer.short(),
                shard_of(&peer, self.inner.config.steering.count),
                self.inner.config.steering.index
            ));
            self.inner.stats.count_rpc_error(&error);
            return Err(error);
        }
        let result = rpc_on(&self.inner, peer, route, priority, request).await;
        if let Err(error) = &result {
            self.inner.stats.count_rpc_error(error);
        }
        result
    }

    fn peers(&self) -> Vec<(NodeId, ConnId)> {
        let state = self.inner.state.borrow();
        let mut peers: Vec<(NodeId, ConnId)> = state
            .by_peer
            .iter()
            .filter_map(|(peer, key)| state.conns.get(key).map(|c| (*peer, c.id)))
            .collect();
        peers.sort();
        peers
    }
}

/// One RPC: waits for the peer's connection, opens a stream, waits for the response.
async fn rpc_on(
    inner: &Rc<Inner>,
    peer: NodeId,
    route: Route,
    priority: Priority,
    request: Buf,
) -> Result<Buf, RpcError> {
    if request.len() as u64 > inner.config.message_bytes_max {
        return Err(RpcError::MessageTooLarge {
            size_bytes: request.len() as u64,
            limit_bytes: inner.config.message_bytes_max,
        });
    }
    // The one clock read of an RPC: its deadline (enforced by the timer task) and, less
    // `request_timeout`, its start (for `icn_rpc_duration_us`).
    let deadline = Instant::now() + inner.config.request_timeout;
    let Some(key) = wait_for_peer(inner, peer, inner.config.request_timeout).await else {
        return Err(RpcError::NotConnected(peer));
    };
    let stream_id = open_stream(inner, key, route, priority, request, deadline)?;
    bump(&inner.stats.rpcs_sent);
    let guard = StreamGuard {
        inner: inner.clone(),
        key,
        stream_id,
        armed: true,
    };
    let response = ResponseFuture {
        inner,
        key,
        stream_id,
    };
    let result = response.await;
    // The guard resets the stream unless the response arrived whole.
    let mut guard = guard;
    if result.is_ok() {
        guard.armed = false;
    }
    drop(guard);
    if result.is_err() {
        bump(&inner.stats.rpcs_failed);
    }
    result
}

/// Opens a stream for a new RPC and queues its request.
fn open_stream(
    inner: &Rc<Inner>,
    key: u64,
    route: Route,
    priority: Priority,
    body: Buf,
    deadline: Instant,
) -> Result<u64, RpcError> {
    let head = wire::request_head(&mut inner.encoder.borrow_mut(), route, priority, body.len());
    let mut state = inner.state.borrow_mut();
    let conn = state
        .conns
        .get_mut(&key)
        .ok_or(RpcError::ConnectionClosed)?;
    if conn.outgoing_in_flight >= inner.config.requests_in_flight_max {
        return Err(RpcError::TooManyInFlight {
            limit: inner.config.requests_in_flight_max,
        });
    }
    if conn.quic.peer_streams_left_bidi() == 0 {
        return Err(RpcError::TooManyInFlight {
            limit: inner.config.bidi_streams_max as usize,
        });
    }
    let stream_id = conn.next_stream_id;
    conn.next_stream_id += 4;
    let urgency = match priority {
        Priority::High => 1,
        Priority::Normal => 3,
        Priority::Low => 5,
    };
    conn.counts.sent_bytes += body.len() as u64;
    let mut tx = VecDeque::with_capacity(2);
    tx.push_back(head);
    if !body.is_empty() {
        tx.push_back(body);
    }
    conn.streams.insert(
        stream_id,
        Stream {
            role: Role::Outgoing {
                route,
                // `deadline` is the RPC's start plus `request_timeout` (see `rpc_on`).
                started: deadline - inner.config.request_timeout,
                waker: None,
                result: None,
            },
            rx: Assembler::new(),
            tx,
            tx_fin: true,
        },
    );
    conn.outgoing_in_flight += 1;
    let streams = &conn.streams;
    conn.rpc_deadlines.push(
        deadline,
        stream_id,
        |id| streams.contains_key(&id),
        inner.config.requests_in_flight_max,
    );
    // Priorities apply once the stream exists in quiche, i.e. after its first write.
    write_stream(conn, stream_id);
    let _ = conn.quic.stream_priority(stream_id, urgency, true);
    mark_dirty(&mut state, key);
    drop(state);
    inner.send_wake.notify();
    wake_timer_if_before(inner, deadline);
    Ok(stream_id)
}

/// Hands queued bytes of one stream to quiche, zero-copy, as far as flow control allows.
fn write_stream(conn: &mut Conn, stream_id: u64) {
    let Some(stream) = conn.streams.get_mut(&stream_id) else {
        conn.pending_tx.remove(&stream_id);
        return;
    };
    while let Some(buf) = stream.tx.pop_front() {
        let fin = stream.tx_fin && stream.tx.is_empty();
        // quiche drops the buffer when nothing fits (Done); keep a handle (a refcount, no copy).
        let kept = buf.clone();
        match conn.quic.stream_send_zc(stream_id, buf, fin) {
            Ok((_, Some(rest))) if !rest.is_empty() => {
                stream.tx.push_front(rest);
                conn.pending_tx.insert(stream_id);
                return;
            }
            Ok(_) => {}
            Err(quiche::Error::Done) => {
                stream.tx.push_front(kept);
                conn.pending_tx.insert(stream_id);
                return;
            }
            Err(_) => {
                // The stream was reset or the connection is closing; the response side reports it.
                stream.tx.clear();
                conn.pending_tx.remove(&stream_id);
                return;
            }
        }
    }
    conn.pending_tx.remove(&stream_id);
    // A served request whose response is fully handed to quiche needs no state any more.
    let served = stream.tx_fin && matches!(stream.role, Role::Incoming { handler: None });
    if served {
        conn.streams.remove(&stream_id);
    }
}

/// Resets an RPC's stream when its future is dropped before the response arrived.
struct StreamGuard {
    inner: Rc<Inner>,
    key: u64,
    stream_id: u64,
    armed: bool,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let mut state = self.inner.state.borrow_mut();
        let Some(conn) = state.conns.get_mut(&self.key) else {
            return;
        };
        let unsent = match conn.streams.remove(&self.stream_id) {
            Some(stream) => {
                conn.outgoing_in_flight = conn.outgoing_in_flight.saturating_sub(1);
                !stream.tx.is_empty()
            }
            None => false,
        };
        conn.pending_tx.remove(&self.stream_id);
        if unsent && !self.armed {
            // The response came before the whole request left: stop sending the rest.
            let _ =
                conn.quic
                    .stream_shutdown(self.stream_id, Shutdown::Write, codes::STREAM_CANCELLED);
        }
        if self.armed {
            let _ =
                conn.quic
                    .stream_shutdown(self.stream_id, Shutdown::Write, codes::STREAM_CANCELLED);
            let _ =
                conn.quic
                    .stream_shutdown(self.stream_id, Shutdown::Read, codes::STREAM_CANCELLED);
        }
        mark_dirty(&mut state, self.key);
        drop(state);
        self.inner.send_wake.notify();
    }
}

struct ResponseFuture<'a> {
    inner: &'a Rc<Inner>,
    key: u64,
    stream_id: u64,
}

impl Future for ResponseFuture<'_> {
    type Output = Result<Buf, RpcError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.inner.state.borrow_mut();
        let Some(conn) = state.conns.get_mut(&self.key) else {
            return Poll::Ready(Err(RpcError::ConnectionClosed));
        };
        let Some(stream) = conn.streams.get_mut(&self.stream_id) else {
            return Poll::Ready(Err(RpcError::ConnectionClosed));
        };
        match &mut stream.role {
            Role::Outgoing { result, waker, .. } => match result.take() {
                Some(result) => Poll::Ready(result),
                None => {
                    *waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            },
            Role::Incoming { .. } => {
                Poll::Ready(Err(RpcError::Local("stream role mismatch".into())))
            }
        }
    }
}

/// Waits for an established, verified connection to `peer`; returns its key.
async fn wait_for_peer(inner: &Rc<Inner>, peer: NodeId, limit: Duration) -> Option<u64> {
    let lookup = || {
        let state = inner.state.borrow();
        let key = *state.by_peer.get(&peer)?;
        let conn = state.conns.get(&key)?;
        (!conn.quic.is_closed() && !conn.quic.is_draining()).then_some(key)
    };
    if let Some(key) = lookup() {
        return Some(key);
    }
    if !inner.state.borrow().allowed.contains_key(&peer) {
        return None;
    }
    let wait = std::future::poll_fn(|cx| match lookup() {
        Some(key) => Poll::Ready(key),
        None => {
            inner
                .state
                .borrow_mut()
                .peer_waiters
                .entry(peer)
                .or_default()
                .push(cx.waker().clone());
            Poll::Pending
        }
    });
    glommio::timer::timeout(limit, async { Ok(wait.await) })
        .await
        .ok()
}

fn wake_peer_waiters(state: &mut State, peer: NodeId) {
    state.peers_changed.notify();
    if let Some(waiters) = state.peer_waiters.remove(&peer) {
        for waker in waiters {
            waker.wake();
        }
    }
}

async fn receive_loop(inner: Rc<Inner>) {
    let mut batch = RecvBatch::new(inner.config.udp.recv_batch_datagrams_max.max(1));
    let local = inner.udp.local_addr();
    let mut touched: Vec<u64> = Vec::new();
    let mut dispatches: Vec<Dispatch> = Vec::new();
    loop {
        if inner.shutdown.get() {
            return;
        }
        if let Err(error) = inner.udp.readable().await {
            eprintln!("icn: QUIC socket {local}: wait failed: {error}");
            glommio::timer::sleep(Duration::from_millis(10)).await;
            continue;
        }
        loop {
            let received = match inner.udp.recv_batch(&mut batch) {
                Ok(n) => n,
                Err(error) => {
                    eprintln!("icn: QUIC socket {local}: receive failed: {error}");
                    0
                }
            };
            if received == 0 {
                break;
            }
            process_batch(&inner, &mut batch, local, &mut touched, &mut dispatches);
            // glommio runs a spawned task at once, so handlers start only after the state is
            // released.
            for dispatch in dispatches.drain(..) {
                launch_handler(&inner, dispatch);
            }
            if received < inner.config.udp.recv_batch_datagrams_max {
                break;
            }
            // A full batch: let the sender run before draining more.
            inner.send_wake.notify();
            futures_lite::future::yield_now().await;
        }
        inner.send_wake.notify();
        // Let the sender answer (ACKs, flow-control credit) before the next batch: with data
        // always queued, readable() completes at once and would never give up the executor.
        futures_lite::future::yield_now().await;
    }
}

/// Feeds every datagram of a batch to its connection, then reads each touched connection's
/// streams once (not once per packet).
fn process_batch(
    inner: &Rc<Inner>,
    batch: &mut RecvBatch,
    local: SocketAddr,
    touched: &mut Vec<u64>,
    dispatches: &mut Vec<Dispatch>,
) {
    let mut state = inner.state.borrow_mut();
    for i in 0..batch.len() {
        let Some((from, data, segment)) = batch.entry_mut(i) else {
            continue;
        };
        for datagram in data.chunks_mut(segment) {
            let Some(key) = receive_datagram(inner, &mut state, from, local, datagram) else {
                continue;
            };
            if touched.last() != Some(&key) && !touched.contains(&key) {
                touched.push(key);
            }
        }
    }
    // One clock read per batch: the completion time of every RPC answered in it.
    let now = Instant::now();
    for &key in touched.iter() {
        let verified = state.conns.get(&key).is_some_and(|c| c.peer.is_some());
        if verified {
            read_streams(inner, &mut state, key, now, dispatches);
        }
        mark_dirty(&mut state, key);
    }
    wake_timer_for(inner, &state, touched);
    touched.clear();
}

/// Hands one datagram to its connection (accepting a new one for an Initial); returns the
/// connection's key. The peer is verified as soon as the handshake completes, before any of its
/// stream data is read.
fn receive_datagram(
    inner: &Rc<Inner>,
    state: &mut State,
    from: SocketAddr,
    to: SocketAddr,
    datagram: &mut [u8],
) -> Option<u64> {
    let Ok(header) = quiche::Header::from_slice(datagram, LOCAL_CID_BYTES) else {
        bump(&inner.stats.garbage_datagrams);
        return None;
    };
    let key = match state.by_cid.get(&header.dcid[..]) {
        Some(key) => *key,
        None => accept(inner, state, &header, from, to)?,
    };
    let conn = state.conns.get_mut(&key)?;
    let was_established = conn.peer.is_some();
    if conn.quic.recv(datagram, RecvInfo { from, to }).is_err() {
        // quiche already accounted for the packet (e.g. undecryptable); count and move on.
        bump(&inner.stats.garbage_datagrams);
    }
    if !was_established && conn.quic.is_established() {
        on_established(inner, state, key);
    }
    Some(key)
}

fn accept(
    inner: &Rc<Inner>,
    state: &mut State,
    header: &quiche::Header<'_>,
    from: SocketAddr,
    to: SocketAddr,
) -> Option<u64> {
    if header.ty != quiche::Type::Initial {
        bump(&inner.stats.garbage_datagrams);
        return None;
    }
    if !quiche::version_is_supported(header.version) {
        let mut out = [0u8; 1500];
        if let Ok(len) = quiche::negotiate_version(&header.scid, &header.dcid, &mut out) {
            let _ = inner.udp.try_send(from, &out[..len], len);
        }
        return None;
    }
    if inner.shutdown.get() || state.conns.len() >= inner.config.connections_max {
        bump(&inner.stats.initials_dropped_full);
        return None;
    }
    let scid = new_cid(inner.config.steering.index as u8);
    let quic = quiche::accept_with_buf_factory::<IcnBufFactory>(
        &scid,
        None,
        to,
        from,
        &mut inner.server_config.borrow_mut(),
    )
    .ok()?;
    let key = insert_conn(inner, state, quic, scid.clone(), None, 1);
    state.by_cid.insert(header.dcid.to_vec(), key);
    if let Some(conn) = state.conns.get_mut(&key) {
        conn.cids.push(header.dcid.to_vec());
    }
    Some(key)
}

fn insert_conn(
    inner: &Rc<Inner>,
    state: &mut State,
    quic: QuicConn,
    scid: ConnectionId<'static>,
    expected_peer: Option<NodeId>,
    first_stream_id: u64,
) -> u64 {
    let key = inner.next_conn_id.get();
    inner.next_conn_id.set(key + 1);
    state.by_cid.insert(scid.to_vec(), key);
    let now = Instant::now();
    state.conns.insert(
        key,
        Conn {
            quic,
            // Unique across the node's shards (each shard counts its own keys).
            id: ConnId(
                key * inner.config.steering.count as u64 + inner.config.steering.index as u64,
            ),
            peer: None,
            expected_peer,
            cids: vec![scid.to_vec()],
            streams: FxHashMap::default(),
            next_stream_id: first_stream_id,
            pending_tx: FxHashSet::default(),
            outgoing_in_flight: 0,
            rpc_deadlines: RpcDeadlines::default(),
            last_send: now,
            opened: now,
            closing_since: None,
            queued_for_send: false,
            counts: ConnCounts::default(),
        },
    );
    // A new handshake deadline.
    inner.timer_wake.notify();
    key
}

/// The handshake finished: check who the peer is before any stream data is read.
fn on_established(inner: &Rc<Inner>, state: &mut State, key: u64) {
    let Some(conn) = state.conns.get_mut(&key) else {
        return;
    };
    let peer = peer_id_of(&conn.quic);
    let acceptable = match (peer, conn.expected_peer) {
        (Some(peer), Some(expected)) => peer == expected,
        // Accepted connection: by the dialer rule only a node with a smaller id dials us.
        (Some(peer), None) => peer < inner.local_id,
        (None, _) => false,
    };
    let allowed = peer.is_some_and(|p| state.allowed.contains_key(&p));
    if acceptable && peer.is_some_and(|p| state.others.contains(&p)) {
        bump(&inner.stats.handshakes_refused);
        bump(&inner.stats.handshakes_misrouted);
        close_conn(state, key, true, codes::CONN_WRONG_SHARD, b"wrong shard");
        return;
    }
    if !(acceptable && allowed) {
        bump(&inner.stats.handshakes_refused);
        close_conn(state, key, true, codes::CONN_NOT_ALLOWED, b"not allowed");
        return;
    }
    let peer = peer.expect("checked above");
    conn.peer = Some(peer);
    if let Some(old) = state.by_peer.get(&peer).copied() {
        if old != key {
            close_conn(state, old, true, codes::CONN_REPLACED, b"replaced");
        }
    }
    state.by_peer.insert(peer, key);
    bump(&inner.stats.connections_opened);
    wake_peer_waiters(state, peer);
}

/// Reads every readable stream of a connection, completing requests and responses.
fn read_streams(
    inner: &Rc<Inner>,
    state: &mut State,
    key: u64,
    now: Instant,
    dispatches: &mut Vec<Dispatch>,
) {
    let Some(conn) = state.conns.get_mut(&key) else {
        return;
    };
    // quiche's iterator owns its list of ids, so the connection stays free to borrow.
    for stream_id in conn.quic.readable() {
        read_stream(inner, conn, key, stream_id, now, dispatches);
    }
    let writable: Vec<u64> = conn.pending_tx.iter().copied().collect();
    for stream_id in writable {
        write_stream(conn, stream_id);
    }
    cancel_stopped_handlers(inner, conn);
}

/// A peer that drops an RPC sends STOP_SENDING; quiche then lists the stream as writable and
/// reports `StreamStopped` for it. The handler's work is no longer wanted: cancel it.
fn cancel_stopped_handlers(inner: &Rc<Inner>, conn: &mut Conn) {
    let handlers_running = conn
        .streams
        .values()
        .any(|stream| matches!(stream.role, Role::Incoming { handler: Some(_) }));
    if !handlers_running {
        return; // quiche's writable() builds a list; skip it when nothing could be cancelled
    }
    let candidates: Vec<u64> = conn
        .quic
        .writable()
        .filter(|id| {
            matches!(
                conn.streams.get(id),
                Some(Stream {
                    role: Role::Incoming { handler: Some(_) },
                    ..
                })
            )
        })
        .collect();
    for stream_id in candidates {
        if let Err(quiche::Error::StreamStopped(_)) = conn.quic.stream_capacity(stream_id) {
            bump(&inner.stats.streams_reset_by_peer);
            fail_stream(conn, stream_id, RpcError::Cancelled);
        }
    }
}

fn read_stream(
    inner: &Rc<Inner>,
    conn: &mut Conn,
    key: u64,
    stream_id: u64,
    now: Instant,
    dispatches: &mut Vec<Dispatch>,
) {
    let locally_initiated = (stream_id & 0x1) == (conn.next_stream_id & 0x1);
    if !conn.streams.contains_key(&stream_id) {
        if locally_initiated || (stream_id & 0x2) != 0 {
            // Our cancelled RPC, or a unidirectional stream we never allow: discard.
            discard_stream(conn, stream_id);
            return;
        }
        conn.streams.insert(
            stream_id,
            Stream {
                role: Role::Incoming { handler: None },
                rx: Assembler::new(),
                tx: VecDeque::new(),
                tx_fin: false,
            },
        );
    }
    let outcome = fill_assembler(inner, conn, stream_id);
    match outcome {
        ReadOutcome::Pending => {}
        ReadOutcome::Complete => complete_message(inner, conn, key, stream_id, now, dispatches),
        ReadOutcome::Reset => {
            bump(&inner.stats.streams_reset_by_peer);
            fail_stream(conn, stream_id, RpcError::ConnectionClosed);
        }
        ReadOutcome::Violation(code, error) => {
            bump(&inner.stats.protocol_errors);
            if code == codes::STREAM_TOO_LARGE {
                bump(&inner.stats.oversized_messages);
            }
            let _ = conn.quic.stream_shutdown(stream_id, Shutdown::Read, code);
            let _ = conn.quic.stream_shutdown(stream_id, Shutdown::Write, code);
            fail_stream(conn, stream_id, error);
        }
    }
}

fn discard_stream(conn: &mut Conn, stream_id: u64) {
    let mut scratch = [0u8; 4096];
    while let Ok((_, fin)) = conn.quic.stream_recv(stream_id, &mut scratch) {
        if fin {
            break;
        }
    }
    let _ = conn
        .quic
        .stream_shutdown(stream_id, Shutdown::Read, codes::STREAM_CANCELLED);
}

enum ReadOutcome {
    Pending,
    Complete,
    Reset,
    Violation(u64, RpcError),
}

fn fill_assembler(inner: &Rc<Inner>, conn: &mut Conn, stream_id: u64) -> ReadOutcome {
    let Some(stream) = conn.streams.get_mut(&stream_id) else {
        return ReadOutcome::Pending;
    };
    loop {
        let mut trailing = [0u8; 1];
        let complete_before = stream.rx.is_complete();
        let received = match stream.rx.next_sink() {
            // A zero-length section (empty envelope or body): advance without reading.
            Sink::Append { bytes_max: 0, .. } => Ok((0, false)),
            Sink::Append { to, bytes_max } => {
                conn.quic.stream_recv_buf(stream_id, to.limit(bytes_max))
            }
            Sink::Slice(target) => conn.quic.stream_recv(stream_id, target),
            Sink::Complete => conn.quic.stream_recv(stream_id, &mut trailing),
        };
        match received {
            Ok((read, fin)) => {
                let count = |kind: usize| bump(&inner.stats.decode_errors[kind]);
                if complete_before && read > 0 {
                    count(decode_error_index(&DecodeError::UnexpectedBytes {
                        kind: "stream",
                        bytes: read as u64,
                    }));
                    return ReadOutcome::Violation(
                        codes::STREAM_PROTOCOL,
                        RpcError::PeerMisbehaved("bytes after the end of the message".into()),
                    );
                }
                if let Err(error) = stream.rx.advance(read, &inner.frame_limits) {
                    count(match &error {
                        wire::AssembleError::Decode(decode) => decode_error_index(decode),
                        wire::AssembleError::Truncated => truncated_kind(),
                        wire::AssembleError::UnexpectedKind(_) => invalid_kind(),
                    });
                    return violation(error);
                }
                if fin {
                    return if stream.rx.is_complete() {
                        ReadOutcome::Complete
                    } else {
                        count(truncated_kind());
                        ReadOutcome::Violation(
                            codes::STREAM_PROTOCOL,
                            RpcError::PeerMisbehaved("stream ended inside a message".into()),
                        )
                    };
                }
            }
            Err(quiche::Error::Done) => return ReadOutcome::Pending,
            Err(quiche::Error::StreamReset(_)) => return ReadOutcome::Reset,
            Err(_) => return ReadOutcome::Reset,
        }
    }
}

/// [`DECODE_ERROR_KINDS`] index of a stream that ends inside its message.
fn truncated_kind() -> usize {
    decode_error_index(&DecodeError::Truncated { needed: 0, got: 0 })
}

/// [`DECODE_ERROR_KINDS`] index of a frame that decodes but has no place on the stream.
fn invalid_kind() -> usize {
    decode_error_index(&DecodeError::Invalid {
        kind: "stream",
        detail: "frame kind out of place",
    })
}

fn violation(error: wire::AssembleError) -> ReadOutcome {
    let code = match &error {
        wire::AssembleError::Decode(icn_codecs::DecodeError::LimitExceeded { .. }) => {
            codes::STREAM_TOO_LARGE
        }
        _ => codes::STREAM_PROTOCOL,
    };
    let error = match &error {
        wire::AssembleError::Decode(icn_codecs::DecodeError::LimitExceeded {
            value, max, ..
        }) => RpcError::MessageTooLarge {
            size_bytes: *value,
            limit_bytes: *max,
        },
        other => RpcError::PeerMisbehaved(other.to_string()),
    };
    ReadOutcome::Violation(code, error)
}

/// Ends a stream with an error: an outgoing RPC gets the error, an incoming one is dropped.
fn fail_stream(conn: &mut Conn, stream_id: u64, error: RpcError) {
    let Some(stream) = conn.streams.get_mut(&stream_id) else {
        return;
    };
    match &mut stream.role {
        Role::Outgoing { result, waker, .. } => {
            *result = Some(Err(error));
            if let Some(waker) = waker.take() {
                waker.wake();
            }
        }
        Role::Incoming { .. } => {
            // Dropping the handler's JoinHandle does not stop it; cancel explicitly.
            if let Some(Stream {
                role: Role::Incoming {
                    handler: Some(handler),
                },
                ..
            }) = conn.streams.remove(&stream_id)
            {
                handler.cancel();
            }
            conn.pending_tx.remove(&stream_id);
        }
    }
}

/// A complete request waiting for its handler to be started.
struct Dispatch {
    key: u64,
    stream_id: u64,
    ctx: RequestContext,
    body: Buf,
}

/// Hands a complete message to its RPC (a response, answered `now`) or queues its handler (a
/// request).
fn complete_message(
    inner: &Rc<Inner>,
    conn: &mut Conn,
    key: u64,
    stream_id: u64,
    now: Instant,
    dispatches: &mut Vec<Dispatch>,
) {
    let Some(stream) = conn.streams.get_mut(&stream_id) else {
        return;
    };
    let route = match &stream.role {
        Role::Outgoing { route, .. } => *route,
        Role::Incoming { .. } => Route(0),
    };
    let message = match stream.rx.finish(&inner.codec_limits, route) {
        Ok(message) => message,
        Err(error) => {
            bump(&inner.stats.protocol_errors);
            let _ = conn
                .quic
                .stream_shutdown(stream_id, Shutdown::Write, codes::STREAM_PROTOCOL);
            fail_stream(conn, stream_id, RpcError::PeerMisbehaved(error.to_string()));
            return;
        }
    };
    match (message, &mut stream.role) {
        (
            Message::Response { result: response },
            Role::Outgoing {
                route,
                started,
                result,
                waker,
            },
        ) => {
            inner
                .rpc_durations
                .borrow_mut()
                .record(*route, now.saturating_duration_since(*started));
            if let Ok(body) = &response {
                conn.counts.received_bytes += body.len() as u64;
            }
            *result = Some(response);
            if let Some(waker) = waker.take() {
                waker.wake();
            }
        }
        (
            Message::Request {
                route,
                priority,
                body,
            },
            Role::Incoming { .. },
        ) => {
            let ctx = RequestContext {
                peer: conn.peer.expect("streams are read only after verification"),
                conn: conn.id,
                route,
                priority,
            };
            bump(&inner.stats.rpcs_served);
            conn.counts.received_bytes += body.len() as u64;
            dispatches.push(Dispatch {
                key,
                stream_id,
                ctx,
                body,
            });
        }
        _ => {
            bump(&inner.stats.protocol_errors);
            let _ = conn
                .quic
                .stream_shutdown(stream_id, Shutdown::Write, codes::STREAM_PROTOCOL);
            fail_stream(
                conn,
                stream_id,
                RpcError::PeerMisbehaved("message of the wrong kind".into()),
            );
        }
    }
}

/// Starts the handler of a complete request; its handle is kept so a cancel can stop it.
fn launch_handler(inner: &Rc<Inner>, dispatch: Dispatch) {
    let Dispatch {
        key,
        stream_id,
        ctx,
        body,
    } = dispatch;
    let Some(handler) = inner.router.handler(ctx.route) else {
        respond(inner, key, stream_id, Err(RpcError::NoRoute(ctx.route)));
        return;
    };
    // Most handlers answer without waiting: poll once here and spare the task (its allocation,
    // scheduling and clock reads). A waker is registered again when the task polls it.
    let mut pending = handler(ctx, body);
    if let Poll::Ready(result) = pending
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        respond(inner, key, stream_id, result);
        return;
    }
    let task_inner = inner.clone();
    let task = glommio::spawn_local(async move {
        let result = pending.await;
        respond(&task_inner, key, stream_id, result);
    })
    .detach();
    let mut state = inner.state.borrow_mut();
    let stream = state
        .conns
        .get_mut(&key)
        .and_then(|c| c.streams.get_mut(&stream_id));
    match stream {
        // Answered at once (glommio ran the task inline): nothing left to cancel.
        Some(Stream { tx_fin: true, .. }) => {}
        Some(Stream {
            role: Role::Incoming { handler },
            ..
        }) => *handler = Some(task),
        // The stream is gone (served, or reset meanwhile): make sure the task stops.
        _ => task.cancel(),
    }
}

/// Writes a handler's response back on its stream.
fn respond(inner: &Rc<Inner>, key: u64, stream_id: u64, result: Result<Buf, RpcError>) {
    let head_result = result.as_ref().map(|body| body.len()).map_err(Clone::clone);
    let body_bytes = head_result.as_ref().map_or(0, |len| *len as u64);
    let head = wire::response_head(&mut inner.encoder.borrow_mut(), &head_result);
    let mut state = inner.state.borrow_mut();
    let Some(conn) = state.conns.get_mut(&key) else {
        return;
    };
    let Some(stream) = conn.streams.get_mut(&stream_id) else {
        return;
    };
    if let Role::Incoming { handler } = &mut stream.role {
        // The task is finishing; forget its handle without cancelling it.
        handler.take();
    }
    stream.tx.push_back(head);
    if let Ok(body) = result {
        if !body.is_empty() {
            stream.tx.push_back(body);
        }
    }
    stream.tx_fin = true;
    conn.counts.sent_bytes += body_bytes;
    write_stream(conn, stream_id);
    mark_dirty(&mut state, key);
    drop(state);
    inner.send_wake.notify();
}

async fn send_loop(inner: Rc<Inner>) {
    let mut out = vec![0u8; send_buffer_bytes(&inner.config)];
    loop {
        inner.send_wake.wait().await;
        flush_all(&inner, &mut out).await;
    }
}

/// Sends everything every dirty connection has, then reaps closed connections.
async fn flush_all(inner: &Rc<Inner>, out: &mut [u8]) {
    let mut next: Vec<u64> = Vec::new();
    loop {
        {
            let mut state = inner.state.borrow_mut();
            next.clear();
            next.extend(state.dirty.drain(..));
            for key in &next {
                if let Some(conn) = state.conns.get_mut(key) {
                    conn.queued_for_send = false;
                }
            }
        }
        if next.is_empty() {
            return;
        }
        for &key in &next {
            let sent = flush_conn(inner, key, out).await > 0;
            let mut state = inner.state.borrow_mut();
            // Sending arms quiche's loss and draining timers; wake the timer task only when that
            // comes before its own wake-up (the timer task wakes the sender in turn, and waking
            // unconditionally would make the two chase each other).
            if sent {
                wake_timer_for(inner, &state, &[key]);
            }
            let closed = state.conns.get(&key).is_some_and(|c| c.quic.is_closed());
            if closed {
                remove_conn(inner, &mut state, key);
            }
        }
    }
}

/// Drains one connection's packets into GSO batches and sends them; returns the sends made.
async fn flush_conn(inner: &Rc<Inner>, key: u64, out: &mut [u8]) -> usize {
    let segments_max = inner.udp.send_batch_datagrams_max();
    let mut sends = 0usize;
    loop {
        if sends > 0 && sends.is_multiple_of(FLUSH_BATCHES_PER_YIELD) {
            // A congestion window can hold thousands of packets: let receivers (ACKs) and other
            // connections run between bursts instead of holding the executor for the whole window.
            futures_lite::future::yield_now().await;
        }
        let batch = {
            let mut state = inner.state.borrow_mut();
            let Some(conn) = state.conns.get_mut(&key) else {
                return sends;
            };
            let pending: Vec<u64> = conn.pending_tx.iter().copied().collect();
            for stream_id in pending {
                write_stream(conn, stream_id);
            }
            fill_batch(
                inner,
                conn,
                out,
                segments_max,
                inner.config.udp_payload_bytes_max,
            )
        };
        let Some(batch) = batch else {
            return sends;
        };
        if let Err(error) = inner
            .udp
            .send(batch.dest, &out[..batch.len], batch.segment)
            .await
        {
            eprintln!("icn: QUIC send to {} failed: {error}", batch.dest);
            return sends;
        }
        sends += 1;
        if let Some((start, len)) = batch.straggler {
            if let Err(error) = inner
                .udp
                .send(batch.dest, &out[start..start + len], len)
                .await
            {
                eprintln!("icn: QUIC send to {} failed: {error}", batch.dest);
                return sends;
            }
        }
    }
}

/// GSO batches one connection may send before the sender yields the executor.
const FLUSH_BATCHES_PER_YIELD: usize = 4;

/// One or two sends prepared from a connection's packets.
struct Batch {
    dest: SocketAddr,
    /// `out[..len]`: packets of `segment` bytes, the last may be shorter.
    len: usize,
    segment: usize,
    /// A packet larger than `segment` that quiche wrote after the batch: `out[start..start+len]`,
    /// sent alone after the batch (GSO allows only a shorter last segment).
    straggler: Option<(usize, usize)>,
}

/// Fills `out` with packets for one destination; None when the connection has nothing to send.
///
/// quiche 0.30 can answer `Done` while it holds stream data to send. Its queue of streams with
/// data to send can hold a stream that has none left (seen with a debug print in quiche: the
/// queued stream's unsent range was empty). When that stream reaches the head of the queue,
/// `send` writes no stream frame, moves it to the back (our streams are incremental) and, with
/// no other frame due, answers `Done`. Taken at its word, that `Done` ends the flush; with
/// nothing in flight no ACK comes to start the next one, and the connection stays silent until
/// the keep-alive (seen as 5 s fetch stalls in the gossip bench). So a `Done` before the first
/// packet of a batch is asked again, at most [`STALE_STREAM_RETRIES`] times: each ask moves one
/// such stream out of the way.
fn fill_batch(
    inner: &Inner,
    conn: &mut Conn,
    out: &mut [u8],
    segments_max: usize,
    payload_max: usize,
) -> Option<Batch> {
    let mut len = 0usize;
    let mut batch: Option<Batch> = None;
    let mut count = 0usize;
    let mut retries = 0usize;
    while count < segments_max && out.len() - len >= payload_max {
        let (written, info) = match conn.quic.send(&mut out[len..len + payload_max]) {
            Ok(sent) => sent,
            Err(quiche::Error::Done) if count == 0 && retries < STALE_STREAM_RETRIES => {
                retries += 1;
                continue;
            }
            Err(_) => break, // Done, or a closed connection: nothing more now.
        };
        if retries > 0 && count == 0 {
            bump(&inner.stats.flushes_retried);
        }
        count += 1;
        let current = batch.get_or_insert(Batch {
            dest: info.to,
            len: 0,
            segment: written,
            straggler: None,
        });
        if written > current.segment {
            current.straggler = Some((len, written));
            break;
        }
        len += written;
        current.len = len;
        if written < current.segment {
            break; // a short packet ends a GSO batch
        }
    }
    if batch.is_some() {
        // Once per batch, not per packet: only the keep-alive reads it, at millisecond scale.
        conn.last_send = Instant::now();
    }
    batch
}

/// Times [`fill_batch`] asks quiche again after a `Done` before the first packet: each ask moves
/// one stale stream from the head of quiche's queue to its back, so this many stale streams in a
/// row are passed. A retry that finds nothing costs one `send` call that builds no packet (with
/// 8, `icn-bench transport` showed no change in rpc-1KiB-x64 or bulk-1MiB).
const STALE_STREAM_RETRIES: usize = 8;

fn remove_conn(inner: &Rc<Inner>, state: &mut State, key: u64) {
    let Some(mut conn) = state.conns.remove(&key) else {
        return;
    };
    for cid in &conn.cids {
        state.by_cid.remove(&cid[..]);
    }
    if let Some(peer) = conn.peer {
        if state.by_peer.get(&peer) == Some(&key) {
            state.by_peer.remove(&peer);
        }
        wake_peer_waiters(state, peer);
    }
    if let Some(peer) = conn.expected_peer {
        wake_peer_waiters(state, peer);
    }
    for (_, stream) in conn.streams.drain() {
        match stream.role {
            Role::Outgoing { waker, .. } => {
                if let Some(waker) = waker {
                    waker.wake();
                }
            }
            Role::Incoming { handler } => {
                if let Some(handler) = handler {
                    handler.cancel();
                }
            }
        }
    }
    let lost = conn.quic.stats().lost as u64;
    inner
        .stats
        .packets_lost
        .set(inner.stats.packets_lost.get() + lost);
    let unpublished = &mut state.closed_unpublished;
    unpublished.lost_packets += conn.counts.take_unpublished_lost(lost);
    if let Some(peer) = conn.peer {
        let (sent, received) = conn.counts.take_unpublished_bytes();
        if sent > 0 || received > 0 {
            let bytes = unpublished.bytes.entry(peer).or_default();
            bytes.0 += sent;
            bytes.1 += received;
        }
    }
    if conn.peer.is_some() {
        bump(&inner.stats.connections_closed);
    } else {
        bump(&inner.stats.handshakes_failed);
    }
}

async fn timer_loop(inner: Rc<Inner>) {
    loop {
        let next = next_deadline(&inner);
        inner.timer_armed_until.set(next);
        let sleep_for = next.map(|d| d.saturating_duration_since(Instant::now()));
        match sleep_for {
            Some(duration) => {
                futures_lite::future::or(glommio::timer::sleep(duration), async {
                    inner.timer_wake.wait().await;
                })
                .await;
            }
            None => inner.timer_wake.wait().await,
        }
        if fire_timers(&inner) {
            inner.send_wake.notify();
        }
    }
}

fn next_deadline(inner: &Rc<Inner>) -> Option<Instant> {
    let state = inner.state.borrow();
    state
        .conns
        .values()
        .filter_map(|conn| conn_deadline(conn, &inner.config))
        .min()
}

/// The earliest timer of one connection: quiche's, keep-alive, handshake, reaping, RPC deadlines.
fn conn_deadline(conn: &Conn, config: &QuicConfig) -> Option<Instant> {
    let open = conn.closing_since.is_none();
    let keep = conn
        .peer
        .filter(|_| open)
        .map(|_| conn.last_send + config.keep_alive_interval);
    let shake = (open && conn.peer.is_none()).then_some(conn.opened + config.handshake_timeout);
    let reap = conn.closing_since.map(|since| since + CLOSE_GRACE);
    let rpc = conn.rpc_deadlines.next();
    [conn.quic.timeout_instant(), keep, shake, reap, rpc]
        .into_iter()
        .flatten()
        .min()
}

/// Wakes the timer task if one of these connections now has a timer earlier than the one armed
/// (receiving and sending move quiche's ACK, loss and idle timers).
fn wake_timer_for(inner: &Inner, state: &State, keys: &[u64]) {
    let earliest = keys
        .iter()
        .filter_map(|key| state.conns.get(key))
        .filter_map(|conn| conn_deadline(conn, &inner.config))
        .min();
    if let Some(when) = earliest {
        wake_timer_if_before(inner, when);
    }
}

/// Runs due timers; returns whether any connection has new output.
fn fire_timers(inner: &Rc<Inner>) -> bool {
    let now = Instant::now();
    let mut state = inner.state.borrow_mut();
    let keep_alive = inner.config.keep_alive_interval;
    let handshake = inner.config.handshake_timeout;
    let mut touched = Vec::new();
    let mut expired = Vec::new();
    for (key, conn) in state.conns.iter_mut() {
        if conn.quic.timeout_instant().is_some_and(|t| t <= now) {
            conn.quic.on_timeout();
            touched.push(*key);
        }
        let open = conn.closing_since.is_none();
        if open && conn.peer.is_some() && conn.last_send + keep_alive <= now {
            let _ = conn.quic.send_ack_eliciting();
            conn.last_send = now;
            touched.push(*key);
        }
        if open && conn.peer.is_none() && conn.opened + handshake <= now {
            expired.push(*key);
        }
        if conn
            .closing_since
            .is_some_and(|since| since + CLOSE_GRACE <= now)
        {
            touched.push(*key);
        }
        expire_rpcs(conn, now);
    }
    for key in expired {
        close_conn(&mut state, key, false, 0x0, b"handshake timeout");
        touched.push(key);
    }
    let fired = !touched.is_empty();
    for key in touched {
        let reap = state.conns.get(&key).is_some_and(|c| {
            c.quic.is_closed()
                || c.closing_since
                    .is_some_and(|since| since + CLOSE_GRACE <= now)
        });
        if reap {
            remove_conn(inner, &mut state, key);
        } else {
            mark_dirty(&mut state, key);
        }
    }
    fired
}

/// Fails the RPCs of `conn` whose deadline passed (their futures return `Timeout`; dropping them
/// resets the streams).
fn expire_rpcs(conn: &mut Conn, now: Instant) {
    while let Some(stream_id) = conn.rpc_deadlines.pop_due(now) {
        let waiting = matches!(
            conn.streams.get(&stream_id),
            Some(Stream {
                role: Role::Outgoing { result: None, .. },
                ..
            })
        );
        if waiting {
            fail_stream(conn, stream_id, RpcError::Timeout);
        }
    }
}

/// Wakes the timer task if `when` comes before the wake-up it has armed.
fn wake_timer_if_before(inner: &Inner, when: Instant) {
    if inner
        .timer_armed_until
        .get()
        .is_none_or(|armed| when < armed)
    {
        inner.timer_wake.notify();
    }
}

/// Keeps a connection to `peer` open, reconnecting with exponential backoff.
async fn dial_loop(inner: Rc<Inner>, peer: NodeId) {
    let mut backoff = inner.config.reconnect_backoff_initial;
    loop {
        if inner.shutdown.get() {
            return;
        }
        let Some(addr) = inner.state.borrow().allowed.get(&peer).copied() else {
            return;
        };
        let connected = {
            let state = inner.state.borrow();
            state.by_peer.contains_key(&peer)
                || state
                    .conns
                    .values()
                    .any(|c| c.expected_peer == Some(peer) && !c.quic.is_closed())
        };
        if !connected {
            if let Err(error) = dial(&inner, peer, addr) {
                eprintln!("icn: dialing {peer} at {addr} failed: {error}");
            }
        }
        // Wait for the connection state to change (established, or closed).
        let limit = if connected {
            Duration::from_secs(3600)
        } else {
            inner.config.handshake_timeout
        };
        let changed = wait_peer_change(&inner, peer);
        let _ = glommio::timer::timeout(limit, async {
            changed.await;
            Ok(())
        })
        .await;
        let established = inner.state.borrow().by_peer.contains_key(&peer);
        if established {
            backoff = inner.config.reconnect_backoff_initial;
        } else {
            glommio::timer::sleep(backoff).await;
            backoff = (backoff * 2).min(inner.config.reconnect_backoff_max);
        }
    }
}

fn wait_peer_change(inner: &Rc<Inner>, peer: NodeId) -> impl Future<Output = ()> + '_ {
    let mut registered = false;
    std::future::poll_fn(move |cx| {
        if registered {
            return Poll::Ready(());
        }
        registered = true;
        inner
            .state
            .borrow_mut()
            .peer_waiters
            .entry(peer)
            .or_default()
            .push(cx.waker().clone());
        Poll::Pending
    })
}

fn dial(inner: &Rc<Inner>, peer: NodeId, addr: SocketAddr) -> Result<(), quiche::Error> {
    let scid = new_cid(inner.config.steering.index as u8);
    let dcid = new_cid(inner.local_id.steering_byte());
    let local = inner.udp.local_addr();
    // The server name carries the node id we mean to reach; the TLS verify callback checks the
    // server's certificate against it.
    let server_name = peer.to_hex();
    let quic = quiche::connect_with_dcid_and_buffer_factory::<IcnBufFactory>(
        Some(&server_name),
        &scid,
        &dcid,
        local,
        addr,
        &mut inner.client_config.borrow_mut(),
    )?;
    let mut state = inner.state.borrow_mut();
    let key = insert_conn(inner, &mut state, quic, scid, Some(peer), 0);
    mark_dirty(&mut state, key);
    drop(state);
    inner.send_wake.notify();
    inner.timer_wake.notify();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_packets_and_bytes_are_published_once() {
        let mut counts = ConnCounts::default();
        assert_eq!(counts.take_unpublished_lost(3), 3);
        assert_eq!(
            counts.take_unpublished_lost(3),
            0,
            "sampled twice, counted once"
        );
        assert_eq!(counts.take_unpublished_lost(5), 2);
        // quiche's count never falls, but a smaller reading must not count again later.
        assert_eq!(counts.take_unpublished_lost(4), 0);
        assert_eq!(counts.take_unpublished_lost(6), 1);
        counts.sent_bytes = 10;
        counts.received_bytes = 7;
        assert_eq!(counts.take_unpublished_bytes(), (10, 7));
        counts.sent_bytes += 5;
        assert_eq!(counts.take_unpublished_bytes(), (5, 0));
        assert_eq!(counts.take_unpublished_bytes(), (0, 0));
    }

    #[test]
    fn rpc_deadlines_pop_in_order_and_stay_bounded() {
        let start = Instant::now();
        let mut deadlines = RpcDeadlines::default();
        let live_max = 4;
        // Ten thousand RPCs that all ended at once: compaction keeps the heap small.
        for id in 0..10_000u64 {
            deadlines.push(start + Duration::from_millis(id), id, |_| false, live_max);
            assert!(deadlines.heap.len() <= 2 * live_max + RPC_DEADLINES_SLACK + 1);
        }
        // Live entries survive compaction, and come out earliest first once due.
        let mut deadlines = RpcDeadlines::default();
        for id in [5u64, 1, 3] {
            deadlines.push(start + Duration::from_millis(id), id, |_| true, live_max);
        }
        assert_eq!(deadlines.next(), Some(start + Duration::from_millis(1)));
        assert_eq!(deadlines.pop_due(start), None);
        let later = start + Duration::from_millis(4);
        assert_eq!(deadlines.pop_due(later), Some(1));
        assert_eq!(deadlines.pop_due(later), Some(3));
        assert_eq!(deadlines.pop_due(later), None);
        assert_eq!(deadlines.next(), Some(start + Duration::from_millis(5)));
    }
}
