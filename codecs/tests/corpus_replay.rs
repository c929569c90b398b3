//! Replays the fuzz corpus (codecs/fuzz/corpus/<target>/) through the same `fuzzing::*`
//! functions the fuzz targets call, so `cargo test` runs every committed input.
//!
//! The seed inputs are generated here, from the codecs' own encoders plus hand-broken variants.
//! Their file names say what must happen: `valid` and `valid-*` decode (and round-trip),
//! `invalid-*` is rejected with an error; any other file (one a fuzzing run added) must merely
//! not panic.
//! To rewrite the seeds after a wire change:
//! `ICN_WRITE_CORPUS=1 cargo test -p icn-codecs --test corpus_replay seed_corpus`. Without it, a
//! seed that differs from its committed file fails the test.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use flatbuffers::FlatBufferBuilder;
use icn_codecs::fuzzing;
use icn_codecs::generated::wire;
use icn_codecs::ic::{
    blob, encode_tagged, encode_value, entry, text, Certificate, CertificateDelegation, HashTree,
    IcLimits, LabeledTree, Principal, Value,
};
use icn_codecs::*;

/// Upper bound on corpus files replayed per target, so a long fuzzing session that added many
/// files cannot make `cargo test` slow.
const CORPUS_FILES_PER_TARGET_MAX: usize = 10_000;

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join("corpus")
}

struct Seed {
    target: &'static str,
    name: &'static str,
    bytes: Vec<u8>,
}

fn seed(target: &'static str, name: &'static str, bytes: impl Into<Vec<u8>>) -> Seed {
    Seed {
        target,
        name,
        bytes: bytes.into(),
    }
}

fn encoder() -> Encoder {
    Encoder::default()
}

/// An encoder with limits far above the defaults, to build messages the default decoders reject.
fn unlimited_encoder() -> Encoder {
    Encoder::new(CodecLimits {
        message_bytes_max: 1 << 20,
        id_bytes_max: 1 << 16,
        attributes_bytes_max: 1 << 16,
        error_message_bytes_max: 1 << 16,
        ..CodecLimits::default()
    })
}

fn frame(envelope: &Envelope<'_>, body: &[u8]) -> Vec<u8> {
    let mut wire = Vec::new();
    encoder()
        .encode_frame(envelope, body.len() as u64, &mut wire)
        .unwrap();
    wire.extend_from_slice(body);
    wire
}

fn concat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

const REQUEST: RequestEnvelope = RequestEnvelope {
    request_id: 42,
    route: 3,
    priority: Priority::High,
    deadline_ms: 5_000,
};

fn frame_header_seeds() -> Vec<Seed> {
    let header = FrameHeader {
        kind: FrameKind::Request,
        flags: 0,
        envelope_bytes: 24,
        body_bytes: 1 << 20,
    };
    let with = |edit: &dyn Fn(&mut [u8; 16])| {
        let mut bytes = header.encode();
        edit(&mut bytes);
        bytes.to_vec()
    };
    let t = "frame_header";
    vec![
        seed(t, "valid-request", header.encode()),
        seed(
            t,
            "valid-unknown-flags-kept",
            with(&|b| b[4..6].copy_from_slice(&[0xff, 0xff])),
        ),
        seed(
            t,
            "valid-goaway-empty",
            with(&|b| {
                b[3] = FrameKind::Goaway as u8;
                b[6..16].fill(0);
            }),
        ),
        seed(t, "invalid-empty", []),
        seed(t, "invalid-truncated", with(&|_| ())[..15].to_vec()),
        seed(t, "invalid-bad-magic", with(&|b| b[0] = 0)),
        seed(t, "invalid-version-2", with(&|b| b[2] = 2)),
        seed(t, "invalid-kind-0", with(&|b| b[3] = 0)),
        seed(t, "invalid-kind-7", with(&|b| b[3] = 7)),
        seed(
            t,
            "invalid-envelope-too-large",
            with(&|b| b[6..8].copy_from_slice(&u16::MAX.to_le_bytes())),
        ),
        seed(
            t,
            "invalid-body-too-large",
            with(&|b| b[8..16].copy_from_slice(&u64::MAX.to_le_bytes())),
        ),
    ]
}

fn frame_seeds() -> Vec<Seed> {
    let t = "frame";
    let ok = Envelope::Response(ResponseEnvelope {
        request_id: 42,
        status: RpcStatus::Ok,
        error_message: "",
    });
    let failed = Envelope::Response(ResponseEnvelope {
        request_id: 42,
        status: RpcStatus::HandlerError,
        error_message: "handler failed",
    });
    let cancel = Envelope::Cancel(CancelEnvelope { request_id: 42 });
    let goaway = Envelope::Goaway(GoawayEnvelope {
        reason: GoawayReason::Shutdown,
        last_request_id: 42,
        message: "shutting down",
    });
    let request_frame = frame(&Envelope::Request(REQUEST), b"request body");
    let mut cancel_with_body = Vec::new();
    let cancel_envelope = encoder()
        .encode_cancel(&CancelEnvelope { request_id: 42 })
        .unwrap()
        .to_vec();
    encode_frame(
        FrameKind::Cancel,
        &cancel_envelope,
        2,
        &mut cancel_with_body,
    )
    .unwrap();
    cancel_with_body.extend_from_slice(b"xx");
    let mut garbage_envelope = Vec::new();
    encode_frame(FrameKind::Request, &[0xff; 12], 0, &mut garbage_envelope).unwrap();
    vec![
        seed(t, "valid-request", request_frame.clone()),
        seed(
            t,
            "valid-request-empty-body",
            frame(&Envelope::Request(REQUEST), b""),
        ),
        seed(t, "valid-response-ok", frame(&ok, b"response body")),
        seed(t, "valid-response-error", frame(&failed, b"")),
        seed(t, "valid-cancel", frame(&cancel, b"")),
        seed(
            t,
            "valid-ping",
            frame(&Envelope::Ping(HeartbeatEnvelope { nonce: 7 }), b""),
        ),
        seed(
            t,
            "valid-pong",
            frame(&Envelope::Pong(HeartbeatEnvelope { nonce: 7 }), b""),
        ),
        seed(t, "valid-goaway", frame(&goaway, b"")),
        seed(
            t,
            "valid-followed-by-next-frame",
            concat(&[&request_frame, &frame(&cancel, b"")]),
        ),
        seed(
            t,
            "invalid-truncated-body",
            request_frame[..request_frame.len() - 1].to_vec(),
        ),
        seed(t, "invalid-header-only", request_frame[..16].to_vec()),
        seed(t, "invalid-cancel-with-body", cancel_with_body),
        seed(t, "invalid-garbage-envelope", garbage_envelope),
    ]
}

