//! The memory transport: every node of a simulated subnet in one process, on one [`Sim`].
//!
//! A [`MemoryNetwork`] (one per simulation) connects the [`MemoryTransport`]s of its nodes (one per
//! node, from [`MemoryNetwork::join`]). Payloads travel as [`Buf`] handles, never copied. Every
//! random decision (loss, delay) is drawn from the simulation's PRNG, in a fixed order (loss, then
//! delay, for every message sent), so a run replays exactly from its seed.
//!
//! The fault model, and the decisions it makes:
//! - Connections: every pair of live, unpartitioned nodes is connected (a subnet's full mesh). A
//!   connection has one [`ConnId`] drawn from a network-wide counter, so ids increase strictly per
//!   transport instance and a reconnect always gets a larger one.
//! - Loss: each message (request or response) is dropped with the link's `loss_probability`. No
//!   retransmission is modelled: the RPC whose request or response was lost fails with
//!   [`RpcError::Timeout`] after `rpc_timeout`, which is what a caller of a real transport sees
//!   when the peer never answers.
//! - Delay: each message is delivered after an independent random delay (uniform, or exponential
//!   with a floor and a cap), so messages reorder naturally. Priority does not change delivery
//!   (there is no bandwidth model).
//! - Partition: traffic across is dropped at send time (messages already on the wire arrive). A
//!   partition is silent, so the connections across close only after `idle_timeout`, as a real
//!   idle timeout would; healing first keeps them (same ids), healing later reconnects with new ids.
//! - Crash: a crashed node's connections close at once (its kernel resets them), its in-flight RPCs
//!   and its peers' RPCs to it fail with [`RpcError::ConnectionClosed`], and the handlers it was
//!   running are dropped. Its old [`MemoryTransport`] stays dead after a restart; [`MemoryNetwork::
//!   restart`] returns a new one, connected with new ids on every link.
//! - Refusal (a ban): [`MemoryNetwork::block`]`(by, peer)` models `by`'s peer manager closing its
//!   connection to `peer` and refusing it from then on: the pair's connection closes at once (as
//!   for a crash, RPCs on it fail with [`RpcError::ConnectionClosed`]) and the pair stays
//!   unconnected through heals and restarts until every node that refused the other unblocks it
//!   ([`MemoryNetwork::unblock`]); it then reconnects with a new id. Refusals are directed, as a
//!   real node refuses handshakes on its own: a pair connects only if neither end refuses.
//! - Cancellation: dropping an RPC future drops the exchange at once: a request not yet delivered
//!   is discarded on arrival and a running handler is dropped (QUIC's RESET_STREAM, without its
//!   flight time).
//! - Limits: `message_bytes_max` refuses a large request at the caller and a large response at the
//!   server (the caller receives [`RpcError::MessageTooLarge`]); `requests_in_flight_max` bounds the
//!   RPCs one node has outstanding on one connection ([`RpcError::TooManyInFlight`]).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use crate::buffer::Buf;
use crate::sim::{JoinHandle, Sim, SimHandle, SimRng};

use super::{ConnId, NodeId, Priority, RequestContext, Route, Router, RpcError, Transport};

/// Limits and timeouts of a memory network (the same for every node). The defaults are those of
/// the real transports (icn-tuning's `rpc.message_bytes_max`, `rpc.requests_in_flight_max`,
/// `rpc.request_timeout_ms`, `quic.idle_timeout_ms`), so that a simulated subnet refuses and times
/// out what a real one would; simulations usually shorten the timeouts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryConfig {
    /// Largest request or response payload, in bytes; a larger one fails with
    /// [`RpcError::MessageTooLarge`]. Payloads are shared, not copied, so this bounds what one
    /// handler may be handed, not the network's memory.
    pub message_bytes_max: u64,
    /// RPCs one node may have outstanding on one connection; one more fails with
    /// [`RpcError::TooManyInFlight`]. Bounds the exchange table at
    /// `nodes * (nodes - 1) * requests_in_flight_max` entries (about 100 bytes each plus payloads).
    pub requests_in_flight_max: usize,
    /// How long a caller waits for a response before [`RpcError::Timeout`].
    pub rpc_timeout: Duration,
    /// How long a connection survives without traffic getting through (a partition) before both
    /// sides close it.
    pub idle_timeout: Duration,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            message_bytes_max: 128 << 20,
            requests_in_flight_max: 128,
            rpc_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(10),
        }
    }
}

