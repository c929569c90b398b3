//! The reference replica on a shard: three artifact kinds gossiped by their own consensus
//! managers (ingress 3, blocks 4, notarization shares 5), the [`Chain`] stepped every
//! [`TICK`] and whenever a pool has news, signature checks of gossiped ingress and the
//! certification of each executed height on the node's CPU pool (never on the shard), and the
//! [`Backend`] the public HTTP API calls.
//!
//! What runs where:
//! - on the shard: pool bookkeeping, the chain's decisions and canister execution (native
//!   Rust, microseconds per call), building each height's state tree;
//! - on the CPU pool: verifying gossiped ingress (decode, request id, expiry, signature),
//!   hashing and BLS-signing each height's tree (one signature per height, shared by every
//!   reader), and Ed25519-signing query responses.
//!
//! When the pool is busy, certification skips to the newest executed height (a reader only ever
//! needs the latest); ingress verification waits in the pool's unvalidated section; queries and
//! calls get 429.
//!
//! Ingress a notarized block names and this node lacks is fetched over the route
//! [`INGRESS_FETCH_ROUTE`] ([`super::fetch`] decides what to ask of whom): the answer is decoded
//! on the shard (a bounded FlatBuffer), every envelope verified on the CPU pool like gossiped
//! ingress ([`verify_fetched`]), and a peer that answers with anything but what was asked is
//! penalized (`InvalidArtifact`, or `BadMessage` for an answer that does not decode). A peer
//! that gossips a call which fails verification ([`verify_ingress`]: not what its advert says,
//! or not authentic) is penalized alike; one that merely expired on the way is not.

use std::cell::{Cell, RefCell};
use std::collections::{HashSet, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use boring::pkey::{PKeyRef, Private};
use futures_lite::future::or;
use icn_codecs::ic::{
    query_response_signing_bytes, IcLimits, Principal, QueryOutcome, Reject as WireReject,
    RequestId,
};
use icn_codecs::replica::{
    decode_ingress_fetch_request, decode_ingress_fetch_response, encode_ingress_fetch_request,
    encode_ingress_fetch_response, IngressFetchLimits,
};
use icn_engine::transport::LocalBoxFuture as TransportFuture;
use icn_engine::{Buf, NodeId, Priority, RequestContext, Route, Router, RpcError, Transport};
use icn_tuning::Tuning;

use super::bls::{PublicKey, SecretKey};
use super::canisters::{CallOutcome, CanisterLimits, Canisters};
use super::certification::{CertifiedState, StateCertifier};
use super::chain::{node_principal, Chain, ChainConfig, ChainStats, ExecutedState};
use super::fetch::{FetchConfig, FetchRequest, FetchStats, IngressFetcher};
use super::ingress::{
    verify_fetched, verify_ingress, AddError, IngressCheck, IngressLimits, IngressPool,
    IngressRefusal, IngressStats,
};
use super::pool::{ConsensusPool, HeightWindow};
use crate::artifact::{ArtifactKind, ArtifactPool};
use crate::artifact_manager::ArtifactManager;
use crate::consensus_manager::driver::PenaltySink;
use crate::consensus_manager::{Backoff, ConsensusManager, GossipConfig, GossipHandle, Offence};
use crate::http::backend::{
    Backend, BackendError, BackendStatus, CallReply, CallRequest, CallVersion, LocalBoxFuture,
    OwnedNodeSignature, OwnedReject, QueryReply, QueryRequest, QueryResult, QueryTimings,
    ReadStateReply, ReadStateRequest, ReadStateTarget,
};
use crate::http::CpuPool;
use crate::runtime::{timeout, Runtime, TaskHandle};
use crate::signal::Signal;

pub const REPLICA_INGRESS: ArtifactKind = ArtifactKind(3);
pub const REPLICA_BLOCK: ArtifactKind = ArtifactKind(4);
pub const REPLICA_SHARE: ArtifactKind = ArtifactKind(5);
/// The replica's kinds with their metrics labels.
pub const REPLICA_KINDS: [(ArtifactKind, &str); 3] = [
    (REPLICA_INGRESS, "replica_ingress"),
    (REPLICA_BLOCK, "replica_block"),
    (REPLICA_SHARE, "replica_share"),
];

/// Route of ingress fetch requests (`replica/ingress`): an `IngressFetchRequest` answered with
/// an `IngressFetchResponse`.
pub const INGRESS_FETCH_ROUTE: Route = Route(0x400);

/// How often the chain is stepped without news (round timeouts, block pacing).
pub const TICK: Duration = Duration::from_millis(5);
/// How often a waiting synchronous call looks for its certified status.
const SYNC_CALL_POLL: Duration = Duration::from_millis(5);
/// How often an artifact manager applies its pool without being poked.
const APPLY_INTERVAL: Duration = Duration::from_millis(20);

/// The replica's settings, from tuning.
#[derive(Clone, Copy, Debug)]
pub struct ReplicaConfig {
    pub chain: ChainConfig,
    pub ingress: IngressLimits,
    pub ingress_check: IngressCheck,
    pub verify_in_flight_max: usize,
    pub heights_ahead_max: u64,
    pub heights_kept: u64,
    pub checkpoint_interval: u64,
    pub sync_call_wait: Duration,
    pub canisters: CanisterLimits,
    pub inbound_batch_max: usize,
    pub fetch: FetchConfig,
    pub fetch_limits: IngressFetchLimits,
}

impl ReplicaConfig {
    pub fn from_tuning(tuning: &Tuning, local: NodeId) -> ReplicaConfig {
        let replica = &tuning.replica;
        let ms = Duration::from_millis;
        ReplicaConfig {
            chain: ChainConfig {
                local,
                block_interval: ms(replica.block_interval_ms),
                round_timeout: ms(replica.round_timeout_ms),
                block_ingress_max: replica.block_ingress_max,
                request_statuses_max: replica.request_statuses_max,
                block_time_skew_ns: replica.block_time_skew_ms.saturating_mul(1_000_000),
            },
            ingress: IngressLimits {
                messages_max: replica.ingress_pool_messages_max,
                bytes_max: replica.ingress_pool_bytes_max,
            },
            ingress_check: IngressCheck {
                limits: IcLimits::default(),
                expiry_window_ns: tuning
                    .http
                    .ingress_expiry_window_ms
                    .saturating_mul(1_000_000),
                expiry_drift_ns: tuning
                    .http
                    .ingress_expiry_drift_ms
                    .saturating_mul(1_000_000),
            },
            verify_in_flight_max: replica.ingress_verify_in_flight_max,
            heights_ahead_max: replica.heights_ahead_max,
            heights_kept: replica.heights_kept_count,
            checkpoint_interval: replica.checkpoint_interval_count,
            sync_call_wait: ms(replica.sync_call_wait_ms),
            canisters: CanisterLimits::from_tuning(&tuning.canisters),
            inbound_batch_max: tuning.gossip.inbound_batch_artifacts_max,
            fetch: FetchConfig {
                ids_per_request_max: replica.ingress_fetch_ids_max,
                in_flight_max: replica.ingress_fetch_in_flight_max,
                tracked_max: replica.ingress_fetch_tracked_max,
                timeout: ms(replica.ingress_fetch_timeout_ms),
                backoff: Backoff {
                    initial: ms(replica.ingress_fetch_backoff_initial_ms),
                    max: ms(replica.ingress_fetch_backoff_max_ms),
                },
            },
            fetch_limits: IngressFetchLimits {
                ids_max: replica.ingress_fetch_ids_max,
                response_bytes_max: replica.ingress_fetch_response_bytes_max,
            },
        }
    }
}

/// The keys a replica signs with.
pub struct ReplicaKeys {
    /// The subnet's BLS key (every node holds it: no threshold signing).
    pub subnet: SecretKey,
    /// The node's own Ed25519 key (its identity), for query responses.
    pub node: NodeSigner,
}

/// A height's certified state.
pub struct Certified {
    pub height: u64,
    pub time_ns: u64,
    pub state: CertifiedState,
}

/// Counters of the driver (the chain and pools keep their own).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplicaStats {
    pub certified: u64,
    /// Heights executed but never certified because a newer one was ready first.
    pub certifications_skipped: u64,
    pub verify_refused_full: u64,
    pub queries: u64,
    pub calls_accepted: u64,
    pub calls_refused_full: u64,
}

