//! The icn transports as bench systems: `icn-quic`, `icn-quic-nogso` and `icn-tcp-tls`.
//!
//! Each pair has two fresh identities in one local registry; the client gets the smaller node id
//! so that, by the dialer rule, the client dials. Windows, packet size and socket buffers are the
//! suite's shared constants ([`super::case::quic`]), the same the quinn baseline uses.

use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use icn_engine::identity::Identity;
use icn_engine::registry::{NodeRecord, Registry, Subnet, SubnetId};
use icn_engine::tls::{self, PeerVerifier};
use icn_engine::transport::quic::{QuicConfig, QuicTransport};
use icn_engine::transport::tcp::{TcpConfig, TcpTransport};
use icn_engine::udp::UdpConfig;
use icn_engine::{NodeId, Router};
use serde_json::{json, Value};

use super::case::quic as shared;
use super::icn::IcnPair;

/// How long a client waits for its connection to the server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A server and a client identity, the client's id the smaller.
struct Pair {
    server: Identity,
    client: Identity,
}

impl Pair {
    fn generate() -> Result<Pair, String> {
        let a = Identity::generate().map_err(|e| e.to_string())?;
        let b = Identity::generate().map_err(|e| e.to_string())?;
        Ok(if a.node_id() < b.node_id() {
            Pair {
                client: a,
                server: b,
            }
        } else {
            Pair {
                client: b,
                server: a,
            }
        })
    }
}

fn only(peer: NodeId) -> PeerVerifier {
    Arc::new(move |candidate: &NodeId| *candidate == peer)
}

/// icn's QUIC transport, with or without GSO/GRO.
pub struct QuicPair {
    gso: bool,
    ids: Pair,
}

impl QuicPair {
    pub fn new(gso: bool) -> Result<QuicPair, String> {
        Ok(QuicPair {
            gso,
            ids: Pair::generate()?,
        })
    }

    fn config(&self, listen_addr: SocketAddr) -> QuicConfig {
        QuicConfig {
            listen_addr,
            udp: UdpConfig {
                send_buffer_bytes: shared::UDP_SOCKET_BUFFER_BYTES,
                recv_buffer_bytes: shared::UDP_SOCKET_BUFFER_BYTES,
                gso_enabled: self.gso,
                gro_enabled: self.gso,
                ..UdpConfig::default()
            },
            udp_payload_bytes_max: shared::PACKET_BYTES as usize,
            stream_window_bytes: shared::STREAM_WINDOW_BYTES as u64,
            connection_window_bytes: shared::CONNECTION_WINDOW_BYTES as u64,
            bidi_streams_max: shared::BIDI_STREAMS_MAX as u64,
            ..QuicConfig::default()
        }
    }

    fn start(
        &self,
        me: &Identity,
        peer: NodeId,
        peer_addr: SocketAddr,
        listen: SocketAddr,
        router: Router,
    ) -> Result<QuicTransport, String> {
        let server_tls = tls::server_context_builder(me, only(peer)).map_err(|e| e.to_string())?;
        let client_tls = tls::client_context_builder(me, only(peer)).map_err(|e| e.to_string())?;
        let allowed = HashMap::from([(peer, peer_addr)]);
        QuicTransport::start(
            me.node_id(),
            server_tls,
            client_tls,
            self.config(listen),
            router,
            allowed,
        )
        .map_err(|e| e.to_string())
    }
}

impl IcnPair for QuicPair {
    type Rendezvous = (SocketAddr, NodeId);
    type Server = QuicTransport;
    type Client = QuicTransport;

    async fn start_server(
        &self,
        router: Router,
    ) -> Result<(QuicTransport, (SocketAddr, NodeId)), String> {
        // The server never dials (its id is the larger), so the client's address is not needed.
        let unused: SocketAddr = "127.0.0.1:9".parse().expect("literal address");
        let any_port: SocketAddr = "127.0.0.1:0".parse().expect("literal address");
        let server = self.start(
            &self.ids.server,
            self.ids.client.node_id(),
            unused,
            any_port,
            router,
        )?;
        let addr = server.local_addr();
        Ok((server, (addr, self.ids.server.node_id())))
    }

