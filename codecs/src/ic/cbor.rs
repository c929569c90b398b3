//! A generic CBOR value tree with explicit bounds, built on `minicbor`'s token decoder.
//!
//! The IC's request id is a hash of the content map *exactly as the client sent it*, including
//! fields this node does not know, so requests are first decoded into a generic [`Value`] and only
//! then read into typed structs. We build the tree ourselves rather than through serde so that
//! every bound is ours and visible: nesting depth is checked before each recursive step, and no
//! collection is pre-allocated beyond what the remaining input could possibly hold (every item
//! takes at least one byte), so a decoded tree is at most a constant times the input's size.
//!
//! A [`Value`] is 32 bytes (a test keeps it so); [`decode_value_bounded`] stops after a given
//! number of items, so with vector growth a decoded tree holds at most about 64 bytes per
//! allowed item (and never more items than input bytes).
//!
//! Byte and text strings borrow from the input; only indefinite-length strings (which arrive in
//! chunks) are copied into one owned buffer, whose size is bounded by the input too.

use std::borrow::Cow;

use minicbor::data::Type;
use minicbor::Decoder;

use super::error::IcDecodeError;

/// CBOR's "self-describe" tag (RFC 8949 section 3.4.6). IC agents put it in front of every
/// request body and the IC puts it in front of its responses; it carries no meaning.
pub const SELF_DESCRIBE_TAG: u64 = 55799;

/// One decoded CBOR data item.
#[derive(Clone, Debug, PartialEq)]
pub enum Value<'a> {
    /// Major type 0: an unsigned integer ("nat" in the IC's hashing rules).
    Nat(u64),
    /// Major type 1: a negative integer, -2^64 ..= -1 ("int" in the hashing rules).
    NegInt(i128),
    Bytes(Cow<'a, [u8]>),
    Text(Cow<'a, str>),
    Array(Vec<Value<'a>>),
    /// Entries in the order received; duplicate keys are kept (the typed decoders reject them).
    Map(Vec<(Value<'a>, Value<'a>)>),
    Tag(u64, Box<Value<'a>>),
    Bool(bool),
    Null,
    Undefined,
    /// A simple value other than false/true/null/undefined.
    Simple(u8),
    Float(f64),
}

impl<'a> Value<'a> {
    /// The name of this value's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Nat(_) => "nat",
            Value::NegInt(_) => "negative int",
            Value::Bytes(_) => "blob",
            Value::Text(_) => "text",
            Value::Array(_) => "array",
            Value::Map(_) => "map",
            Value::Tag(..) => "tag",
            Value::Bool(_) => "bool",
            Value::Null => "null",
            Value::Undefined => "undefined",
            Value::Simple(_) => "simple value",
            Value::Float(_) => "float",
        }
    }

    /// The value of a text-keyed map entry, or `None` if this is not a map or has no such key.
    pub fn get(&self, key: &str) -> Option<&Value<'a>> {
        match self {
            Value::Map(entries) => entries
                .iter()
                .find(|(k, _)| matches!(k, Value::Text(t) if t == key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// A copy that owns all its bytes, detached from the input it was decoded from.
    pub fn into_owned(self) -> Value<'static> {
        match self {
            Value::Nat(n) => Value::Nat(n),
            Value::NegInt(n) => Value::NegInt(n),
            Value::Bytes(b) => Value::Bytes(Cow::Owned(b.into_owned())),
            Value::Text(t) => Value::Text(Cow::Owned(t.into_owned())),
            Value::Array(items) => Value::Array(items.into_iter().map(Value::into_owned).collect()),
            Value::Map(entries) => Value::Map(
                entries
                    .into_iter()
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect(),
            ),
            Value::Tag(tag, inner) => Value::Tag(tag, Box::new(inner.into_owned())),
            Value::Bool(b) => Value::Bool(b),
            Value::Null => Value::Null,
            Value::Undefined => Value::Undefined,
            Value::Simple(s) => Value::Simple(s),
            Value::Float(f) => Value::Float(f),
        }
    }
}

/// Shorthand for a text-keyed map entry, for encoders and tests that build values.
pub fn entry<'a>(key: &'a str, value: Value<'a>) -> (Value<'a>, Value<'a>) {
    (Value::Text(Cow::Borrowed(key)), value)
}

/// Shorthand for a borrowed blob.
pub fn blob(bytes: &[u8]) -> Value<'_> {
    Value::Bytes(Cow::Borrowed(bytes))
}

/// Shorthand for borrowed text.
pub fn text(text: &str) -> Value<'_> {
    Value::Text(Cow::Borrowed(text))
}

