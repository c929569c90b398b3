//! `quinn-tokio`: quinn 0.11 + tokio + rustls 0.23 (ring), the stack the IC replica uses, used
//! the way quinn's documentation shows: one connection, one bidirectional stream per request
//! (`open_bi`, `write_chunk`, `finish`, then `read_chunk` until the end), GSO as quinn enables
//! it by default. Messages go out as shared `Bytes` and come in as the chunks quinn hands out,
//! the zero-copy calls its docs recommend for speed (and that quinn's perf tool uses).
//!
//! Tuned to icn's knobs where quinn has one ([`super::case::quic`]): 1452-byte packets (MTU
//! discovery off, so loopback's 64 KiB MTU is never used), the same stream and connection
//! windows, enough concurrent streams for every in-flight request, and 2 MiB UDP socket buffers
//! as quinn's own perf tool sets them (the kernel's 208 KiB default drops packets in bursts,
//! and Cubic then halves the window: a baseline slowed down by a default, not by quinn). Each end runs on its own
//! current-thread tokio runtime on its own pinned thread (server core 0, client core 1).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use bytes::Bytes;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::udp::UdpSocketState;
use quinn::{Connection, ConnectionStats, Endpoint, EndpointConfig, TokioRuntime, VarInt};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{json, Value};

use super::case::{quic, Budget, CaseSpec};
use super::load::{
    closed_loop_worker, merge_workers, Gate, Measurement, PhaseStart, WorkerOutcome,
};
use super::System;
use crate::host::{pin_current_thread, Placement};

/// Largest request or response either end reads into memory (a bulk message is 1 MiB).
pub const MESSAGE_BYTES_MAX: usize = 2 << 20;

/// How long the client waits for the server to come up and the handshake to finish.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the server waits for its one connection before giving up.
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a closing endpoint waits for its CONNECTION_CLOSE to be sent.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

const ALPN: &[u8] = b"icn-bench";

pub struct QuinnTokio;

impl System for QuinnTokio {
    fn name(&self) -> &'static str {
        "quinn-tokio"
    }

    fn run(&self, spec: &CaseSpec, placement: Placement) -> Result<Measurement, String> {
        let identity = Identity::generate()?;
        let server_config = server_config(&identity)?;
        let client_config = client_config(&identity)?;
        let (address_sender, address_receiver) = mpsc::channel();
        let response = Bytes::from(vec![0u8; spec.response_bytes]);
        let server = thread::Builder::new()
            .name("quinn-server".into())
            .spawn(move || {
                pin_current_thread(placement.server_core);
                current_thread_runtime()?.block_on(serve(server_config, response, address_sender))
            })
            .map_err(|e| e.to_string())?;
        let address = address_receiver
            .recv_timeout(SETUP_TIMEOUT)
            .map_err(|_| "server did not start".to_string())??;
        let spec = spec.clone();
        let client = thread::Builder::new()
            .name("quinn-client".into())
            .spawn(move || {
                pin_current_thread(placement.client_core);
                current_thread_runtime()?.block_on(run_client(client_config, address, spec))
            })
            .map_err(|e| e.to_string())?;
        let measurement = client
            .join()
            .map_err(|_| "client thread panicked".to_string())?;
        let served = server
            .join()
            .map_err(|_| "server thread panicked".to_string())?;
        let mut measurement = measurement?;
        if let Err(error) = served {
            measurement.errors += 1;
            measurement
                .first_error
                .get_or_insert(format!("server: {error}"));
        }
        Ok(measurement)
    }

    fn config(&self) -> BTreeMap<String, Value> {
        BTreeMap::from([
            ("quic_packet_bytes".into(), json!(quic::PACKET_BYTES)),
            ("mtu_discovery".into(), json!(false)),
            (
                "gso".into(),
                json!("quinn default (enabled where the kernel supports it)"),
            ),
            (
                "stream_window_bytes".into(),
                json!(quic::STREAM_WINDOW_BYTES),
            ),
            (
                "connection_window_bytes".into(),
                json!(quic::CONNECTION_WINDOW_BYTES),
            ),
            (
                "send_window_bytes".into(),
                json!(quic::CONNECTION_WINDOW_BYTES),
            ),
            ("bidi_streams_max".into(), json!(quic::BIDI_STREAMS_MAX)),
            (
                "udp_socket_buffer_bytes".into(),
                json!(quic::UDP_SOCKET_BUFFER_BYTES),
            ),
            (
                "runtime".into(),
                json!("one tokio current-thread runtime per end"),
            ),
            ("tls".into(), json!("rustls 0.23, ring provider, TLS 1.3")),
        ])
    }
}

