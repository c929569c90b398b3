//! What the HTTP front hands to the replica behind it, and what it gets back.
//!
//! The server decodes, checks the expiry window and verifies signatures before a request gets
//! here, so a [`Backend`] only ever sees authenticated, typed requests whose request id is
//! already computed. The replica (ordering, execution, certification) implements this trait;
//! the server owns encoding the answers as CBOR, so a backend never touches HTTP or CBOR.
//!
//! Backends run on the shard's executor: their futures need not be `Send`, and anything slow
//! must be awaited, not computed inline, because the server bounds every call with
//! `http.backend_timeout_ms` (504) and that bound only works if the future yields.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use icn_codecs::ic::{CallContent, Principal, ReadStateContent, RequestId};

/// A boxed future that stays on the shard (no `Send`).
pub type LocalBoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// Which call endpoint a call came through: v2 is asynchronous (202, the agent polls
/// read_state), v3 and v4 wait for the certified outcome up to the backend's own wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallVersion {
    V2,
    V3,
    V4,
}

/// An authenticated update call.
#[derive(Clone, Debug)]
pub struct CallRequest {
    pub version: CallVersion,
    /// The canister id of the URL (the spec's effective canister id).
    pub effective_canister_id: Principal,
    pub request_id: RequestId,
    pub content: CallContent<'static>,
    /// The envelope exactly as received, for gossiping it to the subnet: other nodes verify it
    /// again and must compute the same request id.
    pub envelope: Bytes,
}

/// What a call endpoint answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallReply {
    /// Accepted for processing (202 with an empty body); on v3/v4 this also means "not
    /// certified within the wait, poll read_state".
    Accepted,
    /// v3/v4 only: executed and certified; the certificate holds the request status.
    Certified { certificate: Vec<u8> },
    /// Refused before consensus (v2: 400 with the reject map; v3/v4: 200 with
    /// `non_replicated_rejection`).
    Rejected(OwnedReject),
}

/// A reject that owns its text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnedReject {
    pub reject_code: u64,
    pub reject_message: String,
    pub error_code: Option<String>,
}

/// An authenticated query.
#[derive(Clone, Debug)]
pub struct QueryRequest {
    pub effective_canister_id: Principal,
    pub request_id: RequestId,
    pub content: CallContent<'static>,
}

/// A query's outcome and the node signatures over it (the server encodes them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueryReply {
    pub outcome: QueryResult,
    pub signatures: Vec<OwnedNodeSignature>,
    /// Where the backend's time went, when it measures it (`icn_http_stage_us`).
    pub timings: Option<QueryTimings>,
}

/// Microseconds a backend spent on one query, by stage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueryTimings {
    /// Executing the query.
    pub execute_us: u64,
    /// Waiting for a thread to sign the answer.
    pub sign_wait_us: u64,
    /// Of that wait, the time queued behind other jobs ([`super::CpuPool::try_run_measured`]).
    pub sign_queued_us: u64,
    /// Signing the answer.
    pub sign_us: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QueryResult {
    Replied { arg: Vec<u8> },
    Rejected(OwnedReject),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnedNodeSignature {
    pub timestamp: u64,
    pub signature: Vec<u8>,
    pub identity: Principal,
}

/// Whose state a read_state reads: a canister's (URL `/canister/<id>/read_state`) or a
/// subnet's (`/subnet/<id>/read_state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadStateTarget {
    Canister(Principal),
    Subnet(Principal),
}

/// An authenticated read_state.
#[derive(Clone, Debug)]
pub struct ReadStateRequest {
    pub target: ReadStateTarget,
    pub request_id: RequestId,
    pub content: ReadStateContent<'static>,
}

/// A read_state answer: the encoded certificate (a witness of the requested paths).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadStateReply {
    pub certificate: Vec<u8>,
}