/// A snapshot for metrics.
#[derive(Clone, Debug)]
pub struct ReplicaSnapshot {
    pub executed_height: u64,
    pub certified_height: u64,
    pub chain: ChainStats,
    pub stats: ReplicaStats,
    pub ingress: IngressStats,
    pub ingress_messages: usize,
    pub ingress_bytes: usize,
    pub ingress_limits: IngressLimits,
    pub ingress_verifying: usize,
    pub request_statuses: usize,
    pub request_statuses_max: usize,
    pub block_pool: usize,
    pub share_pool: usize,
    pub fetch: FetchStats,
    pub fetch_in_flight: usize,
    pub fetch_in_flight_max: usize,
    pub fetch_tracked: usize,
    pub fetch_tracked_max: usize,
}

/// Sends one ingress fetch request to a peer.
type FetchRpc = Rc<dyn Fn(NodeId, Buf) -> TransportFuture<Result<Buf, RpcError>>>;

/// What the ingress fetch needs of the transport, captured by [`Replica::start`] (the
/// transport's `rpc` is an `async fn`, so the trait cannot be held as an object).
#[derive(Clone)]
struct FetchLink {
    rpc: FetchRpc,
    peers: Rc<dyn Fn() -> Vec<NodeId>>,
}

struct Kind {
    gossip: GossipHandle,
    manager: RefCell<Option<ArtifactManager>>,
}

pub struct Replica {
    config: ReplicaConfig,
    runtime: Rc<dyn Runtime>,
    window: Rc<HeightWindow>,
    chain: Rc<RefCell<Chain>>,
    ingress: Rc<RefCell<IngressPool>>,
    blocks: Rc<RefCell<ConsensusPool>>,
    shares: Rc<RefCell<ConsensusPool>>,
    kinds: Vec<Kind>,
    certifier: Arc<StateCertifier>,
    subnet_key: PublicKey,
    node_key: Arc<NodeSigner>,
    node_principal: Principal,
    cpu: Arc<CpuPool>,
    certified: RefCell<Option<Rc<Certified>>>,
    certifying: Cell<bool>,
    /// Executed heights and the calls they ordered, until their calls leave the ingress pool.
    executed_log: RefCell<VecDeque<(u64, Vec<RequestId>)>>,
    /// The state at the newest checkpoint height executed and not yet taken for a checkpoint.
    checkpoint_due: RefCell<Option<ExecutedState>>,
    penalties: PenaltySink,
    fetcher: RefCell<IngressFetcher>,
    fetch_link: RefCell<Option<FetchLink>>,
    wake: Rc<Signal>,
    stopped: Cell<bool>,
    task: RefCell<Option<TaskHandle>>,
    stats: Cell<ReplicaStats>,
}

fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl Replica {
    /// Builds the replica of `members` (the subnet, this node included); nothing runs until
    /// [`Replica::start`].
    pub fn new(
        config: ReplicaConfig,
        tuning: &Tuning,
        keys: ReplicaKeys,
        members: &[NodeId],
        runtime: Rc<dyn Runtime>,
        cpu: Arc<CpuPool>,
        penalties: PenaltySink,
    ) -> Rc<Replica> {
        let genesis = ExecutedState::genesis(Canisters::new(config.canisters), 0);
        let chain = Rc::new(RefCell::new(Chain::new(config.chain, members, genesis)));
        let executed = {
            let chain = chain.clone();
            Rc::new(move |id: &RequestId| {
                chain
                    .try_borrow()
                    .is_ok_and(|chain| chain.state().statuses.contains_key(id))
            })
        };
        let window = HeightWindow::new(config.heights_ahead_max);
        let ingress = Rc::new(RefCell::new(IngressPool::new(
            REPLICA_INGRESS,
            config.ingress,
            executed,
        )));
        let blocks = Rc::new(RefCell::new(ConsensusPool::new(
            REPLICA_BLOCK,
            window.clone(),
            true,
        )));
        let shares = Rc::new(RefCell::new(ConsensusPool::new(
            REPLICA_SHARE,
            window.clone(),
            true,
        )));
        let pools: [(Rc<RefCell<dyn ArtifactPool>>, Priority); 3] = [
            (ingress.clone(), Priority::Normal),
            (blocks.clone(), Priority::High),
            (shares.clone(), Priority::High),
        ];
        let kinds = pools
            .into_iter()
            .map(|(pool, priority)| Kind {
                gossip: ConsensusManager::new(
                    GossipConfig::from_tuning(tuning, priority),
                    runtime.clone(),
                    pool,
                    penalties.clone(),
                ),
                manager: RefCell::new(None),
            })
            .collect();
        let subnet_key = keys.subnet.public_key();
        Rc::new(Replica {
            config,
            runtime,
            window,
            chain,
            ingress,
            blocks,
            shares,
            kinds,
            certifier: Arc::new(StateCertifier::new(keys.subnet)),
            subnet_key,
            node_principal: node_principal(&local_of(&config)),
            node_key: Arc::new(keys.node),
            cpu,
            certified: RefCell::new(None),
            certifying: Cell::new(false),
            executed_log: RefCell::new(VecDeque::new()),
            checkpoint_due: RefCell::new(None),
            penalties,
            fetcher: RefCell::new(IngressFetcher::new(config.fetch)),
            fetch_link: RefCell::new(None),
            wake: Rc::new(Signal::new()),
            stopped: Cell::new(false),
            task: RefCell::new(None),
            stats: Cell::new(ReplicaStats::default()),
        })
    }

    /// Adds the three kinds' gossip routes and the ingress fetch route to `router`.
    pub fn routes(self: &Rc<Self>, mut router: Router) -> Router {
        for kind in &self.kinds {
            router = kind.gossip.routes(router);
        }
        self.fetch_route(router)
    }

    /// Adds the ingress fetch route alone (tests build routers kind by kind).
    pub fn fetch_route(self: &Rc<Self>, router: Router) -> Router {
        let replica = self.clone();
        router.route(
            INGRESS_FETCH_ROUTE,
            move |ctx: RequestContext, body: Buf| {
                let result = replica.serve_ingress_fetch(ctx, body);
                async move { result }
            },
        )
    }

    /// Answers an ingress fetch from the validated ingress pool: each id asked for once, in the
    /// order asked, until the answer would exceed `ingress_fetch_response_bytes_max`. Runs on
    /// the shard: the work is a map lookup and a copy per id, bounded by the request's limits.
    fn serve_ingress_fetch(&self, ctx: RequestContext, body: Buf) -> Result<Buf, RpcError> {
        let limits = self.config.fetch_limits;
        let ids = decode_ingress_fetch_request(&body, &limits).map_err(|error| {
            (self.penalties)(ctx.peer, Offence::BadMessage);
            RpcError::PeerMisbehaved(error.to_string())
        })?;
        let ingress = self.ingress.borrow();
        let mut room = limits
            .response_bytes_max
            .saturating_sub(IngressFetchLimits::RESPONSE_OVERHEAD_BYTES);
        let mut found: Vec<Buf> = Vec::new();
        let mut seen = HashSet::with_capacity(ids.len());
        for id in &ids {
            if !seen.insert(*id) {
                continue;
            }
            let Some(entry) = ingress.get(&RequestId(*id)) else {
                continue;
            };
            let cost = IngressFetchLimits::envelope_cost(entry.artifact.payload.len());
            if cost > room {
                break;
            }
            room -= cost;
            found.push(entry.artifact.payload.clone());
        }
        drop(ingress);
        let envelopes: Vec<&[u8]> = found.iter().map(|buf| &buf[..]).collect();
        let answer = encode_ingress_fetch_response(&envelopes);
        self.fetcher.borrow_mut().stats_mut().served += 1;
        Ok(Buf::from_vec(answer))
    }

    /// Starts gossip over `transport` and the replica's loop.
    pub fn start<T: Transport + 'static>(self: &Rc<Self>, transport: Rc<T>) {
        let rpc_transport = transport.clone();
        let peers_transport = transport.clone();
        *self.fetch_link.borrow_mut() = Some(FetchLink {
            rpc: Rc::new(move |peer, body| {
                let transport = rpc_transport.clone();
                Box::pin(async move {
                    transport
                        .rpc(peer, INGRESS_FETCH_ROUTE, Priority::High, body)
                        .await
                })
            }),
            peers: Rc::new(move || {
                peers_transport
                    .peers()
                    .into_iter()
                    .map(|(peer, _)| peer)
                    .collect()
            }),
        });
        for kind in &self.kinds {
            kind.gossip.start(transport.clone());
            let manager = ArtifactManager::start(
                kind.gossip.clone(),
                self.config.inbound_batch_max,
                APPLY_INTERVAL,
            );
            *kind.manager.borrow_mut() = Some(manager);
        }
        let replica = self.clone();
        let task = self
            .runtime
            .spawn(Box::pin(async move { replica.run().await }));
        *self.task.borrow_mut() = Some(task);
    }

    /// Stops the loop, the artifact managers and gossip, and waits for them.
    pub async fn stop(&self) {
        self.stopped.set(true);
        self.wake.notify();
        let task = self.task.borrow_mut().take();
        if let Some(task) = task {
            task.join().await;
        }
        for kind in &self.kinds {
            let manager = kind.manager.borrow_mut().take();
            if let Some(mut manager) = manager {
                manager.stop().await;
            }
            kind.gossip.stop().await;
        }
    }

    /// The registry changed the subnet's members.
    pub fn set_members(&self, members: &[NodeId]) {
        self.chain.borrow_mut().set_members(members);
        self.wake.notify();
    }

    pub fn subnet_public_key(&self) -> &PublicKey {
        &self.subnet_key
    }

    pub fn subnet_id(&self) -> Principal {
        self.subnet_key.subnet_id()
    }

    pub fn config(&self) -> &ReplicaConfig {
        &self.config
    }

    pub fn executed_height(&self) -> u64 {
        self.chain.borrow().state().height
    }

    /// The subnet's members as the chain sees them.
    pub fn members(&self) -> Vec<NodeId> {
        self.chain.borrow().members().to_vec()
    }

    /// The state of the newest executed checkpoint height (a multiple of
    /// `replica.checkpoint_interval_count`), once: the caller writes the checkpoint.
    pub fn take_checkpoint_due(&self) -> Option<ExecutedState> {
        self.checkpoint_due.borrow_mut().take()
    }

    /// Resumes from `state`, a checkpoint ahead of the executed height (synced from peers or
    /// this node's own after a restart). Older ones are ignored.
    pub fn adopt(self: &Rc<Self>, state: ExecutedState) {
        if state.height <= self.executed_height() {
            return;
        }
        let height = state.height;
        self.chain.borrow_mut().adopt(state);
        self.after_execution(vec![(height, Vec::new())]);
        // A checkpoint of the adopted height exists already.
        self.checkpoint_due.borrow_mut().take();
        self.wake.notify();
    }

    pub fn certified(&self) -> Option<Rc<Certified>> {
        self.certified.borrow().clone()
    }

    pub fn gossip(&self) -> impl Iterator<Item = (&'static str, &GossipHandle)> {
        REPLICA_KINDS
            .iter()
            .zip(&self.kinds)
            .map(|((_, label), kind)| (*label, &kind.gossip))
    }

    pub fn snapshot(&self) -> ReplicaSnapshot {
        let chain = self.chain.borrow();
        let ingress = self.ingress.borrow();
        ReplicaSnapshot {
            executed_height: chain.state().height,
            certified_height: self.certified().map_or(0, |c| c.height),
            chain: chain.stats(),
            stats: self.stats.get(),
            ingress: ingress.stats(),
            ingress_messages: ingress.len(),
            ingress_bytes: ingress.bytes(),
            ingress_limits: ingress.limits(),
            ingress_verifying: ingress.verifying_len(),
            request_statuses: chain.state().statuses.len(),
            request_statuses_max: self.config.chain.request_statuses_max,
            block_pool: self.blocks.borrow().validated_len(),
            share_pool: self.shares.borrow().validated_len(),
            fetch: self.fetcher.borrow().stats(),
            fetch_in_flight: self.fetcher.borrow().in_flight(),
            fetch_in_flight_max: self.config.fetch.in_flight_max,
            fetch_tracked: self.fetcher.borrow().tracked(),
            fetch_tracked_max: self.config.fetch.tracked_max,
        }
    }

    fn update_stats(&self, change: impl FnOnce(&mut ReplicaStats)) {
        let mut stats = self.stats.get();
        change(&mut stats);
        self.stats.set(stats);
    }

    /// Makes `kind`'s artifact manager apply its pool now (it has something to send).
    fn poke(&self, kind: ArtifactKind) {
        let Some(index) = REPLICA_KINDS.iter().position(|(k, _)| *k == kind) else {
            return;
        };
        if let Some(manager) = self.kinds[index].manager.borrow().as_ref() {
            manager.poke();
        }
    }

    async fn run(self: Rc<Self>) {
        while !self.stopped.get() {
            self.step();
            let sleep = self.runtime.sleep(TICK);
            or(self.wake.wait(), sleep).await;
        }
    }

    /// One pass: feed validated blocks and shares to the chain, verify gossiped ingress, step
    /// the chain, and act on what it decided.
    fn step(self: &Rc<Self>) {
        let new_blocks = self.blocks.borrow_mut().take_new();
        let new_shares = self.shares.borrow_mut().take_new();
        {
            let mut chain = self.chain.borrow_mut();
            for (artifact, from) in &new_blocks {
                if let (Err(_), Some(peer)) = (chain.on_block(artifact, *from), from) {
                    (self.penalties)(*peer, Offence::InvalidArtifact);
                }
            }
            for (artifact, from) in &new_shares {
                if let (Err(_), Some(peer)) = (chain.on_share(artifact, *from), from) {
                    (self.penalties)(*peer, Offence::InvalidArtifact);
                }
            }
        }
        self.verify_gossiped_ingress();
        let output = {
            let ingress = self.ingress.borrow();
            self.chain.borrow_mut().step(unix_ns(), &ingress)
        };
        if let Some(block) = output.block {
            self.blocks.borrow_mut().produce(block);
            self.poke(REPLICA_BLOCK);
        }
        if let Some(share) = output.share {
            self.shares.borrow_mut().produce(share);
            self.poke(REPLICA_SHARE);
        }
        // What the chain itself produced came back through the pools' `new` queues; it ignores
        // the second sight, so drain them now rather than next step.
        self.blocks.borrow_mut().take_new();
        self.shares.borrow_mut().take_new();
        if !output.executed.is_empty() {
            self.after_execution(output.executed);
        }
        self.fetch_missing(&output.missing_ingress);
    }

    /// Hands what the chain misses to the fetcher and sends the requests it decides on, each
    /// as a task with a deadline.
    fn fetch_missing(self: &Rc<Self>, missing: &[(RequestId, Option<NodeId>)]) {
        let Some(link) = self.fetch_link.borrow().clone() else {
            return;
        };
        let now = self.runtime.now();
        let requests = {
            let mut fetcher = self.fetcher.borrow_mut();
            fetcher.set_missing(missing);
            if fetcher.tracked() == 0 {
                return;
            }
            let local = self.config.chain.local;
            let members = self.members();
            let mut peers: Vec<NodeId> = (link.peers)()
                .into_iter()
                .filter(|peer| *peer != local && members.contains(peer))
                .collect();
            peers.sort_unstable();
            peers.dedup();
            fetcher.poll(now, &peers)
        };
        for request in requests {
            let replica = self.clone();
            let link = link.clone();
            self.runtime.spawn(Box::pin(async move {
                replica.clone().fetch(link, request).await;
                replica.wake.notify();
            }));
        }
    }

    /// One fetch: the request, the answer's verification on the CPU pool, the pool insertion,
    /// and the report to the fetcher (and the peer's penalty when it sent something wrong).
    async fn fetch(self: Rc<Self>, link: FetchLink, request: FetchRequest) {
        let FetchRequest { fetch, peer, ids } = request;
        let raw: Vec<[u8; 32]> = ids.iter().map(|id| id.0).collect();
        let body = Buf::from_vec(encode_ingress_fetch_request(&raw));
        let answer = timeout(
            &*self.runtime,
            self.config.fetch.timeout,
            (link.rpc)(peer, body),
        )
        .await;
        let bytes = match answer {
            Some(Ok(bytes)) => bytes,
            _ => {
                let now = self.runtime.now();
                self.fetcher.borrow_mut().on_failure(now, fetch);
                return;
            }
        };
        let envelopes = match decode_ingress_fetch_response(&bytes, &self.config.fetch_limits) {
            Ok(envelopes) => envelopes
                .into_iter()
                .map(Buf::copy_from_slice)
                .collect::<Vec<_>>(),
            Err(_) => {
                (self.penalties)(peer, Offence::BadMessage);
                let now = self.runtime.now();
                self.fetcher.borrow_mut().on_failure(now, fetch);
                return;
            }
        };
        drop(bytes);
        let check = self.config.ingress_check;
        let now_ns = unix_ns();
        let asked: HashSet<RequestId> = ids.iter().copied().collect();
        let job = self.cpu.try_run(move || {
            let mut seen = HashSet::with_capacity(envelopes.len());
            envelopes
                .into_iter()
                .map(|envelope| {
                    let call = verify_fetched(&asked, envelope, &check, now_ns)?;
                    if !seen.insert(call.request_id) {
                        return Err(IngressRefusal::Wrong("sent twice".into()));
                    }
                    Ok(call)
                })
                .collect::<Vec<_>>()
        });
        let outcomes = match job {
            Ok(job) => job.await,
            Err(_) => {
                // No verification capacity now: not the peer's fault; try again later.
                self.update_stats(|s| s.verify_refused_full += 1);
                let now = self.runtime.now();
                self.fetcher.borrow_mut().on_failure(now, fetch);
                return;
            }
        };
        let Ok(outcomes) = outcomes else {
            let now = self.runtime.now();
            self.fetcher.borrow_mut().on_failure(now, fetch);
            return;
        };
        let mut received = Vec::new();
        let mut wrong = false;
        let mut invalid = 0;
        for outcome in outcomes {
            match outcome {
                Ok(call) => {
                    let id = call.request_id;
                    if self.ingress.borrow_mut().add_fetched(call) {
                        received.push(id);
                    }
                }
                Err(IngressRefusal::Wrong(_)) => {
                    wrong = true;
                    invalid += 1;
                }
                Err(IngressRefusal::Expired(_)) => invalid += 1,
            }
        }
        if wrong {
            (self.penalties)(peer, Offence::InvalidArtifact);
        }
        let now = self.runtime.now();
        let mut fetcher = self.fetcher.borrow_mut();
        let stats = fetcher.stats_mut();
        stats.received += received.len() as u64;
        stats.invalid += invalid;
        fetcher.on_answer(now, fetch, &received);
    }

    fn after_execution(self: &Rc<Self>, executed: Vec<(u64, Vec<RequestId>)>) {
        let (height, time_ns) = {
            let chain = self.chain.borrow();
            (chain.state().height, chain.state().time_ns)
        };
        let interval = self.config.checkpoint_interval.max(1);
        if let Some(due) = executed
            .iter()
            .map(|(h, _)| *h)
            .filter(|h| h % interval == 0)
            .max()
        {
            // Only the newest executed height's state is at hand: a step that executed past a
            // checkpoint height without stopping on it (rare: several heights at once) skips
            // that checkpoint.
            if due == height {
                *self.checkpoint_due.borrow_mut() = Some(self.chain.borrow().state().clone());
            }
        }
        self.window.set_executed(height);
        let floor = height.saturating_sub(self.config.heights_kept);
        self.blocks.borrow_mut().purge_below(floor);
        self.shares.borrow_mut().purge_below(floor);
        {
            // Executed calls stay for peers up to the height window behind (they may still
            // need them to execute); a peer further behind syncs a checkpoint instead. Keeping
            // them for all of `heights_kept` would fill the pool with executed calls at high
            // call rates.
            let ingress_floor = height.saturating_sub(self.config.heights_ahead_max);
            let mut log = self.executed_log.borrow_mut();
            log.extend(executed);
            let mut ingress = self.ingress.borrow_mut();
            while log.front().is_some_and(|(h, _)| *h < ingress_floor) {
                if let Some((_, ids)) = log.pop_front() {
                    ingress.remove_executed(&ids);
                }
            }
            ingress
                .remove_expired(time_ns.saturating_sub(self.config.ingress_check.expiry_drift_ns));
        }
        self.poke(REPLICA_INGRESS);
        self.poke(REPLICA_BLOCK);
        self.poke(REPLICA_SHARE);
        self.certify_latest();
    }

    /// Certifies the newest executed height on the CPU pool, unless a certification is in
    /// flight (its end certifies whatever is newest then).
    fn certify_latest(self: &Rc<Self>) {
        if self.certifying.get() {
            return;
        }
        let (height, time_ns, tree) = {
            let chain = self.chain.borrow();
            let state = chain.state();
            if self.certified().is_some_and(|c| c.height >= state.height) {
                return;
            }
            (
                state.height,
                state.time_ns,
                state.tree(&self.subnet_key, &canister_ranges(), chain.members()),
            )
        };
        let certifier = self.certifier.clone();
        let Ok(job) = self.cpu.try_run(move || certifier.certify(tree)) else {
            // The pool is full: the next executed height tries again.
            self.update_stats(|s| s.certifications_skipped += 1);
            return;
        };
        self.certifying.set(true);
        let replica = self.clone();
        self.runtime.spawn(Box::pin(async move {
            let result = job.await;
            replica.certifying.set(false);
            if let Ok(state) = result {
                let previous = replica.certified().map_or(0, |c| c.height);
                replica.update_stats(|s| {
                    s.certified += 1;
                    s.certifications_skipped += height.saturating_sub(previous + 1);
                });
                *replica.certified.borrow_mut() = Some(Rc::new(Certified {
                    height,
                    time_ns,
                    state,
                }));
            }
            if !replica.stopped.get() {
                replica.certify_latest();
            }
        }));
    }

    /// Sends gossiped ingress to the CPU pool for verification, within the in-flight bound.
    fn verify_gossiped_ingress(self: &Rc<Self>) {
        let room = {
            let ingress = self.ingress.borrow();
            self.config
                .verify_in_flight_max
                .saturating_sub(ingress.verifying_len())
                .min(ingress.unvalidated_len())
        };
        if room == 0 {
            return;
        }
        let taken = self.ingress.borrow_mut().take_unverified(room);
        let check = self.config.ingress_check;
        for (artifact, from) in taken {
            let job_artifact = artifact.clone();
            let now = unix_ns();
            let job = self.cpu.try_run(move || {
                verify_ingress(job_artifact.id(), &job_artifact.payload, &check, now)
            });
            let replica = self.clone();
            match job {
                Ok(job) => {
                    self.runtime.spawn(Box::pin(async move {
                        let outcome = job.await.unwrap_or_else(|_| {
                            Err(IngressRefusal::Expired("verification panicked".into()))
                        });
                        // A call that is not what its advert says, or not authentic, was
                        // offered by a peer that did not verify it (a call that expired on
                        // the way is nobody's fault).
                        if matches!(outcome, Err(IngressRefusal::Wrong(_))) {
                            (replica.penalties)(from, Offence::InvalidArtifact);
                        }
                        let outcome = outcome.map_err(|refusal| refusal.to_string());
                        replica.ingress.borrow_mut().verified(artifact, outcome);
                        replica.wake.notify();
                    }));
                }
                Err(_) => {
                    // The pool is full: put it back for a later step.
                    self.update_stats(|s| s.verify_refused_full += 1);
                    let mut ingress = self.ingress.borrow_mut();
                    ingress.retry_later(artifact, from);
                }
            }
        }
    }

    /// The certificate revealing `paths` (plus `/time`) at the newest certified height.
    fn certificate(&self, mut paths: Vec<Vec<Vec<u8>>>) -> Result<Vec<u8>, BackendError> {
        let certified = self.certified().ok_or_else(|| {
            BackendError::Unavailable("no height is certified yet, the replica is starting".into())
        })?;
        paths.push(vec![b"time".to_vec()]);
        Ok(certified.state.certificate(&paths))
    }

    /// The certificate of a request's status, once the status is certified.
    fn certified_status(&self, id: &RequestId) -> Option<Vec<u8>> {
        let certified = self.certified()?;
        let height = self.chain.borrow().state().statuses.get(id)?.height;
        if height > certified.height {
            return None;
        }
        let paths = vec![
            vec![b"request_status".to_vec(), id.0.to_vec()],
            vec![b"time".to_vec()],
        ];
        Some(certified.state.certificate(&paths))
    }

    async fn call(self: Rc<Self>, request: CallRequest) -> Result<CallReply, BackendError> {
        let canister = request.content.canister_id;
        if !Canisters::canister_ids().contains(&canister) {
            return Ok(CallReply::Rejected(OwnedReject {
                reject_code: 3,
                reject_message: format!("Canister {canister} not found"),
                error_code: Some("IC0301".into()),
            }));
        }
        let id = request.request_id;
        let executed = self.chain.borrow().state().statuses.contains_key(&id);
        if !executed {
            let added = self.ingress.borrow_mut().add_local(
                id,
                request.content,
                icn_engine::Buf::from_vec(request.envelope.to_vec()),
            );
            match added {
                Ok(()) => {
                    self.update_stats(|s| s.calls_accepted += 1);
                    self.poke(REPLICA_INGRESS);
                    self.wake.notify();
                }
                Err(AddError::Full) => {
                    self.update_stats(|s| s.calls_refused_full += 1);
                    return Err(BackendError::Overloaded(
                        "the ingress pool is full, retry later".into(),
                    ));
                }
            }
        }
        if request.version == CallVersion::V2 {
            return Ok(CallReply::Accepted);
        }
        let deadline = self.runtime.now() + self.config.sync_call_wait;
        loop {
            if let Some(certificate) = self.certified_status(&id) {
                return Ok(CallReply::Certified { certificate });
            }
            if self.runtime.now() >= deadline || self.stopped.get() {
                return Ok(CallReply::Accepted);
            }
            self.runtime.sleep(SYNC_CALL_POLL).await;
        }
    }

    async fn query(self: Rc<Self>, request: QueryRequest) -> Result<QueryReply, BackendError> {
        self.update_stats(|s| s.queries += 1);
        let content = &request.content;
        let started = Instant::now();
        let outcome = self.chain.borrow().state().canisters.query(
            &content.canister_id,
            &content.method_name,
            &content.arg,
        );
        let result = match outcome {
            CallOutcome::Reply(arg) => QueryResult::Replied { arg },
            CallOutcome::Reject(reject) => QueryResult::Rejected(OwnedReject {
                reject_code: reject.code.as_u64(),
                reject_message: reject.message,
                error_code: Some(reject.error_code.to_string()),
            }),
        };
        let executed = Instant::now();
        let key = self.node_key.clone();
        let request_id = request.request_id;
        let signed = result.clone();
        let job = self
            .cpu
            .try_run_measured(move || {
                let start = Instant::now();
                let signature = sign_query(&key, &signed, &request_id, unix_ns());
                (signature, start.elapsed())
            })
            .map_err(|_| {
                BackendError::Overloaded("signing capacity exhausted, retry later".into())
            })?;
        let ((signature, signing), queued) = job
            .await
            .map_err(|_| BackendError::Internal("query signing failed".into()))?;
        let (timestamp, signature) = signature;
        let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let signed_total = executed.elapsed();
        Ok(QueryReply {
            outcome: result,
            signatures: vec![OwnedNodeSignature {
                timestamp,
                signature,
                identity: self.node_principal,
            }],
            timings: Some(QueryTimings {
                execute_us: micros(executed - started),
                sign_wait_us: micros(signed_total.saturating_sub(signing)),
                sign_queued_us: micros(queued),
                sign_us: micros(signing),
            }),
        })
    }

    fn read_state(&self, request: ReadStateRequest) -> Result<ReadStateReply, BackendError> {
        let paths: Vec<Vec<Vec<u8>>> = request
            .content
            .paths
            .iter()
            .map(|path| path.iter().map(|label| label.to_vec()).collect())
            .collect();
        match request.target {
            ReadStateTarget::Subnet(subnet) => {
                if subnet != self.subnet_id() {
                    return Err(BackendError::NotFound(format!(
                        "subnet {subnet} is not this node's subnet ({})",
                        self.subnet_id()
                    )));
                }
                for path in &paths {
                    match path.first().map(Vec::as_slice) {
                        Some(b"time" | b"subnet" | b"canister_ranges") => {}
                        _ => {
                            return Err(BackendError::NotFound(format!(
                                "path {} cannot be read through the subnet endpoint",
                                show_path(path)
                            )))
                        }
                    }
                }
            }
            ReadStateTarget::Canister(canister) => {
                self.check_canister_paths(&paths, &canister, &request.content.sender)?;
            }
        }
        Ok(ReadStateReply {
            certificate: self.certificate(paths)?,
        })
    }

    /// The interface specification's access rules for a canister read_state.
    fn check_canister_paths(
        &self,
        paths: &[Vec<Vec<u8>>],
        canister: &Principal,
        sender: &Principal,
    ) -> Result<(), BackendError> {
        let mut request_id: Option<&[u8]> = None;
        for path in paths {
            match path.first().map(Vec::as_slice) {
                Some(b"time" | b"subnet" | b"canister_ranges") => {}
                Some(b"canister") => {
                    if path.get(1).map(Vec::as_slice) != Some(canister.as_slice()) {
                        return Err(BackendError::Forbidden(format!(
                            "path {} names another canister than the effective canister id {canister}",
                            show_path(path)
                        )));
                    }
                }
                Some(b"request_status") => {
                    let Some(id) = path.get(1) else {
                        return Err(BackendError::Forbidden(
                            "request_status paths must name a request id".into(),
                        ));
                    };
                    if request_id.is_some_and(|first| first != id.as_slice()) {
                        return Err(BackendError::Forbidden(
                            "a read_state may ask for the status of one request id only".into(),
                        ));
                    }
                    request_id = Some(id);
                    let Ok(id) = <[u8; 32]>::try_from(id.as_slice()) else {
                        continue;
                    };
                    let chain = self.chain.borrow();
                    if let Some(status) = chain.state().statuses.get(&RequestId(id)) {
                        if status.sender != *sender {
                            return Err(BackendError::Forbidden(
                                "the request's sender is not the sender of this read_state".into(),
                            ));
                        }
                        if status.canister != *canister {
                            return Err(BackendError::Forbidden(format!(
                                "the request was not sent to the effective canister id {canister}"
                            )));
                        }
                    }
                }
                _ => {
                    return Err(BackendError::NotFound(format!(
                        "path {} is not in the state tree",
                        show_path(path)
                    )))
                }
            }
        }
        Ok(())
    }
}

