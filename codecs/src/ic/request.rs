//! Request envelopes: the CBOR bodies agents POST to `/call`, `/query` and `/read_state`.
//!
//! ```text
//! { content: { request_type, sender, ingress_expiry, nonce?, ... },
//!   sender_pubkey?, sender_sig?, sender_delegation? }
//! ```
//!
//! A body is decoded in two steps: into a generic [`Value`] (bounded depth, no allocation beyond
//! the input), then into a typed [`RequestEnvelope`]. The request id is the hash of the content
//! map as received, so fields we do not know still count, exactly as the agent computed it.
//! Unknown fields are otherwise ignored (the interface lets newer agents add fields); a
//! duplicate field is an error because it would make the request ambiguous.
//!
//! Signatures are not verified here (that needs a crypto library); this module produces the
//! exact bytes each signature must cover: [`RequestEnvelope::signing_bytes`] for the sender's
//! signature and [`SignedDelegation::signing_bytes`] for each delegation.

use std::borrow::Cow;

use super::cbor::{blob, decode_value_bounded, encode_tagged, entry, text, Value};
use super::error::IcDecodeError;
use super::hash::{hash_value, Hash, RequestId, DOMAIN_IC_REQUEST_AUTH_DELEGATION};
use super::limits::IcLimits;
use super::principal::Principal;

/// One decoded request body.
#[derive(Clone, Debug, PartialEq)]
pub struct RequestEnvelope<'a> {
    pub content: RequestContent<'a>,
    /// The representation-independent hash of `content` as received.
    pub request_id: RequestId,
    /// DER-encoded public key of the sender (absent for the anonymous sender).
    pub sender_pubkey: Option<Cow<'a, [u8]>>,
    /// Signature over [`RequestEnvelope::signing_bytes`] by `sender_pubkey`, or by the last
    /// delegation's key when there are delegations.
    pub sender_sig: Option<Cow<'a, [u8]>>,
    /// A chain of delegations from `sender_pubkey` to the key that signed; `None` when absent.
    pub sender_delegation: Option<Vec<SignedDelegation<'a>>>,
}

/// The three request kinds, by `request_type`.
#[derive(Clone, Debug, PartialEq)]
pub enum RequestContent<'a> {
    Call(CallContent<'a>),
    Query(CallContent<'a>),
    ReadState(ReadStateContent<'a>),
}

/// The content of a call or a query.
#[derive(Clone, Debug, PartialEq)]
pub struct CallContent<'a> {
    pub canister_id: Principal,
    pub method_name: Cow<'a, str>,
    pub arg: Cow<'a, [u8]>,
    pub sender: Principal,
    pub nonce: Option<Cow<'a, [u8]>>,
    /// Nanoseconds since 1970 after which the request must not be processed.
    pub ingress_expiry: u64,
}

/// The content of a read_state request.
#[derive(Clone, Debug, PartialEq)]
pub struct ReadStateContent<'a> {
    /// Paths into the state tree, each a sequence of labels.
    pub paths: Vec<Vec<Cow<'a, [u8]>>>,
    pub sender: Principal,
    pub nonce: Option<Cow<'a, [u8]>>,
    pub ingress_expiry: u64,
}

/// One link of a delegation chain and the signature of the previous key over it.
#[derive(Clone, Debug, PartialEq)]
pub struct SignedDelegation<'a> {
    pub delegation: Delegation<'a>,
    pub signature: Cow<'a, [u8]>,
}

/// A delegation from one key to `pubkey`, valid until `expiration` (nanoseconds since 1970),
/// optionally only for requests to the canisters in `targets`.
#[derive(Clone, Debug, PartialEq)]
pub struct Delegation<'a> {
    pub pubkey: Cow<'a, [u8]>,
    pub expiration: u64,
    pub targets: Option<Vec<Principal>>,
    /// The hash of the delegation map as received (unknown fields included), which the
    /// signature covers.
    pub hash: Hash,
}

