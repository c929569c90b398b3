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
}

/// Asks for an advertised artifact; the response body is the artifact.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArtifactRequest<'a> {
    pub artifact_kind: u8,
    pub artifact_id: &'a [u8],
}

/// The sender holds a certified state at `height` with root hash `root_hash`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateAdvert {
    pub height: u64,
    pub root_hash: [u8; HASH_BYTES],
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
    let update = SlotUpdate {
        artifact_kind: table.artifact_kind(),
        slot: table.slot(),
        commit_id: table.commit_id(),
        artifact_id,
        attributes,
        artifact_bytes: table.artifact_bytes(),
        artifact_pushed: table.artifact_pushed(),
    };
    check_pushed_artifact(&update, artifact)?;
    Ok((update, artifact))
}

fn check_pushed_artifact(update: &SlotUpdate<'_>, artifact: &[u8]) -> Result<(), DecodeError> {
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
    Ok(ArtifactRequest {
        artifact_kind: table.artifact_kind(),
        artifact_id,
    })
}

pub fn decode_state_advert(body: &[u8], limits: &CodecLimits) -> Result<StateAdvert, DecodeError> {
    let (table, rest) = verify::size_prefixed_root::<wire::StateAdvert>(body, limits)?;
    verify::expect_end("StateAdvert", rest)?;
    Ok(StateAdvert {
        height: table.height(),
        root_hash: table.root_hash().0,
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
