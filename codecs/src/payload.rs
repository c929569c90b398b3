//! Request payloads of the services: consensus-manager and state-sync messages.
//!
//! Each is a size-prefixed FlatBuffers message at the start of an RPC request body (a
//! little-endian u32 length, then the buffer). Only a [`SlotUpdate`] that pushes its artifact
//! has bytes after the message: the artifact itself, raw, so that it is written once into a
//! pooled buffer and never copied into a builder. Every other payload must fill its body exactly.
//!
//! Responses to [`ArtifactRequest`], [`ManifestRequest`] and [`ChunkRequest`] are raw bytes (the
//! artifact, the manifest piece, the chunk) in the Response frame's body, with no message.

use crate::encoder::Encoder;
use crate::error::{check_decode_limit, check_encode_limit, DecodeError, EncodeError};
use crate::generated::wire;
use crate::limits::CodecLimits;
use crate::verify;

/// Length of the hashes on the wire (SHA-256).
pub const HASH_BYTES: usize = 32;

/// The sender's slot for one artifact kind now holds an artifact: an advert, or the artifact
/// itself when `artifact_pushed` (its bytes then follow the message in the body).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotUpdate<'a> {
    pub artifact_kind: u8,
    pub slot: u64,
    /// Grows with every change to the sender's slot table; older updates are dropped.
    pub commit_id: u64,
    pub artifact_id: &'a [u8],
    pub attributes: &'a [u8],
    /// Size of the artifact, for adverts too (the receiver budgets downloads with it).
    pub artifact_bytes: u64,
    pub artifact_pushed: bool,
    /// The slot is now empty (the sender dropped `artifact_id`); never with `artifact_pushed`.
    pub slot_cleared: bool,
}

/// Asks for an advertised artifact; the response body is the artifact, or only bytes
/// `offset .. offset + length` of it when `length` is not 0 (a chunk).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArtifactRequest<'a> {
    pub artifact_kind: u8,
    pub artifact_id: &'a [u8],
    pub offset: u64,
    pub length: u64,
}

/// The sender holds a certified state at `height` with root hash `root_hash`; `partial` when
/// it is still syncing that state and serves only the chunks it has verified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateAdvert {
    pub height: u64,
    pub root_hash: [u8; HASH_BYTES],
    pub partial: bool,
}

/// Asks for one piece of the manifest of the state at `height`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ManifestRequest {
    pub height: u64,
    pub piece: u32,
}

/// Asks for one chunk of the state at `height`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkRequest {
    pub height: u64,
    pub chunk_index: u32,
}

/// Decodes a SlotUpdate body and returns the update and the pushed artifact's bytes (empty for
/// an advert), borrowed from `body`.
pub fn decode_slot_update<'a>(
    body: &'a [u8],
    limits: &CodecLimits,
) -> Result<(SlotUpdate<'a>, &'a [u8]), DecodeError> {
    let (table, artifact) = verify::size_prefixed_root::<wire::SlotUpdate>(body, limits)?;
    let update = slot_update_fields(table, limits)?;
    check_pushed_artifact(&update, artifact)?;
    Ok((update, artifact))
}

/// Decodes a body of one or more slot updates, each a size-prefixed SlotUpdate followed by its
/// pushed artifact (if any): how a sender batches the updates it has for one peer into one
/// request. A body of one update is exactly what [`decode_slot_update`] reads. At most
/// `updates_max` updates; an empty body, a truncated update or trailing bytes are errors.
pub fn decode_slot_updates<'a>(
    body: &'a [u8],
    limits: &CodecLimits,
    updates_max: usize,
) -> Result<Vec<(SlotUpdate<'a>, &'a [u8])>, DecodeError> {
    let mut updates = Vec::new();
    let mut rest = body;
    loop {
        check_decode_limit(
            "slot_updates_per_message_max",
            updates.len() + 1,
            updates_max,
        )?;
        let (table, after) = verify::size_prefixed_root::<wire::SlotUpdate>(rest, limits)?;
        let update = slot_update_fields(table, limits)?;
        let pushed_bytes = if update.artifact_pushed {
            update.artifact_bytes
        } else {
            0
        };
        let (artifact, next) = usize::try_from(pushed_bytes)
            .ok()
            .and_then(|bytes| after.split_at_checked(bytes))
            .ok_or(DecodeError::ArtifactLengthMismatch {
                declared: pushed_bytes,
                got: after.len() as u64,
            })?;
        check_pushed_artifact(&update, artifact)?;
        updates.push((update, artifact));
        if next.is_empty() {
            return Ok(updates);
        }
        rest = next;
    }
}

