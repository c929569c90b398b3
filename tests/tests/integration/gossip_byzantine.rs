//! Deterministic simulations of a 7-node subnet with 2 byzantine members on the memory transport:
//! - the *liar* advertises the ids of real artifacts (ones honest nodes produce later), pushes
//!   wrong bytes of the right length for the small ones and serves wrong bytes of the right
//!   length whenever one is fetched from it, alone or in a batch;
//! - the *flooder* fills its slot table up to the advert-byte bound, then keeps sending adverts
//!   past the byte bound, at slot numbers past `peer_slots_max`, larger than any message, and
//!   garbage bodies on the slot-update and fetch routes.
//!
//! The 5 honest nodes run ConsensusManager + ArtifactManager + MemoryPool + PeerManager (its
//! penalty sink wired in). Asserted per seed: every honest artifact reaches every honest node;
//! each honest receiver stays within its bounds while attacked; both bad peers are banned (and
//! reconnect once the ban ends); and every counter equals the faults that reached the node,
//! counted by a tap at the node's transport boundary (a wrapper around its router and its
//! transport), independent of the receiver's logic. `ICN_SIM_SEEDS=N` runs N seeds (default 8);
//! `ICN_SIM_SEED=S` replays one.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use icn_codecs::{CodecLimits, Encoder};
use icn_engine::registry::{NodeRecord, Registry, Subnet, SubnetId};
use icn_engine::sim::{self, Sim, SimHandle, SimRng};
use icn_engine::transport::memory::{
    Delay, LinkFaults, MemoryConfig, MemoryNetwork, MemoryTransport,
};
use icn_engine::{
    Buf, ConnId, NodeId, Priority, RequestContext, Route, Router, RpcError, Transport,
};
use icn_shards::artifact::{Advert, Artifact, ArtifactId, ArtifactKind, ArtifactPool};
use icn_shards::artifact_manager::ArtifactManager;
use icn_shards::consensus_manager::wire::{self, decode_update, encode_update, encode_updates};
use icn_shards::consensus_manager::{
    ConsensusManager, GossipConfig, GossipHandle, OutboundUpdate, UpdateMessage,
};
use icn_shards::peer_manager::{PeerManagerConfig, PeerManagerHandle, RegistrySource};
use icn_shards::pool::{make_artifact, MemoryPool, MemoryPoolConfig};
use icn_shards::runtime::SimRuntime;
use icn_tuning::Tuning;

const NODES: usize = 7;
const HONEST: usize = 5;
const LIAR: usize = 5;
const FLOODER: usize = 6;
const KIND: ArtifactKind = ArtifactKind(1);
const SUBNET: &str = "byzantine";
const MS: Duration = Duration::from_millis(1);
const PEER_SLOTS_MAX: usize = 64;
const PEER_ADVERT_BYTES_MAX: usize = 64 << 10;
const TRACKED_ARTIFACTS_MAX: usize = 512;
/// The flooder's adverts carry the largest id and attributes the codec takes: 1280 bytes each,
/// so 51 of them fit under `PEER_ADVERT_BYTES_MAX` and every advert at a higher slot overflows.
const FLOOD_ID_BYTES: usize = 256;
const FLOOD_ATTRIBUTE_BYTES: usize = 1024;
const FITTING_SLOTS: u64 =
    (PEER_ADVERT_BYTES_MAX / (FLOOD_ID_BYTES + FLOOD_ATTRIBUTE_BYTES)) as u64;
const FLOOD_ROUNDS_MAX: usize = 100;
/// Marks the flooder's garbage bodies so the tap can count them; the first four bytes read as a
/// FlatBuffers root offset far past the end.
const GARBAGE_MARK: &[u8] = b"GARBAGE!";
const BAN: Duration = Duration::from_secs(20);
const ATTACK_PHASE: Duration = Duration::from_secs(3);
const SETTLE_PHASE: Duration = Duration::from_secs(10);

