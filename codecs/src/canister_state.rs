//! State files of the reference replica's built-in canisters (shards/src/replica/canisters.rs).
//!
//! Each canister's state is one file in a checkpoint, and checkpoints travel between nodes by
//! state sync, so these bytes are remote input: a node must refuse, not panic on or allocate for,
//! a file that is truncated, oversized or simply wrong. There is exactly one encoding of each
//! state (keys strictly increasing, no trailing bytes), so the bytes, and the state hash over
//! them, are the same on every node that holds the same state, and decoding then encoding is the
//! identity.
//!
//! Layout (integers little-endian): the magic `ICNC`, a version byte (1), a kind byte (1 counter,
//! 2 key-value store), then for the counter its `u64` value, for the store a `u64` key count and
//! per key in increasing byte order a `u32` key length, the UTF-8 key, a `u32` value length and
//! the value.

use std::collections::BTreeMap;

const MAGIC: &[u8; 4] = b"ICNC";
const VERSION: u8 = 1;
const KIND_COUNTER: u8 = 1;
const KIND_KV: u8 = 2;
const HEADER_BYTES: usize = MAGIC.len() + 2;
/// The two length prefixes each key-value entry carries beside its data.
const ENTRY_OVERHEAD_BYTES: u64 = 8;

/// The bounds a key-value state file must respect: the same bounds the store enforces on puts, so
/// a file from a peer never holds more than our own store would have accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvStateLimits {
    pub key_bytes_max: usize,
    pub value_bytes_max: usize,
    pub keys_max: usize,
    /// Bytes of keys plus values.
    pub store_bytes_max: usize,
}

impl KvStateLimits {
    /// The largest file these limits allow, so a reader can refuse a larger one from its length
    /// before reading it.
    pub fn file_bytes_max(&self) -> u64 {
        (HEADER_BYTES as u64 + 8)
            .saturating_add(self.store_bytes_max as u64)
            .saturating_add((self.keys_max as u64).saturating_mul(ENTRY_OVERHEAD_BYTES))
    }
}

impl Default for KvStateLimits {
    /// The `[canisters]` tuning defaults, for the fuzz targets and tests.
    fn default() -> KvStateLimits {
        KvStateLimits {
            key_bytes_max: 1 << 10,
            value_bytes_max: 64 << 10,
            keys_max: 100_000,
            store_bytes_max: 64 << 20,
        }
    }
}

/// Why bytes are not a canister state file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CanisterStateError {
    #[error("truncated {what}: {needed} bytes needed, {left} left")]
    Truncated {
        what: &'static str,
        needed: usize,
        left: usize,
    },
    #[error("not a canister state file (bad magic)")]
    BadMagic,
    #[error("unknown state format version {0}")]
    UnknownVersion(u8),
    #[error("state of canister kind {found}, expected {expected}")]
    WrongKind { found: u8, expected: u8 },
    #[error("{what} of {value} over the limit of {max}")]
    LimitExceeded {
        what: &'static str,
        value: u64,
        max: u64,
    },
    #[error("key is not UTF-8")]
    KeyNotUtf8,
    #[error("keys not strictly increasing")]
    KeysOutOfOrder,
    #[error("{0} trailing bytes")]
    TrailingBytes(usize),
}

/// The counter's state file.
pub fn encode_counter_state(value: u64) -> Vec<u8> {
    let mut bytes = header(KIND_COUNTER);
    bytes.extend_from_slice(&value.to_le_bytes());
    bytes
}

pub fn decode_counter_state(bytes: &[u8]) -> Result<u64, CanisterStateError> {
    let mut reader = Reader { bytes };
    reader.header(KIND_COUNTER)?;
    let value = reader.u64("counter value")?;
    reader.finish()?;
    Ok(value)
}

/// The key-value store's state file. The map's order is the file's order, which is what makes
/// the encoding unique.
pub fn encode_kv_state(entries: &BTreeMap<String, Vec<u8>>) -> Vec<u8> {
    let data_bytes: usize = entries
        .iter()
        .map(|(key, value)| key.len() + value.len() + ENTRY_OVERHEAD_BYTES as usize)
        .sum();
    let mut bytes = header(KIND_KV);
    bytes.reserve(8 + data_bytes);
    bytes.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    for (key, value) in entries {
        // The store's bounds keep both far below 4 GiB; a longer one is a bug of ours.
        let key_len = u32::try_from(key.len()).expect("key length bounded by kv_key_bytes_max");
        let value_len =
            u32::try_from(value.len()).expect("value length bounded by kv_value_bytes_max");
        bytes.extend_from_slice(&key_len.to_le_bytes());
        bytes.extend_from_slice(key.as_bytes());
        bytes.extend_from_slice(&value_len.to_le_bytes());
        bytes.extend_from_slice(value);
    }
    bytes
}

/// Decodes a key-value state file within `limits`, returning the entries and their bytes of keys
/// plus values. Every count and length is checked against its limit before anything is
/// allocated for it.
pub fn decode_kv_state(
    bytes: &[u8],
    limits: &KvStateLimits,
) -> Result<(BTreeMap<String, Vec<u8>>, usize), CanisterStateError> {
    let mut reader = Reader { bytes };
    reader.header(KIND_KV)?;
    let count = reader.u64("key count")?;
    check_limit("key count", count, limits.keys_max)?;
    let mut entries: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut data_bytes = 0usize;
    for _ in 0..count {
        let key_len = reader.u32("key length")?;
        check_limit("key length", u64::from(key_len), limits.key_bytes_max)?;
        let key = std::str::from_utf8(reader.take(key_len as usize, "key")?)
            .map_err(|_| CanisterStateError::KeyNotUtf8)?;
        let value_len = reader.u32("value length")?;
        check_limit("value length", u64::from(value_len), limits.value_bytes_max)?;
        let value = reader.take(value_len as usize, "value")?;
        if let Some((last, _)) = entries.last_key_value() {
            if last.as_str() >= key {
                return Err(CanisterStateError::KeysOutOfOrder);
            }
        }
        data_bytes += key.len() + value.len();
        check_limit("store bytes", data_bytes as u64, limits.store_bytes_max)?;
        entries.insert(key.to_string(), value.to_vec());
    }
    reader.finish()?;
    Ok((entries, data_bytes))
}

