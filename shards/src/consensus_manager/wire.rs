//! The consensus manager's RPC bodies: slot updates and artifact fetches, single or batched,
//! encoded with the codecs (`SlotUpdate`, `ArtifactRequest`, `ArtifactBatchRequest` and its
//! answer; see docs/protocol.md) and decoded into the cores' types. Decoding never panics:
//! remote bytes give a [`WireError`].

use icn_codecs::{CodecLimits, DecodeError, EncodeError, Encoder};
use icn_engine::{Buf, Route};
use smallvec::SmallVec;

use super::receiver::InboundUpdate;
use super::sender::{OutboundUpdate, UpdateMessage};
use crate::artifact::{Advert, Artifact, ArtifactId, ArtifactKind};

/// Routes of the consensus manager: slot updates on `SLOT_UPDATE_ROUTE_BASE + kind`, fetches on
/// `FETCH_ROUTE_BASE + kind`, batch fetches on `FETCH_BATCH_ROUTE_BASE + kind` (256 each, one
/// per possible kind).
pub const SLOT_UPDATE_ROUTE_BASE: u16 = 0x100;
pub const FETCH_ROUTE_BASE: u16 = 0x200;
pub const FETCH_BATCH_ROUTE_BASE: u16 = 0x500;

pub fn slot_update_route(kind: ArtifactKind) -> Route {
    Route(SLOT_UPDATE_ROUTE_BASE + u16::from(kind.0))
}

pub fn fetch_route(kind: ArtifactKind) -> Route {
    Route(FETCH_ROUTE_BASE + u16::from(kind.0))
}

pub fn fetch_batch_route(kind: ArtifactKind) -> Route {
    Route(FETCH_BATCH_ROUTE_BASE + u16::from(kind.0))
}

/// Slot updates one request may carry (a sender batches what it has queued for a peer). Bounds
/// the work one request asks of a receiver; 64 small updates are about 10 KiB.
pub const SLOT_UPDATES_PER_MESSAGE_MAX: usize = 64;
/// A batch stops growing at this many body bytes (a large pushed artifact travels alone).
pub const SLOT_UPDATE_BATCH_BYTES_MAX: usize = 256 << 10;

/// A body that does not decode, or decodes to something this route cannot take.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("{0}")]
    Decode(#[from] DecodeError),
    #[error("message for artifact kind {got} on the route of kind {expected}")]
    WrongKind { expected: u8, got: u8 },
    #[error("batch answer with {got} items for {asked} artifacts asked for")]
    BatchItems { asked: usize, got: usize },
}

/// Encodes one slot update as an RPC body: the message, then (for a push) the artifact.
pub fn encode_update(
    encoder: &mut Encoder,
    kind: ArtifactKind,
    update: &OutboundUpdate,
) -> Result<Buf, EncodeError> {
    let mut body = Vec::new();
    append_update(encoder, kind, update, &mut body)?;
    Ok(Buf::from_vec(body))
}

/// Encodes slot updates for one peer as one RPC body (decoded by [`decode_updates`]).
pub fn encode_updates(
    encoder: &mut Encoder,
    kind: ArtifactKind,
    updates: &[OutboundUpdate],
) -> Result<Buf, EncodeError> {
    let mut body = Vec::new();
    for update in updates {
        append_update(encoder, kind, update, &mut body)?;
    }
    Ok(Buf::from_vec(body))
}

/// Bytes [`append_update`] adds for `update`, close enough to bound a batch.
pub fn update_bytes(update: &OutboundUpdate) -> usize {
    const MESSAGE_BYTES: usize = 128;
    match &update.message {
        UpdateMessage::Push(artifact) => MESSAGE_BYTES + artifact.payload.len(),
        UpdateMessage::Advert(advert) => MESSAGE_BYTES + advert.id.len() + advert.attributes.len(),
        UpdateMessage::Cleared(id) => MESSAGE_BYTES + id.len(),
    }
}