impl RequestContent<'_> {
    pub fn sender(&self) -> Principal {
        match self {
            RequestContent::Call(c) | RequestContent::Query(c) => c.sender,
            RequestContent::ReadState(r) => r.sender,
        }
    }

    pub fn ingress_expiry(&self) -> u64 {
        match self {
            RequestContent::Call(c) | RequestContent::Query(c) => c.ingress_expiry,
            RequestContent::ReadState(r) => r.ingress_expiry,
        }
    }

    pub fn request_type(&self) -> &'static str {
        match self {
            RequestContent::Call(_) => "call",
            RequestContent::Query(_) => "query",
            RequestContent::ReadState(_) => "read_state",
        }
    }

    /// The content as a CBOR value with exactly the known fields (what an agent sends).
    pub fn to_value(&self) -> Value<'_> {
        let mut fields = vec![entry("request_type", text(self.request_type()))];
        let (sender, nonce, expiry) = match self {
            RequestContent::Call(c) | RequestContent::Query(c) => {
                fields.push(entry("canister_id", blob(c.canister_id.as_slice())));
                fields.push(entry("method_name", text(&c.method_name)));
                fields.push(entry("arg", blob(&c.arg)));
                (&c.sender, &c.nonce, c.ingress_expiry)
            }
            RequestContent::ReadState(r) => {
                let paths = r
                    .paths
                    .iter()
                    .map(|path| Value::Array(path.iter().map(|label| blob(label)).collect()))
                    .collect();
                fields.push(entry("paths", Value::Array(paths)));
                (&r.sender, &r.nonce, r.ingress_expiry)
            }
        };
        fields.push(entry("sender", blob(sender.as_slice())));
        if let Some(nonce) = nonce {
            fields.push(entry("nonce", blob(nonce)));
        }
        fields.push(entry("ingress_expiry", Value::Nat(expiry)));
        Value::Map(fields)
    }
}

impl RequestEnvelope<'_> {
    /// The bytes `sender_sig` must sign: `"\x0Aic-request" ‖ request_id`.
    pub fn signing_bytes(&self) -> Vec<u8> {
        self.request_id.signing_bytes()
    }

    /// Encodes the envelope as an agent would (self-describe tag, known fields only). Used by
    /// tests, benchmarks and load generators; a decoded envelope whose content had unknown
    /// fields re-encodes to a different request id.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut fields = vec![entry("content", self.content.to_value())];
        if let Some(key) = &self.sender_pubkey {
            fields.push(entry("sender_pubkey", blob(key)));
        }
        if let Some(sig) = &self.sender_sig {
            fields.push(entry("sender_sig", blob(sig)));
        }
        if let Some(delegations) = &self.sender_delegation {
            let chain = delegations
                .iter()
                .map(|signed| {
                    Value::Map(vec![
                        entry("delegation", signed.delegation.to_value()),
                        entry("signature", blob(&signed.signature)),
                    ])
                })
                .collect();
            fields.push(entry("sender_delegation", Value::Array(chain)));
        }
        encode_tagged(&Value::Map(fields), out);
    }
}

impl Delegation<'_> {
    /// The delegation map with exactly the known fields.
    pub fn to_value(&self) -> Value<'_> {
        let mut fields = vec![
            entry("pubkey", blob(&self.pubkey)),
            entry("expiration", Value::Nat(self.expiration)),
        ];
        if let Some(targets) = &self.targets {
            let targets = targets.iter().map(|t| blob(t.as_slice())).collect();
            fields.push(entry("targets", Value::Array(targets)));
        }
        Value::Map(fields)
    }
}

impl SignedDelegation<'_> {
    /// The bytes `signature` must sign: `"\x1Aic-request-auth-delegation" ‖ hash(delegation)`.
    pub fn signing_bytes(&self) -> Vec<u8> {
        [DOMAIN_IC_REQUEST_AUTH_DELEGATION, &self.delegation.hash[..]].concat()
    }
}

/// Decodes a request body (with or without the self-describe tag) and computes its request id.
pub fn decode_request_envelope<'a>(
    body: &'a [u8],
    limits: &IcLimits,
) -> Result<RequestEnvelope<'a>, IcDecodeError> {
    check("body_bytes_max", body.len(), limits.body_bytes_max)?;
    let value = decode_value_bounded(body, limits.cbor_depth_max, limits.cbor_items_max)?;
    envelope_from_value(value, limits)
}

/// Reads a typed envelope from an already-decoded body.
pub fn envelope_from_value<'a>(
    value: Value<'a>,
    limits: &IcLimits,
) -> Result<RequestEnvelope<'a>, IcDecodeError> {
    let mut fields = Fields::new(value, "envelope", &ENVELOPE_FIELDS)?;
    let content = fields
        .take("content")?
        .ok_or(IcDecodeError::MissingField { field: "content" })?;
    let request_id = RequestId(hash_value(&content, "content")?);
    let content = content_from_value(content, limits)?;
    let sender_pubkey = fields
        .take("sender_pubkey")?
        .map(|v| bytes(v, "sender_pubkey", limits.public_key_bytes_max))
        .transpose()?;
    let sender_sig = fields
        .take("sender_sig")?
        .map(|v| bytes(v, "sender_sig", limits.signature_bytes_max))
        .transpose()?;
    let sender_delegation = fields
        .take("sender_delegation")?
        .map(|v| delegations(v, limits))
        .transpose()?;
    Ok(RequestEnvelope {
        content,
        request_id,
        sender_pubkey,
        sender_sig,
        sender_delegation,
    })
}

