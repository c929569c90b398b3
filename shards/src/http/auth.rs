//! Request authentication: the ingress expiry window and sender signatures, with delegation
//! chains and the interface's domain separators.
//!
//! Supported sender keys are Ed25519 and ECDSA over P-256 (verified with BoringSSL) and over
//! secp256k1 (verified with the `k256` crate, because BoringSSL ships no secp256k1 group).
//! ECDSA signatures are the 64-byte `r ‖ s` form over SHA-256 of the signed bytes, as agents
//! produce them. Canister signatures and WebAuthn keys are refused as unsupported for now.
//!
//! The checks follow the interface specification: the anonymous sender signs nothing; any
//! other sender is the self-authenticating id of `sender_pubkey`; each delegation is signed by
//! the key before it over `"\x1Aic-request-auth-delegation" ‖ hash(delegation)`, must not have
//! expired, and, when it names targets, must include the request's effective canister; the
//! request itself is signed by the last key over `"\x0Aic-request" ‖ request_id`.
//!
//! All of this runs on the verification pool, never on a shard executor.
//!
//! # Batch verification
//! Queries and read_state requests may have their Ed25519 signatures verified in batches
//! ([`authenticate_deferred`], [`verify_ed25519_batch`], driven by `super::batch`): one
//! multiscalar multiplication checks a random linear combination of many signature equations,
//! about a third cheaper per signature than verifying each. A batch that fails tells nothing
//! about which signature is bad, so each of its requests is then verified on its own by
//! [`authenticate`] (BoringSSL), whose verdict and error text are the answer.
//!
//! The batch equation holds for every valid signature. It can differ from single verification
//! only for signatures that their own signer crafted with small-order components, which RFC
//! 8032 leaves to the verifier (its cofactored check accepts some that BoringSSL's cofactorless
//! check refuses): such a signature can at most make a query from its own key's sender count
//! as authentic, never one from another sender. Calls are never batch-verified, because their
//! signatures are checked again by every node that receives the call by gossip and all nodes
//! must agree.

use boring::bn::BigNum;
use boring::ec::EcKey;
use boring::ecdsa::EcdsaSig;
use boring::pkey::{Id, PKey};
use boring::sign::Verifier;
use icn_codecs::ic::{Principal, RequestEnvelope};

/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410), followed by the 32-byte key.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];
/// DER prefix of an uncompressed P-256 SubjectPublicKeyInfo, followed by the 65-byte point.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];
/// DER prefix of an uncompressed secp256k1 SubjectPublicKeyInfo, followed by the 65-byte point.
pub(crate) const SECP256K1_SPKI_PREFIX: [u8; 23] = [
    0x30, 0x56, 0x30, 0x10, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x05, 0x2b,
    0x81, 0x04, 0x00, 0x0a, 0x03, 0x42, 0x00,
];
const EC_POINT_BYTES: usize = 65;