/// Decodes exactly one data item filling all of `input`, after an optional self-describe tag,
/// nesting at most `depth_max` arrays, maps and tags deep. Every data item takes at least one
/// byte, so the number of values is bounded by the input's length; see
/// [`decode_value_bounded`] for a tighter bound.
pub fn decode_value(input: &[u8], depth_max: usize) -> Result<Value<'_>, IcDecodeError> {
    decode_value_bounded(input, depth_max, input.len())
}

/// [`decode_value`] that also fails once more than `items_max` data items (values, map keys
/// included) have been decoded, so that a body of small items cannot make a tree 32 times its
/// size.
pub fn decode_value_bounded(
    input: &[u8],
    depth_max: usize,
    items_max: usize,
) -> Result<Value<'_>, IcDecodeError> {
    let mut decoder = Decoder::new(input);
    let at = 0;
    if decoder.datatype().map_err(|e| cbor_error(e, at))? == Type::Tag {
        let start = decoder.position();
        let tag = decoder.tag().map_err(|e| cbor_error(e, at))?;
        if tag.as_u64() != SELF_DESCRIBE_TAG {
            decoder.set_position(start);
        }
    }
    let mut walk = Walk {
        decoder,
        items_left: items_max,
        items_max,
    };
    let value = walk.item(depth_max)?;
    let trailing = input.len() - walk.decoder.position();
    if trailing != 0 {
        return Err(IcDecodeError::TrailingBytes {
            bytes: trailing as u64,
        });
    }
    Ok(value)
}

/// The decoder's state: the token stream and how many more items may be decoded.
struct Walk<'b> {
    decoder: Decoder<'b>,
    items_left: usize,
    items_max: usize,
}

/// Maps a token-level error of `minicbor` to ours, with its byte offset (or `item`'s, the
/// offset of the data item being decoded, when it gives none).
fn cbor_error(error: minicbor::decode::Error, item: usize) -> IcDecodeError {
    let offset = error.position().unwrap_or(item) as u64;
    let detail = if error.is_end_of_input() {
        "input ends inside a data item"
    } else if error.is_type_mismatch() {
        "unexpected data item"
    } else {
        "malformed data item"
    };
    IcDecodeError::Cbor { offset, detail }
}

/// Items reserved up front for a collection, at most. Beyond this a collection grows as its
/// items actually arrive, so nested collections that each announce a huge length cannot
/// together reserve more than this per nesting level.
const PREALLOCATED_ITEMS_MAX: u64 = 256;

/// Capacity to reserve for a collection announcing `len` items: never more than the bytes left
/// (every item takes at least one byte) nor [`PREALLOCATED_ITEMS_MAX`]. A hostile length is
/// caught when the items run out.
fn capacity(decoder: &Decoder<'_>, len: u64) -> usize {
    let left = (decoder.input().len() - decoder.position()) as u64;
    len.min(left).min(PREALLOCATED_ITEMS_MAX) as usize
}