const ENVELOPE_FIELDS: [&str; 4] = [
    "content",
    "sender_pubkey",
    "sender_sig",
    "sender_delegation",
];
const CONTENT_FIELDS: [&str; 8] = [
    "request_type",
    "canister_id",
    "method_name",
    "arg",
    "sender",
    "nonce",
    "ingress_expiry",
    "paths",
];
const SIGNED_DELEGATION_FIELDS: [&str; 2] = ["delegation", "signature"];
const DELEGATION_FIELDS: [&str; 3] = ["pubkey", "expiration", "targets"];

fn content_from_value<'a>(
    value: Value<'a>,
    limits: &IcLimits,
) -> Result<RequestContent<'a>, IcDecodeError> {
    let mut fields = Fields::new(value, "content", &CONTENT_FIELDS)?;
    let request_type = required(&mut fields, "request_type")?;
    let request_type = match request_type {
        Value::Text(t) => t,
        other => return Err(wrong_type("content.request_type", "text", &other)),
    };
    let sender = principal(required(&mut fields, "sender")?, "content.sender")?;
    let nonce = fields
        .take("nonce")?
        .map(|v| bytes(v, "content.nonce", limits.nonce_bytes_max))
        .transpose()?;
    let ingress_expiry = nat(
        required(&mut fields, "ingress_expiry")?,
        "content.ingress_expiry",
    )?;
    match &*request_type {
        "call" | "query" => {
            let canister_id =
                principal(required(&mut fields, "canister_id")?, "content.canister_id")?;
            let method_name = match required(&mut fields, "method_name")? {
                Value::Text(t) => t,
                other => return Err(wrong_type("content.method_name", "text", &other)),
            };
            check(
                "method_name_bytes_max",
                method_name.len(),
                limits.method_name_bytes_max,
            )?;
            let arg = bytes(
                required(&mut fields, "arg")?,
                "content.arg",
                limits.arg_bytes_max,
            )?;
            let content = CallContent {
                canister_id,
                method_name,
                arg,
                sender,
                nonce,
                ingress_expiry,
            };
            Ok(if &*request_type == "call" {
                RequestContent::Call(content)
            } else {
                RequestContent::Query(content)
            })
        }
        "read_state" => {
            let raw_paths = match required(&mut fields, "paths")? {
                Value::Array(paths) => paths,
                other => return Err(wrong_type("content.paths", "array", &other)),
            };
            check("paths_max", raw_paths.len(), limits.paths_max)?;
            let mut paths = Vec::with_capacity(raw_paths.len());
            for path in raw_paths {
                let labels = match path {
                    Value::Array(labels) => labels,
                    other => return Err(wrong_type("content.paths[]", "array", &other)),
                };
                check("path_labels_max", labels.len(), limits.path_labels_max)?;
                let labels = labels
                    .into_iter()
                    .map(|label| bytes(label, "content.paths[][]", limits.label_bytes_max))
                    .collect::<Result<Vec<_>, _>>()?;
                paths.push(labels);
            }
            Ok(RequestContent::ReadState(ReadStateContent {
                paths,
                sender,
                nonce,
                ingress_expiry,
            }))
        }
        _ => Err(IcDecodeError::UnknownRequestType),
    }
}