/// Builds a raw table whose fields are given as (vtable slot index, u64 value): for tables of
/// shapes our encoders never produce (unknown fields from a newer peer, wrong enum values).
fn raw_table(fields: &[(u16, u64)], size_prefixed: bool) -> Vec<u8> {
    let mut builder = FlatBufferBuilder::new();
    let start = builder.start_table();
    for &(slot, value) in fields {
        builder.push_slot_always::<u64>(4 + 2 * slot, value);
    }
    let root = builder.end_table(start);
    if size_prefixed {
        builder.finish_size_prefixed(root, None);
    } else {
        builder.finish_minimal(root);
    }
    builder.finished_data().to_vec()
}

fn request_seeds() -> Vec<Seed> {
    let t = "request";
    let max = RequestEnvelope {
        request_id: u64::MAX,
        route: u16::MAX,
        priority: Priority::Low,
        deadline_ms: u32::MAX,
    };
    let mut bad_priority = FlatBufferBuilder::new();
    let args = wire::RpcRequestArgs {
        priority: wire::Priority(3),
        ..Default::default()
    };
    let root = wire::RpcRequest::create(&mut bad_priority, &args);
    bad_priority.finish_minimal(root);
    let valid = encoder().encode_request(&REQUEST).unwrap().to_vec();
    vec![
        seed(t, "valid", valid.clone()),
        seed(t, "valid-max", encoder().encode_request(&max).unwrap()),
        seed(t, "valid-all-defaults", raw_table(&[], false)),
        seed(
            t,
            "valid-unknown-field",
            raw_table(&[(0, 1), (9, 99)], false),
        ),
        seed(t, "invalid-priority-3", bad_priority.finished_data()),
        seed(t, "invalid-empty", []),
        seed(t, "invalid-truncated", valid[..valid.len() - 2].to_vec()),
        seed(t, "invalid-garbage", [0xa5; 32]),
    ]
}

fn response_seeds() -> Vec<Seed> {
    let t = "response";
    let failed = ResponseEnvelope {
        request_id: 1,
        status: RpcStatus::Overloaded,
        error_message: "queue full",
    };
    let mut bad_utf8 = encoder().encode_response(&failed).unwrap().to_vec();
    let at = bad_utf8.windows(4).position(|w| w == b"queu").unwrap();
    bad_utf8[at..at + 2].copy_from_slice(&[0xff, 0xfe]);
    let long = "x".repeat(CodecLimits::ERROR_MESSAGE_BYTES_MAX_DEFAULT + 1);
    let too_long = ResponseEnvelope {
        error_message: &long,
        ..failed
    };
    let mut bad_status = FlatBufferBuilder::new();
    let args = wire::RpcResponseArgs {
        status: wire::RpcStatus(7),
        ..Default::default()
    };
    let root = wire::RpcResponse::create(&mut bad_status, &args);
    bad_status.finish_minimal(root);
    vec![
        seed(
            t,
            "valid-ok",
            encoder()
                .encode_response(&ResponseEnvelope {
                    status: RpcStatus::Ok,
                    error_message: "",
                    ..failed
                })
                .unwrap(),
        ),
        seed(
            t,
            "valid-error-message",
            encoder().encode_response(&failed).unwrap(),
        ),
        seed(t, "invalid-status-7", bad_status.finished_data()),
        seed(t, "invalid-bad-utf8", bad_utf8),
        seed(
            t,
            "invalid-message-too-long",
            unlimited_encoder().encode_response(&too_long).unwrap(),
        ),
    ]
}

fn cancel_heartbeat_goaway_seeds() -> Vec<Seed> {
    let cancel = encoder()
        .encode_cancel(&CancelEnvelope { request_id: 42 })
        .unwrap()
        .to_vec();
    let goaway = GoawayEnvelope {
        reason: GoawayReason::NotInSubnet,
        last_request_id: 10,
        message: "not in the subnet at registry version 7",
    };
    vec![
        seed("cancel", "valid", cancel.clone()),
        seed(
            "cancel",
            "valid-unknown-field",
            raw_table(&[(0, 42), (20, 1)], false),
        ),
        seed(
            "cancel",
            "invalid-truncated",
            cancel[..cancel.len() - 4].to_vec(),
        ),
        seed(
            "cancel",
            "invalid-root-offset-out-of-bounds",
            [0xf0, 0xff, 0xff, 0x7f, 0, 0, 0, 0],
        ),
        seed(
            "heartbeat",
            "valid",
            encoder()
                .encode_heartbeat(&HeartbeatEnvelope { nonce: u64::MAX })
                .unwrap(),
        ),
        seed(
            "heartbeat",
            "valid-zero",
            encoder()
                .encode_heartbeat(&HeartbeatEnvelope { nonce: 0 })
                .unwrap(),
        ),
        seed("heartbeat", "invalid-empty", []),
        seed("goaway", "valid", encoder().encode_goaway(&goaway).unwrap()),
        seed(
            "goaway",
            "valid-no-message",
            encoder()
                .encode_goaway(&GoawayEnvelope {
                    message: "",
                    ..goaway
                })
                .unwrap(),
        ),
        seed("goaway", "invalid-reason-9", raw_table(&[(0, 9)], false)),
    ]
}