/// How long a message takes from send to delivery.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Delay {
    /// Uniform in `[min, max]` (nanosecond resolution).
    Uniform { min: Duration, max: Duration },
    /// `min` plus an exponential with mean `mean - min`, capped at `max`: mostly fast, a long tail.
    Exponential {
        min: Duration,
        mean: Duration,
        max: Duration,
    },
}

impl Delay {
    pub fn fixed(delay: Duration) -> Delay {
        Delay::Uniform {
            min: delay,
            max: delay,
        }
    }

    fn assert_valid(&self) {
        match *self {
            Delay::Uniform { min, max } => assert!(min <= max, "delay min above max"),
            Delay::Exponential { min, mean, max } => {
                assert!(min <= mean && mean <= max, "delay needs min <= mean <= max")
            }
        }
    }

    fn sample(&self, rng: &mut SimRng) -> Duration {
        match *self {
            Delay::Uniform { min, max } => {
                Duration::from_nanos(rng.range_inclusive(nanos(min), nanos(max)))
            }
            Delay::Exponential { min, mean, max } => {
                // Inverse transform; 1 - u is in (0, 1], so the logarithm is finite.
                let extra = -(1.0 - rng.next_f64()).ln() * (nanos(mean) - nanos(min)) as f64;
                let total = nanos(min).saturating_add(extra as u64);
                Duration::from_nanos(total.min(nanos(max)))
            }
        }
    }
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// Faults injected on a directed link (or on every link, as the network's default).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinkFaults {
    /// Probability in [0, 1] that one message is dropped.
    pub loss_probability: f64,
    pub delay: Delay,
}

impl LinkFaults {
    /// A perfect link: nothing lost, delivered at the same virtual instant.
    pub fn none() -> LinkFaults {
        LinkFaults {
            loss_probability: 0.0,
            delay: Delay::fixed(Duration::ZERO),
        }
    }

    fn assert_valid(&self) {
        assert!(
            (0.0..=1.0).contains(&self.loss_probability),
            "loss probability outside [0, 1]"
        );
        self.delay.assert_valid();
    }
}

impl Default for LinkFaults {
    fn default() -> Self {
        LinkFaults::none()
    }
}

/// What happened to one node's traffic. Every message a node sends ends up in exactly one of
/// delivered / dropped_loss / dropped_partition / dropped_closed, or is still on the wire.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeCounters {
    /// Messages (requests and responses) this node sent.
    pub messages_sent: u64,
    /// Messages this node sent that reached their destination.
    pub messages_delivered: u64,
    /// Messages this node sent that the loss model dropped.
    pub messages_dropped_loss: u64,
    /// Messages this node sent across a partition.
    pub messages_dropped_partition: u64,
    /// Messages this node sent whose connection closed (crash, idle timeout) before arrival.
    pub messages_dropped_closed: u64,
    /// Messages delivered to this node.
    pub messages_received: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// RPCs refused at the caller before anything was sent (size, in-flight limit, no connection).
    pub rpcs_refused: u64,
    pub connections_opened: u64,
    pub connections_closed: u64,
}

impl NodeCounters {
    pub fn messages_dropped(&self) -> u64 {
        self.messages_dropped_loss + self.messages_dropped_partition + self.messages_dropped_closed
    }

    /// Messages sent and neither delivered nor dropped yet.
    pub fn messages_in_flight(&self) -> u64 {
        self.messages_sent - self.messages_delivered - self.messages_dropped()
    }

    fn add(&mut self, other: &NodeCounters) {
        self.messages_sent += other.messages_sent;
        self.messages_delivered += other.messages_delivered;
        self.messages_dropped_loss += other.messages_dropped_loss;
        self.messages_dropped_partition += other.messages_dropped_partition;
        self.messages_dropped_closed += other.messages_dropped_closed;
        self.messages_received += other.messages_received;
        self.bytes_sent += other.bytes_sent;
        self.bytes_received += other.bytes_received;
        self.rpcs_refused += other.rpcs_refused;
        self.connections_opened += other.connections_opened;
        self.connections_closed += other.connections_closed;
    }
}

/// Index of a node in join order (stable for the network's life; restarts keep it).
type NodeIndex = usize;

/// An unordered node pair, smaller index first.
type Pair = (NodeIndex, NodeIndex);

fn pair(a: NodeIndex, b: NodeIndex) -> Pair {
    (a.min(b), a.max(b))
}

struct NodeSlot {
    id: NodeId,
    router: Rc<Router>,
    /// Bumped by every crash, so that a transport from before the crash stays dead.
    generation: u64,
    up: bool,
    counters: NodeCounters,
}

