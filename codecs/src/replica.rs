//! The reference replica's consensus artifacts: blocks and notarization shares (schema in
//! `wire.fbs`, tables `ReplicaBlock` and `ReplicaShare`).
//!
//! Both travel as artifact payloads of the consensus manager (kinds 4 and 5), so they are
//! plain FlatBuffers (not size-prefixed: the artifact's length is known). An artifact's id is
//! its height and the SHA-256 of these bytes, so a block is named by its exact encoding and a
//! share names the block it vouches for by that hash. Decoders verify every buffer against
//! [`ReplicaLimits`] and return [`DecodeError`]s; remote bytes never panic them.

use flatbuffers::{FlatBufferBuilder, VerifierOptions};

use crate::error::{check_decode_limit, DecodeError};
use crate::generated::wire;
use crate::payload::HASH_BYTES;

/// A SHA-256 digest (a block's artifact hash, a request id).
pub type Hash = [u8; HASH_BYTES];

/// Bounds on replica artifacts a node accepts from its peers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplicaLimits {
    /// Largest encoded block.
    pub block_bytes_max: usize,
    /// Most ingress messages one block may order.
    pub block_ingress_max: usize,
}

impl ReplicaLimits {
    /// A block's fixed fields plus 32 bytes per ingress id, with room for the table layout.
    pub const BLOCK_OVERHEAD_BYTES: usize = 256;
    /// Default for [`ReplicaLimits::block_ingress_max`] (the tuning default).
    pub const BLOCK_INGRESS_MAX_DEFAULT: usize = 1_000;
    /// Largest encoded share (fixed fields only).
    pub const SHARE_BYTES_MAX: usize = 128;

    /// The limits that admit blocks of up to `block_ingress_max` ids.
    pub fn for_block_ingress(block_ingress_max: usize) -> ReplicaLimits {
        ReplicaLimits {
            block_bytes_max: Self::BLOCK_OVERHEAD_BYTES + block_ingress_max * HASH_BYTES,
            block_ingress_max,
        }
    }

    fn verifier_options(&self, bytes_max: usize) -> VerifierOptions {
        VerifierOptions {
            max_depth: 4,
            max_tables: 4,
            max_apparent_size: bytes_max,
            ignore_missing_null_terminator: false,
        }
    }
}

impl Default for ReplicaLimits {
    fn default() -> Self {
        ReplicaLimits::for_block_ingress(Self::BLOCK_INGRESS_MAX_DEFAULT)
    }
}

/// A block of the reference replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaBlock {
    pub height: u64,
    pub round: u64,
    /// The artifact hash of the parent block; all zeros for height 1.
    pub parent: Hash,
    /// The maker's clock in nanoseconds since 1970: the state's time at this height.
    pub time_ns: u64,
    /// Request ids of the ingress messages ordered, in execution order.
    pub ingress: Vec<Hash>,
}

/// A notarization share by `node` for the block whose artifact hash is `block`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplicaShare {
    pub height: u64,
    pub block: Hash,
    /// The sharing node's id (its raw Ed25519 public key).
    pub node: Hash,
}

pub fn encode_replica_block(block: &ReplicaBlock) -> Vec<u8> {
    let estimate = ReplicaLimits::BLOCK_OVERHEAD_BYTES + block.ingress.len() * HASH_BYTES;
    let mut builder = FlatBufferBuilder::with_capacity(estimate);
    let ids: Vec<wire::Hash32> = block.ingress.iter().map(|id| wire::Hash32(*id)).collect();
    let ingress = builder.create_vector(&ids);
    let parent = wire::Hash32(block.parent);
    let root = wire::ReplicaBlock::create(
        &mut builder,
        &wire::ReplicaBlockArgs {
            height: block.height,
            round: block.round,
            parent: Some(&parent),
            time_ns: block.time_ns,
            ingress: Some(ingress),
        },
    );
    builder.finish_minimal(root);
    builder.finished_data().to_vec()
}