fn slot_update_seeds() -> Vec<Seed> {
    let t = "slot_update";
    let advert = SlotUpdate {
        artifact_kind: 2,
        slot: 17,
        commit_id: 1_000,
        artifact_id: b"block-proposal-hash-0123456789abcdef",
        attributes: b"height=12",
        artifact_bytes: 1 << 20,
        artifact_pushed: false,
        slot_cleared: false,
    };
    let pushed = SlotUpdate {
        artifact_bytes: 11,
        artifact_pushed: true,
        ..advert
    };
    let advert_body = encoder().encode_slot_update(&advert).unwrap().to_vec();
    let pushed_message = encoder().encode_slot_update(&pushed).unwrap().to_vec();
    let empty_id = SlotUpdate {
        artifact_id: b"",
        attributes: b"",
        ..advert
    };
    let cleared = SlotUpdate {
        slot_cleared: true,
        ..advert
    };
    let cleared_pushed = SlotUpdate {
        artifact_pushed: true,
        artifact_bytes: 0,
        ..cleared
    };
    vec![
        seed(t, "valid-advert", advert_body.clone()),
        seed(
            t,
            "valid-cleared",
            encoder().encode_slot_update(&cleared).unwrap(),
        ),
        seed(
            t,
            "invalid-cleared-pushed",
            encoder().encode_slot_update(&cleared_pushed).unwrap(),
        ),
        seed(
            t,
            "valid-pushed",
            concat(&[&pushed_message, b"hello world"]),
        ),
        seed(
            t,
            "valid-empty-id",
            encoder().encode_slot_update(&empty_id).unwrap(),
        ),
        seed(
            t,
            "invalid-pushed-short",
            concat(&[&pushed_message, b"hello"]),
        ),
        seed(t, "invalid-advert-trailing", concat(&[&advert_body, b"!"])),
        seed(t, "invalid-missing-id", raw_table(&[(1, 17)], true)),
        seed(t, "invalid-prefix-too-large", u32::MAX.to_le_bytes()),
        seed(
            t,
            "invalid-truncated",
            advert_body[..advert_body.len() / 2].to_vec(),
        ),
    ]
}

fn slot_updates_seeds() -> Vec<Seed> {
    let t = "slot_updates";
    let advert = SlotUpdate {
        artifact_kind: 2,
        slot: 17,
        commit_id: 1_000,
        artifact_id: b"block-proposal-hash-0123456789abcdef",
        attributes: b"height=12",
        artifact_bytes: 1 << 20,
        artifact_pushed: false,
        slot_cleared: false,
    };
    let pushed = SlotUpdate {
        slot: 18,
        artifact_bytes: 5,
        artifact_pushed: true,
        ..advert
    };
    let cleared = SlotUpdate {
        slot: 19,
        artifact_bytes: 0,
        slot_cleared: true,
        ..advert
    };
    let advert_body = encoder().encode_slot_update(&advert).unwrap().to_vec();
    let pushed_body = encoder().encode_slot_update(&pushed).unwrap().to_vec();
    let cleared_body = encoder().encode_slot_update(&cleared).unwrap().to_vec();
    let three = concat(&[&advert_body, &pushed_body, b"hello", &cleared_body]);
    let too_many: Vec<u8> = (0..=icn_codecs::fuzzing::SLOT_UPDATES_MAX)
        .flat_map(|_| advert_body.clone())
        .collect();
    vec![
        seed(t, "valid-one", advert_body.clone()),
        seed(t, "valid-three", three.clone()),
        seed(t, "invalid-empty", Vec::new()),
        seed(t, "invalid-pushed-short", concat(&[&pushed_body, b"hel"])),
        seed(t, "invalid-trailing", concat(&[&three, b"!"])),
        seed(t, "invalid-too-many", too_many),
    ]
}

fn artifact_request_seeds() -> Vec<Seed> {
    let t = "artifact_request";
    let request = ArtifactRequest {
        artifact_kind: 2,
        artifact_id: b"block-proposal-hash-0123456789abcdef",
        offset: 0,
        length: 0,
    };
    let body = encoder()
        .encode_artifact_request(&request)
        .unwrap()
        .to_vec();
    let long_id = vec![7u8; CodecLimits::ID_BYTES_MAX_DEFAULT + 1];
    let too_long = ArtifactRequest {
        artifact_id: &long_id,
        ..request
    };
    let chunk = ArtifactRequest {
        offset: 1 << 20,
        length: 1 << 20,
        ..request
    };
    let overflowing = ArtifactRequest {
        offset: u64::MAX,
        length: 1,
        ..request
    };
    vec![
        seed(t, "valid", body.clone()),
        seed(
            t,
            "valid-chunk",
            encoder().encode_artifact_request(&chunk).unwrap(),
        ),
        seed(
            t,
            "invalid-range-overflow",
            encoder().encode_artifact_request(&overflowing).unwrap(),
        ),
        seed(
            t,
            "invalid-id-too-long",
            unlimited_encoder()
                .encode_artifact_request(&too_long)
                .unwrap(),
        ),
        seed(t, "invalid-trailing", concat(&[&body, b"\0"])),
        seed(t, "invalid-missing-id", raw_table(&[(0, 2)], true)),
    ]
}

fn state_sync_seeds() -> Vec<Seed> {
    let advert = encoder()
        .encode_state_advert(&StateAdvert {
            height: 1_200,
            root_hash: [0xab; HASH_BYTES],
            partial: true,
        })
        .unwrap()
        .to_vec();
    let manifest = encoder()
        .encode_manifest_request(&ManifestRequest {
            height: 1_200,
            piece: 3,
        })
        .unwrap()
        .to_vec();
    let chunk = ChunkRequest {
        height: 1_200,
        chunk_index: 77,
    };
    let chunk_body = encoder().encode_chunk_request(&chunk).unwrap().to_vec();
    let chunk_max = ChunkRequest {
        height: u64::MAX,
        chunk_index: u32::MAX,
    };
    vec![
        seed("state_advert", "valid", advert.clone()),
        seed(
            "state_advert",
            "invalid-missing-hash",
            raw_table(&[(0, 1_200)], true),
        ),
        seed(
            "state_advert",
            "invalid-truncated",
            advert[..advert.len() - 8].to_vec(),
        ),
        seed("manifest_request", "valid", manifest.clone()),
        seed(
            "manifest_request",
            "valid-all-defaults",
            raw_table(&[], true),
        ),
        seed(
            "manifest_request",
            "invalid-trailing",
            concat(&[&manifest, b"\0\0\0\0"]),
        ),
        seed("manifest_request", "invalid-empty", []),
        seed("chunk_request", "valid", chunk_body.clone()),
        seed(
            "chunk_request",
            "valid-max",
            encoder().encode_chunk_request(&chunk_max).unwrap(),
        ),
        seed(
            "chunk_request",
            "invalid-not-size-prefixed",
            raw_table(&[(0, 1)], false),
        ),
        seed(
            "chunk_request",
            "invalid-truncated-prefix",
            chunk_body[..3].to_vec(),
        ),
    ]
}

