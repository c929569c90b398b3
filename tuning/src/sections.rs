//! Every knob of icn, one declaration each: name (ending in its unit), type, allowed range, default
//! constant and value, and a doc line saying what it bounds, its worst-case memory and why this
//! value. `section!` generates the rest (see `knob.rs`).

use std::fmt;

use crate::knob::{Allowed, KnobType, KnobValue};

pub const KIB: usize = 1 << 10;
pub const MIB: usize = 1 << 20;
pub const GIB: usize = 1 << 30;

section! {
    /// Shard executors, the rings between them, and the buffer pool.
    pub struct EngineTuning in "engine" {
        /// Shard executors to start, one thread each; 0 starts one per available core (more
        /// shards than cores only adds context switches). A QUIC node spreads its peers'
        /// connections over them (at most 256); a TCP node runs one.
        shard_count: usize in 0..=1024 = ENGINE_SHARD_COUNT_DEFAULT = 0;
        /// Pin each shard's thread to its own core so its caches and io_uring stay warm; turn off
        /// when the node shares its cores with other services.
        pin_cores: bool = ENGINE_PIN_CORES_DEFAULT = true;
        /// Messages queued in one directed shard-to-shard ring before `try_send` hands the message
        /// back (backpressure, never growth). Worst case: shards² rings × this × ~64-byte commands
        /// (16 shards: 16 MiB); 1024 absorbs one broadcast to every peer of a 40-node subnet from
        /// each shard without pushing back.
        cross_shard_channel_messages_max: usize in 16..=65_536
            = ENGINE_CROSS_SHARD_CHANNEL_MESSAGES_MAX_DEFAULT = 1024;
        /// io_uring memory that glommio registers and locks per executor. Locked memory counts
        /// against RLIMIT_MEMLOCK, often 8 MiB for the whole process: 512 KiB lets 8 executors
        /// start with half the limit left for the rings themselves.
        io_memory_bytes: usize in (64 * KIB)..=(8 * MIB) = ENGINE_IO_MEMORY_BYTES_DEFAULT = 512 * KIB;
        /// Size of one pooled buffer, the unit a payload is written into once and then shared by
        /// reference count. 64 KiB holds one GRO batch or one GSO send; larger payloads chain
        /// buffers or use unpooled storage.
        buffer_bytes: usize in (2 * KIB)..=(16 * MIB) = ENGINE_BUFFER_BYTES_DEFAULT = 64 * KIB;
        /// Buffers in one pool, all allocated at start. Worst case: buffers_max × buffer_bytes
        /// (default 64 MiB per pool, capped at 1 GiB). When all are in use `take()` fails and the
        /// caller backs off instead of allocating.
        buffers_max: usize in 16..=1_048_576 = ENGINE_BUFFERS_MAX_DEFAULT = 1024;
        /// An executor with nothing to run keeps polling its rings this long before it sleeps in
        /// io_uring, so a packet that lands meanwhile is handled without a wake-up (tens of µs
        /// per lone RPC). CPU cost: up to this much busy time per idle gap, so a shard whose
        /// traffic trickles in every few hundred µs burns its whole core; 0 turns it off.
        spin_before_park_us: u64 in 0..=10_000 = ENGINE_SPIN_BEFORE_PARK_US_DEFAULT = 100;
        /// Longest a shard runs tasks before it polls its rings again. I/O completions and
        /// wakes from other threads (the CPU pool's finished jobs) wait at most this long while
        /// the shard is busy, so under an HTTP flood every step of an admitted request can be
        /// delayed by it. 10 ms favoured batching; each poll costs about a microsecond.
        preempt_timer_us: u64 in 100..=100_000 = ENGINE_PREEMPT_TIMER_US_DEFAULT = 10_000;
        /// Every executor wakes at least this often, even with nothing to do: the longest a
        /// runnable task can wait when glommio 0.9 parks with it still queued (a preemption
        /// flag raised just before its run loop looked at the task queues; without the tick a
        /// shard could sleep for ever at start). Each tick wakes an idle shard: measured on the
        /// 2-core VM, 10 ms costs about 0.4% of a core per idle shard above a 1 s tick, 5 ms
        /// about 0.7%. 10 ms matches the default preemption period.
        wake_tick_us: u64 in 500..=1_000_000 = ENGINE_WAKE_TICK_US_DEFAULT = 10_000;
    }
}

section! {
    /// The io_uring UDP sockets under QUIC (one per shard, SO_REUSEPORT).
    pub struct UdpTuning in "udp" {
        /// SO_SNDBUF of each UDP socket (kernel memory; the kernel doubles it for bookkeeping and
        /// caps it at net.core.wmem_max unless set with SO_SNDBUFFORCE as root). 4 MiB holds
        /// about 3 ms of a 10 Gbit/s burst.
        socket_send_buffer_bytes: usize in (64 * KIB)..=(256 * MIB)
            = UDP_SOCKET_SEND_BUFFER_BYTES_DEFAULT = 4 * MIB;
        /// SO_RCVBUF of each UDP socket (kernel memory, capped by net.core.rmem_max unless forced).
        /// 4 MiB lets a shard stall for about 3 ms at 10 Gbit/s without the kernel dropping
        /// datagrams.
        socket_recv_buffer_bytes: usize in (64 * KIB)..=(256 * MIB)
            = UDP_SOCKET_RECV_BUFFER_BYTES_DEFAULT = 4 * MIB;
        /// Send a batch as one GSO super-datagram (UDP_SEGMENT): one syscall and one pass through
        /// the stack per batch. Turn off for kernels or NICs that reject it.
        gso_enabled: bool = UDP_GSO_ENABLED_DEFAULT = true;
        /// Accept datagrams coalesced by the kernel (UDP_GRO), up to 64 KiB per receive. Turn off
        /// for kernels that lack it.
        gro_enabled: bool = UDP_GRO_ENABLED_DEFAULT = true;
        /// Largest UDP payload sent (QUIC's max UDP payload). 1200 is QUIC's minimum, 1472 fills
        /// a 1500-byte Ethernet MTU over IPv4; 1452 fits that MTU over IPv6 too (40-byte header).
        udp_payload_bytes_max: usize in 1200..=1472 = UDP_PAYLOAD_BYTES_MAX_DEFAULT = 1452;
        /// Datagrams handed to the kernel in one send (one GSO send). Bounds the send staging area
        /// per shard: this × udp_payload_bytes_max (32 × 1452 = 46 KiB), which must stay under
        /// the kernel's 64 KiB per GSO send.
        send_batch_datagrams_max: usize in 1..=64 = UDP_SEND_BATCH_DATAGRAMS_MAX_DEFAULT = 32;
        /// Receive slots per recvmmsg. With GRO each slot holds up to 64 KiB, so the worst case
        /// per shard is this × 64 KiB (32 → 2 MiB); 32 drains a busy socket in few calls without
        /// holding the executor long.
        recv_batch_datagrams_max: usize in 1..=256 = UDP_RECV_BATCH_DATAGRAMS_MAX_DEFAULT = 32;
    }
}