fn slot_update_fields<'a>(
    table: wire::SlotUpdate<'a>,
    limits: &CodecLimits,
) -> Result<SlotUpdate<'a>, DecodeError> {
    let artifact_id = table.artifact_id().bytes();
    check_decode_limit("id_bytes_max", artifact_id.len(), limits.id_bytes_max)?;
    let attributes = table
        .attributes()
        .map(|vector| vector.bytes())
        .unwrap_or_default();
    check_decode_limit(
        "attributes_bytes_max",
        attributes.len(),
        limits.attributes_bytes_max,
    )?;
    Ok(SlotUpdate {
        artifact_kind: table.artifact_kind(),
        slot: table.slot(),
        commit_id: table.commit_id(),
        artifact_id,
        attributes,
        artifact_bytes: table.artifact_bytes(),
        artifact_pushed: table.artifact_pushed(),
        slot_cleared: table.slot_cleared(),
    })
}

fn check_pushed_artifact(update: &SlotUpdate<'_>, artifact: &[u8]) -> Result<(), DecodeError> {
    if update.artifact_pushed && update.slot_cleared {
        return Err(DecodeError::Invalid {
            kind: "SlotUpdate",
            detail: "a cleared slot cannot push an artifact",
        });
    }
    if !update.artifact_pushed {
        return verify::expect_end("SlotUpdate advert", artifact);
    }
    if artifact.len() as u64 != update.artifact_bytes {
        return Err(DecodeError::ArtifactLengthMismatch {
            declared: update.artifact_bytes,
            got: artifact.len() as u64,
        });
    }
    Ok(())
}

pub fn decode_artifact_request<'a>(
    body: &'a [u8],
    limits: &CodecLimits,
) -> Result<ArtifactRequest<'a>, DecodeError> {
    let (table, rest) = verify::size_prefixed_root::<wire::ArtifactRequest>(body, limits)?;
    verify::expect_end("ArtifactRequest", rest)?;
    let artifact_id = table.artifact_id().bytes();
    check_decode_limit("id_bytes_max", artifact_id.len(), limits.id_bytes_max)?;
    let (offset, length) = (table.offset(), table.length());
    if offset.checked_add(length).is_none() {
        return Err(DecodeError::Invalid {
            kind: "ArtifactRequest",
            detail: "offset + length overflows",
        });
    }
    Ok(ArtifactRequest {
        artifact_kind: table.artifact_kind(),
        artifact_id,
        offset,
        length,
    })
}

pub fn decode_state_advert(body: &[u8], limits: &CodecLimits) -> Result<StateAdvert, DecodeError> {
    let (table, rest) = verify::size_prefixed_root::<wire::StateAdvert>(body, limits)?;
    verify::expect_end("StateAdvert", rest)?;
    Ok(StateAdvert {
        height: table.height(),
        root_hash: table.root_hash().0,
        partial: table.partial(),
    })
}

pub fn decode_manifest_request(
    body: &[u8],
    limits: &CodecLimits,
) -> Result<ManifestRequest, DecodeError> {
    let (table, rest) = verify::size_prefixed_root::<wire::ManifestRequest>(body, limits)?;
    verify::expect_end("ManifestRequest", rest)?;
    Ok(ManifestRequest {
        height: table.height(),
        piece: table.piece(),
    })
}

pub fn decode_chunk_request(
    body: &[u8],
    limits: &CodecLimits,
) -> Result<ChunkRequest, DecodeError> {
    let (table, rest) = verify::size_prefixed_root::<wire::ChunkRequest>(body, limits)?;
    verify::expect_end("ChunkRequest", rest)?;
    Ok(ChunkRequest {
        height: table.height(),
        chunk_index: table.chunk_index(),
    })
}