pub fn decode_replica_block(
    bytes: &[u8],
    limits: &ReplicaLimits,
) -> Result<ReplicaBlock, DecodeError> {
    check_decode_limit("block_bytes_max", bytes.len(), limits.block_bytes_max)?;
    let table = flatbuffers::root_with_opts::<wire::ReplicaBlock>(
        &limits.verifier_options(limits.block_bytes_max),
        bytes,
    )?;
    let ids = table.ingress().unwrap_or_default();
    check_decode_limit("block_ingress_max", ids.len(), limits.block_ingress_max)?;
    if table.height() == 0 {
        return Err(DecodeError::Invalid {
            kind: "ReplicaBlock",
            detail: "height 0 is the genesis state, never a block",
        });
    }
    Ok(ReplicaBlock {
        height: table.height(),
        round: table.round(),
        parent: table.parent().0,
        time_ns: table.time_ns(),
        ingress: ids.iter().map(|id| id.0).collect(),
    })
}

pub fn encode_replica_share(share: &ReplicaShare) -> Vec<u8> {
    let mut builder = FlatBufferBuilder::with_capacity(ReplicaLimits::SHARE_BYTES_MAX);
    let block = wire::Hash32(share.block);
    let node = wire::Hash32(share.node);
    let root = wire::ReplicaShare::create(
        &mut builder,
        &wire::ReplicaShareArgs {
            height: share.height,
            block: Some(&block),
            node: Some(&node),
        },
    );
    builder.finish_minimal(root);
    builder.finished_data().to_vec()
}

pub fn decode_replica_share(
    bytes: &[u8],
    limits: &ReplicaLimits,
) -> Result<ReplicaShare, DecodeError> {
    check_decode_limit(
        "share_bytes_max",
        bytes.len(),
        ReplicaLimits::SHARE_BYTES_MAX,
    )?;
    let table = flatbuffers::root_with_opts::<wire::ReplicaShare>(
        &limits.verifier_options(ReplicaLimits::SHARE_BYTES_MAX),
        bytes,
    )?;
    if table.height() == 0 {
        return Err(DecodeError::Invalid {
            kind: "ReplicaShare",
            detail: "height 0 is the genesis state, never a block",
        });
    }
    Ok(ReplicaShare {
        height: table.height(),
        block: table.block().0,
        node: table.node().0,
    })
}

/// Bounds on the ingress fetch route (`replica/ingress`), from the receiving node's tuning
/// (`replica.ingress_fetch_ids_max`, `replica.ingress_fetch_response_bytes_max`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IngressFetchLimits {
    /// Most request ids one request may ask for.
    pub ids_max: usize,
    /// Largest encoded response; a server stops adding envelopes before it would exceed it
    /// (see [`IngressFetchLimits::envelope_cost`]).
    pub response_bytes_max: usize,
}

impl IngressFetchLimits {
    /// A request's fixed layout (root offset, vtable, table, vector length) with room to spare.
    pub const REQUEST_OVERHEAD_BYTES: usize = 64;
    /// A response's fixed layout, as for the request.
    pub const RESPONSE_OVERHEAD_BYTES: usize = 64;
    /// What one envelope adds to a response beside its bytes: its table, vtable, vector
    /// length, offset and padding (about 26 bytes), rounded up.
    pub const ENVELOPE_OVERHEAD_BYTES: usize = 32;
    /// Default for [`IngressFetchLimits::ids_max`] (the tuning default).
    pub const IDS_MAX_DEFAULT: usize = 256;
    /// Default for [`IngressFetchLimits::response_bytes_max`] (the tuning default): twice the
    /// HTTP front's largest call body, so any call a node accepted fits in one answer.
    pub const RESPONSE_BYTES_MAX_DEFAULT: usize = 8 << 20;

    /// Largest encoded request.
    pub fn request_bytes_max(&self) -> usize {
        Self::REQUEST_OVERHEAD_BYTES.saturating_add(self.ids_max.saturating_mul(HASH_BYTES))
    }