fn artifact_batch_seeds() -> Vec<Seed> {
    let (t, r) = ("artifact_batch_request", "artifact_batch_response");
    let ids: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i; 40]).collect();
    let request = ArtifactBatchRequest {
        artifact_kind: 2,
        artifact_ids: ids.iter().map(Vec::as_slice).collect(),
    };
    let body = encoder()
        .encode_artifact_batch_request(&request)
        .unwrap()
        .to_vec();
    let full_ids: Vec<Vec<u8>> = (0..ARTIFACT_BATCH_IDS_MAX)
        .map(|i| vec![i as u8; CodecLimits::ID_BYTES_MAX_DEFAULT])
        .collect();
    let full = ArtifactBatchRequest {
        artifact_kind: 2,
        artifact_ids: full_ids.iter().map(Vec::as_slice).collect(),
    };
    let too_many_ids: Vec<Vec<u8>> = (0..=ARTIFACT_BATCH_IDS_MAX).map(|_| vec![1; 8]).collect();
    let long_id = vec![7u8; CodecLimits::ID_BYTES_MAX_DEFAULT + 1];
    let too_long = ArtifactBatchRequest {
        artifact_kind: 2,
        artifact_ids: vec![&long_id[..]],
    };
    let empty = ArtifactBatchRequest {
        artifact_kind: 2,
        artifact_ids: Vec::new(),
    };
    let answer = |items: &[Option<&[u8]>]| {
        let mut body = Vec::new();
        encoder()
            .encode_artifact_batch_response(items, &mut body)
            .unwrap();
        body
    };
    let valid_answer = answer(&[Some(b"first artifact"), None, Some(b"third")]);
    // A header that declares 4 bytes held but a not-held item with 4 bytes: built by hand.
    let mut lying = FlatBufferBuilder::new();
    let items = lying.create_vector(&[wire::ArtifactBatchItem::new(4, false)]);
    let root = wire::ArtifactBatchResponse::create(
        &mut lying,
        &wire::ArtifactBatchResponseArgs { items: Some(items) },
    );
    lying.finish_size_prefixed(root, None);
    let not_held_with_bytes = concat(&[lying.finished_data(), b"abcd"]);
    vec![
        seed(t, "valid", body.clone()),
        seed(
            t,
            "valid-full",
            encoder().encode_artifact_batch_request(&full).unwrap(),
        ),
        seed(t, "invalid-too-many-ids", raw_batch_request(&too_many_ids)),
        seed(
            t,
            "invalid-id-too-long",
            unlimited_encoder()
                .encode_artifact_batch_request(&too_long)
                .unwrap(),
        ),
        seed(
            t,
            "invalid-no-ids",
            encoder().encode_artifact_batch_request(&empty).unwrap(),
        ),
        seed(t, "invalid-trailing", concat(&[&body, b"\0"])),
        seed(t, "invalid-missing-ids", raw_table(&[(0, 2)], true)),
        seed(r, "valid", valid_answer.clone()),
        seed(r, "valid-none-held", answer(&[None, None])),
        seed(r, "valid-empty", answer(&[])),
        seed(
            r,
            "invalid-short",
            valid_answer[..valid_answer.len() - 1].to_vec(),
        ),
        seed(r, "invalid-trailing", concat(&[&valid_answer, b"x"])),
        seed(r, "invalid-not-held-with-bytes", not_held_with_bytes),
        seed(r, "invalid-missing-items", raw_table(&[], true)),
    ]
}

/// A batch request with any number of ids, built without the encoder's bound.
fn raw_batch_request(ids: &[Vec<u8>]) -> Vec<u8> {
    let mut builder = FlatBufferBuilder::new();
    let entries: Vec<_> = ids
        .iter()
        .map(|id| {
            let artifact_id = Some(builder.create_vector(id));
            wire::ArtifactBatchId::create(&mut builder, &wire::ArtifactBatchIdArgs { artifact_id })
        })
        .collect();
    let artifact_ids = Some(builder.create_vector(&entries));
    let root = wire::ArtifactBatchRequest::create(
        &mut builder,
        &wire::ArtifactBatchRequestArgs {
            artifact_kind: 2,
            artifact_ids,
        },
    );
    builder.finish_size_prefixed(root, None);
    builder.finished_data().to_vec()
}

fn seeds() -> Vec<Seed> {
    let mut seeds = frame_header_seeds();
    seeds.extend(frame_seeds());
    seeds.extend(request_seeds());
    seeds.extend(response_seeds());
    seeds.extend(cancel_heartbeat_goaway_seeds());
    seeds.extend(slot_update_seeds());
    seeds.extend(slot_updates_seeds());
    seeds.extend(artifact_request_seeds());
    seeds.extend(artifact_batch_seeds());
    seeds.extend(state_sync_seeds());
    seeds.extend(manifest_seeds());
    seeds.extend(replica_seeds());
    seeds.extend(ic_request_seeds());
    seeds.extend(ic_tree_and_certificate_seeds());
    seeds.extend(ic_principal_text_seeds());
    seeds.extend(ic_leaf_seeds());
    seeds.extend(canister_state_seeds());
    seeds
}

fn cbor(value: &Value<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    encode_value(value, &mut out);
    out
}

fn tagged(value: &Value<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    encode_tagged(value, &mut out);
    out
}