impl Encoder {
    /// Encodes the SlotUpdate message (size-prefixed). When `artifact_pushed`, the caller sends
    /// exactly `artifact_bytes` bytes of artifact right after it in the same body.
    pub fn encode_slot_update(&mut self, update: &SlotUpdate<'_>) -> Result<&[u8], EncodeError> {
        let limits = *self.limits();
        check_encode_limit(
            "id_bytes_max",
            update.artifact_id.len(),
            limits.id_bytes_max,
        )?;
        check_encode_limit(
            "attributes_bytes_max",
            update.attributes.len(),
            limits.attributes_bytes_max,
        )?;
        let builder = self.start();
        let artifact_id = Some(builder.create_vector(update.artifact_id));
        let attributes =
            (!update.attributes.is_empty()).then(|| builder.create_vector(update.attributes));
        let args = wire::SlotUpdateArgs {
            artifact_kind: update.artifact_kind,
            slot: update.slot,
            commit_id: update.commit_id,
            artifact_id,
            attributes,
            artifact_bytes: update.artifact_bytes,
            artifact_pushed: update.artifact_pushed,
            slot_cleared: update.slot_cleared,
        };
        let root = wire::SlotUpdate::create(builder, &args);
        self.finish_size_prefixed(root)
    }

    pub fn encode_artifact_request(
        &mut self,
        request: &ArtifactRequest<'_>,
    ) -> Result<&[u8], EncodeError> {
        let limit = self.limits().id_bytes_max;
        check_encode_limit("id_bytes_max", request.artifact_id.len(), limit)?;
        let builder = self.start();
        let artifact_id = Some(builder.create_vector(request.artifact_id));
        let args = wire::ArtifactRequestArgs {
            artifact_kind: request.artifact_kind,
            artifact_id,
            offset: request.offset,
            length: request.length,
        };
        let root = wire::ArtifactRequest::create(builder, &args);
        self.finish_size_prefixed(root)
    }

    pub fn encode_state_advert(&mut self, advert: &StateAdvert) -> Result<&[u8], EncodeError> {
        let builder = self.start();
        let root_hash = wire::Hash32(advert.root_hash);
        let args = wire::StateAdvertArgs {
            height: advert.height,
            root_hash: Some(&root_hash),
            partial: advert.partial,
        };
        let root = wire::StateAdvert::create(builder, &args);
        self.finish_size_prefixed(root)
    }

    pub fn encode_manifest_request(
        &mut self,
        request: &ManifestRequest,
    ) -> Result<&[u8], EncodeError> {
        let builder = self.start();
        let args = wire::ManifestRequestArgs {
            height: request.height,
            piece: request.piece,
        };
        let root = wire::ManifestRequest::create(builder, &args);
        self.finish_size_prefixed(root)
    }

    pub fn encode_chunk_request(&mut self, request: &ChunkRequest) -> Result<&[u8], EncodeError> {
        let builder = self.start();
        let args = wire::ChunkRequestArgs {
            height: request.height,
            chunk_index: request.chunk_index,
        };
        let root = wire::ChunkRequest::create(builder, &args);
        self.finish_size_prefixed(root)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::MESSAGE_OVERHEAD_BYTES_MAX;
    use flatbuffers::{FlatBufferBuilder, InvalidFlatbuffer};
    use proptest::collection::vec;
    use proptest::prelude::*;

    fn limits() -> CodecLimits {
        CodecLimits::default()
    }

    /// A body as a sender lays it out: the message, then the pushed artifact (if any).
    fn slot_update_body(update: &SlotUpdate<'_>, artifact: &[u8]) -> Vec<u8> {
        let mut body = Encoder::default()
            .encode_slot_update(update)
            .unwrap()
            .to_vec();
        body.extend_from_slice(artifact);
        body
    }

    fn sample_update(artifact_id: &[u8]) -> SlotUpdate<'_> {
        SlotUpdate {
            artifact_kind: 1,
            slot: 2,
            commit_id: 3,
            artifact_id,
            attributes: b"attr",
            artifact_bytes: 5,
            artifact_pushed: false,
            slot_cleared: false,
        }
    }

