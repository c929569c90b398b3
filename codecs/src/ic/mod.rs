//! The IC's public HTTP interface, wire formats only: what IC agents (agent-rs, agent-js) send
//! to `/api/v2|v3/...` endpoints and what they expect back. No I/O and no HTTP here; the server
//! in `shards/` feeds request bodies in and writes the encoded responses out.
//!
//! - [`cbor`]: a generic CBOR [`Value`] tree with bounded depth and allocation, over
//!   `minicbor`'s token decoder; bodies are accepted with or without the self-describe tag.
//! - [`principal`]: [`Principal`] bytes and text (`2vxsx-fae`), self-authenticating ids.
//! - [`hash`]: the representation-independent hash ([`RequestId`]) and the domain separators
//!   every signature in the interface uses.
//! - [`request`]: request envelopes (call, query, read_state, delegations) with their request
//!   id and the exact bytes each signature must cover; signatures are verified elsewhere.
//! - [`response`]: status, query, call, reject and read_state bodies, and the bytes a node signs
//!   for a query response.
//! - [`leaves`]: the `/time` (LEB128) and `/subnet/<id>/canister_ranges` (CBOR) leaves of the
//!   certified state tree.
//! - [`tree`]: [`HashTree`] (certified data): encoding, decoding, root hash, lookup, and pruned
//!   witnesses of a [`LabeledTree`] for read_state; [`Certificate`]s.
//!
//! Invariants: every decoder takes an [`IcLimits`], never panics, never recurses deeper than
//! its depth limit, and never allocates more than a constant times its input; errors are
//! [`IcDecodeError`]s naming the offending field. `docs/protocol.md` ("Public HTTP interface
//! (CBOR)") describes the formats.

pub mod cbor;
pub mod error;
pub mod hash;
pub mod leaves;
pub mod limits;
pub mod principal;
pub mod request;
pub mod response;
pub mod tree;

#[cfg(test)]
mod proptests;

pub use cbor::{
    blob, decode_value, decode_value_bounded, encode_tagged, encode_value, entry, text, Value,
    SELF_DESCRIBE_TAG,
};
pub use error::IcDecodeError;
pub use hash::{hash_value, Hash, RequestId};
pub use leaves::{
    canister_in_ranges, decode_canister_ranges, decode_time, encode_canister_ranges, encode_time,
};
pub use limits::IcLimits;
pub use principal::{Principal, PrincipalError};
pub use request::{
    decode_request_envelope, CallContent, Delegation, ReadStateContent, RequestContent,
    RequestEnvelope, SignedDelegation,
};
pub use response::{
    encode_query_response, encode_read_state_response, encode_reject_response,
    encode_status_response, encode_sync_call_response, query_response_signing_bytes, NodeSignature,
    QueryOutcome, Reject, StatusResponse, SyncCallResponse,
};
pub use tree::{
    decode_certificate, decode_hash_tree, Certificate, CertificateDelegation, HashTree,
    LabeledTree, Lookup,
};
