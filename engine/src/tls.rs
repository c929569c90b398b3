//! TLS 1.3 contexts with registry-based mutual authentication (BoringSSL via `boring`).
//!
//! Both sides present their node's self-signed Ed25519 certificate, and both require the other's.
//! There is no CA: a certificate is accepted iff it is a valid, self-signed Ed25519 certificate
//! whose key (the [`NodeId`]) the [`PeerVerifier`] accepts — typically "member of my subnet in the
//! registry version I hold now" ([`registry_verifier`]). A client additionally requires the key to
//! be the node it meant to dial ([`set_expected_peer`], or the SNI host name set to the node id in
//! hex, which is how quiche passes its `server_name` through).
//!
//! The functions return [`SslContextBuilder`]s rather than built contexts so that QUIC can take
//! them too (`quiche::Config::with_boring_ssl_ctx_builder`).

use std::sync::{Arc, OnceLock, RwLock};

use boring::asn1::Asn1Time;
use boring::error::ErrorStack;
use boring::ex_data::Index;
use boring::ssl::{
    select_next_proto, AlpnError, NameType, Ssl, SslAlert, SslContextBuilder, SslMethod,
    SslOptions, SslRef, SslSessionCacheMode, SslSignatureAlgorithm, SslVerifyError, SslVerifyMode,
    SslVersion,
};
use boring::x509::X509Ref;

use crate::identity::{self, Identity};
use crate::registry::{Registry, SubnetId};
use crate::transport::NodeId;

/// The one application protocol both sides must agree on (ALPN).
pub const ALPN_PROTOCOL: &[u8] = b"icn/1";
/// [`ALPN_PROTOCOL`] in ALPN wire form (length-prefixed list).
const ALPN_WIRE: &[u8] = b"\x05icn/1";

/// Decides whether a peer's node id is acceptable right now. Called during every handshake.
pub type PeerVerifier = Arc<dyn Fn(&NodeId) -> bool + Send + Sync>;

/// The registry version a node currently holds, shared with the verifier of its TLS contexts.
/// Read once per handshake (never on the data path); replaced when a new version is adopted.
pub type SharedRegistry = Arc<RwLock<Arc<Registry>>>;

/// Accepts a peer iff it is a member of `subnet` in the registry currently held in `registry`.
pub fn registry_verifier(registry: SharedRegistry, subnet: SubnetId) -> PeerVerifier {
    Arc::new(move |peer: &NodeId| match registry.read() {
        Ok(current) => current.is_member(&subnet, *peer),
        Err(_) => false,
    })
}

/// A server context: requests and requires a client certificate, TLS 1.3 only, ALPN `icn/1`.
pub fn server_context_builder(
    identity: &Identity,
    verifier: PeerVerifier,
) -> Result<SslContextBuilder, ErrorStack> {
    let mut builder = common_builder(identity, verifier)?;
    builder.set_alpn_select_callback(|_ssl, offered| {
        select_next_proto(ALPN_WIRE, offered).ok_or(AlpnError::ALERT_FATAL)
    });
    Ok(builder)
}

/// A client context: presents our certificate and requires the server's, TLS 1.3 only, ALPN
/// `icn/1`. Each connection must name the node it dials ([`set_expected_peer`]).
pub fn client_context_builder(
    identity: &Identity,
    verifier: PeerVerifier,
) -> Result<SslContextBuilder, ErrorStack> {
    let mut builder = common_builder(identity, verifier)?;
    builder.set_alpn_protos(ALPN_WIRE)?;
    Ok(builder)
}

/// Names the node a client connection must reach; the handshake fails for any other key. Also
/// sets SNI to the node id in hex (what a quiche `server_name` carries).
pub fn set_expected_peer(ssl: &mut SslRef, peer: NodeId) -> Result<(), ErrorStack> {
    ssl.set_ex_data(expected_peer_index()?, peer);
    ssl.set_hostname(&peer.to_hex())
}

/// The peer's node id once the handshake has completed (or inside the verify callback).
pub fn peer_node_id(ssl: &SslRef) -> Option<NodeId> {
    let cert = ssl.peer_certificate()?;
    identity::node_id_from_cert(&cert).ok()
}

