//! `icn node`: one node on glommio shards. The home shard (0) runs the services: its transport
//! endpoint serving the built-in routes, P2P, state sync and the reference replica, the admin
//! HTTP server (/metrics, /health) on its registry `metrics_addr`, the public HTTP API on its
//! registry `http_addr` (in front of the replica, or `NoReplica` without the subnet key), a
//! registry watcher applying new versions, and a metrics publisher.
//!
//! With QUIC the node runs `engine.shard_count` shards (0: one per core) on one steered UDP port
//! (`icn_engine::transport::quic_shards`): every other shard runs the QUIC endpoint of the peers
//! it owns and its own metrics, and forwards their requests to the home shard. Every shard also
//! serves the public HTTP API on the same `http_addr` (one SO_REUSEPORT listener each, the
//! kernel spreading connections over them); the other shards hand their backend calls to the
//! home shard's replica (`http::remote`). TCP runs on the home shard alone (its connections
//! cannot be steered by content).

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io::Write as _;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures_lite::future::or;
use icn_engine::config::PortSharing;
use icn_engine::http_admin::{AdminConfig, AdminHandlers, AdminServer, Health};
use icn_engine::identity::{Identity, IdentityError};
use icn_engine::metrics::{
    MetricsCollector, MetricsConfig, MetricsError, MetricsSchemaBuilder, ShardMetrics,
};
use icn_engine::registry::{Registry, RegistryError, RegistryWatcher, SubnetId};
use icn_engine::shard::{run_shards, ShardConfig, ShardContext, Shutdown};
use icn_engine::tls::{self, SharedRegistry};
use icn_engine::transport::quic::{QuicConfig, QuicTransport, Steering};
use icn_engine::transport::quic_shards::{
    forwarding_router, run_owner_shard, QuicShardsShared, ShardMessage, HOME_SHARD,
};
use icn_engine::udp::{BoundSocket, SteeredPort, UdpConfig};
use icn_engine::{Buf, NodeId, RequestContext, Route, Router, RpcError};
use icn_tuning::{HttpTuning, LoadError, Tuning};

use crate::consensus_manager::driver::PenaltySink;
use crate::consensus_manager::Offence;
use crate::http::remote::{HomeBackend, RemoteBackend, StatusBoard};
use crate::http::tls::api_tls_context;
use crate::http::{
    system_clock, BackendStatus, CpuPool, HttpDeps, HttpMetricIds, HttpMetrics, HttpServer,
    NoReplica,
};
use crate::node_config::{NodeConfig, TransportKind};
use crate::node_metrics::{NodeMetricIds, ServiceMetrics, StatsSampler};
use crate::node_transport::{own_record, quic_peers, NodeTransport, QuicHome, StartError};
use crate::p2p::{P2p, HEIGHTS_KEPT_DEFAULT};
use crate::p2p_metrics::{P2pMetricIds, P2pSampler};
use crate::peer_manager::driver::{PeerManagerHandle, RegistrySource};
use crate::peer_manager::PeerManagerConfig;
use crate::replica::checkpoint::run_replica_checkpoints;
use crate::replica::driver::{NodeSigner, Replica, ReplicaBackend, ReplicaConfig, ReplicaKeys};
use crate::replica::metrics::{ReplicaMetricIds, ReplicaSampler};
use crate::runtime::{GlommioRuntime, Runtime};
use crate::state_sync::driver::{FileIo, StateSync, StateSyncConfig};
use crate::state_sync::metrics::{StateSyncMetricIds, StateSyncSampler};
use crate::state_sync::progress::console_sink;
use crate::state_sync::reference::run_reference_state;
use crate::state_sync::store::CheckpointStore;

/// Route 1: answers with the request itself.
pub const ROUTE_ECHO: Route = Route(1);
/// Route 2: consumes the request and answers with its length (8 bytes, little endian): load
/// that moves data one way.
pub const ROUTE_SINK: Route = Route(2);
/// Length of a [`ROUTE_SINK`] answer.
pub const SINK_RESPONSE_BYTES: usize = 8;

