//! TCP framing on top of `icn-codecs`: the 16-byte frame header, the FlatBuffers envelope, then
//! the raw body (docs/protocol.md, "TCP").
//!
//! [`Envelope`] is the owned form of a codecs envelope: it sits in a send queue until the writer
//! encodes it with the connection's one [`icn_codecs::Encoder`] straight into the buffer that goes
//! to TLS, and a received envelope outlives the bytes it was decoded from.
//!
//! Decoding is sans-I/O: [`FrameReader::want`] hands out the slice to fill next (header, envelope,
//! or the body `Vec` allocated once at its announced size after the limit check), so TLS decrypts
//! a body straight into its final buffer.

use icn_codecs::{
    decode_envelope, CodecLimits, DecodeError, EncodeError, Encoder, FrameHeader, FrameLimits,
    GoawayReason, RpcStatus, FRAME_HEADER_BYTES,
};

pub use crate::transport::wire::{decode_error_index, DECODE_ERROR_KINDS};
pub(crate) use crate::transport::wire::{
    priority_from_codec, priority_to_codec, response_result, status_of, truncate_utf8,
};
use crate::transport::{Priority, Route, RpcError};
use crate::Buf;

/// Bytes the writer reserves for a frame's header and envelope: the common envelopes are a few
/// dozen bytes; a longer error message makes the buffer grow once and then stay.
pub const HEAD_BYTES_TYPICAL: usize = FRAME_HEADER_BYTES + 64;

/// A frame's envelope, owned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Envelope {
    Request {
        request_id: u64,
        route: Route,
        priority: Priority,
    },
    Response {
        request_id: u64,
        status: RpcStatus,
        /// Empty for `Ok`; at most the codec's `error_message_bytes_max`.
        error_message: String,
    },
    Cancel {
        request_id: u64,
    },
    Ping {
        nonce: u64,
    },
    Pong {
        nonce: u64,
    },
    Goaway {
        reason: GoawayReason,
        last_request_id: u64,
        message: String,
    },
}

impl Envelope {
    /// The response to request `request_id` carrying `result`, and the body to send after it.
    /// An error's text is cut to `error_message_bytes_max` (on a character boundary) so that
    /// encoding cannot fail.
    pub fn response(
        request_id: u64,
        result: Result<Buf, RpcError>,
        error_message_bytes_max: usize,
    ) -> (Envelope, Buf) {
        let (status, error_message, body) = match result {
            Ok(body) => (RpcStatus::Ok, String::new(), body),
            Err(error) => {
                // A handler's own text goes as it is; the caller wraps it in `Handler` again.
                let text = match &error {
                    RpcError::Handler(message) => message.clone(),
                    other => other.to_string(),
                };
                let message = truncate_utf8(&text, error_message_bytes_max).to_string();
                (status_of(&error), message, Buf::empty())
            }
        };
        let envelope = Envelope::Response {
            request_id,
            status,
            error_message,
        };
        (envelope, body)
    }

    /// Borrows this envelope as the codecs' type, for encoding.
    pub fn as_codec(&self) -> icn_codecs::Envelope<'_> {
        use icn_codecs::{
            CancelEnvelope, GoawayEnvelope, HeartbeatEnvelope, RequestEnvelope, ResponseEnvelope,
        };
        match self {
            Envelope::Request {
                request_id,
                route,
                priority,
            } => icn_codecs::Envelope::Request(RequestEnvelope {
                request_id: *request_id,
                route: route.0,
                priority: priority_to_codec(*priority),
                // The transport API has no deadlines yet; 0 means none.
                deadline_ms: 0,
            }),
            Envelope::Response {
                request_id,
                status,
                error_message,
            } => icn_codecs::Envelope::Response(ResponseEnvelope {
                request_id: *request_id,
                status: *status,
                error_message,
            }),
            Envelope::Cancel { request_id } => icn_codecs::Envelope::Cancel(CancelEnvelope {
                request_id: *request_id,
            }),
            Envelope::Ping { nonce } => {
                icn_codecs::Envelope::Ping(HeartbeatEnvelope { nonce: *nonce })
            }
            Envelope::Pong { nonce } => {
                icn_codecs::Envelope::Pong(HeartbeatEnvelope { nonce: *nonce })
            }
            Envelope::Goaway {
                reason,
                last_request_id,
                message,
            } => icn_codecs::Envelope::Goaway(GoawayEnvelope {
                reason: *reason,
                last_request_id: *last_request_id,
                message,
            }),
        }
    }

    fn from_codec(envelope: icn_codecs::Envelope<'_>) -> Envelope {
        match envelope {
            icn_codecs::Envelope::Request(request) => Envelope::Request {
                request_id: request.request_id,
                route: Route(request.route),
                priority: priority_from_codec(request.priority),
            },
            icn_codecs::Envelope::Response(response) => Envelope::Response {
                request_id: response.request_id,
                status: response.status,
                error_message: response.error_message.to_string(),
            },
            icn_codecs::Envelope::Cancel(cancel) => Envelope::Cancel {
                request_id: cancel.request_id,
            },
            icn_codecs::Envelope::Ping(ping) => Envelope::Ping { nonce: ping.nonce },
            icn_codecs::Envelope::Pong(pong) => Envelope::Pong { nonce: pong.nonce },
            icn_codecs::Envelope::Goaway(goaway) => Envelope::Goaway {
                reason: goaway.reason,
                last_request_id: goaway.last_request_id,
                message: goaway.message.to_string(),
            },
        }
    }
}