/// The call in the interface specification's request id example.
fn spec_call_fields() -> Vec<(Value<'static>, Value<'static>)> {
    vec![
        entry("request_type", text("call")),
        entry("sender", blob(&[0x04])),
        entry("ingress_expiry", Value::Nat(1_685_570_400_000_000_000)),
        entry("canister_id", blob(&[0, 0, 0, 0, 0, 0, 0x04, 0xD2])),
        entry("method_name", text("hello")),
        entry("arg", blob(b"DIDL\x00\xFD*")),
    ]
}

/// The spec call with `name` replaced by (or, if absent, extended with) `value`.
fn spec_call_with(name: &'static str, value: Value<'static>) -> Value<'static> {
    let mut fields: Vec<_> = spec_call_fields()
        .into_iter()
        .filter(|(key, _)| key != &text(name))
        .collect();
    fields.push(entry(name, value));
    Value::Map(vec![entry("content", Value::Map(fields))])
}

fn nested_arrays(depth: usize) -> Vec<u8> {
    let mut bytes = vec![0x81; depth];
    bytes.push(0x00);
    bytes
}

fn ic_request_seeds() -> Vec<Seed> {
    let t = "ic_request";
    let spec = Value::Map(vec![entry("content", Value::Map(spec_call_fields()))]);
    let spec_tagged = tagged(&spec);
    let query = spec_call_with("request_type", text("query"));
    let delegation = Value::Map(vec![
        entry(
            "pubkey",
            blob(b"0*0\x05\x06\x03+ep\x03!\x00 session public key 32 bytes"),
        ),
        entry("expiration", Value::Nat(1_700_000_000_000_000_000)),
        entry(
            "targets",
            Value::Array(vec![blob(&[0, 0, 0, 0, 0, 0, 0x04, 0xD2, 1, 1])]),
        ),
    ]);
    let user = Principal::self_authenticating(b"user key");
    let read_state = Value::Map(vec![
        entry(
            "content",
            Value::Map(vec![
                entry("request_type", text("read_state")),
                entry("sender", blob(user.as_slice())),
                entry("nonce", blob(&[7; 16])),
                entry("ingress_expiry", Value::Nat(1_685_570_400_000_000_000)),
                entry(
                    "paths",
                    Value::Array(vec![
                        Value::Array(vec![blob(b"time")]),
                        Value::Array(vec![blob(b"request_status"), blob(&[0xab; 32])]),
                    ]),
                ),
            ]),
        ),
        entry("sender_pubkey", blob(b"user key")),
        entry("sender_sig", blob(&[0x55; 64])),
        entry(
            "sender_delegation",
            Value::Array(vec![Value::Map(vec![
                entry("delegation", delegation),
                entry("signature", blob(&[0x66; 64])),
            ])]),
        ),
    ]);
    let mut unknown = spec_call_fields();
    unknown.push(entry(
        "future_field",
        Value::Array(vec![Value::Nat(1), text("x")]),
    ));
    let unknown = Value::Map(vec![
        entry("content", Value::Map(unknown)),
        entry("future_envelope_field", Value::Bool(true)),
    ]);
    // {content: {_ ...}} with the content map as an indefinite-length map.
    let content = cbor(&Value::Map(spec_call_fields()));
    let indefinite = concat(&[
        &[0xa1],
        &cbor(&text("content")),
        &[0xbf],
        &content[1..],
        &[0xff],
    ]);
    let mut duplicate = spec_call_fields();
    duplicate.push(entry("arg", blob(b"again")));
    let too_many_delegations = Value::Array(
        (0..=IcLimits::DELEGATIONS_MAX_DEFAULT)
            .map(|_| Value::Map(vec![]))
            .collect(),
    );
    let too_deep = concat(&[
        &[0xa2],
        &cbor(&text("content")),
        &cbor(&Value::Map(spec_call_fields())),
        &cbor(&text("deep")),
        &nested_arrays(IcLimits::CBOR_DEPTH_MAX_DEFAULT),
    ]);
    vec![
        seed(t, "valid-spec-call", spec_tagged.clone()),
        seed(t, "valid-spec-call-untagged", cbor(&spec)),
        seed(t, "valid-query", tagged(&query)),
        seed(t, "valid-read-state-delegated", tagged(&read_state)),
        seed(t, "valid-unknown-fields", tagged(&unknown)),
        seed(t, "valid-indefinite-content", indefinite),
        seed(t, "invalid-empty", []),
        seed(t, "invalid-not-a-map", cbor(&Value::Nat(1))),
        seed(t, "invalid-missing-content", tagged(&Value::Map(vec![]))),
        seed(
            t,
            "invalid-arg-not-blob",
            tagged(&spec_call_with("arg", text("x"))),
        ),
        seed(
            t,
            "invalid-request-type",
            tagged(&spec_call_with("request_type", text("install"))),
        ),
        seed(
            t,
            "invalid-duplicate-field",
            tagged(&Value::Map(vec![entry("content", Value::Map(duplicate))])),
        ),
        seed(
            t,
            "invalid-not-hashable",
            tagged(&spec_call_with("extra", Value::Float(0.5))),
        ),
        seed(
            t,
            "invalid-sender-too-long",
            tagged(&spec_call_with("sender", blob(&[1; 30]))),
        ),
        seed(
            t,
            "invalid-nonce-too-long",
            tagged(&spec_call_with("nonce", blob(&[1; 33]))),
        ),
        seed(
            t,
            "invalid-too-many-delegations",
            tagged(&Value::Map(vec![
                entry("content", Value::Map(spec_call_fields())),
                entry("sender_delegation", too_many_delegations),
            ])),
        ),
        seed(t, "invalid-too-deep", too_deep),
        seed(t, "invalid-trailing", concat(&[&spec_tagged, &[0]])),
        seed(
            t,
            "invalid-truncated",
            spec_tagged[..spec_tagged.len() - 3].to_vec(),
        ),
        seed(
            t,
            "invalid-hostile-length",
            [0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        ),
    ]
}

fn example_state() -> LabeledTree {
    let leaf = |bytes: &[u8]| LabeledTree::Leaf(bytes.to_vec());
    let map = |entries: Vec<(&[u8], LabeledTree)>| {
        LabeledTree::SubTree(entries.into_iter().map(|(k, v)| (k.to_vec(), v)).collect())
    };
    map(vec![
        (b"time", leaf(&[0x80, 0xe8, 0xed, 0xa1, 0x04])),
        (
            b"request_status",
            map(vec![
                (
                    &[1; 32],
                    map(vec![
                        (b"status", leaf(b"replied")),
                        (b"reply", leaf(b"DIDL\x00\x00")),
                    ]),
                ),
                (&[5; 32], map(vec![(b"status", leaf(b"processing"))])),
            ]),
        ),
    ])
}

fn ic_tree_and_certificate_seeds() -> Vec<Seed> {
    let state = example_state();
    let full = state.to_hash_tree();
    let witness = state.witness(&[vec![&b"time"[..]], vec![&b"request_status"[..], &[3; 32]]]);
    let encode = |tree: &HashTree<'_>| {
        let mut out = Vec::new();
        tree.encode(&mut out);
        out
    };
    let too_deep = {
        let mut bytes = Vec::new();
        for _ in 0..=IcLimits::TREE_DEPTH_MAX_DEFAULT {
            bytes.extend_from_slice(&[0x83, 0x02, 0x41, b'a']);
        }
        bytes.extend_from_slice(&[0x81, 0x00]);
        bytes
    };
    let certificate = Certificate {
        tree: witness.clone(),
        signature: (&[0x77; 48][..]).into(),
        delegation: Some(CertificateDelegation {
            subnet_id: Principal::self_authenticating(b"subnet key"),
            certificate: (&b"root subnet certificate"[..]).into(),
        }),
    };
    let mut with_delegation = Vec::new();
    certificate.encode(&mut with_delegation);
    let mut without_delegation = Vec::new();
    Certificate {
        delegation: None,
        ..certificate.clone()
    }
    .encode(&mut without_delegation);
    let h = "ic_hash_tree";
    let c = "ic_certificate";
    vec![
        seed(h, "valid-full-state", encode(&full)),
        seed(h, "valid-witness", encode(&witness)),
        seed(h, "valid-empty", [0x81, 0x00]),
        seed(
            h,
            "valid-tagged",
            concat(&[&[0xd9, 0xd9, 0xf7], &encode(&witness)]),
        ),
        seed(h, "invalid-kind-5", [0x81, 0x05]),
        seed(h, "invalid-empty-array", [0x80]),
        seed(h, "invalid-pruned-short", [0x82, 0x04, 0x41, 0x00]),
        seed(h, "invalid-leaf-not-blob", [0x82, 0x03, 0x01]),
        seed(h, "invalid-too-deep", too_deep),
        seed(h, "invalid-trailing", concat(&[&encode(&full), &[0x00]])),
        seed(c, "valid-delegated", with_delegation.clone()),
        seed(c, "valid-no-delegation", without_delegation),
        seed(
            c,
            "invalid-missing-tree",
            tagged(&Value::Map(vec![entry("signature", blob(&[0; 48]))])),
        ),
        seed(
            c,
            "invalid-bad-tree",
            tagged(&Value::Map(vec![
                entry("tree", Value::Array(vec![Value::Nat(9)])),
                entry("signature", blob(&[0; 48])),
            ])),
        ),
        seed(
            c,
            "invalid-signature-not-blob",
            tagged(&Value::Map(vec![
                entry("tree", Value::Array(vec![Value::Nat(0)])),
                entry("signature", text("sig")),
            ])),
        ),
        seed(
            c,
            "invalid-truncated",
            with_delegation[..with_delegation.len() / 2].to_vec(),
        ),
    ]
}

