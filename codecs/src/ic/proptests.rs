//! Property tests of the IC interface codecs: every encoder's output decodes to what was
//! encoded, the request id does not depend on the encoding, and witnesses prove what they
//! claim.

use std::borrow::Cow;

use proptest::collection::{btree_map, vec};
use proptest::prelude::*;

use super::cbor::{decode_value, encode_tagged, encode_value, Value};
use super::hash::hash_value;
use super::request::{
    decode_request_envelope, CallContent, Delegation, ReadStateContent, RequestContent,
    RequestEnvelope, SignedDelegation,
};
use super::tree::{decode_hash_tree, HashTree, LabeledTree, Lookup};
use super::{IcLimits, Principal, RequestId};

fn principal() -> impl Strategy<Value = Principal> {
    vec(any::<u8>(), 0..=29).prop_map(|bytes| Principal::from_slice(&bytes).unwrap())
}

fn bytes(max: usize) -> impl Strategy<Value = Cow<'static, [u8]>> {
    vec(any::<u8>(), 0..max).prop_map(Cow::Owned)
}

/// Values with only hashable types (no floats, bools, tags), nested a few levels.
fn hashable_value() -> impl Strategy<Value = Value<'static>> {
    let leaf = prop_oneof![
        any::<u64>().prop_map(Value::Nat),
        (1u64..).prop_map(|n| Value::NegInt(-i128::from(n))),
        bytes(16).prop_map(Value::Bytes),
        "[a-z_]{0,8}".prop_map(|s| Value::Text(Cow::Owned(s))),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            vec(("[a-z_]{1,8}", inner), 0..4).prop_map(|entries| {
                Value::Map(
                    entries
                        .into_iter()
                        .map(|(k, v)| (Value::Text(Cow::Owned(k)), v))
                        .collect(),
                )
            }),
        ]
    })
}

fn call_content() -> impl Strategy<Value = CallContent<'static>> {
    (
        principal(),
        "[a-z_]{0,16}",
        bytes(64),
        principal(),
        proptest::option::of(bytes(32)),
        any::<u64>(),
    )
        .prop_map(
            |(canister_id, method, arg, sender, nonce, ingress_expiry)| CallContent {
                canister_id,
                method_name: Cow::Owned(method),
                arg,
                sender,
                nonce,
                ingress_expiry,
            },
        )
}

fn content() -> impl Strategy<Value = RequestContent<'static>> {
    let read_state = (
        vec(vec(bytes(40), 0..4), 0..4),
        principal(),
        proptest::option::of(bytes(32)),
        any::<u64>(),
    )
        .prop_map(|(paths, sender, nonce, ingress_expiry)| ReadStateContent {
            paths,
            sender,
            nonce,
            ingress_expiry,
        });
    prop_oneof![
        call_content().prop_map(RequestContent::Call),
        call_content().prop_map(RequestContent::Query),
        read_state.prop_map(RequestContent::ReadState),
    ]
}

fn delegation() -> impl Strategy<Value = SignedDelegation<'static>> {
    (
        bytes(64),
        any::<u64>(),
        proptest::option::of(vec(principal(), 0..3)),
        bytes(64),
    )
        .prop_map(|(pubkey, expiration, targets, signature)| {
            let mut delegation = Delegation {
                pubkey,
                expiration,
                targets,
                hash: [0; 32],
            };
            delegation.hash = hash_value(&delegation.to_value(), "delegation").unwrap();
            SignedDelegation {
                delegation,
                signature,
            }
        })
}

fn labeled_tree() -> impl Strategy<Value = LabeledTree> {
    let leaf = bytes(8).prop_map(|b| LabeledTree::Leaf(b.into_owned()));
    leaf.prop_recursive(3, 32, 5, |inner| {
        btree_map(vec(any::<u8>(), 0..3), inner, 0..5).prop_map(LabeledTree::SubTree)
    })
}

proptest! {
    #[test]
    fn values_round_trip(value in hashable_value()) {
        let mut plain = Vec::new();
        encode_value(&value, &mut plain);
        prop_assert_eq!(decode_value(&plain, 8).unwrap(), value.clone());
        let mut tagged = Vec::new();
        encode_tagged(&value, &mut tagged);
        prop_assert_eq!(decode_value(&tagged, 8).unwrap(), value);
    }

    /// Reordering a map's entries changes its bytes but not its hash.
    #[test]
    fn map_hash_ignores_order(entries in vec(("[a-z]{1,6}", hashable_value()), 0..6)) {
        let entries: Vec<_> = entries
            .into_iter()
            .map(|(k, v)| (Value::Text(Cow::Owned(k)), v))
            .collect();
        let mut reversed = entries.clone();
        reversed.reverse();
        prop_assert_eq!(
            hash_value(&Value::Map(entries), "m"),
            hash_value(&Value::Map(reversed), "m")
        );
    }

    #[test]
    fn envelopes_round_trip(
        content in content(),
        sender_pubkey in proptest::option::of(bytes(64)),
        sender_sig in proptest::option::of(bytes(64)),
        sender_delegation in proptest::option::of(vec(delegation(), 0..3)),
    ) {
        let request_id = RequestId(hash_value(&content.to_value(), "content").unwrap());
        let envelope = RequestEnvelope { content, request_id, sender_pubkey, sender_sig, sender_delegation };
        let mut wire = Vec::new();
        envelope.encode(&mut wire);
        prop_assert_eq!(decode_request_envelope(&wire, &IcLimits::default()).unwrap(), envelope);
    }

    #[test]
    fn principal_text_round_trips(principal in principal()) {
        let text = principal.to_string();
        prop_assert_eq!(Principal::from_text(&text), Ok(principal));
        prop_assert_eq!(Principal::from_text(&text.to_uppercase()), Ok(principal));
    }

    /// A witness for any paths has the full tree's root hash and decides every requested
    /// path; the full tree's encoding round-trips.
    #[test]
    fn witnesses_prove_requested_paths(
        state in labeled_tree(),
        paths in vec(vec(vec(any::<u8>(), 0..3), 0..4), 0..4),
    ) {
        let full = state.to_hash_tree();
        let mut wire = Vec::new();
        full.encode(&mut wire);
        prop_assert_eq!(decode_hash_tree(&wire, &IcLimits::default()).unwrap(), full.clone());
        let witness = state.witness(&paths);
        prop_assert_eq!(witness.digest(), full.digest());
        for path in &paths {
            let in_witness = witness.lookup(path);
            prop_assert_ne!(&in_witness, &Lookup::Unknown, "path {:?}", path);
            prop_assert_eq!(in_witness, full.lookup(path));
        }
        if paths.is_empty() {
            prop_assert!(matches!(witness, HashTree::Pruned(_) | HashTree::Empty | HashTree::Leaf(_)));
        }
    }
}
