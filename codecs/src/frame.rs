//! The frame: a fixed 16-byte little-endian header, then the envelope (one FlatBuffers table),
//! then the body (raw payload bytes, outside FlatBuffers so that large payloads are read in place
//! and never copied into a builder).
//!
//! | offset | size | field            | value                                              |
//! |-------:|-----:|------------------|----------------------------------------------------|
//! | 0      | 2    | `magic`          | `0x1C4E`                                           |
//! | 2      | 1    | `version`        | `1`                                                |
//! | 3      | 1    | `kind`           | [`FrameKind`]                                      |
//! | 4      | 2    | `flags`          | 0 in version 1; unknown bits are kept and ignored  |
//! | 6      | 2    | `envelope_bytes` | length of the envelope that follows                |
//! | 8      | 8    | `body_bytes`     | length of the body that follows the envelope       |

use crate::error::{DecodeError, EncodeError};

/// Identifies an icn frame; a stream that starts with anything else is not ours.
pub const FRAME_MAGIC: u16 = 0x1C4E;
/// The protocol version this crate speaks. A frame with another version is rejected.
pub const FRAME_VERSION: u8 = 1;
/// Length of the frame header.
pub const FRAME_HEADER_BYTES: usize = 16;

/// What the envelope of a frame is, and so which table it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameKind {
    Request = 1,
    Response = 2,
    Cancel = 3,
    Ping = 4,
    Pong = 5,
    Goaway = 6,
}

impl FrameKind {
    pub const ALL: [FrameKind; 6] = [
        FrameKind::Request,
        FrameKind::Response,
        FrameKind::Cancel,
        FrameKind::Ping,
        FrameKind::Pong,
        FrameKind::Goaway,
    ];

    pub fn from_u8(value: u8) -> Option<FrameKind> {
        FrameKind::ALL.into_iter().find(|kind| *kind as u8 == value)
    }

    pub fn name(self) -> &'static str {
        match self {
            FrameKind::Request => "Request",
            FrameKind::Response => "Response",
            FrameKind::Cancel => "Cancel",
            FrameKind::Ping => "Ping",
            FrameKind::Pong => "Pong",
            FrameKind::Goaway => "Goaway",
        }
    }
}

/// Bounds on the lengths a frame header may announce, checked before anything is read or
/// buffered, so that a peer cannot make us reserve memory it will never fill.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameLimits {
    /// Length of an envelope. Envelopes are a few dozen bytes plus an optional error message;
    /// 4 KiB covers the largest with room to spare. Worst-case memory: one envelope per
    /// stream being read.
    pub envelope_bytes_max: u16,
    /// Length of a body (one request or response payload). Worst-case memory: this much per
    /// request in flight, so the engine multiplies it by its in-flight bound. 32 MiB is above
    /// the largest artifact (blocks of a few MiB) and state-sync chunk (1 MiB).
    pub body_bytes_max: u64,
}

impl FrameLimits {
    pub const ENVELOPE_BYTES_MAX_DEFAULT: u16 = 4 << 10;
    pub const BODY_BYTES_MAX_DEFAULT: u64 = 32 << 20;
}

impl Default for FrameLimits {
    fn default() -> Self {
        FrameLimits {
            envelope_bytes_max: Self::ENVELOPE_BYTES_MAX_DEFAULT,
            body_bytes_max: Self::BODY_BYTES_MAX_DEFAULT,
        }
    }
}

/// A decoded frame header. Magic and version are implied: they are checked on decode and
/// written on encode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub kind: FrameKind,
    pub flags: u16,
    pub envelope_bytes: u16,
    pub body_bytes: u64,
}

impl FrameHeader {
    /// Length of the whole frame: header, envelope and body. Saturates: a body length near
    /// `u64::MAX` is only possible with limits off, and then no buffer is that long anyway.
    pub fn frame_bytes(&self) -> u64 {
        (FRAME_HEADER_BYTES as u64 + u64::from(self.envelope_bytes)).saturating_add(self.body_bytes)
    }

    pub fn encode(&self) -> [u8; FRAME_HEADER_BYTES] {
        let mut out = [0u8; FRAME_HEADER_BYTES];
        out[0..2].copy_from_slice(&FRAME_MAGIC.to_le_bytes());
        out[2] = FRAME_VERSION;
        out[3] = self.kind as u8;
        out[4..6].copy_from_slice(&self.flags.to_le_bytes());
        out[6..8].copy_from_slice(&self.envelope_bytes.to_le_bytes());
        out[8..16].copy_from_slice(&self.body_bytes.to_le_bytes());
        out
    }