/// Why a request is not authentic. Answered with 400 and the text (as the IC does), except
/// that the text never echoes key or signature bytes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("the anonymous sender must not carry sender_pubkey, sender_sig or sender_delegation")]
    AnonymousWithCredentials,
    #[error("missing {0} (required for a non-anonymous sender)")]
    Missing(&'static str),
    #[error("sender does not match sender_pubkey: expected {expected}, the request names {found}")]
    SenderMismatch { expected: String, found: String },
    #[error(
        "unsupported public key type in {0} (Ed25519, ECDSA P-256 and secp256k1 are supported)"
    )]
    UnsupportedKey(&'static str),
    #[error("invalid signature in {0}")]
    InvalidSignature(&'static str),
    #[error("delegation {index} expired at {expiration} ns (now {now} ns)")]
    DelegationExpired {
        index: usize,
        expiration: u64,
        now: u64,
    },
    #[error("delegation {index} does not allow requests to canister {canister}")]
    TargetNotAllowed { index: usize, canister: String },
}

/// Checks `ingress_expiry` against this node's clock: at least `now - drift`, at most
/// `now + window + drift` (all nanoseconds). The message follows the replica's.
pub fn check_ingress_expiry(expiry: u64, now: u64, window: u64, drift: u64) -> Result<(), String> {
    let min = now.saturating_sub(drift);
    let max = now.saturating_add(window).saturating_add(drift);
    if (min..=max).contains(&expiry) {
        Ok(())
    } else {
        Err(format!(
            "Invalid request expiry: Specified ingress_expiry not within expected range: \
             Minimum allowed expiry: {min}, Maximum allowed expiry: {max}, Provided expiry: {expiry}"
        ))
    }
}

/// Verifies the envelope's sender, delegations and signature. `effective_canister` is the
/// canister the URL addresses (None for subnet read_state), checked against delegation
/// targets.
pub fn authenticate(
    envelope: &RequestEnvelope<'_>,
    effective_canister: Option<&Principal>,
    now: u64,
) -> Result<(), AuthError> {
    authenticate_with(envelope, effective_canister, now, &mut verify_signature)
}

/// Like [`authenticate`], except that well-formed Ed25519 signatures are not checked here but
/// pushed onto `deferred` for [`verify_ed25519_batch`]; every other check (sender, expiry,
/// targets, other key types) is made at once. `Ok` therefore means "authentic if the deferred
/// checks pass".
pub fn authenticate_deferred(
    envelope: &RequestEnvelope<'_>,
    effective_canister: Option<&Principal>,
    now: u64,
    deferred: &mut Vec<Ed25519Check>,
) -> Result<(), AuthError> {
    authenticate_with(
        envelope,
        effective_canister,
        now,
        &mut |key, message, signature, field| match Ed25519Check::new(key, message, signature) {
            Some(check) => {
                deferred.push(check);
                Ok(())
            }
            None => verify_signature(key, message, signature, field),
        },
    )
}

/// A signature check: DER key, signed bytes, signature, and the field named in errors.
type SignatureCheck<'a> =
    dyn FnMut(&[u8], &[u8], &[u8], &'static str) -> Result<(), AuthError> + 'a;

/// The checks of [`authenticate`] with `verify` as the signature check, in the order the
/// signatures chain (delegations first, then the request's own signature).
fn authenticate_with(
    envelope: &RequestEnvelope<'_>,
    effective_canister: Option<&Principal>,
    now: u64,
    verify: &mut SignatureCheck<'_>,
) -> Result<(), AuthError> {
    let sender = envelope.content.sender();
    if sender.is_anonymous() {
        if envelope.sender_pubkey.is_some()
            || envelope.sender_sig.is_some()
            || envelope.sender_delegation.is_some()
        {
            return Err(AuthError::AnonymousWithCredentials);
        }
        return Ok(());
    }
    let pubkey = envelope
        .sender_pubkey
        .as_deref()
        .ok_or(AuthError::Missing("sender_pubkey"))?;
    let signature = envelope
        .sender_sig
        .as_deref()
        .ok_or(AuthError::Missing("sender_sig"))?;
    let expected = Principal::self_authenticating(pubkey);
    if expected != sender {
        return Err(AuthError::SenderMismatch {
            expected: expected.to_string(),
            found: sender.to_string(),
        });
    }
    let mut signer_key: &[u8] = pubkey;
    for (index, signed) in envelope.sender_delegation.iter().flatten().enumerate() {
        verify(
            signer_key,
            &signed.signing_bytes(),
            &signed.signature,
            "sender_delegation",
        )?;
        if signed.delegation.expiration < now {
            return Err(AuthError::DelegationExpired {
                index,
                expiration: signed.delegation.expiration,
                now,
            });
        }
        if let (Some(targets), Some(canister)) = (&signed.delegation.targets, effective_canister) {
            if !targets.contains(canister) {
                return Err(AuthError::TargetNotAllowed {
                    index,
                    canister: canister.to_string(),
                });
            }
        }
        signer_key = &signed.delegation.pubkey;
    }
    verify(
        signer_key,
        &envelope.signing_bytes(),
        signature,
        "sender_sig",
    )
}

/// One Ed25519 signature check set aside for a batch.
pub struct Ed25519Check {
    key: [u8; 32],
    message: Vec<u8>,
    signature: [u8; 64],
}

impl Ed25519Check {
    /// The check, when `der_key` is an Ed25519 SubjectPublicKeyInfo and the signature has
    /// Ed25519's length (anything else is verified, and refused, by the single path).
    fn new(der_key: &[u8], message: &[u8], signature: &[u8]) -> Option<Ed25519Check> {
        let key = der_key.strip_prefix(&ED25519_SPKI_PREFIX[..])?;
        Some(Ed25519Check {
            key: key.try_into().ok()?,
            message: message.to_vec(),
            signature: signature.try_into().ok()?,
        })
    }
}

/// Verifies all `checks` at once (ed25519-dalek's batch equation: one multiscalar
/// multiplication with a random linear combination). True means every signature is valid;
/// false means at least one is not, or a key is not a curve point, or a signature's scalar is
/// not canonical, and the caller re-verifies each request on its own with
/// [`authenticate`] to find which. Module docs: "Batch verification".
pub fn verify_ed25519_batch(checks: &[Ed25519Check]) -> bool {
    let mut keys = Vec::with_capacity(checks.len());
    for check in checks {
        match ed25519_dalek::VerifyingKey::from_bytes(&check.key) {
            Ok(key) => keys.push(key),
            Err(_) => return false,
        }
    }
    let signatures: Vec<ed25519_dalek::Signature> = checks
        .iter()
        .map(|c| ed25519_dalek::Signature::from_bytes(&c.signature))
        .collect();
    let messages: Vec<&[u8]> = checks.iter().map(|c| c.message.as_slice()).collect();
    ed25519_dalek::verify_batch(&messages, &signatures, &keys).is_ok()
}

/// Verifies `signature` over `message` by the DER-encoded public key `der_key`; `field` names
/// where the signature came from in errors.
pub fn verify_signature(
    der_key: &[u8],
    message: &[u8],
    signature: &[u8],
    field: &'static str,
) -> Result<(), AuthError> {
    let valid = if der_key.len() == ED25519_SPKI_PREFIX.len() + 32
        && der_key.starts_with(&ED25519_SPKI_PREFIX)
    {
        verify_ed25519(der_key, message, signature)
    } else if der_key.len() == P256_SPKI_PREFIX.len() + EC_POINT_BYTES
        && der_key.starts_with(&P256_SPKI_PREFIX)
    {
        verify_p256(der_key, message, signature)
    } else if der_key.len() == SECP256K1_SPKI_PREFIX.len() + EC_POINT_BYTES
        && der_key.starts_with(&SECP256K1_SPKI_PREFIX)
    {
        verify_secp256k1(&der_key[SECP256K1_SPKI_PREFIX.len()..], message, signature)
    } else {
        return Err(AuthError::UnsupportedKey(field));
    };
    // A key that does not parse (a point off the curve, ...) fails like a bad signature.
    match valid {
        Some(true) => Ok(()),
        _ => Err(AuthError::InvalidSignature(field)),
    }
}

fn verify_ed25519(der_key: &[u8], message: &[u8], signature: &[u8]) -> Option<bool> {
    let key = PKey::public_key_from_der(der_key).ok()?;
    if key.id() != Id::ED25519 || signature.len() != 64 {
        return Some(false);
    }
    let mut verifier = Verifier::new_without_digest(&key).ok()?;
    verifier.verify_oneshot(signature, message).ok()
}

fn verify_p256(der_key: &[u8], message: &[u8], signature: &[u8]) -> Option<bool> {
    if signature.len() != 64 {
        return Some(false);
    }
    let key: EcKey<_> = PKey::public_key_from_der(der_key).ok()?.ec_key().ok()?;
    let r = BigNum::from_slice(&signature[..32]).ok()?;
    let s = BigNum::from_slice(&signature[32..]).ok()?;
    let signature = EcdsaSig::from_private_components(r, s).ok()?;
    let digest = boring::sha::sha256(message);
    signature.verify(&digest, &key).ok()
}

fn verify_secp256k1(point: &[u8], message: &[u8], signature: &[u8]) -> Option<bool> {
    use k256::ecdsa::signature::Verifier as _;
    let key = k256::ecdsa::VerifyingKey::from_sec1_bytes(point).ok()?;
    let signature = k256::ecdsa::Signature::from_slice(signature).ok()?;
    Some(key.verify(message, &signature).is_ok())
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;
    use crate::http::testing::TestKey;
    use icn_codecs::ic::{
        decode_request_envelope, CallContent, Delegation, IcLimits, RequestContent, RequestId,
        SignedDelegation,
    };

    const NOW: u64 = 1_700_000_000_000_000_000;

    fn canister() -> Principal {
        Principal::from_canister_index(7)
    }

    /// Builds, signs and re-decodes an envelope (so hashes are the server's, not ours).
    fn envelope(
        sender_key: Option<&TestKey>,
        chain: &[(&TestKey, u64, Option<Vec<Principal>>)],
        sign_with: Option<&TestKey>,
    ) -> Vec<u8> {
        let sender = sender_key.map_or(Principal::ANONYMOUS, |k| {
            Principal::self_authenticating(&k.public_der())
        });
        let content = RequestContent::Call(CallContent {
            canister_id: canister(),
            method_name: Cow::Borrowed("inc"),
            arg: Cow::Borrowed(b"DIDL\x00\x00"),
            sender,
            nonce: None,
            ingress_expiry: NOW + 60_000_000_000,
        });
        let mut env = RequestEnvelope {
            content,
            request_id: RequestId([0; 32]),
            sender_pubkey: sender_key.map(|k| Cow::Owned(k.public_der())),
            sender_sig: None,
            sender_delegation: None,
        };
        // The request id and delegation hashes come from decoding the unsigned encoding.
        let mut unsigned = Vec::new();
        env.encode(&mut unsigned);
        env.request_id = decode_request_envelope(&unsigned, &IcLimits::default())
            .unwrap()
            .request_id;
        let mut previous = sender_key;
        let mut delegations = Vec::new();
        for (key, expiration, targets) in chain {
            let mut delegation = Delegation {
                pubkey: Cow::Owned(key.public_der()),
                expiration: *expiration,
                targets: targets.clone(),
                hash: [0; 32],
            };
            delegation.hash =
                icn_codecs::ic::hash_value(&delegation.to_value(), "delegation").unwrap();
            let mut signed = SignedDelegation {
                delegation,
                signature: Cow::Owned(Vec::new()),
            };
            signed.signature = Cow::Owned(previous.unwrap().sign(&signed.signing_bytes()));
            delegations.push(signed);
            previous = Some(key);
        }
        if !chain.is_empty() {
            env.sender_delegation = Some(delegations);
        }
        if let Some(signer) = sign_with {
            env.sender_sig = Some(Cow::Owned(signer.sign(&env.signing_bytes())));
        }
        let mut out = Vec::new();
        env.encode(&mut out);
        out
    }

    fn check(body: &[u8]) -> Result<(), AuthError> {
        let env = decode_request_envelope(body, &IcLimits::default()).unwrap();
        authenticate(&env, Some(&canister()), NOW)
    }

    #[test]
    fn each_key_type_verifies_and_a_wrong_signer_is_refused() {
        for key in [TestKey::ed25519(), TestKey::p256(), TestKey::secp256k1(3)] {
            assert_eq!(check(&envelope(Some(&key), &[], Some(&key))), Ok(()));
            let other = TestKey::ed25519();
            assert_eq!(
                check(&envelope(Some(&key), &[], Some(&other))),
                Err(AuthError::InvalidSignature("sender_sig"))
            );
        }
    }

    #[test]
    fn anonymous_needs_no_signature_and_must_carry_none() {
        assert_eq!(check(&envelope(None, &[], None)), Ok(()));
        let key = TestKey::ed25519();
        let body = envelope(Some(&key), &[], Some(&key));
        let mut env = decode_request_envelope(&body, &IcLimits::default()).unwrap();
        if let RequestContent::Call(c) = &mut env.content {
            c.sender = Principal::ANONYMOUS;
        }
        assert_eq!(
            authenticate(&env, Some(&canister()), NOW),
            Err(AuthError::AnonymousWithCredentials)
        );
    }

    #[test]
    fn sender_must_be_the_keys_self_authenticating_id() {
        let key = TestKey::ed25519();
        let body = envelope(Some(&key), &[], Some(&key));
        let mut env = decode_request_envelope(&body, &IcLimits::default()).unwrap();
        env.sender_pubkey = Some(Cow::Owned(TestKey::ed25519().public_der()));
        assert!(matches!(
            authenticate(&env, Some(&canister()), NOW),
            Err(AuthError::SenderMismatch { .. })
        ));
        env.sender_pubkey = None;
        assert_eq!(
            authenticate(&env, Some(&canister()), NOW),
            Err(AuthError::Missing("sender_pubkey"))
        );
    }

    #[test]
    fn delegation_chains_are_checked_link_by_link() {
        let root = TestKey::secp256k1(9);
        let middle = TestKey::p256();
        let session = TestKey::ed25519();
        let later = NOW + 1_000_000_000;
        let chain = [
            (&middle, later, None),
            (&session, later, Some(vec![canister()])),
        ];
        assert_eq!(
            check(&envelope(Some(&root), &chain, Some(&session))),
            Ok(())
        );
        // Signed by a key that is not the chain's last.
        assert_eq!(
            check(&envelope(Some(&root), &chain, Some(&middle))),
            Err(AuthError::InvalidSignature("sender_sig"))
        );
        // Expired.
        let expired = [(&session, NOW - 1, None)];
        assert!(matches!(
            check(&envelope(Some(&root), &expired, Some(&session))),
            Err(AuthError::DelegationExpired { index: 0, .. })
        ));
        // Targets that exclude the effective canister.
        let elsewhere = [(
            &session,
            later,
            Some(vec![Principal::from_canister_index(8)]),
        )];
        assert!(matches!(
            check(&envelope(Some(&root), &elsewhere, Some(&session))),
            Err(AuthError::TargetNotAllowed { index: 0, .. })
        ));
        // A link signed by the wrong key.
        let body = envelope(Some(&root), &[(&session, later, None)], Some(&session));
        let mut env = decode_request_envelope(&body, &IcLimits::default()).unwrap();
        env.sender_delegation.as_mut().unwrap()[0].signature =
            Cow::Owned(middle.sign(&env.sender_delegation.as_ref().unwrap()[0].signing_bytes()));
        assert_eq!(
            authenticate(&env, Some(&canister()), NOW),
            Err(AuthError::InvalidSignature("sender_delegation"))
        );
    }

    /// The deferred path: Ok plus its Ed25519 checks, which the batch equation must accept
    /// exactly when every signature is valid.
    fn deferred(body: &[u8]) -> (Result<(), AuthError>, Vec<Ed25519Check>) {
        let env = decode_request_envelope(body, &IcLimits::default()).unwrap();
        let mut checks = Vec::new();
        let result = authenticate_deferred(&env, Some(&canister()), NOW, &mut checks);
        (result, checks)
    }

    #[test]
    fn deferred_checks_batch_to_the_single_verdict() {
        let root = TestKey::ed25519();
        let middle = TestKey::p256();
        let session = TestKey::ed25519();
        let later = NOW + 1_000_000_000;
        // Ed25519 root → P-256 → Ed25519 session: two Ed25519 signatures set aside, the
        // P-256 link checked at once.
        let chain = [(&middle, later, None), (&session, later, None)];
        let good = envelope(Some(&root), &chain, Some(&session));
        let (result, checks) = deferred(&good);
        assert_eq!((result, checks.len()), (Ok(()), 2));
        let plain = deferred(&envelope(Some(&session), &[], Some(&session))).1;
        let mut all: Vec<Ed25519Check> = checks.into_iter().chain(plain).collect();
        assert!(verify_ed25519_batch(&all));
        // The wrong signer of the request itself: deferred says Ok, the batch says no, and
        // so does a batch that mixes it with valid ones.
        let (result, wrong) = deferred(&envelope(Some(&root), &chain, Some(&middle)));
        assert_eq!((result, wrong.len()), (Ok(()), 2));
        assert!(!verify_ed25519_batch(&wrong));
        all.extend(wrong);
        assert!(!verify_ed25519_batch(&all));
        // A key that is not a curve point fails the batch, not the process.
        let mut bogus = deferred(&envelope(Some(&session), &[], Some(&session))).1;
        bogus[0].key = [0xff; 32];
        bogus.extend(deferred(&envelope(Some(&root), &[], Some(&root))).1);
        assert!(!verify_ed25519_batch(&bogus));
        // Non-Ed25519 failures are still refused on the deferred path.
        let expired = [(&session, NOW - 1, None)];
        assert!(matches!(
            deferred(&envelope(Some(&root), &expired, Some(&session))).0,
            Err(AuthError::DelegationExpired { index: 0, .. })
        ));
    }

    #[test]
    fn unknown_key_types_and_garbage_keys_are_refused_without_panicking() {
        assert_eq!(
            verify_signature(b"\x30\x03\x02\x01\x00", b"m", &[0; 64], "sender_sig"),
            Err(AuthError::UnsupportedKey("sender_sig"))
        );
        let mut bad_point = SECP256K1_SPKI_PREFIX.to_vec();
        bad_point.extend_from_slice(&[4; 65]);
        assert_eq!(
            verify_signature(&bad_point, b"m", &[1; 64], "sender_sig"),
            Err(AuthError::InvalidSignature("sender_sig"))
        );
        let mut bad_p256 = P256_SPKI_PREFIX.to_vec();
        bad_p256.extend_from_slice(&[4; 65]);
        assert_eq!(
            verify_signature(&bad_p256, b"m", &[1; 64], "sender_sig"),
            Err(AuthError::InvalidSignature("sender_sig"))
        );
        let ed = TestKey::ed25519().public_der();
        assert_eq!(
            verify_signature(&ed, b"m", &[1; 10], "sender_sig"),
            Err(AuthError::InvalidSignature("sender_sig"))
        );
    }

    #[test]
    fn expiry_window_matches_the_interface() {
        let window = 300_000_000_000;
        let drift = 60_000_000_000;
        assert!(check_ingress_expiry(NOW, NOW, window, drift).is_ok());
        assert!(check_ingress_expiry(NOW + window + drift, NOW, window, drift).is_ok());
        let late = check_ingress_expiry(NOW + window + drift + 1, NOW, window, drift);
        assert!(late.unwrap_err().starts_with(
            "Invalid request expiry: Specified ingress_expiry not within expected range"
        ));
        assert!(check_ingress_expiry(NOW - drift - 1, NOW, window, drift).is_err());
    }
}