fn tuning() -> Tuning {
    let mut tuning = Tuning::default();
    let gossip = &mut tuning.gossip;
    gossip.download_timeout_initial_ms = 1_000;
    gossip.download_timeout_max_ms = 4_000;
    gossip.retry_backoff_initial_ms = 50;
    gossip.retry_backoff_max_ms = 1_000;
    gossip.peer_slots_max = PEER_SLOTS_MAX;
    gossip.peer_advert_bytes_max = PEER_ADVERT_BYTES_MAX;
    gossip.tracked_artifacts_max = TRACKED_ARTIFACTS_MAX;
    // Every advertised payload (at most 256 KiB) may join a batch, so the liar's batch answers
    // are tested too.
    gossip.fetch_batch_bytes_max = 256 << 10;
    tuning.peers.ban_initial_ms = BAN.as_millis() as u64;
    tuning
}

/// What reached one honest node from the bad ones, counted at its transport boundary.
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
struct Tap {
    /// Slot updates from the liar carrying (wrong) pushed bytes.
    liar_pushes: u64,
    /// Non-empty fetch responses from the liar (always wrong bytes): single fetches, and each
    /// artifact of a batch answer.
    liar_fetch_responses: u64,
    /// Garbage bodies from the flooder, either route.
    garbage: u64,
    /// Decodable flooder updates that break a bound (slot, bytes or size).
    flood_offending_updates: u64,
}

struct Roles {
    liar: NodeId,
    flooder: NodeId,
}

/// Counts what the bad nodes' messages deliver, then hands them to the real routes.
fn tapped_routes(gossip: &GossipHandle, roles: Rc<Roles>, tap: Rc<RefCell<Tap>>) -> Router {
    let inner = gossip.routes(Router::new());
    let artifact_bytes_max = gossip.config().receiver.artifact_bytes_max;
    let mut router = Router::new();
    for route in [
        wire::slot_update_route(KIND),
        wire::fetch_route(KIND),
        wire::fetch_batch_route(KIND),
    ] {
        let handler = inner.handler(route).expect("gossip route");
        let (roles, tap) = (roles.clone(), tap.clone());
        router = router.route(route, move |ctx: RequestContext, body: Buf| {
            count_inbound(
                &ctx,
                &body,
                &roles,
                &mut tap.borrow_mut(),
                artifact_bytes_max,
            );
            handler(ctx, body)
        });
    }
    router
}

fn count_inbound(ctx: &RequestContext, body: &Buf, roles: &Roles, tap: &mut Tap, size_max: u64) {
    if body.starts_with(GARBAGE_MARK) {
        tap.garbage += u64::from(ctx.peer == roles.flooder);
        return;
    }
    if ctx.route != wire::slot_update_route(KIND) {
        return;
    }
    let Ok(update) = decode_update(body, KIND, &CodecLimits::default()) else {
        return;
    };
    if ctx.peer == roles.liar && matches!(update.message, UpdateMessage::Push(_)) {
        tap.liar_pushes += 1;
    }
    if ctx.peer == roles.flooder {
        let too_large = match &update.message {
            UpdateMessage::Advert(advert) => advert.size_bytes > size_max,
            _ => false,
        };
        let offending =
            update.slot >= PEER_SLOTS_MAX as u64 || too_large || update.slot >= FITTING_SLOTS;
        tap.flood_offending_updates += u64::from(offending);
    }
}

/// An honest node's transport as its consensus manager sees it: counts the liar's responses.
struct TappedTransport {
    inner: Rc<MemoryTransport>,
    liar: NodeId,
    tap: Rc<RefCell<Tap>>,
    /// The honest node's bound on a batch answer (it decodes with the same one).
    batch_bytes_max: u64,
}

impl Transport for TappedTransport {
    fn local_id(&self) -> NodeId {
        self.inner.local_id()
    }