/// The knobs shared with icn, applied to quinn.
pub fn transport_config() -> quinn::TransportConfig {
    let mut config = quinn::TransportConfig::default();
    config
        .stream_receive_window(VarInt::from_u32(quic::STREAM_WINDOW_BYTES))
        .receive_window(VarInt::from_u32(quic::CONNECTION_WINDOW_BYTES))
        .send_window(u64::from(quic::CONNECTION_WINDOW_BYTES))
        .max_concurrent_bidi_streams(VarInt::from_u32(quic::BIDI_STREAMS_MAX))
        .initial_mtu(quic::PACKET_BYTES)
        .mtu_discovery_config(None);
    config
}

/// A loopback UDP socket with [`quic::UDP_SOCKET_BUFFER_BYTES`] send and receive buffers, in
/// a quinn endpoint on the current tokio runtime.
pub(crate) fn endpoint(server: Option<quinn::ServerConfig>) -> Result<Endpoint, String> {
    let socket = std::net::UdpSocket::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .map_err(|e| format!("bind: {e}"))?;
    let state = UdpSocketState::new((&socket).into()).map_err(|e| format!("UDP socket: {e}"))?;
    let buffer_bytes = quic::UDP_SOCKET_BUFFER_BYTES;
    state
        .set_send_buffer_size((&socket).into(), buffer_bytes)
        .map_err(|e| format!("SO_SNDBUF: {e}"))?;
    state
        .set_recv_buffer_size((&socket).into(), buffer_bytes)
        .map_err(|e| format!("SO_RCVBUF: {e}"))?;
    Endpoint::new(
        EndpointConfig::default(),
        server,
        socket,
        Arc::new(TokioRuntime),
    )
    .map_err(|e| format!("endpoint: {e}"))
}

pub(crate) fn current_thread_runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))
}

/// A self-signed certificate for "localhost" that the client trusts.
pub(crate) struct Identity {
    certificate: CertificateDer<'static>,
    key_pkcs8: Vec<u8>,
}

impl Identity {
    pub(crate) fn generate() -> Result<Identity, String> {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
            .map_err(|e| format!("certificate: {e}"))?;
        Ok(Identity {
            certificate: certified.cert.der().clone(),
            key_pkcs8: certified.key_pair.serialize_der(),
        })
    }
}

fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub(crate) fn server_config(identity: &Identity) -> Result<quinn::ServerConfig, String> {
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(identity.key_pkcs8.clone()));
    let mut tls = rustls::ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(vec![identity.certificate.clone()], key)
        .map_err(|e| format!("server TLS: {e}"))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic_tls = QuicServerConfig::try_from(tls).map_err(|e| format!("server QUIC TLS: {e}"))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic_tls));
    config.transport_config(Arc::new(transport_config()));
    Ok(config)
}

pub(crate) fn client_config(identity: &Identity) -> Result<quinn::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(identity.certificate.clone())
        .map_err(|e| format!("trust anchor: {e}"))?;
    let mut tls = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic_tls = QuicClientConfig::try_from(tls).map_err(|e| format!("client QUIC TLS: {e}"))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic_tls));
    config.transport_config(Arc::new(transport_config()));
    Ok(config)
}