fn delegations<'a>(
    value: Value<'a>,
    limits: &IcLimits,
) -> Result<Vec<SignedDelegation<'a>>, IcDecodeError> {
    let items = match value {
        Value::Array(items) => items,
        other => return Err(wrong_type("sender_delegation", "array", &other)),
    };
    check("delegations_max", items.len(), limits.delegations_max)?;
    let mut chain = Vec::with_capacity(items.len());
    for item in items {
        let mut fields = Fields::new(item, "sender_delegation[]", &SIGNED_DELEGATION_FIELDS)?;
        let delegation_value = fields
            .take("delegation")?
            .ok_or(IcDecodeError::MissingField {
                field: "sender_delegation[].delegation",
            })?;
        let hash = hash_value(&delegation_value, "sender_delegation[].delegation")?;
        let signature = fields
            .take("signature")?
            .ok_or(IcDecodeError::MissingField {
                field: "sender_delegation[].signature",
            })?;
        let signature = bytes(
            signature,
            "sender_delegation[].signature",
            limits.signature_bytes_max,
        )?;
        let mut fields = Fields::new(
            delegation_value,
            "sender_delegation[].delegation",
            &DELEGATION_FIELDS,
        )?;
        let pubkey = fields.take("pubkey")?.ok_or(IcDecodeError::MissingField {
            field: "sender_delegation[].delegation.pubkey",
        })?;
        let pubkey = bytes(
            pubkey,
            "sender_delegation[].delegation.pubkey",
            limits.public_key_bytes_max,
        )?;
        let expiration = fields
            .take("expiration")?
            .ok_or(IcDecodeError::MissingField {
                field: "sender_delegation[].delegation.expiration",
            })?;
        let expiration = nat(expiration, "sender_delegation[].delegation.expiration")?;
        let targets = match fields.take("targets")? {
            None => None,
            Some(Value::Array(targets)) => {
                check(
                    "delegation_targets_max",
                    targets.len(),
                    limits.delegation_targets_max,
                )?;
                Some(
                    targets
                        .into_iter()
                        .map(|t| principal(t, "sender_delegation[].delegation.targets[]"))
                        .collect::<Result<Vec<_>, _>>()?,
                )
            }
            Some(other) => {
                return Err(wrong_type(
                    "sender_delegation[].delegation.targets",
                    "array",
                    &other,
                ))
            }
        };
        chain.push(SignedDelegation {
            delegation: Delegation {
                pubkey,
                expiration,
                targets,
                hash,
            },
            signature,
        });
    }
    Ok(chain)
}

/// The entries of a map whose known keys are `known`: each taken at most once, duplicates of a
/// known key rejected, unknown keys left alone.
struct Fields<'a> {
    slots: Vec<Option<Value<'a>>>,
    known: &'static [&'static str],
}

impl<'a> Fields<'a> {
    fn new(
        value: Value<'a>,
        what: &'static str,
        known: &'static [&'static str],
    ) -> Result<Fields<'a>, IcDecodeError> {
        let entries = match value {
            Value::Map(entries) => entries,
            other => return Err(wrong_type(what, "map", &other)),
        };
        let mut slots: Vec<Option<Value<'a>>> = known.iter().map(|_| None).collect();
        let mut unknown_keys: Vec<Cow<'a, str>> = Vec::new();
        for (key, value) in entries {
            let key = match key {
                Value::Text(key) => key,
                other => return Err(wrong_type(what, "text map keys", &other)),
            };
            match known.iter().position(|k| *k == key) {
                Some(index) => {
                    if slots[index].is_some() {
                        return Err(IcDecodeError::DuplicateField {
                            field: known[index],
                        });
                    }
                    slots[index] = Some(value);
                }
                // Unknown keys count towards the hash but are otherwise ignored; a duplicate
                // still makes the map ambiguous.
                None => {
                    if unknown_keys.contains(&key) {
                        return Err(IcDecodeError::DuplicateField { field: what });
                    }
                    unknown_keys.push(key);
                }
            }
        }
        Ok(Fields { slots, known })
    }

    fn take(&mut self, key: &'static str) -> Result<Option<Value<'a>>, IcDecodeError> {
        match self.known.iter().position(|k| *k == key) {
            Some(index) => Ok(self.slots[index].take()),
            None => Err(IcDecodeError::InvalidValue {
                field: key,
                detail: "not a field of this map (decoder bug)",
            }),
        }
    }
}

fn required<'a>(fields: &mut Fields<'a>, key: &'static str) -> Result<Value<'a>, IcDecodeError> {
    fields
        .take(key)?
        .ok_or(IcDecodeError::MissingField { field: key })
}

fn check(limit: &'static str, value: usize, max: usize) -> Result<(), IcDecodeError> {
    if value > max {
        return Err(IcDecodeError::LimitExceeded {
            limit,
            value: value as u64,
            max: max as u64,
        });
    }
    Ok(())
}

fn wrong_type(field: &'static str, expected: &'static str, found: &Value<'_>) -> IcDecodeError {
    IcDecodeError::WrongType {
        field,
        expected,
        found: found.type_name(),
    }
}