/// The congestion controller of QUIC connections (quiche's algorithms).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CongestionControl {
    /// Loss-based, the Linux TCP default: fair to other flows sharing the link.
    Cubic,
    /// Loss-based, the classic; for comparisons.
    Reno,
    /// Model-based (bottleneck bandwidth and RTT): keeps goodput on lossy long-haul links.
    Bbr2,
}

impl CongestionControl {
    /// Every variant, in the order of `NAMES`.
    pub const ALL: [CongestionControl; 3] = [
        CongestionControl::Cubic,
        CongestionControl::Reno,
        CongestionControl::Bbr2,
    ];
    /// The names written in TOML.
    pub const NAMES: &'static [&'static str] = &["cubic", "reno", "bbr2"];

    pub const fn name(self) -> &'static str {
        match self {
            CongestionControl::Cubic => "cubic",
            CongestionControl::Reno => "reno",
            CongestionControl::Bbr2 => "bbr2",
        }
    }
}

impl fmt::Display for CongestionControl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl KnobType for CongestionControl {
    const ALLOWED_BY_TYPE: Allowed = Allowed::OneOf(CongestionControl::NAMES);
    const TYPE_MAX: u64 = 0;
    fn knob_value(self) -> KnobValue {
        KnobValue::Choice(self.name())
    }
}

section! {
    /// The QUIC transport (quiche) between nodes.
    pub struct QuicTuning in "quic" {
        /// Time a new connection has to finish its TLS handshake before it is dropped. Bounds how
        /// long a half-open connection holds one of connections_max; 10 s rides out a few lost
        /// flights on a slow link.
        handshake_timeout_ms: u64 in 100..=120_000 = QUIC_HANDSHAKE_TIMEOUT_MS_DEFAULT = 10_000;
        /// The round-trip time a new connection assumes until it has measured one. It sets the
        /// first probe timeout (about 3× this), so it is how long a lost handshake flight waits
        /// to be resent; each further loss doubles the wait. 333 ms is RFC 9002's default for
        /// an unknown path; within one data centre (the lan profile) far less is right, while a
        /// value below the real RTT plus the peer's handshake work resends flights needlessly.
        initial_rtt_ms: u64 in 1..=2_000 = QUIC_INITIAL_RTT_MS_DEFAULT = 333;
        /// A connection silent this long is closed and its state freed (each side uses the smaller
        /// of both values). With keep-alives only a dead peer goes silent, so this is how fast a
        /// dead peer is noticed: 10 s.
        idle_timeout_ms: u64 in 1_000..=600_000 = QUIC_IDLE_TIMEOUT_MS_DEFAULT = 10_000;
        /// A PING is sent on a connection silent this long, keeping NAT state and the peer's idle
        /// timer alive; must be below idle_timeout_ms. Costs one small packet per interval per
        /// quiet connection.
        keep_alive_interval_ms: u64 in 100..=300_000 = QUIC_KEEP_ALIVE_INTERVAL_MS_DEFAULT = 1_000;
        /// Flow-control credit per stream: bytes a peer may send on one stream before we read
        /// them (worst-case buffering per stream). One stream's goodput is at most window / RTT:
        /// 4 MiB at 1 ms is 32 Gbit/s, at 100 ms 335 Mbit/s (the wan profile raises it).
        stream_window_bytes: usize in (64 * KIB)..=(256 * MIB) = QUIC_STREAM_WINDOW_BYTES_DEFAULT = 4 * MIB;
        /// Flow-control credit for all streams of one connection together: worst-case receive
        /// buffering per connection, connections_max × this per node (128 × 16 MiB = 2 GiB, reached
        /// only if every peer sends at once and nothing is read). Must be at least
        /// stream_window_bytes.
        connection_window_bytes: usize in (64 * KIB)..=GIB
            = QUIC_CONNECTION_WINDOW_BYTES_DEFAULT = 16 * MIB;
        /// Concurrent bidirectional streams a peer may open on one connection (one RPC each).
        /// quiche keeps about 1 KiB per open stream beside its data, about 1 MiB per connection
        /// at 1000; must cover rpc.requests_in_flight_max.
        bidi_streams_max: u64 in 1..=100_000 = QUIC_BIDI_STREAMS_MAX_DEFAULT = 1_000;
        /// QUIC connections one node keeps (peers plus handshakes in progress), split evenly over
        /// its shards; further ones are refused. An IC subnet has at most a few dozen nodes, so
        /// 128 leaves room for churn.
        connections_max: usize in 1..=10_000 = QUIC_CONNECTIONS_MAX_DEFAULT = 128;
        /// First delay before reconnecting to a peer; doubles after each failed attempt.
        reconnect_backoff_initial_ms: u64 in 1..=60_000 = QUIC_RECONNECT_BACKOFF_INITIAL_MS_DEFAULT = 100;
        /// Largest delay between reconnect attempts, so a peer that comes back is found within
        /// this; at least reconnect_backoff_initial_ms.
        reconnect_backoff_max_ms: u64 in 10..=600_000 = QUIC_RECONNECT_BACKOFF_MAX_MS_DEFAULT = 5_000;
        /// Congestion controller of every connection: cubic is fair to other flows on a shared
        /// link; bbr2 keeps goodput on lossy long-haul links; reno is for comparisons.
        congestion_control: CongestionControl
            = QUIC_CONGESTION_CONTROL_DEFAULT = CongestionControl::Cubic;
    }
}