fn check_limit(what: &'static str, value: u64, max: usize) -> Result<(), CanisterStateError> {
    if value > max as u64 {
        return Err(CanisterStateError::LimitExceeded {
            what,
            value,
            max: max as u64,
        });
    }
    Ok(())
}

fn header(kind: u8) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(HEADER_BYTES + 8);
    bytes.extend_from_slice(MAGIC);
    bytes.push(VERSION);
    bytes.push(kind);
    bytes
}

/// A cursor that fails, never panics, on truncated input.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize, what: &'static str) -> Result<&'a [u8], CanisterStateError> {
        if self.bytes.len() < len {
            return Err(CanisterStateError::Truncated {
                what,
                needed: len,
                left: self.bytes.len(),
            });
        }
        let (head, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        Ok(head)
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, CanisterStateError> {
        let mut array = [0; 4];
        array.copy_from_slice(self.take(4, what)?);
        Ok(u32::from_le_bytes(array))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, CanisterStateError> {
        let mut array = [0; 8];
        array.copy_from_slice(self.take(8, what)?);
        Ok(u64::from_le_bytes(array))
    }

    fn header(&mut self, kind: u8) -> Result<(), CanisterStateError> {
        let header = self.take(HEADER_BYTES, "header")?;
        if &header[..MAGIC.len()] != MAGIC {
            return Err(CanisterStateError::BadMagic);
        }
        if header[4] != VERSION {
            return Err(CanisterStateError::UnknownVersion(header[4]));
        }
        if header[5] != kind {
            return Err(CanisterStateError::WrongKind {
                found: header[5],
                expected: kind,
            });
        }
        Ok(())
    }

    fn finish(self) -> Result<(), CanisterStateError> {
        match self.bytes.len() {
            0 => Ok(()),
            left => Err(CanisterStateError::TrailingBytes(left)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries() -> BTreeMap<String, Vec<u8>> {
        [
            ("", &b""[..]),
            ("a", b"1"),
            ("b", b"22"),
            ("zz", &[0xff; 40]),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_vec()))
        .collect()
    }

    #[test]
    fn round_trips_are_the_identity() {
        let bytes = encode_kv_state(&entries());
        let (decoded, data_bytes) = decode_kv_state(&bytes, &KvStateLimits::default()).unwrap();
        assert_eq!(decoded, entries());
        assert_eq!(data_bytes, 1 + 1 + 1 + 2 + 2 + 40);
        assert_eq!(encode_kv_state(&decoded), bytes);
        assert_eq!(
            decode_counter_state(&encode_counter_state(u64::MAX)),
            Ok(u64::MAX)
        );
        assert!(bytes.len() as u64 <= KvStateLimits::default().file_bytes_max());
    }

    #[test]
    fn every_truncation_and_trailing_byte_is_refused() {
        let bytes = encode_kv_state(&entries());
        for len in 0..bytes.len() {
            assert!(decode_kv_state(&bytes[..len], &KvStateLimits::default()).is_err());
        }
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert_eq!(
            decode_kv_state(&trailing, &KvStateLimits::default()),
            Err(CanisterStateError::TrailingBytes(1))
        );
        let counter = encode_counter_state(7);
        assert!(decode_counter_state(&counter[..counter.len() - 1]).is_err());
        // A counter file is not a store file, nor the other way round.
        assert_eq!(
            decode_kv_state(&counter, &KvStateLimits::default()),
            Err(CanisterStateError::WrongKind {
                found: KIND_COUNTER,
                expected: KIND_KV
            })
        );
    }

    #[test]
    fn limits_duplicates_and_order_are_checked() {
        let bytes = encode_kv_state(&entries());
        let tight = KvStateLimits {
            value_bytes_max: 39,
            ..KvStateLimits::default()
        };
        assert_eq!(
            decode_kv_state(&bytes, &tight),
            Err(CanisterStateError::LimitExceeded {
                what: "value length",
                value: 40,
                max: 39
            })
        );
        let few = KvStateLimits {
            keys_max: 3,
            ..KvStateLimits::default()
        };
        assert!(matches!(
            decode_kv_state(&bytes, &few),
            Err(CanisterStateError::LimitExceeded {
                what: "key count",
                ..
            })
        ));
        let small = KvStateLimits {
            store_bytes_max: 46,
            ..KvStateLimits::default()
        };
        assert!(matches!(
            decode_kv_state(&bytes, &small),
            Err(CanisterStateError::LimitExceeded {
                what: "store bytes",
                ..
            })
        ));
        // Two entries "b" then "a": well-formed but not the canonical order.
        let mut swapped = header(KIND_KV);
        swapped.extend_from_slice(&2u64.to_le_bytes());
        for key in [b"b", b"a"] {
            swapped.extend_from_slice(&1u32.to_le_bytes());
            swapped.extend_from_slice(key);
            swapped.extend_from_slice(&0u32.to_le_bytes());
        }
        assert_eq!(
            decode_kv_state(&swapped, &KvStateLimits::default()),
            Err(CanisterStateError::KeysOutOfOrder)
        );
    }
}
