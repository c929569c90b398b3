//! Principals: the IC's identifiers of users, canisters, subnets and nodes.
//!
//! A principal is 0 to 29 opaque bytes whose last byte says what kind it is: 0x01 for an opaque
//! id the system assigns (canisters), 0x02 for a self-authenticating id (derived from a public
//! key), 0x04 for the anonymous user; the management canister is the empty principal.
//!
//! The textual form is what people paste: CRC-32 (IEEE) of the bytes, big-endian, followed by
//! the bytes, in lowercase RFC 4648 base32 without padding, with a dash after every five
//! characters (`2vxsx-fae` is the anonymous principal). Parsing accepts upper case but otherwise
//! only the exact canonical form, so one principal has exactly one accepted spelling.

use std::fmt;

use sha2::{Digest, Sha224};

/// The longest principal, in bytes.
pub const PRINCIPAL_BYTES_MAX: usize = 29;
/// The longest textual principal: 4 + 29 bytes are 53 base32 characters, plus 10 dashes.
pub const PRINCIPAL_TEXT_CHARS_MAX: usize = 63;

const TAG_OPAQUE: u8 = 0x01;
const TAG_SELF_AUTHENTICATING: u8 = 0x02;
const TAG_ANONYMOUS: u8 = 0x04;

/// An IC principal, stored inline (it is small and copied freely).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Principal {
    len: u8,
    bytes: [u8; PRINCIPAL_BYTES_MAX],
}

/// Why bytes or text are not a principal.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PrincipalError {
    /// More than 29 bytes, or text longer than the longest principal's.
    #[error("principal too long: {len} (at most {max})")]
    TooLong { len: usize, max: usize },
    /// Text that decodes to fewer than the 4 bytes of the checksum.
    #[error("principal text too short")]
    TooShort,
    /// A character outside base32 and the dash.
    #[error("invalid character {found:?} at position {position} of principal text")]
    BadChar { found: char, position: usize },
    /// The checksum does not match the bytes: a typo.
    #[error("principal text checksum mismatch: expected {expected:08x}, found {found:08x}")]
    BadChecksum { expected: u32, found: u32 },
    /// Valid characters and checksum, but dashes in the wrong places or non-zero padding bits:
    /// not the one canonical spelling.
    #[error("principal text is not in canonical form (expected {canonical})")]
    NotCanonical { canonical: String },
}

impl Principal {
    /// The management canister (`aaaaa-aa`): the empty principal.
    pub const MANAGEMENT_CANISTER: Principal = Principal {
        len: 0,
        bytes: [0; PRINCIPAL_BYTES_MAX],
    };

    /// The anonymous user (`2vxsx-fae`), whose requests carry no signature.
    pub const ANONYMOUS: Principal = {
        let mut bytes = [0; PRINCIPAL_BYTES_MAX];
        bytes[0] = TAG_ANONYMOUS;
        Principal { len: 1, bytes }
    };