struct Connection {
    id: ConnId,
    /// Since when a partition has blocked this connection; it closes `idle_timeout` later.
    blocked_since: Option<Duration>,
}

/// One RPC in flight: created by the caller, removed when its future completes or drops.
struct Exchange {
    from: NodeIndex,
    conn: ConnId,
    result: Option<Result<Buf, RpcError>>,
    waiter: Option<Waker>,
    /// The task running the handler on the server, dropped if the exchange ends first.
    server_task: Option<JoinHandle<()>>,
}

enum Payload {
    Request {
        route: Route,
        priority: Priority,
        body: Buf,
    },
    Response(Result<Buf, RpcError>),
}

impl Payload {
    fn len_bytes(&self) -> u64 {
        match self {
            Payload::Request { body, .. } | Payload::Response(Ok(body)) => body.len() as u64,
            Payload::Response(Err(_)) => 0,
        }
    }
}

struct Envelope {
    exchange: u64,
    from: NodeIndex,
    to: NodeIndex,
    conn: ConnId,
    payload: Payload,
}

struct NetworkState {
    config: MemoryConfig,
    nodes: Vec<NodeSlot>,
    index_of: BTreeMap<NodeId, NodeIndex>,
    connections: BTreeMap<Pair, Connection>,
    /// Pairs that a partition separates.
    blocked: BTreeSet<Pair>,
    /// Directed refusals (by, peer) from [`MemoryNetwork::block`]; at most nodes² entries, set
    /// only by the test or the simulated nodes' peer managers (never by remote input).
    refused: BTreeSet<(NodeIndex, NodeIndex)>,
    default_faults: LinkFaults,
    /// Per directed link (from, to); overrides `default_faults`.
    link_faults: BTreeMap<(NodeIndex, NodeIndex), LinkFaults>,
    /// Bounded by `requests_in_flight_max` per node and connection (checked before insertion).
    exchanges: BTreeMap<u64, Exchange>,
    /// Outstanding RPCs per (connection, calling node).
    in_flight: BTreeMap<(ConnId, NodeIndex), usize>,
    next_conn_id: u64,
    next_exchange_id: u64,
    trace: TraceHash,
    /// Events kept for diffing two runs that should have been equal. Bounded by
    /// `trace_log_events_max` (64 bytes an event); 0, the default, keeps none.
    trace_log: Vec<TraceEvent>,
    trace_log_events_max: usize,
}

/// A running hash of every network event (deliveries, drops, connections) with its virtual time.
/// Two runs from one seed must end with the same value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct TraceHash {
    value: u64,
    events: u64,
}

impl TraceHash {
    fn record(&mut self, words: &[u64]) {
        for &word in words {
            // FNV-1a over 64-bit words, then a final avalanche per event (splitmix64's finalizer).
            self.value = (self.value ^ word).wrapping_mul(0x0000_0100_0000_01b3);
        }
        let mut z = self.value;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        self.value = z ^ (z >> 31);
        self.events += 1;
    }
}

/// What happened in one network event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TraceKind {
    Delivered,
    DroppedLoss,
    DroppedPartition,
    DroppedClosed,
    Connected,
    Disconnected,
}

/// One network event, as recorded by the trace log (see [`MemoryNetwork::enable_trace_log`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceEvent {
    pub at: Duration,
    pub kind: TraceKind,
    /// Sender of a message, or the lower-indexed end of a connection.
    pub from: NodeId,
    pub to: NodeId,
    /// The RPC's exchange id for a message, the connection id for a connection event.
    pub id: u64,
    /// Whether the message was a response (false for requests and connection events).
    pub response: bool,
    pub bytes: u64,
}

/// The simulated network of one simulation. Cheap to clone (a shared handle).
#[derive(Clone)]
pub struct MemoryNetwork {
    sim: SimHandle,
    state: Rc<RefCell<NetworkState>>,
}

/// One node's endpoint on a [`MemoryNetwork`]. Dead after its node crashes.
#[derive(Clone)]
pub struct MemoryTransport {
    network: MemoryNetwork,
    node: NodeIndex,
    id: NodeId,
    generation: u64,
}

impl MemoryNetwork {
    pub fn new(sim: &Sim, config: MemoryConfig) -> Self {
        MemoryNetwork::with_handle(sim.handle(), config)
    }

