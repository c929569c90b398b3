//! The `axum-tokio` baseline: the IC's own HTTP stack shape (axum on a multi-thread tokio
//! runtime, tower's `load_shed` in front of a bounded `buffer` and a `concurrency_limit`, and a
//! `timeout`) doing the same work per query as icn: decode the CBOR envelope and compute its
//! request id, check the expiry window, verify the sender's signature, execute on the same
//! built-in canisters, sign the response with an Ed25519 node key (icn's own `NodeSigner`) and
//! encode it.
//!
//! It runs as a child process of `icn-bench` (the hidden `http-axum-serve` subcommand) so its
//! CPU time and peak resident memory are its own, as an `icn node`'s are. The CPU work of a
//! query runs on tokio's blocking pool, one thread per core, as the IC moves verification and
//! execution off its async workers. Each stage is timed with `Instant` and the sums are served on
//! `GET /bench/stages`: icn's `/metrics` has no per-stage timings, so this breakdown is the
//! baseline's, labelled as such in the report.
//!
//! Updates are not served: the baseline has no consensus, so the update cases report icn only.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::error_handling::HandleErrorLayer;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{BoxError, Router};
use boring::pkey::{Id, PKey};
use icn_codecs::ic::{
    decode_request_envelope, encode_query_response, query_response_signing_bytes, IcLimits,
    NodeSignature, Principal, QueryOutcome, Reject, RequestContent,
};
use icn_shards::http::auth::{authenticate, check_ingress_expiry};
use icn_shards::replica::canisters::{CallOutcome, CanisterLimits, Canisters};
use icn_shards::replica::driver::NodeSigner;
use serde_json::{json, Value};
use tower::ServiceBuilder;

use super::ServerProcesses;

/// The icn `[http]` defaults the baseline copies: the query class's concurrency and queue, the
/// backend deadline, the body bound, the expiry window and drift.
const QUERY_CONCURRENCY_MAX: usize = icn_tuning::HTTP_QUERY_CONCURRENCY_MAX_DEFAULT;
const QUERY_QUEUE_MAX: usize = icn_tuning::HTTP_QUERY_QUEUE_MAX_DEFAULT;
const BACKEND_TIMEOUT_MS: u64 = icn_tuning::HTTP_BACKEND_TIMEOUT_MS_DEFAULT;
const BODY_BYTES_MAX: usize = icn_tuning::HTTP_BODY_BYTES_MAX_DEFAULT;
const EXPIRY_WINDOW_NS: u64 = icn_tuning::HTTP_INGRESS_EXPIRY_WINDOW_MS_DEFAULT * 1_000_000;
const EXPIRY_DRIFT_NS: u64 = icn_tuning::HTTP_INGRESS_EXPIRY_DRIFT_MS_DEFAULT * 1_000_000;
/// How long the child has to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// The stages of one query, timed on the blocking pool (nanosecond sums).
#[derive(Default)]
struct Stages {
    queries: AtomicU64,
    /// From the handler having the body to the blocking task starting.
    queue_ns: AtomicU64,
    /// CBOR decode and the request id (the representation-independent hash).
    decode_hash_ns: AtomicU64,
    /// Endpoint and canister checks, expiry window, sender and signature verification.
    verify_ns: AtomicU64,
    execute_ns: AtomicU64,
    /// Response signing bytes (a hash of the outcome) and the Ed25519 signature.
    sign_ns: AtomicU64,
    encode_ns: AtomicU64,
}

impl Stages {
    fn json(&self) -> Value {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        json!({
            "queries": get(&self.queries),
            "queue_ns": get(&self.queue_ns),
            "decode_hash_ns": get(&self.decode_hash_ns),
            "verify_ns": get(&self.verify_ns),
            "execute_ns": get(&self.execute_ns),
            "sign_ns": get(&self.sign_ns),
            "encode_ns": get(&self.encode_ns),
        })
    }
}

/// Stage names in the order a query passes them (the report's `stage_<name>_us` fields).
pub const STAGES: [&str; 6] = [
    "queue",
    "decode_hash",
    "verify",
    "execute",
    "sign",
    "encode",
];

struct Node {
    canisters: Canisters,
    key: NodeSigner,
    principal: Principal,
    limits: IcLimits,
    stages: Stages,
}

