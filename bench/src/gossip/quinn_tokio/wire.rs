//! The baseline's messages, one per bidirectional stream, in the spirit of the IC's consensus
//! manager (its `SlotUpdate` and artifact RPC) but in a fixed little-endian layout:
//!
//! ```text
//! slot update: kind (1 = push, 2 = advert) u8 | commit_id u64 | slot u64 | id [32] | size u64
//!              | the artifact itself (push only, `size` bytes)        response: empty
//! fetch:       kind (3) u8 | id [32]                                  response: the artifact
//! ```

use bytes::{BufMut, Bytes, BytesMut};

use crate::gossip::case::{ARTIFACT_BYTES_MAX, PUSH_THRESHOLD_BYTES};
use crate::gossip::ArtifactId;

const KIND_PUSH: u8 = 1;
const KIND_ADVERT: u8 = 2;
const KIND_FETCH: u8 = 3;

/// Bytes of a slot update before any pushed artifact.
pub const UPDATE_HEADER_BYTES: usize = 1 + 8 + 8 + 32 + 8;

/// Bytes of a fetch request.
pub const FETCH_REQUEST_BYTES: usize = 1 + 32;

/// Largest request a node reads into memory: a slot update carrying a pushed artifact (a pushed
/// artifact is under the push threshold, so anything longer is the peer's error).
pub const REQUEST_BYTES_MAX: usize = UPDATE_HEADER_BYTES + PUSH_THRESHOLD_BYTES;

/// A slot of a producer's slot table now holds artifact `id` (newer `commit_id` wins).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotUpdate {
    pub commit_id: u64,
    pub slot: u64,
    pub id: ArtifactId,
    /// The artifact's length in bytes.
    pub size: u64,
    /// The artifact itself when pushed.
    pub pushed: Option<Bytes>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Update(SlotUpdate),
    Fetch(ArtifactId),
}

/// Why a peer's message was refused (always the peer's fault).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WireError {
    Truncated {
        needed: usize,
        got: usize,
    },
    UnknownKind(u8),
    LimitExceeded {
        limit: &'static str,
        value: u64,
    },
    /// A push whose carried bytes differ from its declared size, or an advert with a tail.
    SizeMismatch {
        declared: u64,
        carried: usize,
    },
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::Truncated { needed, got } => {
                write!(f, "message truncated: {got} bytes, needed {needed}")
            }
            WireError::UnknownKind(kind) => write!(f, "unknown message kind {kind}"),
            WireError::LimitExceeded { limit, value } => write!(f, "{limit} exceeded: {value}"),
            WireError::SizeMismatch { declared, carried } => {
                write!(f, "declares {declared} artifact bytes, carries {carried}")
            }
        }
    }
}

/// The slot update for `content` (pushed when `push`).
pub fn encode_update(
    commit_id: u64,
    slot: u64,
    id: &ArtifactId,
    content: &Bytes,
    push: bool,
) -> Bytes {
    let carried = if push { content.len() } else { 0 };
    let mut message = BytesMut::with_capacity(UPDATE_HEADER_BYTES + carried);
    message.put_u8(if push { KIND_PUSH } else { KIND_ADVERT });
    message.put_u64_le(commit_id);
    message.put_u64_le(slot);
    message.put_slice(&id.0);
    message.put_u64_le(content.len() as u64);
    if push {
        message.put_slice(content);
    }
    message.freeze()
}

pub fn encode_fetch(id: &ArtifactId) -> Bytes {
    let mut message = BytesMut::with_capacity(FETCH_REQUEST_BYTES);
    message.put_u8(KIND_FETCH);
    message.put_slice(&id.0);
    message.freeze()
}

/// Decodes one request read whole from a stream.
pub fn decode_request(message: Bytes) -> Result<Request, WireError> {
    if message.len() > REQUEST_BYTES_MAX {
        return Err(WireError::LimitExceeded {
            limit: "request_bytes_max",
            value: message.len() as u64,
        });
    }
    let kind = *message
        .first()
        .ok_or(WireError::Truncated { needed: 1, got: 0 })?;
    match kind {
        KIND_PUSH | KIND_ADVERT => decode_update(message, kind == KIND_PUSH).map(Request::Update),
        KIND_FETCH => {
            need(&message, FETCH_REQUEST_BYTES)?;
            if message.len() != FETCH_REQUEST_BYTES {
                return Err(WireError::SizeMismatch {
                    declared: 0,
                    carried: message.len() - FETCH_REQUEST_BYTES,
                });
            }
            Ok(Request::Fetch(id_at(&message, 1)))
        }
        other => Err(WireError::UnknownKind(other)),
    }
}