/// Serves one connection: each bidirectional stream is one request answered with `response`.
async fn serve(
    config: quinn::ServerConfig,
    response: Bytes,
    address: mpsc::Sender<Result<SocketAddr, String>>,
) -> Result<(), String> {
    let bound = endpoint(Some(config))
        .and_then(|endpoint| Ok((endpoint.local_addr().map_err(|e| e.to_string())?, endpoint)));
    let endpoint = match bound {
        Ok((local, endpoint)) => {
            let _ = address.send(Ok(local));
            endpoint
        }
        Err(error) => {
            let _ = address.send(Err(error.clone()));
            return Err(error);
        }
    };
    let incoming = tokio::time::timeout(ACCEPT_TIMEOUT, endpoint.accept())
        .await
        .map_err(|_| "no connection arrived".to_string())?
        .ok_or("endpoint closed")?;
    let connection = incoming.await.map_err(|e| format!("handshake: {e}"))?;
    // The client closes the connection when it is done; that ends this loop.
    while let Ok((send, receive)) = connection.accept_bi().await {
        tokio::spawn(answer(send, receive, response.clone()));
    }
    endpoint.close(VarInt::from_u32(0), b"done");
    Ok(())
}

async fn answer(mut send: quinn::SendStream, mut receive: quinn::RecvStream, response: Bytes) {
    // A failed stream shows up on the client as a failed RPC; nothing more to do here.
    if receive_message(&mut receive).await.is_ok() && send.write_chunk(response).await.is_ok() {
        let _ = send.finish();
    }
}

/// Receives a whole message as the chunks quinn hands out (no copy); more than
/// [`MESSAGE_BYTES_MAX`] is the peer's error. Returns its length.
async fn receive_message(receive: &mut quinn::RecvStream) -> Result<usize, String> {
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut total_bytes = 0;
    while let Some(chunk) = receive
        .read_chunk(MESSAGE_BYTES_MAX, true)
        .await
        .map_err(|e| format!("read: {e}"))?
    {
        total_bytes += chunk.bytes.len();
        if total_bytes > MESSAGE_BYTES_MAX {
            return Err(format!("message over {MESSAGE_BYTES_MAX} bytes"));
        }
        chunks.push(chunk.bytes);
    }
    Ok(total_bytes)
}

async fn run_client(
    config: quinn::ClientConfig,
    address: SocketAddr,
    spec: CaseSpec,
) -> Result<Measurement, String> {
    let mut endpoint = endpoint(None)?;
    endpoint.set_default_client_config(config);
    let connecting = endpoint
        .connect(address, "localhost")
        .map_err(|e| format!("connect: {e}"))?;
    let connection = tokio::time::timeout(SETUP_TIMEOUT, connecting)
        .await
        .map_err(|_| "handshake timed out".to_string())?
        .map_err(|e| format!("handshake: {e}"))?;
    let measured = measure(&connection, &spec).await;
    connection.close(VarInt::from_u32(0), b"done");
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, endpoint.wait_idle()).await;
    Ok(measured)
}

async fn measure(connection: &Connection, spec: &CaseSpec) -> Measurement {
    let request = Bytes::from(vec![0u8; spec.request_bytes]);
    let warmup = phase(connection, spec, spec.warmup, &request).await;
    let before = connection.stats();
    let start = PhaseStart::now();
    let outcome = phase(connection, spec, spec.measure, &request).await;
    let mut measurement = start.finish(outcome);
    measurement
        .extra
        .extend(packet_figures(&before, &connection.stats()));
    if warmup.errors > 0 {
        measurement.first_error.get_or_insert(format!(
            "warm-up: {} errors, first: {}",
            warmup.errors,
            warmup.first_error.unwrap_or_default()
        ));
    }
    measurement
}