    /// Decodes the header at the start of `bytes` (bytes after the header are ignored) and
    /// checks the lengths it announces against `limits`.
    pub fn decode(bytes: &[u8], limits: &FrameLimits) -> Result<FrameHeader, DecodeError> {
        let header: &[u8; FRAME_HEADER_BYTES] = bytes
            .get(..FRAME_HEADER_BYTES)
            .and_then(|prefix| prefix.try_into().ok())
            .ok_or(DecodeError::Truncated {
                needed: FRAME_HEADER_BYTES as u64,
                got: bytes.len() as u64,
            })?;
        let magic = u16::from_le_bytes([header[0], header[1]]);
        if magic != FRAME_MAGIC {
            return Err(DecodeError::BadMagic { found: magic });
        }
        if header[2] != FRAME_VERSION {
            return Err(DecodeError::UnsupportedVersion { found: header[2] });
        }
        let kind = FrameKind::from_u8(header[3])
            .ok_or(DecodeError::UnknownFrameKind { found: header[3] })?;
        let decoded = FrameHeader {
            kind,
            flags: u16::from_le_bytes([header[4], header[5]]),
            envelope_bytes: u16::from_le_bytes([header[6], header[7]]),
            body_bytes: u64::from_le_bytes(
                header[8..16]
                    .try_into()
                    .expect("8-byte slice of a 16-byte array"),
            ),
        };
        decoded.check_limits(limits)?;
        Ok(decoded)
    }

    fn check_limits(&self, limits: &FrameLimits) -> Result<(), DecodeError> {
        if self.envelope_bytes > limits.envelope_bytes_max {
            return Err(DecodeError::LimitExceeded {
                limit: "envelope_bytes_max",
                value: u64::from(self.envelope_bytes),
                max: u64::from(limits.envelope_bytes_max),
            });
        }
        if self.body_bytes > limits.body_bytes_max {
            return Err(DecodeError::LimitExceeded {
                limit: "body_bytes_max",
                value: self.body_bytes,
                max: limits.body_bytes_max,
            });
        }
        Ok(())
    }
}

/// Starts a frame: appends the header and `envelope` to `out` and returns the header. The
/// caller sends the `body_bytes` of body after it (from its own buffer, so the body is never
/// copied here). Flags are 0.
pub fn encode_frame(
    kind: FrameKind,
    envelope: &[u8],
    body_bytes: u64,
    out: &mut Vec<u8>,
) -> Result<FrameHeader, EncodeError> {
    let envelope_bytes = u16::try_from(envelope.len()).map_err(|_| EncodeError::LimitExceeded {
        limit: "envelope_bytes (u16 header field)",
        value: envelope.len() as u64,
        max: u64::from(u16::MAX),
    })?;
    let header = FrameHeader {
        kind,
        flags: 0,
        envelope_bytes,
        body_bytes,
    };
    out.reserve(FRAME_HEADER_BYTES + envelope.len());
    out.extend_from_slice(&header.encode());
    out.extend_from_slice(envelope);
    Ok(header)
}