    /// Bytes an envelope of `len` bytes adds to a response at most: a server that keeps
    /// `RESPONSE_OVERHEAD_BYTES` plus the sum of these within `response_bytes_max` never
    /// encodes a response its peer refuses.
    pub fn envelope_cost(len: usize) -> usize {
        len.saturating_add(Self::ENVELOPE_OVERHEAD_BYTES)
    }

    fn verifier_options(&self, bytes_max: usize) -> VerifierOptions {
        VerifierOptions {
            max_depth: 4,
            // The root and one table per envelope; a response holds at most one envelope per
            // id asked for.
            max_tables: self.ids_max.saturating_add(2),
            max_apparent_size: bytes_max,
            ignore_missing_null_terminator: false,
        }
    }
}

impl Default for IngressFetchLimits {
    fn default() -> Self {
        IngressFetchLimits {
            ids_max: Self::IDS_MAX_DEFAULT,
            response_bytes_max: Self::RESPONSE_BYTES_MAX_DEFAULT,
        }
    }
}

pub fn encode_ingress_fetch_request(request_ids: &[Hash]) -> Vec<u8> {
    let estimate = IngressFetchLimits::REQUEST_OVERHEAD_BYTES + request_ids.len() * HASH_BYTES;
    let mut builder = FlatBufferBuilder::with_capacity(estimate);
    let ids: Vec<wire::Hash32> = request_ids.iter().map(|id| wire::Hash32(*id)).collect();
    let ids = builder.create_vector(&ids);
    let root = wire::IngressFetchRequest::create(
        &mut builder,
        &wire::IngressFetchRequestArgs {
            request_ids: Some(ids),
        },
    );
    builder.finish_minimal(root);
    builder.finished_data().to_vec()
}

/// The request ids asked for, in the order sent. An empty list is valid (nothing is
/// answered); duplicates are the server's to skip.
pub fn decode_ingress_fetch_request(
    bytes: &[u8],
    limits: &IngressFetchLimits,
) -> Result<Vec<Hash>, DecodeError> {
    let bytes_max = limits.request_bytes_max();
    check_decode_limit("ingress_fetch_request_bytes_max", bytes.len(), bytes_max)?;
    let table = flatbuffers::root_with_opts::<wire::IngressFetchRequest>(
        &limits.verifier_options(bytes_max),
        bytes,
    )?;
    let ids = table.request_ids().unwrap_or_default();
    check_decode_limit("ingress_fetch_ids_max", ids.len(), limits.ids_max)?;
    Ok(ids.iter().map(|id| id.0).collect())
}

/// Encodes the envelopes a server found. The caller keeps them within its peer's limits: at
/// most `ids_max` of them (one per id asked for) and `RESPONSE_OVERHEAD_BYTES` plus their
/// [`IngressFetchLimits::envelope_cost`] within `response_bytes_max`.
pub fn encode_ingress_fetch_response(envelopes: &[&[u8]]) -> Vec<u8> {
    let estimate = IngressFetchLimits::RESPONSE_OVERHEAD_BYTES
        + envelopes
            .iter()
            .map(|e| IngressFetchLimits::envelope_cost(e.len()))
            .sum::<usize>();
    let mut builder = FlatBufferBuilder::with_capacity(estimate);
    let tables: Vec<_> = envelopes
        .iter()
        .map(|envelope| {
            let bytes = builder.create_vector(envelope);
            wire::IngressEnvelope::create(
                &mut builder,
                &wire::IngressEnvelopeArgs {
                    envelope: Some(bytes),
                },
            )
        })
        .collect();
    let list = builder.create_vector(&tables);
    let root = wire::IngressFetchResponse::create(
        &mut builder,
        &wire::IngressFetchResponseArgs {
            envelopes: Some(list),
        },
    );
    builder.finish_minimal(root);
    builder.finished_data().to_vec()
}