fn canister_state_seeds() -> Vec<Seed> {
    use icn_codecs::canister_state::{encode_counter_state, encode_kv_state};
    let counter = encode_counter_state(42);
    let entries: std::collections::BTreeMap<String, Vec<u8>> =
        [("", &b""[..]), ("a", b"1"), ("key", b"value")]
            .into_iter()
            .map(|(key, value)| (key.to_string(), value.to_vec()))
            .collect();
    let kv = encode_kv_state(&entries);
    let mut unordered = kv[..6].to_vec();
    unordered.extend_from_slice(&2u64.to_le_bytes());
    for key in [b"b", b"a"] {
        unordered.extend_from_slice(&1u32.to_le_bytes());
        unordered.extend_from_slice(key);
        unordered.extend_from_slice(&0u32.to_le_bytes());
    }
    let mut huge_count = kv[..6].to_vec();
    huge_count.extend_from_slice(&u64::MAX.to_le_bytes());
    let mut long_key = kv[..6].to_vec();
    long_key.extend_from_slice(&1u64.to_le_bytes());
    long_key.extend_from_slice(&u32::MAX.to_le_bytes());
    let mut trailing = counter.clone();
    trailing.push(0);
    vec![
        seed("canister_counter_state", "valid", counter.clone()),
        seed(
            "canister_counter_state",
            "valid-max",
            encode_counter_state(u64::MAX),
        ),
        seed(
            "canister_counter_state",
            "invalid-truncated",
            counter[..counter.len() - 1].to_vec(),
        ),
        seed("canister_counter_state", "invalid-trailing", trailing),
        seed("canister_counter_state", "invalid-kind", kv.clone()),
        seed("canister_kv_state", "valid", kv.clone()),
        seed(
            "canister_kv_state",
            "valid-empty",
            encode_kv_state(&Default::default()),
        ),
        seed(
            "canister_kv_state",
            "invalid-truncated",
            kv[..kv.len() - 1].to_vec(),
        ),
        seed("canister_kv_state", "invalid-unordered", unordered),
        seed("canister_kv_state", "invalid-huge-count", huge_count),
        seed("canister_kv_state", "invalid-long-key", long_key),
        seed(
            "canister_kv_state",
            "invalid-magic",
            b"XXXX\x01\x02".to_vec(),
        ),
    ]
}