    pub fn with_handle(sim: SimHandle, config: MemoryConfig) -> Self {
        assert!(
            config.requests_in_flight_max > 0,
            "requests_in_flight_max must be positive"
        );
        let state = NetworkState {
            config,
            nodes: Vec::new(),
            index_of: BTreeMap::new(),
            connections: BTreeMap::new(),
            blocked: BTreeSet::new(),
            refused: BTreeSet::new(),
            default_faults: LinkFaults::none(),
            link_faults: BTreeMap::new(),
            exchanges: BTreeMap::new(),
            in_flight: BTreeMap::new(),
            next_conn_id: 1,
            next_exchange_id: 0,
            trace: TraceHash {
                value: 0xcbf2_9ce4_8422_2325,
                events: 0,
            },
            trace_log: Vec::new(),
            trace_log_events_max: 0,
        };
        MemoryNetwork {
            sim,
            state: Rc::new(RefCell::new(state)),
        }
    }

    pub fn config(&self) -> MemoryConfig {
        self.state.borrow().config
    }

    pub fn sim(&self) -> &SimHandle {
        &self.sim
    }

    /// Adds a node serving `router` and connects it to every live node it can reach. Panics if
    /// `node` already joined (use [`MemoryNetwork::restart`] after a crash).
    pub fn join(&self, node: NodeId, router: Router) -> MemoryTransport {
        let mut state = self.state.borrow_mut();
        assert!(
            !state.index_of.contains_key(&node),
            "node {node} joined twice"
        );
        let index = state.nodes.len();
        state.nodes.push(NodeSlot {
            id: node,
            router: Rc::new(router),
            generation: 0,
            up: true,
            counters: NodeCounters::default(),
        });
        state.index_of.insert(node, index);
        state.connect_reachable(index, self.sim.now());
        MemoryTransport {
            network: self.clone(),
            node: index,
            id: node,
            generation: 0,
        }
    }

    /// Sets the faults of every link without its own setting.
    pub fn set_faults(&self, faults: LinkFaults) {
        faults.assert_valid();
        self.state.borrow_mut().default_faults = faults;
    }

    /// Sets the faults of the directed link `from -> to`.
    pub fn set_link_faults(&self, from: NodeId, to: NodeId, faults: LinkFaults) {
        faults.assert_valid();
        let mut state = self.state.borrow_mut();
        let link = (state.index(from), state.index(to));
        state.link_faults.insert(link, faults);
    }

    /// Returns the directed link `from -> to` to the network's default faults.
    pub fn clear_link_faults(&self, from: NodeId, to: NodeId) {
        let mut state = self.state.borrow_mut();
        let link = (state.index(from), state.index(to));
        state.link_faults.remove(&link);
    }

    /// Stops all traffic between every node of `side_a` and every node of `side_b`. Partitions add
    /// up until [`MemoryNetwork::heal`].
    pub fn partition(&self, side_a: &[NodeId], side_b: &[NodeId]) {
        let now = self.sim.now();
        {
            let mut state = self.state.borrow_mut();
            for &a in side_a {
                for &b in side_b {
                    let (a, b) = (state.index(a), state.index(b));
                    if a != b {
                        state.block(pair(a, b), now);
                    }
                }
            }
        }
        let network = self.clone();
        let idle_timeout = self.config().idle_timeout;
        self.sim.spawn(async move {
            network.sim.sleep(idle_timeout).await;
            network.close_idle_connections();
        });
    }

    /// Removes every partition. Connections that survived keep their ids; pairs whose connection
    /// closed meanwhile reconnect now, with new ids.
    pub fn heal(&self) {
        let now = self.sim.now();
        let mut state = self.state.borrow_mut();
        state.blocked.clear();
        for connection in state.connections.values_mut() {
            connection.blocked_since = None;
        }
        for index in 0..state.nodes.len() {
            state.connect_reachable(index, now);
        }
    }

    /// Crashes `node`: closes its connections (failing every RPC on them with `ConnectionClosed`)
    /// and drops the handlers it was running. Its transport stays dead.
    pub fn crash(&self, node: NodeId) {
        let now = self.sim.now();
        let aborted = {
            let mut state = self.state.borrow_mut();
            let index = state.index(node);
            assert!(state.nodes[index].up, "node {node} crashed twice");
            state.nodes[index].up = false;
            state.nodes[index].generation += 1;
            let pairs: Vec<Pair> = state
                .connections
                .keys()
                .copied()
                .filter(|&(a, b)| a == index || b == index)
                .collect();
            pairs
                .into_iter()
                .flat_map(|p| state.close(p, now))
                .collect::<Vec<_>>()
        };
        // Outside the borrow: a dropped handler may itself hold RPC futures on this network.
        aborted.iter().for_each(JoinHandle::abort);
    }