    async fn rpc(
        &self,
        peer: NodeId,
        route: Route,
        priority: Priority,
        request: Buf,
    ) -> Result<Buf, RpcError> {
        let asked = (route == wire::fetch_batch_route(KIND))
            .then(|| wire::decode_fetch_batch(&request, KIND, &CodecLimits::default()))
            .and_then(Result::ok)
            .map_or(0, |ids| ids.len());
        let result = self.inner.rpc(peer, route, priority, request).await;
        let (Ok(body), true) = (&result, peer == self.liar) else {
            return result;
        };
        let wrong = if route == wire::fetch_route(KIND) {
            u64::from(!body.is_empty())
        } else if route == wire::fetch_batch_route(KIND) {
            let limits = CodecLimits::default();
            wire::decode_batch_answer(body, asked, &limits, self.batch_bytes_max).map_or(
                0,
                |items| {
                    let sent = items.iter().flatten().filter(|item| !item.is_empty());
                    sent.count() as u64
                },
            )
        } else {
            0
        };
        self.tap.borrow_mut().liar_fetch_responses += wrong;
        result
    }

    fn peers(&self) -> Vec<(NodeId, ConnId)> {
        self.inner.peers()
    }
}

struct Honest {
    id: NodeId,
    pool: Rc<RefCell<MemoryPool>>,
    gossip: GossipHandle,
    manager: ArtifactManager,
    peers: PeerManagerHandle,
    tap: Rc<RefCell<Tap>>,
}

fn start_honest(
    id: NodeId,
    sim: &SimHandle,
    network: &MemoryNetwork,
    registry: &RegistrySource,
    roles: &Rc<Roles>,
) -> Honest {
    let tuning = tuning();
    let pool = Rc::new(RefCell::new(MemoryPool::new(MemoryPoolConfig {
        kind: KIND,
        relay: true,
        latency_sensitive: false,
        heights_kept: 1_000_000,
    })));
    let runtime = SimRuntime::new(sim.clone());
    let peers = PeerManagerHandle::new(
        PeerManagerConfig::from_tuning(&tuning.peers),
        id,
        SubnetId(SUBNET.into()),
        registry.clone(),
        runtime.clone(),
    );
    let dyn_pool: Rc<RefCell<dyn ArtifactPool>> = pool.clone();
    let gossip = ConsensusManager::new(
        GossipConfig::from_tuning(&tuning, Priority::Normal),
        runtime,
        dyn_pool,
        peers.penalty_sink(),
    );
    let tap = Rc::new(RefCell::new(Tap::default()));
    let router = tapped_routes(&gossip, roles.clone(), tap.clone());
    let transport = Rc::new(network.join(id, router));
    gossip.start(Rc::new(TappedTransport {
        inner: transport.clone(),
        liar: roles.liar,
        tap: tap.clone(),
        batch_bytes_max: gossip.config().receiver.fetch_batch_bytes_max,
    }));
    peers.start(transport);
    let manager = ArtifactManager::start(gossip.clone(), 64, Duration::from_millis(20));
    Honest {
        id,
        pool,
        gossip,
        manager,
        peers,
        tap,
    }
}

/// The liar's view: the real adverts it lies about, and what it managed to send.
#[derive(Default)]
struct LiarState {
    lies: HashMap<ArtifactId, Advert>,
    pushes_answered: Cell<u64>,
    fetches_served: Cell<u64>,
}

/// Wrong bytes of the right length: every byte of the real payload flipped.
fn wrong_bytes(real: &Buf, offset: u64, length: u64) -> Buf {
    let start = offset.min(real.len() as u64) as usize;
    let end = if length == 0 {
        real.len()
    } else {
        (start + length as usize).min(real.len())
    };
    Buf::from_vec(real[start..end].iter().map(|byte| !byte).collect())
}

