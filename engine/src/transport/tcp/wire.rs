//! TCP framing: a 16-byte header, a small envelope, then the body.
//!
//! The header has the layout of `icn_codecs::frame` (magic `0x1C4E`, version 1, kind, flags,
//! envelope length u16, body length u64, little-endian). The envelope is a fixed 28-byte record
//! until the FlatBuffers envelope from `icn-codecs` lands; everything that knows the envelope's
//! encoding is in this module so that the switch touches nothing else.
//!
//! Decoding is sans-I/O: [`FrameReader::want`] hands out the slice to fill next (header, envelope,
//! or the body `Vec` allocated once at its announced size after the limit check), so TLS decrypts
//! a body straight into its final buffer.

use crate::transport::{Priority, Route, RpcError};

pub const FRAME_MAGIC: u16 = 0x1C4E;
pub const FRAME_VERSION: u8 = 1;
pub const FRAME_HEADER_BYTES: usize = 16;
/// Length of the fixed envelope this module writes.
pub const ENVELOPE_BYTES: usize = 28;
/// Longest envelope accepted (longer ones may carry fields a newer version added; they are read
/// and ignored). Bounds the per-connection envelope buffer.
pub const ENVELOPE_BYTES_MAX: usize = 4 << 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    Request = 1,
    Response = 2,
    Cancel = 3,
    Ping = 4,
    Pong = 5,
}

impl FrameKind {
    fn from_u8(value: u8) -> Option<FrameKind> {
        [
            Self::Request,
            Self::Response,
            Self::Cancel,
            Self::Ping,
            Self::Pong,
        ]
        .into_iter()
        .find(|kind| *kind as u8 == value)
    }
}

/// Outcome carried by a response envelope; the body is the payload (Ok) or a UTF-8 detail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Status {
    Ok = 0,
    NoRoute = 1,
    MessageTooLarge = 2,
    TooManyInFlight = 3,
    Handler = 4,
    Timeout = 5,
    Cancelled = 6,
}

/// The per-frame metadata.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Envelope {
    pub request_id: u64,
    pub route: Route,
    pub priority: Priority,
    status: Status,
    detail_a: u64,
    detail_b: u64,
}

impl Envelope {
    pub fn request(request_id: u64, route: Route, priority: Priority) -> Envelope {
        Envelope {
            request_id,
            route,
            priority,
            status: Status::Ok,
            detail_a: 0,
            detail_b: 0,
        }
    }

    /// A control frame (cancel, ping, pong) about `request_id` (0 when none).
    pub fn control(request_id: u64) -> Envelope {
        Envelope::request(request_id, Route(0), Priority::High)
    }

    /// A response envelope for `result`, and the body to send after it.
    pub fn response(
        request: &Envelope,
        result: Result<crate::Buf, RpcError>,
    ) -> (Envelope, crate::Buf) {
        let mut envelope = Envelope {
            status: Status::Ok,
            ..*request
        };
        let body = match result {
            Ok(body) => return (envelope, body),
            Err(RpcError::NoRoute(route)) => {
                envelope.status = Status::NoRoute;
                envelope.detail_a = u64::from(route.0);
                crate::Buf::empty()
            }
            Err(RpcError::MessageTooLarge {
                size_bytes,
                limit_bytes,
            }) => {
                envelope.status = Status::MessageTooLarge;
                (envelope.detail_a, envelope.detail_b) = (size_bytes, limit_bytes);
                crate::Buf::empty()
            }
            Err(RpcError::TooManyInFlight { limit }) => {
                envelope.status = Status::TooManyInFlight;
                envelope.detail_a = limit as u64;
                crate::Buf::empty()
            }
            Err(RpcError::Timeout) => {
                envelope.status = Status::Timeout;
                crate::Buf::empty()
            }
            Err(RpcError::Cancelled) => {
                envelope.status = Status::Cancelled;
                crate::Buf::empty()
            }
            Err(RpcError::Handler(message)) => {
                envelope.status = Status::Handler;
                crate::Buf::copy_from_slice(message.as_bytes())
            }
            // Everything else is the serving node's own failure; the caller sees its text.
            Err(other) => {
                envelope.status = Status::Handler;
                crate::Buf::copy_from_slice(other.to_string().as_bytes())
            }
        };
        (envelope, body)
    }