impl<'b> Walk<'b> {
    fn item(&mut self, depth_left: usize) -> Result<Value<'b>, IcDecodeError> {
        if self.items_left == 0 {
            return Err(IcDecodeError::LimitExceeded {
                limit: "cbor_items_max",
                value: self.items_max as u64 + 1,
                max: self.items_max as u64,
            });
        }
        self.items_left -= 1;
        let depth_next = depth_left.saturating_sub(1);
        Ok(match decode_token(&mut self.decoder, depth_left)? {
            Token::Done(value) => value,
            Token::Array(len) => {
                let mut items = Vec::with_capacity(capacity(&self.decoder, len.unwrap_or(0)));
                match len {
                    Some(len) => {
                        for _ in 0..len {
                            items.push(self.item(depth_next)?);
                        }
                    }
                    None => {
                        while !at_break(&mut self.decoder)? {
                            items.push(self.item(depth_next)?);
                        }
                    }
                }
                Value::Array(items)
            }
            Token::Map(len) => {
                let mut entries = Vec::with_capacity(capacity(&self.decoder, len.unwrap_or(0)));
                match len {
                    Some(len) => {
                        for _ in 0..len {
                            let key = self.item(depth_next)?;
                            entries.push((key, self.item(depth_next)?));
                        }
                    }
                    None => {
                        while !at_break(&mut self.decoder)? {
                            let key = self.item(depth_next)?;
                            entries.push((key, self.item(depth_next)?));
                        }
                    }
                }
                Value::Map(entries)
            }
            Token::Tag(tag) => Value::Tag(tag, Box::new(self.item(depth_next)?)),
        })
    }
}

/// One token: a complete scalar, or the head of a collection or tag whose contents follow.
enum Token<'b> {
    Done(Value<'b>),
    Array(Option<u64>),
    Map(Option<u64>),
    Tag(u64),
}

fn decode_token<'b>(
    decoder: &mut Decoder<'b>,
    depth_left: usize,
) -> Result<Token<'b>, IcDecodeError> {
    let at = decoder.position();
    let datatype = decoder.datatype().map_err(|e| cbor_error(e, at))?;
    let nested = matches!(
        datatype,
        Type::Array | Type::ArrayIndef | Type::Map | Type::MapIndef | Type::Tag
    );
    if nested && depth_left == 0 {
        return Err(IcDecodeError::TooDeep {
            offset: decoder.position() as u64,
        });
    }
    let value = match datatype {
        Type::U8 | Type::U16 | Type::U32 | Type::U64 => {
            Value::Nat(decoder.u64().map_err(|e| cbor_error(e, at))?)
        }
        Type::I8 | Type::I16 | Type::I32 | Type::I64 | Type::Int => {
            let int = decoder.int().map_err(|e| cbor_error(e, at))?;
            Value::NegInt(i128::from(int))
        }
        Type::Bytes => Value::Bytes(Cow::Borrowed(
            decoder.bytes().map_err(|e| cbor_error(e, at))?,
        )),
        Type::BytesIndef => {
            let mut bytes = Vec::new();
            for chunk in decoder.bytes_iter().map_err(|e| cbor_error(e, at))? {
                bytes.extend_from_slice(chunk.map_err(|e| cbor_error(e, at))?);
            }
            Value::Bytes(Cow::Owned(bytes))
        }
        Type::String => Value::Text(Cow::Borrowed(decoder.str().map_err(|e| cbor_error(e, at))?)),
        Type::StringIndef => {
            let mut text = String::new();
            for chunk in decoder.str_iter().map_err(|e| cbor_error(e, at))? {
                text.push_str(chunk.map_err(|e| cbor_error(e, at))?);
            }
            Value::Text(Cow::Owned(text))
        }
        Type::Array | Type::ArrayIndef => {
            return Ok(Token::Array(
                decoder.array().map_err(|e| cbor_error(e, at))?,
            ))
        }
        Type::Map | Type::MapIndef => {
            return Ok(Token::Map(decoder.map().map_err(|e| cbor_error(e, at))?))
        }
        Type::Tag => {
            return Ok(Token::Tag(
                decoder.tag().map_err(|e| cbor_error(e, at))?.as_u64(),
            ))
        }
        Type::Bool => Value::Bool(decoder.bool().map_err(|e| cbor_error(e, at))?),
        Type::Null => {
            decoder.null().map_err(|e| cbor_error(e, at))?;
            Value::Null
        }
        Type::Undefined => {
            decoder.undefined().map_err(|e| cbor_error(e, at))?;
            Value::Undefined
        }
        Type::Simple => Value::Simple(decoder.simple().map_err(|e| cbor_error(e, at))?),
        Type::F16 => {
            // minicbor decodes half floats only with its `half` feature; three bytes suffice.
            let bits = match decoder.input().get(at + 1..at + 3) {
                Some(&[high, low]) => u16::from_be_bytes([high, low]),
                _ => {
                    return Err(IcDecodeError::Cbor {
                        offset: at as u64,
                        detail: "input ends inside a data item",
                    })
                }
            };
            decoder.set_position(at + 3);
            Value::Float(half_to_f64(bits))
        }
        Type::F32 => Value::Float(f64::from(decoder.f32().map_err(|e| cbor_error(e, at))?)),
        Type::F64 => Value::Float(decoder.f64().map_err(|e| cbor_error(e, at))?),
        Type::Break | Type::Unknown(_) => {
            return Err(IcDecodeError::Cbor {
                offset: decoder.position() as u64,
                detail: "reserved or misplaced initial byte",
            })
        }
    };
    Ok(Token::Done(value))
}