fn liar_router(state: Rc<LiarState>, payloads: Rc<HashMap<ArtifactId, Buf>>) -> Router {
    let (batch_state, batch_payloads) = (state.clone(), payloads.clone());
    Router::new()
        .route(wire::slot_update_route(KIND), |_ctx, _body: Buf| async {
            Ok(Buf::empty())
        })
        .route(wire::fetch_route(KIND), move |_ctx, body: Buf| {
            let request = wire::decode_fetch(&body, KIND, &CodecLimits::default());
            let served = request.ok().and_then(|request| {
                let real = payloads.get(&request.id)?;
                state.fetches_served.set(state.fetches_served.get() + 1);
                Some(wrong_bytes(real, request.offset, request.length))
            });
            async move { served.ok_or_else(|| RpcError::Handler("not advertised".into())) }
        })
        .route(wire::fetch_batch_route(KIND), move |_ctx, body: Buf| {
            let answer = wire::decode_fetch_batch(&body, KIND, &CodecLimits::default())
                .map_err(|error| RpcError::PeerMisbehaved(error.to_string()))
                .and_then(|ids| {
                    let wrong: Vec<Option<Buf>> = ids
                        .iter()
                        .map(|id| {
                            let real = batch_payloads.get(id)?;
                            let served = &batch_state.fetches_served;
                            served.set(served.get() + 1);
                            Some(wrong_bytes(real, 0, 0))
                        })
                        .collect();
                    let mut encoder = Encoder::new(CodecLimits::default());
                    wire::encode_batch_answer(&mut encoder, &wrong)
                        .map_err(|error| RpcError::Handler(error.to_string()))
                });
            async move { answer }
        })
}

/// Sends every lie to `peer` until the peer shuts it out: the adverts together in one request
/// (so that the peer's downloads from the liar start together and go out as batches), then the
/// pushes one update at a time.
async fn lie_to(
    transport: Rc<MemoryTransport>,
    peer: NodeId,
    lies: Vec<Artifact>,
    state: Rc<LiarState>,
    push_threshold_bytes: usize,
) {
    let mut encoder = Encoder::new(CodecLimits::default());
    let route = wire::slot_update_route(KIND);
    let (mut adverts, mut pushes) = (Vec::new(), Vec::new());
    for (slot, artifact) in lies.into_iter().enumerate() {
        let pushed = artifact.payload.len() < push_threshold_bytes;
        let message = if pushed {
            let payload = wrong_bytes(&artifact.payload, 0, 0);
            UpdateMessage::Push(Artifact {
                advert: artifact.advert,
                payload,
            })
        } else {
            UpdateMessage::Advert(artifact.advert)
        };
        let update = OutboundUpdate {
            peer,
            conn: ConnId(0),
            slot: slot as u64,
            commit_id: slot as u64 + 1,
            message,
        };
        if pushed {
            pushes.push(update);
        } else {
            adverts.push(update);
        }
    }
    if !adverts.is_empty() {
        let body = encode_updates(&mut encoder, KIND, &adverts).expect("encodable");
        if transport
            .rpc(peer, route, Priority::Normal, body)
            .await
            .is_err()
        {
            return;
        }
    }
    for update in pushes {
        let body = encode_update(&mut encoder, KIND, &update).expect("encodable");
        match transport.rpc(peer, route, Priority::Normal, body).await {
            Ok(_) => state.pushes_answered.set(state.pushes_answered.get() + 1),
            Err(_) => return,
        }
    }
}

/// One flood message kind; each round sends one of each breaking kind in a seeded order.
#[derive(Clone, Copy, Debug)]
enum Flood {
    PastByteBound,
    PastSlotBound,
    TooLarge,
    GarbageUpdate,
    GarbageFetch,
}

/// A flood advert: the largest id and attributes the codec takes, random id.
fn flood_advert(rng: &mut SimRng, size_bytes: u64) -> Advert {
    let id: Vec<u8> = (0..FLOOD_ID_BYTES).map(|_| rng.next_u64() as u8).collect();
    Advert {
        id: ArtifactId::from_slice(&id),
        attributes: vec![0xa5; FLOOD_ATTRIBUTE_BYTES][..].into(),
        size_bytes,
    }
}

/// The flooder's counts of what it sent to one peer and got answered.
#[derive(Default, Debug, Clone, Copy)]
struct FloodSent {
    messages: u64,
}