fn local_of(config: &ReplicaConfig) -> NodeId {
    config.chain.local
}

/// The subnet's canister range: the built-in canisters' ids.
pub fn canister_ranges() -> Vec<(Principal, Principal)> {
    let ids = Canisters::canister_ids();
    vec![(ids[0], ids[ids.len() - 1])]
}

fn show_path(path: &[Vec<u8>]) -> String {
    let labels: Vec<String> = path
        .iter()
        .map(|label| match std::str::from_utf8(label) {
            Ok(text) if text.chars().all(|c| c.is_ascii_graphic()) => text.to_string(),
            _ => label.iter().map(|b| format!("{b:02x}")).collect(),
        })
        .collect();
    format!("/{}", labels.join("/"))
}

/// Signs a query response with the node's Ed25519 key: the timestamp and the signature.
fn sign_query(
    key: &NodeSigner,
    result: &QueryResult,
    request_id: &RequestId,
    timestamp: u64,
) -> (u64, Vec<u8>) {
    let outcome = match result {
        QueryResult::Replied { arg } => QueryOutcome::Replied { arg },
        QueryResult::Rejected(reject) => QueryOutcome::Rejected(WireReject {
            reject_code: reject.reject_code,
            reject_message: &reject.reject_message,
            error_code: reject.error_code.as_deref(),
        }),
    };
    let message = query_response_signing_bytes(&outcome, timestamp, request_id);
    (timestamp, key.sign(&message).to_vec())
}

