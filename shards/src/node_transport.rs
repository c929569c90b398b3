//! The transport a node runs, QUIC or TCP, started from its identity, registry and tuning, with
//! one way to apply a new registry version to either.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::{Arc, RwLock};

use icn_engine::identity::Identity;
use icn_engine::registry::{NodeRecord, Registry, SubnetId};
use icn_engine::shard::ShardContext;
use icn_engine::tls::{self, SharedRegistry};
use icn_engine::transport::quic::{QuicConfig, QuicTransport, Steering};
use icn_engine::transport::quic_shards::{QuicShards, QuicShardsShared, ShardMessage};
use icn_engine::transport::tcp::{TcpConfig, TcpTransport};
use icn_engine::transport::AnswerWork;
use icn_engine::udp::BoundSocket;
use icn_engine::{Buf, ConnId, NodeId, Priority, Route, Router, RpcError, Transport};
use icn_tuning::Tuning;

use crate::node_config::TransportKind;
use crate::peer_manager::driver::PeerTransport;

/// Why a node's transport could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("node {node} is not a member of subnet {subnet} in registry version {version}")]
    NotMember {
        node: String,
        subnet: SubnetId,
        version: u64,
    },
    #[error("TLS setup: {0}")]
    Tls(#[from] boring::error::ErrorStack),
    #[error("QUIC: {0}")]
    Quic(#[from] icn_engine::transport::quic::QuicStartError),
    #[error("TCP: {0}")]
    Tcp(#[from] icn_engine::transport::tcp::TcpError),
}

/// The home shard's part of a QUIC transport spread over a node's shards
/// (`icn_engine::transport::quic_shards`): the other shards run their endpoints themselves.
pub struct QuicHome {
    pub ctx: Rc<ShardContext<ShardMessage>>,
    /// The home shard's socket of the node's steered port.
    pub socket: BoundSocket,
    pub shared: Arc<QuicShardsShared>,
    /// The registry version every shard's TLS verifier checks peers against.
    pub registry: SharedRegistry,
}

/// A started transport of either kind.
pub enum NodeTransport {
    Quic {
        /// The node's QUIC endpoints (one per shard) as the home shard's services see them.
        transport: QuicShards,
        /// The registry version the TLS verifier checks peers against.
        registry: SharedRegistry,
        subnet: SubnetId,
    },
    Tcp(TcpTransport),
}

/// This node's entry in `registry`, if it is a member of `subnet`.
pub fn own_record<'r>(
    registry: &'r Registry,
    subnet: &SubnetId,
    node: NodeId,
) -> Result<&'r NodeRecord, StartError> {
    registry
        .nodes(subnet)
        .iter()
        .find(|record| record.node_id == node)
        .ok_or_else(|| StartError::NotMember {
            node: node.to_hex(),
            subnet: subnet.clone(),
            version: registry.version(),
        })
}

/// The QUIC peers of `local` in `registry`: the other members of its subnet (none when it is no
/// longer a member itself).
pub fn quic_peers(
    registry: &Registry,
    subnet: &SubnetId,
    local: NodeId,
) -> HashMap<NodeId, SocketAddr> {
    if !registry.is_member(subnet, local) {
        return HashMap::new();
    }
    registry
        .nodes(subnet)
        .iter()
        .filter(|record| record.node_id != local)
        .map(|record| (record.node_id, record.quic_addr))
        .collect()
}

impl NodeTransport {
    /// Starts `kind` on the current glommio executor, listening on this node's registry address.
    /// QUIC with `home` is the home shard's endpoint of a node whose other shards run their own
    /// (on the sockets of one steered port); without it, the node's only endpoint, on a socket
    /// of its own.
    pub fn start(
        kind: TransportKind,
        identity: &Identity,
        registry: Arc<Registry>,
        subnet: &SubnetId,
        tuning: &Tuning,
        router: Router,
        home: Option<QuicHome>,
    ) -> Result<NodeTransport, StartError> {
        let record = own_record(&registry, subnet, identity.node_id())?;
        match kind {
            TransportKind::Quic => {
                let config = QuicConfig::from_tuning(tuning, record.quic_addr);
                let peers = quic_peers(&registry, subnet, identity.node_id());
                let shared: SharedRegistry = match &home {
                    Some(home) => home.registry.clone(),
                    None => Arc::new(RwLock::new(registry)),
                };
                let verifier = tls::registry_verifier(shared.clone(), subnet.clone());
                let server = tls::server_context_builder(identity, verifier.clone())?;
                let client = tls::client_context_builder(identity, verifier)?;
                let local_id = identity.node_id();
                let transport = match home {
                    None => QuicShards::single(QuicTransport::start(
                        local_id, server, client, config, router, peers,
                    )?),
                    Some(home) => {
                        let config = config.for_shard(Steering {
                            index: home.ctx.index,
                            count: home.shared.shards(),
                        });
                        let local = QuicTransport::start_steered(
                            local_id,
                            server,
                            client,
                            config,
                            router.clone(),
                            peers,
                            home.socket,
                        )?;
                        QuicShards::start_home(local, home.ctx, home.shared, router)
                    }
                };
                Ok(NodeTransport::Quic {
                    transport,
                    registry: shared,
                    subnet: subnet.clone(),
                })
            }
            TransportKind::Tcp => {
                let config = TcpConfig::from_tuning(tuning);
                Ok(NodeTransport::Tcp(TcpTransport::start(
                    identity, registry, router, config,
                )?))
            }
        }
    }