section! {
    /// The TCP + TLS 1.3 transport, for networks where UDP is blocked.
    pub struct TcpTuning in "tcp" {
        /// Time a TCP connect plus TLS handshake may take before the attempt fails and backs off.
        connect_timeout_ms: u64 in 100..=120_000 = TCP_CONNECT_TIMEOUT_MS_DEFAULT = 5_000;
        /// A connection with no frame received for this long is closed; keep-alive frames keep a
        /// healthy one busy, so this is how fast a dead peer is noticed.
        idle_timeout_ms: u64 in 1_000..=600_000 = TCP_IDLE_TIMEOUT_MS_DEFAULT = 10_000;
        /// A keep-alive frame is sent on a connection silent this long; must be below
        /// idle_timeout_ms.
        keep_alive_interval_ms: u64 in 100..=300_000 = TCP_KEEP_ALIVE_INTERVAL_MS_DEFAULT = 1_000;
        /// First delay before reconnecting to a peer; doubles after each failed attempt.
        reconnect_backoff_initial_ms: u64 in 1..=60_000 = TCP_RECONNECT_BACKOFF_INITIAL_MS_DEFAULT = 100;
        /// Largest delay between reconnect attempts; at least reconnect_backoff_initial_ms.
        reconnect_backoff_max_ms: u64 in 10..=600_000 = TCP_RECONNECT_BACKOFF_MAX_MS_DEFAULT = 5_000;
        /// Plaintext encrypted per step when a large body is sent: the most ciphertext buffered
        /// for one connection before it is written to the socket. Worst case: connections × this
        /// (128 × 256 KiB = 32 MiB); larger steps mean fewer syscalls per large message.
        write_buffer_bytes: usize in (4 * KIB)..=(64 * MIB) = TCP_WRITE_BUFFER_BYTES_DEFAULT = 256 * KIB;
        /// Ciphertext read ahead from the socket per connection; at least one TLS record (17 KiB).
        /// Worst case: connections × this (128 × 256 KiB = 32 MiB); 256 KiB drains a busy
        /// socket in few reads.
        read_buffer_bytes: usize in (17 * KIB)..=(64 * MIB) = TCP_READ_BUFFER_BYTES_DEFAULT = 256 * KIB;
        /// Inbound connections still in their TLS handshake; more are closed at accept. Bounds
        /// what unauthenticated peers can hold: this many TLS states and read buffers
        /// (64 × 256 KiB = 16 MiB); a subnet reconnecting at once needs a few dozen.
        handshakes_in_flight_max: usize in 1..=4096 = TCP_HANDSHAKES_IN_FLIGHT_MAX_DEFAULT = 64;
    }
}

section! {
    /// Requests and responses between nodes, over either transport.
    pub struct RpcTuning in "rpc" {
        /// Largest request or response, refused on both sides from its length prefix before it
        /// is buffered. One assembled message holds up to this much; 128 MiB so that a 100 MB
        /// artifact or state chunk fits with room for framing.
        message_bytes_max: usize in KIB..=GIB = RPC_MESSAGE_BYTES_MAX_DEFAULT = 128 * MIB;
        /// Requests sent to one peer and not yet answered; more fail fast with backpressure.
        /// Each holds a stream and a small pending entry; 128 × 1 KiB requests keeps a 1 ms link
        /// at 1 Gbit/s. At most quic.bidi_streams_max.
        requests_in_flight_max: usize in 1..=65_536 = RPC_REQUESTS_IN_FLIGHT_MAX_DEFAULT = 128;
        /// A request unanswered this long fails with a timeout and frees its slot. 30 s moves a
        /// 100 MB message at 30 Mbit/s.
        request_timeout_ms: u64 in 100..=600_000 = RPC_REQUEST_TIMEOUT_MS_DEFAULT = 30_000;
        /// Responses waiting to be written back to one peer; when full, new requests from that
        /// peer are answered busy. The queue holds buffer handles, so its bytes come from the
        /// buffer pool; 1024 covers a full window of requests_in_flight_max from a peer.
        response_queue_max: usize in 1..=65_536 = RPC_RESPONSE_QUEUE_MAX_DEFAULT = 1024;
    }
}

section! {
    /// The registry: which nodes belong to the subnet and their keys.
    pub struct RegistryTuning in "registry" {
        /// How often the node reads the registry for a new version. A node removed from the
        /// subnet stays accepted for up to this long; 5 s keeps that short at negligible cost.
        poll_interval_ms: u64 in 100..=3_600_000 = REGISTRY_POLL_INTERVAL_MS_DEFAULT = 5_000;
    }
}

section! {
    /// Latency histograms (hdrhistogram) behind every latency metric.
    pub struct MetricsTuning in "metrics" {
        /// Precision of latency histograms: 3 digits is 0.1% error. Memory grows about 10× per
        /// digit: with the default latency_max_us one histogram is 136 KiB at 3 digits and 10 MiB
        /// at 5, over the 4 MiB cap (5 digits fit only with latency_max_us up to about 1 s).
        histogram_significant_digits: u8 in 1..=5 = METRICS_HISTOGRAM_SIGNIFICANT_DIGITS_DEFAULT = 3;
        /// Largest latency recorded; longer ones are clamped to it. 60 s covers
        /// rpc.request_timeout_ms.
        latency_max_us: u64 in 1_000..=3_600_000_000 = METRICS_LATENCY_MAX_US_DEFAULT = 60_000_000;
        /// Smallest latency histograms tell apart from zero. 1 µs resolves the fastest loopback
        /// RPCs; a larger value shrinks each histogram (halved per doubling) at coarser low-end
        /// resolution. Must stay below half of latency_max_us.
        histogram_lowest_us: u64 in 1..=100 = METRICS_HISTOGRAM_LOWEST_US_DEFAULT = 1;
        /// Peers with a series of their own in each peer-labelled metric; others are summed into
        /// peer="other". Bounds series per metric (one histogram or 8-byte cell each) when the
        /// registry is large or churns; 64 is more than an IC subnet's 13..40 nodes.
        peer_series_max: usize in 1..=4096 = METRICS_PEER_SERIES_MAX_DEFAULT = 64;
        /// How often a node copies its transport counters into the metrics registry and publishes
        /// them for scraping: the staleness of a scrape. 1 s matches common scrape resolution at
        /// the cost of one snapshot per shard per interval.
        publish_interval_ms: u64 in 100..=60_000 = METRICS_PUBLISH_INTERVAL_MS_DEFAULT = 1_000;
    }
}

section! {
    /// The peer manager: which peers a node keeps connections to, and how it punishes bad ones.
    pub struct PeersTuning in "peers" {
        /// Peers a node keeps connections to; registry members beyond this are left out (the
        /// lowest ids win, so every node picks the same set). Each connection holds transport
        /// state (QUIC: windows up to quic.connection_window_bytes); 64 covers the largest IC
        /// subnets (40 nodes) with room.
        connections_max: usize in 1..=1024 = PEERS_CONNECTIONS_MAX_DEFAULT = 64;
        /// How often the peer manager re-derives the peer set from the registry (it also does on
        /// every new registry version). 5 s bounds how long a removed peer is kept.
        refresh_interval_ms: u64 in 100..=3_600_000 = PEERS_REFRESH_INTERVAL_MS_DEFAULT = 5_000;
        /// Penalty points at which a peer is disconnected and banned for a while. An invalid
        /// artifact costs peers.penalty_invalid_points, a protocol violation
        /// peers.penalty_protocol_points; 100 tolerates a few honest mistakes (a race on a
        /// purged artifact), not a stream of bad data.
        penalty_ban_points: u64 in 1..=1_000_000 = PEERS_PENALTY_BAN_POINTS_DEFAULT = 100;
        /// Points for content that does not match its advert (wrong hash, wrong length).
        penalty_invalid_points: u64 in 1..=1_000_000 = PEERS_PENALTY_INVALID_POINTS_DEFAULT = 25;
        /// Points for a protocol violation (undecodable message, a slot table over its bound).
        penalty_protocol_points: u64 in 1..=1_000_000 = PEERS_PENALTY_PROTOCOL_POINTS_DEFAULT = 10;
        /// Points forgiven per second, so occasional faults never add up to a ban. 1 point/s
        /// forgives one invalid artifact in 25 s.
        penalty_decay_points_per_s: u64 in 0..=1_000_000 = PEERS_PENALTY_DECAY_POINTS_PER_S_DEFAULT = 1;
        /// First ban of a peer; each further ban doubles it up to peers.ban_max_ms. 10 s lets
        /// a peer that restarted with a bug come back soon; a persistent offender backs off.
        ban_initial_ms: u64 in 100..=86_400_000 = PEERS_BAN_INITIAL_MS_DEFAULT = 10_000;
        /// Longest ban. 10 min keeps a malicious peer mostly away while a fixed one returns.
        ban_max_ms: u64 in 100..=86_400_000 = PEERS_BAN_MAX_MS_DEFAULT = 600_000;
    }
}