/// Splits the frame at the start of `bytes` into its header, envelope and body. `bytes` must
/// hold the whole frame; bytes after it (the next frame on a TCP stream) are left alone, and
/// `header.frame_bytes()` says where the next frame starts. Lengths are checked against
/// `limits` from the header alone, before the caller waits for more bytes.
pub fn split_frame<'a>(
    bytes: &'a [u8],
    limits: &FrameLimits,
) -> Result<(FrameHeader, &'a [u8], &'a [u8]), DecodeError> {
    let header = FrameHeader::decode(bytes, limits)?;
    let truncated = DecodeError::Truncated {
        needed: header.frame_bytes(),
        got: bytes.len() as u64,
    };
    let frame_bytes = usize::try_from(header.frame_bytes()).map_err(|_| truncated.clone())?;
    if bytes.len() < frame_bytes {
        return Err(truncated);
    }
    let envelope_end = FRAME_HEADER_BYTES + usize::from(header.envelope_bytes);
    Ok((
        header,
        &bytes[FRAME_HEADER_BYTES..envelope_end],
        &bytes[envelope_end..frame_bytes],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn any_kind() -> impl Strategy<Value = FrameKind> {
        proptest::sample::select(FrameKind::ALL.to_vec())
    }

    fn unlimited() -> FrameLimits {
        FrameLimits {
            envelope_bytes_max: u16::MAX,
            body_bytes_max: u64::MAX,
        }
    }

    fn sample_header() -> FrameHeader {
        FrameHeader {
            kind: FrameKind::Request,
            flags: 0,
            envelope_bytes: 10,
            body_bytes: 3,
        }
    }

    proptest! {
        #[test]
        fn header_round_trips(kind in any_kind(), flags: u16, envelope_bytes: u16, body_bytes: u64) {
            let header = FrameHeader { kind, flags, envelope_bytes, body_bytes };
            let encoded = header.encode();
            prop_assert_eq!(FrameHeader::decode(&encoded, &unlimited()), Ok(header));
        }

        #[test]
        fn frame_round_trips(kind in any_kind(), envelope in proptest::collection::vec(any::<u8>(), 0..64),
                             body in proptest::collection::vec(any::<u8>(), 0..64),
                             next in proptest::collection::vec(any::<u8>(), 0..8)) {
            let mut wire = Vec::new();
            let header = encode_frame(kind, &envelope, body.len() as u64, &mut wire).unwrap();
            wire.extend_from_slice(&body);
            wire.extend_from_slice(&next);
            let (decoded, decoded_envelope, decoded_body) = split_frame(&wire, &FrameLimits::default()).unwrap();
            prop_assert_eq!(decoded, header);
            prop_assert_eq!(decoded_envelope, &envelope[..]);
            prop_assert_eq!(decoded_body, &body[..]);
            prop_assert_eq!(decoded.frame_bytes() as usize, wire.len() - next.len());
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            let _ = split_frame(&bytes, &FrameLimits::default());
        }

        #[test]
        fn every_truncation_is_reported(cut in 0usize..29) {
            let mut wire = Vec::new();
            encode_frame(FrameKind::Response, &[7; 10], 3, &mut wire).unwrap();
            wire.extend_from_slice(&[1, 2, 3]);
            prop_assert_eq!(wire.len(), 29);
            let needed = if cut < FRAME_HEADER_BYTES { FRAME_HEADER_BYTES as u64 } else { 29 };
            prop_assert_eq!(
                split_frame(&wire[..cut], &FrameLimits::default()),
                Err(DecodeError::Truncated { needed, got: cut as u64 })
            );
        }
    }

    #[test]
    fn layout_is_little_endian_and_fixed() {
        let header = FrameHeader {
            kind: FrameKind::Goaway,
            flags: 0x0102,
            envelope_bytes: 0x0304,
            body_bytes: 0x05060708090a0b0c,
        };
        assert_eq!(
            header.encode(),
            [
                0x4e, 0x1c, 1, 6, 0x02, 0x01, 0x04, 0x03, 0x0c, 0x0b, 0x0a, 0x09, 0x08, 0x07, 0x06,
                0x05
            ]
        );
    }

    #[test]
    fn bad_magic_version_and_kind_are_typed() {
        let limits = FrameLimits::default();
        let good = sample_header().encode();
        let mut bad = good;
        bad[0] = 0;
        assert_eq!(
            FrameHeader::decode(&bad, &limits),
            Err(DecodeError::BadMagic { found: 0x1c00 })
        );
        let mut bad = good;
        bad[2] = 2;
        assert_eq!(
            FrameHeader::decode(&bad, &limits),
            Err(DecodeError::UnsupportedVersion { found: 2 })
        );
        for kind in [0, 7, 255] {
            let mut bad = good;
            bad[3] = kind;
            assert_eq!(
                FrameHeader::decode(&bad, &limits),
                Err(DecodeError::UnknownFrameKind { found: kind })
            );
        }
    }

    #[test]
    fn oversized_lengths_are_rejected_from_the_header_alone() {
        let limits = FrameLimits {
            envelope_bytes_max: 100,
            body_bytes_max: 1000,
        };
        let header = FrameHeader {
            envelope_bytes: 101,
            ..sample_header()
        };
        assert_eq!(
            FrameHeader::decode(&header.encode(), &limits),
            Err(DecodeError::LimitExceeded {
                limit: "envelope_bytes_max",
                value: 101,
                max: 100
            })
        );
        let header = FrameHeader {
            body_bytes: u64::MAX,
            ..sample_header()
        };
        assert_eq!(
            split_frame(&header.encode(), &limits),
            Err(DecodeError::LimitExceeded {
                limit: "body_bytes_max",
                value: u64::MAX,
                max: 1000
            })
        );
    }

    #[test]
    fn huge_frame_lengths_do_not_overflow() {
        let header = FrameHeader {
            envelope_bytes: u16::MAX,
            body_bytes: u64::MAX - 8,
            ..sample_header()
        };
        let bytes = header.encode();
        let result = split_frame(&bytes, &unlimited());
        assert!(
            matches!(result, Err(DecodeError::Truncated { got: 16, .. })),
            "{result:?}"
        );
    }

    #[test]
    fn envelope_longer_than_u16_cannot_be_encoded() {
        let mut out = Vec::new();
        let result = encode_frame(FrameKind::Request, &vec![0; 70_000], 0, &mut out);
        assert!(matches!(
            result,
            Err(EncodeError::LimitExceeded { value: 70_000, .. })
        ));
        assert!(out.is_empty());
    }
}