/// The hidden `http-axum-serve` subcommand: serves on `listen` until killed, after printing
/// `listening <addr>` on stdout.
pub fn serve_main(listen: SocketAddr) -> i32 {
    // CPU-bound work belongs on a pool of one thread per core (tokio's documentation points to
    // a rayon-like pool; icn's verification and signing pools are fixed too): the default of
    // 512 blocking threads would only add context switches and memory.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .max_blocking_threads(cores)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("http-axum-serve: tokio runtime: {error}");
            return 1;
        }
    };
    match runtime.block_on(serve(listen)) {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("http-axum-serve: {error}");
            1
        }
    }
}

async fn serve(listen: SocketAddr) -> Result<(), String> {
    let key = PKey::generate(Id::ED25519).map_err(|e| format!("node key: {e}"))?;
    let der = key
        .public_key_to_der()
        .map_err(|e| format!("node key: {e}"))?;
    let node = Arc::new(Node {
        canisters: Canisters::new(CanisterLimits::from_tuning(&Default::default())),
        principal: Principal::self_authenticating(&der),
        key: NodeSigner::from_pkey(&key)?,
        limits: IcLimits::default(),
        stages: Stages::default(),
    });
    let overload = ServiceBuilder::new()
        .layer(HandleErrorLayer::new(overload_answer))
        .load_shed()
        .buffer(QUERY_QUEUE_MAX)
        .concurrency_limit(QUERY_CONCURRENCY_MAX)
        .timeout(Duration::from_millis(BACKEND_TIMEOUT_MS));
    let queries = Router::new()
        .route("/api/v2/canister/{id}/query", post(query))
        .route("/api/v3/canister/{id}/query", post(query))
        .layer(overload)
        .layer(DefaultBodyLimit::max(BODY_BYTES_MAX));
    let app = Router::new()
        .route("/bench/stages", get(stages))
        .merge(queries)
        .with_state(node);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("bind {listen}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    println!("listening {addr}");
    axum::serve(listener, app)
        .await
        .map_err(|e| format!("serve: {e}"))
}

/// tower's overload errors as the IC answers them: shed -> 429, deadline -> 504.
async fn overload_answer(error: BoxError) -> Response {
    if error.is::<tower::load_shed::error::Overloaded>() {
        (StatusCode::TOO_MANY_REQUESTS, "overloaded, retry later").into_response()
    } else if error.is::<tower::timeout::error::Elapsed>() {
        (StatusCode::GATEWAY_TIMEOUT, "the query timed out").into_response()
    } else {
        (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response()
    }
}

async fn stages(State(node): State<Arc<Node>>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        node.stages.json().to_string(),
    )
        .into_response()
}

async fn query(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .eq_ignore_ascii_case("application/cbor")
    {
        return (
            StatusCode::BAD_REQUEST,
            "Unexpected content-type, expected application/cbor",
        )
            .into_response();
    }
    let Ok(effective) = Principal::from_text(&id) else {
        return (StatusCode::BAD_REQUEST, "bad canister id in the URL").into_response();
    };
    let queued = Instant::now();
    let job = tokio::task::spawn_blocking(move || answer_query(&node, &effective, &body, queued));
    match job.await {
        Ok(Ok(cbor)) => ([(header::CONTENT_TYPE, "application/cbor")], cbor).into_response(),
        Ok(Err(message)) => (StatusCode::BAD_REQUEST, message).into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "query task failed").into_response(),
    }
}