    /// Brings a crashed `node` back with `router`; it reconnects with new ids on every link it can
    /// reach. Returns its new transport.
    pub fn restart(&self, node: NodeId, router: Router) -> MemoryTransport {
        let mut state = self.state.borrow_mut();
        let index = state.index(node);
        let slot = &mut state.nodes[index];
        assert!(!slot.up, "node {node} restarted without crashing");
        slot.up = true;
        slot.router = Rc::new(router);
        let generation = slot.generation;
        state.connect_reachable(index, self.sim.now());
        MemoryTransport {
            network: self.clone(),
            node: index,
            id: node,
            generation,
        }
    }

    /// `by` refuses `peer` (a ban): their connection closes now and stays closed until
    /// [`MemoryNetwork::unblock`]. Idempotent.
    pub fn block(&self, by: NodeId, peer: NodeId) {
        let now = self.sim.now();
        let aborted = {
            let mut state = self.state.borrow_mut();
            let (by, peer) = (state.index(by), state.index(peer));
            if by == peer || !state.refused.insert((by, peer)) {
                return;
            }
            state.close(pair(by, peer), now)
        };
        // Outside the borrow: a dropped handler may itself hold RPC futures on this network.
        aborted.iter().for_each(JoinHandle::abort);
    }

    /// `by` accepts `peer` again; the pair reconnects (with a new id) unless the other end still
    /// refuses, a partition separates them, or one of them is down. Idempotent.
    pub fn unblock(&self, by: NodeId, peer: NodeId) {
        let now = self.sim.now();
        let mut state = self.state.borrow_mut();
        let (by, peer) = (state.index(by), state.index(peer));
        if state.refused.remove(&(by, peer)) {
            state.connect_reachable(by, now);
        }
    }

    /// Whether `by` refuses `peer` (see [`MemoryNetwork::block`]).
    pub fn is_blocked(&self, by: NodeId, peer: NodeId) -> bool {
        let state = self.state.borrow();
        state
            .refused
            .contains(&(state.index(by), state.index(peer)))
    }

    pub fn counters(&self, node: NodeId) -> NodeCounters {
        let state = self.state.borrow();
        state.nodes[state.index(node)].counters
    }

    /// Counters summed over all nodes.
    pub fn total_counters(&self) -> NodeCounters {
        let mut total = NodeCounters::default();
        for node in &self.state.borrow().nodes {
            total.add(&node.counters);
        }
        total
    }

    /// Current connection between `a` and `b`, if any.
    pub fn connection(&self, a: NodeId, b: NodeId) -> Option<ConnId> {
        let state = self.state.borrow();
        let key = pair(state.index(a), state.index(b));
        state.connections.get(&key).map(|connection| connection.id)
    }

    /// Hash of every network event so far, in order, with virtual times: equal across runs with
    /// the same seed, and (almost surely) different across seeds when any randomness is drawn.
    pub fn trace_hash(&self) -> u64 {
        self.state.borrow().trace.value
    }

    /// Number of events folded into [`MemoryNetwork::trace_hash`].
    pub fn trace_events(&self) -> u64 {
        self.state.borrow().trace.events
    }

    /// Keeps the first `events_max` network events from now on, for [`MemoryNetwork::trace_log`].
    /// When two runs from one seed end with different trace hashes, diffing their logs shows
    /// the first event where they part.
    pub fn enable_trace_log(&self, events_max: usize) {
        self.state.borrow_mut().trace_log_events_max = events_max;
    }

    pub fn trace_log(&self) -> Vec<TraceEvent> {
        self.state.borrow().trace_log.clone()
    }

    /// RPCs whose futures are alive (a leak check for tests).
    pub fn exchanges_in_flight(&self) -> usize {
        self.state.borrow().exchanges.len()
    }

    fn close_idle_connections(&self) {
        let now = self.sim.now();
        let idle_timeout = self.config().idle_timeout;
        let aborted = {
            let mut state = self.state.borrow_mut();
            let idle: Vec<Pair> = state
                .connections
                .iter()
                .filter(|(_, c)| {
                    c.blocked_since
                        .is_some_and(|since| since + idle_timeout <= now)
                })
                .map(|(&p, _)| p)
                .collect();
            idle.into_iter()
                .flat_map(|p| state.close(p, now))
                .collect::<Vec<_>>()
        };
        aborted.iter().for_each(JoinHandle::abort);
    }