fn append_update(
    encoder: &mut Encoder,
    kind: ArtifactKind,
    update: &OutboundUpdate,
    body: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    let (advert, pushed, cleared) = match &update.message {
        UpdateMessage::Push(artifact) => (Some(&artifact.advert), Some(&artifact.payload), None),
        UpdateMessage::Advert(advert) => (Some(advert), None, None),
        UpdateMessage::Cleared(id) => (None, None, Some(id)),
    };
    let id = advert.map_or_else(
        || cleared.expect("one of them").as_bytes(),
        |a| a.id.as_bytes(),
    );
    let message = icn_codecs::SlotUpdate {
        artifact_kind: kind.0,
        slot: update.slot,
        commit_id: update.commit_id,
        artifact_id: id,
        attributes: advert.map_or(&[][..], |a| &a.attributes),
        artifact_bytes: advert.map_or(0, |a| a.size_bytes),
        artifact_pushed: pushed.is_some(),
        slot_cleared: cleared.is_some(),
    };
    let head = encoder.encode_slot_update(&message)?;
    let payload: &[u8] = pushed.map_or(&[][..], |p| p);
    body.reserve(head.len() + payload.len());
    body.extend_from_slice(head);
    body.extend_from_slice(payload);
    Ok(())
}

/// Decodes a body of one slot update for `kind`.
pub fn decode_update(
    body: &Buf,
    kind: ArtifactKind,
    limits: &CodecLimits,
) -> Result<InboundUpdate, WireError> {
    let (message, pushed) = icn_codecs::decode_slot_update(body, limits)?;
    inbound_update(body, kind, message, pushed)
}

/// Decodes a body of one or more slot updates for `kind` (at most
/// [`SLOT_UPDATES_PER_MESSAGE_MAX`]). Pushed artifacts are slices of `body`, not copies.
pub fn decode_updates(
    body: &Buf,
    kind: ArtifactKind,
    limits: &CodecLimits,
) -> Result<Vec<InboundUpdate>, WireError> {
    icn_codecs::decode_slot_updates(body, limits, SLOT_UPDATES_PER_MESSAGE_MAX)?
        .into_iter()
        .map(|(message, pushed)| inbound_update(body, kind, message, pushed))
        .collect()
}

fn inbound_update(
    body: &Buf,
    kind: ArtifactKind,
    message: icn_codecs::SlotUpdate<'_>,
    pushed: &[u8],
) -> Result<InboundUpdate, WireError> {
    if message.artifact_kind != kind.0 {
        return Err(WireError::WrongKind {
            expected: kind.0,
            got: message.artifact_kind,
        });
    }
    let id = ArtifactId::from_slice(message.artifact_id);
    let update_message = if message.slot_cleared {
        UpdateMessage::Cleared(id)
    } else {
        let advert = Advert {
            id,
            attributes: SmallVec::from_slice(message.attributes),
            size_bytes: message.artifact_bytes,
        };
        if message.artifact_pushed {
            // `pushed` borrows from `body`: its offset is the distance between the pointers.
            let start = pushed.as_ptr() as usize - body.as_ptr() as usize;
            UpdateMessage::Push(Artifact {
                advert,
                payload: body.slice(start..start + pushed.len()),
            })
        } else {
            UpdateMessage::Advert(advert)
        }
    };
    Ok(InboundUpdate {
        slot: message.slot,
        commit_id: message.commit_id,
        message: update_message,
    })
}

/// Encodes a fetch request for `length` bytes at `offset` of `id` (`length` 0: all of it).
pub fn encode_fetch(
    encoder: &mut Encoder,
    kind: ArtifactKind,
    id: &ArtifactId,
    offset: u64,
    length: u64,
) -> Result<Buf, EncodeError> {
    let request = icn_codecs::ArtifactRequest {
        artifact_kind: kind.0,
        artifact_id: id.as_bytes(),
        offset,
        length,
    };
    Ok(Buf::copy_from_slice(
        encoder.encode_artifact_request(&request)?,
    ))
}

/// A decoded fetch request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchRequest {
    pub id: ArtifactId,
    pub offset: u64,
    pub length: u64,
}

pub fn decode_fetch(
    body: &[u8],
    kind: ArtifactKind,
    limits: &CodecLimits,
) -> Result<FetchRequest, WireError> {
    let request = icn_codecs::decode_artifact_request(body, limits)?;
    if request.artifact_kind != kind.0 {
        return Err(WireError::WrongKind {
            expected: kind.0,
            got: request.artifact_kind,
        });
    }
    Ok(FetchRequest {
        id: ArtifactId::from_slice(request.artifact_id),
        offset: request.offset,
        length: request.length,
    })
}