fn bytes<'a>(
    value: Value<'a>,
    field: &'static str,
    max: usize,
) -> Result<Cow<'a, [u8]>, IcDecodeError> {
    match value {
        Value::Bytes(b) => {
            if b.len() > max {
                return Err(IcDecodeError::LimitExceeded {
                    limit: field,
                    value: b.len() as u64,
                    max: max as u64,
                });
            }
            Ok(b)
        }
        other => Err(wrong_type(field, "blob", &other)),
    }
}

fn nat(value: Value<'_>, field: &'static str) -> Result<u64, IcDecodeError> {
    match value {
        Value::Nat(n) => Ok(n),
        other => Err(wrong_type(field, "nat", &other)),
    }
}

fn principal(value: Value<'_>, field: &'static str) -> Result<Principal, IcDecodeError> {
    match value {
        Value::Bytes(b) => {
            Principal::from_slice(&b).map_err(|error| IcDecodeError::Principal { field, error })
        }
        other => Err(wrong_type(field, "blob", &other)),
    }
}

#[cfg(test)]
mod tests {
    use super::super::cbor::encode_value;
    use super::*;

    fn spec_content() -> Value<'static> {
        Value::Map(vec![
            entry("request_type", text("call")),
            entry("sender", blob(&[0x04])),
            entry("ingress_expiry", Value::Nat(1_685_570_400_000_000_000)),
            entry("canister_id", blob(&[0, 0, 0, 0, 0, 0, 0x04, 0xD2])),
            entry("method_name", text("hello")),
            entry("arg", blob(b"DIDL\x00\xFD*")),
        ])
    }

    fn body(fields: Vec<(Value<'static>, Value<'static>)>) -> Vec<u8> {
        let mut out = Vec::new();
        encode_tagged(&Value::Map(fields), &mut out);
        out
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn spec_example_decodes_with_its_request_id() {
        let wire = body(vec![entry("content", spec_content())]);
        let envelope = decode_request_envelope(&wire, &IcLimits::default()).unwrap();
        assert_eq!(
            hex(&envelope.request_id.0),
            "1d1091364d6bb8a6c16b203ee75467d59ead468f523eb058880ae8ec80e2b101"
        );
        let RequestContent::Call(call) = &envelope.content else {
            panic!("a call")
        };
        assert!(call.sender.is_anonymous());
        assert_eq!(call.method_name, "hello");
        assert_eq!(call.canister_id.as_slice(), &[0, 0, 0, 0, 0, 0, 0x04, 0xD2]);
        let signing = envelope.signing_bytes();
        assert_eq!(&signing[..11], b"\x0Aic-request");
        assert_eq!(&signing[11..], &envelope.request_id.0);
        // Without the self-describe tag, and re-encoded from the typed value: the same id.
        let mut untagged = Vec::new();
        encode_value(
            &Value::Map(vec![entry("content", spec_content())]),
            &mut untagged,
        );
        assert_eq!(
            decode_request_envelope(&untagged, &IcLimits::default()).unwrap(),
            envelope
        );
        let mut again = Vec::new();
        envelope.encode(&mut again);
        assert_eq!(
            decode_request_envelope(&again, &IcLimits::default()).unwrap(),
            envelope
        );
    }

    #[test]
    fn unknown_fields_count_towards_the_request_id() {
        let Value::Map(mut content) = spec_content() else {
            unreachable!()
        };
        content.push(entry("future_field", Value::Nat(1)));
        let wire = body(vec![
            entry("content", Value::Map(content)),
            entry("unknown_envelope_field", text("ignored")),
        ]);
        let envelope = decode_request_envelope(&wire, &IcLimits::default()).unwrap();
        assert_ne!(
            hex(&envelope.request_id.0),
            "1d1091364d6bb8a6c16b203ee75467d59ead468f523eb058880ae8ec80e2b101"
        );
    }

    #[test]
    fn read_state_and_delegations_decode() {
        let delegation = Value::Map(vec![
            entry("pubkey", blob(b"session key")),
            entry("expiration", Value::Nat(42)),
            entry("targets", Value::Array(vec![blob(&[1, 2, 3])])),
        ]);
        let wire = body(vec![
            entry(
                "content",
                Value::Map(vec![
                    entry("request_type", text("read_state")),
                    entry("sender", blob(&[0x04])),
                    entry("nonce", blob(b"nonce")),
                    entry("ingress_expiry", Value::Nat(7)),
                    entry(
                        "paths",
                        Value::Array(vec![
                            Value::Array(vec![blob(b"time")]),
                            Value::Array(vec![blob(b"request_status"), blob(&[9; 32])]),
                        ]),
                    ),
                ]),
            ),
            entry("sender_pubkey", blob(b"der key")),
            entry("sender_sig", blob(b"sig")),
            entry(
                "sender_delegation",
                Value::Array(vec![Value::Map(vec![
                    entry("delegation", delegation.clone()),
                    entry("signature", blob(b"delegation sig")),
                ])]),
            ),
        ]);
        let envelope = decode_request_envelope(&wire, &IcLimits::default()).unwrap();
        let RequestContent::ReadState(read) = &envelope.content else {
            panic!("read_state")
        };
        assert_eq!(read.paths.len(), 2);
        assert_eq!(&*read.paths[1][1], &[9; 32]);
        let chain = envelope.sender_delegation.as_ref().unwrap();
        assert_eq!(chain[0].delegation.expiration, 42);
        let signing = chain[0].signing_bytes();
        assert_eq!(&signing[..27], b"\x1Aic-request-auth-delegation");
        assert_eq!(&signing[27..], &hash_value(&delegation, "d").unwrap());
        let mut again = Vec::new();
        envelope.encode(&mut again);
        assert_eq!(
            decode_request_envelope(&again, &IcLimits::default()).unwrap(),
            envelope
        );
    }

    #[test]
    fn bad_requests_name_the_field() {
        let limits = IcLimits::default();
        let decode = |fields| decode_request_envelope_owned(body(fields), &limits);
        let Value::Map(content) = spec_content() else {
            unreachable!()
        };
        let with = |name: &str, value: Value<'static>| {
            let mut fields: Vec<_> = content
                .iter()
                .filter(|(k, _)| !matches!(k, Value::Text(t) if t == name))
                .cloned()
                .collect();
            fields.push(entry_owned(name, value));
            vec![entry("content", Value::Map(fields))]
        };
        assert_eq!(
            decode(vec![]),
            Err(IcDecodeError::MissingField { field: "content" })
        );
        assert_eq!(
            decode(with("arg", Value::Nat(1))),
            Err(IcDecodeError::WrongType {
                field: "content.arg",
                expected: "blob",
                found: "nat"
            })
        );
        assert_eq!(
            decode(with("request_type", text("install"))),
            Err(IcDecodeError::UnknownRequestType)
        );
        assert!(matches!(
            decode(with("sender", blob(&[0; 30]))),
            Err(IcDecodeError::Principal {
                field: "content.sender",
                ..
            })
        ));
        assert!(matches!(
            decode(with("nonce", blob(&[0; 33]))),
            Err(IcDecodeError::LimitExceeded {
                limit: "content.nonce",
                ..
            })
        ));
        assert!(matches!(
            decode(with("extra", Value::Float(0.5))),
            Err(IcDecodeError::NotHashable { .. })
        ));
        let mut duplicated = with("arg", blob(b""));
        if let Value::Map(fields) = &mut duplicated[0].1 {
            fields.push(entry("arg", blob(b"again")));
        }
        assert_eq!(
            decode(duplicated),
            Err(IcDecodeError::DuplicateField { field: "arg" })
        );
        let too_many = Value::Array((0..=limits.delegations_max).map(|_| Value::Null).collect());
        let mut fields = with("arg", blob(b""));
        fields.push(entry("sender_delegation", too_many));
        assert!(matches!(
            decode(fields),
            Err(IcDecodeError::LimitExceeded {
                limit: "delegations_max",
                ..
            })
        ));
        let many_items = Value::Array(vec![Value::Nat(0); limits.cbor_items_max]);
        assert!(matches!(
            decode(with("extra", many_items)),
            Err(IcDecodeError::LimitExceeded {
                limit: "cbor_items_max",
                ..
            })
        ));
        let small = IcLimits {
            body_bytes_max: 8,
            ..limits
        };
        assert!(matches!(
            decode_request_envelope(&body(with("arg", blob(b""))), &small),
            Err(IcDecodeError::LimitExceeded {
                limit: "body_bytes_max",
                ..
            })
        ));
    }

    fn entry_owned(key: &str, value: Value<'static>) -> (Value<'static>, Value<'static>) {
        (Value::Text(Cow::Owned(key.to_owned())), value)
    }

    /// Decodes and detaches the result from `wire`, for tests that build bodies inline.
    fn decode_request_envelope_owned(
        wire: Vec<u8>,
        limits: &IcLimits,
    ) -> Result<(), IcDecodeError> {
        decode_request_envelope(&wire, limits).map(|_| ())
    }
}