section! {
    /// The consensus manager: slot tables, adverts and artifact downloads, per artifact kind.
    pub struct GossipTuning in "gossip" {
        /// Artifacts smaller than this are pushed inside their slot update; larger ones are
        /// advertised and fetched by each peer. 1 KiB, as the IC: pushing saves a round trip
        /// where the artifact costs about as much as its advert.
        push_threshold_bytes: usize in 0..=(1 << 20) = GOSSIP_PUSH_THRESHOLD_BYTES_DEFAULT = 1 << 10;
        /// Slots in a node's own slot table per artifact kind: artifacts it offers at once. A
        /// full table refuses new artifacts until the pool purges. Each slot holds an id and
        /// attributes (at most codec id + attributes limits) and a buffer handle.
        slots_max: usize in 16..=1_048_576 = GOSSIP_SLOTS_MAX_DEFAULT = 16_384;
        /// Slots kept per peer per artifact kind on the receiving side; an update for a slot
        /// number at or above this is refused and penalized (an advert flood). Worst case per
        /// peer and kind: this × (id + attributes + ~80 bytes), also capped by
        /// gossip.peer_advert_bytes_max.
        peer_slots_max: usize in 16..=1_048_576 = GOSSIP_PEER_SLOTS_MAX_DEFAULT = 16_384;
        /// Bytes of adverts (ids + attributes) kept per peer per artifact kind; an update that
        /// would exceed it is refused and penalized. 4 MiB × 40 peers × 3 kinds = 480 MiB worst
        /// case, reached only by peers that all misbehave.
        peer_advert_bytes_max: usize in (64 << 10)..=(1 << 30) = GOSSIP_PEER_ADVERT_BYTES_MAX_DEFAULT = 4 << 20;
        /// Slot updates in flight to one peer; more wait in that peer's queue (which holds slot
        /// numbers, at most gossip.slots_max). Updates travel in batches of up to 64 per request,
        /// so 256 is at most 4 requests in flight per peer: a 1 ms link stays busy with small
        /// updates while the in-flight set stays a few KiB.
        updates_in_flight_per_peer_max: usize in 1..=4096 = GOSSIP_UPDATES_IN_FLIGHT_PER_PEER_MAX_DEFAULT = 256;
        /// Fetch requests in flight to one peer (a batch of several artifacts counts as one
        /// request, as on the wire). Small artifacts are latency bound: 32 keeps
        /// a 1 ms link busy with 1 KiB fetches (about 32k/s per peer) while a burst of adverts
        /// still spreads over the peers that advertised them. Stays below
        /// rpc.requests_in_flight_max together with gossip.updates_in_flight_per_peer_max.
        downloads_in_flight_per_peer_max: usize in 1..=4096 = GOSSIP_DOWNLOADS_IN_FLIGHT_PER_PEER_MAX_DEFAULT = 32;
        /// Fetch requests in flight per artifact kind, over all peers (a batch counts once).
        /// Each holds up to gossip.download_chunk_bytes (or a whole artifact below the chunking
        /// threshold; a batch answer holds at most gossip.fetch_batch_bytes_max, no more than a
        /// chunk) of response: 256 × 1 MiB = 256 MiB worst case per kind, reached only when every fetch
        /// is a large chunk (QUIC's connection windows bound what actually arrives at once).
        downloads_in_flight_max: usize in 1..=65_536 = GOSSIP_DOWNLOADS_IN_FLIGHT_MAX_DEFAULT = 256;
        /// Whole artifacts asked for in one fetch request: when several small advertised
        /// artifacts are due from the same peer, the downloader asks for up to this many in one
        /// batch request, which saves a request and a stream per artifact. 1 turns batching off
        /// (one request per artifact). 32 matches the per-peer fetch window, so one batch can
        /// take what 32 single fetches would; at most 128, the protocol's bound on ids per batch.
        fetch_batch_artifacts_max: usize in 1..=128 = GOSSIP_FETCH_BATCH_ARTIFACTS_MAX_DEFAULT = 32;
        /// Artifact bytes one batch answer carries at most: only artifacts up to this size are
        /// batched, and a batch stops growing before their advertised sizes pass it; a server
        /// answers items past its own bound as not held (the receiver fetches them again). A
        /// fetch in flight holds at most max(this, gossip.download_chunk_bytes) of answer. 64 KiB
        /// is 32 artifacts of 2 KiB or one of 64 KiB, so artifacts of 64 KiB and more keep a
        /// stream each.
        fetch_batch_bytes_max: usize in (4 << 10)..=(64 << 20) = GOSSIP_FETCH_BATCH_BYTES_MAX_DEFAULT = 64 << 10;
        /// Artifacts larger than this are fetched in chunks of gossip.download_chunk_bytes, each
        /// from a different advertiser where several exist.
        chunking_threshold_bytes: usize in (64 << 10)..=(1 << 30) = GOSSIP_CHUNKING_THRESHOLD_BYTES_DEFAULT = 2 << 20;
        /// Size of one chunk of a chunked download. 1 MiB amortizes the request while letting a
        /// 4 MiB block come from 4 peers at once.
        download_chunk_bytes: usize in (16 << 10)..=(64 << 20) = GOSSIP_DOWNLOAD_CHUNK_BYTES_DEFAULT = 1 << 20;
        /// Deadline of a first fetch attempt; it doubles with every retry of the same artifact
        /// up to gossip.download_timeout_max_ms, so a slow but honest link still finishes.
        download_timeout_initial_ms: u64 in 10..=600_000 = GOSSIP_DOWNLOAD_TIMEOUT_INITIAL_MS_DEFAULT = 5_000;
        /// Longest fetch deadline: 60 s moves a 100 MB artifact at about 13 Mbit/s.
        download_timeout_max_ms: u64 in 10..=600_000 = GOSSIP_DOWNLOAD_TIMEOUT_MAX_MS_DEFAULT = 60_000;
        /// Wait before retrying a failed fetch or slot update; doubles per failure up to
        /// gossip.retry_backoff_max_ms.
        retry_backoff_initial_ms: u64 in 1..=60_000 = GOSSIP_RETRY_BACKOFF_INITIAL_MS_DEFAULT = 50;
        /// Longest retry wait: 5 s keeps retries to a dead peer cheap while a healed one is
        /// used again soon.
        retry_backoff_max_ms: u64 in 1..=600_000 = GOSSIP_RETRY_BACKOFF_MAX_MS_DEFAULT = 5_000;
        /// Download bandwidth budget per peer, bytes per second; 0 is unlimited. Keeps one fast
        /// peer from being asked for everything while others idle.
        peer_download_bytes_per_s_max: u64 in 0..=1_099_511_627_776 = GOSSIP_PEER_DOWNLOAD_BYTES_PER_S_MAX_DEFAULT = 0;
        /// Download bandwidth budget of the whole node per artifact kind, bytes per second; 0 is
        /// unlimited. Leaves room for state sync and the HTTP API on a shared link.
        download_bytes_per_s_max: u64 in 0..=1_099_511_627_776 = GOSSIP_DOWNLOAD_BYTES_PER_S_MAX_DEFAULT = 0;
        /// Artifact ids the receiver tracks per kind (advertised by any peer and not yet
        /// delivered or dropped); adverts of new ids beyond it are ignored until some leave.
        /// Bounds the advert map at this × (id + attributes + ~120 bytes).
        tracked_artifacts_max: usize in 16..=4_194_304 = GOSSIP_TRACKED_ARTIFACTS_MAX_DEFAULT = 65_536;
        /// Received artifacts queued for the pool per kind; when full, downloads pause (the
        /// adverts stay, so nothing is lost). Each holds a buffer handle.
        inbound_queue_artifacts_max: usize in 1..=1_048_576 = GOSSIP_INBOUND_QUEUE_ARTIFACTS_MAX_DEFAULT = 4_096;
        /// Artifacts handed to the pool in one batch by the artifact manager. Larger batches
        /// amortize the pool's work; 256 keeps one batch under a millisecond.
        inbound_batch_artifacts_max: usize in 1..=65_536 = GOSSIP_INBOUND_BATCH_ARTIFACTS_MAX_DEFAULT = 256;
        /// How often the consensus manager looks for new, closed and replaced connections
        /// (a reconnected peer gets the whole slot table). 100 ms bounds how stale a new peer's
        /// view is after a reconnect.
        peer_poll_interval_ms: u64 in 1..=60_000 = GOSSIP_PEER_POLL_INTERVAL_MS_DEFAULT = 100;
        /// How long an advert the pool answered "maybe later" waits before it is asked again.
        maybe_later_recheck_ms: u64 in 1..=60_000 = GOSSIP_MAYBE_LATER_RECHECK_MS_DEFAULT = 500;
    }
}

