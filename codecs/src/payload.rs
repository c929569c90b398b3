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
use crate::limits::{CodecLimits, MESSAGE_OVERHEAD_BYTES_MAX};
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

/// Most ids one [`ArtifactBatchRequest`] may carry, and items one batch answer may hold: the
/// protocol's bound, which every receiver's `gossip.fetch_batch_artifacts_max` stays within, so
/// a server decodes any honest batch whatever its own setting. 128 ids of the largest size fit
/// in one message (asserted below).
pub const ARTIFACT_BATCH_IDS_MAX: usize = 128;

/// What one id adds to an [`ArtifactBatchRequest`] beside its bytes: its table, vtable, vector
/// length, offset and padding (about 20 bytes), rounded up.
pub const ARTIFACT_BATCH_ID_OVERHEAD_BYTES: usize = 32;

const _: () = assert!(
    ARTIFACT_BATCH_IDS_MAX * (CodecLimits::ID_BYTES_MAX_DEFAULT + ARTIFACT_BATCH_ID_OVERHEAD_BYTES)
        + MESSAGE_OVERHEAD_BYTES_MAX
        <= CodecLimits::MESSAGE_BYTES_MAX_DEFAULT
);

/// Asks for several whole advertised artifacts at once (1 to [`ARTIFACT_BATCH_IDS_MAX`] ids).
/// The answer (see [`Encoder::encode_artifact_batch_response`]) holds, per id in this order,
/// the artifact or "not held".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArtifactBatchRequest<'a> {
    pub artifact_kind: u8,
    pub artifact_ids: Vec<&'a [u8]>,
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

/// Decodes an [`ArtifactBatchRequest`] body: one size-prefixed message, nothing after it, 1 to
/// [`ARTIFACT_BATCH_IDS_MAX`] ids of at most `id_bytes_max` bytes each.
pub fn decode_artifact_batch_request<'a>(
    body: &'a [u8],
    limits: &CodecLimits,
) -> Result<ArtifactBatchRequest<'a>, DecodeError> {
    // The root and one table per id: the verifier stops a buffer that points at more.
    let batch_limits = CodecLimits {
        tables_max: ARTIFACT_BATCH_IDS_MAX + 1,
        ..*limits
    };
    let (table, rest) =
        verify::size_prefixed_root::<wire::ArtifactBatchRequest>(body, &batch_limits)?;
    verify::expect_end("ArtifactBatchRequest", rest)?;
    let entries = table.artifact_ids();
    check_decode_limit(
        "artifact_batch_ids_max",
        entries.len(),
        ARTIFACT_BATCH_IDS_MAX,
    )?;
    if entries.is_empty() {
        return Err(DecodeError::Invalid {
            kind: "ArtifactBatchRequest",
            detail: "no artifact ids",
        });
    }
    let mut artifact_ids = Vec::with_capacity(entries.len());
    for entry in entries.iter() {
        let id = entry.artifact_id().bytes();
        check_decode_limit("id_bytes_max", id.len(), limits.id_bytes_max)?;
        artifact_ids.push(id);
    }
    Ok(ArtifactBatchRequest {
        artifact_kind: table.artifact_kind(),
        artifact_ids,
    })
}