async fn flood(
    sim: SimHandle,
    transport: Rc<MemoryTransport>,
    peer: NodeId,
    mut rng: SimRng,
    sent: Rc<RefCell<BTreeMap<NodeId, FloodSent>>>,
) {
    let mut encoder = Encoder::new(CodecLimits::default());
    let mut commit_id = 0u64;
    let send = async |transport: &MemoryTransport, route: Route, body: Buf| {
        sent.borrow_mut().entry(peer).or_default().messages += 1;
        transport.rpc(peer, route, Priority::Normal, body).await
    };
    let update_route = wire::slot_update_route(KIND);
    for slot in 0..FITTING_SLOTS {
        commit_id += 1;
        let update = OutboundUpdate {
            peer,
            conn: ConnId(0),
            slot,
            commit_id,
            message: UpdateMessage::Advert(flood_advert(&mut rng, 4096)),
        };
        let body = encode_update(&mut encoder, KIND, &update).expect("encodable");
        if let Err(RpcError::NotConnected(_) | RpcError::ConnectionClosed) =
            send(&transport, update_route, body).await
        {
            return;
        }
    }
    let mut kinds = [
        Flood::PastByteBound,
        Flood::PastSlotBound,
        Flood::TooLarge,
        Flood::GarbageUpdate,
        Flood::GarbageFetch,
    ];
    for _ in 0..FLOOD_ROUNDS_MAX {
        for i in (1..kinds.len()).rev() {
            kinds.swap(i, rng.range_inclusive(0, i as u64) as usize);
        }
        for kind in kinds {
            commit_id += 1;
            let (route, body) = match kind {
                Flood::GarbageUpdate | Flood::GarbageFetch => {
                    let mut body = GARBAGE_MARK.to_vec();
                    body.extend((0..rng.range_inclusive(0, 64)).map(|_| rng.next_u64() as u8));
                    let route = if matches!(kind, Flood::GarbageUpdate) {
                        update_route
                    } else {
                        wire::fetch_route(KIND)
                    };
                    (route, Buf::from_vec(body))
                }
                _ => {
                    let (slot, size_bytes) = match kind {
                        Flood::PastByteBound => (
                            rng.range_inclusive(FITTING_SLOTS, PEER_SLOTS_MAX as u64 - 1),
                            4096,
                        ),
                        Flood::PastSlotBound => {
                            (rng.range_inclusive(PEER_SLOTS_MAX as u64, 1 << 40), 4096)
                        }
                        _ => (rng.range_inclusive(0, FITTING_SLOTS - 1), u64::MAX / 2),
                    };
                    let update = OutboundUpdate {
                        peer,
                        conn: ConnId(0),
                        slot,
                        commit_id,
                        message: UpdateMessage::Advert(flood_advert(&mut rng, size_bytes)),
                    };
                    let body = encode_update(&mut encoder, KIND, &update).expect("encodable");
                    (update_route, body)
                }
            };
            if let Err(RpcError::NotConnected(_) | RpcError::ConnectionClosed) =
                send(&transport, route, body).await
            {
                return;
            }
        }
        sim.sleep(20 * MS).await;
    }
}

fn registry(ids: &[NodeId]) -> Arc<Registry> {
    let nodes = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let addr = SocketAddr::from(([127, 0, 0, 1], 6000 + i as u16));
            NodeRecord {
                node_id: *id,
                cert_pem: None,
                quic_addr: addr,
                tcp_addr: addr,
                http_addr: None,
                metrics_addr: None,
            }
        })
        .collect();
    let subnet = Subnet {
        id: SubnetId(SUBNET.into()),
        public_key: None,
        nodes,
    };
    Arc::new(Registry::new(1, vec![subnet]).expect("valid registry"))
}

/// Payload sizes: pushed (< 1 KiB) or advertised, all fetched in one piece (below the chunking
/// threshold), so that each wrong response is exactly one failed content check.
fn draw_payload(rng: &mut SimRng) -> Buf {
    let size = match rng.range_inclusive(0, 9) {
        0..=5 => rng.range_inclusive(16, 900),
        _ => rng.range_inclusive(2_000, 256 << 10),
    } as usize;
    Buf::from_vec((0..size).map(|_| rng.next_u64() as u8).collect())
}

/// Highest bound use seen on one honest node while it was attacked.
#[derive(Default, Debug)]
struct BoundsSeen {
    tracked_max: usize,
    flooder_slots_max: usize,
    flooder_advert_bytes_max: usize,
}

struct Outcome {
    artifacts: usize,
    taps: Vec<Tap>,
    trace_hash: u64,
}

