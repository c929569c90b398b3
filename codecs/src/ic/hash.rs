//! The representation-independent hash: the IC's request id, and what every signature in the
//! public interface covers.
//!
//! The hash is defined on values, not on bytes, so that two encodings of one request (map
//! entries in another order, integers in a longer form, a self-describe tag or not) have one id:
//!
//! - a nat: SHA-256 of its unsigned LEB128 encoding; an int: of its signed LEB128 encoding;
//! - a blob: SHA-256 of its bytes; a text: of its UTF-8 bytes;
//! - an array: SHA-256 of the concatenated hashes of its elements;
//! - a map (text keys only): SHA-256 of the concatenation, sorted bytewise, of
//!   `hash(key) ‖ hash(value)` for each entry.
//!
//! Anything else (floats, bools, null, tags, non-text keys) has no hash and is an error: such a
//! request has no id, so it cannot be answered.

use sha2::{Digest, Sha256};

use super::cbor::Value;
use super::error::IcDecodeError;

/// A SHA-256 digest.
pub type Hash = [u8; 32];

/// The id of a request: the representation-independent hash of its content map.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId(pub Hash);

impl RequestId {
    /// The bytes a sender signs: `"\x0Aic-request" ‖ request_id`.
    pub fn signing_bytes(&self) -> Vec<u8> {
        [DOMAIN_IC_REQUEST, &self.0[..]].concat()
    }
}

impl std::fmt::Debug for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RequestId(")?;
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        write!(f, ")")
    }
}

/// Domain separator for a sender's signature over a request id (length byte 10).
pub const DOMAIN_IC_REQUEST: &[u8] = b"\x0Aic-request";
/// Domain separator for a signature over a delegation map (length byte 26).
pub const DOMAIN_IC_REQUEST_AUTH_DELEGATION: &[u8] = b"\x1Aic-request-auth-delegation";
/// Domain separator for a node's signature over a query response (length byte 11).
pub const DOMAIN_IC_RESPONSE: &[u8] = b"\x0Bic-response";
/// Domain separator for the subnet's signature over a certificate's root hash (length byte 13).
pub const DOMAIN_IC_STATE_ROOT: &[u8] = b"\x0Dic-state-root";

/// Appends the unsigned LEB128 encoding of `n`.
pub fn leb128(mut n: u64, out: &mut Vec<u8>) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Appends the signed LEB128 encoding of `n`.
pub fn sleb128(mut n: i128, out: &mut Vec<u8>) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        let done = (n == 0 && byte & 0x40 == 0) || (n == -1 && byte & 0x40 != 0);
        if done {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

pub fn hash_bytes(bytes: &[u8]) -> Hash {
    Sha256::digest(bytes).into()
}

pub fn hash_nat(n: u64) -> Hash {
    let mut encoded = Vec::with_capacity(10);
    leb128(n, &mut encoded);
    hash_bytes(&encoded)
}

/// The hash of a value; `field` names it in an error.
pub fn hash_value(value: &Value<'_>, field: &'static str) -> Result<Hash, IcDecodeError> {
    match value {
        Value::Nat(n) => Ok(hash_nat(*n)),
        Value::NegInt(n) => {
            let mut encoded = Vec::with_capacity(10);
            sleb128(*n, &mut encoded);
            Ok(hash_bytes(&encoded))
        }
        Value::Bytes(bytes) => Ok(hash_bytes(bytes)),
        Value::Text(text) => Ok(hash_bytes(text.as_bytes())),
        Value::Array(items) => {
            let mut hasher = Sha256::new();
            for item in items {
                hasher.update(hash_value(item, field)?);
            }
            Ok(hasher.finalize().into())
        }
        Value::Map(entries) => {
            let mut pairs = Vec::with_capacity(entries.len());
            for (key, value) in entries {
                let Value::Text(key) = key else {
                    return Err(IcDecodeError::NotHashable {
                        field,
                        found: "non-text map key",
                    });
                };
                pairs.push((hash_bytes(key.as_bytes()), hash_value(value, field)?));
            }
            Ok(hash_of_pairs(pairs))
        }
        other => Err(IcDecodeError::NotHashable {
            field,
            found: other.type_name(),
        }),
    }
}

/// The hash of a map given as (key hash, value hash) pairs in any order.
pub fn hash_of_pairs(mut pairs: Vec<(Hash, Hash)>) -> Hash {
    pairs.sort_unstable();
    let mut hasher = Sha256::new();
    for (key, value) in &pairs {
        hasher.update(key);
        hasher.update(value);
    }
    hasher.finalize().into()
}

/// The hash of a map that we build ourselves from text keys and value hashes (responses,
/// delegations), without first building a [`Value`].
pub fn hash_of_fields(fields: &[(&str, Hash)]) -> Hash {
    hash_of_pairs(
        fields
            .iter()
            .map(|(key, value)| (hash_bytes(key.as_bytes()), *value))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::super::cbor::{blob, entry, text};
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The example in the interface specification's "Request ids" section.
    #[test]
    fn spec_request_id_example() {
        let content = Value::Map(vec![
            entry("request_type", text("call")),
            entry("sender", blob(&[0x04])),
            entry("ingress_expiry", Value::Nat(1_685_570_400_000_000_000)),
            entry("canister_id", blob(&[0, 0, 0, 0, 0, 0, 0x04, 0xD2])),
            entry("method_name", text("hello")),
            entry("arg", blob(b"DIDL\x00\xFD*")),
        ]);
        assert_eq!(
            hex(&hash_value(&content, "content").unwrap()),
            "1d1091364d6bb8a6c16b203ee75467d59ead468f523eb058880ae8ec80e2b101"
        );
    }

    #[test]
    fn leb128_encodings() {
        let cases: &[(u64, &[u8])] = &[
            (0, &[0]),
            (127, &[0x7f]),
            (128, &[0x80, 0x01]),
            (624_485, &[0xe5, 0x8e, 0x26]),
        ];
        for (n, expected) in cases {
            let mut out = Vec::new();
            leb128(*n, &mut out);
            assert_eq!(&out, expected);
        }
        let cases: &[(i128, &[u8])] = &[
            (0, &[0]),
            (-1, &[0x7f]),
            (63, &[0x3f]),
            (64, &[0xc0, 0x00]),
            (-64, &[0x40]),
            (-65, &[0xbf, 0x7f]),
            (-123_456, &[0xc0, 0xbb, 0x78]),
        ];
        for (n, expected) in cases {
            let mut out = Vec::new();
            sleb128(*n, &mut out);
            assert_eq!(&out, expected, "{n}");
        }
    }

    #[test]
    fn map_hash_is_independent_of_entry_order() {
        let a = Value::Map(vec![entry("x", Value::Nat(1)), entry("y", text("z"))]);
        let b = Value::Map(vec![entry("y", text("z")), entry("x", Value::Nat(1))]);
        assert_eq!(hash_value(&a, "m"), hash_value(&b, "m"));
        assert_eq!(
            hash_value(&a, "m").unwrap(),
            hash_of_fields(&[("y", hash_bytes(b"z")), ("x", hash_nat(1))])
        );
        assert!(matches!(
            hash_value(&Value::Map(vec![entry("f", Value::Float(1.0))]), "m"),
            Err(IcDecodeError::NotHashable { found: "float", .. })
        ));
        assert!(matches!(
            hash_value(&Value::Map(vec![(Value::Nat(1), Value::Nat(1))]), "m"),
            Err(IcDecodeError::NotHashable { .. })
        ));
    }
}
