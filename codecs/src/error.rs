//! Errors of the codecs.
//!
//! A [`DecodeError`] always means the bytes came from a peer that broke the protocol (or from a
//! corrupted stream): the caller counts it against the peer and closes the stream or connection.
//! An [`EncodeError`] always means a local caller asked for something the wire format or our own
//! limits cannot carry: it is our bug or a misconfiguration, never the peer's.

/// Why remote bytes were rejected. Every variant is the sender's fault.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input ends before the structure it announces; on a stream, read more and retry.
    #[error("truncated input: needed {needed} bytes, got {got}")]
    Truncated { needed: u64, got: u64 },
    #[error("bad frame magic {found:#06x}")]
    BadMagic { found: u16 },
    #[error("unsupported protocol version {found}")]
    UnsupportedVersion { found: u8 },
    #[error("unknown frame kind {found}")]
    UnknownFrameKind { found: u8 },
    /// A length or count is above the receiver's configured bound named `limit`.
    #[error("{limit} exceeded: {value} > {max}")]
    LimitExceeded {
        limit: &'static str,
        value: u64,
        max: u64,
    },
    /// The FlatBuffers verifier rejected the buffer (out-of-bounds offsets, bad UTF-8, missing
    /// required field, too deep, too many tables, apparent size too large).
    #[error("invalid flatbuffer: {0}")]
    InvalidFlatbuffer(#[from] flatbuffers::InvalidFlatbuffer),
    /// An enum field holds a value this protocol version does not define.
    #[error("unknown value {value} for {field}")]
    UnknownEnumValue { field: &'static str, value: u8 },
    /// Bytes follow a message that says nothing may follow it.
    #[error("{kind} carries {bytes} unexpected trailing bytes")]
    UnexpectedBytes { kind: &'static str, bytes: u64 },
    /// A pushed artifact's length differs from the length its SlotUpdate declares.
    #[error("artifact declared as {declared} bytes, body carries {got}")]
    ArtifactLengthMismatch { declared: u64, got: u64 },
    /// Fields that each decode but contradict each other.
    #[error("invalid {kind}: {detail}")]
    Invalid {
        kind: &'static str,
        detail: &'static str,
    },
}

/// Why a local value could not be encoded. Never the peer's fault.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// A field or the whole message is above the bound named `limit` (the same bound the
    /// receiving side enforces, so we never send what a peer with our limits would reject).
    #[error("{limit} exceeded: {value} > {max}")]
    LimitExceeded {
        limit: &'static str,
        value: u64,
        max: u64,
    },
    /// Only Request frames and Response frames with status Ok carry a body.
    #[error("a {kind} frame cannot carry a body ({bytes} bytes)")]
    UnexpectedBody { kind: &'static str, bytes: u64 },
}

/// Checks `value <= max` for a decoder; `limit` names the bound in the error.
pub(crate) fn check_decode_limit(
    limit: &'static str,
    value: usize,
    max: usize,
) -> Result<(), DecodeError> {
    if value > max {
        return Err(DecodeError::LimitExceeded {
            limit,
            value: value as u64,
            max: max as u64,
        });
    }
    Ok(())
}

/// Checks `value <= max` for an encoder; `limit` names the bound in the error.
pub(crate) fn check_encode_limit(
    limit: &'static str,
    value: usize,
    max: usize,
) -> Result<(), EncodeError> {
    if value > max {
        return Err(EncodeError::LimitExceeded {
            limit,
            value: value as u64,
            max: max as u64,
        });
    }
    Ok(())
}