section! {
    /// State sync: checkpoints, manifests and parallel chunk downloads.
    pub struct StateSyncTuning in "state_sync" {
        /// Chunk size of the manifests this node builds: files of at least this size are cut
        /// into chunks of it, smaller files grouped up to it. 1 MiB, as the IC: large enough to
        /// amortize a request, small enough to spread one file over many peers. Part of a
        /// state's identity: every node of a subnet must use the same value.
        chunk_bytes: usize in (1 << 10)..=(16 << 20) = STATE_SYNC_CHUNK_BYTES_DEFAULT = 1 << 20;
        /// How often a node tells its peers which states it can serve. 1 s bounds how long a
        /// joining node waits before it learns of a state.
        advert_interval_ms: u64 in 100..=60_000 = STATE_SYNC_ADVERT_INTERVAL_MS_DEFAULT = 1_000;
        /// Adverts remembered per peer (its newest heights). Bounds the advert map keyed by
        /// remote input at this × peers × ~60 bytes.
        peer_adverts_max: usize in 1..=1024 = STATE_SYNC_PEER_ADVERTS_MAX_DEFAULT = 8;
        /// Chunk downloads in flight to one peer. 16 keeps a 1 ms, 10 Gbit/s link busy with
        /// 1 MiB chunks; the IC uses 10.
        chunks_in_flight_per_peer_max: usize in 1..=1024 = STATE_SYNC_CHUNKS_IN_FLIGHT_PER_PEER_MAX_DEFAULT = 16;
        /// Chunk downloads in flight over all peers. Each holds one chunk's buffer until it is
        /// verified and written, so this × state_sync.chunk_bytes (64 MiB by default) is the
        /// sync's peak buffer memory, whatever the state's size.
        chunks_in_flight_max: usize in 1..=4096 = STATE_SYNC_CHUNKS_IN_FLIGHT_MAX_DEFAULT = 64;
        /// Deadline of one chunk or manifest request; a peer that misses it is asked again
        /// later and the chunk goes to another peer. 30 s moves 1 MiB at 280 kbit/s.
        request_timeout_ms: u64 in 10..=600_000 = STATE_SYNC_REQUEST_TIMEOUT_MS_DEFAULT = 30_000;
        /// Wait before a peer that failed a request (timeout, busy, chunk not held yet) is asked
        /// again; doubles per failure up to state_sync.retry_backoff_max_ms.
        retry_backoff_initial_ms: u64 in 1..=60_000 = STATE_SYNC_RETRY_BACKOFF_INITIAL_MS_DEFAULT = 100;
        /// Longest wait before asking a failing peer again.
        retry_backoff_max_ms: u64 in 1..=600_000 = STATE_SYNC_RETRY_BACKOFF_MAX_MS_DEFAULT = 5_000;
        /// Largest encoded manifest piece or meta-manifest accepted from a peer. Pieces are cut
        /// near 128 KiB, so 1 MiB leaves room without letting a peer make us buffer much.
        manifest_piece_bytes_max: usize in (64 << 10)..=(64 << 20) = STATE_SYNC_MANIFEST_PIECE_BYTES_MAX_DEFAULT = 1 << 20;
        /// Files a received manifest may list. 16 M files at ~100 bytes each bound the
        /// manifest held in memory near 1.6 GiB, beyond any real checkpoint.
        manifest_files_max: u32 in 1..=(1 << 30) = STATE_SYNC_MANIFEST_FILES_MAX_DEFAULT = 1 << 24;
        /// Chunks a received manifest may list: 64 M × 1 MiB is 64 TiB of state, at 48 bytes
        /// per entry in memory.
        manifest_chunks_max: u32 in 1..=(1 << 30) = STATE_SYNC_MANIFEST_CHUNKS_MAX_DEFAULT = 1 << 26;
        /// Checkpoints a node keeps (and serves); older ones are deleted. 2 lets a node one
        /// checkpoint behind sync incrementally from either.
        checkpoints_kept_count: usize in 1..=64 = STATE_SYNC_CHECKPOINTS_KEPT_COUNT_DEFAULT = 2;
        /// How often a running sync reports progress (log line or progress bar redraw).
        progress_interval_ms: u64 in 100..=60_000 = STATE_SYNC_PROGRESS_INTERVAL_MS_DEFAULT = 1_000;
    }
}