/// The envelopes of a response, borrowed from `bytes`. Nothing here says they are what was
/// asked for: the receiver recomputes each one's request id and verifies it.
pub fn decode_ingress_fetch_response<'a>(
    bytes: &'a [u8],
    limits: &IngressFetchLimits,
) -> Result<Vec<&'a [u8]>, DecodeError> {
    check_decode_limit(
        "ingress_fetch_response_bytes_max",
        bytes.len(),
        limits.response_bytes_max,
    )?;
    let table = flatbuffers::root_with_opts::<wire::IngressFetchResponse>(
        &limits.verifier_options(limits.response_bytes_max),
        bytes,
    )?;
    let list = table.envelopes().unwrap_or_default();
    check_decode_limit("ingress_fetch_ids_max", list.len(), limits.ids_max)?;
    Ok(list.iter().map(|entry| entry.envelope().bytes()).collect())
}

/// Bounds on a replica checkpoint's chain file, from the receiving node's own settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChainStateLimits {
    /// Largest file.
    pub bytes_max: usize,
    /// Most request statuses.
    pub statuses_max: usize,
}

impl ChainStateLimits {
    fn verifier_options(&self) -> VerifierOptions {
        VerifierOptions {
            max_depth: 8,
            max_tables: self.statuses_max.saturating_add(8),
            max_apparent_size: self.bytes_max,
            ignore_missing_null_terminator: false,
        }
    }
}

impl Default for ChainStateLimits {
    fn default() -> Self {
        ChainStateLimits {
            bytes_max: 256 << 20,
            statuses_max: 1_000_000,
        }
    }
}

/// A request status as a checkpoint stores it; principals stay raw bytes here (the replica
/// parses them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredStatus {
    pub request_id: Hash,
    pub sender: Vec<u8>,
    pub canister: Vec<u8>,
    pub ingress_expiry: u64,
    pub height: u64,
    pub outcome: StoredOutcome,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoredOutcome {
    Replied(Vec<u8>),
    Rejected {
        code: u8,
        message: String,
        error_code: String,
    },
}

/// The chain file of a replica checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainState {
    pub height: u64,
    pub tip: Hash,
    pub time_ns: u64,
    /// In request id order, each id once.
    pub statuses: Vec<StoredStatus>,
}

pub fn encode_chain_state(state: &ChainState) -> Vec<u8> {
    let estimate = 64
        + state
            .statuses
            .iter()
            .map(|s| 128 + s.sender.len() + s.canister.len() + outcome_bytes(&s.outcome))
            .sum::<usize>();
    let mut builder = FlatBufferBuilder::with_capacity(estimate);
    let statuses: Vec<_> = state
        .statuses
        .iter()
        .map(|status| {
            let sender = builder.create_vector(&status.sender);
            let canister = builder.create_vector(&status.canister);
            let (replied, reply, code, message, error_code) = match &status.outcome {
                StoredOutcome::Replied(reply) => {
                    (true, Some(builder.create_vector(reply)), 0, None, None)
                }
                StoredOutcome::Rejected {
                    code,
                    message,
                    error_code,
                } => (
                    false,
                    None,
                    *code,
                    Some(builder.create_string(message)),
                    Some(builder.create_string(error_code)),
                ),
            };
            let request_id = wire::Hash32(status.request_id);
            wire::ReplicaStatus::create(
                &mut builder,
                &wire::ReplicaStatusArgs {
                    request_id: Some(&request_id),
                    sender: Some(sender),
                    canister: Some(canister),
                    ingress_expiry: status.ingress_expiry,
                    height: status.height,
                    replied,
                    reply,
                    reject_code: code,
                    reject_message: message,
                    error_code,
                },
            )
        })
        .collect();
    let statuses = builder.create_vector(&statuses);
    let tip = wire::Hash32(state.tip);
    let root = wire::ReplicaChainState::create(
        &mut builder,
        &wire::ReplicaChainStateArgs {
            height: state.height,
            tip: Some(&tip),
            time_ns: state.time_ns,
            statuses: Some(statuses),
        },
    );
    builder.finish_minimal(root);
    builder.finished_data().to_vec()
}

