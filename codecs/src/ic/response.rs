//! Response bodies of the public interface, and the bytes a node signs for a query response.
//!
//! Every body is a CBOR map behind the self-describe tag, as the IC sends them. The encoders
//! take borrowed parts and append to a caller's buffer, so a server can reuse one buffer per
//! connection.

use super::cbor::{blob, encode_tagged, entry, text, Value};
use super::hash::{hash_bytes, hash_nat, hash_of_fields, Hash, RequestId, DOMAIN_IC_RESPONSE};
use super::principal::Principal;

/// `GET /api/v2/status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusResponse<'a> {
    /// The interface specification version implemented, e.g. "0.18.0".
    pub ic_api_version: &'a str,
    /// The DER-encoded root public key (only on test networks: agents must not trust it from
    /// the network on mainnet, but `fetch_root_key` reads it from here).
    pub root_key: Option<&'a [u8]>,
    pub impl_version: Option<&'a str>,
    pub impl_hash: Option<&'a str>,
    /// "healthy", "starting", ... (agents wait for "healthy").
    pub replica_health_status: Option<&'a str>,
    pub certified_height: Option<u64>,
}

pub fn encode_status_response(status: &StatusResponse<'_>, out: &mut Vec<u8>) {
    let mut fields = vec![entry("ic_api_version", text(status.ic_api_version))];
    if let Some(key) = status.root_key {
        fields.push(entry("root_key", blob(key)));
    }
    if let Some(version) = status.impl_version {
        fields.push(entry("impl_version", text(version)));
    }
    if let Some(hash) = status.impl_hash {
        fields.push(entry("impl_hash", text(hash)));
    }
    if let Some(health) = status.replica_health_status {
        fields.push(entry("replica_health_status", text(health)));
    }
    if let Some(height) = status.certified_height {
        fields.push(entry("certified_height", Value::Nat(height)));
    }
    encode_tagged(&Value::Map(fields), out);
}

/// A reject: the interface's reject code (1 = system fatal ... 6 = canister reject), its
/// message, and the optional IC error code ("IC0503", ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reject<'a> {
    pub reject_code: u64,
    pub reject_message: &'a str,
    pub error_code: Option<&'a str>,
}

impl<'a> Reject<'a> {
    fn push_fields(&self, fields: &mut Vec<(Value<'a>, Value<'a>)>) {
        fields.push(entry("reject_code", Value::Nat(self.reject_code)));
        fields.push(entry("reject_message", text(self.reject_message)));
        if let Some(code) = self.error_code {
            fields.push(entry("error_code", text(code)));
        }
    }
}

/// The outcome of a query, which the response carries and the node signs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueryOutcome<'a> {
    /// The canister replied with this Candid argument.
    Replied {
        arg: &'a [u8],
    },
    Rejected(Reject<'a>),
}

/// One node's signature over a query response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeSignature<'a> {
    /// Nanoseconds since 1970 when the node signed.
    pub timestamp: u64,
    pub signature: &'a [u8],
    /// The signing node's id.
    pub identity: Principal,
}

/// The bytes a node signs for a query response:
/// `"\x0Bic-response" ‖ hash_of_map({status, reply | reject_code, reject_message, error_code?,
/// timestamp, request_id})`.
pub fn query_response_signing_bytes(
    outcome: &QueryOutcome<'_>,
    timestamp: u64,
    request_id: &RequestId,
) -> Vec<u8> {
    let mut fields: Vec<(&str, Hash)> = Vec::with_capacity(6);
    match outcome {
        QueryOutcome::Replied { arg } => {
            fields.push(("status", hash_bytes(b"replied")));
            fields.push(("reply", hash_of_fields(&[("arg", hash_bytes(arg))])));
        }
        QueryOutcome::Rejected(reject) => {
            fields.push(("status", hash_bytes(b"rejected")));
            fields.push(("reject_code", hash_nat(reject.reject_code)));
            fields.push((
                "reject_message",
                hash_bytes(reject.reject_message.as_bytes()),
            ));
            if let Some(code) = reject.error_code {
                fields.push(("error_code", hash_bytes(code.as_bytes())));
            }
        }
    }
    fields.push(("timestamp", hash_nat(timestamp)));
    fields.push(("request_id", hash_bytes(&request_id.0)));
    [DOMAIN_IC_RESPONSE, &hash_of_fields(&fields)[..]].concat()
}