/// True when the negotiated connection is TLS 1.3 with ALPN `icn/1` (a post-handshake check).
pub fn negotiated_as_expected(ssl: &SslRef) -> bool {
    ssl.version2() == Some(SslVersion::TLS1_3)
        && ssl.selected_alpn_protocol() == Some(ALPN_PROTOCOL)
}

fn expected_peer_index() -> Result<Index<Ssl, NodeId>, ErrorStack> {
    static INDEX: OnceLock<Index<Ssl, NodeId>> = OnceLock::new();
    if let Some(index) = INDEX.get() {
        return Ok(*index);
    }
    let index = Ssl::new_ex_index::<NodeId>()?;
    // A racing thread may have set it first; either index works, the first one wins for all.
    Ok(*INDEX.get_or_init(|| index))
}

fn common_builder(
    identity: &Identity,
    verifier: PeerVerifier,
) -> Result<SslContextBuilder, ErrorStack> {
    let mut builder = SslContextBuilder::new(SslMethod::tls())?;
    builder.set_min_proto_version(Some(SslVersion::TLS1_3))?;
    builder.set_max_proto_version(Some(SslVersion::TLS1_3))?;
    builder.set_certificate(identity.cert())?;
    builder.set_private_key(identity.key())?;
    builder.check_private_key()?;
    // Both sides sign the handshake with their Ed25519 key and accept only Ed25519 signatures.
    builder.set_verify_algorithm_prefs(&[SslSignatureAlgorithm::ED25519])?;
    // Resumption would skip the certificate check against the current registry: never resume.
    builder.set_session_cache_mode(SslSessionCacheMode::OFF);
    builder.set_options(SslOptions::NO_TICKET);
    let mode = SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT;
    builder.set_custom_verify_callback(mode, move |ssl| verify_peer(ssl, &verifier));
    Ok(builder)
}

fn verify_peer(ssl: &mut SslRef, verifier: &PeerVerifier) -> Result<(), SslVerifyError> {
    let refuse = |alert| Err(SslVerifyError::Invalid(alert));
    let Some(cert) = ssl.peer_certificate() else {
        return refuse(SslAlert::CERTIFICATE_REQUIRED);
    };
    // A chain longer than the one self-signed certificate means the peer is not a node.
    if ssl.peer_cert_chain().is_some_and(|chain| chain.len() > 1) {
        return refuse(SslAlert::BAD_CERTIFICATE);
    }
    let Some(peer) = acceptable_node_cert(&cert) else {
        return refuse(SslAlert::BAD_CERTIFICATE);
    };
    if !ssl.is_server() && expected_peer(ssl) != Some(peer) {
        return refuse(SslAlert::CERTIFICATE_UNKNOWN);
    }
    if !verifier(&peer) {
        return refuse(SslAlert::CERTIFICATE_UNKNOWN);
    }
    Ok(())
}

/// The node id of a certificate that is Ed25519, self-signed and within its validity period.
fn acceptable_node_cert(cert: &X509Ref) -> Option<NodeId> {
    let peer = identity::node_id_from_cert(cert).ok()?;
    if !identity::is_self_signed(cert) {
        return None;
    }
    let now = Asn1Time::days_from_now(0).ok()?;
    if cert.not_before() > now || cert.not_after() < now {
        return None;
    }
    Some(peer)
}

fn expected_peer(ssl: &SslRef) -> Option<NodeId> {
    if let Some(peer) = expected_peer_index()
        .ok()
        .and_then(|index| ssl.ex_data(index))
    {
        return Some(*peer);
    }
    ssl.servername(NameType::HOST_NAME)
        .and_then(NodeId::from_hex)
}

#[cfg(test)]
mod tests {
    use super::*;
    use boring::ssl::{HandshakeError, MidHandshakeSslStream, SslStream, SslStreamBuilder};
    use std::cell::RefCell;
    use std::collections::VecDeque;
    use std::io::{self, Read, Write};
    use std::rc::Rc;

    /// One direction of an in-memory pipe.
    type Pipe = Rc<RefCell<VecDeque<u8>>>;

    struct End {
        rx: Pipe,
        tx: Pipe,
    }

    impl Read for End {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let mut rx = self.rx.borrow_mut();
            if rx.is_empty() {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(rx.len());
            for (slot, byte) in buf.iter_mut().zip(rx.drain(..n)) {
                *slot = byte;
            }
            Ok(n)
        }
    }

