//! Encodings of the leaves of the certified state tree that are more than opaque blobs.
//!
//! - `/time`: the state's time, nanoseconds since the Unix epoch, unsigned LEB128. Agents read
//!   it from every certificate to refuse stale (replayed) ones.
//! - `/subnet/<id>/canister_ranges`: the canister ids a subnet hosts, a self-describe tagged
//!   CBOR array of inclusive `[first, last]` pairs of canister id blobs. Agents read it from a
//!   delegation to check that the delegated subnet may speak for the canister they asked.
//!
//! Both arrive inside certificates from remote replicas, so both decoders return errors, never
//! panic, and have fuzz targets (`ic_time_leaf`, `ic_canister_ranges`).

use super::cbor::{blob, decode_value_bounded, encode_tagged, Value};
use super::error::IcDecodeError;
use super::limits::IcLimits;
use super::principal::Principal;

/// The longest unsigned LEB128 encoding of a `u64` (64 bits in 7-bit groups).
pub const LEB128_U64_BYTES_MAX: usize = 10;

/// Depth of a ranges leaf: the outer array, a pair, a blob (the self-describe tag in front is
/// not counted).
const CANISTER_RANGES_DEPTH_MAX: usize = 3;

/// Encodes a `/time` leaf.
pub fn encode_time(time_ns: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(LEB128_U64_BYTES_MAX);
    let mut rest = time_ns;
    loop {
        let byte = (rest & 0x7f) as u8;
        rest >>= 7;
        if rest == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

/// Decodes a `/time` leaf. Refuses an empty leaf, a missing final byte, bytes after the final
/// one, encodings longer than a `u64` needs and values above `u64::MAX`. Redundant zero groups
/// (`0x80 0x00` for 0) are accepted, as agents' LEB128 readers accept them.
pub fn decode_time(leaf: &[u8]) -> Result<u64, IcDecodeError> {
    const FIELD: &str = "time";
    let bad = |detail| IcDecodeError::InvalidValue {
        field: FIELD,
        detail,
    };
    let mut value: u64 = 0;
    for (index, &byte) in leaf.iter().enumerate() {
        if index >= LEB128_U64_BYTES_MAX {
            return Err(bad("LEB128 longer than a 64-bit nat"));
        }
        let group = u64::from(byte & 0x7f);
        let shift = 7 * index as u32;
        // The tenth group holds bit 63 only.
        if shift == 63 && group > 1 {
            return Err(bad("LEB128 nat above 2^64 - 1"));
        }
        value |= group << shift;
        if byte & 0x80 == 0 {
            return if index + 1 == leaf.len() {
                Ok(value)
            } else {
                Err(bad("bytes after the last LEB128 group"))
            };
        }
    }
    Err(bad("LEB128 without a final group"))
}

/// Encodes a `/subnet/<id>/canister_ranges` leaf.
pub fn encode_canister_ranges(ranges: &[(Principal, Principal)]) -> Vec<u8> {
    let value = Value::Array(
        ranges
            .iter()
            .map(|(first, last)| Value::Array(vec![blob(first.as_slice()), blob(last.as_slice())]))
            .collect(),
    );
    let mut out = Vec::new();
    encode_tagged(&value, &mut out);
    out
}

/// Decodes a canister ranges leaf, with or without the self-describe tag. The number of
/// ranges is bounded by `limits.cbor_items_max` (each range is three items).
pub fn decode_canister_ranges(
    leaf: &[u8],
    limits: &IcLimits,
) -> Result<Vec<(Principal, Principal)>, IcDecodeError> {
    const FIELD: &str = "canister_ranges";
    let wrong = |expected, found: &Value<'_>| IcDecodeError::WrongType {
        field: FIELD,
        expected,
        found: found.type_name(),
    };
    let value = decode_value_bounded(leaf, CANISTER_RANGES_DEPTH_MAX, limits.cbor_items_max)?;
    let Value::Array(ranges) = value else {
        return Err(wrong("array of ranges", &value));
    };
    let id = |value: &Value<'_>| match value {
        Value::Bytes(bytes) => {
            Principal::from_slice(bytes).map_err(|error| IcDecodeError::Principal {
                field: FIELD,
                error,
            })
        }
        other => Err(wrong("canister id blob", other)),
    };
    ranges
        .iter()
        .map(|range| match range {
            Value::Array(pair) if pair.len() == 2 => Ok((id(&pair[0])?, id(&pair[1])?)),
            Value::Array(_) => Err(IcDecodeError::InvalidValue {
                field: FIELD,
                detail: "a range is not a [first, last] pair",
            }),
            other => Err(wrong("[first, last] pair", other)),
        })
        .collect()
}