fn elapsed_ns(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// The CPU work of one query, each stage timed.
fn answer_query(
    node: &Node,
    effective: &Principal,
    body: &[u8],
    queued: Instant,
) -> Result<Vec<u8>, String> {
    let stages = &node.stages;
    stages
        .queue_ns
        .fetch_add(elapsed_ns(queued), Ordering::Relaxed);
    let t = Instant::now();
    let envelope = decode_request_envelope(body, &node.limits)
        .map_err(|e| format!("could not decode the request body: {e}"))?;
    stages
        .decode_hash_ns
        .fetch_add(elapsed_ns(t), Ordering::Relaxed);
    let t = Instant::now();
    let RequestContent::Query(content) = &envelope.content else {
        return Err("this endpoint takes query".into());
    };
    if &content.canister_id != effective && content.canister_id != Principal::MANAGEMENT_CANISTER {
        return Err("canister id does not match the URL".into());
    }
    let now = icn_shards::http::testing::now_ns();
    check_ingress_expiry(
        content.ingress_expiry,
        now,
        EXPIRY_WINDOW_NS,
        EXPIRY_DRIFT_NS,
    )?;
    authenticate(&envelope, Some(effective), now)
        .map_err(|e| format!("Failed to authenticate request: {e}"))?;
    stages.verify_ns.fetch_add(elapsed_ns(t), Ordering::Relaxed);
    let t = Instant::now();
    let outcome = node
        .canisters
        .query(&content.canister_id, &content.method_name, &content.arg);
    stages
        .execute_ns
        .fetch_add(elapsed_ns(t), Ordering::Relaxed);
    let t = Instant::now();
    let wire = match &outcome {
        CallOutcome::Reply(arg) => QueryOutcome::Replied { arg },
        CallOutcome::Reject(reject) => QueryOutcome::Rejected(Reject {
            reject_code: reject.code.as_u64(),
            reject_message: &reject.message,
            error_code: Some(reject.error_code),
        }),
    };
    let timestamp = icn_shards::http::testing::now_ns();
    let message = query_response_signing_bytes(&wire, timestamp, &envelope.request_id);
    let signature = node.key.sign(&message);
    stages.sign_ns.fetch_add(elapsed_ns(t), Ordering::Relaxed);
    let t = Instant::now();
    let mut out = Vec::with_capacity(256);
    encode_query_response(
        &wire,
        &[NodeSignature {
            timestamp,
            signature: &signature,
            identity: node.principal,
        }],
        &mut out,
    );
    stages.encode_ns.fetch_add(elapsed_ns(t), Ordering::Relaxed);
    stages.queries.fetch_add(1, Ordering::Relaxed);
    Ok(out)
}

/// Starts the baseline as a child process of this executable on a free loopback port.
pub fn start() -> Result<ServerProcesses, String> {
    let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
    let mut child = Command::new(exe)
        .args(["http-axum-serve", "--listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("starting the axum baseline: {e}"))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let mut processes = ServerProcesses::new(vec![child], None);
    let line = rx
        .recv_timeout(START_TIMEOUT)
        .map_err(|_| "the axum baseline printed no address".to_string())?;
    let addr: SocketAddr = line
        .trim()
        .strip_prefix("listening ")
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| format!("the axum baseline said {line:?}"))?;
    processes.addrs = vec![addr];
    Ok(processes)
}

/// The baseline's stage sums, read over plain HTTP from the child.
pub fn read_stages(addr: SocketAddr) -> Option<Value> {
    let answer = super::plain_exchange(
        addr,
        b"GET /bench/stages HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n",
    )
    .ok()?;
    (answer.status == 200)
        .then(|| serde_json::from_slice(&answer.body).ok())
        .flatten()
}

/// Average microseconds per query of each stage between two readings of `/bench/stages`.
pub fn stage_averages(before: &Value, after: &Value) -> Vec<(String, f64)> {
    let diff = |key: &str| {
        after[key]
            .as_u64()
            .unwrap_or(0)
            .saturating_sub(before[key].as_u64().unwrap_or(0))
    };
    let queries = diff("queries");
    if queries == 0 {
        return Vec::new();
    }
    STAGES
        .iter()
        .map(|stage| {
            (
                format!("axum_stage_{stage}_us"),
                diff(&format!("{stage}_ns")) as f64 / queries as f64 / 1000.0,
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_averages_are_per_query_microseconds() {
        let before = json!({"queries": 10, "sign_ns": 1000});
        let after = json!({"queries": 20, "sign_ns": 201_000, "verify_ns": 50_000});
        let averages = stage_averages(&before, &after);
        let get = |name: &str| averages.iter().find(|(n, _)| n == name).map(|(_, v)| *v);
        assert_eq!(get("axum_stage_sign_us"), Some(20.0));
        assert_eq!(get("axum_stage_verify_us"), Some(5.0));
        assert_eq!(get("axum_stage_execute_us"), Some(0.0));
        assert!(stage_averages(&after, &after).is_empty());
    }
}
