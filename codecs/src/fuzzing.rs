//! One function per decoder of remote bytes, shared by the cargo-fuzz targets (codecs/fuzz/)
//! and the corpus replay test (codecs/tests/corpus_replay.rs).
//!
//! Each decodes `data` with the default limits. When decoding succeeds it re-encodes the value,
//! decodes that again and asserts that the two decoded values are equal: a failed assertion
//! is a bug of ours (an encoder and a decoder that disagree), which is exactly what a fuzzer
//! should stop on. Bad input is never a panic: the decoder's error is returned.
//!
//! Re-encoding is compared by value, not by bytes: many byte layouts are valid FlatBuffers for
//! the same value, and the fuzzer finds them.

use crate::canister_state::{
    decode_counter_state, decode_kv_state, encode_counter_state, encode_kv_state,
    CanisterStateError, KvStateLimits,
};
use crate::encoder::Encoder;
use crate::envelope::{
    decode_cancel, decode_frame, decode_goaway, decode_heartbeat, decode_request, decode_response,
    Frame,
};
use crate::error::DecodeError;
use crate::frame::{FrameHeader, FrameLimits, FRAME_HEADER_BYTES};
use crate::ic::{
    canister_in_ranges, decode_canister_ranges, decode_certificate, decode_hash_tree,
    decode_request_envelope, decode_time, decode_value_bounded, encode_canister_ranges,
    encode_time, encode_value, hash_value, IcDecodeError, IcLimits, Principal, RequestId,
};
use crate::limits::CodecLimits;
use crate::payload::{
    decode_artifact_batch_request, decode_artifact_batch_response, decode_artifact_request,
    decode_chunk_request, decode_manifest_request, decode_slot_update, decode_slot_updates,
    decode_state_advert, ARTIFACT_BATCH_IDS_MAX,
};
use crate::replica::{
    decode_chain_state, decode_ingress_fetch_request, decode_ingress_fetch_response,
    decode_replica_block, decode_replica_share, encode_chain_state, encode_ingress_fetch_request,
    encode_ingress_fetch_response, encode_replica_block, encode_replica_share, ChainStateLimits,
    IngressFetchLimits, ReplicaLimits,
};
use crate::state::{
    decode_manifest_piece, decode_meta_manifest, encode_manifest_piece, encode_meta_manifest,
    ManifestLimits,
};

/// The names of the functions below, which are also the fuzz targets and corpus directories.
pub const TARGETS: &[&str] = &[
    "frame_header",
    "frame",
    "request",
    "response",
    "cancel",
    "heartbeat",
    "goaway",
    "slot_update",
    "slot_updates",
    "artifact_request",
    "artifact_batch_request",
    "artifact_batch_response",
    "state_advert",
    "manifest_request",
    "chunk_request",
    "meta_manifest",
    "manifest_piece",
    "replica_block",
    "replica_share",
    "replica_chain_state",
    "replica_ingress_fetch_request",
    "replica_ingress_fetch_response",
    "ic_request",
    "ic_hash_tree",
    "ic_certificate",
    "ic_principal_text",
    "ic_time_leaf",
    "ic_canister_ranges",
    "canister_counter_state",
    "canister_kv_state",
];