section! {
    /// The public HTTP API (IC interface specification): listeners, admission per endpoint
    /// class, timeouts and the signature-verification pool.
    pub struct HttpTuning in "http" {
        /// Open API connections per shard; one more is closed at accept. Each holds at most one
        /// request head, per admitted request one body (http.body_bytes_max), and up to 16 KiB
        /// of HTTP/1.1 answers to pipelined requests waiting to go out together; this also
        /// bounds the per-IP map. 4096 is far above what one core serves well.
        connections_max: usize in 1..=1_000_000 = HTTP_CONNECTIONS_MAX_DEFAULT = 4096;
        /// Open connections from one IP address per shard; one more is closed at accept, so a
        /// single client cannot take every slot. 64 leaves room for NATed clients.
        connections_per_ip_max: usize in 1..=1_000_000 = HTTP_CONNECTIONS_PER_IP_MAX_DEFAULT = 64;
        /// Time for a request head to arrive once its first byte has, so a client trickling
        /// header bytes (slowloris) holds its connection at most this long.
        header_read_timeout_ms: u64 in 10..=600_000 = HTTP_HEADER_READ_TIMEOUT_MS_DEFAULT = 5_000;
        /// A connection with no request in progress and no bytes moving is closed after this.
        /// Must exceed http.backend_timeout_ms so a waiting answer is never cut.
        idle_timeout_ms: u64 in 10..=3_600_000 = HTTP_IDLE_TIMEOUT_MS_DEFAULT = 30_000;
        /// After the last answer, unread request bytes (a refused body) are drained before the
        /// close so the kernel does not reset the connection and destroy the answer in
        /// flight; at most this long ...
        linger_timeout_ms: u64 in 0..=60_000 = HTTP_LINGER_TIMEOUT_MS_DEFAULT = 1_000;
        /// ... and at most this many bytes (then the connection is reset anyway).
        linger_drain_bytes_max: usize in 0..=(64 * MIB) = HTTP_LINGER_DRAIN_BYTES_MAX_DEFAULT = 4 * MIB;
        /// Time for a whole request body to arrive once the request is admitted; later -> 408.
        body_read_timeout_ms: u64 in 10..=600_000 = HTTP_BODY_READ_TIMEOUT_MS_DEFAULT = 10_000;
        /// Time the backend (the replica) has to answer an admitted request; later -> 504.
        backend_timeout_ms: u64 in 10..=600_000 = HTTP_BACKEND_TIMEOUT_MS_DEFAULT = 10_000;
        /// Largest request body; a larger Content-Length (or a chunked body growing past it)
        /// gets 413 before it is buffered. 4 MiB holds the IC's 2 MiB argument plus envelope.
        body_bytes_max: usize in 1..=(64 * MIB) = HTTP_BODY_BYTES_MAX_DEFAULT = 4 * MIB;
        /// Largest request head (HTTP/1.1 read buffer, HTTP/2 header list). hyper's minimum
        /// read buffer is 8 KiB; 16 KiB fits any agent's headers.
        request_head_bytes_max: usize in (8 * KIB)..=MIB = HTTP_REQUEST_HEAD_BYTES_MAX_DEFAULT = 16 * KIB;
        /// HTTP/2 streams one connection may have open; each is one request that counts against
        /// its class's limits like an HTTP/1.1 request.
        h2_streams_per_connection_max: u32 in 1..=10_000 = HTTP_H2_STREAMS_PER_CONNECTION_MAX_DEFAULT = 100;
        /// How long an admitted-to-queue request may wait for a slot of its class before it
        /// is answered 429 after all; keeps queued latency bounded under overload.
        queue_wait_timeout_ms: u64 in 1..=60_000 = HTTP_QUEUE_WAIT_TIMEOUT_MS_DEFAULT = 1_000;
        /// Target for the queueing of an admitted query or read_state request: the time its
        /// jobs wait behind other jobs for the verification pool. When even the least-queued
        /// request of an interval waited longer, the class's limit halves and the excess is
        /// refused (429) at once; these classes then keep no wait queue. 5 ms is tens of times
        /// a query's own work (about 150 µs of CPU). 0 turns the control off (fixed limits and
        /// queues only).
        delay_target_ms: u64 in 0..=10_000 = HTTP_DELAY_TARGET_MS_DEFAULT = 5;
        /// How often the delay control reconsiders a class's limit (halving it, or growing it
        /// by an eighth when it was reached without queueing): CoDel's 100 ms, many requests
        /// per interval under load yet quick to react to a flood.
        delay_interval_ms: u64 in 1..=60_000 = HTTP_DELAY_INTERVAL_MS_DEFAULT = 100;
        /// Update calls processed at once per shard (body read, verification, backend). Each
        /// holds up to http.body_bytes_max of body: see the "HTTP body buffers" cap. Calls are
        /// few and expensive downstream (gossip, consensus), so fewer slots than queries.
        call_concurrency_max: usize in 1..=100_000 = HTTP_CALL_CONCURRENCY_MAX_DEFAULT = 64;
        /// Update calls waiting for a slot per shard; one more gets 429 before its body is read.
        /// Waiting requests hold no body.
        call_queue_max: usize in 0..=100_000 = HTTP_CALL_QUEUE_MAX_DEFAULT = 256;
        /// Queries processed at once per shard; queries are the bulk of API traffic.
        query_concurrency_max: usize in 1..=100_000 = HTTP_QUERY_CONCURRENCY_MAX_DEFAULT = 256;
        /// Queries waiting for a slot per shard; one more gets 429 before its body is read.
        query_queue_max: usize in 0..=100_000 = HTTP_QUERY_QUEUE_MAX_DEFAULT = 1024;
        /// read_state requests processed at once per shard.
        read_state_concurrency_max: usize in 1..=100_000 = HTTP_READ_STATE_CONCURRENCY_MAX_DEFAULT = 128;
        /// read_state requests waiting for a slot per shard (agents poll it while waiting for a
        /// call); one more gets 429.
        read_state_queue_max: usize in 0..=100_000 = HTTP_READ_STATE_QUEUE_MAX_DEFAULT = 512;
        /// Status requests answered at once per shard (cheap, no body).
        status_concurrency_max: usize in 1..=100_000 = HTTP_STATUS_CONCURRENCY_MAX_DEFAULT = 64;
        /// Status requests waiting for a slot per shard.
        status_queue_max: usize in 0..=100_000 = HTTP_STATUS_QUEUE_MAX_DEFAULT = 256;
        /// Threads verifying request signatures off the executors (node-wide); 0 uses one per
        /// available core. Ed25519 verification costs ~50 µs, so one thread does ~20k/s.
        verify_threads_count: usize in 0..=256 = HTTP_VERIFY_THREADS_COUNT_DEFAULT = 0;
        /// Verification jobs waiting for a thread (node-wide); one more gets 429. Each holds
        /// one decoded request (up to http.body_bytes_max).
        verify_queue_max: usize in 1..=1_000_000 = HTTP_VERIFY_QUEUE_MAX_DEFAULT = 1024;
        /// Queries and read_state requests whose Ed25519 signatures a pool thread verifies in
        /// one batch (per shard; 1 verifies each on its own). Batches form only while requests
        /// wait for a thread, so an idle node adds no delay; a failed batch re-verifies its
        /// requests one by one, and batching pauses for 100 ms.
        verify_batch_max: usize in 1..=1024 = HTTP_VERIFY_BATCH_MAX_DEFAULT = 32;
        /// The latest ingress_expiry accepted, ahead of this node's clock: the interface's
        /// 5 minutes.
        ingress_expiry_window_ms: u64 in 1_000..=3_600_000 = HTTP_INGRESS_EXPIRY_WINDOW_MS_DEFAULT = 300_000;
        /// Clock skew allowed on top of http.ingress_expiry_window_ms between an agent and
        /// this node (the IC allows 60 s).
        ingress_expiry_drift_ms: u64 in 0..=600_000 = HTTP_INGRESS_EXPIRY_DRIFT_MS_DEFAULT = 60_000;
    }
}