    /// A principal from its raw bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Principal, PrincipalError> {
        if bytes.len() > PRINCIPAL_BYTES_MAX {
            return Err(PrincipalError::TooLong {
                len: bytes.len(),
                max: PRINCIPAL_BYTES_MAX,
            });
        }
        let mut inline = [0; PRINCIPAL_BYTES_MAX];
        inline[..bytes.len()].copy_from_slice(bytes);
        Ok(Principal {
            len: bytes.len() as u8,
            bytes: inline,
        })
    }

    /// The self-authenticating principal of a DER-encoded public key: SHA-224 of the key
    /// followed by 0x02. Signed requests must name this as their sender, which is how the IC
    /// binds a sender to the key that signed.
    pub fn self_authenticating(der_public_key: &[u8]) -> Principal {
        let digest = Sha224::digest(der_public_key);
        let mut bytes = [0; PRINCIPAL_BYTES_MAX];
        bytes[..28].copy_from_slice(&digest);
        bytes[28] = TAG_SELF_AUTHENTICATING;
        Principal {
            len: PRINCIPAL_BYTES_MAX as u8,
            bytes,
        }
    }

    /// An opaque id as the IC assigns to canisters: a big-endian 64-bit index followed by the
    /// tag bytes 0x01 0x01 (`rwlgt-iiaaa-aaaaa-aaaaa-cai` is index 0).
    pub fn from_canister_index(index: u64) -> Principal {
        let mut bytes = [0; PRINCIPAL_BYTES_MAX];
        bytes[..8].copy_from_slice(&index.to_be_bytes());
        bytes[8] = TAG_OPAQUE;
        bytes[9] = TAG_OPAQUE;
        Principal { len: 10, bytes }
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    pub fn is_anonymous(&self) -> bool {
        *self == Principal::ANONYMOUS
    }

    /// Whether this is a self-authenticating id (and so the hash of some public key).
    pub fn is_self_authenticating(&self) -> bool {
        usize::from(self.len) == PRINCIPAL_BYTES_MAX
            && self.bytes[PRINCIPAL_BYTES_MAX - 1] == TAG_SELF_AUTHENTICATING
    }

    /// Parses the textual form; see the module documentation for what is accepted.
    pub fn from_text(text: &str) -> Result<Principal, PrincipalError> {
        if text.len() > PRINCIPAL_TEXT_CHARS_MAX {
            return Err(PrincipalError::TooLong {
                len: text.len(),
                max: PRINCIPAL_TEXT_CHARS_MAX,
            });
        }
        // 4 + 29 bytes, the most 53 base32 characters can carry.
        let mut raw = [0u8; 4 + PRINCIPAL_BYTES_MAX];
        let mut raw_len = 0;
        let mut buffer: u32 = 0;
        let mut bits = 0;
        for (position, found) in text.chars().enumerate() {
            if found == '-' {
                continue;
            }
            let value = match found.to_ascii_lowercase() {
                c @ 'a'..='z' => c as u32 - 'a' as u32,
                c @ '2'..='7' => c as u32 - '2' as u32 + 26,
                _ => return Err(PrincipalError::BadChar { found, position }),
            };
            buffer = (buffer << 5) | value;
            bits += 5;
            if bits >= 8 {
                bits -= 8;
                // At most 63 characters of which at most 53 are digits: 53*5/8 = 33 bytes.
                if raw_len == raw.len() {
                    return Err(PrincipalError::TooLong {
                        len: raw_len + 1 - 4,
                        max: PRINCIPAL_BYTES_MAX,
                    });
                }
                raw[raw_len] = (buffer >> bits) as u8;
                raw_len += 1;
                buffer &= (1 << bits) - 1;
            }
        }
        if raw_len < 4 {
            return Err(PrincipalError::TooShort);
        }
        let principal = Principal::from_slice(&raw[4..raw_len])?;
        let found = u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]);
        let expected = crc32(principal.as_slice());
        if found != expected {
            return Err(PrincipalError::BadChecksum { expected, found });
        }
        // Compared on the stack: the API routes every request by a principal in its path.
        let mut canonical = [0u8; PRINCIPAL_TEXT_CHARS_MAX];
        let len = principal.write_text(expected, &mut canonical);
        if !canonical[..len].eq_ignore_ascii_case(text.as_bytes()) {
            return Err(PrincipalError::NotCanonical {
                canonical: principal.to_string(),
            });
        }
        Ok(principal)
    }

    /// Writes the textual form into `out` (its CRC-32 given) and returns its length: base32 of
    /// the checksum and the bytes, lower case, a dash after every five characters.
    fn write_text(&self, crc: u32, out: &mut [u8; PRINCIPAL_TEXT_CHARS_MAX]) -> usize {
        const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
        let mut raw = [0u8; 4 + PRINCIPAL_BYTES_MAX];
        raw[..4].copy_from_slice(&crc.to_be_bytes());
        let raw_len = 4 + usize::from(self.len);
        raw[4..raw_len].copy_from_slice(self.as_slice());
        let mut buffer: u32 = 0;
        let mut bits = 0;
        let mut digits = 0;
        let mut len = 0;
        let mut emit = |index: u32| {
            if digits > 0 && digits % 5 == 0 {
                out[len] = b'-';
                len += 1;
            }
            digits += 1;
            out[len] = ALPHABET[index as usize];
            len += 1;
        };
        for &byte in &raw[..raw_len] {
            buffer = (buffer << 8) | u32::from(byte);
            bits += 8;
            while bits >= 5 {
                bits -= 5;
                emit((buffer >> bits) & 31);
            }
            buffer &= (1 << bits) - 1;
        }
        if bits > 0 {
            emit((buffer << (5 - bits)) & 31);
        }
        len
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = [0u8; PRINCIPAL_TEXT_CHARS_MAX];
        let len = self.write_text(crc32(self.as_slice()), &mut text);
        // write_text emits only ASCII from its alphabet and dashes.
        f.write_str(std::str::from_utf8(&text[..len]).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Principal({self})")
    }
}