fn ic_principal_text_seeds() -> Vec<Seed> {
    let t = "ic_principal_text";
    let user = Principal::self_authenticating(b"user key").to_string();
    vec![
        seed(t, "valid-anonymous", "2vxsx-fae"),
        seed(t, "valid-management", "aaaaa-aa"),
        seed(t, "valid-canister", "ryjl3-tyaaa-aaaaa-aaaba-cai"),
        seed(t, "valid-uppercase", "RYJL3-TYAAA-AAAAA-AAABA-CAI"),
        seed(t, "valid-self-authenticating", user.clone()),
        seed(t, "invalid-checksum", "ryjl3-tyaaa-aaaaa-aaaaa-cai"),
        seed(t, "invalid-char", "2vxsx-fa1"),
        seed(t, "invalid-dashes", "2vxs-xfae"),
        seed(t, "invalid-too-long", format!("{user}-aaaaa")),
        seed(t, "invalid-empty", ""),
        seed(t, "invalid-not-utf8", [0xff, 0xfe]),
    ]
}

fn ic_leaf_seeds() -> Vec<Seed> {
    let t = "ic_time_leaf";
    let r = "ic_canister_ranges";
    let mut max = vec![0xff; 9];
    max.push(0x01);
    let mut over = vec![0xff; 9];
    over.push(0x02);
    let ranges = ic::encode_canister_ranges(&[
        (
            Principal::from_canister_index(0),
            Principal::from_canister_index(0xfffff),
        ),
        (
            Principal::from_canister_index(0x200000),
            Principal::from_canister_index(0x2fffff),
        ),
    ]);
    let mut long_bound = vec![0x81, 0x82, 0x58, 30];
    long_bound.extend_from_slice(&[0; 30]);
    long_bound.push(0x40);
    vec![
        seed(t, "valid-zero", ic::encode_time(0)),
        seed(
            t,
            "valid-mainnet",
            ic::encode_time(1_733_317_186_048_345_409),
        ),
        seed(t, "valid-max", max),
        seed(t, "valid-redundant-zero-group", [0x80, 0x00]),
        seed(t, "invalid-empty", []),
        seed(t, "invalid-unterminated", [0x80]),
        seed(t, "invalid-trailing", [0x05, 0x00]),
        seed(t, "invalid-too-long", [0xff; 11]),
        seed(t, "invalid-overflow", over),
        seed(r, "valid", ranges.clone()),
        seed(r, "valid-untagged", ranges[3..].to_vec()),
        seed(r, "valid-empty", ic::encode_canister_ranges(&[])),
        // An inverted range (first > last) decodes and holds nothing (found by fuzzing: the
        // target once assumed every range held its own bounds).
        seed(
            r,
            "valid-inverted-range",
            ic::encode_canister_ranges(&[(
                Principal::from_canister_index(9),
                Principal::from_canister_index(2),
            )]),
        ),
        seed(r, "invalid-not-array", [0x01]),
        seed(r, "invalid-not-pair", [0x81, 0x81, 0x40]),
        seed(r, "invalid-bound-type", [0x81, 0x82, 0x40, 0x01]),
        seed(r, "invalid-long-bound", long_bound),
        seed(r, "invalid-truncated", ranges[..ranges.len() - 1].to_vec()),
    ]
}

/// A small valid manifest: a group chunk of two small files (one empty file between them) and
/// a large file cut in two.
fn sample_manifest() -> state::Manifest {
    let contents: [&[u8]; 4] = [b"alpha", b"", b"beta", &[7u8; 150]];
    let paths = ["a/one", "a/two", "b", "c/big"];
    let sizes: Vec<u64> = contents.iter().map(|c| c.len() as u64).collect();
    let files = paths
        .iter()
        .zip(contents)
        .map(|(path, content)| {
            let mut hasher = state::FileHasher::new();
            hasher.update(content);
            state::FileEntry {
                path: path.to_string(),
                size: content.len() as u64,
                hash: hasher.finish(),
            }
        })
        .collect();
    let mut manifest = state::Manifest {
        chunk_bytes: 100,
        files,
        chunks: Vec::new(),
    };
    for plan in state::plan_chunks(&sizes, 100) {
        manifest.chunks.push(state::ChunkEntry {
            file_index: plan.file_index,
            offset: plan.offset,
            size: plan.size,
            hash: [0; 32],
        });
    }
    for index in 0..manifest.chunks.len() {
        let mut hasher = state::ChunkHasher::new();
        for segment in manifest.segments(index as u32).unwrap() {
            let content = contents[segment.file_index as usize];
            hasher
                .update(&content[segment.offset as usize..(segment.offset + segment.len) as usize]);
        }
        manifest.chunks[index].hash = hasher.finish();
    }
    manifest
}

