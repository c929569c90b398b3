//! The public HTTP API of a node (IC interface specification), the front that the reference
//! replica plugs into (issue 5).
//!
//! Layering, from the socket up:
//! - [`server`]: the glommio driver. One SO_REUSEPORT listener per shard, the accept loop with
//!   the total and per-IP connection limits, HTTP/1.1 or HTTP/2 (h2c prior knowledge) chosen by
//!   sniffing the preface, and a watchdog per connection for the header and idle timeouts.
//! - [`io`]: glommio's `TcpStream` under hyper's `rt` traits, hyper's HTTP/2 tasks on the
//!   shard's executor, and the activity record the watchdog reads.
//! - [`service`]: the server core, one request from parsed head to answer: routing, admission
//!   (before the body), body bounds and deadline, decode and verify on the pool, the backend
//!   under a deadline, CBOR answers.
//! - [`routes`], [`admission`], [`auth`], [`pool`]: paths and classes; per-class gates and the
//!   per-IP limiter; expiry window and signatures (Ed25519, ECDSA P-256 and secp256k1,
//!   delegations); the bounded CPU pool.
//! - [`batch`]: queries' and read_state requests' Ed25519 signatures verified in batches on
//!   the pool while requests wait for a thread.
//! - [`backend`]: the [`Backend`] trait the replica implements, with typed requests and
//!   replies. [`remote`]: the backend of the shards other than the home shard, which hands
//!   requests to the home shard's. [`metrics`]: the `icn_http_*` families.
//!
//! - [`tls`]: TLS 1.3 with BoringSSL over in-memory buffers, as a stream hyper can drive; a
//!   connection whose first byte is a TLS handshake record gets TLS when the server has a
//!   certificate, any other is plaintext (HTTP/1.1 or h2c).
//!
//! Every bound is a knob of the `[http]` tuning section.

pub mod admission;
pub mod auth;
pub mod backend;
pub mod batch;
pub mod io;
pub mod metrics;
pub mod pool;
pub mod remote;
pub mod routes;
pub mod server;
pub mod service;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod tls;

#[cfg(test)]
mod tests;

pub use backend::{
    Backend, BackendError, BackendStatus, CallReply, CallRequest, CallVersion, LocalBoxFuture,
    NoReplica, OwnedNodeSignature, OwnedReject, QueryReply, QueryRequest, QueryResult,
    QueryTimings, ReadStateReply, ReadStateRequest, ReadStateTarget,
};
pub use metrics::{HttpMetricIds, HttpMetrics, Rejection, Stage};
pub use pool::CpuPool;
pub use routes::{EndpointClass, Route};
pub use server::{bind_listener, HttpServer};
pub use service::{system_clock, Clock, HttpDeps, ServerState, IC_API_VERSION};