/// Appends the header and envelope of a frame whose `body_bytes` of body follow to `out`.
pub fn encode_head(
    encoder: &mut Encoder,
    envelope: &Envelope,
    body_bytes: u64,
    out: &mut Vec<u8>,
) -> Result<FrameHeader, EncodeError> {
    encoder.encode_frame(&envelope.as_codec(), body_bytes, out)
}

/// One received frame.
#[derive(Debug)]
pub struct Frame {
    pub envelope: Envelope,
    pub body: Vec<u8>,
}

enum Stage {
    Header,
    Envelope(FrameHeader),
    Body(Envelope),
}

/// Reassembles frames from a byte stream, checking every length before buffering anything.
pub struct FrameReader {
    frame_limits: FrameLimits,
    codec_limits: CodecLimits,
    stage: Stage,
    head: [u8; FRAME_HEADER_BYTES],
    /// Reused for every envelope; never longer than `frame_limits.envelope_bytes_max`.
    envelope: Vec<u8>,
    body: Vec<u8>,
    filled: usize,
}

impl FrameReader {
    pub fn new(frame_limits: FrameLimits, codec_limits: CodecLimits) -> FrameReader {
        FrameReader {
            frame_limits,
            codec_limits,
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
        let want = match self.stage {
            Stage::Header => &mut self.head[filled..],
            Stage::Envelope(_) => &mut self.envelope[filled..],
            Stage::Body(_) => &mut self.body[filled..],
        };
        debug_assert!(!want.is_empty(), "advance never stops on an empty stage");
        want
    }

    /// Records that `n` bytes of [`FrameReader::want`] were filled; returns a frame when one is
    /// complete. An error is the peer's fault and leaves the reader unusable.
    pub fn advance(&mut self, n: usize) -> Result<Option<Frame>, DecodeError> {
        self.filled += n;
        loop {
            let target = match &self.stage {
                Stage::Header => FRAME_HEADER_BYTES,
                Stage::Envelope(_) => self.envelope.len(),
                Stage::Body(_) => self.body.len(),
            };
            assert!(self.filled <= target, "filled past the wanted buffer");
            if self.filled < target {
                return Ok(None);
            }
            self.filled = 0;
            match std::mem::replace(&mut self.stage, Stage::Header) {
                Stage::Header => {
                    let header = FrameHeader::decode(&self.head, &self.frame_limits)?;
                    self.envelope.clear();
                    self.envelope.resize(usize::from(header.envelope_bytes), 0);
                    self.stage = Stage::Envelope(header);
                }
                Stage::Envelope(header) => self.stage = Stage::Body(self.open_body(&header)?),
                Stage::Body(envelope) => {
                    let body = std::mem::take(&mut self.body);
                    return Ok(Some(Frame { envelope, body }));
                }
            }
        }
    }

    /// Decodes the envelope and allocates the body it announces.
    fn open_body(&mut self, header: &FrameHeader) -> Result<Envelope, DecodeError> {
        let decoded = decode_envelope(header.kind, &self.envelope, &self.codec_limits)?;
        if header.body_bytes > 0 && !decoded.allows_body() {
            return Err(DecodeError::UnexpectedBytes {
                kind: header.kind.name(),
                bytes: header.body_bytes,
            });
        }
        let envelope = Envelope::from_codec(decoded);
        let body_bytes =
            usize::try_from(header.body_bytes).map_err(|_| DecodeError::LimitExceeded {
                limit: "body_bytes (address space)",
                value: header.body_bytes,
                max: usize::MAX as u64,
            })?;
        // One allocation at the announced size, which FrameHeader::decode bounded by
        // `body_bytes_max`; TLS then decrypts the body straight into it.
        self.body = vec![0; body_bytes];
        Ok(envelope)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use icn_codecs::{encode_frame, FrameKind};

    fn limits() -> (FrameLimits, CodecLimits) {
        (
            FrameLimits {
                envelope_bytes_max: 4 << 10,
                body_bytes_max: 1 << 20,
            },
            CodecLimits::default(),
        )
    }

    fn reader() -> FrameReader {
        let (frame, codec) = limits();
        FrameReader::new(frame, codec)
    }

    /// Feeds `bytes` in pieces of at most `step` bytes; returns the frames and the first error.
    fn feed(
        reader: &mut FrameReader,
        bytes: &[u8],
        step: usize,
    ) -> (Vec<Frame>, Option<DecodeError>) {
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

    fn frame_bytes(envelope: &Envelope, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_head(
            &mut Encoder::default(),
            envelope,
            body.len() as u64,
            &mut out,
        )
        .unwrap();
        out.extend_from_slice(body);
        out
    }

    fn request(request_id: u64) -> Envelope {
        Envelope::Request {
            request_id,
            route: Route(3),
            priority: Priority::Low,
        }
    }

    #[test]
    fn frames_round_trip_in_any_split() {
        let goaway = Envelope::Goaway {
            reason: GoawayReason::Shutdown,
            last_request_id: 7,
            message: "bye".into(),
        };
        let mut stream = frame_bytes(&request(7), b"hello");
        stream.extend(frame_bytes(&Envelope::Ping { nonce: 9 }, b""));
        stream.extend(frame_bytes(&goaway, b""));
        for step in [1, 3, 16, 1000] {
            let mut reader = reader();
            let (frames, error) = feed(&mut reader, &stream, step);
            assert_eq!(error, None);
            assert_eq!(frames.len(), 3);
            assert_eq!(frames[0].envelope, request(7));
            assert_eq!(frames[0].body, b"hello");
            assert_eq!(frames[1].envelope, Envelope::Ping { nonce: 9 });
            assert_eq!(frames[2].envelope, goaway);
            assert!(reader.is_idle());
        }
    }

    #[test]
    fn truncated_streams_leave_the_reader_mid_frame() {
        let stream = frame_bytes(&request(1), b"abc");
        for cut in 1..stream.len() {
            let mut reader = reader();
            let (frames, error) = feed(&mut reader, &stream[..cut], 5);
            assert!(frames.is_empty() && error.is_none());
            assert!(!reader.is_idle(), "cut at {cut} must be seen as truncated");
        }
    }

    #[test]
    fn oversized_and_malformed_frames_get_typed_errors() {
        let mut big = Vec::new();
        encode_head(&mut Encoder::default(), &request(1), 1 << 30, &mut big).unwrap();
        assert_eq!(
            feed(&mut reader(), &big, 64).1,
            Some(DecodeError::LimitExceeded {
                limit: "body_bytes_max",
                value: 1 << 30,
                max: 1 << 20
            })
        );
        let mut bad = frame_bytes(&request(1), b"");
        bad[0] = 0;
        assert!(matches!(
            feed(&mut reader(), &bad, 64).1,
            Some(DecodeError::BadMagic { .. })
        ));
        let mut bad = frame_bytes(&request(1), b"");
        bad[3] = 99;
        assert_eq!(
            feed(&mut reader(), &bad, 64).1,
            Some(DecodeError::UnknownFrameKind { found: 99 })
        );
        let mut bad = frame_bytes(&request(1), b"");
        bad[6..8].copy_from_slice(&u16::MAX.to_le_bytes());
        assert!(matches!(
            feed(&mut reader(), &bad, 64).1,
            Some(DecodeError::LimitExceeded {
                limit: "envelope_bytes_max",
                ..
            })
        ));
        // An envelope of garbage that the verifier rejects.
        let mut bad = Vec::new();
        encode_frame(FrameKind::Request, &[0xff; 24], 0, &mut bad).unwrap();
        assert!(matches!(
            feed(&mut reader(), &bad, 64).1,
            Some(DecodeError::InvalidFlatbuffer(_))
        ));
        // An empty envelope is not a table either, and must not stall the reader.
        let mut bad = Vec::new();
        encode_frame(FrameKind::Ping, &[], 0, &mut bad).unwrap();
        assert!(matches!(
            feed(&mut reader(), &bad, 64).1,
            Some(DecodeError::InvalidFlatbuffer(_))
        ));
    }

    #[test]
    fn control_frames_announcing_a_body_are_refused() {
        let mut encoder = Encoder::default();
        let envelope = encoder
            .encode_cancel(&icn_codecs::CancelEnvelope { request_id: 1 })
            .unwrap()
            .to_vec();
        let mut bad = Vec::new();
        encode_frame(FrameKind::Cancel, &envelope, 3, &mut bad).unwrap();
        bad.extend_from_slice(&[1, 2, 3]);
        assert_eq!(
            feed(&mut reader(), &bad, 64).1,
            Some(DecodeError::UnexpectedBytes {
                kind: "Cancel",
                bytes: 3
            })
        );
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let valid = frame_bytes(&request(5), b"xy");
        for _ in 0..2000 {
            let mut bytes = valid.clone();
            bytes.resize(64, 0);
            for byte in &mut bytes[..] {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                // Flip a few bits only, so that the envelope and body paths are reached too.
                if state.is_multiple_of(8) {
                    *byte ^= state as u8;
                }
            }
            let _ = feed(&mut reader(), &bytes, 7);
        }
    }

    #[test]
    fn every_decode_error_kind_has_a_distinct_name() {
        let errors = [
            DecodeError::Truncated { needed: 1, got: 0 },
            DecodeError::BadMagic { found: 0 },
            DecodeError::UnsupportedVersion { found: 0 },
            DecodeError::UnknownFrameKind { found: 0 },
            DecodeError::LimitExceeded {
                limit: "x",
                value: 1,
                max: 0,
            },
            flatbuffers_error(),
            DecodeError::UnknownEnumValue {
                field: "x",
                value: 9,
            },
            DecodeError::UnexpectedBytes {
                kind: "x",
                bytes: 1,
            },
            DecodeError::ArtifactLengthMismatch {
                declared: 1,
                got: 0,
            },
            DecodeError::Invalid {
                kind: "x",
                detail: "y",
            },
        ];
        let indices: Vec<usize> = errors.iter().map(decode_error_index).collect();
        assert_eq!(indices, (0..DECODE_ERROR_KINDS.len()).collect::<Vec<_>>());
    }

    fn flatbuffers_error() -> icn_codecs::DecodeError {
        icn_codecs::decode_cancel(&[], &CodecLimits::default()).unwrap_err()
    }

    #[test]
    fn errors_survive_the_wire() {
        let cases = [
            (RpcError::NoRoute(Route(9)), RpcError::NoRoute(Route(9))),
            (RpcError::Cancelled, RpcError::Cancelled),
            (
                RpcError::Handler("boom".into()),
                RpcError::Handler("boom".into()),
            ),
            (
                RpcError::TooManyInFlight { limit: 4 },
                RpcError::Handler("peer overloaded: too many requests in flight (4)".into()),
            ),
        ];
        for (sent, seen) in cases {
            let (envelope, body) = Envelope::response(5, Err(sent), 1 << 10);
            let (frames, error) = feed(&mut reader(), &frame_bytes(&envelope, &body), 64);
            assert_eq!(error, None);
            let Envelope::Response {
                request_id,
                status,
                error_message,
            } = &frames[0].envelope
            else {
                panic!("not a response: {:?}", frames[0].envelope);
            };
            assert_eq!(*request_id, 5);
            let result = response_result(*status, error_message, Route(9), Buf::empty());
            assert_eq!(result, Err(seen));
        }
        let (envelope, body) = Envelope::response(5, Ok(Buf::copy_from_slice(b"ok")), 8);
        let (frames, _) = feed(&mut reader(), &frame_bytes(&envelope, &body), 64);
        assert_eq!(frames[0].body, b"ok");
    }

    #[test]
    fn long_error_messages_are_cut_on_a_character_boundary() {
        let (envelope, _) = Envelope::response(1, Err(RpcError::Handler("é".repeat(100))), 9);
        let Envelope::Response { error_message, .. } = envelope else {
            unreachable!()
        };
        assert!(error_message.len() <= 9);
        assert_eq!(error_message, "éééé");
        let mut out = Vec::new();
        let mut encoder = Encoder::new(CodecLimits {
            error_message_bytes_max: 9,
            ..CodecLimits::default()
        });
        let envelope = Envelope::Response {
            request_id: 1,
            status: RpcStatus::HandlerError,
            error_message,
        };
        assert!(encode_head(&mut encoder, &envelope, 0, &mut out).is_ok());
    }
}