    proptest! {
        #[test]
        fn slot_update_round_trips(artifact_kind: u8, slot: u64, commit_id: u64,
                                   artifact_id in vec(any::<u8>(), 0..64), attributes in vec(any::<u8>(), 0..64),
                                   artifact in vec(any::<u8>(), 0..256), artifact_pushed: bool,
                                   advertised_bytes: u64) {
            let artifact: &[u8] = if artifact_pushed { &artifact } else { &[] };
            let artifact_bytes = if artifact_pushed { artifact.len() as u64 } else { advertised_bytes };
            let update = SlotUpdate {
                artifact_kind, slot, commit_id, artifact_id: &artifact_id, attributes: &attributes,
                artifact_bytes, artifact_pushed, slot_cleared: false,
            };
            let body = slot_update_body(&update, artifact);
            prop_assert_eq!(decode_slot_update(&body, &limits()), Ok((update, artifact)));
        }

        #[test]
        fn artifact_request_round_trips(artifact_kind: u8, artifact_id in vec(any::<u8>(), 0..64),
                                        offset in 0..u64::MAX / 2, length in 0..u64::MAX / 2) {
            let request = ArtifactRequest { artifact_kind, artifact_id: &artifact_id, offset, length };
            let mut encoder = Encoder::default();
            let body = encoder.encode_artifact_request(&request).unwrap();
            prop_assert_eq!(decode_artifact_request(body, &limits()), Ok(request));
        }

        #[test]
        fn state_sync_messages_round_trip(height: u64, root_hash: [u8; 32], partial: bool, piece: u32, chunk_index: u32) {
            let mut encoder = Encoder::default();
            let advert = StateAdvert { height, root_hash, partial };
            prop_assert_eq!(decode_state_advert(encoder.encode_state_advert(&advert).unwrap(), &limits()), Ok(advert));
            let manifest = ManifestRequest { height, piece };
            let body = encoder.encode_manifest_request(&manifest).unwrap();
            prop_assert_eq!(decode_manifest_request(body, &limits()), Ok(manifest));
            let chunk = ChunkRequest { height, chunk_index };
            prop_assert_eq!(decode_chunk_request(encoder.encode_chunk_request(&chunk).unwrap(), &limits()), Ok(chunk));
        }

        #[test]
        fn garbage_never_panics(bytes in vec(any::<u8>(), 0..128)) {
            let _ = decode_slot_update(&bytes, &limits());
            let _ = decode_artifact_request(&bytes, &limits());
            let _ = decode_state_advert(&bytes, &limits());
            let _ = decode_manifest_request(&bytes, &limits());
            let _ = decode_chunk_request(&bytes, &limits());
        }

        #[test]
        fn every_truncation_is_an_error(cut_fraction in 0.0f64..1.0) {
            let advert = StateAdvert { height: 7, root_hash: [9; 32], partial: false };
            let body = Encoder::default().encode_state_advert(&advert).unwrap().to_vec();
            let cut = (body.len() as f64 * cut_fraction) as usize;
            prop_assert!(decode_state_advert(&body[..cut], &limits()).is_err());
        }
    }

    #[test]
    fn truncated_prefix_and_message_say_how_much_is_missing() {
        assert_eq!(
            decode_chunk_request(&[1, 0], &limits()),
            Err(DecodeError::Truncated { needed: 4, got: 2 })
        );
        let body = Encoder::default()
            .encode_chunk_request(&ChunkRequest {
                height: 1,
                chunk_index: 2,
            })
            .unwrap()
            .to_vec();
        assert_eq!(
            decode_chunk_request(&body[..body.len() - 1], &limits()),
            Err(DecodeError::Truncated {
                needed: body.len() as u64,
                got: body.len() as u64 - 1
            })
        );
    }

    #[test]
    fn oversized_size_prefix_is_rejected_before_reading() {
        let body = u32::MAX.to_le_bytes();
        assert_eq!(
            decode_state_advert(&body, &limits()),
            Err(DecodeError::LimitExceeded {
                limit: "message_bytes_max",
                value: u64::from(u32::MAX),
                max: CodecLimits::MESSAGE_BYTES_MAX_DEFAULT as u64
            })
        );
    }