fn outcome_bytes(outcome: &StoredOutcome) -> usize {
    match outcome {
        StoredOutcome::Replied(reply) => reply.len(),
        StoredOutcome::Rejected {
            message,
            error_code,
            ..
        } => message.len() + error_code.len(),
    }
}

/// Decodes a chain file; statuses must be in strictly increasing request id order (so each id
/// is there once and two nodes' files of one state are equal).
pub fn decode_chain_state(
    bytes: &[u8],
    limits: &ChainStateLimits,
) -> Result<ChainState, DecodeError> {
    check_decode_limit("chain_state_bytes_max", bytes.len(), limits.bytes_max)?;
    let table =
        flatbuffers::root_with_opts::<wire::ReplicaChainState>(&limits.verifier_options(), bytes)?;
    let tables = table.statuses().unwrap_or_default();
    check_decode_limit("statuses_max", tables.len(), limits.statuses_max)?;
    let mut statuses: Vec<StoredStatus> = Vec::with_capacity(tables.len());
    for status in tables.iter() {
        let request_id = status.request_id().0;
        if statuses
            .last()
            .is_some_and(|previous| previous.request_id >= request_id)
        {
            return Err(DecodeError::Invalid {
                kind: "ReplicaChainState",
                detail: "request statuses out of order or repeated",
            });
        }
        let outcome = if status.replied() {
            StoredOutcome::Replied(
                status
                    .reply()
                    .map(|r| r.bytes().to_vec())
                    .unwrap_or_default(),
            )
        } else {
            StoredOutcome::Rejected {
                code: status.reject_code(),
                message: status.reject_message().unwrap_or_default().to_string(),
                error_code: status.error_code().unwrap_or_default().to_string(),
            }
        };
        statuses.push(StoredStatus {
            request_id,
            sender: status
                .sender()
                .map(|b| b.bytes().to_vec())
                .unwrap_or_default(),
            canister: status
                .canister()
                .map(|b| b.bytes().to_vec())
                .unwrap_or_default(),
            ingress_expiry: status.ingress_expiry(),
            height: status.height(),
            outcome,
        });
    }
    Ok(ChainState {
        height: table.height(),
        tip: table.tip().0,
        time_ns: table.time_ns(),
        statuses,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(ids: usize) -> ReplicaBlock {
        ReplicaBlock {
            height: 7,
            round: 1,
            parent: [3; 32],
            time_ns: 1_700_000_000_000_000_000,
            ingress: (0..ids).map(|i| [i as u8; 32]).collect(),
        }
    }

    #[test]
    fn blocks_and_shares_round_trip() {
        let limits = ReplicaLimits::default();
        for ids in [0, 1, 1000] {
            let b = block(ids);
            assert_eq!(
                decode_replica_block(&encode_replica_block(&b), &limits),
                Ok(b)
            );
        }
        let share = ReplicaShare {
            height: 9,
            block: [5; 32],
            node: [6; 32],
        };
        let bytes = encode_replica_share(&share);
        assert!(bytes.len() <= ReplicaLimits::SHARE_BYTES_MAX);
        assert_eq!(decode_replica_share(&bytes, &limits), Ok(share));
    }

    #[test]
    fn chain_states_round_trip_and_refuse_disorder() {
        let status = |id: u8, outcome| StoredStatus {
            request_id: [id; 32],
            sender: vec![4],
            canister: vec![0, 0, 0, 0, 0, 0, 0, 0, 1, 1],
            ingress_expiry: 99,
            height: 3,
            outcome,
        };
        let state = ChainState {
            height: 5,
            tip: [8; 32],
            time_ns: 77,
            statuses: vec![
                status(1, StoredOutcome::Replied(b"DIDL".to_vec())),
                status(
                    2,
                    StoredOutcome::Rejected {
                        code: 3,
                        message: "no such method".into(),
                        error_code: "IC0536".into(),
                    },
                ),
            ],
        };
        let limits = ChainStateLimits::default();
        let bytes = encode_chain_state(&state);
        assert_eq!(decode_chain_state(&bytes, &limits), Ok(state.clone()));
        let mut disordered = state.clone();
        disordered.statuses.reverse();
        assert!(matches!(
            decode_chain_state(&encode_chain_state(&disordered), &limits),
            Err(DecodeError::Invalid { .. })
        ));
        let tight = ChainStateLimits {
            statuses_max: 1,
            ..limits
        };
        assert!(matches!(
            decode_chain_state(&bytes, &tight),
            Err(DecodeError::LimitExceeded { .. })
        ));
        assert!(decode_chain_state(b"garbage", &limits).is_err());
    }

    #[test]
    fn bounds_and_garbage_are_errors() {
        let limits = ReplicaLimits::for_block_ingress(10);
        let big = encode_replica_block(&block(11));
        assert!(decode_replica_block(&big, &ReplicaLimits::for_block_ingress(11)).is_ok());
        assert!(matches!(
            decode_replica_block(&big, &limits),
            Err(DecodeError::LimitExceeded { .. })
        ));
        let genesis = ReplicaBlock {
            height: 0,
            ..block(0)
        };
        assert!(matches!(
            decode_replica_block(&encode_replica_block(&genesis), &limits),
            Err(DecodeError::Invalid { .. })
        ));
        for garbage in [&[][..], &[1, 2, 3], &[0xff; 64]] {
            assert!(decode_replica_block(garbage, &limits).is_err());
            assert!(decode_replica_share(garbage, &limits).is_err());
        }
    }

    #[test]
    fn ingress_fetch_messages_round_trip_within_their_bounds() {
        let limits = IngressFetchLimits {
            ids_max: 3,
            response_bytes_max: 1024,
        };
        for ids in [vec![], vec![[1u8; 32]], vec![[1; 32], [2; 32], [1; 32]]] {
            let bytes = encode_ingress_fetch_request(&ids);
            assert!(bytes.len() <= limits.request_bytes_max());
            assert_eq!(decode_ingress_fetch_request(&bytes, &limits), Ok(ids));
        }
        let four = encode_ingress_fetch_request(&[[0; 32]; 4]);
        assert!(matches!(
            decode_ingress_fetch_request(&four, &limits),
            Err(DecodeError::LimitExceeded { .. })
        ));

        let envelopes: [&[u8]; 3] = [b"\xd9\xd9\xf7\xa1", b"", &[7; 300]];
        let bytes = encode_ingress_fetch_response(&envelopes);
        let cost = IngressFetchLimits::RESPONSE_OVERHEAD_BYTES
            + envelopes
                .iter()
                .map(|e| IngressFetchLimits::envelope_cost(e.len()))
                .sum::<usize>();
        assert!(bytes.len() <= cost, "{} > {cost}", bytes.len());
        assert_eq!(
            decode_ingress_fetch_response(&bytes, &limits),
            Ok(envelopes.to_vec())
        );
        let too_many = encode_ingress_fetch_response(&[&b"a"[..]; 4]);
        assert!(matches!(
            decode_ingress_fetch_response(&too_many, &limits),
            Err(DecodeError::LimitExceeded { .. })
        ));
        let too_big = encode_ingress_fetch_response(&[&[0u8; 1024][..]]);
        assert!(matches!(
            decode_ingress_fetch_response(&too_big, &limits),
            Err(DecodeError::LimitExceeded { .. })
        ));
    }

    #[test]
    fn ingress_fetch_garbage_is_an_error() {
        let limits = IngressFetchLimits::default();
        for garbage in [&[][..], &[1, 2, 3], &[0xff; 64]] {
            assert!(decode_ingress_fetch_request(garbage, &limits).is_err());
            assert!(decode_ingress_fetch_response(garbage, &limits).is_err());
        }
        // A response cut short: its offsets point past the end.
        let whole = encode_ingress_fetch_response(&[&[5u8; 100][..], &[6u8; 100][..]]);
        for cut in [whole.len() / 2, whole.len() - 1] {
            assert!(decode_ingress_fetch_response(&whole[..cut], &limits).is_err());
        }
    }
}