/// The error of any target: the frame codecs' or the IC interface codecs'.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AnyDecodeError {
    #[error(transparent)]
    Frame(#[from] DecodeError),
    #[error(transparent)]
    Ic(#[from] IcDecodeError),
    #[error(transparent)]
    CanisterState(#[from] CanisterStateError),
}

/// A target of the IC interface codecs.
type IcTarget = fn(&[u8]) -> Result<(), IcDecodeError>;

/// A target of the canister state files.
type StateTarget = fn(&[u8]) -> Result<(), CanisterStateError>;

/// Runs the function named `target` (one of [`TARGETS`]) on `data`; `None` if there is no
/// such target.
pub fn run(target: &str, data: &[u8]) -> Option<Result<(), AnyDecodeError>> {
    let ic_function: Option<IcTarget> = match target {
        "ic_request" => Some(ic_request),
        "ic_hash_tree" => Some(ic_hash_tree),
        "ic_certificate" => Some(ic_certificate),
        "ic_principal_text" => Some(ic_principal_text),
        "ic_time_leaf" => Some(ic_time_leaf),
        "ic_canister_ranges" => Some(ic_canister_ranges),
        _ => None,
    };
    if let Some(function) = ic_function {
        return Some(function(data).map_err(AnyDecodeError::from));
    }
    let state_function: Option<StateTarget> = match target {
        "canister_counter_state" => Some(canister_counter_state),
        "canister_kv_state" => Some(canister_kv_state),
        _ => None,
    };
    if let Some(function) = state_function {
        return Some(function(data).map_err(AnyDecodeError::from));
    }
    let function: fn(&[u8]) -> Result<(), DecodeError> = match target {
        "frame_header" => frame_header,
        "frame" => frame,
        "request" => request,
        "response" => response,
        "cancel" => cancel,
        "heartbeat" => heartbeat,
        "goaway" => goaway,
        "slot_update" => slot_update,
        "slot_updates" => slot_updates,
        "artifact_request" => artifact_request,
        "artifact_batch_request" => artifact_batch_request,
        "artifact_batch_response" => artifact_batch_response,
        "state_advert" => state_advert,
        "manifest_request" => manifest_request,
        "chunk_request" => chunk_request,
        "meta_manifest" => meta_manifest,
        "manifest_piece" => manifest_piece,
        "replica_block" => replica_block,
        "replica_share" => replica_share,
        "replica_chain_state" => replica_chain_state,
        "replica_ingress_fetch_request" => replica_ingress_fetch_request,
        "replica_ingress_fetch_response" => replica_ingress_fetch_response,
        _ => return None,
    };
    Some(function(data).map_err(AnyDecodeError::from))
}

fn limits() -> CodecLimits {
    CodecLimits::default()
}

pub fn frame_header(data: &[u8]) -> Result<(), DecodeError> {
    let header = FrameHeader::decode(data, &FrameLimits::default())?;
    let encoded = header.encode();
    assert_eq!(
        &encoded[..],
        &data[..FRAME_HEADER_BYTES],
        "a header re-encodes to its own bytes"
    );
    assert_eq!(
        FrameHeader::decode(&encoded, &FrameLimits::default()),
        Ok(header)
    );
    Ok(())
}

pub fn frame(data: &[u8]) -> Result<(), DecodeError> {
    let frame_limits = FrameLimits::default();
    let decoded = decode_frame(data, &frame_limits, &limits())?;
    let mut wire = Vec::new();
    let header = Encoder::new(limits())
        .encode_frame(&decoded.envelope, decoded.body.len() as u64, &mut wire)
        .expect("a decoded frame re-encodes");
    wire.extend_from_slice(decoded.body);
    let again = decode_frame(&wire, &frame_limits, &limits()).expect("a re-encoded frame decodes");
    // Flags are the only header field the encoder does not carry over (it sends none).
    let expected = Frame {
        header: FrameHeader {
            flags: 0,
            envelope_bytes: header.envelope_bytes,
            ..decoded.header
        },
        ..decoded
    };
    assert_eq!(again, expected);
    Ok(())
}

/// Asserts decode(encode(decoded)) == decoded for one envelope or payload type.
macro_rules! round_trip {
    ($name:ident, $decode:ident, $encode:ident) => {
        pub fn $name(data: &[u8]) -> Result<(), DecodeError> {
            let decoded = $decode(data, &limits())?;
            let mut encoder = Encoder::new(limits());
            let encoded = encoder
                .$encode(&decoded)
                .expect("a decoded value re-encodes");
            assert_eq!($decode(encoded, &limits()), Ok(decoded));
            Ok(())
        }
    };
}

round_trip!(request, decode_request, encode_request);
round_trip!(response, decode_response, encode_response);
round_trip!(cancel, decode_cancel, encode_cancel);
round_trip!(heartbeat, decode_heartbeat, encode_heartbeat);
round_trip!(goaway, decode_goaway, encode_goaway);
round_trip!(
    artifact_request,
    decode_artifact_request,
    encode_artifact_request
);
round_trip!(
    artifact_batch_request,
    decode_artifact_batch_request,
    encode_artifact_batch_request
);
round_trip!(state_advert, decode_state_advert, encode_state_advert);

/// Artifact bytes a batch answer may hold in the fuzz target (a receiver's bound is its own
/// `gossip.fetch_batch_bytes_max`).
pub const ARTIFACT_BATCH_RESPONSE_BYTES_MAX: u64 = 16 << 20;

pub fn artifact_batch_response(data: &[u8]) -> Result<(), DecodeError> {
    let decode = |bytes| {
        decode_artifact_batch_response(
            bytes,
            &limits(),
            ARTIFACT_BATCH_IDS_MAX,
            ARTIFACT_BATCH_RESPONSE_BYTES_MAX,
        )
    };
    let items = decode(data)?;
    let mut body = Vec::new();
    Encoder::new(limits())
        .encode_artifact_batch_response(&items, &mut body)
        .expect("a decoded batch answer re-encodes");
    assert_eq!(decode(&body), Ok(items));
    Ok(())
}
round_trip!(
    manifest_request,
    decode_manifest_request,
    encode_manifest_request
);
round_trip!(chunk_request, decode_chunk_request, encode_chunk_request);

/// Updates a batch may hold in the fuzz targets (the consensus manager's bound is its own).
pub const SLOT_UPDATES_MAX: usize = 64;

pub fn slot_updates(data: &[u8]) -> Result<(), DecodeError> {
    let updates = decode_slot_updates(data, &limits(), SLOT_UPDATES_MAX)?;
    let mut encoder = Encoder::new(limits());
    let mut body = Vec::new();
    for (update, artifact) in &updates {
        body.extend_from_slice(
            encoder
                .encode_slot_update(update)
                .expect("a decoded SlotUpdate re-encodes"),
        );
        body.extend_from_slice(artifact);
    }
    assert_eq!(
        decode_slot_updates(&body, &limits(), SLOT_UPDATES_MAX),
        Ok(updates)
    );
    Ok(())
}

pub fn slot_update(data: &[u8]) -> Result<(), DecodeError> {
    let (update, artifact) = decode_slot_update(data, &limits())?;
    let mut encoder = Encoder::new(limits());
    let mut body = encoder
        .encode_slot_update(&update)
        .expect("a decoded SlotUpdate re-encodes")
        .to_vec();
    body.extend_from_slice(artifact);
    assert_eq!(decode_slot_update(&body, &limits()), Ok((update, artifact)));
    Ok(())
}

pub fn meta_manifest(data: &[u8]) -> Result<(), DecodeError> {
    let limits = ManifestLimits::default();
    let meta = decode_meta_manifest(data, &limits)?;
    assert_eq!(
        decode_meta_manifest(&encode_meta_manifest(&meta), &limits),
        Ok(meta)
    );
    Ok(())
}

pub fn manifest_piece(data: &[u8]) -> Result<(), DecodeError> {
    let limits = ManifestLimits::default();
    let piece = decode_manifest_piece(data, &limits)?;
    let again = decode_manifest_piece(&encode_manifest_piece(&piece), &limits);
    assert_eq!(again.as_ref(), Ok(&piece));
    // The hash is over the fields, so it survives the re-encoding.
    assert_eq!(again.map(|again| again.hash()), Ok(piece.hash()));
    Ok(())
}

pub fn replica_block(data: &[u8]) -> Result<(), DecodeError> {
    let limits = ReplicaLimits::default();
    let block = decode_replica_block(data, &limits)?;
    assert_eq!(
        decode_replica_block(&encode_replica_block(&block), &limits),
        Ok(block)
    );
    Ok(())
}

pub fn replica_share(data: &[u8]) -> Result<(), DecodeError> {
    let limits = ReplicaLimits::default();
    let share = decode_replica_share(data, &limits)?;
    assert_eq!(
        decode_replica_share(&encode_replica_share(&share), &limits),
        Ok(share)
    );
    Ok(())
}

pub fn replica_chain_state(data: &[u8]) -> Result<(), DecodeError> {
    let limits = ChainStateLimits::default();
    let state = decode_chain_state(data, &limits)?;
    assert_eq!(
        decode_chain_state(&encode_chain_state(&state), &limits),
        Ok(state)
    );
    Ok(())
}

pub fn replica_ingress_fetch_request(data: &[u8]) -> Result<(), DecodeError> {
    let limits = IngressFetchLimits::default();
    let ids = decode_ingress_fetch_request(data, &limits)?;
    assert_eq!(
        decode_ingress_fetch_request(&encode_ingress_fetch_request(&ids), &limits),
        Ok(ids)
    );
    Ok(())
}

pub fn replica_ingress_fetch_response(data: &[u8]) -> Result<(), DecodeError> {
    let limits = IngressFetchLimits::default();
    let envelopes = decode_ingress_fetch_response(data, &limits)?;
    let again = encode_ingress_fetch_response(&envelopes);
    assert_eq!(
        decode_ingress_fetch_response(&again, &limits),
        Ok(envelopes)
    );
    Ok(())
}

fn ic_limits() -> IcLimits {
    IcLimits::default()
}

/// Decodes a request body. On success: the generic value re-encoded (canonical lengths, no
/// tag) decodes to the same envelope and request id; the typed envelope re-encoded (known
/// fields only) decodes to the same fields, with the request id of its known fields.
pub fn ic_request(data: &[u8]) -> Result<(), IcDecodeError> {
    let limits = ic_limits();
    let decoded = decode_request_envelope(data, &limits)?;
    let value = decode_value_bounded(data, limits.cbor_depth_max, limits.cbor_items_max)
        .expect("a decoded body is CBOR");
    let mut canonical = Vec::new();
    encode_value(&value, &mut canonical);
    assert_eq!(
        decode_request_envelope(&canonical, &limits).as_ref(),
        Ok(&decoded),
        "the canonical re-encoding decodes to the same envelope"
    );
    let mut typed = Vec::new();
    decoded.encode(&mut typed);
    let again = decode_request_envelope(&typed, &limits).expect("a decoded envelope re-encodes");
    assert_eq!(again.content, decoded.content);
    assert_eq!(again.sender_pubkey, decoded.sender_pubkey);
    assert_eq!(again.sender_sig, decoded.sender_sig);
    let known_id = hash_value(&decoded.content.to_value(), "content").expect("hashable");
    assert_eq!(again.request_id, RequestId(known_id));
    let chains = (&again.sender_delegation, &decoded.sender_delegation);
    if let (Some(again), Some(decoded)) = chains {
        assert_eq!(again.len(), decoded.len());
        for (a, d) in again.iter().zip(decoded) {
            assert_eq!(a.signature, d.signature);
            assert_eq!(a.delegation.pubkey, d.delegation.pubkey);
            assert_eq!(a.delegation.expiration, d.delegation.expiration);
            assert_eq!(a.delegation.targets, d.delegation.targets);
        }
    } else {
        assert!(chains.0.is_none() && chains.1.is_none());
    }
    Ok(())
}

/// Decodes a hash tree; on success its encoding decodes to the same tree with the same root
/// hash, and a lookup runs without panicking.
pub fn ic_hash_tree(data: &[u8]) -> Result<(), IcDecodeError> {
    let limits = ic_limits();
    let tree = decode_hash_tree(data, &limits)?;
    let mut encoded = Vec::new();
    tree.encode(&mut encoded);
    let again = decode_hash_tree(&encoded, &limits).expect("a decoded tree re-encodes");
    assert_eq!(again, tree);
    assert_eq!(again.digest(), tree.digest());
    let _ = tree.lookup(&[&b"request_status"[..], &[0; 32], b"status"]);
    Ok(())
}

/// Decodes a certificate; on success its encoding decodes to the same certificate.
pub fn ic_certificate(data: &[u8]) -> Result<(), IcDecodeError> {
    let limits = ic_limits();
    let certificate = decode_certificate(data, &limits)?;
    let mut encoded = Vec::new();
    certificate.encode(&mut encoded);
    let again = decode_certificate(&encoded, &limits).expect("a decoded certificate re-encodes");
    assert_eq!(again, certificate);
    Ok(())
}

/// Parses textual principals; on success the principal prints as the input (up to case) and
/// its bytes make the same principal.
pub fn ic_principal_text(data: &[u8]) -> Result<(), IcDecodeError> {
    const FIELD: &str = "principal text";
    let text = std::str::from_utf8(data).map_err(|_| IcDecodeError::InvalidValue {
        field: FIELD,
        detail: "not UTF-8",
    })?;
    let principal = Principal::from_text(text).map_err(|error| IcDecodeError::Principal {
        field: FIELD,
        error,
    })?;
    assert!(principal.to_string().eq_ignore_ascii_case(text));
    assert_eq!(Principal::from_slice(principal.as_slice()), Ok(principal));
    Ok(())
}

/// Decodes a `/time` leaf; on success its encoding (the shortest) decodes to the same time and
/// is no longer than the input.
pub fn ic_time_leaf(data: &[u8]) -> Result<(), IcDecodeError> {
    let time = decode_time(data)?;
    let encoded = encode_time(time);
    assert!(encoded.len() <= data.len());
    assert_eq!(decode_time(&encoded), Ok(time));
    Ok(())
}

/// Decodes a canister ranges leaf; on success its encoding decodes to the same ranges, and
/// the bounds of every non-empty range lie in the ranges (an inverted range, first > last,
/// decodes but holds nothing, as agents read it).
pub fn ic_canister_ranges(data: &[u8]) -> Result<(), IcDecodeError> {
    let limits = ic_limits();
    let ranges = decode_canister_ranges(data, &limits)?;
    let encoded = encode_canister_ranges(&ranges);
    assert_eq!(
        decode_canister_ranges(&encoded, &limits),
        Ok(ranges.clone())
    );
    for (first, last) in &ranges {
        if first.as_slice() <= last.as_slice() {
            assert!(canister_in_ranges(first, &ranges) && canister_in_ranges(last, &ranges));
        } else {
            assert!(!canister_in_ranges(first, &[(*first, *last)]));
        }
    }
    Ok(())
}

/// Decodes a counter state file; on success its encoding is the same bytes (the encoding is
/// unique).
pub fn canister_counter_state(data: &[u8]) -> Result<(), CanisterStateError> {
    let value = decode_counter_state(data)?;
    assert_eq!(encode_counter_state(value), data);
    Ok(())
}

/// Decodes a key-value state file with the default limits; on success its encoding is the same
/// bytes and within the file size those limits allow.
pub fn canister_kv_state(data: &[u8]) -> Result<(), CanisterStateError> {
    let limits = KvStateLimits::default();
    let (entries, _) = decode_kv_state(data, &limits)?;
    assert_eq!(encode_kv_state(&entries), data);
    assert!(data.len() as u64 <= limits.file_bytes_max());
    Ok(())
}