    /// The caller's view of a response frame.
    pub fn into_result(self, body: crate::Buf) -> Result<crate::Buf, RpcError> {
        match self.status {
            Status::Ok => Ok(body),
            Status::NoRoute => Err(RpcError::NoRoute(Route(self.detail_a as u16))),
            Status::MessageTooLarge => Err(RpcError::MessageTooLarge {
                size_bytes: self.detail_a,
                limit_bytes: self.detail_b,
            }),
            Status::TooManyInFlight => Err(RpcError::TooManyInFlight {
                limit: self.detail_a as usize,
            }),
            Status::Handler => Err(RpcError::Handler(
                String::from_utf8_lossy(&body).into_owned(),
            )),
            Status::Timeout => Err(RpcError::Timeout),
            Status::Cancelled => Err(RpcError::Cancelled),
        }
    }

    fn encode(&self) -> [u8; ENVELOPE_BYTES] {
        let mut out = [0u8; ENVELOPE_BYTES];
        out[0..8].copy_from_slice(&self.request_id.to_le_bytes());
        out[8..10].copy_from_slice(&self.route.0.to_le_bytes());
        out[10] = self.priority as u8;
        out[11] = self.status as u8;
        out[12..20].copy_from_slice(&self.detail_a.to_le_bytes());
        out[20..28].copy_from_slice(&self.detail_b.to_le_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Result<Envelope, WireError> {
        let field = |range: std::ops::Range<usize>| -> Result<&[u8], WireError> {
            bytes
                .get(range)
                .ok_or(WireError::Truncated { what: "envelope" })
        };
        let u64_at = |at: usize| -> Result<u64, WireError> {
            Ok(u64::from_le_bytes(
                field(at..at + 8)?.try_into().expect("8 bytes"),
            ))
        };
        let route = Route(u16::from_le_bytes(
            field(8..10)?.try_into().expect("2 bytes"),
        ));
        let priority = match field(10..11)?[0] {
            0 => Priority::Low,
            1 => Priority::Normal,
            2 => Priority::High,
            other => {
                return Err(WireError::BadField {
                    field: "priority",
                    value: u64::from(other),
                })
            }
        };
        let status = match field(11..12)?[0] {
            0 => Status::Ok,
            1 => Status::NoRoute,
            2 => Status::MessageTooLarge,
            3 => Status::TooManyInFlight,
            4 => Status::Handler,
            5 => Status::Timeout,
            6 => Status::Cancelled,
            other => {
                return Err(WireError::BadField {
                    field: "status",
                    value: u64::from(other),
                })
            }
        };
        Ok(Envelope {
            request_id: u64_at(0)?,
            route,
            priority,
            status,
            detail_a: u64_at(12)?,
            detail_b: u64_at(20)?,
        })
    }
}

/// Encodes the header and envelope of a frame whose body of `body_bytes` follows.
pub fn encode_head(
    kind: FrameKind,
    envelope: &Envelope,
    body_bytes: u64,
) -> [u8; FRAME_HEADER_BYTES + ENVELOPE_BYTES] {
    let mut out = [0u8; FRAME_HEADER_BYTES + ENVELOPE_BYTES];
    out[0..2].copy_from_slice(&FRAME_MAGIC.to_le_bytes());
    out[2] = FRAME_VERSION;
    out[3] = kind as u8;
    // out[4..6]: flags, 0 in version 1.
    out[6..8].copy_from_slice(&(ENVELOPE_BYTES as u16).to_le_bytes());
    out[8..16].copy_from_slice(&body_bytes.to_le_bytes());
    out[FRAME_HEADER_BYTES..].copy_from_slice(&envelope.encode());
    out
}

/// Why a peer's bytes were refused. Every variant is the peer's fault.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("bad frame magic {0:#06x}")]
    BadMagic(u16),
    #[error("unsupported frame version {0}")]
    BadVersion(u8),
    #[error("unknown frame kind {0}")]
    BadKind(u8),
    #[error("bad {field} {value}")]
    BadField { field: &'static str, value: u64 },
    #[error("truncated {what}")]
    Truncated { what: &'static str },
    #[error("{what} of {value} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        what: &'static str,
        value: u64,
        max: u64,
    },
}

/// One received frame.
#[derive(Debug)]
pub struct Frame {
    pub kind: FrameKind,
    pub envelope: Envelope,
    pub body: Vec<u8>,
}

#[derive(Clone, Copy)]
struct Header {
    kind: FrameKind,
    envelope_bytes: usize,
    body_bytes: u64,
}

enum Stage {
    Header,
    Envelope(Header),
    Body(FrameKind, Envelope),
}

/// Reassembles frames from a byte stream, checking every length before buffering anything.
pub struct FrameReader {
    /// Largest body accepted (the transport's `message_bytes_max`).
    body_bytes_max: u64,
    stage: Stage,
    head: [u8; FRAME_HEADER_BYTES],
    envelope: Vec<u8>,
    body: Vec<u8>,
    filled: usize,
}

impl FrameReader {
    pub fn new(body_bytes_max: u64) -> FrameReader {
        FrameReader {
            body_bytes_max,
            stage: Stage::Header,
            head: [0; FRAME_HEADER_BYTES],
            envelope: Vec::new(),
            body: Vec::new(),
            filled: 0,
        }
    }

    /// True between frames (a stream may end here without losing anything).
    pub fn is_idle(&self) -> bool {
        matches!(self.stage, Stage::Header) && self.filled == 0
    }

    /// The buffer to fill next; never empty.
    pub fn want(&mut self) -> &mut [u8] {
        let filled = self.filled;
        match self.stage {
            Stage::Header => &mut self.head[filled..],
            Stage::Envelope(_) => &mut self.envelope[filled..],
            Stage::Body(..) => &mut self.body[filled..],
        }
    }

    /// Records that `n` bytes of [`FrameReader::want`] were filled; returns a frame when one is
    /// complete.
    pub fn advance(&mut self, n: usize) -> Result<Option<Frame>, WireError> {
        self.filled += n;
        let target = match self.stage {
            Stage::Header => FRAME_HEADER_BYTES,
            Stage::Envelope(_) => self.envelope.len(),
            Stage::Body(..) => self.body.len(),
        };
        assert!(self.filled <= target, "filled past the wanted buffer");
        if self.filled < target {
            return Ok(None);
        }
        self.filled = 0;
        match self.stage {
            Stage::Header => {
                let header = decode_header(&self.head, self.body_bytes_max)?;
                self.envelope.clear();
                self.envelope.resize(header.envelope_bytes, 0);
                self.stage = Stage::Envelope(header);
                Ok(None)
            }
            Stage::Envelope(header) => {
                let envelope = Envelope::decode(&self.envelope)?;
                // Allocated once at the announced size, which the limit check has bounded.
                self.body = vec![0; header.body_bytes as usize];
                self.stage = Stage::Body(header.kind, envelope);
                if self.body.is_empty() {
                    return Ok(Some(self.take_frame()));
                }
                Ok(None)
            }
            Stage::Body(..) => Ok(Some(self.take_frame())),
        }
    }

    fn take_frame(&mut self) -> Frame {
        let Stage::Body(kind, envelope) = std::mem::replace(&mut self.stage, Stage::Header) else {
            unreachable!("take_frame outside the body stage");
        };
        Frame {
            kind,
            envelope,
            body: std::mem::take(&mut self.body),
        }
    }
}

fn decode_header(
    head: &[u8; FRAME_HEADER_BYTES],
    body_bytes_max: u64,
) -> Result<Header, WireError> {
    let magic = u16::from_le_bytes([head[0], head[1]]);
    if magic != FRAME_MAGIC {
        return Err(WireError::BadMagic(magic));
    }
    if head[2] != FRAME_VERSION {
        return Err(WireError::BadVersion(head[2]));
    }
    let kind = FrameKind::from_u8(head[3]).ok_or(WireError::BadKind(head[3]))?;
    let envelope_bytes = u16::from_le_bytes([head[6], head[7]]) as usize;
    if !(ENVELOPE_BYTES..=ENVELOPE_BYTES_MAX).contains(&envelope_bytes) {
        return Err(WireError::BadField {
            field: "envelope_bytes",
            value: envelope_bytes as u64,
        });
    }
    let body_bytes = u64::from_le_bytes(head[8..16].try_into().expect("8 bytes"));
    if body_bytes > body_bytes_max {
        return Err(WireError::TooLarge {
            what: "body",
            value: body_bytes,
            max: body_bytes_max,
        });
    }
    Ok(Header {
        kind,
        envelope_bytes,
        body_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Buf;

    /// Feeds `bytes` in pieces of at most `step` bytes; returns the frames and the first error.
    fn feed(
        reader: &mut FrameReader,
        bytes: &[u8],
        step: usize,
    ) -> (Vec<Frame>, Option<WireError>) {
        let mut frames = Vec::new();
        let mut rest = bytes;
        while !rest.is_empty() {
            let want = reader.want();
            let n = want.len().min(step).min(rest.len());
            want[..n].copy_from_slice(&rest[..n]);
            rest = &rest[n..];
            match reader.advance(n) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => {}
                Err(error) => return (frames, Some(error)),
            }
        }
        (frames, None)
    }

    fn frame_bytes(kind: FrameKind, envelope: &Envelope, body: &[u8]) -> Vec<u8> {
        let mut out = encode_head(kind, envelope, body.len() as u64).to_vec();
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn frames_round_trip_in_any_split() {
        let request = Envelope::request(7, Route(3), Priority::Low);
        let mut stream = frame_bytes(FrameKind::Request, &request, b"hello");
        stream.extend(frame_bytes(FrameKind::Ping, &Envelope::control(0), b""));
        for step in [1, 3, 16, 1000] {
            let mut reader = FrameReader::new(1 << 20);
            let (frames, error) = feed(&mut reader, &stream, step);
            assert_eq!(error, None);
            assert_eq!(frames.len(), 2);
            assert_eq!(frames[0].kind, FrameKind::Request);
            assert_eq!(frames[0].envelope, request);
            assert_eq!(frames[0].body, b"hello");
            assert_eq!(frames[1].kind, FrameKind::Ping);
            assert!(reader.is_idle());
        }
    }

    #[test]
    fn truncated_streams_leave_the_reader_mid_frame() {
        let stream = frame_bytes(FrameKind::Request, &Envelope::control(1), b"abc");
        for cut in 1..stream.len() {
            let mut reader = FrameReader::new(1 << 20);
            let (frames, error) = feed(&mut reader, &stream[..cut], 5);
            assert!(frames.is_empty() && error.is_none());
            assert!(!reader.is_idle(), "cut at {cut} must be seen as truncated");
        }
    }

    #[test]
    fn oversized_and_malformed_headers_are_refused() {
        let big = encode_head(FrameKind::Request, &Envelope::control(1), 1 << 30);
        let mut reader = FrameReader::new(1 << 20);
        let (_, error) = feed(&mut reader, &big, 64);
        assert_eq!(
            error,
            Some(WireError::TooLarge {
                what: "body",
                value: 1 << 30,
                max: 1 << 20
            })
        );

        let mut bad = encode_head(FrameKind::Request, &Envelope::control(1), 0);
        bad[0] = 0;
        assert!(matches!(
            feed(&mut FrameReader::new(64), &bad, 64).1,
            Some(WireError::BadMagic(_))
        ));
        let mut bad = encode_head(FrameKind::Request, &Envelope::control(1), 0);
        bad[3] = 99;
        assert_eq!(
            feed(&mut FrameReader::new(64), &bad, 64).1,
            Some(WireError::BadKind(99))
        );
        let mut bad = encode_head(FrameKind::Request, &Envelope::control(1), 0);
        bad[6..8].copy_from_slice(&u16::MAX.to_le_bytes());
        assert!(matches!(
            feed(&mut FrameReader::new(64), &bad, 64).1,
            Some(WireError::BadField { .. })
        ));
        let mut bad = encode_head(FrameKind::Request, &Envelope::control(1), 0);
        bad[FRAME_HEADER_BYTES + 10] = 9;
        assert!(matches!(
            feed(&mut FrameReader::new(64), &bad, 64).1,
            Some(WireError::BadField { .. })
        ));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..2000 {
            let mut bytes = vec![0u8; 64];
            for byte in &mut bytes {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                *byte = state as u8;
            }
            // Mostly valid prefixes, so that the envelope and body paths are reached too.
            if state.is_multiple_of(2) {
                bytes[..2].copy_from_slice(&FRAME_MAGIC.to_le_bytes());
                bytes[2] = FRAME_VERSION;
                bytes[3] = 1 + (state % 5) as u8;
                bytes[6..8].copy_from_slice(&(ENVELOPE_BYTES as u16).to_le_bytes());
            }
            let _ = feed(&mut FrameReader::new(32), &bytes, 7);
        }
    }

    #[test]
    fn errors_survive_the_wire() {
        let request = Envelope::request(5, Route(9), Priority::Normal);
        let cases = [
            RpcError::NoRoute(Route(9)),
            RpcError::MessageTooLarge {
                size_bytes: 10,
                limit_bytes: 5,
            },
            RpcError::TooManyInFlight { limit: 4 },
            RpcError::Handler("boom".into()),
            RpcError::Timeout,
            RpcError::Cancelled,
        ];
        for error in cases {
            let (envelope, body) = Envelope::response(&request, Err(error.clone()));
            let decoded = Envelope::decode(&envelope.encode()).unwrap();
            assert_eq!(decoded.into_result(body), Err(error));
        }
        let (envelope, body) = Envelope::response(&request, Ok(Buf::copy_from_slice(b"ok")));
        assert_eq!(
            envelope.into_result(body).unwrap(),
            Buf::copy_from_slice(b"ok")
        );
    }
}