/// Encodes a batch request for several whole artifacts (decoded by [`decode_fetch_batch`]).
pub fn encode_fetch_batch(
    encoder: &mut Encoder,
    kind: ArtifactKind,
    ids: &[ArtifactId],
) -> Result<Buf, EncodeError> {
    let request = icn_codecs::ArtifactBatchRequest {
        artifact_kind: kind.0,
        artifact_ids: ids.iter().map(ArtifactId::as_bytes).collect(),
    };
    Ok(Buf::copy_from_slice(
        encoder.encode_artifact_batch_request(&request)?,
    ))
}

/// The ids of a batch request for `kind` (1 to `icn_codecs::ARTIFACT_BATCH_IDS_MAX`, the
/// protocol's bound, whatever this node's own batch setting).
pub fn decode_fetch_batch(
    body: &[u8],
    kind: ArtifactKind,
    limits: &CodecLimits,
) -> Result<Vec<ArtifactId>, WireError> {
    let request = icn_codecs::decode_artifact_batch_request(body, limits)?;
    if request.artifact_kind != kind.0 {
        return Err(WireError::WrongKind {
            expected: kind.0,
            got: request.artifact_kind,
        });
    }
    Ok(request
        .artifact_ids
        .into_iter()
        .map(ArtifactId::from_slice)
        .collect())
}

/// Encodes the answer to a batch request: per id asked for, in order, the artifact or `None`.
pub fn encode_batch_answer(
    encoder: &mut Encoder,
    artifacts: &[Option<Buf>],
) -> Result<Buf, EncodeError> {
    let items: SmallVec<[Option<&[u8]>; 32]> = artifacts.iter().map(|a| a.as_deref()).collect();
    let mut body = Vec::new();
    encoder.encode_artifact_batch_response(&items, &mut body)?;
    Ok(Buf::from_vec(body))
}