/// `POST .../query`: `{status: "replied", reply: {arg}, signatures}` or
/// `{status: "rejected", reject_code, reject_message, error_code?, signatures}`.
pub fn encode_query_response(
    outcome: &QueryOutcome<'_>,
    signatures: &[NodeSignature<'_>],
    out: &mut Vec<u8>,
) {
    let mut fields = Vec::with_capacity(5);
    match outcome {
        QueryOutcome::Replied { arg } => {
            fields.push(entry("status", text("replied")));
            fields.push(entry("reply", Value::Map(vec![entry("arg", blob(arg))])));
        }
        QueryOutcome::Rejected(reject) => {
            fields.push(entry("status", text("rejected")));
            reject.push_fields(&mut fields);
        }
    }
    let signatures = signatures
        .iter()
        .map(|s| {
            Value::Map(vec![
                entry("timestamp", Value::Nat(s.timestamp)),
                entry("signature", blob(s.signature)),
                entry("identity", blob(s.identity.as_slice())),
            ])
        })
        .collect();
    fields.push(entry("signatures", Value::Array(signatures)));
    encode_tagged(&Value::Map(fields), out);
}

/// The synchronous call endpoints (v3, v4) answer 200 with one of these.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncCallResponse<'a> {
    /// The call executed; the certificate holds its request status.
    Replied { certificate: &'a [u8] },
    /// The call was refused before it reached consensus (e.g. by the canister's inspect hook).
    NonReplicatedRejection(Reject<'a>),
}

pub fn encode_sync_call_response(response: &SyncCallResponse<'_>, out: &mut Vec<u8>) {
    let mut fields = Vec::with_capacity(4);
    match response {
        SyncCallResponse::Replied { certificate } => {
            fields.push(entry("status", text("replied")));
            fields.push(entry("certificate", blob(certificate)));
        }
        SyncCallResponse::NonReplicatedRejection(reject) => {
            fields.push(entry("status", text("non_replicated_rejection")));
            reject.push_fields(&mut fields);
        }
    }
    encode_tagged(&Value::Map(fields), out);
}

/// The asynchronous call endpoint (v2) refuses a call before consensus with a bare reject map
/// `{reject_code, reject_message, error_code?}`.
pub fn encode_reject_response(reject: &Reject<'_>, out: &mut Vec<u8>) {
    let mut fields = Vec::with_capacity(3);
    reject.push_fields(&mut fields);
    encode_tagged(&Value::Map(fields), out);
}

/// `POST .../read_state`: `{certificate}`, the certificate already encoded.
pub fn encode_read_state_response(certificate: &[u8], out: &mut Vec<u8>) {
    encode_tagged(
        &Value::Map(vec![entry("certificate", blob(certificate))]),
        out,
    );
}

#[cfg(test)]
mod tests {
    use super::super::cbor::decode_value;
    use super::super::hash::hash_value;
    use super::*;

    fn decode(bytes: &[u8]) -> Value<'_> {
        decode_value(bytes, 8).unwrap()
    }

    #[test]
    fn status_and_read_state_bodies() {
        let mut out = Vec::new();
        encode_status_response(
            &StatusResponse {
                ic_api_version: "0.18.0",
                root_key: Some(b"der key"),
                impl_version: Some("icn 0.1.0"),
                impl_hash: None,
                replica_health_status: Some("healthy"),
                certified_height: Some(12),
            },
            &mut out,
        );
        assert_eq!(&out[..3], &[0xd9, 0xd9, 0xf7]);
        let value = decode(&out);
        assert_eq!(value.get("ic_api_version"), Some(&text("0.18.0")));
        assert_eq!(value.get("root_key"), Some(&blob(b"der key")));
        assert_eq!(value.get("impl_hash"), None);
        out.clear();
        encode_read_state_response(b"cert", &mut out);
        assert_eq!(decode(&out).get("certificate"), Some(&blob(b"cert")));
    }

    /// The signed bytes equal the hash of the response map the spec describes, built as a
    /// generic value and hashed by the generic hasher.
    #[test]
    fn query_signing_bytes_match_the_generic_hash() {
        let request_id = RequestId([7; 32]);
        let reject = Reject {
            reject_code: 3,
            reject_message: "no such method",
            error_code: Some("IC0536"),
        };
        let cases = [
            (
                QueryOutcome::Replied {
                    arg: b"DIDL\x00\x00",
                },
                Value::Map(vec![
                    entry("status", text("replied")),
                    entry(
                        "reply",
                        Value::Map(vec![entry("arg", blob(b"DIDL\x00\x00"))]),
                    ),
                    entry("timestamp", Value::Nat(99)),
                    entry("request_id", blob(&[7; 32])),
                ]),
            ),
            (
                QueryOutcome::Rejected(reject),
                Value::Map(vec![
                    entry("status", text("rejected")),
                    entry("reject_code", Value::Nat(3)),
                    entry("reject_message", text("no such method")),
                    entry("error_code", text("IC0536")),
                    entry("timestamp", Value::Nat(99)),
                    entry("request_id", blob(&[7; 32])),
                ]),
            ),
        ];
        for (outcome, map) in cases {
            let signed = query_response_signing_bytes(&outcome, 99, &request_id);
            assert_eq!(&signed[..12], b"\x0Bic-response");
            assert_eq!(&signed[12..], &hash_value(&map, "response").unwrap());
            let mut out = Vec::new();
            let signature = NodeSignature {
                timestamp: 99,
                signature: &[1; 64],
                identity: Principal::self_authenticating(b"node key"),
            };
            encode_query_response(&outcome, &[signature], &mut out);
            let body = decode(&out);
            let Some(Value::Array(signatures)) = body.get("signatures") else {
                panic!("signatures")
            };
            assert_eq!(signatures[0].get("timestamp"), Some(&Value::Nat(99)));
            // The body's fields other than signatures are the signed map's.
            for key in [
                "status",
                "reply",
                "reject_code",
                "reject_message",
                "error_code",
            ] {
                assert_eq!(body.get(key), map.get(key), "{key}");
            }
        }
    }

    #[test]
    fn call_responses() {
        let reject = Reject {
            reject_code: 4,
            reject_message: "refused",
            error_code: None,
        };
        let mut out = Vec::new();
        encode_sync_call_response(&SyncCallResponse::NonReplicatedRejection(reject), &mut out);
        let body = decode(&out);
        assert_eq!(body.get("status"), Some(&text("non_replicated_rejection")));
        assert_eq!(body.get("reject_code"), Some(&Value::Nat(4)));
        assert_eq!(body.get("error_code"), None);
        out.clear();
        encode_sync_call_response(&SyncCallResponse::Replied { certificate: b"c" }, &mut out);
        assert_eq!(decode(&out).get("certificate"), Some(&blob(b"c")));
        out.clear();
        encode_reject_response(&reject, &mut out);
        assert_eq!(decode(&out).get("status"), None);
        assert_eq!(decode(&out).get("reject_message"), Some(&text("refused")));
    }
}