    /// Sends one message through the fault model: drops it now, or schedules its delivery.
    fn send(&self, envelope: Envelope) {
        let now = self.sim.now();
        let delay = {
            let mut state = self.state.borrow_mut();
            let faults = state.faults(envelope.from, envelope.to);
            let (lost, delay) = self.sim.with_rng(|rng| {
                let lost = rng.chance(faults.loss_probability);
                (lost, faults.delay.sample(rng))
            });
            let counters = &mut state.nodes[envelope.from].counters;
            counters.messages_sent += 1;
            counters.bytes_sent += envelope.payload.len_bytes();
            let drop_reason = if !state.conn_is_current(&envelope) {
                Some(TraceKind::DroppedClosed)
            } else if state.blocked.contains(&pair(envelope.from, envelope.to)) {
                Some(TraceKind::DroppedPartition)
            } else if lost {
                Some(TraceKind::DroppedLoss)
            } else {
                None
            };
            if let Some(reason) = drop_reason {
                state.record_drop(&envelope, reason, now);
                return;
            }
            delay
        };
        let network = self.clone();
        self.sim.spawn(async move {
            network.sim.sleep(delay).await;
            network.deliver(envelope);
        });
    }

    fn deliver(&self, envelope: Envelope) {
        let now = self.sim.now();
        let mut state = self.state.borrow_mut();
        if !state.conn_is_current(&envelope) {
            state.record_drop(&envelope, TraceKind::DroppedClosed, now);
            return;
        }
        let bytes = envelope.payload.len_bytes();
        state.nodes[envelope.from].counters.messages_delivered += 1;
        let receiver = &mut state.nodes[envelope.to].counters;
        receiver.messages_received += 1;
        receiver.bytes_received += bytes;
        state.record_message(&envelope, TraceKind::Delivered, now);
        match envelope.payload {
            Payload::Request {
                route,
                priority,
                body,
            } => {
                let ctx = RequestContext {
                    peer: state.nodes[envelope.from].id,
                    conn: envelope.conn,
                    route,
                    priority,
                };
                let router = state.nodes[envelope.to].router.clone();
                drop(state);
                self.serve(envelope.exchange, envelope.to, router, ctx, body);
            }
            Payload::Response(result) => {
                // A response for an exchange that already ended (timeout, cancel) is discarded.
                if let Some(exchange) = state.exchanges.get_mut(&envelope.exchange) {
                    exchange.result = Some(result);
                    if let Some(waiter) = exchange.waiter.take() {
                        waiter.wake();
                    }
                }
            }
        }
    }

    /// Runs the handler for a delivered request as a task of the serving node.
    fn serve(
        &self,
        exchange: u64,
        server: NodeIndex,
        router: Rc<Router>,
        ctx: RequestContext,
        body: Buf,
    ) {
        // The caller gave up (timeout, cancel) before the request arrived: nothing to serve.
        if !self.state.borrow().exchanges.contains_key(&exchange) {
            return;
        }
        let network = self.clone();
        let task = self.sim.spawn(async move {
            let result = router.dispatch(ctx, body).await;
            network.respond(exchange, server, ctx, result);
        });
        if let Some(entry) = self.state.borrow_mut().exchanges.get_mut(&exchange) {
            entry.server_task = Some(task);
        }
    }

    fn respond(
        &self,
        exchange: u64,
        server: NodeIndex,
        ctx: RequestContext,
        result: Result<Buf, RpcError>,
    ) {
        let limit_bytes = {
            let mut state = self.state.borrow_mut();
            if let Some(entry) = state.exchanges.get_mut(&exchange) {
                entry.server_task = None;
            }
            state.config.message_bytes_max
        };
        let result = match result {
            Ok(body) if body.len() as u64 > limit_bytes => Err(RpcError::MessageTooLarge {
                size_bytes: body.len() as u64,
                limit_bytes,
            }),
            other => other,
        };
        let caller = self.state.borrow().index(ctx.peer);
        self.send(Envelope {
            exchange,
            from: server,
            to: caller,
            conn: ctx.conn,
            payload: Payload::Response(result),
        });
    }

    /// Checks the caller-side limits, registers the exchange and sends the request.
    fn start_rpc(
        &self,
        transport: &MemoryTransport,
        peer: NodeId,
        route: Route,
        priority: Priority,
        body: Buf,
    ) -> Result<ExchangeGuard, RpcError> {
        let (exchange, conn, to) = {
            let mut state = self.state.borrow_mut();
            let admitted = state.admit_rpc(transport, peer, body.len() as u64);
            if admitted.is_err() {
                state.nodes[transport.node].counters.rpcs_refused += 1;
            }
            let (conn, to) = admitted?;
            let exchange = state.next_exchange_id;
            state.next_exchange_id += 1;
            let entry = Exchange {
                from: transport.node,
                conn,
                result: None,
                waiter: None,
                server_task: None,
            };
            state.exchanges.insert(exchange, entry);
            *state.in_flight.entry((conn, transport.node)).or_insert(0) += 1;
            (exchange, conn, to)
        };
        let payload = Payload::Request {
            route,
            priority,
            body,
        };
        self.send(Envelope {
            exchange,
            from: transport.node,
            to,
            conn,
            payload,
        });
        Ok(ExchangeGuard {
            network: self.clone(),
            exchange,
        })
    }