/// Decodes the answer to a batch request for `asked` artifacts, which must have exactly that
/// many items and at most `artifact_bytes_max` artifact bytes. The artifacts are slices of
/// `body`, not copies.
pub fn decode_batch_answer(
    body: &Buf,
    asked: usize,
    limits: &CodecLimits,
    artifact_bytes_max: u64,
) -> Result<Vec<Option<Buf>>, WireError> {
    let items =
        icn_codecs::decode_artifact_batch_response(body, limits, asked, artifact_bytes_max)?;
    if items.len() != asked {
        return Err(WireError::BatchItems {
            asked,
            got: items.len(),
        });
    }
    Ok(items
        .into_iter()
        .map(|item| {
            item.map(|artifact| {
                // `artifact` borrows from `body`: its offset is the distance between the pointers.
                let start = artifact.as_ptr() as usize - body.as_ptr() as usize;
                body.slice(start..start + artifact.len())
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use icn_engine::{ConnId, NodeId};

    fn update(message: UpdateMessage) -> OutboundUpdate {
        OutboundUpdate {
            peer: NodeId([1; 32]),
            conn: ConnId(1),
            slot: 9,
            commit_id: 77,
            message,
        }
    }

    fn advert(size_bytes: u64) -> Advert {
        Advert {
            id: ArtifactId::from_slice(b"some-id"),
            attributes: SmallVec::from_slice(b"h=3"),
            size_bytes,
        }
    }

    #[test]
    fn every_update_kind_round_trips() {
        let kind = ArtifactKind(3);
        let limits = CodecLimits::default();
        let mut encoder = Encoder::default();
        let pushed = Artifact {
            advert: advert(5),
            payload: Buf::copy_from_slice(b"hello"),
        };
        for message in [
            UpdateMessage::Push(pushed),
            UpdateMessage::Advert(advert(1 << 20)),
            UpdateMessage::Cleared(ArtifactId::from_slice(b"gone")),
        ] {
            let out = update(message.clone());
            let body = encode_update(&mut encoder, kind, &out).unwrap();
            let back = decode_update(&body, kind, &limits).unwrap();
            assert_eq!(back.slot, 9);
            assert_eq!(back.commit_id, 77);
            assert_eq!(back.message, message);
        }
    }

    #[test]
    fn batches_round_trip_and_pushed_payloads_are_slices() {
        let kind = ArtifactKind(3);
        let limits = CodecLimits::default();
        let mut encoder = Encoder::default();
        let pushed = Artifact {
            advert: advert(5),
            payload: Buf::copy_from_slice(b"hello"),
        };
        let messages = [
            UpdateMessage::Advert(advert(1 << 20)),
            UpdateMessage::Push(pushed),
            UpdateMessage::Cleared(ArtifactId::from_slice(b"gone")),
            UpdateMessage::Push(Artifact {
                advert: advert(3),
                payload: Buf::copy_from_slice(b"abc"),
            }),
        ];
        let updates: Vec<OutboundUpdate> = messages.iter().cloned().map(update).collect();
        let body = encode_updates(&mut encoder, kind, &updates).unwrap();
        let back = decode_updates(&body, kind, &limits).unwrap();
        let decoded: Vec<UpdateMessage> = back.into_iter().map(|u| u.message).collect();
        assert_eq!(decoded, messages);
        if let UpdateMessage::Push(artifact) = &decoded[1] {
            assert!(artifact.payload.same_storage(&body));
        }
        let too_many: Vec<OutboundUpdate> = (0..=SLOT_UPDATES_PER_MESSAGE_MAX)
            .map(|_| update(UpdateMessage::Advert(advert(1))))
            .collect();
        let body = encode_updates(&mut encoder, kind, &too_many).unwrap();
        assert!(decode_updates(&body, kind, &limits).is_err());
    }

    #[test]
    fn batch_fetches_round_trip_and_answers_are_slices() {
        let kind = ArtifactKind(3);
        let limits = CodecLimits::default();
        let mut encoder = Encoder::default();
        let ids: Vec<ArtifactId> = [&b"a"[..], b"bb", b"ccc"]
            .iter()
            .map(|id| ArtifactId::from_slice(id))
            .collect();
        let request = encode_fetch_batch(&mut encoder, kind, &ids).unwrap();
        assert_eq!(decode_fetch_batch(&request, kind, &limits), Ok(ids.clone()));
        assert!(decode_fetch_batch(&request, ArtifactKind(4), &limits).is_err());
        let artifacts = vec![
            Some(Buf::copy_from_slice(b"first")),
            None,
            Some(Buf::copy_from_slice(b"")),
        ];
        let body = encode_batch_answer(&mut encoder, &artifacts).unwrap();
        let back = decode_batch_answer(&body, 3, &limits, 5).unwrap();
        assert_eq!(back, artifacts);
        assert!(back[0].as_ref().unwrap().same_storage(&body));
        assert_eq!(
            decode_batch_answer(&body, 4, &limits, 5),
            Err(WireError::BatchItems { asked: 4, got: 3 })
        );
        assert!(decode_batch_answer(&body, 2, &limits, 5).is_err());
        assert!(decode_batch_answer(&body, 3, &limits, 4).is_err());
        assert!(decode_batch_answer(&body.slice(0..body.len() - 1), 3, &limits, 5).is_err());
    }

    #[test]
    fn wrong_kind_and_garbage_are_errors() {
        let limits = CodecLimits::default();
        let mut encoder = Encoder::default();
        let body = encode_update(
            &mut encoder,
            ArtifactKind(1),
            &update(UpdateMessage::Advert(advert(9))),
        )
        .unwrap();
        assert_eq!(
            decode_update(&body, ArtifactKind(2), &limits),
            Err(WireError::WrongKind {
                expected: 2,
                got: 1
            })
        );
        assert!(decode_update(
            &Buf::copy_from_slice(b"\x05\0\0\0junk"),
            ArtifactKind(1),
            &limits
        )
        .is_err());
        let fetch = encode_fetch(
            &mut encoder,
            ArtifactKind(1),
            &ArtifactId::from_slice(b"x"),
            10,
            20,
        )
        .unwrap();
        let request = decode_fetch(&fetch, ArtifactKind(1), &limits).unwrap();
        assert_eq!((request.offset, request.length), (10, 20));
        assert!(decode_fetch(&fetch, ArtifactKind(0), &limits).is_err());
        assert!(decode_fetch(&fetch[..fetch.len() - 1], ArtifactKind(1), &limits).is_err());
    }
}