    async fn start_client(
        &self,
        to: (SocketAddr, NodeId),
    ) -> Result<(QuicTransport, NodeId), String> {
        let (addr, server_id) = to;
        let any_port: SocketAddr = "127.0.0.1:0".parse().expect("literal address");
        let client = self.start(&self.ids.client, server_id, addr, any_port, Router::new())?;
        if !client.wait_connected(server_id, CONNECT_TIMEOUT).await {
            return Err(format!(
                "QUIC client did not connect to {addr} within {CONNECT_TIMEOUT:?}"
            ));
        }
        Ok((client, server_id))
    }

    fn config(&self) -> BTreeMap<String, Value> {
        BTreeMap::from([
            ("gso_gro".to_string(), json!(self.gso)),
            ("packet_bytes".to_string(), json!(shared::PACKET_BYTES)),
            (
                "stream_window_bytes".to_string(),
                json!(shared::STREAM_WINDOW_BYTES),
            ),
            (
                "connection_window_bytes".to_string(),
                json!(shared::CONNECTION_WINDOW_BYTES),
            ),
            (
                "udp_socket_buffer_bytes".to_string(),
                json!(shared::UDP_SOCKET_BUFFER_BYTES),
            ),
        ])
    }
}

/// icn's TCP + TLS 1.3 transport.
pub struct TcpPair {
    ids: Pair,
    registry: Arc<Registry>,
}

fn free_tcp_addr() -> Result<SocketAddr, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    listener.local_addr().map_err(|e| e.to_string())
}

fn free_udp_addr() -> Result<SocketAddr, String> {
    let socket = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    socket.local_addr().map_err(|e| e.to_string())
}

impl TcpPair {
    pub fn new() -> Result<TcpPair, String> {
        let ids = Pair::generate()?;
        let record = |identity: &Identity| -> Result<NodeRecord, String> {
            Ok(NodeRecord {
                node_id: identity.node_id(),
                cert_pem: None,
                quic_addr: free_udp_addr()?,
                tcp_addr: free_tcp_addr()?,
                http_addr: None,
                metrics_addr: None,
            })
        };
        let subnet = Subnet {
            id: SubnetId("bench".to_string()),
            public_key: None,
            nodes: vec![record(&ids.server)?, record(&ids.client)?],
        };
        let registry = Registry::new(1, vec![subnet]).map_err(|e| e.to_string())?;
        Ok(TcpPair {
            ids,
            registry: Arc::new(registry),
        })
    }

    fn config() -> TcpConfig {
        TcpConfig {
            requests_in_flight_max: 1024,
            ..TcpConfig::default()
        }
    }
}

impl IcnPair for TcpPair {
    type Rendezvous = NodeId;
    type Server = TcpTransport;
    type Client = TcpTransport;

    async fn start_server(&self, router: Router) -> Result<(TcpTransport, NodeId), String> {
        let server = TcpTransport::start(
            &self.ids.server,
            self.registry.clone(),
            router,
            Self::config(),
        )
        .map_err(|e| e.to_string())?;
        Ok((server, self.ids.server.node_id()))
    }

    async fn start_client(&self, server_id: NodeId) -> Result<(TcpTransport, NodeId), String> {
        let client = TcpTransport::start(
            &self.ids.client,
            self.registry.clone(),
            Router::new(),
            Self::config(),
        )
        .map_err(|e| e.to_string())?;
        let deadline = std::time::Instant::now() + CONNECT_TIMEOUT;
        while std::time::Instant::now() < deadline {
            if icn_engine::Transport::peers(&client)
                .iter()
                .any(|(peer, _)| *peer == server_id)
            {
                return Ok((client, server_id));
            }
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
        Err(format!(
            "TCP client did not connect within {CONNECT_TIMEOUT:?}"
        ))
    }

    fn config(&self) -> BTreeMap<String, Value> {
        let config = Self::config();
        BTreeMap::from([
            ("tls".to_string(), json!("TLS 1.3, Ed25519, BoringSSL")),
            (
                "write_chunk_bytes".to_string(),
                json!(config.write_chunk_bytes),
            ),
            (
                "requests_in_flight_max".to_string(),
                json!(config.requests_in_flight_max),
            ),
        ])
    }
}
