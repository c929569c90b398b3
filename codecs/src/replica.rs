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
}