fn run_seed(seed: u64) -> Result<Outcome, String> {
    let mut sim = Sim::new(seed);
    let handle = sim.handle();
    let mut rng = SimRng::new(seed ^ 0xb12a_7115);
    let ids: Vec<NodeId> = (0..NODES)
        .map(|_| {
            let mut bytes = [0u8; 32];
            for chunk in bytes.chunks_mut(8) {
                chunk.copy_from_slice(&rng.next_u64().to_le_bytes());
            }
            NodeId(bytes)
        })
        .collect();
    let network = MemoryNetwork::new(
        &sim,
        MemoryConfig {
            rpc_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(3),
            ..MemoryConfig::default()
        },
    );
    network.set_faults(LinkFaults {
        loss_probability: 0.0,
        delay: Delay::Uniform {
            min: Duration::ZERO,
            max: Duration::from_micros(rng.range_inclusive(0, 3_000)),
        },
    });
    let scenario = run_scenario(handle, network.clone(), ids, rng);
    let outcome = sim
        .block_on(scenario)
        .map_err(|error| format!("simulation error: {error}"))??;
    Ok(Outcome {
        trace_hash: network.trace_hash(),
        ..outcome
    })
}

async fn run_scenario(
    sim: SimHandle,
    network: MemoryNetwork,
    ids: Vec<NodeId>,
    mut rng: SimRng,
) -> Result<Outcome, String> {
    let current = registry(&ids);
    let source: RegistrySource = Rc::new(move || current.clone());
    let roles = Rc::new(Roles {
        liar: ids[LIAR],
        flooder: ids[FLOODER],
    });
    let mut honest: Vec<Honest> = ids[..HONEST]
        .iter()
        .map(|id| start_honest(*id, &sim, &network, &source, &roles))
        .collect();
    // Artifacts honest nodes will produce after the attack; the liar lies about them first.
    let planned: Vec<(usize, Artifact)> = (0..rng.range_inclusive(8, 20))
        .map(|i| {
            let producer = rng.range_inclusive(0, HONEST as u64 - 1) as usize;
            (producer, make_artifact(1_000 + i, draw_payload(&mut rng)))
        })
        .collect();
    let liar_state = Rc::new(LiarState {
        lies: planned
            .iter()
            .map(|(_, a)| (a.id().clone(), a.advert.clone()))
            .collect(),
        ..LiarState::default()
    });
    let payloads: Rc<HashMap<ArtifactId, Buf>> = Rc::new(
        planned
            .iter()
            .map(|(_, a)| (a.id().clone(), a.payload.clone()))
            .collect(),
    );
    let liar = Rc::new(network.join(ids[LIAR], liar_router(liar_state.clone(), payloads)));
    let flooder = Rc::new(network.join(ids[FLOODER], Router::new()));
    let push_threshold_bytes = tuning().gossip.push_threshold_bytes;
    let flood_sent = Rc::new(RefCell::new(BTreeMap::new()));
    let mut attackers = Vec::new();
    for node in &honest {
        let lies: Vec<Artifact> = planned.iter().map(|(_, a)| a.clone()).collect();
        let lie = lie_to(
            liar.clone(),
            node.id,
            lies,
            liar_state.clone(),
            push_threshold_bytes,
        );
        attackers.push(sim.spawn(lie));
        let flood_rng = SimRng::new(rng.next_u64());
        let flood = flood(
            sim.clone(),
            flooder.clone(),
            node.id,
            flood_rng,
            flood_sent.clone(),
        );
        attackers.push(sim.spawn(flood));
    }
    // While attacked, the honest nodes keep producing (ids the liar does not know).
    let mut bounds: Vec<BoundsSeen> = honest.iter().map(|_| BoundsSeen::default()).collect();
    let mut background = 0u64;
    let mut tick = 0u64;
    while sim.now() < ATTACK_PHASE {
        tick += 1;
        if tick % 20 == 1 {
            let producer = &honest[rng.range_inclusive(0, HONEST as u64 - 1) as usize];
            let artifact = make_artifact(background, draw_payload(&mut rng));
            producer.pool.borrow_mut().produce(artifact, sim.now());
            producer.manager.poke();
            background += 1;
        }
        for (node, seen) in honest.iter().zip(&mut bounds) {
            observe_bounds(node, roles.flooder, seen)?;
        }
        sim.sleep(10 * MS).await;
    }
    for attacker in attackers {
        attacker
            .await
            .map_err(|error| format!("attacker task: {error:?}"))?;
    }
    for (producer, artifact) in &planned {
        honest[*producer]
            .pool
            .borrow_mut()
            .produce(artifact.clone(), sim.now());
        honest[*producer].manager.poke();
    }
    sim.sleep(SETTLE_PHASE).await;
    let checked = check(&honest, &roles, &bounds, &liar_state, &flood_sent.borrow());
    // The bans end and the bad nodes are connected again (they have stopped misbehaving).
    sim.sleep(BAN).await;
    let reconnected = checked.and_then(|artifacts| {
        for node in &honest {
            for bad in [roles.liar, roles.flooder] {
                if network.connection(node.id, bad).is_none() || !node.peers.is_allowed(bad) {
                    return Err(format!(
                        "node {} still refuses {bad} after its ban",
                        node.id
                    ));
                }
            }
        }
        Ok(artifacts)
    });
    for node in &mut honest {
        node.manager.stop().await;
        node.gossip.stop().await;
        node.peers.stop().await;
    }
    Ok(Outcome {
        artifacts: reconnected?,
        taps: honest.iter().map(|node| *node.tap.borrow()).collect(),
        trace_hash: 0,
    })
}