/// Whether `canister` lies in one of `ranges`. Canister ids compare as byte strings, the order
/// the IC assigns and routes them in; an inverted range (first > last) holds nothing.
pub fn canister_in_ranges(canister: &Principal, ranges: &[(Principal, Principal)]) -> bool {
    ranges.iter().any(|(first, last)| {
        first.as_slice() <= canister.as_slice() && canister.as_slice() <= last.as_slice()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_round_trips_and_malformed_leaves_are_errors() {
        for time in [0, 1, 127, 128, 1_733_317_186_048_345_409, u64::MAX] {
            let leaf = encode_time(time);
            assert!(leaf.len() <= LEB128_U64_BYTES_MAX);
            assert_eq!(decode_time(&leaf), Ok(time));
        }
        // The LEB128 example everyone uses.
        assert_eq!(encode_time(624_485), vec![0xe5, 0x8e, 0x26]);
        assert_eq!(decode_time(&[0x80, 0x00]), Ok(0));
        let mut max = vec![0xff; 9];
        max.push(0x01);
        assert_eq!(decode_time(&max), Ok(u64::MAX));
        let mut over = vec![0xff; 9];
        over.push(0x02);
        for bad in [&[][..], &[0x80], &[0x05, 0x00], &[0xff; 11], &over] {
            assert!(
                matches!(decode_time(bad), Err(IcDecodeError::InvalidValue { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn canister_ranges_round_trip_and_malformed_leaves_are_errors() {
        let ranges = vec![
            (
                Principal::from_canister_index(0),
                Principal::from_canister_index(5),
            ),
            (
                Principal::from_canister_index(9),
                Principal::from_canister_index(9),
            ),
        ];
        let limits = IcLimits::default();
        let leaf = encode_canister_ranges(&ranges);
        assert_eq!(&leaf[..3], &[0xd9, 0xd9, 0xf7]);
        assert_eq!(decode_canister_ranges(&leaf, &limits), Ok(ranges.clone()));
        assert_eq!(
            decode_canister_ranges(&leaf[3..], &limits),
            Ok(ranges.clone())
        );
        assert!(canister_in_ranges(
            &Principal::from_canister_index(3),
            &ranges
        ));
        assert!(canister_in_ranges(
            &Principal::from_canister_index(9),
            &ranges
        ));
        assert!(!canister_in_ranges(
            &Principal::from_canister_index(6),
            &ranges
        ));
        assert!(!canister_in_ranges(
            &Principal::from_canister_index(10),
            &ranges
        ));
        for bad in [
            &b"\x01"[..],        // a nat
            b"\x81\x01",         // [1]
            b"\x81\x81\x40",     // [[h'']]
            b"\x81\x82\x40\x01", // [[h'', 1]]
            b"\xff",             // not CBOR
        ] {
            assert!(decode_canister_ranges(bad, &limits).is_err(), "{bad:?}");
        }
        // A bound longer than a principal.
        let mut long = vec![0x81, 0x82, 0x58, 30];
        long.extend_from_slice(&[0; 30]);
        long.extend_from_slice(&[0x40]);
        assert!(matches!(
            decode_canister_ranges(&long, &limits),
            Err(IcDecodeError::Principal { .. })
        ));
    }
}