/// A node's Ed25519 identity key in the form that signs query responses: the key expanded
/// once (RFC 8032's hash of the seed), so each signature costs one fixed-base scalar
/// multiplication and two SHA-512 passes. Ed25519 signing is deterministic, so the signatures
/// are byte for byte those BoringSSL makes with the same key (a unit test checks this); on
/// this project's VMs this signs in about three quarters of BoringSSL's time, which re-derives
/// the expanded key on every call.
pub struct NodeSigner(ed25519_dalek::SigningKey);

impl NodeSigner {
    /// From the node's identity key (BoringSSL's Ed25519 private key).
    pub fn from_pkey(key: &PKeyRef<Private>) -> Result<NodeSigner, String> {
        let mut seed = [0u8; 32];
        let raw = key
            .raw_private_key(&mut seed)
            .map_err(|e| format!("the node key has no raw Ed25519 seed: {e}"))?;
        if raw.len() != 32 {
            return Err(format!(
                "the node key's raw private key is {} bytes, not an Ed25519 seed of 32",
                raw.len()
            ));
        }
        let signer = NodeSigner(ed25519_dalek::SigningKey::from_bytes(&seed));
        seed.fill(0);
        Ok(signer)
    }

    /// The Ed25519 signature of `message` (64 bytes).
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        use ed25519_dalek::Signer as _;
        self.0.sign(message).to_bytes()
    }
}