fn observe_bounds(node: &Honest, flooder: NodeId, seen: &mut BoundsSeen) -> Result<(), String> {
    let stats = node.gossip.stats();
    let slots = node.gossip.peer_slots(flooder);
    let advert_bytes = node.gossip.peer_advert_bytes(flooder);
    if stats.artifacts_tracked > TRACKED_ARTIFACTS_MAX
        || slots > PEER_SLOTS_MAX
        || advert_bytes > PEER_ADVERT_BYTES_MAX
    {
        return Err(format!(
            "node {} over its bounds: tracked {}, flooder slots {slots}, advert bytes \
             {advert_bytes}",
            node.id, stats.artifacts_tracked
        ));
    }
    seen.tracked_max = seen.tracked_max.max(stats.artifacts_tracked);
    seen.flooder_slots_max = seen.flooder_slots_max.max(slots);
    seen.flooder_advert_bytes_max = seen.flooder_advert_bytes_max.max(advert_bytes);
    Ok(())
}

fn check(
    honest: &[Honest],
    roles: &Roles,
    bounds: &[BoundsSeen],
    liar: &LiarState,
    flood_sent: &BTreeMap<NodeId, FloodSent>,
) -> Result<usize, String> {
    let mut expected: BTreeSet<ArtifactId> = BTreeSet::new();
    for node in honest {
        expected.extend(node.pool.borrow().validated_ids().cloned());
    }
    if !liar.lies.keys().all(|id| expected.contains(id)) {
        return Err("an artifact the liar lied about was never produced".into());
    }
    let honest_ids: BTreeSet<NodeId> = honest.iter().map(|node| node.id).collect();
    let (mut pushes, mut responses) = (0, 0);
    for (node, seen) in honest.iter().zip(bounds) {
        let held: BTreeSet<ArtifactId> = node.pool.borrow().validated_ids().cloned().collect();
        let missing = expected.difference(&held).count();
        let name = node.id;
        if missing > 0 {
            return Err(format!(
                "node {name} misses {missing} of {}",
                expected.len()
            ));
        }
        let tap = *node.tap.borrow();
        let stats = node.gossip.stats();
        let liar_health = node.peers.health(roles.liar).ok_or("liar not a member")?;
        let flooder_health = node
            .peers
            .health(roles.flooder)
            .ok_or("flooder not a member")?;
        let wrong = tap.liar_pushes + tap.liar_fetch_responses;
        let equal = [
            ("invalid artifacts", stats.receiver.invalid_artifacts, wrong),
            (
                "liar invalid penalties",
                liar_health.penalties.invalid_artifact,
                wrong,
            ),
            (
                "undecodable messages",
                stats.undecodable_messages,
                tap.garbage,
            ),
            (
                "flooder bad-message penalties",
                flooder_health.penalties.bad_message,
                tap.garbage,
            ),
            (
                "protocol offences",
                stats.receiver.protocol_offences,
                tap.flood_offending_updates,
            ),
            (
                "flooder bound penalties",
                flooder_health.penalties.slot_table_overflow
                    + flooder_health.penalties.artifact_too_large,
                tap.flood_offending_updates,
            ),
        ];
        for (what, counted, injected) in equal {
            if counted != injected {
                return Err(format!(
                    "node {name}: {what} {counted} != faults that reached it {injected} ({tap:?})"
                ));
            }
        }
        if liar_health.bans == 0 || flooder_health.bans == 0 {
            return Err(format!("node {name} did not ban both bad peers"));
        }
        for peer in &honest_ids {
            if let Some(health) = node.peers.health(*peer) {
                if health.penalties.total() != 0 || health.bans != 0 {
                    return Err(format!("node {name} penalized honest {peer}: {health:?}"));
                }
            }
        }
        let peer_stats = node.peers.stats();
        if peer_stats.penalties_unknown_peer_total != 0 || peer_stats.peers_banned != 2 {
            return Err(format!("node {name} peer stats {peer_stats:?}"));
        }
        // The flood reached the bounds without passing them.
        if seen.flooder_slots_max != FITTING_SLOTS as usize
            || seen.flooder_advert_bytes_max + FLOOD_ID_BYTES + FLOOD_ATTRIBUTE_BYTES
                <= PEER_ADVERT_BYTES_MAX
        {
            return Err(format!(
                "node {name}: the flood never reached the bounds: {seen:?}"
            ));
        }
        if tap.garbage == 0 || tap.flood_offending_updates == 0 || wrong == 0 {
            return Err(format!("node {name}: a fault never struck: {tap:?}"));
        }
        let sent = flood_sent.get(&name).map_or(0, |sent| sent.messages);
        if tap.garbage + tap.flood_offending_updates > sent {
            return Err(format!("node {name}: more flood arrived than was sent"));
        }
        pushes += tap.liar_pushes;
        responses += tap.liar_fetch_responses;
    }
    if pushes > liar.pushes_answered.get() + honest.len() as u64
        || responses > liar.fetches_served.get()
    {
        return Err("more lies arrived than the liar sent".into());
    }
    Ok(expected.len())
}