    /// Removes an exchange whose RPC future completed or was dropped.
    fn end_exchange(&self, exchange: u64) {
        let server_task = {
            let mut state = self.state.borrow_mut();
            let Some(entry) = state.exchanges.remove(&exchange) else {
                return;
            };
            let key = (entry.conn, entry.from);
            let count = state
                .in_flight
                .get_mut(&key)
                .expect("in-flight count of a live exchange");
            *count -= 1;
            if *count == 0 {
                state.in_flight.remove(&key);
            }
            entry.server_task
        };
        if let Some(task) = server_task {
            task.abort();
        }
    }
}

impl NetworkState {
    /// Index of a node that joined. Panics otherwise: naming an unknown node is a test bug.
    fn index(&self, node: NodeId) -> NodeIndex {
        *self
            .index_of
            .get(&node)
            .unwrap_or_else(|| panic!("node {node} never joined"))
    }

    fn faults(&self, from: NodeIndex, to: NodeIndex) -> LinkFaults {
        self.link_faults
            .get(&(from, to))
            .copied()
            .unwrap_or(self.default_faults)
    }

    fn conn_is_current(&self, envelope: &Envelope) -> bool {
        let key = pair(envelope.from, envelope.to);
        self.connections
            .get(&key)
            .is_some_and(|connection| connection.id == envelope.conn)
    }

    fn record_drop(&mut self, envelope: &Envelope, kind: TraceKind, now: Duration) {
        let counters = &mut self.nodes[envelope.from].counters;
        match kind {
            TraceKind::DroppedLoss => counters.messages_dropped_loss += 1,
            TraceKind::DroppedPartition => counters.messages_dropped_partition += 1,
            _ => counters.messages_dropped_closed += 1,
        }
        self.record_message(envelope, kind, now);
    }

    fn record_message(&mut self, envelope: &Envelope, kind: TraceKind, now: Duration) {
        let response = matches!(envelope.payload, Payload::Response(_));
        let bytes = envelope.payload.len_bytes();
        self.record(
            (envelope.from, envelope.to),
            kind,
            envelope.exchange,
            response,
            bytes,
            now,
        );
    }

    /// Folds one event into the trace hash (and the log, while it has room).
    fn record(
        &mut self,
        (from, to): (NodeIndex, NodeIndex),
        kind: TraceKind,
        id: u64,
        response: bool,
        bytes: u64,
        now: Duration,
    ) {
        let words = [
            kind as u64,
            nanos(now),
            from as u64,
            to as u64,
            id,
            u64::from(response),
            bytes,
        ];
        self.trace.record(&words);
        if self.trace_log.len() < self.trace_log_events_max {
            let (from, to) = (self.nodes[from].id, self.nodes[to].id);
            let event = TraceEvent {
                at: now,
                kind,
                from,
                to,
                id,
                response,
                bytes,
            };
            self.trace_log.push(event);
        }
    }

    fn block(&mut self, key: Pair, now: Duration) {
        self.blocked.insert(key);
        if let Some(connection) = self.connections.get_mut(&key) {
            connection.blocked_since.get_or_insert(now);
        }
    }

    /// Opens a connection from `index` to every live node it is not partitioned from.
    fn connect_reachable(&mut self, index: NodeIndex, now: Duration) {
        if !self.nodes[index].up {
            return;
        }
        for other in 0..self.nodes.len() {
            let key = pair(index, other);
            let refused =
                self.refused.contains(&(index, other)) || self.refused.contains(&(other, index));
            let reachable =
                other != index && self.nodes[other].up && !self.blocked.contains(&key) && !refused;
            if reachable && !self.connections.contains_key(&key) {
                let id = ConnId(self.next_conn_id);
                self.next_conn_id += 1;
                self.connections.insert(
                    key,
                    Connection {
                        id,
                        blocked_since: None,
                    },
                );
                self.nodes[key.0].counters.connections_opened += 1;
                self.nodes[key.1].counters.connections_opened += 1;
                self.record(key, TraceKind::Connected, id.0, false, 0, now);
            }
        }
    }