fn replica_seeds() -> Vec<Seed> {
    use icn_codecs::replica::{
        encode_replica_block, encode_replica_share, ReplicaBlock, ReplicaShare,
    };
    let block = ReplicaBlock {
        height: 12,
        round: 0,
        parent: [7; 32],
        time_ns: 1_764_000_000_000_000_000,
        ingress: vec![[1; 32], [2; 32]],
    };
    let block_bytes = encode_replica_block(&block);
    let empty = encode_replica_block(&ReplicaBlock {
        ingress: Vec::new(),
        ..block.clone()
    });
    let genesis = encode_replica_block(&ReplicaBlock {
        height: 0,
        ..block.clone()
    });
    let share_bytes = encode_replica_share(&ReplicaShare {
        height: 12,
        block: [9; 32],
        node: [4; 32],
    });
    use icn_codecs::replica::{encode_ingress_fetch_request, encode_ingress_fetch_response};
    let fetch_request = encode_ingress_fetch_request(&[[1; 32], [2; 32]]);
    let fetch_empty = encode_ingress_fetch_request(&[]);
    // Two envelopes: a CBOR map with the self-describe tag and a short, non-CBOR one (the
    // codec carries bytes; the replica decodes and verifies them).
    let fetch_response =
        encode_ingress_fetch_response(&[&b"\xd9\xd9\xf7\xa1\x67content\xa0"[..], b"x"]);
    use icn_codecs::replica::{encode_chain_state, ChainState, StoredOutcome, StoredStatus};
    let chain = encode_chain_state(&ChainState {
        height: 40,
        tip: [3; 32],
        time_ns: 1_764_000_000_000_000_000,
        statuses: vec![
            StoredStatus {
                request_id: [1; 32],
                sender: vec![4],
                canister: vec![0, 0, 0, 0, 0, 0, 0, 0, 1, 1],
                ingress_expiry: 1_764_000_100_000_000_000,
                height: 39,
                outcome: StoredOutcome::Replied(
                    b"DIDL\x00\x01\x78\x05\x00\x00\x00\x00\x00\x00\x00".to_vec(),
                ),
            },
            StoredStatus {
                request_id: [2; 32],
                sender: vec![4],
                canister: vec![0, 0, 0, 0, 0, 0, 0, 0, 1, 1],
                ingress_expiry: 1_764_000_100_000_000_000,
                height: 40,
                outcome: StoredOutcome::Rejected {
                    code: 3,
                    message: "no such method".into(),
                    error_code: "IC0536".into(),
                },
            },
        ],
    });
    vec![
        seed("replica_chain_state", "valid", chain.clone()),
        seed(
            "replica_chain_state",
            "invalid-truncated",
            chain[..chain.len() / 2].to_vec(),
        ),
        seed("replica_block", "valid", block_bytes.clone()),
        seed("replica_block", "valid-empty", empty),
        seed("replica_block", "invalid-height-zero", genesis),
        seed(
            "replica_block",
            "invalid-truncated",
            block_bytes[..block_bytes.len() / 2].to_vec(),
        ),
        seed("replica_share", "valid", share_bytes.clone()),
        seed(
            "replica_share",
            "invalid-truncated",
            share_bytes[..share_bytes.len() - 5].to_vec(),
        ),
        seed(
            "replica_ingress_fetch_request",
            "valid",
            fetch_request.clone(),
        ),
        seed("replica_ingress_fetch_request", "valid-empty", fetch_empty),
        seed(
            "replica_ingress_fetch_request",
            "invalid-truncated",
            fetch_request[..fetch_request.len() - 7].to_vec(),
        ),
        seed(
            "replica_ingress_fetch_response",
            "valid",
            fetch_response.clone(),
        ),
        seed(
            "replica_ingress_fetch_response",
            "invalid-truncated",
            fetch_response[..fetch_response.len() / 2].to_vec(),
        ),
    ]
}

fn manifest_seeds() -> Vec<Seed> {
    let manifest = sample_manifest();
    let (meta, pieces) = manifest.split_with(256, 3);
    assert!(pieces.len() >= 2);
    let meta_bytes = state::encode_meta_manifest(&meta);
    let piece_bytes = state::encode_manifest_piece(&pieces[0]);
    let mut bad_version = meta.clone();
    bad_version.version = 9;
    let mut bad_counts = meta.clone();
    bad_counts.file_count += 1;
    let mut bad_path = pieces[0].clone();
    bad_path.files[0].path = "../escape".into();
    let mut absolute = pieces[0].clone();
    absolute.files[0].path = "/etc/passwd".into();
    vec![
        seed("meta_manifest", "valid", meta_bytes.clone()),
        seed(
            "meta_manifest",
            "invalid-version",
            state::encode_meta_manifest(&bad_version),
        ),
        seed(
            "meta_manifest",
            "invalid-counts",
            state::encode_meta_manifest(&bad_counts),
        ),
        seed(
            "meta_manifest",
            "invalid-truncated",
            meta_bytes[..meta_bytes.len() / 2].to_vec(),
        ),
        seed("manifest_piece", "valid", piece_bytes.clone()),
        seed(
            "manifest_piece",
            "valid-last",
            state::encode_manifest_piece(pieces.last().unwrap()),
        ),
        seed(
            "manifest_piece",
            "invalid-dotdot-path",
            state::encode_manifest_piece(&bad_path),
        ),
        seed(
            "manifest_piece",
            "invalid-absolute-path",
            state::encode_manifest_piece(&absolute),
        ),
        seed(
            "manifest_piece",
            "invalid-truncated",
            piece_bytes[..piece_bytes.len() / 2].to_vec(),
        ),
    ]
}

#[test]
fn seed_corpus_is_committed() {
    let write = std::env::var_os("ICN_WRITE_CORPUS").is_some();
    for seed in seeds() {
        let dir = corpus_dir().join(seed.target);
        let path = dir.join(seed.name);
        if write {
            fs::create_dir_all(&dir).unwrap();
            fs::write(&path, &seed.bytes).unwrap();
            continue;
        }
        let committed = fs::read(&path).unwrap_or_else(|error| {
            panic!(
                "{}: {error} (run with ICN_WRITE_CORPUS=1 to write the seeds)",
                path.display()
            )
        });
        assert_eq!(
            committed,
            seed.bytes,
            "{} differs from its generator (run with ICN_WRITE_CORPUS=1 after a wire change)",
            path.display()
        );
    }
}

#[test]
fn every_target_has_a_corpus_and_every_seed_a_target() {
    let targets: BTreeSet<&str> = fuzzing::TARGETS.iter().copied().collect();
    let seeded: BTreeSet<&str> = seeds().iter().map(|seed| seed.target).collect();
    assert_eq!(seeded, targets);
}

#[test]
fn corpus_replays_with_the_expected_outcomes() {
    for target in fuzzing::TARGETS {
        let dir = corpus_dir().join(target);
        let mut valid_files = 0;
        let entries =
            fs::read_dir(&dir).unwrap_or_else(|error| panic!("{}: {error}", dir.display()));
        for entry in entries.take(CORPUS_FILES_PER_TARGET_MAX) {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let data = fs::read(&path).unwrap();
            let outcome = fuzzing::run(target, &data).expect("a known target");
            let expectation = name.split('-').next().unwrap_or_default();
            if expectation == "valid" {
                assert_eq!(outcome, Ok(()), "{target}/{name}");
                valid_files += 1;
            } else if expectation == "invalid" {
                assert!(outcome.is_err(), "{target}/{name} decoded but should not");
            }
        }
        assert!(valid_files > 0, "{target} has no valid seed");
    }
}