fn seeds() -> Vec<u64> {
    if let Ok(text) = std::env::var(sim::SEED_ENV) {
        return vec![sim::test_seed(text.trim().parse().unwrap_or(0))];
    }
    let count = std::env::var("ICN_SIM_SEEDS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(8u64);
    (1..=count).collect()
}

#[test]
fn honest_nodes_deliver_everything_and_ban_byzantine_peers() {
    let _heavy = icn_tests::heavy_test_lock();
    let (mut artifacts, mut total) = (0, Tap::default());
    for seed in seeds() {
        match run_seed(seed) {
            Ok(outcome) => {
                artifacts += outcome.artifacts;
                for tap in outcome.taps {
                    total.liar_pushes += tap.liar_pushes;
                    total.liar_fetch_responses += tap.liar_fetch_responses;
                    total.garbage += tap.garbage;
                    total.flood_offending_updates += tap.flood_offending_updates;
                }
            }
            Err(error) => panic!(
                "[gossip-byzantine] seed {seed} failed (replay: {}={seed}): {error}",
                sim::SEED_ENV
            ),
        }
    }
    println!(
        "[gossip-byzantine] {artifacts} artifacts delivered to all honest nodes; faults: {total:?}"
    );
}

#[test]
fn a_byzantine_seed_replays_exactly() {
    let _heavy = icn_tests::heavy_test_lock();
    let first = run_seed(3).unwrap();
    let second = run_seed(3).unwrap();
    assert_eq!(first.artifacts, second.artifacts);
    assert_eq!(first.taps, second.taps);
    assert_eq!(first.trace_hash, second.trace_hash);
}