/// What `GET /api/v2/status` reports beyond the interface version.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BackendStatus {
    /// The subnet's (or root's) DER public key; `None` until the replica has a subnet key, so
    /// agents' `fetch_root_key` fails visibly instead of trusting a made-up key.
    pub root_key: Option<Vec<u8>>,
    /// "healthy", "starting", ...
    pub replica_health_status: &'static str,
    pub certified_height: Option<u64>,
}

/// Why a backend could not answer. Each maps to one HTTP status.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// The replica is not ready (starting, catching up): 503.
    #[error("replica unavailable: {0}")]
    Unavailable(String),
    /// The replica sheds this request (its own queues are full): 429.
    #[error("replica overloaded: {0}")]
    Overloaded(String),
    /// The addressed canister or subnet does not exist here: 404.
    #[error("not found: {0}")]
    NotFound(String),
    /// The request is well-formed but the replica refuses it (e.g. a path the sender may not
    /// read): 403.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// A bug or an internal failure: 500.
    #[error("internal error: {0}")]
    Internal(String),
}

/// The replica as the HTTP front sees it. One instance per shard (`Rc<dyn Backend>`).
pub trait Backend {
    fn status(&self) -> BackendStatus;
    fn call(&self, request: CallRequest) -> LocalBoxFuture<'_, Result<CallReply, BackendError>>;
    fn query(&self, request: QueryRequest) -> LocalBoxFuture<'_, Result<QueryReply, BackendError>>;
    fn read_state(
        &self,
        request: ReadStateRequest,
    ) -> LocalBoxFuture<'_, Result<ReadStateReply, BackendError>>;
}

/// Copies a call's content out of the request body it borrows from.
pub fn owned_call(content: &CallContent<'_>) -> CallContent<'static> {
    CallContent {
        canister_id: content.canister_id,
        method_name: Cow::Owned(content.method_name.clone().into_owned()),
        arg: Cow::Owned(content.arg.clone().into_owned()),
        sender: content.sender,
        nonce: content.nonce.as_ref().map(|n| Cow::Owned(n.to_vec())),
        ingress_expiry: content.ingress_expiry,
    }
}

/// Copies a read_state's content out of the request body it borrows from.
pub fn owned_read_state(content: &ReadStateContent<'_>) -> ReadStateContent<'static> {
    ReadStateContent {
        paths: content
            .paths
            .iter()
            .map(|path| path.iter().map(|l| Cow::Owned(l.to_vec())).collect())
            .collect(),
        sender: content.sender,
        nonce: content.nonce.as_ref().map(|n| Cow::Owned(n.to_vec())),
        ingress_expiry: content.ingress_expiry,
    }
}

/// The backend of an `icn node` that runs no replica: one whose identity folder holds no subnet
/// key (`subnet_bls_key.pem`), so it cannot certify state. The API front is up (status,
/// admission, decoding, signature checks, metrics), and every request that would need a
/// replica is answered 503 with a message saying so, which is what agents see from a replica
/// that is still starting. A node with the key runs the reference replica instead.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoReplica;

impl NoReplica {
    const MESSAGE: &'static str = "no replica runs behind this node: its identity folder holds no subnet key (subnet_bls_key.pem)";
}

impl Backend for NoReplica {
    fn status(&self) -> BackendStatus {
        BackendStatus {
            root_key: None,
            replica_health_status: "starting",
            certified_height: None,
        }
    }

    fn call(&self, _: CallRequest) -> LocalBoxFuture<'_, Result<CallReply, BackendError>> {
        Box::pin(async { Err(BackendError::Unavailable(Self::MESSAGE.into())) })
    }

    fn query(&self, _: QueryRequest) -> LocalBoxFuture<'_, Result<QueryReply, BackendError>> {
        Box::pin(async { Err(BackendError::Unavailable(Self::MESSAGE.into())) })
    }

    fn read_state(
        &self,
        _: ReadStateRequest,
    ) -> LocalBoxFuture<'_, Result<ReadStateReply, BackendError>> {
        Box::pin(async { Err(BackendError::Unavailable(Self::MESSAGE.into())) })
    }
}