/// Penalty log lines a node prints (a misbehaving peer must not flood the log).
const PENALTY_LOG_LINES_MAX: usize = 100;

/// Time the node's own tasks get to finish after the transport closed, before they are
/// cancelled. Part of the 1 s stop budget: the shutdown poll (50 ms) plus QUIC's goodbye flush.
const TASK_JOIN_GRACE: Duration = Duration::from_millis(200);

/// Why a node could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{0}")]
    Tuning(#[from] LoadError),
    #[error("identity in {dir}: {source}")]
    Identity { dir: PathBuf, source: IdentityError },
    #[error("registry: {0}")]
    Registry(#[from] RegistryError),
    #[error("{0}")]
    Start(#[from] StartError),
    #[error("metrics: {0}")]
    Metrics(#[from] MetricsError),
    #[error("admin server on {addr}: {source}")]
    Admin {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("HTTP API on {addr}: {source}")]
    Http {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("shard runtime: {0}")]
    Shards(#[from] icn_engine::shard::ShardError),
    #[error("QUIC port {addr} for {shards} shards: {source}")]
    QuicPort {
        addr: std::net::SocketAddr,
        shards: usize,
        source: std::io::Error,
    },
    #[error("{0}")]
    Workload(String),
    #[error("subnet key: {0}")]
    SubnetKey(String),
    #[error("node key for query responses: {0}")]
    NodeKey(String),
    #[error("state directory {dir}: {source}")]
    State {
        dir: PathBuf,
        source: std::io::Error,
    },
}

/// The tuning profile a config names, or the compiled defaults.
pub fn load_tuning(profile: Option<&std::path::Path>) -> Result<Tuning, LoadError> {
    match profile {
        Some(path) => Tuning::load(path),
        None => Ok(Tuning::default()),
    }
}

/// Everything the home shard needs, loaded before any shard starts (errors surface before any
/// thread exists).
struct NodeParts {
    config: NodeConfig,
    tuning: Tuning,
    identity: Arc<Identity>,
    watcher: RegistryWatcher,
    /// The HTTP API's decode-and-verify pool, node-wide (every shard's server shares it), when
    /// the node's registry entry has an `http_addr`.
    http_pool: Option<Arc<CpuPool>>,
    metrics: MetricsParts,
    /// The home shard's part of a QUIC transport over several shards.
    quic: Option<HomeQuicParts>,
    /// What the shards serving the API share, when several do.
    api: Option<ApiShared>,
}

/// What the shards serving the public HTTP API share when a QUIC node runs several shards:
/// each binds `addr` (SO_REUSEPORT, the kernel spreads connections over them) with the
/// `[http]` limits, which are per shard; all use the node's verification pool, and the
/// shards other than home hand their backend calls to the home shard (`http::remote`).
#[derive(Clone)]
struct ApiShared {
    addr: std::net::SocketAddr,
    pool: Arc<CpuPool>,
    status: StatusBoard,
}

/// The node's metrics schema, shared by its shards, and the ids of its families.
#[derive(Clone)]
struct MetricsParts {
    schema: Arc<icn_engine::metrics::MetricsSchema>,
    collector: Arc<MetricsCollector>,
    ids: NodeMetricIds,
    p2p: P2pMetricIds,
    sync: StateSyncMetricIds,
    http: HttpMetricIds,
    replica: ReplicaMetricIds,
    publish_interval: Duration,
}

impl MetricsParts {
    fn declare(tuning: &Tuning, kind: TransportKind, shards: usize) -> Result<Self, NodeError> {
        let mut builder = MetricsSchemaBuilder::new(MetricsConfig::from_tuning(&tuning.metrics))?;
        let ids = NodeMetricIds::declare(&mut builder, kind)?;
        let p2p = P2pMetricIds::declare(&mut builder)?;
        let sync = StateSyncMetricIds::declare(&mut builder)?;
        let http = HttpMetricIds::declare(&mut builder)?;
        let replica = ReplicaMetricIds::declare(&mut builder)?;
        let schema = builder.build();
        let collector = Arc::new(MetricsCollector::new(schema.clone(), shards));
        Ok(MetricsParts {
            schema,
            collector,
            ids,
            p2p,
            sync,
            http,
            replica,
            publish_interval: Duration::from_millis(tuning.metrics.publish_interval_ms),
        })
    }
}

/// The home shard's socket of the node's steered QUIC port, and what the shards share.
struct HomeQuicParts {
    socket: BoundSocket,
    shared: Arc<QuicShardsShared>,
    registry: SharedRegistry,
}

/// What a shard other than the home shard needs to run its QUIC endpoint.
struct QuicShardParts {
    socket: BoundSocket,
    identity: Arc<Identity>,
    registry: SharedRegistry,
    subnet: SubnetId,
    config: QuicConfig,
    shared: Arc<QuicShardsShared>,
    metrics: MetricsParts,
    /// The node's HTTP tuning and the API's shared parts, when this node serves the API.
    api: Option<(HttpTuning, ApiShared)>,
}

/// How many shards a node of `transport` runs: QUIC spreads its peers over
/// `engine.shard_count` shards (0: one per core, at most one steered port's worth); TCP runs one.
pub fn node_shards(tuning: &Tuning, transport: TransportKind) -> usize {
    match transport {
        TransportKind::Quic => ShardConfig::from_tuning(&tuning.engine)
            .resolved_shards()
            .clamp(1, icn_engine::udp::STEERED_SHARDS_MAX),
        TransportKind::Tcp => 1,
    }
}

/// Runs the node described by `config` until `shutdown` triggers (or SIGINT/SIGTERM, once
/// `install_signal_handlers` ran).
pub fn run_node(config: &NodeConfig, shutdown: Shutdown) -> Result<(), NodeError> {
    let tuning = load_tuning(config.tuning_profile.as_deref())?;
    if let Some(workload) = &config.workload {
        workload.validate(&tuning).map_err(NodeError::Workload)?;
    }
    if let Some(state) = &config.state {
        state.validate().map_err(NodeError::Workload)?;
        if config.workload.is_none() {
            return Err(NodeError::Workload(
                "a [state] table needs a [workload] table (heights come from its block interval)"
                    .into(),
            ));
        }
    }
    let identity = Identity::load(&config.identity_dir).map_err(|source| NodeError::Identity {
        dir: config.identity_dir.clone(),
        source,
    })?;
    let poll_interval = Duration::from_millis(tuning.registry.poll_interval_ms);
    let watcher = RegistryWatcher::new(&config.registry_path, poll_interval)?;
    let registry = watcher.current();
    let record = own_record(&registry, &config.subnet_id, identity.node_id())?.clone();
    let http_addr = record.http_addr;
    let http_pool = match http_addr {
        Some(addr) => Some(Arc::new(
            CpuPool::new(
                tuning.http.verify_threads_count,
                tuning.http.verify_queue_max,
                "icn-http-verify",
            )
            .map_err(|source| NodeError::Http { addr, source })?,
        )),
        None => None,
    };
    let shards = node_shards(&tuning, config.transport);
    let shard_config = ShardConfig {
        shards,
        ..ShardConfig::from_tuning(&tuning.engine)
    };
    let metrics = MetricsParts::declare(&tuning, config.transport, shards)?;
    let identity = Arc::new(identity);
    let api = match (http_addr, &http_pool) {
        (Some(addr), Some(pool)) if shards > 1 => Some(ApiShared {
            addr,
            pool: pool.clone(),
            // Until the home shard's first copy (within `http::remote::STATUS_REFRESH`).
            status: Arc::new(Mutex::new(BackendStatus {
                replica_health_status: "starting",
                ..BackendStatus::default()
            })),
        }),
        _ => None,
    };
    let mut owners: Vec<Option<QuicShardParts>> = Vec::new();
    let quic = if shards > 1 {
        let addr = record.quic_addr;
        let udp = UdpConfig::from_tuning(&tuning.udp, PortSharing::SharedByShards);
        let mut port =
            SteeredPort::bind(addr, &udp, shards).map_err(|source| NodeError::QuicPort {
                addr,
                shards,
                source,
            })?;
        let local_id = identity.node_id();
        let peers = quic_peers(&registry, &config.subnet_id, local_id);
        let shared = QuicShardsShared::new(shards, peers);
        let shared_registry: SharedRegistry = Arc::new(RwLock::new(registry.clone()));
        for index in 0..shards {
            owners.push((index != HOME_SHARD).then(|| QuicShardParts {
                socket: port.take(index).expect("one socket per shard"),
                identity: identity.clone(),
                registry: shared_registry.clone(),
                subnet: config.subnet_id.clone(),
                config: QuicConfig::from_tuning(&tuning, addr).for_shard(Steering {
                    index,
                    count: shards,
                }),
                shared: shared.clone(),
                metrics: metrics.clone(),
                api: api.clone().map(|api| (tuning.http, api)),
            }));
        }
        Some(HomeQuicParts {
            socket: port.take(HOME_SHARD).expect("one socket per shard"),
            shared,
            registry: shared_registry,
        })
    } else {
        None
    };
    let parts = Arc::new(Mutex::new(Some(NodeParts {
        config: config.clone(),
        tuning,
        identity,
        watcher,
        http_pool,
        metrics,
        quic,
        api,
    })));
    let owners = Arc::new(Mutex::new(owners));
    let results =
        run_shards::<ShardMessage, Result<(), NodeError>, _, _>(&shard_config, shutdown, {
            move |ctx| {
                let ctx = Rc::new(ctx);
                let home = (ctx.index == HOME_SHARD)
                    .then(|| parts.lock().map(|mut p| p.take()).unwrap_or(None))
                    .flatten();
                let owner = owners
                    .lock()
                    .map(|mut o| o.get_mut(ctx.index).and_then(Option::take))
                    .unwrap_or(None);
                async move {
                    match (home, owner) {
                        (Some(parts), _) => run_shard(ctx, parts).await,
                        (None, Some(parts)) => run_quic_shard(ctx, parts).await,
                        (None, None) => Ok(()),
                    }
                }
            }
        })?;
    results.into_iter().collect()
}

/// A shard other than the home shard: the QUIC endpoint of the peers it owns (their requests
/// forwarded to the home shard, the home shard's RPCs to them sent here) and its metrics, until
/// the node stops.
async fn run_quic_shard(
    ctx: Rc<ShardContext<ShardMessage>>,
    parts: QuicShardParts,
) -> Result<(), NodeError> {
    let QuicShardParts {
        socket,
        identity,
        registry,
        subnet,
        config,
        shared,
        metrics,
        api,
    } = parts;
    let verifier = tls::registry_verifier(registry, subnet);
    let server =
        tls::server_context_builder(&identity, verifier.clone()).map_err(StartError::from)?;
    let client = tls::client_context_builder(&identity, verifier).map_err(StartError::from)?;
    let transport = QuicTransport::start_steered(
        identity.node_id(),
        server,
        client,
        config,
        forwarding_router(ctx.clone()),
        shared.allowed(),
        socket,
    )
    .map_err(StartError::from)?;
    let shard_metrics = ShardMetrics::new(metrics.schema.clone(), ctx.index);
    let _api = match api {
        Some((tuning, api)) => Some(start_shard_api(
            &ctx,
            &identity,
            tuning,
            api,
            &metrics,
            &shard_metrics,
        )?),
        None => None,
    };
    let sampler = StatsSampler::for_quic_shard(transport.clone(), &metrics.ids, &shard_metrics);
    let publisher = {
        let shared = shared.clone();
        async move {
            loop {
                shard_metrics.set_registry_peers(shared.allowed().into_keys().collect::<Vec<_>>());
                sampler.sample();
                // A schema mismatch would be a wiring bug here; the scrape keeps the last data.
                let _ = shard_metrics.publish(&metrics.collector);
                glommio::timer::sleep(metrics.publish_interval).await;
            }
        }
    };
    spawn_until_shutdown(&ctx, publisher);
    run_owner_shard(ctx.clone(), transport.clone(), shared).await;
    transport.shutdown().await;
    ctx.join_tasks(TASK_JOIN_GRACE).await;
    Ok(())
}

/// The subnet's BLS key from the node's identity directory, checked against the registry's
/// public key for the subnet: with it (and an API address) the node runs the reference replica;
/// a subnet without a key runs none and its API answers 503.
fn load_subnet_key(
    config: &NodeConfig,
    registry: &Registry,
) -> Result<Option<crate::replica::bls::SecretKey>, NodeError> {
    crate::replica::keys::load_subnet_key(&config.identity_dir, registry, &config.subnet_id)
        .map_err(|e| NodeError::SubnetKey(e.to_string()))
}

/// The node's routes; `metrics` counts every answered request.
pub fn service_router(metrics: Option<ServiceMetrics>) -> Router {
    let echo_metrics = metrics.clone();
    Router::new()
        .route(ROUTE_ECHO, move |ctx: RequestContext, request: Buf| {
            if let Some(m) = &echo_metrics {
                m.served(ctx.route);
            }
            async move { Ok::<Buf, RpcError>(request) }
        })
        .route(ROUTE_SINK, move |ctx: RequestContext, request: Buf| {
            let answer = (request.len() as u64).to_le_bytes();
            if let Some(m) = &metrics {
                m.served(ctx.route);
            }
            async move { Ok::<Buf, RpcError>(Buf::copy_from_slice(&answer)) }
        })
}

/// What the shard's tasks share.
struct NodeShard {
    transport: Rc<NodeTransport>,
    sampler: StatsSampler,
    p2p: Rc<P2p>,
    p2p_sampler: P2pSampler,
    sync: StateSync,
    sync_sampler: StateSyncSampler,
    /// The reference replica, when the node has the subnet's key and an API address.
    replica: Option<Rc<Replica>>,
    replica_sampler: Option<ReplicaSampler>,
    peers: PeerManagerHandle,
    /// The registry version in force (the peer manager reads it on every change).
    registry: Rc<RefCell<Arc<Registry>>>,
    /// The subnet's members (this node included), for the workload's block maker.
    members: Rc<RefCell<Vec<NodeId>>>,
    shard_metrics: ShardMetrics,
    collector: Arc<MetricsCollector>,
}

impl NodeShard {
    fn publish(&self) {
        self.sampler.sample();
        self.p2p_sampler.sample();
        self.sync_sampler.sample();
        if let Some(sampler) = &self.replica_sampler {
            sampler.sample();
        }
        // A mismatch would be a wiring bug in this file; the scrape then shows the last good data.
        let _ = self.shard_metrics.publish(&self.collector);
    }
}

async fn run_shard(ctx: Rc<ShardContext<ShardMessage>>, parts: NodeParts) -> Result<(), NodeError> {
    let NodeParts {
        config,
        tuning,
        identity,
        watcher,
        http_pool,
        metrics,
        quic,
        api,
    } = parts;
    let registry = watcher.current();
    let local_id = identity.node_id();
    let record = own_record(&registry, &config.subnet_id, local_id)?.clone();

    let MetricsParts {
        schema,
        collector,
        ids,
        p2p: p2p_ids,
        sync: sync_ids,
        http: http_ids,
        replica: replica_ids,
        publish_interval,
    } = metrics;
    let shard_metrics = ShardMetrics::new(schema, ctx.index);
    shard_metrics.set_registry_peers(member_ids(&registry, &config.subnet_id));

    let runtime: Rc<dyn Runtime> = GlommioRuntime::new();
    let current_registry = Rc::new(RefCell::new(registry.clone()));
    let registry_source: RegistrySource = {
        let current = current_registry.clone();
        Rc::new(move || current.borrow().clone())
    };
    let peers = PeerManagerHandle::new(
        PeerManagerConfig::from_tuning(&tuning.peers),
        local_id,
        config.subnet_id.clone(),
        registry_source,
        runtime.clone(),
    );
    let heights_kept = config
        .workload
        .map_or(HEIGHTS_KEPT_DEFAULT, |workload| workload.heights_kept);
    let p2p = P2p::new(
        &tuning,
        runtime.clone(),
        penalty_log(peers.penalty_sink()),
        heights_kept,
    );
    let sync_config = StateSyncConfig::from_tuning(&tuning);
    let store = CheckpointStore::open(
        &config.state_dir,
        sync_config.chunk_bytes,
        sync_config.checkpoints_kept,
    )
    .map_err(|source| NodeError::State {
        dir: config.state_dir.clone(),
        source,
    })?;
    let sync = StateSync::new(
        local_id,
        sync_config,
        runtime.clone(),
        FileIo::Glommio,
        store,
        penalty_log(peers.penalty_sink()),
    );
    sync.set_progress_sink(console_sink());
    let replica = match (&http_pool, load_subnet_key(&config, &registry)?) {
        (Some(pool), Some(subnet)) => Some(Replica::new(
            ReplicaConfig::from_tuning(&tuning, local_id),
            &tuning,
            ReplicaKeys {
                subnet,
                node: NodeSigner::from_pkey(identity.key()).map_err(NodeError::NodeKey)?,
            },
            &member_ids(&registry, &config.subnet_id),
            runtime.clone(),
            pool.clone(),
            penalty_log(peers.penalty_sink()),
        )),
        _ => None,
    };
    let mut router = sync.routes(p2p.routes(service_router(Some(ServiceMetrics::new(
        &ids,
        &shard_metrics,
    )))));
    if let Some(replica) = &replica {
        router = replica.routes(router);
    }
    let home = quic.map(|quic| QuicHome {
        ctx: ctx.clone(),
        socket: quic.socket,
        shared: quic.shared,
        registry: quic.registry,
    });
    let transport = Rc::new(NodeTransport::start(
        config.transport,
        &identity,
        registry.clone(),
        &config.subnet_id,
        &tuning,
        router,
        home,
    )?);
    let sampler = StatsSampler::new(transport.clone(), &ids, &shard_metrics);
    sampler.set_registry_version(registry.version());
    peers.start(transport.clone());
    p2p.start(transport.clone(), tuning.gossip.inbound_batch_artifacts_max);
    let members = Rc::new(RefCell::new(member_ids(&registry, &config.subnet_id)));
    if let Some(workload) = config.workload {
        p2p.start_workload(workload, local_id, members.clone());
    }
    sync.start(transport.clone());
    if let Some(replica) = &replica {
        replica.start(transport.clone());
    }
    let replica_sampler = replica
        .as_ref()
        .map(|replica| ReplicaSampler::new(replica.clone(), &replica_ids, &shard_metrics));
    let p2p_sampler = P2pSampler::new(p2p.clone(), peers.clone(), &p2p_ids, &shard_metrics);
    let sync_sampler = StateSyncSampler::new(sync.clone(), &sync_ids, &shard_metrics);
    let node = Rc::new(NodeShard {
        transport,
        sampler,
        p2p,
        p2p_sampler,
        sync: sync.clone(),
        sync_sampler,
        replica,
        replica_sampler,
        peers,
        registry: current_registry,
        members,
        shard_metrics,
        collector,
    });

    let started = Instant::now();
    if let Some(addr) = record.metrics_addr {
        let admin = start_admin(addr, node.clone(), local_id, started)?;
        spawn_until_shutdown(&ctx, admin.run());
    }
    let _api = match (record.http_addr, http_pool) {
        (Some(addr), Some(pool)) => Some(start_api(
            &ctx,
            addr,
            &tuning,
            &identity,
            pool,
            node.clone(),
            &http_ids,
            api.as_ref(),
        )?),
        _ => None,
    };
    spawn_until_shutdown(&ctx, publish_loop(node.clone(), publish_interval));
    match (&node.replica, config.state, config.workload) {
        // The replica's checkpoints are the node's state (with the [state] table's synthetic
        // files as ballast); the wall-clock reference state runs only without a replica.
        (Some(replica), state, _) => spawn_until_shutdown(
            &ctx,
            run_replica_checkpoints(
                sync,
                replica.clone(),
                state.map(|state| state.spec()),
                runtime,
            ),
        ),
        (None, Some(state), Some(workload)) => spawn_until_shutdown(
            &ctx,
            run_reference_state(sync, state, workload.block_interval_ms, runtime),
        ),
        (None, _, _) => {}
    }
    spawn_until_shutdown(
        &ctx,
        registry_loop(node.clone(), watcher, config.subnet_id.clone()),
    );
    announce(
        local_id,
        &config,
        &record,
        registry.version(),
        node.replica.as_ref().map(|r| r.subnet_id()),
        ctx.count,
    );

    ctx.shutdown.wait().await;
    HomeBackend::remove();
    if let Some(replica) = &node.replica {
        replica.stop().await;
    }
    node.sync.stop().await;
    node.p2p.stop().await;
    node.peers.stop().await;
    node.transport.shutdown().await;
    ctx.join_tasks(TASK_JOIN_GRACE).await;
    Ok(())
}

/// Offences peers commit, as the consensus managers report them: logged (the first
/// [`PENALTY_LOG_LINES_MAX`]) and passed on to the peer manager (`forward`), which bans
/// repeat offenders.
fn penalty_log(forward: PenaltySink) -> PenaltySink {
    let logged = Cell::new(0usize);
    Rc::new(move |peer: NodeId, offence: Offence| {
        if logged.get() < PENALTY_LOG_LINES_MAX {
            logged.set(logged.get() + 1);
            eprintln!("peer {peer} penalized: {offence:?}");
        }
        forward(peer, offence);
    })
}

/// Runs `task` on the shard until it ends or the node stops.
fn spawn_until_shutdown(
    ctx: &ShardContext<ShardMessage>,
    task: impl Future<Output = ()> + 'static,
) {
    let shutdown = ctx.shutdown.clone();
    ctx.spawn(async move { or(task, shutdown.wait()).await });
}

fn member_ids(registry: &Registry, subnet: &SubnetId) -> Vec<NodeId> {
    registry.nodes(subnet).iter().map(|r| r.node_id).collect()
}

fn start_admin(
    addr: std::net::SocketAddr,
    node: Rc<NodeShard>,
    node_id: NodeId,
    started: Instant,
) -> Result<AdminServer, NodeError> {
    let handlers = AdminHandlers {
        metrics: Rc::new(move || {
            node.publish();
            node.collector.render()
        }),
        health: Rc::new(move || Health {
            node_id,
            uptime: started.elapsed(),
        }),
    };
    AdminServer::bind(addr, AdminConfig::default(), handlers)
        .map_err(|source| NodeError::Admin { addr, source })
}

/// Starts the public HTTP API on the home shard (its own SO_REUSEPORT listener) in front of
/// the reference replica, or of [`NoReplica`] without the subnet key (status, admission,
/// decoding and signature checks are live; requests that need a replica get 503). Clients
/// that open with a TLS handshake get TLS 1.3 with the node's certificate; others get
/// plaintext. With `shared` (several shards serve the API) its backend is also installed for
/// the other shards' requests, and its status published for them.
#[allow(clippy::too_many_arguments)]
fn start_api(
    ctx: &ShardContext<ShardMessage>,
    addr: std::net::SocketAddr,
    tuning: &Tuning,
    identity: &Identity,
    pool: Arc<CpuPool>,
    node: Rc<NodeShard>,
    ids: &HttpMetricIds,
    shared: Option<&ApiShared>,
) -> Result<HttpServer, NodeError> {
    let http_error = |source| NodeError::Http { addr, source };
    let backend: Rc<dyn crate::http::Backend> = match &node.replica {
        Some(replica) => Rc::new(ReplicaBackend(replica.clone())),
        None => Rc::new(NoReplica),
    };
    if let Some(shared) = shared {
        HomeBackend::install(backend.clone());
        spawn_until_shutdown(ctx, HomeBackend::publish_status(shared.status.clone()));
    }
    let deps = HttpDeps {
        backend,
        pool,
        metrics: HttpMetrics::new(ids, &node.shard_metrics),
        render_metrics: Rc::new(move || {
            node.publish();
            node.collector.render()
        }),
        clock: system_clock(),
        tls: Some(api_tls_context(identity).map_err(|e| http_error(std::io::Error::other(e)))?),
    };
    HttpServer::start(addr, tuning.http, deps).map_err(http_error)
}

/// Starts the public HTTP API on a shard other than the home shard: the same server as the
/// home shard's, with the same per-shard limits, in front of a [`RemoteBackend`] that hands
/// every request to the home shard's backend. Its `/metrics` renders the node's metrics as
/// last published.
fn start_shard_api(
    ctx: &Rc<ShardContext<ShardMessage>>,
    identity: &Identity,
    tuning: HttpTuning,
    shared: ApiShared,
    metrics: &MetricsParts,
    shard_metrics: &ShardMetrics,
) -> Result<HttpServer, NodeError> {
    let addr = shared.addr;
    let http_error = |source| NodeError::Http { addr, source };
    let collector = metrics.collector.clone();
    let deps = HttpDeps {
        backend: Rc::new(RemoteBackend::new(ctx.clone(), shared.status.clone())),
        pool: shared.pool.clone(),
        metrics: HttpMetrics::new(&metrics.http, shard_metrics),
        render_metrics: Rc::new(move || collector.render()),
        clock: system_clock(),
        tls: Some(api_tls_context(identity).map_err(|e| http_error(std::io::Error::other(e)))?),
    };
    HttpServer::start(addr, tuning, deps).map_err(http_error)
}

async fn publish_loop(node: Rc<NodeShard>, interval: Duration) {
    loop {
        node.publish();
        glommio::timer::sleep(interval).await;
    }
}

/// Polls the registry file and applies each newer version to the transport and the metrics.
async fn registry_loop(node: Rc<NodeShard>, mut watcher: RegistryWatcher, subnet: SubnetId) {
    let mut reported_error: Option<String> = None;
    loop {
        glommio::timer::sleep(watcher.poll_interval()).await;
        if let Some(next) = watcher.poll_changed() {
            node.transport.adopt_registry_for_handshakes(&next);
            *node.registry.borrow_mut() = next.clone();
            node.peers.registry_changed();
            node.shard_metrics
                .set_registry_peers(member_ids(&next, &subnet));
            *node.members.borrow_mut() = member_ids(&next, &subnet);
            if let Some(replica) = &node.replica {
                replica.set_members(&member_ids(&next, &subnet));
            }
            node.sampler.set_registry_version(next.version());
            println!("registry version {} adopted", next.version());
        }
        let error = watcher.last_error().map(str::to_string);
        if error.is_some() && error != reported_error {
            eprintln!(
                "registry change ignored: {}",
                error.as_deref().unwrap_or("")
            );
        }
        reported_error = error;
    }
}

/// One line saying the node is up and where (tools and tests wait for it).
fn announce(
    node_id: NodeId,
    config: &NodeConfig,
    record: &icn_engine::registry::NodeRecord,
    version: u64,
    replica_subnet: Option<icn_codecs::ic::Principal>,
    shards: usize,
) {
    let listen = match config.transport {
        TransportKind::Quic => record.quic_addr,
        TransportKind::Tcp => record.tcp_addr,
    };
    let metrics = record
        .metrics_addr
        .map(|addr| format!("http://{addr}/metrics"))
        .unwrap_or_else(|| "none (no metrics_addr in the registry)".into());
    let api = record
        .http_addr
        .map(|addr| format!("http://{addr}/api/v2/status"))
        .unwrap_or_else(|| "none (no http_addr in the registry)".into());
    let replica = match replica_subnet {
        Some(subnet) => format!("reference replica of subnet principal {subnet}"),
        None => "no replica (no subnet key)".into(),
    };
    println!(
        "icn node {} ready: subnet {} transport {} on {listen}, metrics {metrics}, API {api}, {replica}, registry version {version}, {shards} shard{}",
        node_id.to_hex(),
        config.subnet_id,
        config.transport.name(),
        if shards == 1 { "" } else { "s" },
    );
    let _ = std::io::stdout().flush();
}
