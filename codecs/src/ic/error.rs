//! Errors of the IC public-interface codecs.
//!
//! Like [`crate::DecodeError`], an [`IcDecodeError`] is always the client's fault: the HTTP layer
//! answers it with a 400 and the error's text, which names the offending field so that a
//! developer reading the response can fix the request.

use super::principal::PrincipalError;

/// Why a request body, a certificate or a hash tree was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IcDecodeError {
    /// The bytes are not well-formed CBOR (or end early); `offset` is where decoding stopped.
    #[error("malformed CBOR at byte {offset}: {detail}")]
    Cbor { offset: u64, detail: &'static str },
    /// Arrays, maps and tags nest deeper than the configured bound.
    #[error("CBOR nested too deeply at byte {offset}")]
    TooDeep { offset: u64 },
    /// Bytes follow the single data item a body must consist of.
    #[error("{bytes} bytes after the end of the CBOR data item")]
    TrailingBytes { bytes: u64 },
    /// A length or count is above the bound named `limit` (an [`IcLimits`](super::IcLimits)
    /// field).
    #[error("{limit} exceeded: {value} > {max}")]
    LimitExceeded {
        limit: &'static str,
        value: u64,
        max: u64,
    },
    /// A required field is absent.
    #[error("missing field {field}")]
    MissingField { field: &'static str },
    /// A field appears twice in one map; its meaning (and the request id) would be ambiguous.
    #[error("duplicate field {field}")]
    DuplicateField { field: &'static str },
    /// A field holds a value of the wrong CBOR type.
    #[error("field {field}: expected {expected}, found {found}")]
    WrongType {
        field: &'static str,
        expected: &'static str,
        found: &'static str,
    },
    /// A field has the right type but a value the interface does not allow.
    #[error("field {field}: {detail}")]
    InvalidValue {
        field: &'static str,
        detail: &'static str,
    },
    /// `request_type` names no request this endpoint knows.
    #[error("unknown request_type (expected call, query or read_state)")]
    UnknownRequestType,
    /// A value that the representation-independent hash does not define (a float, a bool, a
    /// tag, a non-text map key, ...), so the request id cannot be computed.
    #[error("field {field}: a {found} has no representation-independent hash")]
    NotHashable {
        field: &'static str,
        found: &'static str,
    },
    /// A principal field holds bytes that are not a principal.
    #[error("field {field}: {error}")]
    Principal {
        field: &'static str,
        error: PrincipalError,
    },
}