/// An IEEE 754 half-precision float as f64 (RFC 8949 appendix D).
fn half_to_f64(bits: u16) -> f64 {
    let exponent = i32::from((bits >> 10) & 0x1f);
    let mantissa = f64::from(bits & 0x3ff);
    let magnitude = match exponent {
        0 => mantissa * 2f64.powi(-24),
        31 if mantissa == 0.0 => f64::INFINITY,
        31 => f64::NAN,
        _ => (mantissa + 1024.0) * 2f64.powi(exponent - 25),
    };
    if bits & 0x8000 != 0 {
        -magnitude
    } else {
        magnitude
    }
}

/// Consumes a "break" byte if one is next (the end of an indefinite-length collection).
fn at_break(decoder: &mut Decoder<'_>) -> Result<bool, IcDecodeError> {
    let at = decoder.position();
    if decoder.datatype().map_err(|e| cbor_error(e, at))? == Type::Break {
        decoder.set_position(decoder.position() + 1);
        return Ok(true);
    }
    Ok(false)
}

/// Appends the encoding of `value` to `out`: definite lengths, shortest integer forms, entries
/// in the order given. Recursion follows the value's own nesting, which for decoded values is
/// bounded by the decoder's depth limit and for values we build is a handful of levels.
pub fn encode_value(value: &Value<'_>, out: &mut Vec<u8>) {
    let mut encoder = minicbor::Encoder::new(out);
    write_value(&mut encoder, value);
}

/// Appends the self-describe tag followed by `value`, as the IC frames its responses.
pub fn encode_tagged(value: &Value<'_>, out: &mut Vec<u8>) {
    let mut encoder = minicbor::Encoder::new(&mut *out);
    write_infallible(encoder.tag(minicbor::data::Tag::new(SELF_DESCRIBE_TAG)));
    write_value(&mut encoder, value);
}

/// Writing into a `Vec` cannot fail (`minicbor`'s `Vec` writer's error type is `Infallible`,
/// and the primitive encoders raise no other error), so the result carries no information.
fn write_infallible<T>(result: Result<T, minicbor::encode::Error<core::convert::Infallible>>) {
    let _ = result;
}