/// The HTTP API's view of a replica.
pub struct ReplicaBackend(pub Rc<Replica>);

impl Backend for ReplicaBackend {
    fn status(&self) -> BackendStatus {
        let certified = self.0.certified();
        BackendStatus {
            root_key: Some(self.0.subnet_key.to_der().to_vec()),
            replica_health_status: if certified.is_some() {
                "healthy"
            } else {
                "starting"
            },
            certified_height: certified.map(|c| c.height),
        }
    }

    fn call(&self, request: CallRequest) -> LocalBoxFuture<'_, Result<CallReply, BackendError>> {
        Box::pin(self.0.clone().call(request))
    }

    fn query(&self, request: QueryRequest) -> LocalBoxFuture<'_, Result<QueryReply, BackendError>> {
        Box::pin(self.0.clone().query(request))
    }

    fn read_state(
        &self,
        request: ReadStateRequest,
    ) -> LocalBoxFuture<'_, Result<ReadStateReply, BackendError>> {
        let result = self.0.read_state(request);
        Box::pin(async move { result })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use icn_codecs::ic::{decode_request_envelope, RequestContent};
    use icn_engine::sim::Sim;
    use icn_engine::transport::memory::{MemoryConfig, MemoryNetwork};

    use super::*;
    use crate::http::backend::owned_call;
    use crate::http::testing::{call_envelope, fresh_expiry, TestKey};
    use crate::replica::canisters::counter_canister_id;
    use crate::replica::ingress::ingress_artifact;
    use crate::runtime::SimRuntime;

    #[test]
    fn node_signer_signs_as_boringssl_does_with_the_same_key() {
        use boring::pkey::{Id, PKey};
        use boring::sign::{Signer, Verifier};
        let key = PKey::generate(Id::ED25519).unwrap();
        let signer = NodeSigner::from_pkey(&key).unwrap();
        for message in [&b""[..], b"query response", &[0xa5; 1000]] {
            let ours = signer.sign(message);
            let theirs = Signer::new_without_digest(&key)
                .unwrap()
                .sign_oneshot_to_vec(message)
                .unwrap();
            assert_eq!(ours.as_slice(), theirs.as_slice());
            let verified = Verifier::new_without_digest(&key)
                .unwrap()
                .verify_oneshot(&ours, message)
                .unwrap();
            assert!(verified);
        }
        // A key of another type has no Ed25519 seed.
        let ec = boring::ec::EcKey::generate(
            &boring::ec::EcGroup::from_curve_name(boring::nid::Nid::X9_62_PRIME256V1).unwrap(),
        )
        .unwrap();
        let p256 = PKey::from_ec_key(ec).unwrap();
        assert!(NodeSigner::from_pkey(&p256).is_err());
    }

    /// (the node that penalized, the peer, the offence).
    type PenaltyLog = Rc<RefCell<Vec<(NodeId, NodeId, Offence)>>>;
    /// (the node that answered an ingress fetch, whether it lied).
    type ServeLog = Rc<RefCell<Vec<(NodeId, bool)>>>;

    /// A 4-node subnet in the simulator, over the memory transport, with a real CPU pool. Node
    /// 3 has no ingress gossip routes, so it never receives a call by gossip: it can only
    /// fetch. Nodes 0-2 answer fetches through a wrapper that logs who answered and answers
    /// with a decoy envelope (a validly signed call nobody asked for) while `lies` is above 0.
    struct Subnet {
        sim: Sim,
        _network: MemoryNetwork,
        replicas: Vec<Rc<Replica>>,
        penalties: PenaltyLog,
        served: ServeLog,
        _cpu: Arc<CpuPool>,
    }

    const LACKING: usize = 3;

    fn subnet(lies: u32) -> Subnet {
        let sim = Sim::new(1);
        let network = MemoryNetwork::new(&sim, MemoryConfig::default());
        let runtime: Rc<dyn Runtime> = SimRuntime::new(sim.handle());
        let cpu = Arc::new(CpuPool::new(2, 1024, "fetch-test").unwrap());
        let mut tuning = Tuning::default();
        tuning.replica.block_interval_ms = 20;
        tuning.replica.round_timeout_ms = 300;
        tuning.replica.ingress_fetch_backoff_initial_ms = 10;
        let members: Vec<NodeId> = (1..=4u8).map(|i| NodeId([i; 32])).collect();
        let penalties: PenaltyLog = Rc::default();
        let served: ServeLog = Rc::default();
        let lies = Rc::new(Cell::new(lies));
        let decoy = call_envelope(
            Some(&TestKey::ed25519()),
            false,
            counter_canister_id(),
            "increment",
            b"DIDL\x00\x00",
            fresh_expiry(),
        );
        let mut replicas = Vec::new();
        for (index, local) in members.iter().copied().enumerate() {
            let log = penalties.clone();
            let replica = Replica::new(
                ReplicaConfig::from_tuning(&tuning, local),
                &tuning,
                ReplicaKeys {
                    subnet: SecretKey::from_seed(&[7; 32]),
                    node: NodeSigner::from_pkey(
                        &boring::pkey::PKey::generate(boring::pkey::Id::ED25519).unwrap(),
                    )
                    .unwrap(),
                },
                &members,
                runtime.clone(),
                cpu.clone(),
                Rc::new(move |peer, offence| log.borrow_mut().push((local, peer, offence))),
            );
            let mut router = Router::new();
            for (kind, gossip) in REPLICA_KINDS.iter().zip(&replica.kinds) {
                if index == LACKING && kind.0 == REPLICA_INGRESS {
                    continue;
                }
                router = gossip.gossip.routes(router);
            }
            router = if index == LACKING {
                replica.fetch_route(router)
            } else {
                let server = replica.clone();
                let served = served.clone();
                let lies = lies.clone();
                let decoy = decoy.clone();
                router.route(
                    INGRESS_FETCH_ROUTE,
                    move |ctx: RequestContext, body: Buf| {
                        let lie = lies.get() > 0;
                        lies.set(lies.get().saturating_sub(1));
                        served.borrow_mut().push((local, lie));
                        let result = if lie {
                            Ok(Buf::from_vec(encode_ingress_fetch_response(&[&decoy])))
                        } else {
                            server.serve_ingress_fetch(ctx, body)
                        };
                        async move { result }
                    },
                )
            };
            let transport = Rc::new(network.join(local, router));
            replica.start(transport);
            replicas.push(replica);
        }
        Subnet {
            sim,
            _network: network,
            replicas,
            penalties,
            served,
            _cpu: cpu,
        }
    }

    impl Subnet {
        /// Runs the simulator in step with the wall clock (the chain's rounds follow it, and
        /// the CPU pool's threads wake tasks in real time) until `done` or `limit` passes.
        fn run_until(&mut self, limit: Duration, done: impl Fn(&Subnet) -> bool) -> bool {
            let start = Instant::now();
            while start.elapsed() < limit {
                if done(self) {
                    return true;
                }
                self.sim.run_for(Duration::from_millis(1)).unwrap();
                std::thread::sleep(Duration::from_micros(500));
            }
            done(self)
        }

        /// A signed call accepted by every node but the lacking one, as if gossip never
        /// reached it.
        fn call_missing_on_lacking_node(&self) -> RequestId {
            let envelope = call_envelope(
                Some(&TestKey::ed25519()),
                false,
                counter_canister_id(),
                "increment",
                b"DIDL\x00\x00",
                fresh_expiry(),
            );
            let decoded = decode_request_envelope(&envelope, &IcLimits::default()).unwrap();
            let RequestContent::Call(content) = &decoded.content else {
                panic!("a call")
            };
            for (index, replica) in self.replicas.iter().enumerate() {
                if index == LACKING {
                    continue;
                }
                replica
                    .ingress
                    .borrow_mut()
                    .add_local(
                        decoded.request_id,
                        owned_call(content),
                        Buf::from_vec(envelope.clone()),
                    )
                    .unwrap();
            }
            decoded.request_id
        }

        fn executed(&self, index: usize, id: &RequestId) -> bool {
            self.replicas[index]
                .chain
                .borrow()
                .state()
                .statuses
                .contains_key(id)
        }

        fn stop(mut self) {
            for replica in self.replicas.clone() {
                self.sim
                    .block_on(async move { replica.stop().await })
                    .unwrap();
            }
        }
    }

    #[test]
    fn a_node_that_never_got_a_call_fetches_it_and_executes_the_block() {
        let mut subnet = subnet(0);
        let id = subnet.call_missing_on_lacking_node();
        let executed = subnet.run_until(Duration::from_secs(20), |s| {
            (0..4).all(|index| s.executed(index, &id))
        });
        assert!(executed, "every node executes the call");
        let lacking = subnet.replicas[LACKING].snapshot();
        assert_eq!(lacking.ingress.received, 0, "nothing arrived by gossip");
        assert!(lacking.fetch.requests >= 1);
        assert_eq!(lacking.fetch.received, 1);
        assert_eq!(lacking.fetch.invalid, 0);
        assert_eq!(lacking.fetch_in_flight, 0);
        let served: u64 = subnet.replicas[..LACKING]
            .iter()
            .map(|r| r.snapshot().fetch.served)
            .sum();
        assert!(served >= 1);
        let lacking_id = subnet.replicas[LACKING].config.chain.local;
        assert!(
            !subnet
                .penalties
                .borrow()
                .iter()
                .any(|(by, _, offence)| *by == lacking_id && *offence == Offence::InvalidArtifact),
            "honest answers are not penalized"
        );
        subnet.stop();
    }

    #[test]
    fn a_peer_gossiping_an_unauthentic_call_is_penalized_and_an_expired_one_is_not() {
        let mut subnet = subnet(0);
        let limits = IcLimits::default();
        let gossiped = |expiry: u64, tamper: bool| {
            let mut bytes = call_envelope(
                Some(&TestKey::ed25519()),
                false,
                counter_canister_id(),
                "increment",
                b"DIDL\x00\x00",
                expiry,
            );
            let request_id = decode_request_envelope(&bytes, &limits).unwrap().request_id;
            if tamper {
                // The last byte is the signature's: same call, same id, not authentic.
                let last = bytes.len() - 1;
                bytes[last] ^= 1;
            }
            ingress_artifact(&request_id, expiry, Buf::from_vec(bytes))
        };
        let (sender, receiver) = (subnet.replicas[0].config.chain.local, 1);
        let receiver_id = subnet.replicas[receiver].config.chain.local;
        let expired = gossiped(unix_ns() - 3_600_000_000_000, false);
        let forged = gossiped(fresh_expiry(), true);
        {
            let mut pool = subnet.replicas[receiver].ingress.borrow_mut();
            pool.insert_unvalidated(sender, expired);
            pool.insert_unvalidated(sender, forged);
        }
        subnet.replicas[receiver].wake.notify();
        let checked = subnet.run_until(Duration::from_secs(10), |s| {
            s.replicas[receiver].snapshot().ingress.invalid >= 2
        });
        assert!(checked, "both calls are verified and refused");
        let penalties: Vec<(NodeId, Offence)> = subnet
            .penalties
            .borrow()
            .iter()
            .filter(|(by, _, _)| *by == receiver_id)
            .map(|(_, peer, offence)| (*peer, *offence))
            .collect();
        assert_eq!(penalties, vec![(sender, Offence::InvalidArtifact)]);
        assert_eq!(subnet.replicas[receiver].ingress.borrow().len(), 0);
        subnet.stop();
    }

    #[test]
    fn a_peer_answering_with_the_wrong_envelope_is_penalized_and_another_is_asked() {
        let mut subnet = subnet(1);
        let id = subnet.call_missing_on_lacking_node();
        let executed = subnet.run_until(Duration::from_secs(20), |s| s.executed(LACKING, &id));
        assert!(executed, "the lacking node executes the call after all");
        let served = subnet.served.borrow().clone();
        assert!(served.len() >= 2, "{served:?}");
        let (liar, lied) = served[0];
        assert!(lied);
        let (second, second_lied) = served[1];
        assert!(!second_lied);
        assert_ne!(second, liar, "the retry goes to another peer");
        let lacking_id = subnet.replicas[LACKING].config.chain.local;
        let penalties: Vec<(NodeId, Offence)> = subnet
            .penalties
            .borrow()
            .iter()
            .filter(|(by, _, offence)| *by == lacking_id && *offence == Offence::InvalidArtifact)
            .map(|(_, peer, offence)| (*peer, *offence))
            .collect();
        assert_eq!(penalties, vec![(liar, Offence::InvalidArtifact)]);
        let lacking = subnet.replicas[LACKING].snapshot();
        assert_eq!(lacking.fetch.invalid, 1);
        assert_eq!(lacking.fetch.received, 1);
        subnet.stop();
    }
}