    #[test]
    fn pushed_artifact_must_match_its_declared_length() {
        let pushed = SlotUpdate {
            artifact_pushed: true,
            ..sample_update(b"id")
        };
        let body = slot_update_body(&pushed, b"four");
        assert_eq!(
            decode_slot_update(&body, &limits()),
            Err(DecodeError::ArtifactLengthMismatch {
                declared: 5,
                got: 4
            })
        );
        let advert = sample_update(b"id");
        let body = slot_update_body(&advert, b"x");
        assert_eq!(
            decode_slot_update(&body, &limits()),
            Err(DecodeError::UnexpectedBytes {
                kind: "SlotUpdate advert",
                bytes: 1
            })
        );
    }

    #[test]
    fn only_slot_updates_may_have_trailing_bytes() {
        let mut body = Encoder::default()
            .encode_manifest_request(&ManifestRequest {
                height: 1,
                piece: 0,
            })
            .unwrap()
            .to_vec();
        body.push(0);
        assert_eq!(
            decode_manifest_request(&body, &limits()),
            Err(DecodeError::UnexpectedBytes {
                kind: "ManifestRequest",
                bytes: 1
            })
        );
    }

    #[test]
    fn long_ids_and_attributes_are_refused_on_both_sides() {
        let small = CodecLimits {
            id_bytes_max: 4,
            attributes_bytes_max: 2,
            ..limits()
        };
        let long_id = [7u8; 5];
        let request = ArtifactRequest {
            artifact_kind: 0,
            artifact_id: &long_id,
            offset: 0,
            length: 0,
        };
        let body = Encoder::default()
            .encode_artifact_request(&request)
            .unwrap()
            .to_vec();
        assert!(matches!(
            decode_artifact_request(&body, &small),
            Err(DecodeError::LimitExceeded {
                limit: "id_bytes_max",
                value: 5,
                max: 4
            })
        ));
        assert!(Encoder::new(small)
            .encode_artifact_request(&request)
            .is_err());
        let body = slot_update_body(&sample_update(b"id"), &[]);
        assert!(matches!(
            decode_slot_update(&body, &small),
            Err(DecodeError::LimitExceeded {
                limit: "attributes_bytes_max",
                ..
            })
        ));
    }

    #[test]
    fn missing_required_fields_are_rejected() {
        // A Cancel table (one u64 field) read as a StateAdvert: height is there, root_hash not.
        let mut builder = FlatBufferBuilder::new();
        let root = wire::Cancel::create(&mut builder, &wire::CancelArgs { request_id: 1 });
        builder.finish_size_prefixed(root, None);
        let result = decode_state_advert(builder.finished_data(), &limits());
        assert!(
            matches!(
                result,
                Err(DecodeError::InvalidFlatbuffer(
                    InvalidFlatbuffer::MissingRequiredField { .. }
                ))
            ),
            "{result:?}"
        );
    }

    #[test]
    fn largest_messages_fit_the_overhead_bound() {
        let limits = limits();
        let id = vec![1u8; limits.id_bytes_max];
        let attributes = vec![2u8; limits.attributes_bytes_max];
        let update = SlotUpdate {
            artifact_kind: u8::MAX,
            slot: u64::MAX,
            commit_id: u64::MAX,
            artifact_id: &id,
            attributes: &attributes,
            artifact_bytes: u64::MAX,
            artifact_pushed: false,
            slot_cleared: false,
        };
        let body = slot_update_body(&update, &[]);
        let overhead = body.len() - id.len() - attributes.len();
        assert!(
            overhead <= MESSAGE_OVERHEAD_BYTES_MAX,
            "overhead {overhead}"
        );
        let message = "m".repeat(limits.error_message_bytes_max);
        let goaway = crate::envelope::GoawayEnvelope {
            reason: crate::envelope::GoawayReason::ProtocolError,
            last_request_id: u64::MAX,
            message: &message,
        };
        let overhead = Encoder::default().encode_goaway(&goaway).unwrap().len() - message.len();
        assert!(
            overhead <= MESSAGE_OVERHEAD_BYTES_MAX,
            "overhead {overhead}"
        );
    }
}