fn write_value<W>(encoder: &mut minicbor::Encoder<W>, value: &Value<'_>)
where
    W: minicbor::encode::Write<Error = core::convert::Infallible>,
{
    match value {
        Value::Nat(n) => write_infallible(encoder.u64(*n)),
        Value::NegInt(n) => {
            // Decoded values are always within CBOR's range; one built outside it is written as
            // the nearest bound rather than failing an infallible encoder.
            let clamped = (*n).clamp(-(1i128 << 64), -1);
            if let Ok(int) = minicbor::data::Int::try_from(clamped) {
                write_infallible(encoder.int(int));
            }
        }
        Value::Bytes(b) => write_infallible(encoder.bytes(b)),
        Value::Text(t) => write_infallible(encoder.str(t)),
        Value::Array(items) => {
            write_infallible(encoder.array(items.len() as u64));
            for item in items {
                write_value(encoder, item);
            }
        }
        Value::Map(entries) => {
            write_infallible(encoder.map(entries.len() as u64));
            for (key, value) in entries {
                write_value(encoder, key);
                write_value(encoder, value);
            }
        }
        Value::Tag(tag, inner) => {
            write_infallible(encoder.tag(minicbor::data::Tag::new(*tag)));
            write_value(encoder, inner);
        }
        Value::Bool(b) => write_infallible(encoder.bool(*b)),
        Value::Null => write_infallible(encoder.null()),
        Value::Undefined => write_infallible(encoder.undefined()),
        Value::Simple(s) => write_infallible(encoder.simple(*s)),
        Value::Float(f) => write_infallible(encoder.f64(*f)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(value: &Value<'_>) {
        let mut out = Vec::new();
        encode_value(value, &mut out);
        assert_eq!(&decode_value(&out, 16).unwrap(), value);
        let mut tagged = Vec::new();
        encode_tagged(value, &mut tagged);
        assert_eq!(&tagged[..3], &[0xd9, 0xd9, 0xf7]);
        assert_eq!(&decode_value(&tagged, 16).unwrap(), value);
    }

    #[test]
    fn values_round_trip_with_and_without_the_self_describe_tag() {
        round_trip(&Value::Nat(u64::MAX));
        round_trip(&Value::NegInt(-(1i128 << 64)));
        round_trip(&Value::NegInt(-1));
        // Half floats decode (1.5 and -infinity); we encode floats as f64.
        assert_eq!(decode_value(&[0xf9, 0x3e, 0x00], 1), Ok(Value::Float(1.5)));
        assert_eq!(
            decode_value(&[0xf9, 0xfc, 0x00], 1),
            Ok(Value::Float(f64::NEG_INFINITY))
        );
        round_trip(&Value::Map(vec![
            entry("a", blob(b"\x01\x02")),
            entry(
                "b",
                Value::Array(vec![text("x"), Value::Null, Value::Bool(true)]),
            ),
            (Value::Nat(3), Value::Tag(7, Box::new(Value::Float(1.5)))),
        ]));
    }

    #[test]
    fn indefinite_lengths_are_accepted() {
        // [_ h'01' h'02' ] as indefinite bytes inside an indefinite array, then a text in chunks.
        let input = [
            0x9f, 0x5f, 0x41, 0x01, 0x41, 0x02, 0xff, 0x7f, 0x61, b'a', 0x61, b'b', 0xff, 0xff,
        ];
        assert_eq!(
            decode_value(&input, 4).unwrap(),
            Value::Array(vec![
                Value::Bytes(Cow::Owned(vec![1, 2])),
                Value::Text(Cow::Owned("ab".into()))
            ])
        );
    }

    #[test]
    fn item_count_is_bounded() {
        // [0, 0, 0]: four items with the array itself.
        let input = [0x83, 0x00, 0x00, 0x00];
        assert!(decode_value_bounded(&input, 2, 4).is_ok());
        assert_eq!(
            decode_value_bounded(&input, 2, 3),
            Err(IcDecodeError::LimitExceeded {
                limit: "cbor_items_max",
                value: 4,
                max: 3
            })
        );
    }

    #[test]
    fn values_stay_small() {
        // The memory bound in the module documentation assumes this.
        assert!(std::mem::size_of::<Value<'_>>() <= 32);
    }

    #[test]
    fn depth_is_bounded() {
        let nested = [0x81u8; 10]
            .iter()
            .copied()
            .chain([0x00])
            .collect::<Vec<_>>();
        assert!(decode_value(&nested, 10).is_ok());
        assert!(matches!(
            decode_value(&nested, 9),
            Err(IcDecodeError::TooDeep { .. })
        ));
    }

    #[test]
    fn hostile_lengths_fail_without_allocating() {
        // An array announcing 2^64-1 items, a blob announcing 2^32 bytes.
        assert!(decode_value(&[0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff], 4).is_err());
        assert!(decode_value(&[0x5a, 0xff, 0xff, 0xff, 0xff], 4).is_err());
        assert!(decode_value(&[], 4).is_err());
        assert!(matches!(
            decode_value(&[0x00, 0x00], 4),
            Err(IcDecodeError::TrailingBytes { bytes: 1 })
        ));
        assert!(decode_value(&[0xff], 4).is_err());
        // A bare break inside an indefinite map after a key.
        assert!(decode_value(&[0xbf, 0x00, 0xff], 4).is_err());
    }
}