fn decode_update(message: Bytes, push: bool) -> Result<SlotUpdate, WireError> {
    need(&message, UPDATE_HEADER_BYTES)?;
    let commit_id = u64_at(&message, 1);
    let slot = u64_at(&message, 9);
    let id = id_at(&message, 17);
    let size = u64_at(&message, 49);
    let carried = message.len() - UPDATE_HEADER_BYTES;
    if size > ARTIFACT_BYTES_MAX as u64 {
        return Err(WireError::LimitExceeded {
            limit: "artifact_bytes_max",
            value: size,
        });
    }
    let expected = if push { size } else { 0 };
    if carried as u64 != expected {
        return Err(WireError::SizeMismatch {
            declared: size,
            carried,
        });
    }
    Ok(SlotUpdate {
        commit_id,
        slot,
        id,
        size,
        pushed: push.then(|| message.slice(UPDATE_HEADER_BYTES..)),
    })
}

fn need(message: &[u8], needed: usize) -> Result<(), WireError> {
    if message.len() < needed {
        return Err(WireError::Truncated {
            needed,
            got: message.len(),
        });
    }
    Ok(())
}

/// Callers checked the length first.
fn u64_at(message: &[u8], offset: usize) -> u64 {
    u64::from_le_bytes(
        message[offset..offset + 8]
            .try_into()
            .expect("8-byte slice"),
    )
}

fn id_at(message: &[u8], offset: usize) -> ArtifactId {
    ArtifactId(
        message[offset..offset + 32]
            .try_into()
            .expect("32-byte slice"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updates_and_fetches_round_trip() {
        let content = Bytes::from(vec![7u8; 600]);
        let id = ArtifactId::of(&content);
        let pushed = decode_request(encode_update(9, 3, &id, &content, true)).unwrap();
        assert_eq!(
            pushed,
            Request::Update(SlotUpdate {
                commit_id: 9,
                slot: 3,
                id,
                size: 600,
                pushed: Some(content.clone()),
            })
        );
        let advert = encode_update(10, 4, &id, &content, false);
        assert_eq!(advert.len(), UPDATE_HEADER_BYTES);
        match decode_request(advert).unwrap() {
            Request::Update(update) => assert_eq!((update.size, update.pushed), (600, None)),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            decode_request(encode_fetch(&id)).unwrap(),
            Request::Fetch(id)
        );
    }

    #[test]
    fn malformed_requests_are_errors_never_panics() {
        let content = Bytes::from(vec![1u8; 100]);
        let id = ArtifactId::of(&content);
        let push = encode_update(1, 1, &id, &content, true);
        // Every truncation of every kind of message fails cleanly.
        for message in [
            push.clone(),
            encode_update(1, 1, &id, &content, false),
            encode_fetch(&id),
        ] {
            for length in 0..message.len() {
                assert!(
                    decode_request(message.slice(..length)).is_err(),
                    "length {length}"
                );
            }
        }
        let mut unknown = push.to_vec();
        unknown[0] = 9;
        assert_eq!(
            decode_request(unknown.into()),
            Err(WireError::UnknownKind(9))
        );
        let mut huge = encode_update(1, 1, &id, &content, false).to_vec();
        huge[49..57].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            decode_request(huge.into()),
            Err(WireError::LimitExceeded { .. })
        ));
        let mut tail = encode_fetch(&id).to_vec();
        tail.push(0);
        assert!(decode_request(tail.into()).is_err());
        let oversized = Bytes::from(vec![KIND_PUSH; REQUEST_BYTES_MAX + 1]);
        assert!(matches!(
            decode_request(oversized),
            Err(WireError::LimitExceeded { .. })
        ));
        // Arbitrary bytes: no panic whatever they are.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for length in [1, 33, 57, 58, 200, 1081] {
            let noise: Vec<u8> = (0..length)
                .map(|_| {
                    state = state.rotate_left(13).wrapping_mul(0x2545_f491_4f6c_dd1d);
                    (state >> 56) as u8
                })
                .collect();
            let _ = decode_request(noise.into());
        }
    }
}