/// Decodes a batch answer body: per item, in request order, a slice of `body` with the
/// artifact, or `None` when the peer did not send it. At most `items_max` items and
/// `artifact_bytes_max` artifact bytes in all; the held items' lengths must add up to exactly
/// the bytes after the message, and an item not held must say 0 bytes.
pub fn decode_artifact_batch_response<'a>(
    body: &'a [u8],
    limits: &CodecLimits,
    items_max: usize,
    artifact_bytes_max: u64,
) -> Result<Vec<Option<&'a [u8]>>, DecodeError> {
    let (table, mut rest) =
        verify::size_prefixed_root::<wire::ArtifactBatchResponse>(body, limits)?;
    let items = table.items();
    check_decode_limit(
        "artifact_batch_ids_max",
        items.len(),
        items_max.min(ARTIFACT_BATCH_IDS_MAX),
    )?;
    let mut declared: u64 = 0;
    for item in items.iter() {
        if !item.held() && item.artifact_bytes() != 0 {
            return Err(DecodeError::Invalid {
                kind: "ArtifactBatchResponse",
                detail: "an item not held declares bytes",
            });
        }
        declared = declared
            .checked_add(item.artifact_bytes())
            .filter(|total| *total <= artifact_bytes_max)
            .ok_or(DecodeError::LimitExceeded {
                limit: "fetch_batch_bytes_max",
                value: declared.saturating_add(item.artifact_bytes()),
                max: artifact_bytes_max,
            })?;
    }
    if declared != rest.len() as u64 {
        return Err(DecodeError::ArtifactLengthMismatch {
            declared,
            got: rest.len() as u64,
        });
    }
    let mut answers = Vec::with_capacity(items.len());
    for item in items.iter() {
        if !item.held() {
            answers.push(None);
            continue;
        }
        // Fits: the lengths add up to `rest.len()`, checked above.
        let (artifact, after) = rest.split_at(item.artifact_bytes() as usize);
        answers.push(Some(artifact));
        rest = after;
    }
    debug_assert!(rest.is_empty());
    Ok(answers)
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

    pub fn encode_artifact_batch_request(
        &mut self,
        request: &ArtifactBatchRequest<'_>,
    ) -> Result<&[u8], EncodeError> {
        let id_limit = self.limits().id_bytes_max;
        check_encode_limit(
            "artifact_batch_ids_max",
            request.artifact_ids.len(),
            ARTIFACT_BATCH_IDS_MAX,
        )?;
        for id in &request.artifact_ids {
            check_encode_limit("id_bytes_max", id.len(), id_limit)?;
        }
        let builder = self.start();
        let entries: Vec<_> = request
            .artifact_ids
            .iter()
            .map(|id| {
                let artifact_id = Some(builder.create_vector(id));
                wire::ArtifactBatchId::create(builder, &wire::ArtifactBatchIdArgs { artifact_id })
            })
            .collect();
        let artifact_ids = Some(builder.create_vector(&entries));
        let args = wire::ArtifactBatchRequestArgs {
            artifact_kind: request.artifact_kind,
            artifact_ids,
        };
        let root = wire::ArtifactBatchRequest::create(builder, &args);
        self.finish_size_prefixed(root)
    }

    /// Appends a whole batch answer body to `body`: the size-prefixed message with one item per
    /// entry of `artifacts` (`None`: not held), then the held artifacts back to back. The
    /// caller keeps it within its peer's bounds (at most as many items as ids asked for).
    pub fn encode_artifact_batch_response(
        &mut self,
        artifacts: &[Option<&[u8]>],
        body: &mut Vec<u8>,
    ) -> Result<(), EncodeError> {
        check_encode_limit(
            "artifact_batch_ids_max",
            artifacts.len(),
            ARTIFACT_BATCH_IDS_MAX,
        )?;
        let builder = self.start();
        let items: Vec<wire::ArtifactBatchItem> = artifacts
            .iter()
            .map(|artifact| match artifact {
                Some(bytes) => wire::ArtifactBatchItem::new(bytes.len() as u64, true),
                None => wire::ArtifactBatchItem::new(0, false),
            })
            .collect();
        let items = Some(builder.create_vector(&items));
        let root = wire::ArtifactBatchResponse::create(
            builder,
            &wire::ArtifactBatchResponseArgs { items },
        );
        let head = self.finish_size_prefixed(root)?;
        let artifact_bytes: usize = artifacts.iter().flatten().map(|a| a.len()).sum();
        body.reserve(head.len() + artifact_bytes);
        body.extend_from_slice(head);
        for artifact in artifacts.iter().flatten() {
            body.extend_from_slice(artifact);
        }
        Ok(())
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
        fn artifact_batch_request_round_trips(artifact_kind: u8,
                                              ids in vec(vec(any::<u8>(), 0..64), 1..=ARTIFACT_BATCH_IDS_MAX)) {
            let request = ArtifactBatchRequest {
                artifact_kind,
                artifact_ids: ids.iter().map(Vec::as_slice).collect(),
            };
            let mut encoder = Encoder::default();
            let body = encoder.encode_artifact_batch_request(&request).unwrap();
            prop_assert_eq!(decode_artifact_batch_request(body, &limits()), Ok(request));
        }

        #[test]
        fn artifact_batch_response_round_trips(
            artifacts in vec(proptest::option::of(vec(any::<u8>(), 0..512)), 0..=ARTIFACT_BATCH_IDS_MAX)
        ) {
            let items: Vec<Option<&[u8]>> = artifacts.iter().map(|a| a.as_deref()).collect();
            let mut body = Vec::new();
            Encoder::default().encode_artifact_batch_response(&items, &mut body).unwrap();
            let held: u64 = items.iter().flatten().map(|a| a.len() as u64).sum();
            let decoded = decode_artifact_batch_response(&body, &limits(), items.len(), held);
            prop_assert_eq!(decoded, Ok(items.clone()));
            // One byte over the receiver's bound refuses the whole answer.
            if held > 0 {
                let over = decode_artifact_batch_response(&body, &limits(), items.len(), held - 1);
                prop_assert!(
                    matches!(over, Err(DecodeError::LimitExceeded { .. })),
                    "bound not enforced"
                );
            }
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
