//! Test support for the HTTP API, shared by the unit tests here and the integration tests in
//! `tests/`: a server on a glommio executor of its own thread, a scripted [`Backend`], agents'
//! request envelopes and keys, and a raw HTTP/1.1 client over `std::net` that can misbehave
//! (partial heads, slow bodies) on purpose.
//!
//! Nothing here is used by the node itself.

use std::borrow::Cow;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use icn_codecs::ic::{
    decode_request_envelope, CallContent, Certificate, HashTree, IcLimits, Principal,
    ReadStateContent, RequestContent, RequestEnvelope, RequestId,
};
use icn_engine::metrics::{MetricsCollector, MetricsConfig, MetricsSchemaBuilder, ShardMetrics};
use icn_tuning::HttpTuning;

use super::backend::{
    Backend, BackendError, BackendStatus, CallReply, CallRequest, CallVersion, LocalBoxFuture,
    OwnedReject, QueryReply, QueryRequest, QueryResult, ReadStateReply, ReadStateRequest,
};
use super::metrics::{HttpMetricIds, HttpMetrics};
use super::pool::CpuPool;
use super::server::HttpServer;
use super::service::{system_clock, HttpDeps};
use super::tls::api_tls_context;
use icn_engine::identity::Identity;

/// How the scripted backend behaves; `Send` so a test can build it before the server thread.
#[derive(Clone, Debug, Default)]
pub struct ScriptConfig {
    /// Every query waits this long before answering.
    pub query_delay: Duration,
    /// Every call waits this long before answering.
    pub call_delay: Duration,
}

/// What the scripted backend saw, readable from the test thread.
#[derive(Debug, Default)]
pub struct BackendSeen {
    pub calls: AtomicU64,
    pub queries: AtomicU64,
    pub read_states: AtomicU64,
    pub request_ids: Mutex<Vec<RequestId>>,
}

/// A backend that answers from a script: queries echo their argument, a call to method
/// `reject` is refused before consensus, other calls are accepted (v2) or "certified" with a
/// certificate whose tree holds the request id (v3/v4), read_state answers a certificate over
/// the requested paths' first labels.
pub struct ScriptedBackend {
    config: ScriptConfig,
    seen: Arc<BackendSeen>,
}

impl ScriptedBackend {
    fn note(&self, counter: &AtomicU64, id: RequestId) {
        counter.fetch_add(1, Ordering::Relaxed);
        self.seen
            .request_ids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(id);
    }
}

fn certificate(labels: Vec<Vec<u8>>) -> Vec<u8> {
    let tree = labels
        .into_iter()
        .map(|l| HashTree::labeled(l, HashTree::leaf(b"ok".to_vec())))
        .reduce(HashTree::fork)
        .unwrap_or(HashTree::Empty);
    let mut out = Vec::new();
    Certificate {
        tree,
        signature: Cow::Borrowed(&[0u8; 48]),
        delegation: None,
    }
    .encode(&mut out);
    out
}

impl Backend for ScriptedBackend {
    fn status(&self) -> BackendStatus {
        BackendStatus {
            root_key: None,
            replica_health_status: "healthy",
            certified_height: None,
        }
    }

    fn call(&self, request: CallRequest) -> LocalBoxFuture<'_, Result<CallReply, BackendError>> {
        Box::pin(async move {
            glommio::timer::sleep(self.config.call_delay).await;
            self.note(&self.seen.calls, request.request_id);
            if request.content.method_name == "reject" {
                return Ok(CallReply::Rejected(OwnedReject {
                    reject_code: 3,
                    reject_message: "method reject refuses every call".into(),
                    error_code: Some("IC0536".into()),
                }));
            }
            Ok(match request.version {
                CallVersion::V2 => CallReply::Accepted,
                CallVersion::V3 | CallVersion::V4 => CallReply::Certified {
                    certificate: certificate(vec![request.request_id.0.to_vec()]),
                },
            })
        })
    }

    fn query(&self, request: QueryRequest) -> LocalBoxFuture<'_, Result<QueryReply, BackendError>> {
        Box::pin(async move {
            glommio::timer::sleep(self.config.query_delay).await;
            self.note(&self.seen.queries, request.request_id);
            Ok(QueryReply {
                outcome: QueryResult::Replied {
                    arg: request.content.arg.into_owned(),
                },
                signatures: Vec::new(),
                timings: None,
            })
        })
    }

    fn read_state(
        &self,
        request: ReadStateRequest,
    ) -> LocalBoxFuture<'_, Result<ReadStateReply, BackendError>> {
        Box::pin(async move {
            self.note(&self.seen.read_states, request.request_id);
            let labels = request
                .content
                .paths
                .iter()
                .filter_map(|p| p.first().map(|l| l.to_vec()))
                .collect();
            Ok(ReadStateReply {
                certificate: certificate(labels),
            })
        })
    }
}