impl HttpTuning {
    /// Worst-case request-body bytes buffered at once on one shard: every body-carrying slot
    /// holding a maximal body (queued requests hold none).
    pub fn body_buffers_bytes(&self) -> u64 {
        let slots = self
            .call_concurrency_max
            .saturating_add(self.query_concurrency_max)
            .saturating_add(self.read_state_concurrency_max);
        (slots as u64).saturating_mul(self.body_bytes_max as u64)
    }
}

section! {
    /// The reference replica's built-in canisters (a counter and a key-value store). Every value
    /// here decides whether a call succeeds, so it is part of the replicated state machine: every
    /// node of a subnet must use the same values or their states diverge.
    pub struct CanistersTuning in "canisters" {
        /// Longest key the key-value store accepts, in bytes of UTF-8; a longer key in a put is
        /// rejected. 1 KiB is far above any sensible key and keeps listing pages small.
        kv_key_bytes_max: usize in 1..=(64 * KIB) = CANISTERS_KV_KEY_BYTES_MAX_DEFAULT = KIB;
        /// Largest value the key-value store accepts; a larger one in a put is rejected. 64 KiB
        /// fits comfortably in one ingress message (the IC allows 2 MiB) while a full store stays
        /// small enough to checkpoint every few heights.
        kv_value_bytes_max: usize in 1..=(2 * MIB) = CANISTERS_KV_VALUE_BYTES_MAX_DEFAULT = 64 * KIB;
        /// Keys the key-value store holds; a put of a new key beyond it is rejected (overwriting
        /// an existing key still works). Bounds the map's bookkeeping at about 100 bytes per key
        /// beside the data itself (10 MiB at 100k keys).
        kv_keys_max: usize in 1..=10_000_000 = CANISTERS_KV_KEYS_MAX_DEFAULT = 100_000;
        /// Bytes of keys plus values the key-value store holds; a put that would exceed it is
        /// rejected. This, not keys × largest value, is the store's memory and the size of its
        /// state file: 64 MiB checkpoints in well under a second.
        kv_store_bytes_max: usize in KIB..=GIB = CANISTERS_KV_STORE_BYTES_MAX_DEFAULT = 64 * MIB;
        /// Most keys one `list` call returns, whatever the caller asks for: bounds the work and
        /// the reply of a single query (1000 keys × 1 KiB = 1 MiB at worst).
        kv_list_keys_max: u32 in 1..=100_000 = CANISTERS_KV_LIST_KEYS_MAX_DEFAULT = 1_000;
        /// Work Candid may spend decoding one call's arguments, in its cost units (about one per
        /// byte of text or blob, more per vector element and type-table byte); past it the call
        /// fails as a trap. Must cover the largest put (key + value + header), so at least
        /// kv_value_bytes_max; 256 KiB leaves room over the defaults while a hostile argument
        /// cannot make a canister allocate or loop for long.
        candid_decoding_cost_max: usize in KIB..=(64 * MIB) = CANISTERS_CANDID_DECODING_COST_MAX_DEFAULT = 256 * KIB;
        /// Work Candid may spend skipping argument data no method asks for (extra arguments,
        /// unknown record fields). 10 000, as Candid recommends for canister endpoints: honest
        /// agents send nothing to skip.
        candid_skipping_cost_max: usize in 0..=(64 * MIB) = CANISTERS_CANDID_SKIPPING_COST_MAX_DEFAULT = 10_000;
    }
}

impl EngineTuning {
    /// Shards to start: `shard_count`, or one per available core when it is 0.
    pub fn shard_count_effective(&self) -> usize {
        if self.shard_count != 0 {
            return self.shard_count;
        }
        std::thread::available_parallelism()
            .map(usize::from)
            .unwrap_or(1)
    }

    /// Worst-case bytes of one buffer pool.
    pub fn buffer_pool_bytes(&self) -> u64 {
        (self.buffers_max as u64).saturating_mul(self.buffer_bytes as u64)
    }
}

impl UdpTuning {
    /// Bytes of one full send batch (one GSO send).
    pub fn send_batch_bytes(&self) -> u64 {
        (self.send_batch_datagrams_max as u64).saturating_mul(self.udp_payload_bytes_max as u64)
    }
}

impl MetricsTuning {
    /// Bytes of one hdrhistogram with these settings (u64 counts), computed the way hdrhistogram
    /// sizes its counts array.
    pub fn histogram_bytes(&self) -> u64 {
        // Saturating throughout: validation calls this on values not yet range-checked.
        let digits = u32::from(self.histogram_significant_digits);
        let single_unit_values = 10u64
            .checked_pow(digits)
            .map_or(u64::MAX, |v| v.saturating_mul(2));
        let sub_bucket_count = single_unit_values
            .checked_next_power_of_two()
            .unwrap_or(1 << 63);
        let mut buckets: u64 = 1;
        // hdrhistogram scales the first bucket by the largest power of two not above the lowest
        // discernible value (its "unit magnitude").
        let unit_magnitude = self.histogram_lowest_us.max(1).ilog2();
        let mut untrackable = sub_bucket_count.saturating_mul(1 << unit_magnitude);
        while untrackable <= self.latency_max_us && untrackable < (1 << 62) {
            untrackable *= 2;
            buckets += 1;
        }
        (buckets + 1)
            .saturating_mul(sub_bucket_count / 2)
            .saturating_mul(8)
    }
}

