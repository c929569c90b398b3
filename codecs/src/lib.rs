//! icn wire formats: pure functions from values to bytes and back, with no I/O and no runtime.
//!
//! Every message on a QUIC stream or a TCP connection is one *frame*:
//!
//! ```text
//! [ 16-byte header ][ envelope: one FlatBuffers table ][ body: raw payload bytes ]
//! ```
//!
//! - [`frame`]: the fixed little-endian header ([`FrameHeader`]), [`encode_frame`] and
//!   [`split_frame`]; lengths are checked against [`FrameLimits`] before anything is buffered.
//! - [`envelope`]: the RPC envelope tables (request, response, cancel, ping/pong, goaway) as
//!   Rust values, their decoders, and [`decode_frame`] for header + envelope + body at once.
//! - [`payload`]: the services' request payloads (consensus-manager slot updates and artifact
//!   requests, state-sync adverts and manifest/chunk requests), size-prefixed FlatBuffers at the
//!   start of a request body, optionally followed by raw bytes (a pushed artifact).
//! - [`state`]: state manifests (files, chunks, pieces, meta-manifest), their encodings, the
//!   chunk plan and the domain-separated SHA-256 hashes that make a state's identity.
//! - [`Encoder`]: one reusable FlatBuffers builder for all `encode_*` methods, so the hot path
//!   does not allocate per message.
//! - [`generated`]: the flatc output for `codecs/schema/*.fbs` (regenerate with `codecs/gen.sh`).
//! - [`ic`]: the IC public HTTP interface (CBOR request envelopes, request ids, principals,
//!   responses, hash trees and certificates), for the HTTP API; independent of the frames above.
//! - [`fuzzing`]: decode-then-re-encode checks shared by the fuzz targets and the corpus replay.
//!
//! Invariants: decoders never panic on any input; they verify every FlatBuffer with the explicit
//! limits of a [`CodecLimits`] and return a [`DecodeError`] (always the peer's fault). Decoded
//! values borrow from the input; nothing is copied. Encoders enforce the same limits, so what we
//! send a peer with our limits accepts. `docs/protocol.md` describes the wire format in full.

pub mod canister_state;
pub mod encoder;
pub mod envelope;
pub mod error;
pub mod frame;
pub mod fuzzing;
pub mod generated;
pub mod ic;
pub mod limits;
pub mod payload;
pub mod replica;
pub mod state;
mod verify;

pub use encoder::Encoder;
pub use envelope::{
    decode_cancel, decode_envelope, decode_frame, decode_goaway, decode_heartbeat, decode_request,
    decode_response, CancelEnvelope, Envelope, Frame, GoawayEnvelope, GoawayReason,
    HeartbeatEnvelope, Priority, RequestEnvelope, ResponseEnvelope, RpcStatus,
};
pub use error::{DecodeError, EncodeError};
pub use frame::{
    encode_frame, split_frame, FrameHeader, FrameKind, FrameLimits, FRAME_HEADER_BYTES,
    FRAME_MAGIC, FRAME_VERSION,
};
pub use limits::CodecLimits;
pub use payload::{
    decode_artifact_batch_request, decode_artifact_batch_response, decode_artifact_request,
    decode_chunk_request, decode_manifest_request, decode_slot_update, decode_slot_updates,
    decode_state_advert, ArtifactBatchRequest, ArtifactRequest, ChunkRequest, ManifestRequest,
    SlotUpdate, StateAdvert, ARTIFACT_BATCH_IDS_MAX, ARTIFACT_BATCH_ID_OVERHEAD_BYTES, HASH_BYTES,
};