    pub fn kind(&self) -> TransportKind {
        match self {
            NodeTransport::Quic { .. } => TransportKind::Quic,
            NodeTransport::Tcp(_) => TransportKind::Tcp,
        }
    }

    /// Adopts a new registry version: handshakes are checked against it from now on, peers that
    /// left are disconnected and new ones dialed.
    pub fn apply_registry(&self, next: &Arc<Registry>) {
        match self {
            NodeTransport::Quic {
                transport,
                registry,
                subnet,
            } => {
                // A poisoned lock means a verifier panicked mid-read; the value is still whole.
                *registry.write().unwrap_or_else(|p| p.into_inner()) = next.clone();
                transport.set_allowed_peers(quic_peers(next, subnet, transport.local_id()));
            }
            NodeTransport::Tcp(transport) => transport.apply_registry(next),
        }
    }

    /// Adopts a new registry version for authentication only (QUIC's TLS verifier); which peers
    /// are connected is the peer manager's decision ([`PeerTransport::apply_peer_set`]). TCP
    /// has no separate peer set yet and adopts the version as a whole.
    pub fn adopt_registry_for_handshakes(&self, next: &Arc<Registry>) {
        match self {
            NodeTransport::Quic { registry, .. } => {
                *registry.write().unwrap_or_else(|p| p.into_inner()) = next.clone();
            }
            NodeTransport::Tcp(transport) => transport.apply_registry(next),
        }
    }

    /// Closes every connection with a goodbye (QUIC CONNECTION_CLOSE, TCP Goaway) and stops the
    /// transport's tasks.
    pub async fn shutdown(&self) {
        match self {
            NodeTransport::Quic { transport, .. } => transport.shutdown().await,
            NodeTransport::Tcp(transport) => transport.shutdown().await,
        }
    }
}

impl PeerTransport for NodeTransport {
    /// QUIC connects exactly the allowed set; TCP refuses the members the peer manager leaves
    /// out or bans (it connects the registry's other members).
    fn apply_peer_set(&self, allowed: &BTreeMap<NodeId, SocketAddr>, refused: &[NodeId]) {
        match self {
            // QUIC refuses every peer outside the allowed map, at the handshake and on live
            // connections, so the refused list adds nothing.
            NodeTransport::Quic { transport, .. } => {
                transport.set_allowed_peers(allowed.iter().map(|(id, addr)| (*id, *addr)).collect())
            }
            NodeTransport::Tcp(transport) => transport.set_refused_peers(refused.iter().copied()),
        }
    }

    fn rtt(&self, peer: NodeId) -> Option<std::time::Duration> {
        match self {
            NodeTransport::Quic { transport, .. } => transport.rtt(peer),
            NodeTransport::Tcp(_) => None,
        }
    }
}

impl Transport for NodeTransport {
    fn local_id(&self) -> NodeId {
        match self {
            NodeTransport::Quic { transport, .. } => transport.local_id(),
            NodeTransport::Tcp(transport) => transport.local_id(),
        }
    }

    async fn rpc(
        &self,
        peer: NodeId,
        route: Route,
        priority: Priority,
        request: Buf,
    ) -> Result<Buf, RpcError> {
        match self {
            NodeTransport::Quic { transport, .. } => {
                transport.rpc(peer, route, priority, request).await
            }
            NodeTransport::Tcp(transport) => transport.rpc(peer, route, priority, request).await,
        }
    }

    async fn rpc_then(
        &self,
        peer: NodeId,
        route: Route,
        priority: Priority,
        request: Buf,
        then: AnswerWork,
    ) -> Result<Buf, RpcError> {
        match self {
            NodeTransport::Quic { transport, .. } => {
                transport
                    .rpc_then(peer, route, priority, request, then)
                    .await
            }
            NodeTransport::Tcp(transport) => {
                transport
                    .rpc_then(peer, route, priority, request, then)
                    .await
            }
        }
    }

    fn peers(&self) -> Vec<(NodeId, ConnId)> {
        match self {
            NodeTransport::Quic { transport, .. } => transport.peers(),
            NodeTransport::Tcp(transport) => transport.peers(),
        }
    }
}