    impl Write for End {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.tx.borrow_mut().extend(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn allow_all() -> PeerVerifier {
        Arc::new(|_| true)
    }

    enum Side {
        Mid(MidHandshakeSslStream<End>),
        Done(SslStream<End>),
        Failed,
    }

    fn step(side: Side) -> Side {
        match side {
            Side::Mid(mid) => match mid.handshake() {
                Ok(done) => Side::Done(done),
                Err(HandshakeError::WouldBlock(mid)) => Side::Mid(mid),
                Err(_) => Side::Failed,
            },
            other => other,
        }
    }

    /// Runs a handshake between a client of `client_id` dialing `expected` and a server of
    /// `server_id`; returns (client, server) streams when both succeed.
    fn handshake(
        client_id: &Identity,
        client_verifier: PeerVerifier,
        expected: NodeId,
        server_id: &Identity,
        server_verifier: PeerVerifier,
    ) -> Option<(SslStream<End>, SslStream<End>)> {
        let (a, b): (Pipe, Pipe) = Default::default();
        let client_ctx = client_context_builder(client_id, client_verifier)
            .unwrap()
            .build();
        let server_ctx = server_context_builder(server_id, server_verifier)
            .unwrap()
            .build();
        let mut client_ssl = Ssl::new(&client_ctx).unwrap();
        set_expected_peer(&mut client_ssl, expected).unwrap();
        let server_ssl = Ssl::new(&server_ctx).unwrap();
        let mut client = Side::Mid(
            SslStreamBuilder::new(
                client_ssl,
                End {
                    rx: a.clone(),
                    tx: b.clone(),
                },
            )
            .setup_connect(),
        );
        let mut server =
            Side::Mid(SslStreamBuilder::new(server_ssl, End { rx: b, tx: a }).setup_accept());
        for _ in 0..20 {
            client = step(client);
            server = step(server);
            match (&client, &server) {
                (Side::Done(_), Side::Done(_)) => break,
                (Side::Failed, _) | (_, Side::Failed) => return None,
                _ => {}
            }
        }
        match (client, server) {
            (Side::Done(c), Side::Done(s)) => Some((c, s)),
            _ => None,
        }
    }

    #[test]
    fn mutual_auth_names_both_peers() {
        let (a, b) = (Identity::generate().unwrap(), Identity::generate().unwrap());
        let (client, server) =
            handshake(&a, allow_all(), b.node_id(), &b, allow_all()).expect("handshake");
        assert_eq!(peer_node_id(client.ssl()), Some(b.node_id()));
        assert_eq!(peer_node_id(server.ssl()), Some(a.node_id()));
        assert!(negotiated_as_expected(client.ssl()));
        assert!(negotiated_as_expected(server.ssl()));
    }

    #[test]
    fn verifier_refusal_fails_the_handshake_on_either_side() {
        let (a, b) = (Identity::generate().unwrap(), Identity::generate().unwrap());
        let refuse: PeerVerifier = Arc::new(|_| false);
        assert!(handshake(&a, allow_all(), b.node_id(), &b, refuse.clone()).is_none());
        assert!(handshake(&a, refuse, b.node_id(), &b, allow_all()).is_none());
    }

    #[test]
    fn client_refuses_a_server_it_did_not_mean_to_dial() {
        let (a, b, c) = (
            Identity::generate().unwrap(),
            Identity::generate().unwrap(),
            Identity::generate().unwrap(),
        );
        assert!(handshake(&a, allow_all(), c.node_id(), &b, allow_all()).is_none());
    }

    #[test]
    fn registry_verifier_follows_the_current_version() {
        let dir = crate::identity::tests::temp_dir("tls");
        let registry = Registry::create_local_subnet(&dir, 2, 41_000).unwrap();
        let subnet = SubnetId("local".into());
        let member = registry.nodes(&subnet)[1].node_id;
        let shared: SharedRegistry = Arc::new(RwLock::new(Arc::new(registry.clone())));
        let verifier = registry_verifier(shared.clone(), subnet.clone());
        assert!(verifier(&member));
        assert!(!verifier(&NodeId([3; 32])));
        *shared.write().unwrap() = Arc::new(registry.remove_node(member).unwrap());
        assert!(!verifier(&member));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