/// Runs `in_flight` closed-loop workers, each one stream per request, until the budget is spent.
async fn phase(
    connection: &Connection,
    spec: &CaseSpec,
    budget: Budget,
    request: &Bytes,
) -> WorkerOutcome {
    let gate = Arc::new(Gate::new(budget, spec.time_cap));
    let workers: Vec<_> = (0..spec.in_flight)
        .map(|_| {
            let (connection, gate, request) = (connection.clone(), gate.clone(), request.clone());
            let (bytes_per_op, response_bytes) = (spec.bytes_per_op(), spec.response_bytes);
            tokio::spawn(async move {
                closed_loop_worker(&gate, bytes_per_op, || {
                    one_request(connection.clone(), request.clone(), response_bytes)
                })
                .await
            })
        })
        .collect();
    let mut outcomes = Vec::with_capacity(workers.len());
    for worker in workers {
        outcomes.push(worker.await.unwrap_or_else(|e| {
            let mut failed = WorkerOutcome::default();
            failed.record_error(format!("worker task: {e}"));
            failed
        }));
    }
    merge_workers(&outcomes)
}

async fn one_request(
    connection: Connection,
    request: Bytes,
    response_bytes: usize,
) -> Result<(), String> {
    let (mut send, mut receive) = connection
        .open_bi()
        .await
        .map_err(|e| format!("open_bi: {e}"))?;
    send.write_chunk(request)
        .await
        .map_err(|e| format!("write: {e}"))?;
    send.finish().map_err(|e| format!("finish: {e}"))?;
    let received_bytes = receive_message(&mut receive).await?;
    if received_bytes != response_bytes {
        return Err(format!(
            "response of {received_bytes} bytes, expected {response_bytes}"
        ));
    }
    Ok(())
}

/// What the client's UDP path did during the measured phase: proof of the packet size cap and
/// of GSO batching (datagrams per send call).
fn packet_figures(before: &ConnectionStats, after: &ConnectionStats) -> BTreeMap<String, f64> {
    let datagrams = after.udp_tx.datagrams - before.udp_tx.datagrams;
    let bytes = after.udp_tx.bytes - before.udp_tx.bytes;
    let send_calls = after.udp_tx.ios - before.udp_tx.ios;
    let mut figures = BTreeMap::from([
        ("client_udp_datagrams_sent".to_string(), datagrams as f64),
        (
            "client_path_mtu_bytes".to_string(),
            f64::from(after.path.current_mtu),
        ),
        (
            "client_lost_packets".to_string(),
            (after.path.lost_packets - before.path.lost_packets) as f64,
        ),
    ]);
    if datagrams > 0 {
        figures.insert(
            "client_udp_datagram_bytes_mean".into(),
            bytes as f64 / datagrams as f64,
        );
    }
    if send_calls > 0 {
        figures.insert(
            "client_udp_datagrams_per_send_call".into(),
            datagrams as f64 / send_calls as f64,
        );
    }
    figures
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::case::CaseKind;

    #[test]
    fn quinn_moves_bulk_in_capped_packets() {
        let spec = CaseSpec::tiny(CaseKind::Bulk1MiB, 8);
        let measurement = QuinnTokio.run(&spec, Placement::detect()).unwrap();
        assert_eq!(measurement.errors, 0, "{:?}", measurement.first_error);
        assert_eq!(measurement.ops, 8);
        let mtu = measurement.extra["client_path_mtu_bytes"];
        assert_eq!(mtu, f64::from(quic::PACKET_BYTES));
        let mean = measurement.extra["client_udp_datagram_bytes_mean"];
        assert!(
            mean > 1300.0 && mean <= f64::from(quic::PACKET_BYTES),
            "mean datagram {mean}"
        );
    }

    #[test]
    fn quinn_answers_pipelined_rpcs() {
        let spec = CaseSpec::tiny(CaseKind::Rpc1KiBx64, 256);
        let measurement = QuinnTokio.run(&spec, Placement::detect()).unwrap();
        assert_eq!(measurement.errors, 0, "{:?}", measurement.first_error);
        assert_eq!(measurement.ops, 256);
        assert_eq!(measurement.latency.map(|l| l.count()), Some(256));
    }
}