section! {
    /// The reference replica behind the public HTTP API: block pacing and maker rotation, how
    /// much ingress it holds, and how long a synchronous call waits for its certificate. The
    /// pacing and block bounds decide what the subnet executes, so every node of a subnet must
    /// use the same values.
    pub struct ReplicaTuning in "replica" {
        /// Pause between a block executing and its successor being made: the subnet's pace. Each
        /// height also refreshes the certified `/time`, so it bounds how stale a certificate is.
        block_interval_ms: u64 in 10..=60_000 = REPLICA_BLOCK_INTERVAL_MS_DEFAULT = 250;
        /// A height whose maker has made no block this long after its parent executed passes to
        /// the next maker (one more per elapsed timeout), so a stopped node does not stop the
        /// subnet. Well above a block's delivery time, or makers race.
        round_timeout_ms: u64 in 100..=600_000 = REPLICA_ROUND_TIMEOUT_MS_DEFAULT = 2_000;
        /// Ingress messages one block orders at most; a block with more is refused. 1000 ids are
        /// 32 KiB of block.
        block_ingress_max: usize in 1..=20_000 = REPLICA_BLOCK_INGRESS_MAX_DEFAULT = 1_000;
        /// Ingress messages the pool holds (received over HTTP or gossiped) until they expire
        /// or replica.heights_ahead_max heights after the one that executed them (peers still
        /// behind may fetch them); when full, calls get 429 and gossiped ingress waits.
        ingress_pool_messages_max: usize in 1..=1_000_000 = REPLICA_INGRESS_POOL_MESSAGES_MAX_DEFAULT = 10_000;
        /// Bytes of ingress envelopes the pool holds; when full, as above.
        ingress_pool_bytes_max: usize in MIB..=(4 * GIB) = REPLICA_INGRESS_POOL_BYTES_MAX_DEFAULT = 64 * MIB;
        /// Gossiped ingress messages being verified (signatures, expiry) on the verification
        /// pool at once; more wait in the consensus manager's inbound queue.
        ingress_verify_in_flight_max: usize in 1..=65_536 = REPLICA_INGRESS_VERIFY_IN_FLIGHT_MAX_DEFAULT = 256;
        /// Request statuses the certified state keeps (each until its ingress expiry passes);
        /// when full, blocks order no new ingress until some expire. Every height's tree is
        /// rehashed in full off the shard, about 1 µs per status.
        request_statuses_max: usize in 1..=1_000_000 = REPLICA_REQUEST_STATUSES_MAX_DEFAULT = 20_000;
        /// How long a synchronous call (v3, v4) waits for its certified outcome before it is
        /// answered 202 and the agent polls read_state instead.
        sync_call_wait_ms: u64 in 0..=600_000 = REPLICA_SYNC_CALL_WAIT_MS_DEFAULT = 5_000;
        /// Blocks and shares are accepted up to this many heights above the executed one;
        /// further ones are refused, so a peer cannot fill the pools with far-future heights.
        heights_ahead_max: u64 in 1..=1_000 = REPLICA_HEIGHTS_AHEAD_MAX_DEFAULT = 8;
        /// Executed heights whose blocks, shares and ingress stay in the pools for peers that
        /// lag behind; older ones are purged.
        heights_kept_count: u64 in 1..=10_000 = REPLICA_HEIGHTS_KEPT_COUNT_DEFAULT = 32;
        /// Heights between two checkpoints of the replica's state (canisters, request statuses,
        /// chain tip), which state sync serves to nodes too far behind to replay blocks. Below
        /// heights_kept_count, so a node that synced a checkpoint finds the blocks after it.
        checkpoint_interval_count: u64 in 1..=10_000 = REPLICA_CHECKPOINT_INTERVAL_COUNT_DEFAULT = 10;
        /// Largest gap between a block's time and this node's clock for the node to vouch for
        /// it (the maker's clock is the state's time, which agents check against theirs).
        block_time_skew_ms: u64 in 100..=3_600_000 = REPLICA_BLOCK_TIME_SKEW_MS_DEFAULT = 30_000;
        /// Request ids one ingress fetch asks a peer for, and the most a node answers in one
        /// request: a notarized block naming calls this node lacks is completed in
        /// block_ingress_max / this many requests at most.
        ingress_fetch_ids_max: usize in 1..=20_000 = REPLICA_INGRESS_FETCH_IDS_MAX_DEFAULT = 256;
        /// Largest ingress fetch answer; a node answering stops adding envelopes before it.
        /// Twice the front's largest call body, so any call a node accepted fits in one answer.
        ingress_fetch_response_bytes_max: usize in MIB..=GIB = REPLICA_INGRESS_FETCH_RESPONSE_BYTES_MAX_DEFAULT = 8 * MIB;
        /// Ingress fetch requests a node has outstanding at once (each to one peer, for up to
        /// replica.ingress_fetch_ids_max ids); missing ids beyond them wait their turn.
        ingress_fetch_in_flight_max: usize in 1..=1_024 = REPLICA_INGRESS_FETCH_IN_FLIGHT_MAX_DEFAULT = 4;
        /// Missing request ids tracked for fetching (from notarized blocks of the next height,
        /// a few blocks at most); ids beyond it are dropped and reported again by the next step.
        ingress_fetch_tracked_max: usize in 1..=1_000_000 = REPLICA_INGRESS_FETCH_TRACKED_MAX_DEFAULT = 4_096;
        /// How long an ingress fetch waits for its answer before the ids are asked of another
        /// peer.
        ingress_fetch_timeout_ms: u64 in 10..=60_000 = REPLICA_INGRESS_FETCH_TIMEOUT_MS_DEFAULT = 1_000;
        /// Wait before an id whose fetch failed (timeout, error, wrong or missing envelope) is
        /// asked of the next peer; doubles per failure of that id up to
        /// replica.ingress_fetch_backoff_max_ms.
        ingress_fetch_backoff_initial_ms: u64 in 1..=60_000 = REPLICA_INGRESS_FETCH_BACKOFF_INITIAL_MS_DEFAULT = 50;
        /// Cap on the ingress fetch backoff.
        ingress_fetch_backoff_max_ms: u64 in 1..=600_000 = REPLICA_INGRESS_FETCH_BACKOFF_MAX_MS_DEFAULT = 2_000;
    }
}