/// CRC-32 as in zlib and Ethernet (reflected polynomial 0xEDB88320), bit by bit: principals are
/// at most 29 bytes, so a table would buy nothing.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn known_principals() {
        assert_eq!(Principal::ANONYMOUS.to_string(), "2vxsx-fae");
        assert_eq!(Principal::MANAGEMENT_CANISTER.to_string(), "aaaaa-aa");
        assert_eq!(
            Principal::from_canister_index(0).to_string(),
            "rwlgt-iiaaa-aaaaa-aaaaa-cai"
        );
        // The ICP ledger and the first canister a local replica creates.
        assert_eq!(
            Principal::from_canister_index(2).to_string(),
            "ryjl3-tyaaa-aaaaa-aaaba-cai"
        );
        assert_eq!(
            Principal::from_canister_index(1).to_string(),
            "rrkah-fqaaa-aaaaa-aaaaq-cai"
        );
        for text in [
            "2vxsx-fae",
            "aaaaa-aa",
            "rwlgt-iiaaa-aaaaa-aaaaa-cai",
            "ryjl3-tyaaa-aaaaa-aaaba-cai",
        ] {
            assert_eq!(Principal::from_text(text).unwrap().to_string(), text);
        }
        assert_eq!(Principal::from_text("2VXSX-FAE"), Ok(Principal::ANONYMOUS));
    }

    #[test]
    fn self_authenticating_ids_hash_the_key() {
        let key =
            b"\x30\x2a\x30\x05\x06\x03\x2b\x65\x70\x03\x21\x00 thirty-two bytes of public key!";
        let id = Principal::self_authenticating(key);
        assert!(id.is_self_authenticating());
        assert_eq!(id.as_slice().len(), 29);
        assert_eq!(&id.as_slice()[..28], &Sha224::digest(key)[..]);
        assert_eq!(Principal::from_text(&id.to_string()), Ok(id));
        // Of the empty key: SHA-224("") (the standard test vector) followed by 0x02.
        let empty: String = Principal::self_authenticating(b"")
            .as_slice()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            empty,
            "d14a028c2a3a2bc9476102bb288234c415a2b01f828ea62ac5b3e42f02"
        );
        // 29 bytes is the longest: 63 characters of text.
        assert_eq!(id.to_string().len(), PRINCIPAL_TEXT_CHARS_MAX);
    }

    #[test]
    fn bad_text_is_rejected_with_the_reason() {
        assert!(matches!(
            Principal::from_text("2vxsx-fag"),
            Err(PrincipalError::BadChecksum { .. } | PrincipalError::NotCanonical { .. })
        ));
        assert_eq!(
            Principal::from_text("2vxsx-fa1"),
            Err(PrincipalError::BadChar {
                found: '1',
                position: 8
            })
        );
        assert!(matches!(
            Principal::from_text("2vxs-xfae"),
            Err(PrincipalError::NotCanonical { .. })
        ));
        assert!(matches!(
            Principal::from_text("2vxsxfae"),
            Err(PrincipalError::NotCanonical { .. })
        ));
        assert_eq!(Principal::from_text(""), Err(PrincipalError::TooShort));
        assert_eq!(Principal::from_text("aaaaa"), Err(PrincipalError::TooShort));
        assert!(matches!(
            Principal::from_text(&"a".repeat(64)),
            Err(PrincipalError::TooLong { .. })
        ));
        // 60 base32 digits without dashes: within the character bound, over the byte bound.
        assert!(matches!(
            Principal::from_text(&"a".repeat(60)),
            Err(PrincipalError::TooLong { .. })
        ));
        assert!(matches!(
            Principal::from_slice(&[0; 30]),
            Err(PrincipalError::TooLong { len: 30, max: 29 })
        ));
        // A checksum typo: flip one character of a canister id.
        assert!(matches!(
            Principal::from_text("rwlgt-iiaaa-aaaaa-aaaab-cai"),
            Err(PrincipalError::BadChecksum { .. })
        ));
    }
}