/// A server running on a glommio executor in a thread of its own.
pub struct ServerThread {
    pub addr: SocketAddr,
    pub seen: Arc<BackendSeen>,
    stop: Arc<AtomicBool>,
    handle: Option<glommio::ExecutorJoinHandle<()>>,
}

impl ServerThread {
    /// Starts a server on 127.0.0.1 (a free port) with `tuning`, the scripted backend and a fresh
    /// identity's certificate (TLS for clients that start a handshake).
    /// It stops when dropped, and after 120 s at the latest.
    pub fn start(tuning: HttpTuning, script: ScriptConfig) -> ServerThread {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(BackendSeen::default());
        let (addr_tx, addr_rx) = mpsc::channel();
        let stop_flag = stop.clone();
        let backend_seen = seen.clone();
        let handle = glommio::LocalExecutorBuilder::default()
            .io_memory(512 << 10)
            .name("http-test")
            .spawn(move || async move {
                let mut builder = MetricsSchemaBuilder::new(MetricsConfig::default()).unwrap();
                let ids = HttpMetricIds::declare(&mut builder).unwrap();
                let schema = builder.build();
                let shard = ShardMetrics::new(schema.clone(), 0);
                let collector = Arc::new(MetricsCollector::new(schema, 1));
                let metrics = HttpMetrics::new(&ids, &shard);
                let pool = Arc::new(
                    CpuPool::new(
                        tuning.verify_threads_count,
                        tuning.verify_queue_max,
                        "http-verify",
                    )
                    .unwrap(),
                );
                let deps = HttpDeps {
                    backend: Rc::new(ScriptedBackend {
                        config: script,
                        seen: backend_seen,
                    }),
                    pool,
                    metrics,
                    render_metrics: Rc::new(move || {
                        shard.publish(&collector).unwrap();
                        collector.render()
                    }),
                    clock: system_clock(),
                    tls: Some(api_tls_context(&Identity::generate().unwrap()).unwrap()),
                };
                let server =
                    HttpServer::start("127.0.0.1:0".parse().unwrap(), tuning, deps).unwrap();
                addr_tx.send(server.local_addr()).unwrap();
                let deadline = Instant::now() + Duration::from_secs(120);
                while !stop_flag.load(Ordering::Relaxed) && Instant::now() < deadline {
                    glommio::timer::sleep(Duration::from_millis(10)).await;
                }
            })
            .unwrap();
        let addr = addr_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        ServerThread {
            addr,
            seen,
            stop,
            handle: Some(handle),
        }
    }
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

/// Tuning for tests: small bounds and short timeouts so every limit is reachable quickly.
pub fn test_tuning() -> HttpTuning {
    HttpTuning {
        header_read_timeout_ms: 300,
        idle_timeout_ms: 2_000,
        body_read_timeout_ms: 300,
        backend_timeout_ms: 1_000,
        body_bytes_max: 64 << 10,
        verify_threads_count: 2,
        ..HttpTuning::default()
    }
}

/// A parsed HTTP/1.1 answer.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Connects with a 5 s read timeout.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// Reads one answer (head, then a Content-Length body, or to EOF without one).
pub fn read_answer(stream: &mut impl Read) -> std::io::Result<Answer> {
    let mut data = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        data.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&data[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line in {head:?}")))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = data[head_end..].to_vec();
    let length = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok());
    match length {
        Some(length) => {
            while body.len() < length {
                let n = stream.read(&mut chunk)?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                body.extend_from_slice(&chunk[..n]);
            }
            body.truncate(length);
        }
        None => {
            let _ = stream.read_to_end(&mut body);
        }
    }
    Ok(Answer {
        status,
        headers,
        body,
    })
}

/// A TLS client connection (no certificate check: the node's certificate is self-signed)
/// offering the ALPN protocols `alpn` (wire format) and at most TLS `max_version`.
pub fn tls_connect(
    addr: SocketAddr,
    alpn: &[u8],
    max_version: boring::ssl::SslVersion,
) -> Result<boring::ssl::SslStream<TcpStream>, String> {
    use boring::ssl::{SslConnector, SslMethod, SslVerifyMode};
    let mut builder = SslConnector::builder(SslMethod::tls()).map_err(|e| e.to_string())?;
    builder.set_verify(SslVerifyMode::NONE);
    builder
        .set_max_proto_version(Some(max_version))
        .map_err(|e| e.to_string())?;
    builder.set_alpn_protos(alpn).map_err(|e| e.to_string())?;
    // BoringSSL clients do not offer Ed25519 by default; the node's certificate is Ed25519
    // (rustls- and OpenSSL-based agents offer it).
    builder
        .set_verify_algorithm_prefs(&[
            boring::ssl::SslSignatureAlgorithm::ED25519,
            boring::ssl::SslSignatureAlgorithm::ECDSA_SECP256R1_SHA256,
            boring::ssl::SslSignatureAlgorithm::RSA_PSS_RSAE_SHA256,
        ])
        .map_err(|e| e.to_string())?;
    let connector = builder.build();
    let config = connector.configure().map_err(|e| e.to_string())?;
    config
        .verify_hostname(false)
        .connect("localhost", connect(addr))
        .map_err(|e| e.to_string())
}

/// One request on a fresh connection.
pub fn request(addr: SocketAddr, method: &str, path: &str, body: Option<&[u8]>) -> Answer {
    let mut stream = connect(addr);
    send_request(&mut stream, method, path, body);
    read_answer(&mut stream).unwrap()
}

/// Writes one request with `Content-Type: application/cbor` when it has a body.
pub fn send_request(stream: &mut TcpStream, method: &str, path: &str, body: Option<&[u8]>) {
    stream
        .write_all(&request_bytes(method, path, body))
        .unwrap();
}

/// One complete HTTP/1.1 request, head and body, as sent in a single write (with
/// `Content-Type: application/cbor` when it has a body): load generators build these ahead.
pub fn request_bytes(method: &str, path: &str, body: Option<&[u8]>) -> Vec<u8> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: test\r\n");
    if let Some(body) = body {
        head.push_str(&format!(
            "Content-Type: application/cbor\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body.unwrap_or_default());
    bytes
}

/// Nanoseconds since 1970.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// An ingress expiry two minutes ahead, as agents set it.
pub fn fresh_expiry() -> u64 {
    now_ns() + 120_000_000_000
}

/// The canister the tests address.
pub fn test_canister() -> Principal {
    Principal::from_canister_index(42)
}

/// A call or query (`query` picks which) from `key` (None: anonymous), signed when a key is
/// given.
pub fn call_envelope(
    key: Option<&TestKey>,
    query: bool,
    canister: Principal,
    method: &str,
    arg: &[u8],
    ingress_expiry: u64,
) -> Vec<u8> {
    let content = CallContent {
        canister_id: canister,
        method_name: Cow::Owned(method.to_string()),
        arg: Cow::Owned(arg.to_vec()),
        sender: key.map_or(Principal::ANONYMOUS, |k| {
            Principal::self_authenticating(&k.public_der())
        }),
        nonce: Some(Cow::Owned(now_ns().to_be_bytes().to_vec())),
        ingress_expiry,
    };
    let content = if query {
        RequestContent::Query(content)
    } else {
        RequestContent::Call(content)
    };
    sign(key, content)
}

/// A read_state of `paths` from `key` (None: anonymous).
pub fn read_state_envelope(key: Option<&TestKey>, paths: &[&[&[u8]]]) -> Vec<u8> {
    let content = RequestContent::ReadState(ReadStateContent {
        paths: paths
            .iter()
            .map(|p| p.iter().map(|l| Cow::Owned(l.to_vec())).collect())
            .collect(),
        sender: key.map_or(Principal::ANONYMOUS, |k| {
            Principal::self_authenticating(&k.public_der())
        }),
        nonce: None,
        ingress_expiry: fresh_expiry(),
    });
    sign(key, content)
}

fn sign(key: Option<&TestKey>, content: RequestContent<'static>) -> Vec<u8> {
    let mut envelope = RequestEnvelope {
        content,
        request_id: RequestId([0; 32]),
        sender_pubkey: key.map(|k| Cow::Owned(k.public_der())),
        sender_sig: None,
        sender_delegation: None,
    };
    let mut unsigned = Vec::new();
    envelope.encode(&mut unsigned);
    envelope.request_id = decode_request_envelope(&unsigned, &IcLimits::default())
        .unwrap()
        .request_id;
    if let Some(key) = key {
        envelope.sender_sig = Some(Cow::Owned(key.sign(&envelope.signing_bytes())));
    }
    let mut out = Vec::new();
    envelope.encode(&mut out);
    out
}

/// Test keys that sign like agents do (DER public keys, raw signatures).
pub mod keys {
    use boring::ec::{EcGroup, EcKey};
    use boring::ecdsa::EcdsaSig;
    use boring::nid::Nid;
    use boring::pkey::{Id, PKey, Private};
    use boring::sign::Signer;

    pub enum TestKey {
        Ed25519(PKey<Private>),
        P256(EcKey<Private>),
        Secp256k1(Box<k256::ecdsa::SigningKey>),
    }

    impl TestKey {
        pub fn ed25519() -> TestKey {
            TestKey::Ed25519(PKey::generate(Id::ED25519).unwrap())
        }

        pub fn p256() -> TestKey {
            let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
            TestKey::P256(EcKey::generate(&group).unwrap())
        }

        pub fn secp256k1(seed: u8) -> TestKey {
            let secret = [seed.max(1); 32];
            TestKey::Secp256k1(Box::new(
                k256::ecdsa::SigningKey::from_bytes(&secret.into()).unwrap(),
            ))
        }

        pub fn public_der(&self) -> Vec<u8> {
            match self {
                TestKey::Ed25519(key) => key.public_key_to_der().unwrap(),
                TestKey::P256(key) => PKey::from_ec_key(key.clone())
                    .unwrap()
                    .public_key_to_der()
                    .unwrap(),
                TestKey::Secp256k1(key) => {
                    let point = key.verifying_key().to_encoded_point(false);
                    [
                        &crate::http::auth::SECP256K1_SPKI_PREFIX[..],
                        point.as_bytes(),
                    ]
                    .concat()
                }
            }
        }

        pub fn sign(&self, message: &[u8]) -> Vec<u8> {
            match self {
                TestKey::Ed25519(key) => Signer::new_without_digest(key)
                    .unwrap()
                    .sign_oneshot_to_vec(message)
                    .unwrap(),
                TestKey::P256(key) => {
                    let digest = boring::sha::sha256(message);
                    let sig = EcdsaSig::sign(&digest, key).unwrap();
                    [
                        sig.r().to_vec_padded(32).unwrap(),
                        sig.s().to_vec_padded(32).unwrap(),
                    ]
                    .concat()
                }
                TestKey::Secp256k1(key) => {
                    use k256::ecdsa::signature::Signer as _;
                    let sig: k256::ecdsa::Signature = key.sign(message);
                    sig.to_bytes().to_vec()
                }
            }
        }
    }
}

pub use keys::TestKey;