    /// Closes one connection: fails its exchanges with `ConnectionClosed`. Returns the server
    /// tasks to abort (the caller aborts them once this borrow is released).
    fn close(&mut self, key: Pair, now: Duration) -> Vec<JoinHandle<()>> {
        let Some(connection) = self.connections.remove(&key) else {
            return Vec::new();
        };
        self.nodes[key.0].counters.connections_closed += 1;
        self.nodes[key.1].counters.connections_closed += 1;
        self.record(key, TraceKind::Disconnected, connection.id.0, false, 0, now);
        let mut aborted = Vec::new();
        for exchange in self
            .exchanges
            .values_mut()
            .filter(|e| e.conn == connection.id)
        {
            exchange
                .result
                .get_or_insert(Err(RpcError::ConnectionClosed));
            aborted.extend(exchange.server_task.take());
            if let Some(waiter) = exchange.waiter.take() {
                waiter.wake();
            }
        }
        aborted
    }

    /// The caller-side checks of an RPC, in the order a real transport makes them.
    fn admit_rpc(
        &self,
        transport: &MemoryTransport,
        peer: NodeId,
        size_bytes: u64,
    ) -> Result<(ConnId, NodeIndex), RpcError> {
        let slot = &self.nodes[transport.node];
        if !slot.up || slot.generation != transport.generation {
            return Err(RpcError::ConnectionClosed);
        }
        let limit_bytes = self.config.message_bytes_max;
        if size_bytes > limit_bytes {
            return Err(RpcError::MessageTooLarge {
                size_bytes,
                limit_bytes,
            });
        }
        let to = self
            .index_of
            .get(&peer)
            .copied()
            .ok_or(RpcError::NotConnected(peer))?;
        let conn = self
            .connections
            .get(&pair(transport.node, to))
            .filter(|_| to != transport.node)
            .map(|connection| connection.id)
            .ok_or(RpcError::NotConnected(peer))?;
        let limit = self.config.requests_in_flight_max;
        if self
            .in_flight
            .get(&(conn, transport.node))
            .copied()
            .unwrap_or(0)
            >= limit
        {
            return Err(RpcError::TooManyInFlight { limit });
        }
        Ok((conn, to))
    }
}

/// Ends its exchange when the RPC future completes or is dropped (cancellation).
struct ExchangeGuard {
    network: MemoryNetwork,
    exchange: u64,
}

impl Drop for ExchangeGuard {
    fn drop(&mut self) {
        self.network.end_exchange(self.exchange);
    }
}

/// Waits for the response (or the close) of one exchange.
struct ResponseWait<'a> {
    guard: &'a ExchangeGuard,
}

impl Future for ResponseWait<'_> {
    type Output = Result<Buf, RpcError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.guard.network.state.borrow_mut();
        let Some(exchange) = state.exchanges.get_mut(&self.guard.exchange) else {
            return Poll::Ready(Err(RpcError::ConnectionClosed));
        };
        match exchange.result.take() {
            Some(result) => Poll::Ready(result),
            None => {
                exchange.waiter = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl MemoryTransport {
    /// False once this transport's node crashed (a restart returns a new transport).
    pub fn is_alive(&self) -> bool {
        let state = self.network.state.borrow();
        let slot = &state.nodes[self.node];
        slot.up && slot.generation == self.generation
    }

    pub fn network(&self) -> &MemoryNetwork {
        &self.network
    }
}

impl Transport for MemoryTransport {
    fn local_id(&self) -> NodeId {
        self.id
    }

    async fn rpc(
        &self,
        peer: NodeId,
        route: Route,
        priority: Priority,
        request: Buf,
    ) -> Result<Buf, RpcError> {
        let guard = self
            .network
            .start_rpc(self, peer, route, priority, request)?;
        let rpc_timeout = self.network.config().rpc_timeout;
        let outcome = self
            .network
            .sim
            .timeout(rpc_timeout, ResponseWait { guard: &guard })
            .await;
        drop(guard);
        outcome.unwrap_or(Err(RpcError::Timeout))
    }

    fn peers(&self) -> Vec<(NodeId, ConnId)> {
        if !self.is_alive() {
            return Vec::new();
        }
        let state = self.network.state.borrow();
        let mut peers: Vec<(NodeId, ConnId)> = state
            .connections
            .iter()
            .filter(|((a, b), _)| *a == self.node || *b == self.node)
            .map(|(&(a, b), connection)| {
                let other = if a == self.node { b } else { a };
                (state.nodes[other].id, connection.id)
            })
            .collect();
        peers.sort();
        peers
    }
}

#[cfg(test)]
mod tests;
